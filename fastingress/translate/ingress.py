"""One Ingress -> an IngressPlan (validated rules, backends, TLS entries), and class selection.

Everything read from the object is type-checked here; a bad rule, path or backend is
skipped with a diagnostic naming its field, and the rest of the Ingress still counts.
Merging plans of several Ingresses is ``core``'s job.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from fastingress.snapshot.schema import PathType
from fastingress.translate import policy_extauth
from fastingress.translate.access import (
    as_int,
    as_map,
    get,
    get_list,
    get_map,
    get_str,
    str_map,
    timestamp_key,
)
from fastingress.translate.annotations import (
    PREFIX,
    PREFIXES,
    IngressAnnotations,
    UpstreamSettings,
    parse_annotations,
)
from fastingress.translate.backends import BackendRef
from fastingress.translate.cluster import Cluster
from fastingress.translate.hosts import check_path, normalize_host, priority, route_key
from fastingress.translate.model import AnnotationDefaults, ObjRef, Severity, Sink, TranslateOptions

LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
_NAME_RE = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
_SUBDOMAIN_RE = re.compile(r"^[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?$")
_MAX_PORT = 65535

Obj = Mapping[Any, Any]


class PathRule(msgspec.Struct, frozen=True):
    host: str
    path: str
    path_type: PathType
    key: str  # route_key(path, path_type): identity within the host
    priority: int
    backend: BackendRef
    field: str


class TlsEntry(msgspec.Struct, frozen=True):
    host: str
    secret: str  # Secret name in the Ingress's namespace
    field: str


class IngressPlan(msgspec.Struct, frozen=True):
    ref: ObjRef
    age: tuple[str, str, str]  # (creationTimestamp, namespace, name): smaller is older
    annotations: IngressAnnotations
    rules: tuple[PathRule, ...]
    hosts: tuple[str, ...]  # hosts this Ingress has (valid) rules for
    default_backend: BackendRef | None
    tls: tuple[TlsEntry, ...]


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- class selection ------------------------------------------------------------------


def _class_is_ours(
    name: str, field: str, *, ref: ObjRef, cluster: Cluster, options: TranslateOptions, sink: Sink
) -> bool:
    if name == options.ingress_class:
        return True
    ingress_class = cluster.classes.get(name)
    if ingress_class is None:
        sink.info(
            ref, field, f"ingress class {name!r} is not ours and no IngressClass of that name exists; ignored"
        )
        return False
    controller = get_str(get_map(ingress_class, "spec"), "controller")
    if controller == options.controller_class:
        return True
    sink.info(ref, field, f"IngressClass {name!r} belongs to controller {controller!r}, not ours; ignored")
    return False


def _default_class_is_ours(cluster: Cluster, options: TranslateOptions) -> bool:
    for ingress_class in cluster.classes.values():
        annotations = str_map(get(get_map(ingress_class, "metadata"), "annotations"))
        if annotations.get(DEFAULT_CLASS_ANNOTATION) != "true":
            continue
        if get_str(get_map(ingress_class, "spec"), "controller") == options.controller_class:
            return True
    return False


def is_ours(ref: ObjRef, ingress: Obj, cluster: Cluster, options: TranslateOptions, sink: Sink) -> bool:
    class_name = get(get_map(ingress, "spec"), "ingressClassName")
    if class_name is not None and class_name != "":
        if not isinstance(class_name, str):
            sink.warning(ref, "spec.ingressClassName", "must be a string; Ingress ignored")
            return False
        return _class_is_ours(
            class_name, "spec.ingressClassName", ref=ref, cluster=cluster, options=options, sink=sink
        )
    annotations = str_map(get(get_map(ingress, "metadata"), "annotations"))
    legacy = annotations.get(LEGACY_CLASS_ANNOTATION)
    if isinstance(legacy, str) and legacy:
        field = f"metadata.annotations[{LEGACY_CLASS_ANNOTATION}]"
        return _class_is_ours(legacy, field, ref=ref, cluster=cluster, options=options, sink=sink)
    if options.watch_without_class or _default_class_is_ours(cluster, options):
        return True
    sink.info(ref, "spec.ingressClassName", "no ingress class and no default IngressClass of ours; ignored")
    return False


# --- backends -------------------------------------------------------------------------


def _port_of(raw: object) -> int | str | None:
    number = as_int(raw)
    if number is not None:
        return number if 0 < number <= _MAX_PORT else None
    if isinstance(raw, str):
        if raw.isdigit() and len(raw) <= 5:  # legacy IntOrString written as a quoted number
            return _port_of(int(raw))
        return raw if _NAME_RE.match(raw) else None
    return None


def parse_backend(raw: object, field: str, ref: ObjRef, sink: Sink) -> BackendRef | None:
    backend = as_map(raw)
    if backend is None:
        sink.warning(ref, field, "backend missing or not an object; skipped")
        return None
    if get(backend, "resource") is not None:
        sink.warning(ref, f"{field}.resource", "resource backends are not supported; skipped")
        return None
    service = get_map(backend, "service")
    if service is not None:
        name, name_field = get(service, "name"), f"{field}.service.name"
        port_map = get_map(service, "port")
        raw_port: object = get(port_map, "number")
        port_field = f"{field}.service.port.number"
        if raw_port is None:
            raw_port, port_field = get(port_map, "name"), f"{field}.service.port.name"
            if raw_port is None:
                port_field = f"{field}.service.port"
        elif as_int(raw_port) is None:
            raw_port = repr(raw_port)[:80] + " (not a number)"
        bref_field = f"{field}.service"
    elif get(backend, "serviceName") is not None:  # extensions/v1beta1, networking.k8s.io/v1beta1
        name, name_field = get(backend, "serviceName"), f"{field}.serviceName"
        raw_port, port_field = get(backend, "servicePort"), f"{field}.servicePort"
        bref_field = field
    else:
        sink.warning(ref, field, "backend has no service; skipped")
        return None
    if not isinstance(name, str) or not _NAME_RE.match(name):
        sink.warning(ref, name_field, f"invalid Service name {_show(name)}; skipped")
        return None
    port = _port_of(raw_port)
    if port is None:
        sink.warning(ref, port_field, f"invalid or missing Service port {_show(raw_port)}; skipped")
        return None
    return BackendRef(ref.namespace, name, port, bref_field)


# --- rules ----------------------------------------------------------------------------


def _path_type(raw: object, field: str, ref: ObjRef, sink: Sink) -> PathType | None:
    if raw is None or raw == "":
        sink.info(ref, field, "pathType missing; treated as ImplementationSpecific (prefix match)")
        return "Prefix"
    if raw in ("Prefix", "ImplementationSpecific"):
        return "Prefix"
    if raw == "Exact":
        return "Exact"
    sink.warning(ref, field, f"unknown pathType {_show(raw)}; path skipped")
    return None


def _parse_path(raw: object, host: str, field: str, ref: ObjRef, sink: Sink) -> PathRule | None:
    entry = as_map(raw)
    if entry is None:
        sink.warning(ref, field, "path entry is not an object; skipped")
        return None
    path_type = _path_type(get(entry, "pathType"), f"{field}.pathType", ref, sink)
    if path_type is None:
        return None
    path = get(entry, "path")
    if path is None or path == "":
        path = "/"
    if not isinstance(path, str):
        sink.warning(ref, f"{field}.path", "path must be a string; skipped")
        return None
    problem = check_path(path)
    if problem is not None:
        sink.warning(ref, f"{field}.path", f"invalid path {_show(path)}: {problem}; skipped")
        return None
    backend = parse_backend(get(entry, "backend"), f"{field}.backend", ref, sink)
    if backend is None:
        return None
    return PathRule(
        host, path, path_type, route_key(path, path_type), priority(path, path_type), backend, field
    )


def _parse_host(raw: object, field: str, ref: ObjRef, sink: Sink) -> str | None:
    if raw is None:
        return ""
    if not isinstance(raw, str):
        sink.warning(ref, field, "host must be a string; skipped")
        return None
    host, problem = normalize_host(raw)
    if problem is not None:
        sink.warning(ref, field, f"invalid host {_show(raw)}: {problem}; skipped")
        return None
    return host


def _parse_rules(spec: Obj, ref: ObjRef, sink: Sink) -> tuple[list[PathRule], list[str]]:
    rules: list[PathRule] = []
    hosts: list[str] = []
    raw_rules = get(spec, "rules")
    if raw_rules is not None and get_list(spec, "rules") is None:
        sink.warning(ref, "spec.rules", "must be a list; ignored")
    for i, raw_rule in enumerate(get_list(spec, "rules") or ()):
        field = f"spec.rules[{i}]"
        rule = as_map(raw_rule)
        if rule is None:
            sink.warning(ref, field, "rule is not an object; skipped")
            continue
        host = _parse_host(get(rule, "host"), f"{field}.host", ref, sink)
        if host is None:
            continue
        http = get(rule, "http")
        paths = get_list(http, "paths")
        if http is not None and paths is None:
            sink.warning(ref, f"{field}.http.paths", "must be a list of paths; rule skipped")
            continue
        if host not in hosts:
            hosts.append(host)
        for j, raw_path in enumerate(paths or ()):
            parsed = _parse_path(raw_path, host, f"{field}.http.paths[{j}]", ref, sink)
            if parsed is not None:
                rules.append(parsed)
    return rules, hosts


def _parse_tls(spec: Obj, rule_hosts: list[str], ref: ObjRef, sink: Sink) -> list[TlsEntry]:
    entries: list[TlsEntry] = []
    raw_tls = get(spec, "tls")
    if raw_tls is not None and get_list(spec, "tls") is None:
        sink.warning(ref, "spec.tls", "must be a list; ignored")
    for i, raw in enumerate(get_list(spec, "tls") or ()):
        field = f"spec.tls[{i}]"
        secret = get(raw, "secretName")
        if not isinstance(secret, str) or not secret:
            sink.warning(
                ref, f"{field}.secretName", "secretName missing; entry ignored (default certificate)"
            )
            continue
        if not _SUBDOMAIN_RE.match(secret):
            sink.warning(ref, f"{field}.secretName", f"invalid Secret name {_show(secret)}; entry ignored")
            continue
        raw_hosts = get_list(raw, "hosts")
        if not raw_hosts:  # no hosts: the hosts of this Ingress's rules
            entries.extend(TlsEntry(h, secret, f"{field}.secretName") for h in rule_hosts if h)
            continue
        for k, raw_host in enumerate(raw_hosts):
            host = _parse_host(raw_host, f"{field}.hosts[{k}]", ref, sink)
            if host:
                entries.append(TlsEntry(host, secret, f"{field}.secretName"))
    return entries + _wildcard_covered(entries, rule_hosts)


def _wildcard_covered(entries: list[TlsEntry], rule_hosts: list[str]) -> list[TlsEntry]:
    """Rule hosts a wildcard tls host covers (one label) get that Secret too, unless listed.

    ingress-nginx does the same by matching the certificate's names; we cannot read the
    certificate here, so the tls host list stands in for it.
    """
    listed = {entry.host for entry in entries}
    extra: list[TlsEntry] = []
    for entry in entries:
        if not entry.host.startswith("*."):
            continue
        suffix = entry.host[1:]  # ".example.com"
        for host in rule_hosts:
            covered = host.endswith(suffix) and "." not in host[: -len(suffix)] and host[: -len(suffix)]
            if covered and not host.startswith("*.") and host not in listed:
                listed.add(host)
                extra.append(TlsEntry(host, entry.secret, entry.field))
    return extra


_SEVERITIES: dict[str, Severity] = {"error": "error", "warning": "warning", "info": "info"}


def initial_annotations(defaults: AnnotationDefaults | None) -> IngressAnnotations | None:
    """What an Ingress without annotations gets: the controller ConfigMap's defaults."""
    if defaults is None or defaults == _NO_DEFAULTS:
        return None
    return _initial(defaults)


