"""Benchmark: `rldskit convert` versus a TFDS builder, the floor of copying the input, and memory.

Issue #3's targets, on 200 synthetic ``so100_arm.v1`` episodes of 100 steps with two JPEG
cameras at the schema's declared 480x640 (``--frame`` for others; at 240x320 Beam's fixed
start-up cost of about 1.5 s is a third of rldskit's time, and the ratio measured here was 4.6-5.0):

1. **Speed against TFDS.** ``rldskit convert`` (Beam DirectRunner, ``multi_processing``,
   2 workers, TFRecord only, no step index, so its output is what TFDS writes) versus a TFDS
   ``GeneratorBasedBuilder`` that yields the same episodes the way the Open-X
   ``rlds_dataset_builder`` template does (``bench/_tfds_baseline.py``: ``_info`` with
   ``spec.to_tfds_features()``, ``_generate_examples`` reading each capture folder with
   ``read_episode(load_frames=True)`` and yielding ``(episode_id, to_tfds_example(ep, spec))``),
   writing TFRecord with the *same* runner and worker count (``DownloadConfig(beam_options=
   --direct_running_mode=multi_processing --direct_num_workers=2)``, ``_generate_examples``
   returning ``beam.Create(paths) | beam.Map(parse)``). The same builder as a plain generator
   (one process, no Beam) is a second reference, set against rldskit's ``runner="inline"``
   (one process, no Beam; same bytes). Target: TFDS+Beam / rldskit >= 5.
   Every run is a fresh process, timed from outside (interpreter start and imports included:
   importing TensorFlow is part of what TFDS costs), ``--repeats`` times in rotation; medians
   are printed. After each run the TFRecord shards are read back with rldskit's
   ``read_tfrecord`` and the episodes *counted* (TFDS's Beam writer was seen to drop episodes
   in ``multi_processing`` mode); each record's decoded content is compared with rldskit's
   (TFDS orders the feature map differently, so bytes differ but content must not).
2. **MB/s against the floor of copying the input.** The floor is one process that
   ``shutil.copyfile``s every input file (metadata, step lines, frames) into a scratch
   folder; MB/s = input bytes / wall time for both, page cache warm (the parent reads every
   input file once before timing). rldskit fsyncs each finished shard (crash safety); the
   copy does not fsync. Creating ~40k files makes the copy's time depend on the file
   system's allocator (on ext4 it varies run to run), so a second floor is shown that
   matches what a converter must do at least: read every input file and write the same
   bytes into one file, fsynced.
3. **Peak RSS for 1x and 10x the data.** rldskit convert on the input and on ten copies of it
   (distinct episode ids; frames hard-linked, metadata and step files copied, so it costs
   little disk), sampling the RSS of the whole process tree (driver plus Beam workers) every
   50 ms with psutil. Target: 10x costs at most 1.5x the peak RSS.

The synthesiser gives the wrist camera to ~70% of ``so100_arm`` episodes; this benchmark uses
a variant of the schema with *both* cameras required (``optional`` dropped from the wrist
leaf) and, for the episodes the synthesiser leaves without a wrist view, stores the front
frame's JPEG as the wrist frame, so every step carries two real JPEG frames.

Data is cached under ``bench_out/convert_data`` (and ``..._x10``) and regenerated when the
parameters change; every output goes under ``bench_out/convert_scratch``.

    .venv/bin/python bench/convert.py                 # full size (first run synthesises ~2 min)
    .venv/bin/python bench/convert.py --episodes 20 --steps 50 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
CAMERAS = ("observation/images/front", "observation/images/wrist")
SENTINEL = ".bench_convert_data"  # marks a folder this script may delete and regenerate

RLDSKIT_CHILD = r"""
import json, sys
from rldskit.pipeline import convert
res = convert([sys.argv[1]], sys.argv[2], name="bench_episodes", runner=sys.argv[4] if len(sys.argv) > 4 else "direct",
              num_workers=int(sys.argv[3]), formats=("tfrecord",), step_index=False)
print(json.dumps({"seconds": res.seconds, "counts": res.counts}))
"""

COPY_CHILD = r"""
import json, os, shutil, sys, time
t0 = time.perf_counter()
src, dst = sys.argv[1], sys.argv[2]
n = size = 0
for root, dirs, files in os.walk(src):
    out = os.path.join(dst, os.path.relpath(root, src))
    os.makedirs(out, exist_ok=True)
    for f in files:
        if f.startswith("."):
            continue
        shutil.copyfile(os.path.join(root, f), os.path.join(out, f))
        size += os.path.getsize(os.path.join(out, f))
        n += 1
