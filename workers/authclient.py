"""The HTTP/1.1 client of auth subrequests (``auth-url``): trio streams + the llhttp ClientCodec.

Theory of operation
-------------------
``AuthClient.request`` sends one body-less request to an auth origin (scheme, host, port)
and returns the answer's status and headers; the body is read and dropped (nginx's
``auth_request`` makes a header-only subrequest), up to ``MAX_BODY`` bytes, past which the
connection is closed instead of kept.

* Connections: ``trio.open_tcp_stream`` (DNS through trio's ``getaddrinfo``, in a thread,
  for names; none for addresses), then for ``https`` a TLS handshake through
  ``workers.upstream_tls.TLSContexts`` without verification and with SNI, as nginx's auth
  location does (``proxy_ssl_server_name on``, ``proxy_ssl_verify`` off), under
  ``connect_timeout``.  The exchange runs under ``read_timeout``.
* Keep-alive: idle connections are kept per origin, most recent first, at most
  ``keepalive`` of them, each for ``keepalive_requests`` requests and ``keepalive_timeout``
  seconds of idleness (``auth-keepalive*``; nginx's ``keepalive`` directives).  A stale one
  is closed when met.  A kept connection the server closed meanwhile fails before any
  byte of an answer: the request is then retried once on a new connection.
* Failures (connect, TLS, timeout, a malformed or missing answer) raise ``AuthFailed`` with a
  reason; the caller answers 500, as nginx does when the auth subrequest fails.

One ``AuthClient`` serves a worker (its per-run state, ``workers.policies.extauth``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

import trio

from fastingress.errors import UpstreamFailed
from workers.http1 import Body, ResponseHead, Signal
from workers.llhttp import ClientCodec
from workers.upstream_tls import ClientTLS, TLSContexts

MAX_BODY = 64 * 1024  # an auth answer's body is dropped; a longer one costs its connection
_READ = 16384
_NEED_DATA = Signal.NEED_DATA
_END = Signal.END
_CLOSED = Signal.CLOSED

Connect = Callable[[str, int], Awaitable[trio.abc.Stream]]
Header = tuple[bytes, bytes]


class Origin(NamedTuple):
    """Where auth subrequests go: ``host`` without brackets (an IPv6 address as is)."""

    scheme: str  # "http" or "https"
    host: str
    port: int


class AuthAnswer(NamedTuple):
    status: int
    headers: tuple[Header, ...]  # lower-case names, in order


class Limits(NamedTuple):
    """Keep-alive and timeouts of one ``ExternalAuth``."""

    keepalive: int = 32
    keepalive_requests: int = 1000
    keepalive_timeout: float = 60.0
    connect_timeout: float = 60.0
    read_timeout: float = 60.0


class AuthFailed(Exception):
    """The subrequest got no usable answer (``str``: why, for the log)."""

    def __init__(self, reason: str, *, before_answer: bool = False) -> None:
        super().__init__(reason)
        self.before_answer = before_answer  # nothing of an answer arrived: a retry is safe


class _Conn:
    __slots__ = ("codec", "idle_since", "requests", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.codec = ClientCodec()
        self.requests = 0
        self.idle_since = 0.0


async def _close(conn: _Conn) -> None:
    conn.codec.release()  # (the parser refers back to the codec: break the cycle now)
    await trio.aclose_forcefully(conn.stream)


async def _open_tcp(host: str, port: int) -> trio.abc.Stream:
    return await trio.open_tcp_stream(host, port)


class AuthClient:
    """Connections to auth origins (see the module docstring)."""

    __slots__ = ("_connect", "_idle", "tls")

    def __init__(self, connect: Connect = _open_tcp, tls: TLSContexts | None = None) -> None:
        self._connect = connect
        self.tls = tls if tls is not None else TLSContexts()
        self._idle: dict[Origin, list[_Conn]] = {}

    def idle_count(self, origin: Origin) -> int:
        return len(self._idle.get(origin, ()))

    async def request(
        self, origin: Origin, method: bytes, target: bytes, headers: list[Header], limits: Limits
    ) -> AuthAnswer:
        """One subrequest; AuthFailed when no usable answer came."""
        conn = await self._take(origin, limits)
        if conn is not None:
            try:
                return await self._exchange(conn, origin, method, target, headers, limits)
            except AuthFailed as exc:
                if not exc.before_answer:
                    raise
            # the server had closed the kept connection: once more on a new one
        conn = await self._open(origin, limits.connect_timeout)
        return await self._exchange(conn, origin, method, target, headers, limits)

    async def _take(self, origin: Origin, limits: Limits) -> _Conn | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if trio.current_time() - conn.idle_since <= limits.keepalive_timeout:
                return conn
            await _close(conn)  # (older ones are under it: all stale)
        return None

    async def _open(self, origin: Origin, timeout: float) -> _Conn:
        where = f"{origin.host}:{origin.port}"
        stream: trio.abc.Stream | None = None
        with trio.move_on_after(timeout):
            try:
                stream = await self._connect(origin.host, origin.port)
            except (OSError, trio.BrokenResourceError) as exc:
                raise AuthFailed(f"connect to {where} failed: {exc}") from None
            if origin.scheme == "https":
                tls = ClientTLS(verify=False, server_name=origin.host, sni=True)
                try:
                    stream = await self.tls.handshake(stream, (origin.host, origin.port), tls)
                except UpstreamFailed as exc:
                    await trio.aclose_forcefully(stream)
                    raise AuthFailed(str(exc)) from None
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        if stream is None:
            raise AuthFailed(f"connect to {where} timed out after {timeout:g}s")
        if origin.scheme == "https" and not isinstance(stream, trio.SSLStream):
            await trio.aclose_forcefully(stream)
            raise AuthFailed(f"TLS handshake with {where} timed out after {timeout:g}s")
        return _Conn(stream)

    async def _exchange(  # noqa: PLR0917
        self, conn: _Conn, origin: Origin, method: bytes, target: bytes, headers: list[Header], limits: Limits
    ) -> AuthAnswer:
        answer: AuthAnswer | None = None
        reusable = False
        try:
            with trio.move_on_after(limits.read_timeout) as scope:
                answer, reusable = await self._send_and_read(conn, method, target, headers, limits)
            if answer is None or scope.cancelled_caught:
                where = f"{origin.host}:{origin.port}"
                raise AuthFailed(f"no answer from {where} within {limits.read_timeout:g}s")
        finally:
            if answer is None or not reusable:
                await _close(conn)
        if reusable:
            await self._release(conn, origin, limits)
        return answer

    async def _send_and_read(
        self, conn: _Conn, method: bytes, target: bytes, headers: list[Header], limits: Limits
    ) -> tuple[AuthAnswer, bool]:
        codec = conn.codec
        conn.requests += 1
        last = conn.requests >= limits.keepalive_requests or limits.keepalive <= 0
        sent = [*headers, (b"connection", b"close")] if last else headers
        try:
            await conn.stream.send_all(codec.request_head(method, target, sent) + codec.end())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise AuthFailed(f"sending the subrequest failed: {exc}", before_answer=True) from None
        head: ResponseHead | None = None
        body = 0
        answered = False  # a byte of the answer arrived (else a kept connection may be retried)
        while True:
            try:
                event = codec.next_event()
            except UpstreamFailed as exc:
                raise AuthFailed(str(exc), before_answer=head is None and not answered) from None
            if event is _NEED_DATA:
                try:
                    data = await conn.stream.receive_some(_READ)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise AuthFailed(f"reading the answer failed: {exc}",
                                     before_answer=not answered) from None
                answered = answered or bool(data)
                codec.receive_data(data)
            elif type(event) is ResponseHead:
                if event.status >= 200:
                    head = event
            elif type(event) is Body:
                body += len(event.data)
                if body > MAX_BODY and head is not None:
                    return AuthAnswer(head.status, tuple(head.headers)), False
            elif event is _END and head is not None:
                return AuthAnswer(head.status, tuple(head.headers)), codec.reusable and not last
            elif event is _CLOSED or event is _END:
                raise AuthFailed("the auth server closed the connection without answering",
                                 before_answer=head is None and body == 0)

    async def _release(self, conn: _Conn, origin: Origin, limits: Limits) -> None:
        conn.codec.start_next_cycle()
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= limits.keepalive:
            await _close(conn)
            return
        conn.idle_since = trio.current_time()
        idle.append(conn)

    async def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                await _close(idle.pop())
        self._idle.clear()


__all__ = ["MAX_BODY", "AuthAnswer", "AuthClient", "AuthFailed", "Connect", "Limits", "Origin"]
