"""Typed, immutable description of an RLDS dataset: the one schema every format reads.

Three concepts:

* **Leaves** describe one value per step (or per episode): ``Tensor`` (fixed or partly
  dynamic shape, numeric/bool/string dtype, optional unit, element names and bounds),
  ``Scalar`` (a 0-d ``Tensor``), ``Image`` (an encoded JPEG/PNG frame of a declared
  ``(H, W, C)`` shape) and ``Text`` (a UTF-8 string, optionally from a fixed set).
  Any leaf may be ``optional``: absent values are stored as a placeholder (``fill``) and a
  companion boolean ``<name>_present`` mask says which steps really had the signal.
* **Feature trees** are nested mappings of names to leaves. Paths are ``/``-joined
  (``observation/state``) and are exactly the column names of an :class:`~rldskit.episode.Episode`.
* **``EpisodeSpec``** names a dataset (``name``, ``version``), its nominal control rate, the
  RLDS last-step convention, the step feature tree (``observation``, ``action``, ``reward``,
  ``discount``, any step metadata such as per-stream ``timestamp/*``) and the episode
  metadata tree. The RLDS flags ``is_first``/``is_last``/``is_terminal`` and a standard set of
  episode metadata (``episode_id``, ``environment_id``, ``control_role``, ``xr_mode``,
  ``tags``, ``start_time``) are always present, whether or not a schema file names them.

A spec round-trips to JSON (``schemas/<name>.v<major>.json``) and projects to
``tfds.features.FeaturesDict`` (steps as ``tfds.features.Dataset``), to a pyarrow schema and
to a JSON Schema of one captured step line. Those projections import their libraries lazily,
so ``import rldskit.spec`` costs only numpy.

The last-step convention is recorded, never guessed: ``last_step="rlds"`` means the final
step's action and reward are not meaningful (RLDS: the last step carries the final
observation only); ``last_step="valid"`` means they are real (Open-X, Octo).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union

import numpy as np

__all__ = [
    "SpecError",
    "Tensor",
    "Scalar",
    "Image",
    "Text",
    "Leaf",
    "EpisodeSpec",
    "load_spec",
    "builtin_spec_names",
    "FLAG_KEYS",
    "STANDARD_EPISODE_METADATA",
]

NUMERIC_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                  "uint8", "uint16", "uint32", "uint64")
DTYPES = NUMERIC_DTYPES + ("bool", "string")
FLAG_KEYS = ("is_first", "is_last", "is_terminal")
LAST_STEP_CONVENTIONS = ("rlds", "valid")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
PRESENT_SUFFIX = "_present"


class SpecError(ValueError):
    """A schema file or spec definition is invalid. The message names the file and key."""


# --------------------------------------------------------------------------- leaves


@dataclasses.dataclass(frozen=True)
class Tensor:
    """An n-d array per step. ``shape`` excludes the time axis; ``None`` marks a dynamic dim.

    ``bounds`` is ``((low, high),)`` for all elements or one pair per element of the last
    axis (matching ``names``). ``unit`` is free text such as ``"rad"``, ``"m/s"``, ``"s"``.
    """

    shape: tuple[int | None, ...]
    dtype: str = "float32"
    unit: str | None = None
    names: tuple[str, ...] | None = None
    bounds: tuple[tuple[float, float], ...] | None = None
    optional: bool = False
    fill: float | str | bool = 0
    description: str = ""

    kind = "tensor"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(None if d is None else int(d) for d in self.shape))
        if self.dtype not in DTYPES:
            raise SpecError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if any(d is not None and d < 0 for d in self.shape):
            raise SpecError(f"shape {self.shape} has a negative dimension")
        if self.names is not None:
            object.__setattr__(self, "names", tuple(str(n) for n in self.names))
            if not self.shape or self.shape[-1] != len(self.names):
                raise SpecError(f"names {list(self.names)} do not match the last axis of shape {self.shape}")
            if len(set(self.names)) != len(self.names):
                raise SpecError(f"names {list(self.names)} are not unique")
        if self.bounds is not None:
            pairs = tuple((float(lo), float(hi)) for lo, hi in self.bounds)
            object.__setattr__(self, "bounds", pairs)
            if len(pairs) != 1 and (not self.shape or self.shape[-1] != len(pairs)):
                raise SpecError(f"bounds has {len(pairs)} pairs; expected 1 or one per element of the last axis {self.shape}")
            for lo, hi in pairs:
                if not lo <= hi:
                    raise SpecError(f"bounds ({lo}, {hi}) has low > high")
            if self.dtype in ("bool", "string"):
                raise SpecError(f"bounds make no sense for dtype {self.dtype}")
        self._check_fill()

    def _check_fill(self) -> None:
        """The placeholder must be a value of the declared dtype (it is stored for absent steps)."""
        f = self.fill
        if self.dtype == "string":
            ok = isinstance(f, str) or f == 0
        elif self.dtype == "bool":
            ok = isinstance(f, bool) or f in (0, 1)
        else:
            ok = isinstance(f, (int, float)) and not isinstance(f, bool)
            if ok:
                with np.errstate(over="ignore", invalid="ignore"):
                    cast = np.array(f).astype(self.dtype)
                if self.dtype.startswith("float"):  # rounding is fine (0.1 in float32); overflow to inf is not
                    ok = bool(np.isfinite(cast)) == bool(np.isfinite(f)) or bool(np.isnan(f))
                else:
                    ok = cast.item() == f
        if not ok:
            raise SpecError(f"fill {f!r} is not a {self.dtype} value")

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(object) if self.dtype == "string" else np.dtype(self.dtype)

    @property
    def is_static(self) -> bool:
        return all(d is not None for d in self.shape)

    def placeholder(self) -> np.ndarray:
        """The value stored when an optional signal is absent (``fill`` broadcast to shape)."""
        shape = tuple(0 if d is None else d for d in self.shape)
        return np.full(shape, self.fill, dtype=self.np_dtype)

    def bounds_arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(low, high)`` broadcastable against a ``(T, *shape)`` column, or ``None``."""
        if self.bounds is None:
            return None
        arr = np.asarray(self.bounds, dtype=np.float64)
        return arr[:, 0], arr[:, 1]


