"""Load balancing (sans-I/O): which backend of a Forward and which endpoint of an Upstream.

``Balancer`` belongs to ONE compiled route table (it is rebuilt with it): the round-robin
cursor per upstream, the ready endpoints per upstream (computed once), and the smooth
weighted round-robin state per Forward action (nginx's algorithm: add each weight to its
current value, pick the largest, subtract the total).
"""

from __future__ import annotations

from fastingress.errors import NoEndpoint
from fastingress.snapshot.schema import Forward, Upstream

Address = tuple[str, int]


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


__all__ = ["Address", "Balancer"]
