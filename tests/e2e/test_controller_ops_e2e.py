"""Operating the controller for real: the admin port is up before the initial list, lists are
paginated, status.loadBalancer is cleared when an Ingress stops being ours and by the last
replica on shutdown, and an API outage never takes every replica out of the load balancer.
Real controller processes against the API server emulator; a TCP relay cuts one replica off."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import manifests as m
from tests.support.apiserver import ApiServer
from tests.support.controller import FAST_ELECTION, Controller, run_controller
from tests.support.process import wait_for
from tests.support.tcpproxy import TcpProxy
from tests.support.upstream import EchoServer

CLASS = m.ingress_class("fastingress", "fastingress.io/ingress-controller")
LB = "192.0.2.7"
PUBLISH = ("--publish-service", "default/fastingress")


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(bookmark_interval=0.2) as server:
        server.apply(CLASS)
        server.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "fastingress", "namespace": "default"},
                "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]},
                "status": {"loadBalancer": {"ingress": [{"ip": LB}]}},
            }
        )
        yield server


def _web(api: ApiServer, port: int, name: str, host: str, class_name: str = "fastingress") -> None:
    api.apply(m.service("svc"))
    api.apply(m.endpoint_slice("svc", [port]))
    api.apply(m.ingress(name, [(host, "/", "Prefix", "svc")], class_name=class_name))


def _replica(api: ApiServer, pod: str, admin_port: int, *, ready: bool = True) -> None:
    """The publish Service's EndpointSlice entry of one controller pod (its admin port named)."""
    api.apply(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"fastingress-{pod}",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "fastingress"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "admin", "port": admin_port, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": ["127.0.0.1"],
                    "conditions": {"ready": ready, "serving": True, "terminating": not ready},
                    "targetRef": {"kind": "Pod", "namespace": "default", "name": pod},
                }
            ],
        }
    )


def _lb(api: ApiServer, name: str) -> Any:
    ingress = api.get("Ingress", "default", name) or {}
    return ingress.get("status", {}).get("loadBalancer")


def _readyz(fi: Controller) -> tuple[int, str]:
    r = httpx.get(f"{fi.admin}/readyz", timeout=5)
    return r.status_code, r.text


