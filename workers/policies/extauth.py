"""External authentication (``auth-url``): nginx's ``auth_request`` as ingress-nginx sets it up.

Theory of operation
-------------------
ingress-nginx's template (``rootfs/etc/nginx/template/nginx.tmpl``) gives every location with
``auth-url`` an ``auth_request`` to an internal ``location = /_external-auth-...`` that
proxies to the URL; ``internal/ingress/annotations/authreq`` parses the annotations and
``test/e2e/annotations/auth.go`` pins the behaviour.  Here one ACCESS-phase request hook does
what those locations do:

1. The subrequest (``_Spec.subrequest``): ``GET`` (nginx's ``ngx_http_subrequest`` sets the
   method to GET; ``auth-method`` sets ``proxy_method``) to the auth URL, with every
   end-to-end header of the client request (``proxy_pass_request_headers on``) but no body
   and no Content-Length (``proxy_pass_request_body off``), ``Host`` the URL's host name,
   and the headers the template sets: ``X-Original-URL`` (``$scheme://$http_host
   $request_uri``), ``X-Original-Method``, ``X-Sent-From: nginx-ingress-controller``,
   ``X-Real-IP`` and ``X-Forwarded-For`` (the client's address), ``X-Request-ID``,
   ``X-Auth-Request-Redirect`` (``auth-request-redirect``, else ``$request_uri``), with
   ``auth-method`` also ``X-Original-URI`` and ``X-Scheme``; then the headers of the
   ``auth-proxy-set-headers`` ConfigMap.  Unlike the template, which blanks
   ``X-Forwarded-Proto`` and passes a client's ``X-Forwarded-Host`` through, fastingress
   sends its own ``X-Forwarded-Host`` and ``X-Forwarded-Proto`` (a client cannot forge them).
2. The answer (``ngx_http_auth_request_module``): 2xx lets the request through, with the
   ``auth-response-headers`` copied from the answer to the upstream request (replacing what
   the client sent under those names; a header the answer lacks is removed, as
   ``proxy_set_header`` with an empty value does); 401 is answered 401 with the answer's
   ``WWW-Authenticate``, or with ``auth-signin`` a 302 to it (``rd=`` the original URL,
   composed in translation); 403 is answered 403; anything else, and a subrequest that
   fails or times out, is 500 with one log line.  The answer's ``Set-Cookie`` headers are
   added to the response when its status is 200, 201, 204, 206, 301, 302, 303, 304, 307 or
   308 (nginx's ``add_header``), on any status with ``auth-always-set-cookie``; each one is
   sent as a header of its own (nginx 1.23+ would join them into one line).
3. The cache (``auth-cache-key`` + ``auth-cache-duration``, nginx's ``proxy_cache`` in the
   auth location): the outcome is kept per worker under (route host, path and path type,
   the key expression's value) for the duration of the first ``proxy_cache_valid`` rule
   naming its status; ``X-Accel-Expires``, ``Cache-Control`` (no-cache, no-store, private,
   s-maxage, max-age) and ``Expires`` of the answer take precedence, an answer with
   ``Set-Cookie`` or ``Vary: *`` is not kept, and only GET/HEAD subrequests are cached
   (nginx's ``proxy_cache_methods``).  A hit answers without waiting: no task, no I/O.
   Unlike nginx's cache (one per node, on disk), this one is per worker, in memory, and
   holds hashes of the keys, not the credentials in them.

The connections (``workers.authclient``) and the cache live in the trio run (a ``RunVar``:
one worker process, across snapshots: a new route table keeps both).
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple
from urllib.parse import urlsplit

import trio

from fastingress.snapshot.nginxvars import template_text
from fastingress.snapshot.schema import CacheValid, ExternalAuth, Route, Snapshot
from workers.authclient import AuthAnswer, AuthClient, AuthFailed, Limits, Origin
from workers.heads import TEXT, error_body
from workers.http1 import valid_value
from workers.nginxvars import Render, compile_template
from workers.policy import ACCESS, Answer, Defer, Policy, RequestCtx

log = logging.getLogger("fastingress.worker")

Header = tuple[bytes, bytes]
COOKIE_STATUSES = frozenset({200, 201, 204, 206, 301, 302, 303, 304, 307, 308})  # nginx add_header
CACHE_METHODS = frozenset({b"GET", b"HEAD"})  # proxy_cache_methods
MAX_CACHE_ENTRIES = 10000
_COOKIES = "extauth.cookies"
_SENT_FROM = b"nginx-ingress-controller"


class Outcome(NamedTuple):
    """What of an auth answer matters to the request (and is cached)."""

    status: int
    copied: tuple[Header, ...] = ()  # auth-response-headers, under the names the annotation gives
    cookies: tuple[bytes, ...] = ()  # Set-Cookie values
    challenges: tuple[bytes, ...] = ()  # WWW-Authenticate values of a 401


class BadURL(ValueError):
    """An auth URL (after its variables) that cannot be requested."""


def parse_url(text: str) -> tuple[Origin, bytes, bytes]:
    """(origin, request-target, Host header) of an absolute http(s) URL; BadURL if unusable."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise BadURL(f"{text!r}: {exc}") from None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host or parts.username is not None:
        raise BadURL(f"{text!r} is not an http(s) URL with a host")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        raw_target = target.encode("ascii")
        host_header = (f"[{host}]" if ":" in host else host).encode("ascii")
    except UnicodeEncodeError:
        raise BadURL(f"{text!r} is not ASCII") from None
    if not valid_value(raw_target) or b" " in raw_target or not valid_value(host_header):
        raise BadURL(f"{text!r} has characters a request line cannot carry")
    origin = Origin(scheme, host, port if port is not None else (443 if scheme == "https" else 80))
    return origin, raw_target, host_header


