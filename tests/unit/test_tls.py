"""TLS pieces in-process: the pyOpenSSL TLSStream against trio's own (stdlib) SSLStream,
the certificate store, the ClientHello SNI parser, redirect/HSTS helpers and the
translator's certificate checks."""

from __future__ import annotations

import datetime
import logging
import ssl

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509

from fastingress.snapshot.schema import Certificate, GlobalSettings, RoutePolicy, Snapshot, VirtualHost
from fastingress.translate import TranslateOptions, translate
from fastingress.translate.model import ObjRef, Sink
from fastingress.translate.tls import inspect_pem
from workers.certs import DEFAULT_SUBJECT, CertCache, CertificateUnusable, make_context
from workers.passthrough import NEED_MORE, NOT_TLS, Hello, parse_client_hello_sni
from workers.tls import TLSStream
from workers.tlspolicy import add_hsts, hsts_value, redirect_location, wants_https

# ---- helpers ---------------------------------------------------------------------------


def _cert(leaf: trustme.LeafCert, name: str, hosts: tuple[str, ...] = ()) -> Certificate:
    chain = "".join(b.bytes().decode() for b in leaf.cert_chain_pems)
    return Certificate(name=name, cert_pem=chain, key_pem=leaf.private_key_pem.bytes().decode(), hosts=hosts)


def _client_ctx(ca: trustme.CA | None, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ca.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cache(ca: trustme.CA) -> CertCache:
    cache = CertCache()
    cache.install(
        Snapshot(
            virtual_hosts=(
                VirtualHost("app.test", tls_secret="default/app"),
                VirtualHost("*.wild.test", tls_secret="default/wild"),
            ),
            certificates=(
                _cert(ca.issue_cert("app.test"), "default/app"),
                _cert(ca.issue_cert("*.wild.test"), "default/wild"),
                _cert(ca.issue_cert("san-only.test"), "default/san", hosts=("san-only.test",)),
            ),
        )
    )
    return cache


async def _pair(
    cache: CertCache, sni: str | None, client_ctx: ssl.SSLContext
) -> tuple[TLSStream, trio.SSLStream[trio.abc.Stream]]:
    server_raw, client_raw = trio.testing.memory_stream_pair()
    assert cache.current is not None
    server = TLSStream(server_raw, cache.current.base)
    client: trio.SSLStream[trio.abc.Stream] = trio.SSLStream(client_raw, client_ctx, server_hostname=sni)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return server, client


# ---- TLSStream -------------------------------------------------------------------------


async def test_handshake_sni_alpn_and_data_both_ways(cache: CertCache, ca: trustme.CA) -> None:
    server, client = await _pair(cache, "app.test", _client_ctx(ca, ["h2", "http/1.1"]))
    assert server.selected_alpn == "h2"
    assert server.tls_version == "TLSv1.3"
    assert server.server_name == "app.test"
    big = bytes(range(256)) * 4096  # 1 MiB: many records, several flushes
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.send_all, big)
        got = bytearray()
        while len(got) < len(big):
            got += await client.receive_some(65536)
    assert bytes(got) == big
    await client.send_all(b"ping")
    assert await server.receive_some(10) == b"ping"
    await client.aclose()  # sends close_notify
    assert await server.receive_some(10) == b""
    await server.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await server.receive_some(10)


async def test_alpn_http11_and_none(cache: CertCache, ca: trustme.CA) -> None:
    server, _ = await _pair(cache, "app.test", _client_ctx(ca, ["http/1.1"]))
    assert server.selected_alpn == "http/1.1"
    server, _ = await _pair(cache, "app.test", _client_ctx(ca))
    assert server.selected_alpn is None


