"""The JAX behaviour-cloning trainer (``trainers/jax_bc.py``) on the bar dataset
(``helpers_train.bar_dataset``): it learns, resumes bit for bit (from a stop, SIGTERM or a mirror),
shards the batch over devices without changing the losses, overfits one batch with ``--sanity-check``,
exports the documented ``conv_mlp`` v1 names, and rejects bad configs and data with clear messages.
Real JAX on CPU throughout."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("flax")
pytest.importorskip("optax")

from helpers_train import bar_dataset  # noqa: E402

from trainers import common, jax_bc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bars(tmp_path_factory) -> Path:
    return bar_dataset(tmp_path_factory.mktemp("bars"))


def _cfg(data: Path, out: Path, **kw) -> common.TrainConfig:
    return common.load_config(None, "dev", {"data": str(data), "out": str(out), **kw})


def _env(**extra) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _metric_steps(run: Path) -> list[int]:
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == list(common.MetricsWriter.COLUMNS)
    return [int(ln.split(",")[0]) for ln in lines[1:] if ln.strip()]


# --------------------------------------------------------------------------- the forward matches the spec


def _np_same_conv(x: np.ndarray, k: np.ndarray, b: np.ndarray, s: int) -> np.ndarray:
    """``common``'s docstring, literally: TF SAME padding (smaller half before), HWIO kernel."""
    n, h, w, _ = x.shape
    kh = k.shape[0]
    (pt, pb), (pl, pr) = common.same_padding(h, kh, s), common.same_padding(w, kh, s)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = common.conv_out_size(h, s), common.conv_out_size(w, s)
    out = np.zeros((n, oh, ow, k.shape[3]))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * s:i * s + kh, j * s:j * s + kh, :]
            out[:, i, j] = np.einsum("nhwc,hwco->no", patch, k)
    return out + b


def _np_forward(weights: dict, arch: dict, images: np.ndarray, state: np.ndarray) -> np.ndarray:
    b = images.shape[0]
    feats = []
    for c in range(len(arch["cameras"])):
        for h in range(arch["history"]):
            x = images[:, c, h].astype(np.float64) / 255.0
            for i, layer in enumerate(arch["conv"]):
                x = np.maximum(_np_same_conv(x, weights[f"encoder.{c}.conv{i}.kernel"],
                                             weights[f"encoder.{c}.conv{i}.bias"], layer["stride"]), 0)
            feats.append(x.reshape(b, -1))
    z = np.concatenate(feats + [state], axis=-1)
    for i in range(len(arch["mlp"])):
        z = np.maximum(z @ weights[f"mlp.{i}.kernel"] + weights[f"mlp.{i}.bias"], 0)
    return (z @ weights["head.kernel"] + weights["head.bias"]).reshape(b, arch["action_horizon"], arch["action_dim"])


def test_forward_is_the_documented_conv_mlp_v1(tmp_path):
    # two cameras, two history frames, a state, an odd frame size (asymmetric SAME padding)
    cfg = common.TrainConfig(history=2, action_horizon=3, image_size=(9, 14), conv_features=(4, 5), conv_kernel=3,
                             conv_stride=2, mlp_features=(7, 6))
    io = common.PolicyIO(("observation/a", "observation/b"), ((9, 14, 3), (9, 14, 3)), ("observation/s",), (3,),
                         "action", 2, ("x", "y"), None, "test.v1")
    arch = common.architecture(cfg, io)
    model = jax_bc.build_model(arch, seed=3)
    rng = np.random.default_rng(0)
    weights = {k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in jax_bc.export_weights(model).items()}
    jax_bc.load_weights(model, weights)
    assert jax_bc.export_weights(model).keys() == weights.keys()
    images = rng.integers(0, 256, (4, 2, 2, 9, 14, 3), dtype=np.uint8)
    state = rng.normal(size=(4, 6)).astype(np.float32)
    doc = {"format": "rldskit-policy", "format_version": 1, "architecture": arch,
           "inputs": {"cameras": {c: {"shape": [9, 14, 3]} for c in io.cameras}}}
    common.write_export(tmp_path / "export", weights, doc)
    got = jax_bc.apply_export(tmp_path / "export", images, state)
    want = _np_forward({k: v.astype(np.float64) for k, v in weights.items()}, arch, images, state)
    assert got.shape == (4, 3, 2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="missing"):
        jax_bc.load_weights(model, {k: v for k, v in weights.items() if k != "head.bias"})


# --------------------------------------------------------------------------- learning


