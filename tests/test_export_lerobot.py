"""LeRobot v3.0 export (``rldskit.exporters.lerobot``): layout and info.json, episode indexes and
video spans, tasks, exact stats, an exact round trip of every numeric value (float32 bit-exact)
and images within codec tolerance, absent wrist frames, atomic writes and the CLI exit codes."""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")
av = pytest.importorskip("av")
PIL = pytest.importorskip("PIL.Image")

import helpers_lerobot as hl  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from fuzzing import examples  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

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
    assert f["rldskit.present.wrist"]["dtype"] == "bool"  # outside observation., no "image" in it
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
    assert not eps[0]["columns"]["rldskit.present.wrist"].any()  # wrist absent in episode 0
    assert eps[1]["columns"]["rldskit.present.wrist"].all()


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


# ----------------------------------------------------------------------------------- what the real lerobot expects
#
# lerobot is not a dependency, so its rules are reproduced here from its source (lerobot 0.4.4,
# src/lerobot/datasets/...), each function naming the one it copies.

def _lerobot_validate_stat_value(value, key: str, feature_key: str) -> None:
    """lerobot 0.4.4 ``datasets/compute_stats.py::_validate_stat_value``, which
    ``aggregate_stats`` runs on every stat of every feature (``delete_episodes``,
    ``split_dataset``, ``merge_datasets``, ``MultiLeRobotDataset``, ``save_episode``)."""
    if not isinstance(value, np.ndarray):
        raise ValueError(f"Stats must be composed of numpy array, but key '{key}' of feature '{feature_key}' "
                         f"is of type '{type(value)}' instead.")
    if value.ndim == 0:
        raise ValueError("Number of dimensions must be at least 1, and is 0 instead.")
    if key == "count" and value.shape != (1,):
        raise ValueError(f"Shape of 'count' must be (1), but is {value.shape} instead.")
    if "image" in feature_key and key != "count" and value.shape != (3, 1, 1):
        raise ValueError(f"Shape of quantile '{key}' must be (3,1,1), but is {value.shape} instead.")


def _lerobot_aggregate_stats(stats_list: list[dict]) -> dict:
    """lerobot 0.4.4 ``datasets/compute_stats.py::aggregate_stats`` (with
    ``_assert_type_and_shape`` and ``aggregate_feature_stats``)."""
    for stats in stats_list:
        for fk, fs in stats.items():
            for sk, sv in fs.items():
                _lerobot_validate_stat_value(sv, sk, fk)
    out = {}
    for key in {k for s in stats_list for k in s}:
        fl = [s[key] for s in stats_list if key in s]
        means = np.stack([s["mean"] for s in fl])
        variances = np.stack([s["std"] ** 2 for s in fl])
        counts = np.stack([s["count"] for s in fl])
        total = counts.sum(axis=0)
        while counts.ndim < means.ndim:
            counts = np.expand_dims(counts, axis=-1)
        mean = (means * counts).sum(axis=0) / total
        var = ((variances + (means - mean) ** 2) * counts).sum(axis=0) / total
        out[key] = {"min": np.min(np.stack([s["min"] for s in fl]), axis=0),
                    "max": np.max(np.stack([s["max"] for s in fl]), axis=0),
                    "mean": mean, "std": np.sqrt(var), "count": total}
    return out


def _lerobot_episode_stats(out: Path) -> list[dict]:
    """Per-episode stats as lerobot 0.4.4 reads them back from ``meta/episodes`` before
    aggregating (``datasets/dataset_tools.py::_copy_and_reindex_episodes_metadata``: pandas rows,
    ``stats/<feature>/<stat>`` columns, nested image values flattened to (3, 1, 1))."""
    features = _info(out)["features"]
    res = []
    for _, row in _episodes(out).iterrows():
        ep: dict = {}
        for key, value in row.to_dict().items():
            if not key.startswith("stats/"):
                continue
            parts = key.replace("stats/", "").split("/")
            if len(parts) != 2:
                continue
            feature, stat = parts
            if feature in features and features[feature]["dtype"] in ("image", "video") and stat != "count":
                if isinstance(value, np.ndarray) and value.dtype == object:
                    flat = []
                    for item in value:
                        while isinstance(item, np.ndarray):
                            item = item.flatten()[0]
                        flat.append(item)
                    value = np.array(flat, dtype=np.float64).reshape(3, 1, 1)
                elif isinstance(value, np.ndarray) and value.shape == (3,):
                    value = value.reshape(3, 1, 1)
            ep.setdefault(feature, {})[stat] = value
        res.append(ep)
    return res


def _lerobot_policy_feature_type(key: str, ft: dict) -> str | None:
    """lerobot 0.4.4 ``datasets/utils.py::dataset_to_policy_features``: how a policy sees a feature
    (``OBS_STR = "observation"``, ``ACTION = "action"``, ``OBS_ENV_STATE``)."""
    if ft["dtype"] in ("image", "video"):
        return "VISUAL"
    if key == "observation.environment_state":
        return "ENV"
    if key.startswith("observation"):
        return "STATE"
    if key.startswith("action"):
        return "ACTION"
    return None


