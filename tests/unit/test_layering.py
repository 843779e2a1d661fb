"""Architecture rules from DESIGN.md that code review alone would let slip."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

FORBIDDEN_IN_WORKERS = (
    "kubernetes", "fastingress.translate", "fastingress.supervisor", "fastingress.k8s", "yaml",
)


def test_workers_never_import_the_control_plane() -> None:
    code = (
        "import sys, workers.__main__, workers.server, workers.proxy\n"
        f"bad = [m for m in sys.modules if m.startswith({FORBIDDEN_IN_WORKERS!r})]\n"
        "print(','.join(sorted(bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "", f"workers imported: {out.stdout.strip()}"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_fastingress_k8s_imports_the_kubernetes_client() -> None:
    offenders = [
        str(p.relative_to(REPO))
        for p in sorted((REPO / "fastingress").rglob("*.py")) + sorted((REPO / "workers").rglob("*.py"))
        if "k8s" not in p.relative_to(REPO).parts
        and any(n == "kubernetes" or n.startswith("kubernetes.") for n in _imports(p))
    ]
    assert offenders == []


def test_translation_does_no_io() -> None:
    """The translator is pure: no sockets, files or subprocesses.  (It reads the clock in one
    place, certificate expiry, which only yields a warning; the incremental translator's lock
    guards its caches against concurrent callers.)"""
    io_modules = {"socket", "subprocess", "os", "pathlib", "shutil", "io", "trio", "urllib", "http"}
    offenders = {
        str(p.relative_to(REPO)): sorted(io_modules & {n.split(".")[0] for n in _imports(p)})
        for p in sorted((REPO / "fastingress" / "translate").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
