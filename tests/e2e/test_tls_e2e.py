"""TLS termination through a real ``fastingress standalone`` process: SNI picks the
certificate, Host picks the route, protocol versions, ALPN, ssl-redirect, HSTS,
X-Forwarded-Proto, certificate rotation, passthrough.  Clients are the stdlib ``ssl``."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from tests.support import manifests as m
from tests.support.process import Fastingress, run_fastingress, wait_for
from tests.support.tls import (
    TLSEchoServer,
    client_context,
    https_get,
    peer_certificate,
    peer_names,
    raw_tls_secret,
    request_on,
    tls_connect,
    tls_secret,
    with_tls,
)
from tests.support.upstream import EchoServer

NGINX = "nginx.ingress.kubernetes.io/"


@dataclass
class Setup:
    fi: Fastingress
    ca: trustme.CA
    path: Path


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_proxy(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Iterator[Setup]:
    """One instance for the read-only tests: app.test (exact), *.wild.test, redirect variants."""
    tmp = tmp_path_factory.mktemp("tls")
    with EchoServer("s0") as s0, EchoServer("s1") as s1:
        path = m.write(
            tmp / "app.yaml",
            m.service("web"),
            m.endpoint_slice("web", [s0.port]),
            m.service("other"),
            m.endpoint_slice("other", [s1.port]),
            tls_secret("app-tls", ca.issue_cert("app.test")),
            tls_secret("wild-tls", ca.issue_cert("*.wild.test")),
            tls_secret("keep-tls", ca.issue_cert("plain-ok.test")),
            with_tls(
                m.ingress(
                    "web",
                    [
                        ("app.test", "/", "Prefix", "web"),
                        ("other.test", "/", "Prefix", "other"),
                        ("a.wild.test", "/", "Prefix", "web"),
                    ],
                ),
                (["app.test"], "app-tls"),
                (["*.wild.test"], "wild-tls"),
            ),
            with_tls(
                m.ingress(
                    "keep-plain",
                    [("plain-ok.test", "/", "Prefix", "web")],
                    annotations={NGINX + "ssl-redirect": "false"},
                ),
                (["plain-ok.test"], "keep-tls"),
            ),
            m.ingress(
                "forced",
                [("forced.test", "/", "Prefix", "web")],
                annotations={NGINX + "force-ssl-redirect": "true"},
            ),
        )
        with run_fastingress(tmp, manifests=[path], extra=("--hsts", "--hsts-max-age", "600")) as fi:
            yield Setup(fi, ca, path)


def test_sni_picks_exact_wildcard_and_default_certificates(tls_proxy: Setup) -> None:
    port = tls_proxy.fi.https_port
    with tls_connect(port, "app.test", client_context(tls_proxy.ca)) as sock:  # verified against the CA
        assert peer_names(sock) == ["app.test"]
    with tls_connect(port, "a.wild.test", client_context(tls_proxy.ca)) as sock:
        assert peer_names(sock) == ["*.wild.test"]
    for sni in ("unknown.test", "b.a.wild.test", None):  # wildcards cover one label only
        with tls_connect(port, sni, client_context()) as sock:
            assert "fastingress default certificate" in peer_certificate(sock).subject.rfc4514_string()


def test_host_header_picks_the_route(tls_proxy: Setup) -> None:
    port = tls_proxy.fi.https_port
    assert https_get(port, "app.test", "/x", ca=tls_proxy.ca).echo["server"] == "s0"
    # Same TLS session name (SNI app.test), another Host: routing follows Host, as nginx does.
    other = https_get(port, "other.test", "/x", sni="app.test", ca=tls_proxy.ca)
    assert other.status == 200
    assert other.echo["server"] == "s1"


def test_forwarded_headers_say_https(tls_proxy: Setup) -> None:
    r = https_get(tls_proxy.fi.https_port, "app.test", "/headers", ca=tls_proxy.ca)
    assert r.echoed_header("x-forwarded-proto") == "https"
    assert r.echoed_header("x-forwarded-port") == str(tls_proxy.fi.https_port)
    plain = httpx.get(f"{tls_proxy.fi.base}/headers", headers={"host": "other.test"})
    assert {k.lower(): v for k, v in plain.json()["headers"]}["x-forwarded-proto"] == "http"


def _handshake_errors(fi: Fastingress) -> int:
    for line in httpx.get(f"{fi.admin}/metrics").text.splitlines():
        if line.startswith("fastingress_tls_handshake_errors_total "):
            return int(line.split()[1])
    raise AssertionError("no fastingress_tls_handshake_errors_total")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls_1_1_is_refused(tls_proxy: Setup) -> None:
    before = _handshake_errors(tls_proxy.fi)
    ctx = client_context()
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|protocol version|UNSUPPORTED_PROTOCOL"):
        tls_connect(tls_proxy.fi.https_port, "app.test", ctx).close()
    wait_for(lambda: _handshake_errors(tls_proxy.fi) > before, what="the refused handshake counted")
    ctx12 = client_context(tls_proxy.ca)
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_connect(tls_proxy.fi.https_port, "app.test", ctx12) as sock:
        assert sock.version() == "TLSv1.2"
        assert request_on(sock, "app.test").status == 200


def test_alpn(tls_proxy: Setup) -> None:
    port = tls_proxy.fi.https_port
    with tls_connect(port, "app.test", client_context(tls_proxy.ca, alpn=["http/1.1"])) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        assert request_on(sock, "app.test").status == 200
    with tls_connect(port, "app.test", client_context(tls_proxy.ca, alpn=["h2", "http/1.1"])) as sock:
        assert sock.selected_alpn_protocol() == "h2"
    with tls_connect(port, "app.test", client_context(tls_proxy.ca, alpn=["spdy/3"])) as sock:
        assert sock.selected_alpn_protocol() is None  # nothing in common: no ALPN, HTTP/1.1
        assert request_on(sock, "app.test").status == 200


def test_plain_http_is_redirected_to_https(tls_proxy: Setup) -> None:
    fi = tls_proxy.fi
    r = httpx.get(f"{fi.base}/some/path?q=1&b=2", headers={"host": "App.Test"})
    assert r.status_code == 308
    assert r.headers["location"] == f"https://app.test:{fi.https_port}/some/path?q=1&b=2"
    assert "strict-transport-security" not in r.headers  # never over plain HTTP
    # cert-manager's HTTP-01 challenge must reach the backend over plain HTTP
    acme = httpx.get(f"{fi.base}/.well-known/acme-challenge/token123", headers={"host": "app.test"})
    assert acme.status_code == 200
    assert acme.json()["path"] == "/.well-known/acme-challenge/token123"
    # ssl-redirect: "false" keeps plain HTTP; force-ssl-redirect redirects a host without TLS
    assert httpx.get(f"{fi.base}/", headers={"host": "plain-ok.test"}).status_code == 200
    forced = httpx.get(f"{fi.base}/f", headers={"host": "forced.test"})
    assert forced.status_code == 308
    assert forced.headers["location"] == f"https://forced.test:{fi.https_port}/f"
    # A host without TLS and no annotation is served over plain HTTP
    assert httpx.get(f"{fi.base}/", headers={"host": "other.test"}).status_code == 200


def test_hsts_on_https_answers(tls_proxy: Setup) -> None:
    port = tls_proxy.fi.https_port
    proxied = https_get(port, "app.test", ca=tls_proxy.ca)
    assert proxied.headers["strict-transport-security"] == "max-age=600; includeSubDomains"
    local = https_get(port, "nohost.test", sni="app.test", ca=tls_proxy.ca)  # our own 404
    assert local.status == 404
    assert local.headers["strict-transport-security"] == "max-age=600; includeSubDomains"


def test_tls_metrics(tls_proxy: Setup) -> None:
    https_get(tls_proxy.fi.https_port, "app.test", ca=tls_proxy.ca)
    text = httpx.get(f"{tls_proxy.fi.admin}/metrics").text
    assert 'fastingress_tls_handshakes_total{version="TLSv1.3",alpn="-"}' in text
    assert "fastingress_tls_handshake_errors_total" in text


def test_changed_secret_reaches_new_handshakes_without_cutting_open_ones(
    tmp_path: Path, ca: trustme.CA
) -> None:
    first, second = ca.issue_cert("rot.test"), ca.issue_cert("rot.test")
    with EchoServer("s0") as s0:
        docs = [
            m.service("web"),
            m.endpoint_slice("web", [s0.port]),
            with_tls(m.ingress("web", [("rot.test", "/", "Prefix", "web")]), (["rot.test"], "rot-tls")),
        ]
        path = m.write(tmp_path / "app.yaml", *docs, tls_secret("rot-tls", first))
        with run_fastingress(tmp_path, manifests=[path], workers=1, extra=("--access-log",)) as fi:
            ctx = client_context(ca)
            with tls_connect(fi.https_port, "rot.test", ctx) as old:
                assert request_on(old, "rot.test").status == 200
                serial_before = peer_certificate(old).serial_number
                generation = fi.generation()
                m.write(path, *docs, tls_secret("rot-tls", second))
                fi.wait_generation(generation + 1)
                with tls_connect(fi.https_port, "rot.test", ctx) as new:
                    assert peer_certificate(new).serial_number != serial_before
                    assert request_on(new, "rot.test").status == 200
                # the connection made before the change goes on, with its certificate
                assert request_on(old, "rot.test").status == 200
                assert peer_certificate(old).serial_number == serial_before
            # the access log records the TLS version and ALPN protocol ("-": none negotiated)
            wait_for(lambda: "GET / 200" in fi.log() and " TLSv1.3/-" in fi.log(), what="access log line")


def test_bad_secret_is_a_diagnostic_and_the_rest_is_served(tmp_path: Path, ca: trustme.CA) -> None:
    other_key = ca.issue_cert("bad.test").private_key_pem.bytes()
    with EchoServer("s0") as s0:
        path = m.write(
            tmp_path / "app.yaml",
            m.service("web"),
            m.endpoint_slice("web", [s0.port]),
            tls_secret("good-tls", ca.issue_cert("good.test")),
            raw_tls_secret("bad-tls", ca.issue_cert("bad.test").cert_chain_pems[0].bytes(), other_key),
            raw_tls_secret(
                "junk-tls",
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                b"-----BEGIN PRIVATE KEY-----\nSECRETDATA\n-----END PRIVATE KEY-----\n",
            ),
            with_tls(
                m.ingress("web", [("good.test", "/", "Prefix", "web"), ("bad.test", "/", "Prefix", "web"),
                                  ("junk.test", "/", "Prefix", "web")]),
                (["good.test"], "good-tls"), (["bad.test"], "bad-tls"), (["junk.test"], "junk-tls"),
            ),
        )
        with run_fastingress(tmp_path, manifests=[path], workers=1) as fi:
            log = fi.log()
            assert "Secret default/bad-tls data[tls.key]: the private key does not match" in log
            assert "Secret default/junk-tls data[tls.crt]: no readable PEM certificate" in log
            assert "SECRETDATA" not in log
            assert https_get(fi.https_port, "good.test", ca=ca).status == 200
            with tls_connect(fi.https_port, "bad.test", client_context()) as sock:
                assert "fastingress default certificate" in peer_certificate(sock).subject.rfc4514_string()
                assert request_on(sock, "bad.test").status == 200  # still served, default cert


def test_passthrough_relays_tls_to_a_backend_that_terminates_it(
    tmp_path: Path, ca: trustme.CA
) -> None:
    backend_ca = trustme.CA()  # the backend's own certificate: proof that we did not terminate
    with TLSEchoServer("tls-backend", backend_ca.issue_cert("pass.test")) as backend, EchoServer("s0") as s0:
        path = m.write(
            tmp_path / "app.yaml",
            m.service("secure"),
            m.endpoint_slice("secure", [backend.port]),
            m.service("web"),
            m.endpoint_slice("web", [s0.port]),
            tls_secret("app-tls", ca.issue_cert("app.test")),
            tls_secret("default-tls", ca.issue_cert("default.test")),
            m.ingress("pass", [("pass.test", "/", "Prefix", "secure")],
                      annotations={NGINX + "ssl-passthrough": "true"}),
            with_tls(m.ingress("web", [("app.test", "/", "Prefix", "web")]), (["app.test"], "app-tls")),
        )
        extra = ("--enable-ssl-passthrough", "--default-ssl-certificate", "default/default-tls")
        with run_fastingress(tmp_path, manifests=[path], workers=1, extra=extra) as fi:
            with tls_connect(fi.https_port, "pass.test", client_context(backend_ca)) as sock:
                assert peer_names(sock) == ["pass.test"]
                r = request_on(sock, "pass.test", "/through")
            assert r.status == 200
            assert r.echo["server"] == "tls-backend"
            assert r.echoed_header("x-forwarded-proto") is None  # raw bytes: no proxy headers
            assert backend.server_names == ["pass.test"]
            # other names on the same port are terminated as usual; unknown ones get the default
            assert https_get(fi.https_port, "app.test", ca=ca).echo["server"] == "s0"
            with tls_connect(fi.https_port, "nowhere.test", client_context()) as sock:
                assert peer_names(sock) == ["default.test"]
            wait_for(lambda: "fastingress_tls_passthrough_total 1" in httpx.get(f"{fi.admin}/metrics").text,
                     what="passthrough counted")


def test_https_port_zero_means_no_listener_and_no_redirect(tmp_path: Path, ca: trustme.CA) -> None:
    with EchoServer("s0") as s0:
        path = m.write(
            tmp_path / "a.yaml", m.service("web"), m.endpoint_slice("web", [s0.port]),
            tls_secret("a-tls", ca.issue_cert("a.test")),
            with_tls(m.ingress("web", [("a.test", "/", "Prefix", "web")]), (["a.test"], "a-tls")),
        )
        with run_fastingress(tmp_path, manifests=[path], workers=1, extra=("--https-port", "0")) as fi:
            # nowhere to redirect to: plain HTTP is served instead of a 308 to a dead port
            assert httpx.get(f"{fi.base}/", headers={"host": "a.test"}).status_code == 200
