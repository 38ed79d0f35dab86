"""ArrayRecord shards: round trips with every compression, batched random reads, atomic writes,
and corrupt input (flipped bytes, truncation) surfacing as ArrayRecordCorruption, never as
wrong bytes, a hang or a crash. The byte-flip and truncation scans run in a subprocess, so a
native abort would fail the test instead of killing pytest."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from fuzzing import examples

pytest.importorskip("array_record")

from rldskit.formats.arrayrecord import (  # noqa: E402
    COMPRESSIONS,
    ArrayRecordCorruption,
    ArrayRecordShardReader,
    ArrayRecordShardWriter,
    choose_compression,
    verify_arrayrecord,
    writer_options,
)

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 64 << 10  # Riegeli block size


def _records(n: int = 300, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [b"", *(rng.randbytes(rng.randint(0, 2000)) for _ in range(n - 2)), rng.randbytes(100_000)]


def _write(path: Path, records: list[bytes], compression: str = "uncompressed") -> ArrayRecordShardWriter:
    with ArrayRecordShardWriter(path, compression=compression) as w:
        for r in records:
            w.write(r)
    return w


# =========================================================================== round trips


@settings(max_examples=examples(40), deadline=None)
@given(records=st.lists(st.binary(max_size=300), max_size=40), compression=st.sampled_from(sorted(COMPRESSIONS)))
def test_round_trip(tmp_path_factory, records, compression):
    path = tmp_path_factory.mktemp("rt") / "r.array_record"
    w = _write(path, records, compression)
    with ArrayRecordShardReader(path) as r:
        assert len(r) == w.num_records == len(records)
        assert list(r) == records
        assert r[:] == records
    assert w.payload_bytes == sum(map(len, records))


@pytest.mark.parametrize("compression,option", [
    ("uncompressed", "uncompressed"), ("zstd", "zstd:3"), ("brotli", "brotli:6"), ("snappy", "snappy")])
def test_each_compression_is_written_as_asked(tmp_path, compression, option):
    records = [bytes(1000) + bytes([i % 256]) for i in range(200)]  # compressible
    w = _write(tmp_path / "c.array_record", records, compression)
    with ArrayRecordShardReader(tmp_path / "c.array_record") as r:
        assert list(r) == records
        opts = r.writer_options.split(",")
    assert "group_size:1" in opts and option in opts
    assert w.num_bytes == (tmp_path / "c.array_record").stat().st_size
    assert w.sha256 == hashlib.sha256((tmp_path / "c.array_record").read_bytes()).hexdigest()


def test_writer_options():
    assert writer_options("zstd") == "group_size:1,zstd:3"
    assert writer_options("zstd", level=9) == "group_size:1,zstd:9"
    assert writer_options("brotli", level=11, group_size=4) == "group_size:4,brotli:11"
    assert writer_options("uncompressed") == "group_size:1,uncompressed"
    with pytest.raises(ValueError, match="one of"):
        writer_options("lz4")
    with pytest.raises(ValueError, match="takes no level"):
        writer_options("snappy", level=1)
    with pytest.raises(ValueError, match="group_size"):
        writer_options("zstd", group_size=0)


def test_choose_compression():
    rng = random.Random(0)
    assert choose_compression([rng.randbytes(5000) for _ in range(8)]) == "uncompressed"  # like JPEG
    assert choose_compression([b"observation/joint_position" + bytes(40) for _ in range(8)]) == "zstd"
    assert choose_compression([]) == "zstd"


def test_output_is_deterministic(tmp_path):
    records = _records()
    for c in COMPRESSIONS:
        a = _write(tmp_path / f"a.{c}", records, c)
        b = _write(tmp_path / f"b.{c}", records, c)
        assert a.sha256 == b.sha256
        assert (tmp_path / f"a.{c}").read_bytes() == (tmp_path / f"b.{c}").read_bytes()


def test_batched_reads_in_any_order(tmp_path):
    records = _records()
    _write(tmp_path / "b.array_record", records, "zstd")
    rng = random.Random(1)
    with ArrayRecordShardReader(tmp_path / "b.array_record") as r:
        for _ in range(20):
            idx = [rng.randrange(-len(records), len(records)) for _ in range(rng.randint(0, 50))]
            assert r.read(idx) == [records[i] for i in idx]
        assert r[7] == records[7] and r[-1] == records[-1]
        assert r[10:20:3] == records[10:20:3]
        assert r.read([]) == []
        for bad in ([len(records)], [-len(records) - 1], [0, 10**6]):
            with pytest.raises(IndexError, match="out of range"):
                r.read(bad)
        with pytest.raises(IndexError):
            r[len(records)]


def test_reader_pickles_by_path(tmp_path):
    records = _records(20)
    _write(tmp_path / "p.array_record", records)
    r = ArrayRecordShardReader(tmp_path / "p.array_record")
    clone = pickle.loads(pickle.dumps(r))
    assert list(clone) == records and repr(clone) == repr(r)


def test_empty_shard(tmp_path):
    w = _write(tmp_path / "e.array_record", [])
    assert w.num_records == 0
    with ArrayRecordShardReader(tmp_path / "e.array_record") as r:
        assert len(r) == 0 and list(r) == []
    assert verify_arrayrecord(tmp_path / "e.array_record") == (0, [])


# =========================================================================== atomic writes


def test_an_exception_inside_with_leaves_no_file(tmp_path):
    path = tmp_path / "x.array_record"
    with pytest.raises(KeyError):
        with ArrayRecordShardWriter(path) as w:
            w.write(b"record")
            assert w.tmp_path.exists() and not path.exists()
            assert w.tmp_path.name.startswith(".x.array_record.") and w.tmp_path.name.endswith(".tmp")
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []
    assert w.sha256 is None
    with pytest.raises(ValueError, match="aborted"):
        w.write(b"more")


KILLED_CHILD = textwrap.dedent("""
    import sys
    from rldskit.formats.arrayrecord import ArrayRecordShardWriter
    path, n = sys.argv[1], int(sys.argv[2])
    with ArrayRecordShardWriter(path, compression="uncompressed") as w:
        for i in range(n):
            w.write(bytes(range(256)) * 8)
            if i == 100:
                print("writing", flush=True)
    print("done", flush=True)
