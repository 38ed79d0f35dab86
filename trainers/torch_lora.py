"""Slim single-file torch trainer: LoRA fine-tuning (peft) of a ``conv_mlp`` v1 policy, or full
training of a fresh one, on an rldskit windows loader. CPU-first (a laptop, a Pi 5, a small VM).

::

    python -m trainers.torch_lora --config trainers/configs/pi5-donkey.json --base runs/bc1/export --out runs/lora1
    python -m trainers.torch_lora --config ... --out runs/bc0 --full             # a base with torch alone
    python -m trainers.torch_lora --config ... --base ... --out ... --resume      # after a preemption
    python -m trainers.torch_lora --config ... --base ... --out ... --use-stub-hooks   # dry run of the wiring
    python -m trainers.torch_lora --config ... --base ... --out ... --sanity-check     # overfit one batch

**Model.** :class:`ConvMLPPolicy` is the ``conv_mlp`` v1 forward of ``trainers/common.py`` (per-camera
conv encoders with TensorFlow ``SAME`` padding done by ``F.pad``, NHWC flattening, MLP, head). Layout
conversions to the export: conv ``HWIO`` <-> torch ``OIHW``, dense ``(in, out)`` <-> ``nn.Linear``
``(out, in)``. Export tensor names use the camera's position in ``cameras`` as ``<c>``
(``encoder.0.conv0.kernel``), as ``trainers/jax_bc.py`` does.

**LoRA.** peft ``LoraConfig(r, lora_alpha, lora_dropout, target_modules=[mlp.<i>, head])`` injected
with ``inject_adapter_in_model``: the MLP and head ``nn.Linear`` layers get adapters, every base
weight (conv encoders included) is frozen, AdamW updates the adapters only (linear warmup, then
cosine to lr/10 at ``max_steps`` as jax_bc does, via ``LambdaLR``; gradient clipping). ``--full`` (or
no ``--base``) trains every weight without LoRA (from the base's weights when one is given).
torch runs on ``RLDSKIT_TORCH_THREADS`` intra-op threads (default 1, see :func:`_torch_threads`).

**Bounded jobs.** A run stops cleanly, with a checkpoint and its reason in the summary and in
``<out>/report.json``, at ``max_steps`` (``finished``), ``max_wall_seconds``, ``max_memory_mb``
(resident set size from ``/proc/self/statm``), when the ``gate`` hook says no (checked before
starting and every ``log_every`` steps), on SIGTERM/SIGINT (``PreemptionGuard``), or after
``stop_after`` steps (tests). Checkpoints (``common.Checkpoints``) hold the trainable weights, the
AdamW moments, the scheduler, the step, the loader state and torch's RNG; ``resume`` continues the
most advanced of the local and mirrored checkpoint and reproduces the uninterrupted run bit for bit
on CPU (deterministic algorithms, a loader that restarts at exactly the next batch).

**Adapter slots** under ``<out>/adapters/``: a finished LoRA run writes ``candidate/``
(``adapter_model.safetensors``: peft's adapter state dict, and ``adapter.json``: base path and
sha256, LoRA settings, normalisation, step) atomically; :func:`promote` compares the candidate with
``current/`` (or, when there is none, the base) on the held-out episodes and, if it is no worse,
moves ``current`` to ``history/<time>-step<N>/`` (the newest ``keep_history`` kept) and the
candidate to ``current``; ``promotion_report.json`` records the decision and every figure.

**Export.** ``<out>/export/`` is the common export format with the LoRA deltas merged into the base
weights (``W + B @ A * scale``, peft's ``get_delta_weight``), runnable with numpy by the edge runtime.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainers import common
from trainers.common import Checkpoints, ConfigError, MetricsWriter, PreemptionGuard, TrainConfig

__all__ = ["ConvMLPPolicy", "policy_from_export", "export_weights", "load_export_weights", "apply_export",
           "check_architecture", "add_lora", "lora_target_modules", "evaluate", "action_metrics", "train",
           "dry_run", "sanity_check", "overfit_one_batch", "promote", "load_adapter", "write_candidate", "main", "ADAPTER_WEIGHTS", "ADAPTER_JSON"]

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_JSON = "adapter.json"
ADAPTER_FORMAT = "rldskit-lora-adapter"
ADAPTER_NAME = "default"
#: architecture fields a base export must share with the config (and the dataset)
ARCH_FIELDS = ("type", "version", "cameras", "image_size", "channels", "history", "conv", "activation", "pool",
               "encoder_out", "state_keys", "state_dim", "mlp", "action_horizon", "action_dim")

Gate = Callable[[], "tuple[bool, str]"]


# =========================================================================== model


class ConvMLPPolicy(nn.Module):
    """``conv_mlp`` v1 (``trainers/common.py``) from an ``architecture`` block. ``forward(images,
    state)``: ``images`` ``uint8 (B, n_cam, H, h, w, c)``, ``state`` ``float32 (B, H * S)`` ->
    the normalised action chunk ``(B, K, A)``."""

    def __init__(self, arch: Mapping[str, Any]):
        super().__init__()
        if arch.get("type") != "conv_mlp" or arch.get("version") != 1:
            raise ValueError(f"architecture is {arch.get('type')!r} v{arch.get('version')}; this trainer runs conv_mlp v1")
        self.arch = json.loads(json.dumps(dict(arch)))  # a plain copy
        self.cameras = list(arch["cameras"])
        self.image_size = tuple(int(x) for x in arch["image_size"])
        self.channels, self.history = int(arch["channels"]), int(arch["history"])
        self.state_dim = int(arch["state_dim"])
        self.horizon, self.action_dim = int(arch["action_horizon"]), int(arch["action_dim"])
        self.pads: list[tuple[int, int, int, int]] = []  # F.pad order: (left, right, top, bottom)
        convs = []
        h, w = self.image_size
        cin = self.channels
        for layer in arch["conv"]:
            if layer.get("padding", "SAME") != "SAME":
                raise ValueError(f"conv padding {layer.get('padding')!r} is not supported (SAME only)")
            k, s, f = int(layer["kernel"]), int(layer["stride"]), int(layer["features"])
            (t, b), (le, r) = common.same_padding(h, k, s), common.same_padding(w, k, s)
            self.pads.append((le, r, t, b))
            convs.append((cin, f, k, s))
            h, w, cin = common.conv_out_size(h, s), common.conv_out_size(w, s), f
        self.encoder_out = h * w * cin
        if "encoder_out" in arch and int(arch["encoder_out"]) != self.encoder_out:
            raise ValueError(f"architecture encoder_out is {arch['encoder_out']}, its conv layers give {self.encoder_out}")
        self.encoders = nn.ModuleList(
            nn.ModuleList(nn.Conv2d(ci, co, k, stride=s, padding=0) for ci, co, k, s in convs) for _ in self.cameras)
        width = len(self.cameras) * self.history * self.encoder_out + self.history * self.state_dim
        self.mlp = nn.ModuleList()
        for f in arch["mlp"]:
            self.mlp.append(nn.Linear(width, int(f)))
            width = int(f)
        self.head = nn.Linear(width, self.horizon * self.action_dim)

    def forward(self, images: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        b = state.shape[0]
        feats = []
        for ci, enc in enumerate(self.encoders):
            x = images[:, ci]                                            # (B, H, h, w, c) uint8
            x = x.reshape(b * self.history, *x.shape[2:]).to(torch.float32) / 255.0
            x = x.permute(0, 3, 1, 2)                                    # NHWC -> NCHW
            for conv, pad in zip(enc, self.pads):
                x = F.relu(conv(F.pad(x, pad)))
            x = x.permute(0, 2, 3, 1).reshape(b, self.history * self.encoder_out)  # HWC flatten, frames in order
            feats.append(x)
        z = torch.cat([*feats, state.to(torch.float32).reshape(b, -1)], dim=-1)
        for layer in self.mlp:
            z = F.relu(layer(z))
        return self.head(z).reshape(b, self.horizon, self.action_dim)


def _linear_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight (out, in), bias)`` of a plain or LoRA-wrapped linear layer, adapters merged in."""
    from peft.tuners.lora import LoraLayer

    if isinstance(layer, LoraLayer):
        base = layer.get_base_layer()
        w = base.weight.detach().clone()
        if not layer.merged:
            for name in layer.active_adapters:
                if name in layer.lora_A:
                    w = w + layer.get_delta_weight(name).detach()
        return w, None if base.bias is None else base.bias.detach()
    return layer.weight.detach(), None if layer.bias is None else layer.bias.detach()


