"""Memory of ``fastingress controller`` in a cluster with many more Secrets than Ingresses use.

    .venv/bin/python loadtests/secrets_memory.py [--ingresses 10000] [--secrets 50000] [--hold-all]

The API server emulator (tests/support/apiserver.py, real HTTP, paginated lists) gets N
Ingresses, each with a Service, an EndpointSlice and a ``kubernetes.io/tls`` Secret named by
``spec.tls``; one Ingress in ten also names an Opaque CA Secret with ``proxy-ssl-secret``.
The remaining Secrets, up to ``--secrets``, are Opaque and named by nothing (application
credentials, tokens, Helm releases: 4 KiB of data each).  A real controller process lists
and watches it all (1 worker); once ``/readyz`` is 200 the supervisor's resident memory
(VmRSS, and its peak VmHWM) is read from /proc.

``--hold-all`` runs the same controller with its Secret filter replaced by one that keeps
everything: what watching every Secret into memory (as informer caches do) would cost.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import trustme

from tests.support.apiserver import ApiServer
from tests.support.process import free_port

HOLD_ALL = """
import sys
from fastingress.k8s import controller

class Everything(frozenset):
    def __contains__(self, item):
        return True

controller.ControllerSource._kept_secrets = lambda self: Everything()
from fastingress.cli import main
sys.exit(main(sys.argv[1:]))
"""

Obj = dict[str, Any]


def _obj(api_version: str, kind: str, name: str, namespace: str | None, **rest: Any) -> Obj:
    meta: Obj = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, **rest}


def _ingress(name: str, namespace: str, host: str, service: str, *, secret: str, annotations: Obj) -> Obj:
    backend = {"service": {"name": service, "port": {"number": 80}}}
    rule = {"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}
    tls = [{"hosts": [host], "secretName": secret}]
    spec = {"ingressClassName": "fastingress", "tls": tls, "rules": [rule]}
    ingress = _obj("networking.k8s.io/v1", "Ingress", name, namespace, spec=spec)
    ingress["metadata"]["annotations"] = annotations
    return ingress


def populate(api: ApiServer, ingresses: int, secrets: int) -> int:
    ca = trustme.CA()
    cert = ca.issue_cert("*.test")
    chain = base64.b64encode(b"".join(blob.bytes() for blob in cert.cert_chain_pems)).decode()
    key = base64.b64encode(cert.private_key_pem.bytes()).decode()
    ca_pem = base64.b64encode(ca.cert_pem.bytes()).decode()
    controller = {"controller": "fastingress.io/ingress-controller"}
    api.apply(_obj("networking.k8s.io/v1", "IngressClass", "fastingress", None, spec=controller))
    made = 0
    for i in range(ingresses):
        ns, svc = f"team-{i % 50}", f"svc-{i}"
        api.apply(_obj("v1", "Service", svc, ns, spec={"ports": [{"name": "http", "port": 80}]}))
        endpoint = {"addresses": [f"10.{i // 250}.{i % 250}.1"], "conditions": {"ready": True}}
        slice_ = _obj("discovery.k8s.io/v1", "EndpointSlice", f"{svc}-x", ns, addressType="IPv4",
                      ports=[{"name": "http", "port": 8080}], endpoints=[endpoint])  # fmt: skip
        slice_["metadata"]["labels"] = {"kubernetes.io/service-name": svc}
        api.apply(slice_)
        tls = {"tls.crt": chain, "tls.key": key}
        api.apply(_obj("v1", "Secret", f"tls-{i}", ns, type="kubernetes.io/tls", data=tls))
        made += 1
        annotations = {}
        if i % 10 == 0:
            annotations = {"nginx.ingress.kubernetes.io/proxy-ssl-secret": f"{ns}/ca-{i}"}
            api.apply(_obj("v1", "Secret", f"ca-{i}", ns, type="Opaque", data={"ca.crt": ca_pem}))
            made += 1
        host = f"h{i}.example.test"
        api.apply(_ingress(f"ing-{i}", ns, host, svc, secret=f"tls-{i}", annotations=annotations))
    filler = base64.b64encode(os.urandom(3072)).decode()  # 4 KiB once encoded
    user = base64.b64encode(b"app").decode()
    for j in range(secrets - made):
        data = {"password": filler[: 4000 - (j % 7)], "user": user}
        api.apply(_obj("v1", "Secret", f"app-{j}", f"team-{j % 50}", type="Opaque", data=data))
    return secrets - made


def memory(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) // 1024  # MiB
    return fields


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingresses", type=int, default=10000)
    parser.add_argument("--secrets", type=int, default=50000)
    parser.add_argument("--hold-all", action="store_true")
    args = parser.parse_args()
    with ApiServer(bookmark_interval=5.0) as api, tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        unreferenced = populate(api, args.ingresses, args.secrets)
        took = time.monotonic() - started
        print(f"emulator: {args.ingresses} Ingresses, {args.secrets} Secrets "
              f"({unreferenced} named by nothing) in {took:.0f} s", flush=True)  # fmt: skip
        kubeconfig = api.write_kubeconfig(Path(tmp) / "kubeconfig")
        admin = free_port()
        prefix = [sys.executable, "-c", HOLD_ALL] if args.hold_all else [sys.executable, "-m", "fastingress"]
        command = [*prefix, "controller", "--kubeconfig", str(kubeconfig), "--bind", "127.0.0.1",
                   "--http-port", str(free_port()), "--https-port", "0", "--admin-port", str(admin),
                   "--workers", "1", "--no-standby-worker", "--log-level", "warning"]  # fmt: skip
        with open(Path(tmp) / "log", "wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            while True:
                if proc.poll() is not None:
                    print((Path(tmp) / "log").read_text()[-3000:])
                    return 1
                try:
                    if httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            ready = time.monotonic() - started
            info = httpx.get(f"http://127.0.0.1:{admin}/status", timeout=30).json()["controller"]
            mem = memory(proc.pid)
            mode = "hold every Secret" if args.hold_all else "referenced Secrets only"
            print(f"{mode}: ready in {ready:.0f} s; {info['secrets_held']} Secrets held "
                  f"({info['secrets_referenced']} referenced), {info['objects']} objects; supervisor "
                  f"VmRSS {mem['VmRSS']} MiB, peak VmHWM {mem['VmHWM']} MiB")  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