async def test_sni_choice(cache: CertCache, ca: trustme.CA) -> None:
    def names(client: trio.SSLStream[trio.abc.Stream]) -> list[str]:
        der = client.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return [cert.subject.rfc4514_string()]
        return [str(n) for n in san.get_values_for_type(x509.DNSName)]

    assert names((await _pair(cache, "app.test", _client_ctx(ca)))[1]) == ["app.test"]
    assert names((await _pair(cache, "APP.test", _client_ctx(ca)))[1]) == ["app.test"]
    assert names((await _pair(cache, "x.wild.test", _client_ctx(ca)))[1]) == ["*.wild.test"]
    assert names((await _pair(cache, "san-only.test", _client_ctx(ca)))[1]) == ["san-only.test"]
    for sni in ("y.x.wild.test", "wild.test", "nope.test", None):
        got = names((await _pair(cache, sni, _client_ctx(None)))[1])
        assert DEFAULT_SUBJECT in got[0], sni


async def test_peer_errors_are_broken_resource(cache: CertCache) -> None:
    server_raw, client_raw = trio.testing.memory_stream_pair()
    assert cache.current is not None
    server = TLSStream(server_raw, cache.current.base)
    await client_raw.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP on the TLS port
    with pytest.raises(trio.BrokenResourceError):
        await server.do_handshake()
    server_raw, client_raw = trio.testing.memory_stream_pair()
    server = TLSStream(server_raw, cache.current.base)
    await client_raw.aclose()  # EOF before any handshake
    with pytest.raises(trio.BrokenResourceError):
        await server.receive_some(10)


async def test_ragged_eof_after_handshake_reads_as_eof(cache: CertCache, ca: trustme.CA) -> None:
    server, client = await _pair(cache, "app.test", _client_ctx(ca))
    await client.send_all(b"abc")
    await client.transport_stream.aclose()  # TCP gone, no close_notify
    assert await server.receive_some(10) == b"abc"
    assert await server.receive_some(10) == b""


async def test_concurrent_send_and_receive(cache: CertCache, ca: trustme.CA) -> None:
    server, client = await _pair(cache, "app.test", _client_ctx(ca))
    chunk = b"z" * 100_000

    async def echo() -> None:
        total = 0
        while total < 10 * len(chunk):
            data = await server.receive_some(65536)
            total += len(data)
            await server.send_all(data)

    async def pump() -> None:
        for _ in range(10):
            await client.send_all(chunk)

    got = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        nursery.start_soon(pump)
        while got < 10 * len(chunk):
            got += len(await client.receive_some(65536))
    assert got == 10 * len(chunk)


async def test_tls12_and_resumption(cache: CertCache, ca: trustme.CA) -> None:
    ctx = _client_ctx(ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server, client = await _pair(cache, "app.test", ctx)
    assert server.tls_version == "TLSv1.2"
    session = client._ssl_object.session  # stdlib: the session to resume
    server_raw, client_raw = trio.testing.memory_stream_pair()
    assert cache.current is not None
    server2 = TLSStream(server_raw, cache.current.base)
    client2 = trio.SSLStream(client_raw, ctx, server_hostname="app.test")
    client2._ssl_object.session = session
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server2.do_handshake)
        nursery.start_soon(client2.do_handshake)
    assert server2.resumed
    assert client2._ssl_object.session_reused


# ---- certificate store -----------------------------------------------------------------


