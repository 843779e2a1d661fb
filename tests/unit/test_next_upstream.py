"""proxy-next-upstream in each data path (the h11 Session, the llhttp Session, the event-driven
core): which failures are tried again on another endpoint, and which are not (a request whose
body went upstream, a non-idempotent request that was sent, a response already started, tries
and conditions).  Upstreams are scripted per endpoint: answer, answer 502, hang, send garbage,
close without answering."""

from __future__ import annotations

from collections.abc import Sequence

import h11
import pytest
import trio

from fastingress.snapshot.schema import (
    Endpoint,
    Forward,
    NextUpstream,
    Route,
    RoutePolicy,
    Snapshot,
    Upstream,
    VirtualHost,
    WeightedBackend,
)
from tests.support import worker_harness
from tests.support.worker_harness import APP, Harness, Recorded

pytestmark = pytest.mark.timeout(30)

MODES = ("h11", "llhttp-session", "core")
A, B, C = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)


@pytest.fixture(autouse=True, params=MODES)
def harness_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(worker_harness, "MODE", request.param)
    return str(request.param)


def snapshot(
    next_upstream: NextUpstream | None, endpoints: Sequence[tuple[str, int]] = (A, B),
    read_timeout: float = 5.0,
) -> Snapshot:
    upstream = Upstream(
        name=APP, endpoints=tuple(Endpoint(h, p) for h, p in endpoints), service="default/app",
        connect_timeout=2.0, read_timeout=read_timeout, send_timeout=5.0,
    )
    route = Route(path="/", path_type="Prefix", action=Forward((WeightedBackend(APP),)),
                  ingress="default/web", service="default/app:80",
                  policy=RoutePolicy(next_upstream=next_upstream))
    return Snapshot(virtual_hosts=(VirtualHost("example.com", (route,)),), upstreams=(upstream,))


class Scripted:
    """An upstream whose behaviour depends on the endpoint: "ok", "502", "hang", "garbage",
    "close" (read the request, close without a word).  Records what each endpoint received."""

    def __init__(self, script: dict[tuple[str, int], str]) -> None:
        self.script = script
        self.seen: list[tuple[tuple[str, int], bytes, bytes]] = []  # (endpoint, method, body)

    async def __call__(self, stream: trio.abc.Stream, address: tuple[str, int]) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                rec = await self._request(conn, stream, address)
                if rec is None:
                    return
                self.seen.append((address, rec.method, rec.body))
                what = self.script.get(address, "ok")
                if what == "hang":
                    await trio.sleep_forever()
                if what == "close":
                    return
                if what == "garbage":
                    await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
                    return
                status = 502 if what == "502" else 200
                body = f"{address[0]} {status}".encode()
                head = h11.Response(status_code=status, headers=[(b"content-length", b"%d" % len(body))])
                out = b"".join(conn.send(ev) or b"" for ev in (head, h11.Data(data=body), h11.EndOfMessage()))
                await stream.send_all(out)
                if conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    @staticmethod
    async def _request(
        conn: h11.Connection, stream: trio.abc.Stream, address: tuple[str, int]
    ) -> Recorded | None:
        head: h11.Request | None = None
        body = b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return None
                conn.receive_data(bytes(data))
            elif isinstance(ev, h11.Request):
                head = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                assert head is not None
                return Recorded(head.method, head.target, list(head.headers), body, address)
            else:
                return None

    def endpoints(self) -> list[tuple[str, int]]:
        return [address for address, _, _ in self.seen]


async def run(
    config: NextUpstream | None, script: dict[tuple[str, int], str], *, method: bytes = b"GET",
    body: bytes | None = None, endpoints: Sequence[tuple[str, int]] = (A, B), read_timeout: float = 5.0,
    refuse: Sequence[tuple[str, int]] = (),
) -> tuple[int, bytes, Scripted, Harness]:
    """One request to ``/`` (the first attempt goes to the first endpoint: round robin starts there)."""
    up = Scripted(script)
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, snapshot(config, endpoints, read_timeout), up)
        h.refuse.update(refuse)
        client = h.client()
        with trio.fail_after(15):
            resp = await client.request(method, b"/", body=body)
        nursery.cancel_scope.cancel()
    return resp.status, resp.body, up, h


