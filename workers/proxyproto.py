"""The PROXY protocol header (v1 text and v2 binary), sans-I/O: ``use-proxy-protocol``.

A load balancer in front (AWS NLB, HAProxy, ...) prefixes each TCP connection with the
client's address; with ``use-proxy-protocol`` every connection on the HTTP and HTTPS
listeners must start with one, before any HTTP or TLS byte (a connection without one is
closed, as nginx does).  Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt

``parse_proxy_header(data)`` looks at the first bytes of a connection and returns
``NEED_MORE`` (a strict prefix of a header: every byte seen belongs to it, so the caller may
consume them and read on), a ``ProxyHeader`` (its ``length`` bytes are the header), or raises
``BadProxyHeader``.  The LOCAL command (v2) and ``PROXY UNKNOWN`` (v1), which load balancers
use for health checks, carry no address: ``source`` is None, the connection's own address
stands.  v2 TLVs are skipped.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final, NamedTuple

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX: Final = b"PROXY "
V1_MAX: Final = 107  # the longest v1 line, CRLF included
V2_MAX: Final = 16 + 4096  # we accept TLVs up to this total (the spec allows more; nobody sends it)


class ProxyHeader(NamedTuple):
    length: int  # bytes of the header at the start of the connection
    source: str | None  # the client's address (None: LOCAL / UNKNOWN, keep the connection's)
    source_port: int = 0
    dest: str | None = None
    dest_port: int = 0  # the port the client connected to (443: it spoke TLS to the balancer)


class BadProxyHeader(ValueError):
    """Not a PROXY protocol header, or a malformed one (the connection is closed)."""


class _NeedMore:
    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = _NeedMore()


def parse_proxy_header(data: bytes) -> ProxyHeader | _NeedMore:
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    raise BadProxyHeader("the connection does not start with a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | _NeedMore:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end == -1:
        if len(data) < V1_MAX and V1_PREFIX.startswith(data[:6]) and b"\n" not in data:
            return NEED_MORE
        raise BadProxyHeader("PROXY v1 header without CRLF within 107 bytes")
    line = data[:end]
    if not line.startswith(V1_PREFIX):
        raise BadProxyHeader("not a PROXY v1 header")
    parts = line.decode("ascii", "replace").split(" ")
    if parts[1] == "UNKNOWN":
        return ProxyHeader(end + 2, None)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise BadProxyHeader("PROXY v1 header must be PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    _, family, src, dst, sport, dport = parts
    version = 4 if family == "TCP4" else 6
    try:
        source = ipaddress.ip_address(src)
        dest = ipaddress.ip_address(dst)
    except ValueError:
        raise BadProxyHeader("PROXY v1 header with an invalid address") from None
    if source.version != version or dest.version != version:
        raise BadProxyHeader(f"PROXY v1 header: the addresses are not {family}")
    return ProxyHeader(end + 2, str(source), _port(sport), str(dest), _port(dport))


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise BadProxyHeader(f"PROXY v1 header with an invalid port {text[:8]!r}")
    return int(text)


def _parse_v2(data: bytes) -> ProxyHeader | _NeedMore:
    seen = data[:12]
    if not V2_SIGNATURE.startswith(seen):
        raise BadProxyHeader("not a PROXY v2 header")
    if len(data) < 16:
        return NEED_MORE
    version_command, family = data[12], data[13]
    (length,) = struct.unpack("!H", data[14:16])
    if version_command >> 4 != 2:
        raise BadProxyHeader("PROXY v2 header with an unknown version")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise BadProxyHeader("PROXY v2 header with an unknown command")
    total = 16 + length
    if total > V2_MAX:
        raise BadProxyHeader("PROXY v2 header longer than 4 KiB")
    if len(data) < total:
        return NEED_MORE
    body = data[16:total]
    if command == 0:  # LOCAL: the balancer's own connection (health checks)
        return ProxyHeader(total, None)
    if family in (0x11, 0x12):  # TCP or UDP over IPv4
        size = 4
    elif family in (0x21, 0x22):  # TCP or UDP over IPv6
        size = 16
    else:  # AF_UNSPEC or unix sockets: no address we can use
        return ProxyHeader(total, None)
    if length < 2 * size + 4:
        raise BadProxyHeader("PROXY v2 addresses truncated")
    src = ipaddress.ip_address(body[:size])
    dst = ipaddress.ip_address(body[size : 2 * size])
    sport, dport = struct.unpack("!HH", body[2 * size : 2 * size + 4])
    return ProxyHeader(total, str(src), sport, str(dst), dport)


def v1_header(source: str, dest: str, source_port: int, dest_port: int) -> bytes:
    """A v1 header (for tests and tools)."""
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {dest} {source_port} {dest_port}\r\n".encode()


def v2_header(source: str, dest: str, source_port: int, dest_port: int, *, local: bool = False,
              tlvs: bytes = b"") -> bytes:
    """A v2 header (for tests and tools)."""
    if local:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(dest)
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source_port, dest_port) + tlvs
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


__all__ = [
    "NEED_MORE", "V2_SIGNATURE", "BadProxyHeader", "ProxyHeader", "parse_proxy_header", "v1_header",
    "v2_header",
]
