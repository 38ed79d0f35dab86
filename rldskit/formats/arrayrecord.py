"""ArrayRecord shards: random-access record files, written atomically, read in batches.

A thin layer over the ``array_record`` package (Riegeli files with a record index in the
footer; what ``tfds ... --file_format=array_record``, ``as_data_source()`` and Grain read).

* :class:`ArrayRecordShardWriter`: ``group_size:1`` (one record per chunk, so reading record
  ``i`` decodes record ``i`` only: the layout random-access loaders need) and a
  ``compression`` chosen per layout. Writes a sibling temp file ``.<name>.<pid>.tmp``; on
  :meth:`~ArrayRecordShardWriter.close` it is fsynced and renamed over the final name (then the
  directory is fsynced), so a file under the final name is always complete. ``sha256`` (of the
  final file) and ``num_records``/``num_bytes`` come back from the writer.
* :class:`ArrayRecordShardReader`: a ``Sequence[bytes]`` over one shard: ``len``,
  ``reader[i]``, slices, batched :meth:`~ArrayRecordShardReader.read` of any indices in any
  order, and iteration in batches. Picklable (it reopens by path), so it can back a Grain
  data source in worker processes. Not thread-safe: one reader per thread.
* :class:`ArrayRecordCorruption` (a ``ValueError``): any corrupt or truncated file, naming the
  file, the record index when known, and array_record's own description (which names the
  byte). :func:`verify_arrayrecord` reads everything and returns the problems instead.

Compression (``bench/arrayrecord_compression.py``; ``group_size:1`` compresses each record
alone): real camera JPEGs do not compress, so image-heavy records default to
``"uncompressed"`` (:data:`IMAGE_HEAVY_COMPRESSION`): zstd saved 0% on step records with two
real 640x480 frames and 2% on whole episodes (shared JPEG headers), for 1.2-1.8x the write
time. The exception is an episode whose camera repeats frames (slower than the control loop):
zstd's 1 MiB window finds the repeats (20% smaller in the bench). Low-dimensional step records
(a tf.train.Example repeats every feature name) default to ``"zstd"``
(:data:`LOW_DIM_COMPRESSION`): 15-49% smaller. ``"brotli"`` is a few % smaller than zstd but
3-10x slower to write and up to 5x slower to read; ``"snappy"`` is fast and compresses less.
Rendered synthetic frames compress far better than camera frames (6-11% under zstd), so
never choose from synthetic data: :func:`choose_compression` measures a sample of the real
records instead.

What array_record does with bad input (0.8.6, probed by flipping one byte at a time, every
7th to 61st byte of whole files, for each compression, and by truncating throughout): every
data or header byte is covered by a Riegeli hash, so corruption raises
``RuntimeError`` (we re-raise it as :class:`ArrayRecordCorruption`) rather than returning
wrong bytes, crashing or hanging; flips in padding or in the file signature are harmless.
One case reads silently wrong: a file cut at exactly 64 KiB opens as a valid *empty* file
with no writer options; we refuse that. An out-of-range index raises ``IndexError`` (checked
here, before array_record, which reports it as a ``RuntimeError``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

from rldskit._io import TMP_SUFFIX, TempThenRenameWriter, fsync_dir

__all__ = ["ArrayRecordShardWriter", "ArrayRecordShardReader", "ArrayRecordCorruption", "verify_arrayrecord",
           "writer_options", "choose_compression", "COMPRESSIONS", "IMAGE_HEAVY_COMPRESSION", "LOW_DIM_COMPRESSION"]

#: compression name -> (array_record option, default level or None when it takes none)
COMPRESSIONS: dict[str, tuple[str, int | None]] = {
    "uncompressed": ("uncompressed", None),
    "zstd": ("zstd", 3),
    "brotli": ("brotli", 6),
    "snappy": ("snappy", None),
}
IMAGE_HEAVY_COMPRESSION = "uncompressed"
LOW_DIM_COMPRESSION = "zstd"

#: Random access: no readahead (array_record's default prefetches 16 MB per thread).
DEFAULT_READER_OPTIONS = "readahead_buffer_size:0"
_ITER_BATCH = 64
_HASH_CHUNK = 4 << 20


def writer_options(compression: str = LOW_DIM_COMPRESSION, *, level: int | None = None, group_size: int = 1) -> str:
    """The array_record writer options string, e.g. ``"group_size:1,zstd:3"``. ``level``
    overrides the default level of ``zstd`` (-131072..22) or ``brotli`` (0..11)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)}, got {compression!r}")
    name, default = COMPRESSIONS[compression]
    if default is None and level is not None:
        raise ValueError(f"compression {compression!r} takes no level")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    comp = name if default is None else f"{name}:{default if level is None else level}"
    return f"group_size:{group_size},{comp}"


