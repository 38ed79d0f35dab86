"""A/B model slots on the robot: install a verified bundle as a *candidate*, health-check and
*promote* it to *current*, *roll back* to the last known good. Standard library, numpy and
``cryptography`` only (through :mod:`edge_runtime.bundle`).

Layout under ``root`` (e.g. ``/opt/robot/model``)::

    state.json            the source of truth (below)
    slots/<slot_id>/      an extracted, verified bundle; immutable (files read-only) once renamed
                          into place; slot_id = "<version>-<sha256(edge_manifest.json)[:12]>"
    current, candidate    symlinks to slots/<id>, for humans only (replaced by atomic rename after
                          each state write; nothing here reads them)
    .lock                 flock: one writer at a time (readers take it shared)

``state.json`` = ``{"format": "rldskit-edge-slots", "current": id|null, "candidate": id|null,
"history": [ids, newest first, at most keep_history], "events": [the last 50 {time, action, slot,
ok, detail}, oldest first]}``.

**Crash safety.** ``state.json`` is only ever replaced whole (temporary file, fsync, rename, fsync
of the folder), so after a ``kill -9`` at any instant it is the old or the new complete file. A
slot folder is built under ``slots/.tmp-*`` (files fsynced) and renamed into place *before* any
state that names it is written, so a slot named by either state exists complete; slot folders are
garbage-collected (renamed to ``slots/.trash-*`` first, then deleted) only *after* the state that
stops naming them is durable. Leftover ``.tmp-*``/``.trash-*`` entries of a crashed operation are
removed by the next install/promote. Each mutating operation accepts ``fault``, a callable called
with the name of each step as it completes (:data:`INSTALL_STEPS`, :data:`PROMOTE_STEPS`,
:data:`ROLLBACK_STEPS`), so tests can crash it there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .atomic_io import fsync_dir, write_new_file
from .bundle import (MANIFEST, SAFETY, SIGNATURE, BundleError, action_names,
                     default_safety, extract_zip, json_bytes, safety_bounds, verify_bundle)
from .policy import Policy, PolicyError

__all__ = ["SlotError", "HealthCheckFailed", "LoadedPolicy", "install", "health_check", "promote", "rollback",
           "status", "load_current", "read_state", "INSTALL_STEPS", "PROMOTE_STEPS", "ROLLBACK_STEPS", "STATE_FORMAT"]

STATE_FORMAT = "rldskit-edge-slots"
STATE = "state.json"
SLOTS = "slots"
KEEP_HISTORY = 3
MAX_EVENTS = 50
_SLOT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}-[0-9a-f]{12}$")

_STATE_STEPS = ("state_tmp_written", "state_renamed", "dir_synced", "links")
INSTALL_STEPS = ("extracted", "verified", "slot_renamed", *_STATE_STEPS, "gc")
PROMOTE_STEPS = ("verified", "health_checked", *_STATE_STEPS, "gc")
ROLLBACK_STEPS = ("verified", *_STATE_STEPS)

Fault = Callable[[str], Any] | None


class SlotError(RuntimeError):
    """A slot operation that cannot proceed (no candidate, empty history, corrupt state...)."""


class HealthCheckFailed(SlotError):
    """The candidate failed its health check; ``report`` holds the figures. Nothing was promoted."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


class LoadedPolicy(NamedTuple):
    policy: Policy
    slot_id: str
    slot_dir: Path
    manifest: dict[str, Any]


# =========================================================================== state


def _empty_state() -> dict[str, Any]:
    return {"format": STATE_FORMAT, "current": None, "candidate": None, "history": [], "events": []}


