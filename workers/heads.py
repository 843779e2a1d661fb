"""Message heads (sans-I/O): what a proxied request and response carry, in one pass each.

* ``scan_request``: the framing facts of a request (Host, Content-Length, chunked, Upgrade,
  X-Request-ID) and its end-to-end headers, hop-by-hop ones and those we set ourselves removed
  (including every header named in ``Connection``; the X-Forwarded-* a client sent are set
  aside in ``forwarded``, for ``use-forwarded-headers``).  ``names`` (the ConfigMap's
  ``ignore-invalid-headers`` and ``enable-underscores-in-headers``, as nginx) drops headers
  whose name is not letters, digits and ``-`` (``_`` too, unless allowed);
* ``add_forwarded``: the headers we add for the upstream (Host, X-Forwarded-*, X-Real-IP,
  X-Request-ID), from ``RequestInfo.view`` when the client is known through a proxy
  (``workers.clientip``);
* ``response_headers``: an upstream response's headers minus hop-by-hop ones, plus ours;
* ``error_body``: the short text body of a generated error (``503 Service Unavailable``).

Shared by the event-driven core (``workers.h1conn``), the task-based ``Session`` and HTTP/2.
"""

from __future__ import annotations

import random
from http import HTTPStatus
from typing import TYPE_CHECKING

from workers.http1 import Headers

if TYPE_CHECKING:
    from workers.clientip import ClientView

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


# ``scan_request(headers, names)``: which header names are dropped (nginx ignore_invalid_headers
# and underscores_in_headers).
KEEP_ALL_NAMES, DROP_INVALID_NAMES, DROP_INVALID_AND_UNDERSCORE = 0, 1, 2
_PLAIN, _UNDERSCORE, _INVALID = 0, 1, 2
_NAME_CLASS: dict[bytes, int] = {}  # header name -> _PLAIN / _UNDERSCORE / _INVALID (memo)
_NAME_CLASS_MAX = 4096
_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port",
                        b"x-real-ip"})


def _classify(name: bytes) -> int:
    plain = name.replace(b"-", b"")
    if plain.isalnum() and plain.isascii():
        found = _PLAIN
    elif plain.replace(b"_", b"").isalnum() and plain.isascii():
        found = _UNDERSCORE
    else:
        found = _INVALID
    if len(_NAME_CLASS) >= _NAME_CLASS_MAX:
        _NAME_CLASS.clear()
    _NAME_CLASS[name] = found
    return found


class RequestInfo:
    """What the proxy needs from a request's headers, collected in one pass."""

    __slots__ = ("chunked", "content_length", "forwarded", "headers", "host", "request_id", "upgrade", "view")

    def __init__(self) -> None:
        self.host = b""
        self.content_length: int | None = None
        self.chunked = False
        self.upgrade: bytes | None = None
        self.request_id: bytes | None = None
        self.headers: list[tuple[bytes, bytes]] = []  # end-to-end headers to forward
        self.forwarded: list[tuple[bytes, bytes]] | None = None  # X-Forwarded-*, X-Real-IP as sent
        self.view: ClientView | None = None  # the client seen through a proxy (workers.clientip)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def new_request_id(self) -> bytes:
        """The client's X-Request-ID, or a fresh random one (kept for logs)."""
        rid = self.request_id
        if rid is None:
            rid = self.request_id = b"%032x" % random.getrandbits(128)
        return rid


def scan_request(headers: Headers, names: int = KEEP_ALL_NAMES) -> RequestInfo:
    """One pass over the request headers: framing facts plus the end-to-end headers."""
    info = RequestInfo()
    out = info.headers
    connection: list[bytes] | None = None
    upgrade: bytes | None = None
    classes = _NAME_CLASS
    for name, value in headers:
        if name not in REQ_DROP:
            if names:
                kind = classes.get(name)
                if kind is None:
                    kind = _classify(name)
                if kind and (kind == _INVALID or names == DROP_INVALID_AND_UNDERSCORE):
                    continue  # nginx: "client sent invalid header line", ignored
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
        elif name in _FORWARDED:
            if info.forwarded is None:
                info.forwarded = [(name, value)]
            else:
                info.forwarded.append((name, value))
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
    view = info.view
    if view is None:
        headers.append((b"x-forwarded-for", client_ip))
        headers.append((b"x-real-ip", client_ip))
        headers.append((b"x-forwarded-proto", proto))
        headers.append((b"x-forwarded-host", info.host))
        headers.append((b"x-forwarded-port", port))
    else:
        headers.append((b"x-forwarded-for", view.xff))
        headers.append((b"x-real-ip", view.ip))
        headers.append((b"x-forwarded-proto", view.proto or proto))
        headers.append((b"x-forwarded-host", view.host or info.host))
        headers.append((b"x-forwarded-port", view.port or port))
    headers.append((b"x-request-id", info.new_request_id()))


def set_headers(headers: list[tuple[bytes, bytes]], extra: tuple[tuple[bytes, bytes], ...]) -> None:
    """Set each of ``extra`` (lower-case names): same-named headers are replaced (nginx
    ``more_set_headers`` / ``proxy_set_header``)."""
    names = {name for name, _ in extra}
    headers[:] = [(n, v) for n, v in headers if n not in names]
    headers.extend(extra)


def response_headers(
    headers: Headers, server: bytes, *, upgrade: bool = False, keep_server: bool = False
) -> list[tuple[bytes, bytes]]:
    """Upstream response headers minus hop-by-hop ones, with our Server header (none when
    ``server`` is empty: ``server-tokens: "false"``); ``keep_server``: the upstream's own
    Server header wins (``allow-backend-server-header``)."""
    out: list[tuple[bytes, bytes]] = []
    connection: list[bytes] | None = None
    for name, value in headers:
        if name in RESP_DROP:
            if name == b"connection":
                connection = connection_tokens(value)
            elif upgrade and name == b"upgrade":
                out.append((name, value))
            elif keep_server and name == b"server":
                out.append((name, value))
                server = b""
            continue
        out.append((name, value))
    if connection:
        extra = set(connection) - _CONN_STANDARD
        if extra:
            out = [(n, v) for n, v in out if n not in extra]
    if upgrade:
        out.append((b"connection", b"upgrade"))
    if server:
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
    "DROP_INVALID_AND_UNDERSCORE", "DROP_INVALID_NAMES", "KEEP_ALL_NAMES", "REQ_DROP", "RESP_DROP", "TEXT",
    "RequestInfo", "add_forwarded", "connection_tokens", "error_body", "response_headers", "scan_request",
    "set_headers",
]
