"""The proxy data path with real h11 peers on both sides, in each of its three shapes.

Every test runs against the reference Session path (h11 codec, memory streams), the Session
path with the llhttp codec, and the event-driven core over real sockets on 127.0.0.1 (see
``tests.support.worker_harness``).  A test that only holds for some of them says so with
``@pytest.mark.modes(...)``.
"""

from __future__ import annotations

import errno
import logging
import os
import re

import h11
import pytest
import trio
import trio.testing

from fastingress.snapshot.schema import Endpoint, GlobalSettings, Upstream, WeightedBackend
from tests.support import worker_harness
from tests.support.worker_harness import (
    APP,
    CLIENT_IP,
    EchoUpstream,
    Harness,
    Recorded,
    Reply,
    make_snapshot,
)

pytestmark = pytest.mark.timeout(30)

MODES = ("h11", "llhttp-session", "core")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("modes")
    metafunc.parametrize("harness_mode", marker.args if marker is not None else MODES, indirect=True)


@pytest.fixture(autouse=True)
def harness_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(worker_harness, "MODE", request.param)
    return str(request.param)


async def test_keepalive_reuses_upstream_connection() -> None:
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        for _ in range(3):
            resp = await client.request()
            assert resp.status == 200
            assert resp.body == b"hello"
        assert len(up.requests) == 3
        assert h.connects == [("10.0.0.1", 80)]
        nursery.cancel_scope.cancel()


async def test_forwarded_headers_and_generated_request_id() -> None:
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        resp = await client.request(
            headers=[
                (b"host", b"Example.com:8080"), (b"x-forwarded-for", b"6.6.6.6"), (b"x-real-ip", b"6.6.6.6"),
            ]
        )
        assert resp.status == 200
        rec = up.requests[0]
        assert rec.header(b"host") == b"Example.com:8080"
        assert rec.header(b"x-forwarded-for") == CLIENT_IP.encode()
        assert rec.header(b"x-real-ip") == CLIENT_IP.encode()
        assert rec.header(b"x-forwarded-proto") == b"http"
        assert rec.header(b"x-forwarded-host") == b"Example.com:8080"
        assert rec.header(b"x-forwarded-port") == b"8080"
        rid = rec.header(b"x-request-id")
        assert rid is not None and re.fullmatch(rb"[0-9a-f]{32}", rid)
        await client.request(headers=[(b"x-request-id", b"abc-123")])
        assert up.requests[1].header(b"x-request-id") == b"abc-123"
        assert up.requests[1].header(b"x-request-id") != rid
        nursery.cancel_scope.cancel()


async def test_host_override() -> None:
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        upstream = Upstream(name=APP, endpoints=(Endpoint("10.0.0.1", 80),), host_override="api.internal")
        h = Harness(nursery, make_snapshot(upstream=upstream), up)
        await h.client().request()
        assert up.requests[0].header(b"host") == b"api.internal"
        assert up.requests[0].header(b"x-forwarded-host") == b"example.com"
        nursery.cancel_scope.cancel()


async def test_hop_by_hop_headers_removed_both_ways() -> None:
    def reply(rec: Recorded) -> Reply:
        return Reply(
            headers=[
                (b"content-length", b"5"), (b"connection", b"x-internal"), (b"x-internal", b"secret"),
                (b"keep-alive", b"timeout=5"), (b"server", b"upstream/1.0"), (b"x-kept", b"yes"),
                (b"proxy-authenticate", b"Basic"),
            ]
        )

    async with trio.open_nursery() as nursery:
        up = EchoUpstream(reply)
        h = Harness(nursery, make_snapshot(), up)
        resp = await h.client().request(
            headers=[
                (b"connection", b"keep-alive, X-Secret"), (b"x-secret", b"1"), (b"keep-alive", b"300"),
                (b"te", b"trailers"), (b"proxy-authorization", b"Basic x"), (b"proxy-connection", b"x"),
                (b"trailer", b"x-foo"), (b"upgrade", b"h2c"), (b"x-end-to-end", b"kept"),
            ]
        )
        names = {n for n, _ in up.requests[0].headers}
        for hop in (b"connection", b"x-secret", b"keep-alive", b"te", b"proxy-authorization",
                    b"proxy-connection", b"trailer", b"upgrade"):
            assert hop not in names, hop
        assert up.requests[0].header(b"x-end-to-end") == b"kept"
        assert resp.header(b"x-internal") is None
        assert resp.header(b"keep-alive") is None
        assert resp.header(b"proxy-authenticate") is None
        assert resp.header(b"server") == b"fastingress"
        assert resp.header(b"x-kept") == b"yes"
        nursery.cancel_scope.cancel()


