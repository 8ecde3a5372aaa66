"""The package's shape: imports point down the layer order, no import cycles between modules (type-only
imports included), and a training run imports no report code."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import precisionlab

PACKAGE = Path(precisionlab.__file__).parent
# configs/ installs as precisionlab.configs (pyproject's package-dir): a walk of precisionlab/ alone never sees it
with open(PACKAGE.parent / "pyproject.toml", "rb") as _f:
    PACKAGE_DIRS = tomllib.load(_f)["tool"]["setuptools"]["package-dir"]
SOURCES = {"precisionlab": PACKAGE, **{name: PACKAGE.parent / folder for name, folder in PACKAGE_DIRS.items()}}

# The layer order, bottom first: a module may import its own layer's modules or lower ones, never higher.
# Each layer lists the modules it holds (a name covers its submodules).
LAYERS = [
    ("precisionlab.kernels",),   # kernels: the cast and GEMM kernels (torch and Triton twins)
    ("precisionlab.runtime",),   # runtime: device, paths, provenance, processes; imports no other precisionlab module
    ("precisionlab.numerics",),  # numerics: formats, the element cast, block scaling, Hadamard transforms
    ("precisionlab.quant",),     # quant: what gets cast in a model, and the module swap
    ("precisionlab.train",),     # train: model, data, the run loop, checkpoints, outcomes
    ("precisionlab.store",),     # store: the results database
    ("precisionlab.config", "precisionlab.configs"),  # config: the typed schema, and the presets' package registering it
    ("precisionlab.analysis",),  # analysis: statistics, report tables, plots, rendering (runs' labels read the presets)
    ("precisionlab.run",),       # run: one training run (the `precisionlab train` task, a sweep's job)
    ("precisionlab.sweep",),     # sweep: planning a grid, launching it, progress
    ("precisionlab.cli", "precisionlab.console"),  # cli: the command line and its console entry point
]
# The package itself (not its submodules): users' lazy exports and the version; in the cli layer, so no lower
# module reaches numerics or quant through it
ROOT = "precisionlab"


def _module_names(sources: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under each source folder (named by its package)."""
    modules = {}
    for package, folder in sources.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join([package, *parts])] = path
    return modules


