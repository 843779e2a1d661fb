"""Route table semantics: the Kubernetes Ingress path-matching table, host precedence,
fallbacks, and Hypothesis properties against a brute-force reference of the spec."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from fastingress.snapshot.schema import (
    Forward,
    PathType,
    Respond,
    Route,
    Snapshot,
    VirtualHost,
    WeightedBackend,
)
from workers.routing import RouteTable, normalize_host


def _route(path: str, path_type: PathType, tag: str | None = None) -> Route:
    return Route(
        path=path,
        path_type=path_type,
        action=Forward((WeightedBackend(tag or f"{path_type}:{path}"),)),
    )


def _table(rules: list[tuple[str, PathType]], host: str = "") -> RouteTable:
    vhost = VirtualHost(hostname=host, routes=tuple(_route(p, t) for p, t in rules))
    return RouteTable.compile(Snapshot(virtual_hosts=(vhost,)))


def _matched(table: RouteTable, path: str, host: str = "any.example") -> str | None:
    m = table.match(host, path)
    if m.route is None:
        return None
    return f"{m.route.path_type}:{m.route.path}"


# The table in https://kubernetes.io/docs/concepts/services-networking/ingress/#examples
SPEC_TABLE: list[tuple[list[tuple[str, PathType]], str, str | None]] = [
    ([("/", "Prefix")], "/anything/at/all", "Prefix:/"),
    ([("/foo", "Exact")], "/foo", "Exact:/foo"),
    ([("/foo", "Exact")], "/bar", None),
    ([("/foo", "Exact")], "/foo/", None),
    ([("/foo/", "Exact")], "/foo", None),
    ([("/foo", "Prefix")], "/foo", "Prefix:/foo"),
    ([("/foo", "Prefix")], "/foo/", "Prefix:/foo"),
    ([("/foo/", "Prefix")], "/foo", "Prefix:/foo/"),
    ([("/foo/", "Prefix")], "/foo/", "Prefix:/foo/"),
    ([("/aaa/bb", "Prefix")], "/aaa/bbb", None),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb", "Prefix:/aaa/bbb"),
    ([("/aaa/bbb/", "Prefix")], "/aaa/bbb", "Prefix:/aaa/bbb/"),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/", "Prefix:/aaa/bbb"),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbb/ccc", "Prefix:/aaa/bbb"),
    ([("/aaa/bbb", "Prefix")], "/aaa/bbbxyz", None),
    ([("/", "Prefix"), ("/aaa", "Prefix")], "/aaa/ccc", "Prefix:/aaa"),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/aaa/bbb", "Prefix:/aaa/bbb"),
    ([("/", "Prefix"), ("/aaa", "Prefix"), ("/aaa/bbb", "Prefix")], "/ccc", "Prefix:/"),
    ([("/aaa", "Prefix")], "/ccc", None),
    ([("/foo", "Exact"), ("/foo", "Prefix")], "/foo", "Exact:/foo"),
]


def test_kubernetes_path_matching_table() -> None:
    for rules, request, expected in SPEC_TABLE:
        assert _matched(_table(rules), request) == expected, (rules, request)


def _host_table() -> RouteTable:
    def vh(name: str) -> VirtualHost:
        return VirtualHost(hostname=name, routes=(_route("/", "Prefix", name or "catch-all"),))

    return RouteTable.compile(
        Snapshot(virtual_hosts=(vh(""), vh("*.example.com"), vh("foo.example.com"), vh("example.com")))
    )


def _backend(table: RouteTable, host: str) -> str | None:
    action = table.match(host, "/").action
    assert action is None or isinstance(action, Forward)
    return None if action is None else action.backends[0].upstream


def test_host_precedence_exact_then_wildcard_then_catch_all() -> None:
    table = _host_table()
    assert _backend(table, "foo.example.com") == "foo.example.com"
    assert _backend(table, "FOO.Example.com:8080") == "foo.example.com"
    assert _backend(table, "foo.example.com.") == "foo.example.com"
    assert _backend(table, "bar.example.com") == "*.example.com"
    # A wildcard covers exactly one label.
    assert _backend(table, "a.bar.example.com") == "catch-all"
    assert _backend(table, "example.com") == "example.com"
    assert _backend(table, ".example.com") == "catch-all"
    assert _backend(table, "other.test") == "catch-all"


def test_no_host_match_uses_default_action_else_404() -> None:
    vhost = VirtualHost(hostname="a.test", routes=(_route("/x", "Prefix"),))
    table = RouteTable.compile(Snapshot(virtual_hosts=(vhost,)))
    assert table.match("b.test", "/x") == (None, None, None)
    default = Respond(418, "teapot")
    table = RouteTable.compile(Snapshot(virtual_hosts=(vhost,), default_action=default))
    assert table.match("b.test", "/x").action == default


def test_host_without_matching_path_uses_its_fallback_then_default() -> None:
    fallback = Forward((WeightedBackend("fallback"),))
    default = Forward((WeightedBackend("default"),))
    with_fb = VirtualHost(hostname="a.test", routes=(_route("/x", "Prefix"),), fallback=fallback)
    without_fb = VirtualHost(hostname="b.test", routes=(_route("/x", "Prefix"),))
    table = RouteTable.compile(Snapshot(virtual_hosts=(with_fb, without_fb), default_action=default))
    m = table.match("a.test", "/y")
    assert m.vhost == with_fb and m.route is None and m.action == fallback
    assert table.match("b.test", "/y").action == default
    # No fall-through to a less precise host, as in nginx.
    assert table.match("a.test", "/x").route is not None


def test_normalize_host() -> None:
    assert normalize_host("Example.COM:8080") == "example.com"
    assert normalize_host("[::1]:8080") == "[::1]"
    assert normalize_host("example.com.") == "example.com"
    assert normalize_host("  x.test ") == "x.test"


def test_higher_priority_wins_for_same_key() -> None:
    low = Route("/a/", "Prefix", Forward((WeightedBackend("low"),)), priority=1)
    high = Route("/a", "Prefix", Forward((WeightedBackend("high"),)), priority=2)
    table = RouteTable.compile(Snapshot(virtual_hosts=(VirtualHost("", routes=(low, high)),)))
    route = table.match("h", "/a/b").route
    assert route is not None and route.path == "/a"


# --- properties against a brute-force reference of the spec ----------------------------

_segments = st.sampled_from(["a", "b", "ab", "c"])
_paths = st.lists(_segments, min_size=0, max_size=4).flatmap(
    lambda segs: st.sampled_from(["/" + "/".join(segs), "/" + "/".join(segs) + "/"]).map(
        lambda p: p.replace("//", "/")
    )
)
_rules = st.lists(st.tuples(_paths, st.sampled_from(["Exact", "Prefix"])), min_size=1, max_size=8)


def _segs(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def _reference(rules: Sequence[tuple[str, str]], request: str) -> tuple[str, str] | None:
    """Spec semantics: Exact = same string; Prefix = element-wise prefix; the longest
    (trailing slash ignored) wins, and Exact beats Prefix at equal length."""
    best: tuple[tuple[int, int], tuple[str, str]] | None = None
    for path, kind in rules:
        if kind == "Exact":
            ok = path == request
            length = len(path)
        else:
            rule = _segs(path)
            ok = _segs(request)[: len(rule)] == rule
            length = len(path.rstrip("/")) or 1
        if ok:
            key = (length, 1 if kind == "Exact" else 0)
            if best is None or key > best[0]:
                best = (key, (kind, path.rstrip("/") or "/" if kind == "Prefix" else path))
    return None if best is None else best[1]


@given(rules=_rules, request=_paths)
def test_property_matches_spec_reference(rules: list[tuple[str, PathType]], request: str) -> None:
    table = _table(rules)
    route = table.match("h", request).route
    got = None if route is None else (
        route.path_type, route.path.rstrip("/") or "/" if route.path_type == "Prefix" else route.path
    )
    assert got == _reference(rules, request)


@given(rules=_rules, request=_paths)
def test_property_exact_beats_prefix_and_longest_prefix_wins(
    rules: list[tuple[str, PathType]], request: str
) -> None:
    route = _table(rules).match("h", request).route
    if (request, "Exact") in rules:
        assert route is not None and route.path_type == "Exact" and route.path == request
    elif route is not None:
        assert route.path_type == "Prefix"
        chosen = len(_segs(route.path))
        for path, kind in rules:
            if kind == "Prefix" and _segs(request)[: len(_segs(path))] == _segs(path):
                assert len(_segs(path)) <= chosen


@given(labels=st.lists(st.sampled_from(["x", "y", "example", "com"]), min_size=1, max_size=4))
def test_property_wildcard_covers_exactly_one_label(labels: list[str]) -> None:
    table = _host_table()
    host = ".".join(labels)
    got = _backend(table, host)
    if host in ("foo.example.com", "example.com"):
        assert got == host
    elif len(labels) == 3 and labels[1:] == ["example", "com"]:
        assert got == "*.example.com"
    else:
        assert got == "catch-all"


# --- use-regex / rewrite-target (ingress-nginx semantics) ---------------------------------

def _regex_route(path: str, tag: str, rewrite_target: str | None = None) -> Route:
    from fastingress.snapshot.schema import RoutePolicy

    return Route(
        path=path,
        path_type="Prefix",
        action=Forward((WeightedBackend(tag),)),
        priority=len(path.rstrip("/")) or 1,
        regex="^" + path,
        policy=RoutePolicy(rewrite_target=rewrite_target),
    )


def test_regex_routes_longest_first_case_insensitive_after_exact() -> None:
    routes = (
        _regex_route("/api(/|$)(.*)", "api", "/$2"),
        _regex_route("/", "frontend"),
        Route("/api/health", "Exact", Forward((WeightedBackend("health"),)), priority=1_000_011),
    )
    table = RouteTable.compile(Snapshot(virtual_hosts=(VirtualHost("app.test", routes=routes),)))

    def tag(path: str) -> str | None:
        action = table.match("app.test", path).action
        return action.backends[0].upstream if isinstance(action, Forward) else None

    assert tag("/api/users") == "api"
    assert tag("/API/users") == "api"
    assert tag("/api") == "api"
    assert tag("/apix") == "frontend"  # (/|$) needs a slash or the end
    assert tag("/api/health") == "health"  # Exact first, as nginx's "location ="
    assert tag("/") == "frontend"


def test_rewrite_target_uses_the_regex_groups() -> None:
    from workers.routing import rewrite

    api = _regex_route("/api(/|$)(.*)", "api", "/$2")
    assert rewrite(api, "/api/users/7", "?x=1") == ("/users/7", "?x=1")
    assert rewrite(api, "/api", "") == ("/", "")
    assert rewrite(_regex_route("/v1/(.*)", "v", "/${1}/x?y=2"), "/v1/a/b", "?q") == ("/a/b/x", "?y=2&q")
    assert rewrite(_regex_route("/old", "o", "/"), "/old/page", "") == ("/", "")
    assert rewrite(_regex_route("/g/(.*)", "g", "$1"), "/g/rel", "") == ("/rel", "")  # made absolute
    assert rewrite(_regex_route("/n", "n", "/$3"), "/n", "") == ("/", "")  # a missing group is empty
    assert rewrite(_route("/p", "Prefix"), "/p/q", "?z") == ("/p/q", "?z")  # no rewrite-target
