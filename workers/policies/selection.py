"""Selection policies: which backend (canary) and which endpoint (affinity, hashing, EWMA)
serve a request of a route.

* ``RoutePolicy.canary``: a ``backend`` hook sends the request to the canary's upstream when
  ``workers.canary`` says so;
* an upstream of the route (main or canary) with ``Balancing``: a ``select`` hook picks its
  endpoint (``workers.affinity``: cookie affinity; ``workers.chash``: ``upstream-hash-by``) and
  a ``response`` hook sets the affinity cookie the choice made and measures EWMA attempts.

The endpoints a request tried already (``workers.retry.TRIED`` in ``ctx.state``) are passed on,
so a retry prefers another endpoint.  A route without any of these compiles to nothing.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

from fastingress.snapshot.schema import Forward, Route, Snapshot, Upstream
from workers.affinity import Sticky, set_cookie
from workers.balance import observe_response
from workers.canary import CanaryRule
from workers.chash import Hashed
from workers.hashkey import compile_key
from workers.policy import CONTENT, REWRITE, Policy, RequestCtx
from workers.retry import TRIED

Address = tuple[str, int]
COOKIE_STATE = "affinity-cookie"  # RequestCtx.state key: the Set-Cookie value to send


class _ByName:
    """Upstreams of a snapshot by name, built once per snapshot (every route of a table is
    compiled against the same one)."""

    __slots__ = ("_snapshot", "_upstreams")

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._upstreams: dict[str, Upstream] = {}

    def get(self, snapshot: Snapshot, name: str) -> Upstream | None:
        if snapshot is not self._snapshot:
            self._snapshot = snapshot
            self._upstreams = {u.name: u for u in snapshot.upstreams}
        return self._upstreams.get(name)


_UPSTREAMS = _ByName()


def _cookie_path(route: Route) -> str:
    """nginx's ``$location_path`` (the path as written), or / for a regex route."""
    return "/" if route.regex is not None else route.path


def _sticky_select(sticky: Sticky, path: str) -> object:
    def select(ctx: RequestCtx, addrs: tuple[Address, ...]) -> Address:
        tried = ctx.state.get(TRIED, ())
        found, value = sticky.select(ctx.cookie, addrs, tried)  # type: ignore[arg-type]
        if value is not None:
            ua = ctx.header(b"user-agent")
            ctx.state[COOKIE_STATE] = set_cookie(
                sticky.cookie, value, path=path, https=ctx.tls,
                user_agent=ua.decode("latin-1") if ua is not None else None, now=time.time(),
            )
        return found

    return select


def _selectors(
    route: Route, upstreams: Sequence[Upstream], rng: random.Random
) -> tuple[dict[str, object], bool]:
    """Per upstream name, its endpoint choice; and whether any upstream uses EWMA."""
    selectors: dict[str, object] = {}
    ewma = False
    for upstream in upstreams:
        balancing = upstream.balancing
        if balancing is None:
            continue
        if balancing.affinity is not None:
            selectors[upstream.name] = _sticky_select(Sticky(balancing.affinity, balancing.backend, rng),
                                                      _cookie_path(route))
        elif balancing.hash_by:
            key = compile_key(balancing.hash_by)
            if key is not None:
                hashed = Hashed(key, balancing.hash_subset_size, rng)
                selectors[upstream.name] = lambda ctx, addrs, h=hashed: h.select(
                    ctx, addrs, ctx.state.get(TRIED, ()))
        elif balancing.load_balance == "ewma":
            ewma = True
    return selectors, ewma


def _explain_balancing(upstream: Upstream) -> str:
    balancing = upstream.balancing
    if balancing is None:
        return ""
    if balancing.affinity is not None:
        c = balancing.affinity
        return f"{upstream.name}: affinity cookie {c.name} ({c.mode}" + (
            ", change on failure)" if c.change_on_failure else ")")
    if balancing.hash_by:
        subset = f", subsets of {balancing.hash_subset_size}" if balancing.hash_subset_size else ""
        return f"{upstream.name}: consistent hashing on {balancing.hash_by}{subset}"
    return f"{upstream.name}: load-balance {balancing.load_balance}"


def compile(route: Route, snapshot: Snapshot) -> Sequence[Policy]:
    action = route.action
    if not isinstance(action, Forward):
        return ()
    canary = route.policy.canary
    names = [b.upstream for b in action.backends]
    if canary is not None and canary.upstream:
        names.append(canary.upstream)
    upstreams = [u for u in (_UPSTREAMS.get(snapshot, n) for n in names) if u is not None]
    if canary is None and all(u.balancing is None for u in upstreams):
        return ()
    rng = random.Random()
    policies: list[Policy] = []
    if canary is not None and canary.upstream:
        main = _UPSTREAMS.get(snapshot, action.backends[0].upstream)
        alternative = _UPSTREAMS.get(snapshot, canary.upstream)
        rule = CanaryRule(
            canary, main.balancing if main else None, alternative.balancing if alternative else None
        )
        name = canary.upstream
        draw = rng.randint

        def backend(ctx: RequestCtx, forward: Forward) -> str | None:
            decision = rule.decide(ctx.header, ctx.cookie, lambda n: draw(1, n))
            ctx.state["canary"] = decision.reason
            return name if decision.canary else None

        policies.append(
            Policy(REWRITE, backend=backend, explain=f"canary {canary.ingress}: {canary.upstream}")
        )
    selectors, ewma = _selectors(route, upstreams, rng)
    if selectors or ewma:
        policies.append(_endpoint_policy(selectors, ewma, [_explain_balancing(u) for u in upstreams]))
    return policies


def _endpoint_policy(selectors: dict[str, object], ewma: bool, explain: list[str]) -> Policy:
    def select(
        ctx: RequestCtx, upstream: Upstream, addrs: tuple[Address, ...]
    ) -> tuple[Address, None] | None:
        chooser = selectors.get(upstream.name)
        if chooser is None:
            return None
        return chooser(ctx, addrs), None  # type: ignore[operator]

    def response(ctx: RequestCtx, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        value = ctx.state.pop(COOKIE_STATE, None)
        if isinstance(value, bytes):
            headers.append((b"set-cookie", value))
        if ewma:
            observe_response(ctx, status)

    return Policy(CONTENT, select=select if selectors else None, response=response,
                  explain="; ".join(e for e in explain if e))


__all__ = ["COOKIE_STATE", "compile"]