def read_state(root: str | os.PathLike) -> dict[str, Any]:
    """``state.json`` of ``root`` (an empty state when there is none yet); raises
    :class:`SlotError` naming the file when it is malformed."""
    p = Path(root) / STATE
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return _empty_state()
    except OSError as e:
        raise SlotError(f"{p}: cannot read: {e}") from None
    try:
        s = json.loads(data)
    except ValueError as e:
        raise SlotError(f"{p}: not JSON: {e}") from None
    ok = (isinstance(s, dict) and s.get("format") == STATE_FORMAT and isinstance(s.get("history"), list)
          and isinstance(s.get("events", []), list))
    ids = [s.get("current"), s.get("candidate")] if isinstance(s, dict) else []
    ids += s.get("history", []) if ok else []
    if not ok or not all(i is None or (isinstance(i, str) and _SLOT_RE.match(i)) for i in ids) or None in s["history"]:
        raise SlotError(f"{p}: not an {STATE_FORMAT} state file")
    s.setdefault("events", [])
    return s


def _fire(fault: Fault, step: str) -> None:
    if fault is not None:
        fault(step)


def _event(state: dict[str, Any], action: str, slot: str | None, ok: bool, detail: str = "") -> None:
    t = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
    state["events"] = (list(state.get("events", [])) + [{"time": stamp, "action": action, "slot": slot, "ok": ok,
                                                          "detail": detail[:500]}])[-MAX_EVENTS:]


def _write_state(root: Path, state: dict[str, Any], fault: Fault = None) -> None:
    """Replace ``state.json`` atomically and durably (temporary file + fsync, rename, fsync of the
    folder), then refresh the human-facing symlinks."""
    state = {"format": STATE_FORMAT, "current": state.get("current"), "candidate": state.get("candidate"),
             "history": list(state.get("history", [])), "events": list(state.get("events", []))[-MAX_EVENTS:]}
    tmp = root / f".{STATE}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    try:
        write_new_file(tmp, json_bytes(state))
        _fire(fault, "state_tmp_written")
        os.replace(tmp, root / STATE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fire(fault, "state_renamed")
    fsync_dir(root)
    _fire(fault, "dir_synced")
    for role in ("current", "candidate"):
        _set_link(root, role, state[role])
    _fire(fault, "links")


def _set_link(root: Path, role: str, slot: str | None) -> None:
    link = root / role
    if link.exists() and not link.is_symlink():
        return  # something a human put there; not ours to replace
    try:
        if slot is None:
            link.unlink(missing_ok=True)
            return
        tmp = root / f".{role}.link-{os.getpid()}-{time.monotonic_ns()}"
        os.symlink(f"{SLOTS}/{slot}", tmp)
        os.replace(tmp, link)
    except OSError:
        pass  # the links are a convenience; state.json is the truth


@contextlib.contextmanager
def _locked(root: Path, shared: bool = False) -> Iterator[None]:
    if not shared and not root.is_dir():
        raise SlotError(f"{root}: no such model folder (install a bundle first)")
    try:
        fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if shared:  # a read-only root: nobody can be writing it
            yield
            return
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _cleanup(root: Path) -> None:
    """Remove what a crashed operation left: temporary state files, link temporaries, and
    ``slots/.tmp-*`` / ``slots/.trash-*`` folders. Called with the lock held."""
    for p in root.glob(f".{STATE}.tmp-*"):
        p.unlink(missing_ok=True)
    for p in list(root.glob(".current.link-*")) + list(root.glob(".candidate.link-*")):
        p.unlink(missing_ok=True)
    slots = root / SLOTS
    if slots.is_dir():
        for p in slots.iterdir():
            if p.name.startswith("."):
                _rmtree(p)


def _rmtree(p: Path) -> None:
    if p.is_symlink() or not p.is_dir():
        p.unlink(missing_ok=True)
    else:
        shutil.rmtree(p, ignore_errors=True)


def _gc(root: Path, state: Mapping[str, Any]) -> list[str]:
    """Delete slot folders no role names (after the state that drops them is durable)."""
    keep = {state.get("current"), state.get("candidate"), *state.get("history", [])}
    slots = root / SLOTS
    removed = []
    for p in sorted(slots.iterdir()) if slots.is_dir() else []:
        if p.name.startswith(".") or p.name in keep:
            continue
        trash = slots / f".trash-{p.name}-{time.monotonic_ns()}"
        os.rename(p, trash)  # a folder named slots/<id> is always complete
        removed.append(p.name)
    if removed:
        fsync_dir(slots)
    for p in slots.glob(".trash-*") if slots.is_dir() else []:
        _rmtree(p)
    return removed


def _slot_dir(root: Path, slot: str) -> Path:
    return root / SLOTS / slot


def _make_readonly(d: Path) -> None:
    for p in d.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, 0o444)


