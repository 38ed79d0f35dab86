"""TFDS dataset directories (``rldskit.formats.tfds_dir``): metadata we write is what TFDS reads,
``open_dataset`` reads ours and a real Open-X dataset, ``verify``/``validate``/``inspect`` find
missing, corrupt and miscounted shards. TensorFlow Datasets is the reference (slow tests only);
the library itself never imports it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import rldskit
from rldskit.cli import main
from rldskit.episode import assert_episodes_equal, flatten_step
from rldskit.formats.arrayrecord import ArrayRecordShardWriter
from rldskit.formats.capture_dir import read_episode
from rldskit.formats.tfexample import encode_episode
from rldskit.formats.tfrecord import TFRecordWriter, index_tfrecord
from rldskit.formats.tfds_dir import (DatasetError, is_dataset_dir, open_dataset, shard_name,
                                      write_tfds_metadata)
from rldskit.spec import EpisodeSpec, Image, SpecError, Text, load_spec
from rldskit.synth import write_synthetic
from rldskit.validation import validate_dataset

from shared_fixtures import BRIDGE  # noqa: E402
needs_bridge = pytest.mark.skipif(not BRIDGE.is_dir(), reason=f"shared Open-X fixture absent: {BRIDGE}")
NAME = "donkey"
#: episodes per shard, per split, of the dataset the tests write (5 synthetic episodes)
SPLITS = {"train": [2, 1], "val": [2]}


def write_dataset(out: Path, spec: EpisodeSpec, episodes, splits=SPLITS, formats=("tfrecord", "array_record")) -> Path:
    """Write ``episodes`` (in order) into shards of ``splits`` in every format, then the metadata."""
    out.mkdir(parents=True)
    it = iter(episodes)
    split_bytes = {}
    for split, lengths in splits.items():
        split_bytes[split] = 0
        for k, n in enumerate(lengths):
            records = [encode_episode(next(it), spec) for _ in range(n)]
            for fmt in formats:
                path = out / shard_name(NAME, split, fmt, k, len(lengths))
                w = TFRecordWriter(path) if fmt == "tfrecord" else ArrayRecordShardWriter(path, compression="uncompressed")
                with w:
                    for r in records:
                        w.write(r)
                if fmt == formats[0]:
                    split_bytes[split] += path.stat().st_size
    write_tfds_metadata(out, spec, name=NAME, file_format=formats[0], splits=splits, split_bytes=split_bytes,
                        alternative_file_formats=formats[1:], description="synthetic test data")
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """``(spec, episodes)``: 5 synthetic pi5_donkey episodes of 8 steps, frames loaded."""
    spec = load_spec("pi5_donkey.v1").with_image_shape("observation/image", (24, 32, 3))
    root = tmp_path_factory.mktemp("capture")
    return spec, [read_episode(p, load_frames=True) for p in write_synthetic(spec, root, 5, 8, seed=2)]


@pytest.fixture(scope="module")
def ours(tmp_path_factory, source) -> Path:
    """Our dataset, TFRecord + ArrayRecord side by side. Module-wide: copy before changing it."""
    spec, eps = source
    return write_dataset(tmp_path_factory.mktemp("ours") / NAME / spec.version, spec, eps)


def copy_of(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy" / src.parent.name / src.name
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)  # the shared fixture is read-only
    return dst


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def codes(issues) -> list[str]:
    return sorted({i.code if hasattr(i, "code") else i["code"] for i in issues})


# =========================================================================== writing


def test_shard_names_are_tfds_names():
    assert shard_name("bridge_dataset", "train", "tfrecord", 0, 1) == "bridge_dataset-train.tfrecord-00000-of-00001"
    assert shard_name("d", "val", "array_record", 12, 300) == "d-val.array_record-00012-of-00300"
    assert shard_name("d", "val", "tfrecord", 3, 123456) == "d-val.tfrecord-000003-of-123456"  # TFDS widens, too
    with pytest.raises(ValueError, match="riegeli"):
        shard_name("d", "train", "riegeli", 0, 1)
    with pytest.raises(ValueError, match="outside"):
        shard_name("d", "train", "tfrecord", 1, 1)


def test_metadata_files(ours, source):
    spec, _ = source
    info = json.loads((ours / "dataset_info.json").read_bytes())
    assert info["name"] == NAME and info["version"] == spec.version
    assert info["fileFormat"] == "tfrecord" and info["alternativeFileFormats"] == ["array_record"]
    assert [s["name"] for s in info["splits"]] == ["train", "val"]
    assert info["splits"][0]["shardLengths"] == ["2", "1"]  # strings, as protobuf's JSON writes int64
    assert int(info["splits"][0]["numBytes"]) == sum(p.stat().st_size for p in ours.glob("*-train.tfrecord-*"))
    assert json.loads((ours / "features.json").read_bytes()) == spec.to_tfds_features_json()
    assert EpisodeSpec.from_dict(json.loads((ours / "rldskit_spec.json").read_bytes())) == spec
    assert not [p.name for p in ours.iterdir() if p.name.startswith(".")]  # no temp files left


def test_metadata_is_refused_over_missing_shards(tmp_path, source):
    spec, eps = source
    out = tmp_path / NAME / spec.version
    out.mkdir(parents=True)
    with TFRecordWriter(out / shard_name(NAME, "train", "tfrecord", 0, 2)) as w:
        w.write(encode_episode(eps[0], spec))
    with pytest.raises(FileNotFoundError, match=r"donkey-train\.tfrecord-00001-of-00002"):
        write_tfds_metadata(out, spec, name=NAME, file_format="tfrecord", splits={"train": [1, 1]},
                            split_bytes={"train": 1})
    with pytest.raises(FileNotFoundError, match=r"array_record-00000-of-00002"):
        write_tfds_metadata(out, spec, name=NAME, file_format="tfrecord", splits={"train": [1, 1]},
                            split_bytes={"train": 1}, alternative_file_formats=("array_record",))
    assert not (out / "dataset_info.json").exists()
    with pytest.raises(ValueError, match="split_bytes"):
        write_tfds_metadata(out, spec, name=NAME, file_format="tfrecord", splits={"train": [1]}, split_bytes={})


# =========================================================================== reading ours


def test_open_reads_our_dataset_exactly_in_both_formats(ours, source):
    spec, eps = source
    for where in (ours, ours.parent, ours.parent.parent):  # version dir, <name>/, <data_dir>/
        ds = open_dataset(where)
        assert ds.path == ours
    assert rldskit.open is open_dataset
    assert ds.spec == spec and ds.spec_source == "rldskit_spec.json" and ds.spec.last_step == spec.last_step
    assert (ds.name, ds.version, ds.file_formats) == (NAME, spec.version, ("tfrecord", "array_record"))
    assert [p.name for p in ds.splits["train"]] == ["donkey-train.tfrecord-00000-of-00002",
                                                    "donkey-train.tfrecord-00001-of-00002"]
    assert ds.shards("val", "array_record")[0].name == "donkey-val.array_record-00000-of-00001"
    assert (ds.num_episodes(), ds.num_episodes("train"), ds.num_episodes("val")) == (5, 3, 2)
    assert ds.num_steps() == 40 and ds.num_steps("val") == 16
    for fmt in ds.file_formats:
        got = list(ds.episodes(file_format=fmt))
        assert len(got) == len(eps)
        for a, b in zip(eps, got):
            assert_episodes_equal(a, b)
    assert [e.episode_id for e in ds.episodes("val")] == [e.episode_id for e in eps[3:]]
    assert ds.verify() == []
    report = validate_dataset(ds)
    assert report.ok and report.episodes == 5 and report.steps == 40, report.format_table()
    assert open_dataset(ours, last_step=spec.last_step).spec == spec
    with pytest.raises(SpecError, match="contradicts"):
        open_dataset(ours, last_step="rlds" if spec.last_step == "valid" else "valid")
    with pytest.raises(KeyError, match="no split 'test'"):
        ds.num_episodes("test")


def test_num_steps_uses_the_episode_index_beside_the_shards(ours, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    d = copy_of(ours, tmp_path)
    pq.write_table(pa.table({"episode_id": ["a", "b", "c", "d", "e"], "split": ["train"] * 3 + ["val"] * 2,
                             "length": [100, 100, 100, 7, 7]}), d / "episodes.parquet")
    ds = open_dataset(d)
    assert (ds.num_steps("train"), ds.num_steps("val"), ds.num_steps()) == (300, 14, 314)  # the index, not the shards
    pq.write_table(pa.table({"split": ["train"], "length": [5]}), d / "episodes.parquet")  # disagrees with the shards
    assert ds.num_steps() == 40


def test_folders_that_are_not_datasets(tmp_path, ours):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="not a TFDS dataset: no dataset_info.json"):
        open_dataset(empty)
    assert not is_dataset_dir(empty)
    with pytest.raises(DatasetError, match="no such file"):
        open_dataset(tmp_path / "absent")
    d = copy_of(ours, tmp_path)
    info = json.loads((d / "dataset_info.json").read_bytes())
    (d / "dataset_info.json").unlink()
    with pytest.raises(DatasetError, match="unfinished conversion"):
        open_dataset(d)
    assert is_dataset_dir(d)
    (d / "dataset_info.json").write_text("{not json")
    with pytest.raises(DatasetError, match="dataset_info.json: not valid JSON"):
        open_dataset(d)
    (d / "dataset_info.json").write_text(json.dumps(dict(info, fileFormat="riegeli")))
    with pytest.raises(DatasetError, match="'riegeli' is not supported"):
        open_dataset(d)
    (d / "dataset_info.json").write_text(json.dumps(dict(info, splits=[{"shardLengths": ["1"]}])))
    with pytest.raises(DatasetError, match="needs a 'name'"):
        open_dataset(d)
    shutil.copytree(ours, d.parent / "2.0.0")
    with pytest.raises(DatasetError, match="holds 2 datasets"):
        open_dataset(d.parent)


# =========================================================================== reading Open-X


@needs_bridge
def test_open_x_bridge_opens_with_an_explicit_last_step():
    with pytest.raises(SpecError, match="last_step"):
        open_dataset(BRIDGE)
    ds = open_dataset(BRIDGE, last_step="valid")
    assert (ds.name, ds.version, ds.file_formats, ds.spec_source) == ("bridge_dataset", "1.0.0", ("tfrecord",), "features.json")
    assert ds.spec.last_step == "valid" and not ds.spec.standard_metadata
    assert isinstance(ds.spec.step_leaves["observation/image_0"], Image)
    assert isinstance(ds.spec.step_leaves["language_instruction"], Text)
    assert (ds.num_episodes("train"), ds.num_episodes("val")) == (25, 25)
    for split in ("train", "val"):
        eps = list(ds.episodes(split))
        assert len(eps) == 25 and {len(e) for e in eps} == {10}
    assert ds.num_steps() == 500
    assert ds.verify() == []


# =========================================================================== faults


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@needs_bridge
def test_faults_in_a_tfrecord_dataset_are_reported_with_file_and_offset(tmp_path, capsys):
    d = copy_of(BRIDGE, tmp_path)
    train = d / "bridge_dataset-train.tfrecord-00000-of-00001"
    val = d / "bridge_dataset-val.tfrecord-00000-of-00001"
    offset, length = index_tfrecord(train)[3]
    _flip(train, offset + 12 + length // 2)  # inside record 3's data
    ds = open_dataset(d, last_step="valid")
    issues = ds.verify()
    assert codes(issues) == ["SHARD_CORRUPT"] and len(issues) == 1
    assert issues[0].episode == str(train)
    assert f"byte offset {offset}" in issues[0].message and "record 3" in issues[0].message
    assert len(list(ds.episodes("val"))) == 25  # the other split is intact
    report = validate_dataset(ds)
    assert report.episodes == 49  # every record but the corrupt one was still checked

    val_size = val.stat().st_size
    with open(val, "r+b") as f:
        f.truncate(val_size - 100)
    last_offset = index_tfrecord(BRIDGE / val.name)[-1][0]
    issues = open_dataset(d, last_step="valid").verify()
    cut = [i for i in issues if i.episode == str(val)]
    assert codes(cut) == ["SHARD_CORRUPT"]
    assert f"byte offset {last_offset}" in cut[0].message and "truncated" in cut[0].message

    code, out, _ = run(capsys, "validate", d, "--last-step", "valid", "--format", "json")
    assert code == 1
    assert {"SHARD_CORRUPT"} <= set(codes(json.loads(out)["issues"]))
    code, out, _ = run(capsys, "inspect", d, "--last-step", "valid")
    assert code == 1 and "SHARD_CORRUPT" in out and str(offset) in out

    train.unlink()
    issues = open_dataset(d, last_step="valid").verify()
    assert [i.code for i in issues if i.episode == str(train)] == ["SHARD_MISSING"]
    code, out, _ = run(capsys, "validate", d, "--last-step", "valid", "--format", "json")
    assert code == 1 and "SHARD_MISSING" in codes(json.loads(out)["issues"])


@needs_bridge
def test_wrong_shard_lengths_are_a_count_mismatch(tmp_path, capsys):
    d = copy_of(BRIDGE, tmp_path)
    info = json.loads((d / "dataset_info.json").read_bytes())
    info["splits"][0]["shardLengths"] = ["24"]
    (d / "dataset_info.json").write_text(json.dumps(info))
    issues = open_dataset(d, last_step="valid").verify()
    assert codes(issues) == ["SHARD_COUNT_MISMATCH"]
    assert "25 records" in issues[0].message and "says 24" in issues[0].message
    code, out, _ = run(capsys, "validate", d, "--last-step", "valid", "--format", "json")
    assert code == 1 and "SHARD_COUNT_MISMATCH" in codes(json.loads(out)["issues"])


def test_faults_in_array_record_shards_and_undecodable_records(ours, source, tmp_path, capsys):
    spec, eps = source
    d = copy_of(ours, tmp_path)
    ar = d / shard_name(NAME, "train", "array_record", 0, 2)
    _flip(ar, 200)  # inside the first record's chunk
    val = d / shard_name(NAME, "val", "tfrecord", 0, 1)
    val.unlink()
    with TFRecordWriter(val) as w:  # intact framing, but record 1 is no episode
        w.write(encode_episode(eps[3], spec))
        w.write(b"\x0a\x03not an episode")
    gone = d / shard_name(NAME, "val", "array_record", 0, 1)
    gone.unlink()
    issues = open_dataset(d).verify()
    by_file = {Path(i.episode).name: i for i in issues}
    assert by_file[ar.name].code == "SHARD_CORRUPT" and "record 0" in by_file[ar.name].message
    assert by_file[val.name].code == "RECORD_UNDECODABLE" and "record 1 (byte offset" in by_file[val.name].message
    assert by_file[gone.name].code == "SHARD_MISSING"
    code, out, _ = run(capsys, "validate", d, "--format", "json")
    report = json.loads(out)
    assert code == 1 and codes(report["issues"]) == ["RECORD_UNDECODABLE", "SHARD_CORRUPT", "SHARD_MISSING"]
    assert report["episodes"] == 4  # the primary (TFRecord) format's decodable episodes were validated


# =========================================================================== CLI


def test_cli_on_our_dataset(ours, capsys):
    code, out, _ = run(capsys, "validate", ours, "--format", "json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["episodes"] == 5 and report["steps"] == 40
    code, out, _ = run(capsys, "inspect", ours)
    assert code == 0
    assert f"{NAME} 1.0.0" in out and "tfrecord, array_record" in out and "rldskit_spec.json" in out
    assert "observation/image" in out and "jpeg" in out and "[s]" in out  # timestamps carry their unit
    assert "train" in out and "val" in out
    code, out, _ = run(capsys, "inspect", ours, "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["ok"] and data["splits"]["train"] == {"shards": 2, "episodes": 3, "steps": 24,
                                                                    "bytes": data["splits"]["train"]["bytes"]}
    step = data["sample"]["step"]
    assert step["observation/image"].startswith("jpeg 32x24 RGB")  # width x height, never the bytes
    assert step["is_first"] is True and isinstance(step["action"], list)
    assert {f["path"] for f in data["features"]["steps"]} == set(load_spec("pi5_donkey.v1").step_leaves)


@needs_bridge
def test_cli_on_the_open_x_fixture(capsys):
    code, out, _ = run(capsys, "inspect", BRIDGE, "--last-step", "valid", "--format", "json")
    data = json.loads(out)
    assert code == 0 and data["name"] == "bridge_dataset" and data["spec"]["source"] == "features.json"
    assert {s: (v["episodes"], v["steps"]) for s, v in data["splits"].items()} == {"train": (25, 250), "val": (25, 250)}
    assert data["sample"]["step"]["observation/image_0"].startswith("jpeg 64x64 RGB")
    assert data["sample"]["step"]["language_instruction"]
    code, _, err = run(capsys, "inspect", BRIDGE)
    assert code == 2 and "--last-step" in err
    # The Octo debug subset cuts every episode to 10 steps and never sets is_last: RLDS says the
    # last step is_last, so validate must report exactly that, 50 times, and nothing else.
    code, out, _ = run(capsys, "validate", BRIDGE, "--last-step", "valid", "--format", "json")
    report = json.loads(out)
    assert code == 1 and report["episodes"] == 50 and report["steps"] == 500
    assert codes(report["issues"]) == ["FLAG_IS_LAST"] and len(report["issues"]) == 50
    assert report["issues"][0]["episode"] == "bridge_dataset-train.tfrecord-00000-of-00001#0"


def test_cli_on_folders_that_are_not_datasets(tmp_path, ours, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "inspect", empty)
    assert code == 2 and "not a TFDS dataset" in err
    code, _, _ = run(capsys, "validate", empty)
    assert code == 2
    d = copy_of(ours, tmp_path)
    (d / "dataset_info.json").unlink()
    for cmd in ("validate", "inspect"):
        code, _, err = run(capsys, cmd, d)
        assert code == 2 and "unfinished conversion" in err


# =========================================================================== TFDS as the reference


def _tfds_columns(steps, metadata) -> tuple[dict[str, list], dict]:
    """TFDS's nested steps and metadata as flat ``{path: [values]}`` and ``{path: value}``."""
    cols: dict[str, list] = {}
    for step in steps:
        for k, v in flatten_step(step).items():
            cols.setdefault(k, []).append(v)
    return cols, flatten_step(metadata)


