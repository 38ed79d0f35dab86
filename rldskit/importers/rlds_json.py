"""Jetson -> Pi migration of older single-file RLDS JSON episodes into a Pi layout.

:func:`migrate_rlds_json` reads single-file JSON episodes captured on the Jetson under an older
schema (``{"metadata": {...}, "steps": [...]}`` or the ``*.jsonl`` variant) and rewrites their
keys with a small mapping file (format below). It writes capture-layout episodes
(:class:`rldskit.capture.EpisodeLogger`) for the target spec (default ``pi5_donkey.v1``) under
``out/``, plus ``out/migration_report.json``
(:class:`rldskit.importers.migration.MigrationReport`; a JSON episode is named as ``<folder
given>/<path inside>`` or its file name, with a sha256 digest of the files read from it).
Donkeycar tubs are imported by :mod:`rldskit.importers.donkey`.

RLDS JSON mapping file
----------------------
A JSON object; every key is optional::

    {
      "rename":   {"observation/camera": "observation/image",
                   "action/steering_angle": "action[0]", "action/throttle": "action[1]",
                   "timestamp_ms": "timestamp/control", "mode": "control_mode"},
      "units":    {"action[0]": {"scale": 0.0333}, "timestamp/control": {"scale": 0.001}},
      "defaults": {"control_mode": "user", "reward": 0.0, "discount": 1.0},
      "copy":     {"timestamp/camera": "timestamp/control"},
      "drop":     ["observation/debug_text"],
      "values":   {"control_mode": {"human": "user", "auto": "pilot"}},
      "last_step": "valid",
      "metadata": {"rename": {"car": "vehicle_id"}, "defaults": {"environment_id": "track"}}
    }

Paths are ``/``-separated keys into the step; a trailing ``[i]`` addresses one element of a
list. Order per step: ``rename`` (source path -> target path), then source leaves not
renamed or dropped are kept when the target declares the same path (others are reported as
unmapped), then ``values`` (text value renames), ``units`` (``v * scale + offset``, on target
paths), ``defaults`` (for absent target paths), ``copy`` (target <- another target path).
``"last_step": "rlds"`` drops the observation-only final step of an RLDS-style source (the
Pi layout's last step is a real one). Images are paths relative to the episode file's folder
or ``{"$base64": ...}`` and are resized like tub frames. Every timestamp stream must come from
the source (a missing one is never filled with the migration time). Any step that the target
refuses quarantines the whole file (a mapping error hits every step; importing half an
episode would hide it).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rldskit.importers.migration import (
    REPORT_FILE, Digest, EpisodeResult, Frames, MigrationError, MigrationReport, SourceResult, finite, load_target,
    make_logger, mark_quarantined, print_report, unique_id, validate_written)

__all__ = ["migrate_rlds_json", "load_mapping", "add_import_parser"]

_IDX = re.compile(r"^(.*)\[(\d+)\]$")


def _split(path: str) -> tuple[list[str], int | None]:
    m = _IDX.match(path)
    base, idx = (m.group(1), int(m.group(2))) if m else (path, None)
    parts = [p for p in base.split("/") if p]
    if not parts:
        raise MigrationError(f"mapping: empty path {path!r}")
    return parts, idx


_MISSING = object()


def _get(tree: Any, path: str) -> Any:
    parts, idx = _split(path)
    node = tree
    for p in parts:
        if not isinstance(node, Mapping) or p not in node:
            return _MISSING
        node = node[p]
    if idx is not None:
        if not isinstance(node, list) or idx >= len(node):
            return _MISSING
        node = node[idx]
    return node


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    parts, idx = _split(path)
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    if idx is None:
        node[parts[-1]] = value
    else:
        lst = node.get(parts[-1])
        if not isinstance(lst, list):
            lst = node[parts[-1]] = []
        while len(lst) <= idx:
            lst.append(None)
        lst[idx] = value


def _leaves(tree: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(tree, Mapping) and tree and not (len(tree) == 1 and "$base64" in tree):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}/{k}" if prefix else str(k))
    elif prefix:
        yield prefix


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read and check a mapping file (format in the module docstring)."""
    try:
        m = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise MigrationError(f"mapping file {path}: cannot read it as JSON: {e}") from None
    if not isinstance(m, dict):
        raise MigrationError(f"mapping file {path}: must be a JSON object")
    known = {"rename", "units", "defaults", "copy", "drop", "values", "last_step", "metadata", "format", "description"}
    if set(m) - known:
        raise MigrationError(f"mapping file {path}: unknown keys {sorted(set(m) - known)} (known: {sorted(known)})")
    for k in ("rename", "units", "defaults", "copy", "values"):
        if not isinstance(m.get(k, {}), dict):
            raise MigrationError(f"mapping file {path}: {k!r} must be an object")
    for src, dst in m.get("rename", {}).items():
        if not isinstance(dst, str):
            raise MigrationError(f"mapping file {path}: rename[{src!r}] must be a target path string")
        _split(src), _split(dst)
    for k, u in m.get("units", {}).items():
        if not isinstance(u, dict) or set(u) - {"scale", "offset"} or \
                any(finite(u.get(x, 0)) is None for x in ("scale", "offset")):
            raise MigrationError(f"mapping file {path}: units[{k!r}] must be {{'scale': number, 'offset': number}}")
    for k, v in m.get("copy", {}).items():
        if not isinstance(v, str):
            raise MigrationError(f"mapping file {path}: copy[{k!r}] must be a target path string")
    for k, v in m.get("values", {}).items():
        if not isinstance(v, dict):
            raise MigrationError(f"mapping file {path}: values[{k!r}] must map old values to new ones")
    if not isinstance(m.get("drop", []), list) or not all(isinstance(x, str) for x in m.get("drop", [])):
        raise MigrationError(f"mapping file {path}: 'drop' must be a list of source paths")
    if m.get("last_step", "valid") not in ("valid", "rlds"):
        raise MigrationError(f"mapping file {path}: last_step must be 'valid' or 'rlds'")
    md = m.get("metadata", {})
    if not isinstance(md, dict) or set(md) - {"rename", "defaults"} or \
            not all(isinstance(md.get(k, {}), dict) for k in ("rename", "defaults")):
        raise MigrationError(f"mapping file {path}: 'metadata' must be {{'rename': {{}}, 'defaults': {{}}}}")
    return m