@dataclasses.dataclass(frozen=True)
class Scalar(Tensor):
    """A 0-d value per step (``reward``, ``discount``, a timestamp in seconds)."""

    shape: tuple[int | None, ...] = ()
    kind = "scalar"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.shape != ():
            raise SpecError(f"Scalar has shape (), got {self.shape}")


@dataclasses.dataclass(frozen=True)
class Image:
    """An encoded camera frame of ``shape=(H, W, C)`` uint8, stored as JPEG or PNG bytes."""

    shape: tuple[int, int, int]
    encoding: str = "jpeg"
    optional: bool = False
    description: str = ""

    kind = "image"
    dtype = "uint8"
    unit = None
    bounds = None

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.shape)
        if len(shape) != 3 or shape[2] not in (1, 3, 4) or min(shape) <= 0:
            raise SpecError(f"Image shape must be (H, W, C) with C in 1, 3, 4; got {self.shape}")
        object.__setattr__(self, "shape", shape)
        if self.encoding not in ("jpeg", "png"):
            raise SpecError(f"Image encoding must be 'jpeg' or 'png', got {self.encoding!r}")
        if self.encoding == "jpeg" and shape[2] == 4:
            raise SpecError(f"Image shape {shape} has 4 channels but JPEG has no alpha: use encoding 'png'")

    @property
    def extension(self) -> str:
        return ".jpg" if self.encoding == "jpeg" else ".png"


@dataclasses.dataclass(frozen=True)
class Text:
    """A UTF-8 string per step (``language_instruction``, ``control_mode``)."""

    choices: tuple[str, ...] | None = None
    max_length: int | None = None
    optional: bool = False
    fill: str = ""
    description: str = ""

    kind = "text"
    dtype = "string"
    shape = ()
    unit = None
    bounds = None

    def __post_init__(self) -> None:
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(str(c) for c in self.choices))
        if self.max_length is not None and (isinstance(self.max_length, bool) or not isinstance(self.max_length, int)
                                            or self.max_length < 1):
            raise SpecError(f"max_length must be a positive integer, got {self.max_length!r}")
        if not isinstance(self.fill, str):
            raise SpecError(f"a text fill is a string, got {self.fill!r}")


Leaf = Union[Tensor, Scalar, Image, Text]
FeatureTree = Mapping[str, Union["FeatureTree", Leaf]]


# --------------------------------------------------------------------------- JSON of leaves


def _leaf_to_json(leaf: Leaf) -> dict[str, Any]:
    out: dict[str, Any] = {"type": leaf.kind}
    if isinstance(leaf, Image):
        out.update(shape=list(leaf.shape), encoding=leaf.encoding)
    elif isinstance(leaf, Text):
        if leaf.choices is not None:
            out["choices"] = list(leaf.choices)
        if leaf.max_length is not None:
            out["max_length"] = leaf.max_length
        if leaf.fill:
            out["fill"] = leaf.fill
    else:
        if not isinstance(leaf, Scalar):
            out["shape"] = list(leaf.shape)
        out["dtype"] = leaf.dtype
        if leaf.unit:
            out["unit"] = leaf.unit
        if leaf.names is not None:
            out["names"] = list(leaf.names)
        if leaf.bounds is not None:
            out["bounds"] = [list(b) for b in leaf.bounds] if len(leaf.bounds) > 1 else list(leaf.bounds[0])
        if leaf.fill not in (0, "", False):
            out["fill"] = leaf.fill
    if leaf.optional:
        out["optional"] = True
    if leaf.description:
        out["description"] = leaf.description
    return out


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_bounds(v: Any) -> bool:
    pair = lambda p: isinstance(p, list) and len(p) == 2 and all(_is_num(x) for x in p)  # noqa: E731
    return pair(v) or (isinstance(v, list) and len(v) > 0 and all(pair(p) for p in v))


