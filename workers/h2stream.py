"""HTTP/2 streams as the request path sees them (sans-I/O parts of ``workers.http2``).

* ``H2StreamCodec`` and ``H2StreamChannel`` give one HTTP/2 stream the ``ServerCodec`` and trio
  ``Stream`` interfaces a ``Session`` uses, so every stream takes the same request path as an
  HTTP/1.1 request (see ``workers.http2`` for the theory of operation: queued work, flow
  control both ways);
* ``build_request_head`` turns a stream's header block into a request head, refusing what RFC
  9113 calls malformed; ``goaway_frame`` builds a raw GOAWAY;
* ``H2Limits`` and ``FloodMeter``: the per-connection limits and attack bounds.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from typing import Protocol

import h2.errors
import h2.settings
import msgspec
import trio

from fastingress.errors import UpstreamFailed
from fastingress.snapshot.schema import GlobalSettings
from workers.http1 import Body, Event, Headers, RequestHead, ServerCodec, Signal, valid_value

RECV_SIZE = 65536

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_NEED_DATA = Signal.NEED_DATA
_END = Signal.END
_ErrorCodes = h2.errors.ErrorCodes
_SettingCodes = h2.settings.SettingCodes

# Connection-specific response headers (forbidden in HTTP/2).
_RESP_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")  # a token, lower case (RFC 9113 8.2.1)
# Connection-specific request headers (RFC 9113 8.2.2): a malformed request.
_REQ_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_VISIBLE = re.compile(rb"[\x21-\x7e]+")


class H2Limits(msgspec.Struct, frozen=True):
    """Per-connection HTTP/2 limits (the attack bounds count per ``flood_window`` seconds)."""

    max_concurrent_streams: int = 128
    initial_window: int = 65535  # per stream, both ways advertised to the client
    conn_window: int = 1024 * 1024  # connection receive window
    max_frame_size: int = 16384
    max_header_list_size: int = 32 * 1024
    flood_window: float = 10.0
    max_resets: int = 200  # streams the client cancelled (rapid reset)
    max_settings: int = 100  # SETTINGS frames
    max_pings: int = 100  # PING frames
    max_idle_frames: int = 10000  # frames that carry nothing we act on (PRIORITY, empty DATA...)

    @classmethod
    def from_settings(cls, settings: GlobalSettings) -> H2Limits:
        streams = max(1, settings.http2_max_concurrent_streams)
        return cls(
            max_concurrent_streams=streams,
            max_header_list_size=settings.max_header_bytes,
            max_resets=max(200, 2 * streams),
        )


class FloodMeter:
    """Counts events over a sliding window of ``window`` seconds (two half-buckets)."""

    __slots__ = ("_bucket", "_count", "_previous", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._bucket = -1
        self._count = 0
        self._previous = 0

    def hit(self, now: float, n: int = 1) -> bool:
        """Count ``n`` events at time ``now``; True once the window holds more than ``limit``."""
        bucket = int(now * 2 / self.window)
        if bucket != self._bucket:
            self._previous = self._count if bucket == self._bucket + 1 else 0
            self._count = 0
            self._bucket = bucket
        self._count += n
        return self._count + self._previous > self.limit


class _Stream:
    """One request stream: what arrived from the client and what waits to go out."""

    __slots__ = (
        "end_sent", "head_sent", "in_ended", "inbound", "out_continue", "out_data", "out_end", "out_head",
        "out_trailers", "readable", "reset", "scope", "sid", "unacked", "writable",
    )

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.inbound: collections.deque[tuple[bytes, int]] = collections.deque()
        self.in_ended = False
        self.unacked = 0  # flow-controlled bytes handed out but not acknowledged yet
        self.readable = trio.Event()
        self.writable = trio.Event()
        self.out_continue = False  # a 100 (Continue) waits to go out
        self.out_head: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.out_data: collections.deque[memoryview] = collections.deque()
        self.out_end = False
        self.out_trailers: list[tuple[bytes, bytes]] | None = None
        self.head_sent = False
        self.end_sent = False
        self.reset = False
        self.scope = trio.CancelScope()

    def wake_reader(self) -> None:
        self.readable.set()

    def wake_writer(self) -> None:
        self.writable.set()


class H2StreamCodec(ServerCodec):
    """The ``ServerCodec`` interface for one HTTP/2 stream (see the module docstring).

    It never touches h11 (the base class is only the interface the proxy expects, its
    initialiser is deliberately not called): requests come pre-parsed from h2, responses are
    queued on the ``_Stream`` and written by ``H2StreamChannel.send_all``.
    """

    __slots__ = ("_events", "_expect", "_head_only", "_st")

    trailers_need_chunked = False

    def __init__(self, st: _Stream, head: RequestHead, ended: bool) -> None:
        self._st = st
        self._head_only = head.method == b"HEAD"  # a HEAD answer carries no DATA
        self._events: collections.deque[Event] = collections.deque((head,))
        if ended:
            self._events.append(_END)
        self._expect = not ended and any(
            n == b"expect" and v.lower() == b"100-continue" for n, v in head.headers
        )

    def receive_data(self, data: bytes | bytearray) -> None:
        self._expect = False
        self._events.append(Body(bytes(data)) if data else _END)

    @property
    def nothing_buffered(self) -> bool:
        return not self._events

    def next_event(self) -> Event:
        return self._events.popleft() if self._events else _NEED_DATA

    def data(self, data: bytes) -> bytes:
        if data and not self._head_only:
            self._st.out_data.append(memoryview(data))
        return b""

    def end(self, trailers: Headers = ()) -> bytes:
        st = self._st
        st.out_end = True
        if trailers:
            st.out_trailers = [(n, v) for n, v in trailers if n not in _RESP_HOP]
        return b""

    def response_head(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"", *, trusted: bool = False
    ) -> bytes:
        out = [(b":status", b"%d" % status)]
        out.extend((n, v) for n, v in headers if n not in _RESP_HOP)
        self._st.out_head = (status, out)
        return b""

    def informational(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"") -> bytes:
        if status == 101:
            raise UpstreamFailed("the upstream switched protocols, impossible over HTTP/2")
        if status == 100 and self._expect:
            self._expect = False
            self._st.out_continue = True
        return b""

    @property
    def reusable(self) -> bool:
        return False  # one request per stream

    @property
    def their_message_done(self) -> bool:
        return self._st.in_ended and not self._st.inbound

    @property
    def switched(self) -> bool:
        return False

    @property
    def trailing_data(self) -> bytes:
        return b""

    def start_next_cycle(self) -> None:
        pass

    @property
    def waiting_for_100_continue(self) -> bool:
        return self._expect

    @property
    def can_respond(self) -> bool:
        st = self._st
        return not st.head_sent and st.out_head is None and not st.reset


class _Server(Protocol):
    """What a stream's channel needs of its connection (``workers.http2.H2Server``)."""

    stream: trio.abc.Stream

    async def write_stream(self, st: _Stream) -> None: ...

    def acknowledge(self, st: _Stream, length: int) -> None: ...

    async def flush(self) -> None: ...

    async def stream_closed(self, st: _Stream) -> None: ...


