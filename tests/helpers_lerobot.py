"""Writers for small synthetic LeRobot datasets (v2.1 and v3.0 layouts, and a monorepo), in the
on-disk format of Hugging Face LeRobot: ``meta/info.json``, episode/task metadata, parquet rows
(pyarrow) and mp4 video (PyAV).

Every frame of a video is a flat grey level that identifies it (``frame_value(global_frame)``),
so a test can tell which frame an importer picked for a row."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

SO100_NAMES = ["main_shoulder_pan", "main_shoulder_lift", "main_elbow_flex", "main_wrist_flex", "main_wrist_roll",
               "main_gripper"]
_CODEC: str | None = None
os.environ.setdefault("SVT_LOG", "1")  # quiet SVT-AV1 banners


def pick_codec() -> str:
    """libaom-av1, else libsvtav1, else h264, else mpeg4 (the first this PyAV can encode)."""
    global _CODEC
    if _CODEC is None:
        import av

        for c in ("libaom-av1", "libsvtav1", "h264", "libx264", "mpeg4"):
            if c in av.codecs_available:
                try:
                    encode_mp4(Path("/dev/null"), [np.zeros((64, 64, 3), np.uint8)] * 2, 10, codec=c, probe=True)
                except Exception:  # noqa: BLE001 - try the next encoder
                    continue
                _CODEC = c
                break
        else:
            raise RuntimeError("no usable video encoder in this PyAV build")
    return _CODEC


def frame_value(k: int) -> int:
    """The grey level of global frame ``k`` (adjacent frames differ by 9)."""
    return 20 + (k * 9) % 210


def make_frame(k: int, h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), frame_value(k), np.uint8)


def encode_mp4(path: Path, frames: Sequence[np.ndarray], fps: int, codec: str | None = None, probe: bool = False) -> str:
    import av

    codec = codec or pick_codec()
    if probe:
        import io

        buf = io.BytesIO()
        container = av.open(buf, mode="w", format="mp4")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(path), mode="w")
    h, w = frames[0].shape[:2]
    opts = {"crf": "18"} if codec in ("h264", "libx264", "libaom-av1") else {"preset": "12", "crf": "20"} \
        if codec == "libsvtav1" else {}
    if codec == "libaom-av1":
        opts.update({"cpu-used": "8"})
    stream = container.add_stream(codec, rate=fps, options=opts)
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.time_base = Fraction(1, fps * 512)
    if codec == "mpeg4":
        stream.bit_rate = 4_000_000
    stream.codec_context.gop_size = 5
    for k, arr in enumerate(frames):
        f = av.VideoFrame.from_ndarray(arr, format="rgb24")
        f.pts = k * 512
        f.time_base = Fraction(1, fps * 512)
        for pkt in stream.encode(f):
            container.mux(pkt)
    for pkt in stream.encode():
        container.mux(pkt)
    container.close()
    return codec


def _feature(dtype: str, shape: list[int], names=None) -> dict:
    return {"dtype": dtype, "shape": shape, "names": names}


def _video_feature(h: int, w: int, fps: int, codec: str) -> dict:
    return {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channel"],
            "info": {"video.height": h, "video.width": w, "video.codec": codec, "video.pix_fmt": "yuv420p",
                     "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False}}


def episode_arrays(idx: int, length: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed * 1000 + idx)
    state = rng.uniform(-90, 90, (length, dim)).astype(np.float32)
    action = rng.uniform(-90, 90, (length, dim)).astype(np.float32)
    return state, action


def write_v21(root: Path, lengths: Sequence[int] = (6, 8), *, fps: int = 10, hw: tuple[int, int] = (64, 64),
              cameras: Sequence[str] = ("observation.images.front",), state_names: Sequence[str] | None = None,
              robot_type: str = "synthetic", tasks: Sequence[str] = ("pick the cube",), start_index: int = 0,
              declared_episodes: int | None = None, image_camera: str | None = None, scalar_in_list: bool = False,
              extra_column: bool = False, version: str = "v2.1", reward_done: bool = False) -> dict:
    """Write a v2.x dataset; returns ``{"episodes": {idx: {"state", "action", "timestamp", "frames"}}}``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    h, w = hw
    names = list(state_names or [f"j{i}" for i in range(4)])
    dim = len(names)
    codec = pick_codec()
    features = {"observation.state": _feature("float32", [dim], names),
                "action": _feature("float32", [dim], names)}
    for c in cameras:
        features[c] = _video_feature(h, w, fps, codec)
    if image_camera:
        features[image_camera] = {"dtype": "image", "shape": [h, w, 3], "names": ["height", "width", "channel"]}
    if reward_done:
        features["next.reward"] = _feature("float32", [1])
        features["next.done"] = _feature("bool", [1])
    for k in ("timestamp",):
        features[k] = _feature("float32", [1])
    for k in ("frame_index", "episode_index", "index", "task_index"):
        features[k] = _feature("int64", [1])
    n_eps = len(lengths)
    info = {"codebase_version": version, "robot_type": robot_type,
            "total_episodes": declared_episodes or n_eps, "total_frames": int(sum(lengths)),
            "total_tasks": len(tasks), "total_videos": n_eps * len(cameras), "total_chunks": 1, "chunks_size": 1000,
            "fps": fps, "splits": {"train": f"0:{n_eps}"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": features}
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    (meta / "tasks.jsonl").write_text("".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks)))
    out: dict = {"episodes": {}, "codec": codec, "info": info}
    lines = []
    gidx = 0
    for j, length in enumerate(lengths):
        idx = start_index + j
        state, action = episode_arrays(idx, length, dim)
        ts = (np.arange(length) / fps).astype(np.float32)
        task_index = j % len(tasks)
        cols = {"observation.state": pa.array(list(state), pa.list_(pa.float32(), dim)),
                "action": pa.array(list(action), pa.list_(pa.float32(), dim))}
        if image_camera:
            import io

            from PIL import Image

            pngs = []
            for k in range(length):
                b = io.BytesIO()
                Image.fromarray(make_frame(k, h, w)).save(b, format="PNG")
                pngs.append({"bytes": b.getvalue(), "path": f"frame_{k:06d}.png"})
            cols[image_camera] = pa.array(pngs, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        if scalar_in_list:
            cols["timestamp"] = pa.array([[float(t)] for t in ts], pa.list_(pa.float32()))
        else:
            cols["timestamp"] = pa.array(ts, pa.float32())
        cols["frame_index"] = pa.array(np.arange(length), pa.int64())
        cols["episode_index"] = pa.array(np.full(length, idx), pa.int64())
        cols["index"] = pa.array(np.arange(gidx, gidx + length), pa.int64())
        cols["task_index"] = pa.array(np.full(length, task_index), pa.int64())
        if reward_done:
            cols["next.reward"] = pa.array(np.arange(length) * 0.5, pa.float32())
            cols["next.done"] = pa.array(np.arange(length) == length - 1, pa.bool_())
        if extra_column:
            cols["mystery"] = pa.array(np.zeros(length), pa.float64())
        gidx += length
        p = root / "data" / "chunk-000" / f"episode_{idx:06d}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), p)
        for c in cameras:
            encode_mp4(root / "videos" / "chunk-000" / c / f"episode_{idx:06d}.mp4",
                       [make_frame(k, h, w) for k in range(length)], fps, codec)
        lines.append({"episode_index": idx, "tasks": [tasks[task_index]], "length": length})
        out["episodes"][idx] = {"state": state, "action": action, "timestamp": ts,
                                "frames": [frame_value(k) for k in range(length)], "task": tasks[task_index]}
    (meta / "episodes.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (meta / "episodes_stats.jsonl").write_text("".join(json.dumps({"episode_index": x["episode_index"], "stats": {}}) + "\n"
                                                       for x in lines))
    return out


