"""External auth, the pure parts: nginx variable templates, the annotation parsers, the
translation into ``ExternalAuth`` (ConfigMaps, fail closed), the cache rules and cache, and
the decision a policy takes from an auth answer.  Sans-I/O, fake clocks."""

from __future__ import annotations

import base64
import email.utils
from typing import Any

import pytest

from fastingress.explain import ExplainRequest, explain
from fastingress.snapshot.nginxvars import TemplateError, parse_template, template_text
from fastingress.snapshot.schema import CacheValid, ExternalAuth, Forward, Respond, Route, VirtualHost
from fastingress.translate import TranslateOptions, translate
from fastingress.translate.annotations import PREFIX, parse_annotations
from fastingress.translate.incremental import Translator
from fastingress.translate.policy_extauth import (
    parse_auth_method,
    parse_auth_signin,
    parse_auth_url,
    parse_cache_duration,
    parse_cache_key,
    parse_configmap_ref,
    parse_go_bool,
    parse_response_headers,
    signin_template,
)
from workers.authclient import AuthAnswer
from workers.heads import RequestInfo
from workers.nginxvars import compile_template, remote_user
from workers.policies.extauth import AuthCache, BadURL, Outcome, _Spec, cache_seconds, parse_url
from workers.policy import Answer, RequestCtx

# --- templates ------------------------------------------------------------------------------


def test_templates_split_text_and_variables() -> None:
    assert parse_template("https://$host/oauth2/start?rd=$escaped_request_uri") == (
        "https://",
        "host",
        "/oauth2/start?rd=",
        "escaped_request_uri",
        "",
    )
    assert parse_template("plain") == ("plain",)
    assert parse_template("") == ("",)
    assert parse_template("$remote_user$http_authorization") == (
        "",
        "remote_user",
        "",
        "http_authorization",
        "",
    )
    assert parse_template("${HOST}x-$Arg_Page") == (
        "",
        "host",
        "x-",
        "arg_page",
        "",
    )  # names are case-insensitive
    assert template_text(parse_template("a$host/b")) == "a${host}/b"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("http://$hots/x", "unknown variable $hots"),
        ("a $ b", "invalid variable"),
        ("$1", "captures"),
        ("$http_", "unknown variable $http_"),
        ("${host", "invalid variable"),
    ],
)
def test_templates_refuse_what_nginx_or_fastingress_cannot_expand(text: str, words: str) -> None:
    with pytest.raises(TemplateError, match=words.replace("$", r"\$")):
        parse_template(text)


def test_an_unknown_variable_says_what_was_meant() -> None:
    with pytest.raises(TemplateError) as caught:
        parse_template("$reqest_uri")
    assert caught.value.suggestion == "$request_uri"


def _ctx(
    *,
    target: bytes = b"/p/a?x=1&Page=2",
    host: bytes = b"App.Test:8080",
    headers: list[tuple[bytes, bytes]] | None = None,
    tls: bool = False,
    method: bytes = b"GET",
) -> RequestCtx:
    route = Route(
        path="/p", path_type="Prefix", action=Forward(()), ingress="shop/web", service="shop/web-svc:8080"
    )
    path, _, query = target.decode().partition("?")
    info = RequestInfo()
    info.request_id = b"rid-1"
    return RequestCtx(
        method=method,
        target=target,
        path=path,
        query=("?" + query) if query else "",
        host=host,
        headers=list(headers or []),
        client_ip="192.0.2.7",
        tls=tls,
        route=route,
        vhost=VirtualHost(hostname="app.test"),
        now=100.0,
        info=info,
    )


def render(template: str, ctx: RequestCtx) -> str:
    return compile_template(parse_template(template))(ctx)


