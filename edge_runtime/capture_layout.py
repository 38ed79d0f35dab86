"""The capture layout ("rldskit.capture/1"): one folder per episode, append-only and crash-safe. The
one implementation, owned by the edge runtime (standard library and numpy only); the edge logger
(:class:`edge_runtime.episode_log.EpisodeLog`), rldskit's :class:`~rldskit.capture.EpisodeLogger` and
rldskit's reader (:mod:`rldskit.formats.capture_dir`) are all built on it.

The layout::

    <root>/schema.json                    the spec, when the writer was given one (the folder describes itself)
    <episode>/metadata.json               "status": "recording" until ended, then "complete" + "end"
    <episode>/steps/000000.jsonl          one JSON object per line, one line per step; a new chunk
    <episode>/steps/001000.jsonl.zst      every ``chunk_steps`` steps, named by its first step; a
                                          closed chunk may be zstd-compressed (off the robot)
    <episode>/frames/<camera>/000000.jpg  one encoded frame per step and camera

Four parts:

* **Names**: :data:`FORMAT`, :data:`METADATA_FILE`, :data:`STEPS_DIR`, :data:`FRAMES_DIR`,
  :data:`SCHEMA_FILE`, :func:`chunk_name`, :func:`frame_name`, :func:`new_episode_id` and
  :func:`check_episode_id`; the byte formats of a step line (:func:`step_to_json_line`) and of the
  metadata (:func:`metadata_bytes`, :func:`recording_metadata`, :func:`finished_metadata`).
* **Writing** (:class:`EpisodeDirWriter`): ``metadata.json`` (status ``recording``) is written
  atomically before ``steps/`` exists; frames are written temp-then-rename *before* the line naming
  them; each line is one ``write(2)`` on an ``O_APPEND`` descriptor; the final metadata replaces the
  old one atomically. A ``kill -9`` at any instant loses at most the step being written (a torn last
  line), and an unfinished episode is recognisable (``status: recording``). A closed chunk may be
  compressed (:func:`compress_chunk`): temp-then-rename and read back, and only then its plain twin
  removed (a copy that does not read back as the same bytes is set aside as ``*.corrupt`` and the
  plain chunk kept: the only readable copy of a step is never deleted).
* **Reading chunks**: :func:`list_chunks` (a chunk present both plain and compressed resolved by
  :func:`pick_twin`), :func:`chunk_bytes` (``.zst`` decompressed; a truncated frame is an error) and
  :func:`complete_prefix` / :func:`step_records` (the rule for what counts as a step: a line that
  parses to a JSON object; an unterminated last line that parses counts too). Frame references in a step line:
  :func:`resolve_frame_path` (never outside the episode folder) and :func:`inline_frame_bytes`
  (``{"$base64": ...}``).
* **Recovery** (:func:`recover_episode_dir`): finish an episode a killed writer left ``recording``,
  keeping every step up to the first torn, corrupt, unreadable or missing one, setting aside (never
  deleting) whatever comes after.

``zstandard`` is not an edge dependency: it is imported only where a ``.zst`` chunk is read or
written, and its absence is :class:`ZstdUnavailable` (an ``ImportError``), never mistaken for damage.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic_io import TMP_SUFFIX, atomic_write, fsync_dir, write_all

__all__ = [
    "FORMAT", "METADATA_FILE", "STEPS_DIR", "FRAMES_DIR", "SCHEMA_FILE", "CHUNK_RE", "CORRUPT_SUFFIX", "ORPHAN_SUFFIX",
    "ZstdUnavailable", "chunk_name", "frame_name", "new_episode_id", "check_episode_id", "json_default",
    "step_to_json_line", "metadata_bytes", "recording_metadata", "finished_metadata", "EpisodeDirWriter",
    "compress_chunk", "set_aside_corrupt", "chunk_bytes", "list_chunks", "pick_twin", "complete_prefix", "step_records",
    "resolve_frame_path", "inline_frame_bytes", "recover_episode_dir",
]

FORMAT = "rldskit.capture/1"
METADATA_FILE = "metadata.json"
STEPS_DIR = "steps"
FRAMES_DIR = "frames"
#: the spec copy at the root of a capture folder
SCHEMA_FILE = "schema.json"
#: a step chunk's name: its first step (6 digits or more), ``.jsonl``, optionally ``.zst``
CHUNK_RE = re.compile(r"^(\d{6,})\.jsonl(\.zst)?$")
#: a step file found bad beside a good copy of the same chunk is renamed ``<name>.corrupt``, never deleted
CORRUPT_SUFFIX = ".corrupt"
#: recovery renames chunks after the last complete step, and the original bytes of a cut chunk, ``<name>.orphan``
ORPHAN_SUFFIX = ".orphan"
#: the zstd level of compressed chunks
ZSTD_LEVEL = 3

_log = logging.getLogger("rldskit.capture")


class ZstdUnavailable(ImportError):
    """A ``.zst`` chunk was to be read or written where the ``zstandard`` package is not installed
    (the robot's case: chunks are only compressed off the robot)."""


def _zstandard(what: Path | str, action: str = "reading") -> Any:
    try:
        import zstandard  # optional: closed chunks are only compressed off the robot
    except ImportError:
        raise ZstdUnavailable(f"{what}: this chunk is zstd-compressed and {action} it needs the zstandard package, "
                              "which is not installed here (decompress it with `zstd -d`, or pip install zstandard)"
                              ) from None
    return zstandard


# =========================================================================== names and byte formats


def chunk_name(first_step: int, compressed: bool = False) -> str:
    """The file name of the chunk starting at ``first_step``: ``000042.jsonl`` (``.jsonl.zst``)."""
    return f"{first_step:06d}.jsonl" + (".zst" if compressed else "")


def frame_name(camera: str, step: int, extension: str) -> str:
    """A frame's path relative to its episode folder: ``frames/<camera>/000042.jpg``."""
    return f"{FRAMES_DIR}/{camera}/{step:06d}{extension}"


def new_episode_id(now: float) -> str:
    """A fresh, sortable episode id: UTC time of ``now`` plus a random suffix (``20260509T120000_1a2b3c4d``)."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + "_" + uuid.uuid4().hex[:8]


def check_episode_id(episode_id: str) -> None:
    """Raise ``ValueError`` unless ``episode_id`` is a plain folder name (no separator, not hidden)."""
    if not episode_id or "/" in episode_id or os.sep in episode_id or episode_id.startswith("."):
        raise ValueError(f"episode_id {episode_id!r} must be a plain folder name")


def json_default(o: Any) -> Any:
    """JSON for what step lines and metadata may hold beyond JSON: numpy arrays and scalars, and
    bytes (as ``{"$base64": ...}``, an inline frame)."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(o)).decode("ascii")}
    raise TypeError(f"cannot write a {type(o).__name__} into a step line")


_ENCODER = json.JSONEncoder(default=json_default, ensure_ascii=False, separators=(",", ":"))


def step_to_json_line(step: Mapping[str, Any]) -> bytes:
    """One nested step dict as a UTF-8 JSON line ending in ``\\n`` (numpy values converted)."""
    return (_ENCODER.encode(step) + "\n").encode("utf-8")


def metadata_bytes(metadata: Mapping[str, Any]) -> bytes:
    """The bytes of ``metadata.json``: JSON with a one-space indent, non-ASCII kept."""
    return json.dumps(metadata, default=json_default, ensure_ascii=False, indent=1).encode("utf-8")


def recording_metadata(schema_name: str, schema_version: str, episode_id: str, start_time: float, *,
                       environment_id: str = "", xr_mode: str = "", control_role: str = "",
                       tags: Sequence[Any] = ()) -> dict[str, Any]:
    """The metadata of an episode that has just started (status ``recording``), in the layout's key
    order; writers add their own fields after these."""
    return {
        "format": FORMAT,
        "schema": {"name": schema_name, "version": schema_version},
        "status": "recording",
        "episode_id": episode_id,
        "environment_id": str(environment_id),
        "xr_mode": str(xr_mode),
        "control_role": str(control_role),
        "tags": [str(t) for t in tags],
        "start_time": float(start_time),
    }


def finished_metadata(metadata: Mapping[str, Any], *, num_steps: int, terminal: bool,
                      end_time: float) -> dict[str, Any]:
    """``metadata`` with status ``complete`` and its end record ``{num_steps, terminal, end_time}``."""
    meta = dict(metadata)
    meta["status"] = "complete"
    meta["end"] = {"num_steps": num_steps, "terminal": terminal, "end_time": float(end_time)}
    return meta


# =========================================================================== writing


class EpisodeDirWriter:
    """Append-only writer of one episode folder. Low level: no schema policy here.

    ``durability``: ``"step"`` fsyncs every frame and line (power-cut safe per step, slow on
    SD cards); ``"chunk"`` (default) fsyncs when a chunk closes and at the end; ``"none"``
    never fsyncs (still ``kill -9`` safe: every write reaches the kernel before returning).
    ``compress``: zstd-compress each closed chunk (needs ``zstandard``).
    """

    def __init__(self, path: str | os.PathLike, *, chunk_steps: int = 1000, compress: bool = False,
                 durability: str = "chunk", metadata: Mapping[str, Any] | None = None):
        if durability not in ("step", "chunk", "none"):
            raise ValueError(f"durability must be 'step', 'chunk' or 'none', got {durability!r}")
        if chunk_steps < 1:
            raise ValueError("chunk_steps must be >= 1")
        self.path = Path(path)
        self.chunk_steps = chunk_steps
        self.compress = compress
        self.durability = durability
        self.num_steps = 0
        self._fd: int | None = None
        self._chunk_first = 0
        self._frame_dirs: set[str] = set()
        self.path.mkdir(parents=True, exist_ok=False)
        if metadata is not None:
            # before steps/: a folder that looks like an episode always has its metadata.json
            # (a kill in between leaves an empty folder, which is not an episode)
            self.write_metadata(metadata)
        (self.path / STEPS_DIR).mkdir()
        (self.path / FRAMES_DIR).mkdir()
        if durability != "none":
            fsync_dir(self.path.parent)

    def write_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Replace ``metadata.json`` atomically (durably unless ``durability="none"``)."""
        atomic_write(self.path / METADATA_FILE, metadata_bytes(metadata), mode=None, durable=self.durability != "none")

    def write_frame(self, camera: str, data: bytes, extension: str) -> str:
        """Write frame ``data`` for the *next* step; returns its path relative to the folder."""
        d = self.path / FRAMES_DIR / camera
        if camera not in self._frame_dirs:
            d.mkdir(exist_ok=True)
            self._frame_dirs.add(camera)
        rel = frame_name(camera, self.num_steps, extension)
        atomic_write(self.path / rel, data, mode=None, durable=self.durability == "step")
        return rel

    def append_step(self, step: Mapping[str, Any]) -> None:
        """Append one step line (a single write). Rotates chunks every ``chunk_steps``."""
        line = step_to_json_line(step)
        if self._fd is None:
            self._chunk_first = self.num_steps
            self._fd = os.open(self.path / STEPS_DIR / chunk_name(self._chunk_first),
                               os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        write_all(self._fd, line)  # the whole line in one write(2) on an O_APPEND descriptor
        if self.durability == "step":
            os.fsync(self._fd)
        self.num_steps += 1
        if self.num_steps - self._chunk_first >= self.chunk_steps:
            self._close_chunk()

    def _close_chunk(self) -> None:
        if self._fd is None:
            return
        if self.durability != "none":
            os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        if self.compress:
            compress_chunk(self.path / STEPS_DIR / chunk_name(self._chunk_first), durable=self.durability != "none")

    def close(self, metadata: Mapping[str, Any]) -> None:
        """Close the last chunk and write the final metadata (with its end record)."""
        self._close_chunk()
        if self.durability != "none":
            for cam in self._frame_dirs:
                fsync_dir(self.path / FRAMES_DIR / cam)
            fsync_dir(self.path / STEPS_DIR)
        self.write_metadata(metadata)

    def abort(self) -> None:
        """Close the descriptor without finishing (the folder stays 'recording')."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def compress_chunk(plain: Path, *, durable: bool = True) -> Path:
    """zstd-compress a closed ``.jsonl`` chunk to ``.jsonl.zst`` atomically, then remove the plain
    one, but only once the ``.zst`` has been read back from disk and decodes to exactly the same
    bytes: the plain chunk is never removed before its copy is known good. A crash in between
    leaves both (readers and recovery then check the ``.zst`` against its twin). When the
    read-back fails, the plain chunk stays, the bad ``.zst`` is set aside as
    ``.jsonl.zst.corrupt`` and a warning is logged (``rldskit.capture``); returns the path that
    now holds the chunk's steps."""
    zstandard = _zstandard(plain, "writing")
    data = plain.read_bytes()
    target = plain.with_name(plain.name + ".zst")
    packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(data)
    atomic_write(target, packed, mode=None, durable=durable)
    try:
        problem = None if chunk_bytes(target) == data else "it decodes to other bytes than the chunk"
    except Exception as e:  # noqa: BLE001 - any I/O or zstd failure means: keep the plain chunk
        problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        aside = set_aside_corrupt(target)
        _log.warning("%s: the compressed copy did not read back (%s); kept the plain chunk, set the copy aside as %s",
                     target, problem, aside.name)
        return plain
    plain.unlink()
    return target


def set_aside_corrupt(f: Path) -> Path:
    """Rename a bad step file to ``<name>.corrupt`` (``.corrupt.1``, ... if taken): never deleted."""
    aside = f.with_name(f.name + CORRUPT_SUFFIX)
    n = 0
    while aside.exists():
        n += 1
        aside = f.with_name(f"{f.name}{CORRUPT_SUFFIX}.{n}")
    f.rename(aside)
    return aside


# =========================================================================== reading chunks


def chunk_bytes(path: Path) -> bytes:
    """The bytes of a step file (``.zst`` decompressed). Raises on I/O errors, on a corrupt or
    incomplete zstd stream (a truncated frame is an error, not fewer lines: ``ValueError``), and
    :class:`ZstdUnavailable` for a ``.zst`` where ``zstandard`` is not installed."""
    data = path.read_bytes()
    if path.name.endswith(".zst"):
        dobj = _zstandard(path).ZstdDecompressor().decompressobj()
        data = dobj.decompress(data)
        if not dobj.eof:
            raise ValueError("the zstd stream ends before its frame does (a truncated file)")
    return data


def _scan_steps(data: bytes, keep: bool) -> tuple[list[dict[str, Any]], int, bytes]:
    """The one rule for what a step file holds: lines that parse to a JSON object, up to the first
    that does not (an unterminated last line that parses counts, and gets its newline). Returns the
    records (when ``keep``), their number and the bytes of that complete prefix."""
    records: list[dict[str, Any]] = []
    n = pos = 0
    lines = data.split(b"\n")
    for k, line in enumerate(lines):
        last = k == len(lines) - 1
        if last and not line:
            break
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            rec = None
        if not isinstance(rec, dict):
            break
        n += 1
        if keep:
            records.append(rec)
        if last:
            return records, n, data + b"\n"
        pos += len(line) + 1
    return records, n, data[:pos]


def complete_prefix(data: bytes) -> tuple[int, bytes]:
    """``(n, prefix)``: the first ``n`` lines of a step file that are step records (lines that parse
    to a JSON object), as bytes (an unterminated last line that parses gets its newline). Reading
    stops at the first line that is not one."""
    _, n, prefix = _scan_steps(data, False)
    return n, prefix


def step_records(data: bytes) -> tuple[list[dict[str, Any]], bool]:
    """``(records, whole)``: the step records of a step file's complete prefix (see
    :func:`complete_prefix`), and whether that prefix is the whole file (``False``: a torn or
    corrupt line follows)."""
    records, _, prefix = _scan_steps(data, True)
    return records, prefix in (data, data + b"\n")


def pick_twin(zst: Path, plain: Path) -> tuple[Path, Path, str | None]:
    """A chunk present both compressed and plain (a crash between compressing it and removing the
    plain copy): ``(keep, other, problem)``. The ``.zst`` is kept, and the plain copy is a verified
    duplicate (``problem`` is ``None``), only when it decodes completely to the plain copy's bytes.
    Otherwise the copy with more complete steps is kept (the plain one on a tie: the ``.zst`` is made
    from it) and ``problem`` says what is wrong with the other. Raises :class:`ZstdUnavailable`
    (nothing can be said about the ``.zst`` without ``zstandard``)."""
    try:
        zdata: bytes | None = chunk_bytes(zst)
        zproblem = None
    except ZstdUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - any I/O or zstd failure
        zdata, zproblem = None, f"unreadable ({type(e).__name__}: {e})"
    try:
        pdata: bytes | None = plain.read_bytes()
    except OSError as e:
        pdata = None
        if zdata is not None:
            return zst, plain, f"unreadable ({type(e).__name__}: {e})"
    if zdata is not None and zdata == pdata:
        return zst, plain, None
    if zdata is None:
        return plain, zst, zproblem
    nz, np_ = complete_prefix(zdata)[0], complete_prefix(pdata or b"")[0]
    if nz > np_:
        return zst, plain, f"{np_} complete steps where its compressed copy has {nz}"
    return plain, zst, f"decodes to other steps than its plain copy ({nz} complete, the plain one {np_})"


def list_chunks(steps_dir: Path) -> list[tuple[int, Path]]:
    """``[(first step, chunk file)]`` of a ``steps/`` folder, sorted; a chunk present in both forms
    is resolved by :func:`pick_twin` (without ``zstandard``, the plain copy is read). Raises
    ``OSError`` when the folder cannot be listed."""
    chunks: dict[int, Path] = {}
    for name in sorted(os.listdir(steps_dir)):
        m = CHUNK_RE.match(name)
        if not m:
            continue
        first = int(m.group(1))
        if first in chunks:  # crash between compress and unlink: both forms (the .zst sorts second)
            try:
                chunks[first] = pick_twin(steps_dir / name, chunks[first])[0]
            except ZstdUnavailable:
                pass  # the plain copy, which the .zst was made from
            continue
        chunks[first] = steps_dir / name
    return sorted(chunks.items())


def resolve_frame_path(episode_dir: Path, rel: str, *, resolved_root: Path | None = None) -> Path | None:
    """The resolved file a step line's frame path ``rel`` names, or ``None`` when it is absolute or
    leads (through ``..`` or a symlink) outside the episode folder. ``resolved_root``: the folder's
    ``resolve()``, when the caller has it. May raise ``OSError``/``ValueError`` on a strange path."""
    if os.path.isabs(rel):
        return None
    root = resolved_root if resolved_root is not None else episode_dir.resolve()
    full = (episode_dir / rel).resolve()
    return full if full.is_relative_to(root) else None


def inline_frame_bytes(value: Any) -> bytes | None:
    """The bytes of an inline frame ``{"$base64": "..."}``, or ``None`` when ``value`` is not one.
    Raises ``ValueError`` (``binascii.Error``) when its base64 is malformed."""
    if isinstance(value, dict) and set(value) == {"$base64"} and isinstance(value["$base64"], str):
        return base64.b64decode(value["$base64"], validate=True)
    return None


# =========================================================================== recovery


def recover_episode_dir(path: str | os.PathLike, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Finish an episode folder a killed writer left ``recording`` (``metadata`` is its parsed
    ``metadata.json``), keeping exactly the steps a recovering reader reads: every step up to the
    first one that is torn, corrupt, unreadable or missing. Temp files and the plain twin of a
    compressed chunk are removed; a chunk cut short keeps its complete lines; chunks after the cut are
    renamed ``*.orphan`` (and a chunk that lost whole lines keeps its original bytes beside it as
    ``*.orphan``), so nothing is silently destroyed. A chunk present both plain and compressed loses its
    plain copy only when the ``.zst`` decodes completely to the same bytes; otherwise the bad copy is
    renamed ``*.corrupt`` and listed in ``corrupt``. The metadata is then marked ``recovered``
    (truncated, not terminal, tagged ``recovered``). An episode that is not ``recording`` is left
    alone. Idempotent; returns ``{"path", "status", "num_steps", "dropped_bytes", "removed",
    "corrupt"}``. Raises :class:`ZstdUnavailable` rather than set aside a ``.zst`` it cannot read."""
    p = Path(path)
    label = str(p)
    meta = dict(metadata)
    if meta.get("status") != "recording":
        end = meta.get("end") if isinstance(meta.get("end"), dict) else {}
        return {"path": label, "status": meta.get("status", "complete"), "num_steps": end.get("num_steps"),
                "dropped_bytes": 0, "removed": [], "corrupt": []}
    removed: list[str] = []
    for root, _dirs, files in os.walk(p):
        for f in files:
            if f.endswith(TMP_SUFFIX):  # an atomic write that never reached its rename
                os.unlink(Path(root) / f)
                removed.append(str((Path(root) / f).relative_to(p)))
    steps_dir = p / STEPS_DIR
    corrupt: list[str] = []
    try:
        chunks = list_chunks(steps_dir)
    except OSError:
        chunks = []
    for first, _f in chunks:  # killed between compress and unlink: both forms of one chunk
        zst, plain = steps_dir / chunk_name(first, True), steps_dir / chunk_name(first)
        if not (zst.exists() and plain.exists()):
            continue
        keep, other, problem = pick_twin(zst, plain)
        if problem is None:  # the .zst decodes to exactly the plain bytes: the plain one is a duplicate
            plain.unlink()
            removed.append(f"{STEPS_DIR}/{plain.name} (plain twin of {zst.name}, verified identical)")
        else:  # never delete the only good copy: the bad one is set aside, byte for byte
            aside = set_aside_corrupt(other)
            corrupt.append(f"{STEPS_DIR}/{other.name}")
            removed.append(f"{STEPS_DIR}/{other.name} ({problem}; kept {keep.name}, set aside as {aside.name})")

    def set_aside(f: Path, why: str) -> None:
        f.rename(f.with_name(f.name + ORPHAN_SUFFIX))
        removed.append(f"{STEPS_DIR}/{f.name} ({why}, kept as {f.name}{ORPHAN_SUFFIX})")

    count = dropped = 0
    intact = True  # no step lost so far: later chunks still continue the episode
    for first, f in chunks:
        if not intact or first != count:
            intact = False
            set_aside(f, f"after step {count}, the last complete one")
            continue
        try:
            data = chunk_bytes(f)
        except ZstdUnavailable:
            raise
        except Exception:  # noqa: BLE001 - unreadable: everything from here on is set aside
            intact = False
            set_aside(f, "unreadable")
            continue
        good, keep = complete_prefix(data)
        count += good
        if keep == data:
            continue
        if keep != data + b"\n":  # (only a missing final newline: the line is whole, nothing lost)
            intact = False
            dropped += len(data) - len(keep)
            if b"\n" in data[len(keep):]:  # whole lines are lost, not only a torn tail: keep the original
                atomic_write(f.with_name(f.name + ORPHAN_SUFFIX), f.read_bytes(), mode=None)
                removed.append(f"{STEPS_DIR}/{f.name} (lines after step {count - 1} kept as {f.name}{ORPHAN_SUFFIX})")
            if not keep:
                os.unlink(f)
                removed.append(f"{STEPS_DIR}/{f.name} (no complete step)")
                continue
        if f.name.endswith(".zst"):
            keep = _zstandard(f, "rewriting").ZstdCompressor(level=ZSTD_LEVEL).compress(keep)
        atomic_write(f, keep, mode=None)
    fsync_dir(steps_dir)
    end = {"num_steps": count, "terminal": False, "truncated": True, "recovered_at": time.time()}
    meta = dict(meta, status="recovered", end=end)
    tags = meta.get("tags") if isinstance(meta.get("tags"), list) else []
    if "recovered" not in tags:
        meta["tags"] = [*tags, "recovered"]
    atomic_write(p / METADATA_FILE, metadata_bytes(meta), mode=None)
    return {"path": label, "status": "recovered", "num_steps": count, "dropped_bytes": dropped, "removed": removed,
            "corrupt": corrupt}
