"""``rldskit.stats``: per-feature statistics and exact quantiles against numpy on the concatenated
steps, NaN/inf handling, optional features, episode lengths, control rate and timestamp skew,
breakdowns by metadata, stats.json as the loaders read it, the ``stats`` CLI and bad inputs."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fuzzing import examples

pl = pytest.importorskip("polars")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import rldskit  # noqa: E402
from rldskit.pipeline import convert  # noqa: E402
from rldskit.spec import EpisodeSpec, load_spec  # noqa: E402
from rldskit.stats import (  # noqa: E402
    DATASET_KEY, QUANTILES, EmptyDatasetError, StatsError, dataset_stats, format_table, register_cli, write_stats)
from rldskit.synth import write_synthetic  # noqa: E402

CAM = (24, 32, 3)
QKEYS = ("q01", "q10", "q50", "q90", "q99")

PROBE_SPEC = {
    "name": "probe", "version": "1.0.0", "fps": 25, "rate_hz": [20, 30], "last_step": "valid",
    "primary_clock": "timestamp/control",
    "steps": {
        "observation": {"image": {"type": "image", "shape": [8, 8, 3], "encoding": "jpeg"},
                        "grid": {"type": "tensor", "shape": [2, 3], "dtype": "float32"},
                        "counter": {"type": "tensor", "shape": [2], "dtype": "int16", "bounds": [-50, 50]}},
        "action": {"type": "tensor", "shape": [2], "dtype": "float32", "bounds": [-1, 1]},
        "timestamp": {"control": {"type": "scalar", "dtype": "float64", "unit": "s"},
                      "camera": {"type": "scalar", "dtype": "float64", "unit": "s"}},
    },
}


# =========================================================================== fixtures and helpers


def _convert(root: Path, spec: EpisodeSpec, plan: list[tuple[int, int, int]], name: str) -> Path:
    for episodes, steps, seed in plan:
        write_synthetic(spec, root / "cap", episodes, steps, seed=seed)
    return convert([root / "cap"], root / "data", name=name, runner="inline", shard_size_mb=0.01,
                   formats=("array_record",)).path


@pytest.fixture(scope="module")
def donkey(tmp_path_factory) -> Path:
    """pi5_donkey: episodes of 12, 12, 12, 2, 2 and 1 steps; tags seed:0/1/2; user and pilot roles."""
    spec = load_spec("pi5_donkey.v1").with_image_shape("observation/image", CAM)
    return _convert(tmp_path_factory.mktemp("stats_donkey"), spec, [(3, 12, 0), (2, 2, 1), (1, 1, 2)], "donkey")


@pytest.fixture(scope="module")
def xr(tmp_path_factory) -> Path:
    """xr_teleop: many optional signals that drop out in spans."""
    spec = load_spec("xr_teleop.v1").with_image_shape("observation/image", CAM)
    return _convert(tmp_path_factory.mktemp("stats_xr"), spec, [(3, 16, 0)], "xr")


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    """A 2x3 float tensor, an int16 vector and two timestamp streams at exactly 25 Hz."""
    return _convert(tmp_path_factory.mktemp("stats_probe"), EpisodeSpec.from_dict(PROBE_SPEC), [(2, 9, 0)], "probe")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _columns(version: Path) -> dict[str, np.ndarray]:
    """Every list column of episodes.parquet as (N, *shape), in file order (the plain pyarrow way)."""
    table = pq.read_table(version / "episodes.parquet")
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if not pa.types.is_list(col.type):
            continue
        values, shape = col.flatten(), []
        while pa.types.is_fixed_size_list(values.type):
            shape.append(values.type.list_size)
            values = values.flatten()
        out[name] = np.asarray(values.to_numpy(zero_copy_only=False)).reshape((-1, *shape))
    return out


def _rewrite(version: Path, **columns: np.ndarray) -> None:
    """Replace list columns of episodes.parquet with new (N, *shape) values (same episode lengths)."""
    f = version / "episodes.parquet"
    table = pq.read_table(f)
    for name, values in columns.items():
        col = table.column(name).combine_chunks()
        inner = pa.array(np.ascontiguousarray(values).reshape(-1))
        for d in reversed(values.shape[1:]):
            inner = pa.FixedSizeListArray.from_arrays(inner, d)
        table = table.set_column(table.column_names.index(name), name, pa.ListArray.from_arrays(col.offsets, inner))
    pq.write_table(table, f)


def _lengths(version: Path) -> np.ndarray:
    return pq.read_table(version / "episodes.parquet").column("length").to_numpy()


def _assert_float_stats(stat: dict, x: np.ndarray) -> None:
    """Our stats of one float feature equal numpy's over the concatenated (N, *shape) values x."""
    x = x.astype(np.float64)
    assert stat["count"] == len(x)
    np.testing.assert_allclose(stat["mean"], x.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(stat["std"], x.std(0), rtol=1e-7, atol=1e-9)
    assert np.array_equal(np.asarray(stat["min"]), x.min(0)) and np.array_equal(np.asarray(stat["max"]), x.max(0))
    ref = np.quantile(x, QUANTILES, axis=0, method="linear")
    flat = x.reshape(len(x), -1)
    srt = np.sort(flat, axis=0)
    for j, key in enumerate(QKEYS):
        got = np.asarray(stat[key], dtype=np.float64)
        np.testing.assert_allclose(got, ref[j], rtol=1e-12, atol=0)
        # exact: between the two order statistics that linear interpolation uses, not an estimate
        h = QUANTILES[j] * (len(x) - 1)
        lo, hi = srt[int(np.floor(h))], srt[int(np.ceil(h))]
        g = got.reshape(-1)
        assert np.all((lo <= g) & (g <= hi)), (key, g, lo, hi)
        if h == int(h):
            assert np.array_equal(g, lo)


# =========================================================================== feature statistics


def test_float_features_equal_numpy_over_all_steps(donkey):
    st = dataset_stats(donkey, by=())
    cols = _columns(donkey)
    n = int(_lengths(donkey).sum())
    spec = rldskit.open(donkey).spec
    floats = [k for k in cols if spec.step_leaves[k].dtype.startswith("float")]
    assert set(floats) == {"action", "reward", "discount", "timestamp/camera", "timestamp/control", "policy_action"}
    for key in floats:
        if key == "policy_action":
            continue  # optional: see test_optional_features_over_their_present_steps
        _assert_float_stats(st[key], cols[key])
        assert st[key]["nan"] == ([0, 0] if cols[key].ndim == 2 else 0)
        assert st[key]["dtype"] == spec.step_leaves[key].dtype
    assert st["action"]["names"] == ["steering", "throttle"] and st["action"]["count"] == n
    assert isinstance(st["reward"]["mean"], float) and len(st["action"]["q50"]) == 2


def test_integer_bool_and_multidimensional_features(probe):
    st = dataset_stats(probe, by=())
    cols = _columns(probe)
    counter = cols["observation/counter"].astype(np.int64)
    c = st["observation/counter"]
    assert c["count"] == len(counter) and c["dtype"] == "int16"
    assert c["min"] == counter.min(0).tolist() and c["max"] == counter.max(0).tolist()
    np.testing.assert_allclose(c["mean"], counter.mean(0), rtol=1e-12)
    assert "q50" not in c and "std" not in c
    grid = st["observation/grid"]
    assert np.asarray(grid["mean"]).shape == (2, 3) and np.asarray(grid["q99"]).shape == (2, 3)
    _assert_float_stats(grid, cols["observation/grid"].reshape(-1, 2, 3))  # stored flat
    first = st["is_first"]
    assert (first["min"], first["max"]) == (0, 1) and first["mean"] == pytest.approx(2 / 18)


def test_optional_features_over_their_present_steps(xr, donkey):
    st = dataset_stats(xr, by=())
    cols = _columns(xr)
    spec = rldskit.open(xr).spec
    optional = [p for p, leaf in spec.step_leaves.items() if getattr(leaf, "optional", False) and p in cols]
    assert len(optional) >= 8
    partly = 0
    for key in optional:
        present = cols[key + "_present"].astype(bool)
        assert st[key]["present_fraction"] == pytest.approx(present.mean())
        assert st[key]["count"] == int(present.sum())
        if present.any():
            _assert_float_stats(st[key], cols[key][present])
        partly += 0 < present.sum() < len(present)
    assert partly >= 3  # the fill values of absent steps would change these if they were counted
    # donkey: policy_action only on pilot steps
    dst = dataset_stats(donkey, by=())
    dcols = _columns(donkey)
    present = dcols["policy_action_present"].astype(bool)
    assert 0 < present.sum() < len(present)
    _assert_float_stats(dst["policy_action"], dcols["policy_action"][present])


def test_an_optional_feature_never_present_gets_neutral_stats(donkey, tmp_path):
    copy = _copy(donkey, tmp_path / "copy")
    cols = _columns(copy)
    _rewrite(copy, policy_action_present=np.zeros_like(cols["policy_action_present"]))
    s = dataset_stats(copy, by=())["policy_action"]
    assert s["count"] == 0 and s["present_fraction"] == 0
    assert s["mean"] == [0, 0] and s["std"] == [1, 1] and s["q50"] == [None, None]


def test_nan_and_inf_are_excluded_and_counted(donkey, tmp_path):
    copy = _copy(donkey, tmp_path / "copy")
    action = _columns(copy)["action"].copy()
    action[[0, 5, 17], 0] = np.nan
    action[3, 1] = np.inf
    _rewrite(copy, action=action)
    st = dataset_stats(copy, by=())["action"]
    assert st["nan"] == [3, 0] and st["inf"] == [0, 1] and st["count"] == len(action)
    for i in range(2):
        x = action[:, i].astype(np.float64)
        _assert_float_stats({k: (v[i] if isinstance(v, list) else v) for k, v in st.items()
                             if k in ("mean", "std", "min", "max", *QKEYS)} | {"count": int(np.isfinite(x).sum())},
                            x[np.isfinite(x)])
    path = write_stats(copy, by=())
    text = path.read_text()

    def refuse(c):
        raise AssertionError(f"non-JSON constant {c} in stats.json")

    obj = json.loads(text, parse_constant=refuse)
    assert all(np.isfinite(obj["action"]["mean"]))


def test_quantiles_are_exact_on_random_data(donkey, tmp_path_factory):
    """Random episode lengths and values (ties, NaN) against numpy on the concatenated steps."""
    hypothesis = pytest.importorskip("hypothesis")
    st_ = pytest.importorskip("hypothesis.strategies")
    base = _copy(donkey, tmp_path_factory.mktemp("stats_random") / "d")
    template = pq.read_table(base / "episodes.parquet").slice(0, 1)

    @hypothesis.settings(max_examples=examples(25), deadline=None)
    @hypothesis.given(lengths=st_.lists(st_.integers(1, 40), min_size=1, max_size=6), seed=st_.integers(0, 2**16),
                      nan_rate=st_.sampled_from([0.0, 0.1]), ties=st_.booleans())
    def check(lengths, seed, nan_rate, ties):
        rng = np.random.default_rng(seed)
        n = sum(lengths)
        x = rng.normal(0, 1, (n, 2)).astype(np.float32)
        if ties:
            x = np.round(x * 2) / 2
        x[rng.random((n, 2)) < nan_rate] = np.nan
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        rows = {c: pa.array([template.column(c)[0].as_py()] * len(lengths), type=template.column(c).type)
                for c in ("episode_id", "split", "shard", "step_file", "source")}
        rows["length"] = pa.array(lengths, type=pa.int64())
        rows["action"] = pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 2))
        pq.write_table(pa.table(rows), base / "episodes.parquet")
        got = dataset_stats(base, by=())["action"]
        for i in range(2):
            col = x[:, i].astype(np.float64)
            ok = np.isfinite(col)
            assert got["nan"][i] == int((~ok).sum())
            if not ok.any():
                assert got[QKEYS[2]][i] is None
                continue
            one = {k: got[k][i] for k in ("mean", "std", "min", "max", *QKEYS)} | {"count": int(ok.sum())}
            _assert_float_stats(one, col[ok])

    check()


