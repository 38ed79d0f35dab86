"""Every Python package in the repository is shipped by pyproject.toml (an editable install
hides a missing one; a built wheel would not contain it)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    mapped = {v: k for k, v in cfg.get("package-dir", {}).items()}
    found = set()
    for init in ROOT.glob("**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and rel.parts[0] in (".venv", "build", "tests", "bench", "builders") or any(
                p.startswith(".") for p in rel.parts):
            continue
        found.add(mapped.get(str(rel), ".".join(rel.parts)))
    assert found <= listed, f"not shipped: {sorted(found - listed)}"
