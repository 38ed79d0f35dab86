"""Grain loaders (``rldskit.loaders``): every window against a naive reference built from whole
episodes, epochs, hosts, filters, normalisation, images, exact resumption (0 and 2 worker
processes) and corrupt records surfacing as clear errors instead of hangs."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("pyarrow")

import rldskit  # noqa: E402
from rldskit.formats.arrayrecord import ArrayRecordCorruption, ArrayRecordShardReader, ArrayRecordShardWriter  # noqa: E402
from rldskit.formats.arrayrecord import verify_arrayrecord  # noqa: E402
from rldskit.formats.tfexample import ExampleDecodeError  # noqa: E402
from rldskit.pipeline import convert  # noqa: E402
from rldskit.spec import load_spec  # noqa: E402
from rldskit.synth import write_synthetic  # noqa: E402
from shared_fixtures import BRIDGE  # noqa: E402

L = pytest.importorskip("rldskit.loaders")

CAM = (24, 32, 3)
H, K = 3, 4


def _donkey_spec():
    return load_spec("pi5_donkey.v1").with_image_shape("observation/image", CAM)


def _arm_spec():
    spec = load_spec("so100_arm.v1")
    for p in spec.image_paths:
        spec = spec.with_image_shape(p, CAM)
    return spec


@pytest.fixture(scope="module")
def donkey(tmp_path_factory) -> Path:
    """Episodes of 12, 12, 12, 2, 2 and 1 steps (shorter than H and K too), in several step files."""
    root = tmp_path_factory.mktemp("loaders_donkey")
    spec = _donkey_spec()
    write_synthetic(spec, root / "cap", 3, 12, seed=0)
    write_synthetic(spec, root / "cap", 2, 2, seed=1)
    write_synthetic(spec, root / "cap", 1, 1, seed=2)
    res = convert([root / "cap"], root / "data", name="donkey", runner="inline", shard_size_mb=0.01,
                  formats=("array_record",))
    return res.path


@pytest.fixture(scope="module")
def arm(tmp_path_factory) -> Path:
    """Two cameras, the wrist one optional (absent in episode 0), and a language instruction."""
    root = tmp_path_factory.mktemp("loaders_arm")
    write_synthetic(_arm_spec(), root / "cap", 4, 6, seed=0)
    res = convert([root / "cap"], root / "data", name="arm", runner="inline", shard_size_mb=0.01,
                  formats=("array_record",))
    return res.path


class Reference:
    """Whole episodes decoded by ``rldskit.open``, in global-step order, and naive windows."""

    def __init__(self, path: Path):
        self.ds = rldskit.open(path)
        index = L.StepIndex.load(path)
        # by position (shard, record), not by id: Open-X episode ids need not be unique
        shard_of = {p: i for i, p in enumerate(self.ds.shards("train", index.file_formats[0]))}
        by_place = {}
        for i, ep in enumerate(self.ds.episodes("train")):
            by_place[i] = ep
        starts = np.cumsum([0] + list(self.ds.shard_lengths["train"]))
        self.episodes = [by_place[int(starts[shard_of[index.path / sh]] + r)]
                         for sh, r in zip(index.episodes["shard"], index.episodes["shard_record"])]
        assert [ep.episode_id for ep in self.episodes] == [str(i) for i in index.episodes["episode_id"]]
        self.spec = self.ds.spec
        self.where = [(e, t) for e, ep in enumerate(self.episodes) for t in range(len(ep))]

    def image(self, data: bytes) -> np.ndarray:
        from PIL import Image

        if not data:
            return np.zeros(CAM, dtype=np.uint8)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def window(self, g: int, history: int, horizon: int, obs_keys, act_keys=("action",)) -> dict[str, np.ndarray]:
        e, t = self.where[g]
        ep = self.episodes[e]
        n = len(ep)
        hist = [t - history + 1 + h for h in range(history)]
        chunk = [t + k for k in range(horizon)]
        out = {"observation_is_pad": np.array([i < 0 for i in hist]),
               "action_is_pad": np.array([i >= n for i in chunk]),
               "episode_index": e, "frame_index": t, "index": g}
        for key in obs_keys:
            vals = [ep.steps[key][max(i, 0)] for i in hist]
            out[key] = np.stack([self.image(v) for v in vals]) if key in self.spec.image_paths else np.stack(vals)
        for key in act_keys:
            out[key] = np.stack([ep.steps[key][min(i, n - 1)] for i in chunk])
        return out


@pytest.fixture(scope="module")
def donkey_ref(donkey) -> Reference:
    return Reference(donkey)


@pytest.fixture(scope="module")
def arm_ref(arm) -> Reference:
    return Reference(arm)


def _samples(loader) -> list[dict[str, np.ndarray]]:
    out = []
    for batch in loader:
        n = len(batch["index"])
        out.extend({k: v[i] for k, v in batch.items()} for i in range(n))
    return out


def _assert_sample(got: dict, want: dict, keys) -> None:
    for k in keys:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{k} at global step {want['index']}")


# =========================================================================== windows vs naive


def test_every_window_equals_the_naive_window_with_pads_at_both_edges(donkey, donkey_ref):
    ld = L.windows(donkey, history=H, action_horizon=K, batch_size=7, shuffle=False, drop_remainder=False)
    assert len(L.StepIndex.load(donkey).step_files) >= 2  # reads span several step files
    samples = _samples(ld)
    n = len(donkey_ref.where)
    assert sorted(int(s["index"]) for s in samples) == list(range(n))
    keys = ("observation/image", "action", "observation_is_pad", "action_is_pad", "episode_index", "frame_index")
    for s in samples:
        want = donkey_ref.window(int(s["index"]), H, K, ["observation/image"])
        _assert_sample(s, want, keys)
        assert s["observation/image"].shape == (H, *CAM) and s["observation/image"].dtype == np.uint8
        assert s["action"].shape == (K, 2) and s["action"].dtype == np.float32
    lengths = [len(ep) for ep in donkey_ref.episodes]
    assert min(lengths) < H and min(lengths) < K  # episodes shorter than the window on both sides
    pads = np.stack([s["observation_is_pad"] for s in samples])
    apads = np.stack([s["action_is_pad"] for s in samples])
    one_step = next(s for s in samples if lengths[int(s["episode_index"])] == 1)
    np.testing.assert_array_equal(one_step["observation_is_pad"], [True, True, False])
    np.testing.assert_array_equal(one_step["action_is_pad"], [False, True, True, True])
    assert pads[:, 0].sum() == sum(min(n_, H - 1) for n_ in lengths)  # first frame padded for t < H-1
    assert apads[:, -1].sum() == sum(min(n_, K - 1) for n_ in lengths)  # last action padded for t > L-K


def test_multi_camera_optional_wrist_and_language(arm, arm_ref):
    obs = ["observation/images/front", "observation/images/wrist", "observation/images/wrist_present",
           "observation/joint_position", "observation/gripper_position"]
    ld = L.windows(arm, history=2, action_horizon=3, batch_size=5, shuffle=True, seed=3, drop_remainder=False)
    samples = _samples(ld)
    assert len(samples) == len(arm_ref.where)
    present = set()
    for s in samples:
        g = int(s["index"])
        want = arm_ref.window(g, 2, 3, obs)
        _assert_sample(s, want, obs + ["action", "observation_is_pad", "action_is_pad"])
        e, t = arm_ref.where[g]
        assert s["language_instruction"] == arm_ref.episodes[e].steps["language_instruction"][t]
        present.update(bool(x) for x in s["observation/images/wrist_present"])
        if not s["observation/images/wrist_present"].any():
            assert not s["observation/images/wrist"].any()  # absent frames are zeros
    assert present == {True, False}  # both cases exercised
    assert "observation/images/front" in ld.maker.index.spec.image_paths


def test_unbatched_windows_equal_batched_ones(donkey):
    a = L.windows(donkey, history=2, action_horizon=2, batch_size=None, seed=5, num_epochs=1)
    b = L.windows(donkey, history=2, action_horizon=2, batch_size=4, seed=5, drop_remainder=False)
    singles = list(a)
    batched = _samples(b)
    assert len(singles) == len(batched) == len(a)
    for x, y in zip(singles, batched):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_images_equal_pil_decoded_capture_frames(donkey, donkey_ref):
    from PIL import Image

    from rldskit.pipeline.plan import resolve_source

    ld = L.steps(donkey, batch_size=8, shuffle=False, drop_remainder=False)
    index = ld.index
    seen = 0
    sources = [donkey.parents[2] / "cap"]  # what the fixture converted; "source" is recorded relative to it
    for batch in ld:
        for i, g in enumerate(batch["index"]):
            e, t = index.locate(int(g))
            episode = resolve_source(str(index.episodes["source"][e]), sources)
            frame = episode / "frames" / "image" / f"{int(t):06d}.jpg"
            want = np.asarray(Image.open(frame).convert("RGB"))
            np.testing.assert_array_equal(batch["observation/image"][i], want)
            seen += 1
    assert seen == index.num_steps


def test_resize_uses_the_requested_shape_and_matches_pil(donkey, donkey_ref):
    from PIL import Image

    ld = L.windows(donkey, history=2, action_horizon=1, batch_size=4, shuffle=False, resize=(12, 16))
    batch = next(iter(ld))
    assert batch["observation/image"].shape == (4, 2, 12, 16, 3)
    for i, g in enumerate(batch["index"]):
        e, t = donkey_ref.where[int(g)]
        data = donkey_ref.episodes[e].steps["observation/image"][t]
        full = Image.open(io.BytesIO(data)).convert("RGB").resize((16, 12), Image.Resampling.BILINEAR)
        diff = np.abs(batch["observation/image"][i, -1].astype(int) - np.asarray(full).astype(int))
        assert diff.mean() < 12  # JPEG DCT scaling (draft) vs full decode + resize: close, not equal
        np.testing.assert_array_equal(batch["observation/image"][i, -1], L.decode_image(data, 3, (12, 16)))


def test_low_dim_only_windows_read_no_step_files(donkey, donkey_ref, monkeypatch):
    def fail(*a, **k):
        raise AssertionError("a step file was read")

    monkeypatch.setattr(L.StepSource, "read_records", fail)
    ld = L.windows(donkey, history=2, action_horizon=K, batch_size=6, decode_images=False, drop_remainder=False)
    for s in _samples(ld):
        assert "observation/image" not in s
        _assert_sample(s, donkey_ref.window(int(s["index"]), 2, K, []), ("action", "action_is_pad"))


# =========================================================================== epochs, hosts, selection


def _indices(loader) -> list[int]:
    return [int(i) for b in loader for i in np.atleast_1d(b["index"])]


def test_one_epoch_visits_each_step_once_and_epochs_differ(donkey):
    n = L.StepIndex.load(donkey).num_steps
    ld = L.steps(donkey, batch_size=5, shuffle=True, seed=1, num_epochs=2, decode_images=False, drop_remainder=False)
    assert len(ld) == -(-n // 5)
    order = _indices(ld)
    assert len(order) == 2 * n
    first, second = order[:n], order[n:]
    assert sorted(first) == sorted(second) == list(range(n))
    assert first != second and first != list(range(n))
    # drop_remainder: full batches only, never a step twice within an epoch
    ld = L.steps(donkey, batch_size=5, seed=1, num_epochs=2, decode_images=False)
    batches = [b["index"] for b in ld]
    assert len(batches) == 2 * (n // 5) and all(len(b) == 5 for b in batches)
    epoch = np.concatenate(batches[: n // 5])
    assert len(set(epoch.tolist())) == len(epoch)
    # another seed, another order; the same seed, the same order
    assert _indices(L.steps(donkey, batch_size=5, seed=2, decode_images=False)) != batches
    again = L.steps(donkey, batch_size=5, seed=1, num_epochs=2, decode_images=False)
    assert [b.tolist() for b in (x["index"] for x in again)] == [b.tolist() for b in batches]


def test_forever_repeats_with_fresh_orders(donkey):
    n = L.StepIndex.load(donkey).num_steps
    ld = L.steps(donkey, batch_size=None, num_epochs=None, decode_images=False)
    assert ld.num_batches is None
    it = iter(ld)
    order = [int(next(it)["index"]) for _ in range(3 * n)]
    epochs = [order[i * n:(i + 1) * n] for i in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3


def test_hosts_are_disjoint_and_cover_every_step(donkey):
    n = L.StepIndex.load(donkey).num_steps
    for epochs in (1, 2):
        shards = [_indices(L.steps(donkey, batch_size=3, seed=7, num_epochs=epochs, decode_images=False,
                                   process_index=p, process_count=2, drop_remainder=False)) for p in range(2)]
        per_epoch = [len(s) // epochs for s in shards]
        for e in range(epochs):
            a = shards[0][e * per_epoch[0]:(e + 1) * per_epoch[0]]
            b = shards[1][e * per_epoch[1]:(e + 1) * per_epoch[1]]
            assert not set(a) & set(b)
            assert sorted(a + b) == list(range(n))
    # drop_remainder: every host gets the same number of samples and of batches
    loaders = [L.steps(donkey, batch_size=4, seed=7, decode_images=False, process_index=p, process_count=3)
               for p in range(3)]
    assert len({ld.num_samples for ld in loaders}) == 1 and loaders[0].num_samples == n // 3
    got = [_indices(ld) for ld in loaders]
    assert len({len(g) for g in got}) == 1
    assert not (set(got[0]) & set(got[1])) and not (set(got[1]) & set(got[2]))


def test_episode_filter_and_split_slices_select_by_index(donkey):
    index = L.StepIndex.load(donkey)
    long_eps = [e for e in range(index.num_episodes) if index.lengths[e] > 5]
    want = sorted(g for e in long_eps for g in index.episode_steps(e))
    got = _indices(L.steps(donkey, batch_size=4, decode_images=False, drop_remainder=False,
                           episode_filter=lambda row: row["length"] > 5))
    assert sorted(got) == want
    # a predicate on episode metadata (tags, read from the episode shards)
    got = _indices(L.steps(donkey, batch_size=4, decode_images=False, drop_remainder=False,
                           episode_filter=lambda row: "seed:1" in row["tags"]))
    seed1 = [e for e in range(index.num_episodes) if str(index.episodes["episode_id"][e]).startswith("ep_0001")]
    assert sorted(got) == sorted(g for e in seed1 for g in index.episode_steps(e))
    # train[:50%] + train[50%:] by episode: disjoint, covering
    a = _indices(L.steps(donkey, split="train[:50%]", batch_size=2, decode_images=False, drop_remainder=False))
    b = _indices(L.steps(donkey, split="train[50%:]", batch_size=2, decode_images=False, drop_remainder=False))
    assert sorted(a + b) == list(range(index.num_steps)) and not set(a) & set(b)
    assert sorted(a) == list(range(int(index.starts[3])))
    assert L.parse_split("train[10:-2]") == ("train", slice("10", "-2"))
    with pytest.raises(ValueError, match="select no steps"):
        L.steps(donkey, episode_filter=lambda row: False)
    with pytest.raises(KeyError, match="no split 'test'"):
        L.steps(donkey, split="test")


# =========================================================================== normalisation


def test_normalisation_from_train_stats_keeps_pads_masked(donkey, donkey_ref, tmp_path):
    index = L.StepIndex.load(donkey)
    act = index.columns["action"].astype(np.float64)
    mean, std = act.mean(0), act.std(0)
    ld = L.windows(donkey, history=2, action_horizon=K, batch_size=5, normalize="stats", drop_remainder=False,
                   decode_images=False)
    assert "computed" in ld.normalizer.source
    for s in _samples(ld):
        want = donkey_ref.window(int(s["index"]), 2, K, [])
        np.testing.assert_allclose(s["action"], ((want["action"] - mean) / std).astype(np.float32), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_array_equal(s["action_is_pad"], want["action_is_pad"])
        pad = want["action_is_pad"]
        if pad.any():  # padded entries repeat the (normalised) last real action
            last = np.flatnonzero(~pad)[-1]
            np.testing.assert_array_equal(s["action"][pad], np.broadcast_to(s["action"][last], s["action"][pad].shape))
    np.testing.assert_allclose(ld.normalizer.unnormalize("action", ld.normalizer.normalize("action", act[:3])),
                               act[:3], atol=1e-9)
    # stats.json beside the dataset wins (a copy of the dataset with a stats file)
    copy = tmp_path / "ds"
    shutil.copytree(donkey, copy)
    (copy / L.STATS_FILE).write_text(json.dumps({"action": {"mean": [1.0, 2.0], "std": [2.0, 4.0],
                                                            "min": [-1, -1], "max": [1, 3]}}))
    ld = L.windows(copy, batch_size=4, normalize="mean_std", decode_images=False, shuffle=False)
    b = next(iter(ld))
    raw = index.columns["action"][b["index"]]
    np.testing.assert_allclose(b["action"][:, 0], (raw - [1.0, 2.0]) / [2.0, 4.0], rtol=1e-6)
    ld = L.windows(copy, batch_size=4, normalize="min_max", decode_images=False, shuffle=False)
    np.testing.assert_allclose(next(iter(ld))["action"][:, 0], (raw - [0.0, 1.0]) / [1.0, 2.0], rtol=1e-6)
    (copy / L.STATS_FILE).write_text(json.dumps({"reward": {"mean": 0, "std": 1}}))
    with pytest.raises(ValueError, match="no mean/std for feature 'action'"):
        L.windows(copy, normalize="stats")


def test_stats_of_optional_features_count_present_steps_only(arm):
    index = L.StepIndex.load(arm)
    stats = L.compute_stats(index)
    assert stats["observation/joint_position"]["count"] == index.num_steps
    assert "observation/images/wrist_present" not in stats  # bools are not normalised
    json.dumps(stats)


# =========================================================================== state


def _collect(loader, n=None) -> list[dict[str, np.ndarray]]:
    out = []
    for b in loader:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


def _assert_batches_equal(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_restoring_state_mid_epoch_reproduces_the_sequence(donkey):
    kw = dict(history=2, action_horizon=3, batch_size=4, seed=11, num_epochs=2)
    full = _collect(L.windows(donkey, **kw))
    assert len(full) == 2 * len(L.windows(donkey, **kw))
    for cut in (3, len(full) // 2 + 1):  # inside epoch 0 and inside epoch 1
        first = L.windows(donkey, **kw)
        head = _collect(first, cut)
        state = json.loads(json.dumps(first.get_state()))
        resumed = L.windows(donkey, **kw)
        resumed.set_state(state)
        _assert_batches_equal(head + _collect(resumed), full)
    # break and iterate again: continues; a finished pass restarts from the first batch
    ld = L.windows(donkey, **kw)
    a = _collect(ld, 2)
    b = _collect(ld)
    _assert_batches_equal(a + b, full)
    _assert_batches_equal(_collect(ld, 1), full[:1])
    # a state of another order is refused
    other = L.windows(donkey, **dict(kw, seed=12))
    with pytest.raises(ValueError, match="another order"):
        other.set_state(state)


@pytest.mark.slow
def test_restoring_state_with_two_worker_processes(donkey):
    kw = dict(history=2, action_horizon=3, batch_size=4, seed=11, num_epochs=2)
    full = _collect(L.windows(donkey, **kw))  # no workers
    with L.windows(donkey, worker_count=2, **kw) as first:
        head = _collect(first, 5)
        state = first.get_state()
    with L.windows(donkey, worker_count=2, **kw) as resumed:
        resumed.set_state(state)
        _assert_batches_equal(head + _collect(resumed), full)


# =========================================================================== sources


def test_step_source_batched_reads_and_pickling(donkey, donkey_ref):
    src = L.StepSource(donkey)
    assert len(src) == len(donkey_ref.where)
    steps = [len(src) - 1, 0, 13, 5, 13]
    got = src._getitems(steps)
    assert len(got) == len(steps)
    for g, step in zip(steps, got):
        e, t = donkey_ref.where[g]
        ep = donkey_ref.episodes[e]
        assert step["observation/image"] == ep.steps["observation/image"][t]
        np.testing.assert_array_equal(step["action"], ep.steps["action"][t])
        assert src[g]["observation/image"] == step["observation/image"]
    clone = pickle.loads(pickle.dumps(src))
    assert clone[5]["observation/image"] == src[5]["observation/image"]
    grain = pytest.importorskip("grain")
    ds = grain.MapDataset.source(src)
    assert len(ds) == len(src) and ds[3]["observation/image"] == src[3]["observation/image"]


def test_episode_source_over_ours_and_an_open_x_style_folder(donkey, donkey_ref, tmp_path):
    src = L.EpisodeSource(donkey)
    eps = list(rldskit.open(donkey).episodes("train"))
    assert len(src) == len(eps)
    for i, ep in zip([len(eps) - 1, 0, 2], src._getitems([len(eps) - 1, 0, 2])):
        assert ep == eps[i]
    # a folder without rldskit_spec.json (as Open-X ones are): the spec comes from features.json
    copy = tmp_path / "openx"
    shutil.copytree(donkey, copy)
    (copy / "rldskit_spec.json").unlink()
    ox = L.EpisodeSource(copy, last_step="valid")
    assert ox.spec.last_step == "valid"
    ep = pickle.loads(pickle.dumps(ox))[1]
    np.testing.assert_array_equal(ep.steps["action"], eps[1].steps["action"])


def test_episode_source_agrees_with_tfds_data_sources(donkey):
    """TFDS's own random-access reader (``as_data_source``, ArrayRecord + its numpy decoders) and
    EpisodeSource see the same episodes in the same order, pixel for pixel."""
    tfds = pytest.importorskip("tensorflow_datasets")
    theirs = tfds.builder_from_directory(str(donkey)).as_data_source(split="train")
    ours = L.EpisodeSource(donkey)
    assert len(theirs) == len(ours) == 6
    for i in range(len(ours)):
        ep, ex = ours[i], theirs[i]
        assert len(ex["steps"]) == len(ep)
        assert ex["episode_metadata"]["episode_id"].decode() == ep.episode_id
        for t in range(len(ep)):
            step = ex["steps"][t]
            np.testing.assert_array_equal(step["action"], ep.steps["action"][t])
            assert bool(step["is_first"]) == bool(ep.steps["is_first"][t])
            assert bool(step["is_last"]) == bool(ep.steps["is_last"][t])
            np.testing.assert_array_equal(step["observation"]["image"],
                                          L.decode_image(ep.steps["observation/image"][t]))


@pytest.mark.skipif(not BRIDGE.is_dir(), reason="shared Open-X fixture not present")
def test_open_x_bridge_windows_after_conversion(tmp_path):
    """Open-X data (Octo's bridge subset) -> rldskit convert -> windows: each window equals the
    one built from the source episodes read by ``rldskit.open``."""
    from rldskit.validation import Gates

    res = convert([BRIDGE], tmp_path / "data", name="bridge", runner="inline", last_step="valid",
                  formats=("array_record",), gates=Gates(severity={"FLAG_IS_LAST": "warning"}))
    ref = Reference(res.path)
    image = "observation/image_0"
    assert image in ref.spec.image_paths
    ld = L.windows(res.path, history=2, action_horizon=4, batch_size=16, seed=0, num_epochs=1,
                   observation_keys=[image, "observation/state"], goal="last")
    n = 0
    for batch in ld:
        for i, g in enumerate(batch["index"]):
            want = ref.window(int(g), 2, 4, [image, "observation/state"])
            for k in (image, "observation/state", "action", "observation_is_pad", "action_is_pad"):
                np.testing.assert_array_equal(batch[k][i], want[k], err_msg=k)
            e, _ = ref.where[int(g)]
            last = ref.episodes[e].steps[image][-1]
            np.testing.assert_array_equal(batch["goal/" + image][i], L.decode_image(last))
            n += 1
    assert ld.num_samples == 250 and n == 16 * (250 // 16)  # the train split: 25 episodes of 10 steps


# =========================================================================== errors


def _run_with_timeout(fn, seconds: float):
    """Run ``fn`` in a daemon thread; return what it raised (None if nothing); fail on a hang."""
    box: dict = {}

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"still running after {seconds} s: a hang"
    return box.get("error")


def _corrupt_copy(donkey: Path, dst: Path) -> tuple[Path, int]:
    """Copy the dataset and flip one byte of a step file so exactly one record is corrupt."""
    shutil.copytree(donkey, dst)
    f = sorted((dst / "steps").iterdir())[0]
    original = f.read_bytes()
    for offset in range(1500, len(original) - 1, 97):  # past the first records; the tail is padding
        data = bytearray(original)
        data[offset] ^= 0xFF
        f.write_bytes(bytes(data))
        ok, problems = verify_arrayrecord(f)
        if len(problems) == 1 and problems[0].index is not None:
            return f, problems[0].index
    raise AssertionError("no single byte flip made one record corrupt")


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_flipped_byte_raises_an_error_naming_file_and_record(donkey, tmp_path, workers):
    path, bad = _corrupt_copy(donkey, tmp_path / "ds")

    def run():
        with L.steps(tmp_path / "ds", batch_size=4, shuffle=False, drop_remainder=False, worker_count=workers) as ld:
            for _ in ld:
                pass

    err = _run_with_timeout(run, 60)
    assert isinstance(err, L.StepRecordCorruption) and isinstance(err, ArrayRecordCorruption), repr(err)
    assert str(path) in str(err) and f"record {bad}" in str(err)
    assert err.path == str(path) and err.index == bad
    assert "episode ep_" in str(err)
    # low-dim windows never touch the file
    assert _indices(L.windows(tmp_path / "ds", batch_size=4, decode_images=False, drop_remainder=False))


def test_an_undecodable_record_raises_an_error_naming_file_and_record(donkey, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(donkey, dst)
    f = sorted((dst / "steps").iterdir())[0]
    with ArrayRecordShardReader(f) as r:
        records = list(r)
    records[2] = b"\x0a\x05garbage"
    with ArrayRecordShardWriter(f, compression="zstd") as w:
        for rec in records:
            w.write(rec)
    index = L.StepIndex.load(dst)
    g = next(int(g) for g in range(index.num_steps) if index.record_of(g) == (0, 2))
    with pytest.raises(L.StepDecodeError, match=rf"{f.name} record 2: .*global step {g}") as info:
        L.windows(dst, batch_size=None, shuffle=False).maker(g)
    assert isinstance(info.value, ExampleDecodeError)
    again = pickle.loads(pickle.dumps(info.value))  # crosses process boundaries intact
    assert str(again) == str(info.value) and again.index == 2
    with pytest.raises(L.StepDecodeError, match="record 2"):
        L.StepSource(dst)[g]


# =========================================================================== imports


def test_rldskit_loaders_is_lazy():
    code = ("import sys, rldskit, rldskit.loaders; assert 'grain' not in sys.modules; "
            "rldskit.loaders.windows; assert 'grain' in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# =========================================================================== goals and checkpoints


@pytest.mark.parametrize("goal", ["last", "uniform"])
def test_goals_come_from_the_same_episode_at_or_after_t(donkey, donkey_ref, goal):
    ld = L.windows(donkey, history=2, action_horizon=2, batch_size=5, seed=3, num_epochs=3, goal=goal,
                   drop_remainder=False)
    samples = _samples(ld)
    assert len(samples) == 3 * len(donkey_ref.where)
    goals: dict[int, set[int]] = {}
    for s in samples:
        e, t = donkey_ref.where[int(s["index"])]
        ep = donkey_ref.episodes[e]
        gt = int(s["goal_frame_index"])
        assert (gt == len(ep) - 1) if goal == "last" else (t <= gt < len(ep))
        np.testing.assert_array_equal(s["goal/observation/image"], donkey_ref.image(ep.steps["observation/image"][gt]))
        goals.setdefault(int(s["index"]), set()).add(gt)
    if goal == "uniform":  # new draws each epoch, spread over the rest of the episode
        assert any(len(v) > 1 for v in goals.values())
        firsts = [g for g, (e, t) in enumerate(donkey_ref.where) if t == 0 and len(donkey_ref.episodes[e]) == 12]
        assert len(set().union(*(goals[g] for g in firsts))) > 4


def test_goal_keys_and_bad_goal_options(donkey, donkey_ref):
    ld = L.windows(donkey, batch_size=4, goal="last", goal_keys=["observation/image", "action"], seed=1)
    b = next(iter(ld))
    for i, g in enumerate(b["index"]):
        e, _ = donkey_ref.where[int(g)]
        ep = donkey_ref.episodes[e]
        np.testing.assert_array_equal(b["goal/action"][i], ep.steps["action"][-1])
    assert b["goal/observation/image"].shape == (4, *CAM)
    with pytest.raises(ValueError, match="goal must be one of"):
        L.windows(donkey, goal="random")
    with pytest.raises(ValueError, match="need goal"):
        L.windows(donkey, goal_keys=["action"])
    with pytest.raises(KeyError, match="no step feature"):
        L.windows(donkey, goal="last", goal_keys=["observation/nope"])


def test_uniform_goals_resume_exactly(donkey):
    kw = dict(history=2, action_horizon=3, batch_size=4, seed=9, num_epochs=2, goal="uniform", decode_images=False)
    full = [b["goal_frame_index"].tolist() for b in L.windows(donkey, **kw)]
    first = L.windows(donkey, **kw)
    head = [b["goal_frame_index"].tolist() for _, b in zip(range(7), first)]
    resumed = L.windows(donkey, **kw)
    resumed.set_state(first.get_state())
    assert head + [b["goal_frame_index"].tolist() for b in resumed] == full
    assert full != [b["goal_frame_index"].tolist() for b in L.windows(donkey, **dict(kw, seed=10))]


def test_orbax_checkpoint_manager_saves_and_restores_the_loader(donkey, tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    import grain

    kw = dict(batch_size=3, seed=4, num_epochs=2, decode_images=False)
    full = [b["index"].tolist() for b in L.steps(donkey, **kw)]
    ld = L.steps(donkey, **kw)
    head = [b["index"].tolist() for _, b in zip(range(4), ld)]
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("loader",)) as mngr:
        mngr.save(4, args=ocp.args.Composite(loader=grain.checkpoint.CheckpointSave(ld)))
        mngr.wait_until_finished()
    saved = tmp_path / "ckpt" / "4" / "loader" / "process_0-of-1.json"
    assert json.loads(saved.read_text())["next_batch"] == 4
    fresh = L.steps(donkey, **kw)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("loader",)) as mngr:
        mngr.restore(4, args=ocp.args.Composite(loader=grain.checkpoint.CheckpointRestore(fresh)))
    assert head + [b["index"].tolist() for b in fresh] == full
    wrong = L.steps(donkey, **dict(kw, seed=5))
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("loader",)) as mngr:
        with pytest.raises(ValueError, match="another order"):
            mngr.restore(4, args=ocp.args.Composite(loader=grain.checkpoint.CheckpointRestore(wrong)))


# =========================================================================== the config object and the parts (issue 13)


def test_config_form_gives_the_same_batches_and_state_as_the_keywords(donkey):
    kw = dict(history=2, action_horizon=3, batch_size=4, seed=11, num_epochs=2, goal="uniform", normalize="stats",
              split="train[:80%]", drop_remainder=False)
    a = L.windows(donkey, num_threads=0, **kw)
    cfg = L.LoaderConfig(**kw)
    b = L.windows(donkey, config=cfg, num_threads=2)  # threads change speed, never the batches
    assert b.config is cfg and a.config == cfg
    assert a.get_state() == b.get_state()
    _assert_batches_equal(_collect(a), _collect(b))
    s = L.steps(donkey, batch_size=3, seed=2, keys=["action", "reward"], decode_images=False)
    c = L.steps(donkey, config=L.LoaderConfig(kind="steps", batch_size=3, seed=2, keys=("action", "reward"),
                                              decode_images=False))
    assert s.get_state() == c.get_state()
    _assert_batches_equal(_collect(s), _collect(c))


def test_config_is_frozen_validated_and_not_mixed_with_keywords(donkey):
    import dataclasses

    cfg = L.LoaderConfig(history=2, observation_keys=["observation/image"], resize=[12, 16])
    assert cfg.observation_keys == ("observation/image",) and cfg.resize == (12, 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.history = 3  # type: ignore[misc]
    assert dataclasses.replace(cfg, seed=4).seed == 4 and cfg.seed == 0
    for bad, match in ((dict(batch_size=0), "batch_size"), (dict(process_index=2, process_count=2), "process_index"),
                       (dict(num_epochs=0), "num_epochs"), (dict(seed=-1), "seed"), (dict(history=0), "history"),
                       (dict(goal="random"), "goal must be one of"), (dict(goal_keys=["action"]), "need goal"),
                       (dict(normalize="zscore"), "normalize must be one of"), (dict(kind="episodes"), "kind"),
                       (dict(kind="steps", history=2), "windows only"), (dict(keys=["action"]), "kind='steps'")):
        with pytest.raises(ValueError, match=match):
            L.LoaderConfig(**bad)
    with pytest.raises(TypeError, match="either config= or the keywords"):
        L.windows(donkey, history=3, config=cfg)
    with pytest.raises(ValueError, match="config.kind is 'windows'"):
        L.steps(donkey, config=cfg)


def test_fingerprint_follows_the_order_fields_only(donkey):
    base = L.windows(donkey, config=L.LoaderConfig(history=2, batch_size=4, seed=3, num_epochs=2))
    other_shape = L.windows(donkey, config=L.LoaderConfig(history=1, batch_size=4, seed=3, num_epochs=2,
                                                          decode_images=False, resize=(12, 16), debug_keys=True))
    assert base.get_state() == other_shape.get_state()  # same order, other features: the state carries over
    next(iter(base))
    other_shape.set_state(base.get_state())
    np.testing.assert_array_equal(next(iter(other_shape))["index"], next(iter(base))["index"])
    reseeded = L.windows(donkey, config=L.LoaderConfig(history=2, batch_size=4, seed=4, num_epochs=2))
    assert reseeded.get_state()["fingerprint"] != base.get_state()["fingerprint"]


def test_public_split_selection(donkey):
    from rldskit.formats.step_index import resolve_split_slice, select_episodes

    index = L.StepIndex.load(donkey)
    n = index.num_episodes
    assert list(resolve_split_slice(slice(None, "50%"), n, "train[:50%]")) == list(range(n // 2))
    assert list(resolve_split_slice(slice("-1", None), n, "train[-1:]")) == [n - 1]
    np.testing.assert_array_equal(select_episodes(index, "train[1:3]"), [1, 2])
    np.testing.assert_array_equal(select_episodes(index, "train", lambda row: row["length"] > 2), [0, 1, 2])
    with pytest.raises(ValueError, match="not a selection of the index's split"):
        select_episodes(index, "test[:10%]")
    with pytest.raises(ValueError, match="outside -100%..100%"):
        resolve_split_slice(slice("150%", None), n, "train[150%:]")


def test_step_fields_parse_the_same_with_and_without_protobuf(arm, monkeypatch):
    from rldskit.formats import tfexample

    source = L.StepSource(arm)
    spec = source.index.spec
    keys = [*spec.image_paths, "language_instruction"]
    steps = np.arange(source.index.num_steps)
    raw = source.read_records(steps)
    fast = [tfexample.decode_step_fields(r, keys, spec) for r in raw]
    monkeypatch.setattr(tfexample, "_EXAMPLE_CLASS", False)  # as without protobuf: this module's parser
    slow = [tfexample.decode_step_fields(r, keys, spec) for r in raw]
    assert fast == slow
    full = [{k: d[k] for k in keys} for d in (tfexample.decode_step(r, spec) for r in raw)]
    assert fast == full and any(d["observation/images/wrist"] == b"" for d in fast)
    with pytest.raises(ExampleDecodeError, match="'observation/nope' is absent"):
        tfexample.decode_step_fields(raw[0], ["observation/nope"], spec)


def test_feature_moments_are_the_one_statistics_computation(arm):
    from rldskit.loaders.normalize import feature_moments

    index = L.StepIndex.load(arm)
    st = L.compute_stats(index)
    for key, s in st.items():
        present = index.columns.get(key + "_present")
        assert feature_moments(index.columns[key], present) == s
    x = np.array([[1.0, np.nan], [3.0, np.inf], [5.0, np.nan]])
    m = feature_moments(x, finite_only=True)
    assert m["count"] == 3 and m["mean"] == [3.0, 0.0] and m["std"][1] == 1.0 and m["max"] == [5.0, 0.0]
    np.testing.assert_allclose(m["std"][0], np.std([1.0, 3.0, 5.0]))
    assert np.isnan(feature_moments(x)["mean"][1])  # the loaders' convention: every value counts


def test_decode_image_is_the_one_codec():
    from rldskit import images

    assert L.decode_image is images.decode


def test_index_sources_and_statistics_do_not_import_grain(donkey):
    code = ("import sys; from rldskit.loaders import StepIndex, StepSource, compute_stats, Normalizer, LoaderConfig; "
            f"ix = StepIndex.load({str(donkey)!r}); StepSource(ix)[0]; compute_stats(ix); LoaderConfig(history=2); "
            "from rldskit.loaders.grain import StepIndex as S2; assert S2 is StepIndex; "
            "assert 'grain' not in sys.modules, 'grain'; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
