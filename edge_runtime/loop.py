"""The control loop on the robot: gate -> observe -> policy -> safety -> act -> log, at a fixed
rate, with latency accounting; and offline replay of a recorded episode through a policy.
numpy and the standard library only.

Receding horizon: the policy predicts an action chunk ``(K, A)`` every tick and only its first
action ``chunk[0]`` is executed; the rest is discarded and the policy runs again on the next
observation (no open-loop chunk execution, so the robot always reacts to the newest frame).

One tick of :class:`ControlLoop`:

1. ``gate.check()`` (when a gate is given). Closed: nothing is executed (``gated="none"``,
   default) or the safety head's last output is repeated (``gated="hold"``); the reasons are
   counted in ``LoopStats.gate_reasons`` and logged on every open/close transition; the frame
   history restarts when the gate opens again. Gated ticks are not logged as steps.
2. ``observe()`` -> :class:`Observation` (``None``: no new observation; the tick is skipped).
   Frames for the policy must be ``uint8`` arrays at camera resolution (resized with
   ``policy.prepare_frame``); PNG bytes are decoded here, JPEG bytes only if Pillow happens to
   be importable (there is no JPEG decoder in numpy): hand the policy arrays and the logger
   the camera's JPEG bytes via ``Observation.encoded``.
3. The history buffer keeps ``policy.history`` frames per camera (and state vectors), oldest
   first; at the start of an episode it is filled with copies of the first frame.
4. ``policy(frames, state)[0]`` -> ``safety.step`` -> ``act(safe.action)``.
5. ``log.log_step`` (when a log is given): the executed action, ``policy_action`` (the raw
   policy output), ``control_mode`` ``"pilot"``, the frames (encoded bytes when given, else the
   arrays, PNG-encoded), timestamps ``camera`` (``Observation.timestamp`` or the wall clock at
   observe) and ``control`` (the wall clock after ``act``). The loop opens an episode at its
   first logged step and ends it (truncated) when ``run`` returns, unless the caller had
   already opened one.

Latency is measured from just before ``observe()`` to just after ``act()`` returns (logging
excluded); a tick whose latency exceeds ``latency_budget_ms`` is a *deadline miss*; a tick whose
whole work (gate to log) takes longer than the period is an *overrun*, after which the schedule
restarts from now instead of bursting to catch up. Exceptions from ``observe``, the policy or
``act`` propagate (the episode so far is ended first).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.episode_log import CaptureEpisode, EpisodeLog, decode_frame, read_capture_episode
from edge_runtime.gating import Gate
from edge_runtime.safety import SafeAction, SafetyHead

__all__ = ["Observation", "ControlLoop", "LoopStats", "PolicyStepper", "ReplayResult", "replay_episode"]

_log = logging.getLogger("edge_runtime.loop")


@dataclasses.dataclass
class Observation:
    """One observation. ``frames``: ``{camera path: uint8 (H, W, C)}`` at camera resolution (or
    PNG bytes); ``state``: ``{state key: array}`` in raw units; ``encoded``: ``{camera path:
    JPEG/PNG bytes}`` to log instead of the arrays; ``timestamp``: camera capture time (wall
    clock seconds) for the log; ``log_observation``: other observation values to log
    (``{"observation/speed": 0.4}``)."""

    frames: Mapping[str, Any]
    state: Mapping[str, Any] | None = None
    encoded: Mapping[str, bytes] | None = None
    timestamp: float | None = None
    log_observation: Mapping[str, Any] | None = None


class PolicyStepper:
    """Feeds a policy one observation at a time: keeps the history buffer (``policy.history``
    frames per camera and state vectors, oldest first, filled with the first one at the
    start) and returns ``(chunk, chunk[0])``."""

    def __init__(self, policy: Any):
        self.policy = policy
        self.history = int(getattr(policy, "history", 1))
        self.cameras = list(getattr(policy, "cameras"))
        self.state_keys = list(getattr(policy, "state_keys", []) or [])
        self.reset()

    def reset(self) -> None:
        self._frames: dict[str, collections.deque] = {c: collections.deque(maxlen=self.history) for c in self.cameras}
        self._state: dict[str, collections.deque] = {k: collections.deque(maxlen=self.history) for k in self.state_keys}

    def _push(self, buf: collections.deque, x: np.ndarray) -> None:
        if not buf:
            buf.extend([x] * self.history)
        else:
            buf.append(x)

    def __call__(self, frames: Mapping[str, Any], state: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        for cam in self.cameras:
            if cam not in frames or frames[cam] is None:
                raise KeyError(f"observation has no frame for camera {cam!r} (has {sorted(frames)})")
            f = frames[cam]
            if isinstance(f, (bytes, bytearray, memoryview)):
                f = decode_frame(bytes(f))
            self._push(self._frames[cam], self.policy.prepare_frame(np.asarray(f)))
        stacked = {c: np.stack(self._frames[c]) for c in self.cameras}
        st = None
        if self.state_keys:
            if state is None:
                raise KeyError(f"the policy needs state {self.state_keys}; the observation has none")
            for k in self.state_keys:
                if k not in state:
                    raise KeyError(f"observation state has no {k!r} (has {sorted(state)})")
                self._push(self._state[k], np.asarray(state[k], np.float32).reshape(-1))
            st = {k: np.stack(self._state[k]) for k in self.state_keys}
        chunk = np.asarray(self.policy(stacked, st))
        if chunk.ndim == 1:
            chunk = chunk[None]
        return chunk, np.asarray(chunk[0], np.float32)


@dataclasses.dataclass
class LoopStats:
    """What :meth:`ControlLoop.run` did. ``steps``: ticks where the policy's action was
    executed; ``ticks``: all ticks (steps + gated + no observation)."""

    ticks: int = 0
    steps: int = 0
    gated_steps: int = 0
    no_observation: int = 0
    deadline_misses: int = 0
    overruns: int = 0
    violations: int = 0
    safety_stops: int = 0
    latency_p50_ms: float = math.nan
    latency_p99_ms: float = math.nan
    latency_max_ms: float = math.nan
    latency_mean_ms: float = math.nan
    duration_s: float = 0.0
    gate_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    episode_path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ControlLoop:
    """The fixed-rate control loop; see the module docstring for one tick.

    ``policy``: an :class:`edge_runtime.policy.Policy` (or anything with ``cameras``,
    ``history``, ``state_keys``, ``prepare_frame`` and ``__call__ -> (K, A)``); ``safety``: a
    :class:`~edge_runtime.safety.SafetyHead`; ``observe``/``act``: the robot's I/O; ``gate``:
    optional :class:`~edge_runtime.gating.Gate`; ``log``: optional
    :class:`~edge_runtime.episode_log.EpisodeLog`. ``clock``/``sleep``: the monotonic time
    source (latency, scheduling) and the sleeper, injectable for tests; ``wall_clock``: the
    timestamps written to the log (seconds since the epoch)."""

    def __init__(self, policy: Any, safety: SafetyHead, *, observe: Callable[[], Observation | None],
                 act: Callable[[np.ndarray], None], gate: Gate | None = None, log: EpisodeLog | None = None,
                 rate_hz: float = 20.0, latency_budget_ms: float = 100.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, wall_clock: Callable[[], float] = time.time,
                 gated: str = "none", control_mode: str = "pilot", policy_action_key: str | None = "policy_action",
                 episode_metadata: Mapping[str, Any] | None = None, latency_window: int = 100_000):
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        if gated not in ("none", "hold"):
            raise ValueError(f"gated must be 'none' or 'hold', got {gated!r}")
        self.policy = policy
        self.safety = safety
        self.observe = observe
        self.act = act
        self.gate = gate
        self.log = log
        self.rate_hz = float(rate_hz)
        self.period = 1.0 / self.rate_hz
        self.latency_budget_s = float(latency_budget_ms) / 1000.0
        self.clock, self.sleep, self.wall_clock = clock, sleep, wall_clock
        self.gated = gated
        self.control_mode = control_mode
        self.policy_action_key = policy_action_key
        self.episode_metadata = dict(episode_metadata or {"control_role": control_mode})
        self.stepper = PolicyStepper(policy)
        self.latencies: collections.deque[float] = collections.deque(maxlen=latency_window)
        self.stats = LoopStats()
        self.last_action: SafeAction | None = None
        self.last_gate_reasons: list[str] = []
        self._gate_open = True
        self._stop = threading.Event()
        self._own_episode = False

    # ---- control
    def stop(self) -> None:
        """Ask :meth:`run` to return after the current tick (thread-safe)."""
        self._stop.set()

    def reset(self) -> None:
        """A new episode: empty the history buffer and forget the safety head's last output."""
        self.stepper.reset()
        self.safety.reset()

    # ---- one tick
    def tick(self) -> str:
        """Run one tick; returns what happened: ``"step"``, ``"gated"`` or ``"no_observation"``."""
        st = self.stats
        st.ticks += 1
        if self.gate is not None:
            ok, reasons = self.gate.check()
            if not ok:
                st.gated_steps += 1
                for r in reasons:
                    st.gate_reasons[r] = st.gate_reasons.get(r, 0) + 1
                if self._gate_open or reasons != self.last_gate_reasons:
                    _log.warning("gate closed: %s", "; ".join(reasons) or "no reason given")
                self._gate_open = False
                self.last_gate_reasons = reasons
                if self.gated == "hold" and self.safety.previous is not None:
                    self.act(self.safety.previous)
                return "gated"
            if not self._gate_open:
                _log.info("gate open again: %s", "; ".join(reasons))
                self._gate_open = True
                self.stepper.reset()  # frames from before the pause are stale
            self.last_gate_reasons = []
        t0 = self.clock()
        wall_obs = self.wall_clock()
        obs = self.observe()
        if obs is None:
            st.no_observation += 1
            return "no_observation"
        chunk, raw = self.stepper(obs.frames, obs.state)
        safe = self.safety.step(raw)
        self.act(safe.action)
        t1 = self.clock()
        wall_act = self.wall_clock()
        latency = t1 - t0
        self.latencies.append(latency)
        if latency > self.latency_budget_s:
            st.deadline_misses += 1
        st.steps += 1
        st.violations += len(safe.violations)
        st.safety_stops += int(safe.stopped)
        self.last_action = safe
        if self.log is not None:
            self._log_step(obs, safe, raw, wall_obs, wall_act)
        return "step"

    def _log_step(self, obs: Observation, safe: SafeAction, raw: np.ndarray, wall_obs: float, wall_act: float) -> None:
        log = self.log
        assert log is not None
        if not log.recording:
            log.start_episode(self.episode_metadata)
            self._own_episode = True
        observation: dict[str, Any] = dict(obs.log_observation or {})
        enc = obs.encoded or {}
        for cam in log.camera_paths:
            v = enc.get(cam)
            observation[cam] = v if v is not None else obs.frames.get(cam)
        ts = {"camera": float(obs.timestamp) if obs.timestamp is not None else wall_obs, "control": wall_act}
        if log.timestamp_streams is not None:
            ts = {k: v for k, v in ts.items() if k in log.timestamp_streams}
        extras: dict[str, Any] = {"control_mode": self.control_mode}
        if self.policy_action_key:
            extras[self.policy_action_key] = raw
        log.log_step(observation, safe.action, timestamps=ts, extras=extras)

    # ---- the loop
    def run(self, max_steps: int | None = None, duration_s: float | None = None) -> LoopStats:
        """Tick at ``rate_hz`` until ``max_steps`` ticks (gated and empty ticks count, so a
        closed gate cannot hang a bounded run), ``duration_s`` seconds, or :meth:`stop`.
        Returns the statistics of this run (a fresh :class:`LoopStats`)."""
        self.stats = LoopStats()
        self.latencies.clear()
        self._stop.clear()
        self._gate_open = True
        self.reset()
        st = self.stats
        start = self.clock()
        next_t = start
        try:
            while not self._stop.is_set():
                if max_steps is not None and st.ticks >= max_steps:
                    break
                if duration_s is not None and self.clock() - start >= duration_s:
                    break
                t_start = self.clock()
                self.tick()
                t_end = self.clock()
                if t_end - t_start > self.period:
                    st.overruns += 1
                next_t += self.period
                if next_t <= t_end:
                    next_t = t_end  # behind schedule: restart it from now, no burst of catch-up ticks
                else:
                    self.sleep(next_t - t_end)
        finally:
            st.duration_s = self.clock() - start
            self._finish_stats()
            if self.log is not None and self._own_episode and self.log.recording:
                try:
                    path = self.log.end_episode(terminal=False)
                    st.episode_path = str(path)
                except Exception:  # noqa: BLE001 - never mask the original error; the episode stays recoverable
                    _log.exception("could not end the episode")
                    self.log.close()
                self._own_episode = False
            elif self.log is not None and self.log.episode_path is not None:
                st.episode_path = str(self.log.episode_path)
        return st

    def _finish_stats(self) -> None:
        st = self.stats
        if self.latencies:
            lat = np.asarray(self.latencies, np.float64) * 1000.0
            st.latency_p50_ms = float(np.percentile(lat, 50))
            st.latency_p99_ms = float(np.percentile(lat, 99))
            st.latency_max_ms = float(lat.max())
            st.latency_mean_ms = float(lat.mean())