def test_bad_certificates_are_logged_by_name_and_skipped(
    ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    good = _cert(ca.issue_cert("good.test"), "ns/good")
    other = ca.issue_cert("bad.test")
    mismatched = Certificate("ns/mismatch", good.cert_pem, other.private_key_pem.bytes().decode())
    junk = Certificate("ns/junk", "-----BEGIN CERTIFICATE-----\nSECRETDATA\n-----END CERTIFICATE-----\n", "x")
    cache = CertCache()
    with caplog.at_level(logging.ERROR, logger="fastingress.worker"):
        store = cache.install(
            Snapshot(
                virtual_hosts=(
                    VirtualHost("good.test", tls_secret="ns/good"),
                    VirtualHost("mismatch.test", tls_secret="ns/mismatch"),
                    VirtualHost("junk.test", tls_secret="ns/junk"),
                ),
                certificates=(good, mismatched, junk),
            )
        )
    assert cache.unusable == {"ns/mismatch", "ns/junk"}
    assert store.pick("good.test") is not store.default
    assert store.pick("mismatch.test") is store.default
    text = caplog.text
    assert "certificate ns/mismatch: tls.key does not match" in text
    assert "certificate ns/junk" in text
    assert "SECRETDATA" not in text


def test_contexts_are_reused_until_the_pem_changes(ca: trustme.CA) -> None:
    first = _cert(ca.issue_cert("a.test"), "ns/a")
    snap = Snapshot(virtual_hosts=(VirtualHost("a.test", tls_secret="ns/a"),), certificates=(first,))
    cache = CertCache()
    one = cache.install(snap)
    two = cache.install(snap)
    assert one.pick("a.test") is two.pick("a.test")
    assert one.base is two.base  # the session cache survives snapshot changes
    changed = Snapshot(
        virtual_hosts=snap.virtual_hosts, certificates=(_cert(ca.issue_cert("a.test"), "ns/a"),)
    )
    three = cache.install(changed)
    assert three.pick("a.test") is not one.pick("a.test")
    assert three.base is one.base


def test_default_certificate_setting(ca: trustme.CA) -> None:
    cert = _cert(ca.issue_cert("fallback.test"), "ns/fallback")
    cache = CertCache()
    store = cache.install(
        Snapshot(certificates=(cert,), settings=GlobalSettings(default_certificate="ns/fallback"))
    )
    assert store.pick("whatever.test") is store.default
    missing = cache.install(Snapshot(settings=GlobalSettings(default_certificate="ns/missing")))
    assert missing.default is not None


def test_make_context_refuses_bad_pairs(ca: trustme.CA) -> None:
    leaf = ca.issue_cert("x.test")
    with pytest.raises(CertificateUnusable, match=r"tls\.key holds no readable"):
        make_context(leaf.cert_chain_pems[0].bytes().decode(), "nope", http2=True)
    with pytest.raises(CertificateUnusable, match=r"tls\.crt holds no readable"):
        make_context("nope", leaf.private_key_pem.bytes().decode(), http2=True)


def test_passthrough_names(ca: trustme.CA) -> None:
    snap = Snapshot(
        virtual_hosts=(
            VirtualHost("pass.test", passthrough_upstream="ns/pass:443"),
            VirtualHost("*.pw.test", passthrough_upstream="ns/pw:443"),
        ),
        settings=GlobalSettings(ssl_passthrough=True),
    )
    store = CertCache().install(snap)
    assert store.passthrough_upstream("pass.test") == "ns/pass:443"
    assert store.passthrough_upstream("a.pw.test") == "ns/pw:443"
    assert store.passthrough_upstream("other.test") is None
    off = CertCache().install(msgspec_replace_settings(snap, GlobalSettings(ssl_passthrough=False)))
    assert off.passthrough == {}


def msgspec_replace_settings(snap: Snapshot, settings: GlobalSettings) -> Snapshot:
    return Snapshot(virtual_hosts=snap.virtual_hosts, certificates=snap.certificates, settings=settings)


# ---- ClientHello SNI parser ---------------------------------------------------------------


def _client_hello(server_name: str | None) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _refragment(hello: bytes, size: int) -> bytes:
    """The same handshake message split into TLS records of ``size`` bytes."""
    body = hello[5:]
    out = b""
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
    return out


def test_client_hello_sni() -> None:
    hello = _client_hello("Pass.Test")
    assert parse_client_hello_sni(hello) == Hello("pass.test")
    assert parse_client_hello_sni(_client_hello(None)) == Hello(None)
    for cut in (0, 1, 4, 5, 9, len(hello) // 2, len(hello) - 1):
        assert parse_client_hello_sni(hello[:cut]) is NEED_MORE, cut
    fragmented = _refragment(hello, 40)  # 40-byte records: the SNI spans several
    assert parse_client_hello_sni(fragmented) == Hello("pass.test")
    for cut in range(0, len(fragmented), 7):  # byte stream arriving in pieces
        assert parse_client_hello_sni(fragmented[:cut]) is NEED_MORE
    assert parse_client_hello_sni(hello + b"extra bytes after") == Hello("pass.test")


def test_client_hello_rejects_what_is_not_one() -> None:
    assert parse_client_hello_sni(b"GET / HTTP/1.1\r\n\r\n") is NOT_TLS
    assert parse_client_hello_sni(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") is NOT_TLS  # ServerHello
    assert parse_client_hello_sni(b"\x17\x03\x03\x00\x10" + b"\0" * 16) is NOT_TLS  # application data
    assert parse_client_hello_sni(b"\x16\x03\x01\xff\xff") is NOT_TLS  # record too long
    hello = bytearray(_client_hello("pass.test"))
    hello[6:9] = b"\x00\x00\x30"  # the handshake claims a 48-byte body: the walk overruns it
    assert parse_client_hello_sni(bytes(hello)) is NOT_TLS


# ---- redirect and HSTS helpers -----------------------------------------------------------


def test_redirect_location() -> None:
    assert redirect_location(b"App.Test:8080", b"/a?b=c", "/a", 443) == b"https://app.test/a?b=c"
    assert redirect_location(b"app.test", b"/a", "/a", 8443) == b"https://app.test:8443/a"
    assert redirect_location(b"[::1]:80", b"/", "/", 443) == b"https://[::1]/"
    assert redirect_location(b"app.test", b"/.well-known/acme-challenge/t", "/.well-known/acme-challenge/t",
                             443) is None
    assert redirect_location(b"app.test", b"/", "/", 0) is None  # no HTTPS listener
    for bad in (b"", b"evil.test/path", b"a b", b"x@y.test", b"a..b"):
        assert redirect_location(bad, b"/", "/", 443) is None, bad
    assert wants_https(RoutePolicy(ssl_redirect=True))
    assert wants_https(RoutePolicy(force_ssl_redirect=True))
    assert not wants_https(RoutePolicy())


def test_hsts() -> None:
    assert hsts_value(GlobalSettings()) is None
    assert hsts_value(GlobalSettings(hsts=True, hsts_max_age=10)) == b"max-age=10; includeSubDomains"
    assert hsts_value(GlobalSettings(hsts=True, hsts_include_subdomains=False, hsts_preload=True)) == (
        b"max-age=31536000; preload"
    )
    headers = [(b"strict-transport-security", b"max-age=1")]
    add_hsts(headers, b"max-age=2")
    assert headers == [(b"strict-transport-security", b"max-age=1")]  # the upstream's own wins


# ---- translator ----------------------------------------------------------------------------


def test_inspect_pem(ca: trustme.CA) -> None:
    ref = ObjRef("Secret", "ns", "s")
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    leaf = ca.issue_cert("a.test", "*.b.test", not_after=soon)
    crt, key = leaf.cert_chain_pems[0].bytes().decode(), leaf.private_key_pem.bytes().decode()
    sink = Sink()
    got = inspect_pem(crt, key, ref, sink)
    assert got is not None
    assert got[0] == ("*.b.test", "a.test")
    assert got[1].endswith("Z")
    assert sink.sorted() == ()
    later = soon + datetime.timedelta(days=1)
    inspect_pem(crt, key, ref, sink, now=later)
    assert [d.message for d in sink.sorted()] == [f"certificate expired at {got[1]}; still served"]
    sink = Sink()
    other = ca.issue_cert("c.test").private_key_pem.bytes().decode()
    assert inspect_pem(crt, other, ref, sink) is None
    assert "does not match" in sink.sorted()[0].message
    cn_only = ca.issue_cert(common_name="cn.test")
    sink = Sink()
    cn_crt = cn_only.cert_chain_pems[0].bytes().decode()
    no_san = inspect_pem(cn_crt, cn_only.private_key_pem.bytes().decode(), ref, sink)
    assert no_san is not None


def _objects(ca: trustme.CA, annotations: dict[str, str], *, tls: bool = True) -> list[dict[str, object]]:
    leaf = ca.issue_cert("app.test")
    ing: dict[str, object] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "default", "annotations": annotations},
        "spec": {
            "rules": [
                {
                    "host": "app.test",
                    "http": {
                        "paths": [
                            {"path": "/", "pathType": "Prefix",
                             "backend": {"service": {"name": "web", "port": {"number": 443}}}}
                        ]
                    },
                }
            ],
            **({"tls": [{"hosts": ["app.test"], "secretName": "app-tls"}]} if tls else {}),
        },
    }
    return [
        ing,
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"ports": [{"port": 443}]}},
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
         "metadata": {"name": "app-tls", "namespace": "default"},
         "stringData": {"tls.crt": leaf.cert_chain_pems[0].bytes().decode(),
                        "tls.key": leaf.private_key_pem.bytes().decode()}},
    ]


