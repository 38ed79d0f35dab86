"""edge_runtime.slots: install / health check / promote / rollback, and crash safety: a crash (an
exception, ``os._exit`` or ``kill -9``) at any step leaves ``state.json`` whole and a loadable
current slot. Real bundles signed with real Ed25519 keys; crashes in real subprocesses."""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_edge_bundle import make_bundle

from edge_runtime.bundle import BundleError, build_bundle, generate_keypair, pack_zip, sign_bundle, verify_bundle
from edge_runtime.slots import (INSTALL_STEPS, PROMOTE_STEPS, ROLLBACK_STEPS, HealthCheckFailed, SlotError,
                                health_check, install, load_current, promote, read_state, rollback, status)

REPO = str(Path(__file__).resolve().parents[1])
FAST = {"samples": 3}  # health check options that keep promotions quick


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("slots-env")
    key, pub = generate_keypair(d / "keys" / "release")
    rogue, _ = generate_keypair(d / "other" / "rogue")
    e = {"dir": d, "key": key, "pub": pub, "keys": d / "keys", "rogue": rogue}
    for i, (name, seed) in enumerate([("a", 0), ("b", 1), ("c", 2), ("d", 3), ("e", 4)]):
        e[name] = make_bundle(d, name, seed=seed, version=f"1.{i}.0", key=key, zip_=True)
    e["nan"] = make_bundle(d, "nan", version="6.6.6", key=key, zip_=True, nan=True)
    e["oob"] = make_bundle(d, "oob", version="7.7.7", key=key, zip_=True, head_bias=50.0)
    e["a_dir"] = d / "a"
    sign_bundle(e["a_dir"], key)
    return e


def _ids(env, *names):
    return [verify_bundle(env[n], allow_unsigned=True).slot_id for n in names]


def _check_loadable(root: Path) -> str:
    state = json.loads((root / "state.json").read_text())
    assert state["format"] == "rldskit-edge-slots"
    loaded = load_current(root)
    frame = np.zeros((24, 32, 3), np.uint8)
    assert np.all(np.isfinite(loaded.policy({"observation/image": frame})))
    assert loaded.slot_id == state["current"] and loaded.slot_dir.is_dir()
    for sid in [state["current"], state["candidate"], *state["history"]]:
        assert sid is None or (root / "slots" / sid / "edge_manifest.json").is_file()
    return loaded.slot_id


# =========================================================================== the happy path


def test_install_promote_status(tmp_path, env):
    root = tmp_path / "model"
    a, b = _ids(env, "a", "b")
    with pytest.raises(SlotError, match="no current"):
        load_current(root)
    assert install(env["a"], root, trusted_keys=env["keys"], compat="pi5_donkey.v1") == a
    assert read_state(root)["candidate"] == a and read_state(root)["current"] is None
    assert install(env["a"], root, trusted_keys=env["keys"]) == a  # idempotent
    assert status(root)["slots"] == [a]
    r = promote(root, health=FAST)
    assert r["current"] == a and r["previous"] is None and r["health"]["ok"]
    assert _check_loadable(root) == a
    assert install(env["a_dir"], root, trusted_keys=env["keys"]) == a  # the folder form; already current
    assert read_state(root)["candidate"] is None
    assert install(env["b"], root, trusted_keys=[env["pub"]]) == b
    s = status(root)
    assert s["current"]["slot"] == a and s["current"]["version"] == "1.0.0" and s["current"]["present"]
    assert s["candidate"]["slot"] == b and s["candidate"]["version"] == "1.1.0"
    promote(root, health=FAST)
    s = status(root)
    assert s["current"]["version"] == "1.1.0" and [h["version"] for h in s["history"]] == ["1.0.0"]
    assert s["candidate"] is None and s["slots"] == sorted([a, b])
    assert [e["action"] for e in read_state(root)["events"]] == ["install", "install", "promote", "install", "install",
                                                                  "promote"]
    assert os.readlink(root / "current") == f"slots/{b}" and not (root / "candidate").exists()
    assert load_current(root).manifest["version"] == "1.1.0"
    # slot files are read-only
    assert stat.S_IMODE(os.stat(root / "slots" / b / "policy" / "model.safetensors").st_mode) == 0o444
    assert sorted(p.name for p in (root / "slots").iterdir()) == sorted([a, b])


def test_install_refuses_bad_bundles_and_keeps_nothing(tmp_path, env):
    root = tmp_path / "model"
    with pytest.raises(BundleError, match="so100_arm.v1"):
        install(env["a"], root, trusted_keys=env["keys"], compat="so100_arm.v1")
    rogue = shutil.copy(env["b"], tmp_path / "rogue.zip")
    sign_bundle(rogue, env["rogue"])
    with pytest.raises(BundleError, match="not trusted"):
        install(rogue, root, trusted_keys=env["keys"])
    unsigned = pack_zip(build_bundle(env["dir"] / "a-run" / "export", tmp_path / "u", version="0.1", compat=["x"]),
                        tmp_path / "u.zip")
    with pytest.raises(BundleError, match="unsigned"):
        install(unsigned, root, trusted_keys=env["keys"])
    assert list((root / "slots").iterdir()) == []
    st = read_state(root)
    assert st["current"] is None and st["candidate"] is None
    assert [e["ok"] for e in st["events"]] == [False, False, False]
    sid = install(unsigned, root, trusted_keys=env["keys"], allow_unsigned=True)
    assert read_state(root)["candidate"] == sid
    promote(root, health=FAST)
    with pytest.raises(SlotError, match="no candidate"):
        promote(root, health=FAST)


