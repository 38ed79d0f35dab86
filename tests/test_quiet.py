"""Quiet by default (rldskit._log): ``rldskit convert`` on the real DirectRunner in
``multi_processing`` mode prints rldskit's own lines only, none of the Beam / TensorFlow / absl
noise its driver and worker processes would print; ``-v`` brings Beam's logs back; a failure inside
a Beam worker still surfaces, as one rldskit error line with the worker's message."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import example, given, settings, strategies as st

from fuzzing import examples
from rldskit._log import _LinePump, is_noise

#: lines seen in `rldskit convert` and `make demo` output before quiet-by-default (driver and workers)
NOISE_MARKERS = ("apitools not found", "Logging handler created", "semi_persistent_directory",
                 "Discarding unparseable args", "oneDNN", "cpu_feature_guard", "absl::InitializeLog",
                 "This TensorFlow binary", "INFO:", "WARNING:", "INFO apache_beam", "WARNING apache_beam")


def _rldskit(args: list[str], *, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("RLDSKIT_VERBOSE", "TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "rldskit.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full)


def _noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(m in line for m in NOISE_MARKERS)]


@pytest.fixture
def tiny_capture(tmp_path, small_donkey_spec) -> Path:
    from rldskit.synth import write_synthetic

    write_synthetic(small_donkey_spec, tmp_path / "episodes", 3, 6, seed=0)
    return tmp_path / "episodes"


def _run_with_a_terminal(argv: list[str]) -> tuple[int, str, str]:
    """Run ``argv`` with stderr on a pseudo-terminal (so the progress bar is drawn, as for a user)
    and stdout on a pipe; returns (exit code, stdout, what the terminal received)."""
    import pty
    import threading

    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("RLDSKIT_VERBOSE", "TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    got: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            got.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(got).decode(errors="replace")


def test_convert_on_the_multiprocessing_direct_runner_is_quiet(tmp_path, tiny_capture):
    code, out, term = _run_with_a_terminal([sys.executable, "-m", "rldskit.cli", "convert", str(tiny_capture),
                                            "--out", str(tmp_path / "data"), "--name", "tiny", "--runner", "direct",
                                            "--workers", "2"])
    assert code == 0, out + term
    assert _noise(out + term) == [], term
    # exactly rldskit's lines: what it is about to do, its progress bar (redrawn with \r), what it did
    pieces = [p for p in re.split(r"[\r\n]+", term) if p]
    announce = (f"converting {tiny_capture} -> {tmp_path / 'data'}/tiny "
                "(tfrecord+array_record, step index; runner direct)")
    assert pieces[0] == announce, term
    bar = re.compile(r"^converting \(shards\) \[[#.]{30}\] \d+/\d+ \(\d+/s\)$")
    assert pieces[1:] and all(bar.match(p) for p in pieces[1:]), pieces
    assert pieces[-1].startswith("converting (shards) [" + "#" * 30 + "]"), pieces
    assert sum(p.startswith("converting (shards) [" + "#" * 30) for p in pieces) == 1, pieces  # drawn complete once
    assert out.splitlines()[0].startswith(f"{tmp_path / 'data' / 'tiny' / '1.0.0'}: 3 episodes in, 3 written"), out
    manifest = json.loads((tmp_path / "data" / "tiny" / "1.0.0" / "manifest.json").read_text())
    assert manifest["counts"]["written"] == 3


def test_verbose_shows_beam_logs_from_the_driver_and_the_workers(tmp_path, tiny_capture):
    proc = _rldskit(["convert", str(tiny_capture), "--out", str(tmp_path / "data"), "--name", "tiny",
                     "--workers", "2", "-v"])
    assert proc.returncode == 0, proc.stderr
    assert "INFO apache_beam" in proc.stderr, proc.stderr  # the driver's Beam logs, through rldskit's handler
    assert "Logging handler created" in proc.stderr, proc.stderr  # a worker process's own start-up line
    # the flag also goes before the subcommand
    again = _rldskit(["-v", "convert", str(tiny_capture), "--out", str(tmp_path / "data"), "--name", "tiny",
                      "--runner", "inline", "--overwrite"])
    assert again.returncode == 0, again.stderr


#: a worker-only fault: sitecustomize runs in every Python process of the run, but only Beam's SDK
#: workers have CONTROL_API_SERVICE_DESCRIPTOR; there the shard task fails as on a full disk
_FULL_DISK = textwrap.dedent('''
    import os
    if "CONTROL_API_SERVICE_DESCRIPTOR" in os.environ:
        import rldskit.pipeline.shard as _shard

        def _no_space(*args, **kwargs):
            raise OSError(28, "No space left on device (injected in the worker)")

        _shard.write_shard = _no_space
''')


def test_a_failure_inside_a_worker_still_surfaces_with_its_message(tmp_path, tiny_capture):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(_FULL_DISK)
    env = {"PYTHONPATH": os.pathsep.join([str(inject), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = _rldskit(["convert", str(tiny_capture), "--out", str(tmp_path / "data"), "--name", "tiny", "--workers", "2"],
                    env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rldskit: error: the Beam pipeline failed: OSError: [Errno 28] No space left on device "
                           "(injected in the worker)"), proc.stderr
    assert "-v shows the traceback" in last
    assert not (tmp_path / "data" / "tiny" / "1.0.0" / "dataset_info.json").exists()
    assert _noise(proc.stderr) == [], proc.stderr  # the error shows; the start-up chatter still does not

    verbose = _rldskit(["convert", str(tiny_capture), "--out", str(tmp_path / "data"), "--name", "tiny",
                        "--workers", "2", "-v"], env=env)
    assert verbose.returncode == 2
    assert "Traceback" in verbose.stderr and "_no_space" in verbose.stderr, verbose.stderr


# --------------------------------------------------------------------------- the stderr filter itself


def test_noise_is_python_log_records_below_error_in_the_default_format():
    assert is_noise(b"WARNING:root:apitools not found, and bigquery client libraries are not available\n")
    assert is_noise(b"INFO:__main__:Logging handler created.\n")
    assert is_noise(b"WARNING:apache_beam.options.pipeline_options:Discarding unparseable args: [...]\n")
    for kept in (b"ERROR:apache_beam.runners.common:OSError: boom\n", b"CRITICAL:__main__:harness failed\n",
                 b"Traceback (most recent call last):\n", b"OSError: [Errno 28] No space left on device\n",
                 b"\rconverting (shards) [####......] 1/3 (2/s)", b"rldskit: error: INFO:x:y\n",
                 b"Segmentation fault (core dumped)\n", b"INFO: not a logger record\n"):
        assert not is_noise(kept), kept


LINES = st.lists(st.one_of(
    st.sampled_from([b"WARNING:root:apitools not found\n", b"INFO:__main__:Logging handler created.\n",
                     b"DEBUG:a.b:c\n", b"ERROR:apache_beam:boom\n", b"Traceback (most recent call last):\n",
                     b"\rconverting [##..] 1/2", b"\rconverting [####] 2/2\n", b"INFO\n", b"WARNING:\n", b"I\r"]),
    st.binary(max_size=30)), max_size=12)


@given(lines=LINES, cuts=st.lists(st.integers(0, 400), max_size=8))
@example(lines=[b"WARN", b"ING:root:x\n", b"ok\n"], cuts=[2])
@example(lines=[b"\rconverting [##..] 1/2", b"INFO:a:b\n"], cuts=[5, 30])
@settings(max_examples=examples(200), deadline=None)
def test_the_filter_drops_exactly_the_noise_lines_however_the_bytes_arrive(lines, cuts):
    data = b"".join(lines)
    # the reference: split after every \n or \r, drop the noise lines, keep every other byte in order
    pieces = [p for p in re.split(rb"(?<=[\r\n])", data) if p]
    want = b"".join(p for p in pieces if not is_noise(p))
    got: list[bytes] = []
    pump = _LinePump(got.append, is_noise)
    pos = 0
    for c in sorted(set(cuts)) + [len(data)]:
        c = min(c, len(data))
        if c > pos:
            pump.feed(data[pos:c])
            pos = c
    pump.close()
    assert b"".join(got) == want


def test_a_line_that_cannot_be_noise_is_passed_on_before_it_ends():
    got: list[bytes] = []
    pump = _LinePump(got.append, is_noise)
    pump.feed(b"\rconverting (shards) [#####.....] 1/2 (1/s)")  # a progress bar: no newline yet
    assert b"".join(got) == b"\rconverting (shards) [#####.....] 1/2 (1/s)"
    pump.feed(b"\n")
    pump.feed(b"WARN")  # the start of a line that may still become noise: held back
    assert b"".join(got).endswith(b"(1/s)\n")
    pump.feed(b"ING:root:apitools not found\nOSError: boom")
    assert b"".join(got).endswith(b"(1/s)\nOSError: boom")


# --------------------------------------------------------------------------- TensorFlow's C++ logs


_IMPORTS_TENSORFLOW = textwrap.dedent('''
    import sys
    from rldskit._log import configure, quiet_native_logs
    configure(True if sys.argv[1] == "verbose" else None)
    with quiet_native_logs():
        import tensorflow as tf
        tf.constant(1.0) + 1.0  # TensorFlow's C++ runtime starts and logs (oneDNN, absl)
        print("rldskit: own line", file=sys.stderr)
''')


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_tensorflows_native_logs_are_filtered_unless_verbose(mode):
    """``make demo`` (step 5) and ``rldskit pipeline`` import TensorFlow in their own process; its
    absl banner and oneDNN line bypass Python's logging and TF_CPP_MIN_LOG_LEVEL."""
    env = {k: v for k, v in os.environ.items() if k not in ("RLDSKIT_VERBOSE", "TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}
    proc = subprocess.run([sys.executable, "-c", _IMPORTS_TENSORFLOW, mode], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "rldskit: own line" in proc.stderr
    native = [ln for ln in proc.stderr.splitlines() if "absl::InitializeLog" in ln or "oneDNN" in ln]
    if mode == "quiet":
        assert native == [], proc.stderr
    else:
        assert native, "this TensorFlow no longer logs at start-up: the filter's patterns may be stale"


def test_native_log_lines_below_error_are_noise_and_errors_are_not():
    assert is_noise(b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    assert is_noise(b"I0000 00:00:1796686502.428893    9498 port.cc:153] oneDNN custom operations are on.\n")
    assert is_noise(b"W0000 00:00:1796686502.4 12 tensorflow/core/x.cc:88] slow\n")
    for kept in (b"E0000 00:00:1796686502.428893    9498 port.cc:153] failed\n",
                 b"F0000 00:00:1.0 1 a.cc:1] fatal\n", b"I see nothing wrong\n", b"WARNING: disk almost full\n"):
        assert not is_noise(kept), kept
