"""EpisodeSpec: built-in schemas, JSON round trips, invalid schema files, and the projections
to TFDS features, pyarrow schemas and the JSON Schema of a captured step line, each checked
with the real library against real synthetic episodes."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from fuzzing import examples

import rldskit.spec as spec_mod
from rldskit.episode import nest
from rldskit.formats.capture_dir import read_episode
from rldskit.spec import (
    FLAG_KEYS,
    PRESENT_SUFFIX,
    STANDARD_EPISODE_METADATA,
    EpisodeSpec,
    Image,
    Scalar,
    SpecError,
    Tensor,
    Text,
    builtin_spec_names,
    load_spec,
)
from rldskit.synth import encode_image

BUILTINS = builtin_spec_names()


def _episode_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _py(v):
    """A numpy cell as the plain Python value a row-oriented writer would hand over."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


# =========================================================================== built-ins


def test_builtin_names_are_the_shipped_schema_files():
    shipped = sorted(p.stem for p in Path(spec_mod.__file__).resolve().parents[1].joinpath("schemas").glob("*.json"))
    assert BUILTINS == shipped
    assert BUILTINS, "no built-in schemas found"


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_loads_by_id_and_by_name(name):
    spec = load_spec(name)
    assert spec.id == name
    short = name.rsplit(".v", 1)[0]
    assert load_spec(short) == spec  # the highest major version of that name
    assert spec.name == short and spec.major == int(name.rsplit(".v", 1)[1])


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_round_trips_through_dict_and_file(name, tmp_path):
    spec = load_spec(name)
    again = EpisodeSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    assert again.step_leaves == spec.step_leaves and again.metadata_leaves == spec.metadata_leaves
    assert hash(again) == hash(spec)

    path = spec.save(tmp_path / f"{name}.json")
    assert path.is_file()
    from_file = load_spec(path)
    assert from_file == spec
    assert json.loads(path.read_text()) == spec.to_dict()
    # a folder holding schema.json (as EpisodeLogger writes beside its episodes) loads too
    spec.save(tmp_path / "schema.json")
    assert load_spec(tmp_path) == spec


@pytest.mark.parametrize("name", BUILTINS)
def test_flags_and_standard_metadata_are_always_present(name):
    spec = load_spec(name)
    for key in FLAG_KEYS:
        leaf = spec.step_leaves[key]
        assert isinstance(leaf, Tensor) and leaf.shape == () and leaf.dtype == "bool"
        assert key not in spec.to_dict()["steps"]  # implicit, never written
    for key, leaf in STANDARD_EPISODE_METADATA.items():
        assert spec.metadata_leaves[key] == leaf
        assert key not in spec.to_dict()["episode_metadata"]
    for key in ("observation", "action", "reward", "discount"):
        assert key in spec.steps


def test_minimal_spec_gets_flags_reward_discount_and_standard_metadata():
    spec = EpisodeSpec.from_dict({
        "name": "tiny", "version": "0.1.0", "last_step": "rlds",
        "steps": {"observation": {"x": {"type": "scalar"}}, "action": {"type": "tensor", "shape": [2]}},
    })
    assert set(spec.step_leaves) == {"observation/x", "action", "reward", "discount", *FLAG_KEYS}
    assert spec.step_leaves["discount"].bounds == ((0.0, 1.0),)
    assert set(spec.metadata_leaves) == set(STANDARD_EPISODE_METADATA)
    # declaring a flag the only way it can be (a bool scalar) is accepted and changes nothing
    spec2 = EpisodeSpec.from_dict({**spec.to_dict(), "steps": {**spec.to_dict()["steps"],
                                                               "is_first": {"type": "scalar", "dtype": "bool"}}})
    assert spec2 == spec


def test_optional_leaves_get_present_masks():
    spec = load_spec("xr_teleop.v1")
    optional = [p for p, leaf in spec.step_leaves.items() if getattr(leaf, "optional", False)]
    assert optional
    for p in optional:
        mask = spec.step_leaves[p + PRESENT_SUFFIX]
        assert isinstance(mask, Scalar) and mask.dtype == "bool" and not mask.optional
    required = [p for p, leaf in spec.step_leaves.items() if not getattr(leaf, "optional", False)
                and not p.endswith(PRESENT_SUFFIX)]
    assert all(p + PRESENT_SUFFIX not in spec.step_leaves for p in required)


