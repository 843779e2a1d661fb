"""Message framing for the llhttp codecs (``workers.llhttp``): the receiving half.

Theory of operation
-------------------
llhttp reports where a message ends only by callbacks, never as an offset, and it reads past
the end into the next message (skipping empty lines before it, parsing pipelined heads ahead
of time).  So ``Reader`` frames each message itself and hands llhttp nothing but heads:

* a head ends at the first CRLFCRLF (llhttp's lenient flags are off, so no other line end is
  accepted); only the bytes up to it are fed to llhttp, as they arrive, so that garbage is
  refused at once; if llhttp has not completed the head there, the head is refused;
* the start line is held back until it is whole and matched against h11's grammar first (so
  that the answer does not depend on how the bytes arrived); a start line that cannot become
  valid is refused at once, and a message may not start with an empty line (as h11);
* a Content-Length body is counted here, a chunked body is decoded here (``_CHUNK_LINE``,
  strict: 1-16 hex digits, RFC 9112 extensions, exact CRLFs, trailers as field lines, no
  framing fields among them), a response body without framing runs to EOF;
* at the end of a message the reader stops: later bytes wait in ``_rest`` until the codec
  starts the next cycle (as in h11), so per-message state never mixes with a pipelined next
  message, and the bytes after a protocol switch are exact.

Events (``RequestHead``/``ResponseHead``, ``Body``, ``Signal.END``) and errors go into one
queue in order, so a complete message that precedes garbage is still delivered, as with h11.
llhttp also counts Content-Length bodies (fed without a callback), so that after a keep-alive
message it may read the next head; a new parser (0.3 µs) replaces one that did not finish its
message cleanly (a chunked body, a HEAD answer, an upgrade, ``Connection: close``).
The codecs (``workers.llhttp``) supply the start-line grammar, the head checks and the
framing decisions (``_check_start_line``, ``on_headers_complete``, ``_begin_body``).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, ClassVar

import httptools

from fastingress.errors import PeerError
from workers.http1 import Body, Event, RequestHead, ResponseHead, Signal

_NEED_DATA = Signal.NEED_DATA
_PAUSED = Signal.PAUSED
_END = Signal.END
_CLOSED = Signal.CLOSED

# reader states
HEAD = 0  # reading a head (the start of a message)
LENGTH = 1  # a Content-Length body: ``_left`` bytes to go
CHUNK_SIZE = 2  # chunked: a chunk-size line
CHUNK_DATA = 3  # chunked: ``_left`` bytes of chunk data
CHUNK_END = 4  # chunked: the CRLF after chunk data
TRAILERS = 5  # chunked: trailer lines up to an empty line
UNTIL_CLOSE = 6  # a response body that ends at EOF
DONE = 7  # the message is complete; later bytes wait in ``_rest``
SWITCHED = 8  # the protocol switched; bytes wait in ``_rest``
FAILED = 9

TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:;" + TOKEN + rb"(?:=(?:" + TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
_FIELD_LINE = re.compile(TOKEN + rb":[ \t]*(?:[\x21-\x7e\x80-\xff](?:[ \t]*[\x21-\x7e\x80-\xff])*)?[ \t]*")
_MAX_CHUNK_LINE = 4096
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
HTTP_VERSIONS = frozenset({b"1.1", b"1.0"})
_SPECIAL = frozenset({*_FRAMING, b"connection", b"expect", b"upgrade"})


def comma_tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",")]


class Error:
    """A queued parse error: raised by ``next_event`` once the events before it are consumed."""

    __slots__ = ("exc",)

    def __init__(self, exc: PeerError) -> None:
        self.exc = exc


class Reader:
    """The receiving half both codecs share: framing here, heads parsed by llhttp."""

    __slots__ = (
        "_chunked", "_cline", "_eof", "_events", "_failure", "_head_len", "_headers",
        "_left", "_length", "_limit", "_line", "_line_done", "_msg_done", "_parser", "_pending",
        "_proposal", "_rest", "_reuse", "_start", "_state", "_tail", "_trailer_bytes", "their_done",
    )

    _parser: Any  # httptools.HttpRequestParser / HttpResponseParser (None once released)
    _line_prefix: ClassVar[re.Pattern[bytes]]  # what may begin a start line
    _line_re: ClassVar[re.Pattern[bytes]]  # a start line
    _version_group: ClassVar[int]  # the HTTP version in a ``_line_re`` match

    def __init__(self, limit: int) -> None:
        self._events: deque[Event | Error] = deque()
        self._limit = limit
        self._state = HEAD
        self._parser = self._new_parser()
        self._reuse = True  # the parser may read the next head
        self._rest = bytearray()  # bytes beyond the current message
        self._eof = False
        self._failure: PeerError | None = None
        self._proposal = False  # the peer (or we) asked for a protocol switch
        self._cline = bytearray()  # a partial chunk-size, chunk-end or trailer line
        self._line = bytearray()  # the start of a start line, held back until it is whole
        self._left = 0
        self._trailer_bytes = 0
        self._pending: RequestHead | ResponseHead | None = None  # queued once llhttp accepted the head
        self._start: re.Match[bytes] | None = None  # the start line of the head being read
        self._length: int | None = None  # framing of the message being read
        self._chunked = False
        self.their_done = False
        self._reset_head()

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        raise NotImplementedError

    def _error(self, message: str, status: int = 400) -> PeerError:
        raise NotImplementedError

    def _check_start_line(self, line: bytes, start: int, end: int) -> PeerError | None:
        """Match ``line[start:end]``, the start line (into ``_start``); the error, if any."""
        raise NotImplementedError

    def _bad_start(self) -> PeerError:
        raise NotImplementedError

    def _begin_body(self, head: RequestHead | ResponseHead) -> None:
        """The head was read: what follows, by its framing (``_length``, ``_chunked``)."""
        length = self._length
        if self._chunked:
            self._state = CHUNK_SIZE
        elif length:
            self._state = LENGTH
            self._left = length
        else:
            self._events.append(_END)
            self._state = DONE

    def _reset_head(self) -> None:
        self._head_len = 0
        self._line_done = False
        self._tail = b""  # the last bytes of the head so far (a CRLFCRLF across reads)
        self._headers: list[tuple[bytes, bytes]] = []
        self._msg_done = False  # llhttp completed the message (no body, per llhttp)

    # --- httptools callbacks --------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        # (llhttp checked the name is a token and the value has no control character but
        # HTAB, and dropped the blanks before the value; those after it are ours to drop)
        self._headers.append((name.lower(), value.rstrip(b" \t")))

    def on_message_complete(self) -> None:
        self._msg_done = True

    # --- framing --------------------------------------------------------------------
    def _fail(self, exc: PeerError) -> int:
        self._events.append(Error(exc))
        self._state = FAILED
        self._pending = None
        return 1 << 62

    def _process(self, data: bytes) -> None:
        """Consume ``data`` as far as the current message goes; keep the rest in ``_rest``."""
        pos = 0
        n = len(data)
        while pos < n:
            state = self._state
            if state == HEAD:
                pos = self._read_head(data, pos)
            elif state in (LENGTH, CHUNK_DATA):
                end = min(pos + self._left, n)
                body = data if pos == 0 and end == n else data[pos:end]
                self._events.append(Body(body))
                if self._reuse and state == LENGTH:
                    # llhttp counts a Content-Length body too (no callback), so that it may
                    # read the next head: cheaper than a new parser when the body came along
                    try:
                        self._parser.feed_data(body)
                    except httptools.HttpParserError:
                        self._reuse = False
                self._left -= end - pos
                pos = end
                if not self._left:
                    if state == LENGTH:
                        if not self._msg_done:
                            self._reuse = False
                        self._events.append(_END)
                        self._state = DONE
                    else:
                        self._state = CHUNK_END
            elif state == UNTIL_CLOSE:
                self._events.append(Body(data if pos == 0 else data[pos:]))
                return
            elif state in (DONE, SWITCHED):
                self._rest += data[pos:] if pos else data
                return
            elif state == FAILED:
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
            if not line:
                j = data.find(b"\r\n", pos, stop)
                if j >= 0:  # (the common case: the whole line in one read)
                    start = self._line_re.fullmatch(data, pos, j)
                    if start is not None and start.group(self._version_group) in HTTP_VERSIONS:
                        self._start = start
                        err = None
                    else:
                        err = self._check_start_line(data, pos, j)
                else:
                    err = self._hold_line(chunk, size)
                    if err is None:
                        return n
            else:
                if line[-1] == 13 and data[pos] == 10:  # (CR | LF across two reads)
                    text = bytes(line[:-1])
                else:
                    j = data.find(b"\r\n", pos, stop)
                    if j < 0:
                        err = self._hold_line(chunk, size)
                        if err is None:
                            return n
                        return self._fail(err)
                    text = bytes(line) + data[pos:j]
                err = self._check_start_line(text, 0, len(text))
                chunk = bytes(line) + chunk
                line.clear()
            if err is not None:
                return self._fail(err)
            self._line_done = True
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
        if head is None:  # (llhttp did not see the head end where we did)
            return self._fail(self._error("malformed head"))
        self._events.append(head)
        self._pending = None
        clean = self._msg_done and self._parser.should_keep_alive()
        self._begin_body(head)
        if not (clean or (self._state == LENGTH and self._parser.should_keep_alive())):
            self._reuse = False
        return end

    def _hold_line(self, chunk: bytes | memoryview, size: int) -> PeerError | None:
        """Keep the start of a start line until it is whole (unless it cannot become valid)."""
        line = self._line
        line += chunk
        if self._line_prefix.fullmatch(line) is None:
            return self._bad_start()
        self._head_len = size
        self._tail = bytes(line[-3:])
        return None

    def _too_large(self, size: int) -> PeerError:
        return self._error(f"head larger than {self._limit} bytes ({size})", 431)

    def _read_line(self, data: bytes, pos: int) -> int:
        """A chunk-size line, the CRLF after chunk data, or a trailer line."""
        line = self._cline
        if self._state == CHUNK_END:
            got = data[pos:pos + 2 - len(line)]
            line += got
            if not b"\r\n".startswith(line):
                return self._fail(self._error("bad chunk end"))
            if len(line) == 2:
                line.clear()
                self._state = CHUNK_SIZE
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
        if self._state == CHUNK_SIZE:
            m = _CHUNK_LINE.fullmatch(whole) if len(whole) <= _MAX_CHUNK_LINE else None
            if m is None:
                return self._fail(self._error("bad chunk-size line"))
            self._left = int(m.group(1), 16)
            self._state = CHUNK_DATA if self._left else TRAILERS
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
            if name in _FRAMING:
                return self._fail(self._error("framing header in trailers"))
        return j + 1

    def _end_message(self) -> None:
        self._events.append(_END)
        self._state = DONE

    def _on_eof(self) -> None:
        state = self._state
        if state == HEAD:
            if self._head_len:
                self._fail(self._error("connection closed mid-head"))
        elif state == UNTIL_CLOSE:
            self._end_message()
        elif state not in (DONE, SWITCHED, FAILED):
            self._fail(self._error("connection closed mid-body"))

    def _scan(self, te_status: int) -> tuple[int, bool, bool, bool]:
        """One pass over the fields of the head just read: its framing (into ``_length`` and
        ``_chunked``, refusing what h11 refuses), and the number of Host fields, whether
        Connection holds ``close``, Expect ``100-continue``, and Upgrade a protocol."""
        length: int | None = None
        chunked = close = expect = upgrade = False
        hosts = 0
        headers = self._headers
        for i, (name, value) in enumerate(headers):
            if name not in _SPECIAL:
                continue
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
            elif name == b"host":
                hosts += 1
            elif name == b"connection":
                close = close or b"close" in comma_tokens(value)
            elif name == b"expect":
                expect = expect or b"100-continue" in comma_tokens(value)
            else:
                upgrade = upgrade or any(comma_tokens(value))
        if chunked and length is not None:
            raise self._error("both Content-Length and Transfer-Encoding")
        self._length = length
        self._chunked = chunked
        return hosts, close, expect, upgrade

    # --- the common interface -------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if not data:
            self._eof = True
            self._on_eof()
            return
        self._process(data if type(data) is bytes else bytes(data))

    def _raise(self, err: Error) -> None:
        self._events.clear()
        self._failure = err.exc
        raise err.exc

    def _idle_event(self) -> Event:
        """What ``next_event`` says when no event is queued."""
        if self.their_done:
            if self._proposal or self._rest or self._state == SWITCHED:
                return _PAUSED
            return _CLOSED if self._eof else _NEED_DATA
        if self._state == SWITCHED:
            return _PAUSED
        if self._eof and self._state == HEAD and not self._head_len:
            return _CLOSED
        return _NEED_DATA

    def _restart(self) -> None:
        """Start reading the next message (``start_next_cycle``)."""
        self.their_done = False
        self._state = HEAD
        self._reset_head()
        if self._rest:
            data = bytes(self._rest)
            self._rest.clear()
            self._process(data)
        if self._eof:
            self._on_eof()

    def release(self) -> None:
        """The connection ended: drop the parser (it refers back to us through its callbacks,
        a cycle only the garbage collector could free)."""
        self._parser = None
        self._events.clear()

    @property
    def their_message_done(self) -> bool:
        return self.their_done

    @property
    def trailing_data(self) -> bytes:
        """Bytes received beyond the last message (after a protocol switch: the new protocol's)."""
        return bytes(self._rest)


__all__ = [
    "CHUNK_DATA", "CHUNK_END", "CHUNK_SIZE", "DONE", "FAILED", "HEAD", "HTTP_VERSIONS", "LENGTH", "SWITCHED",
    "TOKEN", "TRAILERS", "UNTIL_CLOSE", "Error", "Reader", "comma_tokens",
]