def _assert_same_as_tfds(ep, cols, meta, spec: EpisodeSpec) -> None:
    """Exact equality of one of our episodes and TFDS's decoding of it (images as their bytes)."""
    for path, leaf in spec.step_leaves.items():
        got, want = cols[path], ep.steps[path]
        if isinstance(leaf, Image):
            assert [bytes(g) for g in got] == [bytes(w) for w in want], path
        elif isinstance(leaf, Text):
            assert [g.decode() for g in got] == list(want), path
        else:
            g = np.stack([np.asarray(x) for x in got])
            assert g.dtype == want.dtype, (path, g.dtype, want.dtype)
            np.testing.assert_array_equal(g, want, err_msg=path)
    for path, leaf in spec.metadata_leaves.items():
        got, want = meta[path], ep.metadata[path]
        if isinstance(leaf, Text):
            assert got.decode() == want, path
        elif leaf.dtype == "string":
            assert [g.decode() for g in got] == list(want), path
        else:
            assert np.asarray(got).dtype == np.dtype(leaf.dtype) and np.asarray(got).item() == want, path


def _skip_images(spec: EpisodeSpec) -> dict:
    import tensorflow_datasets as tfds

    from rldskit.episode import nest

    return {"steps": nest({p: tfds.decode.SkipDecoding() for p in spec.image_paths})}


