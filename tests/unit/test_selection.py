"""Selection (issue 9), the pure parts: annotation parsers and their cross-checks, the canary
decision, cookie affinity (ingress-nginx's cookie format), consistent hashing, hash keys, EWMA
(fake clock) and the retry rules of proxy-next-upstream."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest

from fastingress.snapshot.schema import Balancing, Canary, NextUpstream, SessionCookie
from fastingress.translate import policy_selection as sel
from fastingress.translate.annotations import PREFIX, parse_annotations
from workers.affinity import Sticky, backend_key, endpoint_name, same_site_none_compatible, set_cookie
from workers.balance import FAILURE_RTT, Ewma
from workers.canary import CanaryRule
from workers.chash import Ring, subsets
from workers.hashkey import compile_key, parse_hash_by
from workers.policy import RequestCtx
from workers.retry import (
    CONNECT_ERROR,
    CONNECT_TIMEOUT,
    DEFAULT,
    ERROR,
    INVALID_HEADER,
    MAX_TRIES,
    STATUS,
    TIMEOUT,
    Retry,
    rules_of,
)

A, B, C, D = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80), ("10.0.0.4", 80)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


# --- parsers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("error timeout", ("error", "timeout")),
    ("http_502  error http_502", ("error", "http_502")),
    ("error off", ()),
    ("non_idempotent http_429", ("http_429", "non_idempotent")),
])
def test_parse_next_upstream(text: str, value: tuple[str, ...]) -> None:
    assert sel.parse_next_upstream(text) == value


def test_parse_next_upstream_refuses_with_did_you_mean() -> None:
    with pytest.raises(sel.Invalid) as info:
        sel.parse_next_upstream("error timout")
    assert info.value.suggestion == "timeout"
    with pytest.raises(sel.Invalid):
        sel.parse_next_upstream("  ")


def test_parsers_of_balancing_and_cookies() -> None:
    assert sel.parse_load_balance(" EWMA ") == "ewma"
    with pytest.raises(sel.Invalid, match="upstream-hash-by or affinity"):
        sel.parse_load_balance("chash")
    with pytest.raises(sel.Invalid) as info:
        sel.parse_load_balance("round-robin")
    assert info.value.suggestion == "round_robin"
    assert sel.parse_samesite("none") == "None" and sel.parse_samesite("LAX") == "Lax"
    assert sel.parse_header_name("X_Canary") == "x-canary"
    assert sel.parse_cookie_seconds("-1") == -1
    for bad in ("/a;b", "a", "/a b"):
        with pytest.raises(sel.Invalid):
            sel.parse_cookie_path(bad)
    assert sel.parse_hash_by("${request_uri}-x") == "${request_uri}-x"
    for bad in ("$request_id", "plain-text", "$uri;", ""):
        with pytest.raises(sel.Invalid):
            sel.parse_hash_by(bad)
    with pytest.raises(sel.Invalid, match="regular expression"):
        sel.parse_pattern("[a")
    assert sel.parse_timeout("10s") == 10.0 and sel.parse_tries("0") == 0


def test_settle_says_what_it_ignores() -> None:
    parsed, findings = parse_annotations({
        PREFIX + "session-cookie-name": "X", PREFIX + "upstream-hash-by-subset": "true",
        PREFIX + "affinity-canary-behavior": "legacy",
    })
    keys = {f.key.removeprefix(PREFIX): f.message for f in findings}
    assert "without `affinity" in keys["session-cookie-name"]
    assert "without upstream-hash-by" in keys["upstream-hash-by-subset"]
    assert "without `canary" in keys["affinity-canary-behavior"]
    assert parsed.upstream.balancing == sel.BalancingSettings()  # so the upstream keeps its plain name
    parsed, findings = parse_annotations(
        {PREFIX + "upstream-hash-by": "$uri", PREFIX + "load-balance": "ewma"}
    )
    assert parsed.upstream.balancing.load_balance == "round_robin"
    assert [f.key for f in findings] == [PREFIX + "load-balance"]


def test_a_canary_ingress_keeps_only_its_own_keys() -> None:
    parsed, findings = parse_annotations({
        PREFIX + "canary": "true", PREFIX + "canary-weight": "5", PREFIX + "rewrite-target": "/x",
        PREFIX + "load-balance": "ewma",
    })
    assert parsed.canary and parsed.canary_rules.weight == 5 and parsed.canary_rules.invalid == ()
    (finding,) = findings
    assert finding.key == PREFIX + "rewrite-target" and finding.severity == "info"
    parsed, findings = parse_annotations({PREFIX + "canary": "true", PREFIX + "canary-by-cookie": "a b"})
    assert parsed.canary_rules.invalid == ("canary-by-cookie",)
    assert any("takes no requests" in f.message for f in findings)


def test_next_upstream_defaults_are_ingress_nginx_ones() -> None:
    assert sel.next_upstream(sel.NextUpstreamSettings()) is None
    assert sel.next_upstream(sel.NextUpstreamSettings(tries=5)) == NextUpstream(("error", "timeout"), 5, 0.0)


def test_canary_balancing_sticky_and_legacy() -> None:
    main = sel.BalancingSettings(affinity="cookie", cookie_name="MAIN")
    own = sel.BalancingSettings(load_balance="ewma", affinity="cookie", cookie_name="OWN")
    sticky = sel.canary_balancing(main, own, "sticky")
    assert sticky.cookie_name == "MAIN" and sticky.load_balance == "round_robin"
    assert sel.canary_balancing(main, own, "legacy") == own
    assert sel.canary_balancing(sel.BalancingSettings(), own, "sticky").affinity is None  # as ingress-nginx


# --- the canary decision ---------------------------------------------------------------------


def decide(
    canary: Canary, headers: dict[bytes, bytes] | None = None, cookies: dict[str, str] | None = None, *,
    draw: int = 1, main: Balancing | None = None, alternative: Balancing | None = None,
) -> tuple[bool, str]:
    rule = CanaryRule(canary, main, alternative)
    return rule.decide((headers or {}).get, (cookies or {}).get, lambda n: draw)


def test_canary_precedence_header_then_cookie_then_weight() -> None:
    c = Canary(upstream="c", header="x-canary", cookie="canary", weight=100)
    assert decide(c, {b"x-canary": b"never"}, {"canary": "always"})[0] is False  # header first
    assert decide(c, {b"x-canary": b"always"}, {"canary": "never"})[0] is True
    assert decide(c, {b"x-canary": b"maybe"}, {"canary": "never"})[0] is False  # on to the cookie
    assert decide(c, {b"x-canary": b"maybe"}, {"canary": "other"})[0] is True  # on to the weight
    assert decide(c)[:2] == (True, "weight 100 of 100: every request")


def test_canary_header_value_and_pattern() -> None:
    valued = Canary(upstream="c", header="x-canary", header_value="beta", cookie="canary")
    assert decide(valued, {b"x-canary": b"beta"})[0] is True
    assert decide(valued, {b"x-canary": b"always"})[0] is False  # a value replaces always/never
    assert decide(valued, {b"x-canary": b"other"}, {"canary": "always"})[0] is True  # then the cookie
    pattern = Canary(upstream="c", header="x-canary", header_pattern="^Do[A-Z][a-z]+y$")
    assert decide(pattern, {b"x-canary": b"DoCanary"})[0] is True
    assert decide(pattern, {b"x-canary": b"Docanary"})[0] is False


def test_canary_weight_draws_against_the_total() -> None:
    c = Canary(upstream="c", weight=25, weight_total=1000)
    assert decide(c, draw=25)[0] is True and decide(c, draw=26)[0] is False
    assert CanaryRule(c).decide({}.get, {}.get, lambda n: n).chance == 0.025
    assert decide(Canary(upstream="c", weight=0))[0] is False
    assert decide(Canary(upstream="c", weight=1000, weight_total=1000))[0] is True
    assert decide(Canary(upstream="c", weight=5, weight_total=10), draw=6)[0] is False  # total below 100: 100


def test_canary_affinity_comes_first() -> None:
    cookie = SessionCookie(name="S")
    main = Balancing(affinity=cookie, backend="ns-web-80")
    alternative = Balancing(affinity=cookie, backend="ns-web-v2-80")
    c = Canary(upstream="c", header="x-canary", weight=0)
    pinned_main = {"S": "k|" + backend_key("ns-web-80")}
    pinned_canary = {"S": "k|" + backend_key("ns-web-v2-80")}
    assert decide(c, {b"x-canary": b"always"}, pinned_main, main=main, alternative=alternative)[0] is False
    assert decide(c, {b"x-canary": b"never"}, pinned_canary, main=main, alternative=alternative)[0] is True
    other = {"S": "k|other"}
    assert decide(c, {b"x-canary": b"always"}, other, main=main, alternative=alternative)[0] is True


# --- cookie affinity -------------------------------------------------------------------------


def test_cookie_keys_are_ingress_nginx_ones() -> None:
    name = "default-web-80"
    assert backend_key(name) == md5(md5(name) + name)
    assert endpoint_name(("fd00::1", 8080)) == "[fd00::1]:8080"
    sticky = Sticky(SessionCookie(mode="persistent"), name, random.Random(1))
    # A cookie ingress-nginx issued for 10.0.0.2:80 pins that endpoint here too.
    issued = f"{md5(name + '10.0.0.2:80')}|{backend_key(name)}"
    assert sticky.select({"INGRESSCOOKIE": issued}.get, (A, B, C), ()) == (B, None)


def test_persistent_affinity_moves_only_when_the_endpoint_is_gone() -> None:
    sticky = Sticky(SessionCookie(mode="persistent"), "ns-app-80", random.Random(7))
    first, value = sticky.select({}.get, (A, B, C), ())
    assert value is not None and value.endswith("|" + backend_key("ns-app-80"))
    jar = {"INGRESSCOOKIE": value}
    assert all(sticky.select(jar.get, (A, B, C), ()) == (first, None) for _ in range(20))
    rest = tuple(a for a in (A, B, C, D) if a != first)
    moved, new_value = sticky.select(jar.get, rest, ())
    assert moved in rest and new_value is not None and new_value != value


def test_balanced_affinity_hashes_the_cookie_key() -> None:
    sticky = Sticky(SessionCookie(), "ns-app-80", random.Random(3))
    first, value = sticky.select({}.get, (A, B, C), ())
    assert value is not None
    jar = {"INGRESSCOOKIE": value}
    assert sticky.select(jar.get, (A, B, C), ()) == (first, None)
    # Scaling keeps the cookie (balanced: some sessions move, none gets a new cookie).
    endpoint, kept = sticky.select(jar.get, (A, B, C, D), ())
    assert kept is None and endpoint in (A, B, C, D)


def test_change_on_failure() -> None:
    keep = Sticky(SessionCookie(mode="persistent"), "n", random.Random(1))
    first, value = keep.select({}.get, (A, B), ())
    assert value is not None
    jar = {"INGRESSCOOKIE": value}
    assert keep.select(jar.get, (A, B), (first,)) == (first, None)  # ingress-nginx: the same one again
    change = Sticky(SessionCookie(mode="persistent", change_on_failure=True), "n", random.Random(1))
    other, new = change.select(jar.get, (A, B), (first,))
    assert other != first and new is not None


def test_set_cookie_attributes() -> None:
    full = SessionCookie(name="R", domain=".example.com", max_age=60, expires=3600, secure=True,
                         samesite="None", conditional_samesite_none=True, partitioned=True)
    header = set_cookie(full, "k|b", path="/app", https=False, user_agent="curl/8", now=0.0)
    assert header == (b"R=k|b; Expires=Thu, 01-Jan-1970 01:00:00 GMT; Max-Age=60; Domain=.example.com; "
                      b"Path=/app; Secure; HttpOnly; SameSite=None; Partitioned")
    old_chrome = "Mozilla/5.0 (X11) AppleWebKit/537.36 Chrome/59.0.3071 Safari/537.36"
    assert b"SameSite" not in set_cookie(full, "v", path="/", https=True, user_agent=old_chrome, now=0.0)
    plain = set_cookie(SessionCookie(), "v", path="/x", https=True, user_agent=None, now=0.0)
    assert plain == b"INGRESSCOOKIE=v; Path=/x; Secure; HttpOnly"
    assert not same_site_none_compatible("Mozilla/5.0 (iPhone; CPU iPhone OS 12_0 like Mac OS X)")


# --- consistent hashing ----------------------------------------------------------------------


def test_ring_moves_only_the_keys_of_a_removed_node() -> None:
    nodes = [f"10.0.0.{i}:80" for i in range(1, 6)]
    keys = [f"/item/{i}" for i in range(2000)]
    ring = Ring(nodes)
    before = {k: nodes[ring.find(k)] for k in keys}
    spread = Counter(before.values())
    assert min(spread.values()) > 2000 / 5 * 0.6  # roughly even
    smaller = [n for n in nodes if n != "10.0.0.3:80"]
    ring2 = Ring(smaller)
    after = {k: smaller[ring2.find(k)] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == "10.0.0.3:80" for k in moved)
    assert next(iter(Ring(nodes).walk("x"))) == ring.find("x") and sorted(ring.walk("x")) == list(range(5))


def test_subsets_as_ingress_nginx_builds_them() -> None:
    assert subsets([A, B, C, D], 3) == [(A, B, C), (D, A, B)]
    assert subsets([A, B], 3) == [(A, B, A)]


def _ctx(**kw: object) -> RequestCtx:
    from fastingress.snapshot.schema import Forward, Route, WeightedBackend

    route = Route("/", "Prefix", Forward((WeightedBackend("u"),)))
    args: dict[str, object] = {
        "method": b"GET", "target": b"/a/b?x=1&y=2", "path": "/a/b", "query": "?x=1&y=2",
        "host": b"Shop.Example:8080", "headers": [(b"x-tenant", b"t1"), (b"cookie", b"sid=abc; o=1")],
        "client_ip": "192.0.2.7", "tls": False, "route": route, "vhost": None, "now": 0.0,
    }
    args.update(kw)
    return RequestCtx(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("expression", "value"), [
    ("$request_uri", "/a/b?x=1&y=2"), ("$uri", "/a/b"), ("$args", "x=1&y=2"), ("$arg_y", "2"),
    ("$host", "shop.example"), ("$remote_addr", "192.0.2.7"), ("${http_x_tenant}-z", "t1-z"),
    ("$cookie_sid$scheme", "abchttp"), ("$request_method", "GET"), ("$http_missing", ""),
])
def test_hash_keys(expression: str, value: str) -> None:
    key = compile_key(expression)
    assert key is not None and key(_ctx()) == value


def test_hash_key_parts() -> None:
    assert parse_hash_by("$uri-$uri")[1] == "-"
    assert compile_key("$nope") is None


# --- EWMA --------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ewma_prefers_the_faster_endpoint_and_forgets() -> None:
    clock = Clock()
    ewma = Ewma(clock, random.Random(5))
    ewma.observe(A, 0.5, clock.now)
    ewma.observe(B, 0.01, clock.now)
    assert all(ewma.pick((A, B), ()) == (B, A) for _ in range(10))
    assert ewma.pick((A, B), (B,)) == (A, None)  # a retry avoids what failed
    clock.now += 10.0
    assert ewma.score(A, clock.now) == pytest.approx(0.5 / 2.718281828, rel=1e-6)  # decays, 10 s constant
    ewma.observe(A, 0.1, clock.now)  # after 10 s the new measure weighs 1 - 1/e
    assert ewma.stats[A][0] == pytest.approx(0.5 / 2.718281828 + 0.1 * (1 - 1 / 2.718281828), rel=1e-6)
    ewma.slow_start((A, B, C))
    assert ewma.stats[C][0] == pytest.approx((ewma.stats[A][0] + ewma.stats[B][0]) / 2)
    ewma.retain(frozenset({A}))
    assert set(ewma.stats) == {A}
    assert FAILURE_RTT >= 1.0


# --- retry rules ---------------------------------------------------------------------------------


def retry(
    config: NextUpstream | None, method: bytes = b"GET", endpoints: tuple[tuple[str, int], ...] = (B, C, D)
) -> Retry:
    left = list(endpoints)
    return Retry(rules_of(config), lambda tried: left.pop(0) if left else None, A, method=method, start=0.0)


def test_default_rules_retry_a_failed_connect_once() -> None:
    assert rules_of(None) is DEFAULT
    r = retry(None)
    assert r.next(ERROR, sent=True, body_sent=False, now=0) is None
    assert r.next(CONNECT_ERROR, sent=False, body_sent=False, now=0) == B
    assert r.next(CONNECT_TIMEOUT, sent=False, body_sent=False, now=0) is None  # two attempts in all


def test_conditions_and_statuses() -> None:
    r = retry(NextUpstream(("error", "http_502", "invalid_header"), tries=10))
    assert r.next(TIMEOUT, sent=True, body_sent=False, now=0) is None
    assert r.next(STATUS, status=503, sent=True, body_sent=False, now=0) is None
    assert r.next(STATUS, status=502, sent=True, body_sent=False, now=0) == B
    assert r.next(INVALID_HEADER, sent=True, body_sent=False, now=0) == C
    assert r.tried == (A, B, C) and r.statuses == frozenset({502})


def test_non_idempotent_body_tries_and_timeout() -> None:
    post = retry(NextUpstream(("error",)), method=b"POST")
    assert post.next(ERROR, sent=True, body_sent=False, now=0) is None  # sent, not idempotent
    assert post.next(CONNECT_ERROR, sent=False, body_sent=False, now=0) == B  # never sent: fine
    assert retry(NextUpstream(("error", "non_idempotent")), method=b"PATCH").next(
        ERROR, sent=True, body_sent=False, now=0) == B
    assert retry(NextUpstream(("error",))).next(ERROR, sent=True, body_sent=True, now=0) is None
    tries = retry(NextUpstream(("error",), tries=2))
    assert tries.next(ERROR, sent=True, body_sent=False, now=0) == B
    assert tries.next(ERROR, sent=True, body_sent=False, now=0) is None
    timed = retry(NextUpstream(("error",), tries=0, timeout=5.0))
    assert timed.next(ERROR, sent=True, body_sent=False, now=4.9) == B
    assert timed.next(ERROR, sent=True, body_sent=False, now=5.0) is None
    assert rules_of(NextUpstream(("error",), tries=0)).tries == MAX_TRIES
    off = retry(NextUpstream(()))
    assert off.next(CONNECT_ERROR, sent=False, body_sent=False, now=0) is None


# --- explain ---------------------------------------------------------------------------------------

EXPLAIN_MANIFESTS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: main
  namespace: shop
  annotations:
    nginx.ingress.kubernetes.io/affinity: cookie
    nginx.ingress.kubernetes.io/proxy-next-upstream: error http_502
spec:
  ingressClassName: fastingress
  rules: [{host: shop.example.com, http: {paths: [{path: /, pathType: Prefix,
           backend: {service: {name: web, port: {number: 80}}}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: canary
  namespace: shop
  annotations:
    nginx.ingress.kubernetes.io/canary: "true"
    nginx.ingress.kubernetes.io/canary-by-header: X-Canary
    nginx.ingress.kubernetes.io/canary-by-cookie: beta
    nginx.ingress.kubernetes.io/canary-weight: "20"
spec:
  ingressClassName: fastingress
  rules: [{host: shop.example.com, http: {paths: [{path: /, pathType: Prefix,
           backend: {service: {name: web-v2, port: {number: 80}}}}]}}]
---
{apiVersion: v1, kind: Service, metadata: {name: web, namespace: shop}, spec: {ports: [{port: 80}]}}
---
{apiVersion: v1, kind: Service, metadata: {name: web-v2, namespace: shop}, spec: {ports: [{port: 80}]}}
"""


