"""The trainers' sanity check, overfit one batch (``jax_bc.sanity_check``, ``torch_lora.sanity_check``):
the loss on one fixed batch must fall to ``SANITY_RATIO`` (LoRA: ``SANITY_LORA_RATIO``) of its initial
value in ``SANITY_STEPS`` steps, with inputs, loss, gradients, outputs and parameters finite and shaped
right and every trainable tensor moved (LoRA: the base untouched).

It passes on every shipped schema's synthetic data (small cameras, several seeds and sizes) and on the
dataset of the report that the old gate (mean of the first 5 noisy minibatch losses vs the last 5)
failed every time; it is deterministic for a seed; it fails on what it claims to detect (a learning
rate too small to learn, parameters that do not update, LoRA base weights that change, non-finite
values, mis-shaped targets, a batch of padding only); and, as documented, it passes on pure-noise
actions, because one batch of anything is memorised. Real JAX/flax/optax and torch/peft on CPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grain")

from conftest import _small  # noqa: E402
from helpers_train import bar_dataset  # noqa: E402

from rldskit.pipeline import convert  # noqa: E402
from rldskit.spec import builtin_spec_names  # noqa: E402
from rldskit.synth import write_synthetic  # noqa: E402
from trainers import common  # noqa: E402

#: (seed, episodes, steps) of the synthetic datasets each schema is checked on
SIZES = [(0, 2, 15), (4, 6, 60)]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Factory: ``synth(schema, seed, episodes, steps)`` -> a converted dataset (cached per module)."""
    root = tmp_path_factory.mktemp("synth")
    cache: dict[tuple, Path] = {}

    def make(schema: str, seed: int, episodes: int, steps: int) -> Path:
        key = (schema, seed, episodes, steps)
        if key not in cache:
            d = root / f"{schema}-{seed}-{episodes}x{steps}"
            write_synthetic(_small(schema), d / "cap", episodes, steps, seed=seed)
            cache[key] = convert([d / "cap"], d / "data", name="synth", runner="inline",
                                 formats=("array_record",)).path
        return cache[key]

    return make


def _cfg(data: Path, out: Path, **kw) -> common.TrainConfig:
    return common.load_config(None, "dev", {"data": str(data), "out": str(out), **kw})


def _jax():
    pytest.importorskip("jax")
    from trainers import jax_bc

    return jax_bc


def _torch():
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from trainers import torch_lora

    return torch_lora


def _assert_passed(proof: dict, ratio: float | None = None) -> None:
    ratio = common.SANITY_RATIO if ratio is None else ratio
    assert proof["passed"], proof["failures"]
    assert proof["failures"] == [] and proof["check"] == "overfit_one_batch"
    assert proof["steps"] == common.SANITY_STEPS and len(proof["loss_curve"]) == common.SANITY_STEPS + 1
    assert proof["loss_final"] <= ratio * proof["loss_initial"] and proof["required_ratio"] == ratio
    assert proof["loss_curve"][0] == proof["loss_initial"] and proof["loss_curve"][-1] == proof["loss_final"]
    assert all(np.isfinite(proof["loss_curve"])) and all(np.isfinite(proof["grad_norm_curve"]))
    upd = proof["param_update"]
    assert upd["all_trainable_moved"] and upd["frozen_unchanged"] and upd["overall_relative"] > 0
    assert all(t["l2"] > 0 for t in upd["per_tensor"].values() if t["trainable"])


# --------------------------------------------------------------------------- the reported failure


def test_the_reported_dataset_passes_through_the_cli(tmp_path, capsys):
    """The report: ``pi5_donkey.v1`` synth, 6 episodes x 60 steps, seed 4, full-size camera,
    converted with ``--format both --step-index``; the old check failed it every time."""
    jax_bc = _jax()
    from rldskit.cli import main

    cap, data = tmp_path / "cap", tmp_path / "data"
    assert main(["synth", "--schema", "pi5_donkey.v1", "--episodes", "6", "--steps", "60", "--out", str(cap),
                 "--seed", "4"]) == 0
    assert main(["convert", str(cap), "--out", str(data), "--name", "synth", "--format", "both", "--step-index",
                 "--runner", "inline"]) == 0
    capsys.readouterr()
    out = tmp_path / "check"
    assert jax_bc.main(["--data", str(data / "synth" / "1.0.0"), "--sanity-check", "--out", str(out)]) == 0
    assert "sanity check passed: overfit one batch" in capsys.readouterr().out
    proof = json.loads((out / "proof_of_learning.json").read_text())
    _assert_passed(proof)
    assert proof["inputs"]["images"]["shape"] == [8, 1, 1, 24, 32, 3] and proof["output_shape"] == [8, 8, 2]


