"""Benchmark: importing a LeRobot dataset with AV1 video (frames/s) versus the floor of decoding the
same video files with PyAV alone. Issue #5's target: the importer reaches at least 50% of the floor.

Data: the real LeRobot v2.1 fixture ``../shared/fixtures/lerobot_v21_g1`` (Unitree G1, one AV1 camera,
30 fps, episodes 29-31), or ``--source`` for another local LeRobot folder.

* **import**: ``rldskit.importers.lerobot.import_lerobot(source, out)``: parquet rows, AV1 decode at the
  row timestamps, JPEG encode, the crash-safe capture logger, the import report.
* **floor**: for every episode's video file, ``av.open`` and decode every frame to an RGB numpy array
  (``frame.to_ndarray(format="rgb24")``), nothing else.

Each runs ``--repeats`` times in alternation; frames/s = median. Prints both and the ratio.

    .venv/bin/python bench/import.py
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def floor(videos: list[Path]) -> int:
    import av

    n = 0
    for v in videos:
        with av.open(str(v)) as c:
            for frame in c.decode(video=0):
                frame.to_ndarray(format="rgb24")
                n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.source is None:
        from shared_fixtures import shared_fixtures

        args.source = shared_fixtures() / "lerobot_v21_g1"
    if not (args.source / "meta" / "info.json").is_file():
        print(f"no LeRobot dataset at {args.source} (the shared fixture is missing?)")
        return 2
    from rldskit.importers.lerobot import import_lerobot

    videos = sorted(args.source.glob("videos/**/*.mp4"))
    frames_floor = floor(videos)  # warm the page cache and the decoder
    t_floor, t_import, frames_import = [], [], 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        floor(videos)
        t_floor.append(time.perf_counter() - t0)
        out = Path(tempfile.mkdtemp(prefix="rldskit-bench-import-"))
        t0 = time.perf_counter()
        report = import_lerobot(args.source, out / "episodes")
        t_import.append(time.perf_counter() - t0)
        frames_import = _frames_written(out / "episodes")
        shutil.rmtree(out, ignore_errors=True)
    f_rate = frames_floor / statistics.median(t_floor)
    i_rate = frames_import / statistics.median(t_import)
    print(f"LeRobot import of {args.source.name}: {len(videos)} AV1 videos, {frames_floor} frames decoded by the floor, "
          f"{frames_import} frames imported; {args.repeats} alternating repeats")
    print(f"  floor (PyAV decode to RGB arrays)   {f_rate:8.1f} frames/s  {[round(frames_floor / t, 1) for t in t_floor]}")
    print(f"  rldskit import (decode, JPEG, log)  {i_rate:8.1f} frames/s  {[round(frames_import / t, 1) for t in t_import]}")
    ratio = i_rate / f_rate
    print(f"RATIO import/floor frames/s = {ratio:.2f} (target >= 0.50): {'PASS' if ratio >= 0.5 else 'FAIL'}")
    _ = report
    return 0 if ratio >= 0.5 else 1


def _frames_written(root: Path) -> int:
    return sum(1 for _ in root.rglob("frames/*/*.jpg"))


if __name__ == "__main__":
    sys.exit(main())