# =========================================================================== the dataset section


def test_counts_and_episode_lengths(donkey):
    d = dataset_stats(donkey, by=())[DATASET_KEY]
    lengths = np.array([12, 12, 12, 2, 2, 1])
    assert d["episodes"] == 6 and d["steps"] == 41 and d["splits"] == {"train": {"episodes": 6, "steps": 41}}
    el = d["episode_length"]
    assert (el["min"], el["max"]) == (1, 12) and el["mean"] == pytest.approx(41 / 6)
    for key, q in zip(QKEYS, QUANTILES):
        assert el[key] == pytest.approx(np.quantile(lengths, q))
    h = el["histogram"]
    assert h["edges"] == [1, 3, 5, 7, 9, 11, 13] and h["counts"] == [3, 0, 0, 0, 0, 3]  # [a, a + 2) bins
    assert d["quantile_method"] == "linear" and d["split"] is None
    assert dataset_stats(donkey, split="train", by=())[DATASET_KEY]["steps"] == 41


def test_control_rate_and_skew_of_the_synthetic_donkey(donkey):
    d = dataset_stats(donkey, by=())[DATASET_KEY]
    cr = d["control_rate"]
    assert cr["clock"] == "timestamp/control" and cr["nominal_fps"] == 20
    assert cr["episodes_without_rate"] == 1  # the 1-step episode has no interval
    assert cr["rate_hz"]["count"] == 5 and 19.0 < cr["rate_hz"]["min"] <= cr["rate_hz"]["max"] < 21.0
    assert cr["median_dt"]["q50"] == pytest.approx(0.05, abs=1e-3)
    skew = d["timestamp_skew"]["timestamp/camera"]  # synth: the camera leads control by 1-3 ms
    assert skew["vs"] == "timestamp/control" and skew["count"] == 41
    assert 0.001 <= skew["median_abs"] <= skew["p99_abs"] <= skew["max_abs"] <= 0.003 + 1e-9
    assert -0.003 <= skew["mean"] <= -0.001


