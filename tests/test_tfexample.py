"""tf.train.Example codec without TensorFlow: round trips, and agreement with TFDS/TF both ways."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from fuzzing import examples

from rldskit.episode import assert_episodes_equal, nest
from rldskit.formats.capture_dir import read_episode
from rldskit.formats.tfexample import (BYTES, FLOAT, INT64, ExampleDecodeError, _decode_varints, _encode_varints,
                                       decode_episode, decode_features, decode_step, encode_episode, encode_features,
                                       encode_step)
from rldskit.spec import load_spec
from rldskit.synth import write_synthetic

SCHEMAS = ["pi5_donkey.v1", "so100_arm.v1", "xr_teleop.v1"]


def small(name: str):
    spec = load_spec(name)
    for p in spec.image_paths:
        spec = spec.with_image_shape(p, (24, 32, 3))
    return spec


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    out = {}
    for name in SCHEMAS:
        spec = small(name)
        root = tmp_path_factory.mktemp(name)
        paths = write_synthetic(spec, root, 2, 12, seed=3)
        out[name] = (spec, [read_episode(p, load_frames=True) for p in paths])
    return out


@pytest.mark.parametrize("name", SCHEMAS)
def test_episode_round_trip_is_exact(episodes, name):
    spec, eps = episodes[name]
    for ep in eps:
        data = encode_episode(ep, spec)
        assert encode_episode(ep, spec) == data  # deterministic bytes
        assert_episodes_equal(ep, decode_episode(data, spec))


@pytest.mark.parametrize("name", SCHEMAS)
def test_step_round_trip_is_exact(episodes, name):
    spec, eps = episodes[name]
    ep = eps[0]
    for i in range(len(ep)):
        step = decode_step(encode_step(ep, i, spec), spec)
        assert set(step) == set(spec.step_leaves)
        for k, v in step.items():
            want = ep.steps[k][i]
            if isinstance(want, (bytes, str)):
                assert v == want, k
            else:
                assert np.asarray(v).dtype == np.asarray(want).dtype, k
                np.testing.assert_array_equal(v, want, err_msg=k)


def _tfds_example(ep):
    steps = [nest({k: v[i] for k, v in ep.steps.items()}) for i in range(len(ep))]
    return {"steps": steps, "episode_metadata": nest(ep.metadata)}


@pytest.mark.slow
@pytest.mark.parametrize("name", SCHEMAS)
def test_tfds_encoded_bytes_decode_through_ours_and_ours_through_tfds(episodes, name):
    """TFDS's own serializer and deserializer are the reference, in both directions."""
    spec, eps = episodes[name]
    features = spec.to_tfds_features()
    for ep in eps:
        example = _tfds_example(ep)
        for path in spec.image_paths:  # TFDS cannot encode an empty frame: give absent ones a real black frame
            if spec.step_leaves[path].optional:
                from rldskit.formats.tfexample import _placeholder_frame

                node_path = path.split("/")
                for s, present in zip(example["steps"], ep.steps[path + "_present"]):
                    node = s
                    for p in node_path[:-1]:
                        node = node[p]
                    if not present:
                        node[node_path[-1]] = _placeholder_frame(spec.step_leaves[path].shape, "jpeg")
        theirs = features.serialize_example(example)
        assert_episodes_equal(ep, decode_episode(theirs, spec))
        ours = encode_episode(ep, spec)
        assert len(ours) == len(theirs)
        decoded = features.deserialize_example_np(ours, decoders=_skip_image_decoding(features))
        steps = [decoded["steps"][i] for i in range(len(ep))]
        for path in spec.step_leaves:
            vals = []
            for s in steps:
                for part in path.split("/"):
                    s = s[part]
                vals.append(s)
            got = np.empty(len(vals), dtype=object) if isinstance(vals[0], bytes) else np.asarray(vals)
            if got.dtype == object:
                got[:] = vals
            want = ep.steps[path]
            if got.dtype == object or got.dtype.kind == "S":
                want_b = [w.encode() if isinstance(w, str) else w for w in want]
                if path in spec.image_paths and spec.step_leaves[path].optional:
                    mask = ep.steps[path + "_present"]
                    assert [g for g, m in zip(got, mask) if m] == [w for w, m in zip(want_b, mask) if m], path
                else:
                    assert list(got) == want_b, path
            else:
                np.testing.assert_array_equal(got, np.asarray(want), err_msg=path)
        meta = decoded["episode_metadata"]
        assert meta["episode_id"] == ep.metadata["episode_id"].encode()
        assert meta["start_time"] == ep.metadata["start_time"]  # float64 kept exact (Encoding.BYTES)


