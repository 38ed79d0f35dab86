"""The edge runtime runs with numpy (+ cryptography) alone."""

import importlib.util
import sys

import numpy as np
import pytest

from edge_runtime.policy import Policy, PolicyError, area_resize, load_safetensors


def test_nothing_heavy_is_installed_or_imported():
    for name in ("rldskit", "torch", "jax", "tensorflow", "PIL", "safetensors"):
        assert importlib.util.find_spec(name) is None, f"{name} is installed in the edge venv"
    assert not {"rldskit", "torch", "jax", "tensorflow"} & set(sys.modules)


def _naive(weights, arch, frame):
    x = frame.astype(np.float64) / 255
    for li, c in enumerate(arch["conv"]):
        k, s = c["kernel"], c["stride"]
        K, b = weights[f"encoder.0.conv{li}.kernel"], weights[f"encoder.0.conv{li}.bias"]
        h, w, _ = x.shape
        oh, ow = -(-h // s), -(-w // s)
        th, tw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
        xp = np.pad(x, ((th // 2, th - th // 2), (tw // 2, tw - tw // 2), (0, 0)))
        y = np.empty((oh, ow, K.shape[3]))
        for i in range(oh):
            for j in range(ow):
                y[i, j] = np.tensordot(xp[i * s:i * s + k, j * s:j * s + k], K, axes=3) + b
        x = np.maximum(y, 0)
    z = x.reshape(-1)
    for i in range(len(arch["mlp"])):
        z = np.maximum(z @ weights[f"mlp.{i}.kernel"] + weights[f"mlp.{i}.bias"], 0)
    return (z @ weights["head.kernel"] + weights["head.bias"]).reshape(arch["action_horizon"], arch["action_dim"])


def test_policy_matches_a_naive_float64_forward(export):
    pol = Policy.load(export)
    w = load_safetensors(export / "model.safetensors")
    rng = np.random.default_rng(3)
    for _ in range(3):
        frame = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        got = pol.normalized({"observation/image": frame})
        np.testing.assert_allclose(got, _naive(w, pol.policy["architecture"], frame), atol=1e-5)
        real = pol({"observation/image": frame})
        np.testing.assert_allclose(real, got * np.array([0.5, 0.2]) + np.array([0.0, 0.1]), atol=1e-6)


def test_camera_frames_are_area_resized():
    frame = np.arange(480 * 640 * 3, dtype=np.uint32).reshape(480, 640, 3) % 251
    small = area_resize(frame.astype(np.uint8), (60, 80))
    block = frame[:8, :8, 0].astype(np.float64).mean()
    assert small.shape == (60, 80, 3) and abs(int(small[0, 0, 0]) - block) <= 0.5
    assert area_resize(frame.astype(np.uint8), (50, 70)).shape == (50, 70, 3)


def test_broken_exports_are_refused_naming_the_file(export):
    data = (export / "model.safetensors").read_bytes()
    (export / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(PolicyError, match="model.safetensors"):
        Policy.load(export)
    (export / "model.safetensors").write_bytes(data)
    (export / "policy.json").write_text("{")
    with pytest.raises(PolicyError, match="policy.json"):
        Policy.load(export)
