"""What every ``rldskit`` command shares: exit codes, the one-line error and a progress bar."""

from __future__ import annotations

import sys
import time

#: 0 done / clean, 1 violations or a gate stopped it, 2 it cannot run (bad usage, missing input)
EXIT_OK, EXIT_VIOLATIONS, EXIT_USAGE = 0, 1, 2


class Progress:
    """A one-line progress bar on stderr, only when ``enabled`` (the CLI enables it when stderr is a
    terminal). Called as ``progress(done, total)``; redraws at most every 0.1 s and ends the line at
    ``done == total``."""

    def __init__(self, label: str, enabled: bool):
        self.label = label
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done != total and now - self.last < 0.1:
            return
        self.last = now
        width = 30
        fill = int(width * done / max(total, 1))
        rate = done / max(now - self.t0, 1e-9)
        sys.stderr.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} ({rate:.0f}/s)")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def error(msg: str) -> int:
    """Print ``rldskit: error: <msg>`` on stderr and return :data:`EXIT_USAGE`."""
    print(f"rldskit: error: {msg}", file=sys.stderr)
    return EXIT_USAGE
