"""Validation of Ingress host names and HTTP paths (pure functions).

Hosts follow the Ingress v1 rules: a lower-cased DNS-1123 subdomain, optionally with a
leading ``*.`` wildcard label that matches exactly one label; IP addresses are refused.
Paths must start with "/".  ``route_key`` gives the identity two rules share when they
would match the same requests (Prefix "/foo" and "/foo/" are the same rule).
"""

from __future__ import annotations

import ipaddress
import re

from fastingress.snapshot.schema import PathType

_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_SUBDOMAIN_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_MAX_HOST = 253
_REGEX_CHARS = frozenset("^$()[]{}*+?|\\")
_CONTROL_RE = re.compile(r"[\x00-\x20\x7f]")

EXACT_BONUS = 1_000_000


def normalize_host(raw: str) -> tuple[str, str | None]:
    """(lower-cased host, None) or ("", reason) when the host is invalid."""
    host = raw.lower()
    if host == "":
        return "", None
    if len(host) > _MAX_HOST:
        return "", "host is longer than 253 characters"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return "", "an IP address is not a valid Ingress host"
    body = host[2:] if host.startswith("*.") else host
    if "*" in body:
        return "", "a wildcard is only allowed as the whole first label (*.example.com)"
    if not _SUBDOMAIN_RE.match(body):
        return "", "not a valid DNS name (lower-case letters, digits, '-' and '.')"
    return host, None


def check_path(path: str) -> str | None:
    """None if the path is usable, else the reason."""
    if not path.startswith("/"):
        return "path must start with '/'"
    if _CONTROL_RE.search(path):
        return "path must not contain spaces or control characters"
    return None


def looks_like_regex(path: str) -> bool:
    return any(c in _REGEX_CHARS for c in path)


def route_key(path: str, path_type: PathType) -> str:
    """The identity of a rule within a host, for conflict detection."""
    if path_type == "Prefix":
        return path.rstrip("/") or "/"
    return path


def priority(path: str, path_type: PathType) -> int:
    base = len(path.rstrip("/")) or 1
    return base + (EXACT_BONUS if path_type == "Exact" else 0)
