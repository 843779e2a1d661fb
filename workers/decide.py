"""What to do with a request (sans-I/O): route table + request head in, a decision out.

Theory of operation
-------------------
``decide`` is the one place routing and per-route policies meet a request, shared by every
data path: the event-driven HTTP/1.1 core (``workers.h1conn``) and the task-based ``Session``
(the h11 reference and HTTP/2 streams).  It never does I/O and never waits, so it costs the
same wherever it runs, and a route without policies pays for nothing but its match:

1. the target is normalised (``pathnorm``: dot segments, ``//``, encoded slashes refused) and
   an absolute-form target (``GET http://a.test/x``) names the host instead of the Host
   header (RFC 9112 section 3.2.2);
2. the table in force matches host and path; the redirect to HTTPS comes first, then the
   route's compiled policies (``workers.policy``: redirects, limits, access, auth...), each
   of which may answer, or defer to a task (``Pending``: the caller awaits ``defer.run()`` and
   calls ``resume`` with its result);
3. the action: a redirect or fixed answer, or forwarding with ``rewrite-target``, the body
   limit against a declared Content-Length, the backend (smooth weighted round robin, or a
   policy's choice such as a canary) and the endpoints (round robin or EWMA over ready ones,
   or a policy's choice such as affinity, with an alternate for one retry; a route with
   proxy-next-upstream or a balancing policy gets a ``workers.retry.Retry`` instead, which
   asks the same choice again, told which endpoints failed).

The result is an ``Answer`` (write it and be done), a ``Proxy`` (forward to an HTTP/1.1
upstream), a ``Handoff`` (the request needs a task: an Upgrade tunnel, an HTTP/2 or gRPC
upstream, or a DNS lookup for an ExternalName Service) or a ``Pending`` (see 2).

A policy may replace an answer by another backend's (``policy.Refetch``: custom-http-errors,
default-backend): when the chosen upstream has no ready endpoint (``unavailable`` hooks, here),
or once an upstream's response head arrived or it failed (``ctx.intercept``, in the data
paths); ``refetch`` turns a ``Refetch`` into the decision for it, and ``refetch_info`` gives
the body-less request that fetches an error page after the request itself went upstream.  ``ctx``
(present when the route has policies) must see the response head (``ctx.respond``) and the end
of the request (``ctx.finish``).  Errors are raised as ``fastingress.errors`` exceptions
carrying their status.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from fastingress.errors import BodyTooLarge, FastIngressError, NoEndpoint, UpstreamFailed
from fastingress.snapshot.schema import Forward, Redirect, Respond, Route, Upstream, VirtualHost
from workers.balance import Address, Balancer
from workers.heads import REQ_DROP, TEXT, RequestInfo, error_body
from workers.http1 import valid_value
from workers.pathnorm import normalize_target
from workers.policy import Answer, Compiled, Defer, Refetch, RequestCtx, run_request_hooks
from workers.retry import TRIED, Retry, rules_of
from workers.routing import RouteTable, rewrite
from workers.tlspolicy import redirect_location, wants_https
from workers.upstream_tls import H2_PROTOCOLS

_HTTP1_PROTOCOLS = frozenset({"HTTP", "AUTO_HTTP", "HTTPS"})  # GRPC/GRPCS/H2C: HTTP/2; FCGI: later
NO_LABELS = ("-", "-", "-")


class Proxy(NamedTuple):
    """Forward to an HTTP/1.1 (or HTTPS) upstream."""

    upstream: Upstream
    target: bytes  # origin-form path and query for the upstream
    host: bytes  # the Host header the upstream gets
    limit: int  # request body limit in bytes (0: none)
    primary: Address | None  # None: an ExternalName that must be resolved first
    alternate: Address | None  # for one retry after a failed connect
    route: Route | None
    ctx: RequestCtx | None = None  # the route's policies (response and done hooks, headers)
    retry: Retry | None = None  # proxy-next-upstream / balancing: next attempts (alternate unused)


class Handoff(NamedTuple):
    """The request needs a trio task (``reason`` says why); ``proxy`` as far as known."""

    reason: str
    proxy: Proxy | None


class Pending(NamedTuple):
    """A policy must wait: await ``defer.run()``, then ``resume(result)`` is the decision."""

    defer: Defer
    resume: Callable[[Answer | None], Decision]
    ctx: RequestCtx


Decision = Answer | Proxy | Handoff | Pending


class Decided(NamedTuple):
    """A decision the event-driven core made before handing the connection to a Session (an
    Upgrade tunnel, an HTTP/2 upstream): the Session carries it out instead of deciding again,
    so the route's policies run once per request (one auth subrequest, one rate-limit count)."""

    decision: Handoff
    info: RequestInfo
    labels: tuple[str, str, str]


