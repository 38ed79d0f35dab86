"""The per-shard task of a conversion: read, validate, encode, write. Runner-agnostic.

:func:`write_shard` is what every runner executes for one :class:`~rldskit.pipeline.plan.ShardPlan`
(Beam's DirectRunner or DaskRunner, Dataflow, or a plain loop). For each input, in plan order:

1. read it (:func:`load_checked`): a capture folder or single-file episode, or one record of an
   existing TFDS dataset;
2. validate it against the spec and gates; an episode that cannot be read or fails validation
   is *quarantined* with its reasons (issue codes and messages), never dropped;
3. encode it once as a ``tf.train.Example`` (one episode per record) and write it to the
   shard's TFRecord and/or ArrayRecord file, and one record per step to step-major
   ArrayRecord files (a new file starts at an episode boundary once ``max_step_records`` is
   reached), collecting the low-dimensional step columns for ``episodes.parquet``.

Everything is written under the work folder with temp-then-rename writers; the result is
described by ``<work>/<shard>.json`` (written last, atomically), which finalisation reads.
Memory holds one episode at a time (frames are read lazily from disk).

Each input is recorded by its key (its path relative to its source, never the absolute path:
reasons are passed through :func:`scrub_paths`) and a content digest (:func:`input_digest`),
computed here, in the workers, right after the input was read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rldskit._io import atomic_write_bytes
from rldskit.episode import Episode
from rldskit.issues import ERROR
from rldskit.pipeline.plan import ConvertOptions, InputItem
from rldskit.spec import EpisodeSpec, Image, Text

__all__ = ["write_shard", "load_checked", "input_digest", "scrub_paths", "LOWDIM_MAX_ELEMENTS"]

LOWDIM_MAX_ELEMENTS = 64  # step features with at most this many elements go into episodes.parquet


def load_checked(item: InputItem, spec: EpisodeSpec, gates) -> tuple[Episode | None, list[dict[str, Any]]]:
    """Read and validate one input. Returns ``(episode, [])`` or ``(None, reasons)``; reasons
    are ``{"code", "step", "field", "message"}`` dicts of the errors found."""
    from rldskit.validation import validate

    if item.kind == "capture":
        from rldskit.formats.capture_dir import scan_episode

        res = scan_episode(item.path, spec)
        issues = list(res.issues)
        episode = res.episode
    else:
        episode, issues = _read_tfds_record(item, spec)
    issues = gates.apply(issues)
    if episode is not None and not any(i.severity == ERROR for i in issues):
        issues += validate(episode, spec, gates, label=item.key).issues
    errors = [i for i in issues if i.severity == ERROR]
    if errors or episode is None:
        return None, [{"code": i.code, "step": i.step, "field": i.field, "message": i.message} for i in errors[:10]]
    return episode, []


def _record_bytes(item: InputItem) -> bytes:
    """The serialized episode of a ``tfds`` input (one record of a shard)."""
    if item.source_format == "array_record":
        from rldskit.formats.arrayrecord import ArrayRecordShardReader

        with ArrayRecordShardReader(item.path) as r:
            return r.read([item.record])[0]
    from rldskit.formats.tfrecord import read_record_at

    return read_record_at(item.path, _tfrecord_offset(item.path, item.record))


def _file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def input_digest(item: InputItem) -> str | None:
    """A sha256 (hex) that identifies an input by its content, wherever it lives: for a
    single-file episode the file's sha256; for a capture folder the sha256 of its listing, one
    line ``<relative POSIX path>\\0<size>\\0<sha256 of the file>\\n`` per file in sorted order
    (hidden files, such as an interrupted atomic write's temp file, are left out); for a record
    of a TFDS shard the sha256 of the record's bytes. ``None`` when the input cannot be read."""
    try:
        if item.kind == "tfds":
            return hashlib.sha256(_record_bytes(item)).hexdigest()
        root = item.path
        if os.path.isfile(root):
            return _file_sha256(root)
        files = []
        for dirpath, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel_dir = os.path.relpath(dirpath, root)
            for n in names:
                if n.startswith("."):
                    continue
                rel = n if rel_dir == "." else f"{rel_dir}/{n}".replace(os.sep, "/")
                files.append((rel, os.path.join(dirpath, n)))
        h = hashlib.sha256()
        for rel, full in sorted(files):
            h.update(f"{rel}\0{os.path.getsize(full)}\0{_file_sha256(full)}\n".encode())
        return h.hexdigest()
    except (OSError, ValueError):
        return None


def scrub_paths(text: str, item: InputItem) -> str:
    """``text`` (an issue message) with the input's absolute path and its source's absolute path,
    as given and resolved, replaced by the recorded ones (``item.rel`` and the source's name)."""
    if not item.rel:
        return text
    root = item.root_path
    name = item.rel.split("/", 1)[0]
    pairs = [(item.path, item.rel), (os.path.realpath(item.path), item.rel)]
    if root:
        pairs += [(root, name), (os.path.realpath(root), name)]
    for old, new in sorted(pairs, key=lambda kv: -len(kv[0])):
        if old and old not in (".", "/"):
            text = text.replace(old, new)
    return text


def _read_tfds_record(item: InputItem, spec: EpisodeSpec):
    from rldskit.formats.tfexample import ExampleDecodeError, decode_episode
    from rldskit.issues import issue

    try:
        return decode_episode(_record_bytes(item), spec), []
    except (ExampleDecodeError, ValueError, OSError) as e:
        return None, [issue("RECORD_UNDECODABLE", item.key, f"{type(e).__name__}: {e}")]


_OFFSETS: dict[str, list[tuple[int, int]]] = {}


def _tfrecord_offset(path: str, record: int) -> int:
    from rldskit.formats.tfrecord import index_tfrecord

    if path not in _OFFSETS:
        _OFFSETS.clear()
        _OFFSETS[path] = index_tfrecord(path)
    return _OFFSETS[path][record][0]


def _lowdim_paths(spec: EpisodeSpec) -> list[str]:
    out = []
    for path, leaf in spec.step_leaves.items():
        if isinstance(leaf, (Image, Text)) or leaf.dtype == "string" or not leaf.is_static:
            continue
        if int(np.prod(leaf.shape)) <= LOWDIM_MAX_ELEMENTS:
            out.append(path)
    return out


class _StepFiles:
    """Step-major ArrayRecord files of one shard, rotated at episode boundaries."""

    def __init__(self, work: Path, shard: str, opts: ConvertOptions):
        self.work, self.shard, self.opts = work, shard, opts
        self.files: list[dict[str, Any]] = []
        self._writer = None
        self._count = 0

    def start_episode(self) -> tuple[str, int]:
        from rldskit.formats.arrayrecord import ArrayRecordShardWriter

        if self._writer is None or self._count >= self.opts.max_step_records:
            self._close()
            name = f"{self.shard}.steps-{len(self.files):03d}.array_record"
            self._writer = ArrayRecordShardWriter(self.work / name, compression=self.opts.step_compression)
            self._writer.__enter__()
            self._name, self._count = name, 0
        return self._name, self._count

    def write(self, record: bytes) -> None:
        self._writer.write(record)
        self._count += 1

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.__exit__(None, None, None)
            self.files.append({"file": self._name, "records": self._writer.num_records,
                               "bytes": self._writer.num_bytes, "sha256": self._writer.sha256})
            self._writer = None

    def close(self) -> list[dict[str, Any]]:
        self._close()
        return self.files


def write_shard(opts: ConvertOptions, split: str, index: int, items: Sequence[InputItem]) -> dict[str, Any]:
    """Convert one shard's inputs (see the module docstring). Returns the shard's info dict,
    also saved as ``<work>/<split>-<index>.json``."""
    from rldskit.formats.arrayrecord import ArrayRecordShardWriter
    from rldskit.formats.tfexample import encode_episode, encode_step
    from rldskit.formats.tfrecord import TFRecordWriter
    from rldskit.validation import Gates

    spec = opts.spec()
    gates = Gates.from_dict(opts.gates)
    shard = f"{split}-{index:05d}"
    work = opts.work_dir
    writers: dict[str, Any] = {}
    names = {"tfrecord": f"{shard}.tfrecord", "array_record": f"{shard}.array_record"}
    for fmt in opts.formats:
        w = TFRecordWriter(work / names[fmt]) if fmt == "tfrecord" else \
            ArrayRecordShardWriter(work / names[fmt], compression=opts.array_record_compression)
        writers[fmt] = w.__enter__()
    steps = _StepFiles(work, shard, opts) if opts.step_index else None
    lowdim_paths = _lowdim_paths(spec) if opts.step_index else []
    lowdim: dict[str, list[Any]] = {p: [] for p in lowdim_paths}
    episodes: list[dict[str, Any]] = []
    quarantined: list[dict[str, Any]] = []
    try:
        for item in items:
            episode, reasons = load_checked(item, spec, gates)
            digest = input_digest(item)
            if episode is None:
                reasons = [dict(r, message=scrub_paths(str(r.get("message", "")), item)) for r in reasons]
                quarantined.append({"index": item.index, "key": item.key, "sha256": digest, "reasons": reasons})
                continue
            record = encode_episode(episode, spec)
            for w in writers.values():
                w.write(record)
            entry = {"index": item.index, "key": item.key, "sha256": digest,
                     "episode_id": episode.episode_id or item.key,
                     "length": len(episode), "terminal": episode.is_terminal}
            if steps is not None:
                entry["step_file"], entry["step_offset"] = steps.start_episode()
                for i in range(len(episode)):
                    steps.write(encode_step(episode, i, spec))
                for p in lowdim_paths:
                    lowdim[p].append(np.asarray(episode.steps[p]))
            episodes.append(entry)
    except BaseException:
        for w in writers.values():
            w.__exit__(RuntimeError, RuntimeError("aborted"), None)
        raise
    files: dict[str, Any] = {}
    for fmt, w in writers.items():
        w.__exit__(None, None, None)
        files[fmt] = {"file": names[fmt], "records": w.num_records, "bytes": w.num_bytes, "sha256": w.sha256}
    if steps is not None:
        files["steps"] = steps.close()
    info = {"split": split, "shard": shard, "episodes": episodes, "quarantined": quarantined, "files": files}
    if lowdim_paths and episodes:
        info["lowdim"] = f"{shard}.lowdim.parquet"
        _write_lowdim(work / info["lowdim"], spec, lowdim)
    atomic_write_bytes(work / f"{shard}.json", json.dumps(info).encode())
    return info


def _write_lowdim(path: Path, spec: EpisodeSpec, cols: dict[str, list[np.ndarray]]) -> None:
    """One row per episode; each column a list of per-step values (fixed-size lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for p, per_episode in cols.items():
        leaf = spec.step_leaves[p]
        flat = [a.reshape(len(a), -1) if a.ndim > 1 else a for a in per_episode]
        if flat and flat[0].ndim == 2:
            width = flat[0].shape[1]
            values = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(flat).ravel()), width)
        else:
            values = pa.array(np.concatenate(flat)) if flat else pa.array([], type=pa.from_numpy_dtype(leaf.np_dtype))
        offsets = pa.array(np.concatenate([[0], np.cumsum([len(a) for a in flat])]).astype(np.int32))
        arrays[p] = pa.ListArray.from_arrays(offsets, values)
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(arrays), buf, compression="zstd")
    atomic_write_bytes(path, buf.getvalue().to_pybytes(), durable=False)