def test_spec_is_immutable():
    spec = load_spec("pi5_donkey.v1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.steps["extra"] = Scalar()  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.step_leaves["action"] = Scalar()  # type: ignore[index]


@pytest.mark.parametrize("name", BUILTINS)
def test_with_image_shape_returns_a_new_spec(name):
    spec = load_spec(name)
    before = spec.to_dict()
    path = spec.image_paths[0]
    small = spec.with_image_shape(path, (24, 32, 3))
    assert small is not spec and small != spec
    assert spec.to_dict() == before  # the original is untouched
    assert small.step_leaves[path].shape == (24, 32, 3)
    assert small.step_leaves[path].encoding == spec.step_leaves[path].encoding
    for p, leaf in spec.step_leaves.items():
        if p != path:
            assert small.step_leaves[p] == leaf
    assert small.with_image_shape(path, spec.step_leaves[path].shape) == spec
    with pytest.raises(SpecError, match="not an image"):
        spec.with_image_shape("action", (24, 32, 3))
    with pytest.raises(SpecError, match="C in 1, 3, 4"):
        spec.with_image_shape(path, (24, 32, 2))


def test_every_leaf_kind_round_trips(tmp_path):
    spec = EpisodeSpec.from_dict({
        "name": "kinds", "version": "2.3.4", "last_step": "rlds", "fps": 12.5, "rate_hz": [10, 15],
        "primary_clock": "timestamp/b", "license": "MIT", "description": "every kind of leaf",
        "steps": {
            "observation": {
                "cam": {"type": "image", "shape": [8, 8, 1], "encoding": "png", "optional": True},
                "ragged": {"type": "tensor", "shape": [None, 3], "dtype": "int16", "description": "dynamic first axis"},
                "labels": {"type": "tensor", "shape": [2], "dtype": "string"},
                "level": {"type": "scalar", "dtype": "float32", "unit": "dB", "bounds": [-120, 0],
                          "optional": True, "fill": -120},
            },
            "action": {"type": "tensor", "shape": [3], "dtype": "float64", "names": ["a", "b", "c"],
                       "bounds": [[-1, 1], [0, 2], [-3, 3]]},
            "mode": {"type": "text", "choices": ["x", "y"], "max_length": 4, "fill": "x", "optional": True},
            "timestamp": {"a": {"type": "scalar", "dtype": "float64", "unit": "s"},
                          "b": {"type": "scalar", "dtype": "float64", "unit": "s"}},
        },
        "episode_metadata": {"robot": {"type": "text"}, "mass": {"type": "scalar", "dtype": "float32", "unit": "kg"}},
    })
    assert EpisodeSpec.from_dict(spec.to_dict()) == spec
    assert load_spec(spec.save(tmp_path / "kinds.json")) == spec
    leaves = spec.step_leaves
    assert leaves["observation/ragged"].shape == (None, 3) and not leaves["observation/ragged"].is_static
    assert leaves["observation/level"].placeholder().item() == -120
    assert leaves["mode"].choices == ("x", "y")
    assert spec.clock == "timestamp/b" and spec.timestamp_paths == ("timestamp/a", "timestamp/b")
    assert spec.rate_hz == (10.0, 15.0)
    lo, hi = leaves["action"].bounds_arrays()
    np.testing.assert_array_equal(lo, [-1, 0, -3])
    np.testing.assert_array_equal(hi, [1, 2, 3])


def test_equality_sees_every_field():
    spec = load_spec("pi5_donkey.v1")
    d = spec.to_dict()
    for mutate in (lambda o: o.__setitem__("fps", 21), lambda o: o.__setitem__("last_step", "rlds"),
                   lambda o: o["steps"]["action"].__setitem__("unit", "other"),
                   lambda o: o["episode_metadata"]["vehicle_id"].__setitem__("description", "x")):
        other = copy.deepcopy(d)
        mutate(other)
        assert EpisodeSpec.from_dict(other) != spec


_NAME = st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True)  # no "_": cannot collide with *_present or flags


