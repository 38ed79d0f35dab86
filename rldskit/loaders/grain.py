"""Grain loaders over the step-major layout: steps, windows, action chunks, checkpointable iteration.

A converted dataset (``rldskit convert``) holds, beside its TFDS shards, ``steps/*.steps.array_record-*``
files with one ``tf.train.Example`` per step in episode order, and ``episodes.parquet`` with one row
per episode (first global step, length, step file and offset, and the low-dimensional step columns as
lists). This module turns that into training batches with Grain. Five concepts:

* **``StepIndex``**: ``episodes.parquet`` of one split in RAM. Global step ``g`` (``0..N-1`` within
  the split) maps to ``(episode, t)`` by ``searchsorted`` over the episodes' first steps, and to
  ``(step file, record)`` by ``step_offset + t``. Every low-dimensional column (actions, states,
  rewards, flags, timestamps: numeric leaves of at most 64 elements) is one ``(N, *shape)`` array
  of the spec's dtype, so windows of them are fancy indexing, never disk reads. Immutable.
* **Sources** (Grain ``RandomAccessDataSource``: ``len``, ``[i]``, batched ``_getitems``):
  :class:`StepSource` returns decoded steps (``decode_step``: images stay encoded bytes);
  :class:`EpisodeSource` returns whole :class:`~rldskit.episode.Episode` s from the ArrayRecord
  episode shards of any TFDS RLDS folder (ours or Open-X, via ``open_dataset(path, last_step=...)``).
  Batched reads are grouped per file, one ``read(indices)`` per file. Readers open lazily, one per
  thread, and are never pickled (a source pickles as its index and reopens in a worker process).
* **``WindowMaker``**: the transform from a batch of global steps to a batch of samples. For a step
  ``t`` of an episode of length ``L``: the observation history ``t-H+1..t`` clamped at 0 (padded
  frames repeat the first step, ``observation_is_pad`` is True there) and the action chunk
  ``t..t+K-1`` clamped at ``L-1`` (``action_is_pad``), as LeRobot's ``delta_timestamps`` and Octo's
  chunking do. Low-dimensional features come from the RAM arrays; images are read and decoded only
  for the frames a window uses (PIL; JPEG draft mode when shrinking; optional ``resize``). Stateless
  and deterministic: the same steps give the same arrays.
* **Normalisation** (:class:`Normalizer`): per-feature mean/std or min/max, from ``stats.json`` beside
  the dataset when present (format: :data:`STATS_FILE`), else computed from the train split's RAM
  arrays (:func:`compute_stats`; optional features over their present steps only).
* **``Loader``** (from :func:`windows` or :func:`steps`): a Grain pipeline
  ``MapDataset.range(batches per epoch) -> repeat(num_epochs) -> map_with_index(_EpochOrder)
  (element i -> its steps: a seeded permutation per epoch, this host's positions, batch i) ->
  map(WindowMaker) -> to_iter_dataset(ReadOptions) -> mp_prefetch`` wrapped in an iterator with
  ``len`` (batches per epoch) and ``get_state()``/``set_state()``. The order is vectorised numpy
  (one permutation per epoch), not per-element shuffle and batch datasets, which cost ~1 ms per
  batch of 32 in Grain's per-element machinery.

Contracts, as readers of Grain know them (``MapDataset`` ~ an infinite ``Sequence``, ``DatasetIterator``
~ an ``Iterator`` with saved state):

* *Selection is an index list.* Splits (``"train"``, ``"train[:90%]"``, ``"train[10:20]"`` by
  episode) and ``episode_filter`` predicates choose episodes; their steps become the source
  sequence. Nothing is rewritten.
* *Epochs.* Shuffling is a bijection per epoch (seeded from ``seed`` and the epoch number), so each
  selected step appears exactly once per epoch; two epochs differ in order. Batches never straddle
  epochs; with ``drop_remainder`` an epoch's last partial batch is dropped (different steps each
  epoch, since the order changes), else it is short.
* *Hosts.* Process ``p`` of ``P`` takes positions ``p, p+P, ...`` of each epoch's order: shards are
  disjoint and cover the epoch. With ``drop_remainder`` every host takes exactly ``N // P`` per epoch
  (so all hosts run the same number of steps, as JAX multi-host training needs).
* *State.* A :class:`Loader`'s state is the number of batches it has yielded plus a fingerprint of
  everything that fixes the order. Restoring rebuilds the pipeline from that batch on (``ds[n:]``), so
  the next batch and every one after it equal the uninterrupted run's, whatever the number of worker
  processes before or after.
* *Errors.* A corrupt or undecodable record raises :class:`StepRecordCorruption` (an
  ``ArrayRecordCorruption``) or :class:`StepDecodeError` (an ``ExampleDecodeError``) naming the file,
  the record index, the global step and the episode. Both pickle, so they cross from Grain worker
  processes intact instead of failing to unpickle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np

from rldskit.formats.arrayrecord import ArrayRecordCorruption, ArrayRecordShardReader
from rldskit.formats.tfexample import ExampleDecodeError, decode_episode, decode_step
from rldskit.spec import PRESENT_SUFFIX, EpisodeSpec, Image, Text

__all__ = ["windows", "steps", "GOALS", "CACHE_AUTO_BYTES", "Loader", "StepIndex", "StepSource", "EpisodeSource", "EpisodeRow", "WindowMaker",
           "Normalizer", "compute_stats", "load_stats", "decode_image", "parse_split", "StepReadError",
           "StepRecordCorruption", "StepDecodeError", "STATS_FILE"]

#: Per-feature statistics beside a dataset (``<data_dir>/<name>/<version>/stats.json``)::
#:
#:     {"action": {"mean": [...], "std": [...], "min": [...], "max": [...], "count": 1234}, ...}
#:
#: keys are flat step paths; each value is a (nested) list shaped like the feature (a number for a
#: scalar). ``mean``/``std`` serve ``normalize="mean_std"``, ``min``/``max`` serve ``"min_max"``.
STATS_FILE = "stats.json"
#: episodes.parquet columns that describe the episode (everything else is a low-dim step column)
_ROW_COLUMNS = ("episode_id", "split", "episode_index", "shard", "shard_record", "length", "first_step", "terminal",
                "source", "step_file", "step_offset")
#: ReadOptions picked from measurements on 2 cores (see _default_read_options)
_MAX_THREADS = 4  # measured on 2 cores only; more threads than cores cost ~3%
_STD_EPS = 1e-8
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


# =========================================================================== errors


class StepReadError(ValueError):
    """A step record could not be read or decoded. ``path`` is the file, ``index`` the record in it,
    ``step`` the global step within the split and ``episode`` the episode id (when known)."""

    path: str
    index: int | None
    step: int | None
    episode: str | None


def _context(step: int | None, episode: str | None, t: int | None) -> str:
    parts = []
    if step is not None:
        parts.append(f"global step {step}")
    if episode is not None:
        parts.append(f"episode {episode}" + (f" step {t}" if t is not None else ""))
    return f" ({', '.join(parts)})" if parts else ""


class StepRecordCorruption(StepReadError, ArrayRecordCorruption):
    """A step file is corrupt or truncated at ``index`` (an :class:`ArrayRecordCorruption`)."""

    def __init__(self, path: str | os.PathLike, detail: str, *, index: int | None = None, step: int | None = None,
                 episode: str | None = None, t: int | None = None):
        ArrayRecordCorruption.__init__(self, path, detail + _context(step, episode, t), index=index)
        self.detail = detail
        self.step, self.episode, self.t = step, episode, t

    def __reduce__(self):
        return (_rebuild, (type(self), (self.path, self.detail),
                           {"index": self.index, "step": self.step, "episode": self.episode, "t": self.t}))


class StepDecodeError(StepReadError, ExampleDecodeError):
    """A step record read intact but is not a step of the spec, or an image in it does not decode
    (an :class:`ExampleDecodeError`)."""

    def __init__(self, path: str | os.PathLike, detail: str, *, index: int | None = None, step: int | None = None,
                 episode: str | None = None, t: int | None = None):
        self.path, self.detail, self.index = os.fspath(path), detail, index
        self.step, self.episode, self.t = step, episode, t
        rec = f" record {index}" if index is not None else ""
        super().__init__(f"{self.path}{rec}: {detail}{_context(step, episode, t)}")

    def __reduce__(self):
        return (_rebuild, (type(self), (self.path, self.detail),
                           {"index": self.index, "step": self.step, "episode": self.episode, "t": self.t}))


def _rebuild(cls: type, args: tuple, kwargs: dict) -> Exception:
    return cls(*args, **kwargs)


# =========================================================================== splits


_SPLIT_RE = re.compile(r"^\s*([A-Za-z0-9_\-.]+)\s*(?:\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\])?\s*$")


def parse_split(split: str) -> tuple[str, slice]:
    """``"train"`` -> ``("train", slice(None))``; ``"train[:90%]"``, ``"train[90%:]"``,
    ``"train[10:20]"`` select episodes of the split (TFDS's slicing syntax; percentages round to
    the closest episode). Returns the split name and a slice over its episodes, or raises
    ``ValueError``."""
    m = _SPLIT_RE.match(split)
    if not m:
        raise ValueError(f"split {split!r}: expected NAME or NAME[start:stop] (episodes; ints or percentages)")
    return m.group(1), slice(m.group(2), m.group(3))


def _resolve_slice(sl: slice, n: int, split: str) -> range:
    def bound(b: str | None, default: int) -> int:
        if b is None:
            return default
        if b.endswith("%"):
            pct = int(b[:-1])
            if not -100 <= pct <= 100:
                raise ValueError(f"split {split!r}: percentage {b} is outside -100%..100%")
            v = math.floor(abs(pct) * n / 100 + 0.5)
            return n - v if pct < 0 else v
        return int(b)

    start, stop = bound(sl.start, 0), bound(sl.stop, n)
    return range(n)[slice(start, stop)]


# =========================================================================== the step index


class EpisodeRow(Mapping):
    """One episode of a :class:`StepIndex`, as the argument of an ``episode_filter`` predicate: the
    ``episodes.parquet`` columns (``episode_id``, ``length``, ``terminal``, ``source``, ...) and,
    loaded on first access, the episode metadata of the spec (``tags``, ``environment_id``,
    ``control_role``, ...: read from the episode-major shard, so a predicate that uses them reads
    every selected episode's record once)."""

    def __init__(self, index: StepIndex, position: int):
        self._index, self.position = index, position
        self._row = {k: v[position].item() if isinstance(v[position], np.generic) else v[position]
                     for k, v in index.episodes.items()}
        self._meta: dict[str, Any] | None = None

    def _metadata(self) -> dict[str, Any]:
        if self._meta is None:
            self._meta = self._index.episode_metadata(self.position)
        return self._meta

    def __getitem__(self, key: str) -> Any:
        if key in self._row:
            return self._row[key]
        if key in self._index.spec.metadata_leaves:
            return self._metadata()[key]
        raise KeyError(f"episode row has no {key!r}; it has {sorted(self._row)} and the episode metadata "
                       f"{sorted(self._index.spec.metadata_leaves)}")

    def __iter__(self) -> Iterator[str]:
        yield from self._row
        yield from (k for k in self._index.spec.metadata_leaves if k not in self._row)

    def __len__(self) -> int:
        return len(set(self._row) | set(self._index.spec.metadata_leaves))

    def __repr__(self) -> str:
        return f"EpisodeRow({self._row})"


class StepIndex:
    """``episodes.parquet`` of one split in RAM (see the module docstring). Build with :meth:`load`.

    Per episode (arrays of length ``num_episodes``, in global-step order): ``episodes["episode_id"]``,
    ``["length"]``, ``["first_step"]``, ``["terminal"]``, ``["step_file"]``, ``["step_offset"]``,
    ``["shard"]``, ``["shard_record"]``, ``["source"]``, ``["episode_index"]`` (the converter's input
    index). ``columns[path]`` is the ``(num_steps, *shape)`` array of each low-dimensional step
    feature. ``step_files`` are the absolute step file paths; ``file_ids[e]`` indexes them."""

    def __init__(self, path: Path, split: str, spec: EpisodeSpec, episodes: dict[str, np.ndarray],
                 columns: dict[str, np.ndarray], file_formats: tuple[str, ...] = ("array_record",)):
        self.path, self.split, self.spec = Path(path), split, spec
        self.episodes, self.columns = episodes, columns
        self.file_formats = file_formats
        self.starts = episodes["first_step"].astype(np.int64)
        self.lengths = episodes["length"].astype(np.int64)
        self.offsets = episodes["step_offset"].astype(np.int64)
        names, self.file_ids = np.unique(episodes["step_file"].astype(str), return_inverse=True)
        self.step_files = tuple(str(self.path / n) for n in names)
        self.file_ids = self.file_ids.astype(np.int64)
        self.num_steps = int(self.lengths.sum())
        self._meta_cache: dict[int, dict[str, Any]] = {}
        self._tfrecord_offsets: dict[str, list[tuple[int, int]]] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, dataset_path: str | os.PathLike, split: str = "train", *, spec: EpisodeSpec | None = None) -> StepIndex:
        """Read ``episodes.parquet`` of ``dataset_path`` (a dataset version folder, or a folder above
        holding exactly one) for ``split`` (a split name; see :func:`parse_split` for slices, which
        :func:`windows` applies). Raises ``DatasetError`` when the dataset has no step-major layout
        and ``KeyError`` for an unknown split."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from rldskit.formats.tfds_dir import EPISODE_INDEX_FILE, DatasetError, open_dataset

        ds = open_dataset(dataset_path, spec=spec)
        index_file = ds.path / EPISODE_INDEX_FILE
        if not index_file.is_file():
            raise DatasetError(f"{ds.path}: no {EPISODE_INDEX_FILE}, so no step-major layout to load windows from; "
                               "convert the dataset with rldskit (step index on, the default): "
                               f"rldskit convert {ds.path} --out DATA --name NAME")
        table = pq.read_table(index_file)
        missing = [c for c in ("split", "length", "first_step", "step_file", "step_offset") if c not in table.column_names]
        if missing:
            raise DatasetError(f"{index_file}: columns {missing} are missing (converted without a step index?)")
        splits = sorted(set(table.column("split").to_pylist()))
        table = table.filter(pc.equal(table.column("split"), split))
        if table.num_rows == 0:
            raise KeyError(f"{ds.path}: no split {split!r} in {EPISODE_INDEX_FILE}; it has {', '.join(splits)}")
        table = table.sort_by("first_step")
        episodes = {c: table.column(c).to_numpy() for c in _ROW_COLUMNS if c in table.column_names}
        starts, lengths = episodes["first_step"].astype(np.int64), episodes["length"].astype(np.int64)
        expected = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        if (lengths <= 0).any() or not np.array_equal(starts, expected):
            raise DatasetError(f"{index_file}: split {split!r}: episodes' first_step/length are not contiguous from 0")
        n = int(lengths.sum())
        columns: dict[str, np.ndarray] = {}
        for name in table.column_names:
            if name in _ROW_COLUMNS or name not in ds.spec.step_leaves:
                continue
            leaf = ds.spec.step_leaves[name]
            col = table.column(name).combine_chunks()
            if not np.array_equal(pc.list_value_length(col).to_numpy(zero_copy_only=False), lengths):
                raise DatasetError(f"{index_file}: column {name!r} does not hold one value per step of each episode")
            values = col.flatten()
            while hasattr(values, "flatten") and values.type.num_fields > 0:  # fixed-size lists of elements
                values = values.flatten()
            arr = np.asarray(values.to_numpy(zero_copy_only=False))
            shape = tuple(leaf.shape)
            if arr.size != n * int(np.prod(shape)):
                raise DatasetError(f"{index_file}: column {name!r} holds {arr.size} values; expected {n} x {list(shape)}")
            columns[name] = np.ascontiguousarray(arr.reshape((n, *shape)).astype(leaf.np_dtype, copy=False))
        return cls(ds.path, split, ds.spec, episodes, columns, ds.file_formats)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["spec"] = self.spec.to_json()  # EpisodeSpec holds mappingproxies, which do not pickle
        state["_meta_cache"], state["_tfrecord_offsets"] = {}, {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["spec"] = EpisodeSpec.from_dict(json.loads(state["spec"]), source="pickled StepIndex")
        self.__dict__.update(state)

    # ------------------------------------------------------------------ lookups

    @property
    def num_episodes(self) -> int:
        return len(self.starts)

    def episode_of(self, steps: np.ndarray | int) -> np.ndarray:
        """The episode position (``0..num_episodes-1``) of each global step."""
        g = np.asarray(steps, dtype=np.int64)
        if g.size and (g.min() < 0 or g.max() >= self.num_steps):
            raise IndexError(f"global step out of range 0..{self.num_steps - 1} of split {self.split!r}")
        return np.searchsorted(self.starts, g, side="right") - 1

    def locate(self, steps: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """``(episode, t)`` of each global step: ``t`` is the step's index within its episode."""
        e = self.episode_of(steps)
        return e, np.asarray(steps, dtype=np.int64) - self.starts[e]

    def record_of(self, steps: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """``(file id, record index)`` of each global step (``step_files[file id]`` is the file)."""
        e, t = self.locate(steps)
        return self.file_ids[e], self.offsets[e] + t

    def episode_steps(self, position: int) -> range:
        """The global steps of episode ``position``."""
        s = int(self.starts[position])
        return range(s, s + int(self.lengths[position]))

    def row(self, position: int) -> EpisodeRow:
        return EpisodeRow(self, position)

    def select(self, episodes: slice | range | Sequence[int] | None = None,
               episode_filter: Callable[[EpisodeRow], bool] | None = None) -> np.ndarray:
        """Episode positions chosen by a slice/list and a predicate on :class:`EpisodeRow` s."""
        pos = np.arange(self.num_episodes)
        if episodes is not None:
            pos = pos[episodes] if isinstance(episodes, slice) else pos[np.asarray(list(episodes), dtype=np.int64)]
        if episode_filter is not None:
            pos = np.asarray([p for p in pos if episode_filter(self.row(int(p)))], dtype=np.int64)
        return pos

    def steps_of(self, positions: np.ndarray) -> np.ndarray:
        """All global steps of the given episodes, episode by episode (an index list)."""
        if len(positions) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(self.starts[p], self.starts[p] + self.lengths[p]) for p in positions])

    def episode_metadata(self, position: int) -> dict[str, Any]:
        """The spec's episode metadata of episode ``position``, decoded from its record in the
        episode-major shard (ArrayRecord when the dataset has it, else TFRecord). Cached."""
        if position in self._meta_cache:
            return self._meta_cache[position]
        shard = str(self.episodes["shard"][position])
        record = int(self.episodes["shard_record"][position])
        primary = self.file_formats[0]
        if "array_record" in self.file_formats:
            path = self.path / shard.replace(f".{primary}-", ".array_record-")
            with ArrayRecordShardReader(path) as r:
                data = r.read([record])[0]
        else:
            from rldskit.formats.tfrecord import index_tfrecord, read_record_at

            path = self.path / shard
            if str(path) not in self._tfrecord_offsets:  # one scan per shard, not per episode
                self._tfrecord_offsets[str(path)] = index_tfrecord(path)
            data = read_record_at(path, self._tfrecord_offsets[str(path)][record][0])
        try:
            meta = decode_episode(data, self.spec).metadata
        except ExampleDecodeError as e:
            raise StepDecodeError(path, f"episode record is not an episode of {self.spec.id}: {e}",
                                  index=record, episode=str(self.episodes["episode_id"][position])) from None
        self._meta_cache[position] = meta
        return meta

    def __repr__(self) -> str:
        return (f"StepIndex({str(self.path)!r}, split={self.split!r}, {self.num_episodes} episodes, "
                f"{self.num_steps} steps, {len(self.step_files)} step files, low-dim {sorted(self.columns)})")


