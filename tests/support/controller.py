"""Run a real ``fastingress controller`` process against the API server emulator.

The process is the same ``Fastingress`` handle as standalone mode (``tests.support.process``):
admin /status, /readyz and worker generations; waiting is always polling an observable
condition with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.apiserver import ApiServer
from tests.support.process import Fastingress, fastingress_command, free_port, wait_for

FAST_ELECTION = ("--lease-ttl", "2", "--lease-renew", "0.5")


class Controller(Fastingress):
    def controller(self) -> dict[str, Any]:
        info: dict[str, Any] = self.status()["controller"]
        return info

    def is_leader(self) -> bool:
        return bool(self.status()["leader"])

    def readyz(self) -> int:
        return httpx.get(f"{self.admin}/readyz", timeout=2).status_code

    def get(self, host: str, path: str = "/") -> httpx.Response:
        return httpx.get(f"{self.base}{path}", headers={"Host": host}, timeout=5)

    def server_of(self, host: str, path: str = "/") -> str | int:
        """The echo server's name that answered, or the status code if not 200."""
        r = self.get(host, path)
        if r.status_code != 200:
            return r.status_code
        name: str = r.json()["server"]
        return name


@contextmanager
def run_controller(
    tmp_path: Path,
    api: ApiServer,
    *,
    workers: int = 2,
    extra: tuple[str, ...] = (),
    wait_ready: bool = True,
    name: str = "",
    server: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Controller]:
    """``server``: the API URL to use instead of the emulator's own (a ``TcpProxy`` in front of
    it); ``env``: extra environment (``POD_NAME``...)."""
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", server=server)
    http_port, admin_port = free_port(), free_port()
    args = [
        "controller",
        "--kubeconfig", str(kubeconfig),
        "--bind", "127.0.0.1",
        "--http-port", str(http_port),
        "--admin-port", str(admin_port),
        "--workers", str(workers),
        "--grace-period", "5",
        "--https-port", "0",  # no HTTPS listener (never the default 443)
        "--no-standby-worker",
        *(("--identity", name) if name else ()),
        *extra,
    ]  # fmt: skip
    log = tmp_path / f"controller-{name or http_port}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    env.pop("KUBECONFIG", None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            fastingress_command(*args), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    fi = Controller(proc, http_port, admin_port, log)
    try:
        if wait_ready:
            fi.wait_ready()
        yield fi
    finally:
        fi.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def kill_hard(fi: Fastingress) -> None:
    """SIGKILL the whole process group (supervisor and workers): a crashed pod."""
    os.killpg(fi.proc.pid, signal.SIGKILL)
    fi.proc.wait(timeout=10)


__all__ = ["FAST_ELECTION", "Controller", "kill_hard", "run_controller", "wait_for"]
