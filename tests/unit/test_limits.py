"""Rate and connection limits (issue 9, area limits), sans-I/O with fake clocks: the shared
segment's format, the lock-free counters of ``workers.limiter`` against a reference model of
nginx's limit_req, the pacing account of limit-rate, the annotation parsers and the compiled
policy.  Several ``LimitTable`` views of one segment file stand for several worker processes
(each maps the file, as a worker does)."""

from __future__ import annotations

import os
import struct
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastingress.errors import SnapshotError
from fastingress.explain import ExplainRequest, explain
from fastingress.manifests import load_manifests
from fastingress.snapshot import limitshm
from fastingress.snapshot.schema import (
    Forward,
    GlobalSettings,
    Limits,
    Route,
    RoutePolicy,
    Snapshot,
    WeightedBackend,
)
from fastingress.translate import TranslateOptions, translate
from fastingress.translate.annotations import parse_annotations
from fastingress.translate.policy_access import parse_cidrs
from fastingress.translate.policy_limits import limits_policy, parse_kilobytes, parse_limit
from tests.conftest import REPO
from workers.limiter import LimitTable, rate_key, tag_of
from workers.pacing import Pacer
from workers.policies import COMPILERS, worker_compilers
from workers.policies import limits as limits_area
from workers.policy import Answer, RequestCtx

SECOND = 1_000_000_000


class Clock:
    """A fake monotonic_ns shared by every table of a test."""

    def __init__(self, start: int = 1_000 * SECOND) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * SECOND)


def tables(tmp_path: Path, workers: int, clock: Clock, **shape: int) -> list[LimitTable]:
    path = limitshm.create(str(tmp_path / "limits"), workers, **shape)
    return [LimitTable(limitshm.attach(path, i), clock) for i in range(workers)]


# -- the segment -------------------------------------------------------------------------


def test_segment_is_private_sparse_and_shared_between_mappings(tmp_path: Path) -> None:
    path = limitshm.create(str(tmp_path / "limits"), 4)
    st_ = os.stat(path)
    assert st_.st_mode & 0o777 == 0o600
    assert st_.st_size == limitshm.segment_size(4, limitshm.DEFAULT_SETS, limitshm.DEFAULT_WAYS)
    assert st_.st_blocks * 512 < st_.st_size // 100  # sparse: nothing allocated yet
    a, b = limitshm.attach(path, 0), limitshm.attach(path, 3)
    a.words[a.header + 5] = 42
    assert b.words[b.header + 5] == 42  # one memory, two mappings
    assert a.take_column() == 1 and a.take_column() == 2 and b.take_column() == 1
    a.close()
    b.close()


def test_segment_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    path = limitshm.create(str(tmp_path / "limits"), 2)
    with pytest.raises(SnapshotError, match="worker index 2 is not below its 2 workers"):
        limitshm.attach(path, 2)
    with open(path, "r+b") as f:
        f.write(struct.pack("=q", 7))
    with pytest.raises(SnapshotError, match="another format"):
        limitshm.attach(path, 0)
    path = limitshm.create(str(tmp_path / "limits"), 2)
    os.truncate(path, 4096)
    with pytest.raises(SnapshotError, match="not the"):
        limitshm.attach(path, 0)
    with pytest.raises(SnapshotError, match="cannot open"):
        limitshm.attach(str(tmp_path / "missing"), 0)
    with pytest.raises(SnapshotError, match="power of two"):
        limitshm.create(str(tmp_path / "x"), 2, sets=3)


# -- request rate: nginx's limit_req, shared by workers -------------------------------------


class NginxLimitReq:
    """nginx's limit_req (ngx_http_limit_req_module) with nodelay, in exact arithmetic:
    per key the excess ``x`` and the time of the last accepted request; a request makes the
    excess ``max(0, x - rate*dt + 1)`` and is refused when that exceeds the burst."""

    def __init__(self, per_second: Fraction, burst: int) -> None:
        self.rate = per_second
        self.burst = burst
        self.state: tuple[Fraction, int] | None = None

    def request(self, now: int) -> bool:
        if self.state is None:
            self.state = (Fraction(0), now)
            return True
        excess, last = self.state
        excess = max(Fraction(0), excess - self.rate * Fraction(now - last, SECOND) + 1)
        if excess > self.burst:
            return False
        self.state = (excess, now)
        return True


