"""A real external-auth service for end-to-end tests (``auth-url``), on 127.0.0.1.

The standard library's threaded HTTP/1.1 keep-alive server (no code shared with fastingress),
optionally behind TLS.  Every request is recorded (method, path, headers, body length and the
client's port, which tells connections apart).  What it answers depends on the path:

* ``.../check``: ``Authorization: Bearer good`` -> 200 with ``X-Auth-User: alice`` and two
  ``X-Auth-Group`` headers; ``Bearer bob`` -> 200 with ``X-Auth-User: bob`` and
  ``Cache-Control: no-store``; anything else -> 401 with ``WWW-Authenticate: Bearer
  realm="test"``, and without an Authorization header also a ``Set-Cookie`` (which nginx
  passes on only with always-set-cookie, and which keeps the answer out of the cache);
* ``.../deny`` -> 403;  ``.../redirect`` -> 302 (to nginx, an unexpected status);
* ``.../error`` -> 503;  ``.../cookie`` -> 200 with two ``Set-Cookie`` headers;
* ``.../hang``: no answer until the server stops (a timeout to provoke);
* ``.../big``: 200 with a 100 KiB body (more than the client keeps reading).
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _AuthHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.record(self, len(body))
        path = self.path.split("?", 1)[0]
        if path.endswith("/hang"):
            self.server.gate.wait(30)
            self.close_connection = True
            return
        if path.endswith("/deny"):
            self._answer(403, [])
        elif path.endswith("/redirect"):
            self._answer(302, [("Location", "/elsewhere")])
        elif path.endswith("/error"):
            self._answer(503, [], b"auth backend down\n")
        elif path.endswith("/cookie"):
            self._answer(200, [("Set-Cookie", "session=abc; Path=/"), ("Set-Cookie", "theme=dark")])
        elif path.endswith("/big"):
            self._answer(200, [("X-Auth-User", "big")], b"x" * (100 * 1024))
        else:
            self._check()

    def _check(self) -> None:
        authorization = self.headers.get("Authorization", "")
        if authorization == "Bearer good":
            self._answer(200, [("X-Auth-User", "alice"), ("X-Auth-Group", "admins"), ("X-Auth-Group", "ops")])
        elif authorization == "Bearer bob":
            self._answer(200, [("X-Auth-User", "bob"), ("Cache-Control", "no-store")])
        elif authorization:
            self._answer(401, [("WWW-Authenticate", 'Bearer realm="test"')], b"who are you?\n")
        else:
            self._answer(
                401,
                [("WWW-Authenticate", 'Bearer realm="test"'), ("Set-Cookie", "csrf=1")],
                b"who are you?\n",
            )

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _AuthHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.gate = threading.Event()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record(self, handler: _Handler, body_bytes: int) -> None:
        with self._lock:
            self.requests.append(
                {
                    "method": handler.command,
                    "path": handler.path,
                    "headers": [(k.lower(), v) for k, v in handler.headers.items()],
                    "body_bytes": body_bytes,
                    "client_port": handler.client_address[1],
                }
            )


class AuthServer:
    """``with AuthServer() as auth: auth.port`` (``tls``: a certificate to serve HTTPS with)."""

    def __init__(self, tls: trustme.LeafCert | None = None) -> None:
        self._server = _AuthHTTPServer()
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.configure_cert(ctx)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self._server.requests

    def to(self, suffix: str) -> list[dict[str, Any]]:
        """The recorded requests whose path ends with ``suffix`` (before any query)."""
        return [r for r in list(self.requests) if r["path"].split("?", 1)[0].endswith(suffix)]

    def for_host(self, host: str) -> list[dict[str, Any]]:
        """The recorded subrequests made for requests to ``host`` (by their X-Original-URL)."""
        return [
            r for r in list(self.requests) if any(f"://{host}/" in v for v in header(r, "x-original-url"))
        ]

    def __enter__(self) -> AuthServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def header(request: dict[str, Any], name: str) -> list[str]:
    """The values of one header (lower-case ``name``) a recorded request carried."""
    return [v for n, v in request["headers"] if n == name]


__all__ = ["AuthServer", "header"]
