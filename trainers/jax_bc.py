"""Behaviour cloning in JAX, in one file: the ``conv_mlp`` v1 policy (``trainers/common.py``) trained
on an rldskit windows loader with masked MSE over the normalised action chunk.

    python -m trainers.jax_bc --data DATA --preset {dev,pi5,tpu} [--config cfg.json] [--max-steps N]
        [--out DIR] [--resume] [--sanity-check] [--export] [--mirror SPEC] [--seed S] [--batch-size B]

CLI values override the config file, which overrides the preset (``common.load_config``). The run
folder ``--out`` gets ``config.json`` (loadable with ``--config``), ``metrics.jsonl``/``metrics.csv``,
``checkpoints/step_<N>/`` and, when the run reaches ``max_steps``, ``export/`` (``model.safetensors``
+ ``policy.json``).

* **Model**: flax NNX :class:`ConvMLP`, exactly the forward of ``common``'s docstring; parameter names
  ``encoder.<c>.conv<i>.kernel|bias``, ``mlp.<i>.kernel|bias``, ``head.kernel|bias`` (the tree path of
  the parameter, joined with dots). ``precision="bfloat16"`` computes in bf16, params stay float32.
* **Optimiser**: ``clip_by_global_norm(grad_clip)`` then AdamW (decay on kernels only) with
  ``warmup_cosine_decay_schedule`` (0 -> lr over ``warmup_steps``, cosine to lr/10 at ``max_steps``).
* **Data parallel**: the batch is sharded over all devices (``rldskit.loaders.jax.data_sharding``),
  params and optimiser state are replicated; ``batch_size`` must divide by the device count.
* **Checkpoints** every ``checkpoint_every`` steps, at ``stop_after``, on SIGTERM/SIGINT (the step in
  flight finishes, a checkpoint is written, exit code 0), on the wall/memory budget and at the end:
  ``params/<name>``, ``opt/<tree path>`` (optax state, by key path: restore flattens a fresh
  ``tx.init`` and fills it by name), ``rng``; ``meta.json`` holds the loader state, config, wall time.
  Each save is pushed to the mirror (``--mirror``). ``--resume`` continues from the more advanced of
  the local latest checkpoint and the mirror's (pulled when ahead); with none it starts fresh. A
  resumed run reproduces the uninterrupted one bit for bit on CPU.
* **Metrics** (``common.MetricsWriter``) every ``log_every`` steps and at the last step of a call:
  ``loss``/``grad_norm`` (pre-clip) of that step, ``lr`` it used, ``samples_per_s`` and ``step_s``
  (wall time per step) over the interval since the previous row, ``data_wait_s`` (seconds blocked
  in ``next(loader)`` during that interval), ``wall_s`` (run time, summed over resumes).
* **Exit codes**: 0 done (or stopped cleanly by a signal/budget, checkpoint written), 1 sanity check
  failed, 2 bad config/data.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rldskit.loaders.jax import data_sharding, device_put_batch
from trainers import common
from trainers.common import ConfigError, TrainConfig

__all__ = ["ConvMLP", "build_model", "new_model", "export_weights", "load_weights", "apply_export", "evaluate",
           "make_optimizer", "train", "sanity_check", "overfit_one_batch", "export", "main"]

FRAMEWORK = "jax"
SANITY_STEPS = common.SANITY_STEPS
SANITY_BATCH = common.SANITY_BATCH
EVIDENCE_EVAL_BATCHES = 64


# =========================================================================== model


class Encoder(nnx.Module):
    """One camera's conv stack: ``conv<i>`` (SAME, stride) + ReLU, flattened HWC."""

    def __init__(self, channels: int, conv: list[Mapping[str, Any]], *, dtype, rngs: nnx.Rngs):
        self.n = len(conv)
        c = channels
        for i, layer in enumerate(conv):
            k, s, f = int(layer["kernel"]), int(layer["stride"]), int(layer["features"])
            setattr(self, f"conv{i}", nnx.Conv(c, f, (k, k), strides=(s, s), padding="SAME", dtype=dtype,
                                               param_dtype=jnp.float32, rngs=rngs))
            c = f

    def __call__(self, x: jax.Array) -> jax.Array:  # (N, h, w, c) -> (N, h' * w' * f)
        for i in range(self.n):
            x = jax.nn.relu(getattr(self, f"conv{i}")(x))
        return x.reshape(x.shape[0], -1)