@st.composite
def _leaf_json(draw, kinds=("tensor", "scalar", "image", "text")):
    kind = draw(st.sampled_from(kinds))
    out: dict = {"type": kind}
    if kind == "image":
        out["encoding"] = draw(st.sampled_from(["jpeg", "png"]))
        channels = [1, 3] if out["encoding"] == "jpeg" else [1, 3, 4]  # JPEG has no alpha
        out["shape"] = [draw(st.integers(1, 64)), draw(st.integers(1, 64)), draw(st.sampled_from(channels))]
    elif kind == "text":
        if draw(st.booleans()):
            out["choices"] = draw(st.lists(_NAME, min_size=1, max_size=4, unique=True))
        if draw(st.booleans()):
            out["max_length"] = draw(st.integers(1, 100))
    else:
        dtype = draw(st.sampled_from(spec_mod.DTYPES))
        out["dtype"] = dtype
        shape = draw(st.lists(st.one_of(st.none(), st.integers(0, 5)), max_size=3)) if kind == "tensor" else []
        if kind == "tensor":
            out["shape"] = shape
        if draw(st.booleans()):
            out["unit"] = draw(st.text(min_size=1, max_size=8))
        if shape and shape[-1] is not None and draw(st.booleans()):
            out["names"] = draw(st.lists(_NAME, min_size=shape[-1], max_size=shape[-1], unique=True))
        if dtype in spec_mod.NUMERIC_DTYPES and draw(st.booleans()):
            lo = draw(st.floats(-1e6, 1e6))
            out["bounds"] = [lo, draw(st.floats(lo, 1e6))]
    if draw(st.booleans()):
        out["optional"] = True
    if draw(st.booleans()):
        out["description"] = draw(st.text(max_size=20))
    return out


@st.composite
def _spec_json(draw):
    observation = draw(st.dictionaries(_NAME, _leaf_json(), min_size=1, max_size=4))
    extras = draw(st.dictionaries(_NAME, _leaf_json(kinds=("tensor", "scalar", "text")), max_size=3))
    steps = {**{k: v for k, v in extras.items() if k not in ("observation", "action")},
             "observation": observation, "action": draw(_leaf_json(kinds=("tensor",)))}
    meta = draw(st.dictionaries(_NAME.filter(lambda n: n not in STANDARD_EPISODE_METADATA),
                                _leaf_json(kinds=("tensor", "scalar", "text")), max_size=3))
    return {"name": draw(_NAME), "version": f"{draw(st.integers(0, 9))}.{draw(st.integers(0, 99))}.{draw(st.integers(0, 9))}",
            "last_step": draw(st.sampled_from(["rlds", "valid"])), "steps": steps, "episode_metadata": meta}


@settings(max_examples=examples(60), deadline=None)
@given(obj=_spec_json())
def test_any_valid_schema_round_trips_and_projects(obj):
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("pyarrow")
    pytest.importorskip("tensorflow_datasets")

    spec = EpisodeSpec.from_dict(obj)
    assert EpisodeSpec.from_dict(spec.to_dict()) == spec
    again = EpisodeSpec.from_dict(json.loads(spec.to_json()), source="again.json")
    assert again == spec and again.step_leaves == spec.step_leaves and again.metadata_leaves == spec.metadata_leaves
    for path, leaf in spec.step_leaves.items():
        if getattr(leaf, "optional", False):
            assert spec.step_leaves[path + PRESENT_SUFFIX].dtype == "bool"
    jsonschema.Draft202012Validator.check_schema(spec.to_step_json_schema())
    # every schema the loader accepts also projects (TFDS refuses e.g. 4-channel JPEG)
    assert spec.to_arrow_schema(flat=True).names == list(spec.step_leaves)
    features = spec.to_tfds_features()
    assert set(_flat_features(features["steps"].feature)) == set(spec.step_leaves)


# =========================================================================== invalid schema files


def _base() -> dict:
    return load_spec("pi5_donkey.v1").to_dict()


def _set(path: str, value):
    def mutate(obj):
        *parents, last = path.split("/")
        node = obj
        for p in parents:
            node = node[p]
        node[last] = value
    return mutate


def _delete(path: str):
    def mutate(obj):
        *parents, last = path.split("/")
        node = obj
        for p in parents:
            node = node[p]
        del node[last]
    return mutate