# =========================================================================== install


def install(bundle_path: str | os.PathLike, root: str | os.PathLike, *, trusted_keys: Any,
            allow_unsigned: bool = False, compat: str | None = None, fault: Fault = None) -> str:
    """Install a bundle (folder or ``.zip``) as the candidate; returns its slot id.

    A folder is verified first, then its files (the listed ones, the manifest and signature) are
    copied to ``slots/.tmp-*``; a zip is safely extracted there (:func:`extract_zip`). The copy is
    verified again in place (signature, every hash, ``compat``, the policy loads), made read-only
    and renamed to ``slots/<slot_id>``; then ``state.json`` gets ``candidate = slot_id``.
    Re-installing the same bundle is idempotent (the existing slot is reused). Installing the
    bundle that is already current changes no role. Raises :class:`BundleError` (refused
    bundle) or :class:`SlotError`."""
    root = Path(root)
    src = Path(bundle_path)
    slots = root / SLOTS
    slots.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        state = read_state(root)
        _cleanup(root)
        tmp = slots / f".tmp-{os.getpid()}-{time.monotonic_ns()}"
        try:
            try:
                if src.is_dir():
                    vb = verify_bundle(src, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, compat=compat)
                    tmp.mkdir()
                    for rel in [*vb.manifest["files"], MANIFEST, SIGNATURE]:
                        s = src.joinpath(*rel.split("/"))
                        if rel == SIGNATURE and not s.exists():
                            continue
                        d = tmp.joinpath(*rel.split("/"))
                        d.parent.mkdir(parents=True, exist_ok=True)
                        write_new_file(d, s.read_bytes())
                    for d in sorted((p for p in tmp.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                        fsync_dir(d)
                    fsync_dir(tmp)
                elif src.is_file():
                    extract_zip(src, tmp)
                else:
                    raise BundleError(f"{src}: no such bundle folder or zip")
                _fire(fault, "extracted")
                vb = verify_bundle(tmp, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, compat=compat)
                _fire(fault, "verified")
            except (BundleError, OSError) as e:
                _event(state, "install", None, False, f"{src}: {e}")
                _write_state(root, state)
                raise
            sid = vb.slot_id
            dest = _slot_dir(root, sid)
            if dest.exists():
                _rmtree(tmp)
                try:
                    have = verify_bundle(dest, allow_unsigned=True).manifest_sha256
                except BundleError as e:
                    raise SlotError(f"{dest}: an existing slot of the same id is damaged: {e}") from None
                if have != vb.manifest_sha256:
                    raise SlotError(f"{dest}: exists with a different manifest (sha256 {have}); refusing")
            else:
                _make_readonly(tmp)
                os.rename(tmp, dest)
                fsync_dir(slots)
            _fire(fault, "slot_renamed")
        except BaseException:
            _rmtree(tmp)
            raise
        if sid == state.get("current"):
            _event(state, "install", sid, True, f"{src}: already current; no role changed")
        else:
            state["candidate"] = sid
            _event(state, "install", sid, True, f"{src}: candidate (signed by {vb.key_id or 'nobody: unsigned'})")
        _write_state(root, state, fault)
        _gc(root, state)
        _fire(fault, "gc")
    return sid


# =========================================================================== health check


def _synthetic(policy: Policy, n: int, seed: int) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]]:
    rng = np.random.default_rng(seed)
    h, w = policy.image_size
    shapes = (policy.policy.get("inputs") or {}).get("state") or {}
    dims = {}
    for k in policy.state_keys:
        shp = (shapes.get(k) or {}).get("shape")
        dims[k] = int(np.prod(shp)) if shp else (policy.state_dim if len(policy.state_keys) == 1 else None)
        if dims[k] is None:
            raise PolicyError(f"{policy.source}: policy.json gives no shape for state {k!r}")
    obs = []
    for _ in range(n):
        frames = {c: rng.integers(0, 256, (policy.history, h, w, policy.channels), dtype=np.uint8)
                  for c in policy.cameras}
        state = {k: np.zeros((policy.history, d), np.float32) for k, d in dims.items()} if dims else None
        obs.append((frames, state))
    return obs


