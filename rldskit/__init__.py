"""rldskit: typed RLDS episodes for robot learning.

``import rldskit`` is cheap (numpy only): TensorFlow, Beam, JAX and torch are imported inside
the functions that need them. The names below are loaded on first use.

* :class:`EpisodeSpec`, :func:`load_spec`: the schema (``rldskit.spec``)
* :class:`Episode`: a columnar episode (``rldskit.episode``)
* :class:`EpisodeLogger`: crash-safe capture on the robot (``rldskit.capture``)
* :func:`read_episode`, :func:`scan_episode`, :func:`recover_episode`: the capture readers
* :func:`validate`, :func:`validate_paths`, :func:`validate_dataset`, :class:`Gates`, :class:`Report`: validation
  (``rldskit.validation``)
* :func:`write_synthetic`: realistic synthetic episodes (``rldskit.synth``)
* :func:`convert`: episodes -> TFDS RLDS dataset + step index (``rldskit.pipeline``, Beam imported lazily)
* :func:`open` / :func:`open_dataset`: read a converted or Open-X RLDS dataset (``rldskit.formats.tfds_dir``)
* ``rldskit.open(path)`` (= :func:`open_dataset`), :class:`DatasetDir`: read and verify a TFDS
  RLDS dataset folder, ours or Open-X (``rldskit.formats.tfds_dir``). ``open`` is left out of
  ``__all__`` so that ``from rldskit import *`` cannot shadow the builtin.
* ``rldskit.loaders``: Grain loaders (windows, steps, checkpointable iteration) over converted
  datasets; the subpackage is imported on first use, and Grain only when a loader is built.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "EpisodeSpec": "rldskit.spec", "load_spec": "rldskit.spec", "SpecError": "rldskit.spec",
    "Tensor": "rldskit.spec", "Scalar": "rldskit.spec", "Image": "rldskit.spec", "Text": "rldskit.spec",
    "builtin_spec_names": "rldskit.spec",
    "Episode": "rldskit.episode", "LazyFrames": "rldskit.episode", "assert_episodes_equal": "rldskit.episode",
    "EpisodeLogger": "rldskit.capture",
    "read_episode": "rldskit.formats.capture_dir", "scan_episode": "rldskit.formats.capture_dir",
    "recover_episode": "rldskit.formats.capture_dir", "find_episodes": "rldskit.formats.capture_dir",
    "EpisodeError": "rldskit.formats.capture_dir",
    "validate": "rldskit.validation", "validate_paths": "rldskit.validation", "validate_dataset": "rldskit.validation",
    "Gates": "rldskit.validation",
    "Report": "rldskit.validation",
    "Issue": "rldskit.issues",
    "write_synthetic": "rldskit.synth",
    "open_dataset": "rldskit.formats.tfds_dir", "DatasetDir": "rldskit.formats.tfds_dir",
    "convert": "rldskit.pipeline", "ConversionError": "rldskit.pipeline",
}
#: exported under another name than the one they have in their module (not in ``__all__``)
_RENAMED = {"open": ("rldskit.formats.tfds_dir", "open_dataset")}
#: subpackages loaded on first attribute access (``rldskit.loaders.windows(...)``)
_SUBMODULES = ("loaders",)

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"rldskit.{name}")
    mod, attr = _RENAMED.get(name, (_EXPORTS.get(name), name))
    if mod is None:
        raise AttributeError(f"module 'rldskit' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__ + list(_RENAMED) + list(_SUBMODULES))
