"""The ingress-nginx controller ConfigMap (``--configmap NAMESPACE/NAME``): its keys, each one
honoured, inert or refused, never silent.  Pure.

Theory of operation
-------------------
``REGISTRY`` maps every key ingress-nginx's ConfigMap knows (its docs' table, its
``config.go``, and keys it has removed) to a ``Row``:

* ``implemented``: ``parser`` turns the text into a value that ``setter`` files into the
  translation options: a ``GlobalSettings`` field (``settings.x``: the data plane reads it),
  or a default of the annotations (``defaults.x`` / ``defaults.upstream.x``: ``ssl-redirect``,
  ``proxy-read-timeout``... an Ingress's own annotation still wins, as in ingress-nginx);
* ``closed``: restricts access and is not implemented (``global-auth-url``): every route
  answers 503 naming it (fail closed), unless ``--unsafe-fail-open``;
* ``snippet``: raw nginx configuration, never executed (warning); one holding access rules
  (``deny``, ``auth_request``...) fails closed like ``closed``;
* ``unsupported``: not implemented yet (warning), except a value equal to ``default`` when
  fastingress behaves that way anyway (``same``): then it is only an info line;
* ``inert``: nginx internals with no meaning here (hash sizes, buffers, worker tuning):
  an info line; ``removed``: gone from ingress-nginx (warning naming the replacement).

``configure(cluster, options, sink, memory)`` runs before the rest of translation (both
``translate()`` and the incremental ``Translator`` call it): it finds the ConfigMap named by
``options.configmap``, applies its keys, and returns the options translation proceeds with.
Diagnostics look like those of annotations (object ``ConfigMap ns/name``, field
``data[key]``, "did you mean").  A bad value never takes anything down: the key keeps its
*last good* value (``ConfigMemory``, owned by the caller that translates again and again:
the file source and the controller) and says so; without one, the default, and it says so.
A ConfigMap whose ``data`` is not a map keeps every last good value.  A ConfigMap that is
not there (yet, or any more) means the defaults, with a warning.

``add-headers`` and ``proxy-set-headers`` name further ConfigMaps (``namespace/name``) whose
data are headers; they are read from the same cluster state (the controller watches them).
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple, cast

import msgspec

from fastingress import __version__
from fastingress.logformat import VARIABLES, unknown_variables
from fastingress.snapshot.schema import GlobalSettings
from fastingress.translate import annotations as annotation_registry
from fastingress.translate.access import as_map, get, get_map, get_str
from fastingress.translate.annotations import (
    BadValue,
    access_directive,
    nearest,
    parse_size,
)
from fastingress.translate.model import AnnotationDefaults, ObjRef, Severity, Sink, TranslateOptions
from fastingress.translate.policy_limits import parse_kilobytes

Status = Literal["implemented", "closed", "snippet", "unsupported", "inert", "removed"]


class Noted(NamedTuple):
    """A parser's value that is accepted with a warning (e.g. TLSv1.1 left out)."""

    value: Any
    note: str


class _State:
    """What the keys of one ConfigMap make: settings and annotation defaults, by field."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] = {}
        self.defaults: dict[str, Any] = {}
        self.closed: list[tuple[str, str]] = []
        self.blocks: dict[str, tuple[str, ...]] = {}  # block-cidrs / denylist-source-range
        self.no_log: dict[str, bool] = {}  # disable-access-log / disable-http-access-log
        self.escape: dict[str, bool] = {}  # log-format-escape-json / -none
        self.annotations: dict[str, str] = {}  # ANNOTATION_DEFAULTS: annotation name -> text


Setter = Callable[[_State, Any], None]


class Row(NamedTuple):
    status: Status
    parser: Callable[[str], Any] | None = None
    setter: Setter | None = None
    default: str = ""  # ingress-nginx's default (its docs)
    same: bool = False  # unsupported: fastingress behaves as with ``default`` anyway
    note: str = ""  # the difference from ingress-nginx, or the replacement of a removed key
    pending: str = ""  # implemented in translation only: the value is kept, not acted on yet (why)


# --- parsers: str -> value; ValueError (BadValue: with a suggestion) when bad ----------------

_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def parse_bool(value: str) -> bool:
    """Go's strconv.ParseBool, as ingress-nginx decodes the ConfigMap."""
    text = value.strip()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise BadValue('expected "true" or "false"', nearest(text, ("true", "false")))


def _int(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        text = value.strip()
        if not re.fullmatch(r"-?[0-9]{1,10}", text):
            raise ValueError(f"expected a whole number between {low} and {high}")
        number = int(text)
        if not low <= number <= high:
            raise ValueError(f"expected a whole number between {low} and {high}")
        return number

    return parse


_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w|M|y)?")
_UNITS = {
    "ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000,
}
_MAX_SECONDS = 86400.0 * 7


def _seconds(*, zero: bool = False, high: float = _MAX_SECONDS) -> Callable[[str], float]:
    """nginx (and Go) time: ``60``, ``60s``, ``5m``, ``1h30m``, ``500ms``."""

    def parse(value: str) -> float:
        text = value.strip()
        pos, total = 0, 0.0
        while pos < len(text):
            match = _DURATION_RE.match(text, pos)
            if match is None or match.end() == pos:
                raise ValueError("expected a time like 60, 60s, 5m or 1h")
            total += float(match.group(1)) * _UNITS[match.group(2) or ""]
            pos = match.end()
        if not text:
            raise ValueError("expected a time like 60, 60s, 5m or 1h")
        if (total == 0 and not zero) or not 0 <= total <= high:
            raise ValueError(f"expected a time of {'0' if zero else 'more than 0'} to {high:g} seconds")
        return total

    return parse


