"""EpisodeLogger writes the capture layout; read_episode gives back exactly what was logged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers_capture import (SMALL, arm_spec, assert_columns_equal, chunk_files, decode_image, donkey_spec,
                             expected_columns, find, inline_frames, jpeg_bytes, plan, png_bytes, read_lines,
                             read_meta, record, with_flags, write_single_file, xr_spec)
from rldskit.capture import EpisodeLogger
from rldskit.episode import LazyFrames
from rldskit.formats.capture_dir import EpisodeError, read_episode, scan_episode
from rldskit.spec import EpisodeSpec, load_spec
from rldskit.validation import Gates, validate, validate_paths


def rlds_donkey_spec() -> EpisodeSpec:
    d = donkey_spec().to_dict()
    d["last_step"] = "rlds"
    return EpisodeSpec.from_dict(d)


def png_donkey_spec() -> EpisodeSpec:
    d = donkey_spec().to_dict()
    d["steps"]["observation"]["image"]["encoding"] = "png"
    return EpisodeSpec.from_dict(d)


# =========================================================================== layout


def test_layout_chunks_frames_schema_and_metadata(tmp_path):
    spec = donkey_spec()
    steps = plan(spec, 25, seed=3)
    ep = record(tmp_path, spec, steps, terminal=True, episode_id="ep_a", chunk_steps=10)
    assert ep == tmp_path / "ep_a"
    assert json.loads((tmp_path / "schema.json").read_text()) == spec.to_dict()
    assert [p.name for p in chunk_files(ep)] == ["000000.jsonl", "000010.jsonl", "000020.jsonl"]
    sizes = [len(p.read_bytes().splitlines()) for p in chunk_files(ep)]
    assert sizes == [10, 10, 5]
    frames = sorted(p.name for p in (ep / "frames" / "image").iterdir())
    assert frames == [f"{i:06d}.jpg" for i in range(25)]
    for i in (0, 13, 24):
        assert (ep / "frames" / "image" / f"{i:06d}.jpg").read_bytes() == steps[i]["observation"]["image"]
    lines = read_lines(ep)
    assert [line["observation"]["image"] for line in lines] == [f"frames/image/{i:06d}.jpg" for i in range(25)]
    assert all(not ({"is_first", "is_last", "is_terminal"} & set(line)) for line in lines)  # flags are derived
    meta = read_meta(ep)
    assert meta["status"] == "complete"
    assert meta["episode_id"] == "ep_a"
    assert meta["schema"] == {"name": "pi5_donkey", "version": "1.0.0"}
    assert meta["end"]["num_steps"] == 25 and meta["end"]["terminal"] is True
    assert not list(ep.rglob("*.tmp"))


def test_metadata_is_recording_until_the_end_and_chunks_rotate_live(tmp_path):
    spec = donkey_spec()
    steps = plan(spec, 12, seed=1)
    logger = EpisodeLogger(tmp_path, spec, chunk_steps=4, compress=True)
    logger.start_episode(episode_id="live")
    ep = tmp_path / "live"
    meta = read_meta(ep)
    assert meta["status"] == "recording" and "end" not in meta
    assert logger.recording and logger.episode_path == ep
    names = []
    for kw in steps[:9]:
        logger.log_step(**kw)
        names.append([p.name for p in chunk_files(ep)])
    # the open chunk is plain JSONL, closed ones are compressed, named by their first step
    assert names[2] == ["000000.jsonl"]
    assert names[3] == ["000000.jsonl.zst"]
    assert names[4] == ["000000.jsonl.zst", "000004.jsonl"]
    assert names[8] == ["000000.jsonl.zst", "000004.jsonl.zst", "000008.jsonl"]
    assert read_meta(ep)["status"] == "recording"
    res = scan_episode(ep)
    assert find(res.issues, "EPISODE_UNFINISHED"), res.issues
    for kw in steps[9:]:
        logger.log_step(**kw)
    logger.end_episode(terminal=False)
    assert not logger.recording
    assert [p.name for p in chunk_files(ep)] == ["000000.jsonl.zst", "000004.jsonl.zst", "000008.jsonl.zst"]
    meta = read_meta(ep)
    assert meta["status"] == "complete" and meta["end"]["num_steps"] == 12 and meta["end"]["terminal"] is False
    assert_columns_equal(read_episode(ep, load_frames=True).steps, expected_columns(spec, steps, terminal=False))


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("durability", ["none", "chunk", "step"])
def test_compressed_and_durability_modes_read_back_identically(tmp_path, compress, durability):
    spec = donkey_spec()
    steps = plan(spec, 11, seed=5)
    ep = record(tmp_path, spec, steps, chunk_steps=4, compress=compress, durability=durability)
    suffix = ".jsonl.zst" if compress else ".jsonl"
    assert all(p.name.endswith(suffix) for p in chunk_files(ep)) and len(chunk_files(ep)) == 3
    assert_columns_equal(read_episode(ep, load_frames=True).steps, expected_columns(spec, steps, terminal=False))


# =========================================================================== round trip


@pytest.mark.parametrize("make_spec", [donkey_spec, arm_spec, xr_spec], ids=["donkey", "arm", "xr"])
@pytest.mark.parametrize("terminal", [False, True])
def test_read_episode_returns_exactly_what_was_logged(tmp_path, make_spec, terminal):
    spec = make_spec()
    steps = plan(spec, 23, seed=7)
    ep = record(tmp_path, spec, steps, terminal=terminal, chunk_steps=6)
    got = read_episode(ep, load_frames=True)
    want = expected_columns(spec, steps, terminal=terminal)
    assert_columns_equal(got.steps, want)
    assert len(got) == 23
    assert got.is_terminal is terminal
    assert np.flatnonzero(got.steps["is_first"]).tolist() == [0]
    assert np.flatnonzero(got.steps["is_last"]).tolist() == [22]
    assert np.flatnonzero(got.steps["is_terminal"]).tolist() == ([22] if terminal else [])
    assert got.metadata["episode_id"] == "ep0"
    assert got.metadata["tags"] == ["origin:test"]
    assert got.metadata["environment_id"] == "bench"
    rep = validate(got, spec, Gates(check_images=True))
    assert rep.ok and not rep.issues, rep.format_table()
    rep = validate_paths([tmp_path], gates=Gates(check_images=True))
    assert not rep.issues and rep.episodes == 1 and rep.steps == 23, rep.format_table()


def test_optional_signals_absent_become_placeholders_with_masks(tmp_path):
    spec = xr_spec()
    steps = plan(spec, 30, seed=2)
    # force some absences and presences so both show up
    steps[0]["observation"]["audio_level"] = None
    steps[1]["observation"]["audio_level"] = -12.5
    ep = record(tmp_path, spec, steps)
    lines = read_lines(ep)
    assert lines[0]["observation"]["audio_level"] is None
    got = read_episode(ep)
    assert got.steps["observation/audio_level_present"][:2].tolist() == [False, True]
    assert got.steps["observation/audio_level"][0] == np.float32(-120)  # the declared fill
    assert got.steps["observation/audio_level"][1] == np.float32(-12.5)


def test_lazy_frames_by_default_and_bytes_with_load_frames(tmp_path):
    spec = donkey_spec()
    steps = plan(spec, 5, seed=1)
    ep = record(tmp_path, spec, steps)
    lazy = read_episode(ep).steps["observation/image"]
    assert isinstance(lazy, LazyFrames) and len(lazy) == 5
    assert lazy[3] == steps[3]["observation"]["image"]
    eager = read_episode(ep, load_frames=True).steps["observation/image"]
    assert isinstance(eager, np.ndarray) and eager.dtype == object and eager[4] == steps[4]["observation"]["image"]


def test_integer_and_bool_leaves_keep_dtype(tmp_path):
    spec = EpisodeSpec.from_dict({
        "name": "ints", "version": "1.0.0", "last_step": "valid",
        "steps": {"observation": {"count": {"type": "scalar", "dtype": "int64"},
                                  "pix": {"type": "tensor", "shape": [2, 2], "dtype": "uint8"},
                                  "flag": {"type": "tensor", "shape": [3], "dtype": "bool"}},
                  "action": {"type": "tensor", "shape": [2], "dtype": "int32"}}})
    steps = [{"observation": {"count": 2**62 + i, "pix": np.full((2, 2), 250 + i, np.uint8), "flag": [True, False, i % 2 == 0]},
              "action": np.array([-(2**31), 2**31 - 1], dtype=np.int32)} for i in range(5)]
    ep = record(tmp_path, spec, steps)
    got = read_episode(ep)
    assert got.steps["observation/count"].dtype == np.int64 and got.steps["observation/count"][3] == 2**62 + 3
    assert got.steps["observation/pix"].dtype == np.uint8 and got.steps["observation/pix"][4, 1, 1] == 254
    assert got.steps["observation/flag"].dtype == bool and got.steps["observation/flag"][:, 2].tolist() == [True, False, True, False, True]
    assert got.steps["action"].dtype == np.int32 and got.steps["action"][0].tolist() == [-(2**31), 2**31 - 1]
    assert_columns_equal(got.steps, expected_columns(spec, steps, terminal=False))


# =========================================================================== images given as arrays


def test_uint8_array_images_are_encoded_as_jpeg(tmp_path):
    spec = donkey_spec()
    rng = np.random.default_rng(0)
    steps = plan(spec, 4, seed=1)
    arrays = []
    for kw in steps:
        arr = np.clip(rng.normal(128, 20, SMALL), 0, 255).astype(np.uint8)
        arrays.append(arr)
        kw["observation"] = {"image": arr}
    ep = record(tmp_path, spec, steps)
    got = read_episode(ep, load_frames=True)
    for i, arr in enumerate(arrays):
        data = got.steps["observation/image"][i]
        assert data[:2] == b"\xff\xd8"
        assert (ep / "frames" / "image" / f"{i:06d}.jpg").read_bytes() == data
        img = decode_image(data)
        assert img.shape == SMALL
        assert np.abs(img.astype(int) - arr.astype(int)).mean() < 20  # lossy but the same picture
    assert validate(got, spec, Gates(check_images=True)).ok


def test_uint8_array_images_are_encoded_losslessly_as_png(tmp_path):
    spec = png_donkey_spec()
    rng = np.random.default_rng(1)
    steps = plan(donkey_spec(), 3, seed=1)
    arrays = [rng.integers(0, 256, SMALL, dtype=np.uint8) for _ in steps]
    for kw, arr in zip(steps, arrays):
        kw["observation"] = {"image": arr}
    ep = record(tmp_path, spec, steps)
    assert sorted(p.name for p in (ep / "frames" / "image").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    got = read_episode(ep, load_frames=True)
    for i, arr in enumerate(arrays):
        assert np.array_equal(decode_image(got.steps["observation/image"][i]), arr)
    assert not validate(got, spec, Gates(check_images=True)).issues


# =========================================================================== log_step checks


def _open_logger(tmp_path, spec=None):
    spec = spec or donkey_spec()
    logger = EpisodeLogger(tmp_path, spec)
    logger.start_episode(episode_id="checks")
    good = plan(spec, 3, seed=0)
    logger.log_step(**good[0])
    logger.log_step(**good[1])
    return logger, good[2]


class Merge(dict):
    """A change merged into the good step's dict (plain dicts replace it)."""


