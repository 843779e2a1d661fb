"""The annotation registry: every key a user can write under ``nginx.ingress.kubernetes.io/``
(or, with the same meaning, ``fastingress.io/``) and what fastingress does with it.

Theory of operation
-------------------
``REGISTRY`` maps each known key name (without its prefix) to a ``Key`` row:

* ``implemented``: ``parser`` turns the value into ``field`` of :class:`IngressAnnotations`
  (or of its nested :class:`UpstreamSettings`).  A bad value keeps the default with a
  warning, except on a ``guard`` row (a key that restricts access): then the Ingress fails
  closed, since serving it with the default would serve it open;
* ``closed``: a key that restricts access (auth, source ranges, client certificates) and
  is not implemented yet.  Every route of the Ingress (and its defaultBackend) answers
  503 naming the key, with an error diagnostic; ``--unsafe-fail-open`` serves it open;
* ``canary``: a canary Ingress never takes the main Ingress's place: its rules attach to the
  main Ingress's routes of the same host and path as an alternative backend
  (``core._merge``; its other ``canary-*`` keys are ``implemented`` rows);
* ``snippet``: raw nginx configuration is never executed; the Ingress is served without
  it (warning).  A snippet holding access rules (``deny``, ``auth_request``...) fails
  closed like a ``closed`` key;
* ``unsupported``: not implemented yet, ignored with a warning; ``inert``: no effect in
  fastingress (nginx logging, tracing and buffering knobs), an info line; ``removed``:
  gone from ingress-nginx, a warning naming its replacement.

Any other key under our prefixes is a warning with "did you mean" (the nearest known
name, by ``difflib``); a known name under another prefix (``kubernetes.io/proxy-body-size``,
``traefik.ingress.kubernetes.io/rewrite-target``) or under a prefix that looks like a typo
of ours (``ingress.kubernetes.io/``, ``nginx.ingress.kubernets.io/``) is a warning naming
the key we read.  When the key it resembles restricts access, the Ingress fails closed:
a typo must never turn protection off.

To implement a key (issue 9): add a field to ``IngressAnnotations`` (its default meaning
"not set"), a parser, and change its row from ``CLOSED``/``UNSUPPORTED`` to
``implemented(field, parser)`` (``guard=True`` for keys that restrict access).  A guard
whose Secret is missing must fail closed too: see ``core._Emitter.closed_reasons``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal, NamedTuple, cast

import msgspec

from fastingress.snapshot.schema import Protocol
from fastingress.translate import policy_access as _access
from fastingress.translate import policy_extauth as extauth
from fastingress.translate import policy_http as http
from fastingress.translate import policy_selection as sel
from fastingress.translate.policy_http import HttpAnnotations
from fastingress.translate.policy_limits import DEFAULT_BURST, parse_kilobytes, parse_limit, parse_multiplier
from fastingress.translate.policy_selection import BalancingSettings, CanaryRules, NextUpstreamSettings

PREFIX = "nginx.ingress.kubernetes.io/"
FASTINGRESS_PREFIX = "fastingress.io/"
PREFIXES = (PREFIX, FASTINGRESS_PREFIX)
# Prefixes that are not ours but were once read by ingress-nginx (and Traefik 1) under the
# same names: always worth a "did you mean".
LEGACY_PREFIXES = frozenset({"ingress.kubernetes.io/"})
_NEAR_PREFIX = 0.88  # difflib ratio above which a prefix is taken for a typo of ours
_NEAR_NAME = 0.6  # difflib cutoff for "did you mean" on names and values


def nearest(word: str, choices: Collection[str], cutoff: float = _NEAR_NAME) -> str:
    """The choice closest to ``word`` (difflib), or "" when none is close."""
    by_lower = {choice.lower(): choice for choice in choices}
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[found[0]] if found else ""


class BadValue(ValueError):
    """A parser's refusal: a short reason and, when one is close, the value meant."""

    def __init__(self, reason: str, suggestion: str = "") -> None:
        super().__init__(reason)
        self.suggestion = suggestion


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
    tls_verify_depth: int = 1  # proxy-ssl-verify-depth (with proxy-ssl-verify on)
    # -- selection (issue 9): how the upstream's endpoints are chosen --------------------
    balancing: BalancingSettings = BalancingSettings()  # load-balance, upstream-hash-by, affinity
    service_upstream: bool = False  # service-upstream: the Service's ClusterIP as the one endpoint