def import_graph(sources: dict[str, Path] | Path = None, *, type_checking: bool = True) -> dict[str, set[str]]:
    """module -> the precisionlab modules it imports (at any depth of its code, lazy imports included;
    `if TYPE_CHECKING:` blocks too, unless `type_checking=False`: they never run, but a type-only
    import is still a dependency). `from pkg import name` counts as importing pkg.name when that is a
    module, else pkg. `sources`: package name -> folder (default SOURCES: precisionlab/ and the
    package-dir folders; a bare folder is the precisionlab package alone)."""
    if sources is None:
        sources = SOURCES
    elif isinstance(sources, Path):
        sources = {"precisionlab": sources}
    modules = _module_names(sources)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        tree = ast.parse(path.read_text(), str(path))
        type_only = set() if type_checking else {
            id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
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


def layer_of(module: str, layers=LAYERS) -> int | None:
    """The index in `layers` of the layer holding `module` (the root package: the top one), or None."""
    if module == ROOT:
        return len(layers) - 1
    for index, names in enumerate(layers):
        if any(module == name or module.startswith(name + ".") for name in names):
            return index
    return None


def layer_problems(graph: dict[str, set[str]], layers=LAYERS) -> tuple[list[str], list[tuple[str, str]]]:
    """(modules in no layer, edges importing a higher layer: (importer, imported)), both sorted."""
    unplaced = sorted(m for m in graph if layer_of(m, layers) is None)
    upward = sorted((a, b) for a, targets in graph.items() for b in targets
                    if a not in unplaced and b not in unplaced and layer_of(b, layers) > layer_of(a, layers))
    return unplaced, upward


def _layer_name(module: str, layers=LAYERS) -> str:
    return layers[layer_of(module, layers)][0].rpartition(".")[2]


def _planted_package(tmp_path: Path) -> Path:
    pkg = tmp_path / "precisionlab"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    return pkg


def test_the_graph_finder_sees_a_planted_cycle(tmp_path):
    pkg = _planted_package(tmp_path)
    (pkg / "sub" / "a.py").write_text("def f():\n    from precisionlab.sub import b\n")  # a lazy import counts
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import precisionlab.sub.a\n")
    graph = import_graph(pkg)
    assert graph["precisionlab.sub.a"] == {"precisionlab.sub.b"}
    assert graph["precisionlab.sub.b"] == {"precisionlab.sub.c"}
    assert graph["precisionlab.sub.c"] == {"precisionlab.sub.a"}
    assert find_cycle(graph) == ["precisionlab.sub.a", "precisionlab.sub.b", "precisionlab.sub.c", "precisionlab.sub.a"]
    (pkg / "sub" / "c.py").write_text("")
    assert find_cycle(import_graph(pkg)) is None


def test_a_type_only_import_closes_a_cycle_too(tmp_path):
    """A cycle closed only by an `if TYPE_CHECKING:` import is still a cycle: the two modules depend on
    each other, whatever runs."""
    pkg = _planted_package(tmp_path)
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from precisionlab.sub import d\n")
    (pkg / "sub" / "d.py").write_text("from precisionlab.sub import c\n")
    assert import_graph(pkg)["precisionlab.sub.c"] == {"precisionlab.sub.d"}
    assert find_cycle(import_graph(pkg)) == ["precisionlab.sub.c", "precisionlab.sub.d", "precisionlab.sub.c"]
    assert find_cycle(import_graph(pkg, type_checking=False)) is None  # what runs has no cycle


def test_the_walk_maps_a_package_dir_folder_to_its_package(tmp_path):
    """A package-dir folder (configs/ is imported as precisionlab.configs) is walked under its package's name: its
    modules are named so, and relative imports in it resolve."""
    pkg = _planted_package(tmp_path)
    kernels = tmp_path / "kernels"
    kernels.mkdir()
    (kernels / "__init__.py").write_text("")
    (kernels / "spec.py").write_text("")
    (kernels / "cast.py").write_text("from .spec import X\n")
    (pkg / "sub" / "a.py").write_text("from precisionlab.kernels.cast import f\n")
    graph = import_graph({"precisionlab": pkg, "precisionlab.kernels": kernels})
    assert graph["precisionlab.kernels.cast"] == {"precisionlab.kernels.spec"}
    assert graph["precisionlab.sub.a"] == {"precisionlab.kernels.cast"}


def test_the_layer_check_sees_a_planted_upward_edge_and_an_unplaced_module(tmp_path):
    pkg = _planted_package(tmp_path)
    for sub in ("low", "high"):
        (pkg / sub).mkdir()
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from precisionlab.high.b import g\n")  # upward, lazily
    (pkg / "high" / "b.py").write_text("from precisionlab.low import a\n")  # downward: fine
    (pkg / "high" / "c.py").write_text("from precisionlab.high import b\n")  # same layer: fine
    layers = [("precisionlab.low",), ("precisionlab.high",)]
    graph = import_graph(pkg, type_checking=True)
    assert layer_problems(graph, layers) == (["precisionlab.sub"], [("precisionlab.low.a", "precisionlab.high.b")])
    (pkg / "low" / "a.py").write_text("")
    assert layer_problems(import_graph(pkg), layers) == (["precisionlab.sub"], [])


def test_no_import_cycles_between_modules():
    graph = import_graph()
    assert len(graph) > 20 and "precisionlab.cli" in graph  # the walk found the package
    assert "precisionlab.kernels.cast_torch" in graph["precisionlab.numerics.cast"]  # ... precisionlab/kernels/ with it
    assert graph["precisionlab.configs"] == {"precisionlab.config"}  # ... and configs/
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle (type-only imports included): " + " -> ".join(cycle)


def test_imports_point_down_the_layer_order():
    """Every precisionlab import points to the importer's own layer or a lower one (LAYERS), type-only
    imports included; every module sits in a layer (a new subpackage must be placed in LAYERS)."""
    graph = import_graph()
    unplaced, upward = layer_problems(graph)
    assert not unplaced, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {', '.join(unplaced)}"
    assert not upward, "imports pointing up the layer order:\n" + "\n".join(
        f"  {a} ({_layer_name(a)}) -> {b} ({_layer_name(b)})" for a, b in upward)
    assert graph["precisionlab.runtime"] == set(), "runtime imports no other precisionlab module"


def test_a_training_run_imports_no_report_code():
    """`precisionlab train`, a sweep's jobs and the sweep's own progress and summary load the training
    stack only: no report, statistics, plots or matplotlib (nor scipy, which the statistics need)."""
    code = ("import sys, precisionlab.run.app, precisionlab.train.loop, precisionlab.sweep.progress\n"
            "print(' '.join(m for m in sys.modules if m.startswith(('precisionlab.analysis.report', "
            "'precisionlab.analysis.stats', 'precisionlab.analysis.tables', 'precisionlab.analysis.warning', "
            "'precisionlab.analysis.plots', 'precisionlab.analysis.render', 'matplotlib', 'scipy'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []


def test_every_module_has_a_test_file_of_its_name():
    """Tests mirror the package: precisionlab/STAGE/M.py is tested in tests/STAGE/test_M.py (a top-level
    module in tests/test_M.py, kernels/M.py in tests/kernels/test_M.py), or test_M_SUFFIX.py where another
    folder already holds a test_M.py (pytest's default import mode needs distinct basenames)."""
    tests = Path(__file__).parent
    missing = []
    for name, path in sorted(_module_names(SOURCES).items()):
        parts = name.split(".")[1:]  # without "precisionlab"
        if path.name == "__init__.py" or parts[0] == "configs":
            continue
        folder = tests.joinpath(*parts[:-1])
        if not ((folder / f"test_{parts[-1]}.py").exists() or any(folder.glob(f"test_{parts[-1]}_*.py"))):
            missing.append(f"{name} (tests/{'/'.join(parts[:-1] + [f'test_{parts[-1]}.py'])})")
    assert len(_module_names(SOURCES)) > 60
    assert missing == [], "modules without a test file of their name:\n  " + "\n  ".join(missing)
