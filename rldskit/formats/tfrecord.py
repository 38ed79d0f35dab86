"""TFRecord files: framed, checksummed records, written atomically and read without TensorFlow.

Three concepts:

* **Record framing** (what ``tf.io.TFRecordWriter`` writes, uncompressed)::

      uint64 length          little endian, bytes of data
      uint32 masked_crc32c(length bytes)
      byte   data[length]
      uint32 masked_crc32c(data)

  with ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)``. A record's
  *offset* is the byte offset of its length field; files we write are byte-identical to
  TensorFlow's for the same records.
* :class:`TFRecordWriter`: writes to a sibling temp file ``.<name>.<pid>.tmp`` and, on
  :meth:`~TFRecordWriter.close`, fsyncs it, renames it over the final name and fsyncs the
  directory. A file under the final name is therefore always complete; a killed writer leaves
  only its temp file, and an exception inside ``with`` removes even that. The writer counts
  records and bytes and hashes the file as it goes (``sha256``), so nobody re-reads a shard to
  checksum it.
* Readers (:func:`read_tfrecord`, :func:`index_tfrecord`, :func:`read_record_at`,
  :func:`verify_tfrecord`): the length CRC is always checked (a corrupt length must not make
  us read gigabytes), the data CRC unless ``verify=False``. A problem raises
  :class:`TFRecordCorruption` naming the file, the record's byte offset and which check
  failed: ``length_crc``, ``data_crc`` or ``truncated`` (the file ends inside a record; the
  message gives the bytes needed and the bytes left). :func:`verify_tfrecord` returns the
  problems instead, for ``rldskit validate``/``inspect``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import google_crc32c

from rldskit._io import TMP_SUFFIX, TempThenRenameWriter, fsync_dir

__all__ = ["TFRecordWriter", "TFRecordCorruption", "read_tfrecord", "index_tfrecord", "read_record_at",
           "verify_tfrecord", "masked_crc32c"]

HEADER_SIZE = 12  # uint64 length + uint32 length CRC
FOOTER_SIZE = 4  # uint32 data CRC
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_HEADER = struct.Struct("<QI")
_MASK_DELTA = 0xA282EAD8
_READ_BUFFER = 4 << 20
_WRITE_BUFFER = 1 << 20


def masked_crc32c(data: bytes) -> int:
    """The masked CRC32C TFRecord stores for ``data``."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class TFRecordCorruption(ValueError):
    """A TFRecord file is corrupt at ``offset`` (the byte offset of the record's length field).

    ``what`` is ``"length_crc"``, ``"data_crc"`` or ``"truncated"``; ``record`` is the record's
    index in the file when the whole file was being read, else ``None``."""

    def __init__(self, path: str | os.PathLike, offset: int, what: str, detail: str = "", *, record: int | None = None):
        self.path = os.fspath(path)
        self.offset = offset
        self.what = what
        self.record = record
        rec = f" (record {record})" if record is not None else ""
        super().__init__(f"{self.path}: corrupt TFRecord at byte offset {offset}{rec}: {detail or what}")


def _length_crc_error(path, offset, header: bytes, record: int | None) -> TFRecordCorruption:
    stored = _CRC.unpack_from(header, 8)[0]
    return TFRecordCorruption(path, offset, "length_crc",
                              f"length CRC mismatch (stored 0x{stored:08x}, computed 0x{masked_crc32c(header[:8]):08x}): "
                              "the 12-byte record header is corrupt, so no later record can be located", record=record)


def _data_crc_error(path, offset, data: bytes, stored: int, record: int | None) -> TFRecordCorruption:
    return TFRecordCorruption(path, offset, "data_crc",
                              f"data CRC mismatch over its {len(data)} data bytes (stored 0x{stored:08x}, "
                              f"computed 0x{masked_crc32c(data):08x})", record=record)


def _truncated_error(path, offset, length: int | None, remain: int, record: int | None) -> TFRecordCorruption:
    if length is None:
        detail = f"truncated: the file ends inside the record header (expected {HEADER_SIZE} bytes, {remain} available)"
    else:
        need = HEADER_SIZE + length + FOOTER_SIZE
        part = "data" if remain < HEADER_SIZE + length else "data CRC footer"
        detail = (f"truncated: the file ends inside the record's {part} (expected {need} bytes = "
                  f"{HEADER_SIZE} header + {length} data + {FOOTER_SIZE} CRC, {remain} available)")
    return TFRecordCorruption(path, offset, "truncated", detail, record=record)


