"""Public value types of the translator: options in, result and diagnostics out."""

from __future__ import annotations

from typing import Literal

import msgspec

from fastingress.snapshot.schema import GlobalSettings, Snapshot

Severity = Literal["error", "warning", "info"]

# Kinds that have no namespace (their Diagnostic.namespace is "").
CLUSTER_SCOPED_KINDS = frozenset({"IngressClass", "File"})


class AnnotationDefaults(msgspec.Struct, frozen=True):
    """The controller ConfigMap's defaults of annotations; an Ingress's own annotation wins
    (``translate.configmap``).  The defaults here are the annotations' own."""

    ssl_redirect: bool = True  # ssl-redirect
    force_ssl_redirect: bool = False  # force-ssl-redirect
    connect_timeout: float = 5.0  # proxy-connect-timeout
    read_timeout: float = 60.0  # proxy-read-timeout
    send_timeout: float = 60.0  # proxy-send-timeout
    allowlist: tuple[str, ...] = ()  # whitelist-source-range (of allowlist-source-range)
    denylist: tuple[str, ...] = ()  # denylist-source-range
    custom_http_errors: tuple[int, ...] = ()  # custom-http-errors (served by the default backend)
    # Other keys that default an annotation of the same name (load-balance, proxy-next-upstream...):
    # (annotation name, value), parsed by the annotation's own parser.
    annotations: tuple[tuple[str, str], ...] = ()


class TranslateOptions(msgspec.Struct, frozen=True):
    controller_class: str = "fastingress.io/ingress-controller"
    ingress_class: str = "fastingress"  # --ingress-class: also ours by name
    watch_without_class: bool = True  # standalone default on; controller mode passes False
    default_backend_service: str | None = None  # "namespace/name"; port: the Service's first port
    settings: GlobalSettings = GlobalSettings()
    # --unsafe-fail-open: serve routes whose access-guarding annotations are not honoured
    # WITHOUT that protection, instead of answering 503 (fail closed, the default).
    unsafe_fail_open: bool = False
    # -- the controller ConfigMap (issue 9) -------------------------------------------------
    configmap: str | None = None  # --configmap "namespace/name": read by translate() itself
    # What the ConfigMap made of the options (``translate.configmap.configure`` sets these):
    annotation_defaults: AnnotationDefaults = AnnotationDefaults()  # ssl-redirect, proxy-*-timeout...
    global_closed: tuple[tuple[str, str], ...] = ()  # (key, why): access guards not honoured: 503


class Diagnostic(msgspec.Struct, frozen=True):
    """One finding about one object, meant to be logged as one line."""

    severity: Severity
    kind: str  # "Ingress", "Service", "Secret", "IngressClass", "EndpointSlice", "File", ...
    namespace: str
    name: str
    field: str  # e.g. "spec.rules[0].http.paths[1].backend.service.port"
    message: str
    suggestion: str = ""  # what was probably meant ("did you mean"), e.g. a full annotation key

    def __str__(self) -> str:
        obj = f"{self.namespace}/{self.name}" if self.namespace else self.name
        where = f" {self.field}" if self.field else ""
        return f"{self.severity} {self.kind} {obj}{where}: {self.message}"

    def sort_key(self) -> tuple[str, str, str, str, str, str]:
        return (self.namespace, self.name, self.kind, self.field, self.message, self.severity)


class TranslationResult(msgspec.Struct, frozen=True):
    snapshot: Snapshot
    diagnostics: tuple[Diagnostic, ...]  # sorted by (namespace, name, kind, field, message), no duplicates


class ObjRef(msgspec.Struct, frozen=True, order=True):
    """Names one Kubernetes object, for diagnostics."""

    kind: str
    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


_MAX_TEXT = 1000


def clean_text(text: str) -> str:
    """One printable line: control characters escaped, length capped (log-injection safe)."""
    if len(text) > _MAX_TEXT:
        text = text[: _MAX_TEXT - 3] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Sink:
    """Collects diagnostics during one translate() call (a local, never a global)."""

    def __init__(self) -> None:
        self._items: set[Diagnostic] = set()

    def add(self, severity: Severity, ref: ObjRef, field: str, message: str, suggestion: str = "") -> None:
        self._items.add(
            Diagnostic(
                severity,
                clean_text(ref.kind),
                clean_text(ref.namespace),
                clean_text(ref.name),
                clean_text(field),
                clean_text(message),
                clean_text(suggestion),
            )
        )

    def error(self, ref: ObjRef, field: str, message: str) -> None:
        self.add("error", ref, field, message)

    def warning(self, ref: ObjRef, field: str, message: str) -> None:
        self.add("warning", ref, field, message)

    def info(self, ref: ObjRef, field: str, message: str) -> None:
        self.add("info", ref, field, message)

    def extend(self, diagnostics: tuple[Diagnostic, ...] | list[Diagnostic]) -> None:
        self._items.update(diagnostics)

    def sorted(self) -> tuple[Diagnostic, ...]:
        return tuple(sorted(self._items, key=Diagnostic.sort_key))
