"""Processes the benchmark starts, their CPU time from /proc, and readiness checks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("nginx", "wrk", "nghttp2-client")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A one-line reason the benchmark cannot go on."""


# ----------------------------------------------------------------------------------------- tools

def find_tool(name: str) -> str | None:
    extra = os.pathsep.join(["/usr/sbin", "/sbin", "/usr/local/sbin"])
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + extra)


def ensure_tools(needed: tuple[str, ...] = ("nginx", "wrk")) -> dict[str, str]:
    """Paths of the tools named, installing the Debian packages when root and needed."""
    missing = [tool for tool in needed if find_tool(tool) is None]
    if missing:
        install = f"apt-get update && apt-get install -y {' '.join(PACKAGES)}"
        if os.geteuid() != 0:
            raise BenchError(f"{' and '.join(missing)} not found; install them with: sudo sh -c '{install}'")
        print(f"bench: {', '.join(missing)} not found; running: {install}", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", *PACKAGES], check=True, env=env)
    found = {tool: find_tool(tool) for tool in needed}
    lost = [tool for tool, path in found.items() if path is None]
    if lost:
        raise BenchError(f"{', '.join(lost)} still not found after installing")
    return {tool: path for tool, path in found.items() if path is not None}


def find_fastingress(explicit: str | None) -> str:
    candidates = [explicit] if explicit else [str(REPO / ".venv" / "bin" / "fastingress"), "fastingress"]
    for candidate in candidates:
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    raise BenchError(f"fastingress executable not found (tried {', '.join(c for c in candidates if c)}); "
                     "pass --fastingress PATH")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------ processes

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Procs:
    started: list[Proc] = field(default_factory=list)

    def start(self, name: str, argv: list[str], log: Path, stop_signal: int = signal.SIGTERM) -> Proc:
        with log.open("ab") as out:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # own group: Ctrl-C reaches only us
        proc = Proc(name, popen, log, stop_signal)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.popen.poll() is None:
                proc.popen.send_signal(proc.stop_signal)
        deadline = time.monotonic() + 10
        for proc in reversed(self.started):
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"bench: {proc.name} did not stop in time; killing it", file=sys.stderr)
            # Whatever is left in the group it leads (workers) goes too; the group is ours.
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            if proc.popen.poll() is None:
                proc.popen.wait(timeout=5)
        self.started.clear()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -------------------------------------------------------------------------------- CPU from /proc

def read_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from "state" on (index 0 = state, 1 = ppid, 11 = utime ...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def descendants(root: int) -> list[int]:
    """root and every live process below it (from /proc/*/stat parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None:
                children.setdefault(int(stat[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_by_process(root: int) -> dict[int, float]:
    """user+sys CPU seconds of root and each live descendant; key -1: what reaped children used
    (cutime/cstime of all of them), so that a worker that exited mid-round still counts."""
    seconds: dict[int, float] = {-1: 0.0}
    for pid in descendants(root):
        stat = read_stat(pid)
        if stat is not None:
            seconds[pid] = (int(stat[11]) + int(stat[12])) / CLK_TCK  # utime stime
            seconds[-1] += (int(stat[13]) + int(stat[14])) / CLK_TCK  # cutime cstime
    return seconds


def cpu_seconds(root: int) -> float:
    """user+sys CPU of root, its live descendants and its reaped children."""
    return sum(cpu_by_process(root).values())


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    """CPU used between two ``cpu_by_process`` readings, per pid (a pid born in between: all of it)."""
    return {pid: after[pid] - before.get(pid, 0.0) for pid in after}


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


# ------------------------------------------------------------------------------------ readiness

def wait_until(what: str, check: Callable[[], bool], proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if check():
            return
        time.sleep(0.05)  # polling another process's readiness: no event to wait on
    raise BenchError(f"{what} not ready after {timeout:.0f}s:\n{proc.tail()}")


def _context(url: str) -> ssl.SSLContext | None:
    return ssl._create_unverified_context() if url.startswith("https:") else None  # self-signed


def fetch(url: str, data: bytes | None = None, timeout: float = 5) -> tuple[int, bytes] | None:
    """(status, body) of one GET (or POST of ``data``); None when it cannot be had."""
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=_context(url)) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return None


def http_ok(url: str, expect_body: str | None = None) -> bool:
    got = fetch(url, timeout=2)
    return got is not None and got[0] == 200 and (expect_body is None or got[1].decode() == expect_body)


def tls_version(url: str) -> str:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384' as Python's ssl negotiates it with the server at url."""
    host, _, port = url.split("/")[2].rpartition(":")
    context = ssl._create_unverified_context()
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="bench.test") as tls:
        cipher = tls.cipher()
        return f"{tls.version()} {cipher[0] if cipher else '?'}"


def h2_ok(url: str, tls: bool) -> bool:
    """One HTTP/2 request with h2load succeeds (h2c prior knowledge, or ALPN h2 over TLS)."""
    h2load = find_tool("h2load")
    if h2load is None:
        return False
    done = subprocess.run([h2load, "-n", "1", "-c", "1", url], capture_output=True, text=True,
                          timeout=20, check=False)
    return "1 succeeded" in done.stdout and (not tls or "Application protocol: h2" in done.stdout)
