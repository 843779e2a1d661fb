"""Server certificates of a worker: one ``OpenSSL.SSL.Context`` per certificate, picked by SNI.

Theory of operation
-------------------
``CertCache`` lives as long as the worker.  ``CertCache.install(snapshot)`` is called with
every new snapshot generation and returns the ``CertStore`` for it:

* every ``Certificate`` of the snapshot becomes a ``Context`` (TLS 1.2 and 1.3 only, ECDHE
  with AES-GCM or ChaCha20 for 1.2, session cache and tickets on, ALPN ``h2``/``http/1.1``;
  the controller ConfigMap's ``ssl-protocols``, ``ssl-ciphers`` and ``ssl-session-*`` change
  that: ``TLSParams``, part of each Context's cache key).
  Contexts are cached by their PEM text, so an unchanged Secret keeps its Context across
  generations and a changed one gets a new Context that every *new* handshake uses at once;
  a connection already established holds its own reference to the Context it was made
  with and is never disturbed.  A certificate that does not load (bad PEM, key that does not
  match, ...) is logged once by name (never its data) and skipped; others still serve;
* names: each TLS virtual host maps its name (exact or ``*.`` wildcard) to its Secret's
  Context; the SANs of every certificate (``Certificate.hosts``) are a second chance, as in
  ingress-nginx; then ``settings.default_certificate``; else a self-signed certificate that
  the cache generates once, whose subject says "fastingress default certificate";
* every connection starts on the *base* Context (the default certificate).  Its servername
  callback runs during the handshake and, from the SNI the client sent, switches the
  connection to the Context of the name: exact name, then wildcard (one label), then the
  default.  The base Context is kept across generations as long as the default certificate
  does not change, since it owns the server's session cache and ticket keys (OpenSSL keeps
  the session context of the first Context): resumption survives snapshot changes.

Client certificates (``VirtualHost.client_auth``, auth-tls-*): a host that asks for them gets
a Context of its own (its certificate, or the default one, plus ``workers.clientcert``'s
verification settings), cached by certificate and settings like the others; the SNI callback
switches to it and sets the connection's verification (``clientcert.switch``).  Requests are
judged by the host's policy (``workers.policies.access``), never by the handshake.

Passthrough (``settings.ssl_passthrough``): ``CertStore.passthrough`` maps the names of
virtual hosts with ``passthrough_upstream`` to that upstream; the server peeks the SNI of
the ClientHello (``parse_client_hello_sni``) before any TLS happens and relays raw TCP.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from fastingress.snapshot.schema import Certificate, ClientAuth, GlobalSettings, Snapshot
from workers.clientcert import client_auth_key, configure_context, switch

log = logging.getLogger("fastingress.worker")

DEFAULT_SUBJECT = "fastingress default certificate"
CIPHERS_TLS12 = b"ECDHE+AESGCM:ECDHE+CHACHA20"
SESSION_ID_CONTEXT = b"fastingress"
SESSION_TIMEOUT = 3600  # seconds a session (id or ticket) may be resumed
ALPN_H2 = b"h2"
ALPN_HTTP11 = b"http/1.1"


class TLSParams(NamedTuple):
    """The ConfigMap's TLS settings, as a server Context applies them."""

    min_version: int = SSL.TLS1_2_VERSION
    max_version: int = SSL.TLS1_3_VERSION
    ciphers: bytes = CIPHERS_TLS12
    session_cache: bool = True
    tickets: bool = True
    timeout: int = SESSION_TIMEOUT


_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}


def tls_params(settings: GlobalSettings) -> TLSParams:
    versions = [_VERSIONS[name] for name in settings.ssl_protocols if name in _VERSIONS]
    if not versions:  # (translation refuses that; a hand-made snapshot gets the defaults)
        versions = list(_VERSIONS.values())
    return TLSParams(
        min(versions), max(versions), settings.ssl_ciphers.encode("ascii", "replace") or CIPHERS_TLS12,
        settings.ssl_session_cache, settings.ssl_session_tickets, max(1, int(settings.ssl_session_timeout)),
    )


