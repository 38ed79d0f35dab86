"""Quiet by default: what rldskit's programs (the ``rldskit`` CLI, ``python -m rldskit.cli.demo``) let
the libraries under them print, and ``-v``/``--verbose`` to see everything. Dependency-free.

Three sources of noise, each handled where it starts, and before the heavy imports:

* **Python logging** (Beam, absl, TFDS, JAX...). :func:`configure` installs one root handler on
  stderr before anything heavy is imported (so Beam's import-time ``logging.warning`` cannot
  install its own), passing rldskit's own warnings (``rldskit``, ``edge_runtime``, ``trainers``,
  ``rlds_capture``) and everyone's errors. Verbose: every record from INFO up.
* **C++ logging** of TensorFlow, absl and gRPC (CPU-feature and CUDA lines, the oneDNN notice).
  Environment variables, so child processes inherit them: ``TF_CPP_MIN_LOG_LEVEL=2`` and
  ``GRPC_VERBOSITY=ERROR`` (each only when the user has not set it). Only log output changes:
  oneDNN itself stays as TensorFlow chose (``TF_ENABLE_ONEDNN_OPTS`` changes numerics and is
  left alone).
* **Beam's worker processes** (the DirectRunner's ``multi_processing`` mode starts one Python
  per core that writes to the terminal's stderr). Their log level is a pipeline option
  (:func:`beam_worker_log_level`, ``CRITICAL`` when quiet: a failure reaches the driver as an
  exception, which rldskit reports in one line); the two lines a worker logs before it reads
  its options (``apitools not found``, ``Logging handler created.``) are dropped by
  :func:`filtered_stderr`, which the Beam runner wraps around a run. Everything a worker writes
  that is not a Python log record below ERROR (an uncaught traceback, a crash) still shows.

The choice is kept in the environment (``RLDSKIT_VERBOSE=1`` or ``0``), so subprocesses see it
and ``RLDSKIT_VERBOSE=1`` turns verbosity on without a flag. A library user who never calls
:func:`configure` keeps their own logging set-up; rldskit then only lowers Beam's own chatter.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator

__all__ = ["configure", "is_verbose", "is_quiet", "beam_worker_log_level", "filtered_stderr", "is_noise"]

#: ``1``: verbose, ``0``: quiet (set by :func:`configure`); unset: a library user's own set-up
VERBOSE_ENV = "RLDSKIT_VERBOSE"
#: loggers whose warnings are rldskit's own message to the user (shown when quiet too)
OWN_LOGGERS = ("rldskit", "edge_runtime", "trainers", "rlds_capture")
#: environment for C++ logging when quiet (setdefault: a user's own setting wins)
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}
#: libraries that chat at INFO/WARNING from Python logging
NOISY_LOGGERS = ("apache_beam", "absl", "tensorflow", "tensorflow_datasets", "jax", "grain", "h5py", "urllib3",
                 "fsspec", "huggingface_hub", "datasets", "torch", "matplotlib", "PIL")


_SET_BY_US: set[str] = set()


def is_verbose() -> bool:
    """Whether the user asked to see the libraries' logs (``-v`` or ``RLDSKIT_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "") == "1"


def is_quiet() -> bool:
    """Whether a program configured quiet output (:func:`configure` without ``verbose``)."""
    return os.environ.get(VERBOSE_ENV, "") == "0"


class _QuietFilter(logging.Filter):
    """Errors from anyone; warnings from rldskit's own loggers only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        return record.levelno >= logging.WARNING and record.name.split(".", 1)[0] in OWN_LOGGERS


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is at each record (pytest's capture,
    a redirected stream), not to the object it was when the handler was made."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(verbose: bool | None = None) -> bool:
    """Set up logging for a command-line program; call it first, before TensorFlow or Beam are
    imported. ``verbose``: ``True`` shows every library's INFO logs, ``False`` keeps the
    terminal to rldskit's output, its warnings and errors; ``None`` reads ``RLDSKIT_VERBOSE``.
    Idempotent (a second call replaces the first's handler). Returns the verbosity chosen."""
    if verbose is None:
        verbose = is_verbose()
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    for k, v in QUIET_ENV.items():
        if not verbose and k not in os.environ:
            os.environ[k] = v
            _SET_BY_US.add(k)
        elif verbose and k in _SET_BY_US:  # undo an earlier quiet call in this process, never the user's own
            os.environ.pop(k, None)
            _SET_BY_US.discard(k)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_rldskit", False):
            root.removeHandler(h)
    handler = _StderrHandler()
    handler._rldskit = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(_QuietFilter())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    for name in NOISY_LOGGERS:  # their INFO records are not even formatted when quiet
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)
    return verbose


def beam_worker_log_level() -> str:
    """The ``--default_sdk_harness_log_level`` for Beam's worker processes."""
    if is_verbose():
        return "INFO"
    return "CRITICAL" if is_quiet() else "ERROR"