def test_variables_of_a_request() -> None:
    ctx = _ctx(
        headers=[
            (b"x-user", b"a"),
            (b"x-user", b"b"),
            (b"cookie", b"sid=s1; theme=dark"),
            (b"authorization", b"Basic " + base64.b64encode(b"alice:secret")),
        ]
    )
    assert (
        render("$host|$http_host|$server_name|$best_http_host", ctx)
        == "app.test|App.Test:8080|app.test|App.Test:8080"
    )
    assert render("$scheme|$https|$pass_access_scheme|$request_method", ctx) == "http||http|GET"
    assert (
        render("$request_uri|$uri|$args|$is_args|$query_string", ctx)
        == "/p/a?x=1&Page=2|/p/a|x=1&Page=2|?|x=1&Page=2"
    )
    assert render("$escaped_request_uri", ctx) == "%2Fp%2Fa%3Fx%3D1%26Page%3D2"
    assert render("$arg_x,$arg_page,$arg_none.", ctx) == "1,2,."
    assert render("$http_x_user|$cookie_theme|$cookie_none|", ctx) == "a, b|dark||"
    assert render("$remote_addr $remote_user $request_id", ctx) == "192.0.2.7 alice rid-1"
    assert (
        render("$namespace/$ingress_name $service_name:$service_port $location_path", ctx)
        == "shop/web web-svc:8080 /p"
    )
    assert render("$host", _ctx(host=b"[::1]:443", tls=True)) == "[::1]"
    assert render("$host|$https|$is_args", _ctx(host=b"", tls=True, target=b"/")) == "app.test|on|"


def test_remote_user_only_from_basic_credentials() -> None:
    assert remote_user(_ctx(headers=[(b"authorization", b"Bearer abc")])) == ""
    assert remote_user(_ctx(headers=[(b"authorization", b"Basic !!!")])) == ""
    assert remote_user(_ctx(headers=[(b"authorization", b"basic " + base64.b64encode(b"bob:"))])) == "bob"
    assert remote_user(_ctx()) == ""


# --- annotation parsers ---------------------------------------------------------------------