def _export_names(model: ConvMLPPolicy) -> dict[str, tuple[int, ...]]:
    """Export tensor name -> shape, for every weight of ``model``."""
    out: dict[str, tuple[int, ...]] = {}
    for c, enc in enumerate(model.encoders):
        for i, conv in enumerate(enc):
            o, ci, kh, kw = conv.weight.shape
            out[f"encoder.{c}.conv{i}.kernel"], out[f"encoder.{c}.conv{i}.bias"] = (kh, kw, ci, o), (o,)
    for i, layer in enumerate(model.mlp):
        w, _ = _linear_weight(layer)
        out[f"mlp.{i}.kernel"], out[f"mlp.{i}.bias"] = (w.shape[1], w.shape[0]), (w.shape[0],)
    w, _ = _linear_weight(model.head)
    out["head.kernel"], out["head.bias"] = (w.shape[1], w.shape[0]), (w.shape[0],)
    return out


def export_weights(model: ConvMLPPolicy) -> dict[str, np.ndarray]:
    """The export's float32 tensors (``encoder.<c>.conv<i>.kernel/.bias`` HWIO with ``<c>`` the
    camera's index, ``mlp.<i>.kernel/.bias``
    and ``head.kernel/.bias`` ``(in, out)``), LoRA adapters merged into the base weights."""
    out: dict[str, np.ndarray] = {}

    def put(name: str, t: torch.Tensor) -> None:
        out[name] = np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())

    for c, enc in enumerate(model.encoders):
        for i, conv in enumerate(enc):
            put(f"encoder.{c}.conv{i}.kernel", conv.weight.permute(2, 3, 1, 0))   # OIHW -> HWIO
            put(f"encoder.{c}.conv{i}.bias", conv.bias)
    for i, layer in enumerate(model.mlp):
        w, b = _linear_weight(layer)
        put(f"mlp.{i}.kernel", w.t())
        put(f"mlp.{i}.bias", b)
    w, b = _linear_weight(model.head)
    put("head.kernel", w.t())
    put("head.bias", b)
    return out


def load_export_weights(model: ConvMLPPolicy, weights: Mapping[str, np.ndarray], source: str = "weights") -> None:
    """Copy export tensors into a plain (not LoRA-wrapped) ``model``; a missing, extra or misshapen
    tensor raises ``ValueError`` naming it."""
    want = _export_names(model)
    missing = [k for k in want if k not in weights]
    extra = [k for k in weights if k not in want]
    if missing or extra:
        raise ValueError(f"{source}: tensors do not match the architecture"
                         + (f"; missing {missing}" if missing else "") + (f"; unexpected {extra}" if extra else ""))
    for k, shape in want.items():
        if tuple(weights[k].shape) != shape:
            raise ValueError(f"{source}: tensor {k} has shape {list(weights[k].shape)}, the architecture needs {list(shape)}")

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.array(weights[name], dtype=np.float32))

    with torch.no_grad():
        for c, enc in enumerate(model.encoders):
            for i, conv in enumerate(enc):
                conv.weight.copy_(t(f"encoder.{c}.conv{i}.kernel").permute(3, 2, 0, 1))   # HWIO -> OIHW
                conv.bias.copy_(t(f"encoder.{c}.conv{i}.bias"))
        for i, layer in enumerate(model.mlp):
            layer.weight.copy_(t(f"mlp.{i}.kernel").t())
            layer.bias.copy_(t(f"mlp.{i}.bias"))
        model.head.weight.copy_(t("head.kernel").t())
        model.head.bias.copy_(t("head.bias"))


def policy_from_export(export_dir: str | os.PathLike) -> tuple[ConvMLPPolicy, dict[str, Any]]:
    """``(model, policy_json)`` of an export folder; ``ValueError`` naming the file on anything wrong."""
    p = Path(export_dir)
    if not p.is_dir():
        raise ValueError(f"{p}: no such export folder")
    weights, policy = common.read_export(p)
    arch = policy.get("architecture")
    if not isinstance(arch, dict):
        raise ValueError(f"{p / common.EXPORT_POLICY}: no architecture block")
    try:
        model = ConvMLPPolicy(arch)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{p / common.EXPORT_POLICY}: unusable architecture: {e!r}") from None
    load_export_weights(model, weights, str(p / common.EXPORT_WEIGHTS))
    model.eval()
    return model, policy


def apply_export(export_dir: str | os.PathLike, images: np.ndarray, state: np.ndarray) -> np.ndarray:
    """The torch forward of an export: ``images`` ``uint8 (B, n_cam, H, h, w, c)``, ``state``
    ``(B, H * S)`` -> the normalised action chunk ``float32 (B, K, A)``."""
    model, _ = policy_from_export(export_dir)
    with torch.no_grad():
        y = model(torch.from_numpy(np.ascontiguousarray(images)),
                  torch.from_numpy(np.ascontiguousarray(state, dtype=np.float32)))
    return y.numpy()


def check_architecture(arch: Mapping[str, Any], expected: Mapping[str, Any], source: str) -> None:
    """``ValueError`` naming the first field where ``arch`` (a base's) differs from ``expected``."""
    for f in ARCH_FIELDS:
        if f in expected and json.dumps(arch.get(f), sort_keys=True) != json.dumps(expected[f], sort_keys=True):
            raise ValueError(f"{source}: architecture mismatch in {f!r}: the base has {arch.get(f)!r}, "
                             f"the config and dataset need {expected[f]!r}")


