"""The on-robot capture layout, and single-file JSON episodes: bytes in, columns out.

Layout of one episode folder (written by :class:`EpisodeDirWriter`, driven by
:class:`rldskit.capture.EpisodeLogger`)::

    <episode>/metadata.json            episode metadata; "status": "recording" until ended,
                                       then "complete" with an "end" record (num_steps, terminal)
    <episode>/steps/000000.jsonl       one JSON object per line, one line per step; a new chunk
    <episode>/steps/001000.jsonl.zst   starts every ``chunk_steps`` (name = index of its first
                                       step). Closed chunks may be zstd-compressed.
    <episode>/frames/<camera>/000000.jpg   one encoded frame per step and camera

A step line nests like the spec's step tree: ``{"observation": {"image":
"frames/front/000000.jpg", "speed": 0.4}, "action": [0.1, 0.3], "reward": 0.0, "discount": 1.0,
"timestamp": {"control": 12.5, "camera": 12.498}, "control_mode": "user"}``. Images are frame
paths relative to the episode folder (or ``{"$base64": ...}``); absent optional signals are
``null``. RLDS flags are not written: they follow from the step's position and the end record.

Crash safety: frames are written temp-then-rename *before* the step line that names them; a
step line is one ``write(2)`` on an ``O_APPEND`` descriptor; ``metadata.json`` is replaced
atomically. So a ``kill -9`` at any instant loses at most the step being written (a torn last
line), and an unfinished episode is recognisable (``status: recording``). Readers refuse it
unless asked to ``recover``, which keeps every complete step and marks the episode truncated.

Single-file episodes: ``*.json`` holding ``{"metadata": {...}, "steps": [...]}``, and
``*.jsonl`` / ``*.jsonl.zst`` whose first line is ``{"metadata": {...}}``, then one step per
line, optionally ending with ``{"end": {"terminal": bool}}``. Their steps may carry the RLDS
flags explicitly.

This module knows bytes, not policy: decoding never raises on bad data; it returns columns
plus :class:`~rldskit.issues.Issue` records, and :func:`read_episode` turns errors into an
:class:`EpisodeError`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rldskit._io import TMP_SUFFIX, atomic_write_bytes, fsync_dir, write_all
from rldskit.episode import Episode, LazyFrames, rlds_flags
from rldskit.issues import ERROR, Issue, issue
from rldskit.spec import FLAG_KEYS, PRESENT_SUFFIX, EpisodeSpec, Image, Text

FORMAT = "rldskit.capture/1"
METADATA_FILE = "metadata.json"
STEPS_DIR = "steps"
FRAMES_DIR = "frames"
_CHUNK_RE = re.compile(r"^(\d{6,})\.jsonl(\.zst)?$")
MAX_ISSUES_PER_FIELD = 5

__all__ = [
    "EpisodeDirWriter", "EpisodeError", "ScanResult", "scan_episode", "read_episode", "recover_episode",
    "find_episodes", "is_episode_path", "decode_steps", "step_to_json_line", "FORMAT",
]


class EpisodeError(ValueError):
    """An episode could not be read. ``issues`` holds every error found."""

    def __init__(self, path: str, issues: Sequence[Issue]):
        self.path = path
        self.issues = list(issues)
        errs = [i for i in self.issues if i.severity == ERROR] or self.issues
        lines = [f"{path}: " + _describe(i) for i in errs[:5]]
        more = f"\n  ... and {len(errs) - 5} more" if len(errs) > 5 else ""
        super().__init__("\n".join(lines) + more)


def _describe(i: Issue) -> str:
    where = "".join([f" step {i.step}" if i.step is not None else "", f" field {i.field}" if i.field else ""])
    return f"[{i.code}]{where}: {i.message}"


# =========================================================================== writing


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (bytes, bytearray)):
        return {"$base64": base64.b64encode(o).decode("ascii")}
    raise TypeError(f"cannot write a {type(o).__name__} into a step line")


_ENCODER = json.JSONEncoder(default=_json_default, ensure_ascii=False, separators=(",", ":"))


def step_to_json_line(step: Mapping[str, Any]) -> bytes:
    """One nested step dict as a UTF-8 JSON line ending in ``\\n`` (numpy values converted)."""
    return (_ENCODER.encode(step) + "\n").encode("utf-8")


def chunk_name(first_step: int, compressed: bool = False) -> str:
    return f"{first_step:06d}.jsonl" + (".zst" if compressed else "")


class EpisodeDirWriter:
    """Append-only writer of one episode folder. Low level: no schema policy here.

    ``durability``: ``"step"`` fsyncs every frame and line (power-cut safe per step, slow on
    SD cards); ``"chunk"`` (default) fsyncs when a chunk closes and at the end; ``"none"``
    never fsyncs (still ``kill -9`` safe: every write reaches the kernel before returning).
    """

    def __init__(self, path: str | Path, *, chunk_steps: int = 1000, compress: bool = False,
                 durability: str = "chunk"):
        if durability not in ("step", "chunk", "none"):
            raise ValueError(f"durability must be 'step', 'chunk' or 'none', got {durability!r}")
        if chunk_steps < 1:
            raise ValueError("chunk_steps must be >= 1")
        self.path = Path(path)
        self.chunk_steps = chunk_steps
        self.compress = compress
        self.durability = durability
        self.num_steps = 0
        self._fd: int | None = None
        self._chunk_first = 0
        self._frame_dirs: set[str] = set()
        self.path.mkdir(parents=True, exist_ok=False)
        (self.path / STEPS_DIR).mkdir()
        (self.path / FRAMES_DIR).mkdir()
        if durability != "none":
            fsync_dir(self.path.parent)

    def write_metadata(self, metadata: Mapping[str, Any]) -> None:
        data = json.dumps(metadata, default=_json_default, ensure_ascii=False, indent=1).encode()
        atomic_write_bytes(self.path / METADATA_FILE, data, durable=self.durability != "none")

    def write_frame(self, camera: str, data: bytes, extension: str) -> str:
        """Write frame ``data`` for the *next* step; returns its path relative to the folder."""
        d = self.path / FRAMES_DIR / camera
        if camera not in self._frame_dirs:
            d.mkdir(exist_ok=True)
            self._frame_dirs.add(camera)
        rel = f"{FRAMES_DIR}/{camera}/{self.num_steps:06d}{extension}"
        atomic_write_bytes(self.path / rel, data, durable=self.durability == "step")
        return rel

    def append_step(self, step: Mapping[str, Any]) -> None:
        """Append one step line (a single write). Rotates chunks every ``chunk_steps``."""
        line = step_to_json_line(step)
        if self._fd is None:
            self._chunk_first = self.num_steps
            self._fd = os.open(self.path / STEPS_DIR / chunk_name(self._chunk_first),
                               os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        write_all(self._fd, line)
        if self.durability == "step":
            os.fsync(self._fd)
        self.num_steps += 1
        if self.num_steps - self._chunk_first >= self.chunk_steps:
            self._close_chunk()

    def _close_chunk(self) -> None:
        if self._fd is None:
            return
        if self.durability != "none":
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        if self.compress:
            compress_chunk(self.path / STEPS_DIR / chunk_name(self._chunk_first), durable=self.durability != "none")

    def close(self, metadata: Mapping[str, Any]) -> None:
        """Close the last chunk and write the final metadata (with its end record)."""
        self._close_chunk()
        if self.durability != "none":
            for cam in self._frame_dirs:
                fsync_dir(self.path / FRAMES_DIR / cam)
            fsync_dir(self.path / STEPS_DIR)
        self.write_metadata(metadata)

    def abort(self) -> None:
        """Close the descriptor without finishing (the folder stays 'recording')."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def compress_chunk(plain: Path, *, durable: bool = True) -> Path:
    """zstd-compress a closed ``.jsonl`` chunk to ``.jsonl.zst`` atomically, then remove it.
    A crash in between leaves both; readers then prefer the (complete) ``.zst``."""
    import zstandard

    target = plain.with_name(plain.name + ".zst")
    atomic_write_bytes(target, zstandard.ZstdCompressor(level=3).compress(plain.read_bytes()), durable=durable)
    plain.unlink()
    return target


