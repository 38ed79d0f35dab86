"""Benchmark: ``rldskit.loaders.windows`` versus tf.data as Octo/OpenVLA run it, versus the floor
of decoding the same JPEGs, plus time to first batch and RSS over a long iteration.

Issue #4's targets, on one dataset converted once: 100 synthetic ``so100_arm.v1`` episodes of 200
steps (20k steps) with two JPEG cameras at the schema's declared 480x640 (``--frame`` for others),
every step carrying both frames (the variant of the schema from ``bench/convert.py``: wrist camera
required, the front frame's JPEG stored where the synthesiser leaves no wrist view), converted with
``rldskit convert --format both --step-index`` (TFRecord + ArrayRecord + step-major layout). Every
sample is a window of ``history=2`` observations (both cameras decoded, so 4 JPEG decodes per
sample) and ``action_horizon=8`` actions, padded at episode edges; batches of 64; shuffled.

1. **Speed against tf.data.** ``rldskit.loaders.windows(..., decode_images=True)`` (with
   ``worker_count`` 0 and 2, and the other settings listed in the output) versus the tf.data
   pipeline Octo/OpenVLA users run (``bench/_load_contenders.py`` spells it out:
   ``tfds.builder_from_directory(...).as_dataset(split="train")`` on the TFRecord shards with
   ``SkipDecoding`` of the steps as dlimp's ``from_rlds`` does, Octo's ``chunk_act_obs`` as a
   per-episode map, dlimp's ``flatten`` (parallel ``interleave``), a shuffle buffer of encoded
   windows (``--shuffle-buffer``, 10000 as Octo's fine-tuning default), ``tf.io.decode_jpeg`` of
   every frame in a parallel map (AUTOTUNE), ``batch(64)``, ``prefetch(AUTOTUNE)``, numpy
   iterator, non-deterministic order allowed). Each contender runs in a fresh process, ``--repeats``
   times in rotation; each run takes its first batch, ``--warmup`` more, then ``--intervals`` timed
   intervals of ``--interval-batches`` batches. Steady-state samples/s = median over all timed
   intervals of all runs. Target: rldskit / tf.data > 1.0 (aim 1.5).
2. **Against the floor.** Exactly the JPEG bytes rldskit decodes in its first timed batches (the 4
   frames of each of ``--floor-samples`` samples of its seed-0 order, read from the step records
   and held in memory) decoded into numpy arrays in a tight loop by 2 threads (and, in case threads
   do not scale, by 2 forked processes), no pipeline, no batching, with every decoder in the venv
   (Pillow 12, ``tf.io.decode_jpeg``, and simplejpeg, both into a new array and into one reused
   array per thread, which allocates nothing and is the fastest; all three are libjpeg-turbo;
   PyTurboJPEG and OpenCV are not installed, and the output says so). The floor is the fastest of
   them; floor samples/s = frames/s / 4. Target: rldskit >= 80% of it.
3. **Time to first batch** for both (from the call that builds the loader; imports excluded, shown
   separately), and **RSS** of rldskit's process tree (workers included) sampled every
   ``--rss-every`` batches until ``--rss-samples`` samples (200k) with its best setting: start,
   after warm-up, end, max, and the trend after warm-up. Must not grow.

With ``--resize HxW`` both resize every frame, as Octo/OpenVLA training does (Octo's
``decode_and_resize``: full decode, then ``tf.image.resize(method="lanczos3", antialias=True)``;
rldskit: ``resize=(h, w)``, PIL's JPEG draft mode, which decodes at a reduced DCT scale, then
bilinear); the floor is skipped then.

The page cache is warm for every contender (the parent reads every dataset file before timing).
The CPU used by other processes during the timed intervals is printed: above ~10% the machine was
busy and the figures are noisy. Data are cached under ``bench_out/load_data`` and regenerated when
the parameters change; logs go to ``bench_out/load_scratch``.

    .venv/bin/python bench/load.py                 # full size (first run synthesises and converts for ~5 min)
    .venv/bin/python bench/load.py --resize 224x224 --skip-rss   # with a resize, as Octo/OpenVLA train
    .venv/bin/python bench/load.py --episodes 10 --steps 100 --frame 240x320 --repeats 1 --intervals 3 \
        --rss-samples 20000 --data bench_out/load_data_small      # quick
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from convert import child_env, warm  # noqa: E402  (bench/convert.py: same page-cache warming and child env)
NAME = "bench_load"
DEFAULT_CONFIGS = ('{"worker_count": 0}', '{"worker_count": 0, "reuse_buffers": false}', '{"worker_count": 0, "num_threads": 1}', '{"worker_count": 0, "num_threads": 4}',
                   '{"worker_count": 2}', '{"worker_count": 2, "num_threads": 2}')


# --------------------------------------------------------------------------- data


def make_dataset(data: Path, episodes: int, steps: int, h: int, w: int) -> Path:
    """Synthesise (``bench/convert.py``'s two-camera variant) and convert once; the version folder."""
    sys.path.insert(0, str(BENCH))
    from convert import make_data  # bench/convert.py

    data.mkdir(parents=True, exist_ok=True)
    marker = make_data(data / "episodes", episodes, steps, h, w)
    out = data / "dataset"
    version_dir = out / NAME / "1.0.0"
    done = data / f".converted{marker}"
    if done.exists() and (version_dir / "dataset_info.json").is_file():
        return version_dir
    for old in data.glob(".converted*"):
        old.unlink()
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "rldskit.cli", "convert", str(data / "episodes"), "--out", str(out), "--name", NAME,
           "--format", "both", "--step-index"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"rldskit convert failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    done.touch()
    print(f"converted with `rldskit convert --format both --step-index` in {time.perf_counter() - t0:.0f} s -> "
          f"{version_dir}\n  {r.stdout.strip().splitlines()[-1]}", flush=True)
    return version_dir


# --------------------------------------------------------------------------- running


def run_child(kind: str, cfg: dict, log: Path, timeout: float) -> tuple[dict | None, str | None]:
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(BENCH / "_load_contenders.py"), kind, json.dumps(cfg)]
    with open(log.with_suffix(".out"), "wb") as so, open(log.with_suffix(".err"), "wb") as se:
        p = subprocess.Popen(cmd, stdout=so, stderr=se, env=child_env(), cwd=ROOT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)  # the child's own session: it and the workers it started
            p.wait()
            return None, f"timed out after {timeout:.0f} s (log {log}.err)"
    lines = log.with_suffix(".out").read_text().strip().splitlines()
    if rc != 0 or not lines:
        err = log.with_suffix(".err").read_text(errors="replace")[-2500:]
        return None, f"exit {rc} (log {log}.err):\n{err}"
    try:
        return json.loads(lines[-1]), None
    except ValueError:
        return None, f"no JSON result (log {log}.out)"


