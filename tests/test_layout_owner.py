"""The dataset layout has one owner (issue 13 item 1): ``rldskit.formats.tfds_dir`` alone names the
files of a converted dataset folder (an AST scan of rldskit/ and trainers/ for the names as string
constants, with every exception listed and its reason), and ``DatasetLayout``/``DatasetDir``'s
readers give what the readers they replaced gave (plain pyarrow, polars' own parquet reader,
``json.loads`` of the file) on a converted dataset. Dataset validation lives in
``rldskit.validation`` (``validate_dataset``); the format layer has no ``validate``."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pl = pytest.importorskip("polars")

from rldskit.formats import tfds_dir  # noqa: E402
from rldskit.formats.step_index import StepIndex  # noqa: E402
from rldskit.formats.tfds_dir import (  # noqa: E402
    LAYOUT_FILES, DatasetDir, DatasetLayout, finished_versions, is_finished, open_dataset, read_index_table)
from rldskit.pipeline import convert  # noqa: E402
from rldskit.synth import write_synthetic  # noqa: E402
from rldskit.validation import Gates, validate_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OWNER = "rldskit/formats/tfds_dir.py"
NAMES = {"dataset_info.json", "features.json", "rldskit_spec.json", "episodes.parquet", "manifest.json", "stats.json"}

#: (file, name) -> why that file may still spell the name in code. Each entry must still be needed
#: (the scan fails on a stale one, so the list shrinks as the code does).
EXCEPTIONS = {
    ("rldskit/exporters/lerobot.py", "stats.json"): "LeRobot's own meta/stats.json, another format's file",
    ("rldskit/importers/donkey.py", "manifest.json"): "a Donkeycar tub's manifest.json, another format's file",
    ("rldskit/spec.py", "features.json"): "the default source label of EpisodeSpec.from_tfds_features_json for its "
                                          "messages; spec sits below formats and may not import it",
}


def _docstring_nodes(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def _layout_literals() -> dict[tuple[str, str], list[int]]:
    """``(file, name) -> lines`` of every string constant (docstrings aside) that is exactly one of
    the layout's file names, in rldskit/ and trainers/ outside the owner."""
    found: dict[tuple[str, str], list[int]] = {}
    for top in ("rldskit", "trainers"):
        for f in sorted((REPO / top).rglob("*.py")):
            rel = f.relative_to(REPO).as_posix()
            if rel == OWNER:
                continue
            tree = ast.parse(f.read_text(encoding="utf-8"), filename=rel)
            docs = _docstring_nodes(tree)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES
                        and id(node) not in docs):
                    found.setdefault((rel, node.value), []).append(node.lineno)
    return found


def test_the_layout_names_are_the_owners_constants():
    assert set(LAYOUT_FILES) == NAMES and len(LAYOUT_FILES) == len(NAMES)
    assert (tfds_dir.DATASET_INFO_FILE, tfds_dir.FEATURES_FILE, tfds_dir.SPEC_FILE, tfds_dir.EPISODE_INDEX_FILE,
            tfds_dir.MANIFEST_FILE, tfds_dir.STATS_FILE) == ("dataset_info.json", "features.json", "rldskit_spec.json",
                                                             "episodes.parquet", "manifest.json", "stats.json")


def test_no_other_module_spells_a_layout_file_name():
    found = _layout_literals()
    unexpected = {f"{rel}:{lines} {name!r}" for (rel, name), lines in found.items() if (rel, name) not in EXCEPTIONS}
    assert not unexpected, ("take these from rldskit.formats.tfds_dir (DatasetLayout/DatasetDir or its constants): "
                            + ", ".join(sorted(unexpected)))
    stale = sorted(f"{rel} {name!r}" for rel, name in EXCEPTIONS if (rel, name) not in found)
    assert not stale, f"no longer needed, remove from EXCEPTIONS: {stale}"


def test_the_old_names_are_re_exports_of_the_owners():
    import rldskit.hub as hub
    import rldskit.loaders as loaders
    import rldskit.stats as stats
    from rldskit.pipeline import plan

    assert stats.STATS_FILE is tfds_dir.STATS_FILE and loaders.STATS_FILE is tfds_dir.STATS_FILE
    assert plan.MANIFEST_FILE is tfds_dir.MANIFEST_FILE
    assert hub.STATS_FILE is tfds_dir.STATS_FILE and hub.MANIFEST_FILE is tfds_dir.MANIFEST_FILE
    # every file of the layout is one a Hub push manages (and prunes)
    assert all(hub.managed_path(n) for n in LAYOUT_FILES) and not hub.managed_path("notes-manifest.json")


# =========================================================================== the readers


