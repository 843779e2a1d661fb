"""Annotations of the "selection" area (issue 9): which backend and which endpoint serve a request.

Theory of operation
-------------------
The registry (``annotations.REGISTRY``) parses each key with a parser from here into a field of
the Ingress's ``IngressAnnotations``:

* ``canary-*`` into ``CanaryRules`` (``canary`` itself keeps its own row: a canary never takes
  the main Ingress's place, see ``core._merge``);
* ``load-balance``, ``upstream-hash-by*``, ``affinity*`` and ``session-cookie-*`` into
  ``BalancingSettings``, and ``service-upstream``, both in ``UpstreamSettings``: they change
  the upstream, so they enter its name hash, and Ingresses that share a Service but not these
  settings get distinct upstreams (ingress-nginx keeps one per Service and lets the first
  Ingress win);
* ``proxy-next-upstream*`` into ``NextUpstreamSettings``, per route.

``settle`` then checks the keys against each other once per Ingress (session-cookie-* without
``affinity: cookie``, a hash subset without ``upstream-hash-by``...), as ingress-nginx reads them,
and says what it ignores.  ``balancing``, ``next_upstream`` and ``canary`` turn the settings into
snapshot Structs.

Parsers raise ``Invalid`` (a ``ValueError`` with an optional "did you mean").  Pure, no I/O.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable

import msgspec

from fastingress.snapshot.schema import Balancing, Canary, NextUpstream, SessionCookie
from workers.hashkey import parse_hash_by as _parse_hash_expression

DEFAULT_COOKIE = "INGRESSCOOKIE"
NEXT_UPSTREAM_TOKENS = (
    "error", "timeout", "invalid_header", "http_500", "http_502", "http_503", "http_504", "http_403",
    "http_404", "http_429", "non_idempotent", "off",
)
MAX_TRIES = 64  # proxy-next-upstream-tries 0 ("no limit") stops after this many attempts
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token (header and cookie names)
_COOKIE_VALUE_RE = re.compile(r"^[\x21-\x7e]+$")
_PATH_RE = re.compile(r"^/[\x21-\x3a\x3c-\x7e]*$")  # visible ASCII without ';'
_DOMAIN_RE = re.compile(r"^\.?[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*$")
_INT_RE = re.compile(r"^-?[0-9]{1,10}$")
_SECONDS_RE = re.compile(r"^([0-9]{1,9}(?:\.[0-9]+)?)s?$")


class Invalid(ValueError):
    """A bad value: a short reason and, when one is close, the value meant."""

    def __init__(self, reason: str, suggestion: str = "") -> None:
        super().__init__(reason)
        self.suggestion = suggestion


def _choice(value: str, choices: tuple[str, ...], *, lower: bool = True) -> str:
    text = value.strip().lower() if lower else value.strip()
    if text in choices:
        return text
    near = difflib.get_close_matches(text, choices, n=1, cutoff=0.6)
    raise Invalid("expected one of " + ", ".join(choices), near[0] if near else "")


# --- parsers (str -> value) ------------------------------------------------------------------


def parse_true_false(value: str) -> bool:
    return _choice(value, ("true", "false")) == "true"


def parse_load_balance(value: str) -> str:
    text = value.strip().lower()
    if text in ("chash", "chashsubset", "sticky_balanced", "sticky_persistent"):
        raise Invalid(f"{text!r} is chosen by upstream-hash-by or affinity, not written here; "
                      "expected round_robin or ewma")
    return _choice(text, ("round_robin", "ewma"))


def parse_hash_by(value: str) -> str:
    text = value.strip()
    try:
        _parse_hash_expression(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return text


def parse_int(value: str, *, minimum: int = 0, what: str = "a whole number") -> int:
    text = value.strip()
    if not _INT_RE.match(text) or int(text) < minimum:
        raise Invalid(f"expected {what}")
    return int(text)


def parse_subset_size(value: str) -> int:
    return parse_int(value, minimum=1, what="a whole number of endpoints, at least 1")


def parse_affinity(value: str) -> str:
    return _choice(value, ("cookie",))


def parse_affinity_mode(value: str) -> str:
    return _choice(value, ("balanced", "persistent"))


def parse_canary_behavior(value: str) -> str:
    return _choice(value, ("sticky", "legacy"))


def parse_cookie_name(value: str) -> str:
    text = value.strip()
    if not _TOKEN_RE.match(text):
        raise Invalid("expected a cookie name (letters, digits and !#$%&'*+.^_`|~-)")
    return text


def parse_cookie_path(value: str) -> str:
    text = value.strip()
    if not _PATH_RE.match(text):
        raise Invalid("expected a path starting with / (no spaces or ';'; cookie paths are not regexes)")
    return text


def parse_cookie_domain(value: str) -> str:
    text = value.strip()
    if not _DOMAIN_RE.match(text):
        raise Invalid("expected a domain name such as example.com or .example.com")
    return text


def parse_cookie_seconds(value: str) -> int:
    return parse_int(value, minimum=-(2**31), what="a number of seconds")


def parse_samesite(value: str) -> str:
    return _choice(value, ("none", "lax", "strict")).capitalize()


def parse_next_upstream(value: str) -> tuple[str, ...]:
    tokens = value.split()
    if not tokens:
        raise Invalid("expected conditions such as: error timeout http_502")
    for token in tokens:
        if token not in NEXT_UPSTREAM_TOKENS:
            near = difflib.get_close_matches(token, NEXT_UPSTREAM_TOKENS, n=1, cutoff=0.6)
            known = " ".join(NEXT_UPSTREAM_TOKENS)
            raise Invalid(f"{token!r} is not one of {known}", near[0] if near else "")
    if "off" in tokens:
        return ()
    return tuple(sorted(set(tokens)))


def parse_tries(value: str) -> int:
    return parse_int(value, what="a number of tries (0: no limit)")


def parse_timeout(value: str) -> float:
    match = _SECONDS_RE.match(value.strip())
    if match is None:
        raise Invalid("expected seconds like 10 (0: no limit)")
    return float(match.group(1))


def parse_header_name(value: str) -> str:
    """canary-by-header: nginx matches ``$http_<name>``: any case, ``_`` for ``-``."""
    text = value.strip()
    if not _TOKEN_RE.match(text):
        raise Invalid("expected a header name")
    return text.lower().replace("_", "-")


def parse_header_value(value: str) -> str:
    if not value or not value.isprintable() or not value.isascii():
        raise Invalid("expected a header value of visible ASCII characters")
    return value


def parse_pattern(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise Invalid(f"not a valid regular expression: {exc}") from None
    if not value:
        raise Invalid("expected a regular expression")
    return value


def parse_weight(value: str) -> int:
    return parse_int(value, what="a whole number, 0 or more")


def parse_weight_total(value: str) -> int:
    return parse_int(value, minimum=1, what="a whole number, 1 or more")


# --- the settings parsed into IngressAnnotations ---------------------------------------------


class BalancingSettings(msgspec.Struct, frozen=True):
    """load-balance, upstream-hash-by*, affinity* and session-cookie-* as written."""

    load_balance: str = "round_robin"
    hash_by: str | None = None
    hash_subset: bool = False
    hash_subset_size: int = 3
    affinity: str | None = None  # "cookie"
    affinity_mode: str = "balanced"
    cookie_name: str = DEFAULT_COOKIE
    cookie_path: str | None = None
    cookie_domain: str | None = None
    cookie_max_age: int | None = None
    cookie_expires: int | None = None
    cookie_secure: bool = False
    cookie_samesite: str | None = None
    cookie_conditional_samesite_none: bool = False
    cookie_change_on_failure: bool = False
    cookie_partitioned: bool = False


class CanaryRules(msgspec.Struct, frozen=True):
    """canary-* as written (they count only with ``canary: "true"``)."""

    header: str = ""
    header_value: str = ""
    header_pattern: str = ""
    cookie: str = ""
    weight: int = 0
    weight_total: int = 100
    behavior: str = "sticky"  # affinity-canary-behavior
    invalid: tuple[str, ...] = ()  # canary-* keys whose value is unusable: the canary is not used


class NextUpstreamSettings(msgspec.Struct, frozen=True):
    """proxy-next-upstream, -tries, -timeout as written (None: not written)."""

    conditions: tuple[str, ...] | None = None
    tries: int | None = None
    timeout: float | None = None


# (severity, annotation name without prefix, message)
Finding = tuple[str, str, str]
_COOKIE_KEYS = (
    "affinity-mode", "session-cookie-name", "session-cookie-path", "session-cookie-domain",
    "session-cookie-max-age", "session-cookie-expires", "session-cookie-secure", "session-cookie-samesite",
    "session-cookie-conditional-samesite-none", "session-cookie-change-on-failure",
    "session-cookie-partitioned",
)
# A canary Ingress's own keys that count (ingress-nginx: all others come from the main Ingress).
CANARY_OWN = frozenset({
    "canary", "canary-by-header", "canary-by-header-value", "canary-by-header-pattern", "canary-by-cookie",
    "canary-weight", "canary-weight-total", "affinity-canary-behavior", "load-balance", "upstream-hash-by",
    "upstream-hash-by-subset", "upstream-hash-by-subset-size", "affinity", "service-upstream",
    *_COOKIE_KEYS,
})


def settle(
    balancing: BalancingSettings, canary: CanaryRules, written: frozenset[str], *, is_canary: bool,
    use_regex: bool,
) -> tuple[BalancingSettings, CanaryRules, list[Finding]]:
    """Check the keys of one Ingress against each other (``written``: the names it carries)."""
    findings: list[Finding] = []
    hash_written = balancing.hash_by is not None
    if balancing.affinity is None:
        for name in sorted(written.intersection(_COOKIE_KEYS)):
            findings.append(("warning", name, 'has no effect without `affinity: "cookie"`; ignored'))
        balancing = msgspec.structs.replace(
            BalancingSettings(), load_balance=balancing.load_balance, hash_by=balancing.hash_by,
            hash_subset=balancing.hash_subset, hash_subset_size=balancing.hash_subset_size,
        )
    else:
        for name in sorted(written.intersection({"upstream-hash-by", "load-balance"})):
            findings.append(("warning", name, "ignored: affinity chooses the endpoint"))
        if use_regex and balancing.cookie_path is None:
            findings.append((
                "warning", "affinity",
                "the paths are regular expressions: set session-cookie-path "
                "(the cookie gets Path=/ meanwhile)",
            ))
        balancing = msgspec.structs.replace(balancing, hash_by=None, load_balance="round_robin")
    subset_keys = sorted(written.intersection({"upstream-hash-by-subset", "upstream-hash-by-subset-size"}))
    if not hash_written:
        findings.extend(("warning", name, "has no effect without upstream-hash-by; ignored")
                        for name in subset_keys)
    elif balancing.hash_by is not None:
        if "load-balance" in written:
            findings.append(("warning", "load-balance", "ignored: upstream-hash-by chooses the endpoint"))
        if not balancing.hash_subset and "upstream-hash-by-subset-size" in written:
            findings.append(("warning", "upstream-hash-by-subset-size",
                             'has no effect without `upstream-hash-by-subset: "true"`; ignored'))
        balancing = msgspec.structs.replace(balancing, load_balance="round_robin")
    if balancing.hash_by is None or not balancing.hash_subset:
        balancing = msgspec.structs.replace(balancing, hash_subset=False, hash_subset_size=3)
    if is_canary and canary.weight_total < 100:
        findings.append(("warning", "canary-weight-total", f"{canary.weight_total} is below 100: "
                         "ingress-nginx uses 100 then, and so does fastingress"))
        canary = msgspec.structs.replace(canary, weight_total=100)
    if is_canary and canary.header and canary.header_value and canary.header_pattern:
        findings.append(("info", "canary-by-header-pattern", "ignored: canary-by-header-value is set"))
    if is_canary and not canary.header and (canary.header_value or canary.header_pattern):
        key = "canary-by-header-value" if canary.header_value else "canary-by-header-pattern"
        findings.append(("warning", key, "has no effect without canary-by-header; ignored"))
    if not is_canary and "affinity-canary-behavior" in written:
        findings.append(("warning", "affinity-canary-behavior",
                         'has no effect without `canary: "true"`; ignored'))
    return balancing, canary, findings


# --- snapshot Structs ------------------------------------------------------------------------


def nginx_backend_name(namespace: str, service: str, port: int | str) -> str:
    """ingress-nginx's upstream name (``upstreamName`` in its controller): the affinity cookie's
    keys derive from it, so cookies it issued keep pointing at the same Pods here."""
    return f"{namespace}-{service}-{port}"


def balancing(settings: BalancingSettings, backend: str) -> Balancing | None:
    """The snapshot's ``Balancing`` of an upstream; None for plain round robin."""
    cookie: SessionCookie | None = None
    if settings.affinity == "cookie":
        cookie = SessionCookie(
            name=settings.cookie_name,
            mode="persistent" if settings.affinity_mode == "persistent" else "balanced",
            path=settings.cookie_path,
            domain=settings.cookie_domain,
            max_age=settings.cookie_max_age,
            expires=settings.cookie_expires,
            secure=settings.cookie_secure,
            samesite=settings.cookie_samesite,
            conditional_samesite_none=settings.cookie_conditional_samesite_none,
            change_on_failure=settings.cookie_change_on_failure,
            partitioned=settings.cookie_partitioned,
        )
    hash_by = settings.hash_by or ""
    if cookie is None and not hash_by and settings.load_balance != "ewma":
        return None
    return Balancing(
        load_balance="ewma" if settings.load_balance == "ewma" else "round_robin",
        hash_by=hash_by,
        hash_subset_size=settings.hash_subset_size if hash_by and settings.hash_subset else 0,
        affinity=cookie,
        backend=backend,
    )


