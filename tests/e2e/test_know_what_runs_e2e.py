"""What a person running fastingress sees, through a real process, on both HTTP/1.1 codecs
(the llhttp core and the h11 reference path): status lines with reason phrases (proxy and admin
port), error log lines that name the host, route, endpoint and request id, and absolute-form
requests routed by the URI's authority (RFC 9112 section 3.2.2), not by Host."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import manifests as m
from tests.support.process import Fastingress, free_port, run_fastingress, wait_for
from tests.support.upstream import EchoServer

NGINX = "nginx.ingress.kubernetes.io/"


@pytest.fixture(params=["llhttp", "h11"])
def proxy(
    request: pytest.FixtureRequest, tmp_path: Path, echo_servers: list[EchoServer]
) -> Iterator[Fastingress]:
    s0, s1, _ = echo_servers
    m.write(
        tmp_path / "app.yaml",
        m.service("web"),
        m.endpoint_slice("web", [s0.port]),
        m.service("other"),
        m.endpoint_slice("other", [s1.port]),
        m.service("empty"),
        m.service("dead"),
        m.endpoint_slice("dead", [free_port()]),
        m.ingress("web", [("app.test", "/", "Prefix", "web"), ("app.test", "/empty", "Prefix", "empty"),
                          ("app.test", "/dead", "Prefix", "dead")]),
        m.ingress("other", [("other.test", "/", "Prefix", "other")]),
        m.ingress("slow", [("slow.test", "/api", "Prefix", "web")],
                  annotations={NGINX + "proxy-read-timeout": "1"}),
    )
    extra = ("--http1-codec", request.param)
    with run_fastingress(tmp_path, manifests=[tmp_path / "app.yaml"], workers=1, extra=extra) as fi:
        yield fi


def _exchange(port: int, request: bytes) -> bytes:
    """One request on a new connection (``Connection: close``); everything the server sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _status_line(port: int, host: str, target: str, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    head = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    raw = _exchange(port, head.encode())
    return raw.split(b"\r\n", 1)[0]


def test_generated_answers_carry_reason_phrases(proxy: Fastingress) -> None:
    port = proxy.http_port
    assert _status_line(port, "nowhere.test", "/") == b"HTTP/1.1 404 Not Found"
    assert _status_line(port, "app.test", "/empty") == b"HTTP/1.1 503 Service Unavailable"
    assert _status_line(port, "app.test", "/dead") == b"HTTP/1.1 502 Bad Gateway"
    assert _status_line(port, "slow.test", "/api/__slow/5000") == b"HTTP/1.1 504 Gateway Timeout"
    assert _status_line(port, "app.test", "/", "X-Big: " + "a" * 70000) == (
        b"HTTP/1.1 431 Request Header Fields Too Large")
    assert _exchange(port, b"GARBAGE\r\n\r\n").split(b"\r\n", 1)[0] == b"HTTP/1.1 400 Bad Request"
    # a proxied answer keeps the upstream's own status line
    assert _status_line(port, "app.test", "/") == b"HTTP/1.1 200 OK"
    # the admin port too
    assert _status_line(proxy.admin_port, "x", "/readyz") == b"HTTP/1.1 200 OK"
    assert _status_line(proxy.admin_port, "x", "/nothing-here") == b"HTTP/1.1 404 Not Found"


def test_an_upstream_timeout_names_host_route_endpoint_and_request_id(
    proxy: Fastingress, echo_servers: list[EchoServer]
) -> None:
    line = _status_line(proxy.http_port, "slow.test", "/api/__slow/5000?x=1", "X-Request-ID: rid-4711")
    assert line == b"HTTP/1.1 504 Gateway Timeout"
    expected = (
        "GET /api/__slow/5000?x=1 host=slow.test route=Prefix:/api ingress=default/slow "
        f"endpoint=127.0.0.1:{echo_servers[0].port} request_id=rid-4711"
    )
    wait_for(lambda: expected in proxy.log(), timeout=5)
    (logged,) = [row for row in proxy.log().splitlines() if "rid-4711" in row and "upstream" in row]
    assert "WARNING" in logged and "upstream" in logged and expected in logged, logged


def test_absolute_form_routes_by_the_uri_authority_not_host(proxy: Fastingress) -> None:
    raw = _exchange(proxy.http_port, b"GET http://other.test/p?q=1 HTTP/1.1\r\nHost: app.test\r\n"
                                     b"Connection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    echoed = json.loads(body)
    assert echoed["server"] == "s1" and echoed["path"] == "/p?q=1"  # other.test's backend, origin form
    # ... and an authority no rule names is a 404, whatever Host says
    raw = _exchange(proxy.http_port, b"GET http://nowhere.test/ HTTP/1.1\r\nHost: app.test\r\n"
                                     b"Connection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 404 Not Found"), raw[:100]
