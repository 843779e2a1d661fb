"""Harness for the worker's data paths: real h11 peers on both sides.

Three modes (``MODE``, which ``tests/unit/test_worker_proxy.py`` parametrizes):

* ``"h11"`` -- the reference path: ``serve_client`` (a Session, h11 codec) over memory streams:
      client (h11) <-memory stream-> Session <-memory stream via injected connect-> upstream (h11)
* ``"llhttp-session"`` -- the same Session path with the llhttp codec;
* ``"core"`` -- the event-driven core (``workers.loop``/``workers.h1conn``) over real sockets on
  127.0.0.1: the client connects to the core's listener, and the core pool's ``dial`` maps each
  made-up endpoint (``10.0.0.1:80``) to a real listener on 127.0.0.1 whose accepted streams run
  the same upstream handler (``refuse``: a port nobody listens on; ``hang``: a listener whose
  backlog is full, so the SYN goes unanswered).  Requests the core hands to a Session (Upgrade,
  HTTP/2 upstreams) use the injected ``connect`` as in the other modes.

``Harness`` owns a ``Worker``; the upstream handler is by default ``EchoUpstream``, an h11
keep-alive server that records each request and answers with a configurable response.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import h11
import trio
import trio.testing

from fastingress.snapshot.schema import (
    Endpoint,
    Forward,
    GlobalSettings,
    Redirect,
    Respond,
    Route,
    RoutePolicy,
    Snapshot,
    Upstream,
    VirtualHost,
    WeightedBackend,
)
from workers.accept import CoreServer, listen_socket
from workers.certs import CertCache
from workers.h1pool import CorePool
from workers.loop import Core
from workers.pool import Pool
from workers.routing import RouteTable
from workers.serve import serve_client
from workers.state import Worker

Address = tuple[str, int]
UpstreamHandler = Callable[[trio.abc.Stream, Address], Awaitable[None]]

MODE = "h11"  # "h11", "llhttp-session" or "core" (see the module docstring)
CLIENT_IP = "127.9.8.7"  # core mode: the client socket is bound to it
LISTEN_PORT = 8080
APP = "default/app:80"


def make_snapshot(
    *,
    endpoints: Sequence[Endpoint] = (Endpoint("10.0.0.1", 80),),
    max_body_size: int = 1024 * 1024,
    settings: GlobalSettings | None = None,
    upstream: Upstream | None = None,
    extra_upstreams: Sequence[Upstream] = (),
    backends: Sequence[WeightedBackend] = (WeightedBackend(APP),),
    path: str = "/",
) -> Snapshot:
    up = upstream or Upstream(
        name=APP, endpoints=tuple(endpoints), service="default/app",
        connect_timeout=2.0, read_timeout=5.0, send_timeout=5.0,
    )
    routes = (
        Route(
            path=path, path_type="Prefix", action=Forward(tuple(backends)),
            ingress="default/web", service="default/app:80", policy=RoutePolicy(max_body_size=max_body_size),
        ),
        Route(path="/old", path_type="Exact", action=Redirect("https://example.com/new", 301),
              ingress="default/web"),
        Route(path="/teapot", path_type="Exact", action=Respond(418, "short and stout\n"),
              ingress="default/web"),
    )
    return Snapshot(
        virtual_hosts=(VirtualHost("example.com", routes),),
        upstreams=(up, *extra_upstreams),
        settings=settings or GlobalSettings(),
    )


@dataclass
class Recorded:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    address: Address

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        return b", ".join(values) if values else None


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=lambda: [b"hello"])


class EchoUpstream:
    """An h11 keep-alive upstream that records requests; ``reply(recorded)`` shapes the answer."""

    def __init__(self, reply: Callable[[Recorded], Reply] | None = None) -> None:
        self.requests: list[Recorded] = []
        self.reply = reply or (lambda rec: Reply(headers=[(b"content-length", b"5")]))
        self.closed_after_response = False  # close (without saying so) after each response

    async def __call__(self, stream: trio.abc.Stream, address: Address) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                rec = await self._read_request(conn, stream, address)
                if rec is None:
                    return
                self.requests.append(rec)
                reply = self.reply(rec)
                out = conn.send(h11.Response(status_code=reply.status, headers=reply.headers)) or b""
                for chunk in reply.chunks:
                    if rec.method != b"HEAD" and reply.status not in (204, 304):
                        out += conn.send(h11.Data(data=chunk)) or b""
                out += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(out)
                if conn.our_state is not h11.DONE or self.closed_after_response:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    @staticmethod
    async def _read_request(
        conn: h11.Connection, stream: trio.abc.Stream, address: Address
    ) -> Recorded | None:
        head: h11.Request | None = None
        body = b""
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(ev, h11.Request):
                head = ev
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                assert head is not None
                return Recorded(head.method, head.target, list(head.headers), body, address)
            else:
                return None


class Harness:
    """A Worker wired to test upstreams; ``client()`` opens a client connection (see ``MODE``)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        snapshot: Snapshot | None = None,
        upstream: UpstreamHandler | None = None,
        resolve: Callable[[str, int], Awaitable[tuple[str, ...]]] | None = None,
        *,
        mode: str | None = None,
    ) -> None:
        self.nursery = nursery
        self.mode = mode or MODE
        self.upstream: UpstreamHandler = upstream or EchoUpstream()
        self.connects: list[Address] = []
        self.refuse: set[Address] = set()
        self.hang: set[Address] = set()
        self.session_pool = Pool(self.connect) if resolve is None else Pool(self.connect, resolve)
        self.worker = Worker(self.session_pool, listen_port=LISTEN_PORT,
                             http1_codec="h11" if self.mode == "h11" else "llhttp")
        self.pool: Pool | CorePool = self.session_pool
        self._listeners: dict[Address, Address] = {}
        self._sockets: list[socket.socket] = []
        if self.mode == "core":
            self._start_core()
        if snapshot is not None:
            self.install(snapshot)

    def _start_core(self) -> None:
        self.core = Core()
        self.core_pool = CorePool(self.core, self.session_pool.tls, dial=self._dial)
        self.worker.retire_hooks.append(self.core_pool.retire)
        self.pool = self.core_pool
        certs = CertCache()
        self.server = CoreServer(self.core, self.worker, self.core_pool, certs)
        sock = listen_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.server.listen_http(sock)
        self.nursery.start_soon(self.core.run, self.nursery)

    def install(self, snapshot: Snapshot) -> None:
        self.worker.install(RouteTable.compile(snapshot), self.worker.generation + 1)

    async def connect(self, host: str, port: int, timeout: float) -> trio.abc.Stream:
        self.connects.append((host, port))
        if (host, port) in self.refuse:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        if (host, port) in self.hang:
            await trio.sleep_forever()
        ours, theirs = trio.testing.memory_stream_pair()
        self.nursery.start_soon(self.upstream, theirs, (host, port))
        return ours

    # ---- core mode: made-up endpoints on real sockets --------------------------------

    def _dial(self, address: Address) -> Address:
        self.connects.append(address)
        if address in self.refuse:
            return self._refusing()
        if address in self.hang:
            return self._hanging()
        real = self._listeners.get(address)
        if real is None:
            real = self._listeners[address] = self._serve(address)
        return real

    def _keep(self, sock: socket.socket) -> Address:
        self._sockets.append(sock)
        host, port = sock.getsockname()[:2]
        return str(host), int(port)

    def _refusing(self) -> Address:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # bound, not listening: a connect is refused
        return self._keep(sock)

    def _hanging(self) -> Address:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        address = self._keep(sock)
        for _ in range(4):  # fill the accept queue: later SYNs go unanswered
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            self._sockets.append(filler)
        return address

    def _serve(self, address: Address) -> Address:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        real = self._keep(sock)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        self.nursery.start_soon(self._accept, listener, address)
        return real

    async def _accept(self, listener: trio.SocketListener, address: Address) -> None:
        while True:
            stream = await listener.accept()
            self.nursery.start_soon(self.upstream, stream, address)

    # ---- clients ---------------------------------------------------------------------

    def client(self) -> H11Client:
        if self.mode == "core":
            sock = socket.create_connection(("127.0.0.1", self.port), source_address=(CLIENT_IP, 0))
            return H11Client(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
        ours, theirs = trio.testing.memory_stream_pair()
        self.nursery.start_soon(serve_client, self.worker, theirs, CLIENT_IP)
        return H11Client(ours)


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        return b", ".join(values) if values else None


class H11Client:
    """A minimal h11 HTTP/1.1 client over a trio Stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send_head(self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
        hdrs = list(headers)
        if not any(n.lower() == b"host" for n, _ in hdrs):
            hdrs.insert(0, (b"host", b"example.com"))
        data = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        await self.stream.send_all(data or b"")

    async def send_body(self, *chunks: bytes, end: bool = True) -> None:
        out = b"".join(self.conn.send(h11.Data(data=c)) or b"" for c in chunks)
        if end:
            out += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(out)

    async def next_event(self) -> object:
        while True:
            ev = self.conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            self.conn.receive_data(bytes(await self.stream.receive_some(65536)))

    async def read_response(self) -> Response:
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        body = b""
        while True:
            ev = await self.next_event()
            if isinstance(ev, h11.Response):
                status, headers = ev.status_code, list(ev.headers)
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                return Response(status, headers, body)
            elif isinstance(ev, h11.InformationalResponse):
                continue
            else:
                raise AssertionError(f"unexpected event {ev!r}")  # noqa: TRY004

    async def request(
        self,
        method: bytes = b"GET",
        target: bytes = b"/",
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes | None = None,
    ) -> Response:
        hdrs = list(headers)
        framed = any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in hdrs)
        if body is not None and not framed:
            hdrs.append((b"content-length", str(len(body)).encode()))
        await self.send_head(method, target, hdrs)
        await self.send_body(*([body] if body else []))
        resp = await self.read_response()
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return resp

    async def closed(self) -> bool:
        """True once the server closed the connection (reads until EOF)."""
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return True
            if not data:
                return True
