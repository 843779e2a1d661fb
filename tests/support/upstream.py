"""Real upstream servers for end-to-end tests, on 127.0.0.1, in background threads.

``EchoServer`` is a threaded HTTP/1.1 keep-alive server (the standard library's, so it
shares no code with fastingress).  Every request is answered with JSON describing what
arrived: the server's name, method, raw request-target, headers and the body's length and
SHA-256.  Special paths (matched anywhere in the path, so they work behind prefixes):

* ``.../__status/NNN``      answer with status NNN
* ``.../__slow/MS``         wait MS milliseconds first (the wait can be released early
                            with ``release_slow()``)
* ``.../__stream/N/SIZE``   a chunked response of N chunks of SIZE bytes

``EchoServer(name, delay=, status=)`` answers every request after ``delay`` seconds and/or with
``status`` (a slow or failing "Pod", for load balancing and retry tests).

``WebSocketEchoServer`` echoes every message (the ``websockets`` library's sync server).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from websockets.sync.server import Server, ServerConnection, serve

_STATUS = re.compile(r"/__status/(\d{3})")
_SLOW = re.compile(r"/__slow/(\d+)")
_STREAM = re.compile(r"/__stream/(\d+)/(\d+)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        self.server.record(self)
        slow = _SLOW.search(self.path)
        if slow:
            self.server.slow_gate.wait(int(slow.group(1)) / 1000)
        if self.server.delay:
            self.server.slow_gate.wait(self.server.delay)
        stream = _STREAM.search(self.path)
        if stream:
            self._stream(int(stream.group(1)), int(stream.group(2)))
            return
        status = _STATUS.search(self.path)
        payload = json.dumps(
            {
                "server": self.server.name,
                "method": self.command,
                "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body_bytes": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        ).encode()
        self.send_response(int(status.group(1)) if status else self.server.status or 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Server", "echo-upstream")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _stream(self, count: int, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(count):
            chunk = bytes([65 + i % 26]) * size
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str, port: int, delay: float = 0.0, status: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.name = name
        self.delay = delay
        self.status = status
        self.slow_gate = threading.Event()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record(self, handler: _Handler) -> None:
        with self._lock:
            self.requests.append({"path": handler.path, "headers": dict(handler.headers.items())})


class EchoServer:
    """``with EchoServer("name") as up: up.port``"""

    def __init__(self, name: str, port: int = 0, *, delay: float = 0.0, status: int = 0) -> None:
        self._server = _Server(name, port, delay, status)
        self.name = name
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self._server.requests

    def release_slow(self) -> None:
        self._server.slow_gate.set()

    def __enter__(self) -> EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.slow_gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class WebSocketEchoServer:
    def __init__(self) -> None:
        self._server: Server = serve(self._echo, "127.0.0.1", 0)
        self.port: int = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever)

    @staticmethod
    def _echo(conn: ServerConnection) -> None:
        for message in conn:
            conn.send(message)

    def __enter__(self) -> WebSocketEchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)
