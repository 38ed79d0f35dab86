"""``make demo``: the main job end to end on built-in synthetic data.

1. capture: record synthetic episodes for each built-in schema through the real crash-safe
   logger;
2. validate them with the same code the CLI and pre-commit hook run;
3. show what happens when a logger is killed mid-episode: validation refuses the unfinished
   episode, ``recover`` salvages its complete steps, and validation passes again;
4. convert the donkey episodes with Beam (DirectRunner, all cores) to a TFDS dataset in
   TFRecord and ArrayRecord plus the step-major layout, with one damaged episode quarantined;
5. read it back with TFDS itself (``builder_from_directory``: ``as_dataset`` and
   ``as_data_source``) and with ``rldskit.open``;
6. train-side loading: a few batches of windows (2 observations of history, 8-step action
   chunks, padded and masked at episode edges, images decoded, actions normalised, a goal frame
   drawn from the rest of the episode) through the
   Grain loader and its torch adapter, and a resumed iterator matching the uninterrupted one;
7. train a small policy on the converted dataset with the torch trainer (``trainers.torch_lora``,
   on the CPU) and export it;
8. ship it to a simulated robot with the edge runtime (numpy only): sign a bundle, install it,
   promote it after a health check, replay a recorded episode through policy, safety head and the
   RLDS logger, and show the robot's status;
9. dataset statistics (``stats.json``: exact quantiles, lengths, rate, skew, breakdowns) and the
   HTML report; the demo ends by printing where the report is.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from rldskit.formats.capture_dir import recover_episode
from rldskit.spec import load_spec
from rldskit.synth import write_synthetic
from rldskit.validation import Gates, validate_paths


def _banner(text: str) -> None:
    print(f"\n== {text}")


_KILLED_LOGGER = textwrap.dedent("""
    import sys, time
    from rldskit.capture import EpisodeLogger
    from rldskit.spec import load_spec
    from rldskit.synth import synth_steps
    spec = load_spec("pi5_donkey.v1")
    log = EpisodeLogger(sys.argv[1], spec, chunk_steps=50)
    log.start_episode(environment_id="demo_track", control_role="user", tags=["origin:demo"], episode_id="killed_run")
    for i, kw in enumerate(synth_steps(spec, 400, seed=7)):
        log.log_step(**kw)
        if i == 120:
            print("ready", flush=True)
        time.sleep(0.01)  # a 100 Hz-ish robot; the demo kills it somewhere in here