def test_control_rate_and_skew_exact(donkey, tmp_path):
    """Timestamps rewritten to exactly 25 Hz with the camera 2 ms early (one step 10 ms early)."""
    copy = _copy(donkey, tmp_path / "copy")
    lengths = _lengths(copy)
    t = np.concatenate([1.7e9 + 100.0 * e + np.arange(n) / 25.0 for e, n in enumerate(lengths)])
    cam = t - 0.002
    cam[7] = t[7] - 0.010
    _rewrite(copy, **{"timestamp/control": t, "timestamp/camera": cam})
    d = dataset_stats(copy, by=())[DATASET_KEY]
    r = d["control_rate"]
    assert r["rate_hz"]["count"] == 5 and r["episodes_without_rate"] == 1
    assert r["rate_hz"]["min"] == pytest.approx(25, rel=1e-6) and r["rate_hz"]["max"] == pytest.approx(25, rel=1e-6)
    assert r["median_dt"]["min"] == pytest.approx(0.04, rel=1e-6) and r["median_dt"]["max"] == pytest.approx(0.04, rel=1e-6)
    assert r["episodes_below_range"] == 0 and r["episodes_above_range"] == 0  # pi5_donkey: 18-55 Hz
    s = d["timestamp_skew"]["timestamp/camera"]
    diff = np.abs(cam - t)
    assert s["median_abs"] == pytest.approx(0.002, abs=1e-6) and s["max_abs"] == pytest.approx(0.010, abs=1e-6)
    assert s["p99_abs"] == pytest.approx(np.quantile(diff, 0.99), rel=1e-9)
    assert s["mean"] == pytest.approx((cam - t).mean(), rel=1e-6)
    # too slow for the spec's range: 10 Hz
    slow = np.concatenate([1.7e9 + 100.0 * e + np.arange(n) / 10.0 for e, n in enumerate(lengths)])
    _rewrite(copy, **{"timestamp/control": slow, "timestamp/camera": slow})
    r = dataset_stats(copy, by=())[DATASET_KEY]["control_rate"]
    assert r["episodes_below_range"] == 5 and r["rate_hz"]["q50"] == pytest.approx(10, rel=1e-6)