# --------------------------------------------------------------------------- every schema, seeds, sizes


@pytest.mark.parametrize("seed, episodes, steps", SIZES)
@pytest.mark.parametrize("schema", builtin_spec_names())
def test_jax_check_passes_on_every_schema(synth, tmp_path, schema, seed, episodes, steps):
    jax_bc = _jax()
    data = synth(schema, seed, episodes, steps)
    proof = jax_bc.sanity_check(_cfg(data, tmp_path / "check", seed=seed))
    _assert_passed(proof)
    on_disk = json.loads((tmp_path / "check" / "proof_of_learning.json").read_text())
    assert on_disk == json.loads(json.dumps(proof))
    weights, policy = common.read_export(tmp_path / "check" / "export")
    assert policy["evidence"]["proof_of_learning"]["loss_final"] == proof["loss_final"]
    assert set(proof["param_update"]["per_tensor"]) == set(weights)


@pytest.mark.parametrize("seed, episodes, steps", SIZES)
@pytest.mark.parametrize("schema", builtin_spec_names())
def test_torch_check_passes_on_every_schema(synth, tmp_path, schema, seed, episodes, steps):
    torch_lora = _torch()
    data = synth(schema, seed, episodes, steps)
    proof = torch_lora.sanity_check(_cfg(data, tmp_path / "check", seed=seed))
    _assert_passed(proof)
    assert proof["mode"] == "full" and proof["param_update"]["frozen"] == []
    assert (tmp_path / "check" / "export" / common.EXPORT_POLICY).is_file()


@pytest.mark.parametrize("schema", builtin_spec_names())
def test_torch_lora_check_moves_only_the_adapters(synth, tmp_path, schema):
    torch_lora = _torch()
    data = synth(schema, 4, 6, 60)
    base = torch_lora.train(_cfg(data, tmp_path / "base", max_steps=30, eval_split="train"), None,
                            full=True)["export"]
    base_weights = common.read_export(base)[0]
    out = tmp_path / "check"
    assert torch_lora.main(["--data", str(data), "--base", base, "--out", str(out), "--sanity-check"]) == 0
    proof = json.loads((out / "proof_of_learning.json").read_text())
    _assert_passed(proof, common.SANITY_LORA_RATIO)
    upd = proof["param_update"]
    assert proof["mode"] == "lora" and upd["trainable"] and all("lora_" in n for n in upd["trainable"])
    assert upd["frozen"] and not any("lora_" in n for n in upd["frozen"])
    assert all(upd["per_tensor"][n]["l2"] == 0 for n in upd["frozen"])
    # the merged export differs from the base only in the adapted kernels (LoRA adds no bias)
    assert proof["export_tensors_changed"] == sorted(k for k in base_weights
                                                     if k.endswith(".kernel") and not k.startswith("encoder."))
    merged = common.read_export(out / "export")[0]
    for k, v in base_weights.items():
        assert np.array_equal(merged[k], v) == (k not in proof["export_tensors_changed"]), k


# --------------------------------------------------------------------------- deterministic


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_the_check_is_deterministic_for_a_seed(synth, tmp_path, framework):
    mod = _jax() if framework == "jax" else _torch()
    data = synth("so100_arm.v1", 4, 6, 60)
    a = mod.sanity_check(_cfg(data, tmp_path / "a", seed=3))
    b = mod.sanity_check(_cfg(data, tmp_path / "b", seed=3))
    c = mod.sanity_check(_cfg(data, tmp_path / "c", seed=5))
    assert a["loss_curve"] == b["loss_curve"] and a["param_update"] == b["param_update"]
    assert a["loss_curve"][0] != c["loss_curve"][0]  # another seed: another batch and initialisation


