"""Socket transports of the event-driven core: the only code there that calls recv and send.

Theory of operation
-------------------
A ``Transport`` owns one non-blocking socket registered in the ``Core``'s epoll set and one
protocol object (sans-I/O: ``workers.h1conn``, ``workers.h1pool``).  In the asyncio manner:

* input: on an input edge it reads (``recv_into`` the core's shared buffer) until the kernel
  has no more (a short read means the queue is empty; an edge comes with new data) and hands
  each piece to ``protocol.data_received`` *as a memoryview valid only during the call*.  EOF
  is ``eof_received``; an error is ``connection_lost``.  ``pause_reading`` stops that (what
  the kernel holds waits there: TCP flow control does the rest) and ``resume_reading`` picks
  up again from the next batch of the loop;
* output: ``write``/``writelines`` try ``send``/``sendmsg`` at once; what the kernel does not
  take is queued and flushed on the next output edge.  Above ``HIGH_WATER`` queued bytes the
  protocol's ``writing_paused`` flag is raised (it stops producing, e.g. stops reading the
  other side); once the queue empties, ``protocol.writable()`` is called;
* ``close`` flushes then closes; ``abort`` closes now; ``shutdown_write`` sends FIN after
  the queue (lingering close).  Every way out calls ``connection_lost`` exactly once.

``TLSTransport`` does the same over a pyOpenSSL ``Connection`` bound to the socket itself
(no memory BIO, no copy): WantRead/WantWrite play the role of EAGAIN.  ``ClientTLSTransport``
speaks TLS to an upstream with the stdlib ``ssl`` module (session resumption per endpoint).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from workers.loop import EPOLLERR, EPOLLHUP, EPOLLOUT, EPOLLRDHUP, INPUT_EVENTS, Core

log = logging.getLogger("fastingress.worker")

HIGH_WATER = 256 * 1024
_CLOSING_EVENTS = EPOLLRDHUP | EPOLLHUP | EPOLLERR
TLS_READ = 16384 * 4
_IOV_MAX = 64


class StreamProtocol(Protocol):
    writing_paused: bool

    def data_received(self, data: memoryview | bytes) -> None: ...

    def eof_received(self) -> None: ...

    def connection_lost(self, exc: BaseException | None) -> None: ...

    def writable(self) -> None: ...


class _Gone:
    """The protocol of a transport that ended (late callbacks go nowhere)."""

    writing_paused = False

    def data_received(self, data: memoryview | bytes) -> None:
        pass

    def eof_received(self) -> None:
        pass

    def connection_lost(self, exc: BaseException | None) -> None:
        pass

    def writable(self) -> None:
        pass


_GONE = _Gone()


class Transport:
    """A plain TCP socket (see the module docstring)."""

    __slots__ = (
        "_closing", "_lost", "_shut", "_wbuf", "_wlen", "core", "fd", "proto", "raw", "read_pending",
        "reading", "sock",
    )

    def __init__(self, core: Core, sock: socket.socket, proto: StreamProtocol | None = None) -> None:
        self.core = core
        self.sock = sock
        self.fd = sock.fileno()
        self.proto: StreamProtocol = proto  # type: ignore[assignment]  # set before the first event
        self._wbuf: deque[memoryview | bytes] = deque()
        self._wlen = 0
        self.reading = True
        self.read_pending = False  # an input edge came while reading was paused
        self._closing = False
        self._shut = False
        self._lost = False
        # raw(events): readiness goes there instead (the kernel moves the bytes: a splice)
        self.raw: Callable[[int], None] | None = None

    # ---- events ----------------------------------------------------------------------

    def start(self) -> None:
        """Register with the core (call once the protocol is set)."""
        self.core.add(self.fd, self)

    def on_event(self, events: int) -> None:
        if self.raw is not None:
            self.raw(events)
            return
        if events & EPOLLOUT and self._wbuf:
            self._flush()
        if events & INPUT_EVENTS and not self._lost:
            if self.reading:
                self._read(bool(events & _CLOSING_EVENTS))
            else:
                self.read_pending = True

    def _recv(self) -> memoryview | bytes | None:
        """One read: data, b"" at EOF, None when the kernel has nothing now."""
        try:
            n = self.sock.recv_into(self.core.rbuf)
        except (BlockingIOError, InterruptedError):
            return None
        return self.core.rview[:n]

    def _read(self, drain: bool = True) -> None:
        """Read until the kernel has nothing more.  A short read means that, unless the peer
        also closed (``drain``: the FIN may wait behind the data and no new edge would come)."""
        size = len(self.core.rbuf)
        while self.reading and not self._lost:
            try:
                data = self._recv()
            except OSError as exc:
                self._connection_lost(exc)
                return
            if data is None:
                return
            if not data:
                self.proto.eof_received()
                return
            self.proto.data_received(data)
            if len(data) < size and not drain and not self._tls_buffered():
                return
        if not self._lost:
            self.read_pending = True

    def _tls_buffered(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if self.reading or self._lost:
            return
        self.reading = True
        # The kernel may hold input whose edge came while we were paused: read it soon.
        self.read_pending = False
        self.core.call_soon(self._resume)

    def kick(self) -> None:
        """Read now whatever is there (e.g. data that came with the end of a handshake)."""
        if self.reading and not self._lost:
            self._read()

    def _resume(self) -> None:
        if self.reading and not self._lost:
            self._read()

    # ---- output ----------------------------------------------------------------------

    def _send(self, data: memoryview | bytes) -> int:
        return self.sock.send(data)

    def _sendmany(self, bufs: Sequence[memoryview | bytes]) -> int:
        return self.sock.sendmsg(bufs)

    def write(self, data: bytes | memoryview) -> None:
        if self._lost or not data:
            return
        if self._wbuf:
            self._queue(data)
            return
        try:
            n = self._send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._connection_lost(exc)
            return
        if n < len(data):
            self._queue(memoryview(data)[n:])

    def writelines(self, bufs: Sequence[memoryview | bytes]) -> None:
        """Write several buffers with one ``sendmsg`` (a head and its body: one syscall)."""
        if len(bufs) == 1:
            self.write(bufs[0])
            return
        if self._lost:
            return
        if self._wbuf:
            for b in bufs:
                if b:
                    self._queue(b)
            return
        total = 0
        for b in bufs:
            total += len(b)
        try:
            n = self._sendmany(bufs) if len(bufs) <= _IOV_MAX else self._send(b"".join(bufs))
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._connection_lost(exc)
            return
        if n < total:
            for b in bufs:
                if n >= len(b):
                    n -= len(b)
                    continue
                self._queue(memoryview(b)[n:] if n else b)
                n = 0

    def _queue(self, data: memoryview | bytes) -> None:
        self._wbuf.append(data)
        self._wlen += len(data)
        if self._wlen > HIGH_WATER:
            self.proto.writing_paused = True

    def _flush(self) -> None:
        wbuf = self._wbuf
        while wbuf:
            data = wbuf[0]
            try:
                n = self._send(data)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._connection_lost(exc)
                return
            self._wlen -= n
            if n < len(data):
                wbuf[0] = memoryview(data)[n:]
                return
            wbuf.popleft()
        self._wlen = 0
        if self._closing:
            self._finish_close()
            return
        if self._shut:
            self._do_shutdown()
        if self.proto.writing_paused:
            self.proto.writing_paused = False
            self.proto.writable()

    @property
    def write_buffered(self) -> int:
        return self._wlen

    # ---- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Flush what is queued, then close."""
        if self._lost:
            return
        self.reading = False
        if self._wbuf:
            self._closing = True
            return
        self._finish_close()

    def _finish_close(self) -> None:
        self._close_socket()
        self._connection_lost(None)

    def abort(self) -> None:
        """Close now, dropping what is queued."""
        if self._lost:
            return
        self._wbuf.clear()
        self._close_socket()
        self._connection_lost(None)

    def shutdown_write(self) -> None:
        """Send FIN once the queue is flushed (reading goes on: lingering close)."""
        self._shut = True
        if not self._wbuf:
            self._do_shutdown()

    def _do_shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def _close_socket(self) -> None:
        self.core.forget(self.fd)  # (closing the fd takes it out of the epoll set)
        with contextlib.suppress(OSError):
            self.sock.close()

    def _connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self.reading = False
        if exc is not None:
            self._close_socket()
        proto = self.proto
        self.proto = _GONE  # no cycle left: the pair is freed by reference counting, not the GC
        proto.connection_lost(exc)

    def detach(self) -> socket.socket:
        """Leave the core: the socket (still open) goes to a trio task; no callback follows."""
        self.core.remove(self.fd)
        self._lost = True
        self.reading = False
        self.proto = _GONE
        return self.sock

    @property
    def is_closing(self) -> bool:
        return self._lost or self._closing


