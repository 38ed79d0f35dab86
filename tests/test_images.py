"""The one image codec (``rldskit.images``): encode, decode, probe and verify, and the callers that
go through it (synthetic frames, the TFDS placeholder frame, ``validation.check_image_bytes``; the
loaders' ``decode_image`` is checked in ``test_loaders.py``). The simplejpeg-vs-Pillow pixel
identity is in ``test_image_decode.py``."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image as PILImage

from rldskit import images
from rldskit.spec import Image


def _picture(h: int, w: int, c: int, seed: int = 0, noise: int = 20) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (k + 2) * 5 + y * (4 - k) * 3) % 256 for k in range(c)], -1)
    jitter = np.random.default_rng(seed).integers(-noise, noise + 1, (h, w, c))
    return np.clip(base + jitter, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("c", [1, 3, 4])
def test_png_round_trips_exactly(c):
    arr = _picture(13, 21, c)
    data = images.encode(arr, "png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert images.probe(data) == images.ImageInfo("png", 13, 21, c, {1: "L", 3: "RGB", 4: "RGBA"}[c])
    np.testing.assert_array_equal(images.decode(data, c), arr)


@pytest.mark.parametrize("c", [1, 3])
def test_jpeg_round_trips_within_codec_error_and_quality_matters(c):
    arr = np.clip(128 + 60 * np.sin(np.mgrid[0:32, 0:48][1] / 7.0), 0, 255).astype(np.uint8)
    arr = np.repeat(arr[:, :, None], c, axis=2)  # smooth: JPEG's error is small
    hi, lo = images.encode(arr, "jpeg", quality=95), images.encode(arr, "jpeg", quality=10)
    assert len(lo) < len(hi)
    assert images.probe(hi)[:4] == ("jpeg", 32, 48, c)  # an ImageInfo is a tuple
    got = images.decode(hi, c)
    assert got.shape == (32, 48, c) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - arr).mean() < 3
    out = np.zeros((32, 48, c), np.uint8)
    assert images.decode(hi, c, out=out) is out and np.array_equal(out, got)
    assert images.decode(hi, c, (16, 24)).shape == (16, 24, c)


def test_encode_refuses_an_unknown_encoding():
    with pytest.raises(ValueError, match="encoding must be one of"):
        images.encode(np.zeros((4, 4, 3), np.uint8), "webp")


def test_probe_reads_headers_only_and_verify_proves_the_frame_intact():
    data = images.encode(_picture(64, 80, 3), "jpeg")
    cut = data[: len(data) // 2]
    assert images.probe(cut) == ("jpeg", 64, 80, 3, "RGB")  # the header is intact
    with pytest.raises(OSError):
        images.verify(cut)
    assert images.verify(data) == images.probe(data)
    with pytest.raises(OSError):
        images.probe(b"not an image at all")
    gif = io.BytesIO()
    PILImage.fromarray(_picture(5, 6, 3)).save(gif, "GIF")
    assert images.probe(gif.getvalue()).format == "gif"
    assert images.sniff(gif.getvalue()) is None and images.sniff(data) == "jpeg"


def test_callers_use_the_one_codec():
    from rldskit.formats import tfexample
    from rldskit.synth import encode_image

    assert encode_image is images.encode
    placeholder = tfexample._placeholder_frame((6, 8, 3), "png")
    assert images.probe(placeholder) == ("png", 6, 8, 3, "RGB") and not images.decode(placeholder).any()


def test_check_image_bytes_codes_and_messages():
    from rldskit.validation import check_image_bytes

    leaf = Image(shape=(16, 24, 3), encoding="jpeg")
    good = images.encode(_picture(16, 24, 3), "jpeg")
    assert check_image_bytes(good, leaf) is None
    assert check_image_bytes(b"", leaf) == ("IMAGE_MISSING", "empty frame")
    code, msg = check_image_bytes(good[: len(good) // 2], leaf)
    assert code == "IMAGE_UNDECODABLE" and msg.startswith("cannot decode: ")
    assert check_image_bytes(images.encode(_picture(8, 24, 3), "jpeg"), leaf) == (
        "IMAGE_SIZE", "frame is 8x24x3, expected 16x24x3")
    assert check_image_bytes(images.encode(_picture(16, 24, 3), "png"), leaf) == (
        "IMAGE_ENCODING", "frame is png-encoded, schema declares jpeg")
    gif = io.BytesIO()
    PILImage.fromarray(_picture(16, 24, 3)).convert("RGB").save(gif, "GIF")
    code, msg = check_image_bytes(gif.getvalue(), leaf)
    assert code in ("IMAGE_SIZE", "IMAGE_ENCODING")  # a GIF is palette (1 band) or unknown-encoded
    if code == "IMAGE_ENCODING":
        assert msg == "frame is unknown-encoded, schema declares jpeg"


def test_importing_the_codec_imports_no_image_library():
    code = ("import json, sys, rldskit.images; "
            "print(json.dumps(sorted(m for m in ('PIL', 'simplejpeg', 'grain', 'tensorflow') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
