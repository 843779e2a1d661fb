"""Operating standalone mode for real, through real processes: no configuration is lost to a
broken edit, the start refuses a broken file (unless --allow-partial), the log and ``ps`` say
what runs, the admin port speaks proper status lines, a SIGKILLed supervisor leaves nothing
behind, and ``--demo`` takes its backends down with it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx
import yaml

from tests.conftest import REPO
from tests.support import manifests as m
from tests.support.process import Fastingress, fastingress_command, free_port, run_fastingress, wait_for
from tests.support.upstream import EchoServer
from workers.build import data_path


def _site(path: Path, host: str, service: str, server: EchoServer) -> Path:
    return m.write(
        path,
        m.service(service),
        m.endpoint_slice(service, [server.port]),
        m.ingress(service, [(host, "/", "Prefix", service)]),
    )


def _server_of(fi: Fastingress, host: str) -> str | int:
    r = httpx.get(f"{fi.base}/", headers={"Host": host}, timeout=5)
    if r.status_code != 200:
        return r.status_code
    name: str = r.json()["server"]
    return name


def _metric(fi: Fastingress, name: str) -> float:
    text = httpx.get(f"{fi.admin}/metrics", timeout=5).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} missing from /metrics"
    return float(found.group(1))


def _files(fi: Fastingress) -> dict[str, dict[str, object]]:
    return {Path(str(f["path"])).name: f for f in fi.status()["files"]}


class _Load:
    """Threads requesting one host without pause; anything but a 200 from ``expect`` fails."""

    def __init__(self, fi: Fastingress, host: str, expect: str) -> None:
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._args = (fi.base, host, expect)
        self._threads = [threading.Thread(target=self._run, args=(keep,)) for keep in (True, False)]

    def _run(self, keepalive: bool) -> None:
        base, host, expect = self._args
        headers = {"Host": host} if keepalive else {"Host": host, "Connection": "close"}
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    r = client.get("/")
                    good = r.status_code == 200 and r.json()["server"] == expect
                    detail = f"{r.status_code} {r.text[:80]}"
                except httpx.HTTPError as exc:
                    good, detail = False, repr(exc)
                with self._lock:
                    if good:
                        self.ok += 1
                    else:
                        self.failures.append(detail)

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=15)


def test_broken_manifest_edit_under_load_costs_zero_requests(
    tmp_path: Path, echo_servers: list[EchoServer]
) -> None:
    """A YAML syntax error in one file keeps that file's last good objects in force (log line,
    /status, gauge, counter) while edits to the other files still apply."""
    s0, s1, s2 = echo_servers
    folder = tmp_path / "manifests"
    folder.mkdir()
    a = _site(folder / "a.yaml", "a.test", "alpha", s0)
    _site(folder / "b.yaml", "b.test", "beta", s1)
    with run_fastingress(tmp_path, manifests=[folder], workers=2) as fi:
        assert _metric(fi, "fastingress_config_last_reload_successful") == 1
        with _Load(fi, "a.test", "s0") as load:
            wait_for(lambda: load.ok > 20, what="load running")
            a.with_suffix(".tmp").write_text(a.read_text() + "\n  - broken: [unclosed\n")
            a.with_suffix(".tmp").replace(a)  # what an editor's save does: the whole file, at once
            wait_for(lambda: _files(fi)["a.yaml"]["ok"] is False, what="a.yaml reported failing")
            assert _metric(fi, "fastingress_config_last_reload_successful") == 0
            assert _metric(fi, "fastingress_config_reload_failures_total") >= 1
            assert _metric(fi, f'fastingress_config_file_last_load_successful{{file="{a}"}}') == 0
            status = fi.status()
            assert status["last_reload_successful"] is False
            assert "invalid YAML at line" in str(_files(fi)["a.yaml"]["error"])
            assert _files(fi)["a.yaml"]["objects"] == 3  # its last good version, still in force
            assert fi.ready()  # serving fine: never taken out of the load balancer for it
            # The other file still reloads while a.yaml is broken.
            _site(folder / "b.yaml", "b.test", "beta", s2)
            wait_for(lambda: _server_of(fi, "b.test") == "s2", what="b.yaml's edit in force")
            ok_while_broken = load.ok
            wait_for(lambda: load.ok > ok_while_broken + 20, what="more load while a.yaml is broken")
        assert load.failures == [], load.failures[:5]
        log = fi.log()
        assert f"manifest file {a}: invalid YAML at line" in log
        assert "keeping its last good version (3 objects, loaded " in log
        # Fixing the file (with a change) puts it back in force.
        _site(a, "a.test", "alpha", s2)
        wait_for(lambda: _server_of(fi, "a.test") == "s2", what="the fixed a.yaml in force")
        assert _metric(fi, "fastingress_config_last_reload_successful") == 1
        assert _files(fi)["a.yaml"]["ok"] is True


def test_start_refuses_a_broken_file_unless_allow_partial(
    tmp_path: Path, echo_servers: list[EchoServer]
) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    _site(folder / "good.yaml", "good.test", "good", echo_servers[0])
    bad = folder / "bad.yaml"
    bad.write_text("kind: Ingress\nmetadata: {name: x\n")
    refused = subprocess.run(
        fastingress_command(
            "standalone", "--manifests", str(folder), "--bind", "127.0.0.1",
            "--http-port", str(free_port()), "--https-port", "0", "--admin-port", str(free_port()),
        ),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(f"fastingress: error: manifest file {bad}: invalid YAML at line 3")
    assert "--allow-partial" in refused.stderr

    with run_fastingress(tmp_path, manifests=[folder], workers=1, extra=("--allow-partial",)) as fi:
        assert _server_of(fi, "good.test") == "s0"
        assert _files(fi)["bad.yaml"]["ok"] is False
        assert _files(fi)["bad.yaml"]["objects"] == 0
        assert _metric(fi, "fastingress_config_last_reload_successful") == 0
        assert f"manifest file {bad}: invalid YAML at line 3" in fi.log()
        assert "left out (it never loaded)" in fi.log()
        _site(bad, "bad.test", "fixed", echo_servers[1])
        wait_for(lambda: _server_of(fi, "bad.test") == "s1", what="the fixed file in force")
        assert _metric(fi, "fastingress_config_last_reload_successful") == 1


def _status_line(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()


def test_start_up_lines_process_titles_and_admin_status_lines(
    tmp_path: Path, echo_servers: list[EchoServer]
) -> None:
    app = _site(tmp_path / "app.yaml", "app.test", "web", echo_servers[0])
    with run_fastingress(tmp_path, manifests=[app], workers=2) as fi:
        wait_for(lambda: "ready: 2 workers serve snapshot generation 1" in fi.log(), what="ready line")
        log = fi.log()
        starting = (
            f"starting 2 workers (+1 standby): http on 127.0.0.1:{fi.http_port}, "
            f"https on 127.0.0.1:{fi.https_port}, admin on 127.0.0.1:{fi.admin_port}"
        )
        assert starting in log, log
        codec_and_generation = (
            rf", HTTP/1\.1 codec (llhttp|h11), data path {data_path()}, snapshot generation 1\n")
        assert re.search(re.escape(starting) + codec_and_generation, log)
        assert log.index(f"admin on http://127.0.0.1:{fi.admin_port}") < log.index("loaded manifests")

        assert _cmdline(fi.proc.pid) == "fastingress: supervisor"
        workers = fi.status()["workers"]
        assert sorted(_cmdline(int(w["pid"])) for w in workers) == [
            "fastingress: worker 0",
            "fastingress: worker 1",
        ]
        def standby_title() -> str | None:  # the standby starts a moment after the workers
            pid = int(fi.status()["standby"]["pid"])
            return _cmdline(pid) if pid else None

        wait_for(lambda: standby_title() == "fastingress: standby worker", what="the standby's title")

        admin = fi.admin_port
        assert _status_line(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") == b"HTTP/1.1 200 OK"
        assert _status_line(admin, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n") == b"HTTP/1.1 404 Not Found"
        assert (
            _status_line(admin, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            == b"HTTP/1.1 405 Method Not Allowed"
        )
        assert _status_line(admin, b"GARBAGE\r\n\r\n") == b"HTTP/1.1 400 Bad Request"


def _runtime_dirs(pid: int) -> list[Path]:
    found: list[Path] = []
    for base in ("/dev/shm", os.environ.get("TMPDIR", "/tmp")):
        if os.path.isdir(base):
            found += [p for p in Path(base).glob(f"fastingress-{pid}-*") if p.is_dir()]
    return found


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone too (its parent, the SIGKILLed supervisor, cannot reap it; init will).
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_sigkilled_supervisor_leaves_no_workers_and_the_next_start_cleans_up(
    tmp_path: Path, echo_servers: list[EchoServer]
) -> None:
    app = _site(tmp_path / "app.yaml", "app.test", "web", echo_servers[0])
    with run_fastingress(tmp_path, manifests=[app], workers=2) as first:
        status = first.status()
        children = [int(w["pid"]) for w in status["workers"]]
        wait_for(lambda: int(first.status()["standby"]["pid"]), what="the standby worker")
        children.append(int(first.status()["standby"]["pid"]))
        [runtime_dir] = _runtime_dirs(first.proc.pid)
        assert (runtime_dir / "snapshot").exists()
        os.kill(first.proc.pid, signal.SIGKILL)  # the supervisor only, as the OOM killer would
        first.proc.wait(timeout=10)
        wait_for(lambda: all(_gone(pid) for pid in children), timeout=15, what="workers gone")
        assert runtime_dir.exists()  # nobody could clean up ...
    with run_fastingress(tmp_path, manifests=[app], workers=1) as second:
        assert f"removed the stale runtime directory {runtime_dir}" in second.log()
        assert not runtime_dir.exists()  # ... until the next start
        assert _server_of(second, "app.test") == "s0"


def test_demo_backends_start_and_stop_with_fastingress(tmp_path: Path) -> None:
    """``--demo`` (here with free ports instead of 9001-9003): the example manifests are served
    by backends living in the supervisor; SIGINT (Ctrl-C) leaves nothing listening."""
    ports = {name: free_port() for name in ("frontend", "api", "docs")}
    folder = tmp_path / "examples"
    folder.mkdir()
    for path in sorted((REPO / "config" / "examples").glob("*.yaml")):
        docs = list(yaml.safe_load_all(path.read_text()))
        for doc in docs:
            if doc.get("kind") == "EndpointSlice":
                doc["ports"][0]["port"] = ports[doc["metadata"]["labels"]["kubernetes.io/service-name"]]
        (folder / path.name).write_text(yaml.safe_dump_all(docs))
    shutil.copy(REPO / "config" / "examples" / "README.md", folder / "README.md")
    demo = tuple(arg for name, port in ports.items() for arg in ("--demo-backend", f"{name}={port}"))
    with run_fastingress(tmp_path, manifests=[folder], workers=1, extra=("--demo", *demo)) as fi:
        answer = httpx.get(f"{fi.base}/api/hello", headers={"Host": "demo.localhost"}, timeout=5)
        assert answer.status_code == 200
        assert answer.json()["backend"] == "api"
        assert f"demo backend docs on http://127.0.0.1:{ports['docs']}" in fi.log()
        fi.signal(signal.SIGINT)
        assert fi.proc.wait(timeout=30) == 0
    for port in ports.values():
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still listening"


def test_readyz_reflects_the_data_plane(tmp_path: Path, echo_servers: list[EchoServer]) -> None:
    """A worker that stops answering (here: SIGSTOP) makes /readyz 503, naming it; it is ready
    again once the worker is."""
    app = _site(tmp_path / "app.yaml", "app.test", "web", echo_servers[0])
    with run_fastingress(tmp_path, manifests=[app], workers=2) as fi:
        assert httpx.get(f"{fi.admin}/readyz", timeout=5).text == "ok: 2 workers ready\n"
        victim = fi.worker_pids()[1]
        os.kill(victim, signal.SIGSTOP)
        try:
            r = httpx.get(f"{fi.admin}/readyz", timeout=5)
            assert r.status_code == 503
            assert r.text == f"not ready: worker 1 (pid {victim}) did not report its stats\n"
        finally:
            os.kill(victim, signal.SIGCONT)
        wait_for(fi.ready, what="ready again")
