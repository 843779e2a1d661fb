"""HTTPS policies of the proxy, sans-I/O: ssl-redirect (308 to https) and HSTS.

* ``redirect_location``: where a plain-HTTP request for a route with ``policy.ssl_redirect``
  or ``policy.force_ssl_redirect`` goes: ``https://HOST[:PORT]TARGET`` (PORT only when the
  HTTPS port is not 443), or None when no redirect may be made: the path is under
  ``/.well-known/acme-challenge/`` (cert-manager's HTTP-01 challenges must reach the
  solver over plain HTTP, as in ingress-nginx), no HTTPS listener, or a Host header that
  is not a plain host name (it would be echoed into Location).
* ``hsts_value``: the Strict-Transport-Security value of the snapshot's settings, or None.
"""

from __future__ import annotations

import re

from fastingress.snapshot.schema import GlobalSettings, RoutePolicy

ACME_PREFIX = "/.well-known/acme-challenge/"
_LABEL = rb"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_HOST_RE = re.compile(rb"^(?:" + _LABEL + rb"(?:\." + _LABEL + rb")*|\[[0-9a-f:.]+\])$")


def wants_https(policy: RoutePolicy) -> bool:
    return policy.ssl_redirect or policy.force_ssl_redirect


def redirect_location(host_header: bytes, target: bytes, path: str, https_port: int) -> bytes | None:
    """The Location of the 308 to HTTPS, or None when this request must not be redirected.

    ``target`` is the request target as received (path and query, sent back unchanged, as
    nginx's ``$request_uri``); ``path`` is its normalised path (for the ACME exception).
    """
    if https_port <= 0 or path.startswith(ACME_PREFIX):
        return None
    host = host_header.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        host = host[: end + 1] if end != -1 else b""
    else:
        host = host.partition(b":")[0].rstrip(b".")
    if not host or len(host) > 253 or not _HOST_RE.match(host):
        return None
    if not target.startswith(b"/"):
        target = b"/"  # absolute-form or '*': the path is what counts
    port = b"" if https_port == 443 else b":%d" % https_port
    return b"https://" + host + port + target


def hsts_value(settings: GlobalSettings) -> bytes | None:
    if not settings.hsts:
        return None
    value = f"max-age={max(0, settings.hsts_max_age)}"
    if settings.hsts_include_subdomains:
        value += "; includeSubDomains"
    if settings.hsts_preload:
        value += "; preload"
    return value.encode()


def add_hsts(headers: list[tuple[bytes, bytes]], value: bytes) -> None:
    """Append Strict-Transport-Security unless the upstream set its own (it knows best)."""
    for name, _ in headers:
        if name == b"strict-transport-security":
            return
    headers.append((b"strict-transport-security", value))


__all__ = ["ACME_PREFIX", "add_hsts", "hsts_value", "redirect_location", "wants_https"]
