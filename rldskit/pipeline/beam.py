"""The Beam graph of a conversion: scheduling only (bytes live in the shard task).

::

    Create(shard plans) -> FlatMap(_write).with_outputs("quarantine", main="shards")

One element per planned shard (``beam.Create`` of ``(n, split, index, items)``); ``_write`` runs
the shard task (:func:`rldskit.pipeline.shard.write_shard`), which reads, validates, encodes and
writes that shard's inputs and records what it did in the work folder. Quarantined episodes are
a tagged output (``quarantine``) as well as part of each shard's record, which the driver's
finalisation checks (inputs = written + quarantined). Nothing is collected back through Beam:
the driver reads the shard records from the work folder after the run (:func:`run_beam`
returns when every shard finished and raises :class:`ConversionError` when one failed).

A shard task's exception does not go through Beam's failure path: ``_write`` records it in the work
folder (``<shard>.failed``: the exception line and the worker's traceback) and returns, so the run
ends normally and :func:`run_beam` raises from the records. Beam 2.78's DirectRunner in
multi_processing mode can hang for ever when a pipeline fails (its shutdown joins a worker
process that never connected and so never hears it is done); a worker that dies outright
(killed, out of memory) or a record that cannot be written still takes Beam's path.

Runners (:func:`pipeline_options`): ``direct`` (the default) is the DirectRunner in
``multi_processing`` mode with one worker per core; ``dask`` is Beam's DaskRunner against a
``dask.distributed`` scheduler (``dask_address``). (``rldskit.pipeline.convert(runner="inline")``
runs the shard tasks in its own process without Beam.) Other runners take their pipeline options as given, but the shard task
writes to the output folder directly, so every worker must see the same filesystem; nothing
here stages rldskit for remote workers (Dataflow would need a wheel passed as
``--extra_package``), and no remote runner is tested.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import json
import re
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from rldskit._log import beam_worker_log_level, filtered_stderr, is_quiet, is_verbose
from rldskit.pipeline.plan import ConversionError, ConvertOptions, ShardPlan

__all__ = ["run_beam", "pipeline_options", "ShardTaskError"]

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def pipeline_options(runner: str | None = None, *, num_workers: int | None = None, dask_address: str | None = None,
                     extra: Sequence[str] = ()) -> list[str]:
    """Beam command-line options for ``runner`` (``direct``, ``dask`` or any Beam runner name)."""
    runner = (runner or "direct").lower()
    if runner == "direct":
        workers = num_workers or os.cpu_count() or 1
        opts = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}",
                f"--default_sdk_harness_log_level={beam_worker_log_level()}"]
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
    try:
        info = write_shard(opts, split, index, [InputItem(**i) for i in items])
    except Exception as e:  # noqa: BLE001 - returned as data, raised by the driver (see the module docstring)
        if not _record_failure(opts, f"{split}-{index:05d}", e):
            raise
        return
    for q in info["quarantined"]:
        yield beam.pvalue.TaggedOutput("quarantine", q)
    yield {"shard": info["shard"], "written": len(info["episodes"]), "quarantined": len(info["quarantined"])}


FAILED_SUFFIX = ".failed"


class ShardTaskError(RuntimeError):
    """A shard task's exception, raised in a worker and carried back through the work folder: the
    message is the worker's formatted traceback (``str(e).splitlines()[-1]`` its exception line)."""


def _record_failure(opts: ConvertOptions, shard: str, e: BaseException) -> bool:
    """Write ``<work>/<shard>.failed`` for the driver; False when even that cannot be written."""
    from rldskit._io import atomic_write_bytes

    record = {"shard": shard, "error": f"{type(e).__name__}: {e}".rstrip(": "),
              "traceback": "".join(traceback.format_exception(e))}
    try:
        atomic_write_bytes(opts.work_dir / f"{shard}{FAILED_SUFFIX}", json.dumps(record).encode())
    except OSError:
        return False
    return True


def _failures(opts: ConvertOptions) -> list[dict[str, Any]]:
    """The shard failures the workers recorded, by shard name."""
    try:
        names = sorted(f for f in os.listdir(opts.work_dir) if f.endswith(FAILED_SUFFIX))
    except OSError:
        return []
    out = []
    for name in names:
        try:
            out.append(json.loads((opts.work_dir / name).read_bytes()))
        except (OSError, ValueError):
            out.append({"shard": name[: -len(FAILED_SUFFIX)], "error": "the failure record is unreadable",
                        "traceback": ""})
    return out