class IngressAnnotations(msgspec.Struct, frozen=True):
    max_body_size: int | None = None  # None: GlobalSettings.max_body_size
    upstream: UpstreamSettings = UpstreamSettings()
    ssl_redirect: bool = True  # ssl-redirect (only matters for hosts with TLS)
    force_ssl_redirect: bool = False  # force-ssl-redirect (even without TLS of the host's own)
    ssl_passthrough: bool = False  # ssl-passthrough (needs --enable-ssl-passthrough)
    use_regex: bool = False  # use-regex: the host's paths are regular expressions
    rewrite_target: str | None = None  # rewrite-target (also makes the host's paths regexes)
    # Fail closed: (annotation key, why) for each access-guarding key this Ingress carries
    # that is not honoured; non-empty means every route of the Ingress answers 503.
    closed: tuple[tuple[str, str], ...] = ()
    canary: bool = False  # canary: "true" (its rules attach to the main Ingress's routes)
    x_forwarded_prefix: str | None = None  # x-forwarded-prefix: X-Forwarded-Prefix sent upstream
    # -- selection (issue 9) ---------------------------------------------------------------
    canary_rules: CanaryRules = CanaryRules()  # canary-*: how a canary Ingress takes requests
    next_upstream: NextUpstreamSettings = NextUpstreamSettings()  # proxy-next-upstream*
    http: HttpAnnotations = HttpAnnotations()  # area http (issue 9): CORS, redirects, headers, errors
    # -- access (issue 9; see policy_access): None means "not set" --------------------------
    allowlist_source_range: tuple[str, ...] | None = None
    whitelist_source_range: tuple[str, ...] | None = None  # the old name of allowlist-source-range
    denylist_source_range: tuple[str, ...] | None = None
    auth_type: str | None = None  # "basic" | "digest"
    auth_secret: str | None = None  # "namespace/name" or "name"
    auth_secret_type: str | None = None  # "auth-file" (default) | "auth-map"
    auth_realm: str | None = None
    auth_tls_secret: str | None = None
    auth_tls_verify_client: str | None = None  # on (default), off, optional, optional_no_ca
    auth_tls_verify_depth: int | None = None
    auth_tls_error_page: str | None = None
    auth_tls_pass_certificate: bool | None = None
    auth_tls_match_cn: str | None = None
    extauth: extauth.ExtAuthAnnotations = extauth.ExtAuthAnnotations()  # auth-url and companions
    # -- limits (issue 9, translate/policy_limits.py) --
    limit_rps: int = 0  # limit-rps (0: none)
    limit_rpm: int = 0  # limit-rpm
    limit_connections: int = 0  # limit-connections
    limit_burst_multiplier: int = DEFAULT_BURST  # limit-burst-multiplier
    limit_allowlist: tuple[str, ...] | None = None  # limit-allowlist: CIDRs
    limit_whitelist: tuple[str, ...] | None = None  # limit-whitelist: its alias (when it is absent)
    limit_rate: int | None = None  # limit-rate in bytes/s (None: the ConfigMap's)
    limit_rate_after: int | None = None  # limit-rate-after in bytes
    # -- issue 9, area configmap ----------------------------------------------------------
    enable_global_auth: bool = True  # enable-global-auth: "false" exempts it from global-auth-url


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
        raise BadValue("expected one of " + ", ".join(_PROTOCOLS), nearest(upper, _PROTOCOLS))
    return cast(Protocol, upper)


def parse_on_off(value: str) -> bool:
    """nginx flags: "on"/"off" (also "true"/"false")."""
    text = value.strip().lower()
    if text in ("on", "true"):
        return True
    if text in ("off", "false"):
        return False
    raise BadValue('expected "on" or "off"', nearest(text, ("on", "off")))


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
    raise BadValue('expected "true" or "false"', nearest(text, ("true", "false")))


_REWRITE_RE = re.compile(r"^[/$][^\s\x00-\x1f\x7f]*$")


def parse_rewrite_target(value: str) -> str:
    """A path template such as ``/$2`` or ``/api/$1?x=1`` (captures of the path regex)."""
    text = value.strip()
    if not _REWRITE_RE.match(text):
        raise ValueError("expected a path starting with / (or $1...), without spaces")
    return text


_HEADER_VALUE_RE = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$")


def parse_header_value(value: str) -> str:
    """A value to send in a header: visible ASCII (inner spaces allowed), not empty."""
    text = value.strip()
    if not _HEADER_VALUE_RE.match(text):
        raise ValueError("expected a non-empty header value of visible ASCII characters")
    return text


def parse_vhost(value: str) -> str:
    text = value.strip()
    if not _VHOST_RE.match(text):
        raise ValueError("expected a host name, optionally with :port")
    return text


Status = Literal["implemented", "closed", "canary", "snippet", "unsupported", "inert", "removed"]


