"""``fastingress explain``: which Ingress, rule, backend and policies serve one request, and
why the other rules of its host did not.

Theory of operation
-------------------
The decision is the workers' own, on the same Snapshot: ``workers.pathnorm.normalize_target``
normalises the request-target, ``workers.routing.RouteTable.match`` picks the virtual host and
route, ``workers.routing.rewrite`` computes the upstream path and ``workers.tlspolicy`` decides
the redirect to HTTPS, in the order ``workers.proxy`` applies them.  This module only describes
the result: it never decides anything the data plane would decide differently.  The route's
compiled policies (``workers.policy``) are listed by their ``explain`` lines, and those of the
rewrite phase (redirects, app-root, CORS preflights: answers without side effects) are run, so
an answer they give is the outcome.

The result is an ``Explanation`` (a msgspec Struct): ``render_text`` prints it for people and
``-o json`` prints it for programs; the admin port's ``/explain`` returns the same JSON about
the live snapshot.  Policies are a list of ``Policy(name, value, effect)``, so that new ones
(auth, limits, canary decisions: issue 9) add entries, not a new shape.

Pure: a Snapshot and a request in, an Explanation out; no I/O.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import parse_qs, urlencode, urlsplit

import msgspec

from fastingress.errors import FastIngressError
from fastingress.snapshot.schema import (
    Action,
    Canary,
    Forward,
    Redirect,
    Respond,
    Route,
    RoutePolicy,
    Snapshot,
    Upstream,
    VirtualHost,
)
from fastingress.translate.model import Diagnostic
from workers.canary import CanaryRule
from workers.clientip import Front
from workers.decide import explain_policies
from workers.heads import scan_request
from workers.pathnorm import normalize_target
from workers.policies.access import RangeCheck, explain_client
from workers.policy import REWRITE, Answer, RequestCtx
from workers.routing import RouteTable, normalize_host, prefix_key, rewrite, route_pattern
from workers.tlspolicy import ACME_PREFIX, redirect_location, wants_https

FAIL_CLOSED_MARK = "(fail closed)"
_MAX_CANDIDATES = 200
_MAX_HOST_HINTS = 3


class DiagnosticLike(Protocol):
    @property
    def severity(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def message(self) -> str: ...


class ExplainRequest(msgspec.Struct, frozen=True):
    """What to explain: a URL as a client would ask for it."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()
    client_ip: str = ""
    method: str = "GET"


class RuleView(msgspec.Struct, frozen=True):
    """One route of the snapshot: an Ingress rule's path."""

    ingress: str
    host: str  # "" for rules without a host
    path: str
    path_type: str  # "Exact", "Prefix" (ImplementationSpecific is Prefix)
    regex: str | None = None
    service: str = ""  # "namespace/name:port" as written in the Ingress


class EndpointView(msgspec.Struct, frozen=True):
    address: str
    port: int
    ready: bool
    serving: bool
    terminating: bool


class BackendView(msgspec.Struct, frozen=True):
    upstream: str  # Upstream.name
    weight: int = 100
    service: str = ""
    protocol: str = "HTTP"
    external_name: str | None = None  # resolved by DNS in the workers
    port: int = 0
    endpoints: tuple[EndpointView, ...] = ()
    missing: bool = False  # not in the snapshot (the worker answers 503)


class Policy(msgspec.Struct, frozen=True):
    """One policy that applies: its name (usually the annotation), value and effect here."""

    name: str
    value: str
    effect: str = ""


class Candidate(msgspec.Struct, frozen=True):
    """Another rule of the host, and why it did not serve the request."""

    rule: RuleView
    matches: bool  # its path matches, but another rule takes precedence
    reason: str


