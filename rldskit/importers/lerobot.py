"""Import Hugging Face LeRobot datasets (v2.0, v2.1, v3.0) into rldskit capture folders.

    from rldskit.importers.lerobot import import_lerobot
    report = import_lerobot("/data/lerobot/so100_pick", "/data/episodes")            # derived spec
    report = import_lerobot("lerobot/svla_so100_pickplace", "/data/ep", target="so100_arm.v1")

LeRobot rows are (observation, action) pairs: every row's action is real, so the derived spec
declares ``last_step="valid"`` and no observation-only RLDS final step is added.

Layouts:

* v2.0/v2.1: ``meta/info.json``, ``meta/episodes.jsonl``, ``meta/tasks.jsonl``; one parquet file
  per episode (``data_path`` template with ``{episode_chunk}``/``{episode_index}``) and one mp4
  per camera per episode (``video_path`` with ``{video_key}``).
* v3.0: ``meta/episodes/chunk-*/file-*.parquet`` (one row per episode with its data and
  per-camera video file indices and ``from_timestamp``/``to_timestamp``), ``meta/tasks.parquet``;
  many episodes per data parquet file and concatenated mp4 per camera.
* A monorepo (``<contributor>/<dataset>/{meta,data,videos}``) without a top-level ``meta/``:
  every sub-dataset is imported into ``out/<contributor>/<dataset>``.

Video frames are decoded with PyAV and matched to each row's ``timestamp`` (nearest decoded
frame, tolerance half a frame period), then stored as JPEG.

An rldskit export (``info.json["rldskit"]``, see :mod:`rldskit.exporters.lerobot`) is read with
its extra columns understood: a camera with a presence mask (``rldskit.present.<cam>``, or
``observation.images.<cam>_present`` in exports before issue 12) becomes an optional camera
whose absent frames stay absent, and ``rldskit.timestamp.*`` offsets are made absolute float64
seconds again from ``rldskit.timestamp_start`` (exports before issue 12 stored them absolute):
old and new exports import to the same episodes.

The report never holds a local input path: sources are named relative to the folder given
(starting with its name), identified by :func:`meta_digest`, and messages (PyAV's and
pyarrow's included) have those paths replaced by the recorded names. Everything unusual is reported
in an :class:`ImportReport` (``out/import_report.json``) with warning codes, never silently
fixed; a bad episode is skipped with its reason while the others are imported.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rldskit._io import atomic_write_bytes

__all__ = ["import_lerobot", "ImportReport", "DatasetReport", "EpisodeResult", "ImportIssue", "LeRobotError",
           "add_import_parser", "derive_spec", "meta_digest"]

JUNK_TASKS = {"", "null", "none", "task", "default", "n/a", "na", "todo", "test"}
_STANDARD_COLUMNS = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


class LeRobotError(ValueError):
    """The source is not a readable LeRobot dataset (missing meta/, unreadable info.json, ...)."""


# --------------------------------------------------------------------------- report


@dataclasses.dataclass
class ImportIssue:
    code: str
    message: str
    episode: int | None = None


@dataclasses.dataclass
class EpisodeResult:
    source_episode: int
    status: str  # "imported" | "skipped" | "truncated" (imported, cut to the decodable frames)
    path: str | None = None
    reason: str | None = None
    num_steps: int = 0
    frames: int = 0


@dataclasses.dataclass
class DatasetReport:
    """One imported dataset. ``source`` names it relative to the folder given on the command line,
    starting with that folder's name (``g1`` or ``monorepo/alice/pick``; a Hub repo id as given),
    never a local absolute path; ``sha256`` identifies it (:func:`meta_digest`)."""

    name: str
    source: str
    out: str
    sha256: str | None = None
    codebase_version: str = ""
    contributor: str | None = None
    spec_id: str | None = None
    episodes: list[EpisodeResult] = dataclasses.field(default_factory=list)
    warnings: list[ImportIssue] = dataclasses.field(default_factory=list)
    errors: list[ImportIssue] = dataclasses.field(default_factory=list)
    units: dict[str, str] = dataclasses.field(default_factory=dict)

    def warn(self, code: str, message: str, episode: int | None = None) -> None:
        self.warnings.append(ImportIssue(code, message, episode))

    @property
    def warning_codes(self) -> set[str]:
        return {w.code for w in self.warnings}


@dataclasses.dataclass
class ImportReport:
    """What an import did. ``source`` is the name of the folder given (or the Hub repo id), never
    its local path: messages are written with paths relative to it (see :class:`DatasetReport`)."""

    source: str
    out: str
    target: str | None = None
    datasets: list[DatasetReport] = dataclasses.field(default_factory=list)
    errors: list[ImportIssue] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def imported(self) -> list[EpisodeResult]:
        return [e for d in self.datasets for e in d.episodes if e.status in ("imported", "truncated")]

    @property
    def skipped(self) -> list[EpisodeResult]:
        return [e for d in self.datasets for e in d.episodes if e.status == "skipped"]

    @property
    def imported_paths(self) -> list[str]:
        return [e.path for e in self.imported if e.path]

    @property
    def warning_codes(self) -> set[str]:
        return {w.code for d in self.datasets for w in d.warnings}

    @property
    def ok(self) -> bool:
        return not self.errors and not self.skipped and not any(d.errors for d in self.datasets) and \
            not any(e.status == "truncated" for d in self.datasets for e in d.episodes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["summary"] = {"imported": len(self.imported), "skipped": len(self.skipped),
                        "frames": sum(e.frames for e in self.imported),
                        "warnings": sorted(self.warning_codes)}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, path: str | Path) -> None:
        atomic_write_bytes(path, self.to_json().encode())


# --------------------------------------------------------------------------- reading LeRobot


def _flat_names(names: Any, n: int | None) -> list[str] | None:
    """LeRobot ``names``: a list, a nested ``[[...]]`` or ``{"motors": [...]}``; ``None`` if unusable."""
    if names is None:
        return None
    if isinstance(names, dict):
        vals = [v for v in names.values()]
        flat = [x for v in vals for x in (v if isinstance(v, list) else [v])]
    elif isinstance(names, list):
        flat = []
        for x in names:
            flat.extend(x if isinstance(x, list) else [x])
    else:
        return None
    flat = [str(x) for x in flat]
    if n is not None and len(flat) != n or len(set(flat)) != len(flat):
        return None
    return flat


def _safe(name: str) -> str:
    s = _SAFE.sub("_", name).strip("_.") or "x"
    return s if re.match(r"^[A-Za-z_]", s) else "_" + s


def _col(table, name: str) -> np.ndarray:
    """A parquet column as numpy: lists become a 2-d array; one-element lists of scalars are unwrapped."""
    import pyarrow as pa

    col = table.column(name).combine_chunks()
    t = col.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        n = len(col)
        flat = col.flatten().to_numpy(zero_copy_only=False)
        width = flat.size // n if n else (t.list_size if pa.types.is_fixed_size_list(t) else 0)
        arr = flat.reshape(n, width) if n else flat.reshape(0, width)
        return arr
    return col.to_numpy(zero_copy_only=False)


def meta_digest(root: Path) -> str:
    """A dataset's identity: sha256 over ``<relative POSIX path>\\0<size>\\0<sha256>\\n`` lines, in
    path order, of every file under its ``meta/`` (info.json, episodes, tasks, stats: cheap, and
    the per-episode stats change with the data)."""
    import hashlib

    h = hashlib.sha256()
    files = sorted((p for p in (root / "meta").rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
    for p in files:
        fh, size = hashlib.sha256(), 0
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                fh.update(chunk)
                size += len(chunk)
        h.update(f"{p.relative_to(root).as_posix()}\0{size}\0{fh.hexdigest()}\n".encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class _RldskitLayout:
    """What an rldskit export (``info.json["rldskit"]``) says about its extra columns: presence
    masks (mask key -> camera key; ``rldskit.present.<cam>``, or ``observation.images.<cam>_present``
    before issue 12) and timestamp offset columns with their start column (absent before issue 12,
    when ``rldskit.timestamp.*`` held absolute times). Without the mapping (LeRobot's
    ``delete_episodes``/``split_dataset``/``merge_datasets`` rebuild info.json without it) the same
    is read from the column names: bool ``rldskit.present.<cam>`` or ``<camera key>_present`` beside
    a camera, and float64 ``rldskit.timestamp.*`` when ``rldskit.timestamp_start`` is a feature."""

    mapping: dict
    masks: dict
    offsets: frozenset
    start_column: str | None
    start_episodes_column: str | None

    @classmethod
    def of(cls, info: dict) -> "_RldskitLayout":
        mapping = info.get("rldskit") if isinstance(info.get("rldskit"), dict) else {}
        entries = [e for e in mapping.get("columns") or [] if isinstance(e, dict)]
        feats = info.get("features") or {}
        video = {e.get("path"): e.get("key") for e in entries if e.get("kind") == "video"}
        masks = {}
        for e in entries:
            if e.get("kind") != "column" or e.get("alias") or e.get("key") not in feats:
                continue
            path = str(e.get("path", ""))
            cam = e.get("mask_of") or (video.get(path[: -len("_present")]) if path.endswith("_present") else None)
            if cam in feats and feats[cam].get("dtype") in ("video", "image"):
                masks[e["key"]] = cam
        ts = mapping.get("timestamps") if isinstance(mapping.get("timestamps"), dict) else {}
        if not entries:  # no mapping (LeRobot's own tools rebuild info.json without it): by the names
            from rldskit.exporters.lerobot import PRESENT_PREFIX, TIMESTAMP_START, TIMESTAMP_START_EPISODES

            cams = {k for k, f in feats.items() if f.get("dtype") in ("video", "image")}
            for k, f in feats.items():
                if f.get("dtype") != "bool":
                    continue
                cam = "observation.images." + k[len(PRESENT_PREFIX):] if k.startswith(PRESENT_PREFIX) else \
                    k[: -len("_present")] if k.endswith("_present") else None
                if cam in cams:
                    masks[k] = cam
            if TIMESTAMP_START in feats:
                ts = {"columns": [k for k, f in feats.items()
                                  if k.startswith("rldskit.timestamp.") and f.get("dtype") == "float64"],
                      "start_column": TIMESTAMP_START, "start_episodes_column": TIMESTAMP_START_EPISODES}
                mapping = {**mapping, "timestamps": ts}
        return cls(mapping, masks, frozenset(ts.get("columns") or ()), ts.get("start_column"),
                   ts.get("start_episodes_column"))

    @property
    def hidden(self) -> set[str]:
        """Columns that are not features of their own in the imported spec."""
        return set(self.masks) | ({self.start_column} if self.start_column else set())


class _Source:
    """One LeRobot dataset folder: info, episodes (index -> record), tasks, file locations."""

    def __init__(self, root: Path, rep: DatasetReport):
        self.root = root
        self.rep = rep
        info_file = root / "meta" / "info.json"
        if not (root / "meta").is_dir():
            raise LeRobotError(f"{self.rel(root)}: no meta/ folder: not a LeRobot dataset")
        try:
            self.info = json.loads(info_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LeRobotError(f"{self.rel(info_file)}: cannot read info.json: {e}") from None
        self.version = str(self.info.get("codebase_version", ""))
        rep.codebase_version = self.version
        self.fps = float(self.info.get("fps") or 30)
        self.features: dict[str, dict] = dict(self.info.get("features") or {})
        self.cameras = [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]
        self.video_keys = [k for k in self.cameras if self.features[k].get("dtype") == "video"]
        self.v3 = self.version.startswith("v3")
        self.rldskit = _RldskitLayout.of(self.info)
        self.episodes: dict[int, dict] = {}
        self.tasks: dict[int, str] = {}
        if self.v3:
            self._load_v3()
        else:
            self._load_v2()
        self._table_cache: tuple[Path, Any] | None = None

    # ---- v2
    def _load_v2(self) -> None:
        meta = self.root / "meta"
        for line in _jsonl(meta / "tasks.jsonl"):
            self.tasks[int(line["task_index"])] = str(line.get("task", ""))
        chunks = int(self.info.get("chunks_size") or 1000)
        recs = _jsonl(meta / "episodes.jsonl")
        if not recs:  # no episode list: discover from the data files
            for p in sorted((self.root / "data").glob("**/episode_*.parquet")):
                m = re.search(r"episode_(\d+)", p.name)
                if m:
                    recs.append({"episode_index": int(m.group(1))})
        for r in recs:
            idx = int(r["episode_index"])
            fmt = {"episode_chunk": idx // chunks, "episode_index": idx}
            rec = {"index": idx, "length": r.get("length"), "tasks": list(r.get("tasks") or []),
                   "data": self.root / self.info.get("data_path", "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet").format(**fmt),
                   "videos": {}}
            vp = self.info.get("video_path")
            for k in self.video_keys:
                if vp:
                    rec["videos"][k] = (self.root / vp.format(video_key=k, **fmt), 0.0)
            self.episodes[idx] = rec

    # ---- v3
    def _load_v3(self) -> None:
        import pyarrow.parquet as pq

        meta = self.root / "meta"
        tp = meta / "tasks.parquet"
        if tp.exists():
            t = pq.read_table(tp)
            cols = t.column_names
            text_col = "__index_level_0__" if "__index_level_0__" in cols else "task" if "task" in cols else None
            if text_col and "task_index" in cols:
                for text, ti in zip(t.column(text_col).to_pylist(), t.column("task_index").to_pylist()):
                    self.tasks[int(ti)] = str(text)
        files = sorted((meta / "episodes").glob("**/*.parquet"))
        if not files:
            raise LeRobotError(f"{self.rel(meta / 'episodes')}: no episode metadata parquet files (v3.0 layout)")
        dp = self.info.get("data_path", "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet")
        vp = self.info.get("video_path", "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
        for f in files:
            rows = pq.read_table(f).to_pylist()
            for r in rows:
                idx = int(r["episode_index"])
                rec = {"index": idx, "length": r.get("length"), "tasks": list(r.get("tasks") or []),
                       "data": self.root / dp.format(chunk_index=int(r.get("data/chunk_index") or 0),
                                                     file_index=int(r.get("data/file_index") or 0)),
                       "from_index": r.get("dataset_from_index"), "to_index": r.get("dataset_to_index"),
                       "timestamp_start": r.get(self.rldskit.start_episodes_column)
                       if self.rldskit.start_episodes_column else None,
                       "videos": {}}
                for k in self.video_keys:
                    ci, fi = r.get(f"videos/{k}/chunk_index"), r.get(f"videos/{k}/file_index")
                    if ci is None or fi is None:
                        continue
                    rec["videos"][k] = (self.root / vp.format(video_key=k, chunk_index=int(ci), file_index=int(fi)),
                                        float(r.get(f"videos/{k}/from_timestamp") or 0.0))
                self.episodes[idx] = rec

    def rel(self, path: Path | str) -> str:
        """``path`` as reports write it: relative to the dataset, after its recorded name."""
        p = Path(path)
        try:
            tail = p.relative_to(self.root).as_posix()
        except ValueError:
            return p.name
        return self.rep.source if tail == "." else f"{self.rep.source}/{tail}"

    def read_episode(self, idx: int):
        """The episode's rows as a pyarrow table (v3: the slice of its shared data file)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rec = self.episodes[idx]
        path = rec["data"]
        if self._table_cache and self._table_cache[0] == path:
            table = self._table_cache[1]
        else:
            table = pq.read_table(path)
            self._table_cache = (path, table)
        if self.v3:  # many episodes per file: keep this one's rows
            if "episode_index" in table.column_names:
                keep = _col(table, "episode_index").reshape(len(table), -1)[:, 0] == idx
            elif rec.get("from_index") is not None and "index" in table.column_names:
                ix = _col(table, "index").reshape(len(table), -1)[:, 0]
                keep = (ix >= rec["from_index"]) & (ix < rec["to_index"])
            else:
                raise LeRobotError(f"{self.rel(path)}: neither episode_index nor index columns: cannot find episode {idx}")
            table = table.filter(pa.array(keep))
        return table


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            out.append(json.loads(line))
    return out


