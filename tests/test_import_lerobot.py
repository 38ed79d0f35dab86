"""LeRobot importer: the real G1 v2.1 fixture, synthetic v2.1/v3.0/monorepo datasets, the
so100_arm.v1 target mapping and bad input (each bad episode skipped, the rest imported)."""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("pyarrow")

import helpers_lerobot as hl  # noqa: E402
from shared_fixtures import shared_fixtures  # noqa: E402

from rldskit.formats.capture_dir import read_episode  # noqa: E402
from rldskit.importers.lerobot import LeRobotError, add_import_parser, import_lerobot  # noqa: E402
from rldskit.spec import load_spec  # noqa: E402
from rldskit.validation import validate_paths  # noqa: E402

G1 = shared_fixtures() / "lerobot_v21_g1"


def _gray(b: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float64)


def _valid(report, root: Path | None = None) -> None:
    for d in report.datasets:
        spec = load_spec(Path(d.out) / "schema.json")
        for e in d.episodes:
            if e.path:
                rep = validate_paths([e.path], spec)
                assert not rep.errors, [str(i) for i in rep.errors]


def _eps(out: Path) -> dict[int, object]:
    res = {}
    for p in sorted(out.glob("*_ep*")):
        ep = read_episode(p, load_frames=True)
        res[int(ep.metadata["source_episode"])] = ep
    return res


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------- real fixture


