"""Upstream protocols through a real fastingress process: HTTPS upstreams (SNI, Host,
verification), H2C / GRPC / GRPCS upstreams (multiplexing, trailers) and gRPC error status.

One fastingress process serves every test of the module (its manifests declare all the
cases as separate hosts), so the module costs one start-up.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h11
import httpx
import pytest
import trio
import trustme
import yaml

from tests.support import manifests as m
from tests.support.h2client import H2Client
from tests.support.process import Fastingress, free_port, run_fastingress
from tests.support.tls_upstreams import H2EchoServer, HttpsEchoServer, server_context
from tests.support.upstream import EchoServer

NGINX = "nginx.ingress.kubernetes.io/"
SEED_HOST = "projectdomain.com"
API_NAME = "project-domain.com"


class SilentServer:
    """Accepts connections and never answers a request (an upstream that hangs); with
    ``h2``, it first sends an empty HTTP/2 SETTINGS frame, so the connection is set up."""

    def __init__(self, *, h2: bool = False) -> None:
        self._h2 = h2
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            if self._h2:
                conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self._sock.close()
        for conn in self._conns:
            conn.close()
        self._thread.join(timeout=5)


def ca_secret(name: str, ca: trustme.CA) -> str:
    pem = ca.cert_pem.bytes()
    return f"""\
apiVersion: v1
kind: Secret
metadata:
  name: {name}
  namespace: default
type: Opaque
data:
  ca.crt: {base64.b64encode(pem).decode()}
"""


def tls_ingress(name: str, host: str, service: str, port: int, **annotations: str) -> str:
    return m.ingress(
        name,
        [(host, "/", "Prefix", service)],
        annotations={NGINX + k.replace("_", "-"): v for k, v in annotations.items()},
        service_port=port,
    )


def tls_secret(name: str, cert: trustme.LeafCert) -> str:
    crt = base64.b64encode(b"".join(blob.bytes() for blob in cert.cert_chain_pems)).decode()
    key = base64.b64encode(cert.private_key_pem.bytes()).decode()
    return f"""\
apiVersion: v1
kind: Secret
metadata:
  name: {name}
  namespace: default
type: kubernetes.io/tls
data:
  tls.crt: {crt}
  tls.key: {key}
