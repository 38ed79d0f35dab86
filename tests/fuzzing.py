"""Hypothesis budgets shared by every property test.

Two profiles, chosen by ``HYPOTHESIS_PROFILE`` (registered in ``tests/conftest.py``):

* ``ci`` (the default; ``make test`` and CI): ``derandomize=True`` and no example database, so one
  commit is green or red every time, whatever ran before on the machine.
* ``fuzz`` (``make fuzz``): random seeds, the local example database (``.hypothesis/``) so a failure
  found once is replayed first next time, and every test's budget multiplied by ``FUZZ_SCALE``.

A property test states its CI budget with ``settings(max_examples=examples(N))`` and never sets
``derandomize`` or ``database`` itself (an explicit setting on the test would override the profile).
A failure ``make fuzz`` finds becomes an explicit ``@example(...)`` on the test, in the same commit as
the fix.
"""

from __future__ import annotations

import os

#: How many times more examples each property test tries under ``make fuzz``.
FUZZ_SCALE = int(os.environ.get("RLDSKIT_FUZZ_SCALE", "20"))


def profile() -> str:
    """The active profile name: ``ci`` unless ``HYPOTHESIS_PROFILE`` says otherwise."""
    return os.environ.get("HYPOTHESIS_PROFILE", "ci")


def examples(n: int) -> int:
    """``n`` examples under the ``ci`` profile; ``n * FUZZ_SCALE`` under ``fuzz``."""
    return n * FUZZ_SCALE if profile() == "fuzz" else n


def register_profiles() -> None:
    """Register ``ci`` and ``fuzz`` with hypothesis and load the active one."""
    from hypothesis import HealthCheck, settings
    from hypothesis.database import DirectoryBasedExampleDatabase

    settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
    settings.register_profile(
        "fuzz", max_examples=100 * FUZZ_SCALE, derandomize=False, database=DirectoryBasedExampleDatabase(".hypothesis/examples"),
        deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(profile())