class Key(NamedTuple):
    """How one annotation name is handled (see the module docstring)."""

    status: Status
    field: str = ""  # implemented: the IngressAnnotations field ("upstream.x" for nested)
    parser: Callable[[str], Any] | None = None  # implemented: str -> value, ValueError if bad
    guard: bool = False  # restricts access: anything short of honouring it fails closed
    note: str = ""  # shown in the diagnostic (the replacement of a removed key, ...)
    detail: str = ""  # removed: why, and what fastingress does instead


def implemented(field: str, parser: Callable[[str], Any], *, guard: bool = False) -> Key:
    return Key("implemented", field, parser, guard)


CLOSED = Key("closed", guard=True)
CANARY = Key("canary", parser=parse_bool)
SNIPPET = Key("snippet")
UNSUPPORTED = Key("unsupported")
INERT = Key("inert")


def unsupported(note: str) -> Key:
    return Key("unsupported", note=note)


def removed(replacement: str, detail: str = "") -> Key:
    return Key("removed", note=replacement, detail=detail)


def _rows(names: str, row: Key) -> dict[str, Key]:
    """One row for each whitespace-separated name."""
    return dict.fromkeys(names.split(), row)


_ROWS: dict[str, Key] = {
    # -- implemented ----------------------------------------------------------------------
    "proxy-body-size": implemented("max_body_size", parse_size),
    "proxy-connect-timeout": implemented("upstream.connect_timeout", parse_seconds),
    "proxy-read-timeout": implemented("upstream.read_timeout", parse_seconds),
    "proxy-send-timeout": implemented("upstream.send_timeout", parse_seconds),
    "upstream-vhost": implemented("upstream.host_override", parse_vhost),
    "backend-protocol": implemented("upstream.protocol", parse_protocol),
    "ssl-redirect": implemented("ssl_redirect", parse_bool),
    "force-ssl-redirect": implemented("force_ssl_redirect", parse_bool),
    "ssl-passthrough": implemented("ssl_passthrough", parse_bool),
    "use-regex": implemented("use_regex", parse_bool),
    "rewrite-target": implemented("rewrite_target", parse_rewrite_target),
    "proxy-ssl-verify": implemented("upstream.tls_verify", parse_on_off),
    "proxy-ssl-verify-depth": implemented("upstream.tls_verify_depth", _access.parse_verify_depth),
    "proxy-ssl-secret": implemented("upstream.tls_secret", parse_secret_ref),
    "proxy-ssl-name": implemented("upstream.tls_server_name", parse_server_name),
    "proxy-ssl-server-name": implemented("upstream.tls_sni", parse_on_off),
    "x-forwarded-prefix": implemented("x_forwarded_prefix", parse_header_value),
    "enable-global-auth": implemented("enable_global_auth", parse_bool),  # see translate.configmap
    # -- area http (issue 9): fastingress/translate/policy_http.py ---------------------------
    "enable-cors": implemented("http.enable_cors", parse_bool),
    "cors-allow-origin": implemented("http.cors_allow_origin", http.parse_cors_origins),
    "cors-allow-methods": implemented("http.cors_allow_methods", http.parse_cors_methods),
    "cors-allow-headers": implemented("http.cors_allow_headers", http.parse_cors_headers),
    "cors-expose-headers": implemented("http.cors_expose_headers", http.parse_cors_expose),
    "cors-allow-credentials": implemented("http.cors_allow_credentials", parse_bool),
    "cors-max-age": implemented("http.cors_max_age", http.parse_max_age),
    "permanent-redirect": implemented("http.permanent_redirect", http.parse_redirect_url),
    "permanent-redirect-code": implemented("http.permanent_redirect_code", http.parse_permanent_code),
    "temporal-redirect": implemented("http.temporal_redirect", http.parse_redirect_url),
    "temporal-redirect-code": implemented("http.temporal_redirect_code", http.parse_temporal_code),
    "app-root": implemented("http.app_root", http.parse_app_root),
    "from-to-www-redirect": implemented("http.from_to_www_redirect", parse_bool),
    "server-alias": implemented("http.server_alias", http.parse_server_alias),
    "custom-headers": implemented("http.custom_headers", http.parse_object_ref),
    "proxy-redirect-from": implemented("http.proxy_redirect_from", http.parse_redirect_rewrite),
    "proxy-redirect-to": implemented("http.proxy_redirect_to", http.parse_redirect_rewrite),
    "proxy-cookie-domain": implemented("http.proxy_cookie_domain", http.parse_cookie_rewrite),
    "proxy-cookie-path": implemented("http.proxy_cookie_path", http.parse_cookie_rewrite),
    "connection-proxy-header": implemented("http.connection_proxy_header", http.parse_connection_header),
    "proxy-http-version": implemented("http.proxy_http_version", http.parse_http_version),
    "custom-http-errors": implemented("http.custom_http_errors", http.parse_status_codes),
    "default-backend": implemented("http.default_backend", http.parse_service_name),
    "disable-proxy-intercept-errors": implemented("http.disable_proxy_intercept_errors", parse_bool),
    # -- access (issue 9, policy_access): a bad value fails the Ingress closed ----------------
    "allowlist-source-range": implemented("allowlist_source_range", _access.parse_cidrs, guard=True),
    "whitelist-source-range": implemented("whitelist_source_range", _access.parse_cidrs, guard=True),
    "denylist-source-range": implemented("denylist_source_range", _access.parse_cidrs, guard=True),
    "auth-type": implemented("auth_type", _access.parse_auth_type, guard=True),
    "auth-secret": implemented("auth_secret", parse_secret_ref, guard=True),
    "auth-secret-type": implemented("auth_secret_type", _access.parse_auth_secret_type, guard=True),
    "auth-realm": implemented("auth_realm", _access.parse_realm, guard=True),
    "auth-tls-secret": implemented("auth_tls_secret", parse_secret_ref, guard=True),
    "auth-tls-verify-client": implemented("auth_tls_verify_client", _access.parse_verify_client, guard=True),
    "auth-tls-verify-depth": implemented("auth_tls_verify_depth", _access.parse_verify_depth, guard=True),
    "auth-tls-error-page": implemented("auth_tls_error_page", _access.parse_error_page, guard=True),
    "auth-tls-pass-certificate-to-upstream": implemented(
        "auth_tls_pass_certificate", parse_bool, guard=True
    ),
    "auth-tls-match-cn": implemented("auth_tls_match_cn", _access.parse_match_cn, guard=True),
    # limits: a bad rps/rpm/connections/allowlist rejects the Ingress in ingress-nginx (guards)
    "limit-rps": implemented("limit_rps", parse_limit, guard=True),
    "limit-rpm": implemented("limit_rpm", parse_limit, guard=True),
    "limit-connections": implemented("limit_connections", parse_limit, guard=True),
    "limit-allowlist": implemented("limit_allowlist", _access.parse_cidrs, guard=True),
    "limit-whitelist": implemented("limit_whitelist", _access.parse_cidrs, guard=True),
    "limit-burst-multiplier": implemented("limit_burst_multiplier", parse_multiplier),
    "limit-rate": implemented("limit_rate", parse_kilobytes),
    "limit-rate-after": implemented("limit_rate_after", parse_kilobytes),
    # -- external auth (translate/policy_extauth.py) ------------------------------------------
    "auth-url": implemented("extauth.url", extauth.parse_auth_url, guard=True),
    "auth-method": implemented("extauth.method", extauth.parse_auth_method, guard=True),
    "auth-signin": implemented("extauth.signin", extauth.parse_auth_signin, guard=True),
    "auth-signin-redirect-param": implemented(
        "extauth.signin_redirect_param", extauth.parse_redirect_param, guard=True
    ),
    "auth-response-headers": implemented(
        "extauth.response_headers", extauth.parse_response_headers, guard=True
    ),
    "auth-request-redirect": implemented(
        "extauth.request_redirect", extauth.parse_request_redirect, guard=True
    ),
    "auth-cache-key": implemented("extauth.cache_key", extauth.parse_cache_key, guard=True),
    "auth-cache-duration": implemented("extauth.cache_duration", extauth.parse_cache_duration, guard=True),
    "auth-proxy-set-headers": implemented(
        "extauth.proxy_set_headers", extauth.parse_configmap_ref, guard=True
    ),
    "auth-always-set-cookie": implemented("extauth.always_set_cookie", extauth.parse_go_bool, guard=True),
    "auth-keepalive": implemented("extauth.keepalive", extauth.parse_int),
    "auth-keepalive-requests": implemented("extauth.keepalive_requests", extauth.parse_int),
    "auth-keepalive-timeout": implemented("extauth.keepalive_timeout", extauth.parse_int_seconds),
    "auth-keepalive-share-vars": INERT,  # nginx variables shared with a Lua subrequest: no such thing here
    # -- selection (issue 9): canaries, balancing, affinity, retries --------------------------
    "canary": CANARY,  # a canary Ingress attaches to the main one's routes (core._merge)
    "canary-by-header": implemented("canary_rules.header", sel.parse_header_name),
    "canary-by-header-value": implemented("canary_rules.header_value", sel.parse_header_value),
    "canary-by-header-pattern": implemented("canary_rules.header_pattern", sel.parse_pattern),
    "canary-by-cookie": implemented("canary_rules.cookie", sel.parse_cookie_name),
    "canary-weight": implemented("canary_rules.weight", sel.parse_weight),
    "canary-weight-total": implemented("canary_rules.weight_total", sel.parse_weight_total),
    "affinity-canary-behavior": implemented("canary_rules.behavior", sel.parse_canary_behavior),
    "load-balance": implemented("upstream.balancing.load_balance", sel.parse_load_balance),
    "upstream-hash-by": implemented("upstream.balancing.hash_by", sel.parse_hash_by),
    "upstream-hash-by-subset": implemented("upstream.balancing.hash_subset", sel.parse_true_false),
    "upstream-hash-by-subset-size": implemented("upstream.balancing.hash_subset_size", sel.parse_subset_size),
    "affinity": implemented("upstream.balancing.affinity", sel.parse_affinity),
    "affinity-mode": implemented("upstream.balancing.affinity_mode", sel.parse_affinity_mode),
    "session-cookie-name": implemented("upstream.balancing.cookie_name", sel.parse_cookie_name),
    "session-cookie-path": implemented("upstream.balancing.cookie_path", sel.parse_cookie_path),
    "session-cookie-domain": implemented("upstream.balancing.cookie_domain", sel.parse_cookie_domain),
    "session-cookie-max-age": implemented("upstream.balancing.cookie_max_age", sel.parse_cookie_seconds),
    "session-cookie-expires": implemented("upstream.balancing.cookie_expires", sel.parse_cookie_seconds),
    "session-cookie-secure": implemented("upstream.balancing.cookie_secure", sel.parse_true_false),
    "session-cookie-samesite": implemented("upstream.balancing.cookie_samesite", sel.parse_samesite),
    "session-cookie-conditional-samesite-none": implemented(
        "upstream.balancing.cookie_conditional_samesite_none", sel.parse_true_false),
    "session-cookie-change-on-failure": implemented(
        "upstream.balancing.cookie_change_on_failure", sel.parse_true_false),
    "session-cookie-partitioned": implemented("upstream.balancing.cookie_partitioned", sel.parse_true_false),
    "service-upstream": implemented("upstream.service_upstream", sel.parse_true_false),
    "proxy-next-upstream": implemented("next_upstream.conditions", sel.parse_next_upstream),
    "proxy-next-upstream-tries": implemented("next_upstream.tries", sel.parse_tries),
    "proxy-next-upstream-timeout": implemented("next_upstream.timeout", sel.parse_timeout),
    # -- raw nginx configuration: never executed ----------------------------------------------
    **_rows(
        "configuration-snippet server-snippet auth-snippet stream-snippet modsecurity-snippet",
        SNIPPET,
    ),
    # -- not implemented yet: ignored with a warning --------------------------------------------
    **_rows(
        """
        mirror-host mirror-request-body mirror-target mirror-uri
        preserve-trailing-slash
        proxy-ssl-ciphers proxy-ssl-location-only
        proxy-ssl-protocols relative-redirects satisfy
        ssl-ciphers ssl-prefer-server-ciphers
        """,
        UNSUPPORTED,
    ),
    **_rows("use-port-in-redirects", UNSUPPORTED),

    **_rows(
        "fastcgi-index fastcgi-params-configmap",
        unsupported("FastCGI backends (backend-protocol FCGI) are not supported"),
    ),
    **_rows(
        "enable-modsecurity enable-owasp-core-rules modsecurity-transaction-id",
        unsupported("there is no web application firewall in fastingress; requests are not inspected "
                    "(ingress-nginx's default mode, DetectionOnly, only logs; a `modsecurity-snippet` "
                    "with `SecRuleEngine On` fails closed)"),
    ),
    # -- nginx internals with no effect here ---------------------------------------------------
    **_rows(
        """
        enable-access-log enable-rewrite-log
        enable-opentelemetry enable-opentracing opentelemetry-operation-name
        opentelemetry-trust-incoming-span opentracing-operation-name opentracing-trust-incoming-span
        jaeger-collector-host jaeger-collector-port jaeger-endpoint jaeger-propagation-format
        jaeger-sampler-host jaeger-sampler-param jaeger-sampler-port jaeger-sampler-type
        jaeger-service-name zipkin-collector-host zipkin-collector-port zipkin-sample-rate
        zipkin-service-name http2-push-preload
        """,
        INERT,
    ),
    # -- buffering (area http): fastingress streams bodies both ways, whatever these say ------
    **_rows(
        """
        client-body-buffer-size proxy-buffering proxy-buffer-size proxy-buffers-number
        proxy-max-temp-file-size proxy-request-buffering proxy-busy-buffers-size
        """,
        Key("inert", note=(
            "fastingress streams request and response bodies as they come (like proxy-buffering "
            "and proxy-request-buffering off), never buffering them to memory or disk; "
            "proxy-body-size is still enforced"
        )),
    ),
    # -- removed from ingress-nginx -------------------------------------------------------------
    "secure-backends": removed("backend-protocol"),
    "grpc-backend": removed("backend-protocol"),
    "secure-verify-ca-secret": removed("proxy-ssl-secret"),
    **_rows(
        "global-rate-limit global-rate-limit-window global-rate-limit-key global-rate-limit-ignored-cidrs",
        removed("limit-rps", "in v1.12 (it counted in a memcached shared by the replicas, and did "
                "nothing without one); not enforced: limit-rps and limit-rpm count per replica, over "
                "all its workers"),
    ),
    "session-cookie-hash": removed(""),
    "add-base-url": removed(""),
    "base-url-scheme": removed(""),
    **_rows(
        """
        enable-influxdb influxdb-host influxdb-measurement influxdb-port influxdb-server-name
        lua-resty-waf lua-resty-waf-allow-unknown-content-types lua-resty-waf-debug
        lua-resty-waf-extra-rules lua-resty-waf-ignore-rulesets lua-resty-waf-process-multipart-body
        lua-resty-waf-score-threshold
        """,
        removed(""),
    ),
}
REGISTRY: Mapping[str, Key] = _ROWS
NAMES: tuple[str, ...] = tuple(sorted(REGISTRY))

