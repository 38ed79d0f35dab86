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

Timing (``_alternate``): the loader path over its first epoch (cold: every frame read and decoded;
the loader keeps decoded frames in RAM when they fit, 58 MB here), then ``--repeats`` times a later
epoch followed by as many floor steps (JAX: synchronised with ``block_until_ready`` at the ends).
Steps/s = medians. Printed per trainer: loader/floor in steady state (later epochs), the cold
epoch's ratio, and the ratio amortised over a ``--run-steps`` run (the pi5 preset's 2000 steps:
one cold epoch, the rest warm).

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

    out = _alternate(run, args, len(loader))
    loader.close()
    return out


# --------------------------------------------------------------------------- torch


def run_torch(cfg, args, base: Path) -> dict:
    import torch

    from trainers import common
    from trainers import torch_lora as T

    loader = common.make_loader(cfg)
    io = common.policy_io(loader.index.spec)
    torch.set_num_threads(T._torch_threads())  # what the trainer runs with (RLDSKIT_TORCH_THREADS, default 1)
    model, _ = T.policy_from_export(base)
    model = T.add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
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

    out = _alternate(run, args, len(loader))
    loader.close()
    return out


# --------------------------------------------------------------------------- driver


def _alternate(run, args, epoch: int) -> dict:
    """Time the loader path over whole epochs (``epoch`` steps): the first epoch (cold: every
    frame read and decoded) once, then ``repeats`` later epochs (frames from the loader's
    cache), each followed by as many steps of the floor."""
    rates: dict[str, list[float]] = {"cold": [], "loader": [], "floor": []}
    run(args.warmup, False, 0)  # compile / first-call costs outside the timing (floor batches only)
    t0 = time.perf_counter()
    run(epoch, True, 0)
    rates["cold"].append(epoch / (time.perf_counter() - t0))
    print(f"  [{args.trainer}] first epoch (cold): {rates['cold'][-1]:.1f} steps/s", file=sys.stderr, flush=True)
    for r in range(args.repeats):
        for mode in ("loader", "floor"):
            t0 = time.perf_counter()
            run(epoch, mode == "loader", r)
            rates[mode].append(epoch / (time.perf_counter() - t0))
            print(f"  [{args.trainer}] repeat {r + 1} {mode}: {rates[mode][-1]:.1f} steps/s", file=sys.stderr, flush=True)
    return {"rates": rates, "epoch_steps": epoch}


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
    ap.add_argument("--run-steps", type=int, default=2000)
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
          f"(60x80 input, batch 32); the first epoch, then {args.repeats} alternating epochs of loader and floor; "
          f"floor = the same step on {args.floor_batches} batches held in memory", flush=True)
    trainers = [args.only] if args.only else ["jax", "torch"]
    base = make_base(dataset, args.scratch) if "torch" in trainers else None
    ok = True
    for name in trainers:
        cmd = [sys.executable, __file__, "--trainer", name, "--dataset", str(dataset), "--scratch", str(args.scratch),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup),
               "--floor-batches", str(args.floor_batches)]
        if base is not None:
            cmd += ["--base", str(base)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{name}: failed:\n{r.stderr[-3000:]}")
            ok = False
            continue
        out = json.loads(r.stdout.strip().splitlines()[-1])
        res, epoch = out["rates"], out["epoch_steps"]
        cold, lo, fl = res["cold"][0], statistics.median(res["loader"]), statistics.median(res["floor"])
        ratio = lo / fl
        run_time = epoch / cold + max(args.run_steps - epoch, 0) / lo
        amortised = args.run_steps / run_time / fl
        ok &= ratio >= 0.85
        print(f"  {name:5s} loader {lo:7.1f} steps/s {[round(x, 1) for x in res['loader']]} (first epoch {cold:.1f})   "
              f"floor {fl:7.1f} steps/s {[round(x, 1) for x in res['floor']]}   ({epoch} steps per epoch)")
        print(f"RATIO {name} loader/floor steps/s = {ratio:.2f} (steady state, data-pipeline overhead "
              f"{100 * (1 - ratio):.1f}%; target >= 0.85): {'PASS' if ratio >= 0.85 else 'FAIL'}")
        print(f"RATIO {name} first-epoch loader/floor = {cold / fl:.2f}; amortised over a {args.run_steps}-step run "
              f"= {amortised:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
