"""Jetson -> Pi migration: Donkeycar v2 tubs and older RLDS JSON episodes into a Pi layout.

Two entry points, both writing capture-layout episodes (:class:`rldskit.capture.EpisodeLogger`)
for the target spec (default ``pi5_donkey.v1``) under ``out/``, plus
``out/migration_report.json`` (written atomically) describing every source episode. The report
holds no local absolute path: each input is named relative to the path given (a tub by its
folder name, a JSON episode as ``<folder given>/<path inside>`` or its file name) with a sha256
digest of the files read from it (:class:`SourceResult`), and episode paths are relative to the
report's folder:

* :func:`import_donkey` reads Donkeycar 4.x/5.x "tub v2" folders
  (``donkeycar/parts/tub_v2.py`` + ``datastore_v2.py``)::

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

* :func:`migrate_rlds_json` reads single-file JSON episodes captured on the Jetson under an
  older schema (``{"metadata": {...}, "steps": [...]}`` or the ``*.jsonl`` variant) and
  rewrites their keys with a small mapping file (format below).

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
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rldskit._io import atomic_write_bytes
from rldskit.issues import CODES

__all__ = ["import_donkey", "migrate_rlds_json", "MigrationReport", "EpisodeResult", "SourceResult", "MigrationError",
           "add_import_parser", "DEFAULT_TUB_KEYS", "DEFAULT_MODES", "REPORT_FILE", "MIN_TIMESTAMP_MS",
           "MAX_TIMESTAMP_MS"]

REPORT_FILE = "migration_report.json"
REPORT_FORMAT = "rldskit.migration_report/1"
JPEG_QUALITY = 90
DEFAULT_TUB_KEYS = {"image": "cam/image_array", "angle": "user/angle", "throttle": "user/throttle",
                    "mode": "user/mode", "pilot_angle": "pilot/angle", "pilot_throttle": "pilot/throttle"}
#: Donkeycar ``user/mode`` -> (control_mode, steering source, throttle source)
DEFAULT_MODES: dict[str, tuple[str, str, str]] = {
    "user": ("user", "user", "user"),
    "local_angle": ("pilot", "pilot", "user"),
    "local": ("pilot", "pilot", "pilot"),
    "pilot": ("pilot", "pilot", "pilot"),
}
_WARN_ONLY = {"RATE_OUT_OF_BAND", "TIMESTAMP_SKEW"}
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_DROPPED_LISTED = 200
#: A Donkeycar record's ``_timestamp_ms`` is wall-clock time (``time.time() * 1000``); outside
#: [2000-01-01, 2100-01-01) UTC it is an unset clock, a 0 or garbage, and the record is dropped.
MIN_TIMESTAMP_MS = 946_684_800_000
MAX_TIMESTAMP_MS = 4_102_444_800_000


class MigrationError(ValueError):
    """The migration cannot start: bad manifest, bad mapping, refused resize, bad target."""


# ---------------------------------------------------------------- report

def _issue(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """A report entry for one problem: its project issue code (:data:`rldskit.issues.CODES`), that
    code's severity, a message saying what was expected, and where (catalog, line, index, field)."""
    if code not in CODES:
        raise KeyError(f"unknown issue code {code!r}")
    return {"code": code, "severity": CODES[code][0], "message": message, **extra}


def _add(counts: dict[str, int], code: str, n: int = 1) -> None:
    if n:
        counts[code] = counts.get(code, 0) + n


