"""HTTP/2 to clients (h2, server side): ALPN "h2" on TLS and h2c prior knowledge on plain ports.

Theory of operation
-------------------
One ``H2Server`` per client connection owns an ``h2.connection.H2Connection`` (sans-I/O) and
the socket.  Its reader task feeds bytes to h2 and dispatches the events synchronously;
every write to the socket goes through ``flush`` under one lock (h2 queues frames, whoever
holds the lock writes everything queued, in order).

Each request stream runs the SAME request cycle as HTTP/1.1: a ``proxy.Session`` whose
client side is swapped for two per-stream adapters,

* ``H2StreamCodec`` (a ``ServerCodec``): yields the request head built from the h2 headers
  (``:method``, ``:path``, ``:authority`` as ``host``, cookies joined), then ``Body``/``END``
  for the DATA frames; the response side (``response_head``/``data``/``end``) only *queues*
  work on the stream and returns ``b""``;
* ``H2StreamChannel`` (a trio ``Stream``): ``send_all`` performs the queued work (HEADERS,
  DATA as the peer's flow-control windows allow, trailers or END_STREAM) and returns when
  it is written; ``receive_some`` hands out received DATA.

So routing, policies, timeouts, metrics, the pooled upstream exchange and its error
handling are shared with HTTP/1.1 (``proxy.py`` calls the codec and the stream as usual).

Flow control, both ways, with bounded memory:

* to the client: the Session reads the upstream once (``RECV_SIZE``), queues that, and
  ``send_all`` waits on the stream's and the connection's windows before it returns; only
  then is the upstream read again.  A client that never opens its window holds at most one
  read per stream (and is timed out by ``send_timeout``);
* from the client: received DATA is acknowledged (WINDOW_UPDATE) only when the Session asks
  for the next piece, i.e. after the previous one was written upstream.  A stream can have
  at most its window (``initial_window``) buffered; the connection at most ``conn_window``.

Limits and attack bounds (``H2Limits``, derived from ``GlobalSettings``):

* SETTINGS we send: MAX_CONCURRENT_STREAMS (``http2_max_concurrent_streams``), INITIAL_WINDOW
  _SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE (``max_header_bytes``), ENABLE_PUSH=0; they are
  enforced from the first frame (h2's local settings are set before the preface);
* HPACK bombs: h2's decoder stops at ``max_header_list_size`` *decompressed* bytes
  (ENHANCE_YOUR_CALM); CONTINUATION floods: h2 refuses more than 64 CONTINUATION frames per
  header block, so one block buffers at most 65 x MAX_FRAME_SIZE bytes (PROTOCOL_ERROR);
* rapid reset (CVE-2023-44487: streams the client cancels, and those it makes us reset with
  a malformed head), SETTINGS and PING floods, and floods of frames that cost work but carry
  nothing (empty DATA, PRIORITY, unknown frames; not WINDOW_UPDATE, which a fast download
  legitimately brings by the thousand): each is counted per
  connection over a sliding ``flood_window``; over its bound the connection gets GOAWAY
  ENHANCE_YOUR_CALM and is closed (its streams cancelled; other connections unaffected);
* a peer that stops reading: every write waits for the socket, and the reader only reads
  again after flushing h2's answers (SETTINGS ACK, PING ACK), so nothing piles up.

Drain (SIGTERM): ``start_drain`` sends GOAWAY(NO_ERROR, last stream id) without closing
h2's state machine (so in-flight streams can still send), refuses newer streams with
REFUSED_STREAM, and closes the connection once the last stream is done.
"""
from __future__ import annotations

import contextlib
import logging

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from workers.h2stream import (
    PREFACE,
    FloodMeter,
    H2Limits,
    H2StreamChannel,
    H2StreamCodec,
    build_request_head,
    goaway_frame,
)
from workers.h2stream import Stream as _Stream
from workers.linger import linger
from workers.proxy import RECV_SIZE, Session
from workers.state import Worker

log = logging.getLogger("fastingress.worker")

_ErrorCodes = h2.errors.ErrorCodes
_SettingCodes = h2.settings.SettingCodes