# --------------------------------------------------------------------------- spec


def _image_shape(feat: dict) -> tuple[int, int, int]:
    shape = list(feat.get("shape") or [])
    names = feat.get("names") or []
    info = feat.get("info") or feat.get("video_info") or {}
    if "video.height" in info and "video.width" in info:
        return int(info["video.height"]), int(info["video.width"]), int(info.get("video.channels", 3))
    if len(shape) == 3:
        if isinstance(names, list) and len(names) == 3 and str(names[0]).startswith("channel"):
            return int(shape[1]), int(shape[2]), int(shape[0])
        return int(shape[0]), int(shape[1]), int(shape[2])
    raise LeRobotError(f"camera shape {shape} is not (H, W, C)")


def _cam_name(key: str) -> str:
    return _safe(key.split("observation.images.", 1)[-1].split("observation.image", 1)[-1] or key)


def derive_spec(info: dict, name: str, camera_shapes: dict[str, tuple[int, int, int]] | None = None):
    """A spec for a LeRobot dataset from its ``info.json`` (``lerobot_<name>.v1``). For an rldskit
    export, a camera with a presence mask is optional (its ``<cam>_present`` is the mask) and the
    mask and timestamp-start columns are not features of their own."""
    from rldskit.spec import EpisodeSpec

    feats = info.get("features") or {}
    layout = _RldskitLayout.of(info)
    masked = set(layout.masks.values())
    obs: dict[str, Any] = {}
    images: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    action = None
    for key, f in feats.items():
        dtype = f.get("dtype")
        if key in _STANDARD_COLUMNS or key in layout.hidden:
            continue
        if dtype in ("video", "image"):
            shape = (camera_shapes or {}).get(key) or _image_shape(f)
            images[_cam_name(key)] = {"type": "image", "shape": list(shape), "encoding": "jpeg"}
            if key in masked:  # an rldskit export's presence mask: absent frames stay absent
                images[_cam_name(key)]["optional"] = True
            continue
        if dtype in ("string",):
            continue
        np_dtype = {"float64": "float64", "float32": "float32", "float16": "float32", "int64": "int64",
                    "int32": "int32", "int16": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool"}.get(dtype, "float32")
        shape = [int(d) for d in (f.get("shape") or [1])]
        leaf: dict[str, Any] = {"type": "tensor", "shape": shape, "dtype": np_dtype}
        names = _flat_names(f.get("names"), shape[-1] if len(shape) == 1 else None)
        if names and len(shape) == 1:
            leaf["names"] = [n if n else f"x{i}" for i, n in enumerate(names)]
        if f.get("unit"):
            leaf["unit"] = str(f["unit"])
        if key == "action":
            action = leaf
        elif key == "observation.state":
            obs["state"] = leaf
        elif key.startswith("observation."):
            obs[_safe(key[len("observation."):])] = leaf
        else:
            extra[_safe(key)] = leaf
    if images:
        obs["images"] = images
    steps: dict[str, Any] = {"observation": obs,
                             "action": action or {"type": "tensor", "shape": [0], "dtype": "float32"},
                             "timestamp": {"control": {"type": "scalar", "dtype": "float64", "unit": "s"}},
                             "language_instruction": {"type": "text"}}
    if extra:
        steps["extra"] = extra
    fps = info.get("fps")
    d = {"name": f"lerobot_{_safe(name)}", "version": "1.0.0",
         "description": f"Imported from the LeRobot dataset {name} (codebase {info.get('codebase_version')}, "
                        f"robot {info.get('robot_type')})",
         "last_step": "valid", "primary_clock": "timestamp/control", "steps": steps,
         "episode_metadata": {"task": {"type": "text", "optional": True},
                              "source_episode": {"type": "scalar", "dtype": "int64"}}}
    if fps:
        d["fps"] = float(fps)
    return EpisodeSpec.from_dict(d, source=f"lerobot:{name}")


# --------------------------------------------------------------------------- video


def _probe_shape(path: Path) -> tuple[int, int, int] | None:
    import av

    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            return int(s.codec_context.height), int(s.codec_context.width), 3
    except Exception:  # noqa: BLE001 - an unreadable file is reported per episode
        return None


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    from rldskit import images

    return images.encode(rgb, "jpeg", quality)


_POOL = None


def _pool():
    """Threads for RGB conversion + JPEG encoding (both release the GIL) beside the decoder."""
    global _POOL
    if _POOL is None:
        import os
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="rldskit-jpeg")
    return _POOL