"""


def with_tls(ingress_yaml: str, host: str, secret: str) -> str:
    doc = yaml.safe_load(ingress_yaml)
    doc["spec"]["tls"] = [{"hosts": [host], "secretName": secret}]
    return yaml.safe_dump(doc, sort_keys=False)


@dataclass
class Deployment:
    fi: Fastingress
    ca: trustme.CA
    frontend: EchoServer
    api: HttpsEchoServer
    h2c: H2EchoServer
    h2tls: H2EchoServer


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("upstream-protocols")
    ca, other_ca = trustme.CA(), trustme.CA()
    api_ctx = server_context(ca, API_NAME)
    h2_ctx = server_context(ca, "grpc.internal", alpn=("h2",))
    with (
        EchoServer("frontend") as frontend,
        HttpsEchoServer("api", api_ctx) as api,
        H2EchoServer() as h2c,
        H2EchoServer(h2_ctx) as h2tls,
        SilentServer(h2=True) as silent,
        SilentServer() as mute,
    ):
        dead = free_port()
        https = {"backend_protocol": "HTTPS"}
        docs = [
            ca_secret("good-ca", ca),
            ca_secret("other-ca", other_ca),
            # -- the seed use case: two Ingresses on one host ---------------------------
            m.service("frontend"),
            m.endpoint_slice("frontend", [frontend.port]),
            m.external_service("external-api", "localhost", port=api.port),
            tls_secret("projectdomain-tls", ca.issue_cert(SEED_HOST)),
            with_tls(m.ingress("frontend", [(SEED_HOST, "/", "Prefix", "frontend")]), SEED_HOST,
                     "projectdomain-tls"),
            m.ingress(
                "external-api",
                [(SEED_HOST, "/api", "Prefix", "external-api")],
                annotations={
                    NGINX + "backend-protocol": "HTTPS",
                    NGINX + "upstream-vhost": API_NAME,
                    NGINX + "proxy-body-size": "20m",
                },
                service_port=api.port,
            ),
            # -- HTTPS upstream by endpoint (IP): verification cases --------------------
            m.service("api", port=api.port),
            m.endpoint_slice("api", [api.port]),
            tls_ingress("plain-ip", "noverify.test", "api", api.port, **https),
            tls_ingress("verify-ok", "verify-ok.test", "api", api.port, **https, proxy_ssl_verify="on",
                        proxy_ssl_secret="default/good-ca", proxy_ssl_name=API_NAME),
            tls_ingress("verify-bad-ca", "verify-bad-ca.test", "api", api.port, **https,
                        proxy_ssl_verify="on", proxy_ssl_secret="default/other-ca", proxy_ssl_name=API_NAME),
            tls_ingress("verify-bad-name", "verify-bad-name.test", "api", api.port, **https,
                        proxy_ssl_verify="on", proxy_ssl_secret="default/good-ca",
                        proxy_ssl_name="wrong.example"),
            tls_ingress("no-sni", "no-sni.test", "api", api.port, **https, upstream_vhost=API_NAME,
                        proxy_ssl_server_name="off"),
            # -- HTTP/2 upstreams -----------------------------------------------------------
            m.service("h2c", port=h2c.port),
            m.endpoint_slice("h2c", [h2c.port]),
            tls_ingress("h2c", "h2c.test", "h2c", h2c.port, backend_protocol="H2C"),
            tls_ingress("grpc", "grpc.test", "h2c", h2c.port, backend_protocol="GRPC"),
            m.service("grpcs", port=h2tls.port),
            m.endpoint_slice("grpcs", [h2tls.port]),
            tls_ingress("grpcs", "grpcs.test", "grpcs", h2tls.port, backend_protocol="GRPCS",
                        proxy_ssl_verify="on", proxy_ssl_secret="default/good-ca",
                        proxy_ssl_name="grpc.internal"),
            m.service("dead", port=dead),
            m.endpoint_slice("dead", [dead]),
            tls_ingress("grpc-dead", "grpc-dead.test", "dead", dead, backend_protocol="GRPC"),
            tls_ingress("https-dead", "https-dead.test", "dead", dead, backend_protocol="HTTPS"),
            m.service("silent", port=silent.port),
            m.endpoint_slice("silent", [silent.port]),
            tls_ingress("grpc-silent", "grpc-silent.test", "silent", silent.port, backend_protocol="GRPC",
                        proxy_read_timeout="1"),
            m.service("mute", port=mute.port),
            m.endpoint_slice("mute", [mute.port]),
            tls_ingress("grpc-mute", "grpc-mute.test", "mute", mute.port, backend_protocol="GRPC",
                        proxy_connect_timeout="1"),
        ]
        m.write(tmp / "app.yaml", *docs)
        with run_fastingress(tmp, manifests=[tmp / "app.yaml"]) as fi:
            yield Deployment(fi, ca, frontend, api, h2c, h2tls)


def get(d: Deployment, host: str, path: str) -> httpx.Response:
    return httpx.get(d.fi.base + path, headers={"host": host}, timeout=10)


def header_map(response: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.json()["headers"]}


# ---- HTTPS upstreams ---------------------------------------------------------------------


def seed_client(d: Deployment, *, http2: bool = False) -> httpx.Client:
    """An HTTPS client for https://projectdomain.com/ (SNI and Host), trusting the test CA."""
    ctx = ssl.create_default_context()
    d.ca.configure_trust(ctx)
    return httpx.Client(
        base_url=f"https://127.0.0.1:{d.fi.https_port}", headers={"host": SEED_HOST}, verify=ctx,
        timeout=10, http2=http2,
    )


def seed_get(client: httpx.Client, path: str, **kw: Any) -> httpx.Response:
    return client.request(kw.pop("method", "GET"), path, extensions={"sni_hostname": SEED_HOST}, **kw)


def test_seed_case_plain_http_redirects_to_https(deployment: Deployment) -> None:
    r = get(deployment, SEED_HOST, "/api/users")
    assert r.status_code == 308
    assert r.headers["location"].startswith(f"https://{SEED_HOST}")