def test_learns_the_bars_held_out(bars, tmp_path):
    cfg = _cfg(bars, tmp_path / "run", max_steps=300, learning_rate=5e-3, log_every=50, checkpoint_every=1000)
    summary = jax_bc.train(cfg)
    assert summary["finished"] and summary["step"] == 300 and summary["stopped"] == "done"
    before = jax_bc.evaluate(jax_bc.new_model(cfg), cfg)
    after = jax_bc.evaluate(summary["export"], cfg)
    print(f"held-out masked MSE: untrained {before:.4f}, trained {after:.4f} ({summary['steps_per_s']:.0f} steps/s)")
    assert after < 0.3 * before
    weights, policy = common.read_export(summary["export"])
    assert policy["evidence"]["eval_mse"] == pytest.approx(after, rel=1e-5)
    assert policy["trainer"]["framework"] == "jax" and policy["trainer"]["step"] == 300
    assert policy["dataset"]["name"] == "bars" and policy["dataset"]["spec_id"] == "pi5_donkey.v1"
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [50, 100, 150, 200, 250, 300]
    assert all(set(r) == set(common.MetricsWriter.COLUMNS) and np.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] and all(r["data_wait_s"] >= 0 and r["samples_per_s"] > 0 for r in rows)
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == common.config_to_dict(cfg)


def test_bfloat16_computes_with_float32_params(bars, tmp_path):
    cfg = _cfg(bars, tmp_path / "run", max_steps=6, precision="bfloat16", log_every=2)
    summary, model, _ = jax_bc._run(cfg, do_export=False, quiet=True)
    assert all(np.isfinite(summary["losses"])) and len(summary["losses"]) == 6
    assert all(v.dtype == np.float32 for v in jax_bc.export_weights(model).values())


# --------------------------------------------------------------------------- resume


RESUME = dict(max_steps=30, checkpoint_every=10, log_every=5)


@pytest.fixture(scope="module")
def uninterrupted(bars, tmp_path_factory) -> tuple[dict, dict[str, np.ndarray]]:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    summary = jax_bc.train(_cfg(bars, out, **RESUME))
    return summary, common.read_export(summary["export"])[0]


def _assert_same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_stop_and_resume_is_bit_exact(bars, tmp_path, uninterrupted):
    full, full_weights = uninterrupted
    cfg = _cfg(bars, tmp_path / "run", **RESUME)
    first = jax_bc.train(cfg, stop_after=12)
    assert (first["step"], first["finished"], first["stopped"], first["export"]) == (12, False, "stop_after", None)
    assert common.Checkpoints.step_of(common.Checkpoints(tmp_path / "run").latest()) == 12
    with pytest.raises(common.ConfigError, match="--resume"):
        jax_bc.train(cfg)  # a fresh run must not silently train over existing checkpoints
    second = jax_bc.train(cfg, resume=True)
    assert (second["resumed_from"], second["resume_source"], second["step"]) == (12, "local", 30)
    assert first["losses"] + second["losses"] == full["losses"]
    _assert_same_weights(common.read_export(second["export"])[0], full_weights)
    steps = _metric_steps(tmp_path / "run")
    assert steps == sorted(set(steps)) and steps[-1] == 30 and 12 in steps


