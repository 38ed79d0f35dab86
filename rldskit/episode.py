"""Columnar RLDS episodes.

Two concepts:

* **``Episode``**: ``metadata`` (a dict of episode-level values) and ``steps`` (a dict of
  columns keyed by flat feature path such as ``observation/state``; every column has leading
  length ``T``). It behaves like a ``Sequence`` of steps: ``len(ep) == T``, ``ep[i]`` is the
  nested step dict, iteration yields step dicts. Images stay encoded: an image column is an
  object array of ``bytes`` or a :class:`LazyFrames` that reads frame files on access.
* **RLDS flags**: ``is_first`` is True only at step 0, ``is_last`` only at ``T-1``, and
  ``is_terminal`` only where ``is_last`` (True when the episode ended in a terminal state,
  False when it was truncated; never invented). :func:`rlds_flags` builds them.

Under ``last_step='rlds'`` (see :class:`~rldskit.spec.EpisodeSpec`) the final step's action
and reward are placeholders and consumers must ignore them; under ``'valid'`` they are real.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

__all__ = ["Episode", "LazyFrames", "rlds_flags", "nest", "flatten_step", "assert_episodes_equal"]


class LazyFrames(Sequence):
    """``T`` encoded frames living in files; ``frames[i]`` reads and returns the bytes.

    Keeps validation and conversion from holding every JPEG of an episode in memory. File
    names are kept as strings (building 100k ``Path`` objects costs more than validating)."""

    __slots__ = ("_files",)

    def __init__(self, paths: Sequence[str | Path]):
        self._files = [os.fspath(p) for p in paths]

    @property
    def paths(self) -> list[Path]:
        return [Path(p) for p in self._files]

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return LazyFrames(self._files[i])
        with open(self._files[i], "rb") as f:
            return f.read()

    def path(self, i: int) -> Path:
        return Path(self._files[i])

    def to_numpy(self) -> np.ndarray:
        out = np.empty(len(self._files), dtype=object)
        for i in range(len(self._files)):
            out[i] = self[i]
        return out

    def __repr__(self) -> str:
        return f"LazyFrames({len(self)} files{', first ' + self._files[0] if self._files else ''})"


Column = Union[np.ndarray, LazyFrames]


def rlds_flags(length: int, terminal: bool) -> dict[str, np.ndarray]:
    """``is_first``/``is_last``/``is_terminal`` columns for an episode of ``length`` steps."""
    is_first = np.zeros(length, dtype=bool)
    is_last = np.zeros(length, dtype=bool)
    if length:
        is_first[0] = True
        is_last[-1] = True
    is_terminal = is_last & bool(terminal)
    return {"is_first": is_first, "is_last": is_last, "is_terminal": is_terminal}


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{'observation/state': x}`` -> ``{'observation': {'state': x}}``."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def flatten_step(step: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of :func:`nest` for one step dict (dict values recurse; others are leaves)."""
    out: dict[str, Any] = {}
    for k, v in step.items():
        if isinstance(v, Mapping):
            out.update(flatten_step(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Episode(Sequence):
    """An RLDS episode as columns. See the module docstring for the contract."""

    __slots__ = ("metadata", "steps")

    def __init__(self, metadata: Mapping[str, Any], steps: Mapping[str, Column]):
        self.metadata = dict(metadata)
        self.steps: dict[str, Column] = dict(steps)
        lengths = {k: len(v) for k, v in self.steps.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"episode {self.metadata.get('episode_id', '?')}: columns differ in length: {lengths}")

    # ---- sequence of steps
    def __len__(self) -> int:
        for v in self.steps.values():
            return len(v)
        return 0

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            raise TypeError("slice an Episode with Episode.slice(start, stop)")
        return nest({k: v[i] for k, v in self.steps.items()})

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def slice(self, start: int, stop: int) -> Episode:
        return Episode(self.metadata, {k: v[start:stop] for k, v in self.steps.items()})

    @property
    def episode_id(self) -> str:
        return str(self.metadata.get("episode_id", ""))

    @property
    def is_terminal(self) -> bool:
        """True when the episode ended in a terminal state (vs. truncated)."""
        col = self.steps.get("is_terminal")
        return bool(len(col) and col[-1]) if col is not None else False

    # ---- construction
    @classmethod
    def from_steps(cls, steps: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any] | None = None,
                   *, spec=None, terminal: bool | None = None) -> Episode:
        """Build from a list of nested step dicts. With ``spec``, columns get the declared
        dtypes. Flags absent from the steps are derived (``terminal`` required then)."""
        flat = [flatten_step(s) for s in steps]
        keys: list[str] = list(spec.step_leaves) if spec is not None else list(dict.fromkeys(k for s in flat for k in s))
        cols: dict[str, Column] = {}
        derived = not any("is_first" in s for s in flat)
        if derived and terminal is None:
            raise ValueError("steps carry no RLDS flags: pass terminal=True/False")
        for k in keys:
            if derived and k in ("is_first", "is_last", "is_terminal"):
                continue
            base = k[: -len("_present")]
            if spec is not None and k.endswith("_present") and getattr(spec.step_leaves.get(base), "optional", False):
                cols[k] = np.array([s.get(k, s.get(base) is not None) for s in flat], dtype=bool)
                continue
            values = [s.get(k) for s in flat]
            leaf = spec.step_leaves[k] if spec is not None else None
            if leaf is not None and not getattr(leaf, "optional", False):
                missing = [i for i, v in enumerate(values) if v is None]
                if missing:  # else a float column would silently hold NaN there
                    raise ValueError(f"step {missing[0]}: {k} is required by {spec.id} ({len(missing)} steps lack it)")
            cols[k] = _column(values, leaf)
        if derived:
            cols.update(rlds_flags(len(flat), bool(terminal)))
        return cls(metadata or {}, cols)

    # ---- comparison
    def diff(self, other: Episode, *, atol: float = 0.0) -> list[str]:
        """Human-readable differences (metadata keys, columns, first differing step)."""
        out: list[str] = []
        for k in sorted(set(self.metadata) | set(other.metadata)):
            a, b = self.metadata.get(k, "<absent>"), other.metadata.get(k, "<absent>")
            if not _obj_equal(a, b):  # not `!=`: values may be arrays, and NaN equals NaN here
                out.append(f"metadata[{k!r}]: {a!r} != {b!r}")
        if len(self) != len(other):
            out.append(f"length {len(self)} != {len(other)}")
            return out
        for k in sorted(set(self.steps) | set(other.steps)):
            if k not in self.steps or k not in other.steps:
                out.append(f"column {k!r} only in {'first' if k in self.steps else 'second'}")
                continue
            a, b = _materialise(self.steps[k]), _materialise(other.steps[k])
            bad = _first_mismatch(a, b, atol)
            if bad is not None:
                out.append(f"{k} at step {bad}: {a[bad]!r} != {b[bad]!r}")
        return out

    def equals(self, other: object, *, atol: float = 0.0) -> bool:
        return isinstance(other, Episode) and not self.diff(other, atol=atol)

    def __eq__(self, other: object) -> bool:  # exact equality of metadata and every column
        return isinstance(other, Episode) and self.equals(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Episode(id={self.episode_id!r}, T={len(self)}, columns={list(self.steps)})"


def assert_episodes_equal(a: Episode, b: Episode, *, atol: float = 0.0) -> None:
    """Raise AssertionError listing every difference (for tests and round-trip checks)."""
    d = a.diff(b, atol=atol)
    if d:
        raise AssertionError("episodes differ:\n  " + "\n  ".join(d))


def _materialise(col: Column) -> np.ndarray:
    return col.to_numpy() if isinstance(col, LazyFrames) else np.asarray(col)


def _first_mismatch(a: np.ndarray, b: np.ndarray, atol: float) -> int | None:
    if a.dtype == object or b.dtype == object:
        for i, (x, y) in enumerate(zip(a, b)):
            if not _obj_equal(x, y):
                return i
        return None
    if a.shape != b.shape:
        return 0
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        same = np.isclose(a, b, rtol=0, atol=atol, equal_nan=True) if atol else ((a == b) | (np.isnan(a) & np.isnan(b)))
    else:
        same = a == b
    if same.ndim > 1:
        same = same.reshape(len(same), -1).all(axis=1)
    bad = np.flatnonzero(~same)
    return int(bad[0]) if bad.size else None


def _obj_equal(x: Any, y: Any) -> bool:
    """Equality of two cell or metadata values: arrays element-wise, NaN equal to NaN."""
    if isinstance(x, (np.ndarray, list, tuple)) or isinstance(y, (np.ndarray, list, tuple)):
        try:
            a, b = np.asarray(x), np.asarray(y)
        except ValueError:  # ragged nested lists
            return bool(x == y)
        nan = a.dtype.kind in "fc" and b.dtype.kind in "biufc" or b.dtype.kind in "fc" and a.dtype.kind in "biufc"
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=nan))
    if isinstance(x, (float, np.floating)) and isinstance(y, (float, np.floating)) and x != x and y != y:
        return True
    return bool(x == y)


def _column(values: list[Any], leaf) -> np.ndarray:
    from rldskit.spec import Image

    if leaf is None:
        try:
            return np.asarray(values)
        except ValueError:
            out = np.empty(len(values), dtype=object)
            out[:] = values
            return out
    if isinstance(leaf, Image) or leaf.dtype == "string":
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            out[i] = v
        return out
    if getattr(leaf, "optional", False):
        ph = leaf.placeholder()
        values = [ph if v is None else v for v in values]
    arr = np.asarray(values, dtype=leaf.np_dtype)
    if not leaf.is_static:
        return arr
    return arr.reshape((len(values), *leaf.shape))
