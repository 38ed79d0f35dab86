"""Move captured episodes off a robot in one verifiable file: ``pack``, ``unpack``, ``verify``.

::

    rldskit pack episodes/ --out episodes_pi5_follow.tar.zst [--anonymize] [--origin-tag origin:pi5]
    rldskit verify-archive episodes_pi5_follow.tar.zst
    rldskit unpack episodes_pi5_follow.tar.zst --out /data/rlds

**Archive layout.** A ``.tar.zst`` (a PAX tar streamed through one zstd frame with its content
checksum) or a ``.zip`` (deflate; already-compressed ``.jpg``/``.png``/``.zst``/``.gz`` members are
stored). Its first member is ``MANIFEST.json``::

    {"format": "rldskit.archive/1", "created_at": "2026-05-09T12:00:00Z", "rldskit_version": "0.1.0",
     "episodes": 2, "files": 14, "bytes": 20480, "origin_tag": "origin:pi5",
     "anonymization": {"enabled": true, "mode": "hash", "salt": "random", "keys": [...], ...},
     "members": [{"path": "ep_0000_00000/metadata.json", "size": 402, "sha256": "...", "anonymized": true}, ...]}

then every member, in the manifest's (sorted) order. Members are regular files only, named by
their ``/``-separated path relative to the unpack folder: a source folder that is an episode
(it holds ``metadata.json`` or ``steps/``) keeps its own name (``ep_0001/steps/000000.jsonl``); a
folder of episodes contributes its content (``ep_0001/...``, ``schema.json``); a single file
keeps its name. With ``normalize=True`` (default) every member has mode 0644, uid/gid 0, no
owner names and mtime 1980-01-01, so the same inputs (and the same ``salt`` and ``created_at``
or ``SOURCE_DATE_EPOCH``) give the same bytes.

**Packing** reads the sources twice: once to hash every file (the manifest comes first), once to
stream them into ``<out>.tmp-<pid>``, which is fsynced and renamed to ``out`` (nothing is left at
``out`` on failure). A file that changes between the two reads stops the pack. Skipped: temp
files (``*.tmp``, ``*.tmp-<digits>``: the capture writer's and this module's in-progress
files) and the output itself. Refused: symlinks inside a source (never followed; a source named
on the command line may itself be a link), sockets, FIFOs, devices, and names ``unpack`` would
refuse (backslashes, control characters). Episodes whose ``metadata.json`` still says
``"status": "recording"`` are packed as they are and listed in the summary's ``incomplete``.

**Anonymisation** (``anonymize=True``) rewrites, *in the archive only* (sources are read, never
written), the metadata of every episode: each ``metadata.json``, and the metadata record of
single-file episodes outside episode folders (``*.json`` holding ``{"metadata": {...},
"steps": [...]}``, the first line of ``*.jsonl`` / ``*.jsonl.zst``). At any depth of the metadata:

* keys in :data:`SENSITIVE_KEYS` (matched case-insensitively, ``-`` read as ``_``): operator,
  operator_id, operator_name, operator_email, user, user_id, user_name, username, email,
  device_serial, device_id, robot_serial, serial, serial_number, machine_id, hostname, host,
  mac, mac_address, ip, ip_address, gps, location, lat, lon, lng, latitude, longitude, altitude;
* every ``tags`` list: tags starting with one of :data:`SENSITIVE_TAG_PREFIXES` (``operator:``,
  ``user:``, ``device:``, ``serial:``, ``host:``, ``hostname:``, ``gps:``, ``location:``,
  case-insensitive).

Mode ``"hash"`` (default) replaces a value by ``"anon:" + sha256(salt + "\\0" + value)[:16]``
(hex; non-string values are hashed as compact sorted JSON; ``null`` stays ``null``) and a tag
``operator:alice`` by ``operator:anon:<hash of "alice">``, so one operator keeps one pseudonym
across the archive (and across archives packed with the same ``salt``). Without a ``salt`` a
random one is drawn per archive (and not recorded). Mode ``"drop"`` removes the key or tag. The
manifest records the settings and the sha256 of the rewritten file. Step data and frames are
not touched (our frames carry no EXIF; other sources' JPEGs might). A metadata file that cannot
be parsed stops an anonymised pack rather than being archived as it is. ``origin_tag`` (e.g.
``"origin:pi5"``) is appended to each episode's top-level ``tags`` (with or without
anonymisation).

**Unpacking** trusts nothing (the name, type, layout and bomb rules are those of
:mod:`edge_runtime.safe_extract`, which the robot applies to a bundle zip too): the manifest is
read first and checked (safe unique names, no name that is both a file and a folder, at most
``max_members`` entries, declared bytes within ``max_bytes``), then every member is checked as it
streams by: its name (no ``..``, absolute path, drive letter, backslash, empty or ``.`` component,
control character), its type (regular files only: *all* symlinks and hard links are refused,
wherever they point and whichever system a zip says made it, as are devices, FIFOs, directories
and sparse files), that it is listed in the manifest, not seen before, and of the listed size,
while the decompressed bytes are counted (more than ``max_bytes``, or more than ``max_ratio``
times the archive's size from 1 MiB on, stops the read: a bomb). Its
sha256 is checked as it is written into a fresh hidden folder next to ``out``; when every
listed member has arrived and matched, that folder is renamed to ``out``. On any failure the
folder is removed: ``out`` is not created, and nothing else is written outside it. The zstd
frame structure is walked first, so a truncated ``.tar.zst`` is refused even where the tar
itself would look complete. An existing ``out`` that is not empty is refused unless
``overwrite=True``, which *replaces* it (old content deleted after the new one is in place).

Errors are :class:`ArchiveError` (a ``ValueError``) naming the archive and the member;
``exit_code`` is what the CLI returns: 1 for a refused archive or source content, 2 for usage
problems (missing archive or source, unknown format, ``out`` not empty).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from edge_runtime.capture_layout import metadata_bytes
from edge_runtime.safe_extract import (ZIP_READ_ERRORS, ExpansionBudget, create_member_file, exceeds_ratio,
                                       name_problem, path_clashes, tar_entry_kind, zip_entry_kind, zip_entry_problem)
from rldskit._io import TMP_SUFFIX, fsync_dir, write_all

__all__ = ["ArchiveError", "pack", "unpack", "verify", "anonymize_metadata", "register_cli",
           "MANIFEST_NAME", "FORMAT", "SENSITIVE_KEYS", "SENSITIVE_TAG_PREFIXES"]

FORMAT = "rldskit.archive/1"
MANIFEST_NAME = "MANIFEST.json"
GiB = 1 << 30
DEFAULT_MAX_BYTES = 20 * GiB
DEFAULT_MAX_RATIO = 200.0
DEFAULT_MAX_MEMBERS = 1_000_000
#: the ratio limit applies once this many bytes have been decompressed
RATIO_FLOOR = 1 << 20
#: a tar extended header (PAX, GNU long name) larger than this is refused
MAX_TAR_HEADER = 1 << 20

SENSITIVE_KEYS = frozenset({
    "operator", "operator_id", "operator_name", "operator_email", "user", "user_id", "user_name", "username",
    "email", "device_serial", "device_id", "robot_serial", "serial", "serial_number", "machine_id", "hostname",
    "host", "mac", "mac_address", "ip", "ip_address", "gps", "location", "lat", "lon", "lng", "latitude",
    "longitude", "altitude",
})
SENSITIVE_TAG_PREFIXES = ("operator:", "user:", "device:", "serial:", "host:", "hostname:", "gps:", "location:")
ANON_PREFIX = "anon:"

_CHUNK = 1 << 20
_NORMALIZED_MTIME = 315532800  # 1980-01-01T00:00:00Z: the earliest time a zip can hold
_STORED_SUFFIXES = (".jpg", ".jpeg", ".png", ".zst", ".gz", ".zip", ".mp4", ".webp")
_TEMP_RE = re.compile(r"(\.tmp|\.tmp-\d+)$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_ZSTD_MAGIC = 0xFD2FB528
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


class ArchiveError(ValueError):
    """A refused archive (or pack input). The message names the archive and, when there is
    one, the member; ``exit_code`` is the CLI's: 1 refused content, 2 usage / missing file."""

    def __init__(self, message: str, *, archive: str | os.PathLike | None = None, member: str | None = None,
                 exit_code: int = 1):
        self.archive = None if archive is None else str(archive)
        self.member = member
        self.reason = message
        self.exit_code = exit_code
        where = "".join([f"{self.archive}: " if self.archive else "", f"member {member!r}: " if member is not None else ""])
        super().__init__(where + message)


