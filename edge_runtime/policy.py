"""The ``conv_mlp`` v1 policy in numpy: loads a trainer export (``model.safetensors`` +
``policy.json``, the format of ``trainers/common.py``) and runs its forward pass. numpy only.

Forward (exactly as the trainers compute it): per camera its own conv encoder (TensorFlow ``SAME``
padding, HWIO kernels, ReLU), the last feature map flattened in HWC order, the same encoder for
every history frame; the features of all cameras and frames (camera-major, oldest frame first)
then the normalised state; an MLP with ReLU; a linear head to the normalised action chunk
``(K, A)``, un-normalised with ``policy.json``'s statistics.

Convolutions are one matrix product each: the padded input is viewed as ``(h', w', k, k, c)``
windows (``sliding_window_view``, no copy), gathered once into a contiguous ``(h' * w', k*k*c)``
matrix and multiplied by the ``(k*k*c, out)`` kernel. Scratch buffers are allocated once per
input shape, so a steady control loop allocates little.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Policy", "PolicyError", "load_safetensors", "save_safetensors", "area_resize"]

_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "U8": np.uint8, "BOOL": np.bool_}
_MAX_HEADER = 100 * 2**20


class PolicyError(ValueError):
    """An export that cannot be loaded or run; the message names the file and the field."""


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file with numpy alone (8-byte little-endian header length, a JSON
    header of ``{name: {dtype, shape, data_offsets}}``, then the data). Validates every offset and
    shape against the file size; raises :class:`PolicyError` naming the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise PolicyError(f"{p}: cannot read: {e}") from None
    if len(data) < 8:
        raise PolicyError(f"{p}: truncated safetensors file ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or 8 + n > len(data):
        raise PolicyError(f"{p}: safetensors header of {n} bytes does not fit the {len(data)}-byte file")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as e:
        raise PolicyError(f"{p}: safetensors header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise PolicyError(f"{p}: safetensors header is not a JSON object")
    body = memoryview(data)[8 + n:]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(int(x) for x in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise PolicyError(f"{p}: tensor {name!r}: malformed header entry {info!r:.200}") from None
        count = int(np.prod(shape)) if shape else 1
        if min(shape, default=0) < 0 or not 0 <= start <= end <= len(body) or end - start != count * dtype.itemsize:
            raise PolicyError(f"{p}: tensor {name!r}: offsets {start}..{end} do not hold {shape} {dtype} "
                              f"within the {len(body)}-byte body")
        out[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(shape).copy()
    return out


def save_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as a ``.safetensors`` file with numpy alone (the layout
    :func:`load_safetensors` reads; names sorted, data 8-byte aligned), atomically and durably."""
    from .atomic_io import atomic_write

    names = {v: k for k, v in _DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype.type not in names:
            raise PolicyError(f"{name}: dtype {arr.dtype} cannot be stored in safetensors here")
        b = arr.tobytes()
        header[name] = {"dtype": names[arr.dtype.type], "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    atomic_write(path, struct.pack("<Q", len(head)) + head + b"".join(blobs))


def area_resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 (H, W, C)`` -> ``uint8 (h, w, C)``: the mean of each ``(H/h) x (W/w)`` block when
    the factors are whole numbers (what the loader's JPEG DCT-scaled decode approximates), else
    bilinear sampling at pixel centres. Rounds to nearest."""
    H, W = frame.shape[:2]
    h, w = size
    if (H, W) == (h, w):
        return frame
    if H % h == 0 and W % w == 0:
        fh, fw = H // h, W // w
        s = frame.reshape(h, fh, w, fw, -1).sum(axis=(1, 3), dtype=np.uint32)
        return ((s + (fh * fw) // 2) // (fh * fw)).astype(np.uint8)
    ys = np.clip((np.arange(h) + 0.5) * H / h - 0.5, 0, H - 1)
    xs = np.clip((np.arange(w) + 0.5) * W / w - 0.5, 0, W - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, H - 1), np.minimum(x0 + 1, W - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    f = frame.astype(np.float32)
    top = f[y0][:, x0] * (1 - wx) + f[y0][:, x1] * wx
    bot = f[y1][:, x0] * (1 - wx) + f[y1][:, x1] * wx
    return np.clip(np.rint(top * (1 - wy) + bot * wy), 0, 255).astype(np.uint8)


def _same(n: int, k: int, s: int) -> tuple[int, int, int]:
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2, total - total // 2


class _Conv:
    def __init__(self, kernel: np.ndarray, bias: np.ndarray, stride: int, name: str):
        if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1]:
            raise PolicyError(f"{name}.kernel: expected (k, k, in, out), got {kernel.shape}")
        if bias.shape != (kernel.shape[3],):
            raise PolicyError(f"{name}.bias: expected ({kernel.shape[3]},), got {bias.shape}")
        self.k, self.cin, self.cout = kernel.shape[0], kernel.shape[2], kernel.shape[3]
        self.stride = stride
        self.w = np.ascontiguousarray(kernel.reshape(-1, self.cout), dtype=np.float32)
        self.b = bias.astype(np.float32)
        self._plans: dict[tuple[int, int, int], tuple] = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``(N, h, w, cin)`` float32 -> ``(N, h', w', cout)`` with ReLU."""
        n, h, w, c = x.shape
        plan = self._plans.get((n, h, w))
        if plan is None:
            oh, pt, pb = _same(h, self.k, self.stride)
            ow, pl, pr = _same(w, self.k, self.stride)
            padded = np.zeros((n, h + pt + pb, w + pl + pr, c), np.float32)
            cols = np.empty((n, oh, ow, self.k, self.k, c), np.float32)
            plan = self._plans[(n, h, w)] = (oh, ow, pt, pl, padded, cols)
        oh, ow, pt, pl, padded, cols = plan
        padded[:, pt:pt + h, pl:pl + w, :] = x
        s = self.stride
        win = np.lib.stride_tricks.sliding_window_view(padded, (self.k, self.k), axis=(1, 2))
        # win: (n, H', W', c, k, k) -> strided rows, reordered to (k, k, c) to match HWIO kernels
        cols[...] = win[:, ::s, ::s][:, :oh, :ow].transpose(0, 1, 2, 4, 5, 3)
        y = cols.reshape(n * oh * ow, -1) @ self.w
        y += self.b
        np.maximum(y, 0, out=y)
        return y.reshape(n, oh, ow, self.cout)


class Policy:
    """A loaded export: ``policy(frames, state)`` -> the action chunk ``float32 (K, A)`` (real
    units), or ``policy.normalized(...)`` for the network's raw output.

    ``frames``: ``{camera path: uint8 (H, h, w, c)}`` or ``(h, w, c)`` when ``history == 1``, at
    the export's ``image_size`` (use :meth:`prepare_frame` for camera-sized frames); ``state``:
    ``{path: array}`` of the state keys (raw units; normalised here) or ``None`` when there are none.
    """

    def __init__(self, weights: dict[str, np.ndarray], policy: dict[str, Any], source: str = "export"):
        self.policy, self.source = policy, source
        try:
            arch = policy["architecture"]
            if arch.get("type") != "conv_mlp" or arch.get("version") != 1:
                raise PolicyError(f"{source}: architecture {arch.get('type')!r} v{arch.get('version')} is not "
                                  "conv_mlp v1")
            self.cameras = list(arch["cameras"])
            self.image_size = tuple(int(x) for x in arch["image_size"])
            self.channels = int(arch["channels"])
            self.history = int(arch["history"])
            self.state_keys = list(arch["state_keys"])
            self.state_dim = int(arch["state_dim"])
            self.K, self.A = int(arch["action_horizon"]), int(arch["action_dim"])
            convs, mlp = arch["conv"], arch["mlp"]
            if arch.get("pool") != "flatten_hwc":
                raise PolicyError(f"{source}: architecture.pool {arch.get('pool')!r} is not 'flatten_hwc'")
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyError(f"{source}: policy.json architecture is malformed: {e!r}") from None

        def take(name: str) -> np.ndarray:
            if name not in weights:
                raise PolicyError(f"{source}: model.safetensors has no tensor {name!r}")
            return np.asarray(weights[name], dtype=np.float32)

        self.encoders = []
        for ci in range(len(self.cameras)):
            layers = []
            for li, spec in enumerate(convs):
                name = f"encoder.{ci}.conv{li}"
                conv = _Conv(take(f"{name}.kernel"), take(f"{name}.bias"), int(spec["stride"]), name)
                if conv.k != int(spec["kernel"]) or conv.cout != int(spec["features"]):
                    raise PolicyError(f"{source}: {name}.kernel is {conv.k}x{conv.k}->{conv.cout}; policy.json says "
                                      f"{spec['kernel']}x{spec['kernel']}->{spec['features']}")
                layers.append(conv)
            self.encoders.append(layers)
        self.dense = [(take(f"mlp.{i}.kernel"), take(f"mlp.{i}.bias")) for i in range(len(mlp))]
        self.dense.append((take("head.kernel"), take("head.bias")))
        h, w = self.image_size
        for spec in convs:
            h, w = -(-h // int(spec["stride"])), -(-w // int(spec["stride"]))
        feat = len(self.cameras) * self.history * h * w * int(convs[-1]["features"]) + self.history * self.state_dim
        for i, (k, b) in enumerate(self.dense):
            name = f"mlp.{i}" if i < len(self.dense) - 1 else "head"
            if k.ndim != 2 or k.shape[0] != feat or b.shape != (k.shape[1],):
                raise PolicyError(f"{source}: {name}.kernel is {k.shape}, bias {b.shape}; expected ({feat}, n), (n,)")
            feat = k.shape[1]
        if feat != self.K * self.A:
            raise PolicyError(f"{source}: head outputs {feat} values; expected {self.K} x {self.A}")
        norm = (policy.get("normalization") or {}).get("features") or {}
        self._norm = {k: (np.asarray(v["shift"], np.float32), np.asarray(v["scale"], np.float32))
                      for k, v in norm.items()}
        self.action_key = policy.get("outputs", {}).get("action", {}).get("key", "action")
        bounds = policy.get("outputs", {}).get("action", {}).get("bounds")
        self.action_bounds = np.asarray(bounds, np.float32) if bounds else None

    @classmethod
    def load(cls, export_dir: str | Path) -> Policy:
        d = Path(export_dir)
        try:
            policy = json.loads((d / "policy.json").read_text())
        except (OSError, ValueError) as e:
            raise PolicyError(f"{d / 'policy.json'}: not a readable policy file: {e}") from None
        if not isinstance(policy, dict) or policy.get("format") != "rldskit-policy":
            raise PolicyError(f"{d / 'policy.json'}: not an rldskit-policy file")
        return cls(load_safetensors(d / "model.safetensors"), policy, source=str(d))

    # ------------------------------------------------------------------ inference

    def prepare_frame(self, frame: np.ndarray) -> np.ndarray:
        """A camera frame ``uint8 (H, W, C)`` at any resolution -> the export's ``image_size``."""
        return area_resize(np.asarray(frame, dtype=np.uint8), self.image_size)

    def normalized(self, frames: dict[str, np.ndarray] | None, state: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """The network output ``float32 (K, A)`` (normalised action units) for one observation."""
        feats = []
        h, w = self.image_size
        for cam, layers in zip(self.cameras, self.encoders):
            if frames is None or cam not in frames:
                raise PolicyError(f"{self.source}: no frame for camera {cam!r}")
            x = np.asarray(frames[cam])
            if x.ndim == 3:
                x = x[None]
            if x.shape != (self.history, h, w, self.channels):
                raise PolicyError(f"{self.source}: camera {cam!r}: frames are {x.shape}; expected "
                                  f"{(self.history, h, w, self.channels)} (uint8)")
            y = x.astype(np.float32) * np.float32(1 / 255)
            for conv in layers:
                y = conv(y)
            feats.append(y.reshape(-1))
        if self.state_keys:
            if state is None:
                raise PolicyError(f"{self.source}: the policy needs state {self.state_keys}")
            parts = []
            for k in self.state_keys:
                if k not in state:
                    raise PolicyError(f"{self.source}: no state {k!r}")
                v = np.asarray(state[k], np.float32).reshape(self.history, -1)
                if k in self._norm:
                    shift, scale = self._norm[k]
                    v = (v - shift.reshape(1, -1)) / scale.reshape(1, -1)
                parts.append(v)
            feats.append(np.concatenate(parts, axis=1).reshape(-1))
        z = np.concatenate(feats) if len(feats) > 1 else feats[0]
        z = z.astype(np.float32, copy=False)
        for i, (k, b) in enumerate(self.dense):
            z = z @ k + b
            if i < len(self.dense) - 1:
                np.maximum(z, 0, out=z)
        return z.reshape(self.K, self.A)

    def unnormalize(self, y: np.ndarray) -> np.ndarray:
        if self.action_key in self._norm:
            shift, scale = self._norm[self.action_key]
            return (y * scale.reshape(1, -1) + shift.reshape(1, -1)).astype(np.float32)
        return y

    def __call__(self, frames: dict[str, np.ndarray] | None, state: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return self.unnormalize(self.normalized(frames, state))
