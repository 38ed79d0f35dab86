"""JAX helpers: put loader batches on devices, split along the batch axis.

* :func:`data_sharding`: a ``NamedSharding`` over all devices with the leading (batch) axis
  split across a 1-d ``"data"`` mesh (data parallelism; one host or many).
* :func:`device_put_batch`: numeric arrays of a batch onto devices with that sharding. On one
  host it is ``jax.device_put``; with several processes each host passes its own shard of the
  global batch (the loader's ``process_index``/``process_count``) and the result is one global
  ``jax.Array`` (``jax.make_array_from_process_local_data``). Text/object arrays are dropped
  (JAX has no string arrays); keep them from the numpy batch if you need them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["data_sharding", "device_put_batch"]


def data_sharding(devices=None, axis_name: str = "data"):
    """``NamedSharding(Mesh(devices, (axis_name,)), PartitionSpec(axis_name))``."""
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devs = np.asarray(devices if devices is not None else jax.devices())
    return NamedSharding(Mesh(devs, (axis_name,)), PartitionSpec(axis_name))


def device_put_batch(batch: Mapping[str, Any], sharding=None) -> dict[str, Any]:
    """Numeric arrays of ``batch`` as ``jax.Array``s sharded along axis 0. The per-host batch
    size must be divisible by the number of local devices."""
    import jax

    sharding = sharding or data_sharding()
    multi = jax.process_count() > 1
    out = {}
    for k, v in batch.items():
        if not (isinstance(v, np.ndarray) and v.dtype.kind in "biuf"):
            continue
        if multi:
            out[k] = jax.make_array_from_process_local_data(sharding, v)
        else:
            n = len(sharding.mesh.devices.ravel())
            if v.shape[0] % n:
                raise ValueError(f"{k}: batch axis {v.shape[0]} is not divisible by {n} devices")
            out[k] = jax.device_put(v, sharding)
    return out
