"""Crash safety of the capture layout: kill -9 a logging process at random moments, and
simulate the torn writes a crash (or a power cut) can leave, then check that readers
recognise the unfinished episode, that recovery keeps exactly a prefix of what was logged
(losing at most the step in flight), and that the recovered episode validates clean."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import helpers_capture
from helpers_capture import (assert_columns_equal, chunk_files, crash_step, donkey_spec, expected_columns, find,
                             plan, read_lines, read_meta, record)
from rldskit.capture import EpisodeLogger
from rldskit.formats.capture_dir import EpisodeError, compress_chunk, read_episode, recover_episode, scan_episode
from rldskit.validation import Gates, check_image_bytes, validate, validate_paths

WORKER = Path(helpers_capture.__file__)


# =========================================================================== checks shared by every scenario


def check_unfinished(ep: Path) -> None:
    """Before recovery: recognisably unfinished, refused by the strict reader."""
    assert read_meta(ep)["status"] == "recording"
    res = scan_episode(ep)
    assert find(res.issues, "EPISODE_UNFINISHED"), res.issues
    assert not res.ok
    with pytest.raises(EpisodeError, match="EPISODE_UNFINISHED"):
        read_episode(ep)
    rep = validate_paths([ep])
    assert find(rep, "EPISODE_UNFINISHED") and not rep.ok


def check_final_names_complete(ep: Path) -> None:
    """No file under a final name is half-written: metadata parses, every chunk decodes to
    whole lines except possibly a torn tail of the last plain chunk, every frame decodes."""
    json.loads((ep / "metadata.json").read_bytes())
    spec = donkey_spec()
    leaf = spec.leaf("observation/image")
    for f in sorted((ep / "frames" / "image").glob("*.jpg")):
        assert check_image_bytes(f.read_bytes(), leaf) is None, f"half-written frame {f.name}"
    files = chunk_files(ep)
    for f in files:
        if f.name.endswith(".zst"):
            import zstandard

            dobj = zstandard.ZstdDecompressor().decompressobj()
            data = dobj.decompress(f.read_bytes())
            assert dobj.eof and data.endswith(b"\n"), f"half-written {f.name}"
            for line in data.splitlines():
                json.loads(line)


def check_recovered(ep: Path, steps_logged, *, min_steps: int, max_steps: int) -> int:
    """Recovery keeps exactly a prefix (between ``min_steps`` and ``max_steps`` long) of the
    logged ``steps`` (``log_step`` kwargs, or a callable giving step ``i``); afterwards the
    strict reader and the validator pass clean. Returns the number of steps kept."""
    spec = donkey_spec()
    get = steps_logged if callable(steps_logged) else steps_logged.__getitem__
    res = scan_episode(ep, recover=True, load_frames=True)
    assert res.ok, res.issues
    assert res.status == "recovered"
    T = len(res.episode)
    assert min_steps <= T <= max_steps, (min_steps, T, max_steps)
    want = expected_columns(spec, [get(i) for i in range(T)], terminal=False)
    assert_columns_equal(res.episode.steps, want)
    assert "recovered" in res.episode.metadata["tags"]

    summary = recover_episode(ep)
    assert summary["status"] == "recovered" and summary["num_steps"] == T, summary
    meta = read_meta(ep)
    assert meta["status"] == "recovered"
    assert meta["end"]["num_steps"] == T and meta["end"]["terminal"] is False and meta["end"]["truncated"] is True
    assert "recovered" in meta["tags"]
    assert not list(ep.rglob("*.tmp")), "temp files survive recovery"
    names = [f.name for f in chunk_files(ep)]
    assert not any(n + ".zst" in names for n in names), f"plain twin kept beside its .zst: {names}"

    ep2 = read_episode(ep, load_frames=True)  # strict
    assert_columns_equal(ep2.steps, want)
    assert not ep2.steps["is_terminal"].any() and ep2.steps["is_last"][-1] and ep2.steps["is_first"][0]
    assert "recovered" in ep2.metadata["tags"]
    res2 = scan_episode(ep)
    assert res2.status == "recovered" and not res2.issues, res2.issues
    rep = validate(ep2, spec, Gates(check_images=True))
    assert not rep.issues, rep.format_table()
    rep = validate_paths([ep.parent], gates=Gates(check_images=True))
    assert not rep.issues and rep.steps == T, rep.format_table()

    again = recover_episode(ep)  # idempotent
    assert again["status"] == "recovered" and again["num_steps"] == T and again["removed"] == []
    assert_columns_equal(read_episode(ep, load_frames=True).steps, want)
    return T


# =========================================================================== kill -9 at random moments


def _run_and_kill(tmp_path: Path, seed: int, chunk_steps: int, compress: bool, durability: str) -> tuple[Path, int]:
    root = tmp_path / "root"
    progress = tmp_path / "progress.txt"
    rnd = random.Random(seed)
    proc = subprocess.Popen([sys.executable, str(WORKER), str(root), str(seed), str(chunk_steps),
                             "1" if compress else "0", durability, str(progress)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=WORKER.parent)
    try:
        deadline = time.monotonic() + 60
        while True:  # wait for the first logged step, then kill at a random later moment
            text = progress.read_text() if progress.exists() else ""
            if "\n0\n" in text:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the worker never logged a step"
            time.sleep(0.002)
        time.sleep(rnd.uniform(0.0, 0.35))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    lines = progress.read_text().split("\n")
    assert "ended" not in lines
    done = len([x for x in lines if x.isdigit()])
    assert [int(x) for x in lines if x.isdigit()] == list(range(done))
    return root / "crash", done


KILLS = [
    # seed, chunk_steps, compress, durability
    (1, 3, True, "none"),
    (2, 2, True, "chunk"),
    (3, 5, False, "none"),
    (4, 1, True, "none"),
    (5, 4, True, "step"),
    (6, 7, False, "chunk"),
    (7, 3, True, "chunk"),
    (8, 2, False, "step"),
]


@pytest.mark.parametrize("seed,chunk_steps,compress,durability", KILLS,
                         ids=[f"seed{k[0]}-chunk{k[1]}-{'zst' if k[2] else 'plain'}-{k[3]}" for k in KILLS])
def test_kill_9_loses_at_most_the_step_in_flight(tmp_path, seed, chunk_steps, compress, durability):
    ep, done = _run_and_kill(tmp_path, seed, chunk_steps, compress, durability)
    assert done >= 1
    check_final_names_complete(ep)
    check_unfinished(ep)
    # every step whose log_step returned is kept; at most the one in flight may be too
    check_recovered(ep, lambda i: crash_step(seed, i), min_steps=done, max_steps=done + 1)


# =========================================================================== simulated torn writes


def _recording(tmp_path: Path, n: int = 12, *, chunk_steps: int = 5, compress: bool = False, seed: int = 0):
    """A logger killed (left open) after ``n`` steps; returns (episode folder, logged steps)."""
    spec = donkey_spec()
    steps = plan(spec, n, seed=seed)
    logger = EpisodeLogger(tmp_path / "root", spec, chunk_steps=chunk_steps, compress=compress, durability="none")
    logger.start_episode(episode_id="torn", tags=["origin:test"])
    for kw in steps:
        logger.log_step(**kw)
    logger.close()  # like a kill: no end record
    return tmp_path / "root" / "torn", steps


def test_clean_kill_between_steps_keeps_everything(tmp_path):
    ep, steps = _recording(tmp_path, 12)
    check_unfinished(ep)
    assert check_recovered(ep, steps, min_steps=12, max_steps=12) == 12


def test_torn_last_line_is_dropped(tmp_path):
    ep, steps = _recording(tmp_path, 12)
    last = chunk_files(ep)[-1]
    assert last.name == "000010.jsonl"
    data = last.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1 + 40  # 40 bytes into the last line
    last.write_bytes(data[:cut])
    check_unfinished(ep)
    check_recovered(ep, steps, min_steps=11, max_steps=11)
    assert last.read_bytes() == data[: data.rstrip(b"\n").rfind(b"\n") + 1]  # the torn line is gone


def test_torn_line_cut_inside_a_multibyte_character(tmp_path):
    ep, steps = _recording(tmp_path, 4, chunk_steps=100)
    f = chunk_files(ep)[-1]
    lines = read_lines(ep)
    raw = f.read_bytes().split(b"\n")[:3]
    torn = json.dumps({"observation": lines[3]["observation"], "note": "ü😀"}, ensure_ascii=False).encode()
    cut = torn.index("😀".encode()) + 2
    f.write_bytes(b"\n".join(raw) + b"\n" + torn[:cut])
    check_unfinished(ep)
    check_recovered(ep, steps, min_steps=3, max_steps=3)


def test_unterminated_but_complete_last_line_is_kept(tmp_path):
    ep, steps = _recording(tmp_path, 7, chunk_steps=100)
    f = chunk_files(ep)[-1]
    f.write_bytes(f.read_bytes()[:-1])  # the crash fell exactly before the last newline
    check_unfinished(ep)
    check_recovered(ep, steps, min_steps=7, max_steps=7)


def test_temp_files_of_unfinished_atomic_writes_are_ignored_and_removed(tmp_path):
    ep, steps = _recording(tmp_path, 10, chunk_steps=5, compress=True)
    # a compression that never reached its rename, a frame for the step in flight, and a
    # metadata rewrite, all cut short
    (ep / "steps" / ".000010.jsonl.zst.4242.tmp").write_bytes(b"\x28\xb5\x2f\xfd partial")
    (ep / "frames" / "image" / ".000010.jpg.4242.tmp").write_bytes(b"\xff\xd8\xff\xe0 partial")
    (ep / ".metadata.json.4242.tmp").write_bytes(b'{"status": "compl')
    check_unfinished(ep)
    check_recovered(ep, steps, min_steps=10, max_steps=10)
    assert not (ep / "frames" / "image" / ".000010.jpg.4242.tmp").exists()


def test_frame_of_the_step_in_flight_without_its_line(tmp_path):
    ep, steps = _recording(tmp_path, 6, chunk_steps=100)
    extra = plan(donkey_spec(), 7, seed=0)[6]["observation"]["image"]
    (ep / "frames" / "image" / "000006.jpg").write_bytes(extra)  # frame renamed, line never written
    check_unfinished(ep)
    check_recovered(ep, steps, min_steps=6, max_steps=6)


def test_crash_between_compress_and_unlink_leaves_both_twins(tmp_path):
    ep, steps = _recording(tmp_path, 12, chunk_steps=5, compress=False)
    plain = ep / "steps" / "000005.jsonl"
    data = plain.read_bytes()
    compress_chunk(plain, durable=False)
    plain.write_bytes(data)  # as if killed after the rename of the .zst, before the unlink
    assert sorted(f.name for f in (ep / "steps").iterdir()) == ["000000.jsonl", "000005.jsonl", "000005.jsonl.zst", "000010.jsonl"]
    check_unfinished(ep)
    check_recovered(ep, steps, min_steps=12, max_steps=12)
    assert sorted(f.name for f in (ep / "steps").iterdir()) == ["000000.jsonl", "000005.jsonl.zst", "000010.jsonl"]


def test_twins_in_a_complete_episode_read_the_compressed_one(tmp_path):
    spec = donkey_spec()
    steps = plan(spec, 12)
    ep = record(tmp_path, spec, steps, chunk_steps=5, compress=True)
    zst = ep / "steps" / "000005.jsonl.zst"
    import zstandard

    (ep / "steps" / "000005.jsonl").write_bytes(zstandard.ZstdDecompressor().decompressobj().decompress(zst.read_bytes()))
    got = read_episode(ep, load_frames=True)
    assert_columns_equal(got.steps, expected_columns(spec, steps, terminal=False))


def test_empty_last_chunk_just_opened(tmp_path):
    ep, steps = _recording(tmp_path, 10, chunk_steps=5)
    (ep / "steps" / "000010.jsonl").write_bytes(b"")  # opened, killed before the first write
    check_unfinished(ep)
    check_recovered(ep, steps, min_steps=10, max_steps=10)


def test_killed_before_the_first_step(tmp_path):
    spec = donkey_spec()
    logger = EpisodeLogger(tmp_path / "root", spec)
    logger.start_episode(episode_id="empty")
    logger.close()
    ep = tmp_path / "root" / "empty"
    check_unfinished(ep)
    r = recover_episode(ep)
    assert r["num_steps"] == 0
    got = read_episode(ep)  # readable, but an episode of no steps does not pass validation
    assert len(got) == 0
    assert find(validate_paths([ep]), "TOO_FEW_STEPS")


def test_writer_creates_metadata_before_the_step_folders(tmp_path, monkeypatch):
    """A kill between creating the folder and writing metadata.json must not leave something
    that looks like an episode without metadata: metadata.json comes first."""
    import rldskit.formats.capture_dir as cd

    seen = []
    real_mkdir = Path.mkdir

    def spy(self, *a, **k):
        if self.name in ("steps", "frames"):
            seen.append((self.name, (self.parent / "metadata.json").is_file()))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", spy)
    w = cd.EpisodeDirWriter(tmp_path / "e", metadata={"status": "recording"})
    assert seen == [("steps", True), ("frames", True)]
    w.abort()


# --------------------------------------------------------------------------- corrupt middle chunks


def _middle_chunk_cases():
    def garbage_line(f: Path) -> None:
        lines = f.read_bytes().split(b"\n")
        lines[2] = b"\x00\xff\xfe garbage \x13"
        f.write_bytes(b"\n".join(lines))

    def unreadable_zst(f: Path) -> None:
        f.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(64))

    def truncated_zst(f: Path) -> None:
        f.write_bytes(f.read_bytes()[:-9])

    def bad_json_in_zst(f: Path) -> None:
        import zstandard

        data = zstandard.ZstdDecompressor().decompressobj().decompress(f.read_bytes()).split(b"\n")
        data[2] = b'{"observation": oops}'
        f.write_bytes(zstandard.ZstdCompressor().compress(b"\n".join(data)))

    def deleted(f: Path) -> None:
        f.unlink()

    def not_an_object(f: Path) -> None:
        lines = f.read_bytes().split(b"\n")
        lines[2] = b"[1, 2, 3]"
        f.write_bytes(b"\n".join(lines))

    # name: (mutation, compress, steps kept out of the 5 + 5 + 5 + 2 logged)
    return {
        "garbage line": (garbage_line, False, 7),
        "line not an object": (not_an_object, False, 7),
        "unreadable zst": (unreadable_zst, True, 5),
        "truncated zst": (truncated_zst, True, 5),
        "bad json inside zst": (bad_json_in_zst, True, 7),
        "deleted": (deleted, False, 5),
    }


MIDDLE = _middle_chunk_cases()


@pytest.mark.parametrize("case", list(MIDDLE), ids=list(MIDDLE))
def test_corrupt_middle_chunk_keeps_the_prefix_and_sets_the_rest_aside(tmp_path, case):
    mutate, compress, kept = MIDDLE[case]
    ep, steps = _recording(tmp_path, 17, chunk_steps=5, compress=compress)
    files = chunk_files(ep)
    assert len(files) == 4
    middle = files[1]
    after = [f.name for f in files[2:]]
    mutate(middle)
    check_unfinished(ep)
    check_recovered(ep, steps, min_steps=kept, max_steps=kept)
    names = sorted(f.name for f in (ep / "steps").iterdir())
    for n in after:  # the chunks after the cut are kept aside, not deleted
        assert n + ".orphan" in names and n not in names, names
    if case != "deleted":
        assert any(n.startswith(middle.name) for n in names), names


def test_recover_refuses_a_folder_without_metadata(tmp_path):
    ep, _ = _recording(tmp_path, 3)
    (ep / "metadata.json").unlink()
    with pytest.raises(EpisodeError, match="METADATA_MISSING"):
        recover_episode(ep)
    (ep / "metadata.json").write_bytes(b"\x00\x01 not json")
    with pytest.raises(EpisodeError, match="METADATA_INVALID"):
        recover_episode(ep)


def test_recover_leaves_complete_episodes_alone(tmp_path):
    spec = donkey_spec()
    steps = plan(spec, 8)
    ep = record(tmp_path, spec, steps, terminal=True, chunk_steps=3, compress=True)
    before = {f: f.read_bytes() for f in ep.rglob("*") if f.is_file()}
    r = recover_episode(ep)
    assert r == {"path": str(ep), "status": "complete", "num_steps": 8, "dropped_bytes": 0, "removed": [], "corrupt": []}
    assert {f: f.read_bytes() for f in ep.rglob("*") if f.is_file()} == before
    assert read_episode(ep).is_terminal


def test_scan_with_recover_equals_read_after_recover_for_random_cuts(tmp_path):
    """Cut the episode's bytes at random offsets (as a power cut could): scanning with
    recover and reading after recover_episode agree, and both are prefixes of the log."""
    rng = np.random.default_rng(0)
    ep0, steps = _recording(tmp_path / "src", 9, chunk_steps=4)
    import shutil

    for k in range(12):
        ep = tmp_path / f"cut{k}" / "root" / "torn"
        shutil.copytree(ep0.parent, ep.parent)
        last = chunk_files(ep)[-1]
        data = last.read_bytes()
        cut = int(rng.integers(0, len(data) + 1))
        last.write_bytes(data[:cut])
        assert last.name == "000008.jsonl"  # steps 0-7 are in closed chunks
        complete = data[:cut].count(b"\n")
        kept = check_recovered(ep, steps, min_steps=8 + complete, max_steps=8 + complete + 1)
        if cut < len(data) - 1:  # only a cut just before the final newline keeps the cut line
            assert kept == 8 + complete


def test_middle_chunk_missing_only_its_final_newline_loses_nothing(tmp_path):
    ep, steps = _recording(tmp_path, 17, chunk_steps=5)
    middle = chunk_files(ep)[1]
    middle.write_bytes(middle.read_bytes()[:-1])
    check_unfinished(ep)
    check_recovered(ep, steps, min_steps=17, max_steps=17)
    assert sorted(f.name for f in (ep / "steps").iterdir()) == ["000000.jsonl", "000005.jsonl", "000010.jsonl", "000015.jsonl"]
    assert middle.read_bytes().endswith(b"\n")


def test_corrupt_middle_chunk_keeps_its_original_bytes_aside(tmp_path):
    ep, steps = _recording(tmp_path, 17, chunk_steps=5, compress=True)
    middle = chunk_files(ep)[1]
    import zstandard

    lines = zstandard.ZstdDecompressor().decompressobj().decompress(middle.read_bytes()).split(b"\n")
    lines[3] = b"{not json"
    damaged = zstandard.ZstdCompressor().compress(b"\n".join(lines))
    middle.write_bytes(damaged)
    r = recover_episode(ep)
    assert r["num_steps"] == 8
    assert (ep / "steps" / "000005.jsonl.zst.orphan").read_bytes() == damaged  # the original, as it was
    assert len(read_episode(ep)) == 8


# --------------------------------------------------------------------------- a bad .zst beside its plain twin
# A crash (or power cut) between compressing a closed chunk and removing its plain copy leaves both; if the
# .zst then cannot be read (torn by a power cut, bit rot), the plain copy is the only readable one and must
# be kept: recovery verifies the compressed twin before removing the plain one, and sets a bad one aside.


def _twins_with_bad_zst(tmp_path: Path, damage) -> tuple[Path, list, bytes, bytes]:
    """A killed recording of 17 steps in chunks of 5 whose second chunk exists twice: plain, and as a
    ``.zst`` that ``damage(compressed bytes)`` spoilt. Returns (episode, steps, plain bytes, bad bytes)."""
    ep, steps = _recording(tmp_path, 17, chunk_steps=5, compress=False)
    plain = ep / "steps" / "000005.jsonl"
    data = plain.read_bytes()
    import zstandard

    bad = damage(zstandard.ZstdCompressor(level=3).compress(data))
    (ep / "steps" / "000005.jsonl.zst").write_bytes(bad)
    return ep, steps, data, bad


def _flip_byte(b: bytes, at: int) -> bytes:
    return b[:at] + bytes([b[at] ^ 0xFF]) + b[at + 1:]


BAD_TWINS = {
    "truncated": lambda b: b[:-9],
    "empty": lambda b: b"",
    "garbage": lambda b: b"\x28\xb5\x2f\xfd" + b"\x00" * 40,
    "zeroed after a power cut": lambda b: bytes(len(b)),
}


@pytest.mark.parametrize("case", list(BAD_TWINS), ids=list(BAD_TWINS))
def test_unreadable_zst_beside_its_plain_twin_keeps_every_step(tmp_path, case):
    ep, steps, data, bad = _twins_with_bad_zst(tmp_path, BAD_TWINS[case])
    check_unfinished(ep)
    r = recover_episode(ep)
    assert r["num_steps"] == 17, r
    steps_dir = ep / "steps"
    assert (steps_dir / "000005.jsonl").read_bytes() == data  # the only readable copy, untouched
    assert (steps_dir / "000005.jsonl.zst.corrupt").read_bytes() == bad  # set aside as it was, not deleted
    assert not (steps_dir / "000005.jsonl.zst").exists()
    assert r["corrupt"] == ["steps/000005.jsonl.zst"], r
    assert any("000005.jsonl.zst" in m and "corrupt" in m for m in r["removed"]), r
    # the recovered episode holds every logged step, and every check of a clean recovery holds
    check_recovered(ep, steps, min_steps=17, max_steps=17)


def test_scan_with_recover_reads_the_plain_twin_of_an_unreadable_zst(tmp_path):
    ep, steps, _, _ = _twins_with_bad_zst(tmp_path, BAD_TWINS["truncated"])
    res = scan_episode(ep, recover=True, load_frames=True)
    assert res.ok and len(res.episode) == 17, res.issues
    assert_columns_equal(res.episode.steps, expected_columns(donkey_spec(), steps, terminal=False))
    assert (ep / "steps" / "000005.jsonl.zst").exists()  # a read changes nothing


def test_zst_that_decodes_to_other_steps_than_its_plain_twin_is_set_aside(tmp_path):
    """A .zst that decodes completely but not to its plain twin's bytes (a line lost inside it)."""
    import zstandard

    def one_line_short(b: bytes) -> bytes:
        lines = zstandard.ZstdDecompressor().decompressobj().decompress(b).split(b"\n")
        return zstandard.ZstdCompressor().compress(b"\n".join(lines[:2] + lines[3:]))

    ep, steps, data, bad = _twins_with_bad_zst(tmp_path, one_line_short)
    assert len(read_episode(ep, recover=True)) == 17
    r = recover_episode(ep)
    assert r["num_steps"] == 17 and r["corrupt"] == ["steps/000005.jsonl.zst"], r
    assert (ep / "steps" / "000005.jsonl").read_bytes() == data
    assert (ep / "steps" / "000005.jsonl.zst.corrupt").read_bytes() == bad
    check_recovered(ep, steps, min_steps=17, max_steps=17)