def test_lerobot_stats_aggregation_accepts_the_export(arm_out):
    """What broke ``delete_episodes``/``merge_datasets``/... : ``aggregate_stats`` over the per-episode
    stats and over stats.json (as ``load_stats``/``cast_stats_to_numpy`` reads it: ``np.array`` per
    value). The aggregate of the per-episode stats matches our exact global stats."""
    per_episode = _lerobot_episode_stats(arm_out)
    agg = _lerobot_aggregate_stats(per_episode)
    stats = {k: {s: np.array(v) for s, v in d.items()} for k, d in
             json.loads((arm_out / "meta" / "stats.json").read_text()).items()}
    _lerobot_aggregate_stats([stats, stats])
    assert set(agg) == set(stats)
    for key, s in agg.items():
        assert s["count"].tolist() == stats[key]["count"].tolist(), key
        np.testing.assert_array_equal(s["min"], stats[key]["min"], err_msg=key)
        np.testing.assert_array_equal(s["max"], stats[key]["max"], err_msg=key)
        np.testing.assert_allclose(s["mean"], stats[key]["mean"], rtol=1e-9, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(s["std"], stats[key]["std"], rtol=1e-6, atol=1e-9, err_msg=key)


def test_feature_keys_follow_lerobots_rules(arm_out):
    """Only cameras have "image" in their key (lerobot's stats rule), presence masks live outside
    ``observation.`` (a policy would take them as state), every dtype is one lerobot can build."""
    f = _info(arm_out)["features"]
    for key, ft in f.items():
        if "image" in key:
            assert ft["dtype"] in ("image", "video"), key
        assert ft["dtype"] in ("image", "video", "string") or np.dtype(ft["dtype"]), key
    assert f["rldskit.present.wrist"] == {"dtype": "bool", "shape": [1], "names": None}
    assert not any(k.endswith("_present") and k.startswith("observation.images") for k in f)
    state = {k for k, ft in f.items() if _lerobot_policy_feature_type(k, ft) == "STATE"}
    assert state == {"observation.state"}
    data = _data(arm_out)
    assert data.schema.field("rldskit.present.wrist").type == pa.bool_()


def _image_named_spec():
    """A camera called ``image`` that may be absent, and a number with "image" in its name."""
    from rldskit.spec import EpisodeSpec

    d = load_spec("so100_arm.v1").to_dict()
    imgs = d["steps"]["observation"]["images"]
    imgs["image"] = dict(imgs.pop("wrist"))
    d["steps"]["observation"]["image_exposure"] = {"type": "scalar", "dtype": "int32"}
    d["steps"]["timestamp"]["camera_image"] = {"type": "scalar", "dtype": "float64", "unit": "s"}
    d["name"] = "img_names"  # synthetic steps from the spec alone (not the so100 generator)
    spec = EpisodeSpec.from_dict(d, source="test")
    for p in spec.image_paths:
        spec = spec.with_image_shape(p, CAM)
    return spec


def test_keys_with_image_in_them_are_renamed_and_come_back(tmp_path):
    spec = _image_named_spec()
    write_synthetic(spec, tmp_path / "cap", 2, 4, seed=5)
    src = convert([tmp_path / "cap"], tmp_path / "data", name="img", runner="inline", formats=("array_record",)).path
    L.export_lerobot(src, tmp_path / "lr")
    f = _info(tmp_path / "lr")["features"]
    assert [k for k in f if "image" in k] == ["observation.images.front", "observation.images.image"]
    for k in ("rldskit.present.img", "observation.img_exposure", "rldskit.timestamp.camera_img"):
        assert k in f, sorted(f)
    _lerobot_aggregate_stats(_lerobot_episode_stats(tmp_path / "lr"))
    _check_round_trip(src, tmp_path / "lr")


def test_colliding_keys_are_refused(tmp_path):
    from rldskit.spec import EpisodeSpec

    d = _donkey_spec().to_dict()
    d["steps"]["observation"]["image_x"] = {"type": "scalar", "dtype": "int32"}
    d["steps"]["observation"]["img_x"] = {"type": "scalar", "dtype": "int32"}
    spec = EpisodeSpec.from_dict(d, source="test")
    with pytest.raises(L.LeRobotExportError, match="observation/image_x.*observation/img_x|observation/img_x.*observation/image_x"):
        L._plan_columns(spec, None)


# ----------------------------------------------------------------------------------- timestamps

#: what the exporter promises for a float32 view of an offset o: |error| <= |o| * 2**-24
F32_REL = 2.0 ** -24


def test_timestamps_are_offsets_from_the_episode_start(arm, arm_out):
    """``rldskit.timestamp.*`` hold seconds since the episode's start (whole seconds, per frame in
    ``rldskit.timestamp_start`` and per episode in meta/episodes), so lerobot's float32 view of
    them (``torch.tensor`` of a Python float) stays within the stated precision; a float32 view of
    the absolute times is up to 64 s off."""
    info = _info(arm_out)
    f = info["features"]
    assert f["rldskit.timestamp_start"] == {"dtype": "int64", "shape": [1], "names": None}
    data = _data(arm_out).to_pandas()
    eps = _episodes(arm_out)
    originals = list(rldskit.open(arm).episodes("train"))
    for ep, (_, row) in zip(originals, eps.iterrows()):
        rows = data[data["episode_index"] == row["episode_index"]]
        start = rows["rldskit.timestamp_start"].to_numpy()
        assert (start == start[0]).all() and row["rldskit/timestamp_start"] == float(start[0])
        t0 = min(float(np.min(ep.steps[p])) for p in ep.steps if p.startswith("timestamp/"))
        assert start[0] == math.floor(t0)
        for path in ("timestamp/control", "timestamp/camera_front", "timestamp/joints"):
            key = "rldskit." + path.replace("/", ".")
            assert f[key]["dtype"] == "float64"
            off = rows[key].to_numpy()
            truth = np.asarray(ep.steps[path], np.float64)
            assert off.min() >= 0 and off.max() < 2.0
            np.testing.assert_array_equal(start + off, truth)  # the file is exact
            as_lerobot = np.asarray(off, np.float32).astype(np.float64)  # what lerobot hands out
            assert np.all(np.abs(as_lerobot - off) <= np.abs(off) * F32_REL), path
            # absolute times rebuilt from lerobot's view: that, plus float64's own resolution at t
            assert np.all(np.abs(start + as_lerobot - truth) <= np.abs(off) * F32_REL + np.spacing(truth)), path
            assert np.abs(np.float32(truth).astype(np.float64) - truth).max() > 100 * np.abs(off).max() * F32_REL
    assert "rldskit.timestamp_start" in json.loads((arm_out / "meta" / "stats.json").read_text())


@settings(max_examples=examples(200))
@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                          st.floats(1.6e9, 1.9e9), st.floats(-1e4, 1e4)), min_size=1, max_size=12),
       st.integers(1, 3))
