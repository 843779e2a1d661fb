"""Upstream pool (LIFO, idle timeout, limits), DNS cache and load balancing."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from fastingress.errors import NoEndpoint, UpstreamFailed, UpstreamTimeout
from fastingress.snapshot.schema import Endpoint, Forward, Upstream, WeightedBackend
from workers.pool import Balancer, Pool

KEY = ("10.0.0.1", 80)


class FakeConnect:
    def __init__(self) -> None:
        self.calls = 0
        self.fail: BaseException | None = None
        self.hang = False

    async def __call__(self, host: str, port: int, timeout: float) -> trio.abc.Stream:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        if self.hang:
            await trio.sleep_forever()
        ours, _theirs = trio.testing.memory_stream_pair()
        return ours


async def test_release_and_take_is_lifo() -> None:
    pool = Pool(FakeConnect())
    a = await pool.connect(KEY, 1.0)
    b = await pool.connect(KEY, 1.0)
    await pool.release(a, 10, 100)
    await pool.release(b, 10, 100)
    assert await pool.take(KEY, 60.0) is b
    assert await pool.take(KEY, 60.0) is a
    assert await pool.take(KEY, 60.0) is None


async def test_idle_limit_and_request_limit() -> None:
    pool = Pool(FakeConnect())
    conns = [await pool.connect(KEY, 1.0) for _ in range(3)]
    for c in conns:
        await pool.release(c, 2, 100)
    assert pool.idle_count(KEY) == 2
    worn = await pool.connect(KEY, 1.0)
    worn.requests = 100
    await pool.release(worn, 10, 100)
    assert pool.idle_count(KEY) == 2


async def test_expired_idle_connections_are_dropped(mock_clock: trio.testing.MockClock) -> None:
    pool = Pool(FakeConnect())
    old = await pool.connect(KEY, 1.0)
    await pool.release(old, 10, 100)
    mock_clock.jump(30)
    fresh = await pool.connect(KEY, 1.0)
    await pool.release(fresh, 10, 100)
    mock_clock.jump(31)  # old: 61 s idle, fresh: 31 s
    await pool.reap(60.0)
    assert pool.idle_count(KEY) == 1
    mock_clock.jump(30)
    assert await pool.take(KEY, 60.0) is None  # fresh is now 61 s idle too
    assert pool.idle_count(KEY) == 0


async def test_connect_errors_map_to_our_errors(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    connect = FakeConnect()
    pool = Pool(connect)
    connect.fail = ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(UpstreamFailed) as failed:
        await pool.connect(KEY, 1.0)
    assert failed.value.status_hint == 502
    connect.fail = None
    connect.hang = True
    with pytest.raises(UpstreamTimeout) as timed_out:
        await pool.connect(KEY, 3.0)
    assert timed_out.value.status_hint == 504
    assert trio.current_time() == pytest.approx(3.0)


async def test_dns_cache_honours_ttl(mock_clock: trio.testing.MockClock) -> None:
    calls: list[str] = []

    async def resolve(name: str, port: int) -> tuple[str, ...]:
        calls.append(name)
        return ("10.1.1.1", "10.1.1.2")

    pool = Pool(FakeConnect(), resolve)
    up = Upstream(name="ext", external_name="api.example", port=443, dns_ttl=10.0)
    assert await pool.resolve(up) == ("10.1.1.1", "10.1.1.2")
    mock_clock.jump(9)
    await pool.resolve(up)
    assert calls == ["api.example"]
    mock_clock.jump(2)
    await pool.resolve(up)
    assert calls == ["api.example", "api.example"]


async def test_resolve_localhost_for_real() -> None:
    pool = Pool(FakeConnect())
    addrs = await pool.resolve(Upstream(name="ext", external_name="localhost", port=80))
    assert "127.0.0.1" in addrs or "::1" in addrs


def test_smooth_weighted_round_robin_interleaves() -> None:
    balancer = Balancer()
    action = Forward((WeightedBackend("a", 5), WeightedBackend("b", 1), WeightedBackend("c", 1)))
    picks = [balancer.pick_backend(action) for _ in range(7)]
    # nginx's smooth WRR for 5/1/1: a a b a c a a
    assert picks == ["a", "a", "b", "a", "c", "a", "a"]


def test_zero_weights() -> None:
    balancer = Balancer()
    assert {balancer.pick_backend(Forward((WeightedBackend("a", 0), WeightedBackend("b", 3))))
            for _ in range(5)} == {"b"}
    with pytest.raises(NoEndpoint):
        balancer.pick_backend(Forward((WeightedBackend("a", 0), WeightedBackend("b", 0))))


def test_round_robin_pick_and_alternate() -> None:
    balancer = Balancer()
    up = Upstream(name="u", endpoints=(Endpoint("1.1.1.1", 80), Endpoint("2.2.2.2", 80, ready=False),
                                       Endpoint("3.3.3.3", 80)))
    ready = balancer.ready(up)
    assert ready == (("1.1.1.1", 80), ("3.3.3.3", 80))
    assert balancer.pick("u", ready) == (("1.1.1.1", 80), ("3.3.3.3", 80))
    assert balancer.pick("u", ready) == (("3.3.3.3", 80), ("1.1.1.1", 80))
    assert balancer.pick("one", (("9.9.9.9", 1),)) == (("9.9.9.9", 1), None)


async def test_removed_endpoints_lose_their_idle_connections() -> None:
    """Issue 3: when a snapshot removes an endpoint, its idle pooled connections are closed
    at once, and a connection busy at that moment is closed on release, not pooled."""
    other = ("10.0.0.2", 80)
    pool = Pool(FakeConnect())
    idle = await pool.connect(KEY, 1.0)
    busy = await pool.connect(KEY, 1.0)
    kept = await pool.connect(other, 1.0)
    await pool.release(idle, 10, 100)
    await pool.release(kept, 10, 100)
    pool.retire(frozenset({KEY}))
    await pool.prune()
    assert pool.idle_count(KEY) == 0
    assert pool.idle_count(other) == 1
    with pytest.raises(trio.ClosedResourceError):
        await idle.stream.send_all(b"x")
    await pool.release(busy, 10, 100)
    assert pool.idle_count(KEY) == 0
    # The endpoint comes back in a later snapshot: pooled again.
    pool.retire(frozenset())
    again = await pool.connect(KEY, 1.0)
    await pool.release(again, 10, 100)
    assert pool.idle_count(KEY) == 1


async def test_worker_install_retires_endpoints_that_left_the_snapshot() -> None:
    from fastingress.snapshot.schema import Snapshot
    from workers.routing import RouteTable
    from workers.state import Worker

    def table(*ports: int) -> RouteTable:
        endpoints = tuple(Endpoint("10.0.0.1", p) for p in ports)
        return RouteTable.compile(Snapshot(upstreams=(Upstream("u", endpoints),)))

    pool = Pool(FakeConnect())
    worker = Worker(pool)
    worker.install(table(80, 81), 1)
    conn = await pool.connect(KEY, 1.0)
    await pool.release(conn, 10, 100)
    worker.install(table(81), 2)
    await pool.prune()
    assert pool.idle_count(KEY) == 0
