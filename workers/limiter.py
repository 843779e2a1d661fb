"""Request-rate and connection limits per client, shared by every worker of a replica, without locks.

Theory of operation
-------------------
The counters live in the shared segment of ``fastingress.snapshot.limitshm``: a key (a zone
and a client address, hashed to a 64-bit ``tag``) falls in one set of entries, in which each
worker owns a few entries (its "ways") and writes only those.  Readers take one slice of the
set (every worker's entries at once) and combine the parts whose tag matches:

* **Request rate** (nginx ``limit_req ... burst=B nodelay``): nginx keeps, per key, the excess
  ``x`` in requests over the rate; a request at ``dt`` after the last accepted one makes it
  ``max(0, x - rate*dt + 1)`` and is refused when that exceeds ``B`` (a refusal changes
  nothing).  That is the Generic Cell Rate Algorithm: with period ``T = 1/rate`` and the
  theoretical arrival time ``TAT``, accept at ``t`` iff ``TAT - t <= B*T``, then
  ``TAT = max(TAT, t) + T``.  Unrolled over the accepted requests ``k = 1..C`` at times
  ``t_k``::

      TAT = max_k (t_k - k*T) + (C + 1)*T

  so the state splits into a **sum** (``C``: each worker counts its own accepted requests)
  and a **maximum** (``G = max_k (t_k - k*T)``: each worker keeps the maximum over the
  requests it accepted, numbering each ``k = C + 1`` with the ``C`` it read).  Sums and
  maxima merge in any order, so each worker writes only its own entry and the readers'
  ``C = sum c_w``, ``G = max g_w`` give exactly nginx's bucket.  Two workers accepting at
  the same instant both number their request ``C + 1``; the resulting state is the same as
  (or stricter than) the sequential one, so the only effect of such a race is that both may
  accept when the bucket had room for one: an excess of at most one request per racing
  worker, within microseconds, never a drift of the rate.
* **Connections** (nginx ``limit_conn``): each worker counts the requests in progress it
  admitted, in its own entry; a new request first adds itself, then sums every worker's
  count, and takes itself back if the sum exceeds the limit (so racing workers can only
  refuse too many, never admit too many).  A worker that dies leaves its counts behind:
  each process bumps its column's *incarnation* in the header when it starts, and readers
  ignore counts written under an older incarnation.

Entries are reused: a worker needing room for a new key takes a free entry of its ways in
the set, or one whose key no longer matters (a drained bucket, no request in progress),
or else the least recently used one that holds no request in progress (nginx also evicts
its least recently used node when a zone is full).  When none is left the request is
refused, as nginx does when it cannot allocate a node.

Times are ``time.monotonic_ns()`` (CLOCK_MONOTONIC: the same clock in every process);
tests inject a fake clock.  A request costs a hash (memoised per client by the caller), one
slice read per limit and two to four word writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import NamedTuple

from fastingress.snapshot.limitshm import ENTRY_WORDS, LimitSegment

# Word offsets inside an entry.
TAG, KIND, INC, COUNT, GMAX, CONNS, PERIOD, LAST = range(ENTRY_WORDS)
KIND_RATE = 1
KIND_CONN = 2
_E = ENTRY_WORDS
_NO_SLOT = -1


class RateKey(NamedTuple):
    """One request-rate limit of one client: its tag, period and burst (nanoseconds)."""

    tag: int
    period: int  # T: nanoseconds per request (1e9 / rps, 60e9 / rpm)
    burst: int  # B*T: how far ahead of time the bucket may run


def tag_of(zone: bytes, client: str) -> int:
    """The 64-bit key of ``client`` in ``zone`` (never 0: 0 marks a free entry)."""
    digest = blake2b(zone + b"\x00" + client.encode("latin-1", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


def rate_key(tag: int, per_second: float, burst: int) -> RateKey:
    """``per_second`` requests a second (rpm / 60 for a per-minute limit), ``burst`` requests."""
    period = max(1, round(1e9 / per_second))
    return RateKey(tag, period, burst * period)


class LimitTable:
    """This worker's view of the replica's limit counters (see the module docstring)."""

    def __init__(self, segment: LimitSegment, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.segment = segment
        self.words = segment.words
        self.clock = clock
        ways = segment.ways
        self._ways = ways
        self._set_words = segment.workers * ways * _E
        self._mask = segment.sets - 1
        self._header = segment.header
        self._mine = segment.index * ways * _E
        self._incs = slice(8, 8 + segment.workers)
        self.incarnation = segment.take_column()
        self.full = 0  # requests refused because no entry could be had

    # ---- request rate ----------------------------------------------------------------

    def take(self, keys: Sequence[RateKey]) -> bool:
        """One request against every limit of ``keys``: accepted by all of them (and counted
        in each), or refused by one (and counted in none), like a chain of nginx limit_req."""
        now = self.clock()
        words = self.words
        plans: list[tuple[int, int, bool, RateKey, int]] = []
        for key in keys:
            base = self._base(key.tag)
            tags = words[base: base + self._set_words: _E].tolist()
            count, gmax = self._gcra(base, tags, key.tag)
            if count and gmax + (count + 1) * key.period - now > key.burst:
                return False
            at, existing = self._slot(base, tags, key.tag, now)
            if at == _NO_SLOT:
                self.full += 1
                return False
            plans.append((at, words[at + COUNT] if existing else 0, existing, key, count))
        for at, mine, existing, key, count in plans:
            g = now - (count + 1) * key.period
            if existing:
                words[at + GMAX] = max(words[at + GMAX], g)
                words[at + COUNT] = mine + 1
                words[at + LAST] = now
            else:
                self._claim(at, key.tag, KIND_RATE, key.period, now, count=1, gmax=g)
        return True

    def _gcra(self, base: int, tags: list[int], tag: int) -> tuple[int, int]:
        """(C, G) of ``tag`` over every worker's entries of the set at ``base`` (C = 0: none)."""
        words = self.words
        count = 0
        gmax = 0
        j = -1
        for _ in range(tags.count(tag)):
            j = tags.index(tag, j + 1)
            at = base + j * _E
            if words[at + KIND] != KIND_RATE:
                continue
            c, g = words[at + COUNT], words[at + GMAX]
            if words[at + TAG] != tag:
                continue  # rewritten for another key meanwhile (see _claim)
            if count == 0 or g > gmax:
                gmax = g
            count += c
        return count, gmax

    # ---- connections -------------------------------------------------------------------

    def acquire(self, tag: int, limit: int) -> int:
        """Count one more request in progress for ``tag``: the entry to ``release`` later,
        or 0 when that would exceed ``limit`` (or no entry could be had)."""
        now = self.clock()
        words = self.words
        base = self._base(tag)
        tags = words[base: base + self._set_words: _E].tolist()
        at, existing = self._slot(base, tags, tag, now)
        if at == _NO_SLOT:
            self.full += 1
            return 0
        if existing and words[at + INC] == self.incarnation:
            mine = words[at + CONNS]
            words[at + CONNS] = mine + 1
            words[at + LAST] = now
        else:
            mine = 0
            self._claim(at, tag, KIND_CONN, 0, now, conns=1)
        if self._in_progress(base, tag) > limit:
            words[at + CONNS] = mine
            return 0
        return at

    def release(self, at: int) -> None:
        """A request counted by ``acquire`` ended."""
        words = self.words
        left = words[at + CONNS] - 1
        words[at + CONNS] = max(0, left)

    def in_progress(self, tag: int) -> int:
        """Requests in progress for ``tag`` over every worker (tests, explain)."""
        return self._in_progress(self._base(tag), tag)

    def _in_progress(self, base: int, tag: int) -> int:
        words = self.words
        tags = words[base: base + self._set_words: _E].tolist()
        incs = words[self._incs].tolist()
        total = 0
        j = -1
        for _ in range(tags.count(tag)):
            j = tags.index(tag, j + 1)
            at = base + j * _E
            if words[at + INC] == incs[j // self._ways]:
                total += words[at + CONNS]
        return total

    # ---- entries -----------------------------------------------------------------------

    def _base(self, tag: int) -> int:
        return self._header + (tag & self._mask) * self._set_words

    def _slot(self, base: int, tags: list[int], tag: int, now: int) -> tuple[int, bool]:
        """(where this worker's entry for ``tag`` is, whether it holds ``tag`` already): a
        reusable entry of this worker when none holds it, or ``_NO_SLOT``."""
        words = self.words
        first = self._mine // _E
        free = dead = old = _NO_SLOT
        oldest = 0
        for j in range(first, first + self._ways):
            held = tags[j]
            at = base + j * _E
            if held == tag:
                return at, True
            if held == 0:
                if free == _NO_SLOT:
                    free = at
            elif dead == _NO_SLOT and self._dead(base, tags, at, now):
                dead = at
            elif (words[at + CONNS] == 0 or words[at + INC] != self.incarnation) and (
                    old == _NO_SLOT or words[at + LAST] < oldest):
                old, oldest = at, words[at + LAST]
        if free != _NO_SLOT:
            return free, False
        if dead != _NO_SLOT:
            return dead, False
        return old, False

    def _dead(self, base: int, tags: list[int], at: int, now: int) -> bool:
        """Whether the key of this worker's entry at ``at`` no longer matters (its loss
        changes nothing)."""
        words = self.words
        kind = words[at + KIND]
        if kind == KIND_CONN:
            return words[at + CONNS] == 0 or words[at + INC] != self.incarnation
        if kind == KIND_RATE:
            count, gmax = self._gcra(base, tags, words[at + TAG])
            return gmax + (count + 1) * words[at + PERIOD] <= now  # the bucket is empty
        return True

    def _claim(self, at: int, tag: int, kind: int, period: int, now: int, *,
               count: int = 0, gmax: int = 0, conns: int = 0) -> None:
        """(Re)write this worker's entry at ``at`` for ``tag``: the tag first cleared and
        written last, so a reader never takes the fields of the previous key for those of
        ``tag`` (readers check the tag again after reading fields)."""
        words = self.words
        words[at + TAG] = 0
        words[at + KIND] = kind
        words[at + INC] = self.incarnation
        words[at + COUNT] = count
        words[at + GMAX] = gmax
        words[at + CONNS] = conns
        words[at + PERIOD] = period
        words[at + LAST] = now
        words[at + TAG] = tag


__all__ = ["KIND_CONN", "KIND_RATE", "LimitTable", "RateKey", "rate_key", "tag_of"]
