"""The controller holds only the Secrets Ingresses reference (TLS and Opaque ones named by
annotations), follows references as they come and go, and lists paginated.  In-process
controller source against the API server emulator (real HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from fastingress.k8s.client import INGRESS, SECRET, SERVICE, KubeClient
from fastingress.k8s.controller import ControllerSource
from fastingress.k8s.secrets import SecretRefs, ingress_configmap_refs, ingress_secret_refs
from fastingress.settings import ControllerSettings, TranslationSettings
from tests.support import manifests as m
from tests.support.apiserver import ApiServer


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(bookmark_interval=0.1) as server:
        yield server


@pytest.fixture
def client(api: ApiServer, tmp_path: Path) -> KubeClient:
    return KubeClient.from_kubeconfig(str(api.write_kubeconfig(tmp_path / "kubeconfig")))


def secret(name: str, namespace: str = "default", kind: str = "Opaque", **data: str) -> str:
    body = ", ".join(f'"{k}": "{v}"' for k, v in data.items()) or '"x": "eA=="'
    return (
        f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
        f"type: {kind}\ndata: {{{body}}}\n"
    )


def web(name: str, host: str, *, tls: str | None = None, annotations: dict[str, str] | None = None) -> str:
    doc = m.ingress(name, [(host, "/", "Prefix", "svc")], class_name="fastingress", annotations=annotations)
    if tls:
        doc += f"  tls:\n  - hosts: [{host}]\n    secretName: {tls}\n"
    return doc


def held(source: ControllerSource) -> list[str]:
    secrets = source.store.of_kind("Secret")
    return sorted(f"{s['metadata']['namespace']}/{s['metadata']['name']}" for s in secrets)


async def until(condition: Any, what: str, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def test_refs_of_an_ingress_and_counting() -> None:
    ingress = {
        "metadata": {
            "namespace": "shop",
            "annotations": {
                "nginx.ingress.kubernetes.io/proxy-ssl-secret": "certs/backend-ca",
                "nginx.ingress.kubernetes.io/auth-secret": "basic-auth",
                "nginx.ingress.kubernetes.io/auth-tls-secret": "bad/ref/x",
                "nginx.ingress.kubernetes.io/auth-url": "ignored",
            },
        },
        "spec": {"tls": [{"secretName": "shop-tls"}, {"hosts": ["x"]}, "garbage"]},
    }
    named = {("shop", "shop-tls"), ("certs", "backend-ca"), ("shop", "basic-auth")}
    assert ingress_secret_refs(ingress) == named
    refs = SecretRefs([("ops", "default-cert")])
    added, removed = refs.set_ingress(("Ingress", "shop", "a"), ingress)
    assert added == named and not removed
    assert refs.set_ingress(("Ingress", "shop", "b"), ingress) == (set(), set())  # counted twice
    assert refs.set_ingress(("Ingress", "shop", "a"), None) == (set(), set())  # b still names them
    added, removed = refs.set_ingress(("Ingress", "shop", "b"), {"metadata": {"namespace": "shop"}})
    assert removed == named
    assert refs.snapshot == {("ops", "default-cert")}  # the flag's Secret always stays


def _settings(**kw: Any) -> ControllerSettings:
    return ControllerSettings(debounce_hold_off=0.02, debounce_max_delay=0.2, **kw)


async def test_only_referenced_secrets_are_held_and_references_are_followed(
    api: ApiServer, client: KubeClient
) -> None:
    api.apply(m.ingress_class("fastingress", "fastingress.io/ingress-controller"))
    api.apply(m.service("svc"))
    api.apply(secret("a-tls", kind="kubernetes.io/tls"))
    api.apply(secret("ca", namespace="certs", **{"ca.crt": "eA=="}))
    api.apply(secret("unrelated-tls", kind="kubernetes.io/tls"))
    for i in range(20):
        api.apply(secret(f"app-password-{i}"))
    api.apply(secret("later"))
    ca = {"nginx.ingress.kubernetes.io/proxy-ssl-secret": "certs/ca"}
    api.apply(web("a", "a.test", tls="a-tls", annotations=ca))
    default = TranslationSettings(watch_without_class=False, default_ssl_certificate="ops/fallback")
    source = ControllerSource(_settings(translation=default), client)
    await source.initial()
    try:
        assert held(source) == ["certs/ca", "default/a-tls"]
        first_list = [r for r in api.requests if r.path == SECRET.collection(None) and "watch" not in r.query]
        assert first_list and "fieldSelector" not in first_list[0].query  # every type: Opaque too
        ingress_list = next(r for r in api.requests if r.path == INGRESS.collection(None))
        assert api.requests.index(ingress_list) < api.requests.index(first_list[0])  # Ingresses first

        async def trigger(reason: str) -> None:
            await source.reload()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(source._consume)
            nursery.start_soon(source._fetch_loop)
            nursery.start_soon(source._rebuild, trigger)
            await trio.to_thread.run_sync(lambda: api.wait_for(lambda: api.watch_count("Secret") == 1))
            # A new reference to a Secret that exists: fetched (its events were dropped so far).
            api.apply(web("b", "b.test", annotations={"nginx.ingress.kubernetes.io/auth-secret": "later"}))
            await until(lambda: "default/later" in held(source), "the newly referenced Secret")
            assert source.secrets_fetched == 1
            # Changes to a held Secret arrive by watch; changes to others never reach the store.
            api.apply(secret("later", **{"auth": "bmV3"}))
            api.apply(secret("app-password-3", **{"x": "bmV3"}))
            def updated() -> bool:
                return (source.store.get("Secret", "default", "later") or {}).get("data") == {"auth": "bmV3"}

            await until(updated, "the watch event of a held Secret")
            assert "default/app-password-3" not in held(source)
            # A reference to a Secret that does not exist yet: it arrives when created.
            api.apply(web("c", "c.test", tls="c-tls"))
            fetched = SECRET.item("default", "c-tls")
            await trio.to_thread.run_sync(
                lambda: api.wait_for(lambda: any(r.path == fetched for r in api.requests))
            )
            api.apply(secret("c-tls", kind="kubernetes.io/tls"))
            await until(lambda: "default/c-tls" in held(source), "a referenced Secret created later")
            # No longer referenced: forgotten.
            api.delete("Ingress", "default", "b")
            await until(lambda: "default/later" not in held(source), "an unreferenced Secret forgotten")
            assert held(source) == ["certs/ca", "default/a-tls", "default/c-tls"]
            nursery.cancel_scope.cancel()
    finally:
        source.stop_informers()


def configmap(name: str, namespace: str = "default", **data: str) -> str:
    body = ", ".join(f'"{k}": "{v}"' for k, v in data.items())
    meta = f"{{name: {name}, namespace: {namespace}}}"
    return f"apiVersion: v1\nkind: ConfigMap\nmetadata: {meta}\ndata: {{{body}}}\n"


def held_configmaps(source: ControllerSource) -> list[str]:
    found = source.store.of_kind("ConfigMap")
    return sorted(f"{c['metadata']['namespace']}/{c['metadata']['name']}" for c in found)


def test_configmap_refs_of_an_ingress() -> None:
    ingress = {"metadata": {"namespace": "shop", "annotations": {
        "nginx.ingress.kubernetes.io/auth-proxy-set-headers": "auth-headers",
        "fastingress.io/auth-proxy-set-headers": "other/headers",
        "fastingress.io/auth-secret": "basic",  # a Secret under our own prefix: followed too
    }}}
    assert ingress_configmap_refs(ingress) == {("shop", "auth-headers"), ("other", "headers")}
    assert ingress_secret_refs(ingress) == {("shop", "basic")}


async def test_only_referenced_configmaps_are_held_and_followed(api: ApiServer, client: KubeClient) -> None:
    """auth-proxy-set-headers: the ConfigMap an Ingress names is listed, fetched when named
    later, updated by watch, and forgotten when no longer named; others never held."""
    api.apply(m.ingress_class("fastingress", "fastingress.io/ingress-controller"))
    api.apply(m.service("svc"))
    api.apply(configmap("kube-root-ca.crt", **{"ca.crt": "x"}))
    api.apply(configmap("auth-headers", **{"X-Custom": "1"}))
    api.apply(configmap("later", **{"X-Later": "1"}))
    named = {"nginx.ingress.kubernetes.io/auth-url": "http://auth/",
             "nginx.ingress.kubernetes.io/auth-proxy-set-headers": "auth-headers"}
    api.apply(web("a", "a.test", annotations=named))
    settings = _settings(translation=TranslationSettings(watch_without_class=False))
    source = ControllerSource(settings, client)
    await source.initial()
    try:
        assert held_configmaps(source) == ["default/auth-headers"]
        assert source.status()["controller"]["configmaps_held"] == 1

        async def trigger(reason: str) -> None:
            await source.reload()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(source._consume)
            nursery.start_soon(source._fetch_loop)
            nursery.start_soon(source._rebuild, trigger)
            await trio.to_thread.run_sync(lambda: api.wait_for(lambda: api.watch_count("ConfigMap") == 1))
            later = {**named, "nginx.ingress.kubernetes.io/auth-proxy-set-headers": "later"}
            api.apply(web("b", "b.test", annotations=later))
            await until(lambda: "default/later" in held_configmaps(source), "a newly named ConfigMap")
            api.apply(configmap("auth-headers", **{"X-Custom": "2"}))
            api.apply(configmap("kube-root-ca.crt", **{"ca.crt": "y"}))

            def updated() -> bool:
                found = source.store.get("ConfigMap", "default", "auth-headers") or {}
                return found.get("data") == {"X-Custom": "2"}

            await until(updated, "the watch event of a held ConfigMap")
            assert "default/kube-root-ca.crt" not in held_configmaps(source)
            api.delete("Ingress", "default", "b")
            await until(lambda: "default/later" not in held_configmaps(source), "a ConfigMap forgotten")
            nursery.cancel_scope.cancel()
        snapshot = (await source.reload()).snapshot
        (vhost,) = [v for v in snapshot.virtual_hosts if v.hostname == "a.test"]
        auth = vhost.routes[0].policy.external_auth
        assert auth is not None
        assert [(h.name, h.value) for h in auth.proxy_set_headers] == [("x-custom", ("2",))]
    finally:
        source.stop_informers()


async def test_paginated_lists_stay_consistent_and_restart_after_410(
    api: ApiServer, client: KubeClient
) -> None:
    for i in range(7):
        api.apply(m.service(f"svc-{i}"))
    client.page_size = 3
    rv_before = api.resource_version
    calls: list[str] = []

    def write_between_pages(kind: str) -> None:
        if not calls:  # the pages of one list show its first page's state, whatever happens
            api.apply(m.service("svc-new"))
            api.delete("Service", "default", "svc-6")
        calls.append(kind)

    api.on_continue = write_between_pages
    items, version = await trio.to_thread.run_sync(client.list, SERVICE, None)
    assert [o["metadata"]["name"] for o in items] == [f"svc-{i}" for i in range(7)]
    assert int(version) == rv_before
    assert len(calls) == 2  # 7 objects, 3 a page: two continue requests

    calls.clear()

    def compact_between_pages(kind: str) -> None:
        if len(calls) == 1:  # a write, history compacted: the list's token expires (410)
            api.apply(m.service("svc-late"))
            api.compact()
        calls.append(kind)

    api.on_continue = compact_between_pages
    api.clear_requests()
    items, version = await trio.to_thread.run_sync(client.list, SERVICE, None)
    assert [o["metadata"]["name"] for o in items] == [*(f"svc-{i}" for i in range(6)), "svc-late", "svc-new"]
    assert int(version) == api.resource_version
    lists = [r for r in api.requests if r.path == SERVICE.collection(None)]
    assert [("continue" in r.query, r.query.get("limit")) for r in lists] == [
        (False, "3"), (True, "3"), (True, "3"), (False, "3"), (True, "3"), (True, "3"),
    ]  # fmt: skip


def test_peers_from_the_publish_services_slices() -> None:
    from fastingress.k8s.peers import Peer, peers

    def slice_(name: str, service: str, endpoints: list[dict[str, Any]], admin: int | None = None) -> Any:
        ports = [{"name": "admin", "port": admin}] if admin else [{"name": "http", "port": 8080}]
        labels = {"kubernetes.io/service-name": service}
        return {"metadata": {"name": name, "namespace": "ops", "labels": labels}, "ports": ports,
                "endpoints": endpoints}  # fmt: skip

    def endpoint(pod: str, address: str, ready: bool | None) -> dict[str, Any]:
        conditions = {} if ready is None else {"ready": ready}
        return {"addresses": [address], "conditions": conditions, "targetRef": {"kind": "Pod", "name": pod}}

    slices = [
        slice_("a", "fastingress", [endpoint("me", "10.0.0.1", True), endpoint("two", "10.0.0.2", None)]),
        slice_("b", "fastingress", [endpoint("three", "fd00::3", False)], admin=9999),
        slice_("c", "other", [endpoint("x", "10.0.0.9", True)]),
    ]
    assert peers(slices, "ops/fastingress", "me", 10254) == [
        Peer("three", "fd00::3", 9999, False),
        Peer("two", "10.0.0.2", 10254, True),  # no "ready": ready, as the EndpointSlice API says
    ]
    assert str(Peer("three", "fd00::3", 9999, False)) == "three ([fd00::3]:9999)"
    assert peers(slices, None, "me", 10254) == []
