"""Annotations of the http area (issue 9), parsed once: CORS, redirects, response and upstream
headers, error pages.  Pure functions: ``str`` in, a typed value out, ``ValueError`` when bad.

Each parser follows ingress-nginx's validation (``internal/ingress/annotations/<x>/main.go``)
and what its nginx template does with the value:

* CORS (``cors/main.go``, the template's ``CORS`` block): ``cors-allow-origin`` is a comma
  list of ``scheme://host[:port]`` (``*`` as the first label matches one DNS label), ``null``,
  or ``*`` (which wins over the rest).  A bad entry is skipped with a warning (as
  ingress-nginx does) and the others are kept; a list with no good entry allows no origin;
* redirects (``redirect/redirect.go``): the URL of ``permanent-redirect`` and
  ``temporal-redirect`` goes to nginx's ``return``, so nginx variables in it are expanded; we
  accept the ones that make sense in a redirect (``VARIABLES``, ``$1``..``$9``) and refuse the
  others; codes outside 300-308 (300-307 for temporal) keep the default, like ingress-nginx;
* ``server-alias``: host names (or ``*.`` wildcards); nginx regex names (``~...``) are refused;
* header rewriting: ``proxy-redirect-from``/``-to`` (``off``/``default`` disable it, as
  ingress-nginx renders them), ``proxy-cookie-domain``/``-path`` (``off`` or two words),
  ``connection-proxy-header`` (``close`` or ``keep-alive``, ingress-nginx's only values);
* ``custom-http-errors``: status codes 400-599; ``default-backend``: a Service name.

A parser that keeps part of a value raises ``PartialValue``: the registry uses ``partial``
and warns about the rest (``annotations._Parse.implemented`` reads ``partial`` and
``suggestion`` off the error, so this module does not import the registry).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import msgspec

from fastingress.snapshot.schema import CORS_HEADERS, CORS_MAX_AGE, CORS_METHODS

# nginx variables a redirect URL may use, and what each is (see workers.policies.redirects).
VARIABLES = frozenset(
    {"request_uri", "uri", "document_uri", "args", "query_string", "is_args", "host", "http_host", "scheme"}
)
VARIABLE_RE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([0-9])|([A-Za-z_][A-Za-z0-9_]*))")


class Refused(ValueError):
    """A refusal with the value probably meant ("did you mean")."""

    def __init__(self, reason: str, suggestion: str = "") -> None:
        super().__init__(reason)
        self.suggestion = suggestion


class PartialValue(ValueError):
    """Part of the value is usable (``partial``); the message says what was dropped."""

    def __init__(self, reason: str, partial: Any) -> None:
        super().__init__(reason)
        self.partial = partial


def _nearest(word: str, choices: tuple[str, ...]) -> str:
    found = difflib.get_close_matches(word.lower(), choices, n=1, cutoff=0.6)
    return found[0] if found else ""


# -- CORS ------------------------------------------------------------------------------

# ingress-nginx's corsOriginRegex (one entry), anchored.
_ORIGIN_RE = re.compile(r"^(?:[a-z]+://(?:\*\.)?[A-Za-z0-9\-.]*(?::\d+)?|null)$")
_METHODS_RE = re.compile(r"^(?:[A-Za-z]+,? ?)+$")  # corsMethodsRegex (with spaces, not any \s)
_HEADERS_RE = re.compile(r"^[A-Za-z0-9\-_, ]*$")  # parser.HeadersVariable
_EXPOSE_RE = re.compile(r"^(?:(?:[A-Za-z0-9\-_]+|\*),? ?)+$")  # corsExposeHeadersRegex (likewise)


def parse_cors_origins(value: str) -> tuple[str, ...]:
    """``cors-allow-origin``: ``("*",)``, or the good origins (lower-case) in order."""
    kept: list[str] = []
    bad: list[str] = []
    for entry in value.split(","):
        origin = entry.strip()
        if not origin:
            continue
        if origin == "*":
            return ("*",)
        if _ORIGIN_RE.fullmatch(origin) and origin.count("*") <= 1:
            if origin.lower() not in kept:
                kept.append(origin.lower())
        else:
            bad.append(origin)
    if not kept and not bad:
        return ("*",)  # only blanks: ingress-nginx's default
    if bad:
        shown = ", ".join(repr(b) for b in bad[:3]) + (" ..." if len(bad) > 3 else "")
        what = "skipped" if kept else "skipped, so no origin is allowed"
        raise PartialValue(
            f"not an origin (scheme://host[:port], scheme://*.host, null or *): {shown}; {what}", tuple(kept)
        )
    return tuple(kept)


def parse_cors_methods(value: str) -> str:
    text = value.strip()
    if not _METHODS_RE.fullmatch(text):
        raise ValueError("expected a comma-separated list of methods like GET, POST")
    return text


def parse_cors_headers(value: str) -> str:
    text = value.strip()
    if not text or not _HEADERS_RE.fullmatch(text):
        raise ValueError("expected a comma-separated list of header names")
    return text


def parse_cors_expose(value: str) -> str:
    text = value.strip()
    if not _EXPOSE_RE.fullmatch(text):
        raise ValueError("expected a comma-separated list of header names (or *)")
    return text


def parse_max_age(value: str) -> int:
    text = value.strip()
    if not text.lstrip("-").isdigit():
        raise ValueError("expected a number of seconds")
    return int(text)


# -- redirects -------------------------------------------------------------------------

_URL_CHARS_RE = re.compile(r"^[\x21-\x7e]+$")
_SCHEME_RE = re.compile(r"^https?://[^/?#]+", re.IGNORECASE)


def parse_redirect_url(value: str) -> str:
    """A redirect target: ``http(s)://...`` or a path, with supported nginx variables."""
    text = value.strip()
    if not _URL_CHARS_RE.fullmatch(text):
        raise ValueError("expected a URL without spaces or control characters")
    for match in VARIABLE_RE.finditer(text):
        name = match.group(1) or match.group(3)
        if name is not None and name not in VARIABLES and not name.isdigit():
            raise Refused(
                f"nginx variable ${name} is not supported in redirects (supported: "
                + ", ".join("$" + v for v in sorted(VARIABLES)) + ", $1..$9)",
                "$" + _nearest(name, tuple(sorted(VARIABLES))) if _nearest(name, tuple(VARIABLES)) else "",
            )
    literal = VARIABLE_RE.sub("x", text)
    starts_with_variable = text.startswith("$")
    if not (starts_with_variable or literal.startswith("/") or _SCHEME_RE.match(literal)):
        raise ValueError("expected an absolute http(s):// URL or a path starting with /")
    return text