# --- the cache ------------------------------------------------------------------------------


def _cache_control(value: str) -> float | None:
    """Seconds from Cache-Control (0: do not cache), None when it says nothing about time."""
    lower = value.lower()
    if any(word in lower for word in ("no-cache", "no-store", "private")):
        return 0.0
    for name in ("s-maxage=", "max-age="):  # nginx looks for s-maxage first
        at = lower.find(name)
        if at != -1:
            digits = ""
            for ch in lower[at + len(name):]:
                if not ch.isdigit():
                    break
                digits += ch
            return float(digits) if digits else 0.0
    return None


def cache_seconds(
    rules: Sequence[CacheValid], status: int, headers: Sequence[Header], *, wall: float
) -> float:
    """How long nginx's proxy_cache would keep this answer (0: not at all); ``wall``: time.time()."""
    seconds: float | None = None
    for name, value in headers:
        if name == b"set-cookie":
            return 0.0
        if name == b"vary" and value.strip() == b"*":
            return 0.0
    for name, value in headers:  # X-Accel-Expires, then Cache-Control, then Expires
        if name == b"x-accel-expires":
            text = value.decode("latin-1").strip()
            if text.startswith("@") and text[1:].isdigit():
                return max(float(text[1:]) - wall, 0.0)
            if text.isdigit():
                return float(text)
    for name, value in headers:
        if name == b"cache-control":
            found = _cache_control(value.decode("latin-1"))
            if found is not None:
                seconds = found if seconds is None else min(seconds, found)
    if seconds is not None:
        return seconds
    for name, value in headers:
        if name == b"expires":
            try:
                when = email.utils.parsedate_to_datetime(value.decode("latin-1"))
            except (TypeError, ValueError, IndexError):
                return 0.0  # an invalid Expires means "already expired"
            return max(when.timestamp() - wall, 0.0)
    for rule in rules:
        if not rule.statuses or status in rule.statuses:
            return rule.seconds
    return 0.0


class AuthCache:
    """Outcomes by key, each until its expiry, least recently used ones dropped past ``size``."""

    __slots__ = ("_entries", "size")

    def __init__(self, size: int = MAX_CACHE_ENTRIES) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[float, Outcome]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(zone: str, value: str) -> bytes:
        return hashlib.blake2b(f"{zone}\n{value}".encode("utf-8", "surrogateescape"), digest_size=16).digest()

    def get(self, key: bytes, now: float) -> Outcome | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: bytes, outcome: Outcome, expires: float) -> None:
        entries = self._entries
        entries[key] = (expires, outcome)
        entries.move_to_end(key)
        while len(entries) > self.size:
            entries.popitem(last=False)


class Shared:
    """What every route with external auth shares in one worker: connections and the cache."""

    __slots__ = ("cache", "client")

    def __init__(self) -> None:
        self.client = AuthClient()
        self.cache = AuthCache()


_SHARED: trio.lowlevel.RunVar[Shared] = trio.lowlevel.RunVar("fastingress_extauth")