def test_seed_case_frontend_and_external_https_api(deployment: Deployment) -> None:
    d = deployment
    with seed_client(d) as client:
        front = seed_get(client, "/")
        assert front.status_code == 200
        assert front.json()["server"] == "frontend"
        handshakes = len(d.api.sni)
        for i in range(3):  # one client connection: the worker's pooled TLS connection is reused
            r = seed_get(client, f"/api/users?page={i}")
            assert r.status_code == 200, r.text
            assert r.json()["server"] == "api"
            assert r.json()["path"] == f"/api/users?page={i}"
            headers = header_map(r)
            assert headers["host"] == API_NAME
            assert headers["x-forwarded-host"] == SEED_HOST
            assert headers["x-forwarded-proto"] == "https"
        assert d.api.sni[handshakes:] == [API_NAME]
        big = b"x" * (5 * 1024 * 1024)  # proxy-body-size 20m lets it through
        r = seed_get(client, "/api/upload", method="POST", content=big)
        assert r.status_code == 200
        assert r.json()["body_bytes"] == len(big)


def test_seed_case_over_http2(deployment: Deployment) -> None:
    with seed_client(deployment, http2=True) as client:
        r = seed_get(client, "/api/v2?x=1")
        assert r.http_version == "HTTP/2"
        assert r.status_code == 200
        assert r.json()["path"] == "/api/v2?x=1"
        assert header_map(r)["host"] == API_NAME


def test_https_upstream_by_ip_without_verification(deployment: Deployment) -> None:
    r = get(deployment, "noverify.test", "/x")
    assert r.status_code == 200
    assert r.json()["path"] == "/x"
    assert header_map(r)["host"] == "noverify.test"


def test_verify_with_the_right_ca(deployment: Deployment) -> None:
    before = len(deployment.api.sni)
    r = get(deployment, "verify-ok.test", "/secure")
    assert r.status_code == 200
    assert deployment.api.sni[before:] == [API_NAME]


@pytest.mark.parametrize("host", ["verify-bad-ca.test", "verify-bad-name.test"])
def test_verify_failures_are_502_with_a_log_line(deployment: Deployment, host: str) -> None:
    r = get(deployment, host, "/secure")
    assert r.status_code == 502
    log = deployment.fi.log()
    assert "TLS handshake with 127.0.0.1" in log
    assert "default/api:" in log  # the upstream is named


@pytest.mark.parametrize("codec", ["llhttp", "h11"])
def test_proxy_ssl_verify_depth_counts_intermediate_cas(
    tmp_path_factory: pytest.TempPathFactory, codec: str
) -> None:
    """An upstream whose certificate is two CAs below the trusted root: nginx's default
    ``proxy_ssl_verify_depth 1`` refuses it (502 and a log line), ``proxy-ssl-verify-depth: "2"``
    takes it; without verification the depth does not matter."""
    tmp = tmp_path_factory.mktemp("verify-depth")
    root = trustme.CA()
    leaf = root.create_child_ca().create_child_ca().issue_cert(API_NAME)  # 2 intermediates
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)  # sends the leaf and both intermediates
    with HttpsEchoServer("deep", ctx) as deep:
        verified = {"backend_protocol": "HTTPS", "proxy_ssl_verify": "on",
                    "proxy_ssl_secret": "default/root-ca", "proxy_ssl_name": API_NAME}
        docs = [
            ca_secret("root-ca", root),
            tls_ingress("depth-default", "depth-default.test", "deep", deep.port, **verified),
            tls_ingress("depth-1", "depth-1.test", "deep", deep.port, **verified, proxy_ssl_verify_depth="1"),
            tls_ingress("depth-2", "depth-2.test", "deep", deep.port, **verified, proxy_ssl_verify_depth="2"),
            tls_ingress("no-verify", "no-verify.test", "deep", deep.port, backend_protocol="HTTPS",
                        proxy_ssl_verify_depth="1"),
            m.service("deep", port=deep.port),
            m.endpoint_slice("deep", [deep.port]),
        ]
        path = m.write(tmp / "deep.yaml", *docs)
        with run_fastingress(tmp, manifests=[path], workers=1, extra=("--http1-codec", codec)) as fi:
            def status(host: str) -> int:
                return httpx.get(f"{fi.base}/x", headers={"host": host}, timeout=10).status_code

            assert status("depth-2.test") == 200
            assert status("no-verify.test") == 200
            assert status("depth-default.test") == 502
            assert status("depth-1.test") == 502
            assert status("depth-2.test") == 200  # (and again, resuming its session)
            log = fi.log()
    assert "the certificate chain has 2 intermediate CA(s), more than proxy-ssl-verify-depth 1" in log
    assert "default/deep:" in log  # the upstream is named


