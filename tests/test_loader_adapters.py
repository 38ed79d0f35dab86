"""The torch adapter and the JAX device helper on real converted data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rldskit.pipeline import convert
from rldskit.spec import load_spec
from rldskit.synth import write_synthetic


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    spec = load_spec("pi5_donkey.v1").with_image_shape("observation/image", (24, 32, 3))
    write_synthetic(spec, root / "eps", 3, 20, seed=5)
    return convert([root / "eps"], root / "data", name="donkey", runner="inline", formats=("array_record",)).path


def test_torch_loader_yields_the_same_batches_as_tensors_without_copies(dataset):
    import torch

    from rldskit.loaders import windows
    from rldskit.loaders.torch import TorchLoader, to_torch

    kw = dict(history=2, action_horizon=4, batch_size=4, seed=1, shuffle=True, num_epochs=1)
    ref = list(windows(dataset, **kw))
    tl = TorchLoader(windows(dataset, **kw))
    got = list(torch.utils.data.DataLoader(tl, batch_size=None, num_workers=0))
    assert len(got) == len(ref) == len(tl)
    for a, b in zip(ref, got):
        assert set(a) == set(b)
        for k, v in a.items():
            if isinstance(b[k], torch.Tensor):
                assert b[k].dtype == getattr(torch, str(v.dtype)) if v.dtype != np.bool_ else b[k].dtype == torch.bool
                np.testing.assert_array_equal(b[k].numpy(), v, err_msg=k)
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = to_torch({"x": arr})["x"]
    arr[0, 0] = 42.0  # shares memory: no copy was made
    assert t[0, 0].item() == 42.0


def test_torch_loader_state_dict_resumes_at_the_next_batch(dataset):
    from rldskit.loaders import windows
    from rldskit.loaders.torch import TorchLoader

    kw = dict(history=2, action_horizon=4, batch_size=3, seed=2, shuffle=True, num_epochs=2)
    full = [b["action"].numpy() for b in TorchLoader(windows(dataset, **kw))]
    first = TorchLoader(windows(dataset, **kw))
    it = iter(first)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))  # survives a JSON checkpoint
    resumed = TorchLoader(windows(dataset, **kw))
    resumed.load_state_dict(state)
    rest = [b["action"].numpy() for b in resumed]
    assert len(rest) == len(full) - 5
    for a, b in zip(full[5:], rest):
        np.testing.assert_array_equal(a, b)


def test_jax_device_put_shards_the_batch_axis_over_devices(dataset, tmp_path):
    """Four virtual CPU devices (XLA_FLAGS), in a fresh process: each holds a quarter of the batch."""
    code = textwrap.dedent(f"""
        import json, numpy as np, jax
        from rldskit.loaders import windows
        from rldskit.loaders.jax import data_sharding, device_put_batch
        batch = next(iter(windows({str(dataset)!r}, history=2, action_horizon=4, batch_size=8, seed=0, num_epochs=1)))
        arrays = device_put_batch(batch, data_sharding())
        a = arrays["action"]
        shards = [s.data.shape for s in a.addressable_shards]
        same = bool(np.array_equal(np.asarray(a), batch["action"]))
        print(json.dumps({{"devices": len(jax.devices()), "shards": [list(s) for s in shards], "same": same,
                           "keys": sorted(arrays)}}))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    assert out["shards"] == [[2, 4, 2]] * 4
    assert out["same"]
    assert "action" in out["keys"] and "observation/image" in out["keys"]
