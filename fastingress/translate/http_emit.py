"""The http area's policies (issue 9) as snapshot values: one function per ``RoutePolicy`` field,
called where ``core._Emitter.route`` builds a route's policy.

* ``cors``, ``redirects``: straight from the parsed annotations;
* ``header_rules``: ``custom-headers`` reads its ConfigMap (``data``), checked as ingress-nginx
  checks it (``customheaders/main.go``: header names ``[A-Za-z0-9-_]+``, values of printable
  characters); a missing, foreign-namespace or invalid ConfigMap is a reason for the Ingress's
  routes to answer 503 (``custom_headers_problem``, as ingress-nginx denies the location);
* ``error_pages``: ``default-backend`` names a Service of the Ingress's namespace whose first
  port (``backends.FIRST_PORT``) becomes an Upstream, as ingress-nginx's custom default backend.

ConfigMaps are read through ``cluster.configmaps`` only (get / ``in``), so the incremental
translator records which ones a host looked up.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fastingress.snapshot.schema import Cors, ErrorPages, Forward, HeaderRules, Redirects
from fastingress.translate.access import get_map
from fastingress.translate.annotations import PREFIX, UpstreamSettings
from fastingress.translate.backends import FIRST_PORT, BackendRef
from fastingress.translate.cluster import Cluster
from fastingress.translate.model import Sink
from fastingress.translate.policy_http import HttpAnnotations

if TYPE_CHECKING:
    from fastingress.translate.core import _Emitter
    from fastingress.translate.ingress import IngressPlan

# customheaders/main.go: headerRegexp and valueRegexp
_HEADER_NAME_RE = re.compile(r"^[a-zA-Z\d\-_]+$")
_HEADER_VALUE_RE = re.compile(r"^[a-zA-Z\d_ :;.,\\/\"'?!(){}\[\]@<>=\-+*#$&`|~^%]+$")
# Headers that frame the message or belong to one connection: never set from a ConfigMap.
_FRAMING = frozenset({
    "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "upgrade",
    "te", "trailer",
})
CUSTOM_HEADERS_KEY = PREFIX + "custom-headers"


def cors(a: HttpAnnotations) -> Cors | None:
    if not a.enable_cors:
        return None
    return Cors(
        allow_origins=a.cors_allow_origin,
        allow_methods=a.cors_allow_methods,
        allow_headers=a.cors_allow_headers,
        expose_headers=a.cors_expose_headers,
        allow_credentials=a.cors_allow_credentials,
        max_age=a.cors_max_age,
    )


def redirects(a: HttpAnnotations) -> Redirects | None:
    """temporal-redirect wins over permanent-redirect (ingress-nginx's order)."""
    if a.temporal_redirect:
        url, code = a.temporal_redirect, a.temporal_redirect_code
    else:
        url, code = a.permanent_redirect, a.permanent_redirect_code
    if not url and not a.app_root:
        return None
    return Redirects(url=url, code=code if url else 301, app_root=a.app_root)


def custom_headers(cluster: Cluster, plan: IngressPlan) -> tuple[tuple[tuple[str, str], ...], str]:
    """(headers, "") from the custom-headers ConfigMap, or ((), why it cannot be used)."""
    ref = plan.annotations.http.custom_headers
    if ref is None:
        return (), ""
    namespace, _, name = ref.rpartition("/")
    namespace = namespace or plan.ref.namespace
    if namespace != plan.ref.namespace:
        return (), (f"ConfigMap {namespace}/{name} is in another namespace (only ConfigMaps of the "
                    "Ingress's own namespace are read)")
    configmap = cluster.configmaps.get((namespace, name))
    if configmap is None:
        return (), f"ConfigMap {namespace}/{name} not found"
    data = get_map(configmap, "data") or {}
    headers: list[tuple[str, str]] = []
    for key in sorted(k for k in data if isinstance(k, str)):
        value = data[key]
        if not _HEADER_NAME_RE.fullmatch(key) or key.lower() in _FRAMING:
            return (), f"ConfigMap {namespace}/{name}: {key[:64]!r} is not a header name it may set"
        if not isinstance(value, str) or not _HEADER_VALUE_RE.fullmatch(value):
            return (), f"ConfigMap {namespace}/{name}: the value of {key!r} is not a valid header value"
        headers.append((key, value))
    return tuple(headers), ""


def custom_headers_problem(
    cluster: Cluster, plan: IngressPlan, sink: Sink, fail_open: bool
) -> tuple[tuple[str, str], ...]:
    """The fail-closed reason ``(key, why)`` when custom-headers is set and unusable (ingress-nginx
    denies the location: 503), with an error diagnostic."""
    problem = custom_headers(cluster, plan)[1]
    if not problem:
        return ()
    tail = ("served WITHOUT these headers because of --unsafe-fail-open" if fail_open
            else "every path of this Ingress answers 503")
    sink.error(plan.ref, f"metadata.annotations[{CUSTOM_HEADERS_KEY}]", f"{problem}; {tail}")
    return ((CUSTOM_HEADERS_KEY, problem),)


def header_rules(cluster: Cluster, plan: IngressPlan) -> HeaderRules | None:
    a = plan.annotations.http
    response = custom_headers(cluster, plan)[0]
    rules = HeaderRules(
        response=response,
        redirect_from=a.proxy_redirect_from if a.proxy_redirect_to else "",
        redirect_to=a.proxy_redirect_to if a.proxy_redirect_from else "",
        cookie_domain=a.proxy_cookie_domain,
        cookie_path=a.proxy_cookie_path,
        connection=a.connection_proxy_header,
    )
    return None if rules == HeaderRules() else rules


def error_pages(emitter: _Emitter, plan: IngressPlan) -> ErrorPages | None:
    a = plan.annotations.http
    if not a.custom_http_errors and a.default_backend is None:
        return None
    upstream: str | None = None
    if a.default_backend is not None:
        field = f"metadata.annotations[{PREFIX}default-backend]"
        backend = BackendRef(plan.ref.namespace, a.default_backend, FIRST_PORT, field)
        action = emitter.forward(backend, UpstreamSettings(), plan.ref)
        if isinstance(action, Forward):
            upstream = action.backends[0].upstream
    return ErrorPages(
        codes=a.custom_http_errors, upstream=upstream, intercept=not a.disable_proxy_intercept_errors
    )


__all__ = [
    "CUSTOM_HEADERS_KEY", "cors", "custom_headers", "custom_headers_problem", "error_pages", "header_rules",
    "redirects",
]
