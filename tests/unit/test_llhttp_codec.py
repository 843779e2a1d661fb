"""The llhttp codecs (``workers.llhttp``): the behaviours the proxy relies on.

(What they read is checked against h11 in ``test_codec_differential.py``; here: framing of
what we send, connection reuse, 100-continue, protocol switches, EOF, HEAD answers, limits.)
"""

from __future__ import annotations

import pytest

from fastingress.errors import BadRequest, HeadersTooLarge, UpstreamFailed
from workers.http1 import Body, Event, RequestHead, ResponseHead, Signal
from workers.llhttp import ClientCodec, LocalProtocolError, ServerCodec, reason_phrase

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def drain(codec: ServerCodec | ClientCodec) -> list[Event]:
    """Events up to NEED_DATA, PAUSED or CLOSED (included)."""
    out: list[Event] = []
    while True:
        ev = codec.next_event()
        out.append(ev)
        if ev in (Signal.NEED_DATA, Signal.PAUSED, Signal.CLOSED):
            return out


def server(data: bytes = GET, limit: int = 8192) -> ServerCodec:
    codec = ServerCodec(limit)
    codec.receive_data(data)
    return codec


def read_request(codec: ServerCodec) -> RequestHead:
    head = codec.next_event()
    assert isinstance(head, RequestHead)
    return head


# ---- responses we write -------------------------------------------------------------------

def test_content_length_passes_through() -> None:
    codec = server()
    assert drain(codec)[1:] == [Signal.END, Signal.NEED_DATA]
    out = codec.response_head(200, [(b"content-length", b"5"), (b"x-a", b"1")])
    assert out == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\n"
    assert codec.data(b"hel") + codec.data(b"lo") == b"hello"
    assert codec.end() == b""
    assert codec.reusable


def test_content_length_is_enforced() -> None:
    codec = server()
    drain(codec)
    codec.response_head(200, [(b"content-length", b"2")])
    with pytest.raises(LocalProtocolError):
        codec.data(b"abc")
    codec.data(b"a")
    with pytest.raises(LocalProtocolError):
        codec.end()


def test_unframed_response_is_chunked_for_http11_with_trailers() -> None:
    codec = server()
    drain(codec)
    head = codec.response_head(200, [(b"content-length", b"9"), (b"transfer-encoding", b"chunked")])
    assert head == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"  # (chunked wins, CL dropped)
    assert codec.data(b"hello") == b"5\r\nhello\r\n"
    assert codec.data(b"") == b""
    assert codec.end([(b"grpc-status", b"0")]) == b"0\r\ngrpc-status: 0\r\n\r\n"
    assert codec.reusable


def test_unframed_response_to_http10_ends_at_close() -> None:
    codec = server(b"GET / HTTP/1.0\r\n\r\n")
    assert [type(e) for e in drain(codec)][:2] == [RequestHead, Signal]
    head = codec.response_head(200, [(b"x-a", b"1")])
    assert head == b"HTTP/1.1 200 OK\r\nx-a: 1\r\nconnection: close\r\n\r\n"
    assert codec.data(b"raw") == b"raw"
    assert codec.end() == b""
    assert not codec.reusable


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", 200), (b"GET", 204), (b"GET", 304)])
def test_no_body_for_head_204_304(method: bytes, status: int) -> None:
    codec = server(method + b" / HTTP/1.1\r\nHost: a\r\n\r\n")
    drain(codec)
    head = codec.response_head(status, [(b"content-length", b"5")])
    assert head.endswith(b"content-length: 5\r\n\r\n")
    assert codec.data(b"hello") == b""  # (the proxy's own answers pass a body: dropped)
    assert codec.end() == b""
    assert codec.reusable