# =========================================================================== reading


@dataclasses.dataclass
class ScanResult:
    """What a lenient read of one episode found. ``episode`` is ``None`` when nothing usable."""

    path: str
    episode: Episode | None
    issues: list[Issue]
    status: str  # complete | recording | recovered | file
    schema_ref: dict[str, Any] | None = None  # {"name", "version"} recorded in the metadata

    @property
    def ok(self) -> bool:
        return self.episode is not None and not any(i.severity == ERROR for i in self.issues)


def is_episode_path(p: Path) -> bool:
    if p.is_dir():
        return (p / METADATA_FILE).is_file() or (p / STEPS_DIR).is_dir()
    return p.is_file() and (p.name.endswith((".jsonl", ".jsonl.zst")) or p.suffix == ".json") and p.name != "schema.json"


def find_episodes(paths: Iterable[str | Path]) -> tuple[list[Path], list[Issue]]:
    """Expand paths into episode paths (folders with metadata.json or steps/, and single-file
    episodes), walking sub-folders; sorted, de-duplicated. Returns ``(episodes, issues)``."""
    found: list[Path] = []
    problems: list[Issue] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            problems.append(issue("PATH_NOT_FOUND", str(p), f"{p} does not exist"))
            continue
        if is_episode_path(p):
            found.append(p)
            continue
        if p.is_file():
            problems.append(issue("NOT_AN_EPISODE", str(p), "expected an episode folder, *.json, *.jsonl or *.jsonl.zst"))
            continue
        before = len(found)
        for root, dirs, files in os.walk(p):
            rp = Path(root)
            if rp != p and is_episode_path(rp):
                found.append(rp)
                dirs[:] = []
                continue
            dirs.sort()
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for f in sorted(files):
                fp = rp / f
                if not f.startswith(".") and is_episode_path(fp):
                    found.append(fp)
        if len(found) == before:
            problems.append(issue("NO_EPISODES", str(p), f"no episodes under {p}"))
    uniq = sorted(dict.fromkeys(x.resolve() for x in found))
    return uniq, problems


