"""The Beam graph of a conversion: scheduling only (bytes live in the shard task).

::

    Create(shard plans) -> Reshuffle -> Map(write_shard) -> Map(shard summary)

One element per planned shard; the shard task (:func:`rldskit.pipeline.shard.write_shard`)
reads, validates, encodes and writes that shard's inputs and records what it did. Quarantined
episodes are a tagged output (``quarantine``) as well as part of each shard's record, which the
driver's finalisation checks (inputs = written + quarantined).

Runners: the default is the DirectRunner in ``multi_processing`` mode with one worker per
core. Any Beam runner works by passing pipeline options (``--runner=DataflowRunner
--project=... --region=... --temp_location=gs://... --setup_file=./setup.py``; the output
folder must then be a path every worker can write, e.g. a mounted bucket). ``runner="dask"``
uses Beam's DaskRunner against a ``dask.distributed`` scheduler (``dask_address``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any

from rldskit.pipeline.plan import ConvertOptions, ShardPlan

__all__ = ["run_beam", "pipeline_options"]

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def pipeline_options(runner: str | None = None, *, num_workers: int | None = None, dask_address: str | None = None,
                     extra: Sequence[str] = ()) -> list[str]:
    """Beam command-line options for ``runner`` (``direct``, ``dask`` or any Beam runner name)."""
    runner = (runner or "direct").lower()
    if runner == "direct":
        workers = num_workers or os.cpu_count() or 1
        opts = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}",
                "--default_sdk_harness_log_level=WARNING"]
    elif runner == "dask":
        if not dask_address:
            raise ValueError("--runner dask needs --dask-address tcp://HOST:8786 (a dask.distributed scheduler)")
        opts = [f"--runner={DASK_RUNNER}", f"--dask_client_address={dask_address}"]
    else:
        opts = [f"--runner={runner}"]
    return opts + list(extra)


def _write(element: tuple[int, str, int, list[dict[str, Any]]], opts: ConvertOptions):
    import apache_beam as beam

    from rldskit.pipeline.plan import InputItem
    from rldskit.pipeline.shard import write_shard

    _order, split, index, items = element
    info = write_shard(opts, split, index, [InputItem(**i) for i in items])
    for q in info["quarantined"]:
        yield beam.pvalue.TaggedOutput("quarantine", q)
    yield {"shard": info["shard"], "written": len(info["episodes"]), "quarantined": len(info["quarantined"])}


def run_beam(opts: ConvertOptions, shards: Sequence[ShardPlan], options: Sequence[str]) -> None:
    """Run every shard task on the runner ``options`` name; returns when all finished."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    elements = [(n, sh.split, sh.index, [dataclasses.asdict(i) for i in sh.items]) for n, sh in enumerate(shards)]
    logging.getLogger("apache_beam").setLevel(logging.ERROR)  # the runner's chatter is not the user's business
    p = beam.Pipeline(options=PipelineOptions(list(options)))
    results = (p
               | "Shards" >> beam.Create(elements)
               | "Spread" >> beam.Reshuffle()
               | "ReadValidateEncodeWrite" >> beam.FlatMap(_write, opts).with_outputs("quarantine", main="shards"))
    _ = results.quarantine | "CountQuarantined" >> beam.combiners.Count.Globally()
    result = p.run()
    try:
        state = result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)  # DaskRunner: the runner opens a client and leaves it open
        if client is not None:
            client.close()
    if str(state).upper().rsplit(".", 1)[-1] not in ("DONE", "NONE"):
        raise RuntimeError(f"the Beam pipeline ended in state {state}")
