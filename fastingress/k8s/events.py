"""Translation diagnostics as Kubernetes Events (core/v1), deduplicated and rate-limited.

Pure: the controller asks ``EventLimiter.select`` which diagnostics to post now, builds the
bodies with ``event_body`` and POSTs them (and stops for good after a 403: no RBAC).  A
diagnostic is posted once while it persists; if it goes away and comes back it is posted
again.  A token bucket (``burst`` at once, then ``rate`` per second) caps what leaves; the
rest is posted later, so a broken cluster cannot flood the API server.  Only warnings and errors
become Events: info diagnostics (e.g. "this Ingress belongs to another class") would be
noise on other controllers' objects.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Obj = dict[str, Any]

API_VERSIONS = {
    "Ingress": "networking.k8s.io/v1",
    "IngressClass": "networking.k8s.io/v1",
    "Service": "v1",
    "Secret": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    "ConfigMap": "v1",
}
COMPONENT = "fastingress"


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
    def field(self) -> str: ...
    @property
    def message(self) -> str: ...


DiagKey = tuple[str, str, str, str, str]


def diag_key(d: DiagnosticLike) -> DiagKey:
    return (d.kind, d.namespace, d.name, d.field, d.message)


def reason_for(d: DiagnosticLike) -> str:
    text = d.message.lower()
    if d.field.startswith("metadata.annotations["):
        if "(fail closed)" in text:
            return "FailClosed"
        if "--unsafe-fail-open" in text:
            return "UnsafeFailOpen"
        return "InvalidAnnotation"
    if d.kind == "ConfigMap":  # the controller ConfigMap (--configmap) and those it names
        if "(fail closed)" in text:
            return "FailClosed"
        return "InvalidConfigMap"
    if "already defined" in text or "conflict" in text or "already claimed" in text:
        return "Conflict"
    if "secret" in text or d.field.startswith("spec.tls"):
        return "MissingSecret" if "not found" in text or "no " in text else "InvalidSecret"
    if "service" in text and ("not found" in text or "no such" in text or "does not exist" in text):
        return "MissingService"
    if "class" in text:
        return "UnknownClass"
    return "InvalidConfiguration"


@dataclass(slots=True)
class EventLimiter:
    """Deduplication plus a token bucket: ``burst`` events at once, ``rate`` per second after."""

    burst: int = 20
    rate: float = 5.0
    posted: set[DiagKey] = field(default_factory=set)
    disabled: bool = False
    tokens: float = -1.0  # -1: full (set on first use)
    refilled_at: float = 0.0
    held_back: int = 0  # diagnostics left for later by the last select()

    def _refill(self, now: float) -> None:
        if self.tokens < 0:
            self.tokens = float(self.burst)
        else:
            self.tokens = min(float(self.burst), self.tokens + (now - self.refilled_at) * self.rate)
        self.refilled_at = now

    def select(self, diagnostics: Sequence[DiagnosticLike], now: float) -> list[DiagnosticLike]:
        """The diagnostics to post now; forgets those that went away."""
        if self.disabled:
            return []
        relevant = [d for d in diagnostics if d.severity in ("warning", "error") and d.kind in API_VERSIONS]
        current = {diag_key(d) for d in relevant}
        self.posted &= current
        self._refill(now)
        fresh = [d for d in relevant if diag_key(d) not in self.posted]
        allowed = int(self.tokens)
        self.held_back = max(0, len(fresh) - allowed)
        return fresh[:allowed]

    def mark(self, d: DiagnosticLike) -> None:
        self.posted.add(diag_key(d))
        self.tokens = max(0.0, self.tokens - 1)


def event_body(d: DiagnosticLike, involved: Obj | None, *, reporter: str, now: datetime.datetime) -> Obj:
    """A core/v1 Event about the object ``d`` names (``involved``: that object, if we have it)."""
    namespace = d.namespace or "default"
    meta = involved.get("metadata") if involved is not None else None
    involved_ref: Obj = {"apiVersion": API_VERSIONS.get(d.kind, "v1"), "kind": d.kind, "name": d.name}
    if d.namespace:
        involved_ref["namespace"] = d.namespace
    if isinstance(meta, dict):
        for src, dst in (("uid", "uid"), ("resourceVersion", "resourceVersion")):
            if isinstance(meta.get(src), str):
                involved_ref[dst] = meta[src]
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = f"{d.field}: {d.message}" if d.field else d.message
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{d.name[:200]}.{secrets.token_hex(8)}", "namespace": namespace},
        "involvedObject": involved_ref,
        "reason": reason_for(d),
        "message": message[:1024],
        "type": "Warning",
        "source": {"component": COMPONENT, "host": reporter},
        "reportingComponent": COMPONENT,
        "reportingInstance": reporter,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