# --------------------------------------------------------------------------- what it detects


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_a_learning_rate_too_small_to_learn_fails(synth, tmp_path, capsys, framework):
    mod = _jax() if framework == "jax" else _torch()
    data = synth("pi5_donkey.v1", 4, 6, 60)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"learning_rate": 1e-9}))
    out = tmp_path / "check"
    assert mod.main(["--data", str(data), "--config", str(cfg_file), "--out", str(out), "--sanity-check"]) == 1
    assert "sanity check FAILED: did not overfit one batch" in capsys.readouterr().err
    proof = json.loads((out / "proof_of_learning.json").read_text())
    assert not proof["passed"] and proof["loss_ratio"] > 0.9
    assert not (out / "export").exists()


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_a_huge_learning_rate_is_caught_as_non_finite(synth, tmp_path, framework):
    mod = _jax() if framework == "jax" else _torch()
    proof = mod.sanity_check(_cfg(synth("pi5_donkey.v1", 4, 6, 60), tmp_path / "check", learning_rate=1e30))
    assert not proof["passed"] and proof["steps"] < common.SANITY_STEPS
    assert any(f.startswith("non-finite loss at step") for f in proof["failures"]), proof["failures"]
    assert None in proof["loss_curve"]  # strict JSON: NaN/inf are written as null
    json.loads((tmp_path / "check" / "proof_of_learning.json").read_text(),
               parse_constant=lambda c: pytest.fail(f"{c} in proof_of_learning.json"))