def test_translate_tls_annotations(ca: trustme.CA) -> None:
    prefix = "nginx.ingress.kubernetes.io/"
    snap = translate(_objects(ca, {})).snapshot
    assert snap.certificates[0].hosts == ("app.test",)
    assert snap.virtual_hosts[0].routes[0].policy.ssl_redirect
    off = translate(_objects(ca, {prefix + "ssl-redirect": "false"})).snapshot
    assert not off.virtual_hosts[0].routes[0].policy.ssl_redirect
    forced = translate(_objects(ca, {prefix + "force-ssl-redirect": "true"}, tls=False)).snapshot
    policy = forced.virtual_hosts[0].routes[0].policy
    assert (policy.ssl_redirect, policy.force_ssl_redirect) == (False, True)
    passthrough = {prefix + "ssl-passthrough": "true"}
    ignored = translate(_objects(ca, passthrough))
    assert ignored.snapshot.virtual_hosts[0].passthrough_upstream is None
    assert any("--enable-ssl-passthrough" in d.message for d in ignored.diagnostics)
    options = TranslateOptions(settings=GlobalSettings(ssl_passthrough=True))
    honoured = translate(_objects(ca, passthrough), options).snapshot
    assert honoured.virtual_hosts[0].passthrough_upstream == "default/web:443"