def _read_text_lines(path: Path, label: str, issues: list[Issue]) -> list[str] | list[bytes] | None:
    try:
        data = path.read_bytes()
        if path.name.endswith(".zst"):
            import zstandard

            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    except Exception as e:  # noqa: BLE001 - any I/O or zstd failure is reported, not raised
        issues.append(issue("READ_ERROR", label, f"cannot read {path.name}: {type(e).__name__}: {e}"))
        return None
    try:
        return data.decode("utf-8").split("\n")  # str lines: json.loads skips encoding detection
    except UnicodeDecodeError:
        return data.split(b"\n")  # parsed line by line; the bad line is reported as JSON_INVALID


def _parse_lines(raw: list[bytes], first_step: int, label: str, fname: str, is_last_chunk: bool,
                 issues: list[Issue]) -> tuple[list[Any], bool]:
    """Parse JSON lines. Returns (records, torn) where ``torn`` marks a cut-off last line."""
    torn = False
    if raw and raw[-1] in ("", b""):
        raw = raw[:-1]
    elif raw:  # no trailing newline: the last line was never completed
        torn = True
    loads = json.loads
    try:
        recs = [loads(x) for x in raw]
        bad = None
    except (ValueError, UnicodeDecodeError):
        recs, bad = [], None
        for n, x in enumerate(raw):
            try:
                recs.append(loads(x))
            except (ValueError, UnicodeDecodeError) as e:
                bad = n
                if n == len(raw) - 1 and is_last_chunk:
                    torn = True
                else:
                    issues.append(issue("JSON_INVALID", label, f"{fname} line {n + 1}: not JSON ({e})",
                                        step=first_step + n))
                break
    if torn and recs and len(recs) == len(raw):
        # the last line parsed but had no newline: it may be complete JSON cut at a boundary; keep it
        torn = False
    if bad is None:
        for n, r in enumerate(recs):
            if not isinstance(r, dict):
                issues.append(issue("JSON_INVALID", label, f"{fname} line {n + 1}: a step is a JSON object, got {type(r).__name__}",
                                    step=first_step + n))
                recs = recs[:n]
                break
    return recs, torn


def scan_episode(path: str | Path, spec: EpisodeSpec | None = None, *, recover: bool = False,
                 load_frames: bool = False) -> ScanResult:
    """Read one episode leniently: never raises on bad data. ``spec`` defaults to the schema
    recorded beside it (``schema.json`` in a parent folder) or named in its metadata.
    ``recover=True`` salvages an unfinished capture (complete steps, marked truncated).
    ``load_frames=True`` reads frame bytes into memory instead of :class:`LazyFrames`."""
    p = Path(path)
    label = str(p)
    if p.is_dir():
        return _scan_dir(p, spec, recover, load_frames, label)
    return _scan_file(p, spec, label)


def read_episode(path: str | Path, spec: EpisodeSpec | None = None, *, recover: bool = False,
                 load_frames: bool = False) -> Episode:
    """Read one episode strictly: raises :class:`EpisodeError` naming file, step and field."""
    res = scan_episode(path, spec, recover=recover, load_frames=load_frames)
    if not res.ok:
        raise EpisodeError(res.path, res.issues)
    return res.episode  # type: ignore[return-value]


def _resolve_spec(spec: EpisodeSpec | None, p: Path, schema_ref: Any, label: str, issues: list[Issue]) -> EpisodeSpec | None:
    from rldskit.spec import SpecError, load_spec

    if spec is not None:
        return spec
    for parent in [p.parent, *p.parent.parents][:3]:
        if (parent / "schema.json").is_file():
            try:
                return _load_spec_cached(parent / "schema.json")
            except SpecError as e:
                issues.append(issue("METADATA_INVALID", label, f"schema.json beside the episode is invalid: {e}"))
                return None
    if isinstance(schema_ref, dict) and isinstance(schema_ref.get("name"), str):
        try:
            ver = str(schema_ref.get("version", "1"))
            return load_spec(f"{schema_ref['name']}.v{ver.split('.')[0]}")
        except SpecError as e:
            issues.append(issue("SCHEMA_MISMATCH", label, f"cannot load the schema named in the metadata: {e}"))
            return None
    issues.append(issue("METADATA_INVALID", label, "no schema given (--schema), no schema.json beside the episode and none named in its metadata"))
    return None


_SPEC_CACHE: dict[tuple[str, int, int], EpisodeSpec] = {}


def _load_spec_cached(path: Path) -> EpisodeSpec:
    """``load_spec`` for a ``schema.json`` shared by many episodes, re-read when it changes."""
    from rldskit.spec import load_spec

    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _SPEC_CACHE:
        _SPEC_CACHE[key] = load_spec(path)
    return _SPEC_CACHE[key]