def test_head_answer_has_the_framing_headers_of_a_get() -> None:
    codec = server(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    drain(codec)
    assert codec.response_head(200, []) == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    assert codec.end() == b""
    assert codec.reusable


def test_informational_answers() -> None:
    codec = server(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    read_request(codec)
    assert codec.waiting_for_100_continue
    assert codec.informational(100, []) == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert not codec.waiting_for_100_continue
    hints = codec.informational(103, [(b"link", b"</a>")], b"Hints")
    assert hints == b"HTTP/1.1 103 Hints\r\nlink: </a>\r\n\r\n"
    assert codec.can_respond
    codec.receive_data(b"ok")
    assert drain(codec) == [Body(b"ok"), Signal.END, Signal.NEED_DATA]


@pytest.mark.parametrize(
    "request_bytes",
    [b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n",
     b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n"],
)
def test_connection_close_when_not_kept_alive(request_bytes: bytes) -> None:
    codec = server(request_bytes)
    drain(codec)
    assert not codec.keep_alive
    out = codec.response_head(200, [(b"content-length", b"0"), (b"connection", b"keep-alive")])
    assert out.endswith(b"content-length: 0\r\nconnection: close\r\n\r\n")
    codec.end()
    assert not codec.reusable
    with pytest.raises(LocalProtocolError):
        codec.start_next_cycle()


def test_our_connection_close_ends_reuse() -> None:
    codec = server()
    drain(codec)
    codec.response_head(200, [(b"content-length", b"0"), (b"connection", b"close")])
    codec.end()
    assert not codec.reusable


def test_error_answer_before_any_request_closes() -> None:
    codec = server(b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n")
    with pytest.raises(BadRequest) as exc:
        codec.next_event()
    assert exc.value.status_hint == 400
    with pytest.raises(BadRequest):  # (an error stays)
        codec.next_event()
    assert codec.can_respond
    out = codec.response_head(400, [(b"content-length", b"0")])
    assert out == b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    codec.end()
    assert not codec.reusable


@pytest.mark.parametrize(
    ("status", "reason", "line"),
    [(503, b"", b"HTTP/1.1 503 Service Unavailable\r\n"), (308, b"", b"HTTP/1.1 308 Permanent Redirect\r\n"),
     (599, b"", b"HTTP/1.1 599 Unknown\r\n"), (200, b"Fine", b"HTTP/1.1 200 Fine\r\n")],
)
def test_reason_phrases(status: int, reason: bytes, line: bytes) -> None:
    codec = server()
    drain(codec)
    assert codec.response_head(status, [(b"content-length", b"0")], reason).startswith(line)
    assert reason_phrase(599) == b"Unknown"


def test_one_response_per_cycle() -> None:
    codec = server()
    drain(codec)
    codec.response_head(200, [(b"content-length", b"0")])
    assert not codec.can_respond
    with pytest.raises(LocalProtocolError):
        codec.response_head(200, [(b"content-length", b"0")])


# ---- cycles -------------------------------------------------------------------------------

def answer(codec: ServerCodec) -> None:
    codec.response_head(200, [(b"content-length", b"0")])
    codec.end()


def test_pipelined_requests_wait_for_the_next_cycle() -> None:
    codec = server(GET + b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx"
                   + b"GET /3 HTTP/1.0\r\n\r\n")
    assert codec.next_event() == RequestHead(b"GET", b"/", [(b"host", b"a")], b"1.1")
    assert codec.next_event() is Signal.END
    assert codec.their_message_done
    assert codec.next_event() is Signal.PAUSED  # (the next request waits)
    answer(codec)
    assert codec.keep_alive  # (the HTTP/1.0 request behind does not change this one)
    assert codec.reusable
    codec.start_next_cycle()
    assert not codec.nothing_buffered
    assert read_request(codec).target == b"/p"
    assert drain(codec) == [Body(b"x"), Signal.END, Signal.PAUSED]
    answer(codec)
    codec.start_next_cycle()
    assert read_request(codec).http_version == b"1.0"
    assert codec.next_event() is Signal.END
    answer(codec)
    assert not codec.reusable


def test_nothing_buffered_and_need_data() -> None:
    codec = ServerCodec(8192)
    assert codec.nothing_buffered
    assert codec.next_event() is Signal.NEED_DATA
    codec.receive_data(GET[:10])
    assert not codec.nothing_buffered
    assert codec.next_event() is Signal.NEED_DATA
    codec.receive_data(GET[10:])
    read_request(codec)
    assert codec.next_event() is Signal.END
    assert codec.next_event() is Signal.NEED_DATA
    answer(codec)
    codec.start_next_cycle()
    assert codec.nothing_buffered
    assert not codec.their_message_done
    assert codec.can_respond


def test_not_reusable_until_the_request_is_read() -> None:
    codec = server(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    read_request(codec)
    assert codec.next_event() == Body(b"abc")
    answer(codec)  # (an early answer, e.g. 413)
    assert not codec.their_message_done
    assert not codec.reusable


def test_input_buffers_are_copied() -> None:
    buf = bytearray(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    codec = ServerCodec(8192)
    codec.receive_data(memoryview(buf))
    buf[-3:] = b"xyz"
    read_request(codec)
    assert codec.next_event() == Body(b"abc")


# ---- 100-continue ---------------------------------------------------------------------------

def test_waiting_for_100_continue_ends_with_the_body_or_an_answer() -> None:
    request = b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
    codec = server(request)
    read_request(codec)
    assert codec.waiting_for_100_continue
    assert codec.next_event() is Signal.NEED_DATA
    codec.receive_data(b"x")
    assert codec.next_event() == Body(b"x")
    assert not codec.waiting_for_100_continue
    codec = server(request)
    read_request(codec)
    codec.response_head(417, [(b"content-length", b"0")])
    assert not codec.waiting_for_100_continue
    codec = server(request.replace(b"HTTP/1.1", b"HTTP/1.0"))
    read_request(codec)
    assert not codec.waiting_for_100_continue


# ---- protocol switches ----------------------------------------------------------------------

UPGRADE = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


def test_upgrade_switches_with_trailing_data() -> None:
    codec = server(UPGRADE + b"\x81\x05")
    read_request(codec)
    assert codec.next_event() is Signal.END
    assert codec.next_event() is Signal.PAUSED
    out = codec.informational(101, [(b"upgrade", b"websocket"), (b"connection", b"upgrade")])
    assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert codec.switched and not codec.can_respond and not codec.reusable
    codec.receive_data(b"hello")
    assert codec.trailing_data == b"\x81\x05hello"
    assert codec.next_event() is Signal.PAUSED


def test_101_needs_an_upgrade_request() -> None:
    codec = server()
    drain(codec)
    with pytest.raises(LocalProtocolError):
        codec.informational(101, [])


def test_declined_upgrade_reads_the_next_request() -> None:
    codec = server(UPGRADE + GET)
    read_request(codec)
    assert codec.next_event() is Signal.END
    answer(codec)
    assert not codec.switched and codec.reusable
    codec.start_next_cycle()
    assert read_request(codec).target == b"/"


# ---- EOF ----------------------------------------------------------------------------------

def test_eof_between_requests_is_closed() -> None:
    codec = server()
    drain(codec)
    answer(codec)
    codec.start_next_cycle()
    codec.receive_data(b"")
    assert codec.next_event() is Signal.CLOSED
    assert ServerCodec(100).next_event() is Signal.NEED_DATA


@pytest.mark.parametrize("data", [GET[:5], b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab",
                                  b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab"])
def test_eof_mid_request_is_400(data: bytes) -> None:
    codec = server(data)
    codec.receive_data(b"")
    with pytest.raises(BadRequest) as exc:
        drain(codec)
    assert exc.value.status_hint == 400


# ---- limits -------------------------------------------------------------------------------

@pytest.mark.parametrize("pieces", [1, 3, 400])
def test_head_limit_431_whole_or_in_pieces(pieces: int) -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 2000 + b"\r\n\r\n"
    codec = ServerCodec(1024)
    size = -(-len(head) // pieces)
    for i in range(0, len(head), size):
        codec.receive_data(head[i:i + size])
    with pytest.raises(HeadersTooLarge) as exc:
        drain(codec)
    assert exc.value.status_hint == 431
    assert len(head) <= 2048
    codec = ServerCodec(2048)
    for i in range(0, len(head), size):
        codec.receive_data(head[i:i + size])
    assert read_request(codec).headers[-1] == (b"x-big", b"x" * 2000)


def test_incomplete_head_over_the_limit_is_431_at_once() -> None:
    codec = ServerCodec(1024)
    codec.receive_data(b"GET / HTTP/1.1\r\nX: " + b"x" * 1100)
    with pytest.raises(HeadersTooLarge):
        codec.next_event()


def test_garbage_start_is_refused_before_its_line_ends() -> None:
    codec = ServerCodec(8192)
    codec.receive_data(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS ClientHello
    with pytest.raises(BadRequest):
        codec.next_event()


# ---- trailers -----------------------------------------------------------------------------

def test_received_trailers_end_the_message() -> None:
    codec = server(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\n")
    read_request(codec)
    assert drain(codec) == [Body(b"abc"), Signal.NEED_DATA]
    codec.receive_data(b"\r\n")
    assert drain(codec) == [Signal.END, Signal.NEED_DATA]


# ---- the upstream side ----------------------------------------------------------------------

def client(method: bytes = b"GET", headers: list[tuple[bytes, bytes]] | None = None) -> ClientCodec:
    codec = ClientCodec()
    codec.request_head(method, b"/", headers or [(b"host", b"h")])
    codec.end()
    return codec


def test_request_framing() -> None:
    codec = ClientCodec()
    head = codec.request_head(b"POST", b"/p?q", [(b"host", b"h"), (b"content-length", b"3")])
    assert head == b"POST /p?q HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\n"
    assert codec.data(b"abc") == b"abc"
    assert codec.end() == b""
    codec = ClientCodec()
    head = codec.request_head(b"POST", b"/", [(b"host", b"h"), (b"transfer-encoding", b"chunked")])
    assert head.endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert codec.data(b"abc") + codec.end() == b"3\r\nabc\r\n0\r\n\r\n"
    codec = ClientCodec()
    head = codec.request_head(b"GET", b"/", [(b"host", b"h")])
    assert head + codec.end() == b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"


def test_answer_with_content_length_is_reusable() -> None:
    codec = client()
    assert codec.nothing_buffered
    codec.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert not codec.nothing_buffered
    assert drain(codec) == [ResponseHead(200, [(b"content-length", b"2")], b"OK", b"1.1"), Body(b"ok"),
                            Signal.END, Signal.NEED_DATA]
    assert codec.reusable and codec.their_message_done
    codec.start_next_cycle()
    assert codec.nothing_buffered and not codec.their_message_done


def test_interim_answers_then_the_answer() -> None:
    codec = client(b"POST")
    codec.receive_data(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
    assert [e.status for e in drain(codec) if isinstance(e, ResponseHead)] == [100, 103]
    assert not codec.their_message_done
    codec.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert drain(codec)[1:] == [Signal.END, Signal.NEED_DATA]
    assert codec.reusable


def test_close_delimited_answer_ends_at_eof() -> None:
    codec = client()
    codec.receive_data(b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert drain(codec)[1:] == [Body(b"some"), Signal.NEED_DATA]
    codec.receive_data(b" more")
    codec.receive_data(b"")
    assert drain(codec) == [Body(b" more"), Signal.END, Signal.CLOSED]
    assert not codec.reusable


@pytest.mark.parametrize(
    "data", [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", b"HTTP/1.1 200 OK\r\n", b""]
)
def test_eof_mid_answer_is_upstream_failed(data: bytes) -> None:
    codec = client()
    codec.receive_data(data)
    codec.receive_data(b"")
    with pytest.raises(UpstreamFailed) as exc:
        drain(codec)
    assert exc.value.status_hint == 502


def test_idle_pooled_connection_closed_by_upstream() -> None:
    codec = client()
    codec.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    drain(codec)
    codec.start_next_cycle()
    codec.receive_data(b"")
    assert codec.next_event() is Signal.CLOSED
    assert not codec.reusable


@pytest.mark.parametrize("pieces", [1, 2, 7])
def test_head_answer_ends_at_its_head(pieces: int) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nTransfer-Encoding-Was: no\r\n\r\n"
    codec = client(b"HEAD")
    size = -(-len(data) // pieces)
    for i in range(0, len(data), size):
        codec.receive_data(data[i:i + size])
    events = drain(codec)
    assert isinstance(events[0], ResponseHead)
    assert events[1:] == [Signal.END, Signal.NEED_DATA]
    assert codec.reusable
    codec.start_next_cycle()
    codec.request_head(b"GET", b"/", [(b"host", b"h")])
    codec.end()
    codec.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert drain(codec)[1:] == [Body(b"x"), Signal.END, Signal.NEED_DATA]


def test_bytes_after_a_head_answer_make_the_connection_unusable() -> None:
    codec = client(b"HEAD")
    codec.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
    assert drain(codec)[1:] == [Signal.END, Signal.PAUSED]
    assert not codec.reusable


def test_upstream_switch() -> None:
    codec = client(headers=[(b"host", b"h"), (b"connection", b"upgrade"), (b"upgrade", b"websocket")])
    codec.receive_data(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81"
    )
    head = codec.next_event()
    assert isinstance(head, ResponseHead) and head.status == 101
    assert codec.switched and not codec.reusable
    codec.receive_data(b"\x00")
    assert codec.trailing_data == b"\x81\x00"
    assert codec.next_event() is Signal.PAUSED


def test_upstream_switch_nobody_asked_for() -> None:
    codec = client()
    codec.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    with pytest.raises(UpstreamFailed):
        codec.next_event()


def test_response_head_limit() -> None:
    codec = client()
    codec.receive_data(b"HTTP/1.1 200 OK\r\nX: " + b"x" * 20000)
    with pytest.raises(UpstreamFailed):
        codec.next_event()
    codec = ClientCodec(64 * 1024)
    codec.request_head(b"GET", b"/", [(b"host", b"h")])
    codec.end()
    codec.receive_data(b"HTTP/1.1 200 OK\r\nX: " + b"x" * 20000 + b"\r\nContent-Length: 0\r\n\r\n")
    assert drain(codec)[1:] == [Signal.END, Signal.NEED_DATA]


@pytest.mark.parametrize("pieces", [1, 5000])
def test_chunk_size_line_is_bounded(pieces: int) -> None:
    line = b"3;" + b";".join(b"x%d=y" % i for i in range(1500)) + b"\r\nabc\r\n0\r\n\r\n"
    codec = server(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    read_request(codec)
    size = -(-len(line) // pieces)
    for i in range(0, len(line), size):
        codec.receive_data(line[i:i + size])
    with pytest.raises(BadRequest):
        drain(codec)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [([(b"x-a", b"1\r\nSet-Cookie: a=b")], b""), ([(b"x a", b"1")], b""), ([(b"x-a", b"a\x00")], b""),
     ([], b"OK\r\nX: 1")],
)
def test_untrusted_fields_are_checked_as_h11_does(
    headers: list[tuple[bytes, bytes]], reason: bytes
) -> None:
    codec = server()
    drain(codec)
    with pytest.raises(LocalProtocolError):
        codec.response_head(200, headers, reason)
    with pytest.raises(LocalProtocolError):
        codec.informational(103, headers, reason)
    assert codec.can_respond  # (nothing was started)
    if headers:
        with pytest.raises(LocalProtocolError):
            ClientCodec().request_head(b"GET", b"/", [(b"host", b"h"), *headers])


def test_untrusted_request_line_is_checked() -> None:
    for method, target in [(b"GET", b"/a b"), (b"GET", b"/\r\nX: 1"), (b"G T", b"/")]:
        with pytest.raises(LocalProtocolError):
            ClientCodec().request_head(method, target, [(b"host", b"h")])
    trusted = ClientCodec().request_head(b"GET", b"/a b", [(b"host", b"h")], trusted=True)
    assert trusted.startswith(b"GET /a b ")  # (trusted: not checked, as with h11)


# ---- bodies moved by the kernel (workers.splice) ------------------------------------------

def test_spliced_body_completes_both_sides() -> None:
    up = client()
    up.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
    head = up.next_event()
    assert isinstance(head, ResponseHead)
    assert up.next_event() == Body(b"x" * 1000)
    assert up.body_left == 99000
    down = server()
    drain(down)
    down.response_head(200, [(b"content-length", b"100000")], trusted=True)
    down.data(b"x" * 1000)
    assert down.body_left == 99000
    with pytest.raises(LocalProtocolError):
        down.body_sent_elsewhere(99001)
    down.body_sent_elsewhere(99000)
    up.body_taken_elsewhere()
    assert up.body_left is None
    assert drain(up) == [Signal.END, Signal.NEED_DATA]
    assert down.end() == b""
    assert up.reusable and down.reusable
    up.start_next_cycle()  # (a fresh parser reads the next answer)
    up.request_head(b"GET", b"/", [(b"host", b"h")])
    up.end()
    up.receive_data(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert drain(up)[1:] == [Signal.END, Signal.NEED_DATA]


def test_body_left_only_for_content_length() -> None:
    up = client()
    up.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    drain(up)
    assert up.body_left is None
    with pytest.raises(LocalProtocolError):
        up.body_taken_elsewhere()
    down = server()
    drain(down)
    down.response_head(200, [])
    assert down.body_left is None


def test_release_drops_the_parser() -> None:
    codec = server(GET + GET)
    codec.release()
    assert codec.next_event() is Signal.NEED_DATA


# --- the fast lanes of the core (relay_head, forward_head) against the general path ----------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from workers.heads import RESP_DROP, response_headers  # noqa: E402
from workers.llhttp import ClientCodec as _FastClient  # noqa: E402
from workers.llhttp import ServerCodec as _FastServer  # noqa: E402

_NAMES = st.sampled_from([
    b"content-type", b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"server",
    b"date", b"set-cookie", b"x-a", b"te", b"trailer", b"upgrade", b"vary", b"proxy-authenticate",
])
_VALUES = st.sampled_from([b"1", b"24", b"text/plain", b"close", b"keep-alive", b"upgrade", b"chunked",
                           b"x-a", b"a, b", b"Keep-Alive"])
_REQUESTS = st.sampled_from([
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
])


def _request_codec(raw: bytes) -> _FastServer:
    codec = _FastServer(32768)
    codec.receive_data(raw)
    while codec.next_event() is not Signal.END:
        pass
    return codec


@settings(max_examples=400, derandomize=True, database=None)
@given(_REQUESTS, st.sampled_from([200, 204, 304, 404, 101, 100]),
       st.lists(st.tuples(_NAMES, _VALUES), max_size=6))
def test_relay_head_is_the_general_path_in_one_pass(raw: bytes, status: int,
                                                    fields: list[tuple[bytes, bytes]]) -> None:
    if status < 200:
        return  # (interim answers are never relayed through relay_head)
    lengths = [v for n, v in fields if n == b"content-length"]
    if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
        return  # (the upstream codec never hands on two, or one that is not a number)
    fast, general = _request_codec(raw), _request_codec(raw)
    data = fast.relay_head(status, b"", fields, RESP_DROP, b"server: fi\r\n")
    try:
        expected = general.response_head(status, response_headers(fields, b"fi"), trusted=True)
    except (ValueError, LocalProtocolError):
        assert data is None
        return
    if data is None:
        return  # the general path answers (Connection naming fields, HTTP/1.0 without a length...)
    assert data == expected
    lengths = [int(v) for n, v in fields if n == b"content-length"]
    chunked = any(n == b"transfer-encoding" for n, _ in fields)
    body = b"x" * lengths[0] if lengths and not chunked else b"hello"
    assert fast.data(body) == general.data(body)
    assert fast.end() == general.end()
    assert fast.reusable == general.reusable


@settings(max_examples=200, derandomize=True, database=None)
@given(st.sampled_from([b"GET", b"POST", b"HEAD"]), st.sampled_from([None, 0, 5]), st.booleans(),
       st.lists(st.tuples(st.sampled_from([b"accept", b"x-a", b"cookie"]), _VALUES), max_size=4))
def test_forward_head_is_the_general_path_in_one_pass(method: bytes, length: int | None, chunked: bool,
                                                      fields: list[tuple[bytes, bytes]]) -> None:
    if chunked and length is not None:
        return
    framed = list(fields)
    if length is not None:
        framed.append((b"content-length", b"%d" % length))
    if chunked:
        framed.append((b"transfer-encoding", b"chunked"))
    fast, general = _FastClient(), _FastClient()
    assert fast.forward_head(method, b"/x", framed, length, chunked) == \
        general.request_head(method, b"/x", framed, trusted=True)
    body = b"hello"[: length or 5] if (length or chunked) else b""
    assert fast.data(body) == general.data(body)
    assert fast.end() == general.end()
