"""The core commands of the ``rldskit`` CLI, each a thin wrapper over a library function:

* ``validate PATH...``: check episodes against their schema and gates. Exit 0 when clean, 1
  on violations, 2 when it cannot run (missing path, unreadable schema or gates). A converted
  TFDS dataset folder is checked shard by shard and episode by episode.
* ``inspect DIR``: a TFDS dataset's name, formats, schema, splits, counts and a sample step.
* ``synth``: write realistic synthetic episodes through the capture logger.
* ``schema list|show|export NAME``: print built-in schemas or a schema's JSON Schema.
* ``convert PATH...``: episodes to a TFDS RLDS dataset (TFRecord/ArrayRecord) with Beam.
* ``recover PATH...``: finish episodes a killed logger left unfinished (marked truncated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from rldskit.cli.common import EXIT_OK, EXIT_USAGE, EXIT_VIOLATIONS, Progress, error


def cmd_validate(args: argparse.Namespace) -> int:
    from rldskit.spec import SpecError
    from rldskit.validation import Gates, resolve_spec_arg, validate_paths

    try:
        spec = resolve_spec_arg(args.schema)
    except SpecError as e:
        return error(str(e))
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
        return error(str(e))
    missing = [p for p in args.paths if not os.path.exists(p)]
    if missing:
        return error(f"path not found: {', '.join(missing)}")
    from rldskit.formats.tfds_dir import is_dataset_dir

    datasets = [p for p in args.paths if is_dataset_dir(p)]
    if datasets:
        return _validate_datasets(args, datasets, spec, gates)
    jobs = (os.cpu_count() or 1) if args.jobs == 0 else args.jobs
    t0 = time.perf_counter()
    report = validate_paths(args.paths, spec, gates, jobs=jobs, recover=args.recover,
                            progress=Progress("validating", sys.stderr.isatty() and args.format == "table"))
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


# ---------------------------------------------------------------- converted datasets (TFDS directories)


def _open_dataset_arg(path: str, args: argparse.Namespace, spec=None):
    """``open_dataset`` for a command; returns ``(dataset, None)`` or ``(None, exit code)``."""
    from rldskit.formats.tfds_dir import DatasetError, open_dataset
    from rldskit.spec import SpecError

    try:
        return open_dataset(path, spec=spec, last_step=args.last_step), None
    except (DatasetError, SpecError) as e:
        hint = "; on the command line: --last-step rlds|valid" if args.last_step is None and "last_step" in str(e) else ""
        return None, error(f"{e}{hint}")


def _validate_datasets(args: argparse.Namespace, datasets: list[str], spec, gates) -> int:
    """``validate`` when some paths are TFDS dataset folders: each is verified (shards,
    counts, decoding) and its episodes validated; the other paths are validated as captures."""
    from rldskit.validation import Report, validate_dataset, validate_paths

    report = Report()
    for path in datasets:
        ds, code = _open_dataset_arg(path, args, spec)
        if ds is None:
            return code
        report.merge(validate_dataset(ds, gates))
    others = [p for p in args.paths if p not in datasets]
    if others:
        jobs = (os.cpu_count() or 1) if args.jobs == 0 else args.jobs
        report.merge(validate_paths(others, spec, gates, jobs=jobs, recover=args.recover))
    if args.format == "json":
        print(json.dumps(report.to_dict(args.strict), ensure_ascii=False))
    else:
        print(report.format_table())
    return EXIT_OK if report.passed(args.strict) else EXIT_VIOLATIONS


def _describe_value(leaf, value):
    """A JSON-able, human-sized view of one step value: numbers (long arrays as shape, first
    values and range), text, images as format and size (never the bytes)."""

    import numpy as np

    from rldskit.spec import Image

    if isinstance(leaf, Image):
        if not value:
            return "absent"
        from rldskit import images

        try:
            info = images.probe(value)
            return f"{info.format or '?'} {info.width}x{info.height} {info.mode}, {len(value)} bytes"
        except OSError as e:  # PIL.UnidentifiedImageError is one
            return f"undecodable image of {len(value)} bytes ({e})"
    if isinstance(value, (str, bytes)):
        return value if isinstance(value, str) else value.decode(errors="replace")
    arr = np.asarray(value)
    if arr.dtype == object:
        return [str(v) for v in arr.ravel()[:8]]
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 8:  # float32: six significant digits are all it has
        arr = np.asarray([float(f"{x:.6g}") for x in arr.ravel()]).reshape(arr.shape)
    if arr.size <= 8:
        return arr.tolist()
    return {"shape": list(arr.shape), "first": arr.ravel()[:6].tolist(), "min": arr.min().item(), "max": arr.max().item()}


def _inspect_data(ds) -> tuple[dict, list]:
    """What ``inspect`` shows, as JSON-able data, and the dataset's structural issues."""
    from rldskit.spec import Image

    def feature(path, leaf):
        out = {"path": path, "kind": leaf.kind, "dtype": leaf.dtype, "shape": list(leaf.shape)}
        if getattr(leaf, "unit", None):
            out["unit"] = leaf.unit
        if isinstance(leaf, Image):
            out["encoding"] = leaf.encoding
        return out

    issues = ds.verify(decode=False)
    splits = {}
    for split, shards in ds.splits.items():
        try:
            steps = ds.num_steps(split)
        except (ValueError, OSError):  # a corrupt or missing shard: reported in issues
            steps = None
        splits[split] = {"shards": len(shards), "episodes": ds.num_episodes(split), "steps": steps,
                         "bytes": ds.num_bytes(split)}
    sample = None
    for split in ds.splits:
        try:
            ep = next(iter(ds.episodes(split)), None)
        except (ValueError, OSError):
            continue
        if ep is not None:
            sample = {"split": split, "record": 0,
                      "episode_metadata": {k: _describe_value(leaf, ep.metadata[k]) for k, leaf in ds.spec.metadata_leaves.items()},
                      "step": {k: _describe_value(leaf, ep.steps[k][0]) for k, leaf in ds.spec.step_leaves.items()}}
            break
    data = {"path": str(ds.path), "name": ds.name, "version": ds.version, "file_formats": list(ds.file_formats),
            "spec": {"source": ds.spec_source, "last_step": ds.spec.last_step},
            "features": {"steps": [feature(p, leaf) for p, leaf in ds.spec.step_leaves.items()],
                         "episode_metadata": [feature(p, leaf) for p, leaf in ds.spec.metadata_leaves.items()]},
            "splits": splits, "sample": sample, "ok": not issues, "issues": [i.to_dict() for i in issues]}
    return data, issues


