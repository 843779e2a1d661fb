"""Who the client is (sans-I/O): PROXY protocol, X-Forwarded-For and friends, and the global
blocks of the controller ConfigMap.

Theory of operation
-------------------
``Forwarding.compile(settings)`` (once per snapshot, None when the ConfigMap asks for none of
it, so a request then pays nothing) and, per request, ``view(info, peer, tls, proxy_port)``:

* ``peer`` is the address the connection came from: the socket's, or the source of its PROXY
  protocol header (``use-proxy-protocol``: the accept path parsed it, ``workers.proxyproto``);
  ``proxy_port`` the port the client connected to on the balancer (``b""`` without one);
* ``use-forwarded-headers`` / ``enable-real-ip``: when ``peer`` is in ``proxy-real-ip-cidr``,
  the client is found in ``forwarded-for-header`` (X-Forwarded-For) as nginx's realip module
  does with ``real_ip_recursive on``: from the right, the first address that is not trusted
  (all trusted: the leftmost); an unparsable entry leaves the peer.  A peer that is not
  trusted is the client, and what it claims is ignored;
* ``use-forwarded-headers`` also passes on X-Forwarded-Proto, -Host and -Port from a trusted
  peer (ingress-nginx trusts them from anyone; here only from ``proxy-real-ip-cidr``), and the
  scheme they say decides ``ssl-redirect`` (TLS ended at the balancer).  With the PROXY
  protocol and no such header, a client that connected to port 443 is https (ingress-nginx);
* X-Forwarded-For sent upstream: the client's address, or with ``compute-full-forwarded-for``
  what arrived followed by the peer.

``Guard.compile(settings)`` holds ``block-cidrs``, ``block-user-agents`` and ``block-referers``:
``refuses`` says 403 before anything is routed (nginx's ``deny`` and ``if ($block_ua) { return
403; }``).  (The ConfigMap's ``whitelist-``/``denylist-source-range`` are per-route defaults of
the annotations: ``workers.policies.access``.)
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple, Protocol

from fastingress.snapshot.schema import GlobalSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_CACHE_MAX = 4096


class ClientView(NamedTuple):
    """The request's client as the upstream and the logs see it."""

    ip: bytes  # X-Real-IP, $remote_addr, RequestCtx.client_ip
    xff: bytes  # the X-Forwarded-For sent upstream
    https: bool  # the scheme the client used (ssl-redirect, X-Forwarded-Proto)
    proto: bytes | None  # X-Forwarded-Proto to send (None: ours)
    port: bytes | None  # X-Forwarded-Port to send (None: ours)
    host: bytes | None  # X-Forwarded-Host to send (None: the Host header)
    peer: bytes  # the connection's address ($realip_remote_addr)


def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    out: list[Network] = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue  # translation validated them; a hand-made snapshot loses only that entry
    return tuple(out)


class AddressSet:
    """Membership of textual IP addresses in a set of networks, memoised per address."""

    __slots__ = ("_cache", "networks")

    def __init__(self, networks: tuple[Network, ...]) -> None:
        self.networks = networks
        self._cache: dict[bytes, bool] = {}

    def __contains__(self, address: object) -> bool:
        assert isinstance(address, bytes)
        found = self._cache.get(address)
        if found is None:
            try:
                ip = ipaddress.ip_address(address.decode("latin-1"))
            except ValueError:
                found = False
            else:
                if ip.version == 6 and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                found = any(ip in network for network in self.networks)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[address] = found
        return found


def _valid_ip(text: bytes) -> bool:
    try:
        ipaddress.ip_address(text.decode("latin-1"))
    except ValueError:
        return False
    return True


def _first(value: bytes) -> bytes:
    return value.split(b",", 1)[0].strip()


_PROTO_RE = re.compile(rb"^[a-z][a-z0-9+.-]{0,15}$")


class Forwarding:
    """The ConfigMap's client-IP settings, compiled (see the module docstring)."""

    __slots__ = ("full", "header", "headers", "pass_on", "proxy_protocol", "trusted")

    def __init__(self, settings: GlobalSettings) -> None:
        self.pass_on = settings.use_forwarded_headers  # X-Forwarded-Proto/-Host/-Port too
        self.headers = settings.use_forwarded_headers or settings.enable_real_ip
        self.full = settings.compute_full_forwarded_for and settings.use_forwarded_headers
        self.header = settings.forwarded_for_header.lower().encode("latin-1", "replace")
        self.trusted = AddressSet(_networks(settings.proxy_real_ip_cidr))
        self.proxy_protocol = settings.use_proxy_protocol

    @classmethod
    def compile(cls, settings: GlobalSettings) -> Forwarding | None:
        if not (settings.use_forwarded_headers or settings.enable_real_ip or settings.use_proxy_protocol):
            return None
        return cls(settings)

    def _claimed(self, forwarded: list[tuple[bytes, bytes]] | None, headers: list[tuple[bytes, bytes]],
                 name: bytes) -> bytes | None:
        """Every value of header ``name`` (joined with ", "), from the forwarded headers the scan
        set aside (X-Forwarded-*, X-Real-IP) or, for another name, the end-to-end headers."""
        source = forwarded if name in _SET_ASIDE else headers
        values = [v for n, v in source or () if n == name]
        if not values:
            return None
        return b", ".join(v.strip() for v in values)

    def real_ip(self, chain: bytes, peer: bytes) -> bytes:
        """nginx realip, recursive: from the right, the first address that is not trusted."""
        client = peer
        for part in reversed(chain.split(b",")):
            address = part.strip()
            if not address:
                continue
            if not _valid_ip(address):
                return peer
            client = address
            if address not in self.trusted:
                break
        return client

    def view(self, forwarded: list[tuple[bytes, bytes]] | None, headers: list[tuple[bytes, bytes]],
             peer: bytes, tls: bool, proxy_port: bytes) -> ClientView:
        """The request's client; ``forwarded``: ``RequestInfo.forwarded``, ``headers``: its
        end-to-end headers."""
        ip = peer
        https = tls
        proto = port = host = None
        if proxy_port:
            port = proxy_port
            if proxy_port == b"443" and not tls:
                https, proto = True, b"https"
        trusted = self.headers and peer in self.trusted
        if trusted:
            chain = self._claimed(forwarded, headers, self.header)
            if chain is not None:
                ip = self.real_ip(chain, peer)
            if self.pass_on and forwarded:
                claimed_proto = self._claimed(forwarded, headers, b"x-forwarded-proto")
                if claimed_proto is not None:
                    value = _first(claimed_proto).lower()
                    if _PROTO_RE.match(value):
                        proto, https = value, value == b"https"
                claimed_port = self._claimed(forwarded, headers, b"x-forwarded-port")
                if claimed_port is not None and _first(claimed_port).isdigit():
                    port = _first(claimed_port)
                claimed_host = self._claimed(forwarded, headers, b"x-forwarded-host")
                if claimed_host is not None and _first(claimed_host):
                    host = _first(claimed_host)
        xff = ip
        if self.full:
            incoming = self._claimed(forwarded, headers, b"x-forwarded-for")
            xff = incoming + b", " + peer if incoming else peer
        return ClientView(ip, xff, https, proto, port, host, peer)