def parse_body_size(value: str) -> int:
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError("expected a size like 8, 1k, 20m or 1g (0: unlimited)") from None


_BUFFERS_RE = re.compile(r"^([0-9]{1,4})\s+([0-9]+[kKmM]?)$")


def parse_header_buffers(value: str) -> int:
    """``large-client-header-buffers: "4 8k"``: the whole request head may be number x size."""
    match = _BUFFERS_RE.match(value.strip())
    if match is None:
        raise ValueError('expected a number and a size, like "4 8k"')
    total = int(match.group(1)) * parse_size(match.group(2))
    if not 1024 <= total <= 1024 * 1024:
        raise ValueError("expected a total (number x size) between 1k and 1m")
    return total


def _split(value: str) -> list[str]:
    if not value.isprintable():
        raise ValueError("control characters are not allowed")
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_cidrs(value: str) -> tuple[str, ...]:
    """Comma-separated addresses and networks (``10.0.0.0/8, 192.168.1.1, 2001:db8::/32``)."""
    out: list[str] = []
    for part in _split(value):
        try:
            network = ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR network") from None
        if str(network) not in out:
            out.append(str(network))
    return tuple(out)


def parse_codes(value: str) -> tuple[int, ...]:
    codes: list[int] = []
    for part in _split(value):
        if not part.isdigit() or not 400 <= int(part) <= 599:
            raise ValueError(f"{part!r} is not an HTTP error status (400-599)")
        if int(part) not in codes:
            codes.append(int(part))
    return tuple(sorted(codes))


_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")


def parse_header_name(value: str) -> str:
    text = value.strip()
    if not _TOKEN_RE.match(text):
        raise ValueError("expected a header name")
    return text


def parse_redirect_code(value: str) -> int:
    text = value.strip()
    if text not in ("301", "302", "307", "308"):
        raise BadValue("expected 301, 302, 307 or 308", nearest(text, ("301", "302", "307", "308")))
    return int(text)


_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_OFFERED = ("TLSv1.2", "TLSv1.3")


def parse_ssl_protocols(value: str) -> tuple[str, ...] | Noted:
    names = value.split()
    unknown = [n for n in names if n not in _PROTOCOLS]
    if unknown or not names:
        first = unknown[0] if unknown else ""
        raise BadValue(f"expected some of {' '.join(_PROTOCOLS)}", nearest(first, _PROTOCOLS))
    offered = tuple(n for n in _OFFERED if n in names)
    dropped = [n for n in names if n not in _OFFERED]
    if not offered:
        raise ValueError("fastingress offers TLSv1.2 and TLSv1.3 only; none of them is listed")
    if dropped:
        return Noted(offered, f"{', '.join(dropped)} not offered (insecure); using {' '.join(offered)}")
    return offered


def parse_ssl_ciphers(value: str) -> str:
    """An OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are not configurable, as in nginx)."""
    text = value.strip()
    if not text or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError("expected an OpenSSL cipher list like ECDHE-ECDSA-AES128-GCM-SHA256:...")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.set_ciphers(text)
    except ssl.SSLError:
        raise ValueError("OpenSSL knows none of these ciphers") from None
    return text


def parse_patterns(value: str) -> tuple[str, ...]:
    """nginx ``map`` keys: an exact string, ``~regex`` (case-sensitive) or ``~*regex``."""
    out: list[str] = []
    for part in _split(value):
        if part.startswith("~"):
            body = part[2:] if part.startswith("~*") else part[1:]
            try:
                re.compile(body)
            except re.error as exc:
                raise ValueError(f"{part!r} is not a valid regular expression: {exc}") from None
        if part not in out:
            out.append(part)
    return tuple(out)


def parse_strings(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_split(value)))


def parse_log_format(value: str) -> str | Noted:
    text = value.strip()
    if not text or not text.isprintable():
        raise ValueError("expected a one-line log format like $remote_addr - $remote_user ...")
    unknown = unknown_variables(text)
    if unknown:
        names = ", ".join(f"${name}" for name in unknown)
        meant = nearest(unknown[0], VARIABLES)
        hint = f" (did you mean `${meant}`?)" if meant else ""
        return Noted(text, f"unknown variables {names}{hint} are logged as -")
    return text


