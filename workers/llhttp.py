"""HTTP/1.1 codecs on llhttp (httptools): the same sans-I/O interface as ``workers.http1``.

Theory of operation
-------------------
``workers.http1`` defines the codec interface the proxy talks to (``ServerCodec`` for the
client side, ``ClientCodec`` for the upstream side) and implements it on h11, the reference.
This module implements the same interface with llhttp, Node's C parser, parsing the heads;
the I/O core uses it on the hot path, and ``--http1-codec h11`` selects the reference.

Message boundaries are ours, not llhttp's.  llhttp reports where a message ends only by
callbacks, never as an offset, and it reads past the end into the next message (skipping
empty lines, parsing pipelined heads ahead of time).  So ``_Reader`` frames each message
itself and hands llhttp nothing but heads:

* a head ends at the first CRLFCRLF (llhttp's lenient flags are off, so no other line end
  is accepted); only the bytes up to it are fed to llhttp, as they arrive, so that garbage is
  refused at once; if llhttp has not completed the head there, the head is refused;
* the start line is matched against h11's grammar (llhttp accepts runs of spaces in it and
  any byte in a reason phrase); a message may not start with an empty line (h11 refuses it);
* a Content-Length body is counted here, a chunked body is decoded here (``_CHUNK_LINE``,
  strict: 1-16 hex digits, RFC 9112 extensions, exact CRLFs, trailers as header lines), a
  response body without framing runs to EOF;
* at the end of a message the reader stops: later bytes wait in ``_rest`` until
  ``start_next_cycle`` (as in h11), so per-message state never mixes with a pipelined next
  message, and ``trailing_data`` after a protocol switch is exact.

A new llhttp parser (0.3 µs) replaces one that did not finish its message cleanly (a head
with a body, a HEAD answer, an upgrade); a keep-alive request without a body reuses it.

Strictness: whatever h11 reads differently is refused, so the two codecs agree or the request
is answered with 4xx/5xx (``tests/unit/test_codec_differential.py`` checks this over
Hypothesis input and a corpus of smuggling and desync cases).  On top of llhttp:

* HTTP/1.0 and 1.1 only (505); exactly one ``Host`` in HTTP/1.1, at most one in 1.0 (h11);
* ``Transfer-Encoding`` exactly ``chunked``, once (501 otherwise, as h11), never with
  ``Content-Length`` (400, as llhttp and nginx; h11 would read the body as chunked);
  ``Content-Length`` digits only, once (llhttp refuses duplicates, h11 merges equal ones);
* header values stripped of surrounding blanks, without control characters;
* CONNECT is refused with 405 (as nginx: we are not a forward proxy);
* a request head larger than ``max_header_bytes`` is 431, whether it arrives whole or in
  pieces; a response head over 16 KiB (h11's default) is a bad response (502).

A parse error is queued behind the events that came before it, so a complete request that
precedes garbage is still served, as with h11.  Writing frames as h11 does (``h1write``).
"""

from __future__ import annotations

import re
from collections import deque
from typing import ClassVar

import httptools

from fastingress.errors import BadRequest, HeadersTooLarge, PeerError, UpstreamFailed
from workers.h1write import LocalProtocolError, Writer, frame_head, has_close, reason_phrase, with_close
from workers.http1 import Body, Event, Headers, RequestHead, ResponseHead, Signal

_NEED_DATA = Signal.NEED_DATA
_PAUSED = Signal.PAUSED
_END = Signal.END
_CLOSED = Signal.CLOSED

# reader states
_HEAD = 0  # reading a head (the start of a message)
_LENGTH = 1  # a Content-Length body: ``_left`` bytes to go
_CHUNK_SIZE = 2  # chunked: a chunk-size line
_CHUNK_DATA = 3  # chunked: ``_left`` bytes of chunk data
_CHUNK_END = 4  # chunked: the CRLF after chunk data
_TRAILERS = 5  # chunked: trailer lines up to an empty line
_UNTIL_CLOSE = 6  # a response body that ends at EOF
_DONE = 7  # the message is complete; later bytes wait in ``_rest``
_SWITCHED = 8  # the protocol switched (or is about to); bytes wait in ``_rest``
_FAILED = 9

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ([\t \x21-\x7e\x80-\xff]*))?")
# what may start a start line that is not complete yet (to refuse garbage early)
_REQUEST_PREFIX = re.compile(
    _TOKEN + rb"?(?: [\x21-\x7e]*(?: (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.[0-9]?)?)?)?)?)?)?)?)?)?\r?"
)
_STATUS_PREFIX = re.compile(
    rb"(?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.(?:[0-9](?: (?:[0-9]{0,2}|[0-9]{3}(?: [\t \x21-\x7e\x80-\xff]*)?))?)?"
    rb")?)?)?)?)?)?)?\r?"
)
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
_FIELD_LINE = re.compile(_TOKEN + rb":[ \t]*(?:[\x21-\x7e\x80-\xff](?:[ \t]*[\x21-\x7e\x80-\xff])*)?[ \t]*")
_MAX_CHUNK_LINE = 4096
_CTL_BYTES = bytes([*range(0, 0x09), *range(0x0A, 0x20), 0x7F])
_HTTP_VERSIONS = frozenset({b"1.1", b"1.0"})
_NO_BODY_STATUS = frozenset({204, 304})
MAX_RESPONSE_HEAD = 16 * 1024


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",")]


