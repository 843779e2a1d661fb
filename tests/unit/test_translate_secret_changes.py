"""A changed Secret re-translates only what looked it up: the virtual host whose certificate
it is, the upstream whose proxy-ssl-secret it is; everything else is reused as the very same
objects, and the result is byte for byte a fresh translate()'s.  Also: the controller's
encoder splices long tuples item by item and still writes the codec's bytes."""

from __future__ import annotations

import copy
from typing import Any

import trustme
import yaml

from fastingress.k8s.controller import SnapshotEncoder
from fastingress.snapshot.codec import encode_json, encode_msgpack
from fastingress.translate import TranslateOptions, translate
from fastingress.translate.incremental import Translator
from tests.support.tls import tls_secret

Obj = dict[str, Any]
OPTIONS = TranslateOptions(watch_without_class=False)
HOSTS = 80  # over the encoder's item-by-item threshold


def _fleet(ca: trustme.CA) -> list[Obj]:
    objects: list[Obj] = [{"kind": "IngressClass", "metadata": {"name": "fastingress"},
                           "spec": {"controller": "fastingress.io/ingress-controller"}}]  # fmt: skip
    cert = ca.issue_cert("*.test")
    for i in range(HOSTS):
        objects.append({"kind": "Service", "metadata": {"name": f"svc-{i}", "namespace": "default"},
                        "spec": {"ports": [{"name": "https", "port": 443}]}})  # fmt: skip
        secret = yaml.safe_load(tls_secret(f"tls-{i}", cert))
        secret["metadata"]["resourceVersion"] = "1"
        objects.append(secret)
        annotations = {}
        if i % 10 == 3:
            annotations = {
                "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS",
                "nginx.ingress.kubernetes.io/proxy-ssl-verify": "on",
                "nginx.ingress.kubernetes.io/proxy-ssl-secret": f"default/ca-{i}",
            }
            objects.append({"kind": "Secret", "type": "Opaque",
                            "metadata": {"name": f"ca-{i}", "namespace": "default", "resourceVersion": "1"},
                            "stringData": {"ca.crt": ca.cert_pem.bytes().decode()}})  # fmt: skip
        backend = {"service": {"name": f"svc-{i}", "port": {"number": 443}}}
        objects.append({"kind": "Ingress",
                        "metadata": {"name": f"ing-{i}", "namespace": "default", "annotations": annotations},
                        "spec": {"ingressClassName": "fastingress",
                                 "tls": [{"hosts": [f"h{i}.test"], "secretName": f"tls-{i}"}],
                                 "rules": [{"host": f"h{i}.test", "http": {"paths": [
                                     {"path": "/", "pathType": "Prefix", "backend": backend}]}}]}},
                       )  # fmt: skip
    return objects


def _replace(objects: list[Obj], kind: str, name: str, new: Obj | None) -> None:
    position = next(i for i, o in enumerate(objects) if o["kind"] == kind and o["metadata"]["name"] == name)
    if new is None:
        del objects[position]
    else:
        objects[position] = new


def _new_version(objects: list[Obj], kind: str, name: str, **changes: Any) -> Obj:
    old = next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)
    new = copy.deepcopy(old)
    new["metadata"]["resourceVersion"] = str(int(new["metadata"].get("resourceVersion", "1")) + 1)
    new.update(changes)
    return new


def _check(translator: Translator, objects: list[Obj], encoder: SnapshotEncoder) -> Any:
    result = translator.translate(objects)
    fresh = translate(copy.deepcopy(objects), OPTIONS)
    assert encode_json(result.snapshot) == encode_json(fresh.snapshot)
    assert result.diagnostics == fresh.diagnostics
    assert encoder.encode(result.snapshot) == encode_msgpack(result.snapshot)
    return result


def _by_host(result: Any) -> dict[str, Any]:
    return {v.hostname: v for v in result.snapshot.virtual_hosts}


def test_a_changed_certificate_re_emits_only_its_host() -> None:
    ca = trustme.CA()
    objects = _fleet(ca)
    translator, encoder = Translator(OPTIONS), SnapshotEncoder()
    before = _check(translator, objects, encoder)
    renewed = yaml.safe_load(tls_secret("tls-5", ca.issue_cert("h5.test")))
    renewed["metadata"]["resourceVersion"] = "2"
    _replace(objects, "Secret", "tls-5", renewed)
    after = _check(translator, objects, encoder)
    old, new = _by_host(before), _by_host(after)
    assert [h for h in new if new[h] is not old[h]] == ["h5.test"]
    # Not even resolved again: the very same objects (a changed Secret used to redo them all).
    assert all(a is b for a, b in zip(after.snapshot.upstreams, before.snapshot.upstreams, strict=True))
    pairs = zip(after.snapshot.certificates, before.snapshot.certificates, strict=True)
    assert [new.name for new, old in pairs if new != old] == ["default/tls-5"]


def test_a_changed_ca_secret_resolves_only_its_upstream_again() -> None:
    ca, other = trustme.CA(), trustme.CA()
    objects = _fleet(ca)
    translator, encoder = Translator(OPTIONS), SnapshotEncoder()
    before = _check(translator, objects, encoder)
    rotated = _new_version(objects, "Secret", "ca-13", stringData={"ca.crt": other.cert_pem.bytes().decode()})
    _replace(objects, "Secret", "ca-13", rotated)
    after = _check(translator, objects, encoder)
    assert after.snapshot.virtual_hosts is before.snapshot.virtual_hosts  # no host re-emitted
    old = {u.name: u for u in before.snapshot.upstreams}
    new = {u.name: u for u in after.snapshot.upstreams}
    differ = [name for name in new if new[name] != old[name]]
    assert len(differ) == 1 and differ[0].startswith("default/svc-13:"), differ
    assert all(new[name] is old[name] for name in new if name not in differ)  # not even resolved again


def test_secrets_deleted_and_created_again() -> None:
    ca = trustme.CA()
    objects = _fleet(ca)
    translator, encoder = Translator(OPTIONS), SnapshotEncoder()
    _check(translator, objects, encoder)
    gone = next(o for o in objects if o["metadata"]["name"] == "tls-7")
    _replace(objects, "Secret", "tls-7", None)  # the host falls back to the default certificate
    _replace(objects, "Secret", "ca-23", None)  # the upstream has no CA: a diagnostic
    missing = _check(translator, objects, encoder)
    assert any("tls-7 not found" in d.message for d in missing.diagnostics)
    assert "default/tls-7" not in {c.name for c in missing.snapshot.certificates}
    objects.append(gone)
    back = _check(translator, objects, encoder)
    assert not any("tls-7" in d.message for d in back.diagnostics)
    # In position (the controller's fast path), several Secrets at once.
    for name in ("tls-1", "tls-2", "ca-3"):
        _replace(objects, "Secret", name, _new_version(objects, "Secret", name, data={}))
    _check(translator, objects, encoder)
