"""edge_runtime.loop (ControlLoop, replay_episode) and edge_runtime.episode_log (EpisodeLog,
the minimal capture reader, PNG coding), checked against rldskit's own reader and validator."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.episode_log import (CaptureReadError, EpisodeLog, FrameDecodeError, decode_frame, decode_png,
                                      encode_png, read_capture_episode)
from edge_runtime.gating import Gate
from edge_runtime.loop import ControlLoop, Observation, PolicyStepper, replay_episode
from edge_runtime.policy import Policy
from edge_runtime.safety import SafetyHead
from rldskit.formats.capture_dir import read_episode
from rldskit.spec import load_spec
from rldskit.validation import Gates, validate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "pi5_donkey.v1.json"
CAM = "observation/image"
NAMES = ["steering", "throttle"]
SAFETY = {"bounds": {"steering": [-1, 1], "throttle": [-1, 1]}, "max_delta": {"steering": 0.3, "throttle": 0.1}}
ARCH = {"type": "conv_mlp", "version": 1, "cameras": [CAM], "image_size": [24, 32], "channels": 3, "history": 1,
        "conv": [{"features": 4, "kernel": 3, "stride": 2, "padding": "SAME"}], "activation": "relu",
        "pool": "flatten_hwc", "state_keys": [], "state_dim": 0, "mlp": [16], "action_horizon": 4, "action_dim": 2}


def make_export(path: Path, seed: int = 0, **arch_changes) -> Path:
    """A tiny random conv_mlp v1 export (weights written with the safetensors package)."""
    from safetensors.numpy import save_file

    arch = {**ARCH, **arch_changes}
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}
    cin, (h, wd) = arch["channels"], arch["image_size"]
    for li, c in enumerate(arch["conv"]):
        w[f"encoder.0.conv{li}.kernel"] = rng.normal(0, 0.4, (c["kernel"], c["kernel"], cin, c["features"])).astype(np.float32)
        w[f"encoder.0.conv{li}.bias"] = rng.normal(0, 0.05, c["features"]).astype(np.float32)
        cin, h, wd = c["features"], -(-h // c["stride"]), -(-wd // c["stride"])
    d = arch["history"] * (h * wd * cin + arch["state_dim"])
    for i, f in enumerate(arch["mlp"]):
        w[f"mlp.{i}.kernel"] = rng.normal(0, 1 / np.sqrt(d), (d, f)).astype(np.float32)
        w[f"mlp.{i}.bias"] = np.zeros(f, np.float32)
        d = f
    k = arch["action_horizon"] * arch["action_dim"]
    w["head.kernel"] = rng.normal(0, 1.0 / np.sqrt(d), (d, k)).astype(np.float32)
    w["head.bias"] = np.zeros(k, np.float32)
    path.mkdir(parents=True, exist_ok=True)
    save_file(w, str(path / "model.safetensors"), metadata={"format": "rldskit-policy"})
    policy = {"format": "rldskit-policy", "format_version": 1, "architecture": arch, "spec_id": "pi5_donkey.v1",
              "outputs": {"action": {"shape": [arch["action_horizon"], 2], "key": "action", "names": NAMES,
                                     "bounds": [[-1, 1], [-1, 1]]}},
              "normalization": {"mode": "mean_std", "features": {"action": {"shift": [0.0, 0.1], "scale": [0.3, 0.2]}}}}
    (path / "policy.json").write_text(json.dumps(policy))
    return path


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Policy:
    return Policy.load(make_export(tmp_path_factory.mktemp("export") / "p"))


@pytest.fixture(scope="module")
def jpeg_480() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((480, 640, 3), 90, np.uint8)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


class FakeClock:
    """Monotonic time that only moves when slept on or advanced: deterministic latencies."""

    def __init__(self, t: float = 100.0):
        self.t = t
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        assert dt >= 0
        self.sleeps.append(dt)
        self.t += dt

    def wall(self) -> float:
        return 1.7e9 + self.t


def frames_source(clock: FakeClock, shape=(480, 640, 3), *, jpeg: bytes | None = None, cost_s=lambda i: 0.002, seed=0):
    """An ``observe`` callable: random frames, each observation costing ``cost_s(i)`` of fake time."""
    rng = np.random.default_rng(seed)
    count = [0]
    small = [rng.integers(0, 256, (shape[0] // 20, shape[1] // 20, 3), dtype=np.uint8) for _ in range(4)]

    def observe() -> Observation:
        i = count[0]
        count[0] += 1
        t_cam = clock.wall()
        clock.t += cost_s(i)
        frame = np.repeat(np.repeat(small[i % 4], 20, axis=0), 20, axis=1)
        return Observation({CAM: frame}, encoded={CAM: jpeg} if jpeg else None, timestamp=t_cam)

    return observe


def make_loop(policy, clock, **kw):
    acted: list[np.ndarray] = []
    kw.setdefault("observe", frames_source(clock))
    loop = ControlLoop(policy, SafetyHead(SAFETY, NAMES), act=lambda a: acted.append(np.array(a)), clock=clock,
                       sleep=clock.sleep, wall_clock=clock.wall, **kw)
    return loop, acted


# =========================================================================== the loop


def test_loop_counts_steps_and_latency(policy):
    clock = FakeClock()
    loop, acted = make_loop(policy, clock, rate_hz=20.0)
    stats = loop.run(max_steps=12)
    assert stats.steps == stats.ticks == len(acted) == 12
    assert stats.deadline_misses == 0 and stats.overruns == 0 and stats.gated_steps == 0
    assert stats.latency_p50_ms == pytest.approx(2.0) and stats.latency_p99_ms == pytest.approx(2.0)  # observe costs 2 ms
    assert stats.latency_max_ms == pytest.approx(2.0) and stats.latency_mean_ms == pytest.approx(2.0)
    assert stats.duration_s == pytest.approx(12 * 0.05, abs=1e-6)  # the schedule: one tick per period
    for a in acted:
        assert a.shape == (2,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)


def test_deadline_misses_and_overruns_with_a_slow_observe(policy):
    clock = FakeClock()
    slow = {3: 0.15, 7: 0.12, 8: 0.06}
    loop, acted = make_loop(policy, clock, rate_hz=20.0, latency_budget_ms=100.0,
                            observe=frames_source(clock, cost_s=lambda i: slow.get(i, 0.001)))
    stats = loop.run(max_steps=10)
    assert stats.steps == 10
    assert stats.deadline_misses == 2  # 150 and 120 ms > 100 ms; 60 ms is within the budget
    assert stats.overruns == 3  # but 60 ms is longer than the 50 ms period
    assert stats.latency_max_ms == pytest.approx(150.0, abs=1.0)
    assert all(s > 0 for s in clock.sleeps)  # behind schedule: no negative sleeps, no catch-up burst


def test_the_loop_runs_on_real_time_for_a_short_duration(policy):
    acted = []
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    loop = ControlLoop(policy, SafetyHead(SAFETY, NAMES), observe=lambda: Observation({CAM: frame}),
                       act=acted.append, rate_hz=50.0)
    t0 = time.monotonic()
    stats = loop.run(duration_s=0.25)
    assert 0.2 <= time.monotonic() - t0 < 5.0
    assert 1 <= stats.steps == len(acted) <= 14
    assert stats.latency_p50_ms > 0 and stats.latency_p99_ms >= stats.latency_p50_ms


def test_closed_gate_stops_actions_and_records_why(policy):
    clock = FakeClock()
    closed_ticks = set(range(4, 9))
    tick = [0]

    class Switch:
        name = "teleop"

        def check(self):
            i = tick[0]
            tick[0] += 1
            return (False, "teleop active: yes") if i in closed_ticks else (True, "teleop active: no")

    loop, acted = make_loop(policy, clock, gate=Gate([Switch()]))
    stats = loop.run(max_steps=14)
    assert stats.ticks == 14 and stats.gated_steps == 5 and stats.steps == len(acted) == 9
    assert stats.gate_reasons == {"teleop: teleop active: yes": 5}
    tick[0] = 0
    loop_hold, acted_hold = make_loop(policy, FakeClock(), gate=Gate([Switch()]), gated="hold")
    stats = loop_hold.run(max_steps=14)
    assert stats.steps == 9 and len(acted_hold) == 14  # gated ticks repeat the last safe output
    for i in range(4, 9):
        np.testing.assert_array_equal(acted_hold[i], acted_hold[3])


def test_the_loop_logs_an_episode_rldskit_reads_and_validates(policy, tmp_path, jpeg_480):
    clock = FakeClock()
    log = EpisodeLog(tmp_path / "episodes", "pi5_donkey.v1", [CAM], schema=SCHEMA, clock=clock.wall)
    loop, acted = make_loop(policy, clock, log=log, observe=frames_source(clock, jpeg=jpeg_480),
                            episode_metadata={"control_role": "pilot", "environment_id": "track_a",
                                              "vehicle_id": "car1"})
    stats = loop.run(max_steps=25)
    assert stats.steps == 25 and stats.episode_path is not None and not log.recording
    spec = load_spec("pi5_donkey.v1")
    ep = read_episode(stats.episode_path)  # the schema.json beside the episodes is found
    report = validate(ep, spec, Gates(check_images=True))
    assert report.errors == [], report.format_table()
    assert report.issues == []  # not even a warning: schema version, metadata and frames all match
    assert len(ep) == 25 and not ep.is_terminal
    np.testing.assert_array_equal(ep.steps["action"], np.stack(acted))
    assert list(ep.steps["control_mode"]) == ["pilot"] * 25
    assert ep.steps["policy_action_present"].all()
    assert ep.steps["observation/image"][0] == jpeg_480
    assert ep.metadata["environment_id"] == "track_a" and ep.metadata["vehicle_id"] == "car1"
    np.testing.assert_allclose(np.diff(ep.steps["timestamp/control"]), 0.05, atol=1e-6)
    # the raw policy output is logged beside the executed action; the rate limit made them differ
    raw = ep.steps["policy_action"]
    assert not np.allclose(raw, ep.steps["action"])
    head = SafetyHead(SAFETY, NAMES)
    np.testing.assert_allclose(np.stack([head.step(r).action for r in raw]), ep.steps["action"], atol=1e-6)


# =========================================================================== EpisodeLog alone


def test_episode_log_writes_what_rldskit_reads(tmp_path, jpeg_480):
    t = [1.7e9]
    log = EpisodeLog(tmp_path, "pi5_donkey.v1", [CAM], schema=SCHEMA, clock=lambda: t[0])
    eid = log.start_episode({"environment_id": "bench", "tags": ["origin:pi5"]}, episode_id="ep1")
    rng = np.random.default_rng(1)
    actions, raws = [], []
    for i in range(30):
        t[0] += 0.05
        a = rng.uniform(-1, 1, 2).astype(np.float32)
        raw = None if i % 4 == 0 else rng.uniform(-1, 1, 2).astype(np.float32)
        actions.append(a)
        raws.append(raw)
        log.log_step({"image": jpeg_480}, a, reward=float(i), timestamps={"control": t[0], "camera": t[0] - 0.003},
                     extras={"control_mode": ("user", "pilot")[i % 2], "policy_action": raw})
    path = log.end_episode(terminal=True)
    assert path == tmp_path / eid and (tmp_path / "schema.json").is_file()
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["status"] == "complete" and meta["end"]["num_steps"] == 30 and meta["end"]["terminal"] is True
    assert meta["format"] == "rldskit.capture/1" and meta["schema"] == {"name": "pi5_donkey", "version": "1.0.0"}
    assert sorted(os.listdir(path / "frames" / "image"))[:2] == ["000000.jpg", "000001.jpg"]
    spec = load_spec("pi5_donkey.v1")
    ep = read_episode(path, spec)
    report = validate(ep, spec, Gates(check_images=True))
    assert report.issues == [], report.format_table()
    assert ep.is_terminal and ep.metadata["tags"] == ["origin:pi5"] and ep.metadata["environment_id"] == "bench"
    np.testing.assert_array_equal(ep.steps["action"], np.stack(actions))
    np.testing.assert_array_equal(ep.steps["reward"], np.arange(30, dtype=np.float32))
    present = ep.steps["policy_action_present"]
    assert list(present) == [r is not None for r in raws]
    np.testing.assert_array_equal(ep.steps["policy_action"][present], np.stack([r for r in raws if r is not None]))
    assert list(ep.steps["control_mode"][:2]) == ["user", "pilot"]
    # and the edge's own reader agrees
    cap = read_capture_episode(path)
    assert len(cap) == 30 and cap.terminal and cap.problems == [] and cap.frame_bytes(3, CAM) == jpeg_480


def test_episode_log_png_frames_are_only_a_warning_for_a_jpeg_schema(tmp_path):
    log = EpisodeLog(tmp_path, "pi5_donkey.v1", [CAM], schema=SCHEMA)
    log.start_episode()
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[100:200, 300:400] = (255, 0, 0)
    for i in range(3):
        log.log_step({CAM: frame}, [0.0, 0.1], timestamps={"control": 1.7e9 + i * 0.05, "camera": 1.7e9 + i * 0.05},
                     extras={"control_mode": "pilot"})
    path = log.end_episode(terminal=False)
    assert (path / "frames" / "image" / "000002.png").is_file()
    spec = load_spec("pi5_donkey.v1")
    ep = read_episode(path, spec)
    report = validate(ep, spec, Gates(check_images=True))
    assert report.errors == [] and {i.code for i in report.issues} == {"IMAGE_ENCODING"}
    from PIL import Image

    with Image.open(io.BytesIO(ep.steps[CAM][1])) as img:
        np.testing.assert_array_equal(np.asarray(img), frame)


def test_episode_log_refuses_wiring_mistakes(tmp_path):
    with pytest.raises(ValueError, match="name.v1"):
        EpisodeLog(tmp_path, "pi5_donkey", [CAM])
    with pytest.raises(ValueError, match="not so100_arm.v1"):
        EpisodeLog(tmp_path, "so100_arm.v1", [CAM], schema=SCHEMA)
    log = EpisodeLog(tmp_path, "pi5_donkey.v1", [CAM], schema=SCHEMA)
    with pytest.raises(RuntimeError):
        log.log_step({CAM: None}, [0, 0])
    log.start_episode()
    with pytest.raises(ValueError, match="not declared"):
        log.log_step({CAM: None}, [0, 0], timestamps={"imu": 1.0})
    with pytest.raises(ValueError, match="neither JPEG nor PNG"):
        log.log_step({CAM: b"GIF89a...."}, [0, 0])
    with pytest.raises(ValueError, match="reserved"):
        log.log_step({CAM: None}, [0, 0], extras={"reward": 1})
    with pytest.raises(ValueError, match="at least one step"):
        log.end_episode(terminal=False)
    with pytest.raises(TypeError):
        log.end_episode(terminal=None)  # type: ignore[arg-type]
    log.close()
    (tmp_path / "schema.json").write_text(json.dumps({"name": "pi5_donkey", "version": "1.1.0"}))
    with pytest.raises(ValueError, match="another schema"):
        EpisodeLog(tmp_path, "pi5_donkey.v1", [CAM], schema=SCHEMA)


def test_png_codec_round_trips_and_reads_pillow_pngs():
    from PIL import Image

    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:37, 0:53]
    smooth = np.stack([yy * 6, xx * 4, (yy + xx) * 2], -1).astype(np.uint8)  # Pillow picks Sub/Up/Avg/Paeth rows
    for arr in [rng.integers(0, 256, (17, 23, 3), dtype=np.uint8), smooth,
                rng.integers(0, 256, (9, 11, 4), dtype=np.uint8), rng.integers(0, 256, (8, 5), dtype=np.uint8)]:
        ours = encode_png(arr)
        expect = arr if arr.ndim == 3 else arr[:, :, None]
        np.testing.assert_array_equal(decode_png(ours), expect)
        with Image.open(io.BytesIO(ours)) as img:
            np.testing.assert_array_equal(np.asarray(img).reshape(expect.shape), expect)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", optimize=True)
        np.testing.assert_array_equal(decode_png(buf.getvalue()), expect)
    npy = io.BytesIO()
    np.save(npy, smooth)
    np.testing.assert_array_equal(decode_frame(npy.getvalue()), smooth)
    bad = bytearray(encode_png(smooth))
    bad[40] ^= 0xFF
    with pytest.raises(FrameDecodeError):
        decode_png(bytes(bad))
    with pytest.raises(FrameDecodeError, match="unknown frame encoding"):
        decode_frame(b"GIF89a")


def test_jpeg_needs_pillow_and_zstd_chunks_need_zstandard(tmp_path, jpeg_480, monkeypatch):
    import zstandard

    log = EpisodeLog(tmp_path, "pi5_donkey.v1", [CAM], schema=SCHEMA, chunk_steps=2)
    log.start_episode(episode_id="e")
    for i in range(3):
        log.log_step({CAM: jpeg_480}, [0.0, 0.0], timestamps={"control": i + 1.0, "camera": i + 1.0})
    path = log.end_episode(terminal=False)
    assert decode_frame(path / "frames" / "image" / "000000.jpg").shape == (480, 640, 3)  # Pillow present here
    first = path / "steps" / "000000.jsonl"
    (path / "steps" / "000000.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(first.read_bytes()))
    first.unlink()
    assert len(read_capture_episode(path)) == 3
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(FrameDecodeError, match="needs Pillow"):
        decode_frame(path / "frames" / "image" / "000000.jpg")
    with pytest.raises(CaptureReadError, match="zstandard"):
        read_capture_episode(path)


# =========================================================================== replay


def _png_episode(root: Path, steps: int = 12, shape=(48, 64, 3), seed: int = 3) -> tuple[Path, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(steps)]
    log = EpisodeLog(root, "pi5_donkey.v1", [CAM], schema=SCHEMA)
    log.start_episode({"environment_id": "lab", "tags": ["origin:pi5"]}, episode_id="source")
    for i, f in enumerate(frames):
        t = 1.7e9 + 0.05 * i
        log.log_step({CAM: f}, [0.0, 0.2], timestamps={"control": t, "camera": t - 0.001}, extras={"control_mode": "user"})
    return log.end_episode(terminal=True), frames


def test_replay_logs_the_safety_processed_policy_outputs(policy, tmp_path):
    src, frames = _png_episode(tmp_path / "recorded")
    out = EpisodeLog(tmp_path / "replayed", "pi5_donkey.v1", [CAM], schema=SCHEMA)
    tight = {**SAFETY, "max_delta": {"steering": 0.01, "throttle": 0.005}}
    res = replay_episode(src, policy, SafetyHead(tight, NAMES), out_log=out)
    assert res.steps == 12 and res.episode_path is not None
    # what it should have done: the policy on each frame, chunk[0], through a fresh safety head
    head = SafetyHead(tight, NAMES)
    raw = np.stack([policy({CAM: policy.prepare_frame(f)})[0] for f in frames])
    expect = np.stack([head.step(r).action for r in raw])
    np.testing.assert_allclose(res.policy_actions, raw, atol=1e-6)
    np.testing.assert_array_equal(res.actions, expect)
    assert res.violations > 0 and not np.allclose(expect, raw)  # the policy jumps more than max_delta allows
    spec = load_spec("pi5_donkey.v1").with_image_shape(CAM, (48, 64, 3))
    ep = read_episode(res.episode_path, spec)
    np.testing.assert_array_equal(ep.steps["action"], expect)
    np.testing.assert_allclose(ep.steps["policy_action"], raw, atol=1e-6)
    assert list(ep.steps["control_mode"]) == ["pilot"] * 12 and ep.is_terminal
    src_ep = read_episode(src, spec)
    np.testing.assert_array_equal(ep.steps["timestamp/control"], src_ep.steps["timestamp/control"])
    assert ep.steps[CAM][5] == src_ep.steps[CAM][5]  # frames copied byte for byte
    assert ep.metadata["tags"] == ["origin:pi5", "replay", "replay_of:source"] and ep.metadata["environment_id"] == "lab"
    assert validate(ep, spec).errors == []
    # in-memory frames give the same actions
    again = replay_episode([{CAM: f} for f in frames], policy, SafetyHead(tight, NAMES))
    np.testing.assert_array_equal(again.actions, expect)


def test_history_buffer_repeats_the_first_frame(tmp_path):
    pol = Policy.load(make_export(tmp_path / "h2", seed=5, history=2))
    stepper = PolicyStepper(pol)
    rng = np.random.default_rng(0)
    f0, f1 = (rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2))
    p0, p1 = pol.prepare_frame(f0), pol.prepare_frame(f1)
    chunk, first = stepper({CAM: f0})
    np.testing.assert_allclose(chunk, pol({CAM: np.stack([p0, p0])}), atol=1e-6)
    np.testing.assert_array_equal(first, chunk[0])
    chunk, _ = stepper({CAM: f1})
    np.testing.assert_allclose(chunk, pol({CAM: np.stack([p0, p1])}), atol=1e-6)  # oldest first
    stepper.reset()
    chunk, _ = stepper({CAM: f1})
    np.testing.assert_allclose(chunk, pol({CAM: np.stack([p1, p1])}), atol=1e-6)


# =========================================================================== kill -9

WORKER = r"""
import os, sys
import numpy as np
from edge_runtime.episode_log import EpisodeLog
from edge_runtime.loop import ControlLoop, Observation
from edge_runtime.policy import Policy
from edge_runtime.safety import SafetyHead

