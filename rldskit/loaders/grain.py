"""The loaders' former single module, kept so that existing imports keep working.

Everything that lived here now lives in one module per concern (see :mod:`rldskit.loaders`):
:mod:`rldskit.formats.step_index` (``StepIndex``, ``EpisodeRow``, splits, the step errors),
:mod:`rldskit.loaders.sources`, :mod:`rldskit.images` (``decode_image`` is ``images.decode``),
:mod:`rldskit.loaders.buffers`, :mod:`rldskit.loaders.windowing`, :mod:`rldskit.loaders.order`,
:mod:`rldskit.loaders.normalize`, :mod:`rldskit.loaders.config`, :mod:`rldskit.loaders.iterator` and
:mod:`rldskit.loaders.api`. Names resolve lazily, so ``from rldskit.loaders.grain import StepIndex``
does not import Grain. New code imports from :mod:`rldskit.loaders` or the modules above.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "windows": ("rldskit.loaders.api", "windows"), "steps": ("rldskit.loaders.api", "steps"),
    "GOALS": ("rldskit.loaders.config", "GOALS"), "LoaderConfig": ("rldskit.loaders.config", "LoaderConfig"),
    "CACHE_AUTO_BYTES": ("rldskit.loaders.buffers", "CACHE_AUTO_BYTES"),
    "Loader": ("rldskit.loaders.iterator", "Loader"),
    "StepSource": ("rldskit.loaders.sources", "StepSource"), "EpisodeSource": ("rldskit.loaders.sources", "EpisodeSource"),
    "WindowMaker": ("rldskit.loaders.windowing", "WindowMaker"),
    "Normalizer": ("rldskit.loaders.normalize", "Normalizer"),
    "compute_stats": ("rldskit.loaders.normalize", "compute_stats"),
    "load_stats": ("rldskit.loaders.normalize", "load_stats"), "STATS_FILE": ("rldskit.loaders.normalize", "STATS_FILE"),
    "decode_image": ("rldskit.images", "decode"),
    "StepIndex": ("rldskit.formats.step_index", "StepIndex"), "EpisodeRow": ("rldskit.formats.step_index", "EpisodeRow"),
    "parse_split": ("rldskit.formats.step_index", "parse_split"),
    "_ROW_COLUMNS": ("rldskit.formats.step_index", "EPISODE_ROW_COLUMNS"),
    "StepReadError": ("rldskit.formats.step_index", "StepReadError"),
    "StepRecordCorruption": ("rldskit.formats.step_index", "StepRecordCorruption"),
    "StepDecodeError": ("rldskit.formats.step_index", "StepDecodeError"),
}

__all__ = ["windows", "steps", "GOALS", "CACHE_AUTO_BYTES", "Loader", "StepIndex", "StepSource", "EpisodeSource",
           "EpisodeRow", "WindowMaker", "Normalizer", "compute_stats", "load_stats", "decode_image", "parse_split",
           "StepReadError", "StepRecordCorruption", "StepDecodeError", "STATS_FILE"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'rldskit.loaders.grain' has no attribute {name!r}")
    module, attr = _WHERE[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_WHERE))
