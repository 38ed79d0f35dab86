"""Export a converted rldskit dataset (TFDS RLDS) as a LeRobot v3.0 dataset.

Layout written (``codebase_version`` ``v3.0``)::

    OUT/meta/info.json                               features, fps, paths, counts (+ "rldskit" mapping)
    OUT/meta/stats.json                              min/max/mean/std/count/q01..q99 over ALL frames (exact)
    OUT/meta/tasks.parquet                           index: task text, column task_index
    OUT/meta/episodes/chunk-000/file-000.parquet     one row per episode (indexes, video spans, stats/*)
    OUT/data/chunk-CCC/file-FFF.parquet              one row per frame, many episodes per file
    OUT/videos/<video_key>/chunk-CCC/file-FFF.mp4    per camera, episodes concatenated (pts = i/fps)

Feature mapping (recorded under ``info.json["rldskit"]["columns"]`` so the way back is exact):

* float32 ``observation/*`` tensors and scalars (not images) -> concatenated, in spec order, into
  ``observation.state`` (``names`` like ``joint_position.shoulder_pan``); other numeric or text
  ``observation/*`` leaves -> ``observation.<path with dots>``.
* images ``observation/.../<cam>`` -> video ``observation.images.<cam>``. A frame that is absent
  (optional camera: ``<cam>_present`` False, or empty bytes) is written as a black frame and the
  mask is kept as the bool column ``rldskit.present.<cam>`` (outside ``observation.``, so no
  policy takes it as a state input; before issue 12 it was ``observation.images.<cam>_present``,
  which :func:`read_lerobot_v3` and the importer still read). Image stats (``(C,1,1)``, values in
  [0, 1], as LeRobot) are computed from the source JPEG/PNG frames that are present.
* ``action`` -> ``action``; ``reward`` -> ``next.reward``; ``is_terminal`` -> ``next.done``.
* every other step leaf keeps its value as ``rldskit.<path with dots>`` (``rldskit.discount``,
  ``rldskit.is_first``, ``rldskit.is_last``, ``rldskit.is_terminal``, ``rldskit.timestamp.control``...).
* only cameras have ``image`` in their key: LeRobot takes any feature whose key contains
  ``"image"`` for a camera (``compute_stats._validate_stat_value`` then wants ``(3,1,1)`` stats and
  every tool that aggregates stats fails), so in other keys ``image`` is written ``img``
  (``observation/image_exposure`` -> ``observation.img_exposure``); two leaves that would share a
  key are refused.
* float64 ``timestamp/*`` leaves -> ``rldskit.timestamp.<name>`` as float64 **offsets** in seconds
  from the episode's start, which is kept per frame in the int64 column ``rldskit.timestamp_start``
  (whole seconds: the floor of the episode's earliest timestamp) and per episode in meta/episodes
  (``rldskit/timestamp_start``, float64). ``start + offset`` is the original float64 bit for bit
  (checked while writing; non-finite values are stored as they are; an episode where it would not
  be exact, e.g. negative times spanning many orders of magnitude, gets start 0). LeRobot hands
  floats out as float32 (``torch.tensor`` of a Python float): that view of an offset ``o`` is
  within ``|o| * 2**-24`` of it, i.e. <= 31 us for offsets under 512 s and <= 0.25 ms under an
  hour (absolute float32 Unix times were off by up to 64 s). The per-frame copy of the start
  survives LeRobot's own editing tools (``delete_episodes``, ``split_dataset``,
  ``merge_datasets`` rewrite meta/episodes with their own columns only).
* ``task_key`` (default ``language_instruction``) -> the task (``task_index`` per frame,
  ``meta/tasks.parquet``); without it, the episode's ``task`` metadata, else ``default_task``.
* LeRobot's own columns: ``timestamp`` (float32, ``frame_index / fps``), ``frame_index``,
  ``episode_index``, ``index`` (global), ``task_index``.
* episode metadata -> ``rldskit/episode_id`` and ``rldskit/metadata`` (JSON) in the episodes parquet.
* the source is recorded in ``info.json["rldskit"]["source"]`` as ``{"name": "<name>/<version>",
  "sha256": ...}`` (its path relative to its TFDS data dir, and a content digest, see
  :func:`source_identity`), never as the local path given on the command line.

Limits: tensors with unknown dimensions are refused; RGBA/grey frames are stored as RGB (grey
comes back exactly up to codec error, alpha is dropped); odd frame sizes are padded to even
(yuv420p) in the video and cropped back by :func:`read_lerobot_v3`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from rldskit.formats.tfds_dir import (DATASET_INFO_FILE, EPISODE_INDEX_FILE, FEATURES_FILE, MANIFEST_FILE,
                                    SPEC_FILE)

__all__ = ["export_lerobot", "read_lerobot_v3", "add_export_parser", "pick_codec", "LeRobotExportError",
           "source_identity", "timestamp_start", "encode_offsets", "decode_offsets", "episode_timestamp_start",
           "PRESENT_PREFIX",
           "TIMESTAMP_START"]

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
#: preference order when ``codec`` is not given: AV1 (LeRobot's default), then H.264, then MPEG-4
CODEC_PREFERENCE = ("libsvtav1", "libaom-av1", "libx264", "h264", "mpeg4")
_CODEC_FAMILY = {"libsvtav1": "av1", "libaom-av1": "av1", "libdav1d": "av1", "av1": "av1", "libx264": "h264",
                 "h264": "h264", "libx265": "hevc", "hevc": "hevc", "mpeg4": "mpeg4"}
LEROBOT_BASE = ("timestamp", "frame_index", "episode_index", "index", "task_index")
#: key prefix of the image presence masks (``rldskit.present.<cam>``)
PRESENT_PREFIX = "rldskit.present."
#: per-frame int64 column holding the episode's timestamp start (whole seconds)
TIMESTAMP_START = "rldskit.timestamp_start"
#: the same start, per episode, in meta/episodes (float64 seconds)
TIMESTAMP_START_EPISODES = "rldskit/timestamp_start"
#: files of a converted dataset whose digest identifies it when it has a manifest.json
#: the converted folder's files whose bytes identify it (sorted by name: the digest's order)
_IDENTITY_FILES = (DATASET_INFO_FILE, EPISODE_INDEX_FILE, FEATURES_FILE, MANIFEST_FILE, SPEC_FILE)


class LeRobotExportError(ValueError):
    """The dataset cannot be exported as asked (unsupported feature, bad option)."""


# ----------------------------------------------------------------------------------- planning

def pick_codec(codec: str | None = None) -> str:
    """The encoder to use: ``codec`` if PyAV can encode with it, else the first available of
    :data:`CODEC_PREFERENCE`. Raises :class:`LeRobotExportError` when none is available."""
    import av

    def usable(name: str) -> bool:
        try:
            av.codec.Codec(name, "w")
            return True
        except Exception:
            return False

    if codec is not None:
        if not usable(codec):
            raise LeRobotExportError(f"PyAV cannot encode with {codec!r} here (try one of "
                                     f"{[c for c in CODEC_PREFERENCE if usable(c)]})")
        return codec
    for name in CODEC_PREFERENCE:
        if usable(name):
            return name
    raise LeRobotExportError("no video encoder available in PyAV")


def _dotted(path: str) -> str:
    return path.replace("/", ".")


def _plan_columns(spec, task_key: str | None) -> list[dict[str, Any]]:
    """One entry per rldskit step leaf: where it goes in LeRobot (see the module docstring)."""
    from rldskit.spec import Image, Text

    leaves = spec.step_leaves
    image_paths = set(spec.image_paths)
    present_of_image = {p + "_present": p for p in image_paths}
    plan: list[dict[str, Any]] = []
    state_offset = 0
    for path, leaf in leaves.items():
        entry: dict[str, Any] = {"path": path}
        if isinstance(leaf, Image):
            entry.update(kind="video", key="observation.images." + spec.camera_name(path), shape=list(leaf.shape),
                         channels=int(leaf.shape[2]))
            plan.append(entry)
            continue
        if isinstance(leaf, Text):
            if path == task_key:
                entry.update(kind="task", key="task_index", dtype="string", shape=[])
            else:
                key = "observation." + _dotted(path[12:]) if path.startswith("observation/") else "rldskit." + _dotted(path)
                entry.update(kind="column", key=key, dtype="string", shape=[])
            plan.append(entry)
            continue
        shape = leaf.shape
        if any(d is None for d in shape):
            raise LeRobotExportError(f"{path}: tensors with unknown dimensions {shape} cannot be LeRobot features")
        shape = [int(d) for d in shape]
        dtype = str(leaf.dtype)
        if path in present_of_image:
            key = PRESENT_PREFIX + spec.camera_name(present_of_image[path])
            entry["mask_of"] = "observation.images." + spec.camera_name(present_of_image[path])
        elif path == "action":
            key = "action"
        elif path == "reward":
            key = "next.reward"
        elif path == "is_terminal":
            key = "next.done"
        elif path.startswith("observation/") and dtype == "float32":
            size = int(np.prod(shape)) if shape else 1
            base = _dotted(path[12:])
            names = list(getattr(leaf, "names", None) or [])
            if shape and len(shape) == 1 and len(names) == size:
                sub = [f"{base}.{n}" for n in names]
            elif not shape:
                sub = [base]
            else:
                sub = [f"{base}_{i}" for i in range(size)]
            entry.update(kind="state", key="observation.state", dtype=dtype, shape=shape,
                         slice=[state_offset, state_offset + size], names=sub)
            state_offset += size
            plan.append(entry)
            continue
        elif path.startswith("observation/"):
            key = "observation." + _dotted(path[12:])
        else:
            key = "rldskit." + _dotted(path)
        names = list(getattr(leaf, "names", None) or []) or None
        entry.update(kind="column", key=key, dtype=dtype, shape=shape, names=names)
        if path.startswith("timestamp/") and dtype == "float64" and not shape:
            entry["encoding"] = "offset"  # seconds since the episode's TIMESTAMP_START
        plan.append(entry)
        if path == "is_terminal":  # also kept under its own name, as the brief of the format asks
            plan.append({**entry, "path": path, "key": "rldskit.is_terminal", "alias": True})
    # LeRobot takes every feature whose key contains "image" for a camera: keep it to cameras
    for e in plan:
        if e["kind"] != "video" and "image" in e["key"]:
            e["key"] = e["key"].replace("image", "img")
    owner: dict[str, str] = {k: "LeRobot's own column" for k in LEROBOT_BASE + (TIMESTAMP_START,)}
    if any(e["kind"] == "state" for e in plan):
        owner["observation.state"] = "the state vector"
    for e in plan:
        if e["kind"] in ("state", "task") or e.get("alias"):
            continue
        if e["key"] in owner:
            raise LeRobotExportError(f"{owner[e['key']]} and {e['path']} would both be the LeRobot feature "
                                     f"{e['key']!r}: rename one of them in the spec")
        owner[e["key"]] = e["path"]
    return plan


def _feature_shape(shape: list[int]) -> list[int]:
    return [int(np.prod(shape))] if shape else [1]


def _arrow_type(dtype: str, shape: list[int]):
    import pyarrow as pa

    base = pa.string() if dtype == "string" else pa.from_numpy_dtype(np.dtype(dtype))
    return base if not shape else pa.list_(base, int(np.prod(shape)))


# ----------------------------------------------------------------------------------- timestamps

def timestamp_start(columns: list[np.ndarray]) -> int:
    """The start of an episode for its timestamp offsets: the floor (whole seconds) of the earliest
    finite value of ``columns`` (float64 seconds, any shapes), or 0 when there is none or when
    ``start + (t - start)`` would not give some ``t`` back bit for bit (negative times far apart)."""
    finite = [c[np.isfinite(c)] for c in (np.asarray(c, np.float64).reshape(-1) for c in columns)]
    finite = [c for c in finite if c.size]
    if not finite:
        return 0
    start = int(math.floor(min(float(c.min()) for c in finite)))
    if start == 0 or abs(start) >= 2 ** 53:
        return 0
    for c in finite:
        back = decode_offsets(encode_offsets(c, start), np.full(c.shape, start, np.int64))
        if not np.array_equal(back.view(np.uint64), c.view(np.uint64)):
            return 0
    return start


def encode_offsets(t: np.ndarray, start: int) -> np.ndarray:
    """``t - start`` (float64 seconds; non-finite values as they are)."""
    t = np.asarray(t, np.float64)
    if start == 0:
        return t.copy()
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(t), t - np.float64(start), t)


def decode_offsets(offsets: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The absolute float64 times of :func:`encode_offsets`: ``start + offset`` where the start
    (int64 whole seconds, broadcast against ``offsets``) is not 0 and the offset is finite."""
    off = np.asarray(offsets, np.float64)
    st = np.broadcast_to(np.asarray(start, np.int64), off.shape)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(off) & (st != 0), st.astype(np.float64) + off, off)


