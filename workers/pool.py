"""Upstream side bookkeeping: keep-alive connection pool, DNS cache, load balancing.

Theory of operation
-------------------
* ``Pool`` keeps idle keep-alive connections per endpoint ``(host, port)`` in a LIFO
  list (the most recently used connection is the most likely to be alive and warm).
  A connection idle longer than the keep-alive timeout is closed when it is found
  (LIFO order means everything under an expired one is expired too) or by ``reap``,
  which the worker calls about once a second.  ``connect`` wraps the injected
  connect function with the connect timeout and maps failures to our errors.
  The pool outlives route tables: a new snapshot never closes a connection.
* ``Balancer`` belongs to ONE compiled route table (it is rebuilt with it): the
  round-robin cursor per upstream, the ready endpoints per upstream (computed once),
  and the smooth weighted round-robin state per Forward action (nginx's algorithm:
  add each weight to its current value, pick the largest, subtract the total).
* ExternalName upstreams are resolved with trio's getaddrinfo (in a thread), cached
  per name for ``dns_ttl`` seconds.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import trio

from fastingress.errors import NoEndpoint, UpstreamFailed, UpstreamTimeout
from fastingress.snapshot.schema import Forward, Upstream
from workers.http1 import ClientCodec

Connect = Callable[[str, int, float], Awaitable[trio.abc.Stream]]
Resolve = Callable[[str, int], Awaitable[tuple[str, ...]]]
Address = tuple[str, int]


class UpstreamConn:
    """One connection to an upstream endpoint and its HTTP/1.1 client state."""

    __slots__ = ("codec", "idle_since", "key", "requests", "stream")

    def __init__(self, stream: trio.abc.Stream, key: Address) -> None:
        self.stream = stream
        self.codec = ClientCodec()
        self.key = key
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
    __slots__ = ("_connect", "_dns", "_idle", "_resolve")

    def __init__(self, connect: Connect, resolve: Resolve = resolve_host) -> None:
        self._connect = connect
        self._resolve = resolve
        self._idle: dict[Address, list[UpstreamConn]] = {}
        self._dns: dict[tuple[str, int], tuple[float, tuple[str, ...]]] = {}

    async def connect(self, key: Address, timeout: float) -> UpstreamConn:
        """A fresh connection; UpstreamTimeout / UpstreamFailed on failure."""
        host, port = key
        stream: trio.abc.Stream | None = None
        with trio.move_on_after(timeout):
            try:
                stream = await self._connect(host, port, timeout)
            except (OSError, trio.BrokenResourceError) as exc:
                raise UpstreamFailed(f"connect to {host}:{port} failed: {exc}") from None
        if stream is None:
            raise UpstreamTimeout(f"connect to {host}:{port} timed out after {timeout:g}s")
        return UpstreamConn(stream, key)

    async def take(self, key: Address, max_idle: float) -> UpstreamConn | None:
        """The most recently released idle connection to ``key``, if one is fresh enough."""
        idle = self._idle.get(key)
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
        if conn.requests >= max_requests:
            await trio.aclose_forcefully(conn.stream)
            return
        if conn.codec.reusable:  # (a connection that never carried a request is already idle)
            conn.codec.start_next_cycle()
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = []
        if len(idle) >= max_idle_conns:
            await trio.aclose_forcefully(conn.stream)
            return
        conn.idle_since = trio.current_time()
        idle.append(conn)

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

    async def close(self) -> None:
        for idle in self._idle.values():
            await self._close_all(idle)
        self._idle.clear()

    def idle_count(self, key: Address) -> int:
        return len(self._idle.get(key, ()))

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


class Balancer:
    """Load-balancing state for one compiled route table."""

    __slots__ = ("_ready", "_rr", "_swrr")

    def __init__(self) -> None:
        self._rr: dict[str, int] = {}
        self._ready: dict[str, tuple[Address, ...]] = {}
        self._swrr: dict[int, list[int]] = {}

    def pick_backend(self, action: Forward) -> str:
        """The Upstream name for this request (smooth weighted round robin)."""
        backends = action.backends
        if len(backends) == 1:
            return backends[0].upstream
        current = self._swrr.get(id(action))
        if current is None:
            current = self._swrr[id(action)] = [0] * len(backends)
        total = 0
        best = -1
        for i, backend in enumerate(backends):
            weight = backend.weight if backend.weight > 0 else 0
            total += weight
            current[i] += weight
            if weight and (best < 0 or current[i] > current[best]):
                best = i
        if best < 0:
            raise NoEndpoint("no backend with a positive weight")
        current[best] -= total
        return backends[best].upstream

    def ready(self, upstream: Upstream) -> tuple[Address, ...]:
        addrs = self._ready.get(upstream.name)
        if addrs is None:
            addrs = self._ready[upstream.name] = tuple(
                (e.address, e.port) for e in upstream.endpoints if e.ready
            )
        return addrs

    def pick(self, name: str, addrs: tuple[Address, ...]) -> tuple[Address, Address | None]:
        """(primary, alternate for a retry) by round robin over ``addrs`` (non-empty)."""
        n = len(addrs)
        if n == 1:
            return addrs[0], None
        i = self._rr.get(name, 0)
        self._rr[name] = i + 1
        return addrs[i % n], addrs[(i + 1) % n]