# =========================================================================== names


#: how an archive refusal words each name problem of :func:`edge_runtime.safe_extract.name_problem`
_NAME_WORDS = {
    "empty": "empty member name",
    "nul": "NUL byte in the name",
    "not_utf8": "the name is not valid UTF-8",
    "control": "control character in the name",
    "backslash": "backslash in the name (a Windows path separator; path traversal risk)",
    "absolute": "absolute path",
    "drive": "drive-letter path",
    "traversal": "path traversal ('..' component)",
    "noncanonical": "non-canonical path (empty or '.' component)",
}
#: how an archive refusal words a member type of edge_runtime.safe_extract's zip/tar_entry_kind
_KIND_WORDS = {
    "dir": "a directory entry; archives hold regular files only; refused",
    "device": "a device node; refused",
    "fifo": "a FIFO; refused",
    "socket": "a socket; refused",
    "special": "not a regular file; refused",
}


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a member name (``None`` when it can): the edge runtime's rules
    (:func:`edge_runtime.safe_extract.name_problem`), in this module's words."""
    code = name_problem(name)
    return None if code is None else _NAME_WORDS[code]


def _is_temp(name: str) -> bool:
    return bool(_TEMP_RE.search(name)) or name.endswith(TMP_SUFFIX)


# =========================================================================== anonymisation


