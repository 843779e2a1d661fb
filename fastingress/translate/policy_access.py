"""Access annotations (issue 9, area "access"): source ranges, basic/digest auth, client certificates.

Theory of operation
-------------------
The value parsers (``parse_*``) check one annotation value each, for the registry in
``annotations``; they are as strict as ingress-nginx's validators or stricter, and a value
they refuse fails the Ingress closed (these keys guard access).  The builders turn an
Ingress's parsed annotations, plus the Secrets they name, into the snapshot's policy Structs:

* ``source_ranges``: allowlist-source-range (or its old name whitelist-source-range) and
  denylist-source-range, as nginx's ``deny ...; allow ...; deny all;`` (ingress-nginx's
  template: internal/ingress/annotations/ipallowlist, ipdenylist, nginx.tmpl);
* ``basic_auth``: auth-type basic|digest + auth-secret (auth-secret-type auth-file: the
  ``auth`` key holds an htpasswd or htdigest file; auth-map: every key is a user) + auth-realm
  (internal/ingress/annotations/auth).  The users are read here, once; hashes are checked by
  the workers (``fastingress.htpasswd``);
* ``client_auth``: auth-tls-secret (``ca.crt``, optional ``ca.crl``) and its companions
  (internal/ingress/annotations/authtls).  nginx applies these to the whole server (host):
  ``core`` picks the oldest Ingress of the host that sets them.

Fail closed: anything that keeps a guard from being honoured (a missing Secret, a Secret
without the key, a guard key without the key it needs, a Secret of another namespace) is a
``(key, why)`` reason: the routes answer 503 naming it, with an error diagnostic, unless
``--unsafe-fail-open``.  Secret data never appears in a diagnostic (user names may).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import TYPE_CHECKING, Literal, NamedTuple, cast

from cryptography import x509

from fastingress.htpasswd import parse_htdigest, parse_htpasswd
from fastingress.snapshot.schema import BasicAuth, ClientAuth, SourceRanges
from fastingress.translate.access import get, str_map
from fastingress.translate.cluster import Cluster
from fastingress.translate.model import ObjRef, Sink

if TYPE_CHECKING:
    from fastingress.translate.annotations import IngressAnnotations

PREFIX = "nginx.ingress.kubernetes.io/"
Reason = tuple[str, str]  # (annotation key, why): a fail-closed reason
VerifyClient = Literal["on", "off", "optional", "optional_no_ca"]
VERIFY_CLIENT: tuple[str, ...] = ("on", "off", "optional", "optional_no_ca")
_MAX_DEPTH = 100


def _bad(reason: str, suggestion: str = "") -> ValueError:
    from fastingress.translate.annotations import BadValue  # (annotations imports this module)

    return BadValue(reason, suggestion)


def _nearest(word: str, choices: tuple[str, ...]) -> str:
    from fastingress.translate.annotations import nearest

    return nearest(word, choices)


# --- value parsers (str -> value; ValueError on a bad value) ---------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidrs(value: str) -> tuple[str, ...]:
    """``10.0.0.0/8, 192.168.1.7, 2001:db8::/32`` -> CIDRs in normal form, sorted, unique.
    Host bits are dropped (``10.1.2.3/8`` is ``10.0.0.0/8``, as Go's ParseCIDR); a bare address
    is one host; an empty entry or anything else is refused (ingress-nginx refuses the list)."""
    networks: set[Network] = set()
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            raise ValueError("empty entry in the list (expected CIDRs separated by commas)")
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{entry[:60]!r} is not an IP address or CIDR") from None
        mapped = network.network_address.ipv4_mapped if network.version == 6 else None
        if mapped is not None and network.prefixlen >= 96:  # ::ffff:a.b.c.d/n is IPv4
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}")
        networks.add(network)
    ordered = sorted(networks, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    return tuple(str(n) for n in ordered)


def parse_auth_type(value: str) -> str:
    text = value.strip().lower()
    if text not in ("basic", "digest"):
        raise _bad('expected "basic" or "digest"', _nearest(text, ("basic", "digest")))
    return text


def parse_auth_secret_type(value: str) -> str:
    text = value.strip().lower()
    if text not in ("auth-file", "auth-map"):
        raise _bad('expected "auth-file" or "auth-map"', _nearest(text, ("auth-file", "auth-map")))
    return text


_REALM_RE = re.compile(r'^[\x20-\x7e]*$')


def parse_realm(value: str) -> str:
    """The realm shown by browsers: printable ASCII without ``"`` or ``\\`` (it is quoted)."""
    text = value.strip()
    if not _REALM_RE.match(text) or '"' in text or "\\" in text or len(text) > 256:
        raise ValueError('expected printable text without " or \\, at most 256 characters')
    return text


def parse_verify_client(value: str) -> str:
    text = value.strip().lower()
    if text not in VERIFY_CLIENT:
        raise _bad("expected one of " + ", ".join(VERIFY_CLIENT), _nearest(text, VERIFY_CLIENT))
    return text


def parse_verify_depth(value: str) -> int:
    """ssl_verify_depth; 0 is taken as 1, as ingress-nginx does."""
    text = value.strip()
    if not text.isdigit() or int(text) > _MAX_DEPTH:
        raise ValueError(f"expected a whole number from 1 to {_MAX_DEPTH}")
    return max(1, int(text))


def parse_match_cn(value: str) -> str:
    """``CN=`` followed by a regular expression, searched in the client's subject DN (nginx
    ``if ($ssl_client_s_dn !~ "CN=...")``)."""
    text = value.strip()
    if not text.startswith("CN="):
        raise ValueError(r'expected "CN=" followed by a regular expression, e.g. CN=.*\.example\.com')
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return text


_ERROR_PAGE_RE = re.compile(r"^(?:(?:https?://)?[A-Za-z0-9\-.]+(?::\d+)?)?(?:/[A-Za-z0-9\-_.]+)*/?$")


def parse_error_page(value: str) -> str:
    """An absolute http(s) URL or a path (ingress-nginx's redirect syntax; a host without a
    scheme gets ``http://``).  Named locations (``@x``) have no meaning here."""
    text = value.strip()
    if not text or text.startswith("@") or not _ERROR_PAGE_RE.match(text):
        raise ValueError("expected an http(s) URL or a path such as /error-cert.html")
    if not text.startswith(("/", "http://", "https://")):
        text = "http://" + text
    return text


# --- Secrets ---------------------------------------------------------------------------------


def secret_bytes(secret: object, key: str) -> bytes | None:
    """A Secret's value as bytes (``stringData`` wins over base64 ``data``); None if absent."""
    plain = str_map(get(secret, "stringData")).get(key)
    if isinstance(plain, str):
        return plain.encode("utf-8")
    encoded = str_map(get(secret, "data")).get(key)
    if not isinstance(encoded, str):
        return None
    try:
        return base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def secret_keys(secret: object) -> list[str]:
    keys = set(str_map(get(secret, "data"))) | set(str_map(get(secret, "stringData")))
    return sorted(k for k in keys if isinstance(k, str))


class Found(NamedTuple):
    """A Secret named by an annotation: its address and object, or the reason it is unusable."""

    namespace: str
    name: str
    secret: object | None
    reason: str  # "" when found


def find_secret(cluster: Cluster, owner: ObjRef, ref: str) -> Found:
    """ingress-nginx refuses Secrets of another namespace (allow-cross-namespace-resources
    is off by default); so do we."""
    namespace, _, name = ref.rpartition("/")
    namespace = namespace or owner.namespace
    if namespace != owner.namespace:
        return Found(namespace, name, None, f"names Secret {namespace}/{name} of another namespace "
                                            "(not allowed, as in ingress-nginx)")
    secret = cluster.secrets.get((namespace, name))
    if secret is None:
        return Found(namespace, name, None, f"names Secret {namespace}/{name}, which is not found")
    return Found(namespace, name, secret, "")


def _closing(sink: Sink, owner: ObjRef, key: str, what: str, fail_open: bool) -> Reason:
    """One fail-closed reason, with its error diagnostic on the Ingress."""
    tail = ("served WITHOUT this protection because of --unsafe-fail-open" if fail_open
            else "every path of this Ingress answers 503 (fail closed)")
    sink.error(owner, f"metadata.annotations[{PREFIX}{key}]", f"{what}; {tail}")
    return (PREFIX + key, what)


# --- source ranges ---------------------------------------------------------------------------


def source_ranges(annotations: IngressAnnotations, owner: ObjRef, sink: Sink) -> SourceRanges | None:
    allow = annotations.allowlist_source_range
    old = annotations.whitelist_source_range
    if allow is not None and old is not None and allow != old:
        sink.warning(owner, f"metadata.annotations[{PREFIX}whitelist-source-range]",
                     f"overridden by `{PREFIX}allowlist-source-range`; ignored")
    if allow is None:
        allow = old
    deny = annotations.denylist_source_range
    if allow is None and deny is None:
        return None
    return SourceRanges(allow=allow or (), deny=deny or ())


# --- basic / digest auth ---------------------------------------------------------------------


def basic_auth(
    annotations: IngressAnnotations, owner: ObjRef, cluster: Cluster, sink: Sink, fail_open: bool
) -> tuple[BasicAuth | None, tuple[Reason, ...]]:
    """The users and realm of auth-type/auth-secret, or the reasons they cannot be honoured."""
    kind, ref = annotations.auth_type, annotations.auth_secret
    if kind is None and ref is None:
        for key, value in (("auth-realm", annotations.auth_realm),
                           ("auth-secret-type", annotations.auth_secret_type)):
            if value is not None:
                sink.warning(owner, f"metadata.annotations[{PREFIX}{key}]",
                             f"has no effect without `{PREFIX}auth-type`; ignored")
        return None, ()
    if ref is None:
        what = f"needs `{PREFIX}auth-secret` (the users)"
        return None, (_closing(sink, owner, "auth-type", what, fail_open),)
    if kind is None:
        what = f'needs `{PREFIX}auth-type` ("basic" or "digest")'
        return None, (_closing(sink, owner, "auth-secret", what, fail_open),)
    found = find_secret(cluster, owner, ref)
    if found.secret is None:
        return None, (_closing(sink, owner, "auth-secret", found.reason, fail_open),)
    secret_ref = ObjRef("Secret", found.namespace, found.name)
    name = f"{found.namespace}/{found.name}"
    if (annotations.auth_secret_type or "auth-file") == "auth-file":
        raw = secret_bytes(found.secret, "auth")
        if raw is None:
            what = f"Secret {name} has no `auth` key (auth-secret-type auth-file), or it is not base64"
            return None, (_closing(sink, owner, "auth-secret", what, fail_open),)
        text = raw.decode("latin-1")
    else:
        lines = []
        for user in secret_keys(found.secret):
            hashed = secret_bytes(found.secret, user)
            if hashed is not None:
                lines.append(f"{user}:{hashed.decode('latin-1').strip()}")
        text = "\n".join(lines)
    realm = annotations.auth_realm or ""
    result = BasicAuth(type=cast(Literal["basic", "digest"], kind), realm=realm, secret=name)
    if kind == "basic":
        users, problems = parse_htpasswd(text)
        result = BasicAuth(type="basic", realm=realm, secret=name, users=tuple(users))
    else:
        digest_users, problems = parse_htdigest(text)
        result = BasicAuth(type="digest", realm=realm, secret=name, digest_users=tuple(digest_users))
    field = "data[auth]" if (annotations.auth_secret_type or "auth-file") == "auth-file" else "data"
    for number, user, what in problems:
        who = f" (user {user!r})" if user else ""
        sink.warning(secret_ref, field, f"line {number}{who}: {what}; this line is ignored")
    if not result.users and not result.digest_users:
        sink.warning(owner, f"metadata.annotations[{PREFIX}auth-secret]",
                     f"Secret {name} holds no usable user: every request gets 401")
    return result, ()


# --- client certificates ---------------------------------------------------------------------

_TLS_COMPANIONS = ("auth-tls-verify-client", "auth-tls-verify-depth", "auth-tls-match-cn",
                   "auth-tls-error-page")


def _companions(annotations: IngressAnnotations) -> list[str]:
    values = (annotations.auth_tls_verify_client, annotations.auth_tls_verify_depth,
              annotations.auth_tls_match_cn, annotations.auth_tls_error_page)
    return [key for key, value in zip(_TLS_COMPANIONS, values, strict=True) if value is not None]


def _pem_certificates(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        text = raw.decode("ascii")
        if not x509.load_pem_x509_certificates(text.encode()):
            return None
    except ValueError:
        return None
    return text


def _pem_crl(raw: bytes) -> str | None:
    try:
        text = raw.decode("ascii")
        x509.load_pem_x509_crl(text.encode())
    except ValueError:
        return None
    return text


def client_auth(
    annotations: IngressAnnotations, owner: ObjRef, cluster: Cluster, sink: Sink, fail_open: bool
) -> tuple[ClientAuth | None, tuple[Reason, ...]]:
    """The client-certificate settings of auth-tls-*, or the reasons they cannot be honoured."""
    ref = annotations.auth_tls_secret
    if ref is None:
        reasons = tuple(
            _closing(sink, owner, key, f"needs `{PREFIX}auth-tls-secret` (the CA of client certificates)",
                     fail_open)
            for key in _companions(annotations)
        )
        if annotations.auth_tls_pass_certificate is not None:
            sink.warning(owner, f"metadata.annotations[{PREFIX}auth-tls-pass-certificate-to-upstream]",
                         f"has no effect without `{PREFIX}auth-tls-secret`; ignored")
        return None, reasons
    found = find_secret(cluster, owner, ref)
    if found.secret is None:
        return None, (_closing(sink, owner, "auth-tls-secret", found.reason, fail_open),)
    name = f"{found.namespace}/{found.name}"
    ca = _pem_certificates(secret_bytes(found.secret, "ca.crt"))
    if ca is None:
        what = f"Secret {name} has no usable `ca.crt` (PEM certificates)"
        return None, (_closing(sink, owner, "auth-tls-secret", what, fail_open),)
    crl = ""
    raw_crl = secret_bytes(found.secret, "ca.crl")
    if raw_crl is not None:
        checked = _pem_crl(raw_crl)
        if checked is None:
            what = f"Secret {name} has a `ca.crl` that is not a PEM certificate revocation list"
            return None, (_closing(sink, owner, "auth-tls-secret", what, fail_open),)
        crl = checked
    return ClientAuth(
        ca_pem=ca,
        crl_pem=crl,
        verify=cast(VerifyClient, annotations.auth_tls_verify_client or "on"),
        depth=annotations.auth_tls_verify_depth or 1,
        pass_certificate=bool(annotations.auth_tls_pass_certificate),
        match_cn=annotations.auth_tls_match_cn or "",
        error_page=annotations.auth_tls_error_page or "",
        secret=name,
    ), ()


def uses_client_auth(annotations: IngressAnnotations) -> bool:
    return annotations.auth_tls_secret is not None or bool(_companions(annotations))


__all__ = [
    "VERIFY_CLIENT", "Found", "Reason", "basic_auth", "client_auth", "find_secret",
    "parse_auth_secret_type", "parse_auth_type", "parse_cidrs", "parse_error_page", "parse_match_cn",
    "parse_realm", "parse_verify_client", "parse_verify_depth", "secret_bytes", "source_ranges",
    "uses_client_auth",
]
