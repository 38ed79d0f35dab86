"""One architecture, three runtimes: an export from the JAX trainer and one from the torch LoRA
trainer (adapters merged) give the same actions in JAX, in torch and in the numpy edge runtime
(within 1e-5), and ``python -m trainers`` picks a trainer and says why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("torch")
pytest.importorskip("peft")

from helpers_train import bar_dataset  # noqa: E402

from edge_runtime.policy import Policy  # noqa: E402
from trainers import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bars(tmp_path_factory) -> Path:
    return bar_dataset(tmp_path_factory.mktemp("runtimes"), episodes=8, steps=16)


def _cfg(data: Path, out: Path, **kw) -> common.TrainConfig:
    return common.load_config(preset="dev", overrides={"data": str(data), "out": str(out), "max_steps": 12,
                                                       "checkpoint_every": 100, "log_every": 4, "history": 2, **kw})


def _inputs(policy: dict, n: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    arch = policy["architecture"]
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, len(arch["cameras"]), arch["history"], *arch["image_size"], arch["channels"]),
                          dtype=np.uint8)
    return images, np.zeros((n, arch["history"] * arch["state_dim"]), np.float32)


def _numpy(export: Path, images: np.ndarray) -> np.ndarray:
    pol = Policy.load(export)
    return np.stack([pol.normalized({c: images[i, ci] for ci, c in enumerate(pol.cameras)}) for i in range(len(images))])


def test_a_jax_export_runs_identically_in_jax_torch_and_numpy(bars, tmp_path):
    from trainers import jax_bc, torch_lora

    res = jax_bc.train(_cfg(bars, tmp_path / "jax"))
    export = Path(res["export"])
    _, policy = common.read_export(export)
    images, state = _inputs(policy)
    y_jax = np.asarray(jax_bc.apply_export(export, images, state))
    y_torch = torch_lora.apply_export(export, images, state)
    y_np = _numpy(export, images)
    assert y_jax.shape == (3, 8, 2)
    np.testing.assert_allclose(y_torch, y_jax, atol=1e-5)
    np.testing.assert_allclose(y_np, y_jax, atol=1e-5)
    # and in real units, from policy.json's statistics
    pol = Policy.load(export)
    norm = policy["normalization"]["features"]["action"]
    np.testing.assert_allclose(pol.unnormalize(y_np[0]), y_jax[0] * np.array(norm["scale"]) + np.array(norm["shift"]),
                               atol=1e-5)


def test_a_torch_lora_export_runs_identically_in_torch_jax_and_numpy(bars, tmp_path):
    from trainers import jax_bc, torch_lora

    base = torch_lora.train(_cfg(bars, tmp_path / "base"), None, full=True)["export"]
    lora = torch_lora.train(_cfg(bars, tmp_path / "lora", max_steps=8), base)
    export = Path(lora["export"])
    _, policy = common.read_export(export)
    assert policy["trainer"]["framework"] == "torch"
    images, state = _inputs(policy, seed=1)
    y_torch = torch_lora.apply_export(export, images, state)
    np.testing.assert_allclose(_numpy(export, images), y_torch, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax_bc.apply_export(export, images, state)), y_torch, atol=1e-5)
    assert not np.allclose(torch_lora.apply_export(base, images, state), y_torch), "the merged adapters changed it"


@pytest.mark.parametrize("prefer, framework", [("0", "torch"), ("1", "jax")])
def test_python_m_trainers_selects_and_says_why(bars, tmp_path, prefer, framework):
    env = dict(os.environ, RLDSKIT_PREFER_JAX=prefer)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "trainers", "--data", str(bars), "--out", str(out), "--max-steps", "3"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"trainer: {framework} (RLDSKIT_PREFER_JAX={prefer})" in r.stdout
    policy = json.loads((out / "export" / "policy.json").read_text())
    assert policy["trainer"]["framework"] == framework and policy["trainer"]["step"] == 3
