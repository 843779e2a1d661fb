"""A real upstream whose answers the request scripts (tests only), on 127.0.0.1 in a thread.

``ScriptedServer`` (the standard library's threaded HTTP/1.1 server, like ``EchoServer``)
answers every request with JSON describing it (server name, method, raw target, headers, body
length), and:

* ``?status=NNN`` (anywhere in the query) sets the status;
* ``?h=Name:Value`` (repeatable) adds a response header, for ``Location``, ``Set-Cookie``...;
* with ``x_code=True`` it is an ingress-nginx style error backend: the status is the request's
  ``X-Code`` header (when there is one), as the custom-error-pages example answers.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length) if length else b""
        query = parse_qs(urlsplit(self.path).query)
        info = {
            "server": self.server.name,
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_bytes": len(body),
        }
        with self.server.lock:
            self.server.requests.append(info)
        status = int(query.get("status", ["200"])[0])
        code = self.headers.get("X-Code")
        if self.server.x_code and code:
            status = int(code)
        payload = json.dumps(info).encode()
        self.send_response(status)
        for header in query.get("h", []):
            name, _, value = header.partition(":")
            self.send_header(name, value.strip())
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str, x_code: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.x_code = x_code
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []


class ScriptedServer:
    """``with ScriptedServer("name") as up: up.port``"""

    def __init__(self, name: str, *, x_code: bool = False) -> None:
        self._server = _Server(name, x_code)
        self.name = name
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self._server.requests

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def header(seen: dict[str, Any], name: str) -> str | None:
    """The value of a request header a ScriptedServer (or EchoServer) saw, or None."""
    for key, value in seen["headers"]:
        if key.lower() == name.lower():
            return str(value)
    return None
