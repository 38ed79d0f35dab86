"""Small, dependency-free file helpers: atomic writes and durable renames.

A file written with :func:`atomic_write_bytes` is either absent, the old version, or the
complete new version: it is written to a sibling temp file, flushed, fsynced and renamed
over the final name, and the directory entry is fsynced too (so a power cut cannot leave a
zero-length "complete" file on ext4/f2fs SD cards).
"""

from __future__ import annotations

import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that renames/creations inside it survive a power cut."""
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
    """os.write until every byte is written (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via temp-then-rename. ``durable`` adds fsync of file and dir."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
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


class TempThenRenameWriter:
    """Context-manager protocol of the shard writers: a clean exit calls ``close()`` (which
    renames the finished temp file to its final name); an exception calls ``abort()`` (which
    removes the temp file), so no final name ever holds a partial file."""

    def close(self) -> None:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - implemented by subclasses
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
