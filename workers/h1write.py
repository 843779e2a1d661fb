"""Framing of the HTTP/1.1 messages we send, for the llhttp codecs (``workers.llhttp``).

It frames the way h11 does (the reference codec), so that a response or request reads the
same whichever codec wrote it:

* a Content-Length given is kept, and the body must match it;
* without one, a response to an HTTP/1.1 peer is chunked (``transfer-encoding: chunked``
  replaces any Content-Length); a response to an HTTP/1.0 peer, or to a request we could not
  read, is delimited by closing the connection, with no framing header;
* a response to HEAD carries the headers a GET would get and no body; 1xx, 204 and 304 carry
  no body and keep their headers as given (body bytes given for them are dropped, where h11
  raises: the proxy's own answers to HEAD requests pass their body);
* a request without Content-Length or chunked encoding has no body;
* ``Connection: close`` (a single header, ``keep-alive`` dropped) when the connection will
  not be reused;
* fields not marked trusted are checked as h11 checks them (``check_fields``).
"""

from __future__ import annotations

import re

from workers.http1 import Headers, reason_phrase, valid_value

_CHUNKED = b"chunked"
_COLON_SP = b": "
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_WATCHED = frozenset({*_FRAMING, b"connection", b"upgrade"})
_NAME = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_REASON = re.compile(rb"[\t \x21-\x7e\x80-\xff]*")
_TARGET = re.compile(rb"[\x21-\x7e]+")

# modes of a message we send
_NONE = 0  # nothing started in this cycle
_LENGTH = 1
_CHUNK = 2
_UNTIL_CLOSE = 3
_NO_BODY = 4
_DONE = 5


class LocalProtocolError(Exception):
    """We (not the peer) tried to send something the framing forbids (e.g. more body than
    the Content-Length we declared)."""


def check_fields(headers: Headers, reason: bytes = b"", target: bytes = b"/") -> None:
    """What h11 checks in a message we send unless told it is trusted: field names are
    tokens, values valid field values, a reason phrase or target has no CR, LF or NUL
    (so that nothing from configuration can split a head)."""
    for name, value in headers:
        if _NAME.fullmatch(name) is None or not valid_value(value):
            raise LocalProtocolError(f"invalid header field {name!r}: {value!r}")
    if _REASON.fullmatch(reason) is None or _TARGET.fullmatch(target) is None:
        raise LocalProtocolError("invalid reason phrase or request target")


def frame_head(first_line: bytes, headers: Headers) -> bytes:
    if not headers:
        return first_line + b"\r\n"
    # (``b": ".join`` of each (name, value) pair: the loop runs in C)
    return first_line + b"\r\n".join(map(_COLON_SP.join, headers)) + b"\r\n\r\n"


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",")]


def with_close(headers: Headers) -> list[tuple[bytes, bytes]]:
    """``headers`` with one ``Connection`` header that holds ``close`` (as h11 sends it)."""
    tokens: set[bytes] = set()
    out = []
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
        else:
            out.append((name, value))
    tokens.discard(b"keep-alive")
    tokens.add(b"close")
    out.append((b"connection", b", ".join(sorted(tokens))))
    return out


class Writer:
    """The framing of the message we send in one cycle.

    ``begin`` also notes whether the headers hold ``Connection: close`` (``close``) and an
    ``Upgrade`` with a protocol in it (``upgrade``).
    """

    __slots__ = ("_left", "_mode", "close", "upgrade")

    def __init__(self) -> None:
        self._mode = _NONE
        self._left = 0
        self.close = False
        self.upgrade = False

    def begin(
        self, headers: Headers, *, no_body: bool, chunk_ok: bool, head: bool = False, request: bool = False
    ) -> tuple[Headers, bool]:
        """Choose the framing; returns the headers to send and whether the body ends at close.

        ``no_body``: 1xx/204/304 (headers kept as given); ``head``: the answer to a HEAD
        request (framed as for GET, no body); ``request``: no framing header means no body.
        """
        if self._mode != _NONE:
            raise LocalProtocolError("a message was already started in this cycle")
        length: int | None = None
        chunked = close = upgrade = False
        for name, value in headers:  # (names are lower case: every producer of them makes sure)
            if name in _WATCHED:
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"connection":
                    close = close or b"close" in _tokens(value)
                else:
                    upgrade = upgrade or any(_tokens(value))
        self.close = close
        self.upgrade = upgrade
        if no_body:
            self._mode = _NO_BODY
            return headers, False
        if not chunked and length is not None:
            self._mode = _NO_BODY if head else _LENGTH
            self._left = length
            return headers, False
        if request and not chunked:
            self._mode = _NO_BODY
            return headers, False
        out = [(n, v) for n, v in headers if n not in _FRAMING]
        if chunk_ok:
            out.append((b"transfer-encoding", _CHUNKED))
            self._mode = _NO_BODY if head else _CHUNK
            return out, False
        self._mode = _NO_BODY if head else _UNTIL_CLOSE
        return out, not head

    def begin_framed(self, length: int | None, chunked: bool, *, no_body: bool, head: bool) -> None:
        """``begin`` when the caller already knows the framing of what it sends (``length``
        and ``chunked``, with no Connection close or Upgrade among the headers) and sends no
        framing header of its own but the Content-Length: the fast lane of a relayed answer
        and of a forwarded request.  The caller adds ``transfer-encoding: chunked`` when the
        mode is ``CHUNK`` (``chunked_out``)."""
        if self._mode != _NONE:
            raise LocalProtocolError("a message was already started in this cycle")
        self.close = False
        self.upgrade = False
        if no_body:
            self._mode = _NO_BODY
        elif length is not None and not chunked:
            self._mode = _NO_BODY if head else _LENGTH
            self._left = length
        else:
            self._mode = _NO_BODY if head else _CHUNK

    def data(self, data: bytes) -> bytes:
        mode = self._mode
        if not data:
            return b""
        if mode == _LENGTH:
            left = self._left - len(data)
            if left < 0:
                raise LocalProtocolError("Too much data for declared Content-Length")
            self._left = left
            return data
        if mode == _CHUNK:
            return b"%x\r\n%b\r\n" % (len(data), data)
        if mode == _UNTIL_CLOSE:
            return data
        if mode == _NO_BODY:
            return b""  # (a HEAD/204/304 answer: the body a GET would get is dropped)
        raise LocalProtocolError("no message body may be sent now")

    def end(self, trailers: Headers) -> bytes:
        mode = self._mode
        if mode == _CHUNK:
            self._mode = _DONE
            if trailers:
                return b"0\r\n" + b"".join([n + b": " + v + b"\r\n" for n, v in trailers]) + b"\r\n"
            return b"0\r\n\r\n"
        if mode == _LENGTH and self._left:
            raise LocalProtocolError("Too little data for declared Content-Length")
        if mode in (_NONE, _DONE):
            raise LocalProtocolError("no message to end")
        self._mode = _DONE
        return b""

    @property
    def length_left(self) -> int | None:
        """Body bytes still due under a Content-Length framing (None: another framing)."""
        return self._left if self._mode == _LENGTH else None

    def sent_elsewhere(self, n: int) -> None:
        """``n`` body bytes went out without ``data`` (spliced by the kernel)."""
        if self._mode != _LENGTH or n > self._left:
            raise LocalProtocolError("spliced bytes do not fit the declared Content-Length")
        self._left -= n

    @property
    def done(self) -> bool:
        return self._mode == _DONE

    @property
    def started(self) -> bool:
        return self._mode != _NONE


__all__ = ["LocalProtocolError", "Writer", "check_fields", "frame_head", "reason_phrase", "with_close"]
