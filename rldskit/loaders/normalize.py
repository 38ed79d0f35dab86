"""Normalisation statistics and the normaliser. numpy only (no Grain): trainers, the report and
``rldskit stats`` can import it without the loaders' pipeline.

Three concepts:

* **Statistics** (the :data:`STATS_FILE` format, ``stats.json`` beside a dataset version folder)::

      {"action": {"mean": [...], "std": [...], "min": [...], "max": [...], "count": 1234}, ...}

  keys are flat step paths; each value is a (nested) list shaped like the feature (a number for a
  scalar). ``mean``/``std`` serve ``normalize="mean_std"``, ``min``/``max`` serve ``"min_max"``;
  other keys (``rldskit stats`` writes quantiles, ``_dataset``, ...) are ignored here.
  :func:`feature_moments` is the one computation of ``mean``/``std`` (population)/``min``/``max``/
  ``count`` from step values; :func:`compute_stats` applies it to the low-dimensional columns of a
  :class:`~rldskit.formats.step_index.StepIndex` (optionally a step selection), :func:`load_stats`
  reads the file.
* **Where statistics come from** (:func:`resolve_stats`): an explicit mapping or file, else the
  dataset's ``stats.json``, else statistics computed from its train split (all of it: a sliced
  ``train[:90%]`` loader still normalises with the whole train split unless given statistics).
* **``Normalizer``**: per-feature affine ``y = (x - shift) / scale`` for the float features it is
  built for; other features pass through. Keeps the input dtype. ``to_dict`` is what a policy
  export stores to undo it on the robot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rldskit.formats.step_index import StepIndex
from rldskit.formats.tfds_dir import STATS_FILE, DatasetLayout
from rldskit.spec import PRESENT_SUFFIX

__all__ = ["Normalizer", "compute_stats", "feature_moments", "load_stats", "resolve_stats", "STATS_FILE"]

_STD_EPS = 1e-8


# =========================================================================== statistics


def feature_moments(values: np.ndarray, present: np.ndarray | None = None, *,
                    finite_only: bool = False) -> dict[str, Any]:
    """``{"mean", "std", "min", "max", "count"}`` of one feature's step values ``values``
    ``(N, *shape)``, per element, in float64, as JSON-ready (nested) lists shaped like the feature;
    ``present`` (``bool (N,)``) keeps the steps where an optional feature is present and ``count``
    is their number. ``std`` is the population standard deviation (``ddof=0``).

    ``finite_only=False`` (the loaders): every value counts (a NaN makes its element's moments NaN).
    ``finite_only=True`` (``rldskit stats``' convention): NaN and +-inf are left out per element.
    With no value to summarise, an element gets mean 0, std 1, min 0, max 0 (normalisation stays
    defined)."""
    col = np.asarray(values)
    x = col[present] if present is not None else col
    x = x.astype(np.float64, copy=False)
    shape = col.shape[1:]
    if len(x) == 0:
        zero = np.zeros(shape)
        return {"mean": zero.tolist(), "std": np.ones(shape).tolist(), "min": zero.tolist(), "max": zero.tolist(),
                "count": 0}
    if not finite_only:
        return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(),
                "max": x.max(0).tolist(), "count": int(len(x))}
    ok = np.isfinite(x)
    n = ok.sum(0)
    empty = n == 0
    safe = np.where(ok, x, 0.0)
    mean = safe.sum(0) / np.maximum(n, 1)
    var = (np.where(ok, x - mean, 0.0) ** 2).sum(0) / np.maximum(n, 1)
    lo = np.where(ok, x, np.inf).min(0)
    hi = np.where(ok, x, -np.inf).max(0)
    return {"mean": np.where(empty, 0.0, mean).tolist(), "std": np.where(empty, 1.0, np.sqrt(var)).tolist(),
            "min": np.where(empty, 0.0, lo).tolist(), "max": np.where(empty, 0.0, hi).tolist(),
            "count": int(len(x))}


def compute_stats(index: StepIndex, keys: Sequence[str] | None = None,
                  steps: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Per-feature :func:`feature_moments` of the float low-dimensional columns of ``index``
    (default: all of them), over all its steps or the global ``steps`` given (e.g. a training
    selection: ``index.steps_of(positions)``); an optional feature counts only the steps where its
    ``_present`` mask is True. JSON-ready (the :data:`STATS_FILE` format)."""
    out: dict[str, dict[str, Any]] = {}
    for key in keys if keys is not None else sorted(index.columns):
        col = index.columns.get(key)
        if col is None or col.dtype.kind != "f":
            continue
        present = index.columns.get(key + PRESENT_SUFFIX)
        if steps is not None:
            col = col[steps]
            present = present[steps] if present is not None else None
        out[key] = feature_moments(col, present)
    return out


def load_stats(dataset_path: str | os.PathLike) -> dict[str, dict[str, Any]] | None:
    """The :data:`STATS_FILE` beside a dataset version folder (or the file itself), or ``None``
    when there is none. Raises ``ValueError`` for a file that is not a statistics mapping."""
    p = Path(dataset_path)
    f = DatasetLayout(p).stats_path if p.is_dir() else p
    if not f.is_file():
        return None
    try:
        obj = json.loads(f.read_bytes())
    except (OSError, ValueError) as e:
        raise ValueError(f"{f}: not a readable stats file: {e}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise ValueError(f"{f}: expected {{feature: {{'mean': [...], 'std': [...], 'min': [...], 'max': [...]}}}}")
    return obj


def resolve_stats(index: StepIndex, keys: Sequence[str], stats: Mapping | str | os.PathLike | None = None,
                  *, train: StepIndex | None = None) -> tuple[Mapping[str, Any], str]:
    """``(statistics, where they came from)`` for normalising ``keys`` of ``index``: ``stats`` (a
    mapping, or a :data:`STATS_FILE` path: ``FileNotFoundError`` when it has none), else the
    dataset's ``stats.json``, else :func:`compute_stats` of ``keys`` over the train split (``train``:
    its index when the caller has it; else ``index`` itself when it is the train split, else loaded)."""
    if isinstance(stats, (str, os.PathLike)):
        st = load_stats(stats)
        if st is None:
            raise FileNotFoundError(f"{stats}: no stats file")
        return st, str(stats)
    if stats is not None:
        return stats, "stats argument"
    if (st := load_stats(index.path)) is not None:
        return st, str(DatasetLayout(index.path).stats_path)
    if train is None:
        train = index if index.split == "train" else StepIndex.load(index.path, "train")
    return compute_stats(train, keys), f"train split of {index.path.name} (computed)"


# =========================================================================== the normaliser


class Normalizer:
    """Per-feature affine normalisation ``y = (x - shift) / scale``.

    ``mode="mean_std"``: shift = mean, scale = std (1 where std < 1e-8). ``mode="min_max"``: maps
    ``[min, max]`` to ``[-1, 1]`` (scale 1 where max == min). ``stats`` is the :data:`STATS_FILE`
    mapping; every key in ``keys`` must be in it. ``shapes`` (per key, the feature's shape) checks
    and reshapes the statistics. Floats only; the result keeps the input dtype."""

    MODES = ("mean_std", "min_max")

    def __init__(self, stats: Mapping[str, Mapping[str, Any]], mode: str, keys: Sequence[str], *,
                 shapes: Mapping[str, tuple[int, ...]] | None = None, source: str = "stats"):
        if mode not in self.MODES:
            raise ValueError(f"normalize must be one of {self.MODES} (or 'stats' = 'mean_std'), got {mode!r}")
        self.mode, self.keys, self.stats, self.source = mode, tuple(keys), stats, source
        self._shift: dict[str, np.ndarray] = {}
        self._scale: dict[str, np.ndarray] = {}
        need = ("mean", "std") if mode == "mean_std" else ("min", "max")
        for k in self.keys:
            s = stats.get(k)
            if s is None or any(n not in s for n in need):
                raise ValueError(f"{source}: no {'/'.join(need)} for feature {k!r} (normalize={mode!r} needs them)")
            shape = tuple(shapes[k]) if shapes and k in shapes else None
            a, b = (np.asarray(s[n], dtype=np.float64) for n in need)
            if shape is not None:
                try:
                    a, b = a.reshape(shape), b.reshape(shape)
                except ValueError:
                    raise ValueError(f"{source}: stats of {k!r} have shape {a.shape}; the feature is {shape}") from None
            if mode == "mean_std":
                shift, scale = a, np.where(b < _STD_EPS, 1.0, b)
            else:
                shift, scale = (a + b) / 2, np.where(b - a <= 0, 1.0, (b - a) / 2)
            self._shift[k], self._scale[k] = shift, scale

    @classmethod
    def for_index(cls, index: StepIndex, mode: str, keys: Sequence[str],
                  stats: Mapping | str | os.PathLike | None = None) -> Normalizer:
        """The normaliser of the float low-dimensional ``keys`` of ``index`` (others are left out),
        with :func:`resolve_stats`' statistics."""
        keys = [k for k in keys if k in index.columns and index.columns[k].dtype.kind == "f"]
        st, where = resolve_stats(index, keys, stats)
        shapes = {k: index.columns[k].shape[1:] for k in keys}
        return cls(st, mode, keys, shapes=shapes, source=where)

    def normalize(self, key: str, x: np.ndarray) -> np.ndarray:
        if key not in self._shift:
            return x
        return ((x - self._shift[key]) / self._scale[key]).astype(x.dtype, copy=False)

    def unnormalize(self, key: str, y: np.ndarray) -> np.ndarray:
        if key not in self._shift:
            return y
        return (np.asarray(y) * self._scale[key] + self._shift[key]).astype(np.asarray(y).dtype, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """``{"mode": ..., "features": {key: {"shift": [...], "scale": [...]}}}`` (for policy.json)."""
        return {"mode": self.mode, "features": {k: {"shift": self._shift[k].tolist(), "scale": self._scale[k].tolist()}
                                                 for k in self.keys}}

    def __repr__(self) -> str:
        return f"Normalizer({self.mode}, {list(self.keys)}, from {self.source})"
