"""Crash-safe episode capture on the robot.

``EpisodeLogger(root, spec)`` records episodes into ``root/<episode_id>/`` in the capture
layout described in :mod:`rldskit.formats.capture_dir`::

    logger = EpisodeLogger("/data/episodes", load_spec("pi5_donkey.v1"))
    logger.start_episode(environment_id="track_a", control_role="user", tags=["origin:pi5"])
    for ...:
        logger.log_step(observation={"image": jpeg_bytes, "speed": 0.4},
                        action=[steer, throttle], reward=0.0,
                        timestamps={"camera": t_cam, "control": t_ctl},
                        extras={"control_mode": "user"})
    logger.end_episode(terminal=False)        # truncated (time limit) vs terminal (goal/crash)

Each ``log_step`` checks the step against the spec (shape, dtype, image type) and raises
``ValueError`` naming the field, so a wiring mistake fails on the first step rather than
producing a dataset that fails validation later. Images may be given as encoded JPEG/PNG
bytes (written as they are, no re-encode) or as ``(H, W, C)`` uint8 arrays (encoded with
Pillow). A killed process loses at most the step being written; ``rldskit recover`` or
``read_episode(..., recover=True)`` salvages the rest as a truncated episode.

The folder layout, its crash-safe writer and the metadata records are
:mod:`edge_runtime.capture_layout`'s, shared with the robot's own logger
(:class:`edge_runtime.episode_log.EpisodeLog`); this class adds the spec's checks.

The root holds a ``schema.json`` copy of the spec, so the folder describes itself.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.capture_layout import (SCHEMA_FILE, EpisodeDirWriter, check_episode_id, finished_metadata,
                                         new_episode_id, recording_metadata)
from edge_runtime.frames import frame_kind
from rldskit._io import atomic_write_bytes
from rldskit.spec import FLAG_KEYS, PRESENT_SUFFIX, EpisodeSpec, Image, Text

__all__ = ["EpisodeLogger"]

_RESERVED = {"observation", "action", "reward", "discount", "timestamp", *FLAG_KEYS}


class EpisodeLogger:
    """Records episodes under ``root`` for ``spec``. One episode open at a time.

    ``chunk_steps``: lines per ``steps/*.jsonl`` chunk; ``compress``: zstd closed chunks;
    ``durability``: ``"chunk"`` (default), ``"step"`` (fsync every step) or ``"none"``;
    ``clock``: seconds source used when ``log_step`` gets no timestamps (default
    ``time.time``)."""

    def __init__(self, root: str | Path, spec: EpisodeSpec, *, chunk_steps: int = 1000, compress: bool = False,
                 durability: str = "chunk", jpeg_quality: int = 90, clock=time.time):
        self.root = Path(root)
        self.spec = spec
        self.chunk_steps = chunk_steps
        self.compress = compress
        self.durability = durability
        self.jpeg_quality = jpeg_quality
        self.clock = clock
        self._writer: EpisodeDirWriter | None = None
        self._meta: dict[str, Any] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        schema_file = self.root / SCHEMA_FILE
        if schema_file.exists():
            from rldskit.spec import load_spec

            existing = load_spec(schema_file)
            if existing != spec:
                raise ValueError(f"{schema_file} describes {existing.id} {existing.version}, not {spec.id} {spec.version}: "
                                 "record different schemas into different folders")
        else:
            atomic_write_bytes(schema_file, spec.to_json().encode())
        steps = spec.steps
        self._extra_keys = [k for k in steps if k not in _RESERVED]
        self._images = {p: leaf for p, leaf in spec.step_leaves.items() if isinstance(leaf, Image)}

    @property
    def recording(self) -> bool:
        """Whether an episode is open."""
        return self._writer is not None

    @property
    def episode_path(self) -> Path | None:
        """The open episode's folder (``None`` between episodes)."""
        return self._writer.path if self._writer else None

    def start_episode(self, environment_id: str = "", xr_mode: str = "", control_role: str = "",
                      tags: Sequence[str] = (), *, episode_id: str | None = None,
                      metadata: Mapping[str, Any] | None = None) -> str:
        """Open a new episode folder and write its ``metadata.json`` (status ``recording``).
        Returns the episode id (default: UTC time plus a random suffix, sortable)."""
        if self._writer is not None:
            raise RuntimeError(f"episode {self._meta['episode_id']} is still open: call end_episode first")
        now = self.clock()
        if episode_id is None:
            episode_id = new_episode_id(now)
        check_episode_id(episode_id)
        extra = dict(metadata or {})
        for k in extra:
            if k not in self.spec.metadata_leaves:
                raise ValueError(f"episode metadata {k!r} is not declared by {self.spec.id}")
        self._meta = {
            **recording_metadata(self.spec.name, self.spec.version, episode_id, now, environment_id=environment_id,
                                 xr_mode=xr_mode, control_role=control_role, tags=tags),
            **extra,
        }
        self._writer = EpisodeDirWriter(self.root / episode_id, chunk_steps=self.chunk_steps,
                                        compress=self.compress, durability=self.durability, metadata=self._meta)
        return episode_id

    def log_step(self, observation: Mapping[str, Any], action: Any, reward: float = 0.0, discount: float = 1.0,
                 timestamps: Mapping[str, float] | None = None, extras: Mapping[str, Any] | None = None) -> int:
        """Append one step; returns its index. ``timestamps`` maps stream name to seconds
        (``{"camera": t, "control": t}``); streams not given get ``clock()``. ``extras`` holds
        the spec's other step features (``control_mode``, ``language_instruction``, ...)."""
        w = self._writer
        if w is None:
            raise RuntimeError("no episode is open: call start_episode first")
        i = w.num_steps
        line: dict[str, Any] = {
            "observation": self._check_tree("observation", self.spec.steps["observation"], observation, i),
            "action": self._check_value("action", self.spec.steps["action"], action, i),
            "reward": self._check_value("reward", self.spec.steps["reward"], reward, i),
            "discount": self._check_value("discount", self.spec.steps["discount"], discount, i),
        }
        ts_spec = self.spec.steps.get("timestamp")
        if ts_spec is not None:
            given = dict(timestamps or {})
            unknown = set(given) - set(ts_spec)
            if unknown:
                raise ValueError(f"step {i}: timestamp streams {sorted(unknown)} are not declared (known: {sorted(ts_spec)})")
            now = None
            ts = {}
            for k in ts_spec:
                if k in given:
                    try:
                        ts[k] = float(given[k])
                    except (TypeError, ValueError):
                        raise ValueError(f"step {i}: timestamp/{k} expects seconds as a number, got {given[k]!r:.60}") from None
                else:
                    now = self.clock() if now is None else now
                    ts[k] = float(now)
            line["timestamp"] = ts
        elif timestamps:
            raise ValueError(f"step {i}: {self.spec.id} declares no timestamp streams")
        extras = dict(extras or {})
        for k in self._extra_keys:
            node = self.spec.steps[k]
            v = extras.pop(k, None)
            if isinstance(node, Mapping):
                line[k] = self._check_tree(k, node, v or {}, i)
            else:
                line[k] = self._check_value(k, node, v, i)
        if extras:
            raise ValueError(f"step {i}: extras {sorted(extras)} are not declared by {self.spec.id}")
        # frames first (temp-then-rename), then the line that names them
        for path, leaf in self._images.items():
            node = line
            *parents, name = path.split("/")
            for p in parents:
                node = node[p]
            data = node[name]
            if data is not None:
                node[name] = w.write_frame(self.spec.camera_name(path), data, leaf.extension)
        w.append_step(line)
        return i

    def end_episode(self, terminal: bool, *, final_observation: Mapping[str, Any] | None = None,
                    timestamps: Mapping[str, float] | None = None, extras: Mapping[str, Any] | None = None,
                    metadata: Mapping[str, Any] | None = None) -> Path:
        """Finish the episode. ``terminal=True`` when it ended in a terminal state (goal,
        crash); False when cut short (time limit, operator stop). ``final_observation``
        appends the RLDS final step (observation only; action and reward are placeholders).
        Returns the episode folder."""
        w = self._writer
        if w is None:
            raise RuntimeError("no episode is open")
        if not isinstance(terminal, bool):
            raise TypeError("terminal must be True or False (termination vs truncation is never guessed)")
        for k in metadata or {}:
            if k not in self.spec.metadata_leaves:
                raise ValueError(f"episode metadata {k!r} is not declared by {self.spec.id}")
        if final_observation is not None:
            if self.spec.last_step != "rlds":
                raise ValueError(f"{self.spec.id} declares last_step='{self.spec.last_step}': every step's action is real, "
                                 "so there is no observation-only RLDS final step; log the last step with log_step")
            self.log_step(final_observation, _placeholders(self.spec.steps["action"]),
                          reward=0.0, discount=0.0 if terminal else 1.0, timestamps=timestamps, extras=extras)
        if w.num_steps == 0:
            raise ValueError("an episode needs at least one step")
        meta = finished_metadata(dict(self._meta, **(metadata or {})), num_steps=w.num_steps, terminal=terminal,
                                 end_time=self.clock())
        w.close(meta)
        self._writer = None
        return w.path

    def close(self) -> None:
        """Release the open episode without ending it (it stays 'recording', recoverable)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def __enter__(self) -> EpisodeLogger:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- checks
    def _check_tree(self, prefix: str, node: Mapping[str, Any], value: Any, i: int) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError(f"step {i}: {prefix} must be a dict of {sorted(node)}, got {type(value).__name__}")
        unknown = set(value) - set(node) - {k + PRESENT_SUFFIX for k in node}
        if unknown:
            raise ValueError(f"step {i}: {prefix} has undeclared keys {sorted(unknown)} (declared: {sorted(node)})")
        out = {}
        for k, sub in node.items():
            path = f"{prefix}/{k}"
            if isinstance(sub, Mapping):
                out[k] = self._check_tree(path, sub, value.get(k, {}), i)
            else:
                out[k] = self._check_value(path, sub, value.get(k), i)
        return out

    def _check_value(self, path: str, leaf: Any, v: Any, i: int) -> Any:
        if v is None:
            if getattr(leaf, "optional", False):
                return None
            raise ValueError(f"step {i}: {path} is required")
        if isinstance(leaf, Mapping):
            return self._check_tree(path, leaf, v, i)
        if isinstance(leaf, Image):
            return self._image_bytes(path, leaf, v, i)
        if isinstance(leaf, Text):
            if not isinstance(v, str):
                raise ValueError(f"step {i}: {path} expects a string, got {type(v).__name__}")
            if leaf.choices and v not in leaf.choices:
                raise ValueError(f"step {i}: {path}={v!r} is not one of {list(leaf.choices)}")
            if leaf.max_length is not None and len(v) > leaf.max_length:
                raise ValueError(f"step {i}: {path} is {len(v)} characters long, longer than max_length {leaf.max_length}")
            return v
        if leaf.dtype == "string":
            return [str(s) for s in v]
        arr = np.asarray(v)
        want = leaf.np_dtype
        if arr.dtype.kind not in {"f": "fiub", "i": "iub", "u": "iub", "b": "b"}[want.kind] or \
                arr.ndim != len(leaf.shape) or any(d is not None and d != s for d, s in zip(leaf.shape, arr.shape)):
            raise ValueError(f"step {i}: {path} expects {leaf.dtype} of shape {list(leaf.shape)}, got {arr.dtype} {list(arr.shape)}")
        if want.kind in "iu" and arr.dtype.kind in "iu" and arr.size:
            info = np.iinfo(want)
            lo, hi = int(arr.min()), int(arr.max())  # Python ints: no wrap-around in the comparison
            if lo < info.min or hi > info.max:
                raise ValueError(f"step {i}: {path} expects {leaf.dtype} values in [{info.min}, {info.max}], got {lo if lo < info.min else hi}")
        with np.errstate(over="ignore", invalid="ignore"):
            out = arr.astype(want, copy=False)
        if want.kind == "f" and arr.dtype.kind == "f" and out.size and not np.array_equal(np.isfinite(arr), np.isfinite(out)):
            raise ValueError(f"step {i}: {path} has values too large for {leaf.dtype}")
        return out

    def _image_bytes(self, path: str, leaf: Image, v: Any, i: int) -> bytes:
        if isinstance(v, (bytes, bytearray, memoryview)):
            b = bytes(v)
            if frame_kind(b) != leaf.encoding:  # the signature check the edge logger makes
                raise ValueError(f"step {i}: {path} expects {leaf.encoding} bytes; these do not start like one")
            return b
        arr = np.asarray(v)
        if arr.dtype != np.uint8 or arr.shape[:2] != leaf.shape[:2] or not (
                (arr.ndim == 3 and arr.shape[2] == leaf.shape[2]) or (arr.ndim == 2 and leaf.shape[2] == 1)):
            raise ValueError(f"step {i}: {path} expects encoded bytes or a uint8 array {list(leaf.shape)}, got {arr.dtype} {list(arr.shape)}")
        from rldskit import images

        try:
            return images.encode(arr[:, :, None] if arr.ndim == 2 else arr, leaf.encoding, self.jpeg_quality)
        except (OSError, ValueError) as e:  # e.g. 4 channels cannot be JPEG-encoded
            raise ValueError(f"step {i}: {path}: cannot encode a {list(arr.shape)} array as {leaf.encoding}: {e}") from None


def _placeholders(node: Any) -> Any:
    """Placeholder values for a leaf or feature tree (the action of the RLDS final step)."""
    if isinstance(node, Mapping):
        return {k: _placeholders(v) for k, v in node.items()}
    if isinstance(node, Text):
        return node.fill
    if isinstance(node, Image):
        return None  # an image action has no placeholder: optional ones are absent, required ones must be given
    return node.placeholder()