@settings(max_examples=150, deadline=None)
@given(
    per_second=st.sampled_from([Fraction(n, d) for n, d in ((1, 1), (2, 1), (5, 1), (10, 1), (1, 6))]),
    burst=st.integers(0, 6),
    steps=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 400_000_000)), min_size=1, max_size=60),
)
def test_the_shared_bucket_decides_like_nginx(
    tmp_path_factory: pytest.TempPathFactory, per_second: Fraction, burst: int, steps: list[tuple[int, int]]
) -> None:
    """Requests of one client spread over 4 workers, each worker counting in its own entries:
    every decision is nginx's for one bucket (the limit holds per replica, not per worker)."""
    clock = Clock()
    workers = tables(tmp_path_factory.mktemp("seg"), 4, clock, sets=16)
    reference = NginxLimitReq(per_second, burst)
    tag = tag_of(b"default/app\x00rps", "192.0.2.7")
    key = rate_key(tag, float(per_second), burst)
    assert key.period * per_second == SECOND  # the sampled rates have exact periods
    for worker, gap in steps:
        clock.now += gap
        assert workers[worker].take((key,)) == reference.request(clock.now)


def test_limit_rps_burst_then_the_rate(tmp_path: Path) -> None:
    clock = Clock()
    a, b = tables(tmp_path, 2, clock)
    key = rate_key(tag_of(b"z", "1.2.3.4"), 2.0, 3)  # limit-rps 2, burst 3
    accepted = [(a if i % 2 else b).take((key,)) for i in range(10)]
    assert accepted == [True] * 4 + [False] * 6  # the first request and the burst, over both workers
    clock.advance(0.5)
    assert a.take((key,)) and not b.take((key,))  # then one every 1/rps seconds
    other = rate_key(tag_of(b"z", "1.2.3.5"), 2.0, 3)
    assert b.take((other,))  # another client has a bucket of its own


def test_rps_and_rpm_together_are_all_or_nothing(tmp_path: Path) -> None:
    clock = Clock()
    (t,) = tables(tmp_path, 1, clock)
    rps = rate_key(tag_of(b"z\x00rps", "c"), 10.0, 0)
    rpm = rate_key(tag_of(b"z\x00rpm", "c"), 1 / 6, 2)  # 10 a minute, burst 2
    results = []
    for _ in range(5):
        results.append(t.take((rps, rpm)))
        clock.advance(0.2)  # well within limit-rps
    assert results == [True, True, True, False, False]  # limit-rpm refuses the 4th...
    assert t.take((rps,))  # ...and a refused request was not counted by limit-rps either


def test_a_worker_restart_keeps_the_rate_state(tmp_path: Path) -> None:
    clock = Clock()
    path = limitshm.create(str(tmp_path / "limits"), 2)
    first = LimitTable(limitshm.attach(path, 1), clock)
    key = rate_key(tag_of(b"z", "c"), 1.0, 1)
    assert first.take((key,)) and first.take((key,)) and not first.take((key,))
    again = LimitTable(limitshm.attach(path, 1), clock)  # the slot's next process
    assert not again.take((key,))
    clock.advance(1.0)
    assert again.take((key,))


# -- connections ----------------------------------------------------------------------------


def test_connections_are_counted_over_every_worker(tmp_path: Path) -> None:
    clock = Clock()
    a, b, c = tables(tmp_path, 3, clock)
    tag = tag_of(b"z\x00conn", "10.0.0.1")
    held = [a.acquire(tag, 3), b.acquire(tag, 3), c.acquire(tag, 3)]
    assert all(held)
    assert a.acquire(tag, 3) == 0 and c.acquire(tag, 3) == 0  # a 4th anywhere is refused
    assert a.in_progress(tag) == 3  # ...and the refusals took themselves back
    b.release(held[1])
    again = a.acquire(tag, 3)
    assert again and a.in_progress(tag) == 3
    a.release(again)
    a.release(held[0])
    c.release(held[2])
    assert b.in_progress(tag) == 0
    assert a.acquire(tag_of(b"z\x00conn", "10.0.0.2"), 1)  # another client


def test_counts_of_a_dead_worker_are_forgotten(tmp_path: Path) -> None:
    clock = Clock()
    path = limitshm.create(str(tmp_path / "limits"), 2)
    dead = LimitTable(limitshm.attach(path, 0), clock)
    other = LimitTable(limitshm.attach(path, 1), clock)
    tag = tag_of(b"z", "c")
    assert dead.acquire(tag, 2) and dead.acquire(tag, 2)
    assert other.acquire(tag, 2) == 0  # full
    LimitTable(limitshm.attach(path, 0), clock)  # slot 0's next process takes the column
    assert other.in_progress(tag) == 0
    assert other.acquire(tag, 2)


