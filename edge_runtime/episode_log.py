"""Episode logging on the robot in the capture layout ("rldskit.capture/1"), standard library and
numpy only; plus a minimal reader of that layout (for replay).

The layout, its writer, chunk reading and recovery live in :mod:`edge_runtime.capture_layout` (the
one implementation, which :mod:`rldskit.formats.capture_dir` builds on too); this module adds the
robot's step policy: frames from bytes or arrays, timestamps from a clock, reserved keys::

    <root>/schema.json                   the spec, when one was given (the folder describes itself)
    <root>/<episode>/metadata.json       "status": "recording" until ended, then "complete" + "end"
    <root>/<episode>/steps/000000.jsonl  one JSON object per line, one line per step; a new chunk
                                         every ``chunk_steps`` steps (named by its first step)
    <root>/<episode>/frames/<camera>/000000.jpg   one encoded frame per step and camera

A step line nests like the spec's step tree: ``{"observation": {"image":
"frames/image/000000.jpg"}, "action": [0.1, 0.3], "reward": 0.0, "discount": 1.0,
"timestamp": {"control": 12.5, "camera": 12.498}, "control_mode": "pilot", "policy_action": [...]}``.

Crash safety is the layout writer's (:class:`~edge_runtime.capture_layout.EpisodeDirWriter`, the
one rldskit's logger uses too): ``metadata.json`` (status ``recording``) is written atomically
before ``steps/`` exists; frames are written temp-then-rename *before* the
line naming them; each line is one ``write(2)`` on an ``O_APPEND`` descriptor; the final
metadata replaces the old one atomically. A ``kill -9`` loses at most the step in flight, and
``rldskit recover`` / ``read_episode(..., recover=True)`` salvage the rest.

Frames: JPEG or PNG bytes are written as given (extension ``.jpg``/``.png`` from the bytes'
signature); ``uint8`` arrays ``(H, W)`` or ``(H, W, 1..4)`` are PNG-encoded here with ``zlib``
(no Pillow on the robot), so a JPEG schema then gets PNG frames, which rldskit reports as a
warning (IMAGE_ENCODING), not an error. Chunks are never compressed here (no zstd on the robot).

Reading (:func:`read_capture_episode`): ``metadata.json`` plus the ``steps/*.jsonl`` chunks
(a ``.zst`` chunk needs the optional ``zstandard`` package and raises a clear error without
it; a chunk present in both forms is chosen as rldskit's reader chooses it), stopping at the
first torn or corrupt line. Frames and the PNG codec are :mod:`edge_runtime.frames` (re-exported
here): :func:`decode_frame` decodes PNG (8-bit, non-interlaced) and ``.npy`` natively; JPEG only
when Pillow happens to be importable (an optional, lazily imported dependency: the robot image
need not have it).
"""

from __future__ import annotations

import binascii
import dataclasses
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic_io import atomic_write
from .capture_layout import (FORMAT, METADATA_FILE, SCHEMA_FILE, STEPS_DIR, EpisodeDirWriter, ZstdUnavailable,
                             check_episode_id, chunk_bytes, finished_metadata, inline_frame_bytes, list_chunks,
                             new_episode_id, recording_metadata, resolve_frame_path, step_records)
from .frames import FrameDecodeError, decode_frame, decode_png, encode_png, frame_extension, frame_kind

__all__ = ["EpisodeLog", "CaptureEpisode", "CaptureReadError", "FrameDecodeError", "read_capture_episode",
           "encode_png", "decode_png", "decode_frame", "frame_kind", "FORMAT"]

_RESERVED_STEP = {"observation", "action", "reward", "discount", "timestamp", "is_first", "is_last", "is_terminal"}
_RESERVED_META = {"format", "schema", "status", "end", "episode_id"}


class CaptureReadError(ValueError):
    """An episode folder that cannot be read; the message names the file."""


# =========================================================================== small I/O helpers


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    *parents, name = path.split("/")
    node = tree
    for p in parents:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ValueError(f"{path}: {p} is a value, not a group")
        node = nxt
    node[name] = value


def _get_path(tree: Any, path: str) -> Any:
    node = tree
    for p in path.split("/"):
        if not isinstance(node, Mapping) or p not in node:
            return None
        node = node[p]
    return node


# =========================================================================== frames


