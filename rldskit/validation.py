"""Validation of episodes and datasets against a spec and a set of gates.

Three concepts:

* **``Gates``**: data, not code. Thresholds a dataset must meet (``min_steps``,
  ``min_episodes``, ``max_timestamp_skew_ms``, ``rate_hz`` band, finite values, per-key
  bounds, decodable images of the declared size, unique episode ids, schema version match).
  Loaded from a small JSON or TOML file with :meth:`Gates.load`.
* **``validate(episode, spec, gates) -> Report``**: checks one in-memory :class:`Episode`
  with vectorised numpy over its columns. Pure: reads nothing but frame bytes (and those
  only with ``check_images``).
* **``validate_paths(paths, ...) -> Report``**: finds episodes on disk (capture folders,
  single-file episodes), reads each leniently (read problems become issues too), validates,
  then applies dataset-level gates (episode count, unique ids). Optionally in parallel.

A :class:`Report` holds every :class:`~rldskit.issues.Issue`; ``report.ok`` is True when
there are no errors (``strict`` also counts warnings). The CLI maps that to exit 0/1.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rldskit.episode import Episode, LazyFrames
from rldskit.issues import ERROR, WARNING, Issue, issue
from rldskit.spec import FLAG_KEYS, PRESENT_SUFFIX, EpisodeSpec, Image, SpecError, Text

if TYPE_CHECKING:
    from rldskit.formats.tfds_dir import DatasetDir

__all__ = ["Gates", "Report", "validate", "validate_dataset", "validate_paths", "check_image_bytes"]


@dataclasses.dataclass(frozen=True)
class Gates:
    """Thresholds for :func:`validate`. ``rate_hz=None`` uses the spec's band; ``bounds``
    maps a feature path (``action``) or a named element (``action/steering``) to
    ``(low, high)``, on top of the spec's own bounds. ``severity`` overrides a code's default
    severity (``{"FLAG_IS_LAST": "warning"}``; ``"ignore"`` drops it), e.g. to convert a
    dataset whose known defect you accept."""

    min_steps: int = 1
    min_episodes: int = 1
    max_timestamp_skew_ms: float = 5.0
    rate_hz: tuple[float, float] | None = None
    check_rate: bool = True
    require_finite: bool = True
    bounds: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    check_images: bool = False
    unique_episode_ids: bool = True
    schema_version: str = "major"  # "exact": minor differences are errors; "major"; "ignore"
    severity: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        from rldskit.issues import CODES

        sev = {str(k): str(v) for k, v in dict(self.severity).items()}
        for code, level in sev.items():
            if code not in CODES:
                raise ValueError(f"severity: unknown issue code {code!r}")
            if level not in (ERROR, WARNING, "ignore"):
                raise ValueError(f"severity for {code} must be 'error', 'warning' or 'ignore', got {level!r}")
        object.__setattr__(self, "severity", sev)
        if self.schema_version not in ("exact", "major", "ignore"):
            raise ValueError(f"schema_version must be 'exact', 'major' or 'ignore', got {self.schema_version!r}")
        if self.rate_hz is not None:
            lo, hi = (float(x) for x in self.rate_hz)
            if not 0 < lo <= hi:
                raise ValueError(f"rate_hz must be 0 < low <= high, got {self.rate_hz}")
            object.__setattr__(self, "rate_hz", (lo, hi))
        b = {}
        for k, v in dict(self.bounds).items():
            lo, hi = (float(x) for x in v)
            if not lo <= hi:
                raise ValueError(f"bounds for {k}: low > high ({lo}, {hi})")
            b[str(k)] = (lo, hi)
        object.__setattr__(self, "bounds", b)
        if self.min_steps < 0 or self.min_episodes < 0 or self.max_timestamp_skew_ms < 0:
            raise ValueError("min_steps, min_episodes and max_timestamp_skew_ms must be >= 0")

    def apply(self, issues: list[Issue]) -> list[Issue]:
        """Issues with this gate's schema-version policy and severity overrides applied."""
        out = []
        for i in issues:
            if i.code in ("SCHEMA_MISMATCH", "SCHEMA_MINOR_MISMATCH"):
                if self.schema_version == "ignore":
                    continue
                if self.schema_version == "exact" and i.code == "SCHEMA_MINOR_MISMATCH":
                    i = dataclasses.replace(i, severity=ERROR)
            level = self.severity.get(i.code)
            if level == "ignore":
                continue
            out.append(dataclasses.replace(i, severity=level) if level else i)
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], source: str = "<gates>") -> Gates:
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(obj) - names
        if extra:
            raise ValueError(f"{source}: unknown gates {sorted(extra)}; known: {sorted(names)}")
        kw = dict(obj)
        if "rate_hz" in kw and kw["rate_hz"] is not None:
            kw["rate_hz"] = tuple(kw["rate_hz"])
        try:
            return cls(**kw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> Gates:
        """Read gates from a ``.toml`` or ``.json`` file."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise ValueError(f"{p}: cannot read gates file: {e}") from None
        try:
            obj = tomllib.loads(data.decode()) if p.suffix == ".toml" else json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{p}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {e}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{p}: gates must be a table/object")
        return cls.from_dict(obj, source=str(p))


@dataclasses.dataclass
class Report:
    """Result of validation. ``ok``: no errors. ``frames_checked`` counts decoded frames."""

    episodes: int = 0
    steps: int = 0
    issues: list[Issue] = dataclasses.field(default_factory=list)
    frames_checked: int = 0

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == ERROR]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def passed(self, strict: bool = False) -> bool:
        return self.ok and not (strict and self.warnings)

    def merge(self, other: Report) -> Report:
        self.episodes += other.episodes
        self.steps += other.steps
        self.issues.extend(other.issues)
        self.frames_checked += other.frames_checked
        return self

    def to_dict(self, strict: bool = False) -> dict[str, Any]:
        return {"ok": self.passed(strict), "episodes": self.episodes, "steps": self.steps,
                "issues": [i.to_dict() for i in self.issues]}

    def format_table(self, max_rows: int = 200) -> str:
        """A plain-text table of issues, then a one-line summary."""
        rows = [("SEVERITY", "CODE", "EPISODE", "STEP", "FIELD", "MESSAGE")]
        for i in self.issues[:max_rows]:
            rows.append((i.severity, i.code, _tail(i.episode or "-", 40), "-" if i.step is None else str(i.step),
                         i.field or "-", i.message))
        out = []
        if len(rows) > 1:
            widths = [max(len(r[c]) for r in rows) for c in range(5)]
            for r in rows:
                out.append("  ".join(r[c].ljust(widths[c]) for c in range(5)) + "  " + r[5])
            if len(self.issues) > max_rows:
                out.append(f"... {len(self.issues) - max_rows} more issues (use --format json for all)")
        out.append(f"{self.episodes} episodes, {self.steps} steps: {len(self.errors)} errors, {len(self.warnings)} warnings")
        return "\n".join(out)


def _tail(s: str, n: int) -> str:
    return s if len(s) <= n else "..." + s[-(n - 3):]


# =========================================================================== one episode


def validate(episode: Episode, spec: EpisodeSpec, gates: Gates | None = None, *, label: str | None = None) -> Report:
    """Check one episode's columns against ``spec`` and ``gates``. Never raises on bad data."""
    gates = gates or Gates()
    label = label or episode.episode_id or "<episode>"
    issues: list[Issue] = []
    T = len(episode)
    cols = episode.steps
    leaves = spec.step_leaves
    skip_last = spec.last_step == "rlds"
    if T < max(gates.min_steps, 1):
        issues.append(issue("TOO_FEW_STEPS", label, f"{T} steps; the gate asks for at least {max(gates.min_steps, 1)}"))
    present_masks: dict[str, np.ndarray] = {}
    for path, leaf in leaves.items():
        if path.endswith(PRESENT_SUFFIX) and getattr(leaves.get(path[: -len(PRESENT_SUFFIX)]), "optional", False):
            m = cols.get(path)
            if m is not None:
                present_masks[path[: -len(PRESENT_SUFFIX)]] = np.asarray(m, dtype=bool)
    for path, leaf in leaves.items():
        col = cols.get(path)
        if col is None:
            issues.append(issue("FIELD_MISSING", label, f"column absent (expected {leaf.kind})", field=path))
            continue
        if T == 0:
            continue
        if isinstance(leaf, Image):
            continue  # images: see _check_images
        if isinstance(leaf, Text):
            _check_text(col, leaf, present_masks.get(path), label, path, issues)
            continue
        if leaf.dtype == "string":
            continue
        arr = col if isinstance(col, np.ndarray) else np.asarray(col)
        if arr.dtype == object and not leaf.is_static:
            continue  # ragged dynamic tensor: decoded element-wise already
        if arr.dtype == object or arr.shape[1:] != tuple(leaf.shape) or arr.shape[0] != T:
            issues.append(issue("FIELD_SHAPE", label, f"column has shape {list(arr.shape)}, expected [T={T}, *{list(leaf.shape)}]", field=path))
            continue
        if arr.dtype.kind != leaf.np_dtype.kind:
            issues.append(issue("FIELD_DTYPE", label, f"column dtype {arr.dtype}, expected {leaf.dtype}", field=path))
            continue
        if arr.dtype.kind not in "fiu":
            continue
        valid = np.ones(T, dtype=bool)
        pm = present_masks.get(path)
        if pm is not None and pm.shape == (T,):
            valid &= pm
            _check_placeholder(arr, ~pm, leaf, label, path, issues)
        if skip_last and path.split("/")[0] in ("action", "reward"):
            valid[-1] = False
        _check_values(arr, valid, leaf, gates, label, path, issues)
        if path == "discount" and (leaf.bounds is None or len(leaf.bounds) != 1 or leaf.bounds[0][0] < 0 or leaf.bounds[0][1] > 1):
            # RLDS discounts live in [0, 1]; a spec whose own bounds say so reports OUT_OF_BOUNDS instead
            with np.errstate(invalid="ignore"):
                bad = ((arr < 0) | (arr > 1)) & valid
            if bad.any():
                issues.append(issue("DISCOUNT_RANGE", label, f"{int(bad.sum())} discounts outside [0, 1] "
                                    f"(seen {float(arr[bad].min()):.6g} .. {float(arr[bad].max()):.6g})", step=_first(bad), field=path))
    _check_flags(cols, T, label, issues)
    _check_time(cols, spec, gates, T, label, issues)
    frames = 0
    if gates.check_images:
        for path in spec.image_paths:
            col = cols.get(path)
            if col is not None:
                pm = present_masks.get(path)
                frames += _check_images(col, spec.step_leaves[path], pm, label, path, issues)
    return Report(episodes=1, steps=T, issues=gates.apply(issues), frames_checked=frames)


def _first(mask: np.ndarray) -> int:
    if mask.ndim > 1:
        mask = mask.reshape(len(mask), -1).any(axis=1)
    return int(np.argmax(mask))


def _check_values(arr: np.ndarray, valid: np.ndarray, leaf: Any, gates: Gates, label: str, path: str,
                  issues: list[Issue]) -> None:
    v = valid.reshape((-1,) + (1,) * (arr.ndim - 1))
    if arr.dtype.kind == "f" and gates.require_finite:
        bad = ~np.isfinite(arr) & v
        if bad.any():
            issues.append(issue("NON_FINITE", label, f"{int(bad.sum())} NaN/inf values (first at step {_first(bad)})",
                                step=_first(bad), field=path))
    checks: list[tuple[str, np.ndarray, np.ndarray, str]] = []
    if leaf.bounds is not None:
        lo, hi = leaf.bounds_arrays()
        checks.append((path, lo, hi, "schema"))
    for key, (lo, hi) in gates.bounds.items():
        if key == path:
            checks.append((path, np.array([lo]), np.array([hi]), "gate"))
        elif key.startswith(path + "/") and leaf.names:
            name = key[len(path) + 1:]
            if name in leaf.names:
                idx = leaf.names.index(name)
                l = np.full(leaf.shape[-1], -np.inf)
                h = np.full(leaf.shape[-1], np.inf)
                l[idx], h[idx] = lo, hi
                checks.append((key, l, h, "gate"))
    for key, lo, hi, why in checks:
        with np.errstate(invalid="ignore"):
            bad = ((arr < lo) | (arr > hi)) & v
        if bad.any():
            flat = bad.reshape(len(bad), -1).any(axis=0) if arr.ndim > 1 else None
            which = ""
            if flat is not None and leaf.names and arr.ndim == 2:
                which = " in " + ", ".join(n for n, b in zip(leaf.names, flat) if b)
            vals = arr[bad]
            rng = f"[{lo.min() if lo.size == 1 else '...'}, {hi.max() if hi.size == 1 else '...'}]"
            issues.append(issue("OUT_OF_BOUNDS", label,
                                f"{int(bad.sum())} values{which} outside {why} bounds {rng if (lo.size == 1) else _bounds_str(lo, hi, leaf)}"
                                f" (seen {float(vals.min()):.6g} .. {float(vals.max()):.6g})", step=_first(bad), field=key))


def _bounds_str(lo: np.ndarray, hi: np.ndarray, leaf: Any) -> str:
    names = leaf.names or [str(i) for i in range(len(lo))]
    return "{" + ", ".join(f"{n}: [{l:g}, {h:g}]" for n, l, h in zip(names, lo, hi) if np.isfinite(l) or np.isfinite(h)) + "}"


def _check_placeholder(arr: np.ndarray, absent: np.ndarray, leaf: Any, label: str, path: str, issues: list[Issue]) -> None:
    if not absent.any():
        return
    ph = leaf.placeholder()
    sub = arr[absent]
    same = (sub == ph) | (np.isnan(sub) & np.isnan(ph)) if arr.dtype.kind == "f" else sub == ph
    if not np.all(same):
        steps = np.flatnonzero(absent)
        bad = ~same.reshape(len(sub), -1).all(axis=1)
        issues.append(issue("PLACEHOLDER_MISMATCH", label, f"{int(bad.sum())} absent steps hold values other than the placeholder {leaf.fill!r}",
                            step=int(steps[np.argmax(bad)]), field=path))


def _check_text(col: Any, leaf: Text, present: np.ndarray | None, label: str, path: str, issues: list[Issue]) -> None:
    if leaf.choices is None and leaf.max_length is None:
        return
    bad_choice, too_long = [], []
    choices = set(leaf.choices or ())
    for i, s in enumerate(col):
        if not isinstance(s, str) or (present is not None and not present[i]):
            continue  # an absent optional text holds its fill, which need not be a choice
        if leaf.choices is not None and s not in choices:
            bad_choice.append(i)
        if leaf.max_length is not None and len(s) > leaf.max_length:
            too_long.append(i)
    if bad_choice:
        s = col[bad_choice[0]]
        issues.append(issue("TEXT_CHOICE", label, f"{len(bad_choice)} values not in {list(leaf.choices)} (e.g. {s[:40]!r})",
                            step=bad_choice[0], field=path))
    if too_long:
        issues.append(issue("TEXT_TOO_LONG", label, f"{len(too_long)} values longer than {leaf.max_length} characters "
                                                    f"(longest {max(len(col[i]) for i in too_long)})", step=too_long[0], field=path))


def _check_flags(cols: Mapping[str, Any], T: int, label: str, issues: list[Issue]) -> None:
    if T == 0:
        return
    flags = {}
    for k in FLAG_KEYS:
        c = cols.get(k)
        if c is None:
            return  # FIELD_MISSING already reported
        a = np.asarray(c)
        if a.shape != (T,) or a.dtype != bool:
            return
        flags[k] = a
    expect_first = np.zeros(T, dtype=bool)
    expect_first[0] = True
    expect_last = expect_first[::-1]
    for k, exp, code in (("is_first", expect_first, "FLAG_IS_FIRST"), ("is_last", expect_last, "FLAG_IS_LAST")):
        wrong = flags[k] != exp
        if wrong.any():
            issues.append(issue(code, label, f"{k} is wrong at {int(wrong.sum())} steps (expected True only at step {0 if k == 'is_first' else T - 1})",
                                step=int(np.argmax(wrong)), field=k))
    bad_term = flags["is_terminal"] & ~expect_last
    if bad_term.any():
        issues.append(issue("FLAG_IS_TERMINAL", label, f"is_terminal True at {int(bad_term.sum())} steps that are not the last",
                            step=int(np.argmax(bad_term)), field="is_terminal"))


def _check_time(cols: Mapping[str, Any], spec: EpisodeSpec, gates: Gates, T: int, label: str, issues: list[Issue]) -> None:
    streams = {}
    for p in spec.timestamp_paths:
        c = cols.get(p)
        if c is None:
            continue
        a = np.asarray(c)
        if a.shape != (T,) or a.dtype.kind != "f":
            continue
        streams[p] = a
    if not streams or T < 2:
        return
    for p, a in streams.items():
        with np.errstate(invalid="ignore"):
            d = np.diff(a)
        back = d < 0
        if back.any():
            i = int(np.argmax(back)) + 1
            issues.append(issue("TIMESTAMP_NON_MONOTONIC", label, f"{int(back.sum())} steps go back in time "
                                f"(first: {a[i - 1]:.6f} -> {a[i]:.6f} s)", step=i, field=p))
        dup = d == 0
        if dup.any():
            i = int(np.argmax(dup)) + 1
            issues.append(issue("TIMESTAMP_DUPLICATE", label, f"{int(dup.sum())} steps repeat the previous timestamp ({a[i]:.6f} s)",
                                step=i, field=p))
    if len(streams) >= 2:
        stack = np.stack(list(streams.values()), axis=1)
        with np.errstate(invalid="ignore"):
            skew_ms = (np.nanmax(stack, axis=1) - np.nanmin(stack, axis=1)) * 1000.0 if np.isfinite(stack).any() else np.zeros(T)
        bad = skew_ms > gates.max_timestamp_skew_ms
        if bad.any():
            i = int(np.argmax(bad))
            issues.append(issue("TIMESTAMP_SKEW", label, f"{int(bad.sum())} steps have streams {', '.join(streams)} more than "
                                f"{gates.max_timestamp_skew_ms:g} ms apart (worst {float(np.nanmax(skew_ms)):.2f} ms)",
                                step=i, field="timestamp"))
    band = gates.rate_hz or spec.rate_hz
    clock = spec.clock
    if gates.check_rate and band and clock in streams and T >= 3:
        d = np.diff(streams[clock])
        d = d[np.isfinite(d) & (d > 0)]
        if d.size:
            rate = 1.0 / float(np.median(d))
            if not band[0] <= rate <= band[1]:
                issues.append(issue("RATE_OUT_OF_BAND", label, f"median control rate {rate:.2f} Hz outside [{band[0]:g}, {band[1]:g}] Hz",
                                    field=clock))


# --------------------------------------------------------------------------- images


def check_image_bytes(data: bytes, leaf: Image) -> tuple[str, str] | None:
    """Decode one frame fully enough to prove it is intact; return ``(code, message)`` or None.

    :func:`rldskit.images.verify` decodes it (JPEG in Pillow's draft mode: every entropy-coded
    byte is still parsed, so truncation and corruption are caught, at a fraction of the IDCT cost)."""
    from rldskit import images

    if not data:
        return "IMAGE_MISSING", "empty frame"
    try:
        info = images.verify(data)
    except (OSError, SyntaxError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        return "IMAGE_UNDECODABLE", f"cannot decode: {e}"
    except Exception as e:  # noqa: BLE001 - hostile bytes can make Pillow raise anything
        return "IMAGE_UNDECODABLE", f"cannot decode: {type(e).__name__}: {e}"
    h, w, bands = info.height, info.width, info.channels
    kind = info.format if info.format in images.ENCODINGS else None
    H, W, C = leaf.shape
    if (h, w) != (H, W) or bands != C:
        return "IMAGE_SIZE", f"frame is {h}x{w}x{bands}, expected {H}x{W}x{C}"
    if kind != leaf.encoding:
        return "IMAGE_ENCODING", f"frame is {kind or 'unknown'}-encoded, schema declares {leaf.encoding}"
    return None


def _check_images(col: Any, leaf: Image, present: np.ndarray | None, label: str, path: str, issues: list[Issue]) -> int:
    from concurrent.futures import ThreadPoolExecutor

    idx = [i for i in range(len(col)) if present is None or present[i]]

    def one(i: int):
        try:
            data = col[i]
        except OSError as e:
            return i, ("IMAGE_MISSING", f"cannot read frame: {e}")
        return i, check_image_bytes(data, leaf)

    found: dict[str, list[tuple[int, str]]] = {}
    with ThreadPoolExecutor(max_workers=2) as ex:
        for i, res in ex.map(one, idx, chunksize=16):
            if res is not None:
                found.setdefault(res[0], []).append((i, res[1]))
    for code, hits in found.items():
        for i, msg in hits[:5]:
            where = f" ({col.path(i).name})" if isinstance(col, LazyFrames) else ""
            issues.append(issue(code, label, msg + where, step=i, field=path))
        if len(hits) > 5:
            issues.append(issue(code, label, f"... {len(hits) - 5} more frames with this problem", field=path))
    return len(idx)


# =========================================================================== datasets


def validate_dataset(ds: DatasetDir, gates: Gates | None = None) -> Report:
    """Validate a TFDS dataset folder (an opened :class:`~rldskit.formats.tfds_dir.DatasetDir`):
    every problem :meth:`~rldskit.formats.tfds_dir.DatasetDir.verify` finds in every file format,
    plus :func:`validate` of every decoded episode (primary format) against the dataset's spec and
    ``gates``, plus the dataset-level gates (``min_episodes``; unique ``episode_id`` when the spec
    has rldskit's standard metadata, whose ``episode_id`` is unique by contract). Each episode is
    labelled ``<shard file>#<record>``."""
    gates = gates or Gates()
    report = Report()
    ids: dict[str, str] = {}
    for item in ds.scan(decode=True, episodes_of=ds.file_format):
        if isinstance(item, Issue):
            report.issues.append(item)
            continue
        label, ep = item
        report.merge(validate(ep, ds.spec, gates, label=label))
        if gates.unique_episode_ids and ds.spec.standard_metadata and ep.episode_id:
            if ep.episode_id in ids:
                report.issues.append(issue("DUPLICATE_EPISODE_ID", label, f"episode_id {ep.episode_id!r} is also "
                                                                          f"used by {ids[ep.episode_id]}",
                                           field="episode_id"))
            ids.setdefault(ep.episode_id, label)
    if report.episodes < gates.min_episodes:
        report.issues.append(issue("TOO_FEW_EPISODES", str(ds.path), f"{report.episodes} readable episodes; "
                                                                     f"the gate asks for at least {gates.min_episodes}"))
    return report


def _validate_one(args: tuple[str, EpisodeSpec | None, Gates, bool]) -> tuple[Report, str | None]:
    from rldskit.formats.capture_dir import scan_episode

    path, spec, gates, recover = args
    res = scan_episode(path, spec, recover=recover)
    issues = gates.apply(list(res.issues))
    if res.episode is None:
        return Report(episodes=1, steps=0, issues=issues), None
    used_spec = spec
    if used_spec is None:
        from rldskit.formats.capture_dir import resolve_spec

        used_spec = resolve_spec(None, Path(path), res.schema_ref, res.path, [])
    if used_spec is None:  # pragma: no cover - scan_episode would have returned no episode
        return Report(episodes=1, steps=0, issues=issues), None
    rep = validate(res.episode, used_spec, gates, label=res.path)
    rep.issues = issues + rep.issues
    return rep, res.episode.episode_id or None


def validate_paths(paths: Iterable[str | Path], spec: EpisodeSpec | None = None, gates: Gates | None = None, *,
                   jobs: int = 1, recover: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> Report:
    """Validate every episode found under ``paths`` and the dataset as a whole.

    ``spec=None`` uses each episode's own schema (``schema.json`` beside it or the name in
    its metadata). ``jobs>1`` validates episodes in that many processes. ``progress(done,
    total)`` is called after each episode."""
    from rldskit.formats.capture_dir import find_episodes

    gates = gates or Gates()
    found, problems = find_episodes(paths)
    report = Report(issues=list(problems))
    ids: dict[str, str] = {}
    work = [(str(p), spec, gates, recover) for p in found]
    results: Iterable[tuple[Report, str | None]]
    if jobs > 1 and len(work) > 1:
        from concurrent.futures import ProcessPoolExecutor

        ex = ProcessPoolExecutor(max_workers=jobs)
        results = ex.map(_validate_one, work, chunksize=max(1, len(work) // (jobs * 8)))
    else:
        ex = None
        results = map(_validate_one, work)
    try:
        for n, ((rep, eid), (p, *_)) in enumerate(zip(results, work), 1):
            report.merge(rep)
            if eid:
                if gates.unique_episode_ids and eid in ids:
                    report.issues.append(issue("DUPLICATE_EPISODE_ID", p, f"episode_id {eid!r} is also used by {ids[eid]}",
                                               field="episode_id"))
                ids.setdefault(eid, p)
            if progress:
                progress(n, len(work))
    finally:
        if ex is not None:
            ex.shutdown()
    if found and len(found) < gates.min_episodes:
        report.issues.append(issue("TOO_FEW_EPISODES", None, f"{len(found)} episodes; the gate asks for at least {gates.min_episodes}"))
    return report


def resolve_spec_arg(value: str | None) -> EpisodeSpec | None:
    """``--schema`` argument: a built-in id/name or a JSON file; ``None`` means per episode."""
    if value is None:
        return None
    from rldskit.spec import load_spec

    return load_spec(value)


__all__ += ["resolve_spec_arg", "SpecError"]
