"""Gates: may the policy act (or may background work run) right now? Standard library only.

A *provider* is anything with ``check() -> (ok: bool, reason: str)`` (and, optionally, a
``name``). Built in:

- :class:`ThermalProvider` — the hottest readable ``/sys/class/thermal/thermal_zone*/temp``
  (millidegrees Celsius) must stay below ``max_c``.
- :class:`BatteryProvider` — every ``/sys/class/power_supply/*`` of ``type`` ``Battery`` must
  hold ``capacity >= min_capacity`` unless external power (a ``Mains``/``USB`` supply with
  ``online`` = 1, or a battery ``status`` of ``Charging``/``Full``) is present; with
  ``require_charging`` external power is required. No battery at all is ok (mains powered).
- :class:`IdleProvider` — ok while the system is idle (a callable returning bool, or a flag file
  that exists while idle).
- :class:`TeleopProvider` — ok while teleoperation is *not* active (a callable returning True
  while a human drives, or a flag file that exists while teleop is active): the policy must not act.

Sysfs roots are configurable (``sysfs_root``) so tests can build a fake tree. Malformed content
(empty, non-numeric, unreadable, permission denied) never raises: the value is *unknown*, the
reason says why, and ``unknown_ok`` decides the verdict (thermal and battery default to ok:
missing sensors are common on a Pi; set ``unknown_ok=False`` to fail closed). A provider whose
callable raises is not ok (fail closed).

:class:`Gate` combines providers with ``mode="all"`` (every provider ok) or ``"any"``;
``check()`` returns ``(ok, reasons)`` where ``reasons`` are the ``"name: reason"`` strings of
the providers that decided the verdict: under ``"all"`` the blocking ones when closed (every
one when open); under ``"any"`` the passing ones when open (every one when closed). A provider
that raises counts as not ok; the gate itself never raises. ``Gate.last_results`` keeps
``(name, ok, reason)`` of every provider from the last check.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, Union

__all__ = ["Provider", "ThermalProvider", "BatteryProvider", "IdleProvider", "TeleopProvider", "FlagProvider", "Gate"]

_log = logging.getLogger("edge_runtime.gating")


class Provider(Protocol):
    def check(self) -> tuple[bool, str]: ...


def _read(path: Path) -> tuple[str | None, str]:
    """``(text, "")`` stripped, or ``(None, why)`` when the file cannot be read or is empty."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
    except OSError as e:
        return None, f"{path.name}: unreadable ({e.strerror or type(e).__name__})"
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None, f"{path.name}: not text"
    if not text:
        return None, f"{path.name}: empty"
    return text, ""


def _read_int(path: Path) -> tuple[int | None, str]:
    text, why = _read(path)
    if text is None:
        return None, why
    try:
        return int(text), ""
    except ValueError:
        return None, f"{path.name}: not a number ({text[:20]!r})"


def _list(d: Path, prefix: str = "") -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []


class ThermalProvider:
    """Ok while every readable thermal zone is below ``max_c`` degrees Celsius."""

    name = "thermal"

    def __init__(self, sysfs_root: str | os.PathLike = "/sys", max_c: float = 80.0, *, unknown_ok: bool = True):
        self.root = Path(sysfs_root) / "class" / "thermal"
        self.max_c = float(max_c)
        self.unknown_ok = unknown_ok

    def temperatures(self) -> tuple[dict[str, float], list[str]]:
        """``({zone: °C}, [problems])`` for every zone (unreadable ones only in the problems)."""
        temps: dict[str, float] = {}
        problems: list[str] = []
        for zone in _list(self.root, "thermal_zone"):
            v, why = _read_int(zone / "temp")
            if v is None:
                problems.append(f"{zone.name}/{why}")
                continue
            kind, _ = _read(zone / "type")
            temps[f"{zone.name}" + (f" ({kind})" if kind else "")] = v / 1000.0
        return temps, problems

    def check(self) -> tuple[bool, str]:
        temps, problems = self.temperatures()
        if not temps and not problems:
            return True, "no thermal zones"
        if not temps:
            return self.unknown_ok, "temperature unknown: " + "; ".join(problems)
        zone, hottest = max(temps.items(), key=lambda kv: kv[1])
        note = f" (ignored: {'; '.join(problems)})" if problems else ""
        if hottest >= self.max_c:
            return False, f"{zone} at {hottest:.1f} C >= {self.max_c:g} C{note}"
        return True, f"hottest {zone} at {hottest:.1f} C < {self.max_c:g} C{note}"


