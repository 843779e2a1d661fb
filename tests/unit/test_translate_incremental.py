"""The incremental Translator gives exactly what a fresh translate() gives (same JSON bytes,
same diagnostics) over seeded random sequences of changes to the golden inputs and the
corpus, and an EndpointSlice change reuses the translated virtual hosts."""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trustme
import yaml

from fastingress.k8s.controller import SnapshotEncoder
from fastingress.manifests import load_manifests, manifest_files
from fastingress.snapshot.codec import encode_json, encode_msgpack
from fastingress.translate import TranslateOptions, translate
from fastingress.translate.backends import BackendRef, UpstreamBuilder
from fastingress.translate.incremental import Translator
from tests.conftest import REPO, SHARED
from tests.support.tls import tls_secret

GOLDEN = REPO / "tests" / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))
CORPUS = SHARED / "corpus" / "ingress-manifests"
OPTIONS_MARKER = "# translate-options:"
STEPS = 40

Obj = dict[str, Any]


def _options(path: Path) -> TranslateOptions:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(OPTIONS_MARKER):
            return msgspec.json.decode(line.removeprefix(OPTIONS_MARKER).strip(), type=TranslateOptions)
    return TranslateOptions()


def _load(path: Path) -> list[Obj]:
    objects, _ = load_manifests([str(path)])
    return [o for o in objects if isinstance(o, dict)]


def _assert_same(
    translator: Translator, objects: list[Obj], what: str, encoder: SnapshotEncoder | None = None
) -> None:
    memory = copy.deepcopy(translator.memory)  # the ConfigMap's last good values, as they were
    fresh = translate(copy.deepcopy(objects), translator.options, memory)
    got = translator.translate(objects)
    assert encode_json(got.snapshot) == encode_json(fresh.snapshot), what
    assert got.diagnostics == fresh.diagnostics, what
    if encoder is not None:  # the controller's splicing encoder: the same bytes as the codec's
        assert encoder.encode(got.snapshot) == encode_msgpack(got.snapshot), what


def _kind(objects: list[Obj], kind: str, rng: random.Random) -> int | None:
    found = [i for i, o in enumerate(objects) if o.get("kind") == kind]
    return rng.choice(found) if found else None


def _edited(obj: Obj, rng: random.Random) -> Obj:
    """A new version of ``obj`` (never edited in place: the Translator's contract)."""
    new = copy.deepcopy(obj)
    meta = new.setdefault("metadata", {})
    if isinstance(meta, dict):
        meta["resourceVersion"] = str(rng.randrange(1, 10**6))
    kind = new.get("kind")
    if kind == "EndpointSlice":
        new["endpoints"] = [
            {"addresses": [f"10.0.{rng.randrange(4)}.{rng.randrange(1, 9)}"],
             "conditions": {"ready": rng.random() < 0.8, "terminating": rng.random() < 0.2}}
            for _ in range(rng.randrange(0, 3))
        ]
        if rng.random() < 0.3:
            new["ports"] = [{"name": rng.choice(["", "http", "web"]), "port": rng.choice([80, 8080, 0])}]
    elif kind == "Service":
        ports = [{"name": rng.choice(["", "http", "web"]), "port": rng.choice([80, 443, 8080])}]
        new["spec"] = {"ports": ports} if rng.random() < 0.8 else {"type": "ExternalName",
                                                                    "externalName": "api.example.com"}
    elif kind == "Ingress":
        rules = new.get("spec", {}).get("rules") if isinstance(new.get("spec"), dict) else None
        if isinstance(rules, list) and rules and rng.random() < 0.5:
            rules.append(copy.deepcopy(rng.choice(rules)))
            if isinstance(rules[-1], dict):
                hosts = ["a.example.com", "b.example.com", "*.example.com", "Bad Host"]
                rules[-1]["host"] = rng.choice(hosts)
        else:
            annotations = meta.setdefault("annotations", {}) if isinstance(meta, dict) else {}
            if isinstance(annotations, dict):
                key = rng.choice(["proxy-body-size", "backend-protocol", "ssl-redirect", "upstream-vhost"])
                value = rng.choice(["1m", "HTTPS", "false", "x.y"])
                annotations[f"nginx.ingress.kubernetes.io/{key}"] = value
    elif kind == "IngressClass":
        new["spec"] = {"controller": rng.choice(["fastingress.io/ingress-controller", "k8s.io/other"])}
    elif kind == "Secret":
        new["data"] = {}
    elif kind == "ConfigMap":  # good and bad values: the translator's last good values must match
        data = new.get("data")
        data = dict(data) if isinstance(data, dict) else {}
        key = rng.choice(["proxy-body-size", "ssl-redirect", "proxy-read-timeout", "add-headers", "hsts"])
        data[key] = rng.choice(["2m", "true", "30", "nope", "ingress-nginx/custom-response-headers"])
        new["data"] = data if rng.random() < 0.9 else ["not", "a", "map"]
    return new