def _code(value: str, low: int, high: int) -> int:
    text = value.strip()
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"expected a redirect status from {low} to {high}")
    return int(text)


def parse_permanent_code(value: str) -> int:
    return _code(value, 300, 308)


def parse_temporal_code(value: str) -> int:
    return _code(value, 300, 307)


_APP_ROOT_RE = re.compile(r"^/[\-._~A-Za-z0-9/:$]*$")  # parser.RegexPathWithCapture, from "/"


def parse_app_root(value: str) -> str:
    text = value.strip()
    if not _APP_ROOT_RE.fullmatch(text) or text.startswith("//"):
        raise ValueError("expected a path such as /app (not a URL)")
    return text


_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_ALIAS_RE = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")


def parse_server_alias(value: str) -> tuple[str, ...]:
    """``server-alias``: host names (lower-case, sorted, unique); bad ones are skipped."""
    kept: set[str] = set()
    bad: list[str] = []
    for entry in value.split(","):
        name = entry.strip().lower().rstrip(".")
        if not name:
            continue
        if _ALIAS_RE.fullmatch(name) and len(name) <= 253:
            kept.add(name)
        else:
            bad.append(entry.strip())
    if bad:
        shown = ", ".join(repr(b) for b in bad[:3]) + (" ..." if len(bad) > 3 else "")
        raise PartialValue(f"not a host name (regular expressions are not supported): {shown}; skipped",
                           tuple(sorted(kept)))
    if not kept:
        raise ValueError("expected a comma-separated list of host names")
    return tuple(sorted(kept))


# -- headers ---------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?$")


def parse_object_ref(value: str) -> str:
    """A ConfigMap as ``namespace/name`` or ``name`` (the Ingress's namespace)."""
    text = value.strip()
    namespace, slash, name = text.rpartition("/")
    if not _NAME_RE.fullmatch(name) or (slash and not _NAME_RE.fullmatch(namespace)):
        raise ValueError("expected namespace/name of a ConfigMap")
    return text


_REWRITE_CHARS_RE = re.compile(r"^[\x21-\x7e]+$")


def parse_redirect_rewrite(value: str) -> str:
    """``proxy-redirect-from``/``-to``: a URL prefix; ``off``/``default`` (from) give ""."""
    text = value.strip()
    if text.lower() in ("off", "default"):
        return ""
    if not _REWRITE_CHARS_RE.fullmatch(text):
        raise ValueError("expected a URL (prefix) without spaces")
    return text


def parse_cookie_rewrite(value: str) -> tuple[str, str] | None:
    """``proxy-cookie-domain``/``-path``: ``off`` (None) or ``<from> <to>``."""
    parts = value.split()
    if len(parts) == 1 and parts[0].lower() == "off":
        return None
    if len(parts) != 2 or not all(_REWRITE_CHARS_RE.fullmatch(p) and ";" not in p for p in parts):
        raise ValueError('expected "off" or two words: the value to replace and its replacement')
    return parts[0], parts[1]


def parse_connection_header(value: str) -> str:
    text = value.strip().lower()
    if text not in ("close", "keep-alive"):
        raise Refused('expected "close" or "keep-alive"', _nearest(text, ("close", "keep-alive")))
    return text


