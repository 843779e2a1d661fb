"""nginx variables of a request (sans-I/O): templates from the snapshot, evaluated per request.

Theory of operation
-------------------
Translation parses values such as ``https://$host/oauth2/start?rd=$escaped_request_uri``
into templates (``fastingress.snapshot.nginxvars``: literal text and variable names,
alternating).  :func:`compile_template` turns one into a function of the request, once per
route: literal parts stay strings, each variable becomes a getter on ``RequestCtx``, and a
template without variables is a constant.  Nothing is parsed per request.

The getters follow nginx's definitions (``ngx_http_variables.c``) and ingress-nginx's
additions (``$pass_access_scheme``, ``$best_http_host``, ``$escaped_request_uri``,
``$namespace``...); differences: ``$http_NAME`` sees the end-to-end headers fastingress
forwards (not hop-by-hop ones, nor the ``X-Forwarded-*`` family and ``X-Request-ID``,
which it sets itself), and ``$uri``/``$args`` are those of the request, also where nginx
would show an auth subrequest's own.  Several headers of one name are joined with ", "
(``; `` for Cookie), as nginx 1.23+ does.
"""

from __future__ import annotations

import base64
import binascii
import random
from collections.abc import Callable, Sequence
from urllib.parse import quote

from workers.policy import RequestCtx

Getter = Callable[[RequestCtx], str]


def _latin(value: bytes) -> str:
    return value.decode("latin-1")


def host_name(ctx: RequestCtx) -> str:
    """nginx's $host: the Host header's name, lower-case, without its port; else the server name."""
    raw = _latin(ctx.host).strip().lower()
    bracket = raw.find("]") if raw.startswith("[") else -1
    name = raw[: bracket + 1] if bracket != -1 else raw.partition(":")[0]
    name = name.rstrip(".")
    if name:
        return name
    return ctx.vhost.hostname if ctx.vhost is not None else ""


def _scheme(ctx: RequestCtx) -> str:
    return "https" if ctx.tls else "http"


def _request_uri(ctx: RequestCtx) -> str:
    return _latin(ctx.target)


def _args(ctx: RequestCtx) -> str:
    return ctx.query[1:]


def remote_user(ctx: RequestCtx) -> str:
    """The user of a ``Authorization: Basic`` header (nginx's $remote_user), else empty."""
    value = ctx.header(b"authorization")
    if value is None:
        return ""
    scheme, _, credentials = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return ""
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        return ""
    user, colon, _ = decoded.partition(b":")
    return _latin(user) if colon else ""


def _request_id(ctx: RequestCtx) -> str:
    if ctx.info is not None:
        return _latin(ctx.info.new_request_id())
    rid = ctx.state.get("request_id")
    if not isinstance(rid, str):
        rid = ctx.state["request_id"] = f"{random.getrandbits(128):032x}"
    return rid


def _ingress_part(ctx: RequestCtx, index: int) -> str:
    parts = ctx.route.ingress.split("/", 1)
    return parts[index] if len(parts) == 2 else ""


def _service_name(ctx: RequestCtx) -> str:
    service = ctx.route.service.partition("/")[2]
    return service.rpartition(":")[0] if ":" in service else service


def _service_port(ctx: RequestCtx) -> str:
    service = ctx.route.service.partition("/")[2]
    return service.rpartition(":")[2] if ":" in service else ""


_GETTERS: dict[str, Getter] = {
    "host": host_name,
    "http_host": lambda ctx: _latin(ctx.host),
    "best_http_host": lambda ctx: _latin(ctx.host),
    "server_name": lambda ctx: ctx.vhost.hostname if ctx.vhost is not None else "",
    "scheme": _scheme,
    "pass_access_scheme": _scheme,
    "https": lambda ctx: "on" if ctx.tls else "",
    "request_uri": _request_uri,
    "escaped_request_uri": lambda ctx: quote(_latin(ctx.target), safe=""),
    "uri": lambda ctx: ctx.path,
    "document_uri": lambda ctx: ctx.path,
    "args": _args,
    "query_string": _args,
    "is_args": lambda ctx: "?" if len(ctx.query) > 1 else "",
    "request_method": lambda ctx: _latin(ctx.method),
    "remote_addr": lambda ctx: ctx.client_ip,
    "remote_user": remote_user,
    "request_id": _request_id,
    "req_id": _request_id,
    "namespace": lambda ctx: _ingress_part(ctx, 0),
    "ingress_name": lambda ctx: _ingress_part(ctx, 1),
    "service_name": _service_name,
    "service_port": _service_port,
    "location_path": lambda ctx: ctx.route.path,
}


def _header(name: str) -> Getter:
    wanted = name.replace("_", "-").encode("latin-1")
    if wanted == b"host":
        return lambda ctx: _latin(ctx.host)
    joiner = b"; " if wanted == b"cookie" else b", "

    def get(ctx: RequestCtx) -> str:
        values = [v for n, v in ctx.headers if n == wanted]
        return _latin(joiner.join(values)) if values else ""

    return get


def _cookie(name: str) -> Getter:
    return lambda ctx: ctx.cookie(name) or ""


def _arg(name: str) -> Getter:
    wanted = name.lower()

    def get(ctx: RequestCtx) -> str:
        for pair in ctx.query[1:].split("&"):
            key, _, value = pair.partition("=")
            if key.lower() == wanted:
                return value  # raw, as nginx gives it
        return ""

    return get


def getter(name: str) -> Getter:
    """The getter of one variable (a name translation validated; KeyError if unknown)."""
    found = _GETTERS.get(name)
    if found is not None:
        return found
    for prefix, make in (("http_", _header), ("cookie_", _cookie), ("arg_", _arg)):
        if name.startswith(prefix) and len(name) > len(prefix):
            return make(name[len(prefix):])
    raise KeyError(name)


Render = Callable[[RequestCtx], str]


def compile_template(template: Sequence[str]) -> Render:
    """A function of the request that renders ``template`` (KeyError on an unknown variable)."""
    if len(template) <= 1:
        constant = template[0] if template else ""
        return lambda ctx: constant
    pieces: list[str | Getter] = []
    for i, part in enumerate(template):
        if i % 2:
            pieces.append(getter(part))
        elif part:
            pieces.append(part)

    def render(ctx: RequestCtx) -> str:
        return "".join(p if isinstance(p, str) else p(ctx) for p in pieces)

    return render


__all__ = ["Getter", "Render", "compile_template", "getter", "host_name", "remote_user"]
