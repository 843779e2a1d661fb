"""Write real Kubernetes YAML for end-to-end tests.

Helpers return YAML text (one document each) in the shape ``kubectl get -o yaml`` would show,
so that tests exercise the same loader and translator as a user's files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml


def service(name: str, *, namespace: str = "default", port: int = 80, port_name: str = "http") -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  type: ClusterIP
  selector:
    app: {name}
  ports:
    - name: {port_name}
      port: {port}
      targetPort: {port_name}
"""


def external_service(name: str, external_name: str, *, namespace: str = "default", port: int = 80) -> str:
    return f"""\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  type: ExternalName
  externalName: {external_name}
  ports:
    - name: http
      port: {port}
"""


def endpoint_slice(
    service_name: str,
    ports: Sequence[int],
    *,
    namespace: str = "default",
    port_name: str = "http",
    slice_name: str | None = None,
    not_ready: Sequence[int] = (),
    address: str = "127.0.0.1",
) -> str:
    """One slice with one endpoint address per *port*: on loopback every "pod" is
    127.0.0.1 with its own port, so each endpoint is a distinct (address, port) pair —
    expressed as one slice per port, since a slice has one port list for all its endpoints."""
    docs = []
    for port in ports:
        ready = "false" if port in not_ready else "true"
        docs.append(f"""\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {slice_name or service_name}-{port}
  namespace: {namespace}
  labels:
    kubernetes.io/service-name: {service_name}
addressType: IPv4
ports:
  - name: {port_name}
    port: {port}
    protocol: TCP
endpoints:
  - addresses: ["{address}"]
    conditions:
      ready: {ready}
""")
    return "---\n".join(docs)


def ingress(
    name: str,
    rules: Iterable[tuple[str | None, str, str, str]],
    *,
    namespace: str = "default",
    class_name: str | None = None,
    annotations: dict[str, str] | None = None,
    default_backend: str | None = None,
    created: str | None = None,
    service_port: int = 80,
) -> str:
    """``rules``: (host or None, path, pathType, service name)."""
    by_host: dict[str | None, list[tuple[str, str, str]]] = {}
    for host, path, path_type, svc in rules:
        by_host.setdefault(host, []).append((path, path_type, svc))
    spec: dict[str, object] = {}
    if class_name:
        spec["ingressClassName"] = class_name
    if default_backend:
        spec["defaultBackend"] = {"service": {"name": default_backend, "port": {"number": service_port}}}
    rule_list = []
    for host, paths in by_host.items():
        rule: dict[str, object] = {
            "http": {
                "paths": [
                    {
                        "path": p,
                        "pathType": t,
                        "backend": {"service": {"name": s, "port": {"number": service_port}}},
                    }
                    for p, t, s in paths
                ]
            }
        }
        if host is not None:
            rule = {"host": host, **rule}
        rule_list.append(rule)
    if rule_list:
        spec["rules"] = rule_list
    metadata: dict[str, object] = {"name": name, "namespace": namespace}
    if created:
        metadata["creationTimestamp"] = created
    if annotations:
        metadata["annotations"] = annotations
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": spec}
    return yaml.safe_dump(doc, sort_keys=False)


def ingress_class(name: str, controller: str, *, default: bool = False) -> str:
    annotations = (
        '  annotations:\n    ingressclass.kubernetes.io/is-default-class: "true"\n' if default else ""
    )
    return f"""\
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: {name}
{annotations}spec:
  controller: {controller}
"""


def write(path: Path, *docs: str) -> Path:
    """Write documents as one multi-document YAML file, atomically (rename), so the
    watcher never reads a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("---\n".join(d if d.endswith("\n") else d + "\n" for d in docs))
    tmp.replace(path)
    return path