def test_a_full_set_reuses_drained_entries_and_refuses_rather_than_forget_requests(tmp_path: Path) -> None:
    clock = Clock()
    (t,) = tables(tmp_path, 1, clock, sets=1, ways=1)  # room for one key
    first = t.acquire(tag_of(b"z", "a"), 5)
    assert first
    assert t.acquire(tag_of(b"z", "b"), 5) == 0  # "a" has a request in progress: no room
    assert t.full == 1
    t.release(first)
    assert t.acquire(tag_of(b"z", "b"), 5)  # "a" holds nothing any more
    (tmp_path / "r").mkdir()
    (r,) = tables(tmp_path / "r", 1, clock, sets=1, ways=1)
    slow = rate_key(tag_of(b"z", "a"), 1.0, 0)
    assert r.take((slow,)) and not r.take((slow,))
    assert r.take((rate_key(tag_of(b"z", "b"), 1.0, 0),))  # the least recently used goes, as in nginx
    clock.advance(1.0)
    assert r.take((slow,))  # "a" starts over


def test_tags_are_the_same_in_every_process() -> None:
    assert tag_of(b"default/app\x00rps", "127.0.0.1") == tag_of(b"default/app\x00rps", "127.0.0.1")
    assert tag_of(b"default/app\x00rps", "127.0.0.1") != tag_of(b"default/app\x00rps", "127.0.0.2")
    assert tag_of(b"", "") != 0


# -- limit-rate -----------------------------------------------------------------------------


def test_pacer_lets_one_second_go_then_the_rate() -> None:
    pacer = Pacer(rate=10_000, after=0, start=100.0)
    assert pacer.quantum == 512
    assert pacer.chunk(100.0, 50_000) == 10_000  # nginx: rate x (elapsed + 1) at once
    pacer.did_send(10_000)
    assert pacer.chunk(100.0, 40_000) == 0
    wait = pacer.wait(100.0, 40_000)
    assert 0.0512 <= wait <= 0.0518  # until a quantum (512 bytes) is allowed
    first = pacer.chunk(100.0 + wait, 40_000)
    assert 512 <= first <= 520  # (the wait rounds up by half a millisecond)
    pacer.did_send(first)
    assert pacer.chunk(101.0, 40_000) == 10_000 - first  # one more second: the rate's worth
    late = Pacer(rate=10_000, after=0, start=100.0)
    assert late.chunk(103.0, 100_000) == 40_000  # time spent before the answer counts (nginx too)


def test_pacer_after_and_small_tails() -> None:
    pacer = Pacer(rate=1024, after=4096, start=0.0)
    assert pacer.chunk(0.0, 100_000) == 4096 + 1024
    pacer.did_send(5120)
    assert pacer.chunk(0.05, 100) == 0
    assert pacer.wait(0.0, 100) == pytest.approx(100 / 1024, abs=0.001)  # a short tail waits for itself only
    assert pacer.chunk(0.001 + 100 / 1024, 100) == 100


# -- annotations ----------------------------------------------------------------------------


def test_parsers() -> None:
    assert parse_limit("10") == 10 and parse_limit(" +5 ") == 5 and parse_limit("0") == 0
    cases = (("10r/s", "write 10"), ("-1", "0 means no limit"), ("ten", "whole number"), ("1.5", "whole"))
    for bad, hint in cases:
        with pytest.raises(ValueError, match=hint):
            parse_limit(bad)
    assert parse_kilobytes("100") == 102400
    assert parse_cidrs("192.168.1.7, 10.0.0.1/8,2001:db8::/32 ") == (
        "10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32")
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not an IP address or CIDR"):
        parse_cidrs("10.0.0.0/33")


def test_limits_of_an_ingress() -> None:
    prefix = "nginx.ingress.kubernetes.io/"
    parsed, findings = parse_annotations({
        prefix + "limit-rpm": "30", prefix + "limit-whitelist": "10.0.0.0/8", prefix + "limit-rate": "8",
    })
    assert findings == []
    limits = limits_policy(parsed, "ns/app", GlobalSettings())
    assert limits == Limits(zone="ns/app", rpm=30, allowlist=("10.0.0.0/8",), rate=8192)
    both, _ = parse_annotations({prefix + "limit-allowlist": "1.2.3.4", prefix + "limit-whitelist": "5.6.7.8",
                                 prefix + "limit-connections": "1"})
    assert limits_policy(both, "ns/a", GlobalSettings()) == Limits(zone="ns/a", connections=1,
                                                                     allowlist=("1.2.3.4/32",))
    none, _ = parse_annotations({prefix + "limit-rps": "0", prefix + "limit-burst-multiplier": "3"})
    assert limits_policy(none, "ns/a", GlobalSettings()) is None
    configmap = GlobalSettings(limit_rate=4096, limit_rate_after=100)
    assert limits_policy(none, "ns/a", configmap) == Limits(rate=4096, rate_after=100)
    off, _ = parse_annotations({prefix + "limit-rate": "0"})
    assert limits_policy(off, "ns/a", configmap) is None
    bad, findings = parse_annotations({prefix + "limit-connections": "many"})
    assert bad.closed and findings[0].severity == "error"  # a guard: fail closed
    bad, findings = parse_annotations({prefix + "limit-rate": "fast"})
    assert not bad.closed and bad.limit_rate is None and findings[0].severity == "warning"


