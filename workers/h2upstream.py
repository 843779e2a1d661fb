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

``forward_h2`` is the HTTP/1.1-client side: a request from ``proxy.Session`` goes out as
an HTTP/2 stream and the answer comes back as HTTP/1.1 (trailers only when the response
is chunked).  When the upstream fails and the request is gRPC (``content-type:
application/grpc...``) the answer is gRPC's: HTTP 200 with ``grpc-status`` 14
(UNAVAILABLE) or 4 (DEADLINE_EXCEEDED) and ``grpc-message`` (a "trailers-only"
response), as ingress-nginx/Envoy do; other requests get 502/503/504.

The HTTP/2 client-facing server (``workers/http2.py``) can use ``H2Pool.open_stream`` and
``H2Stream`` directly: send head/data/end, then response head, data chunks and trailers.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from fastingress.errors import (
    BadRequest,
    BodyTooLarge,
    FastIngressError,
    NoEndpoint,
    UpstreamFailed,
    UpstreamTimeout,
)
from fastingress.snapshot.schema import Upstream
from workers.heads import add_forwarded, set_headers
from workers.http1 import Body, LocalProtocolError, Signal, valid_value
from workers.tlspolicy import add_hsts
from workers.upstream_tls import ClientTLS, client_tls

if TYPE_CHECKING:
    from workers.balance import Balancer
    from workers.heads import RequestInfo
    from workers.http1 import RequestHead, ServerCodec
    from workers.pool import UpstreamConn
    from workers.proxy import Session

log = logging.getLogger("fastingress.worker")

Address = tuple[str, int]
Header = tuple[bytes, bytes]
ConnectFn = Callable[[Address, float, "ClientTLS | None", str], Awaitable["UpstreamConn"]]

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

    __slots__ = ("_conns",)

    def __init__(self) -> None:
        self._conns: dict[tuple[str, int, ClientTLS | None], list[H2Upstream]] = {}

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
        for conn in list(conns):
            if conn.closed or (conn.goaway and not conn.busy):
                conns.remove(conn)
                await conn.aclose()
        if not fresh:
            for conn in conns:
                if conn.available:
                    return conn, True
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


# ---- HTTP/1.1 client -> HTTP/2 upstream --------------------------------------------------


def request_headers(
    session: Session, info: RequestInfo, upstream: Upstream, *, method: bytes, target: bytes, authority: bytes
) -> list[Header]:
    """HTTP/2 request headers: pseudo-headers, end-to-end headers and X-Forwarded-*."""
    worker = session.worker
    host = info.host
    scheme = b"https" if upstream.protocol == "GRPCS" else b"http"
    headers: list[Header] = [
        (b":method", method), (b":scheme", scheme), (b":authority", authority), (b":path", target),
    ]
    grpc = False
    for name, value in info.headers:
        if name == b"content-type" and value.lower().startswith(b"application/grpc"):
            grpc = True
        headers.append((name, value))
    if grpc or upstream.protocol in ("GRPC", "GRPCS"):
        headers.append((b"te", b"trailers"))
    forwarded: list[Header] = []
    add_forwarded(
        forwarded, info, host=host, client_ip=session.client_ip,
        proto=b"https" if session.tls else worker.scheme_bytes,
        port=worker.https_port_bytes if session.tls else worker.port_bytes,
    )
    headers.extend(forwarded[1:])  # (no Host: :authority carries it)
    if worker.proxy_headers:  # the ConfigMap's proxy-set-headers
        set_headers(headers, worker.proxy_headers)
    return headers


def _response_headers(headers: list[Header], server: bytes, keep_server: bool = False) -> list[Header]:
    """Without hop-by-hop headers, with our Server (none: server-tokens false; the upstream's
    own with allow-backend-server-header)."""
    out = [(n, v) for n, v in headers if n not in _RESP_DROP or (keep_server and n == b"server")]
    if server and not (keep_server and any(n == b"server" for n, _ in out)):
        out.append((b"server", server))
    return out