def _pseudonym(value: Any, salt: str) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return ANON_PREFIX + hashlib.sha256(f"{salt}\x00{text}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _sensitive_tag_prefix(tag: str) -> str | None:
    low = tag.lower()
    for p in SENSITIVE_TAG_PREFIXES:
        if low.startswith(p):
            return tag[: len(p)]
    return None


def anonymize_metadata(meta: dict[str, Any], *, mode: str | None = "hash", salt: str = "",
                       origin_tag: str | None = None) -> dict[str, Any]:
    """A copy of episode metadata with sensitive keys and tags hashed (``mode="hash"``) or
    removed (``"drop"``; ``None``: leave them), and ``origin_tag`` appended to the top-level
    ``tags``. See the module docstring for the exact keys and tag prefixes."""
    if mode not in (None, "hash", "drop"):
        raise ValueError(f"anonymisation mode must be 'hash' or 'drop', got {mode!r}")

    def tags(v: list[Any]) -> list[Any]:
        out = []
        for t in v:
            pre = _sensitive_tag_prefix(t) if isinstance(t, str) and mode else None
            if pre is None:
                out.append(t)
            elif mode == "hash":
                out.append(pre + _pseudonym(t[len(pre):], salt))
        return out

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if mode and isinstance(k, str) and k.lower().replace("-", "_") in SENSITIVE_KEYS:
                    if mode == "hash":
                        out[k] = None if v is None else _pseudonym(v, salt)
                elif k == "tags" and isinstance(v, list):
                    out[k] = tags(v)
                else:
                    out[k] = walk(v)
            return out
        if isinstance(obj, list):
            return [walk(x) for x in obj]
        return obj

    if not isinstance(meta, dict):
        raise ValueError(f"episode metadata is a JSON object, got {type(meta).__name__}")
    new = walk(meta)
    if origin_tag:
        t = new.get("tags", [])
        if not isinstance(t, list):
            raise ValueError(f"'tags' is a list, got {type(t).__name__}")
        if origin_tag not in t:
            new["tags"] = [*t, origin_tag]
    return new


def _metadata_json_bytes(meta: Any) -> bytes:
    # the capture layout's own formatting (what EpisodeDirWriter.write_metadata writes)
    return metadata_bytes(meta)


def _rewrite_file(kind: str, data: bytes, rewrite: Callable[[dict], dict]) -> bytes | None:
    """Rewritten bytes of a metadata-bearing file; ``None`` when the file holds no episode
    metadata after all (a ``.json`` that is not a single-file episode). Raises ``ValueError``
    when it cannot be parsed."""
    if kind == "metadata.json":
        return _metadata_json_bytes(rewrite(json.loads(data)))
    if kind == "json":
        doc = json.loads(data)
        if not (isinstance(doc, dict) and isinstance(doc.get("metadata"), dict) and isinstance(doc.get("steps"), list)):
            return None
        doc = dict(doc, metadata=rewrite(doc["metadata"]))
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if kind in ("jsonl", "jsonl.zst"):
        if kind == "jsonl.zst":
            dobj = zstandard.ZstdDecompressor().decompressobj()
            data = dobj.decompress(data)
            if not dobj.eof:
                raise ValueError("truncated zstd stream")
        nl = data.find(b"\n")
        first, rest = (data, b"") if nl < 0 else (data[:nl], data[nl:])
        head = json.loads(first)
        if not (isinstance(head, dict) and isinstance(head.get("metadata"), dict)):
            raise ValueError("the first line is not a {\"metadata\": {...}} record")
        line = json.dumps({**head, "metadata": rewrite(head["metadata"])}, ensure_ascii=False, separators=(",", ":"))
        out = line.encode("utf-8") + rest
        if kind == "jsonl.zst":
            out = zstandard.ZstdCompressor(level=3).compress(out)
        return out
    raise AssertionError(kind)


# =========================================================================== pack


class _Entry:
    __slots__ = ("rel", "path", "kind", "size", "sha256", "mtime", "mode", "rewritten")

    def __init__(self, rel: str, path: Path, kind: str | None):
        self.rel, self.path, self.kind = rel, path, kind
        self.size = 0
        self.sha256 = ""
        self.mtime = 0.0
        self.mode = 0o644
        self.rewritten: bytes | None = None


def _is_episode_dir(p: Path) -> bool:
    return (p / "metadata.json").is_file() or (p / "steps").is_dir()


def _collect(sources: Sequence[Path], exclude: set[str]) -> tuple[dict[str, Path], list[str]]:
    """``{relative name: file}`` of every regular file under the sources, and skipped names."""
    files: dict[str, Path] = {}
    skipped: list[str] = []

    def add(rel: str, p: Path) -> None:
        prob = _name_problem(rel)
        if prob:
            raise ArchiveError(f"{p}: cannot be archived: {prob}")
        old = files.get(rel)
        if old is not None and os.path.realpath(old) != os.path.realpath(p):
            raise ArchiveError(f"{p} and {old} would both be archived as {rel!r}; pack them separately", exit_code=2)
        files[rel] = p

    def walk(d: Path, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            raise ArchiveError(f"{d}: cannot list: {e.strerror or e}", exit_code=2) from None
        for e in entries:
            p = Path(e.path)
            rel = f"{prefix}{e.name}"
            if e.is_symlink():
                raise ArchiveError(f"{p}: a symlink (-> {os.readlink(p)}); pack does not follow links: "
                                   "copy the target in or remove the link")
            if e.is_dir(follow_symlinks=False):
                walk(p, rel + "/")
            elif e.is_file(follow_symlinks=False):
                if _is_temp(e.name) or os.path.realpath(p) in exclude:
                    skipped.append(str(p))
                else:
                    add(rel, p)
            else:
                raise ArchiveError(f"{p}: not a regular file (socket, FIFO or device); refusing to pack it")

    for src in sources:
        src = Path(src)
        if not src.exists():
            raise ArchiveError(f"{src}: no such file or folder", exit_code=2)
        if src.is_dir():
            if _is_episode_dir(src):
                name = src.resolve().name
                walk(src, name + "/")
            else:
                walk(src, "")
        elif src.is_file():
            if _is_temp(src.name):
                skipped.append(str(src))
            else:
                add(src.name, src)
        else:
            raise ArchiveError(f"{src}: not a regular file or folder", exit_code=2)
    return files, skipped


def _episode_dirs(rels: Iterable[str]) -> set[str]:
    dirs = set()
    for rel in rels:
        parts = rel.split("/")
        if len(parts) >= 2 and parts[-1] == "metadata.json":
            dirs.add("/".join(parts[:-1]))
        if len(parts) >= 3 and parts[-2] == "steps":
            dirs.add("/".join(parts[:-2]))
    return dirs


def _inside(rel: str, dirs: set[str]) -> bool:
    parts = rel.split("/")
    return any("/".join(parts[:i]) in dirs for i in range(1, len(parts)))


def _single_file_kind(rel: str) -> str | None:
    name = rel.rsplit("/", 1)[-1]
    if name.endswith(".jsonl.zst"):
        return "jsonl.zst"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json") and name not in ("schema.json", MANIFEST_NAME):
        return "json"
    return None


def _open_nofollow(p: Path) -> int:
    return os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))


class _HashingReader(io.RawIOBase):
    """Reads a file for tarfile/zipfile, hashing what it hands out."""

    def __init__(self, fd: int):
        self.fd = fd
        self.h = hashlib.sha256()
        self.n = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = os.read(self.fd, _CHUNK if n is None or n < 0 else min(n, _CHUNK))
        self.h.update(data)
        self.n += len(data)
        return data

    def readinto(self, b: Any) -> int:  # pragma: no cover - tarfile/zipfile call read()
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _created_at(created_at: str | None) -> str:
    if created_at:
        return created_at
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    t = float(sde) if sde and sde.isdigit() else time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _format_of(out: Path, fmt: str | None) -> str:
    if fmt is None:
        name = out.name.lower()
        if name.endswith((".tar.zst", ".tzst")):
            return "tar.zst"
        if name.endswith(".zip"):
            return "zip"
        raise ArchiveError(f"{out}: cannot tell the archive format from the name; use .tar.zst or .zip "
                           "(or pass format=)", exit_code=2)
    if fmt not in ("tar.zst", "zip"):
        raise ArchiveError(f"unknown archive format {fmt!r}: use 'tar.zst' or 'zip'", exit_code=2)
    return fmt


