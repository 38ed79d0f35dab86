"""``tf.train.Example`` bytes for RLDS episodes and steps, without TensorFlow.

Two concepts:

* **Wire codec**: a minimal protobuf encoder/decoder for the three messages TFDS writes
  (``Example{Features{map<string, Feature>}}`` with ``BytesList``, packed ``FloatList`` and
  packed ``Int64List``). Lists are built and parsed with numpy (packed floats are a
  ``tobytes``; varints are encoded and decoded vectorised), so an episode of a few hundred
  steps encodes in about a millisecond. Decoding accepts packed and unpacked repeated fields
  and raises :class:`ExampleDecodeError` naming the feature and byte offset on bad input.
* **Spec mapping**: the exact layout TFDS produces for ``spec.to_tfds_features()``: flat keys
  ``steps/<path>`` (values of all ``T`` steps stacked, as ``tfds.features.Dataset`` does) and
  ``episode_metadata/<path>``; bools and ints as ``int64_list`` (``uint64`` bit-cast); float16/32
  as ``float_list``; float64 and uint64 as raw little-endian bytes per element (TFDS
  ``Encoding.BYTES``, which keeps them exact); text and images as ``bytes_list`` (images pass
  through as their encoded bytes: no decode, no re-encode). An absent optional image is stored
  as a black frame of the declared shape and restored as ``b""`` (its ``*_present`` mask says so).

:func:`encode_episode`/:func:`decode_episode` handle one episode per record (the RLDS/TFDS
layout); :func:`encode_step`/:func:`decode_step` one step per record (the step-major layout,
same per-feature encoding without the ``steps/`` prefix). :func:`decode_step_fields` reads only the
image and text features of a step record, with :func:`decode_step`'s semantics, on protobuf's C
(upb) parser when protobuf is installed (~8 us a record against ~100 us, and it holds the GIL far
less, so decoding threads scale) and on this module's parser otherwise.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rldskit.episode import Episode, LazyFrames
from rldskit.spec import PRESENT_SUFFIX, EpisodeSpec, Image, Text

__all__ = ["ExampleDecodeError", "typed_column", "encode_features", "decode_features", "encode_episode", "decode_episode",
           "encode_step", "decode_step", "decode_step_fields", "to_tfds_example"]

BYTES, FLOAT, INT64 = 1, 2, 3  # Feature oneof field numbers
_KIND_NAME = {BYTES: "bytes_list", FLOAT: "float_list", INT64: "int64_list"}


class ExampleDecodeError(ValueError):
    """Serialized bytes are not a valid Example for the spec (names feature and offset)."""


# =========================================================================== varints


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _encode_varints(values: np.ndarray) -> bytes:
    """Vectorised varint encoding of int64 values (negatives as 10-byte two's complement)."""
    v = np.ascontiguousarray(values, dtype=np.int64).view(np.uint64).ravel()
    if v.size == 0:
        return b""
    if int(v.max()) < 0x80:
        return v.astype(np.uint8).tobytes()
    nbytes = np.ones(v.shape, dtype=np.int64)
    for k in range(1, 10):
        nbytes += (v >> np.uint64(7 * k)) != 0
    shifts = (np.arange(10, dtype=np.uint64) * np.uint64(7))[None, :]
    groups = ((v[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    k = np.arange(10)[None, :]
    groups[k < (nbytes[:, None] - 1)] |= 0x80
    return groups[k < nbytes[:, None]].tobytes()


def _decode_varints(buf: bytes | memoryview, what: str) -> np.ndarray:
    """Vectorised varint decoding into int64 (two's complement for 10-byte values)."""
    b = np.frombuffer(buf, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    if b[-1] & 0x80:
        raise ExampleDecodeError(f"{what}: truncated varint at the end of a packed list")
    if not (b & 0x80).any():
        return b.astype(np.int64)
    ends = np.flatnonzero(b < 0x80)
    starts = np.concatenate([[0], ends[:-1] + 1])
    if int((ends - starts).max()) >= 10:
        raise ExampleDecodeError(f"{what}: varint longer than 10 bytes")
    pos = np.arange(b.size) - np.repeat(starts, ends - starts + 1)
    parts = (b & 0x7F).astype(np.uint64) << (pos.astype(np.uint64) * np.uint64(7))
    return np.add.reduceat(parts, starts).view(np.int64)


# =========================================================================== messages


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _feature(kind: int, values: Any) -> bytes:
    """Serialized ``Feature`` holding ``values`` as the given list kind."""
    if kind == BYTES:
        inner = b"".join(b"\x0a" + _varint(len(x)) + x for x in values)
    elif kind == FLOAT:
        data = np.ascontiguousarray(values, dtype="<f4").tobytes()
        inner = _ld(1, data) if data else b""
    else:
        data = _encode_varints(values)
        inner = _ld(1, data) if data else b""
    return _ld(kind, inner)


def encode_features(features: Mapping[str, tuple[int, Any]]) -> bytes:
    """Serialize ``{key: (kind, values)}`` as a ``tf.train.Example`` (keys in sorted order, so
    the bytes are deterministic). ``kind`` is ``BYTES`` (list of bytes), ``FLOAT`` or ``INT64``
    (array-likes)."""
    parts = []
    for key in sorted(features):
        kind, values = features[key]
        entry = _ld(1, key.encode()) + _ld(2, _feature(kind, values))
        parts.append(_ld(1, entry))
    return _ld(1, b"".join(parts))


def _read_varint(buf: memoryview, pos: int, end: int, what: str) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ExampleDecodeError(f"{what}: truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ExampleDecodeError(f"{what}: varint longer than 10 bytes at byte {pos}")


def _fields(buf: memoryview, start: int, end: int, what: str):
    """Yield ``(field, wire_type, value_or_(start, end), pos)`` for one message's fields."""
    pos = start
    while pos < end:
        tag, pos = _read_varint(buf, pos, end, what)
        field, wt = tag >> 3, tag & 7
        if wt == 2:
            n, pos = _read_varint(buf, pos, end, what)
            if pos + n > end:
                raise ExampleDecodeError(f"{what}: field {field} claims {n} bytes at byte {pos}, only {end - pos} left")
            yield field, wt, (pos, pos + n)
            pos += n
        elif wt == 0:
            v, pos = _read_varint(buf, pos, end, what)
            yield field, wt, v
        elif wt == 5:
            if pos + 4 > end:
                raise ExampleDecodeError(f"{what}: truncated fixed32 at byte {pos}")
            yield field, wt, bytes(buf[pos:pos + 4])
            pos += 4
        elif wt == 1:
            if pos + 8 > end:
                raise ExampleDecodeError(f"{what}: truncated fixed64 at byte {pos}")
            yield field, wt, bytes(buf[pos:pos + 8])
            pos += 8
        else:
            raise ExampleDecodeError(f"{what}: unsupported wire type {wt} at byte {pos}")


def _parse_list(buf: memoryview, kind: int, start: int, end: int, what: str):
    if kind == BYTES:
        out = []
        for field, wt, v in _fields(buf, start, end, what):
            if field == 1 and wt == 2:
                out.append(bytes(buf[v[0]:v[1]]))
        return out
    chunks: list[np.ndarray] = []
    for field, wt, v in _fields(buf, start, end, what):
        if field != 1:
            continue
        if kind == FLOAT:
            if wt == 2:
                if (v[1] - v[0]) % 4:
                    raise ExampleDecodeError(f"{what}: packed float list of {v[1] - v[0]} bytes is not a multiple of 4")
                chunks.append(np.frombuffer(buf[v[0]:v[1]], dtype="<f4"))
            elif wt == 5:
                chunks.append(np.frombuffer(v, dtype="<f4"))
        else:
            if wt == 2:
                chunks.append(_decode_varints(buf[v[0]:v[1]], what))
            elif wt == 0:
                chunks.append(np.array([v], dtype=np.uint64).view(np.int64))
    dtype = np.float32 if kind == FLOAT else np.int64
    return np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.zeros(0, dtype=dtype)


def decode_features(data: bytes) -> dict[str, tuple[int, Any]]:
    """Parse a serialized ``tf.train.Example`` into ``{key: (kind, values)}``: bytes lists as
    ``list[bytes]``, floats as float32 arrays, ints as int64 arrays."""
    buf = memoryview(data)
    out: dict[str, tuple[int, Any]] = {}
    for f1, wt1, span in _fields(buf, 0, len(buf), "Example"):
        if f1 != 1 or wt1 != 2:
            continue
        for f2, wt2, entry in _fields(buf, span[0], span[1], "Features"):
            if f2 != 1 or wt2 != 2:
                continue
            key = None
            feat = None
            for f3, wt3, v in _fields(buf, entry[0], entry[1], "Features map entry"):
                if f3 == 1 and wt3 == 2:
                    try:
                        key = bytes(buf[v[0]:v[1]]).decode()
                    except UnicodeDecodeError:
                        raise ExampleDecodeError(f"feature name at byte {v[0]} is not UTF-8") from None
                elif f3 == 2 and wt3 == 2:
                    feat = v
            if key is None:
                raise ExampleDecodeError(f"a feature map entry at byte {entry[0]} has no name")
            kind, values = BYTES, []
            if feat is not None:
                for f4, wt4, lst in _fields(buf, feat[0], feat[1], f"feature {key!r}"):
                    if f4 in (BYTES, FLOAT, INT64) and wt4 == 2:
                        kind = f4
                        values = _parse_list(buf, f4, lst[0], lst[1], f"feature {key!r}")
            out[key] = (kind, values)
    return out


# =========================================================================== spec mapping


@functools.lru_cache(maxsize=32)
def _placeholder_frame(shape: tuple[int, int, int], encoding: str) -> bytes:
    from rldskit.images import encode

    return encode(np.zeros(shape, dtype=np.uint8), encoding)


def _check_encodable(spec: EpisodeSpec) -> None:
    for path, leaf in spec.step_leaves.items():
        if not isinstance(leaf, (Image, Text)) and not leaf.is_static:
            raise ValueError(f"{spec.id}: step feature {path} has a dynamic shape {leaf.shape}; the RLDS TFDS layout "
                             "(tfds.features.Dataset of fixed-shape tensors) cannot hold it")


def _leaf_values(leaf: Any, col: Any, present: np.ndarray | None, n: int, what: str) -> tuple[int, Any]:
    if isinstance(leaf, Image):
        frames = col if isinstance(col, (LazyFrames, list)) else list(col)
        out = []
        for i in range(n):
            b = frames[i]
            if present is not None and not present[i]:
                b = _placeholder_frame(leaf.shape, leaf.encoding)
            elif not b:
                raise ValueError(f"{what}: step {i} has an empty frame")
            out.append(bytes(b))
        return BYTES, out
    if isinstance(leaf, Text) or leaf.dtype == "string":
        vals = col if isinstance(col, (list, np.ndarray)) else [col]
        flat: list[Any] = []
        for v in vals:
            if isinstance(v, (list, np.ndarray)):
                flat.extend(v)
            else:
                flat.append(v)
        return BYTES, [v.encode() if isinstance(v, str) else bytes(v) for v in flat]
    arr = np.asarray(col, dtype=leaf.np_dtype)
    if leaf.dtype in ("float64", "uint64"):
        a = arr.reshape((n, -1)) if n else arr.reshape((0, 0))
        le = a.astype(a.dtype.newbyteorder("<"), copy=False)
        return BYTES, [le[i].tobytes() for i in range(n)]
    if leaf.dtype.startswith("float"):
        return FLOAT, arr
    if leaf.dtype == "bool":
        return INT64, arr.astype(np.int64)
    return INT64, arr.astype(np.int64)


def encode_episode(episode: Episode, spec: EpisodeSpec) -> bytes:
    """Serialize one episode as TFDS would for ``spec.to_tfds_features()``."""
    _check_encodable(spec)
    T = len(episode)
    feats: dict[str, tuple[int, Any]] = {}
    for path, leaf in spec.step_leaves.items():
        if path not in episode.steps:
            raise ValueError(f"episode {episode.episode_id}: column {path} is missing")
        present = episode.steps.get(path + PRESENT_SUFFIX) if getattr(leaf, "optional", False) else None
        feats["steps/" + path] = _leaf_values(leaf, episode.steps[path], present, T, f"episode {episode.episode_id} {path}")
    for path, leaf in spec.metadata_leaves.items():
        if path not in episode.metadata:
            raise ValueError(f"episode {episode.episode_id}: metadata {path} is missing")
        v = episode.metadata[path]
        if isinstance(leaf, Text):
            feats["episode_metadata/" + path] = (BYTES, [str(v).encode()])
        elif leaf.dtype == "string":
            feats["episode_metadata/" + path] = (BYTES, [str(s).encode() for s in v])
        else:
            feats["episode_metadata/" + path] = _leaf_values(leaf, np.asarray(v, dtype=leaf.np_dtype)[None], None, 1,
                                                             f"episode {episode.episode_id} metadata {path}")
    return encode_features(feats)


def encode_step(episode: Episode, index: int, spec: EpisodeSpec) -> bytes:
    """Serialize step ``index`` of an episode (keys are the flat step paths)."""
    _check_encodable(spec)
    feats: dict[str, tuple[int, Any]] = {}
    for path, leaf in spec.step_leaves.items():
        col = episode.steps[path]
        present = None
        if getattr(leaf, "optional", False):
            present = np.asarray(episode.steps[path + PRESENT_SUFFIX][index:index + 1], dtype=bool)
        if isinstance(leaf, Image):
            feats[path] = _leaf_values(leaf, [col[index]], present, 1, f"episode {episode.episode_id} {path}")
        else:
            feats[path] = _leaf_values(leaf, np.asarray(col[index:index + 1]) if not isinstance(leaf, Text) else [col[index]],
                                       present, 1, f"episode {episode.episode_id} {path}")
    return encode_features(feats)


def to_tfds_example(episode: Episode, spec: EpisodeSpec) -> dict[str, Any]:
    """The nested dict ``spec.to_tfds_features().encode_example`` takes for this episode
    (``{"steps": [step dicts], "episode_metadata": {...}}``), for TFDS builders that let
    TFDS do the encoding. Absent optional frames become the placeholder frame."""
    from rldskit.episode import nest

    cols = dict(episode.steps)
    for path, leaf in spec.step_leaves.items():
        if isinstance(leaf, Image):
            frames = cols[path]
            present = cols.get(path + PRESENT_SUFFIX) if leaf.optional else None
            cols[path] = [_placeholder_frame(leaf.shape, leaf.encoding) if present is not None and not present[i]
                          else frames[i] for i in range(len(episode))]
    steps = [nest({k: cols[k][i] for k in spec.step_leaves}) for i in range(len(episode))]
    return {"steps": steps, "episode_metadata": nest({k: episode.metadata[k] for k in spec.metadata_leaves})}


def typed_column(kind: int, values: Any, leaf: Any, n: int, key: str) -> Any:
    """The typed column of ``n`` rows for ``leaf`` (a spec leaf) from one decoded feature (``kind``,
    ``values``) as :func:`decode_features` gives it: ``(n, *leaf.shape)`` of the leaf's dtype, or an
    object array of ``n`` byte strings (images) or str (text). Raises ``ExampleDecodeError`` naming
    ``key`` when the kind or the number of values is not what the leaf needs."""
    if isinstance(leaf, Image) or isinstance(leaf, Text):
        if kind != BYTES or len(values) != n:
            raise ExampleDecodeError(f"feature {key!r}: expected {n} byte strings, got {len(values)} {_KIND_NAME[kind]} values")
        out = np.empty(n, dtype=object)
        if isinstance(leaf, Text):
            try:
                out[:] = [v.decode() for v in values]
            except UnicodeDecodeError:
                raise ExampleDecodeError(f"feature {key!r}: text is not UTF-8") from None
        else:
            out[:] = values
        return out
    shape = tuple(leaf.shape)
    per = int(np.prod(shape)) if shape else 1
    if kind == BYTES:  # TFDS Encoding.BYTES: raw little-endian elements, one string per row
        dt = np.dtype(leaf.dtype).newbyteorder("<")
        if len(values) != n or any(len(v) != per * dt.itemsize for v in values):
            raise ExampleDecodeError(f"feature {key!r}: expected {n} raw {leaf.dtype} values of {per * dt.itemsize} bytes")
        return np.frombuffer(b"".join(values), dtype=dt).astype(leaf.np_dtype).reshape((n, *shape))
    want = FLOAT if leaf.dtype.startswith("float") else INT64
    if kind != want:
        raise ExampleDecodeError(f"feature {key!r}: expected {_KIND_NAME[want]}, got {_KIND_NAME[kind]}")
    if values.size != n * per:
        raise ExampleDecodeError(f"feature {key!r}: expected {n} x {list(shape)} = {n * per} values, got {values.size}")
    if leaf.dtype == "bool":
        return (values != 0).reshape((n, *shape))
    if leaf.dtype == "uint64":
        return values.view(np.uint64).reshape((n, *shape))
    return values.astype(leaf.np_dtype).reshape((n, *shape))


def decode_episode(data: bytes, spec: EpisodeSpec) -> Episode:
    """Inverse of :func:`encode_episode` (also reads what TFDS writes for the same features)."""
    feats = decode_features(data)
    first = feats.get("steps/is_first")
    if first is None:
        raise ExampleDecodeError("not an RLDS episode: feature 'steps/is_first' is absent")
    T = len(first[1])
    cols: dict[str, Any] = {}
    for path, leaf in spec.step_leaves.items():
        key = "steps/" + path
        if key not in feats:
            raise ExampleDecodeError(f"feature {key!r} is absent (declared by {spec.id})")
        cols[path] = typed_column(*feats[key], leaf, T, key)
    for path, leaf in spec.step_leaves.items():
        if isinstance(leaf, Image) and leaf.optional:
            absent = ~cols[path + PRESENT_SUFFIX]
            cols[path][absent] = b""
    meta: dict[str, Any] = {}
    for path, leaf in spec.metadata_leaves.items():
        key = "episode_metadata/" + path
        if key not in feats:
            raise ExampleDecodeError(f"feature {key!r} is absent (declared by {spec.id})")
        kind, values = feats[key]
        if isinstance(leaf, Text):
            meta[path] = typed_column(kind, values, leaf, 1, key)[0]
        elif leaf.dtype == "string":
            if kind != BYTES:
                raise ExampleDecodeError(f"feature {key!r}: expected bytes_list")
            meta[path] = [v.decode(errors="replace") for v in values]
        else:
            v = typed_column(kind, values, leaf, 1, key)[0]
            meta[path] = v.item() if v.shape == () else v
    return Episode(meta, cols)


def decode_step(data: bytes, spec: EpisodeSpec) -> dict[str, Any]:
    """Inverse of :func:`encode_step`: ``{path: value}`` for one step (images as bytes)."""
    feats = decode_features(data)
    out: dict[str, Any] = {}
    for path, leaf in spec.step_leaves.items():
        if path not in feats:
            raise ExampleDecodeError(f"feature {path!r} is absent (declared by {spec.id})")
        out[path] = typed_column(*feats[path], leaf, 1, path)[0]
    for path, leaf in spec.step_leaves.items():
        if isinstance(leaf, Image) and leaf.optional and not out[path + PRESENT_SUFFIX]:
            out[path] = b""
    return out


# =========================================================================== image and text fields of a step


_EXAMPLE_CLASS: Any = None


def _example_class() -> Any:
    """A ``tf.train.Example`` message class built at run time on protobuf's C (upb) parser (no
    TensorFlow, no generated code), or ``False`` when protobuf is not installed."""
    global _EXAMPLE_CLASS
    if _EXAMPLE_CLASS is None:
        try:
            from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
        except ImportError:
            _EXAMPLE_CLASS = False
            return _EXAMPLE_CLASS
        T = descriptor_pb2.FieldDescriptorProto
        pkg = "rldskit_loaders_example"
        fdp = descriptor_pb2.FileDescriptorProto(name=f"{pkg}.proto", package=pkg, syntax="proto3")
        for name, ftype in (("BytesList", T.TYPE_BYTES), ("FloatList", T.TYPE_FLOAT), ("Int64List", T.TYPE_INT64)):
            f = fdp.message_type.add(name=name).field.add(name="value", number=1, type=ftype, label=T.LABEL_REPEATED)
            if ftype != T.TYPE_BYTES:
                f.options.packed = True
        feat = fdp.message_type.add(name="Feature")
        feat.oneof_decl.add(name="kind")
        for num, name in ((1, "bytes_list"), (2, "float_list"), (3, "int64_list")):
            kind = {"bytes_list": "BytesList", "float_list": "FloatList", "int64_list": "Int64List"}[name]
            feat.field.add(name=name, number=num, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL,
                           type_name=f".{pkg}.{kind}", oneof_index=0)
        feats = fdp.message_type.add(name="Features")
        entry = feats.nested_type.add(name="FeatureEntry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
        entry.field.add(name="value", number=2, type=T.TYPE_MESSAGE, label=T.LABEL_OPTIONAL, type_name=f".{pkg}.Feature")
        feats.field.add(name="feature", number=1, type=T.TYPE_MESSAGE, label=T.LABEL_REPEATED,
                        type_name=f".{pkg}.Features.FeatureEntry")
        fdp.message_type.add(name="Example").field.add(name="features", number=1, type=T.TYPE_MESSAGE,
                                                        label=T.LABEL_OPTIONAL, type_name=f".{pkg}.Features")
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        _EXAMPLE_CLASS = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{pkg}.Example"))
    return _EXAMPLE_CLASS


def _bytes_fields_upb(data: bytes, keys: Sequence[str]) -> dict[str, tuple[bytes | None, int | None]]:
    from google.protobuf.message import DecodeError

    ex = _example_class()()
    try:
        ex.ParseFromString(data)
    except DecodeError as e:
        raise ExampleDecodeError(f"not a tf.train.Example: {e}") from None
    feats = ex.features.feature
    out: dict[str, tuple[bytes | None, int | None]] = {}
    for key in keys:
        if key not in feats:
            continue
        f = feats[key]
        value = f.bytes_list.value[0] if f.WhichOneof("kind") == "bytes_list" and len(f.bytes_list.value) == 1 else None
        out[key] = (value, None)
        p = key + PRESENT_SUFFIX
        if p in feats:
            pf = feats[p]
            ok = pf.WhichOneof("kind") == "int64_list" and len(pf.int64_list.value) == 1
            out[p] = (None, pf.int64_list.value[0] if ok else None)
    return out


def _bytes_fields_py(data: bytes, keys: Sequence[str]) -> dict[str, tuple[bytes | None, int | None]]:
    feats = decode_features(data)
    out: dict[str, tuple[bytes | None, int | None]] = {}
    for key in keys:
        if key not in feats:
            continue
        kind, values = feats[key]
        out[key] = (values[0] if kind == BYTES and len(values) == 1 else None, None)
        p = key + PRESENT_SUFFIX
        if p in feats:
            pk, pv = feats[p]
            out[p] = (None, int(pv[0]) if pk == INT64 and len(pv) == 1 else None)
    return out


def decode_step_fields(data: bytes, keys: Sequence[str], spec: EpisodeSpec) -> dict[str, Any]:
    """``{key: value}`` for the image and text ``keys`` of one step record (an :func:`encode_step`
    record), with the semantics of :func:`decode_step` for them: images as their encoded bytes and
    ``b""`` for an absent optional frame (its ``_present`` mask is 0), text as ``str``. Only those
    features are checked. Raises :class:`ExampleDecodeError` (a key absent, not one byte string,
    a missing or malformed ``_present`` mask, text not UTF-8, bytes that are not an Example)."""
    cls = _example_class()
    fields = _bytes_fields_upb(data, keys) if cls else _bytes_fields_py(data, keys)
    out: dict[str, Any] = {}
    for key in keys:
        if key not in fields:
            raise ExampleDecodeError(f"feature {key!r} is absent (declared by {spec.id})")
        value = fields[key][0]
        if value is None:
            raise ExampleDecodeError(f"feature {key!r}: expected 1 byte string")
        leaf = spec.step_leaves[key]
        if isinstance(leaf, Image):
            if leaf.optional:
                present = fields.get(key + PRESENT_SUFFIX, (None, None))[1]
                if present is None:
                    raise ExampleDecodeError(f"feature {key + PRESENT_SUFFIX!r}: expected 1 int64")
                if not present:
                    value = b""
        else:
            try:
                value = value.decode()
            except UnicodeDecodeError:
                raise ExampleDecodeError(f"feature {key!r}: text is not UTF-8") from None
        out[key] = value
    return out
