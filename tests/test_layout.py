"""Layout rules of the package that a reader relies on: no import cycle, function-level imports included.

Run as a script for the report alone: `python tests/test_layout.py [package folder]`.

The graph has an edge A -> B for every `import B` / `from B import x` anywhere in module A (top level, inside a
function or class, under `if`/`try`), where `from P import x` counts as an edge to the submodule P.x when P.x is a
module of the package and to P otherwise. A parent package is not an implicit dependency of its submodules (it is
executed first, but a submodule does not use what it defines), so only written imports count.
"""
import ast
import os
import sys
from typing import Dict, List, Set, Tuple

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fairseq_xmodal")
# Imports known to close a cycle, each waiting for its fix (importer, imported): why. A cycle through any other
# import fails the test, and so does an entry that no longer lies on a cycle (delete it then).
# (importer, imported) -> why that import may still close a cycle for now; empty: the package has none
PENDING: Dict[Tuple[str, str], str] = {}

Edge = Tuple[str, str, int]  # (importer, imported, line in the importer)


def package_modules(root: str) -> Dict[str, str]:
    """Dotted module name -> file, for every .py below `root` (a package folder)."""
    base = os.path.dirname(os.path.abspath(root))
    mods = {}
    for folder, _, files in os.walk(root):
        for f in sorted(files):
            if f.endswith(".py"):
                name = os.path.relpath(os.path.join(folder, f), base)[:-3].replace(os.sep, ".")
                mods[name[:-len(".__init__")] if name.endswith(".__init__") else name] = os.path.join(folder, f)
    return mods


def _resolve(module: str, is_package: bool, level: int, target: str) -> str:
    """The absolute name of a relative import `from <level dots><target> import ...` written in `module`."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        parts = parts[:len(parts) - (level - 1)]
    return ".".join(parts + ([target] if target else []))


def import_edges(mods: Dict[str, str]) -> List[Edge]:
    """Every import between modules of the package, wherever it is written."""
    edges: List[Edge] = []
    for name, path in mods.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        is_package = os.path.basename(path) == "__init__.py"
        for node in ast.walk(tree):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                for alias in node.names:  # `import a.b.c` executes a, a.b and a.b.c: the deepest is what is used
                    parts = alias.name.split(".")
                    targets.append(next((".".join(parts[:i]) for i in range(len(parts), 0, -1)
                                         if ".".join(parts[:i]) in mods), alias.name))
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module or "") if node.level else node.module
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in mods else base)
            edges += [(name, t, node.lineno) for t in targets if t in mods and t != name]
    return edges


def _shortest_path(graph: Dict[str, Set[str]], src: str, dst: str, within: Set[str]) -> List[str]:
    """Shortest path src -> ... -> dst inside `within` (BFS), [] if none."""
    prev = {src: None}
    frontier = [src]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & within):
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        if dst in prev:
            path = [dst]
            while prev[path[-1]] is not None:
                path.append(prev[path[-1]])
            return list(reversed(path))
        frontier = nxt
    return []


def strongly_connected(graph: Dict[str, Set[str]]) -> List[Set[str]]:
    """Tarjan's components (recursion depth <= the number of modules, a few dozen)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[Set[str]] = []

    def visit(v: str):
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
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def find_cycles(mods: Dict[str, str], edges: List[Edge]) -> List[List[str]]:
    """For every import edge a -> b that lies on a cycle, the shortest cycle through it (a, b, ..., a), each cycle
    once: every import that has to go to break the cycles appears in some listed cycle."""
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for a, b, _ in edges:
        graph[a].add(b)
    cycles, seen = [], set()
    for comp in strongly_connected(graph):
        for a in sorted(comp):
            for b in sorted(graph[a] & comp):
                cycle = [a] + _shortest_path(graph, b, a, comp)
                key = frozenset(zip(cycle, cycle[1:]))
                if key not in seen:
                    seen.add(key)
                    cycles.append(cycle)
    return sorted(cycles, key=lambda c: (len(c), c))


def describe_cycle(cycle: List[str], edges: List[Edge], mods: Dict[str, str], root: str) -> str:
    """`a [a.py:12] -> b [b.py:40] -> a`: each arrow with the file and line of the import that makes it."""
    where = {}
    for a, b, line in edges:
        where.setdefault((a, b), f"{os.path.relpath(mods[a], os.path.dirname(os.path.abspath(root)))}:{line}")
    return " -> ".join(f"{a} [{where[(a, b)]}]" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def cycle_report(root: str = PACKAGE, pending: Dict[Tuple[str, str], str] = None) -> List[str]:
    """One line per cycle, with the file and line of every import on it; imports in `pending` are left out."""
    mods = package_modules(root)
    edges = [e for e in import_edges(mods) if (e[0], e[1]) not in (pending or {})]
    return [describe_cycle(c, edges, mods, root) for c in find_cycles(mods, edges)]


def test_import_graph_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a cycle closed only by an import inside a function, through `from . import x`, is found,
    and an acyclic package reports nothing."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("import os\n\ndef f():\n    from .. import a\n    return a\n")
    (pkg / "c.py").write_text("from .sub.b import f\n")
    report = cycle_report(str(pkg))
    assert len(report) == 1 and report[0].startswith("pkg.a [pkg/a.py:1] -> pkg.sub.b [pkg/sub/b.py:4] -> pkg.a"), \
        report
    (pkg / "sub" / "b.py").write_text("import os\n")
    assert cycle_report(str(pkg)) == []


def test_package_has_no_import_cycle():
    cycles = cycle_report(pending=PENDING)
    assert not cycles, f"{len(cycles)} import cycle(s) in fairseq_xmodal (function-level imports included):\n" + \
        "\n".join(cycles)
    mods = package_modules(PACKAGE)
    on_cycles = {step for c in find_cycles(mods, import_edges(mods)) for step in zip(c, c[1:])}
    stale = [f"{a} -> {b}" for a, b in PENDING if (a, b) not in on_cycles]
    assert not stale, f"no longer on an import cycle, delete from PENDING in {__file__}: {', '.join(stale)}"


if __name__ == "__main__":  # every cycle, PENDING ones included
    found = cycle_report(sys.argv[1] if len(sys.argv) > 1 else PACKAGE)
    print("\n".join(found) if found else "no import cycle")
    sys.exit(1 if found else 0)
