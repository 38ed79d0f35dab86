"""Camera frames, numpy and the standard library only: what an encoded frame is (its signature), and a
PNG codec for the robot, which has no Pillow.

* :func:`frame_kind`: ``"jpeg"``, ``"png"``, ``"npy"`` or ``None`` from the first bytes alone. The one
  signature check of the project: the edge logger names frame files by it, rldskit's capture writer
  checks given bytes with it and :func:`rldskit.images.sniff` (the format of :func:`rldskit.images.probe`)
  is it, restricted to the two encodings a schema may declare.
* :func:`frame_extension`: the file extension a frame of that kind is stored under.
* :func:`encode_png` / :func:`decode_png`: ``uint8 (H, W[, C])`` <-> PNG bytes (8-bit, not interlaced,
  every filter type), with ``zlib``.
* :func:`decode_frame`: PNG and ``.npy`` natively; JPEG only when Pillow happens to be importable (an
  optional, lazily imported dependency: the robot image need not have it). Errors are
  :class:`FrameDecodeError`.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["JPEG_SIGNATURE", "PNG_SIGNATURE", "NPY_SIGNATURE", "FrameDecodeError", "frame_kind", "frame_extension",
           "encode_png", "decode_png", "decode_frame"]

#: the first bytes of a JPEG (SOI marker), of a PNG, and of a numpy ``.npy`` file
JPEG_SIGNATURE = b"\xff\xd8"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NPY_SIGNATURE = b"\x93NUMPY"
_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "npy": ".npy"}


class FrameDecodeError(ValueError):
    """A frame that cannot be decoded here (unsupported format, or JPEG without Pillow)."""



def frame_kind(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"``, ``"npy"`` or ``None`` from the bytes' signature."""
    if data[:2] == JPEG_SIGNATURE:
        return "jpeg"
    if data[:8] == PNG_SIGNATURE:
        return "png"
    if data[:6] == NPY_SIGNATURE:
        return "npy"
    return None


def frame_extension(kind: str) -> str:
    """The file extension of a frame of ``kind`` (``"jpeg"`` -> ``".jpg"``, ``"png"`` -> ``".png"``)."""
    return _EXTENSIONS[kind]


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
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + _chunk(b"IEND", b"")


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> ``uint8 (H, W, C)``. 8-bit grey/RGB/grey+alpha/RGBA, not interlaced, any
    filter. Raises :class:`FrameDecodeError` on anything else or on damage."""
    if data[:8] != PNG_SIGNATURE:
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