export, root, schema, progress = sys.argv[1:5]
n = [0]
def wall():
    return 1.7e9 + 0.05 * n[0]
rng = np.random.default_rng(0)
frames = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(8)]
def observe():
    n[0] += 1
    return Observation({"observation/image": frames[n[0] % 8]}, timestamp=wall() - 0.001)
log = EpisodeLog(root, "pi5_donkey.v1", ["observation/image"], schema=schema, durability="none", chunk_steps=7)
loop = ControlLoop(Policy.load(export), SafetyHead({"bounds": {"steering": [-1, 1], "throttle": [-1, 1]}},
                   ["steering", "throttle"]), observe=observe, act=lambda a: None, log=log, wall_clock=wall)
loop.reset()
fd = os.open(progress, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
while True:
    loop.tick()
    os.write(fd, b"%d\n" % (loop.stats.steps - 1))
"""


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_9_mid_logging_leaves_a_recoverable_episode(policy, tmp_path, seed):
    export = make_export(tmp_path / "export")
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    progress = tmp_path / "progress.txt"
    root = tmp_path / "episodes"
    proc = subprocess.Popen([sys.executable, str(worker), str(export), str(root), str(SCHEMA), str(progress)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while True:
            text = progress.read_text() if progress.exists() else ""
            if text.count("\n") >= 3 + 5 * seed:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker did not log: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.01)
        time.sleep(random.Random(seed).uniform(0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = int(progress.read_text().strip().split("\n")[-1]) + 1  # steps certainly logged
    (ep_dir,) = [p for p in root.iterdir() if p.is_dir()]
    assert json.loads((ep_dir / "metadata.json").read_text())["status"] == "recording"
    spec = load_spec("pi5_donkey.v1").with_image_shape(CAM, (24, 32, 3))
    with pytest.raises(Exception, match="recording"):
        read_episode(ep_dir, spec)
    ep = read_episode(ep_dir, spec, recover=True)
    assert done <= len(ep) <= done + 1  # at most the step in flight is lost
    assert not ep.is_terminal and list(ep.steps["control_mode"]) == ["pilot"] * len(ep)
    assert validate(ep, spec, Gates(check_images=True)).errors == []
    assert len(read_capture_episode(ep_dir)) == len(ep)  # the edge reader stops at the same place


# =========================================================================== no optional packages

ALONE = r"""
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"PIL", "zstandard", "rldskit", "safetensors", "torch", "jax", "tensorflow"}:
            raise ImportError(f"{name} is blocked")

