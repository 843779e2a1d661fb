"""The annotation registry: fail closed, "did you mean", prefixes, canaries (issue 8)."""

from __future__ import annotations

from typing import Any

import pytest

from fastingress.snapshot.schema import Forward, Respond
from fastingress.translate import TranslateOptions, translate
from fastingress.translate.annotations import (
    FASTINGRESS_PREFIX,
    GUARDS,
    PREFIX,
    REGISTRY,
    IngressAnnotations,
    access_directive,
    parse_annotations,
)

ACCESS_KEYS = (  # what the issue names: each must fail closed until it is implemented
    "auth-type", "auth-secret", "auth-url", "auth-tls-secret", "auth-tls-verify-client",
    "whitelist-source-range", "allowlist-source-range", "denylist-source-range",
)
SNIPPETS = (
    "configuration-snippet", "server-snippet", "auth-snippet", "stream-snippet", "modsecurity-snippet"
)


def _field_exists(path: str) -> bool:
    """Whether ``path`` ("x", "upstream.x", "upstream.balancing.x") names a field of the parse result."""
    obj: object = IngressAnnotations()
    for part in path.split("."):
        if part not in getattr(type(obj), "__struct_fields__", ()):
            return False
        obj = getattr(obj, part)
    return True


def test_registry_rows_are_consistent() -> None:
    assert {"upstream", "canary_rules", "next_upstream"} <= set(IngressAnnotations.__struct_fields__)
    for name, row in REGISTRY.items():
        assert name == name.strip().lower() and "/" not in name, name
        if row.status == "implemented":
            assert row.parser is not None and _field_exists(row.field), name
        if row.guard:
            assert row.status in ("implemented", "closed"), name
    for name in ACCESS_KEYS:
        assert name in GUARDS, name
    for name in SNIPPETS:
        assert REGISTRY[name].status == "snippet", name
    assert REGISTRY["canary"].status == "canary"


@pytest.mark.parametrize("name", ACCESS_KEYS)
@pytest.mark.parametrize("prefix", [PREFIX, FASTINGRESS_PREFIX])
def test_every_access_key_fails_closed_under_both_prefixes(name: str, prefix: str) -> None:
    """Each access key is a guard: implemented (e2e: tests/e2e/test_fail_closed_e2e.py) or
    refused; either way a value it cannot honour closes the route instead of opening it."""
    row = REGISTRY[name]
    assert row.guard and row.status in ("implemented", "closed"), name
    parsed, findings = parse_annotations({prefix + name: ["not", "a", "string"]})
    reason = "is not supported" if row.status == "closed" else "has an invalid value"
    assert parsed.closed == ((prefix + name, reason),)
    (finding,) = findings
    assert finding.severity == "error"
    assert finding.key == prefix + name
    assert "503 (fail closed)" in finding.message, finding.message


def test_fastingress_prefix_is_read_and_wins() -> None:
    parsed, findings = parse_annotations({FASTINGRESS_PREFIX + "proxy-body-size": "2k"})
    assert parsed.max_body_size == 2048 and findings == []
    parsed, findings = parse_annotations(
        {FASTINGRESS_PREFIX + "proxy-body-size": "2k", PREFIX + "proxy-body-size": "1k"}
    )
    assert parsed.max_body_size == 2048
    assert [(f.key, f.message) for f in findings] == [
        (PREFIX + "proxy-body-size", f"overridden by `{FASTINGRESS_PREFIX}proxy-body-size`; ignored")
    ]
    _, same = parse_annotations({FASTINGRESS_PREFIX + "use-regex": "true", PREFIX + "use-regex": "true"})
    assert same == []


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        (PREFIX + "rewrite-targt", PREFIX + "rewrite-target"),
        (PREFIX + "proxy-body-sise", PREFIX + "proxy-body-size"),
        (FASTINGRESS_PREFIX + "ssl-redirct", FASTINGRESS_PREFIX + "ssl-redirect"),
        ("kubernetes.io/proxy-body-size", PREFIX + "proxy-body-size"),
        ("nginx.ingress.kubernets.io/upstream-vhost", PREFIX + "upstream-vhost"),
        ("traefik.ingress.kubernetes.io/rewrite-target", PREFIX + "rewrite-target"),
        ("ingress.kubernetes.io/ssl-redirect", PREFIX + "ssl-redirect"),
    ],
)
def test_did_you_mean_names_the_nearest_key(key: str, meant: str) -> None:
    parsed, (finding,) = parse_annotations({key: "1"})
    assert finding.key == key
    assert finding.suggestion == meant
    assert f"did you mean `{meant}`?" in finding.message
    assert finding.severity == "warning" and parsed == IngressAnnotations()


