"""The compiled route table of a worker (sans-I/O): ``match(host, path) -> RouteMatch``.

Theory of operation
-------------------
A snapshot is compiled once per generation into plain dicts, so matching a request is a
handful of dict lookups and never scans the route list:

* hosts: ``exact[host]``, then ``wildcard[host minus its first label]`` (``*.example.com``
  covers exactly one label), then the catch-all host ``""`` (rules without a host).  The most
  precise host wins and, as in nginx, there is no fall-through to a less precise host: a
  request for a known host that matches none of its paths gets the host's fallback (its
  Ingress's defaultBackend), then the snapshot's default action, then 404;
* paths: ``exact[path]`` first, since an Exact match always wins (its path is at least as long
  as any Prefix that matches); then the Prefix rules by element-wise prefix, longest first: the
  request path is cut back one segment at a time (``/a/b/c`` → ``/a/b`` → ``/a`` → ``/``) and each
  cut is looked up in ``prefix`` whose keys have their trailing ``/`` removed (Kubernetes: Prefix
  ``/foo/`` and ``/foo`` are the same rule and both match ``/foo``, ``/foo/`` and ``/foo/bar`` but
  not ``/foobar``).

Host normalisation (lower case, port and trailing dot removed) is memoised in a small
per-table dict, since the same few Host headers arrive over and over.

Compiling is lazy per host: a new table only files each VirtualHost under its name, and a
host's path dicts are built the first time a request asks for that host (then kept).  With
10,000 hosts a new generation is in force in milliseconds, and the first request to a host
pays microseconds; what a lookup answers is the same as if everything had been compiled up
front.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import NamedTuple

from fastingress.snapshot.schema import Action, Route, Snapshot, Upstream, VirtualHost
from workers.policies import COMPILERS
from workers.policy import Compiled, Compiler, compile_route

_HOST_CACHE_MAX = 4096


class RouteMatch(NamedTuple):
    vhost: VirtualHost | None  # the matched virtual host (None: no host matched)
    route: Route | None  # the matched route (None: fallback, default action or 404)
    action: Action | None  # what to do; None means 404


@functools.lru_cache(maxsize=4096)
def route_pattern(regex: str) -> re.Pattern[str] | None:
    """A route's regex compiled as nginx ``~*`` does (case-insensitive); None if invalid
    (translation validates every regex, so that only happens with a hand-made snapshot)."""
    try:
        return re.compile(regex, re.IGNORECASE)
    except re.error:
        return None


class _Host:
    __slots__ = ("exact", "fallback", "prefix", "regex", "vhost")

    def __init__(self, vhost: VirtualHost) -> None:
        self.vhost = vhost
        self.exact: dict[str, Route] = {}
        self.prefix: dict[str, Route] = {}
        self.regex: list[tuple[re.Pattern[str], Route]] = []
        self.fallback = vhost.fallback
        # Highest priority first, so the first rule seen for a key wins (sorted() is stable:
        # regex routes keep the snapshot's order among equals).
        for route in sorted(vhost.routes, key=lambda r: -r.priority):
            if route.path_type == "Exact":
                self.exact.setdefault(route.path, route)
            elif route.regex is not None:
                pattern = route_pattern(route.regex)
                if pattern is not None:
                    self.regex.append((pattern, route))
            else:
                self.prefix.setdefault(prefix_key(route.path), route)

    def match_path(self, path: str) -> Route | None:
        route = self.exact.get(path)
        if route is not None:
            return route
        if self.regex:
            for pattern, route in self.regex:
                if pattern.match(path):
                    return route
        prefix = self.prefix
        if not prefix:
            return None
        p = path
        while True:
            route = prefix.get(p)
            if route is not None:
                return route
            if p == "/":
                return None
            cut = p.rfind("/")
            p = p[:cut] if cut > 0 else "/"


_CAPTURE = re.compile(r"\$(?:(\d)|\{(\d+)\})")


def rewrite(route: Route, path: str, query: str) -> tuple[str, str]:
    """``rewrite-target`` as nginx's ``rewrite <regex> <target> break``: the whole path becomes
    the target, with ``$1``/``${1}`` replaced by the route regex's groups (missing: empty).
    A ``?`` in the target starts new arguments; the request's own are appended after them."""
    target = route.policy.rewrite_target
    if target is None:
        return path, query
    pattern = route_pattern(route.regex or "^" + re.escape(route.path))
    found = pattern.match(path) if pattern is not None else None

    def group(m: re.Match[str]) -> str:
        n = int(m.group(1) or m.group(2))
        if found is None or n > (found.re.groups or 0):
            return ""
        return found.group(n) or ""

    new_path, sep, new_query = _CAPTURE.sub(group, target).partition("?")
    if not new_path.startswith("/"):
        new_path = "/" + new_path
    if sep:
        query = "?" + new_query + ("&" + query[1:] if query else "")
    return new_path, query