async def test_normalised_target_is_sent_upstream() -> None:
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(), up)
        resp = await h.client().request(target=b"/api/../admin/./x%2Ey?q=1")
        assert resp.status == 200
        assert up.requests[0].target == b"/admin/x.y?q=1"
        nursery.cancel_scope.cancel()


async def test_chunked_both_ways() -> None:
    def reply(rec: Recorded) -> Reply:
        return Reply(headers=[(b"transfer-encoding", b"chunked")], chunks=[b"part1-", b"part2-", rec.body])

    async with trio.open_nursery() as nursery:
        up = EchoUpstream(reply)
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        await client.send_head(b"POST", b"/upload", [(b"transfer-encoding", b"chunked")])
        await client.send_body(b"abc", b"defg", b"h")
        resp = await client.read_response()
        assert resp.status == 200
        assert resp.body == b"part1-part2-abcdefgh"
        assert resp.header(b"transfer-encoding") == b"chunked"
        assert up.requests[0].body == b"abcdefgh"
        assert up.requests[0].header(b"transfer-encoding") == b"chunked"
        client.conn.start_next_cycle()
        assert (await client.request(body=b"xyz")).body == b"part1-part2-xyz"
        assert h.connects == [("10.0.0.1", 80)]
        nursery.cancel_scope.cancel()


async def test_head_relays_no_body_and_keeps_alive() -> None:
    def reply(rec: Recorded) -> Reply:
        return Reply(headers=[(b"content-length", b"1234")], chunks=[])

    async with trio.open_nursery() as nursery:
        up = EchoUpstream(reply)
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        resp = await client.request(b"HEAD")
        assert resp.status == 200
        assert resp.body == b""
        assert resp.header(b"content-length") == b"1234"
        assert up.requests[0].method == b"HEAD"
        assert (await client.request(b"HEAD")).status == 200
        assert len(h.connects) == 1
        nursery.cancel_scope.cancel()


async def test_204_and_304_have_no_body() -> None:
    statuses = iter([204, 304])

    def reply(rec: Recorded) -> Reply:
        return Reply(status=next(statuses), headers=[], chunks=[])

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), EchoUpstream(reply))
        client = h.client()
        assert (await client.request()).status == 204
        assert (await client.request()).status == 304
        nursery.cancel_scope.cancel()


async def test_expect_100_continue() -> None:
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        await client.send_head(b"PUT", b"/x", [(b"content-length", b"5"), (b"expect", b"100-continue")])
        ev = await client.next_event()
        assert isinstance(ev, h11.InformationalResponse) and ev.status_code == 100
        await client.send_body(b"12345")
        resp = await client.read_response()
        assert resp.status == 200
        assert up.requests[0].body == b"12345"
        assert up.requests[0].header(b"expect") is None
        nursery.cancel_scope.cancel()


async def test_413_by_content_length_without_reading_body_or_connecting() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(max_body_size=10))
        client = h.client()
        await client.send_head(b"POST", b"/x", [(b"content-length", b"11"), (b"expect", b"100-continue")])
        resp = await client.read_response()
        assert resp.status == 413
        assert resp.body == b"413 Request Entity Too Large\n"
        assert resp.header(b"content-type") == b"text/plain; charset=utf-8"
        assert resp.header(b"connection") == b"close"
        assert h.connects == []
        assert await client.closed()
        nursery.cancel_scope.cancel()


async def test_413_on_chunked_overflow_closes_both() -> None:
    async def upstream(stream: trio.abc.Stream, address: tuple[str, int]) -> None:
        seen = b""
        while data := await stream.receive_some(65536):
            seen += data
        upstream_closed.set()

    upstream_closed = trio.Event()
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(max_body_size=10), upstream)
        client = h.client()
        await client.send_head(b"POST", b"/x", [(b"transfer-encoding", b"chunked")])
        await client.send_body(b"12345678", b"12345678", end=False)
        resp = await client.read_response()
        assert resp.status == 413
        assert await client.closed()
        await upstream_closed.wait()
        nursery.cancel_scope.cancel()


