"""The ``rldskit`` command line.

Subcommands (each a thin wrapper over a library function):

* ``validate PATH...``: check episodes against their schema and gates. Exit 0 when clean, 1
  on violations, 2 when it cannot run (missing path, unreadable schema or gates).
* ``synth``: write realistic synthetic episodes through the capture logger.
* ``schema list|show|export NAME``: print built-in schemas or a schema's JSON Schema.
* ``recover PATH...``: finish episodes a killed logger left unfinished (marked truncated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence

EXIT_OK, EXIT_VIOLATIONS, EXIT_USAGE = 0, 1, 2


class _Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, label: str, enabled: bool):
        self.label = label
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done != total and now - self.last < 0.1:
            return
        self.last = now
        width = 30
        fill = int(width * done / max(total, 1))
        rate = done / max(now - self.t0, 1e-9)
        sys.stderr.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} ({rate:.0f}/s)")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _err(msg: str) -> int:
    print(f"rldskit: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def cmd_validate(args: argparse.Namespace) -> int:
    from rldskit.spec import SpecError
    from rldskit.validation import Gates, resolve_spec_arg, validate_paths

    try:
        spec = resolve_spec_arg(args.schema)
    except SpecError as e:
        return _err(str(e))
    try:
        gates = Gates.load(args.gates) if args.gates else Gates()
        overrides = {}
        if args.min_episodes is not None:
            overrides["min_episodes"] = args.min_episodes
        if args.min_steps is not None:
            overrides["min_steps"] = args.min_steps
        if args.check_images:
            overrides["check_images"] = True
        if args.max_skew_ms is not None:
            overrides["max_timestamp_skew_ms"] = args.max_skew_ms
        if overrides:
            import dataclasses

            gates = dataclasses.replace(gates, **overrides)
    except ValueError as e:
        return _err(str(e))
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        return _err(f"path not found: {', '.join(missing)}")
    jobs = (os.cpu_count() or 1) if args.jobs == 0 else args.jobs
    t0 = time.perf_counter()
    report = validate_paths(args.paths, spec, gates, jobs=jobs, recover=args.recover,
                            progress=_Progress("validating", sys.stderr.isatty() and args.format == "table"))
    elapsed = time.perf_counter() - t0
    if not report.episodes:
        if args.format == "json":
            print(json.dumps(report.to_dict(args.strict)))
        else:
            print(report.format_table())
        return EXIT_USAGE
    if args.format == "json":
        print(json.dumps(report.to_dict(args.strict), ensure_ascii=False))
    else:
        print(report.format_table())
        if gates.check_images and report.frames_checked:
            print(f"{report.frames_checked} frames decoded in {elapsed:.2f} s ({report.frames_checked / max(elapsed, 1e-9):.0f} frames/s)")
    return EXIT_OK if report.passed(args.strict) else EXIT_VIOLATIONS


def cmd_synth(args: argparse.Namespace) -> int:
    from rldskit.spec import SpecError, load_spec
    from rldskit.synth import write_synthetic

    try:
        spec = load_spec(args.schema)
        if args.camera_shape:
            h, w = (int(x) for x in args.camera_shape.lower().split("x"))
            for p in spec.image_paths:
                spec = spec.with_image_shape(p, (h, w, spec.step_leaves[p].shape[2]))
    except (SpecError, ValueError) as e:
        return _err(str(e))
    if args.episodes < 1 or args.steps < 1:
        return _err("--episodes and --steps must be >= 1")
    t0 = time.perf_counter()
    try:
        paths = write_synthetic(spec, args.out, args.episodes, args.steps, args.seed, compress=args.compress)
    except (FileExistsError, ValueError) as e:
        return _err(f"{e} (use an empty --out folder)")
    print(f"wrote {len(paths)} {spec.id} episodes x {args.steps} steps to {args.out} in {time.perf_counter() - t0:.1f} s")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from rldskit.spec import SpecError, builtin_spec_names, load_spec

    if args.action == "list":
        for n in builtin_spec_names():
            s = load_spec(n)
            print(f"{n:20s} {s.version:8s} {s.description.split('.')[0]}")
        return EXIT_OK
    if not args.name:
        return _err(f"schema {args.action} needs a NAME (one of {', '.join(builtin_spec_names())}) or a file")
    try:
        spec = load_spec(args.name)
    except SpecError as e:
        return _err(str(e))
    if args.action == "show":
        print(spec.to_json(), end="")
    else:
        print(json.dumps(spec.to_step_json_schema(), indent=2))
    return EXIT_OK


def cmd_recover(args: argparse.Namespace) -> int:
    from rldskit.formats.capture_dir import METADATA_FILE, EpisodeError, find_episodes, recover_episode

    found, problems = find_episodes(args.paths)
    for p in problems:
        print(f"{p.episode}: {p.message}", file=sys.stderr)
    if not found:
        return EXIT_USAGE
    code = EXIT_OK
    for p in found:
        if not p.is_dir():
            continue
        try:  # recover_episode answers "recovered" for an episode recovered by an earlier run too
            before = json.loads((p / METADATA_FILE).read_bytes()).get("status")
        except (OSError, ValueError, AttributeError):
            before = None
        try:
            r = recover_episode(p)
        except EpisodeError as e:
            print(str(e), file=sys.stderr)
            code = EXIT_VIOLATIONS
            continue
        if r["status"] != "recovered" or before == "recovered":
            print(f"{p}: already {r['status']}, left as it is")
        else:
            print(f"{p}: {r['status']}, {r['num_steps']} steps kept, {r['dropped_bytes']} bytes of a torn line dropped"
                  + (f", removed {len(r['removed'])} temp files" if r["removed"] else ""))
    return code


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rldskit", description="Typed RLDS episodes for robot learning.")
    sub = ap.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check episodes against a schema and gates (exit 0 clean, 1 violations, 2 cannot run)")
    v.add_argument("paths", nargs="+", help="episode folders, *.json/*.jsonl[.zst] episodes, or folders of them")
    v.add_argument("--schema", help="built-in schema id (pi5_donkey.v1) or a JSON file; default: the episode's own")
    v.add_argument("--gates", help="gates file (.toml or .json)")
    v.add_argument("--min-episodes", type=int)
    v.add_argument("--min-steps", type=int)
    v.add_argument("--max-skew-ms", type=float)
    v.add_argument("--check-images", action="store_true", help="decode every frame and check its size")
    v.add_argument("--recover", action="store_true", help="validate unfinished captures as if recovered")
    v.add_argument("--strict", action="store_true", help="warnings fail too")
    v.add_argument("--format", choices=["table", "json"], default="table")
    v.add_argument("--jobs", "-j", type=int, default=1, help="processes (0: one per core)")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("synth", help="write realistic synthetic episodes")
    s.add_argument("--schema", required=True)
    s.add_argument("--episodes", type=int, default=4)
    s.add_argument("--steps", type=int, default=100)
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--camera-shape", help="HxW for every camera (a camera-shape variant of the schema), e.g. 120x160")
    s.add_argument("--compress", action="store_true", help="zstd-compress closed step chunks")
    s.set_defaults(func=cmd_synth)

    sc = sub.add_parser("schema", help="list built-in schemas, show one, or export its step JSON Schema")
    sc.add_argument("action", choices=["list", "show", "export"])
    sc.add_argument("name", nargs="?")
    sc.set_defaults(func=cmd_schema)

    r = sub.add_parser("recover", help="finish episodes a killed logger left unfinished (marked truncated)")
    r.add_argument("paths", nargs="+")
    r.set_defaults(func=cmd_recover)
    return ap


def _episode_of(path: str) -> str | None:
    """The episode a committed file belongs to: the nearest folder that is an episode, or the
    file itself when it is a single-file episode. ``None`` for files that are not episodes."""
    from pathlib import Path

    from rldskit.formats.capture_dir import METADATA_FILE, STEPS_DIR

    p = Path(path)
    for parent in p.parents:
        if (parent / METADATA_FILE).is_file() or (parent / STEPS_DIR).is_dir():
            return str(parent)
    if p.name.endswith((".jsonl", ".jsonl.zst")):
        return str(p)
    if p.suffix == ".json" and p.is_file():
        try:
            with open(p, "rb") as f:
                head = f.read(1 << 16)
            obj = json.loads(p.read_bytes()) if b'"steps"' in head else None
        except (OSError, ValueError):
            return str(p)  # unreadable/corrupt .json among episodes: let validate report it
        # a single-file episode's "steps" is a list; a schema file's is an object
        return str(p) if isinstance(obj, dict) and isinstance(obj.get("steps"), list) else None
    return None


def precommit_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the pre-commit hook: map the committed files to their episodes and run
    ``rldskit validate`` on those (extra ``args:`` such as ``--schema`` pass through)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    opts, files = [], []
    it = iter(argv)
    takes_value = {"--schema", "--gates", "--min-episodes", "--min-steps", "--max-skew-ms", "--format", "--jobs", "-j"}
    for a in it:
        if a.startswith("-"):
            opts.append(a)
            if a in takes_value:
                opts.append(next(it, ""))
        else:
            files.append(a)
    episodes = sorted({e for f in files if (e := _episode_of(f)) is not None and os.path.exists(e)})
    if not episodes:
        return EXIT_OK  # nothing that is an episode was committed
    if not any(o.startswith("--min-episodes") for o in opts):
        opts += ["--min-episodes", "0"]
    return main(["validate", *opts, *episodes])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
