"""HTTP/1.1 codecs on llhttp (httptools): the same sans-I/O interface as ``workers.http1``.

Theory of operation
-------------------
``workers.http1`` defines the codec interface the proxy talks to (``ServerCodec`` for the
client side, ``ClientCodec`` for the upstream side) and implements it on h11, the reference.
This module implements the same interface on llhttp, Node's C parser, which is many times
faster; the I/O core uses it on the hot path, and ``--http1-codec h11`` selects the reference.

httptools drives llhttp with callbacks (``on_url``, ``on_header``, ``on_headers_complete``,
``on_body``, ``on_message_complete``); they append events (``RequestHead``/``ResponseHead``,
``Body``, ``Signal.END``) to a queue that ``next_event`` pops, so a caller sees exactly what
it sees from the h11 codec.  httptools parses everything it is fed, pipelined messages too,
but nothing asks for more bytes while a message is pending (``PAUSED``), so the queue holds at
most one read beyond the current message.

Strictness: llhttp's lenient flags stay off, and on top of llhttp this codec refuses what h11
refuses, so that whatever the two codecs would read differently is answered with 400 here
(``tests/unit/test_codec_differential.py`` checks that over Hypothesis input and a corpus of
smuggling and desync cases):

* exactly one ``Host`` in HTTP/1.1 (h11), HTTP/1.0 and 1.1 only (505 otherwise);
* ``Transfer-Encoding`` must be exactly ``chunked`` (501 otherwise, as h11), never with
  ``Content-Length`` (llhttp and nginx: 400), ``Content-Length`` digits only and one value;
* header values are stripped of surrounding blanks and may not hold control characters;
* a request head larger than ``max_header_bytes`` is 431 (llhttp has no limit of its own).

A parse error is queued behind the events that came before it, so a complete request that
precedes garbage in the same read is still served, as with h11.

Writing (``response_head``/``data``/``end`` and ``request_head``) frames messages the way h11
does: Content-Length when given, else chunked to HTTP/1.1 peers and close-delimited to HTTP/1.0
ones; no body for HEAD, 1xx, 204 and 304; ``Connection: close`` when the connection will not be
reused.  Generated responses get their reason phrase (``503 Service Unavailable``) when none is
given.
"""

from __future__ import annotations

from collections import deque
from http import HTTPStatus
from typing import Any

import httptools

from fastingress.errors import BadRequest, HeadersTooLarge, UpstreamFailed
from workers.http1 import Body, Event, Headers, RequestHead, ResponseHead, Signal

_NEED_DATA = Signal.NEED_DATA
_PAUSED = Signal.PAUSED
_END = Signal.END
_CLOSED = Signal.CLOSED

_CHUNKED = b"chunked"
_NO_BODY_STATUS = frozenset({204, 304})
_CTL = frozenset(range(0, 0x20)) - {0x09} | {0x7F}
_CTL_TABLE = bytes(range(256))
_HTTP_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
_REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}


class LocalProtocolError(Exception):
    """We (not the peer) tried to send something the framing forbids (e.g. more body than
    the Content-Length we declared)."""


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def _has_ctl(value: bytes) -> bool:
    """Whether ``value`` holds a control character other than HTAB (h11 refuses them)."""
    return len(value.translate(_CTL_TABLE, _CTL_BYTES)) != len(value)


_CTL_BYTES = bytes(sorted(_CTL))


