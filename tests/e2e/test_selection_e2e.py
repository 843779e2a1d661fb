"""Which backend and endpoint serve a request (issue 9, selection), through real sockets: a real
``fastingress standalone`` process, several real upstream servers on 127.0.0.1 (each answers with
its name), httpx (and an HTTP/2 client) as clients.

Canary precedence (header, cookie, weight), weights with canary-weight-total, cookie affinity
across requests and after an endpoint goes away, EWMA preferring the fast endpoint, consistent
hashing that keeps keys in place, proxy-next-upstream on 502 / refused connects / timeouts, and
service-upstream.  Data-path cases run on both HTTP/1.1 paths: one process per codec (the
event-driven core with llhttp, the h11 Session) serves the whole module, watching a folder in
which every test writes its own file, with its own namespace and host names.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.support import manifests as m
from tests.support.h2client import H2Client
from tests.support.process import Fastingress, free_port, run_fastingress
from tests.support.tls_upstreams import H2EchoServer
from tests.support.upstream import EchoServer

pytestmark = pytest.mark.timeout(120)

CODECS = ("llhttp", "h11")
P = "nginx.ingress.kubernetes.io/"


class Proxy:
    """A running fastingress watching ``folder``; ``apply`` writes a test's file and waits until
    every worker uses it; calling it makes a request on a new connection (so every worker gets
    some) carrying only the cookies given (the client keeps no jar)."""

    def __init__(self, fi: Fastingress, folder: Path, codec: str) -> None:
        self.fi = fi
        self.folder = folder
        self.codec = codec
        fresh = httpx.Limits(max_keepalive_connections=0)
        self.client = httpx.Client(base_url=fi.base, timeout=15, limits=fresh)

    def apply(self, name: str, *docs: str) -> None:
        generation = self.fi.generation()
        m.write(self.folder / f"{name}.yaml", *docs)
        self.fi.wait_generation(generation + 1)

    def __call__(
        self, host: str, path: str = "/", *, method: str = "GET", headers: dict[str, str] | None = None,
        cookies: dict[str, str] | None = None,
    ) -> httpx.Response:
        self.client.cookies.clear()
        sent = {"Host": host, **(headers or {})}
        if cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        return self.client.request(method, path, headers=sent)


def _proxy(tmp_path_factory: pytest.TempPathFactory, codec: str) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp(f"selection-{codec}")
    folder = tmp / "manifests"
    folder.mkdir()
    m.write(folder / "base.yaml", m.service("placeholder"))
    with run_fastingress(tmp, manifests=[folder], extra=("--http1-codec", codec)) as fi:
        proxy = Proxy(fi, folder, codec)
        try:
            yield proxy
        finally:
            proxy.client.close()


@pytest.fixture(scope="module")
def llhttp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from _proxy(tmp_path_factory, "llhttp")


@pytest.fixture(scope="module")
def h11(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from _proxy(tmp_path_factory, "h11")


@pytest.fixture(params=CODECS)
def proxy(request: pytest.FixtureRequest) -> Proxy:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture
def servers() -> Iterator[list[EchoServer]]:
    started = [EchoServer(f"s{i}") for i in range(3)]
    for s in started:
        s.__enter__()
    try:
        yield started
    finally:
        for s in started:
            s.__exit__(None, None, None)


def server_of(r: httpx.Response) -> str:
    assert r.status_code == 200, (r.status_code, r.text)
    name = r.json()["server"]
    assert isinstance(name, str)
    return name


def _canary_docs(ns: str, main: EchoServer, canary: EchoServer) -> list[str]:
    def pair(host: str, annotations: dict[str, str]) -> list[str]:
        name = host.split(".", maxsplit=1)[0]
        return [
            m.ingress(f"{name}-main", [(host, "/", "Prefix", "web"), (host, "/only-main", "Prefix", "web")],
                      namespace=ns),
            m.ingress(f"{name}-canary", [(host, "/", "Prefix", "web-v2")], namespace=ns,
                      annotations={P + "canary": "true", **annotations}),
        ]

    return [
        m.service("web", namespace=ns), m.endpoint_slice("web", [main.port], namespace=ns),
        m.service("web-v2", namespace=ns), m.endpoint_slice("web-v2", [canary.port], namespace=ns),
        *pair(f"shop.{ns}", {P + "canary-by-header": "X-Canary", P + "canary-by-cookie": "beta"}),
        *pair(f"value.{ns}", {P + "canary-by-header": "X-Version", P + "canary-by-header-value": "v2",
                              P + "canary-by-cookie": "beta"}),
        *pair(f"pattern.{ns}", {P + "canary-by-header": "X-Version",
                                P + "canary-by-header-pattern": "^v2(\\.[0-9]+)?$"}),
        *pair(f"half.{ns}", {P + "canary-weight": "500", P + "canary-weight-total": "1000"}),
        *pair(f"all.{ns}", {P + "canary-weight": "1000", P + "canary-weight-total": "1000",
                            P + "canary-by-header": "X-Canary"}),
    ]


@pytest.mark.parametrize("codec", CODECS)
def test_canary_precedence_and_weights(
    request: pytest.FixtureRequest, servers: list[EchoServer], codec: str
) -> None:
    """Every rule on the core (and HTTP/2); the precedence again on the h11 Session."""
    proxy: Proxy = request.getfixturevalue(codec)
    ns = f"canary-{codec}"
    proxy.apply(ns, *_canary_docs(ns, servers[0], servers[1]))
    cases = [
        ("shop", {}, {}, "s0"),  # no rule applies: weight 0
        ("shop", {"X-Canary": "always"}, {}, "s1"),
        ("shop", {"X-Canary": "never"}, {"beta": "always"}, "s0"),  # the header comes first
        ("shop", {"X-Canary": "sometimes"}, {"beta": "always"}, "s1"),  # then the cookie
        ("shop", {}, {"beta": "never"}, "s0"),
        ("value", {"X-Version": "v2"}, {}, "s1"),
        ("value", {"X-Version": "always"}, {}, "s0"),  # a value replaces always/never
        ("value", {"X-Version": "v3"}, {"beta": "always"}, "s1"),
        ("pattern", {"X-Version": "v2.7"}, {}, "s1"),
        ("pattern", {"X-Version": "v20"}, {}, "s0"),
        ("all", {"X-Canary": "never"}, {}, "s0"),
        ("all", {}, {}, "s1"),
    ]
    for host, headers, cookies, expected in cases if codec == "llhttp" else cases[:5]:
        r = proxy(f"{host}.{ns}", "/x", headers=headers, cookies=cookies)
        assert server_of(r) == expected, (host, headers, cookies)
        # the canary never takes the main Ingress's other paths
        assert server_of(proxy(f"{host}.{ns}", "/only-main", headers=headers, cookies=cookies)) == "s0"
    if codec == "llhttp":
        with httpx.Client(base_url=proxy.fi.base, timeout=10) as client:
            split = Counter(server_of(client.get("/", headers={"Host": f"half.{ns}"})) for _ in range(120))
        assert 27 <= split["s1"] <= 93 and split["s0"] + split["s1"] == 120, split  # 50%, within 6 sigma
        assert trio.run(_h2_canary, proxy.fi, f"shop.{ns}".encode()) == ["s1", "s0"]


async def _h2_canary(fi: Fastingress, authority: bytes) -> list[str]:
    """The same decision for HTTP/2 streams (h2c prior knowledge)."""
    stream = await trio.open_tcp_stream("127.0.0.1", fi.http_port)
    client = H2Client(stream)
    out = []
    for value in (b"always", b"never"):
        r = await client.request(b"/x", authority=authority, headers=[(b"x-canary", value)])
        out.append(json.loads(r.body)["server"])
    await stream.aclose()
    return out


def _persistent_cookie(backend: str, port: int) -> str:
    """The cookie ingress-nginx (and fastingress) sets in persistent mode for 127.0.0.1:port."""
    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    return f"{md5(backend + f'127.0.0.1:{port}')}|{md5(md5(backend) + backend)}"


def test_cookie_affinity(proxy: Proxy, servers: list[EchoServer]) -> None:
    ns = f"affinity-{proxy.codec}"
    live = servers
    dead = free_port()  # an endpoint nobody listens on: connects are refused
    sticky = {P + "affinity": "cookie", P + "affinity-mode": "persistent", P + "session-cookie-name": "PIN",
              P + "session-cookie-max-age": "60"}
    p, b, c = f"p.{ns}", f"b.{ns}", f"c.{ns}"

    def apply(ports: list[int]) -> None:
        proxy.apply(
            ns,
            m.service("app", namespace=ns), m.endpoint_slice("app", ports, namespace=ns),
            m.ingress("persistent", [(p, "/shop", "Prefix", "app")], namespace=ns, annotations=sticky),
            m.ingress("balanced", [(b, "/", "Prefix", "app")], namespace=ns,
                      annotations={P + "affinity": "cookie"}),
            m.ingress("changing", [(c, "/", "Prefix", "app")], namespace=ns,
                      annotations={**sticky, P + "session-cookie-change-on-failure": "true"}),
            m.ingress("plain", [(f"plain.{ns}", "/", "Prefix", "app")], namespace=ns),
        )

    apply([s.port for s in live] + [dead])
    r = proxy(p, "/shop/cart")
    pinned = server_of(r)
    assert r.headers["set-cookie"].startswith("PIN=")
    assert "; Max-Age=60; Path=/shop; HttpOnly" in r.headers["set-cookie"]
    jar = {"PIN": r.cookies["PIN"]}
    again = [proxy(p, "/shop/x", cookies=jar) for _ in range(10)]
    assert {server_of(r) for r in again} == {pinned}
    assert all("set-cookie" not in r.headers for r in again)  # the cookie is kept
    assert "set-cookie" not in proxy(f"plain.{ns}").headers
    assert len({server_of(proxy(p, "/shop/x")) for _ in range(24)}) >= 2  # new sessions spread out

    r = proxy(b)
    balanced_pin, balanced_jar = server_of(r), {"INGRESSCOOKIE": r.cookies["INGRESSCOOKIE"]}
    assert {server_of(proxy(b, cookies=balanced_jar)) for _ in range(6)} == {balanced_pin}

    # The session's Pod is on a dead endpoint: the retry goes elsewhere and pins it only with
    # session-cookie-change-on-failure (ingress-nginx: otherwise the same endpoint again, so 502).
    dead_jar = {"PIN": _persistent_cookie(f"{ns}-app-80", dead)}
    r = proxy(c, cookies=dead_jar)
    assert server_of(r) in {"s0", "s1", "s2"} and r.headers["set-cookie"].startswith("PIN=")
    assert proxy(p, "/shop/", cookies=dead_jar).status_code == 502

    # The pinned endpoint goes away.
    apply([s.port for s in live if s.name != pinned])
    r = proxy(p, "/shop/x", cookies=jar)
    moved = server_of(r)
    assert moved != pinned and r.headers["set-cookie"].startswith("PIN=")  # persistent: a new pin
    assert {server_of(proxy(p, "/shop/", cookies={"PIN": r.cookies["PIN"]})) for _ in range(6)} == {moved}
    after = [proxy(b, cookies=balanced_jar) for _ in range(6)]
    assert len({server_of(r) for r in after}) == 1  # balanced: the same key hashes to one live Pod
    assert all("set-cookie" not in r.headers for r in after)  # and the cookie is kept
    if balanced_pin != pinned:
        assert server_of(after[0]) == balanced_pin  # its own Pod is still there: no move


def test_ewma_and_consistent_hashing(llhttp: Proxy, servers: list[EchoServer]) -> None:
    ns = "balancing"
    fast = servers[0]
    with EchoServer("slow", delay=0.1) as slow:
        docs = [
            m.service("pair", namespace=ns), m.endpoint_slice("pair", [fast.port, slow.port], namespace=ns),
            m.ingress("ewma", [(f"ewma.{ns}", "/", "Prefix", "pair")], namespace=ns,
                      annotations={P + "load-balance": "ewma"}),
            m.ingress("hash", [(f"hash.{ns}", "/", "Prefix", "app")], namespace=ns,
                      annotations={P + "upstream-hash-by": "$request_uri"}),
            m.ingress("hash-cookie", [(f"cookie.{ns}", "/", "Prefix", "app")], namespace=ns,
                      annotations={P + "upstream-hash-by": "${cookie_user}-x"}),
            m.service("app", namespace=ns),
        ]
        llhttp.apply(ns, *docs, m.endpoint_slice("app", [s.port for s in servers], namespace=ns))
        with httpx.Client(base_url=llhttp.fi.base, timeout=10) as client:
            picks = Counter(server_of(client.get("/", headers={"Host": f"ewma.{ns}"})) for _ in range(40))
        assert picks["s0"] >= 32, picks  # after a measure or two, the fast endpoint wins

        # new connections: both workers answer, with the same ring
        paths = [f"/item/{i}?v={i % 3}" for i in range(15)]  # odd: round robin would move some
        first = {path: server_of(llhttp(f"hash.{ns}", path)) for path in paths}
        assert len(set(first.values())) >= 2
        assert {path: server_of(llhttp(f"hash.{ns}", path)) for path in paths} == first
        users = {u: server_of(llhttp(f"cookie.{ns}", cookies={"user": u})) for u in ("ann", "bob", "cid")}
        for user, server in users.items():
            assert server_of(llhttp(f"cookie.{ns}", "/z", cookies={"user": user})) == server
        # one endpoint goes away: only its keys move
        removed = servers[2]
        llhttp.apply(ns, *docs, m.endpoint_slice("app", [s.port for s in servers[:2]], namespace=ns))
        after = {path: server_of(llhttp(f"hash.{ns}", path)) for path in paths}
        for path in paths:
            if first[path] != removed.name:
                assert after[path] == first[path], path
            else:
                assert after[path] != removed.name


def test_next_upstream(proxy: Proxy, servers: list[EchoServer]) -> None:
    ns = f"retry-{proxy.codec}"
    good = servers[0]
    dead = free_port()
    with EchoServer("bad", status=502) as bad, EchoServer("stuck", delay=5.0) as stuck:
        proxy.apply(
            ns,
            m.service("flaky", namespace=ns), m.endpoint_slice("flaky", [good.port, bad.port], namespace=ns),
            m.service("gone", namespace=ns), m.endpoint_slice("gone", [good.port, dead], namespace=ns),
            m.service("slow", namespace=ns), m.endpoint_slice("slow", [good.port, stuck.port], namespace=ns),
            m.ingress("r502", [(f"r502.{ns}", "/", "Prefix", "flaky")], namespace=ns,
                      annotations={P + "proxy-next-upstream": "error timeout http_502"}),
            m.ingress("plain", [(f"plain.{ns}", "/", "Prefix", "flaky")], namespace=ns),
            m.ingress("refused", [(f"refused.{ns}", "/", "Prefix", "gone")], namespace=ns,
                      annotations={P + "proxy-next-upstream": "error", P + "proxy-next-upstream-tries": "2"}),
            m.ingress("timeout", [(f"timeout.{ns}", "/", "Prefix", "slow")], namespace=ns,
                      annotations={P + "proxy-next-upstream": "timeout", P + "proxy-read-timeout": "1"}),
        )
        # one keep-alive connection: one worker, whose round robin alternates the two endpoints
        with httpx.Client(base_url=proxy.fi.base, timeout=15) as client:
            assert {server_of(client.get("/", headers={"Host": f"r502.{ns}"})) for _ in range(6)} == {"s0"}
            assert bad.requests  # the 502 endpoint was tried, and its answer dropped
            plain = Counter(client.get("/", headers={"Host": f"plain.{ns}"}).status_code for _ in range(6))
            assert plain == {200: 3, 502: 3}  # without the annotation a 502 is the answer
            posts = Counter(client.post("/", headers={"Host": f"r502.{ns}"}, content=b"").status_code
                            for _ in range(4))
            assert posts == {200: 2, 502: 2}  # POST is not idempotent: sent once
            assert {server_of(client.get("/", headers={"Host": f"refused.{ns}"})) for _ in range(4)} == {"s0"}
            for _ in range(2):
                assert server_of(client.get("/", headers={"Host": f"timeout.{ns}"})) == "s0"
        assert stuck.requests  # the stuck endpoint was tried, timed out, and the request moved on
        log = proxy.fi.log()
        assert "next upstream (status)" in log and "next upstream (timeout)" in log


def test_service_upstream(llhttp: Proxy, servers: list[EchoServer]) -> None:
    ns = "cluster-ip"
    up = servers[0]
    service = m.service("svc", namespace=ns, port=up.port).replace(
        "type: ClusterIP", "type: ClusterIP\n  clusterIP: 127.0.0.1")
    llhttp.apply(
        ns,
        service, m.endpoint_slice("svc", [free_port()], namespace=ns),  # the Pods are unreachable
        m.ingress("via-cluster-ip", [(f"vip.{ns}", "/", "Prefix", "svc")], namespace=ns,
                  annotations={P + "service-upstream": "true"}, service_port=up.port),
        m.ingress("via-pods", [(f"pods.{ns}", "/", "Prefix", "svc")], namespace=ns, service_port=up.port),
    )
    assert server_of(llhttp(f"vip.{ns}")) == "s0"
    assert llhttp(f"pods.{ns}").status_code == 502


def test_hashing_and_affinity_reach_http2_upstreams(llhttp: Proxy) -> None:
    """gRPC / h2c upstreams get the endpoint the route's selection chose, like HTTP/1.1 ones."""
    ns = "h2-selection"
    with H2EchoServer() as one, H2EchoServer() as two:
        llhttp.apply(
            ns,
            m.service("h2", namespace=ns), m.endpoint_slice("h2", [one.port, two.port], namespace=ns),
            m.ingress("hashed", [(f"hash.{ns}", "/", "Prefix", "h2")], namespace=ns, annotations={
                P + "backend-protocol": "H2C", P + "upstream-hash-by": "$request_uri"}),
            m.ingress("sticky", [(f"sticky.{ns}", "/", "Prefix", "h2")], namespace=ns, annotations={
                P + "backend-protocol": "H2C", P + "affinity": "cookie"}),
        )
        paths = [f"/call/{i}" for i in range(15)]  # odd: plain round robin would move some
        for _ in range(2):
            for path in paths:
                assert llhttp(f"hash.{ns}", path).status_code == 200
        seen = [{r["headers"][":path"] for r in server.requests} for server in (one, two)]
        assert seen[0] and seen[1] and not seen[0] & seen[1]  # every path on one server only
        r = llhttp(f"sticky.{ns}", "/s")
        jar = {"INGRESSCOOKIE": r.cookies["INGRESSCOOKIE"]}
        before = (len(one.requests), len(two.requests))
        for _ in range(6):
            assert llhttp(f"sticky.{ns}", "/s", cookies=jar).status_code == 200
        grown = (len(one.requests) - before[0], len(two.requests) - before[1])
        assert sorted(grown) == [0, 6]  # all on the pinned server