class _Deadline:
    """A cancel scope whose deadline is re-armed before each operation, and what it guards."""

    __slots__ = ("scope", "what")

    def __init__(self, scope: trio.CancelScope) -> None:
        self.scope = scope
        self.what = ""

    def arm(self, timeout: float, what: str) -> None:
        """Idle timeout for the next operation; like ``proxy._arm``, a deadline at most
        ``_DEADLINE_SLACK`` earlier than asked is kept (moving one costs a heap update)."""
        deadline = trio.current_time() + timeout
        if not 0.0 <= deadline - self.scope.deadline <= _DEADLINE_SLACK:
            self.scope.deadline = deadline
        self.what = what


async def forward_h2(
    session: Session,
    head: RequestHead,
    info: RequestInfo,
    *,
    target: bytes,
    authority: bytes,
    upstream: Upstream,
    balancer: Balancer,
    limit: int,
) -> bool:
    """Proxy one HTTP/1.1 request to an HTTP/2 upstream; returns client keep-alive."""
    grpc = is_grpc(info.headers)
    session.scope.deadline = _INF  # this exchange keeps its own deadlines
    with trio.CancelScope() as scope:
        deadline = _Deadline(scope)
        try:
            return await _exchange_h1(session, head, info, target=target, authority=authority,
                                      upstream=upstream, balancer=balancer, limit=limit, deadline=deadline)
        except (UpstreamFailed, UpstreamTimeout, NoEndpoint) as exc:
            if not grpc or not session.codec.can_respond:
                raise
            return await _grpc_error(session, exc, connecting=deadline.what == "connect")
    # The deadline fired.
    what = deadline.what
    if what == "client":
        raise trio.BrokenResourceError("client timed out")
    timeout = UpstreamTimeout(f"upstream {upstream.name}: {what} timed out")
    if grpc and session.codec.can_respond:
        return await _grpc_error(session, timeout)
    raise timeout


async def _grpc_error(session: Session, exc: FastIngressError, *, connecting: bool = False) -> bool:
    worker = session.worker
    worker.metrics.upstream_errors += 1
    status = grpc_status_for(exc, connecting=connecting)
    log.warning("upstream error (%s %s): %s; answering grpc-status %d", session.method.decode("latin-1"),
                session.target.decode("latin-1"), exc, status)
    codec = session.codec
    headers = grpc_error_headers(status, str(exc))
    headers += [(b"content-length", b"0"), *worker.answer_headers]
    close = worker.draining or not codec.their_message_done
    if close:
        headers.append((b"connection", b"close"))
    session.status = 200
    data = codec.response_head(200, headers) + codec.end()
    with trio.move_on_after(worker.settings.client_header_timeout):
        await session.stream.send_all(data)
        return not close and codec.reusable
    return False


async def _exchange_h1(
    session: Session,
    head: RequestHead,
    info: RequestInfo,
    *,
    target: bytes,
    authority: bytes,
    upstream: Upstream,
    balancer: Balancer,
    limit: int,
    deadline: _Deadline,
) -> bool:
    worker = session.worker
    pool = worker.pool
    if upstream.external_name and not upstream.endpoints:
        addrs = tuple((a, upstream.port) for a in await pool.resolve(upstream))
    else:
        addrs = balancer.ready(upstream)
    if not addrs:
        raise NoEndpoint(f"upstream {upstream.name} has no ready endpoint")
    primary, alternate = balancer.pick(upstream.name, addrs)
    headers = request_headers(session, info, upstream, method=head.method, target=target, authority=authority)
    tls = client_tls(upstream)
    h2pool = pool.h2
    has_body = info.has_body

    deadline.scope.deadline = _INF  # connects have their own timeout
    deadline.what = "connect"
    try:
        conn, reused = await h2pool.get(primary, tls, upstream, pool.connect)
    except (UpstreamFailed, UpstreamTimeout) as exc:
        if alternate is None:
            raise
        worker.metrics.upstream_errors += 1
        log.warning("upstream %s: %s; trying %s:%d", upstream.name, exc, *alternate)
        conn, reused = await h2pool.get(alternate, tls, upstream, pool.connect)

    body_started = False
    for attempt in range(2):
        stream: H2Stream | None = None
        try:
            deadline.arm(upstream.send_timeout, "send")
            stream = await conn.open_stream(headers, end_stream=not has_body)
            if has_body:
                body_started = True
                await _send_body(session, stream, upstream, limit, deadline)
            deadline.arm(upstream.read_timeout, "read")
            response = await stream.response_head()
            try:
                return await _relay_h1(session, stream, response, upstream=upstream, deadline=deadline,
                                       trailers_ok=head.http_version != b"1.0" and head.method != b"HEAD")
            except LocalProtocolError as exc:  # e.g. a body longer than its content-length
                raise UpstreamFailed(f"upstream {upstream.name}: response cannot be relayed: {exc}") from None
        except ConnectionLost as exc:
            if attempt == 0 and reused and exc.retryable and not body_started:
                deadline.scope.deadline = _INF
                deadline.what = "connect"
                conn, reused = await h2pool.get(conn.key, tls, upstream, pool.connect, fresh=True)
                continue
            raise UpstreamFailed(f"upstream {upstream.name}: {exc}") from None
        finally:
            if stream is not None:
                await stream.close()
    raise AssertionError("unreachable")