# =========================================================================== replay


@dataclasses.dataclass
class ReplayResult:
    """What :func:`replay_episode` did: ``actions`` the safety-processed actions ``(T, A)``,
    ``policy_actions`` the raw first actions of each chunk, ``risks`` per step."""

    actions: np.ndarray
    policy_actions: np.ndarray
    risks: np.ndarray
    violations: int
    steps: int
    episode_path: Path | None = None
    source: str = ""


def _frames_of(item: Any) -> tuple[Mapping[str, Any], Mapping[str, Any] | None, Mapping[str, Any]]:
    if isinstance(item, Observation):
        return item.frames, item.state, dict(item.encoded or {})
    if isinstance(item, Mapping):
        return item, None, {}
    raise TypeError(f"replay: expected an Observation or {{camera: frame}}, got {type(item).__name__}")


def replay_episode(source: str | os.PathLike | CaptureEpisode | Iterable[Any], policy: Any, safety: SafetyHead, *,
                   out_log: EpisodeLog | None = None, metadata: Mapping[str, Any] | None = None,
                   control_mode: str = "pilot", policy_action_key: str | None = "policy_action",
                   clock: Callable[[], float] = time.time) -> ReplayResult:
    """Run ``policy`` + ``safety`` over a recorded episode (an episode folder of the capture
    layout, a :class:`~edge_runtime.episode_log.CaptureEpisode`, or an iterable of
    :class:`Observation` / ``{camera path: frame}``) exactly as the loop would, and optionally
    write the actions taken as a new episode to ``out_log`` (frames copied byte for byte,
    timestamps and other step features kept from the source, ``policy_action`` the raw output,
    tags ``replay`` and ``replay_of:<id>``).

    Frames must be decodable here: PNG and ``.npy`` always, JPEG only when Pillow happens to be
    importable (see :func:`~edge_runtime.episode_log.decode_frame`)."""
    stepper = PolicyStepper(policy)
    safety.reset()
    actions, raws, risks = [], [], []
    violations = 0
    episode: CaptureEpisode | None = None
    if isinstance(source, (str, os.PathLike)):
        episode = read_capture_episode(source)
    elif isinstance(source, CaptureEpisode):
        episode = source
    label = str(episode.path) if episode is not None else "<frames>"
    if out_log is not None:
        meta: dict[str, Any] = {"control_role": control_mode}
        tags = ["replay"]
        if episode is not None:
            src = episode.metadata
            for k in ("environment_id", "xr_mode"):
                if isinstance(src.get(k), str):
                    meta[k] = src[k]
            tags = [*(t for t in src.get("tags", []) if isinstance(t, str)), "replay",
                    f"replay_of:{src.get('episode_id', episode.path.name)}"]
        meta["tags"] = tags
        meta.update(metadata or {})
        out_log.start_episode(meta)
    try:
        items: Iterable[Any] = range(len(episode)) if episode is not None else source  # type: ignore[assignment]
        for i, item in enumerate(items):
            if episode is not None:
                step = episode.steps[i]
                frames = {c: episode.frame(i, c) for c in stepper.cameras}
                state = {k: _obs_value(step, k) for k in stepper.state_keys} if stepper.state_keys else None
                encoded = {}
            else:
                frames, state, encoded = _frames_of(item)
                step = None
            _chunk, raw = stepper(frames, state)
            safe = safety.step(raw)
            actions.append(safe.action)
            raws.append(raw)
            risks.append(safe.risk)
            violations += len(safe.violations)
            if out_log is not None:
                _log_replay_step(out_log, episode, i, step, frames, encoded, safe, raw, control_mode, policy_action_key, clock)
        path = None
        if out_log is not None:
            path = out_log.end_episode(terminal=episode.terminal if episode is not None else False)
    except BaseException:
        if out_log is not None and out_log.recording:
            out_log.close()
        raise
    A = len(safety.action_names)
    return ReplayResult(np.asarray(actions, np.float32).reshape(-1, A), np.asarray(raws, np.float32).reshape(-1, A),
                        np.asarray(risks, np.float64), violations, len(actions), path, label)


