"""TFDS builder ``rlds_capture``: a capture folder (``--manual_dir``) -> an RLDS TFDS dataset.

Thin on purpose: listing (:func:`rldskit.formats.capture_dir.find_episodes`), reading and
validating one episode (:func:`rldskit.pipeline.shard.load_checked`: ``scan_episode`` +
``validate``, the same check ``rldskit convert`` applies) and the TFDS example layout
(:func:`rldskit.formats.tfexample.to_tfds_example`, :meth:`rldskit.spec.EpisodeSpec.to_tfds_features`)
all live in rldskit. This file only wires them into TFDS's ``_info`` / ``_split_generators`` /
``_generate_examples``.

Three things a reader should know (README.md beside this file has the commands):

* **Schema.** The first of: the builder config's ``schema`` (a ``--config`` JSON such as
  ``'{"name": "donkey", "schema": "pi5_donkey.v1"}'``), the environment variable
  ``RLDSKIT_SCHEMA`` (a built-in id or a JSON file), or ``<manual_dir>/schema.json`` (what
  :class:`rldskit.EpisodeLogger` writes). The dataset version is the schema's version. TFDS
  creates a builder (and calls ``_info``) before it hands over ``--manual_dir``; when the schema
  comes from the capture folder, the builder starts unresolved and rebuilds itself, by TFDS's
  own pickling path (``__setstate__`` -> ``__init__``), the moment ``download_and_prepare``
  receives ``manual_dir``. A builder made with ``RldsCapture(manual_dir=...)`` knows it at once.
* **Quarantine and manifest.** An episode that cannot be read, fails validation (``Gates()`` by
  default) or shares its ``episode_id`` with an earlier one is not written and not silently
  dropped: it is logged with its reasons and recorded. The records, the accounting and the
  manifest are the pipeline's (:func:`rldskit.pipeline.plan.check_accounting`,
  :func:`~rldskit.pipeline.plan.build_manifest`): every input episode is written or quarantined
  exactly once, and is checked against TFDS's split counts and the records actually in the shard
  files, or the build fails (leaving no finished-looking folder); ``manifest.json`` beside
  ``dataset_info.json`` has the shape ``rldskit convert`` writes (inputs named relative to the
  capture folder with a content sha256, every shard file with its sha256, every quarantine record
  with its reasons). ``quarantine.json`` beside it is the build's summary (schema, gates, runner,
  counts) with the same quarantine records plus ``path``, ``episode_id`` and ``split``.
* **Beam.** With ``--beam_pipeline_options`` (or a ``beam_runner``) ``_generate_examples``
  returns a ``beam.PTransform`` (the written episodes' and the quarantine records travel as tagged
  outputs into per-split part files); without, a Python generator. The functions that run on workers
  are module-level and take the schema as JSON text, so workers never rebuild the builder; this
  module is registered with Beam's cloudpickle to be shipped by value (workers only need
  rldskit and TFDS installed, not this folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

log = logging.getLogger("rlds_capture")

SCHEMA_ENV = "RLDSKIT_SCHEMA"
QUARANTINE_FILE = "quarantine.json"
QUARANTINE_FORMAT = "rldskit.quarantine/1"
_PART_SUFFIX = ".quarantine-part.json"
_WRITTEN_PART_SUFFIX = ".written-part.json"


# =========================================================================== config


@dataclasses.dataclass(eq=False)
class RldsCaptureConfig(tfds.core.BuilderConfig):
    """Options of one build. ``schema``: built-in id (``pi5_donkey.v1``) or JSON path; empty
    means ``$RLDSKIT_SCHEMA`` or ``<manual_dir>/schema.json``. ``val_fraction``: share of
    episodes put in a ``val`` split, chosen by a hash of the episode id (deterministic, stable
    when episodes are added). ``gates``: a :class:`rldskit.Gates` mapping, or a path to a gates
    TOML/JSON file; empty means the defaults. ``homepage``: shown in the dataset info."""

    schema: str = ""
    val_fraction: float = 0.0
    gates: Any = None
    homepage: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")


_DEFAULT_CONFIG = RldsCaptureConfig(
    name="capture",
    description="Episodes of one capture folder (--manual_dir), schema from its schema.json or $RLDSKIT_SCHEMA.",
)


def resolve_schema(config: RldsCaptureConfig | None, manual_dir: str | None):
    """``(spec, source)``: the schema a build uses and where it came from; ``(None, reason)``
    when nothing names one yet (no config schema, no ``$RLDSKIT_SCHEMA``, no manual_dir)."""
    from rldskit.spec import SpecError, load_spec

    explicit = (config.schema if config is not None else "") or os.environ.get(SCHEMA_ENV, "")
    if explicit:
        where = "config schema" if config is not None and config.schema else f"${SCHEMA_ENV}"
        return load_spec(explicit), f"{explicit} ({where})"
    if manual_dir:
        path = Path(manual_dir) / "schema.json"
        if not path.is_file():
            raise SpecError(f"{path} not found: --manual_dir must be a capture folder written by rldskit's "
                            f"EpisodeLogger (it holds schema.json), or name the schema with ${SCHEMA_ENV} or "
                            "--config '{\"name\": \"...\", \"schema\": \"<id or file>\"}'")
        return load_spec(path), str(path)
    return None, "unresolved: no --manual_dir yet"


def _gates_dict(gates: Any) -> dict[str, Any]:
    """The gates as a plain dict (what is shipped to workers and recorded)."""
    from rldskit.validation import Gates

    if gates is None or gates == "" or gates == {}:
        g = Gates()
    elif isinstance(gates, Gates):
        g = gates
    elif isinstance(gates, dict):
        g = Gates.from_dict(gates, source="builder config gates")
    else:
        g = Gates.load(gates)
    d = dataclasses.asdict(g)
    d["bounds"] = {k: list(v) for k, v in d["bounds"].items()}
    if d["rate_hz"] is not None:
        d["rate_hz"] = list(d["rate_hz"])
    return d


# =========================================================================== per-episode work
# Module-level and free of the builder: these run on Beam workers (shipped by value).

_WORKER_CACHE: dict[str, Any] = {}


def _spec_from_json(text: str):
    spec = _WORKER_CACHE.get(text)
    if spec is None:
        from rldskit.spec import EpisodeSpec

        spec = _WORKER_CACHE[text] = EpisodeSpec.from_dict(json.loads(text), source="rlds_capture schema")
    return spec


def convert_episode(item: tuple[dict[str, Any], str], spec_json: str, gates: dict[str, Any]) -> tuple[bool, Any]:
    """Read, validate and lay out one episode. ``item`` is ``(InputItem as a dict, key)`` (``key``:
    the TFDS example key, the episode id read when the build started). Returns ``(True, (key,
    example, entry))`` or ``(False, quarantine record)``, both in the form of the pipeline's shard
    records (``entry``: ``{"index", "key", "sha256", "episode_id", "length", "terminal"}``; the
    record: ``{"index", "key", "sha256", "reasons"}``, messages with local paths scrubbed); never
    raises on bad data (an unexpected exception becomes a ``CONVERT_ERROR`` reason).

    Reading and validation are :func:`rldskit.pipeline.shard.load_checked`, the per-episode
    check ``rldskit convert`` uses, so both quarantine the same episodes for the same reasons."""
    from rldskit.formats.tfexample import to_tfds_example
    from rldskit.pipeline.plan import InputItem
    from rldskit.pipeline.shard import input_digest, load_checked, scrub_paths
    from rldskit.validation import Gates

    fields, key = item
    inp = InputItem(**fields)
    try:
        spec = _spec_from_json(spec_json)
        episode, reasons = load_checked(inp, spec, Gates.from_dict(gates))
        digest = input_digest(inp)
        if episode is None:
            reasons = [dict(r, message=scrub_paths(str(r.get("message", "")), inp)) for r in reasons]
            return False, _record(inp, reasons or [_reason("READ_ERROR", "the episode could not be read")], digest)
        if episode.episode_id and episode.episode_id != key:
            return False, _record(inp, [_reason("READ_ERROR", f"episode_id {episode.episode_id!r} differs from "
                                                f"{key!r} read from its metadata when the build started "
                                                "(the episode changed during the build)")], digest)
        entry = {"index": inp.index, "key": inp.key, "sha256": digest, "episode_id": episode.episode_id or key,
                 "length": len(episode), "terminal": episode.is_terminal}
        return True, (key, to_tfds_example(episode, spec), entry)
    except Exception as e:  # noqa: BLE001 - a worker must account for every episode
        return False, _record(inp, [_reason("CONVERT_ERROR", scrub_paths(f"{type(e).__name__}: {e}", inp))], None)


def _reason(code: str, message: str, step: int | None = None, field: str | None = None) -> dict[str, Any]:
    """A reason in the form ``load_checked`` gives them (and ``rldskit convert``'s manifest)."""
    return {"code": code, "step": step, "field": field, "message": message}


def _record(inp, reasons: list[dict[str, Any]], digest: str | None) -> dict[str, Any]:
    """A quarantine record, as a pipeline shard task writes it."""
    return {"index": inp.index, "key": inp.key, "sha256": digest, "reasons": list(reasons)}


def _tagged(item: tuple[dict[str, Any], str], spec_json: str, gates: dict[str, Any]):
    """Beam FlatMap body: good examples on the main output, their entries on ``written``, the
    rest on ``quarantine``."""
    from apache_beam import pvalue

    ok, value = convert_episode(item, spec_json, gates)
    if ok:
        key, example, entry = value
        yield key, example
        yield pvalue.TaggedOutput("written", entry)
    else:
        yield pvalue.TaggedOutput("quarantine", value)


def _write_part(records: list[dict[str, Any]], path: str) -> None:
    """Write one split's written entries or quarantine records (Beam: runs once per split, on some
    worker)."""
    from etils import epath

    epath.Path(path).write_text(json.dumps(sorted(records, key=lambda r: r["index"])))


def _ship_module_by_value() -> None:
    """Let Beam pickle this module's functions by value: workers (subprocesses, Dataflow VMs)
    import rldskit and TFDS but do not have ``builders/`` on their path."""
    mod = sys.modules[__name__]
    try:
        from apache_beam.internal.cloudpickle import cloudpickle as beam_cloudpickle

        beam_cloudpickle.register_pickle_by_value(mod)
    except (ImportError, ValueError, AttributeError) as e:  # pragma: no cover - older Beam
        log.warning("could not register %s for pickling by value (%s); Beam workers must import it", __name__, e)


# =========================================================================== reading the folder


def episode_id_hint(path: Path) -> str | None:
    """The episode id recorded in an episode's metadata, read cheaply (no steps parsed)."""
    try:
        if path.is_dir():
            meta = json.loads((path / "metadata.json").read_bytes())
        elif path.name.endswith(".json"):
            meta = json.loads(path.read_bytes()).get("metadata")
        else:
            from rldskit.formats.capture_dir import chunk_bytes

            first = chunk_bytes(path).split(b"\n", 1)[0]
            meta = json.loads(first).get("metadata")
        eid = meta.get("episode_id") if isinstance(meta, dict) else None
        return eid if isinstance(eid, str) and eid else None
    except Exception:  # noqa: BLE001 - unreadable: the episode's own scan reports why
        return None


def in_val_split(key: str, fraction: float) -> bool:
    """Deterministic split choice from the episode id (sha256, not Python's salted hash)."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return h / 2.0**64 < fraction


def count_records(files: list[Any], file_format: str) -> int | None:
    """Records in shard files, read from the files themselves; ``None`` for other formats."""
    from etils import epath

    total = 0
    if file_format == "tfrecord":  # [length u64][crc u32][data][crc u32] per record
        for f in files:
            with epath.Path(f).open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                pos = 0
                while pos < size:
                    fh.seek(pos)
                    head = fh.read(8)
                    if len(head) < 8:
                        raise RuntimeError(f"{f}: truncated record header at byte {pos}")
                    pos += 12 + int.from_bytes(head, "little") + 4
                    if pos > size:
                        raise RuntimeError(f"{f}: the record at byte {fh.tell() - 8} runs past the end of the file")
                    total += 1
        return total
    if file_format == "array_record":
        from array_record.python.array_record_module import ArrayRecordReader

        for f in files:
            reader = ArrayRecordReader(os.fspath(f))
            try:
                total += reader.num_records()
            finally:
                reader.close()
        return total
    return None


# =========================================================================== the builder


class RldsCapture(tfds.core.GeneratorBasedBuilder):
    """RLDS episodes from an rldskit capture folder. See the module docstring."""

    VERSION = tfds.core.Version("1.0.0")  # placeholder only: a build uses its schema's version
    RELEASE_NOTES = {"1.0.0": "Dataset versions are the episode schema's version (EpisodeSpec.version)."}
    BUILDER_CONFIGS = [_DEFAULT_CONFIG]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    --manual_dir is a capture folder: the root that rldskit's EpisodeLogger (or `rldskit synth`)
    wrote, with its schema.json and one sub-folder per episode (metadata.json, steps/*.jsonl[.zst],
    frames/<camera>/*.jpg); single-file *.json / *.jsonl[.zst] episodes are read too. Nothing is
    downloaded. The schema comes from <manual_dir>/schema.json unless $RLDSKIT_SCHEMA or the
    builder config's "schema" names one. Episodes that fail validation are listed, with their
    reasons, in quarantine.json inside the generated dataset folder.
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS 4.9.10's own code_path evaluates `importlib_resources.abc.Traversable`, which
        # needs the importlib_resources backport (a TFDS dependency only on Python < 3.9), so
        # download_and_prepare of a builder loaded from a folder fails without it. It is this file.
        from etils import epath

        return epath.Path(__file__)

    def __init__(self, *, manual_dir: str | os.PathLike | None = None, **kwargs: Any):
        self._manual_dir = os.fspath(manual_dir) if manual_dir else None
        super().__init__(**kwargs)
        # TFDS re-creates a builder from _original_state when unpickling: keep what we need
        self._original_state.update(manual_dir=self._manual_dir, file_format=kwargs.get("file_format"))

    # ---- schema, version, info
    @property
    def spec(self):
        """The :class:`rldskit.EpisodeSpec` of this build, or ``None`` while unresolved."""
        if "_spec" not in self.__dict__:
            self._spec, self._spec_source = resolve_schema(self.builder_config, self._manual_dir)
        return self._spec

    @property
    def canonical_version(self) -> tfds.core.Version:  # the schema's version
        spec = self.spec
        return tfds.core.Version(spec.version if spec is not None else str(self.VERSION))

    @property
    def info(self) -> tfds.core.DatasetInfo:
        # One DatasetInfo per builder state, kept in __dict__ (TFDS keeps it in an lru_cache
        # keyed by the builder object, which a rebind could not refresh).
        info = self.__dict__.get("_rldskit_info")
        if info is None:
            if not getattr(self, "_version", None):
                raise AssertionError("info requested before the version is known")
            info = self.__dict__["_rldskit_info"] = self._info()
        return info

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.spec
        cfg = self.builder_config
        homepage = (cfg.homepage if cfg is not None else "") or "https://github.com/google-research/rlds"
        if spec is None:
            # tfds build creates the builder before passing --manual_dir: features come with it
            return tfds.core.DatasetInfo(
                builder=self, homepage=homepage,
                description="RLDS episodes from an rldskit capture folder; the schema is read from "
                            "<manual_dir>/schema.json when the build starts.")
        source = f"Converted by rldskit from the capture folder {self._manual_dir}" if self._manual_dir else \
            "Converted by rldskit from a capture folder"
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{spec.description or spec.name}\n\nSchema {spec.id} {spec.version} "
                        f"(last_step={spec.last_step!r}, fps={spec.fps}). {source}. Episodes that failed "
                        f"validation are listed in {QUARANTINE_FILE} beside dataset_info.json.",
            features=spec.to_tfds_features(),
            homepage=homepage,
            license=spec.license,
            metadata=tfds.core.MetadataDict(rldskit_schema=spec.to_dict()),
        )

    # ---- binding --manual_dir
    def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs: Any) -> None:
        download_config = download_config or tfds.download.DownloadConfig()
        given = os.fspath(download_config.manual_dir) if download_config.manual_dir else None
        if given and self._manual_dir and Path(given).resolve() != Path(self._manual_dir).resolve():
            raise ValueError(f"two capture folders: RldsCapture(manual_dir={self._manual_dir!r}) and "
                             f"download_config.manual_dir={given!r}")
        if given and self._manual_dir is None:
            self._rebind(given)
        if self._manual_dir and not given:
            download_config = dataclasses.replace(download_config, manual_dir=self._manual_dir)
        if self.spec is None:
            raise ValueError(f"{self.name}: no schema. Pass --manual_dir=<capture folder with schema.json> "
                             f"(or RldsCapture(manual_dir=...)), or name one with ${SCHEMA_ENV}.")
        super().download_and_prepare(download_dir=download_dir, download_config=download_config, **kwargs)

    def _rebind(self, manual_dir: str) -> None:
        """Re-create this builder knowing ``manual_dir`` (so schema, version, data_dir and info
        follow the capture folder), exactly as TFDS re-creates an unpickled builder."""
        state = dict(self._original_state, manual_dir=manual_dir)
        self.__dict__.clear()
        self.__setstate__({"_original_state": state})
        log.info("rlds_capture: schema %s from %s -> %s", self.spec.id if self.spec else None,
                 self._spec_source, self.data_dir)

    # ---- generation
    def _download_and_prepare(self, dl_manager, download_config) -> None:
        self._use_beam = download_config.beam_options is not None or download_config.beam_runner is not None
        self._items: list[Any] = []  # every input episode (rldskit.pipeline.plan.InputItem), split assigned
        self._keys: dict[int, str] = {}  # input index -> TFDS example key (its episode id)
        self._paths: dict[int, str] = {}  # input index -> path relative to --manual_dir
        self._records: dict[str, dict[str, list[dict[str, Any]]]] = {}  # split -> shard-record lists kept here
        self._parts: dict[str, tuple[str, str]] = {}  # split -> (quarantine part, written part) of a Beam run
        try:
            super()._download_and_prepare(dl_manager, download_config)
        except Exception:
            for info in self._collect():
                for r in info["quarantined"]:
                    log.error("rlds_capture: quarantined %s: %s", r["key"], _summary(r))
            raise
        if download_config.max_examples_per_split == 0:
            return
        self._finish(limited=download_config.max_examples_per_split)

    def _split(self, split: str) -> dict[str, list[dict[str, Any]]]:
        return self._records.setdefault(split, {"episodes": [], "quarantined": []})

    def _split_generators(self, dl_manager):
        from rldskit.pipeline.plan import plan_conversion
        from rldskit.pipeline.shard import input_digest

        root = Path(os.fspath(dl_manager.manual_dir)).resolve()
        # the pipeline's listing: every input named relative to the capture folder (prefixed by its
        # name), with its size, exactly as `rldskit convert <manual_dir>` records it
        found, _shards, _tfds_spec, problems = plan_conversion([root])
        if not found:
            raise ValueError(f"no episodes under {root}: " + "; ".join(problems))
        if any(it.kind != "capture" for it in found):
            raise ValueError(f"{root} holds a TFDS dataset, not a capture folder: convert it with `rldskit convert`")
        cfg = self.builder_config
        fraction = float(cfg.val_fraction) if cfg is not None else 0.0
        self._spec_json = self.spec.to_json()
        self._gates = _gates_dict(cfg.gates if cfg is not None else None)
        self._n_in = len(found)
        seen: dict[str, str] = {}
        splits: dict[str, list[tuple[dict[str, Any], str]]] = {"train": [], "val": []}
        for it in found:
            p = Path(it.path)
            rel = str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
            key = episode_id_hint(p) or rel
            split = "val" if in_val_split(key, fraction) else "train"
            it = dataclasses.replace(it, split=split)
            self._items.append(it)
            self._keys[it.index], self._paths[it.index] = key, rel
            if key in seen:
                self._split(split)["quarantined"].append(_record(it, [_reason(
                    "DUPLICATE_EPISODE_ID", f"episode_id {key!r} is also used by {seen[key]}", field="episode_id")],
                    input_digest(it)))
                continue
            seen[key] = rel
            splits[split].append((dataclasses.asdict(it), key))
        out = {}
        for split, items in splits.items():
            if items:
                out[split] = self._generate_examples(items=items, split=split)
            elif split == "train" or fraction > 0:
                log.warning("rlds_capture: split %r gets no episodes; it is not written", split)
        log.info("rlds_capture: %d episodes under %s -> %s (schema %s)", len(found), root,
                 {s: len(v) for s, v in splits.items()}, self.spec.id)
        return out

    def _generate_examples(self, items: list[tuple[dict[str, Any], str]], split: str):
        if self._use_beam:
            return self._beam_examples(items, split)
        return self._local_examples(items, split)

    def _local_examples(self, items, split):
        records = self._split(split)
        for item in items:
            ok, value = convert_episode(item, self._spec_json, self._gates)
            if ok:
                key, example, entry = value
                records["episodes"].append(entry)
                yield key, example
            else:
                log.warning("rlds_capture: quarantined %s: %s", value["key"], _summary(value))
                records["quarantined"].append(value)

    def _beam_examples(self, items, split):
        import apache_beam as beam

        _ship_module_by_value()
        self._split(split)
        parts = (os.fspath(self.data_path / f"{split}{_PART_SUFFIX}"),
                 os.fspath(self.data_path / f"{split}{_WRITTEN_PART_SUFFIX}"))
        self._parts[split] = parts
        spec_json, gates = self._spec_json, self._gates

        @beam.ptransform_fn
        def episodes_to_examples(root):
            results = (root
                       | "ListEpisodes" >> beam.Create(items)
                       | "Spread" >> beam.Reshuffle()
                       | "ReadValidate" >> beam.FlatMap(_tagged, spec_json, gates).with_outputs(
                           "quarantine", "written", main="good"))
            _ = (results.quarantine
                 | "CollectQuarantine" >> beam.combiners.ToList()
                 | "WriteQuarantine" >> beam.Map(_write_part, parts[0]))
            _ = (results.written
                 | "CollectWritten" >> beam.combiners.ToList()
                 | "WriteWritten" >> beam.Map(_write_part, parts[1]))
            return results.good

        return episodes_to_examples()  # pylint: disable=no-value-for-parameter

    # ---- accounting
    def _collect(self) -> list[dict[str, Any]]:
        """One pipeline shard record per split (``shard`` is the split's name): what was kept here
        plus what a Beam run's workers wrote into the part files."""
        from etils import epath

        infos = []
        for split, kept in getattr(self, "_records", {}).items():
            episodes, quarantined = list(kept["episodes"]), list(kept["quarantined"])
            qpart, wpart = getattr(self, "_parts", {}).get(split, (None, None))
            for part, into in ((qpart, quarantined), (wpart, episodes)):
                if part is not None and epath.Path(part).exists():
                    into.extend(json.loads(epath.Path(part).read_text()))
            infos.append({"split": split, "shard": split, "episodes": sorted(episodes, key=lambda e: e["index"]),
                          "quarantined": sorted(quarantined, key=lambda q: q["index"])})
        return infos

    def _outputs(self, fmt: str) -> list[dict[str, Any]]:
        """The manifest's ``outputs``: every shard file TFDS wrote, with its records, bytes and sha256."""
        from etils import epath

        outputs = []
        for name, si in self.info.splits.items():
            for f in si.filepaths:
                f = epath.Path(f)
                h, n = hashlib.sha256(), 0
                with f.open("rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                        n += len(chunk)
                outputs.append({"file": f.name, "format": fmt, "layout": "episodes", "split": name,
                                "records": count_records([f], fmt), "bytes": n, "sha256": h.hexdigest()})
        return outputs

    def _finish(self, limited: int | None) -> None:
        from etils import epath

        from rldskit.pipeline.plan import (MANIFEST_FILE, ConversionError, build_manifest, check_accounting,
                                           manifest_bytes)

        infos = self._collect()
        records = sorted((dict(q, path=self._paths[q["index"]], episode_id=self._keys[q["index"]], split=i["split"])
                          for i in infos for q in i["quarantined"]), key=lambda r: r["path"])
        if self._use_beam:
            for r in records:
                log.warning("rlds_capture: quarantined %s: %s", r["key"], _summary(r))
        fmt = self.info.file_format.value if self.info.file_format else "tfrecord"
        written, on_disk = {}, {}
        for name, si in self.info.splits.items():
            written[name] = si.num_examples
            on_disk[name] = count_records(si.filepaths, fmt)
        recorded = {i["split"]: len(i["episodes"]) for i in infos}
        missing_parts = [p for parts in self._parts.values() for p in parts if not epath.Path(p).exists()]
        n_written, n_quarantined = sum(written.values()), len(records)
        problems = []
        if missing_parts:
            problems.append(f"worker output missing for {missing_parts}")
        for name, n in written.items():
            if on_disk[name] is not None and on_disk[name] != n:
                problems.append(f"split {name}: dataset_info says {n} episodes, the shard files hold {on_disk[name]}")
            if not limited and recorded.get(name, 0) != n:
                problems.append(f"split {name}: dataset_info says {n} episodes, {recorded.get(name, 0)} were recorded "
                                "as written")
        digests: dict[int, str | None] = {}
        if not limited:
            try:  # the pipeline's own check: every input written or quarantined, exactly once
                digests = check_accounting(self._items, infos)
            except ConversionError as e:
                problems.append(str(e))
        report = {
            "format": QUARANTINE_FORMAT,
            "dataset": f"{self.name}/{self.builder_config_name}/{self.version}",
            "source": self._manual_dir,
            "schema": {"id": self.spec.id, "version": self.spec.version, "from": self._spec_source},
            "gates": self._gates,
            "file_format": fmt,
            "runner": "beam" if self._use_beam else "python",
            "episodes_in": self._n_in,
            "written": written,
            "quarantined_count": n_quarantined,
            "max_examples_per_split": limited,
            "quarantined": records,
        }
        if problems:
            raise RuntimeError("rlds_capture: the build does not account for every episode (no dataset is left "
                               "behind): " + "; ".join(problems) + "\n" + json.dumps(report, indent=1)[:4000])
        if not limited:  # a --max_examples_per_split build converts only some inputs: no manifest
            manifest = build_manifest(name=self.name, spec_name=self.spec.name, items=self._items, infos=infos,
                                      digests=digests, outputs=self._outputs(fmt),
                                      steps=sum(e["length"] for i in infos for e in i["episodes"]))
            (self.data_path / MANIFEST_FILE).write_bytes(manifest_bytes(manifest))
        (self.data_path / QUARANTINE_FILE).write_text(json.dumps(report, indent=1) + "\n")
        for parts in self._parts.values():
            for part in parts:
                epath.Path(part).unlink(missing_ok=True)
        log.info("rlds_capture: %d episodes in, %s written, %d quarantined (%s)", self._n_in, written,
                 n_quarantined, self.data_path / QUARANTINE_FILE)
        print(f"rlds_capture: {self._n_in} episodes in, {n_written} written {written}, {n_quarantined} quarantined"
              + (f" (see {QUARANTINE_FILE} in the dataset folder)" if n_quarantined else ""))


def _summary(record: dict[str, Any]) -> str:
    parts = []
    for r in record["reasons"][:3]:
        where = "".join([f" step {r['step']}" if r.get("step") is not None else "",
                         f" {r['field']}" if r.get("field") else ""])
        parts.append(f"[{r['code']}]{where}: {r['message']}")
    more = f" (+{len(record['reasons']) - 3} more)" if len(record["reasons"]) > 3 else ""
    return "; ".join(parts) + more
