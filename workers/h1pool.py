"""Upstream HTTP/1.1 connections of the event-driven core, and their keep-alive pool.

Theory of operation
-------------------
``UpstreamConn`` is one connection to one endpoint: a non-blocking ``connect`` (and, for
HTTPS upstreams, a stdlib ``ssl`` handshake resuming the endpoint's last session), then the
protocol object of a ``Transport``.  It parses responses with the llhttp ``ClientCodec`` and
reports to its ``owner`` (the client connection whose request it carries, see
``workers.h1conn``) through plain calls: ``upstream_ready``, ``upstream_failed``,
``upstream_readable``, ``upstream_lost``, ``upstream_writable``, ``upstream_timeout``.  Its
deadline is the connect timeout, then whichever of send/read timeout the owner arms.

``CorePool`` keeps idle connections per endpoint and TLS parameters, shared by every client
connection of the worker, most recently used first.  An idle connection stays registered in
the epoll set, so an upstream that closes it is noticed at once (and forgotten); its deadline
is the keep-alive timeout, which closes it without any reaper.  A connection goes back only if
its exchange ended cleanly (both messages complete, keep-alive on both sides), it carried
fewer than ``upstream_keepalive_requests`` and fewer than ``upstream_keepalive_connections``
wait for that endpoint.  Endpoints a new snapshot removed are retired: their idle connections
close, busy ones close instead of returning.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

from fastingress.errors import UpstreamFailed, UpstreamTimeout
from fastingress.snapshot.schema import GlobalSettings
from workers.balance import Address
from workers.llhttp import ClientCodec
from workers.loop import Core, Timed
from workers.transport import ClientTLSTransport, Transport
from workers.upstream_tls import ClientTLS, TLSContexts

log = logging.getLogger("fastingress.worker")

PoolKey = tuple[str, int, ClientTLS | None]
Dial = Callable[[Address], Address]  # endpoint -> address to connect to (tests map fake ones)

_INF = float("inf")
CONNECTING, HANDSHAKE, BUSY, IDLE, CLOSED = range(5)


class Owner(Protocol):
    def upstream_ready(self, conn: UpstreamConn) -> None: ...

    def upstream_failed(self, conn: UpstreamConn, exc: UpstreamFailed | UpstreamTimeout) -> None: ...

    def upstream_readable(self, conn: UpstreamConn) -> None: ...

    def upstream_lost(self, conn: UpstreamConn, exc: BaseException | None) -> None: ...

    def upstream_writable(self, conn: UpstreamConn) -> None: ...

    def upstream_timeout(self, conn: UpstreamConn) -> None: ...


def tcp_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class UpstreamConn(Timed):
    """One connection to an upstream endpoint (see the module docstring)."""

    __slots__ = (
        "codec", "connect_timeout", "fresh", "idle_since", "key", "label", "owner", "pool", "requests",
        "sock", "state", "tls", "transport", "writing_paused",
    )

    def __init__(self, pool: CorePool, key: Address, tls: ClientTLS | None, label: str) -> None:
        super().__init__()
        self.pool = pool
        self.key = key
        self.tls = tls
        self.label = label  # the upstream's name, for errors
        self.codec = ClientCodec()
        self.owner: Owner | None = None
        self.transport: Transport | None = None
        self.sock: socket.socket | None = None
        self.state = CONNECTING
        self.requests = 0
        self.fresh = True  # no response byte arrived in the current exchange yet
        self.writing_paused = False
        self.connect_timeout = 0.0
        self.idle_since = 0.0

    # ---- connecting ------------------------------------------------------------------

    def connect(self, owner: Owner, timeout: float) -> None:
        self.owner = owner
        self.connect_timeout = timeout
        host, port = self.pool.dial(self.key)
        core = self.pool.core
        try:
            sock = tcp_socket(host)
        except OSError as exc:
            self._fail(UpstreamFailed(f"upstream {self.label}: connect to {self._where()} failed: {exc}"))
            return
        self.sock = sock
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._fail(UpstreamFailed(
                f"upstream {self.label}: connect to {self._where()} failed: {errno.errorcode.get(err, err)}"
            ))
            return
        core.add(sock.fileno(), self)
        core.set_deadline(self, core.now + timeout)
        if err == 0:
            self._connected()

    def _where(self) -> str:
        return f"{self.key[0]}:{self.key[1]}"

    def on_event(self, events: int) -> None:
        """Readiness while connecting or in the TLS handshake (then the transport takes over)."""
        if self.state == CONNECTING:
            assert self.sock is not None
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                why = errno.errorcode.get(err, err)
                self._fail(UpstreamFailed(f"upstream {self.label}: connect to {self._where()} failed: {why}"))
                return
            self._connected()
        elif self.state == HANDSHAKE:
            self._handshake()

    def _connected(self) -> None:
        if self.tls is None:
            self._ready(Transport(self.pool.core, self.sock, self))  # type: ignore[arg-type]
            return
        try:
            self.sock = self.pool.tls.wrap(self.sock, self.key, self.tls)  # type: ignore[arg-type]
        except UpstreamFailed as exc:
            self._fail(UpstreamFailed(f"upstream {self.label}: {exc}"))
            return
        self.state = HANDSHAKE
        self._handshake()

    def _handshake(self) -> None:
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket) and self.tls is not None
        try:
            sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            failed = self.pool.tls.handshake_failed(self.key, self.tls, exc)
            self._fail(UpstreamFailed(f"upstream {self.label}: {failed}"))
            return
        try:
            self.pool.tls.check_alpn(sock.selected_alpn_protocol(), self.key, self.tls)
            self.pool.tls.check_chain(sock, self.key, self.tls)
        except UpstreamFailed as exc:
            self._fail(UpstreamFailed(f"upstream {self.label}: {exc}"))
            return
        self.pool.tls.keep_session(sock.session, self.key, self.tls)
        self._ready(ClientTLSTransport(self.pool.core, sock, self))

    def _ready(self, transport: Transport) -> None:
        self.transport = transport
        self.pool.core.handlers[transport.fd] = transport  # same fd, same registration
        self.state = BUSY
        self.deadline = _INF
        owner = self.owner
        if owner is not None:
            owner.upstream_ready(self)

    def _fail(self, exc: UpstreamFailed | UpstreamTimeout) -> None:
        self.state = CLOSED
        self.pool.core.cancel_deadline(self)
        if self.sock is not None:
            self.pool.core.remove(self.sock.fileno())
            self.sock.close()
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_failed(self, exc)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        elif self.state != CLOSED:
            self._fail(UpstreamFailed(f"upstream {self.label}: connection aborted"))

    # ---- the transport's protocol ----------------------------------------------------

    def data_received(self, data: memoryview | bytes) -> None:
        owner = self.owner
        if owner is None:  # idle: an upstream may not speak first; the connection is unusable
            self.close()
            return
        self.fresh = False
        self.codec.receive_data(data)
        owner.upstream_readable(self)

    def eof_received(self) -> None:
        owner = self.owner
        if owner is None:
            self.close()
            return
        self.codec.receive_data(b"")
        owner.upstream_readable(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.state = CLOSED
        self.pool.core.cancel_deadline(self)
        self.codec.release()
        self.pool.forget(self)
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_lost(self, exc)

    def writable(self) -> None:
        if self.owner is not None:
            self.owner.upstream_writable(self)

    def on_timeout(self) -> None:
        if self.state == IDLE:
            self.close()
        elif self.state in (CONNECTING, HANDSHAKE):
            timeout = self.connect_timeout
            what = "TLS handshake with" if self.state == HANDSHAKE else "connect to"
            self._fail(UpstreamTimeout(
                f"upstream {self.label}: {what} {self._where()} timed out after {timeout:g}s"))
        elif self.owner is not None:
            self.owner.upstream_timeout(self)

    # ---- use -------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        """Close (from any state); the owner is not told (it gave the connection up)."""
        self.owner = None
        if self.transport is not None:
            self.transport.abort()
        elif self.state != CLOSED:
            self._fail(UpstreamFailed("closed"))
        self.state = CLOSED


PURGE_DELAY = 1.0  # seconds an idle connection over the limit may stay (HAProxy's pool-purge-delay)


class _Trimmer(Timed):
    """Closes idle connections over ``upstream_keepalive_connections``, not at once but once
    they stayed idle ``PURGE_DELAY``: a burst that releases many connections right before the
    next requests take them again costs no reconnects (with more concurrent requests than the
    limit, closing at once churns connections on every burst)."""

    __slots__ = ("limit", "pool")

    def __init__(self, pool: CorePool) -> None:
        super().__init__()
        self.pool = pool
        self.limit = 32

    def arm(self, limit: int) -> None:
        self.limit = limit
        if self.deadline == _INF:
            core = self.pool.core
            core.set_deadline(self, core.now + PURGE_DELAY)

    def on_timeout(self) -> None:
        if self.pool.trim(self.limit):
            core = self.pool.core
            core.set_deadline(self, core.now + PURGE_DELAY)


class CorePool:
    """Idle keep-alive connections per endpoint (see the module docstring)."""

    __slots__ = ("_dial", "_idle", "_retired", "_trimmer", "core", "tls")

    def __init__(self, core: Core, tls: TLSContexts, dial: Dial | None = None) -> None:
        self.core = core
        self.tls = tls
        self._dial = dial
        self._idle: dict[PoolKey, list[UpstreamConn]] = {}
        self._retired: frozenset[Address] = frozenset()
        self._trimmer = _Trimmer(self)

    def dial(self, key: Address) -> Address:
        return key if self._dial is None else self._dial(key)

    def take(self, key: Address, tls: ClientTLS | None) -> UpstreamConn | None:
        """The most recently released idle connection to ``key``, if any."""
        idle = self._idle.get((key[0], key[1], tls))
        while idle:
            conn = idle.pop()
            if conn.state == IDLE:
                conn.state = BUSY
                conn.fresh = True
                conn.deadline = _INF
                return conn
        return None

    def connect(self, key: Address, tls: ClientTLS | None, label: str, owner: Owner,
                timeout: float) -> UpstreamConn:
        conn = UpstreamConn(self, key, tls, label)
        conn.connect(owner, timeout)
        return conn

    def release(self, conn: UpstreamConn, settings: GlobalSettings) -> None:
        """Take back a connection whose exchange ended; keep it if it may carry another."""
        conn.owner = None
        codec = conn.codec
        if (
            conn.state != BUSY
            or not codec.reusable
            or conn.requests >= settings.upstream_keepalive_requests
            or conn.key in self._retired
            or conn.transport is None
            or conn.transport.write_buffered
        ):
            conn.close()
            return
        key = (conn.key[0], conn.key[1], conn.tls)
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        codec.start_next_cycle()
        conn.state = IDLE
        conn.transport.resume_reading()
        self.core.set_deadline(conn, self.core.now + settings.upstream_keepalive_timeout)
        idle.append(conn)
        conn.idle_since = self.core.now
        if len(idle) > settings.upstream_keepalive_connections:
            self._trimmer.arm(settings.upstream_keepalive_connections)

    def trim(self, limit: int) -> bool:
        """Close the least recently used idle connections over ``limit`` per endpoint that have
        been idle for ``PURGE_DELAY``; True while some endpoint is still over the limit."""
        cutoff = self.core.now - PURGE_DELAY
        over = False
        for idle in self._idle.values():
            excess = len(idle) - limit
            if excess <= 0:
                continue
            old = [c for c in idle[:excess] if c.idle_since <= cutoff]
            if old:
                del idle[:len(old)]
                for conn in old:
                    conn.close()
            over = over or len(idle) > limit
        return over

    def forget(self, conn: UpstreamConn) -> None:
        """A closed connection leaves the idle list (if it was there)."""
        idle = self._idle.get((conn.key[0], conn.key[1], conn.tls))
        if idle and conn in idle:
            idle.remove(conn)

    def retire(self, removed: frozenset[Address]) -> None:
        """Endpoints that left the snapshot: idle connections close now, busy ones on release."""
        self._retired = removed
        if not removed:
            return
        for key in [k for k in self._idle if (k[0], k[1]) in removed]:
            for conn in self._idle.pop(key):
                conn.close()

    def idle_count(self, key: Address, tls: ClientTLS | None = None) -> int:
        return sum(1 for c in self._idle.get((key[0], key[1], tls), ()) if c.state == IDLE)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


__all__ = ["BUSY", "IDLE", "CorePool", "Dial", "Owner", "UpstreamConn", "tcp_socket"]
