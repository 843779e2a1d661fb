"""nginx ``log_format`` strings (the ConfigMap's ``log-format-upstream``), pure and shared.

Translation validates a format with ``parse`` (unknown variables are a warning); each worker
compiles it once per snapshot into a formatter (``workers.accesslog``).  A format is literal
text with ``$name`` or ``${name}`` variables, as in nginx; ``$$`` is not special in nginx
and is not here either.  The variables are a documented subset of nginx's and
ingress-nginx's (``VARIABLES``), plus ``$http_NAME`` for any request header (dashes written
as underscores, as nginx does); an unknown variable logs ``-``.

Escaping (nginx ``log_format ... escape=``): ``default`` writes ``"``, ``\\``, control
characters and bytes above 126 as ``\\xHH``; ``json`` escapes for a JSON string; ``none``
writes values as they are.
"""

from __future__ import annotations

import re
from typing import Literal

Escape = Literal["default", "json", "none"]

# name -> what it logs (README and ``fastingress check`` quote this)
VARIABLES: dict[str, str] = {
    "remote_addr": "the client's IP address (after PROXY protocol and trusted X-Forwarded-For)",
    "realip_remote_addr": "the address of the peer that connected (before X-Forwarded-For)",
    "proxy_protocol_addr": "the client address of the PROXY protocol header, or empty",
    "remote_user": "the user name of a Basic Authorization header, or -",
    "time_local": "local time in the Common Log Format (04/May/2026:09:12:31 +0000)",
    "time_iso8601": "local time in ISO 8601 (2026-05-04T09:12:31+00:00)",
    "msec": "the time in seconds with millisecond resolution",
    "request": 'the request line ("GET /path?x=1 HTTP/1.1")',
    "request_method": "the method",
    "request_uri": "the request target as received (path and query)",
    "uri": "the normalised path, without the query",
    "args": "the query string (without ?)",
    "server_protocol": "HTTP/1.0, HTTP/1.1 or HTTP/2.0",
    "scheme": "http or https",
    "host": "the Host header without its port (or the matched virtual host)",
    "server_port": "the port the request came in on",
    "status": "the response status",
    "body_bytes_sent": "bytes of response body sent to the client",
    "bytes_sent": "the same as body_bytes_sent (the head is not counted)",
    "request_length": "bytes of the request line, headers and body as received (approximate for HTTP/2)",
    "request_time": "seconds from the request head to the end of the response (millisecond resolution)",
    "http_referer": "the Referer header",
    "http_user_agent": "the User-Agent header",
    "proxy_upstream_name": "the upstream: namespace-service-port",
    "proxy_alternative_upstream_name": "a canary's upstream, or empty",
    "upstream_addr": "the endpoint address:port, or -",
    "upstream_status": "the upstream's response status, or -",
    "upstream_response_time": "seconds from sending the request upstream to the end of its response, or -",
    "upstream_response_length": "bytes of response body from the upstream, or -",
    "req_id": "the X-Request-ID sent upstream (the client's, or a generated one)",
    "namespace": "the namespace of the Ingress",
    "ingress_name": "the name of the Ingress",
    "service_name": "the name of the Service",
    "service_port": "the port of the Service",
    "ssl_protocol": "TLSv1.2 or TLSv1.3, or empty",
    "pid": "the worker's process id",
}
HEADER_PREFIX = "http_"

_VAR_RE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")

Token = str | tuple[str]  # literal text, or (variable name,)


def parse(fmt: str) -> list[Token]:
    """Literal pieces and variables, in order (never raises)."""
    tokens: list[Token] = []
    pos = 0
    for match in _VAR_RE.finditer(fmt):
        if match.start() > pos:
            tokens.append(fmt[pos : match.start()])
        tokens.append((match.group(1) or match.group(2),))
        pos = match.end()
    if pos < len(fmt):
        tokens.append(fmt[pos:])
    return tokens


def known(name: str) -> bool:
    return name in VARIABLES or (name.startswith(HEADER_PREFIX) and len(name) > len(HEADER_PREFIX))


def unknown_variables(fmt: str) -> list[str]:
    """The variables of ``fmt`` this module does not know (each once, in order)."""
    seen: list[str] = []
    for token in parse(fmt):
        if isinstance(token, tuple) and not known(token[0]) and token[0] not in seen:
            seen.append(token[0])
    return seen


def escape_default(text: str) -> str:
    """nginx's default log escaping: ``"``, ``\\``, controls and non-ASCII as \\xHH."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    out: list[str] = []
    for byte in text.encode("utf-8", "replace"):
        if byte in (0x22, 0x5C) or byte < 0x20 or byte > 0x7E:
            out.append(f"\\x{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)


def escape_json(text: str) -> str:
    """Escaped for the inside of a JSON string (nginx ``escape=json``)."""
    out: list[str] = []
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


__all__ = ["HEADER_PREFIX", "VARIABLES", "Escape", "escape_default", "escape_json", "known", "parse",
           "unknown_variables"]
