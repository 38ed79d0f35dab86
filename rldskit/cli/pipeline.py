"""``rldskit pipeline``: the whole flow, staged: ``validate -> convert -> stats -> train -> export ->
bundle``.

    rldskit pipeline --episodes episodes/ --out data/ --train jax --export bundle/

* **Stages are opt-in.** The data stages (validate, convert, stats) run by default. ``--train
  jax|torch`` adds training (and the policy export, which training writes). ``--export DIR`` adds
  the edge bundle into DIR (signed when ``--key`` is given). ``--stages a,b,...`` picks them
  explicitly. A stage that is off prints the command that would run it.
* **Re-runnable.** Each stage records a fingerprint of its inputs in
  ``<out>/pipeline_state.json``, with the paths it wrote relative to ``<out>`` (and the converted
  dataset records its inputs relative to ``--episodes``): no local absolute path is written, and
  a moved working folder stays valid. A stage whose inputs are unchanged and whose outputs still
  exist is skipped ("up to date"); ``--force`` reruns everything. Training resumes from its newest
  checkpoint, so a rerun after an interruption continues instead of starting over.
* **Gated.** The first failing stage stops the pipeline. Failures are: validation errors, a
  conversion that quarantines episodes (unless ``--allow-quarantine``), a training run that does
  not finish, or a bundle that does not verify. The reason is printed. Exit codes: 0 done, 1
  stopped at a gate, 2 bad usage.

Heavy modules (Beam, JAX, torch) are imported only by the stages that need them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rldskit._io import atomic_write_bytes
from rldskit.formats.tfds_dir import DatasetLayout, finished_versions

__all__ = ["STAGES", "run_pipeline", "register_cli"]

STAGES = ("validate", "convert", "stats", "train", "export", "bundle")
STATE_FILE = "pipeline_state.json"


class GateFailed(RuntimeError):
    """A stage's gate refused to let the pipeline go on; the message is the reason."""


def _fingerprint_tree(paths: list[Path]) -> str:
    """sha256 over (relative path, size, mtime_ns) of every file under ``paths``."""
    h = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            st = f.stat()
            h.update(f"{f.relative_to(root.parent)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _rel_to(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` (POSIX) when it lies inside it, else its name only."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(base)).as_posix()
    except ValueError:
        return Path(path).name


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class _State:
    def __init__(self, out: Path):
        self.path = out / STATE_FILE
        try:
            self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except ValueError:
            self.data = {}

    def done(self, stage: str, fingerprint: str, outputs: list[Path]) -> bool:
        rec = self.data.get(stage)
        return bool(rec and rec.get("fingerprint") == fingerprint and all(Path(p).exists() for p in outputs))

    def record(self, stage: str, fingerprint: str, info: dict[str, Any]) -> None:
        """Save ``stage``'s fingerprint and ``info``; paths in ``info`` are stored relative to the
        working folder (no local absolute path in the state, which stays valid if moved)."""
        info = {k: _rel_to(v, self.path.parent) if isinstance(v, Path) else v for k, v in info.items()}
        self.data[stage] = {"fingerprint": fingerprint, "finished": time.time(), **info}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, (json.dumps(self.data, indent=2, sort_keys=True, default=str) + "\n").encode())


