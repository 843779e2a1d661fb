"""Opaque Secrets in controller mode, through a real ``fastingress controller`` process against the
API server emulator (list + watch): the Secret an ``auth-secret`` annotation names is watched and
honoured, a change to it reaches the data path, a Secret nothing names is not held, and a
Secret that becomes named is fetched."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import manifests as m
from tests.support.apiserver import ApiServer
from tests.support.controller import run_controller
from tests.support.process import wait_for
from tests.support.upstream import EchoServer

NGINX = "nginx.ingress.kubernetes.io/"


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(bookmark_interval=0.2) as server:
        server.apply(m.ingress_class("fastingress", "fastingress.io/ingress-controller"))
        yield server


def _opaque(name: str, user: str, password: str) -> str:
    digest = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()  # (htpasswd -s)
    auth = base64.b64encode(f"{user}:{{SHA}}{digest}\n".encode()).decode()
    return (
        f"apiVersion: v1\nkind: Secret\ntype: Opaque\nmetadata:\n  name: {name}\n  namespace: default\n"
        f"data:\n  auth: {auth}\n"
    )


def _guarded(name: str, host: str, secret: str) -> str:
    return m.ingress(name, [(host, "/", "Prefix", "web")], class_name="fastingress",
                     annotations={NGINX + "auth-type": "basic", NGINX + "auth-secret": secret})


def test_an_opaque_auth_secret_is_watched_and_only_named_secrets_are_held(
    tmp_path: Path, api: ApiServer, echo_servers: list[EchoServer]
) -> None:
    api.apply(m.service("web"))
    api.apply(m.endpoint_slice("web", [echo_servers[0].port]))
    api.apply(_opaque("basic", "alice", "first"))
    api.apply(_opaque("later", "bob", "third"))  # named by nothing yet
    api.apply(_guarded("web", "a.test", "basic"))
    with run_controller(tmp_path, api, workers=1) as fi, httpx.Client(base_url=fi.base, timeout=5) as client:
        def status(host: str, auth: tuple[str, str] | None = None) -> int:
            return client.get("/", headers={"Host": host}, auth=auth).status_code

        assert status("a.test") == 401
        assert status("a.test", ("alice", "first")) == 200
        controller = fi.status()["controller"]
        assert controller["secrets_held"] == controller["secrets_referenced"] == 1  # not "later"
        # a changed Secret reaches the data path
        api.apply(_opaque("basic", "alice", "second"))
        wait_for(lambda: status("a.test", ("alice", "second")) == 200, what="the Secret's new password")
        assert status("a.test", ("alice", "first")) == 401
        # a Secret that becomes named is fetched and honoured
        api.apply(_guarded("other", "b.test", "later"))
        wait_for(lambda: status("b.test", ("bob", "third")) == 200, what="the newly named Secret")
        assert status("b.test") == 401
        assert fi.status()["controller"]["secrets_held"] == 2
        # and one that is deleted fails its Ingress closed
        api.delete("Secret", "default", "later")
        wait_for(lambda: status("b.test", ("bob", "third")) == 503, what="fail closed without the Secret")
        assert status("a.test", ("alice", "second")) == 200