def label_of(cfg: dict) -> str:
    return "rldskit " + " ".join(f"{k}={v}" for k, v in cfg.items())


def decoders_installed() -> str:
    names = {"simplejpeg": "simplejpeg", "turbojpeg": "PyTurboJPEG", "cv2": "OpenCV"}
    have = [n for m, n in names.items() if importlib.util.find_spec(m) is not None]
    missing = [n for m, n in names.items() if importlib.util.find_spec(m) is None]
    return (f"installed: {', '.join(have)}; " if have else "") + f"not installed: {', '.join(missing) or 'none'}"


def mib(x: float) -> str:
    return f"{x / 2**20:.0f} MiB"


def rss_summary(run: dict, bs: int) -> tuple[list[str], bool]:
    """Lines describing the RSS run and whether RSS stayed flat after warm-up (10% of the run)."""
    pts = run["points"]  # (samples, tree_rss, main_rss)
    samples = [p[0] for p in pts]
    rss = [p[1] for p in pts]
    total = samples[-1]
    k0 = next(i for i, s in enumerate(samples) if s >= 0.1 * total)
    steady = pts[k0:]
    n = max(3, len(steady) // 10)
    head = statistics.median(p[1] for p in steady[:n])
    tail = statistics.median(p[1] for p in steady[-n:])
    xs = [p[0] for p in steady]
    ys = [p[1] for p in steady]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(1e-9, sum((x - mx) ** 2 for x in xs))
    growth = tail - head
    limit = max(32 * 2**20, 0.05 * head)
    ok = slope * (samples[-1] - samples[k0]) <= limit  # the trend, extrapolated over the steady part of the run
    lines = [
        f"  {total} samples ({total // bs} batches) at {run['rate']:.0f} samples/s; tree RSS sampled {len(pts)} times:",
        f"    after the first batches {mib(rss[0])}, at 10% ({samples[k0]} samples) {mib(rss[k0])}, "
        f"end {mib(rss[-1])}, max {mib(max(rss))} (min after 10%: {mib(min(ys))})",
        f"    median of the first/last {n} samples after 10%: {mib(head)} -> {mib(tail)} ({growth / 2**20:+.1f} MiB); "
        f"least-squares trend {slope * 1e5 / 2**20:+.1f} MiB per 100k samples; main process alone: "
        f"{mib(pts[k0][2])} -> {mib(pts[-1][2])}",
    ]
    return lines, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--frame", default="480x640", help="HxW of both cameras (default: the schema's 480x640)")
    ap.add_argument("--history", type=int, default=2)
    ap.add_argument("--action-horizon", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="fresh-process runs of every contender, in rotation")
    ap.add_argument("--warmup", type=int, default=20, help="batches after the first before timing")
    ap.add_argument("--intervals", type=int, default=8, help="timed intervals per run")
    ap.add_argument("--interval-batches", type=int, default=15, help="batches per timed interval")
    ap.add_argument("--shuffle-buffer", type=int, default=10000, help="tf.data shuffle buffer (encoded windows)")
    ap.add_argument("--floor-samples", type=int, default=2048, help="samples whose frames the floor decodes")
    ap.add_argument("--rss-samples", type=int, default=200_000)
    ap.add_argument("--rss-every", type=int, default=25, help="batches between RSS samples")
    ap.add_argument("--rldskit-config", action="append", metavar="JSON",
                    help="extra keyword arguments of rldskit.loaders.windows for one contender; repeatable "
                         f"(default: {' and '.join(DEFAULT_CONFIGS)})")
    ap.add_argument("--resize", metavar="HxW", help="resize every frame (rldskit: resize=(h, w), JPEG draft mode + "
                    "bilinear; tf.data: Octo's decode_and_resize, lanczos3 with antialias); skips the floor")
    ap.add_argument("--skip-tfdata", action="store_true")
    ap.add_argument("--skip-floor", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a child run is killed")
    ap.add_argument("--data", default=str(ROOT / "bench_out" / "load_data"))
    args = ap.parse_args()
    h, w = (int(x) for x in args.frame.lower().split("x"))
    data = Path(args.data).resolve()
    scratch = ROOT / "bench_out" / "load_scratch"
    version_dir = make_dataset(data, args.episodes, args.steps, h, w)
    n_files, n_bytes = warm(version_dir)
    configs = [json.loads(c) for c in (args.rldskit_config or DEFAULT_CONFIGS)]
    resize = [int(x) for x in args.resize.lower().split("x")] if args.resize else None
    common = {"dataset": str(version_dir), "history": args.history, "action_horizon": args.action_horizon,
              "batch_size": args.batch_size, "warmup": args.warmup, "intervals": args.intervals,
              "interval_batches": args.interval_batches, "resize": resize}
    if resize:
        args.skip_floor = True  # the floor is defined for full-size decoding
    contenders: dict[str, tuple[str, dict]] = {}
    if not args.skip_floor:
        contenders["floor"] = ("floor", {**common, "floor_samples": args.floor_samples, "threads": 2,
                                         "floor_repeats": 3})
    if not args.skip_tfdata:
        contenders["tf.data (Octo/OpenVLA path)"] = ("tfdata", {**common, "shuffle_buffer": args.shuffle_buffer})
    for c in configs:
        contenders[label_of(c)] = ("rldskit", {**common, "loader_kwargs": c})
    n_steps = args.episodes * args.steps
    print(f"dataset: {version_dir}\n  {args.episodes} episodes x {args.steps} steps = {n_steps} steps, two {h}x{w} JPEG "
          f"cameras (so100_arm.v1, wrist camera required), TFRecord + ArrayRecord + step index, {n_files} files, "
          f"{n_bytes / 1e6:.0f} MB (page cache warmed); {os.cpu_count()} cores", flush=True)
    print(f"windows: history={args.history} observations (both cameras decoded: {2 * args.history} JPEG decodes per "
          f"sample{f', resized to {resize[0]}x{resize[1]}' if resize else ''}), action_horizon={args.action_horizon}, "
          f"batch {args.batch_size}, shuffled; per run: first batch, "
          f"{args.warmup} warm-up batches, {args.intervals} x {args.interval_batches} timed batches", flush=True)

    results: dict[str, list[dict]] = {k: [] for k in contenders}
    errors: dict[str, list[str]] = {k: [] for k in contenders}
    for r in range(args.repeats):
        for label, (kind, cfg) in contenders.items():
            t0 = time.perf_counter()
            idx = list(contenders).index(label)
            res, err = run_child(kind, cfg, scratch / "logs" / f"c{idx}_{kind}_run{r + 1}", args.timeout)
            wall = time.perf_counter() - t0
            if err:
                errors[label].append(err)
                print(f"  run {r + 1} {label}: FAILED after {wall:.0f} s: {err.splitlines()[0]}", flush=True)
                continue
            results[label].append(res)
            if kind == "floor":
                best = max((kv for kv in res["rates"].items() if not kv[0].startswith("pil_load")),
                           key=lambda kv: statistics.median(kv[1]))
                note = (f"fastest decoder to numpy: {best[0]}: {statistics.median(best[1]):.0f} frames/s, "
                        f"others {res['foreign']:.0%}")
            else:
                note = (f"{res['median_rate']:7.1f} samples/s (intervals {min(res['rates']):.0f}-{max(res['rates']):.0f}), "
                        f"first batch {res['ttfb_s']:.2f} s, {statistics.median(res['cores']):.2f} cores, "
                        f"{res['processes']} processes, others {max(res['foreign']):.0%}")
            print(f"  run {r + 1} {label:40s} {note} [{wall:.0f} s]", flush=True)

    # ------------------------------------------------------------------ summary
    loaders = [k for k in contenders if contenders[k][0] != "floor" and results[k]]
    rate = {k: statistics.median([x for res in results[k] for x in res["rates"]]) for k in loaders}
    print(f"\nload: {n_steps} steps, two {h}x{w} JPEG cameras, windows of {args.history} observations + "
          f"{args.action_horizon} actions, batch {args.batch_size}; {os.cpu_count()} cores; {args.repeats} fresh-process "
          f"runs per contender, steady-state samples/s = median of {args.intervals} intervals x {args.repeats} runs")
    for k in contenders:
        if errors[k]:
            print(f"  {k}: {len(errors[k])} of {args.repeats} runs FAILED; first error:\n    "
                  + errors[k][0].replace("\n", "\n    ")[-1500:])
    tf_key = "tf.data (Octo/OpenVLA path)"
    for k in loaders:
        rs = [x for res in results[k] for x in res["rates"]]
        ttfb = statistics.median(res["ttfb_s"] for res in results[k])
        ttfb_p = statistics.median(res["ttfb_process_s"] for res in results[k])
        cores = statistics.median(c for res in results[k] for c in res["cores"])
        foreign = max(f for res in results[k] for f in res["foreign"])
        rss = max(x for res in results[k] for x in res["interval_rss"])
        print(f"  {k:40s} {rate[k]:8.1f} samples/s [{min(rs):.0f}-{max(rs):.0f}]  first batch {ttfb:6.2f} s "
              f"({ttfb_p:5.2f} s from process start, imports included)  {cores:.2f} cores busy  "
              f"{results[k][0]['processes']} processes  tree RSS <= {mib(rss)}  others' CPU <= {foreign:.0%}")
        if "loader" in results[k][0]:
            print(f"    {results[k][0]['loader']}")
    busy = max((f for k in loaders for res in results[k] for f in res["foreign"]), default=0.0)
    if busy > 0.1:
        print(f"  WARNING: other processes used up to {busy:.0%} of the machine's CPU during timed intervals; "
              "the figures are noisy (rerun on a quiet machine)")
    shapes: dict[str, list[str]] = {}
    for k in loaders:
        shapes.setdefault(json.dumps(results[k][0]["batch"]), []).append(k)
    for b, ks in shapes.items():
        who = ("tf.data" if ks == [tf_key] else "rldskit, every setting" if ks == [k for k in loaders if k != tf_key]
               else ", ".join(ks))
        print(f"  batch ({who}): " + ", ".join(f"{k} {v}" for k, v in json.loads(b).items()))
    for k in loaders:
        imgs = results[k][0]["images"]
        if len(imgs) != 2:
            print(f"  NOTE {k}: expected 2 decoded camera windows (B, {args.history}, H, W, C) in a batch, found {imgs}")

    floor_rate = pil_floor = None
    if "floor" in results and results["floor"]:
        runs = results["floor"]
        merged = {name: [x for res in runs for x in res["rates"][name]] for name in runs[0]["rates"]}
        fr = runs[0]
        print(f"  floor: {fr['frames']} JPEG frames {fr['frame_shape']}, mean {fr['mean_jpeg_bytes'] / 1e3:.1f} kB = {fr['what']}; "
              f"decoded from memory in a tight loop, no pipeline; JPEG decoders {decoders_installed()}")
        names = {"pil": "Pillow np.asarray(Image.open(..))", "pil_load": "Pillow Image.open(..).load() (no array)",
                 "pilproc": "Pillow np.asarray(Image.open(..)), processes", "tf": "tf.io.decode_jpeg(..).numpy() eager",
                 "tfgraph": "tf.function of 32 tf.io.decode_jpeg, TF's threads",
                 "sj": "simplejpeg.decode_jpeg(..) (new array)", "sj_buffer": "simplejpeg.decode_jpeg(.., buffer=reused)"}
        for name, rs in merged.items():
            dec, threads = name.split(" x")
            unit = {"pilproc": "processes", "tfgraph": "cores"}.get(dec, "threads" if threads != "1" else "thread")
            print(f"    {names[dec]:50s} {threads} {unit:9s} {statistics.median(rs):8.0f} "
                  f"frames/s = {statistics.median(rs) / (2 * args.history):7.1f} samples/s")
        best = max((n for n in merged if not n.startswith("pil_load")), key=lambda n: statistics.median(merged[n]))
        floor_rate = statistics.median(merged[best]) / (2 * args.history)
        own = "sj_buffer" if any(n.startswith("sj_buffer") for n in merged) else "pil"  # the decoder rldskit uses
        pil_best = max((n for n in merged if n.split(" x")[0] in (own, "pilproc" if own == "pil" else own)),
                       key=lambda n: statistics.median(merged[n]))
        pil_floor = statistics.median(merged[pil_best]) / (2 * args.history)
        dec, threads = best.split(" x")
        print(f"  floor = the fastest way to numpy arrays above: {names[dec]}, {threads} "
              f"{ {'pilproc': 'processes', 'tfgraph': 'cores'}.get(dec, 'threads')}: {floor_rate:.1f} samples/s")

    rk = [k for k in loaders if k != tf_key]
    best_rk = max(rk, key=lambda k: rate[k]) if rk else None
    if best_rk:
        print(f"best rldskit setting: {best_rk} ({rate[best_rk]:.1f} samples/s); all: "
              + ", ".join(f"{k[8:]}: {rate[k]:.1f}" for k in rk))
    if best_rk and tf_key in rate:
        ratio = rate[best_rk] / rate[tf_key]
        print(f"RATIO rldskit/tf.data samples/s = {ratio:.2f} ({rate[best_rk]:.1f} vs {rate[tf_key]:.1f}; target > 1.00, "
              f"aim 1.50): {'PASS' if ratio > 1.0 else 'FAIL'}")
        for k in rk:
            if k != best_rk:
                print(f"RATIO {k}/tf.data samples/s = {rate[k] / rate[tf_key]:.2f}")
    if best_rk and floor_rate:
        ratio = rate[best_rk] / floor_rate
        print(f"RATIO rldskit/floor samples/s = {ratio:.2f} ({rate[best_rk]:.1f} vs {floor_rate:.1f}; target >= 0.80): "
              f"{'PASS' if ratio >= 0.8 else 'FAIL'}")
    if best_rk and pil_floor:
        print(f"RATIO rldskit/own-decoder floor samples/s = {rate[best_rk] / pil_floor:.2f} ({rate[best_rk]:.1f} vs "
              f"{pil_floor:.1f}: the floor of the decoder rldskit uses, {own}; for information)")
    if floor_rate and tf_key in rate:
        print(f"RATIO tf.data/floor samples/s = {rate[tf_key] / floor_rate:.2f} (how close the baseline runs to the "
              f"decode floor: rldskit/tf.data > 1 needs rldskit/floor > {rate[tf_key] / floor_rate:.2f})")
    if best_rk and tf_key in rate:
        a = statistics.median(res["ttfb_s"] for res in results[best_rk])
        b = statistics.median(res["ttfb_s"] for res in results[tf_key])
        print(f"RATIO time to first batch tf.data/rldskit = {b / a:.2f} (rldskit {a:.2f} s, tf.data {b:.2f} s, which "
              f"fills its {args.shuffle_buffer}-window shuffle buffer first; from building the loader, imports excluded)")

    if best_rk and not args.skip_rss:
        kind, cfg = contenders[best_rk]
        print(f"\nRSS over {args.rss_samples} samples: {best_rk}, process tree (workers included), every "
              f"{args.rss_every} batches", flush=True)
        res, err = run_child(kind, {**cfg, "rss_samples": args.rss_samples, "rss_every": args.rss_every},
                             scratch / "logs" / "rss", args.timeout * 4)
        if err:
            print(f"  FAILED: {err}")
        else:
            lines, ok = rss_summary(res["rss_run"], res["batch_size"])
            print("\n".join(lines))
            print(f"RSS after warm-up over {res['rss_run']['samples']} samples: {'flat' if ok else 'GROWS'} (the "
                  f"least-squares trend over the steady 90% must add at most 32 MiB or 5%): {'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