def _with(kw, **changes):
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in kw.items()}
    for k, v in changes.items():
        if isinstance(v, Merge):
            out[k].update(v)
        else:
            out[k] = v
    return out


BAD_STEPS = {
    "action wrong shape": (dict(action=[0.1, 0.2, 0.3]), "action", "shape [2]"),
    "action scalar": (dict(action=0.5), "action", "shape [2]"),
    "action string": (dict(action="left"), "action", "float32"),
    "action ints for float are fine but text is not": (dict(action=["a", "b"]), "action", "float32"),
    "reward list": (dict(reward=[1.0, 2.0]), "reward", "shape []"),
    "discount missing": (dict(discount=None), "discount", "required"),
    "undeclared observation key": (dict(observation=Merge(lidar=[1.0])), "lidar", "undeclared"),
    "undeclared extra": (dict(extras={"control_mode": "user", "weather": "rain"}), "weather", "not declared"),
    "undeclared timestamp stream": (dict(timestamps={"control": 1.0, "gps": 2.0}), "gps", "not declared"),
    "timestamp not a number": (dict(timestamps=Merge(control="noon")), "timestamp/control", "number"),
    "missing required extra": (dict(extras={}), "control_mode", "required"),
    "text not in choices": (dict(extras={"control_mode": "autopilot"}), "control_mode", "one of"),
    "text not a string": (dict(extras={"control_mode": 3}), "control_mode", "string"),
    "png bytes for jpeg": (dict(observation={"image": png_bytes()}), "observation/image", "jpeg"),
    "garbage bytes": (dict(observation={"image": b"not an image at all"}), "observation/image", "jpeg"),
    "image wrong size array": (dict(observation={"image": np.zeros((12, 32, 3), np.uint8)}), "observation/image", "[24, 32, 3]"),
    "image 2-d array for RGB": (dict(observation={"image": np.zeros((24, 32), np.uint8)}), "observation/image", "[24, 32, 3]"),
    "image float array": (dict(observation={"image": np.zeros(SMALL, np.float32)}), "observation/image", "uint8"),
    "image missing": (dict(observation={}), "observation/image", "required"),
    "observation not a dict": (dict(observation=[1, 2]), "observation", "dict"),
    "float overflow": (dict(action=np.array([1e300, 0.0])), "action", "too large"),
}


