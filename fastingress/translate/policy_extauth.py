"""External authentication (``auth-url`` and its companions): annotations -> ``ExternalAuth``.

Theory of operation
-------------------
ingress-nginx turns ``auth-url`` into nginx's ``auth_request`` to an internal location
``/_external-auth-...`` that proxies a body-less subrequest to the URL (its
``rootfs/etc/nginx/template/nginx.tmpl``, ``internal/ingress/annotations/authreq``); the
workers do the same (``workers.policies.extauth``).  Translation does the parsing, once:

* each key has a parser here (the registry rows in ``annotations.py`` point at them); the
  values land in :class:`ExtAuthAnnotations` (``IngressAnnotations.extauth``), None meaning
  "not set".  Values with nginx variables become templates
  (``fastingress.snapshot.nginxvars``), validated against the variables the workers know;
* every key that decides who gets in is a guard: a bad value fails the Ingress closed
  (503), where ingress-nginx either denies the location too or, for a few keys
  (``auth-cache-duration``'s first check, ``auth-always-set-cookie``), silently drops the
  whole external auth and serves the route open;
* :func:`external_auth` builds the route's ``ExternalAuth`` at emit time, with the signin URL
  composed as ingress-nginx's ``buildAuthSignURL`` does (``?rd=`` the original URL unless the
  URL already carries the parameter) and the ConfigMap of ``auth-proxy-set-headers`` read
  from the cluster; :func:`closed_reasons` says when that ConfigMap is missing or invalid
  (ingress-nginx: ``LocationDenied``, so 503);
* :func:`findings` warns about companions without ``auth-url`` (ingress-nginx ignores them).

Pure: no I/O (URLs are checked with regular expressions, not ``urllib``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from fastingress.snapshot.nginxvars import Template, TemplateError, parse_template
from fastingress.snapshot.schema import AuthHeader, CacheValid, ExternalAuth
from fastingress.translate.access import as_map, get

URL_KEY = "auth-url"
COMPANIONS = (
    "auth-method", "auth-signin", "auth-signin-redirect-param", "auth-response-headers",
    "auth-request-redirect", "auth-cache-key", "auth-cache-duration", "auth-proxy-set-headers",
    "auth-always-set-cookie", "auth-keepalive", "auth-keepalive-requests", "auth-keepalive-timeout",
)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE")
DEFAULT_CACHE_DURATION = "200 202 401 5m"  # authreq.DefaultCacheDuration
DEFAULT_REDIRECT_PARAM = "rd"  # template.go defaultGlobalAuthRedirectParam
# buildAuthSignURL: the original URL, as ingress-nginx writes it into the signin location
_ORIGINAL_URL = "$pass_access_scheme://$http_host$escaped_request_uri"
# Headers whose framing the subrequest owns: a ConfigMap cannot set them.
_FRAMING = frozenset({
    "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade",
    "expect", "proxy-connection",
})


class BadAuthValue(TemplateError):
    """A refused value (``suggestion``: the value probably meant)."""


class ExtAuthAnnotations(msgspec.Struct, frozen=True):
    """The parsed ``auth-*`` keys of one Ingress (None: not set)."""

    url: Template | None = None
    method: str | None = None
    signin: str | None = None  # as written (the rd= parameter is added when building)
    signin_redirect_param: str | None = None
    response_headers: tuple[str, ...] | None = None
    request_redirect: str | None = None
    cache_key: Template | None = None
    cache_duration: tuple[CacheValid, ...] | None = None
    proxy_set_headers: str | None = None  # a ConfigMap: "name" or "namespace/name"
    always_set_cookie: bool | None = None
    keepalive: int | None = None
    keepalive_requests: int | None = None
    keepalive_timeout: int | None = None


# --- parsers: str -> value; BadAuthValue (a ValueError) with the reason -------------------

# ingress-nginx's URLWithNginxVariableRegex allows alphanumerics, "-._~/:,?&=$" (and spaces,
# which it strips before checking): we also take %-escapes, "+" and ${name}, and [ ] for IPv6.
_URL_CHARS = re.compile(r"^[A-Za-z0-9\-._~/:,?&=$%+{}\[\]]+$")
_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>[^#]*)$")
_HOST = re.compile(
    r"^(?:[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?$"
)


def _template(text: str) -> Template:
    try:
        return parse_template(text)
    except TemplateError as exc:
        raise BadAuthValue(str(exc), exc.suggestion) from None


def _check_authority(authority: str) -> None:
    if not authority:
        raise BadAuthValue("the URL has no host")
    if "@" in authority:
        raise BadAuthValue("user information in the URL is not supported")
    if ".." in authority:
        raise BadAuthValue("invalid URL host")  # parser.StringToURL's words
    if "$" in authority:
        return  # a host from a variable ($host): checked once expanded, per request
    match = _HOST.match(authority)
    if match is None:
        raise BadAuthValue(f"invalid URL host {authority!r}")
    port = match.group("port")
    if port is not None and not 0 < int(port) <= 65535:
        raise BadAuthValue(f"invalid port {port}")


def parse_auth_url(value: str) -> Template:
    """``auth-url``: an absolute http(s) URL, nginx variables allowed (``https://$host/auth``)."""
    text = value.strip()
    if not text or not _URL_CHARS.match(text):
        raise BadAuthValue("expected an http:// or https:// URL (letters, digits, - . _ ~ / : , ? & = $ %)")
    match = _URL.match(text)
    if match is None:
        raise BadAuthValue("expected an absolute URL such as http://auth.example.svc/check")
    scheme = match.group("scheme").lower()
    if scheme not in ("http", "https"):
        raise BadAuthValue(f"the URL scheme must be http or https, not {scheme}")
    _check_authority(match.group("authority"))
    return _template(scheme + text[len(scheme):])


def parse_auth_signin(value: str) -> str:
    """``auth-signin``: where a 401 sends the browser (absolute http(s) URL or a path)."""
    text = value.strip()
    if not text or not _URL_CHARS.match(text):
        raise BadAuthValue("expected a URL (letters, digits, - . _ ~ / : , ? & = $ %)")
    if not text.startswith("/"):
        match = _URL.match(text)
        if match is None or match.group("scheme").lower() not in ("http", "https"):
            raise BadAuthValue("expected an http:// or https:// URL, or a path starting with /")
        _check_authority(match.group("authority"))
    _template(text)  # its variables must be known ones
    return text


_PARAM = re.compile(r"^[A-Za-z0-9\-._~]+$")


def parse_redirect_param(value: str) -> str:
    """``auth-signin-redirect-param``: the query parameter that carries the original URL."""
    text = value.strip()
    if not _PARAM.match(text):
        raise BadAuthValue("expected a query parameter name (letters, digits, - . _ ~)")
    return text


def parse_auth_method(value: str) -> str:
    """``auth-method``: one of nginx's methods, upper-case (authreq's methodsRegex)."""
    text = value.strip()
    if text not in METHODS:
        upper = text.upper()
        raise BadAuthValue("expected one of " + ", ".join(METHODS), upper if upper in METHODS else "")
    return text


_HEADER_NAME = re.compile(r"^[A-Za-z0-9\-_]+$")  # authreq's headerRegexp


def parse_response_headers(value: str) -> tuple[str, ...]:
    """``auth-response-headers``: comma-separated header names (lower-cased, deduplicated)."""
    names: dict[str, None] = {}
    for raw in value.split(","):
        name = raw.strip()
        if not name:
            continue
        if not _HEADER_NAME.match(name):
            raise BadAuthValue(f"invalid header name {name!r} (letters, digits, - and _)")
        names[name.lower()] = None
    if not names:
        raise BadAuthValue("expected a comma-separated list of header names")
    return tuple(names)


_REDIRECT_CHARS = re.compile(r"^[A-Za-z0-9\-._~/:,?&=]+$")  # URLIsValidRegex


def parse_request_redirect(value: str) -> str:
    """``auth-request-redirect``: the X-Auth-Request-Redirect value (default: $request_uri)."""
    text = value.strip()
    if not _REDIRECT_CHARS.match(text):
        raise BadAuthValue("expected a URL (letters, digits, - . _ ~ / : , ? & =)")
    return text


_CACHE_KEY_CHARS = re.compile(r"^[A-Za-z0-9\-_${}]*$")  # parser.NGINXVariable


def parse_cache_key(value: str) -> Template:
    """``auth-cache-key``: an nginx expression such as ``$remote_user$http_authorization``."""
    text = value.strip()
    if not _CACHE_KEY_CHARS.match(text):
        raise BadAuthValue("expected nginx variables and letters, digits, - and _ (e.g. $http_authorization)")
    return _template(text)


_CODE = re.compile(r"^[0-9]{3}$")
_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d|w|M|y)$")  # authreq's durationRegex
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}
_NGINX_DEFAULT_CODES = (200, 301, 302)  # proxy_cache_valid with only a time