def absolute_authority(target: bytes) -> bytes | None:
    """The authority of an absolute-form target (``http://a.test:8080/x`` → ``a.test:8080``)."""
    lower = target[:8].lower()
    if lower.startswith(b"http://"):
        rest = target[7:]
    elif lower.startswith(b"https://"):
        rest = target[8:]
    else:
        return None
    end = len(rest)
    for sep in (b"/", b"?", b"#"):
        i = rest.find(sep)
        if i != -1 and i < end:
            end = i
    authority = rest[:end].rpartition(b"@")[2]
    return authority or None


def decide(
    table: RouteTable | None,
    balancer: Balancer,
    method: bytes,
    target: bytes,
    info: RequestInfo,
    *,
    tls: bool,
    https_port: int,
    labels: list[str],
    client_ip: str = "",
    now: float = 0.0,
    tls_peer: object = None,
) -> Decision:
    """Decide; ``labels`` (host, ingress, service) is filled in for metrics as soon as known."""
    if table is None:
        return Answer(503, b"503 Service Unavailable\nno configuration yet\n")
    path, query = normalize_target(target)
    if target[:1] != b"/" and target != b"*":
        authority = absolute_authority(target)
        if authority is not None:
            info.host = authority
    match = table.match(info.host.decode("latin-1"), path)
    route = match.route
    if match.vhost is not None:
        labels[0] = match.vhost.hostname
    if route is None:
        return _act(table, balancer, match.action, None, path, query, info, None, method=method, now=now)
    labels[1] = route.ingress or "-"
    labels[2] = route.service or "-"
    if not tls and wants_https(route.policy):
        location = redirect_location(info.host, target, path, https_port)
        if location is not None:
            code = table.snapshot.settings.http_redirect_code  # the ConfigMap's http-redirect-code
            return Answer(code, error_body(code), TEXT, ((b"location", location),))
    compiled = table.policies(route)
    if compiled is None:
        return _act(table, balancer, match.action, route, path, query, info, None, method=method, now=now)
    ctx = RequestCtx(
        method=method, target=target, path=path, query=query, host=info.host, headers=info.headers,
        client_ip=client_ip, tls=tls, route=route, vhost=match.vhost, now=now, tls_peer=tls_peer, info=info,
    )
    ctx.response_hooks = compiled.response
    ctx.done_hooks = compiled.done
    ctx.intercept_hooks = compiled.intercept
    return _hooks(table, balancer, match.action, route, info, ctx, compiled, 0)


def _hooks(  # noqa: PLR0917 (the state a deferred hook resumes with)
    table: RouteTable,
    balancer: Balancer,
    action: Forward | Redirect | Respond | None,
    route: Route,
    info: RequestInfo,
    ctx: RequestCtx,
    compiled: Compiled,
    start: int,
) -> Decision:
    index, result = run_request_hooks(ctx, compiled.request, start)
    if isinstance(result, Answer):
        return _with_headers(result, ctx)
    if isinstance(result, Defer):

        def resume(outcome: Answer | None) -> Decision:
            if outcome is not None:
                return _with_headers(outcome, ctx)
            return _hooks(table, balancer, action, route, info, ctx, compiled, index + 1)

        return Pending(result, resume, ctx)
    try:
        return _act(table, balancer, action, route, ctx.path, ctx.query, info, ctx, compiled,
                    method=ctx.method, now=ctx.now)
    except FastIngressError as exc:  # (413, 503...): answered with the route's policies too
        exc.ctx = ctx
        raise


