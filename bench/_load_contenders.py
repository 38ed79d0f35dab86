"""The contenders of ``bench/load.py``, each run as a fresh child process.

    python bench/_load_contenders.py {rldskit|tfdata|floor} CONFIG_JSON

Progress goes to stderr; the last stdout line is one JSON object with the measurements.

* ``rldskit``: ``rldskit.loaders.windows(dataset, history=..., action_horizon=..., batch_size=...,
  seed=0, shuffle=True, num_epochs=None, decode_images=True, resize=..., **loader_kwargs)``.
* ``tfdata``: what Octo/OpenVLA users run (dlimp's ``DLataset.from_rlds`` and Octo's
  ``make_interleaved_dataset``, written out here in plain tf.data):
  ``tfds.builder_from_directory(dataset).as_dataset(split="train", shuffle_files=True,
  decoders={"steps": tfds.decode.SkipDecoding()}, read_config=ReadConfig(skip_prefetch=True,
  num_parallel_calls_for_interleave_files=AUTOTUNE, interleave_cycle_length=AUTOTUNE))`` (frames
  stay JPEG bytes) -> ``.repeat()`` -> per-episode ``map`` (AUTOTUNE) doing Octo's
  ``traj_transforms.chunk_act_obs`` by index arithmetic (``history`` observations ``t-h+1..t``,
  clamped to the first step, with ``timestep_pad_mask``; ``action_horizon`` actions ``t..t+k-1``,
  clamped to the last step, with ``action_pad_mask``) -> ``interleave(from_tensor_slices,
  cycle_length=AUTOTUNE, num_parallel_calls=AUTOTUNE)`` (dlimp's ``flatten``) -> ``shuffle(buffer)``
  of encoded windows -> ``map`` (AUTOTUNE) decoding every frame of the window with
  ``tf.io.decode_jpeg`` (Octo's ``decode_and_resize``; with ``resize``, its
  ``tf.image.resize(method="lanczos3", antialias=True)`` and round/clip/cast to uint8) -> ``batch`` ->
  ``prefetch(AUTOTUNE)`` -> ``as_numpy_iterator()``. ``options.deterministic = False``.
* ``floor``: exactly the JPEG bytes the rldskit runs decode first when timing: the ``history``
  frames per camera (clamped at the episode start) of ``floor_samples`` samples of rldskit's seed-0
  order from the first timed batch on (:func:`floor_frames`), held in memory, then decoded into
  numpy arrays in a tight loop by ``threads`` threads (interleaved halves of the list) or by as
  many forked processes, no pipeline, no batching. Decoders: Pillow (``np.asarray(Image.open(BytesIO(b)))``,
  libjpeg-turbo; Pillow's decoder releases the GIL), Pillow ``load()`` only (no numpy array; for
  information), eager ``tf.io.decode_jpeg(b).numpy()``, and a ``tf.function`` decoding 32 frames per
  call as 32 independent ``decode_jpeg`` ops (TF's executor runs them on all cores; no per-frame
  eager overhead, as inside tf.data). Pillow is timed after TensorFlow is imported: in a fresh
  process glibc's malloc serves every frame's 1.2 MB image buffer and 0.9 MB ``tobytes`` result
  with mmap/munmap, so each frame page-faults fresh memory (1.1 ms/frame to numpy here instead of
  0.63; ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=67108864`` or importing TensorFlow makes it
  0.63). That state is Pillow's fastest, so it is the one the floor uses. (rldskit's batch
  transform was measured both ways: 200 vs 192 ms per batch, so it is barely affected.)

Timing protocol for the two loaders (``drive``): build the pipeline and take the first batch (time to
first batch, from the call that builds the loader; also from the child's first line, imports
included), ``warmup`` more batches, then ``intervals`` timed intervals of ``interval_batches``
batches each; samples/s per interval. The CPU time of the process tree (workers included) and the
CPU time used by everything else on the machine are recorded per interval. With ``rss_samples`` the
run continues until that many samples have been produced, sampling the RSS of the process tree
every ``rss_every`` batches.
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()

import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import psutil  # noqa: E402

CAMERAS = ("front", "wrist")


def log(msg: str) -> None:
    print(f"[{os.path.basename(sys.argv[0])} {sys.argv[1]}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- process-tree accounting


def _tree() -> list[psutil.Process]:
    me = psutil.Process()
    try:
        return [me, *me.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [me]


def tree_rss() -> tuple[int, int, int]:
    """(RSS of the whole process tree, RSS of this process, number of processes)."""
    procs = _tree()
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total, procs[0].memory_info().rss, len(procs)


def tree_cpu() -> float:
    total = 0.0
    for p in _tree():
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def own_cpu() -> float:
    """CPU seconds of this process and of its reaped children (the floor's finished process pool)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def machine_busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


# --------------------------------------------------------------------------- batches


def flatten(batch, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    if isinstance(batch, dict):
        for k, v in batch.items():
            out.update(flatten(v, f"{prefix}{k}/"))
    else:
        out[prefix[:-1]] = batch
    return out


def describe(batch) -> dict[str, str]:
    return {k: f"{getattr(v, 'dtype', type(v).__name__)}{list(getattr(v, 'shape', ()))}"
            for k, v in sorted(flatten(batch).items())}


def batch_size_of(batch) -> int:
    return int(next(iter(flatten(batch).values())).shape[0])


def image_arrays(batch, history: int) -> dict[str, tuple[int, ...]]:
    """The decoded camera windows in a batch: ``key -> shape`` for uint8 arrays of rank 5
    ``(B, history, H, W, C)``."""
    return {k: tuple(v.shape) for k, v in flatten(batch).items()
            if getattr(v, "dtype", None) == np.uint8 and getattr(v, "ndim", 0) == 5 and v.shape[1] == history}


def drive(make_iter, cfg: dict) -> dict:
    ncpu = os.cpu_count() or 1
    log("building the pipeline")
    t_build = time.perf_counter()
    it = make_iter()
    first = next(it)
    t_first = time.perf_counter()
    bs = batch_size_of(first)
    images = image_arrays(first, cfg["history"])
    log(f"first batch after {t_first - t_build:.2f} s: {describe(first)}")
    res = {"ttfb_s": t_first - t_build, "ttfb_process_s": t_first - T_PROCESS, "batch": describe(first),
           "images": {k: list(v) for k, v in images.items()}, "batch_size": bs}
    del first
    for _ in range(cfg["warmup"]):
        next(it)
    res["warm_s"] = time.perf_counter() - t_first
    rates, cores, foreign, rss = [], [], [], []
    for k in range(cfg["intervals"]):
        c0, m0, t0 = tree_cpu(), machine_busy(), time.perf_counter()
        for _ in range(cfg["interval_batches"]):
            b = next(it)
        dt = time.perf_counter() - t0
        used = tree_cpu() - c0
        rates.append(cfg["interval_batches"] * bs / dt)
        cores.append(used / dt)
        foreign.append(max(0.0, machine_busy() - m0 - used) / (dt * ncpu))
        rss.append(tree_rss()[0])
        log(f"interval {k + 1}/{cfg['intervals']}: {rates[-1]:8.1f} samples/s, {cores[-1]:.2f} cores, "
            f"others {foreign[-1]:.0%}, tree RSS {rss[-1] / 2**20:.0f} MiB")
    res.update(rates=rates, median_rate=statistics.median(rates), cores=cores, foreign=foreign, interval_rss=rss,
               processes=tree_rss()[2])
    del b
    if cfg.get("rss_samples"):
        res["rss_run"] = rss_run(it, bs, res, cfg)
    return res


def rss_run(it, bs: int, res: dict, cfg: dict) -> dict:
    """Keep iterating until ``rss_samples`` samples were produced in all (first batch, warm-up and
    timed intervals included), sampling the tree's RSS every ``rss_every`` batches."""
    done = bs * (1 + cfg["warmup"] + cfg["intervals"] * cfg["interval_batches"])
    points = [(done, *tree_rss()[:2])]
    t0, n0 = time.perf_counter(), done
    k = 0
    while done < cfg["rss_samples"]:
        next(it)
        done += bs
        k += 1
        if k % cfg["rss_every"] == 0:
            points.append((done, *tree_rss()[:2]))
            if k % (cfg["rss_every"] * 10) == 0:
                log(f"RSS run: {done} samples, tree RSS {points[-1][1] / 2**20:.0f} MiB")
    points.append((done, *tree_rss()[:2]))
    dt = time.perf_counter() - t0
    return {"points": points, "samples": done, "rate": (done - n0) / dt}


# --------------------------------------------------------------------------- contenders


def run_rldskit(cfg: dict) -> dict:
    t0 = time.perf_counter()
    import rldskit.loaders

    rldskit.loaders.windows  # noqa: B018  (imports Grain, pyarrow, PIL: counted as imports, not as loader time)
    t_import = time.perf_counter() - t0
    made = []

    def make():
        ds = rldskit.loaders.windows(cfg["dataset"], history=cfg["history"], action_horizon=cfg["action_horizon"],
                                     batch_size=cfg["batch_size"], seed=0, shuffle=True, num_epochs=None,
                                     decode_images=True, resize=tuple(cfg["resize"]) if cfg.get("resize") else None,
                                     **cfg.get("loader_kwargs", {}))
        made.append(ds)
        return iter(ds)

    res = drive(make, cfg)
    res["t_import_s"] = t_import
    res["loader"] = repr(made[0])
    made[0].close()  # stop worker processes
    return res


def build_tfdata(cfg: dict):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    AUTOTUNE = tf.data.AUTOTUNE
    hist, horizon = cfg["history"], cfg["action_horizon"]
    builder = tfds.builder_from_directory(cfg["dataset"])
    ds = builder.as_dataset(split="train", shuffle_files=True, decoders={"steps": tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(skip_prefetch=True, shuffle_seed=0,
                                                        num_parallel_calls_for_interleave_files=AUTOTUNE,
                                                        interleave_cycle_length=AUTOTUNE))
    ds = ds.repeat()

    def chunk(episode):  # Octo's traj_transforms.chunk_act_obs, actions without the history axis
        steps = episode["steps"]
        n = tf.shape(steps["action"])[0]
        history_indices = tf.range(n)[:, None] + tf.range(-hist + 1, 1)  # [n, hist]
        timestep_pad_mask = history_indices >= 0
        history_indices = tf.maximum(history_indices, 0)
        obs = steps["observation"]
        window = {
            "observation": {
                "images": {c: tf.gather(obs["images"][c], history_indices) for c in CAMERAS},
                "joint_position": tf.gather(obs["joint_position"], history_indices),
                "joint_velocity": tf.gather(obs["joint_velocity"], history_indices),
                "gripper_position": tf.gather(obs["gripper_position"], history_indices),
                "timestep_pad_mask": timestep_pad_mask,
            },
            "language_instruction": steps["language_instruction"],
        }
        action_indices = tf.range(n)[:, None] + tf.range(horizon)  # [n, horizon]
        window["action_pad_mask"] = action_indices < n
        window["action"] = tf.gather(steps["action"], tf.minimum(action_indices, n - 1))
        return window

    resize = cfg.get("resize")

    def decode_and_resize(data):  # Octo's obs_transforms.decode_and_resize + dlimp's resize_image
        image = tf.io.decode_jpeg(data, channels=3)
        if resize:
            image = tf.image.resize(image, resize, method="lanczos3", antialias=True)
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        return image

    def decode(window):
        imgs = window["observation"]["images"]
        window["observation"]["images"] = {
            c: tf.stack([decode_and_resize(imgs[c][i]) for i in range(hist)]) for c in CAMERAS}
        return window

    ds = ds.map(chunk, num_parallel_calls=AUTOTUNE)
    ds = ds.interleave(tf.data.Dataset.from_tensor_slices, cycle_length=AUTOTUNE, num_parallel_calls=AUTOTUNE)
    ds = ds.shuffle(cfg["shuffle_buffer"], seed=0)
    ds = ds.map(decode, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(cfg["batch_size"], drop_remainder=True)
    ds = ds.prefetch(AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = False
    return ds.with_options(options)


def run_tfdata(cfg: dict) -> dict:
    t0 = time.perf_counter()
    import tensorflow as tf  # noqa: F401
    import tensorflow_datasets as tfds  # noqa: F401

    t_import = time.perf_counter() - t0
    res = drive(lambda: build_tfdata(cfg).as_numpy_iterator(), cfg)
    res["t_import_s"] = t_import
    return res


def floor_frames(cfg: dict) -> tuple[list[bytes], str]:
    """The JPEG bytes the rldskit runs decode: the samples of rldskit's seed-0 order from the first
    timed batch on (``floor_samples`` of them), ``history`` frames per camera each, clamped at the
    episode start. The order and the steps come from ``windows(..., decode_images=False)`` (its
    ``index``/``frame_index`` debug keys); the bytes from the step records (``StepSource``)."""
    import rldskit.loaders

    hist = cfg["history"]
    ds = rldskit.loaders.windows(cfg["dataset"], history=hist, action_horizon=cfg["action_horizon"],
                                 batch_size=cfg["batch_size"], seed=0, shuffle=True, num_epochs=None,
                                 decode_images=False)
    skip = 1 + cfg["warmup"]
    it = iter(ds)
    steps = []
    for k in range(skip + -(-cfg["floor_samples"] // cfg["batch_size"])):
        b = next(it)
        if k >= skip:
            g, t = b["index"][:, None], b["frame_index"][:, None]
            steps.append(g - t + np.maximum(t + np.arange(-hist + 1, 1)[None, :], 0))  # (B, hist) global steps
    ds.close()
    steps = np.concatenate(steps)[:cfg["floor_samples"]]
    source = ds.maker.source
    need = np.unique(steps)
    records = {int(s): source.decode(d, int(s)) for s, d in zip(need, source.read_records(need))}
    frames = [records[int(s)][f"observation/images/{c}"] for row in steps for c in CAMERAS for s in row]
    what = (f"the frames of samples {skip * cfg['batch_size']}..{skip * cfg['batch_size'] + len(steps) - 1} of "
            f"rldskit's seed-0 order (batches {skip}..{skip + len(steps) // cfg['batch_size'] - 1}, the first timed ones)")
    return frames, what


FRAMES: list[bytes] = []


def _decode_part(part: tuple[int, int]) -> int:
    """Decode ``FRAMES[start::step]`` with Pillow into numpy arrays (in a forked worker)."""
    from PIL import Image

    start, step = part
    todo = FRAMES[start::step]
    for b in todo:
        np.asarray(Image.open(io.BytesIO(b)))
    return len(todo)


def run_floor(cfg: dict) -> dict:
    from PIL import Image

    frames, what = floor_frames(cfg)
    n_windows = len(frames) // (2 * cfg["history"])
    log(f"{len(frames)} JPEG frames of {n_windows} windows in memory, {sum(map(len, frames)) / 1e6:.1f} MB: {what}")
    shape = np.asarray(Image.open(io.BytesIO(frames[0]))).shape

    def pil_numpy(b):
        return np.asarray(Image.open(io.BytesIO(b)))

    def pil_load(b):
        im = Image.open(io.BytesIO(b))
        im.load()
        return im

    decoders = {"pil": pil_numpy, "pil_load": pil_load}
    if importlib.util.find_spec("simplejpeg") is not None:
        import simplejpeg

        buffers = threading.local()

        def sj_numpy(b):
            return simplejpeg.decode_jpeg(b)

        def sj_buffer(b):  # into one array per thread, reused: no allocation at all (the fastest possible)
            buf = getattr(buffers, "buf", None)
            if buf is None:
                buf = buffers.buf = np.empty(shape, np.uint8)
            return simplejpeg.decode_jpeg(b, buffer=buf)

        decoders["sj"], decoders["sj_buffer"] = sj_numpy, sj_buffer
    out = {"frames": len(frames), "windows": n_windows, "what": what, "frame_shape": list(shape),
           "mean_jpeg_bytes": sum(map(len, frames)) / len(frames), "rates": {}}
    c0, m0, t0 = own_cpu(), machine_busy(), time.perf_counter()
    # Pillow in 2 processes (fork, frames inherited), in case threads do not scale (before TF is imported)
    import multiprocessing

    global FRAMES
    FRAMES = frames
    with multiprocessing.get_context("fork").Pool(cfg["threads"]) as pool:
        pool.map(_decode_part, [(0, 1 << 30)] * cfg["threads"])  # workers up and warm
        rates = []
        for _ in range(cfg["floor_repeats"]):
            t0 = time.perf_counter()
            n = sum(pool.map(_decode_part, [(i, cfg["threads"]) for i in range(cfg["threads"])]))
            rates.append(n / (time.perf_counter() - t0))
        out["rates"][f"pilproc x{cfg['threads']}"] = rates
        log(f"pil {cfg['threads']} processes: median {statistics.median(rates):.0f} frames/s {[round(r) for r in rates]}")
    if not cfg.get("floor_skip_tf"):
        import tensorflow as tf

        tf.io.decode_jpeg(frames[0]).numpy()  # first-call set-up outside the timing

        def tf_numpy(b):
            return tf.io.decode_jpeg(b, channels=3).numpy()

        decoders["tf"] = tf_numpy
        group = 32
        decode_group = tf.function(lambda x: [tf.io.decode_jpeg(x[i], channels=3) for i in range(group)],
                                   input_signature=[tf.TensorSpec([group], tf.string)])
        groups = [tf.constant(frames[i:i + group]) for i in range(0, len(frames) - group + 1, group)]
        [a.numpy() for a in decode_group(groups[0])]  # trace outside the timing
        rates = []
        for _ in range(cfg["floor_repeats"]):
            t1 = time.perf_counter()
            for x in groups:
                for a in decode_group(x):
                    a.numpy()
            rates.append(len(groups) * group / (time.perf_counter() - t1))
        out["rates"][f"tfgraph x{os.cpu_count()}"] = rates
        log(f"tf graph, {group} frames per call: median {statistics.median(rates):.0f} frames/s {[round(r) for r in rates]}")

    def timed(fn, threads: int) -> float:
        parts = [frames[i::threads] for i in range(threads)]
        barrier = threading.Barrier(threads + 1)

        def work(part):
            barrier.wait()
            for b in part:
                fn(b)

        ts = [threading.Thread(target=work, args=(p,)) for p in parts]
        for t in ts:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        return len(frames) / (time.perf_counter() - t0)

    for name, fn in decoders.items():
        for threads in (1, cfg["threads"]):
            fn(frames[0])
            rates = [timed(fn, threads) for _ in range(cfg["floor_repeats"])]
            out["rates"][f"{name} x{threads}"] = rates
            log(f"{name} x{threads} threads: median {statistics.median(rates):.0f} frames/s {[round(r) for r in rates]}")
    dt = time.perf_counter() - t0
    out["foreign"] = max(0.0, machine_busy() - m0 - (own_cpu() - c0)) / (dt * (os.cpu_count() or 1))
    return out


def main() -> int:
    kind, cfg = sys.argv[1], json.loads(sys.argv[2])
    fn = {"rldskit": run_rldskit, "tfdata": run_tfdata, "floor": run_floor}[kind]
    res = fn(cfg)
    res["cpu_count"] = os.cpu_count()
    res["affinity"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
