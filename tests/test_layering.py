"""The package layout is the architecture (DESIGN.md), and imports follow it.

``graphinterp.LAYERS`` lists the subpackages in the order data flows through them; the folders say
which module is in which. From those two alone (there is no second table) this file checks that:

* every module lives in a listed subpackage (no loose modules beside them);
* a module imports only from its own subpackage or from an earlier one, never from a later one, and
  not through the lazy top-level API (``from graphinterp import x`` inside the package would hide
  where ``x`` comes from);
* the imports between modules, function-local ones included, form no cycle;
* ``cli/`` imports nothing of graphinterp but its top-level public names (and its own helpers), and
  ``benchmarks/`` no private module.
"""
import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest

import graphinterp

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "graphinterp"
LAYERS = graphinterp.LAYERS


def _modules() -> Dict[str, Path]:
    """``{"clustering.bsgc": path, ...}``: every module file of the package (the CLI lives in cli/)."""
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "cli" or rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        out[".".join(rel.with_suffix("").parts)] = path
    return out


MODULES = _modules()

# The one import cycle left, closed by an import inside a function: LayeredGraph.from_module (the
# convenience builder on the class) calls the tracer, whose DAG and chain results are LayeredGraphs.
# The edge must stay lazy and real (test_known_lazy_edge), and no other cycle may appear.
KNOWN_LAZY_EDGES = {("graph.layered", "graph.model_trace")}


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if node.level == 0:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_names(source: str, package: str) -> Iterator[str]:
    """Every absolute name that ``source`` (a module of ``package``) imports, anywhere in the file:
    ``from a.b import c`` yields ``a.b`` and ``a.b.c`` (``c`` may be a submodule)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            module = _absolute(node, package)
            yield module
            for alias in node.names:
                yield f"{module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name


def internal(name: str) -> Optional[str]:
    """``graphinterp.clustering.bsgc[.BSGC]`` -> ``clustering.bsgc``; None for anything else."""
    parts = name.split(".")
    if parts[0] != "graphinterp":
        return None
    for end in range(len(parts), 1, -1):
        key = ".".join(parts[1:end])
        if key in MODULES:
            return key
    return None


def _package_of(module: str) -> str:
    return "graphinterp." + module.rsplit(".", 1)[0] if "." in module else "graphinterp"


def import_graph() -> Dict[str, Set[str]]:
    graph = {}
    for module, path in MODULES.items():
        names = imported_names(path.read_text(), _package_of(module))
        graph[module] = {dep for n in names if (dep := internal(n)) is not None and dep != module}
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search with colours)."""
    colour: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        colour[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if colour.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in colour and (found := visit(dep)):
                return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if node not in colour and (found := visit(node)):
            return found
    return None


def layer_violations(graph: Dict[str, Set[str]]) -> List[str]:
    """``"a.x imports b.y"`` for each import of a later subpackage."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    return [f"{m} ({m.split('.')[0]}) imports {d} ({d.split('.')[0]}, a later subpackage)"
            for m, deps in sorted(graph.items()) for d in sorted(deps)
            if rank[d.split(".")[0]] > rank[m.split(".")[0]]]


# --- the package --------------------------------------------------------------------------------------

def test_every_module_lives_in_a_listed_subpackage():
    subpackages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file() and p.name != "cli"}
    assert subpackages == set(LAYERS), "graphinterp.LAYERS and the subpackage folders disagree"
    loose = [m for m in MODULES if "." not in m]
    assert not loose, f"modules outside the subpackages: {loose}"
    assert all(m.split(".")[0] in LAYERS for m in MODULES)


def test_imports_point_one_way():
    assert layer_violations(import_graph()) == []


def test_no_import_cycle():
    graph = import_graph()
    for src, dst in KNOWN_LAZY_EDGES:
        graph[src].discard(dst)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among graphinterp modules: " + " -> ".join(cycle or [])


def _function_level(source: str, package: str) -> Set[str]:
    out: Set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    out |= {internal(n) for n in imported_names(ast.unparse(inner), package)}
    return out


def test_known_lazy_edge_is_real_and_inside_a_function():
    graph = import_graph()
    for src, dst in KNOWN_LAZY_EDGES:
        assert dst in graph[src], f"{src} no longer imports {dst}: drop it from KNOWN_LAZY_EDGES"
        assert dst in _function_level(MODULES[src].read_text(), _package_of(src)), \
            f"{src} imports {dst} at module level: the cycle would fail at import time"


@pytest.mark.parametrize("module", sorted(MODULES), ids=str)
def test_modules_do_not_use_the_lazy_top_level_api(module):
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and _absolute(node, _package_of(module)) == "graphinterp":
            names = [a.name for a in node.names if a.name not in LAYERS]
            assert not names, f"{module} imports {names} from the top-level API: import from the defining module"


# --- cli/ and benchmarks/ ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((ROOT / "cli").glob("*.py")), ids=lambda p: p.name)
def test_cli_uses_only_the_public_api(path):
    public = set(graphinterp.__all__)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            bad = [a.name for a in node.names if a.name.startswith("graphinterp.")
                   and not a.name.startswith("graphinterp.cli")]
            assert not bad, f"cli/{path.name} imports {bad}: use `from graphinterp import ...`"
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, "graphinterp.cli")
            if module == "graphinterp":
                missing = [a.name for a in node.names if a.name not in public]
                assert not missing, f"cli/{path.name} imports {missing}, which graphinterp does not export"
            elif module.startswith("graphinterp.") and not module.startswith("graphinterp.cli"):
                pytest.fail(f"cli/{path.name} imports from {module}: use `from graphinterp import ...`")


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_import_no_private_module(path):
    for name in imported_names(path.read_text(), "benchmarks"):
        module = internal(name)
        if module is not None:
            private = [p for p in module.split(".") if p.startswith("_")]
            assert not private, f"benchmarks/{path.name} imports the private module {module}"


# --- the checker itself --------------------------------------------------------------------------------

def test_checker_resolves_relative_and_nested_imports():
    src = ("from . import bsgc\nfrom .metrics import within_share\nfrom ..graph.layer import Layer\n"
           "def f():\n    import graphinterp.reports.viz\n")
    found = {internal(n) for n in imported_names(src, "graphinterp.clustering")} - {None}
    assert found == {"clustering.bsgc", "clustering.metrics", "graph.layer", "reports.viz"}


def test_checker_flags_a_later_subpackage_and_a_cycle():
    assert layer_violations({"graph.layer": {"clustering.bsgc"}}) == [
        "graph.layer (graph) imports clustering.bsgc (clustering, a later subpackage)"]
    assert layer_violations({"clustering.bsgc": {"graph.layer"}}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
