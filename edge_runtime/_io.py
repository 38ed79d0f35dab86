"""The edge runtime's file helpers (standard library only): fsync of a folder, and atomic writes.

A file written with :func:`atomic_write` is absent, the old version or the complete new one. The
data goes to ``.<name>.<pid>.tmp`` beside it (the temporary name rldskit's capture recovery knows to
clean up), is fsynced when ``durable``, and is renamed over the final name; the folder entry is
fsynced too. One copy for ``bundle``, ``slots``, ``episode_log`` and ``policy``.
"""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so that renames and creations inside it survive a power cut (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via temp-then-rename, with permission ``mode``; ``durable`` adds
    fsync of the file and of its folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; a key file must be 0600 whatever it is
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
