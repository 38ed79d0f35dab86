"""The step index of a converted dataset: ``episodes.parquet`` in RAM, and split selections over it.

A converted dataset (``rldskit convert``) holds, beside its TFDS shards, ``steps/*.steps.array_record-*``
files with one ``tf.train.Example`` per step in episode order, and ``episodes.parquet``
(:data:`~rldskit.formats.tfds_dir.EPISODE_INDEX_FILE`) with one row per episode: the
:data:`EPISODE_ROW_COLUMNS` (id, split, first global step, length, shard and record, step file and
offset, ...) and every low-dimensional step feature as a list column (one value per step). This
module reads it with numpy and pyarrow only (no Grain, no TensorFlow), so the loaders, statistics,
report, Hub view and trainers share one reader. Three concepts:

* **Split selections** (:func:`parse_split`, :func:`resolve_split_slice`, :func:`select_episodes`):
  TFDS's slicing syntax over *episodes* (``"train"``, ``"train[:90%]"``, ``"train[10:20]"``,
  ``"train[-10%:]"``; percentages round to the closest episode). A selection is an array of episode
  positions, never a rewrite of the data.
* **``StepIndex``**: ``episodes.parquet`` of one split in RAM. Global step ``g`` (``0..N-1`` within
  the split) maps to ``(episode, t)`` by ``searchsorted`` over the episodes' first steps, and to
  ``(step file, record)`` by ``step_offset + t``. Every low-dimensional column (actions, states,
  rewards, flags, timestamps: numeric leaves of at most 64 elements) is one ``(N, *shape)`` array of
  the spec's dtype, so windows of them are fancy indexing, never disk reads. Immutable after
  :meth:`StepIndex.load`; pickles as its arrays and spec (episode metadata is re-read on demand).
* **``EpisodeRow``**: one episode as a read-only mapping (its ``episodes.parquet`` columns, and the
  spec's episode metadata read on first access), the argument of an ``episode_filter`` predicate.

Errors: a missing or malformed index raises :class:`~rldskit.formats.tfds_dir.DatasetError`
(naming the file), an unknown split ``KeyError``, a bad split string ``ValueError``. Reading a step
or episode record that is corrupt raises :class:`StepRecordCorruption` (an
:class:`~rldskit.formats.arrayrecord.ArrayRecordCorruption`) or :class:`StepDecodeError` (an
:class:`~rldskit.formats.tfexample.ExampleDecodeError`), both :class:`StepReadError` s naming the
file, the record index, the global step and the episode; both pickle intact (they cross from worker
processes).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rldskit.formats.arrayrecord import ArrayRecordCorruption, ArrayRecordShardReader
from rldskit.formats.tfexample import ExampleDecodeError, decode_episode
from rldskit.spec import EpisodeSpec

if TYPE_CHECKING:
    from rldskit.formats.tfds_dir import DatasetDir

__all__ = ["StepIndex", "EpisodeRow", "parse_split", "resolve_split_slice", "select_episodes", "EPISODE_ROW_COLUMNS",
           "StepReadError", "StepRecordCorruption", "StepDecodeError"]

#: episodes.parquet columns that describe the episode (every other column is a low-dim step column)
EPISODE_ROW_COLUMNS = ("episode_id", "split", "episode_index", "shard", "shard_record", "length", "first_step",
                       "terminal", "source", "step_file", "step_offset")


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
    the closest episode). Returns the split name and a slice over its episodes whose bounds are the
    strings as written (``slice("10", "20")``, ``slice(None, "90%")``; :func:`resolve_split_slice`
    turns it into positions), or raises ``ValueError``."""
    m = _SPLIT_RE.match(split)
    if not m:
        raise ValueError(f"split {split!r}: expected NAME or NAME[start:stop] (episodes; ints or percentages)")
    return m.group(1), slice(m.group(2), m.group(3))


def resolve_split_slice(sl: slice, num_episodes: int, split: str) -> range:
    """The episode positions ``0..num_episodes-1`` that a slice from :func:`parse_split` selects
    (``split`` is the original string, for error messages). A percentage ``p%`` is episode
    ``floor(|p| * n / 100 + 0.5)`` (counted from the end when negative); integers index as Python
    slices do. Raises ``ValueError`` for a percentage outside -100%..100%."""
    n = num_episodes

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


def select_episodes(index: StepIndex, split: str,
                    episode_filter: Callable[[EpisodeRow], bool] | None = None) -> np.ndarray:
    """Episode positions (``int64 (E,)``, ascending) of ``index`` that ``split`` (e.g.
    ``"train[:90%]"``; its name must be ``index.split``) and ``episode_filter`` select. Their steps
    are ``index.steps_of(positions)``."""
    base, sl = parse_split(split)
    if base != index.split:
        raise ValueError(f"split {split!r} is not a selection of the index's split {index.split!r}")
    return index.select(resolve_split_slice(sl, index.num_episodes, split), episode_filter)


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
        :func:`select_episodes` applies). Raises ``DatasetError`` when the dataset has no step-major
        layout and ``KeyError`` for an unknown split."""
        from rldskit.formats.tfds_dir import open_dataset

        return cls.from_dataset(open_dataset(dataset_path, spec=spec), split)

    @classmethod
    def from_dataset(cls, ds: DatasetDir, split: str = "train") -> StepIndex:
        """:meth:`load` of an opened dataset (``ds.index(split)`` calls this): its step index file
        read once (:meth:`~rldskit.formats.tfds_dir.DatasetLayout.index_table`), checked, and the
        rows of ``split`` kept. Raises ``DatasetError`` when there is no usable step index and
        ``KeyError`` for an unknown split."""
        import pyarrow.compute as pc

        from rldskit.formats.tfds_dir import EPISODE_INDEX_FILE, DatasetError

        index_file = ds.index_path
        if not ds.has_index:
            raise DatasetError(f"{ds.path}: no {EPISODE_INDEX_FILE}, so no step-major layout to load windows from; "
                               "convert the dataset with rldskit (step index on, the default): "
                               f"rldskit convert {ds.path} --out DATA --name NAME")
        table = ds.index_table()
        missing = [c for c in ("split", "length", "first_step", "step_file", "step_offset") if c not in table.column_names]
        if missing:
            raise DatasetError(f"{index_file}: columns {missing} are missing (converted without a step index?)")
        splits = sorted(set(table.column("split").to_pylist()))
        table = table.filter(pc.equal(table.column("split"), split))
        if table.num_rows == 0:
            raise KeyError(f"{ds.path}: no split {split!r} in {EPISODE_INDEX_FILE}; it has {', '.join(splits)}")
        table = table.sort_by("first_step")
        episodes = {c: table.column(c).to_numpy() for c in EPISODE_ROW_COLUMNS if c in table.column_names}
        starts, lengths = episodes["first_step"].astype(np.int64), episodes["length"].astype(np.int64)
        expected = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        if (lengths <= 0).any() or not np.array_equal(starts, expected):
            raise DatasetError(f"{index_file}: split {split!r}: episodes' first_step/length are not contiguous from 0")
        n = int(lengths.sum())
        columns: dict[str, np.ndarray] = {}
        for name in table.column_names:
            if name in EPISODE_ROW_COLUMNS or name not in ds.spec.step_leaves:
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
