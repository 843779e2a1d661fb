"""Admin endpoints: the h11 server over real sockets, stats fetching, metrics and readiness."""

from __future__ import annotations

import socket
from pathlib import Path

import h11
import httpx
import trio
import trio.testing

from fastingress.supervisor import admin
from fastingress.supervisor.metrics import SupervisorView, Totals, WorkerView, readiness, render_metrics
from fastingress.supervisor.procs import fetch_stats
from workers.config import DURATION_BUCKETS, RequestCount, WorkerStats, stats_encoder


def stats(index: int, generation: int = 1, **kw: object) -> WorkerStats:
    buckets = tuple(min(i, 3) for i in range(len(DURATION_BUCKETS) + 1))
    return WorkerStats(
        index=index,
        pid=1000 + index,
        generation=generation,
        requests=(RequestCount("2xx", 'we"ird\\host\n', "ns/ing", "ns/svc:80", 5),),
        duration_buckets=buckets,
        duration_sum=0.125,
        duration_count=3,
        **kw,  # type: ignore[arg-type]
    )


# -- pure: readiness and metrics ----------------------------------------------------------


def test_readiness_rules() -> None:
    w0 = WorkerView(0, 10, stats(0))
    assert readiness(SupervisorView(0, (w0,))) == (False, "no snapshot published yet")
    assert readiness(SupervisorView(1, (WorkerView(0, None, None),))) == (False, "no worker running")
    assert readiness(SupervisorView(1, (w0, WorkerView(1, 11, None))))[0] is False
    not_yet = readiness(SupervisorView(1, (w0, WorkerView(1, 11, stats(1, generation=0)))))
    assert not_yet == (False, "worker 1 (pid 11) has no snapshot yet")
    # A slot being restarted (no process) does not block readiness of the others.
    assert readiness(SupervisorView(2, (w0, WorkerView(1, None, None)))) == (True, "1 workers ready")


def test_render_metrics_aggregates_and_escapes() -> None:
    view = SupervisorView(
        generation=7,
        workers=(WorkerView(0, 10, stats(0, upstream_errors=2, spliced_bodies=2, spliced_bytes=5 << 20), 1),
                 WorkerView(1, None, None, 2)),
        config_errors=3,
        reload_failures=4,
    )
    retired = Totals()
    retired.add(stats(1, snapshot_errors=1, spliced_bodies=1, spliced_bytes=1 << 20))
    text = render_metrics(view, retired.merged([s for w in view.live if (s := w.stats)]))
    lines = text.splitlines()
    assert (
        'fastingress_requests_total{status_class="2xx",host="we\\"ird\\\\host\\n",'
        'ingress="ns/ing",service="ns/svc:80"} 10'
    ) in lines
    assert 'fastingress_request_duration_seconds_bucket{le="0.001"} 0' in lines
    assert 'fastingress_request_duration_seconds_bucket{le="0.005"} 4' in lines
    assert 'fastingress_request_duration_seconds_bucket{le="+Inf"} 6' in lines
    assert "fastingress_request_duration_seconds_sum 0.25" in lines
    assert "fastingress_request_duration_seconds_count 6" in lines
    assert "fastingress_snapshot_generation 7" in lines
    assert 'fastingress_worker_snapshot_generation{worker="0"} 1' in lines
    assert not any('worker="1"' in line for line in lines)
    assert "fastingress_config_errors 3" in lines
    assert "fastingress_config_reload_failures_total 4" in lines
    assert "fastingress_upstream_errors_total 2" in lines
    assert "fastingress_snapshot_decode_errors_total 1" in lines
    assert "fastingress_spliced_bodies_total 3" in lines
    assert f"fastingress_spliced_bytes_total {6 << 20}" in lines
    assert "fastingress_workers 1" in lines
    assert "fastingress_worker_restarts_total 3" in lines
    # Every sample belongs to a family announced with HELP and TYPE.
    families = {line.split()[2] for line in lines if line.startswith("# TYPE")}
    for line in lines:
        if not line.startswith("#"):
            name = line.split("{")[0].split()[0]
            base = name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            assert name in families or base in families, line