def choose_compression(sample: Sequence[bytes], *, min_saving: float = 0.05) -> str:
    """``"zstd"`` when zstd (level 3, window 1 MiB, each record alone as ``group_size:1``
    writes them) makes ``sample`` at least ``min_saving`` smaller, else ``"uncompressed"``.
    A pure function of the sample (so reruns choose alike); a few records are enough."""
    import zstandard

    raw = sum(len(r) for r in sample)
    if raw == 0:
        return LOW_DIM_COMPRESSION
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=20)
    compressor = zstandard.ZstdCompressor(compression_params=params)
    packed = sum(len(compressor.compress(r)) for r in sample)
    return "zstd" if packed <= (1.0 - min_saving) * raw else "uncompressed"


class ArrayRecordCorruption(ValueError):
    """An ArrayRecord file is corrupt or truncated. ``index`` is the record when known."""

    def __init__(self, path: str | os.PathLike, detail: str, *, index: int | None = None):
        self.path = os.fspath(path)
        self.index = index
        self.detail = detail
        rec = f" record {index}" if index is not None else ""
        super().__init__(f"{self.path}: corrupt ArrayRecord file{rec}: {detail}")


# =========================================================================== writing


class ArrayRecordShardWriter(TempThenRenameWriter):
    """Write one ArrayRecord shard atomically. ``num_records`` and ``payload_bytes`` (sum of
    record lengths) are live; ``num_bytes`` (file size) and ``sha256`` are set by :meth:`close`.
    As a context manager: an exception inside ``with`` aborts, so no file appears."""

    def __init__(self, path: str | os.PathLike, *, compression: str = LOW_DIM_COMPRESSION, level: int | None = None,
                 group_size: int = 1):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.path = Path(path)
        self.options = writer_options(compression, level=level, group_size=group_size)
        self.tmp_path = self.path.with_name(f".{self.path.name}.{os.getpid()}{TMP_SUFFIX}")
        self.num_records = 0
        self.payload_bytes = 0
        self.num_bytes: int | None = None
        self.sha256: str | None = None
        self._state = "open"  # -> "closed" (renamed into place) | "aborted" (temp removed)
        self._writer = None
        open(self.tmp_path, "wb").close()  # a missing folder or a permission problem raises a clear OSError here
        self._writer = ArrayRecordWriter(os.fspath(self.tmp_path), self.options)
        if not self._writer.ok():
            self.abort()
            raise OSError(f"{self.tmp_path}: array_record could not open the file for writing")

    def write(self, record: bytes) -> None:
        """Append one record (its index is the number of records written before it)."""
        if self._state != "open":
            raise ValueError(f"{self.path}: write to a {self._state} ArrayRecordShardWriter")
        if not isinstance(record, bytes):
            record = bytes(record)
        try:
            self._writer.write(record)
        except RuntimeError as e:
            self.abort()
            raise OSError(f"{self.tmp_path}: array_record write failed: {e}") from None
        except BaseException:
            self.abort()
            raise
        self.num_records += 1
        self.payload_bytes += len(record)

    def close(self) -> None:
        """Finish the file, fsync it (hashing it in the same pass), rename it to the final name,
        fsync the directory. Idempotent. On failure the temp file is removed and the error raised."""
        if self._state != "open":
            return
        try:
            self._writer.close()
            h = hashlib.sha256()
            with open(self.tmp_path, "rb", buffering=0) as f:
                while chunk := f.read(_HASH_CHUNK):
                    h.update(chunk)
                os.fsync(f.fileno())
                size = f.tell()
            os.replace(self.tmp_path, self.path)
        except RuntimeError as e:
            self.abort()
            raise OSError(f"{self.tmp_path}: array_record could not finish the file: {e}") from None
        except BaseException:
            self.abort()
            raise
        self._state = "closed"
        self.sha256 = h.hexdigest()
        self.num_bytes = size
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Discard everything written: close and remove the temp file. No-op once closed."""
        if self._state != "open":
            return
        self._state = "aborted"
        if self._writer is not None:
            try:
                self._writer.close()
            except RuntimeError:
                pass
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass



# =========================================================================== reading


class ArrayRecordShardReader(Sequence[bytes]):
    """Random access to the records of one ArrayRecord file.

    ``options`` are array_record reader options (default: no readahead, the right setting for
    random access; batched reads still use array_record's thread pool). Opening checks the
    footer: a missing, truncated or corrupt index raises :class:`ArrayRecordCorruption`; a
    path that does not exist raises ``FileNotFoundError``."""

    def __init__(self, path: str | os.PathLike, *, options: str = DEFAULT_READER_OPTIONS):
        self.path = os.fspath(path)
        self.options = options
        self._open()

    def _open(self) -> None:
        from array_record.python.array_record_module import ArrayRecordReader

        if stat.S_ISDIR(os.stat(self.path).st_mode):  # os.stat raises FileNotFoundError
            raise IsADirectoryError(f"{self.path}: is a directory, not an ArrayRecord file")
        try:
            self._reader = ArrayRecordReader(self.path, self.options)
            self._len = self._reader.num_records()
            self.writer_options = self._reader.writer_options_string()
        except RuntimeError as e:
            raise ArrayRecordCorruption(self.path, str(e)) from None
        if self.writer_options is None and self._len == 0:
            # what array_record makes of a file cut at exactly 64 KiB (its first block)
            raise ArrayRecordCorruption(self.path, "the footer holds no index and no writer options "
                                                   f"(file size {os.path.getsize(self.path)}): truncated at a 64 KiB block boundary?")

    def __len__(self) -> int:
        return self._len

    def _check(self, indices: Sequence[int]) -> list[int]:
        n = self._len
        out = []
        for i in indices:
            i = int(i)
            j = i + n if i < 0 else i
            if not 0 <= j < n:
                raise IndexError(f"{self.path}: record index {i} out of range for {n} records")
            out.append(j)
        return out

    def read(self, indices: Sequence[int]) -> list[bytes]:
        """The records at ``indices`` (any order, repeats allowed, negative from the end), in
        one batched call. A corrupt record raises :class:`ArrayRecordCorruption` with its index."""
        idx = self._check(indices)
        if not idx:
            return []
        try:
            return self._reader.read(idx)
        except RuntimeError as e:
            raise self._locate(idx, e) from None

    def _locate(self, idx: list[int], err: RuntimeError) -> ArrayRecordCorruption:
        """The batch failed: find the first index that fails alone, for the error message."""
        for i in dict.fromkeys(idx):
            try:
                self._reader.read([i])
            except RuntimeError as e:
                return ArrayRecordCorruption(self.path, str(e), index=i)
        return ArrayRecordCorruption(self.path, str(err))

    @overload
    def __getitem__(self, i: int) -> bytes: ...

    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...

    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        if isinstance(i, slice):
            return self.read(range(*i.indices(self._len)))
        return self.read([i])[0]

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, self._len, _ITER_BATCH):
            yield from self.read(range(start, min(start + _ITER_BATCH, self._len)))

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> ArrayRecordShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict[str, str]:
        return {"path": self.path, "options": self.options}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.path = state["path"]
        self.options = state["options"]
        self._open()

    def __repr__(self) -> str:
        return f"ArrayRecordShardReader({self.path!r}, {self._len} records)"


def verify_arrayrecord(path: str | os.PathLike) -> tuple[int, list[ArrayRecordCorruption]]:
    """Read every record without raising. Returns ``(num_ok, problems)``: the number of records
    that read back intact and one :class:`ArrayRecordCorruption` per unreadable record (the
    index in the footer lets the scan go on past a bad record), or a single problem if the
    file cannot be opened at all. Riegeli hashes every chunk, so reading is verifying."""
    try:
        reader = ArrayRecordShardReader(path)
    except ArrayRecordCorruption as e:
        return 0, [e]
    problems: list[ArrayRecordCorruption] = []
    num_ok = 0
    with reader:
        for start in range(0, len(reader), _ITER_BATCH):
            batch = range(start, min(start + _ITER_BATCH, len(reader)))
            try:
                reader.read(batch)
                num_ok += len(batch)
            except ArrayRecordCorruption:
                for i in batch:
                    try:
                        reader.read([i])
                        num_ok += 1
                    except ArrayRecordCorruption as e:
                        problems.append(e)
    return num_ok, problems