def write_v30(root: Path, lengths: Sequence[int] = (5, 7, 4, 6), *, fps: int = 10, hw: tuple[int, int] = (64, 64),
              cameras: Sequence[str] = ("observation.images.top", "observation.images.wrist"),
              data_split: Sequence[int] = (3, 1), video_split: dict[str, Sequence[int]] | None = None,
              tasks: Sequence[str] = ("stack the blocks", "default"), robot_type: str = "synthetic",
              dim: int = 3) -> dict:
    """Write a v3.0 dataset: ``data_split`` episodes per data file, ``video_split[cam]`` episodes
    per mp4 of that camera (default: one file per camera holding 1, then the rest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    h, w = hw
    codec = pick_codec()
    names = [f"m{i}" for i in range(dim)]
    video_split = video_split or {c: ([1, len(lengths) - 1] if i == 0 else [2, len(lengths) - 2])
                                  for i, c in enumerate(cameras)}
    assert sum(data_split) == len(lengths) and all(sum(v) == len(lengths) for v in video_split.values())
    features = {"observation.state": _feature("float32", [dim], {"motors": names}),
                "action": _feature("float32", [dim], {"motors": names})}
    for c in cameras:
        features[c] = _video_feature(h, w, fps, codec)
    features["timestamp"] = _feature("float32", [1])
    for k in ("frame_index", "episode_index", "index", "task_index"):
        features[k] = _feature("int64", [1])
    info = {"codebase_version": "v3.0", "robot_type": robot_type, "total_episodes": len(lengths),
            "total_frames": int(sum(lengths)), "total_tasks": len(tasks), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": fps,
            "splits": {"train": f"0:{len(lengths)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features}
    meta = root / "meta"
    (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    pq.write_table(pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()),
                             "__index_level_0__": pa.array(list(tasks), pa.string())}), meta / "tasks.parquet")
    (meta / "stats.json").write_text("{}")
    # which file holds each episode
    def assign(split):
        res, f = [], 0
        for count in split:
            res += [f] * count
            f += 1
        return res

    data_file = assign(data_split)
    vid_file = {c: assign(video_split[c]) for c in cameras}
    out: dict = {"episodes": {}, "codec": codec, "info": info, "data_file": data_file, "video_file": vid_file}
    rows_by_file: dict[int, list] = {}
    gidx = 0
    ep_rows = []
    starts = np.cumsum([0, *lengths])
    for idx, length in enumerate(lengths):
        state, action = episode_arrays(idx, length, dim, seed=3)
        ts = (np.arange(length) / fps).astype(np.float32)
        ti = idx % len(tasks)
        rows_by_file.setdefault(data_file[idx], []).append((idx, state, action, ts, ti, gidx))
        rec = {"episode_index": idx, "tasks": [tasks[ti]], "length": length,
               "data/chunk_index": 0, "data/file_index": data_file[idx],
               "dataset_from_index": gidx, "dataset_to_index": gidx + length}
        for c in cameras:
            f = vid_file[c][idx]
            first = vid_file[c].index(f)  # first episode in this video file
            offset = int(starts[idx] - starts[first])
            rec[f"videos/{c}/chunk_index"] = 0
            rec[f"videos/{c}/file_index"] = f
            rec[f"videos/{c}/from_timestamp"] = offset / fps
            rec[f"videos/{c}/to_timestamp"] = (offset + length) / fps
        ep_rows.append(rec)
        out["episodes"][idx] = {"state": state, "action": action, "timestamp": ts, "task": tasks[ti],
                                "frames": [frame_value(int(starts[idx]) + k) for k in range(length)]}
        gidx += length
    for f, items in rows_by_file.items():
        cols: dict[str, list] = {k: [] for k in ("observation.state", "action", "timestamp", "frame_index",
                                                 "episode_index", "index", "task_index")}
        for idx, state, action, ts, ti, g0 in items:
            n = len(ts)
            cols["observation.state"] += list(state)
            cols["action"] += list(action)
            cols["timestamp"] += list(ts)
            cols["frame_index"] += list(range(n))
            cols["episode_index"] += [idx] * n
            cols["index"] += list(range(g0, g0 + n))
            cols["task_index"] += [ti] * n
        table = pa.table({"observation.state": pa.array(cols["observation.state"], pa.list_(pa.float32(), dim)),
                          "action": pa.array(cols["action"], pa.list_(pa.float32(), dim)),
                          "timestamp": pa.array(cols["timestamp"], pa.float32()),
                          **{k: pa.array(cols[k], pa.int64()) for k in ("frame_index", "episode_index", "index", "task_index")}})
        p = root / "data" / "chunk-000" / f"file-{f:03d}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, p)
    for c in cameras:
        for f in sorted(set(vid_file[c])):
            eps = [i for i in range(len(lengths)) if vid_file[c][i] == f]
            frames = [make_frame(int(starts[i]) + k, h, w) for i in eps for k in range(lengths[i])]
            encode_mp4(root / "videos" / c / "chunk-000" / f"file-{f:03d}.mp4", frames, fps, codec)
    pq.write_table(pa.Table.from_pylist(ep_rows), meta / "episodes" / "chunk-000" / "file-000.parquet")
    return out


def write_monorepo(root: Path) -> dict:
    """``<contributor>/<dataset>`` sub-datasets: alice/{pick, place} (v2.1) and bob/stack (v3.0)."""
    return {"alice/pick": write_v21(root / "alice" / "pick", (4, 5)),
            "alice/place": write_v21(root / "alice" / "place", (3,), tasks=("place it",)),
            "bob/stack": write_v30(root / "bob" / "stack", (3, 4), data_split=(2,), cameras=("observation.images.top",),
                                   video_split={"observation.images.top": (1, 1)})}


# --------------------------------------------------------------------------- rldskit exports, old and new

_QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def _stats(x: np.ndarray) -> dict[str, list]:
    """LeRobot stats of ``x`` (N, ...) over axis 0 as rldskit exports always wrote them."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}
    for k, q in _QUANTILES.items():
        out[k] = np.quantile(x, q, axis=0)
    return {k: v.tolist() for k, v in out.items()}


