"""Benchmark: rldskit on a bucket (issue 14), against a moto S3 server started here on 127.0.0.1.

What exists today, each side by side with its baseline in one run, medians of ``--repeats``:

1. **Loader from a bucket.** A converted ``pi5_donkey.v1`` dataset (``--episodes`` x ``--steps``,
   ``--frame`` pixels) is uploaded to the S3 server. ``rldskit.loaders.windows("s3://...")`` fills
   its local copy once (the fill's MB/s is printed), then windows/s from the filled copy are
   timed against ``windows`` on the local folder it came from. Target: >= 0.95.
2. **Listing for planning.** ``--objects`` objects (default 100 000) under one prefix, listed by
   ``rldskit.paths.list_files`` (one paginated listing, sizes from it) against the same listing
   done with boto3's paginator directly (the floor). Target: under 10 s.
3. **Conversion from and to the bucket:** not built yet (``rldskit convert`` takes local paths
   only); printed as such.

    .venv/bin/python bench/remote.py                       # defaults
    .venv/bin/python bench/remote.py --objects 20000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _windows_per_s(path, batches: int) -> float:
    from rldskit.loaders import windows

    ld = windows(path, history=2, action_horizon=8, batch_size=32, seed=0, num_epochs=None, resize=None)
    it = iter(ld)
    next(it)  # first batch: start-up, not steady state
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * 32 / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--frame", default="120x160", help="HxW of the camera frames")
    ap.add_argument("--batches", type=int, default=40, help="timed batches per loader run")
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1"})
    import boto3

    from rldskit import dataset_cache, paths
    from rldskit.pipeline import convert
    from rldskit.spec import load_spec
    from rldskit.synth import write_synthetic

    client = boto3.client("s3")
    client.create_bucket(Bucket="bench")
    work = Path(tempfile.mkdtemp(prefix="rldskit-bench-remote-"))
    os.environ[dataset_cache.CACHE_DIR_ENV] = str(work / "cache")
    try:
        # 1. the loader
        h, w = (int(x) for x in args.frame.split("x"))
        spec = load_spec("pi5_donkey.v1")
        for image in spec.image_paths:
            spec = spec.with_image_shape(image, (h, w, spec.step_leaves[image].shape[2]))
        write_synthetic(spec, work / "cap", args.episodes, args.steps, seed=0)
        local = convert([work / "cap"], work / "data", name="bench", runner="inline").path
        url = "s3://bench/data/bench/1.0.0"
        files = [p for p in local.rglob("*") if p.is_file()]
        for p in files:
            paths.write_bytes(paths.join(url, p.relative_to(local).as_posix()), p.read_bytes())
        nbytes = sum(p.stat().st_size for p in files)
        t0 = time.perf_counter()
        copy = dataset_cache.local_copy(url, progress=lambda d, t: None)
        fill = time.perf_counter() - t0
        print(f"dataset: {args.episodes} episodes x {args.steps} steps, {args.frame} frames, {len(files)} files, "
              f"{nbytes / 1e6:.1f} MB; first use fills the local copy in {fill:.2f} s ({nbytes / 1e6 / fill:.1f} MB/s)")
        t0 = time.perf_counter()
        dataset_cache.local_copy(url)
        print(f"  later uses: one listing, reused in {1e3 * (time.perf_counter() - t0):.0f} ms")
        remote_rates, local_rates = [], []
        for _ in range(args.repeats):
            remote_rates.append(_windows_per_s(url, args.batches))
            local_rates.append(_windows_per_s(local, args.batches))
        r, lo = statistics.median(remote_rates), statistics.median(local_rates)
        print(f"loader windows/s, median of {args.repeats}: from the bucket (filled copy) {r:.0f}, local {lo:.0f}, "
              f"ratio {r / lo:.2f} (target >= 0.95)")
        assert copy.is_dir()

        # 2. listing
        def put(i: int) -> None:
            client.put_object(Bucket="bench", Key=f"many/{i:07d}.jsonl", Body=b"x")

        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(args.objects)))
        print(f"listing: {args.objects} objects under one prefix (put in {time.perf_counter() - t0:.0f} s)")
        ours, floor = [], []
        for _ in range(args.repeats):
            paths.reset()
            t0 = time.perf_counter()
            got = paths.list_files("s3://bench/many")
            ours.append(time.perf_counter() - t0)
            assert len(got) == args.objects
            t0 = time.perf_counter()
            n = sum(len(page.get("Contents", [])) for page in
                    client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="many/"))
            floor.append(time.perf_counter() - t0)
            assert n == args.objects
        o, f = statistics.median(ours), statistics.median(floor)
        print(f"  rldskit.paths.list_files {o:.2f} s, boto3 paginator {f:.2f} s, ratio {f / o:.2f} "
              f"(target: under 10 s for 100k)")

        # 3. conversion
        print("conversion from/to the bucket: not built yet (rldskit convert takes local paths only)")
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