async def _send_body(
    session: Session, stream: H2Stream, upstream: Upstream, limit: int, deadline: _Deadline
) -> None:
    codec = session.codec
    client_timeout = session.worker.settings.client_header_timeout
    received = 0
    if codec.waiting_for_100_continue:
        deadline.arm(client_timeout, "client")
        await session.stream.send_all(codec.informational(100, []))
    while True:
        ev = codec.next_event()
        if ev is Signal.NEED_DATA:
            deadline.arm(client_timeout, "client")
            data = await session.stream.receive_some(RECV_SIZE)
            codec.receive_data(data)
            continue
        if type(ev) is Body:
            assert isinstance(ev, Body)
            received += len(ev.data)
            session.body_consumed = received
            if limit and received > limit:
                raise BodyTooLarge(f"request body exceeds {limit} bytes")
            deadline.arm(upstream.send_timeout, "send")
            await stream.send_data(ev.data)
        elif ev is Signal.END:
            deadline.arm(upstream.send_timeout, "send")
            await stream.end()
            return
        else:
            raise BadRequest("request body ended unexpectedly")


async def _relay_h1(
    session: Session,
    stream: H2Stream,
    response: tuple[int, list[Header]],
    *,
    upstream: Upstream,
    deadline: _Deadline,
    trailers_ok: bool,
) -> bool:
    status, rheaders = response
    worker = session.worker
    codec = session.codec
    headers = _response_headers(rheaders, worker.server_header, worker.keep_server)
    if session.tls and worker.hsts is not None:
        add_hsts(headers, worker.hsts)
    if worker.add_headers:  # the ConfigMap's add-headers
        set_headers(headers, worker.add_headers)
    if session.ctx is not None:
        session.ctx.respond(status, headers)
    close = worker.draining or not codec.their_message_done
    if close:
        headers.append((b"connection", b"close"))
    session.status = status
    chunked = trailers_ok and status not in (204, 304) and not any(n == b"content-length" for n, _ in headers)
    out = [codec.response_head(status, headers)]
    while True:
        deadline.arm(upstream.read_timeout, "read")
        try:
            data = await stream.receive_data()
        except ConnectionLost as exc:
            raise UpstreamFailed(f"upstream {upstream.name}: {exc}") from None
        if not data:
            break
        out.append(codec.data(data))
        deadline.arm(upstream.send_timeout, "client")
        await session.stream.send_all(b"".join(out))
        out.clear()
    out.append(_end(codec, stream.trailers, h11_chunked=chunked))
    deadline.arm(upstream.send_timeout, "client")
    await session.stream.send_all(b"".join(out))
    return not close and codec.reusable


def _end(codec: ServerCodec, trailers: list[Header], *, h11_chunked: bool) -> bytes:
    """End of the response, with the upstream's trailers where the client side allows them:
    an HTTP/1.1 client only on a chunked response, an HTTP/2 client always."""
    if h11_chunked or not codec.trailers_need_chunked:
        return codec.end([(n, v) for n, v in trailers if valid_value(v) and n not in _RESP_DROP])
    return codec.end()


__all__ = [
    "ConnectionLost", "H2Pool", "H2Stream", "H2Upstream", "forward_h2", "grpc_error_headers",
    "grpc_status_for", "is_grpc", "request_headers",
]
