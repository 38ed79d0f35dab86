"""Conversion pipeline: layouts, quarantine, accounting, determinism across runners, crashes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rldskit.episode import assert_episodes_equal
from rldskit.formats.capture_dir import read_episode
from rldskit.pipeline import ConversionError, convert
from rldskit.spec import load_spec
from rldskit.synth import write_synthetic

from shared_fixtures import BRIDGE  # noqa: E402
SHAPE = (24, 32, 3)


def small_spec():
    return load_spec("pi5_donkey.v1").with_image_shape("observation/image", SHAPE)


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    root = tmp_path_factory.mktemp("cap")
    write_synthetic(small_spec(), root / "eps", 6, 15, seed=4)
    return root / "eps"


def _with_bad_episodes(src: Path, dst: Path) -> dict[str, str]:
    """Copy ``src`` and damage three episodes; returns {episode folder name: expected code}."""
    shutil.copytree(src, dst)
    eps = sorted(p for p in dst.iterdir() if p.is_dir())
    f = eps[1] / "steps" / "000000.jsonl"
    lines = f.read_text().splitlines(True)
    step = json.loads(lines[3])
    step["action"] = [float("nan"), 0.1]
    lines[3] = json.dumps(step) + "\n"
    f.write_text("".join(lines))
    (eps[3] / "frames" / "image" / "000004.jpg").unlink()
    g = eps[4] / "steps" / "000000.jsonl"
    g.write_bytes(g.read_bytes()[:-20])
    return {eps[1].name: "NON_FINITE", eps[3].name: "IMAGE_MISSING", eps[4].name: "JSON_TRUNCATED"}


def _outputs(res) -> dict[str, str]:
    return {o["file"]: o["sha256"] for o in res.manifest["outputs"]}


def test_inline_conversion_writes_every_layout_and_accounts_for_every_input(captures, tmp_path):
    res = convert([captures], tmp_path / "data", name="donkey", runner="inline", shard_size_mb=0.05)
    out = res.path
    assert out == tmp_path / "data" / "donkey" / "1.0.0"
    c = res.counts
    assert (c["inputs"], c["written"], c["quarantined"], c["steps"]) == (6, 6, 0, 90)
    names = sorted(p.name for p in out.iterdir())
    assert {"dataset_info.json", "features.json", "rldskit_spec.json", "manifest.json", "episodes.parquet", "steps"} <= set(names)
    tf_shards = [n for n in names if ".tfrecord-" in n]
    ar_shards = [n for n in names if ".array_record-" in n]
    assert len(tf_shards) == len(ar_shards) >= 2
    assert not (out / ".rldskit_work").exists()
    # the episode layout decodes to exactly the source episodes
    from rldskit.formats.tfds_dir import open_dataset

    ds = open_dataset(out)
    got = sorted(ds.episodes(), key=lambda e: e.episode_id)
    src = sorted((read_episode(p, load_frames=True) for p in sorted(captures.iterdir()) if p.is_dir()),
                 key=lambda e: e.episode_id)
    for a, b in zip(src, got):
        assert_episodes_equal(a, b)
    # manifest checksums are the files' checksums
    import hashlib

    for o in res.manifest["outputs"]:
        assert hashlib.sha256((out / o["file"]).read_bytes()).hexdigest() == o["sha256"]


def test_step_index_points_at_the_right_steps(captures, tmp_path):
    import pyarrow.parquet as pq

    from rldskit.formats.arrayrecord import ArrayRecordShardReader
    from rldskit.formats.tfexample import decode_step

    res = convert([captures], tmp_path / "data", name="donkey", runner="inline", shard_size_mb=0.05)
    out = res.path
    spec = small_spec()
    table = pq.read_table(out / "episodes.parquet").to_pylist()
    assert len(table) == 6
    assert [r["first_step"] for r in table] == list(np.cumsum([0] + [r["length"] for r in table[:-1]]))
    src = {read_episode(p).episode_id: read_episode(p, load_frames=True) for p in captures.iterdir() if p.is_dir()}
    for row in table:
        ep = src[row["episode_id"]]
        with ArrayRecordShardReader(out / row["step_file"]) as r:
            recs = r.read(list(range(row["step_offset"], row["step_offset"] + row["length"])))
        for i, rec in enumerate(recs):
            step = decode_step(rec, spec)
            np.testing.assert_array_equal(step["action"], ep.steps["action"][i])
            assert step["timestamp/control"] == ep.steps["timestamp/control"][i]
            assert step["observation/image"] == ep.steps["observation/image"][i]
        # low-dimensional columns kept in RAM-friendly form
        np.testing.assert_array_equal(np.array(row["action"], dtype=np.float32), ep.steps["action"])
        assert row["timestamp/control"] == list(ep.steps["timestamp/control"])


def test_bad_episodes_are_quarantined_with_reasons_and_the_rest_convert(captures, tmp_path):
    damaged = _with_bad_episodes(captures, tmp_path / "in")
    res = convert([tmp_path / "in"], tmp_path / "data", name="donkey", runner="inline")
    c = res.counts
    assert (c["inputs"], c["written"], c["quarantined"]) == (6, 3, 3)
    q = {Path(x["key"]).name: [r["code"] for r in x["reasons"]] for x in res.manifest["quarantine"]}
    assert set(q) == set(damaged)
    for name, code in damaged.items():
        assert code in q[name], (name, q[name])
    statuses = {Path(i["source"]).name: i["status"] for i in res.manifest["inputs"]}
    assert sum(s == "quarantined" for s in statuses.values()) == 3


def test_cli_convert_exit_codes(captures, tmp_path):
    from rldskit.cli import main

    assert main(["convert", str(captures), "--out", str(tmp_path / "d"), "--name", "x", "--runner", "inline"]) == 0
    assert main(["convert", str(captures), "--out", str(tmp_path / "d"), "--name", "x", "--runner", "inline"]) == 2  # exists
    assert main(["convert", str(captures), "--out", str(tmp_path / "d"), "--name", "x", "--runner", "inline",
                 "--overwrite"]) == 0
    assert main(["convert", str(tmp_path / "nope"), "--out", str(tmp_path / "d"), "--name", "y"]) == 2
    _with_bad_episodes(captures, tmp_path / "bad")
    assert main(["convert", str(tmp_path / "bad"), "--out", str(tmp_path / "d"), "--name", "z", "--runner", "inline"]) == 1


def test_empty_input_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError):
        convert([tmp_path / "empty"], tmp_path / "data", name="x", runner="inline")


@pytest.mark.slow
def test_direct_runner_multi_processing_matches_inline_byte_for_byte(captures, tmp_path):
    inline = convert([captures], tmp_path / "a", name="donkey", runner="inline", shard_size_mb=0.05)
    direct = convert([captures], tmp_path / "b", name="donkey", runner="direct", num_workers=2, shard_size_mb=0.05)
    assert direct.counts == inline.counts
    assert _outputs(direct) == _outputs(inline)


@pytest.mark.slow
def test_twenty_back_to_back_multi_processing_conversions_agree(tmp_path):
    src = tmp_path / "eps"
    write_synthetic(small_spec(), src, 40, 5, seed=9)
    first = None
    for n in range(20):
        res = convert([src], tmp_path / f"run{n}", name="donkey", runner="direct", num_workers=2, shard_size_mb=0.02,
                      formats=("tfrecord",), step_index=False)
        assert res.counts["written"] == 40, n
        if first is None:
            first = _outputs(res)
        assert _outputs(res) == first, n


@pytest.mark.slow
def test_dask_runner_on_a_local_cluster_matches_direct_runner(captures, tmp_path):
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    direct = convert([captures], tmp_path / "a", name="donkey", runner="direct", num_workers=2, shard_size_mb=0.05)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster):
        dask = convert([captures], tmp_path / "b", name="donkey", runner="dask", dask_address=cluster.scheduler_address,
                       shard_size_mb=0.05)
    assert dask.counts == direct.counts
    assert _outputs(dask) == _outputs(direct)


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_output(tmp_path):
    src = tmp_path / "eps"
    write_synthetic(small_spec(), src, 30, 20, seed=2)
    ref = convert([src], tmp_path / "ref", name="donkey", runner="inline", shard_size_mb=0.05)
    cmd = [sys.executable, "-m", "rldskit.cli", "convert", str(src), "--out", str(tmp_path / "out"), "--name", "donkey",
           "--runner", "inline", "--shard-size-mb", "0.05"]
    rng = np.random.default_rng(0)
    from rldskit.formats.tfrecord import verify_tfrecord

    for attempt in range(4):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(0.3, 2.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        out = tmp_path / "out" / "donkey" / "1.0.0"
        if out.exists():
            for f in out.iterdir():  # any file under a final shard name is complete
                if ".tfrecord-" in f.name:
                    n, problems = verify_tfrecord(f)
                    assert not problems, (attempt, f, problems)
        finished = (out / "dataset_info.json").exists()
        r = subprocess.run(cmd + (["--overwrite"] if finished else []), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert json.loads((out / "manifest.json").read_text())["outputs"] == ref.manifest["outputs"]


@pytest.mark.skipif(not BRIDGE.is_dir(), reason="shared Open-X fixture not present")
def test_open_x_bridge_converts_to_the_step_layout(tmp_path):
    import pyarrow.parquet as pq

    from rldskit.formats.tfds_dir import open_dataset

    from rldskit.validation import Gates

    # The Octo debug subset cuts episodes to 10 steps and never sets is_last: every episode is
    # quarantined under default gates (see test_bridge_default_gates_quarantine_everything).
    gates = Gates(severity={"FLAG_IS_LAST": "warning"})
    res = convert([BRIDGE], tmp_path / "data", name="bridge_steps", runner="inline", last_step="valid",
                  formats=("array_record",), gates=gates)
    assert res.counts == {"inputs": 50, "written": 50, "quarantined": 0, "steps": 500}
    table = pq.read_table(res.path / "episodes.parquet")
    assert sorted(set(table.column("split").to_pylist())) == ["train", "val"]
    src = open_dataset(BRIDGE, last_step="valid")
    ours = open_dataset(res.path)
    a = next(iter(src.episodes("val")))
    b = next(iter(ours.episodes("val")))
    assert_episodes_equal(a, b)
    with pytest.raises(Exception, match="last_step"):
        convert([BRIDGE], tmp_path / "data2", name="b", runner="inline")


@pytest.mark.skipif(not BRIDGE.is_dir(), reason="shared Open-X fixture not present")
def test_bridge_default_gates_quarantine_everything_and_leave_no_dataset(tmp_path):
    with pytest.raises(ConversionError, match="all 50 inputs were quarantined.*FLAG_IS_LAST"):
        convert([BRIDGE], tmp_path / "data", name="b", runner="inline", last_step="valid", formats=("array_record",))
    assert not (tmp_path / "data" / "b" / "1.0.0" / "dataset_info.json").exists()


# =========================================================================== inputs recorded without local paths


def _tree_digest(folder: Path) -> str:
    """Independent model of an input's digest: sha256 of 'relpath NUL size NUL sha256 LF' lines."""
    import hashlib

    lines = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = f.relative_to(folder).as_posix()
        lines.append(f"{rel}\0{f.stat().st_size}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def test_inputs_are_recorded_relative_to_their_source_with_a_content_digest(captures, tmp_path):
    a = tmp_path / "site_a" / "deep" / "eps"
    damaged = _with_bad_episodes(captures, a)
    b = tmp_path / "site_b" / "eps"
    shutil.copytree(a, b)
    (b / sorted(damaged)[0] / ".metadata.json.123.tmp").write_text("an interrupted write")  # hidden: not content
    ra = convert([a], tmp_path / "da", name="donkey", runner="inline", shard_size_mb=0.05)
    rb = convert([b], tmp_path / "db", name="donkey", runner="inline", shard_size_mb=0.05)
    eps = sorted(p for p in a.iterdir() if p.is_dir())
    m = ra.manifest
    assert [i["source"] for i in m["inputs"]] == [f"eps/{e.name}" for e in eps]
    assert [i["sha256"] for i in m["inputs"]] == [_tree_digest(e) for e in eps]
    assert sorted(q["key"] for q in m["quarantine"]) == sorted(f"eps/{n}" for n in damaged)
    assert m["roots"] == [{"root": 0, "name": "eps", "kind": "capture", "inputs": 6, "sha256": m["roots"][0]["sha256"]}]
    # the same episodes elsewhere give the same manifest and byte-identical files
    assert rb.manifest == m
    text = (ra.path / "manifest.json").read_text() + json.dumps(
        __import__("pyarrow.parquet", fromlist=["x"]).read_table(ra.path / "episodes.parquet").column("source").to_pylist())
    assert str(tmp_path) not in text and "site_a" not in text
    for o in m["outputs"]:
        assert (ra.path / o["file"]).read_bytes() == (rb.path / o["file"]).read_bytes(), o["file"]
    # reasons name files inside the episode, never where it lives
    assert all(str(tmp_path) not in r["message"] for q in m["quarantine"] for r in q["reasons"])
    # a manifest source resolves back to the input, given the sources of the run
    from rldskit.pipeline.plan import resolve_source

    assert [resolve_source(i["source"], [a]) for i in m["inputs"]] == eps
    with pytest.raises(KeyError, match="no source named"):
        resolve_source("other/ep", [a])
    # one changed frame changes that input's digest (and its root's) only
    frame = next((eps[0] / "frames" / "image").iterdir())
    data = bytearray(frame.read_bytes())
    data[-3] ^= 0x01
    frame.write_bytes(bytes(data))
    rc = convert([a], tmp_path / "dc", name="donkey", runner="inline", shard_size_mb=0.05)
    changed = [x["source"] for x, y in zip(rc.manifest["inputs"], m["inputs"]) if x["sha256"] != y["sha256"]]
    assert changed == [f"eps/{eps[0].name}"]
    assert rc.manifest["roots"][0]["sha256"] != m["roots"][0]["sha256"]


def test_sources_sharing_a_name_tfds_inputs_and_single_files_are_recorded_apart(captures, tmp_path):
    import hashlib

    import pyarrow.parquet as pq

    from helpers_capture import inline_frames, read_lines, read_meta, with_flags, write_single_file
    from rldskit.pipeline.plan import InputItem, resolve_source
    from rldskit.pipeline.shard import _record_bytes

    a, b = tmp_path / "one" / "eps", tmp_path / "two" / "eps"
    shutil.copytree(captures, a)
    shutil.copytree(captures, b)
    res = convert([a, b], tmp_path / "d", name="two", runner="inline")
    assert [(r["name"], r["inputs"]) for r in res.manifest["roots"]] == [("eps", 6), ("eps~2", 6)]
    sources = [i["source"] for i in res.manifest["inputs"]]
    assert len(set(sources)) == 12 and all(s.startswith(("eps/", "eps~2/")) for s in sources)
    assert pq.read_table(res.path / "episodes.parquet").column("source").to_pylist() == sources
    assert [resolve_source(s, [a, b]).parent for s in sources] == [a] * 6 + [b] * 6
    # a converted dataset as input: records of its shards, under the given folder's name
    again = convert([res.path], tmp_path / "d2", name="again", runner="inline", formats=("array_record",))
    first = again.manifest["inputs"][0]
    assert all(i["source"].startswith("1.0.0/two-train.tfrecord-") and "#" in i["source"]
               for i in again.manifest["inputs"])
    assert str(tmp_path) not in json.dumps(again.manifest)
    shard = resolve_source(first["source"], [res.path])
    assert shard.parent == res.path and shard.is_file()
    item = InputItem(0, "tfds", str(shard), "train", 0, record=0, source_format="tfrecord")
    assert first["sha256"] == hashlib.sha256(_record_bytes(item)).hexdigest()
    # a single-file episode given as the source itself: recorded by its file name, digest = its sha256
    ep = sorted(p for p in captures.iterdir() if p.is_dir())[0]
    single = tmp_path / "files" / "ep7.json"
    single.parent.mkdir()
    meta = {k: v for k, v in read_meta(ep).items() if k not in ("status", "end")}
    write_single_file(single, meta, with_flags(inline_frames(ep, read_lines(ep), small_spec()), False))
    one = convert([single], tmp_path / "d3", name="one", runner="inline", spec=small_spec())
    assert one.counts["written"] == 1, one.manifest["quarantine"]
    assert [(i["source"], i["sha256"]) for i in one.manifest["inputs"]] == \
        [("ep7.json", hashlib.sha256(single.read_bytes()).hexdigest())]
    assert resolve_source("ep7.json", [single]) == single


def test_pipeline_command_outputs_hold_no_local_paths_and_a_moved_rerun_is_up_to_date(captures, tmp_path):
    from helpers_leaks import leaks

    from rldskit.cli.pipeline import run_pipeline

    eps = tmp_path / "LEAKROOT_p4" / "eps"
    shutil.copytree(captures, eps)
    out = tmp_path / "work"
    said: list[str] = []
    run_pipeline([eps], out, name="donkey", runner="inline", echo=said.append)
    state = json.loads((out / "pipeline_state.json").read_text())
    assert state["convert"]["dataset"] == "data/donkey/1.0.0" and state["stats"]["stats"] == "data/donkey/1.0.0/stats.json"
    found = leaks([out], [str(tmp_path), str(tmp_path.resolve()), "LEAKROOT_p4"])
    assert found == {}, found
    # the inputs and the working folder moved elsewhere (mtimes kept): nothing to redo
    shutil.copytree(tmp_path / "LEAKROOT_p4", tmp_path / "moved" / "LEAKROOT_p4")
    shutil.copytree(out, tmp_path / "moved" / "work")
    said.clear()
    res = run_pipeline([tmp_path / "moved" / "LEAKROOT_p4" / "eps"], tmp_path / "moved" / "work", name="donkey",
                       runner="inline", echo=said.append)
    assert res["stages"] == {"validate": "up to date", "convert": "up to date", "stats": "up to date",
                             "train": "off", "export": "off", "bundle": "off"}, said


# --------------------------------------------------------------------------- a shard task's failure


def test_a_shard_tasks_exception_is_recorded_for_the_driver_not_raised_into_beam(tmp_path, monkeypatch):
    """Beam's failure path can hang the multi-processing DirectRunner (see pipeline/beam.py), so
    the shard task returns its exception through the work folder and the driver raises it."""
    import rldskit.pipeline.beam as B
    import rldskit.pipeline.shard as S
    from rldskit.pipeline.plan import WORK_DIR, ConvertOptions

    opts = ConvertOptions(out_dir=str(tmp_path / "ds"), name="ds", spec_json="{}")
    (tmp_path / "ds" / WORK_DIR).mkdir(parents=True)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(S, "write_shard", full_disk)
    assert list(B._write((0, "train", 3, []), opts)) == []  # nothing emitted, nothing raised
    assert list(B._write((1, "train", 4, []), opts)) == []
    failed = B._failures(opts)
    assert [f["shard"] for f in failed] == ["train-00003", "train-00004"]
    assert failed[0]["error"] == "OSError: [Errno 28] No space left on device"
    assert "full_disk" in failed[0]["traceback"] and failed[0]["traceback"].startswith("Traceback")
    # when even the record cannot be written, the exception goes to Beam as before
    lost = ConvertOptions(out_dir=str(tmp_path / "gone"), name="ds", spec_json="{}")
    with pytest.raises(OSError, match="No space left"):
        list(B._write((0, "train", 0, []), lost))


def test_failed_shards_make_the_conversion_fail_with_the_first_error_and_the_count(tmp_path, monkeypatch):
    import rldskit.pipeline.beam as B
    import rldskit.pipeline.shard as S
    from rldskit.pipeline import ConversionError
    from rldskit.pipeline.plan import WORK_DIR, ConvertOptions, ShardPlan

    opts = ConvertOptions(out_dir=str(tmp_path / "ds"), name="ds", spec_json="{}")
    (tmp_path / "ds" / WORK_DIR).mkdir(parents=True)
    monkeypatch.setattr(S, "write_shard", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad shard")))
    shards = [ShardPlan("train", i, ()) for i in range(3)]
    with pytest.raises(ConversionError, match=r"failed: ValueError: bad shard in shard train-00000 \(and 2 more of 3 "
                                              r"shards\)") as e:
        B.run_beam(opts, shards, ["--runner=DirectRunner"])  # one process: the injected failure applies
    assert isinstance(e.value.__cause__, B.ShardTaskError) and "bad shard" in str(e.value.__cause__)