def health_check(slot_dir: str | os.PathLike, *, samples: int = 20, latency_budget_ms: float = 100.0,
                 observations: list[tuple[Any, Any]] | None = None, seed: int = 0) -> dict[str, Any]:
    """Run the slot's policy and judge it. ``observations``: ``(frames, state)`` pairs (e.g. from a
    recorded episode); default ``samples`` synthetic ones (random uint8 frames at the policy's
    ``image_size``, zero state). One untimed warm-up call (first-call allocations), then every
    observation is run and timed.

    Fails (``ok`` False, reasons in ``failures``) when: the policy does not load or raises; any
    output (normalised or in action units) is not finite; any action element lies outside the
    bundle's ``safety.json`` bounds (no tolerance: the count of violating elements must be 0; a
    bundle without bounds is not bound-checked); the p99 latency exceeds ``latency_budget_ms``.
    Returns ``{"ok", "slot", "source", "samples", "non_finite", "bound_violations",
    "violations_by_action", "action_min", "action_max", "latency_ms": {"p50", "p99", "max"},
    "latency_budget_ms", "failures"}``."""
    d = Path(slot_dir)
    report: dict[str, Any] = {"ok": False, "slot": str(d), "source": "synthetic" if observations is None else
                              "observations", "samples": 0, "non_finite": 0, "bound_violations": 0,
                              "violations_by_action": {}, "latency_ms": None,
                              "latency_budget_ms": float(latency_budget_ms), "failures": []}
    try:
        policy = Policy.load(d / "policy") if (d / "policy").is_dir() else Policy.load(d)
        sp = d / SAFETY
        safety = json.loads(sp.read_text()) if sp.is_file() else default_safety(policy.policy)
        names = action_names(policy.policy)
        if len(names) != policy.A:
            raise PolicyError(f"{policy.source}: policy.json names {len(names)} actions; the policy outputs {policy.A}")
        lo, hi = safety_bounds(safety, names, str(sp))
        obs = list(observations) if observations is not None else _synthetic(policy, max(1, int(samples)), seed)
        if not obs:
            raise PolicyError("no observations to check the policy on")
        policy.normalized(*obs[0])  # warm-up
        lat, viol, non_finite = [], np.zeros(policy.A, np.int64), 0
        amin = np.full(policy.A, np.inf)
        amax = np.full(policy.A, -np.inf)
        for frames, state in obs:
            t0 = time.perf_counter()
            y = policy.normalized(frames, state)
            lat.append((time.perf_counter() - t0) * 1000)
            a = policy.unnormalize(y).astype(np.float64)
            if not (np.all(np.isfinite(y)) and np.all(np.isfinite(a))):
                non_finite += 1
            fin = np.isfinite(a)
            viol += (fin & ((a < lo) | (a > hi))).sum(axis=0)  # NaN/inf count as non_finite, not here
            amin = np.minimum(amin, np.where(fin, a, np.inf).min(axis=0))
            amax = np.maximum(amax, np.where(fin, a, -np.inf).max(axis=0))
    except (PolicyError, BundleError, OSError, ValueError, KeyError, TypeError) as e:
        report["failures"].append(f"the policy could not be run: {e}")
        return report
    lat_a = np.asarray(lat)
    report.update(samples=len(obs), non_finite=non_finite, bound_violations=int(viol.sum()),
                  violations_by_action={n: int(v) for n, v in zip(names, viol) if v},
                  action_min=[float(x) if np.isfinite(x) else None for x in amin],
                  action_max=[float(x) if np.isfinite(x) else None for x in amax],
                  latency_ms={"p50": float(np.percentile(lat_a, 50)), "p99": float(np.percentile(lat_a, 99)),
                              "max": float(lat_a.max())})
    if non_finite:
        report["failures"].append(f"{non_finite} of {len(obs)} outputs are not finite (NaN or inf)")
    if viol.sum():
        report["failures"].append(f"{int(viol.sum())} action values outside the safety bounds "
                                  f"({report['violations_by_action']})")
    if report["latency_ms"]["p99"] > latency_budget_ms:
        report["failures"].append(f"p99 latency {report['latency_ms']['p99']:.3f} ms exceeds the budget of "
                                  f"{latency_budget_ms} ms")
    report["ok"] = not report["failures"]
    return report


