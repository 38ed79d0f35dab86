"""Find local paths in written files: every file under a folder, as raw bytes and, for formats
that compress or encode their contents, as what they hold (parquet rows and metadata, every
ArrayRecord record, zstd frames decompressed). Used by the "no local paths leak" tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def contents(path: Path) -> Iterator[bytes]:
    """The bytes of ``path`` and the decoded contents of parquet, ArrayRecord and zstd files."""
    data = path.read_bytes()
    yield data
    name = path.name
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        yield json.dumps(table.to_pylist(), default=repr).encode()
        yield repr(table.schema.metadata).encode()
        yield repr(pq.ParquetFile(path).metadata.metadata).encode()
    if ".array_record" in name:
        from rldskit.formats.arrayrecord import ArrayRecordShardReader

        with ArrayRecordShardReader(path) as r:
            n = len(r)
            yield from r.read(list(range(n)))
    if data[:4] == ZSTD_MAGIC:
        import zstandard

        yield zstandard.ZstdDecompressor().decompressobj().decompress(data)


def files_under(folder: Path) -> list[Path]:
    """Every regular file below ``folder``, hidden ones included."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def leaks(folders: Iterable[Path], needles: Iterable[str]) -> dict[str, list[str]]:
    """``{file: [needle, ...]}`` for every file under ``folders`` holding one of ``needles``
    (raw or decoded, see :func:`contents`). An empty dict means nothing leaked."""
    raw = [n.encode() for n in needles if n]
    found: dict[str, list[str]] = {}
    for folder in folders:
        for f in files_under(folder):
            hits = sorted({n.decode() for blob in contents(f) for n in raw if n in blob})
            if hits:
                found[str(f)] = hits
    return found