@pytest.mark.parametrize(("headers", "effect"), [
    ((("X-Canary", "always"),), "this request goes to the canary: header x-canary: always"),
    ((("Cookie", "a=1; beta=never"),), "this request stays on the main backend: cookie beta=never"),
    ((), "20.0% of such requests go to the canary, at random (weight 20 of 100)"),
])
def test_explain_shows_the_canary_decision(headers: tuple[tuple[str, str], ...], effect: str) -> None:
    import yaml

    from fastingress.explain import ExplainRequest, explain, render_text
    from fastingress.translate import translate

    snapshot = translate(list(yaml.safe_load_all(EXPLAIN_MANIFESTS))).snapshot
    result = explain(snapshot, ExplainRequest("http://shop.example.com/x", headers=headers))
    policies = {p.name: p for p in result.policies}
    assert policies["canary"].value == "Ingress shop/canary -> shop/web-v2:80"
    assert policies["canary"].effect == effect
    assert policies["proxy-next-upstream"].value == "error http_502"
    assert policies["affinity"].value == "cookie INGRESSCOOKIE (balanced)"
    assert [b.service for b in result.backends] == ["shop/web", "shop/web-v2"]
    assert effect in render_text(result)


def test_the_incremental_translator_follows_canary_changes() -> None:
    """A canary's weight, its appearance and its Service's endpoints reach the main route, as a
    fresh translation has them."""
    import copy

    import yaml

    from fastingress.snapshot.codec import encode_json
    from fastingress.translate import translate
    from fastingress.translate.incremental import Translator

    objects = list(yaml.safe_load_all(EXPLAIN_MANIFESTS))
    objects.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                    "metadata": {"name": "v2", "namespace": "shop",
                                 "labels": {"kubernetes.io/service-name": "web-v2"}},
                    "ports": [{"port": 80}], "endpoints": [{"addresses": ["10.2.0.1"]}]})
    translator = Translator()

    def check() -> dict[str, object]:
        result = translator.translate(objects)
        fresh = translate(objects)
        assert encode_json(result.snapshot) == encode_json(fresh.snapshot)
        assert result.diagnostics == fresh.diagnostics
        (route,) = result.snapshot.virtual_hosts[0].routes
        upstreams = {u.name: u for u in result.snapshot.upstreams}
        canary = route.policy.canary
        return {"weight": canary.weight if canary else None,
                "endpoints": [e.address for e in upstreams[canary.upstream].endpoints] if canary else None}

    assert check() == {"weight": 20, "endpoints": ["10.2.0.1"]}
    canary = copy.deepcopy(objects[1])
    canary["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] = "35"
    objects[1] = canary
    assert check()["weight"] == 35
    endpoints = copy.deepcopy(objects[-1])
    endpoints["endpoints"][0]["addresses"] = ["10.2.0.9"]
    objects[-1] = endpoints
    assert check()["endpoints"] == ["10.2.0.9"]
    del objects[1]  # the canary Ingress is gone
    assert check() == {"weight": None, "endpoints": None}


@pytest.mark.parametrize("fail_open", [False, True])
def test_a_canary_with_an_access_key_we_do_not_honour_takes_no_requests(fail_open: bool) -> None:
    import yaml

    from fastingress.translate import TranslateOptions, translate

    objects = list(yaml.safe_load_all(EXPLAIN_MANIFESTS))
    objects[1]["metadata"]["annotations"][PREFIX + "auth-snippet"] = "deny all;"  # never honoured
    result = translate(objects, TranslateOptions(unsafe_fail_open=fail_open))
    (route,) = result.snapshot.virtual_hosts[0].routes
    assert route.policy.canary is None and route.ingress == "shop/main"
    (finding,) = [d for d in result.diagnostics if d.name == "canary" and "auth-snippet" in d.field]
    assert "this canary takes no requests" in finding.message


def test_cookies_are_read_like_nginx_does() -> None:
    """One odd cookie of a browser (a JSON value, a space) must not hide the affinity or canary
    cookie beside it (the standard library's SimpleCookie drops them all)."""
    ctx = _ctx(headers=[(b"cookie", b'prefs={"a":1,"b":"x y"}; theme=dark mode'),
                        (b"cookie", b'INGRESSCOOKIE=k|b; beta="always"; theme=light')])
    assert ctx.cookie("INGRESSCOOKIE") == "k|b"
    assert ctx.cookie("beta") == "always"
    assert ctx.cookie("theme") == "dark mode"  # the first one, as nginx
    assert ctx.cookie("prefs") == '{"a":1,"b":"x y"}'
    assert ctx.cookie("missing") is None


def test_balancing_on_an_external_name_service_is_a_warning() -> None:
    from fastingress.translate import translate

    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": "ns"},
               "spec": {"type": "ExternalName", "externalName": "api.example.com", "ports": [{"port": 443}]}}
    ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "i", "namespace": "ns", "annotations": {PREFIX + "affinity": "cookie"}},
               "spec": {"rules": [{"host": "a.test", "http": {"paths": [{
                   "path": "/", "pathType": "Prefix",
                   "backend": {"service": {"name": "ext", "port": {"number": 443}}}}]}}]}}
    result = translate([service, ingress])
    assert any("not applied to its DNS addresses" in d.message and d.severity == "warning"
               for d in result.diagnostics)
