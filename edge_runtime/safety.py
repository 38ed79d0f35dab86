"""The safety head: the last word between the policy and the motors. numpy and the standard library only.

``SafetyHead(config, action_names)`` is configured from a bundle's ``safety.json``::

    {"names":     ["steering", "throttle"],                         # optional: action_names default to it
     "action_key": "action",                                        # informational
     "bounds":    {"steering": [-1, 1], "throttle": [-0.2, 0.6]},   # clamp (absent name: unbounded)
     "max_delta": {"steering": 0.25, "throttle": 0.05},             # per-step rate limit (absent: none)
     "fallback":  "hold",                                           # NaN/inf request: "hold" | "zero"
     "initial":   {"throttle": 0.0},                                # optional: rate-limit the 1st step from here
     "risk":      {"weights": {"throttle": 2.0}, "scale": 1.0, "stop_above": 0.9}}

``step(action)`` returns a :class:`SafeAction`: the requested action clamped to ``bounds``, then
moved towards that target by at most ``max_delta`` per step from the previous *output*, so for
any sequence of requests every output lies within bounds and consecutive outputs differ by at
most ``max_delta`` (element-wise; the first output after :meth:`~SafetyHead.reset` is only
rate-limited when ``initial`` is configured).

A request holding NaN or infinity is never passed on: the target becomes the fallback
(``"hold"``: the previous output, or zeros before the first; ``"zero"``: zeros, clamped to the
bounds and approached at the rate limit), a ``"nonfinite"`` violation is recorded, the risk is 1
and ``stopped`` is True. ``stopped`` is also True when the risk reaches ``risk.stop_above``;
the output is then the fallback too.

Risk: every element contributes ``weight * (bounds excess / bounds width + delta excess /
max_delta)``; the sum ``s`` maps to ``1 - exp(-scale * s)`` in ``[0, 1)`` (0 when nothing was
violated; larger violations score strictly higher), and to exactly 1 for a non-finite request.

Every violation is a dict ``{"step", "key", "kind", "value", "limit"}``; ``kind`` is
``"bounds"`` (``value`` the request, ``limit`` the bound it crossed), ``"delta"`` (``value`` the
requested change after clamping, ``limit`` ``max_delta``) or ``"nonfinite"``, plus the
step's ``"risk"``. Each one is logged to the ``edge_runtime.safety`` logger (at ``log_level``,
default WARNING), kept in :attr:`SafetyHead.log` (the most recent ``max_log``), counted in
:attr:`SafetyHead.violation_count` and passed to ``on_violation`` when given.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["SafetyHead", "SafeAction", "SafetyConfigError"]

_log = logging.getLogger("edge_runtime.safety")
_FALLBACKS = ("hold", "zero")
_KEYS = {"bounds", "max_delta", "fallback", "initial", "risk", "names", "action_key"}


class SafetyConfigError(ValueError):
    """A safety config that cannot be applied; the message names the field."""


@dataclasses.dataclass
class SafeAction:
    """What the safety head decided for one step. ``action`` float32 ``(A,)`` is what may be
    executed; ``requested`` is the policy's output as given."""

    action: np.ndarray
    violations: list[dict[str, Any]]
    risk: float
    stopped: bool
    requested: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return not self.violations and not self.stopped


def _per_name(cfg: Any, names: Sequence[str], field: str, default: Any, convert: Callable[[Any, str], Any]) -> list[Any]:
    """``{name: value}`` (or a list aligned with ``names``) -> one value per name."""
    if cfg is None:
        return [default] * len(names)
    if isinstance(cfg, Mapping):
        unknown = set(cfg) - set(names)
        if unknown:
            raise SafetyConfigError(f"safety.{field}: unknown action names {sorted(unknown)} (known: {list(names)})")
        return [convert(cfg[n], f"safety.{field}.{n}") if n in cfg and cfg[n] is not None else default for n in names]
    if isinstance(cfg, (list, tuple)):
        if len(cfg) != len(names):
            raise SafetyConfigError(f"safety.{field}: {len(cfg)} entries for {len(names)} actions {list(names)}")
        return [convert(v, f"safety.{field}[{i}]") if v is not None else default for i, v in enumerate(cfg)]
    raise SafetyConfigError(f"safety.{field}: expected {{name: value}}, got {type(cfg).__name__}")


