"""The load generators: wrk (HTTP/1.1, plain or TLS) and h2load (HTTP/2), and what they print."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .procs import BenchError


@dataclass(frozen=True)
class Protocol:
    name: str
    tls: bool  # the client speaks TLS to the proxy
    close: bool  # Connection: close: every request on a new connection
    h2: bool  # HTTP/2 with h2load (else HTTP/1.1 with wrk)
    about: str


PROTOCOLS = {p.name: p for p in (
    Protocol("http1", tls=False, close=False, h2=False, about="wrk, HTTP/1.1 keep-alive (default)"),
    Protocol("http-close", tls=False, close=True, h2=False,
             about='wrk -H "Connection: close": a new TCP connection per request'),
    Protocol("tls", tls=True, close=False, h2=False,
             about="wrk over HTTPS, keep-alive (HTTP/1.1 over TLS 1.3)"),
    Protocol("tls-handshake", tls=True, close=True, h2=False,
             about='wrk over HTTPS with "Connection: close": a full TLS handshake per request'),
    Protocol("h2c", tls=False, close=False, h2=True, about="h2load, HTTP/2 with prior knowledge (cleartext)"),
    Protocol("h2", tls=True, close=False, h2=True, about="h2load over TLS, ALPN h2"),
)}


@dataclass(frozen=True)
class Load:
    """One load: which client, how many connections, which path, what body to send."""

    protocol: Protocol
    connections: int
    threads: int
    streams: int  # h2load -m
    path: str = "/"
    upload_script: Path | None = None  # wrk -s (POST)
    upload_data: Path | None = None  # h2load -d (POST)

    def describe(self, duration: float) -> str:
        if self.protocol.h2:
            return (f"h2load ({self.protocol.name}) -t{self.threads} -c{self.connections} -m{self.streams} "
                    f"-D{duration:g}")
        close = ' -H "Connection: close"' if self.protocol.close else ""
        return f"wrk{close} -t{self.threads} -c{self.connections} -d{duration:g}s"


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_latency(text: str) -> float:
    """'1.23ms' -> 1.23 (milliseconds)."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not match:
        raise BenchError(f"cannot parse latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


# ------------------------------------------------------------------------------------------- wrk

def wrk_argv(wrk: str, url: str, load: Load, duration: float) -> list[str]:
    argv = [wrk, "--latency", "-t", str(load.threads), "-c", str(load.connections), "-d", f"{duration:g}s",
            "--timeout", "5s"]
    if load.protocol.close:  # every request on a new connection (and over TLS a full handshake)
        argv += ["-H", "Connection: close"]
    if load.upload_script is not None:
        argv += ["-s", str(load.upload_script)]
    return [*argv, url]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests, duration, req/s, p50/p99 (ms) and errors from ``wrk --latency`` output."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (total and rps and p50 and p99):
        raise BenchError(f"unexpected wrk output:\n{output}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx[1])
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sock:
        errors += sum(int(value) for value in sock.groups())
    return {
        "requests": int(total[1]),
        "seconds": parse_latency(total[2] + total[3]) / 1e3,
        "rps": float(rps[1]),
        "p50_ms": parse_latency(p50[1]),
        "p99_ms": parse_latency(p99[1]),
        "errors": errors,
    }


# ---------------------------------------------------------------------------------------- h2load

def h2load_argv(h2load: str, url: str, load: Load, duration: float, log_file: Path | None) -> list[str]:
    argv = [h2load, "-c", str(load.connections), "-t", str(load.threads), "-m", str(load.streams),
            "-D", f"{duration:g}", "-T", "5"]
    if load.upload_data is not None:
        argv += ["-d", str(load.upload_data)]
    if log_file is not None:  # one line per request: start, status, microseconds (for percentiles)
        argv += ["--log-file", str(log_file)]
    return [*argv, url]


def parse_h2load(output: str) -> dict[str, float]:
    """Like ``parse_wrk``, from h2load's summary.  h2load prints no percentiles: p50_ms gets its mean
    time for request and p99_ms its maximum, unless ``h2load_percentiles`` replaces them."""
    finished = re.search(r"finished in ([\d.]+)(us|ms|s|m), ([\d.]+) req/s", output)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored, (\d+) timeout", output)
    timing = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", output)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    if not (finished and done and timing and codes):
        raise BenchError(f"unexpected h2load output:\n{output}")
    return {
        "requests": int(done[1]),
        "seconds": parse_latency(finished[1] + finished[2]) / 1e3,
        "rps": float(finished[3]),
        "p50_ms": parse_latency(timing[3]),
        "p99_ms": parse_latency(timing[2]),
        "errors": int(done[3]) + int(done[4]) + int(done[5]) + int(codes[3]) + int(codes[4]),
    }


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, -(-len(sorted_values) * fraction // 1))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def h2load_percentiles(log_file: Path) -> tuple[float, float] | None:
    """(p50, p99) in ms from ``h2load --log-file`` (start µs, status, duration µs per request)."""
    try:
        lines = log_file.read_text().splitlines()
    except OSError:
        return None
    durations = sorted(float(fields[2]) / 1e3 for line in lines if len(fields := line.split("\t")) >= 3)
    if not durations:
        return None
    return percentile(durations, 0.50), percentile(durations, 0.99)


# ------------------------------------------------------------------------------------------ runs

def run_load(tool: str, url: str, load: Load, duration: float, log_file: Path | None = None) -> str:
    """Run wrk or h2load (``tool`` is the matching executable) for ``duration`` s; its stdout."""
    if load.protocol.h2:
        argv = h2load_argv(tool, url, load, duration, log_file)
    else:
        argv = wrk_argv(tool, url, load, duration)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise BenchError(f"{Path(tool).name} failed ({done.returncode}): "
                         f"{done.stderr.strip() or done.stdout.strip()}")
    if load.protocol.h2 and load.protocol.tls and "Application protocol: h2" not in done.stdout:
        raise BenchError(f"h2load did not negotiate h2 with {url}:\n{done.stdout}")
    return done.stdout


def parse_load(load: Load, output: str, log_file: Path | None = None) -> dict[str, float]:
    if not load.protocol.h2:
        return parse_wrk(output)
    figures = parse_h2load(output)
    found = h2load_percentiles(log_file) if log_file is not None else None
    if found is not None:
        figures["p50_ms"], figures["p99_ms"] = found
    return figures