@pytest.mark.parametrize("case", list(BAD_STEPS), ids=list(BAD_STEPS))
def test_log_step_rejects_bad_values_naming_step_and_field(tmp_path, case):
    changes, field, expect = BAD_STEPS[case]
    logger, kw = _open_logger(tmp_path)
    with pytest.raises(ValueError) as e:
        logger.log_step(**_with(kw, **changes))
    msg = str(e.value)
    assert "step 2" in msg and field in msg and expect in msg, msg
    # nothing of the rejected step reached the disk; the logger is still usable
    ep = logger.episode_path
    assert len(read_lines(ep)) == 2
    assert not (ep / "frames" / "image" / "000002.jpg").exists()
    assert logger.log_step(**kw) == 2
    logger.end_episode(terminal=False)
    assert len(read_episode(ep)) == 3


def _int_spec(dtype: str) -> EpisodeSpec:
    return EpisodeSpec.from_dict({"name": "i", "version": "1.0.0", "last_step": "valid",
                                  "steps": {"observation": {"v": {"type": "scalar", "dtype": dtype}},
                                            "action": {"type": "tensor", "shape": [1], "dtype": "float32"},
                                            "note": {"type": "text", "max_length": 8}}})


@pytest.mark.parametrize("dtype,value", [("uint8", 256), ("uint8", -1), ("int32", 2**31), ("int64", 2**63)])
def test_log_step_rejects_integers_outside_the_dtype(tmp_path, dtype, value):
    logger = EpisodeLogger(tmp_path, _int_spec(dtype))
    logger.start_episode(episode_id="ints")
    with pytest.raises(ValueError, match=r"step 0: observation/v"):
        logger.log_step(observation={"v": value}, action=[0.0], extras={"note": "x"})
    with pytest.raises(ValueError, match=r"step 0: observation/v"):
        logger.log_step(observation={"v": 1.5}, action=[0.0], extras={"note": "x"})  # a float for an int
    logger.log_step(observation={"v": 7}, action=[0.0], extras={"note": "x"})
    logger.end_episode(terminal=False)
    assert read_episode(tmp_path / "ints").steps["observation/v"].tolist() == [7]


