"""The TFDS builder ``builders/rlds_capture``, run through the real ``tfds build`` CLI.

A capture folder of 4 clean synthetic pi5_donkey episodes (24x32 camera) plus 2 broken ones
(a NaN action in a step line; a missing frame file) is built with ``tfds build`` in a
subprocess, then read back with ``tfds.builder_from_directory``: the 4 good episodes must come
back exactly (actions, float64 timestamps, flags, text, and the JPEG bytes identical to the
frame files), each once, and the 2 broken ones must be listed in ``quarantine.json`` with
their reasons. The build's ``manifest.json`` is the pipeline's: the same inputs, quarantine
records and counts as ``rldskit convert`` of the same folder writes. Slow: every build starts
TensorFlow (and Beam) in a fresh process.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from rldskit.formats.capture_dir import read_episode
from rldskit.spec import load_spec
from rldskit.synth import write_synthetic

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BUILDER = ROOT / "builders" / "rlds_capture"
BROKEN = {"ep_0001_00000": "NON_FINITE", "ep_0002_00000": "IMAGE_MISSING"}

# `tfds` of tensorflow-datasets 4.9.10 imports mlcroissant at start-up (for its
# build_croissant command) although mlcroissant is only in its tests-all extra. When it is
# missing, the same CLI entry point is started with an inert stand-in for that module.
_CLI_WITHOUT_CROISSANT = """\
import sys, types
stub = types.ModuleType("mlcroissant")
stub.__getattr__ = lambda name: type(name, (), {})
sys.modules["mlcroissant"] = stub
from tensorflow_datasets.scripts.cli.main import launch_cli
sys.argv[0] = "tfds"
launch_cli()
"""
_STATE: dict[str, bool] = {}


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """``(folder, spec, {episode_id: path} of the good episodes)``."""
    spec = load_spec("pi5_donkey.v1").with_image_shape("observation/image", (24, 32, 3))
    folder = tmp_path_factory.mktemp("builders") / "capture"
    good = write_synthetic(spec, folder, 4, 12, seed=0)
    nan_ep = write_synthetic(spec, folder, 1, 12, seed=1)[0]
    chunk = nan_ep / "steps" / "000000.jsonl"
    lines = chunk.read_text().split("\n")
    lines[3], n = re.subn(r'"action":\[[^\]]*\]', '"action":[NaN,0.25]', lines[3])
    assert n == 1
    chunk.write_text("\n".join(lines))
    frame_ep = write_synthetic(spec, folder, 1, 12, seed=2)[0]
    (frame_ep / "frames" / "image" / "000005.jpg").unlink()
    assert {nan_ep.name, frame_ep.name} == set(BROKEN)
    return folder, spec, {p.name: p for p in good}


def tfds_build(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``tfds build builders/rlds_capture ARGS`` with the venv's console script."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLDSKIT_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    tfds_exe = Path(sys.executable).parent / "tfds"
    cmd = [str(tfds_exe), "build", str(BUILDER), *args]
    res = None
    if not _STATE.get("croissant_missing"):
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        _STATE["croissant_missing"] = res.returncode != 0 and "No module named 'mlcroissant'" in res.stderr
    if _STATE["croissant_missing"]:
        warnings.warn("the tfds console script needs mlcroissant (tensorflow-datasets 4.9.10 imports it at "
                      "start-up); running the same CLI entry point with a stand-in for it")
        cmd = [sys.executable, "-c", _CLI_WITHOUT_CROISSANT, "build", str(BUILDER), *args]
        res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-6000:]}"
    return res


def dataset_dir(data_dir: Path, config: str = "capture") -> Path:
    return data_dir / "rlds_capture" / config / "1.0.0"


def skip_images():
    import tensorflow_datasets as tfds

    return {"steps": {"observation": {"image": tfds.decode.SkipDecoding()}}}


def assert_same_episode(steps: list[dict], meta: dict, source, spec) -> None:
    """One episode read back through TFDS equals the captured source, value for value."""
    src = read_episode(source, spec)
    T = len(src)
    assert len(steps) == T
    eid = meta["episode_id"]
    assert (eid.decode() if isinstance(eid, bytes) else eid) == src.episode_id
    assert np.asarray(meta["start_time"]).dtype == np.float64
    assert float(meta["start_time"]) == src.metadata["start_time"]
    for path in ("action", "policy_action"):
        got = np.stack([s[path] for s in steps])
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, src.steps[path], err_msg=f"{src.episode_id} {path}")
    for clock in ("camera", "control"):
        got = np.array([s["timestamp"][clock] for s in steps])
        assert got.dtype == np.float64, f"timestamp/{clock} came back as {got.dtype}"
        assert got.tobytes() == np.asarray(src.steps[f"timestamp/{clock}"], dtype=np.float64).tobytes(), \
            f"{src.episode_id} timestamp/{clock} is not bit-exact"
    for path in ("reward", "discount", "is_first", "is_last", "is_terminal", "policy_action_present"):
        np.testing.assert_array_equal(np.array([s[path] for s in steps]), src.steps[path], err_msg=path)
    assert [s["control_mode"].decode() for s in steps] == list(src.steps["control_mode"])
    frames = src.steps["observation/image"]
    for i, s in enumerate(steps):
        assert isinstance(s["observation"]["image"], bytes)
        assert s["observation"]["image"] == frames[i] == frames.path(i).read_bytes(), f"{src.episode_id} frame {i}"


def assert_quarantine(ds_dir: Path, *, written: dict[str, int]) -> dict:
    report = json.loads((ds_dir / "quarantine.json").read_text())
    assert report["episodes_in"] == 6
    assert report["written"] == written
    assert report["quarantined_count"] == len(BROKEN) == len(report["quarantined"])
    got = {r["episode_id"]: r for r in report["quarantined"]}
    assert set(got) == set(BROKEN)
    for eid, code in BROKEN.items():
        reasons = got[eid]["reasons"]
        assert [r["code"] for r in reasons] == [code], reasons
        assert set(reasons[0]) == {"code", "step", "field", "message"} and reasons[0]["message"]
    assert got["ep_0001_00000"]["reasons"][0]["step"] == 3
    assert got["ep_0001_00000"]["reasons"][0]["field"] == "action"
    assert got["ep_0002_00000"]["reasons"][0]["step"] == 5
    assert not list(ds_dir.glob("*-part.json")), "temporary part files were left behind"
    # the pipeline's quarantine record (key: the input named under its source, the capture folder)
    assert {r["key"] for r in report["quarantined"]} == {f"capture/{e}" for e in BROKEN}
    return report


MANIFEST_KEYS = {"format", "name", "spec", "counts", "roots", "inputs", "outputs", "quarantine"}


def assert_manifest(ds_dir: Path, folder: Path, file_format: str) -> dict:
    """The build's manifest.json has the pipeline's shape and accounts for every input."""
    manifest = json.loads((ds_dir / "manifest.json").read_text())
    assert set(manifest) == MANIFEST_KEYS and manifest["format"] == "rldskit.dataset/1"
    assert manifest["name"] == "rlds_capture" and manifest["spec"] == "pi5_donkey"
    assert manifest["counts"] == {"inputs": 6, "written": 4, "quarantined": 2, "steps": 4 * 12}
    status = {i["source"].split("/", 1)[1]: i["status"] for i in manifest["inputs"]}
    assert status == {e: "quarantined" if e in BROKEN else "written" for e in status} and len(status) == 6
    assert {q["key"].split("/", 1)[1]: [r["code"] for r in q["reasons"]] for q in manifest["quarantine"]} == \
        {e: [c] for e, c in BROKEN.items()}
    files = sorted(p.name for p in ds_dir.glob(f"rlds_capture-*.{file_format}*"))
    assert sorted(o["file"] for o in manifest["outputs"]) == files
    for o in manifest["outputs"]:
        assert o["sha256"] == hashlib.sha256((ds_dir / o["file"]).read_bytes()).hexdigest()
        assert o["format"] == file_format and o["layout"] == "episodes"
        assert o["bytes"] == (ds_dir / o["file"]).stat().st_size
    assert sum(o["records"] for o in manifest["outputs"]) == 4
    assert str(folder) not in json.dumps(manifest), "a local path in manifest.json"
    return manifest


@pytest.fixture(scope="module")
def array_record_build(capture, tmp_path_factory):
    """One ``tfds build --file_format=array_record`` of the capture: ``(data_dir, result)``."""
    folder = capture[0]
    cwd = tmp_path_factory.mktemp("array_record_build")
    data_dir = cwd / "tfds"
    res = tfds_build(f"--manual_dir={folder}", f"--data_dir={data_dir}", "--file_format=array_record", cwd=cwd)
    return data_dir, res


def test_tfds_build_array_record_reads_back_exactly(capture, array_record_build):
    import tensorflow_datasets as tfds

    folder, spec, good = capture
    data_dir, res = array_record_build
    assert "6 episodes in, 4 written" in res.stdout

    ds_dir = dataset_dir(data_dir)
    report = assert_quarantine(ds_dir, written={"train": 4})
    assert report["runner"] == "python" and report["file_format"] == "array_record"
    assert report["schema"]["from"] == str(folder / "schema.json")
    assert_manifest(ds_dir, folder, "array_record")

    builder = tfds.builder_from_directory(ds_dir)
    assert builder.info.splits["train"].num_examples == 4
    assert builder.info.features["steps"]["observation"]["image"].shape == (24, 32, 3)
    source = builder.as_data_source(split="train", decoders=skip_images())
    assert len(source) == 4
    seen = collections.Counter()
    for i in range(len(source)):
        ep = source[i]
        steps = [ep["steps"][j] for j in range(len(ep["steps"]))]
        eid = ep["episode_metadata"]["episode_id"].decode()
        seen[eid] += 1
        assert_same_episode(steps, ep["episode_metadata"], good[eid], spec)
    assert seen == {eid: 1 for eid in good}

    # and the frames decode through TFDS to the declared shape
    decoded = builder.as_data_source(split="train")[0]["steps"][0]["observation"]["image"]
    assert decoded.shape == (24, 32, 3) and decoded.dtype == np.uint8


def test_tfds_build_beam_multi_processing_tfrecord(capture, tmp_path):
    import tensorflow_datasets as tfds

    folder, spec, good = capture
    data_dir = tmp_path / "tfds"
    res = tfds_build(f"--manual_dir={folder}", f"--data_dir={data_dir}", "--file_format=tfrecord",
                     "--beam_pipeline_options=direct_running_mode=multi_processing,direct_num_workers=2",
                     cwd=tmp_path)
    assert "6 episodes in, 4 written" in res.stdout

    ds_dir = dataset_dir(data_dir)
    report = assert_quarantine(ds_dir, written={"train": 4})
    assert report["runner"] == "beam" and report["file_format"] == "tfrecord"
    assert_manifest(ds_dir, folder, "tfrecord")  # the workers' records, collected through Beam
    assert sorted(p.name for p in ds_dir.glob("*.tfrecord*")) == ["rlds_capture-train.tfrecord-00000-of-00001"]

    builder = tfds.builder_from_directory(ds_dir)
    assert builder.info.splits["train"].num_examples == 4
    seen = collections.Counter()
    for ep in tfds.as_numpy(builder.as_dataset(split="train", decoders=skip_images())):
        eid = ep["episode_metadata"]["episode_id"].decode()
        seen[eid] += 1
        assert_same_episode(list(ep["steps"]), ep["episode_metadata"], good[eid], spec)
    assert seen == {eid: 1 for eid in good}, f"episodes read back: {dict(seen)}"


def test_tfds_build_json_config_val_split(capture, tmp_path):
    """A custom config given as JSON on the command line: explicit schema file and a
    deterministic val split by episode-id hash."""
    import tensorflow_datasets as tfds

    folder, spec, good = capture
    data_dir = tmp_path / "tfds"
    schema_file = tmp_path / "donkey_small.json"
    spec.save(schema_file)
    config = json.dumps({"name": "with_val", "schema": str(schema_file), "val_fraction": 0.5})
    tfds_build(f"--manual_dir={folder}", f"--data_dir={data_dir}", f"--config={config}",
               "--file_format=array_record", cwd=tmp_path)

    def in_val(eid: str) -> bool:  # the builder's rule: sha256 of the episode id vs the fraction
        return int.from_bytes(hashlib.sha256(eid.encode()).digest()[:8], "big") / 2.0**64 < 0.5

    want = {"train": sorted(e for e in good if not in_val(e)), "val": sorted(e for e in good if in_val(e))}
    ds_dir = dataset_dir(data_dir, "with_val")
    report = json.loads((ds_dir / "quarantine.json").read_text())
    assert report["schema"]["from"].startswith(str(schema_file))
    assert report["written"] == {k: len(v) for k, v in want.items() if v}
    assert {r["episode_id"] for r in report["quarantined"]} == set(BROKEN)
    builder = tfds.builder_from_directory(ds_dir)
    for split, ids in want.items():
        if not ids:
            continue
        source = builder.as_data_source(split=split, decoders=skip_images())
        got = sorted(source[i]["episode_metadata"]["episode_id"].decode() for i in range(len(source)))
        assert got == ids, split


def test_builder_manifest_is_the_one_rldskit_convert_writes(capture, array_record_build, tmp_path):
    """The builder accounts for its episodes and writes its manifest with the pipeline's functions:
    the same inputs (names, sizes, sha256, status), roots and quarantine records (reasons included)
    as ``rldskit convert`` of the same capture folder; only the files differ (TFDS wrote them)."""
    from rldskit.pipeline import convert

    folder, spec, _ = capture
    data_dir, _ = array_record_build
    ours = json.loads((dataset_dir(data_dir) / "manifest.json").read_text())
    theirs = convert([folder], tmp_path / "converted", name="rlds_capture", formats=("array_record",),
                     runner="inline").manifest
    assert set(ours) == set(theirs) == MANIFEST_KEYS
    assert ours["format"] == theirs["format"] and ours["name"] == theirs["name"] and ours["spec"] == theirs["spec"]
    assert ours["counts"] == theirs["counts"]
    assert ours["roots"] == theirs["roots"]
    assert ours["inputs"] == theirs["inputs"]
    assert [set(q) for q in ours["quarantine"]] == [set(q) for q in theirs["quarantine"]]
    assert [{k: v for k, v in q.items() if k != "shard"} for q in ours["quarantine"]] == \
        [{k: v for k, v in q.items() if k != "shard"} for q in theirs["quarantine"]]
    assert {q["shard"] for q in ours["quarantine"]} == {"train"}  # the split (TFDS chose the shards)
    episode_outputs = [o for o in theirs["outputs"] if o["layout"] == "episodes"]
    assert [set(o) for o in ours["outputs"]] == [set(o) for o in episode_outputs]
    assert sum(o["records"] for o in ours["outputs"]) == sum(o["records"] for o in episode_outputs) == 4