def parse_http_version(value: str) -> str:
    """``proxy-http-version``: fastingress always speaks HTTP/1.1 upstream; 1.0 is refused."""
    text = value.strip()
    if text == "1.1":
        return text
    if text == "1.0":
        raise ValueError(
            "HTTP/1.0 to upstreams is not supported: fastingress speaks HTTP/1.1 to them "
            "(keep-alive, chunked bodies)"
        )
    raise Refused('expected "1.1" (or "1.0", which is not supported)', "1.1")


# -- error pages -----------------------------------------------------------------------


def parse_status_codes(value: str) -> tuple[int, ...]:
    """``custom-http-errors``: 4xx/5xx codes, sorted, unique."""
    codes: set[int] = set()
    for entry in value.split(","):
        text = entry.strip()
        if not text:
            continue
        if not text.isdigit() or not 400 <= int(text) <= 599:
            raise ValueError(f"{text!r} is not an HTTP error status (400-599)")
        codes.add(int(text))
    if not codes:
        raise ValueError("expected a comma-separated list of status codes like 404,503")
    return tuple(sorted(codes))


_SERVICE_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def parse_service_name(value: str) -> str:
    """``default-backend``: a Service in the Ingress's namespace (its first port is used)."""
    text = value.strip()
    if _SERVICE_RE.fullmatch(text):
        return text
    _, slash, name = text.partition("/")
    if slash and _SERVICE_RE.fullmatch(name):
        raise Refused("expected the name of a Service in the Ingress's namespace (no namespace/)", name)
    raise ValueError("expected the name of a Service in the Ingress's namespace")


# -- what the Ingress asked for --------------------------------------------------------


class HttpAnnotations(msgspec.Struct, frozen=True):
    """The http area's annotations of one Ingress (``IngressAnnotations.http``)."""

    enable_cors: bool = False
    cors_allow_origin: tuple[str, ...] = ("*",)
    cors_allow_methods: str = CORS_METHODS
    cors_allow_headers: str = CORS_HEADERS
    cors_expose_headers: str = ""
    cors_allow_credentials: bool = True
    cors_max_age: int = CORS_MAX_AGE
    permanent_redirect: str = ""
    permanent_redirect_code: int = 301
    temporal_redirect: str = ""
    temporal_redirect_code: int = 302
    app_root: str = ""
    from_to_www_redirect: bool = False
    server_alias: tuple[str, ...] = ()
    custom_headers: str | None = None  # ConfigMap "namespace/name" or "name"
    proxy_redirect_from: str = ""
    proxy_redirect_to: str = ""
    proxy_cookie_domain: tuple[str, str] | None = None
    proxy_cookie_path: tuple[str, str] | None = None
    connection_proxy_header: str | None = None
    proxy_http_version: str = "1.1"
    custom_http_errors: tuple[int, ...] = ()
    default_backend: str | None = None  # a Service name in the Ingress's namespace
    disable_proxy_intercept_errors: bool = False


# Keys that only mean something together with another one: (key, needs, what it needs).
_NEEDS: tuple[tuple[str, str, str], ...] = (
    *((k, "enable-cors", "enable_cors") for k in (
        "cors-allow-origin", "cors-allow-methods", "cors-allow-headers", "cors-expose-headers",
        "cors-allow-credentials", "cors-max-age",
    )),
    ("permanent-redirect-code", "permanent-redirect", "permanent_redirect"),
    ("temporal-redirect-code", "temporal-redirect", "temporal_redirect"),
    ("proxy-redirect-to", "proxy-redirect-from", "proxy_redirect_from"),
)


def findings(http: HttpAnnotations, keys: dict[str, str]) -> list[tuple[str, str, str]]:
    """(key, what, tail) warnings about how the http keys combine; ``keys``: name -> full key."""
    out: list[tuple[str, str, str]] = []
    for name, needs, field in _NEEDS:
        if name in keys and not getattr(http, field):
            out.append((keys[name], f"has no effect without `{needs}`", "ignored"))
    if http.permanent_redirect and http.temporal_redirect and "permanent-redirect" in keys:
        out.append((keys["permanent-redirect"], "temporal-redirect takes precedence (as in ingress-nginx)",
                    "ignored"))
    if "proxy-redirect-from" in keys and http.proxy_redirect_from and not http.proxy_redirect_to:
        out.append((keys["proxy-redirect-from"], "has no effect without `proxy-redirect-to`", "ignored"))
    return out


__all__ = [
    "VARIABLES", "VARIABLE_RE", "HttpAnnotations", "PartialValue", "Refused", "findings",
    "parse_app_root", "parse_connection_header", "parse_cookie_rewrite", "parse_cors_expose",
    "parse_cors_headers", "parse_cors_methods", "parse_cors_origins", "parse_http_version",
    "parse_max_age", "parse_object_ref", "parse_permanent_code", "parse_redirect_rewrite",
    "parse_redirect_url", "parse_server_alias", "parse_service_name", "parse_status_codes",
    "parse_temporal_code",
]
