"""Benchmark: ArrayRecord compression per record layout (size, write time, read time).

The same records are written with every compression rldskit offers (``group_size:1``, so each
record is compressed alone) and read back twice: sequentially (iteration, batches of 64) and
at random (batches of 32 random indices). Records are real ``tf.train.Example`` bytes from
``rldskit.formats.tfexample``, one RLDS episode per record (``* episode``, the TFDS layout)
and one step per record (``* step``, the step-major layout):

* ``real``: ``so100_arm.v1`` episodes whose two cameras show real robot frames (the G1
  fixture videos in ``../shared/fixtures/lerobot_v21_g1``, decoded and re-encoded as JPEG q85
  at ``--camera``), as recorded (a quarter of the frames repeat the previous one, as when a
  camera runs slower than the control loop) and with the repeats dropped (``no rep.``);
  skipped when the fixture is absent;
* ``synth``: ``pi5_donkey.v1`` synthetic episodes, one camera showing ``rldskit.synth``'s
  rendered road. Rendered frames have large flat areas and compress far better than camera
  frames do: do not choose a compression from them;
* ``* low-dim``: step records of ``so100_arm.v1`` (joints, action, reward, discount, flags,
  timestamps, language instruction) and ``xr_teleop.v1`` (poses, glove, audio level,
  diagnostics, presence masks) without their cameras, ``4 * --episodes`` episodes.

Each kind also prints what :func:`rldskit.formats.arrayrecord.choose_compression` picks from
its first 16 records.

Times are medians of ``--repeats`` runs, on whatever disk ``--dir`` is (default: a temp dir).
Reading is from the page cache, so it measures decompression and framing, not the disk.

    .venv/bin/python bench/arrayrecord_compression.py               # ~1 min
    .venv/bin/python bench/arrayrecord_compression.py --episodes 4 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rldskit.formats.arrayrecord import (  # noqa: E402
    COMPRESSIONS,
    ArrayRecordShardReader,
    ArrayRecordShardWriter,
    choose_compression,
)


G1_VIDEOS = ROOT.parent / "shared/fixtures/lerobot_v21_g1/videos/chunk-000/observation.images.cam_high"


def real_frames(camera: tuple[int, int]) -> list[bytes]:
    """Every frame of the G1 fixture videos (a real robot camera), in order, as JPEG q85 at
    ``camera``; ``[]`` when the fixture is absent. The recording repeats frames (a camera
    slower than the log: 56 of the first video's 221 frames are a repeat of the one before)."""
    import av
    from PIL import Image as PILImage

    from rldskit.synth import encode_image

    out: list[bytes] = []
    for video in sorted(G1_VIDEOS.glob("*.mp4")) if G1_VIDEOS.exists() else []:
        with av.open(str(video)) as c:
            for frame in c.decode(video=0):
                img = frame.to_image()
                if img.size != (camera[1], camera[0]):
                    img = img.resize((camera[1], camera[0]), PILImage.BILINEAR)
                out.append(encode_image(np.asarray(img)))
    return out


def with_frames(episodes: list, spec, frames: list[bytes]) -> list:
    """The episodes with every camera showing ``frames`` (cycled), all cameras present."""
    from rldskit.episode import Episode
    from rldskit.spec import PRESENT_SUFFIX

    out, n = [], 0
    for e in episodes:
        cols = dict(e.steps)
        for path in spec.image_paths:
            col = np.empty(len(e), dtype=object)
            col[:] = [frames[(n + i) % len(frames)] for i in range(len(e))]
            n += len(e)
            cols[path] = col
            if getattr(spec.step_leaves[path], "optional", False):
                cols[path + PRESENT_SUFFIX] = np.ones(len(e), dtype=bool)
        out.append(Episode(e.metadata, cols))
    return out


def low_dim_records(name: str, episodes: int, steps: int, work: Path) -> list[bytes]:
    """Step records of a built-in schema with its cameras removed."""
    from rldskit.formats.capture_dir import read_episode
    from rldskit.formats.tfexample import encode_step
    from rldskit.spec import EpisodeSpec, load_spec
    from rldskit.synth import write_synthetic

    spec = load_spec(name)
    for path in spec.image_paths:
        spec = spec.with_image_shape(path, (24, 32, 3))  # dropped below: keep synthesis cheap
    d = spec.to_dict()
    for path in spec.image_paths:
        *parents, leaf = path.split("/")
        node = d["steps"]
        for key in parents:
            node = node[key]
        del node[leaf]
    low_dim = EpisodeSpec.from_dict(d)
    eps = [read_episode(p, spec) for p in write_synthetic(spec, work / f"{name}.low", episodes, steps, seed=0)]
    return [encode_step(e, i, low_dim) for e in eps for i in range(len(e))]


def make_records(episodes: int, steps: int, camera: tuple[int, int], work: Path) -> dict[str, list[bytes]]:
    from rldskit.formats.capture_dir import read_episode
    from rldskit.formats.tfexample import encode_episode, encode_step
    from rldskit.spec import EpisodeSpec, load_spec
    from rldskit.synth import write_synthetic

    out: dict[str, list[bytes]] = {}
    for name in ("pi5_donkey.v1", "so100_arm.v1"):
        spec = load_spec(name)
        for path in spec.image_paths:
            spec = spec.with_image_shape(path, (*camera, 3))
        eps = [read_episode(p, spec, load_frames=True)
               for p in write_synthetic(spec, work / spec.name, episodes, steps, seed=0)]
        if name == "pi5_donkey.v1":
            out["synth episode"] = [encode_episode(e, spec) for e in eps]
            out["synth step"] = [encode_step(e, i, spec) for e in eps for i in range(len(e))]
    frames = real_frames(camera)
    if not frames:
        print(f"(no videos in {G1_VIDEOS}: the real-camera rows are skipped)")
    else:
        real = with_frames(eps, spec, frames)
        out["real episode"] = [encode_episode(e, spec) for e in real]
        uniq = [f for i, f in enumerate(frames) if i == 0 or f != frames[i - 1]]
        out["real, no rep."] = [encode_episode(e, spec) for e in with_frames(eps, spec, uniq)]
        out["real step"] = [encode_step(e, i, spec) for e in real for i in range(len(e))]
    for name in ("so100_arm.v1", "xr_teleop.v1"):
        out[f"{name.split('_')[0]} low-dim"] = low_dim_records(name, 4 * episodes, steps, work)
    return out


def run(records: list[bytes], compression: str, path: Path, repeats: int) -> dict[str, float]:
    writes, seqs, rands = [], [], []
    rng = random.Random(0)
    order = list(range(len(records)))
    rng.shuffle(order)
    batches = [order[i:i + 32] for i in range(0, len(order), 32)]
    for _ in range(repeats):
        t = time.perf_counter()
        with ArrayRecordShardWriter(path, compression=compression) as w:
            for r in records:
                w.write(r)
        writes.append(time.perf_counter() - t)
        with ArrayRecordShardReader(path) as reader:
            t = time.perf_counter()
            n = sum(len(r) for r in reader)
            seqs.append(time.perf_counter() - t)
            t = time.perf_counter()
            for b in batches:
                reader.read(b)
            rands.append(time.perf_counter() - t)
        assert n == w.payload_bytes
    return {"bytes": w.num_bytes, "write": statistics.median(writes), "seq": statistics.median(seqs),
            "rand": statistics.median(rands)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--camera", default="480x640", help="HxW of every camera")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    camera = tuple(int(x) for x in args.camera.split("x"))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        kinds = make_records(args.episodes, args.steps, camera, work)
        print(f"{args.episodes} episodes x {args.steps} steps per schema, {args.camera} JPEG cameras "
              f"(records made in {time.perf_counter() - t:.1f} s); medians of {args.repeats}\n")
        print(f"{'records':<15}{'n':>6}{'avg B':>9} {'compression':<13}{'MB':>8}{'vs unc':>8}"
              f"{'write s':>9}{'MB/s':>7}{'seq read s':>11}{'rand read s':>12}")
        for kind, records in kinds.items():
            payload = sum(map(len, records))
            base = None
            for comp in COMPRESSIONS:
                r = run(records, comp, work / f"{kind.replace(' ', '_')}.{comp}.array_record", args.repeats)
                base = base or r["bytes"]
                print(f"{kind:<15}{len(records):>6}{payload // len(records):>9} {comp:<13}{r['bytes'] / 1e6:>8.2f}"
                      f"{r['bytes'] / base:>8.2f}{r['write']:>9.3f}{payload / r['write'] / 1e6:>7.0f}"
                      f"{r['seq']:>11.3f}{r['rand']:>12.3f}")
            print(f"{kind:<15}choose_compression(first 16 records) -> {choose_compression(records[:16])}\n")


if __name__ == "__main__":
    main()
