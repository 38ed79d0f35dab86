"""Crash-safe file writes, standard library only: the one copy the edge runtime and rldskit share.

Four tools, each with one guarantee:

* :func:`atomic_write`: after a crash, ``path`` holds nothing, the old version or the complete new
  one. The data goes to ``.<name>.<pid>.tmp`` beside it (:data:`TMP_SUFFIX` is how capture recovery
  and ``rldskit pack`` recognise such a left-over), is fsynced when ``durable``, and is renamed over
  the final name; the folder entry is fsynced too (so a power cut cannot leave a zero-length
  "complete" file on an ext4/f2fs SD card).
* :func:`write_new_file`: creates a file that must not exist yet (``O_EXCL``, never through a
  symlink), fsynced: for files inside a private temporary folder that is renamed into place as a whole.
* :func:`fsync_dir` and :func:`write_all`: the two system-call loops the others are made of.
* :class:`TempThenRenameWriter`: the context-manager protocol of streaming writers that write a
  temporary file and rename it when closed cleanly (rldskit's shard writers).

``rldskit._io`` re-exports these (``atomic_write_bytes`` is :func:`atomic_write` with the umask's
permissions). Nothing here imports numpy or rldskit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["TMP_SUFFIX", "fsync_dir", "write_all", "atomic_write", "write_new_file", "TempThenRenameWriter"]

#: the suffix of an atomic write's temporary file (``.<name>.<pid>.tmp``)
TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder so that renames and creations inside it survive a power cut (best effort:
    a folder that cannot be opened or synced is left as it is)."""
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
    """``os.write`` until every byte is written (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int | None = 0o644, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via temp-then-rename. ``mode``: the file's permission bits, set
    exactly whatever the umask (a key file must be 0600); ``None`` creates it as 0644 less the umask.
    ``durable`` adds fsync of the file and of its folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
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


def write_new_file(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    """Create ``path``, which must not exist (``FileExistsError`` otherwise; a symlink at ``path`` is
    never followed), with ``data``, fsynced. ``mode`` is filtered by the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class TempThenRenameWriter:
    """Context-manager protocol of the shard writers: a clean exit calls ``close()`` (which
    renames the finished temp file to its final name); an exception calls ``abort()`` (which
    removes the temp file), so no final name ever holds a partial file."""

    def close(self) -> None:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
