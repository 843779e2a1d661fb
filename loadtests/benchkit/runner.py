"""One benchmark run: start the upstream and both proxies, check them, load them in turn, stop them.

Every process runs in a temporary directory with free ports on 127.0.0.1, each in a process group of
its own, and all are stopped at the end, on Ctrl-C and on SIGTERM.  The rounds are interleaved
(fastingress, nginx, fastingress, ...) so that drift on the machine hits both alike.  CPU per request
is the user+sys time of the proxy's own processes (read from /proc before and after each round)
divided by the requests the client completed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import configs
from .configs import DEFAULT_MAX_BODY, UPLOAD_ANSWER, UPSTREAM_BODY
from .load import PROTOCOLS, Load, parse_load, run_load
from .procs import (
    REPO,
    BenchError,
    Proc,
    Procs,
    cmdline,
    cpu_by_process,
    cpu_delta,
    ensure_tools,
    fetch,
    find_fastingress,
    free_port,
    h2_ok,
    http_ok,
    sigterm_as_interrupt,
    tls_version,
    wait_until,
)
from .profiling import PySpy, cprofile_worker_command, find_py_spy, summarise_pstats, summarise_speedscope

TARGETS = ("fastingress", "nginx")


@dataclass
class Result:
    target: str
    round: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_s: float

    @property
    def cpu_us_per_req(self) -> float:
        return self.cpu_s / self.requests * 1e6 if self.requests else float("nan")


@dataclass
class Target:
    name: str
    root: int  # pid of the process every other one of this proxy descends from
    url: str
    labels: dict[int, str] = field(default_factory=dict)  # pid -> "worker 0", "master" ...
    cpu: dict[int, float] = field(default_factory=lambda: defaultdict(float))  # pid -> seconds, all rounds


@dataclass
class Outcome:
    """What one run measured (or why it could not)."""

    label: str
    command: str
    load: str = ""
    results: list[Result] = field(default_factory=list)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    ratio: dict[str, float] = field(default_factory=dict)
    cpu_split: dict[str, dict[str, float]] = field(default_factory=dict)  # target -> process -> share
    tls: dict[str, str] = field(default_factory=dict)
    profile: str = ""
    error: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "label": self.label, "command": self.command, "load": self.load, "error": self.error,
            "rounds": [asdict(r) | {"cpu_us_per_req": r.cpu_us_per_req} for r in self.results],
            "summary": self.summary, "ratio": self.ratio, "cpu_by_process": self.cpu_split,
            "tls": self.tls, "profile": self.profile,
        }


# ------------------------------------------------------------------------------------ the setup

@dataclass
class Setup:
    """Per-run choices derived from the command line."""

    load: Load
    max_body: int
    expect: Callable[[bytes], bool]  # is this the body a request of the load gets?
    upload: bytes | None  # the body a check POSTs


def make_setup(args: argparse.Namespace, workdir: Path) -> Setup:
    protocol = PROTOCOLS[args.protocol]
    path, script, data, upload = "/", None, None, None
    expect: Callable[[bytes], bool] = UPSTREAM_BODY.encode().__eq__
    if args.body is not None:
        path = configs.body_file(workdir, args.body)
        expect = lambda body: len(body) == args.body  # noqa: E731
    if args.upload is not None:
        path = "/upload"
        script, data = configs.upload_files(workdir, args.upload)
        upload = data.read_bytes()
        expect = lambda body: upstream_read_all(body, args.upload)  # noqa: E731
    load = Load(protocol, args.connections, args.threads, args.streams, path, script, data)
    return Setup(load, max(DEFAULT_MAX_BODY, args.upload or 0), expect, upload)


def upstream_read_all(answer: bytes, size: int) -> bool:
    """The upstream says it read at least the body's size (its count includes the request head)."""
    match = UPLOAD_ANSWER.fullmatch(answer)
    return match is not None and int(match[1]) >= size


def answers_right(url: str, setup: Setup) -> bool:
    """One request like the load's gets the expected answer."""
    got = fetch(url, data=setup.upload, timeout=5)
    return got is not None and got[0] == 200 and setup.expect(got[1])


def target_ready(name: str, url: str, setup: Setup) -> bool:
    """The proxy at url answers the load's request: over HTTP/1.1 where it can (body checked), and
    with h2load -n1 when the load is HTTP/2 (ALPN h2 checked over TLS)."""
    protocol = setup.load.protocol
    h2c_only = protocol.h2 and not protocol.tls and name == "nginx"  # nginx's h2c port is h2c only
    if not h2c_only and not answers_right(url, setup):
        return False
    return not protocol.h2 or h2_ok(url, tls=protocol.tls)


def wait_answering(name: str, url: str, setup: Setup, proc: Proc) -> None:
    try:
        wait_until(f"{name} at {url}", lambda: target_ready(name, url, setup), proc, 30)
    except BenchError as exc:
        got = fetch(url, data=setup.upload)
        seen = "no answer" if got is None else f"{got[0]}, {len(got[1])} bytes: {got[1][:80]!r}"
        raise BenchError(f"{exc}\nlast HTTP/1.1 answer: {seen}") from None