def _load_metadata(p: Path, label: str, issues: list[Issue]) -> dict[str, Any] | None:
    f = p / METADATA_FILE
    if not f.is_file():
        issues.append(issue("METADATA_MISSING", label, f"{METADATA_FILE} is absent (expected the file EpisodeLogger writes at start_episode)"))
        return None
    try:
        meta = json.loads(f.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        issues.append(issue("METADATA_INVALID", label, f"{METADATA_FILE} is not valid JSON: {e}"))
        return None
    if not isinstance(meta, dict):
        issues.append(issue("METADATA_INVALID", label, f"{METADATA_FILE} must hold a JSON object, got {type(meta).__name__}"))
        return None
    return meta


def _list_chunks(steps_dir: Path, label: str, issues: list[Issue]) -> list[tuple[int, Path]]:
    chunks: dict[int, Path] = {}
    try:
        names = sorted(os.listdir(steps_dir))
    except OSError as e:
        issues.append(issue("READ_ERROR", label, f"cannot list {STEPS_DIR}/: {e}"))
        return []
    for name in names:
        m = _CHUNK_RE.match(name)
        if not m:
            continue
        first = int(m.group(1))
        if first in chunks and chunks[first].name.endswith(".zst"):
            continue  # crash between compress and unlink: the .zst is complete, the .jsonl a duplicate
        chunks[first] = steps_dir / name
    return sorted(chunks.items())


def _scan_dir(p: Path, spec: EpisodeSpec | None, recover: bool, load_frames: bool, label: str) -> ScanResult:
    issues: list[Issue] = []
    meta = _load_metadata(p, label, issues)
    if meta is None:
        return ScanResult(label, None, issues, "unknown")
    status = meta.get("status", "complete")
    spec = _resolve_spec(spec, p, meta.get("schema"), label, issues)
    if spec is None:
        return ScanResult(label, None, issues, status, meta.get("schema"))
    records: list[Any] = []
    expected = 0
    chunks = _list_chunks(p / STEPS_DIR, label, issues)
    truncated_at: int | None = None
    for n, (first, f) in enumerate(chunks):
        if first != expected:
            issues.append(issue("STEPS_GAP", label, f"{STEPS_DIR}/{f.name} starts at step {first}, expected {expected} (a chunk file is missing)",
                                step=expected))
            truncated_at = expected
            break
        raw = _read_text_lines(f, label, issues)
        if raw is None:
            truncated_at = expected
            break
        n_before = len(issues)
        recs, torn = _parse_lines(raw, first, label, f"{STEPS_DIR}/{f.name}", n == len(chunks) - 1, issues)
        records.extend(recs)
        expected += len(recs)
        if torn:
            if status == "recording":
                truncated_at = expected  # the step in flight when the logger died
            else:
                issues.append(issue("JSON_TRUNCATED", label, f"{STEPS_DIR}/{f.name}: last line is cut off after {len(recs)} complete steps",
                                    step=expected))
            break
        if len(issues) > n_before:
            truncated_at = expected
            break
    end = meta.get("end") if isinstance(meta.get("end"), dict) else None
    terminal: bool | None = None
    if status == "recording":
        if not recover:
            issues.append(issue("EPISODE_UNFINISHED", label,
                                f"status is 'recording': the logger never ended this episode ({len(records)} complete steps); "
                                "run `rldskit recover` to keep them and mark it truncated"))
        terminal = False
        status = "recovered" if recover else status
    elif end is not None:
        terminal = end.get("terminal")
        if not isinstance(terminal, bool):
            issues.append(issue("METADATA_INVALID", label, f"end.terminal must be true or false, got {terminal!r}"))
            terminal = False
        n_end = end.get("num_steps")
        if isinstance(n_end, int) and n_end != len(records) and truncated_at is None:
            issues.append(issue("STEP_COUNT_MISMATCH", label, f"metadata says {n_end} steps were logged, found {len(records)}"))
    if recover and truncated_at is not None:
        issues = [i for i in issues if i.code not in ("JSON_INVALID", "JSON_TRUNCATED", "STEPS_GAP", "READ_ERROR", "STEP_COUNT_MISMATCH")]
        terminal = False
        status = "recovered"
    episode, dec_issues = _build_episode(records, meta, spec, p, label, terminal, load_frames)
    issues.extend(dec_issues)
    if episode is not None and status == "recovered" and "recovered" not in episode.metadata.get("tags", []):
        episode.metadata["tags"] = [*episode.metadata.get("tags", []), "recovered"]
    return ScanResult(label, episode, issues, status, meta.get("schema"))


def _scan_file(p: Path, spec: EpisodeSpec | None, label: str) -> ScanResult:
    issues: list[Issue] = []
    name = p.name
    meta: Any = None
    end: Any = None
    if name.endswith((".jsonl", ".jsonl.zst")):
        raw = _read_text_lines(p, label, issues)
        if raw is None:
            return ScanResult(label, None, issues, "file")
        records, torn = _parse_lines(raw, -1, label, name, True, issues)
        if torn:
            issues.append(issue("JSON_TRUNCATED", label, f"{name}: last line is cut off after {len(records)} complete lines"))
        if not records or not isinstance(records[0], dict) or set(records[0]) != {"metadata"}:
            if not any(i.code == "JSON_INVALID" for i in issues):
                issues.append(issue("NOT_AN_EPISODE", label, 'the first line of a .jsonl episode must be {"metadata": {...}}'))
            return ScanResult(label, None, issues, "file")
        meta = records[0]["metadata"]
        steps = records[1:]
        if steps and isinstance(steps[-1], dict) and set(steps[-1]) == {"end"}:
            end = steps[-1]["end"]
            steps = steps[:-1]
        # _parse_lines numbered lines from -1 so that step numbers are right after the metadata line
    else:
        try:
            obj = json.loads(p.read_bytes())
        except (OSError, ValueError, UnicodeDecodeError) as e:
            code = "READ_ERROR" if isinstance(e, OSError) else "JSON_INVALID"
            issues.append(issue(code, label, f"not a JSON episode: {e}"))
            return ScanResult(label, None, issues, "file")
        if not isinstance(obj, dict) or "steps" not in obj or not isinstance(obj["steps"], list):
            issues.append(issue("NOT_AN_EPISODE", label, 'a .json episode is {"metadata": {...}, "steps": [...]}'))
            return ScanResult(label, None, issues, "file")
        meta, steps, end = obj.get("metadata", {}), obj["steps"], obj.get("end")
        for n, r in enumerate(steps):
            if not isinstance(r, dict):
                issues.append(issue("JSON_INVALID", label, f"a step is a JSON object, got {type(r).__name__}", step=n))
                steps = steps[:n]
                break
    if not isinstance(meta, dict):
        issues.append(issue("METADATA_INVALID", label, f"metadata must be a JSON object, got {type(meta).__name__}"))
        meta = {}
    spec = _resolve_spec(spec, p, meta.get("schema"), label, issues)
    if spec is None:
        return ScanResult(label, None, issues, "file", meta.get("schema"))
    terminal: bool | None = None
    if isinstance(end, dict) and isinstance(end.get("terminal"), bool):
        terminal = end["terminal"]
    elif isinstance(meta.get("end"), dict) and isinstance(meta["end"].get("terminal"), bool):
        terminal = meta["end"]["terminal"]
    episode, dec = _build_episode(steps, meta, spec, p.parent, label, terminal, load_frames=True)
    issues.extend(dec)
    return ScanResult(label, episode, issues, "file", meta.get("schema"))


# =========================================================================== decoding

_MISSING = object()


def _get(rec: Any, parts: Sequence[str]) -> Any:
    for k in parts:
        if not isinstance(rec, dict):
            return _MISSING
        rec = rec.get(k, _MISSING)
        if rec is _MISSING:
            return _MISSING
    return rec


def decode_steps(records: Sequence[Any], spec: EpisodeSpec, base_dir: Path, label: str, *,
                 load_frames: bool = False) -> tuple[dict[str, Any], list[Issue]]:
    """Turn parsed step dicts into typed columns for every spec leaf (flags excluded when the
    records do not carry them). Bad values become placeholders and are reported; never raises."""
    issues: list[Issue] = []
    cols: dict[str, Any] = {}
    T = len(records)
    has_flags = T > 0 and isinstance(records[0], dict) and "is_first" in records[0]
    leaves = spec.step_leaves
    for path, leaf in leaves.items():
        if path in FLAG_KEYS and not has_flags:
            continue
        base = path[: -len(PRESENT_SUFFIX)]
        if path.endswith(PRESENT_SUFFIX) and getattr(leaves.get(base), "optional", False):
            continue  # filled when its signal is decoded
        parts = path.split("/")
        try:
            if len(parts) == 1:
                k = parts[0]
                values = [r[k] for r in records]
            elif len(parts) == 2:
                a, b = parts
                values = [r[a][b] for r in records]
            else:
                raise KeyError
        except (KeyError, TypeError):
            values = [_get(r, parts) for r in records]
        optional = getattr(leaf, "optional", False)
        missing = [i for i, v in enumerate(values) if v is _MISSING] if _MISSING in values else []
        if missing and not optional:
            issues.append(issue("FIELD_MISSING", label, f"absent in {len(missing)} of {T} steps (expected {_expect(leaf)})",
                                step=missing[0], field=path))
        present = None
        if optional:
            present = np.array([v is not None and v is not _MISSING for v in values], dtype=bool)
            cols[path + PRESENT_SUFFIX] = present
        if isinstance(leaf, Image):
            cols[path] = _decode_images(values, leaf, spec.camera_name(path), base_dir, label, path, issues, load_frames, present)
        elif isinstance(leaf, Text) or leaf.dtype == "string":
            cols[path] = _decode_strings(values, leaf, label, path, issues)
        else:
            cols[path] = _decode_numeric(values, leaf, label, path, issues, present)
    # undeclared features: report once per key (cheap: look at the first step's keys, then a sample)
    known_top = set(spec.steps)
    for n, r in enumerate(records[:1] + records[-1:]):
        for k in r:
            if k not in known_top:
                issues.append(issue("FIELD_UNEXPECTED", label, f"'{k}' is not declared by {spec.id}; it is ignored", field=k,
                                    step=0 if n == 0 else T - 1))
        for k, node in spec.steps.items():
            sub = r.get(k)
            if isinstance(node, Mapping) and isinstance(sub, dict):
                for kk in sub:
                    if kk not in node and not (kk.endswith(PRESENT_SUFFIX) and kk[: -len(PRESENT_SUFFIX)] in node):
                        issues.append(issue("FIELD_UNEXPECTED", label, f"'{k}/{kk}' is not declared by {spec.id}; it is ignored",
                                            field=f"{k}/{kk}", step=0 if n == 0 else T - 1))
    return cols, _dedupe(issues)


def _dedupe(issues: list[Issue]) -> list[Issue]:
    return list(dict.fromkeys(issues))


def _expect(leaf: Any) -> str:
    if isinstance(leaf, Image):
        return f"a {leaf.encoding} frame path"
    if isinstance(leaf, Text):
        return "a string"
    return f"{leaf.dtype} of shape {list(leaf.shape)}"


_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}