INVALID = [
    # (case, mutation of the pi5_donkey schema or raw file text, fragments the message must contain)
    ("not_json", "{'name': 'pi5_donkey',", ["not valid JSON"]),
    ("not_an_object", "[1, 2]", ["JSON object"]),
    ("version_not_string", _set("version", 1), ["'version'"]),
    ("name_not_string", _set("name", 5), ["'name'"]),
    ("fps_not_number", _set("fps", "fast"), ["'fps'"]),
    ("fps_negative", _set("fps", -20), ["'fps'"]),
    ("rate_not_pair", _set("rate_hz", [1, 2, 3]), ["'rate_hz'"]),
    ("steps_not_object", _set("steps", []), ["steps"]),
    ("shape_is_string", _set("steps/action/shape", "2"), ["steps/action", "'shape'"]),
    ("fill_not_in_dtype", _set("steps/policy_action/fill", 1e40), ["steps/policy_action", "fill"]),
    ("fill_string_for_float", _set("steps/policy_action/fill", "zero"), ["steps/policy_action", "fill"]),
    ("max_length_negative", _set("steps/control_mode/max_length", -3), ["steps/control_mode", "max_length"]),
    ("shape_has_float", _set("steps/action/shape", [2.5]), ["steps/action", "'shape'"]),
    ("names_is_string", _set("steps/action/names", "ab"), ["steps/action", "'names'"]),
    ("optional_is_string", _set("steps/policy_action/optional", "yes"), ["steps/policy_action", "'optional'"]),
    ("unit_is_number", _set("steps/action/unit", 3), ["steps/action", "'unit'"]),
    ("description_is_number", _set("steps/action/description", 3), ["steps/action", "'description'"]),
    ("choices_is_string", _set("steps/control_mode/choices", "user"), ["steps/control_mode", "'choices'"]),
    ("max_length_is_string", _set("steps/control_mode/max_length", "5"), ["steps/control_mode", "'max_length'"]),
    ("fill_wrong_type", _set("steps/policy_action/fill", "zz"), ["steps/policy_action", "'fill'"]),
    ("bounds_is_string", _set("steps/discount/bounds", "0..1"), ["steps/discount", "'bounds'"]),
    ("unknown_top_key", _set("colour", "red"), ["unknown top-level keys", "colour"]),
    ("unknown_leaf_key", _set("steps/action/colour", "red"), ["steps/action", "unknown keys", "colour"]),
    ("unknown_leaf_type", _set("steps/action/type", "matrix"), ["steps/action", "'type'", "matrix"]),
    ("bad_dtype", _set("steps/action/dtype", "float128"), ["steps/action", "dtype", "float128"]),
    ("names_shape_mismatch", _set("steps/action/names", ["a", "b", "c"]), ["steps/action", "names", "shape"]),
    ("bounds_low_gt_high", _set("steps/action/bounds", [[1, -1], [-1, 1]]), ["steps/action", "bounds", "low > high"]),
    ("scalar_bounds_low_gt_high", _set("steps/discount/bounds", [1, 0]), ["steps/discount", "low > high"]),
    ("bounds_count", _set("steps/action/bounds", [[0, 1]] * 3), ["steps/action", "bounds"]),
    ("version_two_parts", _set("version", "1.0"), ["version", "1.0"]),
    ("version_prefixed", _set("version", "v1.0.0"), ["version", "v1.0.0"]),
    ("last_step_unknown", _set("last_step", "guess"), ["last_step", "guess"]),
    ("duplicate_camera", _set("steps/rear", {"image": {"type": "image", "shape": [4, 4, 3]}}), ["image", "unique"]),
    ("image_shape_2d", _set("steps/observation/image/shape", [4, 4]), ["steps/observation/image", "shape"]),
    ("image_encoding", _set("steps/observation/image/encoding", "gif"), ["steps/observation/image", "encoding", "gif"]),
    ("jpeg_with_alpha", _set("steps/observation/image/shape", [4, 4, 4]), ["steps/observation/image", "JPEG", "png"]),
    ("flag_not_bool", _set("steps/is_first", {"type": "scalar", "dtype": "int32"}), ["is_first", "bool"]),
    ("standard_metadata_redefined", _set("episode_metadata/episode_id", {"type": "scalar"}), ["episode_id", "standard"]),
    ("primary_clock_unknown", _set("primary_clock", "timestamp/nope"), ["primary_clock", "timestamp/nope"]),
    ("no_action", _delete("steps/action"), ["action"]),
    ("bad_feature_name", _set("steps/bad key", {"type": "scalar"}), ["bad key"]),
    ("bool_with_bounds", _set("steps/flag", {"type": "scalar", "dtype": "bool", "bounds": [0, 1]}), ["steps/flag", "bounds"]),
    ("present_mask_collision", _set("steps/policy_action_present", {"type": "scalar"}),
     ["policy_action_present", "presence mask"]),
]