# Views kept for callers of the earlier two-table design.
IMPLEMENTED: Mapping[str, tuple[str, Callable[[str], Any]]] = {
    name: (row.field, row.parser)
    for name, row in REGISTRY.items()
    if row.status == "implemented" and row.parser is not None
}
NOT_SUPPORTED: frozenset[str] = frozenset(
    name for name, row in REGISTRY.items() if row.status not in ("implemented", "canary")
)
GUARDS: frozenset[str] = frozenset(name for name, row in REGISTRY.items() if row.guard)


def status_of(name: str) -> Status | None:
    """The registry status of a key name (without prefix), or None if unknown."""
    row = REGISTRY.get(name)
    return row.status if row is not None else None


# nginx directives that restrict access: a snippet holding one fails closed.
_ACCESS_DIRECTIVE = re.compile(
    r"(?:^|[;{}\s])(allow|deny|auth_basic|auth_basic_user_file|auth_request|auth_jwt|satisfy"
    r"|ssl_verify_client)\s|(?:^|[;{}\s])return\s+40[13]\b"
    # ModSecurity in blocking mode (ingress-nginx's default is DetectionOnly: it only logs)
    r"|(?:^|[;{}\s])((?i:SecRuleEngine)\s+(?i:On))\b"
)


def access_directive(snippet: str) -> str | None:
    """The first access-restricting nginx directive in a snippet, or None."""
    match = _ACCESS_DIRECTIVE.search(snippet)
    if match is None:
        return None
    return match.group(1) or match.group(2) or "return 403"