def lora_target_modules(model: ConvMLPPolicy) -> list[str]:
    return [f"mlp.{i}" for i in range(len(model.mlp))] + ["head"]


def add_lora(model: ConvMLPPolicy, rank: int, alpha: float, dropout: float) -> ConvMLPPolicy:
    """Inject peft LoRA adapters into the MLP and head and freeze everything else."""
    from peft import LoraConfig, inject_adapter_in_model

    cfg = LoraConfig(r=int(rank), lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_target_modules(model))
    model = inject_adapter_in_model(cfg, model, adapter_name=ADAPTER_NAME)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# =========================================================================== data, evaluation


def _io_and_arch(cfg: TrainConfig) -> tuple[common.PolicyIO, dict[str, Any]]:
    from rldskit.loaders import StepIndex

    if not cfg.data:
        raise ConfigError("config: no dataset (set 'data' or pass --data)")
    index = StepIndex.load(common.dataset_dir(cfg), common.base_split(cfg.train_split))
    io = common.policy_io(index.spec)
    return io, common.architecture(cfg, io)


def _tensors(arrays: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in ("images", "state", "actions", "mask"))


def _masked_mse(pred: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    err = ((pred - actions) ** 2).mean(-1) * mask
    return err.sum() / mask.sum().clamp_min(1.0)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, sched, params: list[torch.Tensor],
                batch: tuple[torch.Tensor, ...], grad_clip: float, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on ``batch`` (``images, state, actions, mask``): forward (bf16 autocast
    when ``amp``), masked MSE, backward, clip the global gradient norm of ``params`` to
    ``grad_clip``, AdamW and scheduler steps. Returns ``(loss, pre-clip grad norm)`` before the update."""
    images, state, actions, mask = batch
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        pred = model(images, state)
    loss = _masked_mse(pred.float(), actions, mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()
    return loss, gnorm


def _eval_loader(cfg: TrainConfig, split: str | None):
    return common.make_loader(cfg, split or cfg.eval_split, shuffle=False, num_epochs=1, drop_remainder=False,
                              batch_size=64)


def _predict(model: nn.Module, cfg: TrainConfig, split: str | None) -> dict[str, np.ndarray]:
    """Predictions and recorded actions (both normalised) and masks over the episodes of ``split``."""
    loader = _eval_loader(cfg, split)
    io = common.policy_io(loader.index.spec)
    preds, acts, masks = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                a = common.batch_arrays(batch, io)
                images, state, actions, mask = _tensors(a)
                preds.append(model(images, state).numpy())
                acts.append(a["actions"].copy())
                masks.append(a["mask"].copy())
    finally:
        loader.close()
        model.train(was_training)
    return {"pred": np.concatenate(preds), "actions": np.concatenate(acts), "mask": np.concatenate(masks),
            "normalizer": loader.normalizer, "io": io}


def evaluate(model: nn.Module, cfg: TrainConfig, split: str | None = None) -> float:
    """Masked mean squared error of the normalised action chunks on ``split`` (default ``eval_split``)."""
    r = _predict(model, cfg, split)
    err = ((r["pred"] - r["actions"]) ** 2).mean(-1)
    return float((err * r["mask"]).sum() / max(r["mask"].sum(), 1.0))


def _unnormalize(y: np.ndarray, normalization: Mapping[str, Any] | None, key: str) -> np.ndarray:
    feats = (normalization or {}).get("features") or {}
    if key not in feats:
        return y.astype(np.float64)
    shift = np.asarray(feats[key]["shift"], np.float64).reshape(-1)
    scale = np.asarray(feats[key]["scale"], np.float64).reshape(-1)
    return y.astype(np.float64) * scale + shift


def action_metrics(model: nn.Module, normalization: Mapping[str, Any] | None, cfg: TrainConfig,
                   split: str | None = None, *, max_delta: float = 0.5, bounds_tol: float = 0.0) -> dict[str, Any]:
    """The promotion figures of ``model`` on ``split``: ``distance`` (mean Euclidean distance of the
    unnormalised predicted actions to the recorded ones, masked), ``violations`` (predicted action
    elements outside the action's bounds by more than ``bounds_tol`` times the bound's width, all
    chunk positions),
    ``violation_rate`` and ``max_overshoot`` (the largest distance beyond a bound), ``max_delta``
    (largest change of one action element between consecutive actions of a chunk) and
    ``max_delta_ok`` against the limit; ``mse`` is the masked normalised MSE. ``normalization``:
    the model's own (policy.json's) normalisation, to unnormalise its outputs."""
    r = _predict(model, cfg, split)
    io: common.PolicyIO = r["io"]
    pred = _unnormalize(r["pred"], normalization, io.action_key)
    rec = r["normalizer"].unnormalize(io.action_key, r["actions"].astype(np.float64)) if r["normalizer"] else r["actions"]
    mask = r["mask"]
    dist = np.linalg.norm(pred - rec, axis=-1)
    n_mask = max(float(mask.sum()), 1.0)
    if io.action_bounds:
        lo = np.array([b[0] for b in io.action_bounds])
        hi = np.array([b[1] for b in io.action_bounds])
        over = np.maximum(lo - pred, pred - hi)
        violations = int((over > bounds_tol * (hi - lo)).sum())
        overshoot = float(max(over.max(), 0.0))
    else:
        violations, overshoot = 0, 0.0
    deltas = np.abs(np.diff(pred, axis=1)) if pred.shape[1] > 1 else np.zeros((1,))
    md = float(deltas.max()) if deltas.size else 0.0
    mse = float((((r["pred"] - r["actions"]) ** 2).mean(-1) * mask).sum() / n_mask)
    return {"distance": float((dist * mask).sum() / n_mask), "violations": violations,
            "violation_rate": violations / pred.size, "elements": int(pred.size), "max_overshoot": overshoot,
            "bounds_tol": float(bounds_tol), "max_delta": md,
            "max_delta_limit": float(max_delta), "max_delta_ok": md <= max_delta, "mse": mse,
            "samples": int(pred.shape[0]), "bounds": [list(b) for b in io.action_bounds] if io.action_bounds else None}


# =========================================================================== budgets


def rss_mb() -> float:
    """This process's resident set size in MiB (``/proc/self/statm``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024 if sys.platform != "darwin" else kb / 2**20


