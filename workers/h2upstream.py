"""HTTP/2 client connections to upstreams (``backend-protocol`` GRPC, GRPCS, H2C).

Theory of operation
-------------------
``H2Pool`` (one per worker, owned by ``Pool``) keeps HTTP/2 connections per endpoint and
TLS parameters.  A request takes any open connection with a free stream slot (the
upstream's SETTINGS_MAX_CONCURRENT_STREAMS) or opens a new one (cleartext for GRPC/H2C,
TLS with ALPN ``h2`` for GRPCS, via ``Pool.connect``, so under the connect timeout).
Many requests are multiplexed as streams on one connection.

``H2Upstream`` wraps one connection: the ``h2`` state machine (sans-I/O) plus two locks.
There is no background task: whichever stream needs something from the network (its
response head, data, or send window) takes the read lock, reads ONE chunk, feeds it to
h2 and files the resulting events under their streams (``_StreamState``), then releases
the lock and re-checks its own state (the pattern of httpcore's HTTP/2 client).  So the
waiting streams take turns reading and every event reaches its stream; nothing is read
while no request is active (the upstream's PINGs are answered on the next use).  Writes
are ``data_to_send()`` flushed under the write lock, so frames go out in h2's order.

Flow control: we send DATA only within the stream's and connection's send window (waiting
for WINDOW_UPDATE by reading), and acknowledge received DATA only when the caller takes
it (``receive_data``), so an upstream can never get more than one window ahead of a slow
client.  Trailers (gRPC's ``grpc-status``) are kept for the caller.

``workers.h2forward`` sends an HTTP/1.1 client's request over it (``forward_h2``).

The HTTP/2 client-facing server (``workers/http2.py``) can use ``H2Pool.open_stream`` and
``H2Stream`` directly: send head/data/end, then response head, data chunks and trailers.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from fastingress.errors import (
    FastIngressError,
    UpstreamFailed,
    UpstreamTimeout,
)
from fastingress.snapshot.schema import Upstream
from workers.upstream_tls import ClientTLS


class Connected(Protocol):
    """What ``Pool.connect`` returns (a ``workers.pool.UpstreamConn``): its stream is used."""

    stream: trio.abc.Stream

log = logging.getLogger("fastingress.worker")

Address = tuple[str, int]
Header = tuple[bytes, bytes]
ConnectFn = Callable[[Address, float, "ClientTLS | None", str], Awaitable[Connected]]

RECV_SIZE = 65536
_INF = float("inf")
_DEADLINE_SLACK = 0.05  # seconds
_MAX_CONNS_PER_KEY = 8
# Response headers that must not be relayed (hop-by-hop / HTTP/2 forbidden ones).
_RESP_DROP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
        b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"server",
    }
)
GRPC_UNAVAILABLE = 14
GRPC_DEADLINE_EXCEEDED = 4
GRPC_INTERNAL = 13


class ConnectionLost(Exception):
    """The HTTP/2 connection failed; ``before_response`` when the stream may be retried."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class _StreamState:
    __slots__ = ("data", "ended", "error", "head", "trailers")

    def __init__(self) -> None:
        self.head: tuple[int, list[Header]] | None = None
        self.data: deque[tuple[bytes, int]] = deque()
        self.trailers: list[Header] | None = None
        self.ended = False
        self.error: ConnectionLost | None = None


