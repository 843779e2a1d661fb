"""``fastingress standalone`` as a real process with real workers (python -m workers).

Waits poll observable conditions (admin endpoints, the process) with deadlines.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastingress.snapshot.codec import encode_json
from fastingress.snapshot.schema import Respond, Snapshot

pytestmark = pytest.mark.skipif(
    not (Path(__file__).resolve().parents[2] / "workers" / "__main__.py").exists(),
    reason="the worker entry point (python -m workers) is not there yet",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def poll(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = condition()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def write_snapshot(path: Path, body: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(encode_json(Snapshot(default_action=Respond(200, body))))
    tmp.rename(path)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[dict[str, Any]]:
    snapshot = tmp_path / "snap.json"
    write_snapshot(snapshot, "one")
    http_port, admin_port = free_port(), free_port()
    runtime = tmp_path / "run"
    log = tmp_path / "fastingress.log"
    argv = [
        sys.executable, "-m", "fastingress", "standalone",
        "--snapshot", str(snapshot),
        "--bind", "127.0.0.1",
        "--http-port", str(http_port),
        "--https-port", "0",
        "--admin-port", str(admin_port),
        "--workers", "2",
        "--watch-interval", "0.05",
        "--grace-period", "5",
        "--runtime-dir", str(runtime),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield {
            "proc": proc,
            "http": f"http://127.0.0.1:{http_port}",
            "admin": f"http://127.0.0.1:{admin_port}",
            "snapshot": snapshot,
            "runtime": runtime,
            "log": log,
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_real_workers_restart_reload_and_shutdown(running: dict[str, Any]) -> None:
    proc: subprocess.Popen[bytes] = running["proc"]
    admin, http = running["admin"], running["http"]
    client = httpx.Client(timeout=2)

    def ready() -> bool:
        assert proc.poll() is None, running["log"].read_text()
        return client.get(f"{admin}/readyz").status_code == 200

    poll(ready, "/readyz")
    assert client.get(f"{http}/").text == "one"

    # Once the standby worker has loaded: kill a worker, its slot gets the standby at once.
    standby = poll(lambda: (st := client.get(f"{admin}/status").json()["standby"])["ready"] and st, "standby")
    victim = client.get(f"{admin}/status").json()["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()

    def replaced() -> bool:
        worker = client.get(f"{admin}/status").json()["workers"][0]
        return bool(worker["pid"]) and worker["pid"] != victim and worker["generation"] >= 1

    poll(replaced, "slot 0 replaced", timeout=5)
    print("replaced after", time.monotonic() - killed)
    assert time.monotonic() - killed < 1.0
    assert client.get(f"{admin}/status").json()["workers"][0]["pid"] == standby["pid"]
    assert client.get(f"{http}/").status_code == 200

    # Edit the snapshot file: a new generation reaches every worker.
    write_snapshot(running["snapshot"], "two")

    def everywhere(generation: int) -> Callable[[], bool]:
        def check() -> bool:
            workers = client.get(f"{admin}/status").json()["workers"]
            return all(w["generation"] >= generation for w in workers)

        return check

    poll(everywhere(2), "generation 2 in every worker")
    assert {client.get(f"{http}/").text for _ in range(6)} == {"two"}

    # SIGHUP: reload, same bytes, nothing new published.
    proc.send_signal(signal.SIGHUP)
    poll(lambda: "reloaded (SIGHUP): no change" in running["log"].read_text(), "SIGHUP reload")
    assert client.get(f"{admin}/status").json()["generation"] == 2

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    log = running["log"].read_text()
    assert "Traceback" not in log
    assert "worker slot 0 (pid" in log and "exited unexpectedly (killed by SIGKILL)" in log
    assert f"worker slot 0 started (pid {standby['pid']}, was the standby)" in log
    assert not running["runtime"].exists()
