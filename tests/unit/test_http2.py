"""HTTP/2 to clients over memory streams: an ``h2`` client peer, real h11 upstreams.

Every connection enters through ``proxy.serve_client`` with the HTTP/2 preface (h2c prior
knowledge), exactly as on the plain port.
"""

from __future__ import annotations

import contextlib

import h2.errors
import h2.settings
import h11
import pytest
import trio
import trio.testing
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame

from fastingress.snapshot.schema import Endpoint, GlobalSettings, Upstream
from tests.support.h2client import H2Client
from tests.support.worker_harness import APP, CLIENT_IP, EchoUpstream, Harness, Reply, make_snapshot
from workers.http2 import FloodMeter, H2Limits, build_request_head, goaway_frame
from workers.serve import serve_client

pytestmark = pytest.mark.timeout(30)

Address = tuple[str, int]
ENHANCE_YOUR_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR


def h2_client(h: Harness, **kwargs: object) -> H2Client:
    ours, theirs = trio.testing.memory_stream_pair()
    h.nursery.start_soon(serve_client, h.worker, theirs, CLIENT_IP)
    return H2Client(ours, **kwargs)  # type: ignore[arg-type]


class GatedUpstream:
    """An h11 upstream that holds its answer to ``/slow...`` until ``release`` is set."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.waiting = 0
        self.inner = EchoUpstream()

    async def __call__(self, stream: trio.abc.Stream, address: Address) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
                continue
            if isinstance(ev, h11.EndOfMessage):
                break
            if isinstance(ev, h11.Request) and ev.target.startswith(b"/slow"):
                self.waiting += 1
                await self.release.wait()
            elif not isinstance(ev, (h11.Request, h11.Data)):
                return  # the proxy closed the connection (a cancelled stream)
        out = conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"4")])) or b""
        out += (conn.send(h11.Data(data=b"done")) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        await stream.send_all(out)
        await trio.aclose_forcefully(stream)


# ---- requests -------------------------------------------------------------------------


async def test_multiplexed_streams_share_the_request_path() -> None:
    async with trio.open_nursery() as nursery:
        up = EchoUpstream(
            lambda rec: Reply(headers=[(b"content-length", b"5"), (b"connection", b"keep-alive")])
        )
        h = Harness(nursery, make_snapshot(), up)
        client = h2_client(h)
        gets = [client.open(b"/a/../x%d" % i, headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
                for i in range(5)]
        post = client.open(b"/upload", method=b"POST", body=b"abc", end=False)
        await client.flush()
        client.conn.send_data(post, b"def", end_stream=True)
        sized = client.open(b"/sized", method=b"POST", headers=[(b"content-length", b"4")], body=b"wxyz")
        await client.collect([*gets, post, sized])
        for sid in (*gets, post, sized):
            r = client.responses[sid]
            assert (r.status, r.body) == (200, b"hello"), sid
            assert r.header(b"connection") is None  # connection-specific: never in HTTP/2
            assert r.header(b"server") == b"fastingress"
        by_target = {rec.target: rec for rec in up.requests}
        assert set(by_target) == {b"/x0", b"/x1", b"/x2", b"/x3", b"/x4", b"/upload", b"/sized"}
        rec = by_target[b"/x3"]
        assert rec.header(b"host") == b"example.com"
        assert rec.header(b"cookie") == b"a=1; b=2"
        assert rec.header(b"x-forwarded-proto") == b"http"
        assert rec.header(b"x-forwarded-for") == CLIENT_IP.encode()
        assert by_target[b"/upload"].body == b"abcdef"
        assert by_target[b"/upload"].header(b"transfer-encoding") == b"chunked"
        assert by_target[b"/sized"].body == b"wxyz"
        assert by_target[b"/sized"].header(b"content-length") == b"4"
        assert by_target[b"/sized"].header(b"transfer-encoding") is None
        # one connection at a time per request, reused from the pool
        assert len(h.connects) <= 7
        nursery.cancel_scope.cancel()


async def test_expect_100_continue_gets_an_interim_answer() -> None:
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, make_snapshot(), up)
        client = h2_client(h)
        sid = client.open(b"/up", method=b"POST", body=b"", end=False,
                          headers=[(b"expect", b"100-continue"), (b"content-length", b"3")])
        await client.flush()
        while not any(type(ev).__name__ == "InformationalResponseReceived" for ev in client.events):
            assert await client.receive_once()
        client.conn.send_data(sid, b"abc", end_stream=True)
        await client.collect([sid])
        assert client.responses[sid].status == 200
        assert up.requests[0].body == b"abc"
        assert up.requests[0].header(b"expect") is None
        nursery.cancel_scope.cancel()


async def test_direct_answers_and_errors_over_h2() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())
        h.refuse.add(("10.0.0.1", 80))
        client = h2_client(h)
        teapot = client.open(b"/teapot")
        old = client.open(b"/old")
        missing = client.open(b"/", authority=b"unknown.example")
        bad = client.open(b"/", method=b"GET")
        await client.collect([teapot, old, missing, bad])
        assert client.responses[teapot].status == 418
        assert client.responses[teapot].body == b"short and stout\n"
        assert client.responses[old].status == 301
        assert client.responses[old].header(b"location") == b"https://example.com/new"
        assert client.responses[missing].status == 404
        assert client.responses[bad].status == 502  # connect refused
        nursery.cancel_scope.cancel()


async def test_invalid_request_heads_reset_only_their_stream() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())
        client = h2_client(h)
        spaced = client.open(b"/a b")
        sid = client.open(b"/ok")
        await client.collect([spaced, sid])
        assert client.responses[spaced].reset == PROTOCOL_ERROR
        assert client.responses[sid].status == 200
        nursery.cancel_scope.cancel()


def test_build_request_head() -> None:
    head = build_request_head(
        [(b":method", b"PUT"), (b":scheme", b"https"), (b":path", b"/p?q=1"), (b":authority", b"a.example"),
         (b"x-a", b"1")],
        ended=False,
    )
    assert head is not None
    assert (head.method, head.target) == (b"PUT", b"/p?q=1")
    assert head.headers[0] == (b"host", b"a.example")
    assert (b"transfer-encoding", b"chunked") in head.headers
    ended = build_request_head([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                (b"host", b"h.example")], ended=True)
    assert ended is not None and ended.headers == [(b"host", b"h.example")]
    assert build_request_head([(b":method", b"G T"), *_GOOD[1:]], ended=True) is None
    assert build_request_head([*_GOOD[:2], (b":path", b"/\x01"), _GOOD[3]], ended=True) is None


async def test_content_length_mismatch_is_a_protocol_error() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())
        client = h2_client(h)
        client.open(b"/x", method=b"POST", headers=[(b"content-length", b"10")], body=b"abc")
        await client.until_closed()
        assert client.goaway is not None and client.goaway.error_code == PROTOCOL_ERROR
        nursery.cancel_scope.cancel()


# ---- flow control ---------------------------------------------------------------------


class LockstepHarness(Harness):
    """Upstream connections are lockstep streams: a send only completes when it is read."""

    async def connect(self, host: str, port: int, timeout: float) -> trio.abc.Stream:
        self.connects.append((host, port))
        ours, theirs = trio.testing.lockstep_stream_pair()
        self.nursery.start_soon(self.upstream, theirs, (host, port))
        return ours


async def test_slow_client_never_makes_the_worker_buffer_the_upstream() -> None:
    total = 4 * 1024 * 1024
    sent = [0]

    async def big(stream: trio.abc.Stream, address: Address) -> None:
        conn = h11.Connection(h11.SERVER)
        while not isinstance(ev := conn.next_event(), h11.EndOfMessage):
            if ev is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
            (b"content-length", str(total).encode())])) or b"")
        piece = b"z" * 16384
        for _ in range(total // len(piece)):
            await stream.send_all(conn.send(h11.Data(data=piece)) or b"")
            sent[0] += len(piece)
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

    async with trio.open_nursery() as nursery:
        h = LockstepHarness(nursery, make_snapshot(), big)
        # a tiny window, never opened while we measure
        client = h2_client(h, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1024}, auto_ack=False)
        sid = client.open(b"/big")
        await client.flush()
        while not client.responses[sid].body:
            assert await client.receive_once()
        await trio.testing.wait_all_tasks_blocked()
        # bounded: the client got at most its window; the worker holds at most one read
        assert len(client.responses[sid].body) <= 1024
        assert sent[0] <= 256 * 1024, sent[0]
        # opening the window lets the rest through, intact
        client.auto_ack = True
        client.conn.increment_flow_control_window(1 << 30)
        client.conn.increment_flow_control_window(1 << 30, stream_id=sid)
        client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        await client.collect([sid])
        r = client.responses[sid]
        assert r.status == 200 and r.ended
        assert r.body == b"z" * total
        nursery.cancel_scope.cancel()


async def test_upload_is_acknowledged_only_as_it_is_forwarded() -> None:
    received = [0]
    release = trio.Event()

    async def stalled(stream: trio.abc.Stream, address: Address) -> None:
        conn = h11.Connection(h11.SERVER)
        while not isinstance(conn.next_event(), h11.Request):
            conn.receive_data(bytes(await stream.receive_some(65536)))
        await release.wait()  # read the head, then stall
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(ev, h11.Data):
                received[0] += len(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                break
        out = conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"2")])) or b""
        out += (conn.send(h11.Data(data=b"ok")) or b"") + (conn.send(h11.EndOfMessage()) or b"")
        await stream.send_all(out)

    async with trio.open_nursery() as nursery:
        h = LockstepHarness(nursery, make_snapshot(max_body_size=0), stalled)
        client = h2_client(h)
        sid = client.open(b"/up", method=b"POST", end=False)
        await client.flush()
        payload = b"u" * (1024 * 1024)
        offset = 0
        # send as much as the windows allow, reading what the server sends meanwhile
        while offset < len(payload):
            room = min(client.conn.local_flow_control_window(sid), 16384)
            if room <= 0:
                with trio.move_on_after(1):  # (a generous bound; the assertion is below)
                    await client.receive_once()
                await trio.testing.wait_all_tasks_blocked()
                if client.conn.local_flow_control_window(sid) <= 0:
                    break
                continue
            client.conn.send_data(sid, payload[offset:offset + room])
            offset += room
            await client.flush()
        # the worker acknowledged at most what it forwarded: the window closed with the
        # upstream stalled, so no more than one window (+ one read in flight) was taken
        assert offset <= 65535 + 65536 * 2, offset
        release.set()
        while offset < len(payload):
            room = min(client.conn.local_flow_control_window(sid), 16384, len(payload) - offset)
            if room <= 0:
                assert await client.receive_once()
                continue
            client.conn.send_data(sid, payload[offset:offset + room])
            offset += room
            await client.flush()
        client.conn.end_stream(sid)
        await client.collect([sid])
        assert client.responses[sid].status == 200
        assert received[0] == len(payload)
        nursery.cancel_scope.cancel()


# ---- resets, drain ---------------------------------------------------------------------


async def test_reset_of_one_stream_leaves_the_others_alone() -> None:
    async with trio.open_nursery() as nursery:
        up = GatedUpstream()
        h = Harness(nursery, make_snapshot(), up)
        client = h2_client(h)
        slow = client.open(b"/slow")
        fast = client.open(b"/fast")
        await client.collect([fast])
        assert client.responses[fast].body == b"done"
        while up.waiting < 1:
            await trio.testing.wait_all_tasks_blocked()
        client.conn.reset_stream(slow, h2.errors.ErrorCodes.CANCEL)
        again = client.open(b"/again")
        await client.collect([again])
        assert client.responses[again].status == 200
        assert not client.responses[slow].ended
        assert client.goaway is None
        nursery.cancel_scope.cancel()


async def test_goaway_on_drain_lets_in_flight_streams_finish() -> None:
    async with trio.open_nursery() as nursery:
        up = GatedUpstream()
        h = Harness(nursery, make_snapshot(), up)
        client = h2_client(h)
        slow = client.open(b"/slow")
        await client.flush()
        while up.waiting < 1:
            await trio.testing.wait_all_tasks_blocked()
        h.worker.start_drain()
        while client.goaway is None:
            assert await client.receive_once()
        assert client.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        assert client.goaway.last_stream_id == slow
        assert not h.worker.drained.is_set()
        up.release.set()
        await client.until_closed()
        assert client.responses[slow].status == 200
        assert client.responses[slow].body == b"done"
        with trio.fail_after(5):
            await h.worker.drained.wait()
        nursery.cancel_scope.cancel()


async def test_idle_connection_closes_after_keepalive_timeout(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(settings=GlobalSettings(keepalive_timeout=7.0)))
        client = h2_client(h)
        assert (await client.request(b"/x")).status == 200
        start = trio.current_time()
        await client.until_closed()
        assert 7.0 <= trio.current_time() - start < 8.0
        assert client.goaway is not None and client.goaway.error_code == 0
        nursery.cancel_scope.cancel()


# ---- limits and attacks ----------------------------------------------------------------


async def _still_serves(h: Harness) -> None:
    other = h2_client(h)
    assert (await other.request(b"/after")).status == 200


async def test_settings_advertised() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(settings=GlobalSettings(http2_max_concurrent_streams=7,
                                                                   max_header_bytes=9000)))
        client = h2_client(h)
        await client.flush()
        while not client.remote_settings_seen.is_set():
            assert await client.receive_once()
        remote = client.conn.remote_settings
        assert remote.max_concurrent_streams == 7
        assert remote.max_header_list_size == 9000
        assert remote.enable_push == 0
        # an eighth concurrent stream is a protocol violation (raw frames: h2 as a client
        # would not send it)
        up = GatedUpstream()
        h.upstream = up
        for sid in range(1, 17, 2):
            frame = HeadersFrame(sid)
            frame.flags.add("END_HEADERS")
            frame.flags.add("END_STREAM")
            frame.data = client.conn.encoder.encode([
                (b":method", b"GET"), (b":path", b"/slow"), (b":scheme", b"http"),
                (b":authority", b"example.com"),
            ])
            await client.raw(frame.serialize())
        await client.until_closed()
        assert client.goaway is not None and client.goaway.error_code == PROTOCOL_ERROR
        up.release.set()
        nursery.cancel_scope.cancel()


async def test_rapid_reset_gets_goaway_enhance_your_calm() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(), GatedUpstream())
        client = h2_client(h)
        limit = H2Limits.from_settings(GlobalSettings()).max_resets
        for _ in range(limit + 10):
            sid = client.open(b"/slow")
            client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        await client.until_closed()
        assert client.goaway is not None and client.goaway.error_code == ENHANCE_YOUR_CALM
        await _still_serves(h)
        nursery.cancel_scope.cancel()


async def test_settings_flood_gets_goaway() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())
        client = h2_client(h)
        await client.flush()
        await client.raw(b"".join(SettingsFrame(0).serialize() for _ in range(1000)))
        await client.until_closed()
        assert client.goaway is not None and client.goaway.error_code == ENHANCE_YOUR_CALM
        await _still_serves(h)
        nursery.cancel_scope.cancel()


async def test_ping_flood_gets_goaway() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())
        client = h2_client(h)
        await client.flush()
        ping = PingFrame(0)
        ping.opaque_data = b"12345678"
        await client.raw(ping.serialize() * 1000)
        await client.until_closed()
        assert client.goaway is not None and client.goaway.error_code == ENHANCE_YOUR_CALM
        pongs = sum(1 for ev in client.events if type(ev).__name__ == "PingAckReceived")
        assert pongs <= H2Limits().max_pings
        await _still_serves(h)
        nursery.cancel_scope.cancel()


async def test_hpack_bomb_is_bounded_by_the_decompressed_size() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())
        client = h2_client(h)
        # one 4 KiB literal in the dynamic table, then referenced: ~4 KiB on the wire,
        # 400 KiB decompressed
        client.open(b"/", headers=[(b"x-bomb", b"b" * 4000)] * 100)
        await client.until_closed()
        assert client.goaway is not None and client.goaway.error_code == ENHANCE_YOUR_CALM
        await _still_serves(h)
        nursery.cancel_scope.cancel()


async def test_continuation_flood_is_cut() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())
        client = h2_client(h)
        await client.flush()
        head = HeadersFrame(1)
        head.data = client.conn.encoder.encode([(b":method", b"GET"), (b":path", b"/"),
                                                (b":scheme", b"http"), (b":authority", b"example.com")])
        frames = [head.serialize()]
        for _ in range(10000):  # never END_HEADERS
            cont = ContinuationFrame(1)
            cont.data = b"\x00" * 16
            frames.append(cont.serialize())
        with trio.move_on_after(10):
            with contextlib.suppress(trio.BrokenResourceError):
                await client.raw(b"".join(frames))
        await client.until_closed()
        assert client.goaway is not None and client.goaway.error_code == PROTOCOL_ERROR
        await _still_serves(h)
        nursery.cancel_scope.cancel()


async def test_malformed_request_resets_only_its_stream() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())
        client = h2_client(h, validate=False)
        bad = client.open(b"/", headers=[(b"connection", b"keep-alive")])
        upper = client.open(b"/", headers=[(b"X-Upper", b"1")])
        good = client.open(b"/ok")
        await client.collect([bad, upper, good])
        assert client.responses[bad].reset == PROTOCOL_ERROR
        assert client.responses[upper].reset == PROTOCOL_ERROR
        assert client.responses[good].status == 200
        assert client.goaway is None
        nursery.cancel_scope.cancel()


_GOOD = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a.example")]


@pytest.mark.parametrize(
    "headers",
    [
        [*_GOOD, (b"Upper", b"x")],
        [*_GOOD, (b"bad name", b"x")],
        [*_GOOD, (b"x", b"a\r\nb")],
        [*_GOOD, (b"x", b" padded")],
        [*_GOOD, (b"x", b"a\x01b")],
        [*_GOOD, (b"connection", b"close")],
        [*_GOOD, (b"transfer-encoding", b"chunked")],
        [*_GOOD, (b"upgrade", b"websocket")],
        [*_GOOD, (b"te", b"gzip")],
        [*_GOOD, (b"x", b"1"), (b":path", b"/late")],
        [*_GOOD, (b":path", b"/twice")],
        [*_GOOD, (b":protocol", b"websocket")],
        [*_GOOD, (b"host", b"other.example")],
        [*_GOOD, (b"content-length", b"1x")],
        [*_GOOD, (b"content-length", b"1"), (b"content-length", b"2")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],  # no authority
        [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"a.example")],  # no scheme
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a.example")],  # no path
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", b"a")],
        [(b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a.example")],  # no method
    ],
)
def test_malformed_request_heads(headers: list[tuple[bytes, bytes]]) -> None:
    assert build_request_head(headers, ended=True) is None


def test_well_formed_request_heads() -> None:
    head = build_request_head([*_GOOD, (b"te", b"trailers"), (b"host", b"a.example"),
                               (b"content-length", b"3"), (b"content-length", b"3")], ended=False)
    assert head is not None
    assert head.headers == [(b"host", b"a.example"), (b"te", b"trailers"), (b"content-length", b"3")]
    connect = build_request_head([(b":method", b"CONNECT"), (b":authority", b"a.example:443")], ended=False)
    assert connect is not None and connect.method == b"CONNECT"


def test_goaway_frame_bytes() -> None:
    frame = GoAwayFrame(0)
    frame.last_stream_id = 77
    frame.error_code = 11
    assert goaway_frame(77, 11) == frame.serialize()


def test_flood_meter_window() -> None:
    meter = FloodMeter(limit=3, window=10.0)
    assert not any(meter.hit(t) for t in (0.0, 1.0, 2.0))
    assert meter.hit(3.0)  # 4 in 10 s
    meter = FloodMeter(limit=3, window=10.0)
    assert not any(meter.hit(t) for t in (0.0, 11.0, 22.0, 33.0))  # spread out: fine


async def test_preface_is_refused_when_http2_is_off() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(settings=GlobalSettings(http2=False)))
        client = h.client()  # an HTTP/1.1 peer reads the answer to the preface
        await client.stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        answer = b""
        while data := await client.stream.receive_some(65536):
            answer += data
        assert answer.startswith(b"HTTP/1.1 505 ")
        nursery.cancel_scope.cancel()


async def test_http1_still_served_beside_h2() -> None:
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot())
        resp = await h.client().request()
        assert resp.status == 200
        client = h2_client(h)
        assert (await client.request(b"/x")).status == 200
        nursery.cancel_scope.cancel()


# ---- HTTP/2 upstreams (gRPC): trailers ---------------------------------------------------


class GrpcPeer:
    """An h2 upstream (prior knowledge) answering every request with a body and trailers."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery

    async def __call__(self, stream: trio.abc.Stream, address: Address) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        await stream.send_all(conn.data_to_send())
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await stream.receive_some(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.StreamEnded):
                        sid = ev.stream_id or 0
                        conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
                        conn.send_data(sid, b"\x00\x00\x00\x00\x02hi")
                        conn.send_headers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"ok")],
                                          end_stream=True)
                await stream.send_all(conn.data_to_send())


async def test_trailers_from_a_grpc_upstream_reach_an_h2_client() -> None:
    async with trio.open_nursery() as nursery:
        upstream = Upstream(APP, endpoints=(Endpoint("10.0.0.1", 50051),), protocol="GRPC")
        h = Harness(nursery, make_snapshot(upstream=upstream), GrpcPeer(nursery))
        client = h2_client(h)
        sid = client.open(b"/pkg.Svc/Call", method=b"POST", body=b"\x00\x00\x00\x00\x00",
                          headers=[(b"content-type", b"application/grpc"), (b"te", b"trailers")])
        await client.collect([sid])
        r = client.responses[sid]
        assert r.status == 200
        assert r.body == b"\x00\x00\x00\x00\x02hi"
        assert dict(r.trailers) == {b"grpc-status": b"0", b"grpc-message": b"ok"}
        nursery.cancel_scope.cancel()