class _Stops:
    """Why a run should stop now (``None`` to go on): budgets every step, the gate every
    ``log_every`` steps, preemption, and the test hook ``stop_after``."""

    def __init__(self, cfg: TrainConfig, guard: PreemptionGuard, gate: Gate | None, start_step: int,
                 stop_after: int | None, t0: float):
        self.cfg, self.guard, self.gate, self.start, self.stop_after, self.t0 = cfg, guard, gate, start_step, stop_after, t0
        self.peak_rss = 0.0

    def ask_gate(self) -> str | None:
        if self.gate is None:
            return None
        ok, why = self.gate()
        return None if ok else f"gate: {why}"

    def check(self, step: int) -> str | None:
        if self.guard.requested is not None:
            return f"preempted (signal {int(self.guard.requested)})"
        if self.stop_after is not None and step - self.start >= self.stop_after:
            return f"stop_after ({self.stop_after} steps)"
        if self.cfg.max_wall_seconds is not None and time.monotonic() - self.t0 >= self.cfg.max_wall_seconds:
            return f"max_wall_seconds ({self.cfg.max_wall_seconds:g} s)"
        rss = rss_mb()
        self.peak_rss = max(self.peak_rss, rss)
        if self.cfg.max_memory_mb is not None and rss > self.cfg.max_memory_mb:
            return f"max_memory_mb (RSS {rss:.0f} MiB > {self.cfg.max_memory_mb:g} MiB)"
        if step != self.start and step % self.cfg.log_every == 0:
            return self.ask_gate()
        return None


# =========================================================================== checkpoints


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    warm, total = max(0, cfg.warmup_steps), max(1, cfg.max_steps)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def _state_arrays(model: nn.Module, opt: torch.optim.Optimizer, names: list[str]) -> dict[str, np.ndarray]:
    params = dict(model.named_parameters())
    out = {f"param/{n}": params[n].detach().numpy().copy() for n in names}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"optim/{i}/{k}"] = (v.detach().numpy().copy() if torch.is_tensor(v) else np.asarray(v))
    out["rng/torch"] = torch.get_rng_state().numpy().copy()
    return out


def _restore(model: nn.Module, opt: torch.optim.Optimizer, sched, arrays: Mapping[str, np.ndarray],
             meta: Mapping[str, Any], names: list[str], source: str) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in names if f"param/{n}" not in arrays]
    if missing:
        raise ValueError(f"{source}: checkpoint lacks parameters {missing[:4]} (a checkpoint of another mode or model?)")
    with torch.no_grad():
        for n in names:
            a = arrays[f"param/{n}"]
            if tuple(a.shape) != tuple(params[n].shape):
                raise ValueError(f"{source}: parameter {n} has shape {list(a.shape)}, the model needs {list(params[n].shape)}")
            params[n].copy_(torch.from_numpy(np.array(a)))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in arrays.items():
        if k.startswith("optim/"):
            _, i, name = k.split("/", 2)
            state.setdefault(int(i), {})[name] = torch.from_numpy(np.array(v))
    opt.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})
    sched.load_state_dict(meta["scheduler"])
    torch.set_rng_state(torch.from_numpy(np.array(arrays["rng/torch"])))


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _pick_resume(out: Path, ckpts: Checkpoints, mirror) -> tuple[Path | None, str]:
    local = ckpts.latest()
    lstep = Checkpoints.step_of(local) if local else None
    mstep = mirror.latest_step() if mirror is not None else None
    if mstep is not None and (lstep is None or mstep > lstep):
        ckpts.root.mkdir(parents=True, exist_ok=True)
        tmp = ckpts.root / f".pull-{os.getpid()}"
        pulled = mirror.pull(tmp)
        Checkpoints.load(pulled)  # complete and readable before it becomes a local checkpoint
        dest = ckpts.root / f"{Checkpoints.PREFIX}{mstep:08d}"
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(pulled, dest)
        return dest, f"mirror (step {mstep}; local {lstep})"
    if local is not None:
        return local, f"local (step {lstep}; mirror {mstep})"
    return None, "no checkpoint (local or mirror): starting fresh"


# =========================================================================== adapter slots


def _slots(out: str | os.PathLike) -> Path:
    return Path(out) / "adapters"


def write_candidate(out: str | os.PathLike, model: nn.Module, info: Mapping[str, Any]) -> Path:
    """Write ``model``'s adapter (peft state dict as safetensors) and ``info`` as ``adapter.json``
    to ``<out>/adapters/candidate/`` atomically (temporary folder + rename)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    root = _slots(out)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".candidate-", dir=root))
    try:
        sd = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME).items()}
        save_file(sd, str(tmp / ADAPTER_WEIGHTS), metadata={"format": ADAPTER_FORMAT})
        common.atomic_write_json(tmp / ADAPTER_JSON, {"format": ADAPTER_FORMAT, "format_version": 1, **info})
        common.fsync_dir(tmp)
        common.replace_dir(tmp, root / "candidate")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / "candidate"


def load_adapter(slot: str | os.PathLike) -> tuple[ConvMLPPolicy, dict[str, Any]]:
    """``(model, adapter_json)``: the recorded base with the slot's LoRA adapter; ``ValueError``
    when the slot is unreadable or the base changed since the adapter was trained."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    slot = Path(slot)
    try:
        info = json.loads((slot / ADAPTER_JSON).read_text())
        sd = load_file(str(slot / ADAPTER_WEIGHTS))
    except Exception as e:
        raise ValueError(f"{slot}: not a readable adapter slot: {e}") from None
    if info.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{slot / ADAPTER_JSON}: not an {ADAPTER_FORMAT} file")
    base = Path(info["base"]["path"])
    if _sha256(base / common.EXPORT_WEIGHTS) != info["base"]["sha256"]:
        raise ValueError(f"{slot}: its base {base} changed since the adapter was trained (sha256 differs)")
    model, _ = policy_from_export(base)
    lora = info["lora"]
    model = add_lora(model, lora["r"], lora["alpha"], lora["dropout"])
    res = set_peft_model_state_dict(model, sd, adapter_name=ADAPTER_NAME)
    if getattr(res, "unexpected_keys", None):
        raise ValueError(f"{slot}: adapter tensors the model does not have: {res.unexpected_keys[:4]}")
    model.eval()
    return model, info


def _reference(out: Path) -> tuple[str, nn.Module, dict[str, Any] | None, Path]:
    cur = _slots(out) / "current"
    if (cur / ADAPTER_JSON).is_file():
        model, info = load_adapter(cur)
        return "current", model, info.get("normalization"), cur
    cand = json.loads((_slots(out) / "candidate" / ADAPTER_JSON).read_text())
    base = Path(cand["base"]["path"])
    model, policy = policy_from_export(base)
    return "base", model, policy.get("normalization"), base


def _promote_dirs(root: Path, step: int, keep_history: int) -> str | None:
    """current -> history/<time>-step<N>, candidate -> current (renames); prune history."""
    moved = None
    if (root / "current").exists():
        (root / "history").mkdir(exist_ok=True)
        prev_step = 0
        try:
            prev_step = int(json.loads((root / "current" / ADAPTER_JSON).read_text()).get("step", 0))
        except (OSError, ValueError):
            pass
        moved = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{time.time_ns() % 10**9:09d}-step{prev_step:08d}"
        os.replace(root / "current", root / "history" / moved)
    os.replace(root / "candidate", root / "current")
    common.fsync_dir(root)
    hist = root / "history"
    if hist.is_dir():
        entries = sorted(p for p in hist.iterdir() if not p.name.startswith("."))
        for old in entries[:max(0, len(entries) - max(0, keep_history))]:
            shutil.rmtree(old, ignore_errors=True)
    return moved


