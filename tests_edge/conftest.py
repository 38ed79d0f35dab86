"""Tests of the edge runtime installed alone (``make test-edge-alone``: a venv with numpy,
cryptography, pytest and ``pip install ./edge_runtime``, run from outside the checkout). They
import nothing but the standard library, numpy, cryptography and edge_runtime."""

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.policy import save_safetensors

ARCH = {"type": "conv_mlp", "version": 1, "cameras": ["observation/image"], "image_size": [24, 32], "channels": 3,
        "history": 1, "conv": [{"features": 4, "kernel": 3, "stride": 2, "padding": "SAME"},
                               {"features": 8, "kernel": 3, "stride": 2, "padding": "SAME"}],
        "activation": "relu", "pool": "flatten_hwc", "encoder_out": 6 * 8 * 8, "state_keys": [], "state_dim": 0,
        "mlp": [16], "action_horizon": 4, "action_dim": 2}


def make_export(path: Path, seed: int = 0, arch: dict | None = None, nan: bool = False) -> Path:
    """A small random conv_mlp v1 export written with edge_runtime's own safetensors writer."""
    arch = dict(arch or ARCH)
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}
    cin = arch["channels"]
    h, wd = arch["image_size"]
    for li, c in enumerate(arch["conv"]):
        w[f"encoder.0.conv{li}.kernel"] = rng.normal(0, 0.4, (c["kernel"], c["kernel"], cin, c["features"])).astype(np.float32)
        w[f"encoder.0.conv{li}.bias"] = rng.normal(0, 0.05, c["features"]).astype(np.float32)
        cin = c["features"]
        h, wd = -(-h // c["stride"]), -(-wd // c["stride"])
    d = len(arch["cameras"]) * arch["history"] * h * wd * cin + arch["history"] * arch["state_dim"]
    for i, f in enumerate(arch["mlp"]):
        w[f"mlp.{i}.kernel"] = rng.normal(0, 1 / np.sqrt(d), (d, f)).astype(np.float32)
        w[f"mlp.{i}.bias"] = np.zeros(f, np.float32)
        d = f
    out = arch["action_horizon"] * arch["action_dim"]
    w["head.kernel"] = rng.normal(0, 0.3 / np.sqrt(d), (d, out)).astype(np.float32)
    w["head.bias"] = np.zeros(out, np.float32)
    if nan:
        w["head.bias"][0] = np.nan
    path.mkdir(parents=True, exist_ok=True)
    save_safetensors(path / "model.safetensors", w, {"format": "rldskit-policy"})
    policy = {"format": "rldskit-policy", "format_version": 1, "architecture": arch, "spec_id": "pi5_donkey.v1",
              "inputs": {"cameras": {"observation/image": {"shape": [*arch["image_size"], 3],
                                                           "source_shape": [480, 640, 3], "resize": "area"}},
                         "state": {}},
              "outputs": {"action": {"shape": [arch["action_horizon"], arch["action_dim"]], "key": "action",
                                     "names": ["steering", "throttle"], "bounds": [[-1, 1], [-1, 1]]}},
              "normalization": {"mode": "mean_std", "features": {"action": {"shift": [0.0, 0.1], "scale": [0.5, 0.2]}}}}
    (path / "policy.json").write_text(json.dumps(policy))
    return path


@pytest.fixture
def export(tmp_path) -> Path:
    return make_export(tmp_path / "export")