def _encode_frame(frame, quality: int) -> bytes:
    return _jpeg(frame.to_ndarray(format="rgb24"), quality)


def _frames_at(path: Path, offset: float, times: np.ndarray, tol: float, quality: int,
               stats: dict, lookahead: int = 8) -> Iterator[tuple[bytes | None, float, float]]:
    """For each row time (seconds from the episode start) yield ``(jpeg, frame_time, error)``
    using the nearest decoded frame; ``jpeg`` is None once the video has no more frames.
    JPEG encoding runs in a thread pool ``lookahead`` rows ahead. Raises on an unreadable container."""
    for fut, t, err in _frames_at_futures(path, offset, times, tol, quality, stats, lookahead):
        yield (fut.result() if fut is not None else None), t, err


def _frames_at_futures(path, offset, times, tol, quality, stats, lookahead):
    import av
    from collections import deque

    pool = _pool()
    pending: deque = deque()
    container = av.open(str(path))
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = stream.time_base
        start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        if offset > 0:
            container.seek(max(0, int((offset + start) / tb) - 1), stream=stream, backward=True, any_frame=False)
        n = len(times)
        i = 0
        prev = None  # (t, frame)
        last: list = [None, None]  # (t, future): a frame serving several rows is encoded once

        def emit(t, frame):
            if last[0] != t:
                last[0], last[1] = t, pool.submit(_encode_frame, frame, quality)
            return last[1]

        end = (float(times[-1]) if n else 0.0) + tol
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            stats["decoded"] = stats.get("decoded", 0) + 1
            t = float(frame.pts * tb) - start - offset
            while i < n and t >= times[i]:
                best = (t, frame) if prev is None or abs(t - times[i]) <= abs(times[i] - prev[0]) else prev
                pending.append((emit(*best), best[0], abs(best[0] - times[i])))
                i += 1
            while len(pending) > lookahead:
                yield pending.popleft()
            if i >= n:
                break
            prev = (t, frame)
            if t > end + 1.0:
                break
        while i < n:  # the video ended: the last frame serves rows within tolerance
            if prev is not None and abs(times[i] - prev[0]) <= tol:
                pending.append((emit(*prev), prev[0], abs(times[i] - prev[0])))
            else:
                pending.append((None, math.nan, math.inf))
            i += 1
        while pending:
            yield pending.popleft()
    finally:
        container.close()