def test_offset_encoding_is_exact_and_float32_close(values, n_cols):
    """Any float64 times (NaN, inf, -0.0, negative, Unix) come back bit-exact from start + offset;
    when the start is not 0 the offsets run from 0 to the episode's span (+ < 1 s), and a float32
    view of an offset o is within |o| * 2**-24 of it."""
    cols = [np.asarray(values[i::n_cols] or values[:1], np.float64) for i in range(n_cols)]
    start = L.timestamp_start(cols)
    assert isinstance(start, int)
    finite = np.concatenate([c[np.isfinite(c)] for c in cols])
    for c in cols:
        off = L.encode_offsets(c, start)
        assert off.dtype == np.float64
        back = L.decode_offsets(off, np.full(len(off), start, np.int64))
        assert back.view(np.uint64).tolist() == c.view(np.uint64).tolist()
        fin = np.isfinite(c)
        assert np.array_equal(np.isfinite(off), fin)
        if start != 0:
            assert (off[fin] >= 0).all() and (off[fin] <= np.nextafter(finite.max() - finite.min() + 1, np.inf)).all()
        o = off[fin & (np.abs(off) < 3e38)]
        assert np.all(np.abs(np.asarray(o, np.float32).astype(np.float64) - o) <= np.abs(o) * F32_REL + 2.0 ** -150)


# ----------------------------------------------------------------------------------- old exports

def test_old_style_export_still_reads(arm, arm_out, tmp_path):
    """An export written before masks moved and timestamps became offsets (built here the old way:
    ``observation.images.<cam>_present``, absolute float64 ``rldskit.timestamp.*``, no start
    column) reads back exactly."""
    old = tmp_path / "old"
    hl.make_old_style_export(arm_out, old)
    f = _info(old)["features"]
    assert "observation.images.wrist_present" in f and "rldskit.present.wrist" not in f
    assert "rldskit.timestamp_start" not in f
    assert _data(old).to_pandas()["rldskit.timestamp.control"].min() > 1e9
    _check_round_trip(arm, old)


# ----------------------------------------------------------------------------------- no local paths

def _files_containing(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p.relative_to(root)}: {n}" for n in needles if n.encode() in data]
    return hits


def test_no_absolute_source_path_in_the_export(arm, tmp_path):
    """info.json names the source relative to its TFDS data dir (``<name>/<version>``) with a
    digest for identity; no exported file holds the absolute path given on the command line."""
    src = Path(arm).absolute()
    assert _cli(["lerobot", str(src), "--out", str(tmp_path / "lr")]) == 0
    needles = sorted({str(src), str(src.resolve()), str(src.parent.parent), str(src.resolve().parent.parent)})
    assert _files_containing(tmp_path / "lr", needles) == []
    s = _info(tmp_path / "lr")["rldskit"]["source"]
    assert s["name"] == f"{src.parent.name}/{src.name}"
    assert s["sha256"] == hl.dataset_digest(src) and len(s["sha256"]) == 64
    # the digest follows the content, not the location
    import shutil

    moved = tmp_path / "elsewhere" / src.parent.name / src.name
    shutil.copytree(src, moved)
    assert hl.dataset_digest(moved) == s["sha256"] == L.source_identity(moved)["sha256"]
    (moved / "manifest.json").write_text((moved / "manifest.json").read_text() + " ")
    assert L.source_identity(moved)["sha256"] != s["sha256"]