def promote(out: str | os.PathLike, cfg: TrainConfig, eval_split: str | None = None, *, margin: float = 0.0,
            max_delta: float = 0.5, keep_history: int = 3, bounds_tol: float = 0.1,
            violation_allowance: float = 0.01) -> dict[str, Any]:
    """Compare ``<out>/adapters/candidate`` with ``current`` (or the base when there is no current)
    on ``eval_split`` (default ``cfg.eval_split``) of ``cfg.data`` and promote it when
    ``distance <= reference distance - margin``, ``violation_rate <= reference's +
    violation_allowance`` and its ``max_delta <= max_delta``. Violations count every predicted
    element beyond a bound by more than ``bounds_tol`` times the bound's width (default 0.1: 0.2
    for steering in [-1, 1]). A regression policy that imitates actions sitting on a bound
    (steering at full lock) overshoots it a little, which the robot's safety head clamps; the
    tolerance and ``violation_allowance`` (default 1% of the predicted elements) keep that from
    vetoing a far better candidate, while a broken one (outputs far out of range) still fails. Always writes
    ``<out>/adapters/promotion_report.json``; returns it."""
    root = _slots(out)
    root.mkdir(parents=True, exist_ok=True)
    split = eval_split or cfg.eval_split
    report: dict[str, Any] = {"time": time.time(), "eval_split": split, "data": cfg.data, "margin": margin,
                              "max_delta_limit": max_delta, "bounds_tol": bounds_tol, "keep_history": keep_history,
                              "violation_allowance": violation_allowance,
                              "promoted": False}
    cand_dir = root / "candidate"
    try:
        if not (cand_dir / ADAPTER_JSON).is_file():
            report["decision"] = "no candidate"
            return report
        cand, cinfo = load_adapter(cand_dir)
        ref_name, ref, ref_norm, ref_path = _reference(Path(out))
        report["candidate"] = {"path": str(cand_dir), "step": cinfo.get("step"),
                               **action_metrics(cand, cinfo.get("normalization"), cfg, split, max_delta=max_delta,
                                                 bounds_tol=bounds_tol)}
        report["reference"] = {"kind": ref_name, "path": str(ref_path),
                               **action_metrics(ref, ref_norm, cfg, split, max_delta=max_delta, bounds_tol=bounds_tol)}
        c, r = report["candidate"], report["reference"]
        checks = {"distance": c["distance"] <= r["distance"] - margin,
                  "violation_rate": c["violation_rate"] <= r["violation_rate"] + violation_allowance,
                  "max_delta": bool(c["max_delta_ok"])}
        report["checks"] = checks
        if all(checks.values()):
            report["history_entry"] = _promote_dirs(root, int(cinfo.get("step") or 0), keep_history)
            report["promoted"], report["decision"] = True, "promoted"
        else:
            failed = [k for k, ok in checks.items() if not ok]
            report["decision"] = f"rejected ({', '.join(failed)})"
        return report
    except Exception as e:
        report["decision"], report["error"] = f"error: {e}", repr(e)
        raise
    finally:
        report["history"] = sorted(p.name for p in (root / "history").iterdir()) if (root / "history").is_dir() else []
        common.atomic_write_json(root / "promotion_report.json", _json_safe(report))


# =========================================================================== training


def _base_info(base: str | os.PathLike) -> dict[str, Any]:
    p = Path(base).resolve()
    return {"path": str(p), "sha256": _sha256(p / common.EXPORT_WEIGHTS)}


def _load_base(base: str | os.PathLike, expected_arch: Mapping[str, Any]) -> tuple[ConvMLPPolicy, dict[str, Any]]:
    p = Path(base)
    if not (p / common.EXPORT_POLICY).is_file():
        raise ValueError(f"base export {p}: no {common.EXPORT_POLICY} (expected an export folder from jax_bc or torch_lora)")
    try:
        policy = json.loads((p / common.EXPORT_POLICY).read_text())
    except ValueError as e:
        raise ValueError(f"base export {p / common.EXPORT_POLICY}: not valid JSON: {e}") from None
    if not isinstance(policy, dict) or not isinstance(policy.get("architecture"), dict):
        raise ValueError(f"base export {p / common.EXPORT_POLICY}: no architecture block")
    check_architecture(policy["architecture"], expected_arch, f"base export {p / common.EXPORT_POLICY}")
    return policy_from_export(p)


def _torch_threads() -> int:
    """torch's intra-op threads: ``RLDSKIT_TORCH_THREADS``, default 1. These models are small, the
    loader's decode threads need the other cores, and OpenMP threads spin-wait: on 2 cores with one
    busy neighbour process the dev policy ran 924 steps/s on 1 thread and 201 on 2 (pi5 LoRA:
    302 vs 179); with both cores free, 2 threads won only 1.0-1.3x."""
    v = os.environ.get("RLDSKIT_TORCH_THREADS", "").strip()
    return max(1, int(v)) if v.isdigit() else 1


def _check_fresh(out: Path, ckpts: Checkpoints) -> None:
    latest = ckpts.latest()
    if latest is not None:
        raise ValueError(f"{out}: already has checkpoints (latest {latest.name}); pass --resume to continue that run, "
                         "or use another --out")


def train(cfg: TrainConfig, base: str | None, *, resume: bool = False, stop_after: int | None = None,
          gate: Gate | None = None, full: bool = False) -> dict[str, Any]:
    """Train into ``cfg.out``: LoRA on the export ``base``, or every weight (``full``, or ``base``
    None: a fresh policy, or the base's weights when both are given). Returns the summary (also
    ``<out>/report.json``): ``status`` (``finished``/``stopped``), ``reason``, ``step``, paths of
    the checkpoint, export and candidate, timings and the held-out MSE of a finished run; and
    ``model``, the trained module (not in the report). torch's global settings (deterministic
    algorithms, intra-op threads) are set for the run and restored after it."""
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(_torch_threads())
    try:
        return _train(cfg, base, resume=resume, stop_after=stop_after, gate=gate, full=full)
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)


def _model_for_run(cfg: TrainConfig, arch: Mapping[str, Any], base_model: ConvMLPPolicy | None,
                   full: bool) -> nn.Module:
    """The module a run trains: ``base_model`` (or a fresh policy, seeded by ``cfg.seed``), with
    LoRA adapters (and everything else frozen) unless ``full``; in train mode."""
    torch.manual_seed(cfg.seed)
    model = base_model if base_model is not None else ConvMLPPolicy(arch)
    if not full:
        model = add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
    model.train()
    return model


