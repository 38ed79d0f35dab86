"""Jetson -> Pi migration: Donkeycar v2 tubs (rldskit.importers.donkey) and older RLDS JSON
(rldskit.importers.rlds_json), with the report they share (rldskit.importers.migration)."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from fuzzing import examples
from PIL import Image

from rldskit.formats.capture_dir import read_episode
from rldskit.importers import donkey, rlds_json
from rldskit.importers.donkey import import_donkey
from rldskit.importers.migration import REPORT_FILE, MigrationError
from rldskit.importers.rlds_json import migrate_rlds_json
from rldskit.issues import CODES
from rldskit.spec import load_spec
from rldskit.validation import validate_paths

SPEC = load_spec("pi5_donkey.v1")
INPUTS = ["cam/image_array", "user/angle", "user/throttle", "user/mode", "pilot/angle", "pilot/throttle"]
TYPES = ["image_array", "float", "float", "str", "float", "float"]
T0_MS = 1_614_900_000_000


def _jpeg(h=120, w=160, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def make_tub(root: Path, sessions=(("21-03-05_0", 6), ("21-03-05_1", 5)), *, deleted=(), modes=None,
             max_len=1000, hz=20.0, size=(120, 160), name="tub_1") -> Path:
    """A Donkeycar tub v2 as datastore_v2 writes it (\\r\\n lines, catalog manifests, images/)."""
    tub = root / name
    (tub / "images").mkdir(parents=True)
    records = []
    idx = 0
    t = T0_MS
    for sid, n in sessions:
        for _ in range(n):
            mode = (modes or {}).get(idx, "user")
            img = f"{idx}_cam_image_array_.jpg"
            (tub / "images" / img).write_bytes(_jpeg(*size, seed=idx))
            rec = {"_index": idx, "_session_id": sid, "_timestamp_ms": t, "cam/image_array": img,
                   "user/angle": round(0.1 * (idx % 5) - 0.2, 3), "user/throttle": 0.3, "user/mode": mode,
                   "pilot/angle": -0.5 if mode != "user" else None, "pilot/throttle": 0.25 if mode != "user" else None}
            records.append(rec)
            idx += 1
            t += int(1000 / hz)
        t += 60_000  # a minute between sessions
    paths = []
    for c in range(0, max(1, len(records)), max_len):
        name_c = f"catalog_{c // max_len}.catalog"
        paths.append(name_c)
        chunk = records[c:c + max_len]
        lines = [json.dumps(r, sort_keys=True) + "\r\n" for r in chunk]
        (tub / name_c).write_text("".join(lines), newline="")
        (tub / f"catalog_{c // max_len}.catalog_manifest").write_text(
            json.dumps({"created_at": 1.0, "line_lengths": [len(x) for x in lines], "path": name_c,
                        "start_index": c}, sort_keys=True) + "\r\n", newline="")
    manifest = [INPUTS, TYPES, {},
                {"created_at": 1614900000.0, "sessions": {"all_full_ids": [s for s, _ in sessions], "last_id": len(sessions) - 1,
                                                          "last_full_id": sessions[-1][0]}},
                {"paths": paths, "current_index": idx, "max_len": max_len, "deleted_indexes": list(deleted)}]
    (tub / "manifest.json").write_text("".join(json.dumps(x) + "\r\n" for x in manifest), newline="")
    return tub


def _report(out: Path) -> dict:
    return json.loads((out / REPORT_FILE).read_text())


def _assert_valid(path: str, allow=()) -> None:
    rep = validate_paths([path], SPEC)
    assert not [i for i in rep.errors if i.code not in allow], rep.format_table()


def _cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="kind", required=True)
    donkey.add_import_parser(sub)
    rlds_json.add_import_parser(sub)
    args = ap.parse_args(argv)
    return args.func(args)


# ---------------------------------------------------------------- tubs

def test_two_sessions_two_valid_episodes(tmp_path):
    tub = make_tub(tmp_path, modes={8: "local_angle", 9: "local", 10: "local"})
    out = tmp_path / "out"
    rep = import_donkey([tub], out)
    assert rep.exit_code == 0
    assert [e.episode_id for e in rep.imported] == ["21-03-05_0", "21-03-05_1"]
    for e in rep.imported:
        _assert_valid(e.path)
    ep0 = read_episode(rep.imported[0].path, SPEC)
    ep1 = read_episode(rep.imported[1].path, SPEC)
    assert len(ep0) == 6 and len(ep1) == 5
    # ms -> s, one clock
    ts = np.asarray(ep0.steps["timestamp/control"])
    assert ts[0] == pytest.approx(T0_MS / 1000.0)
    assert np.allclose(np.diff(ts), 0.05)
    assert np.array_equal(ts, np.asarray(ep0.steps["timestamp/camera"]))
    # metadata
    md = ep0.metadata
    assert md["environment_id"] == "jetson_migrated"
    assert {"origin:jetson", "migrated_from:donkeycar_tub_v2", "source_tub:tub_1"} <= set(md["tags"])
    # resize 120x160 -> 480x640
    frame = ep0.steps["observation/image"][0]
    data = frame if isinstance(frame, (bytes, bytearray)) else (Path(rep.imported[0].path) / frame).read_bytes()
    assert Image.open(io.BytesIO(bytes(data))).size == (640, 480)
    assert rep.imported[0].resize["from"] == [120, 160] and rep.imported[0].resize["to"] == [480, 640]
    # provenance: session 1 = indexes 6..10; 8 local_angle, 9-10 local
    modes = list(ep1.steps["control_mode"])
    assert modes == ["user", "user", "pilot", "pilot", "pilot"]
    act = np.asarray(ep1.steps["action"])
    assert act[2] == pytest.approx([-0.5, 0.3])       # local_angle: pilot steering, user throttle
    assert act[3] == pytest.approx([-0.5, 0.25])      # local: pilot both
    assert act[0] == pytest.approx([0.1 * (6 % 5) - 0.2, 0.3])
    pres = np.asarray(ep1.steps["policy_action_present"])
    assert list(pres) == [False, False, True, True, True]
    assert np.asarray(ep1.steps["policy_action"])[4] == pytest.approx([-0.5, 0.25])
    r = _report(out)
    assert r["summary"]["imported"] == 2 and any("one clock" in n for n in r["notes"])
    assert validate_paths([e.path for e in rep.imported], SPEC).ok


def test_deleted_records_skipped_and_gap_reported(tmp_path):
    tub = make_tub(tmp_path, sessions=(("s_0", 10),), deleted=[3, 4])
    rep = import_donkey(tub, tmp_path / "out")
    (e,) = rep.episodes
    assert e.status == "imported" and e.steps == 8
    assert e.gaps == [{"after_step": 2, "source_indexes": [3, 4], "count": 2, "seconds": pytest.approx(0.15),
                       "reasons": {"DELETED": 2}}]
    assert {d["index"] for d in e.dropped} == {3, 4}
    _assert_valid(e.path)


def test_torn_last_line_keeps_the_rest(tmp_path):
    tub = make_tub(tmp_path, sessions=(("s_0", 8),))
    cat = tub / "catalog_0.catalog"
    raw = cat.read_bytes()
    cat.write_bytes(raw[:-25])  # cut into the last record, no newline
    rep = import_donkey(tub, tmp_path / "out")
    (e,) = rep.episodes
    assert e.status == "imported" and e.steps == 7
    (src,) = rep.sources  # a line problem belongs to the tub, not to an episode: it has no session
    assert src.lines_in == 8 and src.dropped_by_reason == {"TORN_LINE": 1}
    assert [(d["catalog"], d["line"], d["code"]) for d in src.dropped_records] == [("catalog_0.catalog", 8, "TORN_LINE")]
    _assert_valid(e.path)
    assert "TORN_LINE" in (tmp_path / "out" / REPORT_FILE).read_text()


def test_missing_image_drops_step_and_reports_gap(tmp_path):
    tub = make_tub(tmp_path, sessions=(("s_0", 8),))
    (tub / "images" / "5_cam_image_array_.jpg").unlink()
    (tub / "images" / "6_cam_image_array_.jpg").write_bytes(b"not a jpeg")
    rep = import_donkey(tub, tmp_path / "out")
    (e,) = rep.episodes
    assert e.steps == 6
    assert e.gaps[0]["source_indexes"] == [5, 6]
    assert e.gaps[0]["reasons"] == {"MISSING_IMAGE": 1, "BAD_IMAGE": 1}
    _assert_valid(e.path)


def test_non_monotonic_timestamps_quarantine(tmp_path):
    tub = make_tub(tmp_path, sessions=(("s_0", 6), ("s_1", 6)))
    cat = tub / "catalog_0.catalog"
    lines = cat.read_bytes().decode().split("\r\n")
    rec = json.loads(lines[3])
    rec["_timestamp_ms"] -= 500
    lines[3] = json.dumps(rec, sort_keys=True)
    cat.write_bytes("\r\n".join(lines).encode())
    out = tmp_path / "out"
    rep = import_donkey(tub, out)
    assert rep.exit_code == 1
    q, ok = rep.episodes
    assert q.status == "quarantined" and "backwards" in q.reason and not (out / "s_0").exists()
    assert ok.status == "imported"
    assert _cli(["donkey", str(tub), "--out", str(tmp_path / "out2")]) == 1


def test_no_resize_refuses_clearly(tmp_path, capsys):
    tub = make_tub(tmp_path, sessions=(("s_0", 4),))
    with pytest.raises(MigrationError, match="120x160.*480x640"):
        import_donkey(tub, tmp_path / "out", resize=False)
    assert not (tmp_path / "out").exists()
    assert _cli(["donkey", str(tub), "--out", str(tmp_path / "out"), "--no-resize"]) == 2
    assert "--no-resize" in capsys.readouterr().err


def test_no_resize_accepts_pi_sized_frames(tmp_path):
    tub = make_tub(tmp_path, sessions=(("s_0", 3),), size=(480, 640))
    rep = import_donkey(tub, tmp_path / "out", resize=False)
    (e,) = rep.imported
    assert e.resize is None
    src = (tub / "images" / "0_cam_image_array_.jpg").read_bytes()
    assert (Path(e.path) / "frames" / "image" / "000000.jpg").read_bytes() == src  # copied, not re-encoded


@pytest.mark.parametrize("content", [b"", b"[\"cam/image_array\"]\r\n", b"{not json\r\n" * 5,
                                     b"[1]\r\n[2]\r\n{}\r\n{}\r\n{}\r\n"])
def test_bad_manifest_clear_error_exit_2(tmp_path, capsys, content):
    tub = make_tub(tmp_path, sessions=(("s_0", 2),))
    (tub / "manifest.json").write_bytes(content)
    with pytest.raises(MigrationError, match="manifest"):
        import_donkey(tub, tmp_path / "out")
    assert _cli(["donkey", str(tub), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "Traceback" not in err


def test_missing_manifest_and_unknown_mode(tmp_path):
    with pytest.raises(MigrationError, match="manifest"):
        import_donkey(tmp_path / "nope", tmp_path / "out")
    tub = make_tub(tmp_path, sessions=(("s_0", 4),), modes={2: "autopilot_x"})
    rep = import_donkey(tub, tmp_path / "out")
    assert rep.episodes[0].status == "quarantined" and "autopilot_x" in rep.episodes[0].reason
    rep2 = import_donkey(tub, tmp_path / "out2", mapping={"modes": {"autopilot_x": "pilot"}})
    assert rep2.exit_code == 0


def test_multi_catalog_and_rerun_leaves_existing(tmp_path):
    tub = make_tub(tmp_path, sessions=(("s_0", 7),), max_len=3)
    out = tmp_path / "out"
    rep = import_donkey(tub, out)
    assert rep.imported[0].steps == 7 and rep.imported[0].gaps == []
    rep2 = import_donkey(tub, out)
    assert rep2.episodes[0].status == "exists" and rep2.exit_code == 0


def test_rate_warning_not_error(tmp_path):
    tub = make_tub(tmp_path, sessions=(("s_0", 6),), hz=10)
    rep = import_donkey(tub, tmp_path / "out")
    (e,) = rep.episodes
    assert e.status == "imported"
    assert any("RATE_OUT_OF_BAND" in w for w in e.warnings)


# ---------------------------------------------------------------- every catalog line accounted for

def _catalog_lines(tub: Path, name: str = "catalog_0.catalog") -> list[bytes]:
    return (tub / name).read_bytes().split(b"\r\n")[:-1]


def _write_catalog(tub: Path, lines: list[bytes], name: str = "catalog_0.catalog") -> None:
    (tub / name).write_bytes(b"\r\n".join(lines) + b"\r\n")


def _non_blank_lines(tub: Path) -> int:
    """Counted here from the bytes, independently of the importer: every non-blank catalog line."""
    return sum(1 for c in sorted(tub.glob("*.catalog")) for ln in c.read_bytes().split(b"\n") if ln.strip())


def _check_accounting(rep, out: Path, tub: Path) -> dict:
    """lines_in == imported_steps + dropped, per tub, per episode and in the summary, against the files."""
    r = _report(out)
    (src,) = r["sources"]
    assert src["lines_in"] == _non_blank_lines(tub)
    assert src["lines_in"] == src["imported_steps"] + src["dropped"], src
    assert sum(src["dropped_by_reason"].values()) == src["dropped"]
    assert all(code in CODES for code in src["dropped_by_reason"]), src["dropped_by_reason"]
    written = sum(len(read_episode(e.path, SPEC)) for e in rep.imported)
    assert src["imported_steps"] == written == r["summary"]["steps"]
    for e in r["episodes"]:
        assert e["source_records"] == e["steps"] + sum(e["dropped_by_reason"].values()), e
        assert e["status"] == "imported" or e["steps"] == 0
    tub_level = src["dropped"] - sum(sum(e["dropped_by_reason"].values()) for e in r["episodes"])
    assert tub_level == sum(1 for _ in src["dropped_records"]) or len(src["dropped_records"]) == 200
    s = r["summary"]
    assert (s["lines_in"], s["imported_steps"], s["dropped"], s["dropped_by_reason"]) == \
        (src["lines_in"], src["imported_steps"], src["dropped"], src["dropped_by_reason"])
    return src


#: The record hypothesis found (issue 12): no session id, dated 1970, a negative index. In a tub
#: with sessions it used to become a one-step episode named after the tub folder, with no warning.
HOSTILE = {"_index": -1, "_session_id": None, "_timestamp_ms": 0, "cam/image_array": "0_cam_image_array_.jpg",
           "user/angle": 0.0, "user/throttle": 0.0, "user/mode": "user"}


def _line(rec: dict) -> bytes:
    return json.dumps(rec, sort_keys=True).encode()


@pytest.mark.parametrize("line, code, episode", [
    (_line(HOSTILE), "INDEX_INVALID", None),
    (_line({**HOSTILE, "_session_id": "21-03-05_0"}), "INDEX_INVALID", None),
    (_line({**HOSTILE, "_index": "11"}), "INDEX_INVALID", None),
    (_line({**HOSTILE, "_index": 11.5}), "INDEX_INVALID", None),
    (_line({**HOSTILE, "_index": True}), "INDEX_INVALID", None),
    (_line({k: v for k, v in HOSTILE.items() if k != "_index"}), "INDEX_INVALID", None),
    (_line({**HOSTILE, "_index": 11}), "SESSION_ID_MISSING", None),
    (_line({**HOSTILE, "_index": 11, "_session_id": 7}), "SESSION_ID_MISSING", None),
    (_line({**HOSTILE, "_index": 11, "_session_id": ""}), "SESSION_ID_MISSING", None),
    (_line({**HOSTILE, "_index": 11, "_session_id": "21-03-05_1"}), "TIMESTAMP_IMPLAUSIBLE", "21-03-05_1"),
    (_line({**HOSTILE, "_index": 11, "_session_id": "21-03-05_1", "_timestamp_ms": 10**17}), "TIMESTAMP_IMPLAUSIBLE",
     "21-03-05_1"),
    (b"[]", "CORRUPT_RECORD", None),
    (b"{not json", "CORRUPT_LINE", None),
])
def test_hostile_record_is_dropped_with_a_reason_never_made_an_episode(tmp_path, line, code, episode):
    tub = make_tub(tmp_path)  # the real format: two sessions, 6 + 5 records
    lines = _catalog_lines(tub)
    lines.insert(0, line)
    _write_catalog(tub, lines)
    out = tmp_path / "out"
    rep = import_donkey(tub, out)
    assert [(e.episode_id, e.status, e.steps) for e in rep.episodes] == \
        [("21-03-05_0", "imported", 6), ("21-03-05_1", "imported", 5)]
    assert sorted(p.name for p in out.iterdir()) == ["21-03-05_0", "21-03-05_1", REPORT_FILE, "schema.json"]
    src = _check_accounting(rep, out, tub)
    assert (src["lines_in"], src["imported_steps"], src["dropped"]) == (12, 11, 1)
    assert src["dropped_by_reason"] == {code: 1}
    listed = src["dropped_records"] + [d for e in _report(out)["episodes"] for d in e["dropped"]]
    (d,) = listed
    assert (d["catalog"], d["line"], d["code"]) == ("catalog_0.catalog", 1, code) and d["message"]
    if episode is not None:  # dropped inside its session: the episode says so too
        (e,) = [e for e in rep.episodes if e.episode_id == episode]
        assert e.dropped_by_reason == {code: 1} and e.source_records == 6


def test_tub_without_session_ids_is_one_episode_with_a_warning_and_no_1970_step(tmp_path):
    """An older tub (no record has a _session_id) is one episode named after the tub, and says so."""
    tub = make_tub(tmp_path, sessions=(("s", 6),))
    lines = []
    for ln in _catalog_lines(tub):
        rec = json.loads(ln)
        del rec["_session_id"]
        lines.append(_line(rec))
    lines.append(_line({**{k: v for k, v in HOSTILE.items() if k != "_session_id"}, "_index": 6}))
    _write_catalog(tub, lines)
    out = tmp_path / "out"
    rep = import_donkey(tub, out)
    (e,) = rep.episodes
    assert (e.episode_id, e.status, e.steps) == ("tub_1", "imported", 6)
    assert [i["code"] for i in e.issues] == ["NO_SESSION_IDS"] and e.issues[0]["severity"] == "warning"
    assert e.dropped_by_reason == {"TIMESTAMP_IMPLAUSIBLE": 1}
    assert [(d["index"], d["line"], d["code"]) for d in e.dropped] == [(6, 7, "TIMESTAMP_IMPLAUSIBLE")]
    assert np.asarray(read_episode(e.path, SPEC).steps["timestamp/control"]).min() == pytest.approx(T0_MS / 1000)
    _check_accounting(rep, out, tub)


def test_duplicate_index_with_other_values_drops_both_never_replaces(tmp_path):
    tub = make_tub(tmp_path, sessions=(("s_0", 6),))
    lines = _catalog_lines(tub)
    twin = json.loads(lines[2])
    twin["user/angle"] = 0.9
    lines.insert(5, _line(twin))
    _write_catalog(tub, lines)
    out = tmp_path / "out"
    rep = import_donkey(tub, out)
    (e,) = rep.episodes
    assert e.status == "imported" and e.steps == 5
    steering = np.asarray(read_episode(e.path, SPEC).steps["action"])[:, 0]
    assert not np.any(np.isclose(steering, 0.9)) and not np.any(np.isclose(steering, 0.0))  # neither index-2 record
    assert e.gaps == [{"after_step": 1, "source_indexes": [2, 2], "count": 1, "seconds": pytest.approx(0.1),
                       "reasons": {"INDEX_CONFLICT": 1}}]
    src = _check_accounting(rep, out, tub)
    assert src["dropped_by_reason"] == {"INDEX_CONFLICT": 2}
    assert sorted((d["line"], d["index"]) for d in src["dropped_records"]) == [(3, 2), (6, 2)]
    assert all("line 3" in d["message"] and "line 6" in d["message"] for d in src["dropped_records"])


def test_exact_duplicate_line_keeps_one_and_says_so(tmp_path):
    tub = make_tub(tmp_path, sessions=(("s_0", 6),))
    lines = _catalog_lines(tub)
    lines.insert(4, lines[1])
    _write_catalog(tub, lines)
    out = tmp_path / "out"
    rep = import_donkey(tub, out)
    (e,) = rep.episodes
    assert e.status == "imported" and e.steps == 6 and e.gaps == []
    src = _check_accounting(rep, out, tub)
    assert src["dropped_by_reason"] == {"DUPLICATE_RECORD": 1}
    assert [(d["line"], d["index"]) for d in src["dropped_records"]] == [(5, 1)]


def test_out_of_order_lines_import_in_index_order_with_a_warning(tmp_path):
    tub = make_tub(tmp_path, sessions=(("s_0", 6),))
    lines = _catalog_lines(tub)
    lines[2], lines[3] = lines[3], lines[2]
    _write_catalog(tub, lines)
    out = tmp_path / "out"
    rep = import_donkey(tub, out)
    (e,) = rep.episodes
    assert e.status == "imported" and e.steps == 6
    assert np.all(np.diff(np.asarray(read_episode(e.path, SPEC).steps["timestamp/control"])) > 0)
    src = _check_accounting(rep, out, tub)
    assert src["dropped"] == 0
    (i,) = src["issues"]
    assert i["code"] == "INDEX_OUT_OF_ORDER" and i["severity"] == "warning" and "line 4" in i["message"]


def test_records_of_quarantined_and_existing_episodes_are_counted(tmp_path):
    tub = make_tub(tmp_path, sessions=(("s_0", 4), ("s_1", 3)), modes={2: "autopilot_x"})
    out = tmp_path / "out"
    rep = import_donkey(tub, out)
    q, ok = rep.episodes
    assert q.status == "quarantined" and ok.status == "imported"
    assert q.dropped_by_reason == {"UNKNOWN_MODE": 1, "EPISODE_QUARANTINED": 3}
    src = _check_accounting(rep, out, tub)
    assert src["dropped_by_reason"] == {"UNKNOWN_MODE": 1, "EPISODE_QUARANTINED": 3}
    rep2 = import_donkey(tub, out)  # a rerun leaves s_1 alone: its records are not imported again
    assert [e.status for e in rep2.episodes] == ["quarantined", "exists"]
    src2 = _check_accounting(rep2, out, tub)
    assert src2["imported_steps"] == 0 and src2["dropped_by_reason"]["EPISODE_EXISTS"] == 3


def test_unreadable_catalog_is_an_error_issue_and_the_rest_is_counted(tmp_path):
    tub = make_tub(tmp_path, sessions=(("s_0", 5),), max_len=3)  # catalog_0 (3 records), catalog_1 (2)
    (tub / "catalog_1.catalog").unlink()
    out = tmp_path / "out"
    rep = import_donkey(tub, out)
    (e,) = rep.imported
    assert e.steps == 3
    src = _check_accounting(rep, out, tub)
    assert (src["lines_in"], src["dropped"]) == (3, 0)
    (i,) = src["issues"]
    assert (i["code"], i["severity"], i["catalog"]) == ("CATALOG_MISSING", "error", "catalog_1.catalog")


_json_record = st.fixed_dictionaries(
    {"_index": st.integers(-3, 8)},
    optional={"_session_id": st.one_of(st.text(max_size=8), st.integers(), st.none()),
              "_timestamp_ms": st.one_of(st.floats(allow_nan=False), st.integers(-10**20, 10**20), st.text(max_size=3)),
              "cam/image_array": st.sampled_from(["0_cam_image_array_.jpg", "", "../manifest.json", "nope.jpg"]),
              "user/angle": st.one_of(st.floats(allow_nan=False), st.none()),
              "user/throttle": st.floats(-2, 2),
              "user/mode": st.sampled_from(["user", "local", "local_angle", 3]),
              "pilot/angle": st.floats(-2, 2), "pilot/throttle": st.floats(-2, 2)},
).map(lambda d: json.dumps(d).encode())

#: Near-real records: a real tub's fields with the index, session and clock perturbed (duplicates,
#: conflicts, foreign sessions, 1970 and plausible times, copies of real lines).
_near_real_record = st.fixed_dictionaries({
    "_index": st.one_of(st.integers(-2, 6), st.sampled_from(["1", 1.0, True, None])),
    "_session_id": st.sampled_from(["s_0", "s_1", None, "", 5]),
    "_timestamp_ms": st.one_of(st.sampled_from([0, -1, 10**17]), st.integers(0, 8).map(lambda k: T0_MS + 50 * k)),
    "cam/image_array": st.integers(0, 3).map(lambda i: f"{i}_cam_image_array_.jpg"),
    "user/angle": st.sampled_from([-0.2, 0.0, 0.5]), "user/throttle": st.just(0.3), "user/mode": st.just("user"),
    "pilot/angle": st.none(), "pilot/throttle": st.none(),
}).map(lambda d: json.dumps(d, sort_keys=True).encode())

_hostile_line = st.one_of(
    _json_record,
    _near_real_record,
    st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b),
    st.sampled_from([b"[]", b"null", b"{}", b'{"_index": "x"}', b'{"_index": true}', b'{"_index": 1.5}',
                     b'{"_index": 99, "_timestamp_ms": NaN}', b"[" * 5000, b'{"_index": 2, "user/angle": 7}',
                     b'{"_index": 1, "_timestamp_ms": "now"}', b'{"_index": 3, "cam/image_array": "../../etc/passwd"}']),
)


def _parsed(line: bytes):
    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.tuples(st.integers(0, 4), _hostile_line), min_size=1, max_size=4))
@example(lines=[(0, b'{"_index": -1, "cam/image_array": "0_cam_image_array_.jpg", "_timestamp_ms": 0.0, '
                    b'"user/throttle": 0.0, "user/angle": 0.0}')])
def test_hostile_catalog_lines_never_traceback(tmp_path_factory, lines):
    """Every catalog line is imported, or dropped with a reason code: lines_in == imported_steps + dropped."""
    root = tmp_path_factory.mktemp("h")
    tub = make_tub(root, sessions=(("s_0", 4),))
    cat = tub / "catalog_0.catalog"
    good = cat.read_bytes().split(b"\r\n")[:-1]
    originals = {json.loads(g)["_index"]: json.dumps(json.loads(g), sort_keys=True) for g in good}
    for pos, junk in lines:
        good.insert(min(pos, len(good)), junk)
    cat.write_bytes(b"\r\n".join(good) + b"\r\n")
    out = root / "out"
    rep = import_donkey(tub, out)
    assert rep.exit_code in (0, 1)
    assert (out / REPORT_FILE).is_file()
    src = _check_accounting(rep, out, tub)
    for e in rep.imported:  # dropped records may leave a rate gap: reported as a warning, not an error
        _assert_valid(e.path, allow=("RATE_OUT_OF_BAND",))
        assert not any("RATE" in w for w in e.warnings) or e.gaps or e.dropped
        assert e.episode_id != "tub_1"  # the tub has session ids: a record without one never forms an episode
        assert np.asarray(read_episode(e.path, SPEC).steps["timestamp/control"]).min() >= 946_684_800  # >= 2000
    # a line reusing a real record's index with other content never replaces it silently
    for _, junk in lines:
        rec = _parsed(junk)
        idx = rec.get("_index") if isinstance(rec, dict) else None
        if type(idx) is int and idx in originals and json.dumps(rec, sort_keys=True) != originals[idx]:
            assert src["dropped_by_reason"].get("INDEX_CONFLICT", 0) >= 2, src


# ---------------------------------------------------------------- older RLDS JSON

def _old_episode(root: Path, name="old_ep.json", n=6, *, bad_time=False) -> Path:
    (root / "imgs").mkdir(exist_ok=True)
    steps = []
    for i in range(n):
        img = f"imgs/{name}_{i}.jpg"
        (root / img).write_bytes(_jpeg(seed=i))
        t = 1_600_000_000_000 + 50 * i - (200 if bad_time and i == 3 else 0)
        steps.append({"observation": {"camera": img, "debug": "x"},
                      "action": {"steering_angle": 15.0 * (i % 3 - 1), "throttle": 0.4},
                      "reward": 0.0, "is_first": i == 0, "is_last": i == n - 1, "is_terminal": False,
                      "ts_ms": t, "mode": "human"})
    doc = {"metadata": {"episode_id": name.split(".")[0], "environment_id": "garage", "car": "jetson-1",
                        "schema": {"name": "jetson_donkey", "version": "0.3.0"}, "tags": ["night"]},
           "steps": steps}
    p = root / name
    p.write_text(json.dumps(doc))
    return p


MAPPING = {
    "rename": {"observation/camera": "observation/image", "action/steering_angle": "action[0]",
               "action/throttle": "action[1]", "ts_ms": "timestamp/control", "mode": "control_mode"},
    "units": {"action[0]": {"scale": 1 / 30.0}, "timestamp/control": {"scale": 0.001}},
    "values": {"control_mode": {"human": "user", "auto": "pilot"}},
    "defaults": {"discount": 1.0},
    "copy": {"timestamp/camera": "timestamp/control"},
    "drop": ["observation/debug"],
    "metadata": {"rename": {"car": "vehicle_id"}},
}


def test_rlds_json_migration_with_mapping(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _old_episode(src, "ep_a.json")
    _old_episode(src, "ep_b.json", bad_time=True)
    mf = tmp_path / "mapping.json"
    mf.write_text(json.dumps(MAPPING))
    out = tmp_path / "out"
    rep = migrate_rlds_json([src], out, mapping_file=mf)
    assert rep.exit_code == 1
    by = {Path(e.source).name: e for e in rep.episodes}
    a, b = by["ep_a.json"], by["ep_b.json"]
    assert a.status == "imported" and a.steps == 6, a.reason
    assert b.status == "quarantined" and "backwards" in b.reason
    _assert_valid(a.path)
    ep = read_episode(a.path, SPEC)
    act = np.asarray(ep.steps["action"])
    assert act[0] == pytest.approx([-0.5, 0.4]) and act[2] == pytest.approx([0.5, 0.4])
    assert np.asarray(ep.steps["timestamp/camera"])[0] == pytest.approx(1_600_000_000.0)
    assert list(ep.steps["control_mode"]) == ["user"] * 6
    assert ep.metadata["vehicle_id"] == "jetson-1" and ep.metadata["environment_id"] == "garage"
    assert {"night", "origin:jetson", "migrated_from:rlds_json:jetson_donkey@0.3.0"} <= set(ep.metadata["tags"])
    assert a.resize["from"] == [120, 160]
    assert _report(out)["source_kind"] == "rlds_json"
    assert _cli(["rlds-json", str(src / "ep_a.json"), "--out", str(tmp_path / "o2"), "--mapping", str(mf)]) == 0


def test_rlds_json_bad_mapping_and_incomplete_mapping(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    ep = _old_episode(src)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"renames": {}}))
    with pytest.raises(MigrationError, match="unknown keys"):
        migrate_rlds_json(ep, tmp_path / "out", mapping_file=bad)
    assert _cli(["rlds-json", str(ep), "--out", str(tmp_path / "out"), "--mapping", str(bad)]) == 2
    # no timestamp/camera: never filled with the migration time -> quarantined with the reason
    partial = dict(MAPPING)
    partial.pop("copy")
    mf = tmp_path / "partial.json"
    mf.write_text(json.dumps(partial))
    rep = migrate_rlds_json(ep, tmp_path / "out3", mapping_file=mf)
    (e,) = rep.episodes
    assert e.status == "quarantined" and "timestamp/camera" in e.reason
    assert not any((tmp_path / "out3").glob("old_ep*"))


# ---------------------------------------------------------------- no local paths in the report (issue 12, item 4)

def _listing_sha256(files: dict[str, bytes]) -> str:
    """sha256 of a ``sha256sum``-style listing (``<hex>  <relative path>``, sorted by path)."""
    listing = "".join(f"{hashlib.sha256(files[k]).hexdigest()}  {k}\n" for k in sorted(files))
    return hashlib.sha256(listing.encode()).hexdigest()


def test_donkey_report_names_inputs_relatively_with_a_digest(tmp_path):
    tub = make_tub(tmp_path / "home" / "alice" / "jetson", sessions=(("s_0", 4),)).resolve()
    out = (tmp_path / "work" / "out").resolve()
    assert _cli(["donkey", str(tub), "--out", str(out)]) == 0
    text = (out / REPORT_FILE).read_text()
    for absolute in (str(tub), str(tub.parent), str(out), str(tmp_path.resolve())):
        assert absolute not in text
    r = json.loads(text)
    (src,) = r["sources"]
    files = {p.relative_to(tub).as_posix(): p.read_bytes()
             for p in [tub / "manifest.json", tub / "catalog_0.catalog", *sorted((tub / "images").glob("*.jpg"))]}
    assert (src["source"], src["files"], src["sha256"]) == ("tub_1", 6, _listing_sha256(files))
    assert [e["source"] for e in r["episodes"]] == ["tub_1"]
    assert [e["path"] for e in r["episodes"]] == ["s_0"]  # relative to the report's folder
    assert (out / r["episodes"][0]["path"] / "metadata.json").is_file()
    # a changed frame is another input
    (tub / "images" / "2_cam_image_array_.jpg").write_bytes(_jpeg(seed=99))
    rep2 = import_donkey(tub, tmp_path / "out2")
    assert rep2.sources[0].sha256 != src["sha256"]


def test_rlds_json_report_names_inputs_relatively_with_a_digest(tmp_path):
    src_dir = (tmp_path / "home" / "alice" / "old_episodes").resolve()
    src_dir.mkdir(parents=True)
    ep = _old_episode(src_dir, "ep_a.json", n=3)
    mf = (tmp_path / "home" / "alice" / "mapping.json").resolve()
    mf.write_text(json.dumps(MAPPING))
    out = (tmp_path / "work" / "out").resolve()
    assert _cli(["rlds-json", str(src_dir), "--out", str(out), "--mapping", str(mf)]) == 0
    text = (out / REPORT_FILE).read_text()
    for absolute in (str(src_dir), str(ep), str(mf), str(out), str(tmp_path.resolve())):
        assert absolute not in text
    r = json.loads(text)
    (src,) = r["sources"]
    files = {"ep_a.json": ep.read_bytes(), **{f"imgs/ep_a.json_{i}.jpg": (src_dir / f"imgs/ep_a.json_{i}.jpg").read_bytes()
                                             for i in range(3)}}
    assert (src["source"], src["files"], src["sha256"]) == ("old_episodes/ep_a.json", 4, _listing_sha256(files))
    assert [e["source"] for e in r["episodes"]] == ["old_episodes/ep_a.json"]
    assert [e["path"] for e in r["episodes"]] == ["ep_a"]
    assert any(f"mapping.json (sha256 {hashlib.sha256(mf.read_bytes()).hexdigest()})" in n for n in r["notes"])