def test_log_step_rejects_text_longer_than_max_length(tmp_path):
    logger = EpisodeLogger(tmp_path, _int_spec("int32"))
    logger.start_episode(episode_id="txt")
    with pytest.raises(ValueError, match=r"step 0: note .*max_length 8"):
        logger.log_step(observation={"v": 1}, action=[0.0], extras={"note": "x" * 9})
    logger.log_step(observation={"v": 1}, action=[0.0], extras={"note": "ünï😀"})
    logger.end_episode(terminal=True)
    assert read_episode(tmp_path / "txt").steps["note"].tolist() == ["ünï😀"]


def test_logger_state_errors(tmp_path):
    spec = donkey_spec()
    logger = EpisodeLogger(tmp_path, spec)
    kw = plan(spec, 1)[0]
    with pytest.raises(RuntimeError, match="start_episode"):
        logger.log_step(**kw)
    with pytest.raises(RuntimeError):
        logger.end_episode(terminal=False)
    with pytest.raises(ValueError, match="plain folder name"):
        logger.start_episode(episode_id="a/b")
    with pytest.raises(ValueError, match="not declared"):
        logger.start_episode(episode_id="m", metadata={"colour": "red"})
    logger.start_episode(episode_id="one")
    with pytest.raises(RuntimeError, match="still open"):
        logger.start_episode(episode_id="two")
    with pytest.raises(ValueError, match="at least one step"):
        logger.end_episode(terminal=False)
    with pytest.raises(TypeError):
        logger.end_episode(terminal=None)  # type: ignore[arg-type]
    logger.log_step(**kw)
    with pytest.raises(ValueError, match="not declared"):
        logger.end_episode(terminal=False, metadata={"colour": "red"})
    assert len(read_lines(tmp_path / "one")) == 1  # the rejected end did not append anything
    logger.end_episode(terminal=False, metadata={"vehicle_id": "car7"})
    assert read_episode(tmp_path / "one").metadata["vehicle_id"] == "car7"
    with pytest.raises(FileExistsError):
        logger.start_episode(episode_id="one")
    # another schema cannot be recorded into the same root
    with pytest.raises(ValueError, match="different folders"):
        EpisodeLogger(tmp_path, arm_spec())
    EpisodeLogger(tmp_path, spec)  # the same schema can


