"""Benchmark: `rldskit validate` versus the floor of reading and json-parsing the same files.

Issue #2's target: on 200 synthetic ``pi5_donkey.v1`` episodes of 500 steps (no image
decoding), ``rldskit validate`` takes at most 2x the floor. The floor is a bare loop that reads
every file validation must read (``metadata.json`` and every ``steps/*.jsonl`` chunk) and
``json.loads`` every line; it checks nothing. Both run as fresh processes (interpreter start
included, as a user or a pre-commit hook sees it), alternating, ``--repeats`` times; medians
are printed with their ratio. With ``--check-images`` the full decode path is timed too and
reported in frames/s.

Frames use the Donkeycar-native 120x160 camera-shape variant to keep 100k frames on disk
small; validation without ``--check-images`` only lists frame folders, so the frame size does
not change the ratio.

    .venv/bin/python bench/validate.py                 # full size (first run synthesises ~1 min)
    .venv/bin/python bench/validate.py --episodes 20 --steps 200 --repeats 3   # quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

FLOOR = r"""
import json, os, sys
from pathlib import Path
n = 0
for ep in sorted(Path(sys.argv[1]).iterdir()):
    if not ep.is_dir():
        continue
    json.loads((ep / "metadata.json").read_bytes())
    for chunk in sorted((ep / "steps").iterdir()):
        data = chunk.read_bytes()
        if chunk.name.endswith(".zst"):
            import zstandard
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        for line in data.splitlines():
            json.loads(line)
            n += 1
print(n)
"""


def make_data(out: Path, episodes: int, steps: int) -> None:
    marker = out / f".complete_{episodes}x{steps}"
    if marker.exists():
        return
    import shutil

    from rldskit.spec import load_spec
    from rldskit.synth import write_synthetic

    if out.exists():
        shutil.rmtree(out)
    spec = load_spec("pi5_donkey.v1").with_image_shape("observation/image", (120, 160, 3))
    t0 = time.perf_counter()
    write_synthetic(spec, out, episodes, steps, seed=0)
    marker.touch()
    print(f"synthesised {episodes} x {steps} steps in {time.perf_counter() - t0:.0f} s -> {out}")


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode not in (0,):
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return dt, r.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data", default=str(ROOT / "bench_out" / "validate_data"))
    ap.add_argument("--no-images", action="store_true", help="skip the --check-images measurement")
    args = ap.parse_args()
    data = Path(args.data)
    make_data(data, args.episodes, args.steps)
    py = sys.executable
    rldskit = [py, "-m", "rldskit.cli", "validate", str(data), "--format", "json"]
    floor_cmd = [py, "-c", FLOOR, str(data)]
    times: dict[str, list[float]] = {"floor": [], "rldskit -j1": [], "rldskit -j2": []}
    for _ in range(args.repeats):
        dt, out = timed(floor_cmd)
        times["floor"].append(dt)
        n_lines = int(out.strip())
        dt, out = timed(rldskit + ["--jobs", "1"])
        rep = json.loads(out)
        assert rep["ok"] and rep["steps"] == n_lines, (rep["steps"], n_lines)
        times["rldskit -j1"].append(dt)
        dt, _ = timed(rldskit + ["--jobs", "2"])
        times["rldskit -j2"].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nvalidate: {args.episodes} pi5_donkey.v1 episodes x {args.steps} steps = {n_lines} steps, "
          f"median of {args.repeats} runs (whole process, interpreter start included)")
    print(f"  floor (read + json.loads every line)   {med['floor']:7.3f} s   {n_lines / med['floor']:10.0f} steps/s")
    for k in ("rldskit -j1", "rldskit -j2"):
        print(f"  {k:38s} {med[k]:7.3f} s   {n_lines / med[k]:10.0f} steps/s   ratio vs floor {med[k] / med['floor']:.2f}x")
    ratio = med["rldskit -j1"] / med["floor"]
    print(f"RATIO rldskit(1 process)/floor = {ratio:.2f} (target <= 2.00): {'PASS' if ratio <= 2.0 else 'FAIL'}")
    if not args.no_images:
        t0 = time.perf_counter()
        r = subprocess.run(rldskit[:-2] + ["--check-images", "--jobs", "1"], capture_output=True, text=True)
        dt = time.perf_counter() - t0
        line = [x for x in r.stdout.splitlines() if "frames decoded" in x]
        print(f"--check-images (1 process, 2 decode threads): {dt:.2f} s wall; {line[0] if line else r.stdout[-300:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