def _step(objects: list[Obj], pool: list[Obj], rng: random.Random) -> list[Obj]:
    """One random change; returns the new input list (sometimes the same list, edited)."""
    roll = rng.random()
    if roll < 0.35:  # edit in position: the fast path when only a few objects changed
        i = _kind(objects, rng.choice(["EndpointSlice", "EndpointSlice", "Service", "Ingress",
                                        "IngressClass", "Secret", "ConfigMap"]), rng)
        if i is not None:
            objects[i] = _edited(objects[i], rng)
        return objects
    if roll < 0.5 and objects:  # delete
        del objects[rng.randrange(len(objects))]
        return objects
    if roll < 0.65 and pool:  # add (maybe a second copy of an object we already have)
        objects.insert(rng.randrange(len(objects) + 1), copy.deepcopy(rng.choice(pool)))
        return objects
    if roll < 0.75:  # same objects, another order
        shuffled = list(objects)
        rng.shuffle(shuffled)
        return shuffled
    if roll < 0.8:  # no change at all
        return objects
    if roll < 0.85 and objects:  # wrapped in a List
        return [{"kind": "List", "items": objects[:2]}, *objects[2:]]
    i = _kind(objects, "EndpointSlice", rng)
    if i is not None:  # several slices at once
        for j in {i, *(k for k in range(len(objects)) if objects[k].get("kind") == "EndpointSlice")}:
            if rng.random() < 0.5:
                objects[j] = _edited(objects[j], rng)
    return objects


def test_there_are_cases() -> None:
    assert len(CASES) >= 12


@pytest.mark.parametrize("case", CASES)
def test_incremental_equals_fresh_on_golden_inputs(case: str) -> None:
    path = GOLDEN / f"{case}.yaml"
    rng = random.Random(case)
    objects = _load(path)
    pool = [o for other in rng.sample(CASES, 3) for o in _load(GOLDEN / f"{other}.yaml")]
    translator = Translator(_options(path))
    encoder = SnapshotEncoder()
    _assert_same(translator, objects, f"{case}: first", encoder)
    for step in range(STEPS):
        objects = _step(objects, pool, rng)
        _assert_same(translator, objects, f"{case}: step {step}", encoder)


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")
def test_incremental_equals_fresh_across_corpus_files() -> None:
    """One Translator fed one corpus file after another (everything changes at once)."""
    rng = random.Random(7)
    files = manifest_files([str(CORPUS)])
    options = TranslateOptions(ingress_class="nginx", watch_without_class=False)
    translator = Translator(options)
    for path in rng.sample(files, min(40, len(files))):
        objects = _load(path)
        _assert_same(translator, objects, str(path))
        objects = _step(objects, objects, rng)
        _assert_same(translator, objects, f"{path} changed")


