"""Training loaders over converted rldskit datasets (the step-major layout + ``episodes.parquet``).

``import rldskit.loaders`` is cheap: Grain, pyarrow and PIL are imported when a name below is
first used (they live in :mod:`rldskit.loaders.grain`).

* :func:`windows`: batches of observation histories and action chunks, padded and masked at
  episode edges, optional goals (``goal="last"|"uniform"``) and language (:class:`Loader`: a
  Grain ``DatasetIterator`` with ``len``, ``get_state``/``set_state``, checkpointable with
  Grain's Orbax handler).
* :func:`steps`: batches (or single) steps, same options.
* :class:`StepIndex`: ``episodes.parquet`` in RAM (per-episode bounds and low-dimensional columns).
* :class:`StepSource`, :class:`EpisodeSource`: Grain random-access data sources over the
  step-major ArrayRecord files and over a TFDS RLDS folder's ArrayRecord episode shards.
* :class:`WindowMaker`: the batch transform (index arithmetic, grouped reads, image decoding,
  normalisation) that :func:`windows`/:func:`steps` map over batches of step indices.
* :class:`Normalizer`, :func:`compute_stats`, :func:`load_stats`: per-feature statistics.
* :class:`StepReadError` and its subclasses :class:`StepRecordCorruption`,
  :class:`StepDecodeError`: a bad record, naming the file and record index.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = ("windows", "steps", "GOALS", "Loader", "StepIndex", "StepSource", "EpisodeSource", "EpisodeRow", "WindowMaker",
            "Normalizer", "compute_stats", "load_stats", "decode_image", "parse_split", "StepReadError",
            "StepRecordCorruption", "StepDecodeError", "STATS_FILE")

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rldskit.loaders' has no attribute {name!r}")
    value = getattr(importlib.import_module("rldskit.loaders.grain"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