def start_all(args: argparse.Namespace, procs: Procs, workdir: Path, nginx: str,
              setup: Setup) -> list[Target]:
    """Start upstream, fastingress and nginx; the targets once every one answers the load's request."""
    upstream_port = free_port()
    (workdir / "files").mkdir(exist_ok=True)
    conf = configs.nginx_conf(workdir, "upstream", args.upstream_workers,
                              configs.upstream_server(upstream_port, workdir / "files"))
    upstream = procs.start("upstream nginx", configs.nginx_argv(nginx, workdir, conf),
                           workdir / "upstream.log")
    wait_until("upstream nginx", lambda: http_ok(f"http://127.0.0.1:{upstream_port}/", UPSTREAM_BODY),
               upstream, 20)
    protocol = setup.load.protocol
    tls = configs.tls_files(workdir) if protocol.tls else None
    targets: list[Target] = []
    if args.only != "nginx":
        targets.append(start_fastingress(args, procs, workdir, upstream_port=upstream_port, setup=setup,
                                         tls=tls))
    if args.only != "fastingress":
        port = free_port()
        server = configs.proxy_server(port, upstream_port, http2=protocol.h2, tls=tls,
                                      max_body=setup.max_body, overrides=tuple(args.nginx_set))
        conf = configs.nginx_conf(workdir, "proxy", args.workers, server)
        proxy = procs.start("nginx proxy", configs.nginx_argv(nginx, workdir, conf), workdir / "proxy.log")
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}{setup.load.path}"
        wait_answering("nginx", url, setup, proxy)
        targets.append(Target("nginx", proxy.popen.pid, url))
    return targets


def start_fastingress(args: argparse.Namespace, procs: Procs, workdir: Path, *, upstream_port: int,
                      setup: Setup, tls: tuple[Path, Path] | None) -> Target:
    binary = find_fastingress(args.fastingress)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60, check=False)
    print(f"bench: {binary}: {version.stdout.strip() or version.stderr.strip()}", file=sys.stderr)
    http_port, admin_port = free_port(), free_port()
    https_port = free_port() if tls is not None else 0
    manifests = configs.fastingress_manifests(workdir, upstream_port, setup.max_body)
    argv = [binary, "standalone", "--manifests", str(manifests), "--http-port", str(http_port),
            "--https-port", str(https_port), "--admin-port", str(admin_port), "--workers", str(args.workers),
            "--bind", "127.0.0.1", "--admin-bind", "127.0.0.1", "--grace-period", "1"]
    if tls is not None:  # the same certificate as nginx's, as --default-ssl-certificate
        configs.fastingress_tls_secret(manifests, *tls)
        argv += ["--default-ssl-certificate", "bench/tls"]
    if args.profile is not None and args.profiler == "cprofile":
        argv += ["--worker-command", cprofile_worker_command(binary, args.profile)]
    fi = procs.start("fastingress", argv, workdir / "fastingress.log")
    admin = f"http://127.0.0.1:{admin_port}"
    wait_until("fastingress /readyz", lambda: http_ok(f"{admin}/readyz"), fi, 60)
    port, scheme = (https_port, "https") if tls is not None else (http_port, "http")
    url = f"{scheme}://127.0.0.1:{port}{setup.load.path}"
    wait_answering("fastingress", url, setup, fi)
    return Target("fastingress", fi.popen.pid, url, labels=fastingress_labels(admin, fi.popen.pid))


def fastingress_labels(admin: str, root: int) -> dict[int, str]:
    """pid -> role, from the admin /status (workers, standby) and the supervisor's pid."""
    labels = {root: f"supervisor (pid {root})"}
    got = fetch(f"{admin}/status")
    if got is not None and got[0] == 200:
        status = json.loads(got[1])
        for worker in status.get("workers", []):
            if worker.get("pid"):
                labels[int(worker["pid"])] = f"worker {worker.get('index', '?')} (pid {worker['pid']})"
        standby = status.get("standby", {}).get("pid")
        if standby:
            labels[int(standby)] = f"standby (pid {standby})"
    return labels


def process_label(target: Target, pid: int) -> str:
    if pid == -1:
        return "exited processes"
    if pid in target.labels:
        return target.labels[pid]
    line = cmdline(pid)
    if line.startswith("nginx: "):
        return f"{line.removeprefix('nginx: ').split(' process')[0]} (pid {pid})"
    return f"{line[:40] or '?'} (pid {pid})"


# -------------------------------------------------------------------------------------- a round