def _cache_rule(entry: str) -> CacheValid:
    codes: list[int] = []
    any_code = False
    seconds = 0.0
    timed = False
    for token in entry.split():
        duration = _DURATION.match(token)
        if duration is not None:
            seconds += int(duration.group(1)) * _UNITS[duration.group(2)]
            timed = True
        elif timed:
            raise BadAuthValue(f"{entry!r}: status codes come before the time")
        elif _CODE.match(token) and 100 <= int(token) <= 599:
            codes.append(int(token))
        elif token == "any":
            any_code = True
        else:
            raise BadAuthValue(f"{entry!r}: {token!r} is neither a status code nor a time like 5m")
    if not timed:
        raise BadAuthValue(f"{entry!r}: a time such as 5m or 30s is required")
    statuses: tuple[int, ...] = () if any_code else tuple(codes) or _NGINX_DEFAULT_CODES
    return CacheValid(statuses=statuses, seconds=seconds)


def parse_cache_duration(value: str) -> tuple[CacheValid, ...]:
    """``auth-cache-duration``: ``[code ...] time`` entries, comma-separated (proxy_cache_valid)."""
    rules = tuple(_cache_rule(entry) for entry in value.split(",") if entry.strip())
    if not rules:
        raise BadAuthValue("expected entries like `200 202 10m, 401 5m`")
    return rules