class _Error:
    """A queued parse error: raised by ``next_event`` once the events before it are consumed."""

    __slots__ = ("exc",)

    def __init__(self, exc: PeerError) -> None:
        self.exc = exc


class _Reader:
    """The receiving half both codecs share: framing here, heads parsed by llhttp."""

    __slots__ = (
        "_chunked", "_cline", "_eof", "_events", "_failure", "_head_done", "_head_len", "_headers",
        "_left", "_length", "_limit", "_line", "_line_done", "_msg_done", "_parser", "_pending",
        "_proposal", "_rest", "_reuse", "_start", "_state", "_tail", "_trailer_bytes", "their_done",
    )

    _line_prefix: ClassVar[re.Pattern[bytes]]

    def __init__(self, limit: int) -> None:
        self._events: deque[Event | _Error] = deque()
        self._limit = limit
        self._state = _HEAD
        self._parser = self._new_parser()
        self._reuse = True  # the parser may read the next head
        self._rest = bytearray()  # bytes beyond the current message
        self._eof = False
        self._failure: PeerError | None = None
        self._proposal = False  # the peer (or we) asked for a protocol switch
        self._cline = bytearray()  # a partial chunk-size, chunk-end or trailer line
        self._left = 0
        self._trailer_bytes = 0
        self._pending: RequestHead | ResponseHead | None = None  # queued once llhttp accepted the head
        self._length: int | None = None  # framing of the message being read
        self._chunked = False
        self.their_done = False
        self._reset_head()

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        raise NotImplementedError

    def _error(self, message: str, status: int = 400) -> PeerError:
        raise NotImplementedError

    def _check_start_line(self, line: bytes) -> PeerError | None:
        """Match the start line (into ``_start``); the error to answer, if any."""
        raise NotImplementedError

    def _bad_start(self) -> PeerError:
        raise NotImplementedError

    def _begin_body(self, head: RequestHead | ResponseHead) -> None:
        raise NotImplementedError

    def _reset_head(self) -> None:
        self._head_len = 0
        self._line = bytearray()  # the start line until its CRLF
        self._line_done = False
        self._tail = b""  # the last bytes of the head so far (a CRLFCRLF across reads)
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_done = False  # llhttp completed the head
        self._msg_done = False  # llhttp completed the message (no body, per llhttp)
        self._start: re.Match[bytes] | None = None

    # --- httptools callbacks --------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        value = value.strip(b" \t")
        if len(value.translate(None, _CTL_BYTES)) != len(value):
            raise self._error(f"invalid character in header {name.decode('latin-1')!r}")
        self._headers.append((name.lower(), value))

    def on_message_complete(self) -> None:
        self._msg_done = True

    # --- framing --------------------------------------------------------------------
    def _fail(self, exc: PeerError) -> int:
        self._events.append(_Error(exc))
        self._state = _FAILED
        self._pending = None
        return 1 << 62

    def _process(self, data: bytes) -> None:
        """Consume ``data`` as far as the current message goes; keep the rest in ``_rest``."""
        pos = 0
        n = len(data)
        while pos < n:
            state = self._state
            if state == _HEAD:
                pos = self._read_head(data, pos)
            elif state in (_LENGTH, _CHUNK_DATA):
                end = min(pos + self._left, n)
                self._events.append(Body(data if pos == 0 and end == n else data[pos:end]))
                self._left -= end - pos
                pos = end
                if not self._left:
                    if state == _LENGTH:
                        self._end_message()
                    else:
                        self._state = _CHUNK_END
            elif state == _UNTIL_CLOSE:
                self._events.append(Body(data if pos == 0 else data[pos:]))
                return
            elif state in (_DONE, _SWITCHED):
                self._rest += data[pos:] if pos else data
                return
            elif state == _FAILED:
                return
            else:
                pos = self._read_line(data, pos)

    def _read_head(self, data: bytes, pos: int) -> int:
        n = len(data)
        if not self._head_len:
            if data[pos] in b"\r\n":
                return self._fail(self._error("an empty line where a message should start"))
            if not self._reuse:
                self._parser = self._new_parser()
                self._reuse = True
        # Where does the head end (just after CRLFCRLF), in ``data``?
        end = -1
        tail = self._tail
        if tail:
            j = (tail + data[pos:pos + 3]).find(b"\r\n\r\n")
            if j >= 0:
                end = pos + j + 4 - len(tail)
        if end < 0:
            j = data.find(b"\r\n\r\n", pos)
            if j >= 0:
                end = j + 4
        stop = n if end < 0 else end
        size = self._head_len + stop - pos
        if size > self._limit:
            return self._fail(self._too_large(size))
        chunk: bytes | memoryview = data if pos == 0 and stop == n else memoryview(data)[pos:stop]
        if not self._line_done:
            # The start line is checked whole before llhttp sees it (so that the answer
            # does not depend on how it arrived); until then it waits in ``_line``.
            line = self._line
            if line and line[-1] == 13 and data[pos] == 10:  # (CR | LF across two reads)
                text: bytes | None = bytes(line[:-1])
            else:
                j = data.find(b"\r\n", pos, stop)
                text = bytes(line) + data[pos:j] if j >= 0 else None
            if text is None:
                line += chunk
                if self._line_prefix.fullmatch(line) is None:
                    return self._fail(self._bad_start())
                self._head_len = size
                self._tail = bytes(line[-3:])
                return n
            self._line_done = True
            err = self._check_start_line(text)
            if err is not None:
                return self._fail(err)
            if line:
                chunk = bytes(line) + chunk
                line.clear()
        try:
            self._parser.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            self._reuse = False  # (llhttp stopped at the end of the head: the rest is ours)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, PeerError):
                cause = self._error(f"malformed head: {exc}")
            return self._fail(cause)
        except httptools.HttpParserError as exc:
            reason = str(exc)
            # (h11 answers 501 to any Transfer-Encoding but chunked, as nginx does)
            te = "Transfer-Encoding" in reason and "Content-Length" not in reason
            return self._fail(self._error(f"malformed head: {reason}", 501 if te else 400))
        if end < 0:
            self._head_len = size
            self._tail = (tail + data[stop - 3 if stop - pos >= 3 else pos:stop])[-3:]
            return n
        head = self._pending
        if not self._head_done or head is None:
            return self._fail(self._error("malformed head"))
        if not self._msg_done or not self._parser.should_keep_alive():
            self._reuse = False
        self._events.append(head)
        self._pending = None
        self._begin_body(head)
        return end

    def _too_large(self, size: int) -> PeerError:
        return self._error(f"head larger than {self._limit} bytes ({size})", 431)

    def _read_line(self, data: bytes, pos: int) -> int:
        """A chunk-size line, the CRLF after chunk data, or a trailer line."""
        line = self._cline
        if self._state == _CHUNK_END:
            got = data[pos:pos + 2 - len(line)]
            line += got
            if not b"\r\n".startswith(line):
                return self._fail(self._error("bad chunk end"))
            if len(line) == 2:
                line.clear()
                self._state = _CHUNK_SIZE
            return pos + len(got)
        j = data.find(b"\n", pos)
        if j < 0:
            line += data[pos:]
            if len(line) > _MAX_CHUNK_LINE:
                return self._fail(self._error("chunk-size or trailer line too long"))
            return len(data)
        whole = bytes(line) + data[pos:j] if line else data[pos:j]
        line.clear()
        if not whole.endswith(b"\r"):
            return self._fail(self._error("a line ends without CR"))
        whole = whole[:-1]
        if self._state == _CHUNK_SIZE:
            m = _CHUNK_LINE.fullmatch(whole)
            if m is None:
                return self._fail(self._error("bad chunk-size line"))
            self._left = int(m.group(1), 16)
            self._state = _CHUNK_DATA if self._left else _TRAILERS
            self._trailer_bytes = 0
        elif not whole:
            self._end_message()
        else:
            self._trailer_bytes += len(whole) + 2
            if self._trailer_bytes > self._limit:
                return self._fail(self._too_large(self._trailer_bytes))
            if _FIELD_LINE.fullmatch(whole) is None:
                return self._fail(self._error("malformed trailer"))
            name = whole[:whole.find(b":")].lower()
            if name in (b"content-length", b"transfer-encoding", b"host"):
                return self._fail(self._error("framing header in trailers"))
        return j + 1

    def _end_message(self) -> None:
        self._events.append(_END)
        self._state = _DONE

    def _on_eof(self) -> None:
        state = self._state
        if state == _HEAD:
            if self._head_len:
                self._fail(self._error("connection closed mid-head"))
        elif state == _UNTIL_CLOSE:
            self._end_message()
        elif state not in (_DONE, _SWITCHED, _FAILED):
            self._fail(self._error("connection closed mid-body"))

    def _framing(self, te_status: int) -> None:
        """Content-Length and chunked of the head just read, refusing what h11 refuses."""
        length: int | None = None
        chunked = False
        headers = self._headers
        for i, (name, value) in enumerate(headers):
            if name == b"content-length":
                if length is not None:
                    raise self._error("more than one Content-Length")
                if not value.isdigit() or len(value) > 18:
                    raise self._error("bad Content-Length")
                length = int(value)
            elif name == b"transfer-encoding":
                if chunked or value.lower() != b"chunked":
                    raise self._error("only Transfer-Encoding: chunked is supported", te_status)
                chunked = True
                headers[i] = (name, b"chunked")  # (h11 hands it lower-cased)
        if chunked and length is not None:
            raise self._error("both Content-Length and Transfer-Encoding")
        self._length = length
        self._chunked = chunked

    def _body(self) -> None:
        length = self._length
        if self._chunked:
            self._state = _CHUNK_SIZE
        elif length:
            self._state = _LENGTH
            self._left = length
        else:
            self._end_message()

    # --- the common interface -------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
            self._on_eof()
            return
        self._process(data if type(data) is bytes else bytes(data))

    def _next(self) -> Event | _Error | None:
        events = self._events
        if events:
            ev = events.popleft()
            if type(ev) is _Error:
                events.clear()
                self._failure = ev.exc
                raise ev.exc
            if ev is _END:
                self.their_done = True
            return ev
        if self._failure is not None:
            raise self._failure
        return None

    def _idle_event(self) -> Event:
        """What ``next_event`` says when no event is queued."""
        if self.their_done:
            if self._proposal or self._rest or self._state == _SWITCHED:
                return _PAUSED
            return _CLOSED if self._eof else _NEED_DATA
        if self._state == _SWITCHED:
            return _PAUSED
        if self._eof and self._state == _HEAD and not self._head_len:
            return _CLOSED
        return _NEED_DATA

    def _restart(self) -> None:
        """Start reading the next message (``start_next_cycle``)."""
        self.their_done = False
        self._state = _HEAD
        self._reset_head()
        if self._rest:
            data = bytes(self._rest)
            self._rest.clear()
            self._process(data)
        if self._eof:
            self._on_eof()

    @property
    def their_message_done(self) -> bool:
        return self.their_done

    @property
    def trailing_data(self) -> bytes:
        """Bytes received beyond the last message (after a protocol switch: the new protocol's)."""
        return bytes(self._rest)