# =========================================================================== writing


class TFRecordWriter(TempThenRenameWriter):
    """Write one TFRecord file atomically (temp file, fsync, rename, fsync of the directory).

    ``num_records`` and ``num_bytes`` (file size so far) are live; ``sha256`` (hex digest of
    the file) is available once closed. Use as a context manager: leaving the ``with`` block
    normally closes; leaving it with an exception calls :meth:`abort`, so no file appears.
    A failed ``write`` aborts too (the file could not be completed)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp_path = self.path.with_name(f".{self.path.name}.{os.getpid()}{TMP_SUFFIX}")
        self._file = open(self.tmp_path, "wb", buffering=_WRITE_BUFFER)  # noqa: SIM115 - closed in close/abort
        self._hash = hashlib.sha256()
        self._state = "open"  # -> "closed" (renamed into place) | "aborted" (temp removed)
        self.num_records = 0
        self.num_bytes = 0

    def write(self, record: bytes) -> int:
        """Append one record; returns its byte offset in the file."""
        if self._state != "open":
            raise ValueError(f"{self.path}: write to a {self._state} TFRecordWriter")
        if not isinstance(record, bytes):
            record = bytes(record)
        length = _LENGTH.pack(len(record))
        header = length + _CRC.pack(masked_crc32c(length))
        footer = _CRC.pack(masked_crc32c(record))
        try:
            for part in (header, record, footer):
                self._file.write(part)
                self._hash.update(part)
        except BaseException:
            self.abort()
            raise
        offset = self.num_bytes
        self.num_bytes += HEADER_SIZE + len(record) + FOOTER_SIZE
        self.num_records += 1
        return offset

    @property
    def sha256(self) -> str:
        """Hex sha256 of the finished file."""
        if self._state != "closed":
            raise RuntimeError(f"{self.path}: sha256 is known only after a successful close()")
        return self._hash.hexdigest()

    def close(self) -> None:
        """Flush, fsync, rename to the final name, fsync the directory. Idempotent. If any of
        it fails the temp file is removed and the error raised (no final file appears)."""
        if self._state != "open":
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self.abort()
            raise
        self._state = "closed"
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Discard everything written: close and remove the temp file. No-op once closed."""
        if self._state != "open":
            return
        self._state = "aborted"
        try:
            self._file.close()
        except OSError:  # e.g. the buffered tail cannot be flushed (disk full): it is discarded anyway
            pass
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass



# =========================================================================== reading