""")


def test_sigkill_while_writing_never_leaves_a_file_under_the_final_name(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    n = 20_000
    for k, wait_done in enumerate([False, True]):
        path = tmp_path / f"s{k}.array_record"
        proc = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(path), str(n)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline() == b"writing\n"
        if wait_done:
            assert proc.stdout.readline() == b"done\n"
        proc.kill()
        proc.wait()
        proc.stdout.close()
        if wait_done:
            assert verify_arrayrecord(path) == (n, [])
        else:
            assert not path.exists()
            assert [p.name for p in tmp_path.glob(f".s{k}.array_record.*.tmp")]


def test_a_missing_folder_is_a_clear_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        ArrayRecordShardWriter(tmp_path / "nope" / "x.array_record")


def test_reader_refuses_missing_paths_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError):
        ArrayRecordShardReader(tmp_path / "absent.array_record")
    with pytest.raises(IsADirectoryError):
        ArrayRecordShardReader(tmp_path)


# =========================================================================== corruption


@pytest.fixture
def shard(tmp_path) -> tuple[Path, list[bytes]]:
    records = _records()
    path = tmp_path / "s.array_record"
    _write(path, records)
    return path, records


def test_a_flipped_data_byte_names_the_file_and_record(shard):
    path, records = shard
    data = bytearray(path.read_bytes())
    target = 123
    pos = bytes(data).find(records[target])  # uncompressed: the record's bytes are stored as is
    assert pos > 0 and len(records[target]) > 10
    data[pos + 5] ^= 0x01
    path.write_bytes(bytes(data))
    with ArrayRecordShardReader(path) as r:
        with pytest.raises(ArrayRecordCorruption) as ei:
            r.read([5, target, 7])
        e = ei.value
        assert (e.path, e.index) == (str(path), target)
        assert str(path) in str(e) and f"record {target}" in str(e) and "hash mismatch" in str(e)
        assert isinstance(e, ValueError)
        assert r.read([5, 7]) == [records[5], records[7]]  # the reader stays usable
    num_ok, problems = verify_arrayrecord(path)
    assert num_ok == len(records) - 1 and [p.index for p in problems] == [target]


def test_truncated_files(shard):
    path, records = shard
    full = path.read_bytes()
    assert len(full) % BLOCK == 0
    for cut in (0, 100, BLOCK - 1, BLOCK, BLOCK + 1, len(full) // 2, len(full) - BLOCK, len(full) - 1):
        path.write_bytes(full[:cut])
        with pytest.raises(ArrayRecordCorruption) as ei:
            ArrayRecordShardReader(path)
        assert str(path) in str(ei.value), cut
        num_ok, problems = verify_arrayrecord(path)
        assert num_ok == 0 and len(problems) == 1, cut


def test_cut_at_exactly_64_kib_is_not_read_as_an_empty_shard(shard):
    # array_record 0.8.6 opens this as a valid file with 0 records and no writer options
    path, _ = shard
    path.write_bytes(path.read_bytes()[:BLOCK])
    with pytest.raises(ArrayRecordCorruption, match="64 KiB"):
        ArrayRecordShardReader(path)


SCAN = textwrap.dedent("""
    import json, sys
    from rldskit.formats.arrayrecord import ArrayRecordCorruption, ArrayRecordShardReader
    path, mode, positions = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    clean = open(path, "rb").read()
    expected = list(ArrayRecordShardReader(path))
    out = {"same": 0, "corruption": 0, "wrong": []}
    for pos in positions:
        if mode == "flip":
            data = bytearray(clean); data[pos] ^= 0x40; data = bytes(data)
        else:
            data = clean[:pos]
        with open(path + ".bad", "wb") as f:
            f.write(data)
        try:
            with ArrayRecordShardReader(path + ".bad") as r:
                got = list(r)
        except ArrayRecordCorruption:
            out["corruption"] += 1
            continue
        if got == expected:
            out["same"] += 1
        else:
            out["wrong"].append(pos)
    print(json.dumps(out))