@pytest.mark.parametrize(
    "key",
    ["kubernetes.io/ingress.class", "cert-manager.io/cluster-issuer", "app.kubernetes.io/name", "plain"],
)
def test_other_tools_annotations_are_left_alone(key: str) -> None:
    assert parse_annotations({key: "x"}) == (IngressAnnotations(), [])


@pytest.mark.parametrize(
    ("key", "value", "meant"),
    [
        (PREFIX + "ssl-redirect", "ture", "true"),
        (PREFIX + "proxy-ssl-verify", "of", "off"),
        (PREFIX + "backend-protocol", "HTTPSS", "HTTPS"),
    ],
)
def test_bad_values_name_value_and_nearest_valid_one(key: str, value: str, meant: str) -> None:
    parsed, (finding,) = parse_annotations({key: value})
    assert parsed == IngressAnnotations()  # the default is kept
    assert repr(value) in finding.message and f"did you mean `{meant}`?" in finding.message


@pytest.mark.parametrize(
    "key",
    [
        PREFIX + "auth-ulr",  # a typo of an access key
        "ingress.kubernetes.io/whitelist-source-range",  # Traefik 1 / old ingress-nginx prefix
        "alb.ingress.kubernetes.io/auth-type",
    ],
)
def test_a_mistyped_access_key_fails_closed(key: str) -> None:
    parsed, (finding,) = parse_annotations({key: "x"})
    assert [k for k, _ in parsed.closed] == [key]
    assert finding.severity == "error" and "did you mean" in finding.message


def test_snippets_are_never_executed_and_access_rules_in_them_fail_closed() -> None:
    parsed, (finding,) = parse_annotations({PREFIX + "configuration-snippet": 'more_set_headers "A: b";'})
    assert parsed.closed == () and finding.severity == "warning"
    assert "never executed" in finding.message
    parsed, (finding,) = parse_annotations({PREFIX + "server-snippet": "location /x {\n  deny all;\n}"})
    assert parsed.closed and finding.severity == "error" and "`deny`" in finding.message
    assert access_directive("allow 10.0.0.0/8; deny all;") == "allow"
    assert access_directive("if ($x) { return 403; }") == "return 403"
    assert access_directive("proxy_set_header X-Allowed yes;") is None
    # a ModSecurity snippet that turns blocking on (ingress-nginx's default only logs)
    assert access_directive("SecRuleEngine On\nSecRequestBodyAccess On") == "SecRuleEngine On"
    assert access_directive("secruleengine on") == "secruleengine on"
    assert access_directive("SecRuleEngine DetectionOnly") is None
    # every snippet key, the WAF's included: a blocking ModSecurity is never served open
    for name in SNIPPETS:
        parsed, (finding,) = parse_annotations({PREFIX + name: "SecRuleEngine On\n"})
        assert parsed.closed and finding.severity == "error", name
        assert "`SecRuleEngine On`" in finding.message and "503 (fail closed)" in finding.message
        parsed, (finding,) = parse_annotations({PREFIX + name: "SecRuleEngine DetectionOnly\n"})
        assert parsed.closed == () and finding.severity == "warning", name


def test_fail_open_only_changes_the_words() -> None:
    parsed, (finding,) = parse_annotations({PREFIX + "auth-url": "ftp://a"}, fail_open=True)
    assert parsed.closed and "--unsafe-fail-open" in finding.message


# --- translation ------------------------------------------------------------------------


def _ingress(name: str, path: str, annotations: dict[str, Any], created: str = "2025-01-01T00:00:00Z",
             **spec: Any) -> dict[str, Any]:
    backend = {"service": {"name": "web", "port": {"number": 80}}}
    metadata = {"name": name, "namespace": "default", "annotations": annotations}
    metadata["creationTimestamp"] = created
    paths = [{"path": path, "pathType": "Prefix", "backend": backend}]
    return {
        "kind": "Ingress",
        "metadata": metadata,
        "spec": {"rules": [{"host": "a.test", "http": {"paths": paths}}], **spec},
    }


SERVICE = {
    "kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}
}


def _actions(result: Any) -> dict[str, Any]:
    (vhost,) = result.snapshot.virtual_hosts
    return {route.path: route.action for route in vhost.routes}


