"""LeRobot v3.0 export (``rldskit.exporters.lerobot``): layout and info.json, episode indexes and
video spans, tasks, exact stats, an exact round trip of every numeric value (float32 bit-exact)
and images within codec tolerance, absent wrist frames, atomic writes and the CLI exit codes."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")
av = pytest.importorskip("av")
PIL = pytest.importorskip("PIL.Image")

import pyarrow.parquet as pq  # noqa: E402

import rldskit  # noqa: E402
from rldskit.exporters import lerobot as L  # noqa: E402
from rldskit.pipeline import convert  # noqa: E402
from rldskit.spec import load_spec  # noqa: E402
from rldskit.synth import write_synthetic  # noqa: E402

CAM = (32, 48, 3)
#: mean absolute error per pixel (0..255) allowed after video encoding (measured 3.9-4.7 AV1 crf 30,
#: 4.0-4.5 x264 crf 18 on 32x48 and 31x47 synthetic frames; mostly yuv420p chroma subsampling)
MAX_MAE = 6.0


def _donkey_spec(shape=CAM):
    return load_spec("pi5_donkey.v1").with_image_shape("observation/image", shape)


def _arm_spec():
    spec = load_spec("so100_arm.v1")
    for p in spec.image_paths:
        spec = spec.with_image_shape(p, CAM)
    return spec


@pytest.fixture(scope="module")
def donkey(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lr_donkey")
    write_synthetic(_donkey_spec(), root / "cap", 2, 8, seed=0)
    write_synthetic(_donkey_spec(), root / "cap", 1, 3, seed=1)
    return convert([root / "cap"], root / "data", name="pi5_donkey", runner="inline",
                   formats=("array_record",)).path


@pytest.fixture(scope="module")
def arm(tmp_path_factory) -> Path:
    """Two cameras, the optional wrist one absent in episode 0, language instructions."""
    root = tmp_path_factory.mktemp("lr_arm")
    write_synthetic(_arm_spec(), root / "cap", 4, 5, seed=0)
    return convert([root / "cap"], root / "data", name="so100_arm", runner="inline",
                   formats=("array_record",)).path


@pytest.fixture(scope="module")
def arm_out(arm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lr_arm_out") / "so100"
    summary = L.export_lerobot(arm, out, episodes_per_file=3)  # 2 data/video files: 3 + 1 episodes
    assert summary["episodes"] == 4 and summary["frames"] == 20 and summary["data_files"] == 2
    return out


@pytest.fixture(scope="module")
def donkey_out(donkey, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lr_donkey_out") / "pi5"
    L.export_lerobot(donkey, out)
    return out


def _info(out: Path) -> dict:
    return json.loads((out / "meta" / "info.json").read_text())


def _episodes(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet")


def _data(out: Path) -> pd.DataFrame:
    files = sorted((out / "data").glob("chunk-*/file-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def _decode(b: bytes) -> np.ndarray:
    with PIL.open(io.BytesIO(b)) as im:
        return np.asarray(im.convert("RGB"))


def _n_video_frames(path: Path) -> tuple[int, list[float]]:
    with av.open(str(path)) as c:
        ts = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    return len(ts), sorted(ts)


# ----------------------------------------------------------------------------------- layout

def test_info_json_arm(arm_out):
    info = _info(arm_out)
    assert info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == 4 and info["total_frames"] == 20 and info["total_tasks"] == 2
    assert info["fps"] == 30 and info["splits"] == {"train": "0:4"} and info["robot_type"] == "so100_arm"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    for k in ("chunks_size", "data_files_size_in_mb", "video_files_size_in_mb"):
        assert isinstance(info[k], int)
    f = info["features"]
    for cam in ("front", "wrist"):
        v = f[f"observation.images.{cam}"]
        assert v["dtype"] == "video" and v["shape"] == [32, 48, 3] and v["names"] == ["height", "width", "channels"]
        assert v["info"]["video.fps"] == 30 and v["info"]["video.pix_fmt"] == "yuv420p"
        assert v["info"]["video.codec"] in ("av1", "h264", "mpeg4")
    assert f["observation.images.wrist_present"]["dtype"] == "bool"
    assert f["observation.state"] == {"dtype": "float32", "shape": [13], "names": [
        *(f"joint_position.{n}" for n in ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "wrist_yaw")),
        *(f"joint_velocity.{n}" for n in ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "wrist_yaw")),
        "gripper_position"]}
    assert f["action"]["shape"] == [7] and f["action"]["names"][-1] == "gripper"
    assert f["next.reward"]["dtype"] == "float32" and f["next.done"]["dtype"] == "bool"
    for k in ("rldskit.discount", "rldskit.is_first", "rldskit.is_last", "rldskit.is_terminal",
              "rldskit.timestamp.control", "rldskit.timestamp.joints"):
        assert k in f, k
    for k, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                  ("index", "int64"), ("task_index", "int64")):
        assert f[k] == {"dtype": dt, "shape": [1], "names": None}
    # every non-video feature is a data column and vice versa
    cols = set(_data(arm_out).column_names)
    assert cols == {k for k, v in f.items() if v["dtype"] != "video"}
    assert info["rldskit"]["columns"] and info["rldskit"]["spec"]["name"] == "so100_arm"


def test_info_json_donkey(donkey_out):
    info = _info(donkey_out)
    f = info["features"]
    assert info["fps"] == 20 and info["total_episodes"] == 3 and info["total_frames"] == 19
    assert "observation.images.image" in f and "observation.state" not in f  # the car has no state vector
    assert f["action"]["names"] == ["steering", "throttle"]
    assert f["rldskit.control_mode"]["dtype"] == "string"
    assert f["rldskit.policy_action"]["shape"] == [2] and f["rldskit.policy_action_present"]["dtype"] == "bool"
    tasks = pd.read_parquet(donkey_out / "meta" / "tasks.parquet")
    assert list(tasks.index) == ["pi5_donkey"] and tasks.index.name == "task"  # default task: the spec name


def test_episode_indexes_and_video_spans(arm_out):
    info, eps = _info(arm_out), _episodes(arm_out)
    fps = info["fps"]
    assert list(eps["episode_index"]) == [0, 1, 2, 3] and list(eps["length"]) == [5] * 4
    assert list(eps["dataset_from_index"]) == [0, 5, 10, 15]
    assert list(eps["dataset_to_index"]) == [5, 10, 15, 20]
    assert list(eps["data/file_index"]) == [0, 0, 0, 1] and set(eps["data/chunk_index"]) == {0}
    data = _data(arm_out).to_pandas()
    for _, row in eps.iterrows():
        rows = data[data["episode_index"] == row["episode_index"]]
        assert list(rows["index"]) == list(range(row["dataset_from_index"], row["dataset_to_index"]))
        assert list(rows["frame_index"]) == list(range(row["length"]))
        np.testing.assert_array_equal(rows["timestamp"].to_numpy(), (np.arange(row["length"]) / fps).astype(np.float32))
        assert list(row["tasks"]) == sorted(set(rows["task_index"].map(
            dict(enumerate(pd.read_parquet(arm_out / "meta" / "tasks.parquet").index)))))
    for cam in ("front", "wrist"):
        key = f"observation.images.{cam}"
        for fidx, group in eps.groupby(f"videos/{key}/file_index"):
            frm, to = group[f"videos/{key}/from_timestamp"].to_numpy(), group[f"videos/{key}/to_timestamp"].to_numpy()
            assert frm[0] == 0.0 and np.allclose(to - frm, group["length"] / fps)
            assert np.allclose(frm[1:], to[:-1])  # episodes follow each other in the file
            path = arm_out / info["video_path"].format(video_key=key, chunk_index=0, file_index=fidx)
            n, ts = _n_video_frames(path)
            assert n == group["length"].sum()
            assert np.allclose(ts, np.arange(n) / fps, atol=1e-4)
            assert np.isclose(to[-1], n / fps)


def test_tasks_parquet(arm, arm_out):
    tasks = pd.read_parquet(arm_out / "meta" / "tasks.parquet")
    assert tasks.index.name == "task" and list(tasks.columns) == ["task_index"]
    assert list(tasks["task_index"]) == list(range(len(tasks)))
    text = dict(zip(tasks["task_index"], tasks.index))
    data = _data(arm_out).to_pandas()
    want = [s for ep in rldskit.open(arm).episodes("train") for s in ep.steps["language_instruction"]]
    assert [text[i] for i in data["task_index"]] == [w.decode() if isinstance(w, bytes) else w for w in want]


def test_stats_exact(arm, arm_out):
    stats = json.loads((arm_out / "meta" / "stats.json").read_text())
    data = _data(arm_out)
    qs = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
    numeric = [n for n in data.column_names if not pa.types.is_string(data.schema.field(n).type)]
    assert set(stats) == set(numeric) | {"observation.images.front", "observation.images.wrist"}
    for name in numeric:
        x = L._column_numpy(data[name]).astype(np.float64).reshape(len(data), -1)
        s = stats[name]
        assert s["count"] == [len(data)]
        np.testing.assert_array_equal(s["min"], x.min(0))
        np.testing.assert_array_equal(s["max"], x.max(0))
        np.testing.assert_allclose(s["mean"], x.mean(0), rtol=1e-12, atol=0)
        np.testing.assert_allclose(s["std"], x.std(0), rtol=1e-9, atol=1e-12)
        for k, q in qs.items():
            np.testing.assert_array_equal(s[k], np.quantile(x, q, axis=0), err_msg=f"{name} {k}")
    # images: per channel over every present source frame, values in [0, 1], shape (3, 1, 1)
    eps = list(rldskit.open(arm).episodes("train"))
    for cam in ("front", "wrist"):
        frames = np.stack([_decode(ep.steps[f"observation/images/{cam}"][i]) for ep in eps for i in range(len(ep))
                           if f"observation/images/{cam}_present" not in ep.steps
                           or ep.steps[f"observation/images/{cam}_present"][i]])
        x = frames.reshape(-1, 3).astype(np.float64) / 255.0
        s = stats[f"observation.images.{cam}"]
        assert np.asarray(s["mean"]).shape == (3, 1, 1) and s["count"] == [len(frames)]
        for k, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std)):
            np.testing.assert_allclose(np.asarray(s[k]).ravel(), fn(x, axis=0), rtol=1e-9, atol=1e-12)
        for k, q in qs.items():
            np.testing.assert_allclose(np.asarray(s[k]).ravel(), np.quantile(x, q, axis=0), rtol=1e-12, atol=1e-12)
    # per-episode stats columns
    e = _episodes(arm_out)
    first = data.slice(0, 5)
    np.testing.assert_array_equal(np.stack(e["stats/action/max"][0]), L._column_numpy(first["action"]).max(0))
    assert list(e["stats/action/count"][0]) == [5]


# ----------------------------------------------------------------------------------- round trip

def _check_round_trip(src: Path, out: Path, max_mae: float = MAX_MAE) -> float:
    """Every numeric/text value exactly, images within MAX_MAE; returns the worst episode MAE."""
    originals = list(rldskit.open(src).episodes("train"))
    back = list(L.read_lerobot_v3(out))
    assert len(back) == len(originals)
    worst = 0.0
    spec = rldskit.open(src).spec
    for ep, got in zip(originals, back):
        r = got["rldskit"]
        assert r["episode_id"] == ep.episode_id
        assert r["metadata"] == json.loads(json.dumps(L._jsonable(ep.metadata)))
        assert set(r["steps"]) == set(ep.steps)
        for path, col in ep.steps.items():
            mine = r["steps"][path]
            if path in spec.image_paths:
                present = ep.steps.get(path + "_present")
                for i in range(len(ep)):
                    if col[i] and (present is None or present[i]):
                        worst = max(worst, float(np.abs(_decode(col[i]).astype(int) - mine[i].astype(int)).mean()))
                    else:
                        assert mine[i].max() <= 16, "an absent frame is written black"
                continue
            want = np.asarray(col)
            if want.dtype == object:
                assert [w.decode() if isinstance(w, bytes) else w for w in want] == list(mine), path
                continue
            assert mine.dtype == want.dtype and mine.shape == want.shape, path
            if want.dtype.kind == "f":  # bit-exact, NaN included
                assert np.array_equal(mine.view(f"u{want.dtype.itemsize}"), want.view(f"u{want.dtype.itemsize}")), path
            else:
                np.testing.assert_array_equal(mine, want, err_msg=path)
    assert worst < max_mae, f"image mean abs error {worst:.2f}"
    return worst


def test_round_trip_arm(arm, arm_out):
    worst = _check_round_trip(arm, arm_out)
    print(f"arm ({_info(arm_out)['rldskit']['codec']}): worst episode image MAE {worst:.2f}")
    eps = list(L.read_lerobot_v3(arm_out))
    assert not eps[0]["columns"]["observation.images.wrist_present"].any()  # wrist absent in episode 0
    assert eps[1]["columns"]["observation.images.wrist_present"].all()


def test_round_trip_donkey(donkey, donkey_out):
    _check_round_trip(donkey, donkey_out)


def test_round_trip_h264_odd_frames(tmp_path):
    """H.264 and a frame size that yuv420p cannot hold (odd): padded in the video, cropped back."""
    if not any(_usable(c) for c in ("libx264", "h264")):
        pytest.skip("no H.264 encoder")
    spec = _donkey_spec((31, 47, 3))
    write_synthetic(spec, tmp_path / "cap", 2, 4, seed=3)
    src = convert([tmp_path / "cap"], tmp_path / "data", name="pi5_donkey", runner="inline",
                  formats=("array_record",)).path
    codec = "libx264" if _usable("libx264") else "h264"
    L.export_lerobot(src, tmp_path / "lr", codec=codec)
    info = _info(tmp_path / "lr")
    v = info["features"]["observation.images.image"]
    assert v["shape"] == [31, 47, 3] and v["info"]["video.codec"] == "h264" and v["info"]["video.width"] == 48
    worst = _check_round_trip(src, tmp_path / "lr")
    print(f"donkey (h264, 31x47): worst episode image MAE {worst:.2f}")


def _usable(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


def test_max_episodes_and_split(arm, tmp_path):
    s = L.export_lerobot(arm, tmp_path / "two", max_episodes=2)
    assert s["episodes"] == 2 and _info(tmp_path / "two")["splits"] == {"train": "0:2"}
    with pytest.raises(L.LeRobotExportError, match="split"):
        L.export_lerobot(arm, tmp_path / "x", split="test")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------- CLI, safety

def _cli(argv) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    L.add_export_parser(sub)
    args = ap.parse_args(argv)
    return args.func(args)


def test_cli_exit_codes(donkey, tmp_path, capsys):
    assert _cli(["lerobot", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert _cli(["lerobot", str(tmp_path), "--out", str(tmp_path / "o")]) == 2  # not a dataset
    assert not (tmp_path / "o").exists()
    assert _cli(["lerobot", str(donkey), "--out", str(tmp_path / "o"), "--codec", "no-such-codec"]) == 2
    assert _cli(["lerobot", str(donkey), "--out", str(tmp_path / "o"), "--max-episodes", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 1
    before = (tmp_path / "o" / "meta" / "info.json").read_text()
    assert _cli(["lerobot", str(donkey), "--out", str(tmp_path / "o")]) == 2  # refuses to replace
    assert (tmp_path / "o" / "meta" / "info.json").read_text() == before
    assert _cli(["lerobot", str(donkey), "--out", str(tmp_path / "o"), "--overwrite"]) == 0
    assert _info(tmp_path / "o")["total_episodes"] == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folders left


def test_failed_export_leaves_nothing(donkey, tmp_path, monkeypatch):
    def boom(data, shape):
        raise ValueError("corrupt frame")

    monkeypatch.setattr(L, "_decode_image", boom)
    assert _cli(["lerobot", str(donkey), "--out", str(tmp_path / "o")]) == 1
    assert list(tmp_path.iterdir()) == []


def test_rlds_to_lerobot_to_rlds_through_the_cli(tmp_path):
    """``rldskit export lerobot`` then ``rldskit import lerobot``: every step comes back, actions
    exactly, and the imported episodes validate against the schema derived from the export."""
    import numpy as np

    import rldskit
    from rldskit.cli import main
    from rldskit.formats.capture_dir import find_episodes, read_episode
    from rldskit.pipeline import convert
    from rldskit.spec import load_spec
    from rldskit.synth import write_synthetic
    from rldskit.validation import validate_paths

    spec = load_spec("pi5_donkey.v1").with_image_shape("observation/image", (32, 48, 3))
    write_synthetic(spec, tmp_path / "cap", 3, 15, seed=4)
    ds = convert([tmp_path / "cap"], tmp_path / "data", name="donkey", runner="inline", formats=("array_record",)).path
    assert main(["export", "lerobot", str(ds), "--out", str(tmp_path / "lerobot")]) == 0
    assert main(["import", "lerobot", str(tmp_path / "lerobot"), "--out", str(tmp_path / "back")]) == 0
    original = {ep.episode_id: ep for ep in rldskit.open(ds).episodes("train")}
    paths, _ = find_episodes([tmp_path / "back"])
    assert len(paths) == 3
    assert validate_paths(paths).ok
    got = sorted((read_episode(p) for p in paths), key=lambda e: len(e))
    want = sorted(original.values(), key=lambda e: len(e))
    for a, b in zip(got, want):
        assert len(a) == len(b)
    actions_back = sorted(np.asarray(e.steps["action"], np.float32).tobytes() for e in got)
    actions_orig = sorted(np.asarray(e.steps["action"], np.float32).tobytes() for e in want)
    assert actions_back == actions_orig
