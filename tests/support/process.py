"""Run a real ``fastingress standalone`` process on loopback for end-to-end tests.

Waiting is always on an observable condition (the admin port's /readyz and /status), polled
with a deadline; nothing sleeps for a fixed time to "let things settle".
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(
    condition: Callable[[], T | None], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except (httpx.HTTPError, OSError) as exc:
            last_exc = exc
            result = None
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}: {last_exc!r}")


class Fastingress:
    """A running ``fastingress standalone`` process."""

    def __init__(self, proc: subprocess.Popen[bytes], http_port: int, admin_port: int, log: Path) -> None:
        self.proc = proc
        self.http_port = http_port
        self.https_port = 0  # set by run_fastingress (0: no HTTPS listener)
        self.admin_port = admin_port
        self.log_path = log
        self.base = f"http://127.0.0.1:{http_port}"
        self.admin = f"http://127.0.0.1:{admin_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, Any]:
        r = httpx.get(f"{self.admin}/status", timeout=2)
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def ready(self) -> bool:
        return httpx.get(f"{self.admin}/readyz", timeout=2).status_code == 200

    def worker_pids(self) -> list[int]:
        return [int(w["pid"]) for w in self.status()["workers"]]

    def wait_ready(self, timeout: float = 15.0) -> None:
        def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"fastingress exited with {self.proc.returncode}:\n{self.log()}")
            return self.ready()

        wait_for(check, timeout=timeout, what="/readyz")

    def wait_generation(self, generation: int, timeout: float = 10.0) -> None:
        """Until every worker has applied at least ``generation``."""

        def check() -> bool:
            st = self.status()
            workers = st["workers"]
            return bool(workers) and all(int(w["generation"]) >= generation for w in workers)

        wait_for(check, timeout=timeout, what=f"generation {generation} in every worker")

    def generation(self) -> int:
        return int(self.status()["generation"])

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def fastingress_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastingress", *args]


@contextmanager
def run_fastingress(
    tmp_path: Path,
    *,
    manifests: list[Path] | None = None,
    snapshot: Path | None = None,
    workers: int = 2,
    extra: tuple[str, ...] = (),
    wait_ready: bool = True,
) -> Iterator[Fastingress]:
    http_port, admin_port = free_port(), free_port()
    https_port = 0 if "--https-port" in extra else free_port()  # never the default 443
    args = [
        "standalone",
        "--bind", "127.0.0.1",
        "--http-port", str(http_port),
        "--admin-port", str(admin_port),
        "--workers", str(workers),
        "--watch-interval", "0.05",
        "--grace-period", "10",
        *(("--https-port", str(https_port)) if https_port else ()),
        *extra,
    ]
    for m in manifests or []:
        args += ["--manifests", str(m)]
    if snapshot is not None:
        args += ["--snapshot", str(snapshot)]
    log = tmp_path / f"fastingress-{http_port}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            fastingress_command(*args), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    fi = Fastingress(proc, http_port, admin_port, log)
    fi.https_port = https_port or int(extra[extra.index("--https-port") + 1])
    try:
        if wait_ready:
            fi.wait_ready()
        yield fi
    finally:
        fi.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
