"""The supervisor, in-process (trio) with fake worker processes that speak the real contract.

The fake worker (written to a file per test) is a real process: it reads the shared-memory
snapshot with ShmReader, wakes up on the notification pipe, answers real WorkerStats on its
stats socket, exits on SIGTERM (or ignores it when told to), and exits when the pipe hits EOF.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from fastingress.errors import ConfigError, SnapshotError
from fastingress.settings import StandaloneSettings
from fastingress.snapshot import limitshm
from fastingress.snapshot.codec import decode_msgpack, encode_json
from fastingress.snapshot.schema import Respond, Snapshot
from fastingress.snapshot.shm import ShmReader
from fastingress.supervisor import Supervisor, run_standalone
from fastingress.supervisor.procs import describe_exit, next_backoff

FAKE_WORKER = r"""
import os, selectors, signal, socket, sys
from fastingress.snapshot.shm import ShmReader
from workers.config import RequestCount, WorkerStats, decode_settings, stats_encoder

settings = decode_settings(sys.argv[sys.argv.index("--settings") + 1])
ignore_term = os.environ.get("FAKE_WORKER_IGNORE_TERM") == "1"
reader = ShmReader(settings.shm_path)
state = {"generation": 0, "stop": False}

def refresh():
    got = reader.read()
    if got is not None:
        state["generation"] = got[0]

def on_term(signum, frame):
    if not ignore_term:
        state["stop"] = True

signal.signal(signal.SIGTERM, on_term)
refresh()
try:
    os.unlink(settings.stats_socket)
except FileNotFoundError:
    pass
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(settings.stats_socket)
server.listen(16)
server.setblocking(False)
os.set_blocking(settings.notify_fd, False)
selector = selectors.DefaultSelector()
selector.register(server, selectors.EVENT_READ, "stats")
selector.register(settings.notify_fd, selectors.EVENT_READ, "notify")
i = settings.index
while not state["stop"]:
    for key, _ in selector.select(0.05):
        if key.data == "stats":
            try:
                conn, _ = server.accept()
            except BlockingIOError:
                continue
            stats = WorkerStats(
                index=i, pid=os.getpid(), generation=state["generation"],
                requests=(RequestCount("2xx", "example.com", "default/web", "default/web:80", 10 + i),
                          RequestCount("5xx", "-", "-", "-", 1)),
                duration_buckets=tuple(min(b, 5) for b in range(14)),
                duration_sum=0.25, duration_count=5, upstream_errors=2, snapshot_errors=0,
            )
            conn.setblocking(True)
            conn.sendall(stats_encoder.encode(stats))
            conn.close()
        else:
            try:
                data = os.read(settings.notify_fd, 4096)
            except BlockingIOError:
                continue
            if not data:
                sys.exit(3)  # the supervisor is gone
            refresh()
sys.exit(0)
"""

INGRESS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web, namespace: default}}
spec:
  rules:
    - host: {host}
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
"""


def write_ingress(directory: Path, host: str) -> None:
    tmp = directory / ".ingress.yaml.tmp"
    tmp.write_text(INGRESS.format(host=host))
    tmp.rename(directory / "ingress.yaml")


@pytest.fixture
def fake_worker(tmp_path: Path) -> tuple[str, ...]:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    return (sys.executable, str(script))


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    directory = tmp_path / "manifests"
    directory.mkdir()
    write_ingress(directory, "a.example.com")
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_settings(tmp_path: Path, worker: tuple[str, ...], **overrides: Any) -> StandaloneSettings:
    values: dict[str, Any] = {
        "http_port": free_port(),
        "https_port": 0,  # no HTTPS listener (never the default 443)
        "admin_port": 0,
        "admin_bind": "127.0.0.1",
        "bind": "127.0.0.1",
        "workers": 2,
        "watch_interval": 0.05,
        "grace_period": 2.0,
        "worker_command": worker,
        "runtime_dir": str(tmp_path / "run"),
    }
    values.update(overrides)
    return StandaloneSettings(**values)


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    with trio.move_on_after(timeout):
        while not await condition():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


class Admin:
    def __init__(self, client: httpx.AsyncClient, port: int) -> None:
        self.client = client
        self.base = f"http://127.0.0.1:{port}"

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(self.base + path)

    async def status(self) -> dict[str, Any]:
        data: dict[str, Any] = (await self.get("/status")).json()
        return data

    async def workers_at(self, generation: int) -> bool:
        workers = (await self.status())["workers"]
        return all(w["pid"] and w["generation"] >= generation for w in workers)


