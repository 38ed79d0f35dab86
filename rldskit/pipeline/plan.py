"""Conversion planning and finalisation: what runs on the driver, before and after Beam.

Three concepts:

* **``InputItem``**: one input episode with a stable key (a capture folder or single-file
  episode, or one record of an existing TFDS RLDS dataset), its output split and its size.
  :func:`plan_conversion` lists every input in a deterministic order. The key is the input's
  path *relative to the source given on the command line*, starting with that source's own
  name (``pi5_donkey/ep_0000_00007`` for ``convert /data/episodes/pi5_donkey``): it is what the
  manifest, ``episodes.parquet``, quarantine reasons, statistics, the report and the Hub card
  show, so no local absolute path leaves the machine; the absolute ``path`` is used only to
  read the input. Identity comes with a content digest (:func:`input_digest`).
* **``ShardPlan``**: contiguous runs of inputs of roughly ``shard_size_mb`` each, per split.
  The plan depends only on the inputs and the options, never on the runner or the number of
  workers, so every runner writes byte-identical shards.
* **Finalisation** (:func:`finalize`): after every shard task has run, check that every input
  is accounted for (:func:`check_accounting`: written or quarantined, exactly once; otherwise
  :class:`ConversionError` and no finished-looking output), rename the shards from the work
  folder to their TFDS names, write ``episodes.parquet``, ``manifest.json``
  (:func:`build_manifest`, :func:`write_manifest`) and, last, the TFDS metadata
  (``dataset_info.json`` is the marker of a finished dataset). The TFDS builder in
  ``builders/rlds_capture`` accounts for its episodes and writes its manifest with the same
  functions, so both record the same inputs, outputs and quarantine records.

The per-shard record both read (``<work>/<shard>.json`` here) is ``{"split", "shard",
"episodes": [{"index", "key", "sha256", "episode_id", "length", "terminal", ...}],
"quarantined": [{"index", "key", "sha256", "reasons": [{"code", "step", "field", "message"}]}]}``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from rldskit._io import atomic_write_bytes
from rldskit.formats.tfds_dir import MANIFEST_FILE, DatasetLayout, finished_versions, is_finished
from rldskit.spec import EpisodeSpec

__all__ = ["InputItem", "ShardPlan", "ConvertOptions", "ConversionError", "plan_conversion", "finalize", "WORK_DIR",
           "input_digest", "resolve_source", "scrub_paths", "check_accounting", "build_manifest", "manifest_bytes",
           "write_manifest", "MANIFEST_FILE", "MANIFEST_FORMAT"]

WORK_DIR = ".rldskit_work"
MANIFEST_FORMAT = "rldskit.dataset/1"
STEPS_DIR = "steps"
FORMATS = ("tfrecord", "array_record")


class ConversionError(RuntimeError):
    """A conversion could not account for every input, or could not run at all."""


@dataclasses.dataclass(frozen=True)
class InputItem:
    """One input episode. ``kind`` is ``capture`` (``path`` is a folder or file) or ``tfds``
    (``path`` is a shard file of an existing dataset, ``record`` the record index in it).
    ``rel``: the POSIX path recorded for it, relative to its source's parent (so it starts with
    the source's name; see the module docstring); ``root``: the index of that source in the
    manifest's ``roots``. ``path`` (absolute) is for reading only and is never written out."""

    index: int
    kind: str
    path: str
    split: str
    size: int
    record: int | None = None
    source_format: str | None = None
    rel: str = ""
    root: int = 0

    @property
    def key(self) -> str:
        """What outputs record: ``rel`` (``#record`` for a record of a TFDS shard); the plain path
        for items built without one (e.g. by the TFDS builder)."""
        name = self.rel or self.path
        return name if self.record is None else f"{name}#{self.record}"

    @property
    def root_path(self) -> str | None:
        """The absolute path of the source this item was found under (``None`` without ``rel``)."""
        if not self.rel:
            return None
        depth = len(PurePosixPath(self.rel).parts) - 1
        p = Path(self.path)
        for _ in range(depth):
            p = p.parent
        return str(p)


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    items: tuple[InputItem, ...]

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:05d}"


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """Everything a shard task needs, as plain picklable data."""

    out_dir: str  # the dataset's version folder: <data_dir>/<name>/<version>
    name: str
    spec_json: str
    formats: tuple[str, ...] = ("tfrecord",)
    step_index: bool = True
    gates: dict[str, Any] = dataclasses.field(default_factory=dict)
    array_record_compression: str = "uncompressed"
    step_compression: str = "zstd"
    max_step_records: int = 10_000

    @property
    def work_dir(self) -> Path:
        return Path(self.out_dir) / WORK_DIR

    def spec(self) -> EpisodeSpec:
        return EpisodeSpec.from_dict(json.loads(self.spec_json), source="conversion spec")


