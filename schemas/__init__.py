"""Versioned episode schemas shipped with rldskit, as JSON files named ``<name>.v<major>.json``.

Installed as the package data ``rldskit.schemas``; load them with ``rldskit.load_spec("pi5_donkey.v1")``.
"""
