"""Shared helpers for the capture, crash, bad-input and property tests.

A plain module (imported by the tests), not a conftest: it holds tiny spec variants, a
way to record an episode through the real :class:`~rldskit.capture.EpisodeLogger`, an
independent model of the columns a logged episode must read back as, and helpers that
edit the step lines and metadata of a written episode folder in place.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rldskit.capture import EpisodeLogger
from rldskit.episode import LazyFrames
from rldskit.spec import FLAG_KEYS, PRESENT_SUFFIX, EpisodeSpec, Image, Text, load_spec
from rldskit.synth import encode_image, synth_steps

SMALL = (24, 32, 3)


# --------------------------------------------------------------------------- specs


def donkey_spec() -> EpisodeSpec:
    return load_spec("pi5_donkey").with_image_shape("observation/image", SMALL)


def arm_spec() -> EpisodeSpec:
    return (load_spec("so100_arm").with_image_shape("observation/images/front", SMALL)
            .with_image_shape("observation/images/wrist", SMALL))


def xr_spec() -> EpisodeSpec:
    return load_spec("xr_teleop").with_image_shape("observation/image", SMALL)


# --------------------------------------------------------------------------- recording


def plan(spec: EpisodeSpec, steps: int, seed: int = 0, episode_index: int = 0) -> list[dict[str, Any]]:
    """Deterministic ``log_step`` keyword arguments (the synth generators)."""
    return synth_steps(spec, steps, seed, episode_index)


def record(root: Path, spec: EpisodeSpec, steps: Sequence[Mapping[str, Any]], *, terminal: bool = False,
           episode_id: str = "ep0", chunk_steps: int = 1000, compress: bool = False, durability: str = "none",
           final_observation: Mapping[str, Any] | None = None, final_kwargs: Mapping[str, Any] | None = None,
           tags: Sequence[str] = ("origin:test",), metadata: Mapping[str, Any] | None = None) -> Path:
    """Log ``steps`` (``log_step`` kwargs) as one finished episode; returns its folder."""
    logger = EpisodeLogger(root, spec, chunk_steps=chunk_steps, compress=compress, durability=durability,
                           clock=lambda: 1.7e9)
    logger.start_episode(environment_id="bench", control_role="user", tags=tags, episode_id=episode_id,
                         metadata=metadata)
    for kw in steps:
        logger.log_step(**kw)
    return logger.end_episode(terminal, final_observation=final_observation, **dict(final_kwargs or {}))


# --------------------------------------------------------------------------- expected columns


def logged_value(kw: Mapping[str, Any], path: str) -> Any:
    """The value a ``log_step`` call gave for the flat feature ``path`` (None when absent)."""
    parts = path.split("/")
    head = parts[0]
    if head == "observation":
        node: Any = kw.get("observation", {})
        parts = parts[1:]
    elif head == "action":
        node = kw.get("action")
        parts = parts[1:]
    elif head == "reward":
        return kw.get("reward", 0.0)
    elif head == "discount":
        return kw.get("discount", 1.0)
    elif head == "timestamp":
        return (kw.get("timestamps") or {}).get(parts[1])
    else:
        node = kw.get("extras") or {}
    for p in parts:
        if not isinstance(node, Mapping):
            return None
        node = node.get(p)
    return node


def expected_columns(spec: EpisodeSpec, steps: Sequence[Mapping[str, Any]], *, terminal: bool) -> dict[str, Any]:
    """What reading the logged ``steps`` back must give, computed without the library's
    decoding: declared dtypes, placeholders and ``*_present`` masks for absent optional
    signals, encoded bytes for images given as bytes (``None`` where given as arrays), flags
    derived from the position and ``terminal``."""
    T = len(steps)
    out: dict[str, Any] = {}
    leaves = spec.step_leaves
    for path, leaf in leaves.items():
        if path in FLAG_KEYS:
            continue
        base = path[: -len(PRESENT_SUFFIX)]
        if path.endswith(PRESENT_SUFFIX) and getattr(leaves.get(base), "optional", False):
            out[path] = np.array([logged_value(kw, base) is not None for kw in steps], dtype=bool)
            continue
        values = [logged_value(kw, path) for kw in steps]
        if isinstance(leaf, Image):
            col = np.empty(T, dtype=object)
            for i, v in enumerate(values):
                col[i] = b"" if v is None else (bytes(v) if isinstance(v, (bytes, bytearray)) else None)
            out[path] = col
        elif isinstance(leaf, Text):
            col = np.empty(T, dtype=object)
            for i, v in enumerate(values):
                col[i] = leaf.fill if v is None else v
            out[path] = col
        else:
            ph = leaf.placeholder()
            out[path] = np.stack([ph if v is None else np.asarray(v).astype(leaf.np_dtype) for v in values]) if T else \
                np.zeros((0, *leaf.shape), dtype=leaf.np_dtype)
    first = np.zeros(T, dtype=bool)
    last = np.zeros(T, dtype=bool)
    if T:
        first[0] = last[-1] = True
    out["is_first"], out["is_last"], out["is_terminal"] = first, last, last & terminal
    return out


def materialise(col: Any) -> np.ndarray:
    return col.to_numpy() if isinstance(col, LazyFrames) else np.asarray(col)


def assert_columns_equal(steps: Mapping[str, Any], expected: Mapping[str, Any], *, prefix_len: int | None = None) -> None:
    """Every expected column is present with the exact dtype and values (``None`` image
    entries are skipped: they were given as arrays). ``prefix_len`` compares only that many
    leading expected steps (a recovered prefix)."""
    assert set(steps) == set(expected), f"columns differ: {sorted(set(steps) ^ set(expected))}"
    for k, want in expected.items():
        got = materialise(steps[k])
        if prefix_len is not None:
            want = want[:prefix_len]
        assert len(got) == len(want), f"{k}: {len(got)} steps, expected {len(want)}"
        if want.dtype == object:
            for i, (g, w) in enumerate(zip(got, want)):
                if w is None:
                    assert isinstance(g, bytes) and g, f"{k} step {i}: no frame bytes"
                    continue
                assert type(g) is type(w) and g == w, f"{k} step {i}: {g!r:.80} != {w!r:.80}"
        else:
            assert got.dtype == want.dtype, f"{k}: dtype {got.dtype}, expected {want.dtype}"
            assert got.shape == want.shape, f"{k}: shape {got.shape}, expected {want.shape}"
            assert np.array_equal(got, want), f"{k}: values differ at steps {np.flatnonzero(~_rows_equal(got, want))[:5]}"


def _rows_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    eq = a == b
    return eq.reshape(len(eq), -1).all(axis=1) if eq.ndim > 1 else eq


# --------------------------------------------------------------------------- editing written episodes


def chunk_files(ep: Path) -> list[Path]:
    return sorted(p for p in (ep / "steps").iterdir() if p.name.endswith((".jsonl", ".jsonl.zst")))


def _chunk_bytes(p: Path) -> bytes:
    data = p.read_bytes()
    if p.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def read_lines(ep: Path) -> list[dict[str, Any]]:
    """Every step line of an episode folder, parsed, in order."""
    out = []
    for f in chunk_files(ep):
        out.extend(json.loads(x) for x in _chunk_bytes(f).split(b"\n") if x)
    return out


def write_lines(ep: Path, lines: Sequence[Any]) -> None:
    """Rewrite the step lines in place, keeping the chunk files and their sizes. A line
    may be a dict (JSON-encoded, NaN allowed) or raw ``bytes`` (written as they are)."""
    files = chunk_files(ep)
    counts = [sum(1 for x in _chunk_bytes(f).split(b"\n") if x) for f in files]
    assert sum(counts) == len(lines), (counts, len(lines))
    pos = 0
    for f, n in zip(files, counts):
        data = b"".join(line_bytes(x) for x in lines[pos:pos + n])
        pos += n
        if f.name.endswith(".zst"):
            import zstandard

            data = zstandard.ZstdCompressor().compress(data)
        f.write_bytes(data)


def line_bytes(x: Any) -> bytes:
    if isinstance(x, bytes):
        return x if x.endswith(b"\n") else x + b"\n"
    return (json.dumps(x, ensure_ascii=False) + "\n").encode()


def edit_lines(ep: Path, fn: Callable[[list[dict[str, Any]]], Any]) -> None:
    """Apply ``fn`` to the list of parsed step lines (in place; its return value is ignored)."""
    lines = read_lines(ep)
    fn(lines)
    write_lines(ep, lines)


def read_meta(ep: Path) -> dict[str, Any]:
    return json.loads((ep / "metadata.json").read_text())


def edit_meta(ep: Path, fn: Callable[[dict[str, Any]], Any]) -> None:
    """Apply ``fn`` to the parsed metadata (in place; its return value is ignored)."""
    meta = read_meta(ep)
    fn(meta)
    (ep / "metadata.json").write_text(json.dumps(meta))


def set_path(line: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split("/")
    node = line
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def get_path(line: Mapping[str, Any], path: str) -> Any:
    node: Any = line
    for p in path.split("/"):
        node = node[p]
    return node


def del_path(line: dict[str, Any], path: str) -> None:
    *parents, last = path.split("/")
    node = line
    for p in parents:
        node = node[p]
    del node[last]


# --------------------------------------------------------------------------- single-file episodes


def inline_frames(ep: Path, lines: list[dict[str, Any]], spec: EpisodeSpec) -> list[dict[str, Any]]:
    """Replace frame paths in step lines by ``{"$base64": ...}`` of the frame bytes."""
    for line in lines:
        for path in spec.image_paths:
            try:
                v = get_path(line, path)
            except (KeyError, TypeError):
                continue
            if isinstance(v, str):
                set_path(line, path, {"$base64": base64.b64encode((ep / v).read_bytes()).decode()})
    return lines


def with_flags(lines: list[dict[str, Any]], terminal: bool) -> list[dict[str, Any]]:
    T = len(lines)
    for i, line in enumerate(lines):
        line["is_first"] = i == 0
        line["is_last"] = i == T - 1
        line["is_terminal"] = bool(terminal and i == T - 1)
    return lines


def write_single_file(path: Path, metadata: Mapping[str, Any], lines: Sequence[Mapping[str, Any]], *,
                      end: Mapping[str, Any] | None = None) -> Path:
    """Write a single-file episode: ``.json``, ``.jsonl`` or ``.jsonl.zst`` by ``path``'s name."""
    path = Path(path)
    if path.name.endswith(".json"):
        obj: dict[str, Any] = {"metadata": dict(metadata), "steps": list(lines)}
        if end is not None:
            obj["end"] = dict(end)
        path.write_text(json.dumps(obj, ensure_ascii=False))
        return path
    rows = [{"metadata": dict(metadata)}, *lines] + ([{"end": dict(end)}] if end is not None else [])
    data = b"".join(line_bytes(r) for r in rows)
    if path.name.endswith(".zst"):
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- images