def pack(sources: Sequence[str | os.PathLike], out: str | os.PathLike, *, format: str | None = None, level: int = 3,
         anonymize: bool = False, anonymize_mode: str = "hash", origin_tag: str | None = None,
         salt: str | None = None, normalize: bool = True, created_at: str | None = None, threads: int = 0,
         durable: bool = True) -> dict[str, Any]:
    """Archive every file under ``sources`` (episode folders, folders of them, single files)
    into ``out`` (``.tar.zst`` or ``.zip``, or ``format=``), ``MANIFEST.json`` first. Returns
    the summary (the manifest minus its member list, plus ``archive``, ``archive_bytes``,
    ``skipped`` temp files and ``incomplete`` episodes). ``level``: zstd level (deflate: clamped
    to 1..9). ``threads``: zstd worker threads (0: single-threaded, reproducible bytes). See the
    module docstring for anonymisation; raises :class:`ArchiveError`."""
    out = Path(out)
    fmt = _format_of(out, format)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise ArchiveError("nothing to pack: no sources given", exit_code=2)
    if anonymize and anonymize_mode not in ("hash", "drop"):
        raise ArchiveError(f"anonymize_mode must be 'hash' or 'drop', got {anonymize_mode!r}", exit_code=2)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    files, skipped = _collect([Path(s) for s in sources], {os.path.realpath(out), os.path.realpath(tmp)})
    if not files:
        raise ArchiveError(f"no files under {', '.join(map(str, sources))}", exit_code=2)

    rels = sorted(files)
    ep_dirs = _episode_dirs(rels)
    singles = {r for r in rels if not _inside(r, ep_dirs) and _single_file_kind(r)}
    salt_used = salt if salt is not None else secrets.token_hex(16)
    rewriting = anonymize or bool(origin_tag)

    def rewrite(meta: dict) -> dict:
        return anonymize_metadata(meta, mode=anonymize_mode if anonymize else None, salt=salt_used, origin_tag=origin_tag)

    entries: list[_Entry] = []
    incomplete: list[str] = []
    for rel in rels:
        name = rel.rsplit("/", 1)[-1]
        kind = None
        if name == "metadata.json" and "/".join(rel.split("/")[:-1]) in ep_dirs:
            kind = "metadata.json"
        elif rel in singles:
            kind = _single_file_kind(rel)
        entries.append(_Entry(rel, files[rel], kind))

    # ---- pass 1: sizes and hashes (the manifest goes first)
    for e in entries:
        try:
            st = os.lstat(e.path)
            if not stat.S_ISREG(st.st_mode):
                raise ArchiveError(f"{e.path}: no longer a regular file; refusing to pack it")
            e.mtime, e.mode = st.st_mtime, stat.S_IMODE(st.st_mode)
            data = b""
            if e.kind is not None and (rewriting or e.kind == "metadata.json"):
                data = Path(e.path).read_bytes()
            if e.kind == "metadata.json" and b'"recording"' in data:
                try:
                    meta = json.loads(data)
                except ValueError:
                    meta = None
                if isinstance(meta, dict) and meta.get("status") == "recording":
                    incomplete.append(e.rel.rsplit("/", 1)[0])
            if rewriting and e.kind is not None:
                try:
                    new = _rewrite_file(e.kind, data, rewrite)
                except (ValueError, UnicodeDecodeError, zstandard.ZstdError) as err:
                    if e.kind == "json" and not anonymize:
                        new = None  # only adding an origin tag: leave a .json we cannot read as it is
                    else:
                        raise ArchiveError(f"{e.path}: cannot rewrite its episode metadata ({err}); refusing to "
                                           "archive it unanonymised") from None
                if new is not None:
                    e.rewritten = new
                    e.size, e.sha256 = len(new), hashlib.sha256(new).hexdigest()
                    continue
            h = hashlib.sha256()
            n = 0
            fd = _open_nofollow(e.path)
            try:
                while chunk := os.read(fd, _CHUNK):
                    h.update(chunk)
                    n += len(chunk)
            finally:
                os.close(fd)
            e.size, e.sha256 = n, h.hexdigest()
        except OSError as err:
            raise ArchiveError(f"{e.path}: cannot read: {err.strerror or err}") from None

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created_at": _created_at(created_at),
        "rldskit_version": _version(),
        "episodes": len(ep_dirs) + len(singles),
        "files": len(entries),
        "bytes": sum(e.size for e in entries),
        "origin_tag": origin_tag,
        "anonymization": ({"enabled": True, "mode": anonymize_mode, "salt": "provided" if salt is not None else "random",
                           "keys": sorted(SENSITIVE_KEYS), "tag_prefixes": list(SENSITIVE_TAG_PREFIXES),
                           "files_rewritten": sum(e.rewritten is not None for e in entries)}
                          if anonymize else {"enabled": False}),
        "members": [{"path": e.rel, "size": e.size, "sha256": e.sha256, **({"anonymized": True} if anonymize and e.rewritten is not None else {})}
                    for e in entries],
    }
    manifest_bytes = json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8") + b"\n"

    # ---- pass 2: stream into <out>.tmp-<pid>, then rename
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as fh:
            if fmt == "tar.zst":
                _write_tar_zst(fh, manifest_bytes, entries, level=level, normalize=normalize, threads=threads)
            else:
                _write_zip(fh, manifest_bytes, entries, level=level, normalize=normalize)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(out.parent)
    summary = {k: v for k, v in manifest.items() if k != "members"}
    summary.update(archive=str(out), archive_format=fmt, archive_bytes=out.stat().st_size, skipped=skipped,
                   incomplete=sorted(incomplete))
    return summary


def _version() -> str:
    from rldskit import __version__

    return __version__


@contextmanager
def _member_source(e: _Entry):
    """A reader for one entry's (pass-2) bytes; checks on exit that they match pass 1."""
    if e.rewritten is not None:
        yield io.BytesIO(e.rewritten)
        return
    try:
        fd = _open_nofollow(e.path)
    except OSError as err:
        raise ArchiveError(f"{e.path}: cannot read: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < e.size:
            raise ArchiveError(f"{e.path}: changed while packing (now {st.st_size} bytes, was {e.size}); "
                               "nothing written")
        r = _HashingReader(fd)
        yield r
        if r.n != e.size or r.h.hexdigest() != e.sha256:
            raise ArchiveError(f"{e.path}: changed while packing (its sha256 no longer matches); nothing written")
    finally:
        os.close(fd)


def _write_tar_zst(fh: BinaryIO, manifest: bytes, entries: list[_Entry], *, level: int, normalize: bool,
                   threads: int) -> None:
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, threads=threads)
    with cctx.stream_writer(fh, closefd=False) as zw:
        with tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            def info(name: str, size: int, mtime: float, mode: int) -> tarfile.TarInfo:
                ti = tarfile.TarInfo(name)
                ti.size = size
                ti.type = tarfile.REGTYPE
                ti.mtime = _NORMALIZED_MTIME if normalize else int(mtime)
                ti.mode = 0o644 if normalize else (mode & 0o777)
                if normalize:
                    ti.uid = ti.gid = 0
                    ti.uname = ti.gname = ""
                else:
                    ti.uid, ti.gid = os.getuid(), os.getgid()
                return ti

            tf.addfile(info(MANIFEST_NAME, len(manifest), time.time(), 0o644), io.BytesIO(manifest))
            for e in entries:
                with _member_source(e) as src:
                    tf.addfile(info(e.rel, e.size, e.mtime, e.mode), src)