_CONFIGMAP_REF = re.compile(
    r"^(?:([a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)/)?([a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?)$"
)


def parse_configmap_ref(value: str) -> str:
    """``auth-proxy-set-headers``: a ConfigMap, ``name`` or ``namespace/name``."""
    text = value.strip()
    if not _CONFIGMAP_REF.match(text):
        raise BadAuthValue("expected the name of a ConfigMap (or namespace/name)")
    return text


def parse_go_bool(value: str) -> bool:
    """strconv.ParseBool, which ingress-nginx's GetBoolAnnotation uses."""
    text = value.strip()
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise BadAuthValue('expected "true" or "false"', "true" if text.lower().startswith("t") else "")


_INT = re.compile(r"^-?[0-9]{1,9}$")
_INT_SECONDS = re.compile(r"^(-?[0-9]{1,9})s?$")


def parse_int(value: str) -> int:
    text = value.strip()
    if not _INT.match(text):
        raise BadAuthValue("expected a whole number")
    return int(text)


def parse_int_seconds(value: str) -> int:
    """A whole number of seconds ("60"; "60s" is taken too, though ingress-nginx ignores it)."""
    match = _INT_SECONDS.match(value.strip())
    if match is None:
        raise BadAuthValue("expected a whole number of seconds")
    return int(match.group(1))


# --- building the route's ExternalAuth ----------------------------------------------------


def signin_template(signin: str, param: str | None) -> Template:
    """ingress-nginx's buildAuthSignURL: ``?rd=<original URL>`` appended unless the URL's
    query already has the parameter (with a value)."""
    name = param or DEFAULT_REDIRECT_PARAM
    _, question, query = signin.partition("?")
    if question:
        for pair in query.split("&"):
            key, _, val = pair.partition("=")
            if key == name and val:
                return _template(signin)
        sep = "&" if query else ""
    else:
        sep = "?"
    return _template(f"{signin}{sep}{name}={_ORIGINAL_URL}")


def _keepalive(ann: ExtAuthAnnotations) -> tuple[int, int, float]:
    """(idle connections, requests per connection, idle timeout) as authreq clamps them."""
    keepalive = 32 if ann.keepalive is None else max(ann.keepalive, 0)
    requests = 1000 if ann.keepalive_requests is None else ann.keepalive_requests
    timeout = 60 if ann.keepalive_timeout is None else ann.keepalive_timeout
    if requests <= 0 or timeout <= 0:
        keepalive = 0
    return keepalive, max(requests, 1), float(max(timeout, 1))