def prefix_key(path: str) -> str:
    """The lookup key of a Prefix rule: its path without trailing slashes ("/" stays)."""
    stripped = path.rstrip("/")
    return stripped or "/"


def normalize_host(host: str) -> str:
    """``Example.COM:8080`` → ``example.com``; ``[::1]:80`` → ``[::1]``; trailing dot dropped."""
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[: end + 1] if end != -1 else h
    colon = h.rfind(":")
    if colon != -1:
        h = h[:colon]
    return h.rstrip(".")


class RouteTable:
    """An immutable compiled view of one snapshot."""

    __slots__ = (
        "_catch_all", "_compilers", "_exact", "_host_cache", "_policies", "_wildcard", "default_action",
        "snapshot", "upstreams",
    )

    def __init__(self, snapshot: Snapshot, compilers: Sequence[Compiler] | None = None) -> None:
        self.snapshot = snapshot
        # The policy areas (None: COMPILERS; a worker's own count limits in shared memory).
        self._compilers = compilers
        self.upstreams: dict[str, Upstream] = {u.name: u for u in snapshot.upstreams}
        self.default_action = snapshot.default_action
        # Filed as VirtualHost, replaced by its _Host on first use (the first vhost of a name wins).
        self._exact: dict[str, _Host | VirtualHost] = {}
        self._wildcard: dict[str, _Host | VirtualHost] = {}
        self._catch_all: _Host | VirtualHost | None = None
        self._host_cache: dict[str, _Host | None] = {}
        self._policies: dict[int, Compiled | None] = {}  # id(route) -> its compiled policies
        exact = self._exact
        for vhost in snapshot.virtual_hosts:
            name = vhost.hostname.lower()
            if name in exact:
                continue
            if name == "" or name.startswith("*."):
                self._add_host(name, vhost)
            else:
                exact[name] = vhost

    def policies(self, route: Route) -> Compiled | None:
        """The route's compiled policies (``workers.policy``), compiled on first use; None if none."""
        cache = self._policies
        try:
            return cache[id(route)]
        except KeyError:
            compilers = COMPILERS if self._compilers is None else self._compilers
            compiled = cache[id(route)] = compile_route(route, self.snapshot, compilers)
            return compiled

    @classmethod
    def compile(cls, snapshot: Snapshot, compilers: Sequence[Compiler] | None = None) -> RouteTable:
        return cls(snapshot, compilers)

    def _add_host(self, name: str, vhost: VirtualHost) -> None:
        if name == "":
            self._catch_all = self._catch_all or vhost
        else:
            self._wildcard.setdefault(name[2:], vhost)

    @staticmethod
    def _compiled(table: dict[str, _Host | VirtualHost], key: str) -> _Host | None:
        found = table.get(key)
        if found is None or isinstance(found, _Host):
            return found
        compiled = table[key] = _Host(found)
        return compiled

    def _find_host(self, raw: str) -> _Host | None:
        cache = self._host_cache
        try:
            return cache[raw]
        except KeyError:
            pass
        found = self._lookup_host(normalize_host(raw))
        if len(cache) >= _HOST_CACHE_MAX:
            cache.clear()
        cache[raw] = found
        return found

    def _lookup_host(self, host: str) -> _Host | None:
        found = self._compiled(self._exact, host)
        if found is not None:
            return found
        label, dot, rest = host.partition(".")
        if dot and label and rest:
            found = self._compiled(self._wildcard, rest)
            if found is not None:
                return found
        catch_all = self._catch_all
        if isinstance(catch_all, VirtualHost):
            catch_all = self._catch_all = _Host(catch_all)
        return catch_all

    def match(self, host: str, path: str) -> RouteMatch:
        compiled = self._find_host(host)
        if compiled is None:
            return RouteMatch(None, None, self.default_action)
        route = compiled.match_path(path)
        if route is not None:
            return RouteMatch(compiled.vhost, route, route.action)
        action = compiled.fallback if compiled.fallback is not None else self.default_action
        return RouteMatch(compiled.vhost, None, action)
