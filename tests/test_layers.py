"""Layers point one way (issue 13 item 4; README "Layout"). Every module of rldskit, trainers,
builders and edge_runtime has a layer; an import (at module level, inside a function or under
``TYPE_CHECKING``: an AST scan, so lazy imports count) goes to the same layer or one below; no two
modules import each other, directly or round a loop, except the cycles listed with a reason; and no
module uses another module's private names (``from m import _x``, ``m._x``). Exceptions that no
longer occur fail, so the lists only shrink."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rldskit", "trainers", "builders", "edge_runtime")

#: layer of each module, by the longest matching prefix (from the bottom; README "Layout")
LAYERS: dict[str, int] = {
    # 0: the numpy-only core the edge runtime owns, which rldskit builds on
    "edge_runtime.atomic_io": 0, "edge_runtime.capture_layout": 0, "edge_runtime.frames": 0,
    "edge_runtime.safe_extract": 0,
    # 1: the rest of the edge runtime (policy, safety, slots, the loop, its CLI): on the robot, numpy only
    "edge_runtime": 1,
    # 2: schema, episodes, images, issue codes, atomic writes, logging (and the lazy ``rldskit`` facade)
    "rldskit": 2, "rldskit._io": 2, "rldskit._log": 2, "rldskit.issues": 2, "rldskit.spec": 2,
    "rldskit.episode": 2, "rldskit.images": 2, "rldskit.paths": 2,
    # 3: formats: the capture folder and its logger, TFRecord, ArrayRecord, tf.Example, the dataset folder, the index
    "rldskit.formats": 3, "rldskit.capture": 3,
    # 4: validation
    "rldskit.validation": 4,
    # 5: what reads and writes datasets: conversion, loaders, statistics, report, hub, archives, importers, exporters
    "rldskit.pipeline": 5, "rldskit.loaders": 5, "rldskit.stats": 5, "rldskit.report": 5, "rldskit.hub": 5,
    "rldskit.archive": 5, "rldskit.importers": 5, "rldskit.exporters": 5, "rldskit.synth": 5,
    "rldskit.dataset_cache": 5,
    # 6: trainers, and the TFDS builder (a Beam program over the pipeline)
    "trainers": 6, "builders": 6,
    # 7: the app layer: the CLI, the staged pipeline command, the demo
    "rldskit.cli": 7,
}

#: import cycles that are allowed, each with why
ALLOWED_CYCLES: dict[frozenset[str], str] = {
    frozenset({"rldskit.formats.step_index", "rldskit.formats.tfds_dir"}):
        "DatasetDir.index(split) is the dataset's own way to its step index (one lazy import of StepIndex); "
        "StepIndex is built from an opened DatasetDir",
}

#: private names used across modules, each with why (none today)
ALLOWED_PRIVATE: dict[tuple[str, str, str], str] = {}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


MODULES = _modules()


def layer_of(module: str) -> int:
    name = module
    while name not in LAYERS:
        if "." not in name:
            raise KeyError(f"{module} has no layer: add it to LAYERS in tests/test_layers.py (and the README's Layout)")
        name = name.rsplit(".", 1)[0]
    return LAYERS[name]


def _known(target: str) -> str | None:
    """The project module an import of ``target`` loads (its nearest known parent), or None."""
    if target.split(".")[0] not in PACKAGES:
        return None
    while target not in MODULES and "." in target:
        target = target.rsplit(".", 1)[0]
    return target if target in MODULES else None


def _imports(module: str) -> list[tuple[str, int, str | None, str | None]]:
    """``(imported module, line, name taken from it or None, local alias of a module or None)``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    out = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if (m := _known(a.name)) is not None:
                    out.append((m, node.lineno, None, a.asname or (a.name if "." not in a.name else None)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            for a in node.names:
                full = f"{src}.{a.name}"
                if full in MODULES:  # from package import submodule
                    out.append((full, node.lineno, None, a.asname or a.name))
                elif (m := _known(src)) is not None:
                    out.append((m, node.lineno, a.name, None))
    return out


def _edges() -> dict[str, set[str]]:
    return {m: {t for t, *_ in _imports(m) if t != m} for m in MODULES}


def test_every_module_has_a_layer():
    missing = []
    for m in MODULES:
        try:
            layer_of(m)
        except KeyError as e:
            missing.append(str(e))
    assert not missing, "\n".join(missing)


def test_imports_go_to_the_same_layer_or_below():
    upward = []
    for m in MODULES:
        for target, line, _, _ in _imports(m):
            if layer_of(target) > layer_of(m):
                upward.append(f"{MODULES[m].relative_to(ROOT)}:{line}: {m} (layer {layer_of(m)}) imports "
                              f"{target} (layer {layer_of(target)})")
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def _cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(frozenset(comp))
    return out


def test_no_import_cycles_but_the_listed_ones():
    found = set(_cycles(_edges()))
    assert found - set(ALLOWED_CYCLES) == set(), f"import cycles: {[sorted(c) for c in found - set(ALLOWED_CYCLES)]}"
    assert set(ALLOWED_CYCLES) - found == set(), f"listed cycles that are gone (remove them): {set(ALLOWED_CYCLES) - found}"


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [frozenset("abc")]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _private_uses() -> set[tuple[str, str, str]]:
    uses = set()
    for m in MODULES:
        aliases: dict[str, str] = {}
        for target, _, name, alias in _imports(m):
            if name is not None and name.startswith("_") and not name.startswith("__") and target != m:
                uses.add((m, target, name))
            if alias is not None:
                aliases[alias] = target
        tree = ast.parse(MODULES[m].read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != m):
                uses.add((m, aliases[node.value.id], node.attr))
    return uses


def test_no_module_uses_another_modules_private_names():
    found = _private_uses()
    assert found - set(ALLOWED_PRIVATE) == set(), "private names used across modules (make the contract public): " + \
        ", ".join(f"{m} uses {t}.{n}" for m, t, n in sorted(found - set(ALLOWED_PRIVATE)))
    assert set(ALLOWED_PRIVATE) - found == set(), f"listed uses that are gone: {set(ALLOWED_PRIVATE) - found}"


@pytest.mark.parametrize("module", ["rldskit.cli", "rldskit.cli.import_export"])
def test_the_cli_registers_its_commands_from_a_static_table(module):
    source = MODULES[module].read_text()
    assert "importlib" not in source and "import_module" not in source


def test_the_cli_docstring_names_every_command():
    import argparse

    import rldskit.cli

    parser = rldskit.cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names = set(sub.choices)
    for kind in ("import", "export"):
        nested = next(a for a in sub.choices[kind]._actions if isinstance(a, argparse._SubParsersAction))
        names |= set(nested.choices)
    doc = rldskit.cli.__doc__
    missing = sorted(n for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", doc))
    assert not missing, f"commands the rldskit.cli docstring does not name: {missing}"
    assert len(names) >= 18


def test_the_library_below_the_app_layer_does_not_import_trainers_or_the_deployment_runtime():
    # the rule above in words a maintainer looks for: rldskit's library imports only the edge core
    for m in MODULES:
        if m.startswith("rldskit") and layer_of(m) < LAYERS["rldskit.cli"]:
            for target, line, _, _ in _imports(m):
                assert not target.startswith("trainers"), f"{m}:{line} imports {target}"
                assert not target.startswith("edge_runtime") or layer_of(target) == 0, f"{m}:{line} imports {target}"


def test_only_the_image_codec_imports_pillow():
    """One image codec (issue 13 item 3): rldskit.images, the edge core's frames (lazily, on a
    development machine) and the report's placeholder drawing are the only Pillow users."""
    allowed = {"rldskit.images", "edge_runtime.frames", "rldskit.report"}
    users = set()
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "PIL" or n.startswith("PIL.") for n in names):
                users.add(m)
    assert users <= allowed, f"Pillow imported outside the codec: {sorted(users - allowed)}"
    report = MODULES["rldskit.report"].read_text()
    assert "Image.open" not in report and ".save(" not in report  # drawing only; decoding and encoding via images
