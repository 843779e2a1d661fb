"""EndpointSlice change → every worker applied it: latency with many Ingresses loaded.

Starts the Kubernetes API server emulator (tests/support/apiserver.py) in this process,
loads ``--ingresses`` Ingresses spread over ``--services`` Services (one EndpointSlice each),
starts a real ``fastingress controller`` process against it, then changes ONE EndpointSlice
``--iterations`` times.  Each iteration measures from just before the write to the API
server until EVERY worker reports (admin /status) the generation that carries the change,
polled every ``--poll`` seconds, and checks with a real request that the new endpoint
answers.  Prints p50/p90/p99/max of that latency and the snapshot build (translation +
encoding) time the controller reports.

With ``--breakdown`` the controller logs at info level and the latency of each change is
split, from the log lines' millisecond timestamps, into: write -> build start (the watch
event reaching the controller, plus the debounce hold-off), build (translate + encode, as
the controller reports it), build end -> published (compare, shared-memory write), published
-> last worker in force (notify, decode, compile, install), and the benchmark noticing it
(admin /status polling).

    .venv/bin/python loadtests/endpoints_latency.py --ingresses 10000 --iterations 30
    .venv/bin/python loadtests/endpoints_latency.py --ingresses 10000 --iterations 30 --breakdown
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.apiserver import ApiServer  # noqa: E402
from tests.support.process import free_port, wait_for  # noqa: E402
from tests.support.upstream import EchoServer  # noqa: E402


def ingress_class() -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": "fastingress"},
        "spec": {"controller": "fastingress.io/ingress-controller"},
    }


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


def endpoint_slice(service_name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service_name}-slice",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service_name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
    }


def ingress(index: int, service_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": f"ing-{index}", "namespace": "default"},
        "spec": {
            "ingressClassName": "fastingress",
            "rules": [
                {
                    "host": f"h{index}.test",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": service_name, "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ],
        },
    }


class Change(NamedTuple):
    written: float  # time.time() just before the write to the API server
    noticed: float  # when /status showed every worker on ``generation``
    generation: int
    build: float  # the controller's last_build_seconds


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (.*)$")
_PUBLISHED = re.compile(r"published snapshot generation (\d+)")
_IN_FORCE = re.compile(r"worker (\d+): snapshot generation (\d+) in force")
_RELOADED = "reloaded (cluster changed)"


def _stamp(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as logged


def print_breakdown(log: str, changes: list[Change]) -> None:
    """Split each change's latency using the millisecond timestamps of the info log lines."""
    reloaded: list[float] = []
    published: dict[int, float] = {}
    in_force: dict[int, float] = {}
    for line in log.splitlines():
        m = _STAMP.match(line)
        if m is None:
            continue
        at, rest = _stamp(m.group(1)), m.group(2)
        if _RELOADED in rest:
            reloaded.append(at)
        elif (p := _PUBLISHED.search(rest)) is not None:
            published[int(p.group(1))] = at
        elif (w := _IN_FORCE.search(rest)) is not None:
            generation = int(w.group(2))
            in_force[generation] = max(in_force.get(generation, 0.0), at)
    parts: dict[str, list[float]] = {}
    for change in changes:
        done = [r for r in reloaded if r >= change.written - 0.002]
        if not done or change.generation not in published or change.generation not in in_force:
            continue
        build_end = done[0]
        steps = {
            "write -> build start (watch event + debounce)": build_end - change.build - change.written,
            "build (translate + encode)": change.build,
            "build end -> published": published[change.generation] - build_end,
            "published -> last worker in force": in_force[change.generation] - published[change.generation],
            "last worker in force -> noticed (polling)": change.noticed - in_force[change.generation],
        }
        for name, seconds in steps.items():
            parts.setdefault(name, []).append(seconds * 1000)
    print(f"breakdown over {len(next(iter(parts.values()), []))} changes (ms; log stamps are 1 ms):")
    for name, values in parts.items():
        print(f"  {name:48s} p50 {percentile(values, 50):6.1f}  p99 {percentile(values, 99):6.1f}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ingresses", type=int, default=10000)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.002, help="admin /status polling interval")
    parser.add_argument("--extra", default="", help="extra controller flags (one string)")
    parser.add_argument("--breakdown", action="store_true", help="split the latency using the logs")
    args = parser.parse_args()

    with ApiServer(bookmark_interval=5.0) as api, EchoServer("blue") as blue, EchoServer("green") as green:
        started = time.perf_counter()
        api.apply(ingress_class())
        api.apply(service(f"svc-{s}") for s in range(args.services))
        api.apply(endpoint_slice(f"svc-{s}", blue.port) for s in range(args.services))
        api.apply(ingress(i, f"svc-{i % args.services}") for i in range(args.ingresses))
        print(
            f"loaded {args.ingresses} Ingresses, {args.services} Services and EndpointSlices "
            f"into the emulator in {time.perf_counter() - started:.1f}s"
        )
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = api.write_kubeconfig(Path(tmp) / "kubeconfig")
            http_port, admin_port = free_port(), free_port()
            admin = f"http://127.0.0.1:{admin_port}"
            command = [
                sys.executable, "-m", "fastingress", "controller",
                "--kubeconfig", str(kubeconfig), "--bind", "127.0.0.1",
                "--http-port", str(http_port), "--https-port", "0", "--admin-port", str(admin_port),
                "--workers", str(args.workers), "--log-level", "info" if args.breakdown else "warning",
                *args.extra.split(),
            ]  # fmt: skip
            log = Path(tmp) / "controller.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                changes: list[Change] = []
                code = measure(
                    args,
                    api,
                    proc=proc,
                    admin=admin,
                    http_port=http_port,
                    servers=(blue, green),
                    started=time.perf_counter(),
                    changes=changes,
                )
                if args.breakdown:
                    print_breakdown(log.read_text(errors="replace"), changes)
                return code
            except BaseException:
                print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
                raise
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def measure(
    args: argparse.Namespace,
    api: ApiServer,
    *,
    proc: subprocess.Popen[bytes],
    admin: str,
    http_port: int,
    servers: tuple[EchoServer, EchoServer],
    started: float,
    changes: list[Change],
) -> int:
    client = httpx.Client(timeout=10)

    def ready() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"controller exited with {proc.returncode}")
        return client.get(f"{admin}/readyz").status_code == 200

    wait_for(ready, timeout=600, interval=0.1, what="controller ready")
    print(f"controller ready (initial list + build + workers) in {time.perf_counter() - started:.1f}s")

    def status() -> dict[str, Any]:
        data: dict[str, Any] = client.get(f"{admin}/status").json()
        return data

    host = "h0.test"  # served by svc-0, whose slice we flip between the two servers
    latencies: list[float] = []
    builds: list[float] = []
    for iteration in range(args.iterations):
        target = servers[(iteration + 1) % 2]
        before = status()["generation"]
        wall = time.time()
        t0 = time.perf_counter()
        api.apply(endpoint_slice("svc-0", target.port))
        while True:
            st = status()
            generation = st["generation"]
            if generation > before and all(w["generation"] >= generation for w in st["workers"]):
                break
            if time.perf_counter() - t0 > 60:
                raise SystemExit(f"iteration {iteration}: not applied after 60s: {st}")
            time.sleep(args.poll)
        latencies.append(time.perf_counter() - t0)
        builds.append(float(st["controller"]["last_build_seconds"]))
        changes.append(Change(wall, wall + latencies[-1], generation, builds[-1]))
        answered = client.get(f"http://127.0.0.1:{http_port}/", headers={"Host": host}).json()["server"]
        if answered != target.name:
            raise SystemExit(f"iteration {iteration}: answered by {answered}, expected {target.name}")

    ms = [x * 1000 for x in latencies]
    print(
        f"EndpointSlice change -> all {args.workers} workers applied, {args.iterations} changes, "
        f"{args.ingresses} Ingresses: p50 {percentile(ms, 50):.0f} ms, p90 {percentile(ms, 90):.0f} ms, "
        f"p99 {percentile(ms, 99):.0f} ms, max {max(ms):.0f} ms"
    )
    build_ms = [b * 1000 for b in builds]
    print(
        f"snapshot build (translate + encode) per change: median {statistics.median(build_ms):.0f} ms, "
        f"max {max(build_ms):.0f} ms; snapshot {st['controller']['last_snapshot_bytes'] / 1e6:.2f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
