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
from fastingress.snapshot.schema import Route
from workers.accesslog import client_text, request_record
from workers.decide import (
    NO_LABELS,
    Answer,
    Decided,
    Decision,
    Handoff,
    Pending,
    Proxy,
    decide,
    refetch,
    refetch_info,
)
from workers.h2forward import forward_h2
from workers.heads import TEXT, RequestInfo, error_body, scan_request
from workers.http1 import Event, RequestHead, ServerCodec, Signal
from workers.linger import linger
from workers.llhttp import ServerCodec as LlhttpServerCodec
from workers.policy import Refetch, RequestCtx
from workers.sessionfwd import (
    PH_CLIENT,
    PH_HEAD,
    PH_UPSTREAM,
    RECV_SIZE,
    Intercepted,
    SessionBase,
    _arm,
    copy_bytes,
)
from workers.state import Worker

log = logging.getLogger("fastingress.worker")
access_log = logging.getLogger("fastingress.access")  # log-format-upstream lines, as they are

_perf = time.perf_counter
_now = trio.current_time
_NEED_DATA = Signal.NEED_DATA
_H2_PREFACE_START = b"PRI * HTTP/2.0"


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


class Session(SessionBase):
    """One client connection."""

    __slots__ = ()  # (the state lives in SessionBase, with the forwarding half)

    def __init__(  # noqa: PLR0917
        self,
        worker: Worker,
        stream: trio.abc.Stream,
        client_ip: str,
        tls: str = "",
        codec: ServerCodec | None = None,
        proxy_port: bytes = b"",
    ) -> None:
        self.worker = worker
        self.tls = tls  # "" for plain HTTP
        self.stream = stream
        self.client_ip = client_ip.encode()  # the peer (or the PROXY protocol header's source)
        self.proxy_port = proxy_port  # the port the client used on the balancer (PROXY protocol)
        self.served = 0  # requests on this connection (keep-alive-requests)
        self.max_requests = worker.max_requests  # 0: no limit (HTTP/2 streams)
        self.head: RequestHead | None = None  # the request in progress (access log)
        self.info: RequestInfo | None = None
        self.resp_bytes = 0
        self.up_addr: tuple[str, int] | None = None
        self.up_status = 0
        self.t_up = 0.0
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
        self.retry = None  # the request's workers.retry.Retry while it is forwarded, if any
        self.request: tuple[RequestHead, RequestInfo] | None = None
        self.route: Route | None = None  # the route being forwarded to (error log lines)
        self.linger = False  # answered before the request was read whole (see linger_close)
        # the client's TLS connection (client certificates), from a TLS stream or an HTTP/2 one
        self.tls_peer: object = getattr(stream, "ssl_connection", None)

    async def linger_close(self) -> None:
        """When we answered before reading the whole request: ``workers.linger``."""
        if self.linger:
            await linger(self.stream)

    def drain(self) -> None:
        """The worker drains: an idle connection closes now, a busy one after its response."""
        if self.idle:
            self.scope.cancel()

    # ---- the cycle loop --------------------------------------------------------------

    async def run(
        self, head: RequestHead | None = None, *, t0: float = 0.0, decided: Decided | None = None
    ) -> None:
        """Serve cycles until the connection ends; ``head``: the first request's head, already
        read (a handoff from the event-driven core), ``t0`` when it arrived, ``decided`` what the
        core decided for it (its policies ran there)."""
        first = True
        while True:
            # One scope serves every cycle until its deadline fires (a fired scope stays
            # cancelled, so only then is a new one made).
            with trio.CancelScope() as scope:
                self.scope = scope
                while True:
                    keep = await self._cycle(first, head, t0, decided)
                    head = decided = None
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
            self.labels, self.head, self.body_consumed, self.info, self.tls,
            worker.https_port if self.tls else worker.listen_port,
        )
        if self.up_addr is not None:
            record.upstream_addr = f"{self.up_addr[0]}:{self.up_addr[1]}"
            record.upstream_time = _now() - self.t_up
            if self.up_status:
                record.upstream_status = self.up_status
                record.upstream_bytes = self.resp_bytes
        assert worker.log_format is not None
        access_log.info(worker.log_format(record))

    async def _cycle(
        self, first: bool, head: RequestHead | None = None, t0: float = 0.0, decided: Decided | None = None
    ) -> bool:
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
        self.head = head
        self.info = None
        self.served += 1
        self.resp_bytes = 0
        self.up_addr = None
        self.up_status = 0
        try:
            return await self._handle(head, decided)
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
        log.warning("upstream timeout: %s", self.where())
        if not self.codec.can_respond:
            return False
        fetch = self._intercept_failure(UpstreamTimeout("read timed out")) if self.request else None
        if fetch is not None and self.request is not None:  # custom-http-errors with 504
            with trio.CancelScope() as scope:
                self.scope = scope
                try:
                    return await self._refetch(*self.request, fetch)
                except FastIngressError as exc:
                    return await self._fail(exc)
            return False
        with trio.move_on_after(self.worker.settings.client_header_timeout):
            return await self._send_error(504)
        return False

    async def _fail(self, exc: FastIngressError) -> bool:
        if isinstance(exc.ctx, RequestCtx):  # raised by decide for a route with policies
            self.ctx = exc.ctx
        if isinstance(exc, (UpstreamFailed, UpstreamTimeout)):
            self.worker.metrics.upstream_errors += 1
            log.warning("upstream error: %s: %s", self.where(), exc)
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
            close = (self.worker.draining or not codec.their_message_done
                     or 0 < self.max_requests <= self.served)
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            *self.worker.answer_headers,  # Server (unless server-tokens is false), add-headers
            *extra,
        ]
        if self.tls and self.worker.hsts is not None:
            headers.append((b"strict-transport-security", self.worker.hsts))
        if self.ctx is not None:
            self.ctx.respond(status, headers)
        if close:
            headers.append((b"connection", b"close"))
            if not codec.their_message_done:
                self.linger = True  # answered before the request was read whole
        self.status = status
        self.resp_bytes = len(body)
        if self.method != b"HEAD":  # (a HEAD answer declares the length, sends no body)
            data = codec.response_head(status, headers) + codec.data(body) + codec.end()
        else:
            data = codec.response_head(status, headers) + codec.end()
        self.phase = PH_CLIENT
        _arm(self.scope, self.worker.settings.client_header_timeout)
        await self.stream.send_all(data)
        return not close and codec.reusable

    # ---- routing ---------------------------------------------------------------------

    async def _handle(self, head: RequestHead, decided: Decided | None = None) -> bool:
        self.request = None
        self.route = None
        worker = self.worker
        table = worker.table
        balancer = worker.balancer
        decision: Decision
        if decided is not None:  # the core decided (and ran the route's policies) already
            decision, info, self.labels = decided
            self.info = info
        else:
            info = self.info = scan_request(head.headers, worker.header_names)
            if not info.has_body:
                self.codec.next_event()  # the (empty) end of the request message
            ip, https, refused = self.client_ip, bool(self.tls), None
            front = worker.front
            if front is not None:  # the ConfigMap's forwarded headers, PROXY protocol, blocks
                ip, https, refused = front.apply(info, ip, https, self.proxy_port)
                if refused is not None:
                    return await self._send_error(403)
            labels = list(NO_LABELS)
            try:
                decision = decide(table, balancer, head.method, head.target, info, tls=https,
                                  https_port=worker.https_port, labels=labels, client_ip=ip.decode(),
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
                                        upstream=proxy.upstream, balancer=balancer, limit=proxy.limit,
                                        chosen=(proxy.primary, proxy.alternate))
        else:
            proxy = decision
        assert table is not None and proxy is not None
        self.request = (head, info)
        self.route = proxy.route
        try:
            return await self._forward(head, info, proxy, table.snapshot.settings)
        except Intercepted as exc:  # custom-http-errors: the upstream's answer is replaced
            fetch: Refetch | None = exc.fetch
        except (UpstreamFailed, UpstreamTimeout) as exc:
            fetch = self._intercept_failure(exc)
            if fetch is None:
                raise
            self.worker.metrics.upstream_errors += 1
            log.warning("upstream error: %s: %s; answered by the error backend", self.where(), exc)
        assert fetch is not None
        return await self._refetch(head, info, fetch)

    def _intercept_failure(self, exc: UpstreamFailed | UpstreamTimeout) -> Refetch | None:
        """Whether a policy replaces our answer to a failed upstream (custom-http-errors)."""
        ctx = self.ctx
        if ctx is None or not ctx.intercept_hooks or not self.codec.can_respond:
            return None
        return ctx.intercept(exc.status_hint, None)

    async def _refetch(self, head: RequestHead, info: RequestInfo, fetch: Refetch) -> bool:
        """Answer with another backend's answer (the request's body is not sent again); while
        the client is still sending its body, answer the status ourselves."""
        if not self.codec.their_message_done or self.ctx is None:
            return await self._send_error(fetch.status, close=True)
        fresh = refetch_info(info)
        worker = self.worker
        decision = refetch(worker.table, worker.balancer, fetch, fresh, self.ctx, head.target)
        if isinstance(decision, Answer):
            return await self._send_simple(decision.status, decision.body, decision.content_type,
                                           extra=decision.extra)
        proxy = decision.proxy if isinstance(decision, Handoff) else decision
        table = worker.table
        assert proxy is not None and table is not None
        return await self._forward(head, fresh, proxy, table.snapshot.settings)

__all__ = ["RECV_SIZE", "H2Preface", "Session", "copy_bytes", "new_server_codec"]