#: JSON types of leaf keys: key -> (check, what the message says is expected). ``fill`` depends
#: on the dtype and is checked on its own. Values are checked further by the leaf classes.
_LEAF_KEY_TYPES: dict[str, tuple[Any, str]] = {
    "type": (lambda v: isinstance(v, str), "a string"),
    "shape": (lambda v: isinstance(v, list) and all(d is None or _is_int(d) for d in v),
              "a list of integers (null for a dynamic dimension)"),
    "dtype": (lambda v: isinstance(v, str), "a string"),
    "unit": (lambda v: v is None or isinstance(v, str), "a string"),
    "names": (_is_str_list, "a list of strings"),
    "bounds": (_is_bounds, "[low, high] or a list of [low, high] pairs of numbers"),
    "optional": (lambda v: isinstance(v, bool), "true or false"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "encoding": (lambda v: isinstance(v, str), "a string"),
    "choices": (_is_str_list, "a list of strings"),
    "max_length": (lambda v: v is None or (_is_int(v) and v > 0), "a positive integer"),
}

#: JSON types of top-level schema keys (``steps``/``episode_metadata`` are checked as trees).
_TOP_KEY_TYPES: dict[str, tuple[Any, str]] = {
    "$schema": (lambda v: isinstance(v, str), "a string"),
    "name": (lambda v: isinstance(v, str), "a string"),
    "version": (lambda v: isinstance(v, str), "a string like \"1.0.0\""),
    "description": (lambda v: isinstance(v, str), "a string"),
    "fps": (lambda v: v is None or (_is_num(v) and v > 0), "a positive number"),
    "rate_hz": (lambda v: v is None or (isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v)),
                "[low, high] in Hz"),
    "last_step": (lambda v: isinstance(v, str), "\"rlds\" or \"valid\""),
    "primary_clock": (lambda v: v is None or isinstance(v, str), "a string naming a timestamp/* feature"),
    "license": (lambda v: v is None or isinstance(v, str), "a string"),
    "standard_metadata": (lambda v: isinstance(v, bool), "true or false"),
}


def _leaf_from_json(obj: Any, where: str) -> Leaf:
    if not isinstance(obj, dict):
        raise SpecError(f"{where}: expected an object with a 'type', got {type(obj).__name__}")
    kind = obj.get("type")
    known = {
        "tensor": {"type", "shape", "dtype", "unit", "names", "bounds", "optional", "fill", "description"},
        "scalar": {"type", "dtype", "unit", "bounds", "optional", "fill", "description"},
        "image": {"type", "shape", "encoding", "optional", "description"},
        "text": {"type", "choices", "max_length", "optional", "fill", "description"},
    }
    if kind not in known:
        raise SpecError(f"{where}: 'type' must be one of {sorted(known)}, got {kind!r}")
    extra = set(obj) - known[kind]
    if extra:
        raise SpecError(f"{where}: unknown keys {sorted(extra)} for a {kind}")
    for key, value in obj.items():
        check = _LEAF_KEY_TYPES.get(key)
        if check is not None and not check[0](value):
            raise SpecError(f"{where}: '{key}' must be {check[1]}, got {json.dumps(value)}")
    if "fill" in obj:
        dtype = obj.get("dtype", "float32") if kind in ("tensor", "scalar") else "string"
        want = (str, "a string") if dtype == "string" else (bool, "true or false") if dtype == "bool" else \
            ((int, float), "a number")
        if not isinstance(obj["fill"], want[0]) or (dtype != "bool" and isinstance(obj["fill"], bool)):
            raise SpecError(f"{where}: 'fill' must be {want[1]} for dtype {dtype}, got {json.dumps(obj['fill'])}")
    args = {k: v for k, v in obj.items() if k != "type"}
    try:
        if kind in ("tensor", "scalar"):
            if "bounds" in args:
                b = args["bounds"]
                if (isinstance(b, list) and len(b) == 2 and all(isinstance(x, (int, float)) for x in b)):
                    b = [b]
                args["bounds"] = tuple(tuple(p) for p in b)
            if kind == "tensor":
                if "shape" not in args:
                    raise SpecError(f"{where}: a tensor needs a 'shape'")
                args["shape"] = tuple(args["shape"])
                return Tensor(**args)
            return Scalar(**args)
        if kind == "image":
            args["shape"] = tuple(args.get("shape", ()))
            return Image(**args)
        if "choices" in args:
            args["choices"] = tuple(args["choices"])
        return Text(**args)
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise SpecError(f"{where}: {e}") from None