print(json.dumps({"seconds": time.perf_counter() - t0, "files": n, "bytes": size}))
"""

CAT_CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
n = size = 0
with open(os.path.join(dst, "all.bin"), "wb", buffering=1 << 20) as out:
    for root, dirs, files in os.walk(src):
        for f in files:
            if f.startswith("."):
                continue
            with open(os.path.join(root, f), "rb") as fh:
                size += out.write(fh.read())
            n += 1
    out.flush()
    os.fsync(out.fileno())
print(json.dumps({"seconds": time.perf_counter() - t0, "files": n, "bytes": size}))
"""

# --------------------------------------------------------------------------- data


def bench_spec(h: int, w: int):
    """``so100_arm.v1`` with both cameras at ``(h, w, 3)`` and the wrist camera required."""
    from rldskit.spec import EpisodeSpec, load_spec

    spec = load_spec("so100_arm.v1")
    for cam in CAMERAS:
        spec = spec.with_image_shape(cam, (h, w, 3))
    d = spec.to_dict()
    d["steps"]["observation"]["images"]["wrist"].pop("optional", None)
    return EpisodeSpec.from_dict(d, source=f"so100_arm.v1, two required {h}x{w} cameras")


def _claim(out: Path, marker: str) -> bool:
    """True when ``out`` already holds data for ``marker``; otherwise make it an empty folder
    (deleting only folders this script made) and return False."""
    if (out / marker).exists():
        return True
    if out.exists():
        if not (out / SENTINEL).exists() and any(out.iterdir()):
            raise SystemExit(f"{out} exists and was not made by bench/convert.py; pass another --data")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / SENTINEL).touch()
    return False


def make_data(out: Path, episodes: int, steps: int, h: int, w: int) -> str:
    marker = f".complete_{episodes}x{steps}_{h}x{w}_2cam"
    if _claim(out, marker):
        return marker
    import rldskit.synth as synth

    original = synth.synth_steps

    def both_cameras(spec, n_steps, seed, episode_index=0, t0=1.7e9):
        plan = original(spec, n_steps, seed, episode_index, t0)
        for kw in plan:
            images = kw["observation"]["images"]
            if images.get("wrist") is None:
                images["wrist"] = images["front"]
        return plan

    t0 = time.perf_counter()
    synth.synth_steps = both_cameras  # write_synthetic looks it up in its module
    try:
        synth.write_synthetic(bench_spec(h, w), out, episodes, steps, seed=0)
    finally:
        synth.synth_steps = original
    (out / marker).touch()
    print(f"synthesised {episodes} x {steps} steps, two {h}x{w} cameras, in {time.perf_counter() - t0:.0f} s -> {out}")
    return marker


def make_replica(src: Path, src_marker: str, out: Path, copies: int) -> None:
    """``copies`` copies of every episode of ``src`` with distinct ids (``<id>_rNN``): frames
    hard-linked, ``metadata.json`` rewritten, step files copied."""
    marker = f"{src_marker}_x{copies}"
    if _claim(out, marker):
        return
    t0 = time.perf_counter()
    shutil.copyfile(src / "schema.json", out / "schema.json")
    episodes = sorted(p for p in src.iterdir() if (p / "metadata.json").is_file())
    for k in range(copies):
        for ep in episodes:
            meta = json.loads((ep / "metadata.json").read_bytes())
            meta["episode_id"] = new_id = f"{meta['episode_id']}_r{k:02d}"
            dst = out / new_id
            for root, _dirs, files in os.walk(ep):
                rel = Path(root).relative_to(ep)
                (dst / rel).mkdir(parents=True, exist_ok=True)
                for f in files:
                    s, d = Path(root) / f, dst / rel / f
                    if rel.parts[:1] == ("frames",):
                        os.link(s, d)
                    elif rel == Path(".") and f == "metadata.json":
                        d.write_text(json.dumps(meta, indent=1))
                    else:
                        shutil.copyfile(s, d)
    (out / marker).touch()
    print(f"replicated {len(episodes)} episodes x{copies} (hard-linked frames) in {time.perf_counter() - t0:.0f} s -> {out}")


