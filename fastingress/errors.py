"""One error hierarchy for fastingress.

Like trio's ClosedResourceError vs BrokenResourceError we separate *our side*
(``LocalError``: bad configuration, our own resources closed) from *the peer's
side* (``PeerError``: a client or an upstream misbehaved or went away).  Every
error carries the HTTP status it maps to, like h11's ``error_status_hint``,
so the data path can turn any of them into a short plain-text response.
"""

from __future__ import annotations


class FastIngressError(Exception):
    """Base class of every error fastingress raises on purpose."""

    status_hint: int = 500
    # The request's policies (``workers.policy.RequestCtx``) when raised while deciding a route
    # that has some: the data path answers with the route's response hooks (CORS headers on a
    # 503) and ends the request with its done hooks.
    ctx: object = None

    def __init__(self, message: str = "", *, status_hint: int | None = None) -> None:
        super().__init__(message)
        if status_hint is not None:
            self.status_hint = status_hint


class LocalError(FastIngressError):
    """Something on our side: configuration, flags, files we were told to read."""


class PeerError(FastIngressError):
    """Something on the peer's side: a client or upstream broke the protocol or went away."""


class ConfigError(LocalError):
    """A bad flag, an unreadable file, an invalid setting (exit code 2 on the CLI)."""


class SnapshotError(LocalError):
    """A snapshot that cannot be decoded or has an unsupported schema version."""


class BadRequest(PeerError):
    status_hint = 400


class BodyTooLarge(PeerError):
    status_hint = 413


class HeadersTooLarge(PeerError):
    status_hint = 431


class NoRoute(LocalError):
    status_hint = 404


class NoEndpoint(LocalError):
    status_hint = 503


class UpstreamFailed(PeerError):
    status_hint = 502


class UpstreamTimeout(PeerError):
    status_hint = 504