def test_jax_parameters_the_optimiser_drops_fail(synth, tmp_path):
    """An optimiser that never updates the head (``optax.set_to_zero`` on it): the head did not
    move (and the rest cannot make up for a random head). One that updates nothing: the loss does
    not fall either."""
    jax_bc = _jax()
    import optax

    cfg = _cfg(synth("xr_teleop.v1", 4, 6, 60), tmp_path / "check")
    scfg = common.sanity_config(cfg)
    adamw = jax_bc.make_optimizer(scfg)[0]

    def labels(params):
        return {k: ("frozen" if k == "head" else "train") for k in params}

    head_frozen = optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)
    proof = jax_bc.sanity_check(cfg, tx=head_frozen)
    assert not proof["passed"] and "parameters did not move: head.bias, head.kernel" in proof["failures"]
    assert proof["param_update"]["per_tensor"]["head.kernel"]["l2"] == 0
    assert proof["param_update"]["per_tensor"]["mlp.0.kernel"]["l2"] > 0

    proof = jax_bc.sanity_check(cfg, tx=optax.set_to_zero())
    assert not proof["passed"] and proof["loss_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert any(f.startswith("did not overfit one batch") for f in proof["failures"])
    assert any(f.startswith("parameters did not move: encoder.0.conv0.bias") for f in proof["failures"])


def test_torch_parameters_left_out_of_the_optimiser_fail(synth, tmp_path):
    torch_lora = _torch()
    import torch

    cfg = common.sanity_config(_cfg(synth("xr_teleop.v1", 4, 6, 60), tmp_path / "check"))
    io, arch = torch_lora._io_and_arch(cfg)
    arrays, _ = common.sanity_batch(cfg, io)
    model = torch_lora._model_for_run(cfg, arch, None, True)
    no_head = lambda params: torch.optim.AdamW(params[:-2], lr=cfg.learning_rate)  # noqa: E731 (head.weight, .bias last)
    proof, _ = torch_lora.overfit_one_batch(cfg, io, arrays, model, lora=False, optimizer=no_head)
    assert not proof["passed"] and "parameters did not move: head.bias, head.weight" in proof["failures"]


def test_torch_lora_base_weights_that_train_fail(synth, tmp_path):
    """LoRA whose base is not frozen (a base weight still requires grad): only the adapters may
    change, so the check fails and names the weight."""
    torch_lora = _torch()
    data = synth("pi5_donkey.v1", 4, 6, 60)
    base = torch_lora.train(_cfg(data, tmp_path / "base", max_steps=5, eval_split="train"), None, full=True)["export"]
    cfg = common.sanity_config(_cfg(data, tmp_path / "check"))
    io, arch = torch_lora._io_and_arch(cfg)
    arrays, _ = common.sanity_batch(cfg, io)
    model = torch_lora._model_for_run(cfg, arch, torch_lora._load_base(base, arch)[0], False)
    leaky = [n for n, p in model.named_parameters() if n == "mlp.0.base_layer.weight"]
    assert leaky
    dict(model.named_parameters())[leaky[0]].requires_grad_(True)
    proof, _ = torch_lora.overfit_one_batch(cfg, io, arrays, model, lora=True)
    assert not proof["passed"] and "frozen parameters changed: mlp.0.base_layer.weight" in proof["failures"]
    assert not proof["param_update"]["frozen_unchanged"]


def _batch(data: Path, tmp_path: Path):
    from rldskit.loaders import StepIndex

    cfg = common.sanity_config(_cfg(data, tmp_path / "check"))
    io = common.policy_io(StepIndex.load(data, "train").spec)
    arrays, _ = common.sanity_batch(cfg, io)
    return cfg, io, arrays


def _overfit(framework: str, cfg, io, arrays):
    if framework == "jax":
        return _jax().overfit_one_batch(cfg, io, arrays)[0]
    torch_lora = _torch()
    return torch_lora.overfit_one_batch(cfg, io, arrays, torch_lora._model_for_run(cfg, common.architecture(cfg, io),
                                                                                  None, True), lora=False)[0]


@pytest.mark.parametrize("framework", ["jax", "torch"])
@pytest.mark.parametrize("defect, message", [
    ("nan_state", "inputs: state holds 1 non-finite value(s)"),
    ("nan_padded_action", "inputs: actions holds 1 non-finite value(s)"),
    ("flat_targets", "inputs: actions has shape (8, 56)"),
    ("one_step_targets", "inputs: actions has shape (8, 1, 7)"),
    ("all_padding", "inputs: every action in the batch is padding"),
    ("float_images", "inputs: images is float32, expected uint8"),
])
def test_bad_batches_fail_before_training(synth, tmp_path, framework, defect, message):
    cfg, io, arrays = _batch(synth("xr_teleop.v1", 4, 6, 60), tmp_path)
    arrays = {k: v.copy() for k, v in arrays.items()}
    if defect == "nan_state":
        arrays["state"][2, 3] = np.nan
    elif defect == "nan_padded_action":
        arrays["mask"][0, -1] = 0.0
        arrays["actions"][0, -1, 0] = np.nan  # padded, yet it would poison the masked loss
    elif defect == "flat_targets":
        arrays["actions"] = arrays["actions"].reshape(8, -1)
    elif defect == "one_step_targets":
        arrays["actions"] = arrays["actions"][:, :1]
    elif defect == "all_padding":
        arrays["mask"][:] = 0.0
    elif defect == "float_images":
        arrays["images"] = arrays["images"].astype(np.float32)
    proof = _overfit(framework, cfg, io, arrays)
    assert not proof["passed"] and proof["steps"] == 0
    assert any(f.startswith(message) for f in proof["failures"]), proof["failures"]


# --------------------------------------------------------------------------- what it does not detect


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_pure_noise_actions_still_pass_as_documented(tmp_path, framework):
    """Actions drawn at random, unrelated to the frames: one batch is memorised all the same, so
    the check passes; it says so in the proof (``scope.does_not_detect``)."""
    mod = _jax() if framework == "jax" else _torch()
    rng = np.random.default_rng(0)
    data = bar_dataset(tmp_path / "noise", episodes=6, steps=20, name="noise", id_prefix="noise",
                       action=lambda x, b: rng.uniform(-1, 1, 2).astype(np.float32))
    proof = mod.sanity_check(_cfg(data, tmp_path / "check"))
    _assert_passed(proof)
    assert any("pure-noise" in s for s in proof["scope"]["does_not_detect"])
    assert dataclasses.asdict(common.sanity_config(_cfg(data, tmp_path / "check")))["max_steps"] == proof["steps"]
