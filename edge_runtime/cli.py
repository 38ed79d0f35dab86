"""``rldskit-edge``: the robot-side command line (numpy + cryptography only).

    rldskit-edge keygen --out signing                                # signing.key (0600) + signing.pub
    rldskit-edge bundle build runs/lora1/export --out bundle-1.4.0 --version 1.4.0 --compat pi5_donkey.v1
    rldskit-edge bundle sign bundle-1.4.0 --key signing.key          # signs, and writes bundle-1.4.0.zip
    rldskit-edge bundle verify bundle-1.4.0.zip --trusted-keys keys/ [--compat pi5_donkey.v1]
    rldskit-edge trust signing.pub --root /opt/robot/model           # add a public key to <root>/trusted_keys
    rldskit-edge install bundle-1.4.0.zip --root /opt/robot/model    # verify, stage as the candidate
    rldskit-edge promote --root /opt/robot/model                     # health check, then the atomic switch
    rldskit-edge rollback --root /opt/robot/model
    rldskit-edge status --root /opt/robot/model [--json]
    rldskit-edge run --root /opt/robot/model --replay episodes/ep_0007 --log episodes/replayed

Exit codes: 0 done; 1 refused (a bundle that fails verification, a failed health check, nothing
to roll back to); 2 bad usage or unreadable input. Every refusal prints one line naming the file
and what was expected.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _trusted(root: Path | None, given: str | None) -> Path | None:
    if given:
        return Path(given)
    if root is not None and (root / "trusted_keys").is_dir():
        return root / "trusted_keys"
    return None


def _print(obj: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, sort_keys=True, default=str))
        return
    for k, v in obj.items():
        print(f"{k:14s} {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")


def cmd_keygen(a) -> int:
    from edge_runtime.bundle import generate_keypair, key_id, load_public_key

    key, pub = generate_keypair(a.out)
    print(f"private key {key} (keep it secret), public key {pub}, key id {key_id(load_public_key(pub))}")
    return 0


def cmd_trust(a) -> int:
    from edge_runtime.bundle import key_id, load_public_key

    kid = key_id(load_public_key(a.public_key))
    dest = Path(a.root) / "trusted_keys"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(a.public_key, dest / f"{kid}.pub")
    print(f"trusted key {kid} -> {dest / (kid + '.pub')}")
    return 0


def cmd_bundle_build(a) -> int:
    from edge_runtime.bundle import build_bundle

    safety = json.loads(Path(a.safety).read_text()) if a.safety else None
    evidence = json.loads(Path(a.evidence).read_text()) if a.evidence else None
    out = build_bundle(a.export, a.out, version=a.version, compat=a.compat, name=a.name, backend=a.backend,
                       evidence=evidence, safety=safety)
    print(f"bundle {out} (unsigned; next: rldskit-edge bundle sign {out} --key KEY)")
    return 0


def cmd_bundle_sign(a) -> int:
    from edge_runtime.bundle import pack_zip, sign_bundle

    doc = sign_bundle(a.bundle, a.key)
    print(f"signed {a.bundle} with key {doc['key_id']}")
    p = Path(a.bundle)
    if p.is_dir() and not a.no_zip:
        z = pack_zip(p, p.with_name(p.name + ".zip"))
        print(f"zip {z}")
    return 0


def cmd_bundle_zip(a) -> int:
    from edge_runtime.bundle import pack_zip

    p = Path(a.bundle)
    print(f"zip {pack_zip(p, a.out or p.with_name(p.name + '.zip'))}")
    return 0


def cmd_bundle_verify(a) -> int:
    from edge_runtime.bundle import verify_bundle

    vb = verify_bundle(a.bundle, trusted_keys=a.trusted_keys, allow_unsigned=a.allow_unsigned, compat=a.compat)
    m = vb.manifest
    print(f"OK {a.bundle}: {m.get('name')} {m.get('version')} for {', '.join(m.get('compat', []))}; "
          f"{'signed by ' + vb.key_id if vb.signed else 'UNSIGNED'}; {len(m.get('files', {}))} files verified")
    return 0


def cmd_install(a) -> int:
    from edge_runtime.slots import install

    root = Path(a.root)
    keys = _trusted(root, a.trusted_keys)
    if keys is None and not a.allow_unsigned:
        print(f"rldskit-edge: no trusted keys: put public keys in {root / 'trusted_keys'} (rldskit-edge trust KEY.pub "
              f"--root {root}) or pass --trusted-keys", file=sys.stderr)
        return 2
    slot = install(a.bundle, root, trusted_keys=keys, allow_unsigned=a.allow_unsigned, compat=a.compat)
    print(f"installed {a.bundle} as candidate {slot} (next: rldskit-edge promote --root {root})")
    return 0


def _observations_of(root: str, episode: str, limit: int) -> list[tuple[Any, Any]]:
    """The first ``limit`` frames of a recorded episode, brought to the candidate policy's input
    size, as ``(frames, state)`` pairs for the health check."""
    from edge_runtime.episode_log import read_capture_episode
    from edge_runtime.policy import Policy
    from edge_runtime.slots import SLOTS, SlotError, read_state

    cand = read_state(root).get("candidate")
    if cand is None:
        raise SlotError(f"{root}: no candidate to promote")
    pol = Policy.load(Path(root) / SLOTS / cand / "policy")
    ep = read_capture_episode(episode)
    out = []
    for i in range(min(len(ep), limit)):
        frames = {c: pol.prepare_frame(ep.frame(i, c)) for c in pol.cameras}
        out.append((frames, None))
    return out


def cmd_promote(a) -> int:
    from edge_runtime.slots import HealthCheckFailed, promote, read_state

    health: dict[str, Any] = {"samples": a.samples, "latency_budget_ms": a.latency_budget_ms}
    if a.observations:
        health["observations"] = _observations_of(a.root, a.observations, a.samples)
    try:
        report = promote(a.root, health=health)
    except HealthCheckFailed as e:
        print(f"refused: {e}", file=sys.stderr)
        _print(e.report, a.json)
        return 1
    state = read_state(a.root)
    print(f"promoted {state['current']} (history {state['history']})")
    if a.json:
        _print(report, True)
    return 0


def cmd_rollback(a) -> int:
    from edge_runtime.slots import read_state, rollback

    rollback(a.root)
    print(f"rolled back: current is {read_state(a.root)['current']}")
    return 0


def cmd_status(a) -> int:
    from edge_runtime.slots import status

    _print(status(a.root), a.json)
    return 0


def cmd_run(a) -> int:
    from edge_runtime.episode_log import EpisodeLog
    from edge_runtime.loop import replay_episode
    from edge_runtime.safety import SafetyHead
    from edge_runtime.slots import load_current

    if not a.replay:
        print("rldskit-edge run: live control needs the robot's camera and actuator providers; use the Python API "
              "(edge_runtime.loop.ControlLoop(observe=..., act=...)) or --replay EPISODE", file=sys.stderr)
        return 2
    loaded = load_current(a.root)
    safety_cfg = json.loads((loaded.slot_dir / "safety.json").read_text())
    from edge_runtime.bundle import action_names

    names = action_names(loaded.policy.policy)
    safety = SafetyHead(safety_cfg, names)
    log = None
    if a.log:
        spec_id = loaded.policy.policy.get("spec_id") or (loaded.manifest.get("compat") or ["policy.v1"])[0]
        log = EpisodeLog(a.log, spec_id, loaded.policy.cameras)
    res = replay_episode(a.replay, loaded.policy, safety, out_log=log)  # frames resized by the stepper
    out = {"slot": loaded.slot_id, "version": loaded.manifest.get("version"), "steps": res.steps,
           "violations": res.violations, "max_risk": float(res.risks.max()) if res.steps else 0.0,
           "episode": str(res.episode_path) if res.episode_path else None}
    _print(out, a.json)
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rldskit-edge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("keygen", help="make an ed25519 signing key pair")
    p.add_argument("--out", required=True, help="path prefix: writes PREFIX.key and PREFIX.pub")
    p.set_defaults(fn=cmd_keygen)
    p = sub.add_parser("trust", help="trust a public key on this robot")
    p.add_argument("public_key")
    p.add_argument("--root", required=True)
    p.set_defaults(fn=cmd_trust)

    b = sub.add_parser("bundle", help="build, sign, zip and verify bundles").add_subparsers(dest="bcmd", required=True)
    p = b.add_parser("build")
    p.add_argument("export", help="a trainer export folder (model.safetensors + policy.json)")
    p.add_argument("--out", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--compat", action="append", required=True, help="compatible schema id (repeatable)")
    p.add_argument("--name")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--safety", help="safety.json to use instead of the default from the policy's bounds")
    p.add_argument("--evidence", help="a JSON file of training evidence to include")
    p.set_defaults(fn=cmd_bundle_build)
    p = b.add_parser("sign")
    p.add_argument("bundle")
    p.add_argument("--key", required=True)
    p.add_argument("--no-zip", action="store_true", help="do not write BUNDLE.zip next to a signed folder")
    p.set_defaults(fn=cmd_bundle_sign)
    p = b.add_parser("zip")
    p.add_argument("bundle")
    p.add_argument("--out")
    p.set_defaults(fn=cmd_bundle_zip)
    p = b.add_parser("verify")
    p.add_argument("bundle")
    p.add_argument("--trusted-keys", help="a .pub file or a folder of them")
    p.add_argument("--allow-unsigned", action="store_true")
    p.add_argument("--compat")
    p.set_defaults(fn=cmd_bundle_verify)

    p = sub.add_parser("install", help="verify a bundle and stage it as the candidate")
    p.add_argument("bundle")
    p.add_argument("--root", required=True)
    p.add_argument("--trusted-keys", help="default: ROOT/trusted_keys")
    p.add_argument("--allow-unsigned", action="store_true")
    p.add_argument("--compat", help="the schema this robot runs (refuse bundles not compatible with it)")
    p.set_defaults(fn=cmd_install)
    p = sub.add_parser("promote", help="health-check the candidate and make it current")
    p.add_argument("--root", required=True)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--latency-budget-ms", type=float, default=100.0)
    p.add_argument("--observations", help="a recorded episode whose frames feed the health check")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_promote)
    p = sub.add_parser("rollback", help="make the last known good slot current again")
    p.add_argument("--root", required=True)
    p.set_defaults(fn=cmd_rollback)
    p = sub.add_parser("status")
    p.add_argument("--root", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("run", help="run the current policy (--replay a recorded episode)")
    p.add_argument("--root", required=True)
    p.add_argument("--replay", help="a recorded episode folder to feed instead of sensors")
    p.add_argument("--log", help="write the actions taken as an episode under this folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_run)
    return ap


def main(argv: list[str] | None = None) -> int:
    from edge_runtime.bundle import BundleError
    from edge_runtime.episode_log import CaptureReadError, FrameDecodeError
    from edge_runtime.policy import PolicyError
    from edge_runtime.safety import SafetyConfigError
    from edge_runtime.slots import SlotError

    args = _parser().parse_args(argv)
    try:
        return args.fn(args)
    except (BundleError, SlotError) as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    except (PolicyError, SafetyConfigError, CaptureReadError, FrameDecodeError, OSError, ValueError, KeyError) as e:
        print(f"rldskit-edge: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