def warm(data: Path) -> tuple[int, int]:
    """Read every input file once (page cache warm for every contender); ``(files, bytes)``."""
    n = size = 0
    for root, _dirs, files in os.walk(data):
        for f in files:
            if f.startswith("."):
                continue
            with open(os.path.join(root, f), "rb") as fh:  # chunked: shards can be GBs
                while chunk := fh.read(16 << 20):
                    size += len(chunk)
            n += 1
    return n, size


# --------------------------------------------------------------------------- running


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # bench/ so Beam workers can import _tfds_baseline.parse_episode; ROOT so rldskit imports
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def run(cmd: list[str], out: Path, log: Path, *, sample_rss: bool = False, fatal: bool = True):
    """Run ``cmd`` in a fresh process after emptying ``out``. Returns ``(wall_s, json_result or
    None, peak_tree_rss_bytes or None, error or None)``."""
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    peak = None
    with open(log.with_suffix(".out"), "wb") as so, open(log.with_suffix(".err"), "wb") as se:
        cpu0, ru0 = _busy_cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=so, stderr=se, env=child_env(), cwd=ROOT)
        if sample_rss:
            peak = _sample_tree_rss(p)
        p.wait()
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        FOREIGN.append(max(0.0, _busy_cpu() - cpu0 - ours) / (wall * (os.cpu_count() or 1)))
    if p.returncode != 0:
        err = log.with_suffix(".err").read_text(errors="replace")[-2500:]
        msg = f"command failed ({p.returncode}): {' '.join(cmd[:4])} ...; log {log}.err:\n{err}"
        if fatal:
            raise SystemExit(msg)
        return wall, None, peak, msg
    lines = log.with_suffix(".out").read_text().strip().splitlines()
    return wall, json.loads(lines[-1]), peak, None


FOREIGN: list[float] = []  # per run: share of the machine's CPU used by processes outside the run


def _busy_cpu() -> float:
    """CPU-seconds the whole machine has been busy (all cores, idle and iowait excluded)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def _sample_tree_rss(p: subprocess.Popen) -> int:
    import psutil

    root = psutil.Process(p.pid)
    peak = 0
    while p.poll() is None:
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for q in procs:
            try:
                total += q.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        peak = max(peak, total)
        time.sleep(0.05)
    return peak


def _content_digest(record: bytes) -> str:
    """sha256 of a tf.train.Example's decoded content, independent of the feature-map order."""
    import numpy as np

    from rldskit.formats.tfexample import decode_features

    h = hashlib.sha256()
    for key, (kind, values) in sorted(decode_features(record).items()):
        h.update(f"{key}\0{kind}\0".encode())
        if isinstance(values, np.ndarray):
            h.update(f"{values.dtype}{values.shape}".encode())
            h.update(np.ascontiguousarray(values).tobytes())
        else:
            for v in values:
                h.update(len(v).to_bytes(8, "little"))
                h.update(v)
    return h.hexdigest()


