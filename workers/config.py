"""The supervisor <-> worker contract (besides the snapshot itself).

* ``WorkerSettings`` is what the supervisor passes to ``python -m workers --settings JSON``.
* ``WorkerStats`` is what a worker answers on its stats socket (msgpack), which the
  supervisor's admin server aggregates into /readyz and /metrics.
"""

from __future__ import annotations

import msgspec


class WorkerSettings(msgspec.Struct, frozen=True):
    index: int  # 0..N-1, stable across restarts of the same slot
    shm_path: str  # the shared-memory snapshot segment (see fastingress.snapshot.shm)
    stats_socket: str  # unix socket path this worker serves WorkerStats on
    notify_fd: int = -1  # read end of a pipe; a byte arrives on each new generation
    bind: str = "0.0.0.0"
    http_port: int = 80
    https_port: int = 0  # 0 = no HTTPS listener (TLS lands with a later issue)
    grace_period: float = 30.0  # seconds in-flight requests get on SIGTERM
    log_level: str = "info"
    access_log: bool = False
    http1_codec: str = "llhttp"  # "llhttp": the event-driven core; "h11": the task-based reference path
    # -- issue 10 (appended) ------------------------------------------------------------
    parent_pid: int = 0  # the supervisor: the worker exits when it is gone (0: do not watch)
    # limits (issue 9): the replica's shared limit counters (fastingress.snapshot.limitshm);
    # "": counters private to this process
    limits_path: str = ""


class RequestCount(msgspec.Struct, frozen=True, array_like=True):
    status_class: str  # "2xx" .. "5xx"
    host: str  # matched virtual host name ("" catch-all, "-" none)
    ingress: str  # "namespace/name" or "-"
    service: str  # "namespace/name:port" or "-"
    count: int


# Upper bounds (seconds) of the request duration histogram, Prometheus-style (+Inf implied).
DURATION_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


class TLSCount(msgspec.Struct, frozen=True, array_like=True):
    version: str  # "TLSv1.2" / "TLSv1.3"
    alpn: str  # "h2", "http/1.1" or "-" (none negotiated)
    count: int


class WorkerStats(msgspec.Struct, frozen=True):
    index: int
    pid: int
    generation: int  # generation of the snapshot in force; 0 = none yet
    requests: tuple[RequestCount, ...] = ()
    duration_buckets: tuple[int, ...] = ()  # cumulative counts, len(DURATION_BUCKETS) + 1
    duration_sum: float = 0.0
    duration_count: int = 0
    snapshot_errors: int = 0  # snapshots refused (decode failures)
    upstream_errors: int = 0  # connect/read failures towards upstreams
    active_connections: int = 0
    draining: bool = False
    # -- TLS (appended; issue 4) ------------------------------------------------------
    tls_handshakes: tuple[TLSCount, ...] = ()  # completed handshakes by version and ALPN
    tls_handshake_errors: int = 0  # failed or timed-out handshakes
    tls_resumed: int = 0  # handshakes that resumed a session (ticket or id)
    tls_passthrough: int = 0  # connections relayed raw (ssl-passthrough)
    # -- data path (appended; issue 7) ------------------------------------------------
    spliced_bodies: int = 0  # response bodies moved by splice(2), never copied through Python
    spliced_bytes: int = 0


def encode_settings(settings: WorkerSettings) -> str:
    return msgspec.json.encode(settings).decode()


def decode_settings(text: str) -> WorkerSettings:
    return msgspec.json.decode(text, type=WorkerSettings)


stats_encoder = msgspec.msgpack.Encoder()
stats_decoder = msgspec.msgpack.Decoder(WorkerStats)
