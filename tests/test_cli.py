"""The ``rldskit`` command line, run in-process through ``rldskit.cli.main`` (and once as the
installed console script), and the pre-commit entry point ``rldskit.cli.precommit_main``."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rldskit.capture import EpisodeLogger
from rldskit.cli import main, precommit_main
from rldskit.formats.capture_dir import read_episode
from rldskit.spec import load_spec
from rldskit.synth import synth_steps

REPO = Path(__file__).resolve().parents[1]
REPORT_KEYS = {"ok", "episodes", "steps", "issues"}
ISSUE_KEYS = {"code", "severity", "episode", "step", "field", "message"}


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv) -> tuple[int, dict]:
    code, out, _ = run(capsys, *argv, "--format", "json")
    return code, json.loads(out)


def _episodes(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _num_steps(folder: Path) -> int:
    return sum(len(read_episode(p)) for p in _episodes(folder))


def _edit_step_line(episode: Path, index: int, edit) -> None:
    """Apply ``edit(step_dict)`` to line ``index`` of the episode's first step chunk."""
    chunk = sorted((episode / "steps").glob("*.jsonl"))[0]
    lines = chunk.read_text().splitlines()
    step = json.loads(lines[index])
    edit(step)
    lines[index] = json.dumps(step)
    chunk.write_text("\n".join(lines) + "\n")


def _edit_metadata(episode: Path, edit) -> None:
    f = episode / "metadata.json"
    meta = json.loads(f.read_text())
    edit(meta)
    f.write_text(json.dumps(meta))


def _check_report_shape(report: dict) -> None:
    assert set(report) == REPORT_KEYS
    assert isinstance(report["ok"], bool)
    assert isinstance(report["episodes"], int) and isinstance(report["steps"], int)
    for issue in report["issues"]:
        assert set(issue) == ISSUE_KEYS
        assert issue["severity"] in ("error", "warning")
        assert issue["step"] is None or isinstance(issue["step"], int)


# =========================================================================== validate: exit codes


def test_validate_clean_dataset_exits_0(capsys, donkey_dir):
    code, out, err = run(capsys, "validate", donkey_dir)
    assert code == 0, out + err
    n_eps, n_steps = len(_episodes(donkey_dir)), _num_steps(donkey_dir)
    assert f"{n_eps} episodes, {n_steps} steps: 0 errors, 0 warnings" in out
    code, report = run_json(capsys, "validate", donkey_dir)
    assert code == 0
    _check_report_shape(report)
    assert report == {"ok": True, "episodes": n_eps, "steps": n_steps, "issues": []}


@pytest.mark.parametrize("name", ["pi5_donkey.v1", "so100_arm.v1", "xr_teleop.v1"])
def test_validate_every_synthetic_schema_is_clean(capsys, synthetic_datasets, name):
    code, report = run_json(capsys, "validate", synthetic_datasets[name], "--check-images")
    assert code == 0, report["issues"]
    assert report["ok"] and report["episodes"] == len(_episodes(synthetic_datasets[name]))


def test_validate_single_episode_folders(capsys, donkey_episode_dirs):
    code, report = run_json(capsys, "validate", *donkey_episode_dirs)
    assert code == 0 and report["episodes"] == len(donkey_episode_dirs)


def test_validate_corrupt_value_exits_1_naming_step_and_field(capsys, donkey_dir):
    episode = _episodes(donkey_dir)[0]
    _edit_step_line(episode, 3, lambda s: s["action"].__setitem__(0, 5.0))  # steering far out of [-1, 1]
    code, report = run_json(capsys, "validate", donkey_dir)
    assert code == 1
    _check_report_shape(report)
    assert report["ok"] is False
    hits = [i for i in report["issues"] if i["code"] == "OUT_OF_BOUNDS"]
    assert len(hits) == 1
    assert hits[0]["step"] == 3 and hits[0]["field"] == "action" and hits[0]["severity"] == "error"
    assert Path(hits[0]["episode"]).name == episode.name
    code, out, _ = run(capsys, "validate", donkey_dir)
    assert code == 1 and "OUT_OF_BOUNDS" in out and "1 errors" in out


def test_validate_wrong_type_in_a_step_line_exits_1(capsys, donkey_dir):
    episode = _episodes(donkey_dir)[1]
    _edit_step_line(episode, 2, lambda s: s.__setitem__("reward", "oops"))
    code, report = run_json(capsys, "validate", donkey_dir)
    assert code == 1
    bad = [i for i in report["issues"] if i["severity"] == "error"]
    assert bad and all(i["field"] == "reward" and i["step"] == 2 for i in bad)