def _frame_bytes(path: str, value: Any, level: int) -> tuple[bytes, str]:
    """An observation frame -> ``(bytes, extension)``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        kind = frame_kind(b)
        if kind not in ("jpeg", "png"):
            raise ValueError(f"{path}: frame bytes are neither JPEG nor PNG (start with {b[:8]!r})")
        return b, frame_extension(kind)
    arr = np.asarray(value)
    if arr.dtype != np.uint8:
        raise ValueError(f"{path}: expected JPEG/PNG bytes or a uint8 array, got {arr.dtype} {list(arr.shape)}")
    try:
        return encode_png(arr, level), ".png"
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# =========================================================================== writer


def _load_schema(schema: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    if isinstance(schema, Mapping):
        return dict(schema)
    p = Path(schema)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: not a readable schema: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{p}: a schema is a JSON object")
    return obj


class EpisodeLog:
    """Writes episodes for spec ``spec_id`` (``name.vN``) under ``root``, one open at a time.

    ``camera_paths``: the step paths that hold frames (``["observation/image"]``); a frame goes
    to ``frames/<last path component>/``. ``schema``: the spec JSON (a dict or a file, e.g. the
    copy a bundle ships); when given it is copied to ``root/schema.json``, its version is
    recorded and its timestamp streams are known. ``schema_version``: the recorded version when
    no schema is given (default: the major from ``spec_id``; rldskit then warns of a minor
    mismatch). ``timestamp_streams``: streams filled with ``clock()`` when a step does not give
    them. ``durability``: ``"step"`` (fsync every frame and line), ``"chunk"`` (default, fsync
    when a chunk closes and at the end) or ``"none"`` (still ``kill -9`` safe)."""

    def __init__(self, root: str | os.PathLike, spec_id: str, camera_paths: Sequence[str], *,
                 schema: Mapping[str, Any] | str | os.PathLike | None = None, schema_version: str | None = None,
                 timestamp_streams: Sequence[str] | None = None, chunk_steps: int = 1000, durability: str = "chunk",
                 png_level: int = 1, clock=time.time):
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\.v(\d+)", spec_id)
        if not m:
            raise ValueError(f"spec_id {spec_id!r} must look like name.v1")
        if durability not in ("step", "chunk", "none"):
            raise ValueError(f"durability must be 'step', 'chunk' or 'none', got {durability!r}")
        if chunk_steps < 1:
            raise ValueError("chunk_steps must be >= 1")
        self.root = Path(root)
        self.spec_id = spec_id
        self.name, major = m.group(1), m.group(2)
        self.version = schema_version or major
        self.camera_paths = [str(p) for p in camera_paths]
        cams = [p.rsplit("/", 1)[-1] for p in self.camera_paths]
        if len(set(cams)) != len(cams):
            raise ValueError(f"camera names (last path components) must be unique, got {cams}")
        self._cameras = dict(zip(self.camera_paths, cams))
        self.chunk_steps = chunk_steps
        self.durability = durability
        self.png_level = png_level
        self.clock = clock
        self.timestamp_streams = list(timestamp_streams) if timestamp_streams is not None else None
        self.root.mkdir(parents=True, exist_ok=True)
        if schema is not None:
            spec = _load_schema(schema)
            ver = str(spec.get("version", ""))
            if spec.get("name") != self.name or ver.split(".")[0] != major:
                raise ValueError(f"schema is {spec.get('name')} {ver}, not {spec_id}")
            self.version = ver
            if self.timestamp_streams is None and isinstance(spec.get("steps", {}).get("timestamp"), Mapping):
                self.timestamp_streams = list(spec["steps"]["timestamp"])
            f = self.root / SCHEMA_FILE
            if f.exists():
                try:
                    old = json.loads(f.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    old = {}
                if not isinstance(old, dict) or old.get("name") != self.name or str(old.get("version")) != ver:
                    raise ValueError(f"{f} describes another schema ({old.get('name') if isinstance(old, dict) else '?'} "
                                     f"{old.get('version') if isinstance(old, dict) else '?'}): record different schemas "
                                     "into different folders")
            else:
                atomic_write(f, json.dumps(spec, indent=1, ensure_ascii=False).encode(), mode=None,
                             durable=durability != "none")
        self._meta: dict[str, Any] = {}
        self._writer: EpisodeDirWriter | None = None
        self.num_steps = 0

    # ---- state
    @property
    def recording(self) -> bool:
        """Whether an episode is open."""
        return self._writer is not None

    @property
    def episode_path(self) -> Path | None:
        """The open episode's folder (``None`` between episodes)."""
        return self._writer.path if self._writer is not None else None

    @property
    def episode_id(self) -> str | None:
        """The open episode's id (``None`` between episodes)."""
        return self._meta.get("episode_id") if self._writer is not None else None

    # ---- episode
    def start_episode(self, metadata: Mapping[str, Any] | None = None, *, episode_id: str | None = None) -> str:
        """Create the episode folder with ``metadata.json`` (status ``recording``); returns its
        id (default: UTC time plus a random suffix). ``metadata`` may set ``environment_id``,
        ``xr_mode``, ``control_role``, ``tags``, ``start_time`` and the spec's own fields."""
        if self._writer is not None:
            raise RuntimeError(f"episode {self._meta['episode_id']} is still open: call end_episode first")
        extra = dict(metadata or {})
        bad = set(extra) & _RESERVED_META
        if bad:
            raise ValueError(f"episode metadata keys {sorted(bad)} are written by the logger")
        now = float(self.clock())
        if episode_id is None:
            episode_id = new_episode_id(now)
        check_episode_id(episode_id)
        meta = recording_metadata(self.name, self.version, episode_id, now)
        meta.update(extra)
        meta["tags"] = [str(t) for t in meta.get("tags") or []]
        for k in ("environment_id", "xr_mode", "control_role"):
            meta[k] = str(meta[k])
        # metadata.json before steps/ (the layout writer's rule)
        self._writer = EpisodeDirWriter(self.root / episode_id, chunk_steps=self.chunk_steps,
                                        durability=self.durability, metadata=meta)
        self._meta = meta
        self.num_steps = 0
        return episode_id

    def log_step(self, observation: Mapping[str, Any], action: Any, reward: float = 0.0, discount: float = 1.0,
                 timestamps: Mapping[str, float] | None = None, extras: Mapping[str, Any] | None = None) -> int:
        """Append one step; returns its index. ``observation`` maps paths (``"observation/image"``
        or ``"image"``, nested with ``/``) to values; at camera paths a frame: JPEG/PNG bytes as
        given, a ``uint8`` array (PNG-encoded here) or ``None`` (absent). ``action``: an array or
        a ``{name: array}`` tree. ``timestamps``: ``{stream: seconds}`` (declared streams not
        given get ``clock()``). ``extras``: other top-level step features (``control_mode``,
        ``policy_action``, ...)."""
        w = self._writer
        if w is None:
            raise RuntimeError("no episode is open: call start_episode first")
        i = w.num_steps
        obs_tree: dict[str, Any] = {}
        for k, v in (observation or {}).items():
            full = k if k.startswith("observation/") else f"observation/{k}"
            _set_path(obs_tree, full, v)
        line: dict[str, Any] = {"observation": obs_tree.get("observation", {})}
        line["action"] = _plain(action, "action", i)
        line["reward"] = float(reward)
        line["discount"] = float(discount)
        ts = {str(k): float(v) for k, v in (timestamps or {}).items()}
        if self.timestamp_streams is not None:
            unknown = set(ts) - set(self.timestamp_streams)
            if unknown:
                raise ValueError(f"step {i}: timestamp streams {sorted(unknown)} are not declared "
                                 f"(known: {self.timestamp_streams})")
            missing = [s for s in self.timestamp_streams if s not in ts]
            if missing:
                now = float(self.clock())
                for s in missing:
                    ts[s] = now
            ts = {s: ts[s] for s in self.timestamp_streams}
        if ts or self.timestamp_streams:
            line["timestamp"] = ts
        for k, v in (extras or {}).items():
            if k.split("/")[0] in _RESERVED_STEP:
                raise ValueError(f"step {i}: extras key {k!r} is reserved")
            _set_path(line, k, _plain(v, k, i))
        # frames first (temp-then-rename), then the line that names them
        for cam_path, cam in self._cameras.items():
            v = _get_path(line, cam_path)
            if v is None:
                if _get_path(line, cam_path.rsplit("/", 1)[0]) is not None:
                    _set_path(line, cam_path, None)
                continue
            data, ext = _frame_bytes(cam_path, v, self.png_level)
            _set_path(line, cam_path, w.write_frame(cam, data, ext))
        w.append_step(line)  # one write(2) on an O_APPEND descriptor; rotates chunks
        self.num_steps = w.num_steps
        return i

    def end_episode(self, terminal: bool, *, metadata: Mapping[str, Any] | None = None) -> Path:
        """Finish the episode: ``terminal=True`` when it ended in a terminal state (goal,
        crash), False when cut short. Writes the end record and status ``complete``; returns
        the folder."""
        w = self._writer
        if w is None:
            raise RuntimeError("no episode is open")
        if not isinstance(terminal, bool):
            raise TypeError("terminal must be True or False (termination vs truncation is never guessed)")
        if w.num_steps == 0:
            raise ValueError("an episode needs at least one step")
        extra = dict(metadata or {})
        bad = set(extra) & _RESERVED_META
        if bad:
            raise ValueError(f"episode metadata keys {sorted(bad)} are written by the logger")
        meta = finished_metadata(dict(self._meta, **extra), num_steps=w.num_steps, terminal=terminal,
                                 end_time=self.clock())
        w.close(meta)  # closes the last chunk, fsyncs the folders, then the final metadata
        self._writer = None
        self._meta = {}
        return w.path

    def close(self) -> None:
        """Release the open episode without ending it (it stays ``recording``, recoverable)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def __enter__(self) -> EpisodeLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _plain(v: Any, where: str, i: int) -> Any:
    """A step value as JSON-ready data (numbers, lists, dicts, strings, None)."""
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    if isinstance(v, Mapping):
        return {str(k): _plain(x, f"{where}/{k}", i) for k, x in v.items()}
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return list(v)
    arr = np.asarray(v)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ValueError(f"step {i}: {where}: cannot log a {type(v).__name__} of dtype {arr.dtype}")
    return arr.tolist()


# =========================================================================== reader


@dataclasses.dataclass
class CaptureEpisode:
    """An episode folder as read by :func:`read_capture_episode`. ``steps`` are the parsed step
    lines; ``problems`` says where reading stopped early (torn line, gap), if it did."""

    path: Path
    metadata: dict[str, Any]
    steps: list[dict[str, Any]]
    problems: list[str]

    @property
    def status(self) -> str:
        return str(self.metadata.get("status", "complete"))

    @property
    def terminal(self) -> bool:
        end = self.metadata.get("end")
        return bool(end.get("terminal")) if self.status == "complete" and isinstance(end, dict) else False

    def __len__(self) -> int:
        return len(self.steps)

    def frame_bytes(self, i: int, path: str) -> bytes | None:
        """The encoded frame of step ``i`` at ``path`` (``"observation/image"``), or ``None``."""
        v = _get_path(self.steps[i], path)
        if v is None:
            return None
        try:
            inline = inline_frame_bytes(v)
        except (binascii.Error, ValueError):
            raise CaptureReadError(f"{self.path}: step {i} {path}: bad base64 frame") from None
        if inline is not None:
            return inline
        if not isinstance(v, str) or os.path.isabs(v):
            raise CaptureReadError(f"{self.path}: step {i} {path}: expected a frame path, got {v!r:.60}")
        f = resolve_frame_path(self.path, v)
        if f is None:
            raise CaptureReadError(f"{self.path}: step {i} {path}: frame path {v!r} leaves the episode folder")
        try:
            return f.read_bytes()
        except OSError as e:
            raise CaptureReadError(f"{self.path}: step {i} {path}: cannot read frame {v}: {e}") from None

    def frame(self, i: int, path: str) -> np.ndarray | None:
        """The decoded frame ``uint8 (H, W, C)`` (see :func:`decode_frame`), or ``None``."""
        data = self.frame_bytes(i, path)
        if data is None:
            return None
        try:
            return decode_frame(data)
        except FrameDecodeError as e:
            raise FrameDecodeError(f"{self.path}: step {i} {path}: {e}") from None


def _chunk_text(f: Path) -> bytes:
    try:
        return chunk_bytes(f)
    except ZstdUnavailable as e:
        raise CaptureReadError(str(e)) from None
    except ValueError as e:  # a truncated zstd stream
        raise CaptureReadError(f"{f}: {e}") from None


def read_capture_episode(path: str | os.PathLike) -> CaptureEpisode:
    """Read an episode folder of the capture layout: its metadata and every complete step up to
    the first torn/corrupt line or missing chunk (noted in ``problems``). An unfinished
    (``recording``) episode is read as far as it goes."""
    p = Path(path)
    mf = p / METADATA_FILE
    try:
        meta = json.loads(mf.read_bytes())
    except (OSError, ValueError) as e:
        raise CaptureReadError(f"{mf}: not a readable episode metadata file: {e}") from None
    if not isinstance(meta, dict):
        raise CaptureReadError(f"{mf}: expected a JSON object")
    if meta.get("format", FORMAT) != FORMAT:
        raise CaptureReadError(f"{mf}: format {meta.get('format')!r} is not {FORMAT}")
    try:
        chunks = list_chunks(p / STEPS_DIR)  # a chunk in both forms: the twin rldskit's reader picks
    except OSError as e:
        raise CaptureReadError(f"{p / STEPS_DIR}: cannot list: {e}") from None
    steps: list[dict[str, Any]] = []
    problems: list[str] = []
    for first, f in chunks:
        if first != len(steps):
            problems.append(f"{STEPS_DIR}/{f.name} starts at step {first}, expected {len(steps)}: stopped there")
            break
        records, whole = step_records(_chunk_text(f))
        steps.extend(records)
        if not whole:
            problems.append(f"{STEPS_DIR}/{f.name} line {len(records) + 1} is torn or not a step: stopped there")
            break
    return CaptureEpisode(p, meta, steps, problems)
