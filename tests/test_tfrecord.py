"""TFRecord reader/writer: byte-compatible with TensorFlow both ways, round trips, corruption
named by file/offset/check, and atomic writes (an exception or a SIGKILL never leaves an
incomplete file under the final name). TensorFlow is imported only here, as the reference."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from fuzzing import examples

from rldskit.formats.tfrecord import (
    FOOTER_SIZE,
    HEADER_SIZE,
    TFRecordCorruption,
    TFRecordWriter,
    index_tfrecord,
    masked_crc32c,
    read_record_at,
    read_tfrecord,
    verify_tfrecord,
)

ROOT = Path(__file__).resolve().parent.parent


def _records(seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    recs = [rng.randbytes(rng.randint(0, 200)) for _ in range(50)]
    return [b"", *recs, rng.randbytes(70_000), b"", rng.randbytes(3 << 20), b"x"]


def _write(path: Path, records: list[bytes]) -> TFRecordWriter:
    with TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
    return w


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


# =========================================================================== TensorFlow interop


def test_tensorflow_reads_what_we_write_and_the_bytes_are_identical(tf, tmp_path):
    records = _records()
    _write(tmp_path / "ours.tfrecord", records)
    got = list(tf.data.TFRecordDataset(str(tmp_path / "ours.tfrecord")).as_numpy_iterator())
    assert got == records
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as w:
        for r in records:
            w.write(r)
    assert (tmp_path / "ours.tfrecord").read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()


def test_we_read_what_tensorflow_writes(tf, tmp_path):
    records = _records(1)
    path = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    assert list(read_tfrecord(path)) == records
    index = index_tfrecord(path)
    assert [n for _, n in index] == [len(r) for r in records]
    assert [read_record_at(path, off) for off, _ in index] == records
    assert verify_tfrecord(path) == (len(records), [])


def test_masked_crc_matches_tensorflow(tf, tmp_path):
    # TF exposes the masked CRC only through its file format: compare on one-record files
    for k, data in enumerate((b"", b"a", b"123456789", bytes(range(256)))):
        p = str(tmp_path / f"r{k}")
        with tf.io.TFRecordWriter(p) as w:
            w.write(data)
        raw = open(p, "rb").read()
        assert int.from_bytes(raw[-4:], "little") == masked_crc32c(data)
        assert int.from_bytes(raw[8:12], "little") == masked_crc32c(raw[:8])


# =========================================================================== round trips


_record = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda n, seed: random.Random(seed).randbytes(n), st.integers(65_000, 140_000), st.integers(0, 2**32)),
)


@settings(max_examples=examples(60), deadline=None)
@given(records=st.lists(_record, max_size=12), buffer_size=st.sampled_from([1, 7, 12, 100, 70_000, 4 << 20]))
def test_round_trip(tmp_path_factory, records, buffer_size):
    path = tmp_path_factory.mktemp("rt") / "r.tfrecord"
    w = _write(path, records)
    assert list(read_tfrecord(path, buffer_size=buffer_size)) == records
    assert list(read_tfrecord(path, verify=False, buffer_size=buffer_size)) == records
    assert [n for _, n in index_tfrecord(path)] == [len(r) for r in records]
    assert w.num_records == len(records)
    assert w.num_bytes == path.stat().st_size == sum(HEADER_SIZE + len(r) + FOOTER_SIZE for r in records)


def test_writer_reports_offsets_counts_and_sha256(tmp_path):
    records = _records(2)
    path = tmp_path / "s.tfrecord"
    with TFRecordWriter(path) as w:
        offsets = [w.write(r) for r in records]
        with pytest.raises(RuntimeError, match="only after"):
            w.sha256
    assert offsets == [off for off, _ in index_tfrecord(path)]
    assert w.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [read_record_at(path, off) for off in offsets] == records
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(b"more")


def test_writer_accepts_bytes_like_records(tmp_path):
    with TFRecordWriter(tmp_path / "b.tfrecord") as w:
        w.write(bytearray(b"abc"))
        w.write(memoryview(b"defg"))
    assert list(read_tfrecord(tmp_path / "b.tfrecord")) == [b"abc", b"defg"]


def test_empty_file_has_no_records(tmp_path):
    _write(tmp_path / "e.tfrecord", [])
    assert (tmp_path / "e.tfrecord").stat().st_size == 0
    assert list(read_tfrecord(tmp_path / "e.tfrecord")) == []
    assert verify_tfrecord(tmp_path / "e.tfrecord") == (0, [])


# =========================================================================== corruption

RECORDS = [bytes([i]) * (10 + 7 * i) for i in range(6)]  # record 3: offset 3*12+... (computed below)
TARGET = 3


def _layout(records: list[bytes]) -> list[int]:
    offsets, off = [], 0
    for r in records:
        offsets.append(off)
        off += HEADER_SIZE + len(r) + FOOTER_SIZE
    return offsets


@pytest.fixture
def clean(tmp_path) -> Path:
    path = tmp_path / "shard.tfrecord"
    _write(path, RECORDS)
    return path


@pytest.mark.parametrize("where,within,what", [
    ("length", 0, "length_crc"), ("length", 7, "length_crc"),
    ("length_crc", 8, "length_crc"), ("length_crc", 11, "length_crc"),
    ("data", HEADER_SIZE, "data_crc"), ("data", HEADER_SIZE + 20, "data_crc"),
    ("data_crc", -4, "data_crc"), ("data_crc", -1, "data_crc"),
])
def test_a_flipped_byte_is_named_by_file_offset_and_check(clean, where, within, what):
    off = _layout(RECORDS)[TARGET]
    end = off + HEADER_SIZE + len(RECORDS[TARGET]) + FOOTER_SIZE
    pos = off + within if within >= 0 else end + within
    data = bytearray(clean.read_bytes())
    data[pos] ^= 0x10
    clean.write_bytes(bytes(data))

    got = []
    with pytest.raises(TFRecordCorruption) as ei:
        for r in read_tfrecord(clean):
            got.append(r)
    e = ei.value
    assert got == RECORDS[:TARGET]  # everything before the bad record is delivered
    assert (e.path, e.offset, e.what, e.record) == (str(clean), off, what, TARGET)
    assert str(clean) in str(e) and f"byte offset {off}" in str(e)
    assert ("length CRC" if what == "length_crc" else "data CRC") in str(e)
    assert isinstance(e, ValueError)

    num_ok, problems = verify_tfrecord(clean)
    assert [(p.offset, p.what) for p in problems] == [(off, what)]
    if what == "data_crc":  # framing intact: the scan goes on, and only this record is lost
        assert num_ok == len(RECORDS) - 1
        assert [n for _, n in index_tfrecord(clean)] == [len(r) for r in RECORDS]
        unverified = list(read_tfrecord(clean, verify=False))  # the damaged bytes, as stored
        assert (unverified[TARGET] == RECORDS[TARGET]) == (where == "data_crc")
    else:  # framing lost: nothing after it can be located
        assert num_ok == TARGET
        with pytest.raises(TFRecordCorruption, match=f"byte offset {off}"):
            index_tfrecord(clean)
    with pytest.raises(TFRecordCorruption) as ei:
        read_record_at(clean, off)
    assert (ei.value.offset, ei.value.what, ei.value.record) == (off, what, None)


def test_truncation_at_every_position_inside_a_record(clean):
    full = clean.read_bytes()
    offsets = _layout(RECORDS)
    last, n = offsets[-1], len(RECORDS[-1])
    for cut in range(last + 1, len(full)):
        clean.write_bytes(full[:cut])
        with pytest.raises(TFRecordCorruption) as ei:
            list(read_tfrecord(clean))
        e = ei.value
        assert (e.offset, e.what, e.record) == (last, "truncated", len(RECORDS) - 1)
        avail = cut - last
        if avail < HEADER_SIZE:
            assert f"inside the record header (expected {HEADER_SIZE} bytes, {avail} available)" in str(e)
        else:
            part = "data" if avail < HEADER_SIZE + n else "data CRC footer"
            assert f"inside the record's {part} (expected {HEADER_SIZE + n + FOOTER_SIZE} bytes" in str(e)
            assert f"{avail} available" in str(e)
        assert verify_tfrecord(clean)[0] == len(RECORDS) - 1
        assert verify_tfrecord(clean)[1][0].what == "truncated"
        with pytest.raises(TFRecordCorruption, match="truncated"):
            index_tfrecord(clean)
    # a cut exactly at a record boundary is a shorter valid file: only a recorded count catches it
    clean.write_bytes(full[:last])
    assert verify_tfrecord(clean) == (len(RECORDS) - 1, [])


def test_truncation_in_a_large_record_with_a_small_buffer(tmp_path):
    path = tmp_path / "big.tfrecord"
    _write(path, [b"a" * 100, b"b" * 200_000])
    full = path.read_bytes()
    path.write_bytes(full[:-5])
    with pytest.raises(TFRecordCorruption, match=r"inside the record's data \(expected 200016 bytes.*200011 available"):
        list(read_tfrecord(path, buffer_size=64))


def test_read_record_at_outside_the_file(clean):
    with pytest.raises(ValueError, match="outside the file"):
        read_record_at(clean, clean.stat().st_size)
    with pytest.raises(TFRecordCorruption, match="length CRC"):  # not a record start
        read_record_at(clean, 1)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(read_tfrecord(tmp_path / "absent.tfrecord"))
    with pytest.raises(FileNotFoundError):
        verify_tfrecord(tmp_path / "absent.tfrecord")


# =========================================================================== atomic writes


def test_an_exception_inside_with_leaves_no_file(tmp_path):
    path = tmp_path / "x.tfrecord"
    with pytest.raises(KeyError):
        with TFRecordWriter(path) as w:
            w.write(b"record")
            assert w.tmp_path.exists() and not path.exists()
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError):
        w.sha256


def test_an_exception_keeps_the_previous_complete_file(tmp_path):
    path = tmp_path / "x.tfrecord"
    _write(path, [b"old"])
    with pytest.raises(KeyError):
        with TFRecordWriter(path) as w:
            w.write(b"new")
            raise KeyError("boom")
    assert list(read_tfrecord(path)) == [b"old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.tfrecord"]


CHILD = textwrap.dedent("""
    import sys
    from rldskit.formats.tfrecord import TFRecordWriter
    path, n = sys.argv[1], int(sys.argv[2])
    record = bytes(range(256)) * 8
    with TFRecordWriter(path) as w:
        for i in range(n):
            w.write(record)
            if i == 100:
                print("writing", flush=True)
    print("done", flush=True)
""")


def test_sigkill_while_writing_never_leaves_an_incomplete_final_file(tmp_path):
    n = 20_000  # 41 MB: a few hundred ms of writing
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    outcomes = set()
    for k, delay in enumerate([0.0, 0.05, 0.15, 0.3, "done"]):
        path = tmp_path / f"shard{k}.tfrecord"
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(n)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline() == b"writing\n"
        if delay == "done":
            assert proc.stdout.readline() == b"done\n"
        else:
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        if path.exists():
            assert verify_tfrecord(path) == (n, [])
            outcomes.add("complete")
        else:
            leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(f".shard{k}.tfrecord.")]
            assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")
            outcomes.add("temp only")
    assert outcomes == {"temp only", "complete"}  # kills did land mid-write, and after the end