class ConvMLP(nnx.Module):
    """``conv_mlp`` v1 from an ``architecture`` block (``common.architecture``). Input ``images``
    ``uint8 (B, n_cam, H, h, w, c)``, ``state`` ``float32 (B, H * state_dim)``; output the normalised
    action chunk ``float32 (B, K, A)``."""

    def __init__(self, arch: Mapping[str, Any], *, rngs: nnx.Rngs, dtype=jnp.float32,
                 channels: list[int] | None = None):
        if arch.get("type") != "conv_mlp" or arch.get("version") != 1:
            raise ValueError(f"not a conv_mlp v1 architecture: {arch.get('type')!r} v{arch.get('version')!r}")
        self.dtype = dtype
        self.n_cam, self.history = len(arch["cameras"]), int(arch["history"])
        self.horizon, self.action_dim = int(arch["action_horizon"]), int(arch["action_dim"])
        chans = channels or [int(arch["channels"])] * self.n_cam
        self.encoder = nnx.List([Encoder(chans[c], arch["conv"], dtype=dtype, rngs=rngs) for c in range(self.n_cam)])
        d = self.n_cam * self.history * int(arch["encoder_out"]) + self.history * int(arch["state_dim"])
        layers = []
        for f in arch["mlp"]:
            layers.append(nnx.Linear(d, int(f), dtype=dtype, param_dtype=jnp.float32, rngs=rngs))
            d = int(f)
        self.mlp = nnx.List(layers)
        self.head = nnx.Linear(d, self.horizon * self.action_dim, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, images: jax.Array, state: jax.Array) -> jax.Array:
        b = state.shape[0]
        feats = []
        for c in range(self.n_cam):
            x = images[:, c]                                             # (B, H, h, w, ch)
            x = (x.astype(jnp.float32) / 255.0).astype(self.dtype)
            x = x.reshape(b * x.shape[1], *x.shape[2:])
            feats.append(self.encoder[c](x).reshape(b, -1))             # per frame HWC, frames oldest first
        z = jnp.concatenate(feats + [state.astype(self.dtype)], axis=-1)
        for layer in self.mlp:
            z = jax.nn.relu(layer(z))
        y = self.head(z).astype(jnp.float32)
        return y.reshape(b, self.horizon, self.action_dim)


def _dtype(precision: str):
    return jnp.bfloat16 if precision == "bfloat16" else jnp.float32


def build_model(arch: Mapping[str, Any], *, seed: int = 0, precision: str = "float32",
                channels: list[int] | None = None) -> ConvMLP:
    """A freshly initialised :class:`ConvMLP` (deterministic in ``seed``)."""
    return ConvMLP(arch, rngs=nnx.Rngs(params=seed), dtype=_dtype(precision), channels=channels)


def _io(cfg: TrainConfig) -> common.PolicyIO:
    from rldskit.loaders import StepIndex

    _check_data(cfg)
    return common.policy_io(StepIndex.load(common.dataset_dir(cfg), common.base_split(cfg.train_split)).spec)


def new_model(cfg: TrainConfig, io: common.PolicyIO | None = None) -> ConvMLP:
    """The untrained model a run of ``cfg`` starts from."""
    io = io or _io(cfg)
    return build_model(common.architecture(cfg, io), seed=cfg.seed, precision=cfg.precision,
                       channels=[s[2] for s in io.camera_shapes] or None)


def _path_name(path) -> str:
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(k))
    return ".".join(parts)