def test_closed_routes_answer_503_and_other_ingresses_are_served() -> None:
    objects = [
        SERVICE,
        _ingress("open", "/", {}),
        _ingress("guarded", "/admin", {PREFIX + "auth-url": "auth.example/check"},  # not an absolute URL
                 defaultBackend={"service": {"name": "web", "port": {"number": 80}}}),
    ]
    result = translate(objects)
    actions = _actions(result)
    assert isinstance(actions["/"], Forward)
    closed = actions["/admin"]
    assert isinstance(closed, Respond) and closed.status == 503
    assert closed.body == (
        "503 Service Unavailable\nrefused: nginx.ingress.kubernetes.io/auth-url has an invalid value; "
        "this route is closed (fail closed)\n"
    )
    assert result.snapshot.virtual_hosts[0].fallback == closed  # its defaultBackend too
    assert result.snapshot.default_action == closed
    assert any(d.severity == "error" and d.name == "guarded" for d in result.diagnostics)
    opened = translate(objects, TranslateOptions(unsafe_fail_open=True))
    assert all(isinstance(a, Forward) for a in _actions(opened).values())


def test_a_bad_value_takes_down_nothing() -> None:
    objects = [
        SERVICE,
        _ingress("sloppy", "/s", {PREFIX + "proxy-body-size": "lots", PREFIX + "proxy-read-timeout": "x"}),
        _ingress("fine", "/", {PREFIX + "proxy-body-size": "2k"}),
    ]
    result = translate(objects)
    (vhost,) = result.snapshot.virtual_hosts
    by_path = {r.path: r for r in vhost.routes}
    assert isinstance(by_path["/s"].action, Forward) and by_path["/s"].policy.max_body_size == 1024 * 1024
    assert by_path["/"].policy.max_body_size == 2048
    assert {d.field for d in result.diagnostics if d.name == "sloppy"} == {
        f"metadata.annotations[{PREFIX}proxy-body-size]", f"metadata.annotations[{PREFIX}proxy-read-timeout]"
    }


@pytest.mark.parametrize("canary_first", [True, False])
def test_a_canary_never_takes_the_main_ingress_traffic(canary_first: bool) -> None:
    canary = _ingress("aaa-canary", "/", {PREFIX + "canary": "true", PREFIX + "canary-weight": "100"},
                      created="2020-01-01T00:00:00Z")
    canary["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "web-v2"
    main = _ingress("main", "/", {})
    objects = [SERVICE, canary, main] if canary_first else [SERVICE, main, canary]
    result = translate(objects)
    (vhost,) = result.snapshot.virtual_hosts
    (route,) = vhost.routes
    assert route.ingress == "default/main"
    alone = translate([SERVICE, canary])
    assert alone.snapshot.virtual_hosts == ()
    assert any("no main Ingress" in d.message for d in alone.diagnostics)


def test_implementing_a_guard_is_one_row_and_a_bad_value_still_fails_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 9 moves keys from CLOSED to ``implemented(..., guard=True)``: the key then sets its
    field, and a value it cannot parse closes the Ingress instead of falling back to a default."""
    from fastingress.translate import annotations

    row = annotations.implemented("rewrite_target", annotations.parse_rewrite_target, guard=True)
    monkeypatch.setitem(annotations._ROWS, "auth-url", row)  # stand-in field and parser
    parsed, findings = parse_annotations({PREFIX + "auth-url": "/ok"})
    assert parsed.closed == () and parsed.rewrite_target == "/ok" and findings == []
    parsed, (finding,) = parse_annotations({PREFIX + "auth-url": "not a path"})
    assert parsed.closed == ((PREFIX + "auth-url", "has an invalid value"),)
    assert finding.severity == "error" and "'not a path'" in finding.message
    parsed, _ = parse_annotations({PREFIX + "auth-url": 7.5})
    assert parsed.closed == ((PREFIX + "auth-url", "has an invalid value"),)


def test_the_503_body_is_one_clean_line() -> None:
    objects = [SERVICE, _ingress("odd", "/", {"ingress.kubernetes.io/auth-type\n\r": "basic"})]
    (action,) = _actions(translate(objects)).values()
    assert isinstance(action, Respond)
    first, line, rest = action.body.split("\n", 2)
    assert first == "503 Service Unavailable" and rest == ""
    assert line.isprintable() and "(fail closed)" in line