def _tree_from_json(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SpecError(f"{where}: expected an object of features, got {type(obj).__name__}")
    out: dict[str, Any] = {}
    for name, node in obj.items():
        if not _NAME_RE.match(name) or "/" in name:
            raise SpecError(f"{where}/{name}: feature names use letters, digits, '_', '-', '.'")
        if isinstance(node, dict) and "type" in node and isinstance(node["type"], str):
            out[name] = _leaf_from_json(node, f"{where}/{name}")
        else:
            out[name] = _tree_from_json(node, f"{where}/{name}")
    return out


def _tree_to_json(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (_leaf_to_json(v) if _is_leaf(v) else _tree_to_json(v)) for k, v in tree.items()}


def _is_leaf(node: Any) -> bool:
    return isinstance(node, (Tensor, Image, Text))


def _freeze(tree: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType({k: (v if _is_leaf(v) else _freeze(v)) for k, v in tree.items()})


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Leaf]]:
    for name, node in tree.items():
        path = f"{prefix}{name}"
        if _is_leaf(node):
            yield path, node
            if node.optional:
                yield path + PRESENT_SUFFIX, Scalar(dtype="bool", description=f"whether {path} was observed")
        else:
            yield from _flatten(node, path + "/")


# --------------------------------------------------------------------------- the spec

STANDARD_EPISODE_METADATA: Mapping[str, Leaf] = MappingProxyType({
    "episode_id": Text(description="unique id of the episode"),
    "environment_id": Text(description="where it was recorded (track, lab bench, ...)"),
    "control_role": Text(description="who controlled the robot: user, pilot, teleop, ..."),
    "xr_mode": Text(description="XR teleoperation mode, or empty"),
    "tags": Tensor(shape=(None,), dtype="string", description="free-form provenance tags such as origin:jetson"),
    "start_time": Scalar(dtype="float64", unit="s", description="wall-clock start, seconds since the Unix epoch"),
})

_DEFAULT_STEP = {
    "reward": Scalar(dtype="float32"),
    "discount": Scalar(dtype="float32", bounds=((0.0, 1.0),)),
}


