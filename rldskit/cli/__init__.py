"""The ``rldskit`` command line, and the app layer: the programs built on the library, the trainers and
the edge runtime (``rldskit pipeline`` in :mod:`rldskit.cli.pipeline`, ``make demo`` in
:mod:`rldskit.cli.demo`). Nothing in ``rldskit`` outside this package imports it, ``trainers`` or the
edge runtime's deployment modules (``tests/test_layers.py`` checks).

Every command is a thin wrapper over a library function; :data:`COMMANDS` is the table of the
modules that add them (each light to import: heavy libraries are imported when a command runs).

Episodes (:mod:`rldskit.cli.core`)
  * ``validate PATH...``: check episodes (or converted datasets) against their schema and gates; exit
    0 clean, 1 violations, 2 cannot run.
  * ``inspect DIR``: a converted dataset's name, formats, schema, splits, counts and a sample step.
  * ``synth``: write realistic synthetic episodes through the capture logger.
  * ``schema list|show|export NAME``: the built-in schemas, one of them, or its step JSON Schema.
  * ``convert PATH...``: episodes to a TFDS RLDS dataset (TFRecord and/or ArrayRecord) with Beam;
    every episode written or quarantined with a reason in ``manifest.json``.
  * ``recover PATH...``: finish episodes a killed logger left unfinished (marked truncated).
Datasets
  * ``stats DIR`` (:mod:`rldskit.stats`): per-feature and dataset statistics, ``stats.json``.
  * ``report DIR`` (:mod:`rldskit.report`): a self-contained HTML report.
  * ``push DIR REPO`` / ``pull REPO DIR`` (:mod:`rldskit.hub`): publish to / fetch from the Hugging Face Hub.
Archives (:mod:`rldskit.archive`)
  * ``pack``, ``unpack``, ``verify-archive``: episodes in one checksummed .tar.zst/.zip, extracted
    all or nothing.
Other formats (:mod:`rldskit.cli.import_export`)
  * ``import lerobot|donkey|rlds-json``: LeRobot datasets, Donkeycar tubs and older RLDS JSON
    episodes into the capture layout.
  * ``export lerobot``: a converted dataset as LeRobot v3.0.
The whole flow (:mod:`rldskit.cli.pipeline`)
  * ``pipeline``: validate -> convert -> stats -> train -> export -> bundle, staged and re-runnable.

``-v``/``--verbose`` on any command shows the libraries' logs (see :mod:`rldskit._log`).
``rldskit-precommit`` (:mod:`rldskit.cli.precommit`) is the pre-commit hook.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rldskit import archive, hub, report, stats
from rldskit.cli import core, import_export, pipeline
from rldskit.cli.common import EXIT_OK, EXIT_USAGE, EXIT_VIOLATIONS
from rldskit.cli.precommit import validate_argv

__all__ = ["main", "build_parser", "precommit_main", "COMMANDS", "EXIT_OK", "EXIT_VIOLATIONS", "EXIT_USAGE"]

#: the functions that add the subcommands, in ``rldskit --help`` order: each takes the subparsers
COMMANDS: tuple[Callable[[Any], Any], ...] = (
    core.register_cli,  # validate, inspect, synth, schema, convert, recover
    stats.register_cli,  # stats
    report.register_cli,  # report
    archive.register_cli,  # pack, unpack, verify-archive
    hub.register_cli,  # push, pull
    pipeline.register_cli,  # pipeline
    import_export.register_cli,  # import <kind>, export <kind>
)


def build_parser() -> argparse.ArgumentParser:
    """The ``rldskit`` argument parser with every command of :data:`COMMANDS` and ``-v`` on each."""
    ap = argparse.ArgumentParser(prog="rldskit", description="Typed RLDS episodes for robot learning.")
    sub = ap.add_subparsers(dest="command", required=True)
    for register in COMMANDS:
        register(sub)
    _add_verbose(ap, sub)
    return ap


_VERBOSE_HELP = "show the libraries' logs (Beam, TensorFlow, absl; also in Beam's worker processes)"


def _add_verbose(ap: argparse.ArgumentParser, sub) -> None:
    """``-v``/``--verbose`` before or after any subcommand (``rldskit -v convert ...`` or
    ``rldskit convert ... -v``); without it the terminal shows rldskit's own output, its warnings
    and errors only (see :mod:`rldskit._log`)."""
    ap.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    for parser in {id(p): p for p in sub.choices.values()}.values():
        _add_verbose_to(parser)


def _add_verbose_to(parser: argparse.ArgumentParser) -> None:
    if "--verbose" not in parser._option_string_actions:
        flags = ["--verbose"] if "-v" in parser._option_string_actions else ["-v", "--verbose"]
        parser.add_argument(*flags, action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    for a in parser._actions:  # nested subcommands (schema, import lerobot|donkey, ...)
        if isinstance(a, argparse._SubParsersAction):
            for p in {id(p): p for p in a.choices.values()}.values():
                _add_verbose_to(p)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``rldskit`` command; returns its exit code (``EXIT_*``, 130 on Ctrl-C)."""
    args = build_parser().parse_args(argv)
    from rldskit._log import configure

    configure(args.verbose or None)  # before any command imports TensorFlow or Beam; RLDSKIT_VERBOSE=1 also works
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def precommit_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the pre-commit hook (``rldskit-precommit``): map the committed files to their
    episodes and run ``rldskit validate`` on those (extra ``args:`` such as ``--schema`` pass
    through); exit 0 when no committed file is part of an episode."""
    validate = validate_argv(list(sys.argv[1:] if argv is None else argv))
    return EXIT_OK if validate is None else main(validate)