def test_auth_url_values() -> None:
    assert parse_auth_url(" http://auth.svc.cluster.local/check ") == ("http://auth.svc.cluster.local/check",)
    assert parse_auth_url("HTTPS://$host/oauth2/auth") == ("https://", "host", "/oauth2/auth")
    assert parse_auth_url("http://demo-auth.default.svc?code=200") == (
        "http://demo-auth.default.svc?code=200",
    )
    assert parse_auth_url("http://[::1]:8080/x") == ("http://[::1]:8080/x",)
    for bad, words in [
        ("ftp://auth/x", "http or https"),
        ("auth.svc/check", "absolute URL"),
        ("http:///check", "no host"),
        ("https://invalid..auth.url", "invalid URL host"),
        ("http://a b/", "expected"),
        ("http://user@auth/", "expected"),
        ("http://auth:99999/", "invalid port"),
        ("http://$hots/x", "unknown variable"),
        ("http://auth/x#frag", "expected"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_auth_url(bad)


def test_signin_urls_get_the_original_url_as_ingress_nginx_builds_it() -> None:
    original = "$pass_access_scheme://$http_host$escaped_request_uri"
    assert signin_template("http://$host/auth/start", None) == parse_template(
        f"http://$host/auth/start?rd={original}"
    )
    assert signin_template("https://a/start?x=1", "orig") == parse_template(
        f"https://a/start?x=1&orig={original}"
    )
    assert signin_template("https://a/start?rd=foo", None) == parse_template("https://a/start?rd=foo")
    assert signin_template("https://a/start?rd=", None) == parse_template(
        f"https://a/start?rd=&rd={original}"
    )
    assert signin_template("https://a/start?", None) == parse_template(f"https://a/start?rd={original}")
    assert parse_auth_signin("/login") == "/login"
    with pytest.raises(ValueError, match="http"):
        parse_auth_signin("ftp://x/start")
    with pytest.raises(ValueError, match="expected a URL"):
        parse_auth_signin("javascript:alert(1)")


def test_cache_durations_as_proxy_cache_valid_reads_them() -> None:
    assert parse_cache_duration("200 202 401 5m") == (CacheValid((200, 202, 401), 300.0),)
    assert parse_cache_duration("200 202 10m, 401 30s") == (
        CacheValid((200, 202), 600.0),
        CacheValid((401,), 30.0),
    )
    assert parse_cache_duration("5m") == (CacheValid((200, 301, 302), 300.0),)  # only a time: nginx's codes
    assert parse_cache_duration("any 1h 30m") == (CacheValid((), 5400.0),)
    assert parse_cache_duration("200 500ms") == (CacheValid((200,), 0.5),)
    for bad in ("10m 200", "200", "200 abc 5m", "", " , ", "999 5m", "200 5x"):
        with pytest.raises(ValueError):
            parse_cache_duration(bad)


def test_other_parsers() -> None:
    assert parse_response_headers("UserID, UserRole,, x-auth_user, userid") == (
        "userid",
        "userrole",
        "x-auth_user",
    )
    with pytest.raises(ValueError, match="header name"):
        parse_response_headers("X-Ok, Bad Header")
    assert parse_auth_method("POST") == "POST"
    with pytest.raises(ValueError) as caught:
        parse_auth_method("post")
    assert getattr(caught.value, "suggestion", "") == "POST"
    assert parse_cache_key("$remote_user$http_authorization") == (
        "",
        "remote_user",
        "",
        "http_authorization",
        "",
    )
    with pytest.raises(ValueError):
        parse_cache_key("$host:$uri")  # ":" is not in ingress-nginx's NGINXVariable
    assert parse_configmap_ref("auth-headers") == "auth-headers"
    assert parse_configmap_ref("ns/auth-headers") == "ns/auth-headers"
    with pytest.raises(ValueError):
        parse_configmap_ref("a/b/c")
    assert parse_go_bool("True") is True and parse_go_bool("0") is False
    with pytest.raises(ValueError):
        parse_go_bool("yes")


def test_companions_without_auth_url_are_findings_not_protection() -> None:
    parsed, _ = parse_annotations(
        {PREFIX + "auth-signin": "https://x/start", PREFIX + "auth-method": "POST"}
    )
    assert parsed.closed == () and parsed.extauth.url is None
    result = translate(
        [_ingress({PREFIX + "auth-signin": "https://x/start", PREFIX + "auth-cache-key": "$host"})]
    )
    messages = {d.field: d.message for d in result.diagnostics if d.name == "web"}
    assert (
        messages[f"metadata.annotations[{PREFIX}auth-signin]"] == "has no effect without `auth-url`; ignored"
    )
    assert (
        messages[f"metadata.annotations[{PREFIX}auth-cache-key]"]
        == "has no effect without `auth-url`; ignored"
    )
    result = translate([_ingress({PREFIX + "auth-url": "http://a/", PREFIX + "auth-cache-duration": "5m"})])
    assert any("without `auth-cache-key`" in d.message for d in result.diagnostics)


# --- translation ----------------------------------------------------------------------------

SERVICE = {
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"ports": [{"port": 80}]},
}


def _ingress(annotations: dict[str, str], name: str = "web", path: str = "/") -> dict[str, Any]:
    backend = {"service": {"name": "web", "port": {"number": 80}}}
    return {
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
        "spec": {
            "rules": [
                {
                    "host": "a.test",
                    "http": {"paths": [{"path": path, "pathType": "Prefix", "backend": backend}]},
                }
            ]
        },
    }


def _configmap(name: str, data: object, namespace: str = "shop") -> dict[str, Any]:
    return {"kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": data}


def _route(result: Any) -> Route:
    """The route of path "/" (of the one host)."""
    (vhost,) = result.snapshot.virtual_hosts
    (route,) = [r for r in vhost.routes if r.path == "/"]
    assert isinstance(route, Route)
    return route


def test_an_ingress_with_auth_url_gets_external_auth() -> None:
    route = _route(
        translate(
            [
                SERVICE,
                _ingress(
                    {
                        PREFIX + "auth-url": "http://auth.shop.svc/check",
                        PREFIX + "auth-signin": "https://$host/oauth2/start",
                        "fastingress.io/auth-response-headers": "X-User",
                        PREFIX + "auth-cache-key": "$http_authorization",
                        PREFIX + "auth-keepalive": "-5",
                        PREFIX + "auth-keepalive-timeout": "30s",
                    }
                ),
            ]
        )
    )
    auth = route.policy.external_auth
    assert isinstance(route.action, Forward) and auth is not None
    assert auth.url == ("http://auth.shop.svc/check",)
    assert (
        template_text(auth.signin)
        == "https://${host}/oauth2/start?rd=${pass_access_scheme}://${http_host}${escaped_request_uri}"
    )
    assert auth.response_headers == ("x-user",)
    assert auth.cache_valid == (CacheValid((200, 202, 401), 300.0),)  # authreq.DefaultCacheDuration
    assert auth.cache_zone == "a.test / Prefix"
    assert auth.keepalive == 0 and auth.keepalive_timeout == 30.0  # negative: 0, as authreq clamps it


def test_auth_proxy_set_headers_reads_a_configmap_of_the_namespace() -> None:
    annotations = {PREFIX + "auth-url": "http://auth/", PREFIX + "auth-proxy-set-headers": "hdrs"}
    data = {"X-Custom": "42", "X-Orig": "$scheme://$http_host$request_uri", "Content-Length": "9"}
    result = translate([SERVICE, _ingress(annotations), _configmap("hdrs", data)])
    auth = _route(result).policy.external_auth
    assert auth is not None
    assert [(h.name, h.value) for h in auth.proxy_set_headers] == [
        ("x-custom", ("42",)),
        ("x-orig", ("", "scheme", "://", "http_host", "", "request_uri", "")),
    ]
    assert any(d.kind == "ConfigMap" and "frames itself" in d.message for d in result.diagnostics)


@pytest.mark.parametrize(
    ("objects", "words"),
    [
        ([], "names ConfigMap shop/hdrs, which does not exist"),
        ([_configmap("hdrs", {"X-Custom": "42"}, namespace="other")], "does not exist"),
        ([_configmap("hdrs", {"Bad Header": "1"})], "is not a header name"),
        ([_configmap("hdrs", {"X-A": "$nope"})], "unknown variable $nope"),
        ([_configmap("hdrs", ["x"])], "its data is not a map"),
    ],
)
def test_a_missing_or_invalid_configmap_fails_closed(objects: list[dict[str, Any]], words: str) -> None:
    annotations = {PREFIX + "auth-url": "http://auth/", PREFIX + "auth-proxy-set-headers": "hdrs"}
    result = translate([SERVICE, _ingress(annotations), *objects])
    route = _route(result)
    assert isinstance(route.action, Respond) and route.action.status == 503
    assert words in route.action.body and route.policy.external_auth is None
    opened = translate([SERVICE, _ingress(annotations), *objects], TranslateOptions(unsafe_fail_open=True))
    assert isinstance(_route(opened).action, Forward)


def test_a_configmap_of_another_namespace_is_refused() -> None:
    annotations = {PREFIX + "auth-url": "http://auth/", PREFIX + "auth-proxy-set-headers": "other/hdrs"}
    result = translate([SERVICE, _ingress(annotations), _configmap("hdrs", {"X-A": "1"}, namespace="other")])
    action = _route(result).action
    assert isinstance(action, Respond) and "another namespace" in action.body


def test_a_bad_value_of_any_auth_key_fails_closed() -> None:
    for key, value in [
        ("auth-url", "auth"),
        ("auth-method", "FETCH"),
        ("auth-response-headers", "a b"),
        ("auth-cache-duration", "soon"),
        ("auth-signin", "ftp://x"),
        ("auth-always-set-cookie", "yes"),
    ]:
        annotations = {PREFIX + "auth-url": "http://auth/", PREFIX + key: value}
        action = _route(translate([SERVICE, _ingress(annotations)])).action
        assert isinstance(action, Respond) and action.status == 503 and key in action.body, key
    # a keep-alive knob is not a guard: a bad value keeps the default (a warning)
    result = translate(
        [SERVICE, _ingress({PREFIX + "auth-url": "http://auth/", PREFIX + "auth-keepalive": "many"})]
    )
    auth = _route(result).policy.external_auth
    assert auth is not None and auth.keepalive == 32
    assert any(d.severity == "warning" and "auth-keepalive" in d.field for d in result.diagnostics)


def test_the_incremental_translator_follows_configmap_changes() -> None:
    annotations = {PREFIX + "auth-url": "http://auth/", PREFIX + "auth-proxy-set-headers": "hdrs"}
    other = _ingress({}, name="plain", path="/plain")
    states = [
        [SERVICE, _ingress(annotations), other],
        [SERVICE, _ingress(annotations), other, _configmap("hdrs", {"X-A": "1"})],
        [SERVICE, _ingress(annotations), other, _configmap("hdrs", {"X-A": "2"})],
        [SERVICE, _ingress(annotations), other, _configmap("hdrs", {"X-A": "$nope"})],
        [SERVICE, _ingress(annotations), other],
    ]
    translator = Translator(TranslateOptions())
    for objects in states:
        assert translator.translate(objects) == translate(objects)
    # the fast path (same positions, new versions of the same objects) too
    base = [SERVICE, _ingress(annotations), other, _configmap("hdrs", {"X-A": "1"})]
    translator = Translator(TranslateOptions())
    translator.translate(base)
    for value in ("2", "3"):
        changed = [*base[:3], _configmap("hdrs", {"X-A": value})]
        got = translator.translate(changed)
        assert got == translate(changed)
        auth = _route(got).policy.external_auth
        assert auth is not None and auth.proxy_set_headers[0].value == (value,)


# --- the cache ------------------------------------------------------------------------------

RULES = (CacheValid((200, 202), 600.0), CacheValid((401,), 30.0), CacheValid((), 5.0))


def test_how_long_an_answer_is_cached() -> None:
    wall = 1_000_000.0
    assert cache_seconds(RULES, 200, [], wall=wall) == 600.0
    assert cache_seconds(RULES, 401, [], wall=wall) == 30.0
    assert cache_seconds(RULES, 403, [], wall=wall) == 5.0  # "any"
    assert cache_seconds(RULES[:2], 403, [], wall=wall) == 0.0
    assert cache_seconds(RULES, 200, [(b"set-cookie", b"a=1")], wall=wall) == 0.0
    assert cache_seconds(RULES, 200, [(b"vary", b"*")], wall=wall) == 0.0
    assert cache_seconds(RULES, 200, [(b"cache-control", b"no-store")], wall=wall) == 0.0
    assert cache_seconds(RULES, 200, [(b"cache-control", b"Private, max-age=60")], wall=wall) == 0.0
    assert cache_seconds(RULES, 200, [(b"cache-control", b"max-age=60")], wall=wall) == 60.0
    assert cache_seconds(RULES, 200, [(b"cache-control", b"max-age=60, s-maxage=7")], wall=wall) == 7.0
    assert cache_seconds(RULES, 200, [(b"cache-control", b"max-age=0")], wall=wall) == 0.0
    assert (
        cache_seconds(RULES, 200, [(b"x-accel-expires", b"9"), (b"cache-control", b"no-cache")], wall=wall)
        == 9.0
    )
    assert cache_seconds(RULES, 200, [(b"x-accel-expires", b"@1000020")], wall=wall) == 20.0
    later = email.utils.formatdate(wall + 42, usegmt=True).encode()
    assert cache_seconds(RULES, 200, [(b"expires", later)], wall=wall) == pytest.approx(42.0)
    assert cache_seconds(RULES, 200, [(b"expires", b"0")], wall=wall) == 0.0
    assert (
        cache_seconds(RULES, 200, [(b"expires", later), (b"cache-control", b"max-age=3")], wall=wall) == 3.0
    )


def test_the_cache_expires_and_forgets_the_least_recently_used() -> None:
    cache = AuthCache(size=2)
    a, b, c = (cache.key("zone", k) for k in ("a", "b", "c"))
    assert len({a, b, c, cache.key("other", "a")}) == 4  # zones never share keys
    ok = Outcome(200)
    cache.put(a, ok, expires=10.0)
    cache.put(b, Outcome(401), expires=20.0)
    assert cache.get(a, now=5.0) == ok  # a is now the most recently used
    cache.put(c, ok, expires=30.0)  # b goes
    assert cache.get(b, now=5.0) is None and cache.get(c, now=5.0) == ok
    assert cache.get(a, now=10.0) is None and len(cache) == 1  # expired: gone


# --- the decision ---------------------------------------------------------------------------


def _spec(**fields: Any) -> _Spec:
    auth = ExternalAuth(url=("http://127.0.0.1:9/check",), **fields)
    return _Spec(auth, Route(path="/", path_type="Prefix", action=Forward(())))


def test_a_2xx_lets_through_with_the_copied_headers() -> None:
    spec = _spec(response_headers=("x-auth-user", "x-auth-email", "x_team"))
    outcome = spec.outcome(
        AuthAnswer(
            204,
            (
                (b"x-auth-user", b"alice"),
                (b"x-team", b"a"),
                (b"x-team", b"b"),
                (b"set-cookie", b"s=1"),
            ),
        )
    )
    assert outcome == Outcome(204, ((b"x-auth-user", b"alice"), (b"x_team", b"a, b")), (b"s=1",))
    ctx = _ctx(headers=[(b"x-auth-user", b"mallory"), (b"x-auth-email", b"forged"), (b"accept", b"*/*")])
    assert spec.apply(ctx, outcome) is None
    assert ctx.headers == [(b"accept", b"*/*")]
    assert ctx.upstream_headers == [(b"x-auth-user", b"alice"), (b"x_team", b"a, b")]
    for status, expected in ((200, [(b"set-cookie", b"s=1")]), (404, []), (302, [(b"set-cookie", b"s=1")])):
        headers: list[tuple[bytes, bytes]] = []
        spec.response(ctx, status, headers)
        assert headers == expected, status


def test_401_403_and_the_rest() -> None:
    spec = _spec()
    answer = spec.apply(_ctx(), Outcome(401, challenges=(b"Basic realm=x", b"Bearer")))
    assert isinstance(answer, Answer) and answer.status == 401
    assert answer.extra == ((b"www-authenticate", b"Basic realm=x"), (b"www-authenticate", b"Bearer"))
    signin = _spec(signin=signin_template("https://login/start", None))
    answer = signin.apply(_ctx(target=b"/a b"), Outcome(401))
    assert isinstance(answer, Answer) and answer.status == 302
    assert answer.extra == ((b"location", b"https://login/start?rd=http://App.Test:8080%2Fa%20b"),)
    assert isinstance(forbidden := spec.apply(_ctx(), Outcome(403)), Answer) and forbidden.status == 403
    for status in (100, 302, 404, 500, 503):
        other = spec.apply(_ctx(), Outcome(status))
        assert isinstance(other, Answer) and other.status == 500, status
    always = _spec(always_set_cookie=True)
    ctx = _ctx()
    always.apply(ctx, Outcome(403, cookies=(b"c=1",)))
    headers: list[tuple[bytes, bytes]] = []
    always.response(ctx, 403, headers)
    assert headers == [(b"set-cookie", b"c=1")]


def test_the_subrequest_headers() -> None:
    spec = _spec(method="POST", request_redirect=("https://r/",), proxy_set_headers=())
    ctx = _ctx(
        headers=[(b"content-length", b"5"), (b"x-real-ip", b"forged"), (b"cookie", b"a=1")], method=b"PUT"
    )
    headers = dict(spec.subrequest(ctx, b"127.0.0.1"))
    assert headers[b"host"] == b"127.0.0.1" and b"content-length" not in headers
    assert headers[b"x-real-ip"] == b"192.0.2.7" and headers[b"cookie"] == b"a=1"
    assert headers[b"x-original-url"] == b"http://App.Test:8080/p/a?x=1&Page=2"
    assert headers[b"x-original-method"] == b"PUT" and headers[b"x-original-uri"] == b"/p/a?x=1&Page=2"
    assert headers[b"x-auth-request-redirect"] == b"https://r/" and headers[b"x-request-id"] == b"rid-1"


def test_auth_urls_once_expanded() -> None:
    origin, target, host = parse_url("https://Auth.Example:8443/v1/check?a=1")
    assert (origin.scheme, origin.host, origin.port, target, host) == (
        "https",
        "auth.example",
        8443,
        b"/v1/check?a=1",
        b"auth.example",
    )
    assert parse_url("http://[::1]/")[0].host == "::1" and parse_url("http://[::1]/")[2] == b"[::1]"
    assert parse_url("http://a?x=1")[1] == b"/?x=1"
    for bad in ("ftp://a/", "http:///x", "http://a:port/", "http://a/ b", "http://u@a/", "http://ä/"):
        with pytest.raises(BadURL):
            parse_url(bad)


def test_explain_shows_the_external_auth_of_a_route() -> None:
    annotations = {
        PREFIX + "auth-url": "https://$host/oauth2/auth",
        PREFIX + "auth-signin": "https://$host/oauth2/start?rd=$escaped_request_uri",
        PREFIX + "auth-cache-key": "$http_authorization",
    }
    snapshot = translate([SERVICE, _ingress(annotations)]).snapshot
    e = explain(snapshot, ExplainRequest("http://a.test/x"))
    (policy,) = [p for p in e.policies if p.name == "external auth"]
    assert policy.value.startswith("GET https://${host}/oauth2/auth (auth-url); 401 -> 302 to https://${host}")
    assert "cached by ${http_authorization} (auth-cache-key)" in policy.value