@dataclasses.dataclass
class EpisodeResult:
    """What happened to one source episode (a tub session or a JSON file).

    ``source`` names the input relative to the path given (the tub folder's name, or
    ``<folder>/<file>``), never with the local folders above it. ``path`` is where the episode
    was written (in memory as written; in the report file, relative to the report's folder).
    For a tub session ``source_records == steps + sum(dropped_by_reason.values())``: every
    record of the session is a step of the written episode or counted under a reason code
    (``dropped`` lists the first records with their catalog line; records of a quarantined or
    already existing episode count as ``EPISODE_QUARANTINED`` / ``EPISODE_EXISTS``).
    """

    source: str
    episode_id: str | None = None
    status: str = "imported"  # "imported" | "quarantined" | "exists" (left alone)
    path: str | None = None
    reason: str | None = None
    session_id: str | None = None
    steps: int = 0
    source_records: int = 0
    gaps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    dropped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    dropped_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
    resize: dict[str, Any] | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    issues: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def note(self, code: str, message: str, **extra: Any) -> None:
        self.issues.append(_issue(code, message, **extra))


@dataclasses.dataclass
class SourceResult:
    """One input as the report records it: its name relative to the path given on the command
    line (no local folders), and ``sha256``, the digest of the ``sha256sum``-style listing
    (``<hex>  <path>\\n`` per file, sorted by path, paths relative to the tub folder or the
    episode file's folder) of every file the import read from it (``files`` of them).

    For a Donkeycar tub, the accounting of its catalog lines (non-blank lines of every catalog
    the manifest names): ``lines_in == imported_steps + dropped`` and ``dropped ==
    sum(dropped_by_reason.values())``. Lines dropped before they could join a session (torn or
    corrupt lines, bad or conflicting indexes, duplicates, no session id) are listed in
    ``dropped_records`` (catalog, line, code, message; the first 200); the rest are counted in
    their episode's ``dropped_by_reason``. ``issues`` holds tub-level findings that drop nothing
    (``INDEX_OUT_OF_ORDER``) or lose a whole catalog (``CATALOG_MISSING``). For RLDS JSON files
    the accounting fields are ``None`` (a file is imported or quarantined whole).
    """

    source: str
    sha256: str | None = None
    files: int = 0
    lines_in: int | None = None
    imported_steps: int | None = None
    dropped: int | None = None
    dropped_by_reason: dict[str, int] | None = None
    dropped_records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    issues: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def note(self, code: str, message: str, **extra: Any) -> None:
        self.issues.append(_issue(code, message, **extra))

    def drop(self, code: str, catalog: str, line: int, message: str, **extra: Any) -> None:
        """Count one catalog line dropped before it joined a session (and list the first ones)."""
        assert self.dropped_by_reason is not None
        _add(self.dropped_by_reason, code)
        if len(self.dropped_records) < _MAX_DROPPED_LISTED:
            self.dropped_records.append(_issue(code, message, catalog=catalog, line=line, **extra))