class TLSTransport(Transport):
    """Server-side TLS over the socket itself (pyOpenSSL ``Connection`` on the fd).

    Reads and writes call ``SSL_read``/``SSL_write`` through pyOpenSSL's own cffi binding, with
    the core's read buffer, and leave only failures (``result <= 0``) to pyOpenSSL's error
    mapping (``Connection._raise_ssl_error``): a read then costs one C call, where
    ``Connection.recv`` allocates a buffer, copies out of it, and raises ``WantReadError`` for
    the read that ends every batch.  (The handshake stays on pyOpenSSL's public API.)"""

    __slots__ = ("_cbuf", "_ssl", "tls")

    def __init__(self, core: Core, sock: socket.socket, tls: SSL.Connection,
                 proto: StreamProtocol | None = None) -> None:
        super().__init__(core, sock, proto)
        self.tls = tls
        # (the SSL* of pyOpenSSL's binding; None, should a pyOpenSSL release not have these
        # private names: then its public recv/send serve, slower)
        self._ssl: Any = getattr(tls, "_ssl", None) if hasattr(tls, "_raise_ssl_error") else None
        self._cbuf: Any = _ffi.from_buffer(core.rbuf)  # (no copy: the bytearray's memory)

    def on_event(self, events: int) -> None:
        # TLS can want input to make output (and the reverse): any edge retries both.
        if self._wbuf:
            self._flush()
        if not self._lost:
            if self.reading:
                self._read(True)
            else:
                self.read_pending = True

    def _recv(self) -> memoryview | bytes | None:
        ssl_ = self._ssl
        try:
            if ssl_ is None:
                return self.tls.recv(TLS_READ)
            n: int = _lib.SSL_read(ssl_, self._cbuf, TLS_READ)
            if n > 0:
                return self.core.rview[:n]
            self.tls._raise_ssl_error(ssl_, n)  # (pyOpenSSL's mapping of the failure)
        except (SSL.WantReadError, SSL.WantWriteError):
            return None
        except SSL.ZeroReturnError:
            return b""
        except SSL.SysCallError as exc:
            if exc.args and exc.args[0] in (-1, errno.ECONNRESET, 0):
                return b""  # EOF without close_notify: as every HTTPS implementation accepts
            raise OSError(str(exc)) from None
        except SSL.Error as exc:
            raise OSError(f"TLS error: {exc}") from None
        return None

    def _tls_buffered(self) -> bool:
        return True  # records may wait inside OpenSSL: read until it says WantRead

    def _send(self, data: memoryview | bytes) -> int:
        ssl_ = self._ssl
        try:
            if ssl_ is None:
                return self.tls.send(data)
            with _ffi.from_buffer(data) as buf:
                n: int = _lib.SSL_write(ssl_, buf, len(buf))
            if n > 0:
                return n
            self.tls._raise_ssl_error(ssl_, n)
        except (SSL.WantWriteError, SSL.WantReadError):
            raise BlockingIOError from None
        except SSL.Error as exc:
            raise OSError(f"TLS error: {exc}") from None
        raise OSError("TLS write failed")

    def _sendmany(self, bufs: Sequence[memoryview | bytes]) -> int:
        return self._send(b"".join(bufs))

    def _do_shutdown(self) -> None:
        with contextlib.suppress(SSL.Error):
            self.tls.shutdown()  # close_notify, then FIN
        super()._do_shutdown()


class ClientTLSTransport(Transport):
    """Client-side TLS to an upstream (stdlib ``ssl``, non-blocking, after the handshake)."""

    __slots__ = ()

    def on_event(self, events: int) -> None:
        if self._wbuf:
            self._flush()
        if not self._lost:
            if self.reading:
                self._read()
            else:
                self.read_pending = True

    def _recv(self) -> memoryview | bytes | None:
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            n = sock.recv_into(self.core.rbuf)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""
        except ssl.SSLError as exc:
            raise OSError(f"TLS error: {exc}") from None
        return self.core.rview[:n]

    def _tls_buffered(self) -> bool:
        return True

    def _send(self, data: memoryview | bytes) -> int:
        try:
            return self.sock.send(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
            raise BlockingIOError from None
        except ssl.SSLError as exc:
            raise OSError(f"TLS error: {exc}") from None

    def _sendmany(self, bufs: Sequence[memoryview | bytes]) -> int:
        return self._send(b"".join(bufs))


__all__ = ["HIGH_WATER", "ClientTLSTransport", "StreamProtocol", "TLSTransport", "Transport"]
