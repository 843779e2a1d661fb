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
from typing import TYPE_CHECKING

from fastingress.errors import (
    BadRequest,
    BodyTooLarge,
    FastIngressError,
    PeerError,
    UpstreamFailed,
    UpstreamTimeout,
)
from workers.accesslog import client_text, request_context, request_record
from workers.decide import NO_LABELS, Answer, Decided, Decision, Pending, Proxy, decide
from workers.h1forward import CLOSED, EXCHANGE, IDLE, LINGER, WAIT, Forwarder
from workers.heads import TEXT, RequestInfo, error_body, scan_request
from workers.http1 import RequestHead, Signal
from workers.linger import LINGERING_TIME, LINGERING_TIMEOUT
from workers.llhttp import ServerCodec
from workers.loop import Core
from workers.policy import RequestCtx
from workers.splice import Splicer

if TYPE_CHECKING:
    from workers.h1pool import CorePool, UpstreamConn
    from workers.state import Worker
    from workers.transport import Transport

log = logging.getLogger("fastingress.worker")
access_log = logging.getLogger("fastingress.access")  # log-format-upstream lines, as they are

H2_PREFACE_START = b"PRI * HTTP/2.0"


_INF = float("inf")
_perf = time.perf_counter
_NEED_DATA = Signal.NEED_DATA
_END = Signal.END
_CLOSED = Signal.CLOSED


# handoff(kind, conn, arg): give the connection to a trio task; kind "session" (arg: the
# request head and the Decided to carry out, or None; served by a Session with this codec)
# or "h2" (arg: the bytes read so far).
HandoffFn = Callable[[str, "ClientConn", object], None]