def png_bytes(shape: tuple[int, int, int] = SMALL, value: int = 128) -> bytes:
    return encode_image(np.full(shape, value, dtype=np.uint8), "png")


def jpeg_bytes(shape: tuple[int, int, int] = SMALL, value: int = 128) -> bytes:
    return encode_image(np.full(shape, value, dtype=np.uint8), "jpeg")


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as img:
        return np.asarray(img)


# --------------------------------------------------------------------------- reports


def codes(report) -> set[str]:
    return {i.code for i in report.issues}


def find(report_or_issues, code: str, *, step: int | None = None, field: str | None = None):
    """Issues with ``code`` (and ``step``/``field`` when given)."""
    issues = getattr(report_or_issues, "issues", report_or_issues)
    return [i for i in issues if i.code == code and (step is None or i.step == step)
            and (field is None or i.field == field)]


def describe(report) -> str:
    return "\n".join(f"{i.severity} {i.code} step={i.step} field={i.field}: {i.message}" for i in report.issues)


def finite(x: float) -> bool:
    return math.isfinite(x)


# --------------------------------------------------------------------------- crash worker


def crash_step(seed: int, i: int) -> dict[str, Any]:
    """Step ``i`` of the crash worker's endless episode (pi5_donkey, small frames): a pure
    function of ``(seed, i)``, so a test can regenerate any prefix of what was logged."""
    rng = np.random.default_rng([seed, i])
    img = np.repeat(np.repeat(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), 4, axis=0), 4, axis=1)
    t = 1.7e9 + 0.05 * i
    return {
        "observation": {"image": encode_image(img, "jpeg")},
        "action": rng.uniform(-1, 1, 2).astype(np.float32),
        "reward": float(rng.normal()),
        "discount": 1.0,
        "timestamps": {"control": t, "camera": t - 0.002},
        "extras": {"control_mode": ("user", "pilot")[i % 2],
                   "policy_action": None if i % 3 == 0 else rng.uniform(-1, 1, 2).astype(np.float32)},
    }


def crash_worker(root: str, seed: int, chunk_steps: int, compress: bool, durability: str, progress: str) -> None:
    """Log steps until killed. After each ``log_step`` returns, append its index to
    ``progress`` (one ``write``), so the test knows which steps were certainly logged."""
    import os

    logger = EpisodeLogger(root, donkey_spec(), chunk_steps=chunk_steps, compress=compress, durability=durability,
                           clock=lambda: 1.7e9)
    logger.start_episode(environment_id="crash", control_role="user", tags=["origin:crash"], episode_id="crash")
    fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, b"started\n")
    i = 0
    while i < 1_000_000:
        logger.log_step(**crash_step(seed, i))
        os.write(fd, b"%d\n" % i)
        i += 1
    logger.end_episode(terminal=False)
    os.write(fd, b"ended\n")


if __name__ == "__main__":
    import sys

    a = sys.argv[1:]
    crash_worker(a[0], int(a[1]), int(a[2]), a[3] == "1", a[4], a[5])