def test_breakdowns_by_tag_role_and_row_columns(donkey):
    d = dataset_stats(donkey)[DATASET_KEY]
    eps = list(rldskit.open(donkey).episodes())
    by_tag, by_role = d["by"]["tag"], d["by"]["control_role"]
    assert set(by_tag) == {"origin:synthetic", "seed:0", "seed:1", "seed:2"}
    assert (by_tag["origin:synthetic"]["episodes"], by_tag["origin:synthetic"]["steps"]) == (6, 41)
    assert (by_tag["seed:0"]["episodes"], by_tag["seed:0"]["steps"]) == (3, 36)
    assert (by_tag["seed:1"]["episodes"], by_tag["seed:1"]["steps"]) == (2, 4)
    roles = {ep.metadata["control_role"] for ep in eps}
    assert set(by_role) == roles
    for role in roles:
        mine = [ep for ep in eps if ep.metadata["control_role"] == role]
        actions = np.concatenate([ep.steps["action"] for ep in mine]).astype(np.float64)
        assert by_role[role]["episodes"] == len(mine) and by_role[role]["steps"] == len(actions)
        np.testing.assert_allclose(by_role[role]["mean"]["action"], actions.mean(0), rtol=1e-9)
    np.testing.assert_allclose(by_tag["origin:synthetic"]["mean"]["action"],
                               dataset_stats(donkey, by=())["action"]["mean"], rtol=1e-9)
    rows = dataset_stats(donkey, by=("split", "terminal"))[DATASET_KEY]["by"]
    assert rows["split"]["train"]["episodes"] == 6
    assert {k: v["episodes"] for k, v in rows["terminal"].items()} == {"false": 4, "true": 2}
    with pytest.raises(StatsError, match="cannot break down by 'nope'"):
        dataset_stats(donkey, by=("nope",))


