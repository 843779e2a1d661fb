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
from workers.accesslog import compile_format
from workers.balance import Address, Balancer
from workers.clientip import Front
from workers.config import stats_encoder
from workers.heads import DROP_INVALID_AND_UNDERSCORE, DROP_INVALID_NAMES, KEEP_ALL_NAMES
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


def _headers(pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[bytes, bytes], ...]:
    """Header (name, value) pairs as the codecs want them: lower-case names, valid values only."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in pairs:
        raw = value.encode("latin-1", "replace")
        if raw and valid_value(raw) and name.isascii():
            out.append((name.lower().encode(), raw))
    return tuple(out)


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
        self.access_log_flag = access_log  # --access-log; the ConfigMap's disable-access-log wins
        self.access_log = access_log  # in force (see install)
        self.metrics = Metrics()
        self.table: RouteTable | None = None
        self.endpoints: frozenset[Address] = frozenset()  # of the table in force
        self.balancer = Balancer()
        self.settings = GlobalSettings()
        self.server_header = self.settings.server_header.encode()
        self.server_line = b"server: " + self.server_header + b"\r\n"  # (the relay fast lane)
        self._globals(self.settings)
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
        if server and not valid_value(server):
            log.error("snapshot generation %d: invalid server_header %r; using 'fastingress'",
                      generation, self.settings.server_header)
            server = b"fastingress"
        self.server_header = server
        self.server_line = b"server: " + server + b"\r\n" if server else b""
        self.hsts = hsts_value(self.settings)
        self._globals(self.settings)
        self.generation = generation

    def _globals(self, settings: GlobalSettings) -> None:
        """What the data paths need of the controller ConfigMap, compiled once per snapshot."""
        # Forwarded headers, PROXY protocol and global blocks; None: the peer is the client, as is
        self.front = Front.compile(settings)
        self.proxy_protocol = settings.use_proxy_protocol
        self.proxy_protocol_timeout = settings.proxy_protocol_header_timeout
        self.header_names = (
            KEEP_ALL_NAMES if not settings.ignore_invalid_headers
            else DROP_INVALID_NAMES if settings.underscores_in_headers
            else DROP_INVALID_AND_UNDERSCORE
        )
        # Requests one HTTP/1.1 connection may carry (keep-alive: 0 means one)
        self.max_requests = settings.keepalive_requests if settings.keepalive_timeout > 0 else 1
        self.keep_server = settings.allow_backend_server_header
        self.add_headers = _headers(settings.add_headers)  # set on every response
        self.proxy_headers = _headers(settings.proxy_set_headers)  # set on every upstream request
        server = ((b"server", self.server_header),) if self.server_header else ()
        self.answer_headers: tuple[tuple[bytes, bytes], ...] = (*server, *self.add_headers)  # our answers
        self.access_log = self.access_log_flag if settings.access_log is None else settings.access_log
        self.log_format = (
            compile_format(settings.log_format, settings.log_escape) if settings.log_format else None
        )
        self.skip_log = frozenset(u.encode("latin-1", "replace") for u in settings.skip_access_log_urls)

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
