"""Demo backends (fastingress.demo): real sockets on 127.0.0.1, real clients (httpx, h11)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import h11
import httpx
import pytest
import trio

from fastingress.demo import parse_backend_spec, serve_demo_backends

from ..conftest import REPO


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, int]]:
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_demo_backends, [("frontend", 0), ("api", 0)])
        yield dict(bound)
        nursery.cancel_scope.cancel()


async def test_get_describes_request(backends: dict[str, int]) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(
            f"http://127.0.0.1:{backends['frontend']}/some/path?a=1&b=two",
            headers=[("X-Test", "one"), ("X-Test", "two")],
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-demo-backend"] == "frontend"
    info = response.json()
    assert list(info) == ["backend", "method", "path", "query", "headers", "body_bytes"]
    assert info["backend"] == "frontend"
    assert info["method"] == "GET"
    assert info["path"] == "/some/path"
    assert info["query"] == "a=1&b=two"
    assert info["headers"]["x-test"] == "one, two"
    assert info["headers"]["host"] == f"127.0.0.1:{backends['frontend']}"
    assert info["body_bytes"] == 0


async def test_each_backend_answers_with_its_name(backends: dict[str, int]) -> None:
    async with httpx.AsyncClient() as client:
        for name, port in backends.items():
            response = await client.get(f"http://127.0.0.1:{port}/")
            assert response.json()["backend"] == name


async def test_post_body_is_counted(backends: dict[str, int]) -> None:
    body = b"x" * 300_000
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://127.0.0.1:{backends['api']}/api/items", content=body)
        chunked = await client.post(
            f"http://127.0.0.1:{backends['api']}/api/items", content=_chunks([b"abc", b"defg"])
        )
    assert response.json()["body_bytes"] == len(body)
    assert response.json()["method"] == "POST"
    assert chunked.json()["body_bytes"] == 7
    assert chunked.json()["headers"]["transfer-encoding"] == "chunked"


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _exchange(stream: trio.SocketStream, conn: h11.Connection, request: h11.Request,
                    body: bytes = b"") -> tuple[h11.Response, bytes]:
    data = conn.send(request) or b""
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)
    response: h11.Response | None = None
    received = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            received += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response, received
        else:
            raise AssertionError(f"unexpected event {event!r}")


async def test_keep_alive_serves_many_requests_on_one_connection(backends: dict[str, int]) -> None:
    port = backends["api"]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    host = ("Host", f"127.0.0.1:{port}")
    for i in range(3):
        body = b"y" * i
        request = h11.Request(method="PUT", target=f"/n/{i}", headers=[host, ("Content-Length", str(i))])
        response, received = await _exchange(stream, conn, request, body)
        assert response.status_code == 200
        info = json.loads(received)
        assert (info["path"], info["body_bytes"]) == (f"/n/{i}", i)
        assert conn.our_state is h11.DONE and conn.their_state is h11.DONE
        conn.start_next_cycle()
    # HEAD: headers only, same connection still usable afterwards.
    response, received = await _exchange(stream, conn, h11.Request(method="HEAD", target="/", headers=[host]))
    assert response.status_code == 200 and received == b""
    conn.start_next_cycle()
    request = h11.Request(method="GET", target="/last", headers=[host, ("Connection", "close")])
    response, received = await _exchange(stream, conn, request)
    assert json.loads(received)["path"] == "/last"
    assert await stream.receive_some(10) == b""  # server closed as asked
    await stream.aclose()


async def test_malformed_request_gets_400_and_close(backends: dict[str, int]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", backends["frontend"])
    await stream.send_all(b"NOT A REQUEST LINE\r\n\r\n")
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 400 ")
    await stream.aclose()
    # The backend still serves other clients.
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://127.0.0.1:{backends['frontend']}/")).status_code == 200


async def test_oversized_headers_get_431(backends: dict[str, int]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", backends["api"])
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    received = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 431 ")
    await stream.aclose()


async def test_idle_connection_is_closed_after_timeout() -> None:
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(lambda task_status: serve_demo_backends(
            [("idle", 0)], idle_timeout=0.2, task_status=task_status))
        stream = await trio.open_tcp_stream("127.0.0.1", bound[0][1])
        with trio.fail_after(5):
            assert await stream.receive_some(10) == b""
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_port_in_use_raises_oserror_naming_backend() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"backend busy: cannot listen on 127.0.0.1:{port}"):
            await serve_demo_backends([("ok", 0), ("busy", port)])


@pytest.mark.parametrize("text", ["api", "api=", "=80", "api=x", "api=70000", "api=-1"])
def test_parse_backend_spec_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="NAME=PORT"):
        parse_backend_spec(text)


def test_parse_backend_spec() -> None:
    assert parse_backend_spec("docs=9003") == ("docs", 9003)


def _run_cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fastingress.demo", *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_cli_serves_until_terminated() -> None:
    proc = _run_cli("--backend", "cli=0")
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # printed once the listener accepts connections
        assert line.startswith("demo backend cli listening on http://127.0.0.1:"), line
        port = int(line.rsplit(":", 1)[1])
        response = httpx.get(f"http://127.0.0.1:{port}/hello?x=1")
        assert response.json()["backend"] == "cli"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_bad_flag_is_one_line_exit_2() -> None:
    proc = _run_cli("--backend", "nonsense")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].endswith("expected NAME=PORT (port 0..65535), got 'nonsense'")
    assert "Traceback" not in err


def test_cli_port_in_use_is_one_line_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run_cli("--backend", f"busy={port}")
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert err.strip() == (
        f"python -m fastingress.demo: error: backend busy: cannot listen on 127.0.0.1:{port}: "
        "Address already in use"
    )
