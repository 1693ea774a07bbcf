"""The import structure of ``simprune``, read from the source with :mod:`ast` (nothing is imported).

- No cycle anywhere: not among module-level imports (those run at import time, and a cycle among
  them breaks an import depending on which module is imported first), nor closed by an import
  inside a function or under ``if TYPE_CHECKING:`` (those run later or never, but a circle of
  modules that need each other is still one concept split in two).
- Nothing in ``simprune/`` imports ``simprune.cli`` (ARCHITECTURE.md: nothing imports it).
- The layering of docs/architecture.md ("Which way each arrow may point"): each part imports only
  what :data:`ALLOWED` lets it, with no tolerated departure, and never what :data:`NEVER` names
  (``frameworks/`` never imports ``train/``).

``python tests/test_imports.py`` prints the whole picture.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "simprune"


@dataclass(frozen=True)
class Import:
    """One ``import`` statement's edge from a simprune module to another, or to a third party."""

    importer: str  # e.g. "simprune.study.runner"
    target: str  # the most specific module that exists, e.g. "simprune.study.report"; or "torch"
    path: str  # the importer's file, relative to the repo
    line: int
    when: str  # "module" (runs at import), "function" (runs when called), "type" (TYPE_CHECKING)

    def __str__(self) -> str:
        return f"{self.importer} -> {self.target} ({self.path}:{self.line}, {self.when} level)"


def module_name(path: Path, base: Path = ROOT) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(nodes, when: str = "module"):
    """Every import statement among ``nodes`` (and inside them) with when it runs."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, when
        elif isinstance(node, ast.If) and _type_checking(node.test):
            yield from _statements(node.body, "type")
            yield from _statements(node.orelse, when)
        else:
            inside = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _statements(ast.iter_child_nodes(node),
                                   "function" if inside and when == "module" else when)


def collect(root: Path = PACKAGE) -> tuple[dict[str, Path], list[Import]]:
    """The modules under ``root`` (a package folder) and every import in them."""
    modules = {module_name(p, root.parent): p for p in sorted(root.rglob("*.py"))}
    imports = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for stmt, when in _statements(ast.parse(path.read_text(), str(path)).body):
            if isinstance(stmt, ast.Import):
                targets = [alias.name for alias in stmt.names]
            else:
                base = stmt.module or ""
                if stmt.level:  # relative: from the importer's package, one level up per extra dot
                    up = package.split(".")[: len(package.split(".")) - stmt.level + 1]
                    base = ".".join(up + ([stmt.module] if stmt.module else []))
                # `from pkg import sub` imports the submodule when there is one, else a name of pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in stmt.names]
            for target in targets:
                if target.split(".")[0] == "simprune":
                    while target not in modules and "." in target:
                        target = target.rpartition(".")[0]
                else:
                    target = target.split(".")[0]
                imports.append(Import(name, target, str(path.relative_to(root.parent)), stmt.lineno, when))
    return modules, list(dict.fromkeys(imports))  # `from m import a, b` is one edge


def import_graph(modules: dict[str, Path], imports: list[Import],
                 when: tuple[str, ...] = ("module",)) -> dict[str, set[str]]:
    """Edges between simprune modules for the imports that run at the given times. Importing
    ``a.b.c`` also runs the ``__init__`` of ``a.b``: an edge to each such package too, except the
    importer's own packages (already being imported when the importer runs)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.when not in when or imp.target not in modules:
            continue
        own = {imp.importer.rsplit(".", i)[0] for i in range(imp.importer.count(".") + 1)}
        parts = imp.target.split(".")
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            if target in modules and target not in own and target != imp.importer:
                graph[imp.importer].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one."""
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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(_cycle_through(min(component), component, graph))

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(old)
    return sorted(found)


def _cycle_through(start: str, component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest path ``start -> ... -> start`` inside ``component`` (breadth first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    chain = [v]
                    while chain[-1] != start:
                        chain.append(previous[chain[-1]])
                    return [*reversed(chain), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover


def _describe(cycle: list[str], imports: list[Import], when: tuple[str, ...]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        lines = [f"{i.path}:{i.line}" for i in imports if i.importer == a and i.when in when
                 and (i.target == b or i.target.startswith(b + "."))]
        steps.append(f"  {a} -> {b} ({', '.join(lines)})")
    return "\n".join(steps)


# ----------------------------------------------------------------------------- layering

#: The layering (docs/architecture.md, "Which way each arrow may point"): the parts (a subpackage or
#: a top-level module of simprune) each part may import. ``tokens`` and the leaf helpers
#: (:data:`HELPERS`) may be imported by every part. Where it differs from ARCHITECTURE.md's table,
#: docs/architecture.md says why (an entry that names a module allows only that module).
ALLOWED: dict[str, set[str]] = {
    "tokens": set(),
    "models": set(),
    # ReductionPoint (a reducer's input) lives with the blocks whose extras it carries; MCTF's
    # proportional attention uses the blocks' attention bias
    "reducers": {"simprune.models.vit", "simprune.models.layers"},
    "drive": {"models", "reducers"},
    "losses": set(),
    "teachers": {"models"},
    # the config asks the reducer registry whether a method is a pair reducer (its window applies)
    "config": {"reducers"},
    "data": set(),
    "frameworks": {"config", "models", "reducers", "drive", "losses", "teachers", "simprune.data.augment",
                   "simprune.data.filters", "simprune.data.sampler"},
    "run": {"config", "data", "frameworks", "models", "reducers"},
    "eval": {"models"},
    "train": {"run", "config", "frameworks", "data", "eval", "models"},
    "bench": {"run", "config", "frameworks", "drive", "models", "reducers", "data"},
    "study": {"run", "config", "train", "eval", "bench"},
    "viz": {"run", "config", "frameworks", "drive", "reducers", "data", "models"},
}
#: Leaf modules every part may use: they import no other part of simprune (but one another),
#: which :func:`test_helpers_are_leaves` checks. ARCHITECTURE.md lists only ``dist.py``; the
#: registry, atomic writes, signal handling, the seeded subset draw, the checkpoint file format and
#: the reading of a run's metrics.jsonl are the same kind of plumbing.
HELPERS = {"registry", "atomic", "interrupt", "dist", "subset", "checkpoint", "records", "finite"}
#: What may never be imported, whatever the table says (ARCHITECTURE.md's "Never" line).
NEVER: dict[str, set[str]] = {
    "reducers": {"frameworks", "train", "run"},
    "models": {"frameworks", "train", "data", "run", "config"},
    "frameworks": {"train", "run", "bench", "study", "viz"},
    "config": {"frameworks", "train", "run", "bench", "study", "viz", "models", "data"},
    "run": {"train", "bench", "study", "viz"},
}


def part_of(module: str) -> str:
    """``simprune.study.runner`` -> ``study``; ``simprune.tokens`` -> ``tokens``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _allowed(entries: set[str], target: str) -> bool:
    """Whether ``target`` (a simprune module) is covered by ``entries`` (part names, or module
    names such as ``simprune.data.augment`` that cover that module and its submodules)."""
    return any(target == e or target.startswith(e + ".") if e.startswith("simprune.")
               else part_of(target) == e for e in entries)