# -- the compiled policy --------------------------------------------------------------------


def route(limits: Limits | None, ingress: str = "default/app") -> Route:
    return Route("/", "Prefix", Forward((WeightedBackend("u"),)), ingress=ingress,
                 policy=RoutePolicy(limits=limits))


def ctx_for(r: Route, client_ip: str) -> RequestCtx:
    return RequestCtx(method=b"GET", target=b"/", path="/", query="", host=b"a.test", headers=[],
                      client_ip=client_ip, tls=False, route=r, vhost=None, now=0.0)


def run(policies: list[object], ctx: RequestCtx) -> Answer | None:
    for p in policies:
        assert hasattr(p, "request")
        hook = p.request  # type: ignore[attr-defined]
        result = hook(ctx) if hook is not None else None
        if result is not None:
            assert isinstance(result, Answer)
            return result
    return None


def test_the_policy_limits_rate_and_connections_per_client(tmp_path: Path) -> None:
    clock = Clock()
    table, other = tables(tmp_path, 2, clock)
    limiter, limiter2 = limits_area.Limiter(table), limits_area.Limiter(other)
    limits = Limits(zone="default/app", rps=1, burst_multiplier=2, connections=2,
                    allowlist=("10.0.0.0/8",), rate=2048, rate_after=10)
    snapshot = Snapshot(settings=GlobalSettings(limit_req_status=429, limit_conn_status=599))
    r = route(limits)
    compiled = list(limiter.compile(r, snapshot))
    compiled2 = list(limiter2.compile(route(limits, "default/app"), snapshot))  # the other worker
    where = "per client IP over all workers of this replica (zone default/app)"
    assert [p.explain for p in compiled] == [
        f"limit-rps: 1 requests a second, burst 2, {where}; beyond that 429",
        f"limit-connections: 2 requests at once, {where}; beyond that 599",
        "limit-allowlist: 10.0.0.0/8 (not counted)",
        "limit-rate: 2 KB/s per request after the first 10 bytes, responses paced",
    ]
    ctxs = [ctx_for(r, "192.0.2.1") for _ in range(4)]
    assert run(compiled, ctxs[0]) is None and ctxs[0].limit_rate == (2048, 10)
    assert run(compiled2, ctxs[1]) is None
    refused = run(compiled, ctxs[2])
    assert refused is not None and refused.status == 599 and refused.body == b"599 \n"  # limit-connections
    assert compiled[0].done is not None
    for c in ctxs:
        compiled[0].done(c)  # every request ends: the refused one held nothing
    assert table.in_progress(tag_of(b"default/app\x00conn", "192.0.2.1")) == 0
    refused = run(compiled2, ctxs[3])  # the 4th request in the same instant: over rps 1 + burst 2
    assert refused is not None and refused.status == 429 and refused.body.startswith(b"429 Too Many Requests")
    for _ in range(10):  # the allowlist is counted by nothing
        assert run(compiled, ctx_for(r, "10.1.2.3")) is None
    assert run(compiled, ctx_for(r, "::ffff:10.1.2.3")) is None  # (IPv4-mapped IPv6 too)
    assert run(compiled, ctx_for(r, "192.0.2.2")) is None  # another client


def test_routes_without_limits_compile_to_nothing_and_workers_get_their_table(tmp_path: Path) -> None:
    assert limits_area.compile(route(None), Snapshot()) == ()
    assert limits_area.compile(route(Limits(zone="a")), Snapshot()) == []  # nothing to count
    limiter = limits_area.Limiter(LimitTable(limitshm.private()))
    mine = worker_compilers(limiter)
    assert len(mine) == len(COMPILERS) and limits_area.compile not in mine
    assert limits_area.status_code(200) == 503 and limits_area.status_code(429) == 429


def test_explain_lists_the_limits_of_the_golden_case() -> None:
    objects, _ = load_manifests([str(REPO / "tests" / "golden" / "limits.yaml")])
    snapshot = translate(objects, TranslateOptions()).snapshot
    found = explain(snapshot, ExplainRequest("http://api.example.com/v2/x"))
    lines = {p.name: p.value for p in found.policies}
    assert lines["limit-rps"].startswith("10 requests a second, burst 20, per client IP over all workers")
    assert "(zone shop/api)" in lines["limit-connections"]
    assert lines["limit-allowlist"] == "10.0.0.0/8, 192.168.1.7/32, 2001:db8::/32 (not counted)"
    assert lines["limit-rate"] == "100 KB/s per request after the first 512 KB, responses paced"
    plain = explain(snapshot, ExplainRequest("http://global.example.com/"))
    assert not any(p.name.startswith("limit") for p in plain.policies)
