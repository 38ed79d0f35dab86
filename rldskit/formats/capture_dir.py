"""The on-robot capture layout, and single-file JSON episodes: bytes in, columns out.

The layout itself (file names, chunk naming, the step-line and metadata bytes, the append-only
writer :class:`EpisodeDirWriter`, chunk reading, :func:`compress_chunk` and the recovery rules) is
:mod:`edge_runtime.capture_layout`, the edge runtime's numpy-only core, re-exported here; this module
turns what it reads into typed columns and :class:`~rldskit.issues.Issue` records against a spec.

Layout of one episode folder (written by :class:`EpisodeDirWriter`, driven by
:class:`rldskit.capture.EpisodeLogger` here and :class:`edge_runtime.episode_log.EpisodeLog` on a robot)::

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

Crash safety: ``metadata.json`` (``status: recording``) is written before ``steps/`` exists;
frames are written temp-then-rename *before* the step line that names them; a step line is
one ``write(2)`` on an ``O_APPEND`` descriptor; ``metadata.json`` is replaced atomically; a
closed chunk is compressed temp-then-rename and read back, then its plain twin removed (a copy
that does not read back as the same bytes is set aside as ``*.corrupt`` and the plain chunk
kept: the only readable copy of a step is never deleted). So a ``kill -9`` at
any instant loses at most the step being written (a torn last line), and an unfinished episode
is recognisable (``status: recording``). Readers refuse it unless asked to ``recover``, which
keeps every step up to the first torn, corrupt or missing one and marks the episode
truncated; :func:`recover_episode` makes that permanent (setting later chunks aside as
``*.orphan``, never deleting them).

Single-file episodes: ``*.json`` holding ``{"metadata": {...}, "steps": [...]}``, and
``*.jsonl`` / ``*.jsonl.zst`` whose first line is ``{"metadata": {...}}``, then one step per
line, optionally ending with ``{"end": {"terminal": bool}}``. Their steps may carry the RLDS
flags explicitly.

This module knows bytes, not policy: decoding never raises on bad data; it returns columns
plus :class:`~rldskit.issues.Issue` records, and :func:`read_episode` turns errors into an
:class:`EpisodeError`.
"""

from __future__ import annotations

import binascii
import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.capture_layout import (CORRUPT_SUFFIX, FORMAT, FRAMES_DIR, METADATA_FILE, SCHEMA_FILE, STEPS_DIR,
                                         EpisodeDirWriter, chunk_bytes, chunk_name, compress_chunk, inline_frame_bytes,
                                         list_chunks, recover_episode_dir, resolve_frame_path, step_to_json_line)
from rldskit.episode import Episode, LazyFrames, rlds_flags
from rldskit.issues import ERROR, Issue, issue
from rldskit.spec import FLAG_KEYS, PRESENT_SUFFIX, EpisodeSpec, Image, Text

MAX_ISSUES_PER_FIELD = 5

__all__ = [
    "EpisodeDirWriter", "EpisodeError", "ScanResult", "scan_episode", "read_episode", "recover_episode",
    "find_episodes", "is_episode_path", "decode_steps", "step_to_json_line", "resolve_spec", "chunk_bytes",
    "compress_chunk", "chunk_name", "FORMAT", "METADATA_FILE", "STEPS_DIR", "FRAMES_DIR", "CORRUPT_SUFFIX",
]


class EpisodeError(ValueError):
    """An episode could not be read. ``issues`` holds every error found."""

    def __init__(self, path: str, issues: Sequence[Issue], sources: Sequence[tuple[int, int, str, int | None]] = ()):
        self.path = path
        self.issues = list(issues)
        errs = [i for i in self.issues if i.severity == ERROR] or self.issues
        lines = [f"{path}: " + _describe(i, _locate(i, sources)) for i in errs[:5]]
        more = f"\n  ... and {len(errs) - 5} more" if len(errs) > 5 else ""
        super().__init__("\n".join(lines) + more)


