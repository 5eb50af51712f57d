"""The package's import graph: no cycle, every import counted (function-local ones too)."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "recbole_ssm"


def package_modules(root: str = ROOT) -> dict[str, str]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for folder, _, files in os.walk(os.path.join(root, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def import_graph(modules: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file (``from pkg import mod``
    counts as importing ``pkg.mod``)."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            for target in targets:
                if target.startswith(PACKAGE) and (found := known(target)) and found != module:
                    graph[module].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph(package_modules())
    assert {"recbole_ssm.models.causal", "recbole_ssm.regime", "recbole_ssm.targets"} <= set(graph)
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import(tmp_path):
    """The check above can fail: a module importing, inside a function, one that imports it."""
    pkg = tmp_path / PACKAGE
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "models" / "causal.py").write_text("from recbole_ssm.regime import TARGETS\n")
    (pkg / "regime.py").write_text("TARGETS = 1\n\ndef check():\n    from recbole_ssm.registry import get\n")
    (pkg / "registry.py").write_text("from recbole_ssm import models\nfrom recbole_ssm.models import causal\n")
    (pkg / "leaf.py").write_text("import os\n")
    graph = import_graph(package_modules(str(tmp_path)))
    assert cycles(graph) == [["recbole_ssm.models.causal", "recbole_ssm.regime", "recbole_ssm.registry"]]


def test_leaf_modules_import_nothing_of_the_package():
    graph = import_graph(package_modules())
    for leaf in ("recbole_ssm.targets", "recbole_ssm.histories", "recbole_ssm.errors"):
        assert graph[leaf] == set(), (leaf, graph[leaf])


def test_the_data_loaders_know_nothing_of_evaluation_or_runs():
    """regime.py builds data sets and training loaders; the evaluation protocol (seen items), the
    checkpoint module and the run sit above it and wire it, never the other way round."""
    graph = import_graph(package_modules())
    above = {"recbole_ssm.seen", "recbole_ssm.checkpoint", "recbole_ssm.quick_start", "recbole_ssm.trainer",
             "recbole_ssm.cli", "recbole_ssm.serve", "recbole_ssm.bench", "recbole_ssm.tune"}
    assert graph["recbole_ssm.regime"] & above == set()
    assert "recbole_ssm.regime" in graph["recbole_ssm.checkpoint"]
    assert "recbole_ssm.seen" in graph["recbole_ssm.checkpoint"]


def test_docs_architecture_names_every_module():
    """docs/architecture.md is the map of the package: a module it does not name is a module a
    newcomer cannot find (package __init__ and __main__ files aside)."""
    import re

    with open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8") as f:
        named = set(re.findall(r"\b(\w+)\.py\b", f.read()))
    unnamed = [path for path in package_modules().values()
               if os.path.basename(path) not in ("__init__.py", "__main__.py")
               and os.path.basename(path)[:-3] not in named]
    assert unnamed == [], f"add these to docs/architecture.md: {sorted(unnamed)}"