#: a Python log record below ERROR in logging's default format (``basicConfig``), as Beam's workers
#: write them before reading their options: ``WARNING:root:apitools not found, ...``
_NOISE = re.compile(rb"^(?:DEBUG|INFO|WARNING):[A-Za-z_][\w.]*:")
_TAGS = (b"DEBUG:", b"INFO:", b"WARNING:")
#: TensorFlow's C++ logs below ERROR, written by absl before anything initialises it (so
#: ``TF_CPP_MIN_LOG_LEVEL`` does not reach them): the banner, then glog-style ``I``/``W`` lines
#: (``I0000 00:00:1796686502.428893    9498 port.cc:153] oneDNN custom operations are on...``)
_ABSL_BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_NATIVE_NOISE = re.compile(rb"^[IW]\d{4} [\d:.]+ +\d+ [\w.\-/]+:\d+\] ")


def is_noise(line: bytes) -> bool:
    """Whether one line of stderr is a Python log record below ERROR in the default format, or
    one of TensorFlow's C++ (absl) log lines below ERROR."""
    return bool(_NOISE.match(line)) or line.startswith(_ABSL_BANNER) or bool(_NATIVE_NOISE.match(line))


def _undecided(start: bytes) -> bool:
    """Whether the start of a line may still turn out to be :func:`is_noise` as more arrives."""
    for t in _TAGS:
        if t.startswith(start) or (start.startswith(t) and re.fullmatch(rb"[\w.]*", start[len(t):])):
            return True
    if _ABSL_BANNER.startswith(start):
        return True
    return bool(re.fullmatch(rb"[IW](?:\d{0,4}|\d{4} [\d:. ]*[\w.\-/:]*)", start))


class _LinePump:
    """Pass bytes on line by line (``\\n`` or ``\\r`` ends a line), dropping lines ``drop``
    matches. A line that cannot be noise is passed on as it arrives (a progress bar that
    rewrites itself with ``\\r`` stays live)."""

    def __init__(self, write: Callable[[bytes], None], drop: Callable[[bytes], bool]):
        self.write, self.drop = write, drop
        self.buf = b""
        self.mode = "start"  # "start" of a line, "pass" the rest of it, or "drop" the rest of it

    def feed(self, data: bytes) -> None:
        self.buf += data
        while self.buf:
            m = re.search(rb"[\r\n]", self.buf)
            end = m.end() if m else None
            if self.mode == "start":
                if end is not None:
                    line, self.buf = self.buf[:end], self.buf[end:]
                    if not self.drop(line):
                        self.write(line)
                    continue
                if _undecided(self.buf):
                    return  # wait for more of the line
                self.mode = "drop" if self.drop(self.buf) else "pass"
            piece, self.buf = (self.buf[:end], self.buf[end:]) if end is not None else (self.buf, b"")
            if self.mode == "pass":
                self.write(piece)
            if end is not None:
                self.mode = "start"

    def close(self) -> None:
        if self.buf and not (self.mode == "drop" or (self.mode == "start" and self.drop(self.buf))):
            self.write(self.buf)
        self.buf = b""


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            return  # the terminal is gone: nothing left to show it on
        view = view[n:]


def quiet_native_logs() -> contextlib.AbstractContextManager[None]:
    """When quiet: :func:`filtered_stderr` for a program part that imports TensorFlow in this
    process (the demo, ``rldskit pipeline``), whose C++ log lines bypass Python's logging. When
    verbose: nothing."""
    return filtered_stderr() if is_quiet() else contextlib.nullcontext()


@contextlib.contextmanager
def filtered_stderr(drop: Callable[[bytes], bool] = is_noise) -> Iterator[None]:
    """Route this process's file descriptor 2 through a pipe for the duration, dropping the lines
    ``drop`` matches and passing every other byte on to the real stderr as it arrives. Child
    processes started meanwhile (Beam's workers) inherit the pipe as their stderr, so their
    output is filtered too. Does nothing when descriptor 2 is not usable."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    r, w = os.pipe()
    os.dup2(w, 2)
    os.close(w)
    pump = _LinePump(lambda b: _write_fd(saved, b), drop)
    # This process's own Python-level writes (a progress bar that leaves its line open, rldskit's log
    # handler) go straight to the real stderr, so the pipe carries only whole lines from children
    # (and C-level writes): a child's log record then always starts a line the filter sees.
    own = None
    try:
        if sys.stderr is not None and sys.stderr.fileno() == 2:
            own = io.TextIOWrapper(io.FileIO(saved, "w", closefd=False), encoding=sys.stderr.encoding or "utf-8",
                                   errors="backslashreplace", line_buffering=True, write_through=True)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        own = None
    previous = sys.stderr
    if own is not None:
        sys.stderr = own

    def run() -> None:
        try:
            while True:
                try:
                    chunk = os.read(r, 1 << 16)
                except InterruptedError:
                    continue
                if not chunk:
                    break
                try:
                    pump.feed(chunk)
                except Exception:  # noqa: BLE001 - never stop draining: a full pipe would block every writer
                    _write_fd(saved, chunk)
            pump.close()
        finally:
            os.close(r)

    t = threading.Thread(target=run, name="rldskit-stderr-filter", daemon=True)
    t.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        if own is not None:
            if sys.stderr is own:
                sys.stderr = previous
            own.close()  # (closefd=False) anything that kept it gets an error, never a reused descriptor
        os.dup2(saved, 2)  # our write end of the pipe closes; children still running keep theirs
        t.join(timeout=10)
        if not t.is_alive():  # else a child outlives us and still writes through it: leave it be
            os.close(saved)