def _with_headers(answer: Answer, ctx: RequestCtx) -> Answer:
    """An answer of a policy, carrying the request's ``ctx`` (the data path runs its response
    hooks on the answer's head, e.g. CORS headers on a 401, and its done hooks at the end)."""
    return answer._replace(ctx=ctx)


def _act(  # noqa: PLR0917 (the state of one decision)
    table: RouteTable,
    balancer: Balancer,
    action: Forward | Redirect | Respond | None,
    route: Route | None,
    path: str,
    query: str,
    info: RequestInfo,
    ctx: RequestCtx | None,
    compiled: Compiled | None = None,
    *,
    method: bytes = b"GET",
    now: float = 0.0,
) -> Decision:
    if action is None:
        return Answer(404, error_body(404), ctx=ctx)
    if type(action) is Redirect:
        assert isinstance(action, Redirect)
        return Answer(action.status, error_body(action.status), TEXT,
                      ((b"location", action.location.encode()),), ctx)
    if type(action) is Respond:
        assert isinstance(action, Respond)
        return Answer(action.status, action.body.encode(), action.content_type.encode(), ctx=ctx)
    assert isinstance(action, Forward)
    if route is not None and route.policy.rewrite_target is not None:
        path, query = rewrite(route, path, query)
    limit = route.policy.max_body_size if route is not None else table.snapshot.settings.max_body_size
    if limit and info.content_length is not None and info.content_length > limit:
        raise BodyTooLarge(f"Content-Length {info.content_length} exceeds {limit}")
    name = _backend(ctx, compiled, action) or balancer.pick_backend(action)
    upstream = table.upstreams.get(name)
    if upstream is None:
        raise NoEndpoint(f"upstream {name} is not in the snapshot")
    host = info.host
    if upstream.host_override:
        host = upstream.host_override.encode("latin-1", "replace")
        if not valid_value(host):
            raise UpstreamFailed(f"upstream {upstream.name}: invalid host override {host!r}")
    if ctx is not None and ctx.upstream_headers:
        info.headers.extend(ctx.upstream_headers)
    up_target = (path + query).encode() if path != "*" else b"*"
    if upstream.protocol in H2_PROTOCOLS:
        primary: Address | None = None
        alternate: Address | None = None
        addrs = balancer.ready(upstream) if upstream.balancing is not None else ()
        if addrs:  # affinity, hashing, EWMA (else forward_h2 picks by round robin)
            primary, alternate = pick_endpoint(balancer, upstream, addrs, ctx, compiled)
        proxy = Proxy(upstream, up_target, host, limit, primary, alternate, route, ctx)
        return Handoff("http2-upstream", proxy)
    if upstream.protocol not in _HTTP1_PROTOCOLS:
        raise UpstreamFailed(f"upstream {name}: protocol {upstream.protocol} is not supported yet")
    if upstream.external_name and not upstream.endpoints:
        return Handoff("resolve", Proxy(upstream, up_target, host, limit, None, None, route, ctx))
    addrs = balancer.ready(upstream)
    if not addrs:
        if ctx is not None and compiled is not None and compiled.unavailable:
            for hook in compiled.unavailable:
                fetch = hook(ctx, upstream)
                if fetch is not None:  # default-backend, custom-http-errors with 503
                    return refetch(table, balancer, fetch, info, ctx, up_target, limit)
        raise NoEndpoint(f"upstream {name} has no ready endpoint")
    primary, alternate = pick_endpoint(balancer, upstream, addrs, ctx, compiled)
    retry: Retry | None = None
    next_upstream = route.policy.next_upstream if route is not None else None
    if next_upstream is not None or upstream.balancing is not None:
        retry = Retry(rules_of(next_upstream), _chooser(balancer, upstream, addrs, ctx, compiled), primary,
                      method=method, start=now)
        alternate = None
    proxy = Proxy(upstream, up_target, host, limit, primary, alternate, route, ctx, retry)
    if info.upgrade is not None:
        return Handoff("upgrade", proxy)
    return proxy


