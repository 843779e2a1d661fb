"""The per-route policy areas (see ``workers.policy``); ``COMPILERS`` lists them in the order their
hooks run within a phase.

Each area is a module with ``compile(route, snapshot) -> Sequence[Policy]`` that returns nothing
for a route that does not use it.  To add one: write the module, add it here.
"""

from __future__ import annotations

from workers.policies import access, cors, errors, extauth, forwarded, headers, limits, redirects, selection
from workers.policy import Compiler

COMPILERS: tuple[Compiler, ...] = (
    access.compile,  # first: the client certificate is judged before any other REWRITE hook (nginx)
    redirects.compile_app_root,  # REWRITE, in the template's order: app-root, CORS, redirect
    cors.compile,
    redirects.compile,
    forwarded.compile,
    extauth.compile,
    headers.compile,
    errors.compile,
    selection.compile,
    limits.compile,
)


def worker_compilers(limiter: limits.Limiter) -> tuple[Compiler, ...]:
    """``COMPILERS`` for a worker process: the limits area counts in the replica's shared
    segment (``limiter``) instead of a table private to the process."""
    return tuple(limiter.compile if c is limits.compile else c for c in COMPILERS)


__all__ = ["COMPILERS", "worker_compilers"]