@pytest.mark.parametrize("bad, health, reason", [
    ("nan", FAST, "not finite"),
    ("oob", FAST, "outside the safety bounds"),
    ("b", {"samples": 3, "latency_budget_ms": 1e-9}, "exceeds the budget"),
])
def test_a_failed_health_check_leaves_current_untouched(tmp_path, env, bad, health, reason):
    root = tmp_path / "model"
    install(env["a"], root, trusted_keys=env["keys"])
    promote(root, health=FAST)
    before = read_state(root)
    sid = install(env[bad], root, trusted_keys=env["keys"])
    with pytest.raises(HealthCheckFailed, match=reason) as ei:
        promote(root, health=health)
    rep = ei.value.report
    assert not rep["ok"] and rep["samples"] == 3
    if bad == "nan":
        assert rep["non_finite"] == 3
    if bad == "oob":
        assert rep["bound_violations"] > 0 and rep["action_max"][0] > 1
    after = read_state(root)
    assert after["current"] == before["current"] and after["history"] == before["history"]
    assert after["candidate"] == sid and after["events"][-1]["ok"] is False
    assert _check_loadable(root) == before["current"]


def test_health_check_on_recorded_observations(env):
    slot = env["dir"] / "a"
    rng = np.random.default_rng(0)
    obs = [({"observation/image": rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)}, None) for _ in range(4)]
    r = health_check(slot, observations=obs)
    assert r["ok"] and r["source"] == "observations" and r["samples"] == 4 and r["latency_ms"]["p99"] > 0
    bad = health_check(slot, observations=[({"observation/wrong": obs[0][0]["observation/image"]}, None)])
    assert not bad["ok"] and "could not be run" in bad["failures"][0]


def test_rollback_and_history_cap(tmp_path, env):
    root = tmp_path / "model"
    ids = _ids(env, "a", "b", "c", "d", "e")
    with pytest.raises(SlotError, match="no such model folder"):
        rollback(root)
    for name in ("a", "b", "c", "d", "e"):
        install(env[name], root, trusted_keys=env["keys"])
        promote(root, health=FAST)
    st = read_state(root)
    assert st["current"] == ids[4] and st["history"] == [ids[3], ids[2], ids[1]]  # capped at 3
    assert sorted(p.name for p in (root / "slots").iterdir()) == sorted(ids[1:])  # ids[0] collected
    r = rollback(root)
    assert r == {"current": ids[3], "rolled_back": ids[4], "history": [ids[2], ids[1]]}
    assert _check_loadable(root) == ids[3]
    assert (root / "slots" / ids[4]).is_dir()  # kept until the next collection
    ev = read_state(root)["events"][-1]
    assert ev["action"] == "rollback" and ids[4] in ev["detail"]
    rollback(root)
    rollback(root)
    assert _check_loadable(root) == ids[1] and read_state(root)["history"] == []
    with pytest.raises(SlotError, match="history is empty"):
        rollback(root)
    install(env["a"], root, trusted_keys=env["keys"])
    promote(root, health=FAST, keep_history=1)
    assert read_state(root)["history"] == [ids[1]]
    assert sorted(p.name for p in (root / "slots").iterdir()) == sorted([ids[0], ids[1]])


def test_a_malformed_state_file_is_reported(tmp_path, env):
    root = tmp_path / "model"
    install(env["a"], root, trusted_keys=env["keys"])
    (root / "state.json").write_text(json.dumps({"format": "rldskit-edge-slots", "current": "../../etc",
                                                 "candidate": None, "history": []}))
    for fn in (lambda: load_current(root), lambda: promote(root), lambda: status(root)):
        with pytest.raises(SlotError, match="state.json"):
            fn()


def test_fault_steps_are_all_reached(tmp_path, env):
    root = tmp_path / "model"
    seen: list[str] = []
    install(env["a"], root, trusted_keys=env["keys"], fault=seen.append)
    assert seen == list(INSTALL_STEPS)
    seen.clear()
    promote(root, health=FAST, fault=seen.append)
    assert seen == list(PROMOTE_STEPS)
    install(env["b"], root, trusted_keys=env["keys"])
    promote(root, health=FAST)
    seen.clear()
    rollback(root, fault=seen.append)
    assert seen == list(ROLLBACK_STEPS)


# =========================================================================== crashes


