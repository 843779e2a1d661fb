"""Header rules of a route (``HeaderRules``), as ingress-nginx's template sets them:

* ``custom-headers``: ``more_set_headers "<name>: <value>"`` for each ConfigMap entry: set on
  every response of the route (our own answers too), replacing what the upstream sent;
* ``proxy-redirect-from``/``-to``: nginx ``proxy_redirect <from> <to>``: a ``Location`` or
  ``Refresh`` (its ``url=``) whose URL starts with ``from`` (case-sensitive) gets ``to`` instead;
* ``proxy-cookie-domain``: nginx ``proxy_cookie_domain <domain> <replacement>``: a
  ``Set-Cookie`` whose ``domain=`` equals ``domain`` (case-insensitive, leading dots ignored)
  gets ``replacement`` (a leading dot of the original stays);
* ``proxy-cookie-path``: nginx ``proxy_cookie_path <path> <replacement>``: a ``path=`` that
  starts with ``path`` (case-sensitive) has that prefix replaced;
* ``connection-proxy-header``: the ``Connection`` header the upstream gets (``close``: the
  upstream closes after answering, so its connection is never reused).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastingress.snapshot.schema import HeaderRules, Route, Snapshot
from workers.http1 import valid_value
from workers.policy import CONTENT, Policy, RequestCtx

Rewrite = Callable[[bytes], bytes]


def redirect_rewriter(prefix: str, replacement: str) -> Callable[[bytes, bytes], bytes]:
    """(header name, value) -> value for Location and Refresh (nginx proxy_redirect)."""
    old = prefix.encode("latin-1")
    new = replacement.encode("latin-1")

    def rewrite(name: bytes, value: bytes) -> bytes:
        if name == b"location":
            return new + value[len(old):] if value.startswith(old) else value
        lower = value.lower()
        at = lower.find(b"url=")  # Refresh: "5; url=http://..."
        if at == -1:
            return value
        start = at + 4
        if value.startswith(old, start):
            return value[:start] + new + value[start + len(old):]
        return value

    return rewrite


def cookie_rewriter(domain: tuple[str, str] | None, path: tuple[str, str] | None) -> Rewrite:
    """Set-Cookie value -> value (nginx proxy_cookie_domain / proxy_cookie_path)."""
    want_domain = domain[0].lstrip(".").lower().encode("latin-1") if domain else None
    new_domain = domain[1].encode("latin-1") if domain else b""
    old_path = path[0].encode("latin-1") if path else None
    new_path = path[1].encode("latin-1") if path else b""

    def rewrite(value: bytes) -> bytes:
        parts = value.split(b";")
        changed = False
        for i in range(1, len(parts)):  # parts[0] is name=value
            attr = parts[i]
            name, eq, current = attr.partition(b"=")
            key = name.strip().lower()
            if not eq:
                continue
            lead = attr[: len(attr) - len(attr.lstrip())]
            if key == b"domain" and want_domain is not None:
                text = current.strip()
                dot = b"." if text.startswith(b".") else b""
                if text.lstrip(b".").lower() == want_domain:
                    parts[i] = lead + name.strip() + b"=" + dot + new_domain
                    changed = True
            elif key == b"path" and old_path is not None:
                text = current.strip()
                if text.startswith(old_path):
                    parts[i] = lead + name.strip() + b"=" + new_path + text[len(old_path):]
                    changed = True
        return b";".join(parts) if changed else value

    return rewrite


def compile(route: Route, snapshot: Snapshot) -> Sequence[Policy]:
    rules = route.policy.headers
    if rules is None:
        return ()
    policies: list[Policy] = []
    if rules.response or rules.redirect_from or rules.cookie_domain or rules.cookie_path:
        policies.append(_response_policy(rules))
    if rules.connection:
        value = rules.connection.encode()

        def request(ctx: RequestCtx) -> None:
            ctx.upstream_headers.append((b"connection", value))

        explain = f"Connection: {rules.connection} to the upstream (connection-proxy-header)"
        policies.append(Policy(CONTENT, request=request, explain=explain))
    return tuple(policies)


def _response_policy(rules: HeaderRules) -> Policy:
    custom = tuple(
        (n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in rules.response
        if valid_value(v.encode("latin-1", "replace"))  # (translation checks them; a hand-made snapshot?)
    )
    custom_names = frozenset(name for name, _ in custom)
    redirect = redirect_rewriter(rules.redirect_from, rules.redirect_to) if rules.redirect_from else None
    cookies = cookie_rewriter(rules.cookie_domain, rules.cookie_path) \
        if rules.cookie_domain or rules.cookie_path else None

    def response(ctx: RequestCtx, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if redirect is not None or cookies is not None:
            for i, (name, value) in enumerate(headers):
                if redirect is not None and name in (b"location", b"refresh"):
                    headers[i] = (name, redirect(name, value))
                elif cookies is not None and name == b"set-cookie":
                    headers[i] = (name, cookies(value))
        if custom:
            headers[:] = [(n, v) for n, v in headers if n not in custom_names]
            headers.extend(custom)

    what = []
    if custom:
        what.append("custom-headers " + ", ".join(name for name, _ in rules.response))
    if redirect is not None:
        what.append(f"proxy-redirect {rules.redirect_from} -> {rules.redirect_to}")
    if rules.cookie_domain:
        what.append("proxy-cookie-domain {} -> {}".format(*rules.cookie_domain))
    if rules.cookie_path:
        what.append("proxy-cookie-path {} -> {}".format(*rules.cookie_path))
    return Policy(CONTENT, response=response, explain="response headers: " + "; ".join(what))