async def test_body_within_limit_passes() -> None:
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(max_body_size=10), up)
        client = h.client()
        await client.send_head(b"POST", b"/x", [(b"transfer-encoding", b"chunked")])
        await client.send_body(b"12345", b"67890")
        assert (await client.read_response()).status == 200
        assert up.requests[0].body == b"1234567890"
        nursery.cancel_scope.cancel()


async def test_early_upstream_answer_is_relayed_and_client_closed() -> None:
    async def upstream(stream: trio.abc.Stream, address: tuple[str, int]) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            conn.receive_data(bytes(await stream.receive_some(65536)))
            if isinstance(conn.next_event(), h11.Request):
                break
        await stream.send_all(
            (conn.send(h11.Response(status_code=401, headers=[(b"content-length", b"6")])) or b"")
            + (conn.send(h11.Data(data=b"denied")) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        )
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), upstream)
        client = h.client()
        await client.send_head(b"POST", b"/x", [(b"content-length", b"1000")])
        await client.send_body(b"x" * 10, end=False)
        resp = await client.read_response()
        assert resp.status == 401
        assert resp.body == b"denied"
        assert resp.header(b"connection") == b"close"
        assert await client.closed()
        nursery.cancel_scope.cancel()


async def test_upgrade_relays_raw_bytes() -> None:
    seen: list[Recorded] = []

    async def upstream(stream: trio.abc.Stream, address: tuple[str, int]) -> None:
        conn = h11.Connection(h11.SERVER)
        head = None
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(ev, h11.Request):
                head = ev
            elif ev is h11.PAUSED:
                break
        assert head is not None
        seen.append(Recorded(head.method, head.target, list(head.headers), b"", address))
        await stream.send_all(
            (conn.send(h11.InformationalResponse(
                status_code=101, headers=[(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
            )) or b"") + b"hello-from-upstream"
        )
        leftover = conn.trailing_data[0]
        if leftover:
            await stream.send_all(b"echo:" + leftover)
        while data := await stream.receive_some(65536):
            await stream.send_all(b"echo:" + data)

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), upstream)
        client = h.client()
        await client.send_head(b"GET", b"/ws", [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")])
        await client.send_body()
        ev = await client.next_event()
        assert isinstance(ev, h11.InformationalResponse) and ev.status_code == 101
        assert dict(ev.headers)[b"upgrade"] == b"websocket"
        assert seen[0].header(b"upgrade") == b"websocket"
        assert seen[0].header(b"connection") == b"upgrade"
        received = client.conn.trailing_data[0]
        while not received.endswith(b"hello-from-upstream"):
            received += await client.stream.receive_some(65536)
        await client.stream.send_all(b"ping")
        got = b""
        while got != b"echo:ping":
            got += await client.stream.receive_some(65536)
        await client.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_502_on_garbage_response() -> None:
    async def upstream(stream: trio.abc.Stream, address: tuple[str, int]) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"this is not http\r\n\r\n")

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), upstream)
        client = h.client()
        resp = await client.request()
        assert resp.status == 502
        assert resp.body == b"502 Bad Gateway\n"
        assert h.worker.metrics.upstream_errors == 1
        # the client connection survives an upstream failure
        assert (await client.request()).status == 502
        nursery.cancel_scope.cancel()


async def test_502_when_upstream_closes_without_answer() -> None:
    async def upstream(stream: trio.abc.Stream, address: tuple[str, int]) -> None:
        await stream.receive_some(65536)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), upstream)
        assert (await h.client().request()).status == 502
        nursery.cancel_scope.cancel()


@pytest.mark.modes("h11", "llhttp-session")
async def test_dead_pooled_connection_is_retried_once() -> None:
    """(The core notices an idle connection closing at once: see the next test.)"""
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        up.closed_after_response = True  # like an upstream whose keep-alive timer fired
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        assert (await client.request()).status == 200
        await trio.testing.wait_all_tasks_blocked()
        assert h.pool.idle_count(("10.0.0.1", 80)) == 1
        assert (await client.request()).status == 200
        assert len(h.connects) == 2
        assert len(up.requests) == 2
        nursery.cancel_scope.cancel()