def _fleet(ingresses: int, services: int, slice_port: int) -> list[Obj]:
    objects: list[Obj] = [{"kind": "IngressClass", "metadata": {"name": "fastingress"},
                           "spec": {"controller": "fastingress.io/ingress-controller"}}]
    for s in range(services):
        objects.append({"kind": "Service", "metadata": {"name": f"svc-{s}", "namespace": "default"},
                        "spec": {"ports": [{"name": "http", "port": 80}]}})
        objects.append(_slice(s, slice_port))
    for i in range(ingresses):
        backend = {"service": {"name": f"svc-{i % services}", "port": {"number": 80}}}
        objects.append({"kind": "Ingress", "metadata": {"name": f"ing-{i}", "namespace": "default"},
                        "spec": {"ingressClassName": "fastingress", "rules": [{"host": f"h{i}.test", "http": {
                            "paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}]}})
    return objects


def _slice(service: int, port: int) -> Obj:
    return {"kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"svc-{service}-slice", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": f"svc-{service}"}},
            "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": True}}]}


def test_endpoint_slice_change_reuses_virtual_hosts_and_updates_the_upstream() -> None:
    objects = _fleet(200, 20, 8080)
    translator = Translator(TranslateOptions(watch_without_class=False))
    first = translator.translate(objects)
    position = objects.index(next(o for o in objects if o["metadata"]["name"] == "svc-3-slice"))
    objects[position] = _slice(3, 9090)
    encoder = SnapshotEncoder()
    encoder.encode(first.snapshot)
    second = translator.translate(objects)
    assert second.snapshot.virtual_hosts is first.snapshot.virtual_hosts  # nothing re-emitted
    assert encoder.encode(second.snapshot) == encode_msgpack(second.snapshot)
    ports = {u.name: [e.port for e in u.endpoints] for u in second.snapshot.upstreams}
    assert ports["default/svc-3:80"] == [9090]
    assert ports["default/svc-4:80"] == [8080]
    fresh = translate(objects, translator.options)
    assert encode_json(second.snapshot) == encode_json(fresh.snapshot)
    assert second.diagnostics == fresh.diagnostics


def test_a_changed_ingress_is_translated_again() -> None:
    objects = _fleet(50, 5, 8080)
    translator = Translator(TranslateOptions(watch_without_class=False))
    before = {v.hostname: v for v in translator.translate(objects).snapshot.virtual_hosts}
    position = objects.index(next(o for o in objects if o["metadata"]["name"] == "ing-7"))
    edited = copy.deepcopy(objects[position])
    edited["spec"]["rules"][0]["host"] = "renamed.test"
    objects[position] = edited
    after = {v.hostname: v for v in translator.translate(objects).snapshot.virtual_hosts}
    assert "renamed.test" in after
    assert "h7.test" not in after
    assert after["h8.test"] is before["h8.test"]  # the other hosts are not emitted again
    fresh = translate(objects, translator.options)
    assert encode_json(translator.translate(objects).snapshot) == encode_json(fresh.snapshot)


def test_the_oldest_default_backend_is_the_default_action_whatever_the_input_order() -> None:
    objects = _fleet(3, 3, 8080)
    for i, stamp in ((2, "2024-01-01T00:00:00Z"), (0, "2025-01-01T00:00:00Z")):
        ingress = next(o for o in objects if o["metadata"]["name"] == f"ing-{i}")
        ingress["metadata"]["creationTimestamp"] = stamp
        ingress["spec"]["defaultBackend"] = {"service": {"name": f"svc-{i}", "port": {"number": 80}}}
    translator = Translator(TranslateOptions(watch_without_class=False))
    for order in (objects, objects[::-1]):
        result = translator.translate(order)
        assert encode_json(result.snapshot) == encode_json(translate(order, translator.options).snapshot)
        assert result.snapshot.default_action is not None
        assert b"default/svc-2:80" in msgspec.json.encode(result.snapshot.default_action)


def test_a_new_hour_reloads_certificates_and_keeps_the_virtual_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    cert = trustme.CA().issue_cert("h1.test")
    objects = _fleet(5, 2, 8080)
    objects.append(yaml.safe_load(tls_secret("h1-tls", cert)))
    ingress = next(o for o in objects if o["metadata"]["name"] == "ing-1")
    ingress["spec"]["tls"] = [{"hosts": ["h1.test"], "secretName": "h1-tls"}]
    translator = Translator(TranslateOptions(watch_without_class=False))
    first = translator.translate(objects)
    assert [c.name for c in first.snapshot.certificates] == ["default/h1-tls"]
    later = time.time() + 7200
    monkeypatch.setattr(time, "time", lambda: later)  # the Translator reads time.time()
    second = translator.translate(objects)
    assert second.snapshot.virtual_hosts is first.snapshot.virtual_hosts
    fresh = translate(objects, translator.options)
    assert encode_json(second.snapshot) == encode_json(fresh.snapshot)
    assert second.diagnostics == fresh.diagnostics


def test_a_backend_that_stops_failing_gets_its_routes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """An internal error while resolving one Service drops its routes; once it resolves
    again (its EndpointSlice changed), the routes are back, as in a fresh translate()."""
    failing = {"svc-1"}
    build = UpstreamBuilder._build

    def flaky(self: UpstreamBuilder, name: str, backend: BackendRef, *args: Any, **kwargs: Any) -> Any:
        if backend.service in failing:
            raise RuntimeError("injected")
        return build(self, name, backend, *args, **kwargs)

    monkeypatch.setattr(UpstreamBuilder, "_build", flaky)
    objects = _fleet(20, 4, 8080)
    translator = Translator(TranslateOptions(watch_without_class=False))
    first = translator.translate(objects)
    assert any("internal error" in d.message for d in first.diagnostics)
    assert first.snapshot == translate(objects, translator.options).snapshot
    failing.clear()
    position = objects.index(next(o for o in objects if o["metadata"]["name"] == "svc-1-slice"))
    objects[position] = _slice(1, 9090)
    second = translator.translate(objects)
    fresh = translate(objects, translator.options)
    assert encode_json(second.snapshot) == encode_json(fresh.snapshot)
    assert second.diagnostics == fresh.diagnostics
    assert not any("internal error" in d.message for d in second.diagnostics)


def test_bad_input_never_raises() -> None:
    translator = Translator()
    for bad in (None, 42, [1, "x", None], [{"kind": "Ingress"}], [{"kind": "List", "items": 3}]):
        result = translator.translate(bad)  # type: ignore[arg-type]
        fresh = translate(bad)  # type: ignore[arg-type]
        assert encode_json(result.snapshot) == encode_json(fresh.snapshot)
        assert result.diagnostics == fresh.diagnostics


def test_a_tls_secret_that_appears_is_read() -> None:
    """A host whose TLS Secret was missing is emitted again once the Secret exists (its
    "not found" was not a certificate load, so nothing else would notice)."""
    backend = {"service": {"name": "web", "port": {"number": 80}}}
    path = {"path": "/", "pathType": "Prefix", "backend": backend}
    ingress: Obj = {"kind": "Ingress", "metadata": {"name": "web", "namespace": "default"},
                    "spec": {"tls": [{"hosts": ["a.test"], "secretName": "late"}],
                             "rules": [{"host": "a.test", "http": {"paths": [path]}}]}}
    secret: Obj = {"kind": "Secret", "metadata": {"name": "late", "namespace": "default"},
                   "type": "kubernetes.io/dockerconfigjson"}
    translator = Translator()
    _assert_same(translator, [ingress], "Secret missing")
    _assert_same(translator, [ingress, secret], "Secret added")
    assert any("dockerconfigjson" in d.message for d in translator.translate([ingress, secret]).diagnostics)


def test_access_secrets_that_change_appear_or_go_are_read_again() -> None:
    """auth-secret and auth-tls-secret: a host is emitted again when a Secret its access
    policies read changes (new users), appears (the route opens to its users) or goes (503)."""
    backend = {"service": {"name": "web", "port": {"number": 80}}}
    path = {"path": "/", "pathType": "Prefix", "backend": backend}
    annotations = {"nginx.ingress.kubernetes.io/auth-type": "basic",
                   "nginx.ingress.kubernetes.io/auth-secret": "users"}
    ingress: Obj = {"kind": "Ingress", "metadata": {"name": "web", "namespace": "default",
                                                    "annotations": annotations},
                    "spec": {"rules": [{"host": "a.test", "http": {"paths": [path]}}]}}
    mtls: Obj = {"kind": "Ingress", "metadata": {"name": "mtls", "namespace": "default", "annotations": {
        "nginx.ingress.kubernetes.io/auth-tls-secret": "ca"}},
        "spec": {"rules": [{"host": "b.test", "http": {"paths": [path]}}]}}

    def users(text: str) -> Obj:
        return {"kind": "Secret", "metadata": {"name": "users", "namespace": "default"},
                "stringData": {"auth": text}}

    ca_pem = trustme.CA().cert_pem.bytes().decode()
    ca: Obj = {"kind": "Secret", "metadata": {"name": "ca", "namespace": "default"},
               "stringData": {"ca.crt": ca_pem}}
    translator = Translator()
    steps = [
        ([ingress, mtls], "Secrets missing"),
        ([ingress, mtls, users("alice:{PLAIN}a"), ca], "Secrets added"),
        ([ingress, mtls, users("alice:{PLAIN}a\nbob:{PLAIN}b"), ca], "a user added"),
        ([ingress, mtls, users("bob:{PLAIN}b"), ca], "a user removed"),
        ([ingress, mtls, ca], "Secret removed"),
    ]
    for objects, what in steps:
        _assert_same(translator, objects, what)
    result = translator.translate([ingress, mtls, users("carol:{PLAIN}c"), ca])
    (a_host, b_host) = result.snapshot.virtual_hosts
    auth = a_host.routes[0].policy.basic_auth
    assert auth is not None and auth.users == (("carol", "{PLAIN}c"),)
    assert b_host.client_auth is not None and b_host.client_auth.ca_pem == ca_pem