@dataclasses.dataclass(frozen=True, eq=False)
class EpisodeSpec:
    """The typed description of one dataset's episodes. Build with :meth:`from_dict` or
    :func:`load_spec`; treat as immutable (``with_image_shape`` returns a new spec)."""

    name: str
    version: str
    steps: Mapping[str, Any]
    episode_metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fps: float | None = None
    rate_hz: tuple[float, float] | None = None
    last_step: str = "rlds"
    primary_clock: str | None = None
    description: str = ""
    license: str | None = None
    standard_metadata: bool = True

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise SpecError(f"spec name {self.name!r} must use letters, digits, '_', '-', '.'")
        if not _VERSION_RE.match(self.version):
            raise SpecError(f"spec {self.name}: version {self.version!r} must look like 1.0.0")
        if self.last_step not in LAST_STEP_CONVENTIONS:
            raise SpecError(f"spec {self.name}: last_step must be one of {LAST_STEP_CONVENTIONS}, got {self.last_step!r}")
        steps = dict(self.steps)
        for key in ("observation", "action"):
            if key not in steps:
                raise SpecError(f"spec {self.name}: steps must declare '{key}'")
        for key, leaf in _DEFAULT_STEP.items():
            steps.setdefault(key, leaf)
        for key in FLAG_KEYS:
            node = steps.get(key)
            if node is not None and not (isinstance(node, Tensor) and node.shape == () and node.dtype == "bool"):
                raise SpecError(f"spec {self.name}: {key} is an RLDS flag and must be a bool scalar")
            steps[key] = Scalar(dtype="bool")
        meta = dict(STANDARD_EPISODE_METADATA) if self.standard_metadata else {}
        for key, node in dict(self.episode_metadata).items():
            if self.standard_metadata and key in STANDARD_EPISODE_METADATA and node != STANDARD_EPISODE_METADATA[key]:
                raise SpecError(f"spec {self.name}: episode_metadata/{key} is standard and cannot be redefined")
            meta[key] = node
        object.__setattr__(self, "steps", _freeze(steps))
        object.__setattr__(self, "episode_metadata", _freeze(meta))
        if self.rate_hz is not None:
            lo, hi = (float(x) for x in self.rate_hz)
            if not 0 < lo <= hi:
                raise SpecError(f"spec {self.name}: rate_hz must be 0 < low <= high, got {self.rate_hz}")
            object.__setattr__(self, "rate_hz", (lo, hi))
        flat_steps, flat_meta = list(_flatten(self.steps)), list(_flatten(self.episode_metadata))
        for where, flat in (("steps", flat_steps), ("episode_metadata", flat_meta)):
            seen: set[str] = set()
            for p, _ in flat:  # a declared `x_present` would silently replace optional x's mask
                if p in seen:
                    raise SpecError(f"spec {self.name}: {where}/{p} collides with the presence mask of the optional "
                                    f"feature {where}/{p[: -len(PRESENT_SUFFIX)]}")
                seen.add(p)
        leaves = dict(flat_steps)
        object.__setattr__(self, "_step_leaves", MappingProxyType(leaves))
        object.__setattr__(self, "_meta_leaves", MappingProxyType(dict(flat_meta)))
        cams = [p.rsplit("/", 1)[-1] for p, leaf in leaves.items() if isinstance(leaf, Image)]
        if len(set(cams)) != len(cams):
            raise SpecError(f"spec {self.name}: image feature names must be unique (they name frames/<camera>/), got {cams}")
        clocks = self.timestamp_paths
        if self.primary_clock is not None and self.primary_clock not in clocks:
            raise SpecError(f"spec {self.name}: primary_clock {self.primary_clock!r} is not a timestamp/* scalar ({clocks})")

    # ---- identity
    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def id(self) -> str:
        """``<name>.v<major>``, the file stem in ``schemas/`` (e.g. ``pi5_donkey.v1``)."""
        return f"{self.name}.v{self.major}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EpisodeSpec) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    # ---- flat views
    @property
    def step_leaves(self) -> Mapping[str, Leaf]:
        """Flat ``path -> leaf`` for every step column, including flags and ``*_present`` masks."""
        return self._step_leaves  # type: ignore[attr-defined]

    @property
    def metadata_leaves(self) -> Mapping[str, Leaf]:
        return self._meta_leaves  # type: ignore[attr-defined]

    @property
    def image_paths(self) -> tuple[str, ...]:
        return tuple(p for p, leaf in self.step_leaves.items() if isinstance(leaf, Image))

    @property
    def timestamp_paths(self) -> tuple[str, ...]:
        """Per-stream timestamp columns: float scalars under ``timestamp/`` (seconds)."""
        return tuple(p for p, leaf in self.step_leaves.items()
                     if p.startswith("timestamp/") and isinstance(leaf, Tensor) and leaf.shape == ()
                     and leaf.dtype.startswith("float"))

    @property
    def clock(self) -> str | None:
        """The timestamp column that defines the control rate (``primary_clock`` or the first)."""
        ts = self.timestamp_paths
        return self.primary_clock or (ts[0] if ts else None)

    def camera_name(self, path: str) -> str:
        """Folder name under ``frames/`` for an image path (its last component)."""
        return path.rsplit("/", 1)[-1]

    def leaf(self, path: str) -> Leaf:
        try:
            return self.step_leaves[path]
        except KeyError:
            raise KeyError(f"{self.id} has no step feature {path!r}; known: {', '.join(self.step_leaves)}") from None

    # ---- JSON
    def to_dict(self) -> dict[str, Any]:
        steps = {k: v for k, v in self.steps.items() if k not in FLAG_KEYS}
        meta = {k: v for k, v in self.episode_metadata.items()
                if not (self.standard_metadata and k in STANDARD_EPISODE_METADATA)}
        out: dict[str, Any] = {"name": self.name, "version": self.version}
        if self.description:
            out["description"] = self.description
        if self.fps is not None:
            out["fps"] = self.fps
        if self.rate_hz is not None:
            out["rate_hz"] = list(self.rate_hz)
        out["last_step"] = self.last_step
        if self.primary_clock:
            out["primary_clock"] = self.primary_clock
        if self.license:
            out["license"] = self.license
        if not self.standard_metadata:
            out["standard_metadata"] = False
        out["steps"] = _tree_to_json(steps)
        out["episode_metadata"] = _tree_to_json(meta)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, obj: Any, source: str = "<dict>") -> EpisodeSpec:
        if not isinstance(obj, dict):
            raise SpecError(f"{source}: a schema is a JSON object, got {type(obj).__name__}")
        allowed = {"$schema", "name", "version", "description", "fps", "rate_hz", "last_step",
                   "primary_clock", "license", "steps", "episode_metadata", "standard_metadata"}
        extra = set(obj) - allowed
        if extra:
            raise SpecError(f"{source}: unknown top-level keys {sorted(extra)}")
        for key in ("name", "version", "steps", "last_step"):
            if key not in obj:
                raise SpecError(f"{source}: missing required key '{key}' (last_step is 'rlds' or 'valid'; it is never guessed)")
        for key, (check, what) in _TOP_KEY_TYPES.items():
            if key in obj and not check(obj[key]):
                raise SpecError(f"{source}: '{key}' must be {what}, got {json.dumps(obj[key])}")
        try:
            return cls(
                name=obj["name"], version=obj["version"],
                steps=_tree_from_json(obj["steps"], f"{source}: steps"),
                episode_metadata=_tree_from_json(obj.get("episode_metadata", {}), f"{source}: episode_metadata"),
                fps=obj.get("fps"), rate_hz=tuple(obj["rate_hz"]) if obj.get("rate_hz") is not None else None,
                last_step=obj["last_step"], primary_clock=obj.get("primary_clock"),
                description=obj.get("description", ""), license=obj.get("license"),
                standard_metadata=obj.get("standard_metadata", True),
            )
        except SpecError as e:
            msg = str(e)
            raise SpecError(msg if msg.startswith(source) else f"{source}: {msg}") from None
        except (TypeError, ValueError) as e:
            raise SpecError(f"{source}: {e}") from None

    def save(self, path: str | Path) -> Path:
        """Write the spec as JSON, atomically."""
        from rldskit._io import atomic_write_bytes

        path = Path(path)
        atomic_write_bytes(path, self.to_json().encode())
        return path

    def with_image_shape(self, path: str, shape: tuple[int, int, int]) -> EpisodeSpec:
        """A copy whose image ``path`` has another ``(H, W, C)`` (a camera-shape variant)."""
        leaf = self.leaf(path)
        if not isinstance(leaf, Image):
            raise SpecError(f"{path} is not an image")
        d = self.to_dict()
        node = d["steps"]
        parts = path.split("/")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]]["shape"] = list(shape)
        return EpisodeSpec.from_dict(d, source=f"{self.id} with {path} {tuple(shape)}")

    # ---- projections
    def to_tfds_features(self):  # -> tfds.features.FeaturesDict
        """``FeaturesDict({'steps': Dataset({...}), 'episode_metadata': FeaturesDict({...})})``,
        the RLDS layout TFDS and Open-X use. Imports tensorflow_datasets lazily."""
        import tensorflow_datasets as tfds

        def leaf_feature(leaf: Leaf):
            doc = leaf.description + (f" [{leaf.unit}]" if getattr(leaf, "unit", None) else "")
            if isinstance(leaf, Image):
                return tfds.features.Image(shape=leaf.shape, encoding_format=leaf.encoding, doc=doc or None)
            if isinstance(leaf, Text):
                return tfds.features.Text(doc=doc or None)
            dtype = np.str_ if leaf.dtype == "string" else np.dtype(leaf.dtype).type
            if leaf.dtype == "string":
                return tfds.features.Tensor(shape=leaf.shape, dtype=np.str_, doc=doc or None)
            if leaf.dtype in ("float64", "uint64"):
                # tf.train.Example holds only float32 and int64 lists: float64 would be rounded to
                # float32 (epoch-second timestamps to ~2 minutes) and uint64 would overflow, so
                # these are stored as raw bytes, which is lossless.
                return tfds.features.Tensor(shape=leaf.shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES,
                                            doc=doc or None)
            if leaf.shape == ():
                return tfds.features.Scalar(dtype=dtype, doc=doc or None)
            return tfds.features.Tensor(shape=leaf.shape, dtype=dtype, doc=doc or None)

        def tree(node: Mapping[str, Any]):
            out = {}
            for k, v in node.items():
                if _is_leaf(v):
                    out[k] = leaf_feature(v)
                    if v.optional:
                        out[k + PRESENT_SUFFIX] = tfds.features.Scalar(dtype=np.bool_)
                else:
                    out[k] = tfds.features.FeaturesDict(tree(v))
            return out

        return tfds.features.FeaturesDict({
            "steps": tfds.features.Dataset(tree(self.steps)),
            "episode_metadata": tfds.features.FeaturesDict(tree(self.episode_metadata)),
        })

    def to_tfds_features_json(self) -> dict[str, Any]:
        """The ``features.json`` TFDS writes for :meth:`to_tfds_features`, built without
        importing TensorFlow (the converter writes it; ``tfds.builder_from_directory`` reads it)."""
        return {"pythonClassName": _TFDS + "features_dict.FeaturesDict", "featuresDict": {"features": {
            "steps": {"pythonClassName": _TFDS + "dataset_feature.Dataset",
                      "sequence": {"feature": _tfds_json_tree(self.steps), "length": "-1"}},
            "episode_metadata": _tfds_json_tree(self.episode_metadata),
        }}}

    @classmethod
    def from_tfds_features_json(cls, obj: Any, *, name: str, version: str, last_step: str | None,
                                source: str = "features.json", **kwargs: Any) -> EpisodeSpec:
        """A spec mirroring an existing RLDS TFDS dataset's ``features.json`` (Open-X and
        others). Its episode metadata is exactly the dataset's (``standard_metadata=False``).
        ``last_step`` must be given: a foreign dataset does not record it, and it is never
        guessed (Open-X datasets treat the last action as valid: pass ``"valid"``)."""
        if last_step is None:
            raise SpecError(f"{source}: this dataset does not record its last-step convention; pass last_step='rlds' "
                            "(the last action/reward are not meaningful) or 'valid' (they are, as in Open-X)")
        try:
            top = obj["featuresDict"]["features"]
            steps_node = top["steps"]["sequence"]["feature"]
        except (KeyError, TypeError):
            raise SpecError(f"{source}: not an RLDS features.json (expected a FeaturesDict with a 'steps' Dataset)") from None
        steps = _tree_from_tfds_json(steps_node, f"{source}: steps")
        meta = _tree_from_tfds_json(top["episode_metadata"], f"{source}: episode_metadata") if "episode_metadata" in top else {}
        try:
            return cls(name=name, version=version, steps=steps, episode_metadata=meta, last_step=last_step,
                       standard_metadata=False, **kwargs)
        except SpecError as e:
            raise SpecError(f"{source}: {e}") from None

    def to_arrow_schema(self, *, flat: bool = False, level: str = "step"):  # -> pyarrow.Schema
        """A pyarrow schema of one step (``level='step'``) or of episode metadata
        (``level='episode'``). Nested structs follow the feature tree; ``flat=True`` uses the
        ``/``-joined paths as column names. Images are ``binary`` (encoded bytes); each field
        carries ``shape``/``unit``/``names`` in its metadata."""
        import pyarrow as pa

        def arrow_type(leaf: Leaf):
            if isinstance(leaf, Image):
                return pa.binary()
            if isinstance(leaf, Text) or leaf.dtype == "string":
                base = pa.string()
            else:
                base = pa.from_numpy_dtype(np.dtype(leaf.dtype))
            for d in reversed(leaf.shape):
                base = pa.list_(base) if d is None else pa.list_(base, d)
            return base

        def field(name: str, leaf: Leaf):
            md = {"kind": leaf.kind, "shape": json.dumps(list(leaf.shape))}
            if getattr(leaf, "unit", None):
                md["unit"] = leaf.unit
            if getattr(leaf, "names", None):
                md["names"] = json.dumps(list(leaf.names))
            if isinstance(leaf, Image):
                md["encoding"] = leaf.encoding
            return pa.field(name, arrow_type(leaf), nullable=False, metadata=md)

        tree_root = self.steps if level == "step" else self.episode_metadata
        if level not in ("step", "episode"):
            raise ValueError(f"level must be 'step' or 'episode', got {level!r}")
        if flat:
            leaves = self.step_leaves if level == "step" else self.metadata_leaves
            return pa.schema([field(p, leaf) for p, leaf in leaves.items()],
                             metadata={"rldskit.spec": self.to_json()})

        def tree(node: Mapping[str, Any]):
            out = []
            for k, v in node.items():
                if _is_leaf(v):
                    out.append(field(k, v))
                    if v.optional:
                        out.append(field(k + PRESENT_SUFFIX, Scalar(dtype="bool")))
                else:
                    out.append(pa.field(k, pa.struct(tree(v)), nullable=False))
            return out

        return pa.schema(tree(tree_root), metadata={"rldskit.spec": self.to_json()})

    def to_step_json_schema(self) -> dict[str, Any]:
        """JSON Schema (draft 2020-12) of one captured step line (see ``rldskit.formats.capture_dir``).

        Images are frame paths relative to the episode folder (or ``{"$base64": ...}`` inline);
        optional signals may be ``null`` or absent; RLDS flags are optional in captured lines
        (the reader derives them from the step position and the episode's end record)."""

        def leaf_schema(leaf: Leaf) -> dict[str, Any]:
            if isinstance(leaf, Image):
                s: dict[str, Any] = {"oneOf": [
                    {"type": "string", "description": f"frame file relative to the episode folder ({leaf.encoding})"},
                    {"type": "object", "properties": {"$base64": {"type": "string"}}, "required": ["$base64"],
                     "additionalProperties": False}]}
            elif isinstance(leaf, Text) or leaf.dtype == "string":
                s = {"type": "string"}
                if isinstance(leaf, Text) and leaf.choices:
                    s["enum"] = list(leaf.choices)
                if isinstance(leaf, Text) and leaf.max_length:
                    s["maxLength"] = leaf.max_length
                s = _nest(s, leaf.shape)
            else:
                if leaf.dtype == "bool":
                    s = {"type": "boolean"}
                elif leaf.dtype.startswith(("int", "uint")):
                    s = {"type": "integer"}
                    info = np.iinfo(np.dtype(leaf.dtype))
                    s.update(minimum=int(info.min), maximum=int(info.max))
                else:
                    s = {"type": "number"}
                if leaf.bounds is not None and len(leaf.bounds) == 1:
                    s.update(minimum=leaf.bounds[0][0], maximum=leaf.bounds[0][1])
                s = _nest(s, leaf.shape)
            if getattr(leaf, "unit", None):
                s["description"] = f"[{leaf.unit}] {leaf.description}".strip()
            elif leaf.description:
                s["description"] = leaf.description
            if leaf.optional:
                s = {"anyOf": [s, {"type": "null"}]}
            return s

        def tree(node: Mapping[str, Any], top: bool = False) -> dict[str, Any]:
            props, required = {}, []
            for k, v in node.items():
                if _is_leaf(v):
                    props[k] = leaf_schema(v)
                    if not v.optional and not (top and k in FLAG_KEYS):
                        required.append(k)
                else:
                    props[k] = tree(v)
                    required.append(k)
            return {"type": "object", "properties": props, "required": required}

        out = tree(self.steps, top=True)
        return {"$schema": "https://json-schema.org/draft/2020-12/schema",
                "$id": f"rldskit:{self.id}:step", "title": f"{self.name} {self.version}: one captured step", **out}