def _decode_numeric(values: list[Any], leaf: Any, label: str, path: str, issues: list[Issue],
                    present: np.ndarray | None) -> np.ndarray:
    T = len(values)
    dtype = leaf.np_dtype
    if present is not None or _MISSING in values:
        ph = leaf.placeholder().tolist()
        values = [ph if (v is None or v is _MISSING) else v for v in values]
    want_shape = leaf.shape
    if leaf.is_static:
        try:
            arr = np.array(values)
            ok = arr.dtype.kind in _KINDS[dtype.kind] and arr.shape == (T, *want_shape)
        except (ValueError, TypeError, OverflowError):
            ok = False
        if ok:
            return _cast(arr, leaf, label, path, issues)
    # slow path: find exactly which steps are wrong, replace them with placeholders
    ph_arr = leaf.placeholder()
    good: list[Any] = []
    bad_type: list[int] = []
    bad_shape: list[int] = []
    for i, v in enumerate(values):
        try:
            a = np.array(v)
        except (ValueError, TypeError, OverflowError):
            bad_shape.append(i)
            good.append(ph_arr)
            continue
        if a.dtype.kind not in _KINDS[dtype.kind]:
            bad_type.append(i)
            good.append(ph_arr)
        elif a.ndim != len(want_shape) or any(w is not None and w != s for w, s in zip(want_shape, a.shape)):
            bad_shape.append(i)
            good.append(ph_arr)
        else:
            good.append(a)
    for i in bad_type[:MAX_ISSUES_PER_FIELD]:
        issues.append(issue("FIELD_TYPE", label, f"expected {_expect(leaf)}, got {_short(values[i])}", step=i, field=path))
    for i in bad_shape[:MAX_ISSUES_PER_FIELD]:
        issues.append(issue("FIELD_SHAPE", label, f"expected shape {list(want_shape)}, got {_short(values[i])}", step=i, field=path))
    extra = len(bad_type) + len(bad_shape) - min(len(bad_type), MAX_ISSUES_PER_FIELD) - min(len(bad_shape), MAX_ISSUES_PER_FIELD)
    if extra > 0:
        issues.append(issue("FIELD_SHAPE" if bad_shape else "FIELD_TYPE", label, f"... {extra} more steps with bad values", field=path))
    if leaf.is_static:
        arr = np.stack([np.asarray(g, dtype=np.float64 if dtype.kind in "fiu" else dtype) for g in good]) if good else \
            np.zeros((0, *want_shape), dtype=dtype)
        return _cast(arr, leaf, label, path, issues)
    out = np.empty(T, dtype=object)
    for i, g in enumerate(good):
        out[i] = _cast(np.asarray(g), leaf, label, path, issues, step=i)
    return out