@pytest.fixture(scope="module")
def templates(tmp_path_factory, env):
    """Roots before each operation: (root, old current, new current after the operation)."""
    d = tmp_path_factory.mktemp("templates")
    a, b = _ids(env, "a", "b")
    t = {}
    r = d / "install"
    install(env["a"], r, trusted_keys=env["keys"])
    promote(r, health=FAST)
    t["install"] = (r, a, a)
    r = d / "promote"
    shutil.copytree(t["install"][0], r, symlinks=True)
    install(env["b"], r, trusted_keys=env["keys"])
    t["promote"] = (r, a, b)
    r = d / "rollback"
    shutil.copytree(t["promote"][0], r, symlinks=True)
    promote(r, health=FAST)
    t["rollback"] = (r, b, a)
    return t


_STEPS = {"install": INSTALL_STEPS, "promote": PROMOTE_STEPS, "rollback": ROLLBACK_STEPS}
_CASES = [(op, step) for op in ("install", "promote", "rollback") for step in _STEPS[op]]


class Crash(Exception):
    pass


def _expect(op: str, step: str, old: str, new: str) -> str:
    steps = _STEPS[op]
    return new if steps.index(step) >= steps.index("state_renamed") else old  # the new state is in effect


def _after_crash(root: Path, env, op: str, step: str, old: str, new: str) -> None:
    cur = _check_loadable(root)
    assert cur == _expect(op, step, old, new), (op, step, cur)
    # and the next operation works and cleans up what the crash left
    install(env["c"], root, trusted_keys=env["keys"])
    promote(root, health=FAST)
    c = _ids(env, "c")[0]
    assert _check_loadable(root) == c
    assert rollback(root)["current"] == cur
    assert not [p for p in (root / "slots").iterdir() if p.name.startswith(".")]
    assert not [p for p in root.iterdir() if p.name.startswith(".state.json.")]


def _run_op(op: str, root: Path, env, fault) -> None:
    if op == "install":
        install(env["b"], root, trusted_keys=env["keys"], fault=fault)
    elif op == "promote":
        promote(root, health=FAST, fault=fault)
    else:
        rollback(root, fault=fault)


@pytest.mark.parametrize("op, step", _CASES)
def test_a_crash_by_exception_at_every_step(tmp_path, env, templates, op, step):
    src, old, new = templates[op]
    root = tmp_path / "root"
    shutil.copytree(src, root, symlinks=True)

    def fault(s):
        if s == step:
            raise Crash(s)

    with pytest.raises(Crash):
        _run_op(op, root, env, fault)
    _after_crash(root, env, op, step, old, new)


_CHILD = """
import os, sys
sys.path.insert(0, {repo!r})
from edge_runtime import slots
op, root, step, bundle, keys = sys.argv[1:6]
def fault(s):
    if s == step:
        os._exit(3)
if op == "install":
    slots.install(bundle, root, trusted_keys=keys, fault=fault)
elif op == "promote":
    slots.promote(root, health={{"samples": 3}}, fault=fault)
else:
    slots.rollback(root, fault=fault)
os._exit(0)
"""


@pytest.mark.parametrize("op, step", _CASES)
def test_a_crash_by_os_exit_at_every_step(tmp_path, env, templates, op, step):
    src, old, new = templates[op]
    root = tmp_path / "root"
    shutil.copytree(src, root, symlinks=True)
    p = subprocess.run([sys.executable, "-c", _CHILD.format(repo=REPO), op, str(root), step, str(env["b"]),
                        str(env["keys"])], capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, p.stderr  # it died at the step
    _after_crash(root, env, op, step, old, new)


_LOOP = """
import os, sys, itertools
sys.path.insert(0, {repo!r})
from edge_runtime import slots
root, keys, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
bundles = sys.argv[4:]
print("ready", flush=True)
for i in itertools.count(start):
    slots.install(bundles[i % len(bundles)], root, trusted_keys=keys)
    try:
        slots.promote(root, health={{"samples": 2}})
    except slots.SlotError:
        pass  # the bundle was already current
    if i % 4 == 3:
        try:
            slots.rollback(root)
        except slots.SlotError:
            pass  # nothing to roll back to
"""


def test_kill_9_at_random_moments_always_leaves_a_loadable_current(tmp_path, env):
    root = tmp_path / "model"
    install(env["a"], root, trusted_keys=env["keys"])
    promote(root, health=FAST)
    names = ("a", "b", "c")
    ids = set(_ids(env, *names))
    rng = random.Random(1234)
    for it in range(5):
        p = subprocess.Popen([sys.executable, "-c", _LOOP.format(repo=REPO), str(root), str(env["keys"]),
                              str(rng.randrange(3)), *(str(env[n]) for n in names)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
            time.sleep(rng.uniform(0.02, 0.5))
        finally:
            p.kill()  # SIGKILL
            _, err = p.communicate(timeout=60)
        assert p.returncode == -9, err  # it was still running: no error of its own
        assert _check_loadable(root) in ids
    install(env["d"], root, trusted_keys=env["keys"])
    promote(root, health=FAST)
    assert _check_loadable(root) == _ids(env, "d")[0]
    assert not [p for p in (root / "slots").iterdir() if p.name.startswith(".")]