# --------------------------------------------------------------------------- target mapping


_SO100_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "wrist_yaw")


def _norm_joint(n: str) -> str:
    n = n.lower().strip()
    n = re.sub(r"\.(pos|position)$", "", n)
    n = re.sub(r"^(main|follower|leader|left|right)_", "", n)
    n = re.sub(r"_(pos|position|deg|rad)$", "", n)
    return n


class _Mapper:
    """Maps a LeRobot row to a target spec's step (so100_arm.v1 style) or the derived spec."""

    def __init__(self, src: _Source, spec, target: str | None, rep: DatasetReport):
        self.src, self.spec, self.target, self.rep = src, spec, target, rep
        self.padded: list[str] = []
        self.cam_map: dict[str, str] = {}  # spec image path -> LeRobot camera key
        self.unit_error: str | None = None
        self.clipped = 0  # gripper values outside [0, 1] after scaling (clipped, reported)
        if target is None:
            for k in src.cameras:
                self.cam_map[f"observation/images/{_cam_name(k)}"] = k
            return
        self._plan_target()

    def _plan_target(self) -> None:
        src, spec, rep = self.src, self.spec, self.rep
        if "observation/joint_position" not in spec.step_leaves or "action" not in spec.step_leaves:
            raise LeRobotError(f"target {spec.id}: the LeRobot importer maps onto arm schemas with "
                               "observation/joint_position and action (so100_arm.v1); omit --target to derive a "
                               "schema from info.json")
        feats = src.features
        st = feats.get("observation.state", {})
        ac = feats.get("action", {})
        self.state_names = [_norm_joint(n) for n in (_flat_names(st.get("names"), (st.get("shape") or [None])[-1]) or [])]
        self.action_names = [_norm_joint(n) for n in (_flat_names(ac.get("names"), (ac.get("shape") or [None])[-1]) or [])]
        raw = [str(n) for n in (_flat_names(st.get("names"), None) or [])]
        unit = str(st.get("unit") or "").lower()
        robot = str(src.info.get("robot_type") or "").lower()
        if "rad" in unit:
            self.scale, declared = 1.0, "rad"
        elif "deg" in unit or any("deg" in n.lower() for n in raw):
            self.scale, declared = math.pi / 180.0, "deg"
        elif unit:
            self.scale, declared = None, unit
        elif any(n.endswith(".pos") for n in raw):
            self.scale, declared = None, "normalised -100..100 (LeRobot motor bus, name suffix .pos)"
        elif robot.startswith(("so100", "so101", "so-100", "koch", "moss")) and not src.v3:
            self.scale, declared = math.pi / 180.0, f"deg (LeRobot {robot} convention)"
        else:
            self.scale, declared = None, "unknown"
        if self.scale is None:
            self.unit_error = f"joint unit is {declared}: not converted to rad (refusing to guess)"
            rep.warn("UNIT", self.unit_error)
        else:
            rep.units["observation/joint_position"] = f"{declared} -> rad" if self.scale != 1.0 else "rad"
            if self.scale != 1.0:
                rep.warn("UNIT", f"joint positions declared in {declared}: converted to rad")
        obs = spec.steps["observation"]
        jp = obs.get("joint_position")
        self.joint_idx = [self.state_names.index(j) if j in self.state_names else None for j in (jp.names if jp else ())]
        for j, ix in zip(jp.names if jp else (), self.joint_idx):
            if ix is None:
                self.padded.append(f"observation/joint_position/{j}")
        self.grip_idx = next((i for i, n in enumerate(self.state_names) if "gripper" in n), None)
        if self.grip_idx is None and "gripper_position" in obs:
            self.padded.append("observation/gripper_position")
        if "joint_velocity" in obs:
            self.padded.append("observation/joint_velocity")
        an = spec.steps["action"].names or ()
        self.act_idx = []
        for n in an:
            if n == "gripper":
                ix = next((i for i, m in enumerate(self.action_names) if "gripper" in m), None)
            else:
                ix = self.action_names.index(n) if n in self.action_names else None
            self.act_idx.append(ix)
            if ix is None:
                self.padded.append(f"action/{n}")
        self.grip_scale = 1.0
        if self.grip_idx is not None:
            self.grip_scale = 0.01  # LeRobot grippers are 0..100 (percent open/closed)
            rep.units["observation/gripper_position"] = "0..100 -> 0..1"
        # cameras: wrist heuristics, then front
        cams = list(src.cameras)
        wrist = next((c for c in cams if any(w in c.lower() for w in ("wrist", "gripper", "hand"))), None)
        front = next((c for c in cams if "front" in c.lower() and c != wrist), None)
        if front is None:
            rest = [c for c in cams if c != wrist]
            if rest:
                front = rest[0]
                rep.warn("CAMERA_NAMES", f"no camera named front: using {front!r} as front "
                                         f"(cameras: {', '.join(cams)})")
        if wrist and "wrist" not in wrist.lower():
            rep.warn("CAMERA_NAMES", f"using {wrist!r} as the wrist camera")
        extra = [c for c in cams if c not in (front, wrist)]
        if extra:
            rep.warn("CAMERA_NAMES", f"cameras {extra} have no place in {spec.id}: dropped")
        for path in spec.image_paths:
            cam = spec.camera_name(path)
            src_key = front if cam == "front" else wrist if cam == "wrist" else None
            if src_key:
                self.cam_map[path] = src_key
            else:
                self.padded.append(path)
        if self.padded:
            rep.warn("PADDED", f"signals absent from the source, stored as placeholders: {', '.join(self.padded)}")

    def tags(self) -> list[str]:
        return [f"padded:{p}" for p in self.padded]

    def step(self, cols: dict[str, np.ndarray], i: int, images: dict[str, bytes | None], task: str
             ) -> tuple[dict, Any, dict]:
        if self.target is None:
            obs: dict[str, Any] = {}
            extras: dict[str, Any] = {"language_instruction": task}
            ex: dict[str, Any] = {}
            for key, arr in cols.items():
                if key == "action":
                    continue
                if key.startswith("observation."):
                    name = "state" if key == "observation.state" else _safe(key[len("observation."):])
                    obs[name] = arr[i]
                else:
                    ex[_safe(key)] = arr[i]
            if ex:
                extras["extra"] = ex
            if images:
                obs["images"] = {}
                for p, b in images.items():
                    obs["images"][self.spec.camera_name(p)] = b
                    if self.spec.step_leaves[p].optional:
                        obs["images"][self.spec.camera_name(p) + "_present"] = b is not None
            return obs, cols["action"][i], extras
        spec = self.spec
        obs_spec = spec.steps["observation"]
        state = cols.get("observation.state")
        obs = {}
        if "joint_position" in obs_spec:
            jp = np.zeros(len(self.joint_idx), np.float64)
            for k, ix in enumerate(self.joint_idx):
                if ix is not None and state is not None:
                    jp[k] = float(state[i][ix]) * self.scale
            obs["joint_position"] = jp.astype(np.float32)
        if "joint_velocity" in obs_spec:
            obs["joint_velocity"] = obs_spec["joint_velocity"].placeholder()
        if "gripper_position" in obs_spec:
            g = float(state[i][self.grip_idx]) * self.grip_scale if self.grip_idx is not None and state is not None else 0.0
            self.clipped += not 0.0 <= g <= 1.0
            obs["gripper_position"] = np.float32(min(max(g, 0.0), 1.0))
        imgs: dict[str, Any] = {}
        for path in spec.image_paths:
            name = spec.camera_name(path)
            leaf = spec.step_leaves[path]
            b = images.get(path)
            imgs[name] = b
            if leaf.optional:
                imgs[name + "_present"] = b is not None
        obs["images"] = imgs
        act = cols.get("action")
        a = np.zeros(len(self.act_idx), np.float64)
        for k, ix in enumerate(self.act_idx):
            if ix is None or act is None:
                continue
            a[k] = float(act[i][ix]) * (self.grip_scale if spec.steps["action"].names[k] == "gripper" else self.scale)
        names = spec.steps["action"].names or ()
        if "gripper" in names:
            g = names.index("gripper")
            self.clipped += not 0.0 <= a[g] <= 1.0
            a[g] = min(max(a[g], 0.0), 1.0)
        return obs, a.astype(np.float32), {"language_instruction": task}


