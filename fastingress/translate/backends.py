"""Ingress backends -> Upstreams: Service port resolution and EndpointSlice endpoints.

An upstream is named ``"{namespace}/{service}:{port}"`` with the port as the Ingress
wrote it (number or name); when the Ingress's annotations give non-default upstream
settings, ``"#"`` plus 8 hex chars of a hash of those settings is appended, so equal
settings share an upstream and different settings never do.  A missing Service or port
still yields an upstream (without endpoints): the worker answers 503, as ingress-nginx.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re

import msgspec
from cryptography import x509

from fastingress.snapshot.schema import Endpoint, Upstream
from fastingress.translate.access import (
    as_int,
    as_list,
    get,
    get_bool,
    get_list,
    get_map,
    get_str,
    secret_text,
)
from fastingress.translate.annotations import UpstreamSettings
from fastingress.translate.cluster import Cluster
from fastingress.translate.model import ObjRef, Sink
from fastingress.translate.policy_selection import balancing, nginx_backend_name

_DEFAULT_SETTINGS = UpstreamSettings()
_DNS_NAME_RE = re.compile(
    r"^[A-Za-z0-9](?:[-A-Za-z0-9_]{0,62})(?:\.[A-Za-z0-9_](?:[-A-Za-z0-9_]{0,62}))*\.?$"
)
_MAX_PORT = 65535
_SSL_SECRET_FIELD = "metadata.annotations[nginx.ingress.kubernetes.io/proxy-ssl-secret]"
_SERVICE_UPSTREAM_FIELD = "metadata.annotations[nginx.ingress.kubernetes.io/service-upstream]"


FIRST_PORT = 0  # BackendRef.port: the Service's first port (as ingress-nginx's default-backend)


class BackendRef(msgspec.Struct, frozen=True):
    """A backend as an Ingress (or an option) names it."""

    namespace: str
    service: str
    port: int | str  # number or ServicePort name, as written
    field: str  # where it was written, for diagnostics ("" for options)

    @property
    def service_port(self) -> str:
        return f"{self.namespace}/{self.service}:{self.port}"


# Fields added after the first release enter the hash only when set, so existing names stay.
_LATER_FIELDS = (
    "tls_verify", "tls_secret", "tls_server_name", "tls_sni", "balancing", "service_upstream",
    "tls_verify_depth",
)


def settings_suffix(settings: UpstreamSettings) -> str:
    if settings == _DEFAULT_SETTINGS:
        return ""
    fields = msgspec.structs.asdict(settings)
    for key in _LATER_FIELDS:
        if fields[key] == getattr(_DEFAULT_SETTINGS, key):
            del fields[key]
    return "#" + hashlib.sha256(msgspec.json.encode(fields)).hexdigest()[:8]


def _valid_port(value: object) -> int | None:
    port = as_int(value)
    return port if port is not None and 0 < port <= _MAX_PORT else None


def service_ports(service: object) -> list[tuple[str, int]]:
    """(name, port) of each well-formed spec.ports entry, in order."""
    ports: list[tuple[str, int]] = []
    for entry in get_list(get_map(service, "spec"), "ports") or ():
        port = _valid_port(get(entry, "port"))
        if port is not None:
            ports.append((get_str(entry, "name") or "", port))
    return ports


def _find_port(ports: list[tuple[str, int]], wanted: int | str) -> tuple[str, int] | None:
    if wanted == 0:  # FIRST_PORT: the Service's first port (default-backend annotation)
        return ports[0] if ports else None
    for name, port in ports:
        if (isinstance(wanted, int) and port == wanted) or (isinstance(wanted, str) and name == wanted):
            return name, port
    return None


def _better(a: Endpoint, b: Endpoint) -> Endpoint:
    def rank(e: Endpoint) -> tuple[bool, bool, bool]:
        return (e.ready, e.serving, not e.terminating)

    return a if rank(a) >= rank(b) else b


class UpstreamBuilder:
    """Builds each referenced upstream once; owns no global state."""

    def __init__(self, cluster: Cluster, sink: Sink) -> None:
        self._cluster = cluster
        self._sink = sink
        self.upstreams: dict[str, Upstream] = {}
        self._endpoint_cache: dict[tuple[str, str, str], tuple[Endpoint, ...]] = {}

    def resolve(self, backend: BackendRef, settings: UpstreamSettings, owner: ObjRef) -> str:
        """The upstream name for ``backend``; creates the Upstream on first use."""
        name = backend.service_port + settings_suffix(settings)
        upstream = self._build(name, backend, settings, owner)
        self.upstreams.setdefault(name, upstream)
        return name

    def _build(self, name: str, backend: BackendRef, settings: UpstreamSettings, owner: ObjRef) -> Upstream:
        base = Upstream(
            name=name,
            protocol=settings.protocol,
            host_override=settings.host_override,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            send_timeout=settings.send_timeout,
            service=f"{backend.namespace}/{backend.service}",
            tls_verify=settings.tls_verify,
            tls_ca_pem=self._ca_pem(settings.tls_secret, owner),
            tls_server_name=settings.tls_server_name,
            tls_sni=settings.tls_sni,
            tls_verify_depth=settings.tls_verify_depth,
            balancing=balancing(
                settings.balancing, nginx_backend_name(backend.namespace, backend.service, backend.port)
            ),
        )
        service = self._cluster.services.get((backend.namespace, backend.service))
        field = backend.field
        if service is None:
            self._sink.error(
                owner,
                f"{field}.name" if field else "",
                f"Service {backend.namespace}/{backend.service} not found; requests get 503",
            )
            return base
        spec = get_map(service, "spec")
        ports = service_ports(service)
        found = _find_port(ports, backend.port)
        port_field = f"{field}.port" if field else ""
        if get_str(spec, "type") == "ExternalName":
            return self._external(
                base=base, backend=backend, spec=spec, found=found, owner=owner, port_field=port_field
            )
        if found is None:
            self._sink.error(
                owner,
                port_field,
                f"Service {backend.namespace}/{backend.service} has no port {backend.port!r}; "
                "requests get 503",
            )
            return base
        if settings.service_upstream:
            cluster_ip = self._cluster_ip(spec, owner)
            if cluster_ip is not None:
                return msgspec.structs.replace(base, endpoints=(Endpoint(cluster_ip, found[1]),))
        endpoints = self._endpoints(backend.namespace, backend.service, found[0])
        return msgspec.structs.replace(base, endpoints=endpoints)

    def _cluster_ip(self, spec: object, owner: ObjRef) -> str | None:
        """service-upstream: the Service's ClusterIP (kube-proxy balances); None with an error
        (the Pod endpoints are used, as ingress-nginx does) when it has none."""
        raw = get_str(spec, "clusterIP")
        try:
            return str(ipaddress.ip_address(raw or ""))
        except ValueError:
            self._sink.error(owner, _SERVICE_UPSTREAM_FIELD,
                             f"the Service has no ClusterIP ({raw or 'none'}); its Pod endpoints are used")
            return None

    def _ca_pem(self, ref: str | None, owner: ObjRef) -> str | None:
        """proxy-ssl-secret: the PEM of the Secret's ``ca.crt``; None with a diagnostic if unusable."""
        if ref is None:
            return None
        namespace, _, name = ref.rpartition("/")
        namespace = namespace or owner.namespace
        secret = self._cluster.secrets.get((namespace, name))
        if secret is None:
            self._sink.error(owner, _SSL_SECRET_FIELD,
                             f"Secret {namespace}/{name} not found; upstream TLS verification has no CA")
            return None
        pem = secret_text(secret, "ca.crt")
        if pem is None or "-----BEGIN CERTIFICATE-----" not in pem:
            self._sink.error(ObjRef("Secret", namespace, name), "data[ca.crt]",
                             "missing, or not base64 of PEM certificates; not used as a CA")
            return None
        try:
            x509.load_pem_x509_certificates(pem.encode())
        except ValueError:
            self._sink.error(ObjRef("Secret", namespace, name), "data[ca.crt]",
                             "not valid PEM certificates; not used as a CA")
            return None
        return pem

    def _external(
        self,
        *,
        base: Upstream,
        backend: BackendRef,
        spec: object,
        found: tuple[str, int] | None,
        owner: ObjRef,
        port_field: str,
    ) -> Upstream:
        svc_ref = ObjRef("Service", backend.namespace, backend.service)
        if base.balancing is not None:
            self._sink.warning(
                owner, f"{backend.field}.name" if backend.field else "",
                f"ExternalName Service {backend.namespace}/{backend.service}: affinity, upstream-hash-by and "
                "load-balance are not applied to its DNS addresses yet (round robin)",
            )
        external = get_str(spec, "externalName")
        if not external or len(external) > 253 or not _DNS_NAME_RE.match(external):
            self._sink.error(svc_ref, "spec.externalName", "ExternalName Service needs a valid DNS name")
            return base
        port = 0
        if found is not None:
            port = found[1]
        elif isinstance(backend.port, int):
            port = backend.port
        else:
            self._sink.error(
                owner,
                port_field,
                f"ExternalName Service {backend.namespace}/{backend.service} has no port named "
                f"{backend.port!r}; requests get 503",
            )
            return base
        return msgspec.structs.replace(base, external_name=external.rstrip(".").lower(), port=port)

    def _endpoints(self, namespace: str, service: str, port_name: str) -> tuple[Endpoint, ...]:
        key = (namespace, service, port_name)
        if key not in self._endpoint_cache:
            self._endpoint_cache[key] = self._collect_endpoints(namespace, service, port_name)
        return self._endpoint_cache[key]

    def _collect_endpoints(self, namespace: str, service: str, port_name: str) -> tuple[Endpoint, ...]:
        best: dict[tuple[str, int], Endpoint] = {}
        for ref, slice_obj in self._cluster.slices.get((namespace, service), ()):
            for endpoint in self._slice_endpoints(ref, slice_obj, port_name):
                key = (endpoint.address, endpoint.port)
                best[key] = _better(best[key], endpoint) if key in best else endpoint
        return tuple(best[key] for key in sorted(best))

    def _slice_endpoints(self, ref: ObjRef, slice_obj: object, port_name: str) -> list[Endpoint]:
        address_type = get(slice_obj, "addressType")
        if address_type == "FQDN":
            self._sink.warning(ref, "addressType", "FQDN EndpointSlices are not supported; skipped")
            return []
        if address_type not in ("IPv4", "IPv6"):
            self._sink.warning(ref, "addressType", "addressType must be IPv4 or IPv6; skipped")
            return []
        target: int | None = None
        for i, entry in enumerate(get_list(slice_obj, "ports") or ()):
            if (get_str(entry, "name") or "") == port_name:
                target = _valid_port(get(entry, "port"))
                if target is None:
                    self._sink.warning(ref, f"ports[{i}].port", "port must be a number 1-65535; skipped")
                break
        if target is None:
            return []
        result: list[Endpoint] = []
        for i, entry in enumerate(get_list(slice_obj, "endpoints") or ()):
            conditions = get_map(entry, "conditions")
            ready = get_bool(conditions, "ready", True)
            serving = get_bool(conditions, "serving", ready)
            terminating = get_bool(conditions, "terminating", False)
            if not (ready or serving):
                continue
            for j, raw in enumerate(as_list(get(entry, "addresses")) or ()):
                address = self._address(raw, address_type)
                if address is None:
                    self._sink.warning(
                        ref, f"endpoints[{i}].addresses[{j}]", f"not an {address_type} address; skipped"
                    )
                    continue
                result.append(Endpoint(address, target, ready, serving, terminating))
        return result

    @staticmethod
    def _address(raw: object, address_type: str) -> str | None:
        if not isinstance(raw, str):
            return None
        try:
            ip = ipaddress.ip_address(raw)
        except ValueError:
            return None
        if (ip.version == 4) != (address_type == "IPv4"):
            return None
        return str(ip)
