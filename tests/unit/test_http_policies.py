"""The http area's worker policies, sans-I/O: CORS matching and headers, redirect templates,
header rewriting, error-page interception and ``decide.refetch``; and, through the in-memory
worker harness on every data path, that an error ``decide`` raises (503: no endpoint) is
answered with the route's response hooks and ends with its done hooks."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio

from fastingress.snapshot.schema import (
    Cors,
    Endpoint,
    ErrorPages,
    Forward,
    HeaderRules,
    Redirects,
    Route,
    RoutePolicy,
    Snapshot,
    Upstream,
    VirtualHost,
    WeightedBackend,
)
from tests.support import worker_harness
from tests.support.worker_harness import EchoUpstream, Harness, make_snapshot
from workers import routing
from workers.balance import Balancer
from workers.decide import Answer, Handoff, Proxy, refetch, refetch_info
from workers.heads import scan_request
from workers.policies import cors, headers
from workers.policy import CONTENT, Policy, Refetch, RequestCtx, compile_route
from workers.routing import RouteTable

H = list[tuple[bytes, bytes]]


def route(policy: RoutePolicy, *, regex: str | None = None, path: str = "/") -> Route:
    return Route(path, "Prefix", Forward((WeightedBackend("default/app:80"),)), ingress="shop/web",
                 service="shop/app:8080", policy=policy, regex=regex)


def ctx(r: Route, target: bytes = b"/", *, method: bytes = b"GET", host: bytes = b"shop.test",
        headers: H | None = None, tls: bool = False) -> RequestCtx:
    path, _, query = target.decode().partition("?")
    return RequestCtx(method=method, target=target, path=path, query="?" + query if query else "", host=host,
                      headers=headers or [], client_ip="10.0.0.9", tls=tls, route=r, vhost=None, now=0.0)


def compiled(r: Route, snapshot: Snapshot | None = None) -> tuple[Policy, ...]:
    found = compile_route(r, snapshot or Snapshot(), routing.COMPILERS)
    assert found is not None
    return found.policies


# -- CORS ------------------------------------------------------------------------------


def test_origin_pattern_matches_whole_origins_and_one_label_wildcards() -> None:
    pattern = cors.origin_pattern(("https://*.example.com", "http://app.test:8080", "null"))
    assert pattern is not None
    for ok in ("https://a.example.com", "HTTPS://A-b.Example.COM", "http://app.test:8080", "null"):
        assert pattern.fullmatch(ok), ok
    for bad in ("https://example.com", "https://a.b.example.com", "https://a.example.com:8443",
                "http://app.test", "https://a.example.com.evil.test", "xhttps://a.example.com", "nul"):
        assert not pattern.fullmatch(bad), bad
    assert cors.origin_pattern(()) is None


def test_cors_hooks() -> None:
    r = route(RoutePolicy(cors=Cors(allow_origins=("https://*.example.com",), expose_headers="X-A")))
    (policy,) = compiled(r)
    assert policy.request is not None and policy.response is not None
    pre = [(b"origin", b"https://a.example.com"), (b"access-control-request-method", b"PUT")]
    answer = policy.request(ctx(r, method=b"OPTIONS", headers=pre))
    assert isinstance(answer, Answer) and answer.status == 204 and answer.body == b""
    assert policy.request(ctx(r, method=b"OPTIONS", headers=pre[:1])) is None  # not a preflight
    assert policy.request(ctx(r, method=b"GET", headers=pre)) is None
    assert policy.request(ctx(r, method=b"OPTIONS", headers=[(b"origin", b"https://x.test"), pre[1]])) is None
    out: H = [(b"access-control-allow-origin", b"*"), (b"content-type", b"text/plain")]
    policy.response(ctx(r, headers=pre[:1]), 200, out)
    assert out == [
        (b"content-type", b"text/plain"), (b"access-control-allow-origin", b"https://a.example.com"),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-allow-methods", b"GET, PUT, POST, DELETE, PATCH, OPTIONS"),
        (b"access-control-allow-headers", Cors().allow_headers.encode()),
        (b"access-control-expose-headers", b"X-A"), (b"access-control-max-age", b"1728000"),
        (b"vary", b"Origin"),
    ]
    untouched: H = [(b"access-control-allow-origin", b"https://up.test")]
    policy.response(ctx(r, headers=[(b"origin", b"https://evil.test")]), 200, untouched)
    assert untouched == [(b"access-control-allow-origin", b"https://up.test")]  # not allowed: nothing
    star = route(RoutePolicy(cors=Cors(allow_credentials=False)))
    (any_origin,) = compiled(star)
    assert any_origin.response is not None
    got: H = []
    any_origin.response(ctx(star), 404, got)
    assert (b"access-control-allow-origin", b"*") in got and all(n != b"vary" for n, _ in got)
    assert all(n != b"access-control-allow-credentials" for n, _ in got)
    assert compile_route(route(RoutePolicy()), Snapshot(), routing.COMPILERS) is None  # no cost


# -- redirects -------------------------------------------------------------------------


def location(answer: object) -> str:
    assert isinstance(answer, Answer)
    return dict(answer.extra)[b"location"].decode()


def test_redirect_templates_expand_nginx_variables() -> None:
    url = "https://x.test/$1/${2}$is_args$args|$uri|$request_uri|$host|$http_host|$scheme|$query_string|$3"
    r = route(RoutePolicy(redirects=Redirects(url=url, code=308)), regex="^/(a)/(b+)")
    (policy,) = compiled(r)
    assert policy.request is not None
    answer = policy.request(ctx(r, b"/a/bb/c?x=1&y=2", host=b"Shop.Test:8080", tls=True))
    assert isinstance(answer, Answer) and answer.status == 308
    assert location(answer) == ("https://x.test/a/bb?x=1&y=2|/a/bb/c|/a/bb/c?x=1&y=2|shop.test|Shop.Test:8080"
                                "|https|x=1&y=2|")
    no_query = policy.request(ctx(r, b"/a/b"))
    assert location(no_query).startswith("https://x.test/a/b|")
    absolute = route(RoutePolicy(redirects=Redirects(url="https://n.test$request_uri", code=301)))
    (p2,) = compiled(absolute)
    assert p2.request is not None
    assert location(p2.request(ctx(absolute, b"http://shop.test/p?q=1"))) == "https://n.test/p?q=1"
    relative = route(RoutePolicy(redirects=Redirects(url="/moved$is_args$args", code=302)))
    (p3,) = compiled(relative)
    assert p3.request is not None
    assert location(p3.request(ctx(relative, b"/x?a=b", host=b"shop.test:81"))) == "http://shop.test/moved?a=b"


def test_app_root_and_www_redirects() -> None:
    r = route(RoutePolicy(redirects=Redirects(app_root="/app")))
    (policy,) = compiled(r)
    assert policy.request is not None
    assert location(policy.request(ctx(r, b"/?x=1", host=b"shop.test:8080"))) == "http://shop.test:8080/app"
    assert policy.request(ctx(r, b"/other")) is None
    www = route(RoutePolicy(redirects=Redirects(to_host="shop.test", code=308)))
    (to_host,) = compiled(www)
    assert to_host.request is not None
    assert location(to_host.request(ctx(www, b"/a/?b=c", host=b"www.shop.test:8443", tls=True))) == \
        "https://shop.test:8443/a/?b=c"
    assert location(to_host.request(ctx(www, b"/list/", host=b"www.shop.test"))) == "http://shop.test/list"
    assert location(to_host.request(ctx(www, b"/", host=b"[::1]"))) == "http://shop.test"


# -- header rules ----------------------------------------------------------------------


def test_proxy_redirect_rewrites_location_and_refresh() -> None:
    rewrite = headers.redirect_rewriter("http://backend:8080/", "https://shop.test/")
    assert rewrite(b"location", b"http://backend:8080/login?a=1") == b"https://shop.test/login?a=1"
    assert rewrite(b"location", b"HTTP://backend:8080/x") == b"HTTP://backend:8080/x"  # case-sensitive
    assert rewrite(b"location", b"/relative") == b"/relative"
    assert rewrite(b"refresh", b"3; URL=http://backend:8080/r") == b"3; URL=https://shop.test/r"
    assert rewrite(b"refresh", b"3") == b"3"


def test_proxy_cookie_domain_and_path() -> None:
    rewrite = headers.cookie_rewriter(("backend.internal", "shop.test"), ("/api/", "/"))
    assert rewrite(b"a=1; Domain=.Backend.Internal; Path=/api/v1; Secure") == \
        b"a=1; Domain=.shop.test; Path=/v1; Secure"
    assert rewrite(b"a=1;domain=backend.internal;path=/API/") == b"a=1;domain=shop.test;path=/API/"
    assert rewrite(b"a=1; Domain=other.backend.internal") == b"a=1; Domain=other.backend.internal"
    assert rewrite(b"domain=backend.internal") == b"domain=backend.internal"  # the cookie's own name=value
    only_path = headers.cookie_rewriter(None, ("/", "/app/"))
    assert only_path(b"s=1; Path=/; HttpOnly") == b"s=1; Path=/app/; HttpOnly"


def test_custom_headers_replace_and_connection_goes_upstream() -> None:
    rules = HeaderRules(response=(("X-Frame-Options", "DENY"),), connection="close")
    r = route(RoutePolicy(headers=rules))
    response_policy, connection_policy = compiled(r)
    assert response_policy.response is not None and connection_policy.request is not None
    out: H = [(b"x-frame-options", b"SAMEORIGIN"), (b"x-other", b"1")]
    response_policy.response(ctx(r), 200, out)
    assert out == [(b"x-other", b"1"), (b"x-frame-options", b"DENY")]
    c = ctx(r)
    connection_policy.request(c)
    assert c.upstream_headers == [(b"connection", b"close")]


# -- error pages -----------------------------------------------------------------------


def error_route(pages: ErrorPages) -> Route:
    return route(RoutePolicy(errors=pages))


def test_intercept_and_unavailable() -> None:
    r = error_route(ErrorPages(codes=(404, 502), upstream="shop/errors:0"))
    (policy,) = compiled(r)
    assert policy.intercept is not None and policy.unavailable is not None
    c = ctx(r, b"/p?q=1", headers=[(b"accept", b"application/json")])
    fetch = policy.intercept(c, 404, [])
    assert fetch == Refetch(404, "shop/errors:0", b"/?q=1", (
        (b"x-code", b"404"), (b"x-format", b"application/json"), (b"x-original-uri", b"/p?q=1"),
        (b"x-namespace", b"shop"), (b"x-ingress-name", b"web"), (b"x-service-name", b"app"),
        (b"x-service-port", b"8080"),
    ))
    assert policy.intercept(c, 500, []) is None
    assert policy.intercept(c, 502, None) is not None  # our own 502 too
    assert policy.intercept(c, 404, None) is None  # (we never generate a 404 for an upstream)
    whole = policy.unavailable(c, Upstream("shop/app:8080"))
    assert whole is not None and whole.target is None and whole.upstream == "shop/errors:0"
    assert (b"x-code", b"503") in whole.headers and all(n != b"x-original-uri" for n, _ in whole.headers)
    kept = error_route(ErrorPages(codes=(404, 502, 503), intercept=False))
    (keep,) = compiled(kept, Snapshot(default_action=Forward((WeightedBackend("default/errors:80"),))))
    assert keep.intercept is not None and keep.unavailable is not None
    assert keep.intercept(ctx(kept), 404, []) is None  # disable-proxy-intercept-errors
    page = keep.intercept(ctx(kept), 502, None)
    assert page is not None and page.upstream == "default/errors:80"  # the global default backend
    unavailable = keep.unavailable(ctx(kept), Upstream("x"))
    assert unavailable is not None and unavailable.target == b"/"


def test_refetch_decisions() -> None:
    errors_up = Upstream("shop/errors:0", endpoints=(Endpoint("10.0.0.5", 8080),))
    empty = Upstream("shop/empty:0")
    grpc = Upstream("shop/grpc:0", endpoints=(Endpoint("10.0.0.6", 50051),), protocol="GRPC")
    table = RouteTable.compile(Snapshot(virtual_hosts=(VirtualHost("shop.test"),),
                                        upstreams=(errors_up, empty, grpc)))
    r = error_route(ErrorPages(codes=(404,)))
    info = scan_request([(b"host", b"shop.test"), (b"content-length", b"3"), (b"x-code", b"evil"),
                         (b"accept", b"*/*"), (b"x-request-id", b"rid")])
    info.headers.extend([(b"x-forwarded-for", b"1.2.3.4"), (b"host", b"upstream.vhost")])
    fresh = refetch_info(info)
    assert fresh.headers == [(b"x-code", b"evil"), (b"accept", b"*/*")] and not fresh.has_body
    assert fresh.host == b"shop.test" and fresh.request_id == b"rid"
    c = ctx(r)
    c.intercept_hooks = (lambda *a: None,)
    fetch = Refetch(404, "shop/errors:0", b"/", ((b"x-code", b"404"),))
    decision = refetch(table, Balancer(), fetch, fresh, c, b"/orig")
    assert isinstance(decision, Proxy) and decision.target == b"/" and decision.primary == ("10.0.0.5", 8080)
    assert decision.host == b"shop.test" and (b"x-code", b"404") in fresh.headers
    assert (b"x-code", b"evil") not in fresh.headers  # replaced, as proxy_set_header does
    assert c.intercept_hooks == ()  # the error page itself is never intercepted
    for name in ("shop/empty:0", "shop/grpc:0", "nowhere", None):
        answer = refetch(table, Balancer(), fetch._replace(upstream=name), refetch_info(info), c, b"/")
        assert isinstance(answer, Answer) and answer.status == 404 and answer.ctx is c
    whole = refetch(table, Balancer(), fetch._replace(target=None), refetch_info(info), c, b"/orig", 7)
    assert isinstance(whole, Proxy) and whole.target == b"/orig" and whole.limit == 7
    external = Upstream("shop/ext:80", external_name="errors.example.com", port=80)
    table = RouteTable.compile(Snapshot(upstreams=(external,)))
    resolve = refetch(table, Balancer(), fetch._replace(upstream="shop/ext:80"), refetch_info(info), c, b"/")
    assert isinstance(resolve, Handoff) and resolve.reason == "resolve"


# -- decide's errors carry the route's policies, on every data path ---------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["h11", "llhttp-session", "core"])
async def test_errors_decide_raises_get_response_and_done_hooks(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setattr(worker_harness, "MODE", mode)
    done: list[str] = []

    def compile(r: Route, snapshot: Snapshot) -> Sequence[Policy]:
        def respond(c: RequestCtx, status: int, out: H) -> None:
            out.append((b"x-seen", b"%d" % status))

        return (Policy(CONTENT, response=respond, done=lambda c: done.append(c.path)),)

    monkeypatch.setattr(routing, "COMPILERS", (compile,))
    async with trio.open_nursery() as nursery:
        h = Harness(nursery, make_snapshot(endpoints=()), EchoUpstream())
        client = h.client()
        resp = await client.request(target=b"/nothing-ready")
        assert resp.status == 503 and resp.header(b"x-seen") == b"503"
        await trio.testing.wait_all_tasks_blocked()
        assert done == ["/nothing-ready"]
        nursery.cancel_scope.cancel()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["h11", "llhttp-session", "core"])
async def test_a_failed_externalname_lookup_gets_the_error_page(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """custom-http-errors 502 on an ExternalName route whose lookup fails: the error backend
    answers (the core's lookup runs in a task: the request must still be at hand)."""
    monkeypatch.setattr(worker_harness, "MODE", mode)

    async def resolve(name: str, port: int) -> tuple[str, ...]:
        raise OSError("Name or service not known")

    broken = Upstream("default/app:80", external_name="broken.example", port=80)
    errors_up = Upstream("default/errors:0", endpoints=(Endpoint("10.0.0.7", 8080),))
    snapshot = make_snapshot(upstream=broken, extra_upstreams=(errors_up,))
    first = snapshot.virtual_hosts[0].routes[0]
    pages = RoutePolicy(errors=ErrorPages(codes=(502,), upstream="default/errors:0"))
    routes = (Route(first.path, first.path_type, first.action, ingress=first.ingress, service=first.service,
                    policy=pages),)
    snapshot = Snapshot(virtual_hosts=(VirtualHost("example.com", routes),), upstreams=snapshot.upstreams)
    async with trio.open_nursery() as nursery:
        up = EchoUpstream()
        h = Harness(nursery, snapshot, up, resolve=resolve)
        client = h.client()
        resp = await client.request(target=b"/x?y=1")
        assert resp.status == 200  # the error backend's own answer
        assert up.requests[-1].address == ("10.0.0.7", 8080)
        assert up.requests[-1].header(b"x-code") == b"502" and up.requests[-1].target == b"/?y=1"
        assert (await client.request(target=b"/again")).status == 200  # the connection goes on
        nursery.cancel_scope.cancel()