class _Error:
    """A queued parse error: raised by ``next_event`` once the events before it are consumed."""

    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def _frame_head(first_line: bytes, headers: Headers) -> bytes:
    parts = [first_line]
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class _Writer:
    """Framing of the messages we send (one per cycle)."""

    __slots__ = ("_left", "_mode")

    def __init__(self) -> None:
        self._mode = 0  # 0 none started, 1 length, 2 chunked, 3 until close, 4 no body, 5 done
        self._left = 0

    def begin(
        self, headers: Headers, no_body: bool, chunk_ok: bool
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Decide the framing; returns the headers to send and whether the end is the close."""
        out: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
                continue  # re-added below when we frame chunked
            out.append((name, value))
        if no_body:
            self._mode = 4
            return out, False
        if length is not None and not chunked:
            self._mode = 1
            self._left = length
            return out, False
        if chunk_ok:
            if length is not None:
                out = [(n, v) for n, v in out if n != b"content-length"]
            out.append((b"transfer-encoding", _CHUNKED))
            self._mode = 2
            return out, False
        if length is not None:
            out = [(n, v) for n, v in out if n != b"content-length"]
        self._mode = 3
        return out, True

    def data(self, data: bytes) -> bytes:
        mode = self._mode
        if not data:
            return b""
        if mode == 1:
            left = self._left - len(data)
            if left < 0:
                raise LocalProtocolError("too much data for declared Content-Length")
            self._left = left
            return data
        if mode == 2:
            return b"%x\r\n%b\r\n" % (len(data), data)
        if mode == 3:
            return data
        if mode == 4:
            return b""
        raise LocalProtocolError("no message body may be sent now")

    def end(self, trailers: Headers) -> bytes:
        mode = self._mode
        self._mode = 5
        if mode == 2:
            if trailers:
                return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"
            return b"0\r\n\r\n"
        if mode == 1 and self._left:
            self._mode = 1
            raise LocalProtocolError("Too little data for declared Content-Length")
        if mode in (0, 5):
            self._mode = mode
            raise LocalProtocolError("no message to end")
        return b""

    @property
    def length_left(self) -> int | None:
        """Body bytes still due under a Content-Length framing (None: another framing)."""
        return self._left if self._mode == 1 else None

    def sent_elsewhere(self, n: int) -> None:
        """``n`` body bytes went out without ``data`` (spliced by the kernel)."""
        if self._mode != 1 or n > self._left:
            raise LocalProtocolError("spliced bytes do not fit the declared Content-Length")
        self._left -= n

    @property
    def done(self) -> bool:
        return self._mode == 5

    @property
    def started(self) -> bool:
        return self._mode != 0


class _Reader:
    """The receiving half both codecs share: an llhttp parser feeding an event queue."""

    __slots__ = (
        "_chunked", "_events", "_headers", "_in_head", "_in_msg", "_keep_alive", "_length",
        "_parser", "_pending", "_trailers", "_until_close", "_url", "their_done",
    )

    _parser: Any  # httptools.HttpRequestParser / HttpResponseParser (None once released)

    def __init__(self) -> None:
        self._events: deque[Event | _Error] = deque()
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._url = b""
        self._in_head = False
        self._in_msg = False
        self._pending = 0  # bytes fed while a head was incomplete
        self._length: int | None = None
        self._chunked = False
        self._until_close = False
        self._keep_alive = True
        self.their_done = False

    # --- httptools callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = self._in_msg = True
        self._url = b""
        self._headers = []
        self._trailers = None
        self._length = None
        self._chunked = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        value = value.strip(b" \t")
        if _has_ctl(value):
            raise BadRequest(f"invalid character in header {name.decode('latin-1')!r}")
        if self._in_head:
            self._headers.append((name, value))
        else:
            if self._trailers is None:
                self._trailers = []
            self._trailers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._events.append(Body(body))

    def on_message_complete(self) -> None:
        self._in_msg = False
        self._events.append(_END)

    def release(self) -> None:
        """The connection ended: drop the parser (it refers back to us through its callbacks,
        a cycle only the garbage collector could free)."""
        self._parser = None
        self._events.clear()

    # --- feeding --------------------------------------------------------------------
    def feed(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
             data: bytes | bytearray | memoryview, limit: int) -> int:
        """Feed ``data``; returns the offset where a protocol switch started (-1: none)."""
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            return int(exc.args[0])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._events.append(_Error(cause if isinstance(cause, Exception) else BadRequest(str(exc))))
        except httptools.HttpParserError as exc:
            self._events.append(_Error(BadRequest(f"malformed message: {exc}")))
        if self._in_head:
            self._pending += len(data)
            if limit and self._pending > limit:
                self._events.append(_Error(HeadersTooLarge(f"head larger than {limit} bytes")))
        else:
            self._pending = 0
        return -1


def _framing(headers: list[tuple[bytes, bytes]], status_hint_te: int) -> tuple[int | None, bool]:
    """(Content-Length, chunked) of a received head, refusing what h11 refuses."""
    length: int | None = None
    chunked = False
    te_seen = False
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                raise BadRequest("bad Content-Length")
            n = int(value)
            if length is not None and n != length:
                raise BadRequest("conflicting Content-Length headers")
            length = n
        elif name == b"transfer-encoding":
            if te_seen or value.lower() != _CHUNKED:
                raise BadRequest("only Transfer-Encoding: chunked is supported", status_hint=status_hint_te)
            te_seen = chunked = True
    if chunked and length is not None:
        raise BadRequest("both Content-Length and Transfer-Encoding")
    return length, chunked


class ServerCodec(_Reader):
    """The client-facing side (we are the server), on llhttp; see ``workers.http1.ServerCodec``."""

    __slots__ = (
        "_cycle_fed", "_expect", "_head_method", "_max_head", "_status_sent", "_switch_offset",
        "_trailing", "_version", "_writer", "switched",
    )

    trailers_need_chunked = True

    def __init__(self, max_header_bytes: int) -> None:
        super().__init__()
        self._parser = httptools.HttpRequestParser(self)
        self._max_head = max_header_bytes
        self._writer = _Writer()
        self._head_method = b""
        self._version = b"1.1"
        self._expect = False
        self._trailing = b""
        self._switch_offset = -1
        self._cycle_fed = 0
        self._status_sent = 0
        self.switched = False

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._pending = 0
        parser = self._parser
        version = _HTTP_VERSIONS.get(parser.get_http_version())
        if version is None:
            raise BadRequest(f"HTTP/{parser.get_http_version()} is not supported", status_hint=505)
        headers = self._headers
        hosts = 0
        expect = False
        size = len(self._url) + 16
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name == b"host":
                hosts += 1
            elif name == b"expect" and value.lower() == b"100-continue":
                expect = True
        if size > self._max_head:
            raise HeadersTooLarge(f"request head too large: {size} bytes")
        if hosts > 1 or (hosts == 0 and version == b"1.1"):
            raise BadRequest("a request needs exactly one Host header")
        length, chunked = _framing(headers, 501)
        method = parser.get_method()
        self._length = length
        self._chunked = chunked
        self._version = version
        self._keep_alive = parser.should_keep_alive() and version == b"1.1"
        self._expect = expect and version == b"1.1" and (chunked or bool(length))
        self._head_method = method
        self._events.append(RequestHead(method, self._url, headers, version))

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the client; ``b""`` means it closed its side."""
        if not data:
            if self._in_msg:
                self._events.append(_Error(BadRequest("connection closed mid-request")))
            self._events.append(_CLOSED)
            return
        self._cycle_fed += len(data)
        if self.switched or self._switch_offset >= 0:
            self._trailing += bytes(data)
            return
        offset = self.feed(self._parser, data, self._max_head)
        if offset >= 0:
            self._switch_offset = offset
            self._trailing = bytes(data[offset:])

    @property
    def nothing_buffered(self) -> bool:
        return self._cycle_fed == 0

    def next_event(self) -> Event:
        events = self._events
        if self.their_done:  # (as h11: PAUSED only once bytes of a next message wait)
            return _PAUSED if events or self._in_msg or self._switch_offset >= 0 else _NEED_DATA
        if not events:
            return _PAUSED if self._switch_offset >= 0 else _NEED_DATA
        ev = events.popleft()
        if type(ev) is _Error:
            events.clear()
            raise ev.exc
        if ev is _END:
            self.their_done = True
        elif type(ev) is Body:
            self._expect = False
        return ev  # type: ignore[return-value]

    # --- responses ------------------------------------------------------------------
    def response_head(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"", *, trusted: bool = False
    ) -> bytes:
        if self._writer.started:
            raise LocalProtocolError("a response was already started")
        self._expect = False
        no_body = self._head_method == b"HEAD" or status in _NO_BODY_STATUS or status < 200
        chunk_ok = self._version == b"1.1"
        out, until_close = self._writer.begin(headers, no_body, chunk_ok)
        if until_close or not self._keep_alive:
            self._keep_alive = False
            if not any(n == b"connection" and v.lower() == b"close" for n, v in out):
                out.append((b"connection", b"close"))
        elif any(n == b"connection" and b"close" in v.lower() for n, v in out):
            self._keep_alive = False
        self._status_sent = status
        return _frame_head(b"HTTP/1.1 %d %b\r\n" % (status, reason or reason_phrase(status)), out)

    def informational(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"") -> bytes:
        self._expect = False
        if status == 101:
            if self._switch_offset < 0:
                raise LocalProtocolError("101 without an upgrade request")
            self.switched = True
        return _frame_head(b"HTTP/1.1 %d %b\r\n" % (status, reason or reason_phrase(status)), headers)

    def data(self, data: bytes) -> bytes:
        return self._writer.data(data)

    def end(self, trailers: Headers = ()) -> bytes:
        return self._writer.end(trailers)

    @property
    def body_left(self) -> int | None:
        """Response body bytes still due under a Content-Length framing (None: another one)."""
        return self._writer.length_left

    def body_sent_elsewhere(self, n: int) -> None:
        """``n`` response body bytes went to the client without ``data`` (spliced)."""
        self._writer.sent_elsewhere(n)

    @property
    def reusable(self) -> bool:
        return self._writer.done and self.their_done and self._keep_alive and self._switch_offset < 0

    @property
    def their_message_done(self) -> bool:
        return self.their_done

    @property
    def trailing_data(self) -> bytes:
        return self._trailing

    @property
    def waiting_for_100_continue(self) -> bool:
        return self._expect

    @property
    def can_respond(self) -> bool:
        return not self._writer.started and not self.switched

    @property
    def keep_alive(self) -> bool:
        """The client did not ask to close (and speaks HTTP/1.1)."""
        return self._keep_alive

    @property
    def http_version(self) -> bytes:
        return self._version

    def start_next_cycle(self) -> None:
        if not self.reusable:
            raise LocalProtocolError("not in a reusable state")
        self._writer = _Writer()
        self.their_done = False
        self._expect = False
        self._status_sent = 0
        self._cycle_fed = 1 if self._events or self._in_head else 0


class ClientCodec(_Reader):
    """The upstream-facing side (we are the client), on llhttp; see ``workers.http1.ClientCodec``."""

    __slots__ = (
        "_body_seen", "_head_fed", "_informational", "_method", "_status", "_trailing", "_writer", "switched",
    )

    trailers_need_chunked = True

    def __init__(self) -> None:
        super().__init__()
        self._parser = httptools.HttpResponseParser(self)
        self._writer = _Writer()
        self._method = b""
        self._status = 0
        self._informational = False
        self._trailing = b""
        self._head_fed = 0
        self._body_seen = 0
        self.switched = False

    def on_status(self, status: bytes) -> None:
        self._url += status

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        self._events.append(Body(body))

    @property
    def body_left(self) -> int | None:
        """Bytes of a Content-Length response body not parsed yet (None: another framing, or
        no body in progress)."""
        if not self._in_msg or self._in_head or self._length is None or self._chunked:
            return None
        return self._length - self._body_seen

    def body_taken_elsewhere(self) -> None:
        """The rest of the body (``body_left`` bytes) went from the socket straight to the
        client (spliced): the message is complete without the parser seeing those bytes, so
        the next response gets a fresh parser (httptools cannot skip bytes)."""
        self._parser = httptools.HttpResponseParser(self)
        self._in_msg = False
        self._events.append(_END)

    def on_headers_complete(self) -> None:
        self._body_seen = 0
        self._in_head = False
        self._pending = 0
        parser = self._parser
        status = parser.get_status_code()
        headers = self._headers
        version = _HTTP_VERSIONS.get(parser.get_http_version())
        if version is None:
            raise UpstreamFailed(f"bad response from upstream: HTTP/{parser.get_http_version()}")
        try:
            length, chunked = _framing(headers, 502)
        except BadRequest as exc:
            raise UpstreamFailed(f"bad response from upstream: {exc}") from None
        self._status = status
        self._informational = 100 <= status < 200 and status != 101
        no_body = self._method == b"HEAD" or status in _NO_BODY_STATUS or status < 200
        self._length = length
        self._chunked = chunked
        self._until_close = not no_body and length is None and not chunked
        self._keep_alive = parser.should_keep_alive() and not self._until_close
        self._events.append(ResponseHead(status, headers, self._url, version))
        if self._method == b"HEAD" and status >= 200:
            # llhttp would wait for a body; a HEAD answer has none (httptools cannot say so).
            self._events.append(_END)
            raise _HeadDone

    def on_message_complete(self) -> None:
        self._in_msg = False
        if self._informational:
            self._informational = False
            return  # h11 has no end-of-message for an interim answer
        self._events.append(_END)

    def request_head(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], *, trusted: bool = False
    ) -> bytes:
        self._method = method
        has_length = False
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                has_length = True
            elif name == b"transfer-encoding" and value.lower() == _CHUNKED:
                chunked = True
        out, _ = self._writer.begin(headers, not (has_length or chunked), True)
        return _frame_head(method + b" " + target + b" HTTP/1.1\r\n", out)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            if self._in_msg:
                if self._until_close and not self._in_head:
                    self._in_msg = False
                    self._events.append(_END)
                else:
                    self._events.append(_Error(UpstreamFailed("upstream closed the connection mid-response")))
            self._events.append(_CLOSED)
            self._keep_alive = False
            return
        self._head_fed += len(data)
        if self.switched:
            self._trailing += bytes(data)
            return
        try:
            offset = self.feed(self._parser, data, 0)
        except _HeadDone:  # (raised through httptools as a callback error; see feed)
            offset = -1
        if offset >= 0:
            self.switched = True
            self._trailing = bytes(data[offset:])

    def feed(self, parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
             data: bytes | bytearray | memoryview, limit: int) -> int:
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            return int(exc.args[0])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _HeadDone):
                self._after_head(data)
            elif isinstance(cause, UpstreamFailed):
                self._events.append(_Error(cause))
            else:
                self._events.append(_Error(UpstreamFailed(f"bad response from upstream: {cause or exc}")))
        except httptools.HttpParserError as exc:
            self._events.append(_Error(UpstreamFailed(f"bad response from upstream: {exc}")))
        return -1

    def _after_head(self, data: bytes | bytearray | memoryview) -> None:
        """A HEAD answer ended at its head: a new parser reads the next response; bytes beyond
        the head (a body the upstream should not have sent) make the connection unusable."""
        self._parser = httptools.HttpResponseParser(self)
        self._in_msg = False
        self._keep_alive = self._keep_alive and bytes(data).endswith(b"\r\n\r\n")

    @property
    def nothing_buffered(self) -> bool:
        return not self._events and self._head_fed == 0

    def next_event(self) -> Event:
        if self.their_done:
            return _PAUSED
        events = self._events
        if not events:
            return _PAUSED if self.switched else _NEED_DATA
        ev = events.popleft()
        if type(ev) is _Error:
            events.clear()
            raise ev.exc
        if ev is _END:
            self.their_done = True
        return ev  # type: ignore[return-value]

    def data(self, data: bytes) -> bytes:
        return self._writer.data(data)

    def end(self, trailers: Headers = ()) -> bytes:
        return self._writer.end(trailers)

    @property
    def reusable(self) -> bool:
        return self._writer.done and self.their_done and self._keep_alive and not self.switched

    @property
    def their_message_done(self) -> bool:
        return self.their_done

    @property
    def trailing_data(self) -> bytes:
        return self._trailing

    def start_next_cycle(self) -> None:
        if not self.reusable:
            raise LocalProtocolError("not in a reusable state")
        self._writer = _Writer()
        self.their_done = False
        self._head_fed = 1 if self._events else 0


class _HeadDone(Exception):
    """Raised from ``on_headers_complete`` to end a HEAD answer at its head."""


__all__ = ["ClientCodec", "LocalProtocolError", "ServerCodec", "reason_phrase"]