def _describe(i: Issue, source: str = "") -> str:
    where = "".join([f" step {i.step}" if i.step is not None else "", f" ({source})" if source else "",
                     f" field {i.field}" if i.field else ""])
    return f"[{i.code}]{where}: {i.message}"


def _locate(i: Issue, sources: Sequence[tuple[int, int, str, int | None]]) -> str:
    """``steps/000010.jsonl line 4`` for a step-level issue. ``sources`` lists
    ``(first_step, num_steps, file, line_of_first_step)`` (line ``None``: a JSON array)."""
    if i.step is None or i.step < 0:
        return ""
    found = ""
    for first, n, fname, line in sources:
        if first <= i.step < first + n:
            found = f"{fname} line {i.step - first + line}" if line is not None else f"{fname} steps[{i.step - first}]"
            break
    if found and found.split(" ")[0] in i.message:
        return ""  # the message already names the file and line
    return found


# =========================================================================== reading


@dataclasses.dataclass
class ScanResult:
    """What a lenient read of one episode found. ``episode`` is ``None`` when nothing usable."""

    path: str
    episode: Episode | None
    issues: list[Issue]
    status: str  # complete | recording | recovered | file
    schema_ref: dict[str, Any] | None = None  # {"name", "version"} recorded in the metadata
    sources: list[tuple[int, int, str, int | None]] = dataclasses.field(default_factory=list)  # see _locate

    @property
    def ok(self) -> bool:
        return self.episode is not None and not any(i.severity == ERROR for i in self.issues)


#: JSON files that live among episodes but are not episodes: the schema copy, and the reports the
#: importers write beside what they imported
NOT_EPISODES = frozenset({"schema.json", "import_report.json", "migration_report.json"})


def is_episode_path(p: Path) -> bool:
    if p.is_dir():
        return (p / METADATA_FILE).is_file() or (p / STEPS_DIR).is_dir()
    return (p.is_file() and (p.name.endswith((".jsonl", ".jsonl.zst")) or p.suffix == ".json")
            and p.name not in NOT_EPISODES)


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
        data = chunk_bytes(path)
    except Exception as e:  # noqa: BLE001 - any I/O or zstd failure is reported, not raised
        issues.append(issue("READ_ERROR", label, f"cannot read {path.name}: {type(e).__name__}: {e}"))
        return None
    try:
        return data.decode("utf-8").split("\n")  # str lines: json.loads skips encoding detection
    except UnicodeDecodeError:
        return data.split(b"\n")  # parsed line by line; the bad line is reported as JSON_INVALID


def _looks_torn(tail: str | bytes) -> bool:
    """Whether an unterminated last line looks like the start of a step line cut short by a
    crash (a prefix of a JSON object) rather than garbage."""
    b = tail.encode("utf-8") if isinstance(tail, str) else tail
    if not b.startswith(b"{") or any(c < 0x20 for c in b):
        return False
    for cut in range(4):  # the cut may fall inside a multi-byte UTF-8 character
        try:
            b[: len(b) - cut].decode("utf-8")
            return True
        except UnicodeDecodeError:
            continue
    return False


def _step(n: int) -> int | None:
    return n if n >= 0 else None  # the metadata line of a single-file .jsonl episode is not a step


_SCAN_ONCE = json.JSONDecoder().scan_once


def _loads_line(line: str | bytes) -> Any:
    """``json.loads`` for one line, with the same results and errors, minus its per-call
    overhead (encoding detection, two regex matches): the scanner runs directly and anything
    unusual (leading whitespace, bytes, trailing data) goes through ``json.loads`` itself."""
    if type(line) is str:
        try:
            obj, end = _SCAN_ONCE(line, 0)
        except StopIteration:
            return json.loads(line)  # raises the JSONDecodeError with its position
        if end == len(line) or not line[end:].strip(" \t\n\r"):
            return obj
    return json.loads(line)


