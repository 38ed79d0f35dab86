"""``rldskit import <kind>`` and ``rldskit export <kind>``: the importers (``rldskit.importers``:
LeRobot v2.x/v3.0 datasets and the Hugging Face community monorepo, Donkeycar tubs and older RLDS
JSON from a Jetson) and exporters (``rldskit.exporters``: LeRobot v3.0). Each kind registers its own
subcommand; the modules import their heavy dependencies (PyAV, pyarrow, Pillow) only when run."""

from __future__ import annotations

import importlib

IMPORTERS = ("rldskit.importers.lerobot", "rldskit.importers.donkey")
EXPORTERS = ("rldskit.exporters.lerobot",)


def register_cli(sub) -> None:
    imp = sub.add_parser("import", help="import episodes from other formats into the capture layout "
                                        "(lerobot, donkey, rlds-json)")
    isub = imp.add_subparsers(dest="import_kind", required=True)
    for module in IMPORTERS:
        importlib.import_module(module).add_import_parser(isub)
    exp = sub.add_parser("export", help="export a dataset to another format (lerobot)")
    esub = exp.add_subparsers(dest="export_kind", required=True)
    for module in EXPORTERS:
        importlib.import_module(module).add_export_parser(esub)