_TFDS = "tensorflow_datasets.core.features."


def _tfds_json_leaf(leaf: Leaf) -> dict[str, Any]:
    doc = leaf.description + (f" [{leaf.unit}]" if getattr(leaf, "unit", None) else "")
    out: dict[str, Any] = {"description": doc} if doc else {}
    if isinstance(leaf, Image):
        out.update(pythonClassName=_TFDS + "image_feature.Image",
                   image={"shape": {"dimensions": [str(d) for d in leaf.shape]}, "dtype": "uint8",
                          "encodingFormat": leaf.encoding})
    elif isinstance(leaf, Text):
        out.update(pythonClassName=_TFDS + "text_feature.Text", text={})
    else:
        shape = {"dimensions": ["-1" if d is None else str(d) for d in leaf.shape]} if leaf.shape else {}
        scalar = leaf.shape == () and leaf.dtype not in ("float64", "uint64", "string")
        out.update(pythonClassName=_TFDS + ("scalar.Scalar" if scalar else "tensor_feature.Tensor"),
                   tensor={"shape": shape, "dtype": leaf.dtype,
                           "encoding": "bytes" if leaf.dtype in ("float64", "uint64") else "none"})
    return out


def _tfds_json_tree(node: Mapping[str, Any]) -> dict[str, Any]:
    feats: dict[str, Any] = {}
    for k, v in node.items():
        if _is_leaf(v):
            feats[k] = _tfds_json_leaf(v)
            if v.optional:
                feats[k + PRESENT_SUFFIX] = _tfds_json_leaf(Scalar(dtype="bool"))
        else:
            feats[k] = _tfds_json_tree(v)
    return {"pythonClassName": _TFDS + "features_dict.FeaturesDict", "featuresDict": {"features": feats}}


