"""``rldskit-precommit``, the pre-commit hook: map the committed files to the episodes they belong
to, the ``rldskit validate`` command line for those (:func:`rldskit.cli.precommit_main` runs it;
see the README's pre-commit section)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence


def episode_of(path: str) -> str | None:
    """The episode a committed file belongs to: the nearest folder that is an episode, or the
    file itself when it is a single-file episode. ``None`` for files that are not episodes."""
    from pathlib import Path

    from rldskit.formats.capture_dir import METADATA_FILE, STEPS_DIR

    p = Path(path)
    for parent in p.parents:
        if (parent / METADATA_FILE).is_file() or (parent / STEPS_DIR).is_dir():
            return str(parent)
    if p.name.endswith((".jsonl", ".jsonl.zst")):
        return str(p)
    if p.suffix == ".json" and p.is_file():
        try:
            with open(p, "rb") as f:
                head = f.read(1 << 16)
            obj = json.loads(p.read_bytes()) if b'"steps"' in head else None
        except (OSError, ValueError):
            return str(p)  # unreadable/corrupt .json among episodes: let validate report it
        # a single-file episode's "steps" is a list; a schema file's is an object
        return str(p) if isinstance(obj, dict) and isinstance(obj.get("steps"), list) else None
    return None


def validate_argv(argv: Sequence[str]) -> list[str] | None:
    """The ``rldskit validate`` command line for the pre-commit hook's arguments (its options, then
    the committed files): the options, ``--min-episodes 0`` unless given, and the episodes the files
    belong to. ``None`` when none of the files is part of an episode."""
    opts, files = [], []
    it = iter(argv)
    takes_value = {"--schema", "--gates", "--min-episodes", "--min-steps", "--max-skew-ms", "--format", "--jobs", "-j"}
    for a in it:
        if a.startswith("-"):
            opts.append(a)
            if a in takes_value:
                opts.append(next(it, ""))
        else:
            files.append(a)
    episodes = sorted({e for f in files if (e := episode_of(f)) is not None and os.path.exists(e)})
    if not episodes:
        return None
    if not any(o.startswith("--min-episodes") for o in opts):
        opts += ["--min-episodes", "0"]
    return ["validate", *opts, *episodes]
