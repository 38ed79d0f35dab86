"""Image decoding for the loaders (``rldskit.images.decode``, re-exported as ``rldskit.loaders.decode_image``)
and the recycled image buffers (``rldskit.loaders.buffers``).

simplejpeg (libjpeg-turbo) decodes JPEGs, into the batch's own memory when it can; every pixel must
equal Pillow's decode of the same bytes, whatever the size, subsampling, quality, colour space or
resize. Whatever simplejpeg will not do identically (PNG, CMYK, colour to grey) or refuses (corrupt
data) goes to Pillow, which names the error. Recycled buffers must never overwrite a batch that the
caller still holds, in any form (the array, a view, a torch tensor)."""

from __future__ import annotations

import collections
import io
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from fuzzing import examples
from PIL import Image

pytest.importorskip("grain")
pytest.importorskip("simplejpeg")

from rldskit import images as I  # noqa: E402
from rldskit.loaders import buffers as B  # noqa: E402
from rldskit.pipeline import convert  # noqa: E402
from rldskit.spec import load_spec  # noqa: E402
from rldskit.synth import write_synthetic  # noqa: E402

L = pytest.importorskip("rldskit.loaders")


def _jpeg(arr: np.ndarray, mode: str | None = None, **kw) -> bytes:
    img = Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    if mode:
        img = img.convert(mode)
    b = io.BytesIO()
    img.save(b, "JPEG", **kw)
    return b.getvalue()


def _pil(data: bytes, channels: int, size=None) -> np.ndarray:
    return I._decode_pil(data, channels, size)