class Explanation(msgspec.Struct, frozen=True):
    url: str
    method: str
    scheme: str  # "http" or "https"
    host: str  # the Host the route is chosen by (Host header, else the URL's host)
    path: str  # normalised, as routed and (before rewrites) sent upstream
    query: str
    client_ip: str
    outcome: str  # "forward", "redirect", "respond", "not found", "bad request", "passthrough"
    status: int = 0  # what fastingress answers itself (0: the upstream answers)
    reason: str = ""  # one line: why this outcome
    virtual_host: str | None = None
    host_match: str = "none"  # "exact", "wildcard", "catch-all" or "none"
    matched_by: str = ""  # "route", "host fallback", "default backend" or ""
    rule: RuleView | None = None
    backends: tuple[BackendView, ...] = ()
    upstream_target: str = ""  # path?query the upstream receives
    location: str = ""  # redirects
    body: str = ""  # answers fastingress writes itself (fail closed, ...)
    policies: tuple[Policy, ...] = ()
    candidates: tuple[Candidate, ...] = ()
    hosts: tuple[str, ...] = ()  # other virtual hosts worth knowing about (wildcards, near names)
    diagnostics: tuple[str, ...] = ()  # translation diagnostics about the Ingresses involved
    headers: tuple[tuple[str, str], ...] = ()  # as given (Host picks the virtual host)


class ExplainError(FastIngressError):
    """A URL, header or address that cannot be explained (exit status 2 on the CLI)."""

    status_hint = 400


# --- the request ----------------------------------------------------------------------------


