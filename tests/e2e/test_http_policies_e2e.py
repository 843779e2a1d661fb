"""The http area of issue 9 through real sockets: a real ``fastingress standalone`` process, real
upstreams on 127.0.0.1 (``EchoServer``, ``ScriptedServer``), httpx and an HTTP/2 client.

CORS (preflights with credentials and wildcard origins), every redirect kind with query
strings, server aliases, custom error pages from a real error backend (intercepted upstream
answers, our own 502/503, the default-backend annotation), and header rewriting
(proxy-redirect, proxy-cookie-*, custom-headers, connection-proxy-header).  Data-path cases run
on both HTTP/1.1 paths (the event-driven core, ``llhttp``, and the Session, ``h11``) and over
HTTP/2 (every stream takes the Session path).  One fastingress process per codec serves every
case (the manifests of each area side by side), so the module costs two start-ups, not twenty.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import trio

from tests.support import manifests as m
from tests.support.h2client import H2Client
from tests.support.process import Fastingress, free_port, run_fastingress
from tests.support.scripted import ScriptedServer, header
from tests.support.upstream import EchoServer

P = "nginx.ingress.kubernetes.io/"


def configmap(name: str, data: dict[str, str], namespace: str = "default") -> str:
    lines = "".join(f"  {k}: {v!r}\n" for k, v in data.items())
    meta = f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
    return f"apiVersion: v1\nkind: ConfigMap\n{meta}data:\n{lines}"


class Stack:
    """The upstreams and the manifests of every case."""

    def __init__(self, echo: EchoServer, app: ScriptedServer, errors: ScriptedServer) -> None:
        self.echo = echo  # CORS and redirects
        self.app = app  # error pages and header rules
        self.errors = errors  # the error backend (answers X-Code)
        self.closed = free_port()  # nothing listens: 502
        self.fi: Fastingress | None = None

    @property
    def client(self) -> httpx.Client:
        assert self.fi is not None
        return httpx.Client(base_url=self.fi.base, timeout=5, follow_redirects=False)

    def manifests(self, path: Path) -> Path:
        echo, app, errors = self.echo.port, self.app.port, self.errors.port
        return m.write(
            path,
            m.service("echo"), m.endpoint_slice("echo", [echo]),
            m.service("app"), m.endpoint_slice("app", [app]),
            m.service("errors", port=8080), m.endpoint_slice("errors", [errors]),
            m.service("dead"), m.endpoint_slice("dead", [self.closed]),
            m.service("down"), m.endpoint_slice("down", [app], not_ready=[app]),
            *self.cors(), *self.redirects(), *self.error_pages(), *self.header_rules(),
        )

    @staticmethod
    def cors() -> list[str]:
        return [
            m.ingress("cors", [("cors.test", "/", "Prefix", "echo"),
                               ("cors.test", "/down", "Prefix", "down")],
                      annotations={
                          P + "enable-cors": "true",
                          P + "cors-allow-origin": "https://*.example.com, https://app.test:8443, bad origin",
                          P + "cors-expose-headers": "X-Total, X-Page",
                          P + "cors-max-age": "600",
                      }),
            m.ingress("star", [("star.test", "/", "Prefix", "echo")], annotations={
                P + "enable-cors": "true", P + "cors-allow-credentials": "false",
            }),
            # CORS with basic auth: the preflight (no credentials) is answered before the access
            # check; the 401 of the access check carries the CORS headers (the browser can read it).
            "apiVersion: v1\nkind: Secret\nmetadata: {name: users, namespace: default}\ntype: Opaque\n"
            "stringData: {auth: 'alice:{PLAIN}wonderland'}\n",
            m.ingress("cors-auth", [("auth.test", "/", "Prefix", "echo")], annotations={
                P + "enable-cors": "true", P + "cors-allow-origin": "https://app.example.com",
                P + "auth-type": "basic", P + "auth-secret": "users",
            }),
        ]

    @staticmethod
    def redirects() -> list[str]:
        return [
            m.ingress("moved", [("redir.test", "/old", "Prefix", "echo")], annotations={
                P + "permanent-redirect": "https://new.example.com$request_uri",
            }),
            m.ingress("maintenance", [("redir.test", "/shop", "Prefix", "echo")], annotations={
                P + "temporal-redirect": "https://status.example.com/maintenance?from=shop",
                P + "temporal-redirect-code": "307",
                P + "permanent-redirect": "https://ignored.example.com/",
            }),
            m.ingress("docs", [("docs.test", "/docs/(.*)", "ImplementationSpecific", "echo")], annotations={
                P + "use-regex": "true",
                P + "permanent-redirect": "https://docs.example.com/v2/$1$is_args$args",
                P + "permanent-redirect-code": "308",
            }),
            m.ingress("relative", [("rel.test", "/", "Prefix", "echo")], annotations={
                P + "temporal-redirect": "/elsewhere",
            }),
            m.ingress("root", [("root.test", "/", "Prefix", "echo")], annotations={P + "app-root": "/app"}),
            m.ingress("shop", [("shop.test", "/", "Prefix", "echo")], annotations={
                P + "from-to-www-redirect": "true", P + "server-alias": "store.test, boutique.test",
            }),
            m.ingress("two", [("www.two.test", "/", "Prefix", "echo")], annotations={
                P + "from-to-www-redirect": "true",
            }),
        ]

    @staticmethod
    def error_pages() -> list[str]:
        return [
            m.ingress("shop-errors", [("err.test", "/", "Prefix", "app"),
                                      ("err.test", "/dead", "Prefix", "dead"),
                                      ("err.test", "/down", "Prefix", "down")], annotations={
                P + "custom-http-errors": "404,502,503",
                P + "default-backend": "errors",
            }),
            m.ingress("keep", [("keep.test", "/", "Prefix", "app"), ("keep.test", "/dead", "Prefix", "dead")],
                      annotations={
                          P + "custom-http-errors": "404,502",
                          P + "disable-proxy-intercept-errors": "true",
                      }),
            m.ingress("own", [("own.test", "/", "Prefix", "app")],
                      annotations={P + "custom-http-errors": "404"}),
        ]

    @staticmethod
    def header_rules() -> list[str]:
        return [
            configmap("security", {"X-Frame-Options": "DENY", "X-Served-By": "fastingress edge"}),
            m.ingress("rules", [("hdr.test", "/", "Prefix", "app"), ("hdr.test", "/down", "Prefix", "down")],
                      annotations={
                          P + "proxy-redirect-from": "http://backend.internal:8080/",
                          P + "proxy-redirect-to": "https://hdr.test/",
                          P + "proxy-cookie-domain": "backend.internal hdr.test",
                          P + "proxy-cookie-path": "/api/ /",
                          P + "custom-headers": "security",
                          P + "connection-proxy-header": "close",
                      }),
            m.ingress("missing", [("missing.test", "/", "Prefix", "app")], annotations={
                P + "custom-headers": "nowhere",
            }),
        ]


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Stack]:
    with EchoServer("echo") as echo, ScriptedServer("app") as app, \
            ScriptedServer("errors", x_code=True) as errors:
        yield Stack(echo, app, errors)


@pytest.fixture(scope="module", params=["llhttp", "h11"])
def stack(
    request: pytest.FixtureRequest, upstreams: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """fastingress on one HTTP/1.1 path (HTTP/2 streams take the Session path on either)."""
    tmp = tmp_path_factory.mktemp(f"http-{request.param}")
    path = upstreams.manifests(tmp / "all.yaml")
    with run_fastingress(tmp, manifests=[path], workers=1, extra=("--http1-codec", request.param)) as fi:
        upstreams.fi = fi
        yield upstreams
        upstreams.fi = None


def seen_paths(server: EchoServer | ScriptedServer, prefix: str) -> list[str]:
    return [q["path"] for q in server.requests if q["path"].startswith(prefix)]


# -- CORS ------------------------------------------------------------------------------


def preflight(origin: str, method: str = "PUT") -> dict[str, str]:
    return {"Host": "cors.test", "Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type"}


def test_cors(stack: Stack) -> None:
    with stack.client as client:
        # A preflight with credentials from an origin the wildcard covers: answered here.
        before = seen_paths(stack.echo, "/api/items")
        r = client.options("/api/items", headers=preflight("https://shop.example.com"))
        assert r.status_code == 204 and r.content == b""
        assert r.headers["access-control-allow-origin"] == "https://shop.example.com"
        assert r.headers["access-control-allow-credentials"] == "true"
        assert r.headers["access-control-allow-methods"] == "GET, PUT, POST, DELETE, PATCH, OPTIONS"
        assert "Authorization" in r.headers["access-control-allow-headers"]
        assert r.headers["access-control-expose-headers"] == "X-Total, X-Page"
        assert r.headers["access-control-max-age"] == "600"
        assert r.headers["vary"] == "Origin"
        assert r.headers.get("content-length", "0") == "0"
        assert seen_paths(stack.echo, "/api/items") == before  # the upstream never saw it
        # Origins the list does not allow: no CORS headers, the request goes on as usual.
        for origin in ("https://a.b.example.com", "http://shop.example.com", "https://app.test",
                       "https://example.com", "https://shop.example.com.evil.test"):
            r = client.options("/api/items", headers=preflight(origin))
            assert r.status_code == 200 and r.json()["method"] == "OPTIONS", origin
            assert "access-control-allow-origin" not in r.headers, origin
        assert client.options("/", headers=preflight("https://APP.test:8443")).status_code == 204
        # A simple request from an allowed origin: the upstream's answer, with the headers.
        r = client.get("/list?page=2", headers={"Host": "cors.test", "Origin": "https://shop.example.com"})
        assert r.status_code == 200 and r.json()["path"] == "/list?page=2"
        assert r.headers["access-control-allow-origin"] == "https://shop.example.com"
        assert r.headers["access-control-allow-credentials"] == "true"
        # Our own answers carry them too: a Service without a ready endpoint (503).
        r = client.get("/down/x", headers={"Host": "cors.test", "Origin": "https://shop.example.com"})
        assert r.status_code == 503
        assert r.headers["access-control-allow-origin"] == "https://shop.example.com"
        # "*" (the default): every answer says *, even without an Origin; credentials off.
        r = client.get("/", headers={"Host": "star.test"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers and "vary" not in r.headers
        # An OPTIONS request that is not a preflight (no Access-Control-Request-Method) goes on.
        r = client.options("/", headers={"Host": "star.test", "Origin": "https://x.test"})
        assert r.status_code == 200 and r.json()["method"] == "OPTIONS"
        assert r.headers["access-control-allow-origin"] == "*"
        # With basic auth: the preflight never needs credentials; the 401 is readable cross-origin.
        origin = {"Host": "auth.test", "Origin": "https://app.example.com"}
        r = client.options("/private", headers={**origin, "Access-Control-Request-Method": "GET"})
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        r = client.get("/private", headers=origin)
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        assert r.headers["access-control-allow-credentials"] == "true"
        r = client.get("/private", headers=origin, auth=("alice", "wonderland"))
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"


async def test_cors_preflight_over_http2(stack: Stack) -> None:
    assert stack.fi is not None
    before = seen_paths(stack.echo, "/h2")
    stream = await trio.open_tcp_stream("127.0.0.1", stack.fi.http_port)
    async with stream:
        client = H2Client(stream)
        hdrs = [(k.lower().encode(), v.encode()) for k, v in preflight("https://shop.example.com").items()
                if k != "Host"]
        with trio.fail_after(5):
            r = await client.request(b"/h2", method=b"OPTIONS", authority=b"cors.test", headers=hdrs)
            denied = await client.request(b"/h2", method=b"OPTIONS", authority=b"cors.test",
                                          headers=[(b"origin", b"https://evil.test"), *hdrs[1:]])
    assert r.status == 204 and r.header(b"access-control-allow-origin") == b"https://shop.example.com"
    assert r.header(b"access-control-allow-credentials") == b"true"
    assert denied.status == 200 and denied.header(b"access-control-allow-origin") is None
    assert seen_paths(stack.echo, "/h2") == [*before, "/h2"]  # only the denied one went on


# -- redirects and aliases -------------------------------------------------------------


def test_redirects_and_aliases(stack: Stack) -> None:
    assert stack.fi is not None
    port = stack.fi.http_port
    with stack.client as client:
        def get(host: str, target: str) -> httpx.Response:
            return client.get(target, headers={"Host": host})

        r = get("redir.test", "/old/page?a=1&b=2")
        assert r.status_code == 301 and r.headers["location"] == "https://new.example.com/old/page?a=1&b=2"
        r = get("redir.test", "/shop/cart?x=1")  # temporal wins; nothing of the request is appended
        assert r.status_code == 307 and r.headers["location"] == "https://status.example.com/maintenance?from=shop"
        r = get("docs.test", "/docs/guide/intro?lang=en")
        assert r.status_code == 308 and r.headers["location"] == "https://docs.example.com/v2/guide/intro?lang=en"
        r = get("docs.test", "/docs/faq")
        assert r.headers["location"] == "https://docs.example.com/v2/faq"
        r = get("rel.test", "/anything?q=1")  # a path is made absolute (nginx's absolute_redirect)
        assert r.status_code == 302 and r.headers["location"] == "http://rel.test/elsewhere"
        # app-root: only "/" (the query is dropped, as nginx's return does); the rest is served
        r = get("root.test", "/?utm=1")
        assert r.status_code == 302 and r.headers["location"] == "http://root.test/app"
        r = client.get("/", headers={"Host": f"root.test:{port}"})
        assert r.headers["location"] == f"http://root.test:{port}/app"  # $http_host keeps the port
        assert get("root.test", "/app/x").json()["path"] == "/app/x"
        # from-to-www-redirect, both directions: 308, scheme, port and URI kept, one trailing / cut
        r = client.get("/cart/?id=7", headers={"Host": f"www.shop.test:{port}"})
        assert r.status_code == 308 and r.headers["location"] == f"http://shop.test:{port}/cart/?id=7"
        r = get("www.shop.test", "/list/")
        assert r.status_code == 308 and r.headers["location"] == "http://shop.test/list"
        assert get("www.shop.test", "/").headers["location"] == "http://shop.test"
        r = get("two.test", "/a?b=c")
        assert r.status_code == 308 and r.headers["location"] == "http://www.two.test/a?b=c"
        assert get("shop.test", "/x").status_code == 200  # the host itself is served
        assert get("www.two.test", "/x").status_code == 200
        # server-alias: the same routes under more names
        for alias in ("store.test", "boutique.test"):
            r = get(alias, "/item?id=1")
            assert r.status_code == 200 and r.json()["path"] == "/item?id=1"
            assert [v for k, v in r.json()["headers"] if k.lower() == "host"] == [alias]
        assert get("other.test", "/").status_code == 404
    assert not any(seen_paths(stack.echo, p) for p in ("/old", "/shop", "/docs"))


# -- custom error pages ----------------------------------------------------------------


def status_path(code: int, extra: str = "") -> str:
    return f"/items/9?status={code}{extra}"


def test_custom_http_errors(stack: Stack) -> None:
    with stack.client as client:
        # An intercepted upstream 404: the error backend's answer (its status: X-Code), nothing of
        # the upstream's; the request it got says what happened.
        r = client.get(status_path(404, "&q=a"), headers={"Host": "err.test", "Accept": "text/html",
                                                           "X-Request-ID": "req-42"})
        assert r.status_code == 404
        seen = r.json()
        assert seen["server"] == "errors" and seen["method"] == "GET"
        assert seen["path"] == "/?status=404&q=a"  # "/" with the request's query (nginx's rewrite)
        assert header(seen, "X-Code") == "404" and header(seen, "X-Format") == "text/html"
        assert header(seen, "X-Original-URI") == status_path(404, "&q=a")
        assert header(seen, "X-Namespace") == "default" and header(seen, "X-Ingress-Name") == "shop-errors"
        assert header(seen, "X-Service-Name") == "app" and header(seen, "X-Service-Port") == "80"
        assert header(seen, "X-Request-ID") == "req-42" and header(seen, "Host") == "err.test"
        assert header(seen, "X-Forwarded-For") == "127.0.0.1"
        # Codes not listed are relayed as they are.
        r = client.get(status_path(500), headers={"Host": "err.test"})
        assert r.status_code == 500 and r.json()["server"] == "app"
        # A request with a body: the body went to the upstream; the error page comes without it.
        r = client.post(status_path(404), content=b"x" * 50_000, headers={"Host": "err.test"})
        assert r.status_code == 404 and r.json()["server"] == "errors"
        assert r.json()["method"] == "POST" and r.json()["body_bytes"] == 0
        assert stack.app.requests[-1]["body_bytes"] == 50_000
        # HEAD stays HEAD, and has no body.
        r = client.head(status_path(404), headers={"Host": "err.test"})
        assert r.status_code == 404 and r.content == b""
        # Our own 502 (connection refused) is replaced too.
        r = client.get("/dead/x", headers={"Host": "err.test"})
        assert r.status_code == 502 and header(r.json(), "X-Code") == "502"
        assert header(r.json(), "X-Service-Name") == "dead"
        # No ready endpoint: the default-backend Service takes the whole request (X-Code 503).
        r = client.put("/down/thing?v=1", content=b"payload", headers={"Host": "err.test"})
        assert r.status_code == 503
        assert r.json()["path"] == "/down/thing?v=1" and r.json()["method"] == "PUT"
        assert r.json()["body_bytes"] == 7 and header(r.json(), "X-Code") == "503"
        # The connection stays usable after all of that (keep-alive through intercepts).
        assert client.get("/ok", headers={"Host": "err.test"}).json()["server"] == "app"
        # disable-proxy-intercept-errors: the upstream's 404 is kept; our own 502 is still
        # replaced, here by fastingress itself (no default backend anywhere).
        r = client.get(status_path(404), headers={"Host": "keep.test"})
        assert r.status_code == 404 and r.json()["server"] == "app"
        r = client.get("/dead", headers={"Host": "keep.test"})
        assert r.status_code == 502 and r.text == "502 Bad Gateway\n"
        # No error backend at all: the status, with our own short body instead of the upstream's.
        r = client.get(status_path(404), headers={"Host": "own.test"})
        assert r.status_code == 404 and r.text == "404 Not Found\n"
    assert all(q["server"] == "errors" for q in stack.errors.requests)


async def test_custom_http_errors_over_http2(stack: Stack) -> None:
    assert stack.fi is not None
    stream = await trio.open_tcp_stream("127.0.0.1", stack.fi.http_port)
    async with stream:
        client = H2Client(stream)
        with trio.fail_after(5):
            r = await client.request(status_path(404).encode(), authority=b"err.test")
            kept = await client.request(status_path(500).encode(), authority=b"err.test")
            dead = await client.request(b"/dead", authority=b"err.test")
    assert r.status == 404 and json.loads(r.body)["server"] == "errors"
    assert kept.status == 500 and json.loads(kept.body)["server"] == "app"
    assert dead.status == 502 and header(json.loads(dead.body), "X-Code") == "502"


def test_custom_http_errors_use_the_global_default_backend(tmp_path: Path, upstreams: Stack) -> None:
    path = upstreams.manifests(tmp_path / "all.yaml")
    extra = ("--default-backend-service", "default/errors")
    with run_fastingress(tmp_path, manifests=[path], workers=1, extra=extra) as fi, \
            httpx.Client(base_url=fi.base, timeout=5) as client:
        r = client.get(status_path(404), headers={"Host": "own.test"})
        assert r.status_code == 404 and r.json()["server"] == "errors"
        assert header(r.json(), "X-Ingress-Name") == "own"


# -- header rewriting ------------------------------------------------------------------


def test_header_rules(stack: Stack) -> None:
    with stack.client as client:
        def scripted(*headers: str, status: int = 200) -> httpx.Response:
            query = "&".join("h=" + quote(h, safe="") for h in headers)
            return client.get(f"/x?status={status}&{query}", headers={"Host": "hdr.test"})

        r = scripted("Location:http://backend.internal:8080/login?next=/a", status=302)
        assert r.status_code == 302 and r.headers["location"] == "https://hdr.test/login?next=/a"
        r = scripted("Location:http://other.internal/x", status=302)
        assert r.headers["location"] == "http://other.internal/x"
        r = scripted("Refresh:5; url=http://backend.internal:8080/r")
        assert r.headers["refresh"] == "5; url=https://hdr.test/r"
        r = scripted("Set-Cookie:a=1; Domain=.Backend.Internal; Path=/api/v1; HttpOnly",
                     "Set-Cookie:b=2; domain=other.test; path=/other",
                     "X-Frame-Options:SAMEORIGIN")
        assert r.headers.get_list("set-cookie") == [
            "a=1; Domain=.hdr.test; Path=/v1; HttpOnly", "b=2; domain=other.test; path=/other",
        ]
        assert r.headers.get_list("x-frame-options") == ["DENY"]  # replaced, not added
        assert r.headers["x-served-by"] == "fastingress edge"
        assert header(r.json(), "Connection") == "close"
        r = client.get("/down", headers={"Host": "hdr.test"})  # our own answers get them too
        assert r.status_code == 503 and r.headers["x-frame-options"] == "DENY"
        for _ in range(3):  # "Connection: close" upstream: a fresh upstream connection each time
            assert client.get("/again", headers={"Host": "hdr.test"}).status_code == 200
        # A missing ConfigMap: the Ingress's routes answer 503 (as ingress-nginx denies them)
        r = client.get("/", headers={"Host": "missing.test"})
        assert r.status_code == 503 and "ConfigMap default/nowhere not found" in r.text
    assert seen_paths(stack.app, "/again")