class H2Server:
    """One HTTP/2 client connection (see the module docstring)."""

    def __init__(
        self,
        worker: Worker,
        stream: trio.abc.Stream,
        client_ip: str,
        *,
        limits: H2Limits | None = None,
        tls: str = "",
    ) -> None:
        self.worker = worker
        self.stream = stream
        self.client_ip = client_ip
        self.tls = tls  # "" for h2c, else e.g. "TLSv1.3/h2" (the request is HTTPS then)
        self.limits = limits = limits or H2Limits.from_settings(worker.settings)
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,  # build_request_head checks (faster, per stream)
        )
        conn = h2.connection.H2Connection(config=config)
        # Our settings are in force from the first frame (not only once acknowledged).
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                _SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                _SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_window,
                _SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
                _SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
                _SettingCodes.ENABLE_PUSH: 0,
            },
        )
        conn.decoder.max_header_list_size = limits.max_header_list_size
        conn.max_inbound_frame_size = limits.max_frame_size
        self.conn = conn
        self.streams: dict[int, _Stream] = {}
        self.send_lock = trio.Lock()
        self.nursery: trio.Nursery | None = None
        self.read_scope = trio.CancelScope()
        self.draining = False
        self.last_stream_id = 0  # highest stream id accepted
        self.goaway_sent = False
        self.peer_gone = False  # the client closed (or broke) the connection
        self.closed = False
        self.resets = FloodMeter(limits.max_resets, limits.flood_window)
        self.settings_meter = FloodMeter(limits.max_settings, limits.flood_window)
        self.pings = FloodMeter(limits.max_pings, limits.flood_window)
        self.idle_frames = FloodMeter(limits.max_idle_frames, limits.flood_window)
        self.calm_reason = ""

    # ---- connection life -------------------------------------------------------------

    async def run(self, initial: bytes = b"") -> None:
        worker = self.worker
        worker.opened(self)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self.conn.initiate_connection()
                extra = self.limits.conn_window - 65535
                if extra > 0:
                    self.conn.increment_flow_control_window(extra)
                await self.flush()
                if worker.draining:
                    self.start_drain()
                await self._read_loop(initial)
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.peer_gone = True  # the client went away
        finally:
            self.closed = True
            worker.closed(self)
            if self.goaway_sent and not self.peer_gone:
                await linger(self.stream)  # the client may still be writing: no reset for it
            await trio.aclose_forcefully(self.stream)

    async def _read_loop(self, initial: bytes) -> None:
        settings = self.worker.settings
        data: bytes = initial
        first = True
        with self.read_scope:
            while True:
                if data and not await self._received(data):
                    return
                if self.goaway_sent and not self.streams:
                    await self._close(_ErrorCodes.NO_ERROR)
                    return
                if first:
                    timeout = settings.client_header_timeout
                elif self.streams:
                    timeout = float("inf")
                else:
                    timeout = settings.keepalive_timeout
                first = False
                self.read_scope.deadline = trio.current_time() + timeout
                data = bytes(await self.stream.receive_some(RECV_SIZE))
                if not data:
                    self.peer_gone = True
                    return
        if self.read_scope.cancelled_caught and not self.closed:
            # Idle (or drained) connection: say goodbye politely.
            with trio.move_on_after(1.0):
                await self._close(_ErrorCodes.NO_ERROR)

    async def _received(self, data: bytes) -> bool:
        """Feed bytes to h2 and act on the events; False when the connection must end."""
        conn = self.conn
        try:
            events = conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 queued a GOAWAY with the right code (PROTOCOL_ERROR, ENHANCE_YOUR_CALM for
            # an oversized header list, FRAME_SIZE_ERROR...).
            log.info("http2 connection from %s closed: %s", self.client_ip, exc)
            with trio.move_on_after(1.0):
                await self.flush()
            self.goaway_sent = True
            return False
        now = trio.current_time()
        for ev in events:
            self._dispatch(ev, now)
            if self.calm_reason:
                log.warning("http2 connection from %s closed (ENHANCE_YOUR_CALM): %s",
                            self.client_ip, self.calm_reason)
                conn.clear_outbound_data_buffer()  # no answers to the flood (PING ACKs...)
                with trio.move_on_after(1.0):
                    await self._close(_ErrorCodes.ENHANCE_YOUR_CALM)
                return False
        await self.flush()
        return True

    def _dispatch(self, ev: h2.events.Event, now: float) -> None:
        t = type(ev)
        if t is h2.events.DataReceived:
            assert isinstance(ev, h2.events.DataReceived)
            sid = ev.stream_id
            st = self.streams.get(sid)
            if st is None or st.reset or st.end_sent:
                self._ack_discarded(sid, ev.flow_controlled_length)
            else:
                if ev.data:
                    st.inbound.append((ev.data, ev.flow_controlled_length))
                    st.wake_reader()
                elif ev.flow_controlled_length:  # padding only
                    self._ack_discarded(sid, ev.flow_controlled_length)
                if not ev.data and not ev.stream_ended and self.idle_frames.hit(now):
                    self.calm_reason = "flood of empty DATA frames"
            if ev.stream_ended is not None:
                self._ended(sid)
        elif t is h2.events.RequestReceived:
            assert isinstance(ev, h2.events.RequestReceived)
            self._request(ev)
        elif t is h2.events.StreamEnded or t is h2.events.TrailersReceived:
            self._ended(ev.stream_id)  # type: ignore[attr-defined]  # both have stream_id
        elif t is h2.events.WindowUpdated:
            assert isinstance(ev, h2.events.WindowUpdated)
            if ev.stream_id == 0:
                for st in self.streams.values():
                    st.wake_writer()
            else:
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.wake_writer()
            # (not counted: a fast download legitimately brings thousands of them)
        elif t is h2.events.StreamReset:
            assert isinstance(ev, h2.events.StreamReset)
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.reset = True
                st.scope.cancel()
                st.wake_reader()
                st.wake_writer()
            if ev.remote_reset and self.resets.hit(now):
                self.calm_reason = f"rapid reset: over {self.limits.max_resets} streams cancelled"
        elif t is h2.events.RemoteSettingsChanged:
            for st in self.streams.values():  # INITIAL_WINDOW_SIZE may have grown
                st.wake_writer()
            if self.settings_meter.hit(now):
                self.calm_reason = f"SETTINGS flood: over {self.limits.max_settings} frames"
        elif t is h2.events.PingReceived:
            if self.pings.hit(now):
                self.calm_reason = f"PING flood: over {self.limits.max_pings} frames"
        elif t is h2.events.ConnectionTerminated:
            # The client said goodbye: finish what runs, accept nothing new.
            self.draining = True
            self.goaway_sent = True
            if not self.streams:
                self.read_scope.cancel()
        elif t is not h2.events.PingAckReceived and self.idle_frames.hit(now):
            # PRIORITY (CVE-2019-9513), unknown frames, SETTINGS acks...
            self.calm_reason = "flood of frames without effect"

    def _ended(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is not None:
            st.in_ended = True
            st.wake_reader()

    def _ack_discarded(self, sid: int, length: int) -> None:
        if length:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.conn.acknowledge_received_data(length, sid)

    # ---- requests ----------------------------------------------------------------------

    def _request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        conn = self.conn
        ended = ev.stream_ended is not None
        if self.draining or self.nursery is None:
            conn.reset_stream(sid, _ErrorCodes.REFUSED_STREAM)
            return
        self.last_stream_id = max(self.last_stream_id, sid)
        head = build_request_head(ev.headers or (), ended)
        if head is None:
            conn.reset_stream(sid, _ErrorCodes.PROTOCOL_ERROR)
            # resets the client provokes count like its own ("MadeYouReset")
            if self.resets.hit(trio.current_time()):
                self.calm_reason = f"over {self.limits.max_resets} streams reset"
            return
        if head.method == b"CONNECT":
            conn.send_headers(sid, [(b":status", b"501"), (b"content-length", b"0")], end_stream=True)
            return
        st = _Stream(sid)
        st.in_ended = ended
        self.streams[sid] = st
        self.read_scope.deadline = float("inf")
        codec = H2StreamCodec(st, head, ended)
        self.nursery.start_soon(self._serve_stream, st, codec)

    async def _serve_stream(self, st: _Stream, codec: H2StreamCodec) -> None:
        channel = H2StreamChannel(self, st)
        session = Session(self.worker, channel, self.client_ip, self.tls)
        session.max_requests = 0  # keep-alive-requests counts HTTP/1.1 requests, not streams
        session.codec = codec
        try:
            with st.scope:
                await session.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client (or its stream) went away
        except Exception:
            log.exception("worker %d: internal error on an HTTP/2 stream from %s",
                          self.worker.index, self.client_ip)
        finally:
            session.finish_request(499)
            if self._stream_done(st) and not self.closed:
                with trio.CancelScope(shield=True) as scope:
                    scope.deadline = trio.current_time() + 1.0
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await self.flush()

    async def stream_closed(self, st: _Stream) -> None:
        """The Session closed the stream: reset it if the answer is incomplete."""
        if self._stream_done(st) and not self.closed:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.flush()

    def _stream_done(self, st: _Stream) -> bool:
        """Forget ``st`` (resetting it if its answer is incomplete); True if frames were queued."""
        if self.streams.pop(st.sid, None) is None:
            return False
        queued = False
        conn = self.conn
        code: int | None = None
        if not st.end_sent and not st.reset:
            code = _ErrorCodes.INTERNAL_ERROR if st.head_sent else _ErrorCodes.CANCEL
        elif st.end_sent and not st.in_ended:
            code = _ErrorCodes.NO_ERROR  # answered before the body ended: stop sending
        if code is not None and not self.closed:
            queued = True
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                conn.reset_stream(st.sid, code)
        pending = st.unacked + sum(flow for _, flow in st.inbound)
        if pending:
            queued = True
            st.inbound.clear()
            st.unacked = 0
            self._ack_discarded(st.sid, pending)
        if not self.streams:
            if self.goaway_sent:
                self.read_scope.cancel()
            else:
                self.read_scope.deadline = trio.current_time() + self.worker.settings.keepalive_timeout
        return queued

    # ---- writing -----------------------------------------------------------------------

    def acknowledge(self, st: _Stream, length: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.conn.acknowledge_received_data(length, st.sid)

    async def flush(self) -> None:
        """Write everything h2 has queued (in order, one writer at a time).

        The uncontended case takes the lock without a checkpoint (most calls find nothing
        or little to write, and a scheduler round trip per call is most of their cost).
        """
        lock = self.send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)
        finally:
            lock.release()

    async def write_stream(self, st: _Stream) -> None:
        """Turn what the codec queued on ``st`` into frames, as the windows allow."""
        conn = self.conn
        sid = st.sid
        try:
            if st.out_continue:
                st.out_continue = False
                conn.send_headers(sid, [(b":status", b"100")])
            if st.out_head is not None:
                _, headers = st.out_head
                st.out_head = None
                only = st.out_end and not st.out_data and st.out_trailers is None
                conn.send_headers(sid, headers, end_stream=only)
                st.head_sent = True
                st.end_sent = only
            out = st.out_data
            while out:
                if st.reset:
                    raise trio.BrokenResourceError("stream reset by the client")
                window = conn.local_flow_control_window(sid)
                if window <= 0:
                    await self.flush()
                    st.writable = trio.Event()
                    if conn.local_flow_control_window(sid) <= 0:
                        await st.writable.wait()
                    continue
                chunk = out[0]
                size = conn.max_outbound_frame_size
                while chunk and window > 0:
                    n = min(window, size, len(chunk))
                    last = n == len(chunk) and len(out) == 1 and st.out_end and st.out_trailers is None
                    conn.send_data(sid, chunk[:n].tobytes(), end_stream=last)
                    st.end_sent = last
                    chunk = chunk[n:]
                    window -= n
                if chunk:
                    out[0] = chunk
                else:
                    out.popleft()
            if st.out_end and not st.end_sent:
                if st.out_trailers is not None:
                    conn.send_headers(sid, st.out_trailers, end_stream=True)
                else:
                    conn.end_stream(sid)
                st.end_sent = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as exc:
            raise trio.BrokenResourceError(f"HTTP/2 stream {sid}: {exc}") from None
        await self.flush()

    # ---- ending ------------------------------------------------------------------------

    def drain(self) -> None:
        self.start_drain()

    def start_drain(self) -> None:
        """GOAWAY(NO_ERROR, last stream id); in-flight streams finish, then close."""
        if self.draining or self.nursery is None:
            self.draining = True
            return
        self.draining = True
        self.nursery.start_soon(self._send_drain_goaway)

    async def _send_drain_goaway(self) -> None:
        # h2's close_connection would forbid further frames on in-flight streams, so the
        # GOAWAY frame is written by hand (after whatever h2 queued before it).
        frame = goaway_frame(self.last_stream_id, _ErrorCodes.NO_ERROR)
        try:
            async with self.send_lock:
                await self.stream.send_all(self.conn.data_to_send() + frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.read_scope.cancel()
            return
        self.goaway_sent = True
        if not self.streams:
            self.read_scope.cancel()

    async def _close(self, code: int) -> None:
        """Final GOAWAY with ``code``, then the connection ends."""
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection(code, last_stream_id=self.last_stream_id)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.flush()
        self.goaway_sent = True
        self.closed = True


async def serve_h2(
    worker: Worker, stream: trio.abc.Stream, client_ip: str, initial: bytes = b"", *, tls: str = ""
) -> None:
    """Serve one HTTP/2 connection (``initial``: bytes already read, the preface included)."""
    server = H2Server(worker, stream, client_ip, tls=tls)
    try:
        await server.run(initial)
    except Exception:
        log.exception("worker %d: internal error on an HTTP/2 connection from %s",
                      worker.index, client_ip)


__all__ = [
    "PREFACE", "FloodMeter", "H2Limits", "H2Server", "build_request_head", "goaway_frame", "serve_h2",
]
