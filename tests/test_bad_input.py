"""Bad input gives a specific issue code, never a traceback.

Every case starts from a good episode written by the real logger (or a single-file episode
made from one), breaks one thing, and checks that ``validate_paths`` reports the expected
code (with its documented severity) at the right step and field. When the problem makes the
episode unreadable (JSON, types, shapes, missing data, frame paths, gaps, metadata),
``read_episode`` raises an :class:`EpisodeError` whose message names the file, the step, the
field and what was expected; value-level problems (NaN, bounds, time, flags, image content,
text policy) leave the episode readable and are the validator's to report.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from helpers_capture import (arm_spec, chunk_files, del_path, describe, donkey_spec, edit_lines, edit_meta,
                             find, inline_frames, jpeg_bytes, plan, png_bytes, read_lines, read_meta, record,
                             with_flags, write_single_file)
from rldskit import cli
from rldskit.formats.capture_dir import EpisodeError, read_episode, scan_episode
from rldskit.issues import CODES, ERROR, WARNING
from rldskit.spec import EpisodeSpec
from rldskit.validation import Gates, validate_paths


@dataclass
class Case:
    """``make(tmp) -> path`` builds the bad input. ``read``: whether read_episode must raise
    (and the message must name ``file``, the step and the field)."""

    make: Callable[[Path], Path]
    code: str
    step: int | None = None
    field: str | None = None
    read: bool = False
    file: str | None = None  # a file name the EpisodeError message must contain
    gates: Gates = dc_field(default_factory=Gates)
    spec: EpisodeSpec | None = None
    message: str | None = None  # text the issue's message must contain


N = 12


def good(tmp: Path, n: int = N, *, spec: EpisodeSpec | None = None, chunk_steps: int = 1000, terminal: bool = False,
         episode_id: str = "ep0", root: str = "data", steps=None) -> Path:
    spec = spec or donkey_spec()
    return record(tmp / root, spec, steps if steps is not None else plan(spec, n, seed=3), terminal=terminal,
                  episode_id=episode_id, chunk_steps=chunk_steps)


def mutate_step(i: int, fn: Callable[[dict], Any], **kw) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        ep = good(tmp, **kw)

        def edit(lines):
            fn(lines[i])

        edit_lines(ep, edit)
        return ep
    return make


def setter(path: str, value: Any) -> Callable[[dict], None]:
    def fn(line: dict) -> None:
        node = line
        *parents, last = path.split("/")
        for p in parents:
            node = node[p]
        node[last] = value
    return fn


def single_file(name: str, fn: Callable[[list[dict]], Any], *, terminal: bool = False, flags: bool = True) -> Callable[[Path], Path]:
    """A single-file episode (frames inlined) made from a good capture, then ``fn(lines)``."""
    def make(tmp: Path) -> Path:
        spec = donkey_spec()
        ep = good(tmp, terminal=terminal)
        lines = inline_frames(ep, read_lines(ep), spec)
        if flags:
            with_flags(lines, terminal)
        fn(lines)
        meta = {k: v for k, v in read_meta(ep).items() if k not in ("status", "end")}
        out = tmp / "single"
        out.mkdir()
        spec.save(out / "schema.json")
        return write_single_file(out / name, meta, lines, end=None if flags else {"terminal": terminal})
    return make


# --------------------------------------------------------------------------- builders for the harder cases


def truncated_last_line(tmp: Path) -> Path:
    ep = good(tmp, chunk_steps=5)
    last = chunk_files(ep)[-1]
    data = last.read_bytes()
    last.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 30])  # 30 bytes into step 11
    return ep


def truncated_single_jsonl(tmp: Path) -> Path:
    f = single_file("ep.jsonl", lambda lines: None)(tmp)
    data = f.read_bytes()
    f.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 25])
    return f


def garbage_line(tmp: Path) -> Path:
    ep = good(tmp)
    f = chunk_files(ep)[0]
    lines = f.read_bytes().split(b"\n")
    lines[4] = b"\x00\x9f\xff\xfe\x13 binary \x00 garbage"
    f.write_bytes(b"\n".join(lines))
    return ep


def garbage_file(tmp: Path) -> Path:
    ep = good(tmp)
    chunk_files(ep)[0].write_bytes(bytes(range(256)) * 8)  # includes a newline, NULs, invalid UTF-8
    return ep


def garbage_file_no_newline(tmp: Path) -> Path:
    ep = good(tmp)
    chunk_files(ep)[0].write_bytes(b"\x89PNG\r\x1a\x00\x00\x00\rIHDR" + bytes(range(11, 200)))
    return ep


def garbage_metadata(tmp: Path) -> Path:
    ep = good(tmp)
    (ep / "metadata.json").write_bytes(b"\x00\xff\xfe garbage \x80\x81")
    return ep


def metadata_not_object(tmp: Path) -> Path:
    ep = good(tmp)
    (ep / "metadata.json").write_text("[1, 2, 3]")
    return ep


def no_metadata(tmp: Path) -> Path:
    ep = good(tmp)
    (ep / "metadata.json").unlink()
    return ep


def bad_terminal(tmp: Path) -> Path:
    ep = good(tmp)
    edit_meta(ep, lambda m: m["end"].update(terminal="yes"))
    return ep


def count_mismatch(tmp: Path) -> Path:
    ep = good(tmp)
    edit_meta(ep, lambda m: m["end"].update(num_steps=N + 3))
    return ep


def unfinished(tmp: Path) -> Path:
    ep = good(tmp)
    edit_meta(ep, lambda m: (m.update(status="recording"), m.pop("end")))
    return ep


def timestamps(fn: Callable[[list[dict]], None]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        ep = good(tmp)
        edit_lines(ep, fn)
        return ep
    return make


def go_back(lines):
    for k in ("control", "camera"):
        lines[6]["timestamp"][k] = lines[5]["timestamp"][k] - 0.01


def repeat(lines):
    lines[6]["timestamp"] = dict(lines[5]["timestamp"])


def skew(lines):
    lines[3]["timestamp"]["camera"] = lines[3]["timestamp"]["control"] - 0.012


def slow_rate(lines):
    for i, line in enumerate(lines):
        line["timestamp"] = {"control": 1.7e9 + 0.2 * i, "camera": 1.7e9 + 0.2 * i - 0.001}


def frame_file(fn: Callable[[Path], None], step: int = 5) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        ep = good(tmp)
        fn(ep / "frames" / "image" / f"{step:06d}.jpg")
        return ep
    return make


def symlink_out(tmp: Path) -> Path:
    ep = good(tmp)
    secret = tmp / "secret.jpg"
    secret.write_bytes(jpeg_bytes())
    f = ep / "frames" / "image" / "000005.jpg"
    f.unlink()
    f.symlink_to(secret)
    return ep


def frames_dir_links_out(tmp: Path) -> Path:
    ep = good(tmp)
    outside = tmp / "elsewhere"
    shutil.move(ep / "frames" / "image", outside)
    (ep / "frames" / "image").symlink_to(outside, target_is_directory=True)
    return ep


def empty_folder(tmp: Path) -> Path:
    (tmp / "empty" / "sub").mkdir(parents=True)
    return tmp / "empty"


def schema_version(version: str, name: str = "pi5_donkey") -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        ep = good(tmp)
        edit_meta(ep, lambda m: m.update(schema={"name": name, "version": version}))
        return ep
    return make


def long_instruction(tmp: Path) -> Path:
    spec = arm_spec()
    ep = good(tmp, spec=spec)
    edit_lines(ep, lambda lines: lines[7].update(language_instruction="ä" * 1_000_000))
    return ep


def duplicate_ids(tmp: Path) -> Path:
    good(tmp, root="a/site1")
    good(tmp, root="a/site2")
    return tmp / "a"


def deleted_middle_chunk(tmp: Path) -> Path:
    ep = good(tmp, chunk_steps=4)
    (ep / "steps" / "000004.jsonl").unlink()
    return ep


def bad_discount_spec() -> EpisodeSpec:
    d = donkey_spec().to_dict()
    d["steps"]["discount"] = {"type": "scalar", "dtype": "float32"}  # no bounds declared
    return EpisodeSpec.from_dict(d)


def bad_discount(tmp: Path) -> Path:
    spec = bad_discount_spec()
    ep = good(tmp, spec=spec, steps=plan(donkey_spec(), N, seed=3))
    edit_lines(ep, lambda lines: lines[2].update(discount=1.5))
    return ep


def int_spec() -> EpisodeSpec:
    return EpisodeSpec.from_dict({
        "name": "ints", "version": "1.0.0", "last_step": "valid",
        "steps": {"observation": {"count": {"type": "scalar", "dtype": "int32"},
                                  "pix": {"type": "tensor", "shape": [2], "dtype": "uint8"},
                                  "big": {"type": "scalar", "dtype": "int64"}},
                  "action": {"type": "tensor", "shape": [1], "dtype": "float32"}}})


def ints(fn: Callable[[list[dict]], None]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        steps = [{"observation": {"count": i, "pix": [i, 255 - i], "big": 2**62 + i}, "action": [0.0]} for i in range(N)]
        ep = good(tmp, spec=int_spec(), steps=steps)
        edit_lines(ep, fn)
        return ep
    return make


def not_an_episode(tmp: Path) -> Path:
    f = tmp / "notes.txt"
    f.write_text("hello")
    return f


# --------------------------------------------------------------------------- the cases

CASES: dict[str, Case] = {
    # reading
    "truncated last line of a complete episode": Case(truncated_last_line, "JSON_TRUNCATED", step=11, read=True, file="000010.jsonl"),
    "truncated single-file jsonl": Case(truncated_single_jsonl, "JSON_TRUNCATED", step=11, read=True, file="ep.jsonl"),
    "binary garbage line": Case(garbage_line, "JSON_INVALID", step=4, read=True, file="000000.jsonl line 5"),
    "binary garbage step file": Case(garbage_file, "JSON_INVALID", step=0, read=True, file="000000.jsonl line 1"),
    "binary garbage step file without newline": Case(garbage_file_no_newline, "JSON_INVALID", step=0, read=True, file="000000.jsonl"),
    "line that is not an object": Case(timestamps(lambda lines: lines.__setitem__(3, [1, 2])), "JSON_INVALID", step=3, read=True,
                                       file="000000.jsonl line 4"),
    "binary garbage metadata": Case(garbage_metadata, "METADATA_INVALID", read=True, file="metadata.json"),
    "metadata not an object": Case(metadata_not_object, "METADATA_INVALID", read=True, file="metadata.json"),
    "metadata missing": Case(no_metadata, "METADATA_MISSING", read=True, file="metadata.json"),
    "end.terminal not a bool": Case(bad_terminal, "METADATA_INVALID", read=True, message="terminal"),
    "step count differs from the end record": Case(count_mismatch, "STEP_COUNT_MISMATCH", read=True),
    "never ended": Case(unfinished, "EPISODE_UNFINISHED", read=True),
    "not an episode": Case(not_an_episode, "NOT_AN_EPISODE"),
    "empty folder": Case(empty_folder, "NO_EPISODES"),
    "missing path": Case(lambda tmp: tmp / "nowhere", "PATH_NOT_FOUND"),
    # JSON types and shapes
    "string for a number": Case(mutate_step(3, setter("reward", "0.5")), "FIELD_TYPE", 3, "reward", read=True, message="float32"),
    "string for a timestamp": Case(mutate_step(2, setter("timestamp/control", "noon")), "FIELD_TYPE", 2, "timestamp/control", read=True),
    "dict for a list": Case(mutate_step(4, setter("action", {"steering": 0.1, "throttle": 0.2})), "FIELD_TYPE", 4, "action", read=True,
                            message="shape [2]"),
    "list for a scalar": Case(mutate_step(5, setter("reward", [1.0, 2.0])), "FIELD_SHAPE", 5, "reward", read=True),
    "bool for text": Case(mutate_step(6, setter("control_mode", True)), "FIELD_TYPE", 6, "control_mode", read=True, message="string"),
    "wrong shape": Case(mutate_step(2, setter("action", [0.1, 0.2, 0.3])), "FIELD_SHAPE", 2, "action", read=True, message="[2]"),
    "ragged nested list": Case(mutate_step(2, setter("action", [[0.1], 0.2])), "FIELD_SHAPE", 2, "action", read=True),
    "missing field": Case(mutate_step(5, lambda line: del_path(line, "reward")), "FIELD_MISSING", 5, "reward", read=True),
    "missing image": Case(mutate_step(7, lambda line: del_path(line, "observation/image")), "FIELD_MISSING", 7, "observation/image",
                          read=True),
    "missing observation tree": Case(mutate_step(1, lambda line: del_path(line, "observation")), "FIELD_MISSING", 1, "observation/image",
                                     read=True),
    "null for a required number": Case(mutate_step(8, setter("action", None)), "FIELD_MISSING", 8, "action", read=True),
    "null for a required text": Case(mutate_step(8, setter("control_mode", None)), "FIELD_MISSING", 8, "control_mode", read=True),
    "null for a required image": Case(mutate_step(8, setter("observation/image", None)), "FIELD_MISSING", 8, "observation/image",
                                      read=True),
    "extra top-level field": Case(mutate_step(5, setter("weather", "rain")), "FIELD_UNEXPECTED", 5, "weather"),
    "extra nested field": Case(mutate_step(0, setter("observation/lidar", [1, 2])), "FIELD_UNEXPECTED", 0, "observation/lidar"),
    "extra field in a nested tree deep down": Case(mutate_step(9, setter("timestamp/gps", 1.0)), "FIELD_UNEXPECTED", 9, "timestamp/gps"),
    # integer dtypes
    "fractional int": Case(ints(lambda lines: lines[3]["observation"].update(count=1.5)), "FIELD_DTYPE", 3, "observation/count",
                           read=True, message="non-integer"),
    "int above uint8": Case(ints(lambda lines: lines[4]["observation"].update(pix=[1, 300])), "FIELD_DTYPE", 4, "observation/pix",
                            read=True, message="outside"),
    "negative uint8": Case(ints(lambda lines: lines[5]["observation"].update(pix=[-1, 3])), "FIELD_DTYPE", 5, "observation/pix", read=True),
    "int beyond 64 bits": Case(ints(lambda lines: lines[6]["observation"].update(big=2**70)), "FIELD_DTYPE", 6, "observation/big", read=True),
    "NaN in an int": Case(ints(lambda lines: lines[7]["observation"].update(count=float("nan"))), "FIELD_DTYPE", 7, "observation/count",
                          read=True),
    # values
    "NaN": Case(mutate_step(4, setter("action", [float("nan"), 0.0])), "NON_FINITE", 4, "action"),
    "Inf": Case(mutate_step(9, setter("reward", float("inf"))), "NON_FINITE", 9, "reward"),
    "-Inf timestamp": Case(mutate_step(9, setter("timestamp/camera", float("-inf"))), "NON_FINITE", 9, "timestamp/camera"),
    "out of bounds": Case(mutate_step(7, setter("action", [1.5, 0.2])), "OUT_OF_BOUNDS", 7, "action", message="steering"),
    "out of gated bounds": Case(mutate_step(3, setter("action", [0.0, 0.9])), "OUT_OF_BOUNDS", 3, "action/throttle",
                                gates=Gates(bounds={"action/throttle": (-0.5, 0.5)}), message="throttle"),
    "optional value out of bounds": Case(mutate_step(2, setter("policy_action", [0.0, -3.0])), "OUT_OF_BOUNDS", 2, "policy_action",
                                         message="throttle"),
    "discount over 1 (spec without bounds)": Case(bad_discount, "DISCOUNT_RANGE", 2, "discount", spec=bad_discount_spec()),
    "discount over 1 (spec bounds)": Case(mutate_step(2, setter("discount", 1.5)), "OUT_OF_BOUNDS", 2, "discount"),
    # time
    "timestamps go backwards": Case(timestamps(go_back), "TIMESTAMP_NON_MONOTONIC", 6, "timestamp/control"),
    "duplicated timestamps": Case(timestamps(repeat), "TIMESTAMP_DUPLICATE", 6, "timestamp/control"),
    "stream skew over the gate": Case(timestamps(skew), "TIMESTAMP_SKEW", 3, "timestamp", message="12.00 ms"),
    "stream skew under a looser gate is fine": None,  # see test_skew_gate_is_data
    "rate outside the band": Case(timestamps(slow_rate), "RATE_OUT_OF_BAND", None, "timestamp/control", message="5.00 Hz"),
    # flags in single-file episodes
    "is_first in the middle": Case(single_file("ep.json", lambda lines: lines[3].update(is_first=True)), "FLAG_IS_FIRST", 3, "is_first"),
    "is_first missing at 0": Case(single_file("ep.jsonl", lambda lines: lines[0].update(is_first=False)), "FLAG_IS_FIRST", 0, "is_first"),
    "is_last not at the end": Case(single_file("ep.json", lambda lines: lines[-1].update(is_last=False)), "FLAG_IS_LAST", N - 1, "is_last"),
    "is_last early": Case(single_file("ep.jsonl.zst", lambda lines: lines[5].update(is_last=True)), "FLAG_IS_LAST", 5, "is_last"),
    "is_terminal not at the end": Case(single_file("ep.json", lambda lines: lines[2].update(is_terminal=True)), "FLAG_IS_TERMINAL", 2,
                                       "is_terminal"),
    "flag of the wrong type": Case(single_file("ep.json", lambda lines: lines[4].update(is_last="no")), "FIELD_TYPE", 4, "is_last",
                                   read=True),
    "flag missing in one step": Case(single_file("ep.json", lambda lines: lines[4].pop("is_last")), "FIELD_MISSING", 4, "is_last",
                                     read=True),
    # images
    "undecodable frame": Case(frame_file(lambda f: f.write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))), "IMAGE_UNDECODABLE", 5,
                              "observation/image", gates=Gates(check_images=True)),
    "garbage frame": Case(frame_file(lambda f: f.write_bytes(b"hello, not an image")), "IMAGE_UNDECODABLE", 5, "observation/image",
                          gates=Gates(check_images=True)),
    "truncated jpeg": Case(frame_file(lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])), "IMAGE_UNDECODABLE", 5,
                           "observation/image", gates=Gates(check_images=True)),
    "empty frame file": Case(frame_file(lambda f: f.write_bytes(b"")), "IMAGE_MISSING", 5, "observation/image",
                             gates=Gates(check_images=True)),
    "wrong-sized frame": Case(frame_file(lambda f: f.write_bytes(jpeg_bytes((48, 64, 3))), 2), "IMAGE_SIZE", 2, "observation/image",
                              gates=Gates(check_images=True), message="48x64x3"),
    "grey frame for RGB": Case(frame_file(lambda f: f.write_bytes(jpeg_bytes((24, 32, 1))), 2), "IMAGE_SIZE", 2, "observation/image",
                               gates=Gates(check_images=True)),
    "png where jpeg is declared": Case(frame_file(lambda f: f.write_bytes(png_bytes()), 9), "IMAGE_ENCODING", 9, "observation/image",
                                       gates=Gates(check_images=True), message="png"),
    "missing frame file": Case(frame_file(lambda f: f.unlink(), 6), "IMAGE_MISSING", 6, "observation/image", read=True,
                               file="000006.jpg"),
    "frame path escapes": Case(mutate_step(3, setter("observation/image", "../../etc/passwd")), "IMAGE_PATH", 3, "observation/image",
                               read=True),
    "absolute frame path": Case(mutate_step(3, setter("observation/image", "/etc/passwd")), "IMAGE_PATH", 3, "observation/image",
                                read=True),
    "frame path inside frames/ escaping with ..": Case(mutate_step(3, setter("observation/image", "frames/image/../../../x.jpg")),
                                                      "IMAGE_PATH", 3, "observation/image", read=True),
    "frame symlink pointing outside": Case(symlink_out, "IMAGE_PATH", 5, "observation/image", read=True),
    "frames folder links outside": Case(frames_dir_links_out, "IMAGE_PATH", 0, "observation/image", read=True),
    "frame path not a string": Case(mutate_step(3, setter("observation/image", 42)), "IMAGE_PATH", 3, "observation/image", read=True),
    "bad base64": Case(mutate_step(3, setter("observation/image", {"$base64": "***"})), "IMAGE_PATH", 3, "observation/image", read=True),
    # schema versions
    "schema of another major version": Case(schema_version("2.0.0"), "SCHEMA_MISMATCH", read=True, message="2.0.0"),
    "schema of another name": Case(schema_version("1.0.0", "so100_arm"), "SCHEMA_MISMATCH", read=True),
    "schema of another minor version": Case(schema_version("1.1.0"), "SCHEMA_MINOR_MISMATCH", message="1.1.0"),
    # text
    "1 MB language instruction": Case(long_instruction, "TEXT_TOO_LONG", 7, "language_instruction", message="1000000"),
    "emoji in a choice": Case(mutate_step(4, setter("control_mode", "user 🤖")), "TEXT_CHOICE", 4, "control_mode"),
    "RTL text in a choice": Case(mutate_step(5, setter("control_mode", "\u202eresu")), "TEXT_CHOICE", 5, "control_mode"),
    "Hebrew in a choice": Case(mutate_step(0, setter("control_mode", "משתמש")), "TEXT_CHOICE", 0, "control_mode"),
    # dataset level
    "duplicate episode ids": Case(duplicate_ids, "DUPLICATE_EPISODE_ID", None, "episode_id"),
    "too few steps": Case(good, "TOO_FEW_STEPS", gates=Gates(min_steps=50)),
    "too few episodes": Case(good, "TOO_FEW_EPISODES", gates=Gates(min_episodes=3)),
    "deleted middle chunk": Case(deleted_middle_chunk, "STEPS_GAP", 4, read=True, file="000008.jsonl"),
}
CASES = {k: v for k, v in CASES.items() if v is not None}


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_bad_input_gives_a_specific_code(tmp_path, name):
    case = CASES[name]
    path = case.make(tmp_path)
    report = validate_paths([path], case.spec, case.gates)
    hits = find(report, case.code, step=case.step, field=case.field)
    assert hits, f"expected {case.code} step={case.step} field={case.field}; got:\n{describe(report)}"
    for hit in hits:
        assert hit.severity == CODES[hit.code][0]
        assert hit.message
        if case.message:
            assert case.message in hit.message, hit.message
    # every issue's code is a documented one; errors fail the report, a lone warning does not
    assert all(i.code in CODES for i in report.issues)
    assert report.ok is (CODES[case.code][0] == WARNING and not report.errors)
    if CODES[case.code][0] == ERROR:
        assert not report.ok

    if case.code in ("NOT_AN_EPISODE", "NO_EPISODES", "PATH_NOT_FOUND", "DUPLICATE_EPISODE_ID"):
        return  # not a single episode
    if case.read:
        with pytest.raises(EpisodeError) as e:
            read_episode(path, case.spec)
        msg = str(e.value)
        assert str(path) in msg and f"[{case.code}]" in msg, msg
        if case.step is not None:
            assert f"step {case.step}" in msg, msg
        if case.field is not None:
            assert f"field {case.field}" in msg, msg
        if case.file is not None:
            assert case.file in msg, msg
        assert e.value.issues and any(i.code == case.code for i in e.value.issues)
    elif case.code not in ("TOO_FEW_STEPS", "TOO_FEW_EPISODES"):
        # value-level problems: the episode is readable; the validator reports them
        res = scan_episode(path, case.spec)
        assert res.episode is not None and res.ok, res.issues


@pytest.mark.parametrize("name", ["binary garbage step file", "string for a number", "NaN", "missing path", "schema of another minor version"])
def test_cli_reports_instead_of_raising(tmp_path, capsys, name):
    case = CASES[name]
    path = case.make(tmp_path)
    rc = cli.main(["validate", "--format", "json", str(path)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    if case.code == "PATH_NOT_FOUND":
        assert rc == 2 and "not found" in out.err
        return
    doc = json.loads(out.out)
    assert any(i["code"] == case.code for i in doc["issues"]), doc
    if CODES[case.code][0] == ERROR:
        assert rc == 1 and doc["ok"] is False
    else:
        assert rc == 0 and doc["ok"] is True
        assert cli.main(["validate", "--strict", str(path)]) == 1


# =========================================================================== a few behaviours around the codes


def test_good_episode_is_clean(tmp_path):
    ep = good(tmp_path)
    rep = validate_paths([ep], gates=Gates(check_images=True))
    assert not rep.issues, describe(rep)


def test_skew_gate_is_data(tmp_path):
    ep = timestamps(skew)(tmp_path)
    assert find(validate_paths([ep]), "TIMESTAMP_SKEW")
    assert not validate_paths([ep], gates=Gates(max_timestamp_skew_ms=20)).issues


def test_rate_check_can_be_turned_off_or_banded(tmp_path):
    ep = timestamps(slow_rate)(tmp_path)
    assert not validate_paths([ep], gates=Gates(check_rate=False)).issues
    assert not validate_paths([ep], gates=Gates(rate_hz=(4, 6))).issues


def test_schema_version_gate(tmp_path):
    ep = schema_version("1.1.0")(tmp_path)
    assert find(validate_paths([ep], gates=Gates(schema_version="exact")), "SCHEMA_MINOR_MISMATCH")[0].severity == ERROR
    assert not validate_paths([ep], gates=Gates(schema_version="ignore")).issues


def test_unicode_ids_and_text_are_fine(tmp_path):
    spec = arm_spec()
    steps = plan(spec, 10, seed=1)
    for kw in steps:
        kw["extras"]["language_instruction"] = "ramasse le cube 🟥 — הרם את הקובייה — 拿起方块"
    record(tmp_path / "a", spec, steps, episode_id="épisode_🤖_日本")
    record(tmp_path / "a", spec, steps, episode_id="épisode_🤖_日本_2")
    rep = validate_paths([tmp_path / "a"], gates=Gates(check_images=True))
    assert rep.episodes == 2 and not rep.issues, describe(rep)


def test_extra_field_only_in_a_middle_step_is_still_reported(tmp_path):
    ep = mutate_step(6, setter("observation/depth", [0.5]))(tmp_path)
    rep = validate_paths([ep])
    assert find(rep, "FIELD_UNEXPECTED", step=6, field="observation/depth"), describe(rep)
    assert rep.ok  # a warning


def test_many_bad_steps_are_summarised_not_listed(tmp_path):
    ep = good(tmp_path, n=30)
    edit_lines(ep, lambda lines: [line.update(reward="x") for line in lines])
    rep = validate_paths([ep])
    hits = find(rep, "FIELD_TYPE", field="reward")
    assert 2 <= len(hits) <= 7 and any("more steps" in h.message for h in hits), describe(rep)


def test_error_message_names_file_episode_step_and_field(tmp_path):
    ep = good(tmp_path, chunk_steps=5)
    edit_lines(ep, lambda lines: lines[7].update(reward="lots"))
    with pytest.raises(EpisodeError) as e:
        read_episode(ep)
    msg = str(e.value)
    assert msg.startswith(str(ep) + ":")
    assert "step 7" in msg and "steps/000005.jsonl line 3" in msg and "field reward" in msg
    assert "expected float32 of shape []" in msg and "'lots'" in msg


def test_out_of_bounds_message_names_every_element(tmp_path):
    ep = mutate_step(7, setter("action", [1.5, -2.0]))(tmp_path)
    hit = find(validate_paths([ep]), "OUT_OF_BOUNDS", step=7, field="action")[0]
    assert "steering" in hit.message and "throttle" in hit.message


def test_optional_text_absent_is_not_a_bad_choice(tmp_path):
    d = donkey_spec().to_dict()
    d["steps"]["control_mode"]["optional"] = True
    spec = EpisodeSpec.from_dict(d)
    steps = plan(donkey_spec(), 6, seed=1)
    steps[2]["extras"]["control_mode"] = None
    ep = record(tmp_path, spec, steps)
    got = read_episode(ep)
    assert got.steps["control_mode_present"].tolist() == [True, True, False, True, True, True]
    rep = validate_paths([ep])
    assert not rep.issues, describe(rep)


def test_scan_never_raises_on_random_byte_flips(tmp_path):
    """Flip random bytes anywhere in an episode's files: reading and validating report issues
    (or nothing, when the flip is harmless) but never raise."""
    rng = np.random.default_rng(1)
    src = good(tmp_path / "src", n=8, chunk_steps=3)
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    for k in range(40):
        ep = tmp_path / f"flip{k}" / "data" / "ep0"
        shutil.copytree(src.parent, ep.parent)
        rel = files[int(rng.integers(len(files)))]
        f = ep / rel
        data = bytearray(f.read_bytes())
        for _ in range(int(rng.integers(1, 4))):
            if data:
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
        f.write_bytes(bytes(data))
        rep = validate_paths([ep], gates=Gates(check_images=True))
        assert all(i.code in CODES for i in rep.issues)
        res = scan_episode(ep)
        if not res.ok:
            with pytest.raises(EpisodeError):
                read_episode(ep)
