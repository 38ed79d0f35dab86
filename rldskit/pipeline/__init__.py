"""Conversion of episodes into a TFDS RLDS dataset (TFRecord and/or ArrayRecord), a step-major
ArrayRecord layout with ``episodes.parquet``, and a ``manifest.json``.

``convert(sources, out, name=...)`` = plan on the driver (:mod:`~rldskit.pipeline.plan`) ->
one task per shard on a Beam runner (:mod:`~rldskit.pipeline.beam`, running
:func:`~rldskit.pipeline.shard.write_shard`) -> finalise on the driver (counts verified,
shards renamed to their final names, metadata written last). ``runner="inline"`` runs the
shard tasks in this process without Beam (same bytes; handy for tests and tiny inputs).

Output: ``<out>/<name>/<version>/`` with ``dataset_info.json``, ``features.json``,
``rldskit_spec.json``, ``<name>-<split>.tfrecord-NNNNN-of-MMMMM`` and/or ``.array_record-...``
shards, ``steps/`` (one record per step), ``episodes.parquet`` and ``manifest.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rldskit.pipeline.plan import ConversionError, ConvertOptions, finalize, plan_conversion, prepare_output
from rldskit.spec import EpisodeSpec

__all__ = ["convert", "ConversionError", "ConversionResult"]


@dataclasses.dataclass
class ConversionResult:
    """What a conversion did: the dataset folder, its manifest and how long it took (s)."""

    path: Path
    manifest: dict[str, Any]
    seconds: float

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest["counts"]


def convert(sources: Sequence[str | Path], out: str | Path, *, name: str, version: str | None = None,
            spec: EpisodeSpec | None = None, formats: Sequence[str] = ("tfrecord", "array_record"),
            step_index: bool = True, shard_size_mb: float = 64.0, split: str = "train", gates=None,
            runner: str | None = "direct", num_workers: int | None = None, dask_address: str | None = None,
            beam_options: Sequence[str] = (), last_step: str | None = None, overwrite: bool = False,
            array_record_compression: str = "uncompressed",
            progress: Callable[[int, int], None] | None = None) -> ConversionResult:
    """Convert capture folders, single-file episodes and/or existing TFDS RLDS datasets.

    ``spec``: the schema of capture inputs (default: their own ``schema.json``); TFDS inputs
    bring theirs (``last_step`` is needed for foreign ones). ``formats``: ``tfrecord`` and/or
    ``array_record`` (the first is TFDS's ``fileFormat``, the other an alternative).
    ``runner``: ``direct`` (multi-processing, one worker per core), ``dask``, ``inline`` (no
    Beam) or a Beam runner name, with ``beam_options`` passed through. ``progress(done,
    total)`` is called as shards finish. Raises
    :class:`ConversionError` when inputs cannot be listed or are not all accounted for."""
    from rldskit.validation import Gates

    t0 = time.perf_counter()
    formats = tuple(formats)
    if not formats or any(f not in ("tfrecord", "array_record") for f in formats) or len(set(formats)) != len(formats):
        raise ConversionError(f"formats must be tfrecord and/or array_record, got {list(formats)}")
    items, shards, tfds_spec, problems = plan_conversion(sources, split=split, shard_size_mb=shard_size_mb,
                                                         last_step=last_step)
    if problems:
        raise ConversionError("cannot list the inputs: " + "; ".join(problems[:5]))
    if not items:
        raise ConversionError("no input episodes found")
    spec = spec or tfds_spec or _capture_spec(items)
    if tfds_spec is not None and tfds_spec != spec:
        raise ConversionError("the TFDS inputs' schema differs from the capture inputs' schema; convert them separately")
    version = version or spec.version
    gates = gates or Gates()
    out_dir = Path(out) / name / version
    prepare_output(out_dir, overwrite)
    opts = ConvertOptions(out_dir=str(out_dir), name=name, spec_json=spec.to_json(), formats=formats,
                          step_index=step_index, gates=dataclasses.asdict(gates),
                          array_record_compression=array_record_compression)
    if runner == "inline":
        from rldskit.pipeline.shard import write_shard

        for n, sh in enumerate(shards):
            write_shard(opts, sh.split, sh.index, sh.items)
            if progress:
                progress(n + 1, len(shards))
    else:
        from rldskit.pipeline.beam import pipeline_options, run_beam

        run_beam(opts, shards, pipeline_options(runner, num_workers=num_workers, dask_address=dask_address,
                                                extra=beam_options), progress)
    manifest = finalize(opts, items, shards, description=spec.description)
    return ConversionResult(out_dir, manifest, time.perf_counter() - t0)


def _capture_spec(items) -> EpisodeSpec:
    from rldskit.formats.capture_dir import resolve_spec

    problems: list = []
    first = Path(items[0].path)
    meta_ref = None
    if first.is_dir() and (first / "metadata.json").is_file():
        try:
            meta_ref = json.loads((first / "metadata.json").read_bytes()).get("schema")
        except (OSError, ValueError):
            meta_ref = None
    spec = resolve_spec(None, first, meta_ref, str(first), problems)
    if spec is None:
        raise ConversionError(f"no schema for the inputs: pass --schema ({'; '.join(i.message for i in problems)})")
    return spec