def refetch(  # noqa: PLR0917 (what the replacement request is made of)
    table: RouteTable | None,
    balancer: Balancer,
    fetch: Refetch,
    info: RequestInfo,
    ctx: RequestCtx,
    target: bytes,
    limit: int = 0,
) -> Answer | Proxy | Handoff:
    """The decision for ``fetch``: forward to its upstream (``info``'s headers get its headers;
    ``target`` unless it names one), or answer its status ourselves when there is no usable
    upstream.  The replacement's own answer is never intercepted again."""
    ctx.intercept_hooks = ()
    upstream = table.upstreams.get(fetch.upstream) if table is not None and fetch.upstream else None
    if upstream is None or upstream.protocol not in _HTTP1_PROTOCOLS:
        return Answer(fetch.status, error_body(fetch.status), ctx=ctx)
    if fetch.headers:
        names = {name for name, _ in fetch.headers}
        info.headers[:] = [(n, v) for n, v in info.headers if n not in names]
        info.headers.extend(fetch.headers)
    up_target = fetch.target if fetch.target is not None else target
    if upstream.external_name and not upstream.endpoints:
        return Handoff("resolve", Proxy(upstream, up_target, info.host, limit, None, None, ctx.route, ctx))
    addrs = balancer.ready(upstream)
    if not addrs:
        return Answer(fetch.status, error_body(fetch.status), ctx=ctx)
    primary, alternate = balancer.pick(upstream.name, addrs)
    proxy = Proxy(upstream, up_target, info.host, limit, primary, alternate, ctx.route, ctx)
    return Handoff("upgrade", proxy) if info.upgrade is not None else proxy


def refetch_info(info: RequestInfo) -> RequestInfo:
    """A body-less copy of a request that already went upstream, to fetch an error page: its
    end-to-end headers without framing and without those the data path adds (again)."""
    fresh = RequestInfo()
    fresh.host = info.host
    fresh.request_id = info.request_id
    fresh.headers = [(n, v) for n, v in info.headers if n not in REQ_DROP and n != b"content-length"]
    return fresh


def _backend(ctx: RequestCtx | None, compiled: Compiled | None, action: Forward) -> str | None:
    if ctx is None or compiled is None or not compiled.backend:
        return None
    for hook in compiled.backend:
        name = hook(ctx, action)
        if name is not None:
            ctx.backend_name = name
            return name
    return None


def pick_endpoint(
    balancer: Balancer,
    upstream: Upstream,
    addrs: tuple[Address, ...],
    ctx: RequestCtx | None,
    compiled: Compiled | None,
) -> tuple[Address, Address | None]:
    """(primary, alternate): a policy's choice (affinity, hashing), else round robin."""
    if ctx is not None and compiled is not None:
        for hook in compiled.select:
            chosen = hook(ctx, upstream, addrs)
            if chosen is not None:
                return chosen
    return balancer.choose(upstream, addrs, ctx)


def _chooser(
    balancer: Balancer, upstream: Upstream, addrs: tuple[Address, ...], ctx: RequestCtx | None,
    compiled: Compiled | None,
) -> Callable[[tuple[Address, ...]], Address | None]:
    """The endpoint of a retry: the same choice as the first, told which endpoints failed."""

    def choose(tried: tuple[Address, ...]) -> Address | None:
        if ctx is not None:
            ctx.state[TRIED] = tried
            if compiled is not None:
                for hook in compiled.select:
                    chosen = hook(ctx, upstream, addrs)
                    if chosen is not None:
                        return chosen[0]
        return balancer.choose(upstream, addrs, ctx, tried)[0]

    return choose


def explain_policies(compiled: Compiled | None) -> Sequence[str]:
    """One line per policy of a route (for ``fastingress explain``)."""
    if compiled is None:
        return ()
    return tuple(p.explain for p in compiled.policies if p.explain)


__all__ = [
    "NO_LABELS", "Answer", "Decided", "Decision", "Handoff", "Pending", "Proxy", "VirtualHost",
    "absolute_authority", "decide", "explain_policies", "pick_endpoint", "refetch", "refetch_info",
]
