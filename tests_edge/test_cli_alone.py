"""``rldskit-edge`` end to end in the edge-only venv: keys, bundle build/sign/zip/verify, trust,
install, promote (health check on recorded frames), status, replay with logging, a second bundle,
rollback; and refusals (tampered zip, untrusted key, unsigned) that leave the slots as they were."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from conftest import make_export
from edge_runtime.episode_log import EpisodeLog, read_capture_episode


def edge(*args, ok=True):
    r = subprocess.run([sys.executable, "-m", "edge_runtime", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    if ok is True:
        assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
    elif ok is not None:
        assert r.returncode == ok, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def _episode(root: Path, steps: int = 12) -> Path:
    """A recorded episode with camera-sized PNG frames (decodable without Pillow)."""
    log = EpisodeLog(root, "pi5_donkey.v1", ["observation/image"], durability="none")
    log.start_episode({"environment_id": "track", "control_role": "user", "tags": ["origin:test"]})
    rng = np.random.default_rng(0)
    for i in range(steps):
        frame = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        log.log_step({"observation/image": frame}, np.array([0.1, 0.2], np.float32),
                     timestamps={"control": 100 + i * 0.05, "camera": 100 + i * 0.05 - 0.001},
                     extras={"control_mode": "user", "policy_action": None})
    return log.end_episode(terminal=False)


def test_the_whole_robot_side_workflow(tmp_path):
    export = make_export(tmp_path / "export", seed=1)
    edge("keygen", "--out", tmp_path / "signing")
    edge("bundle", "build", export, "--out", tmp_path / "bundle-1.0.0", "--version", "1.0.0",
         "--compat", "pi5_donkey.v1")
    edge("bundle", "sign", tmp_path / "bundle-1.0.0", "--key", tmp_path / "signing.key")
    z = tmp_path / "bundle-1.0.0.zip"
    assert z.is_file()
    r = edge("bundle", "verify", z, "--trusted-keys", tmp_path / "signing.pub", "--compat", "pi5_donkey.v1")
    assert r.stdout.startswith("OK") and "signed by" in r.stdout
    root = tmp_path / "model"
    edge("install", z, "--root", root, ok=2)  # no trusted keys yet: a usage error, nothing staged
    edge("trust", tmp_path / "signing.pub", "--root", root)
    edge("install", z, "--root", root, "--compat", "pi5_donkey.v1")
    ep = _episode(tmp_path / "episodes")
    edge("promote", "--root", root, "--observations", ep, "--samples", "8")
    st = json.loads(edge("status", "--root", root, "--json").stdout)
    assert st["current"] and st["candidate"] is None

    out = json.loads(edge("run", "--root", root, "--replay", ep, "--log", tmp_path / "replayed", "--json").stdout)
    assert out["steps"] == 12 and out["version"] == "1.0.0"
    replayed = read_capture_episode(out["episode"])
    assert len(replayed) == 12 and "replay" in replayed.metadata["tags"]
    for s in replayed.steps:
        a = np.asarray(s["action"], np.float32)
        assert np.isfinite(a).all() and (np.abs(a) <= 1).all()

    # a second bundle, promoted, then rolled back to the first
    export2 = make_export(tmp_path / "export2", seed=2)
    edge("bundle", "build", export2, "--out", tmp_path / "bundle-1.1.0", "--version", "1.1.0", "--compat", "pi5_donkey.v1")
    edge("bundle", "sign", tmp_path / "bundle-1.1.0", "--key", tmp_path / "signing.key")
    edge("install", tmp_path / "bundle-1.1.0.zip", "--root", root)
    edge("promote", "--root", root)
    assert json.loads(edge("status", "--root", root, "--json").stdout)["current"]["version"] == "1.1.0"
    edge("rollback", "--root", root)
    assert json.loads(edge("status", "--root", root, "--json").stdout)["current"]["version"] == "1.0.0"


def test_refusals_leave_the_slots_as_they_were(tmp_path):
    export = make_export(tmp_path / "export")
    edge("keygen", "--out", tmp_path / "good")
    edge("keygen", "--out", tmp_path / "evil")
    edge("bundle", "build", export, "--out", tmp_path / "b", "--version", "2.0.0", "--compat", "pi5_donkey.v1")
    edge("bundle", "sign", tmp_path / "b", "--key", tmp_path / "good.key")
    root = tmp_path / "model"
    edge("trust", tmp_path / "good.pub", "--root", root)
    edge("install", tmp_path / "b.zip", "--root", root)
    edge("promote", "--root", root)
    before = (root / "state.json").read_bytes()

    # tampered: one byte of the weights flipped inside the zip
    entries = {}
    with zipfile.ZipFile(tmp_path / "b.zip") as zf:
        for name in zf.namelist():
            entries[name] = zf.read(name)
    w = bytearray(entries["policy/model.safetensors"])
    w[-5] ^= 0xFF
    entries["policy/model.safetensors"] = bytes(w)
    with zipfile.ZipFile(tmp_path / "tampered.zip", "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    r = edge("install", tmp_path / "tampered.zip", "--root", root, ok=1)
    assert "model.safetensors" in r.stderr

    # signed by a key the robot does not trust
    edge("bundle", "build", export, "--out", tmp_path / "e", "--version", "2.0.1", "--compat", "pi5_donkey.v1")
    edge("bundle", "sign", tmp_path / "e", "--key", tmp_path / "evil.key")
    r = edge("install", tmp_path / "e.zip", "--root", root, ok=1)
    assert "key" in r.stderr

    # unsigned, and an incompatible schema
    edge("bundle", "build", export, "--out", tmp_path / "u", "--version", "2.0.2", "--compat", "so100_arm.v1")
    edge("bundle", "zip", tmp_path / "u")
    edge("install", tmp_path / "u.zip", "--root", root, ok=1)
    edge("bundle", "sign", tmp_path / "u", "--key", tmp_path / "good.key")
    r = edge("install", tmp_path / "u.zip", "--root", root, "--compat", "pi5_donkey.v1", ok=1)
    assert "pi5_donkey.v1" in r.stderr

    # a NaN policy installs (it is signed and intact) but fails the health check on promote
    bad = make_export(tmp_path / "nan_export", nan=True)
    edge("bundle", "build", bad, "--out", tmp_path / "n", "--version", "2.0.3", "--compat", "pi5_donkey.v1")
    edge("bundle", "sign", tmp_path / "n", "--key", tmp_path / "good.key")
    edge("install", tmp_path / "n.zip", "--root", root)
    edge("promote", "--root", root, ok=1)
    after = json.loads((root / "state.json").read_text())
    assert after["current"] == json.loads(before)["current"]
    edge("rollback", "--root", root, ok=1)  # nothing to roll back to
    assert json.loads(edge("status", "--root", root, "--json").stdout)["current"]["slot"] == after["current"]
