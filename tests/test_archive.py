"""rldskit.archive: pack / unpack / verify round trips, anonymisation, and hostile archives.

Hostile archives are crafted here byte by byte (tar members through a zstd compressobj, zip
entries through zipfile) so that every refusal is exercised on both formats; each refusal must
name the archive and the member, leave ``out`` absent and the parent folder unchanged."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from hypothesis import event, given, settings
from hypothesis import strategies as st
from fuzzing import examples

from rldskit import archive as A
from rldskit.archive import MANIFEST_NAME, ArchiveError, pack, unpack, verify
from rldskit.formats.capture_dir import read_episode
from rldskit.spec import load_spec
from rldskit.synth import write_synthetic

SPEC = load_spec("pi5_donkey.v1").with_image_shape("observation/image", (24, 32, 3))
FORMATS = ["tar.zst", "zip"]


# =========================================================================== helpers


def tree(root: Path) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file under ``root``."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def snapshot(root: Path) -> list[tuple[str, bool, int]]:
    """Names, kinds and sizes of everything under ``root`` (links not followed)."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            st_ = p.lstat()
            out.append((p.relative_to(root).as_posix(), stat.S_ISDIR(st_.st_mode), st_.st_size if not stat.S_ISDIR(st_.st_mode) else 0))
    return sorted(out)


def episodes(root: Path, n: int = 2, steps: int = 5, seed: int = 0) -> Path:
    write_synthetic(SPEC, root, n, steps, seed=seed)
    return root


@pytest.fixture
def eps(tmp_path) -> Path:
    return episodes(tmp_path / "episodes")


@dataclass
class M:
    """One crafted member: a regular file (``data`` bytes, or an int: that many zero bytes) or
    a link / device / fifo / directory."""

    name: str
    data: bytes | int = b""
    kind: str = "file"  # file | sym | hard | chr | fifo | dir
    link: str = ""


def manifest(files: dict[str, bytes | int], **overrides) -> M:
    def sha(d):
        return hashlib.sha256(d).hexdigest() if isinstance(d, bytes) else "0" * 64

    doc = {"format": A.FORMAT, "created_at": "2026-01-01T00:00:00Z", "rldskit_version": "test", "episodes": 1,
           "files": len(files), "bytes": 0, "anonymization": {"enabled": False},
           "members": [{"path": n, "size": d if isinstance(d, int) else len(d), "sha256": sha(d)} for n, d in files.items()]}
    doc.update(overrides)
    return M(MANIFEST_NAME, json.dumps(doc).encode())


def _zeros(n: int):
    z = memoryview(bytes(1 << 20))
    while n:
        k = min(n, len(z))
        yield z[:k]
        n -= k