def _run_health(slot_dir: Path, health: Any) -> dict[str, Any]:
    if health is None:
        return health_check(slot_dir)
    if isinstance(health, Mapping):
        return health_check(slot_dir, **health)
    if callable(health):
        return dict(health(slot_dir))
    raise TypeError(f"health must be None, a mapping of health_check options or a callable, got {health!r}")


# =========================================================================== promote / rollback


def promote(root: str | os.PathLike, *, health: Any = None, fault: Fault = None, keep_history: int = KEEP_HISTORY,
            trusted_keys: Any = None) -> dict[str, Any]:
    """Make the candidate current if it passes its health check.

    ``health``: ``None`` (:func:`health_check` defaults), a mapping of :func:`health_check`
    options, or a callable ``(slot_dir) -> report`` with an ``ok`` key. The candidate is first
    re-verified in place (every hash, the policy loads; its signature too when ``trusted_keys``
    are given). On failure the roles are unchanged (an event is logged) and
    :class:`HealthCheckFailed` (with ``.report``) or :class:`SlotError` is raised. On success:
    ``current = candidate``, ``history = [old current] + history`` (at most ``keep_history``),
    ``candidate = None``, written atomically; unreferenced slots are deleted after that. Returns
    ``{"current", "previous", "history", "removed", "health"}``."""
    root = Path(root)
    with _locked(root):
        state = read_state(root)
        cand = state.get("candidate")
        if cand is None:
            raise SlotError(f"{root / STATE}: no candidate to promote (install a bundle first)")
        sd = _slot_dir(root, cand)
        try:
            verify_bundle(sd, trusted_keys=trusted_keys, allow_unsigned=trusted_keys is None)
        except BundleError as e:
            _event(state, "promote", cand, False, f"verification failed: {e}")
            _write_state(root, state)
            raise SlotError(f"{sd}: candidate fails verification: {e}") from None
        _fire(fault, "verified")
        report = _run_health(sd, health)
        _fire(fault, "health_checked")
        if not report.get("ok"):
            _event(state, "promote", cand, False, "health check failed: " + "; ".join(report.get("failures", [])))
            _write_state(root, state)
            raise HealthCheckFailed(f"{cand}: health check failed: {'; '.join(report.get('failures', []))}", report)
        old = state.get("current")
        hist = ([old] if old else []) + list(state.get("history", []))
        seen: list[str] = []
        for h in hist:
            if h != cand and h not in seen:
                seen.append(h)
        state.update(current=cand, candidate=None, history=seen[:max(0, int(keep_history))])
        lat = (report.get("latency_ms") or {}).get("p99")
        _event(state, "promote", cand, True, f"previous {old}; p99 {lat if lat is None else round(lat, 3)} ms")
        _write_state(root, state, fault)
        removed = _gc(root, state)
        _cleanup(root)
        _fire(fault, "gc")
    return {"current": cand, "previous": old, "history": state["history"], "removed": removed, "health": report}