def test_validate_cannot_run_exits_2(capsys, donkey_dir, tmp_path):
    code, out, err = run(capsys, "validate", tmp_path / "nowhere")
    assert code == 2 and "nowhere" in err
    code, _, err = run(capsys, "validate", donkey_dir, "--schema", "no_such_schema")
    assert code == 2 and "no_such_schema" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, report = run_json(capsys, "validate", empty)
    assert code == 2 and report["episodes"] == 0
    assert [i["code"] for i in report["issues"]] == ["NO_EPISODES"]


@pytest.mark.parametrize("name,text", [
    ("unknown.toml", "bogus_gate = 1\n"),
    ("broken.toml", "bounds = {\n"),
    ("broken.json", "{\"min_steps\": \n"),
    ("list.json", "[1, 2]"),
    ("lohi.toml", 'bounds = {"action/steering" = [1.0, -1.0]}\n'),
    ("type.json", '{"min_steps": "many"}'),
])
def test_validate_bad_gates_file_exits_2(capsys, donkey_dir, tmp_path, name, text):
    gates = tmp_path / name
    gates.write_text(text)
    code, out, err = run(capsys, "validate", donkey_dir, "--gates", gates)
    assert code == 2
    assert str(gates) in err
    assert out == ""


def test_validate_missing_gates_file_exits_2(capsys, donkey_dir, tmp_path):
    code, _, err = run(capsys, "validate", donkey_dir, "--gates", tmp_path / "absent.toml")
    assert code == 2 and "absent.toml" in err


# =========================================================================== validate: gates, strict, schema


def test_gates_in_toml_and_json_tighten_bounds(capsys, donkey_dir, tmp_path):
    toml = tmp_path / "gates.toml"
    toml.write_text('bounds = {"action/steering" = [-0.1, 0.1]}\n')
    js = tmp_path / "gates.json"
    js.write_text(json.dumps({"bounds": {"action/steering": [-0.1, 0.1]}}))
    reports = []
    for gates in (toml, js):
        code, report = run_json(capsys, "validate", donkey_dir, "--gates", gates)
        assert code == 1
        _check_report_shape(report)
        assert report["issues"], "synthetic steering never leaves [-0.1, 0.1]?"
        assert {i["code"] for i in report["issues"]} == {"OUT_OF_BOUNDS"}
        assert {i["field"] for i in report["issues"]} == {"action/steering"}
        assert all("steering" in i["message"] for i in report["issues"])
        reports.append(report)
    assert reports[0] == reports[1]
    # a band that holds every value passes
    wide = tmp_path / "wide.toml"
    wide.write_text('min_steps = 2\nbounds = {"action/steering" = [-1.0, 1.0], "action" = [-1.0, 1.0]}\n')
    code, report = run_json(capsys, "validate", donkey_dir, "--gates", wide)
    assert code == 0, report["issues"]


def test_gates_min_steps_and_episodes(capsys, donkey_dir):
    n_steps = len(read_episode(_episodes(donkey_dir)[0]))
    code, report = run_json(capsys, "validate", donkey_dir, "--min-steps", n_steps + 1)
    assert code == 1 and {i["code"] for i in report["issues"]} == {"TOO_FEW_STEPS"}
    code, report = run_json(capsys, "validate", donkey_dir, "--min-episodes", len(_episodes(donkey_dir)) + 1)
    assert code == 1 and [i["code"] for i in report["issues"]] == ["TOO_FEW_EPISODES"]
    code, _ = run_json(capsys, "validate", donkey_dir, "--min-steps", n_steps)
    assert code == 0


def test_strict_turns_warnings_into_exit_1(capsys, donkey_dir):
    # recorded for a newer patch version of the same schema: a warning, not an error
    _edit_metadata(_episodes(donkey_dir)[0], lambda m: m["schema"].__setitem__("version", "1.0.1"))
    code, report = run_json(capsys, "validate", donkey_dir)
    assert code == 0 and report["ok"] is True
    warnings = [i for i in report["issues"] if i["severity"] == "warning"]
    assert [i["code"] for i in warnings] == ["SCHEMA_MINOR_MISMATCH"]
    code, strict = run_json(capsys, "validate", donkey_dir, "--strict")
    assert code == 1 and strict["ok"] is False
    assert strict["issues"] == report["issues"]
    code, out, _ = run(capsys, "validate", donkey_dir, "--strict")
    assert code == 1 and "1 warnings" in out


