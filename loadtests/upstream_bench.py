#!/usr/bin/env python3
"""Upstream protocols, side by side: fastingress vs nginx proxying to HTTP, HTTPS and HTTP/2 upstreams.

    .venv/bin/python loadtests/upstream_bench.py                    # 2 rounds x 5 s per case
    .venv/bin/python loadtests/upstream_bench.py --rounds 3 --duration 10 --connections 32

One nginx is the upstream (2 workers) with three listeners: cleartext HTTP/1.1, HTTPS (a self-signed
P-256 certificate) and h2c (HTTP/2 prior knowledge), each answering a small fixed 200.  Both proxies
run ONE worker and route by Host:

  host          fastingress (backend-protocol)     nginx
  http.bench    HTTP                               proxy_pass http:// (keepalive 32)
  https.bench   HTTPS                              proxy_pass https:// (keepalive 32, session reuse)
  grpc.bench    GRPC (h2c upstream, multiplexed)   grpc_pass grpc:// (keepalive 32)

The clients are HTTP/1.1 keep-alive (``wrk -t1 -c C``), interleaved fastingress / nginx per case.
Printed: req/s and proxy CPU per request (user+sys of the proxy's processes from /proc) and the
fastingress/nginx ratios.  Needs nginx (with the grpc module, as Debian's), wrk and openssl.  Not CI.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOSTS = ("http.bench", "https.bench", "grpc.bench")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_conf(work: Path, name: str, workers: int, body: str) -> Path:
    temp = work / f"{name}-temp"
    temp.mkdir(exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = work / f"{name}.conf"
    conf.write_text(
        f"{user}worker_processes {workers};\ndaemon off;\npid {work}/{name}.pid;\n"
        f"error_log {work}/{name}-error.log warn;\nevents {{ worker_connections 8192; }}\n"
        f"http {{\n access_log off;\n client_body_temp_path {temp}/b;\n proxy_temp_path {temp}/p;\n"
        f" fastcgi_temp_path {temp}/f;\n uwsgi_temp_path {temp}/u;\n scgi_temp_path {temp}/s;\n"
        f" keepalive_requests 1000000;\n{body}}}\n"
    )
    return conf


def start_nginx(work: Path, conf: Path) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return subprocess.Popen([nginx, "-p", str(work), "-e", str(conf.with_suffix(".log")), "-c", str(conf)])


def cpu_seconds(root: int) -> float:
    """user+sys CPU of ``root`` and its descendants (live ones), in seconds."""
    total = 0.0
    pids = [root]
    while pids:
        pid = pids.pop()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(stat[11]) + int(stat[12])) / CLK_TCK
            for task in Path(f"/proc/{pid}/task").iterdir():  # children hang off the thread that forked
                pids.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return total


def wait_ok(url: str, host: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, headers={"Host": host})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} (Host {host}) never answered 200")


def wrk(url: str, host: str, connections: int, duration: float) -> float:
    out = subprocess.run(
        ["wrk", "-t1", "-c", str(connections), "-d", f"{duration:g}s", "-H", f"Host: {host}", url],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"errors under load ({host}):\n{out}")
    match = re.search(r"(\d+) requests in", out)
    if match is None:
        raise SystemExit(f"unexpected wrk output:\n{out}")
    return float(match.group(1))


def manifests(folder: Path, ports: dict[str, int]) -> None:
    docs = []
    for proto, port in (("HTTP", ports["http"]), ("HTTPS", ports["https"]), ("GRPC", ports["h2c"])):
        name = proto.lower()
        docs.append(textwrap.dedent(f"""\
            apiVersion: v1
            kind: Service
            metadata: {{name: {name}, namespace: bench}}
            spec: {{ports: [{{name: p, port: 80}}]}}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {{name: {name}, namespace: bench, labels: {{kubernetes.io/service-name: {name}}}}}
            addressType: IPv4
            ports: [{{name: p, port: {port}}}]
            endpoints: [{{addresses: ["127.0.0.1"]}}]
            ---
            apiVersion: networking.k8s.io/v1
            kind: Ingress
            metadata:
              name: {name}
              namespace: bench
              annotations: {{nginx.ingress.kubernetes.io/backend-protocol: "{proto}"}}
            spec:
              rules:
                - host: {name}.bench
                  http:
                    paths:
                      - path: /
                        pathType: Prefix
                        backend: {{service: {{name: {name}, port: {{number: 80}}}}}}
            """))
    (folder / "bench.yaml").write_text("---\n".join(docs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    local = REPO / ".venv/bin/fastingress"
    fastingress = str(local) if local.exists() else "fastingress"
    with tempfile.TemporaryDirectory(prefix="upstream-bench-") as tmp:
        work = Path(tmp)
        crt, key = work / "tls.crt", work / "tls.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "2", "-subj", "/CN=upstream.bench", "-keyout", str(key),
                        "-out", str(crt)], check=True, capture_output=True)
        ports = {"http": free_port(), "https": free_port(), "h2c": free_port()}
        up_conf = nginx_conf(work, "upstream", 2, f"""\
 server {{ listen 127.0.0.1:{ports['http']}; location / {{ return 200 "hello\\n"; }} }}
 server {{ listen 127.0.0.1:{ports['https']} ssl; ssl_certificate {crt}; ssl_certificate_key {key};
          location / {{ return 200 "hello\\n"; }} }}
 server {{ listen 127.0.0.1:{ports['h2c']} http2; location / {{ return 200 "hello\\n"; }} }}