# --------------------------------------------------------------------------- import one dataset


def _import_dataset(src_root: Path, out: Path, name: str, origin: str, rep: DatasetReport, *, target: str | None,
                    budget: list[int | None], episodes: Sequence[int] | None, jpeg_quality: int,
                    contributor: str | None) -> None:
    import pyarrow as pa

    from rldskit.capture import EpisodeLogger
    from rldskit.spec import load_spec

    src = _Source(src_root, rep)
    declared = int(src.info.get("total_episodes") or len(src.episodes))
    present = sorted(i for i, r in src.episodes.items() if Path(r["data"]).exists())
    absent_listed = sorted(set(src.episodes) - set(present))
    if declared > len(present) or absent_listed:
        rep.warn("DECLARED_ABSENT", f"info.json declares {declared} episodes; {len(present)} have data files "
                                    f"(absent: {_ranges(absent_listed) or 'unlisted'})")
    if present and (present[0] != 0 or present != list(range(present[0], present[0] + len(present)))):
        rep.warn("INDEX_GAP", f"episode indices {_ranges(present)} do not run 0..{len(present) - 1}")
    # video presence per camera
    for k in src.video_keys:
        have = [i for i in present if k in src.episodes[i]["videos"] and src.episodes[i]["videos"][k][0].exists()]
        if have and len(have) < len(present):
            rep.warn("CAMERA_PARTIAL", f"camera {k} has video for {len(have)} of {len(present)} episodes "
                                       f"(missing: {_ranges(sorted(set(present) - set(have)))}): those are skipped")
        elif not have and present:
            rep.warn("DECLARED_ABSENT", f"camera {k} is declared but no episode has its video")
    wanted = [i for i in present if episodes is None or i in set(episodes)]
    if episodes is not None:
        for i in sorted(set(episodes) - set(present)):
            rep.episodes.append(EpisodeResult(i, "skipped", reason="episode not present in the source"))
    # camera shapes from the first readable video
    shapes: dict[str, tuple[int, int, int]] = {}
    for k in src.video_keys:
        for i in present:
            v = src.episodes[i]["videos"].get(k)
            if v and v[0].exists():
                s = _probe_shape(v[0])
                if s:
                    try:
                        declared_shape = _image_shape(src.features[k])
                    except LeRobotError:
                        declared_shape = None
                    if declared_shape and declared_shape[:2] != s[:2]:
                        rep.warn("CAMERA_SHAPE", f"{k}: info.json says {declared_shape}, the video is {s}: using the video")
                    shapes[k] = s
                    break
    # spec
    if target is None:
        spec = derive_spec(src.info, name, shapes)
    else:
        spec = load_spec(target)
    mapper = _Mapper(src, spec, target, rep)
    if target is not None:
        for path, key in mapper.cam_map.items():
            shp = shapes.get(key)
            if shp is None:
                try:
                    shp = _image_shape(src.features[key])
                except LeRobotError:
                    continue
            if tuple(spec.step_leaves[path].shape) != tuple(shp):
                spec = spec.with_image_shape(path, shp)
        mapper.spec = spec
        if mapper.unit_error:
            rep.errors.append(ImportIssue("UNIT", mapper.unit_error))
            for i in wanted:
                rep.episodes.append(EpisodeResult(i, "skipped", reason=mapper.unit_error))
            return
        missing_required = [p for p in spec.image_paths if p not in mapper.cam_map and not spec.step_leaves[p].optional]
        if missing_required:
            msg = f"{spec.id} requires {missing_required} but the source has no such camera"
            rep.errors.append(ImportIssue("CAMERA_NAMES", msg))
            for i in wanted:
                rep.episodes.append(EpisodeResult(i, "skipped", reason=msg))
            return
    rep.spec_id = spec.id
    logger = EpisodeLogger(out, spec, jpeg_quality=jpeg_quality)
    base_tags = [f"origin:huggingface:{origin}", "source_split:train", f"lerobot_version:{src.version}"]
    if contributor:
        base_tags.insert(1, f"contributor:{contributor}")
    if src.info.get("robot_type"):
        base_tags.append(f"robot_type:{src.info['robot_type']}")
    base_tags += mapper.tags()
    warned_cols: set[str] = set()
    tol = 1.0 / src.fps / 2.0 + 1e-4
    for idx in wanted:
        if budget[0] is not None and budget[0] <= 0:
            break
        res = _import_episode(src, idx, spec, mapper, logger, out, name, base_tags, tol, jpeg_quality, rep, warned_cols, pa)
        rep.episodes.append(res)
        if res.status != "skipped" and budget[0] is not None:
            budget[0] -= 1
    if mapper.clipped:
        rep.warn("UNIT", f"{mapper.clipped} gripper values fell outside [0, 1] after scaling 0..100 -> 0..1: clipped")