""")


def _scan(path: Path, mode: str, positions: list[int]) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCAN, str(path), mode, json.dumps(positions)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, f"the scan process died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("compression", ["uncompressed", "zstd"])
def test_flipping_bytes_never_returns_wrong_records_or_crashes(tmp_path, compression):
    rng = random.Random(2)
    records = [bytes(rng.randint(0, 600)) + rng.randbytes(rng.randint(0, 300)) for _ in range(60)]
    path = tmp_path / "f.array_record"
    _write(path, records, compression)
    data = path.read_bytes()
    end = len(data[:-BLOCK].rstrip(b"\0"))  # chunks end here; zero padding up to the last block
    # every 29th byte of the chunks, and the postscript at the start of the last block
    positions = [*range(0, end, 29), *range(len(data) - BLOCK, len(data) - BLOCK + 200, 3)]
    out = _scan(path, "flip", positions)
    assert out["wrong"] == []
    assert out["corruption"] > 0.9 * len(positions)  # only the file signature (first 64 bytes) goes unchecked


def test_truncating_anywhere_is_caught(tmp_path):
    rng = random.Random(3)
    path = tmp_path / "t.array_record"
    _write(path, [rng.randbytes(rng.randint(0, 3000)) for _ in range(200)])
    size = path.stat().st_size
    around_blocks = [b + d for b in range(BLOCK, size, BLOCK) for d in (-41, -24, -1, 1, 24, 64)]
    out = _scan(path, "truncate", sorted({*range(1, size, 1009), *around_blocks} - {BLOCK}))
    assert out == {"same": 0, "corruption": out["corruption"], "wrong": []}
