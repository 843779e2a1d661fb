"""Demo backends: tiny HTTP/1.1 servers that answer every request with a JSON description of it.

Used by the example manifests (``config/examples``: frontend on 9001, api on 9002, docs on 9003),
by tests, and by hand in a browser::

    python -m fastingress.demo --backend frontend=9001 --backend api=9002 --backend docs=9003

Theory of operation
-------------------
Each ``(name, port)`` spec is one trio TCP listener; every accepted connection gets its own
``h11.Connection`` (server role) and loops over request/response cycles (keep-alive):

1. wait for a ``Request`` (the whole request, headers and body, must arrive within
   ``idle_timeout`` seconds, else the connection is closed);
2. answer ``100 Continue`` if the client waits for it, then drain the body, counting bytes
   (the body is never stored, so a large upload costs no memory);
3. send ``200`` with the JSON from :func:`describe_request` (a pure function: request in,
   bytes out), then ``start_next_cycle`` unless either side asked to close.

A request h11 refuses (bad syntax, headers too large) gets a short ``400``/``431`` and the connection is
closed; a peer that goes away just ends its connection. Nothing here can take a listener down.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

import h11
import msgspec
import trio

RECEIVE_SIZE = 64 * 1024
DEFAULT_IDLE_TIMEOUT = 75.0  # nginx's keepalive_timeout default


class RequestInfo(msgspec.Struct, frozen=True):
    """What a demo backend answers (JSON), field order as documented."""

    backend: str
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body_bytes: int


def describe_request(name: str, request: h11.Request, body_bytes: int) -> bytes:
    """The JSON body describing ``request`` as received by backend ``name``.

    Header names are lower-cased; repeated headers are joined with ``", "`` (RFC 9110 5.3).
    ``query`` is the raw query string without the ``?`` ("" when absent).
    """
    path, _, query = request.target.partition(b"?")
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.headers:
        key = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    info = RequestInfo(
        backend=name,
        method=request.method.decode("latin-1"),
        path=path.decode("latin-1"),
        query=query.decode("latin-1"),
        headers=headers,
        body_bytes=body_bytes,
    )
    return msgspec.json.encode(info)


def response_headers(name: str, body_length: int) -> list[tuple[str, str]]:
    return [
        ("Content-Type", "application/json"),
        ("Content-Length", str(body_length)),
        ("X-Demo-Backend", name),
    ]


class _Closed(Exception):
    """The peer closed the connection (or timed out) between or during requests."""


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> h11.Event:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
            continue
        if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            raise _Closed
        assert isinstance(event, h11.Event)
        return event


async def _receive_request(conn: h11.Connection, stream: trio.abc.Stream) -> tuple[h11.Request, int]:
    """Read one whole request; returns it and the number of body bytes."""
    event = await _next_event(conn, stream)
    if not isinstance(event, h11.Request):
        raise _Closed
    if conn.they_are_waiting_for_100_continue:
        await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
    body_bytes = 0
    while True:
        part = await _next_event(conn, stream)
        if isinstance(part, h11.Data):
            body_bytes += len(part.data)
        elif isinstance(part, h11.EndOfMessage):
            return event, body_bytes


async def _send_response(name: str, conn: h11.Connection, stream: trio.abc.Stream, request: h11.Request,
                         body_bytes: int) -> None:
    body = describe_request(name, request, body_bytes)
    data = conn.send(h11.Response(status_code=200, headers=response_headers(name, len(body)))) or b""
    if request.method != b"HEAD":
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def _send_error(conn: h11.Connection, stream: trio.abc.Stream, status: int) -> None:
    """A short plain-text error (h11's status hint: 400, 431 ...) if no response has started."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = b"bad request\n" if status == 400 else f"error {status}\n".encode()
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("Connection", "close")]
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        return
    await stream.send_all(data)
    await _linger(stream)


async def _linger(stream: trio.abc.Stream, seconds: float = 1.0, limit: int = 1024 * 1024) -> None:
    """Half-close, then read and drop what the client still sends (briefly), like nginx's
    lingering close: closing with unread data would reset the connection and could destroy the
    error response before the client reads it."""
    if isinstance(stream, trio.abc.HalfCloseableStream):
        await stream.send_eof()
    drained = 0
    with trio.move_on_after(seconds):
        while drained < limit and (chunk := await stream.receive_some(RECEIVE_SIZE)):
            drained += len(chunk)


