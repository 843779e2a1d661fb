"""Accepting connections in the event-driven core: listeners, TLS handshakes, and handoffs.

Theory of operation
-------------------
``CoreServer`` ties the core to a worker.  Each listening socket (SO_REUSEPORT, so the kernel
spreads connections over the worker processes; TCP_NODELAY, inherited by accepted sockets) is a
handler in the epoll set that accepts in batches (``ACCEPT_BATCH``, then the others get a turn).

* plain HTTP: the accepted socket gets a ``Transport`` and a ``ClientConn``;
* HTTPS: ``TLSAccept`` runs the handshake on the socket itself with the ``CertStore`` in force
  (SNI picks the certificate), under ``client_header_timeout``.  With ssl-passthrough hosts,
  the ClientHello is first *peeked* (``MSG_PEEK``: nothing is consumed) and a passthrough name
  goes to a relay task untouched.  After the handshake, ALPN ``h2`` goes to an HTTP/2 task
  (``SocketTLSStream``); anything else becomes a ``TLSTransport`` + ``ClientConn``;
* ``handoff``: a ``ClientConn`` gives its socket to a trio task — a Session (Upgrade tunnels,
  HTTP/2 upstreams; the codec and the parsed head move along) or HTTP/2 (h2c prior knowledge);
* ``use-proxy-protocol`` (the ConfigMap): before any of this, ``ProxyAccept`` reads the PROXY
  protocol header (v1 or v2, ``workers.proxyproto``) under ``proxy-protocol-header-timeout``:
  it peeks, consumes exactly the header, and the connection goes on as above with the
  header's source address as its client.  A connection without a valid header is closed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable
from functools import partial

import trio
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from workers.certs import CertCache
from workers.decide import Decided
from workers.h1conn import ClientConn
from workers.h1pool import CorePool
from workers.http1 import RequestHead
from workers.http2 import serve_h2
from workers.loop import Core, Timed
from workers.passthrough import NEED_MORE, NOT_TLS, Hello, parse_client_hello_sni, relay
from workers.proxyproto import V2_MAX, BadProxyHeader, ProxyHeader, parse_proxy_header
from workers.serve import serve_client
from workers.state import Worker
from workers.tls import SocketTLSStream
from workers.transport import TLSTransport, Transport

log = logging.getLogger("fastingress.worker")

ACCEPT_BATCH = 64
PEEK_SIZE = 16384 + 64
_INF = float("inf")


def listen_socket(bind: str, port: int, backlog: int = 1024) -> socket.socket:
    """A non-blocking listening socket shared with the other workers (SO_REUSEPORT)."""
    sock = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
        sock.bind((bind, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _peer_ip(addr: object) -> str:
    if isinstance(addr, tuple) and addr:
        return str(addr[0])
    return "-"


OnSocket = Callable[[socket.socket, object], None]


class Listener:
    """A listening socket in the epoll set: accepts in batches, hands each socket on."""

    __slots__ = ("_backoff", "core", "on_socket", "sock")

    def __init__(self, core: Core, sock: socket.socket, on_socket: OnSocket) -> None:
        self.core = core
        self.sock = sock
        self.on_socket = on_socket
        self._backoff = False
        core.add(sock.fileno(), self)

    def on_event(self, events: int) -> None:
        self._accept()

    def _accept(self) -> None:
        if self._backoff:
            return
        accept = self.sock.accept
        for _ in range(ACCEPT_BATCH):
            try:
                conn, addr = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE/ENFILE/ENOBUFS: back off instead of spinning
                log.error("accept failed: %s", os.strerror(exc.errno or errno.EIO))  # noqa: TRY400
                self._backoff = True
                self.core.spawn(self._resume_later)
                return
            conn.setblocking(False)
            self.on_socket(conn, addr)
        self.core.call_soon(self._accept)  # more may wait; let the others run first

    async def _resume_later(self) -> None:
        await trio.sleep(0.1)
        self._backoff = False
        self.core.call_soon(self._accept)

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        self.core.remove(self.sock.fileno())
        self.sock.close()


class ProxyAccept(Timed):
    """A connection until its PROXY protocol header is read (see the module docstring)."""

    __slots__ = ("buf", "peer", "server", "sock", "tls")

    def __init__(self, server: CoreServer, sock: socket.socket, peer: str, tls: bool) -> None:
        super().__init__()
        self.server = server
        self.sock = sock
        self.peer = peer
        self.tls = tls
        self.buf = b""  # header bytes consumed so far (when it came in pieces)
        core = server.core
        core.add(sock.fileno(), self)
        core.set_deadline(self, core.now + server.worker.proxy_protocol_timeout)

    def on_event(self, events: int) -> None:
        self.begin()

    def begin(self) -> None:
        sock = self.sock
        try:
            data = sock.recv(V2_MAX, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        if not data:
            self.abort()
            return
        try:
            header = parse_proxy_header(self.buf + data)
        except BadProxyHeader as exc:
            log.info("connection from %s closed: %s (use-proxy-protocol is on)", self.peer, exc)
            self.abort()
            return
        try:
            if not isinstance(header, ProxyHeader):  # every byte seen is the header's: take them
                self.buf += sock.recv(len(data))
                return
            need = header.length - len(self.buf)
            rest = sock.recv(need) if need else b""
        except OSError:
            self.abort()
            return
        if len(rest) != need:
            self.abort()
            return
        self.deadline = _INF
        server = self.server
        server.core.remove(sock.fileno())
        if header.source is None:  # LOCAL / UNKNOWN: the balancer's own connection
            server.accepted(sock, self.peer, b"", self.tls)
        else:
            server.accepted(sock, header.source, str(header.dest_port).encode(), self.tls)

    def on_timeout(self) -> None:
        log.info("connection from %s closed: no PROXY protocol header in time", self.peer)
        self.abort()

    def abort(self) -> None:
        self.deadline = _INF
        self.server.core.remove(self.sock.fileno())
        with contextlib.suppress(OSError):
            self.sock.close()


class TLSAccept(Timed):
    """One HTTPS connection until its handshake is done (see the module docstring)."""

    __slots__ = ("client_ip", "conn", "peeking", "proxy_port", "server", "sock")

    def __init__(
        self, server: CoreServer, sock: socket.socket, client_ip: str, peek: bool, proxy_port: bytes = b""
    ) -> None:
        super().__init__()
        self.server = server
        self.sock = sock
        self.client_ip = client_ip
        self.proxy_port = proxy_port  # (PROXY protocol) the port the client used on the balancer
        self.peeking = peek
        self.conn: SSL.Connection | None = None
        core = server.core
        core.add(sock.fileno(), self)
        core.set_deadline(self, core.now + server.worker.settings.client_header_timeout)

    def on_event(self, events: int) -> None:
        if self.peeking:
            self._peek()
        if not self.peeking and self.conn is not None:
            self._handshake()

    def _start_tls(self) -> None:
        store = self.server.certs.current
        if store is None:
            self.abort()
            return
        conn = SSL.Connection(store.base, self.sock)
        conn.set_accept_state()
        self.conn = conn

    def begin(self) -> None:
        if self.peeking:
            self._peek()
            return
        self._start_tls()
        if self.conn is not None:
            self._handshake()

    def _peek(self) -> None:
        try:
            data = self.sock.recv(PEEK_SIZE, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        if not data:
            self.abort()
            return
        result = parse_client_hello_sni(data)
        if result is NEED_MORE:
            return  # the rest of the ClientHello brings a new edge
        self.peeking = False
        store = self.server.certs.current
        name = result.server_name if isinstance(result, Hello) else None
        upstream = store.passthrough_upstream(name) if store is not None else None
        if result is not NOT_TLS and upstream is not None and name is not None:
            self._passthrough(upstream, name)
            return
        self._start_tls()

    def _passthrough(self, upstream: str, name: str) -> None:
        server = self.server
        server.worker.metrics.tls_passthrough += 1
        sock = self._detach()
        server.core.spawn(server.relay_task, sock, upstream, name)

    def _handshake(self) -> None:
        conn = self.conn
        assert conn is not None
        server = self.server
        try:
            conn.do_handshake()
        except (SSL.WantReadError, SSL.WantWriteError):
            return
        except SSL.Error as exc:
            server.worker.metrics.tls_errors += 1
            log.debug("TLS handshake from %s failed: %s", self.client_ip, exc)
            self.abort()
            return
        raw_alpn = conn.get_alpn_proto_negotiated()
        alpn = raw_alpn.decode("ascii", "replace") if raw_alpn else "-"
        version = conn.get_protocol_version_name()
        server.worker.metrics.observe_tls(version, alpn, bool(_lib.SSL_session_reused(conn._ssl)))
        tls = f"{version}/{alpn}"
        if alpn == "h2":
            sock = self._detach()
            stream = SocketTLSStream(conn, sock, tls_version=version, selected_alpn="h2")
            server.core.spawn(partial(serve_h2, tls=tls), server.worker, stream, self.client_ip, b"")
            return
        server.core.cancel_deadline(self)
        transport = TLSTransport(server.core, self.sock, conn)
        client = ClientConn(server.core, server.worker, server.pool, transport, self.client_ip, tls,
                            server.handoff, self.proxy_port)
        client.tls_conn = conn
        transport.proto = client
        server.core.handlers[transport.fd] = transport
        server.core.call_soon(transport.kick)  # data may have come with the handshake

    def _detach(self) -> socket.socket:
        self.server.core.cancel_deadline(self)
        self.server.core.remove(self.sock.fileno())
        return self.sock

    def on_timeout(self) -> None:
        self.server.worker.metrics.tls_errors += 1
        self.abort()

    def abort(self) -> None:
        self.server.core.cancel_deadline(self)
        self.server.core.remove(self.sock.fileno())
        with contextlib.suppress(OSError):
            self.sock.close()


class CoreServer:
    """The core's side of a worker: listeners, connections, handoffs (see module docstring)."""

    def __init__(self, core: Core, worker: Worker, pool: CorePool, certs: CertCache) -> None:
        self.core = core
        self.worker = worker
        self.pool = pool
        self.certs = certs
        self.listeners: list[Listener] = []

    def listen_http(self, sock: socket.socket) -> None:
        self.listeners.append(Listener(self.core, sock, self._plain))

    def listen_https(self, sock: socket.socket) -> None:
        self.listeners.append(Listener(self.core, sock, self._tls))

    def stop_accepting(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()

    def _plain(self, sock: socket.socket, addr: object) -> None:
        if self.worker.proxy_protocol:
            ProxyAccept(self, sock, _peer_ip(addr), tls=False).begin()
            return
        self.accepted(sock, _peer_ip(addr), b"", tls=False)

    def _tls(self, sock: socket.socket, addr: object) -> None:
        if self.worker.proxy_protocol:
            ProxyAccept(self, sock, _peer_ip(addr), tls=True).begin()
            return
        self.accepted(sock, _peer_ip(addr), b"", tls=True)

    def accepted(self, sock: socket.socket, client_ip: str, proxy_port: bytes, tls: bool) -> None:
        """A connection ready for HTTP (plain) or a TLS handshake (its PROXY header read, if any)."""
        if tls:
            store = self.certs.current
            if store is None:
                sock.close()
                return
            TLSAccept(self, sock, client_ip, bool(store.passthrough), proxy_port).begin()
            return
        transport = Transport(self.core, sock)
        transport.proto = ClientConn(self.core, self.worker, self.pool, transport, client_ip, "",
                                     self.handoff, proxy_port)
        transport.start()

    async def relay_task(self, sock: socket.socket, upstream: str, name: str) -> None:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        try:
            await relay(self.worker, stream, b"", upstream, name)
        finally:
            await trio.aclose_forcefully(stream)

    def handoff(self, kind: str, conn: ClientConn, arg: object) -> None:
        """Give a client connection to a trio task (see ``workers.h1conn.HandoffFn``)."""
        sock = conn.transport.detach()
        tls_conn = getattr(conn, "tls_conn", None)
        stream: trio.abc.Stream
        if tls_conn is not None:
            version, _, alpn = conn.tls.partition("/")
            stream = SocketTLSStream(tls_conn, sock, tls_version=version, selected_alpn=alpn or None)
        else:
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        ip = conn.client_ip.decode()
        if kind == "h2":
            assert isinstance(arg, bytes)
            self.core.spawn(partial(serve_h2, tls=conn.tls), self.worker, stream, ip, arg)
        else:
            assert isinstance(arg, tuple)
            head, decided = arg
            assert isinstance(head, RequestHead)
            self.core.spawn(_serve_session, self.worker, stream, ip, conn, head, decided)


async def _serve_session(  # noqa: PLR0917
    worker: Worker, stream: trio.abc.Stream, ip: str, conn: ClientConn, head: RequestHead,
    decided: Decided | None,
) -> None:
    await serve_client(worker, stream, ip, tls=conn.tls, codec=conn.codec, head=head,  # type: ignore[arg-type]
                       t0=conn.t0 or time.perf_counter(), decided=decided, proxy_port=conn.proxy_port)


__all__ = ["CoreServer", "Listener", "ProxyAccept", "TLSAccept", "listen_socket"]