def write_tar_zst(path: Path, members: list[M], trailing_zeros: int = 0) -> Path:
    """A .tar.zst with exactly these members, streamed (zero data is never held in memory)."""
    co = zstandard.ZstdCompressor(level=1, write_checksum=True).compressobj()
    with open(path, "wb") as f:
        for m in members:
            ti = tarfile.TarInfo(m.name)
            ti.type = {"file": tarfile.REGTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE,
                       "fifo": tarfile.FIFOTYPE, "dir": tarfile.DIRTYPE}[m.kind]
            ti.linkname = m.link
            ti.size = (m.data if isinstance(m.data, int) else len(m.data)) if m.kind == "file" else 0
            f.write(co.compress(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")))
            if ti.size:
                for chunk in (_zeros(m.data) if isinstance(m.data, int) else [m.data]):
                    f.write(co.compress(chunk))
                f.write(co.compress(bytes(-ti.size % 512)))
        f.write(co.compress(bytes(1024)))
        for chunk in _zeros(trailing_zeros):
            f.write(co.compress(chunk))
        f.write(co.flush())
    return path


def write_zip(path: Path, members: list[M]) -> Path:
    modes = {"file": stat.S_IFREG | 0o644, "sym": stat.S_IFLNK | 0o777, "chr": stat.S_IFCHR | 0o644,
             "fifo": stat.S_IFIFO | 0o644, "dir": stat.S_IFDIR | 0o755}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for m in members:
                zi = zipfile.ZipInfo(m.name + ("/" if m.kind == "dir" else ""))
                zi.create_system = 3
                zi.external_attr = modes[m.kind] << 16
                zi.compress_type = zipfile.ZIP_DEFLATED
                if isinstance(m.data, int):
                    zi.file_size = m.data
                    with zf.open(zi, "w") as dst:
                        for chunk in _zeros(m.data):
                            dst.write(chunk)
                else:
                    zf.writestr(zi, m.link.encode() if m.kind == "sym" else m.data)
    return path


def craft(fmt: str, path: Path, members: list[M]) -> Path:
    return write_tar_zst(path, members) if fmt == "tar.zst" else write_zip(path, members)


GOOD = {"ep/metadata.json": b'{"status": "complete"}', "ep/steps/000000.jsonl": b'{"reward": 0.0}\n'}


def good_members() -> list[M]:
    return [manifest(GOOD)] + [M(n, d) for n, d in GOOD.items()]


def assert_refused(archive: Path, parent: Path, *needles: str, member: str | None = None, **limits) -> ArchiveError:
    """unpack (and verify) refuse ``archive``; ``out`` is not created and ``parent`` is unchanged."""
    out = parent / "out"
    before = snapshot(parent)
    with pytest.raises(ArchiveError) as ei:
        unpack(archive, out, **limits)
    msg = str(ei.value)
    assert str(archive) in msg
    for n in needles:
        assert n in msg, msg
    if member is not None:
        assert repr(member) in msg, msg
        assert ei.value.member == member
    assert ei.value.exit_code == 1
    assert not os.path.lexists(out)
    assert snapshot(parent) == before
    with pytest.raises(ArchiveError) as ev:
        verify(archive, **limits)
    assert ev.value.reason == ei.value.reason
    return ei.value


@pytest.fixture
def work(tmp_path) -> tuple[Path, Path]:
    """(folder for archives, parent folder of ``out``)."""
    a, w = tmp_path / "archives", tmp_path / "work"
    a.mkdir()
    w.mkdir()
    return a, w


# =========================================================================== round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_is_byte_identical_and_readable(eps, tmp_path, fmt):
    arch = tmp_path / f"episodes.{fmt}"
    s = pack([eps], arch)
    assert s["episodes"] == 2 and s["files"] == len(tree(eps)) and s["archive_format"] == fmt
    assert s["bytes"] == sum(len(b) for b in tree(eps).values())
    assert s["rldskit_version"] and s["created_at"].endswith("Z") and s["anonymization"] == {"enabled": False}
    v = verify(arch)
    assert (v["files"], v["bytes"], v["episodes"]) == (s["files"], s["bytes"], 2)
    out = tmp_path / "data" / "rlds"
    u = unpack(arch, out)
    assert u["out"] == str(out)
    assert tree(out) == tree(eps)
    for ep in sorted(p for p in out.iterdir() if p.is_dir()):
        e = read_episode(ep)
        assert len(e) == 5
    from rldskit.validation import validate_paths

    assert validate_paths([out]).ok
    assert sorted(os.listdir(tmp_path / "data")) == ["rlds"]  # no staging folder left behind


@pytest.mark.parametrize("fmt", FORMATS)
def test_manifest_is_the_first_member_and_lists_everything(eps, tmp_path, fmt):
    arch = pack([eps], tmp_path / f"a.{fmt}")["archive"]
    if fmt == "zip":
        with zipfile.ZipFile(arch) as zf:
            names = zf.namelist()
            doc = json.loads(zf.read(names[0]))
            infos = zf.infolist()
        assert all((i.external_attr >> 16) == stat.S_IFREG | 0o644 for i in infos)
        assert {i.filename: i.compress_type for i in infos}["ep_0000_00000/frames/image/000000.jpg"] == zipfile.ZIP_STORED
    else:
        with open(arch, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r, tarfile.open(fileobj=r, mode="r|") as tf:
            infos = []
            for ti in tf:
                infos.append(ti)
                if ti.name == MANIFEST_NAME:
                    doc = json.loads(tf.extractfile(ti).read())
        names = [t.name for t in infos]
        assert all(t.mode == 0o644 and t.uid == 0 and t.gid == 0 and t.uname == "" and t.mtime == 315532800 for t in infos)
    assert names[0] == MANIFEST_NAME
    assert names[1:] == sorted(tree(eps)) == [m["path"] for m in doc["members"]]
    src = tree(eps)
    for m in doc["members"]:
        assert m["size"] == len(src[m["path"]])
        assert m["sha256"] == hashlib.sha256(src[m["path"]]).hexdigest()
    assert doc["format"] == A.FORMAT and doc["episodes"] == 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_pack_is_deterministic(eps, tmp_path, fmt):
    a = pack([eps], tmp_path / f"a.{fmt}", anonymize=True, salt="s", created_at="2026-01-01T00:00:00Z")
    b = pack([eps], tmp_path / f"b.{fmt}", anonymize=True, salt="s", created_at="2026-01-01T00:00:00Z")
    assert Path(a["archive"]).read_bytes() == Path(b["archive"]).read_bytes()


def test_episode_folders_as_sources_keep_their_names(eps, tmp_path):
    ep0, ep1 = sorted(p for p in eps.iterdir() if p.is_dir())
    s = pack([ep1, ep0], tmp_path / "two.tar.zst")
    assert s["episodes"] == 2
    unpack(tmp_path / "two.tar.zst", tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == [ep0.name, ep1.name]  # schema.json was not a source
    assert tree(tmp_path / "out" / ep0.name) == tree(ep0)


def test_pack_skips_temp_files_and_its_own_output(eps, tmp_path):
    ep0 = sorted(p for p in eps.iterdir() if p.is_dir())[0]
    (ep0 / "frames" / "image" / ".000009.jpg.1234.tmp").write_bytes(b"partial")
    (eps / "old.tar.zst.tmp-999").write_bytes(b"partial")
    (eps / "episodes.tar.zst").write_bytes(b"previous archive")
    s = pack([eps], eps / "episodes.tar.zst")
    assert len(s["skipped"]) == 3
    out = tmp_path / "out"
    unpack(eps / "episodes.tar.zst", out)
    assert not any(n.endswith((".tmp", ".tmp-999", ".tar.zst")) for n in tree(out))


def test_pack_reports_episodes_still_recording(eps, tmp_path):
    ep0 = sorted(p for p in eps.iterdir() if p.is_dir())[0]
    meta = json.loads((ep0 / "metadata.json").read_bytes())
    meta["status"] = "recording"
    (ep0 / "metadata.json").write_text(json.dumps(meta))
    s = pack([eps], tmp_path / "a.zip")
    assert s["incomplete"] == [ep0.name]


def test_pack_refuses_symlinks_and_special_files_and_writes_nothing(eps, tmp_path):
    ep0 = sorted(p for p in eps.iterdir() if p.is_dir())[0]
    out = tmp_path / "a.tar.zst"
    link = ep0 / "frames" / "passwd"
    link.symlink_to("/etc/passwd")
    with pytest.raises(ArchiveError, match="symlink.*does not follow"):
        pack([eps], out)
    link.unlink()
    (ep0 / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ArchiveError, match="linkdir.*symlink"):
        pack([eps], out)
    (ep0 / "linkdir").unlink()
    os.mkfifo(ep0 / "fifo")
    with pytest.raises(ArchiveError, match="not a regular file"):
        pack([eps], out)
    assert not any(p.name.startswith("a.tar.zst") for p in tmp_path.iterdir())


def test_pack_usage_errors(eps, tmp_path):
    with pytest.raises(ArchiveError) as e:
        pack([tmp_path / "nope"], tmp_path / "a.tar.zst")
    assert e.value.exit_code == 2 and "nope" in str(e.value)
    with pytest.raises(ArchiveError, match="format") as e:
        pack([eps], tmp_path / "a.rar")
    assert e.value.exit_code == 2
    pack([eps], tmp_path / "a.bin", format="zip")
    assert verify(tmp_path / "a.bin")["archive_format"] == "zip"


@pytest.mark.parametrize("fmt", FORMATS)
def test_pack_is_atomic_when_a_file_changes_mid_pack(eps, tmp_path, monkeypatch, fmt):
    ep0 = sorted(p for p in eps.iterdir() if p.is_dir())[0]
    frame = ep0 / "frames" / "image" / "000003.jpg"
    original = A._member_source.__wrapped__ if hasattr(A._member_source, "__wrapped__") else None
    assert original is not None

    def tamper(e):
        if e.path == frame:
            frame.write_bytes(b"X" * e.size)  # same size, different bytes
        return A.contextmanager(original)(e)

    monkeypatch.setattr(A, "_member_source", tamper)
    out = tmp_path / f"a.{fmt}"
    out.write_bytes(b"the previous archive")
    with pytest.raises(ArchiveError, match="changed while packing"):
        pack([eps], out)
    assert out.read_bytes() == b"the previous archive"  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("a.")) == [out.name]  # no temp left


# =========================================================================== anonymisation


def _add_identity(ep: Path) -> dict:
    meta = json.loads((ep / "metadata.json").read_bytes())
    meta.update(operator="alice", Device_Serial="SN-123", hostname="pi5-garage", gps={"lat": 51.5, "lon": -0.12},
                rig={"serial": "R-9", "lat": 51.5, "firmware": "1.2"}, note="kept")
    meta["tags"] = meta["tags"] + ["operator:alice", "Device:pi5-17", "gps:51.5,-0.12", "location:home", "track:a"]
    (ep / "metadata.json").write_text(json.dumps(meta, indent=1))
    return meta


@pytest.mark.parametrize("fmt", FORMATS)
def test_anonymize_hash_mode(eps, tmp_path, fmt):
    ep0 = sorted(p for p in eps.iterdir() if p.is_dir())[0]
    _add_identity(ep0)
    before = tree(eps)
    s = pack([eps], tmp_path / f"a.{fmt}", anonymize=True, origin_tag="origin:pi5", salt="pepper")
    assert tree(eps) == before  # sources untouched
    an = s["anonymization"]
    assert an["enabled"] and an["mode"] == "hash" and an["salt"] == "provided" and an["files_rewritten"] == 2
    assert "operator" in an["keys"] and "operator:" in an["tag_prefixes"] and s["origin_tag"] == "origin:pi5"
    out = tmp_path / "out"
    unpack(tmp_path / f"a.{fmt}", out)
    meta = json.loads((out / ep0.name / "metadata.json").read_bytes())
    h = A._pseudonym("alice", "pepper")
    assert h.startswith("anon:") and len(h) == 5 + 16
    assert meta["operator"] == h
    assert meta["Device_Serial"] == A._pseudonym("SN-123", "pepper")
    assert meta["hostname"].startswith("anon:") and meta["gps"].startswith("anon:")
    assert meta["rig"]["serial"].startswith("anon:") and meta["rig"]["lat"].startswith("anon:")
    assert meta["rig"]["firmware"] == "1.2" and meta["note"] == "kept"
    assert meta["tags"] == ["origin:synthetic", "seed:0", "operator:" + h, "Device:" + A._pseudonym("pi5-17", "pepper"),
                            "gps:" + A._pseudonym("51.5,-0.12", "pepper"), "location:" + A._pseudonym("home", "pepper"),
                            "track:a", "origin:pi5"]
    assert "alice" not in (out / ep0.name / "metadata.json").read_text()
    # the other episode got the origin tag too, and both still read
    ep1 = sorted(p for p in out.iterdir() if p.is_dir())[1]
    assert json.loads((ep1 / "metadata.json").read_bytes())["tags"][-1] == "origin:pi5"
    for ep in (out / ep0.name, ep1):
        read_episode(ep)
    # only the metadata files differ from the sources
    diff = {k for k, v in tree(out).items() if before[k] != v}
    assert diff == {f"{ep0.name}/metadata.json", f"{ep1.name}/metadata.json"}


def test_anonymize_drop_mode_and_random_salt(eps, tmp_path):
    ep0 = sorted(p for p in eps.iterdir() if p.is_dir())[0]
    _add_identity(ep0)
    s = pack([eps], tmp_path / "a.tar.zst", anonymize=True, anonymize_mode="drop")
    assert s["anonymization"]["mode"] == "drop" and s["anonymization"]["salt"] == "random"
    unpack(tmp_path / "a.tar.zst", tmp_path / "out")
    meta = json.loads((tmp_path / "out" / ep0.name / "metadata.json").read_bytes())
    for k in ("operator", "Device_Serial", "hostname", "gps"):
        assert k not in meta
    assert meta["rig"] == {"firmware": "1.2"} and meta["note"] == "kept"
    assert meta["tags"] == ["origin:synthetic", "seed:0", "track:a"]
    read_episode(tmp_path / "out" / ep0.name)


def test_anonymize_metadata_function():
    meta = {"operator_id": 17, "user": None, "tags": ["serial:abc", "x"], "runs": [{"host": "h", "k": 1}]}
    h = A.anonymize_metadata(meta, mode="hash", salt="s")
    assert h == {"operator_id": A._pseudonym(17, "s"), "user": None, "tags": ["serial:" + A._pseudonym("abc", "s"), "x"],
                 "runs": [{"host": A._pseudonym("h", "s"), "k": 1}]}
    assert A.anonymize_metadata(meta, mode="drop", origin_tag="origin:x") == {"tags": ["x", "origin:x"], "runs": [{"k": 1}]}
    assert A.anonymize_metadata(meta, mode=None, origin_tag="x") == {**meta, "tags": ["serial:abc", "x"]}
    assert A._pseudonym("a", "s1") != A._pseudonym("a", "s2")


def test_anonymize_single_file_episodes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "ep.jsonl").write_bytes(b'{"metadata": {"operator": "bob", "tags": ["user:bob"]}}\n{"reward": 0}\n')
    (src / "ep2.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"metadata": {"lat": 1.0}}\n{"reward": 1}\n'))
    (src / "ep3.json").write_text(json.dumps({"metadata": {"hostname": "pi"}, "steps": []}))
    (src / "gates.json").write_text(json.dumps({"min_steps": 3, "user": "not episode metadata"}))
    s = pack([src], tmp_path / "a.zip", anonymize=True, anonymize_mode="drop")
    assert s["episodes"] == 4 and s["anonymization"]["files_rewritten"] == 3
    unpack(tmp_path / "a.zip", tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "ep.jsonl").read_bytes() == b'{"metadata":{"tags":[]}}\n{"reward": 0}\n'
    plain = zstandard.ZstdDecompressor().decompressobj().decompress((out / "ep2.jsonl.zst").read_bytes())
    assert plain == b'{"metadata":{}}\n{"reward": 1}\n'
    assert json.loads((out / "ep3.json").read_bytes()) == {"metadata": {}, "steps": []}
    assert (out / "gates.json").read_bytes() == (src / "gates.json").read_bytes()


def test_anonymize_refuses_metadata_it_cannot_parse(eps, tmp_path):
    ep0 = sorted(p for p in eps.iterdir() if p.is_dir())[0]
    (ep0 / "metadata.json").write_text('{"operator": "alice", ')
    with pytest.raises(ArchiveError, match="unanonymised"):
        pack([eps], tmp_path / "a.tar.zst", anonymize=True)
    assert not (tmp_path / "a.tar.zst").exists()
    pack([eps], tmp_path / "a.tar.zst")  # without anonymisation it is archived as it is


# =========================================================================== unpack destinations


def test_unpack_refuses_existing_content_unless_overwrite(eps, tmp_path):
    arch = tmp_path / "a.tar.zst"
    pack([eps], arch)
    out = tmp_path / "out"
    out.mkdir()
    unpack(arch, out)  # an empty folder is fine
    with pytest.raises(ArchiveError, match="not empty") as e:
        unpack(arch, out)
    assert e.value.exit_code == 2
    (out / "stale.txt").write_text("old")
    unpack(arch, out, overwrite=True)
    assert tree(out) == tree(eps)
    assert sorted(os.listdir(tmp_path)) == ["a.tar.zst", "episodes", "out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArchiveError, match="not a folder"):
        unpack(arch, tmp_path / "file", overwrite=True)


def test_failed_overwrite_keeps_the_old_content(tmp_path):
    arch = write_tar_zst(tmp_path / "bad.tar.zst", [manifest(GOOD), M("ep/metadata.json", b"tampered"),
                                                    M("ep/steps/000000.jsonl", GOOD["ep/steps/000000.jsonl"])])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ArchiveError):
        unpack(arch, out, overwrite=True)
    assert tree(out) == {"keep.txt": b"precious"}
    assert sorted(os.listdir(tmp_path)) == ["bad.tar.zst", "out"]


def test_unpack_removes_parents_it_created_on_failure(tmp_path):
    arch = write_zip(tmp_path / "bad.zip", [manifest(GOOD), M("ep/metadata.json", b"x" * 22)])
    with pytest.raises(ArchiveError):
        unpack(arch, tmp_path / "new" / "deep" / "out")
    assert sorted(os.listdir(tmp_path)) == ["bad.zip"]
    good = write_zip(tmp_path / "good.zip", good_members())
    unpack(good, tmp_path / "new" / "deep" / "out")
    assert tree(tmp_path / "new" / "deep" / "out") == GOOD


def test_missing_archive_is_a_usage_error(tmp_path):
    with pytest.raises(ArchiveError) as e:
        unpack(tmp_path / "nope.tar.zst", tmp_path / "out")
    assert e.value.exit_code == 2
    assert not (tmp_path / "out").exists()


# =========================================================================== hostile archives


HOSTILE = {
    # case: (extra members appended after the good ones, expected text, member named)
    "traversal": ([M("../evil", b"pwned")], "path traversal", "../evil"),
    "deep_traversal": ([M("ep/../../evil", b"pwned")], "path traversal", "ep/../../evil"),
    "absolute": ([M("/tmp/abs_evil", b"pwned")], "absolute path", "/tmp/abs_evil"),
    "drive_letter": ([M("C:/evil", b"pwned")], "drive-letter", "C:/evil"),
    "backslash": ([M("..\\evil", b"pwned")], "backslash", "..\\evil"),
    "dot_component": ([M("./ep/x", b"pwned")], "non-canonical", "./ep/x"),
    "symlink": ([M("ep/passwd", kind="sym", link="/etc/passwd")], "symlink to '/etc/passwd'", "ep/passwd"),
    "hardlink": ([M("ep/hl", kind="hard", link="../../outside")], "hard link to '../../outside'", "ep/hl"),
    "device": ([M("ep/null", kind="chr")], "device node", "ep/null"),
    "fifo": ([M("ep/pipe", kind="fifo")], "FIFO", "ep/pipe"),
    "directory": ([M("ep/sub", kind="dir")], "directory entry", "ep/sub"),
    "duplicate": ([M("ep/metadata.json", GOOD["ep/metadata.json"])], "duplicate", "ep/metadata.json"),
    "manifest_twice": ([manifest(GOOD)], "duplicate", MANIFEST_NAME),
    "unlisted": ([M("ep/extra.bin", b"surprise")], "not listed in MANIFEST.json", "ep/extra.bin"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_member_is_refused(work, fmt, case):
    extra, needle, member = HOSTILE[case]
    if fmt == "zip" and extra[0].kind == "hard":
        pytest.skip("zip has no hard links")
    arch = craft(fmt, work[0] / f"{case}.{fmt}", good_members() + extra)
    if fmt == "zip" and extra[0].kind == "dir":
        member += "/"  # how zip spells a directory entry
    err = assert_refused(arch, work[1], needle, "refused", member=member)
    assert "links are refused" in str(err) if extra[0].kind in ("sym", "hard") else True
    assert not Path("/tmp/abs_evil").exists()
    assert not (work[0].parent / "evil").exists() and not (work[0] / "evil").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_member_first_is_refused_before_anything_is_written(work, fmt):
    arch = craft(fmt, work[0] / f"a.{fmt}", [M("../evil", b"pwned")] + good_members())
    assert_refused(arch, work[1], "first member is '../evil', not MANIFEST.json")


MANIFEST_CASES = {
    "lists_missing": (lambda: [manifest({**GOOD, "ep/gone.bin": b"x"})] + good_members()[1:],
                      "listed in MANIFEST.json but not in the archive", "ep/gone.bin"),
    "wrong_sha": (lambda: [manifest(GOOD)] + [M("ep/metadata.json", b'{"status": "complEte"}'),
                                              M("ep/steps/000000.jsonl", GOOD["ep/steps/000000.jsonl"])],
                  "sha256 mismatch", "ep/metadata.json"),
    "wrong_size": (lambda: [manifest(GOOD)] + [M("ep/metadata.json", b"{}"), M("ep/steps/000000.jsonl", b"")],
                   "MANIFEST.json says", "ep/metadata.json"),
    "lists_traversal": (lambda: [manifest({"../evil": b"x"})] + [M("../evil", b"x")], "lists '../evil': path traversal",
                        MANIFEST_NAME),
    "lists_file_and_folder": (lambda: [manifest({"ep": b"x", "ep/a": b"y"})], "both as a file and as a folder", MANIFEST_NAME),
    "not_json": (lambda: [M(MANIFEST_NAME, b"{not json")], "not valid JSON", MANIFEST_NAME),
    "foreign_manifest": (lambda: [M(MANIFEST_NAME, b'{"format": "other"}')], "not an rldskit archive", MANIFEST_NAME),
    "malformed_entry": (lambda: [manifest(GOOD, members=[{"path": "ep/a", "size": -1, "sha256": "0" * 64}])],
                        "malformed entry", MANIFEST_NAME),
    "too_many": (lambda: [manifest({f"f{i}": b"" for i in range(11)})], "more than max_members=10", MANIFEST_NAME),
    "empty": (lambda: [], "", None),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_manifest_mismatches_are_refused(work, fmt, case):
    make, needle, member = MANIFEST_CASES[case]
    arch = craft(fmt, work[0] / f"{case}.{fmt}", make())
    assert_refused(arch, work[1], needle, member=member, max_members=10)


def test_oversized_tar_extended_header_is_refused(work):
    ti = tarfile.TarInfo("x")
    ti.type = tarfile.XHDTYPE
    ti.size = A.MAX_TAR_HEADER + 1
    co = zstandard.ZstdCompressor().compressobj()
    arch = work[0] / "pax.tar.zst"
    arch.write_bytes(co.compress(ti.tobuf(tarfile.USTAR_FORMAT) + bytes(A.MAX_TAR_HEADER + 1024)) + co.flush())
    assert_refused(arch, work[1], "extended header")


# ---- bombs


def test_tar_zst_bomb_refused_by_ratio_while_streaming(work):
    """1 GiB of zeros in one member (a ~33 KB archive): refused a few MB in."""
    big = 1 << 30
    arch = write_tar_zst(work[0] / "bomb.tar.zst", [manifest({"ep/zeros.bin": big}), M("ep/zeros.bin", big)])
    assert arch.stat().st_size < 100_000
    assert_refused(arch, work[1], "max_ratio=200", "decompression bomb", member="ep/zeros.bin")


def test_tar_zst_bomb_refused_by_max_bytes(work):
    big = 1 << 30
    arch = write_tar_zst(work[0] / "bomb.tar.zst", [manifest({"ep/zeros.bin": big}), M("ep/zeros.bin", big)])
    assert_refused(arch, work[1], "declares", "max_bytes", member=MANIFEST_NAME, max_bytes=64 << 20, max_ratio=1e12)
    # data hidden after the end of the tar is counted too
    arch = write_tar_zst(work[0] / "tail.tar.zst", good_members(), trailing_zeros=big)
    assert_refused(arch, work[1], "more than max_bytes=67108864", max_bytes=64 << 20, max_ratio=1e12)


def test_zip_bomb_refused(work):
    big = 200 << 20
    arch = write_zip(work[0] / "bomb.zip", [manifest({"ep/zeros.bin": big}), M("ep/zeros.bin", big)])
    assert arch.stat().st_size < 1_000_000
    assert_refused(arch, work[1], "max_ratio=200", "decompression bomb")
    assert_refused(arch, work[1], "declares", "max_bytes", member=MANIFEST_NAME, max_bytes=64 << 20, max_ratio=1e12)


# ---- corrupt and truncated


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_archives_are_refused(eps, work, fmt):
    arch = Path(pack([eps], work[0] / f"a.{fmt}")["archive"])
    data = arch.read_bytes()
    n = len(data)
    for cut in sorted({0, 1, 3, 4, 10, 100, 600, n // 3, n // 2, n - 1000, n - 100, n - 23, n - 10, n - 4, n - 1}):
        cut_arch = work[0] / f"cut{cut}.{fmt}"
        cut_arch.write_bytes(data[:cut])
        err = assert_refused(cut_arch, work[1])
        assert any(w in str(err) for w in ("truncated", "corrupt", "not in the archive", "magic", "empty")), str(err)
        cut_arch.unlink()


@pytest.mark.parametrize("prefix", [b"", b"\x28\xb5\x2f\xfd", b"PK\x03\x04"])
def test_garbage_is_refused(work, prefix):
    arch = work[0] / "garbage.tar.zst"
    arch.write_bytes(prefix + random.Random(0).randbytes(4096))
    assert_refused(arch, work[1])


def test_trailing_garbage_after_the_zstd_frame_is_refused(eps, work):
    arch = Path(pack([eps], work[0] / "a.tar.zst")["archive"])
    with open(arch, "ab") as f:
        f.write(b"hidden payload")
    assert_refused(arch, work[1], "unexpected bytes after the zstd frame")


# ---- property: mutations never unpack to wrong content


@pytest.fixture(scope="module")
def valid_archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    src = episodes(root / "src", n=1, steps=3)
    out = {fmt: Path(pack([src], root / f"a.{fmt}")["archive"]).read_bytes() for fmt in FORMATS}
    return out, tree(src)


@st.composite
def mutation(draw, n: int):
    if draw(st.booleans()):
        return ("cut", draw(st.integers(0, n - 1)))
    return ("flip", draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)), min_size=1, max_size=3)))


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=examples(150), deadline=None)
@given(data=st.data())
def test_mutated_archives_never_unpack_wrong_content(valid_archives, fmt, data):
    archives, expected = valid_archives
    raw = archives[fmt]
    kind, arg = data.draw(mutation(len(raw)))
    if kind == "cut":
        bad = raw[:arg]
    else:
        b = bytearray(raw)
        for pos, x in arg:
            b[pos] ^= x
        bad = bytes(b)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        arch = d / f"m.{fmt}"
        arch.write_bytes(bad)
        before = snapshot(d)
        try:
            unpack(arch, d / "out", durable=False)
        except ArchiveError as e:
            event(f"refused: {e.reason.split(':')[0][:40]}")
            assert snapshot(d) == before
            assert not (d / "out").exists()
        else:
            event("unpacked (content verified)")
            assert tree(d / "out") == expected
            assert sorted(os.listdir(d)) == sorted(["out", arch.name])


# =========================================================================== CLI


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    ap = argparse.ArgumentParser(prog="rldskit")
    sub = ap.add_subparsers(dest="command", required=True)
    A.register_cli(sub)
    args = ap.parse_args(argv)
    code = args.func(args)
    o = capsys.readouterr()
    return code, o.out, o.err


def test_cli_pack_verify_unpack(eps, tmp_path, capsys):
    arch = tmp_path / "episodes_pi5_follow.tar.zst"
    code, out, _ = _cli(["pack", str(eps), "--out", str(arch), "--anonymize", "--anonymize-mode", "drop",
                         "--origin-tag", "origin:pi5"], capsys)
    assert code == 0 and "packed 2 episodes" in out and "anonymised (drop" in out
    code, out, _ = _cli(["verify-archive", str(arch)], capsys)
    assert code == 0 and "ok" in out
    code, out, _ = _cli(["unpack", str(arch), "--out", str(tmp_path / "rlds"), "--json"], capsys)
    assert code == 0 and json.loads(out)["files"] == len(tree(eps))
    code, _, err = _cli(["unpack", str(arch), "--out", str(tmp_path / "rlds")], capsys)
    assert code == 2 and "not empty" in err
    code, _, _ = _cli(["unpack", str(arch), "--out", str(tmp_path / "rlds"), "--overwrite"], capsys)
    assert code == 0


def test_cli_refusals_name_archive_and_member(work, capsys):
    arch = write_tar_zst(work[0] / "evil.tar.zst", good_members() + [M("../evil", b"x")])
    code, _, err = _cli(["unpack", str(arch), "--out", str(work[1] / "out")], capsys)
    assert code == 1 and str(arch) in err and "'../evil'" in err and "path traversal" in err
    code, _, err = _cli(["verify-archive", str(arch)], capsys)
    assert code == 1 and "'../evil'" in err
    code, _, err = _cli(["verify-archive", str(work[0] / "missing.zip")], capsys)
    assert code == 2 and "no such archive" in err
    code, _, err = _cli(["pack", str(work[0] / "nothing"), "--out", str(work[0] / "x.zip")], capsys)
    assert code == 2 and "no such file" in err
    assert not (work[1] / "out").exists()


def test_import_stays_light():
    code = ("import sys, rldskit.archive; heavy = [m for m in ('tensorflow', 'jax', 'torch', 'apache_beam', 'pyarrow', "
            "'PIL', 'rldskit.formats.capture_dir') if m in sys.modules]; print(heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_pack_without_normalisation_keeps_modes_and_times(eps, tmp_path):
    ep0 = sorted(p for p in eps.iterdir() if p.is_dir())[0]
    os.chmod(ep0 / "metadata.json", 0o600)
    os.utime(ep0 / "metadata.json", (1_700_000_000, 1_700_000_000))
    arch = Path(pack([eps], tmp_path / "a.tar.zst", normalize=False)["archive"])
    with open(arch, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r, tarfile.open(fileobj=r, mode="r|") as tf:
        info = {t.name: t for t in tf}
    t = info[f"{ep0.name}/metadata.json"]
    assert (t.mode, t.mtime) == (0o600, 1_700_000_000)
    unpack(arch, tmp_path / "out")
    assert tree(tmp_path / "out") == tree(eps)
