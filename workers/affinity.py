"""Cookie session affinity (sans-I/O), as ingress-nginx's ``balancer/sticky*.lua``.

Theory of operation
-------------------
The session cookie's value is ``<endpoint key>|<backend key>``: the backend key is
``md5(md5(name) + name)`` (hex) of ingress-nginx's backend name ``namespace-service-port``, so
a cookie says which backend it belongs to (the canary decision reads that, see
``workers.canary``).  The endpoint key depends on the mode:

* ``persistent``: ``md5(name + "ip:port")`` of the endpoint; the session stays on its Pod as
  long as that Pod is an endpoint, and moves (with a new cookie) when it is gone;
* ``balanced``: a random key, mapped to an endpoint by consistent hashing (``workers.chash``):
  when the Service scales, some sessions move to the new Pods (the cookie stays the same).

Both keys are those ingress-nginx computes, so persistent cookies it issued keep their Pod.
A request without a usable cookie (none, another backend's, a Pod that is gone) gets a new
endpoint and a ``Set-Cookie`` (``HttpOnly``; ``Path`` the route's path unless
session-cookie-path; ``Secure`` over HTTPS or with session-cookie-secure).  After a failed
attempt (``workers.retry``), the retry goes to the cookie's endpoint again unless
session-cookie-change-on-failure, which picks another one and sets a new cookie.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable

from fastingress.snapshot.schema import SessionCookie
from workers.chash import Ring, ring_of

Address = tuple[str, int]
_CHECKS = 20  # balanced mode: random keys tried to avoid failed endpoints (ingress-nginx's number)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def backend_key(name: str) -> str:
    """ingress-nginx's ``backend_key``: md5(md5(name) .. name)."""
    return _md5(_md5(name) + name)


def endpoint_name(address: Address) -> str:
    """``ip:port`` as ingress-nginx writes an endpoint (IPv6 in brackets)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def same_site_none_compatible(user_agent: str | None) -> bool:
    """ingress-nginx's ``util/same_site.lua``: browsers that reject or mishandle SameSite=None."""
    if not user_agent:
        return True
    old = ("Chrome/4", "Chrome/5", "Chrome/6", "CPU iPhone OS 12", "iPad; CPU OS 12")
    if any(p in user_agent for p in old):
        return False
    return not ("Macintosh" in user_agent and "Intel Mac OS X 10_14" in user_agent and "Safari" in user_agent
                and "Chrome" not in user_agent)


def cookie_time(seconds: float) -> str:
    """nginx's ``ngx.cookie_time``: ``Thu, 01-Jan-1970 00:00:00 GMT``."""
    return time.strftime("%a, %d-%b-%Y %H:%M:%S GMT", time.gmtime(seconds))


def set_cookie(
    cookie: SessionCookie, value: str, *, path: str, https: bool, user_agent: str | None, now: float
) -> bytes:
    """The ``Set-Cookie`` value (attributes in lua-resty-cookie's order)."""
    parts = [f"{cookie.name}={value}"]
    if cookie.expires is not None:
        parts.append("Expires=" + cookie_time(now + cookie.expires))
    if cookie.max_age is not None:
        parts.append(f"Max-Age={cookie.max_age}")
    if cookie.domain:
        parts.append(f"Domain={cookie.domain}")
    parts.append(f"Path={cookie.path or path}")
    if cookie.secure or https:
        parts.append("Secure")
    parts.append("HttpOnly")
    samesite = cookie.samesite
    if samesite == "None" and cookie.conditional_samesite_none and not same_site_none_compatible(user_agent):
        samesite = None
    if samesite:
        parts.append(f"SameSite={samesite}")
    if cookie.partitioned:
        parts.append("Partitioned")
    return "; ".join(parts).encode("latin-1")


class Sticky:
    """One upstream's affinity: the endpoint for a request, and the cookie to set if it is new."""

    __slots__ = ("_addrs", "_by_key", "_ring", "cookie", "key", "rng", "salt")

    def __init__(self, cookie: SessionCookie, backend: str, rng: random.Random | None = None) -> None:
        self.cookie = cookie
        self.salt = backend
        self.key = backend_key(backend)
        self.rng = rng or random.Random()
        self._addrs: tuple[Address, ...] = ()
        self._by_key: dict[str, Address] = {}
        self._ring: Ring | None = None

    def _index(self, addrs: tuple[Address, ...]) -> None:
        if addrs is self._addrs or addrs == self._addrs:
            self._addrs = addrs
            return
        self._addrs = addrs
        self._by_key = {_md5(self.salt + endpoint_name(a)): a for a in addrs}
        balanced = self.cookie.mode == "balanced"
        self._ring = ring_of(tuple(endpoint_name(a) for a in addrs)) if balanced else None

    def _from_cookie(self, value: str | None) -> Address | None:
        if value is None:
            return None
        upstream_key, _, backend = value.partition("|")
        if backend != self.key or not upstream_key:
            return None
        if self._ring is None:
            return self._by_key.get(upstream_key)
        return self._addrs[self._ring.find(upstream_key)]

    def _new(self, tried: tuple[Address, ...]) -> tuple[Address, str]:
        addrs = self._addrs
        if self._ring is not None:
            for _ in range(_CHECKS):
                key = f"{self.rng.getrandbits(64):016x}"
                found = addrs[self._ring.find(key)]
                if found not in tried:
                    return found, key
            return found, key  # every draw hit a failed endpoint: the last one (rare)
        left = [a for a in addrs if a not in tried] or list(addrs)
        found = self.rng.choice(left)
        return found, _md5(self.salt + endpoint_name(found))

    def select(
        self, cookie: Callable[[str], str | None], addrs: tuple[Address, ...], tried: tuple[Address, ...]
    ) -> tuple[Address, str | None]:
        """(endpoint, new cookie value or None when the request's cookie is kept)."""
        self._index(addrs)
        pinned = self._from_cookie(cookie(self.cookie.name))
        if pinned is not None and not (tried and self.cookie.change_on_failure):
            return pinned, None
        found, key = self._new(tried)
        return found, f"{key}|{self.key}"


__all__ = ["Sticky", "backend_key", "cookie_time", "endpoint_name", "same_site_none_compatible", "set_cookie"]