@pytest.mark.modes("core")
async def test_idle_connection_closed_by_the_upstream_leaves_the_pool() -> None:
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        up.closed_after_response = True  # like an upstream whose keep-alive timer fired
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        assert (await client.request()).status == 200
        with trio.fail_after(5):
            while h.pool.idle_count(("10.0.0.1", 80)):
                await trio.sleep(0.001)  # the core reads the EOF on its own schedule
        assert (await client.request()).status == 200
        assert len(h.connects) == 2
        assert len(up.requests) == 2
        nursery.cancel_scope.cancel()


async def test_connect_failure_retries_another_endpoint() -> None:
    eps = (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80))
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(endpoints=eps), up)
        h.refuse.add(("10.0.0.1", 80))
        resp = await h.client().request()
        assert resp.status == 200
        assert h.connects == [("10.0.0.1", 80), ("10.0.0.2", 80)]
        assert up.requests[0].address == ("10.0.0.2", 80)
        nursery.cancel_scope.cancel()


async def test_connect_failure_everywhere_is_502() -> None:
    eps = (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80))
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(endpoints=eps))
        h.refuse.update(eps_addr := {("10.0.0.1", 80), ("10.0.0.2", 80)})
        resp = await h.client().request()
        assert resp.status == 502
        assert set(h.connects) == eps_addr and len(h.connects) == 2
        nursery.cancel_scope.cancel()


async def test_round_robin_over_ready_endpoints() -> None:
    eps = (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80, ready=False), Endpoint("10.0.0.3", 80))
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(endpoints=eps), up)
        for _ in range(4):
            await h.client().request()
        assert [r.address[0] for r in up.requests] == ["10.0.0.1", "10.0.0.3", "10.0.0.1", "10.0.0.3"]
        nursery.cancel_scope.cancel()


async def test_weighted_backends() -> None:
    other = Upstream(name="default/canary:80", endpoints=(Endpoint("10.0.1.1", 80),))
    backends = (WeightedBackend(APP, 75), WeightedBackend("default/canary:80", 25))
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(extra_upstreams=(other,), backends=backends), up)
        client = h.client()
        for _ in range(8):
            await client.request()
        hosts = [r.address[0] for r in up.requests]
        assert hosts.count("10.0.1.1") == 2
        assert hosts.count("10.0.0.1") == 6
        nursery.cancel_scope.cancel()


async def test_503_when_no_endpoint_is_ready() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(endpoints=(Endpoint("10.0.0.1", 80, ready=False),)))
        resp = await h.client().request()
        assert resp.status == 503
        assert h.connects == []
        nursery.cancel_scope.cancel()


async def test_503_before_first_snapshot() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery)
        resp = await h.client().request()
        assert resp.status == 503
        assert b"no configuration yet" in resp.body
        nursery.cancel_scope.cancel()


async def test_direct_answers_404_redirect_respond() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(path="/app"))
        client = h.client()
        resp = await client.request(target=b"/nothing-here")
        assert (resp.status, resp.body) == (404, b"404 Not Found\n")
        assert resp.header(b"server") == b"fastingress"
        resp = await client.request(target=b"/old")
        assert resp.status == 301
        assert resp.header(b"location") == b"https://example.com/new"
        resp = await client.request(target=b"/teapot")
        assert (resp.status, resp.body) == (418, b"short and stout\n")
        resp = await client.request(target=b"/x", headers=[(b"host", b"unknown.org")])
        assert resp.status == 404
        nursery.cancel_scope.cancel()


async def test_400_on_bad_path_and_malformed_request() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())
        client = h.client()
        resp = await client.request(target=b"/a%2Fb")
        assert resp.status == 400
        assert resp.header(b"connection") == b"close"
        assert await client.closed()
        client = h.client()
        await client.stream.send_all(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
        raw = b""
        while data := await client.stream.receive_some(65536):
            raw += data
        assert raw.startswith(b"HTTP/1.1 400 ")
        assert h.connects == []
        nursery.cancel_scope.cancel()


async def test_431_on_oversized_head() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(settings=GlobalSettings(max_header_bytes=1024)))
        client = h.client()
        resp = await client.request(headers=[(b"x-big", b"a" * 2000)])
        assert resp.status == 431
        assert await client.closed()
        nursery.cancel_scope.cancel()