def _write_zip(fh: BinaryIO, manifest: bytes, entries: list[_Entry], *, level: int, normalize: bool) -> None:
    lvl = min(max(int(level), 1), 9)

    def info(name: str, mtime: float, mode: int) -> zipfile.ZipInfo:
        t = _NORMALIZED_MTIME if normalize else max(mtime, _NORMALIZED_MTIME)
        zi = zipfile.ZipInfo(name, date_time=time.gmtime(t)[:6])
        zi.external_attr = (stat.S_IFREG | (0o644 if normalize else (mode & 0o777))) << 16
        zi.create_system = 3
        if name.lower().endswith(_STORED_SUFFIXES):
            zi.compress_type = zipfile.ZIP_STORED
        else:
            zi.compress_type = zipfile.ZIP_DEFLATED
            if hasattr(zi, "compress_level"):
                zi.compress_level = lvl  # pragma: no cover - Python >= 3.13
            else:
                zi._compresslevel = lvl
        return zi

    with zipfile.ZipFile(fh, "w", allowZip64=True) as zf:
        zi = info(MANIFEST_NAME, 0, 0o644)
        zf.writestr(zi, manifest)
        for e in entries:
            zi = info(e.rel, e.mtime, e.mode)
            zi.file_size = e.size
            with _member_source(e) as src, zf.open(zi, "w", force_zip64=e.size > 0x7FFFFFFF) as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)


# =========================================================================== reading


_CORRUPT = (tarfile.TarError, zstandard.ZstdError, *ZIP_READ_ERRORS)


