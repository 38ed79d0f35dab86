"""Benchmark: the edge runtime's policy step (numpy) versus the same model's forward pass in torch
CPU, one thread each, plus the control loop's end-to-end latency with safety and logging.

Issue #7's targets for the default ``pi5`` policy (``trainers.common`` preset ``pi5``: a 60x80
frame, conv 16/32/32, MLP 128/128, an 8-step chunk of 2 actions; random weights, which cost the
same as trained ones): policy step p99 <= 1 ms, and numpy no slower than torch at p50.

1. **Policy step**: ``edge_runtime.policy.Policy.normalized`` on one 60x80 frame versus
   ``trainers.torch_lora.ConvMLPPolicy`` (the torch trainer's model, loaded from the same export)
   under ``torch.inference_mode()`` with ``torch.set_num_threads(1)``; each in its own process with
   ``OMP/OPENBLAS/MKL_NUM_THREADS=1``; ``--steps`` timed calls after 200 warm-up calls, in
   alternating blocks of 500 so drift hits both; p50/p99/max per contender.
2. **Control loop** (numpy only): ``ControlLoop`` at ``--rate-hz`` for ``--loop-steps`` ticks:
   observe (a 480x640 camera frame and its JPEG bytes, prepared in advance) -> area resize to 60x80
   -> policy -> safety head (clamp, rate limit, risk) -> act -> log the step as RLDS (capture layout,
   JPEG bytes written as given); latency = observe to act, as the loop measures it.

    .venv/bin/python bench/edge.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def make_export(out: Path) -> Path:
    import numpy as np

    from rldskit.spec import load_spec
    from trainers import common

    cfg = common.load_config(preset="pi5")
    io = common.policy_io(load_spec("pi5_donkey.v1"))
    arch = common.architecture(cfg, io)
    rng = np.random.default_rng(0)
    w = {}
    cin = arch["channels"]
    for i, c in enumerate(arch["conv"]):
        w[f"encoder.0.conv{i}.kernel"] = rng.normal(0, (2 / (9 * cin)) ** 0.5, (3, 3, cin, c["features"])).astype(np.float32)
        w[f"encoder.0.conv{i}.bias"] = np.zeros(c["features"], np.float32)
        cin = c["features"]
    d = arch["encoder_out"]
    for i, f in enumerate(arch["mlp"]):
        w[f"mlp.{i}.kernel"] = rng.normal(0, (2 / d) ** 0.5, (d, f)).astype(np.float32)
        w[f"mlp.{i}.bias"] = np.zeros(f, np.float32)
        d = f
    w["head.kernel"] = rng.normal(0, (1 / d) ** 0.5, (d, 16)).astype(np.float32)
    w["head.bias"] = np.zeros(16, np.float32)
    norm = {"mode": "mean_std", "features": {"action": {"shift": [0.0, 0.3], "scale": [0.5, 0.1]}}}

    class _N:
        def to_dict(self):
            return norm

    doc = common.policy_document(cfg, io, _N(), framework="bench", step=0, dataset={"name": "none"})
    return common.write_export(out, w, doc)


def _percentiles(ts) -> dict:
    import numpy as np

    a = np.asarray(ts) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()),
            "mean_ms": float(a.mean()), "n": int(len(a))}


def child_step(kind: str, export: Path, steps: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    if kind == "numpy":
        from edge_runtime.policy import Policy

        pol = Policy.load(export)
        frames = {"observation/image": frame}

        def call():
            return pol.normalized(frames)
    else:
        import torch

        from trainers.torch_lora import policy_from_export

        torch.set_num_threads(1)
        model, _ = policy_from_export(export)
        model.eval()
        images = torch.from_numpy(frame[None, None, None].copy())  # (B=1, cam, H=1, h, w, c)
        state = torch.zeros((1, 0))

        def call():
            with torch.inference_mode():
                return model(images, state)
    for _ in range(200):
        call()
    ts = []
    pc = time.perf_counter
    for _ in range(steps):
        t0 = pc()
        call()
        ts.append(pc() - t0)
    return {"kind": kind, **_percentiles(ts)}


def child_loop(export: Path, steps: int, rate_hz: float) -> dict:
    import io as _io

    import numpy as np
    from PIL import Image  # only to make the camera's JPEG bytes in advance; the loop never decodes

    from edge_runtime.bundle import action_names, default_safety
    from edge_runtime.episode_log import EpisodeLog
    from edge_runtime.loop import ControlLoop, Observation
    from edge_runtime.policy import Policy
    from edge_runtime.safety import SafetyHead

    pol = Policy.load(export)
    safety = SafetyHead(default_safety(pol.policy), action_names(pol.policy))
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    buf = _io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG", quality=85)
    jpeg = buf.getvalue()
    acted = []
    with tempfile.TemporaryDirectory() as tmp:
        log = EpisodeLog(tmp, "pi5_donkey.v1", pol.cameras)
        loop = ControlLoop(pol, safety, observe=lambda: Observation({"observation/image": frame},
                                                                     encoded={"observation/image": jpeg}),
                           act=acted.append, log=log, rate_hz=rate_hz, latency_budget_ms=100.0)
        stats = loop.run(max_steps=steps)
    d = stats.as_dict()
    return {"kind": "loop", "steps": d["steps"], "p50_ms": d["latency_p50_ms"], "p99_ms": d["latency_p99_ms"],
            "max_ms": d["latency_max_ms"], "deadline_misses": d["deadline_misses"], "overruns": d["overruns"],
            "rate_hz": rate_hz}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--loop-steps", type=int, default=2000)
    ap.add_argument("--rate-hz", type=float, default=100.0)
    ap.add_argument("--child", choices=["numpy", "torch", "loop"], help=argparse.SUPPRESS)
    ap.add_argument("--export", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = (child_loop(args.export, args.loop_steps, args.rate_hz) if args.child == "loop"
               else child_step(args.child, args.export, args.steps))
        print(json.dumps(res), flush=True)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="rldskit-bench-edge-"))
    export = make_export(tmp / "export")
    env = dict(os.environ, **ONE_THREAD)
    results = {}
    for kind in ("numpy", "torch", "loop"):
        r = subprocess.run([sys.executable, __file__, "--child", kind, "--export", str(export), "--steps", str(args.steps),
                            "--loop-steps", str(args.loop_steps), "--rate-hz", str(args.rate_hz)],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            print(f"{kind}: failed\n{r.stderr[-3000:]}")
            return 1
        results[kind] = json.loads(r.stdout.strip().splitlines()[-1])
    n, t, lp = results["numpy"], results["torch"], results["loop"]
    print(f"edge policy step, pi5 preset (60x80 frame, conv 16/32/32, MLP 128/128, 8x2 chunk), one thread, "
          f"{args.steps} calls each")
    for k, r in (("numpy (edge_runtime)", n), ("torch CPU (same export)", t)):
        print(f"  {k:26s} p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  max {r['max_ms']:.3f} ms  mean {r['mean_ms']:.3f} ms")
    print(f"  control loop, {lp['steps']} ticks at {lp['rate_hz']:.0f} Hz (480x640 frame -> resize -> policy -> safety -> "
          f"act -> RLDS log): p50 {lp['p50_ms']:.3f} ms  p99 {lp['p99_ms']:.3f} ms  max {lp['max_ms']:.3f} ms, "
          f"deadline misses (100 ms) {lp['deadline_misses']}")
    ok_p99 = n["p99_ms"] <= 1.0
    ok_p50 = n["p50_ms"] <= t["p50_ms"]
    print(f"RATIO torch/numpy p50 = {t['p50_ms'] / n['p50_ms']:.2f} (numpy no slower than torch: "
          f"{'PASS' if ok_p50 else 'FAIL'})")
    print(f"RATIO numpy p99 / 1 ms budget = {n['p99_ms']:.2f} (target <= 1.00: {'PASS' if ok_p99 else 'FAIL'})")
    print(f"RATIO control-loop p99 / 100 ms budget = {lp['p99_ms'] / 100:.3f}")
    return 0 if ok_p99 and ok_p50 else 1


if __name__ == "__main__":
    sys.exit(main())
