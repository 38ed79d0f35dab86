"""Shared fixtures: tiny camera-shape variants of the built-in schemas and synthetic episodes
written through the real capture path (``rldskit.synth.write_synthetic``).

Naming: ``small_*`` are specs whose cameras are ``SMALL_CAMERA`` (so frames encode in
microseconds); ``*_dir`` fixtures are fresh, per-test folders a test may modify;
``synthetic_datasets`` is written once per session and must be treated as read-only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzzing import register_profiles
from rldskit.spec import EpisodeSpec, builtin_spec_names, load_spec
from rldskit.synth import write_synthetic

register_profiles()


def pytest_collection_modifyitems(config, items):
    """Mark every hypothesis test ``property`` so ``make fuzz`` can select them (``-m property``)."""
    from hypothesis import is_hypothesis_test

    for item in items:
        if is_hypothesis_test(getattr(item, "obj", None)):
            item.add_marker(pytest.mark.property)

#: (H, W) of every camera in the small specs; channels stay as each schema declares.
SMALL_CAMERA = (24, 32)
#: Episodes and steps per synthetic dataset (tiny on purpose: tests must run in seconds).
SMALL_EPISODES = 2
SMALL_STEPS = 15


def _small(name: str) -> EpisodeSpec:
    spec = load_spec(name)
    for path in spec.image_paths:
        channels = spec.step_leaves[path].shape[2]
        spec = spec.with_image_shape(path, (*SMALL_CAMERA, channels))
    return spec


@pytest.fixture(scope="session")
def small_spec():
    """Factory: ``small_spec("so100_arm.v1")`` -> that built-in with SMALL_CAMERA cameras."""
    cache: dict[str, EpisodeSpec] = {}

    def make(name: str) -> EpisodeSpec:
        if name not in cache:
            cache[name] = _small(name)
        return cache[name]

    return make


@pytest.fixture(scope="session")
def small_donkey_spec(small_spec) -> EpisodeSpec:
    return small_spec("pi5_donkey.v1")


@pytest.fixture(scope="session")
def synthetic_datasets(tmp_path_factory, small_spec) -> dict[str, Path]:
    """``{spec_id: folder}`` with SMALL_EPISODES x SMALL_STEPS synthetic episodes for every
    built-in schema (episode 0 truncated, episode 1 terminal). Session-wide: do not modify."""
    root = tmp_path_factory.mktemp("synthetic")
    out = {}
    for name in builtin_spec_names():
        spec = small_spec(name)
        write_synthetic(spec, root / spec.id, SMALL_EPISODES, SMALL_STEPS, seed=0)
        out[spec.id] = root / spec.id
    return out


@pytest.fixture
def donkey_dir(tmp_path, small_donkey_spec) -> Path:
    """A fresh folder of SMALL_EPISODES clean pi5_donkey episodes (SMALL_STEPS each) plus its
    ``schema.json``; the test may corrupt it."""
    out = tmp_path / "donkey"
    write_synthetic(small_donkey_spec, out, SMALL_EPISODES, SMALL_STEPS, seed=1)
    return out


@pytest.fixture
def donkey_episode_dirs(donkey_dir) -> list[Path]:
    """The episode folders inside ``donkey_dir``, sorted."""
    return sorted(p for p in donkey_dir.iterdir() if p.is_dir())