def external_auth(
    ann: ExtAuthAnnotations, host: str, path: str, path_type: str, headers: tuple[AuthHeader, ...]
) -> ExternalAuth | None:
    """The ExternalAuth of one route (None without ``auth-url``); ``headers`` from the ConfigMap."""
    if ann.url is None:
        return None
    keepalive, requests, timeout = _keepalive(ann)
    cache_key: Template = ann.cache_key or ()
    return ExternalAuth(
        url=ann.url,
        method=ann.method or "",
        signin=signin_template(ann.signin, ann.signin_redirect_param) if ann.signin else (),
        response_headers=ann.response_headers or (),
        request_redirect=(ann.request_redirect,) if ann.request_redirect else ("", "request_uri", ""),
        proxy_set_headers=headers,
        cache_key=cache_key,
        cache_valid=(ann.cache_duration or parse_cache_duration(DEFAULT_CACHE_DURATION)) if cache_key else (),
        cache_zone=f"{host} {path} {path_type}" if cache_key else "",
        keepalive=keepalive,
        keepalive_requests=requests,
        keepalive_timeout=timeout,
        always_set_cookie=bool(ann.always_set_cookie),
    )


def configmap_key(ref: str, namespace: str) -> tuple[str, str]:
    space, slash, name = ref.partition("/")
    return (space, name) if slash else (namespace, ref)


def proxy_set_headers(configmap: object) -> tuple[tuple[AuthHeader, ...], str]:
    """The headers of an ``auth-proxy-set-headers`` ConfigMap, or ((), why it is refused)."""
    data = get(configmap, "data")
    if data is None:
        return (), ""
    mapping = as_map(data)
    if mapping is None:
        return (), "its data is not a map"
    out: list[AuthHeader] = []
    for raw_name in sorted(mapping, key=str):
        value = mapping[raw_name]
        if not isinstance(raw_name, str) or not _HEADER_NAME.match(raw_name):
            return (), f"data key {str(raw_name)!r} is not a header name (authreq's ValidHeader)"
        if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
            return (), f"data[{raw_name}] is not a one-line string"
        name = raw_name.lower()
        if name in _FRAMING:
            continue  # (reported by closed_reasons' caller as a warning)
        try:
            template = parse_template(value.strip())
        except TemplateError as exc:
            return (), f"data[{raw_name}]: {exc}"
        out.append(AuthHeader(name, template))
    return tuple(out), ""


def framing_headers(configmap: object) -> tuple[str, ...]:
    """Keys of the ConfigMap that name headers the subrequest frames itself (ignored)."""
    mapping = as_map(get(configmap, "data")) or {}
    return tuple(sorted(k for k in mapping if isinstance(k, str) and k.lower() in _FRAMING))


def closed_reasons(
    ann: ExtAuthAnnotations, namespace: str, configmaps: Mapping[tuple[str, str], Any], key: str
) -> tuple[tuple[str, str], ...]:
    """Why this Ingress's external auth cannot be honoured (its ConfigMap), keyed by ``key``."""
    if ann.url is None or ann.proxy_set_headers is None:
        return ()
    space, name = configmap_key(ann.proxy_set_headers, namespace)
    if space != namespace:
        return ((key, f"names ConfigMap {space}/{name} in another namespace, which is refused "
                      "(ingress-nginx's allow-cross-namespace-resources is false by default)"),)
    configmap = configmaps.get((space, name))
    if configmap is None:
        return ((key, f"names ConfigMap {space}/{name}, which does not exist"),)
    _, why = proxy_set_headers(configmap)
    if why:
        return ((key, f"names ConfigMap {space}/{name}, which is invalid: {why}"),)
    return ()


def findings(ann: ExtAuthAnnotations, names: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(severity, full key, message) about keys that do nothing: ``names`` maps each auth-*
    key name the Ingress carries to its full key."""
    out: list[tuple[str, str, str]] = []
    if URL_KEY not in names:
        for name in COMPANIONS:
            if name in names:
                out.append(("warning", names[name], f"has no effect without `{URL_KEY}`; ignored"))
        return out
    if "auth-cache-duration" in names and "auth-cache-key" not in names:
        out.append(("warning", names["auth-cache-duration"],
                    "has no effect without `auth-cache-key`; ignored"))
    if "auth-signin-redirect-param" in names and "auth-signin" not in names:
        out.append(("warning", names["auth-signin-redirect-param"],
                    "has no effect without `auth-signin`; ignored"))
    return out


__all__ = [
    "COMPANIONS", "URL_KEY", "BadAuthValue", "ExtAuthAnnotations", "closed_reasons", "configmap_key",
    "external_auth", "findings", "framing_headers", "parse_auth_method", "parse_auth_signin",
    "parse_auth_url",
    "parse_cache_duration", "parse_cache_key", "parse_configmap_ref", "parse_go_bool", "parse_int",
    "parse_int_seconds", "parse_redirect_param", "parse_request_redirect", "parse_response_headers",
    "proxy_set_headers", "signin_template",
]
