"""A dataset a policy can learn: ``pi5_donkey.v1`` episodes whose action is a known function of
the current frame, for the trainers' learning tests and benchmark.

Each frame shows a bright vertical bar on a dark, noisy background; the bar's column ``x`` (0..1)
drifts smoothly through the episode and its brightness ``b`` (0..1) too. The action is
``steering = 2 x - 1`` and ``throttle = b - 0.5`` exactly, so the whole action chunk is a function
of the frames the chunk covers; from the current frame alone the first action is exact and later
ones are predictable from the drift. An untrained policy's error is the spread of the actions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from rldskit.capture import EpisodeLogger
from rldskit.pipeline import convert
from rldskit.spec import load_spec


def bar_frame(h: int, w: int, x: float, b: float, rng: np.random.Generator) -> np.ndarray:
    img = rng.integers(0, 40, (h, w, 3)).astype(np.uint8)
    col = int(round(x * (w - 1)))
    lo, hi = max(0, col - max(1, w // 16)), min(w, col + max(1, w // 16) + 1)
    img[:, lo:hi, :] = np.uint8(80 + 175 * b)
    return img


def bar_action(x: float, b: float) -> np.ndarray:
    return np.array([2 * x - 1, b - 0.5], dtype=np.float32)


def write_bar_episodes(root: Path, episodes: int = 16, steps: int = 24, shape=(24, 32, 3), seed: int = 0, *,
                       action: Callable[[float, float], np.ndarray] = bar_action, id_prefix: str = "bar") -> Path:
    """Capture folders under ``root/cap`` (the action of a frame is ``action(x, b)``; episode
    folders are named ``<id_prefix>_<seed>_<n>``, which is their order in the converted split);
    returns that folder. Called again on the same ``root`` it adds episodes."""
    spec = load_spec("pi5_donkey.v1").with_image_shape("observation/image", tuple(shape))
    rng = np.random.default_rng(seed)
    logger = EpisodeLogger(root / "cap", spec, durability="none")
    h, w, _ = shape
    for n in range(episodes):
        x, b = rng.uniform(0.1, 0.9), rng.uniform(0.2, 1.0)
        vx, vb = rng.normal(0, 0.02), rng.normal(0, 0.015)
        t = 1.7e9 + 1000 * n
        logger.clock = lambda: t
        logger.start_episode(environment_id="bar_world", control_role="user", tags=["origin:synthetic"],
                             episode_id=f"{id_prefix}_{seed}_{n:04d}")
        for i in range(steps):
            logger.log_step({"image": bar_frame(h, w, x, b, rng)}, action(x, b),
                            timestamps={"control": t + i * 0.05, "camera": t + i * 0.05 - 0.002},
                            extras={"control_mode": "user", "policy_action": None})
            x = float(np.clip(x + vx, 0.0, 1.0))
            b = float(np.clip(b + vb, 0.0, 1.0))
        logger.end_episode(terminal=False)
    return root / "cap"


def bar_dataset(root: Path, episodes: int = 16, steps: int = 24, shape=(24, 32, 3), seed: int = 0, *,
                action: Callable[[float, float], np.ndarray] = bar_action, name: str = "bars",
                id_prefix: str = "bar") -> Path:
    """The converted dataset version folder (step-major layout, ArrayRecord)."""
    cap = write_bar_episodes(root, episodes, steps, shape, seed, action=action, id_prefix=id_prefix)
    return convert([cap], root / "data", name=name, runner="inline", formats=("array_record",)).path


def write_held_out_shift_episodes(root: Path, train: int = 18, held_out: int = 2, steps: int = 12,
                                  shape=(24, 32, 3), held_out_action=(0.95, -0.9)) -> Path:
    """Capture folders under ``root/cap``: ``train`` bar episodes followed (in split order) by
    ``held_out`` episodes whose action is the constant ``held_out_action`` (steering, throttle),
    far from the bars' actions. With ``train + held_out = 20`` and the default splits,
    ``train[:90%]`` is exactly the bar episodes (``bar_*``) and ``train[90%:]`` the shifted ones
    (``zz_held_*``). Returns ``root/cap``."""
    write_bar_episodes(root, train, steps, shape, seed=0, id_prefix="bar")
    const = np.asarray(held_out_action, np.float32)
    return write_bar_episodes(root, held_out, steps, shape, seed=1, id_prefix="zz_held", action=lambda x, b: const)


def held_out_shift_dataset(root: Path, **kw) -> tuple[Path, Path]:
    """``(dataset version folder, capture folder)`` of :func:`write_held_out_shift_episodes`."""
    cap = write_held_out_shift_episodes(root, **kw)
    return convert([cap], root / "data", name="shifted", runner="inline", formats=("array_record",)).path, cap


def train_briefly(framework: str, data: str | Path, out: Path, **overrides) -> dict:
    """Train the ``dev`` preset on ``data`` (a folder or a bucket URL) for 2 steps with ``framework``
    (``"jax"`` or ``"torch"``, full fine-tuning) and return the exported ``policy.json`` document.
    ``overrides`` are config keys; skips when the framework is not installed."""
    import pytest

    from trainers import common

    cfg = common.load_config(None, "dev", {"data": str(data), "out": str(out), "max_steps": 2, "log_every": 1,
                                           "checkpoint_every": 1000, **overrides})
    if framework == "jax":
        pytest.importorskip("jax")
        from trainers import jax_bc

        export = jax_bc.train(cfg)["export"]
    else:
        pytest.importorskip("torch")
        from trainers import torch_lora

        export = torch_lora.train(cfg, None, full=True)["export"]
    return common.read_export(export)[1]
