"""The package layout's two rules (docs/ARCHITECTURE.md §2): no import cycles anywhere, and the
scorer's serving side never imports pandas, plotly or the offline code."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("consumer", "producer", "models", "schemas", "loan_recovery", "bench")
# What `serve` imports to score events: it must start without the offline stack.
SERVING = (
    "consumer.processor",
    "models.serving.bundle",
    "models.serving.forest",
    "models.serving.segmenter",
    "models.serving.policy",
    "models.features.state_codec",
)
FORBIDDEN = ("pandas", "plotly", "models.training", "models.data", "models.report")


# A Cython kernel's Python-level imports (``cimport`` lines are C-level and not matched).
PYX_IMPORT = re.compile(r"^(?:from\s+([\w.]+)\s+import\s+(\w+)|import\s+([\w.]+))", re.MULTILINE)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for pattern in ("*.py", "*.pyx")
        for path in sorted((ROOT / package).rglob(pattern))
    }


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    targets: set[str] = set()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".pyx":
        for module, name, plain in PYX_IMPORT.findall(text):
            child = f"{module}.{name}"
            targets.add(plain or (child if child in modules else module))
        return targets
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                targets.add(child if child in modules else node.module)
    return targets


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports, at top level or inside functions alike.

    ``from a.b import c`` points at ``a.b.c`` when that is a module, else at ``a.b``."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {t for t in _imports(path, modules) if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None (iterative DFS, three colours)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_function_local_import() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_imports_inside_functions() -> None:
    graph = import_graph(project_modules())
    # models.serving.bundle imports skops inside ModelBundle.load; its project imports are
    # top-level, but loan_recovery.commands.models imports the report inside a function.
    assert "models.report.render" in graph["loan_recovery.commands.models"]


def test_every_kernel_is_built_and_imports() -> None:
    # A kernel whose import fails (say, of a module that moved) is skipped silently by
    # models.native.load_kernel and the scorer runs the reference code at a quarter of the
    # speed: every kernel setup.py builds must import here, where a C compiler exists.
    import importlib

    kernels = re.findall(r'"(models\.[\w.]+_kernel)"', (ROOT / "setup.py").read_text())
    assert len(kernels) == 4
    for name in kernels:
        assert (ROOT / (name.replace(".", "/") + ".pyx")).exists(), name
        importlib.import_module(name)


def test_no_import_cycles_anywhere() -> None:
    cycle = find_cycle(import_graph(project_modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_consumer_and_producer_never_import_each_other() -> None:
    graph = import_graph(project_modules())
    for name, targets in graph.items():
        for own, other in (("consumer", "producer"), ("producer", "consumer")):
            if name.split(".")[0] == own:
                assert not {t for t in targets if t.split(".")[0] == other}, name


def test_serving_imports_neither_pandas_plotly_nor_offline_code() -> None:
    probe = (
        "import importlib, json, sys\n"
        f"for name in {SERVING!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []


def test_every_project_exception_derives_from_the_one_root() -> None:
    import importlib
    import inspect

    from schemas.errors import LoanRecoveryError

    strays = []
    for name in project_modules():
        if name.split(".")[0] == "bench" or name.endswith("_kernel"):
            continue
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and not issubclass(value, LoanRecoveryError)
            ):
                strays.append(f"{name}.{attr}")
    assert strays == [], f"derive these from schemas.errors.LoanRecoveryError: {strays}"
