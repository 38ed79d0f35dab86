"""rldskit's file helpers: atomic writes and durable renames, re-exported from the edge runtime's core.

The one implementation is :mod:`edge_runtime.atomic_io` (standard library only), so a file the
robot writes and a file the workstation writes follow the same crash-safety rules. A file written
with :func:`atomic_write_bytes` is either absent, the old version, or the complete new version: it
is written to a sibling temp file, flushed, fsynced and renamed over the final name, and the
directory entry is fsynced too (so a power cut cannot leave a zero-length "complete" file on
ext4/f2fs SD cards).
"""

from __future__ import annotations

import os

from edge_runtime.atomic_io import TMP_SUFFIX, TempThenRenameWriter, atomic_write, fsync_dir, write_all

__all__ = ["TMP_SUFFIX", "TempThenRenameWriter", "atomic_write_bytes", "fsync_dir", "write_all"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via temp-then-rename (permissions 0644 less the umask).
    ``durable`` adds fsync of file and dir. See :func:`edge_runtime.atomic_io.atomic_write`."""
    atomic_write(path, data, mode=None, durable=durable)
