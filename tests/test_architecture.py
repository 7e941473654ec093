"""The layer rule of docs/design.md: imports go only downward (core -> testbeds -> methods ->
experiment -> interfaces), every module sits in a layer, and the import graph has no cycle.

The layers are the import-linter contract in pyproject.toml; grimp (import-linter's graph)
counts imports inside functions too, so a lazy import cannot hide an upward one.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ensda", "baselines", "analysis")


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(*PACKAGES)


def layer_modules() -> list[list[str]]:
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ][0]
    return [[m.strip() for m in layer.replace("|", ":").split(":")] for layer in contract["layers"]]


def cycles(graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    modules = sorted(graph.modules)
    edges = {
        m: sorted(set(graph.find_modules_directly_imported_by(m)) & set(modules)) for m in modules
    }
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))
    for m in modules:
        if m not in index:
            visit(m)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    """The check itself: a two-module loop and a three-module loop are found, a chain is not."""
    g = grimp.ImportGraph()
    for m in ("a", "b", "c", "d", "e", "f"):
        g.add_module(m)
    for importer, imported in (
        ("a", "b"),
        ("b", "a"),
        ("c", "d"),
        ("d", "e"),
        ("e", "c"),
        ("e", "f"),
    ):
        g.add_import(importer=importer, imported=imported)
    assert sorted(cycles(g)) == [["a", "b"], ["c", "d", "e"]]


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_imports_go_only_downward():
    """The import-linter layers contract (pyproject.toml) is kept."""
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_every_module_sits_in_a_layer(graph):
    """A new module must be placed in a layer (or below a package that is), so the contract
    covers it."""
    layers = [m for layer in layer_modules() for m in layer]
    roots = set(PACKAGES)
    outside = sorted(
        m
        for m in graph.modules
        if m not in roots and not any(m == p or m.startswith(p + ".") for p in layers)
    )
    assert outside == []


def test_core_imports_no_method_or_testbed(graph):
    """The core (the last layer) reaches nothing above it, lazily or not: e.g. the method
    registry does not import the methods, observations do not import the sphere."""
    core = layer_modules()[-1]
    upper = [m for layer in layer_modules()[:-1] for m in layer]
    for module in core:
        chains = [c for u in upper for c in graph.find_shortest_chains(importer=module, imported=u)]
        assert chains == [], (module, chains[:3])