_REF_RE = re.compile(r"(?:[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def parse_ref(value: str) -> str:
    text = value.strip()
    if not _REF_RE.fullmatch(text):
        raise ValueError("expected namespace/name of a ConfigMap")
    return text


def parse_any(value: str) -> str:
    return value


def parse_global_auth_url(value: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError("empty")
    return text


# --- setters -------------------------------------------------------------------------------


def _settings(field: str) -> Setter:
    def setter(state: _State, value: Any) -> None:
        state.settings[field] = value

    return setter


def _defaults(field: str) -> Setter:
    def setter(state: _State, value: Any) -> None:
        state.defaults[field] = value

    return setter


def _upstream(field: str) -> Setter:  # (AnnotationDefaults holds them flat)
    return _defaults(field)


def _server_tokens(state: _State, value: bool) -> None:
    state.settings["server_header"] = f"fastingress/{__version__}" if value else ""


def _block(key: str) -> Setter:
    def setter(state: _State, value: tuple[str, ...]) -> None:
        state.blocks[key] = value

    return setter


def _no_log(key: str) -> Setter:
    def setter(state: _State, value: bool) -> None:
        state.no_log[key] = value

    return setter


def _escape(key: str) -> Setter:
    def setter(state: _State, value: bool) -> None:
        state.escape[key] = value

    return setter


def _allow_snippets(state: _State, value: bool) -> None:
    """Always false (see ``_Apply.special``)."""


def implemented(parser: Callable[[str], Any], setter: Setter, default: str = "", note: str = "") -> Row:
    return Row("implemented", parser, setter, default, note=note)


def unsupported(default: str = "", note: str = "", *, same: bool = False) -> Row:
    return Row("unsupported", default=default, same=same, note=note)


def inert(note: str = "", default: str = "") -> Row:
    return Row("inert", default=default, note=note)


def removed(replacement: str = "", note: str = "") -> Row:
    """``default`` holds the key that replaces it (if any)."""
    return Row("removed", default=replacement, note=note)


SNIPPET = Row("snippet", parser=parse_any)


def _rows(names: str, row: Row) -> dict[str, Row]:
    return dict.fromkeys(names.split(), row)


_GLOBAL_AUTH = "only used with global-auth-url"
_TRACING = "tracing is not implemented"
_COMPRESSION = "responses are not compressed"
_LOGS = "access log lines go to stdout, other logs to stderr (see --log-level)"
_STREAM = "there are no TCP/UDP services"
_BUFFERS = "bodies are streamed, never buffered whole"
_PER_INGRESS = "as a ConfigMap default; set the annotation on each Ingress"

_ROWS: dict[str, Row] = {
    # -- client IP and forwarded headers --------------------------------------------------
    "use-forwarded-headers": implemented(parse_bool, _settings("use_forwarded_headers"), "false",
                                         "X-Forwarded-Proto/-Host/-Port are trusted only from "
                                         "proxy-real-ip-cidr peers (ingress-nginx: from anyone)"),
    "enable-real-ip": implemented(parse_bool, _settings("enable_real_ip"), "false"),
    "compute-full-forwarded-for": implemented(parse_bool, _settings("compute_full_forwarded_for"), "false"),
    "forwarded-for-header": implemented(parse_header_name, _settings("forwarded_for_header"),
                                        "X-Forwarded-For"),
    "proxy-real-ip-cidr": implemented(parse_cidrs, _settings("proxy_real_ip_cidr"), "0.0.0.0/0"),
    "use-proxy-protocol": implemented(parse_bool, _settings("use_proxy_protocol"), "false",
                                      "PROXY v1 and v2, on the HTTP and HTTPS listeners"),
    "proxy-protocol-header-timeout": implemented(
        _seconds(high=60), _settings("proxy_protocol_header_timeout"), "5s"
    ),
    "forwarded-for-proxy-protocol-header": inert("an internal header name of ingress-nginx's nginx.conf",
                                                 "X-Forwarded-For-Proxy-Protocol"),
    "forwarded-host-header": inert("X-Original-Forwarded-Host is not sent", "X-Forwarded-Host"),
    "generate-request-id": unsupported("true", "a request without X-Request-ID always gets one", same=True),
    "proxy-add-original-uri-header": unsupported("false", same=True),
    # -- TLS ------------------------------------------------------------------------------
    "ssl-redirect": implemented(parse_bool, _defaults("ssl_redirect"), "true"),
    "force-ssl-redirect": implemented(parse_bool, _defaults("force_ssl_redirect"), "false"),
    "hsts": implemented(parse_bool, _settings("hsts"), "true",
                        "without the key, the --hsts flag decides (off by default)"),
    "hsts-max-age": implemented(_int(0, 10 * 365 * 86400), _settings("hsts_max_age"), "31536000"),
    "hsts-include-subdomains": implemented(parse_bool, _settings("hsts_include_subdomains"), "true"),
    "hsts-preload": implemented(parse_bool, _settings("hsts_preload"), "false"),
    "ssl-protocols": implemented(parse_ssl_protocols, _settings("ssl_protocols"), "TLSv1.2 TLSv1.3",
                                 "TLSv1.2 and TLSv1.3 only: older versions are left out with a warning"),
    "ssl-ciphers": implemented(parse_ssl_ciphers, _settings("ssl_ciphers"), "",
                               "TLS 1.2 suites; default ECDHE+AESGCM:ECDHE+CHACHA20 (no DHE)"),
    "ssl-session-cache": implemented(parse_bool, _settings("ssl_session_cache"), "true",
                                     "per worker process"),
    "ssl-session-tickets": implemented(parse_bool, _settings("ssl_session_tickets"), "false",
                                       "without the key, tickets are on (ingress-nginx: off)"),
    "ssl-session-timeout": implemented(_seconds(high=86400), _settings("ssl_session_timeout"), "10m",
                                       "without the key, 1h"),
    "ssl-session-cache-size": inert("the session cache is per worker process", "10m"),
    "ssl-session-ticket-key": unsupported("", "each worker has its own random ticket key (see TLS)"),
    "ssl-buffer-size": inert(default="4k"),
    "ssl-ecdh-curve": unsupported("auto", same=True),
    "ssl-dh-param": unsupported("", "DHE suites are not offered"),
    "ssl-early-data": unsupported("false", "no 0-RTT", same=True),
    "ssl-reject-handshake": unsupported("false", "unknown names get the default certificate", same=True),
    "enable-ocsp": unsupported("false", "no OCSP stapling", same=True),
    "use-http2": implemented(parse_bool, _settings("http2"), "true"),
    "http2-max-concurrent-streams": implemented(
        _int(1, 10000), _settings("http2_max_concurrent_streams"), "128"
    ),
    "http2-max-field-size": removed("large-client-header-buffers"),
    "http2-max-header-size": removed("large-client-header-buffers"),
    "http2-max-requests": removed("keep-alive-requests"),
    "no-tls-redirect-locations": unsupported(
        "/.well-known/acme-challenge", "only /.well-known/acme-challenge/ is never redirected", same=True
    ),
    "http-redirect-code": implemented(parse_redirect_code, _settings("http_redirect_code"), "308"),
    # -- bodies, headers and timeouts -------------------------------------------------------
    "proxy-body-size": implemented(parse_body_size, _settings("max_body_size"), "1m"),
    "proxy-connect-timeout": implemented(_seconds(), _upstream("connect_timeout"), "5"),
    "proxy-read-timeout": implemented(_seconds(), _upstream("read_timeout"), "60"),
    "proxy-send-timeout": implemented(_seconds(), _upstream("send_timeout"), "60"),
    "client-header-timeout": implemented(_seconds(high=3600), _settings("client_header_timeout"), "60"),
    "client-body-timeout": implemented(_seconds(high=3600), _settings("client_body_timeout"), "60"),
    "keep-alive": implemented(_seconds(zero=True, high=3600), _settings("keepalive_timeout"), "75",
                              "0 closes every connection after one request"),
    "keep-alive-requests": implemented(_int(0, 100_000_000), _settings("keepalive_requests"), "1000",
                                       "HTTP/1.1 connections (HTTP/2: not counted)"),
    "upstream-keepalive-connections": implemented(
        _int(0, 100_000), _settings("upstream_keepalive_connections"), "320",
        "idle connections per endpoint and worker (without the key, 32)",
    ),
    "upstream-keepalive-timeout": implemented(
        _seconds(high=3600), _settings("upstream_keepalive_timeout"), "60"
    ),
    "upstream-keepalive-requests": implemented(_int(1, 100_000_000), _settings("upstream_keepalive_requests"),
                                               "10000"),
    "upstream-keepalive-time": unsupported("1h", "a kept-alive upstream connection has no maximum lifetime"),
    "large-client-header-buffers": implemented(parse_header_buffers, _settings("max_header_bytes"), "4 8k",
                                               "number x size bounds the whole head (431); without the "
                                               "key, 32k"),
    "client-header-buffer-size": inert(default="1k"),
    "client-body-buffer-size": inert(_BUFFERS, "8k"),
    "enable-underscores-in-headers": implemented(parse_bool, _settings("underscores_in_headers"), "false",
                                                 "headers with underscores are dropped unless true"),
    "ignore-invalid-headers": implemented(parse_bool, _settings("ignore_invalid_headers"), "true",
                                          "names other than letters, digits and - are dropped"),
    "proxy-buffering": inert(_BUFFERS, "off"),
    "proxy-request-buffering": inert(_BUFFERS, "on"),
    "proxy-buffers-number": inert(default="4"),
    "proxy-buffer-size": inert(default="4k"),
    "proxy-busy-buffers-size": inert(),
    "proxy-max-temp-file-size": inert(_BUFFERS),
    "grpc-buffer-size-kb": inert(default="0"),
    "proxy-http-version": unsupported("1.1", "HTTP/1.1 to upstreams", same=True),
    # -- answers and logs --------------------------------------------------------------------
    "custom-http-errors": implemented(
        parse_codes, _defaults("custom_http_errors"), "",
        "the default of the custom-http-errors annotation (pages from the default backend, "
        "--default-backend-service)",
    ),
    "server-tokens": implemented(parse_bool, _server_tokens, "false",
                                 "false: no Server header; true: fastingress/VERSION; without the "
                                 "key: Server: fastingress"),
    "allow-backend-server-header": implemented(parse_bool, _settings("allow_backend_server_header"), "false"),
    "add-headers": implemented(parse_ref, _settings("add_headers"), "",
                               "headers set on every response (nginx variables are not expanded)"),
    "proxy-set-headers": implemented(parse_ref, _settings("proxy_set_headers"), "",
                                     "headers set on every upstream request (nginx variables are not "
                                     "expanded)"),
    "log-format-upstream": implemented(parse_log_format, _settings("log_format"), "",
                                       "a documented subset of nginx variables (README)"),
    "log-format-escape-json": implemented(parse_bool, _escape("json"), "false"),
    "log-format-escape-none": implemented(parse_bool, _escape("none"), "false"),
    "disable-access-log": implemented(parse_bool, _no_log("disable-access-log"), "false",
                                      "without the key, --access-log decides (off by default)"),
    "disable-http-access-log": implemented(parse_bool, _no_log("disable-http-access-log"), "false"),
    "skip-access-log-urls": implemented(parse_strings, _settings("skip_access_log_urls"), ""),
    "disable-stream-access-log": inert(_STREAM),
    "enable-access-log-for-default-backend": inert(
        "requests no rule matches are logged like others", "false"
    ),
    "access-log-params": inert(_LOGS),
    "access-log-path": inert(_LOGS, "/var/log/nginx/access.log"),
    "http-access-log-path": inert(_LOGS),
    "stream-access-log-path": inert(_LOGS),
    "error-log-path": inert(_LOGS, "/var/log/nginx/error.log"),
    "error-log-level": inert("see --log-level", "notice"),
    "enable-auth-access-log": inert(_LOGS),
    "log-format-stream": inert(_STREAM),
    "enable-syslog": unsupported("false", _LOGS, same=True),
    "syslog-host": inert(_LOGS),
    "syslog-port": inert(_LOGS, "514"),
    "hide-headers": unsupported("", "upstream response headers are passed on"),
    "default-type": inert(default="text/html"),
    # -- rate limits and security -------------------------------------------------------------
    "block-cidrs": implemented(parse_cidrs, _block("block-cidrs"), "", "403, before routing"),
    "block-user-agents": implemented(
        parse_patterns, _settings("block_user_agents"), "", "403, before routing"
    ),
    "block-referers": implemented(parse_patterns, _settings("block_referers"), "", "403, before routing"),
    "denylist-source-range": implemented(
        parse_cidrs, _defaults("denylist"), "",
        "the default of the denylist-source-range annotation: an Ingress's own replaces it",
    ),
    "whitelist-source-range": implemented(
        parse_cidrs, _defaults("allowlist"), "",
        "the default of allowlist-source-range: an Ingress's own annotation replaces it",
    ),
    "allow-snippet-annotations": implemented(parse_bool, _allow_snippets, "false",
                                             "always false: snippets are never executed"),
    "annotations-risk-level": unsupported("High", "annotations are not graded by risk: every one is "
                                          "implemented, refused or fails closed (README)"),
    "annotation-value-word-blocklist": unsupported("", "annotation values are parsed, never pasted into a "
                                                   "configuration"),
    "allow-cross-namespace-resources": unsupported(
        "false", "a Secret of another namespace named by an access annotation fails closed", same=True
    ),
    "limit-req-status-code": implemented(_int(400, 599), _settings("limit_req_status"), "503",
                                         "the answer of limit-rps / limit-rpm"),
    "limit-conn-status-code": implemented(_int(400, 599), _settings("limit_conn_status"), "503",
                                          "the answer of limit-connections"),
    "limit-conn-zone-variable": inert("limits count per client IP", "$binary_remote_addr"),
    "limit-rate": implemented(
        parse_kilobytes, _settings("limit_rate"), "0",
        "KB/s per response: every route's default (an Ingress's limit-rate replaces it)",
    ),
    "limit-rate-after": implemented(parse_kilobytes, _settings("limit_rate_after"), "0",
                                    "KB sent before limit-rate applies"),
    **_rows(
        """
        global-rate-limit-memcached-host global-rate-limit-memcached-port
        global-rate-limit-memcached-connect-timeout global-rate-limit-memcached-max-idle-timeout
        global-rate-limit-memcached-pool-size global-rate-limit-status-code
        """,
        removed(note="removed in ingress-nginx 1.12 with global rate limits; see the limit-* annotations"),
    ),
    "enable-modsecurity": unsupported("false", "there is no web application firewall", same=True),
    "enable-owasp-modsecurity-crs": unsupported("false", "there is no web application firewall", same=True),
    "global-auth-url": Row("closed", parse_global_auth_url, None, "",
                           note="every Ingress answers 503 (fail closed) unless it sets "
                                "enable-global-auth: \"false\""),
    **_rows(
        """
        global-auth-method global-auth-signin global-auth-signin-redirect-param global-auth-response-headers
        global-auth-request-redirect global-auth-cache-key global-auth-cache-duration
        global-auth-always-set-cookie no-auth-locations
        """,
        inert(_GLOBAL_AUTH),
    ),
    "global-allowed-response-headers": inert("the custom-headers annotation's allowlist"),
    # -- raw nginx configuration ------------------------------------------------------------
    **_rows(
        "main-snippet http-snippet server-snippet stream-snippet location-snippet modsecurity-snippet "
        "global-auth-snippet",
        SNIPPET,
    ),
    # -- defaults of per-Ingress features (annotations) -------------------------------------
    "load-balance": unsupported("round_robin", _PER_INGRESS, same=True),
    "upstream-hash-by": unsupported("", _PER_INGRESS),
    "upstream-hash-by-subset": unsupported("false", _PER_INGRESS, same=True),
    "upstream-hash-by-subset-size": unsupported("3", _PER_INGRESS, same=True),
    "proxy-next-upstream": unsupported("error timeout", _PER_INGRESS),
    "proxy-next-upstream-timeout": unsupported("0", _PER_INGRESS),
    "proxy-next-upstream-tries": unsupported("3", _PER_INGRESS),
    "retry-non-idempotent": unsupported("false", "a request whose body was sent is never retried", same=True),
    "proxy-cookie-domain": unsupported("off", _PER_INGRESS, same=True),
    "proxy-cookie-path": unsupported("off", _PER_INGRESS, same=True),
    "proxy-redirect-from": unsupported("off", _PER_INGRESS, same=True),
    "proxy-redirect-to": unsupported("off", _PER_INGRESS, same=True),
    "service-upstream": unsupported("false", _PER_INGRESS, same=True),
    "disable-proxy-intercept-errors": unsupported("false", _PER_INGRESS, same=True),
    "app-root": unsupported("", _PER_INGRESS),
    "preserve-trailing-slash": unsupported("false", _PER_INGRESS, same=True),
    "use-port-in-redirects": unsupported(
        "false", "redirects to HTTPS name the HTTPS port when it is not 443"
    ),
    "relative-redirects": unsupported("false", same=True),
    "proxy-ssl-location-only": inert(default="false"),
    # -- tracing, compression, GeoIP ----------------------------------------------------------
    "enable-opentelemetry": unsupported("false", _TRACING, same=True),
    **_rows(
        """
        opentelemetry-trust-incoming-span opentelemetry-operation-name opentelemetry-config
        otlp-collector-host otlp-collector-port otel-max-queuesize otel-schedule-delay-millis
        otel-max-export-batch-size otel-service-name otel-sampler otel-sampler-parent-based otel-sampler-ratio
        jaeger-collector-host jaeger-collector-port jaeger-endpoint jaeger-service-name
        jaeger-propagation-format jaeger-sampler-type jaeger-sampler-param jaeger-sampler-host
        jaeger-sampler-port
        jaeger-trace-context-header-name jaeger-debug-header jaeger-baggage-header
        jaeger-trace-baggage-header-prefix jaeger-tracer-baggage-header-prefix
        """,
        inert(_TRACING),
    ),
    **_rows(
        """
        datadog-collector-host datadog-collector-port datadog-environment datadog-operation-name-override
        datadog-priority-sampling datadog-sample-rate datadog-service-name
        """,
        removed(note="removed from ingress-nginx with its Datadog tracer"),
    ),
    "use-gzip": unsupported("false", _COMPRESSION, same=True),
    "enable-brotli": unsupported("false", _COMPRESSION, same=True),
    **_rows("gzip-disable gzip-level gzip-min-length gzip-types brotli-level brotli-min-length brotli-types",
            inert(_COMPRESSION)),
    "use-geoip": unsupported("true", "no GeoIP variables (nothing here uses them)"),
    "use-geoip2": unsupported("false", "no GeoIP variables", same=True),
    "geoip2-autoreload-in-minutes": inert("no GeoIP variables"),
    # -- nginx internals -----------------------------------------------------------------------
    "worker-processes": inert("see --workers", "auto"),
    "worker-cpu-affinity": inert(),
    "worker-shutdown-timeout": inert("see --grace-period", "240s"),
    "enable-serial-reloads": inert("there are no reloads", "false"),
    "bind-address": unsupported("", "see --bind"),
    "bind-address-ipv4": unsupported("", "see --bind"),
    "bind-address-ipv6": unsupported("", "see --bind"),
    "disable-ipv6": inert("see --bind", "false"),
    "disable-ipv6-dns": inert(default="false"),
    "reuse-port": inert("every worker listens with SO_REUSEPORT", "true"),
    "enable-multi-accept": inert(default="true"),
    "max-worker-connections": inert(default="16384"),
    "max-worker-open-files": inert(default="0"),
    "enable-aio-write": inert(default="true"),
    "lua-shared-dicts": inert(),
    "debug-connections": inert("see --log-level"),
    "nginx-status-ipv4-whitelist": inert("see the admin port", "127.0.0.1"),
    "nginx-status-ipv6-whitelist": inert("see the admin port", "::1"),
    "strict-validate-path-type": inert("there is no admission webhook; paths are checked when translated",
                                       "true"),
    **_rows(
        """
        map-hash-bucket-size server-name-hash-max-size server-name-hash-bucket-size
        proxy-headers-hash-max-size proxy-headers-hash-bucket-size variables-hash-bucket-size
        variables-hash-max-size
        """,
        inert(),
    ),
    **_rows(
        """
        proxy-stream-timeout proxy-stream-next-upstream proxy-stream-next-upstream-timeout
        proxy-stream-next-upstream-tries proxy-stream-responses
        """,
        inert(_STREAM),
    ),
}
# Keys that are, in ingress-nginx, the defaults of the annotation of the same name (its annotation
# parsers fall back to the ConfigMap's value): honoured the same way here, as soon as fastingress
# implements the annotation; the annotation's own parser validates the value.
ANNOTATION_DEFAULTS = (
    "load-balance", "proxy-next-upstream", "proxy-next-upstream-timeout", "proxy-next-upstream-tries",
    "proxy-cookie-domain", "proxy-cookie-path", "proxy-redirect-from", "proxy-redirect-to",
    "proxy-http-version", "service-upstream",
)


def _annotation_parser(name: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        row = annotation_registry.REGISTRY[name]
        assert row.parser is not None
        row.parser(value)  # ValueError / BadValue, with the annotation's own words
        return value.strip()

    return parse


def _annotation_setter(name: str) -> Setter:
    def setter(state: _State, value: str) -> None:
        state.annotations[name] = value

    return setter


for _name in ANNOTATION_DEFAULTS:
    _row = annotation_registry.REGISTRY.get(_name)
    if _row is not None and _row.status == "implemented":
        _ROWS[_name] = implemented(
            _annotation_parser(_name), _annotation_setter(_name), _ROWS[_name].default,
            f"the default of the {_name} annotation: an Ingress's own replaces it",
        )

REGISTRY: Mapping[str, Row] = _ROWS
NAMES: tuple[str, ...] = tuple(sorted(REGISTRY))


# --- applying one ConfigMap ---------------------------------------------------------------------


class ConfigMemory:
    """The last good value (text) of each key, kept across translations by their caller."""

    def __init__(self) -> None:
        self.good: dict[str, str] = {}
        self.headers: dict[str, tuple[tuple[str, str], ...]] = {}  # add-headers / proxy-set-headers


def _as_text(value: object) -> str | None:
    """ConfigMap values are strings; an unquoted YAML number or boolean is taken as its text."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


def _shown(text: str) -> str:
    return repr(text if len(text) <= 64 else text[:64] + "...")


_HEADER_VALUE_RE = re.compile(r"^[\x20-\x7e\t]*$")


class _Apply:
    """One ``configure`` call: the ConfigMap's keys into a ``_State``, with diagnostics."""

    def __init__(self, ref: ObjRef, cluster_maps: Mapping[tuple[str, str], Any], sink: Sink,
                 memory: ConfigMemory, fail_open: bool) -> None:
        self.ref = ref
        self.maps = cluster_maps
        self.sink = sink
        self.memory = memory
        self.fail_open = fail_open
        self.state = _State()
        self.good: dict[str, str] = {}

    def field(self, key: str) -> str:
        return f"data[{key}]"

    def add(self, severity: str, key: str, what: str, tail: str = "", suggestion: str = "") -> None:
        text = what + (f" (did you mean `{suggestion}`?)" if suggestion else "")
        text += f"; {tail}" if tail else ""
        self.sink.add(cast("Severity", severity), self.ref, self.field(key), text, suggestion)

    def close(self, key: str, why: str, what: str) -> None:
        self.state.closed.append((f"ConfigMap {self.ref.key} {key}", why))
        tail = ("served WITHOUT this protection because of --unsafe-fail-open" if self.fail_open
                else "every Ingress answers 503 (fail closed)")
        self.sink.add("error", self.ref, self.field(key), f"{what}; {tail}")

    def run(self, data: Mapping[Any, Any]) -> None:
        for key in sorted(k for k in data if isinstance(k, str)):
            row = REGISTRY.get(key)
            if row is None:
                meant = nearest(key, NAMES)
                self.add("warning", key, "unknown key", "ignored", meant)
                continue
            text = _as_text(data[key])
            if text is None:
                self.add("warning", key, "value must be a string", self.fallback(key, row))
                continue
            self.known(key, row, text)

    def known(self, key: str, row: Row, text: str) -> None:
        status = row.status
        if status == "implemented":
            self.implemented(key, row, text)
        elif status == "closed":
            if text.strip():
                self.close(key, "is not supported", f"`{key}` restricts access and is not implemented yet")
        elif status == "snippet":
            directive = access_directive(text)
            if directive is not None:
                self.close(key, "holds access rules that are never executed",
                           f"snippets are never executed, and this one restricts access (`{directive}`)")
            elif text.strip():
                self.add("warning", key, "snippets are never executed", "ignored")
        elif status == "inert":
            note = f" ({row.note})" if row.note else ""
            self.add("info", key, f"has no effect in fastingress{note}", "ignored")
        elif status == "removed":
            note = f" ({row.note})" if row.note else ""
            self.add("warning", key, f"removed from ingress-nginx{note}", "ignored", row.default)
        elif row.same and text.strip() == row.default:
            self.add("info", key, "not configurable in fastingress, which behaves as with this value",
                     "ignored")
        else:
            note = f" ({row.note})" if row.note else ""
            self.add("warning", key, f"not implemented yet{note}", "ignored")

    def parse(self, key: str, row: Row, text: str) -> Any:
        """The parsed value (BadValue/ValueError when bad); references are resolved here."""
        assert row.parser is not None
        value = row.parser(text)
        if key in ("add-headers", "proxy-set-headers"):
            value = self.headers(key, value)
        return value

    def implemented(self, key: str, row: Row, text: str) -> None:
        try:
            value = self.parse(key, row, text)
        except ValueError as exc:
            suggestion = exc.suggestion if isinstance(exc, BadValue) else ""
            self.add("warning", key, f"bad value {_shown(text)}: {exc}", self.fallback(key, row), suggestion)
            return
        if isinstance(value, Noted):
            self.add("warning", key, value.note)
            value = value.value
        if key == "allow-snippet-annotations" and value:
            self.add("warning", key, "snippets are never executed in fastingress", "taken as false")
        if row.pending:
            self.add("warning", key, f"not implemented yet ({row.pending})", "ignored")
        self.good[key] = text
        assert row.setter is not None
        row.setter(self.state, value)

    def fallback(self, key: str, row: Row) -> str:
        """Apply the key's last good value, if any; what the diagnostic should say."""
        last = self.memory.good.get(key)
        if last is not None and row.status == "implemented":
            try:
                value = self.parse(key, row, last)
            except ValueError:
                value = None
            if value is not None:
                self.good[key] = last
                assert row.setter is not None
                row.setter(self.state, value.value if isinstance(value, Noted) else value)
                return f"keeping the last good value {_shown(last)}"
        return "default used" if row.status == "implemented" else "ignored"

    def headers(self, key: str, ref_text: str) -> tuple[tuple[str, str], ...]:
        """The headers of the ConfigMap ``ref_text`` names (its bad entries skipped, with a warning)."""
        namespace, _, name = ref_text.rpartition("/")
        namespace = namespace or self.ref.namespace
        obj = self.maps.get((namespace, name))
        target = ObjRef("ConfigMap", namespace, name)
        if obj is None:
            kept = self.memory.headers.get(key)
            if kept is not None and self.memory.good.get(key) == ref_text:
                self.add("warning", key, f"ConfigMap {namespace}/{name} not found",
                         "keeping the headers it had when last read")
                return kept
            raise ValueError(f"ConfigMap {namespace}/{name} not found")
        data = get_map(obj, "data") or {}
        out: list[tuple[str, str]] = []
        for header in sorted(h for h in data if isinstance(h, str)):
            value = _as_text(data[header])
            if not _TOKEN_RE.match(header) or value is None or not _HEADER_VALUE_RE.match(value):
                self.sink.warning(target, f"data[{header}]", f"not a valid header for {key} of ConfigMap "
                                  f"{self.ref.key}; skipped")
                continue
            if "$" in value:
                self.sink.warning(target, f"data[{header}]", "nginx variables are not expanded: the value is "
                                  "sent as written")
            out.append((header, value.strip()))
        headers = tuple(out)
        self.memory.headers[key] = headers
        return headers


def _finish(state: _State, base: GlobalSettings) -> tuple[GlobalSettings, AnnotationDefaults]:
    settings = dict(state.settings)
    if "block-cidrs" in state.blocks:
        settings["block_cidrs"] = state.blocks["block-cidrs"]
    if state.no_log:
        settings["access_log"] = not any(state.no_log.values())
    if state.escape.get("none"):
        settings["log_escape"] = "none"
    elif state.escape.get("json"):
        settings["log_escape"] = "json"
    global_settings = msgspec.structs.replace(base, **settings)
    defaults = AnnotationDefaults(**state.defaults, annotations=tuple(sorted(state.annotations.items())))
    return global_settings, defaults


def parse_configmap_ref(value: str) -> tuple[str, str] | None:
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name or "/" in name:
        return None
    return namespace, name


def configure(
    configmaps: Mapping[tuple[str, str], Any],
    options: TranslateOptions,
    sink: Sink,
    memory: ConfigMemory | None = None,
) -> TranslateOptions:
    """``options`` with the ConfigMap ``options.configmap`` applied (unchanged without one)."""
    wanted = options.configmap
    if not wanted:
        return options
    where = parse_configmap_ref(wanted)
    if where is None:
        sink.error(ObjRef("ConfigMap", "", wanted), "", "--configmap must be namespace/name; ignored")
        return options
    memory = memory if memory is not None else ConfigMemory()
    ref = ObjRef("ConfigMap", *where)
    obj = configmaps.get(where)
    if obj is None:
        sink.warning(ref, "", "--configmap: ConfigMap not found; the defaults are used until it exists")
        memory.good.clear()
        memory.headers.clear()
        return options
    apply = _Apply(ref, configmaps, sink, memory, options.unsafe_fail_open)
    raw = get(obj, "data")
    data = as_map(raw) if raw is not None else {}
    if data is None:
        sink.error(ref, "data", "data is not a map of strings; keeping the last good value of every key")
        data = {key: text for key, text in memory.good.items()}
    apply.run(data)
    if get_map(obj, "binaryData"):
        sink.info(ref, "binaryData", "binaryData is not read; ignored")
    memory.good = apply.good
    for key in [k for k in memory.headers if k not in apply.good]:
        del memory.headers[key]
    settings, defaults = _finish(apply.state, options.settings)
    return msgspec.structs.replace(
        options, settings=settings, annotation_defaults=defaults, global_closed=tuple(apply.state.closed)
    )


def referenced_configmaps(obj: Mapping[str, Any] | None, namespace: str) -> frozenset[tuple[str, str]]:
    """The ConfigMaps the controller ConfigMap ``obj`` names (add-headers, proxy-set-headers)."""
    data = get_map(obj, "data") or {}
    refs: set[tuple[str, str]] = set()
    for key in ("add-headers", "proxy-set-headers"):
        text = get_str(data, key)
        if text is None:
            continue
        try:
            value = parse_ref(text)
        except ValueError:
            continue
        ns, _, name = value.rpartition("/")
        refs.add((ns or namespace, name))
    return frozenset(refs)


def key_status(name: str) -> Status | None:
    row = REGISTRY.get(name)
    return row.status if row is not None else None


__all__ = [
    "NAMES", "REGISTRY", "ConfigMemory", "Noted", "Row", "configure", "key_status", "parse_configmap_ref",
    "referenced_configmaps",
]
