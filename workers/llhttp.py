"""HTTP/1.1 codecs on llhttp (httptools): the same sans-I/O interface as ``workers.http1``.

Theory of operation
-------------------
``workers.http1`` defines the codec interface the proxy talks to (``ServerCodec`` for the
client side, ``ClientCodec`` for the upstream side) and implements it on h11, the reference.
This module implements the same interface with llhttp, Node's C parser, parsing the heads;
the I/O core uses it on the hot path, and ``--http1-codec h11`` selects the reference.

Message boundaries are ours, not llhttp's: ``workers.h1read`` frames the bodies, holds back
pipelined bytes until the next cycle and feeds llhttp nothing but heads (see there why).
Writing frames as h11 does (``workers.h1write``) and, unless the caller says the fields are
trusted (parsed, or passed ``valid_value``), checks them as h11 does.

Strictness: whatever h11 reads differently is refused, so that the two codecs agree or the
request is answered with 4xx/5xx (``tests/unit/test_codec_differential.py`` checks this over
Hypothesis input and a corpus of smuggling and desync cases).  llhttp's lenient flags stay
off, and on top of llhttp:

* start lines as h11 reads them (single spaces, a visible-ASCII target, ``HTTP/x.y``; a reason
  phrase without control characters); no empty line before a message (llhttp skips them);
* HTTP/1.0 and 1.1 only (505); exactly one ``Host`` in HTTP/1.1, at most one in 1.0 (h11);
* ``Transfer-Encoding`` exactly ``chunked``, once (501, as h11 and nginx), never with
  ``Content-Length`` (400, as llhttp and nginx; h11 would read the body as chunked);
  ``Content-Length`` digits only, once (llhttp refuses duplicates; h11 merges equal ones);
* header values stripped of surrounding blanks, without control characters;
* CONNECT is refused with 405 (as nginx: we are not a forward proxy);
* a request head larger than ``max_header_bytes`` is 431, whether it arrives whole or in
  pieces; a response head over 16 KiB (h11's default) is a bad response (502).

Connection reuse and protocol switches follow h11: ``Connection: close`` or HTTP/1.0 ends
reuse; a request with ``Upgrade`` may be switched with a 101 once it is read, or answered
normally (then the next request is read).  Unlike h11, the upstream side does not reuse a
connection on which bytes arrived beyond the answer (h11 would read them as the next answer).
"""

from __future__ import annotations

import re

import httptools

from fastingress.errors import BadRequest, HeadersTooLarge, PeerError, UpstreamFailed
from workers.h1read import HEAD, HTTP_VERSIONS, LENGTH, SWITCHED, TOKEN, UNTIL_CLOSE, Error, Reader
from workers.h1write import LocalProtocolError, Writer, check_fields, frame_head, reason_phrase, with_close
from workers.http1 import Body, Event, Headers, RequestHead, ResponseHead, Signal

_END = Signal.END
_REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ([\t \x21-\x7e\x80-\xff]*))?")
# what may begin a start line that is not whole yet (so that garbage is refused at once)
_REQUEST_PREFIX = re.compile(
    rb"[-!#$%&'*+.^_`|~0-9A-Za-z]*"
    rb"(?: [\x21-\x7e]*(?: (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.[0-9]?)?)?)?)?)?)?)?)?)?\r?"
)
_STATUS_PREFIX = re.compile(
    rb"(?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.(?:[0-9](?: (?:[0-9]{0,2}|[0-9]{3}(?: [\t \x21-\x7e\x80-\xff]*)?))?)?"
    rb")?)?)?)?)?)?)?\r?"
)
_METHOD = re.compile(TOKEN)
_NO_BODY_STATUS = frozenset({204, 304})
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})
MAX_RESPONSE_HEAD = 16 * 1024


