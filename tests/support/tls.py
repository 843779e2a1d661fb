"""TLS helpers for tests: Secrets from trustme certificates, a real ``ssl`` HTTPS client with
explicit SNI and Host, and an HTTPS echo upstream (the standard library's server in ``ssl``)."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

import trustme
import yaml
from cryptography import x509

from tests.support.upstream import _Server


def tls_secret(name: str, cert: trustme.LeafCert, *, namespace: str = "default") -> str:
    """A kubernetes.io/tls Secret with the leaf (and its chain) and key of ``cert``."""
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems)
    return raw_tls_secret(name, chain, cert.private_key_pem.bytes(), namespace=namespace)


def raw_tls_secret(name: str, crt: bytes, key: bytes, *, namespace: str = "default") -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"tls.crt": base64.b64encode(crt).decode(), "tls.key": base64.b64encode(key).decode()},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def with_tls(ingress_yaml: str, *entries: tuple[list[str], str]) -> str:
    """Add ``spec.tls`` entries (hosts, secretName) to an Ingress made by ``manifests.ingress``."""
    doc = yaml.safe_load(ingress_yaml)
    doc["spec"]["tls"] = [{"hosts": hosts, "secretName": secret} for hosts, secret in entries]
    return yaml.safe_dump(doc, sort_keys=False)


def client_context(ca: trustme.CA | None = None, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    """A client context that trusts ``ca`` (or verifies nothing when None)."""
    ctx = ssl.create_default_context()
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ca.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def tls_connect(port: int, sni: str | None, ctx: ssl.SSLContext, timeout: float = 10.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise


def peer_certificate(sock: ssl.SSLSocket) -> x509.Certificate:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def peer_names(sock: ssl.SSLSocket) -> list[str]:
    """The DNS SANs of the certificate the server presented (or ["CN=..."] without SANs)."""
    cert = peer_certificate(sock)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        return [cert.subject.rfc4514_string()]


class _Conn(http.client.HTTPConnection):
    """http.client over an already connected (TLS) socket."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__("127.0.0.1", timeout=timeout)
        self.sock = sock

    def connect(self) -> None:  # the socket is given
        return


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    echo: dict[str, Any] = field(default_factory=dict)

    def echoed_header(self, name: str) -> str | None:
        for k, v in self.echo.get("headers", []):
            if k.lower() == name.lower():
                return str(v)
        return None


def request_on(sock: socket.socket, host: str, path: str = "/", timeout: float = 10.0) -> Response:
    """One HTTP/1.1 GET on ``sock`` (kept open for more)."""
    conn = _Conn(sock, timeout)
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    body = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    echo: dict[str, Any] = {}
    if headers.get("content-type") == "application/json":
        echo = json.loads(body)
    return Response(resp.status, headers, body, echo)


def https_get(
    port: int, host: str, path: str = "/", *, sni: str | None = None, ca: trustme.CA | None = None
) -> Response:
    with tls_connect(port, sni or host, client_context(ca)) as sock:
        return request_on(sock, host, path)


class TLSEchoServer:
    """The echo upstream behind TLS; records the SNI of every handshake."""

    def __init__(self, name: str, cert: trustme.LeafCert) -> None:
        self.server_names: list[str | None] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(ctx)
        ctx.sni_callback = self._sni
        self._server = _Server(name, 0)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    def _sni(self, _sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.server_names.append(name)

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self._server.requests

    def __enter__(self) -> TLSEchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


__all__ = [
    "Response",
    "TLSEchoServer",
    "client_context",
    "https_get",
    "peer_certificate",
    "peer_names",
    "raw_tls_secret",
    "request_on",
    "tls_connect",
    "tls_secret",
    "with_tls",
]