def _bound(v: Any, where: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in v)
    except (TypeError, ValueError):
        raise SafetyConfigError(f"{where}: expected [low, high], got {v!r:.80}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise SafetyConfigError(f"{where}: expected low <= high, got [{lo}, {hi}]")
    return lo, hi


def _nonneg(v: Any, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise SafetyConfigError(f"{where}: expected a number, got {v!r:.80}") from None
    if not x >= 0:
        raise SafetyConfigError(f"{where}: expected a number >= 0, got {x}")
    return x


def _finite(v: Any, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise SafetyConfigError(f"{where}: expected a number, got {v!r:.80}") from None
    if not math.isfinite(x):
        raise SafetyConfigError(f"{where}: expected a finite number, got {x}")
    return x


class SafetyHead:
    """Clamp, rate-limit and score each action; see the module docstring for the config."""

    def __init__(self, config: Mapping[str, Any] | None, action_names: Sequence[str] | None = None, *,
                 on_violation: Callable[[dict[str, Any]], None] | None = None, max_log: int = 1000,
                 log_level: int = logging.WARNING):
        config = dict(config or {})
        unknown = set(config) - _KEYS
        if unknown:  # fail closed: a limit this head does not understand must not be silently ignored
            raise SafetyConfigError(f"safety: unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})")
        cfg_names = config.get("names")
        if action_names is None:
            if not isinstance(cfg_names, list):
                raise SafetyConfigError("safety: no action_names given and the config has no 'names' list")
            action_names = cfg_names
        elif cfg_names is not None and [str(n) for n in cfg_names] != [str(n) for n in action_names]:
            raise SafetyConfigError(f"safety.names {cfg_names} differ from the action names {list(action_names)}")
        self.action_names = [str(n) for n in action_names]
        if not self.action_names or len(set(self.action_names)) != len(self.action_names):
            raise SafetyConfigError(f"action_names must be unique and non-empty, got {list(action_names)}")
        self.action_key = str(config.get("action_key", "action"))
        names = self.action_names
        bounds = _per_name(config.get("bounds"), names, "bounds", (-math.inf, math.inf), _bound)
        self.lo = np.array([b[0] for b in bounds], np.float64)
        self.hi = np.array([b[1] for b in bounds], np.float64)
        self.max_delta = np.array(_per_name(config.get("max_delta"), names, "max_delta", math.inf, _nonneg), np.float64)
        self.fallback = str(config.get("fallback", "hold"))
        if self.fallback not in _FALLBACKS:
            raise SafetyConfigError(f"safety.fallback must be one of {_FALLBACKS}, got {self.fallback!r}")
        init = config.get("initial")
        self.initial: np.ndarray | None = None
        if init is not None:
            vals = _per_name(init, names, "initial", 0.0, _finite)
            self.initial = np.clip(np.array(vals, np.float64), self.lo, self.hi)
        risk = dict(config.get("risk") or {})
        unknown = set(risk) - {"weights", "scale", "stop_above"}
        if unknown:
            raise SafetyConfigError(f"safety.risk: unknown keys {sorted(unknown)}")
        self.weights = np.array(_per_name(risk.get("weights"), names, "risk.weights", 1.0, _nonneg), np.float64)
        self.risk_scale = _nonneg(risk.get("scale", 1.0), "safety.risk.scale")
        stop = risk.get("stop_above")
        self.stop_above = None if stop is None else _nonneg(stop, "safety.risk.stop_above")
        width = self.hi - self.lo
        self._width = np.where(np.isfinite(width) & (width > 0), width, 1.0)
        self.on_violation = on_violation
        self.log_level = log_level
        self.log: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_log)
        self.violation_count = 0
        self.steps = 0
        self._prev: np.ndarray | None = None
        self.reset()

    @property
    def previous(self) -> np.ndarray | None:
        """The last output (float32), or ``None`` before the first step after a reset."""
        return None if self._prev is None else self._prev.astype(np.float32)

    def reset(self) -> None:
        """Forget the previous output (a new episode). Counters and the log are kept."""
        self._prev = None if self.initial is None else self.initial.copy()

    def _zero(self) -> np.ndarray:
        return np.clip(np.zeros(len(self.action_names)), self.lo, self.hi)

    def step(self, action: Any) -> SafeAction:
        """One requested action ``(A,)`` -> the :class:`SafeAction` to execute."""
        req = np.asarray(action, dtype=np.float64).reshape(-1) if np.ndim(action) else None
        if req is None or req.shape != (len(self.action_names),):
            raise ValueError(f"safety: expected an action of shape ({len(self.action_names)},) for "
                             f"{self.action_names}, got shape {np.shape(action)}")
        violations: list[dict[str, Any]] = []
        prev = self._prev
        finite = np.isfinite(req)
        stopped = False
        if not finite.all():
            for i in np.flatnonzero(~finite):
                violations.append(self._violation(i, "nonfinite", float(req[i]), None))
            target = self._fallback_target()
            risk = 1.0
            stopped = True
        else:
            clamped = np.clip(req, self.lo, self.hi)
            excess = np.abs(req - clamped) / self._width
            for i in np.flatnonzero(req != clamped):
                violations.append(self._violation(i, "bounds", float(req[i]),
                                                  float(self.hi[i] if req[i] > self.hi[i] else self.lo[i])))
            d_excess = np.zeros_like(req)
            if prev is not None:
                change = clamped - prev
                over = np.abs(change) > self.max_delta
                if over.any():
                    md = self.max_delta
                    d_excess = np.where(over, (np.abs(change) - md) / np.where(md > 0, md, 1.0), 0.0)
                    for i in np.flatnonzero(over):
                        violations.append(self._violation(i, "delta", float(change[i]), float(md[i])))
            total = float(np.sum(self.weights * (excess + d_excess))) * self.risk_scale
            risk = float(-math.expm1(-total)) if total > 0 else 0.0
            target = clamped
            if self.stop_above is not None and risk >= self.stop_above:
                stopped = True
                target = self._fallback_target()
        lower, upper = self.lo, self.hi
        if prev is not None:
            lower, upper = np.maximum(lower, prev - self.max_delta), np.minimum(upper, prev + self.max_delta)
        out32 = np.clip(target, lower, upper).astype(np.float32)
        # float32 rounding may step just outside (0.6 -> 0.6000000238): one ulp back inside, towards prev
        out32 = np.where(out32 > upper, np.nextafter(out32, np.float32(-np.inf)), out32)
        out32 = np.where(out32 < lower, np.nextafter(out32, np.float32(np.inf)), out32).astype(np.float32)
        # what was output is what the next step is limited from (float32: what the motors got)
        self._prev = out32.astype(np.float64)
        self.steps += 1
        if violations:
            self._report(violations, risk, stopped)
        return SafeAction(out32, violations, risk, stopped, req.astype(np.float32))

    def _fallback_target(self) -> np.ndarray:
        if self.fallback == "hold" and self._prev is not None:
            return self._prev.copy()
        return self._zero()

    def _violation(self, i: int, kind: str, value: float, limit: float | None) -> dict[str, Any]:
        return {"step": self.steps, "key": self.action_names[i], "kind": kind, "value": value, "limit": limit}

    def _report(self, violations: list[dict[str, Any]], risk: float, stopped: bool) -> None:
        self.violation_count += len(violations)
        for v in violations:
            v["risk"] = risk
            self.log.append(v)
            _log.log(self.log_level, "safety step %d: %s %s value=%r limit=%r (risk %.3f%s)", v["step"], v["key"], v["kind"],
                         v["value"], v["limit"], risk, ", stopped" if stopped else "")
            if self.on_violation is not None:
                try:
                    self.on_violation(v)
                except Exception:  # noqa: BLE001 - a broken callback must not stop the safety head
                    _log.exception("safety: on_violation callback failed")
