"""Episode logging on the robot in rldskit's capture layout ("rldskit.capture/1"), standard
library and numpy only; plus a minimal reader of that layout (for replay) and PNG coding.

The layout (the same as :mod:`rldskit.formats.capture_dir`, which reads what this writes)::

    <root>/schema.json                   the spec, when one was given (the folder describes itself)
    <root>/<episode>/metadata.json       "status": "recording" until ended, then "complete" + "end"
    <root>/<episode>/steps/000000.jsonl  one JSON object per line, one line per step; a new chunk
                                         every ``chunk_steps`` steps (named by its first step)
    <root>/<episode>/frames/<camera>/000000.jpg   one encoded frame per step and camera

A step line nests like the spec's step tree: ``{"observation": {"image":
"frames/image/000000.jpg"}, "action": [0.1, 0.3], "reward": 0.0, "discount": 1.0,
"timestamp": {"control": 12.5, "camera": 12.498}, "control_mode": "pilot", "policy_action": [...]}``.

Crash safety follows rldskit's writer exactly: ``metadata.json`` (status ``recording``) is
written atomically before ``steps/`` exists; frames are written temp-then-rename *before* the
line naming them; each line is one ``write(2)`` on an ``O_APPEND`` descriptor; the final
metadata replaces the old one atomically. A ``kill -9`` loses at most the step in flight, and
``rldskit recover`` / ``read_episode(..., recover=True)`` salvage the rest.

Frames: JPEG or PNG bytes are written as given (extension ``.jpg``/``.png`` from the bytes'
signature); ``uint8`` arrays ``(H, W)`` or ``(H, W, 1..4)`` are PNG-encoded here with ``zlib``
(no Pillow on the robot), so a JPEG schema then gets PNG frames, which rldskit reports as a
warning (IMAGE_ENCODING), not an error. Chunks are never compressed here (no zstd on the robot).

Reading (:func:`read_capture_episode`): ``metadata.json`` plus plain ``steps/*.jsonl`` chunks
(a ``.zst`` chunk needs the optional ``zstandard`` package and raises a clear error without
it), stopping at the first torn or corrupt line. :func:`decode_frame` decodes PNG (8-bit,
non-interlaced) and ``.npy`` natively; JPEG only when Pillow happens to be importable (an
optional, lazily imported dependency: the robot image need not have it).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import os
import re
import struct
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic_io import atomic_write, fsync_dir, write_all

__all__ = ["EpisodeLog", "CaptureEpisode", "CaptureReadError", "FrameDecodeError", "read_capture_episode",
           "encode_png", "decode_png", "decode_frame", "frame_kind", "FORMAT"]

FORMAT = "rldskit.capture/1"
_RESERVED_STEP = {"observation", "action", "reward", "discount", "timestamp", "is_first", "is_last", "is_terminal"}
_RESERVED_META = {"format", "schema", "status", "end", "episode_id"}
_CHUNK_RE = re.compile(r"^(\d{6,})\.jsonl(\.zst)?$")
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_NPY_SIG = b"\x93NUMPY"


class FrameDecodeError(ValueError):
    """A frame that cannot be decoded here (unsupported format, or JPEG without Pillow)."""


class CaptureReadError(ValueError):
    """An episode folder that cannot be read; the message names the file."""


# =========================================================================== small I/O helpers


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(o)).decode("ascii")}
    raise TypeError(f"cannot write a {type(o).__name__} into a step line")


_ENCODER = json.JSONEncoder(default=_json_default, ensure_ascii=False, separators=(",", ":"))


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


# =========================================================================== PNG / frames


def frame_kind(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"``, ``"npy"`` or ``None`` from the bytes' signature."""
    if data[:2] == b"\xff\xd8":
        return "jpeg"
    if data[:8] == _PNG_SIG:
        return "png"
    if data[:6] == _NPY_SIG:
        return "npy"
    return None


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)
_CHANNELS = {v: k for k, v in _COLOR_TYPES.items()}


