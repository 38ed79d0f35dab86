"""Random-access sources over converted datasets: steps of the step-major layout, whole episodes.

Both are Grain ``RandomAccessDataSource`` s by protocol (``len``, ``source[i]``, batched
``_getitems``; torch's ``__getitems__`` too) without importing Grain, so ``rldskit.hub`` and
``rldskit.report`` read with them as well:

* **``StepSource``**: ``source[g]`` is the decoded step ``g`` of one split (``{path: value}``,
  images as encoded bytes, ``b""`` for an absent optional frame), located through a
  :class:`~rldskit.formats.step_index.StepIndex`. :meth:`StepSource.read_fields` reads only some
  features (image and text ones through :func:`~rldskit.formats.tfexample.decode_step_fields`, the
  fast protobuf parser).
* **``EpisodeSource``**: ``source[i]`` is an :class:`~rldskit.episode.Episode` from the ArrayRecord
  episode shards of any TFDS RLDS folder (ours, or Open-X via ``last_step``).

Contracts: a batched read opens each file once per call (one ``read(indices)`` per file, records in
file order); readers open lazily, one per thread, and are never pickled (a source pickles as its
index or its paths and reopens in a worker process). Errors name the file and record (and, for
steps, the global step and episode): :class:`~rldskit.formats.step_index.StepRecordCorruption`,
:class:`~rldskit.formats.step_index.StepDecodeError`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from rldskit.formats.arrayrecord import ArrayRecordCorruption, ArrayRecordShardReader
from rldskit.formats.step_index import StepDecodeError, StepIndex, StepRecordCorruption
from rldskit.formats.tfexample import ExampleDecodeError, decode_episode, decode_step, decode_step_fields
from rldskit.spec import EpisodeSpec, Image, Text

__all__ = ["StepSource", "EpisodeSource"]


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
                    out.append(decode_step_fields(data, keys, spec))
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