class _GuardedTarInfo(tarfile.TarInfo):
    """Refuses oversized extended headers before tarfile reads them into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile):  # noqa: D401 - tarfile hook
        if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                         tarfile.SOLARIS_XHDTYPE) and self.size > MAX_TAR_HEADER:
            raise ArchiveError(f"a tar extended header of {self.size} bytes (limit {MAX_TAR_HEADER}); refused")
        return super()._proc_member(tarfile_)


class _Counted(io.RawIOBase):
    """The decompressed tar stream, counted against the byte and ratio limits."""

    def __init__(self, raw: Any, scan: _Scan):
        self.raw = raw
        self.scan = scan

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(_CHUNK if n is None or n < 0 else min(n, _CHUNK))
        self.scan.count(len(data))
        return data


class _Scan:
    """One streaming pass over an archive: checks everything, writes members under ``dest``
    (``None``: hash only)."""

    def __init__(self, archive: Path, dest: Path | None, *, max_bytes: int, max_ratio: float, max_members: int,
                 durable: bool):
        self.archive = archive
        self.dest = dest
        self.max_bytes = int(max_bytes)
        self.max_ratio = float(max_ratio)
        self.max_members = int(max_members)
        self.durable = durable
        self.archive_size = archive.stat().st_size
        self.budget = ExpansionBudget(self.max_bytes, max_ratio=self.max_ratio, compressed=self.archive_size,
                                      ratio_floor=RATIO_FLOOR)  # decompressed bytes so far
        self.current: str | None = None  # member being read, for messages
        self.manifest: dict[str, Any] = {}
        self.expected: dict[str, tuple[int, str]] = {}
        self.seen: set[str] = set()
        self.dirs: set[Path] = set()

    # ---- helpers
    def refuse(self, why: str, member: str | None = None) -> ArchiveError:
        return ArchiveError(why, archive=self.archive, member=member)

    def count(self, n: int) -> None:
        over = self.budget.add(n)
        if over == "max_bytes":
            raise self.refuse(f"expands to more than max_bytes={self.max_bytes} bytes; refused (decompression bomb?)",
                              self.current)
        if over == "max_ratio":
            raise self.refuse(f"expands more than max_ratio={self.max_ratio:g} times the archive's "
                              f"{self.archive_size} bytes; refused (decompression bomb?)", self.current)

    @contextmanager
    def reading(self, member: str | None):
        """Turn what a corrupt archive makes the readers raise into an ArchiveError."""
        try:
            yield
        except ArchiveError as e:
            if e.archive is None:  # raised inside tarfile (_GuardedTarInfo): add the archive's name
                raise self.refuse(e.reason, e.member) from None
            raise
        except MemoryError:
            raise self.refuse("a header or member too large to read; refused", member) from None
        except _CORRUPT as e:
            what = "truncated or corrupt archive" if member is None else "truncated or corrupt member data"
            raise self.refuse(f"{what}: {type(e).__name__}: {e}", member) from None

    def check_manifest(self, data: bytes) -> None:
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise self.refuse(f"not valid JSON: {e}", MANIFEST_NAME) from None
        if not isinstance(doc, dict) or not str(doc.get("format", "")).startswith("rldskit.archive/"):
            raise self.refuse(f"not an rldskit archive manifest (format {doc.get('format') if isinstance(doc, dict) else None!r})",
                              MANIFEST_NAME)
        members = doc.get("members")
        if not isinstance(members, list):
            raise self.refuse("'members' is not a list", MANIFEST_NAME)
        if len(members) > self.max_members:
            raise self.refuse(f"lists {len(members)} members, more than max_members={self.max_members}; refused",
                              MANIFEST_NAME)
        expected: dict[str, tuple[int, str]] = {}
        for m in members:
            if not (isinstance(m, dict) and isinstance(m.get("path"), str) and type(m.get("size")) is int
                    and m["size"] >= 0 and isinstance(m.get("sha256"), str) and _SHA_RE.match(m["sha256"])):
                raise self.refuse(f"malformed entry {str(m)[:200]} (needs path, size >= 0, sha256)", MANIFEST_NAME)
            p = m["path"]
            prob = _name_problem(p)
            if prob:
                raise self.refuse(f"lists {p!r}: {prob}; refused", MANIFEST_NAME)
            if p == MANIFEST_NAME:
                raise self.refuse(f"lists itself ({p!r}) as a member", MANIFEST_NAME)
            if p in expected:
                raise self.refuse(f"lists {p!r} twice (duplicate member)", MANIFEST_NAME)
            expected[p] = (m["size"], m["sha256"])
        clash = path_clashes(expected)
        if clash:
            raise self.refuse(f"lists {clash[0][0]!r} both as a file and as a folder", MANIFEST_NAME)
        declared = sum(s for s, _ in expected.values())
        if declared > self.max_bytes:
            raise self.refuse(f"declares {declared} bytes, more than max_bytes={self.max_bytes}; refused "
                              "(decompression bomb?)", MANIFEST_NAME)
        self.manifest, self.expected = doc, expected

    def check_member(self, name: str, size: int) -> tuple[int, str]:
        """Name, duplicate and manifest checks for one regular-file member (type checked by the caller)."""
        prob = _name_problem(name)
        if prob:
            raise self.refuse(f"{prob}; refused", name)
        if name in self.seen or name == MANIFEST_NAME:
            raise self.refuse("duplicate member (the name appears twice in the archive); refused", name)
        self.seen.add(name)
        if name not in self.expected:
            raise self.refuse(f"not listed in {MANIFEST_NAME}; refused", name)
        want_size, sha = self.expected[name]
        if size != want_size:
            raise self.refuse(f"is {size} bytes, {MANIFEST_NAME} says {want_size}; refused", name)
        return want_size, sha

    def copy(self, name: str, size: int, sha: str, read: Callable[[int], bytes], *, counted_here: bool) -> None:
        """Stream one member to ``dest`` (if any), hashing; refuses a size or sha256 mismatch."""
        self.current = name
        fd = None
        if self.dest is not None:
            target = self.dest / name
            parent = target.parent
            if parent not in self.dirs:
                parent.mkdir(parents=True, exist_ok=True)
                p = parent
                while p != self.dest and p not in self.dirs:
                    self.dirs.add(p)
                    p = p.parent
            fd = create_member_file(target, 0o666)
        try:
            h = hashlib.sha256()
            n = 0
            while True:
                with self.reading(name):
                    chunk = read(_CHUNK)
                if not chunk:
                    break
                n += len(chunk)
                if counted_here:
                    self.count(len(chunk))
                if n > size:
                    raise self.refuse(f"holds more than the {size} bytes listed; refused", name)
                h.update(chunk)
                if fd is not None:
                    write_all(fd, chunk)
            if n != size:
                raise self.refuse(f"truncated: {n} of {size} bytes", name)
            if h.hexdigest() != sha:
                raise self.refuse(f"sha256 mismatch: {h.hexdigest()}, {MANIFEST_NAME} says {sha}; refused", name)
            if fd is not None and self.durable:
                os.fsync(fd)
        finally:
            if fd is not None:
                os.close(fd)
        self.current = None

    def finish(self) -> dict[str, Any]:
        missing = sorted(self.expected.keys() - self.seen)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise self.refuse(f"listed in {MANIFEST_NAME} but not in the archive{more}; refused "
                              "(truncated or incomplete archive?)", missing[0])
        if self.dest is not None and self.durable:
            for d in sorted(self.dirs, key=lambda p: -len(p.parts)):
                fsync_dir(d)
            fsync_dir(self.dest)
        m = self.manifest
        return {"archive": str(self.archive), "archive_bytes": self.archive_size, "format": m.get("format"),
                "episodes": m.get("episodes"), "files": len(self.expected), "bytes": sum(s for s, _ in self.expected.values()),
                "created_at": m.get("created_at"), "rldskit_version": m.get("rldskit_version"),
                "origin_tag": m.get("origin_tag"), "anonymization": m.get("anonymization")}

    def manifest_cap(self) -> int:
        return 65536 + 1024 * self.max_members

    # ---- tar.zst
    def zstd_frames(self, fh: BinaryIO) -> None:
        """Walk the zstd frame structure (headers and block sizes, no decompression): refuses a
        stream cut inside a frame, and bytes after the last frame."""
        size = self.archive_size
        pos = 0
        frames = 0

        def need(n: int, what: str) -> bytes:
            fh.seek(pos)
            b = fh.read(n)
            if len(b) < n:
                raise self.refuse(f"truncated archive: the zstd stream ends inside {what} (at byte {size} of the file)")
            return b

        while pos < size:
            magic = int.from_bytes(need(4, "a frame header"), "little")
            if magic & 0xFFFFFFF0 == 0x184D2A50:  # skippable frame
                pos += 8 + int.from_bytes(need(8, "a skippable frame")[4:], "little")
                if pos > size:
                    raise self.refuse("truncated archive: the zstd stream ends inside a skippable frame")
                continue
            if magic != _ZSTD_MAGIC:
                if frames == 0:
                    raise self.refuse("not a zstd stream (bad magic bytes)")
                raise self.refuse(f"corrupt archive: {size - pos} unexpected bytes after the zstd frame at byte {pos}")
            fhd = need(5, "a frame header")[4]
            if fhd & 0x08:
                raise self.refuse(f"corrupt archive: reserved bit set in the zstd frame header at byte {pos}")
            single = (fhd >> 5) & 1
            pos += 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + ((1 if single else 0), 2, 4, 8)[fhd >> 6]
            while True:
                bh = int.from_bytes(need(3, "a block header"), "little")
                btype, bsize = (bh >> 1) & 3, bh >> 3
                if btype == 3:
                    raise self.refuse(f"corrupt archive: reserved zstd block type at byte {pos}")
                pos += 3 + (1 if btype == 1 else bsize)
                if pos > size:
                    raise self.refuse("truncated archive: the zstd stream ends inside a block")
                if bh & 1:
                    break
            if fhd & 0x04:
                pos += 4
                if pos > size:
                    raise self.refuse("truncated archive: the zstd stream ends before its frame checksum")
            frames += 1
        if frames == 0:
            raise self.refuse("empty archive")
        fh.seek(0)

    def run_tar_zst(self, fh: BinaryIO) -> None:
        self.zstd_frames(fh)
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_size=1 << 17, read_across_frames=True,
                                                            closefd=False)
        counted = _Counted(reader, self)
        with self.reading(None):
            tf = tarfile.open(fileobj=counted, mode="r|", tarinfo=_GuardedTarInfo)
        it = iter(tf)
        first = True
        members = 0
        while True:
            with self.reading(None):
                ti = next(it, None)
            if ti is None:
                break
            members += 1
            name = ti.name
            if members > self.max_members + 1:
                raise self.refuse(f"more than max_members={self.max_members} members; refused", name)
            self.tar_type(ti)
            if first:
                if name != MANIFEST_NAME:
                    raise self.refuse(f"the first member is {name!r}, not {MANIFEST_NAME} (not an rldskit archive?)")
                if ti.size > self.manifest_cap():
                    raise self.refuse(f"{ti.size} bytes, more than {self.manifest_cap()}; refused", MANIFEST_NAME)
                with self.reading(MANIFEST_NAME):
                    data = tf.extractfile(ti).read()
                if len(data) != ti.size:
                    raise self.refuse("truncated", MANIFEST_NAME)
                self.check_manifest(data)
                first = False
                continue
            size, sha = self.check_member(name, ti.size)
            with self.reading(name):
                f = tf.extractfile(ti)
            self.copy(name, size, sha, f.read, counted_here=False)
        if first:
            raise self.refuse(f"no {MANIFEST_NAME} (empty archive?)")
        self.current = None
        with self.reading(None):  # the rest of the stream: end-of-archive padding; lets zstd check its checksum
            while counted.read(_CHUNK):
                pass

    def tar_type(self, ti: tarfile.TarInfo) -> None:
        name = ti.name
        kind = tar_entry_kind(ti)
        if kind == "symlink":
            raise self.refuse(f"a symlink to {ti.linkname!r}; archives hold regular files only, all links are refused", name)
        if kind == "hardlink":
            raise self.refuse(f"a hard link to {ti.linkname!r}; archives hold regular files only, all links are refused", name)
        if kind == "special":
            raise self.refuse(f"not a regular file (tar type {ti.type!r}); refused", name)
        if kind != "file":
            raise self.refuse(_KIND_WORDS[kind], name)

    # ---- zip
    def run_zip(self, fh: BinaryIO) -> None:
        with self.reading(None):
            zf = zipfile.ZipFile(fh)
            infos = zf.infolist()
        if not infos:
            raise self.refuse(f"no {MANIFEST_NAME} (empty archive?)")
        if len(infos) > self.max_members + 1:
            raise self.refuse(f"{len(infos)} members, more than max_members={self.max_members}; refused")
        for zi in infos:
            self.zip_type(zf, zi)
        first = infos[0]
        if first.filename != MANIFEST_NAME:
            raise self.refuse(f"the first member is {first.filename!r}, not {MANIFEST_NAME} (not an rldskit archive?)")
        if first.file_size > self.manifest_cap():
            raise self.refuse(f"{first.file_size} bytes, more than {self.manifest_cap()}; refused", MANIFEST_NAME)
        with self.reading(MANIFEST_NAME):
            with zf.open(first) as f:
                data = f.read(first.file_size + 1)
        self.count(len(data))
        if len(data) != first.file_size:
            raise self.refuse("size differs from its header", MANIFEST_NAME)
        self.check_manifest(data)
        plan = []
        declared = 0
        for zi in infos[1:]:
            plan.append((zi, *self.check_member(zi.filename, zi.file_size)))
            declared += zi.file_size
        self.seen = set()  # check_member marked them; copying marks them again below
        missing = sorted(self.expected.keys() - {zi.filename for zi in infos[1:]})
        if missing:
            raise self.refuse(f"listed in {MANIFEST_NAME} but not in the archive; refused", missing[0])
        if exceeds_ratio(declared, self.archive_size, self.max_ratio, RATIO_FLOOR):
            raise self.refuse(f"declares {declared} bytes, more than max_ratio={self.max_ratio:g} times the archive's "
                              f"{self.archive_size} bytes; refused (decompression bomb?)")
        for zi, size, sha in plan:
            self.seen.add(zi.filename)
            with self.reading(zi.filename):
                f = zf.open(zi)
            with f:
                self.copy(zi.filename, size, sha, f.read, counted_here=True)

    def zip_type(self, zf: zipfile.ZipFile, zi: zipfile.ZipInfo) -> None:
        name = zi.filename
        kind = zip_entry_kind(zi)
        if kind == "symlink":
            target = "?"
            if zi.file_size <= 4096:
                with self.reading(name), zf.open(zi) as f:
                    target = f.read(4097).decode("utf-8", "replace")
            raise self.refuse(f"a symlink to {target!r}; archives hold regular files only, all links are refused", name)
        if kind != "file":
            raise self.refuse(_KIND_WORDS[kind], name)
        problem = zip_entry_problem(zi)
        if problem == "encrypted":
            raise self.refuse("encrypted; refused", name)
        if problem == "compression":
            raise self.refuse(f"unsupported compression method {zi.compress_type}; refused", name)
        if problem == "negative_size":
            raise self.refuse("declares a negative size; refused", name)


def _kind(archive: Path) -> str:
    with open(archive, "rb") as f:
        head = f.read(4)
    if len(head) == 4 and int.from_bytes(head, "little") == _ZSTD_MAGIC:
        return "tar.zst"
    if head in _ZIP_MAGICS:
        return "zip"
    raise ArchiveError("not a .tar.zst or .zip archive (unknown magic bytes); refused", archive=archive)


def _scan(archive: Path, dest: Path | None, **limits: Any) -> dict[str, Any]:
    if not archive.is_file():
        raise ArchiveError("no such archive", archive=archive, exit_code=2)
    kind = _kind(archive)
    sc = _Scan(archive, dest, **limits)
    with open(archive, "rb") as fh:
        if kind == "tar.zst":
            sc.run_tar_zst(fh)
        else:
            sc.run_zip(fh)
    summary = sc.finish()
    summary["archive_format"] = kind
    return summary


def verify(archive: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES, max_ratio: float = DEFAULT_MAX_RATIO,
           max_members: int = DEFAULT_MAX_MEMBERS) -> dict[str, Any]:
    """Check an archive without extracting it: every check :func:`unpack` makes, every
    sha256 recomputed from the stream. Returns the summary; raises :class:`ArchiveError`."""
    return _scan(Path(archive), None, max_bytes=max_bytes, max_ratio=max_ratio, max_members=max_members, durable=False)


def unpack(archive: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
           max_bytes: int = DEFAULT_MAX_BYTES, max_ratio: float = DEFAULT_MAX_RATIO,
           max_members: int = DEFAULT_MAX_MEMBERS, durable: bool = True) -> dict[str, Any]:
    """Extract ``archive`` into the folder ``out``, verifying everything (see the module
    docstring); all or nothing. Returns the summary (with ``out``); raises :class:`ArchiveError`."""
    archive, out = Path(archive), Path(out)
    if not archive.is_file():
        raise ArchiveError("no such archive", archive=archive, exit_code=2)
    if out.is_symlink():
        raise ArchiveError(f"{out} is a symlink; give the real folder", archive=archive, exit_code=2)
    replace = False
    if out.exists():
        if not out.is_dir():
            raise ArchiveError(f"{out} exists and is not a folder", archive=archive, exit_code=2)
        if any(out.iterdir()):
            if not overwrite:
                raise ArchiveError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it",
                                   archive=archive, exit_code=2)
            replace = True
    parent = out.absolute().parent
    created: list[Path] = []
    p = parent
    while not p.exists():
        created.append(p)
        p = p.parent
    for d in reversed(created):
        d.mkdir()
    staging = _fresh_dir(parent, f".{out.name}.unpack-{os.getpid()}-")
    try:
        summary = _scan(archive, staging, max_bytes=max_bytes, max_ratio=max_ratio, max_members=max_members,
                        durable=durable)
        if replace:
            old = _fresh_name(parent, f".{out.name}.old-{os.getpid()}-")
            os.rename(out, old)
            try:
                os.rename(staging, out)
            except BaseException:
                os.rename(old, out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out)  # onto nothing, or onto an empty folder
        if durable:
            fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break
        raise
    summary["out"] = str(out)
    return summary


def _fresh_name(parent: Path, prefix: str) -> Path:
    while True:
        p = parent / f"{prefix}{secrets.token_hex(4)}"
        if not os.path.lexists(p):
            return p


def _fresh_dir(parent: Path, prefix: str) -> Path:
    while True:
        p = _fresh_name(parent, prefix)
        try:
            p.mkdir()
            return p
        except FileExistsError:  # pragma: no cover - a race on a random name
            continue


# =========================================================================== CLI


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _cli_error(e: object, code: int) -> int:
    print(f"rldskit: error: {e}", file=sys.stderr)
    return code


def _run(fn: Callable[[], dict[str, Any]], as_json: bool, line: Callable[[dict[str, Any]], str]) -> int:
    try:
        summary = fn()
    except ArchiveError as e:
        return _cli_error(e, e.exit_code)
    except OSError as e:
        return _cli_error(f"{getattr(e, 'filename', None) or ''}: {e.strerror or e}".lstrip(": "), 2)
    if as_json:
        print(json.dumps(summary, indent=1))
    else:
        print(line(summary))
    return 0


def cmd_pack(args: Any) -> int:
    def line(s: dict[str, Any]) -> str:
        msg = (f"packed {s['episodes']} episodes ({s['files']} files, {_human(s['bytes'])}) into {s['archive']} "
               f"({_human(s['archive_bytes'])})")
        if s["anonymization"]["enabled"]:
            msg += f"; metadata anonymised ({s['anonymization']['mode']}, {s['anonymization']['files_rewritten']} files)"
        if s["skipped"]:
            msg += f"; skipped {len(s['skipped'])} temp files"
        for ep in s["incomplete"]:
            msg += f"\nwarning: {ep} is still recording (status 'recording'); packed as it is"
        return msg

    return _run(lambda: pack(args.sources, args.out, format=args.format, level=args.level, anonymize=args.anonymize,
                             anonymize_mode=args.anonymize_mode, origin_tag=args.origin_tag, salt=args.salt),
                args.json, line)


def cmd_unpack(args: Any) -> int:
    return _run(lambda: unpack(args.archive, args.out, overwrite=args.overwrite, max_bytes=args.max_bytes,
                               max_ratio=args.max_ratio, max_members=args.max_members),
                args.json, lambda s: (f"unpacked {s['archive']} into {s['out']}: {s['episodes']} episodes, "
                                      f"{s['files']} files, {_human(s['bytes'])}; every sha256 verified"))


def cmd_verify_archive(args: Any) -> int:
    return _run(lambda: verify(args.archive, max_bytes=args.max_bytes, max_ratio=args.max_ratio,
                               max_members=args.max_members),
                args.json, lambda s: (f"{s['archive']}: ok ({s['episodes']} episodes, {s['files']} files, "
                                      f"{_human(s['bytes'])}; every sha256 verified)"))


def register_cli(subparsers: Any) -> None:
    """Add ``pack``, ``unpack`` and ``verify-archive`` to an argparse subparsers object.
    Each sets ``func`` to a handler taking the parsed args and returning the exit code
    (0 ok, 1 refused archive or source content, 2 usage / missing file)."""
    p = subparsers.add_parser("pack", help="archive episodes into one .tar.zst/.zip with a checksummed manifest "
                                           "(optionally anonymised)")
    p.add_argument("sources", nargs="+", help="episode folders, folders of them, or single-file episodes")
    p.add_argument("--out", required=True, help="archive to write (.tar.zst or .zip)")
    p.add_argument("--format", choices=["tar.zst", "zip"], help="default: from the --out suffix")
    p.add_argument("--level", type=int, default=3, help="compression level (zstd; deflate clamped to 1..9)")
    p.add_argument("--anonymize", action="store_true",
                   help="hash or drop operator, device serial and location metadata keys and tags (archive only)")
    p.add_argument("--anonymize-mode", choices=["hash", "drop"], default="hash")
    p.add_argument("--salt", default=os.environ.get("RLDSKIT_ANON_SALT"),
                   help="salt for hashed values (default: $RLDSKIT_ANON_SALT, else random per archive)")
    p.add_argument("--origin-tag", help="tag added to every episode, e.g. origin:pi5")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_pack)

    def limits(sp: Any) -> None:
        sp.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="refuse beyond this many decompressed bytes")
        sp.add_argument("--max-ratio", type=float, default=DEFAULT_MAX_RATIO,
                        help="refuse when decompressed bytes exceed this multiple of the archive size")
        sp.add_argument("--max-members", type=int, default=DEFAULT_MAX_MEMBERS)
        sp.add_argument("--json", action="store_true", help="print the summary as JSON")

    u = subparsers.add_parser("unpack", help="verify and extract an archive (all or nothing; exit 1 if refused)")
    u.add_argument("archive")
    u.add_argument("--out", required=True, help="folder to create (must be absent or empty)")
    u.add_argument("--overwrite", action="store_true", help="replace OUT if it has content (its content is deleted)")
    limits(u)
    u.set_defaults(func=cmd_unpack)

    v = subparsers.add_parser("verify-archive", help="check an archive's members and checksums without extracting")
    v.add_argument("archive")
    limits(v)
    v.set_defaults(func=cmd_verify_archive)