@pytest.mark.slow
def test_tfds_as_dataset_reads_our_tfrecord_shards_exactly(ours, source, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    spec, eps = source
    d = copy_of(ours, tmp_path)
    for p in d.glob("*.array_record-*"):
        p.unlink()  # proves that as_dataset reads the TFRecord shards
    builder = tfds.builder_from_directory(str(d))
    assert builder.info.splits["train"].shard_lengths == [2, 1]
    by_id = {e.episode_id: e for e in eps}
    seen = []
    for split in ("train", "val"):
        for ex in tfds.as_numpy(builder.as_dataset(split=split, decoders=_skip_images(spec))):
            cols, meta = _tfds_columns(ex["steps"], ex["episode_metadata"])
            ep = by_id[meta["episode_id"].decode()]
            _assert_same_as_tfds(ep, cols, meta, spec)
            seen.append((split, ep.episode_id))
    assert sorted(seen) == sorted([("train", e.episode_id) for e in eps[:3]] + [("val", e.episode_id) for e in eps[3:]])
    assert spec.step_leaves["timestamp/control"].dtype == "float64"  # compared exactly above


@pytest.mark.slow
def test_tfds_as_data_source_reads_our_array_record_shards_exactly(ours, source, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    import io

    from PIL import Image as PILImage

    spec, eps = source
    d = copy_of(ours, tmp_path)
    for p in d.glob("*.tfrecord-*"):
        p.unlink()  # proves that as_data_source reads the ArrayRecord shards (fileFormat says tfrecord)
    builder = tfds.builder_from_directory(str(d))
    src = builder.as_data_source(split="train", decoders=_skip_images(spec))
    assert builder.info.file_format.value == "array_record"  # tfds switched to the alternative format
    assert len(src) == 3
    for i, ep in enumerate(eps[:3]):  # random access in shard order
        ex = src[i]
        steps = ex["steps"]
        cols, meta = _tfds_columns([steps[j] for j in range(len(steps))], ex["episode_metadata"])
        _assert_same_as_tfds(ep, cols, meta, spec)
    pixels = tfds.builder_from_directory(str(d)).as_data_source(split="val")[1]["steps"][0]["observation"]["image"]
    frame = eps[4].steps["observation/image"][0]
    np.testing.assert_array_equal(pixels, np.asarray(PILImage.open(io.BytesIO(frame)).convert("RGB")))


@pytest.mark.slow
@needs_bridge
def test_open_x_bridge_values_equal_tfds(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    ds = open_dataset(BRIDGE, last_step="valid")
    builder = tfds.builder_from_directory(str(BRIDGE))
    for split in ("train", "val"):
        ours = list(ds.episodes(split))[:4]
        theirs = tfds.as_numpy(builder.as_dataset(split=split, decoders=_skip_images(ds.spec)).take(4))
        for ep, ex in zip(ours, theirs, strict=True):  # one shard per split: file order on both sides
            cols, meta = _tfds_columns(ex["steps"], ex["episode_metadata"])
            _assert_same_as_tfds(ep, cols, meta, ds.spec)