""")
        fi_port, fi_admin, nx_port = free_port(), free_port(), free_port()
        nx_conf = nginx_conf(work, "proxy", 1, f"""\
 upstream up_http {{ server 127.0.0.1:{ports['http']}; keepalive 32; }}
 upstream up_https {{ server 127.0.0.1:{ports['https']}; keepalive 32; }}
 upstream up_grpc {{ server 127.0.0.1:{ports['h2c']}; keepalive 32; }}
 server {{ listen 127.0.0.1:{nx_port}; server_name http.bench;
          location / {{ proxy_pass http://up_http; proxy_http_version 1.1;
                        proxy_set_header Connection ""; }} }}
 server {{ listen 127.0.0.1:{nx_port}; server_name https.bench;
          location / {{ proxy_pass https://up_https; proxy_http_version 1.1; proxy_set_header Connection "";
                        proxy_ssl_session_reuse on; }} }}
 server {{ listen 127.0.0.1:{nx_port}; server_name grpc.bench; location / {{ grpc_pass grpc://up_grpc; }} }}
""")
        (work / "m").mkdir()
        manifests(work / "m", ports)
        procs = [start_nginx(work, up_conf), start_nginx(work, nx_conf)]
        fi = subprocess.Popen(
            [fastingress, "standalone", "--manifests", str(work / "m"), "--bind", "127.0.0.1", "--http-port",
             str(fi_port), "--https-port", "0", "--admin-port", str(fi_admin), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=open(work / "fi.log", "wb"),  # noqa: SIM115
        )
        procs.append(fi)
        try:
            proxies = {"fastingress": (fi.pid, f"http://127.0.0.1:{fi_port}/"),
                       "nginx": (procs[1].pid, f"http://127.0.0.1:{nx_port}/")}
            for _, url in proxies.values():
                for host in HOSTS:
                    wait_ok(url, host)
            results: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for host in HOSTS:
                for _, url in proxies.values():  # warm-up
                    wrk(url, host, args.connections, 1)
                for _ in range(args.rounds):
                    for name, (pid, url) in proxies.items():
                        cpu0 = cpu_seconds(pid)
                        count = wrk(url, host, args.connections, args.duration)
                        cpu = cpu_seconds(pid) - cpu0
                        runs = results.setdefault((host, name), [])
                        runs.append((count / args.duration, cpu / count * 1e6))
            print(f"{'upstream':<12} {'proxy':<12} {'req/s':>9} {'CPU us/req':>11}")
            for host in HOSTS:
                row = {}
                for name in proxies:
                    runs = results[(host, name)]
                    rps = max(r for r, _ in runs)
                    cpu = min(c for _, c in runs)
                    row[name] = (rps, cpu)
                    print(f"{host:<12} {name:<12} {rps:>9,.0f} {cpu:>11.1f}")
                (fr, fc), (nr, nc) = row["fastingress"], row["nginx"]
                print(f"{host:<12} {'ratio f/n':<12} {fr / nr:>9.2f} {fc / nc:>11.2f}")
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM if proc is fi else signal.SIGQUIT)
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
