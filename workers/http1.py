"""Our HTTP/1.1 codec interface (sans-I/O), implemented on h11.

Theory of operation
-------------------
The proxy never imports h11.  It talks to two small classes:

* ``ServerCodec`` -- the client-facing side: bytes from the client go in with
  ``receive_data``; ``next_event`` yields ``RequestHead`` / ``Body`` / ``Signal``
  values; ``response_head`` / ``data`` / ``end`` / ``informational`` turn our answer
  into bytes to write.
* ``ClientCodec`` -- the upstream-facing side, the mirror image (``request_head`` out,
  ``ResponseHead`` in).

Events are plain NamedTuples and enum members, so that a faster parser can later
stand beside h11 (and be checked against it by differential tests) without touching
routing or proxying.  Header names are lower-case bytes; values are bytes.

Errors: a peer that breaks the protocol raises ``BadRequest``/``HeadersTooLarge``
(client side, with h11's ``error_status_hint``) or ``UpstreamFailed`` (upstream side).
After a client-side protocol error an error response may still be sent.

Framing is the codec's job: ``response_head`` adds chunked encoding or close-delimiting
when no Content-Length is given, HEAD/204/304 carry no body, and ``reusable`` says
whether the connection may carry another message.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import NamedTuple

import h11

from fastingress.errors import BadRequest, HeadersTooLarge, UpstreamFailed

Headers = Sequence[tuple[bytes, bytes]]
REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}  # 503: Service Unavailable


def reason_phrase(status: int) -> bytes:
    """h11 sends an empty reason unless given one; both codecs send these (``Unknown`` otherwise)."""
    return REASONS.get(status, b"Unknown")


class RequestHead(NamedTuple):
    method: bytes
    target: bytes
    headers: Headers  # lower-case names
    http_version: bytes


class ResponseHead(NamedTuple):
    status: int
    headers: Headers  # lower-case names
    reason: bytes
    http_version: bytes


class Body(NamedTuple):
    data: bytes


class Signal(enum.Enum):
    NEED_DATA = "need-data"  # feed more bytes with receive_data
    PAUSED = "paused"  # message done; call start_next_cycle (or the protocol switched)
    END = "end-of-message"
    CLOSED = "connection-closed"  # the peer closed cleanly between messages


Event = RequestHead | ResponseHead | Body | Signal

# RFC 9110 field-value (as h11 checks it): visible ASCII, obs-text, inner spaces and tabs.
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[ \t]*[\x21-\x7e\x80-\xff])*)?")


def valid_value(value: bytes) -> bool:
    """Whether ``value`` may be sent as a header value (for values from configuration)."""
    return _FIELD_VALUE.fullmatch(value) is not None

_DONE = h11.DONE

# Raised when we (not the peer) try to send something the protocol forbids, e.g. more body
# than the Content-Length we declared.  Re-exported so only this module imports h11.
LocalProtocolError = h11.LocalProtocolError
_HTTP1 = (b"1.1", b"1.0")


class _Codec:
    __slots__ = ("_conn", "_fed")

    # HTTP/1.1 carries trailers only in a chunked body; callers pass them to ``end`` only then.
    # (An HTTP/2 stream's codec carries them whatever the framing.)
    trailers_need_chunked = True

    def __init__(self, conn: h11.Connection) -> None:
        self._conn = conn
        self._fed = 0  # bytes fed since this cycle started (incl. leftovers of the last one)

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        self._fed += len(data)
        self._conn.receive_data(data)  # type: ignore[arg-type]  # h11 takes any bytes-like

    @property
    def nothing_buffered(self) -> bool:
        """No byte was fed in this cycle yet, so ``next_event`` would only say NEED_DATA
        (lets the caller skip that call before its first read)."""
        return self._fed == 0

    def data(self, data: bytes) -> bytes:
        return self._conn.send(h11.Data(data=data)) or b""

    def end(self, trailers: Headers = ()) -> bytes:
        """End of message; ``trailers`` only on a chunked message (see ``trailers_need_chunked``)."""
        if trailers:
            return self._conn.send(h11.EndOfMessage(headers=list(trailers))) or b""
        return self._conn.send(h11.EndOfMessage()) or b""

    @property
    def reusable(self) -> bool:
        """Both directions finished their message and the connection may be kept alive."""
        return self._conn.our_state is _DONE and self._conn.their_state is _DONE

    @property
    def their_message_done(self) -> bool:
        return self._conn.their_state is _DONE

    @property
    def switched(self) -> bool:
        return self._conn.our_state is h11.SWITCHED_PROTOCOL

    @property
    def trailing_data(self) -> bytes:
        """Bytes received beyond the last event (after a protocol switch)."""
        return bytes(self._conn.trailing_data[0])

    def start_next_cycle(self) -> None:
        self._conn.start_next_cycle()
        self._fed = len(self._conn.trailing_data[0])

    def _convert(self, ev: object) -> Event:
        t = type(ev)
        if t is h11.Data:
            data = ev.data  # type: ignore[attr-defined]
            return Body(data if type(data) is bytes else bytes(data))  # (h11 hands out bytearray slices)
        if t is h11.EndOfMessage:
            return Signal.END
        if ev is h11.NEED_DATA:
            return Signal.NEED_DATA
        if ev is h11.PAUSED:
            return Signal.PAUSED
        if t is h11.Request:
            return RequestHead(ev.method, ev.target, ev.headers, ev.http_version)  # type: ignore[attr-defined]
        if t is h11.Response or t is h11.InformationalResponse:
            return ResponseHead(
                ev.status_code,  # type: ignore[attr-defined]
                ev.headers,  # type: ignore[attr-defined]
                ev.reason,  # type: ignore[attr-defined]
                ev.http_version,  # type: ignore[attr-defined]
            )
        return Signal.CLOSED


class ServerCodec(_Codec):
    """The client-facing side of a connection (we are the server).

    h11 enforces ``max_header_bytes`` only on a head that is still incomplete; a head
    that arrives whole in one read is measured here, but only when more than the limit
    was fed since the cycle started (the common case costs one comparison).
    """

    __slots__ = ("_max_head",)

    def __init__(self, max_header_bytes: int) -> None:
        super().__init__(h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes))
        self._max_head = max_header_bytes

    def next_event(self) -> Event:
        try:
            ev = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                raise HeadersTooLarge(f"request head too large: {exc}") from None
            raise BadRequest(f"malformed request: {exc}", status_hint=exc.error_status_hint) from None
        if type(ev) is not h11.Request:
            return self._convert(ev)
        if ev.http_version not in _HTTP1:
            raise BadRequest(f"HTTP/{ev.http_version.decode()} is not supported", status_hint=505)
        if self._fed > self._max_head:
            size = len(ev.method) + len(ev.target) + 12
            for name, value in ev.headers:
                size += len(name) + len(value) + 4
            if size > self._max_head:
                raise HeadersTooLarge(f"request head too large: {size} bytes")
        return self._convert(ev)

    @property
    def waiting_for_100_continue(self) -> bool:
        return bool(self._conn.they_are_waiting_for_100_continue)

    @property
    def can_respond(self) -> bool:
        """True while no response has been started in this cycle."""
        return self._conn.our_state is h11.SEND_RESPONSE

    def response_head(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"", *, trusted: bool = False
    ) -> bytes:
        """``trusted``: every name and value came out of a parser or passed ``valid_value``
        (skips h11's per-header regex validation, the largest single cost of a proxied request)."""
        return self._conn.send(
            h11.Response(
                status_code=status, headers=headers, reason=reason or reason_phrase(status), _parsed=trusted
            )
        ) or b""

    def informational(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"") -> bytes:
        return (
            self._conn.send(h11.InformationalResponse(
                status_code=status, headers=headers, reason=reason or reason_phrase(status)))
            or b""
        )


class ClientCodec(_Codec):
    """The upstream-facing side of a connection (we are the client)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(h11.Connection(h11.CLIENT))

    def next_event(self) -> Event:
        try:
            ev = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamFailed(f"bad response from upstream: {exc}") from None
        return self._convert(ev)

    def request_head(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], *, trusted: bool = False
    ) -> bytes:
        """``trusted``: as for ``ServerCodec.response_head``; ``method`` and ``target`` too."""
        return self._conn.send(
            h11.Request(method=method, target=target, headers=headers, _parsed=trusted)
        ) or b""


__all__ = [
    "Body", "ClientCodec", "Event", "Headers", "RequestHead", "ResponseHead", "ServerCodec", "Signal",
    "valid_value",
]