def encode_png(frame: np.ndarray, level: int = 1) -> bytes:
    """``uint8 (H, W)`` or ``(H, W, C)`` with C in 1..4 -> PNG bytes (filter 0, zlib ``level``)."""
    a = np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in _COLOR_TYPES) or 0 in a.shape:
        raise ValueError(f"encode_png: expected uint8 (H, W) or (H, W, 1..4), got {a.dtype} {list(a.shape)}")
    if a.ndim == 2:
        a = a[:, :, None]
    h, w, c = a.shape
    raw = np.empty((h, 1 + w * c), np.uint8)
    raw[:, 0] = 0
    raw[:, 1:] = a.reshape(h, w * c)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, _COLOR_TYPES[c], 0, 0, 0)
    return _PNG_SIG + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + _chunk(b"IEND", b"")


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> ``uint8 (H, W, C)``. 8-bit grey/RGB/grey+alpha/RGBA, not interlaced, any
    filter. Raises :class:`FrameDecodeError` on anything else or on damage."""
    if data[:8] != _PNG_SIG:
        raise FrameDecodeError("not a PNG (bad signature)")
    pos, idat, hdr = 8, [], None
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if len(body) != n or pos + 12 + n > len(data):
            raise FrameDecodeError(f"PNG chunk {kind!r} is truncated")
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            raise FrameDecodeError(f"PNG chunk {kind!r} fails its CRC")
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + n
    if hdr is None or not idat:
        raise FrameDecodeError("PNG without IHDR or IDAT")
    w, h, depth, ctype, _comp, _filt, interlace = hdr
    if depth != 8 or ctype not in _CHANNELS or interlace:
        raise FrameDecodeError(f"PNG with bit depth {depth}, colour type {ctype}, interlace {interlace} is not supported "
                               "(8-bit grey/RGB/grey+alpha/RGBA, not interlaced)")
    c = _CHANNELS[ctype]
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise FrameDecodeError(f"PNG image data is damaged: {e}") from None
    stride = w * c
    if len(raw) != h * (stride + 1):
        raise FrameDecodeError(f"PNG image data holds {len(raw)} bytes; expected {h * (stride + 1)}")
    rows = np.frombuffer(raw, np.uint8).reshape(h, stride + 1)
    filters = rows[:, 0]
    px = rows[:, 1:]
    if not filters.any():
        return px.reshape(h, w, c).copy()
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.uint8)
    for y in range(h):
        f, line = int(filters[y]), px[y]
        if f == 0:
            cur = line.copy()
        elif f == 1:  # Sub: a running sum per channel, mod 256
            cur = np.cumsum(line.reshape(w, c), axis=0, dtype=np.uint64).astype(np.uint8).reshape(-1)
        elif f == 2:  # Up
            cur = line + prev
        elif f in (3, 4):  # Average / Paeth: sequential along the row
            cur = line.astype(np.int32)
            up = prev.astype(np.int32)
            for x in range(stride):
                left = int(cur[x - c]) if x >= c else 0
                if f == 3:
                    cur[x] = (cur[x] + ((left + int(up[x])) >> 1)) & 0xFF
                else:
                    ul = int(up[x - c]) if x >= c else 0
                    p = left + int(up[x]) - ul
                    pa, pb, pc = abs(p - left), abs(p - int(up[x])), abs(p - ul)
                    pred = left if pa <= pb and pa <= pc else int(up[x]) if pb <= pc else ul
                    cur[x] = (cur[x] + pred) & 0xFF
            cur = cur.astype(np.uint8)
        else:
            raise FrameDecodeError(f"PNG row {y} has unknown filter type {f}")
        out[y] = cur
        prev = out[y]
    return out.reshape(h, w, c)


def decode_frame(data: bytes | str | os.PathLike) -> np.ndarray:
    """Frame bytes (or a file) -> ``uint8 (H, W, C)``. PNG and ``.npy`` natively; JPEG only
    when Pillow is importable (optional: imported lazily, never required)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        p = Path(data)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise FrameDecodeError(f"{p}: cannot read frame: {e}") from None
    data = bytes(data)
    kind = frame_kind(data)
    if kind == "png":
        return decode_png(data)
    if kind == "npy":
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise FrameDecodeError(f"damaged .npy frame: {e}") from None
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise FrameDecodeError(f".npy frame has shape {list(arr.shape)}; expected (H, W[, C])")
        return np.asarray(arr, dtype=np.uint8)
    if kind == "jpeg":
        try:
            from PIL import Image  # optional: present on a development machine, not needed on the robot
        except ImportError:
            raise FrameDecodeError("this frame is JPEG, and decoding JPEG needs Pillow, which is not installed here "
                                   "(record PNG frames for replay on the robot, or pip install pillow)") from None
        try:
            with Image.open(io.BytesIO(data)) as img:
                arr = np.asarray(img)
        except Exception as e:  # noqa: BLE001 - Pillow raises many types on bad data
            raise FrameDecodeError(f"cannot decode JPEG: {type(e).__name__}: {e}") from None
        return arr[:, :, None] if arr.ndim == 2 else arr
    raise FrameDecodeError(f"unknown frame encoding (starts with {data[:8]!r}); expected PNG, JPEG or .npy")