def _parse_lines(raw: list[str] | list[bytes], first_step: int, label: str, fname: str,
                 issues: list[Issue]) -> tuple[list[Any], bool]:
    """Parse JSON lines up to the first bad one. Returns ``(records, torn)``.

    Every step line is written with its newline in one ``write``, so a newline-terminated line
    that is not a JSON object is corrupt (JSON_INVALID, reported). An unterminated last line
    is kept when it parses (the crash fell just before its newline), is ``torn`` when it looks
    like a cut-off JSON object (not reported here: the caller knows whether the episode was
    still recording), and is JSON_INVALID otherwise."""
    tail = None
    if raw and raw[-1] in ("", b""):
        raw = raw[:-1]
    elif raw:
        tail, raw = raw[-1], raw[:-1]
    loads = _loads_line
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
                issues.append(issue("JSON_INVALID", label, f"{fname} line {n + 1}: not JSON ({_short(str(e), 120)})",
                                    step=_step(first_step + n)))
                break
    torn = False
    if bad is None and tail is not None:
        try:
            recs.append(loads(tail))
        except (ValueError, UnicodeDecodeError) as e:
            if _looks_torn(tail):
                torn = True
            else:
                bad = len(raw)
                issues.append(issue("JSON_INVALID", label, f"{fname} line {len(raw) + 1}: not JSON ({_short(str(e), 120)})",
                                    step=_step(first_step + len(raw))))
    for n, r in enumerate(recs):
        if not isinstance(r, dict):
            issues.append(issue("JSON_INVALID", label, f"{fname} line {n + 1}: a step is a JSON object, got {type(r).__name__}",
                                step=_step(first_step + n)))
            recs = recs[:n]
            torn = False
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
        raise EpisodeError(res.path, res.issues, res.sources)
    return res.episode  # type: ignore[return-value]


def resolve_spec(spec: EpisodeSpec | None, p: Path, schema_ref: Any, label: str,
                 issues: list[Issue]) -> EpisodeSpec | None:
    """The spec an episode at ``p`` is read with: ``spec`` when given; else the ``schema.json`` in
    its folder's parent or up to two levels above (what a logger writes at the capture root); else
    the schema its metadata names (``schema_ref``: ``{"name", "version"}``, loaded as
    ``name.v<major>``). ``None`` when there is none, with the reason appended to ``issues``
    (METADATA_INVALID or SCHEMA_MISMATCH, labelled ``label``)."""
    from rldskit.spec import SpecError, load_spec

    if spec is not None:
        return spec
    for parent in [p.parent, *p.parent.parents][:3]:
        if (parent / SCHEMA_FILE).is_file():
            try:
                return _load_spec_cached(parent / SCHEMA_FILE)
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
    """:func:`edge_runtime.capture_layout.list_chunks`, with a folder that cannot be listed reported."""
    try:
        return list_chunks(steps_dir)
    except OSError as e:
        issues.append(issue("READ_ERROR", label, f"cannot list {STEPS_DIR}/: {e}"))
        return []


