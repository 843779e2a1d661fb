"""Profiles of one fastingress worker under load, and their "top costs" summary.

Two profilers:
* py-spy (default): ``py-spy record --pid WORKER --function --format speedscope`` attached to the one
  worker for each measured round (not the warm-up).  It samples from outside the process (ptrace:
  root or CAP_SYS_PTRACE), 100 times a second by default, and leaves out idle samples (the worker
  waiting in epoll), so the shares below are shares of the worker's CPU time.  The .speedscope.json
  files open in https://www.speedscope.app.
* cProfile: the worker runs as ``python -m cProfile -o worker.pstats -m workers`` (fastingress's
  ``--worker-command``); the file is written when the worker exits at the end.  Deterministic and
  complete, but it slows the worker down several times and includes start-up and warm-up.

The summary names the functions with the most own ("self") time, the most inclusive time, and the
share of each package or module (h11, trio, workers.proxy, stdlib ssl ...).
"""

from __future__ import annotations

import io
import json
import pstats
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .procs import REPO, BenchError

OWN_PACKAGES = ("workers", "fastingress")  # shown per module: workers.proxy, workers.http1 ...


def find_py_spy() -> str:
    for candidate in (Path(sys.executable).parent / "py-spy", REPO / ".venv" / "bin" / "py-spy"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("py-spy")
    if found is None:
        raise BenchError("py-spy not found: .venv/bin/pip install -e '.[bench]' (or --profiler cprofile)")
    return found


def python_of(executable: str) -> str:
    """The interpreter a console script (``fastingress``) runs with: its venv's python or its #! line."""
    sibling = Path(executable).parent / "python"
    if sibling.exists():
        return str(sibling)
    with Path(executable).open("rb") as script:
        first = script.readline().decode(errors="replace").strip()
    if first.startswith("#!"):
        return shlex.split(first[2:])[0]
    return sys.executable


def cprofile_worker_command(fastingress: str, out: Path) -> str:
    """fastingress --worker-command value: the worker under cProfile, writing out/worker.pstats."""
    return shlex.join([python_of(fastingress), "-m", "cProfile", "-o", str(out / "worker.pstats"),
                       "-m", "workers"])


# ----------------------------------------------------------------------------------------- py-spy

@dataclass
class PySpy:
    """py-spy recordings of one process, one per measured round."""

    binary: str
    out: Path
    rate: int
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    running: subprocess.Popen[str] | None = None

    def start(self, pid: int, round_no: int, duration: float) -> None:
        path = self.out / f"round-{round_no}.speedscope.json"
        argv = [self.binary, "record", "--pid", str(pid), "--duration", str(max(1, round(duration))),
                "--rate", str(self.rate), "--function", "--format", "speedscope", "--output", str(path)]
        self.running = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.files.append(path)
        self.seconds += max(1, round(duration))

    def finish(self) -> None:
        proc, self.running = self.running, None
        if proc is None:
            return
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        if proc.returncode != 0 or not self.files[-1].exists():
            hint = ""
            if "python version" in output:
                hint = " (py-spy 0.4.3 cannot read this interpreter; py-spy 0.4.2 can)"
            elif "ermission" in output:
                hint = " (py-spy needs root or CAP_SYS_PTRACE; or use --profiler cprofile)"
            raise BenchError(f"py-spy failed ({proc.returncode}){hint}:\n{output.strip()[-2000:]}")


def short_file(file: str) -> str:
    """A source path as import sees it: 'h11/_readers.py', 'workers/proxy.py', 'threading.py'."""
    path = file.replace("\\", "/")
    if path.startswith("<"):
        return path
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return path.split(marker, 1)[1]
    parts = path.split("/")
    for index, part in enumerate(parts[:-1]):
        if part in OWN_PACKAGES:  # this checkout's, or another one's (--fastingress)
            return "/".join(parts[index:])
    stdlib = re.search(r"/lib/python3\.\d+/(.+)", path)
    return stdlib[1] if stdlib else path


def package_of(file: str) -> str:
    """'h11/_readers.py' -> 'h11', 'workers/proxy.py' -> 'workers.proxy', 'threading.py' -> 'threading'."""
    short = short_file(file)
    if short.startswith("<"):
        return short
    parts = short.split("/")
    if parts[0] in OWN_PACKAGES and len(parts) > 1:
        return f"{parts[0]}.{parts[1].removesuffix('.py')}"
    return parts[0].removesuffix(".py") if parts[0] else short


def frame_label(frame: dict[str, object]) -> str:
    return f"{frame.get('name', '?')} ({short_file(str(frame.get('file', '?')))}:{frame.get('line', '?')})"


@dataclass
class Tally:
    """Sample counts: own (leaf frame) and inclusive (anywhere in the stack), by function and package."""

    samples: int = 0
    own: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    package_own: Counter[str] = field(default_factory=Counter)
    package_inclusive: Counter[str] = field(default_factory=Counter)

    def add(self, stack: list[dict[str, object]]) -> None:
        self.samples += 1
        leaf = stack[-1]
        self.own[frame_label(leaf)] += 1
        self.package_own[package_of(str(leaf.get("file", "?")))] += 1
        for label in {frame_label(frame) for frame in stack}:
            self.inclusive[label] += 1
        for package in {package_of(str(frame.get("file", "?"))) for frame in stack}:
            self.package_inclusive[package] += 1


def summarise_speedscope(files: list[Path], seconds: float, rate: int, top: int = 25) -> str:
    """The top costs of the worker's main thread (where its event loop runs), from py-spy's files;
    the other threads (trio's thread cache ...) are only counted."""
    main = Tally()
    per_thread: Counter[str] = Counter()
    for path in files:
        data = json.loads(path.read_text())
        frames = data["shared"]["frames"]
        for profile in data["profiles"]:  # one per thread
            thread = str(profile.get("name", "?"))
            name = re.sub(r"^Thread \d+ ", "", thread).strip('"')
            for stack in profile["samples"]:  # frame indexes, outermost first
                if stack:
                    per_thread[name] += 1
                    if "MainThread" in thread:
                        main.add([frames[i] for i in stack])
    if not main.samples:
        return f"py-spy: no samples of the main thread (threads seen: {dict(per_thread) or 'none'})\n"
    out = io.StringIO()
    expected = seconds * rate
    out.write(f"py-spy: {main.samples} samples of the worker's main thread at {rate} Hz over {seconds:g} s "
              f"of load: on CPU about {main.samples / expected:.0%} of that time (idle samples are left "
              "out, so the shares below are shares of its CPU time)\n")
    others = {name: count for name, count in per_thread.items() if name != "MainThread"}
    if others:
        listed = ", ".join(f"{name} {count}" for name, count in sorted(others.items()))
        out.write(f"samples of other threads, not below: {listed}\n")
    out.write("\n")
    shared = {"total": main.samples, "top": top}
    _table(out, "top functions by own time", first=main.own, second=main.inclusive, first_name="self",
           second_name="total", **shared)
    _table(out, "top functions by inclusive time", first=main.inclusive, second=main.own,
           first_name="total", second_name="self", **shared)
    _table(out, "by package / module", first=main.package_own, second=main.package_inclusive,
           first_name="self", second_name="incl.", **shared)
    return out.getvalue()


def _table(out: io.StringIO, title: str, *, first: Counter[str], second: Counter[str], total: int, top: int,
           first_name: str, second_name: str) -> None:
    out.write(f"{title}:\n  {first_name:>6} {second_name:>6}  function (file:line)\n"
              if "function" in title else f"{title}:\n  {first_name:>6} {second_name:>6}  name\n")
    for label, count in first.most_common(top):
        out.write(f"  {count / total:>6.1%} {second[label] / total:>6.1%}  {label}\n")
    out.write("\n")


# --------------------------------------------------------------------------------------- cProfile

def summarise_pstats(path: Path, top: int = 25) -> str:
    if not path.exists():
        return (f"cProfile: {path} was not written (the worker did not exit cleanly?)\n")
    stats = pstats.Stats(str(path))
    total = stats.total_tt  # type: ignore[attr-defined]
    package_own: Counter[str] = Counter()
    for (file, _line, _name), entry in stats.stats.items():  # type: ignore[attr-defined]
        name = "(C functions: socket calls, builtins)" if file == "~" else package_of(file)
        package_own[name] += entry[2]  # tottime
    out = io.StringIO()
    out.write(f"cProfile: {total:.2f} s of worker CPU in Python functions (start-up and warm-up included; "
              "cProfile slows the worker several times: use the shares, not the absolute times)\n\n")
    out.write("by package / module (own time):\n")
    for package, seconds in package_own.most_common(top):
        out.write(f"  {seconds / total:>6.1%}  {package}\n")
    out.write("\n")
    for key in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(str(path), stream=text).sort_stats(key).print_stats(top)
        body = text.getvalue()
        start = body.find("   ncalls")
        out.write(f"top functions by {key}:\n{body[start:] if start >= 0 else body}\n")
    return out.getvalue()