def _watch(opts: ConvertOptions, total: int, progress: Callable[[int, int], None], stop: threading.Event) -> None:
    """Report finished shards (their result files appear in the work folder) until ``stop``."""
    last = -1
    while not stop.wait(0.5):
        try:
            done = sum(1 for f in os.listdir(opts.work_dir) if f.endswith((".json", FAILED_SUFFIX)))
        except OSError:
            continue
        if done != last:
            progress(min(done, total), total)
            last = done


def run_beam(opts: ConvertOptions, shards: Sequence[ShardPlan], options: Sequence[str],
             progress: Callable[[int, int], None] | None = None) -> None:
    """Run every shard task on the runner ``options`` name; returns when all finished.
    ``progress(done, total)`` is called as shards finish (polled from the work folder). A failure
    (a worker's exception, a failed run) raises :class:`ConversionError` with its first line; the
    original exception is its ``__cause__``."""
    elements = [(n, sh.split, sh.index, [dataclasses.asdict(i) for i in sh.items]) for n, sh in enumerate(shards)]
    if not is_verbose():
        logging.getLogger("apache_beam").setLevel(logging.ERROR)  # the runner's chatter is not the user's business
    # quiet (the CLI, the demo): the worker processes Beam starts inherit a filtered stderr (see rldskit._log)
    with filtered_stderr() if is_quiet() else contextlib.nullcontext():
        try:
            state = _run(opts, elements, options, progress, len(shards))
        except Exception as e:  # noqa: BLE001 - a worker's failure arrives as whatever the runner raises
            raise ConversionError(f"the Beam pipeline failed: {_gist(e)}") from e
    failed = _failures(opts)
    if failed:
        more = f" (and {len(failed) - 1} more of {len(shards)} shards)" if len(failed) > 1 else ""
        raise ConversionError(f"the Beam pipeline failed: {failed[0]['error']} in shard {failed[0]['shard']}{more}") \
            from ShardTaskError(failed[0]["traceback"].rstrip() or failed[0]["error"])
    if str(state).upper().rsplit(".", 1)[-1] not in ("DONE", "NONE"):
        raise ConversionError(f"the Beam pipeline ended in state {state}")


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b.*")


def _gist(e: BaseException) -> str:
    """One line for a runner's exception. A worker's failure comes back as the text of the worker's
    traceback: its last exception line is the message (Beam's ``RuntimeError:`` wrapper dropped);
    ``-v`` shows the whole traceback."""
    lines = [ln.rstrip() for ln in str(e).strip().splitlines() if ln.strip()]
    excs = [ln for ln in lines if _EXC_LINE.match(ln)]
    head = excs[-1] if excs and lines and lines[0].startswith("Traceback") else (lines[0] if lines else "")
    inner = re.sub(r"^RuntimeError: (?=[A-Za-z_][\w.]*(Error|Exception)\b)", "", head)
    return inner if _EXC_LINE.match(inner) else f"{type(e).__name__}: {inner}".rstrip(": ")


def _run(opts: ConvertOptions, elements: list, options: Sequence[str], progress, total: int):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    p = beam.Pipeline(options=PipelineOptions(list(options)))
    (p
     | "Shards" >> beam.Create(elements)
     | "ReadValidateEncodeWrite" >> beam.FlatMap(_write, opts).with_outputs("quarantine", main="shards"))
    stop = threading.Event()
    shown = [-1]  # the last count the watcher reported (the bar ends once, at total)

    def report(done: int, tot: int) -> None:
        shown[0] = done
        progress(done, tot)

    watcher = threading.Thread(target=_watch, args=(opts, total, report, stop), daemon=True) if progress else None
    if watcher:
        watcher.start()
    try:
        result = p.run()
        try:
            state = result.wait_until_finish()
        finally:
            client = getattr(result, "client", None)  # DaskRunner: the runner opens a client and leaves it open
            if client is not None:
                client.close()
    finally:
        stop.set()
        if watcher:
            watcher.join()
    if progress and shown[0] != total:
        progress(total, total)
    return state
