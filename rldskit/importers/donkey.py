"""Jetson -> Pi migration of Donkeycar v2 tubs into a Pi layout.

:func:`import_donkey` writes capture-layout episodes (:class:`rldskit.capture.EpisodeLogger`)
for the target spec (default ``pi5_donkey.v1``) under ``out/``, plus
``out/migration_report.json`` (:class:`rldskit.importers.migration.MigrationReport`; a tub is
named by its folder name, with a sha256 digest of the files read from it). Older single-file
RLDS JSON episodes are migrated by :mod:`rldskit.importers.rlds_json`.

It reads Donkeycar 4.x/5.x "tub v2" folders (``donkeycar/parts/tub_v2.py`` +
``datastore_v2.py``)::

      <tub>/manifest.json          line 1 inputs   ["cam/image_array", "user/angle", ...]
                                   line 2 types    ["image_array", "float", ...]
                                   line 3 metadata {}
                                   line 4 manifest metadata {"created_at", "sessions": {...}}
                                   line 5 catalogs {"paths": [...], "current_index", "max_len",
                                                    "deleted_indexes": [...]}
      <tub>/catalog_N.catalog      one JSON record per line (``\\r\\n``): "_index",
                                   "_session_id", "_timestamp_ms" and the inputs
      <tub>/catalog_N.catalog_manifest   line lengths (not needed, not read)
      <tub>/images/<index>_cam_image_array_.jpg

Donkeycar tub -> pi5_donkey mapping
-----------------------------------
* one recording session (``_session_id``, e.g. ``21-03-05_0``) = one episode; its id is the
  session id (made folder-safe; if two tubs share a session id the later gets
  ``__<tub name>`` appended). A tub where *no* record has a session id (an older Donkeycar)
  is one episode named after the tub, with a ``NO_SESSION_IDS`` warning; in a tub with
  session ids, a record without one is dropped (``SESSION_ID_MISSING``), never made an
  episode. Episodes end truncated (``terminal=False``): a session ends when the operator stops.
* ``_timestamp_ms / 1000`` -> ``timestamp/control`` **and** ``timestamp/camera``: the Jetson
  tub has one clock (the record time of the drive loop), so both streams get the same value.
* ``user/mode`` -> ``control_mode`` and which values were *executed* (Donkeycar's DriveMode):

  ============== ============ =================================================
  user/mode      control_mode action = executed [steering, throttle]
  ============== ============ =================================================
  ``user``       ``user``     [user/angle, user/throttle]
  ``local_angle````pilot``    [pilot/angle, user/throttle] (pilot steers only)
  ``local``      ``pilot``    [pilot/angle, pilot/throttle]
  ``pilot``      ``pilot``    [pilot/angle, pilot/throttle]
  ============== ============ =================================================

  Without a ``user/mode`` input every step is ``user``. ``mapping={"executed": "user"}``
  always takes the ``user/*`` values as the action instead. ``mapping={"modes": {"x":
  "teleop"}}`` adds modes (executed values then come from ``user/*`` for user/teleop and
  ``pilot/*`` for pilot). An unknown mode quarantines the episode (never guessed).
* ``pilot/angle``, ``pilot/throttle`` -> ``policy_action`` (what the pilot proposed) when
  both are finite numbers in [-1, 1]; absent otherwise.
* frames: decoded and, when their size differs from the target (Donkeycar default 120x160,
  Pi 480x640), resized with PIL bilinear and re-encoded as JPEG (quality 90); a frame already
  of the target size and encoding is copied byte for byte. ``resize=False`` refuses a tub
  whose frames differ (:class:`MigrationError`, nothing written).
* tags ``origin:jetson``, ``migrated_from:donkeycar_tub_v2``, ``source_tub:<name>``;
  ``environment_id`` as given. Other inputs (IMU, lidar, ...) are listed as unmapped.
* ``mapping`` may also rename the tub keys: ``{"image": "cam/image_array", "angle":
  "user/angle", "throttle": "user/throttle", "mode": "user/mode", "pilot_angle":
  "pilot/angle", "pilot_throttle": "pilot/throttle"}`` (these are the defaults).

Damage policy (consistent for every kind of record damage)
----------------------------------------------------------
* **Every catalog line is accounted for.** Per tub, ``lines_in`` (non-blank catalog lines)
  ``== imported_steps + dropped``, and ``dropped_by_reason`` counts each dropped line under
  one issue code of :data:`rldskit.issues.CODES` (the import raises if the sum ever fails).
* **A record that cannot become a valid step is dropped and the hole is reported as a gap**
  (the output steps stay contiguous; the gap lists the source indexes and why), each drop
  naming its catalog, line, index and field: records marked deleted (``DELETED``), corrupt
  lines (``CORRUPT_LINE``, ``CORRUPT_RECORD``), a torn last line (a crash while recording;
  everything before it is kept, ``TORN_LINE``), an ``_index`` that is missing, not an
  integer or negative (``INDEX_INVALID``), no session id in a tub that has them
  (``SESSION_ID_MISSING``), a ``_timestamp_ms`` outside [2000-01-01, 2100-01-01)
  (``TIMESTAMP_IMPLAUSIBLE``: an unset clock or a 0 never becomes a 1970 step), a missing or
  undecodable image file (``MISSING_IMAGE``, ``BAD_IMAGE``), missing/non-finite/out-of-range
  steering or throttle (``BAD_VALUE``, ``OUT_OF_RANGE``).
* **One index, one record.** An ``_index`` on several lines with different content drops
  all of them (``INDEX_CONFLICT``: which one is the recording cannot be known, so none
  silently replaces another); an exact copy of a line keeps the first (``DUPLICATE_RECORD``).
  Records out of ``_index`` order are imported in ``_index`` order with one
  ``INDEX_OUT_OF_ORDER`` warning (the timestamps are then checked in that order).
* **An episode-level problem quarantines the episode** (nothing is written for it; the report
  gives the reason and counts its records as ``EPISODE_QUARANTINED``): timestamps that go
  backwards or repeat, an unknown drive mode (``UNKNOWN_MODE``), no usable step left, or a
  written episode failing validation. An episode already in ``out`` is left alone and its
  records counted as ``EPISODE_EXISTS``. Rate problems (``RATE_OUT_OF_BAND``) and timestamp
  skew of a real tub are reported as warnings only.
* An unreadable or malformed ``manifest.json`` is a usage error: :class:`MigrationError`
  is raised before anything is written (CLI exit 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rldskit.importers.migration import (
    MAX_DROPPED_LISTED, Digest, EpisodeResult, Frames, MigrationError, MigrationReport, SourceResult, add_count,
    finite, issue, load_target, make_logger, mark_quarantined, print_report, unique_id, validate_written)

__all__ = ["import_donkey", "add_import_parser", "DEFAULT_TUB_KEYS", "DEFAULT_MODES", "MIN_TIMESTAMP_MS",
           "MAX_TIMESTAMP_MS"]

DEFAULT_TUB_KEYS = {"image": "cam/image_array", "angle": "user/angle", "throttle": "user/throttle",
                    "mode": "user/mode", "pilot_angle": "pilot/angle", "pilot_throttle": "pilot/throttle"}
#: Donkeycar ``user/mode`` -> (control_mode, steering source, throttle source)
DEFAULT_MODES: dict[str, tuple[str, str, str]] = {
    "user": ("user", "user", "user"),
    "local_angle": ("pilot", "pilot", "user"),
    "local": ("pilot", "pilot", "pilot"),
    "pilot": ("pilot", "pilot", "pilot"),
}
#: A Donkeycar record's ``_timestamp_ms`` is wall-clock time (``time.time() * 1000``); outside
#: [2000-01-01, 2100-01-01) UTC it is an unset clock, a 0 or garbage, and the record is dropped.
MIN_TIMESTAMP_MS = 946_684_800_000
MAX_TIMESTAMP_MS = 4_102_444_800_000
_MISSING = object()


def _image_size(data: bytes) -> tuple[int, int] | None:
    from rldskit import images

    try:
        info = images.probe(data)
        return info.height, info.width
    except Exception:  # noqa: BLE001
        return None


def _round_or_none(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


# ---------------------------------------------------------------- donkeycar tubs

@dataclasses.dataclass
class _Tub:
    path: Path
    name: str
    inputs: list[str]
    types: list[str]
    metadata: dict[str, Any]
    manifest_metadata: dict[str, Any]
    catalogs: list[str]
    deleted: set[int]
    current_index: int | None
    digest: Digest = dataclasses.field(default_factory=Digest)


@dataclasses.dataclass
class _Rec:
    """One catalog record with a valid ``_index`` and the line it came from (1-based)."""

    index: int
    rec: dict[str, Any]
    catalog: str
    line: int

    def where(self) -> str:
        return f"{self.catalog} line {self.line}"


def _read_manifest(tub: Path) -> _Tub:
    mf = tub / "manifest.json"
    if not tub.is_dir():
        raise MigrationError(f"{tub}: not a folder (expected a Donkeycar tub folder holding manifest.json)")
    try:
        raw = mf.read_bytes()
    except OSError as e:
        raise MigrationError(f"{mf}: cannot read the tub manifest ({e.strerror or e}); is this a Donkeycar v2 tub?") from None
    lines = [ln.strip() for ln in raw.split(b"\n")]
    lines = [ln for ln in lines if ln]
    if len(lines) < 5:
        raise MigrationError(f"{mf}: a tub v2 manifest has 5 JSON lines (inputs, types, metadata, manifest metadata, "
                             f"catalogs); found {len(lines)}")
    parsed = []
    names = ["inputs", "types", "metadata", "manifest metadata", "catalogs"]
    for n, (ln, what) in enumerate(zip(lines[:5], names), 1):
        try:
            parsed.append(json.loads(ln.decode("utf-8")))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise MigrationError(f"{mf}: line {n} ({what}) is not valid JSON: {e}"[:300]) from None
    inputs, types, meta, mmeta, cat = parsed
    if not (isinstance(inputs, list) and all(isinstance(x, str) for x in inputs)):
        raise MigrationError(f"{mf}: line 1 (inputs) must be a list of key names")
    if not (isinstance(types, list) and all(isinstance(x, str) for x in types)) or len(types) != len(inputs):
        raise MigrationError(f"{mf}: line 2 (types) must be a list of type names, one per input ({len(inputs)})")
    if not isinstance(meta, dict) or not isinstance(mmeta, dict):
        raise MigrationError(f"{mf}: lines 3-4 (metadata) must be JSON objects")
    if not isinstance(cat, dict) or not isinstance(cat.get("paths"), list) or \
            not all(isinstance(p, str) for p in cat["paths"]):
        raise MigrationError(f"{mf}: line 5 (catalogs) must be an object with a 'paths' list of catalog file names")
    for p in cat["paths"]:
        if Path(p).name != p or p in ("", ".", ".."):
            raise MigrationError(f"{mf}: catalog path {p!r} is not a plain file name inside the tub")
    deleted = cat.get("deleted_indexes", [])
    if not isinstance(deleted, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in deleted):
        raise MigrationError(f"{mf}: line 5 'deleted_indexes' must be a list of record indexes")
    ci = cat.get("current_index")
    t = _Tub(tub, tub.resolve().name, inputs, types, meta, mmeta, list(cat["paths"]), set(deleted),
             ci if isinstance(ci, int) and not isinstance(ci, bool) else None)
    t.digest.add("manifest.json", raw)
    return t


def _short(v: Any) -> str:
    try:
        text = json.dumps(v, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _index_problem(rec: Mapping[str, Any]) -> str | None:
    """Why a record's ``_index`` is unusable, or None (a non-negative integer, as Donkeycar writes)."""
    if "_index" not in rec:
        return "no _index (expected the record's non-negative integer index)"
    idx = rec["_index"]
    if isinstance(idx, bool) or not isinstance(idx, int):
        return f"_index {_short(idx)} is not an integer (expected the record's non-negative integer index)"
    if idx < 0:
        return f"_index {idx} is negative (Donkeycar numbers records from 0)"
    return None


