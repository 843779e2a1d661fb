"""Our HTTP/1.1 codec interface (workers.http1) on h11."""

from __future__ import annotations

import pytest

from fastingress.errors import BadRequest, HeadersTooLarge, UpstreamFailed
from workers.http1 import Body, ClientCodec, RequestHead, ResponseHead, ServerCodec, Signal


def test_server_parses_request_and_frames_chunked_response() -> None:
    codec = ServerCodec(16 * 1024)
    codec.receive_data(b"POST /p?q=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX-A: b\r\n\r\nab")
    head = codec.next_event()
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.http_version) == (b"POST", b"/p?q=1", b"1.1")
    assert list(head.headers) == [(b"host", b"a"), (b"content-length", b"3"), (b"x-a", b"b")]
    assert codec.next_event() == Body(b"ab")
    assert codec.next_event() is Signal.NEED_DATA
    codec.receive_data(b"c")
    assert codec.next_event() == Body(b"c")
    assert codec.next_event() is Signal.END
    assert codec.their_message_done and codec.can_respond
    out = codec.response_head(200, [(b"x", b"y")]) + codec.data(b"hello") + codec.end()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")  # a reason phrase, though h11 sends none unless given one
    assert b"transfer-encoding: chunked\r\n" in out.lower()
    assert out.endswith(b"5\r\nhello\r\n0\r\n\r\n")
    assert codec.reusable
    codec.start_next_cycle()
    assert codec.next_event() is Signal.NEED_DATA


def test_server_errors_carry_status() -> None:
    codec = ServerCodec(16 * 1024)
    codec.receive_data(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
    with pytest.raises(BadRequest) as exc:
        codec.next_event()
    assert exc.value.status_hint == 400
    assert codec.response_head(400, [(b"content-length", b"0")]).startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("whole", [True, False])
def test_server_head_size_limit(whole: bool) -> None:
    codec = ServerCodec(1024)
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 2000 + b"\r\n\r\n"
    codec.receive_data(head if whole else head[:1500])
    with pytest.raises(HeadersTooLarge) as exc:
        codec.next_event()
    assert exc.value.status_hint == 431


def test_client_side_and_100_continue_from_upstream() -> None:
    codec = ClientCodec()
    out = codec.request_head(b"GET", b"/x", [(b"host", b"h")]) + codec.end()
    assert out == b"GET /x HTTP/1.1\r\nhost: h\r\n\r\n"
    codec.receive_data(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    first = codec.next_event()
    assert isinstance(first, ResponseHead) and first.status == 100
    second = codec.next_event()
    assert isinstance(second, ResponseHead) and (second.status, second.reason) == (200, b"OK")
    assert codec.next_event() == Body(b"ok")
    assert codec.next_event() is Signal.END
    assert codec.reusable


def test_client_garbage_is_upstream_failed() -> None:
    codec = ClientCodec()
    codec.request_head(b"GET", b"/", [(b"host", b"h")])
    codec.end()
    codec.receive_data(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(UpstreamFailed) as exc:
        codec.next_event()
    assert exc.value.status_hint == 502