def _cast(arr: np.ndarray, leaf: Any, label: str, path: str, issues: list[Issue], step: int | None = None) -> np.ndarray:
    dtype = leaf.np_dtype
    if arr.dtype == dtype:
        return arr
    if dtype.kind in "iu":
        if arr.dtype.kind == "f":
            frac = ~np.isfinite(arr) | (arr != np.round(arr))
            if frac.any():
                first = int(np.argwhere(frac)[0][0]) if step is None else step
                issues.append(issue("FIELD_DTYPE", label, f"{int(frac.sum())} non-integer values for {leaf.dtype}", step=first, field=path))
                arr = np.where(frac, 0, arr)
        info = np.iinfo(dtype)
        if arr.size:
            over = (arr < info.min) | (arr > info.max)
            if over.any():
                first = int(np.argwhere(over)[0][0]) if step is None else step
                issues.append(issue("FIELD_DTYPE", label, f"{int(over.sum())} values outside the {leaf.dtype} range [{info.min}, {info.max}]",
                                    step=first, field=path))
                arr = np.where(over, 0, arr)
    if dtype.kind == "f" and arr.dtype.kind in "iu" and arr.size and arr.dtype.itemsize * 8 > 53:
        pass  # ints beyond 2**53 lose precision as floats; that is the declared dtype's choice
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(dtype)
    if dtype.kind == "f" and arr.dtype.kind == "f":
        overflow = np.isfinite(arr) & ~np.isfinite(out)
        if overflow.any():
            first = int(np.argwhere(overflow)[0][0]) if step is None else step
            issues.append(issue("FIELD_DTYPE", label, f"{int(overflow.sum())} values overflow {leaf.dtype}", step=first, field=path))
    return out