def _canonical(rec: Mapping[str, Any]) -> str:
    try:
        return json.dumps(rec, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        return f"<unserialisable {id(rec)}>"  # never equal to another record: a conflict, not a duplicate


def _read_records(tub: _Tub, src: SourceResult, index_reasons: dict[int, str]) -> list[_Rec]:
    """The usable records of every catalog, in ``_index`` order. Every non-blank line is counted
    in ``src.lines_in``; a line that cannot be used here is dropped into ``src`` with its code:
    ``TORN_LINE``, ``CORRUPT_LINE``, ``CORRUPT_RECORD``, ``INDEX_INVALID`` (missing, non-integer,
    negative), ``INDEX_CONFLICT`` (an index on several lines with different content: all of them
    are dropped, never one silently chosen) and ``DUPLICATE_RECORD`` (an exact copy: the first is
    kept). Records out of ``_index`` order are kept and reported once (``INDEX_OUT_OF_ORDER``)."""
    candidates: list[_Rec] = []
    for cname in tub.catalogs:
        cp = tub.path / cname
        try:
            raw = cp.read_bytes()
        except OSError as e:
            src.note("CATALOG_MISSING", f"{cname}: cannot read it ({e.strerror or e}); its records are neither "
                     "imported nor counted in lines_in", catalog=cname)
            continue
        tub.digest.add(cname, raw)
        parts = raw.split(b"\n")
        ends_clean = raw.endswith(b"\n") or not raw
        last = len(parts) - 1
        for n, ln in enumerate(parts):
            ln = ln.rstrip(b"\r")
            if not ln.strip():
                continue
            assert src.lines_in is not None
            src.lines_in += 1
            torn = n == last and not ends_clean
            try:
                rec = json.loads(ln.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                if torn:
                    src.drop("TORN_LINE", cname, n + 1, "last line is cut off (crash while recording); "
                             "everything before it is kept")
                else:
                    src.drop("CORRUPT_LINE", cname, n + 1, f"line is not valid UTF-8 JSON ({type(e).__name__}); "
                             "expected one JSON record")
                continue
            if not isinstance(rec, dict):
                src.drop("CORRUPT_RECORD", cname, n + 1, f"line is a JSON {type(rec).__name__}, not a record (an object)")
                continue
            why = _index_problem(rec)
            if why is not None:
                src.drop("INDEX_INVALID", cname, n + 1, why, field="_index")
                continue
            candidates.append(_Rec(rec["_index"], rec, cname, n + 1))
    by_index: dict[int, list[_Rec]] = {}
    for r in candidates:
        by_index.setdefault(r.index, []).append(r)
    kept: list[_Rec] = []
    for r in candidates:  # catalog order
        group = by_index[r.index]
        if len(group) == 1:
            kept.append(r)
            continue
        where = ", ".join(g.where() for g in group)
        if len({_canonical(g.rec) for g in group}) > 1:
            src.drop("INDEX_CONFLICT", r.catalog, r.line, f"_index {r.index} is on {len(group)} lines with different "
                     f"content ({where}): none of them is imported (which one is the recording cannot be known)",
                     index=r.index, field="_index")
            index_reasons[r.index] = "INDEX_CONFLICT"
        elif r is group[0]:
            kept.append(r)
        else:
            src.drop("DUPLICATE_RECORD", r.catalog, r.line, f"_index {r.index}: the same record as {group[0].where()}; "
                     "the first is kept, this copy dropped", index=r.index, field="_index")
    late: list[tuple[_Rec, _Rec]] = []
    top: _Rec | None = None
    for r in kept:
        if top is not None and r.index < top.index:
            late.append((r, top))
        if top is None or r.index > top.index:
            top = r
    if late:
        r, top = late[0]
        src.note("INDEX_OUT_OF_ORDER", f"{len(late)} records come after a record of a higher _index (first: _index "
                 f"{r.index} at {r.where()} after _index {top.index} at {top.where()}); they are imported in _index order",
                 count=len(late), catalog=r.catalog, line=r.line, index=r.index)
    return sorted(kept, key=lambda r: r.index)


def _session_of(rec: Mapping[str, Any]) -> str | None:
    sid = rec.get("_session_id")
    return sid if isinstance(sid, str) and sid.strip() else None


def import_donkey(tub_paths: str | Path | Sequence[str | Path], out: str | Path, *, target: str = "pi5_donkey.v1",
                  mapping: Mapping[str, Any] | None = None, environment_id: str = "jetson_migrated",
                  resize: bool = True) -> MigrationReport:
    """Import Donkeycar v2 tubs into ``out`` (see the module docstring for the mapping and
    the damage policy). Raises :class:`MigrationError` before writing anything when a
    manifest is unreadable, the mapping is bad, or ``resize=False`` and frames differ."""
    if isinstance(tub_paths, (str, Path)):
        tub_paths = [tub_paths]
    out = Path(out)
    spec = load_target(target)
    mapping = dict(mapping or {})
    keys = dict(DEFAULT_TUB_KEYS)
    modes = dict(DEFAULT_MODES)
    unknown_opts = set(mapping) - {"modes", "executed", *DEFAULT_TUB_KEYS}
    if unknown_opts:
        raise MigrationError(f"mapping: unknown keys {sorted(unknown_opts)} (known: modes, executed, {', '.join(DEFAULT_TUB_KEYS)})")
    for k in DEFAULT_TUB_KEYS:
        if k in mapping:
            if not isinstance(mapping[k], str):
                raise MigrationError(f"mapping: {k!r} must be a tub key name")
            keys[k] = mapping[k]
    choices = getattr(spec.leaf("control_mode"), "choices", None) if "control_mode" in spec.steps else None
    for m, cm in dict(mapping.get("modes") or {}).items():
        if not isinstance(cm, str) or (choices and cm not in choices):
            raise MigrationError(f"mapping: mode {m!r} -> {cm!r}: must be one of {list(choices or [])}")
        src = "pilot" if cm == "pilot" else "user"
        modes[str(m)] = (cm, src, src)
    executed = mapping.get("executed", "mode")
    if executed not in ("mode", "user"):
        raise MigrationError("mapping: 'executed' must be 'mode' (Donkeycar DriveMode) or 'user'")
    has_policy = "policy_action" in spec.steps
    has_mode = "control_mode" in spec.steps

    tubs = [_read_manifest(Path(p)) for p in tub_paths]  # every manifest checked before writing
    for t in tubs:
        if keys["image"] not in t.inputs:
            raise MigrationError(f"{t.path}/manifest.json: no image input {keys['image']!r} (inputs: {t.inputs}); "
                                 "pass mapping={'image': '<key>'}")
        for k in ("angle", "throttle"):
            if keys[k] not in t.inputs:
                raise MigrationError(f"{t.path}/manifest.json: no {keys[k]!r} input (inputs: {t.inputs})")
    frames = Frames(spec.leaf("observation/image"), resize)
    if not resize:
        for t in tubs:
            first = next(iter(sorted((t.path / "images").glob("*.jpg"))), None) if (t.path / "images").is_dir() else None
            size = _image_size(first.read_bytes()) if first else None
            if size and size != (frames.h, frames.w):
                raise MigrationError(f"{t.path}: frames are {size[0]}x{size[1]} but {spec.id} expects {frames.h}x{frames.w}; "
                                     "rerun without --no-resize to resize them (bilinear) or record at the Pi's size")

    report = MigrationReport("donkeycar_tub_v2", spec.id, str(out))
    report.hide(out, ".")
    for t in tubs:
        report.hide(t.path, t.name)
    report.notes += [
        "Jetson tubs have one clock: timestamp/camera = timestamp/control = _timestamp_ms / 1000.",
        "control_mode from user/mode: user->user, local_angle->pilot (pilot steering, user throttle), "
        "local/pilot->pilot; action = the executed values"
        + (" (mapping executed=user: always user/angle, user/throttle)" if executed == "user" else "")
        + "; policy_action = [pilot/angle, pilot/throttle] when recorded.",
        "Damaged records (deleted, corrupt, torn, bad or conflicting _index, no session id, implausible time, "
        "missing image, bad values) are dropped and reported as gaps; episode-level problems quarantine the episode. "
        "Every catalog line is accounted for: lines_in = imported_steps + dropped (by reason code).",
    ]
    clock_state = {"t": 0.0}
    out.mkdir(parents=True, exist_ok=True)
    logger = make_logger(out, spec, lambda: clock_state["t"])
    used: set[str] = set()
    for t in tubs:
        _import_tub(t, out, spec, logger, report, keys, modes, executed, frames, environment_id, used, clock_state,
                    has_policy, has_mode)
    report.write()
    return report


def _import_tub(t: _Tub, out: Path, spec: Any, logger: Any, report: MigrationReport, keys: dict[str, str],
                modes: dict[str, tuple[str, str, str]], executed: str, frames: Frames, environment_id: str,
                used: set[str], clock_state: dict[str, float], has_policy: bool, has_mode: bool) -> None:
    src = SourceResult(t.name, lines_in=0, imported_steps=0, dropped=0, dropped_by_reason={})
    report.sources.append(src)
    index_reasons: dict[int, str] = {i: "DELETED" for i in t.deleted}
    records = _read_records(t, src, index_reasons)
    mapped = set(keys.values())
    unmapped = [k for k in t.inputs if k not in mapped]
    if unmapped:
        report.warnings.append(f"{t.name}: inputs not carried over (no place in {spec.id}): {unmapped}")
    if keys["mode"] not in t.inputs:
        report.warnings.append(f"{t.name}: no {keys['mode']!r} input: every step is taken as control_mode 'user'")
    # sessions in order of first record. A tub where no record has a session id (an older
    # Donkeycar) is one session named after the tub; in a tub with session ids, a record
    # without one cannot be placed and is dropped (never made an episode of its own).
    with_sessions = any(_session_of(r.rec) is not None for r in records)
    sessions: dict[str, list[_Rec]] = {}
    for r in records:
        sid = _session_of(r.rec)
        if sid is None and with_sessions:
            if r.index in t.deleted:
                src.drop("DELETED", r.catalog, r.line, "marked deleted in manifest.json (deleted_indexes)", index=r.index)
            else:
                raw = r.rec.get("_session_id", _MISSING)
                what = "no _session_id" if raw is _MISSING else f"_session_id {_short(raw)} is not a session name"
                src.drop("SESSION_ID_MISSING", r.catalog, r.line, f"{what} (expected a non-empty string such as "
                         "'21-03-05_0', as the tub's other records have): its episode cannot be known",
                         index=r.index, field="_session_id")
                index_reasons[r.index] = "SESSION_ID_MISSING"
            continue
        sessions.setdefault(sid if sid is not None else t.name, []).append(r)
    tub_episodes: list[EpisodeResult] = []
    if not sessions:
        res = EpisodeResult(source=t.name, session_id=None)
        mark_quarantined(res, "the tub holds no usable records (see the source's dropped_records)" if src.lines_in
                    else "the tub holds no records")
        report.episodes.append(res)
        tub_episodes.append(res)
    for sid, recs in sessions.items():
        res = EpisodeResult(source=t.name, session_id=sid, source_records=len(recs))
        if not with_sessions:
            res.note("NO_SESSION_IDS", f"no record of {t.name} has a _session_id (a tub from an older Donkeycar): the "
                     "whole tub is taken as one recording session, named after the tub folder")
        report.episodes.append(res)
        tub_episodes.append(res)
        _import_session(t, sid, recs, res, out, spec, logger, keys, modes, executed, frames, environment_id, used,
                        clock_state, has_policy, has_mode, index_reasons)
    _close_accounting(src, tub_episodes, report)
    src.sha256, src.files = t.digest.hexdigest(), len(t.digest.files)


def _close_accounting(src: SourceResult, episodes: list[EpisodeResult], report: MigrationReport) -> None:
    """Add the episodes' counts to the tub's and check ``lines_in == imported_steps + dropped``."""
    assert src.dropped_by_reason is not None and src.lines_in is not None
    tub_level = sum(src.dropped_by_reason.values())
    if tub_level > len(src.dropped_records):
        report.warnings.append(f"{src.source}: {tub_level} catalog lines dropped before joining a session; the first "
                               f"{len(src.dropped_records)} are listed in dropped_records")
    for e in episodes:
        for code, n in e.dropped_by_reason.items():
            add_count(src.dropped_by_reason, code, n)
    src.dropped_by_reason = dict(sorted(src.dropped_by_reason.items()))
    src.imported_steps = sum(e.steps for e in episodes if e.status == "imported")
    src.dropped = sum(src.dropped_by_reason.values())
    if src.lines_in != src.imported_steps + src.dropped:  # a bug here, never the input's fault: fail loudly
        raise RuntimeError(f"{src.source}: accounting does not add up: {src.lines_in} catalog lines != "
                           f"{src.imported_steps} imported + {src.dropped} dropped {src.dropped_by_reason}")


def _num(rec: Mapping[str, Any], key: str) -> float | None:
    return finite(rec.get(key))


def _import_session(t: _Tub, sid: str, recs: list[_Rec], res: EpisodeResult, out: Path, spec: Any,
                    logger: Any, keys: dict[str, str], modes: dict[str, tuple[str, str, str]], executed: str,
                    frames: Frames, environment_id: str, used: set[str], clock_state: dict[str, float],
                    has_policy: bool, has_mode: bool, index_reasons: dict[int, str]) -> None:
    """Turn one session's records into an episode. Every record ends as a step or in
    ``res.dropped_by_reason`` (its own reason, or ``EPISODE_QUARANTINED`` / ``EPISODE_EXISTS``)."""
    steps: list[dict[str, Any]] = []   # {"index", "t", "image", "action", "mode", "policy"}
    dropped: list[dict[str, Any]] = []
    unknown_modes: dict[str, int] = {}
    policy_oob = 0
    frames.sizes = {}
    images_dir = t.path / "images"
    for rr in recs:
        idx, r = rr.index, rr.rec

        def drop(code: str, msg: str, field: str | None = None) -> None:
            extra = {"field": field} if field else {}
            dropped.append(issue(code, msg, index=idx, catalog=rr.catalog, line=rr.line, **extra))
            add_count(res.dropped_by_reason, code)
            index_reasons[idx] = code

        if idx in t.deleted:
            drop("DELETED", "marked deleted in manifest.json (deleted_indexes)")
            continue
        ms = _num(r, "_timestamp_ms")
        if ms is None:
            drop("BAD_VALUE", f"_timestamp_ms {_short(r.get('_timestamp_ms'))} is missing or not a finite number "
                 "(expected wall-clock milliseconds)", "_timestamp_ms")
            continue
        if not MIN_TIMESTAMP_MS <= ms < MAX_TIMESTAMP_MS:
            drop("TIMESTAMP_IMPLAUSIBLE", f"_timestamp_ms {ms:.17g} is not a wall-clock time in [2000-01-01, 2100-01-01) "
                 "UTC (the drive loop's clock unset, a 0 or garbage)", "_timestamp_ms")
            continue
        mode_raw = r.get(keys["mode"], "user") if keys["mode"] in t.inputs else "user"
        if not isinstance(mode_raw, str):
            drop("BAD_VALUE", f"{keys['mode']} {_short(mode_raw)} is not a string (expected a drive mode)", keys["mode"])
            continue
        if mode_raw not in modes:
            unknown_modes[mode_raw] = unknown_modes.get(mode_raw, 0) + 1
            drop("UNKNOWN_MODE", f"{keys['mode']} {_short(mode_raw)} is not a known drive mode {sorted(modes)}", keys["mode"])
            continue
        cm, s_src, th_src = modes[mode_raw]
        if executed == "user":
            s_src = th_src = "user"
        steer = _num(r, keys["angle"] if s_src == "user" else keys["pilot_angle"])
        thr = _num(r, keys["throttle"] if th_src == "user" else keys["pilot_throttle"])
        if steer is None or thr is None:
            drop("BAD_VALUE", f"executed steering/throttle ({s_src}/{th_src} values for mode {mode_raw!r}) missing or not "
                 "finite numbers", f"{s_src}/angle" if steer is None else f"{th_src}/throttle")
            continue
        if not (-1.0 - 1e-6 <= steer <= 1.0 + 1e-6 and -1.0 - 1e-6 <= thr <= 1.0 + 1e-6):
            drop("OUT_OF_RANGE", f"steering {steer:g} / throttle {thr:g} outside [-1, 1]")
            continue
        policy = None
        pa, pt = _num(r, keys["pilot_angle"]), _num(r, keys["pilot_throttle"])
        if has_policy and pa is not None and pt is not None:
            if -1.0 <= pa <= 1.0 and -1.0 <= pt <= 1.0:
                policy = [pa, pt]
            else:
                policy_oob += 1
        name = r.get(keys["image"])
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            drop("BAD_VALUE", f"{keys['image']} {_short(name)} is not an image file name in images/", keys["image"])
            continue
        try:
            data = (images_dir / name).read_bytes()
        except OSError:
            drop("MISSING_IMAGE", f"images/{name} is missing or unreadable", keys["image"])
            continue
        t.digest.add(f"images/{name}", data)
        enc, why = frames.convert(data)
        if enc is None:
            drop("BAD_IMAGE", f"images/{name}: {why}", keys["image"])
            continue
        steps.append({"index": idx, "t": ms / 1000.0, "image": enc, "action": [max(-1.0, min(1.0, steer)), max(-1.0, min(1.0, thr))],
                      "mode": cm, "policy": policy})
    if policy_oob:
        res.warnings.append(f"{policy_oob} steps have pilot values outside [-1, 1]: policy_action left absent there")
    res.dropped = dropped[:MAX_DROPPED_LISTED]
    if len(dropped) > MAX_DROPPED_LISTED:
        res.warnings.append(f"{len(dropped)} records dropped; the first {MAX_DROPPED_LISTED} are listed")
    # gaps between kept steps (source indexes missing in between, with the reason when known)
    for k in range(1, len(steps)):
        a, b = steps[k - 1]["index"], steps[k]["index"]
        if b - a > 1:
            reasons: dict[str, int] = {}
            for i in range(a + 1, b):
                code = index_reasons.get(i, "UNREADABLE_OR_ABSENT")
                reasons[code] = reasons.get(code, 0) + 1
            res.gaps.append({"after_step": k - 1, "source_indexes": [a + 1, b - 1], "count": b - a - 1,
                             "seconds": _round_or_none(steps[k]["t"] - steps[k - 1]["t"]), "reasons": reasons})
    res.resize = frames.resize_record(len(steps))

    def quarantine(reason: str) -> None:
        mark_quarantined(res, reason)
        add_count(res.dropped_by_reason, "EPISODE_QUARANTINED", len(steps))

    if unknown_modes:
        quarantine(f"unknown {keys['mode']} values {unknown_modes}: map them with mapping={{'modes': {{...: 'user'|'pilot'|'teleop'}}}}")
        return
    if not steps:
        quarantine("no usable step left (every record was dropped: see 'dropped')")
        return
    ts = [s["t"] for s in steps]
    back = [k for k in range(1, len(ts)) if ts[k] <= ts[k - 1]]
    if back:
        k = back[0]
        res.note("TIMESTAMP_NON_MONOTONIC", f"{len(back)} steps do not move forward in time (first: step {k}, "
                 f"source index {steps[k]['index']}: {ts[k]:.3f} s after {ts[k - 1]:.3f} s)", step=k, field="_timestamp_ms")
        quarantine(f"timestamps go backwards or repeat at {len(back)} steps (first at source index {steps[k]['index']}); "
                   "the order of the recording cannot be trusted")
        return
    if len(ts) >= 3:
        d = sorted(ts[k] - ts[k - 1] for k in range(1, len(ts)))
        med = d[len(d) // 2]
        if med > 0 and spec.rate_hz and not spec.rate_hz[0] <= 1.0 / med <= spec.rate_hz[1]:
            res.warnings.append(f"median rate {1.0 / med:.2f} Hz is outside {spec.id}'s band {list(spec.rate_hz)} Hz "
                                "(DRIVE_LOOP_HZ on the Jetson?)")
    eid = unique_id(sid, out, used, t.name)
    res.episode_id = eid
    if (out / eid).exists():
        res.status = "exists"
        res.path = str(out / eid)
        res.reason = "an episode of this id is already in the output folder; left unchanged"
        add_count(res.dropped_by_reason, "EPISODE_EXISTS", len(steps))
        return
    tags = ["origin:jetson", "migrated_from:donkeycar_tub_v2", f"source_tub:{t.name}"]
    clock_state["t"] = ts[0]
    try:
        logger.start_episode(environment_id=environment_id, control_role=steps[0]["mode"], tags=tags, episode_id=eid)
        for s in steps:
            extras: dict[str, Any] = {}
            if has_mode:
                extras["control_mode"] = s["mode"]
            if has_policy:
                extras["policy_action"] = s["policy"]
            clock_state["t"] = s["t"]
            logger.log_step({"image": s["image"]}, s["action"], reward=0.0, discount=1.0,
                            timestamps={k: s["t"] for k in spec.steps.get("timestamp", {})}, extras=extras)
        path = logger.end_episode(terminal=False)
    except (ValueError, OSError) as e:
        p = logger.episode_path
        logger.close()
        if p is not None:
            shutil.rmtree(p, ignore_errors=True)
        quarantine(f"cannot write the episode: {e}")
        return
    res.path = str(path)
    res.steps = len(steps)
    if not validate_written(Path(path), spec, res):
        res.steps = 0
        add_count(res.dropped_by_reason, "EPISODE_QUARANTINED", len(steps))


# ---------------------------------------------------------------- CLI

def cmd_import_donkey(args: argparse.Namespace) -> int:
    try:
        mapping = None
        if getattr(args, "mapping", None):
            try:
                mapping = json.loads(Path(args.mapping).read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise MigrationError(f"--mapping {args.mapping}: {e}") from None
            if not isinstance(mapping, dict):
                raise MigrationError(f"--mapping {args.mapping}: must be a JSON object")
        report = import_donkey(args.tubs, args.out, target=args.target, mapping=mapping,
                               environment_id=args.environment_id, resize=not args.no_resize)
    except (MigrationError, OSError) as e:
        print(f"rldskit import donkey: {e}", file=sys.stderr)
        return 2
    print_report(report, args.json)
    return report.exit_code


def add_import_parser(import_subparsers: Any) -> None:
    """Add ``donkey`` to an ``import`` sub-command's subparsers. It sets ``func`` returning the
    exit code: 0 ok, 1 some episodes quarantined, 2 usage/unreadable."""
    d = import_subparsers.add_parser(
        "donkey", help="import Donkeycar v2 tubs (Jetson) into the Pi layout",
        description="Import Donkeycar 4.x/5.x tubs: one session = one episode; frames resized to the target camera.")
    d.add_argument("tubs", nargs="+", metavar="TUB", help="tub folder(s) holding manifest.json")
    d.add_argument("--out", required=True, metavar="DIR", help="output folder (episodes + migration_report.json)")
    d.add_argument("--target", default="pi5_donkey.v1", help="target spec (default pi5_donkey.v1)")
    d.add_argument("--no-resize", action="store_true", help="refuse frames whose size differs from the target")
    d.add_argument("--environment-id", default="jetson_migrated")
    d.add_argument("--mapping", metavar="FILE", help="JSON: tub key names and extra drive modes")
    d.add_argument("--json", action="store_true", help="print the migration report as JSON")
    d.set_defaults(func=cmd_import_donkey)