class ServerCodec(Reader):
    """The client-facing side (we are the server), on llhttp; see ``workers.http1.ServerCodec``."""

    __slots__ = ("_expect", "_keep_alive", "_method", "_version", "_writer", "switched")

    trailers_need_chunked = True

    def __init__(self, max_header_bytes: int) -> None:
        super().__init__(max_header_bytes)
        self._writer = Writer()
        self._method = b""
        self._version: bytes | None = None  # of the last request read
        self._keep_alive = False
        self._expect = False
        self.switched = False

    def _new_parser(self) -> httptools.HttpRequestParser:
        return httptools.HttpRequestParser(self)

    def _error(self, message: str, status: int = 400) -> PeerError:
        if status == 431:
            return HeadersTooLarge(f"request {message}")
        return BadRequest(f"malformed request: {message}", status_hint=status)

    _line_prefix = _REQUEST_PREFIX
    _line_re = _REQUEST_LINE
    _version_group = 3

    def _bad_start(self) -> PeerError:
        return self._error("malformed request line")

    def _check_start_line(self, line: bytes, begin: int, end: int) -> PeerError | None:
        start = self._start = _REQUEST_LINE.fullmatch(line, begin, end)
        if start is None:
            return self._bad_start()
        version = start.group(3)
        if version not in HTTP_VERSIONS:
            return self._error(f"HTTP/{version.decode()} is not supported", 505)
        return None

    def on_headers_complete(self) -> None:
        start = self._start
        assert start is not None
        method, target, version = start.groups()
        if method == b"CONNECT":
            raise self._error("CONNECT is not supported", 405)
        hosts, close, expect, upgrade = self._scan(501)
        if hosts > 1 or (hosts == 0 and version == b"1.1"):
            raise self._error("a request needs exactly one Host header")
        self._pending = RequestHead(method, target, self._headers, version)
        self._method = method
        self._version = version
        self._keep_alive = not close and version == b"1.1"
        self._expect = expect and version == b"1.1"
        self._proposal = upgrade

    def next_event(self) -> Event:
        events = self._events
        if not events:
            if self._failure is not None:
                raise self._failure
            return self._idle_event()
        ev = events.popleft()
        kind = type(ev)
        if kind is Body:
            self._expect = False
        elif ev is _END:
            self._expect = False
            self.their_done = True
        elif kind is Error:
            self._raise(ev)  # type: ignore[arg-type]
        return ev  # type: ignore[return-value]

    @property
    def nothing_buffered(self) -> bool:
        """No byte was fed in this cycle yet, so ``next_event`` would only say NEED_DATA."""
        return not self._events and self._state == HEAD and not self._head_len and not self._eof

    # --- responses ------------------------------------------------------------------
    def response_head(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"", *, trusted: bool = False
    ) -> bytes:
        if self._writer.started:
            raise LocalProtocolError("a response was already started")
        if not trusted:
            check_fields(headers, reason)
            headers = [(n.lower(), v) for n, v in headers]  # (the framing looks at lower-case names)
        self._expect = False
        self._proposal = False  # (declined, if there was one)
        version = self._version
        out, until_close = self._writer.begin(
            headers,
            no_body=status < 200 or status in _NO_BODY_STATUS,
            chunk_ok=version == b"1.1",
            head=self._method == b"HEAD",
        )
        if until_close or not self._keep_alive or version is None:
            self._keep_alive = False
            out = with_close(out)
        elif self._writer.close:
            self._keep_alive = False
        return frame_head(b"HTTP/1.1 %d %b\r\n" % (status, reason or reason_phrase(status)), out)

    def relay_head(
        self, status: int, reason: bytes, fields: Headers, drop: frozenset[bytes], tail: bytes
    ) -> bytes | None:
        """The fast lane of ``response_head`` for an upstream's answer relayed as it is: ``fields``
        (as the upstream codec read them: lower-case names, checked values) minus the ``drop``
        names (hop-by-hop ones), then ``tail`` (our own header lines, CRLF-terminated), framed
        and serialised in one pass.  None when the general path must answer instead: a
        Connection header that names other fields, a client that would need the answer
        framed by closing (HTTP/1.0 and no Content-Length), a connection that must close."""
        version = self._version
        if not self._keep_alive or version is None or self._writer.started:
            return None
        length: int | None = None
        chunked = False
        parts = [b""]
        append = parts.append
        for name, value in fields:
            if name in drop:
                if name == b"transfer-encoding":
                    chunked = True
                elif name == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                    return None  # (it may name fields to drop: the general path knows how)
                continue
            if name == b"content-length":
                length = int(value)
            append(name + b": " + value + b"\r\n")
        no_body = status < 200 or status in _NO_BODY_STATUS
        if not no_body and (length is None or chunked):
            if version != b"1.1":
                return None
            append(b"transfer-encoding: chunked\r\n")
        head = self._method == b"HEAD"
        self._writer.begin_framed(length, chunked, no_body=no_body, head=head)
        self._expect = False
        self._proposal = False
        parts[0] = b"HTTP/1.1 %d %b\r\n" % (status, reason or reason_phrase(status))
        append(tail)
        append(b"\r\n")
        return b"".join(parts)

    def informational(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"") -> bytes:
        if self._writer.started:
            raise LocalProtocolError("a response was already started")
        check_fields(headers, reason)
        self._expect = False
        if status == 101:
            if not (self._proposal and self.their_done):
                raise LocalProtocolError("101 without an upgrade request")
            self.switched = True
            self._state = SWITCHED
        return frame_head(b"HTTP/1.1 %d %b\r\n" % (status, reason or reason_phrase(status)), headers)

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
        return self._writer.done and self.their_done and self._keep_alive and not self.switched

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
        return self._version or b"1.0"

    def start_next_cycle(self) -> None:
        if not self.reusable:
            raise LocalProtocolError("not in a reusable state")
        self._writer = Writer()
        self._expect = False
        self._method = b""
        self._restart()


