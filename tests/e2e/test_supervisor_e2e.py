"""Process management through real processes: a killed worker is replaced, SIGTERM drains,
SIGHUP republishes, snapshot files serve and reload, the admin port reports."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.support import manifests as m
from tests.support.process import fastingress_command, run_fastingress, wait_for
from tests.support.upstream import EchoServer


def _app(tmp_path: Path, server: EchoServer, host: str = "app.test") -> Path:
    return m.write(
        tmp_path / "app.yaml",
        m.service("web"),
        m.endpoint_slice("web", [server.port]),
        m.ingress("web", [(host, "/", "Prefix", "web")]),
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_killed_worker_is_replaced_within_a_second(tmp_path: Path, echo_servers: list[EchoServer]) -> None:
    with run_fastingress(tmp_path, manifests=[_app(tmp_path, echo_servers[0])], workers=2) as fi:
        before = fi.worker_pids()
        victim = before[0]
        statuses: list[int] = []

        def keep_requesting() -> None:
            # New connections while the slot is empty: the surviving worker takes them all.
            with httpx.Client(base_url=fi.base, headers={"Host": "app.test", "Connection": "close"}) as c:
                statuses.extend(c.get("/").status_code for _ in range(20))

        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: not _alive(victim) or None, timeout=5, interval=0.005, what="victim gone")
        client = threading.Thread(target=keep_requesting)
        client.start()

        def replaced() -> bool:
            workers = fi.status()["workers"]
            pids = {int(w["pid"]) for w in workers}
            return (
                len(workers) == 2
                and victim not in pids
                and before[1] in pids
                and all(int(w["generation"]) >= 1 for w in workers)
            )

        wait_for(replaced, timeout=5, interval=0.01, what="replacement worker with the snapshot")
        elapsed = time.monotonic() - t0
        client.join(timeout=30)
        assert statuses == [200] * 20
        assert elapsed < 1.0, f"replacement took {elapsed:.2f}s"
        assert fi.ready()
        assert "restart" in fi.log().lower()


def test_sigterm_drains_in_flight_requests(tmp_path: Path, echo_servers: list[EchoServer]) -> None:
    up = echo_servers[0]
    with run_fastingress(tmp_path, manifests=[_app(tmp_path, up)]) as fi:
        result: dict[str, int] = {}

        def slow() -> None:
            r = httpx.get(fi.base + "/__slow/1500", headers={"Host": "app.test"}, timeout=20)
            result["status"] = r.status_code

        t = threading.Thread(target=slow)
        t.start()
        wait_for(lambda: any("__slow" in r["path"] for r in up.requests), what="slow request upstream")
        fi.signal(signal.SIGTERM)
        t.join(timeout=20)
        assert result.get("status") == 200
        assert fi.proc.wait(timeout=20) == 0


def test_sighup_republishes(tmp_path: Path, echo_servers: list[EchoServer]) -> None:
    path = _app(tmp_path, echo_servers[0])
    with run_fastingress(tmp_path, manifests=[path], extra=("--watch-interval", "3600")) as fi:
        gen = fi.generation()
        _app(tmp_path, echo_servers[1], host="other.test")
        fi.signal(signal.SIGHUP)
        fi.wait_generation(gen + 1)
        r = httpx.get(fi.base + "/", headers={"Host": "other.test"})
        assert r.status_code == 200 and r.json()["server"] == "s1"


def test_snapshot_file_mode_and_refused_snapshot(tmp_path: Path, echo_servers: list[EchoServer]) -> None:
    manifests = _app(tmp_path, echo_servers[0])
    snap = tmp_path / "snap.json"
    subprocess.run(
        fastingress_command("snapshot", "build", "--manifests", str(manifests), "-o", str(snap)),
        check=True,
        capture_output=True,
    )
    with run_fastingress(tmp_path, snapshot=snap) as fi:
        assert httpx.get(fi.base + "/", headers={"Host": "app.test"}).json()["server"] == "s0"
        gen = fi.generation()
        # A broken snapshot file is refused; the previous snapshot stays in force.
        tmp = snap.with_suffix(".tmp")
        tmp.write_text('{"virtual_hosts": "not a list"')
        tmp.replace(snap)
        wait_for(lambda: "snap.json" in fi.log(), what="a log line naming the refused file")
        assert httpx.get(fi.base + "/", headers={"Host": "app.test"}).json()["server"] == "s0"
        assert fi.generation() == gen
        # A good one is picked up.
        _app(tmp_path, echo_servers[1])
        subprocess.run(
            fastingress_command("snapshot", "build", "--manifests", str(manifests), "-o", str(tmp)),
            check=True,
            capture_output=True,
        )
        tmp.replace(snap)
        fi.wait_generation(gen + 1)
        assert httpx.get(fi.base + "/", headers={"Host": "app.test"}).json()["server"] == "s1"


def test_admin_endpoints_and_metrics(tmp_path: Path, echo_servers: list[EchoServer]) -> None:
    with run_fastingress(tmp_path, manifests=[_app(tmp_path, echo_servers[0])]) as fi:
        with httpx.Client(base_url=fi.base, headers={"Host": "app.test"}) as c:
            for _ in range(7):
                assert c.get("/").status_code == 200
            assert c.get("/x", headers={"Host": "none.test"}).status_code == 404
        assert httpx.get(fi.admin + "/healthz").status_code == 200
        assert httpx.get(fi.admin + "/readyz").status_code == 200
        text = httpx.get(fi.admin + "/metrics").text
        ok = [
            line for line in text.splitlines()
            if line.startswith("fastingress_requests_total{") and 'status_class="2xx"' in line
            and 'host="app.test"' in line and 'ingress="default/web"' in line
        ]
        assert ok and sum(float(line.rsplit(" ", 1)[1]) for line in ok) == 7
        assert any(
            line.startswith("fastingress_requests_total{") and 'status_class="4xx"' in line
            for line in text.splitlines()
        )
        assert "fastingress_request_duration_seconds_bucket" in text
        assert "fastingress_snapshot_generation" in text


def test_bad_flags_and_missing_files_are_one_line(tmp_path: Path) -> None:
    for args in (
        ["standalone", "--manifests", str(tmp_path / "missing.yaml")],
        ["standalone", "--http-port", "notaport", "--manifests", str(tmp_path)],
        ["standalone"],
        ["standalone", "--snapshot", str(tmp_path / "nope.json")],
    ):
        p = subprocess.run(
            fastingress_command(*args), capture_output=True, text=True, timeout=30, check=False
        )
        assert p.returncode != 0, args
        assert "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) <= 2, p.stderr