# =========================================================================== statistics


def compute_stats(index: StepIndex, keys: Sequence[str] | None = None,
                  steps: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Per-feature ``mean``, ``std`` (population), ``min``, ``max`` and ``count`` of the float
    low-dimensional columns of ``index`` (default: all of them), over all its steps or the global
    ``steps`` given (e.g. a training selection: ``index.steps_of(positions)``); an optional
    feature counts only the steps where its ``_present`` mask is True. JSON-ready (the
    :data:`STATS_FILE` format)."""
    out: dict[str, dict[str, Any]] = {}
    for key in keys if keys is not None else sorted(index.columns):
        col = index.columns.get(key)
        if col is None or col.dtype.kind != "f":
            continue
        present = index.columns.get(key + PRESENT_SUFFIX)
        if steps is not None:
            col = col[steps]
            present = present[steps] if present is not None else None
        x = col[present] if present is not None else col
        x = x.astype(np.float64, copy=False)
        if len(x) == 0:
            zero = np.zeros(col.shape[1:])
            out[key] = {"mean": zero.tolist(), "std": np.ones(col.shape[1:]).tolist(), "min": zero.tolist(),
                        "max": zero.tolist(), "count": 0}
            continue
        out[key] = {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(),
                    "max": x.max(0).tolist(), "count": int(len(x))}
    return out


def load_stats(dataset_path: str | os.PathLike) -> dict[str, dict[str, Any]] | None:
    """The :data:`STATS_FILE` beside a dataset version folder, or ``None`` when there is none."""
    p = Path(dataset_path)
    f = p / STATS_FILE if p.is_dir() else p
    if not f.is_file():
        return None
    try:
        obj = json.loads(f.read_bytes())
    except (OSError, ValueError) as e:
        raise ValueError(f"{f}: not a readable stats file: {e}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise ValueError(f"{f}: expected {{feature: {{'mean': [...], 'std': [...], 'min': [...], 'max': [...]}}}}")
    return obj


class Normalizer:
    """Per-feature affine normalisation ``y = (x - shift) / scale``.

    ``mode="mean_std"``: shift = mean, scale = std (1 where std < 1e-8). ``mode="min_max"``: maps
    ``[min, max]`` to ``[-1, 1]`` (scale 1 where max == min). ``stats`` is the :data:`STATS_FILE`
    mapping; every key in ``keys`` must be in it. Floats only; the result keeps the input dtype."""

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


# =========================================================================== images


_SIMPLEJPEG: Any = None


def _simplejpeg() -> Any:
    """The ``simplejpeg`` module (libjpeg-turbo, releases the GIL, decodes into a given buffer), or
    ``False`` when it is not installed (it is a dependency of the ``grain`` extra)."""
    global _SIMPLEJPEG
    if _SIMPLEJPEG is None:
        try:
            import simplejpeg

            _SIMPLEJPEG = simplejpeg
        except ImportError:
            _SIMPLEJPEG = False
    return _SIMPLEJPEG


def _decode_jpeg_fast(data: bytes, channels: int, size: tuple[int, int] | None,
                      out: np.ndarray | None) -> np.ndarray | None:
    """simplejpeg's decode of a JPEG whose pixels equal Pillow's (a YCbCr or grey source to RGB, a
    grey source to grey; the same libjpeg-turbo, same IDCT and upsampling), or ``None`` when Pillow
    must do it (no simplejpeg, not a JPEG, CMYK, colour to grey, or simplejpeg refuses the data: then
    Pillow decides, and names the error)."""
    sj = _simplejpeg()
    if not sj or channels not in (1, 3) or data[:2] != b"\xff\xd8":
        return None
    try:
        h, w, space, _ = sj.decode_jpeg_header(data)
        if space not in (("Gray",) if channels == 1 else ("YCbCr", "Gray")):
            return None
        colorspace = "GRAY" if channels == 1 else "RGB"
        if size is None:
            if out is not None and out.shape == (h, w, channels) and out.flags.c_contiguous:
                sj.decode_jpeg(data, colorspace, buffer=out)
                return out
            return sj.decode_jpeg(data, colorspace)
        # Pillow's draft: a power-of-two DCT reduction s (8, 4, 2 or 1) with s <= the smaller ratio
        # of the sizes, to ceil(h / s) x ceil(w / s); then Pillow's bilinear resize
        ratio = min(w // size[1], h // size[0]) if (w > size[1] or h > size[0]) else 1
        s = next(f for f in (8, 4, 2, 1) if ratio >= f or f == 1)
        want = (-(-h // s), -(-w // s))
        if s == 1:
            img = sj.decode_jpeg(data, colorspace)
        else:
            img = sj.decode_jpeg(data, colorspace, min_height=want[0], min_width=want[1])
            if img.shape[:2] != want:  # libjpeg picked another of its k/8 scales: Pillow's own way
                return None
    except ValueError:  # corrupt, truncated or an unusual JPEG: Pillow decides and names the error
        return None
    if img.shape[:2] != size:
        from PIL import Image as PILImage

        pil = PILImage.fromarray(img[:, :, 0] if channels == 1 else img, _MODES[channels])
        img = np.asarray(pil.resize((size[1], size[0]), PILImage.Resampling.BILINEAR))
        img = img[:, :, None] if img.ndim == 2 else img
    return img


def decode_image(data: bytes, channels: int = 3, size: tuple[int, int] | None = None,
                 out: np.ndarray | None = None) -> np.ndarray:
    """JPEG/PNG bytes -> ``uint8 (h, w, channels)``. ``size=(h, w)`` resizes (bilinear); a JPEG
    that is larger than ``size`` is first decoded at a reduced scale (libjpeg DCT scaling), which is
    several times faster than decoding it whole. ``out``: an array of the result's shape to decode
    into (JPEGs without ``size`` are then decoded straight into it, with no intermediate array);
    the result is always returned, and equals ``out`` when it was used.

    JPEGs go through simplejpeg when it is installed (2x faster than Pillow to a numpy array here,
    mostly by not allocating), with pixels identical to Pillow's; everything else (PNG, CMYK,
    colour to grey, data simplejpeg refuses) through Pillow. Raises what Pillow raises."""
    img = _decode_jpeg_fast(data, channels, size, out)
    if img is None:
        img = _decode_pil(data, channels, size)
    if out is not None and img is not out:
        if img.shape != out.shape:
            return img  # the caller compares shapes and names the mismatch
        out[...] = img
        return out
    return img


def _decode_pil(data: bytes, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image as PILImage

    img = PILImage.open(io.BytesIO(data))
    mode = _MODES[channels]
    if size is not None:
        h, w = size
        if img.format == "JPEG" and (img.width > w or img.height > h):
            img.draft(mode if mode in ("RGB", "L") else "RGB", (w, h))
    if img.mode != mode:
        img = img.convert(mode)
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), PILImage.Resampling.BILINEAR)
    arr = np.asarray(img)
    return arr[:, :, None] if arr.ndim == 2 else arr


class _ArrayPool:
    """Output arrays for image batches, recycled once nobody else holds them.

    A batch of two 480x640 cameras with ``history=2`` is 236 MB; allocating it fresh for every batch
    costs a page fault per 4 KiB page on first write (15-130 ms per batch here, as much as decoding
    a quarter of it). The pool keeps up to ``capacity`` arrays per shape and hands one out again only
    when its reference count shows that the pool is its sole holder: a batch (or any view, slice,
    ``torch.from_numpy`` tensor or buffer export of it) that the caller still holds is never
    overwritten, since each of those holds a reference. Code that keeps only a raw data pointer
    (``arr.ctypes.data``) must copy, or pass ``reuse_buffers=False``. Thread-safe; never pickled."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._arrays: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised array of ``shape``/``dtype`` (stale contents: write every element)."""
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            arrays = self._arrays.setdefault(key, [])
            for a in arrays:
                if sys.getrefcount(a) <= _FREE_REFS:  # the list, the loop variable, getrefcount's argument
                    return a
            a = np.empty(shape, dtype)
            if len(arrays) < self.capacity:
                arrays.append(a)
            return a


