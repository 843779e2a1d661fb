"""The forwarding half of a task-based ``Session`` (``workers.proxy``): acquire a pooled or new
upstream connection, send the request (its body pumped by a second task), relay the response,
and after a 101 relay raw bytes both ways (``copy_bytes``, also used by TLS passthrough).
A request with a ``workers.retry.Retry`` (proxy-next-upstream, balancing policies) is forwarded
by ``_forward_retrying``: each attempt runs under a cancel scope of its own, so that a read
timeout, like a failed connect, a broken or invalid response head or a response status the
route names, can be followed by another attempt while nothing went to the client.

See ``workers.proxy`` for the theory of operation (steps 3 and 4).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from fastingress.errors import (
    BadRequest,
    BodyTooLarge,
    FastIngressError,
    UpstreamFailed,
    UpstreamTimeout,
)
from fastingress.snapshot.schema import GlobalSettings, Route, Upstream
from workers.accesslog import request_context
from workers.decide import Proxy
from workers.heads import RequestInfo, add_forwarded, response_headers, set_headers
from workers.http1 import Body, Event, RequestHead, ResponseHead, ServerCodec, Signal
from workers.pacing import Pacer, send_paced
from workers.policy import Refetch, RequestCtx
from workers.pool import UpstreamConn
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
from workers.state import Worker
from workers.tlspolicy import add_hsts
from workers.upstream_tls import client_tls

log = logging.getLogger("fastingress.worker")

RECV_SIZE = 65536
DEADLINE_SLACK = 0.05  # seconds
_INF = float("inf")
_now = trio.current_time

# What the cycle's deadline currently guards.
PH_HEAD = 0  # waiting for / reading a request head
PH_CLIENT = 1  # reading the body from / writing the answer to the client
PH_UPSTREAM = 2  # sending to / reading from the upstream

_NEED_DATA = Signal.NEED_DATA
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


class _NextUpstream(Exception):
    """The response status is one the route retries on: try ``address`` instead (the response is
    dropped, nothing of it went to the client)."""

    def __init__(self, address: tuple[str, int], status: int) -> None:
        super().__init__(f"answered {status}")
        self.address = address


class Intercepted(Exception):
    """A policy replaces the upstream's answer (custom-http-errors): nothing of it was sent."""

    def __init__(self, fetch: Refetch) -> None:
        super().__init__(f"intercepted {fetch.status}")
        self.fetch = fetch