sys.meta_path.insert(0, Block())
import numpy as np
from edge_runtime.episode_log import EpisodeLog, FrameDecodeError, decode_frame
from edge_runtime.gating import Gate, ThermalProvider
from edge_runtime.loop import ControlLoop, Observation, replay_episode
from edge_runtime.policy import Policy
from edge_runtime.safety import SafetyHead

export, root, sysfs = sys.argv[1:4]
pol = Policy.load(export)
frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
log = EpisodeLog(root, "pi5_donkey.v1", ["observation/image"])
head = SafetyHead({"bounds": {"steering": [-1, 1], "throttle": [-1, 1]}}, ["steering", "throttle"])
loop = ControlLoop(pol, head, observe=lambda: Observation({"observation/image": frame}), act=lambda a: None, log=log,
                   gate=Gate([ThermalProvider(sysfs)]), rate_hz=1000)
stats = loop.run(max_steps=5)
res = replay_episode(stats.episode_path, pol, head)
try:
    decode_frame(b"\xff\xd8\xff\xe0 not really a jpeg")
except FrameDecodeError as e:
    assert "Pillow" in str(e)
print(stats.steps, res.steps, sorted(m for m in ("PIL", "zstandard", "rldskit", "safetensors") if m in sys.modules))
"""


def test_the_edge_modules_work_without_pillow_zstandard_or_rldskit(tmp_path):
    export = make_export(tmp_path / "export")
    out = subprocess.run([sys.executable, "-c", ALONE, str(export), str(tmp_path / "eps"), str(tmp_path / "sys")],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["5", "5", "[]"]
