"""Redirects answered before any access check (nginx's rewrite phase, ingress-nginx's template):

* ``app-root``: ``if ($uri = /) { return 302 $scheme://$http_host<app-root>; }`` (the path
  only: the query is dropped, as nginx's ``return`` does);
* ``permanent-redirect`` / ``temporal-redirect``: ``return <code> <url>``: the URL as written,
  with the nginx variables in it expanded (``$request_uri``, ``$uri``, ``$args``, ``$is_args``,
  ``$query_string``, ``$host``, ``$http_host``, ``$scheme``, and ``$1``..``$9``: the groups of
  the route's regex); nothing of the request is appended.  A URL that is a path is made
  absolute with the request's scheme and host (nginx's ``absolute_redirect``, without port);
* ``from-to-www-redirect`` (``to_host``, on the host translation synthesised for the other
  name): 308 to ``$scheme://<host>[:port]$request_uri`` with one trailing ``/`` removed
  (``ngx_srv_redirect.lua``), the port being the one the client named in its Host header.

Order within the phase: app-root, then CORS preflights (``workers.policies.cors``), then the
redirect, as the template lays them out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from fastingress.snapshot.schema import Redirects, Route, Snapshot
from workers.heads import TEXT, error_body
from workers.policy import REWRITE, Answer, Policy, RequestCtx

_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([0-9])|([A-Za-z_][A-Za-z0-9_]*))")

Part = Callable[[RequestCtx], str]


def _host(ctx: RequestCtx) -> str:
    """$host: the request's host name, lower-case, without port."""
    host = ctx.host.decode("latin-1").lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rpartition(":")[0] if ":" in host else host


def _request_uri(ctx: RequestCtx) -> str:
    """$request_uri: the target as the client sent it (origin form)."""
    target = ctx.target.decode("latin-1")
    if not target.startswith("/") and "://" in target:  # absolute form: its path and query
        rest = target.partition("://")[2]
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i != -1), default=len(rest))
        target = rest[cut:]
        return target if target.startswith("/") else "/" + target
    return target


_VARIABLES: dict[str, Part] = {
    "request_uri": _request_uri,
    "uri": lambda ctx: ctx.path,
    "document_uri": lambda ctx: ctx.path,
    "args": lambda ctx: ctx.query[1:],
    "query_string": lambda ctx: ctx.query[1:],
    "is_args": lambda ctx: "?" if ctx.query else "",
    "host": _host,
    "http_host": lambda ctx: ctx.host.decode("latin-1"),
    "scheme": lambda ctx: "https" if ctx.tls else "http",
}


def _capture(route: Route, n: int) -> Part:
    try:  # as workers.routing.route_pattern: nginx's ``~*``
        pattern = re.compile(route.regex, re.IGNORECASE) if route.regex else None
    except re.error:
        pattern = None

    def group(ctx: RequestCtx) -> str:
        found = pattern.match(ctx.path) if pattern is not None else None
        if found is None or n > (found.re.groups or 0):
            return ""
        return found.group(n) or ""

    return group


def template(route: Route, url: str) -> Callable[[RequestCtx], str]:
    """``url`` compiled once into literal and variable parts (unknown variables: kept as text)."""
    parts: list[str | Part] = []
    last = 0
    for match in _VARIABLE.finditer(url):
        if match.start() > last:
            parts.append(url[last:match.start()])
        name = match.group(1) or match.group(2) or match.group(3)
        if name.isdigit():
            parts.append(_capture(route, int(name)))
        elif name in _VARIABLES:
            parts.append(_VARIABLES[name])
        else:
            parts.append(match.group(0))
        last = match.end()
    if last < len(url):
        parts.append(url[last:])

    def expand(ctx: RequestCtx) -> str:
        return "".join(p if isinstance(p, str) else p(ctx) for p in parts)

    return expand


def _absolute(ctx: RequestCtx, location: str) -> str:
    if location.startswith("/") and not location.startswith("//"):
        return f"{'https' if ctx.tls else 'http'}://{_host(ctx)}{location}"
    return location


def _answer(status: int, location: str) -> Answer:
    return Answer(status, error_body(status), TEXT, ((b"location", location.encode("latin-1", "replace")),))


def compile_app_root(route: Route, snapshot: Snapshot) -> Sequence[Policy]:
    redirects = route.policy.redirects
    if redirects is None or not redirects.app_root:
        return ()
    root = redirects.app_root

    def request(ctx: RequestCtx) -> Answer | None:
        if ctx.path != "/":
            return None
        scheme = "https" if ctx.tls else "http"
        return _answer(302, f"{scheme}://{ctx.host.decode('latin-1')}{root}")

    return (Policy(REWRITE, request=request, explain=f"app-root: / answers 302 to {root}"),)


def compile(route: Route, snapshot: Snapshot) -> Sequence[Policy]:
    redirects = route.policy.redirects
    if redirects is None:
        return ()
    if redirects.to_host:
        return (_to_host(redirects),)
    if not redirects.url:
        return ()
    expand = template(route, redirects.url)
    code = redirects.code

    def request(ctx: RequestCtx) -> Answer:
        return _answer(code, _absolute(ctx, expand(ctx)))

    what = "temporal" if code in (302, 303, 307) else "permanent"
    return (Policy(REWRITE, request=request, explain=f"{what}-redirect: {code} to {redirects.url}"),)


def _to_host(redirects: Redirects) -> Policy:
    host = redirects.to_host
    code = redirects.code

    def request(ctx: RequestCtx) -> Answer:
        scheme = "https" if ctx.tls else "http"
        sent = ctx.host.decode("latin-1")
        port = "" if sent.endswith("]") or ":" not in sent else ":" + sent.rpartition(":")[2]
        uri = _request_uri(ctx)
        if uri.endswith("/"):
            uri = uri[:-1]
        return _answer(code, f"{scheme}://{host}{port}{uri}")

    return Policy(REWRITE, request=request, explain=f"from-to-www-redirect: {code} to {host}, URI kept")