class _Digest:
    """sha256 of a sha256sum-style listing of the files an import read (see :class:`SourceResult`)."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {}

    def add(self, rel: str, data: bytes) -> None:
        self.files[rel] = hashlib.sha256(data).hexdigest()

    def hexdigest(self) -> str | None:
        if not self.files:
            return None
        listing = "".join(f"{self.files[k]}  {k}\n" for k in sorted(self.files))
        return hashlib.sha256(listing.encode()).hexdigest()


def _display_name(p: Path) -> str:
    """The name an input is recorded under: its own name, without the folders above it."""
    return p.name or p.resolve().name or "."


@dataclasses.dataclass
class MigrationReport:
    """JSON-able record of a migration; ``write()`` puts it at ``out/migration_report.json``.

    The written report holds no local absolute path: inputs are named relative to the paths
    given (``sources``: name, sha256 digest, and for tubs the line accounting), episode paths
    are relative to the report's folder (``out`` is written as ``"."``), and any path of an
    input root or of ``out`` that a message quotes is rewritten the same way. The summary
    adds, for tubs, ``lines_in``, ``imported_steps``, ``dropped`` and ``dropped_by_reason``
    over all sources (``lines_in == imported_steps + dropped``).
    """

    source_kind: str
    target: str
    out: str
    sources: list[SourceResult] = dataclasses.field(default_factory=list)
    episodes: list[EpisodeResult] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    created_at: float = dataclasses.field(default_factory=time.time)
    #: local path prefix -> the name written instead (input roots, the output folder)
    scrub: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

    def hide(self, path: str | Path, name: str) -> None:
        """Write ``name`` wherever a message would quote the local path ``path`` (as given and resolved)."""
        for cand in {str(path), str(Path(path).resolve())}:
            if os.path.isabs(cand) and cand != os.sep:
                self.scrub[cand.rstrip(os.sep)] = name

    @property
    def imported(self) -> list[EpisodeResult]:
        return [e for e in self.episodes if e.status == "imported"]

    @property
    def quarantined(self) -> list[EpisodeResult]:
        return [e for e in self.episodes if e.status == "quarantined"]

    @property
    def exit_code(self) -> int:
        return 1 if self.quarantined else 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("scrub")
        d = {"format": REPORT_FORMAT, **d}
        d["out"] = "."
        out_abs = Path(self.out).resolve()
        for e in d["episodes"]:
            if e["path"]:
                try:
                    e["path"] = Path(e["path"]).resolve().relative_to(out_abs).as_posix()
                except ValueError:
                    pass
        d["summary"] = {"episodes": len(self.episodes), "imported": len(self.imported),
                        "quarantined": len(self.quarantined),
                        "steps": sum(e.steps for e in self.imported),
                        "gaps": sum(len(e.gaps) for e in self.imported)}
        counted = [s for s in self.sources if s.lines_in is not None]
        if counted:
            by_reason: dict[str, int] = {}
            for s in counted:
                for code, n in (s.dropped_by_reason or {}).items():
                    _add(by_reason, code, n)
            d["summary"].update({"lines_in": sum(s.lines_in or 0 for s in counted),
                                 "imported_steps": sum(s.imported_steps or 0 for s in counted),
                                 "dropped": sum(s.dropped or 0 for s in counted),
                                 "dropped_by_reason": dict(sorted(by_reason.items()))})
        return _scrub(d, self.scrub)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False, default=str, allow_nan=False)

    def write(self, path: str | Path | None = None) -> Path:
        p = Path(path) if path is not None else Path(self.out) / REPORT_FILE
        atomic_write_bytes(p, self.to_json().encode())
        return p


def _scrub(obj: Any, names: Mapping[str, str]) -> Any:
    """``obj`` with every string's occurrences of a path in ``names`` replaced by its name."""
    if not names:
        return obj
    pattern = re.compile("(" + "|".join(re.escape(k) for k in sorted(names, key=len, reverse=True)) + r")(?=[/\\\s'\"),:;\]]|$)")

    def walk(x: Any) -> Any:
        if isinstance(x, str):
            return pattern.sub(lambda m: names[m.group(1)], x)
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(obj)


# ---------------------------------------------------------------- images

class _Frames:
    """Decode, check and (when allowed) resize frames to the target image leaf."""

    def __init__(self, leaf: Any, resize: bool):
        self.h, self.w, self.c = leaf.shape
        self.encoding = leaf.encoding
        self.resize = resize
        self.sizes: dict[tuple[int, int], int] = {}

    def convert(self, data: bytes) -> tuple[bytes | None, str | None]:
        """Returns ``(encoded bytes, None)`` or ``(None, reason)``."""
        from PIL import Image as PILImage

        try:
            img = PILImage.open(io.BytesIO(data))
            fmt = img.format
            img.load()
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad frame
            return None, f"undecodable image: {type(e).__name__}: {e}"[:200]
        w, h = img.size
        if (h, w) != (self.h, self.w):
            if not self.resize:
                return None, f"frame is {h}x{w}, target is {self.h}x{self.w} and resizing is off"
            self.sizes[(h, w)] = self.sizes.get((h, w), 0) + 1
        want_mode = "L" if self.c == 1 else "RGB"
        if (h, w) == (self.h, self.w) and img.mode == want_mode and (fmt or "").lower() == self.encoding:
            return data, None
        try:
            img = img.convert(want_mode)
            if (h, w) != (self.h, self.w):
                img = img.resize((self.w, self.h), PILImage.BILINEAR)
            buf = io.BytesIO()
            if self.encoding == "jpeg":
                img.save(buf, format="JPEG", quality=JPEG_QUALITY)
            else:
                img.save(buf, format="PNG")
        except Exception as e:  # noqa: BLE001
            return None, f"cannot re-encode image: {type(e).__name__}: {e}"[:200]
        return buf.getvalue(), None

    def resize_record(self, count_frames: int) -> dict[str, Any] | None:
        if not self.sizes:
            return None
        src = max(self.sizes, key=self.sizes.get)  # type: ignore[arg-type]
        return {"from": list(src), "to": [self.h, self.w], "frames": sum(self.sizes.values()),
                "of_frames": count_frames, "method": "PIL bilinear, JPEG quality %d" % JPEG_QUALITY,
                "sizes": {f"{h}x{w}": n for (h, w), n in sorted(self.sizes.items())}}


