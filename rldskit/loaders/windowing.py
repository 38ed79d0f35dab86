"""Windows: the transform from a batch of global steps to a batch of samples.

One concept, **``WindowMaker``** (Grain's ``MapTransform`` role; :func:`~rldskit.loaders.windows`
and :func:`~rldskit.loaders.steps` map it over the batches that
:class:`~rldskit.loaders.order.EpochOrder` yields). For a step ``t`` of an episode of length ``L``:

* the observation history ``t-H+1..t`` clamped at 0 (padded frames repeat the first step,
  ``observation_is_pad`` ``bool (B, H)`` is True there) and the action chunk ``t..t+K-1`` clamped at
  ``L-1`` (``action_is_pad`` ``bool (B, K)``), as LeRobot's ``delta_timestamps`` and Octo's chunking
  do; with ``goal``, the goal step (``"last"``: ``L-1``; ``"uniform"``: drawn from ``t..L-1``).
* Low-dimensional features come from the :class:`~rldskit.formats.step_index.StepIndex`'s RAM
  arrays (fancy indexing); images and text are read once per batch with one grouped
  :meth:`~rldskit.loaders.sources.StepSource.read_fields` and images decoded only for the frames a
  window uses (:func:`rldskit.images.decode`, straight into a recycled batch array, optionally
  resized), optionally through a :class:`~rldskit.loaders.buffers.FrameCache`.

Contract: stateless and deterministic, the same steps (and the same ``rng`` for uniform goals) give
the same arrays, in any thread or process; picklable (a fresh buffer pool and frame cache per
process). Errors name the record: :class:`~rldskit.formats.step_index.StepDecodeError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from rldskit import images
from rldskit.formats.step_index import StepDecodeError
from rldskit.loaders import buffers
from rldskit.loaders.buffers import ArrayPool, FrameCache
from rldskit.loaders.config import GOALS, LoaderConfig
from rldskit.loaders.normalize import Normalizer
from rldskit.loaders.sources import StepSource
from rldskit.spec import Image, Text

__all__ = ["WindowMaker", "GOALS"]


@dataclasses.dataclass(frozen=True)
class _Key:
    path: str
    role: str  # "history" | "chunk" | "current" | "goal"
    kind: str  # "ram" | "image" | "record"

    @property
    def name(self) -> str:
        """The key in the batch: the path, or ``goal/<path>`` for a goal key."""
        return f"goal/{self.path}" if self.role == "goal" else self.path



class WindowMaker:
    """Batch of global steps (``int64 (B,)``, or one step) -> batch of samples (module docstring).

    ``history_keys`` get ``H`` frames ``(B, H, ...)``, ``chunk_keys`` ``K`` steps ``(B, K, ...)``,
    ``current_keys`` the step itself ``(B, ...)``, ``goal_keys`` the goal step as ``goal/<key>``
    ``(B, ...)``: with ``goal="last"`` the episode's last step, with ``goal="uniform"`` a step drawn
    uniformly from ``t..L-1`` (Octo's ``uniform`` goal relabelling; the draw comes from the ``rng``
    argument, which the loader's ``random_map`` derives from its seed and the batch's position, so
    resuming reproduces it; without ``rng`` it is a function of the steps). With ``windowed=False``
    (single steps) every key is a current key and no pad masks are produced. Keys are flat step
    paths; images come out as ``uint8 (…, h, w, c)`` (zeros for an absent optional frame), text as
    ``str`` arrays. Debug keys (``debug=True``): ``episode_index`` (the episode's position in the
    split's index), ``frame_index`` (``t``) and ``index`` (the global step ``g``). With
    ``reuse_buffers``, image arrays come from an :class:`~rldskit.loaders.buffers.ArrayPool` of
    ``pool_capacity`` per shape: an image array that the caller has dropped (no reference, view or
    tensor of it left) is overwritten by a later batch. ``cache_frames`` keeps every decoded
    (resized) frame in RAM by global step, so each is read and decoded once per process, not once
    per epoch (``None``: when all frames of the split fit in
    :data:`~rldskit.loaders.buffers.CACHE_AUTO_BYTES`, e.g. 4k steps at 60x80 take 58 MB, 20k steps
    of two 480x640 cameras would take 37 GB and are not cached). Picklable (a fresh pool and cache
    per process). :meth:`from_config` builds the one a :class:`~rldskit.loaders.config.LoaderConfig`
    describes."""

    def __init__(self, source: StepSource, *, history: int = 1, action_horizon: int = 1,
                 history_keys: Sequence[str] = (), chunk_keys: Sequence[str] = (), current_keys: Sequence[str] = (),
                 windowed: bool = True, decode_images: bool = True, resize: tuple[int, int] | None = None,
                 normalizer: Normalizer | None = None, debug: bool = True, reuse_buffers: bool = True,
                 pool_capacity: int = 8, goal: str | None = None, goal_keys: Sequence[str] = (),
                 cache_frames: bool | None = None):
        if history < 1 or action_horizon < 1:
            raise ValueError(f"history and action_horizon must be >= 1, got {history}, {action_horizon}")
        if goal not in GOALS:
            raise ValueError(f"goal must be one of {GOALS}, got {goal!r}")
        if goal is None and goal_keys:
            raise ValueError(f"goal_keys {list(goal_keys)} need goal='last' or goal='uniform'")
        self.goal = goal
        self.source, self.index = source, source.index
        self.history, self.action_horizon, self.windowed = int(history), int(action_horizon), windowed
        self.decode_images, self.normalizer, self.debug = decode_images, normalizer, debug
        self._pool = ArrayPool(pool_capacity) if reuse_buffers else None
        self.cache_frames = cache_frames
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        spec = self.index.spec
        keys: list[_Key] = []
        for role, paths in (("history", history_keys), ("chunk", chunk_keys), ("current", current_keys),
                            ("goal", goal_keys if goal is not None else ())):
            for p in paths:
                if p not in spec.step_leaves:
                    raise KeyError(f"{spec.id} has no step feature {p!r}; it has {', '.join(spec.step_leaves)}")
                leaf = spec.step_leaves[p]
                if isinstance(leaf, Image):
                    if not decode_images:
                        continue
                    kind = "image"
                elif p in self.index.columns:
                    kind = "ram"
                else:
                    kind = "record"
                keys.append(_Key(p, role if windowed or role == "goal" else "current", kind))
        if len({k.name for k in keys}) != len(keys):
            raise ValueError(f"a feature is asked for in two roles: {[k.path for k in keys]}")
        self.keys = tuple(keys)
        image_bytes = sum(int(np.prod(self._image_shape(k.path))) for k in keys if k.kind == "image")
        self.cache_bytes = image_bytes * self.index.num_steps  # every frame of the split, decoded
        if cache_frames is None:
            cache_frames = 0 < self.cache_bytes <= buffers.CACHE_AUTO_BYTES
        self._caching = bool(cache_frames) and image_bytes > 0
        self._caches: dict[str, FrameCache] = {}
        self._cache_lock = threading.Lock()
        self._hoffs = np.arange(-self.history + 1, 1, dtype=np.int64)
        self._coffs = np.arange(self.action_horizon, dtype=np.int64)

    @classmethod
    def from_config(cls, source: StepSource, config: LoaderConfig, *, normalizer: Normalizer | None = None,
                    reuse_buffers: bool = True, cache_frames: bool | None = None) -> WindowMaker:
        """The transform ``config`` describes (its kind, keys with the spec's defaults, goal,
        images, resize, debug keys) over ``source``."""
        keys = config.sample_keys(source.index.spec)
        if config.kind == "steps":
            return cls(source, current_keys=keys.current, windowed=False, decode_images=config.decode_images,
                       resize=config.resize, normalizer=normalizer, debug=config.debug_keys,
                       reuse_buffers=reuse_buffers, cache_frames=cache_frames)
        return cls(source, history=config.history, action_horizon=config.action_horizon, history_keys=keys.history,
                   chunk_keys=keys.chunk, current_keys=keys.current, decode_images=config.decode_images,
                   resize=config.resize, normalizer=normalizer, debug=config.debug_keys, reuse_buffers=reuse_buffers,
                   goal=config.goal, goal_keys=keys.goal, cache_frames=cache_frames)

    @property
    def pool_capacity(self) -> int | None:
        """Arrays kept per shape by the buffer pool (``None`` without recycling). Settable."""
        return None if self._pool is None else self._pool.capacity

    @pool_capacity.setter
    def pool_capacity(self, capacity: int) -> None:
        if self._pool is not None:
            self._pool.capacity = int(capacity)

    @property
    def reads_records(self) -> bool:
        """Whether a batch reads step records (images or record-only features), or only RAM."""
        return any(k.kind != "ram" for k in self.keys)

    def with_rng(self, steps: np.ndarray | int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``self(steps, rng)``: the ``(element, rng)`` form Grain's ``random_map`` calls."""
        return self(steps, rng)

    def _image_shape(self, path: str) -> tuple[int, int, int]:
        h, w, c = self.index.spec.step_leaves[path].shape
        return (*self.resize, c) if self.resize else (h, w, c)

    def __call__(self, steps: np.ndarray | int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        g = np.asarray(steps, dtype=np.int64)
        single = g.ndim == 0
        g = g.reshape(-1)
        index = self.index
        e, t = index.locate(g)
        s0, length = index.starts[e], index.lengths[e]
        gather: dict[str, np.ndarray] = {"current": g}
        pads: dict[str, np.ndarray] = {}
        if self.windowed:
            ht = t[:, None] + self._hoffs[None, :]
            pads["observation_is_pad"] = ht < 0
            gather["history"] = s0[:, None] + np.maximum(ht, 0)
            ct = t[:, None] + self._coffs[None, :]
            pads["action_is_pad"] = ct >= length[:, None]
            gather["chunk"] = s0[:, None] + np.minimum(ct, length[:, None] - 1)
        if self.goal == "last":
            gather["goal"] = s0 + length - 1
        elif self.goal == "uniform":
            if rng is None:  # standalone use: a function of the steps
                rng = np.random.default_rng(np.frombuffer(hashlib.sha256(g.tobytes()).digest()[:16], np.uint32))
            gather["goal"] = g + np.floor(rng.random(len(g)) * (length - t)).astype(np.int64)
        # one grouped read of every step a record-backed key needs
        from_records = [k for k in self.keys if k.kind != "ram"]
        records: dict[int, dict[str, Any]] = {}
        if from_records:
            parts, read_keys = [], []
            for k in from_records:
                steps_k = np.unique(gather[k.role].reshape(-1))
                if k.kind == "image" and self._caching:
                    steps_k = steps_k[~self._cache(k.path).filled[steps_k]]
                if len(steps_k):
                    parts.append(steps_k)
                    read_keys.append(k.path)
            if parts:
                need = np.unique(np.concatenate(parts))
                fields = self.source.read_fields(need, read_keys)
                records = dict(zip(need.tolist(), fields))
        out: dict[str, np.ndarray] = {}
        for k in self.keys:
            gi = gather[k.role]
            if k.kind == "ram":
                x = index.columns[k.path][gi]
            elif k.kind == "image":
                x = self._images(k.path, gi, records)
            else:
                x = self._record_values(k.path, gi, records)
            if self.normalizer is not None and x.dtype.kind == "f":
                x = self.normalizer.normalize(k.path, x)
            out[k.name] = x
        out.update(pads)
        if self.debug:
            out["episode_index"], out["frame_index"], out["index"] = e, t, g
            if "goal" in gather:
                out["goal_frame_index"] = gather["goal"] - s0
        if single:
            return {k: v[0] for k, v in out.items()}
        return out

    def _images(self, path: str, gi: np.ndarray, records: dict[int, dict[str, Any]]) -> np.ndarray:
        h, w, c = self._image_shape(path)
        shape = (*gi.shape, h, w, c)
        out = self._pool.take(shape, np.uint8) if self._pool is not None else np.empty(shape, dtype=np.uint8)
        flat = out.reshape(-1, h, w, c)
        cache = self._cache(path) if self._caching else None
        done: dict[int, int] = {}
        for j, s in enumerate(gi.reshape(-1).tolist()):
            if s in done:
                flat[j] = flat[done[s]]
                continue
            done[s] = j
            if cache is not None and cache.filled[s]:
                flat[j] = cache.frames[s]
                continue
            data = records[s][path]
            if not data:  # an absent optional frame: zeros, and its _present mask says so
                flat[j] = 0
                if cache is not None:
                    cache.frames[s] = 0
                    cache.filled[s] = True
                continue
            try:
                img = images.decode(data, c, self.resize, out=flat[j])
            except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
                where = self.source.where(s)
                raise StepDecodeError(where.pop("path"), f"feature {path}: image does not decode: "
                                                         f"{type(err).__name__}: {err}", **where) from None
            if img.shape != (h, w, c):
                where = self.source.where(s)
                raise StepDecodeError(where.pop("path"), f"feature {path}: image is {img.shape}, the spec says "
                                                         f"{(h, w, c)} (pass resize=(h, w) to load other sizes)", **where)
            if cache is not None:
                cache.frames[s] = flat[j]
                cache.filled[s] = True  # after the pixels: a reader that sees True sees them
        return out

    def _cache(self, path: str) -> FrameCache:
        cache = self._caches.get(path)
        if cache is None:
            with self._cache_lock:
                cache = self._caches.get(path)
                if cache is None:
                    cache = self._caches[path] = FrameCache(self.index.num_steps, self._image_shape(path))
        return cache

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pool"] = None if self._pool is None else self._pool.capacity  # a fresh, empty pool per process
        state["_caches"], state["_cache_lock"] = {}, None  # and a fresh, empty frame cache
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        cap = state["_pool"]
        state["_pool"] = None if cap is None else ArrayPool(cap)
        state["_cache_lock"] = threading.Lock()
        self.__dict__.update(state)

    def _record_values(self, path: str, gi: np.ndarray, records: dict[int, dict[str, Any]]) -> np.ndarray:
        leaf = self.index.spec.step_leaves[path]
        vals = [records[s][path] for s in gi.reshape(-1).tolist()]
        if isinstance(leaf, Text) or leaf.dtype == "string":
            arr = np.asarray(vals) if isinstance(leaf, Text) else np.asarray(vals, dtype=object)
            return arr.reshape(gi.shape + arr.shape[1:])
        arr = np.stack(vals)
        return arr.reshape(gi.shape + arr.shape[1:])

    def __repr__(self) -> str:
        keys = ", ".join(f"{k.path}:{k.role}" for k in self.keys)
        goal = f", goal={self.goal}" if self.goal else ""
        return f"WindowMaker(H={self.history}, K={self.action_horizon}{goal}, {keys})"