def test_translate_default_certificate(ca: trustme.CA) -> None:
    objects = _objects(ca, {}, tls=False)
    options = TranslateOptions(settings=GlobalSettings(default_certificate="default/app-tls"))
    found = translate(objects, options)
    assert found.snapshot.settings.default_certificate == "default/app-tls"
    assert [c.name for c in found.snapshot.certificates] == ["default/app-tls"]
    options = TranslateOptions(settings=GlobalSettings(default_certificate="default/nope"))
    missing = translate(objects, options)
    assert missing.snapshot.settings.default_certificate is None
    assert any("--default-ssl-certificate" in d.message for d in missing.diagnostics)


# ---- the HTTPS accept path -----------------------------------------------------------------


async def test_silent_client_times_out_in_the_handshake(autojump_clock: trio.testing.MockClock) -> None:
    from workers.pool import Pool
    from workers.server import _serve_tls, tcp_connect
    from workers.state import Worker

    worker = Worker(Pool(tcp_connect))
    certs = CertCache()
    certs.install(Snapshot())
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
        t0 = trio.current_time()
        await _serve_tls(certs, worker, server)  # the client never says a word
        assert trio.current_time() - t0 >= worker.settings.client_header_timeout
        assert worker.metrics.tls_errors == 1
        assert await client.receive_some(10) == b""  # we closed it
        await client.aclose()