_EXTERNAL_TYPES = {"mains", "usb", "usb_c", "usb_pd", "usb_pd_drp", "usb_dcp", "usb_cdp", "usb_aca", "wireless"}


class BatteryProvider:
    """Ok while every battery holds at least ``min_capacity`` percent, or external power is on
    (``require_charging=True``: only while external power is on / the battery charges)."""

    name = "battery"

    def __init__(self, sysfs_root: str | os.PathLike = "/sys", min_capacity: float = 20, require_charging: bool = False,
                 *, unknown_ok: bool = True):
        self.root = Path(sysfs_root) / "class" / "power_supply"
        self.min_capacity = float(min_capacity)
        self.require_charging = require_charging
        self.unknown_ok = unknown_ok

    def read(self) -> dict[str, object]:
        """``{"batteries": {name: {"capacity", "status"}}, "external": bool | None, "problems": [...]}``."""
        batteries: dict[str, dict[str, object]] = {}
        external: bool | None = None
        problems: list[str] = []
        for sup in _list(self.root):
            kind, why = _read(sup / "type")
            if kind is None:
                problems.append(f"{sup.name}/{why}")
                continue
            if kind.lower() == "battery":
                cap, why = _read_int(sup / "capacity")
                if cap is None:
                    problems.append(f"{sup.name}/{why}")
                elif not 0 <= cap <= 100:
                    problems.append(f"{sup.name}/capacity: {cap} is not a percentage")
                    cap = None
                status, why = _read(sup / "status")
                if status is None:
                    problems.append(f"{sup.name}/{why}")
                batteries[sup.name] = {"capacity": cap, "status": status}
                if status in ("Charging", "Full"):
                    external = True
            elif kind.lower() in _EXTERNAL_TYPES:
                online, why = _read_int(sup / "online")
                if online is None:
                    problems.append(f"{sup.name}/{why}")
                elif online:
                    external = True
                elif external is None:
                    external = False
        return {"batteries": batteries, "external": external, "problems": problems}

    def check(self) -> tuple[bool, str]:
        r = self.read()
        batteries: dict[str, dict[str, object]] = r["batteries"]  # type: ignore[assignment]
        external, problems = r["external"], r["problems"]
        note = f" ({'; '.join(problems)})" if problems else ""  # type: ignore[arg-type]
        if not batteries:
            if self.require_charging and not external:
                return (self.unknown_ok if external is None else False), f"no battery and no external power seen{note}"
            return True, f"no battery (mains powered){note}"
        if self.require_charging and not external:
            if external is None and any(b["status"] is None for b in batteries.values()):
                return self.unknown_ok, f"charging state unknown{note}"
            return False, "not charging: " + ", ".join(f"{n} {b['status']}" for n, b in batteries.items()) + note
        parts = []
        unknown = False
        for n, b in batteries.items():
            cap = b["capacity"]
            if cap is None:
                unknown = True
                parts.append(f"{n} capacity unknown")
                continue
            if cap < self.min_capacity and not external:  # type: ignore[operator]
                return False, f"{n} at {cap}% < {self.min_capacity:g}% and {b['status'] or 'status unknown'}{note}"
            parts.append(f"{n} at {cap}% {b['status'] or ''}".rstrip())
        if unknown and not external:
            return self.unknown_ok, "; ".join(parts) + note
        return True, "; ".join(parts) + (" on external power" if external else "") + note


