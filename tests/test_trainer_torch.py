"""The torch LoRA trainer (``trainers/torch_lora.py``) on bar datasets (``helpers_train``): a full
run learns a base; LoRA adapts it to a dataset with another mapping without touching it; the
forward is the documented ``conv_mlp`` v1 (a float64 numpy reimplementation); resumes are bit for
bit (from a stop, from the mirror); budgets, the gate and SIGTERM stop cleanly with a checkpoint;
adapter slots promote good candidates and keep bad ones out; bad inputs get clear errors.
Real torch and peft on CPU, no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from helpers_train import bar_dataset  # noqa: E402

from rldskit.spec import load_spec  # noqa: E402
from trainers import common, torch_lora  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EPISODES = 24
#: the test runs: 18 training episodes, 6 held out; a higher learning rate than the default so a
#: few hundred steps suffice
RUN = {"train_split": "train[:75%]", "eval_split": "train[75%:]", "learning_rate": 3e-3, "log_every": 10,
       "checkpoint_every": 100}
BASE_STEPS, LORA_STEPS = 250, 200


def flipped_bar_dataset(root: Path, episodes: int = EPISODES, steps: int = 24, shape=(24, 32, 3), seed: int = 1) -> Path:
    """Like ``helpers_train.bar_dataset`` but ``throttle = 0.5 - b`` (the base's mapping reversed)."""
    return bar_dataset(root, episodes, steps, shape, seed, name="flipped", id_prefix="flip",
                       action=lambda x, b: np.array([2 * x - 1, 0.5 - b], np.float32))


def _cfg(data: Path, out: Path, **kw) -> common.TrainConfig:
    return common.load_config(None, "dev", {"data": str(data), "out": str(out), **RUN, **kw})


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def bars(tmp_path_factory) -> Path:
    return bar_dataset(tmp_path_factory.mktemp("bars"), episodes=EPISODES)


@pytest.fixture(scope="module")
def flipped(tmp_path_factory) -> Path:
    return flipped_bar_dataset(tmp_path_factory.mktemp("flipped"))


@pytest.fixture(scope="module")
def base_run(bars, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    cfg = _cfg(bars, out, max_steps=BASE_STEPS)
    torch.manual_seed(cfg.seed)
    untrained = torch_lora.evaluate(torch_lora.ConvMLPPolicy(torch_lora._io_and_arch(cfg)[1]), cfg)
    summary = torch_lora.train(cfg, None, full=True)
    return {"cfg": cfg, "summary": summary, "untrained": untrained, "export": out / "export", "out": out}


@pytest.fixture(scope="module")
def lora_run(base_run, flipped, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    base = base_run["export"]
    before = _hashes(base)
    cfg = _cfg(flipped, out, max_steps=LORA_STEPS)
    base_model, _ = torch_lora.policy_from_export(base)
    base_err = torch_lora.evaluate(base_model, cfg)
    summary = torch_lora.train(cfg, str(base))
    return {"cfg": cfg, "summary": summary, "base_err": base_err, "base_hashes_before": before, "out": out}


# --------------------------------------------------------------------------- learning


def test_full_training_learns_a_base(base_run):
    s = base_run["summary"]
    assert s["status"] == "finished" and s["reason"] == "max_steps" and s["step"] == BASE_STEPS
    assert s["mode"] == "full" and s["trainable_params"] == s["total_params"]
    print(f"\nbase: untrained {base_run['untrained']:.3f} -> trained {s['eval_mse']:.3f} held-out masked MSE; "
          f"{s['steps_per_s']:.0f} steps/s")
    assert s["eval_mse"] < 0.3 * base_run["untrained"]
    weights, policy = common.read_export(base_run["export"])
    assert policy["trainer"]["framework"] == "torch" and policy["trainer"]["step"] == BASE_STEPS
    assert policy["architecture"] == common.architecture(base_run["cfg"], common.policy_io(
        load_spec("pi5_donkey.v1").with_image_shape("observation/image", (24, 32, 3))))
    assert set(weights) == {"encoder.0.conv0.kernel", "encoder.0.conv0.bias", "encoder.0.conv1.kernel",
                            "encoder.0.conv1.bias", "mlp.0.kernel", "mlp.0.bias", "head.kernel", "head.bias"}
    assert weights["encoder.0.conv0.kernel"].shape == (3, 3, 3, 8) and weights["head.kernel"].shape == (64, 16)
    assert not (base_run["out"] / "adapters").exists()  # no adapter from a full run


def test_lora_learns_and_leaves_the_base_untouched(base_run, lora_run):
    s = lora_run["summary"]
    assert s["status"] == "finished" and s["mode"] == "lora"
    print(f"\nlora: base on the flipped data {lora_run['base_err']:.3f} -> adapted {s['eval_mse']:.3f}; "
          f"{s['trainable_params']} of {s['total_params']} parameters trained; {s['steps_per_s']:.0f} steps/s")
    assert s["eval_mse"] < 0.25 * lora_run["base_err"]
    assert s["trainable_params"] < 0.2 * s["total_params"]
    # the base export is byte-identical, and the frozen weights inside the model are the base's
    base = base_run["export"]
    assert _hashes(base) == lora_run["base_hashes_before"]
    model = s["model"]
    bw, _ = common.read_export(base)
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad
            continue
        assert not p.requires_grad, name
    np.testing.assert_array_equal(model.mlp[0].base_layer.weight.detach().numpy().T, bw["mlp.0.kernel"])
    np.testing.assert_array_equal(model.head.base_layer.weight.detach().numpy().T, bw["head.kernel"])
    np.testing.assert_array_equal(model.head.base_layer.bias.detach().numpy(), bw["head.bias"])
    np.testing.assert_array_equal(model.encoders[0][1].weight.detach().permute(2, 3, 1, 0).numpy(),
                                  bw["encoder.0.conv1.kernel"])
    # the merged export: encoders as the base, MLP/head kernels moved, same forward as the LoRA model
    mw, policy = common.read_export(lora_run["out"] / "export")
    assert mw.keys() == bw.keys()
    np.testing.assert_array_equal(mw["encoder.0.conv0.kernel"], bw["encoder.0.conv0.kernel"])
    assert not np.array_equal(mw["head.kernel"], bw["head.kernel"])
    assert not np.array_equal(mw["mlp.0.kernel"], bw["mlp.0.kernel"])
    assert policy["evidence"]["lora"]["merged"] is True
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 1, 1, 24, 32, 3), dtype=np.uint8)
    state = np.zeros((5, 0), np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(images), torch.from_numpy(state)).numpy()
    np.testing.assert_allclose(torch_lora.apply_export(lora_run["out"] / "export", images, state), y, atol=1e-5)
    # the candidate slot reloads to the same model
    cand, info = torch_lora.load_adapter(lora_run["out"] / "adapters" / "candidate")
    assert info["step"] == LORA_STEPS and info["base"]["path"] == str(base.resolve())
    with torch.no_grad():
        np.testing.assert_array_equal(cand(torch.from_numpy(images), torch.from_numpy(state)).numpy(), y)


# --------------------------------------------------------------------------- the forward is conv_mlp v1


def _np_same_conv(x: np.ndarray, k: np.ndarray, b: np.ndarray, s: int) -> np.ndarray:
    """TF SAME padding (the smaller half before), HWIO kernel, explicit loops over output pixels."""
    n, h, w, _ = x.shape
    kh, kw = k.shape[:2]
    th = max((-(-h // s) - 1) * s + kh - h, 0)
    tw = max((-(-w // s) - 1) * s + kw - w, 0)
    xp = np.pad(x, ((0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2), (0, 0)))
    oh, ow = -(-h // s), -(-w // s)
    out = np.zeros((n, oh, ow, k.shape[3]))
    for i in range(oh):
        for j in range(ow):
            out[:, i, j] = np.einsum("nhwc,hwco->no", xp[:, i * s:i * s + kh, j * s:j * s + kw, :], k)
    return out + b


def _np_forward(weights, arch, images, state) -> np.ndarray:
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    b = images.shape[0]
    feats = []
    for c in range(len(arch["cameras"])):
        for h in range(arch["history"]):
            x = images[:, c, h].astype(np.float64) / 255.0
            for i, layer in enumerate(arch["conv"]):
                x = np.maximum(_np_same_conv(x, w[f"encoder.{c}.conv{i}.kernel"], w[f"encoder.{c}.conv{i}.bias"],
                                             layer["stride"]), 0)
            feats.append(x.reshape(b, -1))  # row-major HWC
    z = np.concatenate(feats + [state.astype(np.float64)], axis=-1)
    for i in range(len(arch["mlp"])):
        z = np.maximum(z @ w[f"mlp.{i}.kernel"] + w[f"mlp.{i}.bias"], 0)
    return (z @ w["head.kernel"] + w["head.bias"]).reshape(b, arch["action_horizon"], arch["action_dim"])


@pytest.mark.parametrize("shape,kernel,stride,history,cams,state_dim", [
    ((24, 32), 3, 2, 1, 1, 0),      # the dev policy
    ((9, 14), 4, 3, 2, 2, 3),       # odd sizes (asymmetric SAME padding), 2 cameras, 2 frames, a state
])
def test_forward_matches_a_numpy_conv_mlp_v1(tmp_path, shape, kernel, stride, history, cams, state_dim):
    cfg = common.TrainConfig(history=history, action_horizon=3, image_size=shape, conv_features=(4, 5),
                             conv_kernel=kernel, conv_stride=stride, mlp_features=(7, 6))
    names = tuple(f"observation/cam{i}" for i in range(cams))
    io = common.PolicyIO(names, ((*shape, 3),) * cams, ("observation/s",) if state_dim else (),
                         (state_dim,) if state_dim else (), "action", 2, ("x", "y"), None, "test.v1")
    arch = common.architecture(cfg, io)
    torch.manual_seed(0)
    model = torch_lora.ConvMLPPolicy(arch)
    rng = np.random.default_rng(1)
    weights = {k: rng.normal(0, 0.4, v.shape).astype(np.float32) for k, v in torch_lora.export_weights(model).items()}
    torch_lora.load_export_weights(model, weights)
    got = torch_lora.export_weights(model)
    assert got.keys() == weights.keys() and all(np.array_equal(got[k], weights[k]) for k in weights)
    export = common.write_export(tmp_path / "export", weights,
                                 common.policy_document(cfg, io, None, framework="torch", step=0, dataset={}))
    images = rng.integers(0, 256, (3, cams, history, *shape, 3), dtype=np.uint8)
    state = rng.normal(size=(3, history * state_dim)).astype(np.float32)
    y = torch_lora.apply_export(export, images, state)
    assert y.shape == (3, 3, 2) and y.dtype == np.float32
    np.testing.assert_allclose(y, _np_forward(weights, arch, images, state), atol=1e-5, rtol=0)
    # the exported tensor layouts: conv HWIO, dense (in, out)
    assert weights["encoder.0.conv0.kernel"].shape == (kernel, kernel, 3, 4)
    assert weights["mlp.0.kernel"].shape == (cams * history * arch["encoder_out"] + history * state_dim, 7)


# --------------------------------------------------------------------------- resume


def test_resume_is_bit_for_bit(base_run, flipped, tmp_path):
    base = str(base_run["export"])
    kw = {"max_steps": 30, "checkpoint_every": 10, "log_every": 5, "lora_dropout": 0.1}  # dropout: the RNG matters
    full = torch_lora.train(_cfg(flipped, tmp_path / "a", **kw), base)
    assert full["status"] == "finished"
    want = _tensors(tmp_path / "a" / "adapters" / "candidate" / torch_lora.ADAPTER_WEIGHTS)

    cfg = _cfg(flipped, tmp_path / "b", **kw)
    first = torch_lora.train(cfg, base, stop_after=13)
    assert first["status"] == "stopped" and first["reason"].startswith("stop_after") and first["step"] == 13
    assert first["export"] is None and first["candidate"] is None
    rest = torch_lora.train(cfg, base, resume=True)
    assert rest["status"] == "finished" and rest["resumed_from"].endswith("step_00000013")
    got = _tensors(tmp_path / "b" / "adapters" / "candidate" / torch_lora.ADAPTER_WEIGHTS)
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(got[k], want[k]), k
    assert _tensors(tmp_path / "b" / "export" / "model.safetensors").keys() == \
        _tensors(tmp_path / "a" / "export" / "model.safetensors").keys()
    lines = (tmp_path / "b" / "metrics.csv").read_text().splitlines()
    steps = [int(ln.split(",")[0]) for ln in lines[1:]]
    assert steps == [5, 10, 15, 20, 25, 30]
    # resuming a finished run changes nothing
    cand = _hashes(tmp_path / "b" / "adapters")
    done = torch_lora.train(cfg, base, resume=True)
    assert done["status"] == "finished" and done["steps_run"] == 0 and "already finished" in done["note"]
    assert _hashes(tmp_path / "b" / "adapters") == cand

    # from the mirror: the local checkpoints are lost, the mirror's step-13 checkpoint is pulled
    cfg_m = _cfg(flipped, tmp_path / "c", mirror=str(tmp_path / "mirror"), **kw)
    torch_lora.train(cfg_m, base, stop_after=13)
    assert common.LocalMirror(tmp_path / "mirror").latest_step() == 13
    shutil.rmtree(tmp_path / "c" / "checkpoints")
    again = torch_lora.train(cfg_m, base, resume=True)
    assert again["status"] == "finished" and again["resume"].startswith("mirror")
    got = _tensors(tmp_path / "c" / "adapters" / "candidate" / torch_lora.ADAPTER_WEIGHTS)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert common.LocalMirror(tmp_path / "mirror").latest_step() == 30


# --------------------------------------------------------------------------- budgets, gate, signals


def test_budgets_and_gate_stop_with_a_reason(base_run, flipped, tmp_path):
    base = str(base_run["export"])
    big = {"max_steps": 100000, "log_every": 5, "checkpoint_every": 100000}
    s = torch_lora.train(_cfg(flipped, tmp_path / "wall", max_wall_seconds=0.5, **big), base)
    assert s["status"] == "stopped" and s["reason"].startswith("max_wall_seconds") and s["step"] < 100000
    assert Path(s["checkpoint"]).is_dir()
    assert json.loads((tmp_path / "wall" / "report.json").read_text())["reason"].startswith("max_wall_seconds")

    s = torch_lora.train(_cfg(flipped, tmp_path / "mem", max_memory_mb=1.0, **big), base)
    assert s["status"] == "stopped" and s["reason"].startswith("max_memory_mb") and "RSS" in s["reason"]
    assert json.loads((tmp_path / "mem" / "report.json").read_text())["reason"] == s["reason"]

    calls = []

    def gate():  # yes at the start and at step 5, no at step 10
        calls.append(1)
        return (len(calls) < 3, "battery at 12%, not charging")

    s = torch_lora.train(_cfg(flipped, tmp_path / "gate", **big), base, gate=gate)
    assert s["status"] == "stopped" and s["reason"] == "gate: battery at 12%, not charging" and s["step"] == 10
    arrays, meta = common.Checkpoints.load(common.Checkpoints(tmp_path / "gate").latest())
    assert meta["step"] == 10 and meta["loader"]["next_batch"] == 10 and any(k.startswith("optim/") for k in arrays)
    assert json.loads((tmp_path / "gate" / "report.json").read_text())["reason"].startswith("gate:")

    s = torch_lora.train(_cfg(flipped, tmp_path / "nogo", **big), base, gate=lambda: (False, "too hot"))
    assert s["reason"] == "gate: too hot" and s["step"] is None
    assert common.Checkpoints(tmp_path / "nogo").latest() is None


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_stub_hooks_dry_run_exits_0(tmp_path, base_run):
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "trainers.torch_lora", "--config", "trainers/configs/pi5-donkey.json",
                        "--out", str(tmp_path / "run"), "--use-stub-hooks"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "dry run" in r.stdout and "stub loop" in r.stdout
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["reason"] == "max_steps" and summary["step"] == 2000 and summary["mirror_step"] == 2000
    assert summary["slots"] == ["current", "history"]
    assert not (tmp_path / "run" / "checkpoints").exists()  # only under dry_run/
    print(f"\nstub dry run: {time.monotonic() - t:.1f} s in a subprocess")
    # in-process, with a base and a gate that says no after the start
    calls = []
    cfg = _cfg(base_run["cfg"].data, tmp_path / "run2", max_steps=50, log_every=5)
    s = torch_lora.dry_run(cfg, str(base_run["export"]), gate=lambda: (calls.append(1) or len(calls) < 2, "busy"),
                           echo=lambda _: None)
    assert s["reason"] == "gate: busy" and s["step"] == 5


def test_sigterm_leaves_a_complete_checkpoint(base_run, flipped, tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"preset": "dev", **RUN, "max_steps": 1000000, "log_every": 5,
                                    "checkpoint_every": 1000000}))
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "trainers.torch_lora", "--config", str(cfg_file), "--data", str(flipped),
                          "--base", str(base_run["export"]), "--out", str(out)], cwd=REPO, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and p.poll() is None:
            csv = out / "metrics.csv"
            if csv.exists() and len(csv.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        assert p.poll() is None, p.communicate()[1]
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["status"] == "stopped" and summary["reason"].startswith("preempted")
    latest = common.Checkpoints(out).latest()
    arrays, meta = common.Checkpoints.load(latest)
    assert meta["step"] == summary["step"] >= 10 and meta["complete"] and meta["mode"] == "lora"
    assert any(k.startswith("param/") and "lora_A" in k for k in arrays) and "rng/torch" in arrays


# --------------------------------------------------------------------------- slots and promotion


def test_slots_promote_good_and_reject_bad_candidates(lora_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(lora_run["out"] / "adapters", out / "adapters")
    slots = out / "adapters"
    cfg = lora_run["cfg"]
    r = torch_lora.promote(out, cfg)
    assert r["promoted"] and r["decision"] == "promoted" and r["reference"]["kind"] == "base"
    assert r["candidate"]["distance"] < r["reference"]["distance"]
    assert r["candidate"]["violation_rate"] <= r["reference"]["violation_rate"] + r["violation_allowance"]
    assert r["candidate"]["max_delta_ok"] and r["checks"] == {"distance": True, "violation_rate": True, "max_delta": True}
    assert (slots / "current" / torch_lora.ADAPTER_WEIGHTS).is_file() and not (slots / "candidate").exists()
    assert json.loads((slots / "promotion_report.json").read_text())["decision"] == "promoted"
    print(f"\npromotion: distance {r['reference']['distance']:.3f} (base) -> {r['candidate']['distance']:.3f}")

    # a bad candidate (adapter scaled up: actions far out of bounds) is rejected, current untouched
    current = _hashes(slots / "current")
    shutil.copytree(slots / "current", slots / "candidate")
    from safetensors.numpy import save_file

    w = _tensors(slots / "candidate" / torch_lora.ADAPTER_WEIGHTS)
    save_file({k: v * 30 if "lora_B" in k else v for k, v in w.items()}, str(slots / "candidate" / torch_lora.ADAPTER_WEIGHTS))
    r = torch_lora.promote(out, cfg)
    assert not r["promoted"] and r["decision"].startswith("rejected") and r["reference"]["kind"] == "current"
    assert r["candidate"]["violations"] > 0 and r["candidate"]["max_overshoot"] > 1 and not r["checks"]["violation_rate"]
    assert _hashes(slots / "current") == current
    assert json.loads((slots / "promotion_report.json").read_text())["promoted"] is False

    # a worse-by-margin requirement rejects an identical candidate; equal quality passes without margin
    shutil.rmtree(slots / "candidate")
    shutil.copytree(slots / "current", slots / "candidate")
    assert torch_lora.promote(out, cfg, margin=0.01)["decision"] == "rejected (distance)"
    # history keeps the newest 3
    for _ in range(4):
        if not (slots / "candidate").exists():
            shutil.copytree(slots / "current", slots / "candidate")
        assert torch_lora.promote(out, cfg)["promoted"]
    hist = sorted(p.name for p in (slots / "history").iterdir())
    assert len(hist) == 3
    assert json.loads((slots / "promotion_report.json").read_text())["history"] == hist
    # nothing to promote: a report all the same
    assert torch_lora.promote(out, cfg)["decision"] == "no candidate"


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors(base_run, bars, tmp_path, capsys):
    cfg = _cfg(bars, tmp_path / "out", max_steps=5)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="policy.json"):
        torch_lora.train(cfg, str(empty))
    with pytest.raises(ValueError, match="no such export folder|policy.json"):
        torch_lora.train(cfg, str(tmp_path / "missing"))
    corrupt = tmp_path / "corrupt"
    shutil.copytree(base_run["export"], corrupt)
    (corrupt / "policy.json").write_text("{\"format\": \"rldskit-policy\", ")
    with pytest.raises(ValueError, match=r"policy.json: not valid JSON"):
        torch_lora.train(cfg, str(corrupt))
    bad_weights = tmp_path / "bad_weights"
    shutil.copytree(base_run["export"], bad_weights)
    (bad_weights / "model.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="model.safetensors"):
        torch_lora.train(cfg, str(bad_weights))
    with pytest.raises(ValueError, match=r"architecture mismatch in 'mlp'"):
        torch_lora.train(_cfg(bars, tmp_path / "o2", mlp_features=(32,)), str(base_run["export"]))
    with pytest.raises(ValueError, match=r"architecture mismatch in 'image_size'"):
        torch_lora.train(_cfg(bars, tmp_path / "o3", image_size=(12, 16)), str(base_run["export"]))
    with pytest.raises(ValueError, match=r"architecture mismatch in 'action_horizon'"):
        torch_lora.train(_cfg(bars, tmp_path / "o4", action_horizon=4), str(base_run["export"]))
    with pytest.raises(common.ConfigError, match="lora_rank"):
        torch_lora.train(_cfg(bars, tmp_path / "o5", lora_rank=0), str(base_run["export"]))
    assert not (tmp_path / "out" / "checkpoints").exists()
    # a fresh run refuses a folder with checkpoints
    with pytest.raises(ValueError, match="--resume"):
        torch_lora.train(base_run["cfg"], None, full=True)
    # an unknown config key, through the CLI: exit 2 and the key named
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"preset": "dev", "lora_rnak": 4}))
    assert torch_lora.main(["--config", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "lora_rnak" in err and str(bad) in err
    with pytest.raises(common.ConfigError, match="lora_rnak"):
        common.load_config(bad)
    assert torch_lora.main(["--config", str(bad.with_name("none.json"))]) == 2
