"""``upstream-hash-by`` expressions (sans-I/O): nginx variables and text, parsed once, evaluated
per request from a ``RequestCtx``.

ingress-nginx accepts ``[A-Za-z0-9_${}-]`` in the value (``$request_uri``, ``$host$uri``,
``${request_uri}-x``) and evaluates it with ``ngx.var`` (``util.parse_complex_value`` and
``generate_var_value`` in its Lua).  We support the variables a hash key is made of in practice;
translation refuses any other one by name, so a typo never silently hashes everything to one
endpoint.  Shared by translation (``parse_hash_by`` validates) and the workers (``compile_key``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from urllib.parse import parse_qsl

from workers.policy import RequestCtx

_PART = re.compile(r"\$\{([A-Za-z0-9_]+)\}|\$([A-Za-z0-9_]+)|([^$]+)|(\$)")
_ALLOWED = re.compile(r"^[A-Za-z0-9_${}-]*$")

Getter = Callable[[RequestCtx], str]


def _query(ctx: RequestCtx) -> str:
    return ctx.query[1:] if ctx.query.startswith("?") else ctx.query


def _host(ctx: RequestCtx) -> str:
    """nginx's $host: the Host header in lower case without its port (``workers.routing``'s rule)."""
    host = ctx.host.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rpartition(":")[0].rstrip(".") if ":" in host else host.rstrip(".")


def _binary_addr(ctx: RequestCtx) -> str:
    try:
        return ipaddress.ip_address(ctx.client_ip).packed.decode("latin-1")
    except ValueError:
        return ""


_FIXED: dict[str, Getter] = {
    "request_uri": lambda ctx: ctx.target.decode("latin-1"),
    "uri": lambda ctx: ctx.path,
    "document_uri": lambda ctx: ctx.path,
    "args": _query,
    "query_string": _query,
    "remote_addr": lambda ctx: ctx.client_ip,
    "binary_remote_addr": _binary_addr,
    "host": _host,
    "scheme": lambda ctx: "https" if ctx.tls else "http",
    "request_method": lambda ctx: ctx.method.decode("latin-1"),
}
_PREFIXED = ("http_", "cookie_", "arg_")
VARIABLES = (*sorted(_FIXED), *(p + "NAME" for p in _PREFIXED))


def _header(name: str) -> Getter:
    wanted = name.lower().replace("_", "-").encode("latin-1")

    def get(ctx: RequestCtx) -> str:
        value = ctx.header(wanted)
        return value.decode("latin-1") if value is not None else ""

    return get


def _cookie(name: str) -> Getter:
    return lambda ctx: ctx.cookie(name) or ""


def _arg(name: str) -> Getter:
    def get(ctx: RequestCtx) -> str:
        for key, value in parse_qsl(_query(ctx), keep_blank_values=True):
            if key == name:
                return value
        return ""

    return get


def _variable(name: str) -> Getter:
    fixed = _FIXED.get(name)
    if fixed is not None:
        return fixed
    for prefix, make in (("http_", _header), ("cookie_", _cookie), ("arg_", _arg)):
        if name.startswith(prefix) and len(name) > len(prefix):
            return make(name[len(prefix):])
    raise ValueError(f"${name} is not a variable fastingress can hash on (known: {', '.join(VARIABLES)})")


def parse_hash_by(text: str) -> tuple[str | Getter, ...]:
    """The parts of an expression: literal text and variable getters; ValueError if unusable."""
    if not text or not _ALLOWED.match(text):
        raise ValueError("expected nginx variables and text, e.g. $request_uri or ${host}-x")
    parts: list[str | Getter] = []
    variables = 0
    for match in _PART.finditer(text):
        braced, bare, literal, dollar = match.groups()
        if literal is not None or dollar is not None:
            parts.append(literal if literal is not None else "$")
            continue
        parts.append(_variable(braced or bare))
        variables += 1
    if not variables:
        raise ValueError("no variable in it: every request would go to the same endpoint")
    return tuple(parts)


def compile_key(text: str) -> Callable[[RequestCtx], str] | None:
    """The request's hash key for ``text``; None if the expression is unusable (translation
    refuses those, so only a hand-made snapshot gets here)."""
    try:
        parts = parse_hash_by(text)
    except ValueError:
        return None
    if len(parts) == 1 and callable(parts[0]):
        return parts[0]

    def key(ctx: RequestCtx) -> str:
        return "".join(p if isinstance(p, str) else p(ctx) for p in parts)

    return key


__all__ = ["VARIABLES", "compile_key", "parse_hash_by"]
