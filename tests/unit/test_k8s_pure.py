"""The controller's pure parts: store, debounce, leader election decisions, status, events."""

from __future__ import annotations

import datetime
from typing import Any

from fastingress.k8s.debounce import Debouncer
from fastingress.k8s.events import EventLimiter, event_body, reason_for
from fastingress.k8s.informer import Backoff
from fastingress.k8s.leader import Observation, decide, lease_body, parse_lease
from fastingress.k8s.status import current_addresses, desired_addresses, owned_ingresses, with_status
from fastingress.k8s.store import Store
from fastingress.translate import Diagnostic, TranslateOptions


def _obj(kind: str, name: str, rv: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}, **extra}


# -- store -------------------------------------------------------------------------------


def test_store_skips_noop_updates() -> None:
    store = Store()
    assert store.apply("Service", "ADDED", _obj("Service", "a", "1", spec={"x": 1}))
    assert not store.apply("Service", "MODIFIED", _obj("Service", "a", "1", spec={"x": 2}))  # same rv
    assert not store.apply("Service", "MODIFIED", _obj("Service", "a", "2", spec={"x": 1}))  # same content
    managed = _obj("Service", "a", "3", spec={"x": 1})
    managed["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    assert not store.apply("Service", "MODIFIED", managed)
    assert store.apply("Service", "MODIFIED", _obj("Service", "a", "4", spec={"x": 2}))
    assert store.version == 2
    assert store.get("Service", "ns", "a")["spec"] == {"x": 2}  # type: ignore[index]


def test_store_ignores_ingress_status_but_not_other_status() -> None:
    store = Store()
    store.apply("Ingress", "ADDED", _obj("Ingress", "i", "1", spec={"a": 1}))
    assert not store.apply("Ingress", "MODIFIED", _obj("Ingress", "i", "2", spec={"a": 1}, status={"lb": 1}))
    store.apply("Service", "ADDED", _obj("Service", "s", "1"))
    assert store.apply("Service", "MODIFIED", _obj("Service", "s", "2", status={"lb": 1}))


def test_store_delete_and_replace() -> None:
    store = Store()
    store.apply("Service", "ADDED", _obj("Service", "a", "1"))
    store.apply("Service", "ADDED", _obj("Service", "b", "2"))
    store.apply("Ingress", "ADDED", _obj("Ingress", "i", "3"))
    assert not store.apply("Service", "DELETED", _obj("Service", "zzz", "4"))
    assert store.apply("Service", "DELETED", _obj("Service", "a", "5"))
    assert not store.replace("Service", [_obj("Service", "b", "2")])  # same list: no change
    assert store.replace("Service", [_obj("Service", "c", "6")])  # b gone, c new
    assert sorted(o["metadata"]["name"] for o in store.objects()) == ["c", "i"]
    assert not store.apply("Service", "ADDED", {"kind": "Service", "metadata": {}})  # unnamed: ignored


# -- debounce ----------------------------------------------------------------------------


def test_debounce_hold_off_and_max_delay() -> None:
    d = Debouncer(hold_off=0.05, max_delay=0.5)
    assert d.deadline() is None
    d.poke(10.0)
    assert d.deadline() == 10.05
    d.poke(10.04)
    assert d.deadline() == 10.09
    for i in range(100):  # a steady stream of changes: capped at first + max_delay
        d.poke(10.04 + i * 0.01)
    assert d.deadline() == 10.5
    assert d.due(10.5)
    assert not d.due(10.49)
    assert d.take() == 10.0
    assert not d.pending


def test_debounce_burst_of_1000_makes_a_handful_of_builds() -> None:
    d = Debouncer(hold_off=0.05, max_delay=0.5)
    builds = 0
    now = 0.0
    for _ in range(1000):  # one change per millisecond for a second
        now += 0.001
        if d.due(now):
            d.take()
            builds += 1
        d.poke(now)
    builds += d.take() is not None
    assert 2 <= builds <= 4


def test_backoff_is_jittered_and_capped() -> None:
    b = Backoff(base=0.2, cap=10.0)
    assert b.delay(0, 0.0) == 0.1
    assert b.delay(0, 1.0) == 0.2
    assert b.delay(3, 1.0) == 1.6
    assert b.delay(100, 1.0) == 10.0
    assert b.delay(100, 0.0) == 5.0


# -- leader election ---------------------------------------------------------------------


def _lease(holder: str, renew: str = "t1", rv: str = "1", duration: int = 30) -> dict[str, Any]:
    return {
        "metadata": {"name": "l", "namespace": "ns", "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": renew},
    }


def test_decide() -> None:
    seen = Observation()
    assert decide(seen, "me", 0.0, 30) == "create"
    seen.see(parse_lease(_lease("me")), 0.0)
    assert decide(seen, "me", 1.0, 30) == "renew"
    seen.see(parse_lease(_lease("")), 1.0)
    assert decide(seen, "me", 1.0, 30) == "acquire"
    seen.see(parse_lease(_lease("other", "t1", "2")), 2.0)
    assert decide(seen, "me", 20.0, 30) == "wait"
    seen.see(parse_lease(_lease("other", "t1", "2")), 31.0)  # unchanged: still counts from 2.0
    assert decide(seen, "me", 32.0, 30) == "acquire"
    seen.see(parse_lease(_lease("other", "t2", "3")), 33.0)  # renewed: the clock restarts
    assert decide(seen, "me", 40.0, 30) == "wait"
    assert decide(seen, "me", 63.0, 30) == "acquire"


def test_lease_body() -> None:
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=datetime.UTC)
    created = lease_body("ns", "l", "me", 2.5, previous=None, action="create", now=now)
    assert created["spec"] == {
        "acquireTime": "2026-01-02T03:04:05.006000Z",
        "leaseTransitions": 0,
        "holderIdentity": "me",
        "leaseDurationSeconds": 3,
        "renewTime": "2026-01-02T03:04:05.006000Z",
    }
    previous = _lease("other")
    previous["spec"]["leaseTransitions"] = 4
    taken = lease_body("ns", "l", "me", 30, previous=previous, action="acquire", now=now)
    assert taken["spec"]["leaseTransitions"] == 5
    assert taken["metadata"]["resourceVersion"] == "1"  # optimistic concurrency on the replace


