"""Config changes never cost a request: under continuous load, 100 generations that add and
remove routes and endpoints; zero failed requests, and a WebSocket stays open throughout."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import httpx
from websockets.sync.client import connect as ws_connect

from tests.support import manifests as m
from tests.support.process import Fastingress, run_fastingress
from tests.support.upstream import EchoServer, WebSocketEchoServer

GENERATIONS = 100


class Load:
    """Client threads hammering a stable route; every non-200 or exception is a failure."""

    def __init__(self, fi: Fastingress, threads: int = 3) -> None:
        self.fi = fi
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i % 2 == 0,)) for i in range(threads)]

    def _run(self, keepalive: bool) -> None:
        headers = {"Host": "load.test"}
        if not keepalive:
            headers["Connection"] = "close"
        with httpx.Client(base_url=self.fi.base, headers=headers, timeout=10) as c:
            while not self.stop.is_set():
                try:
                    r = c.get("/stable")
                    good = r.status_code == 200
                    detail = f"status {r.status_code}: {r.text[:80]}"
                except httpx.HTTPError as exc:
                    good, detail = False, repr(exc)
                with self._lock:
                    if good:
                        self.ok += 1
                    else:
                        self.failures.append(detail)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=15)


def _generation_docs(k: int, servers: list[EchoServer], ws: WebSocketEchoServer) -> list[str]:
    """Generation k: the stable route's endpoints rotate over the live servers, an extra route
    appears on the stable host and another host comes and goes."""
    ports = [s.port for s in servers]
    stable_ports = [ports[k % 3]] if k % 2 else [ports[k % 3], ports[(k + 1) % 3]]
    docs = [
        m.service("stable"),
        m.endpoint_slice("stable", stable_ports),
        m.service("ws"),
        m.endpoint_slice("ws", [ws.port]),
        m.ingress("stable", [("load.test", "/stable", "Prefix", "stable"), ("ws.test", "/", "Prefix", "ws")]),
        m.ingress("churn", [("load.test", f"/extra{k}", "Exact", "stable")]),
    ]
    if k % 3 == 0:
        docs.append(m.ingress("sometimes", [(f"host{k}.test", "/", "Prefix", "stable")]))
    return docs


def test_100_generations_under_load_lose_nothing(
    tmp_path: Path, echo_servers: list[EchoServer], ws_server: WebSocketEchoServer
) -> None:
    path = tmp_path / "cluster.yaml"
    m.write(path, *_generation_docs(0, echo_servers, ws_server))
    with run_fastingress(tmp_path, manifests=[path]) as fi:
        base = fi.generation()
        sock = socket.create_connection(("127.0.0.1", fi.http_port), timeout=10)
        with ws_connect("ws://ws.test/", sock=sock, open_timeout=10) as ws, Load(fi) as load:
            for k in range(1, GENERATIONS + 1):
                m.write(path, *_generation_docs(k, echo_servers, ws_server))
                fi.wait_generation(base + k)
                if k % 10 == 0:
                    ws.send(f"still here {k}")
                    assert ws.recv(timeout=10) == f"still here {k}"
            ws.send("after all generations")
            assert ws.recv(timeout=10) == "after all generations"
        assert load.failures == [], load.failures[:5]
        assert load.ok > GENERATIONS
        # The last generation's routes are in force and the removed ones are gone.
        with httpx.Client(base_url=fi.base, headers={"Host": "load.test"}) as c:
            assert c.get(f"/extra{GENERATIONS}").status_code == 200
            assert c.get(f"/extra{GENERATIONS - 1}").status_code == 404
        assert fi.generation() == base + GENERATIONS