def _image_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image as PILImage

    try:
        w, h = PILImage.open(io.BytesIO(data)).size
        return h, w
    except Exception:  # noqa: BLE001
        return None


# ---------------------------------------------------------------- shared writing

def _load_target(target: str) -> Any:
    from rldskit.spec import Image, SpecError, load_spec

    try:
        spec = load_spec(target)
    except (SpecError, OSError, ValueError) as e:
        raise MigrationError(f"target spec {target!r}: {e}") from None
    images = [p for p, leaf in spec.step_leaves.items() if isinstance(leaf, Image)]
    if "observation/image" not in images:
        raise MigrationError(f"target {target} has no observation/image to receive camera frames (images: {images})")
    if spec.last_step != "valid":
        raise MigrationError(f"target {target} declares last_step={spec.last_step!r}; migration writes real last steps only")
    return spec


def _make_logger(out: Path, spec: Any, clock: Any) -> Any:
    from rldskit.capture import EpisodeLogger

    try:
        return EpisodeLogger(out, spec, clock=clock)
    except (ValueError, OSError) as e:
        raise MigrationError(f"cannot write into {out}: {e}") from None


def _validate_written(path: Path, spec: Any, res: EpisodeResult) -> bool:
    """Validate one written episode; rate/skew problems become warnings. False = quarantine."""
    from rldskit.validation import Gates, validate_paths

    rep = validate_paths([path], spec, Gates(check_images=True))
    hard = []
    for i in rep.issues:
        if i.code in _WARN_ONLY:
            res.warnings.append(f"{i.code}: {i.message} (kept: a real recording's rate/clock)")
        elif i.severity == "error":
            hard.append(f"{i.code}" + (f" step {i.step}" if i.step is not None else "") + f": {i.message}")
        else:
            res.warnings.append(f"{i.code}: {i.message}")
    if hard:
        res.status = "quarantined"
        res.reason = "fails validation: " + "; ".join(hard[:5])
        shutil.rmtree(path, ignore_errors=True)
        res.path = None
        return False
    return True


def _quarantine(res: EpisodeResult, reason: str) -> None:
    res.status = "quarantined"
    res.reason = reason
    res.path = None


def _unique_id(base: str, out: Path, used: set[str], suffix: str) -> str:
    eid = _SAFE_ID.sub("_", base).strip("._") or "episode"
    if eid in used:
        eid = f"{eid}__{_SAFE_ID.sub('_', suffix).strip('._') or 'x'}"
    n = 2
    cand = eid
    while cand in used:
        cand = f"{eid}_{n}"
        n += 1
    used.add(cand)
    return cand


