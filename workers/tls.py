"""TLS for client connections: a trio Stream over a pyOpenSSL ``Connection`` with memory BIOs.

Theory of operation
-------------------
trio's ``SSLStream`` only wraps the stdlib ``ssl`` module, which cannot switch certificates
per SNI from Python cheaply nor expose everything we want, so this module does the same job
over pyOpenSSL.  ``OpenSSL.SSL.Connection(context, None)`` gives an SSL object with two
*memory* BIOs instead of a socket:

* ciphertext that arrives from the transport is handed to OpenSSL with ``bio_write``;
* ciphertext OpenSSL wants to send (handshake flights, records, alerts, tickets) is taken
  out with ``bio_read`` and written to the transport.

Every OpenSSL call here is synchronous and never blocks: when it needs more input it raises
``WantReadError``; we then flush what it produced, read one chunk from the transport, feed it
and try again.  Since trio runs one task at a time and there is no ``await`` between an
OpenSSL call and the moment its output is drained, the SSL object itself needs no lock.
Two locks order the *transport* I/O instead:

* ``_send_lock``: the outgoing BIO is drained only while holding it, so output produced by a
  receive (a TLS 1.3 KeyUpdate answer, say) and by a send is written in the order OpenSSL
  produced it, each flight in ONE ``send_all``.  Output made while *reading* (TLS 1.3
  session tickets, KeyUpdate answers: nothing the peer waits for) is held back (``_held``,
  bounded) and goes out in front of our next write, saving a send and a peer wake-up per
  connection;
* ``_recv_lock``: one reader of the transport at a time (the handshake, ``receive_some``).

The proxy uses one task to read a request body while another writes the response, which
this supports, as trio's own SSLStream does.  ``send_all`` encrypts at most ``SEND_CHUNK``
bytes before it writes them out, so a large write never doubles in memory without bound.

Errors: everything the peer does wrong (a bad handshake, a TLS alert, a corrupt record, EOF
in the middle of a handshake) is ``trio.BrokenResourceError``; using the stream after *we*
closed it is ``trio.ClosedResourceError``.  A peer that closes TCP without close_notify after
the handshake reads as EOF (``b""``), as every HTTPS implementation accepts (HTTP frames its
own messages).  ``aclose`` sends close_notify (best effort, bounded in time) and closes the
transport; it does not wait for the peer's close_notify.
"""

from __future__ import annotations

import contextlib
import socket

import trio
from OpenSSL import SSL
from OpenSSL._util import lib as _lib
from trio.lowlevel import ParkingLot

RECV_SIZE = 65536  # ciphertext read from the transport at once
BIO_READ_SIZE = 65536  # ciphertext taken out of OpenSSL at once
SEND_CHUNK = 262144  # plaintext encrypted before it is written out
CLOSE_NOTIFY_TIMEOUT = 1.0
HOLD_LIMIT = 16384  # bytes of OpenSSL output a read may hold back for the next write


class _Gate:
    """A lock that costs nothing when free (trio.Lock checkpoints on every acquire, a full
    trip through the scheduler; here the transport I/O that follows is the checkpoint)."""

    __slots__ = ("_lot", "busy")

    def __init__(self) -> None:
        self.busy = False
        self._lot = ParkingLot()

    async def __aenter__(self) -> None:
        while self.busy:
            await self._lot.park()
        self.busy = True

    async def __aexit__(self, *exc: object) -> None:
        self.busy = False
        if self._lot:
            self._lot.unpark()


