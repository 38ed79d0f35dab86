"""Training loaders over converted rldskit datasets (the step-major layout + ``episodes.parquet``).

Small parts, one module each, composed the way Grain composes datasets; ``import rldskit.loaders``
is cheap, and a name below imports only its own module when first used (Grain only for the
iterator and the entry points; the rest is numpy, pyarrow and Pillow):

* :func:`windows`, :func:`steps` (:mod:`~rldskit.loaders.api`): a :class:`Loader` of batches of
  observation histories and action chunks (padded and masked at episode edges, optional goals and
  language), or of single steps.
* :class:`LoaderConfig` (:mod:`~rldskit.loaders.config`): the frozen value that fixes a loader's
  order and sample shape; ``windows(path, config=LoaderConfig(...))`` is the preferred form.
* :class:`Loader` (:mod:`~rldskit.loaders.iterator`): a Grain ``DatasetIterator`` with ``len``,
  ``get_state``/``set_state``, checkpointable with Grain's Orbax handler; :func:`build` makes one
  from a path and a :class:`LoaderConfig` (what the trainers call: ``trainers.common.loader_config``).
* :class:`StepSource`, :class:`EpisodeSource` (:mod:`~rldskit.loaders.sources`): random-access
  sources over the step-major ArrayRecord files and over a TFDS RLDS folder's ArrayRecord shards.
* :class:`WindowMaker` (:mod:`~rldskit.loaders.windowing`): the batch transform (index arithmetic,
  grouped reads, image decoding, normalisation).
* The epoch order (:mod:`~rldskit.loaders.order`) and the recycled buffers and frame cache
  (:mod:`~rldskit.loaders.buffers`).
* :class:`Normalizer`, :func:`compute_stats`, :func:`load_stats` (:mod:`~rldskit.loaders.normalize`):
  per-feature statistics.
* Re-exported from the formats layer (:mod:`rldskit.formats.step_index`): :class:`StepIndex`
  (``episodes.parquet`` in RAM), :class:`EpisodeRow`, :func:`parse_split`,
  :func:`resolve_split_slice`, :func:`select_episodes`, and the errors :class:`StepReadError`,
  :class:`StepRecordCorruption`, :class:`StepDecodeError` (a bad record, naming the file and record
  index); and :func:`decode_image` (= :func:`rldskit.images.decode`).
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_WHERE = {
    "windows": "rldskit.loaders.api", "steps": "rldskit.loaders.api",
    "LoaderConfig": "rldskit.loaders.config", "GOALS": "rldskit.loaders.config",
    "Loader": "rldskit.loaders.iterator", "build": "rldskit.loaders.iterator",
    "StepSource": "rldskit.loaders.sources", "EpisodeSource": "rldskit.loaders.sources",
    "WindowMaker": "rldskit.loaders.windowing",
    "Normalizer": "rldskit.loaders.normalize", "compute_stats": "rldskit.loaders.normalize",
    "load_stats": "rldskit.loaders.normalize", "STATS_FILE": "rldskit.loaders.normalize",
    "StepIndex": "rldskit.formats.step_index", "EpisodeRow": "rldskit.formats.step_index",
    "parse_split": "rldskit.formats.step_index", "resolve_split_slice": "rldskit.formats.step_index",
    "select_episodes": "rldskit.formats.step_index", "StepReadError": "rldskit.formats.step_index",
    "StepRecordCorruption": "rldskit.formats.step_index", "StepDecodeError": "rldskit.formats.step_index",
}
_ALIASES = {"decode_image": ("rldskit.images", "decode")}

__all__ = sorted([*_WHERE, *_ALIASES])


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name in _ALIASES:
        module, attr = _ALIASES[name]
        value = getattr(importlib.import_module(module), attr)
    else:
        raise AttributeError(f"module 'rldskit.loaders' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