class ClientConn(Forwarder):
    """One HTTP/1.1 client connection (see the module docstring)."""

    __slots__ = ()  # (the state lives in Forwarder, the base class)

    def __init__(  # noqa: PLR0917
        self,
        core: Core,
        worker: Worker,
        pool: CorePool,
        transport: Transport,
        client_ip: str,
        tls: str = "",
        handoff: HandoffFn | None = None,
        proxy_port: bytes = b"",
    ) -> None:
        super().__init__()
        self.core = core
        self.worker = worker
        self.pool = pool
        self.transport = transport
        self.client_ip = client_ip.encode()  # the peer (or the PROXY protocol header's source)
        self.proxy_port = proxy_port  # the port the client used on the balancer (PROXY protocol)
        self.served = 0  # requests on this connection (keep-alive-requests)
        self.resp_bytes = 0  # response body bytes of the request (access log)
        self.up_addr: tuple[str, int] | None = None  # its endpoint (access log)
        self.t_up = 0.0  # when it was sent upstream (access log)
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
        self.retry = None  # the request's workers.retry.Retry (proxy-next-upstream), if any
        self.received = 0
        self.limit = 0
        self.linger_until = 0.0
        self.splicer: Splicer | None = None
        self.paced = None  # limit-rate: the paced answer in progress (h1forward._Paced)
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
        self.core.cancel_deadline(self)
        if self.splicer is not None:
            self.splicer.close()
            self.splicer = None
        if self.paced is not None:
            self.core.cancel_deadline(self.paced)
            self.paced = None
        up = self.up
        if up is not None:
            self.up = None
            up.close()
        if self.in_request:
            self._finish(self.status or 499)
        self.codec.release()  # (the parser refers back to the codec: no cycle for the GC)
        self.worker.closed(self)

    def writable(self) -> None:
        """The client's write queue drained: read the upstream again (or, limit-rate, send
        the next paced piece)."""
        paced = self.paced
        if paced is not None and (paced.pending or paced.finish):
            self._pace()
            return
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
                    if state not in (CLOSED, LINGER) and self.codec.holding:
                        # Input beyond what we act on now (pipelined, or a body while we
                        # connect): the rest waits in the kernel (TCP flow control).
                        self.transport.pause_reading()
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
        self.served += 1
        self.resp_bytes = 0
        self.up_addr = None
        self.t0 = _perf()
        self.status = 0
        self.labels = list(NO_LABELS)
        self.deadline = _INF
        self.resp_started = False
        self.body_sent = False
        self.req_open = False
        self.proxy = None
        self.info = None
        self.paced = None
        if head is not None:
            self.method = head.method
            self.target = head.target
            self.head = head

    def _start(self, head: RequestHead) -> None:
        worker = self.worker
        info = self.info = scan_request(head.headers, worker.header_names)
        if not info.has_body:
            self.codec.next_event()  # the (empty) end of the request message
        ip, https, refused = self.client_ip, bool(self.tls), None
        front = worker.front
        if front is not None:  # the ConfigMap's forwarded headers, PROXY protocol, blocks
            ip, https, refused = front.apply(info, ip, https, self.proxy_port)
            if refused is not None:
                self._decided(Answer(403, error_body(403)), head, info)
                return
        try:
            decision = decide(worker.table, worker.balancer, head.method, head.target, info,
                              tls=https, https_port=worker.https_port, labels=self.labels,
                              client_ip=ip.decode(), now=self.core.now, tls_peer=self.tls_conn)
        except FastIngressError as exc:
            self._fail_decided(exc)
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
            self._hand_over(head, Decided(decision, info, (self.labels[0], self.labels[1], self.labels[2])))

    async def _wait_for_policy(self, pending: Pending, head: RequestHead, info: RequestInfo) -> None:
        """A policy waits (an auth subrequest): in a task; the request resumes in the core."""
        result = await pending.defer.run()
        if self.state != WAIT:
            return  # the client went away meanwhile (its done hooks ran then)
        self.state = IDLE  # (no request head is read in the meantime: input is paused)
        try:
            decision = pending.resume(result)
        except FastIngressError as exc:
            self._fail_decided(exc)
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
            close = worker.draining or not codec.their_message_done or self.served >= worker.max_requests
        headers = [
            (b"content-type", content_type),
            (b"content-length", b"%d" % len(body)),
            *worker.answer_headers,  # Server (unless server-tokens is false), add-headers
            *extra,
        ]
        if self.tls and worker.hsts is not None:
            headers.append((b"strict-transport-security", worker.hsts))
        if self.ctx is not None:
            self.ctx.respond(status, headers)
        if close:
            headers.append((b"connection", b"close"))
        self.status = status
        self.resp_bytes = len(body)
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

    def _fail_decided(self, exc: FastIngressError) -> None:
        """``decide`` raised: answer with the route's policies, if it has some (``exc.ctx``)."""
        if isinstance(exc.ctx, RequestCtx):
            self.ctx = exc.ctx
        self._fail(exc)

    def _log_upstream_error(self, exc: FastIngressError) -> None:
        up = self.up
        log.warning("upstream error: %s: %s", request_context(
            self.method, self.target, self.labels, self.proxy.route if self.proxy is not None else None,
            (up.key[0], up.key[1]) if up is not None else None, self.info), exc)

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
        if worker.access_log and self.target not in worker.skip_log:
            if worker.log_format is not None:
                self._log_line(status, duration)
                return
            log.info(
                "%s %s %s %d %.6f %s %s%s",
                client_text(self.client_ip, self.info), self.method.decode("latin-1"),
                self.target.decode("latin-1"), status, duration, host, service,
                " " + self.tls if self.tls else "",
            )

    def _log_line(self, status: int, duration: float) -> None:
        """One line in the ConfigMap's log-format-upstream (``workers.accesslog``)."""
        worker = self.worker
        record = request_record(
            self.client_ip, self.proxy_port, self.method, self.target, status, self.resp_bytes, duration,
            self.labels, self.head, self.received, self.info, self.tls,
            worker.https_port if self.tls else worker.listen_port,
        )
        proxy = self.proxy
        if proxy is not None:
            record.upstream = proxy.upstream.name
        if self.up_addr is not None:
            record.upstream_addr = f"{self.up_addr[0]}:{self.up_addr[1]}"
            record.upstream_time = self.core.now - self.t_up
            if self.resp_started:
                record.upstream_status = status
                record.upstream_bytes = self.resp_bytes
        assert worker.log_format is not None
        access_log.info(worker.log_format(record))

    def _next_cycle(self) -> None:
        self.codec.start_next_cycle()
        self.first = False
        self.state = IDLE
        self.proxy = None
        self.info = None
        self.head = None
        self._client_events()

    # ---- handing over to tasks ----------------------------------------------------

    def _hand_over(self, head: RequestHead, decided: Decided | None = None) -> None:
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
        self.handoff("session", self, (head, decided))

    def _handoff_h2(self, initial: bytes) -> None:
        self.state = CLOSED
        self.deadline = _INF
        self.worker.closed(self)
        assert self.handoff is not None
        self.handoff("h2", self, initial)


__all__ = ["LINGERING_TIME", "LINGERING_TIMEOUT", "ClientConn"]