def _scan_dir(p: Path, spec: EpisodeSpec | None, recover: bool, load_frames: bool, label: str) -> ScanResult:
    issues: list[Issue] = []
    meta = _load_metadata(p, label, issues)
    if meta is None:
        return ScanResult(label, None, issues, "unknown")
    status = meta.get("status", "complete")
    spec = resolve_spec(spec, p, meta.get("schema"), label, issues)
    if spec is None:
        return ScanResult(label, None, issues, status, meta.get("schema"))
    records: list[Any] = []
    sources: list[tuple[int, int, str, int | None]] = []
    expected = 0
    chunks = _list_chunks(p / STEPS_DIR, label, issues)
    truncated_at: int | None = None
    for first, f in chunks:
        fname = f"{STEPS_DIR}/{f.name}"
        if first != expected:
            issues.append(issue("STEPS_GAP", label, f"{fname} starts at step {first}, expected {expected} (a chunk file is missing)",
                                step=expected))
            truncated_at = expected
            break
        raw = _read_text_lines(f, label, issues)
        if raw is None:
            truncated_at = expected
            break
        n_before = len(issues)
        recs, torn = _parse_lines(raw, first, label, fname, issues)
        sources.append((first, len(recs), fname, 1))
        records.extend(recs)
        expected += len(recs)
        if torn:
            truncated_at = expected  # when recording: the step in flight when the logger died
            if status != "recording":
                issues.append(issue("JSON_TRUNCATED", label, f"{fname}: line {len(recs) + 1} is cut off after {len(recs)} complete lines "
                                    "(expected every line to end in a newline; the episode was ended, so this is damage, not a crash)",
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
    return ScanResult(label, episode, issues, status, meta.get("schema"), sources)


def _scan_file(p: Path, spec: EpisodeSpec | None, label: str) -> ScanResult:
    issues: list[Issue] = []
    name = p.name
    meta: Any = None
    end: Any = None
    if name.endswith((".jsonl", ".jsonl.zst")):
        raw = _read_text_lines(p, label, issues)
        if raw is None:
            return ScanResult(label, None, issues, "file")
        records, torn = _parse_lines(raw, -1, label, name, issues)
        if torn:
            issues.append(issue("JSON_TRUNCATED", label, f"{name}: line {len(records) + 1} is cut off after {len(records)} complete lines",
                                step=len(records) - 1 if records else None))
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
    spec = resolve_spec(spec, p, meta.get("schema"), label, issues)
    if spec is None:
        return ScanResult(label, None, issues, "file", meta.get("schema"))
    terminal: bool | None = None
    if isinstance(end, dict) and isinstance(end.get("terminal"), bool):
        terminal = end["terminal"]
    elif isinstance(meta.get("end"), dict) and isinstance(meta["end"].get("terminal"), bool):
        terminal = meta["end"]["terminal"]
    episode, dec = _build_episode(steps, meta, spec, p.parent, label, terminal, load_frames=True)
    issues.extend(dec)
    sources = [(0, len(steps), name, 2 if name.endswith((".jsonl", ".jsonl.zst")) else None)]
    return ScanResult(label, episode, issues, "file", meta.get("schema"), sources)


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
        if not optional and (_MISSING in values or None in values):
            # absent or null where the schema requires a value: reported, then decoded as the placeholder
            missing = [i for i, v in enumerate(values) if v is _MISSING or v is None]
            if missing:
                issues.append(issue("FIELD_MISSING", label, f"absent or null in {len(missing)} of {T} steps (expected {_expect(leaf)})",
                                    step=missing[0], field=path))
                values = [_MISSING if v is None else v for v in values]
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
    # undeclared features, at every level of the tree and in every step; reported once per key
    # at the first step that has it (a union of key sets: cheap next to decoding the values)
    _report_unexpected(records, spec.steps, "", spec.id, label, issues)
    return cols, _dedupe(issues)


def _report_unexpected(records: Sequence[Any], node: Mapping[str, Any], prefix: str, spec_id: str, label: str,
                       issues: list[Issue]) -> None:
    """FIELD_UNEXPECTED for keys of ``records`` (dicts, or None where a step lacks this
    sub-tree) that ``node`` does not declare; recurses into declared sub-trees."""
    dicts = records if not prefix else [r for r in records if type(r) is dict]  # step lines are dicts
    if not dicts:
        return
    keys: set[str] = set().union(*dicts)
    allowed = set(node) | {k + PRESENT_SUFFIX for k in node}
    for k in sorted(keys - allowed):
        step = next(i for i, r in enumerate(records) if type(r) is dict and k in r)
        issues.append(issue("FIELD_UNEXPECTED", label, f"'{prefix}{k}' is not declared by {spec_id}; it is ignored",
                            field=f"{prefix}{k}", step=step))
    for k, sub in node.items():
        if isinstance(sub, Mapping) and k in keys:
            _report_unexpected([r.get(k) if type(r) is dict else None for r in records], sub, f"{prefix}{k}/", spec_id,
                               label, issues)


def _dedupe(issues: list[Issue]) -> list[Issue]:
    return list(dict.fromkeys(issues))


def _expect(leaf: Any) -> str:
    if isinstance(leaf, Image):
        return f"a {leaf.encoding} frame path"
    if isinstance(leaf, Text):
        return "a string"
    return f"{leaf.dtype} of shape {list(leaf.shape)}"


# JSON kinds accepted per declared kind: floats are accepted for integers so that a fraction
# (or 3.0) reaches _cast, which reports FIELD_DTYPE for non-integral values
_KINDS = {"f": "fiu", "i": "iuf", "u": "iuf", "b": "b"}


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
    bad_range: list[int] = []
    for i, v in enumerate(values):
        try:
            a = np.array(v)
        except (ValueError, TypeError, OverflowError):
            bad_shape.append(i)
            good.append(ph_arr)
            continue
        if a.dtype == object and dtype.kind in "iuf" and _all_ints(v):
            bad_range.append(i)  # integers beyond 64 bits
            good.append(ph_arr)
        elif a.dtype.kind not in _KINDS[dtype.kind]:
            bad_type.append(i)
            good.append(ph_arr)
        elif a.ndim != len(want_shape) or any(w is not None and w != s for w, s in zip(want_shape, a.shape)):
            bad_shape.append(i)
            good.append(ph_arr)
        else:
            good.append(a)
    for i in bad_type[:MAX_ISSUES_PER_FIELD]:
        issues.append(issue("FIELD_TYPE", label, f"expected {_expect(leaf)}, got {_short(values[i])}", step=i, field=path))
    for i in bad_range[:MAX_ISSUES_PER_FIELD]:
        issues.append(issue("FIELD_DTYPE", label, f"expected {leaf.dtype} values, got {_short(values[i])}, beyond 64 bits", step=i, field=path))
    for i in bad_shape[:MAX_ISSUES_PER_FIELD]:
        issues.append(issue("FIELD_SHAPE", label, f"expected shape {list(want_shape)}, got {_short(values[i])}", step=i, field=path))
    extra = len(bad_type) + len(bad_shape) - min(len(bad_type), MAX_ISSUES_PER_FIELD) - min(len(bad_shape), MAX_ISSUES_PER_FIELD)
    if extra > 0:
        issues.append(issue("FIELD_SHAPE" if bad_shape else "FIELD_TYPE", label, f"... {extra} more steps with bad values", field=path))
    if leaf.is_static:
        if not good:
            arr = np.zeros((0, *want_shape), dtype=dtype)
        elif dtype.kind in "iu" and all(np.asarray(g).dtype.kind in "iu" for g in good):
            arr = np.stack([np.asarray(g) for g in good])  # no float64 round trip: int64 beyond 2**53 stays exact
        else:
            arr = np.stack([np.asarray(g, dtype=np.float64 if dtype.kind in "fiu" else dtype) for g in good])
        return _cast(arr, leaf, label, path, issues)
    out = np.empty(T, dtype=object)
    for i, g in enumerate(good):
        out[i] = _cast(np.asarray(g), leaf, label, path, issues, step=i)
    return out


def _all_ints(v: Any) -> bool:
    if isinstance(v, list):
        return all(_all_ints(x) for x in v)
    return isinstance(v, int) and not isinstance(v, bool)


def _cast(arr: np.ndarray, leaf: Any, label: str, path: str, issues: list[Issue], step: int | None = None) -> np.ndarray:
    dtype = leaf.np_dtype
    if arr.dtype == dtype:
        return arr
    if dtype.kind in "iu":
        if arr.dtype.kind == "f":
            frac = ~np.isfinite(arr) | (arr != np.round(arr))
            if frac.any():
                first = int(np.argwhere(frac)[0][0]) if step is None else step
                issues.append(issue("FIELD_DTYPE", label, f"expected integers for {leaf.dtype}, got {int(frac.sum())} non-integer values "
                                    f"(e.g. {arr[frac].flat[0].item()!r})", step=first, field=path))
                arr = np.where(frac, 0, arr)
        info = np.iinfo(dtype)
        if arr.size:
            over = (arr < info.min) | (arr > info.max)
            if over.any():
                first = int(np.argwhere(over)[0][0]) if step is None else step
                issues.append(issue("FIELD_DTYPE", label, f"expected {leaf.dtype} values in [{info.min}, {info.max}], got {int(over.sum())} "
                                    f"outside (e.g. {arr[over].flat[0].item()!r})", step=first, field=path))
                arr = np.where(over, 0, arr)
    if dtype.kind == "f" and arr.dtype.kind in "iu" and arr.size and arr.dtype.itemsize * 8 > 53:
        pass  # ints beyond 2**53 lose precision as floats; that is the declared dtype's choice
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(dtype)
    if dtype.kind == "f" and arr.dtype.kind == "f":
        overflow = np.isfinite(arr) & ~np.isfinite(out)
        if overflow.any():
            first = int(np.argwhere(overflow)[0][0]) if step is None else step
            issues.append(issue("FIELD_DTYPE", label, f"expected values that fit {leaf.dtype}, got {int(overflow.sum())} that overflow "
                                f"(e.g. {arr[overflow].flat[0].item()!r})", step=first, field=path))
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
    cam_dir = base_dir / FRAMES_DIR / camera
    listed: set[str] = set()  # regular files only: a symlink is checked like any other path
    cam_inside = True
    try:
        cam_inside = cam_dir.resolve().is_relative_to(root)  # frames/ or frames/<camera> may link out
        if cam_inside:
            with os.scandir(cam_dir) as it:
                listed = {e.name for e in it if not e.is_symlink()}
    except OSError:
        pass
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
                    continue
                if cam_inside and not os.path.islink(base + v):
                    missing.append(i)
                    continue
                # a symbolic link: resolved and checked below
            try:
                full = resolve_frame_path(base_dir, v, resolved_root=root)
            except (OSError, ValueError):
                full = None
            if full is None:
                bad_path.append(i)
            elif full.is_file():
                paths[i] = full
            else:
                missing.append(i)
        elif isinstance(v, dict) and set(v) == {"$base64"}:
            try:
                data = inline_frame_bytes(v)
            except (binascii.Error, ValueError):
                data = None
            if data is None:
                bad_path.append(i)
            else:
                inline[i] = data
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
        base = path[: -len(PRESENT_SUFFIX)]
        if path.endswith(PRESENT_SUFFIX) and getattr(spec.metadata_leaves.get(base), "optional", False):
            bv = _get(meta, base.split("/"))
            out[path] = bv is not _MISSING and bv is not None  # the mask follows the signal
            continue
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
    """Finish an episode folder a killed logger left ``recording``, keeping exactly the steps
    ``scan_episode(path, recover=True)`` reads: every step up to the first one that is torn,
    corrupt, unreadable or missing. Temp files and the plain twin of a compressed chunk are
    removed; a chunk cut short keeps its complete lines; chunks after the cut are renamed
    ``*.orphan`` (and a chunk that lost whole lines keeps its original bytes beside it as
    ``*.orphan``), so nothing is silently destroyed. A chunk present both plain and compressed
    (killed between compressing it and removing the plain copy) loses its plain copy only when
    the ``.zst`` decodes completely to the same bytes; otherwise the bad copy is renamed
    ``*.corrupt`` and listed in ``corrupt``. The metadata is then marked ``recovered``
    (truncated, not terminal, tagged ``recovered``). Idempotent; returns
    ``{"path", "status", "num_steps", "dropped_bytes", "removed", "corrupt"}``.

    The rules are :func:`edge_runtime.capture_layout.recover_episode_dir`'s (the robot's copy);
    this adds reading the metadata: without a readable ``metadata.json``, :class:`EpisodeError`."""
    p = Path(path)
    label = str(p)
    meta_issues: list[Issue] = []
    meta = _load_metadata(p, label, meta_issues)
    if meta is None:
        raise EpisodeError(label, meta_issues)
    return recover_episode_dir(p, meta)
