"""Lingering close (nginx's ``lingering_close``): when fastingress answers before it has read the
whole request (413 over ``proxy-body-size``), it keeps reading and discarding what the client still
sends, for a bounded time, so that the client reads the answer instead of a reset — over plain
HTTP and over TLS, on both HTTP/1.1 data paths."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import httpx
import pytest

from tests.support import manifests as m
from tests.support.process import Fastingress, run_fastingress
from tests.support.upstream import EchoServer

NGINX = "nginx.ingress.kubernetes.io/"
LIMIT = 20 * 1024 * 1024
UPLOAD = 21 * 1024 * 1024  # just past the limit, as in the issue


@pytest.fixture(scope="module", params=["llhttp", "h11"])
def proxy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fastingress]:
    tmp = tmp_path_factory.mktemp("linger")
    with EchoServer("up") as up:
        m.write(
            tmp / "app.yaml",
            m.service("web"), m.endpoint_slice("web", [up.port]),
            m.ingress("big", [("big.test", "/", "Prefix", "web")],
                      annotations={NGINX + "proxy-body-size": "20m"}),
        )
        with run_fastingress(tmp, manifests=[tmp / "app.yaml"], extra=("--http1-codec", request.param)) as fi:
            yield fi


def _chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    block = b"z" * size
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield block[:n]
        sent += n


def _clients(fi: Fastingress) -> list[tuple[str, httpx.Client]]:
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    return [
        ("http", httpx.Client(base_url=fi.base, timeout=30)),
        ("https", httpx.Client(base_url=f"https://127.0.0.1:{fi.https_port}", verify=insecure, timeout=30)),
    ]


def test_upload_past_the_limit_reads_413_not_a_reset(proxy: Fastingress) -> None:
    for scheme, client in _clients(proxy):
        with client:
            # Content-Length says too much: answered at once, while the client still sends 21 MiB.
            r = client.post("/up", headers={"Host": "big.test"}, content=b"y" * UPLOAD)
            assert r.status_code == 413, scheme
            assert r.headers["connection"] == "close"
            # No Content-Length (chunked): the limit is crossed in the middle of the body.
            r = client.post("/up", headers={"Host": "big.test"}, content=_chunks(UPLOAD))
            assert r.status_code == 413, scheme
            # Within the limit, the same connection pool still works.
            r = client.post("/up", headers={"Host": "big.test"}, content=b"y" * 1024)
            assert r.status_code == 200, scheme
            assert r.json()["body_bytes"] == 1024


def _connect(fi: Fastingress, scheme: str) -> socket.socket:
    port = fi.http_port if scheme == "http" else fi.https_port
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx.wrap_socket(sock, server_hostname="big.test")
    return sock


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_client_that_writes_everything_first_still_reads_413(proxy: Fastingress, scheme: str) -> None:
    """A naive client (write the whole request, then read) is the case a plain close breaks."""
    with _connect(proxy, scheme) as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: big.test\r\nContent-Length: %d\r\n\r\n" % UPLOAD)
        block = b"q" * 65536
        for _ in range(UPLOAD // len(block)):
            sock.sendall(block)  # a reset would raise here (BrokenPipe / ConnectionReset / SSLEOFError)
        answer = b""
        while True:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413 Payload Too Large\r\n") or answer.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in answer.lower()
