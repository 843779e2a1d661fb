"""``fastingress controller`` end to end: a real controller process against the API server
emulator (real HTTP, list+watch), real upstream servers on 127.0.0.1, httpx as the client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import manifests as m
from tests.support.apiserver import ApiServer
from tests.support.controller import FAST_ELECTION, kill_hard, run_controller
from tests.support.process import wait_for
from tests.support.upstream import EchoServer

CLASS = m.ingress_class("fastingress", "fastingress.io/ingress-controller")


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(bookmark_interval=0.2) as server:
        server.apply(CLASS)
        yield server


def _web(api: ApiServer, port: int, *, name: str = "web", host: str = "a.test", svc: str = "svc0") -> None:
    api.apply(m.service(svc))
    api.apply(m.endpoint_slice(svc, [port]))
    api.apply(m.ingress(name, [(host, "/", "Prefix", svc)], class_name="fastingress"))


def _lists(api: ApiServer, plural: str) -> int:
    """LIST requests (not watches) the controller made for a resource."""
    return sum(
        1
        for r in api.requests
        if r.method == "GET" and r.path.endswith("/" + plural) and r.query.get("watch") not in ("true", "1")
    )


def test_apply_scale_delete(tmp_path: Path, api: ApiServer, echo_servers: list[EchoServer]) -> None:
    s0, s1, _ = echo_servers
    _web(api, s0.port)
    # Many objects before the start: generation 1 must already be the full state.
    for i in range(30):
        api.apply(
            m.ingress(f"bulk-{i}", [(f"bulk{i}.test", "/", "Prefix", "svc0")], class_name="fastingress")
        )
    api.apply(m.ingress("other", [("other.test", "/", "Prefix", "svc0")], class_name="nginx"))
    with run_controller(tmp_path, api, workers=2) as fi:
        status = fi.status()
        assert status["generation"] == 1
        assert all(w["generation"] == 1 for w in status["workers"])
        assert fi.server_of("a.test") == "s0"
        assert fi.server_of("bulk29.test") == "s0"
        assert fi.server_of("other.test") == 404  # another class: not ours

        # Scale: a second endpoint (another slice of the same Service), then the first one not ready.
        api.apply(m.endpoint_slice("svc0", [s1.port]))
        wait_for(lambda: {fi.server_of("a.test") for _ in range(6)} == {"s0", "s1"}, what="both endpoints")
        before = fi.generation()
        api.apply(m.endpoint_slice("svc0", [s0.port], not_ready=[s0.port]))
        wait_for(lambda: fi.generation() > before, what="not-ready published")
        fi.wait_generation(fi.generation())
        assert {fi.server_of("a.test") for _ in range(6)} == {"s1"}
        # Removed entirely: traffic stays on s1.
        api.delete("EndpointSlice", "default", f"svc0-{s1.port}")
        wait_for(lambda: fi.server_of("a.test") == 503, what="no ready endpoint -> 503")

        api.delete("Ingress", "default", "web")
        wait_for(lambda: fi.server_of("a.test") == 404, what="deleted Ingress -> 404")
        assert fi.controller()["builds"] < 20  # no rebuild storm


def test_relist_after_410_and_dropped_watches(
    tmp_path: Path, api: ApiServer, echo_servers: list[EchoServer]
) -> None:
    s0, s1, s2 = echo_servers
    _web(api, s0.port)
    with run_controller(tmp_path, api, workers=1) as fi:
        assert fi.server_of("a.test") == "s0"
        wait_for(lambda: api.watch_count() >= 5, what="five watches")
        lists_before = _lists(api, "ingresses")

        # A clean end of every watch: re-watch from the last resourceVersion, no relist.
        api.drop_watches()
        api.apply(m.ingress("two", [("b.test", "/", "Prefix", "svc1")], class_name="fastingress"))
        api.apply(m.service("svc1"))
        api.apply(m.endpoint_slice("svc1", [s1.port]))
        wait_for(lambda: fi.server_of("b.test") == "s1", what="change after dropped watches")
        assert _lists(api, "ingresses") == lists_before

        # Abruptly cut watches, then a compaction: the next watch gets 410 Gone -> relist.
        wait_for(lambda: api.watch_count() >= 5, what="watches back")
        api.compact()
        api.drop_watches(abrupt=True)
        api.apply(m.ingress("three", [("c.test", "/", "Prefix", "svc2")], class_name="fastingress"))
        api.apply(m.service("svc2"))
        api.apply(m.endpoint_slice("svc2", [s2.port]))
        api.delete("Ingress", "default", "two")
        wait_for(lambda: fi.server_of("c.test") == "s2", what="change after 410")
        wait_for(lambda: fi.server_of("b.test") == 404, what="deletion seen after relist")
        assert fi.server_of("a.test") == "s0"
        assert _lists(api, "ingresses") > lists_before


def test_api_outage_keeps_serving_and_a_lone_replica_stays_ready(
    tmp_path: Path, api: ApiServer, echo_servers: list[EchoServer]
) -> None:
    """No other replica to take over (none known): past the grace it stays in the load
    balancer, serving the last snapshot (tests/e2e/test_controller_ops_e2e.py has replicas)."""
    s0, s1, _ = echo_servers
    _web(api, s0.port)
    with run_controller(tmp_path, api, workers=1, extra=("--api-outage-grace", "1")) as fi:
        assert fi.readyz() == 200
        api.set_down(True)

        def staying() -> bool:
            r = httpx.get(f"{fi.admin}/readyz", timeout=2)
            return r.status_code == 200 and "no other replica has it: staying ready" in r.text

        wait_for(staying, timeout=15, what="/readyz past the grace: still ready")
        assert fi.server_of("a.test") == "s0"  # the data plane keeps serving the last snapshot
        assert fi.controller()["api_connected"] is False
        # Changes made while the API is unreachable are picked up by the relist.
        api.apply(m.endpoint_slice("svc0", [s0.port], not_ready=[s0.port]))
        api.apply(m.endpoint_slice("svc0", [s1.port]))
        api.set_down(False)
        wait_for(lambda: fi.controller()["api_connected"], timeout=15, what="in contact again")
        wait_for(lambda: fi.server_of("a.test") == "s1", what="state resynced after the outage")
        assert "staying ready" not in httpx.get(f"{fi.admin}/readyz", timeout=2).text


def test_two_replicas_one_leader_status_once_and_takeover(
    tmp_path: Path, api: ApiServer, echo_servers: list[EchoServer]
) -> None:
    s0 = echo_servers[0]
    _web(api, s0.port)
    api.apply(m.ingress("other", [("o.test", "/", "Prefix", "svc0")], class_name="nginx"))
    extra = (*FAST_ELECTION, "--publish-status-address", "192.0.2.10,lb.example.test")
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    with (
        run_controller(a_dir, api, workers=1, extra=extra, name="replica-a") as a,
        run_controller(b_dir, api, workers=1, extra=extra, name="replica-b") as b,
    ):
        expected = {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}, {"hostname": "lb.example.test"}]}}

        def status_written() -> bool:
            return api.get("Ingress", "default", "web").get("status") == expected  # type: ignore[union-attr]

        wait_for(status_written, what="Ingress status")
        wait_for(lambda: a.is_leader() != b.is_leader(), what="exactly one leader")
        assert a.server_of("a.test") == b.server_of("a.test") == "s0"  # both serve
        lease = api.get("Lease", "default", "fastingress-leader")
        assert lease is not None
        leader, follower = (a, b) if a.is_leader() else (b, a)
        assert lease["spec"]["holderIdentity"] == ("replica-a" if leader is a else "replica-b")
        status_puts = [r for r in api.requests if r.path.endswith("/ingresses/web/status")]
        assert [r.method for r in status_puts] == ["PUT"]
        assert not any(r.method == "PATCH" for r in api.requests)
        assert not api.get("Ingress", "default", "other").get("status", {}).get("loadBalancer")  # type: ignore[union-attr]
        assert "fastingress_leader 1\n" in httpx.get(f"{leader.admin}/metrics").text
        assert "fastingress_leader 0\n" in httpx.get(f"{follower.admin}/metrics").text

        kill_hard(leader)
        killed = time.monotonic()
        wait_for(follower.is_leader, timeout=2 + 2, what="takeover within the Lease TTL (+ polling slack)")
        took = time.monotonic() - killed
        print(f"takeover {took:.2f}s after the leader was killed (Lease TTL 2 s)")
        assert took < 4
        api.apply(m.ingress("late", [("l.test", "/", "Prefix", "svc0")], class_name="fastingress"))
        wait_for(
            lambda: api.get("Ingress", "default", "late").get("status") == expected,  # type: ignore[union-attr]
            what="the new leader writes status",
        )
        assert status_written()


def test_events_for_diagnostics(tmp_path: Path, api: ApiServer) -> None:
    api.apply(m.ingress("broken", [("x.test", "/", "Prefix", "missing")], class_name="fastingress"))
    with run_controller(tmp_path, api, workers=1, extra=FAST_ELECTION) as fi:

        def events() -> list[dict[str, object]]:
            return [e for e in api.objects("Event") if e.get("involvedObject", {}).get("name") == "broken"]

        wait_for(events, what="an Event about the broken Ingress")
        (event,) = events()
        assert event["type"] == "Warning"
        assert event["reason"] == "MissingService"
        assert event["involvedObject"]["kind"] == "Ingress"  # type: ignore[index]
        # Another snapshot (an unrelated change) does not re-post the same diagnostic.
        generation = fi.generation()
        api.apply(m.service("present"))
        api.apply(m.ingress("fine", [("y.test", "/", "Prefix", "present")], class_name="fastingress"))
        wait_for(lambda: fi.generation() > generation, what="a new snapshot")
        fi.wait_generation(generation + 1)
        assert fi.server_of("y.test") == 503  # the new snapshot is in force (no endpoints yet)
        assert len(events()) == 1


def test_fail_closed_and_did_you_mean_reach_events_status_and_log(
    tmp_path: Path, api: ApiServer, echo_servers: list[EchoServer]
) -> None:
    """An unhonoured access annotation closes its Ingress (503 naming the key; nothing reaches
    the upstream) and a typo names the key it resembles: in an Event, in /status and in the log."""
    s0 = echo_servers[0]
    _web(api, s0.port)  # a.test: open, same Service
    typo, guard = "nginx.ingress.kubernetes.io/rewrite-targt", "nginx.ingress.kubernetes.io/auth-url"
    api.apply(m.ingress("guarded", [("g.test", "/", "Prefix", "svc0")], class_name="fastingress",
                        annotations={typo: "/", guard: "ftp://auth.example/check"}))  # not http(s)
    with run_controller(tmp_path, api, workers=1, extra=FAST_ELECTION) as fi:
        r = fi.get("g.test", "/secret")
        assert r.status_code == 503
        assert f"refused: {guard} has an invalid value" in r.text
        assert fi.server_of("a.test") == "s0"
        assert [q["path"] for q in s0.requests] == ["/"]  # only the open host's request

        def events() -> dict[str, dict[str, object]]:
            found = [e for e in api.objects("Event") if e.get("involvedObject", {}).get("name") == "guarded"]
            return {str(e["reason"]): e for e in found} if len(found) >= 2 else {}

        by_reason = wait_for(events, what="Events about the guarded Ingress")
        assert f"did you mean `{typo[:-5]}target`?" in str(by_reason["InvalidAnnotation"]["message"])
        assert "503 (fail closed)" in str(by_reason["FailClosed"]["message"])
        diagnostics = {d["field"]: d for d in fi.status()["diagnostics"] if d["name"] == "guarded"}
        assert diagnostics[f"metadata.annotations[{typo}]"]["suggestion"] == typo[:-5] + "target"
        assert diagnostics[f"metadata.annotations[{guard}]"]["severity"] == "error"
        assert f"did you mean `{typo[:-5]}target`?" in fi.log()


def _slice(name: str, endpoints: list[tuple[int, bool, bool]]) -> dict[str, object]:
    """One EndpointSlice of Service svc0; endpoints: (port, ready, terminating).

    On loopback every "pod" is 127.0.0.1 with its own port, and a slice has one port list, so
    each endpoint gets a slice of its own; ``name`` picks the slice."""
    ((port, ready, terminating),) = endpoints
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": "svc0"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": ["127.0.0.1"],
                "conditions": {"ready": ready, "serving": True, "terminating": terminating},
            }
        ],
    }


def test_rolling_update_under_load_fails_nothing(tmp_path: Path, api: ApiServer) -> None:
    old, new = EchoServer("old"), EchoServer("new")
    old.__enter__()
    new.__enter__()
    try:
        api.apply(m.service("svc0"))
        api.apply(_slice("svc0-old", [(old.port, True, False)]))
        api.apply(m.ingress("web", [("a.test", "/", "Prefix", "svc0")], class_name="fastingress"))
        with run_controller(tmp_path, api, workers=2) as fi:
            results: list[int | str] = []
            stop = threading.Event()

            def load() -> None:
                with httpx.Client(base_url=fi.base, headers={"Host": "a.test"}, timeout=5) as client:
                    while not stop.is_set():
                        try:
                            r = client.get("/item")
                            results.append(r.json()["server"] if r.status_code == 200 else r.status_code)
                        except httpx.HTTPError as exc:
                            results.append(type(exc).__name__)

            threads = [threading.Thread(target=load) for _ in range(4)]
            for t in threads:
                t.start()
            try:
                wait_for(lambda: len(results) > 50, what="load running")
                api.apply(_slice("svc0-new", [(new.port, True, False)]))  # the new pod is ready
                wait_for(lambda: "new" in results[-20:], what="new pod takes traffic")
                before = fi.generation()
                api.apply(_slice("svc0-old", [(old.port, False, True)]))  # old pod terminating
                wait_for(lambda: fi.generation() > before, what="terminating published")
                generation = fi.generation()
                fi.wait_generation(generation)
                terminating_applied = len(results)
                wait_for(lambda: len(results) > terminating_applied + 50, what="load on the new pod only")
                api.delete("EndpointSlice", "default", "svc0-old")  # old pod gone from the slice
                wait_for(lambda: fi.generation() > generation, what="slice removal published")
                fi.wait_generation(generation + 1)
                count = len(results)
                old.__exit__(None, None, None)  # the old pod's process ends
                wait_for(lambda: len(results) > count + 100, what="more load after the old pod ended")
            finally:
                stop.set()
                for t in threads:
                    t.join(timeout=10)
            failures = [r for r in results if r not in ("old", "new")]
            assert not failures, (
                f"{len(failures)} of {len(results)} failed: {sorted(set(map(str, failures)))}"
            )
            # Once "terminating" was applied, new requests went to the new pod only (a few
            # requests per client thread may have been in flight at that moment).
            assert "old" not in results[terminating_applied + 2 * len(threads) :]
            assert results.count("new") > 100
    finally:
        old.__exit__(None, None, None)
        new.__exit__(None, None, None)