def test_close_leaves_the_episode_recording(tmp_path):
    spec = donkey_spec()
    steps = plan(spec, 4)
    with EpisodeLogger(tmp_path, spec) as logger:
        logger.start_episode(episode_id="open")
        for kw in steps:
            logger.log_step(**kw)
    assert read_meta(tmp_path / "open")["status"] == "recording"
    with pytest.raises(EpisodeError, match="EPISODE_UNFINISHED"):
        read_episode(tmp_path / "open")
    got = read_episode(tmp_path / "open", recover=True)
    assert len(got) == 4 and not got.steps["is_terminal"].any() and "recovered" in got.metadata["tags"]


# =========================================================================== final observation


@pytest.mark.parametrize("terminal", [False, True])
def test_final_observation_appends_an_rlds_final_step(tmp_path, terminal):
    spec = rlds_donkey_spec()
    steps = plan(spec, 6, seed=4)
    final = jpeg_bytes(value=40)
    ep = record(tmp_path, spec, steps, terminal=terminal, final_observation={"image": final},
                final_kwargs={"timestamps": {"control": 2e9, "camera": 2e9}, "extras": {"control_mode": "user"}})
    got = read_episode(ep, load_frames=True)
    assert len(got) == 7
    assert read_meta(ep)["end"]["num_steps"] == 7
    assert got.steps["observation/image"][6] == final
    assert got.steps["action"][6].tolist() == [0.0, 0.0]
    assert got.steps["reward"][6] == 0.0
    assert got.steps["discount"][6] == (0.0 if terminal else 1.0)
    assert got.steps["timestamp/control"][6] == 2e9
    assert np.flatnonzero(got.steps["is_last"]).tolist() == [6]
    assert got.steps["is_terminal"].tolist() == [False] * 6 + [terminal]
    assert_columns_equal({k: v[:6] if not isinstance(v, LazyFrames) else v for k, v in got.steps.items()
                          if k not in ("is_first", "is_last", "is_terminal")},
                         {k: v for k, v in expected_columns(spec, steps, terminal=terminal).items()
                          if k not in ("is_first", "is_last", "is_terminal")})


def test_final_observation_needs_the_rlds_last_step_convention(tmp_path):
    spec = donkey_spec()  # last_step='valid': every action is real, no observation-only final step
    logger = EpisodeLogger(tmp_path, spec)
    logger.start_episode(episode_id="v")
    logger.log_step(**plan(spec, 1)[0])
    with pytest.raises(ValueError, match="last_step"):
        logger.end_episode(terminal=True, final_observation={"image": jpeg_bytes()},
                           extras={"control_mode": "user"})
    assert len(read_lines(tmp_path / "v")) == 1
    logger.end_episode(terminal=True)
    assert len(read_episode(tmp_path / "v")) == 1


def test_final_observation_with_an_action_tree(tmp_path):
    spec = EpisodeSpec.from_dict({"name": "tree", "version": "1.0.0", "last_step": "rlds",
                                  "steps": {"observation": {"x": {"type": "scalar", "dtype": "float32"}},
                                            "action": {"arm": {"type": "tensor", "shape": [2], "dtype": "float64"},
                                                       "grip": {"type": "scalar", "dtype": "bool"}}}})
    logger = EpisodeLogger(tmp_path, spec)
    logger.start_episode(episode_id="t")
    logger.log_step(observation={"x": 1.0}, action={"arm": [0.5, -0.5], "grip": True}, reward=1.0)
    logger.end_episode(terminal=True, final_observation={"x": 2.0})
    got = read_episode(tmp_path / "t")
    assert got.steps["action/arm"].tolist() == [[0.5, -0.5], [0.0, 0.0]]
    assert got.steps["action/grip"].tolist() == [True, False]
    assert got.steps["is_terminal"].tolist() == [False, True]
    assert validate(got, spec).ok


# =========================================================================== unicode ids