async def test_snapshot_swap_keeps_connection_and_uses_new_table() -> None:
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        assert (await client.request(target=b"/teapot")).status == 418
        h.install(make_snapshot(path="/app"))
        # same client connection, new table: /teapot is still a Respond route, / now 404
        assert (await client.request(target=b"/teapot")).status == 418
        assert (await client.request(target=b"/")).status == 404
        assert (await client.request(target=b"/app/x")).status == 200
        nursery.cancel_scope.cancel()


async def test_external_name_resolution_cached_and_failure_is_502() -> None:
    calls: list[str] = []

    async def resolve(name: str, port: int) -> tuple[str, ...]:
        calls.append(name)
        if name == "broken.example":
            raise OSError("Name or service not known")
        return ("10.5.5.5",)

    ext = Upstream(name=APP, external_name="api.example", port=8443, dns_ttl=30.0)
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(upstream=ext), up, resolve=resolve)
        client = h.client()
        assert (await client.request()).status == 200
        assert (await client.request()).status == 200
        assert calls == ["api.example"]
        assert up.requests[0].address == ("10.5.5.5", 8443)
        h.install(make_snapshot(upstream=Upstream(name=APP, external_name="broken.example", port=80)))
        assert (await client.request()).status == 502
        nursery.cancel_scope.cancel()


async def test_metrics_labels_and_histogram() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())
        client = h.client()
        await client.request()
        await client.request(target=b"/teapot")
        await client.request(target=b"/x", headers=[(b"host", b"nope.org")])
        await trio.testing.wait_all_tasks_blocked()  # counted just after the last byte is written
        stats = h.worker.metrics.stats(0, 1, False)
        counts = {(r.status_class, r.host, r.ingress, r.service): r.count for r in stats.requests}
        assert counts == {
            ("2xx", "example.com", "default/web", "default/app:80"): 1,
            ("4xx", "example.com", "default/web", "-"): 1,
            ("4xx", "-", "-", "-"): 1,
        }
        assert stats.duration_count == 3
        assert stats.duration_buckets[-1] == 3
        assert stats.active_connections == 1
        nursery.cancel_scope.cancel()


async def test_drain_closes_idle_and_marks_in_flight_close() -> None:
    release = trio.Event()
    arrived = trio.Event()

    def reply(rec: Recorded) -> Reply:
        return Reply(headers=[(b"content-length", b"5")])

    up = EchoUpstream(reply)

    async def slow_upstream(stream: trio.abc.Stream, address: tuple[str, int]) -> None:
        # wait for the release before serving each request
        conn_stream = stream
        arrived.set()
        await release.wait()
        await up(conn_stream, address)

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), slow_upstream)
        idle = h.client()
        busy = h.client()
        assert (await h.client().request(target=b"/teapot")).status == 418
        await idle.request(target=b"/teapot")
        async with trio.open_nursery() as inner:
            results = []

            async def go() -> None:
                results.append(await busy.request())

            inner.start_soon(go)
            await arrived.wait()
            h.worker.start_drain()
            assert await idle.closed()
            assert not h.worker.drained.is_set()
            release.set()
        assert results[0].status == 200
        assert results[0].header(b"connection") == b"close"
        assert await busy.closed()
        with trio.fail_after(1):
            await h.worker.drained.wait()
        nursery.cancel_scope.cancel()


# ---- timeouts (MockClock) ---------------------------------------------------------------


async def test_client_header_timeout_closes(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    settings = GlobalSettings(client_header_timeout=7.0)
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(settings=settings))
        client = h.client()
        start = trio.current_time()
        await client.stream.send_all(b"GET / HTTP/1.1\r\nHost: exa")
        assert await client.closed()
        assert 7.0 <= trio.current_time() - start < 7.5
        nursery.cancel_scope.cancel()


async def test_keepalive_idle_timeout_closes(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    settings = GlobalSettings(keepalive_timeout=20.0, client_header_timeout=60.0)
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(settings=settings))
        client = h.client()
        await client.request(target=b"/teapot")
        start = trio.current_time()
        assert await client.closed()
        assert 20.0 <= trio.current_time() - start < 20.5
        nursery.cancel_scope.cancel()


