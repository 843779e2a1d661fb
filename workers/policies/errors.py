"""``custom-http-errors``, ``default-backend``, ``disable-proxy-intercept-errors``: answers of
another backend instead of the route's own (ingress-nginx's ``CUSTOM_ERRORS`` template).

* intercept: an upstream answer (or our own 502/503/504: headers None) whose status is one of
  ``codes`` is dropped before anything of it is sent, and the error backend gets
  ``GET /``-like request (method kept, as nginx's named location, without a body; path ``/``
  with the request's query) with ``X-Code``, ``X-Format`` (the client's Accept),
  ``X-Original-URI``, ``X-Namespace``, ``X-Ingress-Name``, ``X-Service-Name``,
  ``X-Service-Port`` (and ``X-Request-ID``, ``X-Forwarded-For``, which every request gets);
  its answer (status included) is the client's.  ``disable-proxy-intercept-errors`` keeps
  upstream answers as they are (our own errors are still replaced, as nginx's error_page);
* unavailable: the route's Service has no ready endpoint.  With ``default-backend`` the whole
  request goes there with ``X-Code: 503`` & co. (ingress-nginx's ``custom-default-backend-``
  upstream); without it, 503 in ``codes`` fetches the error page as above.

The error backend is the default-backend annotation's Service, else the global default backend
(``--default-backend-service``); with neither, or when it cannot answer, the status is answered
by fastingress itself (the upstream's body is not relayed).
"""

from __future__ import annotations

from collections.abc import Sequence

from fastingress.snapshot.schema import Forward, Route, Snapshot, Upstream
from workers.policy import CONTENT, Headers, Policy, Refetch, RequestCtx

_GENERATED = frozenset({502, 503, 504})  # errors fastingress answers itself for an upstream


def _names(route: Route) -> tuple[tuple[bytes, bytes], ...]:
    """X-Namespace, X-Ingress-Name, X-Service-Name, X-Service-Port of the route."""
    namespace, _, ingress = route.ingress.partition("/")
    service, _, port = route.service.rpartition(":")
    service = service.partition("/")[2]
    return (
        (b"x-namespace", namespace.encode()), (b"x-ingress-name", ingress.encode()),
        (b"x-service-name", service.encode()), (b"x-service-port", port.encode()),
    )


def compile(route: Route, snapshot: Snapshot) -> Sequence[Policy]:
    errors = route.policy.errors
    if errors is None:
        return ()
    codes = frozenset(errors.codes)
    backend = errors.upstream
    if backend is None and isinstance(snapshot.default_action, Forward) and snapshot.default_action.backends:
        backend = snapshot.default_action.backends[0].upstream
    names = _names(route)
    intercept_upstream = errors.intercept

    def described(ctx: RequestCtx, status: int, *, page: bool) -> tuple[tuple[bytes, bytes], ...]:
        headers = [(b"x-code", b"%d" % status)]
        accept = ctx.header(b"accept")
        if accept:  # (nginx passes no header for an empty value)
            headers.append((b"x-format", accept))
        if page:
            headers.append((b"x-original-uri", ctx.target))
        return (*headers, *names)

    def intercept(ctx: RequestCtx, status: int, headers: Headers | None) -> Refetch | None:
        if status not in codes or (headers is not None and not intercept_upstream):
            return None
        if headers is None and status not in _GENERATED:
            return None
        return Refetch(status, backend, b"/" + ctx.query.encode(), described(ctx, status, page=True))

    def unavailable(ctx: RequestCtx, upstream: Upstream) -> Refetch | None:
        if errors.upstream is not None:  # the whole request goes to the default-backend Service
            return Refetch(503, errors.upstream, None, described(ctx, 503, page=False))
        if 503 in codes:
            return Refetch(503, backend, b"/" + ctx.query.encode(), described(ctx, 503, page=True))
        return None

    where = backend or "fastingress itself (no default backend)"
    what = []
    if codes:
        what.append(
            ",".join(str(c) for c in sorted(codes)) + f" answered by {where}"
            + ("" if intercept_upstream else " (upstream answers kept: disable-proxy-intercept-errors)")
        )
    if errors.upstream is not None:
        what.append(f"{errors.upstream} takes the requests when the Service has no ready endpoint")
    name = "custom-http-errors" if codes else "default-backend"
    return (
        Policy(
            CONTENT, intercept=intercept if codes else None, unavailable=unavailable,
            explain=f"{name}: " + "; ".join(what),
        ),
    )