# ----------------------------------------------------------------------------------- source identity

def source_identity(dataset_path: str | os.PathLike) -> dict[str, str]:
    """How an export names its source without a local path: ``name`` is the folder relative to its
    TFDS data dir (``<name>/<version>``, the last two components of the path given), ``sha256`` a
    content digest: sha256 over ``<relative POSIX path>\\0<size>\\0<sha256 of the file>\\n`` lines in
    path order, over the metadata files (``dataset_info.json``, ``episodes.parquet``,
    ``features.json``, ``manifest.json``, ``rldskit_spec.json``) when ``manifest.json`` exists
    (it holds the sha256 of every shard), else over every file (hidden ones left out)."""
    root = Path(dataset_path).absolute()
    name = "/".join(p for p in (root.parent.name, root.name) if p)
    if (root / MANIFEST_FILE).is_file():
        files = [root / n for n in _IDENTITY_FILES if (root / n).is_file()]
        covers = "metadata files (manifest.json lists every shard's sha256)"
    else:
        files = [p for p in root.rglob("*") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(root).parts)]
        covers = "every file"
    h = hashlib.sha256()
    for p in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        fh = hashlib.sha256()
        size = 0
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                fh.update(chunk)
                size += len(chunk)
        h.update(f"{p.relative_to(root).as_posix()}\0{size}\0{fh.hexdigest()}\n".encode())
    return {"name": name, "sha256": h.hexdigest(), "sha256_of": covers}