class H2StreamChannel(trio.abc.Stream):
    """The trio ``Stream`` a Session uses for one HTTP/2 stream."""

    def __init__(self, server: _Server, st: _Stream) -> None:
        self.server = server
        self.st = st

    @property
    def ssl_connection(self) -> object:
        """The client's TLS connection (client certificates), None over h2c."""
        return getattr(self.server.stream, "ssl_connection", None)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        st = self.st
        if data:  # not produced by H2StreamCodec, but keep it as body bytes if it comes
            st.out_data.append(memoryview(bytes(data)))
        await self.server.write_stream(st)

    async def wait_send_all_might_not_block(self) -> None:
        await self.server.write_stream(self.st)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        st = self.st
        server = self.server
        if st.unacked:
            server.acknowledge(st, st.unacked)
            st.unacked = 0
            await server.flush()
        while not st.inbound:
            if st.in_ended:
                return b""
            if st.reset:
                raise trio.BrokenResourceError("stream reset by the client")
            st.readable = trio.Event()
            await st.readable.wait()
        limit = max_bytes or RECV_SIZE
        data, flow = st.inbound.popleft()
        pieces = [data]
        size = len(data)
        while st.inbound and size + len(st.inbound[0][0]) <= limit:
            more, more_flow = st.inbound.popleft()
            pieces.append(more)
            size += len(more)
            flow += more_flow
        st.unacked = flow
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def aclose(self) -> None:
        await self.server.stream_closed(self.st)