def _obs_value(step: Mapping[str, Any], key: str) -> Any:
    node: Any = step
    for p in key.split("/"):
        if not isinstance(node, Mapping) or p not in node:
            raise KeyError(f"replay: step has no {key!r}")
        node = node[p]
    return node


_STEP_KEYS = {"observation", "action", "reward", "discount", "timestamp", "is_first", "is_last", "is_terminal"}


def _log_replay_step(log: EpisodeLog, episode: CaptureEpisode | None, i: int, step: Mapping[str, Any] | None,
                     frames: Mapping[str, Any], encoded: Mapping[str, bytes], safe: SafeAction, raw: np.ndarray,
                     control_mode: str, policy_action_key: str | None, clock: Callable[[], float]) -> None:
    observation: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    ts: dict[str, float] = {}
    if step is not None and episode is not None:
        for k, v in copy.deepcopy(step.get("observation") or {}).items():
            observation[f"observation/{k}"] = v
        for cam in log.camera_paths:
            observation[cam] = episode.frame_bytes(i, cam)
        if isinstance(step.get("timestamp"), Mapping):
            ts = {k: float(v) for k, v in step["timestamp"].items() if isinstance(v, (int, float))}
        extras = {k: v for k, v in step.items() if k not in _STEP_KEYS}
        reward, discount = step.get("reward", 0.0), step.get("discount", 1.0)
    else:
        for cam in log.camera_paths:
            observation[cam] = encoded.get(cam) if encoded.get(cam) is not None else frames.get(cam)
        now = float(clock())
        ts = {"camera": now, "control": now}
        reward, discount = 0.0, 1.0
    if log.timestamp_streams is not None:
        ts = {k: v for k, v in ts.items() if k in log.timestamp_streams}
    extras["control_mode"] = control_mode
    if policy_action_key:
        extras[policy_action_key] = raw
    log.log_step(observation, safe.action, reward=float(reward if reward is not None else 0.0),
                 discount=float(discount if discount is not None else 1.0), timestamps=ts, extras=extras)