def _import_episode(src: _Source, idx: int, spec, mapper: _Mapper, logger, out: Path, name: str, base_tags: list[str],
                    tol: float, quality: int, rep: DatasetReport, warned_cols: set, pa) -> EpisodeResult:
    rec = src.episodes[idx]
    try:
        table = src.read_episode(idx)
    except (pa.ArrowInvalid, OSError) as e:
        return EpisodeResult(idx, "skipped", reason=f"cannot read {src.rel(rec['data'])}: {type(e).__name__}: {e}")
    n = table.num_rows
    if n == 0:
        return EpisodeResult(idx, "skipped", reason="no rows for this episode in the data file")
    if rec.get("length") is not None and int(rec["length"]) != n:
        rep.warn("LENGTH_MISMATCH", f"episodes metadata says {rec['length']} rows, the data has {n}", idx)
    # columns
    for c in table.column_names:
        if c not in src.features and c not in warned_cols:
            warned_cols.add(c)
            rep.warn("UNDECLARED_COLUMN", f"column {c!r} is not declared in info.json features: ignored", idx)
    scalars: dict[str, np.ndarray] = {}
    for c in _STANDARD_COLUMNS & set(table.column_names):
        arr = _col(table, c)
        if arr.ndim == 2:
            if arr.shape[1] != 1:
                return EpisodeResult(idx, "skipped", reason=f"column {c} has {arr.shape[1]} values per row")
            arr = arr[:, 0]
            if ("scalar", c) not in warned_cols:
                warned_cols.add(("scalar", c))
                rep.warn("SCALAR_IN_LIST", f"column {c!r} stores scalars in one-element lists: unwrapped", idx)
        scalars[c] = arr
    cols: dict[str, np.ndarray] = {}
    for key, f in src.features.items():
        if key in _STANDARD_COLUMNS or f.get("dtype") in ("video", "image", "string"):
            continue
        if key not in table.column_names:
            if key == src.rldskit.start_column:  # LeRobot tools may drop it; meta/episodes may have it
                continue
            return EpisodeResult(idx, "skipped", reason=f"declared feature {key!r} is missing from {rec['data'].name}")
        arr = _col(table, key)
        shape = tuple(int(d) for d in (f.get("shape") or [1]))
        if arr.ndim == 1:
            arr = arr.reshape((n,) + shape) if math.prod(shape) == 1 else arr
        elif arr.shape[1:] != shape and arr[0].size == math.prod(shape):
            arr = arr.reshape((n,) + shape)
        cols[key] = arr
    if "timestamp" in scalars:
        ts = scalars["timestamp"].astype(np.float64)
    elif "frame_index" in scalars:
        ts = scalars["frame_index"].astype(np.float64) / src.fps
    else:
        ts = np.arange(n) / src.fps
    if n > 1 and np.any(np.diff(ts) <= 0):
        order = np.argsort(ts, kind="stable")
        if not np.array_equal(order, np.arange(n)):
            rep.warn("ROW_ORDER", "rows are not in timestamp order: sorted", idx)
            table = table.take(pa.array(order))
            ts = ts[order]
            cols = {k: v[order] for k, v in cols.items()}
            scalars = {k: v[order] for k, v in scalars.items()}
    # rldskit exports: presence masks, and timestamp offsets made absolute again
    lay = src.rldskit
    masks = {cam: np.asarray(cols.pop(k)).reshape(n).astype(bool) for k, cam in lay.masks.items() if k in cols}
    start_col = {lay.start_column: cols.pop(lay.start_column)} if lay.start_column in cols else {}
    if lay.offsets & set(cols):
        from rldskit.exporters.lerobot import decode_offsets, episode_timestamp_start

        where = src.rel(rec["data"])
        try:
            start = episode_timestamp_start(lay.mapping, start_col, {"episode_index": idx,
                                            lay.start_episodes_column: rec.get("timestamp_start")}, where)
        except ValueError as e:
            return EpisodeResult(idx, "skipped", reason=f"TIMESTAMP_START: {e}")
        if start is None:
            if "TIMESTAMP_START_MISSING" not in warned_cols:
                warned_cols.add("TIMESTAMP_START_MISSING")
                rep.warn("TIMESTAMP_START_MISSING",
                         f"{', '.join(sorted(lay.offsets & set(cols)))} hold seconds since the episode's start, but "
                         f"neither the column {lay.start_column} nor meta/episodes {lay.start_episodes_column} "
                         "gives that start (rewritten by a tool?): imported as offsets", idx)
        else:
            for k in lay.offsets & set(cols):
                cols[k] = decode_offsets(np.asarray(cols[k], np.float64).reshape(n), start).reshape(cols[k].shape)
    # task
    task = ""
    if "task_index" in scalars and len(scalars["task_index"]):
        task = src.tasks.get(int(scalars["task_index"][0]), "")
    if not task and rec.get("tasks"):
        task = str(rec["tasks"][0])
    if task.strip().lower() in JUNK_TASKS:
        rep.warn("JUNK_TASK", f"task string {task!r} is a placeholder: language_instruction left empty", idx)
        task = ""
    # image sources: spec path -> iterator of (bytes, frame_time, err) per row
    streams: dict[str, Iterator] = {}
    stats: dict[str, int] = {}
    for path, key in mapper.cam_map.items():
        f = src.features[key]
        if f.get("dtype") == "video":
            v = rec["videos"].get(key)
            if v is None or not v[0].exists():
                return EpisodeResult(idx, "skipped", reason=f"VIDEO_MISSING: no video for camera {key} "
                                                            f"({src.rel(v[0]) if v else 'not listed'})")
            try:
                import av

                with av.open(str(v[0])) as c:
                    if not c.streams.video:
                        raise ValueError("no video stream")
            except Exception as e:  # noqa: BLE001
                return EpisodeResult(idx, "skipped", reason=f"VIDEO_UNREADABLE: {src.rel(v[0])}: {type(e).__name__}: {e}")
            streams[path] = _frames_at(v[0], v[1], ts, tol, quality, stats)
        else:
            if key not in table.column_names:
                return EpisodeResult(idx, "skipped", reason=f"image column {key} is missing")
            streams[path] = _parquet_images(table.column(key).to_pylist(), src.root, quality, ts)
    ep_id = _safe(f"{name}_ep{idx:06d}")
    target_dir = out / ep_id
    if target_dir.exists():
        shutil.rmtree(target_dir)
    logger.start_episode(environment_id=name, control_role="teleop", tags=base_tags + [f"source_episode:{idx}"],
                         episode_id=ep_id, metadata=_ep_meta(spec, idx, task))
    frames = 0
    misses: dict[str, int] = {}
    steps = 0
    truncated_at: int | None = None
    try:
        for i in range(n):
            imgs: dict[str, bytes | None] = {}
            stop = False
            cam_t: dict[str, float] = {}
            for path, it in streams.items():
                try:
                    b, ft, err = next(it)
                except StopIteration:
                    b, ft, err = None, math.nan, math.inf
                if b is None:
                    stop = True
                    break
                if err > tol:
                    misses[path] = misses.get(path, 0) + 1
                mask = masks.get(mapper.cam_map.get(path))
                if mask is not None and not mask[i] and spec.step_leaves[path].optional:
                    b = None  # absent in the source: the video holds a placeholder frame
                else:
                    frames += 1
                imgs[path] = b
                cam_t[path] = ft
            if stop:
                truncated_at = i
                break
            obs, act, extras = mapper.step(cols, i, imgs, task)
            tstamps = {"control": float(ts[i])}
            tspec = spec.steps.get("timestamp", {})
            for k in tspec:
                if k == "joints":
                    tstamps[k] = float(ts[i])
                elif k.startswith("camera_"):
                    p = next((p for p in cam_t if spec.camera_name(p) == k[len("camera_"):]), None)
                    tstamps[k] = cam_t[p] if p else float(ts[i])
            logger.log_step(obs, act, reward=float(cols["next.reward"][i].reshape(-1)[0]) if "next.reward" in cols else 0.0,
                            discount=1.0, timestamps=tstamps, extras=extras)
            steps += 1
        if steps == 0:
            logger.close()
            shutil.rmtree(target_dir, ignore_errors=True)
            return EpisodeResult(idx, "skipped", reason="VIDEO_SHORT: no decodable frame for the first row: quarantined")
        path = logger.end_episode(terminal=False)
    except Exception as e:  # noqa: BLE001 - one bad episode must not stop the import
        logger.close()
        shutil.rmtree(target_dir, ignore_errors=True)
        return EpisodeResult(idx, "skipped", reason=f"{type(e).__name__}: {e}")
    finally:
        for it in streams.values():
            close = getattr(it, "close", None)
            if close:
                close()
    for p, m in misses.items():
        rep.warn("FRAME_MISSING", f"{m} rows of camera {spec.camera_name(p)} had no frame within {tol * 1000:.1f} ms: "
                                  "the nearest frame is used", idx)
    if truncated_at is not None:
        rep.warn("VIDEO_SHORT", f"video ends after {truncated_at} of {n} rows: episode truncated to the decodable frames", idx)
        return EpisodeResult(idx, "truncated", path=str(path), num_steps=steps, frames=frames,
                             reason=f"VIDEO_SHORT: truncated to {steps} of {n} rows")
    return EpisodeResult(idx, "imported", path=str(path), num_steps=steps, frames=frames)