def test_recover_cli_reports_a_corrupt_twin(tmp_path):
    from rldskit.cli import main

    ep, _, _, _ = _twins_with_bad_zst(tmp_path, BAD_TWINS["truncated"])
    proc = subprocess.run([sys.executable, "-m", "rldskit.cli", "recover", str(ep)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "17 steps kept" in proc.stdout, proc.stdout
    assert "000005.jsonl.zst" in proc.stderr and "000005.jsonl.zst.corrupt" in proc.stderr, proc.stderr
    assert main(["recover", str(ep)]) == 0  # idempotent: already recovered


from hypothesis import given, settings, strategies as st  # noqa: E402

from fuzzing import examples  # noqa: E402


@given(data=st.data())
@settings(max_examples=examples(25), deadline=None)
def test_any_damage_to_a_zst_with_a_plain_twin_loses_no_step(tmp_path_factory, data):
    """Truncate the compressed twin at any point, or flip any one byte of it: recovery keeps all 17
    steps (from whichever copy reads completely and agrees), and nothing is deleted unverified."""
    import zstandard

    tmp_path = tmp_path_factory.mktemp("twin")
    ep, steps = _recording(tmp_path, 17, chunk_steps=5, compress=False)
    plain = ep / "steps" / "000005.jsonl"
    good = zstandard.ZstdCompressor(level=3).compress(plain.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        bad = good[: data.draw(st.integers(0, len(good) - 1), label="cut")]
    else:
        bad = _flip_byte(good, data.draw(st.integers(0, len(good) - 1), label="flip"))
    (ep / "steps" / "000005.jsonl.zst").write_bytes(bad)
    assert len(scan_episode(ep, recover=True).episode) == 17
    r = recover_episode(ep)
    assert r["num_steps"] == 17, r
    names = sorted(f.name for f in (ep / "steps").iterdir())
    assert "000005.jsonl" in names or "000005.jsonl.zst" in names
    if "000005.jsonl.zst" not in names:  # the bad copy is kept aside, byte for byte
        assert (ep / "steps" / "000005.jsonl.zst.corrupt").read_bytes() == bad
    check_recovered(ep, steps, min_steps=17, max_steps=17)


def test_compaction_keeps_the_plain_chunk_when_its_zst_does_not_read_back(tmp_path, monkeypatch, caplog):
    """The logger compresses each closed chunk, then removes the plain one: only after reading the
    ``.zst`` back from disk and finding the same bytes. Here the disk tears every ``.zst`` write (as a
    lying cache or a full SD card can): every plain chunk stays, each bad ``.zst`` is set aside as
    ``.zst.corrupt`` and reported, and the episode reads back whole."""
    import logging

    import edge_runtime.capture_layout as capture_layout  # the layout writer rldskit's logger runs on

    real = capture_layout.atomic_write

    def torn_zst(path, data, **kw):
        return real(path, data[: len(data) // 2] if str(path).endswith(".zst") else data, **kw)

    monkeypatch.setattr(capture_layout, "atomic_write", torn_zst)
    spec = donkey_spec()
    steps = plan(spec, 17)
    with caplog.at_level(logging.WARNING, logger="rldskit"):
        ep = record(tmp_path, spec, steps, terminal=True, chunk_steps=5, compress=True)
    names = sorted(f.name for f in (ep / "steps").iterdir())
    assert names == ["000000.jsonl", "000000.jsonl.zst.corrupt", "000005.jsonl", "000005.jsonl.zst.corrupt",
                     "000010.jsonl", "000010.jsonl.zst.corrupt", "000015.jsonl", "000015.jsonl.zst.corrupt"], names
    assert sum("000005.jsonl.zst" in r.getMessage() for r in caplog.records) == 1, caplog.text
    got = read_episode(ep, load_frames=True)
    assert_columns_equal(got.steps, expected_columns(spec, steps, terminal=True))
