"""What both slim trainers share: config and presets, data, the policy export format, checkpoints,
mirrors, preemption, metrics and the trainer selector. numpy only at import time; JAX and torch live
in ``trainers/jax_bc.py`` and ``trainers/torch_lora.py``.

**The policy** (one architecture, ``conv_mlp`` v1, implemented identically by the JAX trainer, the
torch trainer and ``edge_runtime``). Inputs: for each camera ``c`` in ``cameras`` and each history
frame ``h`` (oldest first) a ``uint8 (image_size[0], image_size[1], channels)`` frame, and the
normalised state ``float32 (history * state_dim,)`` (the ``state_keys`` concatenated per frame,
oldest first). Forward:

1. ``x = frame / 255`` (float32); per camera its own encoder (``<c>`` below is the camera's index
   in ``cameras``): for each conv layer ``i``: a 2-D convolution with kernel ``encoder.<c>.conv<i>.kernel`` ``(k, k, in, out)`` (HWIO), stride
   ``stride``, TensorFlow ``SAME`` padding (total ``max((ceil(n/s)-1)*s + k - n, 0)``, the smaller
   half before), plus ``encoder.<c>.conv<i>.bias``, then ReLU; then the last feature map
   ``(h', w', conv[-1])`` is flattened in row-major HWC order (torch, which computes NCHW, permutes
   to NHWC first) -> ``(h' * w' * conv[-1],)``: flattening keeps *where* things are in the frame,
   which steering needs (a mean over the frame would throw it away). The same encoder serves
   every history frame of its camera.
2. ``z = concat([enc_c(frame_{c,h}) for c in cameras for h in history] + [state])``.
3. For each MLP layer ``i``: ``z = relu(z @ mlp.<i>.kernel + mlp.<i>.bias)`` (kernels ``(in, out)``).
4. ``y = z @ head.kernel + head.bias`` reshaped to ``(action_horizon, action_dim)``: the
   *normalised* action chunk; ``action = y * scale + shift`` from ``policy.json``'s
   ``normalization`` (``action``'s ``shift``/``scale``).

**The export** (``write_export``/``read_export``): a folder with ``model.safetensors`` (float32,
names above) and ``policy.json``::

    {"format": "rldskit-policy", "format_version": 1, "architecture": {...ARCHITECTURE...},
     "inputs": {"cameras": {path: {"shape": [h, w, c], "source_shape": [H, W, C], "resize": "area"}},
                "state": {path: {"shape": [...], "names": [...], "unit": ...}}},
     "outputs": {"action": {"shape": [K, A], "names": [...], "bounds": [[lo, hi], ...], "unit": ...}},
     "normalization": {"mode": "mean_std", "features": {path: {"shift": [...], "scale": [...]}},
                       "statistics": {"split", "episodes", "steps", ...}},   # the training selection only
     "dataset": {"name", "version", "spec_id", "path"}, "trainer": {"framework", "config", "step"},
     "evidence": {...}}

Frames are brought to ``image_size`` from the camera's resolution by area averaging when the
factor is a whole number (the loader decodes JPEGs at a DCT scale, which is area averaging within
rounding) and bilinear otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rldskit._io import atomic_write_bytes, fsync_dir

__all__ = ["TrainConfig", "PRESETS", "load_config", "config_to_dict", "PolicyIO", "policy_io", "make_loader", "loader_config",
           "batch_arrays", "architecture", "policy_document", "conv_out_size", "same_padding", "encoder_out_dim", "write_export", "read_export", "EXPORT_WEIGHTS", "EXPORT_POLICY",
           "Checkpoints", "Mirror", "LocalMirror", "HubMirror", "open_mirror", "PreemptionGuard", "MetricsWriter",
           "select_trainer", "atomic_write_bytes", "atomic_write_json", "ConfigError", "train_stats", "SELECTION_KEY",
           "SANITY_STEPS", "SANITY_BATCH", "SANITY_RATIO", "SANITY_LORA_RATIO", "SANITY_WARMUP", "SANITY_SCOPE", "sanity_config",
           "sanity_batch", "check_batch", "param_update", "sanity_proof"]

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_POLICY = "policy.json"
FORMAT = "rldskit-policy"
FORMAT_VERSION = 1


class ConfigError(ValueError):
    """A config file or option is malformed; the message names the file and the key."""


# =========================================================================== config


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; JSON-loadable (``load_config``). Sizes in pixels/steps."""

    data: str = ""                                 # dataset version folder (rldskit convert output)
    out: str = "runs/run"                          # run folder: checkpoints/, metrics.*, export/
    preset: str = "dev"
    seed: int = 0
    # data
    history: int = 1                               # observation frames per sample
    action_horizon: int = 8                        # predicted action chunk length K
    image_size: tuple[int, int] = (24, 32)         # (h, w) the policy sees
    batch_size: int = 16
    train_split: str = "train[:90%]"
    eval_split: str = "train[90%:]"                # held-out episodes (promotion gate, learning tests)
    num_threads: int | None = None                 # loader threads (None: its measured default)
    # model (conv_mlp v1)
    conv_features: tuple[int, ...] = (8, 16)
    conv_kernel: int = 3
    conv_stride: int = 2
    mlp_features: tuple[int, ...] = (64,)
    # optimisation
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    max_steps: int = 200
    grad_clip: float = 1.0
    precision: str = "float32"                     # "float32" or "bfloat16" (compute; params stay float32)
    # LoRA (torch trainer)
    lora_rank: int = 4
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    # budgets, logging, checkpoints
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    max_wall_seconds: float | None = None
    max_memory_mb: float | None = None
    mirror: str | None = None                      # a local folder, or hf://<user>/<repo> (Hugging Face model repo)

    def validate(self, source: str = "config") -> TrainConfig:
        if self.history < 1 or self.action_horizon < 1:
            raise ConfigError(f"{source}: history and action_horizon must be >= 1")
        if len(self.image_size) != 2 or min(self.image_size) < 4:
            raise ConfigError(f"{source}: image_size must be [h, w] with h, w >= 4, got {list(self.image_size)}")
        if self.batch_size < 1 or self.max_steps < 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError(f"{source}: batch_size, checkpoint_every and log_every must be >= 1, max_steps >= 0")
        if not self.conv_features or self.conv_kernel < 1 or self.conv_stride < 1:
            raise ConfigError(f"{source}: conv_features must be non-empty; conv_kernel, conv_stride >= 1")
        if self.precision not in ("float32", "bfloat16"):
            raise ConfigError(f"{source}: precision must be 'float32' or 'bfloat16', got {self.precision!r}")
        if self.learning_rate <= 0 or self.grad_clip <= 0:
            raise ConfigError(f"{source}: learning_rate and grad_clip must be > 0")
        if self.lora_rank < 1 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"{source}: lora_rank must be >= 1, lora_alpha > 0 and lora_dropout in [0, 1)")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"{source}: keep_checkpoints must be >= 1")
        for k in ("max_wall_seconds", "max_memory_mb"):
            if getattr(self, k) is not None and getattr(self, k) <= 0:
                raise ConfigError(f"{source}: {k} must be > 0 (or null for no budget)")
        return self