def read_back(out: Path) -> list[str]:
    """Content digests of every record of every finished TFRecord shard under ``out``."""
    from rldskit.formats.tfrecord import read_tfrecord

    shards = sorted(p for p in out.rglob("*.tfrecord-*") if not p.name.startswith(".") and "incomplete" not in str(p))
    return [_content_digest(r) for s in shards for r in read_tfrecord(s)]


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--frame", default="480x640", help="HxW of both cameras (default: the schema's 480x640)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="Beam DirectRunner workers, for rldskit and TFDS alike")
    ap.add_argument("--rss-copies", type=int, default=10, help="data multiple for the peak-RSS comparison")
    ap.add_argument("--skip-tfds-beam", action="store_true", help="skip the TFDS builder on Beam")
    ap.add_argument("--skip-tfds-generator", action="store_true", help="skip the TFDS builder without Beam")
    ap.add_argument("--skip-inline", action="store_true", help="skip rldskit's runner=inline (1 process, no Beam)")
    ap.add_argument("--skip-rss", action="store_true", help="skip the 1x/10x peak-RSS measurement")
    ap.add_argument("--data", default=str(ROOT / "bench_out" / "convert_data"))
    args = ap.parse_args()
    h, w = (int(x) for x in args.frame.lower().split("x"))
    data = Path(args.data).resolve()
    scratch = ROOT / "bench_out" / "convert_scratch"
    marker = make_data(data, args.episodes, args.steps, h, w)
    n_files, in_bytes = warm(data)
    mb = in_bytes / 1e6
    py = sys.executable
    W = str(args.workers)
    kinds = {
        "rldskit": ([py, "-c", RLDSKIT_CHILD, str(data), str(scratch / "rldskit"), W], scratch / "rldskit"),
        "rldskit_inline": ([py, "-c", RLDSKIT_CHILD, str(data), str(scratch / "rldskit_inline"), W, "inline"],
                           scratch / "rldskit_inline"),
        "tfds_beam": ([py, str(BENCH / "_tfds_baseline.py"), "beam", str(data), str(scratch / "tfds_beam"),
                       "--workers", W], scratch / "tfds_beam"),
        "tfds_generator": ([py, str(BENCH / "_tfds_baseline.py"), "generator", str(data),
                            str(scratch / "tfds_generator")], scratch / "tfds_generator"),
        "copy": ([py, "-c", COPY_CHILD, str(data), str(scratch / "copy")], scratch / "copy"),
        "cat": ([py, "-c", CAT_CHILD, str(data), str(scratch / "cat")], scratch / "cat"),
    }
    if args.skip_tfds_beam:
        del kinds["tfds_beam"]
    if args.skip_tfds_generator:
        del kinds["tfds_generator"]
    if args.skip_inline:
        del kinds["rldskit_inline"]
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    inproc: dict[str, list[float]] = {k: [] for k in kinds}
    counts: dict[str, list[int]] = {k: [] for k in kinds}
    claimed: dict[str, list[int]] = {k: [] for k in kinds}
    same: dict[str, list[int]] = {k: [] for k in kinds}
    errors: dict[str, list[str]] = {k: [] for k in kinds}
    reference: set[str] | None = None
    print(f"input: {args.episodes} episodes x {args.steps} steps, two {h}x{w} JPEG cameras, "
          f"{n_files} files, {mb:.1f} MB ({data})", flush=True)
    for r in range(args.repeats):
        for kind, (cmd, out) in kinds.items():
            wall, res, _, err = run(cmd, out, scratch / "logs" / f"{kind}_{r}", fatal=kind not in ("tfds_beam", "tfds_generator"))
            if err is not None:
                errors[kind].append(err)
                print(f"  run {r + 1} {kind}: FAILED after {wall:.1f} s (see {scratch / 'logs'})", flush=True)
                continue
            walls[kind].append(wall)
            inproc[kind].append(res["seconds"])
            note = ""
            if kind not in ("copy", "cat"):
                digests = read_back(out)
                counts[kind].append(len(digests))
                claimed[kind].append(res["counts"]["written"] if kind.startswith("rldskit") else res["num_examples"])
                if kind.startswith("rldskit"):
                    if len(set(digests)) != len(digests) or res["counts"]["written"] != len(digests):
                        raise SystemExit(f"rldskit wrote {len(digests)} records, {len(set(digests))} distinct, "
                                         f"manifest says {res['counts']['written']}")
                    reference = reference or set(digests)
                same[kind].append(len(set(digests) & reference) if reference else 0)
                note = f", {len(digests)} episodes read back"
            print(f"  run {r + 1} {kind:15s} {wall:7.2f} s{note}; CPU used by other processes {FOREIGN[-1]:.0%}",
                  flush=True)
            shutil.rmtree(out, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in walls.items() if v}
    med_in = {k: statistics.median(v) for k, v in inproc.items() if v}
    n_steps = args.episodes * args.steps
    print(f"\nconvert: {args.episodes} episodes x {args.steps} steps = {n_steps} steps, {2 * n_steps} JPEG frames "
          f"({h}x{w}, so100_arm.v1 with both cameras required), {mb:.1f} MB in; {args.workers} workers; "
          f"median of {args.repeats} runs, each a fresh process (interpreter start and imports included)")
    labels = {
        "rldskit": f"rldskit convert (DirectRunner multi_processing x{args.workers})",
        "rldskit_inline": "rldskit convert, runner=inline (1 process, no Beam)",
        "tfds_beam": f"TFDS GeneratorBasedBuilder, Beam (same runner x{args.workers})",
        "tfds_generator": "TFDS GeneratorBasedBuilder, plain generator (1 process)",
        "copy": "floor: shutil.copyfile every input file (1 process)",
        "cat": "floor: read every input file into 1 file, fsync (1 process)",
    }
    for kind in kinds:
        if kind not in med:
            print(f"  {labels[kind]:62s} all {len(errors[kind])} runs FAILED")
            continue
        line = (f"  {labels[kind]:62s} {med[kind]:7.2f} s [{min(walls[kind]):.2f}-{max(walls[kind]):.2f}] "
                f"(in-process {med_in[kind]:6.2f} s) {mb / med[kind]:7.1f} MB/s")
        if kind not in ("copy", "cat"):
            line += f"  episodes written per run {counts[kind]} of {args.episodes}"
            if not kind.startswith("rldskit"):
                line += f" (TFDS reported {claimed[kind]}); same content as rldskit's: {same[kind]}"
        if errors[kind]:
            line += f"; {len(errors[kind])} runs FAILED"
        print(line)
    print(f"  CPU share used by processes outside the benchmark during its runs: median {statistics.median(FOREIGN):.0%},"
          f" max {max(FOREIGN):.0%}" + ("  <- the machine was busy; timings are noisy" if max(FOREIGN) > 0.1 else ""))
    for kind in ("tfds_beam", "tfds_generator"):
        if kind in counts and any(c != args.episodes for c in counts[kind]):
            lost = [args.episodes - c for c in counts[kind]]
            print(f"  NOTE {kind} DROPPED episodes: lost {lost} of {args.episodes} per run "
                  f"while reporting {claimed[kind]} written")
    for kind in ("rldskit", "rldskit_inline"):
        if any(c != args.episodes for c in counts.get(kind, [])):
            print(f"  NOTE {kind} wrote {counts[kind]} of {args.episodes} episodes")
    for kind in ("tfds_beam", "tfds_generator"):
        if kind in med:
            ratio = med[kind] / med["rldskit"]
            target = " (target >= 5.00): " + ("PASS" if ratio >= 5.0 else "FAIL") if kind == "tfds_beam" else ""
            print(f"RATIO {kind}/rldskit wall-clock = {ratio:.2f}{target}")
    if "tfds_generator" in med and "rldskit_inline" in med:
        print(f"RATIO tfds_generator/rldskit_inline wall-clock (both 1 process, no Beam) = "
              f"{med['tfds_generator'] / med['rldskit_inline']:.2f}")
    for floor in ("copy", "cat"):
        print(f"RATIO {floor} floor MB/s / rldskit MB/s = {med['rldskit'] / med[floor]:.2f} "
              f"(rldskit {mb / med['rldskit']:.1f} MB/s, {floor} {mb / med[floor]:.1f} MB/s; in-process: "
              f"{med_in['rldskit'] / med_in[floor]:.2f})")

    if not args.skip_rss:
        big = data.parent / f"{data.name}_x{args.rss_copies}"
        make_replica(data, marker, big, args.rss_copies)
        warm(big)
        peaks, rss_walls = {}, {}
        for label, src in (("1x", data), (f"{args.rss_copies}x", big)):
            out = scratch / f"rldskit_rss_{label}"
            wall, res, peak, _ = run([py, "-c", RLDSKIT_CHILD, str(src), str(out), W], out,
                                     scratch / "logs" / f"rss_{label}", sample_rss=True)
            want = args.episodes * (1 if label == "1x" else args.rss_copies)
            if res["counts"]["written"] != want:
                raise SystemExit(f"rldskit {label}: wrote {res['counts']['written']} of {want} episodes")
            peaks[label], rss_walls[label] = peak, wall
            shutil.rmtree(out, ignore_errors=True)
        big_label = f"{args.rss_copies}x"
        rss_foreign = FOREIGN[-2:]
        print(f"\npeak RSS of rldskit convert (driver + Beam workers, psutil every 50 ms; {args.workers} workers):")
        for label in peaks:
            n_ep = args.episodes * (1 if label == "1x" else args.rss_copies)
            print(f"  {label:4s} {n_ep:6d} episodes, {mb * (1 if label == '1x' else args.rss_copies):8.1f} MB in: "
                  f"peak {peaks[label] / 2**20:7.1f} MiB, {rss_walls[label]:7.2f} s wall, "
                  f"{mb * (1 if label == '1x' else args.rss_copies) / rss_walls[label]:5.1f} MB/s")
        print(f"  CPU share used by other processes during these two runs: {rss_foreign[0]:.0%}, {rss_foreign[1]:.0%}")
        ratio = peaks[big_label] / peaks["1x"]
        print(f"RATIO peak_rss {big_label}/1x = {ratio:.2f} (target <= 1.50): {'PASS' if ratio <= 1.5 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
