"""``rldskit pipeline``: the staged flow validate -> convert -> stats -> train -> export -> bundle,
opt-in stages, re-runs that skip what is up to date, and gates that stop with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("torch")

from helpers_train import write_held_out_shift_episodes  # noqa: E402

from rldskit import read_episode  # noqa: E402
from rldskit.cli import main  # noqa: E402
from rldskit.spec import load_spec  # noqa: E402
from rldskit.synth import write_synthetic  # noqa: E402


@pytest.fixture()
def episodes(tmp_path) -> Path:
    spec = load_spec("pi5_donkey.v1").with_image_shape("observation/image", (24, 32, 3))
    write_synthetic(spec, tmp_path / "cap", 6, 20, seed=0)
    return tmp_path / "cap"


def test_the_whole_flow_then_a_rerun_that_skips_everything(episodes, tmp_path, capsys):
    from edge_runtime.bundle import generate_keypair, verify_bundle

    key, pub = generate_keypair(tmp_path / "signing")
    work, bundles = tmp_path / "work", tmp_path / "bundles"
    argv = ["pipeline", "--episodes", str(episodes), "--out", str(work), "--name", "donkey", "--train", "torch",
            "--max-steps", "12", "--export", str(bundles), "--key", str(key), "--runner", "inline"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for stage in ("[validate]", "[convert]", "[stats]", "[train]", "[export]", "[bundle]"):
        assert stage in out, out
    dataset = work / "data" / "donkey" / "1.0.0"
    assert (dataset / "stats.json").is_file() and (work / "runs" / "policy" / "export" / "policy.json").is_file()
    vb = verify_bundle(bundles / "bundle-0.1.0.zip", trusted_keys=pub, compat="pi5_donkey.v1")
    assert vb.signed and vb.manifest["version"] == "0.1.0"
    state = json.loads((work / "pipeline_state.json").read_text())
    assert set(state) == {"validate", "convert", "stats", "train", "bundle"}

    assert main(argv) == 0
    out = capsys.readouterr().out
    skipped = [ln for ln in out.splitlines() if ln.startswith("[") and "up to date" in ln]
    assert len(skipped) == 5, out  # validate, convert, stats, train, bundle; export re-checks the load


def test_the_trained_policy_normalises_with_the_training_episodes_only(tmp_path, capsys):
    """The stats stage writes ``stats.json`` over the whole train split, held-out episodes
    included; the policy the train stage exports must be normalised by the training selection
    (``train[:90%]``: the 18 bar episodes, not the 2 shifted held-out ones)."""
    cap = write_held_out_shift_episodes(tmp_path / "eps", train=18, held_out=2, steps=12)
    work = tmp_path / "work"
    assert main(["pipeline", "--episodes", str(cap), "--out", str(work), "--name", "shifted", "--train", "torch",
                 "--max-steps", "2", "--runner", "inline"]) == 0
    capsys.readouterr()
    eps = sorted(p for p in cap.iterdir() if p.is_dir())
    actions = {p.name: np.asarray(read_episode(p).steps["action"], np.float64) for p in eps}
    train = np.concatenate([a for k, a in actions.items() if k.startswith("bar_")])
    whole = np.concatenate(list(actions.values()))
    stats = json.loads((work / "data" / "shifted" / "1.0.0" / "stats.json").read_text())
    np.testing.assert_allclose(stats["action"]["mean"], whole.mean(0), rtol=1e-6)  # the file covers everything
    norm = json.loads((work / "runs" / "policy" / "export" / "policy.json").read_text())["normalization"]
    np.testing.assert_allclose(norm["features"]["action"]["shift"], train.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(norm["features"]["action"]["scale"], train.std(0), rtol=1e-5, atol=1e-7)
    assert np.abs(train.mean(0) - whole.mean(0)).min() > 0.05
    assert (norm["statistics"]["split"], norm["statistics"]["episodes"]) == ("train[:90%]", 18)


def test_stages_that_are_off_say_what_would_run(episodes, tmp_path, capsys):
    work = tmp_path / "work"
    assert main(["pipeline", "--episodes", str(episodes), "--out", str(work), "--stages", "validate",
                 "--runner", "inline"]) == 0
    out = capsys.readouterr().out
    assert "[convert] off; would run: rldskit convert" in out and "[train] off; would run: python -m trainers" in out
    assert not (work / "data").exists()


def test_the_first_failing_gate_stops_with_the_reason(episodes, tmp_path, capsys):
    ep = sorted(p for p in episodes.iterdir() if p.is_dir())[2]
    frame = sorted((ep / "frames").rglob("*.jpg"))[5]
    frame.unlink()  # a lost frame: validation must refuse, and nothing is converted
    work = tmp_path / "work"
    assert main(["pipeline", "--episodes", str(episodes), "--out", str(work), "--runner", "inline"]) == 1
    err = capsys.readouterr().err
    assert "pipeline stopped: validation failed" in err and ep.name in err
    assert not (work / "data").exists()
    # skipping validation lets conversion quarantine the episode: the convert gate stops there
    assert main(["pipeline", "--episodes", str(episodes), "--out", str(work), "--stages", "convert,stats",
                 "--runner", "inline"]) == 1
    assert "quarantined" in capsys.readouterr().err
    assert main(["pipeline", "--episodes", str(episodes), "--out", str(work), "--stages", "convert",
                 "--runner", "inline", "--allow-quarantine", "--force"]) == 0


def test_bad_usage(episodes, tmp_path, capsys):
    assert main(["pipeline", "--episodes", str(tmp_path / "nope"), "--out", str(tmp_path / "w")]) == 2
    assert main(["pipeline", "--episodes", str(episodes), "--out", str(tmp_path / "w"), "--stages", "convert,fly"]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert main(["pipeline", "--episodes", str(episodes), "--out", str(tmp_path / "w"), "--stages", "train",
                 "--runner", "inline"]) == 1
    assert "no converted dataset" in capsys.readouterr().err