async def test_upstream_read_timeout_is_504(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0

    async def upstream(stream: trio.abc.Stream, address: tuple[str, int]) -> None:
        await stream.receive_some(65536)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), upstream)  # read_timeout=5
        client = h.client()
        start = trio.current_time()
        resp = await client.request()
        assert resp.status == 504
        assert 5.0 <= trio.current_time() - start < 5.5
        assert h.worker.metrics.upstream_errors == 1
        assert (await client.request(target=b"/teapot")).status == 418
        nursery.cancel_scope.cancel()


async def test_upstream_read_timeout_is_per_operation(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0

    async def upstream(stream: trio.abc.Stream, address: tuple[str, int]) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        for ch in b"abcd":
            await trio.sleep(4)  # each gap under read_timeout=5, the total well over it
            await stream.send_all(bytes([ch]))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), upstream)
        resp = await h.client().request()
        assert (resp.status, resp.body) == (200, b"abcd")
        nursery.cancel_scope.cancel()


async def test_connect_timeout_is_504(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())  # connect_timeout=2
        h.hang.add(("10.0.0.1", 80))
        start = trio.current_time()
        resp = await h.client().request()
        assert resp.status == 504
        assert 2.0 <= trio.current_time() - start < 2.5
        nursery.cancel_scope.cancel()


async def test_connect_timeout_then_other_endpoint(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    eps = (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80))
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(endpoints=eps))
        h.hang.add(("10.0.0.1", 80))
        resp = await h.client().request()
        assert resp.status == 200
        assert h.connects == [("10.0.0.1", 80), ("10.0.0.2", 80)]
        nursery.cancel_scope.cancel()


async def test_dead_pooled_connection_retried_for_body_not_yet_sent() -> None:
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        up.closed_after_response = True
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        assert (await client.request()).status == 200
        await trio.testing.wait_all_tasks_blocked()
        resp = await client.request(b"POST", body=b"payload")
        assert resp.status == 200
        assert up.requests[1].body == b"payload"
        assert len(h.connects) == 2
        nursery.cancel_scope.cancel()


async def test_unsupported_upstream_protocol_is_502() -> None:
    upstream = Upstream(name=APP, endpoints=(Endpoint("10.0.0.1", 443),), protocol="FCGI")
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(upstream=upstream))
        assert (await h.client().request()).status == 502
        assert h.connects == []
        nursery.cancel_scope.cancel()


async def test_http10_client_without_keepalive() -> None:
    def reply(rec: Recorded) -> Reply:
        return Reply(headers=[(b"transfer-encoding", b"chunked")], chunks=[b"a", b"b"])

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), EchoUpstream(reply))
        client = h.client()
        await client.stream.send_all(b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n")
        raw = b""
        while data := await client.stream.receive_some(65536):
            raw += data
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"transfer-encoding" not in head.lower()
        assert body == b"ab"
        nursery.cancel_scope.cancel()


async def test_pooled_connection_closing_after_our_request_is_retried() -> None:
    """The upstream reads the request, then closes without a byte (keep-alive race)."""
    served = 0

    async def upstream(stream: trio.abc.Stream, address: tuple[str, int]) -> None:
        nonlocal served
        conn = h11.Connection(h11.SERVER)
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(ev, h11.EndOfMessage):
                if served == 1 and address == ("10.0.0.1", 80) and len(h.connects) == 1:
                    await stream.aclose()  # the second request on the first connection dies
                    return
                served += 1
                await stream.send_all(
                    (conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"2")])) or b"")
                    + (conn.send(h11.Data(data=b"ok")) or b"") + (conn.send(h11.EndOfMessage()) or b"")
                )
                conn.start_next_cycle()

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), upstream)
        client = h.client()
        assert (await client.request()).status == 200
        assert (await client.request()).status == 200
        assert len(h.connects) == 2
        assert served == 2
        nursery.cancel_scope.cancel()