def _ep_meta(spec, idx: int, task: str) -> dict[str, Any]:
    m: dict[str, Any] = {}
    if "task" in spec.metadata_leaves:
        m["task"] = task
    if "source_episode" in spec.metadata_leaves:
        m["source_episode"] = idx
    return m


def _parquet_images(values: list, root: Path, quality: int, ts: np.ndarray) -> Iterator[tuple[bytes | None, float, float]]:
    from rldskit import images

    for v, t in zip(values, ts):
        data = None
        if isinstance(v, dict):
            data = v.get("bytes")
            if data is None and v.get("path"):
                p = root / v["path"]
                data = p.read_bytes() if p.exists() else None
        elif isinstance(v, (bytes, bytearray)):
            data = bytes(v)
        if data is None:
            yield None, math.nan, math.inf
            continue
        if data[:2] == b"\xff\xd8":
            yield data, float(t), 0.0
            continue
        yield _jpeg(images.decode(data, 3), quality), float(t), 0.0


def _ranges(xs: Sequence[int]) -> str:
    out, start, prev = [], None, None
    for x in xs:
        if start is None:
            start = prev = x
        elif x == prev + 1:
            prev = x
        else:
            out.append(f"{start}-{prev}" if start != prev else str(start))
            start = prev = x
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else str(start))
    return ",".join(out)


# --------------------------------------------------------------------------- entry point


def _scrub(text: str | None, pairs: list[tuple[Path, str]]) -> str | None:
    """``text`` with each local path (as given, absolute and resolved) replaced by its recorded name
    (library messages, e.g. PyAV's or pyarrow's, name the files they failed on)."""
    if not text:
        return text
    subs = {}
    for p, name in pairs:
        for variant in {str(p), str(Path(p).absolute()), os.path.realpath(p)}:
            if variant not in ("", ".", "/"):
                subs.setdefault(variant, name)
    for old in sorted(subs, key=len, reverse=True):
        text = text.replace(old, subs[old])
    return text


def _scrub_report(rep: DatasetReport, pairs: list[tuple[Path, str]]) -> None:
    for issue in rep.warnings + rep.errors:
        issue.message = _scrub(issue.message, pairs)
    for e in rep.episodes:
        e.reason = _scrub(e.reason, pairs)


def _is_dataset(p: Path) -> bool:
    return (p / "meta" / "info.json").is_file()