def _frame_bytes(path: str, value: Any, level: int) -> tuple[bytes, str]:
    """An observation frame -> ``(bytes, extension)``."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        kind = frame_kind(b)
        if kind not in ("jpeg", "png"):
            raise ValueError(f"{path}: frame bytes are neither JPEG nor PNG (start with {b[:8]!r})")
        return b, ".jpg" if kind == "jpeg" else ".png"
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
            f = self.root / "schema.json"
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
                atomic_write(f, json.dumps(spec, indent=1, ensure_ascii=False).encode(), durable=durability != "none")
        self._meta: dict[str, Any] = {}
        self._path: Path | None = None
        self._fd: int | None = None
        self._chunk_first = 0
        self._frame_dirs: set[str] = set()
        self.num_steps = 0

    # ---- state
    @property
    def recording(self) -> bool:
        return self._path is not None

    @property
    def episode_path(self) -> Path | None:
        return self._path

    @property
    def episode_id(self) -> str | None:
        return self._meta.get("episode_id") if self._path else None

    # ---- episode
    def start_episode(self, metadata: Mapping[str, Any] | None = None, *, episode_id: str | None = None) -> str:
        """Create the episode folder with ``metadata.json`` (status ``recording``); returns its
        id (default: UTC time plus a random suffix). ``metadata`` may set ``environment_id``,
        ``xr_mode``, ``control_role``, ``tags``, ``start_time`` and the spec's own fields."""
        if self._path is not None:
            raise RuntimeError(f"episode {self._meta['episode_id']} is still open: call end_episode first")
        extra = dict(metadata or {})
        bad = set(extra) & _RESERVED_META
        if bad:
            raise ValueError(f"episode metadata keys {sorted(bad)} are written by the logger")
        now = float(self.clock())
        if episode_id is None:
            episode_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + "_" + uuid.uuid4().hex[:8]
        if not episode_id or "/" in episode_id or os.sep in episode_id or episode_id.startswith("."):
            raise ValueError(f"episode_id {episode_id!r} must be a plain folder name")
        meta: dict[str, Any] = {
            "format": FORMAT,
            "schema": {"name": self.name, "version": self.version},
            "status": "recording",
            "episode_id": episode_id,
            "environment_id": "",
            "xr_mode": "",
            "control_role": "",
            "tags": [],
            "start_time": now,
        }
        meta.update(extra)
        meta["tags"] = [str(t) for t in meta.get("tags") or []]
        for k in ("environment_id", "xr_mode", "control_role"):
            meta[k] = str(meta[k])
        path = self.root / episode_id
        path.mkdir(parents=True, exist_ok=False)
        durable = self.durability != "none"
        # metadata before steps/: a folder that looks like an episode always has its metadata.json
        atomic_write(path / "metadata.json", self._meta_bytes(meta), durable=durable)
        (path / "steps").mkdir()
        (path / "frames").mkdir()
        if durable:
            fsync_dir(self.root)
        self._meta, self._path = meta, path
        self.num_steps, self._chunk_first, self._fd = 0, 0, None
        self._frame_dirs = set()
        return episode_id

    @staticmethod
    def _meta_bytes(meta: Mapping[str, Any]) -> bytes:
        return json.dumps(meta, default=_json_default, ensure_ascii=False, indent=1).encode()

    def log_step(self, observation: Mapping[str, Any], action: Any, reward: float = 0.0, discount: float = 1.0,
                 timestamps: Mapping[str, float] | None = None, extras: Mapping[str, Any] | None = None) -> int:
        """Append one step; returns its index. ``observation`` maps paths (``"observation/image"``
        or ``"image"``, nested with ``/``) to values; at camera paths a frame: JPEG/PNG bytes as
        given, a ``uint8`` array (PNG-encoded here) or ``None`` (absent). ``action``: an array or
        a ``{name: array}`` tree. ``timestamps``: ``{stream: seconds}`` (declared streams not
        given get ``clock()``). ``extras``: other top-level step features (``control_mode``,
        ``policy_action``, ...)."""
        path = self._path
        if path is None:
            raise RuntimeError("no episode is open: call start_episode first")
        i = self.num_steps
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
            _set_path(line, cam_path, self._write_frame(cam, data, ext))
        data = (_ENCODER.encode(line) + "\n").encode("utf-8")
        if self._fd is None:
            self._chunk_first = self.num_steps
            self._fd = os.open(path / "steps" / f"{self._chunk_first:06d}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                               0o644)
        write_all(self._fd, data)  # the whole line in one write(2) on an O_APPEND descriptor
        if self.durability == "step":
            os.fsync(self._fd)
        self.num_steps += 1
        if self.num_steps - self._chunk_first >= self.chunk_steps:
            self._close_chunk()
        return i

    def _write_frame(self, camera: str, data: bytes, ext: str) -> str:
        assert self._path is not None
        d = self._path / "frames" / camera
        if camera not in self._frame_dirs:
            d.mkdir(exist_ok=True)
            self._frame_dirs.add(camera)
        rel = f"frames/{camera}/{self.num_steps:06d}{ext}"
        atomic_write(self._path / rel, data, durable=self.durability == "step")
        return rel

    def _close_chunk(self) -> None:
        if self._fd is None:
            return
        if self.durability != "none":
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None

    def end_episode(self, terminal: bool, *, metadata: Mapping[str, Any] | None = None) -> Path:
        """Finish the episode: ``terminal=True`` when it ended in a terminal state (goal,
        crash), False when cut short. Writes the end record and status ``complete``; returns
        the folder."""
        path = self._path
        if path is None:
            raise RuntimeError("no episode is open")
        if not isinstance(terminal, bool):
            raise TypeError("terminal must be True or False (termination vs truncation is never guessed)")
        if self.num_steps == 0:
            raise ValueError("an episode needs at least one step")
        extra = dict(metadata or {})
        bad = set(extra) & _RESERVED_META
        if bad:
            raise ValueError(f"episode metadata keys {sorted(bad)} are written by the logger")
        self._close_chunk()
        if self.durability != "none":
            for cam in self._frame_dirs:
                fsync_dir(path / "frames" / cam)
            fsync_dir(path / "steps")
        meta = dict(self._meta, **extra)
        meta["status"] = "complete"
        meta["end"] = {"num_steps": self.num_steps, "terminal": terminal, "end_time": float(self.clock())}
        atomic_write(path / "metadata.json", self._meta_bytes(meta), durable=self.durability != "none")
        self._path = None
        self._meta = {}
        return path

    def close(self) -> None:
        """Release the open episode without ending it (it stays ``recording``, recoverable)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._path = None

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
        if isinstance(v, dict) and set(v) == {"$base64"} and isinstance(v["$base64"], str):
            try:
                return base64.b64decode(v["$base64"], validate=True)
            except (binascii.Error, ValueError):
                raise CaptureReadError(f"{self.path}: step {i} {path}: bad base64 frame") from None
        if not isinstance(v, str) or os.path.isabs(v):
            raise CaptureReadError(f"{self.path}: step {i} {path}: expected a frame path, got {v!r:.60}")
        root = self.path.resolve()
        f = (self.path / v).resolve()
        if not f.is_relative_to(root):
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
    data = f.read_bytes()
    if f.name.endswith(".zst"):
        try:
            import zstandard  # optional: closed chunks are only compressed off the robot
        except ImportError:
            raise CaptureReadError(f"{f}: this chunk is zstd-compressed and reading it needs the zstandard package, "
                                   "which is not installed here (decompress it with `zstd -d`, or pip install zstandard)"
                                   ) from None
        dobj = zstandard.ZstdDecompressor().decompressobj()
        data = dobj.decompress(data)
        if not dobj.eof:
            raise CaptureReadError(f"{f}: the zstd stream is truncated")
    return data


def read_capture_episode(path: str | os.PathLike) -> CaptureEpisode:
    """Read an episode folder of the capture layout: its metadata and every complete step up to
    the first torn/corrupt line or missing chunk (noted in ``problems``). An unfinished
    (``recording``) episode is read as far as it goes."""
    p = Path(path)
    try:
        meta = json.loads((p / "metadata.json").read_bytes())
    except (OSError, ValueError) as e:
        raise CaptureReadError(f"{p / 'metadata.json'}: not a readable episode metadata file: {e}") from None
    if not isinstance(meta, dict):
        raise CaptureReadError(f"{p / 'metadata.json'}: expected a JSON object")
    if meta.get("format", FORMAT) != FORMAT:
        raise CaptureReadError(f"{p / 'metadata.json'}: format {meta.get('format')!r} is not {FORMAT}")
    chunks: dict[int, Path] = {}
    try:
        names = sorted(os.listdir(p / "steps"))
    except OSError as e:
        raise CaptureReadError(f"{p / 'steps'}: cannot list: {e}") from None
    for name in names:
        m = _CHUNK_RE.match(name)
        if not m:
            continue
        first = int(m.group(1))
        # both forms present (killed between compress and unlink): the plain one is complete too
        if first in chunks and not chunks[first].name.endswith(".zst"):
            continue
        chunks[first] = p / "steps" / name
    steps: list[dict[str, Any]] = []
    problems: list[str] = []
    for first, f in sorted(chunks.items()):
        if first != len(steps):
            problems.append(f"steps/{f.name} starts at step {first}, expected {len(steps)}: stopped there")
            break
        lines = _chunk_text(f).split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        bad = False
        for n, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                rec = None
            if not isinstance(rec, dict):
                problems.append(f"steps/{f.name} line {n + 1} is torn or not a step: stopped there")
                bad = True
                break
            steps.append(rec)
        if bad:
            break
    return CaptureEpisode(p, meta, steps, problems)
