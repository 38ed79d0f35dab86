"""Memory the loaders reuse: recycled batch arrays and a cache of decoded frames. numpy only.

Two concepts, both private to one process (never pickled: a worker process builds its own):

* **``ArrayPool``**: output arrays for image batches, handed out again only once nobody else
  holds them. Contract: an array that the caller still references, directly or through a view, a
  slice, a ``torch.from_numpy`` tensor or any buffer export, is never handed out again (each of
  those holds a reference, and the pool reuses an array only when its reference count says the
  pool is its sole holder). Code that keeps only a raw pointer (``arr.ctypes.data``) must copy, or
  turn recycling off (``reuse_buffers=False``). Arrays come back uninitialised: write every element.
* **``FrameCache``**: decoded (and resized) frames of one image feature by global step, each
  filled once and never changed (a converted dataset is immutable). Up to
  ``num_steps * h * w * c`` bytes, committed only as frames are seen; :data:`CACHE_AUTO_BYTES` is
  the budget under which the loaders cache by default.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np

__all__ = ["ArrayPool", "FrameCache", "CACHE_AUTO_BYTES"]

#: references to a pooled array when only the pool holds it: the list, the loop variable and
#: ``sys.getrefcount``'s own argument
_FREE_REFS = 3


class ArrayPool:
    """Output arrays for image batches, recycled once nobody else holds them (module docstring).

    A batch of two 480x640 cameras with ``history=2`` is 236 MB; allocating it fresh for every batch
    costs a page fault per 4 KiB page on first write (15-130 ms per batch here, as much as decoding
    a quarter of it). The pool keeps up to ``capacity`` arrays per ``(shape, dtype)`` and beyond
    that hands out fresh, unpooled arrays. Thread-safe."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._arrays: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised array of ``shape``/``dtype`` (stale contents: write every element)."""
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            arrays = self._arrays.setdefault(key, [])
            for a in arrays:
                if sys.getrefcount(a) <= _FREE_REFS:
                    return a
            a = np.empty(shape, dtype)
            if len(arrays) < self.capacity:
                arrays.append(a)
            return a


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


#: ``cache_frames=None`` caches decoded frames when all of them fit in this many bytes per process
#: (read at loader construction, so it can be lowered at run time)
CACHE_AUTO_BYTES = min(2 << 30, _physical_memory() // 4)


class FrameCache:
    """Decoded (and resized) frames of one image feature, by global step: ``frames[g]`` is valid
    once ``filled[g]``. ``frames`` is ``np.empty`` (pages cost memory only once written), so RSS
    grows with the frames actually seen, up to ``num_steps * h * w * c`` bytes. Two threads filling
    the same step write the same pixels; a writer sets ``filled`` after the pixels, so a reader that
    sees True sees them."""

    def __init__(self, num_steps: int, shape: tuple[int, int, int]):
        self.frames = np.empty((num_steps, *shape), np.uint8)
        self.filled = np.zeros(num_steps, bool)