def _hub_download(repo_id: str, episodes: Sequence[int] | None, max_episodes: int | None) -> Path:
    from huggingface_hub import snapshot_download

    root = Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=["meta/*", "meta/**"]))
    info = json.loads((root / "meta" / "info.json").read_text())
    if str(info.get("codebase_version", "")).startswith("v3"):
        patterns = ["data/**", "videos/**"]  # files hold many episodes; the episodes table says which
        if episodes is not None or max_episodes is not None:
            import pyarrow.parquet as pq

            want = set(episodes) if episodes is not None else None
            rows = [r for f in sorted((root / "meta" / "episodes").glob("**/*.parquet")) for r in pq.read_table(f).to_pylist()]
            rows = [r for r in rows if want is None or int(r["episode_index"]) in want][: max_episodes or None]
            pats = set()
            for r in rows:
                pats.add(info["data_path"].format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"]))
                for k, f in info.get("features", {}).items():
                    if f.get("dtype") == "video" and r.get(f"videos/{k}/chunk_index") is not None:
                        pats.add(info["video_path"].format(video_key=k, chunk_index=r[f"videos/{k}/chunk_index"],
                                                           file_index=r[f"videos/{k}/file_index"]))
            patterns = sorted(pats)
    else:
        idxs = [int(r["episode_index"]) for r in _jsonl(root / "meta" / "episodes.jsonl")]
        if episodes is not None:
            idxs = [i for i in idxs if i in set(episodes)]
        if max_episodes is not None:
            idxs = idxs[:max_episodes]
        chunks = int(info.get("chunks_size") or 1000)
        patterns = []
        for i in idxs:
            fmt = {"episode_chunk": i // chunks, "episode_index": i}
            patterns.append(info["data_path"].format(**fmt))
            for k, f in info.get("features", {}).items():
                if f.get("dtype") == "video" and info.get("video_path"):
                    patterns.append(info["video_path"].format(video_key=k, **fmt))
    return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=["meta/*", "meta/**", *patterns]))


def import_lerobot(source: str | Path, out: str | Path, *, target: str | None = None, max_episodes: int | None = None,
                   episodes: Sequence[int] | None = None, contributors: Sequence[str] | None = None,
                   jpeg_quality: int = 90) -> ImportReport:
    """Import a LeRobot dataset (folder, Hub repo id, or monorepo folder) into capture folders
    under ``out``. Returns the :class:`ImportReport` (also written to ``out/import_report.json``).
    Raises :class:`LeRobotError` when the source is not a LeRobot dataset at all."""
    import time

    t0 = time.perf_counter()
    out = Path(out)
    src = Path(source)
    origin = src.name or src.absolute().resolve().name
    given = [src]  # local paths of the source, replaced by their recorded names in every message
    if not src.exists():
        s = str(source)
        if re.match(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$", s) and not s.startswith((".", "/")):
            try:
                src = _hub_download(s, episodes, max_episodes)
            except Exception as e:  # noqa: BLE001 - offline, unknown repo, auth: one clear error
                raise LeRobotError(f"{source}: no such folder, and the Hub download failed: {type(e).__name__}: {e}") from e
            origin = s
            given = [src]
        else:
            raise LeRobotError(f"{source}: no such folder (and not a Hub repo id)")
    report = ImportReport(source=origin, out=str(out), target=target)
    budget: list[int | None] = [max_episodes]
    if _is_dataset(src):
        jobs = [(src, out, src.name, None)]
    elif (src / "meta").is_dir():
        raise LeRobotError(f"{src}/meta has no info.json: not a LeRobot dataset")
    else:
        jobs = []
        for info in sorted(src.glob("*/*/meta/info.json")) + sorted(src.glob("*/meta/info.json")):
            ds = info.parent.parent
            rel = ds.relative_to(src)
            contributor = rel.parts[0] if len(rel.parts) == 2 else None
            if contributors is not None and (contributor or rel.parts[0]) not in set(contributors):
                continue
            jobs.append((ds, out.joinpath(*rel.parts), ds.name, contributor))
        if not jobs:
            raise LeRobotError(f"{src}: no meta/ folder (and no <contributor>/<dataset>/meta/info.json below): "
                               "not a LeRobot dataset or monorepo")
    out.mkdir(parents=True, exist_ok=True)
    for ds, ds_out, name, contributor in jobs:
        if budget[0] is not None and budget[0] <= 0:
            break
        ds_origin = origin if len(jobs) == 1 and ds == src else f"{origin}/{ds.relative_to(src).as_posix()}"
        rep = DatasetReport(name=name, source=ds_origin, out=str(ds_out), contributor=contributor)
        report.datasets.append(rep)
        try:
            rep.sha256 = meta_digest(ds)
        except OSError:
            rep.sha256 = None
        try:
            _import_dataset(ds, ds_out, name, ds_origin, rep, target=target, budget=budget, episodes=episodes,
                            jpeg_quality=jpeg_quality, contributor=contributor)
        except LeRobotError as e:
            rep.errors.append(ImportIssue("SOURCE", str(e)))
        except (OSError, ValueError, KeyError) as e:
            rep.errors.append(ImportIssue("SOURCE", f"{type(e).__name__}: {e}"))
        _scrub_report(rep, [(ds, ds_origin)] + [(g, origin) for g in given])
    report.seconds = time.perf_counter() - t0
    report.write(out / "import_report.json")
    return report


# --------------------------------------------------------------------------- CLI


def add_import_parser(import_subparsers) -> Any:
    """Add ``lerobot SOURCE --out DIR [--target SPEC] [--max-episodes N] [--contributors a,b]``."""
    p = import_subparsers.add_parser("lerobot", help="import a Hugging Face LeRobot dataset (v2.x, v3.0, monorepo)")
    p.add_argument("source", help="local folder or Hub dataset repo id")
    p.add_argument("--out", required=True, help="output folder (capture layout)")
    p.add_argument("--target", default=None, help="target spec (e.g. so100_arm.v1); default: derived from info.json")
    p.add_argument("--max-episodes", type=int, default=None)
    p.add_argument("--episodes", default=None, help="comma-separated episode indices")
    p.add_argument("--contributors", default=None, help="monorepo: comma-separated contributor names")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.set_defaults(func=_cli_handler)
    return p


def _cli_handler(args) -> int:
    import sys

    try:
        eps = [int(x) for x in args.episodes.split(",")] if args.episodes else None
        contribs = [c for c in args.contributors.split(",") if c] if args.contributors else None
        rep = import_lerobot(args.source, args.out, target=args.target, max_episodes=args.max_episodes,
                             episodes=eps, contributors=contribs, jpeg_quality=args.jpeg_quality)
    except (LeRobotError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = rep.to_dict()["summary"]
    print(f"imported {s['imported']} episodes ({s['frames']} frames), skipped {s['skipped']}; "
          f"warnings: {', '.join(s['warnings']) or 'none'}; report: {Path(args.out) / 'import_report.json'}")
    for d in rep.datasets:
        for e in d.errors:
            print(f"error: {d.name}: {e.code}: {e.message}", file=sys.stderr)
        for e in d.episodes:
            if e.status != "imported":
                print(f"{d.name} episode {e.source_episode}: {e.status}: {e.reason}", file=sys.stderr)
    if any(d.errors for d in rep.datasets) and not rep.imported:
        return 2
    return 0 if rep.ok else 1
