"""translate(): Kubernetes objects -> Snapshot + diagnostics.  Pure and deterministic.

Theory of operation
1. ``cluster.index_objects`` addresses every object (kind/namespace/name), drops other
   kinds, and resolves duplicates order-independently.
2. Each Ingress that is ours (``ingress.is_ours``) becomes an ``IngressPlan``: validated
   rules, backends and TLS entries, annotations parsed once.  A plan is built under a
   guard, so an unexpected failure costs that one Ingress, never the others.
3. Plans are merged oldest first (creationTimestamp, namespace, name): the first claim
   on (host, path, type), on a host's fallback or on a host's TLS Secret wins; later
   claims get a warning naming the winner.  Canary Ingresses claim nothing: each of their
   rules attaches to the main Ingress's route of the same host and path (the oldest canary
   per route), which keeps its own policies and gets the canary as an alternative backend
   (``RoutePolicy.canary``); a canary rule with no main route is a warning.
4. Winning backends are resolved to Upstreams (Service ports, EndpointSlices,
   ExternalName), TLS Secrets to Certificates; everything is emitted sorted.
   Fail closed: the routes (and defaultBackend) of an Ingress with an access-guarding
   annotation that is not honoured answer 503 naming the key (``closed_reasons``),
   unless ``TranslateOptions.unsafe_fail_open``.
0. Before all this, the controller ConfigMap (``options.configmap``) is applied to the
   options (``translate.configmap.configure``): global settings and annotation defaults.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec

from fastingress.snapshot.schema import (
    Action,
    AuthHeader,
    BasicAuth,
    Canary,
    Certificate,
    ClientAuth,
    ExternalAuth,
    Forward,
    GlobalSettings,
    Respond,
    Route,
    RoutePolicy,
    Snapshot,
    SourceRanges,
    VirtualHost,
    WeightedBackend,
)
from fastingress.translate import extra_hosts, http_emit, policy_extauth
from fastingress.translate.annotations import PREFIX, IngressAnnotations, UpstreamSettings
from fastingress.translate.backends import BackendRef, UpstreamBuilder, service_ports, settings_suffix
from fastingress.translate.cluster import Cluster, index_objects
from fastingress.translate.configmap import ConfigMemory, configure
from fastingress.translate.hosts import looks_like_regex, priority, route_key
from fastingress.translate.ingress import IngressPlan, PathRule, initial_annotations, is_ours, parse_ingress
from fastingress.translate.model import ObjRef, Sink, TranslateOptions, TranslationResult, clean_text
from fastingress.translate.policy_access import Reason, basic_auth, client_auth, source_ranges
from fastingress.translate.policy_limits import limits_policy
from fastingress.translate.policy_selection import canary as canary_policy
from fastingress.translate.policy_selection import canary_balancing, next_upstream
from fastingress.translate.tls import load_certificate

_TRANSLATOR = ObjRef("Unknown", "", "<translator>")


def _internal(sink: Sink, ref: ObjRef, exc: Exception, what: str) -> None:
    sink.error(ref, "", f"internal error ({type(exc).__name__}) while {what}; skipped. Please report this.")


class _Merged:
    """Claims of the merge step; first claim (oldest Ingress) wins."""

    def __init__(self) -> None:
        self.hosts: set[str] = set()
        self.routes: dict[str, dict[tuple[str, str], tuple[PathRule, IngressPlan]]] = {}
        self.fallbacks: dict[str, IngressPlan] = {}
        self.tls: dict[str, tuple[str, IngressPlan, str]] = {}
        # host -> (route key, path type) -> the canary rule attached to that main route
        self.canaries: dict[str, dict[tuple[str, str], tuple[PathRule, IngressPlan]]] = {}
        self.extra: extra_hosts.Claims = extra_hosts.NO_CLAIMS  # server-alias, from-to-www-redirect


def _merge(plans: list[IngressPlan], sink: Sink) -> _Merged:
    merged = _Merged()
    canaries: list[IngressPlan] = []
    for plan in plans:
        if plan.annotations.canary:
            canaries.append(plan)
            continue
        for rule in plan.rules:
            table = merged.routes.setdefault(rule.host, {})
            key = (rule.key, rule.path_type)
            if key in table:
                winner = table[key][1]
                who = (
                    "earlier in this Ingress; ignored"
                    if winner.ref == plan.ref
                    else f"by Ingress {winner.ref.key}; ignored (the oldest Ingress wins)"
                )
                sink.warning(
                    plan.ref,
                    rule.field,
                    f"host {rule.host!r} path {rule.path!r} ({rule.path_type}) is already defined {who}",
                )
                continue
            table[key] = (rule, plan)
        merged.hosts.update(plan.hosts)
        if plan.default_backend is not None:
            for host in plan.hosts:
                _claim_fallback(merged, host, plan, sink)
        for entry in plan.tls:
            merged.hosts.add(entry.host)
            if entry.host not in merged.tls:
                merged.tls[entry.host] = (entry.secret, plan, entry.field)
                continue
            secret, winner, _ = merged.tls[entry.host]
            if (winner.ref.namespace, secret) != (plan.ref.namespace, entry.secret):
                sink.warning(
                    plan.ref,
                    entry.field,
                    f"host {entry.host!r} already gets TLS Secret {winner.ref.namespace}/{secret} from "
                    f"Ingress {winner.ref.key}; ignored (the oldest Ingress wins)",
                )
    for plan in canaries:
        _attach_canary(merged, plan, sink)
    merged.extra = extra_hosts.claim((p for p in plans if not p.annotations.canary), merged.hosts, sink)
    return merged


def _canary_usable(plan: IngressPlan, sink: Sink) -> bool:
    """A canary whose canary-* values are unusable, or that carries access annotations we do not
    honour, takes no requests (its findings say so); the main Ingress keeps the traffic."""
    rules = plan.annotations.canary_rules
    if rules.invalid or plan.annotations.closed:
        return False
    if plan.default_backend is not None:
        sink.warning(
            plan.ref, "spec.defaultBackend",
            "the defaultBackend of a canary Ingress is not used: canaries attach to rules; the main "
            "default backend keeps all of its traffic",
        )
    if plan.tls:
        sink.info(plan.ref, "spec.tls", "ignored on a canary Ingress: TLS comes from the main Ingress")
    return True


def _attach_canary(merged: _Merged, plan: IngressPlan, sink: Sink) -> None:
    """Each rule of a canary Ingress becomes the alternative backend of the main Ingress's route
    of the same host and path (ingress-nginx's ``mergeAlternativeBackends``); rules with no main
    route, or whose route has a canary already, are ignored with a warning."""
    usable = _canary_usable(plan, sink)
    for rule in plan.rules:
        main = merged.routes.get(rule.host, {}).get((rule.key, rule.path_type))
        where = f"host {rule.host!r} path {rule.path!r} ({rule.path_type})"
        if main is None:
            sink.warning(plan.ref, rule.field, f"canary Ingress: no main Ingress serves {where}; ignored")
            continue
        if not usable:
            continue
        main_rule, main_plan = main
        if main_rule.backend.service_port == rule.backend.service_port:
            sink.warning(
                plan.ref, f"{rule.field}.backend",
                f"canary of Ingress {main_plan.ref.key} for {where} names the main Ingress's own Service "
                f"{rule.backend.service_port}: nothing to split; ignored",
            )
            continue
        attached = merged.canaries.setdefault(rule.host, {})
        other = attached.get((rule.key, rule.path_type))
        if other is not None:
            sink.warning(
                plan.ref, rule.field,
                f"{where} already has the canary Ingress {other[1].ref.key} (one canary per rule, the "
                "oldest wins); ignored",
            )
            continue
        attached[(rule.key, rule.path_type)] = (rule, plan)
        sink.info(plan.ref, rule.field, f"canary of Ingress {main_plan.ref.key} for {where}")


def rule_id(rule: PathRule) -> tuple[str, str]:
    """What makes two rules of a host the same route: its path key and type."""
    return rule.key, rule.path_type


def _backend_id(plan: IngressPlan) -> str:
    assert plan.default_backend is not None
    return plan.default_backend.service_port + settings_suffix(plan.annotations.upstream)


def _claim_fallback(merged: _Merged, host: str, plan: IngressPlan, sink: Sink) -> None:
    winner = merged.fallbacks.get(host)
    if winner is None:
        merged.fallbacks[host] = plan
    elif _backend_id(winner) != _backend_id(plan):
        sink.warning(
            plan.ref,
            "spec.defaultBackend",
            f"host {host!r} already falls back to the defaultBackend of Ingress {winner.ref.key}; "
            "ignored for this host (the oldest Ingress wins)",
        )


class _Access(msgspec.Struct, frozen=True):
    """The access policies of one Ingress (``policy_access``), and why any is not honoured."""

    source_ranges: SourceRanges | None = None
    basic_auth: BasicAuth | None = None
    client_auth: ClientAuth | None = None
    closed: tuple[Reason, ...] = ()  # its own guards (auth-tls-* ones close its hosts too)
    tls_closed: tuple[Reason, ...] = ()  # the auth-tls-* ones

    def has_route_policies(self) -> bool:
        return self.source_ranges is not None or self.basic_auth is not None


class _Emitter:
    """Turns the merged claims into snapshot parts; every resolution is guarded."""

    def __init__(self, cluster: Cluster, options: TranslateOptions, sink: Sink) -> None:
        self.cluster = cluster
        self.options = options
        self.sink = sink
        self.builder = UpstreamBuilder(cluster, sink)
        self.certificates: dict[str, Certificate] = {}
        self.load_cert = load_certificate  # incremental.Translator swaps in a memoised loader
        self._access: dict[ObjRef, _Access] = {}  # (the Secrets it reads are looked up in ``cluster``)

    def access(self, plan: IngressPlan) -> _Access:
        """``plan``'s access policies (source ranges, basic auth, client certificates), once."""
        found = self._access.get(plan.ref)
        if found is not None:
            return found
        annotations, ref, fail_open = plan.annotations, plan.ref, self.options.unsafe_fail_open
        ranges = _default_ranges(source_ranges(annotations, ref, self.sink), annotations, self.options)
        users, auth_closed = basic_auth(annotations, ref, self.cluster, self.sink, fail_open)
        client, tls_closed = client_auth(annotations, ref, self.cluster, self.sink, fail_open)
        found = self._access[plan.ref] = _Access(
            ranges, users, client, auth_closed + tls_closed, tls_closed
        )
        return found

    def closed_reasons(self, plan: IngressPlan) -> tuple[tuple[str, str], ...]:
        """(annotation key, why) for each access guard of ``plan`` that is not honoured;
        empty if none, or if ``--unsafe-fail-open`` serves them open anyway.  Guards whose
        Secret or ConfigMap is missing or unusable count (``policy_access``, ``policy_extauth``), and so
        does an unusable custom-headers ConfigMap (``http_emit``: ingress-nginx denies the location)."""
        fail_open = self.options.unsafe_fail_open
        extauth = self.extauth_closed(plan)
        custom_headers = http_emit.custom_headers_problem(self.cluster, plan, self.sink, fail_open)
        if fail_open:
            return ()
        closed = plan.annotations.closed + self.access(plan).closed + extauth + custom_headers
        extra = self.options.global_closed  # the controller ConfigMap's (translate.configmap)
        if extra:
            if not plan.annotations.enable_global_auth:
                extra = tuple(reason for reason in extra if not reason[0].endswith(" global-auth-url"))
            closed = (*closed, *extra)
        return closed

    def extauth_closed(self, plan: IngressPlan) -> tuple[tuple[str, str], ...]:
        """External auth whose auth-proxy-set-headers ConfigMap is missing or invalid (an
        error diagnostic says so, in the words of ``annotations._Parse.close``)."""
        extauth = plan.annotations.extauth
        if extauth.proxy_set_headers is None:
            return ()
        key = f"{PREFIX}auth-proxy-set-headers"
        reasons = policy_extauth.closed_reasons(extauth, plan.ref.namespace, self.cluster.configmaps, key)
        for _, why in reasons:
            if self.options.unsafe_fail_open:
                tail = "served WITHOUT this protection because of --unsafe-fail-open"
            else:
                tail = "every path of this Ingress answers 503 (fail closed)"
            self.sink.error(plan.ref, f"metadata.annotations[{key}]", f"{why}; {tail}")
        return reasons

    def external_auth(self, rule: PathRule, plan: IngressPlan) -> ExternalAuth | None:
        """The route's external auth (auth-url), with its ConfigMap's headers."""
        extauth = plan.annotations.extauth
        if extauth.url is None:
            return None
        headers: tuple[AuthHeader, ...] = ()
        if extauth.proxy_set_headers is not None:
            namespace, name = policy_extauth.configmap_key(extauth.proxy_set_headers, plan.ref.namespace)
            configmap = self.cluster.configmaps.get((namespace, name))
            if configmap is not None:
                headers, _ = policy_extauth.proxy_set_headers(configmap)
                for key in policy_extauth.framing_headers(configmap):
                    self.sink.warning(
                        ObjRef("ConfigMap", namespace, name), f"data[{key}]",
                        "the auth subrequest frames itself: this header is not sent (auth-proxy-set-headers)",
                    )
        return policy_extauth.external_auth(extauth, rule.host, rule.path, rule.path_type, headers)

    def action(
        self, backend: BackendRef, plan: IngressPlan, host_closed: tuple[Reason, ...] = ()
    ) -> Action | None:
        """Forward to ``backend`` with ``plan``'s settings, or the fail-closed 503."""
        closed = self.closed_reasons(plan) + tuple(r for r in host_closed if r not in plan.annotations.closed)
        if closed:
            return fail_closed(tuple(dict.fromkeys(closed)))
        return self.forward(backend, plan.annotations.upstream, plan.ref)

    def forward(self, backend: BackendRef, settings: UpstreamSettings, owner: ObjRef) -> Action | None:
        try:
            name = self.builder.resolve(backend, settings, owner)
        except Exception as exc:
            _internal(self.sink, owner, exc, f"resolving backend {backend.service_port}")
            return None
        return Forward((WeightedBackend(name, 100),))

    def route(
        self, rule: PathRule, plan: IngressPlan, has_tls: bool = False, regex_host: bool = False,
        host: _HostAccess | None = None, *, canary: tuple[PathRule, IngressPlan] | None = None,
    ) -> Route | None:
        regex = self.regex(rule, plan, regex_host)
        if regex is False:
            return None
        host = host or _HostAccess()
        action = self.action(rule.backend, plan, host.closed)
        if action is None:
            return None
        annotations = plan.annotations
        access = self.access(plan)
        max_body = annotations.max_body_size
        policy = RoutePolicy(
            max_body_size=self.options.settings.max_body_size if max_body is None else max_body,
            ssl_redirect=has_tls and annotations.ssl_redirect,
            force_ssl_redirect=annotations.force_ssl_redirect,
            rewrite_target=annotations.rewrite_target,
            x_forwarded_prefix=annotations.x_forwarded_prefix,
            source_ranges=access.source_ranges,
            basic_auth=access.basic_auth,
            client_auth=host.client is not None,
            canary=self.canary(canary, plan) if canary is not None and isinstance(action, Forward) else None,
            next_upstream=next_upstream(annotations.next_upstream),
            external_auth=None if isinstance(action, Respond) else self.external_auth(rule, plan),
            cors=http_emit.cors(annotations.http),
            headers=http_emit.header_rules(self.cluster, plan),
            errors=http_emit.error_pages(self, plan),
            redirects=http_emit.redirects(annotations.http),
            limits=None if isinstance(action, Respond) else limits_policy(
                annotations, plan.ref.key, self.options.settings),
        )
        return Route(
            path=rule.path,
            path_type=rule.path_type,
            action=action,
            priority=rule.priority,
            ingress=plan.ref.key,
            service=rule.backend.service_port,
            policy=policy,
            regex=regex,
        )

    def canary(self, claim: tuple[PathRule, IngressPlan], main: IngressPlan) -> Canary | None:
        """The canary of a route: its backend resolved with the main Ingress's upstream settings
        (protocol, timeouts, upstream TLS: nginx's location settings) but its own balancing."""
        rule, plan = claim
        own = plan.annotations
        settings = msgspec.structs.replace(
            main.annotations.upstream,
            balancing=canary_balancing(
                main.annotations.upstream.balancing, own.upstream.balancing, own.canary_rules.behavior
            ),
            service_upstream=own.upstream.service_upstream,
        )
        try:
            name = self.builder.resolve(rule.backend, settings, plan.ref)
        except Exception as exc:
            _internal(self.sink, plan.ref, exc, f"resolving backend {rule.backend.service_port}")
            return None
        return canary_policy(own.canary_rules, upstream=name, ingress=plan.ref.key,
                             service=rule.backend.service_port)

    def regex(self, rule: PathRule, plan: IngressPlan, regex_host: bool) -> str | Literal[False] | None:
        """The route's regex on a host in regex mode (ingress-nginx: any Ingress of the host
        sets use-regex or rewrite-target, and then every non-Exact path of the host is a
        case-insensitive regex anchored at the start); False if the path is not a valid regex."""
        field = f"{rule.field}.path"
        if not regex_host or rule.path_type == "Exact":
            if looks_like_regex(rule.path):
                self.sink.warning(
                    plan.ref, field,
                    f"{rule.path!r} looks like a regular expression, but no Ingress of this host sets "
                    "use-regex or rewrite-target: it is matched literally",
                )
            return None
        try:
            re.compile("^" + rule.path, re.IGNORECASE)
        except re.error as exc:
            self.sink.error(
                plan.ref, field, f"{rule.path!r} is not a valid regular expression: {exc}; skipped"
            )
            return False
        return "^" + rule.path

    def tls_secret(self, claim: tuple[str, IngressPlan, str] | None) -> str | None:
        if claim is None:
            return None
        secret, plan, field = claim
        name = f"{plan.ref.namespace}/{secret}"
        if name in self.certificates:
            return name
        if (plan.ref.namespace, secret) not in self.cluster.secrets:
            self.sink.error(plan.ref, field, f"Secret {name} not found; the default certificate is used")
            return None
        try:
            certificate = self.load_cert(self.cluster, plan.ref.namespace, secret, self.sink)
        except Exception as exc:
            _internal(self.sink, ObjRef("Secret", plan.ref.namespace, secret), exc, "reading the certificate")
            return None
        if certificate is None:
            return None
        self.certificates[name] = certificate
        return name

    def passthrough(self, host: str, claims: list[tuple[PathRule, IngressPlan, Route | None]]) -> str | None:
        """ssl-passthrough: the upstream of the host's "/" rule (else its first rule), or None."""
        chosen: Route | None = None
        for rule, plan, route in claims:
            if not plan.annotations.ssl_passthrough:
                continue
            if not self.options.settings.ssl_passthrough:
                self.sink.info(
                    plan.ref,
                    f"metadata.annotations[{PREFIX}ssl-passthrough]",
                    "ignored: passthrough needs the --enable-ssl-passthrough flag",
                )
                return None
            if route is not None and (chosen is None or rule.path == "/"):
                chosen = route
        if chosen is None or not isinstance(chosen.action, Forward) or not host:
            return None
        return chosen.action.backends[0].upstream

    def host_access(self, host: str, plans: list[IngressPlan]) -> _HostAccess:
        """The client-certificate settings of a host (nginx: server level): those of its oldest
        Ingress that sets auth-tls-*; if any Ingress of the host sets them unusably, the whole
        host fails closed (ingress-nginx answers 403 for the whole server then)."""
        chosen: tuple[ClientAuth, IngressPlan] | None = None
        closed: list[Reason] = []
        for plan in sorted({p.ref: p for p in plans}.values(), key=lambda p: p.age):
            access = self.access(plan)
            closed.extend(r for r in access.tls_closed if r not in closed)
            if access.client_auth is None:
                continue
            if chosen is None:
                chosen = (access.client_auth, plan)
            elif access.client_auth != chosen[0]:
                self.sink.warning(
                    plan.ref, f"metadata.annotations[{PREFIX}auth-tls-secret]",
                    f"host {host!r} already gets its client-certificate settings from Ingress "
                    f"{chosen[1].ref.key}; ignored for this host (the oldest Ingress wins)",
                )
        if self.options.unsafe_fail_open:
            closed = []
        return _HostAccess(chosen[0] if chosen is not None else None, tuple(closed))

    def virtual_host(self, host: str, merged: _Merged) -> VirtualHost:
        has_tls = host in merged.tls
        rules = list(merged.routes.get(host, {}).values())
        regex_host = any(
            plan.annotations.use_regex or plan.annotations.rewrite_target is not None for _, plan in rules
        )
        plan = merged.fallbacks.get(host)
        access = self.host_access(host, [p for _, p in rules] + ([plan] if plan is not None else []))
        fallback_rule = self.fallback_rule(host, merged, access)
        if fallback_rule is not None:
            rules.append(fallback_rule)
        canaries = merged.canaries.get(host, {})
        claims = [
            (rule, p, self.route(rule, p, has_tls, regex_host, access, canary=canaries.get(rule_id(rule))))
            for rule, p in rules
        ]
        routes = [route for _, _, route in claims]
        ordered = sorted(
            (r for r in routes if r is not None), key=lambda r: (-r.priority, r.path, r.path_type)
        )
        fallback: Action | None = None
        if plan is not None and plan.default_backend is not None and fallback_rule is None:
            fallback = self.action(plan.default_backend, plan, access.closed)
        return VirtualHost(
            hostname=host,
            routes=tuple(ordered),
            fallback=fallback,
            tls_secret=self.tls_secret(merged.tls.get(host)),
            passthrough_upstream=self.passthrough(host, claims),
            client_auth=access.client,
        )

    def fallback_rule(
        self, host: str, merged: _Merged, access: _HostAccess
    ) -> tuple[PathRule, IngressPlan] | None:
        """A host fallback (an Ingress's defaultBackend) that access policies apply to is served
        as a ``/`` Prefix rule of its Ingress (a fallback is an action, and policies belong to
        routes): the same requests reach it, now with the policies.  None when there is no
        such fallback, or the host has a ``/`` rule already (the fallback is then unreachable)."""
        plan = merged.fallbacks.get(host)
        if plan is None or plan.default_backend is None:
            return None
        if access.client is None and not self.access(plan).has_route_policies():
            return None
        key = route_key("/", "Prefix")
        if (key, "Prefix") in merged.routes.get(host, {}):
            return None
        rule = PathRule(host, "/", "Prefix", key, priority("/", "Prefix"), plan.default_backend,
                        "spec.defaultBackend")
        return rule, plan

    def settings(self) -> GlobalSettings:
        """The options' settings; --default-ssl-certificate's Secret is loaded (or dropped)."""
        settings = self.options.settings
        wanted = settings.default_certificate
        if wanted is None or wanted in self.certificates:
            return settings
        namespace, _, name = wanted.partition("/")
        ref = ObjRef("Secret", namespace, name)
        certificate: Certificate | None = None
        if (namespace, name) not in self.cluster.secrets:
            self.sink.error(ref, "", "--default-ssl-certificate: Secret not found; self-signed one used")
        else:
            try:
                certificate = self.load_cert(self.cluster, namespace, name, self.sink)
            except Exception as exc:
                _internal(self.sink, ref, exc, "reading the default certificate")
        if certificate is None:
            return msgspec.structs.replace(settings, default_certificate=None)
        self.certificates[wanted] = certificate
        return settings

    def default_action(self, plans: list[IngressPlan]) -> Action | None:
        if self.options.default_backend_service is not None:
            return self._option_default(self.options.default_backend_service)
        for plan in plans:
            if plan.default_backend is not None and not plan.annotations.canary:
                unsupported = self._default_guards(plan)
                if unsupported:
                    return fail_closed(unsupported)
                return self.action(plan.default_backend, plan)
        return None

    def _default_guards(self, plan: IngressPlan) -> tuple[Reason, ...]:
        """The default action (hosts no rule names) is no route, so it cannot carry source
        ranges or basic auth: with either, it fails closed (unless --unsafe-fail-open)."""
        access = self.access(plan)
        keys = []
        if access.source_ranges is not None:
            keys.append("allowlist-source-range" if access.source_ranges.allow else "denylist-source-range")
        if access.basic_auth is not None:
            keys.append("auth-type")
        if not keys:
            return ()
        fail_open = self.options.unsafe_fail_open
        tail = ("served WITHOUT them because of --unsafe-fail-open" if fail_open
                else "those requests answer 503 (fail closed)")
        self.sink.error(plan.ref, "spec.defaultBackend",
                        f"serves hosts no rule names, where {', '.join(keys)} cannot apply yet; {tail}")
        if fail_open:
            return ()
        return tuple((PREFIX + key, "is not supported on a defaultBackend for hosts no rule names")
                     for key in keys)

    def _option_default(self, value: str) -> Action | None:
        parts = value.split("/")
        if len(parts) != 2 or not all(parts):
            self.sink.error(
                ObjRef("Service", "", value or "<empty>"),
                "",
                "--default-backend-service must be namespace/name; ignored",
            )
            return None
        namespace, name = parts
        service = self.cluster.services.get((namespace, name))
        ports = service_ports(service) if service is not None else []
        if service is not None and not ports:
            self.sink.error(
                ObjRef("Service", namespace, name), "spec.ports", "default backend Service has no ports"
            )
        port = ports[0][1] if ports else 0
        return self.forward(
            BackendRef(namespace, name, port, ""), _default_upstream(self.options),
            ObjRef("Service", namespace, name),
        )


class _HostAccess(msgspec.Struct, frozen=True):
    """The client-certificate settings of one host, and why the host fails closed (if so)."""

    client: ClientAuth | None = None
    closed: tuple[Reason, ...] = ()


def _default_upstream(options: TranslateOptions) -> UpstreamSettings:
    """The upstream settings of Ingress-less backends: the controller ConfigMap's timeouts."""
    initial = initial_annotations(options.annotation_defaults)
    return initial.upstream if initial is not None else UpstreamSettings()


def _default_ranges(
    ranges: SourceRanges | None, annotations: IngressAnnotations, options: TranslateOptions
) -> SourceRanges | None:
    """The controller ConfigMap's whitelist-/denylist-source-range where the Ingress sets none
    of its own (ingress-nginx: the annotation replaces the ConfigMap's, each list on its own)."""
    defaults = options.annotation_defaults
    if not defaults.allowlist and not defaults.denylist:
        return ranges
    allow = ranges.allow if ranges is not None else ()
    deny = ranges.deny if ranges is not None else ()
    if annotations.allowlist_source_range is None and annotations.whitelist_source_range is None:
        allow = defaults.allowlist
    if annotations.denylist_source_range is None:
        deny = defaults.denylist
    return SourceRanges(allow=allow, deny=deny) if allow or deny else None


_MAX_BODY = 1000


def fail_closed(closed: tuple[tuple[str, str], ...]) -> Respond:
    """The 503 a fail-closed route answers: which keys, and that it is closed on purpose."""
    refused = ", ".join(f"{key} {why}" for key, why in closed)
    line = clean_text(f"refused: {refused}; this route is closed (fail closed)")  # one printable line
    if len(line) > _MAX_BODY:
        line = line[: _MAX_BODY - 3] + "..."
    return Respond(503, f"503 Service Unavailable\n{line}\n")


def _plans(cluster: Cluster, options: TranslateOptions, sink: Sink) -> list[IngressPlan]:
    plans: list[IngressPlan] = []
    for ref, ingress in cluster.ingresses:
        try:
            if not is_ours(ref, ingress, cluster, options, sink):
                continue
            plan = parse_ingress(
                ref, ingress, sink, fail_open=options.unsafe_fail_open, defaults=options.annotation_defaults
            )
        except Exception as exc:
            _internal(sink, ref, exc, "reading this Ingress")
            continue
        if plan is not None:
            plans.append(plan)
    plans.sort(key=lambda p: p.age)
    return plans


def _translate(
    objects: Iterable[Mapping[str, Any]], options: TranslateOptions, sink: Sink, memory: ConfigMemory | None
) -> Snapshot:
    cluster = index_objects(objects, sink)
    options = configure(cluster.configmaps, options, sink, memory)
    plans = _plans(cluster, options, sink)
    merged = _merge(plans, sink)
    emitter = _Emitter(cluster, options, sink)
    virtual_hosts = tuple(emitter.virtual_host(host, merged) for host in sorted(merged.hosts))
    virtual_hosts = extra_hosts.emit(virtual_hosts, merged.extra, emitter.certificates)
    default_action = emitter.default_action(plans)
    settings = emitter.settings()
    upstreams = emitter.builder.upstreams
    return Snapshot(
        virtual_hosts=virtual_hosts,
        upstreams=tuple(upstreams[name] for name in sorted(upstreams)),
        certificates=tuple(emitter.certificates[name] for name in sorted(emitter.certificates)),
        default_action=default_action,
        settings=settings,
    )


_DEFAULT_OPTIONS = TranslateOptions()


def translate(
    objects: Iterable[Mapping[str, Any]],
    options: TranslateOptions = _DEFAULT_OPTIONS,
    memory: ConfigMemory | None = None,
) -> TranslationResult:
    """Kubernetes objects (plain dicts) -> snapshot + sorted diagnostics.  Never raises.

    ``memory``: the last good value of each key of the controller ConfigMap, kept by a caller
    that translates again and again (read and updated; see ``translate.configmap``)."""
    sink = Sink()
    try:
        snapshot = _translate(objects, options, sink, memory)
    except Exception as exc:  # last line of defence; the tests assert it is never reached
        _internal(sink, _TRANSLATOR, exc, "translating")
        snapshot = Snapshot(settings=options.settings)
    return TranslationResult(snapshot=snapshot, diagnostics=sink.sorted())