@functools.lru_cache(maxsize=8)
def _initial(defaults: AnnotationDefaults) -> IngressAnnotations:
    upstream = UpstreamSettings(
        connect_timeout=defaults.connect_timeout, read_timeout=defaults.read_timeout,
        send_timeout=defaults.send_timeout,
    )
    initial = IngressAnnotations(
        upstream=upstream, ssl_redirect=defaults.ssl_redirect, force_ssl_redirect=defaults.force_ssl_redirect
    )
    if defaults.custom_http_errors:
        http = msgspec.structs.replace(initial.http, custom_http_errors=defaults.custom_http_errors)
        initial = msgspec.structs.replace(initial, http=http)
    if defaults.annotations:  # validated by translate.configmap with these same parsers
        initial, _ = parse_annotations({PREFIX + n: v for n, v in defaults.annotations}, defaults=initial)
    return initial


_NO_DEFAULTS = AnnotationDefaults()


def _annotations(
    metadata: Obj | None, ref: ObjRef, sink: Sink, fail_open: bool, defaults: AnnotationDefaults | None = None
) -> IngressAnnotations:
    annotations = str_map(get(metadata, "annotations"))
    parsed, findings = parse_annotations(
        annotations, fail_open=fail_open, defaults=initial_annotations(defaults)
    )
    for finding in findings:
        sink.add(
            _SEVERITIES.get(finding.severity, "info"),
            ref,
            f"metadata.annotations[{finding.key}]",
            finding.message,
            finding.suggestion,
        )
    ours = {k.rpartition("/")[2]: k for k in sorted(annotations, reverse=True) if k.startswith(PREFIXES)}
    for severity, key, message in policy_extauth.findings(parsed.extauth, ours):
        sink.add(_SEVERITIES.get(severity, "info"), ref, f"metadata.annotations[{key}]", message)
    if (
        get(metadata, "annotations") is not None
        and not annotations
        and get_map(metadata, "annotations") is None
    ):
        sink.warning(ref, "metadata.annotations", "must be a map of strings; ignored")
    return parsed


