"""Ingress semantics through real sockets: a real ``fastingress standalone`` process, real
upstream servers on 127.0.0.1, and httpx as the client."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import manifests as m
from tests.support.process import run_fastingress
from tests.support.upstream import EchoServer
from tests.unit.test_routing import SPEC_TABLE


def _services(servers: list[EchoServer]) -> list[str]:
    docs = []
    for i, s in enumerate(servers):
        docs += [m.service(f"svc{i}"), m.endpoint_slice(f"svc{i}", [s.port])]
    return docs


def _server(client: httpx.Client, host: str, path: str) -> str | int:
    r = client.get(path, headers={"Host": host})
    if r.status_code != 200:
        return r.status_code
    name: str = r.json()["server"]
    return name


def test_kubernetes_path_matching_table(tmp_path: Path, echo_servers: list[EchoServer]) -> None:
    docs = _services(echo_servers)
    for i, (rules, _request, _expected) in enumerate(SPEC_TABLE):
        docs.append(
            m.ingress(f"case-{i}", [(f"case{i}.test", p, t, f"svc{k}") for k, (p, t) in enumerate(rules)])
        )
    m.write(tmp_path / "cases.yaml", *docs)
    with run_fastingress(tmp_path, manifests=[tmp_path / "cases.yaml"]) as fi, httpx.Client(
        base_url=fi.base
    ) as c:
        for i, (rules, request, expected) in enumerate(SPEC_TABLE):
            got = _server(c, f"case{i}.test", request)
            if expected is None:
                assert got == 404, (rules, request)
            else:
                k = [f"{t}:{p}" for p, t in rules].index(expected)
                assert got == f"s{k}", (rules, request, expected)


def test_hosts_wildcards_merging_and_conflicts(tmp_path: Path, echo_servers: list[EchoServer]) -> None:
    m.write(
        tmp_path / "hosts.yaml",
        *_services(echo_servers),
        m.ingress("exact", [("foo.example.test", "/", "Prefix", "svc0")]),
        m.ingress("wild", [("*.example.test", "/", "Prefix", "svc1")]),
        m.ingress("any", [(None, "/", "Prefix", "svc2")]),
        # Two Ingresses merged on one host; the same path in both: the older one wins.
        m.ingress(
            "newer",
            [("m.test", "/", "Prefix", "svc0"), ("m.test", "/dup", "Prefix", "svc0")],
            created="2025-01-01T00:00:00Z",
        ),
        m.ingress(
            "older",
            [("m.test", "/api", "Prefix", "svc1"), ("m.test", "/dup", "Prefix", "svc1")],
            created="2023-01-01T00:00:00Z",
        ),
    )
    with run_fastingress(tmp_path, manifests=[tmp_path / "hosts.yaml"]) as fi, httpx.Client(
        base_url=fi.base
    ) as c:
        assert _server(c, "foo.example.test", "/") == "s0"
        assert _server(c, "FOO.example.test:8080", "/x") == "s0"
        assert _server(c, "bar.example.test", "/") == "s1"
        assert _server(c, "a.bar.example.test", "/") == "s2"  # a wildcard covers one label only
        assert _server(c, "example.test", "/") == "s2"
        assert _server(c, "unknown.test", "/") == "s2"
        assert _server(c, "m.test", "/") == "s0"
        assert _server(c, "m.test", "/api/v1") == "s1"
        assert _server(c, "m.test", "/dup") == "s1"
        status = fi.status()
        text = str(status.get("diagnostics"))
        assert "default/newer" in text or "newer" in text


def test_default_backends(tmp_path: Path, echo_servers: list[EchoServer]) -> None:
    m.write(
        tmp_path / "default.yaml",
        *_services(echo_servers),
        m.ingress("site", [("a.test", "/x", "Prefix", "svc0")], default_backend="svc1"),
        m.ingress("other", [("b.test", "/x", "Exact", "svc0")]),
    )
    with run_fastingress(tmp_path, manifests=[tmp_path / "default.yaml"]) as fi, httpx.Client(
        base_url=fi.base
    ) as c:
        assert _server(c, "a.test", "/x/1") == "s0"
        assert _server(c, "a.test", "/y") == "s1"  # the host's own defaultBackend
        assert _server(c, "nohost.test", "/") == "s1"  # catch-all: the defaultBackend
        assert _server(c, "b.test", "/x") == "s0"
        assert _server(c, "b.test", "/x/1") == "s1"  # no route on b.test: the default backend


def test_ingress_class_selection(tmp_path: Path, echo_servers: list[EchoServer]) -> None:
    ours = "example.com/custom-controller"
    files = m.write(
        tmp_path / "classes.yaml",
        *_services(echo_servers),
        m.ingress_class("mine", ours),
        m.ingress_class("theirs", "k8s.io/ingress-nginx"),
        m.ingress("by-controller", [("c1.test", "/", "Prefix", "svc0")], class_name="mine"),
        m.ingress("by-name", [("c2.test", "/", "Prefix", "svc0")], class_name="named"),
        m.ingress(
            "legacy",
            [("c3.test", "/", "Prefix", "svc0")],
            annotations={"kubernetes.io/ingress.class": "named"},
        ),
        m.ingress("theirs", [("c4.test", "/", "Prefix", "svc0")], class_name="theirs"),
        m.ingress("no-class", [("c5.test", "/", "Prefix", "svc0")]),
    )
    flags: tuple[str, ...] = ("--controller-class", ours, "--ingress-class", "named")
    with run_fastingress(tmp_path, manifests=[files], extra=flags) as fi, httpx.Client(base_url=fi.base) as c:
        assert [_server(c, f"c{i}.test", "/") for i in range(1, 6)] == ["s0", "s0", "s0", 404, "s0"]
    flags += ("--no-watch-ingress-without-class",)
    with run_fastingress(tmp_path, manifests=[files], extra=flags) as fi, httpx.Client(base_url=fi.base) as c:
        assert _server(c, "c5.test", "/") == 404
        assert _server(c, "c1.test", "/") == "s0"
    # A default IngressClass of ours takes in Ingresses without a class.
    m.write(tmp_path / "default-class.yaml", m.ingress_class("mine-default", ours, default=True))
    with run_fastingress(
        tmp_path, manifests=[files, tmp_path / "default-class.yaml"], extra=flags
    ) as fi, httpx.Client(base_url=fi.base) as c:
        assert _server(c, "c5.test", "/") == "s0"


def test_rewrite_target_with_regex_paths_as_in_the_seed_manifest(
    tmp_path: Path, echo_servers: list[EchoServer]
) -> None:
    """The DESIGN.md seed pattern: frontend on "/" and an API masked under "/api" by a second
    Ingress with use-regex + rewrite-target "/$2"; the upstream sees the rewritten path."""
    m.write(
        tmp_path / "seed.yaml",
        *_services(echo_servers),
        m.ingress("frontend", [("app.test", "/", "Prefix", "svc0")]),
        m.ingress(
            "api",
            [("app.test", "/api(/|$)(.*)", "ImplementationSpecific", "svc1")],
            annotations={
                "nginx.ingress.kubernetes.io/use-regex": "true",
                "nginx.ingress.kubernetes.io/rewrite-target": "/$2",
            },
        ),
    )
    with run_fastingress(tmp_path, manifests=[tmp_path / "seed.yaml"]) as fi, httpx.Client(
        base_url=fi.base, headers={"Host": "app.test"}
    ) as c:
        r = c.get("/api/users/7?x=1")
        assert r.json()["server"] == "s1" and r.json()["path"] == "/users/7?x=1"
        assert c.get("/API").json()["path"] == "/"  # case-insensitive, like nginx's ~*
        assert c.get("/apix").json()["server"] == "s0"  # (/|$): a slash or the end
        shop = c.get("/shop/cart").json()
        assert shop["server"] == "s0" and shop["path"] == "/shop/cart"  # not rewritten
