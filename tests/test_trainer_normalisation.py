"""The trainers normalise with statistics of the training selection only (``cfg.train_split``),
never of the held-out episodes (``cfg.eval_split``), whatever ``stats.json`` lies beside the data
(``rldskit stats`` and ``rldskit pipeline`` write one over the whole ``train`` split). The data:
``helpers_train.held_out_shift_dataset``, 18 bar episodes then 2 held-out episodes whose action is
a constant far from the bars'. The expected numbers are computed here with numpy from the captured
episodes, and compared with what the exported ``policy.json`` carries. Real JAX and torch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grain")

from helpers_train import held_out_shift_dataset, train_briefly  # noqa: E402

from rldskit import read_episode  # noqa: E402
from rldskit.loaders import StepIndex  # noqa: E402
from rldskit.stats import write_stats  # noqa: E402
from trainers import common  # noqa: E402

TRAIN, HELD_OUT, STEPS = 18, 2, 12


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> tuple[Path, Path]:
    return held_out_shift_dataset(tmp_path_factory.mktemp("shifted"), train=TRAIN, held_out=HELD_OUT, steps=STEPS)


def _actions(cap: Path, prefix: str | None = None) -> np.ndarray:
    eps = sorted(p for p in cap.iterdir() if p.is_dir() and (prefix is None or p.name.startswith(prefix)))
    return np.concatenate([np.asarray(read_episode(p).steps["action"], np.float64) for p in eps])


def _train(framework: str, data: Path, out: Path) -> dict:
    cfg = common.load_config(None, "dev", {"data": str(data), "out": str(out)})
    assert (cfg.train_split, cfg.eval_split) == ("train[:90%]", "train[90%:]")  # the defaults under test
    return train_briefly(framework, data, out)


@pytest.mark.parametrize("stats_json", [None, "whole train split"])
@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_exported_normalisation_is_the_training_selections(shifted, tmp_path, framework, stats_json):
    data, cap = shifted
    ids = [str(i) for i in StepIndex.load(data, "train").episodes["episode_id"]]
    assert [i.startswith("zz_held") for i in ids] == [False] * TRAIN + [True] * HELD_OUT  # held out = train[90%:]
    train_actions, all_actions = _actions(cap, "bar_"), _actions(cap)
    assert len(train_actions) == TRAIN * STEPS and len(all_actions) == (TRAIN + HELD_OUT) * STEPS
    leaky_mean = all_actions.mean(0)
    assert np.abs(leaky_mean - train_actions.mean(0)).min() > 0.05  # the held-out episodes would show
    if stats_json is not None:
        data = Path(shutil.copytree(data, tmp_path / "data" / data.parent.name / data.name))
        write_stats(data, split="train")  # what `rldskit pipeline` and `rldskit stats` write
        on_disk = json.loads((data / "stats.json").read_text())["action"]
        np.testing.assert_allclose(on_disk["mean"], leaky_mean, rtol=1e-6)  # it covers the held-out episodes

    policy = _train(framework, data, tmp_path / "run")
    norm = policy["normalization"]
    assert norm["mode"] == "mean_std"
    np.testing.assert_allclose(norm["features"]["action"]["shift"], train_actions.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(norm["features"]["action"]["scale"], train_actions.std(0), rtol=1e-5, atol=1e-7)
    assert norm["statistics"]["split"] == "train[:90%]"
    assert (norm["statistics"]["episodes"], norm["statistics"]["steps"]) == (TRAIN, TRAIN * STEPS)


def test_train_stats_ignores_a_whole_split_stats_json(shifted, tmp_path):
    """``common.train_stats`` itself, without a trainer: the same numbers with and without the file,
    and the selection they cover named in them."""
    data, cap = shifted
    copy = Path(shutil.copytree(data, tmp_path / "data" / data.parent.name / data.name))
    cfg = common.load_config(None, "dev", {"data": str(copy), "out": str(tmp_path / "run")})
    before = common.train_stats(cfg)
    write_stats(copy, split="train")
    after = common.train_stats(cfg)
    assert isinstance(after, dict) and after == before
    train_actions = _actions(cap, "bar_")
    np.testing.assert_allclose(after["action"]["mean"], train_actions.mean(0), rtol=1e-6)
    sel = after[common.SELECTION_KEY]
    assert (sel["split"], sel["episodes"], sel["steps"]) == ("train[:90%]", TRAIN, TRAIN * STEPS)
    assert sel["first_episode"].startswith("bar_") and sel["last_episode"].startswith("bar_")


def test_the_trainers_loader_is_one_loader_config(shifted, tmp_path):
    """``common.make_loader`` builds from ``common.loader_config`` (one frozen value, not re-passed
    keywords): the same batches as ``rldskit.loaders.windows`` given those settings as keywords."""
    from rldskit.loaders import LoaderConfig, windows

    data, _ = shifted
    cfg = common.load_config(None, "dev", {"data": str(data), "out": str(tmp_path / "run")})
    lc = common.loader_config(cfg, num_epochs=1)
    assert isinstance(lc, LoaderConfig) and lc.split == cfg.train_split and lc.history == cfg.history
    io = common.policy_io(StepIndex.load(data).spec)
    by_keywords = windows(data, history=cfg.history, action_horizon=cfg.action_horizon,
                          stats=common.train_stats(cfg), batch_size=cfg.batch_size, seed=cfg.seed, num_epochs=1,
                          resize=tuple(cfg.image_size), normalize="stats", split=cfg.train_split,
                          observation_keys=list(io.cameras) + list(io.state_keys), action_keys=[io.action_key],
                          extra_keys=[], debug_keys=False)
    a = [{k: v.copy() for k, v in b.items()} for b in common.make_loader(cfg, num_epochs=1)]
    b = [{k: v.copy() for k, v in b.items()} for b in by_keywords]
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
