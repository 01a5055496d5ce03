"""The package's import graph has no cycles: each module depends only downward.

Imports inside functions count too (a lazy import still makes a dependency), and
`from glassgpt.x import y` is an edge to glassgpt.x.y when y is a submodule, else to glassgpt.x.
"""

import ast
from pathlib import Path

import pytest

import glassgpt

ROOT = Path(glassgpt.__file__).parent


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("glassgpt",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level-1 packages
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import glassgpt.x.y` where y is a name: its module
                    t = t.rpartition(".")[0]
                if t and t.startswith("glassgpt") and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each module that lies on a cycle (deduplicated), sorted."""
    found = set()
    for start in sorted(graph):
        # breadth-first from start's imports back to start: the shortest cycle through start
        prev, frontier = {start: None}, [start]
        while frontier and start not in [n for f in frontier for n in graph[f]]:
            nxt = []
            for f in frontier:
                for n in sorted(graph[f]):
                    if n not in prev:
                        prev[n] = f
                        nxt.append(n)
            frontier = nxt
        last = next((f for f in frontier if start in graph[f]), None)
        if last is None:
            continue
        path = [last]
        while path[-1] != start:
            path.append(prev[path[-1]])
        cyc = path[::-1]
        k = cyc.index(min(cyc))  # one rotation per cycle
        found.add(tuple(cyc[k:] + cyc[:k]))
    return [list(c) for c in sorted(found)]


def show(cs) -> str:
    return "\n".join(" → ".join(c + [c[0]]) for c in cs)


def test_graph_sees_lazy_relative_and_submodule_imports():
    g = import_graph()
    assert "glassgpt.cli_train" in g["glassgpt.cli"]  # `from glassgpt import cli_train`: the submodule
    assert "glassgpt.train.trainer" in g["glassgpt.cli_train"]  # imported inside a function
    assert "glassgpt.config" in g["glassgpt.scaling.ladder"]  # `from glassgpt.config import Config`: the module
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_cli_config_and_scaling_are_on_no_cycle():
    """The command line, config and scaling modules: nothing imports the CLI back, and config and
    errors import no other module of the package."""
    g = import_graph()
    ours = [c for c in cycles(g) if any(m.startswith(("glassgpt.cli", "glassgpt.config", "glassgpt.errors",
                                                      "glassgpt.scaling")) for m in c)]
    assert not ours, "import cycles:\n" + show(ours)
    assert not [m for m, deps in g.items() if "glassgpt.cli" in deps]
    assert g["glassgpt.errors"] == set() and g["glassgpt.config"] <= {"glassgpt.errors", "glassgpt.presets"}


def test_no_import_cycles():
    cs = cycles(import_graph())
    assert not cs, f"{len(cs)} import cycles:\n" + show(cs)