def _status_line(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return sock.recv(4096).split(b"\r\n", 1)[0]


def test_admin_port_is_up_before_the_initial_list_which_is_paginated(
    tmp_path: Path, api: ApiServer, echo_servers: list[EchoServer]
) -> None:
    for i in range(5):
        _web(api, echo_servers[0].port, f"web-{i}", f"w{i}.test")
    api.set_down(True)  # the initial list cannot complete
    with run_controller(tmp_path, api, wait_ready=False, extra=("--list-page-size", "2")) as fi:
        wait_for(lambda: httpx.get(f"{fi.admin}/healthz", timeout=2).status_code == 200, what="/healthz")
        status, body = _readyz(fi)
        assert status == 503
        assert body.startswith("not ready: loading the initial configuration: initial list: waiting for")
        assert _status_line(fi.admin_port, "/readyz") == b"HTTP/1.1 503 Service Unavailable"
        assert fi.status()["starting"] is True
        assert "fastingress_snapshot_generation 0" in httpx.get(f"{fi.admin}/metrics", timeout=5).text
        api.set_down(False)
        fi.wait_ready()
        assert fi.server_of("w4.test") == "s0"
        log = fi.log()
        assert log.index(f"admin on http://127.0.0.1:{fi.admin_port}") < log.index("initial list complete")
        pages = [
            r for r in api.requests
            if r.path.endswith("/ingresses") and "watch" not in r.query and r.query.get("limit") == "2"
        ]  # fmt: skip
        assert sum("continue" in r.query for r in pages) >= 2  # 5 Ingresses, 2 a page


def test_status_is_cleared_when_not_ours_and_by_the_last_replica_on_shutdown(
    tmp_path: Path, api: ApiServer, echo_servers: list[EchoServer]
) -> None:
    _web(api, echo_servers[0].port, "web", "a.test")
    _web(api, echo_servers[0].port, "moving", "b.test")
    expected = {"ingress": [{"ip": LB}]}
    args = (*PUBLISH, *FAST_ELECTION)

    def run(directory: str, *extra: str) -> Any:
        (tmp_path / directory).mkdir()
        return run_controller(
            tmp_path / directory, api, extra=(*args, *extra), name="pod-a", env={"POD_NAME": "pod-a"}
        )

    with run("one") as fi:
        wait_for(lambda: _lb(api, "web") == expected and _lb(api, "moving") == expected, what="status")
        # Handed to another controller (as kubectl would: the status stays): our address goes.
        moving = api.get("Ingress", "default", "moving")
        assert moving is not None
        moving["spec"]["ingressClassName"] = "nginx"
        api.apply(moving)
        wait_for(lambda: _lb(api, "moving") == {}, what="status cleared on an Ingress not ours any more")
        assert _lb(api, "web") == expected
        # Another replica is ready (a rolling update): stopping keeps the status.
        _replica(api, "pod-a", fi.admin_port)
        _replica(api, "pod-b", 1)
        wait_for(lambda: fi.controller()["peers"] == ["pod-b (127.0.0.1:1)"], what="the peer seen")
        assert fi.stop() == 0
        assert "Ingress status kept, 1 other replicas are ready (pod-b (127.0.0.1:1))" in fi.log()
    assert _lb(api, "web") == expected

    _replica(api, "pod-b", 1, ready=False)  # the other replica is terminating too
    with run("two") as fi:
        wait_for(fi.is_leader, what="leadership")
        wait_for(lambda: fi.controller()["peers"] == ["pod-b (127.0.0.1:1) (not ready)"], what="peer")
        assert fi.stop() == 0
        assert "Ingress default/web: status.loadBalancer cleared" in fi.log()
    assert _lb(api, "web") == {}

    with run("three", "--no-update-status-on-shutdown") as fi:
        wait_for(lambda: _lb(api, "web") == expected, what="status written again")
        assert fi.stop() == 0
    assert _lb(api, "web") == expected  # the flag turned off: left as it is


def test_an_api_outage_never_takes_every_replica_out(
    tmp_path: Path, api: ApiServer, echo_servers: list[EchoServer]
) -> None:
    """Both replicas cut off the API: both stay ready.  One alone cut off: that one leaves."""
    _web(api, echo_servers[0].port, "web", "a.test")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    extra = (*PUBLISH, *FAST_ELECTION, "--api-outage-grace", "1")
    with (
        TcpProxy(api.port) as relay_a,
        TcpProxy(api.port) as relay_b,
        run_controller(
            tmp_path / "a", api, extra=extra, name="pod-a", server=relay_a.url, env={"POD_NAME": "pod-a"}
        ) as a,
        run_controller(
            tmp_path / "b", api, extra=extra, name="pod-b", server=relay_b.url, env={"POD_NAME": "pod-b"}
        ) as b,
    ):
        _replica(api, "pod-a", a.admin_port)
        _replica(api, "pod-b", b.admin_port)
        wait_for(lambda: a.controller()["peers"] == [f"pod-b (127.0.0.1:{b.admin_port})"], what="a sees b")
        wait_for(lambda: b.controller()["peers"] == [f"pod-a (127.0.0.1:{a.admin_port})"], what="b sees a")

        relay_a.cut()
        relay_b.cut()  # the API server is down for everyone
        for fi in (a, b):
            wait_for(lambda fi=fi: "no other replica has it: staying ready" in _readyz(fi)[1], timeout=15,
                     what="past the grace, a whole-API outage")  # fmt: skip
            assert _readyz(fi)[0] == 200
            assert fi.server_of("a.test") == "s0"

        relay_a.restore()
        relay_b.restore()
        for fi in (a, b):
            wait_for(lambda fi=fi: fi.controller()["api_connected"], timeout=15, what="back in contact")

        relay_a.cut()  # only replica a loses the API: it leaves the load balancer, b stays
        wait_for(lambda: _readyz(a)[0] == 503, timeout=15, what="a not ready")
        assert f"while replica pod-b (127.0.0.1:{b.admin_port}) has it" in _readyz(a)[1]
        assert _readyz(b)[0] == 200
        assert a.server_of("a.test") == "s0"  # still serving whatever reaches it
        relay_a.restore()
        wait_for(lambda: _readyz(a)[0] == 200, timeout=15, what="a ready again")
