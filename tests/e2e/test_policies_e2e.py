"""Per-route policies from ingress-nginx annotations, through real sockets: a real
``fastingress standalone`` process, real upstreams on 127.0.0.1, httpx as the client.

Each policy area of issue 9 adds its cases here (or in a module of its own when they need
more set-up); every case runs against both HTTP/1.1 paths (the event-driven core and the h11
reference) where the data path matters.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import manifests as m
from tests.support.process import run_fastingress
from tests.support.upstream import EchoServer

CODECS = ("llhttp", "h11")


def headers(seen: dict[str, object]) -> dict[str, list[str]]:
    """The request headers an EchoServer saw: lower-case name -> values."""
    out: dict[str, list[str]] = {}
    for name, value in seen["headers"]:  # type: ignore[attr-defined]
        out.setdefault(name.lower(), []).append(value)
    return out


@pytest.mark.parametrize("codec", CODECS)
def test_x_forwarded_prefix(tmp_path: Path, echo_servers: list[EchoServer], codec: str) -> None:
    up = echo_servers[0]
    m.write(
        tmp_path / "app.yaml",
        m.service("app"), m.endpoint_slice("app", [up.port]),
        m.ingress("app", [("app.test", "/app(/|$)(.*)", "ImplementationSpecific", "app")], annotations={
            "nginx.ingress.kubernetes.io/rewrite-target": "/$2",
            "nginx.ingress.kubernetes.io/x-forwarded-prefix": "/app",
        }),
        m.ingress("plain", [("plain.test", "/", "Prefix", "app")]),
    )
    with run_fastingress(tmp_path, manifests=[tmp_path / "app.yaml"], extra=["--http1-codec", codec]) as fi, \
            httpx.Client(base_url=fi.base) as client:
        r = client.get("/app/users?x=1", headers={"Host": "app.test", "X-Forwarded-Prefix": "/evil"})
        assert r.status_code == 200
        seen = r.json()
        assert seen["path"] == "/users?x=1"
        assert headers(seen) == {**headers(seen), "x-forwarded-prefix": ["/app"]}  # the client's is replaced
        r = client.get("/x", headers={"Host": "plain.test", "X-Forwarded-Prefix": "/kept"})
        assert headers(r.json())["x-forwarded-prefix"] == ["/kept"]  # no policy: passed on as sent