# ----------------------------------------------------------------------------------- stats

def _numeric_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot stats over axis 0 of ``x`` (N, ...): exact quantiles (numpy 'linear')."""
    n = len(x)
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.astype(np.float64)
    x = x.reshape(n, -1) if n else x.reshape(0, max(1, int(np.prod(x.shape[1:]))))
    if n == 0:
        z = np.zeros(x.shape[1])
        return {"min": z, "max": z, "mean": z, "std": z, "count": np.array([0]), **{k: z for k in QUANTILES}}
    xf = x.astype(np.float64)
    out = {"min": xf.min(axis=0), "max": xf.max(axis=0), "mean": xf.mean(axis=0), "std": xf.std(axis=0),
           "count": np.array([n])}
    qs = np.quantile(xf, list(QUANTILES.values()), axis=0)
    for i, k in enumerate(QUANTILES):
        out[k] = qs[i]
    return out


def _hist_stats(hist: np.ndarray, n_frames: int) -> dict[str, np.ndarray]:
    """Per-channel stats of uint8 pixels / 255 from a ``(C, 256)`` histogram, exact: the same
    numbers (up to float rounding) as numpy over every pixel of every frame, shaped (C, 1, 1).
    Without any pixel (a camera absent from a whole episode) ``count`` is 0, ``min`` 1 and ``max``
    0 (the neutral values in [0, 1], so that LeRobot's ``aggregate_stats`` min/max over episodes
    are the real ones; its means and quantiles weight by ``count``) and the rest 0."""
    c = hist.shape[0]
    values = np.arange(256, dtype=np.float64)
    n = hist.sum(axis=1)
    out: dict[str, list] = {k: [] for k in ("min", "max", "mean", "std", *QUANTILES)}
    for ch in range(c):
        h, tot = hist[ch], int(n[ch])
        if tot == 0:
            for k in out:
                out[k].append(1.0 if k == "min" else 0.0)
            continue
        nz = np.flatnonzero(h)
        mean = float((h * values).sum() / tot)
        out["min"].append(nz[0] / 255.0)
        out["max"].append(nz[-1] / 255.0)
        out["mean"].append(mean / 255.0)
        out["std"].append(math.sqrt(float((h * (values - mean) ** 2).sum() / tot)) / 255.0)
        cum = np.cumsum(h)
        for k, q in QUANTILES.items():
            pos = q * (tot - 1)
            lo = int(math.floor(pos))
            hi = min(lo + 1, tot - 1)
            vlo = float(np.searchsorted(cum, lo, side="right"))
            vhi = float(np.searchsorted(cum, hi, side="right"))
            out[k].append((vlo + (vhi - vlo) * (pos - lo)) / 255.0)
    res = {k: np.asarray(v, dtype=np.float64).reshape(c, 1, 1) for k, v in out.items()}
    res["count"] = np.array([int(n_frames)])
    return res


def _frame_hist(frames: np.ndarray) -> np.ndarray:
    """``(C, 256)`` pixel counts of ``frames`` (N, H, W, C) uint8."""
    c = frames.shape[-1]
    flat = frames.reshape(-1, c)
    return np.stack([np.bincount(flat[:, i], minlength=256) for i in range(c)]).astype(np.int64)


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return {"__bytes__": v.hex()}
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _unjson(v: Any) -> Any:
    if isinstance(v, dict):
        if set(v) == {"__bytes__"}:
            return bytes.fromhex(v["__bytes__"])
        return {k: _unjson(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unjson(x) for x in v]
    return v


# ----------------------------------------------------------------------------------- video

class _VideoFile:
    """One mp4 of concatenated episode frames for one camera; frame ``i`` has pts ``i / fps``."""

    def __init__(self, path: Path, codec: str, fps: Fraction, height: int, width: int, crf: int | None):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.height, self.width = height + height % 2, width + width % 2
        self.container = av.open(str(path), "w", format="mp4")
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = "yuv420p"
        opts: dict[str, str] = {"g": "2"}
        if codec in ("libsvtav1", "libaom-av1", "libx264", "libx265"):
            opts["crf"] = str(crf if crf is not None else (18 if codec in ("libx264", "libx265") else 30))
        if codec == "libsvtav1":
            opts["preset"] = "10"
        elif codec == "libaom-av1":
            opts["cpu-used"] = "8"
        elif codec in ("mpeg4", "h264"):
            opts = {"g": "2", "qscale": "2"} if codec == "mpeg4" else {"g": "2"}
        self.stream.options = opts
        self.time_base = Fraction(1) / fps
        self.stream.codec_context.time_base = self.time_base
        self.count = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        h, w = rgb.shape[:2]
        if (h, w) != (self.height, self.width):
            rgb = np.pad(rgb, ((0, self.height - h), (0, self.width - w), (0, 0)))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.count
        frame.time_base = self.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.count += 1

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def _decode_image(data: bytes, shape: list[int]) -> np.ndarray:
    from rldskit import images

    arr = images.decode(data, 3)
    if list(arr.shape[:2]) != list(shape[:2]):
        raise ValueError(f"frame is {arr.shape[1]}x{arr.shape[0]}, the spec says {shape[1]}x{shape[0]}")
    return arr


# ----------------------------------------------------------------------------------- export

def _fps_of(ds, fps: float | None) -> Fraction:
    value = fps if fps is not None else ds.spec.fps
    if value is None:
        raise LeRobotExportError("the spec declares no fps: pass fps=")
    return Fraction(value).limit_denominator(1001)


def export_lerobot(dataset_path: str | os.PathLike, out: str | os.PathLike, *, split: str = "train",
                   codec: str | None = None, crf: int | None = None, robot_type: str | None = None,
                   task_key: str | None = "language_instruction", default_task: str | None = None,
                   episodes_per_file: int = 500, max_episodes: int | None = None, fps: float | None = None,
                   overwrite: bool = False) -> dict[str, Any]:
    """Write ``split`` of the rldskit dataset at ``dataset_path`` as a LeRobot v3.0 dataset in
    ``out`` (written in a temporary sibling folder, renamed into place at the end). Returns a
    summary dict (episodes, frames, tasks, codec, files, out). ``out`` must not exist unless
    ``overwrite``. See the module docstring for the feature mapping."""
    import rldskit

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True / --overwrite to replace it)")
    if episodes_per_file < 1:
        raise LeRobotExportError("episodes_per_file must be >= 1")
    ds = rldskit.open(dataset_path)
    spec = ds.spec
    if split not in ds.splits:
        raise LeRobotExportError(f"split {split!r} not in {sorted(ds.splits)}")
    codec = pick_codec(codec)
    rate = _fps_of(ds, fps)
    if task_key is not None and task_key not in spec.step_leaves:
        task_key = None
    plan = _plan_columns(spec, task_key)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        summary = _export(ds, spec, plan, tmp, split=split, codec=codec, crf=crf, rate=rate,
                          robot_type=robot_type or spec.name, task_key=task_key,
                          default_task=default_task or spec.name,
                          episodes_per_file=episodes_per_file, max_episodes=max_episodes,
                          source=source_identity(dataset_path))
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["out"] = str(out)
    return summary


def _export(ds, spec, plan, root: Path, *, split, codec, crf, rate: Fraction, robot_type, task_key, default_task,
            episodes_per_file, max_episodes, source) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 logs every encoder's config on stderr otherwise
    fps_f = float(rate)
    state = [e for e in plan if e["kind"] == "state"]
    columns = [e for e in plan if e["kind"] == "column"]
    videos = [e for e in plan if e["kind"] == "video"]
    state_dim = state[-1]["slice"][1] if state else 0

    # ---- data schema (frame rows)
    fields = []
    if state:
        fields.append(pa.field("observation.state", pa.list_(pa.float32(), state_dim)))
    for e in columns:
        fields.append(pa.field(e["key"], _arrow_type(e["dtype"], e["shape"])))
    offset_cols = [e for e in columns if e.get("encoding") == "offset"]
    if offset_cols:
        fields.append(pa.field(TIMESTAMP_START, pa.int64()))
    fields += [pa.field("timestamp", pa.float32()), pa.field("frame_index", pa.int64()),
               pa.field("episode_index", pa.int64()), pa.field("index", pa.int64()),
               pa.field("task_index", pa.int64())]
    schema = pa.schema(fields)
    numeric_keys = [f.name for f in fields if not pa.types.is_string(f.type)]

    tasks: dict[str, int] = {}
    all_values: dict[str, list[np.ndarray]] = {k: [] for k in numeric_keys}
    hists = {e["key"]: np.zeros((3, 256), dtype=np.int64) for e in videos}
    hist_frames = {e["key"]: 0 for e in videos}
    episode_rows: list[dict[str, Any]] = []
    file_no = -1
    buffer: list[dict[str, np.ndarray]] = []
    vfiles: dict[str, _VideoFile] = {}
    total = 0
    data_files = 0

    def flush() -> None:
        nonlocal data_files
        if not buffer:
            return
        chunk, fidx = divmod(file_no, CHUNKS_SIZE)
        arrays = []
        for f in fields:
            vals = np.concatenate([b[f.name] for b in buffer])
            if pa.types.is_fixed_size_list(f.type):
                flat = pa.array(vals.reshape(-1), type=f.type.value_type)
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, f.type.list_size))
            elif pa.types.is_string(f.type):
                arrays.append(pa.array(list(vals), type=pa.string()))
            else:
                arrays.append(pa.array(vals, type=f.type))
        path = root / DATA_PATH.format(chunk_index=chunk, file_index=fidx)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)
        data_files += 1
        buffer.clear()
        for v in vfiles.values():
            v.close()
        vfiles.clear()

    n_ep = 0
    for ep in ds.episodes(split):
        if max_episodes is not None and n_ep >= max_episodes:
            break
        if n_ep % episodes_per_file == 0:
            flush()
            file_no += 1
        chunk, fidx = divmod(file_no, CHUNKS_SIZE)
        T = len(ep)
        cols: dict[str, np.ndarray] = {}
        if state:
            st = np.empty((T, state_dim), dtype=np.float32)
            for e in state:
                a, b = e["slice"]
                st[:, a:b] = np.asarray(ep.steps[e["path"]], dtype=np.float32).reshape(T, b - a)
            cols["observation.state"] = st
        for e in columns:
            v = ep.steps[e["path"]]
            if e["dtype"] == "string":
                arr = np.empty(T, dtype=object)
                arr[:] = [x.decode() if isinstance(x, bytes) else str(x) for x in v]
                cols[e["key"]] = arr
            else:
                arr = np.asarray(v, dtype=np.dtype(e["dtype"]))
                cols[e["key"]] = arr.reshape(T, -1) if e["shape"] else arr.reshape(T)
        if offset_cols:
            t_start = timestamp_start([cols[e["key"]] for e in offset_cols])
            for e in offset_cols:
                cols[e["key"]] = encode_offsets(cols[e["key"]], t_start)
            cols[TIMESTAMP_START] = np.full(T, t_start, dtype=np.int64)
        # task per frame
        if task_key is not None:
            texts = [x.decode() if isinstance(x, bytes) else str(x) for x in ep.steps[task_key]]
        else:
            meta_task = ep.metadata.get("task")
            use = meta_task if isinstance(meta_task, str) and meta_task and ep.metadata.get("task_present", True) \
                else default_task
            texts = [use] * T
        task_idx = np.empty(T, dtype=np.int64)
        for i, t in enumerate(texts):
            task_idx[i] = tasks.setdefault(t, len(tasks))
        cols["timestamp"] = (np.arange(T, dtype=np.float64) / fps_f).astype(np.float32)
        cols["frame_index"] = np.arange(T, dtype=np.int64)
        cols["episode_index"] = np.full(T, n_ep, dtype=np.int64)
        cols["index"] = np.arange(total, total + T, dtype=np.int64)
        cols["task_index"] = task_idx
        buffer.append(cols)
        for k in numeric_keys:
            all_values[k].append(cols[k])

        row: dict[str, Any] = {
            "episode_index": n_ep, "tasks": list(dict.fromkeys(texts)), "length": T,
            "data/chunk_index": chunk, "data/file_index": fidx,
            "dataset_from_index": total, "dataset_to_index": total + T,
        }
        # videos
        ep_hists = {}
        for e in videos:
            key, shape = e["key"], e["shape"]
            vf = vfiles.get(key)
            if vf is None:
                vf = vfiles[key] = _VideoFile(root / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=fidx),
                                              codec, rate, shape[0], shape[1], crf)
            start = vf.count
            present = ep.steps.get(e["path"] + "_present")
            frames = ep.steps[e["path"]]
            h = np.zeros((3, 256), dtype=np.int64)
            n_present = 0
            for i in range(T):
                data = frames[i]
                ok = bool(data) and (present is None or bool(present[i]))
                if ok:
                    rgb = _decode_image(data, shape)
                    h += _frame_hist(rgb)
                    n_present += 1
                else:
                    rgb = np.zeros((shape[0], shape[1], 3), dtype=np.uint8)
                vf.write(rgb)
            hists[key] += h
            hist_frames[key] += n_present
            ep_hists[key] = (h, n_present)
            row[f"videos/{key}/chunk_index"] = chunk
            row[f"videos/{key}/file_index"] = fidx
            row[f"videos/{key}/from_timestamp"] = start / fps_f
            row[f"videos/{key}/to_timestamp"] = (start + T) / fps_f
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        for k in numeric_keys:
            for stat, v in _numeric_stats(cols[k]).items():
                row[f"stats/{k}/{stat}"] = v.tolist()
        for key, (h, n_present) in ep_hists.items():
            for stat, v in _hist_stats(h, n_present).items():
                row[f"stats/{key}/{stat}"] = v.tolist()
        row["rldskit/episode_id"] = ep.episode_id
        if offset_cols:
            row[TIMESTAMP_START_EPISODES] = float(t_start)
        row["rldskit/metadata"] = json.dumps(_jsonable(ep.metadata), sort_keys=True)
        episode_rows.append(row)
        total += T
        n_ep += 1
    flush()
    if n_ep == 0:
        raise LeRobotExportError(f"split {split!r} has no episodes to export")

    # ---- meta/episodes
    ep_path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episode_rows), ep_path)

    # ---- meta/tasks.parquet (task text is the pandas index)
    import pandas as pd

    tdf = pd.DataFrame({"task_index": np.arange(len(tasks), dtype=np.int64)},
                       index=pd.Index(list(tasks), name="task"))
    tdf.to_parquet(root / "meta" / "tasks.parquet")

    # ---- meta/stats.json (exact, over every frame)
    stats: dict[str, Any] = {}
    for k in numeric_keys:
        stats[k] = {s: v.tolist() for s, v in _numeric_stats(np.concatenate(all_values[k])).items()}
    for key, h in hists.items():
        stats[key] = {s: v.tolist() for s, v in _hist_stats(h, hist_frames[key]).items()}
    (root / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))

    # ---- meta/info.json
    features: dict[str, Any] = {}
    fam = _CODEC_FAMILY.get(codec, codec)
    for e in videos:
        h, w, c = e["shape"]
        features[e["key"]] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                              "info": {"video.height": h + h % 2, "video.width": w + w % 2, "video.codec": fam,
                                       "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                                       "video.fps": _num(rate), "video.channels": 3, "has_audio": False}}
    if state:
        features["observation.state"] = {"dtype": "float32", "shape": [state_dim],
                                         "names": [n for e in state for n in e["names"]]}
    for e in columns:
        names = e.get("names")
        features[e["key"]] = {"dtype": e["dtype"], "shape": _feature_shape(e["shape"]),
                              "names": names if names and len(names) == _feature_shape(e["shape"])[0] else None}
    if offset_cols:
        features[TIMESTAMP_START] = {"dtype": "int64", "shape": [1], "names": None}
    for k, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                  ("index", "int64"), ("task_index", "int64")):
        features[k] = {"dtype": dt, "shape": [1], "names": None}
    timestamps = {"encoding": "offset", "unit": "s", "columns": [e["key"] for e in offset_cols],
                  "start_column": TIMESTAMP_START, "start_episodes_column": TIMESTAMP_START_EPISODES,
                  "absolute": "start + offset (float64, exact)",
                  "float32_error": "|offset| * 2**-24 at most"} if offset_cols else None
    info = {
        "codebase_version": CODEBASE_VERSION, "robot_type": robot_type,
        "total_episodes": n_ep, "total_frames": total, "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500,
        "fps": _num(rate), "splits": {"train": f"0:{n_ep}"},
        "data_path": DATA_PATH, "video_path": VIDEO_PATH if videos else None, "features": features,
        "rldskit": {
            "source": source, "split": split, "spec": spec.to_dict(), "codec": codec,
            "episodes_per_file": episodes_per_file,
            "task": {"path": task_key, "default": None if task_key else default_task},
            "columns": [{k: v for k, v in e.items()} for e in plan],
            **({"timestamps": timestamps} if timestamps else {}),
        },
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    return {"episodes": n_ep, "frames": total, "tasks": len(tasks), "codec": codec, "fps": _num(rate),
            "data_files": data_files, "video_keys": [e["key"] for e in videos]}


def _num(f: Fraction) -> int | float:
    return int(f) if f.denominator == 1 else float(f)


# ----------------------------------------------------------------------------------- reader

def _column_numpy(col) -> np.ndarray:
    import pyarrow as pa

    col = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    t = col.type
    if pa.types.is_fixed_size_list(t):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), t.list_size)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return np.array([np.asarray(x) for x in col.to_pylist()])
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        out = np.empty(len(col), dtype=object)
        out[:] = col.to_pylist()
        return out
    return col.to_numpy(zero_copy_only=False)


def _decode_video(path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    import av

    ts, frames = [], []
    with av.open(str(path)) as c:
        for fr in c.decode(video=0):
            ts.append(float(fr.pts * fr.time_base))
            frames.append(fr.to_ndarray(format="rgb24"))
    order = np.argsort(ts, kind="stable")
    return np.asarray(ts)[order], [frames[i] for i in order]


def read_lerobot_v3(path: str | os.PathLike, *, tolerance_s: float = 1e-4) -> Iterator[dict[str, Any]]:
    """Minimal LeRobot v3.0 reader (pyarrow + PyAV). Yields per episode::

        {"episode_index", "length", "tasks": [...], "task": [per-frame text],
         "columns": {feature: array},            # data parquet columns of the episode's rows
         "videos": {video_key: uint8 (T, H, W, 3)},  # frames at from_timestamp + frame_index / fps
         "row": {...},                           # the episode's meta/episodes row
         "rldskit": {"metadata": {...}, "steps": {flat_path: array}} or None}

    ``rldskit`` undoes an :func:`export_lerobot` mapping (images as decoded arrays, channels as in
    the spec; absent frames are the black frames the exporter wrote). Frames are matched to
    timestamps within ``tolerance_s`` (else ``ValueError``)."""
    import pandas as pd
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = Path(path)
    info = json.loads((root / "meta" / "info.json").read_text())
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise ValueError(f"{root}: codebase_version {info.get('codebase_version')!r}, expected {CODEBASE_VERSION}")
    fps = float(info["fps"])
    features = info["features"]
    video_keys = [k for k, f in features.items() if f["dtype"] == "video"]
    tasks_df = pd.read_parquet(root / "meta" / "tasks.parquet")
    task_text = {int(i): t for t, i in zip(tasks_df.index, tasks_df["task_index"])}
    ep_files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    rows = [r for f in ep_files for r in pq.read_table(f).to_pylist()]
    rows.sort(key=lambda r: r["episode_index"])
    data_cache: dict[Path, Any] = {}
    video_cache: dict[tuple[str, Path], tuple[np.ndarray, list[np.ndarray]]] = {}
    mapping = info.get("rldskit")
    for row in rows:
        dpath = root / info["data_path"].format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        if dpath not in data_cache:
            data_cache.clear()
            data_cache[dpath] = pq.read_table(dpath)
        table = data_cache[dpath]
        sub = table.filter(pc.equal(table["episode_index"], row["episode_index"]))
        cols = {name: _column_numpy(sub[name]) for name in sub.column_names}
        T = int(row["length"])
        if len(sub) != T:
            raise ValueError(f"episode {row['episode_index']}: {len(sub)} rows, meta says {T}")
        vids = {}
        for key in video_keys:
            vpath = root / info["video_path"].format(video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                                                     file_index=row[f"videos/{key}/file_index"])
            if (key, vpath) not in video_cache:
                for k in [k for k in video_cache if k[0] == key]:
                    del video_cache[k]
                video_cache[(key, vpath)] = _decode_video(vpath)
            ts, frames = video_cache[(key, vpath)]
            want = row[f"videos/{key}/from_timestamp"] + cols["frame_index"].astype(np.float64) / fps
            idx = np.clip(np.searchsorted(ts, want - tolerance_s), 0, max(len(ts) - 1, 0))
            if len(ts) == 0 or np.any(np.abs(ts[idx] - want) > tolerance_s):
                raise ValueError(f"{vpath}: no frame within {tolerance_s}s of the episode's timestamps")
            h, w = features[key]["shape"][:2]
            vids[key] = np.stack([frames[i][:h, :w] for i in idx]) if T else np.zeros((0, h, w, 3), np.uint8)
        ep = {"episode_index": int(row["episode_index"]), "length": T, "tasks": list(row["tasks"]),
              "task": [task_text[int(i)] for i in cols["task_index"]], "columns": cols, "videos": vids, "row": row,
              "rldskit": None}
        if mapping:
            ep["rldskit"] = _to_rldskit(mapping, ep, dpath)
        yield ep


def episode_timestamp_start(mapping: dict[str, Any], cols: dict[str, np.ndarray], row: dict[str, Any],
                            where: str) -> np.ndarray | None:
    """The per-frame int64 start (whole seconds) of an episode's timestamp offsets: the data column
    (which LeRobot's editing tools carry along), else the meta/episodes copy; ``None`` for an export
    without offsets (before issue 12: absolute times) or when both copies are gone. Raises
    ``ValueError`` naming ``where`` when the copies disagree."""
    ts = mapping.get("timestamps")
    if not ts:
        return None
    col = cols.get(ts["start_column"])
    meta = row.get(ts["start_episodes_column"])
    if col is not None:
        col = np.asarray(col).reshape(-1).astype(np.int64)
        if meta is not None and len(col) and not np.all(col == meta):
            raise ValueError(f"{where}: episode {row.get('episode_index')}: column {ts['start_column']} "
                             f"({sorted(set(col.tolist()))[:3]}) disagrees with meta/episodes "
                             f"{ts['start_episodes_column']} = {meta}")
        return col
    if meta is not None:
        return np.full(len(next(iter(cols.values()))) if cols else 0, int(meta), np.int64)
    return None


def _to_rldskit(mapping: dict[str, Any], ep: dict[str, Any], where: Path | str = "") -> dict[str, Any]:
    cols, T = ep["columns"], ep["length"]
    steps: dict[str, Any] = {}
    start = episode_timestamp_start(mapping, cols, ep["row"], str(where))
    for e in mapping["columns"]:
        kind, path = e["kind"], e["path"]
        if e.get("alias"):
            continue
        if kind == "video":
            frames = ep["videos"][e["key"]]
            steps[path] = frames[..., :1] if e["channels"] == 1 else frames
        elif kind == "task":
            arr = np.empty(T, dtype=object)
            arr[:] = ep["task"]
            steps[path] = arr
        elif kind == "state":
            a, b = e["slice"]
            steps[path] = cols["observation.state"][:, a:b].reshape(T, *e["shape"]).astype(np.dtype(e["dtype"]))
        else:
            v = cols[e["key"]]
            if e.get("encoding") == "offset":
                if start is None:
                    raise ValueError(f"{where}: episode {ep['episode_index']}: {e['key']} holds offsets but "
                                     f"neither {mapping['timestamps']['start_column']} nor meta/episodes "
                                     f"{mapping['timestamps']['start_episodes_column']} gives their start")
                v = decode_offsets(np.asarray(v, np.float64).reshape(T), start)
            if e["dtype"] != "string":
                v = np.asarray(v).astype(np.dtype(e["dtype"]), copy=False).reshape(T, *e["shape"])
            steps[path] = v
    meta = ep["row"].get("rldskit/metadata")
    return {"metadata": _unjson(json.loads(meta)) if meta else {}, "steps": steps,
            "episode_id": ep["row"].get("rldskit/episode_id")}


# ----------------------------------------------------------------------------------- CLI

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_export_parser(export_subparsers: Any) -> Any:
    """Add ``lerobot`` to an ``export`` sub-command's subparsers; ``func`` returns the exit code:
    0 written, 1 the export failed on the data (nothing written), 2 cannot run (no dataset, OUT
    exists without --overwrite, no such codec/split)."""
    p = export_subparsers.add_parser(
        "lerobot", help="export a converted dataset as LeRobot v3.0 (parquet + mp4 videos)",
        description="Write a LeRobot v3.0 dataset: observation.state, action, observation.images.<cam> videos, "
                    "next.reward/next.done, rldskit.* extra columns, tasks, exact stats.")
    p.add_argument("dataset", metavar="DATASET", help="converted dataset folder (e.g. data/pi5_donkey/1.0.0)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist unless --overwrite)")
    p.add_argument("--codec", default=None, help="video encoder (default: libsvtav1, else libx264, ...)")
    p.add_argument("--crf", type=int, default=None, help="encoder quality (default 30 for AV1 (as LeRobot), 18 for x264)")
    p.add_argument("--split", default="train")
    p.add_argument("--robot-type", default=None, help="info.json robot_type (default: the spec name)")
    p.add_argument("--task-key", default="language_instruction", help="step text used as the task")
    p.add_argument("--default-task", default=None, help="task when the steps carry none")
    p.add_argument("--episodes-per-file", type=int, default=500)
    p.add_argument("--max-episodes", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_export_lerobot)
    return p


def cmd_export_lerobot(args: Any) -> int:
    from rldskit.formats.tfds_dir import DatasetError
    from rldskit.spec import SpecError

    if not Path(args.dataset).exists():
        print(f"error: {args.dataset}: no such dataset", file=sys.stderr)
        return EXIT_USAGE
    if Path(args.out).exists() and not args.overwrite:
        print(f"error: {args.out} exists (use --overwrite to replace it)", file=sys.stderr)
        return EXIT_USAGE
    try:
        summary = export_lerobot(args.dataset, args.out, split=args.split, codec=args.codec, crf=args.crf,
                                 robot_type=args.robot_type, task_key=args.task_key, default_task=args.default_task,
                                 episodes_per_file=args.episodes_per_file, max_episodes=args.max_episodes,
                                 overwrite=args.overwrite)
    except (DatasetError, SpecError, FileNotFoundError, FileExistsError, LeRobotExportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as e:
        print(f"error: export failed: {e}", file=sys.stderr)
        return EXIT_FAIL
    if getattr(args, "json", False):
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {summary['out']}: {summary['episodes']} episodes, {summary['frames']} frames, "
              f"{summary['tasks']} tasks, codec {summary['codec']}")
    return EXIT_OK
