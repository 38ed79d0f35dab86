"""Benchmark: training steps/s fed by the real rldskit loader versus the same step fed from
batches already in memory (the floor), for both trainers. Issue #6's target: the data pipeline
costs at most 15% (loader / floor >= 0.85).

Data: ``--episodes`` synthetic ``pi5_donkey.v1`` episodes of ``--steps`` steps with the schema's
480x640 JPEG camera, converted once (``rldskit convert``, step index on; cached under
``bench_out/train_data``). Both trainers use the ``pi5`` preset (60x80 input, conv 16/32/32,
MLP 128/128, action chunks of 8, batch 32): the loader decodes each frame at 1/8 DCT scale.

Per trainer, in a fresh process (``--trainer jax|torch`` runs one directly):

* **loader**: the trainer's own loop body: ``next(loader)`` (``trainers.common.make_loader``:
  shuffled windows, images decoded and resized, actions normalised) -> ``batch_arrays`` -> the
  framework's step (JAX: ``device_put_batch`` + the jitted, donated train step; torch: tensors via
  ``from_numpy`` + forward/backward/AdamW on the LoRA adapters of a base exported by ``--full``).
* **floor**: the same step on ``--floor-batches`` batches taken from that loader beforehand and
  held in memory (device arrays / tensors prepared in advance), cycled.

Each mode runs ``--repeats`` times in alternation (loader, floor, loader, ...), each ``--warmup``
steps then ``--timed`` timed steps (JAX: synchronised with ``block_until_ready`` at the ends).
Steps/s = median of the repeats. The ratio loader / floor is printed per trainer.

    .venv/bin/python bench/train.py                       # both trainers (first run converts ~1 min)
    .venv/bin/python bench/train.py --trainer jax --repeats 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_dataset(data: Path, episodes: int, steps: int) -> Path:
    from rldskit.pipeline import convert
    from rldskit.spec import load_spec
    from rldskit.synth import write_synthetic

    marker = data / "params.json"
    params = {"episodes": episodes, "steps": steps, "schema": "pi5_donkey.v1"}
    version = data / "data" / "bench_train" / "1.0.0"
    if marker.is_file() and json.loads(marker.read_text()) == params and (version / "dataset_info.json").is_file():
        return version
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    t0 = time.perf_counter()
    write_synthetic(load_spec("pi5_donkey.v1"), data / "cap", episodes, steps, seed=0)
    res = convert([data / "cap"], data / "data", name="bench_train", runner="inline", formats=("array_record",))
    marker.write_text(json.dumps(params))
    print(f"dataset: {res.counts} in {time.perf_counter() - t0:.0f} s", flush=True)
    return res.path


# --------------------------------------------------------------------------- JAX


def run_jax(cfg, args) -> dict:
    import jax
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from rldskit.loaders.jax import data_sharding, device_put_batch
    from trainers import common
    from trainers import jax_bc as J

    loader = common.make_loader(cfg)
    io = common.policy_io(loader.index.spec)
    sharding = data_sharding(jax.devices())
    replicated = NamedSharding(sharding.mesh, PartitionSpec())
    model = J.new_model(cfg, io)
    graphdef, state = nnx.split(model, nnx.Param)
    params = state.to_pure_dict()
    tx, _ = J.make_optimizer(cfg)
    opt_state = tx.init(params)
    rng = jax.random.key_data(jax.random.key(0))
    params, opt_state, rng = jax.device_put((params, opt_state, rng), replicated)
    step = J._make_train_step(graphdef, tx, replicated)
    it = iter(loader)
    held = [device_put_batch(common.batch_arrays(next(it), io), sharding) for _ in range(args.floor_batches)]
    jax.block_until_ready(held)
    carry = [params, opt_state, rng]

    def run(n: int, from_loader: bool, k0: int) -> None:
        loss = None
        for k in range(n):
            if from_loader:
                dev = device_put_batch(common.batch_arrays(next(it), io), sharding)
            else:
                dev = held[(k0 + k) % len(held)]
            carry[0], carry[1], carry[2], loss, _ = step(carry[0], carry[1], carry[2], dev)
        jax.block_until_ready((carry[0], loss))

    out = _alternate(run, args)
    loader.close()
    return out


# --------------------------------------------------------------------------- torch


def run_torch(cfg, args, base: Path) -> dict:
    import torch

    from trainers import common
    from trainers import torch_lora as T

    loader = common.make_loader(cfg)
    io = common.policy_io(loader.index.spec)
    model, _ = T.policy_from_export(base)
    model = T.add_lora(model, cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    it = iter(loader)

    def tensors(b):
        a = common.batch_arrays(b, io)
        return {k: torch.from_numpy(v) for k, v in a.items()}

    held = [tensors(next(it)) for _ in range(args.floor_batches)]

    def one(t) -> None:
        y = model(t["images"], t["state"])
        err = ((y - t["actions"]) ** 2) * t["mask"][..., None]
        loss = err.sum() / (t["mask"].sum().clamp(min=1) * t["actions"].shape[-1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        opt.step()

    def run(n: int, from_loader: bool, k0: int) -> None:
        for k in range(n):
            one(tensors(next(it)) if from_loader else held[(k0 + k) % len(held)])

    out = _alternate(run, args)
    loader.close()
    return out


# --------------------------------------------------------------------------- driver


def _alternate(run, args) -> dict:
    rates: dict[str, list[float]] = {"loader": [], "floor": []}
    run(args.warmup, False, 0)  # compile / first-call costs outside the timing
    run(args.warmup, True, 0)
    for r in range(args.repeats):
        for mode in ("loader", "floor"):
            run(args.warmup, mode == "loader", 0)
            t0 = time.perf_counter()
            run(args.timed, mode == "loader", r)
            rates[mode].append(args.timed / (time.perf_counter() - t0))
            print(f"  [{args.trainer}] repeat {r + 1} {mode}: {rates[mode][-1]:.1f} steps/s", file=sys.stderr, flush=True)
    return {"rates": rates}


def child(args) -> int:
    from trainers import common

    cfg = common.load_config(preset="pi5", overrides={"data": str(args.dataset), "out": str(args.scratch / args.trainer),
                                                      "seed": 0})
    if args.trainer == "jax":
        res = run_jax(cfg, args)
    else:
        res = run_torch(cfg, args, args.base)
    print(json.dumps(res), flush=True)
    return 0


def make_base(dataset: Path, scratch: Path) -> Path:
    """A torch base export (``--full``, a few steps): LoRA needs a base to adapt."""
    from trainers import common
    from trainers import torch_lora as T

    out = scratch / "torch_base"
    shutil.rmtree(out, ignore_errors=True)
    cfg = common.load_config(preset="pi5", overrides={"data": str(dataset), "out": str(out), "max_steps": 5,
                                                      "checkpoint_every": 1000})
    res = T.train(cfg, None, full=True)
    return Path(res["export"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trainer", choices=["jax", "torch"], help="run one trainer in this process (internal)")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--timed", type=int, default=60)
    ap.add_argument("--floor-batches", type=int, default=16)
    ap.add_argument("--data", type=Path, default=ROOT / "bench_out" / "train_data")
    ap.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--scratch", type=Path, default=ROOT / "bench_out" / "train_scratch")
    ap.add_argument("--only", choices=["jax", "torch"], help="benchmark one trainer")
    args = ap.parse_args()
    if args.trainer:
        return child(args)
    dataset = make_dataset(args.data, args.episodes, args.steps)
    args.scratch.mkdir(parents=True, exist_ok=True)
    print(f"train: {args.episodes} episodes x {args.steps} steps of pi5_donkey.v1 (480x640 JPEG), preset pi5 "
          f"(60x80 input, batch 32); {args.repeats} alternating repeats of {args.timed} timed steps after "
          f"{args.warmup} warm-up; floor = the same step on {args.floor_batches} batches held in memory", flush=True)
    trainers = [args.only] if args.only else ["jax", "torch"]
    base = make_base(dataset, args.scratch) if "torch" in trainers else None
    ok = True
    for name in trainers:
        cmd = [sys.executable, __file__, "--trainer", name, "--dataset", str(dataset), "--scratch", str(args.scratch),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--timed", str(args.timed),
               "--floor-batches", str(args.floor_batches)]
        if base is not None:
            cmd += ["--base", str(base)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{name}: failed:\n{r.stderr[-3000:]}")
            ok = False
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1])["rates"]
        lo, fl = statistics.median(res["loader"]), statistics.median(res["floor"])
        ratio = lo / fl
        ok &= ratio >= 0.85
        print(f"  {name:5s} loader {lo:7.1f} steps/s {[round(x, 1) for x in res['loader']]}   "
              f"floor {fl:7.1f} steps/s {[round(x, 1) for x in res['floor']]}")
        print(f"RATIO {name} loader/floor steps/s = {ratio:.2f} (data-pipeline overhead {100 * (1 - ratio):.1f}%; "
              f"target >= 0.85): {'PASS' if ratio >= 0.85 else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