def _tree_from_tfds_json(node: Any, where: str) -> dict[str, Any]:
    if not isinstance(node, dict) or "featuresDict" not in node:
        raise SpecError(f"{where}: expected a FeaturesDict")
    out: dict[str, Any] = {}
    for k, v in node["featuresDict"].get("features", {}).items():
        path = f"{where}/{k}"
        desc = v.get("description", "") if isinstance(v, dict) else ""
        if not isinstance(v, dict):
            raise SpecError(f"{path}: expected an object")
        if "featuresDict" in v:
            out[k] = _tree_from_tfds_json(v, path)
        elif "image" in v:
            img = v["image"]
            dims = [int(d) for d in img.get("shape", {}).get("dimensions", [])]
            if len(dims) != 3 or min(dims) < 1:
                raise SpecError(f"{path}: images of unknown size {dims} are not supported")
            out[k] = Image(shape=tuple(dims), encoding=img.get("encodingFormat") or "png", description=desc)
        elif "text" in v:
            out[k] = Text(description=desc)
        elif "tensor" in v:
            t = v["tensor"]
            if t.get("encoding", "none") not in ("none", "bytes"):
                raise SpecError(f"{path}: tensor encoding {t.get('encoding')!r} is not supported")
            dims = tuple(None if int(d) < 0 else int(d) for d in t.get("shape", {}).get("dimensions", []))
            dtype = t.get("dtype", "float32")
            if dtype not in DTYPES:
                raise SpecError(f"{path}: dtype {dtype!r} is not supported")
            out[k] = Scalar(dtype=dtype, description=desc) if dims == () else Tensor(shape=dims, dtype=dtype, description=desc)
        else:
            kind = v.get("pythonClassName", "?").rsplit(".", 1)[-1]
            raise SpecError(f"{path}: TFDS feature {kind} is not supported (Tensor, Scalar, Image, Text and FeaturesDict are)")
    return out