class SessionBase:
    """A Session's state and its forwarding half (``workers.proxy.Session`` extends it)."""

    __slots__ = (
        "body_consumed",
        "client_ip",
        "codec",
        "ctx",
        "head",
        "idle",
        "in_request",
        "info",
        "labels",
        "linger",
        "max_requests",
        "method",
        "phase",
        "proxy_port",
        "pump_done",
        "pump_error",
        "request",
        "resp_bytes",
        "retry",
        "route",
        "scope",
        "served",
        "status",
        "stream",
        "t0",
        "t_up",
        "target",
        "tls",
        "tls_peer",
        "up_addr",
        "up_status",
        "worker",
    )

    worker: Worker
    stream: trio.abc.Stream
    codec: ServerCodec
    scope: trio.CancelScope
    client_ip: bytes
    tls: str
    phase: int
    status: int
    body_consumed: int
    pump_done: bool
    pump_error: BaseException | None
    ctx: RequestCtx | None
    retry: Retry | None
    linger: bool
    request: tuple[RequestHead, RequestInfo] | None  # the request being forwarded (error pages)
    method: bytes
    target: bytes
    proxy_port: bytes
    head: RequestHead | None
    info: RequestInfo | None
    served: int
    max_requests: int
    resp_bytes: int
    up_addr: tuple[str, int] | None
    up_status: int
    t_up: float
    labels: tuple[str, str, str]  # host, ingress, service (metrics)
    route: Route | None  # the route being forwarded to (error log lines)

    if TYPE_CHECKING:  # provided by Session

        def finish_request(self, default_status: int) -> None: ...

    def where(self) -> str:
        """The request in an error line, as the core writes it (``accesslog.request_context``)."""
        return request_context(self.method, self.target, self.labels, self.route, self.up_addr, self.info)

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
        if worker.proxy_headers:  # the ConfigMap's proxy-set-headers
            set_headers(headers, worker.proxy_headers)
        if info.upgrade is not None:
            headers.append((b"connection", b"upgrade"))
            headers.append((b"upgrade", info.upgrade))
        if info.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        target = proxy.target
        limit = proxy.limit
        if proxy.retry is not None and proxy.primary is not None:
            return await self._forward_retrying(head, info, proxy, settings, headers)

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

    async def _forward_retrying(
        self, head: RequestHead, info: RequestInfo, proxy: Proxy, settings: GlobalSettings,
        headers: list[tuple[bytes, bytes]],
    ) -> bool:
        """``_forward`` with ``proxy.retry`` asked after each failed attempt (``workers.retry``)."""
        retry = proxy.retry
        address = proxy.primary
        assert retry is not None and address is not None
        self.body_consumed = 0
        self.retry = retry
        try:
            while True:
                try:
                    conn, reused = await self._acquire(address, None, proxy.upstream, settings)
                except (UpstreamFailed, UpstreamTimeout) as exc:
                    kind = CONNECT_TIMEOUT if isinstance(exc, UpstreamTimeout) else CONNECT_ERROR
                    found = self._next_address(kind, exc, sent=False)
                    if found is None:
                        raise
                    address = found
                    continue
                outcome = await self._attempt(conn, reused, head, info, proxy, settings, headers)
                if isinstance(outcome, bool):
                    return outcome
                address = outcome
        finally:
            self.retry = None

    def _next_address(
        self, kind: int, exc: BaseException, *, sent: bool = True, status: int = 0
    ) -> tuple[str, int] | None:
        retry = self.retry
        if retry is None or not self.codec.can_respond:
            return None
        found = retry.next(kind, status=status, sent=sent, body_sent=self.body_consumed > 0, now=_now())
        if found is not None:
            self.worker.metrics.upstream_errors += 1
            log.warning("%s; next upstream (%s): %s:%d", exc, kind_name(kind), *found)
        return found

    async def _attempt(  # noqa: PLR0917
        self, conn: UpstreamConn, reused: bool, head: RequestHead, info: RequestInfo, proxy: Proxy,
        settings: GlobalSettings, headers: list[tuple[bytes, bytes]],
    ) -> bool | tuple[str, int]:
        """One attempt under a cancel scope of its own: client keep-alive, or the endpoint of
        the next attempt."""
        upstream = proxy.upstream
        outer = self.scope
        outer.deadline = _INF
        keep = False
        with trio.CancelScope() as scope:
            self.scope = scope
            try:
                while True:
                    try:
                        keep = await self._exchange(
                            conn, reused, method=head.method, target=proxy.target, headers=headers, info=info,
                            upstream=upstream, limit=proxy.limit,
                        )
                        break
                    except _DeadConnection:
                        await trio.aclose_forcefully(conn.stream)
                        if self.body_consumed:
                            raise UpstreamFailed(
                                f"upstream {upstream.name} closed a kept-alive connection"
                            ) from None
                        self.scope.deadline = _INF
                        conn, reused = await self._acquire(conn.key, None, upstream, settings, fresh=True)
            except _NextUpstream as exc:
                await trio.aclose_forcefully(conn.stream)
                return exc.address
            except (UpstreamFailed, UpstreamTimeout) as exc:
                await trio.aclose_forcefully(conn.stream)
                kind = TIMEOUT if isinstance(exc, UpstreamTimeout) else (
                    INVALID_HEADER if "bad response from upstream" in str(exc) else ERROR)
                found = self._next_address(kind, exc)
                if found is None:
                    raise
                return found
            except BaseException:
                await trio.aclose_forcefully(conn.stream)
                raise
            finally:
                self.scope = outer
        if scope.cancelled_caught:  # this attempt's deadline fired
            await trio.aclose_forcefully(conn.stream)
            if self.phase != PH_UPSTREAM:
                raise trio.BrokenResourceError("client timed out")
            timeout = UpstreamTimeout(f"upstream {upstream.name}: timed out after {upstream.read_timeout:g}s")
            found = self._next_address(TIMEOUT, timeout)
            if found is None:
                raise timeout
            return found
        ucodec = conn.codec
        if ucodec.reusable and not self.worker.draining:
            await self.worker.pool.release(conn, settings.upstream_keepalive_connections,
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
        self.up_addr = conn.key
        self.t_up = _now()
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
            except (FastIngressError, _DeadConnection, Intercepted, _NextUpstream) as exc:
                err = exc
            nursery.cancel_scope.cancel()
        pump_error = self.pump_error
        if pump_error is not None and (err is None or isinstance(err, (_DeadConnection, _NextUpstream))):
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
        client_timeout = self.worker.settings.client_body_timeout
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
        pacer: Pacer | None = None  # limit-rate
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
                if not data and not got:
                    if reused:
                        raise _DeadConnection
                    raise UpstreamFailed(f"upstream {upstream.name} closed the connection before answering")
                got = True
                ucodec.receive_data(data)
                continue
            kind = type(ev)
            if kind is Body:
                assert isinstance(ev, Body)
                self.resp_bytes += len(ev.data)
                if pacer is None:
                    out.append(codec.data(ev.data))
                else:
                    self.phase = PH_CLIENT
                    await self._send_paced(ev.data, out, pacer, upstream.send_timeout)
            elif kind is ResponseHead:
                assert isinstance(ev, ResponseHead)
                if ev.status < 200:
                    if ev.status == 101:
                        return await self._tunnel(conn, ev, out, upstream.read_timeout)
                    continue  # 100 Continue and friends: we speak for ourselves
                retry = self.retry
                if retry is not None and ev.status in retry.statuses:
                    found = self._next_address(STATUS, UpstreamFailed(
                        f"upstream {upstream.name} answered {ev.status}"), status=ev.status)
                    if found is not None:
                        raise _NextUpstream(found, ev.status)  # proxy-next-upstream http_NNN
                ctx = self.ctx
                if ctx is not None and ctx.intercept_hooks:
                    fetch = ctx.intercept(ev.status, ev.headers)
                    if fetch is not None:  # custom-http-errors: nothing of it goes out
                        raise Intercepted(fetch)
                worker = self.worker
                headers = response_headers(ev.headers, worker.server_header, keep_server=worker.keep_server)
                if self.tls and worker.hsts is not None:
                    add_hsts(headers, worker.hsts)
                if worker.add_headers:  # the ConfigMap's add-headers
                    set_headers(headers, worker.add_headers)
                ctx = self.ctx
                if ctx is not None:
                    ctx.respond(ev.status, headers)
                    if ctx.limit_rate is not None:
                        pacer = Pacer(*ctx.limit_rate, ctx.now)
                if worker.draining or not self.pump_done:
                    headers.append((b"connection", b"close"))
                    self.linger = not self.pump_done
                elif 0 < self.max_requests <= self.served:
                    headers.append((b"connection", b"close"))
                self.status = self.up_status = ev.status
                out.append(codec.response_head(ev.status, headers, ev.reason, trusted=True))
            elif ev is _END:
                out.append(codec.end())
                self.phase = PH_CLIENT
                _arm(scope, upstream.send_timeout)
                await stream.send_all(b"".join(out))
                return codec.reusable
            else:
                raise UpstreamFailed(f"upstream {upstream.name} closed the connection mid-response")

    async def _send_paced(self, data: bytes, out: list[bytes], pacer: Pacer, timeout: float) -> None:
        """limit-rate: what ``out`` holds (the head) now, then the body bytes ``data`` in
        pieces at the pace of ``pacer``, each under the send timeout."""
        codec = self.codec
        stream = self.stream
        scope = self.scope
        if out:
            _arm(scope, timeout)
            await stream.send_all(b"".join(out))
            out.clear()

        async def send(piece: bytes) -> None:
            await stream.send_all(codec.data(piece))

        await send_paced(data, pacer, send, lambda extra: _arm(scope, timeout + extra))

    async def _tunnel(
        self, conn: UpstreamConn, ev: ResponseHead, out: list[bytes], read_timeout: float
    ) -> bool:
        """After a 101: copy raw bytes both ways until either side closes."""
        codec = self.codec
        headers = response_headers(ev.headers, self.worker.server_header, upgrade=True,
                                   keep_server=self.worker.keep_server)
        self.status = 101
        out.append(codec.informational(101, headers, ev.reason))
        out.append(conn.codec.trailing_data)
        client_extra = codec.trailing_data
        self.phase = PH_CLIENT
        self.scope.deadline = _INF
        # A tunnel is "done" as a request (metrics, access log) once it is established; the
        # done hooks of its policies wait for its end, as nginx's (limit-connections counts
        # a WebSocket while it is open).
        ctx = self.ctx
        self.ctx = None
        self.finish_request(101)
        try:
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
        finally:
            if ctx is not None:
                ctx.finish()
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


__all__ = ["PH_CLIENT", "PH_HEAD", "PH_UPSTREAM", "RECV_SIZE", "Intercepted", "SessionBase", "copy_bytes"]
