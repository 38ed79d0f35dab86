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


# ----------------------------------------------------------------------------- the lock

LOCK = ROOT / "requirements-lock.txt"


def _locked() -> dict[str, str]:
    """``{canonical name: version}`` from requirements-lock.txt (pip-compile output)."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        assert "==" in line and ";" not in line, f"{LOCK.name}: {line!r} is not an exact pin"
        name, version = line.split("==", 1)
        pins[canonicalize_name(name)] = version.strip()
    return pins


def test_lock_pins_every_direct_dependency_inside_its_pyproject_range():
    """Every requirement of rldskit[all,dev] is pinned by the lock, at a version its range admits (so the
    lock is not stale after someone edits pyproject.toml)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pins = _locked()
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "rldskit":
            continue
        assert name in pins, f"{LOCK.name} does not pin {req.name} (pyproject asks for {text!r}): run `make lock`"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), (
            f"{LOCK.name} pins {req.name}=={pins[name]}, outside pyproject's {text!r}: run `make lock`")


def test_installed_stack_is_the_locked_one():
    """The venv the tests run in holds exactly the locked versions (make installs with ``-c`` the lock)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    wrong = []
    for name, pinned in _locked().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # a platform-specific pin this machine does not need
        if Version(installed) != Version(pinned):
            wrong.append(f"{name}: installed {installed}, locked {pinned}")
    assert not wrong, "installed stack differs from requirements-lock.txt:\n" + "\n".join(wrong)


def test_the_two_distributions_declare_no_command_twice():
    """``rldskit-edge`` belongs to the edge distribution (edge_runtime/pyproject.toml); the main one,
    which carries the same package, must not install a script of the same name over it."""
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    edge = tomllib.loads((ROOT / "edge_runtime" / "pyproject.toml").read_text())["project"].get("scripts", {})
    assert "rldskit-edge" in edge
    assert not set(main) & set(edge), set(main) & set(edge)