def goaway_frame(last_stream_id: int, error_code: int) -> bytes:
    """A GOAWAY frame (RFC 9113 6.8): 9-byte header (length 8, type 7, stream 0), payload."""
    return (
        b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"
        + (last_stream_id & 0x7FFFFFFF).to_bytes(4, "big")
        + error_code.to_bytes(4, "big")
    )


def build_request_head(headers: Sequence[tuple[bytes, bytes]], ended: bool) -> RequestHead | None:
    """The request head of an HTTP/2 request, or None when the header block is malformed.

    h2's own inbound header validation is off (it costs a fifth of a request's CPU in its
    generator pipeline); this one pass checks what it checked (RFC 9113 8.2 and 8.3), a
    little more strictly, since every name and value may end up in an HTTP/1.1 request:

    * names are lower-case tokens, values ``valid_value`` (no CR/LF/NUL or other controls, no
      surrounding whitespace), no connection-specific header, ``te`` only ``trailers``;
    * pseudo-headers first, each once, only ``:method :scheme :path :authority``; ``:method``
      a token, ``:path`` non-empty visible ASCII (``:scheme``/``:path`` absent for CONNECT);
    * ``:authority`` or ``host`` present (equal if both, one ``host``); ``content-length``
      digits (repeated only with the same value).

    ``:authority`` becomes ``host`` (first, so routing and the upstream see it); cookies were
    joined by h2; a body without ``content-length`` is marked ``transfer-encoding: chunked``
    so that the proxy streams it upstream with chunked framing.
    """
    method = scheme = path = authority = None
    out: list[tuple[bytes, bytes]] = []
    length: bytes | None = None
    host: bytes | None = None
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                return None  # a pseudo-header after a regular one
            if name == b":method" and method is None:
                method = value
            elif name == b":path" and path is None:
                path = value
            elif name == b":authority" and authority is None:
                authority = value
            elif name == b":scheme" and scheme is None:
                scheme = value
            else:
                return None  # unknown (:protocol, :status) or repeated
            continue
        regular = True
        if _NAME.fullmatch(name) is None or not valid_value(value) or name in _REQ_HOP:
            return None
        if name == b"host":
            if host is not None:
                return None
            host = value
            continue
        if name == b"content-length":
            if not value.isdigit() or (length is not None and value != length):
                return None
            if length is not None:
                continue
            length = value
        elif name == b"te" and value.lower() != b"trailers":
            return None
        out.append((name, value))
    if method is None or _TOKEN.fullmatch(method) is None:
        return None
    if authority is None:
        authority = host
    elif host is not None and host != authority:
        return None
    if authority is None or not valid_value(authority) or b" " in authority or b"\t" in authority:
        return None
    if method == b"CONNECT":
        if path is not None or scheme is not None:
            return None
        return RequestHead(method, authority, out, b"2")
    if scheme is None or path is None or _VISIBLE.fullmatch(path) is None:
        return None
    out.insert(0, (b"host", authority))
    if not ended and length is None:
        out.append((b"transfer-encoding", b"chunked"))
    return RequestHead(method, path, out, b"2")


Stream = _Stream

__all__ = [
    "PREFACE", "FloodMeter", "H2Limits", "H2StreamChannel", "H2StreamCodec", "Stream", "build_request_head",
    "goaway_frame",
]