async def serve_connection(name: str, stream: trio.abc.Stream,
                           idle_timeout: float = DEFAULT_IDLE_TIMEOUT) -> None:
    """Serve one client connection until it closes, times out or breaks the protocol."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            with trio.move_on_after(idle_timeout):
                request, body_bytes = await _receive_request(conn, stream)
                await _send_response(name, conn, stream, request, body_bytes)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                break  # timed out mid-way, or a side asked to close (Connection: close, HTTP/1.0)
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        await _send_error(conn, stream, exc.error_status_hint)
    except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


Listeners = list[tuple[str, list[trio.SocketListener]]]


async def open_backend_listeners(specs: Sequence[tuple[str, int]], bind: str = "127.0.0.1") -> Listeners:
    """Bind one listener group per ``(name, port)``; raises ``OSError`` (nothing left open) on failure."""
    listeners: Listeners = []
    try:
        for name, port in specs:
            try:
                listeners.append((name, await trio.open_tcp_listeners(port, host=bind)))
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise OSError(exc.errno, f"backend {name}: cannot listen on {bind}:{port}: {reason}") from exc
    except BaseException:
        for _, group in listeners:
            for listener in group:
                await trio.aclose_forcefully(listener)
        raise
    return listeners


def bound_ports(listeners: Listeners) -> list[tuple[str, int]]:
    return [(name, int(group[0].socket.getsockname()[1])) for name, group in listeners]


async def serve_backend_listeners(
    listeners: Listeners,
    *,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve already-bound listeners until cancelled."""
    async with trio.open_nursery() as nursery:
        for name, group in listeners:
            nursery.start_soon(_serve_listeners, name, group, idle_timeout)
        task_status.started(bound_ports(listeners))


async def serve_demo_backends(
    specs: Sequence[tuple[str, int]],
    bind: str = "127.0.0.1",
    *,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one demo backend per ``(name, port)`` spec on ``bind`` until cancelled.

    Port 0 picks a free port; ``await nursery.start(serve_demo_backends, specs)`` returns the
    ``(name, port)`` pairs actually bound, once every listener accepts connections.
    Raises ``OSError`` if a port cannot be bound (nothing is left listening then).
    """
    listeners = await open_backend_listeners(specs, bind)
    await serve_backend_listeners(listeners, idle_timeout=idle_timeout, task_status=task_status)


async def _serve_listeners(name: str, group: list[trio.SocketListener], idle_timeout: float) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await serve_connection(name, stream, idle_timeout)

    await trio.serve_listeners(handler, group)


def parse_backend_spec(text: str) -> tuple[str, int]:
    """``"NAME=PORT"`` -> ``(NAME, PORT)``; raises ``ValueError`` with a one-line reason."""
    name, sep, port_text = text.partition("=")
    if not sep or not name or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected NAME=PORT (port 0..65535), got {text!r}")
    return name, int(port_text)


def _backend_arg(text: str) -> tuple[str, int]:
    try:
        return parse_backend_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(prog: str = "python -m fastingress.demo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Demo HTTP backends answering every request with a JSON description of it.",
    )
    parser.add_argument("--backend", dest="backends", action="append", type=_backend_arg, required=True,
                        metavar="NAME=PORT", help="serve backend NAME on PORT (repeatable)")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    return parser


async def _cancel_on_sigterm(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


def main(argv: Sequence[str] | None = None, prog: str = "python -m fastingress.demo") -> int:
    """CLI entry point; returns the exit code (2 for bad flags, 1 if a port cannot be bound).

    Runs until SIGINT (Ctrl-C) or SIGTERM, then exits 0.
    """
    args = build_parser(prog).parse_args(argv)
    specs: list[tuple[str, int]] = args.backends

    async def run() -> None:
        try:
            listeners = await open_backend_listeners(specs, args.bind)
        except OSError as exc:
            print(f"{prog}: error: {exc.strerror or exc}", file=sys.stderr)
            raise SystemExit(1) from None
        for name, port in bound_ports(listeners):
            print(f"demo backend {name} listening on http://{args.bind}:{port}", file=sys.stderr, flush=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_sigterm, nursery.cancel_scope)
            await serve_backend_listeners(listeners)

    try:
        trio.run(run)
    except* KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
