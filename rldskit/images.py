"""The image codec: every frame rldskit writes, checks or decodes goes through here.

Frames are stored encoded (JPEG or PNG bytes, as :class:`~rldskit.spec.Image` declares them) and
decoded only where pixels are needed. Four operations, numpy + Pillow, with simplejpeg
(libjpeg-turbo) as an optional, lazily imported fast path for JPEG decoding:

* :func:`encode`: ``uint8 (h, w, c)`` -> JPEG or PNG bytes (Pillow; JPEG at ``quality``, PNG at
  zlib level 1). ``c`` is 1 (grey), 3 (RGB) or, PNG only, 4 (RGBA).
* :func:`decode`: JPEG/PNG bytes -> ``uint8 (h, w, channels)``, optionally resized to ``size=(h, w)``
  (bilinear, after a libjpeg DCT-scaled decode for JPEGs larger than ``size``) and optionally
  written into a caller's array ``out``. Contract: the pixels are **Pillow's**, bit for bit,
  whichever backend ran (simplejpeg is used only where it is known to agree: YCbCr or grey JPEGs to
  RGB, grey to grey, and DCT scales Pillow's ``draft`` would pick; everything else goes to Pillow).
  Errors are Pillow's (``OSError`` and its subclasses, ``SyntaxError``, ``ValueError``, ...).
* :func:`probe`: a header read, no pixel decoding: :class:`ImageInfo` ``(format, height, width,
  channels, mode)``. Cheap (microseconds): use it to check sizes before paying for a decode.
* :func:`verify`: :func:`probe` plus a decode of every entropy-coded byte (JPEGs at 1/8 DCT scale,
  so truncation and corruption are caught at a fraction of a full decode's cost); raises what
  Pillow raises on a broken frame.
* :func:`resize` (an array to another size, bilinear) and :func:`thumbnail` (bytes to a small JPEG
  or PNG, for reports).

``format`` is ``"jpeg"`` or ``"png"`` from the file's signature (:func:`sniff`, the edge runtime's
signature check; an MPO or JFIF/EXIF variant is a JPEG), else Pillow's lower-cased format name
(``"gif"``, ``"bmp"``, ...: readable, but not an encoding a spec may declare), or ``None`` when
Pillow has no name for it.

Nothing here imports TensorFlow, Grain or any ML stack; Pillow is imported on first use.
"""

from __future__ import annotations

import io
from typing import Any, NamedTuple

import numpy as np

from edge_runtime.frames import JPEG_SIGNATURE, frame_kind

__all__ = ["ENCODINGS", "ImageInfo", "encode", "decode", "probe", "verify", "sniff", "resize", "thumbnail"]

#: the encodings a spec's :class:`~rldskit.spec.Image` may declare, and :func:`encode` writes
ENCODINGS = ("jpeg", "png")
#: Pillow modes by channel count
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_PNG_LEVEL = 1  # zlib level of encode(..., "png"): frames are written on robots, speed over size


class ImageInfo(NamedTuple):
    """What a frame's header says: ``format`` (see the module docstring), ``height`` and
    ``width`` in pixels, ``channels`` (Pillow's band count: 1 grey, 3 RGB/YCbCr, 4 CMYK/RGBA) and
    ``mode`` (Pillow's: ``"L"``, ``"P"``, ``"RGB"``, ``"RGBA"``, ``"CMYK"``, ...)."""

    format: str | None
    height: int
    width: int
    channels: int
    mode: str


