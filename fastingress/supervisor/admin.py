"""The admin HTTP server (/healthz, /readyz, /metrics, /status, /explain): h11 on trio, GET/HEAD only.

The server knows nothing about the supervisor: it calls an injected ``Handler`` with the
method and path and sends back what it returns.  Requests are tiny; a connection that sends
nothing useful for ``IDLE_TIMEOUT`` seconds, or garbage, is closed (after a 400).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

import h11
import trio

log = logging.getLogger("fastingress.admin")

IDLE_TIMEOUT = 10.0
MAX_REQUEST_HEAD = 16 * 1024
READ_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[str, str, str], Awaitable[Response]]  # (method, path, query without "?")


def reason_phrase(status: int) -> bytes:
    """``Service Unavailable`` for 503 (h11 sends an empty reason unless it is given one)."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def text(status: int, body: str) -> Response:
    return Response(status, body.encode())


async def _send(stream: trio.abc.Stream, conn: h11.Connection, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _respond(
    stream: trio.abc.Stream, conn: h11.Connection, response: Response, *, head_only: bool
) -> None:
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        ("Cache-Control", "no-store"),
        ("Server", "fastingress"),
        *response.headers,
    ]
    reason = reason_phrase(response.status)
    await _send(stream, conn, h11.Response(status_code=response.status, headers=headers, reason=reason))
    if response.body and not head_only:
        await _send(stream, conn, h11.Data(data=response.body))
    await _send(stream, conn, h11.EndOfMessage())


async def _next_event(stream: trio.abc.Stream, conn: h11.Connection) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is h11.PAUSED:
            return h11.PAUSED
        if isinstance(event, h11.Event):
            return event
        # Small reads: h11 only enforces max_incomplete_event_size on an incomplete head.
        conn.receive_data(bytes(await stream.receive_some(READ_SIZE)))


async def handle_connection(stream: trio.abc.Stream, handler: Handler) -> None:
    """Serve requests on one connection (keep-alive) until it closes, idles out or misbehaves."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    async with stream:
        try:
            while await _serve_one(stream, conn, handler):
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            await _bad_request(stream, conn, exc.error_status_hint)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass


async def _serve_one(stream: trio.abc.Stream, conn: h11.Connection, handler: Handler) -> bool:
    """One request/response cycle; True if the connection can be reused."""
    request: h11.Request | None = None
    while True:
        event: h11.Event | type[h11.PAUSED] | None = None
        with trio.move_on_after(IDLE_TIMEOUT):
            event = await _next_event(stream, conn)
        if event is None or isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return False
        if isinstance(event, h11.Request):
            # h11 only limits a head that is still incomplete; a complete one can be larger.
            if len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers) > MAX_REQUEST_HEAD:
                raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
            request = event
        elif isinstance(event, h11.EndOfMessage):
            break
    assert request is not None  # h11 yields Request before EndOfMessage
    method = request.method.decode("ascii", "replace")
    target = request.target.decode("ascii", "replace")
    path, _, query = target.partition("?")
    if method not in ("GET", "HEAD"):
        response = Response(405, b"405 Method Not Allowed\n", headers=(("Allow", "GET, HEAD"),))
    else:
        try:
            response = await handler(method, path, query)
        except Exception:
            log.exception("admin handler failed for %s %s", method, path)
            response = text(500, "500 Internal Server Error\n")
    await _respond(stream, conn, response, head_only=method == "HEAD")
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


async def _bad_request(stream: trio.abc.Stream, conn: h11.Connection, status: int) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = f"{status} {HTTPStatus(status).phrase}\n".encode()
    response = Response(status, body, headers=(("Connection", "close"),))
    with contextlib.suppress(h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        await _respond(stream, conn, response, head_only=False)


async def serve(
    listeners: list[trio.SocketListener],
    handler: Handler,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin endpoints on ``listeners`` until cancelled."""

    async def on_connection(stream: trio.SocketStream) -> None:
        await handle_connection(stream, handler)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, on_connection, listeners)
        task_status.started()