@pytest.mark.skipif(not G1.is_dir(), reason=f"shared fixture {G1} is absent")
def test_real_g1_fixture(tmp_path):
    import av
    import pyarrow.parquet as pq

    out = tmp_path / "g1"
    rep = import_lerobot(G1, out)
    assert [e.source_episode for e in rep.imported] == [29, 30, 31]
    assert not rep.skipped and rep.ok
    assert {"DECLARED_ABSENT", "INDEX_GAP"} <= rep.warning_codes
    spec = load_spec(out / "schema.json")
    assert spec.name == "lerobot_lerobot_v21_g1" and spec.last_step == "valid"
    assert spec.leaf("observation/state").shape == (26,) and spec.leaf("action").shape == (26,)
    assert spec.leaf("observation/state").names[0] == "kLeftShoulderPitch"
    assert spec.leaf("observation/images/cam_high").shape == (480, 640, 3)
    _valid(rep)
    saved = json.loads((out / "import_report.json").read_text())
    assert saved["summary"]["imported"] == 3
    eps = _eps(out)
    ep = eps[30]
    table = pq.read_table(G1 / "data/chunk-000/episode_000030.parquet")
    state = np.stack(table.column("observation.state").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(ep.steps["observation/state"], state)
    np.testing.assert_array_equal(ep.steps["action"], np.stack(table.column("action").to_numpy(zero_copy_only=False)))
    assert ep.steps["language_instruction"][0] == "Pick up the yellow bottle on the table."
    tags = list(ep.metadata["tags"])
    for t in ("origin:huggingface:lerobot_v21_g1", "source_split:train", "robot_type:Unitree_G1_Inspire",
              "lerobot_version:v2.1", "source_episode:30"):
        assert t in tags
    # frames match PyAV decoding at the row timestamps
    ts = table.column("timestamp").to_numpy()
    ref = {}
    with av.open(str(G1 / "videos/chunk-000/observation.images.cam_high/episode_000030.mp4")) as c:
        s = c.streams.video[0]
        for f in c.decode(s):
            ref[round(float(f.pts * s.time_base) * 30)] = f.to_ndarray(format="rgb24")
    frames = ep.steps["observation/images/cam_high"]
    assert len(frames) == len(ts)
    for i in range(0, len(ts), 37):
        diff = np.abs(_gray(frames[i]) - ref[round(float(ts[i]) * 30)].astype(np.float64)).mean()
        assert diff < 3, (i, diff)


# --------------------------------------------------------------------------- synthetic v2.1


def test_v21_round_trip(tmp_path):
    src = tmp_path / "ds_v21"
    truth = hl.write_v21(src, (6, 9), image_camera="observation.images.png_cam", scalar_in_list=True,
                         extra_column=True, tasks=("pick the cube", "place the cube"))
    out = tmp_path / "out"
    rep = import_lerobot(src, out)
    assert rep.ok and len(rep.imported) == 2
    assert {"SCALAR_IN_LIST", "UNDECLARED_COLUMN"} <= rep.warning_codes
    assert "INDEX_GAP" not in rep.warning_codes and "DECLARED_ABSENT" not in rep.warning_codes
    _valid(rep)
    for idx, ep in _eps(out).items():
        t = truth["episodes"][idx]
        np.testing.assert_array_equal(ep.steps["observation/state"], t["state"])
        np.testing.assert_array_equal(ep.steps["action"], t["action"])
        np.testing.assert_allclose(ep.steps["timestamp/control"], t["timestamp"], atol=1e-6)
        assert list(ep.steps["language_instruction"]) == [t["task"]] * len(t["state"])
        for cam in ("front", "png_cam"):
            got = [_gray(b).mean() for b in ep.steps[f"observation/images/{cam}"]]
            np.testing.assert_allclose(got, t["frames"], atol=3)
        assert "lerobot_version:v2.1" in list(ep.metadata["tags"])
        assert bool(ep.steps["is_last"][-1]) and not bool(ep.steps["is_terminal"][-1])


def test_reward_and_done_features(tmp_path):
    src = tmp_path / "rd"
    hl.write_v21(src, (5,), reward_done=True)
    rep = import_lerobot(src, tmp_path / "o")
    assert len(rep.imported) == 1
    _valid(rep)
    ep = read_episode(rep.imported_paths[0])
    np.testing.assert_allclose(ep.steps["reward"], np.arange(5) * 0.5)
    np.testing.assert_array_equal(ep.steps["extra/next.done"][:, 0], [False] * 4 + [True])


def test_v20_and_index_gap(tmp_path):
    src = tmp_path / "old"
    hl.write_v21(src, (3, 3), version="v2.0", start_index=5, declared_episodes=9)
    rep = import_lerobot(src, tmp_path / "o", episodes=[6])
    assert [e.source_episode for e in rep.imported] == [6]
    assert {"INDEX_GAP", "DECLARED_ABSENT"} <= rep.warning_codes
    _valid(rep)


# --------------------------------------------------------------------------- synthetic v3.0


def test_v30_misaligned_files(tmp_path):
    src = tmp_path / "ds_v30"
    truth = hl.write_v30(src, (5, 7, 4, 6), data_split=(3, 1))
    # data files: [0,0,0,1]; top video files: [0,1,1,1]; wrist video files: [0,0,1,1]
    assert truth["data_file"] != truth["video_file"]["observation.images.top"]
    assert truth["video_file"]["observation.images.top"] != truth["video_file"]["observation.images.wrist"]
    out = tmp_path / "out"
    rep = import_lerobot(src, out)
    assert len(rep.imported) == 4 and not rep.skipped
    assert "JUNK_TASK" in rep.warning_codes  # task "default"
    _valid(rep)
    eps = _eps(out)
    for idx, t in truth["episodes"].items():
        ep = eps[idx]
        np.testing.assert_array_equal(ep.steps["observation/state"], t["state"])
        np.testing.assert_array_equal(ep.steps["action"], t["action"])
        for cam in ("top", "wrist"):
            got = [_gray(b).mean() for b in ep.steps[f"observation/images/{cam}"]]
            np.testing.assert_allclose(got, t["frames"], atol=3, err_msg=f"episode {idx} camera {cam}")
        want_task = "" if t["task"] == "default" else t["task"]
        assert ep.steps["language_instruction"][0] == want_task
        assert "lerobot_version:v3.0" in list(ep.metadata["tags"])


# --------------------------------------------------------------------------- monorepo


def test_monorepo_contributors_and_max_episodes(tmp_path):
    src = tmp_path / "community"
    hl.write_monorepo(src)
    rep = import_lerobot(src, tmp_path / "all")
    assert len(rep.imported) == 2 + 1 + 2
    _valid(rep)
    out = tmp_path / "alice"
    rep = import_lerobot(src, out, contributors=["alice"])
    assert {d.contributor for d in rep.datasets} == {"alice"} and len(rep.imported) == 3
    ep = read_episode(next((out / "alice" / "pick").glob("*_ep*")))
    tags = list(ep.metadata["tags"])
    assert "contributor:alice" in tags and "origin:huggingface:community/alice/pick" in tags
    rep = import_lerobot(src, tmp_path / "capped", max_episodes=3)
    assert len(rep.imported) == 3


# --------------------------------------------------------------------------- so100 target


def test_so100_target_degrees_and_padding(tmp_path):
    src = tmp_path / "so100_pick"
    truth = hl.write_v21(src, (8, 5), fps=30, robot_type="so100", state_names=hl.SO100_NAMES,
                         cameras=("observation.images.laptop", "observation.images.wrist"))
    out = tmp_path / "out"
    rep = import_lerobot(src, out, target="so100_arm.v1")
    assert len(rep.imported) == 2, [(e.reason) for e in rep.skipped]
    assert {"UNIT", "CAMERA_NAMES", "PADDED"} <= rep.warning_codes
    assert rep.datasets[0].units["observation/joint_position"].startswith("deg")
    _valid(rep)
    spec = load_spec(out / "schema.json")
    assert spec.name == "so100_arm" and spec.leaf("observation/images/front").shape == (64, 64, 3)
    for idx, ep in _eps_by_tag(out).items():
        t = truth["episodes"][idx]
        jp = ep.steps["observation/joint_position"]
        np.testing.assert_allclose(jp[:, :5], np.deg2rad(t["state"][:, :5]), rtol=1e-5, atol=1e-6)
        assert np.all(jp[:, 5] == 0)  # wrist_yaw: padded
        np.testing.assert_allclose(ep.steps["observation/gripper_position"], np.clip(t["state"][:, 5] / 100, 0, 1), atol=1e-6)
        np.testing.assert_allclose(ep.steps["action"][:, :5], np.deg2rad(t["action"][:, :5]), rtol=1e-5, atol=1e-6)
        assert np.all(ep.steps["observation/images/wrist_present"])
        tags = list(ep.metadata["tags"])
        assert "padded:observation/joint_position/wrist_yaw" in tags and "padded:observation/joint_velocity" in tags
        got = [_gray(b).mean() for b in ep.steps["observation/images/front"]]
        np.testing.assert_allclose(got, t["frames"], atol=3)


def _eps_by_tag(out: Path) -> dict[int, object]:
    res = {}
    for p in sorted(out.glob("*_ep*")):
        ep = read_episode(p, load_frames=True)
        idx = next(int(t.split(":")[1]) for t in ep.metadata["tags"] if t.startswith("source_episode:"))
        res[idx] = ep
    return res


def test_so100_target_normalised_units_refused(tmp_path):
    src = tmp_path / "so101_new"
    names = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos", "gripper.pos"]
    hl.write_v21(src, (4,), fps=30, robot_type="so101_follower", state_names=names,
                 cameras=("observation.images.front",))
    rep = import_lerobot(src, tmp_path / "out", target="so100_arm.v1")
    assert not rep.imported and len(rep.skipped) == 1
    assert "UNIT" in rep.warning_codes and "normalised" in rep.skipped[0].reason


# --------------------------------------------------------------------------- bad input


def test_missing_meta(tmp_path):
    (tmp_path / "empty" / "data").mkdir(parents=True)
    with pytest.raises(LeRobotError, match="meta"):
        import_lerobot(tmp_path / "empty", tmp_path / "out")
    p = argparse.ArgumentParser()
    add_import_parser(p.add_subparsers())
    args = p.parse_args(["lerobot", str(tmp_path / "empty"), "--out", str(tmp_path / "out2")])
    assert args.func(args) == 2


def test_bad_episodes_skipped_others_imported(tmp_path):
    src = tmp_path / "bad"
    hl.write_v21(src, (4, 4, 4, 4, 6))
    data = src / "data" / "chunk-000"
    vids = src / "videos" / "chunk-000" / "observation.images.front"
    p = data / "episode_000001.parquet"  # corrupt footer
    p.write_bytes(p.read_bytes()[:-20])
    v = vids / "episode_000002.mp4"  # truncated mp4
    v.write_bytes(v.read_bytes()[: len(v.read_bytes()) // 3])
    (vids / "episode_000003.mp4").unlink()  # missing video
    hl.encode_mp4(vids / "episode_000004.mp4", [hl.make_frame(k, 64, 64) for k in range(3)], 10)  # short video
    out = tmp_path / "out"
    rep = import_lerobot(src, out)
    by = {e.source_episode: e for d in rep.datasets for e in d.episodes}
    assert by[0].status == "imported"
    assert by[1].status == "skipped" and "ArrowInvalid" in by[1].reason
    assert by[2].status == "skipped" and "VIDEO" in by[2].reason
    assert by[3].status == "skipped" and "VIDEO_MISSING" in by[3].reason
    assert by[4].status == "truncated" and by[4].num_steps == 3
    assert {"CAMERA_PARTIAL", "VIDEO_SHORT"} <= rep.warning_codes
    assert not rep.ok
    _valid(rep)
    assert sorted(p.name for p in out.glob("*_ep*")) == ["bad_ep000000", "bad_ep000004"]
    saved = json.loads((out / "import_report.json").read_text())
    assert saved["summary"] == {"imported": 2, "skipped": 3, "frames": 7,
                                "warnings": sorted(rep.warning_codes)}
    # CLI exit code: 1 when an episode was skipped
    parser = argparse.ArgumentParser()
    add_import_parser(parser.add_subparsers())
    args = parser.parse_args(["lerobot", str(src), "--out", str(tmp_path / "cli"), "--max-episodes", "1"])
    assert args.func(args) == 0
    args = parser.parse_args(["lerobot", str(src), "--out", str(tmp_path / "cli2")])
    assert args.func(args) == 1


def test_junk_task_and_reimport_same_folder(tmp_path):
    src = tmp_path / "junk"
    hl.write_v21(src, (3,), tasks=("null",))
    out = tmp_path / "out"
    rep = import_lerobot(src, out)
    assert "JUNK_TASK" in rep.warning_codes
    rep2 = import_lerobot(src, out)  # idempotent: the episode folder is replaced
    assert len(rep2.imported) == 1
    assert len(list(out.glob("*_ep*"))) == 1
    ep = read_episode(next(out.glob("*_ep*")))
    assert ep.steps["language_instruction"][0] == "" and not math.isnan(float(ep.steps["timestamp/control"][0]))


# --------------------------------------------------------------------------- Hub repo id (offline fake)


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_hub_repo_id_downloads_only_wanted_episodes(tmp_path, monkeypatch, version):
    import fnmatch
    import shutil

    import huggingface_hub

    remote = tmp_path / "remote"
    if version == "v2.1":
        hl.write_v21(remote, (3, 4, 5))
    else:
        hl.write_v30(remote, (3, 4, 5, 2), data_split=(1, 3))
    calls = []

    def fake_snapshot_download(repo_id, repo_type=None, allow_patterns=None, **kw):
        assert repo_id == "someone/pick_place" and repo_type == "dataset"
        calls.append(list(allow_patterns))
        local = tmp_path / "cache"
        for f in remote.rglob("*"):
            rel = f.relative_to(remote).as_posix()
            if f.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (local / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, local / rel)
        return str(local)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    out = tmp_path / "out"
    rep = import_lerobot("someone/pick_place", out, max_episodes=1)
    assert [e.source_episode for e in rep.imported] == [0]
    assert calls[0] == ["meta/*", "meta/**"]
    got = sorted(p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("*")
                 if p.is_file() and "meta" not in p.parts)
    # episode 0 only: its data file and its video file of each camera (v2.1: one camera; v3.0: two)
    assert len(got) == (2 if version == "v2.1" else 3), got
    ep = read_episode(next(out.glob("*_ep*")))
    assert "origin:huggingface:someone/pick_place" in list(ep.metadata["tags"])
    _valid(rep)


def test_v30_partial_camera_and_corrupt_shared_data_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "v3bad"
    hl.write_v30(src, (5, 7, 4, 6), data_split=(3, 1))
    ep_file = src / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    rows = pq.read_table(ep_file).to_pylist()
    for k in ("chunk_index", "file_index", "from_timestamp", "to_timestamp"):
        rows[0][f"videos/observation.images.wrist/{k}"] = None  # the wrist camera misses episode 0
    pq.write_table(pa.Table.from_pylist(rows), ep_file)
    data1 = src / "data" / "chunk-000" / "file-001.parquet"  # holds episode 3 only
    data1.write_bytes(data1.read_bytes()[:-12])
    rep = import_lerobot(src, tmp_path / "out")
    by = {e.source_episode: e for d in rep.datasets for e in d.episodes}
    assert by[0].status == "skipped" and "VIDEO_MISSING" in by[0].reason
    assert by[3].status == "skipped" and "ArrowInvalid" in by[3].reason
    assert by[1].status == by[2].status == "imported"
    assert "CAMERA_PARTIAL" in rep.warning_codes
    _valid(rep)


# --------------------------------------------------------------------------- no local paths in what is written


def _files_containing(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p.relative_to(root)}: {n}" for n in needles if n.encode() in data]
    return hits


def _meta_digest(ds: Path) -> str:
    """sha256 over ``<path>\\0<size>\\0<sha256>\\n`` of every file under the dataset's ``meta/``, in
    path order (the identity the report records), computed from that definition."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted((q for q in (ds / "meta").rglob("*") if q.is_file()), key=lambda q: q.relative_to(ds).as_posix()):
        data = p.read_bytes()
        h.update(f"{p.relative_to(ds).as_posix()}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return h.hexdigest()


def test_report_names_sources_relatively_with_a_digest(tmp_path):
    """The report (messages of skipped episodes included) and the imported episodes never hold the
    absolute input path: sources are named relative to the folder given on the command line
    (starting with its name) and identified by a digest of their ``meta/``."""
    src = (tmp_path / "in" / "bad").absolute()
    hl.write_v21(src, (4, 4, 4))
    (src / "data" / "chunk-000" / "episode_000001.parquet").write_bytes(b"not parquet")
    (src / "videos" / "chunk-000" / "observation.images.front" / "episode_000002.mp4").unlink()
    out = tmp_path / "out"
    rep = import_lerobot(src, out)
    by = {e.source_episode: e for d in rep.datasets for e in d.episodes}
    assert by[1].status == by[2].status == "skipped"
    assert "bad/data/chunk-000/episode_000001.parquet" in by[1].reason
    assert "bad/videos/chunk-000/observation.images.front/episode_000002.mp4" in by[2].reason
    needles = sorted({str(src), str(src.resolve()), str(src.parent), str(src.resolve().parent)})
    assert _files_containing(out, needles) == []
    saved = json.loads((out / "import_report.json").read_text())
    assert saved["source"] == "bad" and saved["datasets"][0]["source"] == "bad"
    assert saved["datasets"][0]["sha256"] == _meta_digest(src)

    mono = (tmp_path / "in" / "mono").absolute()
    hl.write_monorepo(mono)
    rep = import_lerobot(mono, tmp_path / "mono_out")
    assert len(rep.imported) == 5
    assert _files_containing(tmp_path / "mono_out", sorted({str(mono), str(mono.resolve()), str(mono.parent)})) == []
    saved = json.loads((tmp_path / "mono_out" / "import_report.json").read_text())
    assert saved["source"] == "mono"
    assert {d["source"]: d["sha256"] for d in saved["datasets"]} == {
        f"mono/{k}": _meta_digest(mono / k) for k in ("alice/pick", "alice/place", "bob/stack")}


# --------------------------------------------------------------------------- rldskit's own exports, old and new


@pytest.fixture(scope="module")
def rldskit_exports(tmp_path_factory):
    """An so100_arm dataset (the optional wrist camera absent in episode 0) exported to LeRobot by
    rldskit now, and the same export as rldskit wrote it before issue 12."""
    from rldskit.exporters.lerobot import export_lerobot
    from rldskit.pipeline import convert
    from rldskit.synth import write_synthetic

    root = tmp_path_factory.mktemp("rldskit_exports")
    spec = load_spec("so100_arm.v1")
    for p in spec.image_paths:
        spec = spec.with_image_shape(p, (32, 48, 3))
    write_synthetic(spec, root / "cap", 3, 5, seed=0)
    ds = convert([root / "cap"], root / "data", name="so100_arm", runner="inline", formats=("array_record",)).path
    export_lerobot(ds, root / "new" / "so100")
    hl.make_old_style_export(root / "new" / "so100", root / "old" / "so100")
    return ds, root / "new" / "so100", root / "old" / "so100"


def test_import_of_rldskit_exports_old_and_new(rldskit_exports, tmp_path):
    """Both mask names make the camera optional (absent frames stay absent, not black), both
    timestamp layouts give the absolute float64 times back bit-exact, and an old export imports
    exactly like a new one."""
    import rldskit

    ds, new, old = rldskit_exports
    originals = list(rldskit.open(ds).episodes("train"))
    got = {}
    for name, src in (("new", new), ("old", old)):
        rep = import_lerobot(src, tmp_path / name)
        assert rep.ok and len(rep.imported) == 3, rep.to_json()
        _valid(rep)
        spec = load_spec(tmp_path / name / "schema.json")
        assert spec.leaf("observation/images/wrist").optional
        assert not any("present" in p for p in spec.step_leaves if p != "observation/images/wrist_present"), \
            sorted(spec.step_leaves)
        assert spec.leaf("extra/rldskit.timestamp.control").dtype == "float64"
        eps = _eps(tmp_path / name)
        for i, want in enumerate(originals):
            ep = eps[i]
            np.testing.assert_array_equal(ep.steps["observation/images/wrist_present"],
                                          want.steps["observation/images/wrist_present"])
            for path in ("timestamp/control", "timestamp/camera_front", "timestamp/joints"):
                mine = np.asarray(ep.steps["extra/rldskit." + path.replace("/", ".")], np.float64).reshape(-1)
                assert mine.view(np.uint64).tolist() == np.asarray(want.steps[path]).view(np.uint64).tolist(), path
        assert not eps[0].steps["observation/images/wrist_present"].any()
        assert all(not b for b in eps[0].steps["observation/images/wrist"])
        got[name] = eps
    for i in got["new"]:
        a, b = got["new"][i], got["old"][i]
        assert set(a.steps) == set(b.steps)
        for k in a.steps:
            va, vb = np.asarray(a.steps[k]), np.asarray(b.steps[k])
            if va.dtype == object:
                assert list(va) == list(vb), k
            else:
                assert va.tobytes() == vb.tobytes(), k
    assert (tmp_path / "new" / "schema.json").read_text() == (tmp_path / "old" / "schema.json").read_text()


def test_lost_timestamp_start_is_reported(rldskit_exports, tmp_path):
    """If a tool rewrote the data without the start column (and meta/episodes without its copy),
    the offsets are imported as they are, with a warning naming the columns."""
    import shutil

    import pyarrow.parquet as pq

    _, new, _ = rldskit_exports
    src = tmp_path / "so100"
    shutil.copytree(new, src)
    for f in list((src / "data").rglob("*.parquet")) + list((src / "meta" / "episodes").rglob("*.parquet")):
        t = pq.read_table(f)
        pq.write_table(t.drop_columns([c for c in t.column_names if "timestamp_start" in c]), f)
    rep = import_lerobot(src, tmp_path / "out")
    assert len(rep.imported) == 3
    w = [x for d in rep.datasets for x in d.warnings if x.code == "TIMESTAMP_START_MISSING"]
    assert w and "rldskit.timestamp.control" in w[0].message
    ep = _eps(tmp_path / "out")[0]
    assert float(np.asarray(ep.steps["extra/rldskit.timestamp.control"]).max()) < 10.0


def test_rldskit_export_rewritten_by_lerobot_tools(rldskit_exports, tmp_path):
    """lerobot 0.4.4's ``dataset_tools.delete_episodes`` (checked with the real package) rebuilds
    info.json without the ``rldskit`` mapping and meta/episodes without ``rldskit/*`` columns, but
    keeps the data columns: masks and timestamp offsets are still recognised by their names."""
    import shutil

    import pyarrow.parquet as pq

    import rldskit

    ds, new, _ = rldskit_exports
    src = tmp_path / "so100"
    shutil.copytree(new, src)
    info = json.loads((src / "meta" / "info.json").read_text())
    del info["rldskit"]
    (src / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    for f in (src / "meta" / "episodes").rglob("*.parquet"):
        t = pq.read_table(f)
        pq.write_table(t.drop_columns([c for c in t.column_names if c.startswith("rldskit/")]), f)
    rep = import_lerobot(src, tmp_path / "out")
    assert rep.ok and len(rep.imported) == 3
    spec = load_spec(tmp_path / "out" / "schema.json")
    assert spec.leaf("observation/images/wrist").optional
    assert "extra/rldskit.present.wrist" not in spec.step_leaves and "extra/rldskit.timestamp_start" not in spec.step_leaves
    eps = _eps(tmp_path / "out")
    for i, want in enumerate(rldskit.open(ds).episodes("train")):
        mine = np.asarray(eps[i].steps["extra/rldskit.timestamp.control"], np.float64).reshape(-1)
        assert mine.tobytes() == np.asarray(want.steps["timestamp/control"]).tobytes()
        np.testing.assert_array_equal(eps[i].steps["observation/images/wrist_present"],
                                      want.steps["observation/images/wrist_present"])