class ClientCodec(Reader):
    """The upstream-facing side (we are the client), on llhttp; see ``workers.http1.ClientCodec``."""

    __slots__ = ("_keep_alive", "_method", "_req_close", "_resp_close", "_writer", "switched")

    trailers_need_chunked = True

    def __init__(self, max_header_bytes: int = MAX_RESPONSE_HEAD) -> None:
        super().__init__(max_header_bytes)
        self._writer = Writer()
        self._method = b""
        self._keep_alive = False
        self._req_close = False
        self._resp_close = False
        self.switched = False

    def _new_parser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self)

    def _error(self, message: str, status: int = 502) -> PeerError:
        return UpstreamFailed(f"bad response from upstream: {message}")

    _line_prefix = _STATUS_PREFIX
    _line_re = _STATUS_LINE
    _version_group = 1

    def _bad_start(self) -> PeerError:
        return self._error("malformed status line")

    def _check_start_line(self, line: bytes, begin: int, end: int) -> PeerError | None:
        start = self._start = _STATUS_LINE.fullmatch(line, begin, end)
        if start is None:
            return self._bad_start()
        version = start.group(1)
        if version not in HTTP_VERSIONS:
            return self._error(f"HTTP/{version.decode()}")
        return None

    def on_headers_complete(self) -> None:
        start = self._start
        assert start is not None
        version, status, reason = start.groups()
        code = int(status)
        if code < 100:
            raise self._error(f"status {code}")
        self._resp_close = self._scan(502)[1]
        self._pending = ResponseHead(code, self._headers, reason or b"", version)

    def _begin_body(self, head: RequestHead | ResponseHead) -> None:
        assert type(head) is ResponseHead
        status = head.status
        if status < 200 or (self._method == b"CONNECT" and status < 300):
            if status == 101 or status >= 200:
                if not self._proposal:
                    self._events.pop()
                    self._fail(self._error("a protocol switch nobody asked for"))
                    return
                self.switched = True
                self._state = SWITCHED
                return
            self._reset_head()  # an interim answer: the real one follows
            return
        self._proposal = False
        close = self._req_close or self._resp_close or head.http_version != b"1.1"
        if self._method == b"HEAD" or status in _NO_BODY_STATUS:
            self._end_message()
        elif self._chunked or self._length is not None:
            super()._begin_body(head)
        else:
            self._state = UNTIL_CLOSE
            close = True
        self._keep_alive = not close

    def _on_eof(self) -> None:
        if self._state == HEAD and not self._head_len and self._writer.started:
            self._fail(self._error("the upstream closed the connection without answering"))
        else:
            super()._on_eof()

    def request_head(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], *, trusted: bool = False
    ) -> bytes:
        if not trusted:
            check_fields(headers, target=target)
            if not _METHOD.fullmatch(method):
                raise LocalProtocolError(f"invalid method {method!r}")
            headers = [(n.lower(), v) for n, v in headers]
        self._method = method
        writer = self._writer
        out, _ = writer.begin(headers, no_body=False, chunk_ok=True, request=True)
        self._proposal = writer.upgrade or method == b"CONNECT"
        self._req_close = writer.close
        return frame_head(method + b" " + target + b" HTTP/1.1\r\n", out)

    def forward_head(self, method: bytes, target: bytes, fields: Headers, length: int | None,
                     chunked: bool) -> bytes:
        """The fast lane of ``request_head`` for a forwarded request whose framing is known
        (``length``/``chunked``) and whose ``fields`` hold no Connection or Upgrade header
        (hop-by-hop: removed before): framed and serialised in one pass."""
        self._method = method
        self._writer.begin_framed(length, chunked, no_body=not chunked and not length, head=False)
        self._proposal = method == b"CONNECT"
        self._req_close = False
        return frame_head(method + b" " + target + b" HTTP/1.1\r\n", fields)

    def next_event(self) -> Event:
        events = self._events
        if not events:
            if self._failure is not None:
                raise self._failure
            return self._idle_event()
        ev = events.popleft()
        if ev is _END:
            self.their_done = True
        elif type(ev) is Error:
            self._raise(ev)
        return ev  # type: ignore[return-value]

    @property
    def nothing_buffered(self) -> bool:
        return not self._events and self._state == HEAD and not self._head_len and not self._eof

    def data(self, data: bytes) -> bytes:
        return self._writer.data(data)

    def end(self, trailers: Headers = ()) -> bytes:
        return self._writer.end(trailers)

    @property
    def reusable(self) -> bool:
        """As h11, and also not when the upstream sent bytes beyond its answer (h11 would read
        them as the next answer) or closed."""
        return (
            self._writer.done and self.their_done and self._keep_alive and not self.switched
            and not self._rest and not self._eof
        )

    @property
    def body_left(self) -> int | None:
        """Bytes of a Content-Length response body not received yet (None: another framing,
        or no body in progress)."""
        return self._left if self._state == LENGTH else None

    def body_taken_elsewhere(self) -> None:
        """The rest of the body (``body_left`` bytes) went from the socket straight to the
        client (spliced): the message is complete without the parser seeing those bytes, so
        the next response gets a fresh parser."""
        if self._state != LENGTH:
            raise LocalProtocolError("no Content-Length body in progress")
        self._left = 0
        self._reuse = False
        self._end_message()

    def start_next_cycle(self) -> None:
        if not self.reusable:
            raise LocalProtocolError("not in a reusable state")
        self._writer = Writer()
        self.their_done = False
        self._state = HEAD
        self._reset_head()  # (nothing is buffered and no EOF came: see ``reusable``)


__all__ = ["MAX_RESPONSE_HEAD", "ClientCodec", "LocalProtocolError", "ServerCodec", "reason_phrase"]
