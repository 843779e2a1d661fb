"""What to do with a request (sans-I/O): route table + request head in, a decision out.

Theory of operation
-------------------
``decide`` is the one place routing and per-route policies meet a request, shared by every
data path: the event-driven HTTP/1.1 core (``workers.h1conn``), the task-based ``Session``
(the h11 reference and HTTP/2 streams).  It never does I/O and never waits, so it costs the
same wherever it runs, and a route without policies pays for nothing but its match:

1. the target is normalised (``pathnorm``: dot segments, ``//``, encoded slashes refused) and
   an absolute-form target (``GET http://a.test/x``) names the host instead of the Host
   header (RFC 9112 section 3.2.2);
2. the table in force matches host and path; the route's policies are applied in order:
   the redirect to HTTPS, then the action (redirect, fixed answer, or forward) with
   ``rewrite-target``, then the body limit against a declared Content-Length;
3. forwarding picks the backend (smooth weighted round robin) and the endpoints (round robin
   over ready ones, with an alternate for one retry).

The result is an ``Answer`` (write it and be done), a ``Proxy`` (forward to an HTTP/1.1
upstream), or a ``Handoff`` (the request needs a task: an Upgrade tunnel, an HTTP/2 or gRPC
upstream, or a DNS lookup for an ExternalName Service).  Errors are raised as
``fastingress.errors`` exceptions carrying their status.
"""

from __future__ import annotations

from typing import NamedTuple

from fastingress.errors import BodyTooLarge, NoEndpoint, UpstreamFailed
from fastingress.snapshot.schema import Forward, Redirect, Respond, Route, Upstream
from workers.balance import Address, Balancer
from workers.heads import TEXT, RequestInfo, error_body
from workers.http1 import valid_value
from workers.pathnorm import normalize_target
from workers.routing import RouteTable, rewrite
from workers.tlspolicy import redirect_location, wants_https
from workers.upstream_tls import H2_PROTOCOLS

_HTTP1_PROTOCOLS = frozenset({"HTTP", "AUTO_HTTP", "HTTPS"})  # GRPC/GRPCS/H2C: HTTP/2; FCGI: later
NO_LABELS = ("-", "-", "-")


class Answer(NamedTuple):
    """Answer the request ourselves."""

    status: int
    body: bytes
    content_type: bytes = TEXT
    extra: tuple[tuple[bytes, bytes], ...] = ()


class Proxy(NamedTuple):
    """Forward to an HTTP/1.1 (or HTTPS) upstream."""

    upstream: Upstream
    target: bytes  # origin-form path and query for the upstream
    host: bytes  # the Host header the upstream gets
    limit: int  # request body limit in bytes (0: none)
    primary: Address | None  # None: an ExternalName that must be resolved first
    alternate: Address | None  # for one retry after a failed connect
    route: Route | None


class Handoff(NamedTuple):
    """The request needs a trio task (``reason`` says why); ``proxy`` as far as known."""

    reason: str
    proxy: Proxy | None


Decision = Answer | Proxy | Handoff


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
    for sep in b"/?#":
        i = rest.find(bytes((sep,)))
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
    if route is not None:
        labels[1] = route.ingress or "-"
        labels[2] = route.service or "-"
        if not tls and wants_https(route.policy):
            location = redirect_location(info.host, target, path, https_port)
            if location is not None:
                return Answer(308, error_body(308), TEXT, ((b"location", location),))
    action = match.action
    if action is None:
        return Answer(404, error_body(404))
    kind = type(action)
    if kind is Redirect:
        assert isinstance(action, Redirect)
        return Answer(action.status, error_body(action.status), TEXT,
                      ((b"location", action.location.encode()),))
    if kind is Respond:
        assert isinstance(action, Respond)
        return Answer(action.status, action.body.encode(), action.content_type.encode())
    assert isinstance(action, Forward)
    if route is not None and route.policy.rewrite_target is not None:
        path, query = rewrite(route, path, query)
    limit = route.policy.max_body_size if route is not None else table.snapshot.settings.max_body_size
    if limit and info.content_length is not None and info.content_length > limit:
        raise BodyTooLarge(f"Content-Length {info.content_length} exceeds {limit}")
    name = balancer.pick_backend(action)
    upstream = table.upstreams.get(name)
    if upstream is None:
        raise NoEndpoint(f"upstream {name} is not in the snapshot")
    host = info.host
    if upstream.host_override:
        host = upstream.host_override.encode("latin-1", "replace")
        if not valid_value(host):
            raise UpstreamFailed(f"upstream {upstream.name}: invalid host override {host!r}")
    up_target = (path + query).encode() if path != "*" else b"*"
    if upstream.protocol in H2_PROTOCOLS:
        return Handoff("http2-upstream", Proxy(upstream, up_target, host, limit, None, None, route))
    if upstream.protocol not in _HTTP1_PROTOCOLS:
        raise UpstreamFailed(f"upstream {name}: protocol {upstream.protocol} is not supported yet")
    if upstream.external_name and not upstream.endpoints:
        return Handoff("resolve", Proxy(upstream, up_target, host, limit, None, None, route))
    addrs = balancer.ready(upstream)
    if not addrs:
        raise NoEndpoint(f"upstream {name} has no ready endpoint")
    primary, alternate = balancer.pick(name, addrs)
    proxy = Proxy(upstream, up_target, host, limit, primary, alternate, route)
    if info.upgrade is not None:
        return Handoff("upgrade", proxy)
    return proxy


__all__ = ["NO_LABELS", "Answer", "Decision", "Handoff", "Proxy", "absolute_authority", "decide"]
