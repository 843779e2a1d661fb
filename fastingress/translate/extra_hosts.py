"""Host names an Ingress adds beside the hosts of its rules (area http, issue 9):
``server-alias`` and ``from-to-www-redirect``.

Theory of operation
-------------------
Both are server-level in ingress-nginx (``controller.go``, ``BuildRedirects``):

* ``server-alias``: more ``server_name``s of the same server block, so an alias serves exactly
  what its host serves (every route, the fallback, the TLS certificate).  The first Ingress (by
  age) that carries aliases for a host sets them (a later one gets a warning); an alias that is
  a host of some rule, or that another host already took, is dropped with a warning;
* ``from-to-www-redirect``: a server for the other name (``www.`` added or removed) answering
  every request with a 308 to the same scheme, host port and request URI (one trailing ``/``
  removed, as ingress-nginx's ``ngx_srv_redirect.lua``).  Not made when that name is already
  a host of some rule or an alias (warning, as ingress-nginx).

``claim`` decides at the merge step (pure, memoised with the merge by the incremental
translator); ``emit`` turns the claims into VirtualHosts once the hosts are emitted, copying
the alias's host (and giving the redirect host its target's certificate when that certificate
covers the name).  With neither annotation anywhere, ``emit`` returns its input unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import msgspec

from fastingress.snapshot.schema import Certificate, Redirect, Redirects, Route, RoutePolicy, VirtualHost
from fastingress.translate.annotations import PREFIX
from fastingress.translate.ingress import IngressPlan
from fastingress.translate.model import ObjRef, Sink

WWW_REDIRECT_CODE = 308  # ingress-nginx's http-redirect-code default
_ALIAS_FIELD = f"metadata.annotations[{PREFIX}server-alias]"
_WWW_FIELD = f"metadata.annotations[{PREFIX}from-to-www-redirect]"


class Claims(NamedTuple):
    aliases: dict[str, tuple[str, ObjRef]]  # alias -> (its host, the Ingress that named it)
    www: dict[str, tuple[str, ObjRef]]  # redirecting name -> (the host it redirects to, the Ingress)


NO_CLAIMS = Claims({}, {})


def claim(plans: Iterable[IngressPlan], hosts: set[str], sink: Sink) -> Claims:
    """Aliases and www redirects of ``plans`` (oldest first, canaries excluded by the caller),
    given the ``hosts`` of all rules."""
    aliases: dict[str, tuple[str, ObjRef]] = {}
    www: dict[str, tuple[str, ObjRef]] = {}
    alias_owner: dict[str, ObjRef] = {}  # host -> the Ingress whose aliases it has
    wanted_www: list[tuple[str, str, IngressPlan]] = []
    for plan in plans:
        http = plan.annotations.http
        for host in plan.hosts:
            if http.server_alias and host:
                owner = alias_owner.get(host)
                if owner is not None and owner != plan.ref:
                    sink.warning(plan.ref, _ALIAS_FIELD,
                                 f"host {host!r} already has the aliases of Ingress {owner.key}; ignored")
                elif owner is None:
                    alias_owner[host] = plan.ref
                    _claim_aliases(plan, host, hosts, aliases, sink)
            if http.from_to_www_redirect and host and not host.startswith("*."):
                other = host.removeprefix("www.") if host.startswith("www.") else "www." + host
                wanted_www.append((other, host, plan))
    for other, host, plan in wanted_www:
        if other in hosts or other in aliases:
            sink.warning(plan.ref, _WWW_FIELD,
                         f"{other!r} is already served (a host or an alias); no redirect from it to {host!r}")
        elif other not in www:
            www[other] = (host, plan.ref)
    return Claims(aliases, www) if aliases or www else NO_CLAIMS


def _claim_aliases(
    plan: IngressPlan, host: str, hosts: set[str], aliases: dict[str, tuple[str, ObjRef]], sink: Sink
) -> None:
    for alias in plan.annotations.http.server_alias:
        if alias == host:
            continue
        if alias in hosts:
            sink.warning(plan.ref, _ALIAS_FIELD,
                         f"alias {alias!r} of {host!r} is a host of its own; the alias is ignored")
            continue
        taken = aliases.get(alias)
        if taken is not None and taken[0] != host:
            sink.warning(plan.ref, _ALIAS_FIELD,
                         f"alias {alias!r} of {host!r} is already an alias of {taken[0]!r} "
                         f"(Ingress {taken[1].key}); ignored")
            continue
        aliases.setdefault(alias, (host, plan.ref))


def _covers(certificate: Certificate | None, name: str) -> bool:
    if certificate is None:
        return False
    for host in certificate.hosts:
        if host == name or (host.startswith("*.") and name.partition(".")[2] == host[2:]):
            return True
    return False


def emit(
    vhosts: tuple[VirtualHost, ...], claims: Claims, certificates: Mapping[str, Certificate]
) -> tuple[VirtualHost, ...]:
    """``vhosts`` (sorted by name) with the claimed aliases and redirect hosts added."""
    if not claims.aliases and not claims.www:
        return vhosts
    by_name = {vhost.hostname: vhost for vhost in vhosts}
    extra: list[VirtualHost] = []
    for alias, (host, _) in claims.aliases.items():
        vhost = by_name.get(host)
        if vhost is not None:
            extra.append(msgspec.structs.replace(vhost, hostname=alias))
    for name, (host, owner) in claims.www.items():
        target = by_name.get(host)
        secret = target.tls_secret if target is not None else None
        if secret is not None and not _covers(certificates.get(secret), name):
            secret = None  # its certificate does not name it: the default one (as ingress-nginx)
        route = Route(
            path="/", path_type="Prefix", action=Redirect(f"//{host}/", WWW_REDIRECT_CODE), priority=1,
            ingress=owner.key, policy=RoutePolicy(redirects=Redirects(code=WWW_REDIRECT_CODE, to_host=host)),
        )
        extra.append(VirtualHost(hostname=name, routes=(route,), tls_secret=secret))
    return tuple(sorted((*vhosts, *extra), key=lambda v: v.hostname))


__all__ = ["NO_CLAIMS", "WWW_REDIRECT_CODE", "Claims", "claim", "emit"]
