"""Client certificates (auth-tls-*): the TLS side (``workers.certs``) and what a request sees.

Theory of operation
-------------------
As nginx does with ``ssl_verify_client``, the handshake never fails because of a client
certificate: the verdict is kept and the *request* is answered (400, a redirect to the error
page, or forwarded with ``ssl-client-verify``), so the client gets an HTTP answer it can show.

* ``workers.certs`` builds, for each host with client certificates, a Context that asks for
  one (``VERIFY_PEER``), trusts the host's ``ca.crt`` (and checks ``ca.crl``), sends the CA
  names, has a session id context of its own (a session made for another host, or another CA,
  is never resumed here) and carries a ``ClientTLS`` as its app data;
* the SNI callback switches a connection to that Context, sets ``VERIFY_PEER`` on the
  connection itself (``SSL_set_SSL_CTX`` does not copy it; nginx does the same) and gives the
  connection a ``PeerState`` as app data;
* ``verify_callback`` runs for each certificate of the client's chain: it accepts them all and
  records the last error (pyOpenSSL clears OpenSSL's own record when a callback accepts) and
  a chain longer than ``auth-tls-verify-depth`` allows (``ssl_verify_depth``: levels 0 to
  depth+1, the trust anchor included);
* ``peer(conn, key)`` is what a request on that connection sees, computed once per connection:
  whether the connection was verified for the ``key`` of the request's host (else the client
  named another host in SNI: nginx answers 421), the verify result as nginx's
  ``$ssl_client_verify`` (``SUCCESS``, ``FAILED:reason``, ``NONE``), the subject and issuer DNs
  (RFC 2253, as ``$ssl_client_s_dn``/``$ssl_client_i_dn``) and the URL-escaped PEM
  (``$ssl_client_escaped_cert``).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

from fastingress.snapshot.schema import ClientAuth

CHAIN_TOO_LONG = 22  # X509_V_ERR_CERT_CHAIN_TOO_LONG
# nginx's ngx_ssl_verify_error_optional: what ``optional_no_ca`` lets through
OPTIONAL_NO_CA_ERRORS = frozenset({
    2,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18,  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19,  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20,  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21,  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
})


def client_auth_key(auth: ClientAuth, hostname: str) -> bytes:
    """Whom a handshake's verdict is for: the host (nginx answers 421 to a request for another
    server than the one SNI chose) and what it was checked against."""
    h = hashlib.sha256()
    for part in (hostname, auth.ca_pem, auth.crl_pem, auth.verify, str(auth.depth)):
        h.update(part.encode("utf-8", "replace"))
        h.update(b"\0")
    return h.digest()


class ClientTLS(NamedTuple):
    """App data of a Context that asks for client certificates."""

    key: bytes
    depth: int
    store: crypto.X509Store  # the Context's trust store (CAs, CRL), to judge resumed sessions


class PeerInfo(NamedTuple):
    """A connection's client certificate as a request sees it (see ``peer``)."""

    misdirected: bool  # verified for another host (SNI named another one): 421
    has_cert: bool
    error: int  # the last X509 verification error (0: none)
    verify: bytes  # $ssl_client_verify
    subject: bytes  # $ssl_client_s_dn ("" when none)
    issuer: bytes  # $ssl_client_i_dn
    escaped_cert: bytes  # $ssl_client_escaped_cert


NO_PEER = PeerInfo(False, False, 0, b"NONE", b"", b"", b"")


class PeerState:
    """App data of a connection switched to a client-certificate Context."""

    __slots__ = ("config", "depth", "error", "info", "key")

    def __init__(self, config: ClientTLS) -> None:
        self.config = config
        self.key = config.key
        self.depth = config.depth
        self.error = 0
        self.info: PeerInfo | None = None