class ServerCodec(_Reader):
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

    def _bad_start(self) -> PeerError:
        return self._error("malformed request line")

    def _check_start_line(self, line: bytes) -> PeerError | None:
        start = self._start = _REQUEST_LINE.fullmatch(line)
        if start is None:
            return self._bad_start()
        version = start.group(3)
        if version not in _HTTP_VERSIONS:
            return self._error(f"HTTP/{version.decode()} is not supported", 505)
        return None

    def on_headers_complete(self) -> None:
        self._head_done = True
        start = self._start
        assert start is not None
        method, target, version = start.groups()
        if method == b"CONNECT":
            raise self._error("CONNECT is not supported", 405)
        hosts = 0
        close = version != b"1.1"
        expect = upgrade = False
        for name, value in self._headers:
            if name == b"host":
                hosts += 1
            elif name == b"connection":
                close = close or b"close" in _tokens(value)
            elif name == b"expect":
                expect = expect or b"100-continue" in _tokens(value)
            elif name == b"upgrade":
                upgrade = upgrade or any(_tokens(value))
        if hosts > 1 or (hosts == 0 and version == b"1.1"):
            raise self._error("a request needs exactly one Host header")
        self._framing(501)
        self._pending = RequestHead(method, target, self._headers, version)
        self._method = method
        self._version = version
        self._keep_alive = not close
        self._expect = expect and version == b"1.1"
        self._proposal = upgrade

    def _begin_body(self, head: RequestHead | ResponseHead) -> None:
        self._body()

    def next_event(self) -> Event:
        ev = self._next()
        if ev is None:
            return self._idle_event()
        if type(ev) is Body or ev is _END:
            self._expect = False
        return ev  # type: ignore[return-value]

    @property
    def nothing_buffered(self) -> bool:
        """No byte was fed in this cycle yet, so ``next_event`` would only say NEED_DATA."""
        return not self._events and self._state == _HEAD and not self._head_len and not self._eof

    # --- responses ------------------------------------------------------------------
    def response_head(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"", *, trusted: bool = False
    ) -> bytes:
        if self._writer.started:
            raise LocalProtocolError("a response was already started")
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
        elif has_close(out):
            self._keep_alive = False
        return frame_head(b"HTTP/1.1 %d %b\r\n" % (status, reason or reason_phrase(status)), out)

    def informational(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"") -> bytes:
        if self._writer.started:
            raise LocalProtocolError("a response was already started")
        self._expect = False
        if status == 101:
            if not (self._proposal and self.their_done):
                raise LocalProtocolError("101 without an upgrade request")
            self.switched = True
            self._state = _SWITCHED
        return frame_head(b"HTTP/1.1 %d %b\r\n" % (status, reason or reason_phrase(status)), headers)

    def data(self, data: bytes) -> bytes:
        return self._writer.data(data)

    def end(self, trailers: Headers = ()) -> bytes:
        return self._writer.end(trailers)

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


