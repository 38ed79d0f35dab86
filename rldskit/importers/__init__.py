"""Importers from other robot-learning dataset formats into rldskit capture folders.

Each importer is its own module, imported on use (``rldskit.importers.lerobot``, ...), so
``import rldskit.importers`` costs nothing."""