def _smooth(rng: np.random.Generator, h: int, w: int, c: int) -> np.ndarray:
    """A picture with edges and gradients (JPEG artefacts in every block), not flat noise."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (k + 1) * 7 + y * (3 - k) * 5) % 256 for k in range(c)], -1)
    return np.clip(base + rng.integers(-40, 40, (h, w, c)), 0, 255).astype(np.uint8)


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 70), w=st.integers(1, 90), quality=st.integers(5, 100),
       subsampling=st.sampled_from([0, 1, 2]), progressive=st.booleans(), seed=st.integers(0, 2**16))
def test_simplejpeg_pixels_equal_pillows(h, w, quality, subsampling, progressive, seed):
    arr = _smooth(np.random.default_rng(seed), h, w, 3)
    data = _jpeg(arr, quality=quality, subsampling=subsampling, progressive=progressive)
    fast = I._decode_jpeg_fast(data, 3, None, None)
    assert fast is not None, "a baseline/progressive YCbCr JPEG goes through simplejpeg"
    np.testing.assert_array_equal(fast, _pil(data, 3))
    out = np.full((h, w, 3), 77, np.uint8)
    got = L.decode_image(data, 3, out=out)
    assert got is out
    np.testing.assert_array_equal(out, _pil(data, 3))


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(8, 120), w=st.integers(8, 160), th=st.integers(1, 64), tw=st.integers(1, 64),
       seed=st.integers(0, 2**16))
def test_resized_decode_equals_pillows_draft_and_resize(h, w, th, tw, seed):
    data = _jpeg(_smooth(np.random.default_rng(seed), h, w, 3), quality=90)
    got = L.decode_image(data, 3, (th, tw))
    assert got.shape == (th, tw, 3)
    np.testing.assert_array_equal(got, _pil(data, 3, (th, tw)))


def test_grey_colour_spaces_and_png_match_pillow():
    rng = np.random.default_rng(0)
    rgb = _smooth(rng, 40, 56, 3)
    grey = _smooth(rng, 40, 56, 1)
    cases = {
        "grey jpeg -> rgb": (_jpeg(grey), 3, True),
        "grey jpeg -> grey": (_jpeg(grey), 1, True),
        "rgb jpeg -> grey (Pillow's luma, not libjpeg's Y)": (_jpeg(rgb), 1, False),
        "cmyk jpeg -> rgb": (_jpeg(rgb, "CMYK"), 3, False),
    }
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, "PNG")
    cases["png"] = (png.getvalue(), 3, False)
    for name, (data, channels, fast) in cases.items():
        assert (I._decode_jpeg_fast(data, channels, None, None) is not None) == fast, name
        got = L.decode_image(data, channels)
        assert got.shape == (40, 56, channels), name
        np.testing.assert_array_equal(got, _pil(data, channels), err_msg=name)
        out = np.zeros((40, 56, channels), np.uint8)
        assert L.decode_image(data, channels, out=out) is out
        np.testing.assert_array_equal(out, got, err_msg=name)


def test_out_of_another_shape_is_left_alone_and_the_decode_returned():
    data = _jpeg(_smooth(np.random.default_rng(1), 30, 20, 3))
    out = np.zeros((20, 30, 3), np.uint8)
    got = L.decode_image(data, 3, out=out)
    assert got.shape == (30, 20, 3) and not out.any()


@pytest.mark.parametrize("cut", ["truncated", "garbage", "header only", "empty-ish"])
def test_broken_jpegs_raise_pillows_error(cut):
    data = _jpeg(_smooth(np.random.default_rng(2), 64, 64, 3))
    bad = {"truncated": data[: len(data) // 3], "garbage": b"\xff\xd8" + b"\x00garbage" * 50,
           "header only": data[:20], "empty-ish": b"\xff\xd8"}[cut]
    with pytest.raises((OSError, SyntaxError, ValueError)):
        L.decode_image(bad, 3)
    with pytest.raises((OSError, SyntaxError, ValueError)):
        L.decode_image(bad, 3, out=np.zeros((64, 64, 3), np.uint8))


# --------------------------------------------------------------------------- the buffer pool


def test_pool_hands_out_an_array_only_when_nobody_else_holds_it():
    pool = B.ArrayPool(capacity=2)
    a = pool.take((4, 5), np.uint8)
    b = pool.take((4, 5), np.uint8)
    assert a is not b
    view = a[1:]
    del a
    c = pool.take((4, 5), np.uint8)
    assert c is not view.base, "a view keeps its array out of the pool"
    address = b.ctypes.data
    del b
    assert pool.take((4, 5), np.uint8).ctypes.data == address, "a dropped array is reused"
    other = pool.take((5, 4), np.uint8)
    assert other.shape == (5, 4)
    held = [pool.take((4, 5), np.uint8) for _ in range(5)]  # beyond capacity: fresh, unpooled arrays
    assert len({id(x) for x in held}) == 5
    assert sys.getrefcount(held[-1]) >= 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode_pool")
    spec = load_spec("pi5_donkey.v1").with_image_shape("observation/image", (24, 32, 3))
    write_synthetic(spec, root / "cap", 4, 10, seed=3)
    return convert([root / "cap"], root / "data", name="donkey", runner="inline", formats=("array_record",)).path


@pytest.mark.parametrize("threads", [0, 2])
def test_held_batches_are_never_overwritten_and_dropped_ones_are_recycled(dataset, threads):
    kw = dict(history=2, action_horizon=3, batch_size=4, seed=5, num_epochs=3, num_threads=threads)
    plain = [b["observation/image"].copy() for b in L.windows(dataset, reuse_buffers=False, **kw)]
    held, views, copies, addresses = [], [], [], set()
    torch = pytest.importorskip("torch")
    tensors = []
    for i, b in enumerate(L.windows(dataset, **kw)):
        img = b["observation/image"]
        addresses.add(img.ctypes.data)
        copies.append(img.copy())
        if i % 5 == 0:
            held.append(img)  # the array itself
        elif i % 5 == 1:
            views.append(img[:, -1])  # a view of it
        elif i % 5 == 2:
            tensors.append(torch.from_numpy(img))  # a tensor sharing its memory
    assert len(copies) == len(plain) > 10
    for a, b in zip(copies, plain):
        np.testing.assert_array_equal(a, b)
    for i, x in enumerate(held):
        np.testing.assert_array_equal(x, plain[5 * i])
    for i, x in enumerate(views):
        np.testing.assert_array_equal(x, plain[5 * i + 1][:, -1])
    for i, x in enumerate(tensors):
        np.testing.assert_array_equal(x.numpy(), plain[5 * i + 2])
    assert len(addresses) < len(copies), "batches that were dropped lend their memory to later ones"


def test_absent_optional_frames_are_zero_in_recycled_buffers(tmp_path):
    spec = load_spec("so100_arm.v1")
    for p in spec.image_paths:
        spec = spec.with_image_shape(p, (16, 16, 3))
    write_synthetic(spec, tmp_path / "cap", 4, 6, seed=0)
    path = convert([tmp_path / "cap"], tmp_path / "data", name="arm", runner="inline",
                   formats=("array_record",)).path
    wrist = "observation/images/wrist"
    for b in L.steps(path, batch_size=3, num_epochs=4, num_threads=0, seed=1):
        absent = ~b[wrist + "_present"]
        assert not b[wrist][absent].any()
        assert b[wrist][~absent].any() or not (~absent).any()


# --------------------------------------------------------------------------- the frame cache


@pytest.mark.parametrize("threads", [1, 2])
def test_frame_cache_gives_the_same_batches_and_decodes_each_frame_once(dataset, threads):
    """One reader thread reads each frame once. With two, both may miss the cache for a frame
    they need at the same moment (the cache does not lock reads), so a frame is read at most once
    per thread: the bound is per frame, which no scheduling can break."""
    kw = dict(history=2, action_horizon=3, batch_size=4, seed=5, num_epochs=3, resize=(12, 16), num_threads=threads)
    plain = [{k: v.copy() for k, v in b.items()} for b in L.windows(dataset, cache_frames=False, **kw)]
    ld = L.windows(dataset, cache_frames=True, **kw)
    assert ld.maker._caching
    source = ld.maker.source
    asked: list[int] = []
    real = source.read_fields

    def counting(steps, keys):
        asked.extend(int(s) for s in steps)
        return real(steps, keys)

    source.read_fields = counting  # counts what the real reader is asked for; it still reads
    cached = [{k: v.copy() for k, v in b.items()} for b in ld]
    assert len(cached) == len(plain)
    for a, b in zip(cached, plain):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    n = ld.index.num_steps
    reads = collections.Counter(asked)
    assert set(reads) <= set(range(n))
    assert max(reads.values()) <= threads, f"after the first sight of a frame it comes from the cache: {reads}"
    # without the cache three epochs read (nearly) every frame three times
    assert len(asked) <= threads * n


def test_frame_cache_auto_follows_the_budget(dataset, monkeypatch):
    assert L.windows(dataset, batch_size=4).maker._caching  # 40 tiny frames fit
    assert not L.windows(dataset, batch_size=4, decode_images=False).maker._caching
    monkeypatch.setattr(B, "CACHE_AUTO_BYTES", 100)
    assert not L.windows(dataset, batch_size=4).maker._caching
    assert L.windows(dataset, batch_size=4, cache_frames=True).maker._caching
