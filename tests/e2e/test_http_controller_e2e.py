"""custom-headers in controller mode: the controller watches ConfigMaps (list+watch against the
API server emulator), so a ConfigMap's change reaches the response headers of the Ingresses
that name it, and its deletion fails them closed (503), as ingress-nginx denies the location."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import manifests as m
from tests.support.apiserver import ApiServer
from tests.support.controller import run_controller
from tests.support.process import wait_for
from tests.support.upstream import EchoServer


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(bookmark_interval=0.2) as server:
        server.apply(m.ingress_class("fastingress", "fastingress.io/ingress-controller"))
        yield server


def _configmap(value: str) -> str:
    return (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: headers\n  namespace: default\n"
        f"data:\n  X-Frame-Options: {value}\n"
    )


def test_custom_headers_follow_their_configmap(
    tmp_path: Path, api: ApiServer, echo_servers: list[EchoServer]
) -> None:
    api.apply(m.service("web"))
    api.apply(m.endpoint_slice("web", [echo_servers[0].port]))
    api.apply(_configmap("DENY"))
    api.apply(m.ingress("web", [("a.test", "/", "Prefix", "web")], class_name="fastingress",
                        annotations={"nginx.ingress.kubernetes.io/custom-headers": "headers"}))
    with run_controller(tmp_path, api, workers=1) as fi, httpx.Client(base_url=fi.base, timeout=5) as client:
        def frame_options() -> str | int:
            r = client.get("/", headers={"Host": "a.test"})
            return r.headers.get("x-frame-options", "") if r.status_code == 200 else r.status_code

        assert frame_options() == "DENY"
        api.apply(_configmap("SAMEORIGIN"))
        wait_for(lambda: frame_options() == "SAMEORIGIN", what="the ConfigMap's new value")
        api.delete("ConfigMap", "default", "headers")
        wait_for(lambda: frame_options() == 503, what="fail closed without the ConfigMap")
        api.apply(_configmap("DENY"))
        wait_for(lambda: frame_options() == "DENY", what="served again")