def _skip_image_decoding(features):
    import tensorflow_datasets as tfds

    def walk(feat):
        if isinstance(feat, tfds.features.Image):
            return tfds.decode.SkipDecoding()
        if isinstance(feat, (tfds.features.FeaturesDict, tfds.features.Dataset)):
            inner = feat.feature if isinstance(feat, tfds.features.Dataset) else feat
            return {k: walk(v) for k, v in inner.items()}
        return None

    def prune(d):
        if isinstance(d, dict):
            d = {k: prune(v) for k, v in d.items()}
            d = {k: v for k, v in d.items() if v is not None and v != {}}
        return d

    return prune(walk(features))


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=50))
def test_varints_round_trip_and_match_protobuf(values):
    arr = np.array(values, dtype=np.int64)
    enc = _encode_varints(arr)
    np.testing.assert_array_equal(_decode_varints(enc, "t"), arr)
    from google.protobuf.internal import encoder

    ref = b"".join(encoder._VarintBytes(v & 0xFFFFFFFFFFFFFFFF) for v in values)
    assert enc == ref


@settings(max_examples=examples(100), deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=10),
                       st.one_of(st.tuples(st.just(BYTES), st.lists(st.binary(max_size=20), max_size=5)),
                                 st.tuples(st.just(FLOAT), st.lists(st.floats(width=32, allow_nan=False), max_size=8)),
                                 st.tuples(st.just(INT64), st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8))),
                       max_size=6))
def test_generic_features_match_tensorflow_protobuf(feats):
    from tensorflow.core.example import example_pb2

    data = encode_features({k: (kind, v if kind == BYTES else np.array(v, dtype=np.float32 if kind == FLOAT else np.int64))
                            for k, (kind, v) in feats.items()})
    ex = example_pb2.Example.FromString(data)
    assert set(ex.features.feature) == set(feats)
    for k, (kind, v) in feats.items():
        f = ex.features.feature[k]
        assert f.WhichOneof("kind") == {BYTES: "bytes_list", FLOAT: "float_list", INT64: "int64_list"}[kind]
        got = list(getattr(f, f.WhichOneof("kind")).value)
        assert got == (v if kind != FLOAT else list(np.array(v, dtype=np.float32)))
    back = decode_features(ex.SerializeToString())
    for k, (kind, v) in feats.items():
        assert back[k][0] == kind
        assert list(back[k][1]) == (v if kind != FLOAT else list(np.array(v, dtype=np.float32)))


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_hostile_bytes_raise_example_decode_error_or_decode(data):
    spec = small("pi5_donkey.v1")
    try:
        decode_episode(data, spec)
    except ExampleDecodeError:
        pass


def test_truncated_and_flipped_records_are_reported(episodes):
    spec, eps = episodes["pi5_donkey.v1"]
    data = encode_episode(eps[0], spec)
    for cut in (1, 10, len(data) // 3, len(data) // 2, len(data) - 1):
        with pytest.raises(ExampleDecodeError):
            decode_episode(data[:cut], spec)
    rng = np.random.default_rng(0)
    for _ in range(200):
        b = bytearray(data)
        b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
        try:
            decode_episode(bytes(b), spec)
        except ExampleDecodeError:
            pass


def test_a_missing_feature_names_it(episodes):
    spec, eps = episodes["pi5_donkey.v1"]
    feats = decode_features(encode_episode(eps[0], spec))
    del feats["steps/action"]
    with pytest.raises(ExampleDecodeError, match="steps/action"):
        decode_episode(encode_features(feats), spec)
    feats = decode_features(encode_episode(eps[0], spec))
    kind, vals = feats["steps/reward"]
    feats["steps/reward"] = (kind, vals[:-1])
    with pytest.raises(ExampleDecodeError, match="steps/reward"):
        decode_episode(encode_features(feats), spec)
