"""An HTTP/1.1 client's request to an HTTP/2 upstream (``backend-protocol`` GRPC, GRPCS, H2C).

``forward_h2`` is called by a task-based ``Session`` (``workers.proxy``; the event-driven core
hands such requests over to one): the request goes out as a stream on a pooled HTTP/2
connection (``workers.h2upstream``) and the answer comes back as HTTP/1.1 (trailers only when
the response is chunked).  When the upstream fails and the request is gRPC (``content-type:
application/grpc...``) the answer is gRPC's: HTTP 200 with ``grpc-status`` 14 (UNAVAILABLE) or
4 (DEADLINE_EXCEEDED) and ``grpc-message`` (a "trailers-only" response), as ingress-nginx/Envoy
do; other requests get 502/503/504.
"""

from __future__ import annotations

import logging

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
from workers.balance import Balancer
from workers.h2upstream import (
    ConnectionLost,
    H2Stream,
    Header,
    grpc_error_headers,
    grpc_status_for,
    is_grpc,
)
from workers.heads import RequestInfo, add_forwarded, set_headers
from workers.http1 import Body, LocalProtocolError, RequestHead, ServerCodec, Signal, valid_value
from workers.pacing import Pacer, send_paced
from workers.sessionfwd import SessionBase as Session
from workers.tlspolicy import add_hsts
from workers.upstream_tls import client_tls

Address = tuple[str, int]

log = logging.getLogger("fastingress.worker")

_INF = float("inf")
RECV_SIZE = 65536
_DEADLINE_SLACK = 0.05  # seconds
# Response headers that must not be relayed (hop-by-hop / HTTP/2 forbidden ones).
_RESP_DROP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
        b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"server",
    }
)


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
    chosen: tuple[Address | None, Address | None] = (None, None),
) -> bool:
    """Proxy one HTTP/1.1 request to an HTTP/2 upstream; returns client keep-alive.  ``chosen``:
    the endpoint (and alternate) the route's selection picked (affinity, hashing, EWMA), if any."""
    grpc = is_grpc(info.headers)
    session.scope.deadline = _INF  # this exchange keeps its own deadlines
    with trio.CancelScope() as scope:
        deadline = _Deadline(scope)
        try:
            return await _exchange_h1(session, head, info, target=target, authority=authority,
                                      upstream=upstream, balancer=balancer, limit=limit, deadline=deadline,
                                      chosen=chosen)
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
    log.warning("upstream error: %s: %s; answering grpc-status %d", session.where(), exc, status)
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
    chosen: tuple[Address | None, Address | None] = (None, None),
) -> bool:
    worker = session.worker
    pool = worker.pool
    primary, alternate = chosen
    if primary is None:
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
    ctx = session.ctx
    pacer: Pacer | None = None  # limit-rate
    if ctx is not None:
        ctx.respond(status, headers)
        if ctx.limit_rate is not None:
            pacer = Pacer(*ctx.limit_rate, ctx.now)
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
        if pacer is not None:
            await _send_paced(session, data, out, pacer, deadline=deadline, timeout=upstream.send_timeout)
            continue
        out.append(codec.data(data))
        deadline.arm(upstream.send_timeout, "client")
        await session.stream.send_all(b"".join(out))
        out.clear()
    out.append(_end(codec, stream.trailers, h11_chunked=chunked))
    deadline.arm(upstream.send_timeout, "client")
    await session.stream.send_all(b"".join(out))
    return not close and codec.reusable


async def _send_paced(session: Session, data: bytes, out: list[bytes], pacer: Pacer, *, deadline: _Deadline,
                      timeout: float) -> None:
    """limit-rate: ``out`` (the head) now, then the body bytes ``data`` at the pace of ``pacer``."""
    codec = session.codec
    client = session.stream
    if out:
        deadline.arm(timeout, "client")
        await client.send_all(b"".join(out))
        out.clear()

    async def send(piece: bytes) -> None:
        await client.send_all(codec.data(piece))

    await send_paced(data, pacer, send, lambda extra: deadline.arm(timeout + extra, "client"))


def _end(codec: ServerCodec, trailers: list[Header], *, h11_chunked: bool) -> bytes:
    """End of the response, with the upstream's trailers where the client side allows them:
    an HTTP/1.1 client only on a chunked response, an HTTP/2 client always."""
    if h11_chunked or not codec.trailers_need_chunked:
        return codec.end([(n, v) for n, v in trailers if valid_value(v) and n not in _RESP_DROP])
    return codec.end()


__all__ = ["forward_h2", "request_headers"]
