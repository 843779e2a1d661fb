"""Upstream side bookkeeping: keep-alive connection pool, DNS cache, load balancing.

Theory of operation
-------------------
* ``Pool`` keeps idle keep-alive connections per endpoint and TLS parameters
  ``(host, port, ClientTLS | None)`` (see ``upstream_tls``: HTTPS upstreams get the TLS
  handshake inside ``connect``, under the connect timeout) in a LIFO
  list (the most recently used connection is the most likely to be alive and warm).
  A connection idle longer than the keep-alive timeout is closed when it is found
  (LIFO order means everything under an expired one is expired too) or by ``reap``,
  which the worker calls about once a second.  ``connect`` wraps the injected
  connect function with the connect timeout and maps failures to our errors.
  The pool outlives route tables: a new snapshot never closes a connection.
* ``Balancer`` (``workers.balance``) picks backends and endpoints.
* ExternalName upstreams are resolved with trio's getaddrinfo (in a thread), cached
  per name for ``dns_ttl`` seconds.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import trio

from fastingress.errors import UpstreamFailed, UpstreamTimeout
from fastingress.snapshot.schema import Upstream
from workers.balance import Balancer
from workers.h2upstream import H2Pool
from workers.http1 import ClientCodec
from workers.upstream_tls import ClientTLS, TLSContexts

Connect = Callable[[str, int, float], Awaitable[trio.abc.Stream]]
Resolve = Callable[[str, int], Awaitable[tuple[str, ...]]]
Address = tuple[str, int]
PoolKey = tuple[str, int, ClientTLS | None]  # endpoint + TLS parameters (None: cleartext)


class UpstreamConn:
    """One connection to an upstream endpoint and its HTTP/1.1 client state."""

    __slots__ = ("codec", "idle_since", "key", "requests", "stream", "tls")

    def __init__(self, stream: trio.abc.Stream, key: Address, tls: ClientTLS | None = None) -> None:
        self.stream = stream
        self.codec = ClientCodec()
        self.key = key
        self.tls = tls
        self.requests = 0
        self.idle_since = 0.0


async def resolve_host(name: str, port: int) -> tuple[str, ...]:
    """Resolve a name to its addresses (in a thread, via trio)."""
    infos = await trio.socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    seen: dict[str, None] = {}
    for info in infos:
        seen[str(info[4][0])] = None
    return tuple(seen)


class Pool:
    __slots__ = ("_connect", "_dns", "_idle", "_prune_pending", "_resolve", "_retired", "h2", "tls")

    def __init__(self, connect: Connect, resolve: Resolve = resolve_host) -> None:
        self._connect = connect
        self._resolve = resolve
        self.tls = TLSContexts()  # upstream TLS contexts and sessions (HTTPS/GRPCS)
        self.h2 = H2Pool()  # HTTP/2 upstream connections (GRPC/GRPCS/H2C)
        self._idle: dict[PoolKey, list[UpstreamConn]] = {}
        self._dns: dict[tuple[str, int], tuple[float, tuple[str, ...]]] = {}
        self._retired: frozenset[Address] = frozenset()  # endpoints the last snapshot removed
        self._prune_pending = False

    async def connect(
        self, key: Address, timeout: float, tls: ClientTLS | None = None, label: str = ""
    ) -> UpstreamConn:
        """A fresh connection (TLS handshake included, under the same timeout); UpstreamTimeout /
        UpstreamFailed on failure, named after ``label`` (the upstream) when given."""
        host, port = key
        prefix = f"upstream {label}: " if label else ""
        stream: trio.abc.Stream | None = None
        with trio.move_on_after(timeout):
            try:
                stream = await self._connect(host, port, timeout)
            except (OSError, trio.BrokenResourceError) as exc:
                raise UpstreamFailed(f"{prefix}connect to {host}:{port} failed: {exc}") from None
            if tls is not None:
                try:
                    stream = await self.tls.handshake(stream, key, tls)
                except UpstreamFailed as exc:
                    await trio.aclose_forcefully(stream)
                    raise UpstreamFailed(f"{prefix}{exc}") from None
                except BaseException:
                    await trio.aclose_forcefully(stream)
                    raise
        if stream is None:
            raise UpstreamTimeout(f"{prefix}connect to {host}:{port} timed out after {timeout:g}s")
        if tls is not None and not isinstance(stream, trio.SSLStream):  # timed out mid-handshake
            await trio.aclose_forcefully(stream)
            raise UpstreamTimeout(f"{prefix}TLS handshake with {host}:{port} timed out after {timeout:g}s")
        return UpstreamConn(stream, key, tls)

    async def take(self, key: Address, max_idle: float, tls: ClientTLS | None = None) -> UpstreamConn | None:
        """The most recently released idle connection to ``key``, if one is fresh enough."""
        idle = self._idle.get((key[0], key[1], tls))
        if not idle:
            return None
        conn = idle.pop()
        if trio.current_time() - conn.idle_since <= max_idle:
            return conn
        idle.append(conn)
        await self._close_all(idle)
        return None

    async def release(self, conn: UpstreamConn, max_idle_conns: int, max_requests: int) -> None:
        """Return a connection whose exchange finished cleanly (codec reusable)."""
        if conn.requests >= max_requests or conn.key in self._retired:
            await trio.aclose_forcefully(conn.stream)
            return
        if conn.codec.reusable:  # (a connection that never carried a request is already idle)
            conn.codec.start_next_cycle()
        pool_key = (conn.key[0], conn.key[1], conn.tls)
        if conn.tls is not None and conn.requests == 1:  # once per connection: it costs ~0.5 ms
            self.tls.remember(conn.stream, conn.key, conn.tls)
        idle = self._idle.get(pool_key)
        if idle is None:
            idle = self._idle[pool_key] = []
        if len(idle) >= max_idle_conns:
            await trio.aclose_forcefully(conn.stream)
            return
        conn.idle_since = trio.current_time()
        idle.append(conn)

    def retire(self, removed: frozenset[Address]) -> None:
        """Endpoints that left the snapshot: their idle connections close at the next
        :meth:`prune`, and busy ones close when released instead of returning to the pool
        (an endpoint that comes back in a later snapshot is pooled again)."""
        self._retired = removed
        self._prune_pending = bool(removed)

    async def prune(self) -> None:
        """Close the idle connections (HTTP/1.1 and HTTP/2) of retired endpoints."""
        if not self._prune_pending:
            return
        self._prune_pending = False
        retired = self._retired
        for key in [k for k in self._idle if (k[0], k[1]) in retired]:
            await self._close_all(self._idle.pop(key))
        await self.h2.prune(retired)

    async def reap(self, max_idle: float) -> None:
        """Close idle connections older than ``max_idle`` seconds."""
        deadline = trio.current_time() - max_idle
        for key in list(self._idle):
            idle = self._idle[key]
            fresh = [c for c in idle if c.idle_since >= deadline]
            stale = [c for c in idle if c.idle_since < deadline]
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]
            await self._close_all(stale)
        await self.h2.reap(max_idle)

    async def close(self) -> None:
        for idle in self._idle.values():
            await self._close_all(idle)
        self._idle.clear()
        await self.h2.close()

    def idle_count(self, key: Address, tls: ClientTLS | None = None) -> int:
        return len(self._idle.get((key[0], key[1], tls), ()))

    @staticmethod
    async def _close_all(conns: list[UpstreamConn]) -> None:
        while conns:
            await trio.aclose_forcefully(conns.pop().stream)

    async def resolve(self, upstream: Upstream) -> tuple[str, ...]:
        """Addresses of an ExternalName upstream, cached for its dns_ttl."""
        name = upstream.external_name or ""
        key = (name, upstream.port)
        now = trio.current_time()
        cached = self._dns.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            addrs = await self._resolve(name, upstream.port)
        except OSError as exc:
            raise UpstreamFailed(
                f"upstream {upstream.name}: cannot resolve {name!r}: {exc}"
            ) from None
        if not addrs:
            raise UpstreamFailed(f"upstream {upstream.name}: {name!r} has no addresses")
        self._dns[key] = (now + upstream.dns_ttl, addrs)
        return addrs


__all__ = ["Balancer", "Connect", "Pool", "PoolKey", "Resolve", "UpstreamConn", "resolve_host"]
