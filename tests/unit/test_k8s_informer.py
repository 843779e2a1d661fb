"""Informers and the controller source in-process, against the API server emulator (real HTTP)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from fastingress.k8s.client import INGRESS, SERVICE, ApiError, KubeClient
from fastingress.k8s.controller import ControllerSource
from fastingress.k8s.informer import Backoff, Changed, Informer, Listed, Lost, Message
from fastingress.settings import ControllerSettings
from fastingress.translate import Diagnostic
from tests.support import manifests as m
from tests.support.apiserver import ApiServer

FAST = Backoff(base=0.02, cap=0.1)


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(bookmark_interval=0.1) as server:
        yield server


@pytest.fixture
def client(api: ApiServer, tmp_path: Path) -> KubeClient:
    return KubeClient.from_kubeconfig(str(api.write_kubeconfig(tmp_path / "kubeconfig")))


async def _next(recv: trio.MemoryReceiveChannel[Message], kind: type[Any]) -> Any:
    with trio.fail_after(5):
        while True:
            message = await recv.receive()
            if isinstance(message, kind):
                return message


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


async def test_list_watch_drop_410_and_outage(api: ApiServer, client: KubeClient) -> None:
    api.apply(m.service("a"))
    send, recv = trio.open_memory_channel[Message](100)
    informer = Informer(client, SERVICE, None, send, trio.lowlevel.current_trio_token(), backoff=FAST)
    informer.start()
    try:
        listed = await _next(recv, Listed)
        assert [o["metadata"]["name"] for o in listed.items] == ["a"]
        assert listed.items[0]["kind"] == "Service"  # list items get their kind back

        await _in_thread(api.apply, m.service("b"))
        changed = await _next(recv, Changed)
        assert (changed.type, changed.object["metadata"]["name"]) == ("ADDED", "b")

        # A clean end of the watch: watch again from the last version, no relist, nothing lost.
        api.drop_watches()
        await _in_thread(api.apply, m.service("c"))
        changed = await _next(recv, Changed)
        assert changed.object["metadata"]["name"] == "c"
        assert informer.lists == 1

        # Compacted history: 410 Gone -> relist with the full state.
        await _in_thread(lambda: api.wait_for(lambda: api.watch_count("Service") == 1))
        api.compact()
        api.drop_watches(abrupt=True)
        await _in_thread(api.delete, "Service", "default", "a")
        listed = await _next(recv, Listed)
        assert sorted(o["metadata"]["name"] for o in listed.items) == ["b", "c"]
        assert informer.lists == 2

        # Outage: Lost, then a relist once the API answers again.
        api.set_down(True)
        lost = await _next(recv, Lost)
        assert "503" in lost.reason or "Error" in lost.reason
        api.set_down(False)
        listed = await _next(recv, Listed)
        assert sorted(o["metadata"]["name"] for o in listed.items) == ["b", "c"]
    finally:
        informer.stop()
        await _in_thread(informer.join, 5.0)


async def test_keep_filter_drops_unreferenced_objects_as_they_are_decoded(
    api: ApiServer, client: KubeClient
) -> None:
    from fastingress.k8s.client import SECRET

    for name in ("tls", "opaque", "other"):
        api.apply(f"apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: Opaque\ndata: {{}}\n")
    keep = frozenset({("default", "tls"), ("default", "opaque")})
    send, recv = trio.open_memory_channel[Message](100)
    informer = Informer(client, SECRET, None, send, trio.lowlevel.current_trio_token(), keep=lambda: keep)
    informer.start()
    try:
        listed = await _next(recv, Listed)
        assert sorted(o["metadata"]["name"] for o in listed.items) == ["opaque", "tls"]
        assert listed.basis == keep
        await _in_thread(lambda: api.wait_for(lambda: api.watch_count("Secret") == 1))
        api.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: other}\ntype: Opaque\ndata: {a: eA==}\n")
        api.delete("Secret", "default", "other")  # DELETED always passes (the store ignores it)
        api.apply("apiVersion: v1\nkind: Secret\nmetadata: {name: tls}\ntype: Opaque\ndata: {a: eA==}\n")
        seen = [await _next(recv, Changed) for _ in range(2)]
        events = [(c.type, c.object["metadata"]["name"]) for c in seen]
        assert events == [("DELETED", "other"), ("MODIFIED", "tls")]
    finally:
        informer.stop()
        await _in_thread(informer.join, 5.0)


def _settings(**kw: Any) -> ControllerSettings:
    return ControllerSettings(debounce_hold_off=0.02, debounce_max_delay=0.2, **kw)


async def test_nothing_is_built_before_every_initial_list(api: ApiServer, client: KubeClient) -> None:
    api.apply(m.ingress_class("fastingress", "fastingress.io/ingress-controller"))
    api.apply(m.service("svc"))
    api.apply(m.endpoint_slice("svc", [8080]))
    api.apply(m.ingress("web", [("a.test", "/", "Prefix", "svc")], class_name="fastingress"))
    api.set_down(True)
    source = ControllerSource(_settings(), client)
    result: list[Any] = []

    async def initial() -> None:
        result.append(await source.initial())

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(initial)
            await _in_thread(lambda: api.wait_for(lambda: len(api.requests) >= 5))
            assert source.builds == 0 and not result  # the API is down: nothing built
            api.set_down(False)
            with trio.fail_after(5):
                while not result:
                    await trio.sleep(0.01)
        snapshot = result[0].snapshot
        assert [v.hostname for v in snapshot.virtual_hosts] == ["a.test"]
        assert [(e.address, e.port) for e in snapshot.upstreams[0].endpoints] == [("127.0.0.1", 8080)]
        assert source.builds == 1
    finally:
        source.stop_informers()


async def test_burst_of_changes_makes_few_builds(api: ApiServer, client: KubeClient) -> None:
    api.apply(m.ingress_class("fastingress", "fastingress.io/ingress-controller"))
    api.apply(m.service("svc"))
    api.apply(m.ingress("web", [("a.test", "/", "Prefix", "svc")], class_name="fastingress"))
    source = ControllerSource(_settings(), client)
    await source.initial()
    built: list[int] = []

    async def trigger(reason: str) -> None:
        loaded = await source.reload()
        built.append(len(loaded.snapshot.upstreams[0].endpoints))

    def burst() -> None:
        for port in range(10000, 11000):
            api.apply(m.endpoint_slice("svc", [port]))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source._consume)
            nursery.start_soon(source._rebuild, trigger)
            started = time.monotonic()
            await _in_thread(burst)
            with trio.fail_after(10):
                while not built or built[-1] != 1000:
                    await trio.sleep(0.01)
            elapsed = time.monotonic() - started
            nursery.cancel_scope.cancel()
    finally:
        source.stop_informers()
    # At most one build per max_delay while the burst lasts, plus the last one.
    assert len(built) <= elapsed / 0.2 + 3, (len(built), elapsed)
    assert len(built) < 50


async def test_status_write_retries_on_conflict(api: ApiServer, client: KubeClient) -> None:
    (stored,) = api.apply(m.ingress("web", [("a.test", "/", "Prefix", "svc")]))
    stale = dict(stored)
    api.apply(m.ingress("web", [("b.test", "/", "Prefix", "svc")]))  # a newer version exists
    source = ControllerSource(_settings(publish_status_address=("192.0.2.1",)), client)
    await source._write_status(stale, [{"ip": "192.0.2.1"}])
    puts = [r for r in api.requests if r.path.endswith("/ingresses/web/status")]
    assert [r.method for r in puts] == ["PUT", "PUT"]  # 409, re-read, replaced
    current = api.get("Ingress", "default", "web")
    assert current is not None
    assert current["status"] == {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
    assert current["spec"]["rules"][0]["host"] == "b.test"  # the newer spec was kept
    assert source.status_writes == 1


class _Forbidden:
    base = "http://forbidden.invalid"

    def __init__(self) -> None:
        self.calls = 0

    def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        raise ApiError(403, f"{method} {path}: HTTP 403: events is forbidden")


async def test_events_stop_after_403(caplog: pytest.LogCaptureFixture) -> None:
    forbidden = _Forbidden()
    source = ControllerSource(_settings(), forbidden)  # type: ignore[arg-type]
    source._diagnostics = [
        Diagnostic("error", "Ingress", "ns", f"i{i}", "spec", "Service ns/x not found") for i in range(3)
    ]
    await source.post_events()
    await source.post_events()
    assert forbidden.calls == 1
    assert source.events.disabled
    assert sum("not allowed to create Events" in r.message for r in caplog.records) == 1


def test_bad_kubeconfig_is_one_line(tmp_path: Path) -> None:
    from fastingress.errors import ConfigError

    with pytest.raises(ConfigError, match="no such file"):
        KubeClient.from_kubeconfig(str(tmp_path / "missing"))
    bad = tmp_path / "bad"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    with pytest.raises(ConfigError) as info:
        KubeClient.from_kubeconfig(str(bad))
    assert "\n" not in str(info.value) and str(bad) in str(info.value)


def test_client_errors_carry_the_status(api: ApiServer, client: KubeClient) -> None:
    client.request("GET", INGRESS.collection("default"))
    with pytest.raises(ApiError) as info:
        client.request("GET", INGRESS.item("default", "nope"))
    assert info.value.status == 404


async def test_watch_namespace_limits_namespaced_kinds(api: ApiServer, client: KubeClient) -> None:
    api.apply(m.ingress_class("fastingress", "fastingress.io/ingress-controller"))
    for namespace in ("team-a", "team-b"):
        api.apply(m.service("svc", namespace=namespace))
        api.apply(
            m.ingress(
                "web",
                [(f"{namespace}.test", "/", "Prefix", "svc")],
                namespace=namespace,
                class_name="fastingress",
            )
        )
    source = ControllerSource(_settings(watch_namespace="team-a"), client)
    try:
        loaded = await source.initial()
    finally:
        source.stop_informers()
    assert [v.hostname for v in loaded.snapshot.virtual_hosts] == ["team-a.test"]
    assert source.store.get("IngressClass", "", "fastingress") is not None  # cluster-scoped: still seen
    paths = {r.path for r in api.requests if r.method == "GET"}
    assert "/apis/networking.k8s.io/v1/namespaces/team-a/ingresses" in paths
    assert "/apis/networking.k8s.io/v1/ingresses" not in paths
