"""nginx variables in configuration values (``auth-url: https://$host/oauth2/auth``): which
names fastingress knows, and the parser that turns a value into a *template*.

Theory of operation
-------------------
ingress-nginx pastes several annotation values into nginx.conf, where nginx expands the
variables in them per request (``auth-url``, ``auth-signin``, ``auth-cache-key``, the values
of ``auth-proxy-set-headers``...).  Translation parses such a value once, with
:func:`parse_template`, into a tuple of strings that alternate literal text (even indices)
and variable names (odd indices), always of odd length::

    "https://$host/oauth2/start?rd=$escaped_request_uri"
    -> ("https://", "host", "/oauth2/start?rd=", "escaped_request_uri", "")

A name that is not in :data:`NAMES` (nor under one of :data:`PREFIXES`) is refused with
:class:`TemplateError`, so a worker only ever meets names it implements
(``workers.nginxvars`` evaluates a template against a request).  As in nginx, names are
case-insensitive (stored lower-case) and ``${name}`` may be written where text follows a
name directly.  This module is pure and shared by the translator and the workers.
"""

from __future__ import annotations

import difflib
import re

# name -> what it is (nginx's meaning; see workers.nginxvars for how each is computed)
VARIABLES: dict[str, str] = {
    "host": "the request's host name, lower-case, without the port (else the server name)",
    "http_host": "the Host header as sent",
    "best_http_host": "the Host header as sent (ingress-nginx)",
    "server_name": "the host name of the virtual host (its Ingress rule's host)",
    "scheme": "http or https",
    "pass_access_scheme": "http or https (ingress-nginx)",
    "https": '"on" over TLS, else empty',
    "request_uri": "the request-target as sent: path and query",
    "escaped_request_uri": "$request_uri percent-encoded as a URL component (ingress-nginx)",
    "uri": "the normalised path, without the query",
    "document_uri": "the same as $uri",
    "args": "the query without its ?",
    "query_string": "the same as $args",
    "is_args": '"?" when there is a query, else empty',
    "request_method": "the request's method",
    "remote_addr": "the client's address",
    "remote_user": "the user name of a Basic Authorization header",
    "request_id": "the request's X-Request-ID (the client's, else a new one)",
    "req_id": "the same as $request_id (ingress-nginx)",
    "namespace": "the namespace of the route's Ingress (ingress-nginx)",
    "ingress_name": "the name of the route's Ingress (ingress-nginx)",
    "service_name": "the name of the route's Service (ingress-nginx)",
    "service_port": "the port of the route's Service (ingress-nginx)",
    "location_path": "the path of the route's Ingress rule (ingress-nginx)",
}
NAMES = frozenset(VARIABLES)
# name prefixes: $http_x_auth (a request header), $cookie_session, $arg_page
PREFIXES = ("http_", "cookie_", "arg_")

_NAME = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")

Template = tuple[str, ...]


class TemplateError(ValueError):
    """A value with a variable nginx would refuse, or one fastingress does not implement."""

    def __init__(self, reason: str, suggestion: str = "") -> None:
        super().__init__(reason)
        self.suggestion = suggestion


def known(name: str) -> bool:
    return name in NAMES or any(name.startswith(p) and len(name) > len(p) for p in PREFIXES)


def parse_template(text: str) -> Template:
    """``text`` as a template (see the module docstring); TemplateError on a bad variable."""
    parts: list[str] = []
    literal: list[str] = []
    pos = 0
    while True:
        dollar = text.find("$", pos)
        if dollar == -1:
            literal.append(text[pos:])
            break
        literal.append(text[pos:dollar])
        match = _NAME.match(text, dollar)
        if match is None:
            shown = text[dollar : dollar + 12]
            raise TemplateError(f"invalid variable at {shown!r} (a $ must start a variable name)")
        name = (match.group(1) or match.group(2)).lower()
        if name.isdigit():
            raise TemplateError(f"${name}: regular expression captures are not available here")
        if not known(name):
            meant = difflib.get_close_matches(name, sorted(NAMES), n=1, cutoff=0.6)
            raise TemplateError(
                f"unknown variable ${name} (fastingress knows ${', $'.join(sorted(NAMES))}, "
                f"$http_NAME, $cookie_NAME and $arg_NAME)",
                "$" + meant[0] if meant else "",
            )
        parts.append("".join(literal))
        parts.append(name)
        literal = []
        pos = match.end()
    parts.append("".join(literal))
    return tuple(parts)


def is_static(template: Template) -> bool:
    """No variable in it: its one part is the value."""
    return len(template) == 1


def variables(template: Template) -> tuple[str, ...]:
    return template[1::2]


def template_text(template: Template) -> str:
    """The template written back as nginx would read it (``${name}`` throughout)."""
    out: list[str] = []
    for i, part in enumerate(template):
        out.append("${" + part + "}" if i % 2 else part)
    return "".join(out)


__all__ = [
    "NAMES", "PREFIXES", "VARIABLES", "Template", "TemplateError", "is_static", "known", "parse_template",
    "template_text", "variables",
]
