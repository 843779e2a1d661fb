"""TLS passthrough: peek the ClientHello's SNI, relay raw TCP to the backend, never terminate.

Theory of operation
-------------------
With ``settings.ssl_passthrough`` and at least one virtual host with ``passthrough_upstream``,
the HTTPS accept path reads the first bytes of a connection *before* any TLS happens and
hands them to ``parse_client_hello_sni`` (sans-I/O): TLS records of type handshake are
unwrapped (a ClientHello may be split over several records, and records over several
reads), the handshake header is checked (ClientHello, bounded length), and the extensions
are walked for ``server_name`` (type 0, host_name entries).  The answer is one of

* ``NEED_MORE``: not enough bytes yet (the caller reads more, bounded in size and time);
* ``Hello(server_name)``: a complete ClientHello (``server_name`` None when it has none);
* ``NOT_TLS``: the bytes are not a ClientHello; the caller terminates as usual, which
  fails the handshake the normal way.

When the SNI names a passthrough host, ``relay`` connects to an endpoint of its upstream,
writes the bytes already read first, then copies both ways until either side closes.
Otherwise the bytes are fed to the terminating ``TLSStream`` as its first input.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import trio

from fastingress.errors import FastIngressError
from workers.proxy import copy_bytes
from workers.state import Worker

log = logging.getLogger("fastingress.worker")

MAX_HELLO = 16384 + 5 * 4 + 4  # a ClientHello is at most 16 KiB (we accept it over up to 4 records)
RECV_SIZE = 65536


class Hello(NamedTuple):
    server_name: str | None


class _Marker(NamedTuple):
    what: str


NEED_MORE = _Marker("need more")
NOT_TLS = _Marker("not a TLS ClientHello")

ParseResult = Hello | _Marker


def _handshake_bytes(data: bytes) -> tuple[bytes, bool] | None:
    """The handshake-protocol bytes of the leading records, and whether a record was cut off.

    None if a record is not of type handshake (22) or has a silly length.
    """
    out = bytearray()
    pos = 0
    n = len(data)
    while pos + 5 <= n:
        ctype, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3 : pos + 5], "big")
        if pos and ctype != 22:  # what follows the handshake records (early data, ...)
            return bytes(out), False
        if ctype != 22 or major != 3 or length == 0 or length > 16384 + 2048:
            return None
        if pos + 5 + length > n:
            out += data[pos + 5 : n]
            return bytes(out), True
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return bytes(out), pos != n


def parse_client_hello_sni(data: bytes) -> ParseResult:
    """Parse the start of a TLS connection (see the module docstring)."""
    if not data:
        return NEED_MORE
    if data[0] != 22:
        return NOT_TLS
    got = _handshake_bytes(data)
    if got is None:
        return NOT_TLS
    hs, _partial = got
    if len(hs) < 4:
        return NEED_MORE if len(data) < MAX_HELLO else NOT_TLS
    if hs[0] != 1:  # ClientHello
        return NOT_TLS
    body_len = int.from_bytes(hs[1:4], "big")
    if body_len > 16384 or body_len < 38:
        return NOT_TLS
    if len(hs) < 4 + body_len:
        return NEED_MORE if len(data) < MAX_HELLO else NOT_TLS
    try:
        return Hello(_sni_of(hs[4 : 4 + body_len]))
    except (IndexError, ValueError):
        return NOT_TLS


def _sni_of(body: bytes) -> str | None:
    pos = 2 + 32  # client_version, random
    pos += 1 + body[pos]  # session_id
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")  # cipher_suites
    pos += 1 + body[pos]  # compression_methods
    if pos == len(body):
        return None  # no extensions
    end = pos + 2 + int.from_bytes(body[pos : pos + 2], "big")
    if end > len(body):
        raise ValueError("extensions overrun")
    pos += 2
    while pos + 4 <= end:
        ext_type = int.from_bytes(body[pos : pos + 2], "big")
        ext_len = int.from_bytes(body[pos + 2 : pos + 4], "big")
        pos += 4
        if pos + ext_len > end:
            raise ValueError("extension overruns")
        if ext_type == 0:
            return _host_name(body[pos : pos + ext_len])
        pos += ext_len
    return None


def _host_name(ext: bytes) -> str | None:
    list_len = int.from_bytes(ext[0:2], "big")
    pos, end = 2, min(len(ext), 2 + list_len)
    while pos + 3 <= end:
        name_type = ext[pos]
        name_len = int.from_bytes(ext[pos + 1 : pos + 3], "big")
        pos += 3
        if pos + name_len > end:
            raise ValueError("server name overruns")
        if name_type == 0:
            raw = ext[pos : pos + name_len]
            if not raw or not raw.isascii():
                return None
            return raw.decode("ascii").lower().rstrip(".")
        pos += name_len
    return None


async def peek_client_hello(stream: trio.abc.Stream, timeout: float) -> tuple[bytes, ParseResult]:
    """Read until the ClientHello is complete (or clearly not one): (bytes read, result)."""
    data = b""
    with trio.move_on_after(timeout):
        while True:
            chunk = await stream.receive_some(RECV_SIZE)
            if not chunk:
                return data, NOT_TLS
            data += chunk
            result = parse_client_hello_sni(data)
            if result is not NEED_MORE:
                return data, result
    return data, NOT_TLS


async def relay(
    worker: Worker, client: trio.abc.Stream, first: bytes, upstream_name: str, server_name: str
) -> None:
    """Raw TCP to an endpoint of ``upstream_name``: ``first`` goes first, then both ways."""
    table = worker.table
    upstream = table.upstreams.get(upstream_name) if table is not None else None
    if table is None or upstream is None:
        log.warning("passthrough %s: upstream %s is not in the snapshot; connection closed",
                    server_name, upstream_name)
        return
    try:
        if upstream.external_name and not upstream.endpoints:
            addrs = tuple((a, upstream.port) for a in await worker.pool.resolve(upstream))
        else:
            addrs = worker.balancer.ready(upstream)
        if not addrs:
            log.warning("passthrough %s: upstream %s has no ready endpoint", server_name, upstream_name)
            return
        primary, alternate = worker.balancer.pick(upstream_name, addrs)
        try:
            conn = await worker.pool.connect(primary, upstream.connect_timeout, label=upstream_name)
        except FastIngressError:
            if alternate is None:
                raise
            conn = await worker.pool.connect(alternate, upstream.connect_timeout, label=upstream_name)
    except FastIngressError as exc:
        worker.metrics.upstream_errors += 1
        log.warning("passthrough %s: %s", server_name, exc)
        return
    ustream = conn.stream
    try:
        await ustream.send_all(first)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy_bytes, client, ustream, nursery.cancel_scope)
            nursery.start_soon(copy_bytes, ustream, client, nursery.cancel_scope)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(ustream)


__all__ = ["NEED_MORE", "NOT_TLS", "Hello", "parse_client_hello_sni", "peek_client_hello", "relay"]