def _parse(request: ExplainRequest) -> tuple[str, str, bytes]:
    """(scheme, host the route is picked by, raw request-target)."""
    parts = urlsplit(request.url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise ExplainError(f"expected an http:// or https:// URL, got {request.url!r}")
    host = parts.netloc.rpartition("@")[2]
    for name, value in request.headers:
        if name.strip().lower() == "host":
            host = value.strip()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        raw = target.encode("ascii")
    except UnicodeEncodeError:
        raise ExplainError("the URL must be ASCII (percent-encode other characters)") from None
    if request.client_ip:
        try:
            ipaddress.ip_address(request.client_ip)
        except ValueError:
            raise ExplainError(f"--client-ip must be an IP address, got {request.client_ip!r}") from None
    return scheme, host, raw


def _sni(url: str) -> str:
    return normalize_host(urlsplit(url).hostname or "")


# --- descriptions ---------------------------------------------------------------------------


def _rule(route: Route, host: str) -> RuleView:
    return RuleView(route.ingress, host, route.path, route.path_type, route.regex, route.service)


def _path_matches(route: Route, path: str) -> bool:
    """Whether the route's own path matches (as ``workers.routing._Host.match_path`` tests it)."""
    if route.path_type == "Exact":
        return route.path == path
    if route.regex is not None:
        pattern = route_pattern(route.regex)
        return pattern is not None and pattern.match(path) is not None
    key = prefix_key(route.path)
    return key in ("/", path) or path.startswith(key + "/")


def _why_not(route: Route, path: str, winner: Route | None) -> tuple[bool, str]:
    if _path_matches(route, path):
        if winner is None:
            return True, "its path matches, but it is not used (see the host's other rules)"
        if winner.path_type == "Exact":
            return True, f"matches too, but the Exact rule {winner.path!r} wins"
        if winner.regex is not None:
            return True, f"matches too, but the regex rule {winner.path!r} comes first (longest first)"
        return True, f"matches too, but the longer rule {winner.path!r} wins"
    if route.path_type == "Exact":
        return False, f"Exact path {route.path!r} is not {path!r}"
    if route.regex is not None:
        return False, f"regular expression {route.regex!r} (case-insensitive) does not match {path!r}"
    return False, f"Prefix {route.path!r} does not match {path!r} (it matches whole path elements)"


def _candidates(vhost: VirtualHost, path: str, winner: Route | None) -> tuple[Candidate, ...]:
    out: list[Candidate] = []
    for route in vhost.routes[:_MAX_CANDIDATES]:
        if route is winner:
            continue
        matches, reason = _why_not(route, path, winner)
        out.append(Candidate(_rule(route, vhost.hostname), matches, reason))
    return tuple(out)


def _host_match(vhost: VirtualHost | None, host: str) -> str:
    if vhost is None:
        return "none"
    if vhost.hostname == "":
        return "catch-all"
    if vhost.hostname.startswith("*."):
        return "wildcard"
    return "exact"


def _other_hosts(snapshot: Snapshot, vhost: VirtualHost | None, host: str) -> tuple[str, ...]:
    """Virtual hosts that also cover ``host`` (less precisely), or names close to it."""
    names = [v.hostname for v in snapshot.virtual_hosts]
    found: list[str] = []
    _, dot, rest = host.partition(".")
    if vhost is not None:
        if vhost.hostname == host and dot and "*." + rest in names:
            found.append(f"*.{rest}: covers {host} too, but the exact host wins (no fall-through)")
        if vhost.hostname != "" and "" in names:
            found.append("(rules without a host): not used, a more precise host matched (no fall-through)")
        return tuple(found)
    close = difflib.get_close_matches(host, [n for n in names if n], n=_MAX_HOST_HINTS, cutoff=0.6)
    return tuple(f"{name}: a virtual host with a similar name" for name in close)


def _backends(table: RouteTable, action: Forward) -> tuple[BackendView, ...]:
    out: list[BackendView] = []
    for backend in action.backends:
        upstream = table.upstreams.get(backend.upstream)
        if upstream is None:
            out.append(BackendView(backend.upstream, backend.weight, missing=True))
            continue
        out.append(_backend(upstream, backend.weight))
    return tuple(out)


def _backend(upstream: Upstream, weight: int) -> BackendView:
    endpoints = tuple(
        EndpointView(e.address, e.port, e.ready, e.serving, e.terminating) for e in upstream.endpoints
    )
    return BackendView(
        upstream.name, weight, upstream.service, upstream.protocol, upstream.external_name, upstream.port,
        endpoints,
    )


def _size(limit: int) -> str:
    return "unlimited" if limit == 0 else f"{limit} bytes"


def _route_policies(policy: RoutePolicy, scheme: str, redirected: bool) -> list[Policy]:
    out = [Policy("proxy-body-size", _size(policy.max_body_size),
                  "no limit" if policy.max_body_size == 0 else "a larger request body gets 413")]
    if wants_https(policy):
        name = "force-ssl-redirect" if policy.force_ssl_redirect else "ssl-redirect"
        if redirected:
            effect = "308 to https"
        elif scheme == "https":
            effect = "the request is https already"
        else:
            effect = f"not applied: a {ACME_PREFIX} path, or no HTTPS listener"
        out.append(Policy(name, "true", effect))
    return out


def _access_policies(route: Route, vhost: VirtualHost | None, client_ip: str) -> list[Policy]:
    """Client certificates, source ranges and basic/digest auth (``workers.policies.access``)."""
    out: list[Policy] = []
    policy = route.policy
    if policy.client_auth and vhost is not None and vhost.client_auth is not None:
        tls = vhost.client_auth
        out.append(Policy("auth-tls", explain_client(tls).removeprefix("client certificates: "),
                          "400 without a good client certificate" if tls.verify in ("on", "optional")
                          else "headers only"))
    ranges = policy.source_ranges
    if ranges is not None:
        value = "; ".join(part for part in (
            "deny " + ", ".join(ranges.deny) if ranges.deny else "",
            "allow " + ", ".join(ranges.allow) if ranges.allow else "",
        ) if part)
        if client_ip:
            verdict = "allowed" if RangeCheck(ranges).allowed(client_ip) else "403"
            effect = f"client {client_ip}: {verdict}"
        else:
            effect = "others get 403" if ranges.allow else "those get 403"
        out.append(Policy("source ranges", value, effect))
    auth = policy.basic_auth
    if auth is not None:
        count = len(auth.users) if auth.type == "basic" else len(auth.digest_users)
        out.append(Policy(f"auth-type {auth.type}", f"realm {auth.realm!r}, {count} user(s) from Secret "
                          f"{auth.secret}", "401 without valid credentials"))
    return out


# The policies _access_policies explains (with the verdict for --client-ip): not listed twice.
_ACCESS_LINES = ("source ranges", "basic auth", "digest auth", "client certificates")


def _compiled_policies(table: RouteTable, route: Route) -> list[Policy]:
    """The route's policies as the workers compile them (``workers.policy``), one line each
    (``name: what it does``), in the order they run."""
    out: list[Policy] = []
    for line in explain_policies(table.policies(route)):
        name, _, value = line.partition(": ")
        if name in _ACCESS_LINES:
            continue
        out.append(Policy(name, value) if value else Policy(line, ""))
    return out


def _upstream_policies(upstreams: Sequence[BackendView], table: RouteTable) -> list[Policy]:
    out: list[Policy] = []
    for view in upstreams[:1]:
        upstream = table.upstreams.get(view.upstream)
        if upstream is None:
            continue
        out.append(Policy("backend-protocol", upstream.protocol))
        out.append(Policy(
            "timeouts", f"connect {upstream.connect_timeout:g}s, read {upstream.read_timeout:g}s, "
            f"send {upstream.send_timeout:g}s", "504 when exceeded"
        ))
        if upstream.host_override:
            out.append(Policy("upstream-vhost", upstream.host_override, "the Host header sent upstream"))
        if upstream.protocol in ("HTTPS", "GRPCS"):
            name = upstream.tls_server_name or upstream.host_override or upstream.external_name or ""
            sni = name if upstream.tls_sni and name else "none"
            verify = "on (proxy-ssl-secret's ca.crt)" if upstream.tls_verify else "off"
            out.append(Policy("upstream TLS", f"SNI {sni}, verify {verify}"))
    return out


def _cookies(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    jar: dict[str, str] = {}
    for name, value in headers:
        if name.strip().lower() != "cookie":
            continue
        for pair in value.split(";"):
            key, eq, val = pair.strip().partition("=")
            if eq and key:
                jar.setdefault(key, val.strip().strip('"'))
    return jar


def _selection(
    table: RouteTable, route: Route, action: Forward, headers: Sequence[tuple[str, str]]
) -> tuple[tuple[BackendView, ...], list[Policy]]:
    """The canary decision for these headers and cookies (``workers.canary``, the workers' own
    code) and the canary's backend, how endpoints are chosen, and proxy-next-upstream."""
    out: list[Policy] = []
    extra: tuple[BackendView, ...] = ()
    main = table.upstreams.get(action.backends[0].upstream)
    canary = route.policy.canary
    alternative = table.upstreams.get(canary.upstream) if canary is not None else None
    if canary is not None:
        out.append(_canary(canary, main, alternative, headers))
        extra = (_backend(alternative, canary.weight) if alternative is not None
                 else BackendView(canary.upstream, canary.weight, missing=True),)
    for upstream in (main, alternative):
        if upstream is not None and upstream.balancing is not None:
            out.append(_balancing(upstream))
    retry = route.policy.next_upstream
    if retry is not None:
        tries = f"{retry.tries} tries" if retry.tries else "tries unlimited"
        limit = f" within {retry.timeout:g}s" if retry.timeout else ""
        out.append(Policy("proxy-next-upstream", " ".join(retry.conditions) or "off",
                          f"{tries}{limit}; not once any of the request body was sent"))
    return extra, out


def _canary(
    canary: Canary, main: Upstream | None, alternative: Upstream | None, headers: Sequence[tuple[str, str]]
) -> Policy:
    rule = CanaryRule(
        canary, main.balancing if main else None, alternative.balancing if alternative else None
    )
    by_name = {name.strip().lower().encode("latin-1", "replace"): value.encode("latin-1", "replace")
               for name, value in reversed(headers)}
    decision = rule.decide(by_name.get, _cookies(headers).get, lambda total: total + 1)
    if decision.chance >= 0:
        effect = (f"{decision.chance:.1%} of such requests go to the canary, at random "
                  f"({decision.reason.partition(':')[0]})")
    elif decision.canary:
        effect = f"this request goes to the canary: {decision.reason}"
    else:
        effect = f"this request stays on the main backend: {decision.reason}"
    return Policy("canary", f"Ingress {canary.ingress} -> {canary.service}", effect)


def _balancing(upstream: Upstream) -> Policy:
    balancing = upstream.balancing
    assert balancing is not None
    if balancing.affinity is not None:
        c = balancing.affinity
        moved = ", moved after a failure" if c.change_on_failure else ""
        return Policy("affinity", f"cookie {c.name} ({c.mode})",
                      f"{upstream.name}: a session stays on its endpoint{moved}")
    if balancing.hash_by:
        subset = f", subsets of {balancing.hash_subset_size}" if balancing.hash_subset_size else ""
        return Policy("upstream-hash-by", balancing.hash_by + subset, f"{upstream.name}: consistent hashing")
    return Policy("load-balance", balancing.load_balance, f"{upstream.name}: the faster of two endpoints")


def _fail_closed(action: Action | None) -> Policy | None:
    if isinstance(action, Respond) and FAIL_CLOSED_MARK in action.body:
        refused = action.body.partition("refused: ")[2].partition("; this route")[0]
        return Policy("fail-closed", refused, f"{action.status}: access annotations that are not honoured")
    return None


def _tls_policies(snapshot: Snapshot, vhost: VirtualHost | None, scheme: str) -> list[Policy]:
    if scheme != "https":
        return []
    out: list[Policy] = []
    if vhost is not None and vhost.tls_secret is not None:
        out.append(Policy("tls", vhost.tls_secret, "the certificate of this host"))
    else:
        default = snapshot.settings.default_certificate or "self-signed"
        out.append(Policy("tls", default, "no certificate of this host's own: the default one"))
    if snapshot.settings.hsts:
        out.append(Policy("hsts", f"max-age={snapshot.settings.hsts_max_age}", "Strict-Transport-Security"))
    return out


def _involved(vhost: VirtualHost | None, route: Route | None) -> set[str]:
    names = {r.ingress for r in vhost.routes} if vhost is not None else set()
    if route is not None:
        names.add(route.ingress)
    return names


def _relevant(
    diagnostics: Sequence[DiagnosticLike], ingresses: set[str], host: str
) -> tuple[str, ...]:
    quoted = repr(host)
    out: list[str] = []
    for d in diagnostics:
        if d.severity == "info" and quoted not in d.message:
            continue
        if d.kind == "Ingress" and (f"{d.namespace}/{d.name}" in ingresses or quoted in d.message):
            out.append(str(d))
    return tuple(out)


# --- the decision (the workers' code) -------------------------------------------------------


def explain(
    snapshot: Snapshot,
    request: ExplainRequest,
    *,
    https_port: int = 443,
    diagnostics: Sequence[DiagnosticLike] = (),
) -> Explanation:
    """Explain ``request`` against ``snapshot`` (raises ExplainError for an unusable URL)."""
    scheme, host_header, target = _parse(request)
    host = normalize_host(host_header)
    base = Explanation(
        url=request.url, method=request.method.upper(), scheme=scheme, host=host, path="", query="",
        client_ip=request.client_ip, outcome="", headers=request.headers,
    )
    try:
        path, query = normalize_target(target)
    except FastIngressError as exc:
        return msgspec.structs.replace(base, outcome="bad request", status=400, reason=str(exc))
    base = msgspec.structs.replace(base, path=path, query=query)
    table = RouteTable(snapshot)
    if scheme == "https":
        passthrough = _passthrough(snapshot, _sni(request.url))
        if passthrough is not None:
            return _passthrough_answer(base, table, passthrough)
    match = table.match(host_header, path)
    vhost, route, action = match.vhost, match.route, match.action
    matched_by = "route" if route is not None else (
        "host fallback" if vhost is not None and vhost.fallback is not None else
        "default backend" if action is not None else ""
    )
    base = msgspec.structs.replace(
        base,
        virtual_host=vhost.hostname if vhost is not None else None,
        host_match=_host_match(vhost, host),
        matched_by=matched_by,
        rule=_rule(route, vhost.hostname) if route is not None and vhost is not None else None,
        candidates=_candidates(vhost, path, route) if vhost is not None else (),
        hosts=_other_hosts(snapshot, vhost, host),
        diagnostics=_relevant(diagnostics, _involved(vhost, route), host),
    )
    policies = _tls_policies(snapshot, vhost, scheme)
    # The data paths: the ConfigMap's client IP and blocks first (workers.clientip), then the
    # redirect to https, then the action.
    https, refused = _front(snapshot, request, host_header, scheme, policies)
    if refused is not None:
        return msgspec.structs.replace(base, outcome="refused", status=403, reason=refused,
                                       policies=tuple(policies))
    if not https and route is not None and wants_https(route.policy):
        location = redirect_location(host_header.encode("latin-1", "replace"), target, path, https_port)
        if location is not None:
            policies += _route_policies(route.policy, scheme, redirected=True)
            code = snapshot.settings.http_redirect_code
            return msgspec.structs.replace(
                base, outcome="redirect", status=code, location=location.decode("latin-1"),
                reason="plain HTTP to a route that wants HTTPS", policies=tuple(policies),
            )
    if route is not None:
        policies += _route_policies(route.policy, scheme, redirected=False)
        policies += _access_policies(route, vhost, request.client_ip)
        policies += _compiled_policies(table, route)
        answer = _rewrite_answer(
            table, route, vhost, request=request, target=target, parts=(path, query, host_header, scheme)
        )
        if answer is not None:
            moved_to = dict(answer.extra).get(b"location", b"").decode("latin-1")
            return msgspec.structs.replace(
                base, outcome="redirect" if moved_to else "respond", status=answer.status, location=moved_to,
                reason="answered before any access check (nginx's rewrite phase)", policies=tuple(policies),
            )
    else:
        policies.append(Policy("proxy-body-size", _size(snapshot.settings.max_body_size), "global default"))
    return _act(base, table, route, action, policies)


def _front(
    snapshot: Snapshot, request: ExplainRequest, host_header: str, scheme: str, policies: list[Policy]
) -> tuple[bool, str | None]:
    """(whether the client spoke HTTPS, why the ConfigMap refuses it or None), as the data paths
    decide it before routing; a policy line says who the client is when a proxy is trusted."""
    front = Front.compile(snapshot.settings)
    if front is None:
        return scheme == "https", None
    headers = [(b"host", host_header.encode("latin-1", "replace"))]
    headers += [
        (n.lower().encode("latin-1", "replace"), v.encode("latin-1", "replace")) for n, v in request.headers
    ]
    info = scan_request(headers)
    peer = (request.client_ip or "127.0.0.1").encode()
    ip, https, refused = front.apply(info, peer, scheme == "https", b"")
    if info.view is not None and ip != peer:
        trusted = request.client_ip or "127.0.0.1"
        effect = f"from the headers of trusted peer {trusted}"
        policies.append(Policy("client IP", ip.decode("latin-1"), effect))
    if refused is not None:
        return https, f"the ConfigMap's {refused} refuses client {ip.decode('latin-1')}: 403"
    return https, None


def _rewrite_answer(
    table: RouteTable,
    route: Route,
    vhost: VirtualHost | None,
    *,
    request: ExplainRequest,
    target: bytes,
    parts: tuple[str, str, str, str],
) -> Answer | None:
    """What the route's rewrite-phase policies answer (they have no side effects), if anything."""
    compiled = table.policies(route)
    if compiled is None:
        return None
    path, query, host, scheme = parts
    ctx = RequestCtx(
        method=request.method.upper().encode(), target=target, path=path, query=query,
        host=host.encode("latin-1", "replace"),
        headers=[(k.lower().encode("latin-1", "replace"), v.encode("latin-1", "replace"))
                 for k, v in request.headers],
        client_ip=request.client_ip, tls=scheme == "https", route=route, vhost=vhost, now=0.0,
    )
    for policy in compiled.policies:
        if policy.phase == REWRITE and policy.request is not None:
            result = policy.request(ctx)
            if isinstance(result, Answer):
                return result
    return None


def _act(
    base: Explanation, table: RouteTable, route: Route | None, action: Action | None, policies: list[Policy]
) -> Explanation:
    if action is None:
        why = "no virtual host matches" if base.virtual_host is None else "no rule of the host matches"
        return msgspec.structs.replace(
            base, outcome="not found", status=404, reason=why + ", and there is no default backend",
            policies=tuple(policies),
        )
    if isinstance(action, Forward):
        backends = _backends(table, action)
        path, query = base.path, base.query
        if route is not None and route.policy.rewrite_target is not None:
            path, query = rewrite(route, path, query)
            target = route.policy.rewrite_target
            policies.append(Policy("rewrite-target", target, f"upstream gets {path}{query}"))
        policies += _upstream_policies(backends, table)
        if route is not None:
            canary, selection = _selection(table, route, action, base.headers)
            policies += selection
            backends += canary
        ready = any(e.ready for b in backends for e in b.endpoints) or any(b.external_name for b in backends)
        return msgspec.structs.replace(
            base, outcome="forward", status=0 if ready else 503,
            reason="proxied upstream" if ready else "no ready endpoint: 503",
            backends=backends, upstream_target=path + query, policies=tuple(policies),
        )
    if isinstance(action, Redirect):
        return msgspec.structs.replace(
            base, outcome="redirect", status=action.status, location=action.location,
            reason="the rule redirects", policies=tuple(policies),
        )
    closed = _fail_closed(action)
    if closed is not None:
        policies.append(closed)
    return msgspec.structs.replace(
        base, outcome="respond", status=action.status, body=action.body, policies=tuple(policies),
        reason="fail closed: an access annotation is not honoured" if closed else "answered by fastingress",
    )


def _passthrough(snapshot: Snapshot, sni: str) -> str | None:
    """``workers.certs.CertStore.passthrough_upstream``'s lookup, without building TLS contexts."""
    if not snapshot.settings.ssl_passthrough or not sni:
        return None
    names = {v.hostname.lower(): v.passthrough_upstream for v in snapshot.virtual_hosts
             if v.passthrough_upstream and v.hostname}
    found = names.get(sni)
    if found is None:
        label, dot, rest = sni.partition(".")
        found = names.get("*." + rest) if dot and label else None
    return found


def _passthrough_answer(base: Explanation, table: RouteTable, upstream_name: str) -> Explanation:
    upstream = table.upstreams.get(upstream_name)
    backend = _backend(upstream, 100) if upstream is not None else BackendView(upstream_name, missing=True)
    return msgspec.structs.replace(
        base, outcome="passthrough", reason="ssl-passthrough: TLS is relayed by SNI, not terminated",
        backends=(backend,), policies=(Policy("ssl-passthrough", "true", "no HTTP routing, no policies"),),
    )


# --- rendering ------------------------------------------------------------------------------


def _endpoint_line(e: EndpointView) -> str:
    state = "ready" if e.ready else "terminating" if e.terminating else "not ready"
    return f"{e.address}:{e.port} {state}"


def _rule_line(rule: RuleView) -> str:
    kind = "regex" if rule.regex is not None else rule.path_type
    host = rule.host or "(any host)"
    return f"Ingress {rule.ingress}  host {host}  path {rule.path} ({kind})  -> {rule.service or '-'}"


def render_text(e: Explanation) -> str:
    lines = [f"{e.method} {e.url}"]
    lines.append(f"  routed as: host {e.host or '-'}  path {e.path or '-'}{e.query}"
                 + (f"  client {e.client_ip}" if e.client_ip else ""))
    lines.extend(f"  header {name}: {value}" for name, value in e.headers)
    status = f" {e.status}" if e.status else ""
    lines.append(f"outcome: {e.outcome}{status}" + (f" ({e.reason})" if e.reason else ""))
    if e.virtual_host is not None:
        lines.append(f"virtual host: {e.virtual_host or '(rules without a host)'} ({e.host_match} match)")
    elif e.outcome not in ("bad request", "passthrough"):
        lines.append("virtual host: none matches")
    if e.rule is not None:
        lines.append(f"rule: {_rule_line(e.rule)}")
    elif e.matched_by:
        lines.append(f"served by: {e.matched_by}")
    for b in e.backends:
        if b.missing:
            lines.append(f"backend: upstream {b.upstream} is not in the snapshot (503)")
            continue
        lines.append(f"backend: Service {b.service or '-'} (upstream {b.upstream}, {b.protocol})")
        if b.external_name:
            lines.append(f"  endpoints: ExternalName {b.external_name}:{b.port} (resolved by DNS)")
        elif b.endpoints:
            lines.extend(f"  endpoint: {_endpoint_line(ep)}" for ep in b.endpoints)
        else:
            lines.append("  endpoints: none (503)")
    if e.upstream_target:
        lines.append(f"upstream request: {e.method} {e.upstream_target}")
    if e.location:
        lines.append(f"location: {e.location}")
    if e.body:
        lines.append("body: " + e.body.strip().replace("\n", " | "))
    if e.policies:
        lines.append("policies:")
        width = max(len(p.name) for p in e.policies)
        lines.extend(f"  {p.name.ljust(width)}  {p.value}" + (f"  ({p.effect})" if p.effect else "")
                     for p in e.policies)
    if e.candidates:
        lines.append("other rules of this host:")
        for c in e.candidates:
            lines.append(f"  {_rule_line(c.rule)}")
            lines.append(f"    {c.reason}")
    if e.hosts:
        lines.append("other virtual hosts:")
        lines.extend(f"  {h}" for h in e.hosts)
    if e.diagnostics:
        lines.append("diagnostics:")
        lines.extend(f"  {d}" for d in e.diagnostics)
    return "\n".join(lines) + "\n"




# --- the admin endpoint ---------------------------------------------------------------------

MAX_QUERY = 8192


def request_query(request: ExplainRequest) -> str:
    """The /explain query string for ``request`` (what ``explain --admin`` sends)."""
    params = [("url", request.url), ("method", request.method)]
    params += [("header", f"{name}: {value}") for name, value in request.headers]
    if request.client_ip:
        params.append(("client_ip", request.client_ip))
    return urlencode(params)


def parse_header(text: str) -> tuple[str, str]:
    """``Name: value`` (as curl's -H) -> (name, value); ExplainError if there is no name."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip() or any(c.isspace() for c in name.strip()):
        raise ExplainError(f"a header is 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def explain_query(
    snapshot: Snapshot, query: str, *, https_port: int, diagnostics: Sequence[object] = ()
) -> tuple[int, bytes]:
    """The admin port's /explain: (200, Explanation JSON) or (400, one line of text)."""
    if len(query) > MAX_QUERY:
        return 400, b"400 Bad Request\nquery too long\n"
    params = parse_qs(query, keep_blank_values=True)
    urls = params.get("url", [])
    if len(urls) != 1:
        return 400, b"400 Bad Request\nexpected exactly one url= parameter, e.g. /explain?url=http://host/path\n"
    try:
        request = ExplainRequest(
            url=urls[0],
            headers=tuple(parse_header(h) for h in params.get("header", [])),
            client_ip=(params.get("client_ip") or [""])[0],
            method=(params.get("method") or ["GET"])[0] or "GET",
        )
        known = [d for d in diagnostics if isinstance(d, Diagnostic)]
        result = explain(snapshot, request, https_port=https_port, diagnostics=known)
    except ExplainError as exc:
        return 400, f"400 Bad Request\n{exc}\n".encode()
    return 200, msgspec.json.encode(result)


__all__ = [
    "ExplainError", "ExplainRequest", "Explanation", "Policy", "explain", "explain_query", "parse_header",
    "render_text", "request_query",
]
