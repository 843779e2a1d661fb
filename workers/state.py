"""Per-process state every data path of a worker shares: the ``Worker``.

The route table in force (with its ``Balancer``), the upstream pools, ``Metrics``, the
settings of the snapshot in force, and the set of open client connections of every kind
(event-driven HTTP/1.1 connections, task-based Sessions, HTTP/2 connections), so that a
drain reaches all of them.  A new snapshot (``install``) swaps the table; requests already
decided keep the table they were decided with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import trio

from fastingress.snapshot.schema import GlobalSettings
from workers.balance import Address, Balancer
from workers.config import stats_encoder
from workers.http1 import valid_value
from workers.metrics import Metrics
from workers.pool import Pool
from workers.routing import RouteTable
from workers.tlspolicy import hsts_value

log = logging.getLogger("fastingress.worker")


class Drainable(Protocol):
    """An open client connection: on ``drain`` an idle one closes now, a busy one after its
    response (HTTP/2: GOAWAY, in-flight streams finish)."""

    def drain(self) -> None: ...


def endpoint_addresses(table: RouteTable) -> frozenset[Address]:
    """Every (address, port) the table's upstreams list (ExternalName ones resolve later)."""
    return frozenset((e.address, e.port) for u in table.snapshot.upstreams for e in u.endpoints)


class Worker:
    """Per-process state shared by every client connection."""

    def __init__(
        self,
        pool: Pool,
        *,
        index: int = 0,
        listen_port: int = 80,
        scheme: str = "http",
        access_log: bool = False,
        https_port: int = 0,
        http1_codec: str = "llhttp",
    ) -> None:
        self.pool = pool
        self.http1_codec = http1_codec  # "llhttp" (fast) or "h11" (the reference)
        self.https_port = https_port  # 0: no HTTPS listener (no ssl-redirect then)
        self.https_port_bytes = str(https_port).encode()
        self.hsts: bytes | None = None  # Strict-Transport-Security value for HTTPS answers
        self.index = index
        self.listen_port = listen_port
        self.port_bytes = str(listen_port).encode()
        self.scheme_bytes = scheme.encode()
        self.access_log = access_log
        self.metrics = Metrics()
        self.table: RouteTable | None = None
        self.endpoints: frozenset[Address] = frozenset()  # of the table in force
        self.balancer = Balancer()
        self.settings = GlobalSettings()
        self.server_header = self.settings.server_header.encode()
        self.server_line = b"server: " + self.server_header + b"\r\n"  # (the relay fast lane)
        self.generation = 0
        self.draining = False
        self.open: set[Drainable] = set()
        self.drained = trio.Event()
        # Called with the endpoints a new snapshot removed (each upstream pool retires them).
        self.retire_hooks: list[Callable[[frozenset[Address]], None]] = [pool.retire]

    def install(self, table: RouteTable, generation: int) -> None:
        """Swap in a new route table; requests already parsed keep the old one."""
        endpoints = endpoint_addresses(table)
        removed = self.endpoints - endpoints
        for retire in self.retire_hooks:
            retire(removed)
        self.endpoints = endpoints
        self.table = table
        self.balancer = Balancer(self.balancer, endpoints)  # EWMA statistics carry over
        self.settings = table.snapshot.settings
        server = self.settings.server_header.encode("latin-1", "replace")
        if not valid_value(server):
            log.error("snapshot generation %d: invalid server_header %r; using 'fastingress'",
                      generation, self.settings.server_header)
            server = b"fastingress"
        self.server_header = server
        self.server_line = b"server: " + server + b"\r\n"
        self.hsts = hsts_value(self.settings)
        self.generation = generation

    def start_drain(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their response."""
        self.draining = True
        for conn in list(self.open):
            conn.drain()
        if not self.open:
            self.drained.set()

    def opened(self, conn: Drainable) -> None:
        self.open.add(conn)
        self.metrics.active_connections += 1

    def closed(self, conn: Drainable) -> None:
        if conn in self.open:
            self.open.discard(conn)
            self.metrics.active_connections -= 1
        if self.draining and not self.open:
            self.drained.set()

    def stats_bytes(self) -> bytes:
        return stats_encoder.encode(self.metrics.stats(self.index, self.generation, self.draining))


__all__ = ["Drainable", "Worker", "endpoint_addresses"]
