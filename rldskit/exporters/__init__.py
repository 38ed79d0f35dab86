"""Exporters: converted rldskit (TFDS RLDS) datasets -> other ecosystems' formats.

* :mod:`rldskit.exporters.lerobot`: LeRobot v3.0 (parquet + mp4 videos + meta/), with
  :func:`~rldskit.exporters.lerobot.export_lerobot`, a minimal reader
  :func:`~rldskit.exporters.lerobot.read_lerobot_v3` and the CLI hook
  :func:`~rldskit.exporters.lerobot.add_export_parser` (``rldskit export lerobot ...``).

Importing this package is cheap: pyarrow, pandas, PyAV and Pillow load inside the functions.
"""

from __future__ import annotations

from rldskit.exporters.lerobot import add_export_parser, export_lerobot, read_lerobot_v3

__all__ = ["add_export_parser", "export_lerobot", "read_lerobot_v3"]