def _tree_size(p: Path) -> int:
    """Bytes of an input: the file, or the files of a folder (hidden ones, such as an interrupted
    atomic write's temp file, are not part of the episode and do not count)."""
    if p.is_file():
        return p.stat().st_size
    total = 0
    for root, dirs, files in os.walk(p):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.startswith("."):
                continue
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


def _is_tfds_dir(p: Path) -> bool:
    return is_finished(p) or bool(finished_versions(p))


def root_names(sources: Sequence[str | Path]) -> list[str]:
    """The name each source is recorded under: its own folder or file name (``.`` and ``..``
    resolved first), made unique with ``~2``, ``~3``... when two sources share a name."""
    names: list[str] = []
    for src in sources:
        p = Path(src)
        base = p.name if p.name not in ("", ".", "..") else Path(os.path.abspath(p)).resolve().name
        base = base or "root"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}~{n}"
        names.append(name)
    return names


def _rel_under(path: Path, root: Path, name: str) -> str:
    """``path`` relative to ``root`` as a POSIX path prefixed by ``name`` (``name`` alone when
    ``path`` is ``root``); falls back to resolved paths, then to the file name."""
    for a, b in ((path, root), (path.resolve(), root.resolve())):
        try:
            rel = a.relative_to(b).as_posix()
        except ValueError:
            continue
        return name if rel in ("", ".") else f"{name}/{rel}"
    return f"{name}/{path.name}"


def plan_conversion(sources: Sequence[str | Path], *, split: str = "train", shard_size_mb: float = 64.0,
                    last_step: str | None = None) -> tuple[list[InputItem], list[ShardPlan], EpisodeSpec | None, list[str]]:
    """List the inputs and cut them into shards. Returns ``(items, shards, tfds_spec,
    problems)``: ``tfds_spec`` is the spec of TFDS inputs (``None`` when all are captures);
    ``problems`` are sources that could not be listed (a missing path, an empty folder).
    Each item's ``rel`` is its path under its source, prefixed by :func:`root_names`."""
    from rldskit.formats.capture_dir import find_episodes

    items: list[InputItem] = []
    problems: list[str] = []
    tfds_spec: EpisodeSpec | None = None
    for r, (src, name) in enumerate(zip(sources, root_names(sources))):
        p = Path(src)
        if p.is_dir() and _is_tfds_dir(p):
            from rldskit.formats.tfds_dir import open_dataset

            ds = open_dataset(p, last_step=last_step)
            if tfds_spec is not None and tfds_spec != ds.spec:
                raise ConversionError(f"{name}: its schema differs from the other TFDS inputs'; convert them separately")
            tfds_spec = ds.spec
            for split_name, shards in ds.splits.items():
                for shard in shards:
                    fmt = "array_record" if ".array_record" in shard.name else "tfrecord"
                    for rec, size in enumerate(_record_sizes(shard, fmt)):
                        items.append(InputItem(len(items), "tfds", str(shard), split_name, size, rec, fmt,
                                               rel=_rel_under(Path(shard), p, name), root=r))
            continue
        found, issues = find_episodes([p])
        problems.extend(i.message for i in issues)
        for ep in found:
            items.append(InputItem(len(items), "capture", str(ep), split, _tree_size(ep),
                                   rel=_rel_under(Path(ep), p, name), root=r))
    target = max(1, int(shard_size_mb * 1024 * 1024))
    shards: list[ShardPlan] = []
    for split_name in dict.fromkeys(i.split for i in items):
        group = [i for i in items if i.split == split_name]
        total = sum(i.size for i in group)
        n = max(1, min(len(group), math.ceil(total / target)))
        bounds = [total * (k + 1) / n for k in range(n)]
        k, acc, cur = 0, 0, []
        for it in group:
            cur.append(it)
            acc += it.size
            if k < n - 1 and acc >= bounds[k]:
                shards.append(ShardPlan(split_name, k, tuple(cur)))
                k, cur = k + 1, []
        if cur:
            shards.append(ShardPlan(split_name, k, tuple(cur)))
    return items, shards, tfds_spec, problems


