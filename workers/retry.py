"""Trying a failed request again on another endpoint (sans-I/O): nginx's ``proxy_next_upstream``.

Theory of operation
-------------------
``decide`` gives a ``Retry`` to a forwarded request whose route has ``proxy-next-upstream``,
affinity, hashing or EWMA (the data path then asks it instead of using the plain
``alternate``).  When an attempt fails, the data path classifies the failure and asks
``next(kind, ...)`` for the endpoint of the next attempt; None means "no": answer with what
the failure was (502, 504, or the upstream's own response for a status condition).  A retry
happens only when all of these hold:

* the failure is one of the route's conditions: ``error`` (a connect failed, or the connection
  broke before a response head), ``timeout`` (connect, send or read timed out before a
  response head), ``invalid_header`` (a malformed response head), ``http_NNN`` (the response
  status; that response is dropped, never relayed);
* nothing of the response went to the client (the data path only asks before that);
* no byte of the request body went upstream yet.  nginx buffers request bodies, so it can send
  them again; fastingress streams them, so a request with a body is retried only after a
  failure before any of its body was sent (a connect failure, a response head before the body);
* the request went nowhere yet, or its method is idempotent (not POST, LOCK, PATCH), or the
  conditions include ``non_idempotent``;
* fewer than ``tries`` attempts were made (0: no limit, up to ``MAX_TRIES``), and less than
  ``timeout`` seconds passed since the first one (0: no limit).

The next endpoint comes from ``choose(tried)``: the route's selection (affinity, hashing, EWMA,
round robin) told which endpoints failed already, so it prefers another one (round robin and
hashing move on; affinity keeps its endpoint unless session-cookie-change-on-failure, as
ingress-nginx does).  Without ``proxy-next-upstream`` the rules are fastingress's default: a
failed connect is tried once more on another endpoint.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from fastingress.snapshot.schema import NextUpstream

Address = tuple[str, int]
CONNECT_ERROR, CONNECT_TIMEOUT, ERROR, TIMEOUT, INVALID_HEADER, STATUS = range(6)
MAX_TRIES = 64  # tries 0 ("no limit") stops here
TRIED = "tried"  # RequestCtx.state key: the endpoints this request tried (select hooks read it)
NON_IDEMPOTENT = frozenset({b"POST", b"LOCK", b"PATCH"})
_KINDS = {
    "error": (CONNECT_ERROR, ERROR),
    "timeout": (CONNECT_TIMEOUT, TIMEOUT),
    "invalid_header": (INVALID_HEADER,),
}
_NAMES = {CONNECT_ERROR: "error", CONNECT_TIMEOUT: "timeout", ERROR: "error", TIMEOUT: "timeout",
          INVALID_HEADER: "invalid_header", STATUS: "status"}


class Rules(NamedTuple):
    kinds: frozenset[int]
    statuses: frozenset[int]
    non_idempotent: bool
    tries: int  # attempts in all; 0: MAX_TRIES
    timeout: float  # seconds; 0: none


DEFAULT = Rules(frozenset({CONNECT_ERROR, CONNECT_TIMEOUT}), frozenset(), False, 2, 0.0)


@functools.lru_cache(maxsize=256)
def rules_of(config: NextUpstream | None) -> Rules:
    """A route's rules, compiled once per distinct ``NextUpstream`` (None: the default)."""
    if config is None:
        return DEFAULT
    kinds: set[int] = set()
    statuses: set[int] = set()
    for token in config.conditions:
        if token in _KINDS:
            kinds.update(_KINDS[token])
        elif token.startswith("http_") and token[5:].isdigit():
            statuses.add(int(token[5:]))
    if not kinds and not statuses:  # "off"
        return Rules(frozenset(), frozenset(), False, 1, 0.0)
    tries = config.tries if 0 < config.tries <= MAX_TRIES else MAX_TRIES
    return Rules(frozenset(kinds), frozenset(statuses), "non_idempotent" in config.conditions, tries,
                 max(config.timeout, 0.0))


def kind_name(kind: int) -> str:
    return _NAMES.get(kind, "?")


class Retry:
    """One request's attempts (see the module docstring)."""

    __slots__ = ("attempts", "choose", "idempotent", "rules", "start", "statuses", "tried")

    def __init__(
        self,
        rules: Rules,
        choose: Callable[[tuple[Address, ...]], Address | None],
        first: Address,
        *,
        method: bytes,
        start: float,
    ) -> None:
        self.rules = rules
        self.statuses = rules.statuses  # the data path checks a response status against these
        self.choose = choose
        self.tried: tuple[Address, ...] = (first,)
        self.attempts = 1
        self.idempotent = method not in NON_IDEMPOTENT
        self.start = start

    def allowed(self, kind: int, *, status: int = 0, sent: bool, body_sent: bool, now: float) -> bool:
        rules = self.rules
        if kind == STATUS:
            if status not in rules.statuses:
                return False
        elif kind not in rules.kinds:
            return False
        if body_sent or (sent and not self.idempotent and not rules.non_idempotent):
            return False
        if self.attempts >= rules.tries:
            return False
        return not (rules.timeout and now - self.start >= rules.timeout)

    def next(
        self, kind: int, *, status: int = 0, sent: bool, body_sent: bool, now: float
    ) -> Address | None:
        """The endpoint of the next attempt after a failure of ``kind``, or None (see the
        module docstring); ``sent``: the request head went upstream; ``body_sent``: some of its
        body did."""
        if not self.allowed(kind, status=status, sent=sent, body_sent=body_sent, now=now):
            return None
        found = self.choose(self.tried)
        if found is None:
            return None
        self.attempts += 1
        self.tried = (*self.tried, found)
        return found


__all__ = [
    "CONNECT_ERROR", "CONNECT_TIMEOUT", "DEFAULT", "ERROR", "INVALID_HEADER", "MAX_TRIES", "STATUS",
    "TIMEOUT", "TRIED", "Retry", "Rules", "kind_name", "rules_of",
]
