"""The HTTP/1.1 data path through a real fastingress process: bodies, headers, errors,
timeouts, path normalisation, WebSockets."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.support import manifests as m
from tests.support.process import Fastingress, free_port, run_fastingress
from tests.support.upstream import EchoServer, WebSocketEchoServer

NGINX = "nginx.ingress.kubernetes.io/"


@pytest.fixture
def proxy(
    tmp_path: Path, echo_servers: list[EchoServer], ws_server: WebSocketEchoServer
) -> Iterator[Fastingress]:
    s0, s1, _ = echo_servers
    m.write(
        tmp_path / "app.yaml",
        m.service("web"),
        m.endpoint_slice("web", [s0.port]),
        m.service("admin"),
        m.endpoint_slice("admin", [s1.port]),
        m.service("empty"),
        m.service("dead"),
        m.endpoint_slice("dead", [free_port()]),
        m.service("ws"),
        m.endpoint_slice("ws", [ws_server.port]),
        m.ingress(
            "web",
            [
                ("app.test", "/", "Prefix", "web"),
                ("app.test", "/api", "Prefix", "web"),
                ("app.test", "/admin", "Exact", "admin"),
                ("app.test", "/empty", "Prefix", "empty"),
                ("app.test", "/dead", "Prefix", "dead"),
                ("ws.test", "/", "Prefix", "ws"),
            ],
        ),
        m.ingress(
            "limits",
            [("limits.test", "/", "Prefix", "web")],
            annotations={NGINX + "proxy-body-size": "1k", NGINX + "proxy-read-timeout": "1"},
        ),
        m.ingress(
            "big", [("big.test", "/", "Prefix", "web")], annotations={NGINX + "proxy-body-size": "20m"}
        ),
    )
    with run_fastingress(tmp_path, manifests=[tmp_path / "app.yaml"]) as fi:
        yield fi


def _get(
    fi: Fastingress, host: str, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
    content: bytes | Iterator[bytes] | None = None,
) -> httpx.Response:
    hdrs = headers or {"Host": host}
    return httpx.request(method, fi.base + path, headers=hdrs, content=content, timeout=30)


def _raw(fi: Fastingress, data: bytes, *, read_until_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", fi.http_port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if not read_until_close:
                break
        return b"".join(chunks)


def test_forwarded_headers_and_hop_by_hop(proxy: Fastingress) -> None:
    r = _get(
        proxy,
        "app.test",
        "/api/echo?x=1",
        headers={"Host": "app.test", "Connection": "keep-alive, X-Private", "X-Private": "secret",
                 "Keep-Alive": "timeout=5", "X-Request-ID": "abc123"},
    )
    assert r.status_code == 200
    assert r.headers["server"] == "fastingress"
    body = r.json()
    headers = {k.lower(): v for k, v in body["headers"]}
    assert body["path"] == "/api/echo?x=1"
    assert headers["host"] == "app.test"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "app.test"
    assert headers["x-forwarded-port"] == str(proxy.http_port)
    assert headers["x-request-id"] == "abc123"
    assert "x-private" not in headers and "keep-alive" not in headers
    generated = {k.lower(): v for k, v in _get(proxy, "app.test", "/").json()["headers"]}["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0


def test_path_normalisation_cannot_escape_a_route(proxy: Fastingress) -> None:
    raw = _raw(proxy, b"GET /api/../admin HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200")
    assert b'"server": "s1"' in raw and b'"path": "/admin"' in raw
    raw = _raw(proxy, b"GET /api/%2e%2e/admin HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert b'"server": "s1"' in raw
    raw = _raw(proxy, b"GET /api%2F..%2Fadmin HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400")


def test_error_statuses(proxy: Fastingress) -> None:
    r = _get(proxy, "nowhere.test", "/")
    assert r.status_code == 404 and len(r.content) < 100
    assert r.headers["content-type"].startswith("text/plain")
    assert _get(proxy, "app.test", "/empty").status_code == 503
    assert _get(proxy, "app.test", "/dead").status_code == 502
    t0 = time.monotonic()
    assert _get(proxy, "limits.test", "/__slow/5000").status_code == 504
    assert time.monotonic() - t0 < 4
    assert _get(proxy, "app.test", "/", headers={"Host": "app.test", "X-Big": "a" * 70000}).status_code == 431
    raw = _raw(proxy, b"GARBAGE\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400")


def test_body_size_limits(proxy: Fastingress) -> None:
    assert _get(proxy, "limits.test", "/", method="POST", content=b"x" * 1000).status_code == 200
    assert _get(proxy, "limits.test", "/", method="POST", content=b"x" * 2000).status_code == 413
    # Default limit is 1 MiB, like nginx; an annotation raises it.
    big = os.urandom(1536 * 1024)
    assert _get(proxy, "app.test", "/", method="POST", content=big).status_code == 413
    r = _get(proxy, "big.test", "/", method="POST", content=big)
    assert r.status_code == 200 and r.json()["body_sha256"] == hashlib.sha256(big).hexdigest()

    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"y" * 600

    assert _get(proxy, "limits.test", "/", method="POST", content=chunks()).status_code == 413


def test_streamed_bodies_both_ways(proxy: Fastingress) -> None:
    payload = os.urandom(3 * 1024 * 1024)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 65536):
            yield payload[i : i + 65536]

    r = _get(proxy, "big.test", "/upload", method="PUT", content=chunks())
    assert r.status_code == 200
    assert r.json()["body_bytes"] == len(payload)
    assert r.json()["body_sha256"] == hashlib.sha256(payload).hexdigest()
    with httpx.stream("GET", proxy.base + "/__stream/200/32768", headers={"Host": "app.test"}) as r:
        total = sum(len(c) for c in r.iter_bytes())
    assert r.status_code == 200 and total == 200 * 32768


def test_head_and_keepalive(proxy: Fastingress) -> None:
    with httpx.Client(base_url=proxy.base, headers={"Host": "app.test"}) as c:
        r = c.head("/x")
        assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 0
        for _ in range(20):
            assert c.get("/x").status_code == 200


def test_expect_100_continue(proxy: Fastingress) -> None:
    with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=10) as s:
        s.sendall(
            b"POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100")
        s.sendall(b"hello")
        data = b""
        while b'"body_bytes"' not in data:
            data += s.recv(65536)
        assert data.startswith(b"HTTP/1.1 200") and b'"body_bytes": 5' in data
    # Too large by Content-Length: 413 at once, the body is never asked for.
    with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=10) as s:
        s.sendall(
            b"POST /up HTTP/1.1\r\nHost: limits.test\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 413")


def test_websocket_relay(proxy: Fastingress) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=10)
    with ws_connect("ws://ws.test/chat", sock=sock, open_timeout=10) as ws:
        for i in range(5):
            ws.send(f"hello {i}")
            assert ws.recv(timeout=10) == f"hello {i}"
        ws.send(b"\x00" * 100000)
        assert ws.recv(timeout=10) == b"\x00" * 100000
