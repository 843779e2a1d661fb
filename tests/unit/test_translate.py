"""Focused unit tests of the translator's pieces and rules (goldens cover whole cases)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from fastingress.snapshot.codec import encode_json
from fastingress.snapshot.schema import MIB, Forward, GlobalSettings, Snapshot, WeightedBackend
from fastingress.translate import Diagnostic, TranslateOptions, TranslationResult, translate
from fastingress.translate.annotations import (
    IMPLEMENTED,
    NOT_SUPPORTED,
    PREFIX,
    parse_annotations,
    parse_protocol,
    parse_seconds,
    parse_size,
)
from fastingress.translate.hosts import EXACT_BONUS, normalize_host, priority, route_key


def ingress(
    name: str = "web",
    namespace: str = "default",
    *,
    host: str | None = "example.com",
    path: str = "/",
    service: str = "web",
    port: Any = None,
    annotations: dict[str, Any] | None = None,
    created: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations is not None:
        metadata["annotations"] = annotations
    if created is not None:
        metadata["creationTimestamp"] = created
    rule: dict[str, Any] = {
        "http": {
            "paths": [
                {
                    "path": path,
                    "pathType": "Prefix",
                    "backend": {"service": {"name": service, "port": port or {"number": 80}}},
                }
            ]
        }
    }
    if host is not None:
        rule["host"] = host
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": {"rules": [rule], **spec},
    }


def service(name: str = "web", namespace: str = "default", ports: Any = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": ports if ports is not None else [{"port": 80}], **spec},
    }


def messages(result: TranslationResult) -> list[str]:
    return [str(d) for d in result.diagnostics]


# --- annotation parsers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8", 8), ("1k", 1024), ("1K", 1024), ("20m", 20 * MIB), ("20M", 20 * MIB), ("1g", 1024**3), ("0", 0)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "20 MB", "-1", "1.5m", "1t", "m", "20mb"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "expected"), [("60", 60.0), ("60s", 60.0), ("0.5", 0.5), (" 5 ", 5.0)])
def test_parse_seconds(text: str, expected: float) -> None:
    assert parse_seconds(text) == expected


@pytest.mark.parametrize("text", ["0", "1m", "-5", "abc", "", "99999999"])
def test_parse_seconds_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="seconds"):
        parse_seconds(text)


def test_parse_protocol_is_case_insensitive() -> None:
    assert parse_protocol("grpcs") == "GRPCS"
    assert parse_protocol("Auto_Http") == "AUTO_HTTP"
    with pytest.raises(ValueError, match="HTTPS"):
        parse_protocol("HTTP3")


def test_annotation_tables_are_disjoint_and_cover_the_corpus_favourites() -> None:
    assert not set(IMPLEMENTED) & NOT_SUPPORTED
    for key in ("mirror-target",):
        assert key in NOT_SUPPORTED
    implemented = (
        "ssl-redirect", "force-ssl-redirect", "ssl-passthrough", "use-regex", "rewrite-target", "auth-url",
        "enable-cors", "affinity", "load-balance", "upstream-hash-by", "proxy-next-upstream", "canary-weight",
        "limit-rps",
    )
    for key in implemented:
        assert key in IMPLEMENTED
    assert "canary" not in NOT_SUPPORTED and "canary" not in IMPLEMENTED  # a row of its own


def test_parse_annotations_findings() -> None:
    parsed, findings = parse_annotations(
        {
            PREFIX + "proxy-body-size": "2m",
            PREFIX + "proxy-bodysize": "2m",
            PREFIX + "canary-weight": "5",  # without canary: "true"
            PREFIX + "proxy-read-timeout": True,
            "other.io/thing": "x",
        }
    )
    assert parsed.max_body_size == 2 * MIB
    assert parsed.upstream.read_timeout == 60.0
    assert [(f.severity, f.key.removeprefix(PREFIX)) for f in findings] == [
        ("warning", "canary-weight"),
        ("warning", "proxy-bodysize"),
        ("warning", "proxy-read-timeout"),
    ]
    assert not parsed.canary and "has no effect without" in findings[0].message
    assert findings[1].suggestion == PREFIX + "proxy-body-size"
    assert "did you mean `nginx.ingress.kubernetes.io/proxy-body-size`?" in findings[1].message


# --- hosts and paths ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "host"),
    [("Example.COM", "example.com"), ("*.example.com", "*.example.com"), ("", ""), ("a-b.c", "a-b.c")],
)
def test_normalize_host_accepts(raw: str, host: str) -> None:
    assert normalize_host(raw) == (host, None)


@pytest.mark.parametrize(
    "raw",
    ["10.0.0.1", "::1", "*", "*.", "a.*.com", "*a.com", "-a.com", "a..com", "a_b.com", "a.com.", "x" * 64],
)
def test_normalize_host_rejects(raw: str) -> None:
    host, problem = normalize_host(raw)
    assert host == ""
    assert problem


def test_priority_and_route_key() -> None:
    assert priority("/", "Prefix") == 1
    assert priority("/foo/", "Prefix") == priority("/foo", "Prefix") == 4
    assert priority("/foo", "Exact") == 4 + EXACT_BONUS
    assert route_key("/foo/", "Prefix") == route_key("/foo", "Prefix") == "/foo"
    assert route_key("/foo/", "Exact") != route_key("/foo", "Exact")
    assert route_key("///", "Prefix") == "/"


# --- translation rules ----------------------------------------------------------------


def test_diagnostic_str_is_one_log_line() -> None:
    d = Diagnostic("warning", "Ingress", "default", "web", "spec.rules[0].host", "invalid host")
    assert str(d) == "warning Ingress default/web spec.rules[0].host: invalid host"
    assert str(Diagnostic("info", "IngressClass", "", "nginx", "", "x")) == "info IngressClass nginx: x"


def test_empty_input() -> None:
    result = translate([])
    assert result.snapshot == Snapshot()
    assert result.diagnostics == ()


def test_settings_pass_through_and_default_body_size() -> None:
    settings = GlobalSettings(max_body_size=12345, server_header="x")
    result = translate([ingress(), service()], TranslateOptions(settings=settings))
    assert result.snapshot.settings == settings
    assert result.snapshot.virtual_hosts[0].routes[0].policy.max_body_size == 12345


def test_upstreams_shared_when_settings_equal_and_split_when_not() -> None:
    slow = {PREFIX + "proxy-read-timeout": "300"}
    slow_again = {PREFIX + "proxy-read-timeout": "300s"}
    objects = [
        ingress("a", path="/a"),
        ingress("b", path="/b", annotations=slow),
        ingress("c", path="/c", annotations=slow_again),
        ingress("d", path="/d", annotations={PREFIX + "proxy-body-size": "5m"}),  # route policy only
        service(),
    ]
    snapshot = translate(objects).snapshot
    names = [u.name for u in snapshot.upstreams]
    assert len(names) == 2
    assert names[0] == "default/web:80"
    assert names[1].startswith("default/web:80#")
    assert len(names[1]) == len("default/web:80#") + 8
    by_path = {r.path: r for r in snapshot.virtual_hosts[0].routes}
    assert isinstance(by_path["/b"].action, Forward)
    assert by_path["/b"].action == by_path["/c"].action != by_path["/a"].action
    assert by_path["/a"].action == by_path["/d"].action
    assert {r.service for r in by_path.values()} == {"default/web:80"}
    assert by_path["/d"].policy.max_body_size == 5 * MIB


def test_missing_service_still_routes_to_an_empty_upstream() -> None:
    result = translate([ingress(service="gone")])
    (upstream,) = result.snapshot.upstreams
    assert upstream.name == "default/gone:80"
    assert upstream.endpoints == ()
    assert result.snapshot.virtual_hosts[0].routes[0].action == Forward((WeightedBackend("default/gone:80"),))
    assert messages(result) == [
        "error Ingress default/web spec.rules[0].http.paths[0].backend.service.name: "
        "Service default/gone not found; requests get 503"
    ]


def test_oldest_ingress_wins_and_loser_is_named() -> None:
    newer = ingress("newer", service="b", created="2025-02-01T00:00:00Z")
    older = ingress("older", service="a", created="2025-01-01T00:00:00Z")
    result = translate([newer, older, service("a"), service("b")])
    (route,) = result.snapshot.virtual_hosts[0].routes
    assert route.ingress == "default/older"
    assert len(result.diagnostics) == 1
    d = result.diagnostics[0]
    assert (d.severity, d.name) == ("warning", "newer")
    assert "default/older" in d.message


def test_default_backend_service_option_takes_precedence() -> None:
    objects = [
        ingress(defaultBackend={"service": {"name": "web", "port": {"number": 80}}}),
        service(),
        service("fallback", "ingress", ports=[{"name": "http", "port": 8080}, {"port": 9}]),
    ]
    result = translate(objects, TranslateOptions(default_backend_service="ingress/fallback"))
    assert result.snapshot.default_action == Forward((WeightedBackend("ingress/fallback:8080"),))
    assert result.snapshot.virtual_hosts[0].fallback is not None
    bad = translate(objects, TranslateOptions(default_backend_service="no-slash"))
    assert bad.snapshot.default_action is None
    assert any("--default-backend-service" in m for m in messages(bad))


def test_list_objects_are_flattened() -> None:
    result = translate([{"apiVersion": "v1", "kind": "List", "items": [ingress(), service()]}])
    assert [v.hostname for v in result.snapshot.virtual_hosts] == ["example.com"]
    assert result.diagnostics == ()


def test_duplicates_resolve_to_highest_resource_version_in_any_order() -> None:
    old = service(ports=[{"port": 80}])
    old["metadata"]["resourceVersion"] = "9"
    new = service(ports=[{"port": 80}, {"name": "x", "port": 81}])
    new["metadata"]["resourceVersion"] = "10"
    for objects in ([ingress(port={"name": "x"}), old, new], [new, old, ingress(port={"name": "x"})]):
        result = translate(objects)
        assert result.snapshot.upstreams[0].name == "default/web:x"
        assert [d.field for d in result.diagnostics] == ["metadata.name"]


def test_unnamed_and_non_mapping_objects_are_skipped_with_a_name() -> None:
    nameless = ingress()
    del nameless["metadata"]["name"]
    objects: list[Any] = [nameless, "just a string", None, ingress("ok"), service()]
    result = translate(objects)
    assert [r.ingress for r in result.snapshot.virtual_hosts[0].routes] == ["default/ok"]
    assert sorted(messages(result)) == [
        "error Ingress default/<unnamed> metadata.name: object has no name; skipped",
        "error Unknown <NoneType>: not a Kubernetes object (expected a mapping); skipped",
        "error Unknown <str>: not a Kubernetes object (expected a mapping); skipped",
    ]


def test_non_iterable_input_is_a_diagnostic_not_an_exception() -> None:
    result = translate(None)  # type: ignore[arg-type]
    assert result.snapshot == Snapshot()
    assert [d.name for d in result.diagnostics] == ["<input>"]


def test_secret_data_never_appears_in_diagnostics() -> None:
    marker = "TOP-SECRET-MATERIAL"
    encoded = base64.b64encode(marker.encode()).decode()
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "tls", "namespace": "default"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": encoded, "tls.key": marker},
    }
    result = translate([ingress(tls=[{"hosts": ["example.com"], "secretName": "tls"}]), service(), secret])
    assert result.snapshot.certificates == ()
    assert result.snapshot.virtual_hosts[0].tls_secret is None
    assert result.diagnostics
    for text in messages(result):
        assert marker not in text
        assert encoded not in text


def test_annotation_on_one_ingress_does_not_leak_to_another() -> None:
    objects = [
        ingress("big", path="/upload", annotations={PREFIX + "proxy-body-size": "1g"}),
        ingress("small", path="/"),
        service(),
    ]
    routes = {r.path: r for r in translate(objects).snapshot.virtual_hosts[0].routes}
    assert routes["/upload"].policy.max_body_size == 1024**3
    assert routes["/"].policy.max_body_size == MIB


def test_output_is_sorted() -> None:
    objects = [
        ingress("z", host="b.example.com", path="/short"),
        ingress("y", host="a.example.com", path="/a/longer/path"),
        ingress("x", host="b.example.com", path="/short/longer"),
        service(),
    ]
    snapshot = translate(objects).snapshot
    assert [v.hostname for v in snapshot.virtual_hosts] == ["a.example.com", "b.example.com"]
    assert [r.path for r in snapshot.virtual_hosts[1].routes] == ["/short/longer", "/short"]
    assert encode_json(snapshot) == encode_json(translate(list(reversed(objects))).snapshot)


def _seed_like(annotations_a: dict[str, str], path_a: str = "/api(/|$)(.*)") -> list[dict[str, Any]]:
    def ing(name: str, path: str, svc: str, annotations: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "ns", "annotations": annotations},
            "spec": {"rules": [{"host": "app.test", "http": {"paths": [
                {"path": path, "pathType": "ImplementationSpecific",
                 "backend": {"service": {"name": svc, "port": {"number": 80}}}}]}}]},
        }

    return [ing("api", path_a, "api", annotations_a), ing("web", "/", "web", {})]


def test_use_regex_and_rewrite_target_put_the_whole_host_in_regex_mode() -> None:
    result = translate(_seed_like({"nginx.ingress.kubernetes.io/rewrite-target": "/$2"}))
    routes = {r.path: r for r in result.snapshot.virtual_hosts[0].routes}
    assert routes["/api(/|$)(.*)"].regex == "^/api(/|$)(.*)"
    assert routes["/api(/|$)(.*)"].policy.rewrite_target == "/$2"
    assert routes["/"].regex == "^/" and routes["/"].policy.rewrite_target is None  # the other Ingress
    assert [r.path for r in result.snapshot.virtual_hosts[0].routes] == ["/api(/|$)(.*)", "/"]
    assert not [d for d in result.diagnostics if "regular expression" in d.message or "rewrite" in d.field]


def test_regex_looking_path_without_regex_mode_warns_and_invalid_regex_is_skipped() -> None:
    plain = translate(_seed_like({}))
    assert all(r.regex is None for r in plain.snapshot.virtual_hosts[0].routes)
    assert any("looks like a regular expression" in str(d) for d in plain.diagnostics)
    broken = translate(_seed_like({"nginx.ingress.kubernetes.io/use-regex": "true"}, path_a="/api(["))
    assert [r.path for r in broken.snapshot.virtual_hosts[0].routes] == ["/"]
    errors = [str(d) for d in broken.diagnostics if d.severity == "error"]
    assert any("not a valid regular expression" in e for e in errors)
    bad = translate(_seed_like({"nginx.ingress.kubernetes.io/rewrite-target": "http://evil/"}))
    assert any("rewrite-target" in d.field and d.severity == "warning" for d in bad.diagnostics)