def next_upstream(settings: NextUpstreamSettings) -> NextUpstream | None:
    """proxy-next-upstream*: None when none is written (the route keeps fastingress's default:
    a failed connect is tried once more on another endpoint); the keys not written take
    ingress-nginx's defaults (error timeout, 3 tries, no time limit)."""
    if settings == NextUpstreamSettings():
        return None
    default = NextUpstream()
    return NextUpstream(
        conditions=settings.conditions if settings.conditions is not None else default.conditions,
        tries=settings.tries if settings.tries is not None else default.tries,
        timeout=settings.timeout if settings.timeout is not None else default.timeout,
    )


def canary(rules: CanaryRules, *, upstream: str, ingress: str, service: str) -> Canary:
    return Canary(
        upstream=upstream,
        ingress=ingress,
        service=service,
        header=rules.header,
        header_value=rules.header_value if rules.header else "",
        header_pattern=rules.header_pattern if rules.header and not rules.header_value else "",
        cookie=rules.cookie,
        weight=rules.weight,
        weight_total=max(rules.weight_total, 100),
    )


def canary_balancing(
    main: BalancingSettings, own: BalancingSettings, behavior: str
) -> BalancingSettings:
    """The canary backend's balancing: its own load-balance and upstream-hash-by; its affinity is
    the main Ingress's (``sticky``: who was served by the canary stays on it) unless ``legacy``,
    where it keeps its own (ingress-nginx's ``mergeAlternativeBackend``)."""
    if behavior == "legacy":
        return own
    cookie_fields = {name: getattr(main, name) for name in BalancingSettings.__struct_fields__
                     if name == "affinity" or name.startswith(("affinity_", "cookie_"))}
    merged = msgspec.structs.replace(own, **cookie_fields)
    if merged.affinity is not None:
        merged = msgspec.structs.replace(merged, hash_by=None, hash_subset=False, hash_subset_size=3,
                                         load_balance="round_robin")
    return merged


Parser = Callable[[str], object]

__all__ = [
    "CANARY_OWN", "DEFAULT_COOKIE", "MAX_TRIES", "NEXT_UPSTREAM_TOKENS", "BalancingSettings", "CanaryRules",
    "Invalid", "NextUpstreamSettings", "balancing", "canary", "canary_balancing", "nginx_backend_name",
    "next_upstream", "parse_affinity", "parse_affinity_mode", "parse_canary_behavior", "parse_cookie_domain",
    "parse_cookie_name", "parse_cookie_path", "parse_cookie_seconds", "parse_hash_by", "parse_header_name",
    "parse_header_value", "parse_load_balance", "parse_next_upstream", "parse_pattern", "parse_samesite",
    "parse_subset_size", "parse_timeout", "parse_tries", "parse_true_false", "parse_weight",
    "parse_weight_total", "settle",
]
