"""Benchmark: ``rldskit.stats.dataset_stats`` versus a one-query polars floor, on 1M steps.

Data (cached under ``bench_out/stats_data``): a tiny real converted dataset (``dataset_info.json``,
``rldskit_spec.json``, shards) of a car-like spec (``action`` (2,), ``observation/state`` (6,),
``timestamp/control`` at 20 Hz and ``timestamp/camera`` 1-3 ms before it, an optional
``policy_action`` (2,) present on a third of the steps), whose ``episodes.parquet`` is replaced by a
big one generated with pyarrow: ``--episodes`` x ``--steps`` (default 5000 x 200 = 1M steps). No
images are synthesised. Metadata breakdowns read one shard record per episode, which the floor
has no counterpart of, so both timed sides run without them (``by=()``); one extra run with the
default breakdowns is printed for information (every row points at record 0 of the tiny real
shard, so it measures decoding 5000 small records, not reading big ones).

The floor is the least a per-feature statistics pass can do with polars: one lazy scan of the same
columns, exploded, and a single ``select`` computing mean, std, min, max and the five quantiles of
every float element. It checks nothing (no NaN, no presence masks, no episode-level section).

Both run in this process, alternating, ``--repeats`` times (default 5); medians and their ratio
are printed (target: ``RATIO <= 2.0``).

    .venv/bin/python bench/stats.py
    .venv/bin/python bench/stats.py --episodes 500 --steps 200 --repeats 3   # quick
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUANTILES = (0.01, 0.1, 0.5, 0.9, 0.99)

SPEC = {
    "name": "bench_car", "version": "1.0.0", "fps": 20, "rate_hz": [18, 22], "last_step": "valid",
    "primary_clock": "timestamp/control",
    "steps": {
        "observation": {
            "image": {"type": "image", "shape": [8, 8, 3], "encoding": "jpeg"},
            "state": {"type": "tensor", "shape": [6], "dtype": "float32"},
        },
        "action": {"type": "tensor", "shape": [2], "dtype": "float32", "bounds": [-1, 1]},
        "reward": {"type": "scalar", "dtype": "float32"},
        "discount": {"type": "scalar", "dtype": "float32", "bounds": [0, 1]},
        "timestamp": {"control": {"type": "scalar", "dtype": "float64", "unit": "s"},
                      "camera": {"type": "scalar", "dtype": "float64", "unit": "s"}},
        "policy_action": {"type": "tensor", "shape": [2], "dtype": "float32", "optional": True},
    },
}


def make_data(out: Path, episodes: int, steps: int) -> Path:
    """The dataset version folder (built once per size; reused while its marker exists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rldskit.pipeline import convert
    from rldskit.spec import EpisodeSpec
    from rldskit.synth import write_synthetic

    marker = out / f".complete_{episodes}x{steps}"
    version = out / "data" / "bench_car" / "1.0.0"
    if marker.exists():
        return version
    if out.exists():
        shutil.rmtree(out)
    spec = EpisodeSpec.from_dict(SPEC)
    write_synthetic(spec, out / "cap", 2, 3, seed=0)
    convert([out / "cap"], out / "data", name="bench_car", runner="inline", formats=("array_record",))
    shutil.rmtree(out / "cap")

    rng = np.random.default_rng(0)
    n = episodes * steps
    lengths = np.full(episodes, steps, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    first = offsets[:-1].astype(np.int64)
    t = np.arange(steps) / 20.0
    t_ctl = (1.7e9 + 3600.0 * np.arange(episodes)[:, None] + t[None, :]).ravel()
    t_ctl += rng.uniform(-5e-4, 5e-4, n)
    t_cam = t_ctl - rng.uniform(1e-3, 3e-3, n)
    step_in_ep = np.tile(np.arange(steps), episodes)

    def lists(values: np.ndarray) -> pa.Array:
        values = np.ascontiguousarray(values)
        inner = pa.array(values.reshape(-1))
        if values.ndim == 2:
            inner = pa.FixedSizeListArray.from_arrays(inner, values.shape[1])
        return pa.ListArray.from_arrays(pa.array(offsets), inner)

    present = rng.random(n) < 1 / 3
    cols = {
        "episode_id": pa.array([f"ep_{i:06d}" for i in range(episodes)]),
        "split": pa.array(["train"] * episodes),
        "episode_index": pa.array(np.arange(episodes, dtype=np.int64)),
        "shard": pa.array(["bench_car-train.array_record-00000-of-00001"] * episodes),
        "shard_record": pa.array(np.zeros(episodes, dtype=np.int64)),
        "length": pa.array(lengths),
        "first_step": pa.array(first),
        "terminal": pa.array(np.arange(episodes) % 2 == 1),
        "source": pa.array(["bench"] * episodes),
        "step_file": pa.array(["steps/bench.steps.array_record-00000"] * episodes),
        "step_offset": pa.array(first),
        "action": lists(np.clip(rng.normal(0, 0.4, (n, 2)), -1, 1).astype(np.float32)),
        "observation/state": lists(rng.normal(0, 1, (n, 6)).astype(np.float32)),
        "reward": lists(rng.random(n).astype(np.float32)),
        "discount": lists(np.ones(n, dtype=np.float32)),
        "timestamp/camera": lists(t_cam),
        "timestamp/control": lists(t_ctl),
        "policy_action": lists(np.where(present[:, None], rng.normal(0, 0.4, (n, 2)), 0).astype(np.float32)),
        "policy_action_present": lists(present),
        "is_first": lists(step_in_ep == 0),
        "is_last": lists(step_in_ep == steps - 1),
        "is_terminal": lists((step_in_ep == steps - 1) & np.repeat(np.arange(episodes) % 2 == 1, steps)),
    }
    pq.write_table(pa.table(cols), version / "episodes.parquet")
    (version / "stats.json").unlink(missing_ok=True)
    marker.touch()
    return version


def floor(version: Path, float_columns: dict[str, int]) -> dict:
    """One scan, one select: mean/std/min/max/quantiles of every float element, nothing else."""
    import polars as pl

    lf = pl.scan_parquet(version / "episodes.parquet").select(list(float_columns))
    exploded = []
    for c, k in float_columns.items():
        x = pl.col(c).explode()
        if k == 0:
            exploded.append(x.cast(pl.Float64).alias(c))
        else:
            exploded += [x.arr.get(i).cast(pl.Float64).alias(f"{c}[{i}]") for i in range(k)]
    names = [e.meta.output_name() for e in exploded]
    aggs = []
    for name in names:
        x = pl.col(name)
        aggs += [x.mean().alias(f"{name}.mean"), x.std(ddof=0).alias(f"{name}.std"), x.min().alias(f"{name}.min"),
                 x.max().alias(f"{name}.max"), x.quantile(list(QUANTILES), "linear").alias(f"{name}.q")]
    return lf.select(exploded).select(aggs).collect().row(0, named=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "stats_data")
    args = ap.parse_args(argv)

    from rldskit.spec import EpisodeSpec
    from rldskit.stats import dataset_stats

    t0 = time.perf_counter()
    version = make_data(args.out, args.episodes, args.steps)
    print(f"data: {version} ({args.episodes} x {args.steps} = {args.episodes * args.steps} steps; "
          f"ready in {time.perf_counter() - t0:.1f} s)")
    spec = EpisodeSpec.from_dict(SPEC)
    float_columns = {p: (leaf.shape[0] if leaf.shape else 0) for p, leaf in spec.step_leaves.items()
                     if getattr(leaf, "dtype", "").startswith("float") and not p.startswith("observation/image")}

    ours, base = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        stats = dataset_stats(version, by=())
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        floor(version, float_columns)
        base.append(time.perf_counter() - t)
    assert stats["_dataset"]["steps"] == args.episodes * args.steps
    m_ours, m_base = statistics.median(ours), statistics.median(base)
    print(f"rldskit dataset_stats: median {m_ours * 1e3:.0f} ms  (runs: {', '.join(f'{x * 1e3:.0f}' for x in ours)})")
    print(f"floor (one polars select): median {m_base * 1e3:.0f} ms  (runs: {', '.join(f'{x * 1e3:.0f}' for x in base)})")
    ratio = m_ours / m_base
    # breakdowns read one shard record per episode (here each row points at the tiny real shard's record 0)
    t = time.perf_counter()
    full = dataset_stats(version)
    t_full = time.perf_counter() - t
    print(f"with breakdowns by tag/control_role ({len(full['_dataset'].get('by', {}).get('tag', {}))} tags, "
          f"{args.episodes} metadata records decoded): {t_full * 1e3:.0f} ms (once; not in the ratio)")
    print(f"RATIO {ratio:.2f} (rldskit / floor; target <= 2.0) {'OK' if ratio <= 2.0 else 'OVER'}")
    return 0 if ratio <= 2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
