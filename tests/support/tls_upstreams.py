"""Upstreams that speak TLS and/or HTTP/2, on 127.0.0.1, in background threads.

* ``HttpsEchoServer``: ``tests.support.upstream.EchoServer`` behind stdlib ``ssl`` with a
  trustme certificate; records the SNI name of every handshake (``sni``).
* ``H2EchoServer``: a small HTTP/2 server written with the ``h2`` library (cleartext, or
  TLS with ALPN ``h2``), gRPC-like: every request is answered with status 200,
  ``content-type`` as received, a body that echoes the request body (prefixed with the
  path), then trailers ``grpc-status: 0`` and ``grpc-message: ok``.  Requests to paths
  containing ``/__reset`` get RST_STREAM.  It records every request's headers and the
  number of TCP connections it accepted (``connections``).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import trustme

from tests.support.upstream import EchoServer


def server_context(ca: trustme.CA, *names: str, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class HttpsEchoServer(EchoServer):
    """``EchoServer`` over TLS: ``with HttpsEchoServer("api", ctx) as up: up.port, up.sni``."""

    def __init__(self, name: str, ctx: ssl.SSLContext) -> None:
        super().__init__(name)
        self.sni: list[str | None] = []

        def on_sni(_sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _c: ssl.SSLContext) -> None:
            self.sni.append(server_name)

        ctx.sni_callback = on_sni
        server = self._server
        server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)

    def __enter__(self) -> HttpsEchoServer:
        super().__enter__()
        return self


class H2EchoServer:
    """A threaded HTTP/2 echo server (see the module docstring)."""

    def __init__(self, ctx: ssl.SSLContext | None = None) -> None:
        self._ctx = ctx
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> H2EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self._sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        sock: socket.socket = raw
        try:
            if self._ctx is not None:
                sock = self._ctx.wrap_socket(raw, server_side=True)
            self._h2(sock)
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()

    def _h2(self, sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        heads: dict[int, list[tuple[bytes, bytes]]] = {}
        bodies: dict[int, bytearray] = {}
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    sid = event.stream_id
                    heads[sid] = [(bytes(n), bytes(v)) for n, v in event.headers or []]
                    bodies[sid] = bytearray()
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data or b""
                    conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    sid = event.stream_id
                    self._answer(conn, sid, heads.pop(sid), bytes(bodies.pop(sid)))
            out = conn.data_to_send()
            if out:
                sock.sendall(out)

    def _answer(
        self, conn: h2.connection.H2Connection, sid: int, head: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        headers = dict(head)
        with self._lock:
            self.requests.append({"headers": {k.decode(): v.decode() for k, v in head}, "body": body})
        path = headers.get(b":path", b"")
        if b"/__reset" in path:
            conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        ctype = headers.get(b"content-type", b"application/grpc")
        conn.send_headers(sid, [(b":status", b"200"), (b"content-type", ctype), (b"x-upstream", b"h2echo")])
        conn.send_data(sid, path + b"|" + body)
        conn.send_headers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"ok")], end_stream=True)