def _read_json_episode(p: Path, digest: Digest | None = None) -> tuple[dict[str, Any], list[Any], bool | None]:
    """(metadata, steps, terminal or None) of a single-file episode; raises ValueError. The file's
    bytes go into ``digest`` (under its name) once read."""
    try:
        raw = p.read_bytes()
        if digest is not None:
            digest.add(p.name, raw)
        if p.name.endswith(".zst"):
            import zstandard  # type: ignore[import-not-found]

            raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, ImportError) as e:
        raise ValueError(f"cannot read {p.name}: {e}") from None
    if p.suffix == ".json":
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"{p.name} is not valid JSON: {e}"[:300]) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
            raise ValueError(f"{p.name}: expected {{'metadata': {{...}}, 'steps': [...]}}")
        meta = doc.get("metadata") or {}
        term = doc.get("end", {}).get("terminal") if isinstance(doc.get("end"), dict) else None
        return (meta if isinstance(meta, dict) else {}), doc["steps"], term if isinstance(term, bool) else None
    meta: dict[str, Any] = {}
    steps: list[Any] = []
    term = None
    for n, ln in enumerate(text.splitlines()):
        if not ln.strip():
            continue
        try:
            obj = json.loads(ln)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"{p.name} line {n + 1} is not valid JSON: {e}"[:300]) from None
        if n == 0 and isinstance(obj, dict) and set(obj) == {"metadata"}:
            meta = obj["metadata"] if isinstance(obj["metadata"], dict) else {}
        elif isinstance(obj, dict) and set(obj) == {"end"} and isinstance(obj["end"], dict):
            t = obj["end"].get("terminal")
            term = t if isinstance(t, bool) else None
        else:
            steps.append(obj)
    return meta, steps, term


def _display_name(p: Path) -> str:
    """The name an input is recorded under: its own name, without the folders above it."""
    return p.name or p.resolve().name or "."