def measure(target: Target, round_no: int, *, tool: str, setup: Setup, args: argparse.Namespace,
            workdir: Path, spy: PySpy | None) -> Result:
    log = workdir / f"h2load-{target.name}-{round_no}.log" if setup.load.protocol.h2 else None
    before = cpu_by_process(target.root)
    if spy is not None:
        spy.start(worker_pid(target), round_no, args.duration)
    try:
        output = run_load(tool, target.url, setup.load, args.duration, log)
    finally:
        if spy is not None:
            spy.finish()
    used = cpu_delta(before, cpu_by_process(target.root))
    for pid, seconds in used.items():
        target.cpu[pid] += seconds
        if pid not in target.labels:  # named now: by the time the table is printed it is gone
            target.labels[pid] = process_label(target, pid)
    f = parse_load(setup.load, output, log)
    if log is not None:
        log.unlink(missing_ok=True)
    return Result(target=target.name, round=round_no, requests=int(f["requests"]), seconds=f["seconds"],
                  rps=f["rps"], p50_ms=f["p50_ms"], p99_ms=f["p99_ms"], errors=int(f["errors"]),
                  cpu_s=sum(used.values()))


def worker_pid(target: Target) -> int:
    workers = [pid for pid, label in target.labels.items() if label.startswith("worker")]
    if len(workers) != 1:
        raise BenchError(f"profiling needs exactly one fastingress worker; /status lists {len(workers)}")
    return workers[0]


def summarise(results: list[Result]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for target in TARGETS:
        mine = [r for r in results if r.target == target]
        if not mine:
            continue
        summary[target] = {
            "rps": statistics.median(r.rps for r in mine),
            "p50_ms": statistics.median(r.p50_ms for r in mine),
            "p99_ms": statistics.median(r.p99_ms for r in mine),
            "cpu_us_per_req": sum(r.cpu_s for r in mine) / max(1, sum(r.requests for r in mine)) * 1e6,
            "requests": float(sum(r.requests for r in mine)),
            "errors": float(sum(r.errors for r in mine)),
        }
    return summary


def ratios(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    if len(summary) != len(TARGETS):
        return {}
    fi, ng = summary["fastingress"], summary["nginx"]
    return {key: (fi[key] / ng[key] if ng[key] else float("nan"))
            for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}


def cpu_split(target: Target) -> dict[str, float]:
    total = sum(target.cpu.values())
    return {process_label(target, pid): seconds / total if total else 0.0
            for pid, seconds in sorted(target.cpu.items(), key=lambda item: -item[1])}


# ------------------------------------------------------------------------------------------- run

def run_case(args: argparse.Namespace, label: str, command: str) -> Outcome:
    """Everything for one line: start, warm up, interleaved rounds, stop; never leaves a process."""
    protocol = PROTOCOLS[args.protocol]
    tools = ensure_tools(("nginx", "h2load") if protocol.h2 else ("nginx", "wrk"))
    tool = tools["h2load"] if protocol.h2 else tools["wrk"]
    spy = None
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        if args.profiler == "py-spy":
            spy = PySpy(find_py_spy(), args.profile, args.profile_rate)
    outcome = Outcome(label, command)
    procs = Procs()
    workdir = Path(tempfile.mkdtemp(prefix="fastingress-bench-"))
    targets: list[Target] = []
    try:
        with sigterm_as_interrupt():
            setup = make_setup(args, workdir)
            outcome.load = setup.load.describe(args.duration)
            targets = start_all(args, procs, workdir, tools["nginx"], setup)
            if protocol.tls:
                outcome.tls = {t.name: tls_version(t.url) for t in targets}
            print(f"bench: {label}: {', '.join(f'{t.name} {t.url}' for t in targets)}; workdir {workdir}",
                  file=sys.stderr)
            for target in targets:
                if args.warmup > 0:
                    run_load(tool, target.url, setup.load, args.warmup)
            for round_no in range(1, args.rounds + 1):
                for target in targets:  # interleaved: A B A B ...
                    print(f"bench: round {round_no}/{args.rounds} {target.name} ...", file=sys.stderr)
                    mine = spy if target.name == "fastingress" else None
                    outcome.results.append(measure(target, round_no, tool=tool, setup=setup, args=args,
                                                   workdir=workdir, spy=mine))
    finally:
        procs.stop_all()  # also on Ctrl-C / SIGTERM (KeyboardInterrupt) and on BenchError
        if args.keep:
            print(f"bench: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    outcome.summary = summarise(outcome.results)
    outcome.ratio = ratios(outcome.summary)
    outcome.cpu_split = {t.name: cpu_split(t) for t in targets}
    if args.profile is not None:
        outcome.profile = write_profile(args, spy)
    return outcome


def write_profile(args: argparse.Namespace, spy: PySpy | None) -> str:
    out: Path = args.profile
    if spy is not None:
        text = summarise_speedscope(spy.files, spy.seconds, spy.rate)
        files = ", ".join(str(f) for f in spy.files)
        text += f"speedscope files (open in https://www.speedscope.app): {files}\n"
    else:
        text = summarise_pstats(out / "worker.pstats")
        text += f"pstats file: {out / 'worker.pstats'} (python -m pstats)\n"
    (out / "top.txt").write_text(text)
    return text


def default_profile_dir() -> Path:
    return REPO / "loadtests" / "results" / time.strftime("profile-%Y%m%d-%H%M%S")
