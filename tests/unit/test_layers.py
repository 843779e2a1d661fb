"""The data plane's structure: ``workers/`` imports no control-plane code, and its modules form
layers (no import cycle, counting the imports made only for type checking)."""

from __future__ import annotations

import ast
from pathlib import Path

WORKERS = Path(__file__).resolve().parents[2] / "workers"
FORBIDDEN = ("fastingress.translate", "fastingress.supervisor", "fastingress.k8s", "kubernetes")


def _module(path: Path) -> str:
    parts = path.relative_to(WORKERS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in WORKERS.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_workers_never_import_the_control_plane() -> None:
    offenders = {
        name: sorted(m for m in _imports(path) if m.startswith(FORBIDDEN))
        for path in WORKERS.rglob("*.py")
        if (name := _module(path))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_workers_modules_form_layers() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []
