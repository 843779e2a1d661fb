"""The worker's server over real sockets on 127.0.0.1: in-process and as a real process."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio
import websockets.asyncio.client as ws_client

from fastingress.snapshot.codec import encode_msgpack
from fastingress.snapshot.schema import Endpoint, Snapshot
from fastingress.snapshot.shm import ShmPublisher
from tests.support.process import free_port, wait_for
from tests.support.upstream import EchoServer, WebSocketEchoServer
from tests.support.worker_harness import make_snapshot
from workers.config import WorkerSettings, WorkerStats, encode_settings, stats_decoder
from workers.server import run_worker
from workers.state import Worker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer("echo") as up:
        yield up


def _snapshot(port: int) -> Snapshot:
    return make_snapshot(endpoints=(Endpoint("127.0.0.1", port),))


async def _stats(path: str) -> WorkerStats:
    stream = await trio.open_unix_socket(path)
    data = b""
    async with stream:
        while chunk := await stream.receive_some(65536):
            data += chunk
    return stats_decoder.decode(data)


async def _until(condition: object, what: str, timeout: float = 5.0) -> None:
    """Poll a condition (a callable) with a deadline (the worker runs in this trio loop)."""
    assert callable(condition)
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.005)


async def test_in_process_server_with_real_upstream(private_dir: Path, echo: EchoServer) -> None:
    shm = str(private_dir / "snapshot")
    read_fd, write_fd = os.pipe()
    publisher = ShmPublisher(shm)
    publisher.publish(encode_msgpack(_snapshot(echo.port)))
    os.write(write_fd, b"x")
    settings = WorkerSettings(
        index=3, shm_path=shm, stats_socket=str(private_dir / "w3.sock"), notify_fd=read_fd,
        bind="127.0.0.1", http_port=0, grace_period=5.0,
    )
    Path(settings.stats_socket).write_text("stale socket file from a previous worker")
    try:
        async with trio.open_nursery() as nursery:
            worker: Worker = await nursery.start(
                functools.partial(run_worker, settings, handle_signals=False)
            )
            await _until(lambda: worker.generation == 1, "generation 1")
            base = f"http://127.0.0.1:{worker.listen_port}"
            async with httpx.AsyncClient(base_url=base, headers={"host": "example.com"}) as client:
                r = await client.get("/api/../hello?x=1", headers={"x-request-id": "rid-1"})
                assert r.status_code == 200
                body = r.json()
                assert body["path"] == "/hello?x=1"
                headers = {k.lower(): v for k, v in body["headers"]}
                assert headers["x-forwarded-for"] == "127.0.0.1"
                assert headers["x-request-id"] == "rid-1"
                assert r.headers["server"] == "fastingress"
                r = await client.post("/upload", content=b"z" * 200_000)
                assert r.json()["body_bytes"] == 200_000
                r = await client.get("/x/__stream/50/10000")
                assert len(r.content) == 500_000
                r = await client.get("/teapot")
                assert r.status_code == 418

            # a broken snapshot is refused, the previous table stays in force
            publisher.publish(b"\x00not msgpack")
            os.write(write_fd, b"x")
            await _until(lambda: worker.metrics.snapshot_errors == 1, "refusal")
            assert worker.generation == 1
            await _until(lambda: worker.metrics.duration_count == 4, "4 requests counted")
            stats = await _stats(settings.stats_socket)
            assert stats.index == 3
            assert stats.pid == os.getpid()
            assert stats.generation == 1
            assert stats.snapshot_errors == 1
            ok = [r for r in stats.requests if r.status_class == "2xx"]
            assert sum(r.count for r in ok) == 3
            assert ok[0].host == "example.com" and ok[0].service == "default/app:80"

            # EOF on the notify pipe: the supervisor is gone, the worker drains and returns
            os.close(write_fd)
            write_fd = -1
        assert not os.path.exists(settings.stats_socket)
    finally:
        publisher.close()
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


async def test_websocket_through_the_proxy_survives_a_new_snapshot(private_dir: Path) -> None:
    shm = str(private_dir / "snapshot")
    publisher = ShmPublisher(shm)
    read_fd, write_fd = os.pipe()
    stop = trio.Event()
    with WebSocketEchoServer() as ws_up:
        publisher.publish(encode_msgpack(_snapshot(ws_up.port)))
        settings = WorkerSettings(
            index=0, shm_path=shm, stats_socket=str(private_dir / "w0.sock"), notify_fd=read_fd,
            bind="127.0.0.1", http_port=0, grace_period=1.0,
        )

        def new_generation() -> None:  # runs in the client thread, between two messages
            snapshot = make_snapshot(endpoints=(Endpoint("127.0.0.1", ws_up.port),), path="/chat")
            publisher.publish(encode_msgpack(snapshot))
            os.write(write_fd, b"x")
            trio.from_thread.run(_until, lambda: worker.generation == 2, "generation 2")

        try:
            async with trio.open_nursery() as nursery:
                worker: Worker = await nursery.start(
                    functools.partial(run_worker, settings, stop=stop, handle_signals=False)
                )
                await _until(lambda: worker.generation == 1, "generation 1", timeout=5)
                # websockets' asyncio client runs in a thread with its own event loop
                await trio.to_thread.run_sync(_ws_roundtrip, worker.listen_port, new_generation)
                assert worker.generation == 2
                stop.set()
        finally:
            publisher.close()
            os.close(read_fd)
            os.close(write_fd)


def _ws_roundtrip(port: int, between: Callable[[], None]) -> None:
    import asyncio

    async def go() -> None:
        # Host: example.com:<port> (from the URI), connected to 127.0.0.1
        url = f"ws://example.com:{port}/chat"
        async with ws_client.connect(url, host="127.0.0.1", port=port) as ws:
            for i in range(4):
                if i == 2:
                    between()
                await ws.send(f"message {i}")
                assert await ws.recv() == f"message {i}"

    asyncio.run(go())


def test_worker_process_serves_stats_and_drains_on_sigterm(private_dir: Path, echo: EchoServer) -> None:
    shm = str(private_dir / "snapshot")
    publisher = ShmPublisher(shm)
    read_fd, write_fd = os.pipe()
    port = free_port()
    stats_path = str(private_dir / "w0.sock")
    settings = WorkerSettings(
        index=0, shm_path=shm, stats_socket=stats_path, notify_fd=read_fd,
        bind="127.0.0.1", http_port=port, grace_period=10.0,
    )
    log = private_dir / "worker.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers", "--settings", encode_settings(settings)],
            stdout=log_file, stderr=subprocess.STDOUT, pass_fds=(read_fd,),
        )
    os.close(read_fd)
    try:
        base = f"http://127.0.0.1:{port}"
        # before the first snapshot: 503
        r = wait_for(lambda: httpx.get(base, headers={"host": "example.com"}, timeout=2), what="listener")
        assert r.status_code == 503
        assert "no configuration yet" in r.text
        publisher.publish(encode_msgpack(_snapshot(echo.port)))
        os.write(write_fd, b"x")
        wait_for(lambda: httpx.get(f"{base}/", headers={"host": "example.com"}, timeout=2).status_code == 200,
                 what="generation 1 served")

        # a request is counted just after its last byte is written: poll the stats briefly
        def counted() -> WorkerStats | None:
            st = _stats_sync(stats_path)
            return st if any(r.status_class == "2xx" for r in st.requests) else None

        stats = wait_for(counted, what="2xx counted in stats")
        assert stats.pid == proc.pid
        assert stats.generation == 1

        # an in-flight request survives SIGTERM and gets Connection: close
        result: dict[str, httpx.Response] = {}

        def slow() -> None:
            result["r"] = httpx.get(f"{base}/__slow/20000", headers={"host": "example.com"}, timeout=30)

        t = threading.Thread(target=slow)
        t.start()
        wait_for(lambda: any("__slow" in q["path"] for q in echo.requests), what="slow request upstream")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: _stats_sync(stats_path).draining, what="draining")
        echo.release_slow()
        t.join(timeout=15)
        assert result["r"].status_code == 200
        assert result["r"].headers["connection"] == "close"
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(write_fd)
        publisher.close()
    assert "Traceback" not in log.read_text()


def _stats_sync(path: str) -> WorkerStats:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return stats_decoder.decode(data)


def test_bad_settings_is_one_line_and_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "workers", "--settings", '{"index": "zero"}'],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert proc.returncode == 2
    assert "invalid --settings" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_port_in_use_is_one_line_and_exit_1(private_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        settings = WorkerSettings(
            index=0, shm_path=str(private_dir / "none"), stats_socket=str(private_dir / "s.sock"),
            bind="127.0.0.1", http_port=taken.getsockname()[1],
        )
        proc = subprocess.run(
            [sys.executable, "-m", "workers", "--settings", encode_settings(settings)],
            capture_output=True, text=True, timeout=30, check=False,
        )
    assert proc.returncode == 1
    assert "cannot start" in proc.stderr
    assert "Traceback" not in proc.stderr
