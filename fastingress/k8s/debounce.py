"""Debounce for rebuilds: a short hold-off after the last change, capped by a maximum delay.

Pure: times go in, a deadline comes out.  A burst of changes keeps pushing the deadline by
``hold_off`` but never past ``max_delay`` after the first change of the burst, so a
steady stream of changes still produces a rebuild at least every ``max_delay`` seconds,
and 1,000 changes in a burst make a handful of snapshots, not 1,000.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Debouncer:
    hold_off: float
    max_delay: float
    first: float | None = None  # time of the first change not yet built
    last: float | None = None  # time of the latest change not yet built

    def poke(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now

    @property
    def pending(self) -> bool:
        return self.first is not None

    def deadline(self) -> float | None:
        """When to build (None: nothing pending)."""
        if self.first is None or self.last is None:
            return None
        return min(self.last + self.hold_off, self.first + self.max_delay)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def take(self) -> float | None:
        """Start a build: forget the pending changes; return when the first of them happened."""
        first = self.first
        self.first = self.last = None
        return first