def make_old_style_export(new: Path, old: Path) -> None:
    """Rewrite the rldskit LeRobot export ``new`` into ``old`` the way exports were written before
    issue 12: image presence masks as ``observation.images.<cam>_present``, ``rldskit.timestamp.*``
    as absolute float64 seconds, no ``rldskit.timestamp_start`` column (data, features, stats and
    meta/episodes), no ``timestamps`` section, ``source`` as a path string, and 0 as the ``min`` of a
    camera absent from a whole episode. (Checked once against the exporter of commit e8d349e: every
    parquet, stats and info file equal but ``source``, every mp4 byte-identical.)"""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(new, old)
    info = json.loads((old / "meta" / "info.json").read_text())
    mapping = info["rldskit"]
    start_key = mapping["timestamps"]["start_column"]
    rename, offsets = {}, []
    for e in mapping["columns"]:
        if e.get("mask_of"):
            rename[e["key"]] = e.pop("mask_of") + "_present"
            e["key"] = rename[e["key"]]
        if e.pop("encoding", None) == "offset":
            offsets.append(e["key"])
    del mapping["timestamps"]
    mapping["source"] = str(Path(new).absolute())
    info["features"] = {rename.get(k, k): v for k, v in info["features"].items() if k != start_key}
    (old / "meta" / "info.json").write_text(json.dumps(info, indent=2))

    absolute: dict[str, list[np.ndarray]] = {k: [] for k in offsets}
    per_episode: dict[int, dict[str, np.ndarray]] = {}
    for f in sorted((old / "data").glob("chunk-*/file-*.parquet")):
        t = pq.read_table(f)
        start = t.column(start_key).to_numpy().astype(np.float64)
        ep = t.column("episode_index").to_numpy()
        cols, fields = [], []
        for field in t.schema:
            if field.name == start_key:
                continue
            col = t.column(field.name)
            if field.name in offsets:
                off = col.to_numpy()
                v = np.where(np.isfinite(off) & (start != 0), start + off, off)
                absolute[field.name].append(v)
                for i in np.unique(ep):
                    per_episode.setdefault(int(i), {})[field.name] = v[ep == i]
                col = pa.array(v, pa.float64())
            fields.append(pa.field(rename.get(field.name, field.name), field.type))
            cols.append(col)
        pq.write_table(pa.Table.from_arrays(cols, schema=pa.schema(fields)), f)

    stats = json.loads((old / "meta" / "stats.json").read_text())
    stats = {rename.get(k, k): v for k, v in stats.items() if k != start_key}
    for k in offsets:
        stats[k] = _stats(np.concatenate(absolute[k]))
    (old / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))

    for f in sorted((old / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        rows = pq.read_table(f).to_pylist()
        new_rows = []
        for r in rows:
            out = {}
            for k, v in r.items():
                if k == "rldskit/timestamp_start" or k.startswith(f"stats/{start_key}/"):
                    continue
                if k.startswith("stats/"):
                    feat, stat = k[len("stats/"):].rsplit("/", 1)
                    if feat in offsets:
                        v = _stats(per_episode[int(r["episode_index"])][feat])[stat]
                    if stat == "min" and info["features"].get(feat, {}).get("dtype") == "video" \
                            and r[f"stats/{feat}/count"] == [0]:
                        v = np.zeros_like(np.asarray(v, np.float64)).tolist()  # a camera absent all episode: 0
                    k = f"stats/{rename.get(feat, feat)}/{stat}"
                out[k] = v
            new_rows.append(out)
        pq.write_table(pa.Table.from_pylist(new_rows), f)


def dataset_digest(root: Path) -> str:
    """The identity digest of a converted dataset as the LeRobot exporter records it, computed
    here from its definition: sha256 over ``<relative path>\\0<size>\\0<sha256>\\n`` lines, in
    path order, of the metadata files when ``manifest.json`` exists (it holds every shard's
    sha256), else of every file (hidden ones left out)."""
    import hashlib

    root = Path(root)
    if (root / "manifest.json").is_file():
        files = [root / n for n in ("dataset_info.json", "episodes.parquet", "features.json", "manifest.json",
                           "rldskit_spec.json")
                 if (root / n).is_file()]
    else:
        files = [p for p in root.rglob("*") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    h = hashlib.sha256()
    for p in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        data = p.read_bytes()
        h.update(f"{p.relative_to(root).as_posix()}\0{len(data)}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return h.hexdigest()
