"""PyTorch adapter for rldskit loaders.

One concept: **``TorchLoader``**, a ``torch.utils.data.IterableDataset`` over a
:class:`~rldskit.loaders.iterator.Loader`. It yields the same batches as torch tensors made with
``torch.from_numpy`` (they share memory with the numpy arrays: no copy); string and object
arrays (text features) are passed through as numpy. Batching, shuffling, worker processes and
resumption stay in the rldskit loader, so wrap it in a ``DataLoader`` with ``batch_size=None``
(or iterate it directly). ``state_dict()``/``load_state_dict()`` follow torch's convention and
store the loader's state, so a checkpoint resumes at exactly the next batch::

    ds = rldskit.loaders.torch.windows("data/pi5_donkey/1.0.0", history=2, action_horizon=8, batch_size=64)
    for batch in torch.utils.data.DataLoader(ds, batch_size=None):
        batch["action"]            # torch.float32, (64, 8, 2)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["TorchLoader", "windows", "steps", "to_torch"]


def to_torch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """Numeric numpy arrays -> torch tensors sharing their memory; other values unchanged."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
            if not v.flags.writeable:  # torch warns on read-only buffers; a copy is the honest fix
                v = v.copy()
            out[k] = torch.from_numpy(np.ascontiguousarray(v))
        else:
            out[k] = v
    return out


class TorchLoader(torch.utils.data.IterableDataset):
    """A ``torch.utils.data``-compatible view of an rldskit loader (see the module docstring)."""

    def __init__(self, loader):
        super().__init__()
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            raise RuntimeError("use DataLoader(num_workers=0): rldskit loaders run their own worker processes "
                               "(worker_count=...), and several torch workers would repeat the same batches")
        for batch in self.loader:
            yield to_torch(batch)

    def __len__(self) -> int:
        return len(self.loader)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.loader.get_state())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.loader.set_state(state)


def windows(path, **kwargs) -> TorchLoader:
    """:func:`rldskit.loaders.windows` as torch tensors."""
    from rldskit.loaders.api import windows as _windows

    return TorchLoader(_windows(path, **kwargs))


def steps(path, **kwargs) -> TorchLoader:
    """:func:`rldskit.loaders.steps` as torch tensors."""
    from rldskit.loaders.api import steps as _steps

    return TorchLoader(_steps(path, **kwargs))
