"""The Kubernetes API server emulator, driven by the OFFICIAL kubernetes client over real HTTP.

These tests pin the semantics a controller can observe: list with resourceVersion, watch from a
resourceVersion (ADDED / MODIFIED / DELETED / BOOKMARK), 410 Gone after compaction, the Ingress
status subresource with optimistic concurrency, Leases, Events, outages and dropped watches.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.support.apiserver import ApiServer

INGRESS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  ingressClassName: fastingress
  rules:
    - host: shop.example
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {service: {name: web, port: {number: 80}}}
"""

CLUSTER = (
    INGRESS
    + """
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: fastingress}
spec: {controller: fastingress.io/ingress-controller}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.0.0.1]
    conditions: {ready: true}
---
apiVersion: v1
kind: Secret
metadata: {name: tls, namespace: shop}
type: kubernetes.io/tls
data: {tls.crt: "", tls.key: ""}
---
apiVersion: v1
kind: Secret
metadata: {name: other}
type: Opaque
data: {password: c2VjcmV0}
"""
)


@dataclass
class Clients:
    """The official typed APIs (typed ``Any`` here: their models make every field optional)."""

    core: Any
    net: Any
    disc: Any
    coord: Any


def _configuration(api: ApiServer, directory: Path) -> client.Configuration:
    """A client configuration loaded the way the controller loads it: from a kubeconfig file."""
    configuration = client.Configuration()
    kubeconfig = api.write_kubeconfig(directory / "kubeconfig")
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration
    )
    return configuration


def _watcher() -> Any:
    return watch.Watch()  # type: ignore[no-untyped-call]


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(bookmark_interval=0.05) as server:
        yield server


@pytest.fixture
def k8s(api: ApiServer, tmp_path: Path) -> Clients:
    configuration = _configuration(api, tmp_path)
    assert configuration.host == api.url
    configuration.retries = 0  # fail fast in outage tests
    api_client = client.ApiClient(configuration)
    return Clients(
        client.CoreV1Api(api_client),
        client.NetworkingV1Api(api_client),
        client.DiscoveryV1Api(api_client),
        client.CoordinationV1Api(api_client),
    )


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; its result or exception lands in the returned list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _events(stream: Iterator[dict[str, Any]], count: int) -> list[tuple[str, str, str]]:
    """The first ``count`` non-bookmark events as (type, name, resourceVersion)."""
    seen: list[tuple[str, str, str]] = []
    for event in stream:
        if event["type"] == "BOOKMARK":
            continue
        meta = event["raw_object"]["metadata"]
        seen.append((event["type"], meta["name"], meta["resourceVersion"]))
        if len(seen) == count:
            break
    return seen