def cmd_inspect(args: argparse.Namespace) -> int:
    from rldskit.validation import Report

    ds, code = _open_dataset_arg(args.path, args)
    if ds is None:
        return code
    data, issues = _inspect_data(ds)
    if args.format == "json":
        print(json.dumps(data, ensure_ascii=False))
        return EXIT_VIOLATIONS if issues else EXIT_OK
    print(f"{data['name']} {data['version']}  {data['path']}")
    print(f"  file formats: {', '.join(data['file_formats'])}   spec: {data['spec']['source']} "
          f"(last_step={data['spec']['last_step']})")
    for level, feats in data["features"].items():
        print(f"{level}:")
        width = max((len(f["path"]) for f in feats), default=0)
        for f in feats:
            shape = "x".join(map(str, f["shape"])) if f["kind"] == "image" else str(f["shape"])
            extra = " ".join(x for x in (f.get("encoding"), f"[{f['unit']}]" if "unit" in f else None) if x)
            print(f"  {f['path']:<{width}}  {f['kind']:<6} {f['dtype']:<7} {shape} {extra}".rstrip())
    print(f"{'splits:':<14} {'shards':>6} {'episodes':>9} {'steps':>10} {'MB':>9}")
    for split, s in data["splits"].items():
        steps = "?" if s["steps"] is None else s["steps"]
        print(f"  {split:<12} {s['shards']:>6} {s['episodes']:>9} {steps:>10} {s['bytes'] / 1e6:>9.1f}")
    if data["sample"] is not None:
        smp = data["sample"]
        print(f"sample: step 0 of the first {smp['split']} episode")
        width = max(len(k) for k in smp["step"])
        for k, v in smp["step"].items():
            print(f"  {k:<{width}}  {v}")
        print("  episode_metadata: " + ", ".join(f"{k}={v}" for k, v in smp["episode_metadata"].items()))
    if issues:
        print(Report(issues=issues).format_table())
    return EXIT_VIOLATIONS if issues else EXIT_OK


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
        return error(str(e))
    if args.episodes < 1 or args.steps < 1:
        return error("--episodes and --steps must be >= 1")
    t0 = time.perf_counter()
    try:
        paths = write_synthetic(spec, args.out, args.episodes, args.steps, args.seed, compress=args.compress)
    except (FileExistsError, ValueError) as e:
        return error(f"{e} (use an empty --out folder)")
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
        return error(f"schema {args.action} needs a NAME (one of {', '.join(builtin_spec_names())}) or a file")
    try:
        spec = load_spec(args.name)
    except SpecError as e:
        return error(str(e))
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
            temps = [m for m in r["removed"] if " (" not in m]  # the others say what was done and why
            print(f"{p}: {r['status']}, {r['num_steps']} steps kept, {r['dropped_bytes']} bytes of a torn line dropped"
                  + (f", removed {len(temps)} temp files" if temps else "")
                  + (f", {len(r['removed']) - len(temps)} step files set aside or deduplicated"
                     if len(r["removed"]) > len(temps) else ""))
            for m in r["removed"]:
                if any(m.startswith(c + " ") for c in r.get("corrupt", ())):  # a bad copy beside a good one
                    print(f"rldskit: warning: {p}: {m}", file=sys.stderr)
    return code


