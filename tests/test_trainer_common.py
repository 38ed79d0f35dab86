"""What both trainers share (``trainers/common.py``): configs and presets, the export format,
atomic checkpoints, the local and Hub mirrors, preemption, metrics and the trainer selector."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors")

from trainers import common as C  # noqa: E402


# --------------------------------------------------------------------------- config


def test_presets_file_and_overrides_layer_in_that_order(tmp_path):
    assert C.load_config().preset == "dev"
    pi5 = C.load_config(preset="pi5")
    assert pi5.image_size == (60, 80) and pi5.conv_features == (16, 32, 32)
    f = tmp_path / "cfg.json"
    f.write_text(json.dumps({"preset": "pi5", "batch_size": 8, "image_size": [30, 40], "max_wall_seconds": 5}))
    cfg = C.load_config(f, overrides={"batch_size": 4, "mirror": None})
    assert (cfg.preset, cfg.batch_size, cfg.image_size, cfg.max_wall_seconds) == ("pi5", 4, (30, 40), 5.0)
    assert cfg.mlp_features == (128, 128)  # from the preset
    assert C.load_config(f, preset="dev").conv_features == (8, 16)  # an explicit preset wins over the file's
    again = C.load_config(overrides=C.config_to_dict(cfg))
    assert again == cfg


@pytest.mark.parametrize("bad, match", [
    ({"batch_sise": 3}, "unknown config key 'batch_sise'"),
    ({"batch_size": "8"}, "batch_size has the wrong type"),
    ({"batch_size": True}, "batch_size has the wrong type"),
    ({"image_size": [24]}, "image_size must be"),
    ({"conv_features": [8, "16"]}, "conv_features must be a list of integers"),
    ({"precision": "float16"}, "precision must be"),
    ({"preset": "gpu"}, "unknown preset 'gpu'"),
    ({"learning_rate": -1.0}, "learning_rate"),
])
def test_bad_configs_name_the_file_and_key(tmp_path, bad, match):
    f = tmp_path / "cfg.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(C.ConfigError, match=match) as e:
        C.load_config(f)
    assert "cfg.json" in str(e.value) or "preset" in match


def test_unreadable_config_files(tmp_path):
    with pytest.raises(C.ConfigError, match="not a readable JSON config"):
        C.load_config(tmp_path / "missing.json")
    (tmp_path / "torn.json").write_text('{"batch_size": 3')
    with pytest.raises(C.ConfigError, match="torn.json"):
        C.load_config(tmp_path / "torn.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(C.ConfigError, match="JSON object"):
        C.load_config(tmp_path / "list.json")


def test_geometry_helpers_match_tensorflow_same_padding():
    for n in range(1, 40):
        for k in (1, 3, 5):
            for s in (1, 2, 3):
                before, after = C.same_padding(n, k, s)
                out = C.conv_out_size(n, s)
                assert (n + before + after - k) // s + 1 == out  # a VALID conv of the padded input
                assert before <= after <= before + 1
    cfg = C.load_config(preset="pi5")
    assert C.encoder_out_dim(cfg) == 8 * 10 * 32


# --------------------------------------------------------------------------- export


def _weights(rng):
    return {"head.kernel": rng.normal(size=(4, 3)).astype(np.float32), "head.bias": np.zeros(3, np.float32)}


def test_export_round_trip_and_atomic_replacement(tmp_path):
    rng = np.random.default_rng(0)
    w = _weights(rng)
    policy = {"format": C.FORMAT, "format_version": C.FORMAT_VERSION, "architecture": {"type": "conv_mlp"}}
    out = C.write_export(tmp_path / "export", w, policy)
    got, pol = C.read_export(out)
    assert pol == policy and set(got) == set(w)
    for k in w:
        np.testing.assert_array_equal(got[k], w[k])
    w2 = {k: v + 1 for k, v in w.items()}
    C.write_export(out, w2, policy)  # replaces the folder whole
    np.testing.assert_array_equal(C.read_export(out)[0]["head.kernel"], w2["head.kernel"])
    assert [p.name for p in tmp_path.iterdir()] == ["export"], "no temporary or old folders left behind"


def test_broken_exports_are_refused_with_the_file_named(tmp_path):
    rng = np.random.default_rng(1)
    policy = {"format": C.FORMAT, "format_version": C.FORMAT_VERSION}
    out = C.write_export(tmp_path / "e", _weights(rng), policy)
    data = (out / C.EXPORT_WEIGHTS).read_bytes()
    (out / C.EXPORT_WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        C.read_export(out)
    (out / C.EXPORT_POLICY).write_text('{"format": "something-else", "format_version": 1}')
    with pytest.raises(ValueError, match="not an rldskit-policy v1 policy"):
        C.read_export(out)
    (out / C.EXPORT_POLICY).unlink()
    with pytest.raises(ValueError, match="policy.json"):
        C.read_export(out)


# --------------------------------------------------------------------------- checkpoints and mirrors


def _save(ck: C.Checkpoints, step: int) -> Path:
    return ck.save(step, {"params/w": np.full((3,), step, np.float32), "opt/count": np.array(step)},
                   {"loader": {"next_batch": step}, "rng": [1, 2]})


def test_checkpoints_keep_the_newest_and_skip_incomplete_ones(tmp_path):
    ck = C.Checkpoints(tmp_path / "run", keep=2)
    for s in (10, 20, 30):
        _save(ck, s)
    assert [p.name for p in ck.list()] == ["step_00000020", "step_00000030"]
    arrays, meta = C.Checkpoints.load(ck.latest())
    assert meta["step"] == 30 and meta["loader"] == {"next_batch": 30} and meta["complete"]
    np.testing.assert_array_equal(arrays["params/w"], np.full((3,), 30, np.float32))
    # what a crash leaves: a temporary folder and a step folder without its files are ignored
    (ck.root / ".tmp-crashed").mkdir()
    (ck.root / ".tmp-crashed" / "meta.json").write_text("{}")
    (ck.root / "step_00000099").mkdir()
    assert ck.latest().name == "step_00000030"
    (ck.root / "step_00000099" / "meta.json").write_text('{"step": 99}')
    (ck.root / "step_00000099" / "state.safetensors").write_bytes(b"torn")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        C.Checkpoints.load(ck.root / "step_00000099")


def test_a_kill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    """A child process saves checkpoints in a loop and is SIGKILLed at a random moment; the
    newest complete checkpoint must always load."""
    code = (
        "import sys, numpy as np; sys.path.insert(0, %r)\n"
        "from trainers.common import Checkpoints\n"
        "ck = Checkpoints(%r, keep=2)\n"
        "s = 0\n"
        "while True:\n"
        "    s += 1\n"
        "    ck.save(s, {'w': np.full((200000,), s, np.float32)}, {'loader': s})\n"
        "    print(s, flush=True)\n"
    ) % (str(Path(__file__).resolve().parents[1]), str(tmp_path / "run"))
    for delay in (0.5, 0.8, 1.1):
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        first = p.stdout.readline()
        assert first.strip().isdigit()
        import time

        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        ck = C.Checkpoints(tmp_path / "run")
        arrays, meta = C.Checkpoints.load(ck.latest())
        assert (arrays["w"] == meta["step"]).all() and meta["loader"] == meta["step"]


def test_local_mirror_push_latest_and_pull(tmp_path):
    ck = C.Checkpoints(tmp_path / "run")
    m = C.open_mirror(str(tmp_path / "mirror"))
    assert isinstance(m, C.LocalMirror) and m.latest_step() is None
    m.push(_save(ck, 5))
    m.push(_save(ck, 7))
    assert m.latest_step() == 7
    got = m.pull(tmp_path / "pulled")
    assert C.Checkpoints.load(got)[1]["step"] == 7
    assert sorted(p.name for p in (tmp_path / "mirror" / "checkpoints").iterdir()) == ["last"]


class _RecordingHubApi:
    """Stands in for the network side of ``huggingface_hub.HfApi`` (no network here): records the
    calls and keeps what was uploaded in a folder, as the Hub repo would."""

    def __init__(self, store: Path):
        self.store, self.calls = store, []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, *, folder_path, repo_id, path_in_repo, delete_patterns, **kw):
        import shutil

        self.calls.append(("upload_folder", repo_id, path_in_repo, delete_patterns, kw))
        dest = self.store / path_in_repo
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(folder_path, dest)


def test_hub_mirror_makes_the_documented_calls(tmp_path):
    store = tmp_path / "hub"
    api = _RecordingHubApi(store)

    def download(*, repo_id, filename, repo_type):
        from huggingface_hub.errors import EntryNotFoundError

        f = store / filename
        if not f.exists():
            raise EntryNotFoundError(f"{filename} not found")
        return str(f)

    def snapshot(*, repo_id, repo_type, allow_patterns):
        assert allow_patterns == ["checkpoints/last/*"]
        return str(store)

    pytest.importorskip("huggingface_hub")
    m = C.HubMirror("me/run", api=api, download=download, snapshot=snapshot)
    assert m.latest_step() is None
    ck = C.Checkpoints(tmp_path / "run", keep=1)
    m.push(_save(ck, 3))
    m.push(_save(ck, 4))  # waits for the first upload; the local step 3 is pruned meanwhile
    m.wait()
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder", "upload_folder"]
    up = api.calls[-1]
    assert up[1:4] == ("me/run", "checkpoints/last", ["*"]) and up[4]["commit_message"] == "checkpoint step 4"
    assert up[4]["repo_type"] == "model"
    assert m.latest_step() == 4
    assert C.Checkpoints.load(m.pull(tmp_path / "pulled"))[1]["step"] == 4


def test_hub_mirror_reports_a_failed_upload_on_wait(tmp_path):
    class Failing(_RecordingHubApi):
        def upload_folder(self, **kw):
            raise OSError("connection reset")

    m = C.HubMirror("me/run", api=Failing(tmp_path), download=lambda **k: None, snapshot=lambda **k: None)
    m.push(_save(C.Checkpoints(tmp_path / "run"), 1))
    with pytest.raises(RuntimeError, match="hf://me/run: checkpoint upload failed: connection reset"):
        m.wait()


# --------------------------------------------------------------------------- preemption, metrics, selector


def test_preemption_guard_turns_sigterm_into_a_request():
    with C.PreemptionGuard() as g:
        assert g.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert g.requested == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None) or callable(signal.getsignal(signal.SIGTERM))


def test_metrics_append_and_drop_rows_past_a_resume(tmp_path):
    m = C.MetricsWriter(tmp_path)
    for s in (10, 20, 30):
        m.write({"step": s, "loss": 1.0 / s, "lr": 1e-3})
    m.close()
    m = C.MetricsWriter(tmp_path, resume_step=20)
    m.write({"step": 30, "loss": 0.5})
    m.close()
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == ",".join(C.MetricsWriter.COLUMNS) and [r.split(",")[0] for r in rows[1:]] == ["10", "20", "30"]
    assert rows[-1].split(",")[1] == "0.5"


def test_trainer_selector():
    assert C.select_trainer({"RLDSKIT_PREFER_JAX": "1"})[0] == "jax"
    assert C.select_trainer({"RLDSKIT_PREFER_JAX": "0"})[0] == "torch"
    name, why = C.select_trainer({})
    assert name in ("jax", "torch") and why
    if name == "torch":
        assert "CPU" in why or "not installed" in why


def test_common_imports_neither_jax_nor_torch():
    code = ("import sys, trainers.common; bad = [m for m in ('jax', 'torch', 'tensorflow', 'flax') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stdout + r.stderr
