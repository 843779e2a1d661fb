"""Index the input objects by kind and name (the first, order-independent pass).

Every object is validated just enough to be addressed (kind, metadata.name,
metadata.namespace); duplicates of the same kind/namespace/name are resolved to one
copy deterministically (highest metadata.generation, then resourceVersion, then a
canonical form), so the result does not depend on input order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from fastingress.translate.access import as_int, as_map, canonical, get, get_list, get_map, get_str, str_map
from fastingress.translate.model import ObjRef, Sink

KINDS = frozenset({"Ingress", "IngressClass", "Service", "EndpointSlice", "Secret", "ConfigMap"})
CLUSTER_SCOPED = frozenset({"IngressClass"})
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
UNNAMED = "<unnamed>"
_MAX_LIST_DEPTH = 4
_NAMESPACE_RE = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")

Obj = Mapping[Any, Any]


class Cluster:
    """The objects translation looks at, keyed for lookups; built once per translate()."""

    def __init__(self) -> None:
        self.ingresses: list[tuple[ObjRef, Obj]] = []
        self.classes: dict[str, Obj] = {}
        self.services: dict[tuple[str, str], Obj] = {}
        self.slices: dict[tuple[str, str], list[tuple[ObjRef, Obj]]] = {}
        self.secrets: dict[tuple[str, str], Obj] = {}
        self.configmaps: dict[tuple[str, str], Obj] = {}  # custom-headers, auth-proxy-set-headers, ...


def _version_key(obj: Obj) -> tuple[int, int, str]:
    meta = get_map(obj, "metadata")
    generation = as_int(get(meta, "generation")) or 0
    rv_text = get(meta, "resourceVersion")
    resource_version = 0
    if isinstance(rv_text, str) and rv_text.isdigit() and len(rv_text) < 30:
        resource_version = int(rv_text)
    return (generation, resource_version, canonical(obj))


def _address(obj: Obj, kind: str, sink: Sink) -> ObjRef | None:
    meta = get_map(obj, "metadata")
    raw_ns = get(meta, "namespace")
    namespace = ""
    if kind not in CLUSTER_SCOPED:
        if raw_ns is None or raw_ns == "":
            namespace = "default"
        elif isinstance(raw_ns, str) and _NAMESPACE_RE.match(raw_ns):
            namespace = raw_ns
        else:
            shown_ns = raw_ns if isinstance(raw_ns, str) else "<invalid>"
            shown = ObjRef(kind, shown_ns, get_str(meta, "name") or UNNAMED)
            sink.error(shown, "metadata.namespace", "invalid namespace; skipped")
            return None
    name = get_str(meta, "name")
    if not name:
        field = "metadata" if meta is None else "metadata.name"
        sink.error(ObjRef(kind, namespace, UNNAMED), field, "object has no name; skipped")
        return None
    return ObjRef(kind, namespace, name)


def _collect(objects: Iterable[object], sink: Sink, found: dict[ObjRef, list[Obj]], depth: int) -> None:
    for obj in objects:
        m = as_map(obj)
        if m is None:
            sink.error(
                ObjRef("Unknown", "", f"<{type(obj).__name__}>"),
                "",
                "not a Kubernetes object (expected a mapping); skipped",
            )
            continue
        kind = get_str(m, "kind")
        if kind == "List" and depth < _MAX_LIST_DEPTH:
            _collect(get_list(m, "items") or (), sink, found, depth + 1)
            continue
        if kind is None:
            name = get_str(get_map(m, "metadata"), "name") or UNNAMED
            sink.warning(ObjRef("Unknown", "", name), "kind", "object has no kind; skipped")
            continue
        if kind not in KINDS:
            continue  # Deployments, Pods, ...: not ours to read
        ref = _address(m, kind, sink)
        if ref is not None:
            found.setdefault(ref, []).append(m)


def _pick(ref: ObjRef, copies: list[Obj], sink: Sink) -> Obj:
    if len(copies) == 1:
        return copies[0]
    sink.warning(
        ref,
        "metadata.name",
        f"defined {len(copies)} times; keeping the copy with the highest generation/resourceVersion",
    )
    return max(copies, key=_version_key)


def index_objects(objects: Iterable[object], sink: Sink) -> Cluster:
    found: dict[ObjRef, list[Obj]] = {}
    try:
        _collect(objects, sink, found, 0)
    except TypeError:
        sink.error(ObjRef("Unknown", "", "<input>"), "", "input is not a list of objects; nothing translated")
    cluster = Cluster()
    for ref in sorted(found):
        obj = _pick(ref, found[ref], sink)
        key = (ref.namespace, ref.name)
        if ref.kind == "Ingress":
            cluster.ingresses.append((ref, obj))
        elif ref.kind == "IngressClass":
            cluster.classes[ref.name] = obj
        elif ref.kind == "Service":
            cluster.services[key] = obj
        elif ref.kind == "Secret":
            cluster.secrets[key] = obj
        elif ref.kind == "ConfigMap":
            cluster.configmaps[key] = obj
        else:  # EndpointSlice
            labels = str_map(get(get_map(obj, "metadata"), "labels"))
            service = labels.get(SERVICE_NAME_LABEL)
            if isinstance(service, str) and service:
                cluster.slices.setdefault((ref.namespace, service), []).append((ref, obj))
    return cluster