def _decode_strings(values: list[Any], leaf: Any, label: str, path: str, issues: list[Issue]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    bad = []
    fill = leaf.fill if isinstance(leaf, Text) else ""
    for i, v in enumerate(values):
        if v is None or v is _MISSING:
            out[i] = fill if leaf.shape == () else np.array([], dtype=object)
        elif leaf.shape == () and isinstance(v, str):
            out[i] = v
        elif leaf.shape != () and isinstance(v, list) and all(isinstance(s, str) for s in v):
            a = np.empty(len(v), dtype=object)
            a[:] = v
            out[i] = a
        else:
            bad.append(i)
            out[i] = fill if leaf.shape == () else np.array([], dtype=object)
    for i in bad[:MAX_ISSUES_PER_FIELD]:
        issues.append(issue("FIELD_TYPE", label, f"expected {'a string' if leaf.shape == () else 'a list of strings'}, got {_short(values[i])}",
                            step=i, field=path))
    return out


def _decode_images(values: list[Any], leaf: Image, camera: str, base_dir: Path, label: str, path: str,
                   issues: list[Issue], load_frames: bool, present: np.ndarray | None):
    """Image column: LazyFrames of files when every value is a path inside the folder,
    else an object array of bytes. Missing/escaping paths and bad base64 are reported."""
    T = len(values)
    root = base_dir.resolve()
    try:
        listed = set(os.listdir(base_dir / FRAMES_DIR / camera))
    except OSError:
        listed = set()
    prefix = f"{FRAMES_DIR}/{camera}/"
    base = os.fspath(base_dir) + "/"
    if present is None and not load_frames:
        # fast path: the logger's own naming, every file present
        expected = [f"{prefix}{i:06d}{leaf.extension}" for i in range(T)]
        if values == expected and listed.issuperset(e[len(prefix):] for e in expected):
            return LazyFrames([base + v for v in values])
    paths: list[str | Path | None] = [None] * T
    inline: dict[int, bytes] = {}
    missing: list[int] = []
    bad_path: list[int] = []
    for i, v in enumerate(values):
        if v is None or v is _MISSING:
            continue
        if isinstance(v, str):
            if v.startswith(prefix) and "/" not in v[len(prefix):] and v[len(prefix):] not in ("", ".", ".."):
                if v[len(prefix):] in listed:
                    paths[i] = base + v
                else:
                    missing.append(i)
                continue
            try:
                full = (base_dir / v).resolve()
                inside = full.is_relative_to(root) and not os.path.isabs(v)
            except (OSError, ValueError):
                inside = False
            if not inside:
                bad_path.append(i)
            elif full.is_file():
                paths[i] = full
            else:
                missing.append(i)
        elif isinstance(v, dict) and set(v) == {"$base64"} and isinstance(v["$base64"], str):
            try:
                inline[i] = base64.b64decode(v["$base64"], validate=True)
            except (binascii.Error, ValueError):
                bad_path.append(i)
        else:
            bad_path.append(i)
    for i in missing[:MAX_ISSUES_PER_FIELD]:
        issues.append(issue("IMAGE_MISSING", label, f"frame file {values[i]!r} is absent", step=i, field=path))
    if len(missing) > MAX_ISSUES_PER_FIELD:
        issues.append(issue("IMAGE_MISSING", label, f"... {len(missing) - MAX_ISSUES_PER_FIELD} more missing frames", field=path))
    for i in bad_path[:MAX_ISSUES_PER_FIELD]:
        issues.append(issue("IMAGE_PATH", label, f"expected a frame path inside the episode folder or {{\"$base64\": ...}}, got {_short(values[i])}",
                            step=i, field=path))
    if not inline and all(p is not None for p in paths) and not load_frames:
        return LazyFrames(paths)  # type: ignore[arg-type]
    out = np.empty(T, dtype=object)
    for i in range(T):
        if i in inline:
            out[i] = inline[i]
        elif paths[i] is not None:
            try:
                with open(paths[i], "rb") as f:  # type: ignore[arg-type]
                    out[i] = f.read()
            except OSError as e:
                issues.append(issue("READ_ERROR", label, f"cannot read frame {paths[i]}: {e}", step=i, field=path))
                out[i] = b""
        else:
            out[i] = b""
    return out


def _short(v: Any, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _decode_metadata(meta: Mapping[str, Any], spec: EpisodeSpec, label: str, issues: list[Issue]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, leaf in spec.metadata_leaves.items():
        v = _get(meta, path.split("/"))
        if v is _MISSING or v is None:
            if not getattr(leaf, "optional", False) and not path.endswith(PRESENT_SUFFIX):
                issues.append(issue("METADATA_FIELD_MISSING", label, f"episode metadata '{path}' is absent; using the default", field=path))
            v = [] if leaf.shape == (None,) else (leaf.fill if isinstance(leaf, Text) else leaf.placeholder().item() if leaf.shape == () else leaf.placeholder().tolist())
        ok = True
        if isinstance(leaf, Text):
            ok = isinstance(v, str)
        elif leaf.dtype == "string":
            ok = isinstance(v, list) and all(isinstance(s, str) for s in v)
        elif leaf.dtype == "bool":
            ok = isinstance(v, bool) or (isinstance(v, list))
        elif leaf.shape == ():
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if not ok:
            issues.append(issue("METADATA_INVALID", label, f"episode metadata '{path}': expected {_expect(leaf)}, got {_short(v)}", field=path))
            v = leaf.fill if isinstance(leaf, Text) else ([] if leaf.dtype == "string" else leaf.placeholder().item())
        if leaf.dtype == "string" and isinstance(v, list):
            v = list(v)
        elif isinstance(leaf, Image):
            pass
        elif not isinstance(leaf, Text) and leaf.dtype != "string":
            try:
                v = np.asarray(v, dtype=leaf.np_dtype).reshape(leaf.shape).item() if leaf.shape == () else np.asarray(v, dtype=leaf.np_dtype)
            except (ValueError, TypeError, OverflowError) as e:
                issues.append(issue("METADATA_INVALID", label, f"episode metadata '{path}': {e}", field=path))
                v = leaf.placeholder().item() if leaf.shape == () else leaf.placeholder()
        out[path] = v
    return out


def _build_episode(records: list[Any], meta: Mapping[str, Any], spec: EpisodeSpec, base_dir: Path, label: str,
                   terminal: bool | None, load_frames: bool) -> tuple[Episode | None, list[Issue]]:
    issues: list[Issue] = []
    ref = meta.get("schema")
    if isinstance(ref, dict) and "name" in ref:
        name, ver = ref.get("name"), str(ref.get("version", ""))
        if name != spec.name or ver.split(".")[0] != str(spec.major):
            issues.append(issue("SCHEMA_MISMATCH", label, f"recorded for schema {name} {ver}, validating against {spec.name} {spec.version}"))
        elif ver != spec.version:
            issues.append(issue("SCHEMA_MINOR_MISMATCH", label, f"recorded for {name} {ver}, validating against {spec.version}"))
    cols, dec = decode_steps(records, spec, base_dir, label, load_frames=load_frames)
    issues.extend(dec)
    if "is_first" not in cols:
        if terminal is None:
            issues.append(issue("TERMINAL_UNKNOWN", label, "steps carry no RLDS flags and there is no end record: is_terminal taken as False (truncated)"))
            terminal = False
        cols.update(rlds_flags(len(records), terminal))
    metadata = _decode_metadata(meta, spec, label, issues)
    return Episode(metadata, cols), issues


# =========================================================================== recovery


def recover_episode(path: str | Path) -> dict[str, Any]:
    """Finish an episode folder a killed logger left ``recording``: drop a torn last line,
    remove temp files, and mark it ``recovered`` (truncated, not terminal). Idempotent;
    returns a summary ``{"path", "status", "num_steps", "dropped_bytes", "removed"}``."""
    p = Path(path)
    meta_issues: list[Issue] = []
    meta = _load_metadata(p, str(p), meta_issues)
    if meta is None:
        raise EpisodeError(str(p), meta_issues)
    if meta.get("status") != "recording":
        return {"path": str(p), "status": meta.get("status", "complete"), "num_steps": (meta.get("end") or {}).get("num_steps"),
                "dropped_bytes": 0, "removed": []}
    removed: list[str] = []
    for root, _dirs, files in os.walk(p):
        for f in files:
            if f.endswith(TMP_SUFFIX):
                os.unlink(Path(root) / f)
                removed.append(str((Path(root) / f).relative_to(p)))
    dropped = 0
    count = 0
    chunks = _list_chunks(p / STEPS_DIR, str(p), meta_issues)
    for first, f in chunks:
        if first != count:
            for _, later in chunks:
                if _ >= first:
                    later.rename(later.with_name(later.name + ".orphan"))
                    removed.append(f"{STEPS_DIR}/{later.name} (kept as .orphan)")
            break
        if f.name.endswith(".jsonl") and f.with_name(f.name + ".zst").exists():
            f.unlink()
            removed.append(f"{STEPS_DIR}/{f.name} (duplicate of .zst)")
            continue
        data = f.read_bytes() if not f.name.endswith(".zst") else None
        if data is None:
            import zstandard

            try:
                lines = zstandard.ZstdDecompressor().decompressobj().decompress(f.read_bytes()).split(b"\n")
            except zstandard.ZstdError:
                f.rename(f.with_name(f.name + ".orphan"))
                removed.append(f"{STEPS_DIR}/{f.name} (unreadable, kept as .orphan)")
                break
            count += sum(1 for x in lines if x)
            continue
        good = 0
        pos = 0
        for line in data.split(b"\n")[:-1]:
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError:
                ok = False
            if not ok:
                break
            pos += len(line) + 1
            good += 1
        if pos != len(data):
            dropped += len(data) - pos
            atomic_write_bytes(f, data[:pos])
        count += good
        if pos != len(data) and good < data.count(b"\n"):
            break
    end = {"num_steps": count, "terminal": False, "truncated": True, "recovered_at": time.time()}
    meta = dict(meta, status="recovered", end=end)
    tags = meta.get("tags") if isinstance(meta.get("tags"), list) else []
    if "recovered" not in tags:
        meta["tags"] = [*tags, "recovered"]
    atomic_write_bytes(p / METADATA_FILE, json.dumps(meta, ensure_ascii=False, indent=1).encode())
    return {"path": str(p), "status": "recovered", "num_steps": count, "dropped_bytes": dropped, "removed": removed}