#: preset -> overrides of the dataclass defaults. ``dev``: seconds on a laptop; ``pi5``: what fits
#: a Raspberry Pi 5 (and runs under 1 ms per step on it in numpy); ``tpu``: a real accelerator run.
PRESETS: dict[str, dict[str, Any]] = {
    "dev": {},
    "pi5": {"image_size": (60, 80), "conv_features": (16, 32, 32), "mlp_features": (128, 128), "batch_size": 32,
            "max_steps": 2000, "warmup_steps": 100, "checkpoint_every": 250},
    "tpu": {"image_size": (120, 160), "conv_features": (32, 64, 128, 128), "mlp_features": (512, 512),
            "batch_size": 256, "max_steps": 50000, "warmup_steps": 1000, "checkpoint_every": 1000,
            "precision": "bfloat16", "history": 2},
}

_TUPLES = {"image_size", "conv_features", "mlp_features"}


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def load_config(path: str | os.PathLike | None = None, preset: str | None = None,
                overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults <- ``PRESETS[preset]`` (the file's ``preset`` when ``preset`` is None) <- the JSON
    file at ``path`` <- ``overrides`` (``None`` values ignored). Unknown keys and wrong types raise
    :class:`ConfigError` naming the file and the key."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    from_file: dict[str, Any] = {}
    source = str(path) if path else "config"
    if path is not None:
        try:
            from_file = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: not a readable JSON config: {e}") from None
        if not isinstance(from_file, dict):
            raise ConfigError(f"{path}: expected a JSON object of config keys")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    name = preset or overrides.get("preset") or from_file.get("preset") or "dev"
    if name not in PRESETS:
        raise ConfigError(f"{source}: unknown preset {name!r}; presets are {', '.join(PRESETS)}")
    values: dict[str, Any] = {"preset": name, **PRESETS[name]}
    for where, layer in ((source, from_file), ("overrides", overrides)):
        for k, v in layer.items():
            if k not in fields:
                raise ConfigError(f"{where}: unknown config key {k!r}; known keys: {', '.join(fields)}")
            values[k] = _coerce(k, v, fields[k], where)
    values["preset"] = name
    return TrainConfig(**values).validate(source)


def _coerce(key: str, v: Any, field: dataclasses.Field, where: str) -> Any:
    default = field.default
    if key in _TUPLES:
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise ConfigError(f"{where}: {key} must be a list of integers, got {v!r}")
        return tuple(v)
    if v is None:
        if default is not None and key not in ("num_threads", "max_wall_seconds", "max_memory_mb", "mirror"):
            raise ConfigError(f"{where}: {key} cannot be null")
        return None
    if isinstance(default, bool):
        ok = isinstance(v, bool)
    elif isinstance(default, int) and key != "num_threads":
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif isinstance(default, float) or key in ("max_wall_seconds", "max_memory_mb"):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        v = float(v) if ok else v
    elif isinstance(default, str) or key == "mirror":
        ok = isinstance(v, str)
    else:
        ok = isinstance(v, int) and not isinstance(v, bool)
    if not ok:
        raise ConfigError(f"{where}: {key} has the wrong type ({type(v).__name__}: {v!r}); "
                          f"expected {type(default).__name__ if default is not None else 'a number'}")
    return v


# =========================================================================== data


@dataclasses.dataclass(frozen=True)
class PolicyIO:
    """What a policy reads and writes, from the dataset's spec: ``cameras`` (image observation
    paths, with their source shapes), ``state_keys`` (float observation paths of at most 64
    elements, flattened), ``action_dim``/``action_names``/``action_bounds`` of ``action_key``."""

    cameras: tuple[str, ...]
    camera_shapes: tuple[tuple[int, int, int], ...]
    state_keys: tuple[str, ...]
    state_dims: tuple[int, ...]
    action_key: str
    action_dim: int
    action_names: tuple[str, ...]
    action_bounds: tuple[tuple[float, float], ...] | None
    spec_id: str

    @property
    def state_dim(self) -> int:
        return int(sum(self.state_dims))


def policy_io(spec, action_key: str = "action") -> PolicyIO:
    """The :class:`PolicyIO` of an :class:`~rldskit.spec.EpisodeSpec`."""
    from rldskit.spec import Image

    cams, shapes, state, dims = [], [], [], []
    for path, leaf in spec.step_leaves.items():
        if not path.startswith("observation/"):
            continue
        if isinstance(leaf, Image):
            cams.append(path)
            shapes.append(tuple(int(x) for x in leaf.shape))
        elif getattr(leaf, "dtype", "").startswith("float") and not getattr(leaf, "optional", False):
            n = int(np.prod(leaf.shape)) if leaf.shape else 1
            if n <= 64:
                state.append(path)
                dims.append(n)
    if not cams and not state:
        raise ValueError(f"{spec.id}: no image or float observation to learn from")
    if action_key not in spec.step_leaves:
        raise ValueError(f"{spec.id}: no {action_key!r} step feature")
    leaf = spec.step_leaves[action_key]
    a = int(np.prod(leaf.shape)) if leaf.shape else 1
    names = tuple(leaf.names) if getattr(leaf, "names", None) else tuple(f"{action_key}[{i}]" for i in range(a))
    bounds = None
    if getattr(leaf, "bounds", None):
        b = [tuple(map(float, p)) for p in leaf.bounds]
        bounds = tuple(b * a if len(b) == 1 else b)
    return PolicyIO(tuple(cams), tuple(shapes), tuple(state), tuple(dims), action_key, a, names, bounds, spec.id)


def loader_config(cfg: TrainConfig, split: str | None = None, *, shuffle: bool = True, num_epochs: int | None = None,
                  seed: int | None = None, batch_size: int | None = None, drop_remainder: bool = True,
                  io: PolicyIO | None = None):  # -> rldskit.loaders.LoaderConfig
    """The :class:`~rldskit.loaders.LoaderConfig` (what fixes the loader's order and sample shape) a
    run of ``cfg`` reads with: ``history`` frames of every camera (resized to ``image_size``) and
    state key of ``io`` (default: :func:`policy_io` of the dataset's spec), ``action_horizon``
    actions, mean/std normalised floats, no debug keys; ``split`` defaults to ``cfg.train_split``,
    ``seed`` and ``batch_size`` to the config's."""
    from rldskit.loaders import LoaderConfig, StepIndex

    if io is None:
        io = policy_io(StepIndex.load(dataset_dir(cfg), base_split(cfg.train_split)).spec)
    return LoaderConfig(kind="windows", history=cfg.history, action_horizon=cfg.action_horizon,
                        batch_size=batch_size or cfg.batch_size, seed=cfg.seed if seed is None else seed,
                        shuffle=shuffle, num_epochs=num_epochs, decode_images=True, resize=tuple(cfg.image_size),
                        normalize="stats", split=split or cfg.train_split,
                        observation_keys=(*io.cameras, *io.state_keys), action_keys=(io.action_key,), extra_keys=(),
                        debug_keys=False, drop_remainder=drop_remainder)


def make_loader(cfg: TrainConfig, split: str | None = None, *, shuffle: bool = True, num_epochs: int | None = None,
                seed: int | None = None, batch_size: int | None = None, drop_remainder: bool = True):
    """The rldskit windows loader a trainer reads: :func:`loader_config` with the normalisation
    statistics of the training selection only (:func:`train_stats`) and ``cfg.num_threads``."""
    from rldskit.loaders import StepIndex, build

    index = StepIndex.load(dataset_dir(cfg), base_split(cfg.train_split))  # the spec, and the normalisation statistics
    config = loader_config(cfg, split, shuffle=shuffle, num_epochs=num_epochs, seed=seed, batch_size=batch_size,
                           drop_remainder=drop_remainder, io=policy_io(index.spec))
    return build(cfg.data, config, stats=train_stats(cfg, index), num_threads=cfg.num_threads)  # a URL: its copy


#: key of :func:`train_stats`' record of the selection it covers (a dict, like every value of a
#: ``stats.json`` mapping; the :class:`~rldskit.loaders.Normalizer` reads only feature keys)
SELECTION_KEY = "_selection"


def train_stats(cfg: TrainConfig, index=None) -> dict[str, Any]:
    """The normalisation statistics a run trains with: ``mean``/``std``/``min``/``max``/``count``
    (:func:`rldskit.loaders.compute_stats`) of the training selection ``cfg.train_split`` (e.g.
    ``train[:90%]``) only, always computed from its steps, so the held-out episodes
    (``cfg.eval_split``) never shape the normalisation. A ``stats.json`` beside the data is **not**
    used: ``rldskit stats`` and ``rldskit pipeline`` write it over a whole split (held-out
    episodes included) to describe the dataset. Under :data:`SELECTION_KEY` the result records the
    selection it covers: ``split``, ``episodes``, ``steps``, ``first_episode``/``last_episode``
    (ids) and ``episode_ids_sha256`` (sha256 of the ids joined by newlines); ``policy.json``
    carries it as ``normalization.statistics``. ``index``: the train split's
    :class:`~rldskit.loaders.StepIndex` when the caller has it already. Raises ``ValueError`` when
    the selection has no steps."""
    import hashlib

    from rldskit.loaders import StepIndex, compute_stats, parse_split, select_episodes

    index = index if index is not None else StepIndex.load(dataset_dir(cfg), parse_split(cfg.train_split)[0])
    positions = select_episodes(index, cfg.train_split)
    steps = index.steps_of(positions)
    if len(steps) == 0:
        raise ValueError(f"{index.path}: train_split {cfg.train_split!r} selects no steps to compute the "
                         "normalisation statistics from")
    ids = [str(index.episodes["episode_id"][int(p)]) for p in positions]
    stats: dict[str, Any] = compute_stats(index, steps=steps)
    stats[SELECTION_KEY] = {"split": cfg.train_split, "episodes": len(ids), "steps": int(len(steps)),
                            "first_episode": ids[0], "last_episode": ids[-1],
                            "episode_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}
    return stats


def dataset_dir(cfg: TrainConfig) -> Path:
    """The local folder of ``cfg.data``: itself, or for a ``gs://``/``s3://`` URL its verified local
    copy (:func:`rldskit.dataset_cache.local_copy`, filled on first use and reused). ``cfg.data``
    itself, as given, is what runs record."""
    from rldskit.dataset_cache import local_copy

    return local_copy(cfg.data)


def dataset_record(cfg: TrainConfig, spec_id: str) -> dict[str, Any]:
    """What a policy document says of its dataset: ``name`` and ``version`` (the version folder and
    the one above it), ``spec_id`` and ``path`` (a bucket URL as given; a local folder resolved)."""
    from rldskit import paths

    if paths.is_remote(cfg.data):
        where = str(paths.location(cfg.data))
        parts = where.rstrip("/").split("/")
        return {"name": parts[-2], "version": parts[-1], "spec_id": spec_id, "path": where}
    p = Path(cfg.data).resolve()
    return {"name": p.parent.name, "version": p.name, "spec_id": spec_id, "path": str(p)}


def base_split(split: str) -> str:
    """The split name of a split selection: ``"train[:90%]"`` -> ``"train"``."""
    return split.split("[", 1)[0].strip()


def batch_arrays(batch: Mapping[str, np.ndarray], io: PolicyIO) -> dict[str, np.ndarray]:
    """A loader batch -> the arrays a train step takes: ``images`` ``uint8 (B, n_cam, H, h, w, c)``
    (cameras in ``io.cameras`` order), ``state`` ``float32 (B, H * state_dim)``, ``actions``
    ``float32 (B, K, A)`` (normalised) and ``mask`` ``float32 (B, K)`` (1 where the action is real,
    0 where it pads past the episode's end)."""
    first = batch[io.action_key]
    b = first.shape[0]
    if len(io.cameras) == 1:
        images = batch[io.cameras[0]][:, None]  # a view: no copy of the frames
    elif io.cameras:
        images = np.stack([batch[c] for c in io.cameras], axis=1)
    else:
        images = np.zeros((b, 0, 1, 1, 1, 1), np.uint8)
    if io.state_keys:
        state = np.concatenate([batch[k].reshape(b, batch[k].shape[1], -1) for k in io.state_keys], axis=-1)
        state = state.reshape(b, -1).astype(np.float32, copy=False)
    else:
        state = np.zeros((b, 0), np.float32)
    actions = first.reshape(b, first.shape[1], -1).astype(np.float32, copy=False)
    mask = (~batch["action_is_pad"]).astype(np.float32)
    return {"images": images, "state": state, "actions": actions, "mask": mask}


# =========================================================================== export


def architecture(cfg: TrainConfig, io: PolicyIO) -> dict[str, Any]:
    """The ``architecture`` block of ``policy.json`` (see the module docstring)."""
    channels = sorted({s[2] for s in io.camera_shapes}) or [3]
    if len(channels) > 1:
        raise ValueError(f"{io.spec_id}: cameras with different channel counts {channels} are not supported by "
                         "conv_mlp v1 (one 'channels' for all cameras)")
    return {"type": "conv_mlp", "version": 1, "cameras": list(io.cameras), "image_size": list(cfg.image_size),
            "channels": int(channels[0]), "history": cfg.history,
            "conv": [{"features": int(f), "kernel": cfg.conv_kernel, "stride": cfg.conv_stride, "padding": "SAME"}
                     for f in cfg.conv_features],
            "activation": "relu", "pool": "flatten_hwc", "encoder_out": encoder_out_dim(cfg),
            "state_keys": list(io.state_keys), "state_dim": io.state_dim,
            "mlp": [int(f) for f in cfg.mlp_features], "action_horizon": cfg.action_horizon,
            "action_dim": io.action_dim}


def conv_out_size(n: int, stride: int) -> int:
    """Output length of a ``SAME`` convolution of input length ``n``: ``ceil(n / stride)``."""
    return -(-n // stride)


def same_padding(n: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding ``(before, after)`` of an input of length ``n``."""
    total = max((conv_out_size(n, stride) - 1) * stride + kernel - n, 0)
    return total // 2, total - total // 2


def encoder_out_dim(cfg: TrainConfig) -> int:
    """Length of one frame's flattened encoder output."""
    h, w = cfg.image_size
    for _ in cfg.conv_features:
        h, w = conv_out_size(h, cfg.conv_stride), conv_out_size(w, cfg.conv_stride)
    return int(h * w * cfg.conv_features[-1])


def policy_document(cfg: TrainConfig, io: PolicyIO, normalizer, *, framework: str, step: int,
                    dataset: Mapping[str, Any], evidence: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``policy.json`` for an export (``normalizer``: the loader's :class:`~rldskit.loaders.Normalizer`)."""
    norm = normalizer.to_dict() if normalizer is not None else {"mode": None, "features": {}}
    selection = normalizer.stats.get(SELECTION_KEY) if normalizer is not None else None
    if isinstance(selection, Mapping):
        norm["statistics"] = dict(selection)  # which episodes the shift/scale were computed over
    cams = {c: {"shape": [*cfg.image_size, s[2]], "source_shape": list(s), "resize": "area"}
            for c, s in zip(io.cameras, io.camera_shapes)}
    state = {k: {"shape": [d]} for k, d in zip(io.state_keys, io.state_dims)}
    out = {"action": {"shape": [cfg.action_horizon, io.action_dim], "names": list(io.action_names),
                      "bounds": [list(b) for b in io.action_bounds] if io.action_bounds else None,
                      "key": io.action_key}}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": architecture(cfg, io),
            "inputs": {"cameras": cams, "state": state}, "outputs": out, "normalization": norm,
            "dataset": dict(dataset), "trainer": {"framework": framework, "step": int(step),
                                                  "config": config_to_dict(cfg)},
            "evidence": dict(evidence or {}), "spec_id": io.spec_id}


def write_export(out_dir: str | os.PathLike, weights: Mapping[str, np.ndarray], policy: Mapping[str, Any]) -> Path:
    """Write ``model.safetensors`` (float32) and ``policy.json`` into ``out_dir`` atomically: built
    in a temporary sibling folder, then renamed over ``out_dir`` (the old export, if any, is
    replaced whole). Returns the folder."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        arrays = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in weights.items()}
        save_file(arrays, str(tmp / EXPORT_WEIGHTS), metadata={"format": FORMAT})
        atomic_write_json(tmp / EXPORT_POLICY, policy)
        fsync_dir(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_export(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(weights, policy)`` of an export folder; raises ``ValueError`` naming the file."""
    from safetensors.numpy import load_file

    p = Path(path)
    try:
        policy = json.loads((p / EXPORT_POLICY).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{p / EXPORT_POLICY}: not a readable policy file: {e}") from None
    if policy.get("format") != FORMAT or policy.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{p / EXPORT_POLICY}: not an {FORMAT} v{FORMAT_VERSION} policy")
    try:
        weights = load_file(str(p / EXPORT_WEIGHTS))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{p / EXPORT_WEIGHTS}: not readable safetensors: {e}") from None
    return weights, policy


# =========================================================================== files


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def replace_dir(tmp: Path, dest: Path) -> None:
    """Rename the finished folder ``tmp`` to ``dest`` (atomic per folder: a reader sees the old or the
    new one); an existing ``dest`` is moved aside first and removed after."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(dest, old)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# =========================================================================== checkpoints


class Checkpoints:
    """``<run>/checkpoints/step_<N:08d>/`` folders, each ``state.safetensors`` (every array of the
    training state, flat names) and ``meta.json`` (step, loader state, RNG, config, anything
    JSON), written to a temporary folder and renamed, so a folder that exists is complete. The
    newest ``keep`` are kept. ``latest()`` is the most advanced complete checkpoint."""

    PREFIX = "step_"

    def __init__(self, run_dir: str | os.PathLike, keep: int = 3):
        self.root = Path(run_dir) / "checkpoints"
        self.keep = max(1, keep)

    def save(self, step: int, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
        from safetensors.numpy import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            flat = {k: np.ascontiguousarray(np.asarray(v)).reshape(np.shape(v)) for k, v in arrays.items()}  # keeps 0-d
            save_file(flat, str(tmp / "state.safetensors"))
            atomic_write_json(tmp / "meta.json", {**meta, "step": int(step), "complete": True})
            fsync_dir(tmp)
            dest = self.root / f"{self.PREFIX}{int(step):08d}"
            replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.list()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return dest

    def list(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.iterdir():
            if p.name.startswith(self.PREFIX) and (p / "meta.json").is_file() and (p / "state.safetensors").is_file():
                try:
                    out.append((int(p.name[len(self.PREFIX):]), p))
                except ValueError:
                    continue
        return [p for _, p in sorted(out)]

    def latest(self) -> Path | None:
        ckpts = self.list()
        return ckpts[-1] if ckpts else None

    @staticmethod
    def load(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        from safetensors.numpy import load_file

        p = Path(path)
        try:
            meta = json.loads((p / "meta.json").read_text())
            arrays = load_file(str(p / "state.safetensors"))
        except Exception as e:
            raise ValueError(f"{p}: not a readable checkpoint: {e}") from None
        if not meta.get("complete"):
            raise ValueError(f"{p}: checkpoint is not marked complete")
        return arrays, meta

    @staticmethod
    def step_of(path: str | os.PathLike) -> int:
        return int(json.loads((Path(path) / "meta.json").read_text())["step"])


# =========================================================================== mirrors


class Mirror:
    """A remote copy of a run's newest checkpoint, ``checkpoints/last`` on the mirror. ``push``
    uploads a local checkpoint folder (may run in the background; ``wait()`` joins), ``latest_step``
    is the step of the mirrored checkpoint (``None`` when there is none) and ``pull`` downloads it
    into ``dest`` and returns the folder."""

    def push(self, checkpoint: Path) -> None:
        raise NotImplementedError

    def latest_step(self) -> int | None:
        raise NotImplementedError

    def pull(self, dest: Path) -> Path:
        raise NotImplementedError

    def wait(self) -> None:
        pass


class LocalMirror(Mirror):
    """A folder (another disk, an NFS or gcsfuse mount): ``<root>/checkpoints/last`` replaced
    atomically on every push."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def last(self) -> Path:
        return self.root / "checkpoints" / "last"

    def push(self, checkpoint: Path) -> None:
        self.last.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".push-", dir=self.last.parent))
        try:
            for f in Path(checkpoint).iterdir():
                shutil.copy2(f, tmp / f.name)
            fsync_dir(tmp)
            replace_dir(tmp, self.last)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def latest_step(self) -> int | None:
        if not (self.last / "meta.json").is_file():
            return None
        return Checkpoints.step_of(self.last)

    def pull(self, dest: Path) -> Path:
        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(self.last, dest)
        return dest


class HubMirror(Mirror):
    """A Hugging Face model repo: every push is ``HfApi.upload_folder(folder_path=<checkpoint>,
    repo_id, path_in_repo="checkpoints/last", delete_patterns=["*"], commit_message=...)`` in a
    background thread (one at a time; a newer push waits for the older); ``latest_step`` downloads
    ``checkpoints/last/meta.json`` with ``hf_hub_download``; ``pull`` is ``snapshot_download`` with
    ``allow_patterns=["checkpoints/last/*"]``. ``api``/``download``/``snapshot`` default to
    huggingface_hub's (token from ``HF_TOKEN`` or ``huggingface-cli login``)."""

    PATH = "checkpoints/last"

    def __init__(self, repo_id: str, *, api=None, download: Callable | None = None, snapshot: Callable | None = None,
                 create: bool = True):
        self.repo_id = repo_id
        if api is None or download is None or snapshot is None:
            import huggingface_hub as hf

            api = api or hf.HfApi()
            download = download or hf.hf_hub_download
            snapshot = snapshot or hf.snapshot_download
        self.api, self._download, self._snapshot = api, download, snapshot
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._created = not create

    def push(self, checkpoint: Path) -> None:
        self.wait()
        staged = Path(tempfile.mkdtemp(prefix="rldskit-hub-push-"))
        for f in Path(checkpoint).iterdir():  # a private copy: the local checkpoint may be pruned meanwhile
            shutil.copy2(f, staged / f.name)

        def upload() -> None:
            try:
                if not self._created:
                    self.api.create_repo(self.repo_id, repo_type="model", private=True, exist_ok=True)
                    self._created = True
                step = Checkpoints.step_of(staged)
                self.api.upload_folder(folder_path=str(staged), repo_id=self.repo_id, repo_type="model",
                                       path_in_repo=self.PATH, delete_patterns=["*"],
                                       commit_message=f"checkpoint step {step}")
            except BaseException as e:  # reported by the next wait()
                self._error = e
            finally:
                shutil.rmtree(staged, ignore_errors=True)

        self._thread = threading.Thread(target=upload, name="rldskit-hub-push", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"hf://{self.repo_id}: checkpoint upload failed: {err}") from err

    def latest_step(self) -> int | None:
        try:
            meta = self._download(repo_id=self.repo_id, filename=f"{self.PATH}/meta.json", repo_type="model")
        except Exception as e:  # no repo, no checkpoint yet, offline
            if type(e).__name__ in ("EntryNotFoundError", "RepositoryNotFoundError", "RemoteEntryNotFoundError"):
                return None
            raise
        return int(json.loads(Path(meta).read_text())["step"])

    def pull(self, dest: Path) -> Path:
        root = self._snapshot(repo_id=self.repo_id, repo_type="model", allow_patterns=[f"{self.PATH}/*"])
        src = Path(root) / self.PATH
        dest = Path(dest)
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
        return dest


def open_mirror(spec: str | None) -> Mirror | None:
    """``None`` -> no mirror; ``hf://user/repo`` -> :class:`HubMirror`; anything else a folder."""
    if not spec:
        return None
    if spec.startswith("hf://"):
        return HubMirror(spec[len("hf://"):])
    return LocalMirror(spec)


# =========================================================================== sanity check: overfit one batch

#: optimiser steps the sanity check takes on its one batch. Measured on every shipped schema's synthetic
#: data (3 seeds and sizes, dev preset): in 200 steps JAX reached <= 3.8% of the initial loss but torch
#: (smaller default initialisation) stalled at up to 24%; in 400 both reach <= 0.64%. The check fits the
#: run's schedule (warmup, cosine decay) into these steps.
SANITY_STEPS = 400
#: samples in that batch (the config's ``batch_size`` when smaller; rounded up to the device count)
SANITY_BATCH = 8
#: training every weight, the loss on the batch after ``SANITY_STEPS`` updates must be at most this
#: fraction of its initial value (a model with ~10^4-10^6 weights memorises 8 windows; one that cannot
#: learn stays near 100%)
SANITY_RATIO = 0.1
#: the same bound for LoRA (adapters only, the base frozen): a rank-r adapter changes the head's output on
#: a batch of B windows by a matrix of rank <= r, so with B > r it cannot in general memorise the batch;
#: the loss must halve (measured: 2-29% for rank 4 on bases trained for 30 steps)
SANITY_LORA_RATIO = 0.5
#: warmup of the check's learning-rate schedule (at most the config's ``warmup_steps``)
SANITY_WARMUP = 10
#: what a passing check shows and what it does not (recorded in every proof_of_learning.json)
SANITY_SCOPE = {
    "detects": ["a model, optimiser or data plumbing that cannot learn: a learning rate too small to move the loss, "
                "parameters that do not update (frozen, or an optimiser that drops their updates), a batch with no "
                "real action to fit (all padding), non-finite inputs, loss, gradients or parameters, inputs or "
                "outputs of the wrong shape or dtype",
                "LoRA: base weights that change (only the adapters may)"],
    "criterion": f"the loss on one fixed batch falls to <= {SANITY_RATIO:.0%} of its initial value in {SANITY_STEPS} "
                 f"steps (LoRA: <= {SANITY_LORA_RATIO:.0%}); every trainable tensor moves; everything finite and "
                 "shaped as the model expects",
    "does_not_detect": ["whether actions are predictable from observations: one batch of pure-noise actions is "
                        "memorised too; held-out error (eval_mse in policy.json's evidence) measures that"],
}


def sanity_config(cfg: TrainConfig, devices: int = 1) -> TrainConfig:
    """``cfg`` as the sanity check runs it: ``batch_size`` ``min(cfg.batch_size, SANITY_BATCH)``
    (a multiple of ``devices``), ``max_steps`` ``SANITY_STEPS`` (the schedule's cosine spans the
    check), ``warmup_steps`` at most ``SANITY_WARMUP``, no mirror; model, learning rate, weight
    decay, clipping and precision as configured."""
    batch = max(devices, min(cfg.batch_size, SANITY_BATCH))
    batch += -batch % devices
    return dataclasses.replace(cfg, batch_size=batch, max_steps=SANITY_STEPS,
                               warmup_steps=min(cfg.warmup_steps, SANITY_WARMUP), mirror=None).validate()


def sanity_batch(cfg: TrainConfig, io: PolicyIO) -> tuple[dict[str, np.ndarray], Any]:
    """``(arrays, normalizer)``: the one batch the sanity check fits, the first batch of the run's
    own loader (seeded by ``cfg.seed``: the same batch every time) as :func:`batch_arrays` (copies,
    not loader buffers), and that loader's :class:`~rldskit.loaders.Normalizer`."""
    loader = make_loader(cfg)
    try:
        return {k: np.array(v) for k, v in batch_arrays(next(loader), io).items()}, loader.normalizer
    finally:
        loader.close()


def check_batch(arrays: Mapping[str, np.ndarray], cfg: TrainConfig, io: PolicyIO) -> tuple[dict[str, Any], list[str]]:
    """``(summary, failures)`` of a train-step batch (:func:`batch_arrays`) against what the model
    of ``cfg``/``io`` takes: ``images`` ``uint8 (B, n_cam, history, h, w, c)``, ``state``
    ``float32 (B, history * state_dim)``, ``actions`` ``float32 (B, K, A)``, ``mask`` ``float32
    (B, K)`` of 0/1 with at least one 1; every float finite (a NaN in a padded action still
    poisons a masked loss)."""
    b, hist, k, a = cfg.batch_size, cfg.history, cfg.action_horizon, io.action_dim
    if io.cameras:
        images = (b, len(io.cameras), hist, *cfg.image_size, io.camera_shapes[0][2])
    else:
        images = (b, 0, 1, 1, 1, 1)
    want = {"images": (images, np.uint8), "state": ((b, hist * io.state_dim), np.float32),
            "actions": ((b, k, a), np.float32), "mask": ((b, k), np.float32)}
    summary: dict[str, Any] = {}
    failures: list[str] = []
    for name, (shape, dtype) in want.items():
        if name not in arrays:
            failures.append(f"inputs: no {name!r} array")
            continue
        x = np.asarray(arrays[name])
        summary[name] = {"shape": list(x.shape), "dtype": str(x.dtype)}
        if tuple(x.shape) != tuple(shape):
            failures.append(f"inputs: {name} has shape {tuple(x.shape)}, expected {tuple(shape)} "
                            "(batch, [cameras, history, h, w, c] | [history * state_dim] | [K, A] | [K])")
        if x.dtype != dtype:
            failures.append(f"inputs: {name} is {x.dtype}, expected {np.dtype(dtype)}")
        if x.dtype.kind == "f":
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            summary[name]["non_finite"] = bad
            if bad:
                failures.append(f"inputs: {name} holds {bad} non-finite value(s)")
    if "mask" in arrays:
        m = np.asarray(arrays["mask"])
        summary["real_actions"] = int(np.count_nonzero(m == 1))
        if np.any((m != 0) & (m != 1)):
            failures.append("inputs: mask holds values other than 0 and 1")
        elif not np.any(m == 1):
            failures.append("inputs: every action in the batch is padding (mask all 0): the loss has nothing to fit")
    return summary, failures


def param_update(init: Mapping[str, np.ndarray], final: Mapping[str, np.ndarray],
                 trainable: Sequence[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """``(record, failures)`` of the parameter change ``final - init`` (export-named float arrays):
    per tensor ``l2`` (norm of the change), ``init_l2`` and ``relative`` (``l2 / init_l2``; None
    when the tensor started at 0, e.g. biases), ``overall_relative`` over every tensor, and which
    moved. ``trainable``: the names that may change (default all); every one of them must move,
    every other must stay bit-identical, and every final value must be finite."""
    names = sorted(init)
    trainable_set = set(names if trainable is None else trainable)
    per: dict[str, Any] = {}
    failures: list[str] = []
    missing = sorted(set(names) ^ set(final))
    if missing:
        failures.append(f"parameters: the trained model's tensor names differ from the initial ones: {missing[:5]}")
    tot_d = tot_i = 0.0
    still, moved_frozen, non_finite = [], [], []
    for n in names:
        if n not in final:
            continue
        i0 = np.asarray(init[n], np.float64)
        f = np.asarray(final[n], np.float64)
        if not np.all(np.isfinite(f)):
            non_finite.append(n)
        d = float(np.linalg.norm((f - i0).ravel()))
        i_l2 = float(np.linalg.norm(i0.ravel()))
        tot_d += d * d if np.isfinite(d) else 0.0
        tot_i += i_l2 * i_l2
        per[n] = {"l2": d if np.isfinite(d) else None, "init_l2": i_l2,
                  "relative": d / i_l2 if i_l2 > 0 and np.isfinite(d) else None, "trainable": n in trainable_set}
        changed = not np.array_equal(f, i0)
        if n in trainable_set and not changed:
            still.append(n)
        if n not in trainable_set and changed:
            moved_frozen.append(n)
    if non_finite:
        failures.append(f"parameters: non-finite values after training in {', '.join(non_finite[:5])}")
    if still:
        failures.append(f"parameters did not move: {', '.join(still)}")
    if moved_frozen:
        failures.append(f"frozen parameters changed: {', '.join(moved_frozen)}")
    record = {"per_tensor": per, "overall_relative": (tot_d ** 0.5) / (tot_i ** 0.5) if tot_i > 0 else None,
              "trainable": sorted(trainable_set & set(names)), "frozen": sorted(set(names) - trainable_set),
              "frozen_unchanged": not moved_frozen, "all_trainable_moved": not still}
    return record, failures


def sanity_proof(*, framework: str, cfg: TrainConfig, io: PolicyIO, inputs: Mapping[str, Any],
                 input_failures: Sequence[str], losses: Sequence[float], grad_norms: Sequence[float],
                 final_loss: float | None, output_shape: Sequence[int] | None, output_finite: bool,
                 update: Mapping[str, Any] | None, update_failures: Sequence[str],
                 required_ratio: float = SANITY_RATIO, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The verdict and record of one overfit-one-batch run (``proof_of_learning.json``).
    ``losses``/``grad_norms``: the masked MSE of the batch (normalised action units squared) and
    the pre-clip gradient norm before each update that ran (a run stops at the first non-finite
    one); ``final_loss``: the loss on the same batch after the last update, by the exported
    model's forward. Passes when nothing failed: inputs, every loss and gradient norm finite,
    ``final_loss <= required_ratio * losses[0]`` after
    ``cfg.max_steps`` updates, the output ``(B, K, A)`` and finite, and the parameter update
    (:func:`param_update`)."""
    failures = list(input_failures)
    losses = [float(x) for x in losses]
    grad_norms = [float(x) for x in grad_norms]
    initial = losses[0] if losses else None
    ratio = None
    if not input_failures:
        bad = next((i for i, (lo, g) in enumerate(zip(losses, grad_norms)) if not (np.isfinite(lo) and np.isfinite(g))),
                   None)
        if bad is not None:
            what = "loss" if not np.isfinite(losses[bad]) else "gradient norm"
            failures.append(f"non-finite {what} at step {bad + 1} ({losses[bad]!r}, grad norm {grad_norms[bad]!r})")
        elif len(losses) != cfg.max_steps:
            failures.append(f"ran {len(losses)} steps, expected {cfg.max_steps}")
        else:
            if final_loss is None or not np.isfinite(final_loss):
                failures.append(f"non-finite loss on the batch after training ({final_loss!r})")
            elif not initial > 0:
                failures.append(f"the initial loss is {initial!r}: nothing to fit")
            else:
                ratio = final_loss / initial
                if not ratio <= required_ratio:
                    failures.append(f"did not overfit one batch: the loss on it went from {initial:.5g} to "
                                    f"{final_loss:.5g} ({100 * ratio:.1f}% of the initial value) in {cfg.max_steps} "
                                    f"steps; the check needs <= {100 * required_ratio:.0f}%")
        want = [cfg.batch_size, cfg.action_horizon, io.action_dim]
        if output_shape is not None and list(output_shape) != want:
            failures.append(f"output shape {tuple(output_shape)}, expected {tuple(want)} (B, K, A)")
        if output_shape is not None and not output_finite:
            failures.append("the trained model's output on the batch is not finite")
        failures.extend(update_failures)
    proof = {"passed": not failures, "check": "overfit_one_batch", "framework": framework,
             "steps": len(losses), "max_steps": cfg.max_steps, "batch_size": cfg.batch_size, "seed": cfg.seed,
             "required_ratio": required_ratio, "loss_initial": _json_floats([initial])[0],
             "loss_final": _json_floats([final_loss])[0], "loss_ratio": ratio,
             "loss_units": "masked MSE of the normalised action chunk",
             "failures": failures, "loss_curve": _json_floats(losses + ([final_loss] if final_loss is not None else [])),
             "grad_norm_curve": _json_floats(grad_norms), "inputs": dict(inputs), "output_shape": list(output_shape or []),
             "param_update": dict(update or {}), "scope": SANITY_SCOPE, **dict(extra or {}),
             "config": config_to_dict(cfg)}
    return proof


def _json_floats(xs: Sequence[float | None]) -> list[float | None]:
    """Floats for JSON: NaN and +-inf become None (strict JSON has no such numbers)."""
    return [float(x) if x is not None and np.isfinite(x) else None for x in xs]


# =========================================================================== preemption, metrics


class PreemptionGuard:
    """While active, SIGTERM (and SIGINT) only set ``requested``; the train loop checks it after
    every step, saves a checkpoint and stops. Restores the previous handlers on exit. Only the main
    thread can install handlers; elsewhere it is inert (``requested`` stays False)."""

    def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.requested: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        self.requested = signum

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()


class MetricsWriter:
    """One row per logged step to ``metrics.jsonl`` and ``metrics.csv`` (columns ``COLUMNS``;
    appended, so a resumed run continues the same files; rows past the resume step are dropped)."""

    COLUMNS = ("step", "loss", "grad_norm", "lr", "samples_per_s", "data_wait_s", "step_s", "wall_s")

    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl, self.csv = self.dir / "metrics.jsonl", self.dir / "metrics.csv"
        if resume_step is not None:
            self._truncate(resume_step)
        new_csv = not self.csv.exists()
        self._j = open(self.jsonl, "a")
        self._c = open(self.csv, "a")
        if new_csv:
            self._c.write(",".join(self.COLUMNS) + "\n")

    def _truncate(self, step: int) -> None:
        if self.jsonl.exists():
            rows = [ln for ln in self.jsonl.read_text().splitlines() if ln.strip()]
            keep = []
            for ln in rows:
                try:
                    if json.loads(ln)["step"] <= step:
                        keep.append(ln)
                except (ValueError, KeyError):
                    continue
            atomic_write_bytes(self.jsonl, ("\n".join(keep) + "\n").encode() if keep else b"")
        if self.csv.exists():
            lines = self.csv.read_text().splitlines()
            keep = lines[:1] + [ln for ln in lines[1:] if ln.split(",")[0].isdigit() and int(ln.split(",")[0]) <= step]
            atomic_write_bytes(self.csv, ("\n".join(keep) + "\n").encode())

    def write(self, row: Mapping[str, Any]) -> None:
        self._j.write(json.dumps({k: row.get(k) for k in self.COLUMNS}) + "\n")
        self._c.write(",".join("" if row.get(k) is None else f"{row[k]:.6g}" if isinstance(row[k], float)
                               else str(row[k]) for k in self.COLUMNS) + "\n")
        self._j.flush()
        self._c.flush()

    def close(self) -> None:
        self._j.close()
        self._c.close()


# =========================================================================== selector


def select_trainer(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``("jax" | "torch", why)``: JAX when ``RLDSKIT_PREFER_JAX=1`` or JAX sees an accelerator
    (TPU/GPU), torch otherwise (``RLDSKIT_PREFER_JAX=0`` forces torch). JAX is imported only to
    look for accelerators, and only when it is installed."""
    import importlib.util

    env = os.environ if env is None else env
    pref = env.get("RLDSKIT_PREFER_JAX")
    if pref == "1":
        return "jax", "RLDSKIT_PREFER_JAX=1"
    if pref == "0":
        return "torch", "RLDSKIT_PREFER_JAX=0"
    if importlib.util.find_spec("jax") is not None:
        import jax

        kinds = sorted({d.platform for d in jax.devices()})
        if any(k != "cpu" for k in kinds):
            return "jax", f"JAX sees accelerators ({', '.join(kinds)})"
        return "torch", "no accelerator (JAX sees only CPU); set RLDSKIT_PREFER_JAX=1 to use JAX anyway"
    return "torch", "JAX is not installed"
