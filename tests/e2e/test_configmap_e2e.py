"""The controller ConfigMap (``--configmap``) through real sockets: a real ``fastingress
standalone`` process reading the ConfigMap from its manifests, real upstreams on 127.0.0.1,
raw sockets, httpx, ssl and h2 as clients.  The data-path keys run on both HTTP/1.1 paths (the
event-driven core and the h11 reference).  Every request comes from 127.0.0.1; other client
addresses reach fastingress the way they do in production, through a PROXY protocol header or
a trusted proxy's X-Forwarded-For.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
import trustme
import yaml

from tests.support import manifests as m
from tests.support.h2client import H2Client
from tests.support.process import Fastingress, run_fastingress, wait_for
from tests.support.tls import client_context, request_on, tls_secret, with_tls
from tests.support.upstream import EchoServer
from workers.proxyproto import v1_header, v2_header

CODECS = ("llhttp", "h11")
CONFIGMAP = "ingress-nginx/controller"


def configmap_yaml(data: dict[str, str], name: str = "controller") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ingress-nginx"},
            "data": data,
        }
    )


def echoed(response_json: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in response_json["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


class Site:
    """app.test (and tls.test, with a certificate) in front of one echo upstream, with a
    ConfigMap file that tests rewrite."""

    def __init__(self, tmp_path: Path, up: EchoServer, ca: trustme.CA | None = None) -> None:
        self.dir = tmp_path / "manifests"
        self.dir.mkdir()
        docs = [
            m.service("app"),
            m.endpoint_slice("app", [up.port]),
            m.ingress("app", [("app.test", "/", "Prefix", "app")]),
        ]
        if ca is not None:
            leaf = ca.issue_cert("tls.test")
            docs.append(tls_secret("tls-cert", leaf))
            docs.append(
                with_tls(m.ingress("tls", [("tls.test", "/", "Prefix", "app")]), (["tls.test"], "tls-cert"))
            )
        m.write(self.dir / "site.yaml", *docs)
        self.configmap = self.dir / "configmap.yaml"

    def set(self, data: dict[str, str], *extra: str) -> None:
        m.write(self.configmap, configmap_yaml(data), *extra)


_NONCE = iter(range(1, 1_000_000))


def reconfigure(fi: Fastingress, site: Site, data: dict[str, str], *extra: str) -> None:
    """Rewrite the ConfigMap and wait until every worker serves the resulting generation (a
    changing ``http2-max-concurrent-streams`` makes every version a new snapshot)."""
    before = fi.generation()
    site.set({"http2-max-concurrent-streams": str(100 + next(_NONCE)), **data}, *extra)
    wait_for(lambda: fi.generation() > before, what="a new generation")
    fi.wait_generation(fi.generation())


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def up() -> Iterator[EchoServer]:
    with EchoServer("s0") as server:
        yield server


class Shared:
    """One fastingress process per codec for the tests of this module (each one sets the
    ConfigMap it needs first): a process start costs seconds, a new ConfigMap milliseconds."""

    def __init__(self, fi: Fastingress, site: Site, up: EchoServer, codec: str) -> None:
        self.fi, self.site, self.up, self.codec = fi, site, up, codec

    def configure(self, data: dict[str, str], *extra: str) -> Fastingress:
        reconfigure(self.fi, self.site, data, *extra)
        self.up.requests.clear()
        return self.fi


@pytest.fixture(scope="module", params=CODECS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA
) -> Iterator[Shared]:
    codec: str = request.param
    tmp_path = tmp_path_factory.mktemp(f"configmap-{codec}")
    with EchoServer("s0") as up:
        site = Site(tmp_path, up, ca)
        site.set({})
        with start(tmp_path, site, codec) as fi:
            yield Shared(fi, site, up, codec)


def start(tmp_path: Path, site: Site, codec: str, *extra: str) -> Any:
    return run_fastingress(
        tmp_path,
        manifests=[site.dir],
        workers=1,
        extra=("--http1-codec", codec, "--configmap", CONFIGMAP, *extra),
    )


# -- raw HTTP/1.1 over a socket (h11 as the client's parser) -------------------------------------


def exchange(
    sock: socket.socket,
    client: h11.Connection,
    host: str,
    path: str = "/",
    headers: tuple[tuple[str, str], ...] = (),
) -> tuple[h11.Response, bytes]:
    sock.sendall(client.send(h11.Request(method="GET", target=path, headers=[("Host", host), *headers])))
    sock.sendall(client.send(h11.EndOfMessage()))
    response: h11.Response | None = None
    body = b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(sock.recv(65536))
            continue
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response, body
        elif isinstance(event, h11.ConnectionClosed):
            pytest.fail("connection closed before the response ended")


def header(response: h11.Response, name: bytes) -> bytes | None:
    for n, v in response.headers:
        if n == name:
            return bytes(v)
    return None


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# -- PROXY protocol ------------------------------------------------------------------------------


def test_proxy_protocol_v1_and_v2_give_the_real_client_ip(shared: Shared, ca: trustme.CA) -> None:
    fi = shared.configure(
        {
            "use-proxy-protocol": "true",
            "disable-access-log": "false",
            "log-format-upstream": "PP $remote_addr $realip_remote_addr [$proxy_protocol_addr] $status",
        }
    )
    for header_bytes, client_ip in (
        (v1_header("203.0.113.7", "10.0.0.1", 51234, 80), "203.0.113.7"),
        (v2_header("2001:db8::7", "2001:db8::1", 40000, 80, tlvs=b"\x04\x00\x02ab"), "2001:db8::7"),
        (v2_header("", "", 0, 0, local=True), "127.0.0.1"),  # a health check: the connection's own
    ):
        with socket.create_connection(("127.0.0.1", fi.http_port), timeout=10) as sock:
            sock.sendall(header_bytes)
            client = h11.Connection(h11.CLIENT)
            for _ in range(2):  # the header comes once; the connection stays the client's
                response, body = exchange(sock, client, "app.test")
                assert response.status_code == 200
                seen = echoed(json.loads(body))
                assert seen["x-forwarded-for"] == [client_ip] and seen["x-real-ip"] == [client_ip]
                assert seen["x-forwarded-proto"] == ["http"]
                client.start_next_cycle()
    # TLS after the header (the balancer passes TLS through): HTTPS as usual, the client's IP.
    with socket.create_connection(("127.0.0.1", fi.https_port), timeout=10) as raw:
        raw.sendall(v1_header("198.51.100.4", "10.0.0.1", 1234, 443))
        with client_context(ca).wrap_socket(raw, server_hostname="tls.test") as sock:
            tls = request_on(sock, "tls.test")
    assert tls.status == 200 and tls.echoed_header("X-Real-IP") == "198.51.100.4"
    assert tls.echoed_header("X-Forwarded-Proto") == "https"
    # The balancer ended TLS on its port 443: HTTPS for ssl-redirect and X-Forwarded-Proto.
    with socket.create_connection(("127.0.0.1", fi.http_port), timeout=10) as sock:
        sock.sendall(v1_header("198.51.100.5", "10.0.0.1", 1234, 443))
        response, body = exchange(sock, h11.Connection(h11.CLIENT), "tls.test")
    assert response.status_code == 200  # not the 308 a plain-HTTP request for tls.test gets
    seen = echoed(json.loads(body))
    assert seen["x-forwarded-proto"] == ["https"] and seen["x-forwarded-port"] == ["443"]
    # No header, or a broken one: the connection is closed, nothing reaches the upstream.
    count = len(shared.up.requests)
    for first in (
        b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"PROXY TCP4 1.2.3.4\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x00",
    ):
        with socket.create_connection(("127.0.0.1", fi.http_port), timeout=10) as sock:
            sock.sendall(first)
            assert closed_by_peer(sock)
    assert len(shared.up.requests) == count
    wait_for(lambda: "PP 203.0.113.7 203.0.113.7 [203.0.113.7] 200" in fi.log(), what="the log line")
    assert "PP 127.0.0.1 127.0.0.1 [] 200" in fi.log()
    assert "closed: the connection does not start with a PROXY protocol header" in fi.log()


def test_a_proxy_header_that_never_completes_times_out(shared: Shared) -> None:
    fi = shared.configure({"use-proxy-protocol": "true", "proxy-protocol-header-timeout": "300ms"})
    with socket.create_connection(("127.0.0.1", fi.http_port), timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 ")  # and nothing more
        assert closed_by_peer(sock)
    wait_for(lambda: "no PROXY protocol header in time" in fi.log(), what="the log line")


# -- forwarded headers ----------------------------------------------------------------------------

CLAIMS = {
    "X-Forwarded-For": "198.51.100.1, 203.0.113.5",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "shop.example.com",
    "X-Forwarded-Port": "443",
}


def test_forwarded_headers_from_a_trusted_peer(shared: Shared) -> None:
    fi = shared.configure({"use-forwarded-headers": "true", "proxy-real-ip-cidr": "127.0.0.1/32"})
    with httpx.Client(base_url=fi.base, timeout=10) as client:
        r = client.get("/", headers={"Host": "tls.test", **CLAIMS})
        assert r.status_code == 200  # https at the balancer: no ssl-redirect for tls.test
        seen = echoed(r.json())
        assert seen["x-real-ip"] == ["203.0.113.5"]  # the first untrusted address from the right
        assert seen["x-forwarded-for"] == ["203.0.113.5"]
        assert seen["x-forwarded-proto"] == ["https"]
        assert seen["x-forwarded-host"] == ["shop.example.com"]
        assert seen["x-forwarded-port"] == ["443"]
        reconfigure(
            fi,
            shared.site,
            {
                "use-forwarded-headers": "true",
                "proxy-real-ip-cidr": "127.0.0.1/32",
                "compute-full-forwarded-for": "true",
            },
        )
        seen = echoed(client.get("/", headers={"Host": "app.test", **CLAIMS}).json())
        assert seen["x-forwarded-for"] == ["198.51.100.1, 203.0.113.5, 127.0.0.1"]
        assert seen["x-real-ip"] == ["203.0.113.5"]


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(shared: Shared) -> None:
    fi = shared.configure({"use-forwarded-headers": "true", "proxy-real-ip-cidr": "10.0.0.0/8"})
    with httpx.Client(base_url=fi.base, timeout=10) as client:
        r = client.get("/", headers={"Host": "tls.test", **CLAIMS})
        assert r.status_code == 308  # plain HTTP for a TLS host, whatever X-Forwarded-Proto says
        seen = echoed(client.get("/", headers={"Host": "app.test", **CLAIMS}).json())
        assert seen["x-real-ip"] == ["127.0.0.1"] and seen["x-forwarded-for"] == ["127.0.0.1"]
        assert seen["x-forwarded-proto"] == ["http"] and seen["x-forwarded-host"] == ["app.test"]
        # Without the ConfigMap's keys (the default), a client's X-Forwarded-* never pass either.
        reconfigure(fi, shared.site, {})
        seen = echoed(client.get("/", headers={"Host": "app.test", **CLAIMS}).json())
        assert seen["x-forwarded-for"] == ["127.0.0.1"] and seen["x-forwarded-proto"] == ["http"]


def test_blocks_see_the_real_client(shared: Shared) -> None:
    fi = shared.configure(
        {
            "use-forwarded-headers": "true",
            "proxy-real-ip-cidr": "127.0.0.1/32",
            "block-cidrs": "203.0.113.0/24",
            "block-user-agents": "~*bot, curl/7.0",
            "block-referers": "~^https?://spam\\.",
        }
    )
    with httpx.Client(base_url=fi.base, timeout=10) as client:

        def status(**headers: str) -> int:
            return client.get("/", headers={"Host": "app.test", **headers}).status_code

        assert status(**{"X-Forwarded-For": "203.0.113.9"}) == 403
        assert status(**{"X-Forwarded-For": "203.0.113.9, 198.51.100.1"}) == 200  # the client is .1
        assert status(**{"X-Forwarded-For": "198.51.100.1", "User-Agent": "GoogleBot/2.1"}) == 403
        assert status(**{"User-Agent": "curl/7.0"}) == 403
        assert status(**{"User-Agent": "curl/7.01"}) == 200
        assert status(**{"Referer": "http://spam.example/x"}) == 403
        assert status(**{"Referer": "http://example.com/"}) == 200
        assert status(**{"X-Forwarded-For": "198.51.100.1"}) == 200
    assert len(shared.up.requests) == 4  # the 200s; the 403s never reached the upstream


def test_source_ranges_see_the_real_client(shared: Shared) -> None:
    """The per-route access policies (allowlist/denylist-source-range) judge the client the PROXY
    protocol header names; the ConfigMap's whitelist-source-range is the annotations' default."""
    guarded = m.ingress("guarded", [("guarded.test", "/", "Prefix", "app")],
                        annotations={"nginx.ingress.kubernetes.io/denylist-source-range": "203.0.113.66"})
    fi = shared.configure({"use-proxy-protocol": "true", "whitelist-source-range": "203.0.113.0/24"}, guarded)

    def status(client: str, host: str) -> int:
        with socket.create_connection(("127.0.0.1", fi.http_port), timeout=10) as sock:
            sock.sendall(v1_header(client, "10.0.0.1", 1234, 80))
            response, _ = exchange(sock, h11.Connection(h11.CLIENT), host)
        return response.status_code

    assert status("203.0.113.7", "guarded.test") == 200
    assert status("203.0.113.66", "guarded.test") == 403  # its own denylist
    assert status("203.0.113.7", "app.test") == 200
    assert status("198.51.100.1", "app.test") == 403  # outside the ConfigMap's allowlist
    assert len(shared.up.requests) == 2


# -- header names, keep-alive requests ---------------------------------------------------------------


def test_headers_with_underscores_and_invalid_names(shared: Shared) -> None:
    sent = (("X_User", "alice"), ("X.Dot", "1"), ("X-Plain", "2"))

    def seen() -> dict[str, list[str]]:
        with socket.create_connection(("127.0.0.1", shared.fi.http_port), timeout=10) as sock:
            _, body = exchange(sock, h11.Connection(h11.CLIENT), "app.test", headers=sent)
        return echoed(json.loads(body))

    shared.configure({})
    got = seen()
    assert "x-plain" in got and "x_user" not in got and "x.dot" not in got  # nginx's defaults
    shared.configure({"enable-underscores-in-headers": "true"})
    got = seen()
    assert got["x_user"] == ["alice"] and "x.dot" not in got
    shared.configure({"ignore-invalid-headers": "false"})
    got = seen()
    assert got["x_user"] == ["alice"] and got["x.dot"] == ["1"]


def test_keep_alive_requests_closes_after_n(shared: Shared) -> None:
    fi = shared.configure({"keep-alive-requests": "3"})
    with socket.create_connection(("127.0.0.1", fi.http_port), timeout=10) as sock:
        client = h11.Connection(h11.CLIENT)
        for i, host in enumerate(("app.test", "nowhere.test", "app.test")):  # our own answers count too
            response, _ = exchange(sock, client, host)
            assert (header(response, b"connection") == b"close") == (i == 2), i
            if i < 2:
                client.start_next_cycle()
        assert closed_by_peer(sock)
    shared.configure({"keep-alive": "0"})
    with socket.create_connection(("127.0.0.1", fi.http_port), timeout=10) as sock:
        response, _ = exchange(sock, h11.Connection(h11.CLIENT), "app.test")
        assert response.status_code == 200 and header(response, b"connection") == b"close"
        assert closed_by_peer(sock)


# -- answers: headers, Server, access log ------------------------------------------------------------


def test_add_headers_proxy_set_headers_and_server_tokens(shared: Shared) -> None:
    headers = configmap_yaml({"X-Frame-Options": "DENY", "X-Served-By": "edge"}, name="resp")
    upstream = configmap_yaml({"X-Team": "platform", "X-Forwarded-Proto": "forced"}, name="up")
    fi = shared.configure(
        {
            "add-headers": "ingress-nginx/resp",
            "proxy-set-headers": "ingress-nginx/up",
            "server-tokens": "false",
        },
        headers,
        upstream,
    )
    with httpx.Client(base_url=fi.base, timeout=10) as client:
        r = client.get("/", headers={"Host": "app.test", "X-Team": "mine"})
        assert r.headers["x-frame-options"] == "DENY" and r.headers["x-served-by"] == "edge"
        assert "server" not in r.headers  # neither ours nor the upstream's echo-upstream
        seen = echoed(r.json())
        assert seen["x-team"] == ["platform"]  # set, replacing the client's
        assert seen["x-forwarded-proto"] == ["forced"]
        ours = client.get("/", headers={"Host": "nowhere.test"})  # an answer of ours
        assert ours.status_code == 404 and ours.headers["x-frame-options"] == "DENY"
        assert "server" not in ours.headers
        shared.configure({"allow-backend-server-header": "true"})
        r = client.get("/", headers={"Host": "app.test"})
        assert "echo-upstream" in r.headers["server"] and "x-frame-options" not in r.headers
        shared.configure({"server-tokens": "true"})
        assert client.get("/", headers={"Host": "app.test"}).headers["server"].startswith("fastingress/")


def test_log_format_upstream(shared: Shared) -> None:
    fi = shared.configure(
        {
            "disable-access-log": "false",
            "skip-access-log-urls": "/healthz",
            "log-format-upstream": f'{shared.codec} $remote_addr - $remote_user "$request" $status '
            '$body_bytes_sent '
            '"$http_user_agent" [$proxy_upstream_name] $upstream_addr $upstream_status $req_id '
            "$host",
        }
    )
    with httpx.Client(base_url=fi.base, timeout=10) as client:
        r = client.get(
            "/x?y=1",
            headers={"Host": "app.test", "User-Agent": 'agent "7"', "X-Request-ID": "rid1"},
            auth=("alice", "pw"),
        )
        client.get("/healthz", headers={"Host": "app.test"})
        client.get("/", headers={"Host": "nowhere.test", "X-Request-ID": "rid2"})
        proxied = (
            f'{shared.codec} 127.0.0.1 - alice "GET /x?y=1 HTTP/1.1" 200 {len(r.content)} '
            f'"agent \\x227\\x22" [default-app-80] 127.0.0.1:{shared.up.port} 200 rid1 app.test'
        )
        wait_for(lambda: proxied in fi.log(), what=f"the line {proxied!r}")
        ours = f'{shared.codec} 127.0.0.1 - - "GET / HTTP/1.1" 404 14 "python-httpx/'
        wait_for(lambda: ours in fi.log(), what="the 404")
        assert re.search(rf"^{shared.codec} .*\] - - rid2 nowhere\.test$", fi.log(), re.M)
        assert '"GET /healthz ' not in fi.log()
        shared.configure({"disable-access-log": "true", "log-format-upstream": "LINE $status"})
        client.get("/", headers={"Host": "app.test"})
        client.get("/", headers={"Host": "nowhere.test"})
    assert "LINE " not in fi.log()


def test_http2_streams_see_the_real_client_and_the_headers(shared: Shared) -> None:
    fi = shared.configure(
        {
            "use-forwarded-headers": "true",
            "proxy-real-ip-cidr": "127.0.0.0/8",
            "add-headers": "ingress-nginx/resp",
            "block-user-agents": "evil",
        },
        configmap_yaml({"X-Frame-Options": "DENY"}, name="resp"),
    )

    async def run(port: int) -> tuple[Any, Any]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            client = H2Client(stream)
            with trio.fail_after(10):
                ok = await client.request(
                    b"/", authority=b"app.test", headers=[(b"x-forwarded-for", b"203.0.113.50")]
                )
                blocked = await client.request(
                    b"/", authority=b"app.test", headers=[(b"user-agent", b"evil")]
                )
            return ok, blocked

    ok, blocked = trio.run(run, fi.http_port)
    assert ok.status == 200 and ok.header(b"x-frame-options") == b"DENY"
    assert echoed(json.loads(ok.body))["x-real-ip"] == ["203.0.113.50"]
    assert blocked.status == 403


def test_a_bad_edit_keeps_the_last_good_value(shared: Shared) -> None:
    fi = shared.configure({"proxy-body-size": "2k", "http2-max-concurrent-streams": "50"})
    with httpx.Client(base_url=fi.base, timeout=10) as client:

        def post(size: int) -> int:
            return client.post("/", content=b"x" * size, headers={"Host": "app.test"}).status_code

        assert (post(2048), post(2049)) == (200, 413)
        generation = fi.generation()
        shared.site.set({"proxy-body-size": "2 KB", "http2-max-concurrent-streams": "50"})
        # The snapshot does not change (the same bytes are not published again): the log says why.
        wait_for(lambda: "keeping the last good value '2k'" in fi.log(), what="the warning")
        assert (post(2048), post(2049)) == (200, 413)  # not the 1m default: the last good value
        diagnostics = [d["message"] for d in fi.status()["diagnostics"] if d["kind"] == "ConfigMap"]
        assert diagnostics == [
            "bad value '2 KB': expected a size like 8, 1k, 20m or 1g (0: unlimited); "
            "keeping the last good value '2k'"
        ]
        assert fi.generation() == generation
        shared.configure({"proxy-body-size": "3k"})
        assert (post(3072), post(3073)) == (200, 413)


# -- TLS: the ConfigMap's HSTS wins over the flag; ssl-protocols --------------------------------------


def test_hsts_key_wins_over_the_flag_and_ssl_protocols(
    tmp_path: Path, up: EchoServer, ca: trustme.CA
) -> None:
    site = Site(tmp_path, up, ca)
    site.set(
        {
            "hsts": "true",
            "hsts-max-age": "600",
            "hsts-include-subdomains": "false",
            "hsts-preload": "true",
            "ssl-protocols": "TLSv1.3",
        }
    )

    def get(fi: Fastingress, ctx: ssl.SSLContext) -> tuple[str, dict[str, str]]:
        with (
            socket.create_connection(("127.0.0.1", fi.https_port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="tls.test") as sock,
        ):
            return str(sock.version()), request_on(sock, "tls.test").headers

    with start(tmp_path, site, "llhttp", "--no-hsts", "--access-log") as fi:
        version, headers = get(fi, client_context(ca))
        assert version == "TLSv1.3" and headers["strict-transport-security"] == "max-age=600; preload"
        old = client_context(ca)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            get(fi, old)
        reconfigure(
            fi, site, {"hsts": "false", "disable-access-log": "true", "log-format-upstream": "LINE $status"}
        )
        assert "strict-transport-security" not in get(fi, client_context(ca))[1]
        assert get(fi, old)[0] == "TLSv1.2"  # ssl-protocols gone: the default TLSv1.2 TLSv1.3 again
        assert "LINE" not in fi.log()  # disable-access-log wins over --access-log
    site.set({"hsts": "false"})
    with start(tmp_path, site, "h11", "--hsts") as fi:  # the key decides over the flag: off
        assert "strict-transport-security" not in get(fi, client_context(ca))[1]


# -- controller mode: the ConfigMap is watched ---------------------------------------------------------


def test_controller_watches_the_configmap_and_those_it_names(tmp_path: Path, up: EchoServer) -> None:
    from tests.support.apiserver import ApiServer
    from tests.support.controller import FAST_ELECTION, run_controller

    with ApiServer(bookmark_interval=0.2) as api:
        api.apply(m.ingress_class("fastingress", "fastingress.io/ingress-controller"))
        api.apply(m.service("app"))
        api.apply(m.endpoint_slice("app", [up.port]))
        api.apply(m.ingress("app", [("app.test", "/", "Prefix", "app")], class_name="fastingress"))
        api.apply(
            configmap_yaml(
                {"proxy-body-size": "1k", "add-headers": "ingress-nginx/resp", "proxy-bdy-size": "2k"}
            )
        )
        api.apply(configmap_yaml({"X-Frame-Options": "DENY"}, name="resp"))
        api.apply(configmap_yaml({"proxy-body-size": "9m"}, name="unrelated"))
        with (
            run_controller(tmp_path, api, workers=1, extra=("--configmap", CONFIGMAP, *FAST_ELECTION)) as fi,
            httpx.Client(base_url=fi.base, timeout=10, headers={"Host": "app.test"}) as client,
        ):
            # generation 1 already has both ConfigMaps (the first snapshot waited for their lists)
            assert fi.generation() == 1
            r = client.post("/", content=b"x" * 1025)
            assert r.status_code == 413 and r.headers["x-frame-options"] == "DENY"
            assert fi.controller()["configmaps"] == ["ingress-nginx/controller", "ingress-nginx/resp"]
            # Each is listed and watched alone: its namespace, a field selector on its name (the
            # ConfigMaps Ingresses name, e.g. auth-proxy-set-headers, have an informer of their own).
            selectors = {
                (r.path, r.query["fieldSelector"])
                for r in api.requests
                if r.path.endswith("/configmaps") and "fieldSelector" in r.query
            }
            assert selectors == {
                ("/api/v1/namespaces/ingress-nginx/configmaps", "metadata.name=controller"),
                ("/api/v1/namespaces/ingress-nginx/configmaps", "metadata.name=resp"),
            }

            def events() -> dict[str, dict[str, Any]]:
                found = [e for e in api.objects("Event") if e["involvedObject"]["kind"] == "ConfigMap"]
                return {str(e["reason"]): e for e in found}

            by_reason = wait_for(events, what="an Event on the ConfigMap")
            assert "did you mean `proxy-body-size`?" in str(by_reason["InvalidConfigMap"]["message"])
            # An edit applies without a restart; the ConfigMap it no longer names is let go.
            generation = fi.generation()
            api.apply(configmap_yaml({"proxy-body-size": "4k"}))
            wait_for(lambda: fi.generation() > generation, what="a new generation")
            fi.wait_generation(fi.generation())
            r = client.post("/", content=b"x" * 4096)
            assert r.status_code == 200 and "x-frame-options" not in r.headers
            wait_for(
                lambda: fi.controller()["configmaps"] == ["ingress-nginx/controller"], what="resp let go"
            )
            # A bad value keeps the last good one; deleting the ConfigMap means the defaults.
            api.apply(configmap_yaml({"proxy-body-size": "4 KB"}))
            wait_for(lambda: "keeping the last good value '4k'" in fi.log(), what="the warning")
            assert client.post("/", content=b"x" * 4097).status_code == 413
            generation = fi.generation()
            api.delete("ConfigMap", "ingress-nginx", "controller")
            wait_for(lambda: fi.generation() > generation, what="a new generation")
            fi.wait_generation(fi.generation())
            assert client.post("/", content=b"x" * 8192).status_code == 200  # the 1m default
            assert "ConfigMap not found; the defaults are used" in fi.log()