class TLSStream(trio.abc.HalfCloseableStream):
    """Server side TLS over ``transport`` (a trio Stream), using ``context`` to start with.

    The SNI callback installed on ``context`` (see ``workers.certs``) may switch the
    connection to another context during the handshake.
    """

    def __init__(self, transport: trio.abc.Stream, context: SSL.Context, *, initial: bytes = b"") -> None:
        self.transport = transport
        conn = SSL.Connection(context, None)
        conn.set_accept_state()
        if initial:  # bytes already read from the transport (a peeked ClientHello)
            conn.bio_write(initial)
        self._conn = conn
        self._send_lock = _Gate()
        self._recv_lock = _Gate()  # also serialises the handshake
        self._handshake_done = False
        self._closed = False
        self._eof = False
        self._held = b""  # output kept for the next write (see _hold)
        self.selected_alpn: str | None = None
        self.tls_version = ""  # "TLSv1.2" / "TLSv1.3" after the handshake
        self.server_name: str | None = None  # SNI the client sent (lower case)
        self.resumed = False

    @property
    def ssl_connection(self) -> SSL.Connection:
        """The pyOpenSSL connection (client certificates, for policies)."""
        return self._conn

    # ---- plumbing --------------------------------------------------------------------

    def _pending_output(self) -> bytes:
        """Everything OpenSSL has queued for the transport."""
        conn = self._conn
        chunks: list[bytes] = []
        while True:
            try:
                chunks.append(conn.bio_read(BIO_READ_SIZE))
            except SSL.WantReadError:
                break
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._pending_output()
            if self._held:
                data = self._held + data
                self._held = b""
            if data:
                await self.transport.send_all(data)

    def _hold(self) -> bool:
        """Keep OpenSSL's output for our next write; True when enough is held to send now.

        While reading, OpenSSL only produces what the peer does not wait for (TLS 1.3
        session tickets, KeyUpdate answers), so it rides along with the next response
        instead of costing a send (and a wake-up of the peer) of its own.
        """
        data = self._pending_output()
        if data:
            self._held += data
        return len(self._held) > HOLD_LIMIT

    async def _feed(self) -> None:
        """Read one chunk of ciphertext from the transport into OpenSSL (EOF is noted)."""
        data = await self.transport.receive_some(RECV_SIZE)
        if data:
            self._conn.bio_write(data)
        else:
            self._eof = True
            self._conn.bio_shutdown()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("TLS stream was closed")

    # ---- handshake -------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the handshake (once; later calls return at once).

        Raises ``trio.BrokenResourceError`` if the peer fails it, and leaves the alert
        OpenSSL produced (protocol version, no shared cipher, ...) on its way to the peer.
        """
        self._check_open()
        if self._handshake_done:
            return
        async with self._recv_lock:
            if self._handshake_done:
                return
            conn = self._conn
            while True:
                try:
                    conn.do_handshake()
                    break
                except SSL.WantReadError:
                    if self._eof:
                        raise trio.BrokenResourceError("peer closed during the TLS handshake") from None
                    await self._flush()
                    await self._feed()
                except SSL.Error as exc:
                    await self._flush_quietly()
                    raise trio.BrokenResourceError(f"TLS handshake failed: {_reason(exc)}") from None
            self._handshake_done = True
            alpn = conn.get_alpn_proto_negotiated()
            self.selected_alpn = alpn.decode("ascii", "replace") if alpn else None
            self.tls_version = conn.get_protocol_version_name()
            name = conn.get_servername()
            self.server_name = name.decode("ascii", "replace").lower() if name else None
            self.resumed = bool(_lib.SSL_session_reused(conn._ssl))  # no public API for this
            if self.tls_version != "TLSv1.3":
                await self._flush()  # TLS 1.2: the client waits for our Finished
            else:  # only session tickets are left: they go with our first write
                self._hold()

    async def _flush_for_read(self) -> None:
        """Flush before waiting for input; a peer that stopped reading is no reason to fail
        the read (whatever we send next will fail instead)."""
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            await self._flush()

    async def _flush_quietly(self) -> None:
        """Try to get an alert out; the connection is failing anyway."""
        try:
            with trio.move_on_after(CLOSE_NOTIFY_TIMEOUT):
                await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    # ---- the Stream interface --------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._check_open()
        await self.do_handshake()
        if max_bytes is None:
            max_bytes = RECV_SIZE
        conn = self._conn
        async with self._recv_lock:
            while True:
                self._check_open()
                try:
                    data = conn.recv(max_bytes)
                except SSL.WantReadError:
                    if self._eof:
                        return b""
                    if self._hold():
                        await self._flush_for_read()
                    await self._feed()
                    continue
                except SSL.ZeroReturnError:  # the peer's close_notify
                    self._eof = True
                    return b""
                except SSL.Error as exc:
                    if self._eof:  # TCP closed without close_notify: a "ragged" EOF
                        return b""
                    await self._flush_quietly()
                    raise trio.BrokenResourceError(f"TLS error: {_reason(exc)}") from None
                # Take more records already buffered in OpenSSL, up to max_bytes.
                if len(data) < max_bytes and conn.pending() == 0:
                    more = self._more(max_bytes - len(data))
                    if more:
                        data += more
                if self._hold():
                    await self._flush_for_read()
                return data

    def _more(self, room: int) -> bytes:
        """Decrypt further records that are already in the input BIO (no transport read)."""
        chunks: list[bytes] = []
        conn = self._conn
        while room > 0:
            try:
                chunk = conn.recv(room)
            except SSL.Error:  # WantRead (nothing buffered), or an error the next call reports
                break
            chunks.append(chunk)
            room -= len(chunk)
        return b"".join(chunks)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        await self.do_handshake()
        conn = self._conn
        view = memoryview(data)
        total = len(view)
        sent = 0
        while True:
            self._check_open()
            end = min(total, sent + SEND_CHUNK)
            try:
                while sent < end:
                    sent += conn.send(view[sent:end])
            except SSL.Error as exc:
                raise trio.BrokenResourceError(f"TLS error: {_reason(exc)}") from None
            await self._flush()
            if sent >= total:
                return

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        """close_notify, then FIN when the transport can half-close; reading goes on."""
        self._check_open()
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()
        await self._flush()
        if isinstance(self.transport, trio.abc.HalfCloseableStream):
            await self.transport.send_eof()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._handshake_done and not self._eof:
                try:
                    self._conn.shutdown()
                except SSL.Error:
                    pass
                else:
                    with trio.move_on_after(CLOSE_NOTIFY_TIMEOUT):
                        await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await self.transport.aclose()


class SocketTLSStream(trio.abc.HalfCloseableStream):
    """A trio Stream over a pyOpenSSL ``Connection`` bound to a non-blocking socket, after its
    handshake (done by the event-driven core): how a TLS connection moves to a task (HTTP/2,
    an Upgrade tunnel).  WantRead/WantWrite wait for the socket; errors as in ``TLSStream``."""

    def __init__(self, conn: SSL.Connection, sock: socket.socket, *, tls_version: str = "",
                 selected_alpn: str | None = None) -> None:
        self._conn = conn
        self._sock = sock
        self._closed = False
        self.tls_version = tls_version
        self.selected_alpn = selected_alpn

    @property
    def ssl_connection(self) -> SSL.Connection:
        return self._conn

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("TLS stream was closed")
        size = max_bytes or RECV_SIZE
        while True:
            try:
                data = self._conn.recv(size)
            except SSL.WantReadError:
                await trio.lowlevel.wait_readable(self._sock)
                continue
            except SSL.WantWriteError:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            except SSL.ZeroReturnError:
                return b""
            except SSL.SysCallError as exc:
                if exc.args and exc.args[0] in (-1, 0):
                    return b""  # EOF without close_notify
                raise trio.BrokenResourceError(f"TLS read failed: {_reason(exc)}") from None
            except SSL.Error as exc:
                raise trio.BrokenResourceError(f"TLS read failed: {_reason(exc)}") from None
            await trio.lowlevel.checkpoint()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("TLS stream was closed")
        view = memoryview(data)
        sent_any = False
        while view:
            chunk = view[:SEND_CHUNK]
            try:
                n = self._conn.send(chunk)
            except SSL.WantWriteError:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            except SSL.WantReadError:
                await trio.lowlevel.wait_readable(self._sock)
                continue
            except SSL.Error as exc:
                raise trio.BrokenResourceError(f"TLS write failed: {_reason(exc)}") from None
            view = view[n:]
            sent_any = True
        if not sent_any:
            await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self._sock)

    async def send_eof(self) -> None:
        """close_notify, then FIN; reading goes on."""
        if self._closed:
            raise trio.ClosedResourceError("TLS stream was closed")
        with contextlib.suppress(SSL.Error):
            self._conn.shutdown()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(SSL.Error, OSError):
            self._conn.shutdown()
        with contextlib.suppress(OSError):
            self._sock.close()
        await trio.lowlevel.checkpoint()


def _reason(exc: BaseException) -> str:
    """A short reason from a pyOpenSSL error (its args are a list of (lib, func, reason))."""
    args = exc.args
    if args and isinstance(args[0], list) and args[0]:
        last = args[0][-1]
        if isinstance(last, tuple) and last:
            return str(last[-1])
    if len(args) >= 2 and isinstance(args[1], str):
        return args[1]
    return type(exc).__name__


__all__ = ["SocketTLSStream", "TLSStream"]