async def start(nursery: trio.Nursery, settings: StandaloneSettings) -> tuple[Supervisor, list[int]]:
    """Start run_standalone; the returned list receives its exit code."""
    exit_codes: list[int] = []

    async def runner(*, task_status: trio.TaskStatus[Supervisor]) -> None:
        exit_codes.append(await run_standalone(settings, task_status=task_status))

    supervisor: Supervisor = await nursery.start(runner)
    return supervisor, exit_codes


def current_snapshot(supervisor: Supervisor) -> Snapshot:
    with ShmReader(supervisor.publisher.path) as reader:
        got = reader.read()
    assert got is not None
    return decode_msgpack(got[1])


async def test_publishes_before_workers_and_serves_admin(
    tmp_path: Path, fake_worker: tuple[str, ...], manifests: Path
) -> None:
    settings = make_settings(tmp_path, fake_worker, manifests=(str(manifests),))
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=5) as client:
        supervisor, exit_codes = await start(nursery, settings)
        # Generation 1 is out before any worker could have asked for it.
        assert supervisor.publisher.generation == 1
        assert [vh.hostname for vh in current_snapshot(supervisor).virtual_hosts] == ["a.example.com"]
        admin = Admin(client, supervisor.admin_port)
        health = await admin.get("/healthz")
        assert (health.status_code, health.text) == (200, "ok\n")
        await wait_until(lambda: admin.workers_at(1), "workers at generation 1")
        ready = await admin.get("/readyz")
        assert ready.status_code == 200, ready.text

        metrics_response = await admin.get("/metrics")
        assert metrics_response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        lines = set(metrics_response.text.splitlines())
        assert (
            'fastingress_requests_total{status_class="2xx",host="example.com",'
            'ingress="default/web",service="default/web:80"} 21'
        ) in lines  # 10 + 11 over two workers
        assert 'fastingress_requests_total{status_class="5xx",host="-",ingress="-",service="-"} 2' in lines
        assert 'fastingress_request_duration_seconds_bucket{le="0.001"} 0' in lines
        assert 'fastingress_request_duration_seconds_bucket{le="+Inf"} 10' in lines
        assert "fastingress_request_duration_seconds_count 10" in lines
        assert "fastingress_request_duration_seconds_sum 0.5" in lines
        assert "fastingress_snapshot_generation 1" in lines
        assert 'fastingress_worker_snapshot_generation{worker="0"} 1' in lines
        assert 'fastingress_worker_snapshot_generation{worker="1"} 1' in lines
        assert "fastingress_workers 2" in lines
        assert "fastingress_worker_restarts_total 0" in lines
        assert "fastingress_upstream_errors_total 4" in lines
        assert "fastingress_snapshot_decode_errors_total 0" in lines
        assert "fastingress_config_errors 1" in lines  # the Service default/web does not exist
        assert "fastingress_config_reload_failures_total 0" in lines

        status_response = await admin.get("/status")
        assert status_response.headers["content-type"] == "application/json"
        status = status_response.json()
        assert status["generation"] == 1
        assert [w["index"] for w in status["workers"]] == [0, 1]
        assert any(d["severity"] == "error" and d["name"] == "web" for d in status["diagnostics"])
        assert (await admin.get("/nope")).status_code == 404
        runtime = Path(supervisor.runtime_dir)
        assert runtime.stat().st_mode & 0o777 == 0o700
        # The replica's limit counters: one segment for both workers, each its own column.
        assert [slot.settings.limits_path for slot in supervisor.slots] == [str(runtime / "limits")] * 2
        segment = limitshm.attach(supervisor.limits_path, 1)
        assert segment.workers == 2
        segment.close()
        supervisor.request_stop()
    assert exit_codes == [0]
    assert not runtime.exists()