_FREE_REFS = 3


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


#: ``cache_frames=None`` caches decoded frames when all of them fit in this many bytes per process
CACHE_AUTO_BYTES = min(2 << 30, _physical_memory() // 4)


class _FrameCache:
    """Decoded (and resized) frames of one image feature, by global step: ``frames[g]`` is valid
    once ``filled[g]``. ``frames`` is ``np.empty`` (pages cost memory only once written), so RSS
    grows with the frames actually seen, up to ``num_steps * h * w * c`` bytes. Frames never
    change (a converted dataset is immutable); two threads filling the same step write the same
    pixels. Never pickled (each worker process builds its own)."""

    def __init__(self, num_steps: int, shape: tuple[int, int, int]):
        self.frames = np.empty((num_steps, *shape), np.uint8)
        self.filled = np.zeros(num_steps, bool)


# =========================================================================== fast record parsing


_EXAMPLE_CLASS = None


def _example_class():
    """A ``tf.train.Example`` message class built at run time on protobuf's C (upb) parser (protobuf
    is a Grain dependency; no TensorFlow). Parsing a step record with it takes ~8 us where the pure
    Python :func:`~rldskit.formats.tfexample.decode_step` takes ~100 us, and it holds the GIL far
    less, so decoding threads scale. Used when a window needs only images and text from records."""
    global _EXAMPLE_CLASS
    if _EXAMPLE_CLASS is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        T = descriptor_pb2.FieldDescriptorProto
        pkg = "rldskit_loaders_example"
        fdp = descriptor_pb2.FileDescriptorProto(name=f"{pkg}.proto", package=pkg, syntax="proto3")
        for name, ftype in (("BytesList", T.TYPE_BYTES), ("FloatList", T.TYPE_FLOAT), ("Int64List", T.TYPE_INT64)):
            f = fdp.message_type.add(name=name).field.add(name="value", number=1, type=ftype, label=T.LABEL_REPEATED)
            if ftype != T.TYPE_BYTES:
                f.options.packed = True
        feat = fdp.message_type.add(name="Feature")
        feat.oneof_decl.add(name="kind")
        for num, name in ((1, "bytes_list"), (2, "float_list"), (3, "int64_list")):
            kind = {"bytes_list": "BytesList", "float_list": "FloatList", "int64_list": "Int64List"}[name]
            feat.field.add(name=name, number=num, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                           type_name=f".{pkg}.{kind}", oneof_index=0)
        feats = fdp.message_type.add(name="Features")
        entry = feats.nested_type.add(name="FeatureEntry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
        entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL, type_name=f".{pkg}.Feature")
        feats.field.add(name="feature", number=1, type=T.TYPE_MESSAGE, label=T.LABEL_REPEATED,
                        type_name=f".{pkg}.Features.FeatureEntry")
        fdp.message_type.add(name="Example").field.add(name="features", number=1, type=T.TYPE_MESSAGE,
                                                        label=T.LABEL_OPTIONAL, type_name=f".{pkg}.Features")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        _EXAMPLE_CLASS = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{pkg}.Example"))
    return _EXAMPLE_CLASS


def _parse_bytes_features(data: bytes, keys: Sequence[str], spec: EpisodeSpec) -> dict[str, Any]:
    """``{key: value}`` for image and text ``keys`` of one step record, with the semantics of
    ``decode_step`` (images as bytes, ``b""`` for an absent optional frame; text as ``str``).
    Raises ``ExampleDecodeError``."""
    from google.protobuf.message import DecodeError

    ex = _example_class()()
    try:
        ex.ParseFromString(data)
    except DecodeError as e:
        raise ExampleDecodeError(f"not a tf.train.Example: {e}") from None
    feats = ex.features.feature
    out: dict[str, Any] = {}
    for key in keys:
        if key not in feats:
            raise ExampleDecodeError(f"feature {key!r} is absent (declared by {spec.id})")
        f = feats[key]
        if f.WhichOneof("kind") != "bytes_list" or len(f.bytes_list.value) != 1:
            raise ExampleDecodeError(f"feature {key!r}: expected 1 byte string")
        value = f.bytes_list.value[0]
        leaf = spec.step_leaves[key]
        if isinstance(leaf, Image):
            if leaf.optional:
                present = feats[key + PRESENT_SUFFIX] if key + PRESENT_SUFFIX in feats else None
                if present is None or present.WhichOneof("kind") != "int64_list" or len(present.int64_list.value) != 1:
                    raise ExampleDecodeError(f"feature {key + PRESENT_SUFFIX!r}: expected 1 int64")
                if not present.int64_list.value[0]:
                    value = b""
        else:
            try:
                value = value.decode()
            except UnicodeDecodeError:
                raise ExampleDecodeError(f"feature {key!r}: text is not UTF-8") from None
        out[key] = value
    return out


# =========================================================================== sources


class _Readers:
    """One :class:`ArrayRecordShardReader` per (thread, file), opened on first use. Never pickled."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, path: str) -> ArrayRecordShardReader:
        readers = self._local.__dict__.setdefault("readers", {})
        r = readers.get(path)
        if r is None:
            r = readers[path] = ArrayRecordShardReader(path)
        return r

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._local = threading.local()


class StepSource:
    """Random access to the steps of one split of the step-major layout (a Grain
    ``RandomAccessDataSource``): ``source[g]`` is the decoded step ``g`` (``{path: value}``, images
    as encoded bytes, ``b""`` for an absent optional frame). ``_getitems``/``__getitems__`` (Grain's
    and torch's batched protocols) read each file once per call. Thread-safe (a reader per thread);
    picklable (pickles its :class:`StepIndex`)."""

    def __init__(self, index: StepIndex | str | os.PathLike, split: str = "train"):
        self.index = index if isinstance(index, StepIndex) else StepIndex.load(index, split)
        self._readers = _Readers()

    def __len__(self) -> int:
        return self.index.num_steps

    def __getitem__(self, step: int) -> dict[str, Any]:
        return self._getitems([step])[0]

    def _getitems(self, steps: Sequence[int]) -> list[dict[str, Any]]:
        g = np.asarray(steps, dtype=np.int64).reshape(-1)
        return [self.decode(data, int(s)) for data, s in zip(self.read_records(g), g)]

    __getitems__ = _getitems

    def where(self, step: int) -> dict[str, Any]:
        """``{"path", "index", "step", "episode", "t"}`` of a global step (for error messages)."""
        e, t = self.index.locate(step)
        fid, rec = self.index.record_of(step)
        return {"path": self.index.step_files[int(fid)], "index": int(rec), "step": int(step),
                "episode": str(self.index.episodes["episode_id"][int(e)]), "t": int(t)}

    def read_records(self, steps: np.ndarray) -> list[bytes]:
        """The raw records of ``steps`` (any order), one batched ``read`` per step file."""
        g = np.asarray(steps, dtype=np.int64).reshape(-1)
        fids, recs = self.index.record_of(g)
        out: list[bytes | None] = [None] * len(g)
        for fid in np.unique(fids):
            sel = np.flatnonzero(fids == fid)
            order = sel[np.argsort(recs[sel], kind="stable")]
            path = self.index.step_files[int(fid)]
            try:
                data = self._readers.get(path).read(recs[order].tolist())
            except ArrayRecordCorruption as e:
                bad = next((int(s) for s, r in zip(g[order], recs[order]) if r == e.index), None)
                w = self.where(bad) if bad is not None else {}
                raise StepRecordCorruption(path, e.detail, index=e.index, step=w.get("step"), episode=w.get("episode"),
                                           t=w.get("t")) from None
            except IndexError as e:
                raise StepRecordCorruption(path, f"{e}; episodes.parquet points past the end of the file") from None
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: step file named by episodes.parquet is missing") from None
            for j, d in zip(order, data):
                out[j] = d
        return out  # type: ignore[return-value]

    def read_fields(self, steps: np.ndarray, keys: Sequence[str]) -> list[dict[str, Any]]:
        """``[{key: value}]`` of ``keys`` for each of ``steps`` (decoded as :meth:`decode` does): the
        fast protobuf parser when every key is an image or text, else ``decode_step``."""
        spec = self.index.spec
        g = np.asarray(steps, dtype=np.int64).reshape(-1)
        raw = self.read_records(g)
        fast = all(isinstance(spec.step_leaves[k], (Image, Text)) for k in keys)
        out = []
        for data, s in zip(raw, g.tolist()):
            if fast:
                try:
                    out.append(_parse_bytes_features(data, keys, spec))
                except ExampleDecodeError as e:
                    w = self.where(s)
                    raise StepDecodeError(w.pop("path"), f"not a step of {spec.id}: {e}", **w) from None
            else:
                d = self.decode(data, s)
                out.append({k: d[k] for k in keys})
        return out

    def decode(self, data: bytes, step: int) -> dict[str, Any]:
        """``decode_step`` with errors naming the file, record and step."""
        try:
            return decode_step(data, self.index.spec)
        except ExampleDecodeError as e:
            w = self.where(step)
            raise StepDecodeError(w.pop("path"), f"not a step of {self.index.spec.id}: {e}", **w) from None

    def __repr__(self) -> str:
        return f"StepSource({self.index.path.name}, split={self.index.split!r}, {len(self)} steps)"


class EpisodeSource:
    """Random access to the episodes of one split of any TFDS RLDS dataset folder in ArrayRecord
    (one episode per record: ours, or Open-X via ``last_step``): ``source[i]`` is an
    :class:`~rldskit.episode.Episode` (images as encoded bytes). A Grain ``RandomAccessDataSource``
    with batched ``_getitems`` (one ``read`` per shard); picklable; a reader per thread."""

    def __init__(self, dataset_path: str | os.PathLike, split: str = "train", *, last_step: str | None = None,
                 spec: EpisodeSpec | None = None):
        from rldskit.formats.tfds_dir import open_dataset

        ds = open_dataset(dataset_path, spec=spec, last_step=last_step)
        if "array_record" not in ds.file_formats:
            raise ValueError(f"{ds.path}: no ArrayRecord shards (it has {', '.join(ds.file_formats)}); random access "
                             "needs them: rldskit convert it with --format array_record")
        self.path, self.split, self.spec = ds.path, split, ds.spec
        self.shards = tuple(str(p) for p in ds.shards(split, "array_record"))
        counts = np.asarray(ds.shard_lengths[split], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self._len = int(counts.sum())
        self._readers = _Readers()

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int):
        return self._getitems([i])[0]

    def _getitems(self, indices: Sequence[int]) -> list:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self._len):
            raise IndexError(f"episode index out of range 0..{self._len - 1} of split {self.split!r}")
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        rec = idx - self._starts[shard]
        out: list = [None] * len(idx)
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            path = self.shards[int(s)]
            try:
                data = self._readers.get(path).read(rec[sel].tolist())
            except ArrayRecordCorruption as e:
                raise StepRecordCorruption(path, e.detail, index=e.index) from None
            for j, d, r in zip(sel, data, rec[sel]):
                try:
                    out[j] = decode_episode(d, self.spec)
                except ExampleDecodeError as e:
                    raise StepDecodeError(path, f"not an episode of {self.spec.id}: {e}", index=int(r)) from None
        return out

    __getitems__ = _getitems

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["spec"] = self.spec.to_json()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["spec"] = EpisodeSpec.from_dict(json.loads(state["spec"]), source="pickled EpisodeSource")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"EpisodeSource({self.path.name}, split={self.split!r}, {self._len} episodes, {len(self.shards)} shards)"


# =========================================================================== windows


@dataclasses.dataclass(frozen=True)
class _Key:
    path: str
    role: str  # "history" | "chunk" | "current" | "goal"
    kind: str  # "ram" | "image" | "record"

    @property
    def name(self) -> str:
        """The key in the batch: the path, or ``goal/<path>`` for a goal key."""
        return f"goal/{self.path}" if self.role == "goal" else self.path


#: goal relabelling strategies of :class:`WindowMaker` (``None``: no goal keys)
GOALS = (None, "last", "uniform")


class WindowMaker:
    """Batch of global steps (``int64 (B,)``, or one step) -> batch of samples (module docstring).

    ``history_keys`` get ``H`` frames ``(B, H, ...)``, ``chunk_keys`` ``K`` steps ``(B, K, ...)``,
    ``current_keys`` the step itself ``(B, ...)``, ``goal_keys`` the goal step as ``goal/<key>``
    ``(B, ...)``: with ``goal="last"`` the episode's last step, with ``goal="uniform"`` a step drawn
    uniformly from ``t..L-1`` (Octo's ``uniform`` goal relabelling; the draw comes from the ``rng``
    argument, which the loader's ``random_map`` derives from its seed and the batch's position, so
    resuming reproduces it; without ``rng`` it is a function of the steps). With ``windowed=False`` (single steps) every key
    is a current key and no pad masks are produced. Keys are flat step paths; images come out as
    ``uint8 (…, h, w, c)`` (zeros for an absent optional frame), text as ``str`` arrays. Debug keys
    (``debug=True``): ``episode_index`` (the episode's position in the split's index),
    ``frame_index`` (``t``) and ``index`` (the global step ``g``). With ``reuse_buffers``, image
    arrays come from an :class:`_ArrayPool` of ``pool_capacity`` per shape: an image array that the
    caller has dropped (no reference, view or tensor of it left) is overwritten by a later batch.
    ``cache_frames`` keeps every decoded (resized) frame in RAM by global step, so each is read
    and decoded once per process, not once per epoch (``None``: when all frames of the split fit
    in :data:`CACHE_AUTO_BYTES`, e.g. 4k steps at 60x80 take 58 MB, 20k steps of two 480x640
    cameras would take 37 GB and are not cached). Picklable (a fresh pool and cache per process)."""

    def __init__(self, source: StepSource, *, history: int = 1, action_horizon: int = 1,
                 history_keys: Sequence[str] = (), chunk_keys: Sequence[str] = (), current_keys: Sequence[str] = (),
                 windowed: bool = True, decode_images: bool = True, resize: tuple[int, int] | None = None,
                 normalizer: Normalizer | None = None, debug: bool = True, reuse_buffers: bool = True,
                 pool_capacity: int = 8, goal: str | None = None, goal_keys: Sequence[str] = (),
                 cache_frames: bool | None = None):
        if history < 1 or action_horizon < 1:
            raise ValueError(f"history and action_horizon must be >= 1, got {history}, {action_horizon}")
        if goal not in GOALS:
            raise ValueError(f"goal must be one of {GOALS}, got {goal!r}")
        if goal is None and goal_keys:
            raise ValueError(f"goal_keys {list(goal_keys)} need goal='last' or goal='uniform'")
        self.goal = goal
        self.source, self.index = source, source.index
        self.history, self.action_horizon, self.windowed = int(history), int(action_horizon), windowed
        self.decode_images, self.normalizer, self.debug = decode_images, normalizer, debug
        self._pool = _ArrayPool(pool_capacity) if reuse_buffers else None
        self.cache_frames = cache_frames
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        spec = self.index.spec
        keys: list[_Key] = []
        for role, paths in (("history", history_keys), ("chunk", chunk_keys), ("current", current_keys),
                            ("goal", goal_keys if goal is not None else ())):
            for p in paths:
                if p not in spec.step_leaves:
                    raise KeyError(f"{spec.id} has no step feature {p!r}; it has {', '.join(spec.step_leaves)}")
                leaf = spec.step_leaves[p]
                if isinstance(leaf, Image):
                    if not decode_images:
                        continue
                    kind = "image"
                elif p in self.index.columns:
                    kind = "ram"
                else:
                    kind = "record"
                keys.append(_Key(p, role if windowed or role == "goal" else "current", kind))
        if len({k.name for k in keys}) != len(keys):
            raise ValueError(f"a feature is asked for in two roles: {[k.path for k in keys]}")
        self.keys = tuple(keys)
        image_bytes = sum(int(np.prod(self._image_shape(k.path))) for k in keys if k.kind == "image")
        self.cache_bytes = image_bytes * self.index.num_steps  # every frame of the split, decoded
        if cache_frames is None:
            cache_frames = 0 < self.cache_bytes <= CACHE_AUTO_BYTES
        self._caching = bool(cache_frames) and image_bytes > 0
        self._caches: dict[str, _FrameCache] = {}
        self._cache_lock = threading.Lock()
        self._hoffs = np.arange(-self.history + 1, 1, dtype=np.int64)
        self._coffs = np.arange(self.action_horizon, dtype=np.int64)

    def with_rng(self, steps: np.ndarray | int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``self(steps, rng)``: the ``(element, rng)`` form Grain's ``random_map`` calls."""
        return self(steps, rng)

    def _image_shape(self, path: str) -> tuple[int, int, int]:
        h, w, c = self.index.spec.step_leaves[path].shape
        return (*self.resize, c) if self.resize else (h, w, c)

    def __call__(self, steps: np.ndarray | int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        g = np.asarray(steps, dtype=np.int64)
        single = g.ndim == 0
        g = g.reshape(-1)
        index = self.index
        e, t = index.locate(g)
        s0, length = index.starts[e], index.lengths[e]
        gather: dict[str, np.ndarray] = {"current": g}
        pads: dict[str, np.ndarray] = {}
        if self.windowed:
            ht = t[:, None] + self._hoffs[None, :]
            pads["observation_is_pad"] = ht < 0
            gather["history"] = s0[:, None] + np.maximum(ht, 0)
            ct = t[:, None] + self._coffs[None, :]
            pads["action_is_pad"] = ct >= length[:, None]
            gather["chunk"] = s0[:, None] + np.minimum(ct, length[:, None] - 1)
        if self.goal == "last":
            gather["goal"] = s0 + length - 1
        elif self.goal == "uniform":
            if rng is None:  # standalone use: a function of the steps
                rng = np.random.default_rng(np.frombuffer(hashlib.sha256(g.tobytes()).digest()[:16], np.uint32))
            gather["goal"] = g + np.floor(rng.random(len(g)) * (length - t)).astype(np.int64)
        # one grouped read of every step a record-backed key needs
        from_records = [k for k in self.keys if k.kind != "ram"]
        records: dict[int, dict[str, Any]] = {}
        if from_records:
            parts, read_keys = [], []
            for k in from_records:
                steps_k = np.unique(gather[k.role].reshape(-1))
                if k.kind == "image" and self._caching:
                    steps_k = steps_k[~self._cache(k.path).filled[steps_k]]
                if len(steps_k):
                    parts.append(steps_k)
                    read_keys.append(k.path)
            if parts:
                need = np.unique(np.concatenate(parts))
                fields = self.source.read_fields(need, read_keys)
                records = dict(zip(need.tolist(), fields))
        out: dict[str, np.ndarray] = {}
        for k in self.keys:
            gi = gather[k.role]
            if k.kind == "ram":
                x = index.columns[k.path][gi]
            elif k.kind == "image":
                x = self._images(k.path, gi, records)
            else:
                x = self._record_values(k.path, gi, records)
            if self.normalizer is not None and x.dtype.kind == "f":
                x = self.normalizer.normalize(k.path, x)
            out[k.name] = x
        out.update(pads)
        if self.debug:
            out["episode_index"], out["frame_index"], out["index"] = e, t, g
            if "goal" in gather:
                out["goal_frame_index"] = gather["goal"] - s0
        if single:
            return {k: v[0] for k, v in out.items()}
        return out

    def _images(self, path: str, gi: np.ndarray, records: dict[int, dict[str, Any]]) -> np.ndarray:
        h, w, c = self._image_shape(path)
        shape = (*gi.shape, h, w, c)
        out = self._pool.take(shape, np.uint8) if self._pool is not None else np.empty(shape, dtype=np.uint8)
        flat = out.reshape(-1, h, w, c)
        cache = self._cache(path) if self._caching else None
        done: dict[int, int] = {}
        for j, s in enumerate(gi.reshape(-1).tolist()):
            if s in done:
                flat[j] = flat[done[s]]
                continue
            done[s] = j
            if cache is not None and cache.filled[s]:
                flat[j] = cache.frames[s]
                continue
            data = records[s][path]
            if not data:  # an absent optional frame: zeros, and its _present mask says so
                flat[j] = 0
                if cache is not None:
                    cache.frames[s] = 0
                    cache.filled[s] = True
                continue
            try:
                img = decode_image(data, c, self.resize, out=flat[j])
            except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
                where = self.source.where(s)
                raise StepDecodeError(where.pop("path"), f"feature {path}: image does not decode: "
                                                         f"{type(err).__name__}: {err}", **where) from None
            if img.shape != (h, w, c):
                where = self.source.where(s)
                raise StepDecodeError(where.pop("path"), f"feature {path}: image is {img.shape}, the spec says "
                                                         f"{(h, w, c)} (pass resize=(h, w) to load other sizes)", **where)
            if cache is not None:
                cache.frames[s] = flat[j]
                cache.filled[s] = True  # after the pixels: a reader that sees True sees them
        return out

    def _cache(self, path: str) -> _FrameCache:
        cache = self._caches.get(path)
        if cache is None:
            with self._cache_lock:
                cache = self._caches.get(path)
                if cache is None:
                    cache = self._caches[path] = _FrameCache(self.index.num_steps, self._image_shape(path))
        return cache

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pool"] = None if self._pool is None else self._pool.capacity  # a fresh, empty pool per process
        state["_caches"], state["_cache_lock"] = {}, None  # and a fresh, empty frame cache
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        cap = state["_pool"]
        state["_pool"] = None if cap is None else _ArrayPool(cap)
        state["_cache_lock"] = threading.Lock()
        self.__dict__.update(state)

    def _record_values(self, path: str, gi: np.ndarray, records: dict[int, dict[str, Any]]) -> np.ndarray:
        leaf = self.index.spec.step_leaves[path]
        vals = [records[s][path] for s in gi.reshape(-1).tolist()]
        if isinstance(leaf, Text) or leaf.dtype == "string":
            arr = np.asarray(vals) if isinstance(leaf, Text) else np.asarray(vals, dtype=object)
            return arr.reshape(gi.shape + arr.shape[1:])
        arr = np.stack(vals)
        return arr.reshape(gi.shape + arr.shape[1:])

    def __repr__(self) -> str:
        keys = ", ".join(f"{k.path}:{k.role}" for k in self.keys)
        goal = f", goal={self.goal}" if self.goal else ""
        return f"WindowMaker(H={self.history}, K={self.action_horizon}{goal}, {keys})"


# =========================================================================== the loader


class _EpochOrder:
    """Element ``i`` of the repeated dataset -> its global steps, by vectorised index arithmetic:
    epoch ``e = i // per_epoch`` orders the selection by a seeded permutation (``seed`` hashed,
    then ``e``; the identity without ``shuffle``), host ``p`` of ``P`` takes positions ``p, p+P,
    ...`` of it (below ``P * (n // P)`` with ``drop_remainder``), and batch ``b = i % per_epoch``
    is the next ``batch_size`` of those (``int64 (B,)``; one ``int64`` step when unbatched). One
    permutation per epoch (0.3 ms for 20k steps, cached), against ~30 us per sample through
    per-element shuffle and batch datasets. Picklable; the same in every process."""

    def __init__(self, selected: np.ndarray, *, seed: int, shuffle: bool, process_index: int, process_count: int,
                 batch_size: int | None, drop_remainder: bool):
        self.selected = np.asarray(selected, dtype=np.int64)
        self.seed, self.shuffle, self.batch_size = _shuffle_seed(seed), bool(shuffle), batch_size
        n = len(self.selected)
        stop = process_count * (n // process_count) if (drop_remainder and process_count > 1) else n
        self.positions = np.arange(process_index, stop, process_count, dtype=np.int64)
        self.num_samples = len(self.positions)
        if batch_size is None:
            self.per_epoch = self.num_samples
        elif drop_remainder:
            self.per_epoch = self.num_samples // batch_size
        else:
            self.per_epoch = -(-self.num_samples // batch_size)
        self._cached: tuple[int, np.ndarray] | None = None

    def epoch(self, e: int) -> np.ndarray:
        """This host's steps of epoch ``e``, in order."""
        cached = self._cached
        if cached is not None and cached[0] == e:
            return cached[1]
        if self.shuffle:
            perm = np.random.default_rng([self.seed, int(e)]).permutation(len(self.selected))
            steps = self.selected[perm][self.positions]
        else:
            steps = self.selected[self.positions]
        self._cached = (e, steps)  # one tuple assignment: threads see the old or the new pair
        return steps

    def element(self, i: int, _unused: Any = None) -> np.ndarray:
        """Grain ``map_with_index`` entry: the steps of element ``i``."""
        e, b = divmod(int(i), self.per_epoch)
        steps = self.epoch(e)
        if self.batch_size is None:
            return steps[b]
        return steps[b * self.batch_size:(b + 1) * self.batch_size]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cached": None}


def _shuffle_seed(seed: int) -> int:
    """The user's seed hashed (epochs are seeded ``[hash, e]``, and the goal draws ``hash(seed + 1)``),
    so nearby seeds give unrelated orders."""
    return int(np.random.SeedSequence([int(seed), 0x726C6473]).generate_state(1, dtype=np.uint32)[0])


def _default_read_options(worker_count: int, reads_records: bool) -> grain.ReadOptions:
    """Threads and buffer per process, from measurements on 2 cores (``bench/load.py``: windows
    ``H=2, K=8``, batch 64, two 480x640 JPEG cameras, 20k steps, steady state, medians of 24
    intervals; simplejpeg decoding into recycled batch buffers):

    ===========================================  ======  ======  ======  ===========  ===========
    windows/s                                    1 thr   2 thr   4 thr   2 workers    tf.data
    ===========================================  ======  ======  ======  ===========  ===========
    recycled buffers (the default)                 502     926     925     619          831
    ``reuse_buffers=False``                          -     846       -       -            -
    ===========================================  ======  ======  ======  ===========  ===========

    The decode floor (simplejpeg, two threads, no pipeline) is 1030 windows/s, so 2 threads run at
    90% of it on 1.93 cores. Grain's default (16 threads, a 500-element buffer) measured no faster
    than 2 threads with Pillow, and since our elements are whole batches (236 MB each here) its
    buffer would hold hundreds of them. simplejpeg and Pillow release the GIL while decoding, so 2
    threads use both cores; worker processes lose to threads because every batch crosses to the
    main process through shared memory. The buffer size mattered little (2-8 batches within 2%),
    so it is ``threads + 1``. Without record reads everything is numpy indexing in RAM: no threads.
    Each worker process (``worker_count > 0``) runs one thread."""
    if not reads_records:
        return grain.ReadOptions(num_threads=0, prefetch_buffer_size=1)
    threads = 1 if worker_count > 0 else max(1, min(_MAX_THREADS, os.cpu_count() or 1))
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=threads + 1)


def _absl_flags_ready() -> None:
    """Grain 0.2.18 imports JAX's profiler when JAX is installed and then reads an absl flag when
    it starts worker processes, which raises ``UnparsedFlagAccessError`` outside ``absl.app.run``
    (plain scripts, pytest). Marking the flags parsed keeps every default; ``app.run`` still
    parses the command line later as usual."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class Loader(grain.DatasetIterator):
    """An iterable of batches with ``len`` and exact resumption (module docstring, *State*).

    It is a Grain ``DatasetIterator``, so Grain's Orbax checkpoint handler
    (``grain.checkpoint.CheckpointSave(loader)`` / ``CheckpointRestore(loader)`` in an
    ``orbax.checkpoint.CheckpointManager``, one ``process_<i>-of-<n>.json`` per host) and Orbax's
    ``StatefulCheckpointable`` API (``save``/``load``) checkpoint it with the model.

    ``iter(loader)`` continues the pass in progress (so a ``break`` and a new ``for`` go on where
    they left off); once a pass has ended, ``iter`` starts a new one from the first batch.
    ``get_state()`` is a small JSON-able dict; ``set_state(state)`` makes the next batch the one
    that followed when the state was taken. ``dataset`` is the Grain ``IterDataset``,
    ``map_dataset`` the ``MapDataset`` before it (random access to batch ``i``). Close it (or use it
    as a context manager) to stop worker processes promptly. Worker processes (``worker_count > 0``)
    are started with ``spawn`` (Grain's choice): a script needs the ``if __name__ == "__main__":``
    guard, and a worker takes a second or two to start (imports)."""

    def __init__(self, map_dataset: grain.MapDataset, *, epoch_length: int, read_options: grain.ReadOptions,
                 worker_count: int, fingerprint: str, index: StepIndex, maker: WindowMaker,
                 normalizer: Normalizer | None, num_samples: int, config: dict[str, Any]):
        self.map_dataset, self.read_options, self.worker_count = map_dataset, read_options, worker_count
        self.index, self.maker, self.normalizer, self.config = index, maker, normalizer, config
        super().__init__()
        self.num_samples = num_samples  # selected steps per epoch on this host
        self._epoch_length, self._fingerprint = epoch_length, fingerprint
        self._it: Iterator | None = None
        self._next = 0
        self._exhausted = False

    def _iter_dataset(self, start: int = 0) -> grain.IterDataset:
        ds = self.map_dataset if start == 0 else self.map_dataset[start:]
        ids = ds.to_iter_dataset(self.read_options)
        if self.worker_count > 0:
            _absl_flags_ready()
            ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count))
        return ids

    @property
    def dataset(self) -> grain.IterDataset:
        """The Grain pipeline from the first batch (``to_iter_dataset`` and ``mp_prefetch`` applied)."""
        return self._iter_dataset(0)

    def __len__(self) -> int:
        """Batches (or samples, unbatched) per epoch on this host."""
        return self._epoch_length

    @property
    def num_batches(self) -> int | None:
        """Batches in all epochs, or ``None`` when repeating forever."""
        n = len(self.map_dataset)
        return None if self.config["num_epochs"] is None else n

    def __iter__(self) -> Loader:
        if self._exhausted:
            self._close_iterator()
            self._next, self._exhausted = 0, False
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._exhausted:
            raise StopIteration
        if self._it is None:
            self._it = iter(self._iter_dataset(self._next))
        try:
            batch = next(self._it)
        except StopIteration:
            self._exhausted = True
            self._close_iterator()
            raise
        except BaseException:
            self._close_iterator()  # a later next() retries the same batch (and raises the same error)
            raise
        self._next += 1
        return batch

    def start_prefetch(self) -> None:
        """Start reading the next batches in the background now (Grain's checkpoint handler calls
        it after a restore, so the first batch overlaps restoring the model). Idempotent."""
        if self._exhausted:
            return
        if self._it is None:
            self._it = iter(self._iter_dataset(self._next))
        if hasattr(self._it, "start_prefetch"):
            self._it.start_prefetch()

    def _get_next_index(self) -> int:
        return self._next

    def _set_next_index(self, index: int) -> None:
        self.set_state({"rldskit_loader": 1, "next_batch": int(index), "fingerprint": self._fingerprint})

    def get_state(self) -> dict[str, Any]:
        """``{"rldskit_loader": 1, "next_batch": n, "fingerprint": ...}`` (JSON-able)."""
        return {"rldskit_loader": 1, "next_batch": self._next, "fingerprint": self._fingerprint}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("rldskit_loader") != 1 or "next_batch" not in state:
            raise ValueError(f"not an rldskit Loader state: {state!r:.200}")
        if state.get("fingerprint") != self._fingerprint:
            raise ValueError("this state belongs to a loader with another order (dataset selection, seed, shuffle, "
                             "batch size, epochs, process index/count or drop_remainder differ); it cannot resume here")
        n = int(state["next_batch"])
        if not 0 <= n <= len(self.map_dataset):
            raise ValueError(f"state next_batch={n} is outside 0..{len(self.map_dataset)}")
        self._close_iterator()
        self._next, self._exhausted = n, False

    def _close_iterator(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            try:
                it.close()
            except Exception:  # closing is best effort; the worker processes are daemons
                pass

    def close(self) -> None:
        self._close_iterator()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        c = self.config
        where = f"{self.index.path.parent.name}/{self.index.path.name}/{c['split']}"
        return (f"Loader({c['kind']}, {where}, {self.num_samples} samples x "
                f"{c['num_epochs'] or 'inf'} epochs, batch {c['batch_size']}, {len(self)} per epoch, "
                f"host {c['process_index']}/{c['process_count']}, workers {self.worker_count}, "
                f"threads {self.read_options.num_threads})")


def _build(kind: str, path: str | os.PathLike, *, split: str, episode_filter, batch_size: int | None, seed: int,
           shuffle: bool, num_epochs: int | None, process_index: int, process_count: int, worker_count: int,
           drop_remainder: bool, normalize: str | None, stats, num_threads: int | None,
           prefetch_buffer_size: int | None, reuse_buffers: bool,
           make_maker: Callable[[StepSource, Normalizer | None, bool], WindowMaker],
           norm_keys: Callable[[StepIndex], list[str]]) -> Loader:
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must be in 0..process_count-1, got {process_index} of {process_count}")
    if worker_count < 0:
        raise ValueError(f"worker_count must be >= 0, got {worker_count}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None (forever), got {num_epochs}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    base, sl = parse_split(split)
    index = StepIndex.load(path, base)
    positions = index.select(_resolve_slice(sl, index.num_episodes, split), episode_filter)
    selected = index.steps_of(positions)
    if len(selected) == 0:
        raise ValueError(f"{index.path}: split {split!r}{' and episode_filter' if episode_filter else ''} select no steps")
    normalizer = None
    if normalize is not None:
        mode = "mean_std" if normalize == "stats" else normalize
        keys = [k for k in norm_keys(index) if k in index.columns and index.columns[k].dtype.kind == "f"]
        if isinstance(stats, (str, os.PathLike)):
            st, where = load_stats(stats), str(stats)
            if st is None:
                raise FileNotFoundError(f"{stats}: no stats file")
        elif stats is not None:
            st, where = stats, "stats argument"
        elif (st := load_stats(index.path)) is not None:
            where = str(index.path / STATS_FILE)
        else:
            train = index if base == "train" else StepIndex.load(path, "train")
            st, where = compute_stats(train, keys), f"train split of {index.path.name} (computed)"
        shapes = {k: index.columns[k].shape[1:] for k in keys}
        normalizer = Normalizer(st, mode, keys, shapes=shapes, source=where)
    maker = make_maker(StepSource(index), normalizer, reuse_buffers)

    order = _EpochOrder(selected, seed=seed, shuffle=shuffle, process_index=process_index,
                        process_count=process_count, batch_size=batch_size, drop_remainder=drop_remainder)
    num_samples, epoch_length = order.num_samples, order.per_epoch
    if epoch_length == 0:
        raise ValueError(f"{num_samples} samples per epoch on this host make no batch of {batch_size} "
                         "with drop_remainder=True")
    ds = grain.MapDataset.range(epoch_length)
    ds = ds.repeat(num_epochs).map_with_index(order.element)
    if maker.goal == "uniform":  # an rng per batch from (seed, batch position): resuming redraws the same goals
        ds = ds.random_map(maker.with_rng, seed=_shuffle_seed(seed + 1))
    else:
        ds = ds.map(maker)
    default = _default_read_options(worker_count, any(k.kind != "ram" for k in maker.keys))
    if num_threads is None and prefetch_buffer_size is None:
        read_options = default
    else:
        read_options = grain.ReadOptions(
            num_threads=default.num_threads if num_threads is None else num_threads,
            prefetch_buffer_size=default.prefetch_buffer_size if prefetch_buffer_size is None else prefetch_buffer_size)
    if maker._pool is not None:  # batches being built + Grain's buffer + the caller's current and previous one
        maker._pool.capacity = read_options.num_threads + read_options.prefetch_buffer_size + 3
    what = {"selection": hashlib.sha256(selected.tobytes()).hexdigest()[:16], "split": split, "seed": int(seed),
             "shuffle": bool(shuffle), "batch_size": batch_size, "num_epochs": num_epochs,
             "process_index": process_index, "process_count": process_count, "drop_remainder": bool(drop_remainder),
             "goal": maker.goal}
    fingerprint = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]
    config = dict(what, kind=kind, worker_count=worker_count)
    return Loader(ds, epoch_length=epoch_length, read_options=read_options, worker_count=worker_count,
                  fingerprint=fingerprint, index=index, maker=maker, normalizer=normalizer, num_samples=num_samples,
                  config=config)


def _observation_keys(spec: EpisodeSpec, observation_keys: Sequence[str] | None) -> list[str]:
    if observation_keys is not None:
        return list(observation_keys)
    return [p for p in spec.step_leaves if p.startswith("observation/")]


def windows(path: str | os.PathLike, history: int = 1, action_horizon: int = 1, batch_size: int | None = 32,
            seed: int = 0, shuffle: bool = True, num_epochs: int | None = 1, decode_images: bool = True,
            resize: tuple[int, int] | None = None, normalize: str | None = None, split: str = "train",
            process_index: int = 0, process_count: int = 1, worker_count: int = 0,
            episode_filter: Callable[[EpisodeRow], bool] | None = None, drop_remainder: bool = True, *,
            observation_keys: Sequence[str] | None = None, action_keys: Sequence[str] = ("action",),
            extra_keys: Sequence[str] | None = None, stats: Mapping | str | os.PathLike | None = None,
            num_threads: int | None = None, prefetch_buffer_size: int | None = None,
            debug_keys: bool = True, reuse_buffers: bool = True, goal: str | None = None,
            goal_keys: Sequence[str] | None = None, cache_frames: bool | None = None) -> Loader:
    """Batches of windows from a converted dataset (its step-major layout). One sample per selected
    step ``t``: ``observation_keys`` (default: every ``observation/*`` feature; images only with
    ``decode_images``) over the history ``t-H+1..t`` -> ``(B, H, ...)`` with ``observation_is_pad``
    ``(B, H)``; ``action_keys`` over ``t..t+K-1`` -> ``(B, K, ...)`` with ``action_is_pad`` ``(B, K)``;
    ``extra_keys`` at ``t`` (default: ``language_instruction`` when the spec has it); and, with
    ``debug_keys``, ``episode_index``, ``frame_index``, ``index``. Pads repeat the edge step.

    ``normalize``: ``None``, ``"stats"``/``"mean_std"`` or ``"min_max"``, applied to the float
    observation and action features, with ``stats`` (a mapping or a :data:`STATS_FILE` path) or the
    dataset's ``stats.json`` or, failing both, statistics computed from its train split.
    ``split``: a split, optionally sliced by episode (``"train[:90%]"``). ``episode_filter``: a
    predicate on :class:`EpisodeRow`. ``num_epochs=None`` repeats forever. ``batch_size=None`` yields
    single samples. ``process_index``/``process_count``: this host's share of every epoch (all hosts
    must pass the same ``seed`` and selection). ``num_threads``/``prefetch_buffer_size`` override the measured defaults
    (:func:`_default_read_options`); ``worker_count > 0`` decodes in that many processes.
    ``reuse_buffers``: image arrays of batches the caller no longer references are recycled for
    later batches (see :class:`WindowMaker`; about 1.3x faster at 480x640); pass ``False`` when
    something keeps a batch's memory without a Python reference to it. ``cache_frames``: keep
    decoded frames in RAM so later epochs skip reading and decoding them (``None``: when they all
    fit in :data:`CACHE_AUTO_BYTES`; see :class:`WindowMaker`).
    ``goal``: ``"last"`` (the episode's last step) or ``"uniform"`` (a step drawn uniformly from
    ``t..L-1``, reproducible from ``seed`` and the batch position; new draws each epoch) adds
    ``goal/<key>`` ``(B, ...)`` for ``goal_keys`` (default: the image observations, else every
    observation) and, with ``debug_keys``, ``goal_frame_index``; unnormalised images, normalised
    floats, as the observations."""
    def make(source: StepSource, normalizer: Normalizer | None, reuse: bool) -> WindowMaker:
        spec = source.index.spec
        obs = _observation_keys(spec, observation_keys)
        gk: Sequence[str] = goal_keys or ()
        if goal is not None and goal_keys is None:
            gk = [p for p in obs if p in spec.image_paths] or obs
        extra = extra_keys if extra_keys is not None else [p for p in ("language_instruction",) if p in spec.step_leaves]
        return WindowMaker(source, history=history, action_horizon=action_horizon, history_keys=obs,
                           chunk_keys=action_keys, current_keys=extra, decode_images=decode_images, resize=resize,
                           normalizer=normalizer, debug=debug_keys, reuse_buffers=reuse, goal=goal, goal_keys=gk,
                           cache_frames=cache_frames)

    return _build("windows", path, split=split, episode_filter=episode_filter, batch_size=batch_size, seed=seed,
                  shuffle=shuffle, num_epochs=num_epochs, process_index=process_index, process_count=process_count,
                  worker_count=worker_count, drop_remainder=drop_remainder, normalize=normalize, stats=stats,
                  num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size, reuse_buffers=reuse_buffers,
                  make_maker=make,
                  norm_keys=lambda ix: _observation_keys(ix.spec, observation_keys) + list(action_keys))


def steps(path: str | os.PathLike, batch_size: int | None = 32, seed: int = 0, shuffle: bool = True,
          num_epochs: int | None = 1, decode_images: bool = True, resize: tuple[int, int] | None = None,
          normalize: str | None = None, split: str = "train", process_index: int = 0, process_count: int = 1,
          worker_count: int = 0, episode_filter: Callable[[EpisodeRow], bool] | None = None,
          drop_remainder: bool = True, *, keys: Sequence[str] | None = None,
          stats: Mapping | str | os.PathLike | None = None, num_threads: int | None = None,
          prefetch_buffer_size: int | None = None, debug_keys: bool = True, reuse_buffers: bool = True,
          cache_frames: bool | None = None) -> Loader:
    """Batches of single steps: every step feature (or ``keys``) at ``t``, ``(B, ...)`` (images
    decoded to ``uint8 (B, h, w, c)`` when ``decode_images``, else left out). Options as
    :func:`windows`; ``normalize`` applies to the float ``observation/*`` and ``action`` features.
    Without images and text every value comes from RAM: no disk reads at all."""
    def make(source: StepSource, normalizer: Normalizer | None, reuse: bool) -> WindowMaker:
        spec = source.index.spec
        return WindowMaker(source, current_keys=list(keys) if keys is not None else list(spec.step_leaves),
                           windowed=False, decode_images=decode_images, resize=resize, normalizer=normalizer,
                           debug=debug_keys, reuse_buffers=reuse, cache_frames=cache_frames)

    return _build("steps", path, split=split, episode_filter=episode_filter, batch_size=batch_size, seed=seed,
                  shuffle=shuffle, num_epochs=num_epochs, process_index=process_index, process_count=process_count,
                  worker_count=worker_count, drop_remainder=drop_remainder, normalize=normalize, stats=stats,
                  num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size, reuse_buffers=reuse_buffers,
                  make_maker=make,
                  norm_keys=lambda ix: [p for p in ix.spec.step_leaves if p.startswith("observation/") or p == "action"])