def layering_violations(imports: list[Import]) -> list[Import]:
    """Imports (at any level, type-only included: a part may not even name what it may not know)
    from a part of :data:`ALLOWED` to a part the table does not let it import."""
    bad = []
    for imp in imports:
        src, dst = part_of(imp.importer), imp.target
        if src not in ALLOWED or not dst.startswith("simprune.") or part_of(dst) == src:
            continue
        entries = ALLOWED[src] | HELPERS | {"tokens"}
        if not _allowed(entries, dst):
            bad.append(imp)
    return bad


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Import]]:
    return collect()


def test_reads_the_package(graph):
    modules, imports = graph
    assert {"simprune", "simprune.cli", "simprune.tokens", "simprune.study",
            "simprune.study.runner"} <= set(modules)
    edge = [i for i in imports if i.importer == "simprune.study" and i.target == "simprune.study.runner"]
    assert edge and edge[0].when == "module"


def test_finds_planted_cycles(tmp_path):
    """The checker on a small package: a cycle through a package's ``__init__``, one closed only
    inside a function, a type-only import, and relative imports."""
    files = {
        "simprune/__init__.py": "",
        "simprune/a/__init__.py": "from simprune.b.x import X\n",
        "simprune/a/y.py": "from typing import TYPE_CHECKING\n"
                           "if TYPE_CHECKING:\n    from simprune.c import C\n",
        "simprune/b/__init__.py": "from ..a import y\n",
        "simprune/b/x.py": "X = 1\n",
        "simprune/c.py": "def f():\n    from . import d\n",
        "simprune/d.py": "from .c import f\nimport simprune.cli\n",
        "simprune/cli.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules, imports = collect(tmp_path / "simprune")
    kinds = {(i.importer, i.target): i.when for i in imports}
    assert kinds == {("simprune.a", "simprune.b.x"): "module", ("simprune.a.y", "typing"): "module",
                     ("simprune.a.y", "simprune.c"): "type", ("simprune.b", "simprune.a.y"): "module",
                     ("simprune.c", "simprune.d"): "function", ("simprune.d", "simprune.c"): "module",
                     ("simprune.d", "simprune.cli"): "module"}
    assert cycles(import_graph(modules, imports)) == [["simprune.a", "simprune.b", "simprune.a"]]
    assert cycles(import_graph(modules, imports, ("module", "function"))) == [
        ["simprune.a", "simprune.b", "simprune.a"], ["simprune.c", "simprune.d", "simprune.c"]]


def test_no_cycle_among_module_level_imports(graph):
    modules, imports = graph
    found = cycles(import_graph(modules, imports, ("module",)))
    assert not found, "import cycles at module level:\n" + "\n".join(
        " -> ".join(c) + "\n" + _describe(c, imports, ("module",)) for c in found)


def test_no_cycle_at_all(graph):
    """Imports inside functions and type-only imports count too: no circle anywhere."""
    modules, imports = graph
    when = ("module", "function", "type")
    found = cycles(import_graph(modules, imports, when))
    assert not found, "import cycles (any level):\n" + "\n".join(
        " -> ".join(c) + "\n" + _describe(c, imports, when) for c in found)


def test_nothing_imports_the_cli(graph):
    _, imports = graph
    bad = [str(i) for i in imports if i.target == "simprune.cli" and i.importer != "simprune.cli"]
    assert not bad, "simprune.cli is the command line; nothing in simprune/ may import it:\n" + "\n".join(bad)


def test_tokens_imports_torch_only(graph):
    _, imports = graph
    outside = {i.target for i in imports if i.importer == "simprune.tokens"} - {"torch", "__future__"}
    assert not outside - set(sys.stdlib_module_names), outside


def test_dist_imports_torch_only(graph):
    modules, imports = graph
    assert "simprune.dist" in modules
    outside = {i.target for i in imports if i.importer == "simprune.dist"} - {"torch", "__future__"}
    assert not outside - set(sys.stdlib_module_names), outside


def test_helpers_are_leaves(graph):
    _, imports = graph
    bad = [str(i) for i in imports if part_of(i.importer) in HELPERS and i.target.startswith("simprune")
           and part_of(i.target) not in HELPERS]
    assert not bad, "\n".join(bad)


def test_layering(graph):
    """Every import (any level) is one :data:`ALLOWED` permits: no tolerated departure."""
    _, imports = graph
    bad = layering_violations(imports)
    assert not bad, "imports the layering does not allow:\n" + "\n".join(map(str, bad))


def test_never_line(graph):
    """ARCHITECTURE.md's "Never" line, checked directly (:data:`NEVER`), and losses import nothing
    but torch and the standard library."""
    _, imports = graph
    bad = [str(i) for i in imports if i.target.startswith("simprune.")
           and part_of(i.target) in NEVER.get(part_of(i.importer), ())]
    bad += [str(i) for i in imports if part_of(i.importer) == "losses" and part_of(i.target) != "losses"
            and i.target not in ("torch", "__future__") and i.target not in sys.stdlib_module_names]
    assert not bad, "\n".join(bad)


def test_frameworks_never_import_train(graph):
    """The configuration and the run's parts sit below the frameworks: a framework that imported
    ``train/`` would close the circle this layering removed."""
    _, imports = graph
    bad = [str(i) for i in imports if part_of(i.importer) == "frameworks"
           and i.target.startswith("simprune.") and part_of(i.target) == "train"]
    assert not bad, "\n".join(bad)
    # and the check itself catches a planted edge
    planted = Import("simprune.frameworks.x", "simprune.train.optim", "simprune/frameworks/x.py", 1,
                     "function")
    assert layering_violations([planted]) == [planted]


def report() -> str:
    """The whole picture: module-level cycles, cycles closed by later imports, and every departure
    from the layering."""
    modules, imports = collect()
    lines = [f"{len(modules)} modules, {len(imports)} imports"]
    for title, when in (("module-level cycles", ("module",)),
                        ("cycles with function-level or type-only imports", ("module", "function", "type"))):
        found = cycles(import_graph(modules, imports, when))
        lines.append(f"{title}: {len(found) or 'none'}")
        lines += [" -> ".join(c) + "\n" + _describe(c, imports, when) for c in found]
    departures = layering_violations(imports)
    lines.append(f"departures from the layering: {len(departures) or 'none'}")
    lines += [f"  {i}" for i in departures]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