async def test_access_log_only_when_enabled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fastingress.worker")
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())
        client = h.client()
        await client.request(target=b"/teapot")
        await trio.testing.wait_all_tasks_blocked()
        assert not caplog.records
        h.worker.access_log = True
        await client.request(target=b"/teapot?x=1")
        await trio.testing.wait_all_tasks_blocked()
        (line,) = [r.getMessage() for r in caplog.records]
        assert line.startswith(f"{CLIENT_IP} GET /teapot?x=1 418 ")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: -1\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"GET /a\\b HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"GET /%zz HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"GET nonsense HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: example.com\r\n\r\n",
        b"GET http://other.host/teapot HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_bad_requests_get_an_answer_or_a_close(raw: bytes) -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())
        client = h.client()
        await client.stream.send_all(raw)
        assert isinstance(client.stream, trio.abc.HalfCloseableStream)
        await client.stream.send_eof()
        answer = b""
        with trio.fail_after(5):
            while data := await client.stream.receive_some(65536):
                answer += data
        if answer:
            status = int(answer.split(b" ", 2)[1])
            assert status in (400, 404, 418, 501, 502, 505), answer
        nursery.cancel_scope.cancel()


@pytest.mark.modes("h11")
async def test_content_length_and_chunked_forwards_only_chunked() -> None:
    """The h11 reference reads CL+TE as chunked; llhttp (and nginx) refuse it: next test."""
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        await client.stream.send_all(
            b"POST /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        resp = await client.read_response()
        assert resp.status == 200
        assert up.requests[0].body == b"abc"
        assert up.requests[0].header(b"content-length") is None
        assert up.requests[0].header(b"transfer-encoding") == b"chunked"
        nursery.cancel_scope.cancel()


async def test_slow_upload_is_not_an_upstream_read_timeout(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot())  # read_timeout=5, client_header_timeout=60
        h.upstream = up
        client = h.client()
        await client.send_head(b"POST", b"/upload", [(b"transfer-encoding", b"chunked")])
        for piece in (b"aa", b"bb", b"cc", b"dd"):
            await trio.sleep(3)  # 12 s in all, each gap under every timeout
            await client.send_body(piece, end=False)
        await client.send_body()
        resp = await client.read_response()
        assert resp.status == 200
        assert up.requests[0].body == b"aabbccdd"
        nursery.cancel_scope.cancel()


async def test_read_timeout_starts_when_the_body_is_sent(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0

    async def upstream(stream: trio.abc.Stream, address: tuple[str, int]) -> None:
        while await stream.receive_some(65536):
            pass

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), upstream)
        client = h.client()
        await client.send_head(b"POST", b"/upload", [(b"content-length", b"4")])
        await trio.sleep(10)
        start = trio.current_time()
        await client.send_body(b"abcd")
        resp = await client.read_response()
        assert resp.status == 504
        assert 5.0 <= trio.current_time() - start < 5.5
        nursery.cancel_scope.cancel()


async def test_tunnel_closes_after_upstream_read_timeout(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0

    async def upstream(stream: trio.abc.Stream, address: tuple[str, int]) -> None:
        await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
        )
        for _ in range(3):
            await trio.sleep(4)  # under read_timeout=5: the tunnel stays up
            await stream.send_all(b"tick")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), upstream)
        client = h.client()
        await client.send_head(b"GET", b"/ws", [(b"upgrade", b"x"), (b"connection", b"upgrade")])
        await client.send_body()
        ev = await client.next_event()
        assert isinstance(ev, h11.InformationalResponse) and ev.status_code == 101
        start = trio.current_time()
        got = client.conn.trailing_data[0]
        while data := await client.stream.receive_some(65536):
            got += data
        assert got == b"tick" * 3
        assert 17.0 <= trio.current_time() - start < 17.5  # 3 x 4 s, then 5 s of silence
        nursery.cancel_scope.cancel()


