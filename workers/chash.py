"""Consistent hashing (sans-I/O): ``upstream-hash-by`` and the balanced affinity mode.

``Ring`` places every node at ``POINTS`` pseudo-random points of a 32-bit circle (MD5 of
``node#i``, four points per digest, as ketama does); a key belongs to the first point at or
after its own hash.  Adding or removing one node of N moves about 1/N of the keys, and only
those of that node.  Every worker and every replica builds the same ring from the same
endpoints, so a key goes to the same endpoint whichever of them serves it.  (ingress-nginx uses
lua-resty-balancer's ring: the same property, not the same placement.)

``Hashed`` is one upstream's ``upstream-hash-by``: the key from the request's variables
(``workers.hashkey``), then the endpoint; with ``upstream-hash-by-subset`` the key picks a
subset of ``size`` endpoints (ingress-nginx's ``chashsubset``: endpoints in order, the last
subset filled up from the first endpoints) and a random member of it serves the request.
A retry after a failure (``workers.retry``) takes the next endpoint along the ring that was not
tried yet (ingress-nginx would hash to the same one again).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import random
from collections.abc import Callable, Iterator, Sequence

from workers.policy import RequestCtx

Address = tuple[str, int]
POINTS = 160  # per node


def _hash32(text: str) -> int:
    return int.from_bytes(hashlib.md5(text.encode(), usedforsecurity=False).digest()[:4], "big")


class Ring:
    """Nodes (by index) on a hash ring."""

    __slots__ = ("_hashes", "_nodes", "size")

    def __init__(self, nodes: Sequence[str]) -> None:
        self.size = len(nodes)
        points: list[tuple[int, int]] = []
        for index, node in enumerate(nodes):
            for i in range(POINTS // 4):
                digest = hashlib.md5(f"{node}#{i}".encode(), usedforsecurity=False).digest()
                points.extend((int.from_bytes(digest[j:j + 4], "big"), index) for j in range(0, 16, 4))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._nodes = [n for _, n in points]

    def _start(self, key: str) -> int:
        i = bisect.bisect_left(self._hashes, _hash32(key))
        return i if i < len(self._hashes) else 0

    def find(self, key: str) -> int:
        """The index of the node ``key`` belongs to (the ring must not be empty)."""
        return self._nodes[self._start(key)]

    def walk(self, key: str) -> Iterator[int]:
        """Every node once, in ring order from ``key``'s own."""
        seen: set[int] = set()
        nodes = self._nodes
        start = self._start(key)
        for i in range(len(nodes)):
            node = nodes[(start + i) % len(nodes)]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == self.size:
                    return


@functools.lru_cache(maxsize=512)
def ring_of(nodes: tuple[str, ...]) -> Ring:
    """The ring of ``nodes``, memoised: routes and route tables (one per snapshot) that hash over
    the same endpoints share one ring instead of each building it (160 MD5 points per node)."""
    return Ring(nodes)


def subsets(addrs: Sequence[Address], size: int) -> list[tuple[Address, ...]]:
    """ingress-nginx's ``build_subset_map``: consecutive groups of ``size``, the last one filled
    up with the first endpoints again."""
    count = math.ceil(len(addrs) / size)
    padded = list(addrs) + [addrs[i % len(addrs)] for i in range(count * size - len(addrs))]
    return [tuple(padded[i * size:(i + 1) * size]) for i in range(count)]


class Hashed:
    """One upstream's ``upstream-hash-by`` (see the module docstring)."""

    __slots__ = ("_addrs", "_ring", "_subsets", "key", "rng", "size")

    def __init__(self, key: Callable[[RequestCtx], str], subset_size: int = 0,
                 rng: random.Random | None = None) -> None:
        self.key = key
        self.size = subset_size
        self.rng = rng or random.Random()
        self._addrs: tuple[Address, ...] = ()
        self._ring: Ring | None = None
        self._subsets: list[tuple[Address, ...]] = []

    def _index(self, addrs: tuple[Address, ...]) -> Ring:
        ring = self._ring
        if ring is not None and (addrs is self._addrs or addrs == self._addrs):
            self._addrs = addrs
            return ring
        self._addrs = addrs
        if self.size:
            self._subsets = subsets(addrs, self.size)
            ring = ring_of(tuple(f"set{i + 1}" for i in range(len(self._subsets))))
        else:
            ring = ring_of(tuple(f"{a[0]}:{a[1]}" for a in addrs))
        self._ring = ring
        return ring

    def select(self, ctx: RequestCtx, addrs: tuple[Address, ...], tried: tuple[Address, ...]) -> Address:
        ring = self._index(addrs)
        key = self.key(ctx)
        if self.size:
            members = self._subsets[ring.find(key)]
            left = [a for a in members if a not in tried]
            if left:
                return self.rng.choice(left)
            others = [a for a in addrs if a not in tried]
            return self.rng.choice(others or list(members))
        for index in ring.walk(key):
            if addrs[index] not in tried:
                return addrs[index]
        return addrs[ring.find(key)]


__all__ = ["POINTS", "Hashed", "Ring", "ring_of", "subsets"]