class H2Upstream:
    """One HTTP/2 connection to an upstream endpoint (see the module docstring)."""

    def __init__(self, stream: trio.abc.Stream, key: Address, tls: ClientTLS | None, label: str) -> None:
        self.stream = stream
        self.key = key
        self.tls = tls
        self.label = label
        # Outbound headers come from h11 or h2 parsers that validated them: skip re-validating.
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.streams: dict[int, _StreamState] = {}
        self.read_lock = trio.Lock()
        self.write_lock = trio.Lock()
        self.closed = False
        self.stream_closed = False
        self.goaway = False
        self.settings_received = False
        self.requests = 0
        self.idle_since = trio.current_time()

    # ---- connection-level --------------------------------------------------------------

    async def start(self) -> None:
        self.conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            },
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(16 << 20)  # connection window: 16 MiB
        await self.flush()
        # Wait for the upstream's SETTINGS (one round trip per new connection): streams then
        # start with its real window and stream limit, and a peer that does not speak
        # HTTP/2 fails here, clearly, rather than on a request.
        await self._wait(lambda: self.settings_received)
        if self.closed:
            raise ConnectionLost("no HTTP/2 SETTINGS from upstream (does it speak HTTP/2?)")

    @property
    def available(self) -> bool:
        if self.closed or self.goaway:
            return False
        limit = self.conn.remote_settings.max_concurrent_streams
        return self.conn.open_outbound_streams < limit

    @property
    def busy(self) -> bool:
        return bool(self.streams)

    async def flush(self) -> None:
        async with self.write_lock:
            data = self.conn.data_to_send()
            if data:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._lost(f"send failed: {exc}", retryable=True)
                    raise ConnectionLost(f"send failed: {exc}", retryable=True) from None
                except BaseException:
                    # Cancelled (a request's timeout) with frames taken from h2 but maybe not
                    # all written: the byte stream may be cut mid-frame, so nobody may use it.
                    self._lost("a write to the upstream was interrupted", retryable=False)
                    raise

    def _lost(self, reason: str, *, retryable: bool) -> None:
        """The connection is unusable: every open stream fails."""
        self.closed = True
        for state in self.streams.values():
            if state.error is None and not state.ended:
                state.error = ConnectionLost(reason, retryable=retryable and state.head is None)

    async def aclose(self) -> None:
        self.closed = True
        if not self.stream_closed:
            self.stream_closed = True
            await trio.aclose_forcefully(self.stream)

    async def _read_once(self) -> None:
        """Read one chunk and file its events (call with ``read_lock`` held)."""
        if self.closed:
            return
        try:
            data = await self.stream.receive_some(RECV_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._lost(f"read failed: {exc}", retryable=True)
            return
        if not data:
            self._lost("upstream closed the connection", retryable=True)
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._lost(f"HTTP/2 protocol error from upstream: {exc}", retryable=False)
            return
        for event in events:
            self._file(event)
        with contextlib.suppress(ConnectionLost):
            await self.flush()  # SETTINGS/PING acknowledgements, window updates

    def _file(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", 0)
        state = self.streams.get(sid) if sid else None
        if isinstance(event, h2.events.ResponseReceived):
            if state is not None:
                state.head = _split_response(event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            if state is not None:
                state.data.append((event.data or b"", event.flow_controlled_length or 0))
            elif event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.TrailersReceived):
            if state is not None:
                state.trailers = [(bytes(n), bytes(v)) for n, v in event.headers or []]
        elif isinstance(event, h2.events.StreamEnded):
            if state is not None:
                state.ended = True
        elif isinstance(event, h2.events.StreamReset):
            if state is not None and not state.ended:
                code = event.error_code
                state.error = ConnectionLost(
                    f"upstream reset the stream ({code!r})",
                    retryable=state.head is None and code == h2.errors.ErrorCodes.REFUSED_STREAM,
                )
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_received = True
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True
            last = event.last_stream_id or 0
            for stream_id, st in self.streams.items():
                if stream_id > last and st.error is None and not st.ended:
                    st.error = ConnectionLost("upstream sent GOAWAY", retryable=True)
            if event.error_code != h2.errors.ErrorCodes.NO_ERROR:
                self._lost(f"upstream sent GOAWAY ({event.error_code!r})", retryable=False)

    async def _wait(self, done: Callable[[], bool]) -> None:
        """Read (taking turns with other streams) until ``done()`` or the connection fails."""
        while not done():
            if self.closed:
                return
            async with self.read_lock:
                if done() or self.closed:
                    return
                await self._read_once()

    # ---- streams -------------------------------------------------------------------

    async def open_stream(self, headers: list[Header], *, end_stream: bool) -> H2Stream:
        if self.closed or self.goaway:
            raise ConnectionLost("connection is closing", retryable=True)
        try:
            sid = self.conn.get_next_available_stream_id()
            self.conn.send_headers(sid, headers, end_stream=end_stream)
        except (h2.exceptions.ProtocolError, ValueError) as exc:
            raise UpstreamFailed(f"upstream {self.label}: cannot send request: {exc}") from None
        self.requests += 1
        state = self.streams[sid] = _StreamState()
        stream = H2Stream(self, sid, state)
        await self.flush()
        return stream


class H2Stream:
    """One request/response exchange on an ``H2Upstream``."""

    __slots__ = ("conn", "id", "state")

    def __init__(self, conn: H2Upstream, stream_id: int, state: _StreamState) -> None:
        self.conn = conn
        self.id = stream_id
        self.state = state

    def _can_send(self) -> bool:
        return self.state.error is not None or self.conn.conn.local_flow_control_window(self.id) > 0

    def _check(self) -> None:
        if self.state.error is not None:
            raise self.state.error

    async def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        """Send request body bytes within the flow-control windows."""
        conn = self.conn
        h2conn = conn.conn
        view = memoryview(data)
        while view:
            self._check()
            window = min(h2conn.local_flow_control_window(self.id), h2conn.max_outbound_frame_size)
            if window <= 0:
                await conn._wait(self._can_send)
                if conn.closed and self.state.error is None:
                    raise ConnectionLost("connection closed", retryable=False)
                continue
            chunk = bytes(view[:window])
            view = view[window:]
            try:
                h2conn.send_data(self.id, chunk, end_stream=end_stream and not view)
            except h2.exceptions.ProtocolError as exc:
                raise ConnectionLost(f"cannot send data: {exc}") from None
            await conn.flush()
        if end_stream and not data:
            await self.end()

    async def end(self) -> None:
        self._check()
        try:
            self.conn.conn.end_stream(self.id)
        except h2.exceptions.ProtocolError as exc:
            raise ConnectionLost(f"cannot end the stream: {exc}") from None
        await self.conn.flush()

    async def response_head(self) -> tuple[int, list[Header]]:
        state = self.state
        await self.conn._wait(lambda: state.head is not None or state.error is not None or state.ended)
        if state.head is not None:
            return state.head
        self._check()
        raise ConnectionLost("stream ended without a response", retryable=False)

    async def receive_data(self) -> bytes:
        """The next body chunk, b"" at the end of the response (then see ``trailers``)."""
        state = self.state
        await self.conn._wait(lambda: bool(state.data) or state.ended or state.error is not None)
        if state.data:
            data, flow = state.data.popleft()
            if flow and not self.conn.closed:
                self.conn.conn.acknowledge_received_data(flow, self.id)
                await self.conn.flush()
            return data
        if state.ended:
            return b""
        self._check()
        raise ConnectionLost("connection closed mid-response")

    @property
    def trailers(self) -> list[Header]:
        return self.state.trailers or []

    async def close(self) -> None:
        """Forget the stream; reset it first if it is still open (cancelled request)."""
        conn = self.conn
        conn.streams.pop(self.id, None)
        if conn.closed:
            return
        try:
            h2stream = conn.conn.streams.get(self.id)
            if h2stream is not None and not h2stream.closed:
                conn.conn.reset_stream(self.id, h2.errors.ErrorCodes.CANCEL)
            # Data that arrived but was never taken still counts against the connection window.
            pending = sum(flow for _, flow in self.state.data)
            if pending:
                conn.conn.acknowledge_received_data(pending, self.id)
        except (h2.exceptions.ProtocolError, KeyError):
            pass
        self.state.data.clear()
        with trio.CancelScope(shield=True), contextlib.suppress(ConnectionLost):
            await conn.flush()
        conn.idle_since = trio.current_time()


def _split_response(raw: list[tuple[bytes, bytes]]) -> tuple[int, list[Header]]:
    status = 0
    headers: list[Header] = []
    for raw_name, raw_value in raw:
        name = bytes(raw_name)
        if name == b":status":
            status = int(raw_value)
        elif not name.startswith(b":"):
            headers.append((name, bytes(raw_value)))
    return status, headers


class H2Pool:
    """HTTP/2 upstream connections of one worker, per endpoint and TLS parameters."""

    __slots__ = ("_conns", "_opening")

    def __init__(self) -> None:
        self._conns: dict[tuple[str, int, ClientTLS | None], list[H2Upstream]] = {}
        # A connection being opened per key: requests arriving meanwhile wait for it and share
        # it (its stream slots) instead of each opening one of their own.
        self._opening: dict[tuple[str, int, ClientTLS | None], trio.Event] = {}

    async def get(
        self,
        key: Address,
        tls: ClientTLS | None,
        upstream: Upstream,
        connect: ConnectFn,
        *,
        fresh: bool = False,
    ) -> tuple[H2Upstream, bool]:
        """(an open connection with a free stream slot, whether it was reused)."""
        pkey = (key[0], key[1], tls)
        conns = self._conns.setdefault(pkey, [])
        while True:
            for conn in list(conns):
                if conn.closed or (conn.goaway and not conn.busy):
                    conns.remove(conn)
                    await conn.aclose()
            if fresh:
                break
            for conn in conns:
                if conn.available:
                    return conn, True
            opening = self._opening.get(pkey)
            if opening is None:
                break
            await opening.wait()  # bounded by that connect's own timeout
        opened = self._opening[pkey] = trio.Event()
        try:
            return await self._open(pkey, key, tls, upstream, connect, conns)
        finally:
            opened.set()
            if self._opening.get(pkey) is opened:
                del self._opening[pkey]

    async def _open(  # noqa: PLR0917
        self,
        pkey: tuple[str, int, ClientTLS | None],
        key: Address,
        tls: ClientTLS | None,
        upstream: Upstream,
        connect: ConnectFn,
        conns: list[H2Upstream],
    ) -> tuple[H2Upstream, bool]:
        uconn = await connect(key, upstream.connect_timeout, tls, upstream.name)
        conn = H2Upstream(uconn.stream, key, tls, upstream.name)
        error: FastIngressError | None = None
        try:
            with trio.move_on_after(upstream.connect_timeout) as scope:
                await conn.start()
        except ConnectionLost as exc:
            error = UpstreamFailed(f"upstream {upstream.name}: {exc}")
        except BaseException:
            await conn.aclose()
            raise
        if scope.cancelled_caught:
            error = UpstreamTimeout(f"upstream {upstream.name}: HTTP/2 SETTINGS timed out")
        if error is not None:
            await conn.aclose()
            raise error
        conns.append(conn)
        if len(conns) > _MAX_CONNS_PER_KEY:
            for old in conns[:-_MAX_CONNS_PER_KEY]:
                if not old.busy:
                    conns.remove(old)
                    await old.aclose()
        return conn, False

    async def prune(self, retired: frozenset[Address]) -> None:
        """Close connections without streams to endpoints that left the snapshot."""
        for pkey in [k for k in self._conns if (k[0], k[1]) in retired]:
            conns = self._conns[pkey]
            for conn in list(conns):
                if conn.closed or not conn.busy:
                    conns.remove(conn)
                    await conn.aclose()
            if not conns:
                del self._conns[pkey]

    async def reap(self, max_idle: float) -> None:
        """Close connections without streams, idle longer than ``max_idle`` seconds."""
        deadline = trio.current_time() - max_idle
        for pkey in list(self._conns):
            conns = self._conns[pkey]
            for conn in list(conns):
                if conn.closed or (not conn.busy and conn.idle_since < deadline):
                    conns.remove(conn)
                    await conn.aclose()
            if not conns:
                del self._conns[pkey]

    async def close(self) -> None:
        for conns in self._conns.values():
            for conn in conns:
                await conn.aclose()
        self._conns.clear()

    def count(self, key: Address, tls: ClientTLS | None = None) -> int:
        return len(self._conns.get((key[0], key[1], tls), ()))


# ---- gRPC ------------------------------------------------------------------------------


def is_grpc(headers: list[Header]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.lower().startswith(b"application/grpc")
    return False


def grpc_status_for(exc: BaseException, *, connecting: bool = False) -> int:
    """UNAVAILABLE for failures to reach the upstream (connect timeouts included, like
    Envoy), DEADLINE_EXCEEDED for an upstream that timed out on a request."""
    if isinstance(exc, UpstreamTimeout) and not connecting:
        return GRPC_DEADLINE_EXCEEDED
    return GRPC_UNAVAILABLE


def grpc_error_headers(status: int, message: str) -> list[Header]:
    """Headers of a gRPC "trailers-only" error response (HTTP status 200)."""
    text = message.encode("ascii", "replace")[:200]
    # grpc-message is percent-encoded (gRPC over HTTP/2 spec); keep it to safe bytes.
    safe = b"".join(bytes([c]) if 0x20 <= c < 0x7F and c != 0x25 else b"%%%02X" % c for c in text)
    return [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(status).encode()),
        (b"grpc-message", safe),
    ]


__all__ = [
    "GRPC_DEADLINE_EXCEEDED", "GRPC_INTERNAL", "GRPC_UNAVAILABLE", "ConnectFn", "Connected", "ConnectionLost",
    "H2Pool", "H2Stream", "H2Upstream", "Header", "grpc_error_headers", "grpc_status_for", "is_grpc",
]
