"""Client TLS to upstreams (``backend-protocol: HTTPS`` / ``GRPCS``): stdlib ``ssl`` via trio.

Theory of operation
-------------------
``client_tls(upstream)`` reduces an Upstream to the few values that decide how a TLS
connection to it is made (:class:`ClientTLS`: verify, CA, SNI/verification name, ALPN).
It is ``None`` for cleartext protocols.  Pooled connections are keyed by endpoint AND this
value, so two upstreams sharing an endpoint with different TLS settings never share a
connection, and equal settings do.

``TLSContexts`` caches one ``ssl.SSLContext`` per (verify, CA PEM, ALPN) and the last TLS
session per (endpoint, ClientTLS): a new connection offers it, so a pool that grows or
replaces connections resumes instead of doing full handshakes.  Like nginx
(``proxy_ssl_verify off``) the default is no verification at all (``CERT_NONE``, no
hostname check); with ``tls_verify`` the peer must chain to ``tls_ca_pem`` (or the system
store when no CA is given) and match the name.  The name is ``tls_server_name``
(proxy-ssl-name), else ``host_override`` (upstream-vhost, without a port), else the
ExternalName host; it is sent as SNI unless ``tls_sni`` is false or it is an IP address.
With verification and no name at all, the certificate must cover the endpoint's IP address.

``handshake`` wraps an already connected stream; the caller runs it under the connect
timeout.  Failures become ``UpstreamFailed`` with a reason (the caller names the upstream).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl

import msgspec
import trio

from fastingress.errors import UpstreamFailed
from fastingress.snapshot.schema import Upstream

TLS_PROTOCOLS = frozenset({"HTTPS", "GRPCS"})
H2_PROTOCOLS = frozenset({"GRPC", "GRPCS", "H2C"})
_MAX_SESSIONS = 4096


class ClientTLS(msgspec.Struct, frozen=True):
    """How to make a TLS connection to an upstream (hashable: part of the pool key)."""

    verify: bool = False
    ca_pem: str | None = None
    server_name: str | None = None  # SNI and verification name
    sni: bool = True
    alpn: tuple[str, ...] = ()
    verify_depth: int = 1  # with verify: at most this many intermediate CAs (proxy-ssl-verify-depth)


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def server_name(upstream: Upstream) -> str | None:
    """The name TLS uses for SNI and verification (see the module docstring)."""
    name = upstream.tls_server_name or upstream.host_override or upstream.external_name
    if not name:
        return None
    return _strip_port(name).rstrip(".").lower() or None


def client_tls(upstream: Upstream) -> ClientTLS | None:
    """The TLS parameters of ``upstream``, or None when it is not spoken over TLS."""
    if upstream.protocol not in TLS_PROTOCOLS:
        return None
    return ClientTLS(
        verify=upstream.tls_verify,
        ca_pem=upstream.tls_ca_pem if upstream.tls_verify else None,
        server_name=server_name(upstream),
        sni=upstream.tls_sni,
        alpn=("h2",) if upstream.protocol == "GRPCS" else (),
        verify_depth=upstream.tls_verify_depth if upstream.tls_verify else 1,
    )


def _verified_chain(tls_object: object) -> list[object] | None:
    """The chain OpenSSL verified, peer first and trust anchor last (``SSLSocket`` or
    ``SSLObject``: public from Python 3.13, on ``_sslobj`` before); None when neither exists."""
    for owner in (tls_object, getattr(tls_object, "_sslobj", None)):
        method = getattr(owner, "get_verified_chain", None)
        if method is not None:
            return list(method() or ())  # (empty for a resumed session: nothing was verified)
    return None


def make_context(verify: bool, ca_pem: str | None, alpn: tuple[str, ...]) -> ssl.SSLContext:
    """A client context: TLS 1.2+, verification per ``verify`` (ssl.SSLError on a bad CA)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        if ca_pem:
            ctx.load_verify_locations(cadata=ca_pem)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class TLSContexts:
    """SSLContext cache and TLS session cache of one worker (no globals)."""

    __slots__ = ("_contexts", "_sessions")

    def __init__(self) -> None:
        self._contexts: dict[tuple[bool, str | None, tuple[str, ...]], ssl.SSLContext] = {}
        self._sessions: dict[tuple[str, int, ClientTLS], ssl.SSLSession] = {}

    def context(self, tls: ClientTLS) -> ssl.SSLContext:
        key = (tls.verify, tls.ca_pem, tls.alpn)
        ctx = self._contexts.get(key)
        if ctx is None:
            try:
                ctx = make_context(*key)
            except (ssl.SSLError, ValueError) as exc:
                raise UpstreamFailed(f"bad TLS CA certificate (proxy-ssl-secret): {exc}") from None
            self._contexts[key] = ctx
        return ctx

    def hostname(self, address: tuple[str, int], tls: ClientTLS) -> str | None:
        """The name sent as SNI and verified (see the module docstring)."""
        name = tls.server_name
        # With verification the name is needed for the hostname check even when SNI is off;
        # without SNI and without verification no name goes out at all.
        hostname = name if (tls.sni or tls.verify) and name else None
        if hostname is not None and not tls.verify and _is_ip(hostname):
            hostname = None
        if hostname is None and tls.verify:
            hostname = address[0]  # no name known: the certificate must cover the endpoint's IP
        return hostname

    def wrap(self, sock: socket.socket, address: tuple[str, int], tls: ClientTLS) -> ssl.SSLSocket:
        """A non-blocking client ``SSLSocket`` over the connected ``sock`` (handshake not done),
        resuming the last session with ``address``; UpstreamFailed on a bad name."""
        ctx = self.context(tls)
        hostname = self.hostname(address, tls)
        try:
            ssock = ctx.wrap_socket(sock, server_hostname=hostname, do_handshake_on_connect=False,
                                    session=self._sessions.get((address[0], address[1], tls)))
        except ValueError as exc:
            raise UpstreamFailed(f"TLS to {address[0]}:{address[1]}: bad name {hostname!r}: {exc}") from None
        return ssock

    def handshake_failed(
        self, address: tuple[str, int], tls: ClientTLS, exc: BaseException
    ) -> UpstreamFailed:
        """Forget the session and say why (the caller names the upstream)."""
        self._sessions.pop((address[0], address[1], tls), None)
        return UpstreamFailed(
            f"TLS handshake with {address[0]}:{address[1]} (name {tls.server_name or '-'}) failed: {exc}"
        )

    def check_alpn(self, selected: str | None, address: tuple[str, int], tls: ClientTLS) -> None:
        if tls.alpn and selected not in tls.alpn:
            raise UpstreamFailed(
                f"TLS to {address[0]}:{address[1]}: upstream did not negotiate ALPN {'/'.join(tls.alpn)}"
            )

    def check_chain(self, tls_object: object, address: tuple[str, int], tls: ClientTLS) -> None:
        """``proxy-ssl-verify-depth``: with verification, the chain OpenSSL verified may hold
        at most ``verify_depth`` intermediate CAs between the certificate and the trusted one
        (nginx's ``proxy_ssl_verify_depth``; Python's ssl has no verify-depth setting, so the
        verified chain is counted once the handshake is done).  A resumed session verifies
        nothing and has no chain: it was checked when it was made (the depth is in the key)."""
        if not tls.verify:
            return
        chain = _verified_chain(tls_object)
        if chain is None:  # fail closed: a depth that cannot be checked is not taken as met
            raise UpstreamFailed(
                f"TLS to {address[0]}:{address[1]}: this Python cannot show the verified chain, "
                "so proxy-ssl-verify-depth cannot be checked"
            )
        if len(chain) - 2 > tls.verify_depth:
            raise UpstreamFailed(
                f"TLS to {address[0]}:{address[1]}: the certificate chain has {len(chain) - 2} intermediate "
                f"CA(s), more than proxy-ssl-verify-depth {tls.verify_depth}"
            )

    def keep_session(self, session: ssl.SSLSession | None, address: tuple[str, int], tls: ClientTLS) -> None:
        if session is None:
            return
        if len(self._sessions) >= _MAX_SESSIONS:
            self._sessions.clear()
        self._sessions[(address[0], address[1], tls)] = session

    async def handshake(
        self, stream: trio.abc.Stream, address: tuple[str, int], tls: ClientTLS
    ) -> trio.SSLStream[trio.abc.Stream]:
        """TLS over ``stream`` (connected to ``address``); UpstreamFailed when it fails."""
        ctx = self.context(tls)
        hostname = self.hostname(address, tls)
        try:
            ssl_stream = trio.SSLStream(stream, ctx, server_hostname=hostname, https_compatible=True)
        except ValueError as exc:  # e.g. a name the ssl module refuses
            raise UpstreamFailed(f"TLS to {address[0]}:{address[1]}: bad name {hostname!r}: {exc}") from None
        saved = self._sessions.get((address[0], address[1], tls))
        if saved is not None:
            ssl_stream.session = saved
        try:
            await ssl_stream.do_handshake()
        except (ssl.SSLError, ssl.CertificateError, trio.BrokenResourceError, OSError) as exc:
            reason = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
            raise self.handshake_failed(address, tls, reason) from None
        self.check_alpn(ssl_stream.selected_alpn_protocol(), address, tls)
        self.check_chain(getattr(ssl_stream, "_ssl_object", None), address, tls)
        return ssl_stream

    def remember(self, stream: trio.abc.Stream, address: tuple[str, int], tls: ClientTLS) -> None:
        """Keep ``stream``'s TLS session for the next connection to ``address`` (resumption)."""
        if not isinstance(stream, trio.SSLStream):
            return
        try:
            session = stream.session
        except (AttributeError, ValueError, trio.NeedHandshakeError):
            return
        if session is None:
            return
        if len(self._sessions) >= _MAX_SESSIONS:
            self._sessions.clear()
        self._sessions[(address[0], address[1], tls)] = session


__all__ = [
    "H2_PROTOCOLS", "TLS_PROTOCOLS", "ClientTLS", "TLSContexts", "client_tls", "make_context", "server_name",
]
