"""Forwarding a request of a ``ClientConn`` to an HTTP/1.1 upstream and relaying the answer.

The upstream side of ``workers.h1conn`` (see its theory of operation, step 3): a mix-in of
``ClientConn``, split out to keep each part readable.  It acquires a pooled or new
``UpstreamConn`` (one retry on the alternate endpoint after a failed connect, one retry on a
fresh connection when a kept-alive one died before answering and no body byte went out; a
request with a ``workers.retry.Retry`` asks it instead of using the alternate, after a failed
connect, a broken or invalid response head, a read timeout or a response status it names),
sends the head and streams the body with flow control both ways, relays the response with
one client write per upstream read, and ends the exchange (the connection back to the pool,
the next request, or a lingering close).

A route's policies may intercept the response head before anything of it is sent, or an
upstream failure before we answer it (``RequestCtx.intercept``: custom-http-errors): the
upstream connection is closed, and the answer comes from the error backend instead
(``_refetch``: ``workers.decide.refetch``, then the usual forwarding); while the client is
still sending its body, the intercepted status is answered by us (the body is not replayed).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NoReturn

from fastingress.errors import (
    BadRequest,
    BodyTooLarge,
    FastIngressError,
    PeerError,
    UpstreamFailed,
    UpstreamTimeout,
)
from workers.decide import Decision, Proxy, refetch, refetch_info
from workers.heads import RESP_DROP, RequestInfo, add_forwarded, error_body, response_headers, set_headers
from workers.http1 import Body, RequestHead, ResponseHead, Signal
from workers.llhttp import LocalProtocolError, ServerCodec
from workers.loop import Core, Timed
from workers.pacing import Pacer
from workers.policy import Refetch, RequestCtx
from workers.retry import (
    CONNECT_ERROR,
    CONNECT_TIMEOUT,
    ERROR,
    INVALID_HEADER,
    STATUS,
    TIMEOUT,
    Retry,
    kind_name,
)
from workers.splice import SPLICE_MIN, SpliceFailed, Splicer
from workers.splice import available as splice_available
from workers.tlspolicy import add_hsts
from workers.transport import Transport
from workers.upstream_tls import client_tls

if TYPE_CHECKING:
    from workers.h1pool import CorePool, UpstreamConn
    from workers.state import Worker

log = logging.getLogger("fastingress.worker")

SMALL_WRITE = 16384
IDLE, CONNECT, EXCHANGE, WAIT, LINGER, CLOSED = range(6)  # ClientConn.state

_INF = float("inf")
_NEED_DATA = Signal.NEED_DATA
_END = Signal.END


class Forwarder(Timed):
    """The forwarding half of ``workers.h1conn.ClientConn``, and the state of both halves."""

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
        "paced",
        "pool",
        "proxy",
        "proxy_port",
        "received",
        "req_open",
        "resp_bytes",
        "resp_started",
        "retried",
        "retry",
        "reused",
        "served",
        "splicer",
        "state",
        "status",
        "t0",
        "t_up",
        "target",
        "tls",
        "tls_conn",
        "transport",
        "up",
        "up_addr",
        "worker",
        "writing_paused",
    )

    core: Core
    worker: Worker
    pool: CorePool
    transport: Transport
    codec: ServerCodec
    client_ip: bytes
    proxy_port: bytes
    served: int
    resp_bytes: int
    up_addr: tuple[str, int] | None
    t_up: float
    tls: str
    state: int
    ctx: RequestCtx | None
    head: RequestHead | None
    info: RequestInfo | None
    proxy: Proxy | None
    up: UpstreamConn | None
    alternate: tuple[str, int] | None
    req_open: bool
    resp_started: bool
    body_sent: bool
    reused: bool
    retried: bool
    retry: Retry | None
    received: int
    limit: int
    status: int
    writing_paused: bool
    splicer: Splicer | None
    deadline: float
    paced: _Paced | None

    # ---- provided by ClientConn (abstract here) --------------------------------------

    def _answer(
        self, status: int, body: bytes, content_type: bytes = b"",
        extra: tuple[tuple[bytes, bytes], ...] = (), *, close: bool | None = None,
    ) -> None:
        raise NotImplementedError

    def _finish(self, status: int) -> None:
        raise NotImplementedError

    def _decided(self, decision: Decision, head: RequestHead, info: RequestInfo) -> None:
        raise NotImplementedError

    def _linger(self) -> None:
        raise NotImplementedError

    def _next_cycle(self) -> None:
        raise NotImplementedError

    def _log_upstream_error(self, exc: FastIngressError) -> None:
        raise NotImplementedError

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
        if worker.proxy_headers:  # the ConfigMap's proxy-set-headers
            set_headers(headers, worker.proxy_headers)
        if info.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        self.alternate = proxy.alternate
        self.retry = proxy.retry
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
        if self.retry is not None:
            kind = CONNECT_TIMEOUT if isinstance(exc, UpstreamTimeout) else CONNECT_ERROR
            if not self._next_upstream(kind, exc, sent=False):
                self._upstream_error(exc)
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
        self.up_addr = conn.key
        self.t_up = self.core.now
        self.reused = reused
        conn.owner = self
        conn.requests += 1
        ucodec = conn.codec
        target = self.proxy.target if self.proxy else head.target
        if self.ctx is None:  # (the fast lane: the framing is known, no policy added a header)
            data = ucodec.forward_head(head.method, target, info.headers, info.content_length, info.chunked)
        else:
            data = ucodec.request_head(head.method, target, info.headers, trusted=True)
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
                self.core.set_deadline(self, self.core.now + self.worker.settings.client_body_timeout)
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
                    self.resp_bytes += len(ev.data)
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
                    if self.retry is not None and ev.status in self.retry.statuses and self._next_upstream(
                            STATUS, UpstreamFailed(f"upstream {conn.label} answered {ev.status}"),
                            status=ev.status):
                        return  # proxy-next-upstream http_NNN: this answer is dropped
                    ctx = self.ctx
                    if ctx is not None and ctx.intercept_hooks:
                        fetch = ctx.intercept(ev.status, ev.headers)
                        if fetch is not None:  # custom-http-errors: nothing of it goes out
                            self._intercepted(conn, fetch)
                            return
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
            if self.retry is None or not self._next_upstream(failure_kind(conn, err), err):
                self._upstream_error(err)
            return
        self._to_client(out)
        if self.resp_started and not self.req_open and self._may_splice(conn):
            return
        if self.writing_paused and conn.transport is not None:
            conn.transport.pause_reading()
            self.core.set_deadline(self, self.core.now + self._upstream_send_timeout())
        if not self.req_open and (self.paced is None or not self.paced.pending):
            self._arm_read(conn)  # (a paced response holds the upstream: _pace arms it)

    # ---- splicing large bodies (workers.splice) ----------------------------------------

    def _may_splice(self, conn: UpstreamConn) -> bool:
        """Hand the rest of a large Content-Length body to the kernel when nothing needs it."""
        left = conn.codec.body_left
        if (
            left is None or left < SPLICE_MIN or self.codec.body_left != left
            or type(self.transport) is not Transport or type(conn.transport) is not Transport
            or self.transport.write_buffered or not splice_available()
            or (self.ctx is not None and not self.ctx.splice_ok)
        ):
            return False
        try:
            splicer = Splicer(self, conn, left)
        except OSError:  # no pipe to be had (EMFILE, ENFILE): copy this body instead
            return False
        self.splicer = splicer
        splicer.start()
        return True

    def splice_waiting(self, *, client_blocked: bool) -> None:
        """The splice waits: for the client (send timeout) or for the upstream (read timeout)."""
        up = self.up
        if client_blocked:
            self.core.set_deadline(self, self.core.now + self._upstream_send_timeout())
        else:
            self.deadline = _INF
            if up is not None:
                self._arm_read(up)

    def spliced(self, moved: int) -> None:
        """The body went through the kernel: the codecs learn it, the exchange ends as usual."""
        self.splicer = None
        self.deadline = _INF
        up = self.up
        assert up is not None
        metrics = self.worker.metrics
        metrics.spliced_bodies += 1
        metrics.spliced_bytes += moved
        self.codec.body_sent_elsewhere(moved)
        up.codec.body_taken_elsewhere()
        self.upstream_readable(up)

    def splice_failed(self, exc: SpliceFailed) -> None:
        self.splicer = None
        up = self.up
        if exc.upstream and up is not None:
            self._upstream_error(UpstreamFailed(f"upstream {up.label}: {exc}"))
        else:
            self.transport.abort()

    def _response_head(self, ev: ResponseHead) -> bytes:
        worker = self.worker
        if (self.ctx is None and not self.req_open and not worker.draining and not (self.tls and worker.hsts)
                and not worker.keep_server and not worker.add_headers and self.served < worker.max_requests):
            # The fast lane: relayed as it is, one pass (None: the general path must do it).
            data = self.codec.relay_head(ev.status, ev.reason, ev.headers, RESP_DROP, worker.server_line)
            if data is not None:
                self.status = ev.status
                self.resp_started = True
                return data
        headers = response_headers(ev.headers, worker.server_header, keep_server=worker.keep_server)
        if self.tls and worker.hsts is not None:
            add_hsts(headers, worker.hsts)
        if worker.add_headers:  # the ConfigMap's add-headers
            set_headers(headers, worker.add_headers)
        if self.ctx is not None:
            self.ctx.respond(ev.status, headers)
        if worker.draining or self.req_open or self.served >= worker.max_requests:
            headers.append((b"connection", b"close"))
        self.status = ev.status
        self.resp_started = True
        if self.ctx is not None and self.ctx.limit_rate is not None:
            self.paced = _Paced(self, Pacer(*self.ctx.limit_rate, self.ctx.now))
        return self.codec.response_head(ev.status, headers, ev.reason, trusted=True)

    def _to_client(self, out: list[bytes]) -> None:
        if not out:
            return
        if self.paced is not None:
            for b in out:
                self.paced.pending += b
            self._pace()
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
        paced = self.paced
        if paced is not None and paced.pending:
            paced.finish = True  # the rest of the answer is paced out first (_pace)
            return
        self._client_done()

    def _client_done(self) -> None:
        """The whole answer went to the client's transport: end the request, then the next
        one, a lingering close or the end of the connection."""
        worker = self.worker
        self._finish(self.status)
        if self.req_open:  # the upstream answered before the request ended
            self._linger()
        elif self.codec.reusable and not worker.draining:
            self._next_cycle()
        else:
            self.transport.close()

    # ---- limit-rate ------------------------------------------------------------------

    def _pace(self) -> None:
        """Send what limit-rate lets go now; hold the rest, and the upstream, until the timer
        (or until the client's transport drained, ``writable``)."""
        paced = self.paced
        if paced is None or self.state == CLOSED:
            return
        core = self.core
        now = core.now
        pending = paced.pending
        pacer = paced.pacer
        if pending and not self.writing_paused:
            n = pacer.chunk(now, len(pending))
            if n:
                data = bytes(pending[:n])
                del pending[:n]
                pacer.did_send(n)
                self.transport.write(data)
                if self.state == CLOSED:
                    return
        up = self.up
        if pending:
            if up is not None and up.transport is not None:
                up.transport.pause_reading()
            if self.writing_paused:  # the client does not read: writable() resumes us
                core.set_deadline(self, now + self._upstream_send_timeout())
            else:
                wait = pacer.wait(now, len(pending))
                core.set_deadline(paced, now + wait)
                if up is not None and not self.req_open and self.proxy is not None:
                    core.set_deadline(up, now + wait + self.proxy.upstream.read_timeout)
            return
        if paced.finish:
            paced.finish = False
            self._client_done()
        elif up is not None and up.transport is not None and not self.writing_paused:
            up.transport.resume_reading()
            if not self.req_open:
                self._arm_read(up)

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
        err = UpstreamFailed(f"upstream {conn.label}: connection lost: {exc or 'closed'}")
        if self.retry is None or not self._next_upstream(ERROR, err):
            self._upstream_error(err)

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
        err = UpstreamTimeout(f"upstream {conn.label}: {what} timed out after {timeout:g}s")
        if self.retry is None or not self._next_upstream(TIMEOUT, err):
            self._upstream_error(err)

    def _next_upstream(self, kind: int, exc: UpstreamFailed | UpstreamTimeout, *, sent: bool = True,
                       status: int = 0) -> bool:
        """proxy-next-upstream: a new attempt on the endpoint ``self.retry`` names, if its rules
        allow one (see ``workers.retry``); False: answer with the failure as usual."""
        retry = self.retry
        if retry is None or self.resp_started or self.state == CLOSED:
            return False
        address = retry.next(kind, status=status, sent=sent, body_sent=self.body_sent, now=self.core.now)
        if address is None:
            return False
        self.worker.metrics.upstream_errors += 1
        log.warning("%s; next upstream (%s): %s:%d", exc, kind_name(kind), *address)
        up = self.up
        self.up = None
        if up is not None:
            up.close()
        self._acquire(address)
        return True

    def _upstream_error(self, exc: UpstreamFailed | UpstreamTimeout) -> None:
        if self.splicer is not None:
            self.splicer.close()
            self.splicer = None
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
        ctx = self.ctx
        if ctx is not None and ctx.intercept_hooks and not self.req_open and self.codec.their_message_done:
            fetch = ctx.intercept(exc.status_hint, None)
            if fetch is not None:
                self._refetch(fetch)
                return
        self._answer(exc.status_hint, error_body(exc.status_hint))

    def _intercepted(self, conn: UpstreamConn, fetch: Refetch) -> None:
        """The upstream's answer is replaced: drop it (and its connection), ask for another."""
        self.up = None
        conn.close()
        if self.req_open or not self.codec.their_message_done:  # still sending: answer it, then linger
            self._answer(fetch.status, error_body(fetch.status))
            return
        self._refetch(fetch)

    def _refetch(self, fetch: Refetch) -> None:
        """Forward the body-less request for ``fetch`` (or answer it ourselves)."""
        head = self.head
        info = self.info
        ctx = self.ctx
        if head is None or info is None or ctx is None:  # (never: the request is being forwarded)
            self._answer(fetch.status, error_body(fetch.status))
            return
        fresh = refetch_info(info)
        worker = self.worker
        decision = refetch(worker.table, worker.balancer, fetch, fresh, ctx, head.target)
        self._decided(decision, head, fresh)


    def _resolve(self, proxy: Proxy, head: RequestHead, info: RequestInfo) -> None:
        """An ExternalName upstream: addresses from the DNS cache, or from a lookup task."""
        self.head = head  # (an error page replacing a failed lookup needs the request)
        self.info = info
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


class _Paced(Timed):
    """The paced answer of a client connection (limit-rate): the bytes that may not go yet,
    and the core timer that sends the next piece."""

    __slots__ = ("conn", "finish", "pacer", "pending")

    def __init__(self, conn: Forwarder, pacer: Pacer) -> None:
        super().__init__()
        self.conn = conn
        self.pacer = pacer
        self.pending = bytearray()
        self.finish = False  # the exchange is over: end the request once pending is out

    def on_timeout(self) -> None:
        if self.conn.paced is self:
            self.conn._pace()


def failure_kind(conn: UpstreamConn, exc: UpstreamFailed) -> int:
    """``error`` when no byte of a response came (the connection broke or closed first), else
    ``invalid_header`` for a response head the codec refused (it says "bad response")."""
    if conn.fresh:
        return ERROR
    return INVALID_HEADER if "bad response from upstream" in str(exc) else ERROR


def _fail_upstream(conn: UpstreamConn, what: str) -> NoReturn:
    raise UpstreamFailed(f"upstream {conn.label} {what}")


__all__ = ["CLOSED", "CONNECT", "EXCHANGE", "IDLE", "LINGER", "SMALL_WRITE", "WAIT", "Forwarder"]