def test_list_returns_applied_objects_with_resource_versions(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    ingresses = k8s.net.list_ingress_for_all_namespaces()
    assert ingresses.metadata.resource_version == str(api.resource_version)
    [ing] = ingresses.items
    assert ing.metadata.name == "web" and ing.metadata.namespace == "shop"
    assert int(ing.metadata.resource_version) <= api.resource_version
    assert ing.metadata.uid and ing.metadata.generation == 1 and ing.metadata.creation_timestamp
    assert ing.spec.rules[0].host == "shop.example"

    assert [c.spec.controller for c in k8s.net.list_ingress_class().items] == [
        "fastingress.io/ingress-controller"
    ]
    assert k8s.core.read_namespaced_service("web", "shop").spec.ports[0].port == 80
    slices = k8s.disc.list_namespaced_endpoint_slice("shop", label_selector="kubernetes.io/service-name=web")
    assert [s.endpoints[0].addresses for s in slices.items] == [["10.0.0.1"]]
    # namespace "default" is filled in; field selectors on type
    tls = k8s.core.list_secret_for_all_namespaces(field_selector="type=kubernetes.io/tls")
    assert [s.metadata.name for s in tls.items] == ["tls"]
    assert k8s.core.read_namespaced_secret("other", "default").type == "Opaque"
    assert [s.metadata.name for s in k8s.core.list_namespaced_secret("shop").items] == ["tls"]


def test_selectors(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    api.apply(INGRESS.replace("name: web\n", "name: api\n").replace("app: web", "app: api, tier: back"))

    def names(**selectors: str) -> list[str]:
        return [i.metadata.name for i in k8s.net.list_ingress_for_all_namespaces(**selectors).items]

    assert names() == ["api", "web"]
    assert names(label_selector="app=web") == ["web"]
    assert names(label_selector="app!=web") == ["api"]
    assert names(label_selector="tier") == ["api"]
    assert names(label_selector="!tier") == ["web"]
    assert names(label_selector="app in (api,web),tier") == ["api"]
    assert names(field_selector="metadata.name=web") == ["web"]
    assert names(field_selector="metadata.namespace=other") == []
    with pytest.raises(ApiException) as err:
        names(field_selector="spec.rules=x")
    assert err.value.status == 400


def test_watch_from_list_resource_version_replays_and_streams(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    start = k8s.net.list_namespaced_ingress("shop").metadata.resource_version
    # changes made before the watch are replayed from history ...
    body = client.V1Ingress(metadata=client.V1ObjectMeta(name="b"), spec=client.V1IngressSpec())
    k8s.net.create_namespaced_ingress("shop", body)
    api.delete("Ingress", "shop", "web")
    api.apply(CLUSTER)  # web comes back: ADDED with a new uid

    def live_changes() -> None:
        assert api.wait_for(lambda: api.watch_count("Ingress") == 1)
        current = k8s.net.read_namespaced_ingress("b", "shop")
        current.metadata.labels = {"x": "y"}
        k8s.net.replace_namespaced_ingress("b", "shop", current)
        k8s.net.delete_namespaced_ingress("b", "shop")

    thread, errors = _in_thread(live_changes)
    stream = _watcher().stream(
        k8s.net.list_namespaced_ingress, "shop", resource_version=start, timeout_seconds=10
    )
    seen = _events(stream, 5)
    stream.close()
    thread.join(5)
    assert errors == [None]
    assert [(t, n) for t, n, _ in seen] == [
        ("ADDED", "b"),
        ("DELETED", "web"),
        ("ADDED", "web"),
        ("MODIFIED", "b"),
        ("DELETED", "b"),
    ]
    versions = [int(rv) for _, _, rv in seen]
    assert versions == sorted(versions) and versions[0] > int(start) and len(set(versions)) == 5
    assert versions[-1] == api.resource_version


def test_watch_without_resource_version_starts_with_added(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    stream = _watcher().stream(k8s.core.list_secret_for_all_namespaces, timeout_seconds=5)
    assert sorted(n for _, n, _ in _events(stream, 2)) == ["other", "tls"]
    stream.close()


def test_watch_selector_transitions_become_added_and_deleted(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    start = api.resource_version
    api.apply(INGRESS.replace("app: web", "app: moved"))  # leaves the selection
    api.apply(INGRESS)  # comes back
    stream = _watcher().stream(
        k8s.net.list_ingress_for_all_namespaces,
        label_selector="app=web",
        resource_version=str(start),
        timeout_seconds=5,
    )
    assert [(t, n) for t, n, _ in _events(stream, 2)] == [("DELETED", "web"), ("ADDED", "web")]
    stream.close()


def test_apply_accepts_lists_and_unquoted_timestamps(api: ApiServer, k8s: Clients) -> None:
    api.apply("""
apiVersion: v1
kind: List
items:
  - apiVersion: coordination.k8s.io/v1
    kind: Lease
    metadata: {name: l, namespace: kube-system, creationTimestamp: 2025-05-06T07:08:09Z}
    spec: {holderIdentity: x, renewTime: 2025-05-06T07:08:09.5Z}
""")
    stored = api.get("Lease", "kube-system", "l")
    assert stored is not None
    assert stored["metadata"]["creationTimestamp"] == "2025-05-06T07:08:09Z"
    assert stored["spec"]["renewTime"] == "2025-05-06T07:08:09.500000Z"
    assert k8s.coord.read_namespaced_lease("l", "kube-system").spec.holder_identity == "x"
    with pytest.raises(ValueError, match="unsupported apiVersion/kind"):
        api.apply({"apiVersion": "networking.k8s.io/v1beta1", "kind": "Ingress", "metadata": {"name": "x"}})


def test_noop_apply_bumps_nothing(api: ApiServer) -> None:
    api.apply(CLUSTER)
    before = api.resource_version
    api.apply(CLUSTER)
    assert api.resource_version == before


def test_bookmarks_only_when_asked(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    rv = str(api.resource_version)
    w = _watcher()
    for event in w.stream(
        k8s.net.list_ingress_for_all_namespaces,
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    ):
        assert event["type"] == "BOOKMARK"
        assert event["raw_object"] == {
            "kind": "Ingress",
            "apiVersion": "networking.k8s.io/v1",
            "metadata": {"resourceVersion": rv},
        }
        w.stop()
    assert w.resource_version == rv
    types = [
        e["type"]
        for e in _watcher().stream(
            k8s.net.list_ingress_for_all_namespaces, resource_version=rv, timeout_seconds=1
        )
    ]
    assert types == []


def test_compacted_resource_version_is_410_gone(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    old = k8s.net.list_ingress_for_all_namespaces().metadata.resource_version
    api.apply(INGRESS.replace("shop.example", "shop2.example"))
    horizon = api.compact()
    # with timeout_seconds the v37 Watch raises on the first ERROR event
    with pytest.raises(ApiException) as err:
        list(
            _watcher().stream(
                k8s.net.list_ingress_for_all_namespaces, resource_version=old, timeout_seconds=5
            )
        )
    assert err.value.status == 410
    assert f"too old resource version: {old} ({horizon})" in str(err.value.reason)
    # without it, the client retries once from the same version, then raises
    api.clear_requests()
    with pytest.raises(ApiException) as err:
        list(_watcher().stream(k8s.net.list_ingress_for_all_namespaces, resource_version=old))
    assert err.value.status == 410
    assert [r.query.get("resourceVersion") for r in api.requests] == [old, old]
    # a LIST at an exact, compacted version is 410 too; from the horizon on, watching works
    with pytest.raises(ApiException) as err:
        k8s.net.list_ingress_for_all_namespaces(resource_version=old, resource_version_match="Exact")
    assert err.value.status == 410
    api.apply(INGRESS.replace("shop.example", "shop3.example"))
    stream = _watcher().stream(
        k8s.net.list_ingress_for_all_namespaces, resource_version=str(horizon), timeout_seconds=5
    )
    assert [(t, n) for t, n, _ in _events(stream, 1)] == [("MODIFIED", "web")]
    stream.close()


def test_force_relist_expires_even_current_versions(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    current = k8s.net.list_ingress_for_all_namespaces().metadata.resource_version
    thread, out = _watch_in_thread(k8s)
    assert api.wait_for(lambda: api.watch_count() == 1)
    horizon = api.force_relist()
    thread.join(5)
    assert out == [["ADDED"]] and horizon == int(current) + 1
    with pytest.raises(ApiException) as err:
        list(
            _watcher().stream(
                k8s.net.list_ingress_for_all_namespaces, resource_version=current, timeout_seconds=5
            )
        )
    assert err.value.status == 410
    relisted = k8s.net.list_ingress_for_all_namespaces().metadata.resource_version
    assert relisted == str(horizon)
    api.apply(INGRESS.replace("shop.example", "after.example"))
    stream = _watcher().stream(
        k8s.net.list_ingress_for_all_namespaces, resource_version=relisted, timeout_seconds=5
    )
    assert [(t, n) for t, n, _ in _events(stream, 1)] == [("MODIFIED", "web")]
    stream.close()


def test_ingress_status_subresource(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    stale = k8s.net.read_namespaced_ingress("web", "shop")
    api.apply(INGRESS.replace("shop.example", "new.example"))  # someone else writes: stale is stale
    stale.status = client.V1IngressStatus(
        load_balancer=client.V1IngressLoadBalancerStatus(
            ingress=[client.V1IngressLoadBalancerIngress(ip="1.2.3.4")]
        )
    )
    with pytest.raises(ApiException) as err:
        k8s.net.replace_namespaced_ingress_status("web", "shop", stale)
    assert err.value.status == 409
    assert '"reason": "Conflict"' in str(err.value.body)

    current = k8s.net.read_namespaced_ingress("web", "shop")
    generation = current.metadata.generation
    current.status = stale.status
    current.spec.rules[0].host = "ignored.example"  # /status ignores everything but status
    current.metadata.labels = {"ignored": "yes"}
    updated = k8s.net.replace_namespaced_ingress_status("web", "shop", current)
    assert updated.status.load_balancer.ingress[0].ip == "1.2.3.4"
    assert int(updated.metadata.resource_version) > int(current.metadata.resource_version)
    stored = api.get("Ingress", "shop", "web")
    assert stored is not None
    assert stored["spec"]["rules"][0]["host"] == "new.example"
    assert stored["metadata"]["labels"] == {"app": "web"}
    assert stored["metadata"]["generation"] == generation

    # the main resource ignores status but bumps generation on spec changes
    fresh = k8s.net.read_namespaced_ingress("web", "shop")
    fresh.spec.rules[0].host = "spec.example"
    fresh.status = client.V1IngressStatus()
    replaced = k8s.net.replace_namespaced_ingress("web", "shop", fresh)
    assert replaced.status.load_balancer.ingress[0].ip == "1.2.3.4"
    assert replaced.spec.rules[0].host == "spec.example"
    assert replaced.metadata.generation == generation + 1


def test_patch_is_served_and_recorded(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    api.clear_requests()
    patch = {"status": {"loadBalancer": {"ingress": [{"hostname": "lb.example"}]}}}
    k8s.net.patch_namespaced_ingress_status("web", "shop", patch)
    assert api.get("Ingress", "shop", "web")["status"] == patch["status"]  # type: ignore[index]
    assert [(r.method, r.path) for r in api.requests] == [
        ("PATCH", "/apis/networking.k8s.io/v1/namespaces/shop/ingresses/web/status")
    ]
    k8s.net.patch_namespaced_ingress(
        "web", "shop", [{"op": "add", "path": "/metadata/labels/x", "value": "1"}]
    )
    assert api.get("Ingress", "shop", "web")["metadata"]["labels"] == {"app": "web", "x": "1"}  # type: ignore[index]


def test_create_get_delete_errors(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    with pytest.raises(ApiException) as err:
        k8s.core.create_namespaced_service("shop", client.V1Service(metadata=client.V1ObjectMeta(name="web")))
    assert err.value.status == 409 and '"reason": "AlreadyExists"' in str(err.value.body)
    with pytest.raises(ApiException) as err:
        k8s.net.read_namespaced_ingress("nope", "shop")
    assert err.value.status == 404
    assert '"message": "ingresses.networking.k8s.io \\"nope\\" not found"' in str(err.value.body)
    with pytest.raises(ApiException) as err:
        k8s.net.replace_namespaced_ingress(
            "nope", "shop", client.V1Ingress(metadata=client.V1ObjectMeta(name="nope"))
        )
    assert err.value.status == 404
    with pytest.raises(ApiException) as err:
        k8s.core.list_pod_for_all_namespaces()  # a kind the emulator does not serve
    assert err.value.status == 404
    status = k8s.net.delete_namespaced_ingress("web", "shop")  # v37 returns the raw Status dict
    assert status["kind"] == "Status" and status["status"] == "Success"
    assert status["details"]["name"] == "web" and status["details"]["kind"] == "ingresses"
    assert api.get("Ingress", "shop", "web") is None
    with pytest.raises(ApiException) as err:
        k8s.net.delete_namespaced_ingress("web", "shop")
    assert err.value.status == 404


def test_lease_optimistic_concurrency(api: ApiServer, k8s: Clients) -> None:
    lease: Any = client.V1Lease(
        metadata=client.V1ObjectMeta(name="fastingress-leader"),
        spec=client.V1LeaseSpec(
            holder_identity="a",
            lease_duration_seconds=30,
            lease_transitions=0,
            acquire_time=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
            renew_time=datetime(2026, 1, 2, 4, 4, 5, 678901, tzinfo=timezone(timedelta(hours=1))),
        ),
    )
    created = k8s.coord.create_namespaced_lease("kube-system", lease)
    stored = api.get("Lease", "kube-system", "fastingress-leader")
    assert stored is not None  # MicroTime, serialised as the real server does
    assert stored["spec"]["acquireTime"] == stored["spec"]["renewTime"] == "2026-01-02T03:04:05.678901Z"
    assert created.spec.renew_time == lease.spec.renew_time
    with pytest.raises(ApiException) as err:
        k8s.coord.create_namespaced_lease("kube-system", lease)
    assert err.value.status == 409

    mine = k8s.coord.read_namespaced_lease("fastingress-leader", "kube-system")
    mine.spec.holder_identity = "b"
    mine.spec.lease_transitions = 1
    renewed = k8s.coord.replace_namespaced_lease("fastingress-leader", "kube-system", mine)
    assert renewed.spec.holder_identity == "b"
    created.spec.holder_identity = "c"  # a competitor with the old resourceVersion loses
    with pytest.raises(ApiException) as err:
        k8s.coord.replace_namespaced_lease("fastingress-leader", "kube-system", created)
    assert err.value.status == 409
    assert api.get("Lease", "kube-system", "fastingress-leader")["spec"]["holderIdentity"] == "b"  # type: ignore[index]


def test_events_are_recorded(api: ApiServer, k8s: Clients) -> None:
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="web."),
        involved_object=client.V1ObjectReference(kind="Ingress", namespace="shop", name="web"),
        reason="MissingService",
        message="service shop/api not found",
        type="Warning",
    )
    created = k8s.core.create_namespaced_event("shop", event)
    assert created.metadata.name.startswith("web.")
    [stored] = api.objects("Event")
    assert stored["reason"] == "MissingService" and stored["involvedObject"]["name"] == "web"
    found = k8s.core.list_namespaced_event(
        "shop", field_selector="involvedObject.name=web,reason=MissingService"
    )
    assert len(found.items) == 1


def _watch_in_thread(k8s: Clients) -> tuple[threading.Thread, list[Any]]:
    def run() -> list[str]:
        return [
            e["type"]
            for e in _watcher().stream(
                k8s.net.list_ingress_for_all_namespaces, resource_version="1", timeout_seconds=30
            )
        ]

    return _in_thread(run)


def test_drop_watches_ends_streams(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    thread, out = _watch_in_thread(k8s)
    assert api.wait_for(lambda: api.watch_count() == 1)
    api.drop_watches()
    thread.join(5)
    assert not thread.is_alive() and out == [["ADDED"]]  # a clean end: the generator just stops

    thread, out = _watch_in_thread(k8s)
    assert api.wait_for(lambda: api.watch_count() == 1)
    api.drop_watches(abrupt=True)
    thread.join(5)
    assert not thread.is_alive() and isinstance(out[0], urllib3.exceptions.HTTPError)
    assert api.wait_for(lambda: api.watch_count() == 0)


def test_watch_count_follows_client_disconnects(api: ApiServer, k8s: Clients) -> None:
    w = _watcher()
    stream = w.stream(k8s.net.list_ingress_for_all_namespaces, allow_watch_bookmarks=True, timeout_seconds=30)
    assert next(stream)["type"] == "BOOKMARK"
    assert api.watch_count("Ingress") == 1
    stream.close()
    assert api.wait_for(lambda: api.watch_count() == 0, timeout=3)


def test_outage(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    thread, out = _watch_in_thread(k8s)
    assert api.wait_for(lambda: api.watch_count() == 1)
    api.set_down(True)
    thread.join(5)
    assert isinstance(out[0], urllib3.exceptions.HTTPError)  # watches are cut
    with pytest.raises(ApiException) as err:
        k8s.net.list_ingress_for_all_namespaces()
    assert err.value.status == 503
    api.set_down(True, mode="close")
    with pytest.raises(urllib3.exceptions.HTTPError):
        k8s.net.list_ingress_for_all_namespaces()
    api.set_down(False)
    assert [i.metadata.name for i in k8s.net.list_ingress_for_all_namespaces().items] == ["web"]


def test_strict_namespaces(tmp_path: Path) -> None:
    with ApiServer(strict_namespaces=True) as api:
        core: Any = client.CoreV1Api(client.ApiClient(_configuration(api, tmp_path)))
        secret = client.V1Secret(metadata=client.V1ObjectMeta(name="s"), type="Opaque")
        with pytest.raises(ApiException) as err:
            core.create_namespaced_secret("nowhere", secret)
        assert err.value.status == 404 and 'namespaces \\"nowhere\\" not found' in str(err.value.body)
        assert core.create_namespaced_secret("default", secret).metadata.namespace == "default"


def test_namespace_delete_removes_its_objects(api: ApiServer, k8s: Clients) -> None:
    api.apply(CLUSTER)
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    k8s.core.delete_namespace("shop")
    assert api.objects("Ingress") == [] and [s["metadata"]["name"] for s in api.objects("Secret")] == [
        "other"
    ]


def test_close_with_open_connections_is_prompt(tmp_path: Path) -> None:
    with ApiServer() as api:
        configuration = _configuration(api, tmp_path)
        net: Any = client.NetworkingV1Api(client.ApiClient(configuration))
        net.list_ingress_for_all_namespaces()  # leaves a keep-alive connection in the pool
        thread, _ = _in_thread(
            lambda: list(_watcher().stream(net.list_ingress_for_all_namespaces, timeout_seconds=30))
        )
        assert api.wait_for(lambda: api.watch_count() == 1)
    thread.join(5)
    assert not thread.is_alive()