def _flat(tree) -> dict[str, Any]:
    return {_path_name(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _fill(template, arrays: Mapping[str, Any], what: str):
    """``template``'s structure with every leaf replaced by ``arrays[<its path name>]``."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for p, leaf in leaves:
        name = _path_name(p)
        if name not in arrays:
            raise ValueError(f"{what}: missing {name!r}")
        v = np.asarray(arrays[name])
        if v.shape == (1,) and np.shape(leaf) == ():  # common.Checkpoints.save stores scalars as (1,)
            v = v.reshape(())                         # (np.ascontiguousarray makes 0-d arrays 1-d)
        if v.shape != np.shape(leaf):
            raise ValueError(f"{what}: {name!r} has shape {v.shape}, the model needs {np.shape(leaf)}")
        out.append(jnp.asarray(v, dtype=jnp.asarray(leaf).dtype))
    extra = set(arrays) - {_path_name(p) for p, _ in leaves}
    if extra:
        raise ValueError(f"{what}: unexpected {sorted(extra)[:5]}")
    return jax.tree_util.tree_unflatten(treedef, out)


def _params(model: ConvMLP):
    return nnx.state(model, nnx.Param).to_pure_dict()


def export_weights(model: ConvMLP) -> dict[str, np.ndarray]:
    """``{export name: float32 array}`` (``encoder.0.conv0.kernel`` HWIO, ``mlp.0.kernel`` (in, out), ...)."""
    return {k: np.asarray(v, dtype=np.float32) for k, v in _flat(jax.device_get(_params(model))).items()}


def load_weights(model: ConvMLP, weights: Mapping[str, np.ndarray]) -> ConvMLP:
    """Set ``model``'s parameters from export-named arrays (names and shapes must match exactly)."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, _fill(state.to_pure_dict(), weights, "weights"))
    nnx.update(model, state)
    return model


@functools.lru_cache(maxsize=16)
def _forward_fn(graphdef):
    return jax.jit(lambda params, images, state: nnx.merge(graphdef, params)(images, state))


def _forward(model: ConvMLP, images, state) -> np.ndarray:
    graphdef, params = nnx.split(model, nnx.Param)
    return np.asarray(_forward_fn(graphdef)(params.to_pure_dict(), images, state))


def _model_from_export(export_dir: str | os.PathLike) -> tuple[ConvMLP, dict[str, Any]]:
    weights, policy = common.read_export(export_dir)
    arch = policy["architecture"]
    cams = policy.get("inputs", {}).get("cameras", {})
    channels = [int(cams[c]["shape"][2]) for c in arch["cameras"]] if all(c in cams for c in arch["cameras"]) else None
    model = build_model(arch, channels=channels or None)
    return load_weights(model, weights), policy


def apply_export(export_dir: str | os.PathLike, images: np.ndarray, state: np.ndarray) -> np.ndarray:
    """The JAX (float32) forward of an export: ``images`` ``uint8 (B, n_cam, H, h, w, c)``, ``state``
    ``(B, H * state_dim)`` -> the *normalised* action chunk ``(B, K, A)``."""
    model, _ = _model_from_export(export_dir)
    return _forward(model, np.asarray(images, np.uint8), np.asarray(state, np.float32))


def evaluate(model_or_export, cfg: TrainConfig, split: str | None = None, *, max_batches: int | None = None) -> float:
    """Masked MSE of the normalised action chunk over ``split`` (default ``cfg.eval_split``), in one
    ordered pass. ``model_or_export``: a :class:`ConvMLP` or an export folder."""
    model = model_or_export if isinstance(model_or_export, ConvMLP) else _model_from_export(model_or_export)[0]
    _check_data(cfg)
    loader = common.make_loader(cfg, split or cfg.eval_split, shuffle=False, num_epochs=1, drop_remainder=False)
    io = common.policy_io(loader.index.spec)
    sse, count = 0.0, 0.0
    with loader:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            a = common.batch_arrays(batch, io)
            y = _forward(model, a["images"], a["state"])
            err = (y.astype(np.float64) - a["actions"]) ** 2 * a["mask"][..., None]
            sse += float(err.sum())
            count += float(a["mask"].sum()) * a["actions"].shape[-1]
    if count == 0:
        raise ValueError(f"{cfg.data}: split {split or cfg.eval_split!r} gave no samples to evaluate")
    return sse / count


# =========================================================================== optimisation


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, schedule)``: global-norm clipping, then AdamW with warmup + cosine decay."""
    warmup = min(cfg.warmup_steps, max(cfg.max_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=cfg.learning_rate,
                                                  warmup_steps=warmup, decay_steps=max(cfg.max_steps, warmup + 1),
                                                  end_value=cfg.learning_rate * 0.1)
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)  # noqa: E731 (kernels only)
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=decay_mask))
    return tx, schedule


def masked_mse(y: jax.Array, actions: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean squared error over the real (unpadded) actions of the chunk."""
    err = jnp.square(y - actions) * mask[..., None]
    return err.sum() / (jnp.maximum(mask.sum(), 1.0) * actions.shape[-1])


def _make_train_step(graphdef, tx, replicated):
    def loss_fn(params, batch):
        y = nnx.merge(graphdef, params)(batch["images"], batch["state"])
        return masked_mse(y, batch["actions"], batch["mask"])

    def step(params, opt_state, rng, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        gnorm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        rng = jax.random.split(rng)[0]  # advanced every step (conv_mlp draws nothing; kept for layers that will)
        return params, opt_state, rng, loss, gnorm

    return jax.jit(step, donate_argnums=(0, 1, 2), out_shardings=replicated)


# =========================================================================== run helpers


def _check_data(cfg: TrainConfig) -> None:
    if not cfg.data:
        raise ConfigError("no dataset: pass --data DATA (an `rldskit convert` version folder) or set 'data'")
    from rldskit import paths

    if paths.is_remote(cfg.data):
        common.dataset_dir(cfg)  # fills or reuses the local copy; a PathError names the URL
        return
    p = Path(cfg.data)
    if not p.is_dir():
        raise FileNotFoundError(f"{cfg.data}: no such dataset folder (expected an `rldskit convert` output "
                                "version folder, e.g. data/<name>/<version>)")
    from rldskit.formats.tfds_dir import EPISODE_INDEX_FILE, DatasetLayout

    if not DatasetLayout(p).has_index and not any(p.glob(f"*/{EPISODE_INDEX_FILE}")):
        raise FileNotFoundError(f"{cfg.data}: not a converted rldskit dataset (no {EPISODE_INDEX_FILE})")


def _checkpoint_arrays(params, opt_state, rng) -> dict[str, np.ndarray]:
    params, opt_state, rng = jax.device_get((params, opt_state, rng))
    arrays = {f"params/{k}": np.asarray(v) for k, v in _flat(params).items()}
    arrays.update({f"opt/{k}": np.asarray(v) for k, v in _flat(opt_state).items()})
    arrays["rng"] = np.asarray(rng)
    return arrays


def _split_arrays(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _resume_point(ckpts: common.Checkpoints, mirror) -> tuple[Path | None, str | None]:
    """The more advanced of the local latest checkpoint and the mirror's (pulled when ahead)."""
    local = ckpts.latest()
    local_step = common.Checkpoints.step_of(local) if local else -1
    remote_step = mirror.latest_step() if mirror is not None else None
    if remote_step is not None and remote_step > local_step:
        ckpts.root.mkdir(parents=True, exist_ok=True)
        tmp = ckpts.root / f".pull-{os.getpid()}"
        dest = ckpts.root / f"{common.Checkpoints.PREFIX}{remote_step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        mirror.pull(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        return dest, "mirror"
    return (local, "local") if local else (None, None)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[jax_bc] {msg}", flush=True)


# =========================================================================== training


def train(cfg: TrainConfig, *, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
    """Train ``cfg`` (``resume``: continue from the latest local/mirrored checkpoint; ``stop_after``:
    checkpoint and stop at that absolute step). Returns a summary: ``step``, ``finished``, ``stopped``
    (``"done"``, ``"stop_after"``, ``"preempted"``, ``"wall_budget"``, ``"memory_budget"``), ``loss``
    (the last step's), ``losses`` (every step this call ran), ``resumed_from``, ``resume_source``,
    ``out``, ``checkpoint``, ``export``, ``metrics``, ``devices``, ``steps_per_s``."""
    return _run(cfg, resume=resume, stop_after=stop_after)[0]


def _run(cfg: TrainConfig, *, resume: bool = False, stop_after: int | None = None, save: bool = True,
         do_export: bool = True, metrics_dir: str | os.PathLike | None = None,
         quiet: bool = False) -> tuple[dict[str, Any], ConvMLP, Any]:
    cfg.validate()
    _check_data(cfg)
    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    which, why = common.select_trainer()
    _log(f"trainer selection: {which} ({why}); running the JAX trainer", quiet)
    _log(f"config: {json.dumps(common.config_to_dict(cfg), sort_keys=True)}", quiet)
    if save:
        common.atomic_write_json(out / "config.json", common.config_to_dict(cfg))

    devices = jax.devices()
    if cfg.batch_size % len(devices):
        raise ConfigError(f"batch_size {cfg.batch_size} does not divide over {len(devices)} devices")
    sharding = data_sharding(devices)
    replicated = NamedSharding(sharding.mesh, PartitionSpec())

    loader = common.make_loader(cfg)
    io = common.policy_io(loader.index.spec)
    model = new_model(cfg, io)
    graphdef, state = nnx.split(model, nnx.Param)
    params = state.to_pure_dict()
    tx, schedule = make_optimizer(cfg)
    opt_state = tx.init(params)
    rng = jax.random.key_data(jax.random.key(cfg.seed))
    step, wall_before = 0, 0.0

    ckpts = common.Checkpoints(out, keep=cfg.keep_checkpoints)
    mirror = common.open_mirror(cfg.mirror) if save else None
    resumed_from, source = None, None
    if resume:
        path, source = _resume_point(ckpts, mirror)
        if path is None:
            _log(f"--resume: no checkpoint in {out} or the mirror; starting from step 0", quiet)
        else:
            arrays, meta = common.Checkpoints.load(path)
            params = _fill(params, _split_arrays(arrays, "params/"), f"{path}: params")
            opt_state = _fill(opt_state, _split_arrays(arrays, "opt/"), f"{path}: optimiser state")
            rng = jnp.asarray(arrays["rng"])
            loader.set_state(meta["loader"])
            step, wall_before = int(meta["step"]), float(meta.get("wall_s", 0.0))
            resumed_from = step
            _log(f"resumed from step {step} ({source} checkpoint {path})", quiet)
    elif save and ckpts.latest() is not None:
        raise ConfigError(f"{out} already holds checkpoints (latest step {common.Checkpoints.step_of(ckpts.latest())}); "
                          "pass --resume to continue it or choose another --out")

    params, opt_state, rng = jax.device_put((params, opt_state, rng), replicated)
    train_step = _make_train_step(graphdef, tx, replicated)
    metrics = common.MetricsWriter(metrics_dir or out, resume_step=step)
    target = cfg.max_steps if stop_after is None else min(cfg.max_steps, int(stop_after))
    losses: list[float] = []
    pending: list[tuple[int, Any, Any]] = []
    interval = {"t": time.perf_counter(), "wait": 0.0, "steps": 0}
    last_ckpt: Path | None = None
    saved_step = step if resumed_from is not None else None
    stopped = None

    def log_row() -> None:
        nonlocal pending
        if not pending:
            return
        vals = jax.device_get([(loss, gnorm) for _, loss, gnorm in pending])
        losses.extend(float(v[0]) for v in vals)
        s, (loss, gnorm) = pending[-1][0], vals[-1]
        now = time.perf_counter()
        dt = max(now - interval["t"], 1e-9)
        n = interval["steps"]
        metrics.write({"step": s, "loss": float(loss), "grad_norm": float(gnorm), "lr": float(schedule(s - 1)),
                       "samples_per_s": n * cfg.batch_size / dt, "data_wait_s": interval["wait"], "step_s": dt / n,
                       "wall_s": wall_before + now - t_start})
        _log(f"step {s}: loss {float(loss):.5f} grad_norm {float(gnorm):.4f} {n * cfg.batch_size / dt:.0f} samples/s",
             quiet)
        pending = []
        interval.update(t=now, wait=0.0, steps=0)

    def checkpoint() -> Path:
        nonlocal last_ckpt, saved_step
        log_row()
        meta = {"framework": FRAMEWORK, "loader": loader.get_state(), "config": common.config_to_dict(cfg),
                "wall_s": wall_before + time.perf_counter() - t_start, "devices": len(devices),
                "opt_names": sorted(_flat(opt_state))}
        last_ckpt = ckpts.save(step, _checkpoint_arrays(params, opt_state, rng), meta)
        saved_step = step
        if mirror is not None:
            mirror.push(last_ckpt)
        _log(f"checkpoint {last_ckpt}", quiet)
        return last_ckpt

    t_loop = time.perf_counter()
    first_step = step
    try:
        with common.PreemptionGuard() as guard:
            while step < target:
                t0 = time.perf_counter()
                batch = next(loader)
                interval["wait"] += time.perf_counter() - t0
                dev = device_put_batch(common.batch_arrays(batch, io), sharding)
                params, opt_state, rng, loss, gnorm = train_step(params, opt_state, rng, dev)
                step += 1
                interval["steps"] += 1
                pending.append((step, loss, gnorm))
                if step % cfg.log_every == 0:
                    log_row()
                    if cfg.max_memory_mb is not None and _rss_mb() > cfg.max_memory_mb:
                        stopped = "memory_budget"
                if save and step % cfg.checkpoint_every == 0:
                    checkpoint()
                if guard.requested is not None:
                    stopped = "preempted"
                elif cfg.max_wall_seconds is not None and wall_before + time.perf_counter() - t_start > cfg.max_wall_seconds:
                    stopped = "wall_budget"
                if stopped:
                    _log(f"stopping at step {step}: {stopped}", quiet)
                    break
            log_row()
            if save and saved_step != step:
                checkpoint()
        steps_per_s = (step - first_step) / max(time.perf_counter() - t_loop, 1e-9)
        finished = step >= cfg.max_steps
        stopped = stopped or ("done" if finished else "stop_after")
        model = nnx.merge(graphdef, jax.device_get(params))
        export_path = None
        if finished and do_export:
            export_path = _write_export(cfg, io, loader.normalizer, model, step, quiet=quiet)
    finally:
        metrics.close()
        loader.close()
        if mirror is not None:
            mirror.wait()
    summary = {"step": step, "max_steps": cfg.max_steps, "finished": finished, "stopped": stopped,
               "loss": losses[-1] if losses else None, "losses": losses, "resumed_from": resumed_from,
               "resume_source": source if resumed_from is not None else None, "out": str(out),
               "checkpoint": str(last_ckpt) if last_ckpt else None,
               "export": str(export_path) if export_path else None, "metrics": str(metrics.jsonl),
               "devices": len(devices), "steps_per_s": steps_per_s, "trainer_selection": [which, why]}
    return summary, model, io


def _write_export(cfg: TrainConfig, io: common.PolicyIO, normalizer, model: ConvMLP, step: int, *,
                  evidence: Mapping[str, Any] | None = None, quiet: bool = False) -> Path:
    if evidence is None:
        evidence = {}
        proof = Path(cfg.out) / "proof_of_learning.json"
        if proof.is_file():
            evidence["proof_of_learning"] = json.loads(proof.read_text())
        try:
            init = evaluate(new_model(cfg, io), cfg, max_batches=EVIDENCE_EVAL_BATCHES)
            final = evaluate(model, cfg, max_batches=EVIDENCE_EVAL_BATCHES)
            evidence.update({"eval_split": cfg.eval_split, "eval_mse": final, "init_eval_mse": init,
                             "eval_ratio": final / init if init else None})
        except ValueError as e:  # an eval split that selects nothing
            evidence["eval_error"] = str(e)
    doc = common.policy_document(cfg, io, normalizer, framework=FRAMEWORK, step=step,
                                 dataset=common.dataset_record(cfg, io.spec_id), evidence=evidence)
    path = common.write_export(Path(cfg.out) / "export", export_weights(model), doc)
    _log(f"export {path}", quiet)
    return path


def export(cfg: TrainConfig, checkpoint: str | os.PathLike | None = None) -> Path:
    """Write ``<out>/export/`` from ``checkpoint`` (default: the run's latest)."""
    _check_data(cfg)
    path = Path(checkpoint) if checkpoint else common.Checkpoints(cfg.out).latest()
    if path is None:
        raise FileNotFoundError(f"{cfg.out}: no checkpoint to export")
    arrays, meta = common.Checkpoints.load(path)
    io = _io(cfg)
    model = load_weights(new_model(cfg, io), _split_arrays(arrays, "params/"))
    loader = common.make_loader(cfg)
    try:
        return _write_export(cfg, io, loader.normalizer, model, int(meta["step"]))
    finally:
        loader.close()


# =========================================================================== sanity check


def overfit_one_batch(cfg: TrainConfig, io: common.PolicyIO, arrays: Mapping[str, np.ndarray], *,
                      tx: optax.GradientTransformation | None = None) -> tuple[dict[str, Any], ConvMLP]:
    """Fit ``cfg``'s fresh model to the one batch ``arrays`` (:func:`common.batch_arrays`) with the
    trainer's own jitted train step and ``tx`` (default :func:`make_optimizer` of ``cfg``) for
    ``cfg.max_steps`` steps, then judge it (:func:`common.sanity_proof`): inputs checked first
    (:func:`common.check_batch`; nothing runs when they fail), every loss and gradient norm
    finite, the loss on the batch down to ``SANITY_RATIO`` of its start, output ``(B, K, A)``,
    every parameter tensor moved (:func:`common.param_update`). Returns ``(proof, model)``."""
    inputs, input_failures = common.check_batch(arrays, cfg, io)
    model = new_model(cfg, io)
    init = export_weights(model)
    losses: list[float] = []
    gnorms: list[float] = []
    final_loss = out_shape = None
    out_finite, update, update_failures = False, None, []
    if not input_failures:
        devices = jax.devices()
        sharding = data_sharding(devices)
        replicated = NamedSharding(sharding.mesh, PartitionSpec())
        graphdef, state = nnx.split(model, nnx.Param)
        params = state.to_pure_dict()
        tx = tx if tx is not None else make_optimizer(cfg)[0]
        opt_state = tx.init(params)
        rng = jax.random.key_data(jax.random.key(cfg.seed))
        params, opt_state, rng = jax.device_put((params, opt_state, rng), replicated)
        train_step = _make_train_step(graphdef, tx, replicated)
        batch = device_put_batch(dict(arrays), sharding)
        for _ in range(cfg.max_steps):
            params, opt_state, rng, loss, gnorm = train_step(params, opt_state, rng, batch)
            losses.append(float(loss))
            gnorms.append(float(gnorm))
            if not (np.isfinite(losses[-1]) and np.isfinite(gnorms[-1])):
                break
        model = nnx.merge(graphdef, jax.device_get(params))
        y = _forward(model, arrays["images"], arrays["state"]).astype(np.float64)
        out_shape, out_finite = list(y.shape), bool(np.all(np.isfinite(y)))
        if out_shape == list(arrays["actions"].shape):
            err = (y - arrays["actions"]) ** 2 * arrays["mask"][..., None]
            final_loss = float(err.sum() / (max(float(arrays["mask"].sum()), 1.0) * arrays["actions"].shape[-1]))
        update, update_failures = common.param_update(init, export_weights(model))
    proof = common.sanity_proof(framework=FRAMEWORK, cfg=cfg, io=io, inputs=inputs, input_failures=input_failures,
                                losses=losses, grad_norms=gnorms, final_loss=final_loss, output_shape=out_shape,
                                output_finite=out_finite, update=update, update_failures=update_failures,
                                extra={"devices": len(jax.devices())})
    return proof, model


def sanity_check(cfg: TrainConfig, *, tx: optax.GradientTransformation | None = None) -> dict[str, Any]:
    """Overfit one batch (Karpathy's check): the first batch (``min(batch_size, SANITY_BATCH)``
    windows, the same for a seed) of the run's loader, a fresh model of ``cfg``, the run's
    optimiser (``tx``, default :func:`make_optimizer` with the schedule fitted to the check:
    :func:`common.sanity_config`) for ``SANITY_STEPS`` steps; the loss on that same batch must
    fall to ``SANITY_RATIO`` (10%) of its initial value. Shapes and finiteness of inputs, loss,
    gradient norm, outputs and parameters are checked, and the per-tensor parameter change
    recorded. See :func:`overfit_one_batch`.

    What it detects: a model, optimiser or data plumbing that cannot learn (a learning rate too
    small, parameters that do not update, a loss without real actions, NaN/inf anywhere,
    mis-shaped inputs or outputs). What it does not: whether the actions are predictable from the
    observations -- a batch of pure-noise actions is memorised too (``common.SANITY_SCOPE``).
    Deterministic for ``cfg.seed`` on CPU.

    Writes ``<out>/proof_of_learning.json`` and, when it passes, ``<out>/export`` (weights of the
    overfit model, the proof as evidence: a plumbing check, not a policy to ship). Returns the
    proof (``passed``, ``failures``, ``loss_initial``, ``loss_final``, ``loss_ratio``, ...)."""
    scfg = common.sanity_config(cfg, len(jax.devices()))
    _check_data(scfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    io = _io(scfg)
    arrays, normalizer = common.sanity_batch(scfg, io)
    proof, model = overfit_one_batch(scfg, io, arrays, tx=tx)
    common.atomic_write_json(out / "proof_of_learning.json", proof)
    if proof["passed"]:
        _write_export(scfg, io, normalizer, model, proof["steps"], evidence={"proof_of_learning": proof}, quiet=True)
    return proof


# =========================================================================== CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainers.jax_bc", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="dataset version folder (rldskit convert output)")
    p.add_argument("--preset", choices=sorted(common.PRESETS), help="size preset (default: the config's, else dev)")
    p.add_argument("--config", help="JSON config file (keys of TrainConfig)")
    p.add_argument("--max-steps", type=int, dest="max_steps")
    p.add_argument("--out", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the latest local or mirrored checkpoint")
    p.add_argument("--sanity-check", action="store_true", dest="sanity_check",
                   help="overfit one batch: the loss on it must fall to 10%% in 400 steps; writes "
                        "<out>/proof_of_learning.json")
    p.add_argument("--export", action="store_true", help="write <out>/export from the latest checkpoint and exit")
    p.add_argument("--mirror", help="a folder or hf://user/repo that receives every checkpoint")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int, dest="batch_size")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("data", "max_steps", "out", "mirror", "seed", "batch_size")}
    try:
        cfg = common.load_config(args.config, args.preset, overrides)
        _check_data(cfg)
        if args.sanity_check:
            proof = sanity_check(cfg)
            if not proof["passed"]:
                print("sanity check FAILED: " + "; ".join(proof["failures"]), file=sys.stderr)
                return 1
            print(f"sanity check passed: overfit one batch of {proof['batch_size']}: loss {proof['loss_initial']:.4g} -> "
                  f"{proof['loss_final']:.4g} ({100 * proof['loss_ratio']:.1f}% of the initial value, needs <= "
                  f"{100 * proof['required_ratio']:.0f}%) in {proof['steps']} steps; proof in "
                  f"{Path(cfg.out) / 'proof_of_learning.json'}")
            return 0
        if args.export:
            print(f"export {export(cfg)}")
            return 0
        summary = train(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
