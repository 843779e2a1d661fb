"""Per-route policies (sans-I/O): compiled once per route from its ``RoutePolicy``, run per request.

Theory of operation
-------------------
Translation parses every annotation once into typed fields of ``RoutePolicy`` (and of
``Upstream``/``VirtualHost`` for what belongs there).  A worker compiles each route's fields,
the first time a request matches the route, into a ``Compiled`` set of hooks (closures over
the parsed values: no annotation string, no dict lookup by name at request time).  A route
without policies compiles to ``None`` and pays nothing.

The hooks of one route, in nginx's phase order (``Policy.phase``):

* ``REWRITE``: answers that come before any access check (``permanent-redirect``, ``app-root``,
  CORS preflight);
* ``PREACCESS``: rate and connection limits;
* ``ACCESS``: source ranges, basic auth, client certificates, external auth;
* ``CONTENT``: what the upstream gets (``x-forwarded-prefix``, headers from an auth answer).

``request(ctx)`` returns ``None`` (go on), an ``Answer`` (answer it, e.g. 403), or a ``Defer``
whose coroutine a trio task awaits (an auth subrequest); its result (``None`` or an ``Answer``)
resumes the request with the next hook.  ``select(ctx, upstream, addresses)`` may choose the
endpoint (affinity, hashing) and ``backend(ctx, action)`` the backend (canary).
``response(ctx, status, headers)`` edits the response head (CORS headers, affinity cookies),
and ``done(ctx)`` runs when the request ends however it ends (a connection-limit slot goes back).
``intercept(ctx, status, headers)`` sees an upstream's response head before anything of it is
sent (``headers``; None for an error we generated ourselves: 502, 504) and may return a
``Refetch``: the response is dropped and the data path asks another backend instead
(custom-http-errors); ``unavailable(ctx, upstream)`` may do the same when the chosen upstream
has no ready endpoint (default-backend).  Both are answered by ``workers.decide.refetch``.

``RequestCtx`` is the request as hooks see it; it exists only for routes with policies.
Areas live in modules of their own (``workers.policies.*``); ``COMPILERS`` lists them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from fastingress.snapshot.schema import Forward, Route, Snapshot, Upstream, VirtualHost
from workers.heads import TEXT, RequestInfo

if TYPE_CHECKING:
    from workers.balance import Address

REWRITE, PREACCESS, ACCESS, CONTENT = range(4)


class Answer(NamedTuple):
    """Answer the request ourselves (``ctx``: the route's policies, when it has any)."""

    status: int
    body: bytes
    content_type: bytes = TEXT
    extra: tuple[tuple[bytes, bytes], ...] = ()
    ctx: RequestCtx | None = None


class Refetch(NamedTuple):
    """Answer with another backend's answer instead (custom-http-errors, default-backend).

    ``upstream``: the Upstream to ask (None or unusable: answer ``status`` ourselves);
    ``target``: the request target to send (None: the request's own, body and all);
    ``headers``: request headers to set (replacing any of the same names)."""

    status: int
    upstream: str | None
    target: bytes | None
    headers: tuple[tuple[bytes, bytes], ...] = ()


class Defer(NamedTuple):
    """Wait for ``run()`` in a task; its result is what ``request`` would have returned."""

    run: Callable[[], Awaitable[Answer | None]]


class RequestCtx:
    """One request as policies see it (see the module docstring)."""

    __slots__ = (
        "_cookies", "backend_name", "client_ip", "done_hooks", "headers", "host", "info", "intercept_hooks",
        "limit_rate", "method", "now", "path", "query", "response_headers", "response_hooks", "route",
        "splice_ok", "state", "target", "tls", "tls_peer", "upstream_headers", "vhost",
    )

    def __init__(
        self,
        *,
        method: bytes,
        target: bytes,
        path: str,
        query: str,
        host: bytes,
        headers: list[tuple[bytes, bytes]],
        client_ip: str,
        tls: bool,
        route: Route,
        vhost: VirtualHost | None,
        now: float,
        tls_peer: object = None,
        info: RequestInfo | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.host = host
        self.headers = headers  # end-to-end request headers (lower-case names), forwarded as they are
        self.client_ip = client_ip
        self.tls = tls
        self.route = route
        self.vhost = vhost
        self.now = now  # the worker's clock (trio.current_time), for limits and caches
        self.tls_peer = tls_peer  # the client's TLS connection (client certificates), or None
        self.info = info  # the request's framing facts (X-Request-ID: ``info.new_request_id()``)
        self.upstream_headers: list[tuple[bytes, bytes]] = []  # added to the upstream request
        self.response_headers: list[tuple[bytes, bytes]] = []  # added to the response
        self.response_hooks: tuple[ResponseHook, ...] = ()
        self.done_hooks: tuple[DoneHook, ...] = ()
        self.intercept_hooks: tuple[InterceptHook, ...] = ()  # emptied once a Refetch is under way
        self.backend_name: str | None = None  # set by a backend hook (canary)
        self.splice_ok = True  # False: a policy paces or reads the response body (no kernel splice)
        self.state: dict[str, object] = {}  # per-request scratch space of the hooks
        # limit-rate: (bytes per second, bytes before the rate applies); the data path paces
        # the response (workers.pacing)
        self.limit_rate: tuple[int, int] | None = None
        self._cookies: dict[str, str] | None = None

    def header(self, name: bytes) -> bytes | None:
        """The first value of a request header (lower-case name)."""
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def cookie(self, name: str) -> str | None:
        """The first cookie of that name, as nginx's ``$cookie_NAME``: ``name=value`` pairs split at
        ``;``, so one odd cookie (a JSON value, a space) does not hide the others."""
        cookies = self._cookies
        if cookies is None:
            cookies = self._cookies = {}
            for n, v in self.headers:
                if n == b"cookie":
                    for pair in v.decode("latin-1").split(";"):
                        key, eq, value = pair.partition("=")
                        key = key.strip()
                        if eq and key:
                            value = value.strip()
                            if len(value) >= 2 and value[0] == value[-1] == '"':
                                value = value[1:-1]
                            cookies.setdefault(key, value)
        return cookies.get(name)

    def respond(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Run the response hooks on a response head we are about to send (edits ``headers``)."""
        if self.response_headers:
            headers.extend(self.response_headers)
        for hook in self.response_hooks:
            hook(self, status, headers)

    def intercept(self, status: int, headers: Headers | None) -> Refetch | None:
        """An upstream answered ``status`` (``headers``; None: we failed to reach it): whether
        to answer with another backend's answer instead (see ``Refetch``)."""
        for hook in self.intercept_hooks:
            fetch = hook(self, status, headers)
            if fetch is not None:
                return fetch
        return None

    def finish(self) -> None:
        """The request ended (answered, failed or abandoned): run the done hooks once."""
        hooks = self.done_hooks
        self.done_hooks = ()
        for hook in hooks:
            hook(self)


Headers = Sequence[tuple[bytes, bytes]]
RequestHook = Callable[[RequestCtx], "Answer | Defer | None"]
ResponseHook = Callable[[RequestCtx, int, list[tuple[bytes, bytes]]], None]
DoneHook = Callable[[RequestCtx], None]
SelectHook = Callable[[RequestCtx, Upstream, "tuple[Address, ...]"], "tuple[Address, Address | None] | None"]
BackendHook = Callable[[RequestCtx, Forward], "str | None"]
InterceptHook = Callable[[RequestCtx, int, "Headers | None"], "Refetch | None"]
UnavailableHook = Callable[[RequestCtx, Upstream], "Refetch | None"]


class Policy(NamedTuple):
    """One compiled policy of a route: its phase and the hooks it has (None: none)."""

    phase: int
    request: RequestHook | None = None
    response: ResponseHook | None = None
    done: DoneHook | None = None
    select: SelectHook | None = None
    backend: BackendHook | None = None
    explain: str = ""  # one line for ``fastingress explain``
    intercept: InterceptHook | None = None  # (area http) custom-http-errors
    unavailable: UnavailableHook | None = None  # (area http) default-backend


class Compiled(NamedTuple):
    request: tuple[RequestHook, ...]
    response: tuple[ResponseHook, ...]
    done: tuple[DoneHook, ...]
    select: tuple[SelectHook, ...]
    backend: tuple[BackendHook, ...]
    policies: tuple[Policy, ...]
    intercept: tuple[InterceptHook, ...] = ()
    unavailable: tuple[UnavailableHook, ...] = ()


Compiler = Callable[[Route, Snapshot], Sequence[Policy]]


def compile_route(route: Route, snapshot: Snapshot, compilers: Sequence[Compiler]) -> Compiled | None:
    """Every policy of ``route``, hooks in phase order; None for a route without any."""
    found: list[Policy] = []
    for compiler in compilers:
        found.extend(compiler(route, snapshot))
    if not found:
        return None
    found.sort(key=lambda p: p.phase)  # stable: compilers keep their order inside a phase
    return Compiled(
        request=tuple(p.request for p in found if p.request is not None),
        response=tuple(p.response for p in found if p.response is not None),
        done=tuple(p.done for p in found if p.done is not None),
        select=tuple(p.select for p in found if p.select is not None),
        backend=tuple(p.backend for p in found if p.backend is not None),
        policies=tuple(found),
        intercept=tuple(p.intercept for p in found if p.intercept is not None),
        unavailable=tuple(p.unavailable for p in found if p.unavailable is not None),
    )


def run_request_hooks(
    ctx: RequestCtx, hooks: Sequence[RequestHook], start: int = 0
) -> tuple[int, Answer | Defer | None]:
    """Run ``hooks[start:]`` until one answers or defers: (its index, what it returned)."""
    for i in range(start, len(hooks)):
        result = hooks[i](ctx)
        if result is not None:
            return i, result
    return len(hooks), None


__all__ = [
    "ACCESS", "CONTENT", "PREACCESS", "REWRITE", "Answer", "BackendHook", "Compiled", "Compiler", "Defer",
    "DoneHook", "Headers", "InterceptHook", "Policy", "Refetch", "RequestCtx", "RequestHook", "ResponseHook",
    "SelectHook", "UnavailableHook", "compile_route", "run_request_hooks",
]
