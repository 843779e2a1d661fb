"""External auth (``auth-url`` and companions) through real sockets: a real ``fastingress
standalone`` process, a real auth service and a real upstream on 127.0.0.1.

The behaviours are ingress-nginx's (``test/e2e/annotations/auth.go`` and the ``auth_request``
locations of its ``nginx.tmpl``): the subrequest and its headers, 2xx / 401 / 403 / anything
else, the signin redirect with ``rd=``, response headers copied upstream, cookies, the cache,
and keep-alive.  Every case runs on both HTTP/1.1 paths (llhttp core and the h11 Session) and
the main ones over HTTP/2 too.  One worker, so that the per-worker cache and pool are seen.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import trio
import trustme
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.support import manifests as m
from tests.support.authserver import AuthServer, header
from tests.support.h2client import H2Client
from tests.support.process import Fastingress, free_port, run_fastingress
from tests.support.upstream import EchoServer, WebSocketEchoServer

P = "nginx.ingress.kubernetes.io/"
CODECS = ("llhttp", "h11")


@dataclass
class Setup:
    fi: Fastingress
    up: EchoServer
    auth: AuthServer
    tls_auth: AuthServer
    codec: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.fi.base, timeout=10)

    def upstream_for(self, host: str) -> list[dict[str, object]]:
        return [r for r in list(self.up.requests) if r["headers"].get("Host") == host]


def _configmap(name: str, data: dict[str, str]) -> str:
    lines = [f'  {k}: "{v}"' for k, v in data.items()]
    return (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: "
        + name
        + "\n  namespace: default\ndata:\n"
        + ("\n".join(lines) + "\n")
    )


def _hosts(auth: int, tls_auth: int, dead: int) -> dict[str, dict[str, str]]:
    a = f"http://127.0.0.1:{auth}"
    return {
        "auth.test": {
            "auth-url": a + "/check",
            "auth-response-headers": "X-Auth-User, X-Auth-Group, X-Auth-Email",
        },
        "signin.test": {"auth-url": a + "/check", "auth-signin": "http://$host/auth/start"},
        "param.test": {
            "auth-url": a + "/check",
            "auth-signin": "https://login.example/start",
            "auth-signin-redirect-param": "orig",
        },
        "oauth2.test": {
            "auth-url": a + "/check",
            "auth-signin": "https://$host/oauth2/start?rd=$escaped_request_uri",
        },
        "deny.test": {"auth-url": a + "/deny"},
        "redirect.test": {"auth-url": a + "/redirect"},
        "error.test": {"auth-url": a + "/error"},
        "dead.test": {"auth-url": f"http://127.0.0.1:{dead}/check"},
        "cache.test": {
            "auth-url": a + "/check",
            "auth-cache-key": "$http_authorization",
            "auth-cache-duration": "200 401 30m",
            "auth-response-headers": "X-Auth-User",
        },
        "cookie.test": {"auth-url": a + "/cookie"},
        "always.test": {"auth-url": a + "/cookie", "auth-always-set-cookie": "true"},
        "method.test": {
            "auth-url": a + "/check",
            "auth-method": "POST",
            "auth-proxy-set-headers": "auth-headers",
            "auth-request-redirect": "https://method.test/landing",
        },
        "vars.test": {"auth-url": "http://$http_x_auth_host/check?uri=$escaped_request_uri"},
        "tls.test": {
            "auth-url": f"https://127.0.0.1:{tls_auth}/check",
            "auth-response-headers": "X-Auth-User",
        },
        "nokeep.test": {"auth-url": a + "/check", "auth-keepalive": "0"},
        "big.test": {"auth-url": a + "/big", "auth-response-headers": "X-Auth-User"},
        "nocm.test": {"auth-url": a + "/check", "auth-proxy-set-headers": "missing"},
    }


@pytest.fixture(scope="module", params=CODECS)
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    codec: str = request.param
    tmp = tmp_path_factory.mktemp(f"extauth-{codec}")
    cert = trustme.CA().issue_cert("127.0.0.1")
    with (
        EchoServer("up") as up,
        AuthServer() as auth,
        AuthServer(tls=cert) as tls_auth,
        WebSocketEchoServer() as ws,
    ):
        docs = [
            m.service("app"),
            m.endpoint_slice("app", [up.port]),
            m.service("ws"),
            m.endpoint_slice("ws", [ws.port]),
            m.ingress(
                "ws",
                [("ws.test", "/", "Prefix", "ws")],
                annotations={P + "auth-url": f"http://127.0.0.1:{auth.port}/check"},
            ),
            _configmap("auth-headers", {"X-Custom": "42", "X-Seen-Path": "$request_uri"}),
            m.ingress("open", [("open.test", "/", "Prefix", "app")]),
        ]
        for host, annotations in _hosts(auth.port, tls_auth.port, free_port()).items():
            name = host.removesuffix(".test")
            docs.append(
                m.ingress(
                    name,
                    [(host, "/", "Prefix", "app")],
                    annotations={P + k: v for k, v in annotations.items()},
                )
            )
        path = m.write(tmp / "extauth.yaml", *docs)
        with run_fastingress(tmp, manifests=[path], workers=1, extra=("--http1-codec", codec)) as fi:
            yield Setup(fi, up, auth, tls_auth, codec)


GOOD = {"Authorization": "Bearer good"}


def test_the_subrequest_carries_the_request_without_its_body(setup: Setup) -> None:
    with setup.client() as client:
        r = client.post(
            "/private?x=1",
            content=b"b" * 5000,
            headers={
                "Host": "auth.test",
                **GOOD,
                "Cookie": "sid=1",
                "X-Auth-Email": "forged@evil",
                "X-Original-URL": "http://forged/",
                "X-Auth-User": "mallory",
            },
        )
    assert r.status_code == 200, r.text
    (sub,) = setup.auth.for_host("auth.test")
    assert sub["method"] == "GET" and sub["path"] == "/check"  # nginx subrequests are GETs
    assert sub["body_bytes"] == 0 and header(sub, "content-length") == []
    assert header(sub, "host") == ["127.0.0.1"]  # the auth URL's host name (authreq's Config.Host)
    assert header(sub, "x-original-url") == ["http://auth.test/private?x=1"]  # the client's is replaced
    assert header(sub, "x-original-method") == ["POST"]
    assert header(sub, "x-sent-from") == ["nginx-ingress-controller"]
    assert header(sub, "x-real-ip") == ["127.0.0.1"] and header(sub, "x-forwarded-for") == ["127.0.0.1"]
    assert header(sub, "x-auth-request-redirect") == ["/private?x=1"]
    assert header(sub, "authorization") == ["Bearer good"] and header(sub, "cookie") == ["sid=1"]
    assert len(header(sub, "x-request-id")[0]) > 0
    seen = r.json()
    got = {k.lower(): v for k, v in seen["headers"]}
    assert got["x-auth-user"] == "alice"  # copied from the auth answer, replacing the client's
    assert got["x-auth-group"] == "admins, ops"
    assert "x-auth-email" not in got  # the answer had none: the client's forged one is removed
    assert seen["body_bytes"] == 5000 and seen["method"] == "POST"
    assert got["x-request-id"] == header(sub, "x-request-id")[0]  # one id for both


def test_401_403_and_anything_else(setup: Setup) -> None:
    before = len(setup.up.requests)
    with setup.client() as client:
        r = client.get("/", headers={"Host": "auth.test"})
        assert r.status_code == 401
        assert r.headers.get_list("www-authenticate") == ['Bearer realm="test"']
        assert "set-cookie" not in r.headers  # only with auth-always-set-cookie
        assert (
            client.get("/", headers={"Host": "auth.test", "Authorization": "Bearer bad"}).status_code == 401
        )
        assert client.get("/", headers={"Host": "deny.test", **GOOD}).status_code == 403
        assert client.get("/", headers={"Host": "redirect.test"}).status_code == 500  # 3xx: unexpected
        assert client.get("/", headers={"Host": "error.test"}).status_code == 500
        dead = client.get("/x", headers={"Host": "dead.test"})
        assert dead.status_code == 500
        head = client.head("/", headers={"Host": "deny.test"})
        assert head.status_code == 403 and head.content == b""
        assert client.get("/", headers={"Host": "open.test"}).status_code == 200  # no auth: no subrequest
    assert len(setup.up.requests) == before + 1  # only open.test's request reached the upstream
    assert setup.auth.for_host("open.test") == []
    log = setup.fi.log()
    assert "external auth failed: GET /x host=dead.test" in log and "connect to 127.0.0.1" in log
    assert "auth request unexpected status: 302" in log


def test_401_with_signin_redirects_with_the_original_url(setup: Setup) -> None:
    with setup.client() as client:
        r = client.get("/?a=b&c=d", headers={"Host": "signin.test"})
        # test/e2e/annotations/auth.go: "should redirect to signin url when not signed in"
        assert r.status_code == 302
        assert (
            r.headers["location"] == "http://signin.test/auth/start?rd=http://signin.test%2F%3Fa%3Db%26c%3Dd"
        )
        r = client.get("/?a=b&c=d", headers={"Host": "param.test"})
        assert (
            r.headers["location"] == "https://login.example/start?orig=http://param.test%2F%3Fa%3Db%26c%3Dd"
        )
        r = client.get("/?a=b&c=d", headers={"Host": "oauth2.test"})  # rd= given: left as written
        assert r.headers["location"] == "https://oauth2.test/oauth2/start?rd=%2F%3Fa%3Db%26c%3Dd"
        assert client.get("/?a=b", headers={"Host": "signin.test", **GOOD}).status_code == 200
        assert client.get("/", headers={"Host": "deny.test"}).status_code == 403  # no signin for 403


def test_cached_outcomes_per_key(setup: Setup) -> None:
    with setup.client() as client:
        for _ in range(3):
            r = client.get("/", headers={"Host": "cache.test", **GOOD})
            assert r.status_code == 200
            assert {k.lower(): v for k, v in r.json()["headers"]}[
                "x-auth-user"
            ] == "alice"  # from the cache too
        assert len(setup.auth.for_host("cache.test")) == 1
        for _ in range(2):
            r = client.get("/", headers={"Host": "cache.test", "Authorization": "Bearer bad"})
            assert r.status_code == 401  # 401 is cached as well ("200 401 30m")
        assert len(setup.auth.for_host("cache.test")) == 2
        for _ in range(2):  # an answer with Set-Cookie is never cached (nginx's proxy_cache)
            assert client.get("/", headers={"Host": "cache.test"}).status_code == 401
        assert len(setup.auth.for_host("cache.test")) == 4
        for _ in range(2):  # "Cache-Control: no-store" from the auth service: asked every time
            r = client.get("/", headers={"Host": "cache.test", "Authorization": "Bearer bob"})
            assert {k.lower(): v for k, v in r.json()["headers"]}["x-auth-user"] == "bob"
        assert len(setup.auth.for_host("cache.test")) == 6
        for _ in range(2):  # a route without auth-cache-key asks every time
            client.get("/", headers={"Host": "auth.test", "Authorization": "Bearer cache-less"})
    assert (
        len(
            [
                r
                for r in setup.auth.for_host("auth.test")
                if header(r, "authorization") == ["Bearer cache-less"]
            ]
        )
        == 2
    )


def test_cookies_of_the_auth_answer(setup: Setup) -> None:
    with setup.client() as client:
        r = client.get("/", headers={"Host": "cookie.test"})
        assert r.status_code == 200 and r.headers.get_list("set-cookie") == [
            "session=abc; Path=/",
            "theme=dark",
        ]
        r = client.get("/__status/503", headers={"Host": "cookie.test"})
        assert r.status_code == 503 and "set-cookie" not in r.headers  # "user does not retain cookie ..."
        r = client.get("/__status/503", headers={"Host": "always.test"})
        assert r.status_code == 503 and r.headers.get_list("set-cookie") == [
            "session=abc; Path=/",
            "theme=dark",
        ]
        r = client.get("/", headers={"Host": "signin.test"})  # the 401's cookie goes with the 302
        assert r.status_code == 302 and r.headers.get_list("set-cookie") == ["csrf=1"]


def test_auth_method_and_configmap_headers(setup: Setup) -> None:
    with setup.client() as client:
        assert client.get("/p?q=1", headers={"Host": "method.test", **GOOD}).status_code == 200
    (sub,) = setup.auth.for_host("method.test")
    assert sub["method"] == "POST" and sub["body_bytes"] == 0
    assert header(sub, "x-custom") == ["42"] and header(sub, "x-seen-path") == ["/p?q=1"]
    assert header(sub, "x-original-uri") == ["/p?q=1"] and header(sub, "x-scheme") == ["http"]
    assert header(sub, "x-auth-request-redirect") == ["https://method.test/landing"]


def test_a_missing_configmap_fails_closed(setup: Setup) -> None:
    with setup.client() as client:
        r = client.get("/", headers={"Host": "nocm.test", **GOOD})
    assert r.status_code == 503 and "auth-proxy-set-headers" in r.text and "(fail closed)" in r.text
    assert setup.auth.for_host("nocm.test") == []


def test_variables_in_the_url_and_https(setup: Setup) -> None:
    with setup.client() as client:
        r = client.get(
            "/v?w=1", headers={"Host": "vars.test", **GOOD, "X-Auth-Host": f"127.0.0.1:{setup.auth.port}"}
        )
        assert r.status_code == 200
        r = client.get("/", headers={"Host": "vars.test", **GOOD, "X-Auth-Host": "127.0.0.1:bad-port"})
        assert r.status_code == 500  # an unusable URL once expanded
        r = client.get("/", headers={"Host": "tls.test", **GOOD})
        assert (
            r.status_code == 200 and {k.lower(): v for k, v in r.json()["headers"]}["x-auth-user"] == "alice"
        )
        assert client.get("/", headers={"Host": "tls.test"}).status_code == 401
    (sub,) = setup.auth.for_host("vars.test")
    assert sub["path"] == "/check?uri=%2Fv%3Fw%3D1"
    assert len(setup.tls_auth.for_host("tls.test")) == 2


def test_keepalive_to_the_auth_service(setup: Setup) -> None:
    with setup.client() as client:
        for _ in range(4):
            client.get("/", headers={"Host": "auth.test", "Authorization": "Bearer keep"})
        for _ in range(3):
            client.get("/", headers={"Host": "nokeep.test"})
    kept = [r for r in setup.auth.for_host("auth.test") if header(r, "authorization") == ["Bearer keep"]]
    assert len(kept) == 4 and len({r["client_port"] for r in kept}) == 1  # one connection, reused
    fresh = setup.auth.for_host("nokeep.test")
    assert len(fresh) == 3 and len({r["client_port"] for r in fresh}) == 3  # auth-keepalive: "0"
    assert all(header(r, "connection") == ["close"] for r in fresh)


def test_a_long_auth_answer_body_is_dropped(setup: Setup) -> None:
    with setup.client() as client:
        for _ in range(2):
            r = client.get("/", headers={"Host": "big.test"})
            assert (
                r.status_code == 200
                and {k.lower(): v for k, v in r.json()["headers"]}["x-auth-user"] == "big"
            )
    subs = setup.auth.for_host("big.test")
    assert len(subs) == 2 and subs[0]["client_port"] != subs[1]["client_port"]  # not kept after 64 KiB


async def test_over_http2(setup: Setup) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", setup.fi.http_port)
    async with stream:
        client = H2Client(stream)
        good = client.open(b"/h2?x=1", authority=b"auth.test", headers=[(b"authorization", b"Bearer good")])
        anonymous = client.open(b"/h2", authority=b"auth.test")
        signin = client.open(b"/?a=b&c=d", authority=b"signin.test")
        forbidden = client.open(b"/", authority=b"deny.test")
        posted = client.open(
            b"/up",
            method=b"POST",
            authority=b"auth.test",
            body=b"z" * 300,
            headers=[(b"authorization", b"Bearer good")],
        )
        with trio.fail_after(10):
            await client.collect([good, anonymous, signin, forbidden, posted])
    responses = client.responses
    assert responses[good].status == 200
    assert b'"x-auth-user", "alice"' in responses[good].body.lower()
    assert responses[anonymous].status == 401
    assert responses[anonymous].header(b"www-authenticate") == b'Bearer realm="test"'
    assert responses[signin].status == 302
    assert (
        responses[signin].header(b"location")
        == b"http://signin.test/auth/start?rd=http://signin.test%2F%3Fa%3Db%26c%3Dd"
    )
    assert responses[forbidden].status == 403
    assert responses[posted].status == 200 and b'"body_bytes": 300' in responses[posted].body
    subs = [r for r in setup.auth.for_host("auth.test") if "/h2" in header(r, "x-original-url")[0]]
    assert {header(r, "x-original-url")[0] for r in subs} == {
        "http://auth.test/h2?x=1",
        "http://auth.test/h2",
    }


def test_websockets_are_authenticated_too(setup: Setup) -> None:
    def connect(headers: dict[str, str]) -> None:
        sock = socket.create_connection(("127.0.0.1", setup.fi.http_port), timeout=10)
        with ws_connect("ws://ws.test/chat", sock=sock, open_timeout=10, additional_headers=headers) as ws:
            ws.send("hello")
            assert ws.recv(timeout=10) == "hello"

    connect(GOOD)
    with pytest.raises(InvalidStatus) as refused:
        connect({})
    assert refused.value.response.status_code == 401
    subs = setup.auth.for_host("ws.test")
    assert [header(r, "authorization") for r in subs] == [["Bearer good"], []]
    assert header(subs[0], "upgrade") == []  # hop-by-hop headers stay with the client request