def _find_json_episodes(paths: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Every episode file under ``paths``, with the name the report gives it: the file's own name
    for a file given, ``<folder name>/<path inside it>`` for a folder given."""
    found: list[tuple[Path, str]] = []
    skip = {"schema.json", REPORT_FILE}
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise MigrationError(f"{p} does not exist")
        cands = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for q in cands:
            if q.name in skip or q.name.startswith("."):
                continue
            if q.suffix == ".json" or q.name.endswith((".jsonl", ".jsonl.zst")):
                name = _display_name(p) if q == p else f"{_display_name(p)}/{q.relative_to(p).as_posix()}"
                found.append((q, name))
    if not found:
        raise MigrationError(f"no *.json / *.jsonl episodes under {', '.join(map(str, paths))}")
    return found


def _load_image(value: Any, base: Path, digest: Digest | None = None) -> bytes:
    if isinstance(value, Mapping) and isinstance(value.get("$base64"), str):
        try:
            return base64.b64decode(value["$base64"], validate=True)
        except (ValueError, TypeError) as e:
            raise ValueError(f"bad $base64 image: {e}") from None
    if isinstance(value, str):
        q = (base / value).resolve()
        if not q.is_relative_to(base.resolve()):
            raise ValueError(f"image path {value!r} leaves the episode's folder")
        try:
            data = q.read_bytes()
        except OSError as e:
            raise ValueError(f"image {value!r}: {e.strerror or e}") from None
        if digest is not None:
            digest.add(q.relative_to(base.resolve()).as_posix(), data)
        return data
    raise ValueError(f"image must be a relative file path or {{'$base64': ...}}, got {type(value).__name__}")


def _apply_step_mapping(step: Mapping[str, Any], m: Mapping[str, Any], spec_paths: set[str],
                        unmapped: set[str]) -> dict[str, Any]:
    rename: Mapping[str, str] = m.get("rename", {})
    drop = set(m.get("drop", []))
    new: dict[str, Any] = {}
    consumed: set[str] = set()
    for src, dst in rename.items():
        v = _get(step, src)
        if v is not _MISSING:
            _set(new, dst, v)
            consumed.add("/".join(_split(src)[0]))  # "a/b[0]" consumes the whole a/b
    from rldskit.spec import FLAG_KEYS

    for leaf in _leaves(step):
        if leaf in consumed or leaf in drop or leaf in FLAG_KEYS or any(leaf.startswith(c + "/") for c in consumed):
            continue
        if leaf in spec_paths and _get(new, leaf) is _MISSING:
            _set(new, leaf, _get(step, leaf))
        elif leaf not in spec_paths:
            unmapped.add(leaf)
    for path, table in m.get("values", {}).items():
        v = _get(new, path)
        if isinstance(v, (str, int, float, bool)) and not isinstance(v, bool) and str(v) in table:
            _set(new, path, table[str(v)])
    for path, u in m.get("units", {}).items():
        v = _get(new, path)
        if v is _MISSING or v is None:
            continue
        scale, offset = float(u.get("scale", 1.0)), float(u.get("offset", 0.0))
        if isinstance(v, list):
            _set(new, path, [x * scale + offset if finite(x) is not None else x for x in v])
        elif finite(v) is not None:
            _set(new, path, v * scale + offset)
        else:
            raise ValueError(f"units[{path!r}]: value {v!r:.60} is not a number")
    for path, dv in m.get("defaults", {}).items():
        cur = _get(new, path)
        if cur is _MISSING or cur is None:
            _set(new, path, dv)
    for path, src in m.get("copy", {}).items():
        v = _get(new, src)
        if v is not _MISSING:
            _set(new, path, v)
    return new


def migrate_rlds_json(paths: str | Path | Sequence[str | Path], out: str | Path, *, mapping_file: str | Path,
                      target: str = "pi5_donkey.v1", environment_id: str | None = None,
                      resize: bool = True) -> MigrationReport:
    """Rewrite older single-file JSON episodes for ``target`` with the mapping file (format in
    the module docstring). Raises :class:`MigrationError` for a bad mapping, target or path."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = Path(out)
    spec = load_target(target)
    m = load_mapping(mapping_file)
    files = _find_json_episodes(paths)
    out_abs = out.resolve()
    files = [(f, name) for f, name in files if not f.resolve().is_relative_to(out_abs)]
    spec_paths = set(spec.step_leaves)
    ts_streams = list(spec.steps.get("timestamp", {}))
    frames = Frames(spec.leaf("observation/image"), resize)
    report = MigrationReport("rlds_json", spec.id, str(out))
    report.hide(out, ".")
    for raw_path in paths:
        report.hide(raw_path, _display_name(Path(raw_path)))
    mapping_path = Path(mapping_file)
    report.hide(mapping_path, mapping_path.name)
    report.notes.append(f"mapping file: {mapping_path.name} (sha256 {hashlib.sha256(mapping_path.read_bytes()).hexdigest()})")
    clock_state = {"t": 0.0}
    out.mkdir(parents=True, exist_ok=True)
    logger = make_logger(out, spec, lambda: clock_state["t"])
    used: set[str] = set()
    mmeta = m.get("metadata", {})
    for f, name in files:
        res = EpisodeResult(source=name)
        report.episodes.append(res)
        src = SourceResult(name)
        report.sources.append(src)
        digest = Digest()
        try:
            _migrate_json_file(f, res, m, mmeta, spec, spec_paths, ts_streams, frames, out, used, logger, clock_state,
                               environment_id, digest)
        finally:
            src.sha256, src.files = digest.hexdigest(), len(digest.files)
    report.write()
    return report


def _migrate_json_file(f: Path, res: EpisodeResult, m: Mapping[str, Any], mmeta: Mapping[str, Any], spec: Any,
                       spec_paths: set[str], ts_streams: list[str], frames: Frames, out: Path, used: set[str],
                       logger: Any, clock_state: dict[str, float], environment_id: str | None, digest: Digest) -> None:
    """Migrate one JSON episode file into ``res`` (imported, exists or quarantined with the reason)."""
    try:
        meta, raw_steps, terminal = _read_json_episode(f, digest)
    except ValueError as e:
        mark_quarantined(res, str(e))
        return
    for src, dst in mmeta.get("rename", {}).items():
        if src in meta:
            meta[dst] = meta.pop(src)
    for k, v in mmeta.get("defaults", {}).items():
        meta.setdefault(k, v)
    res.source_records = len(raw_steps)
    unmapped: set[str] = set()
    frames.sizes = {}
    steps: list[dict[str, Any]] = []
    err = None
    if m.get("last_step") == "rlds" and raw_steps:
        raw_steps = raw_steps[:-1]
        res.warnings.append("dropped the source's observation-only final step (last_step: rlds)")
    for i, s in enumerate(raw_steps):
        if not isinstance(s, dict):
            err = f"step {i} is not a JSON object"
            break
        if i == len(raw_steps) - 1 and terminal is None and isinstance(s.get("is_terminal"), bool):
            terminal = s["is_terminal"]
        try:
            new = _apply_step_mapping(s, m, spec_paths, unmapped)
            ts = new.get("timestamp") if isinstance(new.get("timestamp"), dict) else {}
            missing = [k for k in ts_streams if finite(ts.get(k)) is None]
            if missing:
                raise ValueError(f"timestamp/{missing[0]} is missing or not a number after mapping "
                                 "(map it with rename/copy; it is never filled with the migration time)")
            obs = dict(new.get("observation") or {})
            img = obs.get("image", _MISSING)
            if img is _MISSING or img is None:
                raise ValueError("observation/image is missing after mapping")
            enc, why = frames.convert(_load_image(img, f.parent, digest))
            if enc is None:
                raise ValueError(f"observation/image: {why}")
            obs["image"] = enc
            new["observation"] = obs
        except ValueError as e:
            err = f"step {i}: {e}"
            break
        steps.append(new)
    res.resize = frames.resize_record(len(steps))
    if unmapped:
        res.warnings.append(f"source keys not mapped and not in {spec.id} (dropped): {sorted(unmapped)[:20]}")
    if err is None and not steps:
        err = "no steps"
    if err is None:
        tsc = [float(s["timestamp"][ts_streams[0]]) for s in steps] if ts_streams else []
        back = [k for k in range(1, len(tsc)) if tsc[k] <= tsc[k - 1]]
        if back:
            err = f"timestamps go backwards or repeat at {len(back)} steps (first at step {back[0]})"
    if err is not None:
        mark_quarantined(res, err)
        return
    base_id = meta.get("episode_id") if isinstance(meta.get("episode_id"), str) and meta.get("episode_id") else \
        f.name.split(".")[0]
    eid = unique_id(base_id, out, used, f.stem)
    res.episode_id = eid
    if (out / eid).exists():
        res.status, res.path = "exists", str(out / eid)
        res.reason = "an episode of this id is already in the output folder; left unchanged"
        return
    schema = meta.get("schema") if isinstance(meta.get("schema"), dict) else {}
    old = f"{schema.get('name', 'unknown')}@{schema.get('version', '?')}"
    tags = [str(x) for x in meta.get("tags", []) if isinstance(x, (str, int, float))] \
        if isinstance(meta.get("tags"), list) else []
    tags += ["origin:jetson", f"migrated_from:rlds_json:{old}", f"source_file:{f.name}"]
    extra_meta = {k: meta[k] for k in spec.metadata_leaves if k in meta and not k.endswith("_present") and k not in
                  ("episode_id", "environment_id", "xr_mode", "control_role", "tags", "start_time")}
    ignored_meta = sorted(set(meta) - set(spec.metadata_leaves) - {
        "episode_id", "environment_id", "xr_mode", "control_role", "tags", "format", "schema", "status", "end",
        "start_time"})
    if ignored_meta:
        res.warnings.append(f"metadata keys not declared by {spec.id} (dropped): {ignored_meta[:20]}")
    env = environment_id if environment_id is not None else str(meta.get("environment_id") or "jetson_migrated")
    clock_state["t"] = float(steps[0]["timestamp"][ts_streams[0]]) if ts_streams else 0.0
    try:
        logger.start_episode(environment_id=env, xr_mode=str(meta.get("xr_mode", "")),
                             control_role=str(meta.get("control_role", "")), tags=tags, episode_id=eid,
                             metadata=extra_meta)
        reserved = {"observation", "action", "reward", "discount", "timestamp"}
        for k, s in enumerate(steps):
            if ts_streams:
                clock_state["t"] = float(s["timestamp"][ts_streams[0]])
            extras = {x: v for x, v in s.items() if x not in reserved and x in spec.steps}
            try:
                logger.log_step(s["observation"], s.get("action"), reward=s.get("reward", 0.0),
                                discount=s.get("discount", 1.0), timestamps=s.get("timestamp"), extras=extras)
            except ValueError as e:
                raise ValueError(f"after mapping: {e}") from None
        path = logger.end_episode(terminal=bool(terminal))
    except (ValueError, OSError, TypeError) as e:
        p = logger.episode_path
        logger.close()
        if p is not None:
            shutil.rmtree(p, ignore_errors=True)
        mark_quarantined(res, str(e))
        return
    res.path, res.steps = str(path), len(steps)
    validate_written(Path(path), spec, res)


# ---------------------------------------------------------------- CLI

def cmd_import_rlds_json(args: argparse.Namespace) -> int:
    try:
        report = migrate_rlds_json(args.paths, args.out, mapping_file=args.mapping, target=args.target,
                                   environment_id=args.environment_id, resize=not args.no_resize)
    except (MigrationError, OSError) as e:
        print(f"rldskit import rlds-json: {e}", file=sys.stderr)
        return 2
    print_report(report, args.json)
    return report.exit_code


def add_import_parser(import_subparsers: Any) -> None:
    """Add ``rlds-json`` to an ``import`` sub-command's subparsers. It sets ``func`` returning the
    exit code: 0 ok, 1 some episodes quarantined, 2 usage/unreadable."""
    r = import_subparsers.add_parser(
        "rlds-json", help="migrate older single-file JSON episodes with a key mapping",
        description="Rewrite older-schema JSON episodes for the target spec using a mapping file.")
    r.add_argument("paths", nargs="+", metavar="PATHS", help="*.json / *.jsonl episodes or folders of them")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--mapping", required=True, metavar="FILE", help="mapping file (rename/units/defaults/copy/...)")
    r.add_argument("--target", default="pi5_donkey.v1")
    r.add_argument("--no-resize", action="store_true")
    r.add_argument("--environment-id", default=None, help="default: the source metadata's, else jetson_migrated")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_import_rlds_json)