def test_unicode_episode_id_round_trips(tmp_path):
    spec = donkey_spec()
    eid = "épisode_日本_🤖_שלום"
    ep = record(tmp_path, spec, plan(spec, 5), episode_id=eid)
    assert ep.name == eid
    assert read_episode(ep).metadata["episode_id"] == eid
    rep = validate_paths([tmp_path])
    assert not rep.issues, rep.format_table()


# =========================================================================== single-file episodes


@pytest.fixture
def logged(tmp_path):
    spec = donkey_spec()
    steps = plan(spec, 9, seed=11)
    ep = record(tmp_path / "cap", spec, steps, terminal=True)
    lines = inline_frames(ep, read_lines(ep), spec)
    meta = {k: v for k, v in read_meta(ep).items() if k not in ("status", "end")}
    return spec, steps, ep, lines, meta


@pytest.mark.parametrize("name", ["ep.json", "ep.jsonl", "ep.jsonl.zst"])
@pytest.mark.parametrize("terminal", [False, True])
def test_single_file_with_explicit_flags(tmp_path, logged, name, terminal):
    spec, steps, _ep, lines, meta = logged
    f = write_single_file(tmp_path / name, meta, with_flags(lines, terminal))
    res = scan_episode(f, spec)
    assert res.ok and res.status == "file" and not res.issues, res.issues
    got = read_episode(f, spec)
    assert_columns_equal(got.steps, expected_columns(spec, steps, terminal=terminal))
    assert got.metadata["episode_id"] == "ep0"
    assert not validate_paths([f], spec, Gates(check_images=True)).issues


@pytest.mark.parametrize("name", ["ep.json", "ep.jsonl", "ep.jsonl.zst"])
@pytest.mark.parametrize("terminal", [False, True])
def test_single_file_with_derived_flags_from_end_record(tmp_path, logged, name, terminal):
    spec, steps, _ep, lines, meta = logged
    f = write_single_file(tmp_path / name, meta, lines, end={"terminal": terminal})
    got = read_episode(f, spec)
    assert_columns_equal(got.steps, expected_columns(spec, steps, terminal=terminal))


def test_single_file_end_in_metadata_and_no_end_at_all(tmp_path, logged):
    spec, steps, _ep, lines, meta = logged
    f = write_single_file(tmp_path / "a.json", dict(meta, end={"terminal": True}), lines)
    assert read_episode(f, spec).steps["is_terminal"].tolist() == [False] * 8 + [True]
    g = write_single_file(tmp_path / "b.jsonl", meta, lines)
    res = scan_episode(g, spec)
    assert res.ok and [i.code for i in res.issues] == ["TERMINAL_UNKNOWN"]  # a warning, taken as truncated
    assert not res.episode.steps["is_terminal"].any() and res.episode.steps["is_last"][-1]


def test_single_file_with_frame_paths_beside_it(tmp_path, logged):
    spec, steps, ep, _lines, meta = logged
    lines = read_lines(ep)  # frame paths relative to the episode folder
    f = write_single_file(ep / "copy.json", meta, lines, end={"terminal": False})
    got = read_episode(f, spec)
    assert_columns_equal(got.steps, expected_columns(spec, steps, terminal=False))


def test_single_file_schema_found_beside_it(tmp_path, logged):
    spec, steps, _ep, lines, meta = logged
    (tmp_path / "single").mkdir()
    spec.save(tmp_path / "single" / "schema.json")
    f = write_single_file(tmp_path / "single" / "ep.jsonl", meta, lines, end={"terminal": True})
    got = read_episode(f)  # no spec given: schema.json in the folder
    assert_columns_equal(got.steps, expected_columns(spec, steps, terminal=True))
    rep = validate_paths([tmp_path / "single"])
    assert rep.episodes == 1 and not rep.issues, rep.format_table()


def test_builtin_schema_named_in_metadata(tmp_path):
    spec = load_spec("pi5_donkey")  # full-size frames: the reader resolves the built-in by name
    f = write_single_file(tmp_path / "ep.json", {"episode_id": "x", "schema": {"name": "pi5_donkey", "version": "1.0.0"}},
                          [{"observation": {"image": {"$base64": ""}}, "action": [0, 0], "reward": 0, "discount": 1,
                            "timestamp": {"camera": 1.0, "control": 1.0}, "control_mode": "user"}],
                          end={"terminal": False})
    got = read_episode(f)
    assert len(got) == 1 and got.steps["action"].dtype == np.float32
    assert spec.id == "pi5_donkey.v1"