@pytest.mark.parametrize("case,mutation,fragments", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_schema_file_raises_spec_error_naming_file_and_key(tmp_path, case, mutation, fragments):
    path = tmp_path / f"{case}.json"
    if isinstance(mutation, str):
        path.write_text(mutation)
    else:
        obj = _base()
        mutation(obj)
        path.write_text(json.dumps(obj))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    msg = str(e.value)
    assert str(path) in msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"


def test_base_of_the_invalid_cases_is_valid(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(_base()))
    assert load_spec(path) == load_spec("pi5_donkey.v1")


def test_missing_last_step_is_never_guessed(tmp_path):
    obj = _base()
    del obj["last_step"]
    path = tmp_path / "no_last_step.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(SpecError) as e:
        load_spec(path)
    msg = str(e.value)
    assert str(path) in msg and "last_step" in msg and "never guessed" in msg


@pytest.mark.parametrize("key", ["name", "version", "steps"])
def test_missing_required_top_level_key(tmp_path, key):
    obj = _base()
    del obj[key]
    path = tmp_path / "missing.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(SpecError, match=f"'{key}'") as e:
        load_spec(path)
    assert str(path) in str(e.value)


def test_unknown_schema_name_and_missing_file(tmp_path):
    with pytest.raises(SpecError) as e:
        load_spec("no_such_robot")
    assert "no_such_robot" in str(e.value)
    for name in BUILTINS:
        assert name in str(e.value)  # says what exists
    with pytest.raises(SpecError, match="no_such_robot.v7"):
        load_spec("no_such_robot.v7")
    missing = tmp_path / "absent.json"
    with pytest.raises(SpecError, match="not found") as e:
        load_spec(missing)
    assert str(missing) in str(e.value)


def test_python_constructors_reject_bad_leaves():
    with pytest.raises(SpecError):
        Tensor(shape=(2,), names=("a",))
    with pytest.raises(SpecError):
        Tensor(shape=(2,), bounds=((1, 0),))
    with pytest.raises(SpecError):
        Scalar(shape=(1,))
    with pytest.raises(SpecError):
        Image(shape=(4, 4, 3), encoding="webp")
    with pytest.raises(SpecError):
        Tensor(shape=(2,), dtype="complex64")


# =========================================================================== TFDS projection


def _flat_features(fd, prefix=""):
    import tensorflow_datasets as tfds

    out = {}
    for k in fd.keys():
        f = fd[k]
        if isinstance(f, tfds.features.FeaturesDict):
            out.update(_flat_features(f, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = f
    return out


def _check_leaf_feature(tfds, feature, leaf, path):
    if isinstance(leaf, Image):
        assert isinstance(feature, tfds.features.Image), path
        assert tuple(feature.shape) == leaf.shape, path
        assert feature.encoding_format == leaf.encoding, path
    elif isinstance(leaf, Text):
        assert isinstance(feature, tfds.features.Text), path
    elif leaf.dtype == "string":
        assert isinstance(feature, tfds.features.Tensor) and tuple(feature.shape) == leaf.shape, path
        assert feature.np_dtype.kind in "OSU", path
    else:
        assert isinstance(feature, tfds.features.Tensor), path
        assert tuple(feature.shape) == leaf.shape, path
        assert np.dtype(feature.np_dtype) == leaf.np_dtype, path


@pytest.mark.parametrize("name", BUILTINS)
def test_tfds_features_mirror_the_spec(name, small_spec):
    tfds = pytest.importorskip("tensorflow_datasets")
    spec = small_spec(name)
    features = spec.to_tfds_features()
    assert isinstance(features, tfds.features.FeaturesDict)
    assert set(features.keys()) == {"steps", "episode_metadata"}
    steps = features["steps"]
    assert isinstance(steps, tfds.features.Dataset)
    flat_steps = _flat_features(steps.feature)
    assert set(flat_steps) == set(spec.step_leaves)
    for path, leaf in spec.step_leaves.items():
        _check_leaf_feature(tfds, flat_steps[path], leaf, path)
    for path, leaf in spec.step_leaves.items():
        if getattr(leaf, "optional", False):
            mask = flat_steps[path + PRESENT_SUFFIX]
            assert isinstance(mask, tfds.features.Tensor) and mask.shape == () and np.dtype(mask.np_dtype) == bool
    flat_meta = _flat_features(features["episode_metadata"])
    assert set(flat_meta) == set(spec.metadata_leaves)
    for path, leaf in spec.metadata_leaves.items():
        _check_leaf_feature(tfds, flat_meta[path], leaf, path)
    # what a TFDS directory stores as features.json reads back as the same features
    again = tfds.features.FeatureConnector.from_json(features.to_json())
    assert again.to_json() == features.to_json()
    assert again.get_serialized_info() == features.get_serialized_info()


def _tfds_example(spec, episode):
    """The nested RLDS example of an Episode. Absent optional frames become a black frame of the
    declared shape: TFDS must be able to decode every stored image (the mask says it is absent)."""
    cols = dict(episode.steps)
    for path in spec.image_paths:
        mask = cols.get(path + PRESENT_SUFFIX)
        if mask is not None and not mask.all():
            leaf = spec.step_leaves[path]
            blank = encode_image(np.zeros(leaf.shape, np.uint8), leaf.encoding)
            col = np.array(cols[path], dtype=object)
            col[~mask] = blank
            cols[path] = col
    steps = [nest({k: c[i] for k, c in cols.items()}) for i in range(len(episode))]
    return {"steps": steps, "episode_metadata": nest(episode.metadata)}, cols


def _at(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _pil_decode(data: bytes) -> np.ndarray:
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as img:
        return np.asarray(img)


@pytest.mark.parametrize("name", BUILTINS)
def test_tfds_encode_decode_round_trips_a_real_episode(name, small_spec, synthetic_datasets):
    tfds = pytest.importorskip("tensorflow_datasets")
    spec = small_spec(name)
    features = spec.to_tfds_features()
    for ep_dir in _episode_dirs(synthetic_datasets[spec.id]):
        episode = read_episode(ep_dir, spec, load_frames=True)
        example, cols = _tfds_example(spec, episode)
        serialized = features.serialize_example(example)
        decoded = features.deserialize_example_np(serialized)
        steps = list(decoded["steps"])
        assert len(steps) == len(episode)
        for path, leaf in spec.step_leaves.items():
            got = [_at(s, path) for s in steps]
            want = cols[path]
            if isinstance(leaf, Image):
                for i, img in enumerate(got):
                    assert img.shape == leaf.shape
                    np.testing.assert_array_equal(img, _pil_decode(want[i]), err_msg=f"{path} step {i}")
            elif isinstance(leaf, Text) or leaf.dtype == "string":
                assert [g.decode() for g in got] == list(want), path
            else:
                arr = np.stack(got)
                assert arr.dtype == leaf.np_dtype, path
                # exact: float64 timestamps (epoch seconds) must not be rounded to float32
                np.testing.assert_array_equal(arr, np.asarray(want), err_msg=path)
        meta = decoded["episode_metadata"]
        for path, leaf in spec.metadata_leaves.items():
            got, want = _at(meta, path), episode.metadata[path]
            if isinstance(leaf, Text):
                assert got.decode() == want, path
            elif leaf.dtype == "string":
                assert [g.decode() for g in got] == list(want), path
            else:
                assert got == want, path
        # the stored frames are the captured bytes, not a re-encode
        skip = tfds.decode.SkipDecoding()
        decoders: dict = {}
        for path in spec.image_paths:
            node = decoders.setdefault("steps", {})
            *parents, last = path.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = skip
        raw = list(features.deserialize_example_np(serialized, decoders=decoders)["steps"])
        for path in spec.image_paths:
            assert [_at(s, path) for s in raw] == list(cols[path])


@pytest.mark.slow
def test_tfds_tensorflow_decode_keeps_float64_timestamps(small_donkey_spec, synthetic_datasets):
    pytest.importorskip("tensorflow_datasets")
    spec = small_donkey_spec
    features = spec.to_tfds_features()
    ep_dir = _episode_dirs(synthetic_datasets[spec.id])[0]
    episode = read_episode(ep_dir, spec, load_frames=True)
    example, _ = _tfds_example(spec, episode)
    decoded = features.deserialize_example(features.serialize_example(example))
    steps = list(decoded["steps"].as_numpy_iterator())
    assert len(steps) == len(episode)
    for clock in spec.timestamp_paths:
        got = np.array([_at(s, clock) for s in steps])
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, episode.steps[clock])
    imgs = np.stack([_at(s, "observation/image") for s in steps])
    assert imgs.shape == (len(episode), *spec.step_leaves["observation/image"].shape)
    assert float(decoded["episode_metadata"]["start_time"].numpy()) == episode.metadata["start_time"]


# =========================================================================== pyarrow projection


def _arrow_value_type(pa, leaf):
    if isinstance(leaf, Image):
        return pa.binary()
    if isinstance(leaf, Text) or leaf.dtype == "string":
        t = pa.string()
    else:
        t = pa.from_numpy_dtype(leaf.np_dtype)
    for d in reversed(leaf.shape):
        t = pa.list_(t) if d is None else pa.list_(t, d)
    return t


@pytest.mark.parametrize("name", BUILTINS)
def test_arrow_schema_flat_and_nested(name):
    pa = pytest.importorskip("pyarrow")
    spec = load_spec(name)
    flat = spec.to_arrow_schema(flat=True)
    assert flat.names == list(spec.step_leaves)
    for path, leaf in spec.step_leaves.items():
        field = flat.field(path)
        assert field.type == _arrow_value_type(pa, leaf), path
        assert not field.nullable
        md = {k.decode(): v.decode() for k, v in field.metadata.items()}
        assert md["kind"] == leaf.kind
        assert json.loads(md["shape"]) == list(leaf.shape)
        if getattr(leaf, "unit", None):
            assert md["unit"] == leaf.unit
        if getattr(leaf, "names", None):
            assert json.loads(md["names"]) == list(leaf.names)
        if isinstance(leaf, Image):
            assert md["encoding"] == leaf.encoding
    # the spec travels with the schema
    assert EpisodeSpec.from_dict(json.loads(flat.metadata[b"rldskit.spec"])) == spec

    nested = spec.to_arrow_schema()
    assert nested.names == list(dict.fromkeys(p.split("/")[0] for p in spec.step_leaves))
    for path, leaf in spec.step_leaves.items():
        *parents, last = path.split("/")
        t = nested
        for p in parents:
            f = t.field(p)
            assert pa.types.is_struct(f.type)
            t = f.type
        f = t.field(last)
        assert f.type == _arrow_value_type(pa, leaf), path
        assert f.metadata == flat.field(path).metadata

    meta = spec.to_arrow_schema(flat=True, level="episode")
    assert meta.names == list(spec.metadata_leaves)
    assert meta.field("start_time").metadata[b"unit"] == b"s"
    with pytest.raises(ValueError, match="level"):
        spec.to_arrow_schema(level="dataset")


@pytest.mark.parametrize("name", BUILTINS)
def test_arrow_tables_of_real_steps_match_the_schema(name, small_spec, synthetic_datasets):
    pa = pytest.importorskip("pyarrow")
    spec = small_spec(name)
    flat_schema = spec.to_arrow_schema(flat=True)
    nested_schema = spec.to_arrow_schema()
    meta_schema = spec.to_arrow_schema(level="episode")
    for ep_dir in _episode_dirs(synthetic_datasets[spec.id]):
        episode = read_episode(ep_dir, spec, load_frames=True)
        rows = [{k: _py(c[i]) for k, c in episode.steps.items()} for i in range(len(episode))]

        flat = pa.Table.from_pylist(rows, schema=flat_schema)
        assert flat.schema.equals(flat_schema, check_metadata=True)
        assert flat.num_rows == len(episode)
        assert flat.to_pylist() == [{k: r[k] for k in flat_schema.names} for r in rows]
        # a table built without the schema (types inferred) casts onto it
        inferred = pa.Table.from_pylist(rows).select(flat_schema.names)
        assert inferred.cast(flat_schema).equals(flat)

        nested_rows = [nest(r) for r in rows]
        nested = pa.Table.from_pylist(nested_rows, schema=nested_schema)
        assert nested.schema.equals(nested_schema, check_metadata=True)
        assert nested.to_pylist() == [{k: r[k] for k in nested_schema.names} for r in nested_rows]
        assert pa.Table.from_pylist(nested_rows).select(nested_schema.names).cast(nested_schema).equals(nested)

        meta = pa.Table.from_pylist([nest({k: _py(v) for k, v in episode.metadata.items()})], schema=meta_schema)
        assert meta.column("episode_id")[0].as_py() == episode.episode_id
        assert meta.column("start_time")[0].as_py() == episode.metadata["start_time"]


def test_arrow_schema_rejects_rows_that_break_the_spec(small_donkey_spec, synthetic_datasets):
    pa = pytest.importorskip("pyarrow")
    spec = small_donkey_spec
    schema = spec.to_arrow_schema(flat=True)
    episode = read_episode(_episode_dirs(synthetic_datasets[spec.id])[0], spec, load_frames=True)
    good = [{k: _py(c[i]) for k, c in episode.steps.items()} for i in range(3)]
    pa.Table.from_pylist(good, schema=schema)  # sanity: the unmodified rows are accepted
    for key, value in (("action", [0.1, 0.2, 0.3]), ("reward", "high"), ("observation/image", 7)):
        bad = copy.deepcopy(good)
        bad[1][key] = value
        with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
            pa.Table.from_pylist(bad, schema=schema)


# =========================================================================== JSON Schema of a step line


@pytest.mark.parametrize("name", BUILTINS)
def test_step_json_schema_is_valid_draft_2020_12(name):
    jsonschema = pytest.importorskip("jsonschema")
    schema = load_spec(name).to_step_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema")
    assert name in schema["$id"]


def _step_lines(folder: Path) -> list[dict]:
    lines = []
    for ep_dir in _episode_dirs(folder):
        for chunk in sorted((ep_dir / "steps").glob("*.jsonl")):
            lines.extend(json.loads(x) for x in chunk.read_text().splitlines())
    return lines


def _count_nulls(obj) -> int:
    if obj is None:
        return 1
    if isinstance(obj, dict):
        return sum(_count_nulls(v) for v in obj.values())
    return 0


@pytest.mark.parametrize("name", BUILTINS)
def test_every_captured_step_line_validates(name, small_spec, synthetic_datasets):
    jsonschema = pytest.importorskip("jsonschema")
    spec = small_spec(name)
    validator = jsonschema.Draft202012Validator(spec.to_step_json_schema())
    folder = synthetic_datasets[spec.id]
    lines = _step_lines(folder)
    logged = sum(json.loads((d / "metadata.json").read_text())["end"]["num_steps"] for d in _episode_dirs(folder))
    assert len(lines) == logged > 0
    for n, line in enumerate(lines):
        errors = [e.message for e in validator.iter_errors(line)]
        assert not errors, f"line {n}: {errors}"
    if spec.name == "xr_teleop":  # its synthetic signals drop out: the lines hold nulls
        assert sum(_count_nulls(line) for line in lines) > 0


def _donkey_line_and_validator(small_donkey_spec, synthetic_datasets):
    import jsonschema

    lines = _step_lines(synthetic_datasets[small_donkey_spec.id])
    return lines[0], jsonschema.Draft202012Validator(small_donkey_spec.to_step_json_schema())


REJECTED = [
    ("string_for_number", _set("reward", "0.5"), "reward"),
    ("array_too_short", _set("action", [0.1]), "action"),
    ("array_too_long", _set("action", [0.1, 0.2, 0.3]), "action"),
    ("element_not_number", _set("action", [0.1, "left"]), "action"),
    ("not_in_choices", _set("control_mode", "robot"), "control_mode"),
    ("out_of_scalar_bounds", _set("discount", 1.5), "discount"),
    ("image_not_a_path", _set("observation/image", 42), "image"),
    ("flag_not_bool", _set("is_first", "yes"), "is_first"),
    ("required_missing", _delete("action"), "action"),
    ("nested_required_missing", _delete("timestamp/control"), "control"),
    ("optional_wrong_type", _set("policy_action", "none"), "policy_action"),
]


@pytest.mark.parametrize("case,mutation,key", REJECTED, ids=[c[0] for c in REJECTED])
def test_mutated_step_line_is_rejected(case, mutation, key, small_donkey_spec, synthetic_datasets):
    pytest.importorskip("jsonschema")
    line, validator = _donkey_line_and_validator(small_donkey_spec, synthetic_datasets)
    assert validator.is_valid(line)
    bad = copy.deepcopy(line)
    mutation(bad)
    errors = list(validator.iter_errors(bad))
    assert errors
    assert any(key in [str(p) for p in e.absolute_path] or key in e.message for e in errors)


ACCEPTED = [
    ("optional_null", _set("policy_action", None)),
    ("optional_absent", _delete("policy_action")),
    ("optional_present", _set("policy_action", [0.5, -0.5])),
    ("flags_given", lambda o: o.update(is_first=True, is_last=False, is_terminal=False)),
    ("inline_frame", _set("observation/image", {"$base64": "/9j/AAAA"})),
]


@pytest.mark.parametrize("case,mutation", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_step_line_variants_the_reader_accepts_validate(case, mutation, small_donkey_spec, synthetic_datasets):
    pytest.importorskip("jsonschema")
    line, validator = _donkey_line_and_validator(small_donkey_spec, synthetic_datasets)
    ok = copy.deepcopy(line)
    mutation(ok)
    assert validator.is_valid(ok), [e.message for e in validator.iter_errors(ok)]
