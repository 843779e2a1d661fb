"""Upstream TLS parameters, the TLS pool (handshake, timeout, resumption, keys), the HTTP/2
upstream client (multiplexing, flow control, resets, GOAWAY) and the proxy-ssl-* annotations.

In-memory streams; the peers are real: trio's SSLStream server with trustme certificates and
an HTTP/2 server written here with the ``h2`` library.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest
import trio
import trio.testing
import trustme

from fastingress.errors import UpstreamFailed, UpstreamTimeout
from fastingress.snapshot.schema import Upstream
from fastingress.translate import translate
from fastingress.translate.annotations import PREFIX, UpstreamSettings, parse_annotations
from fastingress.translate.backends import settings_suffix
from workers.h2upstream import ConnectionLost, H2Pool, grpc_error_headers, is_grpc
from workers.pool import Pool
from workers.upstream_tls import ClientTLS, TLSContexts, client_tls, server_name

KEY = ("10.0.0.7", 443)
BAD_PEM = b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"


# ---- parameters --------------------------------------------------------------------------


def test_server_name_precedence() -> None:
    up = Upstream("u", protocol="HTTPS", external_name="api.example.com", host_override="vhost.example:8443")
    assert server_name(up) == "vhost.example"
    assert server_name(Upstream("u", protocol="HTTPS", external_name="api.example.com.")) == "api.example.com"
    named = Upstream("u", protocol="HTTPS", host_override="vhost.example", tls_server_name="Name.Example")
    assert server_name(named) == "name.example"
    assert server_name(Upstream("u", protocol="HTTPS")) is None


def test_client_tls_only_for_tls_protocols() -> None:
    assert client_tls(Upstream("u", protocol="HTTP")) is None
    assert client_tls(Upstream("u", protocol="GRPC")) is None
    https = client_tls(Upstream("u", protocol="HTTPS", tls_ca_pem="x"))
    assert https == ClientTLS(verify=False, ca_pem=None, server_name=None, sni=True, alpn=())
    grpcs = client_tls(Upstream("u", protocol="GRPCS", tls_verify=True, tls_ca_pem="x", tls_sni=False))
    assert grpcs == ClientTLS(verify=True, ca_pem="x", server_name=None, sni=False, alpn=("h2",))


def test_grpc_helpers() -> None:
    assert is_grpc([(b"content-type", b"application/grpc+proto")])
    assert not is_grpc([(b"content-type", b"application/json")])
    headers = dict(grpc_error_headers(14, "connect to 10.0.0.1:50051 failed: 100% refused\n"))
    assert headers[b"grpc-status"] == b"14"
    assert headers[b"grpc-message"] == b"connect to 10.0.0.1:50051 failed: 100%25 refused%0A"


# ---- TLS through the pool ------------------------------------------------------------------


class TLSPeer:
    """connect() hands out one end of a memory stream; the other end is a TLS server."""

    def __init__(self, nursery: trio.Nursery, ctx: ssl.SSLContext, *, answer: bool = True) -> None:
        self.nursery = nursery
        self.ctx = ctx
        self.answer = answer
        self.sni: list[str | None] = []
        self.reused: list[bool] = []
        ctx.sni_callback = lambda _obj, name, _ctx: self.sni.append(name)

    async def __call__(self, host: str, port: int, timeout: float) -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        if self.answer:
            self.nursery.start_soon(self._serve, theirs)
        return ours

    async def _serve(self, raw: trio.abc.Stream) -> None:
        server = trio.SSLStream(raw, self.ctx, server_side=True)
        try:
            await server.do_handshake()
            self.reused.append(bool(server.session_reused))
            while data := await server.receive_some(100):
                await server.send_all(data.upper())
        except trio.BrokenResourceError:
            pass


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def server_ctx(ca: trustme.CA, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    return ctx


async def roundtrip(stream: trio.abc.Stream) -> bytes:
    await stream.send_all(b"ping")
    return bytes(await stream.receive_some(100))


async def test_tls_connect_sni_verify_and_resumption(ca: trustme.CA) -> None:
    async with trio.open_nursery() as nursery:
        peer = TLSPeer(nursery, server_ctx(ca, "api.example.com"))
        pool = Pool(peer)
        up = Upstream("default/api:443", protocol="HTTPS", host_override="api.example.com", tls_verify=True,
                      tls_ca_pem=ca.cert_pem.bytes().decode())
        tls = client_tls(up)
        first = await pool.connect(KEY, 5.0, tls, up.name)
        assert await roundtrip(first.stream) == b"PING"
        second = await pool.connect(KEY, 5.0, tls, up.name)  # before `first` was released: full
        first.requests = 1  # (as after its first exchange: the session is remembered once)
        await pool.release(first, 10, 100)
        third = await pool.connect(KEY, 5.0, tls, up.name)
        assert await roundtrip(third.stream) == b"PING"
        assert peer.sni == ["api.example.com"] * 3
        assert peer.reused == [False, False, True]
        # Pooled per endpoint AND TLS parameters: a cleartext take never gets it.
        assert await pool.take(KEY, 60.0) is None
        assert await pool.take(KEY, 60.0, tls) is first
        for conn in (first, second, third):
            await trio.aclose_forcefully(conn.stream)
        nursery.cancel_scope.cancel()


async def test_tls_verification_failures_name_the_upstream(ca: trustme.CA) -> None:
    other = trustme.CA()
    async with trio.open_nursery() as nursery:
        pool = Pool(TLSPeer(nursery, server_ctx(ca, "api.example.com")))
        wrong_ca = Upstream("default/api:443", protocol="HTTPS", host_override="api.example.com",
                            tls_verify=True, tls_ca_pem=other.cert_pem.bytes().decode())
        with pytest.raises(UpstreamFailed, match=r"upstream default/api:443: TLS handshake .*verify failed"):
            await pool.connect(KEY, 5.0, client_tls(wrong_ca), wrong_ca.name)
        wrong_name = Upstream("default/api:443", protocol="HTTPS", tls_server_name="other.example",
                              tls_verify=True, tls_ca_pem=ca.cert_pem.bytes().decode())
        with pytest.raises(UpstreamFailed, match=r"other\.example"):
            await pool.connect(KEY, 5.0, client_tls(wrong_name), wrong_name.name)
        bad_ca = Upstream("u", protocol="HTTPS", tls_verify=True, tls_ca_pem="-----BEGIN CERTIFICATE-----\nx")
        with pytest.raises(UpstreamFailed, match="bad TLS CA"):
            await pool.connect(KEY, 5.0, client_tls(bad_ca), bad_ca.name)
        nursery.cancel_scope.cancel()


async def test_tls_without_verification_accepts_self_signed(ca: trustme.CA) -> None:
    async with trio.open_nursery() as nursery:
        peer = TLSPeer(nursery, server_ctx(ca, "whatever.internal"))
        pool = Pool(peer)
        up = Upstream("u", protocol="HTTPS", external_name="api.example.com")
        conn = await pool.connect(KEY, 5.0, client_tls(up), up.name)
        assert await roundtrip(conn.stream) == b"PING"
        assert peer.sni == ["api.example.com"]
        await trio.aclose_forcefully(conn.stream)
        nursery.cancel_scope.cancel()


async def test_tls_handshake_timeout(ca: trustme.CA, autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        pool = Pool(TLSPeer(nursery, server_ctx(ca, "x"), answer=False))
        up = Upstream("default/slow:443", protocol="HTTPS")
        with pytest.raises(UpstreamTimeout, match=r"default/slow:443: TLS handshake .* timed out after 2s"):
            await pool.connect(KEY, 2.0, client_tls(up), up.name)


# ---- HTTP/2 upstream client ------------------------------------------------------------------

Handler = Callable[["H2Peer", int, list[tuple[bytes, bytes]], bytes], Awaitable[None]]


class H2Peer:
    """An HTTP/2 server on a memory stream; ``handler`` answers each complete request."""

    def __init__(self, nursery: trio.Nursery, handler: Handler, *, window: int = 65535) -> None:
        self.nursery = nursery
        self.handler = handler
        self.window = window
        self.connections = 0
        self.servers: list[tuple[h2.connection.H2Connection, trio.abc.Stream]] = []
        self.received_chunks: list[int] = []
        self.send_lock = trio.Lock()

    async def __call__(self, host: str, port: int, timeout: float) -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        self.connections += 1
        self.nursery.start_soon(self._serve, theirs)
        return ours

    async def _serve(self, stream: trio.abc.Stream) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.window}
        )
        conn.initiate_connection()
        self.servers.append((conn, stream))
        await self.flush(conn, stream)
        heads: dict[int, list[tuple[bytes, bytes]]] = {}
        bodies: dict[int, bytearray] = {}
        try:
            while data := await stream.receive_some(65536):
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        heads[ev.stream_id] = list(ev.headers or [])
                        bodies[ev.stream_id] = bytearray()
                    elif isinstance(ev, h2.events.DataReceived):
                        self.received_chunks.append(len(ev.data or b""))
                        bodies[ev.stream_id] += ev.data or b""
                        conn.acknowledge_received_data(ev.flow_controlled_length or 0, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        sid = ev.stream_id
                        body = bytes(bodies.pop(sid))
                        self.nursery.start_soon(self.handler, self, sid, heads.pop(sid), body)
                await self.flush(conn, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except h2.exceptions.ProtocolError:  # after our GOAWAY: hang up
            await trio.aclose_forcefully(stream)

    async def flush(self, conn: h2.connection.H2Connection, stream: trio.abc.Stream) -> None:
        async with self.send_lock:
            out = conn.data_to_send()
            if out:
                await stream.send_all(out)

    async def respond(self, sid: int, body: bytes, *, conn_index: int = -1) -> None:
        conn, stream = self.servers[conn_index]
        conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        conn.send_data(sid, body)
        conn.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
        await self.flush(conn, stream)


def h2_upstream(**kw: Any) -> Upstream:
    return Upstream("default/grpc:50051", protocol="GRPC", **kw)


REQ = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"grpc.test"), (b":path", b"/S/M")]


async def test_h2_streams_multiplex_and_complete_out_of_order() -> None:
    gates = {1: trio.Event(), 3: trio.Event()}

    async def handler(peer: H2Peer, sid: int, head: list[tuple[bytes, bytes]], body: bytes) -> None:
        await gates[sid].wait()
        await peer.respond(sid, b"answer-%d:" % sid + body)

    async with trio.open_nursery() as nursery:
        peer = H2Peer(nursery, handler)
        pool = Pool(peer)
        h2pool: H2Pool = pool.h2
        up = h2_upstream()
        results: dict[int, tuple[int, bytes, list[tuple[bytes, bytes]]]] = {}

        async def call(body: bytes) -> None:
            conn, _ = await h2pool.get(KEY, None, up, pool.connect)
            stream = await conn.open_stream(REQ, end_stream=False)
            await stream.send_data(body, end_stream=True)
            status, _ = await stream.response_head()
            data = b""
            while chunk := await stream.receive_data():
                data += chunk
            results[stream.id] = (status, data, stream.trailers)
            await stream.close()

        async with trio.open_nursery() as calls:
            calls.start_soon(call, b"one")
            await trio.testing.wait_all_tasks_blocked()
            calls.start_soon(call, b"two")
            await trio.testing.wait_all_tasks_blocked()
            gates[3].set()  # the second request is answered first
            await trio.testing.wait_all_tasks_blocked()
            assert 3 in results and 1 not in results
            gates[1].set()
        assert results[1] == (200, b"answer-1:one", [(b"grpc-status", b"0")])
        assert results[3] == (200, b"answer-3:two", [(b"grpc-status", b"0")])
        assert peer.connections == 1
        await pool.close()
        nursery.cancel_scope.cancel()


async def test_h2_request_body_respects_the_upstream_window() -> None:
    async def handler(peer: H2Peer, sid: int, head: list[tuple[bytes, bytes]], body: bytes) -> None:
        await peer.respond(sid, b"%d" % len(body))

    async with trio.open_nursery() as nursery:
        peer = H2Peer(nursery, handler, window=1000)
        pool = Pool(peer)
        conn, _ = await pool.h2.get(KEY, None, h2_upstream(), pool.connect)
        stream = await conn.open_stream(REQ, end_stream=False)
        await stream.send_data(b"z" * 10_000, end_stream=True)
        await stream.response_head()
        assert await stream.receive_data() == b"10000"
        assert max(peer.received_chunks) <= 1000  # never more than the peer's window at once
        assert sum(peer.received_chunks) == 10_000
        await pool.close()
        nursery.cancel_scope.cancel()


async def test_h2_reset_fails_one_stream_only() -> None:
    async def handler(peer: H2Peer, sid: int, head: list[tuple[bytes, bytes]], body: bytes) -> None:
        conn, stream = peer.servers[-1]
        if body == b"bad":
            conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            await peer.flush(conn, stream)
        else:
            await peer.respond(sid, b"ok")

    async with trio.open_nursery() as nursery:
        pool = Pool(H2Peer(nursery, handler))
        conn, _ = await pool.h2.get(KEY, None, h2_upstream(), pool.connect)
        bad = await conn.open_stream(REQ, end_stream=False)
        good = await conn.open_stream(REQ, end_stream=False)
        await bad.send_data(b"bad", end_stream=True)
        await good.send_data(b"good", end_stream=True)
        with pytest.raises(ConnectionLost, match="reset"):
            await bad.response_head()
        assert (await good.response_head())[0] == 200
        assert await good.receive_data() == b"ok"
        assert not conn.closed
        await pool.close()
        nursery.cancel_scope.cancel()


async def test_h2_goaway_makes_a_new_connection() -> None:
    async def handler(peer: H2Peer, sid: int, head: list[tuple[bytes, bytes]], body: bytes) -> None:
        await peer.respond(sid, b"ok")

    async with trio.open_nursery() as nursery:
        peer = H2Peer(nursery, handler)
        pool = Pool(peer)
        up = h2_upstream()
        conn, reused = await pool.h2.get(KEY, None, up, pool.connect)
        assert not reused
        stream = await conn.open_stream(REQ, end_stream=True)
        await stream.response_head()
        await stream.close()
        server, sstream = peer.servers[0]
        server.close_connection(last_stream_id=1)
        await peer.flush(server, sstream)
        again, reused = await pool.h2.get(KEY, None, up, pool.connect)
        assert again is conn and reused  # GOAWAY not read yet: nothing reads an idle connection
        lost = await again.open_stream(REQ, end_stream=True)
        with pytest.raises(ConnectionLost) as info:
            await lost.response_head()
        assert info.value.retryable  # stream 3 > last_stream_id 1: never processed
        await lost.close()
        fresh, reused = await pool.h2.get(KEY, None, up, pool.connect)
        assert fresh is not conn and not reused
        assert peer.connections == 2
        await pool.close()
        nursery.cancel_scope.cancel()


# ---- translator -----------------------------------------------------------------------------


def test_proxy_ssl_annotations_parse() -> None:
    parsed, findings = parse_annotations({
        PREFIX + "proxy-ssl-verify": "on",
        PREFIX + "proxy-ssl-secret": "certs/backend-ca",
        PREFIX + "proxy-ssl-name": "API.Example.com",
        PREFIX + "proxy-ssl-server-name": "off",
    })
    assert findings == []
    assert parsed.upstream.tls_verify is True
    assert parsed.upstream.tls_secret == "certs/backend-ca"
    assert parsed.upstream.tls_server_name == "api.example.com"
    assert parsed.upstream.tls_sni is False
    _, findings = parse_annotations(
        {PREFIX + "proxy-ssl-verify": "maybe", PREFIX + "proxy-ssl-secret": "a/b/c"}
    )
    assert [f.key.removeprefix(PREFIX) for f in findings] == ["proxy-ssl-secret", "proxy-ssl-verify"]


def test_old_upstream_names_are_unchanged() -> None:
    # The hash of settings without the new fields is what it was before they existed.
    assert settings_suffix(UpstreamSettings(protocol="HTTPS", host_override="a.example")) == "#52b69388"
    assert settings_suffix(UpstreamSettings(protocol="HTTPS", tls_verify=True)) != settings_suffix(
        UpstreamSettings(protocol="HTTPS")
    )


def _objects(secret_data: dict[str, str] | None, ref: str = "default/backend-ca") -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api", "namespace": "default"},
         "spec": {"type": "ExternalName", "externalName": "api.example.com", "ports": [{"port": 443}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
         "metadata": {"name": "web", "namespace": "default", "annotations": {
             PREFIX + "backend-protocol": "HTTPS", PREFIX + "proxy-ssl-verify": "on",
             PREFIX + "proxy-ssl-secret": ref}},
         "spec": {"rules": [{"host": "a.test", "http": {"paths": [{
             "path": "/", "pathType": "Prefix",
             "backend": {"service": {"name": "api", "port": {"number": 443}}}}]}}]}},
    ]
    if secret_data is not None:
        objs.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": secret_data,
                     "metadata": {"name": "backend-ca", "namespace": "default"}})
    return objs


def test_proxy_ssl_secret_fills_the_ca(ca: trustme.CA) -> None:
    pem = ca.cert_pem.bytes()
    result = translate(_objects({"ca.crt": base64.b64encode(pem).decode()}))
    (upstream,) = result.snapshot.upstreams
    assert upstream.tls_verify and upstream.tls_ca_pem == pem.decode()
    assert upstream.name.startswith("default/api:443#")
    assert not [d for d in result.diagnostics if d.severity == "error"]


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (None, "Secret default/backend-ca not found"),
        ({"tls.crt": "eA=="}, "missing, or not base64 of PEM"),
        ({"ca.crt": base64.b64encode(BAD_PEM).decode()},
         "not valid PEM certificates"),
    ],
)
def test_proxy_ssl_secret_problems_are_diagnostics(data: dict[str, str] | None, needle: str) -> None:
    result = translate(_objects(data))
    (upstream,) = result.snapshot.upstreams
    assert upstream.tls_ca_pem is None and upstream.tls_verify
    assert any(needle in d.message for d in result.diagnostics), result.diagnostics


async def test_verification_without_a_name_checks_the_endpoint_ip(ca: trustme.CA) -> None:
    async with trio.open_nursery() as nursery:
        pool = Pool(TLSPeer(nursery, server_ctx(ca, "10.0.0.7")))
        up = Upstream("u", protocol="HTTPS", tls_verify=True, tls_ca_pem=ca.cert_pem.bytes().decode())
        conn = await pool.connect(KEY, 5.0, client_tls(up), up.name)  # KEY's address is 10.0.0.7
        assert await roundtrip(conn.stream) == b"PING"
        await trio.aclose_forcefully(conn.stream)
        with pytest.raises(UpstreamFailed, match=r"10\.0\.0\.8"):
            await pool.connect(("10.0.0.8", 443), 5.0, client_tls(up), up.name)
        nursery.cancel_scope.cancel()


def test_a_verify_depth_that_cannot_be_checked_fails_closed() -> None:
    """proxy-ssl-verify-depth counts the chain OpenSSL verified; a TLS object that cannot show
    it refuses the connection (never taken as met), and without verification nothing is checked."""
    contexts = TLSContexts()
    with pytest.raises(UpstreamFailed, match="proxy-ssl-verify-depth cannot be checked"):
        contexts.check_chain(object(), ("10.0.0.1", 443), ClientTLS(verify=True))
    contexts.check_chain(object(), ("10.0.0.1", 443), ClientTLS(verify=False))

    class Resumed:  # a resumed session verified nothing: it was checked when it was made
        def get_verified_chain(self) -> list[object]:
            return []

    contexts.check_chain(Resumed(), ("10.0.0.1", 443), ClientTLS(verify=True))

    class Deep:
        def get_verified_chain(self) -> list[object]:
            return [object()] * 5  # leaf, 3 intermediates, root

    with pytest.raises(UpstreamFailed, match="3 intermediate CA"):
        contexts.check_chain(Deep(), ("10.0.0.1", 443), ClientTLS(verify=True, verify_depth=2))
    contexts.check_chain(Deep(), ("10.0.0.1", 443), ClientTLS(verify=True, verify_depth=3))
