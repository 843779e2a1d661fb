"""Message heads (sans-I/O): what a proxied request and response carry, in one pass each.

* ``scan_request``: the framing facts of a request (Host, Content-Length, chunked, Upgrade,
  X-Request-ID) and its end-to-end headers, hop-by-hop ones and those we set ourselves removed
  (including every header named in ``Connection``);
* ``add_forwarded``: the headers we add for the upstream (Host, X-Forwarded-*, X-Real-IP,
  X-Request-ID);
* ``response_headers``: an upstream response's headers minus hop-by-hop ones, plus ours;
* ``error_body``: the short text body of a generated error (``503 Service Unavailable``).

Shared by the event-driven core (``workers.h1conn``), the task-based ``Session`` and HTTP/2.
"""

from __future__ import annotations

import random
from http import HTTPStatus

from workers.http1 import Headers

# Request headers we drop (hop-by-hop) or set ourselves.
REQ_DROP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
        b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"host", b"expect",
        b"x-forwarded-for", b"x-real-ip", b"x-forwarded-proto", b"x-forwarded-host",
        b"x-forwarded-port", b"x-request-id",
    }
)
RESP_DROP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
        b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"server",
    }
)
_CONN_STANDARD = frozenset({b"close", b"keep-alive", b"upgrade"})
TEXT = b"text/plain; charset=utf-8"


def connection_tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


class RequestInfo:
    """What the proxy needs from a request's headers, collected in one pass."""

    __slots__ = ("chunked", "content_length", "headers", "host", "request_id", "upgrade")

    def __init__(self) -> None:
        self.host = b""
        self.content_length: int | None = None
        self.chunked = False
        self.upgrade: bytes | None = None
        self.request_id: bytes | None = None
        self.headers: list[tuple[bytes, bytes]] = []  # end-to-end headers to forward

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def new_request_id(self) -> bytes:
        """The client's X-Request-ID, or a fresh random one (kept for logs)."""
        rid = self.request_id
        if rid is None:
            rid = self.request_id = b"%032x" % random.getrandbits(128)
        return rid


def scan_request(headers: Headers) -> RequestInfo:
    """One pass over the request headers: framing facts plus the end-to-end headers."""
    info = RequestInfo()
    out = info.headers
    connection: list[bytes] | None = None
    upgrade: bytes | None = None
    for name, value in headers:
        if name not in REQ_DROP:
            if name == b"content-length":
                info.content_length = int(value)
            out.append((name, value))
        elif name == b"host":
            info.host = value
        elif name == b"transfer-encoding":
            info.chunked = True
        elif name == b"connection":
            if connection is None:
                connection = []
            connection.extend(connection_tokens(value))
        elif name == b"upgrade":
            upgrade = value
        elif name == b"x-request-id":
            info.request_id = value
    if info.chunked and info.content_length is not None:
        # Both framings (only the h11 reference lets this through; llhttp refuses it): the
        # chunked one wins and Content-Length must not reach the upstream (request smuggling).
        info.content_length = None
        out[:] = [(n, v) for n, v in out if n != b"content-length"]
    if connection:
        if upgrade is not None and b"upgrade" in connection:
            info.upgrade = upgrade
        extra = set(connection) - _CONN_STANDARD
        if extra:
            info.headers = [(n, v) for n, v in out if n not in extra]
    return info


def add_forwarded(
    headers: list[tuple[bytes, bytes]],
    info: RequestInfo,
    *,
    host: bytes,
    client_ip: bytes,
    proto: bytes,
    port: bytes,
) -> None:
    """Append Host (``host``: the client's or upstream-vhost) and the X-Forwarded family."""
    headers.append((b"host", host))
    headers.append((b"x-forwarded-for", client_ip))
    headers.append((b"x-real-ip", client_ip))
    headers.append((b"x-forwarded-proto", proto))
    headers.append((b"x-forwarded-host", info.host))
    headers.append((b"x-forwarded-port", port))
    headers.append((b"x-request-id", info.new_request_id()))


def response_headers(headers: Headers, server: bytes, *, upgrade: bool = False) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones, with our Server header."""
    out: list[tuple[bytes, bytes]] = []
    connection: list[bytes] | None = None
    for name, value in headers:
        if name in RESP_DROP:
            if name == b"connection":
                connection = connection_tokens(value)
            elif upgrade and name == b"upgrade":
                out.append((name, value))
            continue
        out.append((name, value))
    if connection:
        extra = set(connection) - _CONN_STANDARD
        if extra:
            out = [(n, v) for n, v in out if n not in extra]
    if upgrade:
        out.append((b"connection", b"upgrade"))
    out.append((b"server", server))
    return out


def error_body(status: int, detail: str = "") -> bytes:
    """``503 Service Unavailable\\n`` (plus a detail line): the body of a generated answer."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    text = f"{status} {phrase}\n"
    if detail:
        text += detail + "\n"
    return text.encode()


__all__ = [
    "REQ_DROP", "RESP_DROP", "TEXT", "RequestInfo", "add_forwarded", "connection_tokens", "error_body",
    "response_headers", "scan_request",
]