def _nest(s: dict[str, Any], shape: tuple[int | None, ...]) -> dict[str, Any]:
    for d in reversed(shape):
        s = {"type": "array", "items": s} if d is None else {"type": "array", "items": s, "minItems": d, "maxItems": d}
    return s


# --------------------------------------------------------------------------- loading


def _schemas_dir():
    from importlib import resources

    return resources.files("rldskit.schemas")


def builtin_spec_names() -> list[str]:
    """Ids of the schemas shipped in ``schemas/`` (e.g. ``['pi5_donkey.v1', ...]``)."""
    return sorted(p.name[:-5] for p in _schemas_dir().iterdir() if p.name.endswith(".json"))


def load_spec(name_or_path: str | Path) -> EpisodeSpec:
    """Load a spec from a JSON file path, or a built-in by id (``pi5_donkey.v1``) or by name
    (``pi5_donkey``, the highest major version). Raises :class:`SpecError` with the reason."""
    p = Path(name_or_path)
    text: str | None = None
    source = str(name_or_path)
    if p.suffix == ".json" or p.exists() or "/" in source:
        if p.is_dir():
            p = p / "schema.json"
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SpecError(f"{p}: schema file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(f"{p}: cannot read schema: {e}") from None
        source = str(p)
    else:
        names = builtin_spec_names()
        if source in names:
            key = source
        else:
            cands = sorted((n for n in names if n.rsplit(".v", 1)[0] == source),
                           key=lambda n: int(n.rsplit(".v", 1)[1]))
            if not cands:
                raise SpecError(f"unknown schema {source!r}: not a file and not one of {', '.join(names)}")
            key = cands[-1]
        text = (_schemas_dir() / f"{key}.json").read_text(encoding="utf-8")
        source = f"schemas/{key}.json"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{source}: not valid JSON: {e}") from None
    return EpisodeSpec.from_dict(obj, source=source)