def test_breakdown_by_source_names_inputs_as_the_manifest_records_them(donkey):
    """``source`` values are the inputs' paths under the converted folder (``cap/<episode>``), the
    manifest's, never the local path the episodes were read from."""
    by = dataset_stats(donkey, by=("source",))[DATASET_KEY]["by"]["source"]
    manifest = json.loads((donkey / "manifest.json").read_text())
    assert sorted(by) == sorted(i["source"] for i in manifest["inputs"] if i["status"] == "written")
    assert all(k.startswith("cap/ep_") for k in by), sorted(by)
    written = json.dumps(dataset_stats(donkey, by=("source", "tag")))
    assert str(donkey.parents[2]) not in written


# =========================================================================== stats.json and the loaders


def test_write_stats_is_what_the_loaders_use(donkey, tmp_path):
    L = pytest.importorskip("rldskit.loaders")
    copy = _copy(donkey, tmp_path / "copy")
    path = write_stats(copy / "..")  # a folder holding one dataset resolves to its version folder
    assert path.resolve() == (copy / "stats.json").resolve() and path.is_file()
    assert not [p.name for p in copy.iterdir() if p.name.endswith(".tmp")]
    st = L.load_stats(copy)
    assert st is not None and DATASET_KEY in st
    ref = L.compute_stats(L.StepIndex.load(copy))
    assert set(ref) <= set(st)
    for key, r in ref.items():
        assert st[key]["count"] == r["count"]
        np.testing.assert_allclose(st[key]["mean"], r["mean"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(st[key]["std"], r["std"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(st[key]["min"], r["min"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(st[key]["max"], r["max"], rtol=1e-6, atol=1e-6)
    loader = L.windows(copy, normalize="stats", batch_size=4, decode_images=False, observation_keys=[],
                       shuffle=False)
    try:
        assert loader.normalizer is not None and loader.normalizer.source == str(copy / "stats.json")
        batch = next(iter(loader))
        mean, std = np.asarray(st["action"]["mean"]), np.asarray(st["action"]["std"])
        raw = L.StepIndex.load(copy).columns["action"][batch["index"]]
        np.testing.assert_allclose(batch["action"][:, 0], (raw - mean) / std, rtol=1e-5, atol=1e-5)
    finally:
        loader.close()


# =========================================================================== the table and the CLI


def _cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="rldskit")
    sub = ap.add_subparsers(dest="command", required=True)
    register_cli(sub)
    args = ap.parse_args(["stats", *argv])
    return args.func(args)


def test_format_table(donkey):
    text = format_table(dataset_stats(donkey))
    for needle in ("donkey 1.0.0 (all splits): 6 episodes, 41 steps", "action[steering]", "policy_action[throttle]",
                   "q99", "episode length: min 1", "histogram", "control rate (timestamp/control; nominal 20 Hz",
                   "skew timestamp/camera - timestamp/control", "by tag:", "origin:synthetic: 6 episodes, 41 steps"):
        assert needle in text, (needle, text)


def test_cli_table_json_and_no_write(donkey, tmp_path, capsys):
    copy = _copy(donkey, tmp_path / "copy")
    assert _cli([str(copy), "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "action[throttle]" in out and "wrote" not in out and not (copy / "stats.json").exists()
    assert _cli([str(copy), "--json", "--split", "train"]) == 0
    captured = capsys.readouterr()
    obj = json.loads(captured.out)
    assert obj[DATASET_KEY]["split"] == "train" and "action" in obj
    assert str(copy / "stats.json") in captured.err and json.loads((copy / "stats.json").read_text()) == obj
    assert _cli([str(copy), "--by", ""]) == 0
    assert "by" not in json.loads((copy / "stats.json").read_text())[DATASET_KEY]
    assert "wrote" in capsys.readouterr().out


def test_cli_exit_codes_for_bad_datasets(donkey, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert _cli([str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    no_index = _copy(donkey, tmp_path / "no_index")
    (no_index / "episodes.parquet").unlink()
    assert _cli([str(no_index)]) == 2
    err = capsys.readouterr().err
    assert str(no_index / "episodes.parquet") in err and "Traceback" not in err
    corrupt = _copy(donkey, tmp_path / "corrupt")
    (corrupt / "episodes.parquet").write_bytes(b"PAR1 this is not parquet at all")
    assert _cli([str(corrupt)]) == 2
    assert str(corrupt / "episodes.parquet") in capsys.readouterr().err
    assert _cli([str(donkey), "--split", "test", "--no-write"]) == 1
    err = capsys.readouterr().err
    assert "split 'test' has no episodes" in err and "train" in err
    empty = _copy(donkey, tmp_path / "empty")
    table = pq.read_table(empty / "episodes.parquet")
    pq.write_table(table.slice(0, 0), empty / "episodes.parquet")
    assert _cli([str(empty)]) == 1
    assert "no steps" in capsys.readouterr().err and not (empty / "stats.json").exists()


# =========================================================================== bad inputs


def test_single_step_dataset(tmp_path):
    spec = load_spec("pi5_donkey.v1").with_image_shape("observation/image", CAM)
    path = _convert(tmp_path, spec, [(1, 1, 0)], "one")
    st = dataset_stats(path)
    a = _columns(path)["action"][0].astype(np.float64)
    assert st["action"]["count"] == 1 and st["action"]["std"] == [0, 0]
    assert all(st["action"][k] == a.tolist() for k in ("mean", "min", "max", *QKEYS))
    d = st[DATASET_KEY]
    assert d["steps"] == 1 and d["episode_length"]["histogram"] == {"edges": [1, 2], "counts": [1]}
    assert d["control_rate"]["episodes_without_rate"] == 1 and d["control_rate"]["rate_hz"] == {"count": 0}
    assert "control rate" in format_table(st)


def test_bad_inputs_raise_clear_errors(donkey, tmp_path):
    with pytest.raises(StatsError, match="no such file"):
        dataset_stats(tmp_path / "missing")
    copy = _copy(donkey, tmp_path / "copy")
    (copy / "episodes.parquet").unlink()
    with pytest.raises(StatsError, match="episodes.parquet: missing"):
        dataset_stats(copy)
    (copy / "episodes.parquet").write_bytes(b"")
    with pytest.raises(StatsError, match="episodes.parquet"):
        dataset_stats(copy)
    # a column whose lists do not match the episode lengths
    table = pq.read_table(donkey / "episodes.parquet")
    lengths = table.column("length").to_numpy().copy()
    lengths[0] += 1
    pq.write_table(table.set_column(table.column_names.index("length"), "length", pa.array(lengths)),
                   copy / "episodes.parquet")
    with pytest.raises(StatsError, match="do not hold one value per step"):
        dataset_stats(copy)
    # no 'length' column
    pq.write_table(table.drop_columns(["length"]), copy / "episodes.parquet")
    with pytest.raises(StatsError, match="missing"):
        dataset_stats(copy)
    # breakdowns read the episode shards; without them only by=() works
    shardless = _copy(donkey, tmp_path / "shardless")
    for shard in shardless.glob("donkey-train.array_record-*"):
        shard.unlink()
    with pytest.raises(StatsError, match=r"donkey-train\.array_record-\d+-of-\d+: cannot read episode metadata"):
        dataset_stats(shardless)
    assert dataset_stats(shardless, by=())[DATASET_KEY]["steps"] == 41
    with pytest.raises(EmptyDatasetError, match="no episodes"):
        dataset_stats(donkey, split="validation")
    with pytest.raises(ValueError, match="quantiles"):
        dataset_stats(donkey, quantiles=(1.5,))


def test_a_foreign_dataset_without_a_step_index_names_the_missing_file():
    from shared_fixtures import BRIDGE

    if not (BRIDGE / "dataset_info.json").is_file():
        pytest.skip(f"no Open-X fixture at {BRIDGE}")
    with pytest.raises(StatsError, match="episodes.parquet: missing"):
        dataset_stats(BRIDGE)