def parse_ingress(
    ref: ObjRef,
    ingress: Obj,
    sink: Sink,
    *,
    fail_open: bool = False,
    defaults: AnnotationDefaults | None = None,
) -> IngressPlan | None:
    """The Ingress as a plan; ``fail_open`` (--unsafe-fail-open) only changes what the
    diagnostics about unhonoured access annotations say; ``defaults``: the annotation values
    of the controller ConfigMap."""
    metadata = get_map(ingress, "metadata")
    annotations = _annotations(metadata, ref, sink, fail_open, defaults)
    spec = get_map(ingress, "spec")
    if spec is None:
        sink.warning(ref, "spec", "spec missing or not an object; Ingress ignored")
        return None
    rules, hosts = _parse_rules(spec, ref, sink)
    default_backend: BackendRef | None = None
    for key in ("defaultBackend", "backend"):  # "backend": the v1beta1 name
        if get(spec, key) is not None:
            default_backend = parse_backend(get(spec, key), f"spec.{key}", ref, sink)
            break
    tls = _parse_tls(spec, hosts, ref, sink)
    if not rules and not hosts and default_backend is None and not tls:
        sink.warning(ref, "spec", "no usable rules, defaultBackend or tls; Ingress has no effect")
    age = (timestamp_key(get(metadata, "creationTimestamp")), ref.namespace, ref.name)
    return IngressPlan(ref, age, annotations, tuple(rules), tuple(hosts), default_backend, tuple(tls))


__all__ = ["PREFIX", "IngressPlan", "PathRule", "TlsEntry", "is_ours", "parse_backend", "parse_ingress"]