Source = Union[Callable[[], bool], str, os.PathLike]


class FlagProvider:
    """A boolean from a callable or a flag file (exists = True). ``ok_when`` is the value
    under which the provider is ok. A raising callable is not ok."""

    name = "flag"

    def __init__(self, source: Source, *, ok_when: bool, what: str, name: str | None = None):
        self.source = source
        self.ok_when = ok_when
        self.what = what
        if name:
            self.name = name

    def value(self) -> tuple[bool | None, str]:
        if callable(self.source):
            try:
                return bool(self.source()), "reported"
            except Exception as e:  # noqa: BLE001 - any failure is an unknown state
                return None, f"check failed: {type(e).__name__}: {e}"
        p = Path(self.source)
        try:
            os.stat(p)
            return True, f"flag {p} present"
        except FileNotFoundError:
            return False, f"flag {p} absent"
        except OSError as e:
            return None, f"flag {p} unreadable: {e.strerror or e}"

    def check(self) -> tuple[bool, str]:
        v, how = self.value()
        if v is None:
            return False, f"{self.what} unknown ({how})"
        return v == self.ok_when, f"{self.what}: {'yes' if v else 'no'} ({how})"


class IdleProvider(FlagProvider):
    """Ok while the system is idle: ``source`` is a callable returning True when idle, or a
    path whose existence means idle."""

    name = "idle"

    def __init__(self, source: Source, *, name: str | None = None):
        super().__init__(source, ok_when=True, what="idle", name=name)


class TeleopProvider(FlagProvider):
    """Ok while teleoperation is NOT active: ``source`` is a callable returning True while a
    human drives, or a path whose existence means teleop is active."""

    name = "teleop"

    def __init__(self, source: Source, *, name: str | None = None):
        super().__init__(source, ok_when=False, what="teleop active", name=name)


class Gate:
    """Combine providers: ``mode="all"`` (each must be ok) or ``"any"`` (one suffices).
    ``min_interval_s`` > 0 reuses the last verdict for that long (sysfs reads at 20 Hz are cheap,
    but a slow provider can be throttled)."""

    def __init__(self, providers: Sequence[Provider], mode: str = "all", *, min_interval_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        if mode not in ("all", "any"):
            raise ValueError(f"Gate mode must be 'all' or 'any', got {mode!r}")
        self.providers = list(providers)
        self.mode = mode
        self.min_interval_s = float(min_interval_s)
        self.clock = clock
        self._last: tuple[float, tuple[bool, list[str]]] | None = None
        self.last_results: list[tuple[str, bool, str]] = []

    def check(self) -> tuple[bool, list[str]]:
        if self.min_interval_s > 0 and self._last is not None and self.clock() - self._last[0] < self.min_interval_s:
            ok, reasons = self._last[1]
            return ok, list(reasons)
        results = []
        for i, p in enumerate(self.providers):
            name = getattr(p, "name", None) or type(p).__name__ or f"provider{i}"
            try:
                ok, reason = p.check()
                ok = bool(ok)
            except Exception as e:  # noqa: BLE001 - a broken provider closes the gate, never crashes the loop
                _log.exception("gate provider %s failed", name)
                ok, reason = False, f"provider failed: {type(e).__name__}: {e}"
            results.append((name, ok, str(reason)))
        self.last_results = results
        if not results:
            verdict: tuple[bool, list[str]] = (True, [])
        else:
            ok = all(r[1] for r in results) if self.mode == "all" else any(r[1] for r in results)
            if ok and self.mode == "any":
                why = [r for r in results if r[1]]
            elif not ok and self.mode == "all":
                why = [r for r in results if not r[1]]
            else:
                why = results
            verdict = (ok, [f"{n}: {r}" for n, _, r in why])
        if self.min_interval_s > 0:
            self._last = (self.clock(), verdict)
        return verdict[0], list(verdict[1])
