"""A small HTTP/2 client on the ``h2`` library over any trio Stream (tests only).

``H2Client`` speaks prior knowledge (it sends the preface itself); ``request`` opens a stream
and ``collect`` reads until the given streams ended or were reset, or the connection closed.
Received DATA is acknowledged at once unless ``auto_ack`` is False (a slow reader);
``validate=False`` lets it send header blocks h2 would refuse (malformed requests).
``raw`` writes hand-made frames (attacks).

GOAWAY frames are taken out of the byte stream before h2 sees them and recorded in
``goaway`` (h2 as a client would refuse every frame after a graceful GOAWAY, so the rest of
an in-flight response could not be read); after an h2 error the client keeps reading raw
frames until the server closes, so a GOAWAY that follows is still recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

Header = tuple[bytes, bytes]


@dataclass
class GoAway:
    error_code: int
    last_stream_id: int


@dataclass
class H2Response:
    status: int = 0
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    trailers: list[Header] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None  # RST_STREAM error code, if the server reset the stream

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        return b", ".join(values) if values else None


class H2Client:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        settings: dict[int, int] | None = None,
        auto_ack: bool = True,
        validate: bool = True,
    ) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.auto_ack = auto_ack
        self.responses: dict[int, H2Response] = {}
        self.goaway: GoAway | None = None
        self.closed = False
        self.broken = False  # h2 refused what the server sent: only frames are parsed now
        self._buf = b""
        self.events: list[h2.events.Event] = []
        self.remote_settings_seen = trio.Event()

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def open(
        self,
        path: bytes = b"/",
        *,
        method: bytes = b"GET",
        authority: bytes = b"example.com",
        headers: Sequence[Header] = (),
        body: bytes | None = None,
        end: bool = True,
    ) -> int:
        """Queue a request; returns its stream id (``flush`` or ``collect`` sends it)."""
        sid = self.conn.get_next_available_stream_id()
        hdrs: list[Header] = [
            (b":method", method), (b":path", path), (b":scheme", b"http"), (b":authority", authority),
            *headers,
        ]
        self.responses[sid] = H2Response()
        if body is None:
            self.conn.send_headers(sid, hdrs, end_stream=end)
        else:
            self.conn.send_headers(sid, hdrs)
            if body:
                self.conn.send_data(sid, body, end_stream=end)
            elif end:
                self.conn.end_stream(sid)
        return sid

    async def request(self, path: bytes = b"/", **kwargs: object) -> H2Response:
        sid = self.open(path, **kwargs)  # type: ignore[arg-type]
        await self.collect([sid])
        return self.responses[sid]

    def _handle(self, events: Iterable[h2.events.Event]) -> None:
        for ev in events:
            self.events.append(ev)
            if isinstance(ev, h2.events.ResponseReceived):
                r = self.responses.setdefault(ev.stream_id, H2Response())
                for name, value in ev.headers or ():
                    if name == b":status":
                        r.status = int(value)
                    else:
                        r.headers.append((bytes(name), bytes(value)))
            elif isinstance(ev, h2.events.DataReceived):
                r = self.responses.setdefault(ev.stream_id or 0, H2Response())
                r.body += ev.data or b""
                if self.auto_ack and ev.stream_id:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                r = self.responses.setdefault(ev.stream_id or 0, H2Response())
                r.trailers = [(bytes(n), bytes(v)) for n, v in ev.headers or ()]
            elif isinstance(ev, h2.events.StreamEnded):
                self.responses.setdefault(ev.stream_id or 0, H2Response()).ended = True
            elif isinstance(ev, h2.events.StreamReset):
                self.responses.setdefault(ev.stream_id or 0, H2Response()).reset = int(ev.error_code or 0)
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self.remote_settings_seen.set()

    async def receive_once(self) -> bool:
        """Read once and process; False when the connection is closed."""
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = True
            return False
        data = self._strip_goaway(bytes(data))
        if self.broken:
            return True
        try:
            self._handle(self.conn.receive_data(data))
        except h2.exceptions.ProtocolError:
            self.broken = True
            return True
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.flush()
        return True

    def _strip_goaway(self, data: bytes) -> bytes:
        """Complete frames of ``data`` minus GOAWAYs (recorded); partial ones wait."""
        buf = self._buf + data
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            end = pos + 9 + length
            if len(buf) < end:
                break
            if buf[pos + 3] == 0x7:  # GOAWAY
                last = int.from_bytes(buf[pos + 9:pos + 13], "big") & 0x7FFFFFFF
                code = int.from_bytes(buf[pos + 13:pos + 17], "big")
                if self.goaway is None or code:
                    self.goaway = GoAway(code, last)
            else:
                out.append(buf[pos:end])
            pos = end
        self._buf = buf[pos:]
        return b"".join(out)

    async def collect(self, sids: Iterable[int] = ()) -> None:
        """Send what is queued, then read until every stream in ``sids`` is done."""
        await self.flush()
        want = list(sids)
        while not all(self._done(s) for s in want):
            if not await self.receive_once():
                return

    async def until_closed(self) -> None:
        await self.flush()
        while await self.receive_once():
            pass

    def _done(self, sid: int) -> bool:
        r = self.responses.get(sid)
        return r is not None and (r.ended or r.reset is not None)


__all__ = ["GoAway", "H2Client", "H2Response"]