def _record_sizes(shard: Path, fmt: str) -> list[int]:
    if fmt == "tfrecord":
        from rldskit.formats.tfrecord import index_tfrecord

        return [length for _off, length in index_tfrecord(shard)]
    from rldskit.formats.arrayrecord import ArrayRecordShardReader

    with ArrayRecordShardReader(shard) as r:
        n = len(r)
    size = shard.stat().st_size
    return [size // max(n, 1)] * n


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Make ``out_dir`` ready: refuse to replace a finished dataset unless ``overwrite``;
    clear an unfinished one (a killed run) so the rerun starts clean."""
    if out_dir.exists():
        finished = DatasetLayout(out_dir).info_path.exists()
        if finished and not overwrite:
            raise ConversionError(f"{out_dir} already holds a finished dataset; pass --overwrite to replace it")
        shutil.rmtree(out_dir)
    (out_dir / WORK_DIR).mkdir(parents=True)


def _read_infos(opts: ConvertOptions, shards: Sequence[ShardPlan]) -> list[dict[str, Any]]:
    infos = []
    for sh in shards:
        f = opts.work_dir / f"{sh.name}.json"
        if not f.is_file():
            raise ConversionError(f"shard {sh.name} produced no result ({f} is absent): a worker failed or was lost")
        infos.append(json.loads(f.read_bytes()))
    return infos


def finalize(opts: ConvertOptions, items: Sequence[InputItem], shards: Sequence[ShardPlan],
             *, description: str = "", extra_manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check counts, move shards to their final names, write the index, manifest and TFDS
    metadata. Returns the manifest. Raises :class:`ConversionError` (leaving no
    ``dataset_info.json``) when an input is missing or duplicated."""
    from rldskit.formats.tfds_dir import shard_name, write_tfds_metadata

    out = Path(opts.out_dir)
    infos = _read_infos(opts, shards)
    digests = check_accounting(items, infos)
    written = sum(len(i["episodes"]) for i in infos)
    outputs: list[dict[str, Any]] = []
    split_lengths: dict[str, list[int]] = {}
    split_bytes: dict[str, int] = {}
    index_rows: list[dict[str, Any]] = []
    step_files_rel: dict[str, str] = {}
    by_split: dict[str, list[dict[str, Any]]] = {}
    for info in infos:
        by_split.setdefault(info["split"], []).append(info)
    if opts.step_index:
        (out / STEPS_DIR).mkdir(exist_ok=True)
    if written == 0:
        raise ConversionError(f"all {len(items)} inputs were quarantined; first reasons: "
                              + "; ".join(f"{q['key']}: {q['reasons'][0]['code'] if q['reasons'] else '?'}"
                                          for i in infos for q in i["quarantined"][:1])[:500])
    for split, group in by_split.items():
        nonempty = [i for i in group if i["episodes"]]
        if not nonempty:
            continue  # every episode of this split was quarantined: TFDS cannot read an empty split
        split_lengths[split] = [len(i["episodes"]) for i in nonempty]
        split_bytes[split] = 0
        global_step = 0
        for k, info in enumerate(nonempty):
            for fmt in opts.formats:
                f = info["files"][fmt]
                final = shard_name(opts.name, split, fmt, k, len(nonempty))
                os.replace(opts.work_dir / f["file"], out / final)
                outputs.append({"file": final, "format": fmt, "layout": "episodes", "split": split,
                                "records": f["records"], "bytes": f["bytes"], "sha256": f["sha256"]})
                if fmt == opts.formats[0]:
                    split_bytes[split] += f["bytes"]
            for j, f in enumerate(info["files"].get("steps", [])):
                final = f"{STEPS_DIR}/{opts.name}-{split}.steps.array_record-{k:05d}-{j:03d}"
                os.replace(opts.work_dir / f["file"], out / final)
                step_files_rel[f["file"]] = final
                outputs.append({"file": final, "format": "array_record", "layout": "steps", "split": split,
                                "records": f["records"], "bytes": f["bytes"], "sha256": f["sha256"]})
            for r, e in enumerate(info["episodes"]):
                row = {"episode_id": e["episode_id"], "split": split, "episode_index": e["index"],
                       "shard": shard_name(opts.name, split, opts.formats[0], k, len(nonempty)), "shard_record": r,
                       "length": e["length"], "first_step": global_step, "terminal": e["terminal"],
                       "source": e["key"]}
                if opts.step_index:
                    row["step_file"] = step_files_rel[e["step_file"]]
                    row["step_offset"] = e["step_offset"]
                index_rows.append(row)
                global_step += e["length"]
    if opts.step_index:
        _write_episode_index(out, opts, infos, index_rows)
    manifest = build_manifest(name=opts.name, spec_name=json.loads(opts.spec_json)["name"], items=items, infos=infos,
                              digests=digests, outputs=outputs, steps=sum(r["length"] for r in index_rows),
                              extra=extra_manifest)
    write_manifest(out, manifest)
    write_tfds_metadata(out, opts.spec(), name=opts.name, file_format=opts.formats[0], splits=split_lengths,
                        split_bytes=split_bytes, alternative_file_formats=tuple(opts.formats[1:]),
                        description=description)
    shutil.rmtree(opts.work_dir, ignore_errors=True)
    return manifest


def check_accounting(items: Sequence[InputItem], infos: Sequence[dict[str, Any]]) -> dict[int, str | None]:
    """Check that every input of ``items`` is in exactly one shard record of ``infos`` (see the
    module docstring), written or quarantined; returns each input's digest by index. Raises
    :class:`ConversionError` for an input written twice, both written and quarantined, or missing."""
    seen: dict[int, str] = {}
    digests: dict[int, str | None] = {}
    for info in infos:
        for e in info["episodes"]:
            if e["index"] in seen:
                raise ConversionError(f"input {e['key']} was written twice ({seen[e['index']]} and {info['shard']})")
            seen[e["index"]] = info["shard"]
            digests[e["index"]] = e.get("sha256")
        for q in info["quarantined"]:
            if q["index"] in seen:
                raise ConversionError(f"input {q['key']} was both written and quarantined")
            seen[q["index"]] = info["shard"]
            digests[q["index"]] = q.get("sha256")
    missing = [it for it in items if it.index not in seen]
    written = sum(len(i["episodes"]) for i in infos)
    quarantined = sum(len(i["quarantined"]) for i in infos)
    if missing or written + quarantined != len(items):
        raise ConversionError(f"{len(items)} inputs but {written} written + {quarantined} quarantined; "
                              f"unaccounted: {[it.key for it in missing[:5]]}")
    return digests


def build_manifest(*, name: str, spec_name: str, items: Sequence[InputItem], infos: Sequence[dict[str, Any]],
                   digests: dict[int, str | None], outputs: Sequence[dict[str, Any]], steps: int,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dataset's ``manifest.json`` document (``"rldskit.dataset/1"``): counts, the sources
    (``roots``), every input with its digest and status, every output file (``{"file", "format",
    "layout", "split", "records", "bytes", "sha256"}``) and every quarantine record (a shard record's
    ``quarantined`` entry plus the ``shard`` that processed it), then ``extra``. ``infos`` and
    ``digests`` as :func:`check_accounting` takes and returns them; ``steps``: the steps written."""
    quarantine = [dict(q, shard=i["shard"]) for i in infos for q in i["quarantined"]]
    quarantined_ids = {q["index"] for q in quarantine}
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "spec": spec_name,
        "counts": {"inputs": len(items), "written": sum(len(i["episodes"]) for i in infos),
                   "quarantined": len(quarantine), "steps": steps},
        "roots": _roots(items, digests),
        "inputs": [{"index": it.index, "kind": it.kind, "source": it.key, "root": it.root, "split": it.split,
                    "bytes": it.size, "sha256": digests.get(it.index),
                    "status": "quarantined" if it.index in quarantined_ids else "written"}
                   for it in items],
        "outputs": list(outputs),
        "quarantine": quarantine,
        **(extra or {}),
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The bytes of ``manifest.json``: JSON with a one-space indent, keys in document order, a final newline."""
    return (json.dumps(manifest, indent=1, sort_keys=False) + "\n").encode()


def write_manifest(out_dir: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` as ``<out_dir>/manifest.json`` atomically; returns the file."""
    path = DatasetLayout(out_dir).manifest_path
    atomic_write_bytes(path, manifest_bytes(manifest))
    return path


def _roots(items: Sequence[InputItem], digests: dict[int, str | None]) -> list[dict[str, Any]]:
    """The manifest's ``roots``: one entry per source given on the command line that had inputs,
    by its recorded name (never its local path), with its input count and a digest of its input
    set: sha256 over ``<source>\\0<input sha256>\\n`` of its inputs in plan order."""
    import hashlib

    out: dict[int, dict[str, Any]] = {}
    hashes: dict[int, Any] = {}
    for it in items:
        if it.root not in out:
            out[it.root] = {"root": it.root, "name": (it.rel or it.path).split("/", 1)[0], "kind": it.kind, "inputs": 0}
            hashes[it.root] = hashlib.sha256()
        out[it.root]["inputs"] += 1
        hashes[it.root].update(f"{it.key}\0{digests.get(it.index) or ''}\n".encode())
    return [dict(v, sha256=hashes[k].hexdigest()) for k, v in sorted(out.items())]


def resolve_source(source: str, sources: Sequence[str | Path]) -> Path:
    """The local path of a manifest input ``source`` (``"pi5_donkey/ep_0000_00007"``, or with a
    ``#record`` suffix for a TFDS record) given the ``sources`` the conversion was run with:
    the inverse of the recording (see the module docstring). Raises ``KeyError`` when no source
    has the recorded name."""
    name, _, rest = source.partition("/")
    rest = rest.split("#", 1)[0] if "#" in rest else rest
    if not rest and "#" in name:
        name = name.split("#", 1)[0]
    for src, recorded in zip(sources, root_names(sources)):
        if recorded == name:
            return Path(src) / rest if rest else Path(src)
    raise KeyError(f"{source}: no source named {name!r} among {root_names(sources)}")


def _write_episode_index(out: Path, opts: ConvertOptions, infos: Sequence[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """``episodes.parquet``: one row per written episode (id, split, first global step, length,
    shard and step file) plus the low-dimensional per-step columns each shard task saved."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    frags = [pq.read_table(opts.work_dir / i["lowdim"]) for i in infos if i.get("lowdim") and i["episodes"]]
    if frags:
        low = pa.concat_tables(frags)
        if low.num_rows != table.num_rows:
            raise ConversionError(f"episode index has {table.num_rows} rows but the low-dim columns {low.num_rows}")
        for name in low.column_names:
            table = table.append_column(name, low.column(name))
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd")
    atomic_write_bytes(DatasetLayout(out).index_path, buf.getvalue().to_pybytes())