def test_explicit_schema_of_another_robot_is_a_mismatch(capsys, donkey_dir):
    code, report = run_json(capsys, "validate", donkey_dir, "--schema", "so100_arm.v1")
    assert code == 1
    assert "SCHEMA_MISMATCH" in {i["code"] for i in report["issues"]}


def test_parallel_jobs_give_the_same_report(capsys, donkey_dir):
    _edit_step_line(_episodes(donkey_dir)[1], 4, lambda s: s.__setitem__("discount", 2.0))
    code1, one = run_json(capsys, "validate", donkey_dir, "--jobs", 1)
    code2, two = run_json(capsys, "validate", donkey_dir, "--jobs", 2)
    assert code1 == code2 == 1
    assert one == two


# =========================================================================== schema, synth, recover


def test_schema_list(capsys):
    from rldskit.spec import builtin_spec_names

    code, out, _ = run(capsys, "schema", "list")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == builtin_spec_names()
    for line in lines:
        assert load_spec(line.split()[0]).version in line.split()


def test_schema_show_prints_the_schema_json(capsys, tmp_path):
    code, out, _ = run(capsys, "schema", "show", "xr_teleop")
    assert code == 0
    assert json.loads(out) == load_spec("xr_teleop.v1").to_dict()
    saved = load_spec("so100_arm.v1").with_image_shape("observation/images/front", (24, 32, 3)).save(tmp_path / "s.json")
    code, out, _ = run(capsys, "schema", "show", saved)
    assert code == 0 and json.loads(out) == load_spec(saved).to_dict()


@pytest.mark.parametrize("name", ["pi5_donkey.v1", "so100_arm.v1", "xr_teleop.v1"])
def test_schema_export_is_a_valid_json_schema(capsys, name):
    jsonschema = pytest.importorskip("jsonschema")
    code, out, _ = run(capsys, "schema", "export", name)
    assert code == 0
    exported = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(exported)
    assert exported == load_spec(name).to_step_json_schema()


def test_schema_errors_exit_2(capsys):
    assert run(capsys, "schema", "export")[0] == 2
    code, _, err = run(capsys, "schema", "show", "nothing_like_it")
    assert code == 2 and "nothing_like_it" in err
    with pytest.raises(SystemExit) as e:  # argparse: unknown action
        main(["schema", "delete", "pi5_donkey"])
    assert e.value.code == 2


def test_synth_with_camera_shape(capsys, tmp_path):
    from PIL import Image as PILImage

    out_dir = tmp_path / "arm"
    code, out, err = run(capsys, "synth", "--schema", "so100_arm", "--episodes", 2, "--steps", 10,
                         "--camera-shape", "24x32", "--seed", 5, "--out", out_dir)
    assert code == 0, err
    assert "2 so100_arm.v1 episodes" in out
    spec = load_spec(out_dir)  # the folder's schema.json
    for p in spec.image_paths:
        assert spec.step_leaves[p].shape == (24, 32, 3)
    episodes = _episodes(out_dir)
    assert len(episodes) == 2
    for ep_dir in episodes:
        ep = read_episode(ep_dir)
        assert len(ep) == 10
        frame = ep.steps["observation/images/front"][0]
        assert PILImage.open(io.BytesIO(frame)).size == (32, 24)
    code, report = run_json(capsys, "validate", out_dir, "--check-images")
    assert code == 0, report["issues"]
    # deterministic: the same seed writes the same episodes
    again = tmp_path / "arm2"
    assert run(capsys, "synth", "--schema", "so100_arm", "--episodes", 2, "--steps", 10,
               "--camera-shape", "24x32", "--seed", 5, "--out", again)[0] == 0
    for a, b in zip(episodes, _episodes(again)):
        assert read_episode(a, load_frames=True).diff(read_episode(b, load_frames=True)) == []


def test_synth_errors_exit_2(capsys, tmp_path):
    assert run(capsys, "synth", "--schema", "pi5_donkey", "--camera-shape", "big", "--out", tmp_path / "a")[0] == 2
    assert run(capsys, "synth", "--schema", "no_robot", "--out", tmp_path / "b")[0] == 2
    assert run(capsys, "synth", "--schema", "pi5_donkey", "--steps", 0, "--out", tmp_path / "c")[0] == 2
    out_dir = tmp_path / "d"
    args = ("synth", "--schema", "pi5_donkey", "--camera-shape", "24x32", "--episodes", 1, "--steps", 3, "--out", out_dir)
    assert run(capsys, *args)[0] == 0
    code, _, err = run(capsys, *args)  # same episode ids into the same folder
    assert code == 2 and "empty --out" in err