async def test_a_502_is_tried_on_the_next_endpoint_only_when_listed() -> None:
    status, body, up, _ = await run(NextUpstream(("error", "timeout", "http_502")), {A: "502"})
    assert (status, body) == (200, b"10.0.0.2 200") and up.endpoints() == [A, B]
    status, body, up, _ = await run(NextUpstream(("error", "timeout")), {A: "502"})
    assert (status, body) == (502, b"10.0.0.1 502") and up.endpoints() == [A]  # relayed as it is


async def test_the_last_attempt_s_answer_is_relayed_when_tries_run_out() -> None:
    status, body, up, _ = await run(NextUpstream(("http_502",), tries=2), {A: "502", B: "502", C: "502"},
                                    endpoints=(A, B, C))
    first, second = up.endpoints()  # two attempts, on two endpoints; the second one's answer
    assert first == A and second != A and (status, body) == (502, f"{second[0]} 502".encode())


async def test_a_read_timeout_is_tried_on_the_next_endpoint() -> None:
    status, body, up, _ = await run(NextUpstream(("timeout",)), {A: "hang"}, read_timeout=0.3)
    assert (status, body) == (200, b"10.0.0.2 200") and up.endpoints() == [A, B]
    status, _, up, _ = await run(NextUpstream(("error",)), {A: "hang"}, read_timeout=0.3)
    assert status == 504 and up.endpoints() == [A]


async def test_invalid_header_and_error() -> None:
    status, _, up, _ = await run(NextUpstream(("invalid_header",)), {A: "garbage"})
    assert status == 200 and up.endpoints() == [A, B]
    status, _, up, _ = await run(NextUpstream(("error",)), {A: "close"})
    assert status == 200 and up.endpoints() == [A, B]
    status, _, up, _ = await run(NextUpstream(("timeout",)), {A: "close"})
    assert status == 502 and up.endpoints() == [A]


async def test_a_refused_connect_walks_the_endpoints() -> None:
    status, body, up, h = await run(NextUpstream(("error",), tries=3), {}, endpoints=(A, B, C), refuse=(A, B))
    assert (status, body) == (200, b"10.0.0.3 200") and up.endpoints() == [C]
    assert [c for c in h.connects if c in (A, B, C)][:3] == [A, B, C]


async def test_off_means_no_retry_at_all() -> None:
    status, _, up, _ = await run(NextUpstream(()), {}, refuse=(A,))
    assert status == 502 and up.endpoints() == []


async def test_non_idempotent_requests_are_sent_once_unless_told() -> None:
    status, _, up, _ = await run(NextUpstream(("error", "http_502")), {A: "502"}, method=b"POST")
    assert status == 502 and up.endpoints() == [A]
    told = NextUpstream(("error", "http_502", "non_idempotent"))
    status, _, up, _ = await run(told, {A: "502"}, method=b"POST")
    assert status == 200 and up.endpoints() == [A, B]
    # a POST that never reached an upstream (refused connect) is tried again either way
    status, _, up, _ = await run(NextUpstream(("error",)), {}, method=b"POST", refuse=(A,))
    assert status == 200 and up.endpoints() == [B]


async def test_a_request_whose_body_went_upstream_is_not_sent_again() -> None:
    config = NextUpstream(("error", "http_502", "non_idempotent"))
    status, body, up, _ = await run(config, {A: "502"}, method=b"PUT", body=b"x" * 1000)
    assert (status, body) == (502, b"10.0.0.1 502") and up.endpoints() == [A]
    assert up.seen[0][2] == b"x" * 1000
    # ... but a body that never left (refused connect) goes to the next endpoint whole
    status, _, up, _ = await run(config, {}, method=b"PUT", body=b"y" * 1000, refuse=(A,))
    assert status == 200 and up.seen == [(B, b"PUT", b"y" * 1000)]