def _scan(path: str | os.PathLike, verify: bool, buffer_size: int) -> Iterator[tuple[int, bytes, int | None]]:
    """Yield ``(offset, data, stored_crc_if_mismatched)`` for every record, reading the file in
    ``buffer_size`` chunks. Raises :class:`TFRecordCorruption` for length-CRC failures and
    truncation (framing is lost); data-CRC failures are yielded so callers may go on."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = b""
        pos = 0  # index in buf of the byte at file offset `offset`
        offset = 0
        index = 0
        while offset < size:
            remain = size - offset
            if len(buf) - pos < HEADER_SIZE:
                buf, pos = _refill(f, buf, pos, min(remain, max(buffer_size, HEADER_SIZE)))
            if len(buf) - pos < HEADER_SIZE:
                raise _truncated_error(path, offset, None, len(buf) - pos, index)
            length, length_crc = _HEADER.unpack_from(buf, pos)
            if masked_crc32c(buf[pos:pos + 8]) != length_crc:
                raise _length_crc_error(path, offset, buf[pos:pos + HEADER_SIZE], index)
            total = HEADER_SIZE + length + FOOTER_SIZE
            if total > remain:
                raise _truncated_error(path, offset, length, remain, index)
            if len(buf) - pos < total:
                buf, pos = _refill(f, buf, pos, min(remain, max(buffer_size, total)))
                if len(buf) - pos < total:  # the file shrank while we read it
                    raise _truncated_error(path, offset, length, len(buf) - pos, index)
            start = pos + HEADER_SIZE
            data = buf[start:start + length]
            bad = None
            if verify:
                stored = _CRC.unpack_from(buf, start + length)[0]
                if masked_crc32c(data) != stored:
                    bad = stored
            yield offset, data, bad
            pos += total
            offset += total
            index += 1


def _refill(f, buf: bytes, pos: int, want: int) -> tuple[bytes, int]:
    """Keep ``buf[pos:]`` and append file bytes until it holds ``want`` bytes (or EOF)."""
    parts = [buf[pos:]]
    have = len(parts[0])
    while have < want:
        chunk = f.read(want - have)
        if not chunk:
            break
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts), 0


def read_tfrecord(path: str | os.PathLike, *, verify: bool = True, buffer_size: int = _READ_BUFFER) -> Iterator[bytes]:
    """Iterate the records of a TFRecord file, in order. The file is read in ``buffer_size``
    chunks (a record larger than that is read whole). ``verify=False`` skips data CRCs only.
    Raises :class:`TFRecordCorruption` at the first problem (records before it are yielded)."""
    for index, (offset, data, bad) in enumerate(_scan(path, verify, buffer_size)):
        if bad is not None:
            raise _data_crc_error(path, offset, data, bad, index)
        yield data


def index_tfrecord(path: str | os.PathLike) -> list[tuple[int, int]]:
    """``(offset, length)`` of every record: the byte offset of its header and its data length.
    Reads only the 12-byte headers (seeking past data) and checks the framing: length CRCs and
    that the last record is complete. Data CRCs are not checked (see :func:`verify_tfrecord`)."""
    out: list[tuple[int, int]] = []
    with open(path, "rb", buffering=64 << 10) as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < size:
            f.seek(offset)
            header = f.read(HEADER_SIZE)
            if len(header) < HEADER_SIZE:
                raise _truncated_error(path, offset, None, len(header), len(out))
            length, length_crc = _HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise _length_crc_error(path, offset, header, len(out))
            if HEADER_SIZE + length + FOOTER_SIZE > size - offset:
                raise _truncated_error(path, offset, length, size - offset, len(out))
            out.append((offset, length))
            offset += HEADER_SIZE + length + FOOTER_SIZE
    return out


def read_record_at(path: str | os.PathLike, offset: int, *, verify: bool = True) -> bytes:
    """The data of the record whose header starts at byte ``offset`` (from :func:`index_tfrecord`
    or :meth:`TFRecordWriter.write`). Checks its length CRC, completeness and (``verify``) data CRC."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if not 0 <= offset < size:
            raise ValueError(f"{os.fspath(path)}: offset {offset} is outside the file (size {size})")
        f.seek(offset)
        header = f.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            raise _truncated_error(path, offset, None, len(header), None)
        length, length_crc = _HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            raise _length_crc_error(path, offset, header, None)
        if HEADER_SIZE + length + FOOTER_SIZE > size - offset:
            raise _truncated_error(path, offset, length, size - offset, None)
        body = _refill(f, b"", 0, length + FOOTER_SIZE)[0]
    if len(body) < length + FOOTER_SIZE:
        raise _truncated_error(path, offset, length, HEADER_SIZE + len(body), None)
    data = body[:length]
    if verify:
        stored = _CRC.unpack_from(body, length)[0]
        if masked_crc32c(data) != stored:
            raise _data_crc_error(path, offset, data, stored, None)
    return data


def verify_tfrecord(path: str | os.PathLike) -> tuple[int, list[TFRecordCorruption]]:
    """Check every record's CRCs without raising. Returns ``(num_ok, problems)``: the number of
    intact records, and every problem found. A data-CRC failure does not stop the scan (the
    framing is intact); a length-CRC failure or truncation does (nothing after it can be located).
    An empty ``problems`` list means the whole file is sound."""
    problems: list[TFRecordCorruption] = []
    num_ok = 0
    try:
        for index, (offset, data, bad) in enumerate(_scan(path, True, _READ_BUFFER)):
            if bad is None:
                num_ok += 1
            else:
                problems.append(_data_crc_error(path, offset, data, bad, index))
    except TFRecordCorruption as e:
        problems.append(e)
    return num_ok, problems
