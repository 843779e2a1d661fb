"""Translation of ingress-nginx's rate limiting annotations into ``schema.Limits`` (issue 9).

ingress-nginx (``internal/ingress/annotations/ratelimit``): ``limit-rps``, ``limit-rpm`` and
``limit-connections`` are integers, ``0`` (or absent) meaning no such limit; a value that
does not parse is a validation error that rejects the whole Ingress, so here those keys are
guards: the Ingress fails closed (503 naming the key), never served without its limit.
``limit-burst-multiplier`` (default 5), ``limit-rate`` and ``limit-rate-after`` (KB/s and KB,
rendered ``limit_rate <n>k``) fall back to their defaults on a bad value, as there.
``limit-allowlist`` (alias ``limit-whitelist``, read only when ``limit-allowlist`` is absent)
is a comma-separated list of addresses and CIDRs (``policy_access.parse_cidrs``, as the source
ranges).  The ConfigMap's ``limit-rate`` and
``limit-rate-after`` (``GlobalSettings``) are the default of every route.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fastingress.snapshot.schema import GlobalSettings, Limits

if TYPE_CHECKING:
    from fastingress.translate.annotations import IngressAnnotations

KIB = 1024
DEFAULT_BURST = 5  # ingress-nginx: "allow 5 times the specified limit as burst"
_MAX_COUNT = 1_000_000_000
_MAX_KB = 1 << 40
_INT = re.compile(r"^\+?[0-9]+$")
_NGINX_RATE = re.compile(r"^\+?([0-9]+)\s*r/[sm]$")


def _whole(value: str, what: str, maximum: int) -> int:
    text = value.strip()
    if not _INT.match(text):
        hint = ""
        nginx = _NGINX_RATE.match(text)
        if nginx:
            hint = f" (write {nginx.group(1)}: the unit is in the annotation's name)"
        elif text.startswith("-"):
            hint = " (0 means no limit)"
        raise ValueError(f"expected a whole number of {what}, 0 or more{hint}")
    number = int(text)
    if number > maximum:
        raise ValueError(f"expected at most {maximum} {what}")
    return number


def parse_limit(value: str) -> int:
    """limit-rps, limit-rpm, limit-connections: a count, 0 for none."""
    return _whole(value, "requests", _MAX_COUNT)


def parse_multiplier(value: str) -> int:
    """limit-burst-multiplier: burst = rate x this."""
    return _whole(value, "times the rate", 1_000_000)


def parse_kilobytes(value: str) -> int:
    """limit-rate (KB per second) and limit-rate-after (KB): nginx ``<n>k``, in bytes."""
    return _whole(value, "kilobytes", _MAX_KB) * KIB


def limits_policy(annotations: IngressAnnotations, zone: str, settings: GlobalSettings) -> Limits | None:
    """The Limits of the routes of one Ingress (``zone``: "namespace/name"), or None."""
    rate = settings.limit_rate if annotations.limit_rate is None else annotations.limit_rate
    after = annotations.limit_rate_after
    if after is None:
        after = settings.limit_rate_after
    rps, rpm, connections = annotations.limit_rps, annotations.limit_rpm, annotations.limit_connections
    if not (rps or rpm or connections or rate > 0):
        return None
    counted = bool(rps or rpm or connections)
    allowlist = annotations.limit_allowlist or annotations.limit_whitelist or ()
    return Limits(
        zone=zone if counted else "",
        rps=rps,
        rpm=rpm,
        burst_multiplier=annotations.limit_burst_multiplier if counted else DEFAULT_BURST,
        connections=connections,
        allowlist=allowlist if counted else (),
        rate=max(0, rate),
        rate_after=max(0, after) if rate > 0 else 0,
    )


__all__ = [
    "DEFAULT_BURST", "limits_policy", "parse_kilobytes", "parse_limit", "parse_multiplier",
]