def test_histogram_of_wrong_length_is_ignored() -> None:
    totals = Totals()
    totals.add(WorkerStats(index=0, pid=1, generation=1, duration_buckets=(1, 2), duration_count=2))
    assert totals.duration_count == 0
    assert sum(totals.buckets) == 0


# -- the h11 admin server over a real socket -----------------------------------------------


async def fake_handler(method: str, path: str, query: str) -> admin.Response:
    if path == "/boom":
        raise RuntimeError("bug")
    if path == "/healthz":
        return admin.text(200, "ok\n")
    return admin.text(404, "404 Not Found\n")


async def start_admin(nursery: trio.Nursery) -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(admin.serve, listeners, fake_handler)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_admin_server_keepalive_head_and_errors() -> None:
    async with trio.open_nursery() as nursery:
        port = await start_admin(nursery)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            first = await client.get("/healthz")
            second = await client.get("/healthz?verbose=1")  # same pooled connection
            assert (first.status_code, first.text) == (200, "ok\n")
            assert second.status_code == 200
            assert first.headers["content-type"] == "text/plain; charset=utf-8"
            head = await client.head("/healthz")
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["content-length"] == "3"
            post = await client.post("/healthz", content=b"x" * 100)
            assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD")
            assert (await client.get("/missing")).status_code == 404
            assert (await client.get("/boom")).status_code == 500
        nursery.cancel_scope.cancel()


async def test_admin_server_rejects_garbage_and_survives() -> None:
    async with trio.open_nursery() as nursery:
        port = await start_admin(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some(4096):
                data += chunk
        assert data.startswith(b"HTTP/1.1 400 ")
        assert b"connection: close" in data.lower()
        # Oversized head -> 431, connection closed.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some(4096):
                data += chunk
        assert data.startswith(b"HTTP/1.1 431 ")
        # Still serving.
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        nursery.cancel_scope.cancel()


async def test_admin_server_closes_idle_connections(mock_clock: trio.testing.MockClock) -> None:
    server, client = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(admin.handle_connection, server, fake_handler)
        conn = h11.Connection(h11.CLIENT)
        await client.send_all(
            conn.send(h11.Request(method="GET", target="/healthz", headers=[("Host", "x")]))
        )
        await client.send_all(conn.send(h11.EndOfMessage()))
        mock_clock.autojump_threshold = 0
        data = b""
        while chunk := await client.receive_some(4096):
            data += chunk
        # Answered, then the connection was closed after IDLE_TIMEOUT of silence.
        assert data.startswith(b"HTTP/1.1 200 ")
        assert trio.current_time() >= admin.IDLE_TIMEOUT


# -- stats sockets served by the test ---------------------------------------------------------


async def serve_unix(path: Path, payload: bytes | None, nursery: trio.Nursery) -> None:
    """A fake worker stats socket: answer ``payload`` and close (None: accept and hang)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    sock.listen(8)
    listener = trio.SocketListener(sock)

    async def handle(stream: trio.SocketStream) -> None:
        if payload is None:
            await trio.sleep_forever()
        await stream.send_all(payload)

    await nursery.start(trio.serve_listeners, handle, [listener])


async def test_fetch_stats_real_bytes_garbage_and_silence(tmp_path: Path) -> None:
    good = stats(3, generation=9)
    async with trio.open_nursery() as nursery:
        await serve_unix(tmp_path / "good.sock", stats_encoder.encode(good), nursery)
        await serve_unix(tmp_path / "garbage.sock", b"\xc1 not msgpack", nursery)
        await serve_unix(tmp_path / "silent.sock", None, nursery)
        assert await fetch_stats(str(tmp_path / "good.sock"), 2.0) == good
        assert await fetch_stats(str(tmp_path / "garbage.sock"), 2.0) is None
        assert await fetch_stats(str(tmp_path / "missing.sock"), 2.0) is None
        with trio.fail_after(5):
            assert await fetch_stats(str(tmp_path / "silent.sock"), 0.1) is None
        nursery.cancel_scope.cancel()