class ClientCodec(_Reader):
    """The upstream-facing side (we are the client), on llhttp; see ``workers.http1.ClientCodec``."""

    __slots__ = ("_keep_alive", "_method", "_req_close", "_writer", "switched")

    trailers_need_chunked = True

    def __init__(self, max_header_bytes: int = MAX_RESPONSE_HEAD) -> None:
        super().__init__(max_header_bytes)
        self._writer = Writer()
        self._method = b""
        self._keep_alive = False
        self._req_close = False
        self.switched = False

    def _new_parser(self) -> httptools.HttpResponseParser:
        return httptools.HttpResponseParser(self)

    def _error(self, message: str, status: int = 502) -> PeerError:
        return UpstreamFailed(f"bad response from upstream: {message}")

    _line_prefix = _STATUS_PREFIX

    def _bad_start(self) -> PeerError:
        return self._error("malformed status line")

    def _check_start_line(self, line: bytes) -> PeerError | None:
        start = self._start = _STATUS_LINE.fullmatch(line)
        if start is None:
            return self._bad_start()
        version = start.group(1)
        if version not in _HTTP_VERSIONS:
            return self._error(f"HTTP/{version.decode()}")
        return None

    def on_headers_complete(self) -> None:
        self._head_done = True
        start = self._start
        assert start is not None
        version, status, reason = start.groups()
        code = int(status)
        if code < 100:
            raise self._error(f"status {code}")
        self._framing(502)
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
                self._state = _SWITCHED
                return
            self._reset_head()  # an interim answer: the real one follows
            return
        self._proposal = False
        close = self._req_close or head.http_version != b"1.1"
        for name, value in head.headers:
            if name == b"connection" and b"close" in _tokens(value):
                close = True
        if self._method == b"HEAD" or status in _NO_BODY_STATUS:
            self._end_message()
        elif self._chunked or self._length is not None:
            self._body()
        else:
            self._state = _UNTIL_CLOSE
            close = True
        self._keep_alive = not close

    def _on_eof(self) -> None:
        if self._state == _HEAD and not self._head_len and self._writer.started:
            self._fail(self._error("the upstream closed the connection without answering"))
        else:
            super()._on_eof()

    def request_head(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], *, trusted: bool = False
    ) -> bytes:
        self._method = method
        self._proposal = method == b"CONNECT" or any(
            n.lower() == b"upgrade" and any(_tokens(v)) for n, v in headers
        )
        self._req_close = has_close(headers)
        out, _ = self._writer.begin(headers, no_body=False, chunk_ok=True, request=True)
        return frame_head(method + b" " + target + b" HTTP/1.1\r\n", out)

    def next_event(self) -> Event:
        ev = self._next()
        if ev is None:
            return self._idle_event()
        return ev  # type: ignore[return-value]

    @property
    def nothing_buffered(self) -> bool:
        return not self._events and self._state == _HEAD and not self._head_len and not self._eof

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

    def start_next_cycle(self) -> None:
        if not self.reusable:
            raise LocalProtocolError("not in a reusable state")
        self._writer = Writer()
        self._restart()


__all__ = ["MAX_RESPONSE_HEAD", "ClientCodec", "LocalProtocolError", "ServerCodec", "reason_phrase"]
