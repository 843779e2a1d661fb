"""``x-forwarded-prefix``: the upstream gets ``X-Forwarded-Prefix: <value>`` (ingress-nginx sets it
with ``proxy_set_header``, replacing what the client sent)."""

from __future__ import annotations

from collections.abc import Sequence

from fastingress.snapshot.schema import Route, Snapshot
from workers.http1 import valid_value
from workers.policy import CONTENT, Policy, RequestCtx

_NAME = b"x-forwarded-prefix"


def compile(route: Route, snapshot: Snapshot) -> Sequence[Policy]:
    prefix = route.policy.x_forwarded_prefix
    if prefix is None:
        return ()
    value = prefix.encode("latin-1", "replace")
    if not valid_value(value):  # translation validates it; a hand-made snapshot may not
        return ()

    def request(ctx: RequestCtx) -> None:
        ctx.headers[:] = [(n, v) for n, v in ctx.headers if n != _NAME]
        ctx.upstream_headers.append((_NAME, value))

    return (Policy(CONTENT, request=request, explain=f"X-Forwarded-Prefix: {prefix} (x-forwarded-prefix)"),)
