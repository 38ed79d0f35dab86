"""Every issue code rldskit emits is documented in ``rldskit.issues.CODES`` (the README points there
for the full list), found by reading the source: the first argument of every call that records an
issue (``issue(...)``, ``Issue(...)``, ``ImportIssue(...)``, ``rep.warn(...)``, ``drop(...)``, ...)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from rldskit.issues import CODES

ROOT = Path(__file__).resolve().parents[1]
#: the names of the calls whose first argument (or ``code=``) is an issue code
RECORDERS = {"issue", "_issue", "Issue", "ImportIssue", "warn", "drop", "note", "_reason", "error"}
CODE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")


def _emitted() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for sub in ("rldskit", "builders", "trainers", "edge_runtime"):
        for path in sorted((ROOT / sub).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
                if name not in RECORDERS:
                    continue
                args = list(node.args[:1]) + [k.value for k in node.keywords if k.arg == "code"]
                for a in args:
                    if isinstance(a, ast.Constant) and isinstance(a.value, str) and CODE.match(a.value):
                        found.setdefault(a.value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_scan_finds_codes_from_every_emitter():
    emitted = _emitted()
    # one from each kind of emitter, so the scan cannot silently stop finding them
    for code in ("FIELD_TYPE", "STEP_UNREADABLE", "UNIT", "CAMERA_NAMES", "SOURCE", "INDEX_INVALID"):
        assert code in emitted, code


def test_every_emitted_code_is_documented():
    missing = {c: where for c, where in _emitted().items() if c not in CODES}
    assert not missing, f"issue codes emitted but not in rldskit.issues.CODES: {missing}"


def test_every_code_has_a_severity_and_a_meaning():
    for code, (severity, meaning) in CODES.items():
        assert CODE.match(code), code
        assert severity in ("error", "warning"), code
        assert meaning and meaning[0].islower() or meaning[0].isupper() or meaning[0] in "`(", code