def test_local_mirror_resumes_after_the_run_folder_is_lost(bars, tmp_path, uninterrupted):
    _, full_weights = uninterrupted
    run, mirror = tmp_path / "run", tmp_path / "mirror"
    cfg = _cfg(bars, run, mirror=str(mirror), **RESUME)
    jax_bc.train(cfg, stop_after=15)
    m = common.LocalMirror(mirror)
    assert m.latest_step() == 15
    assert sorted(p.name for p in m.last.iterdir()) == ["meta.json", "state.safetensors"]
    shutil.rmtree(run)
    code = jax_bc.main(["--data", str(bars), "--preset", "dev", "--out", str(run), "--mirror", str(mirror), "--resume",
                        "--config", str(_write(tmp_path / "cfg.json", RESUME))])
    assert code == 0
    assert m.latest_step() == 30
    assert common.Checkpoints.step_of(common.Checkpoints(run).latest()) == 30
    _assert_same_weights(common.read_export(run / "export")[0], full_weights)


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_sigterm_checkpoints_the_step_reached_and_resume_continues(bars, tmp_path, capsys):
    run = tmp_path / "run"
    cfg_file = _write(tmp_path / "cfg.json", {"max_steps": 100000, "checkpoint_every": 25, "log_every": 5})
    args = ["--data", str(bars), "--preset", "dev", "--config", str(cfg_file), "--out", str(run)]
    proc = subprocess.Popen([sys.executable, "-m", "trainers.jax_bc", *args], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not common.Checkpoints(run).list():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint after 90 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    reached = summary["step"]
    assert summary["stopped"] == "preempted" and not summary["finished"] and reached >= 25
    latest = common.Checkpoints(run).latest()
    arrays, meta = common.Checkpoints.load(latest)
    assert meta["step"] == reached and meta["loader"]["next_batch"] == reached and meta["complete"]
    assert any(k.startswith("opt/") for k in arrays) and "rng" in arrays
    assert _metric_steps(run)[-1] == reached
    capsys.readouterr()
    assert jax_bc.main([*args, "--resume", "--max-steps", str(reached + 10)]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (resumed["resumed_from"], resumed["step"], resumed["finished"]) == (reached, reached + 10, True)
    steps = _metric_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == reached + 10


# --------------------------------------------------------------------------- data parallel


def test_two_devices_give_the_same_losses(bars, tmp_path):
    kw = dict(max_steps=8, log_every=1, checkpoint_every=1000)
    script = textwrap.dedent(f"""
        import json
        from trainers import common, jax_bc
        cfg = common.load_config(None, "dev", {{"data": {str(bars)!r}, "out": {str(tmp_path / "two")!r}, **{kw!r}}})
        s = jax_bc.train(cfg)
        print(json.dumps({{"devices": s["devices"], "losses": s["losses"]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    one = jax_bc.train(_cfg(bars, tmp_path / "one", **kw))
    assert (one["devices"], two["devices"]) == (1, 2)
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- sanity check, export format


def test_sanity_check_overfits_one_batch_and_exports_the_documented_names(bars, tmp_path):
    # more on the check (every schema, what it detects and what it does not): tests/test_trainer_sanity.py
    out = tmp_path / "sanity"
    assert jax_bc.main(["--data", str(bars), "--preset", "dev", "--sanity-check", "--out", str(out)]) == 0
    proof = json.loads((out / "proof_of_learning.json").read_text())
    assert proof["passed"] and proof["failures"] == [] and proof["steps"] == jax_bc.SANITY_STEPS
    curve = proof["loss_curve"]
    assert len(curve) == jax_bc.SANITY_STEPS + 1 and curve[-1] <= common.SANITY_RATIO * curve[0]
    assert all(t["l2"] > 0 for t in proof["param_update"]["per_tensor"].values())
    assert proof["output_shape"] == [proof["config"]["batch_size"], 8, 2]

    weights, policy = common.read_export(out / "export")
    cfg = _cfg(bars, out)
    io = jax_bc._io(cfg)
    arch = common.architecture(cfg, io)
    assert policy["architecture"] == json.loads(json.dumps(arch))
    assert policy["evidence"]["proof_of_learning"]["loss_curve"] == curve
    assert policy["normalization"]["features"]["action"]["scale"]
    h, w = cfg.image_size
    eo = common.encoder_out_dim(cfg)
    want = {"encoder.0.conv0.kernel": (3, 3, 3, 8), "encoder.0.conv0.bias": (8,),
            "encoder.0.conv1.kernel": (3, 3, 8, 16), "encoder.0.conv1.bias": (16,),
            "mlp.0.kernel": (eo, 64), "mlp.0.bias": (64,), "head.kernel": (64, 16), "head.bias": (16,)}
    assert eo == 6 * 8 * 16 == arch["encoder_out"]
    assert {k: v.shape for k, v in weights.items()} == want
    assert all(v.dtype == np.float32 for v in weights.values())


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("content, key", [({"max_steps": 5, "bogus_key": 1}, "bogus_key"),
                                          ({"batch_size": "sixteen"}, "batch_size"),
                                          ({"conv_features": [8, "x"]}, "conv_features")])
def test_bad_config_names_the_key(bars, tmp_path, capsys, content, key):
    cfg_file = _write(tmp_path / "cfg.json", content)
    code = jax_bc.main(["--data", str(bars), "--config", str(cfg_file), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and key in err and str(cfg_file) in err
    assert not (tmp_path / "run").exists()


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope" / "1.0.0"
    assert jax_bc.main(["--data", str(missing), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such dataset folder" in err
    (tmp_path / "empty").mkdir()
    assert jax_bc.main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run")]) == 2
    assert "not a converted rldskit dataset" in capsys.readouterr().err
    assert jax_bc.main(["--out", str(tmp_path / "run")]) == 2
    assert "--data" in capsys.readouterr().err
