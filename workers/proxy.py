"""The HTTP/1.1 reverse-proxy data path of a worker (no sockets here: trio Streams in).

Theory of operation
-------------------
A ``Session`` runs one client connection over a trio Stream as a loop of request cycles,
one task per connection (plus one per request body).  It is the reference data path
(``--http1-codec h11``: h11 parses), the path of every HTTP/2 stream (``workers.http2``), and
where the event-driven core (``workers.h1conn``) hands a request that needs tasks (an Upgrade
tunnel, an HTTP/2 upstream; the llhttp codec and the parsed head move along).
``workers.serve.serve_client`` starts one for an accepted stream; tests run it over
``trio.testing.memory_stream_pair`` with an injected ``connect``.

One request cycle:

1. read the request head (``ServerCodec``) under ONE cancel scope per connection (renewed
   only after it fired) whose deadline is moved before every blocking operation (``_arm``);
   ``phase`` records which kind of operation the deadline belongs to, so when it fires we
   know whether it was a client timeout (close quietly) or an upstream timeout (504 if no
   response byte went out yet);
2. take the route table *now* (a snapshot swap later does not affect this request) and
   ``workers.decide.decide`` what to do: answer directly (redirect, respond, errors) or
   forward;
3. forwarding: pick a backend (smooth WRR) and an endpoint (round robin over ready ones),
   take an idle pooled connection or connect (one retry on another endpoint), send the
   head (plus end of message in the same write when there is no body), then relay the
   response, coalescing everything available into one write per upstream read.  With a
   request body, a second task (the "pump") streams it upstream while the response is
   relayed, so an upstream that answers early is relayed at once;
4. a pooled connection that dies before any response byte is retried once on a fresh one
   when no body byte was consumed;  ``101 Switching Protocols`` turns the two connections
   into a raw byte tunnel (closed when either side closes, or after the upstream's
   ``read_timeout`` without a byte from it, as nginx does).

Timeouts are per operation (nginx semantics): ``client_header_timeout`` for a head and for
each read of a request body, ``keepalive_timeout`` between requests, the upstream's
``connect_timeout``, ``send_timeout`` (also used for writes to the client) and
``read_timeout``, which starts once the request body has been sent.

HTTP/2 (``workers/http2.py``) runs one ``Session`` per stream with an h2-backed codec and
stream in place of ``ServerCodec`` and the socket, so every request takes this same path; a
plain connection whose first bytes are the HTTP/2 preface (h2c prior knowledge) raises
``H2Preface`` here and ``serve_client`` hands it over.

Errors are ``fastingress.errors`` exceptions carrying ``status_hint``; before the response
started they become a short text answer, after it they abort the client connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import trio

from fastingress.errors import (
    BadRequest,
    BodyTooLarge,
    FastIngressError,
    PeerError,
    UpstreamFailed,
    UpstreamTimeout,
)
from fastingress.snapshot.schema import GlobalSettings, Upstream
from workers.decide import NO_LABELS, Answer, Handoff, Pending, Proxy, decide
from workers.h2upstream import forward_h2
from workers.heads import TEXT, RequestInfo, add_forwarded, error_body, response_headers, scan_request
from workers.http1 import Body, Event, RequestHead, ResponseHead, ServerCodec, Signal
from workers.llhttp import ServerCodec as LlhttpServerCodec
from workers.policy import RequestCtx
from workers.pool import UpstreamConn
from workers.state import Worker
from workers.tlspolicy import add_hsts
from workers.upstream_tls import client_tls

log = logging.getLogger("fastingress.worker")

RECV_SIZE = 65536
DEADLINE_SLACK = 0.05  # seconds
_INF = float("inf")
_perf = time.perf_counter
_now = trio.current_time

# What the cycle's deadline currently guards.
PH_HEAD = 0  # waiting for / reading a request head
PH_CLIENT = 1  # reading the body from / writing the answer to the client
PH_UPSTREAM = 2  # sending to / reading from the upstream

_NEED_DATA = Signal.NEED_DATA
_H2_PREFACE_START = b"PRI * HTTP/2.0"
_END = Signal.END


def _arm(scope: trio.CancelScope, timeout: float) -> None:
    """Set ``scope``'s deadline to now + ``timeout`` (an idle timeout for the next operation).

    Moving a deadline costs a heap update in trio; consecutive operations of a request
    usually want (almost) the same deadline, so a deadline at most ``DEADLINE_SLACK``
    earlier than asked is kept: a timeout may fire up to that much early.
    """
    deadline = _now() + timeout
    if not 0.0 <= deadline - scope.deadline <= DEADLINE_SLACK:
        scope.deadline = deadline


class _DeadConnection(Exception):
    """A reused upstream connection closed before answering (retry it once)."""


class _ClientGone(Exception):
    """The client went away or timed out while its body was being read."""


class H2Preface(Exception):
    """The first bytes of a plain connection are the HTTP/2 preface (h2c prior knowledge)."""

    def __init__(self, data: bytes) -> None:
        super().__init__("HTTP/2 preface")
        self.data = data


def new_server_codec(worker: Worker) -> ServerCodec:
    """The client-side codec the worker is configured with (llhttp, or the h11 reference)."""
    if worker.http1_codec == "h11":
        return ServerCodec(worker.settings.max_header_bytes)
    return LlhttpServerCodec(worker.settings.max_header_bytes)  # type: ignore[return-value]


class Session:
    """One client connection."""

    __slots__ = (
        "body_consumed", "client_ip", "codec", "ctx", "idle", "in_request", "labels", "method", "phase",
        "pump_done", "pump_error", "scope", "status", "stream", "t0", "target", "tls", "tls_peer", "worker",
    )

    def __init__(
        self,
        worker: Worker,
        stream: trio.abc.Stream,
        client_ip: str,
        tls: str = "",
        codec: ServerCodec | None = None,
    ) -> None:
        self.worker = worker
        self.tls = tls  # "" for plain HTTP
        self.stream = stream
        self.client_ip = client_ip.encode()
        self.codec = codec if codec is not None else new_server_codec(worker)
        self.scope = trio.CancelScope()
        self.idle = False
        self.phase = PH_HEAD
        self.in_request = False
        self.status = 0
        self.t0 = 0.0
        self.labels = NO_LABELS
        self.method = b""
        self.target = b""
        self.body_consumed = 0
        self.pump_done = False
        self.pump_error: BaseException | None = None
        self.ctx: RequestCtx | None = None  # the policies of the request's route, if any
        # the client's TLS connection (client certificates), from a TLS stream or an HTTP/2 one
        self.tls_peer: object = getattr(stream, "ssl_connection", None)

    def drain(self) -> None:
        """The worker drains: an idle connection closes now, a busy one after its response."""
        if self.idle:
            self.scope.cancel()

    # ---- the cycle loop --------------------------------------------------------------

    async def run(self, head: RequestHead | None = None, *, t0: float = 0.0) -> None:
        """Serve cycles until the connection ends; ``head``: the first request's head, already
        read (a handoff from the event-driven core), ``t0`` when it arrived."""
        first = True
        while True:
            # One scope serves every cycle until its deadline fires (a fired scope stays
            # cancelled, so only then is a new one made).
            with trio.CancelScope() as scope:
                self.scope = scope
                while True:
                    keep = await self._cycle(first, head, t0)
                    head = None
                    self.finish_request(499)
                    if not keep or self.worker.draining:
                        return
                    self.codec.start_next_cycle()
                    first = False
            keep = await self._after_timeout()  # only reached when the deadline fired
            self.finish_request(499)
            if not keep or self.worker.draining:
                return
            self.codec.start_next_cycle()
            first = False

    def finish_request(self, default_status: int) -> None:
        """Record metrics for the request in progress, if any."""
        if not self.in_request:
            return
        self.in_request = False
        ctx = self.ctx
        if ctx is not None:
            self.ctx = None
            ctx.finish()
        worker = self.worker
        status = self.status or default_status
        duration = _perf() - self.t0
        host, ingress, service = self.labels
        worker.metrics.observe(status, host, ingress, service, duration)
        if worker.access_log:
            log.info(
                "%s %s %s %d %.6f %s %s%s",
                self.client_ip.decode(), self.method.decode("latin-1"),
                self.target.decode("latin-1"), status, duration, host, service,
                " " + self.tls if self.tls else "",
            )

    async def _cycle(self, first: bool, head: RequestHead | None = None, t0: float = 0.0) -> bool:
        if head is None:
            head = await self._read_head(first)
            if head is None:
                return False
            t0 = _perf()
        self.in_request = True
        self.t0 = t0
        self.status = 0
        self.labels = NO_LABELS
        self.method = head.method
        self.target = head.target
        try:
            return await self._handle(head)
        except FastIngressError as exc:
            return await self._fail(exc)

    async def _read_head(self, first: bool) -> RequestHead | None:
        codec = self.codec
        settings = self.worker.settings
        scope = self.scope
        self.phase = PH_HEAD
        pending = False
        skip = codec.nothing_buffered
        while True:
            try:
                if skip:
                    skip = False
                    ev: Event = _NEED_DATA
                else:
                    ev = codec.next_event()
            except PeerError as exc:
                self.in_request = True
                self.t0 = _perf()
                self.status = 0
                self.labels = NO_LABELS
                await self._send_error(exc.status_hint, close=True)
                return None
            if type(ev) is RequestHead:
                return ev
            if ev is not _NEED_DATA:
                return None  # CLOSED (or a protocol switch we do not expect here)
            if pending:
                timeout = settings.client_header_timeout
            else:
                if self.worker.draining:
                    return None
                timeout = settings.client_header_timeout if first else settings.keepalive_timeout
                self.idle = True
            _arm(scope, timeout)
            data = await self.stream.receive_some(RECV_SIZE)
            self.idle = False
            if not data:
                return None
            if first and not pending and data[:14] == _H2_PREFACE_START and not self.tls \
                    and self.worker.settings.http2:
                raise H2Preface(bytes(data))  # h2c prior knowledge: serve_client hands over
            pending = True
            codec.receive_data(data)

    async def _after_timeout(self) -> bool:
        """The cycle's deadline fired; ``phase`` says whose operation it was."""
        if self.phase != PH_UPSTREAM or not self.in_request:
            return False
        self.worker.metrics.upstream_errors += 1
        log.warning("upstream timeout: %s %s", self.method.decode("latin-1"), self.target.decode("latin-1"))
        if not self.codec.can_respond:
            return False
        with trio.move_on_after(self.worker.settings.client_header_timeout):
            return await self._send_error(504)
        return False

    async def _fail(self, exc: FastIngressError) -> bool:
        if isinstance(exc, (UpstreamFailed, UpstreamTimeout)):
            self.worker.metrics.upstream_errors += 1
            log.warning("upstream error (%s %s): %s", self.method.decode("latin-1"),
                        self.target.decode("latin-1"), exc)
        if not self.codec.can_respond:
            return False  # the response started: all we can do is cut the connection
        close = isinstance(exc, (BadRequest, BodyTooLarge)) or None
        return await self._send_error(exc.status_hint, close=close)

    # ---- direct answers --------------------------------------------------------------

    async def _send_error(self, status: int, *, close: bool | None = None) -> bool:
        return await self._send_simple(status, error_body(status), TEXT, close=close)

    async def _send_simple(
        self,
        status: int,
        body: bytes,
        content_type: bytes,
        *,
        extra: Sequence[tuple[bytes, bytes]] = (),
        close: bool | None = None,
    ) -> bool:
        """Answer in one write; returns whether the connection may be kept alive."""
        codec = self.codec
        if close is None:
            close = self.worker.draining or not codec.their_message_done
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"server", self.worker.server_header),
            *extra,
        ]
        if self.tls and self.worker.hsts is not None:
            headers.append((b"strict-transport-security", self.worker.hsts))
        if self.ctx is not None:
            self.ctx.respond(status, headers)
        if close:
            headers.append((b"connection", b"close"))
        self.status = status
        if self.method != b"HEAD":  # (a HEAD answer declares the length, sends no body)
            data = codec.response_head(status, headers) + codec.data(body) + codec.end()
        else:
            data = codec.response_head(status, headers) + codec.end()
        self.phase = PH_CLIENT
        _arm(self.scope, self.worker.settings.client_header_timeout)
        await self.stream.send_all(data)
        return not close and codec.reusable

    # ---- routing ---------------------------------------------------------------------

    async def _handle(self, head: RequestHead) -> bool:
        worker = self.worker
        table = worker.table
        info = scan_request(head.headers)
        if not info.has_body:
            self.codec.next_event()  # the (empty) end of the request message
        balancer = worker.balancer
        labels = list(NO_LABELS)
        try:
            decision = decide(table, balancer, head.method, head.target, info, tls=bool(self.tls),
                              https_port=worker.https_port, labels=labels, client_ip=self.client_ip.decode(),
                              now=_now(), tls_peer=self.tls_peer)
            while isinstance(decision, Pending):  # a policy waits (an auth subrequest...)
                self.ctx = decision.ctx
                decision = decision.resume(await decision.defer.run())
        finally:
            self.labels = (labels[0], labels[1], labels[2])
        if isinstance(decision, Answer):
            self.ctx = decision.ctx
            return await self._send_simple(decision.status, decision.body, decision.content_type,
                                           extra=decision.extra)
        self.ctx = decision.ctx if isinstance(decision, Proxy) else (
            decision.proxy.ctx if decision.proxy is not None else None)
        if isinstance(decision, Handoff):
            proxy = decision.proxy
            assert proxy is not None
            if decision.reason == "http2-upstream":
                return await forward_h2(self, head, info, target=proxy.target, authority=proxy.host,
                                        upstream=proxy.upstream, balancer=balancer, limit=proxy.limit)
        else:
            proxy = decision
        assert table is not None and proxy is not None
        return await self._forward(head, info, proxy, table.snapshot.settings)

    # ---- forwarding ------------------------------------------------------------------

    async def _forward(
        self, head: RequestHead, info: RequestInfo, proxy: Proxy, settings: GlobalSettings
    ) -> bool:
        worker = self.worker
        upstream = proxy.upstream
        if proxy.primary is None:  # ExternalName: resolved here (cached per dns_ttl)
            addrs = tuple((a, upstream.port) for a in await worker.pool.resolve(upstream))
            primary, alternate = worker.balancer.pick(upstream.name, addrs)
        else:
            primary, alternate = proxy.primary, proxy.alternate
        headers = info.headers
        add_forwarded(
            headers, info, host=proxy.host, client_ip=self.client_ip,
            proto=b"https" if self.tls else worker.scheme_bytes,
            port=worker.https_port_bytes if self.tls else worker.port_bytes,
        )
        if info.upgrade is not None:
            headers.append((b"connection", b"upgrade"))
            headers.append((b"upgrade", info.upgrade))
        if info.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        target = proxy.target
        limit = proxy.limit

        conn, reused = await self._acquire(primary, alternate, upstream, settings)
        self.body_consumed = 0
        try:
            while True:
                try:
                    keep = await self._exchange(
                        conn, reused, method=head.method, target=target, headers=headers, info=info,
                        upstream=upstream, limit=limit,
                    )
                except _DeadConnection:
                    await trio.aclose_forcefully(conn.stream)
                    if self.body_consumed:
                        raise UpstreamFailed(
                            f"upstream {upstream.name} closed a kept-alive connection"
                        ) from None
                    self.scope.deadline = _INF
                    conn, reused = await self._acquire(conn.key, None, upstream, settings, fresh=True)
                    continue
                break
        except BaseException:
            await trio.aclose_forcefully(conn.stream)
            raise
        ucodec = conn.codec
        if ucodec.reusable and not worker.draining:
            await worker.pool.release(conn, settings.upstream_keepalive_connections,
                                      settings.upstream_keepalive_requests)
        elif not ucodec.switched:
            await trio.aclose_forcefully(conn.stream)
        return keep

    async def _acquire(
        self,
        primary: tuple[str, int],
        alternate: tuple[str, int] | None,
        upstream: Upstream,
        settings: GlobalSettings,
        *,
        fresh: bool = False,
    ) -> tuple[UpstreamConn, bool]:
        pool = self.worker.pool
        tls = client_tls(upstream)  # None for cleartext; HTTPS: TLS inside connect
        if not fresh:
            conn = await pool.take(primary, settings.upstream_keepalive_timeout, tls)
            if conn is not None:
                return conn, True
        self.phase = PH_CLIENT
        self.scope.deadline = _INF  # connect has its own timeout
        try:
            return await pool.connect(primary, upstream.connect_timeout, tls, upstream.name), False
        except (UpstreamFailed, UpstreamTimeout) as exc:
            if alternate is None:
                raise
            self.worker.metrics.upstream_errors += 1
            log.warning("upstream %s: %s; trying %s:%d", upstream.name, exc, *alternate)
        conn = await pool.take(alternate, settings.upstream_keepalive_timeout, tls)
        if conn is not None:
            return conn, True
        return await pool.connect(alternate, upstream.connect_timeout, tls, upstream.name), False

    async def _exchange(
        self,
        conn: UpstreamConn,
        reused: bool,
        *,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        info: RequestInfo,
        upstream: Upstream,
        limit: int,
    ) -> bool:
        ucodec = conn.codec
        conn.requests += 1
        data = ucodec.request_head(method, target, headers, trusted=True)
        has_body = info.has_body
        if not has_body:
            data += ucodec.end()
        self.phase = PH_UPSTREAM
        _arm(self.scope, upstream.send_timeout)
        try:
            await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if reused:
                raise _DeadConnection from None
            raise UpstreamFailed(f"upstream {upstream.name}: send failed: {exc}") from None
        if not has_body:
            self.pump_done = True
            return await self._relay(conn, reused, upstream)

        self.pump_done = False
        self.pump_error = None
        err: BaseException | None = None
        keep = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, conn, upstream, limit, nursery.cancel_scope)
            try:
                keep = await self._relay(conn, reused, upstream)
            except (FastIngressError, _DeadConnection) as exc:
                err = exc
            nursery.cancel_scope.cancel()
        pump_error = self.pump_error
        if pump_error is not None and (err is None or isinstance(err, _DeadConnection)):
            err = pump_error
        if err is not None:
            if isinstance(err, _ClientGone):
                raise trio.BrokenResourceError("client went away") from None
            raise err
        return keep and self.pump_done

    async def _pump(
        self, conn: UpstreamConn, upstream: Upstream, limit: int, nursery_scope: trio.CancelScope
    ) -> None:
        """Stream the client's request body upstream (a task beside ``_relay``)."""
        codec = self.codec
        ucodec = conn.codec
        stream = self.stream
        ustream = conn.stream
        client_timeout = self.worker.settings.client_header_timeout
        received = 0
        on_client = True
        try:
            with trio.CancelScope() as scope:
                if codec.waiting_for_100_continue:
                    _arm(scope, client_timeout)
                    await stream.send_all(codec.informational(100, []))
                while True:
                    ev = codec.next_event()
                    if ev is _NEED_DATA:
                        on_client = True
                        _arm(scope, client_timeout)
                        data = await stream.receive_some(RECV_SIZE)
                        codec.receive_data(data)
                        continue
                    if type(ev) is Body:
                        assert isinstance(ev, Body)
                        received += len(ev.data)
                        self.body_consumed = received
                        if limit and received > limit:
                            raise BodyTooLarge(f"request body exceeds {limit} bytes")
                        out = ucodec.data(ev.data)
                    elif ev is _END:
                        out = ucodec.end()
                    else:
                        raise BadRequest("request body ended unexpectedly")
                    if out:
                        on_client = False
                        _arm(scope, upstream.send_timeout)
                        await ustream.send_all(out)
                    if ev is _END:
                        self.pump_done = True
                        if self.phase == PH_UPSTREAM:
                            _arm(self.scope, upstream.read_timeout)
                        return
            if scope.cancelled_caught:
                self.pump_error = (
                    _ClientGone() if on_client
                    else UpstreamTimeout(f"upstream {upstream.name}: send timed out")
                )
        except FastIngressError as exc:
            self.pump_error = exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.pump_error = (
                _ClientGone() if on_client
                else UpstreamFailed(f"upstream {upstream.name}: send failed: {exc}")
            )
        nursery_scope.cancel()

    async def _relay(self, conn: UpstreamConn, reused: bool, upstream: Upstream) -> bool:
        """Relay the upstream's response to the client; returns client keep-alive."""
        ucodec = conn.codec
        codec = self.codec
        stream = self.stream
        ustream = conn.stream
        scope = self.scope
        out: list[bytes] = []
        got = False
        skip = ucodec.nothing_buffered
        while True:
            if skip:
                skip = False
                ev: Event = _NEED_DATA
            else:
                ev = ucodec.next_event()
            if ev is _NEED_DATA:
                if out:
                    self.phase = PH_CLIENT
                    _arm(scope, upstream.send_timeout)
                    await stream.send_all(b"".join(out))
                    out.clear()
                self.phase = PH_UPSTREAM
                if got or self.pump_done:
                    _arm(scope, upstream.read_timeout)
                else:
                    # Like nginx, the read timeout starts once the request is sent: the
                    # pump arms it when the body is done (a slow upload is not a slow upstream).
                    scope.deadline = _INF
                try:
                    data = await ustream.receive_some(RECV_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    if reused and not got:
                        raise _DeadConnection from None
                    raise UpstreamFailed(f"upstream {upstream.name}: read failed: {exc}") from None
                if not data and reused and not got:
                    raise _DeadConnection
                got = True
                ucodec.receive_data(data)
                continue
            kind = type(ev)
            if kind is Body:
                assert isinstance(ev, Body)
                out.append(codec.data(ev.data))
            elif kind is ResponseHead:
                assert isinstance(ev, ResponseHead)
                if ev.status < 200:
                    if ev.status == 101:
                        return await self._tunnel(conn, ev, out, upstream.read_timeout)
                    continue  # 100 Continue and friends: we speak for ourselves
                headers = response_headers(ev.headers, self.worker.server_header)
                if self.tls and self.worker.hsts is not None:
                    add_hsts(headers, self.worker.hsts)
                if self.ctx is not None:
                    self.ctx.respond(ev.status, headers)
                if self.worker.draining or not self.pump_done:
                    headers.append((b"connection", b"close"))
                self.status = ev.status
                out.append(codec.response_head(ev.status, headers, ev.reason, trusted=True))
            elif ev is _END:
                out.append(codec.end())
                self.phase = PH_CLIENT
                _arm(scope, upstream.send_timeout)
                await stream.send_all(b"".join(out))
                return codec.reusable
            else:
                raise UpstreamFailed(f"upstream {upstream.name} closed the connection mid-response")

    async def _tunnel(
        self, conn: UpstreamConn, ev: ResponseHead, out: list[bytes], read_timeout: float
    ) -> bool:
        """After a 101: copy raw bytes both ways until either side closes."""
        codec = self.codec
        headers = response_headers(ev.headers, self.worker.server_header, upgrade=True)
        self.status = 101
        out.append(codec.informational(101, headers, ev.reason))
        out.append(conn.codec.trailing_data)
        client_extra = codec.trailing_data
        self.phase = PH_CLIENT
        self.scope.deadline = _INF
        self.finish_request(101)  # a tunnel is "done" as a request once it is established
        await self.stream.send_all(b"".join(out))
        ustream = conn.stream
        if client_extra:
            await ustream.send_all(client_extra)
        # As in nginx, the upstream's read timeout is the tunnel's idle timeout (no byte
        # from the upstream for that long closes it); a client may stay silent.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(copy_bytes, self.stream, ustream, nursery.cancel_scope)
            nursery.start_soon(copy_bytes, ustream, self.stream, nursery.cancel_scope, read_timeout)
        await trio.aclose_forcefully(ustream)
        return False


async def copy_bytes(
    src: trio.abc.Stream, dst: trio.abc.Stream, tunnel: trio.CancelScope, idle_timeout: float = _INF
) -> None:
    """Copy bytes until EOF, an error or ``idle_timeout`` seconds without a byte from ``src``,
    then cancel ``tunnel`` (the scope of both directions).  Upgrades and TLS passthrough."""
    try:
        with trio.CancelScope() as scope:
            while True:
                _arm(scope, idle_timeout)
                data = await src.receive_some(RECV_SIZE)
                if not data:
                    break
                await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    tunnel.cancel()


__all__ = ["H2Preface", "Session", "copy_bytes", "new_server_codec"]
