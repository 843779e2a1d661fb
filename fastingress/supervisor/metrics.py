"""Pure functions behind /metrics, /readyz and /status: worker stats in, text/verdicts out.

Counters from workers restart at zero when a worker process is replaced.  To keep the
aggregated counters monotonic, the supervisor folds the last stats it saw from a worker
that exited into a ``Totals`` of retired workers (requests served after that last scrape
are lost, which Prometheus tolerates as it would a counter reset).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from workers.config import DURATION_BUCKETS, WorkerStats

RequestKey = tuple[str, str, str, str]  # status_class, host, ingress, service


@dataclass
class Totals:
    """Summed counters of some set of workers (mutable; owned by one supervisor)."""

    requests: dict[RequestKey, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0
    duration_count: int = 0
    upstream_errors: int = 0
    snapshot_errors: int = 0
    tls: dict[tuple[str, str], int] = field(default_factory=dict)  # (version, alpn) -> handshakes
    tls_errors: int = 0
    tls_resumed: int = 0
    tls_passthrough: int = 0
    spliced_bodies: int = 0
    spliced_bytes: int = 0

    def add(self, stats: WorkerStats) -> None:
        for rc in stats.requests:
            key = (rc.status_class, rc.host, rc.ingress, rc.service)
            self.requests[key] = self.requests.get(key, 0) + rc.count
        if len(stats.duration_buckets) == len(self.buckets):
            for i, count in enumerate(stats.duration_buckets):
                self.buckets[i] += count
            self.duration_sum += stats.duration_sum
            self.duration_count += stats.duration_count
        self.upstream_errors += stats.upstream_errors
        self.snapshot_errors += stats.snapshot_errors
        for tc in stats.tls_handshakes:
            self.tls[(tc.version, tc.alpn)] = self.tls.get((tc.version, tc.alpn), 0) + tc.count
        self.tls_errors += stats.tls_handshake_errors
        self.tls_resumed += stats.tls_resumed
        self.tls_passthrough += stats.tls_passthrough
        self.spliced_bodies += stats.spliced_bodies
        self.spliced_bytes += stats.spliced_bytes

    def merged(self, others: Iterable[WorkerStats]) -> Totals:
        out = Totals(
            requests=dict(self.requests),
            buckets=list(self.buckets),
            duration_sum=self.duration_sum,
            duration_count=self.duration_count,
            upstream_errors=self.upstream_errors,
            snapshot_errors=self.snapshot_errors,
            tls=dict(self.tls),
            tls_errors=self.tls_errors,
            tls_resumed=self.tls_resumed,
            tls_passthrough=self.tls_passthrough,
            spliced_bodies=self.spliced_bodies,
            spliced_bytes=self.spliced_bytes,
        )
        for stats in others:
            out.add(stats)
        return out


@dataclass(frozen=True, slots=True)
class WorkerView:
    index: int
    pid: int | None  # None: the slot has no running process right now
    stats: WorkerStats | None  # None: not running, or its stats socket did not answer
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class SupervisorView:
    generation: int  # published
    workers: tuple[WorkerView, ...]
    config_errors: int = 0
    reload_failures: int = 0
    last_reload_ok: bool = True  # every input of the last (re)load is in force
    last_reload_time: float = 0.0  # unix time of the last load that was entirely in force

    @property
    def live(self) -> tuple[WorkerView, ...]:
        return tuple(w for w in self.workers if w.pid is not None)

    @property
    def restarts(self) -> int:
        return sum(w.restarts for w in self.workers)


def readiness(view: SupervisorView) -> tuple[bool, str]:
    """Ready once every live worker serves a snapshot (generation >= 1)."""
    if view.generation < 1:
        return False, "no snapshot published yet"
    live = view.live
    if not live:
        return False, "no worker running"
    for worker in live:
        if worker.stats is None:
            return False, f"worker {worker.index} (pid {worker.pid}) did not report its stats"
        if worker.stats.generation < 1:
            return False, f"worker {worker.index} (pid {worker.pid}) has no snapshot yet"
    return True, f"{len(live)} workers ready"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def render_metrics(view: SupervisorView, totals: Totals) -> str:
    """Prometheus text exposition format (version 0.0.4)."""
    out: list[str] = []
    name = "fastingress_requests_total"
    _family(out, name, "counter", "Requests answered, by status class, virtual host, Ingress and Service.")
    for (status_class, host, ingress, service), count in sorted(totals.requests.items()):
        labels = _labels(
            [("status_class", status_class), ("host", host), ("ingress", ingress), ("service", service)]
        )
        out.append(f"{name}{labels} {count}")

    name = "fastingress_request_duration_seconds"
    _family(out, name, "histogram", "Time from request head to end of response.")
    bounds = [*(_number(b) for b in DURATION_BUCKETS), "+Inf"]
    for bound, count in zip(bounds, totals.buckets, strict=True):
        out.append(f'{name}_bucket{{le="{bound}"}} {count}')
    out.append(f"{name}_sum {_number(totals.duration_sum)}")
    out.append(f"{name}_count {totals.duration_count}")

    _family(out, "fastingress_snapshot_generation", "gauge", "Generation of the last published snapshot.")
    out.append(f"fastingress_snapshot_generation {view.generation}")

    name = "fastingress_worker_snapshot_generation"
    _family(out, name, "gauge", "Snapshot generation each live worker serves (0 = none yet).")
    for worker in view.live:
        if worker.stats is not None:
            out.append(f"{name}{_labels([('worker', str(worker.index))])} {worker.stats.generation}")

    _family(out, "fastingress_config_errors", "gauge", "Error diagnostics in the configuration in force.")
    out.append(f"fastingress_config_errors {view.config_errors}")
    _family(
        out, "fastingress_config_reload_failures_total", "counter", "Reloads that failed (previous kept)."
    )
    out.append(f"fastingress_config_reload_failures_total {view.reload_failures}")
    name = "fastingress_config_last_reload_successful"
    _family(out, name, "gauge", "1 if the last reload put every input in force, 0 if one is held back.")
    out.append(f"{name} {int(view.last_reload_ok)}")
    name = "fastingress_config_last_reload_successful_timestamp_seconds"
    _family(out, name, "gauge", "Unix time of the last reload that put every input in force.")
    out.append(f"{name} {_number(round(view.last_reload_time, 3))}")

    _family(out, "fastingress_upstream_errors_total", "counter", "Connect/read failures towards upstreams.")
    out.append(f"fastingress_upstream_errors_total {totals.upstream_errors}")
    _family(out, "fastingress_snapshot_decode_errors_total", "counter", "Snapshots workers refused to load.")
    out.append(f"fastingress_snapshot_decode_errors_total {totals.snapshot_errors}")

    name = "fastingress_tls_handshakes_total"
    _family(out, name, "counter", "Completed TLS handshakes, by protocol version and ALPN protocol.")
    for (version, alpn), count in sorted(totals.tls.items()):
        out.append(f"{name}{_labels([('version', version), ('alpn', alpn)])} {count}")
    _family(out, "fastingress_tls_handshake_errors_total", "counter", "TLS handshakes failed or timed out.")
    out.append(f"fastingress_tls_handshake_errors_total {totals.tls_errors}")
    _family(out, "fastingress_tls_resumed_total", "counter", "TLS handshakes that resumed a session.")
    out.append(f"fastingress_tls_resumed_total {totals.tls_resumed}")
    _family(out, "fastingress_tls_passthrough_total", "counter", "Connections relayed by ssl-passthrough.")
    out.append(f"fastingress_tls_passthrough_total {totals.tls_passthrough}")
    _family(out, "fastingress_spliced_bodies_total", "counter",
            "Response bodies moved by splice(2) in the kernel, never copied through Python.")
    out.append(f"fastingress_spliced_bodies_total {totals.spliced_bodies}")
    _family(out, "fastingress_spliced_bytes_total", "counter", "Bytes of those bodies.")
    out.append(f"fastingress_spliced_bytes_total {totals.spliced_bytes}")

    _family(out, "fastingress_workers", "gauge", "Worker processes running.")
    out.append(f"fastingress_workers {len(view.live)}")
    _family(out, "fastingress_worker_restarts_total", "counter", "Worker processes restarted after an exit.")
    out.append(f"fastingress_worker_restarts_total {view.restarts}")
    return "\n".join(out) + "\n"