async def test_reload_on_change_noop_and_failure(
    tmp_path: Path, fake_worker: tuple[str, ...], manifests: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastingress")
    settings = make_settings(tmp_path, fake_worker, manifests=(str(manifests),), workers=1)
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=5) as client:
        supervisor, _ = await start(nursery, settings)
        admin = Admin(client, supervisor.admin_port)
        await wait_until(lambda: admin.workers_at(1), "worker at generation 1")

        # A real change: published as generation 2, and the worker is told (pipe) and follows.
        write_ingress(manifests, "b.example.com")
        await wait_until(lambda: admin.workers_at(2), "worker at generation 2")
        assert [vh.hostname for vh in current_snapshot(supervisor).virtual_hosts] == ["b.example.com"]

        # Same content, new inode/mtime: reloaded, but nothing published.
        write_ingress(manifests, "b.example.com")

        async def noop_logged() -> bool:
            return "no change, keeping generation 2" in caplog.text

        await wait_until(noop_logged, "the no-op reload")
        assert supervisor.publisher.generation == 2

        # A vanished input path: the reload fails (one line) and generation 2 stays in force.
        broken = manifests.rename(tmp_path / "elsewhere")

        async def failed() -> bool:
            return supervisor.reload_failures >= 1

        await wait_until(failed, "the failed reload")
        assert supervisor.publisher.generation == 2
        assert "failed, keeping generation 2" in caplog.text
        metrics = (await admin.get("/metrics")).text
        assert "fastingress_config_reload_failures_total 1" in metrics.splitlines()

        # It comes back: reloaded, but the bytes are the same as generation 2.
        broken.rename(manifests)
        await wait_until(_count(caplog, "no change, keeping generation 2", 2), "second no-op")
        assert supervisor.publisher.generation == 2
        supervisor.request_stop()


def _count(caplog: pytest.LogCaptureFixture, text: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return caplog.text.count(text) >= n

    return check


async def test_sighup_forces_reload(
    tmp_path: Path, fake_worker: tuple[str, ...], manifests: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastingress")
    # Polling so slow it never sees the change by itself within the test.
    settings = make_settings(
        tmp_path, fake_worker, manifests=(str(manifests),), workers=1, watch_interval=600
    )
    async with trio.open_nursery() as nursery:
        supervisor, _ = await start(nursery, settings)
        write_ingress(manifests, "c.example.com")
        os.kill(os.getpid(), signal.SIGHUP)

        async def published() -> bool:
            return supervisor.publisher.generation == 2

        await wait_until(published, "generation 2 after SIGHUP")
        assert "SIGHUP: reloading" in caplog.text
        assert [vh.hostname for vh in current_snapshot(supervisor).virtual_hosts] == ["c.example.com"]
        supervisor.request_stop()


async def test_killed_worker_is_replaced_quickly(
    tmp_path: Path, fake_worker: tuple[str, ...], manifests: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastingress")
    settings = make_settings(tmp_path, fake_worker, manifests=(str(manifests),))
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=5) as client:
        supervisor, _ = await start(nursery, settings)
        admin = Admin(client, supervisor.admin_port)
        await wait_until(lambda: admin.workers_at(1), "workers ready")
        victim = supervisor.slots[1].pid
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed_at = trio.current_time()

        async def replaced() -> bool:
            status = await admin.status()
            worker = status["workers"][1]
            return bool(worker["pid"]) and worker["pid"] != victim and worker["generation"] >= 1

        await wait_until(replaced, "slot 1 replaced and serving", timeout=5)
        assert trio.current_time() - killed_at < 1.0
        assert f"worker slot 1 (pid {victim}) exited unexpectedly (killed by SIGKILL)" in caplog.text
        lines = (await admin.get("/metrics")).text.splitlines()
        assert "fastingress_worker_restarts_total 1" in lines
        # The dead worker's counters were folded in: 10 + 11 (live) + 11 (retired slot 1).
        assert any(
            line.startswith('fastingress_requests_total{status_class="2xx"') and line.endswith(" 32")
            for line in lines
        )
        supervisor.request_stop()


async def test_readyz_not_ready_without_stats(tmp_path: Path, manifests: Path) -> None:
    # A "worker" that never opens its stats socket: live, but not ready.
    settings = make_settings(
        tmp_path,
        (sys.executable, "-c", "import time; time.sleep(60)"),
        manifests=(str(manifests),),
        workers=1,
    )
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=5) as client:
        supervisor, _ = await start(nursery, settings)
        admin = Admin(client, supervisor.admin_port)

        async def spawned() -> bool:
            return supervisor.slots[0].pid is not None

        await wait_until(spawned, "the worker process")
        ready = await admin.get("/readyz")
        assert ready.status_code == 503
        assert "worker 0 (pid" in ready.text
        assert "did not report its stats" in ready.text
        assert (await admin.get("/healthz")).status_code == 200
        supervisor.request_stop()


async def test_shutdown_sigkills_stubborn_workers(
    tmp_path: Path,
    fake_worker: tuple[str, ...],
    manifests: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("FAKE_WORKER_IGNORE_TERM", "1")
    monkeypatch.setattr("fastingress.supervisor.core.KILL_MARGIN", 0.2)
    caplog.set_level(logging.INFO, logger="fastingress")
    settings = make_settings(tmp_path, fake_worker, manifests=(str(manifests),), grace_period=0.1)
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=5) as client:
        supervisor, exit_codes = await start(nursery, settings)
        admin = Admin(client, supervisor.admin_port)
        await wait_until(lambda: admin.workers_at(1), "workers ready")
        processes = [slot.process for slot in supervisor.slots]
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's own signal handling
    assert exit_codes == [0]
    assert all(p is not None and p.returncode == -signal.SIGKILL for p in processes)
    assert "did not exit in time: SIGKILL" in caplog.text
    assert not (tmp_path / "run").exists()


async def test_snapshot_file_source(tmp_path: Path, fake_worker: tuple[str, ...]) -> None:
    snapshot_file = tmp_path / "snap.json"
    snapshot_file.write_bytes(encode_json(Snapshot(default_action=Respond(200, "one"))))
    settings = make_settings(tmp_path, fake_worker, snapshot=str(snapshot_file), workers=1)
    async with trio.open_nursery() as nursery:
        supervisor, _ = await start(nursery, settings)
        assert current_snapshot(supervisor).default_action == Respond(200, "one")
        snapshot_file.write_bytes(encode_json(Snapshot(default_action=Respond(200, "two"))))

        async def published() -> bool:
            return supervisor.publisher.generation == 2

        await wait_until(published, "generation 2")
        assert current_snapshot(supervisor).default_action == Respond(200, "two")
        supervisor.request_stop()


async def test_first_load_failure_creates_nothing(tmp_path: Path, fake_worker: tuple[str, ...]) -> None:
    settings = make_settings(tmp_path, fake_worker, manifests=(str(tmp_path / "missing"),))
    with pytest.raises(ConfigError, match="does not exist"):
        await run_standalone(settings)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SnapshotError):
        await run_standalone(make_settings(tmp_path, fake_worker, snapshot=str(bad)))
    assert not (tmp_path / "run").exists()


