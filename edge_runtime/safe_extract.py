"""Hostile-archive guards, standard library only: the one set of rules for every archive the project
unpacks -- the edge runtime's bundle zips (:func:`edge_runtime.bundle.extract_zip`) and rldskit's episode
archives (:func:`rldskit.archive.unpack` / ``verify``, ``.zip`` and ``.tar.zst``).

An archive is data from elsewhere: every member name, type and size is checked before a byte is
written, and writes never follow a link. The rules, each a function returning a short *code* (or
``None`` when the entry passes) so that every caller words its own refusal:

* **Names** (:func:`name_problem`): a member name is a relative POSIX path of plain components. Refused:
  empty, NUL or other control characters, not UTF-8, backslashes (a Windows separator), absolute
  paths, drive letters, ``..`` components (traversal) and empty or ``.`` components. Codes and what
  they mean: :data:`NAME_PROBLEMS`.
* **Types** (:func:`zip_entry_kind`, :func:`tar_entry_kind`): what an entry is, from its Unix mode bits
  whatever system made the zip (a symlink is a symlink even in a zip that claims to come from DOS).
  Callers accept regular files (and, for bundles, directory entries) and refuse every link, device,
  FIFO and socket. :func:`zip_entry_problem`: encryption, a compression method other than stored or
  deflate, a negative declared size.
* **Layout** (:func:`path_clashes`): no name may be both a file and a folder of another entry.
* **Bombs** (:func:`exceeds_ratio`, :class:`ExpansionBudget`): a cap on the bytes an archive expands
  to, and on the ratio of expanded to compressed bytes once past a floor (small files legitimately
  compress a lot).
* **Writing** (:func:`create_member_file`): a member's file is created exclusively (``O_EXCL``), never
  through a symlink (``O_NOFOLLOW``), inside a fresh staging folder the caller renames into place.

:data:`ZIP_READ_ERRORS` are the exceptions a truncated or corrupt zip can make :mod:`zipfile` raise.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable

__all__ = ["NAME_PROBLEMS", "ZIP_READ_ERRORS", "name_problem", "zip_entry_kind", "zip_entry_mode", "zip_entry_problem",
           "tar_entry_kind", "path_clashes", "exceeds_ratio", "ExpansionBudget", "create_member_file"]

#: the codes :func:`name_problem` returns, and what each means
NAME_PROBLEMS = {
    "empty": "an empty name",
    "nul": "a NUL character in the name",
    "not_utf8": "a name that is not valid UTF-8",
    "control": "a control character in the name",
    "backslash": "a backslash in the name (a Windows path separator)",
    "absolute": "an absolute path",
    "drive": "a drive-letter path",
    "traversal": "a '..' component (path traversal)",
    "noncanonical": "an empty or '.' component",
}

#: what a truncated or corrupt zip can make zipfile raise while listing or reading it
ZIP_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError, struct.error,
                   NotImplementedError, RuntimeError, KeyError, IndexError, OverflowError, UnicodeError)

_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def name_problem(name: str, *, directory: bool = False) -> str | None:
    """Why ``name`` cannot be a member name, as a code of :data:`NAME_PROBLEMS` (checked in that
    order), or ``None`` when it can. ``directory``: a zip directory entry, whose name ends in ``/``."""
    if not name:
        return "empty"
    if "\x00" in name:
        return "nul"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "not_utf8"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "control"
    if "\\" in name:
        return "backslash"
    if name.startswith("/"):
        return "absolute"
    if _DRIVE_RE.match(name):
        return "drive"
    parts = (name[:-1] if directory and name.endswith("/") else name).split("/")
    if ".." in parts:
        return "traversal"
    if any(p in ("", ".") for p in parts):
        return "noncanonical"
    return None


def zip_entry_mode(info: zipfile.ZipInfo) -> int:
    """The file-type bits (``stat.S_IFMT``) of a zip entry's Unix mode; 0 when it has none."""
    return stat.S_IFMT(info.external_attr >> 16)