def verify_callback(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    """Accept every certificate (the request gets the verdict); remember what was wrong."""
    state = conn.get_app_data()
    if isinstance(state, PeerState):
        if errno:
            state.error = errno
        elif depth > state.depth + 1:
            state.error = CHAIN_TOO_LONG
    return True


def switch(conn: SSL.Connection, ctx: SSL.Context) -> None:
    """After ``conn.set_context(ctx)`` in the SNI callback: verify as ``ctx`` says."""
    config = ctx.get_app_data()
    if not isinstance(config, ClientTLS):
        return
    conn.set_app_data(PeerState(config))
    callback = getattr(ctx, "_verify_callback", None)  # the Context's own (no callback per connection)
    _lib.SSL_set_verify(conn._ssl, _lib.SSL_VERIFY_PEER, callback if callback is not None else _ffi.NULL)


def _error_string(code: int) -> bytes:
    text: bytes = _ffi.string(_lib.X509_verify_cert_error_string(code))
    return text


def dn_bytes(name: x509.Name) -> bytes:
    """An RFC 2253 DN as header-safe bytes (control and non-ASCII bytes as ``\\XX``, as
    OpenSSL's ``XN_FLAG_RFC2253`` writes them)."""
    text = name.rfc4514_string()
    out = bytearray()
    for byte in text.encode("utf-8", "replace"):
        if 0x20 <= byte < 0x7F:
            out.append(byte)
        else:
            out += b"\\%02X" % byte
    return bytes(out)


def peer(conn: object, key: bytes) -> PeerInfo:
    """The client certificate of TLS connection ``conn`` for a host whose settings have ``key``."""
    if not isinstance(conn, SSL.Connection):
        return NO_PEER
    state = conn.get_app_data()
    if not isinstance(state, PeerState) or state.key != key:
        named = conn.get_servername() is not None
        return NO_PEER._replace(misdirected=named)
    if state.info is None:
        if _lib.SSL_session_reused(conn._ssl):
            state.error = _verify_again(conn, state.config)
        state.info = _peer_info(conn, state.error)
    return state.info


def _verify_again(conn: SSL.Connection, config: ClientTLS) -> int:
    """The verdict on a resumed session's certificate, from this host's trust store.

    OpenSSL decides on resuming a TLS 1.2 session (or a 1.3 ticket) before the SNI callback
    picks the host, so the session may come from another host whose CAs vouched for it, and
    no verification ran in this handshake: judge the stored chain again, here."""
    cert = conn.get_peer_certificate()
    if cert is None:
        return 0
    chain = conn.get_peer_cert_chain() or []
    leaf = cert.to_cryptography()
    untrusted = [c for c in chain if c.to_cryptography() != leaf]
    try:
        verified = crypto.X509StoreContext(config.store, cert, untrusted).get_verified_chain()
    except crypto.X509StoreContextError as exc:
        code = exc.errors[0] if exc.errors and isinstance(exc.errors[0], int) else 0
        return code or 1
    return CHAIN_TOO_LONG if len(verified) > config.depth + 2 else 0


def _peer_info(conn: SSL.Connection, error: int) -> PeerInfo:
    cert = conn.get_peer_certificate()
    if cert is None:
        return NO_PEER._replace(error=error)
    leaf = cert.to_cryptography()
    verify = b"FAILED:" + _error_string(error) if error else b"SUCCESS"
    pem = leaf.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return PeerInfo(
        misdirected=False, has_cert=True, error=error, verify=verify, subject=dn_bytes(leaf.subject),
        issuer=dn_bytes(leaf.issuer), escaped_cert=quote(pem, safe="").encode("ascii"),
    )


def configure_context(ctx: SSL.Context, auth: ClientAuth, hostname: str) -> None:
    """Make a fresh server Context ask for and check client certificates as ``auth`` says.
    Raises ValueError for a CA or CRL that does not load (translation checked them)."""
    cas = x509.load_pem_x509_certificates(auth.ca_pem.encode("ascii", "replace"))
    key = client_auth_key(auth, hostname)
    ctx.set_verify(SSL.VERIFY_PEER, verify_callback)
    store = ctx.get_cert_store()
    if store is None:
        raise ValueError("no certificate store")
    for ca in cas:
        store.add_cert(crypto.X509.from_cryptography(ca))
    if auth.crl_pem:
        store.add_crl(x509.load_pem_x509_crl(auth.crl_pem.encode("ascii", "replace")))
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK | crypto.X509StoreFlags.CRL_CHECK_ALL)
    ctx.set_client_ca_list([crypto.X509.from_cryptography(ca).get_subject() for ca in cas])
    ctx.set_session_id(b"fastingress-mtls-" + key[:7].hex().encode())  # at most 32 bytes
    ctx.set_app_data(ClientTLS(key, auth.depth, store))


__all__ = [
    "NO_PEER", "OPTIONAL_NO_CA_ERRORS", "ClientTLS", "PeerInfo", "PeerState", "client_auth_key",
    "configure_context", "dn_bytes", "peer", "switch", "verify_callback",
]
