"""``rldskit import <kind>`` and ``rldskit export <kind>``: the importers (``rldskit.importers``:
LeRobot v2.x/v3.0 datasets and the Hugging Face community monorepo, Donkeycar tubs, older RLDS
JSON episodes from a Jetson) and exporters (``rldskit.exporters``: LeRobot v3.0). Each kind's module
adds its own subcommand; the modules import their heavy dependencies (PyAV, pyarrow, Pillow) only
when run."""

from __future__ import annotations

from rldskit.exporters import lerobot as lerobot_export
from rldskit.importers import donkey, lerobot, rlds_json

#: modules whose ``add_import_parser(subparsers)`` adds an ``import`` kind
IMPORTERS = (lerobot, donkey, rlds_json)
#: modules whose ``add_export_parser(subparsers)`` adds an ``export`` kind
EXPORTERS = (lerobot_export,)


def register_cli(sub) -> None:
    """Add ``import`` and ``export`` with a subcommand per kind."""
    imp = sub.add_parser("import", help="import episodes from other formats into the capture layout "
                                        "(lerobot, donkey, rlds-json)")
    isub = imp.add_subparsers(dest="import_kind", required=True)
    for module in IMPORTERS:
        module.add_import_parser(isub)
    exp = sub.add_parser("export", help="export a dataset to another format (lerobot)")
    esub = exp.add_subparsers(dest="export_kind", required=True)
    for module in EXPORTERS:
        module.add_export_parser(esub)
