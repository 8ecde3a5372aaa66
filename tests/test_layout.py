"""The package's shape: no import cycles between modules, and a training run imports no report code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import precisionlab

PACKAGE = Path(precisionlab.__file__).parent


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the precisionlab modules it imports (at any depth of its code, lazy imports included;
    `if TYPE_CHECKING:` blocks left out, they never run). `from pkg import name` counts as importing
    pkg.name when that is a module, else pkg."""
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        tree = ast.parse(path.read_text(), str(path))
        type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                     for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_finder_sees_a_planted_cycle(tmp_path):
    pkg = tmp_path / "precisionlab"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("def f():\n    from precisionlab.sub import b\n")  # a lazy import counts
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import precisionlab.sub.a\nif TYPE_CHECKING:\n    from precisionlab.sub import d\n")
    (pkg / "sub" / "d.py").write_text("from precisionlab.sub import c\n")  # a type-only edge back: no cycle
    graph = import_graph(pkg)
    assert graph["precisionlab.sub.a"] == {"precisionlab.sub.b"}
    assert graph["precisionlab.sub.b"] == {"precisionlab.sub.c"}
    assert graph["precisionlab.sub.c"] == {"precisionlab.sub.a"}
    assert find_cycle(graph) == ["precisionlab.sub.a", "precisionlab.sub.b", "precisionlab.sub.c", "precisionlab.sub.a"]
    (pkg / "sub" / "c.py").write_text("")
    assert find_cycle(import_graph(pkg)) is None


def test_no_import_cycles_between_modules():
    graph = import_graph()
    assert len(graph) > 20 and "precisionlab.cli" in graph  # the walk found the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_a_training_run_imports_no_report_code():
    """`precisionlab train`, a sweep's jobs and the sweep's own progress and summary load the training
    stack only: no report, statistics, plots or matplotlib (nor scipy, which the statistics need)."""
    code = ("import sys, precisionlab.run.app, precisionlab.train.loop, precisionlab.sweep.progress\n"
            "print(' '.join(m for m in sys.modules if m.startswith(('precisionlab.analysis.report', "
            "'precisionlab.analysis.stats', 'precisionlab.analysis.tables', 'precisionlab.analysis.warning', "
            "'precisionlab.analysis.plots', 'precisionlab.analysis.render', 'matplotlib', 'scipy'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
