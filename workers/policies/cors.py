"""``enable-cors`` and ``cors-*``: ingress-nginx's CORS block (``nginx.tmpl``, ``define "CORS"``;
``test/e2e/annotations/cors.go``).

* The request's ``Origin`` is allowed when the origins are ``*`` (then ``*`` is answered,
  whatever the client sent, even without an Origin header) or it matches one of them whole
  and case-insensitively (a ``*`` label matches one DNS label: ``[A-Za-z0-9-]+``); ingress-nginx
  anchors its regex at the end only, we anchor both ends.
* Every response to an allowed request (upstream answers, our own answers and errors, 401s of
  auth policies alike: ``more_set_headers`` in nginx) gets ``Access-Control-Allow-Origin``
  (the origin, or ``*``), ``-Allow-Credentials: true`` (unless disabled), ``-Allow-Methods``,
  ``-Allow-Headers``, ``-Expose-Headers`` (when set) and ``-Max-Age``, replacing any the
  upstream sent; a reflected origin adds ``Vary: Origin`` (so caches keep answers apart).
* A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) from an
  allowed origin is answered here, 204 with those headers, before any access check (nginx's
  rewrite phase): a browser's preflight never carries credentials.  Other OPTIONS requests,
  and preflights from origins not allowed, go on as usual (ingress-nginx answers every OPTIONS
  of an allowed origin; a request without Access-Control-Request-Method is not a preflight).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from fastingress.snapshot.schema import Cors, Route, Snapshot
from workers.http1 import valid_value
from workers.policy import REWRITE, Answer, Policy, RequestCtx

_ORIGIN = b"origin"
_ACAO = b"access-control-allow-origin"
_PREFLIGHT_TYPE = b"text/plain; charset=utf-8"


def origin_pattern(origins: tuple[str, ...]) -> re.Pattern[str] | None:
    """One case-insensitive regex for the allowed origins; None when none is allowed.  The
    first ``*`` of an origin is one DNS label (ingress-nginx's ``buildOriginRegex``)."""
    parts = []
    for origin in origins:
        escaped = re.escape(origin).replace(r"\*", "[A-Za-z0-9-]+", 1)
        parts.append(f"(?:{escaped})")
    if not parts:
        return None
    return re.compile("|".join(parts), re.IGNORECASE)


def _fixed(cors: Cors) -> tuple[tuple[bytes, bytes], ...]:
    """The headers every allowed answer gets (values translation checked; a hand-made snapshot's
    bad ones are left out)."""
    headers = []
    if cors.allow_credentials:
        headers.append((b"access-control-allow-credentials", b"true"))
    headers.append((b"access-control-allow-methods", cors.allow_methods.encode()))
    headers.append((b"access-control-allow-headers", cors.allow_headers.encode()))
    if cors.expose_headers:
        headers.append((b"access-control-expose-headers", cors.expose_headers.encode()))
    headers.append((b"access-control-max-age", b"%d" % cors.max_age))
    return tuple((name, value) for name, value in headers if valid_value(value))


def compile(route: Route, snapshot: Snapshot) -> Sequence[Policy]:
    cors = route.policy.cors
    if cors is None:
        return ()
    any_origin = cors.allow_origins == ("*",)
    pattern = None if any_origin else origin_pattern(cors.allow_origins)
    fixed = _fixed(cors)
    replaced = frozenset({_ACAO, *(name for name, _ in fixed)})

    def allowed(ctx: RequestCtx) -> bytes | None:
        """The Access-Control-Allow-Origin to answer, or None (no CORS headers)."""
        if any_origin:
            return b"*"
        origin = ctx.header(_ORIGIN)
        if origin is None or pattern is None or pattern.fullmatch(origin.decode("latin-1")) is None:
            return None
        return origin

    def request(ctx: RequestCtx) -> Answer | None:
        if ctx.method != b"OPTIONS" or ctx.header(b"access-control-request-method") is None \
                or ctx.header(_ORIGIN) is None or allowed(ctx) is None:
            return None
        return Answer(204, b"", _PREFLIGHT_TYPE)

    def response(ctx: RequestCtx, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        origin = allowed(ctx)
        if origin is None:
            return
        headers[:] = [(n, v) for n, v in headers if n not in replaced]
        headers.append((_ACAO, origin))
        headers.extend(fixed)
        if not any_origin:
            headers.append((b"vary", b"Origin"))

    origins = "*" if any_origin else (", ".join(cors.allow_origins) or "none")
    credentials = " with credentials" if cors.allow_credentials else ""
    explain = f"CORS: origins {origins}{credentials}; preflight answered 204 (enable-cors)"
    return (Policy(REWRITE, request=request, response=response, explain=explain),)