@pytest.mark.modes("llhttp-session", "core")
async def test_content_length_and_chunked_is_refused() -> None:
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        await client.stream.send_all(
            b"POST /x HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        resp = await client.read_response()
        assert resp.status == 400
        assert resp.header(b"connection") == b"close"
        assert up.requests == [] and h.connects == []
        nursery.cancel_scope.cancel()


async def test_large_bodies_both_ways_and_keep_alive_after(harness_mode: str) -> None:
    """A large Content-Length answer (the core splices it in the kernel: workers/splice.py), then
    more requests on both kept-alive connections; a chunked one is copied as before."""
    big = bytes(range(256)) * (12 * 1024)  # 3 MiB
    pieces = [big[i:i + 70000] for i in range(0, len(big), 70000)]

    def reply(rec: Recorded) -> Reply:
        if rec.target == b"/big":
            return Reply(headers=[(b"content-length", str(len(big)).encode())], chunks=pieces)
        if rec.target == b"/chunked":
            return Reply(chunks=pieces)
        return Reply(headers=[(b"content-length", b"5")])

    async with trio.open_nursery() as nursery:
        up = EchoUpstream(reply)
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        for target in (b"/big", b"/small", b"/big", b"/chunked", b"/small"):
            resp = await client.request(target=target)
            assert resp.status == 200
            assert resp.body == (b"hello" if target == b"/small" else big), target
        assert len(h.connects) == 1  # one upstream connection carried all five
        # the core spliced both Content-Length bodies (only the chunked one went through Python)
        metrics = h.worker.metrics
        assert metrics.spliced_bodies == (2 if harness_mode == "core" else 0)
        # all of each body but what came in with the head, which Python had read already
        assert metrics.spliced_bodies * (len(big) - 256 * 1024) <= metrics.spliced_bytes
        assert metrics.spliced_bytes <= metrics.spliced_bodies * len(big)
        nursery.cancel_scope.cancel()


@pytest.mark.modes("core")
async def test_a_snapshot_that_removes_an_endpoint_closes_its_idle_pooled_connections() -> None:
    """The core's pool is pruned on a snapshot swap: idle connections to removed endpoints close,
    and the next request goes to the endpoint the new snapshot names."""
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), EchoUpstream())
        client = h.client()
        assert (await client.request()).status == 200
        assert h.connects == [("10.0.0.1", 80)]
        assert h.core_pool.idle_count(("10.0.0.1", 80)) == 1
        h.install(make_snapshot(endpoints=(Endpoint("10.0.0.2", 80),)))
        assert h.core_pool.idle_count(("10.0.0.1", 80)) == 0  # closed at once, not on next use
        assert (await client.request()).status == 200
        assert h.connects == [("10.0.0.1", 80), ("10.0.0.2", 80)]
        nursery.cancel_scope.cancel()


@pytest.mark.modes("core")
async def test_without_a_pipe_the_large_body_is_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of file descriptors for the splice's pipe: the body is copied through Python instead."""
    big = bytes(range(256)) * (4 * 1024)  # 1 MiB

    def no_pipe(flags: int) -> tuple[int, int]:
        raise OSError(errno.EMFILE, "Too many open files")

    async with trio.open_nursery() as nursery:
        up = EchoUpstream(lambda rec: Reply(headers=[(b"content-length", str(len(big)).encode())],
                                            chunks=[big[i:i + 70000] for i in range(0, len(big), 70000)]))
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        monkeypatch.setattr(os, "pipe2", no_pipe)
        resp = await client.request(target=b"/big")
        monkeypatch.undo()
        assert resp.status == 200 and resp.body == big
        assert h.worker.metrics.spliced_bodies == 0
        resp = await client.request(target=b"/big")  # the same connections, spliced again
        assert resp.status == 200 and resp.body == big
        assert h.worker.metrics.spliced_bodies == 1
        nursery.cancel_scope.cancel()


@pytest.mark.modes("core")
async def test_an_upstream_that_dies_mid_splice_cuts_the_client() -> None:
    big = b"x" * (2 * 1024 * 1024)

    async def dying(stream: trio.abc.Stream, address: tuple[str, int]) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(ev, h11.EndOfMessage):
                break
        head = conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"%d" % len(big))]))
        await stream.send_all((head or b"") + big[: len(big) // 2])  # then the upstream dies
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), dying)
        client = h.client()
        await client.send_head(b"GET", b"/", [])
        await client.send_body()
        got = b""
        with trio.fail_after(10):
            while data := await client.stream.receive_some(65536):
                got += data
        assert got.startswith(b"HTTP/1.1 200 ")
        assert len(got) < len(big)  # cut short: the client sees an incomplete body, not a hang
        await trio.testing.wait_all_tasks_blocked()
        assert h.worker.metrics.upstream_errors == 1
        nursery.cancel_scope.cancel()