def shared() -> Shared:
    """This trio run's (this worker's) Shared state."""
    try:
        return _SHARED.get()
    except LookupError:
        state = Shared()
        _SHARED.set(state)
        return state


# --- one route's compiled policy -------------------------------------------------------------


def _ascii(value: str) -> bytes:
    return value.encode("latin-1", "replace")


class _Spec:
    """One route's ExternalAuth, compiled: templates as functions, names as bytes."""

    def __init__(self, auth: ExternalAuth, route: Route) -> None:
        self.auth = auth
        self.route = route
        self.url = compile_template(auth.url)
        self.static = None if len(auth.url) != 1 else parse_url(auth.url[0])
        self.method = auth.method.encode() if auth.method else b"GET"
        self.signin: Render | None = compile_template(auth.signin) if auth.signin else None
        self.copy = tuple((name.encode(), name.replace("-", "_").encode()) for name in auth.response_headers)
        self.copy_names = frozenset(name for name, _ in self.copy)
        self.redirect = compile_template(auth.request_redirect)
        self.extra = tuple((h.name.encode(), compile_template(h.value)) for h in auth.proxy_set_headers)
        self.cache_key = compile_template(auth.cache_key) if auth.cache_key else None
        self.limits = Limits(auth.keepalive, auth.keepalive_requests, auth.keepalive_timeout,
                             auth.connect_timeout, auth.read_timeout)
        own = [b"host", b"content-length", b"x-original-url", b"x-original-method", b"x-sent-from",
               b"x-real-ip", b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"x-request-id",
               b"x-auth-request-redirect", *(name for name, _ in self.extra)]
        if auth.method:
            own += [b"x-original-uri", b"x-scheme"]
        self.own = frozenset(own)

    # -- the subrequest ------------------------------------------------------------------

    def where(self, ctx: RequestCtx) -> tuple[Origin, bytes, bytes]:
        if self.static is not None:
            return self.static
        return parse_url(self.url(ctx))

    def subrequest(self, ctx: RequestCtx, host: bytes) -> list[Header]:
        """The subrequest's headers (see the module docstring, 1)."""
        own = self.own
        scheme = b"https" if ctx.tls else b"http"
        ip = ctx.client_ip.encode()
        headers = [(b"host", host)]
        headers += [(n, v) for n, v in ctx.headers if n not in own]
        rid = ctx.info.new_request_id() if ctx.info is not None else None
        headers += [
            (b"x-original-url", scheme + b"://" + ctx.host + ctx.target),
            (b"x-original-method", ctx.method),
            (b"x-sent-from", _SENT_FROM),
            (b"x-real-ip", ip),
            (b"x-forwarded-for", ip),
            (b"x-forwarded-host", ctx.host),
            (b"x-forwarded-proto", scheme),
        ]
        if rid is not None:
            headers.append((b"x-request-id", rid))
        if self.auth.method:
            headers += [(b"x-original-uri", ctx.target), (b"x-scheme", scheme)]
        for name, render in ((b"x-auth-request-redirect", self.redirect), *self.extra):
            value = _ascii(render(ctx))
            if value and valid_value(value):  # (nginx sends no header for an empty value)
                headers.append((name, value))
        return headers

    def outcome(self, answer: AuthAnswer) -> Outcome:
        heads = answer.headers
        copied: list[Header] = []
        for name, key in self.copy:
            values = [v for n, v in heads if n.replace(b"-", b"_") == key]
            if values:
                copied.append((name, b", ".join(values)))
        cookies = tuple(v for n, v in heads if n == b"set-cookie")
        challenges = tuple(v for n, v in heads if n == b"www-authenticate") if answer.status == 401 else ()
        return Outcome(answer.status, tuple(copied), cookies, challenges)

    # -- the decision --------------------------------------------------------------------

    def apply(self, ctx: RequestCtx, outcome: Outcome) -> Answer | None:
        """Let the request through (None) or answer it (see the module docstring, 2)."""
        if outcome.cookies:
            ctx.state[_COOKIES] = outcome.cookies
        status = outcome.status
        if 200 <= status < 300:
            if self.copy_names:
                names = self.copy_names
                ctx.headers[:] = [(n, v) for n, v in ctx.headers if n not in names]
                ctx.upstream_headers.extend(outcome.copied)
            return None
        if status == 401:
            if self.signin is not None:
                location = _ascii(self.signin(ctx))
                if valid_value(location):
                    return Answer(302, error_body(302), TEXT, ((b"location", location),))
                self.fail(ctx, f"the signin URL {location!r} is not a valid Location")
                return Answer(500, error_body(500))
            challenges = tuple((b"www-authenticate", c) for c in outcome.challenges)
            return Answer(401, error_body(401), TEXT, challenges)
        if status == 403:
            return Answer(403, error_body(403))
        self.fail(ctx, f"auth request unexpected status: {status}")
        return Answer(500, error_body(500))

    def fail(self, ctx: RequestCtx, why: str) -> None:
        rid = ctx.info.request_id.decode("latin-1") if ctx.info is not None and ctx.info.request_id else "-"
        log.error(
            "external auth failed: %s %s host=%s route=%s ingress=%s auth=%s request_id=%s: %s",
            ctx.method.decode("latin-1"), ctx.target.decode("latin-1")[:200], ctx.host.decode("latin-1"),
            self.route.path, self.route.ingress or "-", template_text(self.auth.url), rid, why,
        )

    async def check(self, ctx: RequestCtx, key: bytes | None) -> Answer | None:
        """The subrequest, in a task: its outcome applied (and cached)."""
        state = shared()
        try:
            origin, target, host = self.where(ctx)
            headers = self.subrequest(ctx, host)
            answer = await state.client.request(origin, self.method, target, headers, self.limits)
        except (AuthFailed, BadURL) as exc:
            self.fail(ctx, str(exc))
            return Answer(500, error_body(500))
        except Exception:  # a bug must cost this request (500), never leave it hanging
            route = self.route
            log.exception("external auth: internal error (route %s of %s)", route.path, route.ingress or "-")
            return Answer(500, error_body(500))
        outcome = self.outcome(answer)
        if key is not None:
            seconds = cache_seconds(self.auth.cache_valid, answer.status, answer.headers, wall=time.time())
            if seconds > 0:
                state.cache.put(key, outcome, trio.current_time() + seconds)
        return self.apply(ctx, outcome)

    def request(self, ctx: RequestCtx) -> Answer | Defer | None:
        key = None
        if self.cache_key is not None and self.method in CACHE_METHODS:
            cache = shared().cache
            key = cache.key(self.auth.cache_zone, self.cache_key(ctx))
            hit = cache.get(key, ctx.now)
            if hit is not None:
                return self.apply(ctx, hit)
        return Defer(partial(self.check, ctx, key))

    def response(self, ctx: RequestCtx, status: int, headers: list[Header]) -> None:
        cookies = ctx.state.get(_COOKIES)
        if cookies and (self.auth.always_set_cookie or status in COOKIE_STATUSES):
            assert isinstance(cookies, tuple)
            headers.extend((b"set-cookie", c) for c in cookies)

    def explain(self) -> str:
        auth = self.auth
        text = f"external auth: {auth.method or 'GET'} {template_text(auth.url)} (auth-url)"
        if auth.signin:
            text += f"; 401 -> 302 to {template_text(auth.signin)} (auth-signin)"
        if auth.response_headers:
            text += f"; upstream gets {', '.join(auth.response_headers)} (auth-response-headers)"
        if auth.cache_key:
            text += f"; cached by {template_text(auth.cache_key)} (auth-cache-key)"
        return text


def compile(route: Route, snapshot: Snapshot) -> Sequence[Policy]:
    auth = route.policy.external_auth
    if auth is None or not auth.url:
        return ()
    try:
        spec = _Spec(auth, route)
    except (BadURL, KeyError) as exc:  # translation validates both; a hand-made snapshot may not
        log.error(  # noqa: TRY400 (a snapshot's mistake: no traceback)
            "route %s of %s: external auth cannot be used (%s): answering 500",
            route.path, route.ingress or "-", exc,
        )

        def refuse(ctx: RequestCtx) -> Answer:
            return Answer(500, error_body(500))

        return (Policy(ACCESS, request=refuse, explain="external auth: invalid, every request gets 500"),)
    return (Policy(ACCESS, request=spec.request, response=spec.response, explain=spec.explain()),)


__all__ = [
    "CACHE_METHODS", "COOKIE_STATUSES", "AuthCache", "BadURL", "Outcome", "Shared", "cache_seconds",
    "compile", "parse_url", "shared",
]
