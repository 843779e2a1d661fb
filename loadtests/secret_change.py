"""How long the controller's incremental translation takes when one Secret changes.

    .venv/bin/python loadtests/secret_change.py [--ingresses 10000] [--changes 20]

A fleet of N Ingresses, one Service + EndpointSlice each, a TLS Secret each (``spec.tls``;
one certificate shared by all, so generating the fleet stays quick) and, for one Ingress in
ten, an Opaque CA Secret named by ``proxy-ssl-secret``.  After the first translation, one
Secret at a time gets a new version (the controller's Store replaces the object, which is
what the Translator's fast path sees) and ``Translator.translate`` is timed; the result is
checked once against a fresh ``translate()``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trustme

from fastingress.k8s.controller import SnapshotEncoder
from fastingress.snapshot.codec import encode_json, encode_msgpack
from fastingress.translate import TranslateOptions, translate
from fastingress.translate.incremental import Translator

Obj = dict[str, Any]


def fleet(ingresses: int) -> list[Obj]:
    ca = trustme.CA()
    cert = ca.issue_cert("*.test")
    chain = b"".join(blob.bytes() for blob in cert.cert_chain_pems).decode()
    key = cert.private_key_pem.bytes().decode()
    ca_pem = ca.cert_pem.bytes().decode()
    objects: list[Obj] = [{"kind": "IngressClass", "metadata": {"name": "fastingress"},
                           "spec": {"controller": "fastingress.io/ingress-controller"}}]
    for i in range(ingresses):
        svc = f"svc-{i}"
        objects.append({"kind": "Service", "metadata": {"name": svc, "namespace": "default"},
                        "spec": {"ports": [{"name": "https", "port": 443}]}})
        objects.append({"kind": "EndpointSlice", "addressType": "IPv4",
                        "metadata": {"name": f"{svc}-x", "namespace": "default",
                                     "labels": {"kubernetes.io/service-name": svc}},
                        "ports": [{"name": "https", "port": 8443}],
                        "endpoints": [{"addresses": [f"10.{i // 250}.{i % 250}.1"],
                                       "conditions": {"ready": True}}]})
        objects.append({"kind": "Secret", "type": "kubernetes.io/tls",
                        "metadata": {"name": f"tls-{i}", "namespace": "default", "resourceVersion": "1"},
                        "stringData": {"tls.crt": chain, "tls.key": key}})
        annotations = {}
        if i % 10 == 0:
            annotations = {"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS",
                           "nginx.ingress.kubernetes.io/proxy-ssl-verify": "on",
                           "nginx.ingress.kubernetes.io/proxy-ssl-secret": f"default/ca-{i}"}
            objects.append({"kind": "Secret", "type": "Opaque",
                            "metadata": {"name": f"ca-{i}", "namespace": "default", "resourceVersion": "1"},
                            "stringData": {"ca.crt": ca_pem}})
        host = f"h{i}.test"
        objects.append({"kind": "Ingress",
                        "metadata": {"name": f"ing-{i}", "namespace": "default", "annotations": annotations},
                        "spec": {"ingressClassName": "fastingress",
                                 "tls": [{"hosts": [host], "secretName": f"tls-{i}"}],
                                 "rules": [{"host": host, "http": {"paths": [
                                     {"path": "/", "pathType": "Prefix",
                                      "backend": {"service": {"name": svc, "port": {"number": 443}}}}]}}]}})
    return objects


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingresses", type=int, default=10000)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    objects = fleet(args.ingresses)
    options = TranslateOptions(watch_without_class=False)
    translator = Translator(options)
    encoder = SnapshotEncoder()
    started = time.perf_counter()
    encoder.encode(translator.translate(objects).snapshot)
    print(f"first translation of {len(objects)} objects: {time.perf_counter() - started:.2f} s")
    secrets = [i for i, o in enumerate(objects) if o["kind"] == "Secret"]
    timings = []
    encodings = []
    for n in range(args.changes):
        position = secrets[(n * 7919) % len(secrets)]
        changed = copy.deepcopy(objects[position])
        changed["metadata"]["resourceVersion"] = str(n + 2)
        changed["metadata"]["labels"] = {"rotated": str(n)}
        objects[position] = changed
        started = time.perf_counter()
        result = translator.translate(objects)
        translated = time.perf_counter()
        payload = encoder.encode(result.snapshot)  # what the controller publishes
        timings.append(translated - started)
        encodings.append(time.perf_counter() - translated)
    fresh = translate(objects, options)
    assert encode_json(result.snapshot) == encode_json(fresh.snapshot), "incremental != fresh"
    assert result.diagnostics == fresh.diagnostics, "diagnostics differ"
    assert payload == encode_msgpack(result.snapshot), "spliced encoding differs"
    print(f"one Secret changed, {args.changes} times: translation median "
          f"{statistics.median(timings) * 1000:.1f} ms (max {max(timings) * 1000:.1f} ms), "
          f"encoding {len(payload) / 1e6:.1f} MB median {statistics.median(encodings) * 1000:.1f} ms "
          f"(checked against a fresh translate() and encode)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