# -- status ------------------------------------------------------------------------------


def test_desired_addresses() -> None:
    assert desired_addresses(None, ("lb.test", "10.0.0.2", "10.0.0.1", "10.0.0.1")) == [
        {"ip": "10.0.0.1"},
        {"ip": "10.0.0.2"},
        {"hostname": "lb.test"},
    ]
    svc = {"status": {"loadBalancer": {"ingress": [{"hostname": "x.elb"}, {"ip": "1.2.3.4", "ports": []}]}}}
    assert desired_addresses(svc, ()) == [{"ip": "1.2.3.4"}, {"hostname": "x.elb"}]
    assert desired_addresses({"spec": {"externalIPs": ["5.6.7.8"]}}, ()) == [{"ip": "5.6.7.8"}]
    assert desired_addresses(None, ()) == []


def test_owned_ingresses_and_with_status() -> None:
    objects: list[dict[str, Any]] = [
        {
            "kind": "IngressClass",
            "metadata": {"name": "mine"},
            "spec": {"controller": "fastingress.io/ingress-controller"},
        },
        {
            "kind": "Ingress",
            "metadata": {"name": "a", "namespace": "n"},
            "spec": {"ingressClassName": "mine"},
        },
        {
            "kind": "Ingress",
            "metadata": {"name": "b", "namespace": "n"},
            "spec": {"ingressClassName": "nginx"},
        },
        {"kind": "Ingress", "metadata": {"name": "c", "namespace": "n"}, "spec": {}},
    ]
    options = TranslateOptions(watch_without_class=False)
    assert [o["metadata"]["name"] for o in owned_ingresses(objects, options)] == ["a"]
    with_classless = TranslateOptions(watch_without_class=True)
    assert [o["metadata"]["name"] for o in owned_ingresses(objects, with_classless)] == ["a", "c"]
    ingress = objects[1]
    updated = with_status(ingress, [{"ip": "1.1.1.1"}])
    assert updated is not None and current_addresses(updated) == [{"ip": "1.1.1.1"}]
    assert with_status(updated, [{"ip": "1.1.1.1"}]) is None
    assert "status" not in ingress  # not modified in place