class AnnotationFinding(msgspec.Struct, frozen=True):
    severity: str  # "error" | "warning" | "info"
    key: str  # the full annotation key
    message: str
    suggestion: str = ""  # the key (or value) probably meant, for "did you mean"


def _set(result: Any, path: str, value: Any) -> Any:
    """``result`` with the field at ``path`` ("x", "upstream.x", "upstream.balancing.x") set."""
    head, dot, rest = path.partition(".")
    if dot:
        value = _set(getattr(result, head), rest, value)
    return msgspec.structs.replace(result, **{head: value})


def _as_text(value: object) -> str | None:
    """Annotation values are strings; a bare YAML number is accepted as its text."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _shown(text: str) -> str:
    return repr(text if len(text) <= 64 else text[:64] + "...")


class _Parse:
    """State of one ``parse_annotations`` call."""

    def __init__(self, fail_open: bool, defaults: IngressAnnotations | None = None) -> None:
        self.fail_open = fail_open
        self.result = defaults if defaults is not None else IngressAnnotations()
        self.findings: list[AnnotationFinding] = []
        self.closed: list[tuple[str, str]] = []
        self.bad: list[str] = []  # names whose value could not be used

    def add(self, severity: str, key: str, what: str, tail: str = "", suggestion: str = "") -> None:
        """One finding: ``what`` (did you mean ``suggestion``?); ``tail``."""
        text = what + (f" (did you mean `{suggestion}`?)" if suggestion else "")
        text += f"; {tail}" if tail else ""
        self.findings.append(AnnotationFinding(severity, key, text, suggestion))

    def close(self, key: str, why: str, what: str, suggestion: str = "") -> None:
        """An access guard that is not honoured: fail closed (or open, if told to)."""
        self.closed.append((key, why))
        if self.fail_open:
            tail = "served WITHOUT this protection because of --unsafe-fail-open"
        else:
            tail = "every path of this Ingress answers 503 (fail closed)"
        self.add("error", key, what, tail, suggestion)

    # -- keys we do not read -------------------------------------------------------------

    def unknown(self, key: str, prefix: str, name: str) -> None:
        meant = nearest(name, NAMES)
        suggestion = prefix + meant if meant else ""
        if meant in GUARDS:
            what = "unknown annotation that resembles an access control"
            self.close(key, "is not a known annotation", what, suggestion)
        else:
            self.add("warning", key, "unknown annotation", "ignored", suggestion)

    def foreign(self, key: str, prefix: str, name: str) -> None:
        """A key under a prefix that is not ours: a warning when it looks meant for us."""
        bare = prefix.rstrip("/")
        near = prefix in LEGACY_PREFIXES or any(
            difflib.SequenceMatcher(None, bare, ours.rstrip("/")).ratio() >= _NEAR_PREFIX for ours in PREFIXES
        )
        if name not in REGISTRY and not near:
            return
        meant = name if name in REGISTRY else nearest(name, NAMES)
        suggestion = PREFIX + meant if meant else ""
        what = (
            f"the prefix `{prefix}` is not read by fastingress "
            f"(annotations are `{PREFIX}*` or `{FASTINGRESS_PREFIX}*`)"
        )
        if meant in GUARDS:
            self.close(key, "has a prefix fastingress does not read", what, suggestion)
        else:
            self.add("warning", key, what, "ignored", suggestion or PREFIX)

    # -- keys we know --------------------------------------------------------------------

    def known(self, key: str, name: str, raw: object) -> None:
        row = REGISTRY[name]
        status = row.status
        if status == "implemented":
            self.implemented(key, row, raw)
        elif status == "closed":
            self.close(key, "is not supported", f"`{name}` restricts access and is not implemented yet")
        elif status == "canary":
            self.canary(key, name, raw)
        elif status == "snippet":
            self.snippet(key, raw)
        elif status == "inert":
            self.add("info", key, "has no effect in fastingress", row.note or "ignored")
        elif status == "removed":
            replacement = PREFIX + row.note if row.note else ""
            what = "removed from ingress-nginx" + (f" {row.detail}" if row.detail else "")
            self.add("warning", key, what, "ignored", replacement)
        else:
            note = f" ({row.note})" if row.note else ""
            self.add("warning", key, f"not implemented yet{note}", "ignored")

    def implemented(self, key: str, row: Key, raw: object) -> None:
        assert row.parser is not None
        text = _as_text(raw)
        if text is None:
            self.bad.append(key.rpartition("/")[2])
            if row.guard:
                self.close(key, "has an invalid value", "value must be a string")
            else:
                self.add("warning", key, "value must be a string", "default used")
            return
        try:
            value = row.parser(text)
        except ValueError as exc:
            self.bad.append(key.rpartition("/")[2])
            suggestion = str(getattr(exc, "suggestion", ""))  # BadValue, policy_<area>.Refused
            if hasattr(exc, "partial") and not row.guard:  # policy_<area>.PartialValue: keep the rest
                self.result = _set(self.result, row.field, exc.partial)
                self.add("warning", key, f"bad value {_shown(text)}: {exc}", "", suggestion)
                return
            if row.guard:
                self.close(key, "has an invalid value", f"bad value {_shown(text)}: {exc}", suggestion)
            else:
                self.add("warning", key, f"bad value {_shown(text)}: {exc}", "default used", suggestion)
            return
        self.result = _set(self.result, row.field, value)

    def canary(self, key: str, name: str, raw: object) -> None:
        if name != "canary":
            return  # judged with the canary key itself (see finish)
        text = _as_text(raw)
        if isinstance(raw, bool):  # an unquoted YAML true/false: the intent is plain
            text = "true" if raw else "false"
        try:
            wanted = parse_bool(text if text is not None else "")
        except BadValue as exc:
            self.result = msgspec.structs.replace(self.result, canary=True)
            self.bad.append("canary")
            self.add(
                "warning", key, f"bad value {_shown(text or '')}: {exc}",
                "taken as a canary that takes no requests, so the main Ingress keeps all of the traffic",
                exc.suggestion,
            )
            return
        if wanted:
            self.result = msgspec.structs.replace(self.result, canary=True)

    def selection(self, chosen: Mapping[str, tuple[str, object]]) -> None:
        """Cross-key checks of the selection area (``policy_selection.settle``), and what a canary
        Ingress ignores (ingress-nginx: all but the canary, balancing and affinity keys)."""
        result = self.result
        written = frozenset(chosen)
        is_canary = result.canary
        balancing, rules, findings = sel.settle(
            result.upstream.balancing, result.canary_rules, written, is_canary=is_canary,
            use_regex=not is_canary and (result.use_regex or result.rewrite_target is not None),
        )
        for severity, name, message in findings:
            if name in chosen:
                self.add(severity, chosen[name][0], message)
        if not is_canary:
            for name in sorted(written):
                if name.startswith("canary-"):
                    self.add("warning", chosen[name][0], f'has no effect without `{PREFIX}canary: "true"`',
                             "ignored")
        else:
            instead = "this canary takes no requests: the main Ingress keeps all of the traffic"
            tails = ("every path of this Ingress answers 503 (fail closed)",
                     "served WITHOUT this protection because of --unsafe-fail-open")
            for tail in tails:
                self.findings = [msgspec.structs.replace(f, message=f.message.replace(tail, instead))
                                 for f in self.findings]
            bad = tuple(sorted(n for n in self.bad if n == "canary" or n.startswith("canary-")))
            rules = msgspec.structs.replace(rules, invalid=bad)
            if any(n != "canary" for n in bad):
                self.add("warning", chosen["canary"][0], "this canary takes no requests: "
                         + ", ".join(n for n in bad if n != "canary") + " has an unusable value; "
                         "the main Ingress keeps all of the traffic")
            for name in sorted(written - sel.CANARY_OWN):
                if REGISTRY[name].status == "implemented":
                    self.add("info", chosen[name][0], "ignored on a canary Ingress: the main Ingress's "
                             "settings apply to its requests (as in ingress-nginx)")
        if result.upstream.protocol in ("GRPC", "GRPCS", "H2C"):
            for name in sorted(written.intersection({"proxy-next-upstream", "proxy-next-upstream-tries",
                                                     "proxy-next-upstream-timeout"})):
                self.add("warning", chosen[name][0], "not applied to HTTP/2 and gRPC upstreams yet: a failed "
                         "connect is tried once more on another endpoint, nothing else is retried")
        upstream = msgspec.structs.replace(result.upstream, balancing=balancing)
        self.result = msgspec.structs.replace(result, upstream=upstream, canary_rules=rules)

    def snippet(self, key: str, raw: object) -> None:
        text = _as_text(raw) or ""
        directive = access_directive(text)
        if directive is not None:
            self.close(
                key, "holds access rules that are never executed",
                f"snippets are never executed, and this one restricts access (`{directive}`)",
            )
            return
        self.add("warning", key, "snippets are never executed", "the Ingress is served without this one")

    def finish(
        self, chosen: Mapping[str, tuple[str, object]]
    ) -> tuple[IngressAnnotations, list[AnnotationFinding]]:
        self.selection(chosen)
        if self.closed:
            self.result = msgspec.structs.replace(self.result, closed=tuple(sorted(self.closed)))
        return self.result, sorted(self.findings, key=lambda f: (f.key, f.message))


def _collect(annotations: Mapping[str, object], state: _Parse) -> dict[str, tuple[str, object]]:
    """Our keys by name (``fastingress.io/`` wins over ``nginx.ingress.kubernetes.io/``);
    findings for foreign, unknown and conflicting keys."""
    chosen: dict[str, tuple[str, object]] = {}
    for key in sorted(annotations):
        prefix, slash, name = key.rpartition("/")
        if not slash:
            continue
        prefix += "/"
        if prefix not in PREFIXES:
            state.foreign(key, prefix, name)
            continue
        if name not in REGISTRY:
            state.unknown(key, prefix, name)
            continue
        value = annotations[key]
        other = chosen.get(name)
        if other is None:
            chosen[name] = (key, value)
            continue
        mine, theirs = ((key, value), other) if prefix == FASTINGRESS_PREFIX else (other, (key, value))
        chosen[name] = mine
        if mine[1] != theirs[1]:
            state.add("warning", theirs[0], f"overridden by `{mine[0]}`", "ignored")
    return chosen


def parse_annotations(
    annotations: Mapping[str, object], *, fail_open: bool = False, defaults: IngressAnnotations | None = None
) -> tuple[IngressAnnotations, list[AnnotationFinding]]:
    """Typed values of one Ingress's annotations, plus findings (never raises).

    ``fail_open`` (``--unsafe-fail-open``) only changes what the findings say: the caller
    decides whether ``closed`` routes answer 503.  ``defaults``: the values of keys that are
    not set (the controller ConfigMap's, e.g. ``ssl-redirect``, ``proxy-read-timeout``)."""
    state = _Parse(fail_open, defaults)
    chosen = _collect(annotations, state)
    for name in sorted(chosen):
        key, raw = chosen[name]
        state.known(key, name, raw)
    for key, what, tail in http.findings(state.result.http, {name: chosen[name][0] for name in chosen}):
        state.add("warning", key, what, tail)
    return state.finish(chosen)
