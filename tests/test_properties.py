"""Property tests: random schemas, random valid episodes for them, and mutations.

(a) Whatever the spec, logging an episode through :class:`EpisodeLogger` and reading it back
    gives exactly the logged columns (dtype-exact, frames byte-identical), and it validates
    clean, frames included.
(b) Each class of damage applied to one step of a valid written episode is reported with the
    expected code, at that step and field, and nowhere else.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from fuzzing import examples

from helpers_capture import (assert_columns_equal, decode_image, del_path, describe, edit_lines, expected_columns, find,
                             get_path, inline_frames, logged_value, read_lines, read_meta, set_path, with_flags,
                             write_single_file)
from rldskit.capture import EpisodeLogger
from rldskit.formats.capture_dir import EpisodeError, read_episode
from rldskit.spec import PRESENT_SUFFIX, EpisodeSpec, Image, Scalar, Tensor, Text
from rldskit.synth import encode_image
from rldskit.validation import Gates, validate, validate_paths

SETTINGS = settings(max_examples=examples(40), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
GATES = Gates(check_rate=False)
DTYPES = ["float32", "float64", "int32", "int64", "uint8", "bool"]
NAMES = [f"f{i}" for i in range(80)]
TEXT_POOL = ["user", "pilot", "émoji 🤖", "שלום", "a b", "", "x" * 30, "line\u2028sep", "nul\x00char"]


# =========================================================================== strategies: specs


@st.composite
def bounds_for(draw, dtype: str, shape: tuple[int, ...]):
    """``None`` or bounds with float32-exact integer ends (so float32 rounding of an in-bounds
    value cannot leave them), one pair or one per element of the last axis."""
    if dtype == "bool" or not draw(st.booleans()):
        return None
    n = shape[-1] if shape and draw(st.booleans()) else 1
    pairs = []
    for _ in range(n):
        lo = draw(st.integers(0, 100)) if dtype == "uint8" else draw(st.integers(-1000, 1000))
        pairs.append((lo, lo + draw(st.integers(0, 100 if dtype == "uint8" else 1000))))
    return tuple(pairs)


@st.composite
def tensor_leaf(draw, allow_optional: bool = True):
    dtype = draw(st.sampled_from(DTYPES))
    rank = draw(st.integers(0, 2))
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank)))
    bounds = draw(bounds_for(dtype, shape))
    optional = allow_optional and draw(st.booleans())
    fill: Any = 0
    if optional and draw(st.booleans()):  # a placeholder other than 0 for absent steps
        fill = True if dtype == "bool" else 7 if dtype == "uint8" else draw(st.sampled_from([-1, 3, 1.5])) \
            if dtype.startswith("float") else draw(st.sampled_from([-1, 3]))
    if rank == 0 and draw(st.booleans()):
        return Scalar(dtype=dtype, bounds=bounds, optional=optional, fill=fill)
    names = tuple(f"e{i}" for i in range(shape[-1])) if rank and draw(st.booleans()) else None
    return Tensor(shape=shape, dtype=dtype, names=names, bounds=bounds, optional=optional, fill=fill)


@st.composite
def text_leaf(draw):
    choices = tuple(draw(st.lists(st.sampled_from(TEXT_POOL), min_size=1, max_size=3, unique=True))) if draw(st.booleans()) else None
    max_length = draw(st.integers(30, 64)) if draw(st.booleans()) else None
    optional = draw(st.booleans())
    fill = draw(st.sampled_from(["", "n/a", "—"])) if optional else ""
    return Text(choices=choices, max_length=max_length, optional=optional, fill=fill)


@st.composite
def image_leaf(draw):
    encoding = draw(st.sampled_from(["jpeg", "png"]))
    channels = draw(st.sampled_from([1, 3] if encoding == "jpeg" else [1, 3, 4]))
    shape = (draw(st.integers(8, 16)), draw(st.integers(8, 16)), channels)
    return Image(shape=shape, encoding=encoding, optional=draw(st.booleans()))


def any_leaf():
    return st.one_of(tensor_leaf(), tensor_leaf(), text_leaf(), image_leaf())


@st.composite
def specs(draw):
    names = iter(draw(st.permutations(NAMES)))

    def tree(depth: int, min_size: int = 1) -> dict[str, Any]:
        out = {}
        for _ in range(draw(st.integers(min_size, 3))):
            if depth < 2 and draw(st.integers(0, 4)) == 0:
                out[next(names)] = tree(depth + 1)
            else:
                out[next(names)] = draw(any_leaf())
        return out

    steps: dict[str, Any] = {"observation": tree(0)}
    if draw(st.booleans()):
        steps["action"] = draw(tensor_leaf(allow_optional=False))
    else:
        steps["action"] = {next(names): draw(tensor_leaf(allow_optional=False)) for _ in range(draw(st.integers(1, 2)))}
    n_clocks = draw(st.integers(0, 3))
    if n_clocks:
        steps["timestamp"] = {next(names): Scalar(dtype="float64", unit="s") for _ in range(n_clocks)}
    for _ in range(draw(st.integers(0, 2))):
        steps[next(names)] = draw(st.one_of(text_leaf(), tensor_leaf()))
    return EpisodeSpec(name="prop", version="1.0.0", steps=steps, last_step=draw(st.sampled_from(["rlds", "valid"])))


# =========================================================================== strategies: episodes


def leaf_value(leaf: Any, rng: np.random.Generator, as_array: bool) -> Any:
    """A valid value for ``leaf`` (or None for an absent optional signal)."""
    if getattr(leaf, "optional", False) and rng.random() < 0.3:
        return None
    if isinstance(leaf, Image):
        arr = rng.integers(0, 256, leaf.shape, dtype=np.uint8)
        return arr if as_array else encode_image(arr, leaf.encoding)
    if isinstance(leaf, Text):
        if leaf.choices:
            return leaf.choices[int(rng.integers(len(leaf.choices)))]
        pool = TEXT_POOL + ["", "ü" * 5]
        s = pool[int(rng.integers(len(pool)))]
        return s if leaf.max_length is None else s[: leaf.max_length]
    shape = leaf.shape
    if leaf.dtype == "bool":
        return rng.random(shape) < 0.5
    if leaf.bounds is not None:
        lo, hi = leaf.bounds_arrays()
        lo = np.broadcast_to(lo, shape) if shape else lo[0]
        hi = np.broadcast_to(hi, shape) if shape else hi[0]
    else:
        info = np.iinfo(leaf.dtype) if leaf.dtype.startswith(("int", "uint")) else None
        lo, hi = (float(info.min), float(info.max)) if info else (-1e6, 1e6)
    if leaf.dtype.startswith(("int", "uint")):
        if leaf.bounds is None:
            info = np.iinfo(leaf.dtype)
            pick = rng.integers(0, 4, shape)
            special = np.where(pick == 0, info.min, np.where(pick == 1, info.max, 0))
            x = np.where(pick >= 2, rng.integers(info.min, info.max, shape, dtype=leaf.dtype, endpoint=True), special)
            return np.asarray(x, dtype=leaf.dtype)
        return np.asarray(np.round(rng.uniform(lo, hi, shape)), dtype=leaf.dtype)
    x = rng.uniform(lo, hi, shape)
    if leaf.bounds is None and rng.random() < 0.3:  # extreme but finite values survive the text round trip
        big = np.finfo(leaf.dtype).max
        x = np.where(rng.random(shape) < 0.5, big, np.finfo(leaf.dtype).smallest_subnormal)
    return np.asarray(x, dtype=leaf.dtype)


def tree_value(node: Any, rng: np.random.Generator, as_array: bool) -> Any:
    if isinstance(node, (Tensor, Image, Text)):
        return leaf_value(node, rng, as_array)
    return {k: tree_value(v, rng, as_array) for k, v in node.items()}


@st.composite
def episodes(draw, spec: EpisodeSpec, min_steps: int = 1):
    """``(steps, terminal)``: ``log_step`` kwargs of a valid episode for ``spec``."""
    T = draw(st.integers(min_steps, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    as_array = draw(st.booleans())
    clocks = list(spec.steps.get("timestamp", {}))
    t = draw(st.floats(0, 2e9))
    out = []
    reserved = {"observation", "action", "reward", "discount", "timestamp", "is_first", "is_last", "is_terminal"}
    for _ in range(T):
        t += float(rng.uniform(0.005, 0.5))
        out.append({
            "observation": tree_value(spec.steps["observation"], rng, as_array),
            "action": tree_value(spec.steps["action"], rng, as_array),
            "reward": float(rng.normal()),
            "discount": float(rng.uniform(0, 1)),
            "timestamps": {k: t + float(rng.uniform(-0.002, 0.002)) for k in clocks},
            "extras": {k: tree_value(v, rng, as_array) for k, v in spec.steps.items() if k not in reserved},
        })
    return out, draw(st.booleans())


@st.composite
def written(draw, min_steps: int = 1):
    """A random spec, a valid episode for it, and how to log it."""
    spec = draw(specs())
    steps, terminal = draw(episodes(spec, min_steps))
    chunk_steps = draw(st.integers(1, len(steps) + 1))
    compress = draw(st.booleans())
    return spec, steps, terminal, chunk_steps, compress


def log(root: Path, spec: EpisodeSpec, steps, terminal: bool, chunk_steps: int, compress: bool) -> Path:
    logger = EpisodeLogger(root, spec, chunk_steps=chunk_steps, compress=compress, durability="none", clock=lambda: 1.0)
    logger.start_episode(episode_id="p", tags=["origin:hypothesis"])
    for kw in steps:
        logger.log_step(**kw)
    return logger.end_episode(terminal)


# =========================================================================== (a) round trip


@SETTINGS
@given(written())
def test_logged_episodes_read_back_exactly_and_validate_clean(case):
    spec, steps, terminal, chunk_steps, compress = case
    with tempfile.TemporaryDirectory() as d:
        ep = log(Path(d), spec, steps, terminal, chunk_steps, compress)
        got = read_episode(ep, load_frames=True)  # spec from the schema.json the logger wrote
        assert_columns_equal(got.steps, expected_columns(spec, steps, terminal=terminal))
        for path in spec.image_paths:  # frames given as arrays: PNG is lossless, JPEG the right size
            leaf = spec.step_leaves[path]
            for i, kw in enumerate(steps):
                arr = logged_value(kw, path)
                if isinstance(arr, np.ndarray):
                    img = decode_image(got.steps[path][i])
                    assert img.reshape(leaf.shape).shape == leaf.shape
                    if leaf.encoding == "png":
                        assert np.array_equal(img.reshape(leaf.shape), arr)
        assert read_meta(ep)["end"] == {"num_steps": len(steps), "terminal": terminal, "end_time": 1.0}
        rep = validate(got, spec, Gates(check_rate=False, check_images=True))
        assert not rep.issues, describe(rep)
        rep = validate_paths([d], gates=Gates(check_images=True))  # the spec has no rate band
        assert not rep.issues and rep.steps == len(steps), describe(rep)


# =========================================================================== (b) mutations


def _numeric_paths(spec: EpisodeSpec, *, float_only=False, bounded=False, checked_at_last=None) -> list[str]:
    out = []
    for p, leaf in spec.step_leaves.items():
        if isinstance(leaf, (Image, Text)) or leaf.dtype == "string" or p in ("is_first", "is_last", "is_terminal"):
            continue
        if p.endswith(PRESENT_SUFFIX) and getattr(spec.step_leaves.get(p[: -len(PRESENT_SUFFIX)]), "optional", False):
            continue
        if float_only and leaf.dtype not in ("float32", "float64"):
            continue
        if bounded and leaf.bounds is None:
            continue
        if checked_at_last is False and spec.last_step == "rlds" and p.split("/")[0] in ("action", "reward"):
            continue  # the RLDS last step's action/reward are not checked
        out.append(p)
    return out


def _element_set(value: Any, leaf: Any, new: Any, rng: np.random.Generator) -> Any:
    """``value`` (a JSON value of ``leaf``'s shape, or None) with one random element set to ``new``."""
    arr = np.array(leaf.placeholder().tolist() if value is None else value, dtype=object).reshape(leaf.shape)
    if arr.ndim == 0:
        return new
    arr[tuple(int(rng.integers(d)) for d in arr.shape)] = new
    return arr.tolist()


def _check_reported(ep_or_file: Path, spec: EpisodeSpec, code: str, step: int, field: str, *, readable: bool) -> None:
    rep = validate_paths([ep_or_file], spec, GATES)
    hits = find(rep, code, step=step, field=field)
    assert hits, f"expected {code} at step {step} field {field}:\n{describe(rep)}"
    stray = [i for i in rep.errors if i.step not in (step, None)]
    assert not stray, f"errors at other steps than {step}:\n{describe(rep)}"
    if readable:
        read_episode(ep_or_file, spec)  # value-level damage: still readable
    else:
        try:
            read_episode(ep_or_file, spec)
        except EpisodeError as e:
            msg = str(e)
            assert f"[{code}] step {step}" in msg and f"field {field}" in msg and "expected" in msg, msg
        else:
            raise AssertionError("read_episode accepted a damaged episode")


MUTATIONS = ["nan", "out_of_bounds", "wrong_shape", "string_for_number", "missing_field", "flipped_flag", "time_backwards"]


@pytest.mark.parametrize("mutation", MUTATIONS)
@settings(SETTINGS, max_examples=examples(25))
@given(case=written(min_steps=2), seed=st.integers(0, 2**32 - 1))
def test_each_mutation_is_reported_at_its_step_and_field(mutation, case, seed):
    spec, steps, terminal, chunk_steps, compress = case
    rng = np.random.default_rng(seed)
    T = len(steps)
    leaves = spec.step_leaves
    with tempfile.TemporaryDirectory() as d:
        ep = log(Path(d) / "root", spec, steps, terminal, chunk_steps, compress)
        s = int(rng.integers(T))

        def pick(paths: list[str]) -> str:
            assume(paths)
            return paths[int(rng.integers(len(paths)))]

        if mutation == "nan":
            path = pick(_numeric_paths(spec, float_only=True, checked_at_last=False if s == T - 1 else None))
            _set(ep, s, path, _element_set(_get(ep, s, path), leaves[path], math.nan, rng))
            _check_reported(ep, spec, "NON_FINITE", s, path, readable=True)
        elif mutation == "out_of_bounds":
            paths = _numeric_paths(spec, bounded=True, checked_at_last=False if s == T - 1 else None)
            path = pick(paths)  # discount (bounded [0, 1] by default) is always a candidate
            leaf = leaves[path]
            _lo, hi = leaf.bounds_arrays()
            value = _get(ep, s, path)
            arr = np.array(leaf.placeholder().tolist() if value is None else value, dtype=object).reshape(leaf.shape)
            idx = tuple(int(rng.integers(dd)) for dd in arr.shape)
            h = float(hi[idx[-1]] if len(hi) > 1 else hi[0])
            bad = int(math.floor(h)) + 1 if leaf.dtype.startswith(("int", "uint")) else h + 1 + abs(h)
            arr[idx] = bad
            _set(ep, s, path, arr.tolist() if arr.ndim else bad)
            _check_reported(ep, spec, "OUT_OF_BOUNDS", s, path, readable=True)
        elif mutation == "wrong_shape":
            path = pick(_numeric_paths(spec))
            leaf = leaves[path]
            good = np.asarray(leaf.placeholder())
            if good.ndim == 0:
                value = [good.item(), good.item()]
            else:
                grown = np.concatenate([good, good[..., :1]], axis=-1)
                value = grown.tolist()
            _set(ep, s, path, value)
            _check_reported(ep, spec, "FIELD_SHAPE", s, path, readable=False)
        elif mutation == "string_for_number":
            path = pick(_numeric_paths(spec))
            _set(ep, s, path, "12.5")
            _check_reported(ep, spec, "FIELD_TYPE", s, path, readable=False)
        elif mutation == "missing_field":
            required = [p for p, leaf in leaves.items() if not getattr(leaf, "optional", False)
                        and p not in ("is_first", "is_last", "is_terminal") and not p.endswith(PRESENT_SUFFIX)]
            path = pick(required)
            edit_lines(ep, lambda lines: del_path(lines[s], path))
            _check_reported(ep, spec, "FIELD_MISSING", s, path, readable=False)
        elif mutation == "flipped_flag":
            lines = with_flags(inline_frames(ep, read_lines(ep), spec), terminal)
            flag = ["is_first", "is_last", "is_terminal"][int(rng.integers(3))]
            if flag == "is_terminal":
                assume(s != T - 1)  # at the last step a flipped is_terminal is just the other ending
            lines[s][flag] = not lines[s][flag]
            name = ["ep.json", "ep.jsonl", "ep.jsonl.zst"][int(rng.integers(3))]
            meta = {k: v for k, v in read_meta(ep).items() if k not in ("status", "end")}
            f = write_single_file(Path(d) / name, meta, lines)
            code = {"is_first": "FLAG_IS_FIRST", "is_last": "FLAG_IS_LAST", "is_terminal": "FLAG_IS_TERMINAL"}[flag]
            _check_reported(f, spec, code, s, flag, readable=True)
        elif mutation == "time_backwards":
            clocks = list(spec.timestamp_paths)
            assume(clocks)
            s = max(s, 1)
            path = pick(clocks)
            prev = _get(ep, s - 1, path)
            _set(ep, s, path, prev - 1.0)
            _check_reported(ep, spec, "TIMESTAMP_NON_MONOTONIC", s, path, readable=True)


def _get(ep: Path, s: int, path: str) -> Any:
    return get_path(read_lines(ep)[s], path)


def _set(ep: Path, s: int, path: str, value: Any) -> None:
    edit_lines(ep, lambda lines: set_path(lines[s], path, value))