# -- events ------------------------------------------------------------------------------


def _diag(name: str, message: str, severity: str = "error") -> Diagnostic:
    return Diagnostic(severity, "Ingress", "ns", name, "spec.rules[0]", message)  # type: ignore[arg-type]


def test_event_limiter_dedupes_and_reposts_after_recovery() -> None:
    limiter = EventLimiter(burst=2, rate=1.0)
    first = [_diag("a", "Service ns/x not found; requests get 503"), _diag("b", "m"), _diag("c", "m")]
    info = _diag("d", "ignored", severity="info")
    chosen = limiter.select([*first, info], now=0.0)
    assert [d.name for d in chosen] == ["a", "b"]  # burst 2, info never
    assert limiter.held_back == 1
    for d in chosen:
        limiter.mark(d)
    assert limiter.select(first, now=0.5) == []  # no token yet
    assert [d.name for d in limiter.select(first, now=1.0)] == ["c"]  # one token per second
    limiter.mark(first[2])
    assert limiter.select(first, now=10.0) == []  # all posted: nothing again
    assert limiter.select(first[1:], now=10.0) == []  # "a" went away ...
    assert [d.name for d in limiter.select(first, now=10.0)] == ["a"]  # ... and came back: posted again


def test_event_body_and_reasons() -> None:
    d = _diag("web", "Service ns/x not found; requests get 503")
    assert reason_for(d) == "MissingService"
    assert reason_for(_diag("w", "Secret ns/t not found; the default certificate is used")) == "MissingSecret"
    assert reason_for(_diag("w", "host 'a' path '/' (Prefix) is already defined by Ingress x")) == "Conflict"
    involved = {"metadata": {"uid": "u-1", "resourceVersion": "7"}}
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    body = event_body(d, involved, reporter="pod-1", now=now)
    assert body["involvedObject"] == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "name": "web",
        "namespace": "ns",
        "uid": "u-1",
        "resourceVersion": "7",
    }
    assert body["type"] == "Warning" and body["reason"] == "MissingService"
    assert body["metadata"]["namespace"] == "ns" and body["metadata"]["name"].startswith("web.")
    assert body["firstTimestamp"] == "2026-01-01T00:00:00Z"


def test_annotation_diagnostics_become_events_that_say_what_was_meant() -> None:
    from fastingress.translate import translate

    ingress = {
        "kind": "Ingress",
        "metadata": {"name": "web", "namespace": "ns", "annotations": {
            "nginx.ingress.kubernetes.io/rewrite-targt": "/",
            "nginx.ingress.kubernetes.io/auth-url": "ftp://auth",  # a bad value of an access key
        }},
        "spec": {"rules": [{"host": "a.test"}]},
    }
    by_key = {d.field: d for d in translate([ingress]).diagnostics}
    typo = by_key["metadata.annotations[nginx.ingress.kubernetes.io/rewrite-targt]"]
    closed = by_key["metadata.annotations[nginx.ingress.kubernetes.io/auth-url]"]
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    body = event_body(typo, None, reporter="pod-1", now=now)
    assert body["reason"] == "InvalidAnnotation"
    assert "did you mean `nginx.ingress.kubernetes.io/rewrite-target`?" in body["message"]
    assert body["message"].startswith("metadata.annotations[nginx.ingress.kubernetes.io/rewrite-targt]: ")
    assert reason_for(closed) == "FailClosed"
    assert EventLimiter().select([typo, closed], now=0.0) == [typo, closed]
