"""The ``nginx.ingress.kubernetes.io/*`` annotation table, parsed here once into typed values.

Theory of operation: every annotation key under ``PREFIX`` is looked up in two tables.
``IMPLEMENTED`` maps a key to the field of :class:`IngressAnnotations` (or of its nested
:class:`UpstreamSettings`) it sets and to a parser ``str -> value`` that raises
``ValueError`` with a short reason on a bad value (the default is then kept and a
warning names the annotation).  ``NOT_SUPPORTED`` lists the real ingress-nginx
annotation names we do not implement yet (an "info" diagnostic, so people see it).
Any other key under the prefix is a typo or an invented name: a "warning".

To implement an annotation: add a field (with the default meaning "not set") to
``IngressAnnotations``/``UpstreamSettings``, a parser, a row in ``IMPLEMENTED``, and
remove the key from ``NOT_SUPPORTED``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, cast

import msgspec

from fastingress.snapshot.schema import Protocol

PREFIX = "nginx.ingress.kubernetes.io/"


class UpstreamSettings(msgspec.Struct, frozen=True):
    """Per-Ingress settings that make an Upstream distinct (they go into its name hash)."""

    protocol: Protocol = "HTTP"
    host_override: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    send_timeout: float = 60.0
    # upstream TLS (HTTPS/GRPCS); new fields only enter the name hash when not default
    tls_verify: bool = False  # proxy-ssl-verify
    tls_secret: str | None = None  # proxy-ssl-secret "namespace/name" (its ca.crt)
    tls_server_name: str | None = None  # proxy-ssl-name
    tls_sni: bool = True  # proxy-ssl-server-name


class IngressAnnotations(msgspec.Struct, frozen=True):
    max_body_size: int | None = None  # None: GlobalSettings.max_body_size
    upstream: UpstreamSettings = UpstreamSettings()
    ssl_redirect: bool = True  # ssl-redirect (only matters for hosts with TLS)
    force_ssl_redirect: bool = False  # force-ssl-redirect (even without TLS of the host's own)
    ssl_passthrough: bool = False  # ssl-passthrough (needs --enable-ssl-passthrough)
    use_regex: bool = False  # use-regex: the host's paths are regular expressions
    rewrite_target: str | None = None  # rewrite-target (also makes the host's paths regexes)


# --- parsers: str -> value, ValueError(reason) on a bad value -------------------------

_SIZE_RE = re.compile(r"^([0-9]+)([kKmMgG]?)$")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SECONDS_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)s?$")
_VHOST_RE = re.compile(r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
_PROTOCOLS: tuple[str, ...] = ("HTTP", "HTTPS", "GRPC", "GRPCS", "H2C", "AUTO_HTTP", "FCGI")
_MAX_SECONDS = 86400.0 * 7


def parse_size(value: str) -> int:
    """nginx size syntax: "8", "20m", "1k", "1G"; "0" means unlimited."""
    match = _SIZE_RE.match(value.strip())
    if match is None:
        raise ValueError("expected a size like 8, 1k, 20m or 1g")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_seconds(value: str) -> float:
    """nginx time in seconds: "60" or "60s"; must be positive."""
    match = _SECONDS_RE.match(value.strip())
    if match is None:
        raise ValueError("expected seconds like 60 or 60s")
    seconds = float(match.group(1))
    if not 0 < seconds <= _MAX_SECONDS:
        raise ValueError("expected a positive number of seconds, at most one week")
    return seconds


def parse_protocol(value: str) -> Protocol:
    upper = value.strip().upper()
    if upper not in _PROTOCOLS:
        raise ValueError("expected one of " + ", ".join(_PROTOCOLS))
    return cast(Protocol, upper)


def parse_on_off(value: str) -> bool:
    """nginx flags: "on"/"off" (also "true"/"false")."""
    text = value.strip().lower()
    if text in ("on", "true"):
        return True
    if text in ("off", "false"):
        return False
    raise ValueError('expected "on" or "off"')


_SECRET_REF_RE = re.compile(r"^(?:[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def parse_secret_ref(value: str) -> str:
    """A Secret as "namespace/name" (or "name": the Ingress's namespace)."""
    text = value.strip()
    if not _SECRET_REF_RE.match(text):
        raise ValueError("expected namespace/name of a Secret")
    return text


def parse_server_name(value: str) -> str:
    text = value.strip().rstrip(".").lower()
    if not text or not _VHOST_RE.match(text) or ":" in text.strip("[]"):
        raise ValueError("expected a host name")
    return text


def parse_bool(value: str) -> bool:
    """ingress-nginx booleans: "true" / "false" (any case)."""
    text = value.strip().lower()
    if text == "true":
        return True
    if text == "false":
        return False
    raise ValueError('expected "true" or "false"')


_REWRITE_RE = re.compile(r"^[/$][^\s\x00-\x1f\x7f]*$")


def parse_rewrite_target(value: str) -> str:
    """A path template such as ``/$2`` or ``/api/$1?x=1`` (captures of the path regex)."""
    text = value.strip()
    if not _REWRITE_RE.match(text):
        raise ValueError("expected a path starting with / (or $1...), without spaces")
    return text


def parse_vhost(value: str) -> str:
    text = value.strip()
    if not _VHOST_RE.match(text):
        raise ValueError("expected a host name, optionally with :port")
    return text


# key -> (field path in IngressAnnotations, parser)
IMPLEMENTED: Mapping[str, tuple[str, Callable[[str], Any]]] = {
    "proxy-body-size": ("max_body_size", parse_size),
    "proxy-connect-timeout": ("upstream.connect_timeout", parse_seconds),
    "proxy-read-timeout": ("upstream.read_timeout", parse_seconds),
    "proxy-send-timeout": ("upstream.send_timeout", parse_seconds),
    "upstream-vhost": ("upstream.host_override", parse_vhost),
    "backend-protocol": ("upstream.protocol", parse_protocol),
    "ssl-redirect": ("ssl_redirect", parse_bool),
    "force-ssl-redirect": ("force_ssl_redirect", parse_bool),
    "ssl-passthrough": ("ssl_passthrough", parse_bool),
    "use-regex": ("use_regex", parse_bool),
    "rewrite-target": ("rewrite_target", parse_rewrite_target),
    "proxy-ssl-verify": ("upstream.tls_verify", parse_on_off),
    "proxy-ssl-secret": ("upstream.tls_secret", parse_secret_ref),
    "proxy-ssl-name": ("upstream.tls_server_name", parse_server_name),
    "proxy-ssl-server-name": ("upstream.tls_sni", parse_on_off),
}

# Real ingress-nginx annotations (docs/user-guide/nginx-configuration/annotations.md and
# earlier releases) that fastingress does not implement yet.
_NOT_SUPPORTED_NAMES = """
    affinity affinity-canary-behavior affinity-mode app-root
    auth-always-set-cookie auth-cache-duration auth-cache-key auth-keepalive
    auth-keepalive-requests auth-keepalive-share-vars auth-keepalive-timeout auth-method
    auth-proxy-set-headers auth-realm auth-request-redirect auth-response-headers auth-secret
    auth-secret-type auth-signin auth-signin-redirect-param auth-snippet auth-tls-error-page
    auth-tls-match-cn auth-tls-pass-certificate-to-upstream auth-tls-secret auth-tls-verify-client
    auth-tls-verify-depth auth-type auth-url
    canary canary-by-cookie canary-by-header canary-by-header-pattern canary-by-header-value
    canary-weight canary-weight-total
    client-body-buffer-size configuration-snippet connection-proxy-header
    cors-allow-credentials cors-allow-headers cors-allow-methods cors-allow-origin
    cors-expose-headers cors-max-age custom-headers custom-http-errors
    default-backend denylist-source-range allowlist-source-range whitelist-source-range
    disable-proxy-intercept-errors
    enable-access-log enable-cors enable-global-auth enable-influxdb enable-modsecurity
    enable-opentelemetry enable-opentracing enable-owasp-core-rules enable-rewrite-log
    from-to-www-redirect
    global-rate-limit global-rate-limit-ignored-cidrs global-rate-limit-key global-rate-limit-window
    grpc-backend http2-push-preload
    influxdb-host influxdb-measurement influxdb-port influxdb-server-name
    jaeger-collector-host jaeger-collector-port jaeger-endpoint jaeger-propagation-format
    jaeger-sampler-host jaeger-sampler-param jaeger-sampler-port jaeger-sampler-type
    jaeger-service-name
    limit-allowlist limit-burst-multiplier limit-connections limit-rate limit-rate-after
    limit-rpm limit-rps limit-whitelist load-balance
    lua-resty-waf lua-resty-waf-allow-unknown-content-types lua-resty-waf-debug
    lua-resty-waf-extra-rules lua-resty-waf-ignore-rulesets lua-resty-waf-process-multipart-body
    lua-resty-waf-score-threshold
    mirror-host mirror-request-body mirror-target mirror-uri
    modsecurity-snippet modsecurity-transaction-id
    opentelemetry-operation-name opentelemetry-trust-incoming-span
    opentracing-operation-name opentracing-trust-incoming-span
    permanent-redirect permanent-redirect-code preserve-trailing-slash
    proxy-buffer-size proxy-buffering proxy-buffers-number proxy-cookie-domain proxy-cookie-path
    proxy-http-version proxy-max-temp-file-size proxy-next-upstream proxy-next-upstream-timeout
    proxy-next-upstream-tries proxy-redirect-from proxy-redirect-to proxy-request-buffering
    proxy-ssl-ciphers proxy-ssl-location-only proxy-ssl-protocols proxy-ssl-verify-depth
    relative-redirects satisfy secure-backends secure-verify-ca-secret
    server-alias server-snippet service-upstream
    session-cookie-change-on-failure session-cookie-conditional-samesite-none
    session-cookie-domain session-cookie-expires session-cookie-hash session-cookie-max-age
    session-cookie-name session-cookie-partitioned session-cookie-path session-cookie-samesite
    session-cookie-secure
    ssl-ciphers ssl-prefer-server-ciphers stream-snippet
    temporal-redirect temporal-redirect-code
    upstream-hash-by upstream-hash-by-subset upstream-hash-by-subset-size
    x-forwarded-prefix
    zipkin-collector-host zipkin-collector-port zipkin-sample-rate zipkin-service-name
    """
NOT_SUPPORTED: frozenset[str] = frozenset(_NOT_SUPPORTED_NAMES.split())


class AnnotationFinding(msgspec.Struct, frozen=True):
    severity: str  # "warning" | "info"
    key: str  # the full annotation key
    message: str


def _set(result: IngressAnnotations, path: str, value: Any) -> IngressAnnotations:
    if path.startswith("upstream."):
        upstream = msgspec.structs.replace(result.upstream, **{path.removeprefix("upstream."): value})
        return msgspec.structs.replace(result, upstream=upstream)
    return msgspec.structs.replace(result, **{path: value})


def _as_text(value: object) -> str | None:
    """Annotation values are strings; a bare YAML number is accepted as its text."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def parse_annotations(
    annotations: Mapping[str, object],
) -> tuple[IngressAnnotations, list[AnnotationFinding]]:
    """Typed values of one Ingress's annotations, plus findings (never raises)."""
    result = IngressAnnotations()
    findings: list[AnnotationFinding] = []
    for key in sorted(annotations):
        if not key.startswith(PREFIX):
            continue
        short = key.removeprefix(PREFIX)
        row = IMPLEMENTED.get(short)
        if row is None:
            if short in NOT_SUPPORTED:
                findings.append(AnnotationFinding("info", key, "annotation not supported yet; ignored"))
            else:
                findings.append(AnnotationFinding("warning", key, "unknown annotation; ignored (typo?)"))
            continue
        path, parser = row
        text = _as_text(annotations[key])
        if text is None:
            findings.append(AnnotationFinding("warning", key, "value must be a string; default used"))
            continue
        try:
            value = parser(text)
        except ValueError as exc:
            shown = text if len(text) <= 64 else text[:64] + "..."
            findings.append(AnnotationFinding("warning", key, f"bad value {shown!r}: {exc}; default used"))
            continue
        result = _set(result, path, value)
    return result, findings
