"""Load balancing (sans-I/O): which backend of a Forward and which endpoint of an Upstream.

``Balancer`` belongs to ONE compiled route table (it is rebuilt with it): the round-robin
cursor per upstream, the ready endpoints per upstream (computed once), and the smooth
weighted round-robin state per Forward action (nginx's algorithm: add each weight to its
current value, pick the largest, subtract the total).

``choose`` picks an endpoint by the upstream's ``load-balance``: round robin, or ``ewma``
(ingress-nginx's ``balancer/ewma.lua``, after Finagle's peak EWMA): the lower score of two
endpoints drawn at random, where a score is the endpoint's exponentially weighted moving
average response time, decaying towards 0 with a 10 s time constant while it is not measured.
Measurements come from the route's response hook (``workers.policies.selection``), which
times each attempt from the choice to the response head; a failed attempt counts as at least
``FAILURE_RTT``.  New endpoints start at the average of the others (slow start).  The EWMA
statistics (``Ewma``, per endpoint address, as ingress-nginx keeps them) outlive route tables:
a new table's balancer takes them over, minus endpoints that left.  Cookie affinity and
consistent hashing are route policies (``workers.affinity``, ``workers.chash``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from fastingress.errors import NoEndpoint
from fastingress.snapshot.schema import Forward, Upstream

Address = tuple[str, int]
DECAY_TIME = 10.0  # seconds (ingress-nginx's DECAY_TIME)
FAILURE_RTT = 1.0  # seconds: what a failed attempt counts as, at least
EWMA_STATE = "ewma"  # RequestCtx.state key: (Ewma, endpoint, start) of the attempt in progress


class RequestState(Protocol):
    """What this module needs of a ``workers.policy.RequestCtx`` (which imports this module)."""

    state: dict[str, object]


class Ewma:
    """Response-time statistics per endpoint (see the module docstring)."""

    __slots__ = ("clock", "rng", "stats")

    def __init__(self, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats: dict[Address, tuple[float, float]] = {}  # endpoint -> (ewma seconds, last update)

    def score(self, address: Address, now: float) -> float:
        found = self.stats.get(address)
        if found is None:
            return 0.0
        ewma, touched = found
        return ewma * math.exp(-max(now - touched, 0.0) / DECAY_TIME)

    def observe(self, address: Address, rtt: float, now: float) -> None:
        found = self.stats.get(address)
        if found is None:
            self.stats[address] = (rtt, now)
            return
        ewma, touched = found
        weight = math.exp(-max(now - touched, 0.0) / DECAY_TIME)
        self.stats[address] = (ewma * weight + rtt * (1.0 - weight), now)

    def slow_start(self, addrs: Iterable[Address]) -> None:
        """Endpoints without statistics start at the average of those with some."""
        addrs = tuple(addrs)
        known = [self.stats[a][0] for a in addrs if a in self.stats]
        if not known or len(known) == len(addrs):
            return
        average = sum(known) / len(known)
        now = self.clock()
        for a in addrs:
            self.stats.setdefault(a, (average, now))

    def retain(self, keep: frozenset[Address]) -> None:
        for address in [a for a in self.stats if a not in keep]:
            del self.stats[address]

    def pick(self, addrs: tuple[Address, ...], tried: tuple[Address, ...]) -> tuple[Address, Address | None]:
        left = [a for a in addrs if a not in tried] or list(addrs)
        if len(left) == 1:
            return left[0], None
        a, b = self.rng.sample(left, 2)
        now = self.clock()
        return (a, b) if self.score(a, now) <= self.score(b, now) else (b, a)


class Balancer:
    """Load-balancing state for one compiled route table."""

    __slots__ = ("_ready", "_rr", "_slow_started", "_swrr", "ewma")

    def __init__(self, previous: Balancer | None = None, keep: frozenset[Address] | None = None) -> None:
        self._rr: dict[str, int] = {}
        self._ready: dict[str, tuple[Address, ...]] = {}
        self._swrr: dict[int, list[int]] = {}
        self._slow_started: set[str] = set()
        self.ewma: Ewma = previous.ewma if previous is not None else Ewma()
        if keep is not None:
            self.ewma.retain(keep)

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

    def choose(
        self,
        upstream: Upstream,
        addrs: tuple[Address, ...],
        ctx: RequestState | None = None,
        tried: tuple[Address, ...] = (),
    ) -> tuple[Address, Address | None]:
        """(primary, alternate) by the upstream's load-balance; ``tried``: endpoints that failed
        this request already (a retry prefers the others)."""
        balancing = upstream.balancing
        if balancing is None or balancing.load_balance != "ewma":
            if tried:
                return _after(addrs, tried), None
            return self.pick(upstream.name, addrs)
        ewma = self.ewma
        if upstream.name not in self._slow_started:
            self._slow_started.add(upstream.name)
            ewma.slow_start(addrs)
        primary, alternate = ewma.pick(addrs, tried)
        if ctx is not None:
            now = ewma.clock()
            previous = ctx.state.get(EWMA_STATE)
            if tried and isinstance(previous, tuple):  # the attempt before this one failed
                ewma.observe(previous[1], max(now - previous[2], FAILURE_RTT), now)
            ctx.state[EWMA_STATE] = (ewma, primary, now)
        return primary, alternate


def _after(addrs: tuple[Address, ...], tried: tuple[Address, ...]) -> Address:
    """Round robin's retry: the first endpoint after the last one tried that was not tried yet
    (when all were, the next one anyway)."""
    n = len(addrs)
    try:
        start = addrs.index(tried[-1]) + 1
    except ValueError:
        start = 0
    for k in range(n):
        candidate = addrs[(start + k) % n]
        if candidate not in tried:
            return candidate
    return addrs[start % n]


def observe_response(ctx: RequestState, status: int) -> None:
    """A response head (ours or the upstream's) for an attempt chosen by EWMA: measure it."""
    entry = ctx.state.pop(EWMA_STATE, None)
    if not isinstance(entry, tuple):
        return
    ewma, address, start = entry
    now = ewma.clock()
    rtt = now - start
    if status in (502, 503, 504):
        rtt = max(rtt, FAILURE_RTT)
    ewma.observe(address, rtt, now)


__all__ = ["DECAY_TIME", "EWMA_STATE", "FAILURE_RTT", "Address", "Balancer", "Ewma", "observe_response"]
