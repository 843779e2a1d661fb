"""Translation of the http area (issue 9): parsers, the policies a route gets, ConfigMaps
(custom-headers) in the incremental translator, and the hosts aliases and www redirects add."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fastingress.explain import ExplainRequest, explain
from fastingress.snapshot.codec import encode_json
from fastingress.snapshot.schema import Certificate, Redirect, Route, VirtualHost
from fastingress.translate import TranslateOptions, extra_hosts, translate
from fastingress.translate import policy_http as http
from fastingress.translate.annotations import PREFIX, parse_annotations
from fastingress.translate.incremental import Translator
from fastingress.translate.model import ObjRef

Obj = dict[str, Any]


# -- parsers ---------------------------------------------------------------------------


def test_cors_origins_as_ingress_nginx_reads_them() -> None:
    assert http.parse_cors_origins("https://a.example.com, https://*.Example.com:8443,null") == (
        "https://a.example.com", "https://*.example.com:8443", "null",
    )
    assert http.parse_cors_origins("https://a.test, *, x") == ("*",)  # "*" wins at once
    assert http.parse_cors_origins("   ") == ("*",)  # blank: the default
    assert http.parse_cors_origins("tauri://localhost:3000, test://localhost") == (
        "tauri://localhost:3000", "test://localhost",
    )
    with pytest.raises(http.PartialValue) as kept:
        http.parse_cors_origins("origin.cors.com:8080, https://origin2.cors.com,")
    assert kept.value.partial == ("https://origin2.cors.com",)
    with pytest.raises(http.PartialValue) as none:
        http.parse_cors_origins("example.com")
    assert none.value.partial == () and "no origin is allowed" in str(none.value)
    with pytest.raises(http.PartialValue):
        http.parse_cors_origins("https://*.*.example.com")  # one wildcard label at most


def test_redirect_urls_and_codes() -> None:
    assert http.parse_redirect_url(" https://x.test$request_uri ") == "https://x.test$request_uri"
    assert http.parse_redirect_url("https://x.test/${1}/$2$is_args$args") == "https://x.test/${1}/$2$is_args$args"
    assert http.parse_redirect_url("/maintenance") == "/maintenance"
    assert http.parse_redirect_url("$scheme://x.test/") == "$scheme://x.test/"
    for bad in ("ftp://x.test/", "x.test/path", "https://x.test/a b", ""):
        with pytest.raises(ValueError):
            http.parse_redirect_url(bad)
    with pytest.raises(http.Refused) as refused:
        http.parse_redirect_url("https://x.test$remote_addr")
    assert "$remote_addr" in str(refused.value)
    assert http.parse_permanent_code("308") == 308 and http.parse_temporal_code("307") == 307
    for parse, bad in ((http.parse_permanent_code, "309"), (http.parse_temporal_code, "308"),
                       (http.parse_permanent_code, "2xx")):
        with pytest.raises(ValueError):
            parse(bad)
    assert http.parse_app_root("/app/") == "/app/"
    for bad in ("app", "https://x.test/app", "//evil.test/"):
        with pytest.raises(ValueError):
            http.parse_app_root(bad)


def test_aliases_header_rules_and_errors_parse() -> None:
    assert http.parse_server_alias("B.test, a.test,,*.c.test, a.test") == ("*.c.test", "a.test", "b.test")
    with pytest.raises(http.PartialValue) as partial:
        http.parse_server_alias("a.test, ~^x\\d+$")
    assert partial.value.partial == ("a.test",)
    assert http.parse_cookie_rewrite("off") is None
    assert http.parse_cookie_rewrite(" /one/   / ") == ("/one/", "/")
    with pytest.raises(ValueError):
        http.parse_cookie_rewrite("a b c")
    assert http.parse_redirect_rewrite("default") == "" and http.parse_redirect_rewrite("OFF") == ""
    assert http.parse_connection_header(" Close ") == "close"
    with pytest.raises(http.Refused) as near:
        http.parse_connection_header("keepalive")
    assert near.value.suggestion == "keep-alive"
    assert http.parse_http_version("1.1") == "1.1"
    with pytest.raises(ValueError, match=r"HTTP/1\.0 to upstreams is not supported"):
        http.parse_http_version("1.0")
    assert http.parse_status_codes("503, 404,404 ,") == (404, 503)
    for bad in ("302", "600", "x", ""):
        with pytest.raises(ValueError):
            http.parse_status_codes(bad)
    assert http.parse_service_name("error-pages") == "error-pages"
    assert http.parse_object_ref("ns/cm") == "ns/cm" and http.parse_object_ref("cm") == "cm"


def test_partial_values_keep_the_rest_with_a_warning() -> None:
    parsed, findings = parse_annotations({
        PREFIX + "enable-cors": "true",
        PREFIX + "cors-allow-origin": "https://ok.test, not-an-origin",
        PREFIX + "server-alias": "ok.test, ~re",
    })
    assert parsed.http.cors_allow_origin == ("https://ok.test",)
    assert parsed.http.server_alias == ("ok.test",)
    assert [f.severity for f in findings] == ["warning", "warning"]
    assert all("skipped" in f.message for f in findings)


# -- translation -----------------------------------------------------------------------


def _ingress(name: str, host: str, annotations: dict[str, str], *, created: str = "2024-01-01T00:00Z") -> Obj:
    backend = {"service": {"name": "web", "port": {"number": 80}}}
    return {
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created,
                     "annotations": {PREFIX + k: v for k, v in annotations.items()}},
        "spec": {"rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                                                              "backend": backend}]}}]},
    }


def _cluster() -> list[Obj]:
    return [
        {"kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"ports": [{"name": "http", "port": 80}]}},
        {"kind": "ConfigMap", "metadata": {"name": "hdrs", "namespace": "default"},
         "data": {"X-Frame-Options": "DENY"}},
        {"kind": "ConfigMap", "metadata": {"name": "unrelated", "namespace": "default"}, "data": {"a": "b"}},
        _ingress("app", "app.test", {"custom-headers": "hdrs", "server-alias": "alias.test",
                                     "from-to-www-redirect": "true"}),
        _ingress("other", "other.test", {"enable-cors": "true"}, created="2024-01-02T00:00Z"),
    ]


def _same(translator: Translator, objects: list[Obj]) -> Any:
    result = translator.translate(objects)
    fresh = translate(copy.deepcopy(objects))
    assert encode_json(result.snapshot) == encode_json(fresh.snapshot)
    assert result.diagnostics == fresh.diagnostics
    return result


def test_route_policies_and_extra_hosts() -> None:
    snap = translate(_cluster()).snapshot
    hosts = {v.hostname: v for v in snap.virtual_hosts}
    assert sorted(hosts) == ["alias.test", "app.test", "other.test", "www.app.test"]
    assert hosts["alias.test"].routes == hosts["app.test"].routes
    headers = hosts["app.test"].routes[0].policy.headers
    assert headers is not None and headers.response == (("X-Frame-Options", "DENY"),)
    www = hosts["www.app.test"].routes[0]
    assert isinstance(www.action, Redirect) and www.policy.redirects is not None
    assert www.policy.redirects.to_host == "app.test" and www.policy.redirects.code == 308
    assert hosts["other.test"].routes[0].policy.cors is not None


def test_incremental_configmap_changes_redo_only_their_readers() -> None:
    objects = _cluster()
    translator = Translator(TranslateOptions())
    first = _same(translator, objects)
    # A ConfigMap nobody reads changes: the very same virtual hosts come back.
    objects[2] = {**objects[2], "data": {"a": "c"}}
    again = _same(translator, objects)
    assert again.snapshot.virtual_hosts is first.snapshot.virtual_hosts
    # The custom-headers ConfigMap changes: its host (and the alias copying it) follow.
    objects[1] = {**objects[1], "data": {"X-Frame-Options": "SAMEORIGIN"}}
    changed = _same(translator, objects)
    hosts = {v.hostname: v for v in changed.snapshot.virtual_hosts}
    for name in ("app.test", "alias.test"):
        rules = hosts[name].routes[0].policy.headers
        assert rules is not None and rules.response == (("X-Frame-Options", "SAMEORIGIN"),)
    before = {v.hostname: v for v in first.snapshot.virtual_hosts}
    assert hosts["other.test"] is before["other.test"]
    # It disappears: the Ingress fails closed (503); it comes back: served again.
    gone = objects.pop(1)
    result = _same(translator, objects)
    assert any("ConfigMap default/hdrs not found" in d.message for d in result.diagnostics)
    objects.insert(1, gone)
    _same(translator, objects)


def test_www_redirect_gets_the_certificate_only_when_it_names_it() -> None:
    vhost = VirtualHost("shop.test", (Route("/", "Prefix", Redirect("x")),), tls_secret="default/tls")
    claims = extra_hosts.Claims({}, {"www.shop.test": ("shop.test", ObjRef("Ingress", "default", "shop"))})
    wildcard = {"default/tls": Certificate("default/tls", "", "", hosts=("shop.test", "*.shop.test"))}
    exact = {"default/tls": Certificate("default/tls", "", "", hosts=("shop.test",))}
    assert extra_hosts.emit((vhost,), claims, wildcard)[1].tls_secret == "default/tls"
    assert extra_hosts.emit((vhost,), claims, exact)[1].tls_secret is None
    assert extra_hosts.emit((vhost,), extra_hosts.NO_CLAIMS, exact) == (vhost,)


def test_explain_shows_the_http_policies_and_their_rewrite_phase_answers() -> None:
    objects = [*_cluster(), _ingress("moved", "moved.test", {"permanent-redirect": "https://n.test$request_uri"})]
    snapshot = translate(objects).snapshot
    moved = explain(snapshot, ExplainRequest("http://moved.test/a?b=1"))
    assert (moved.outcome, moved.status, moved.location) == ("redirect", 301, "https://n.test/a?b=1")
    assert any(p.name == "permanent-redirect" for p in moved.policies)
    www = explain(snapshot, ExplainRequest("http://www.app.test/x/"))
    assert (www.status, www.location) == (308, "http://app.test/x")
    preflight = explain(snapshot, ExplainRequest(
        "http://other.test/api", method="OPTIONS",
        headers=(("Origin", "https://x.test"), ("Access-Control-Request-Method", "PUT")),
    ))
    assert (preflight.outcome, preflight.status) == ("respond", 204)
    plain = explain(snapshot, ExplainRequest("http://alias.test/"))
    assert plain.outcome == "forward" and any(p.name == "response headers" for p in plain.policies)


def test_values_that_would_split_a_header_are_refused() -> None:
    for parse, bad in ((http.parse_cors_methods, "GET,\nPOST"), (http.parse_cors_expose, "X-A,\r\nX-B"),
                       (http.parse_cors_headers, "X-A\nX-B"),
                       (http.parse_redirect_url, "https://x.test/\nSet-Cookie")):
        with pytest.raises(ValueError):
            parse(bad)
    objects = _cluster()
    objects[1] = {**objects[1], "data": {"X-Frame-Options": "DENY\n"}}
    result = translate(objects)
    assert any("'X-Frame-Options' is not a valid header value" in d.message for d in result.diagnostics)
    app = next(v for v in result.snapshot.virtual_hosts if v.hostname == "app.test")
    assert app.routes[0].action.status == 503  # type: ignore[union-attr]
