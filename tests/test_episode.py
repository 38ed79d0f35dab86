"""Episode: the columnar container, its RLDS flags, construction from step dicts (with and
without a spec), comparison, and lazily read frames."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from fuzzing import examples

from rldskit.episode import Episode, LazyFrames, assert_episodes_equal, flatten_step, nest, rlds_flags
from rldskit.formats.capture_dir import read_episode
from rldskit.spec import PRESENT_SUFFIX
from rldskit.synth import encode_image, synth_steps
from rldskit.validation import validate


def _columns(T: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(T)
    return {
        "observation/state": rng.normal(size=(T, 3)).astype(np.float32),
        "observation/camera/front": np.array([bytes([i]) * (i + 1) for i in range(T)], dtype=object),
        "action": rng.normal(size=(T, 2)).astype(np.float32),
        "reward": rng.normal(size=T).astype(np.float32),
        "language_instruction": np.array([f"say {i}" for i in range(T)], dtype=object),
        **rlds_flags(T, terminal=True),
    }


def _copy(ep: Episode) -> Episode:
    return Episode(dict(ep.metadata), {k: np.array(v, copy=True) for k, v in ep.steps.items()})


# =========================================================================== sequence of steps


def test_len_getitem_iter_give_nested_step_dicts():
    cols = _columns(5)
    ep = Episode({"episode_id": "e1"}, cols)
    assert len(ep) == 5
    assert ep.episode_id == "e1"
    step = ep[2]
    assert set(step) == {"observation", "action", "reward", "language_instruction", "is_first", "is_last", "is_terminal"}
    assert set(step["observation"]) == {"state", "camera"}
    np.testing.assert_array_equal(step["observation"]["state"], cols["observation/state"][2])
    assert step["observation"]["camera"]["front"] == cols["observation/camera/front"][2]
    assert step["language_instruction"] == "say 2"
    assert step["reward"] == cols["reward"][2]
    np.testing.assert_array_equal(ep[-1]["action"], cols["action"][4])
    steps = list(ep)
    assert len(steps) == 5
    for i, s in enumerate(steps):
        assert flatten_step(s).keys() == cols.keys()
        for k, v in flatten_step(s).items():
            np.testing.assert_array_equal(v, cols[k][i])
    with pytest.raises(IndexError):
        ep[5]
    with pytest.raises(TypeError, match="slice"):
        ep[1:3]


def test_slice_keeps_columns_and_metadata():
    cols = _columns(6)
    ep = Episode({"episode_id": "e"}, cols)
    part = ep.slice(2, 5)
    assert len(part) == 3 and part.metadata == ep.metadata
    np.testing.assert_array_equal(part.steps["action"], cols["action"][2:5])
    assert list(part.steps["observation/camera/front"]) == list(cols["observation/camera/front"][2:5])


def test_columns_of_different_length_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        Episode({"episode_id": "bad"}, {"a": np.zeros(3), "b": np.zeros(4)})


def test_empty_episode():
    ep = Episode({}, {})
    assert len(ep) == 0 and list(ep) == [] and not ep.is_terminal


def test_nest_and_flatten_are_inverse():
    flat = {"observation/xr/head_pose": 1, "observation/image": 2, "action": 3}
    nested = nest(flat)
    assert nested == {"observation": {"xr": {"head_pose": 1}, "image": 2}, "action": 3}
    assert flatten_step(nested) == flat


# =========================================================================== RLDS flags


@settings(max_examples=examples(60), deadline=None)
@given(T=st.integers(min_value=0, max_value=300), terminal=st.booleans())
def test_rlds_flags_semantics(T, terminal):
    f = rlds_flags(T, terminal)
    assert set(f) == {"is_first", "is_last", "is_terminal"}
    for col in f.values():
        assert col.dtype == bool and col.shape == (T,)
    assert f["is_first"].sum() == min(T, 1) and f["is_last"].sum() == min(T, 1)
    if T:
        assert f["is_first"][0] and f["is_last"][T - 1]
    # is_terminal only where is_last, and only when the episode really terminated
    assert not (f["is_terminal"] & ~f["is_last"]).any()
    assert f["is_terminal"].any() == (terminal and T > 0)
    ep = Episode({}, f)
    assert ep.is_terminal == (terminal and T > 0)


# =========================================================================== from_steps


def test_from_steps_without_spec_derives_flags():
    steps = [{"observation": {"x": float(i)}, "action": [i, -i]} for i in range(4)]
    with pytest.raises(ValueError, match="terminal"):
        Episode.from_steps(steps)
    for terminal in (True, False):
        ep = Episode.from_steps(steps, {"episode_id": "s"}, terminal=terminal)
        assert len(ep) == 4 and ep.metadata == {"episode_id": "s"}
        np.testing.assert_array_equal(ep.steps["observation/x"], [0.0, 1.0, 2.0, 3.0])
        np.testing.assert_array_equal(ep.steps["action"], [[i, -i] for i in range(4)])
        for k, v in rlds_flags(4, terminal).items():
            np.testing.assert_array_equal(ep.steps[k], v)
        assert ep.is_terminal is terminal


def test_from_steps_uses_flags_the_steps_carry():
    flags = rlds_flags(3, terminal=True)
    steps = [{"a": i, **{k: bool(v[i]) for k, v in flags.items()}} for i in range(3)]
    ep = Episode.from_steps(steps)  # no terminal= needed: the steps say it
    for k, v in flags.items():
        np.testing.assert_array_equal(ep.steps[k], v)
    assert ep.is_terminal


def _log_step_to_step(kw: dict) -> dict:
    """synth's log_step keyword arguments -> one nested step dict of the spec's tree."""
    step = {"observation": kw["observation"], "action": kw["action"], "reward": kw["reward"],
            "discount": kw["discount"], "timestamp": kw["timestamps"]}
    step.update(kw["extras"])
    return step


def test_from_steps_with_spec_types_columns_and_masks_optional_leaves(small_donkey_spec):
    spec = small_donkey_spec
    plan = synth_steps(spec, 12, seed=3)
    steps = [_log_step_to_step(kw) for kw in plan]
    # make the optional policy_action present on some steps and absent on others
    for i, s in enumerate(steps):
        s["policy_action"] = np.array([0.1 * i, 0.2], np.float32) if i % 3 == 0 else None
    ep = Episode.from_steps(steps, {"episode_id": "typed"}, spec=spec, terminal=False)
    assert set(ep.steps) == set(spec.step_leaves)
    assert len(ep) == 12
    for path, leaf in spec.step_leaves.items():
        col = ep.steps[path]
        if leaf.kind in ("image", "text") or leaf.dtype == "string":
            assert col.dtype == object
        else:
            assert col.dtype == leaf.np_dtype, path
            assert col.shape == (12, *leaf.shape), path
    present = ep.steps["policy_action" + PRESENT_SUFFIX]
    np.testing.assert_array_equal(present, [i % 3 == 0 for i in range(12)])
    pa = ep.steps["policy_action"]
    np.testing.assert_array_equal(pa[~present], np.zeros((int((~present).sum()), 2), np.float32))  # the placeholder
    np.testing.assert_allclose(pa[present][:, 0], [0.1 * i for i in range(0, 12, 3)], rtol=1e-6)
    np.testing.assert_array_equal(ep.steps["timestamp/control"], [kw["timestamps"]["control"] for kw in plan])
    assert ep.steps["observation/image"][4] == plan[4]["observation"]["image"]
    assert not ep.is_terminal
    # what from_steps builds is a valid episode of that spec
    report = validate(ep, spec)
    assert report.ok, [i.message for i in report.errors]


def test_from_steps_with_spec_respects_an_explicit_present_mask(small_donkey_spec):
    spec = small_donkey_spec
    steps = [_log_step_to_step(kw) for kw in synth_steps(spec, 4, seed=0)]
    for s in steps:
        s["policy_action"] = [0.0, 0.0]
        s["policy_action_present"] = False  # a recorded "absent" with its placeholder value
    ep = Episode.from_steps(steps, spec=spec, terminal=True)
    assert not ep.steps["policy_action_present"].any()
    assert ep.is_terminal


@pytest.mark.parametrize("path", ["discount", "action", "timestamp/camera", "control_mode", "observation/image"])
def test_from_steps_with_spec_refuses_a_missing_required_value(small_donkey_spec, path):
    steps = [_log_step_to_step(kw) for kw in synth_steps(small_donkey_spec, 5, seed=0)]
    *parents, last = path.split("/")
    node = steps[3]
    for p in parents:
        node = node[p]
    del node[last]
    with pytest.raises(ValueError, match=f"step 3: {path} is required"):
        Episode.from_steps(steps, spec=small_donkey_spec, terminal=False)
    # without a spec nothing is required: the column is whatever the steps hold
    assert len(Episode.from_steps(steps, terminal=False)) == 5


def test_steps_from_a_read_episode_rebuild_the_same_episode(small_donkey_spec, synthetic_datasets):
    spec = small_donkey_spec
    folder = synthetic_datasets[spec.id]
    for ep_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        ep = read_episode(ep_dir, spec, load_frames=True)
        again = Episode.from_steps(list(ep), ep.metadata, spec=spec)
        assert_episodes_equal(ep, again)
        assert again.is_terminal == ep.is_terminal


# =========================================================================== comparison


def test_equal_episodes_have_no_diff():
    ep = Episode({"episode_id": "a", "tags": ["x"]}, _columns(5))
    other = _copy(ep)
    assert ep.diff(other) == [] and ep.equals(other) and ep == other
    assert_episodes_equal(ep, other)
    assert ep != "not an episode"


def test_a_changed_value_is_found_at_its_step():
    ep = Episode({"episode_id": "a"}, _columns(6))
    other = _copy(ep)
    other.steps["action"][4, 1] += 0.5
    d = ep.diff(other)
    assert len(d) == 1 and d[0].startswith("action at step 4")
    assert not ep.equals(other) and ep != other
    with pytest.raises(AssertionError, match="action at step 4"):
        assert_episodes_equal(ep, other)
    # within atol it is equal, beyond it it is not
    small = _copy(ep)
    small.steps["reward"][2] += 1e-4
    assert not ep.equals(small)
    assert ep.equals(small, atol=1e-3)
    assert not ep.equals(small, atol=1e-6)


def test_changed_bytes_and_strings_are_found():
    ep = Episode({}, _columns(4))
    other = _copy(ep)
    other.steps["observation/camera/front"][3] = b"changed"
    other.steps["language_instruction"][1] = "something else"
    d = ep.diff(other)
    assert any(x.startswith("observation/camera/front at step 3") for x in d)
    assert any(x.startswith("language_instruction at step 1") for x in d)


def test_a_changed_or_missing_metadata_key_is_found():
    ep = Episode({"episode_id": "a", "environment_id": "track"}, _columns(3))
    other = _copy(ep)
    other.metadata["environment_id"] = "lab"
    assert ep.diff(other) == ["metadata['environment_id']: 'track' != 'lab'"]
    other = _copy(ep)
    del other.metadata["environment_id"]
    d = ep.diff(other)
    assert len(d) == 1 and "environment_id" in d[0] and "<absent>" in d[0]
    with pytest.raises(AssertionError, match="environment_id"):
        assert_episodes_equal(ep, other)


def test_array_and_nan_metadata_compare_by_value():
    meta = {"episode_id": "a", "calibration": np.array([1.0, np.nan, 3.0]), "score": float("nan"),
            "tags": ["x", "y"]}
    ep = Episode(meta, _columns(3))
    other = Episode({**meta, "calibration": meta["calibration"].copy(), "score": float("nan"), "tags": ["x", "y"]},
                    _columns(3))
    assert ep.diff(other) == []
    other.metadata["calibration"] = np.array([1.0, np.nan, 4.0])
    d = ep.diff(other)
    assert len(d) == 1 and "calibration" in d[0]


def test_a_length_difference_is_found():
    ep = Episode({"episode_id": "a"}, _columns(5))
    shorter = ep.slice(0, 4)
    d = ep.diff(shorter)
    assert d == ["length 5 != 4"]
    with pytest.raises(AssertionError, match="length 5 != 4"):
        assert_episodes_equal(ep, shorter)


def test_a_column_in_only_one_episode_is_found():
    ep = Episode({}, _columns(3))
    other = _copy(ep)
    del other.steps["reward"]
    assert ep.diff(other) == ["column 'reward' only in first"]
    assert other.diff(ep) == ["column 'reward' only in second"]


def test_nan_equals_nan_in_columns():
    cols = _columns(4)
    cols["reward"][1] = np.nan
    cols["observation/state"][2, 0] = np.nan
    ep = Episode({}, cols)
    other = _copy(ep)
    assert ep.equals(other) and ep.equals(other, atol=1e-9)
    other.steps["reward"][1] = 0.0  # NaN vs a number is a difference
    d = ep.diff(other)
    assert len(d) == 1 and d[0].startswith("reward at step 1:")
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.array([1.0, np.nan]), np.array([2.0])]
    again = np.empty(2, dtype=object)
    again[:] = [np.array([1.0, np.nan]), np.array([2.0])]
    assert Episode({}, {"r": ragged}).equals(Episode({}, {"r": again}))


def test_every_difference_is_listed():
    ep = Episode({"episode_id": "a"}, _columns(4))
    other = _copy(ep)
    other.metadata["episode_id"] = "b"
    other.steps["reward"][0] += 1
    other.steps["is_terminal"][-1] = False
    with pytest.raises(AssertionError) as e:
        assert_episodes_equal(ep, other)
    msg = str(e.value)
    assert "episode_id" in msg and "reward at step 0" in msg and "is_terminal at step 3" in msg


# =========================================================================== LazyFrames


def test_lazy_frames_read_bytes_only_when_asked(tmp_path):
    paths = [tmp_path / f"{i:06d}.jpg" for i in range(3)]
    frames = LazyFrames(paths)  # nothing exists yet: construction does no I/O
    assert len(frames) == 3
    for i, p in enumerate(paths):
        p.write_bytes(encode_image(np.full((4, 4, 3), 40 * i, np.uint8)))
    assert frames[1] == paths[1].read_bytes()
    paths[1].write_bytes(b"rewritten")  # each access reads the file again
    assert frames[1] == b"rewritten"
    sub = frames[1:]
    assert isinstance(sub, LazyFrames) and len(sub) == 2 and sub[0] == b"rewritten"
    arr = frames.to_numpy()
    assert arr.dtype == object and list(arr) == [p.read_bytes() for p in paths]
    paths[2].unlink()
    with pytest.raises(FileNotFoundError):
        frames[2]
    assert frames[0] == paths[0].read_bytes()  # the others still read


def test_an_episode_with_lazy_frames_equals_the_loaded_one(small_donkey_spec, synthetic_datasets, tmp_path):
    spec = small_donkey_spec
    ep_dir = sorted(p for p in synthetic_datasets[spec.id].iterdir() if p.is_dir())[0]
    lazy = read_episode(ep_dir, spec)
    loaded = read_episode(ep_dir, spec, load_frames=True)
    col = lazy.steps["observation/image"]
    assert isinstance(col, LazyFrames)
    assert all(p.is_relative_to(ep_dir) for p in col.paths)
    assert isinstance(loaded.steps["observation/image"], np.ndarray)
    assert_episodes_equal(lazy, loaded)
    assert lazy[3]["observation"]["image"] == loaded.steps["observation/image"][3]
    assert isinstance(lazy.slice(2, 5).steps["observation/image"], LazyFrames)
    # a changed frame on disk is seen by the lazy episode, so the two now differ
    import shutil

    copy_dir = tmp_path / ep_dir.name
    shutil.copytree(ep_dir, copy_dir)
    lazy_copy = read_episode(copy_dir, spec)
    lazy_copy.steps["observation/image"].paths[5].write_bytes(encode_image(np.zeros((24, 32, 3), np.uint8)))
    d = loaded.diff(lazy_copy)
    assert len(d) == 1 and d[0].startswith("observation/image at step 5")