@pytest.fixture(scope="module")
def converted(tmp_path_factory, small_donkey_spec) -> Path:
    """A converted pi5_donkey dataset (TFRecord + ArrayRecord + step index), with stats.json."""
    from rldskit.stats import write_stats

    root = tmp_path_factory.mktemp("layout")
    write_synthetic(small_donkey_spec, root / "cap", 4, 9, seed=3)
    path = convert([root / "cap"], root / "data", name="lay", runner="inline", shard_size_mb=0.01).path
    write_stats(path, by=())
    return path


def test_paths_and_finished(converted, tmp_path):
    ds = open_dataset(converted.parent)  # the folder above the version, as users give it
    assert isinstance(ds, DatasetLayout) and ds.path == converted
    assert (ds.info_path, ds.features_path, ds.spec_path, ds.index_path, ds.manifest_path, ds.stats_path) == tuple(
        converted / n for n in ("dataset_info.json", "features.json", "rldskit_spec.json", "episodes.parquet",
                                "manifest.json", "stats.json"))
    assert all(p.is_file() for p in (ds.info_path, ds.features_path, ds.spec_path, ds.index_path, ds.manifest_path))
    assert ds.is_finished and ds.has_index and is_finished(converted) and not is_finished(converted.parent)
    assert finished_versions(converted.parent) == [converted] and finished_versions(converted / "nope") == []
    # a folder being written: the same names, nothing finished yet
    fresh = DatasetLayout(tmp_path / "v")
    assert fresh.manifest_path == tmp_path / "v" / "manifest.json" and not fresh.is_finished and not fresh.has_index
    assert fresh.stats() is None and fresh.manifest() is None
    (tmp_path / "v" / "0.9.0").mkdir(parents=True)
    (tmp_path / "v" / "1.0.0").mkdir()
    shutil.copy(ds.info_path, tmp_path / "v" / "1.0.0")
    assert finished_versions(tmp_path / "v") == [tmp_path / "v" / "1.0.0"]


def test_the_index_readers_give_what_pyarrow_and_polars_read(converted):
    ds = open_dataset(converted)
    table = ds.index_table()
    assert table.equals(pq.read_table(converted / "episodes.parquet"))
    assert read_index_table(ds.index_path).equals(table)
    assert ds.index_table(["split", "length"]).equals(pq.read_table(converted / "episodes.parquet",
                                                                    columns=["split", "length"]))
    # the statistics' polars frame is this table converted: the same schema and rows as polars' own reader
    frame = pl.from_arrow(table)
    assert dict(frame.schema) == dict(pl.read_parquet_schema(converted / "episodes.parquet"))
    assert frame.equals(pl.read_parquet(converted / "episodes.parquet"))
    with pytest.raises(ValueError, match="FieldRef"):
        ds.index_table(["no_such_column"])


def test_the_step_index_from_the_dataset_is_the_loaded_one(converted):
    ds = open_dataset(converted)
    a, b = ds.index("train"), StepIndex.load(converted, "train")
    assert (a.path, a.split, a.spec, a.step_files, a.num_steps) == (b.path, b.split, b.spec, b.step_files, b.num_steps)
    assert a.episodes.keys() == b.episodes.keys() and a.columns.keys() == b.columns.keys() and a.columns
    assert all(np.array_equal(a.episodes[k], b.episodes[k]) for k in a.episodes)
    assert all(np.array_equal(a.columns[k], b.columns[k]) and a.columns[k].dtype == b.columns[k].dtype
               for k in a.columns)
    with pytest.raises(KeyError, match="no split 'test'"):
        ds.index("test")


def test_stats_and_manifest_readers(converted, tmp_path):
    ds = open_dataset(converted)
    assert ds.stats() == json.loads((converted / "stats.json").read_bytes()) and "_dataset" in ds.stats()
    assert ds.manifest() == json.loads((converted / "manifest.json").read_text()) and ds.manifest()["counts"]["written"] == 4
    copy = DatasetLayout(shutil.copytree(converted, tmp_path / "copy"))
    copy.stats_path.write_text("{not json")
    with pytest.raises(ValueError):
        copy.stats()
    copy.manifest_path.unlink()
    assert copy.manifest() is None


def test_dataset_validation_lives_in_validation(converted, tmp_path):
    ds = open_dataset(converted)
    report = validate_dataset(ds)
    assert report.ok and report.episodes == 4 and report.steps == 36, report.format_table()
    assert not hasattr(ds, "validate")  # the format layer does not validate (rldskit.validation does)
    strict = Gates(min_episodes=5)
    assert [i.code for i in validate_dataset(ds, strict).issues] == ["TOO_FEW_EPISODES"]
    # a lost shard: SHARD_MISSING, and the other format's episodes still checked
    broken = tmp_path / "broken"
    shutil.copytree(converted, broken)
    bds = open_dataset(broken)
    bds.shards("train", "array_record")[0].unlink()
    got = validate_dataset(bds)
    assert "SHARD_MISSING" in [i.code for i in got.issues] and got.episodes == 4