def _round_or_none(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except (OverflowError, ValueError):
        return None
    return f if math.isfinite(f) else None


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
    digest: _Digest = dataclasses.field(default_factory=_Digest)


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
    spec = _load_target(target)
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
    frames = _Frames(spec.leaf("observation/image"), resize)
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
    logger = _make_logger(out, spec, lambda: clock_state["t"])
    used: set[str] = set()
    for t in tubs:
        _import_tub(t, out, spec, logger, report, keys, modes, executed, frames, environment_id, used, clock_state,
                    has_policy, has_mode)
    report.write()
    return report


def _import_tub(t: _Tub, out: Path, spec: Any, logger: Any, report: MigrationReport, keys: dict[str, str],
                modes: dict[str, tuple[str, str, str]], executed: str, frames: _Frames, environment_id: str,
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
        _quarantine(res, "the tub holds no usable records (see the source's dropped_records)" if src.lines_in
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
            _add(src.dropped_by_reason, code, n)
    src.dropped_by_reason = dict(sorted(src.dropped_by_reason.items()))
    src.imported_steps = sum(e.steps for e in episodes if e.status == "imported")
    src.dropped = sum(src.dropped_by_reason.values())
    if src.lines_in != src.imported_steps + src.dropped:  # a bug here, never the input's fault: fail loudly
        raise RuntimeError(f"{src.source}: accounting does not add up: {src.lines_in} catalog lines != "
                           f"{src.imported_steps} imported + {src.dropped} dropped {src.dropped_by_reason}")


def _num(rec: Mapping[str, Any], key: str) -> float | None:
    return _finite(rec.get(key))


def _import_session(t: _Tub, sid: str, recs: list[_Rec], res: EpisodeResult, out: Path, spec: Any,
                    logger: Any, keys: dict[str, str], modes: dict[str, tuple[str, str, str]], executed: str,
                    frames: _Frames, environment_id: str, used: set[str], clock_state: dict[str, float],
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
            dropped.append(_issue(code, msg, index=idx, catalog=rr.catalog, line=rr.line, **extra))
            _add(res.dropped_by_reason, code)
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
    res.dropped = dropped[:_MAX_DROPPED_LISTED]
    if len(dropped) > _MAX_DROPPED_LISTED:
        res.warnings.append(f"{len(dropped)} records dropped; the first {_MAX_DROPPED_LISTED} are listed")
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
        _quarantine(res, reason)
        _add(res.dropped_by_reason, "EPISODE_QUARANTINED", len(steps))

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
    eid = _unique_id(sid, out, used, t.name)
    res.episode_id = eid
    if (out / eid).exists():
        res.status = "exists"
        res.path = str(out / eid)
        res.reason = "an episode of this id is already in the output folder; left unchanged"
        _add(res.dropped_by_reason, "EPISODE_EXISTS", len(steps))
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
    if not _validate_written(Path(path), spec, res):
        res.steps = 0
        _add(res.dropped_by_reason, "EPISODE_QUARANTINED", len(steps))


# ---------------------------------------------------------------- RLDS JSON

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
                any(_finite(u.get(x, 0)) is None for x in ("scale", "offset")):
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


def _read_json_episode(p: Path, digest: _Digest | None = None) -> tuple[dict[str, Any], list[Any], bool | None]:
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


def _load_image(value: Any, base: Path, digest: _Digest | None = None) -> bytes:
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
            _set(new, path, [x * scale + offset if _finite(x) is not None else x for x in v])
        elif _finite(v) is not None:
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
    spec = _load_target(target)
    m = load_mapping(mapping_file)
    files = _find_json_episodes(paths)
    out_abs = out.resolve()
    files = [(f, name) for f, name in files if not f.resolve().is_relative_to(out_abs)]
    spec_paths = set(spec.step_leaves)
    ts_streams = list(spec.steps.get("timestamp", {}))
    frames = _Frames(spec.leaf("observation/image"), resize)
    report = MigrationReport("rlds_json", spec.id, str(out))
    report.hide(out, ".")
    for raw_path in paths:
        report.hide(raw_path, _display_name(Path(raw_path)))
    mapping_path = Path(mapping_file)
    report.hide(mapping_path, mapping_path.name)
    report.notes.append(f"mapping file: {mapping_path.name} (sha256 {hashlib.sha256(mapping_path.read_bytes()).hexdigest()})")
    clock_state = {"t": 0.0}
    out.mkdir(parents=True, exist_ok=True)
    logger = _make_logger(out, spec, lambda: clock_state["t"])
    used: set[str] = set()
    mmeta = m.get("metadata", {})
    for f, name in files:
        res = EpisodeResult(source=name)
        report.episodes.append(res)
        src = SourceResult(name)
        report.sources.append(src)
        digest = _Digest()
        try:
            _migrate_json_file(f, res, m, mmeta, spec, spec_paths, ts_streams, frames, out, used, logger, clock_state,
                               environment_id, digest)
        finally:
            src.sha256, src.files = digest.hexdigest(), len(digest.files)
    report.write()
    return report


def _migrate_json_file(f: Path, res: EpisodeResult, m: Mapping[str, Any], mmeta: Mapping[str, Any], spec: Any,
                       spec_paths: set[str], ts_streams: list[str], frames: _Frames, out: Path, used: set[str],
                       logger: Any, clock_state: dict[str, float], environment_id: str | None, digest: _Digest) -> None:
    """Migrate one JSON episode file into ``res`` (imported, exists or quarantined with the reason)."""
    try:
        meta, raw_steps, terminal = _read_json_episode(f, digest)
    except ValueError as e:
        _quarantine(res, str(e))
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
            missing = [k for k in ts_streams if _finite(ts.get(k)) is None]
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
        _quarantine(res, err)
        return
    base_id = meta.get("episode_id") if isinstance(meta.get("episode_id"), str) and meta.get("episode_id") else \
        f.name.split(".")[0]
    eid = _unique_id(base_id, out, used, f.stem)
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
        _quarantine(res, str(e))
        return
    res.path, res.steps = str(path), len(steps)
    _validate_written(Path(path), spec, res)


# ---------------------------------------------------------------- CLI

def _print_report(report: MigrationReport, as_json: bool) -> None:
    if as_json:
        print(report.to_json())
        return
    for e in report.episodes:
        where = e.path or e.reason or ""
        extra = f" ({len(e.gaps)} gaps, {len(e.dropped)} dropped)" if e.gaps or e.dropped else ""
        print(f"{e.status:11} {e.episode_id or e.session_id or '-':28} {e.steps:6d} steps{extra}  {where}")
        for w in e.warnings:
            print(f"  warning: {w}")
    for src in report.sources:
        if src.lines_in is not None:
            why = ", ".join(f"{c} {n}" for c, n in (src.dropped_by_reason or {}).items())
            print(f"{src.source}: {src.lines_in} catalog lines = {src.imported_steps} imported + {src.dropped} dropped"
                  + (f" ({why})" if why else ""))
        for i in src.issues:
            print(f"  {i['severity']}: {i['code']}: {i['message']}")
    for w in report.warnings:
        print(f"warning: {w}")
    print(f"{len(report.imported)} imported, {len(report.quarantined)} quarantined; "
          f"report: {Path(report.out) / REPORT_FILE}")


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
    except MigrationError as e:
        print(f"rldskit import donkey: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"rldskit import donkey: {e}", file=sys.stderr)
        return 2
    _print_report(report, args.json)
    return report.exit_code


def cmd_import_rlds_json(args: argparse.Namespace) -> int:
    try:
        report = migrate_rlds_json(args.paths, args.out, mapping_file=args.mapping, target=args.target,
                                   environment_id=args.environment_id, resize=not args.no_resize)
    except (MigrationError, OSError) as e:
        print(f"rldskit import rlds-json: {e}", file=sys.stderr)
        return 2
    _print_report(report, args.json)
    return report.exit_code


def add_import_parser(import_subparsers: Any) -> None:
    """Add ``donkey`` and ``rlds-json`` to an ``import`` sub-command's subparsers. Each sets
    ``func`` returning the exit code: 0 ok, 1 some episodes quarantined, 2 usage/unreadable."""
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
