"""``LoaderConfig``: what fixes a loader's batches, as one frozen value.

A loader is determined by two things: the dataset, and a **``LoaderConfig``**: which episodes
(``split``, ``episode_filter``), in which order (``seed``, ``shuffle``, ``num_epochs``,
``batch_size``, ``drop_remainder``, ``process_index``/``process_count``) and what each sample holds
(``kind``, ``history``, ``action_horizon``, the keys, ``goal``, ``decode_images``, ``resize``,
``normalize``, ``debug_keys``). Everything else a loader takes changes how fast batches come, never
what they hold: threads, worker processes, prefetching, buffer recycling, the frame cache.

Contracts:

* *Frozen and validated.* A config is immutable (``dataclasses.replace`` makes variants) and checks
  itself on construction (``ValueError`` naming the field), before any file is read. Key sequences
  are stored as tuples, ``resize`` as a pair of ints.
* *Two kinds.* ``kind="windows"``: per sample step ``t``, ``observation_keys`` over the history
  ``t-H+1..t``, ``action_keys`` over the chunk ``t..t+K-1``, ``extra_keys`` at ``t`` and optional
  ``goal/<key>`` s. ``kind="steps"``: the features ``keys`` at ``t``; the windows-only fields keep
  their defaults. ``None`` keys mean the spec's defaults (:meth:`LoaderConfig.sample_keys`).
* *The order's fingerprint.* :meth:`LoaderConfig.fingerprint` hashes the order fields with the
  selected steps; a loader's saved state carries it, and a state restores only into a loader with
  the same fingerprint (the sample fields may differ: same order, other features).

Trainers build theirs from their own config (``trainers.common.TrainConfig.loader_config``) instead
of re-passing keywords.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rldskit.spec import EpisodeSpec

__all__ = ["LoaderConfig", "KINDS", "GOALS", "NORMALIZE_MODES", "SampleKeys"]

#: what one sample is: a window around a step, or the step itself
KINDS = ("windows", "steps")
#: goal relabelling strategies (``None``: no goal keys)
GOALS = (None, "last", "uniform")
#: ``normalize`` values: none, mean/std (``"stats"`` is an alias) or min/max to [-1, 1]
NORMALIZE_MODES = (None, "stats", "mean_std", "min_max")
#: the fields the order (and so :meth:`LoaderConfig.fingerprint`) depends on, besides the selection
ORDER_FIELDS = ("split", "seed", "shuffle", "batch_size", "num_epochs", "process_index", "process_count",
                "drop_remainder", "goal")
_WINDOW_ONLY = ("history", "action_horizon", "observation_keys", "action_keys", "extra_keys", "goal", "goal_keys")


def _keys(value: Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise TypeError(f"keys must be a sequence of feature paths, not the string {value!r}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class SampleKeys:
    """The feature paths of each role in a sample, resolved against a spec: ``history`` ``(B, H, ...)``,
    ``chunk`` ``(B, K, ...)``, ``current`` ``(B, ...)`` and ``goal`` (``goal/<path>``, ``(B, ...)``);
    ``normalized``: the float features normalisation applies to (when they are low-dimensional)."""

    history: tuple[str, ...] = ()
    chunk: tuple[str, ...] = ()
    current: tuple[str, ...] = ()
    goal: tuple[str, ...] = ()
    normalized: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """What fixes a loader's order and the shape of its samples (module docstring). Defaults are
    :func:`~rldskit.loaders.windows`' defaults.

    Selection and order: ``split`` (a split, optionally sliced by episode: ``"train[:90%]"``),
    ``episode_filter`` (a predicate on :class:`~rldskit.formats.step_index.EpisodeRow`),
    ``batch_size`` (``None``: single samples), ``seed`` (>= 0), ``shuffle``, ``num_epochs``
    (``None``: forever), ``drop_remainder``, ``process_index``/``process_count`` (this host's share
    of every epoch; all hosts pass the same seed and selection).

    Samples: ``kind`` (``"windows"`` | ``"steps"``), ``history`` ``H`` and ``action_horizon`` ``K``
    (frames, >= 1), ``observation_keys`` (default every ``observation/*``), ``action_keys``,
    ``extra_keys`` (default ``language_instruction`` when the spec has it), ``keys`` (steps; default
    every step feature), ``goal`` (``None`` | ``"last"`` | ``"uniform"``) with ``goal_keys``
    (default the image observations, else every observation), ``decode_images`` (else images are
    left out), ``resize`` ``(h, w)`` pixels, ``normalize`` (see :data:`NORMALIZE_MODES`),
    ``debug_keys`` (``episode_index``, ``frame_index``, ``index``, ``goal_frame_index``)."""

    kind: str = "windows"
    # selection and order
    split: str = "train"
    episode_filter: Callable[[Any], bool] | None = None
    batch_size: int | None = 32
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1
    drop_remainder: bool = True
    process_index: int = 0
    process_count: int = 1
    # what a sample holds
    history: int = 1
    action_horizon: int = 1
    observation_keys: tuple[str, ...] | None = None
    action_keys: tuple[str, ...] = ("action",)
    extra_keys: tuple[str, ...] | None = None
    keys: tuple[str, ...] | None = None
    goal: str | None = None
    goal_keys: tuple[str, ...] | None = None
    decode_images: bool = True
    resize: tuple[int, int] | None = None
    normalize: str | None = None
    debug_keys: bool = True

    def __post_init__(self) -> None:
        for name in ("observation_keys", "action_keys", "extra_keys", "keys", "goal_keys"):
            object.__setattr__(self, name, _keys(getattr(self, name)))
        if self.resize is not None:
            object.__setattr__(self, "resize", (int(self.resize[0]), int(self.resize[1])))
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index must be in 0..process_count-1, got {self.process_index} of "
                             f"{self.process_count}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None (forever), got {self.num_epochs}")
        if int(self.seed) < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of ('mean_std', 'min_max') (or 'stats' = 'mean_std'), "
                             f"got {self.normalize!r}")
        if self.kind == "steps":
            default = LoaderConfig()
            changed = [f for f in _WINDOW_ONLY if getattr(self, f) != getattr(default, f)]
            if changed:
                raise ValueError(f"kind='steps' samples single steps; {', '.join(changed)} apply to windows only")
        elif self.keys is not None:
            raise ValueError("keys apply to kind='steps'; windows take observation_keys, action_keys and extra_keys")
        if self.history < 1 or self.action_horizon < 1:
            raise ValueError(f"history and action_horizon must be >= 1, got {self.history}, {self.action_horizon}")
        if self.goal not in GOALS:
            raise ValueError(f"goal must be one of {GOALS}, got {self.goal!r}")
        if self.goal is None and self.goal_keys:
            raise ValueError(f"goal_keys {list(self.goal_keys)} need goal='last' or goal='uniform'")

    # ------------------------------------------------------------------ derived

    @property
    def normalize_mode(self) -> str | None:
        """:class:`~rldskit.loaders.normalize.Normalizer`'s mode: ``"stats"`` is ``"mean_std"``."""
        return "mean_std" if self.normalize == "stats" else self.normalize

    def sample_keys(self, spec: EpisodeSpec) -> SampleKeys:
        """The feature paths of each role for ``spec``, with the defaults filled in."""
        if self.kind == "steps":
            return SampleKeys(current=self.keys if self.keys is not None else tuple(spec.step_leaves),
                              normalized=tuple(p for p in spec.step_leaves
                                               if p.startswith("observation/") or p == "action"))
        obs = self.observation_keys
        if obs is None:
            obs = tuple(p for p in spec.step_leaves if p.startswith("observation/"))
        goal: tuple[str, ...] = self.goal_keys or ()
        if self.goal is not None and self.goal_keys is None:
            goal = tuple(p for p in obs if p in spec.image_paths) or obs
        extra = self.extra_keys
        if extra is None:
            extra = tuple(p for p in ("language_instruction",) if p in spec.step_leaves)
        return SampleKeys(history=obs, chunk=self.action_keys, current=extra, goal=goal,
                          normalized=obs + self.action_keys)

    def order(self) -> dict[str, Any]:
        """The order fields (:data:`ORDER_FIELDS`), as the fingerprint hashes them."""
        return {"split": self.split, "seed": int(self.seed), "shuffle": bool(self.shuffle),
                "batch_size": self.batch_size, "num_epochs": self.num_epochs, "process_index": self.process_index,
                "process_count": self.process_count, "drop_remainder": bool(self.drop_remainder), "goal": self.goal}

    def fingerprint(self, selected: np.ndarray) -> str:
        """24 hex digits identifying the order over ``selected`` (``int64 (N,)``, the selected global
        steps): equal exactly when the selection and :meth:`order` are equal."""
        what = {"selection": hashlib.sha256(np.asarray(selected, dtype=np.int64).tobytes()).hexdigest()[:16],
                **self.order()}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]
