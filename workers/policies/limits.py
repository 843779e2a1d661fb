"""``limit-rps``, ``limit-rpm``, ``limit-burst-multiplier``, ``limit-connections``,
``limit-allowlist`` and ``limit-rate``/``limit-rate-after`` (ingress-nginx's rate limiting).

What ingress-nginx renders (``internal/ingress/annotations/ratelimit``, ``buildRateLimit`` and
``buildRateLimitZones`` in its template), and what this does the same way:

* one zone per Ingress and kind of limit, keyed by ``$binary_remote_addr`` (the client
  address): every route of the Ingress shares the counters of a client;
* ``limit_req zone=... burst=<rate x multiplier> nodelay`` for ``limit-rps`` (``r/s``) and
  ``limit-rpm`` (``r/m``): a leaky bucket whose burst is served at once; a request over it is
  answered ``limit_req_status`` (``limit-req-status-code``, 503).  With both, a request must
  pass both and is counted in neither when one refuses it;
* ``limit_conn zone=... <n>``: requests in progress per client; over it, ``limit_conn_status``
  (``limit-conn-status-code``, 503).  nginx runs limit_req before limit_conn (its phase
  handlers run in reverse module order), so a request refused by limit_conn was counted by
  limit_req: so here;
* ``limit-allowlist`` (alias ``limit-whitelist``): ``geo`` maps those client addresses to an
  empty key, which nginx does not count: they pass every limit above (not ``limit-rate``);
* ``limit_rate <n>k`` / ``limit_rate_after <n>k``: the response is paced (``ctx.limit_rate``,
  done by the data paths: ``workers.pacing``).

Counted per replica over all its workers through shared memory (``workers.limiter``); the
worker compiles each route's limits once (zone keys, bursts, allowlist networks) and a
request pays a dict lookup for its client's keys, one shared-memory slice read per limit and
a few word writes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastingress.snapshot import limitshm
from fastingress.snapshot.schema import Limits, Route, Snapshot
from workers.heads import error_body
from workers.limiter import LimitTable, RateKey, rate_key, tag_of
from workers.policies.access import Ranges, client_address
from workers.policy import PREACCESS, Answer, Policy, RequestCtx

log = logging.getLogger("fastingress.worker")

_CACHE_MAX = 4096  # clients whose keys a route remembers
_CONN = "limits.conn"  # ctx.state: the entry a request holds in the connection count
_EXEMPT = None


class _Client:
    """The keys of one client on one route (computed once, then looked up)."""

    __slots__ = ("conn", "rates")

    def __init__(self, rates: tuple[RateKey, ...], conn: int) -> None:
        self.rates = rates
        self.conn = conn


def status_code(value: int) -> int:
    """nginx takes 400..599 for limit_req_status / limit_conn_status; anything else: 503."""
    return value if 400 <= value <= 599 else 503


def exempt(client_ip: str, allowlist: Ranges) -> bool:
    """Whether ``limit-allowlist`` exempts the client (nginx ``geo``: IPv4-mapped IPv6 as IPv4)."""
    if not allowlist:
        return False
    address = client_address(client_ip)
    return address is not None and allowlist.contains(address)


class Limiter:
    """The limits area for one worker process: compiles routes against its ``LimitTable``
    (the replica's shared segment), or against a table private to the process when none is
    given (``fastingress explain``, in-process tests)."""

    def __init__(self, table: LimitTable | None = None) -> None:
        self._table = table

    @property
    def table(self) -> LimitTable:
        if self._table is None:
            self._table = LimitTable(limitshm.private())
        return self._table

    def compile(self, route: Route, snapshot: Snapshot) -> Sequence[Policy]:
        limits = route.policy.limits
        if limits is None:
            return ()
        policies: list[Policy] = []
        counted = limits.rps > 0 or limits.rpm > 0 or limits.connections > 0
        if counted:
            policies += self._counted(route, limits, snapshot)
        if limits.rate > 0:
            policies.append(_paced(limits))
        return policies

    def _counted(self, route: Route, limits: Limits, snapshot: Snapshot) -> list[Policy]:
        table = self.table
        zone = (limits.zone or route.ingress or route.path).encode("utf-8", "replace")
        burst = max(0, limits.burst_multiplier)
        kinds: list[tuple[bytes, float, int]] = []  # (zone key, requests per second, burst)
        if limits.rps > 0:
            kinds.append((zone + b"\x00rps", float(limits.rps), limits.rps * burst))
        if limits.rpm > 0:
            kinds.append((zone + b"\x00rpm", limits.rpm / 60.0, limits.rpm * burst))
        kinds_with_period = [(k + b"\x00%d" % rate_key(0, r, b).period, r, b) for k, r, b in kinds]
        conn_zone = zone + b"\x00conn"
        conn_limit = limits.connections
        allowlist = Ranges(limits.allowlist)
        settings = snapshot.settings
        req_status = status_code(settings.limit_req_status)
        conn_status = status_code(settings.limit_conn_status)
        req_body = error_body(req_status)
        conn_body = error_body(conn_status)
        cache: dict[str, _Client | None] = {}

        def client(ip: str) -> _Client | None:
            if exempt(ip, allowlist):
                return _EXEMPT
            rates = tuple(rate_key(tag_of(k, ip), r, b) for k, r, b in kinds_with_period)
            return _Client(rates, tag_of(conn_zone, ip) if conn_limit else 0)

        def request(ctx: RequestCtx) -> Answer | None:
            ip = ctx.client_ip
            try:
                keys = cache[ip]
            except KeyError:
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                keys = cache[ip] = client(ip)
            if keys is None:
                return None
            if keys.rates and not table.take(keys.rates):
                return Answer(req_status, req_body)
            if keys.conn:
                held = table.acquire(keys.conn, conn_limit)
                if not held:
                    return Answer(conn_status, conn_body)
                ctx.state[_CONN] = held
            return None

        def done(ctx: RequestCtx) -> None:
            held = ctx.state.pop(_CONN, None)
            if isinstance(held, int):
                table.release(held)

        lines = _explain_counted(limits, zone.decode("utf-8", "replace"), req_status, conn_status)
        counted = Policy(PREACCESS, request=request, done=done if conn_limit else None, explain=lines[0])
        return [counted, *(Policy(PREACCESS, explain=line) for line in lines[1:])]


def _paced(limits: Limits) -> Policy:
    pace = (limits.rate, limits.rate_after)

    def no_splice(ctx: RequestCtx) -> None:
        ctx.limit_rate = pace
        ctx.splice_ok = False  # the body goes through the pacer, never the kernel's splice

    return Policy(PREACCESS, request=no_splice, explain=_explain_rate(limits))


def _explain_rate(limits: Limits) -> str:
    after = f" after the first {_size(limits.rate_after)}" if limits.rate_after else ""
    return f"limit-rate: {_size(limits.rate)}/s per request{after}, responses paced"


def _size(n: int) -> str:
    return f"{n // 1024} KB" if n % 1024 == 0 and n else f"{n} bytes"


def _explain_counted(limits: Limits, zone: str, req_status: int, conn_status: int) -> list[str]:
    """One ``fastingress explain`` line per annotation: ``name: what it does here``."""
    where = f"per client IP over all workers of this replica (zone {zone})"
    burst = max(0, limits.burst_multiplier)
    lines: list[str] = []
    if limits.rps > 0:
        lines.append(f"limit-rps: {limits.rps} requests a second, burst {limits.rps * burst}, {where}; "
                     f"beyond that {req_status}")
    if limits.rpm > 0:
        lines.append(f"limit-rpm: {limits.rpm} requests a minute, burst {limits.rpm * burst}, {where}; "
                     f"beyond that {req_status}")
    if limits.connections > 0:
        lines.append(f"limit-connections: {limits.connections} requests at once, {where}; "
                     f"beyond that {conn_status}")
    if limits.allowlist:
        lines.append("limit-allowlist: " + ", ".join(limits.allowlist) + " (not counted)")
    return lines


_DEFAULT = Limiter()


def compile(route: Route, snapshot: Snapshot) -> Sequence[Policy]:
    """The limits of ``route`` against a table private to this process (see ``Limiter``)."""
    return _DEFAULT.compile(route, snapshot)


__all__ = ["Limiter", "compile", "exempt", "status_code"]
