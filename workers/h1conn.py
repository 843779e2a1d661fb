"""HTTP/1.1 client connections of the event-driven core: one state machine per connection.

Theory of operation
-------------------
A ``ClientConn`` is the protocol object of one client ``Transport`` (plain or TLS).  It never
touches a socket and never awaits: bytes come in through ``data_received``, answers go out
through ``transport.write``, and the upstream side reports through the ``upstream_*`` calls
of ``workers.h1pool.Owner``.  One request cycle:

1. ``IDLE``: the llhttp ``ServerCodec`` is fed until it yields a ``RequestHead`` (deadline:
   ``client_header_timeout`` for the first request or once bytes of a head arrived,
   ``keepalive_timeout`` between requests);
2. ``workers.decide.decide`` says what to do (no I/O): an ``Answer`` is written in one write;
   a ``Proxy`` takes an idle pooled connection to the chosen endpoint or starts a connect
   (``CONNECT``; a failed connect is retried once on the alternate endpoint); a ``Handoff``
   moves the connection to a trio task (``workers.serve``: an Upgrade tunnel, an HTTP/2
   upstream) with its codec and head, or waits for a DNS answer in a task (ExternalName);
3. ``EXCHANGE``: the head goes upstream in one write (with the end of the message when there
   is no body); a body is streamed as the client sends it (``Expect: 100-continue`` is
   answered once the upstream is there), with flow control both ways: a transport over
   ``HIGH_WATER`` stops the reading of the other side until it drains.  Every upstream read
   becomes at most one client write (head and body pieces coalesced).  The read timeout
   starts once the request is sent (nginx), the send timeout runs while a write is stuck;
4. at the end of the response the upstream connection goes back to the pool, and the next
   request (maybe already pipelined in the codec) starts at 1 — or the connection closes.

Errors: a malformed request is a 400 (431, 501, 505 as the codec says); an upstream that
fails before the response started is a 502 (504 on a timeout) with one log line naming the
host, route, upstream endpoint and request id; after the response started the client
connection is cut.  A pooled connection that dies before any response byte is retried once
on a fresh connection when no body byte went out.  When we answer before the whole request
was read (413, early errors, an upstream that answered early), the connection lingers: our
FIN goes out after the answer, and what the client still sends is read and discarded for up to
``LINGERING_TIME`` (nginx's ``lingering_close``), so it reads our answer instead of a reset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from fastingress.errors import (
    BadRequest,
    BodyTooLarge,
    FastIngressError,
    PeerError,
    UpstreamFailed,
    UpstreamTimeout,
)
from workers.decide import NO_LABELS, Answer, Decision, Pending, Proxy, decide
from workers.heads import TEXT, RequestInfo, add_forwarded, error_body, response_headers, scan_request
from workers.http1 import Body, RequestHead, ResponseHead, Signal
from workers.llhttp import LocalProtocolError, ServerCodec
from workers.loop import Core, Timed
from workers.policy import RequestCtx
from workers.tlspolicy import add_hsts
from workers.upstream_tls import client_tls

if TYPE_CHECKING:
    from workers.h1pool import CorePool, UpstreamConn
    from workers.state import Worker
    from workers.transport import Transport

log = logging.getLogger("fastingress.worker")

LINGERING_TIME = 30.0  # nginx lingering_time
LINGERING_TIMEOUT = 5.0  # nginx lingering_timeout
H2_PREFACE_START = b"PRI * HTTP/2.0"
SMALL_WRITE = 16384

IDLE, CONNECT, EXCHANGE, WAIT, LINGER, CLOSED = range(6)

_INF = float("inf")
_perf = time.perf_counter
_NEED_DATA = Signal.NEED_DATA
_END = Signal.END
_CLOSED = Signal.CLOSED


# handoff(kind, conn, arg): give the connection to a trio task; kind "session" (arg: the
# request head, served by a Session with this codec) or "h2" (arg: the bytes read so far).
HandoffFn = Callable[[str, "ClientConn", object], None]


class ClientConn(Timed):
    """One HTTP/1.1 client connection (see the module docstring)."""

    __slots__ = (
        "alternate",
        "body_sent",
        "client_ip",
        "codec",
        "core",
        "ctx",
        "first",
        "handoff",
        "head",
        "in_events",
        "in_request",
        "info",
        "labels",
        "limit",
        "linger_until",
        "method",
        "pool",
        "proxy",
        "received",
        "req_open",
        "resp_started",
        "retried",
        "reused",
        "state",
        "status",
        "t0",
        "target",
        "tls",
        "tls_conn",
        "transport",
        "up",
        "worker",
        "writing_paused",
    )

    def __init__(  # noqa: PLR0917
        self,
        core: Core,
        worker: Worker,
        pool: CorePool,
        transport: Transport,
        client_ip: str,
        tls: str = "",
        handoff: HandoffFn | None = None,
    ) -> None:
        super().__init__()
        self.core = core
        self.worker = worker
        self.pool = pool
        self.transport = transport
        self.client_ip = client_ip.encode()
        self.tls = tls  # "" for plain HTTP, else "TLSv1.3/http/1.1" (access log)
        self.handoff = handoff
        self.tls_conn: object = None  # the pyOpenSSL Connection of a TLS client (for handoffs)
        self.ctx: RequestCtx | None = None  # the policies of the request's route, if any
        self.codec = ServerCodec(worker.settings.max_header_bytes)
        self.state = IDLE
        self.first = True
        self.in_events = False
        self.writing_paused = False
        self.in_request = False
        self.t0 = 0.0
        self.status = 0
        self.labels: list[str] = list(NO_LABELS)
        self.method = b""
        self.target = b""
        self.head: RequestHead | None = None
        self.info: RequestInfo | None = None
        self.proxy: Proxy | None = None
        self.up: UpstreamConn | None = None
        self.alternate: tuple[str, int] | None = None
        self.req_open = False  # request body still being forwarded
        self.resp_started = False
        self.body_sent = False
        self.reused = False
        self.retried = False
        self.received = 0
        self.limit = 0
        self.linger_until = 0.0
        worker.opened(self)
        core.set_deadline(self, core.now + worker.settings.client_header_timeout)

    # ---- the transport's protocol ----------------------------------------------------

    def data_received(self, data: memoryview | bytes) -> None:
        state = self.state
        if state == LINGER:
            self.core.set_deadline(self, min(self.core.now + LINGERING_TIMEOUT, self.linger_until))
            return
        if self.first and state == IDLE and not self.tls and self.codec.nothing_buffered \
                and data[:14] == H2_PREFACE_START and self.worker.settings.http2:
            self._handoff_h2(bytes(data))
            return
        self.codec.receive_data(data)
        self._client_events()

    def eof_received(self) -> None:
        if self.state == LINGER:
            self.transport.close()
            return
        self.codec.receive_data(b"")
        self._client_events()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.deadline = _INF
        up = self.up
        if up is not None:
            self.up = None
            up.close()
        if self.in_request:
            self._finish(self.status or 499)
        self.worker.closed(self)

    def writable(self) -> None:
        """The client's write queue drained: read the upstream again."""
        up = self.up
        if up is not None and up.transport is not None:
            up.transport.resume_reading()
            if not self.req_open:
                self.deadline = _INF

    def drain(self) -> None:
        if self.state == IDLE and self.codec.nothing_buffered and not self.in_request:
            self.transport.close()

    def abort(self) -> None:
        self.transport.abort()

    def on_timeout(self) -> None:
        if self.state == IDLE:
            self.transport.close()  # no (complete) request in time: close quietly, as nginx
        else:
            # The client stopped sending its body or reading our answer, or lingered enough.
            self.transport.abort()

    # ---- reading requests ------------------------------------------------------------

    def _client_events(self) -> None:
        if self.in_events:
            return  # the loop below is already running (a cycle ended inside it)
        self.in_events = True
        try:
            while True:
                state = self.state
                if state == IDLE:
                    if not self._next_head():
                        return
                elif state == EXCHANGE and self.req_open:
                    self._forward_body()
                    return
                else:
                    if state != CLOSED:
                        self.transport.pause_reading()  # pipelined input waits in the kernel
                    return
        finally:
            self.in_events = False

    def _next_head(self) -> bool:
        """Pull the next request head; False when there is nothing more to do now."""
        codec = self.codec
        try:
            ev = codec.next_event()
        except PeerError as exc:
            self._begin_request(None)
            self._answer(exc.status_hint, error_body(exc.status_hint), close=True)
            return False
        if type(ev) is RequestHead:
            assert isinstance(ev, RequestHead)
            self._begin_request(ev)
            self._start(ev)
            return True
        if ev is _NEED_DATA:
            settings = self.worker.settings
            if self.first or not codec.nothing_buffered:
                timeout = settings.client_header_timeout
            elif self.worker.draining:
                self.transport.close()
                return False
            else:
                timeout = settings.keepalive_timeout
            self.core.set_deadline(self, self.core.now + timeout)
            self.transport.resume_reading()
            return False
        if ev is _CLOSED:
            self.transport.close()
        return False

    def _begin_request(self, head: RequestHead | None) -> None:
        self.in_request = True
        self.t0 = _perf()
        self.status = 0
        self.labels = list(NO_LABELS)
        self.deadline = _INF
        self.resp_started = False
        self.body_sent = False
        self.req_open = False
        self.proxy = None
        self.info = None
        if head is not None:
            self.method = head.method
            self.target = head.target

    def _start(self, head: RequestHead) -> None:
        worker = self.worker
        info = scan_request(head.headers)
        if not info.has_body:
            self.codec.next_event()  # the (empty) end of the request message
        try:
            decision = decide(worker.table, worker.balancer, head.method, head.target, info,
                              tls=bool(self.tls), https_port=worker.https_port, labels=self.labels,
                              client_ip=self.client_ip.decode(), now=self.core.now, tls_peer=self.tls_conn)
        except FastIngressError as exc:
            self._fail(exc)
            return
        self._decided(decision, head, info)

    def _decided(self, decision: Decision, head: RequestHead, info: RequestInfo) -> None:
        if isinstance(decision, Proxy):
            self.ctx = decision.ctx
            self._forward(decision, head, info)
        elif isinstance(decision, Answer):
            self.ctx = decision.ctx
            self._answer(decision.status, decision.body, decision.content_type, decision.extra)
        elif isinstance(decision, Pending):
            self.ctx = decision.ctx
            self.state = WAIT
            self.transport.pause_reading()
            self.core.spawn(self._wait_for_policy, decision, head, info)
        elif decision.reason == "resolve" and decision.proxy is not None:
            self.ctx = decision.proxy.ctx
            self._resolve(decision.proxy, head, info)
        else:
            self._hand_over(head)

    async def _wait_for_policy(self, pending: Pending, head: RequestHead, info: RequestInfo) -> None:
        """A policy waits (an auth subrequest): in a task; the request resumes in the core."""
        result = await pending.defer.run()
        if self.state != WAIT:
            return  # the client went away meanwhile (its done hooks ran then)
        self.state = IDLE  # (no request head is read in the meantime: input is paused)
        try:
            decision = pending.resume(result)
        except FastIngressError as exc:
            self._fail(exc)
            return
        self._decided(decision, head, info)

    # ---- answering ourselves ---------------------------------------------------------

    def _answer(
        self,
        status: int,
        body: bytes,
        content_type: bytes = TEXT,
        extra: tuple[tuple[bytes, bytes], ...] = (),
        *,
        close: bool | None = None,
    ) -> None:
        codec = self.codec
        worker = self.worker
        if not codec.can_respond:
            self.transport.abort()
            return
        if close is None:
            close = worker.draining or not codec.their_message_done
        headers = [
            (b"content-type", content_type),
            (b"content-length", b"%d" % len(body)),
            (b"server", worker.server_header),
            *extra,
        ]
        if self.tls and worker.hsts is not None:
            headers.append((b"strict-transport-security", worker.hsts))
        if self.ctx is not None:
            self.ctx.respond(status, headers)
        if close:
            headers.append((b"connection", b"close"))
        self.status = status
        self.transport.write(codec.response_head(status, headers) + codec.data(body) + codec.end())
        self._finish(status)
        if close or not codec.reusable:
            self._close_after_answer()
        else:
            self._next_cycle()

    def _fail(self, exc: FastIngressError) -> None:
        if isinstance(exc, (UpstreamFailed, UpstreamTimeout)):
            self.worker.metrics.upstream_errors += 1
            self._log_upstream_error(exc)
        close = True if isinstance(exc, (BadRequest, BodyTooLarge)) else None
        self._answer(exc.status_hint, error_body(exc.status_hint), close=close)

    def _log_upstream_error(self, exc: FastIngressError) -> None:
        route = self.proxy.route if self.proxy is not None else None
        up = self.up
        endpoint = f"{up.key[0]}:{up.key[1]}" if up is not None else "-"
        rid = self.info.request_id.decode("latin-1") if self.info and self.info.request_id else "-"
        log.warning(
            "upstream error: %s %s host=%s route=%s ingress=%s endpoint=%s request_id=%s: %s",
            self.method.decode("latin-1"), self.target.decode("latin-1"), self.labels[0],
            f"{route.path_type}:{route.path}" if route is not None else "-", self.labels[1], endpoint,
            rid, exc,
        )

    def _close_after_answer(self) -> None:
        if self.codec.their_message_done:
            self.transport.close()
        else:
            self._linger()

    def _linger(self) -> None:
        """Answered before the request was read whole: FIN after the answer, then read and
        discard for a bounded time, so the client reads the answer instead of a reset."""
        self.state = LINGER
        self.transport.shutdown_write()
        self.transport.resume_reading()
        now = self.core.now
        self.linger_until = now + LINGERING_TIME
        self.core.set_deadline(self, now + LINGERING_TIMEOUT)

    def _finish(self, status: int) -> None:
        """Record metrics (and the access log line) for the request in progress."""
        if not self.in_request:
            return
        self.in_request = False
        ctx = self.ctx
        if ctx is not None:
            self.ctx = None
            ctx.finish()
        worker = self.worker
        duration = _perf() - self.t0
        host, ingress, service = self.labels
        worker.metrics.observe(status, host, ingress, service, duration)
        if worker.access_log:
            log.info(
                "%s %s %s %d %.6f %s %s%s",
                self.client_ip.decode(), self.method.decode("latin-1"), self.target.decode("latin-1"),
                status, duration, host, service, " " + self.tls if self.tls else "",
            )

    def _next_cycle(self) -> None:
        self.codec.start_next_cycle()
        self.first = False
        self.state = IDLE
        self.proxy = None
        self.info = None
        self.head = None
        self._client_events()

    # ---- forwarding ------------------------------------------------------------------

    def _forward(self, proxy: Proxy, head: RequestHead, info: RequestInfo) -> None:
        worker = self.worker
        self.proxy = proxy
        self.head = head
        self.info = info
        self.limit = proxy.limit
        self.received = 0
        self.body_sent = False
        self.resp_started = False
        self.retried = False
        self.req_open = info.has_body
        headers = info.headers
        add_forwarded(
            headers, info, host=proxy.host, client_ip=self.client_ip,
            proto=b"https" if self.tls else worker.scheme_bytes,
            port=worker.https_port_bytes if self.tls else worker.port_bytes,
        )
        if info.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        self.alternate = proxy.alternate
        assert proxy.primary is not None
        self._acquire(proxy.primary)

    def _acquire(self, address: tuple[str, int], *, fresh: bool = False) -> None:
        proxy = self.proxy
        assert proxy is not None
        upstream = proxy.upstream
        tls = client_tls(upstream)
        if not fresh:
            conn = self.pool.take(address, tls)
            if conn is not None:
                self._send_request(conn, reused=True)
                return
        self.state = CONNECT
        self.pool.connect(address, tls, upstream.name, self, upstream.connect_timeout)

    def upstream_ready(self, conn: UpstreamConn) -> None:
        self._send_request(conn, reused=False)

    def upstream_failed(self, conn: UpstreamConn, exc: UpstreamFailed | UpstreamTimeout) -> None:
        if self.state == CLOSED:
            return
        alternate = self.alternate
        if alternate is not None and not self.body_sent:
            self.alternate = None
            self.worker.metrics.upstream_errors += 1
            log.warning("%s; trying %s:%d", exc, *alternate)
            self._acquire(alternate)
            return
        self._upstream_error(exc)

    def _send_request(self, conn: UpstreamConn, *, reused: bool) -> None:
        head = self.head
        info = self.info
        assert head is not None and info is not None
        self.state = EXCHANGE
        self.up = conn
        self.reused = reused
        conn.owner = self
        conn.requests += 1
        ucodec = conn.codec
        target = self.proxy.target if self.proxy else head.target
        data = ucodec.request_head(head.method, target, info.headers)
        if not self.req_open:
            conn.write(data + ucodec.end())
            self._arm_read(conn)
            return
        conn.write(data)
        codec = self.codec
        if codec.waiting_for_100_continue:
            self.transport.write(codec.informational(100, []))
        self._forward_body()

    def _forward_body(self) -> None:
        """Move request body events from the client codec to the upstream, as far as flow
        control allows."""
        up = self.up
        assert up is not None
        codec = self.codec
        ucodec = up.codec
        out: list[bytes] = []
        while True:
            if up.writing_paused:
                self._to_upstream(up, out)
                self.transport.pause_reading()
                self.core.set_deadline(up, self.core.now + self._upstream_send_timeout())
                return
            try:
                ev = codec.next_event()
            except PeerError as exc:
                self._to_upstream(up, out)
                self._client_body_error(exc)
                return
            if type(ev) is Body:
                assert isinstance(ev, Body)
                received = self.received = self.received + len(ev.data)
                if self.limit and received > self.limit:
                    self._to_upstream(up, out)
                    self._client_body_error(BodyTooLarge(f"request body exceeds {self.limit} bytes"))
                    return
                out.append(ucodec.data(ev.data))
                self.body_sent = True
                continue
            if ev is _END:
                out.append(ucodec.end())
                self._to_upstream(up, out)
                self.req_open = False
                self.deadline = _INF
                self._arm_read(up)
                return
            if ev is _NEED_DATA:
                self._to_upstream(up, out)
                self.transport.resume_reading()
                self.core.set_deadline(self, self.core.now + self.worker.settings.client_header_timeout)
                return
            self._to_upstream(up, out)
            self._client_body_error(BadRequest("request body ended unexpectedly"))
            return

    @staticmethod
    def _to_upstream(up: UpstreamConn, out: list[bytes]) -> None:
        if out:
            up.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _client_body_error(self, exc: PeerError) -> None:
        """The request body broke (too large, malformed, the client left)."""
        up = self.up
        self.up = None
        if up is not None:
            up.close()
        self.req_open = True  # the request was not read whole: never reuse the connection
        if self.resp_started or not self.codec.can_respond:
            self.transport.abort()
            return
        self._answer(exc.status_hint, error_body(exc.status_hint), close=True)

    def _upstream_send_timeout(self) -> float:
        return self.proxy.upstream.send_timeout if self.proxy is not None else 60.0

    def _arm_read(self, up: UpstreamConn) -> None:
        proxy = self.proxy
        self.core.set_deadline(up, self.core.now + (proxy.upstream.read_timeout if proxy else 60.0))

    # ---- relaying the response -------------------------------------------------------

    def upstream_readable(self, conn: UpstreamConn) -> None:
        if conn is not self.up:
            conn.close()
            return
        codec = self.codec
        ucodec = conn.codec
        out: list[bytes] = []
        try:
            while True:
                ev = ucodec.next_event()
                kind = type(ev)
                if kind is Body:
                    assert isinstance(ev, Body)
                    out.append(codec.data(ev.data))
                    continue
                if ev is _NEED_DATA:
                    break
                if kind is ResponseHead:
                    assert isinstance(ev, ResponseHead)
                    if ev.status < 200:
                        if ev.status == 101:
                            _fail_upstream(conn, "switched protocols unasked")
                        continue  # 100 Continue and friends: we speak for ourselves
                    out.append(self._response_head(ev))
                    continue
                if ev is _END:
                    out.append(codec.end())
                    self._to_client(out)
                    self._exchange_done()
                    return
                _fail_upstream(conn, "closed the connection mid-response")
        except (UpstreamFailed, LocalProtocolError) as exc:
            self._to_client(out)
            if self._retryable(conn):
                self._retry(conn)
                return
            err = exc if isinstance(exc, UpstreamFailed) else UpstreamFailed(
                f"upstream {conn.label}: response cannot be relayed: {exc}")
            self._upstream_error(err)
            return
        self._to_client(out)
        if self.writing_paused and conn.transport is not None:
            conn.transport.pause_reading()
            self.core.set_deadline(self, self.core.now + self._upstream_send_timeout())
        if not self.req_open:
            self._arm_read(conn)

    def _response_head(self, ev: ResponseHead) -> bytes:
        worker = self.worker
        headers = response_headers(ev.headers, worker.server_header)
        if self.tls and worker.hsts is not None:
            add_hsts(headers, worker.hsts)
        if self.ctx is not None:
            self.ctx.respond(ev.status, headers)
        if worker.draining or self.req_open:
            headers.append((b"connection", b"close"))
        self.status = ev.status
        self.resp_started = True
        return self.codec.response_head(ev.status, headers, ev.reason, trusted=True)

    def _to_client(self, out: list[bytes]) -> None:
        if not out:
            return
        if len(out) == 1:
            self.transport.write(out[0])
            return
        total = 0
        for b in out:
            total += len(b)
        if total <= SMALL_WRITE:
            self.transport.write(b"".join(out))
        else:
            self.transport.writelines(out)

    def _exchange_done(self) -> None:
        up = self.up
        self.up = None
        worker = self.worker
        if up is not None:
            if self.req_open or worker.draining:
                up.close()
            else:
                self.pool.release(up, worker.settings)
        self._finish(self.status)
        if self.req_open:  # the upstream answered before the request ended
            self._linger()
        elif self.codec.reusable and not worker.draining:
            self._next_cycle()
        else:
            self.transport.close()

    def _retryable(self, conn: UpstreamConn) -> bool:
        return self.reused and conn.fresh is not False and not self.resp_started and not self.body_sent \
            and not self.retried

    def _retry(self, conn: UpstreamConn) -> None:
        """A kept-alive connection died before answering: once more on a fresh one."""
        self.retried = True
        self.up = None
        conn.close()
        self._acquire(conn.key, fresh=True)

    def upstream_lost(self, conn: UpstreamConn, exc: BaseException | None) -> None:
        if conn is not self.up or self.state == CLOSED:
            return
        if self._retryable(conn):
            self._retry(conn)
            return
        self._upstream_error(UpstreamFailed(f"upstream {conn.label}: connection lost: {exc or 'closed'}"))

    def upstream_writable(self, conn: UpstreamConn) -> None:
        if conn is self.up and self.req_open:
            self._forward_body()

    def upstream_timeout(self, conn: UpstreamConn) -> None:
        if conn is not self.up:
            conn.close()
            return
        proxy = self.proxy
        what = "send" if conn.writing_paused else "read"
        timeout = (proxy.upstream.send_timeout if what == "send" else proxy.upstream.read_timeout) \
            if proxy else 0.0
        self._upstream_error(UpstreamTimeout(f"upstream {conn.label}: {what} timed out after {timeout:g}s"))

    def _upstream_error(self, exc: UpstreamFailed | UpstreamTimeout) -> None:
        self.worker.metrics.upstream_errors += 1
        self._log_upstream_error(exc)
        up = self.up
        self.up = None
        if up is not None:
            up.close()
        if self.resp_started:
            self.transport.abort()  # the response started: all we can do is cut the connection
            return
        self.state = EXCHANGE
        self._answer(exc.status_hint, error_body(exc.status_hint))

    # ---- waiting on tasks ------------------------------------------------------------

    def _resolve(self, proxy: Proxy, head: RequestHead, info: RequestInfo) -> None:
        """An ExternalName upstream: addresses from the DNS cache, or from a lookup task."""
        self.state = WAIT
        self.transport.pause_reading()
        self.core.spawn(self._resolve_task, proxy, head, info)

    async def _resolve_task(self, proxy: Proxy, head: RequestHead, info: RequestInfo) -> None:
        upstream = proxy.upstream
        try:
            addrs = await self.worker.pool.resolve(upstream)
        except UpstreamFailed as exc:
            if self.state == WAIT:
                self._upstream_error(exc)
            return
        if self.state != WAIT:
            return
        pairs = tuple((a, upstream.port) for a in addrs)
        primary, alternate = self.worker.balancer.pick(upstream.name, pairs)
        self._forward(proxy._replace(primary=primary, alternate=alternate), head, info)

    def _hand_over(self, head: RequestHead) -> None:
        """Serve the rest of this connection in a Session task (Upgrade, HTTP/2 upstream)."""
        if self.transport.write_buffered:
            # Our last answer is still queued: not before it is out (rare; pipelining only).
            self.transport.abort()
            return
        self.state = CLOSED
        self.deadline = _INF
        self.in_request = False
        self.worker.closed(self)
        assert self.handoff is not None
        self.handoff("session", self, head)

    def _handoff_h2(self, initial: bytes) -> None:
        self.state = CLOSED
        self.deadline = _INF
        self.worker.closed(self)
        assert self.handoff is not None
        self.handoff("h2", self, initial)


def _fail_upstream(conn: UpstreamConn, what: str) -> NoReturn:
    raise UpstreamFailed(f"upstream {conn.label} {what}")


__all__ = ["LINGERING_TIME", "LINGERING_TIMEOUT", "ClientConn"]