def run_pipeline(episodes: list[Path], out: Path, *, name: str = "dataset", schema: str | None = None,
                 stages: tuple[str, ...] = ("validate", "convert", "stats"), train: str | None = None,
                 preset: str = "dev", max_steps: int | None = None, export_dir: Path | None = None,
                 version: str = "0.1.0", key: Path | None = None, runner: str = "direct", force: bool = False,
                 allow_quarantine: bool = False, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the chosen ``stages`` in order (see the module docstring). Returns what each stage did;
    raises :class:`GateFailed` at the first failing gate."""
    out.mkdir(parents=True, exist_ok=True)
    state = _State(out)
    spec = None
    if schema:
        from rldskit.spec import load_spec

        spec = load_spec(schema)
    dataset_root = out / "data"
    result: dict[str, Any] = {"stages": {}}
    src_fp = _fingerprint_tree(episodes)
    dataset: Path | None = _existing_dataset(dataset_root, name)
    export: Path | None = None
    train_cfg = None

    def off(stage: str, command: str) -> None:
        echo(f"[{stage}] off; would run: {command}")
        result["stages"][stage] = "off"

    for stage in STAGES:
        if stage not in stages:
            cmd = {"validate": f"rldskit validate {' '.join(map(str, episodes))} --check-images",
                   "convert": f"rldskit convert {' '.join(map(str, episodes))} --out {dataset_root} --name {name}",
                   "stats": f"rldskit stats {dataset or dataset_root / name}",
                   "train": f"python -m trainers --data {dataset or dataset_root / name} --preset {preset} "
                            f"--out {out / 'runs' / 'policy'}",
                   "export": f"python -m trainers.jax_bc --export --out {out / 'runs' / 'policy'}",
                   "bundle": f"rldskit-edge bundle build {out / 'runs' / 'policy' / 'export'} --out BUNDLE "
                             f"--version {version} --compat SCHEMA"}[stage]
            off(stage, cmd)
            continue
        t0 = time.perf_counter()
        if stage == "validate":
            fp = _fingerprint(["validate", src_fp, schema])
            if not force and state.done(stage, fp, []):
                echo("[validate] up to date")
                result["stages"][stage] = "up to date"
                continue
            from rldskit.validation import Gates, validate_paths

            rep = validate_paths(episodes, spec, gates=Gates(check_images=True), jobs=min(2, os.cpu_count() or 1))
            line = rep.format_table().splitlines()[-1]
            echo(f"[validate] {line}")
            if not rep.ok:
                worst = [f"{i.code} {i.episode}" + (f" step {i.step}" if i.step is not None else "") + f": {i.message}"
                         for i in rep.errors[:3]]
                raise GateFailed(f"validation failed: {line}; " + " | ".join(worst))
            state.record(stage, fp, {"summary": line})
        elif stage == "convert":
            fp = _fingerprint(["convert", src_fp, schema, name, runner])
            if not force and dataset is not None and state.done(stage, fp, [DatasetLayout(dataset).info_path]):
                echo(f"[convert] up to date: {dataset}")
                result["stages"][stage] = "up to date"
                continue
            from rldskit.pipeline import ConversionError, convert

            try:
                res = convert(episodes, dataset_root, name=name, spec=spec, runner=runner, overwrite=True)
            except ConversionError as e:
                raise GateFailed(f"conversion failed: {e}") from None
            dataset = res.path
            c = res.counts
            echo(f"[convert] {dataset}: {c['written']} written, {c['quarantined']} quarantined, {c['steps']} steps")
            if c["quarantined"] and not allow_quarantine:
                reasons = [f"{q['key']}: {q['reasons'][0]['code'] if q['reasons'] else '?'}"
                           for q in res.manifest["quarantine"][:3]]
                raise GateFailed(f"{c['quarantined']} episode(s) quarantined ({'; '.join(reasons)}); fix them or pass "
                                 "--allow-quarantine")
            state.record(stage, fp, {"dataset": dataset, "counts": c})
        elif stage == "stats":
            dataset = _need_dataset(dataset, dataset_root, name)
            layout = DatasetLayout(dataset)
            fp = _fingerprint(["stats", _fingerprint_tree([layout.index_path])])
            if not force and state.done(stage, fp, [layout.stats_path]):
                echo(f"[stats] up to date: {layout.stats_path}")
                result["stages"][stage] = "up to date"
                continue
            from rldskit.stats import write_stats

            # describes the whole train split (held-out episodes included); the trainers never normalise
            # with it: they compute their statistics from the training selection (trainers.common.train_stats)
            path = write_stats(dataset, split="train")
            echo(f"[stats] {path}")
            state.record(stage, fp, {"stats": Path(path)})
        elif stage == "train":
            dataset = _need_dataset(dataset, dataset_root, name)
            if train not in ("jax", "torch"):
                raise GateFailed("the train stage needs --train jax or --train torch")
            from trainers import common

            run = out / "runs" / "policy"
            overrides: dict[str, Any] = {"data": str(dataset), "out": str(run)}
            if max_steps is not None:
                overrides["max_steps"] = max_steps
            train_cfg = common.load_config(preset=preset, overrides=overrides)
            fp = _fingerprint(["train", train, common.config_to_dict(train_cfg),
                               _fingerprint_tree([DatasetLayout(dataset).index_path])])
            if not force and state.done(stage, fp, [run / "export" / common.EXPORT_POLICY]):
                echo(f"[train] up to date: {run / 'export'}")
                export = run / "export"
                result["stages"][stage] = "up to date"
                continue
            if train == "jax":
                from trainers import jax_bc

                summary = jax_bc.train(train_cfg, resume=True)
                finished = summary.get("finished")
            else:
                from trainers import torch_lora

                summary = torch_lora.train(train_cfg, None, resume=True, full=True)
                finished = summary.get("status") == "finished"
            if not finished or not summary.get("export"):
                raise GateFailed(f"training stopped before max_steps ({summary.get('stopped') or summary.get('reason')}); "
                                 "rerun the pipeline to resume")
            export = Path(summary["export"])
            echo(f"[train] {train}: step {summary.get('step')}, export {export}")
            state.record(stage, fp, {"export": export, "framework": train})
        elif stage == "export":
            run = out / "runs" / "policy"
            export = export or (run / "export" if (run / "export").is_dir() else None)
            if export is None:
                raise GateFailed(f"no trained policy to export in {run}: run the train stage (--train jax|torch)")
            from trainers.common import read_export

            try:
                read_export(export)
            except ValueError as e:
                raise GateFailed(f"the export does not load: {e}") from None
            from edge_runtime.policy import Policy, PolicyError

            try:
                Policy.load(export)
            except PolicyError as e:
                raise GateFailed(f"the edge runtime cannot load the export: {e}") from None
            echo(f"[export] {export} loads in the edge runtime")
            result["export"] = str(export)
        elif stage == "bundle":
            if export is None or export_dir is None:
                raise GateFailed("the bundle stage needs the export stage and --export DIR")
            from edge_runtime.bundle import BundleError, build_bundle, pack_zip, sign_bundle, verify_bundle

            policy = json.loads((export / "policy.json").read_text())
            compat = [policy.get("spec_id") or (spec.id if spec else name)]
            target = Path(export_dir) / f"bundle-{version}"
            fp = _fingerprint(["bundle", _fingerprint_tree([export]), version, str(key), compat])
            if not force and state.done(stage, fp, [target.with_name(target.name + ".zip")]):
                echo(f"[bundle] up to date: {target}.zip")
                result["stages"][stage] = "up to date"
                continue
            try:
                bundle = build_bundle(export, target, version=version, compat=compat)
                if key is not None:
                    sign_bundle(bundle, key)
                z = pack_zip(bundle, bundle.with_name(bundle.name + ".zip"))
                trusted = Path(str(key)[:-4] + ".pub") if key is not None and str(key).endswith(".key") else None
                verify_bundle(z, trusted_keys=trusted, allow_unsigned=key is None, compat=compat[0])
            except BundleError as e:
                raise GateFailed(f"bundle refused: {e}") from None
            echo(f"[bundle] {z} ({'signed' if key else 'UNSIGNED: pass --key to sign'})")
            state.record(stage, fp, {"bundle": Path(z)})
            result["bundle"] = str(z)
        result["stages"][stage] = f"done in {time.perf_counter() - t0:.1f} s"
    result["dataset"] = str(dataset) if dataset else None
    return result


def _existing_dataset(root: Path, name: str) -> Path | None:
    base = root / name
    if not base.is_dir():
        return None
    versions = finished_versions(base)
    return versions[-1] if versions else None


def _need_dataset(dataset: Path | None, root: Path, name: str) -> Path:
    dataset = dataset or _existing_dataset(root, name)
    if dataset is None:
        raise GateFailed(f"no converted dataset under {root / name}: run the convert stage")
    return dataset


def cmd_pipeline(args: argparse.Namespace) -> int:
    episodes = [Path(p) for p in args.episodes]
    missing = [str(p) for p in episodes if not p.exists()]
    if missing:
        print(f"rldskit pipeline: episodes not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.stages:
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        bad = [s for s in stages if s not in STAGES]
        if bad:
            print(f"rldskit pipeline: unknown stage(s) {bad}; stages are {', '.join(STAGES)}", file=sys.stderr)
            return 2
    else:
        stages = ("validate", "convert", "stats") + (("train", "export") if args.train else ()) + \
                 (("bundle",) if args.export else ())
        if args.export and not args.train:
            stages = stages + ("export",)
    from rldskit._log import quiet_native_logs

    try:
        with quiet_native_logs():  # training imports JAX or torch (and TensorFlow's C++ logs) in this process
            res = run_pipeline(episodes, Path(args.out), name=args.name, schema=args.schema, stages=stages,
                               train=args.train, preset=args.preset, max_steps=args.max_steps,
                               export_dir=Path(args.export) if args.export else None, version=args.version,
                               key=Path(args.key) if args.key else None, runner=args.runner, force=args.force,
                               allow_quarantine=args.allow_quarantine)
    except GateFailed as e:
        print(f"pipeline stopped: {e}", file=sys.stderr)
        return 1
    print("pipeline: " + ", ".join(f"{k} {v}" for k, v in res["stages"].items()))
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("pipeline", help="validate -> convert -> stats -> train -> export -> bundle, staged and re-runnable")
    p.add_argument("--episodes", nargs="+", required=True, help="capture folders (or a folder of them)")
    p.add_argument("--out", required=True, help="working folder: data/, runs/, pipeline_state.json")
    p.add_argument("--name", default="dataset", help="dataset name (default: dataset)")
    p.add_argument("--schema", help="schema of the episodes (default: their own schema.json)")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: data stages, plus "
                                    "train/export with --train and bundle with --export)")
    p.add_argument("--train", choices=["jax", "torch"], help="train a policy with this framework")
    p.add_argument("--preset", default="dev", help="trainer preset: dev, pi5, tpu")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--export", help="write the edge bundle (and its zip) into this folder")
    p.add_argument("--version", default="0.1.0", help="bundle version")
    p.add_argument("--key", help="ed25519 signing key for the bundle (rldskit-edge keygen)")
    p.add_argument("--runner", default="direct", help="conversion runner: direct (all cores), inline, dask")
    p.add_argument("--force", action="store_true", help="rerun stages even when up to date")
    p.add_argument("--allow-quarantine", action="store_true", help="go on when conversion quarantines episodes")
    p.set_defaults(func=cmd_pipeline)
