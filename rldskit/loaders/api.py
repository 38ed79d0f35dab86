"""The two entry points: ``windows()`` and ``steps()``, a :class:`~rldskit.loaders.iterator.Loader` each.

Both take what fixes the batches as one :class:`~rldskit.loaders.config.LoaderConfig` (the
preferred form, ``windows(path, config=LoaderConfig(history=2, action_horizon=8, ...))``, which a
trainer derives from its own config) or, equivalently, as keywords (``windows(path, history=2,
action_horizon=8, ...)``, which build that config). Passing both a config and a keyword that
differs from its default is a ``TypeError``. The remaining keywords change how fast batches come,
never what they hold (threads, processes, prefetching, buffers, the frame cache), plus ``stats``,
the normalisation statistics.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rldskit.formats.step_index import EpisodeRow
from rldskit.loaders.config import LoaderConfig
from rldskit.loaders.iterator import Loader, build

__all__ = ["windows", "steps"]


def _config(kind: str, config: LoaderConfig | None, fields: dict[str, Any], caller: str) -> LoaderConfig:
    given = LoaderConfig(kind=kind, **fields)
    if config is None:
        return given
    if not isinstance(config, LoaderConfig):
        raise TypeError(f"{caller}(): config must be a LoaderConfig, got {type(config).__name__}")
    if config.kind != kind:
        raise ValueError(f"{caller}(): config.kind is {config.kind!r}; use {config.kind}() or kind={kind!r}")
    default = LoaderConfig(kind=kind)
    both = [f for f in fields if getattr(given, f) != getattr(default, f)]
    if both:
        raise TypeError(f"{caller}(): pass either config= or the keywords {both}, not both")
    return config


def windows(path: str | os.PathLike, history: int = 1, action_horizon: int = 1, batch_size: int | None = 32,
            seed: int = 0, shuffle: bool = True, num_epochs: int | None = 1, decode_images: bool = True,
            resize: tuple[int, int] | None = None, normalize: str | None = None, split: str = "train",
            process_index: int = 0, process_count: int = 1, worker_count: int = 0,
            episode_filter: Callable[[EpisodeRow], bool] | None = None, drop_remainder: bool = True, *,
            observation_keys: Sequence[str] | None = None, action_keys: Sequence[str] = ("action",),
            extra_keys: Sequence[str] | None = None, stats: Mapping | str | os.PathLike | None = None,
            num_threads: int | None = None, prefetch_buffer_size: int | None = None,
            debug_keys: bool = True, reuse_buffers: bool = True, goal: str | None = None,
            goal_keys: Sequence[str] | None = None, cache_frames: bool | None = None,
            config: LoaderConfig | None = None) -> Loader:
    """Batches of windows from a converted dataset (its step-major layout). One sample per selected
    step ``t``: ``observation_keys`` (default: every ``observation/*`` feature; images only with
    ``decode_images``) over the history ``t-H+1..t`` -> ``(B, H, ...)`` with ``observation_is_pad``
    ``(B, H)``; ``action_keys`` over ``t..t+K-1`` -> ``(B, K, ...)`` with ``action_is_pad`` ``(B, K)``;
    ``extra_keys`` at ``t`` (default: ``language_instruction`` when the spec has it); and, with
    ``debug_keys``, ``episode_index``, ``frame_index``, ``index``. Pads repeat the edge step.

    ``config``: all of the above as one :class:`~rldskit.loaders.config.LoaderConfig` (the
    preferred form; then leave those keywords at their defaults).

    ``normalize``: ``None``, ``"stats"``/``"mean_std"`` or ``"min_max"``, applied to the float
    observation and action features, with ``stats`` (a mapping or a :data:`STATS_FILE` path) or the
    dataset's ``stats.json`` or, failing both, statistics computed from its train split.
    ``split``: a split, optionally sliced by episode (``"train[:90%]"``). ``episode_filter``: a
    predicate on :class:`EpisodeRow`. ``num_epochs=None`` repeats forever. ``batch_size=None`` yields
    single samples. ``process_index``/``process_count``: this host's share of every epoch (all hosts
    must pass the same ``seed`` and selection). ``num_threads``/``prefetch_buffer_size`` override the
    measured defaults (:func:`~rldskit.loaders.iterator.default_read_options`); ``worker_count > 0``
    decodes in that many processes. ``reuse_buffers``: image arrays of batches the caller no longer
    references are recycled for later batches (see :class:`WindowMaker`; about 1.3x faster at
    480x640); pass ``False`` when something keeps a batch's memory without a Python reference to it.
    ``cache_frames``: keep decoded frames in RAM so later epochs skip reading and decoding them
    (``None``: when they all fit in :data:`~rldskit.loaders.buffers.CACHE_AUTO_BYTES`; see
    :class:`WindowMaker`).
    ``goal``: ``"last"`` (the episode's last step) or ``"uniform"`` (a step drawn uniformly from
    ``t..L-1``, reproducible from ``seed`` and the batch position; new draws each epoch) adds
    ``goal/<key>`` ``(B, ...)`` for ``goal_keys`` (default: the image observations, else every
    observation) and, with ``debug_keys``, ``goal_frame_index``; unnormalised images, normalised
    floats, as the observations."""
    fields = dict(history=history, action_horizon=action_horizon, batch_size=batch_size, seed=seed, shuffle=shuffle,
                  num_epochs=num_epochs, decode_images=decode_images, resize=resize, normalize=normalize, split=split,
                  process_index=process_index, process_count=process_count, episode_filter=episode_filter,
                  drop_remainder=drop_remainder, observation_keys=observation_keys, action_keys=action_keys,
                  extra_keys=extra_keys, debug_keys=debug_keys, goal=goal, goal_keys=goal_keys)
    return build(path, _config("windows", config, fields, "windows"), stats=stats, worker_count=worker_count,
                 num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size, reuse_buffers=reuse_buffers,
                 cache_frames=cache_frames)


def steps(path: str | os.PathLike, batch_size: int | None = 32, seed: int = 0, shuffle: bool = True,
          num_epochs: int | None = 1, decode_images: bool = True, resize: tuple[int, int] | None = None,
          normalize: str | None = None, split: str = "train", process_index: int = 0, process_count: int = 1,
          worker_count: int = 0, episode_filter: Callable[[EpisodeRow], bool] | None = None,
          drop_remainder: bool = True, *, keys: Sequence[str] | None = None,
          stats: Mapping | str | os.PathLike | None = None, num_threads: int | None = None,
          prefetch_buffer_size: int | None = None, debug_keys: bool = True, reuse_buffers: bool = True,
          cache_frames: bool | None = None, config: LoaderConfig | None = None) -> Loader:
    """Batches of single steps: every step feature (or ``keys``) at ``t``, ``(B, ...)`` (images
    decoded to ``uint8 (B, h, w, c)`` when ``decode_images``, else left out). Options as
    :func:`windows` (``config``: a ``LoaderConfig(kind="steps", ...)``); ``normalize`` applies to
    the float ``observation/*`` and ``action`` features. Without images and text every value comes
    from RAM: no disk reads at all."""
    fields = dict(batch_size=batch_size, seed=seed, shuffle=shuffle, num_epochs=num_epochs,
                  decode_images=decode_images, resize=resize, normalize=normalize, split=split,
                  process_index=process_index, process_count=process_count, episode_filter=episode_filter,
                  drop_remainder=drop_remainder, keys=keys, debug_keys=debug_keys)
    return build(path, _config("steps", config, fields, "steps"), stats=stats, worker_count=worker_count,
                 num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size, reuse_buffers=reuse_buffers,
                 cache_frames=cache_frames)
