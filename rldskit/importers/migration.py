"""What the Jetson -> Pi migrations share: their report, its sources and episodes, and the writing.

Two importers migrate a Jetson's recordings into a Pi layout: :mod:`rldskit.importers.donkey`
(Donkeycar v2 tubs) and :mod:`rldskit.importers.rlds_json` (older single-file RLDS JSON episodes).
Both write capture-layout episodes (:class:`rldskit.capture.EpisodeLogger`) for the target spec
(default ``pi5_donkey.v1``) under ``out/``, plus ``out/migration_report.json`` (written
atomically) describing every source episode. The report holds no local absolute path: each input
is named relative to the path given (a tub by its folder name, a JSON episode as ``<folder
given>/<path inside>`` or its file name) with a sha256 digest of the files read from it
(:class:`SourceResult`), and episode paths are relative to the report's folder.

This module holds that shared machinery: :class:`MigrationError`, the report
(:class:`MigrationReport`, :class:`SourceResult`, :class:`EpisodeResult`, :func:`issue`
entries, the scrubbing of local paths), the input digest (:class:`Digest`), the frame converter
(:class:`Frames`), loading the target spec, creating the episode logger, validating a written
episode, quarantine, unique episode ids, number helpers and the CLI's report printing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rldskit._io import atomic_write_bytes
from rldskit.issues import CODES

__all__ = ["MigrationError", "MigrationReport", "EpisodeResult", "SourceResult", "Digest", "Frames", "REPORT_FILE",
           "REPORT_FORMAT", "JPEG_QUALITY", "MAX_DROPPED_LISTED", "issue", "add_count", "load_target", "make_logger",
           "validate_written", "mark_quarantined", "unique_id", "finite", "print_report"]

REPORT_FILE = "migration_report.json"
REPORT_FORMAT = "rldskit.migration_report/1"
JPEG_QUALITY = 90
_WARN_ONLY = {"RATE_OUT_OF_BAND", "TIMESTAMP_SKEW"}
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")
#: how many dropped records a source or an episode lists in the report (all are counted)
MAX_DROPPED_LISTED = 200


class MigrationError(ValueError):
    """The migration cannot start: bad manifest, bad mapping, refused resize, bad target."""


# ---------------------------------------------------------------- report

def issue(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """A report entry for one problem: its project issue code (:data:`rldskit.issues.CODES`), that
    code's severity, a message saying what was expected, and where (catalog, line, index, field)."""
    if code not in CODES:
        raise KeyError(f"unknown issue code {code!r}")
    return {"code": code, "severity": CODES[code][0], "message": message, **extra}


def add_count(counts: dict[str, int], code: str, n: int = 1) -> None:
    """Add ``n`` to ``counts[code]`` (no entry is made for 0)."""
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
        self.issues.append(issue(code, message, **extra))


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
        self.issues.append(issue(code, message, **extra))

    def drop(self, code: str, catalog: str, line: int, message: str, **extra: Any) -> None:
        """Count one catalog line dropped before it joined a session (and list the first ones)."""
        assert self.dropped_by_reason is not None
        add_count(self.dropped_by_reason, code)
        if len(self.dropped_records) < MAX_DROPPED_LISTED:
            self.dropped_records.append(issue(code, message, catalog=catalog, line=line, **extra))


class Digest:
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
                    add_count(by_reason, code, n)
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

class Frames:
    """Decode, check and (when allowed) resize frames to the target image leaf."""

    def __init__(self, leaf: Any, resize: bool):
        self.h, self.w, self.c = leaf.shape
        self.encoding = leaf.encoding
        self.resize = resize
        self.sizes: dict[tuple[int, int], int] = {}

    def convert(self, data: bytes) -> tuple[bytes | None, str | None]:
        """Returns ``(encoded bytes, None)`` or ``(None, reason)``."""
        from rldskit import images

        try:
            info = images.verify(data)  # the header, then every byte decoded
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad frame
            return None, f"undecodable image: {type(e).__name__}: {e}"[:200]
        h, w = info.height, info.width
        if (h, w) != (self.h, self.w):
            if not self.resize:
                return None, f"frame is {h}x{w}, target is {self.h}x{self.w} and resizing is off"
            self.sizes[(h, w)] = self.sizes.get((h, w), 0) + 1
        want_mode = "L" if self.c == 1 else "RGB"
        if (h, w) == (self.h, self.w) and info.mode == want_mode and info.format == self.encoding:
            return data, None
        try:
            arr = images.decode(data, 1 if self.c == 1 else 3)
            if (h, w) != (self.h, self.w):
                arr = images.resize(arr, (self.h, self.w))
            return images.encode(arr, self.encoding, JPEG_QUALITY), None
        except Exception as e:  # noqa: BLE001
            return None, f"cannot re-encode image: {type(e).__name__}: {e}"[:200]

    def resize_record(self, count_frames: int) -> dict[str, Any] | None:
        if not self.sizes:
            return None
        src = max(self.sizes, key=self.sizes.get)  # type: ignore[arg-type]
        return {"from": list(src), "to": [self.h, self.w], "frames": sum(self.sizes.values()),
                "of_frames": count_frames, "method": "PIL bilinear, JPEG quality %d" % JPEG_QUALITY,
                "sizes": {f"{h}x{w}": n for (h, w), n in sorted(self.sizes.items())}}


# ---------------------------------------------------------------- shared writing

def load_target(target: str) -> Any:
    """The target spec, checked to receive migrated episodes (an ``observation/image``, real last
    steps); :class:`MigrationError` otherwise."""
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


def make_logger(out: Path, spec: Any, clock: Any) -> Any:
    """The :class:`rldskit.capture.EpisodeLogger` writing into ``out`` with ``clock``; :class:`MigrationError`
    when ``out`` cannot take it."""
    from rldskit.capture import EpisodeLogger

    try:
        return EpisodeLogger(out, spec, clock=clock)
    except (ValueError, OSError) as e:
        raise MigrationError(f"cannot write into {out}: {e}") from None


def validate_written(path: Path, spec: Any, res: EpisodeResult) -> bool:
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


def mark_quarantined(res: EpisodeResult, reason: str) -> None:
    """Mark ``res`` quarantined with ``reason`` and no written path (the caller removes what it wrote)."""
    res.status = "quarantined"
    res.reason = reason
    res.path = None


def unique_id(base: str, out: Path, used: set[str], suffix: str) -> str:
    """A folder-safe episode id from ``base``, not in ``used`` (then added to it): on a clash
    ``__<suffix>`` is appended, then ``_2``, ``_3``, ..."""
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


def finite(v: Any) -> float | None:
    """``v`` as a float when it is a finite int or float (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except (OverflowError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ---------------------------------------------------------------- CLI

def print_report(report: MigrationReport, as_json: bool) -> None:
    """Print what the ``rldskit import`` commands print: the report as JSON, or a line per episode
    and per tub's accounting with the warnings."""
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