# Headers ``heads.scan_request`` sets aside (never forwarded as they came; see ``view``).
_SET_ASIDE = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                        b"x-forwarded-port", b"x-real-ip"})


class _Patterns:
    """nginx ``map`` keys: exact strings, ``~regex`` and ``~*regex`` (case-insensitive)."""

    __slots__ = ("exact", "regexes")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.exact: frozenset[bytes] = frozenset(
            p.encode("latin-1", "replace") for p in patterns if not p.startswith("~")
        )
        regexes: list[re.Pattern[bytes]] = []
        for p in patterns:
            if not p.startswith("~"):
                continue
            flags, body = (re.IGNORECASE, p[2:]) if p.startswith("~*") else (0, p[1:])
            try:
                regexes.append(re.compile(body.encode("latin-1", "replace"), flags))
            except re.error:
                continue
        self.regexes = tuple(regexes)

    def match(self, value: bytes) -> bool:
        if value in self.exact:
            return True
        return any(r.search(value) is not None for r in self.regexes)


class Guard:
    """block-cidrs, block-user-agents, block-referers (403)."""

    __slots__ = ("agents", "blocked", "referers")

    def __init__(self, settings: GlobalSettings) -> None:
        self.blocked = AddressSet(_networks(settings.block_cidrs)) if settings.block_cidrs else None
        self.agents = _Patterns(settings.block_user_agents) if settings.block_user_agents else None
        self.referers = _Patterns(settings.block_referers) if settings.block_referers else None

    @classmethod
    def compile(cls, settings: GlobalSettings) -> Guard | None:
        if not (settings.block_cidrs or settings.block_user_agents or settings.block_referers):
            return None
        return cls(settings)

    def refuses(self, client_ip: bytes, headers: list[tuple[bytes, bytes]]) -> str | None:
        """Why the request is refused (403), or None."""
        if self.blocked is not None and client_ip in self.blocked:
            return "block-cidrs"
        if self.agents is not None or self.referers is not None:
            agent = referer = b""
            for name, value in headers:
                if name == b"user-agent":
                    agent = value
                elif name == b"referer":
                    referer = value
            if self.agents is not None and self.agents.match(agent):
                return "block-user-agents"
            if self.referers is not None and self.referers.match(referer):
                return "block-referers"
        return None


class Scanned(Protocol):
    """What ``Front`` needs of a ``workers.heads.RequestInfo`` (``heads`` imports this module)."""

    forwarded: list[tuple[bytes, bytes]] | None
    headers: list[tuple[bytes, bytes]]
    view: ClientView | None


class Front:
    """``Forwarding`` and ``Guard`` of a snapshot: what the data paths run before ``decide``
    (None when the snapshot has neither, which costs a request one test)."""

    __slots__ = ("forwarding", "guard")

    def __init__(self, forwarding: Forwarding | None, guard: Guard | None) -> None:
        self.forwarding = forwarding
        self.guard = guard

    @classmethod
    def compile(cls, settings: GlobalSettings) -> Front | None:
        forwarding, guard = Forwarding.compile(settings), Guard.compile(settings)
        if forwarding is None and guard is None:
            return None
        return cls(forwarding, guard)

    def apply(
        self, info: Scanned, peer: bytes, tls: bool, proxy_port: bytes
    ) -> tuple[bytes, bool, str | None]:
        """(the client's IP, whether it spoke HTTPS, why it is refused or None); sets ``info.view``."""
        ip, https = peer, tls
        forwarding = self.forwarding
        if forwarding is not None:
            view = info.view = forwarding.view(info.forwarded, info.headers, peer, tls, proxy_port)
            ip, https = view.ip, view.https
        guard = self.guard
        return ip, https, guard.refuses(ip, info.headers) if guard is not None else None


__all__ = ["AddressSet", "ClientView", "Forwarding", "Front", "Guard"]