DEFAULT_TLS = TLSParams()


class CertificateUnusable(Exception):
    """A certificate/key pair that cannot be served (the message names no secret data)."""


def self_signed_pem(common_name: str = DEFAULT_SUBJECT, days: int = 3650) -> tuple[str, str]:
    """A fresh ECDSA P-256 self-signed certificate: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fastingress"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert_pem, key_pem


def _select_alpn(offered: list[bytes], http2: bool) -> bytes:
    if http2 and ALPN_H2 in offered:
        return ALPN_H2
    if ALPN_HTTP11 in offered:
        return ALPN_HTTP11
    # Nothing we speak (or only h2 while it is off): go on without ALPN; HTTP/1.1 it is.
    return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]


def make_context(cert_pem: str, key_pem: str, *, http2: bool, tls: TLSParams = DEFAULT_TLS) -> SSL.Context:
    """A server Context for one certificate chain (leaf first) and its key.

    Raises CertificateUnusable with a short reason that contains no key or certificate data.
    """
    try:
        chain = x509.load_pem_x509_certificates(cert_pem.encode("ascii", "replace"))
    except ValueError:
        raise CertificateUnusable("tls.crt holds no readable PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode("ascii", "replace"), password=None)
    except (ValueError, TypeError):
        raise CertificateUnusable("tls.key holds no readable unencrypted PEM private key") from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm and friends
        raise CertificateUnusable(f"tls.key unusable ({type(exc).__name__})") from None
    if key.public_key() != chain[0].public_key():
        raise CertificateUnusable("tls.key does not match the certificate in tls.crt")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(tls.min_version)
    ctx.set_max_proto_version(tls.max_version)
    options = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION
    ctx.set_options(options if tls.tickets else options | SSL.OP_NO_TICKET)
    try:
        ctx.set_cipher_list(tls.ciphers)
    except SSL.Error:  # (translation checked it with the same OpenSSL; keep serving regardless)
        log.error("ssl-ciphers %r: OpenSSL refused it; using the default list", tls.ciphers.decode())  # noqa: TRY400 (one line)
        ctx.set_cipher_list(CIPHERS_TLS12)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER if tls.session_cache else SSL.SESS_CACHE_OFF)
    ctx.set_session_id(SESSION_ID_CONTEXT)
    ctx.set_timeout(tls.timeout)
    try:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        ctx.use_privatekey(key)  # type: ignore[arg-type]
        ctx.check_privatekey()
    except (SSL.Error, crypto.Error, TypeError, ValueError) as exc:
        raise CertificateUnusable(f"OpenSSL refused the certificate or key ({type(exc).__name__})") from None
    ctx.set_alpn_select_callback(lambda _conn, offered: _select_alpn(offered, http2))
    return ctx


def _fingerprint(cert_pem: str, key_pem: str, http2: bool, tls: TLSParams = DEFAULT_TLS) -> bytes:
    h = hashlib.sha256()
    h.update(cert_pem.encode("utf-8", "replace"))
    h.update(b"\0")
    h.update(key_pem.encode("utf-8", "replace"))
    h.update(b"\1" if http2 else b"\0")
    h.update(repr(tls).encode())
    return h.digest()


class CertStore:
    """The certificates of one snapshot generation (immutable once built)."""

    __slots__ = ("base", "default", "exact", "passthrough", "wildcard")

    def __init__(
        self,
        base: SSL.Context,
        default: SSL.Context,
        exact: dict[str, SSL.Context],
        wildcard: dict[str, SSL.Context],
        passthrough: dict[str, str],
    ) -> None:
        self.base = base  # every connection starts here (it owns the session cache)
        self.default = default
        self.exact = exact  # "example.com" -> Context
        self.wildcard = wildcard  # "example.com" (for "*.example.com") -> Context
        self.passthrough = passthrough  # SNI name -> Upstream.name (exact, or "*.x" keyed by "x")

    def pick(self, server_name: str | None) -> SSL.Context:
        """The Context for an SNI name: exact, then one-label wildcard, then the default."""
        if not server_name:
            return self.default
        found = self.exact.get(server_name)
        if found is not None:
            return found
        label, dot, rest = server_name.partition(".")
        if dot and label:
            found = self.wildcard.get(rest)
            if found is not None:
                return found
        return self.default

    def passthrough_upstream(self, server_name: str | None) -> str | None:
        if not server_name or not self.passthrough:
            return None
        found = self.passthrough.get(server_name)
        if found is not None:
            return found
        label, dot, rest = server_name.partition(".")
        if dot and label:
            return self.passthrough.get("*." + rest)
        return None


def _add_name(
    exact: dict[str, SSL.Context], wildcard: dict[str, SSL.Context], name: str, ctx: SSL.Context
) -> None:
    name = name.lower().rstrip(".")
    if name.startswith("*."):
        wildcard.setdefault(name[2:], ctx)
    elif name:
        exact.setdefault(name, ctx)


def _set_name(
    exact: dict[str, SSL.Context], wildcard: dict[str, SSL.Context], name: str, ctx: SSL.Context
) -> None:
    name = name.lower().rstrip(".")
    if name.startswith("*."):
        wildcard[name[2:]] = ctx
    elif name:
        exact[name] = ctx


class CertCache:
    """Builds a ``CertStore`` per snapshot, reusing Contexts whose PEM did not change."""

    def __init__(self, *, h2_available: bool = True) -> None:
        self.h2_available = h2_available  # whether this worker can serve HTTP/2 (offer it in ALPN)
        self._contexts: dict[bytes, SSL.Context | None] = {}  # fingerprint -> Context (None: unusable)
        self._client_contexts: dict[bytes, SSL.Context | None] = {}  # the same, with client certificates
        self._self_signed: tuple[str, str] | None = None
        self._base_key: bytes = b""
        self._base: SSL.Context | None = None
        self.current: CertStore | None = None
        self.unusable: frozenset[str] = frozenset()  # names of certificates skipped, for tests/metrics

    def _context(  # noqa: PLR0917
        self, name: str, cert_pem: str, key_pem: str, http2: bool, keep: dict[bytes, SSL.Context | None],
        tls: TLSParams = DEFAULT_TLS,
    ) -> SSL.Context | None:
        key = _fingerprint(cert_pem, key_pem, http2, tls)
        if key in keep:
            return keep[key]
        if key in self._contexts:
            ctx = self._contexts[key]
        else:
            try:
                ctx = make_context(cert_pem, key_pem, http2=http2, tls=tls)
            except CertificateUnusable as exc:
                log.error(  # noqa: TRY400 (one line, never a traceback: it could quote PEM)
                    "certificate %s: %s; not served (the default certificate is used instead)", name, exc
                )
                ctx = None
        keep[key] = ctx
        return ctx

    def _client_context(
        self, name: str, pem: tuple[str, str], http2: bool, auth: ClientAuth,
        keep: dict[bytes, SSL.Context | None],
    ) -> SSL.Context | None:
        """A Context for ``pem`` that asks for client certificates as ``auth`` says."""
        key = _fingerprint(*pem, http2) + client_auth_key(auth, name)
        if key in keep:
            return keep[key]
        ctx = self._client_contexts.get(key)
        if key not in self._client_contexts:
            try:
                ctx = make_context(*pem, http2=http2)
                configure_context(ctx, auth, name)
            except (CertificateUnusable, ValueError, SSL.Error, crypto.Error) as exc:
                log.error(  # noqa: TRY400 (one line, never a traceback)
                    "host %s: client certificate settings of %s unusable (%s); its requests are refused",
                    name, auth.secret or "auth-tls-secret", type(exc).__name__)
                ctx = None
        keep[key] = ctx
        return ctx

    def self_signed(self) -> tuple[str, str]:
        if self._self_signed is None:
            self._self_signed = self_signed_pem()
        return self._self_signed

    def install(self, snapshot: Snapshot) -> CertStore:
        """Build (or reuse) everything ``snapshot`` needs; the result becomes ``current``."""
        settings = snapshot.settings
        http2 = settings.http2 and self.h2_available
        tls = tls_params(settings)
        keep: dict[bytes, SSL.Context | None] = {}
        by_name: dict[str, SSL.Context] = {}
        unusable: set[str] = set()
        certificates: dict[str, Certificate] = {c.name: c for c in snapshot.certificates}
        for cert in snapshot.certificates:
            ctx = self._context(cert.name, cert.cert_pem, cert.key_pem, http2, keep, tls)
            if ctx is None:
                unusable.add(cert.name)
            else:
                by_name[cert.name] = ctx
        # The default certificate, and the base Context every handshake starts on.
        default_pem: tuple[str, str] | None = None
        wanted = settings.default_certificate
        if wanted is not None:
            chosen = certificates.get(wanted)
            if chosen is not None and wanted in by_name:
                default_pem = (chosen.cert_pem, chosen.key_pem)
            elif chosen is None:
                log.error("default certificate %s is not in the snapshot; using the self-signed one", wanted)
        if default_pem is None:
            default_pem = self.self_signed()
        default = self._context("<default>", *default_pem, http2, keep, tls)
        if default is None:  # --default-ssl-certificate was checked above; the self-signed one loads
            default_pem = self.self_signed()
            default = self._context("<default>", *default_pem, http2, keep, tls)
            assert default is not None
        base_key = b"base" + _fingerprint(*default_pem, http2, tls)
        if self._base is None or base_key != self._base_key:
            base = make_context(*default_pem, http2=http2, tls=tls)
            base.set_tlsext_servername_callback(self._on_server_name)
            self._base, self._base_key = base, base_key
        exact: dict[str, SSL.Context] = {}
        wildcard: dict[str, SSL.Context] = {}
        passthrough: dict[str, str] = {}
        for vhost in snapshot.virtual_hosts:
            if vhost.tls_secret is not None and vhost.tls_secret in by_name:
                _add_name(exact, wildcard, vhost.hostname, by_name[vhost.tls_secret])
            if settings.ssl_passthrough and vhost.passthrough_upstream and vhost.hostname:
                passthrough[vhost.hostname.lower()] = vhost.passthrough_upstream
        for cert in snapshot.certificates:  # SANs: a second chance for hosts without a tls entry
            ctx = by_name.get(cert.name)
            if ctx is not None:
                for host in cert.hosts:
                    _add_name(exact, wildcard, host, ctx)
        client_keep: dict[bytes, SSL.Context | None] = {}
        for vhost in snapshot.virtual_hosts:  # hosts that ask for client certificates: their own Context
            auth = vhost.client_auth
            if auth is None or auth.verify == "off" or not vhost.hostname:
                continue
            chosen = certificates.get(vhost.tls_secret) if vhost.tls_secret in by_name else None
            pem = (chosen.cert_pem, chosen.key_pem) if chosen is not None else default_pem
            client_ctx = self._client_context(vhost.hostname, pem, http2, auth, client_keep)
            if client_ctx is not None:
                _set_name(exact, wildcard, vhost.hostname, client_ctx)
        self._client_contexts = client_keep
        self._contexts = keep
        self.unusable = frozenset(unusable)
        store = CertStore(self._base, default, exact, wildcard, passthrough)
        self.current = store
        return store

    def _on_server_name(self, conn: SSL.Connection) -> None:
        """SNI callback of the base Context: switch to the Context of the name asked for."""
        store = self.current
        if store is None:
            return
        raw = conn.get_servername()
        name = raw.decode("ascii", "replace").lower().rstrip(".") if raw else None
        ctx = store.pick(name)
        if ctx is not store.base and ctx is not store.default:
            conn.set_context(ctx)
            switch(conn, ctx)  # a host that asks for client certificates


__all__ = [
    "DEFAULT_SUBJECT",
    "CertCache",
    "CertStore",
    "CertificateUnusable",
    "make_context",
    "self_signed_pem",
]
