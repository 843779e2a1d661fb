"""HTTP/2 through a real fastingress process: h2c prior knowledge on the plain port (the
``h2`` library and ``nghttp``), ALPN h2 on the HTTPS port (httpx with http2 and a trustme CA),
GOAWAY on SIGTERM with a stream in flight."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shutil
import signal
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import trustme
import yaml

from tests.support import manifests as m
from tests.support.h2client import H2Client
from tests.support.process import Fastingress, run_fastingress
from tests.support.upstream import EchoServer

pytestmark = pytest.mark.timeout(60)


def _tls_secret(name: str, cert: trustme.LeafCert) -> str:
    doc = {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": "default"},
        "data": {
            "tls.crt": base64.b64encode(cert.cert_chain_pems[0].bytes()).decode(),
            "tls.key": base64.b64encode(cert.private_key_pem.bytes()).decode(),
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _with_tls(ingress: str, hosts: list[str], secret: str) -> str:
    doc = yaml.safe_load(ingress)
    doc["spec"]["tls"] = [{"hosts": hosts, "secretName": secret}]
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def upstream() -> Iterator[EchoServer]:
    with EchoServer("s0") as server:
        yield server


def _start(
    tmp_path: Path, upstream: EchoServer, ca: trustme.CA
) -> contextlib.AbstractContextManager[Fastingress]:
    m.write(
        tmp_path / "app.yaml",
        m.service("web"),
        m.endpoint_slice("web", [upstream.port]),
        _tls_secret("app-tls", ca.issue_cert("app.test")),
        m.ingress("plain", [("plain.test", "/", "Prefix", "web")]),
        _with_tls(m.ingress("secure", [("app.test", "/", "Prefix", "web")]), ["app.test"], "app-tls"),
    )
    return run_fastingress(tmp_path, manifests=[tmp_path / "app.yaml"], workers=1)


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, upstream: EchoServer, ca: trustme.CA
) -> Iterator[Fastingress]:
    """One process for the tests that leave it running."""
    with _start(tmp_path_factory.mktemp("h2"), upstream, ca) as fi:
        yield fi


def _echo(body: bytes) -> dict[str, object]:
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


def _headers(echo: dict[str, object]) -> dict[str, str]:
    pairs = echo["headers"]
    assert isinstance(pairs, list)
    return {k.lower(): v for k, v in pairs}


async def test_h2c_prior_knowledge_multiplexed(proxy: Fastingress) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.http_port)
    client = H2Client(stream)
    payload = bytes(range(256)) * 4096  # 1 MiB, more than any window
    gets = [client.open(b"/api/../item/%d?x=1" % i, authority=b"plain.test",
                        headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2")]) for i in range(8)]
    post = client.open(b"/upload", method=b"POST", authority=b"plain.test", end=False)
    await client.flush()
    sent = 0
    while sent < len(payload):  # as the windows allow
        room = min(client.conn.local_flow_control_window(post), 16384, len(payload) - sent)
        if room <= 0:
            assert await client.receive_once()
            continue
        client.conn.send_data(post, payload[sent:sent + room])
        sent += room
        await client.flush()
    client.conn.end_stream(post)
    with trio.fail_after(20):
        await client.collect([*gets, post])
    for i, sid in enumerate(gets):
        r = client.responses[sid]
        assert r.status == 200, r
        echo = _echo(r.body)
        assert echo["path"] == f"/item/{i}?x=1"
        headers = _headers(echo)
        assert headers["host"] == "plain.test"
        assert headers["cookie"] == "a=1; b=2"
        assert headers["x-forwarded-proto"] == "http"
    echo = _echo(client.responses[post].body)
    assert echo["body_bytes"] == len(payload)
    assert echo["body_sha256"] == hashlib.sha256(payload).hexdigest()
    await stream.aclose()


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp (nghttp2-client) not installed")
def test_nghttp_h2c(proxy: Fastingress) -> None:
    url = f"http://127.0.0.1:{proxy.http_port}/hello"
    out = subprocess.run(
        ["nghttp", "-v", "-H", ":authority: plain.test", url, url + "/2"],
        capture_output=True, timeout=20, check=True,
    ).stdout.decode()
    assert out.count(":status: 200") == 2, out
    assert '"path": "/hello"' in out and '"path": "/hello/2"' in out


def test_alpn_h2_with_httpx(proxy: Fastingress, ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with httpx.Client(http2=True, verify=context, timeout=20) as client:
        url = f"https://127.0.0.1:{proxy.https_port}/x/y?z=1"
        responses = [
            client.get(url, headers={"host": "app.test"}, extensions={"sni_hostname": "app.test"})
            for _ in range(3)
        ]
        posted = client.post(url, content=b"q" * 100_000, headers={"host": "app.test"},
                             extensions={"sni_hostname": "app.test"})
    for r in (*responses, posted):
        assert r.status_code == 200
        assert r.http_version == "HTTP/2"
        headers = _headers(r.json())
        assert headers["x-forwarded-proto"] == "https"
        assert headers["host"] == "app.test"
    assert responses[0].json()["path"] == "/x/y?z=1"
    assert posted.json()["body_bytes"] == 100_000


async def test_goaway_on_sigterm_finishes_the_stream_in_flight(
    tmp_path: Path, upstream: EchoServer, ca: trustme.CA
) -> None:
    with _start(tmp_path, upstream, ca) as proxy:
        await _sigterm_with_a_stream_in_flight(proxy, upstream)


async def _sigterm_with_a_stream_in_flight(proxy: Fastingress, upstream: EchoServer) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.http_port)
    client = H2Client(stream)
    assert (await client.request(b"/warm", authority=b"plain.test")).status == 200
    slow = client.open(b"/__slow/1500", authority=b"plain.test")
    await client.flush()
    with trio.fail_after(10):  # poll (another process): the request reached the upstream
        while not any("__slow" in str(r.get("path")) for r in upstream.requests):
            await trio.sleep(0.02)
    proxy.signal(signal.SIGTERM)
    with trio.fail_after(20):
        await client.until_closed()
    assert client.goaway is not None
    assert client.goaway.error_code == 0
    assert client.goaway.last_stream_id == slow
    r = client.responses[slow]
    assert r.status == 200 and r.ended
    assert _echo(r.body)["path"] == "/__slow/1500"


def test_a_connection_error_lingers_so_the_client_reads_goaway(proxy: Fastingress) -> None:
    """After a GOAWAY for a connection error, what the client still writes is read and discarded
    (nginx's lingering close): its writes do not fail with a broken pipe, and it reads the GOAWAY."""
    import socket

    from workers.http2 import PREFACE

    with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=10) as sock:
        # The preface, an empty SETTINGS, then a DATA frame on stream 0: a PROTOCOL_ERROR.
        settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        sock.sendall(PREFACE + settings + b"\x00\x00\x04\x00\x00\x00\x00\x00\x00abcd")
        junk = b"\x00\x00\x00\x00\x00\x00\x00\x00\x01" * 7000  # more frames the client "still" sends
        for _ in range(40):
            sock.sendall(junk)  # a reset would raise here
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while data := sock.recv(65536):
            received += data
    goaways = [payload for kind, payload in _frames(received) if kind == 7]
    assert goaways and int.from_bytes(goaways[-1][4:8], "big") == 1  # PROTOCOL_ERROR


def _frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each whole HTTP/2 frame in ``data``."""
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        yield data[pos + 3], data[pos + 9:pos + 9 + length]
        pos += 9 + length