def _crashed_episode(root: Path, spec, steps: int = 6) -> Path:
    """An episode whose logger died mid-write: status 'recording' and a torn last line."""
    logger = EpisodeLogger(root, spec, durability="none")
    logger.start_episode(episode_id="crashed", environment_id="bench")
    for kw in synth_steps(spec, steps, seed=2):
        logger.log_step(**kw)
    path = logger.episode_path
    logger.close()  # released without end_episode, as a kill would leave it
    with open(path / "steps" / "000000.jsonl", "ab") as f:
        f.write(b'{"observation": {"ima')
    return path


def test_recover_finishes_a_crashed_episode(capsys, tmp_path, small_donkey_spec):
    path = _crashed_episode(tmp_path / "data", small_donkey_spec, steps=6)
    code, report = run_json(capsys, "validate", tmp_path / "data")
    assert code == 1 and "EPISODE_UNFINISHED" in {i["code"] for i in report["issues"]}
    code, report = run_json(capsys, "validate", tmp_path / "data", "--recover")
    assert code == 0 and report["steps"] == 6

    code, out, _ = run(capsys, "recover", tmp_path / "data")
    assert code == 0
    assert "recovered" in out and "6 steps kept" in out
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["status"] == "recovered"
    assert meta["end"]["terminal"] is False and meta["end"]["num_steps"] == 6
    code, report = run_json(capsys, "validate", tmp_path / "data")
    assert code == 0, report["issues"]
    ep = read_episode(path)
    assert len(ep) == 6 and not ep.is_terminal
    # idempotent
    code, out, _ = run(capsys, "recover", path)
    assert code == 0 and "already recovered" in out


def test_recover_leaves_complete_episodes_alone(capsys, donkey_dir):
    before = {p: (p / "metadata.json").read_bytes() for p in _episodes(donkey_dir)}
    code, out, _ = run(capsys, "recover", donkey_dir)
    assert code == 0 and out.count("already complete") == len(before)
    assert {p: (p / "metadata.json").read_bytes() for p in before} == before


def test_recover_missing_path_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "recover", tmp_path / "nothing")
    assert code == 2 and "nothing" in err


# =========================================================================== installed console script