def rollback(root: str | os.PathLike, *, fault: Fault = None) -> dict[str, Any]:
    """Make ``history[0]`` (the last known good) current again. The slot rolled back from is
    dropped from every role (recorded in ``events``; its folder stays until the next install or
    promote garbage-collects it); the candidate is kept. The target is re-verified (hashes, the
    policy loads) first. Raises :class:`SlotError` when the history is empty. Returns
    ``{"current", "rolled_back", "history"}``."""
    root = Path(root)
    with _locked(root):
        state = read_state(root)
        hist = list(state.get("history", []))
        if not hist:
            raise SlotError(f"{root / STATE}: no previous slot to roll back to (history is empty)")
        target, old = hist[0], state.get("current")
        try:
            verify_bundle(_slot_dir(root, target), allow_unsigned=True)
        except BundleError as e:
            raise SlotError(f"{_slot_dir(root, target)}: the rollback target fails verification: {e}") from None
        _fire(fault, "verified")
        state.update(current=target, history=hist[1:])
        if state.get("candidate") == target:
            state["candidate"] = None
        _event(state, "rollback", target, True, f"rolled back from {old}")
        _write_state(root, state, fault)
    return {"current": target, "rolled_back": old, "history": state["history"]}


# =========================================================================== reading


def _info(root: Path, slot: str | None) -> dict[str, Any] | None:
    if slot is None:
        return None
    d = _slot_dir(root, slot)
    out: dict[str, Any] = {"slot": slot, "path": str(d), "present": d.is_dir()}
    try:
        m = json.loads((d / MANIFEST).read_text())
        out.update(version=m.get("version"), name=m.get("name"), created_at=m.get("created_at"),
                   compat=m.get("compat"), backend=m.get("backend"))
    except (OSError, ValueError, AttributeError):
        out["present"] = False
    return out


def status(root: str | os.PathLike, *, events: int = 10) -> dict[str, Any]:
    """``{"root", "current", "candidate", "history": [...], "slots": [ids on disk], "events":
    [the last few]}``; each role is ``{"slot", "path", "present", "version", "name", "created_at",
    "compat", "backend"}`` (from its manifest) or ``None``."""
    root = Path(root)
    s = read_state(root)
    slots = root / SLOTS
    on_disk = sorted(p.name for p in slots.iterdir() if not p.name.startswith(".")) if slots.is_dir() else []
    return {"root": str(root), "current": _info(root, s.get("current")), "candidate": _info(root, s.get("candidate")),
            "history": [_info(root, h) for h in s.get("history", [])], "slots": on_disk,
            "events": s.get("events", [])[-events:] if events else []}


def load_current(root: str | os.PathLike, *, verify: bool = True) -> LoadedPolicy:
    """The current slot's policy: ``LoadedPolicy(policy, slot_id, slot_dir, manifest)``. With
    ``verify`` (default) the slot's files are checked against its manifest first (hashes; the
    signature was checked at install). Raises :class:`SlotError` when nothing is current."""
    root = Path(root)
    with _locked(root, shared=True):
        s = read_state(root)
        cur = s.get("current")
        if cur is None:
            raise SlotError(f"{root / STATE}: no current slot (nothing has been promoted)")
        d = _slot_dir(root, cur)
        try:
            if verify:
                vb = verify_bundle(d, allow_unsigned=True)
                manifest = vb.manifest
            else:
                manifest = json.loads((d / MANIFEST).read_text())
            policy = Policy.load(d / "policy")
        except (BundleError, PolicyError, OSError, ValueError) as e:
            raise SlotError(f"{d}: the current slot cannot be loaded: {e}") from None
    return LoadedPolicy(policy, cur, d, manifest)

