"""Ingress status: which Ingresses are ours and what their status.loadBalancer should say.

Pure functions; the controller's status writer (``controller.StatusWriter``) does the I/O:
replace on the status subresource, re-read and retry on 409.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from fastingress.translate.cluster import index_objects
from fastingress.translate.ingress import is_ours
from fastingress.translate.model import ObjRef, Sink, TranslateOptions

Obj = dict[str, Any]
Address = dict[str, str]  # {"ip": ...} or {"hostname": ...}


def _address(value: str) -> Address:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return {"hostname": value}
    return {"ip": value}


def _sorted(addresses: Iterable[Address]) -> list[Address]:
    """Deduplicated, IPs first, then host names, each sorted (a stable order to compare)."""
    unique = {("ip" not in a, a.get("ip", ""), a.get("hostname", "")): a for a in addresses}
    return [unique[k] for k in sorted(unique)]


def desired_addresses(publish_service: Obj | None, publish_addresses: tuple[str, ...]) -> list[Address]:
    """--publish-status-address wins; else the Service's load balancer (or external IPs)."""
    if publish_addresses:
        return _sorted(_address(a) for a in publish_addresses)
    if publish_service is None:
        return []
    status = publish_service.get("status")
    lb = status.get("loadBalancer") if isinstance(status, dict) else None
    entries = lb.get("ingress") if isinstance(lb, dict) else None
    found: list[Address] = []
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict):
            continue
        for field in ("ip", "hostname"):
            value = entry.get(field)
            if isinstance(value, str) and value:
                found.append({field: value})
                break
    if not found:
        spec = publish_service.get("spec")
        external = spec.get("externalIPs") if isinstance(spec, dict) else None
        found = [_address(a) for a in external if isinstance(a, str)] if isinstance(external, list) else []
    return _sorted(found)


def current_addresses(ingress: Obj) -> list[Address]:
    status = ingress.get("status")
    lb = status.get("loadBalancer") if isinstance(status, dict) else None
    entries = lb.get("ingress") if isinstance(lb, dict) else None
    out: list[Address] = []
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict):
            out.append({k: v for k, v in entry.items() if k in ("ip", "hostname") and isinstance(v, str)})
    return _sorted(out)


def owned_ingresses(objects: Iterable[Obj], options: TranslateOptions) -> list[Obj]:
    """The Ingresses our class selection takes (the same rule translation applies)."""
    objects = list(objects)
    sink = Sink()
    cluster = index_objects([o for o in objects if o.get("kind") == "IngressClass"], sink)
    owned = []
    for obj in objects:
        meta = obj.get("metadata")
        if obj.get("kind") != "Ingress" or not isinstance(meta, dict):
            continue
        ref = ObjRef("Ingress", str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        if is_ours(ref, obj, cluster, options, sink):
            owned.append(obj)
    return owned


def with_status(ingress: Obj, addresses: list[Address]) -> Obj | None:
    """The Ingress with ``addresses`` as its status, or None if it already says exactly that."""
    if current_addresses(ingress) == addresses:
        return None
    updated = dict(ingress)
    meta = dict(updated.get("metadata") or {})
    meta.pop("managedFields", None)
    updated["metadata"] = meta
    updated["status"] = {"loadBalancer": {"ingress": [dict(a) for a in addresses]} if addresses else {}}
    return updated