def test_sni_off(deployment: Deployment) -> None:
    before = len(deployment.api.sni)
    r = get(deployment, "no-sni.test", "/n")
    assert r.status_code == 200
    assert header_map(r)["host"] == API_NAME
    assert deployment.api.sni[before:] == [None]


def test_https_upstream_down_is_502(deployment: Deployment) -> None:
    assert get(deployment, "https-dead.test", "/").status_code == 502


# ---- HTTP/2 upstreams, HTTP/1.1 clients ---------------------------------------------------


def h11_request(d: Deployment, host: str, path: str, body: bytes, headers: list[tuple[str, str]]) -> tuple[
    int, dict[bytes, bytes], bytes, dict[bytes, bytes]
]:
    """POST over a raw socket with h11, returning (status, headers, body, trailers)."""
    with socket.create_connection(("127.0.0.1", d.fi.http_port), timeout=10) as sock:
        conn = h11.Connection(h11.CLIENT)
        req = h11.Request(method="POST", target=path, headers=[("host", host),
                          ("content-length", str(len(body))), *headers])
        sock.sendall(conn.send(req) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        status, rheaders, rbody, trailers = 0, {}, b"", {}
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(ev, h11.Response):
                status, rheaders = ev.status_code, dict(ev.headers)
            elif isinstance(ev, h11.Data):
                rbody += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                trailers = dict(ev.headers)
                return status, rheaders, rbody, trailers


def test_h2c_upstream_from_http1_client(deployment: Deployment) -> None:
    status, headers, body, trailers = h11_request(deployment, "h2c.test", "/echo?q=1", b"hello", [])
    assert status == 200
    assert headers[b"x-upstream"] == b"h2echo"
    assert body == b"/echo?q=1|hello"
    assert trailers[b"grpc-status"] == b"0"
    seen = deployment.h2c.requests[-1]["headers"]
    assert seen[":authority"] == "h2c.test"
    assert seen[":scheme"] == "http"
    assert seen["x-forwarded-host"] == "h2c.test"


def test_grpc_upstream_multiplexes_over_few_connections(deployment: Deployment) -> None:
    d = deployment
    grpc = [("content-type", "application/grpc"), ("te", "trailers")]

    def call(i: int) -> tuple[int, bytes, dict[bytes, bytes]]:
        message = b"\x00\x00\x00\x00\x01x"
        status, _, body, trailers = h11_request(d, "grpc.test", f"/pkg.Svc/M{i}", message, grpc)
        return status, body, trailers

    before = d.h2c.connections
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        results = list(ex.map(call, range(64)))
    for i, (status, body, trailers) in enumerate(results):
        assert status == 200
        assert body == f"/pkg.Svc/M{i}|".encode() + b"\x00\x00\x00\x00\x01x"
        assert trailers[b"grpc-status"] == b"0"
    # 64 requests from 64 client connections over 2 workers: each worker keeps ONE h2
    # connection (plus at most a few opened while the first was being set up).
    assert d.h2c.connections - before <= 8
    assert d.h2c.requests[-1]["headers"]["te"] == "trailers"


def test_grpcs_upstream_verified(deployment: Deployment) -> None:
    status, _, body, trailers = h11_request(
        deployment, "grpcs.test", "/pkg.Svc/Call", b"abc", [("content-type", "application/grpc")]
    )
    assert status == 200, body
    assert body == b"/pkg.Svc/Call|abc"
    assert trailers[b"grpc-status"] == b"0"
    assert deployment.h2tls.requests[-1]["headers"][":scheme"] == "https"


def test_grpc_upstream_down_answers_grpc_unavailable(deployment: Deployment) -> None:
    status, headers, body, _ = h11_request(
        deployment, "grpc-dead.test", "/pkg.Svc/Call", b"", [("content-type", "application/grpc")]
    )
    assert status == 200
    assert headers[b"grpc-status"] == b"14"
    assert b"connect" in headers[b"grpc-message"]
    assert body == b""


def test_non_grpc_request_to_dead_h2_upstream_is_502(deployment: Deployment) -> None:
    status, _, _, _ = h11_request(deployment, "grpc-dead.test", "/x", b"", [("content-type", "text/plain")])
    assert status == 502


def test_grpc_upstream_timeout_answers_deadline_exceeded(deployment: Deployment) -> None:
    status, headers, _, _ = h11_request(
        deployment, "grpc-silent.test", "/pkg.Svc/Call", b"", [("content-type", "application/grpc")]
    )
    assert status == 200
    assert headers[b"grpc-status"] == b"4"
    assert b"read timed out" in headers[b"grpc-message"]


def test_grpc_upstream_that_never_sets_up_http2_is_unavailable(deployment: Deployment) -> None:
    status, headers, _, _ = h11_request(
        deployment, "grpc-mute.test", "/pkg.Svc/Call", b"", [("content-type", "application/grpc")]
    )
    assert status == 200
    assert headers[b"grpc-status"] == b"14"
    assert b"SETTINGS timed out" in headers[b"grpc-message"]


def test_frontend_over_https(deployment: Deployment) -> None:
    with seed_client(deployment) as client:
        r = seed_get(client, "/plain")
    assert json.loads(r.text)["server"] == "frontend"
    assert json.loads(r.text)["path"] == "/plain"


# ---- HTTP/2 clients (h2c prior knowledge) to HTTP/2 upstreams -------------------------------


async def test_h2_client_to_grpc_upstream_streams_and_trailers(deployment: Deployment) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", deployment.fi.http_port)
    async with stream:
        client = H2Client(stream)
        grpc = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
        sids = [
            client.open(b"/pkg.Svc/M%d" % i, method=b"POST", authority=b"grpc.test", headers=grpc,
                        body=b"\x00\x00\x00\x00\x02hi")
            for i in range(20)
        ]
        with trio.fail_after(10):
            await client.collect(sids)
        for i, sid in enumerate(sids):
            r = client.responses[sid]
            assert r.status == 200, r
            assert r.body == b"/pkg.Svc/M%d|\x00\x00\x00\x00\x02hi" % i
            assert dict(r.trailers)[b"grpc-status"] == b"0"
            assert dict(r.trailers)[b"grpc-message"] == b"ok"


async def test_h2_client_grpc_error_is_trailers_only(deployment: Deployment) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", deployment.fi.http_port)
    async with stream:
        client = H2Client(stream)
        sid = client.open(b"/pkg.Svc/Call", method=b"POST", authority=b"grpc-dead.test",
                          headers=[(b"content-type", b"application/grpc")], body=b"")
        with trio.fail_after(10):
            await client.collect([sid])
        r = client.responses[sid]
        assert r.status == 200
        assert r.header(b"grpc-status") == b"14"
        assert r.body == b""
        assert r.trailers == []  # one HEADERS frame with END_STREAM


def test_tls_http2_client_to_grpc_upstream(deployment: Deployment) -> None:
    d = deployment
    with httpx.Client(base_url=f"https://127.0.0.1:{d.fi.https_port}", verify=False, http2=True,
                      timeout=10) as client:  # grpc.test has no certificate: the default one answers
        r = client.post("/pkg.Svc/Tls", content=b"\x00\x00\x00\x00\x01z",
                        headers={"host": "grpc.test", "content-type": "application/grpc", "te": "trailers"})
    assert r.http_version == "HTTP/2"
    assert r.status_code == 200
    assert r.content == b"/pkg.Svc/Tls|\x00\x00\x00\x00\x01z"
    seen = d.h2c.requests[-1]["headers"]
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-port"] == str(d.fi.https_port)