def zip_entry_kind(info: zipfile.ZipInfo) -> str:
    """``"file"``, ``"dir"``, ``"symlink"``, ``"device"``, ``"fifo"``, ``"socket"`` or ``"special"``
    (another type), from the entry's mode bits (whichever system the zip says made it) and, for a
    directory, its trailing ``/``."""
    mode = zip_entry_mode(info)
    if mode == stat.S_IFLNK:
        return "symlink"
    if mode in (stat.S_IFCHR, stat.S_IFBLK):
        return "device"
    if mode == stat.S_IFIFO:
        return "fifo"
    if mode == stat.S_IFSOCK:
        return "socket"
    if mode == stat.S_IFDIR or info.filename.endswith("/"):
        return "dir"
    if mode in (0, stat.S_IFREG):
        return "file"
    return "special"


def zip_entry_problem(info: zipfile.ZipInfo) -> str | None:
    """``"encrypted"``, ``"compression"`` (a method other than stored or deflate: ``info.compress_type``
    names it) or ``"negative_size"`` for an entry that cannot be read safely; ``None`` when it can."""
    if info.flag_bits & 0x1:
        return "encrypted"
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return "compression"
    if info.file_size < 0 or info.compress_size < 0:
        return "negative_size"
    return None


def tar_entry_kind(info: tarfile.TarInfo) -> str:
    """``"file"``, ``"symlink"``, ``"hardlink"``, ``"device"``, ``"fifo"``, ``"dir"`` or ``"special"``
    (sparse files and any other type) for a tar member."""
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "fifo"
    if info.isdir():
        return "dir"
    if info.issparse() or not info.isreg():
        return "special"
    return "file"


def path_clashes(files: Iterable[str], dirs: Iterable[str] = ()) -> list[tuple[str, str]]:
    """``[(file, other)]``, sorted: every name in ``dirs`` equal to a file of ``files``, and every
    name in ``files`` or ``dirs`` that lies under a file (``other`` is the name, ``file`` its
    shortest prefix that is a file). Empty when the names make a consistent tree."""
    fs = set(files)
    out: list[tuple[str, str]] = []
    named = [(n, False) for n in sorted(fs)] + [(d, True) for d in sorted(set(dirs))]
    for name, is_dir in named:
        parts = name.split("/")
        for i in range(1, len(parts) + (1 if is_dir else 0)):  # a directory may not *be* a file either
            pre = "/".join(parts[:i])
            if pre in fs:
                out.append((pre, name))
                break
    return sorted(out)


def exceeds_ratio(expanded: int, compressed: int, max_ratio: float, floor: int) -> bool:
    """Whether ``expanded`` bytes from ``compressed`` is a bomb: at least ``floor`` bytes, and more than
    ``max_ratio`` times ``compressed``."""
    return expanded >= floor and expanded > max_ratio * max(compressed, 1)


class ExpansionBudget:
    """Counts the bytes an archive expands to as they are produced. :meth:`add` returns
    ``"max_bytes"`` once the total passes ``max_bytes``, ``"max_ratio"`` once it passes ``max_ratio``
    times ``compressed`` (from ``ratio_floor`` bytes on; ``max_ratio=None``: no ratio limit), else
    ``None``."""

    def __init__(self, max_bytes: int, *, max_ratio: float | None = None, compressed: int = 0,
                 ratio_floor: int = 0):
        self.max_bytes = int(max_bytes)
        self.max_ratio = None if max_ratio is None else float(max_ratio)
        self.compressed = int(compressed)
        self.ratio_floor = int(ratio_floor)
        self.total = 0

    def add(self, n: int) -> str | None:
        """Count ``n`` more bytes; the limit now exceeded, if any."""
        self.total += n
        if self.total > self.max_bytes:
            return "max_bytes"
        if self.max_ratio is not None and exceeds_ratio(self.total, self.compressed, self.max_ratio, self.ratio_floor):
            return "max_ratio"
        return None


def create_member_file(path: str | os.PathLike, mode: int = 0o644) -> int:
    """Create a member's file for writing and return its descriptor: exclusively (an existing file,
    or a symlink planted at ``path``, is ``FileExistsError``/``OSError``, never written through),
    close-on-exec, ``mode`` less the umask."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                   | getattr(os, "O_CLOEXEC", 0), mode)
