"""The canary decision (sans-I/O): does this request go to the canary backend of its route?

ingress-nginx's ``route_to_alternative_balancer`` (rootfs/etc/nginx/lua/balancer.lua), in order:

1. affinity: a session cookie that names the main backend keeps the request there; one that
   names the canary's backend sends it to the canary (``affinity-canary-behavior: sticky``
   gives the canary the main Ingress's cookie, so who was served by the canary stays on it);
2. ``canary-by-header``: with ``-value``, that exact value means canary; else with
   ``-pattern``, a regex found in the value means canary; else ``always`` means canary and
   ``never`` means main.  Any other value (or none) goes on to 3;
3. ``canary-by-cookie``: ``always`` means canary, ``never`` means main, anything else goes on;
4. ``canary-weight``: a random draw of 1..``weight_total`` at most ``weight`` means canary.

``CanaryRule`` is compiled once per route; ``decide`` takes the request's header and cookie
lookups and a random draw, and returns the decision with the reason (``explain`` shows it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from fastingress.snapshot.schema import Balancing, Canary
from workers.affinity import backend_key


class Decision(NamedTuple):
    canary: bool
    reason: str
    chance: float = -1.0  # decided by weight: the canary's share of such requests (else -1)


class _Affinity(NamedTuple):
    cookie: str  # the session cookie's name
    key: str  # the backend key its value ends with


def _affinity(balancing: Balancing | None) -> _Affinity | None:
    if balancing is None or balancing.affinity is None:
        return None
    return _Affinity(balancing.affinity.name, backend_key(balancing.backend))


class CanaryRule:
    """One route's canary, compiled (see the module docstring)."""

    __slots__ = ("_canary_aff", "_main_aff", "_pattern", "canary", "header")

    def __init__(
        self, canary: Canary, main: Balancing | None = None, alternative: Balancing | None = None
    ) -> None:
        self.canary = canary
        self.header = canary.header.encode("latin-1")
        self._main_aff = _affinity(main)
        self._canary_aff = _affinity(alternative)
        self._pattern: re.Pattern[str] | None = None
        if canary.header and not canary.header_value and canary.header_pattern:
            try:
                self._pattern = re.compile(canary.header_pattern)
            except re.error:
                self._pattern = None  # translation refuses bad patterns; a hand-made snapshot: no match

    @staticmethod
    def _pinned(affinity: _Affinity, cookie: Callable[[str], str | None]) -> bool:
        value = cookie(affinity.cookie)
        return value is not None and value.partition("|")[2] == affinity.key

    def decide(
        self,
        header: Callable[[bytes], bytes | None],
        cookie: Callable[[str], str | None],
        draw: Callable[[int], int],
    ) -> Decision:
        """``draw(n)`` returns a random integer in 1..n (called only for a weight decision)."""
        c = self.canary
        main, alternative = self._main_aff, self._canary_aff
        if main is not None and self._pinned(main, cookie):
            return Decision(False, f"affinity: the cookie {main.cookie} names the main backend")
        if alternative is not None and self._pinned(alternative, cookie):
            return Decision(True, f"affinity: the cookie {alternative.cookie} names the canary")
        if c.header:
            raw = header(self.header)
            if raw is not None:
                value = raw.decode("latin-1")
                name = c.header
                if c.header_value:
                    if value == c.header_value:
                        return Decision(True, f"header {name}: {value} (canary-by-header-value)")
                elif c.header_pattern:
                    if self._pattern is not None and self._pattern.search(value):
                        return Decision(True, f"header {name}: {value} matches {c.header_pattern}")
                elif value == "always":
                    return Decision(True, f"header {name}: always")
                elif value == "never":
                    return Decision(False, f"header {name}: never")
        if c.cookie:
            jar = cookie(c.cookie)
            if jar == "always":
                return Decision(True, f"cookie {c.cookie}=always")
            if jar == "never":
                return Decision(False, f"cookie {c.cookie}=never")
        total = max(c.weight_total, 100)
        if c.weight <= 0:
            return Decision(False, "weight 0: no request by weight")
        if c.weight >= total:
            return Decision(True, f"weight {c.weight} of {total}: every request")
        chance = c.weight / total
        if draw(total) <= c.weight:
            return Decision(True, f"weight {c.weight} of {total}: drawn for the canary", chance)
        return Decision(False, f"weight {c.weight} of {total}: drawn for the main backend", chance)


__all__ = ["CanaryRule", "Decision"]
