"""The per-route policy hooks (``workers.policy``) in each data path: request hooks that answer
or defer to a task, response hooks, done hooks, backend and endpoint choice.  A test compiler
stands in for the policy areas (``workers.routing.COMPILERS`` is patched)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio

from fastingress.snapshot.schema import Endpoint, Route, Snapshot, Upstream, WeightedBackend
from tests.support import worker_harness
from tests.support.worker_harness import APP, EchoUpstream, Harness, make_snapshot
from workers import routing
from workers.policy import ACCESS, CONTENT, REWRITE, Answer, Defer, Policy, RequestCtx

pytestmark = pytest.mark.timeout(30)

MODES = ("h11", "llhttp-session", "core")


@pytest.fixture(autouse=True, params=MODES)
def harness_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(worker_harness, "MODE", request.param)
    return str(request.param)


class Recorder:
    def __init__(self) -> None:
        self.done: list[str] = []
        self.order: list[str] = []


def install(monkeypatch: pytest.MonkeyPatch, compiler: object) -> None:
    monkeypatch.setattr(routing, "COMPILERS", (compiler,))


async def test_a_deferred_hook_resumes_the_request_in_the_data_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder()
    gate = trio.Event()

    def compile(route: Route, snapshot: Snapshot) -> Sequence[Policy]:
        if route.path != "/":
            return ()

        def first(ctx: RequestCtx) -> Defer:
            rec.order.append("defer")

            async def run() -> Answer | None:
                await gate.wait()  # a task waits (an auth subrequest would)
                rec.order.append("resumed")
                if ctx.header(b"authorization") != b"yes":
                    return Answer(401, b"no\n", extra=((b"www-authenticate", b"Test"),))
                ctx.upstream_headers.append((b"x-user", b"alice"))
                return None

            return Defer(run)

        def then(ctx: RequestCtx) -> None:
            rec.order.append("then")

        def respond(ctx: RequestCtx, status: int, headers: list[tuple[bytes, bytes]]) -> None:
            headers.append((b"x-policy", b"%d" % status))

        def done(ctx: RequestCtx) -> None:
            rec.done.append(ctx.path)

        return (
            Policy(CONTENT, request=then),
            Policy(ACCESS, request=first, response=respond, done=done),
        )

    install(monkeypatch, compile)
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        gate.set()
        resp = await client.request(target=b"/a", headers=[(b"authorization", b"yes")])
        assert resp.status == 200
        assert resp.header(b"x-policy") == b"200"
        assert up.requests[0].header(b"x-user") == b"alice"
        assert rec.order == ["defer", "resumed", "then"]  # ACCESS before CONTENT, the deferral resumed
        resp = await client.request(target=b"/b")
        assert resp.status == 401 and resp.body == b"no\n"
        assert resp.header(b"www-authenticate") == b"Test"
        assert resp.header(b"x-policy") == b"401"  # response hooks see our own answers too
        assert len(up.requests) == 1  # the refused request never reached the upstream
        assert (await client.request(target=b"/teapot")).status == 418  # another route: no hooks
        await trio.testing.wait_all_tasks_blocked()
        assert rec.done == ["/a", "/b"]
        nursery.cancel_scope.cancel()


async def test_a_client_gone_while_a_hook_waits_still_runs_the_done_hooks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rec = Recorder()
    gate = trio.Event()

    def compile(route: Route, snapshot: Snapshot) -> Sequence[Policy]:
        def first(ctx: RequestCtx) -> Defer:
            async def run() -> Answer | None:
                await gate.wait()
                return None

            return Defer(run)

        return (Policy(ACCESS, request=first, done=lambda ctx: rec.done.append(ctx.path)),)

    install(monkeypatch, compile)
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(), up)
        client = h.client()
        await client.send_head(b"GET", b"/gone", [])
        await trio.testing.wait_all_tasks_blocked()
        await client.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        gate.set()  # the hook's task ends after the client left
        with trio.fail_after(5):
            while not rec.done:
                await trio.sleep(0.001)  # the data path notices the close on its own schedule
        await trio.testing.wait_all_tasks_blocked()
        assert rec.done == ["/gone"]  # once
        nursery.cancel_scope.cancel()


async def test_backend_and_endpoint_hooks_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    canary = Upstream(
        name="default/canary:80", endpoints=(Endpoint("10.0.0.9", 80),), service="default/canary"
    )

    def compile(route: Route, snapshot: Snapshot) -> Sequence[Policy]:
        def backend(ctx: RequestCtx, action: object) -> str | None:
            return canary.name if ctx.header(b"x-canary") == b"always" else None

        def select(ctx: RequestCtx, upstream: Upstream, addrs: tuple[tuple[str, int], ...]) -> tuple[
                tuple[str, int], tuple[str, int] | None] | None:
            return (addrs[-1], None) if ctx.header(b"x-last") else None

        return (Policy(REWRITE, backend=backend, select=select),)

    install(monkeypatch, compile)
    eps = (Endpoint("10.0.0.1", 80), Endpoint("10.0.0.2", 80))
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(endpoints=eps, extra_upstreams=(canary,),
                                           backends=(WeightedBackend(APP),)), up)
        client = h.client()
        await client.request(headers=[(b"x-canary", b"always")])
        await client.request(headers=[(b"x-last", b"1")])
        await client.request(headers=[(b"x-last", b"1")])
        assert [r.address for r in up.requests] == [("10.0.0.9", 80), ("10.0.0.2", 80), ("10.0.0.2", 80)]
        nursery.cancel_scope.cancel()