async def test_busy_admin_port_is_a_config_error(
    tmp_path: Path, fake_worker: tuple[str, ...], manifests: Path
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        settings = make_settings(tmp_path, fake_worker, manifests=(str(manifests),), admin_port=port)
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}: address already in use"):
            await run_standalone(settings)
    finally:
        for listener in listeners:
            await listener.aclose()
    assert not (tmp_path / "run").exists()


async def test_busy_http_port_is_a_config_error(
    tmp_path: Path, fake_worker: tuple[str, ...], manifests: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        settings = make_settings(tmp_path, fake_worker, manifests=(str(manifests),), http_port=port)
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: address already in use"):
            await run_standalone(settings)
    assert not (tmp_path / "run").exists()


async def test_second_sigterm_kills_workers_at_once(
    tmp_path: Path,
    fake_worker: tuple[str, ...],
    manifests: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("FAKE_WORKER_IGNORE_TERM", "1")
    caplog.set_level(logging.INFO, logger="fastingress")
    settings = make_settings(tmp_path, fake_worker, manifests=(str(manifests),), grace_period=60)
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=5) as client:
        supervisor, exit_codes = await start(nursery, settings)
        admin = Admin(client, supervisor.admin_port)
        await wait_until(lambda: admin.workers_at(1), "workers ready")
        os.kill(os.getpid(), signal.SIGTERM)

        async def asked() -> bool:
            return "sent SIGTERM to 2 workers" in caplog.text

        await wait_until(asked, "the first SIGTERM to be handled")
        with trio.fail_after(10):  # far less than the 60 s grace period
            os.kill(os.getpid(), signal.SIGINT)
            while not exit_codes:
                await trio.sleep(0.02)
    assert exit_codes == [0]
    assert "SIGINT again while stopping: killing workers now" in caplog.text


def test_backoff_policy() -> None:
    delays = []
    delay = 0.0
    for _ in range(10):
        delay = next_backoff(delay, ran_for=0.1)
        delays.append(delay)
    assert delays[:4] == [0.05, 0.1, 0.2, 0.4]
    assert max(delays) == 5.0
    assert next_backoff(5.0, ran_for=10.0) == 0.05  # ran long enough: start over


def test_describe_exit() -> None:
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-9) == "killed by SIGKILL"
