"""The auth subrequest client (``workers.authclient``) against real servers on 127.0.0.1:
timeouts, refused connections, kept connections the server closed, keep-alive limits and
malformed answers.  The servers are raw trio listeners, so each misbehaviour is exact."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from workers.authclient import AuthClient, AuthFailed, Limits, Origin

pytestmark = pytest.mark.timeout(30)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Auth-User: alice\r\n\r\nok"
Handler = Callable[[trio.SocketStream, int], Awaitable[None]]


class Server:
    """A listener whose ``handler(stream, connection number)`` serves each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.port = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        number = self.connections
        try:
            await self.handler(stream, number)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def read_head(self, stream: trio.SocketStream) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return b""
            data += chunk
        self.heads.append(data)
        return data


async def start(
    nursery: trio.Nursery, handler: Callable[[Server, trio.SocketStream, int], Awaitable[None]]
) -> Server:
    server = Server(lambda stream, n: handler(server, stream, n))
    listeners = await nursery.start(partial(trio.serve_tcp, server.serve, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


def origin(server: Server) -> Origin:
    return Origin("http", "127.0.0.1", server.port)


HEADERS = [(b"host", b"auth.test"), (b"x-original-url", b"http://a.test/")]


async def test_answers_and_keeps_the_connection() -> None:
    async def keep(server: Server, stream: trio.SocketStream, n: int) -> None:
        while await server.read_head(stream):
            await stream.send_all(OK)

    async with trio.open_nursery() as nursery:
        server = await start(nursery, keep)
        client = AuthClient()
        for _ in range(3):
            answer = await client.request(origin(server), b"GET", b"/check?a=1", HEADERS, Limits())
            assert answer.status == 200 and (b"x-auth-user", b"alice") in answer.headers
        assert server.connections == 1 and client.idle_count(origin(server)) == 1
        assert server.heads[0].startswith(b"GET /check?a=1 HTTP/1.1\r\nhost: auth.test\r\n")
        assert b"content-length" not in server.heads[0] and b"transfer-encoding" not in server.heads[0]
        # keepalive_requests: the last request on a connection says so and closes it
        limits = Limits(keepalive_requests=2)
        client = AuthClient()
        for _ in range(4):
            await client.request(origin(server), b"GET", b"/", HEADERS, limits)
        assert server.connections == 3
        assert sum(b"connection: close" in head for head in server.heads[3:]) == 2
        # an idle connection past keepalive_timeout is not used again
        await client.request(origin(server), b"GET", b"/", HEADERS, limits)
        idle = client._idle[origin(server)]
        idle[-1].idle_since -= 120.0
        await client.request(origin(server), b"GET", b"/", HEADERS, limits)
        assert server.connections == 5
        await client.close()
        nursery.cancel_scope.cancel()


async def test_a_kept_connection_the_server_closed_is_retried_once() -> None:
    async def one_each(server: Server, stream: trio.SocketStream, n: int) -> None:
        await server.read_head(stream)
        await stream.send_all(OK)  # keep-alive by the protocol, then closes anyway

    async with trio.open_nursery() as nursery:
        server = await start(nursery, one_each)
        client = AuthClient()
        for _ in range(3):
            answer = await client.request(origin(server), b"GET", b"/", HEADERS, Limits())
            assert answer.status == 200
        assert server.connections == 3
        nursery.cancel_scope.cancel()


async def test_failures_are_auth_failed_with_a_reason() -> None:
    async def hang(server: Server, stream: trio.SocketStream, n: int) -> None:
        await server.read_head(stream)
        await trio.sleep_forever()

    async def garbage(server: Server, stream: trio.SocketStream, n: int) -> None:
        await server.read_head(stream)
        await stream.send_all(b"SPDY/9 what\r\n\r\n")

    async def half(server: Server, stream: trio.SocketStream, n: int) -> None:
        await server.read_head(stream)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")

    async with trio.open_nursery() as nursery:
        hanging = await start(nursery, hang)
        broken = await start(nursery, garbage)
        cut = await start(nursery, half)
        client = AuthClient()
        started = trio.current_time()
        with pytest.raises(AuthFailed, match=r"no answer from 127\.0\.0\.1:\d+ within 0\.2s"):
            await client.request(origin(hanging), b"GET", b"/", HEADERS, Limits(read_timeout=0.2))
        assert trio.current_time() - started < 5
        with pytest.raises(AuthFailed, match="bad response"):
            await client.request(origin(broken), b"GET", b"/", HEADERS, Limits())
        with pytest.raises(AuthFailed, match="closed"):
            await client.request(origin(cut), b"GET", b"/", HEADERS, Limits())
        for server in (hanging, broken, cut):
            assert client.idle_count(origin(server)) == 0
        nursery.cancel_scope.cancel()
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with pytest.raises(AuthFailed, match=f"connect to 127.0.0.1:{port} failed"):
        await AuthClient().request(Origin("http", "127.0.0.1", port), b"GET", b"/", HEADERS, Limits())


async def test_a_tls_handshake_that_fails_is_auth_failed() -> None:
    async def plain(server: Server, stream: trio.SocketStream, n: int) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # not TLS at all

    async with trio.open_nursery() as nursery:
        server = await start(nursery, plain)
        with pytest.raises(AuthFailed, match="TLS handshake"):
            await AuthClient().request(
                Origin("https", "127.0.0.1", server.port), b"GET", b"/", HEADERS, Limits()
            )
        nursery.cancel_scope.cancel()