""")


def _convert_and_read_back(out: Path) -> bool:
    from rldskit.formats.tfds_dir import DatasetLayout
    from rldskit.pipeline import convert

    _banner("4. convert with Beam (DirectRunner, multi_processing): TFRecord + ArrayRecord + step index")
    src = out / "episodes" / "pi5_donkey"
    bad = sorted(p for p in src.iterdir() if p.is_dir())[-1]
    (bad / "frames" / "image" / "000123.jpg").unlink()  # a frame lost on the SD card
    res = convert([src], out / "data", name="pi5_donkey", runner="direct", shard_size_mb=8)
    c = res.counts
    print(f"  {c['inputs']} episodes in, {c['written']} written, {c['quarantined']} quarantined, {c['steps']} steps, "
          f"{len(res.manifest['outputs'])} files, {res.seconds:.1f} s")
    for q in res.manifest["quarantine"]:
        print(f"  quarantined {Path(q['key']).name}: [{q['reasons'][0]['code']}] {q['reasons'][0]['message']}")
    print(f"  manifest: {DatasetLayout(res.path).manifest_path} (every input, every output shard with sha256)")

    _banner("5. read back: TFDS builder_from_directory (as_dataset / as_data_source) and rldskit.open")
    import numpy as np
    import tensorflow_datasets as tfds  # quiet unless -v: rldskit._log (configured in main) set TF's C++ log level

    import rldskit

    builder = tfds.builder_from_directory(str(res.path))
    n_tf = sum(1 for _ in builder.as_dataset(split="train"))
    source = tfds.builder_from_directory(str(res.path)).as_data_source(split="train")
    first = source[0]
    ds = rldskit.open(res.path)
    ep = next(iter(ds.episodes("train")))
    same = np.array_equal(np.stack([s["action"] for s in first["steps"]]), ep.steps["action"])
    print(f"  tf.data (TFRecord): {n_tf} episodes; data source (ArrayRecord): {len(source)} episodes, "
          f"first has {len(first['steps'])} steps, images decoded to {first['steps'][0]['observation']['image'].shape}")
    print(f"  rldskit.open: {ds.num_episodes('train')} episodes; actions equal to TFDS's: {same}")
    index = ds.manifest()["counts"]
    return bool(same and n_tf == c["written"] == len(source) and index["inputs"] == c["written"] + c["quarantined"])


def _load_windows(dataset: Path) -> bool:
    import numpy as np

    from rldskit.loaders import windows
    from rldskit.loaders.torch import TorchLoader

    _banner("6. load windows for training (Grain; torch adapter; exact resume)")
    kw = dict(history=2, action_horizon=8, batch_size=64, seed=0, shuffle=True, num_epochs=1, normalize="stats",
              goal="uniform")
    t0 = time.perf_counter()
    loader = windows(dataset, **kw)
    first = next(iter(loader))
    print(f"  first batch after {time.perf_counter() - t0:.2f} s; {len(loader)} batches per epoch")
    for k, v in sorted(first.items()):
        print(f"    {k:28s} {str(v.dtype):8s} {tuple(v.shape)}")
    print(f"  padded history frames in this batch: {int(first['observation_is_pad'].sum())}, "
          f"padded action steps: {int(first['action_is_pad'].sum())}")
    state = loader.get_state()
    rest = [b["action"] for b in loader]
    again = windows(dataset, **kw)
    again.set_state(state)
    resumed = [b["action"] for b in again]
    same = len(rest) == len(resumed) and all(np.array_equal(a, b) for a, b in zip(rest, resumed))
    print(f"  resumed from get_state() after batch 1: {len(resumed)} more batches, identical: {same}")
    tb = next(iter(TorchLoader(windows(dataset, **kw))))
    print(f"  torch: action {tuple(tb['action'].shape)} {tb['action'].dtype}, "
          f"image {tuple(tb['observation/image'].shape)} {tb['observation/image'].dtype}")
    return same


def _train(dataset: Path, out: Path) -> Path | None:
    from trainers import common
    from trainers import torch_lora

    _banner("7. train a policy (torch, behaviour cloning; `python -m trainers` picks JAX on accelerators)")
    cfg = common.load_config(preset="dev", overrides={"data": str(dataset), "out": str(out / "runs" / "bc"),
                                                      "max_steps": 300, "log_every": 50, "checkpoint_every": 100,
                                                      "learning_rate": 3e-3, "train_split": "train[:75%]",
                                                      "eval_split": "train[75%:]"})
    t0 = time.perf_counter()
    import torch

    torch.manual_seed(cfg.seed)
    base_model = torch_lora.ConvMLPPolicy(common.architecture(cfg, common.policy_io(load_spec("pi5_donkey.v1"))))
    before = torch_lora.evaluate(base_model, cfg)
    res = torch_lora.train(cfg, None, full=True)
    after = res.get("eval_mse")
    print(f"  {res['step']} steps in {time.perf_counter() - t0:.1f} s ({res.get('steps_per_s', 0):.0f} steps/s); held-out "
          f"masked MSE (normalised actions) {before:.3f} untrained -> {after:.3f}")
    print(f"  checkpoints in {cfg.out}/checkpoints, metrics in {cfg.out}/metrics.csv, export {res['export']}")
    return Path(res["export"]) if res.get("export") else None


def _ship(export: Path, out: Path) -> bool:
    import json

    from edge_runtime.bundle import build_bundle, generate_keypair, pack_zip, sign_bundle
    from edge_runtime.cli import main as edge_main

    _banner("8. ship it to the robot: signed bundle, install, health-checked promote, replay (numpy only)")
    edge = out / "robot"
    key, pub = generate_keypair(edge / "signing")
    bundle = build_bundle(export, edge / "bundle-0.1.0", version="0.1.0", compat=["pi5_donkey.v1"])
    sign_bundle(bundle, key)
    z = pack_zip(bundle, edge / "bundle-0.1.0.zip")
    root = edge / "model"
    episode = sorted((out / "episodes" / "pi5_donkey").iterdir())[0]
    steps = [["trust", str(pub), "--root", str(root)],
             ["install", str(z), "--root", str(root), "--compat", "pi5_donkey.v1"],
             ["promote", "--root", str(root), "--latency-budget-ms", "100"],
             ["run", "--root", str(root), "--replay", str(episode), "--log", str(edge / "replayed")],
             ["status", "--root", str(root)]]
    ok = True
    for argv in steps:
        print(f"  $ rldskit-edge {' '.join(a.replace(str(out) + os.sep, '') for a in argv)}")
        rc = edge_main(argv)
        ok &= rc == 0
    state = json.loads((root / "state.json").read_text())
    print(f"  current slot {state['current']}; signed zip {z.name} ({z.stat().st_size // 1024} KiB)")
    return ok


def _stats_and_report(dataset: Path, out: Path) -> Path | None:
    from rldskit.formats.tfds_dir import DatasetLayout
    from rldskit.report import build_report
    from rldskit.stats import format_table, write_stats

    _banner("9. statistics and the report")
    t0 = time.perf_counter()
    path = write_stats(dataset)
    table = format_table(DatasetLayout(path.parent).stats()).splitlines()  # what was written, not a second computation
    print("\n".join("  " + line for line in table[:14]))
    if len(table) > 14:
        print(f"  ... ({len(table) - 14} more lines in {path})")
    report = build_report(dataset, out / "report")
    print(f"  {path} and {report} in {time.perf_counter() - t0:.1f} s")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show the libraries' logs (Beam, TensorFlow, absl; also in Beam's worker processes)")
    args = ap.parse_args(argv)
    from rldskit._log import configure, quiet_native_logs

    configure(args.verbose or None)  # before TensorFlow, Beam or torch is imported; RLDSKIT_VERBOSE=1 also works
    with quiet_native_logs():  # TensorFlow (step 5) logs from C++ past Python's logging: filtered unless -v
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    t_start = time.perf_counter()

    _banner("1. capture: synthetic episodes through EpisodeLogger (real JPEG frames)")
    plan = [("pi5_donkey.v1", args.episodes, args.steps), ("so100_arm.v1", 2, 90), ("xr_teleop.v1", 2, 90)]
    for name, n, t in plan:
        t0 = time.perf_counter()
        spec = load_spec(name)
        write_synthetic(spec, out / "episodes" / spec.name, n, t, seed=0, compress=name == "pi5_donkey.v1", chunk_steps=100)
        print(f"  {name:15s} {n} episodes x {t} steps -> {out / 'episodes' / spec.name}  ({time.perf_counter() - t0:.1f} s)")

    _banner("2. validate: schema, RLDS flags, bounds, timestamps (skew <= 5 ms), rate band, images")
    ok = True
    for name, _, _ in plan:
        spec = load_spec(name)
        t0 = time.perf_counter()
        rep = validate_paths([out / "episodes" / spec.name], gates=Gates(check_images=True, min_episodes=2), jobs=2)
        print(f"  {name:15s} {rep.format_table().splitlines()[-1]}; {rep.frames_checked} frames decoded "
              f"({time.perf_counter() - t0:.1f} s)")
        ok &= rep.ok

    _banner("3. crash safety: kill -9 a logger mid-episode, then recover")
    crash_root = out / "episodes" / "crashed"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_LOGGER, str(crash_root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ep = crash_root / "killed_run"
    rep = validate_paths([ep], load_spec("pi5_donkey.v1"))
    print(f"  after kill -9:  {[i.code for i in rep.issues]} -> `rldskit validate` exits 1")
    r = recover_episode(ep)
    print(f"  rldskit recover: kept {r['num_steps']} complete steps, dropped {r['dropped_bytes']} bytes of a torn line")
    rep = validate_paths([ep], load_spec("pi5_donkey.v1"))
    print(f"  after recover:  {rep.format_table().splitlines()[-1]} (is_terminal=False, tagged 'recovered')")
    ok &= rep.ok

    ok &= _convert_and_read_back(out)
    ok &= _load_windows(out / "data" / "pi5_donkey" / "1.0.0")
    export = _train(out / "data" / "pi5_donkey" / "1.0.0", out)
    ok &= export is not None and _ship(export, out)
    report = _stats_and_report(out / "data" / "pi5_donkey" / "1.0.0", out)

    print(f"\ndemo finished in {time.perf_counter() - t_start:.1f} s; episodes are in {out / 'episodes'}, "
          f"the dataset in {out / 'data'}")
    print(f"the report: {report} (open it in any browser)")
    print(f"try:  .venv/bin/rldskit validate {out / 'episodes' / 'pi5_donkey'} --check-images")
    print(f"      .venv/bin/rldskit inspect {out / 'data' / 'pi5_donkey' / '1.0.0'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
