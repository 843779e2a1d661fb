"""Which data path runs: ``fastingress --version`` and each worker's start line say it, and it is
the build the test process imported (CI's compiled stage sets ``FASTINGRESS_EXPECT_COMPILED=1``:
there the whole suite must run against the mypyc-compiled modules, workers included)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import workers.loop
from tests.conftest import REPO
from tests.support.process import Fastingress, fastingress_command, free_port, run_fastingress
from workers.build import data_path


def test_data_path_names_the_build_of_the_core() -> None:
    compiled = workers.loop.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert data_path() == ("compiled" if compiled else "interpreted")
    expected = os.environ.get("FASTINGRESS_EXPECT_COMPILED")
    if expected is not None:
        assert data_path() == ("compiled" if expected == "1" else "interpreted"), workers.loop.__file__


def test_version_and_every_worker_report_the_same_data_path(tmp_path: Path) -> None:
    command = fastingress_command("--version")
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip().endswith(f"(data path: {data_path()})")
    example = tmp_path / "empty.yaml"
    example.write_text("")
    with run_fastingress(tmp_path, manifests=[example], workers=2) as fi:
        pass
    log = fi.log()
    for index in (0, 1):
        assert f"worker {index}: serving on port {fi.http_port} (data path: {data_path()})" in log, log


def _setup_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastingress_setup", REPO / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_build_compiles_only_when_asked_and_says_why_not(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """setup.py: ``0``/unset build the interpreted package silently; without a C compiler, ``auto``
    (what ``pip install .`` uses) warns and builds it interpreted, ``1`` fails the build."""
    setup = _setup_module()
    assert set(setup.HOT) >= {"loop", "h1conn", "h1forward", "llhttp", "transport"}
    monkeypatch.delenv("FASTINGRESS_MYPYC", raising=False)
    assert setup.ext_modules() == []
    monkeypatch.setenv("FASTINGRESS_MYPYC", "0")
    assert setup.ext_modules() == []
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("CC", "/nonexistent/cc-for-this-test")
    monkeypatch.setenv("FASTINGRESS_MYPYC", "auto")
    assert setup.ext_modules() == []
    err = capsys.readouterr().err
    assert "WARNING: fastingress: building the interpreted data path" in err
    assert "no C compiler ('/nonexistent/cc-for-this-test' is not on PATH)" in err
    monkeypatch.setenv("FASTINGRESS_MYPYC", "1")
    with pytest.raises(SystemExit, match="FASTINGRESS_MYPYC=1: cannot compile the data path: no C compiler"):
        setup.ext_modules()


def test_workers_run_the_supervisors_package_not_one_in_the_current_directory(tmp_path: Path) -> None:
    """``pip install .`` then ``fastingress`` run from the source checkout: the checkout's
    ``workers/`` (interpreted) must not shadow the installed (compiled) one in the worker
    processes.  Here the current directory holds a ``workers`` package that cannot be imported;
    the supervisor (``-P``: not from the current directory) starts workers that still serve."""
    decoy = tmp_path / "checkout"
    (decoy / "workers").mkdir(parents=True)
    (decoy / "workers" / "__init__.py").write_text('raise ImportError("the decoy workers package")\n')
    http_port, admin_port = free_port(), free_port()
    log = tmp_path / "fastingress.log"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    argv = [sys.executable, "-P", "-m", "fastingress", "standalone", "--bind", "127.0.0.1",
            "--http-port", str(http_port), "--https-port", str(free_port()), "--admin-port", str(admin_port),
            "--workers", "1", "--manifests", str(empty)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=decoy, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    fi = Fastingress(proc, http_port, admin_port, log)
    try:
        fi.wait_ready()
    finally:
        fi.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "the decoy workers package" not in fi.log()
    assert f"worker 0: serving on port {http_port} (data path: {data_path()})" in fi.log()
