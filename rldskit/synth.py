"""Realistic synthetic episodes, written through the real capture path.

``write_synthetic(spec, out, episodes, steps, seed)`` records episodes with
:class:`~rldskit.capture.EpisodeLogger`, so what the demo, tests and benchmarks read is exactly
what a robot would have written. Generators by schema family:

* ``pi5_donkey``: a car following a closed track with a smooth steering controller; each frame
  is a rendered view of the road (lane edges move with the car's offset, heading and the
  track's curvature) encoded as real JPEG. Control at the spec's fps with jitter; the camera
  timestamp leads the control timestamp by 1-3 ms.
* ``so100_arm``: an arm reaching to a target with a min-jerk joint trajectory, closing its
  gripper at the end; frames show the target and the arm's projected end effector.
* ``xr_teleop``: the robot follows the operator's right hand; XR, glove, audio and
  diagnostic signals drop out in spans (their ``*_present`` masks say so).
* anything else: in-bounds random values and flat-colour frames of the declared shape.

Everything is a pure function of ``seed`` (and the episode index), so runs are reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rldskit.capture import EpisodeLogger
from rldskit.images import encode
from rldskit.spec import PRESENT_SUFFIX, EpisodeSpec, Image, Text

__all__ = ["write_synthetic", "synth_steps", "render_road", "encode_image"]


#: ``encode_image(arr, encoding="jpeg", quality=85)``: :func:`rldskit.images.encode` (the one image codec)
encode_image = encode


def render_road(h: int, w: int, offset: float, heading: float, curvature: float, rng: np.random.Generator) -> np.ndarray:
    """A driver's-eye view of a two-edged road: ``offset`` (m, + right of centre), ``heading``
    (rad, relative to the road), ``curvature`` (1/m). Returns ``(h, w, 3)`` uint8."""
    img = np.empty((h, w, 3), dtype=np.uint8)
    horizon = h * 2 // 5
    img[:horizon] = (135, 170, 205)
    rows = np.arange(horizon, h)
    depth = (rows - horizon + 1) / (h - horizon)  # 0 far .. 1 near
    dist = 1.0 / np.maximum(depth, 1e-3)  # metres ahead (unit-less scale)
    centre = w / 2 + (-0.6 * offset * depth - 1.2 * heading * (1 - depth) - 5.0 * curvature * (1 - depth) ** 2) * w * 0.45
    half = (0.12 + 0.55 * depth) * w * 0.5
    xs = np.arange(w)[None, :]
    palette = np.array([[70, 95, 60], [90, 90, 95], [240, 240, 230]], dtype=np.float32)  # ground, road, paint
    left = centre[:, None] - half[:, None]
    right = centre[:, None] + half[:, None]
    lw = np.maximum(1.0, 0.02 * w * depth)[:, None]
    label = ((xs > left) & (xs < right)).astype(np.uint8)
    paint = (np.abs(xs - left) < lw) | (np.abs(xs - right) < lw)
    paint |= ((dist * 4).astype(int) % 2 == 0)[:, None] & (np.abs(xs - centre[:, None]) < lw * 0.6)
    label[paint] = 2
    lower = palette[label]
    noise = _noise_texture(h, w)
    r = int(rng.integers(0, h))
    lower += noise[r:r + h - horizon]
    img[horizon:] = np.clip(lower, 0, 255).astype(np.uint8)
    return img


_NOISE: dict[tuple[int, int], np.ndarray] = {}


def _noise_texture(h: int, w: int) -> np.ndarray:
    """Sensor-like noise (sigma 6), made once per frame size; frames use random windows of it."""
    if (h, w) not in _NOISE:
        _NOISE[(h, w)] = np.random.default_rng(12345).normal(0, 6, size=(2 * h, w, 3)).astype(np.float32)
    return _NOISE[(h, w)]


def _track_curvature(s: np.ndarray, phase: float) -> np.ndarray:
    return 0.08 * np.sin(2 * np.pi * s / 40.0 + phase) + 0.04 * np.sin(2 * np.pi * s / 13.0 + 2 * phase)


def _donkey(spec: EpisodeSpec, steps: int, rng: np.random.Generator, t0: float) -> list[dict[str, Any]]:
    fps = spec.fps or 20.0
    dt = 1.0 / fps
    H, W, _ = spec.leaf("observation/image").shape
    phase = rng.uniform(0, 2 * np.pi)
    s, e, psi, steer, thr = 0.0, rng.normal(0, 0.1), rng.normal(0, 0.05), 0.0, 0.3
    target_thr = rng.uniform(0.25, 0.55)
    mode = "pilot" if rng.random() < 0.25 else "user"
    out = []
    t = t0
    for i in range(steps):
        curv = float(_track_curvature(np.array(s), phase))
        v = 1.0 + 3.0 * thr
        want = np.clip(-1.2 * e - 2.0 * psi + curv * 8.0 + rng.normal(0, 0.03), -1, 1)
        steer += 0.35 * (want - steer)
        thr += 0.1 * (target_thr - thr) + rng.normal(0, 0.01)
        thr = float(np.clip(thr, -1, 1))
        frame = render_road(H, W, e, psi, curv, rng)
        t_ctl = t + rng.uniform(-0.0005, 0.0005)
        step = {
            "observation": {"image": encode_image(frame)},
            "action": np.array([steer, thr], dtype=np.float32),
            "reward": float(np.exp(-abs(e))),
            "discount": 1.0,
            "timestamps": {"control": t_ctl, "camera": t_ctl - rng.uniform(0.001, 0.003)},
            "extras": {"control_mode": mode,
                       "policy_action": np.array([want, target_thr], dtype=np.float32) if mode == "pilot" else None},
        }
        out.append(step)
        psi += (v * steer * 0.25 - v * curv) * dt
        e += v * np.sin(psi) * dt
        s += v * dt
        t += dt
    return out


def _min_jerk(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    tau = np.linspace(0, 1, n)[:, None]
    return a + (b - a) * (10 * tau**3 - 15 * tau**4 + 6 * tau**5)


def _scene(h: int, w: int, target: np.ndarray, ee: np.ndarray, grip: float, rng: np.random.Generator) -> np.ndarray:
    img = np.full((h, w, 3), (200, 190, 170), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    tx, ty = int((0.5 + 0.3 * target[0]) * w), int((0.6 + 0.2 * target[1]) * h)
    ex, ey = int((0.5 + 0.3 * ee[0]) * w), int((0.6 + 0.2 * ee[1]) * h)
    r = max(3, h // 24)
    img[(xx - tx) ** 2 + (yy - ty) ** 2 < r * r] = (200, 40, 40)
    img[(xx - ex) ** 2 + (yy - ey) ** 2 < (r * (1.4 - 0.6 * grip)) ** 2] = (40, 40, 40)
    base = (w // 2, h - 1)
    for k in np.linspace(0, 1, 200):
        x = int(base[0] + (ex - base[0]) * k)
        y = int(base[1] + (ey - base[1]) * k)
        img[max(0, y - 2):y + 2, max(0, x - 2):x + 2] = (90, 90, 110)
    noise = rng.integers(-5, 6, size=img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _arm(spec: EpisodeSpec, steps: int, rng: np.random.Generator, t0: float) -> list[dict[str, Any]]:
    dt = 1.0 / (spec.fps or 30.0)
    q0 = rng.uniform(-0.5, 0.5, 6).astype(np.float32)
    q1 = rng.uniform(-1.2, 1.2, 6).astype(np.float32)
    traj = _min_jerk(q0, q1, steps + 1).astype(np.float32)
    target = np.tanh(q1[:2])
    shape = spec.leaf("observation/images/front").shape
    has_wrist = "observation/images/wrist" in spec.step_leaves and rng.random() < 0.7
    out = []
    t = t0
    colour = ["red", "blue", "green"][int(rng.integers(3))]
    instr = f"pick up the {colour} block"
    for i in range(steps):
        q = traj[i] + rng.normal(0, 0.002, 6).astype(np.float32)
        grip = float(np.clip((i - 0.8 * steps) / (0.15 * steps), 0, 1))
        ee = np.tanh(q[:2])
        obs: dict[str, Any] = {
            "images": {"front": encode_image(_scene(shape[0], shape[1], target, ee, grip, rng)),
                       "wrist": encode_image(_scene(shape[0], shape[1], target - ee, np.zeros(2), grip, rng)) if has_wrist else None},
            "joint_position": q,
            "joint_velocity": ((traj[i + 1] - traj[i]) / dt).astype(np.float32),
            "gripper_position": grip,
        }
        t_ctl = t + rng.uniform(-0.0005, 0.0005)
        out.append({
            "observation": obs,
            "action": np.concatenate([traj[i + 1], [min(1.0, grip + 0.05)]]).astype(np.float32),
            "reward": 1.0 if i == steps - 1 else 0.0,
            "discount": 1.0,
            "timestamps": {"control": t_ctl, "camera_front": t_ctl - rng.uniform(0.0005, 0.003), "joints": t_ctl - 0.0005},
            "extras": {"language_instruction": instr},
        })
        t += dt
    return out


def _spans(rng: np.random.Generator, n: int, p_missing_all: float, p_drop: float) -> np.ndarray:
    if rng.random() < p_missing_all:
        return np.zeros(n, dtype=bool)
    m = np.ones(n, dtype=bool)
    i = 0
    while i < n:
        if rng.random() < p_drop:
            length = int(rng.integers(3, 15))
            m[i:i + length] = False
            i += length
        i += 1
    return m


def _quat(yaw: float) -> list[float]:
    return [0.0, 0.0, float(np.sin(yaw / 2)), float(np.cos(yaw / 2))]


def _xr(spec: EpisodeSpec, steps: int, rng: np.random.Generator, t0: float) -> list[dict[str, Any]]:
    dt = 1.0 / (spec.fps or 30.0)
    H, W, _ = spec.leaf("observation/image").shape
    masks = {k: _spans(rng, steps, pa, pd) for k, pa, pd in [
        ("head", 0.1, 0.01), ("left", 0.3, 0.02), ("right", 0.05, 0.02), ("gaze", 0.3, 0.05),
        ("glove_l", 0.5, 0.01), ("glove_r", 0.4, 0.01), ("audio", 0.2, 0.0), ("cpu", 0.0, 0.0),
        ("battery", 0.1, 0.0), ("track", 0.0, 0.02)]}
    phase = rng.uniform(0, 2 * np.pi, 4)
    state = np.zeros(7, dtype=np.float32)
    out = []
    t = t0
    for i in range(steps):
        tt = i * dt
        hand = np.array([0.3 + 0.1 * np.sin(tt + phase[0]), -0.2 + 0.1 * np.cos(0.7 * tt + phase[1]), 1.1 + 0.05 * np.sin(1.3 * tt)])
        target = np.concatenate([np.tanh(np.r_[hand, hand[:2] * 2, hand[2] - 1.0]), [0.5 + 0.5 * np.sin(0.5 * tt + phase[2])]]).astype(np.float32)
        state = (state + 0.3 * (target - state)).astype(np.float32)
        head = [0.0, 0.0, 1.6 + 0.01 * np.sin(tt), *_quat(0.2 * np.sin(0.3 * tt + phase[3]))]
        gaze = np.array([np.sin(0.2 * tt), 0.1 * np.cos(0.5 * tt), 1.0])
        gaze = gaze / np.linalg.norm(gaze)
        flex = np.clip(0.5 + 0.4 * np.sin(tt + np.arange(5) * 0.3), 0, 1)
        img = render_road(H, W, 0.2 * np.sin(tt), 0.05 * np.cos(tt), 0.0, rng)
        t_ctl = t + rng.uniform(-0.0005, 0.0005)
        obs = {
            "robot_state": state.copy(),
            "image": encode_image(img),
            "xr": {"head_pose": np.array(head, np.float32) if masks["head"][i] else None,
                   "left_hand_pose": np.array([*(hand * [-1, 1, 1]), *_quat(0.0)], np.float32) if masks["left"][i] else None,
                   "right_hand_pose": np.array([*hand, *_quat(0.1)], np.float32) if masks["right"][i] else None,
                   "gaze": gaze.astype(np.float32) if masks["gaze"][i] else None},
            "glove": {"left": flex.astype(np.float32) if masks["glove_l"][i] else None,
                      "right": flex[::-1].astype(np.float32) if masks["glove_r"][i] else None},
            "audio_level": float(-40 + 10 * np.sin(tt)) if masks["audio"][i] else None,
            "diagnostics": {"cpu_temp": float(55 + 5 * np.sin(0.01 * i)) if masks["cpu"][i] else None,
                            "battery": float(max(0.0, 0.9 - 0.0005 * i)) if masks["battery"][i] else None,
                            "tracking_confidence": float(np.clip(0.9 + rng.normal(0, 0.03), 0, 1)) if masks["track"][i] else None},
        }
        out.append({
            "observation": obs, "action": target, "reward": 0.0, "discount": 1.0,
            "timestamps": {"control": t_ctl, "camera": t_ctl - rng.uniform(0.001, 0.003), "xr": t_ctl - rng.uniform(0.0, 0.002)},
            "extras": {"language_instruction": "follow my right hand"},
        })
        t += dt
    return out


def _generic_value(leaf: Any, rng: np.random.Generator) -> Any:
    if isinstance(leaf, Image):
        colour = rng.integers(0, 256, leaf.shape[2], dtype=np.uint8)
        return encode_image(np.broadcast_to(colour, leaf.shape).copy(), leaf.encoding)
    if isinstance(leaf, Text):
        return leaf.choices[int(rng.integers(len(leaf.choices)))] if leaf.choices else "synthetic"
    if leaf.dtype == "string":
        return ["a", "b"]
    shape = tuple(2 if d is None else d for d in leaf.shape)
    if leaf.dtype == "bool":
        return rng.random(shape) < 0.5
    lo, hi = -1.0, 1.0
    if leaf.bounds is not None:
        b = np.asarray(leaf.bounds)
        lo, hi = (b[:, 0], b[:, 1]) if len(b) > 1 else (b[0, 0], b[0, 1])
    x = rng.uniform(0, 1, shape) * (np.asarray(hi) - np.asarray(lo)) + np.asarray(lo)
    if leaf.dtype.startswith(("int", "uint")):
        x = np.round(x)
    return x.astype(leaf.np_dtype)


def _generic_tree(node: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return {k: (_generic_tree(v, rng) if isinstance(v, Mapping) else _generic_value(v, rng)) for k, v in node.items()
            if not k.endswith(PRESENT_SUFFIX)}


def _generic(spec: EpisodeSpec, steps: int, rng: np.random.Generator, t0: float) -> list[dict[str, Any]]:
    dt = 1.0 / (spec.fps or 10.0)
    reserved = {"observation", "action", "reward", "discount", "timestamp", "is_first", "is_last", "is_terminal"}
    out = []
    for i in range(steps):
        act = spec.steps["action"]
        out.append({
            "observation": _generic_tree(spec.steps["observation"], rng),
            "action": _generic_tree(act, rng) if isinstance(act, Mapping) else _generic_value(act, rng),
            "reward": 0.0, "discount": 1.0,
            "timestamps": {k: t0 + i * dt for k in spec.steps.get("timestamp", {})},
            "extras": {k: (_generic_tree(v, rng) if isinstance(v, Mapping) else _generic_value(v, rng))
                       for k, v in spec.steps.items() if k not in reserved},
        })
    return out


def synth_steps(spec: EpisodeSpec, steps: int, seed: int, episode_index: int = 0, t0: float = 1.7e9) -> list[dict[str, Any]]:
    """The ``log_step`` keyword arguments of one synthetic episode (a list of dicts)."""
    rng = np.random.default_rng([seed, episode_index])
    gen = {"pi5_donkey": _donkey, "so100_arm": _arm, "xr_teleop": _xr}.get(spec.name, _generic)
    return gen(spec, steps, rng, t0 + 3600.0 * episode_index)


def write_synthetic(spec: EpisodeSpec, out: str | Path, episodes: int, steps: int, seed: int = 0, *,
                    compress: bool = False, chunk_steps: int = 1000, durability: str = "none",
                    environment_id: str = "synthetic_track") -> list[Path]:
    """Record ``episodes`` synthetic episodes of ``steps`` steps under ``out``; returns their
    folders. Episodes end terminal when the index is odd (so both endings are exercised)."""
    logger = EpisodeLogger(out, spec, chunk_steps=chunk_steps, compress=compress, durability=durability)
    paths = []
    for n in range(episodes):
        plan = synth_steps(spec, steps, seed, n)
        t0 = plan[0]["timestamps"].get("control", 1.7e9) if plan and plan[0]["timestamps"] else 1.7e9 + n
        eid = f"ep_{seed:04d}_{n:05d}"
        role = plan[0]["extras"].get("control_mode", "user") if plan else "user"
        logger.clock = lambda t0=t0: t0
        logger.start_episode(environment_id=environment_id, control_role=role,
                             xr_mode="passthrough" if spec.name == "xr_teleop" else "",
                             tags=["origin:synthetic", f"seed:{seed}"], episode_id=eid)
        for kw in plan:
            logger.log_step(**kw)
        logger.clock = lambda t=t0 + steps / (spec.fps or 10.0): t
        paths.append(logger.end_episode(terminal=bool(n % 2)))
    return paths
