"""Per-worker counters: cheap dict increments on the request path, a WorkerStats on demand."""

from __future__ import annotations

import bisect
import os

from workers.config import DURATION_BUCKETS, RequestCount, TLSCount, WorkerStats

_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


class Metrics:
    __slots__ = (
        "_buckets",
        "active_connections",
        "duration_count",
        "duration_sum",
        "requests",
        "snapshot_errors",
        "spliced_bodies",
        "spliced_bytes",
        "tls",
        "tls_errors",
        "tls_passthrough",
        "tls_resumed",
        "upstream_errors",
    )

    def __init__(self) -> None:
        # (status class, host, ingress, service) -> count
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self._buckets = [0] * (len(DURATION_BUCKETS) + 1)  # per bucket, not cumulative
        self.duration_sum = 0.0
        self.duration_count = 0
        self.snapshot_errors = 0
        self.upstream_errors = 0
        self.active_connections = 0
        self.tls: dict[tuple[str, str], int] = {}  # (version, alpn) -> handshakes
        self.tls_errors = 0
        self.tls_resumed = 0
        self.tls_passthrough = 0
        self.spliced_bodies = 0
        self.spliced_bytes = 0

    def observe_tls(self, version: str, alpn: str, resumed: bool) -> None:
        key = (version, alpn)
        self.tls[key] = self.tls.get(key, 0) + 1
        if resumed:
            self.tls_resumed += 1

    def observe(self, status: int, host: str, ingress: str, service: str, duration: float) -> None:
        key = (_STATUS_CLASS.get(status // 100, "5xx"), host, ingress, service)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        self._buckets[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        self.duration_sum += duration
        self.duration_count += 1

    def stats(self, index: int, generation: int, draining: bool) -> WorkerStats:
        cumulative: list[int] = []
        total = 0
        for n in self._buckets:
            total += n
            cumulative.append(total)
        return WorkerStats(
            index=index,
            pid=os.getpid(),
            generation=generation,
            requests=tuple(
                RequestCount(status_class=k[0], host=k[1], ingress=k[2], service=k[3], count=v)
                for k, v in sorted(self.requests.items())
            ),
            duration_buckets=tuple(cumulative),
            duration_sum=self.duration_sum,
            duration_count=self.duration_count,
            snapshot_errors=self.snapshot_errors,
            upstream_errors=self.upstream_errors,
            active_connections=self.active_connections,
            draining=draining,
            tls_handshakes=tuple(TLSCount(k[0], k[1], v) for k, v in sorted(self.tls.items())),
            tls_handshake_errors=self.tls_errors,
            tls_resumed=self.tls_resumed,
            tls_passthrough=self.tls_passthrough,
            spliced_bodies=self.spliced_bodies,
            spliced_bytes=self.spliced_bytes,
        )