def test_console_script_runs_as_a_subprocess(donkey_dir):
    script = Path(sys.executable).parent / "rldskit"
    if not script.exists():
        pytest.skip(f"console script not installed beside {sys.executable}")
    proc = subprocess.run([str(script), "validate", str(donkey_dir), "--format", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    _check_report_shape(report)
    assert report["ok"] and report["episodes"] == len(_episodes(donkey_dir))
    _edit_step_line(_episodes(donkey_dir)[0], 0, lambda s: s.__setitem__("control_mode", "robot"))
    proc = subprocess.run([str(script), "validate", str(donkey_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "TEXT_CHOICE" in proc.stdout
    proc = subprocess.run([str(script), "validate", str(donkey_dir / "absent")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "absent" in proc.stderr


# =========================================================================== pre-commit


def test_precommit_validates_the_episodes_of_committed_files(capsys, donkey_dir, monkeypatch):
    monkeypatch.chdir(donkey_dir.parent)  # pre-commit passes paths relative to the repo root
    first, second = (p.relative_to(donkey_dir.parent) for p in _episodes(donkey_dir))
    files = [first / "metadata.json", first / "steps" / "000000.jsonl", second / "steps" / "000000.jsonl"]
    code = precommit_main([str(f) for f in files] + ["--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert report["episodes"] == 2 and report["ok"]
    # only the episodes touched by the commit are validated
    code = precommit_main([str(first / "metadata.json"), "--format", "json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["episodes"] == 1
    # a corrupt committed episode fails the hook
    _edit_step_line(donkey_dir.parent / second, 1, lambda s: s.__setitem__("discount", -3.0))
    code = precommit_main([str(second / "steps" / "000000.jsonl"), "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [(i["step"], i["field"]) for i in report["issues"] if i["severity"] == "error"] == [(1, "discount")]
    # extra hook args (e.g. gates) pass through
    gates = donkey_dir.parent / "gates.toml"
    gates.write_text('bounds = {"action/steering" = [-0.1, 0.1]}\n')
    code = precommit_main(["--gates", str(gates), str(first / "metadata.json")])
    assert code == 1 and "action/steering" in capsys.readouterr().out


def test_precommit_ignores_files_that_are_not_episodes(capsys, donkey_dir, tmp_path):
    (tmp_path / "README.md").write_text("# hello\n")
    (tmp_path / "config.json").write_text(json.dumps({"lr": 0.1}))
    (tmp_path / "notes.json").write_text(json.dumps({"steps": 3, "comment": "not an episode"}))
    files = [tmp_path / "README.md", tmp_path / "config.json", tmp_path / "notes.json",
             donkey_dir / "schema.json", tmp_path / "deleted.json"]
    assert precommit_main([str(f) for f in files]) == 0
    assert capsys.readouterr().out == ""
    assert precommit_main([]) == 0


def test_precommit_validates_single_file_episodes(capsys, tmp_path, small_donkey_spec):
    ep = {"metadata": {"episode_id": "one", "environment_id": "t", "control_role": "user", "xr_mode": "",
                       "tags": [], "start_time": 0.0, "schema": {"name": "pi5_donkey", "version": "1.0.0"}},
          "steps": [{"observation": {"image": {"$base64": "/9j/"}}, "action": [0.0, 0.0], "reward": 0.0,
                     "discount": 1.0, "timestamp": {"camera": 0.0, "control": 0.0}, "control_mode": "user",
                     "policy_action": None}],
          "end": {"terminal": True}}
    f = tmp_path / "one.json"
    f.write_text(json.dumps(ep))
    small_donkey_spec.save(tmp_path / "schema.json")
    code = precommit_main([str(f), "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert report["episodes"] == 1 and report["steps"] == 1
    assert code == 0, report["issues"]
    ep["steps"][0]["action"] = [9.0, 0.0]
    f.write_text(json.dumps(ep))
    assert precommit_main([str(f)]) == 1


def _hook_definitions() -> list[dict]:
    text = (REPO / ".pre-commit-hooks.yaml").read_text()
    try:
        import yaml
    except ImportError:  # a minimal reader for this flat list of mappings
        hooks: list[dict] = []
        for line in text.splitlines():
            m = re.match(r"^(-\s+|\s+)([A-Za-z_]+):\s*(.*)$", line)
            if not m:
                continue
            if m.group(1).startswith("-"):
                hooks.append({})
            value = m.group(3).strip()
            if value[:1] in "'\"":
                value = value[1:-1]
            hooks[-1][m.group(2)] = value
        return hooks
    return yaml.safe_load(text)


def test_pre_commit_hook_definition():
    hooks = _hook_definitions()
    assert isinstance(hooks, list)
    hook = next(h for h in hooks if h.get("id") == "rldskit-validate")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert hook["entry"] in scripts
    module, func = scripts[hook["entry"]].split(":")
    import importlib

    assert getattr(importlib.import_module(module), func) is precommit_main
    files, exclude = re.compile(hook["files"]), re.compile(hook["exclude"])

    def selected(path: str) -> bool:  # how pre-commit filters (re.search on the repo-relative path)
        return bool(files.search(path)) and not exclude.search(path)

    for path in ("data/ep_1/metadata.json", "data/ep_1/steps/000000.jsonl", "data/ep_1/steps/001000.jsonl.zst",
                 "episodes/run_3.jsonl", "episodes/run_3.json"):
        assert selected(path), path
    for path in ("data/schema.json", "out/manifest.json", "tfds/x/1.0.0/dataset_info.json",
                 "tfds/x/1.0.0/features.json", "data/ep_1/frames/front/000000.jpg", "README.md"):
        assert not selected(path), path


# =========================================================================== push --help


def test_push_help_documents_pruning_and_the_opt_out(capsys):
    with pytest.raises(SystemExit) as ei:
        main(["push", "--help"])
    assert ei.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--no-prune" in text
    assert "deleted in the upload's commit" in text and "duplicated steps" in text  # what, and why
    assert "README.md, .gitattributes and any other file committed on the Hub are never deleted" in text


def test_every_command_takes_verbose_before_or_after_itself():
    """``-v``/``--verbose`` (quiet by default: rldskit._log) is accepted on the top level and by every
    subcommand, nested ones included, and lands in the same place."""
    import argparse

    from rldskit.cli import build_parser

    ap = build_parser()
    assert ap.parse_args(["-v", "schema", "list"]).verbose is True
    assert ap.parse_args(["schema", "list", "-v"]).verbose is True
    assert ap.parse_args(["schema", "list"]).verbose is False
    seen = []

    def walk(parser, path):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, p in a.choices.items():
                    assert "--verbose" in p._option_string_actions, f"rldskit {' '.join(path + [name])} lacks --verbose"
                    seen.append(" ".join(path + [name]))
                    walk(p, path + [name])

    walk(ap, [])
    assert {"validate", "convert", "recover", "stats", "push", "pipeline"} <= set(seen), seen