def _optimizer(cfg: TrainConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _train(cfg: TrainConfig, base: str | None, *, resume: bool, stop_after: int | None, gate: Gate | None,
           full: bool) -> dict[str, Any]:
    t0 = time.monotonic()
    full = full or base is None
    out = Path(cfg.out)
    if not full and (cfg.lora_rank < 1 or cfg.lora_alpha <= 0 or not 0 <= cfg.lora_dropout < 1):
        raise ConfigError(f"config: LoRA needs lora_rank >= 1, lora_alpha > 0 and 0 <= lora_dropout < 1; got "
                          f"{cfg.lora_rank}, {cfg.lora_alpha}, {cfg.lora_dropout}")
    io, arch = _io_and_arch(cfg)
    base_info = base_policy = None
    if base is not None:
        model, base_policy = _load_base(base, arch)
        base_info = _base_info(base)
    ckpts = Checkpoints(out, keep=cfg.keep_checkpoints)
    if not resume:
        _check_fresh(out, ckpts)
    mirror = common.open_mirror(cfg.mirror)
    summary: dict[str, Any] = {"mode": "full" if full else "lora", "base": base_info, "out": str(out),
                               "max_steps": cfg.max_steps, "status": "stopped", "reason": None, "checkpoint": None,
                               "export": None, "candidate": None}
    guard = PreemptionGuard()
    stops = _Stops(cfg, guard, gate, 0, stop_after, t0)
    reason = stops.ask_gate()
    if reason is not None:  # nothing built, nothing to save
        summary.update(reason=reason, step=None, wall_s=time.monotonic() - t0)
        out.mkdir(parents=True, exist_ok=True)
        common.atomic_write_json(out / "report.json", _json_safe(summary))
        return summary

    model = _model_for_run(cfg, arch, model if base is not None else None, full)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    opt = _optimizer(cfg, params)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    loader = common.make_loader(cfg, num_epochs=None)

    step, resumed_from = 0, None
    if resume:
        path, why = _pick_resume(out, ckpts, mirror)
        summary["resume"] = why
        if path is not None:
            arrays, meta = Checkpoints.load(path)
            if meta.get("mode") != summary["mode"]:
                raise ValueError(f"{path}: a {meta.get('mode')} checkpoint; this run is {summary['mode']}")
            if base_info and (meta.get("base") or {}).get("sha256") != base_info["sha256"]:
                raise ValueError(f"{path}: trained on another base than {base} (sha256 differs)")
            _restore(model, opt, sched, arrays, meta, names, str(path))
            loader.set_state(meta["loader"])
            step, resumed_from = int(meta["step"]), str(path)
    summary["resumed_from"] = resumed_from
    stops.start = step
    metrics = MetricsWriter(out, resume_step=step)
    last_saved = step if resumed_from else None

    def save() -> Path:
        nonlocal last_saved
        meta = {"mode": summary["mode"], "base": base_info, "loader": loader.get_state(),
                "optimizer_param_groups": _json_safe(opt.state_dict()["param_groups"]),
                "scheduler": _json_safe(sched.state_dict()), "config": common.config_to_dict(cfg),
                "trainer": "torch_lora", "finished": step >= cfg.max_steps}
        path = ckpts.save(step, _state_arrays(model, opt, names), meta)
        if mirror is not None:
            mirror.push(path)
        last_saved = step
        return path

    n_samples, wait_s, step_s, loss_v, gnorm_v = 0, 0.0, 0.0, float("nan"), float("nan")
    t_loop, steps_done = time.monotonic(), 0
    it = iter(loader)
    amp = cfg.precision == "bfloat16"
    with guard:
        try:
            while True:
                if step >= cfg.max_steps:
                    reason = "max_steps"
                    break
                reason = stops.check(step)
                if reason is not None:
                    break
                t1 = time.monotonic()
                batch = next(it)
                images, state, actions, mask = _tensors(common.batch_arrays(batch, io))
                t2 = time.monotonic()
                loss, gnorm = _train_step(model, opt, sched, params, (images, state, actions, mask), cfg.grad_clip, amp)
                step += 1
                steps_done += 1
                t3 = time.monotonic()
                wait_s += t2 - t1
                step_s += t3 - t2
                n_samples += images.shape[0]
                loss_v, gnorm_v = float(loss.detach()), float(gnorm)
                if step % cfg.log_every == 0:
                    dt = wait_s + step_s
                    metrics.write({"step": step, "loss": loss_v, "grad_norm": gnorm_v, "lr": sched.get_last_lr()[0],
                                   "samples_per_s": n_samples / dt if dt > 0 else None, "data_wait_s": wait_s,
                                   "step_s": step_s, "wall_s": time.monotonic() - t0})
                    n_samples, wait_s, step_s = 0, 0.0, 0.0
                if step % cfg.checkpoint_every == 0:
                    summary["checkpoint"] = str(save())
            if last_saved != step:
                summary["checkpoint"] = str(save())
            elif summary["checkpoint"] is None and resumed_from:
                summary["checkpoint"] = resumed_from
        finally:
            metrics.close()
            loader.close()
            if mirror is not None:
                mirror.wait()
    loop_s = time.monotonic() - t_loop
    summary.update(reason=reason, step=step, steps_run=steps_done, loss=loss_v, grad_norm=_none_if_nan(gnorm_v),
                   steps_per_s=steps_done / loop_s if loop_s > 0 else None, peak_rss_mb=stops.peak_rss,
                   trainable_params=int(sum(p.numel() for p in params)),
                   total_params=int(sum(p.numel() for p in model.parameters())))
    if reason == "max_steps" and steps_done == 0 and resumed_from and _exported_step(out) == step:
        summary.update(status="finished", export=str(out / "export"),
                       note=f"already finished at step {step}: export and adapter slots left as they are")
    elif reason == "max_steps":
        summary["status"] = "finished"
        eval_mse = evaluate(model, cfg)
        summary["eval_mse"] = eval_mse
        evidence = {"eval_split": cfg.eval_split, "eval_mse_normalised": eval_mse, "mode": summary["mode"],
                    "base": base_info, "steps": step}
        if not full:
            evidence["lora"] = {"r": cfg.lora_rank, "alpha": cfg.lora_alpha, "merged": True,
                                "target_modules": lora_target_modules(model)}
        from rldskit import paths

        idx = loader.index
        dataset = {"name": idx.path.parent.name, "version": idx.path.name, "spec_id": io.spec_id, "path": str(idx.path)}
        if paths.is_remote(cfg.data):  # the URL, never the local copy's path
            dataset = common.dataset_record(cfg, io.spec_id)
        policy = common.policy_document(cfg, io, loader.normalizer, framework="torch", step=step, dataset=dataset,
                                        evidence=evidence)
        summary["export"] = str(common.write_export(out / "export", export_weights(model), policy))
        if not full:
            info = {"base": {**base_info, "architecture": base_policy.get("architecture")},
                    "lora": {"r": cfg.lora_rank, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                             "target_modules": lora_target_modules(model)},
                    "step": step, "normalization": policy["normalization"], "dataset": dataset,
                    "eval": {"split": cfg.eval_split, "mse_normalised": eval_mse},
                    "config": common.config_to_dict(cfg), "created": time.time()}
            summary["candidate"] = str(write_candidate(out, model, info))
    summary["wall_s"] = time.monotonic() - t0
    common.atomic_write_json(out / "report.json", _json_safe(summary))
    summary["model"] = model
    return summary


def _exported_step(out: Path) -> int | None:
    try:
        return int(json.loads((out / "export" / common.EXPORT_POLICY).read_text())["trainer"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else x


# =========================================================================== sanity check


def overfit_one_batch(cfg: TrainConfig, io: common.PolicyIO, arrays: Mapping[str, np.ndarray], model: nn.Module, *,
                      lora: bool, optimizer: Callable[[list[torch.Tensor]], torch.optim.Optimizer] | None = None
                      ) -> tuple[dict[str, Any], nn.Module]:
    """Fit ``model`` (from :func:`_model_for_run`) to the one batch ``arrays``
    (:func:`common.batch_arrays`) with the trainer's own step (:func:`_train_step`: AdamW from
    ``optimizer(params)``, default the run's, over the parameters that require grad; the run's
    schedule; clipping; bf16 autocast when configured) for ``cfg.max_steps`` steps, and judge it
    (:func:`common.sanity_proof`; LoRA needs ``SANITY_LORA_RATIO``, full training ``SANITY_RATIO``). What may change: with ``lora`` only the adapters
    (``lora_*`` parameters; every base weight must stay bit-identical), else every parameter;
    each of those must move. The final loss is the merged export's forward (a plain
    :class:`ConvMLPPolicy` loaded with :func:`export_weights`) on the batch. Returns
    ``(proof, model)``."""
    inputs, input_failures = common.check_batch(arrays, cfg, io)
    named = dict(model.named_parameters())
    init = {n: p.detach().numpy().copy() for n, p in named.items()}
    init_export = export_weights(model)
    expected = [n for n in named if not lora or "lora_" in n]
    losses: list[float] = []
    gnorms: list[float] = []
    final_loss = out_shape = None
    out_finite, update, update_failures, extra = False, None, [], {"mode": "lora" if lora else "full"}
    if not input_failures:
        params = [p for p in named.values() if p.requires_grad]
        opt = (optimizer or functools.partial(_optimizer, cfg))(params)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
        batch = _tensors(arrays)
        model.train()
        for _ in range(cfg.max_steps):
            loss, gnorm = _train_step(model, opt, sched, params, batch, cfg.grad_clip, cfg.precision == "bfloat16")
            losses.append(float(loss.detach()))
            gnorms.append(float(gnorm))
            if not (math.isfinite(losses[-1]) and math.isfinite(gnorms[-1])):
                break
        model.eval()
        merged = export_weights(model)
        plain = ConvMLPPolicy(model.arch)
        with torch.no_grad():
            load_export_weights(plain, merged, "the trained weights")
            y = plain(batch[0], batch[1]).double().numpy()
        out_shape, out_finite = list(y.shape), bool(np.all(np.isfinite(y)))
        if out_shape == list(arrays["actions"].shape):
            err = (y - arrays["actions"]) ** 2 * arrays["mask"][..., None]
            final_loss = float(err.sum() / (max(float(arrays["mask"].sum()), 1.0) * arrays["actions"].shape[-1]))
        final = {n: p.detach().numpy() for n, p in model.named_parameters()}
        update, update_failures = common.param_update(init, final, expected)
        extra["export_tensors_changed"] = sorted(k for k in merged if not np.array_equal(merged[k], init_export[k]))
    proof = common.sanity_proof(framework="torch", cfg=cfg, io=io, inputs=inputs, input_failures=input_failures,
                                losses=losses, grad_norms=gnorms, final_loss=final_loss, output_shape=out_shape,
                                output_finite=out_finite, update=update, update_failures=update_failures,
                                required_ratio=common.SANITY_LORA_RATIO if lora else common.SANITY_RATIO, extra=extra)
    return proof, model


def sanity_check(cfg: TrainConfig, base: str | None = None, *, full: bool = False) -> dict[str, Any]:
    """Overfit one batch with this trainer (the same check as ``jax_bc.sanity_check``): the first
    batch (``min(batch_size, SANITY_BATCH)`` windows, the same for a seed) of the run's loader, the
    model the run would train (LoRA on ``base``, or every weight with ``full``/no base), the
    run's optimiser and schedule fitted to ``SANITY_STEPS`` steps (:func:`common.sanity_config`);
    the loss on that same batch must fall to ``SANITY_RATIO`` (10%) of its initial value
    (LoRA: ``SANITY_LORA_RATIO``, 50%: low-rank adapters on a frozen base cannot memorise 8
    windows in general); inputs,
    loss, gradient norm, output and parameters must be finite and shaped right; every trainable
    tensor must move and, with LoRA, every base weight must stay exactly as it was (recorded in
    ``param_update``: ``trainable``, ``frozen``, ``frozen_unchanged``; ``export_tensors_changed``
    lists the merged export tensors that differ from the base).

    It detects a model, optimiser or data plumbing that cannot learn, not whether actions are
    predictable from observations: pure-noise actions are memorised on one batch too
    (``common.SANITY_SCOPE``). Deterministic for ``cfg.seed`` on CPU.

    Writes ``<out>/proof_of_learning.json`` and, when it passes, ``<out>/export`` (the overfit
    weights with the proof as evidence: a plumbing check, not a policy to ship). Returns the proof."""
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(_torch_threads())
    try:
        full = full or base is None
        scfg = common.sanity_config(cfg)
        io, arch = _io_and_arch(scfg)
        base_model = _load_base(base, arch)[0] if base is not None else None
        arrays, normalizer = common.sanity_batch(scfg, io)
        model = _model_for_run(scfg, arch, base_model, full)
        proof, model = overfit_one_batch(scfg, io, arrays, model, lora=not full)
        if base is not None:
            proof["base"] = _base_info(base)
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        common.atomic_write_json(out / "proof_of_learning.json", proof)
        if proof["passed"]:
            dataset = common.dataset_record(scfg, io.spec_id)
            doc = common.policy_document(scfg, io, normalizer, framework="torch", step=proof["steps"],
                                         dataset=dataset, evidence={"proof_of_learning": proof})
            common.write_export(out / "export", export_weights(model), doc)
        return proof
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)


# =========================================================================== dry run


def dry_run(cfg: TrainConfig, base: str | None, *, gate: Gate | None = None, full: bool = False,
            echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The wiring of :func:`train` without a model or data: the gate, the budgets, checkpoints,
    metrics, mirror pushes and the adapter slots, driven by a stub step (a quadratic's gradient
    step in numpy), all under ``<out>/dry_run/``. Prints what a real run would do."""
    t0 = time.monotonic()
    full = full or base is None
    out = Path(cfg.out)
    gate = gate or (lambda: (True, "stub gate: always yes"))
    echo(f"dry run: {'full training of a fresh policy' if full and base is None else 'full fine-tuning' if full else 'LoRA'}"
         f" -> {out}; real artefacts would be {out}/checkpoints, {out}/metrics.*, {out}/export"
         + ("" if full else f", {out}/adapters/candidate"))
    echo(f"  data: {cfg.data or '(none)'}  split {cfg.train_split}, eval {cfg.eval_split}; preset {cfg.preset}, "
         f"image {list(cfg.image_size)}, conv {list(cfg.conv_features)}, mlp {list(cfg.mlp_features)}, "
         f"K={cfg.action_horizon}, history={cfg.history}, batch {cfg.batch_size}")
    if base is not None:
        p = Path(base)
        if not (p / common.EXPORT_POLICY).is_file():
            raise ValueError(f"base export {p}: no {common.EXPORT_POLICY}")
        policy = json.loads((p / common.EXPORT_POLICY).read_text())
        cfg_arch = {"image_size": list(cfg.image_size), "history": cfg.history, "mlp": list(cfg.mlp_features),
                    "action_horizon": cfg.action_horizon,
                    "conv": [{"features": f, "kernel": cfg.conv_kernel, "stride": cfg.conv_stride, "padding": "SAME"}
                             for f in cfg.conv_features]}
        check_architecture(policy.get("architecture") or {}, cfg_arch, f"base export {p / common.EXPORT_POLICY}")
        echo(f"  base: {p} (architecture matches the config's sizes; trained by "
             f"{policy.get('trainer', {}).get('framework')} to step {policy.get('trainer', {}).get('step')})")
    if not full:
        echo(f"  LoRA r={cfg.lora_rank} alpha={cfg.lora_alpha} dropout={cfg.lora_dropout} on the MLP and head; "
             f"base weights frozen")
    echo(f"  {cfg.max_steps} steps, lr {cfg.learning_rate:g} (warmup {cfg.warmup_steps}, cosine), log every "
         f"{cfg.log_every}, checkpoint every {cfg.checkpoint_every}; budgets: wall {cfg.max_wall_seconds} s, "
         f"memory {cfg.max_memory_mb} MiB; mirror {cfg.mirror or 'none'}")
    root = out / "dry_run"
    if root.exists():
        shutil.rmtree(root)
    ckpts = Checkpoints(root, keep=cfg.keep_checkpoints)
    mirror = common.LocalMirror(root / "mirror")
    metrics = MetricsWriter(root, resume_step=0)
    guard = PreemptionGuard()
    stops = _Stops(cfg, guard, gate, 0, None, t0)
    w = np.zeros(4, np.float32)
    target = np.arange(4, dtype=np.float32)
    step, reason, saves = 0, stops.ask_gate(), 0
    lr = _lr_lambda(cfg)
    with guard:
        try:
            while reason is None:
                if step >= cfg.max_steps:
                    reason = "max_steps"
                    break
                reason = stops.check(step)
                if reason is not None:
                    break
                g = 2 * (w - target)
                w = w - 0.05 * lr(step) * g
                step += 1
                if step % cfg.log_every == 0:
                    metrics.write({"step": step, "loss": float(((w - target) ** 2).sum()), "lr": cfg.learning_rate * lr(step),
                                   "wall_s": time.monotonic() - t0})
                if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                    mirror.push(ckpts.save(step, {"stub/w": w}, {"stub": True}))
                    saves += 1
        finally:
            metrics.close()
            mirror.wait()
    if ckpts.latest() is None or Checkpoints.step_of(ckpts.latest()) != step:
        mirror.push(ckpts.save(step, {"stub/w": w}, {"stub": True}))
        saves += 1
    slots = root / "adapters"
    slots.mkdir(parents=True, exist_ok=True)
    for _ in range(2):  # candidate -> current twice, so history gets an entry
        tmp = Path(tempfile.mkdtemp(prefix=".candidate-", dir=slots))
        common.atomic_write_json(tmp / ADAPTER_JSON, {"format": ADAPTER_FORMAT, "stub": True, "step": step})
        common.replace_dir(tmp, slots / "candidate")
        _promote_dirs(slots, step, 3)
    summary = {"status": "dry_run", "reason": reason, "step": step, "checkpoints_saved": saves,
               "checkpoint": str(ckpts.latest()), "mirror_step": mirror.latest_step(),
               "slots": sorted(p.name for p in slots.iterdir()), "wall_s": time.monotonic() - t0,
               "rss_mb": rss_mb(), "dir": str(root)}
    echo(f"  stub loop: stopped at step {step} ({reason}); {saves} checkpoints, mirror at step "
         f"{summary['mirror_step']}, slots {summary['slots']}; everything under {root}")
    common.atomic_write_json(root / "report.json", summary)
    return summary


# =========================================================================== CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainers.torch_lora", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="JSON config (keys of trainers.common.TrainConfig)")
    ap.add_argument("--preset", help="preset (overrides the config file's)")
    ap.add_argument("--base", help="export folder to fine-tune with LoRA (omit, or --full, for full training)")
    ap.add_argument("--out", help="run folder (overrides the config's 'out')")
    ap.add_argument("--data", help="dataset version folder (overrides the config's 'data')")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--mirror", help="checkpoint mirror: a folder or hf://user/repo")
    ap.add_argument("--resume", action="store_true", help="continue from the most advanced local or mirrored checkpoint")
    ap.add_argument("--full", action="store_true", help="train every weight, no LoRA")
    ap.add_argument("--use-stub-hooks", action="store_true", help="dry run: wiring with a stub step, no model or data")
    ap.add_argument("--sanity-check", action="store_true",
                    help="overfit one batch: the loss on it must fall to 10%% (LoRA: 50%%, and only the adapters "
                         "may change) in 400 steps; writes <out>/proof_of_learning.json; exit 1 when it fails")
    ap.add_argument("--promote", action="store_true", help="after a finished LoRA run, run the promotion gate")
    args = ap.parse_args(argv)
    try:
        cfg = common.load_config(args.config, args.preset, {"out": args.out, "data": args.data,
                                                             "max_steps": args.max_steps, "mirror": args.mirror})
        if args.sanity_check:
            proof = sanity_check(cfg, args.base, full=args.full)
            if not proof["passed"]:
                print("sanity check FAILED: " + "; ".join(proof["failures"]), file=sys.stderr)
                return 1
            print(f"sanity check passed ({proof['mode']}): overfit one batch of {proof['batch_size']}: loss "
                  f"{proof['loss_initial']:.4g} -> {proof['loss_final']:.4g} ({100 * proof['loss_ratio']:.1f}% of the "
                  f"initial value, needs <= {100 * proof['required_ratio']:.0f}%) in {proof['steps']} steps; proof in "
                  f"{Path(cfg.out) / 'proof_of_learning.json'}")
            return 0
        if args.use_stub_hooks:
            summary = dry_run(cfg, args.base, full=args.full)
            print(json.dumps(summary, default=str))
            return 0
        summary = train(cfg, args.base, resume=args.resume, full=args.full)
        summary.pop("model", None)
        if args.promote and summary.get("candidate"):
            summary["promotion"] = promote(cfg.out, cfg)["decision"]
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(_json_safe(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

