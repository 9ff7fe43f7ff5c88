"""The architecture, enforced: imports point down the layers, `method/` imports neither Ray, Optuna
nor MLflow, the analysis layer never imports Ray, the import graph has no cycle, and nothing but
the legacy-path finder uses the module paths from before the folder move (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from sslsearch.legacy_paths import OLD_TO_NEW

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sslsearch"
# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = {"base": 0, "method": 1, "search": 2, "records": 3, "analysis": 4, "bench": 5, "cli": 6}
BASE_MODULES = {"sslsearch.errors", "sslsearch.processes", "sslsearch.legacy_paths", "sslsearch.presets"}
FRAMEWORKS = ("ray", "optuna", "mlflow")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    if module in BASE_MODULES:
        return LAYERS["base"]
    parts = module.split(".")
    if len(parts) == 1:   # the package root: lazy re-exports only, checked separately
        return LAYERS["cli"]
    return LAYERS[parts[1]]   # a package (method, search, ...) or cli; a KeyError names a module outside the layers


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (function-level ones too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _project_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    return {name for name in _imports(path) if name in modules and name != _module_name(path)}


def test_every_module_has_a_layer():
    outside = [m for m in _modules() if m != "sslsearch" and m not in BASE_MODULES and m.split(".")[1] not in LAYERS]
    assert not outside, f"modules in no layer (add them to LAYERS or BASE_MODULES): {outside}"


def test_imports_point_down():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        if module == "sslsearch":
            continue
        for imported in _project_imports(path, modules):
            if imported != "sslsearch" and _layer(imported) > _layer(module):
                upward.append(f"{module} imports {imported}")
    assert not upward, upward


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {m: {i for i in _project_imports(p, modules) if i != "sslsearch" and not m.startswith(i + ".")}
             for m, p in modules.items() if m != "sslsearch"}
    done, active, cycles = set(), [], []

    def visit(node):
        if node in active:
            cycles.append(active[active.index(node):] + [node])
            return
        if node in done:
            return
        active.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        active.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert not cycles, [" -> ".join(cycle) for cycle in cycles]


def test_method_imports_no_framework_and_analysis_no_ray_in_any_import_statement():
    offending = []
    for module, path in _modules().items():
        forbidden = FRAMEWORKS if module.startswith("sslsearch.method") else ("ray",) if module.startswith(
            "sslsearch.analysis") else ()
        for name in _imports(path):
            if name.split(".")[0] in forbidden:
                offending.append(f"{module} imports {name}")
    assert not offending, offending


@pytest.mark.slow
def test_importing_the_layers_loads_what_they_may():
    """Dynamically too: what a module imports at module level pulls in nothing its layer forbids."""
    method = sorted(m for m in _modules() if m.startswith("sslsearch.method"))
    analysis = sorted(m for m in _modules() if m.startswith("sslsearch.analysis"))
    code = ("import importlib, sys\n"
            f"for m in {method!r}: importlib.import_module(m)\n"
            f"print(sorted(f for f in {list(FRAMEWORKS)!r} if f in sys.modules))\n"
            f"for m in {analysis!r}: importlib.import_module(m)\n"
            "print('ray' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split("\n")[:2] == ["[]", "False"], out


@pytest.mark.parametrize("folder", ["sslsearch", "tests", "benchmarks"])
def test_no_code_uses_a_module_path_from_before_the_move(folder):
    old = set(OLD_TO_NEW) | {f"sslsearch.search.{name}" for name in ("SweepSearcher", "run_sweep", "resume_sweep")}
    users = []
    for path in (ROOT / folder).rglob("*.py"):
        if path.name in ("legacy_paths.py", "test_legacy_layout.py"):
            continue
        used = _imports(path) & old
        if path.name != "__init__.py":
            users.extend(f"{path.relative_to(ROOT)}: {name}" for name in sorted(used))
    assert not users, users