def cmd_convert(args: argparse.Namespace) -> int:
    from rldskit.pipeline import ConversionError, convert
    from rldskit.spec import SpecError, load_spec
    from rldskit.validation import Gates

    try:
        spec = load_spec(args.schema) if args.schema else None
        gates = Gates.load(args.gates) if args.gates else Gates()
    except (SpecError, ValueError) as e:
        return error(str(e))
    missing = [p for p in args.sources if not os.path.exists(p)]
    if missing:
        return error(f"path not found: {', '.join(missing)}")
    formats = ("tfrecord", "array_record") if args.format == "both" else (args.format,)
    extra = []
    for kv in args.beam_option:
        if "=" not in kv:
            return error(f"--beam-option takes KEY=VALUE, got {kv!r}")
        extra.append("--" + kv.lstrip("-"))
    print(f"converting {', '.join(args.sources)} -> {args.out}/{args.name} ({'+'.join(formats)}"
          f"{', step index' if args.step_index else ''}; runner {args.runner})", file=sys.stderr)
    try:
        res = convert(args.sources, args.out, name=args.name, version=args.version, spec=spec, formats=formats,
                      step_index=args.step_index, shard_size_mb=args.shard_size_mb, split=args.split, gates=gates,
                      runner=args.runner, num_workers=args.workers, dask_address=args.dask_address,
                      beam_options=extra, last_step=args.last_step, overwrite=args.overwrite,
                      progress=Progress("converting (shards)", sys.stderr.isatty()))
    except (ConversionError, SpecError) as e:
        if args.verbose and e.__cause__ is not None:  # a runner's failure: the worker's whole traceback
            import traceback

            traceback.print_exception(e.__cause__, file=sys.stderr)
        return error(str(e) + ("" if args.verbose or e.__cause__ is None else " (-v shows the traceback and Beam's logs)"))
    c = res.counts
    nbytes = sum(o["bytes"] for o in res.manifest["outputs"])
    print(f"{res.path}: {c['inputs']} episodes in, {c['written']} written, {c['quarantined']} quarantined, "
          f"{c['steps']} steps, {nbytes / 1e6:.1f} MB in {len(res.manifest['outputs'])} files, {res.seconds:.1f} s")
    for q in res.manifest["quarantine"][:20]:
        first = q["reasons"][0] if q["reasons"] else {"code": "?", "message": ""}
        print(f"  quarantined {q['key']}: [{first['code']}] {first['message']}")
    return EXIT_OK if c["quarantined"] == 0 else EXIT_VIOLATIONS


def register_cli(sub) -> None:
    """Add validate, inspect, synth, schema, convert and recover to the ``rldskit`` subparsers."""

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
    v.add_argument("--last-step", choices=["rlds", "valid"],
                   help="last-step convention of a foreign TFDS dataset (Open-X: valid); ours record it")
    v.set_defaults(func=cmd_validate)

    ins = sub.add_parser("inspect", help="show a TFDS dataset's schema, splits, counts and a sample step "
                                         "(exit 1 if a shard is missing or corrupt, 2 if DIR is not a dataset)")
    ins.add_argument("path", metavar="DIR", help="<data_dir>/<name>/<version>/ (or a folder holding one dataset)")
    ins.add_argument("--last-step", choices=["rlds", "valid"],
                     help="last-step convention of a foreign TFDS dataset (Open-X: valid); ours record it")
    ins.add_argument("--format", choices=["table", "json"], default="table")
    ins.set_defaults(func=cmd_inspect)

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

    cv = sub.add_parser("convert", help="convert episodes to a TFDS RLDS dataset (TFRecord/ArrayRecord) with a step index")
    cv.add_argument("sources", nargs="+", help="capture folders, single-file episodes, or TFDS RLDS dataset folders")
    cv.add_argument("--out", required=True, help="data_dir: the dataset goes to OUT/NAME/VERSION")
    cv.add_argument("--name", required=True)
    cv.add_argument("--version", help="dataset version (default: the schema's)")
    cv.add_argument("--schema", help="schema of capture inputs (default: their schema.json)")
    cv.add_argument("--format", choices=["tfrecord", "array_record", "both"], default="both")
    cv.add_argument("--step-index", action=argparse.BooleanOptionalAction, default=True,
                    help="also write the step-major ArrayRecord layout and episodes.parquet")
    cv.add_argument("--shard-size-mb", type=float, default=64.0)
    cv.add_argument("--split", default="train", help="split name for capture inputs (TFDS inputs keep theirs)")
    cv.add_argument("--gates", help="gates file: episodes failing them are quarantined")
    cv.add_argument("--runner", default="direct", help="direct (all cores), dask, inline (no Beam), or a Beam runner name")
    cv.add_argument("--workers", type=int, help="DirectRunner worker processes (default: one per core)")
    cv.add_argument("--dask-address", help="dask.distributed scheduler, e.g. tcp://HOST:8786")
    cv.add_argument("--beam-option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Beam pipeline option, repeatable (e.g. project=my-proj)")
    cv.add_argument("--last-step", choices=["rlds", "valid"], help="last-step convention of foreign TFDS inputs")
    cv.add_argument("--overwrite", action="store_true", help="replace a finished dataset at the output")
    cv.set_defaults(func=cmd_convert)

    r = sub.add_parser("recover", help="finish episodes a killed logger left unfinished (marked truncated)")
    r.add_argument("paths", nargs="+")
    r.set_defaults(func=cmd_recover)