def sniff(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"`` or ``None`` from the first bytes alone (no Pillow): the edge runtime's
    signature check (:func:`edge_runtime.frames.frame_kind`, the one the robot's logger names frame
    files by), restricted to the encodings a spec may declare."""
    kind = frame_kind(data)
    return kind if kind in ENCODINGS else None


# =========================================================================== encode


def encode(array: np.ndarray, encoding: str = "jpeg", quality: int = 85) -> bytes:
    """``uint8 (h, w, c)`` -> JPEG (``quality`` 1-95, Pillow's scale) or PNG bytes. ``c == 1``
    is written as a grey image. Raises ``ValueError`` for another ``encoding``."""
    from PIL import Image as PILImage

    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    buf = io.BytesIO()
    img = PILImage.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if encoding == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", compress_level=_PNG_LEVEL)
    return buf.getvalue()


# =========================================================================== probe, verify


def _info(img: Any, data: bytes) -> ImageInfo:
    w, h = img.size
    fmt = sniff(data) or (img.format.lower() if img.format else None)
    return ImageInfo(fmt, int(h), int(w), len(img.getbands()), str(img.mode))


def probe(data: bytes) -> ImageInfo:
    """The frame's :class:`ImageInfo` from its header (Pillow's lazy open: no pixels decoded).
    Raises what Pillow raises for bytes it cannot identify (``PIL.UnidentifiedImageError``, an
    ``OSError``)."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as img:
        return _info(img, data)


def verify(data: bytes) -> ImageInfo:
    """:func:`probe`, then decode the whole frame to prove it intact (JPEG in Pillow's draft mode
    at 1/8 scale: every entropy-coded byte is still parsed, at a fraction of the IDCT cost). Raises
    what Pillow raises on a truncated or corrupt frame (hostile bytes can make it raise almost
    anything: callers that must not fail catch ``Exception``)."""
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as img:
        info = _info(img, data)
        if img.format == "JPEG":
            img.draft(img.mode, (max(1, info.width // 8), max(1, info.height // 8)))
        img.load()
    return info


# =========================================================================== decode


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
    if not sj or channels not in (1, 3) or data[:2] != JPEG_SIGNATURE:
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


def _decode_pil(data: bytes, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """Pillow's decode (the reference every backend must equal): draft for a JPEG larger than
    ``size``, convert to the channels' mode, bilinear resize."""
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


def decode(data: bytes, channels: int = 3, size: tuple[int, int] | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    """JPEG/PNG bytes -> ``uint8 (h, w, channels)`` (``channels`` 1, 3 or 4). ``size=(h, w)``
    resizes (bilinear); a JPEG that is larger than ``size`` is first decoded at a reduced scale
    (libjpeg DCT scaling), which is several times faster than decoding it whole. ``out``: an array
    of the result's shape to decode into (JPEGs without ``size`` are then decoded straight into it,
    with no intermediate array); the result is always returned, and is ``out`` when it was used
    (an ``out`` of another shape is left untouched and the decoded array returned: the caller
    compares shapes and names the mismatch).

    JPEGs go through simplejpeg when it is installed (2x faster than Pillow to a numpy array,
    mostly by not allocating), with pixels identical to Pillow's; everything else (PNG, CMYK,
    colour to grey, data simplejpeg refuses) through Pillow. Raises what Pillow raises."""
    img = _decode_jpeg_fast(data, channels, size, out)
    if img is None:
        img = _decode_pil(data, channels, size)
    if out is not None and img is not out:
        if img.shape != out.shape:
            return img
        out[...] = img
        return out
    return img


# =========================================================================== resize, thumbnails


def resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 (h, w, c)`` (c 1, 3 or 4) -> ``uint8 (size[0], size[1], c)``, Pillow's bilinear resize
    (what :func:`decode` does with ``size`` after the decode)."""
    from PIL import Image as PILImage

    img = PILImage.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    out = np.asarray(img.resize((size[1], size[0]), PILImage.Resampling.BILINEAR))
    return out[:, :, None] if out.ndim == 2 else out


def thumbnail(data: bytes, size: tuple[int, int]) -> tuple[str, bytes]:
    """A frame scaled to ``size`` (``(w, h)``, Pillow's order) and re-encoded for display:
    ``("image/jpeg", JPEG quality 85)``, or ``("image/png", PNG)`` when the frame has alpha. A JPEG
    is decoded at a reduced DCT scale first. Raises what Pillow raises on bad bytes."""
    from PIL import Image as PILImage

    img = PILImage.open(io.BytesIO(data))
    img.draft("RGB", size)  # JPEG: decode at reduced scale when shrinking
    img.load()
    img = img.convert("RGBA" if "A" in img.getbands() else "RGB").resize(size)
    buf = io.BytesIO()
    if img.mode == "RGBA":
        img.save(buf, format="PNG")
        return "image/png", buf.getvalue()
    img.save(buf, format="JPEG", quality=85)
    return "image/jpeg", buf.getvalue()
