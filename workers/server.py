"""The only place a worker touches sockets: listener, upstream connects, stats socket,
snapshot notifications and signals.

Theory of operation
-------------------
``run_worker(settings)`` is the whole life of one worker process:

* the HTTP listener is the worker's own socket bound with SO_REUSEPORT (the kernel spreads
  connections over the N workers); each accepted connection runs ``proxy.serve_client``
  in the connection nursery;
* the HTTPS listener (when ``https_port`` is not 0) works the same way, but each connection
  first goes through ``_serve_tls``: with ssl-passthrough hosts, the ClientHello's SNI is
  peeked and a passthrough name is relayed raw (``passthrough.relay``); otherwise a
  ``TLSStream`` does the handshake (under ``client_header_timeout``, nginx's
  ``ssl_handshake_timeout`` role) with the ``CertStore`` in force (``certs``), the TLS
  version and ALPN are counted, and the stream is served as HTTPS (``serve_client`` hands it
  to HTTP/2 when ALPN says ``h2``);
* the snapshot watcher waits on the supervisor's notify pipe (a byte per publication;
  EOF means the supervisor died: drain and exit) with a 1 s fallback poll, reads the shared
  memory segment when the generation moved, decodes, compiles and swaps the table in
  (and the certificates: ``CertCache.install``).  A
  snapshot that does not decode or compile is refused with one log line and counted; the
  previous table stays.  The same tick reaps expired idle upstream connections;
* the stats socket answers every connection with the msgpack-encoded ``WorkerStats``;
* SIGTERM/SIGINT (or notify EOF) drains: stop accepting, close idle keep-alive
  connections, let in-flight requests finish (answered with ``Connection: close``) for up
  to ``grace_period`` seconds, then cancel what is left and return.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial

import trio

from fastingress.errors import SnapshotError
from fastingress.snapshot import limitshm
from fastingress.snapshot.codec import decode_msgpack
from fastingress.snapshot.schema import Snapshot
from fastingress.snapshot.shm import ShmReader
from workers.accept import CoreServer, listen_socket
from workers.build import data_path
from workers.certs import CertCache
from workers.config import WorkerSettings
from workers.h1pool import CorePool, Dial
from workers.limiter import LimitTable
from workers.loop import Core
from workers.passthrough import NOT_TLS, Hello, peek_client_hello, relay
from workers.policies import worker_compilers
from workers.policies.limits import Limiter
from workers.policy import Compiler
from workers.pool import Connect, Pool
from workers.proxyproto import V2_MAX, BadProxyHeader, ProxyHeader, parse_proxy_header
from workers.routing import RouteTable
from workers.serve import serve_client
from workers.state import Worker
from workers.tls import TLSStream

log = logging.getLogger("fastingress.worker")

POLL_INTERVAL = 1.0
LISTEN_BACKLOG = 1024


async def tcp_connect(host: str, port: int, timeout: float) -> trio.abc.Stream:
    """Connect to an IP literal (the proxy applies ``timeout`` around this call)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def open_listener(bind: str, port: int, backlog: int = LISTEN_BACKLOG) -> trio.SocketListener:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind((bind, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


def _peer_ip(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "-"


async def read_proxy_header(stream: trio.SocketStream, timeout: float) -> ProxyHeader | None:
    """The PROXY protocol header at the start of ``stream``, consumed exactly (the bytes after it
    stay in the kernel for HTTP or TLS), or None (logged) when there is none in time."""
    sock = stream.socket
    buf = b""
    with trio.move_on_after(timeout):
        try:
            while True:
                data = await sock.recv(V2_MAX, socket.MSG_PEEK)
                if not data:
                    return None
                header = parse_proxy_header(buf + data)
                if not isinstance(header, ProxyHeader):  # every byte seen is the header's
                    buf += await sock.recv(len(data))
                    continue
                need = header.length - len(buf)
                rest = await sock.recv(need) if need else b""
                return header if len(rest) == need else None
        except BadProxyHeader as exc:
            log.info("connection from %s closed: %s (use-proxy-protocol is on)", _peer_ip(stream), exc)
            return None
        except OSError:
            return None
    log.info("connection from %s closed: no PROXY protocol header in time", _peer_ip(stream))
    return None


async def _proxied(worker: Worker, stream: trio.SocketStream) -> tuple[str, bytes] | None:
    """(client IP, port used on the balancer): from the PROXY protocol header when
    ``use-proxy-protocol`` is on (None: the connection must be closed), else the peer."""
    if not worker.proxy_protocol:
        return _peer_ip(stream), b""
    header = await read_proxy_header(stream, worker.proxy_protocol_timeout)
    if header is None:
        return None
    if header.source is None:  # LOCAL / UNKNOWN: the balancer's own connection
        return _peer_ip(stream), b""
    return header.source, str(header.dest_port).encode()


async def _serve_socket(worker: Worker, stream: trio.SocketStream) -> None:
    client = await _proxied(worker, stream)
    if client is None:
        await trio.aclose_forcefully(stream)
        return
    await serve_client(worker, stream, client[0], proxy_port=client[1])


async def _serve_tls(certs: CertCache, worker: Worker, stream: trio.SocketStream) -> None:
    """One HTTPS connection: passthrough by SNI, or terminate TLS and serve HTTP."""
    client = await _proxied(worker, stream)
    if client is None:
        await trio.aclose_forcefully(stream)
        return
    client_ip, proxy_port = client
    store = certs.current
    timeout = worker.settings.client_header_timeout
    first = b""
    if store is not None and store.passthrough:
        try:
            first, hello = await peek_client_hello(stream, timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await trio.aclose_forcefully(stream)
            return
        if hello is NOT_TLS and not first:
            await trio.aclose_forcefully(stream)
            return
        name = hello.server_name if isinstance(hello, Hello) else None
        upstream = store.passthrough_upstream(name)
        if upstream is not None and name is not None:
            worker.metrics.tls_passthrough += 1
            try:
                await relay(worker, stream, first, upstream, name)
            finally:
                await trio.aclose_forcefully(stream)
            return
    if store is None:
        await trio.aclose_forcefully(stream)
        return
    tls = TLSStream(stream, store.base, initial=first)
    try:
        with trio.fail_after(timeout):
            await tls.do_handshake()
    except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        worker.metrics.tls_errors += 1
        log.debug("TLS handshake from %s failed: %s", client_ip, exc)
        await trio.aclose_forcefully(tls)
        return
    alpn = tls.selected_alpn or "-"
    worker.metrics.observe_tls(tls.tls_version, alpn, tls.resumed)
    # serve_client hands a stream whose ALPN is "h2" over to HTTP/2.
    await serve_client(worker, tls, client_ip, tls=f"{tls.tls_version}/{alpn}", proxy_port=proxy_port)


async def _accept_loop(
    listener: trio.SocketListener,
    worker: Worker,
    nursery: trio.Nursery,
    scope: trio.CancelScope,
    serve: Callable[[Worker, trio.SocketStream], Awaitable[None]] = _serve_socket,
) -> None:
    with scope:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    # EMFILE/ENFILE/ENOBUFS: back off instead of spinning.
                    log.error(  # noqa: TRY400 (one line, no traceback)
                        "accept failed: %s", os.strerror(exc.errno or errno.EIO))
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(serve, worker, stream)


class SnapshotLoader:
    """Reads the shared-memory segment and installs new generations into a Worker."""

    def __init__(self, worker: Worker, shm_path: str, certs: CertCache | None = None,
                 compilers: Sequence[Compiler] | None = None) -> None:
        self.worker = worker
        self.certs = certs
        self.compilers = compilers
        self.shm_path = shm_path
        self.reader: ShmReader | None = None
        self._open_error_logged = False
        self._refused_generation = 0

    def _open(self) -> ShmReader | None:
        if self.reader is None:
            try:
                self.reader = ShmReader(self.shm_path)
            except SnapshotError as exc:
                if not self._open_error_logged:
                    log.warning("worker %d: %s (will retry)", self.worker.index, exc)
                    self._open_error_logged = True
        return self.reader

    def check(self) -> None:
        reader = self._open()
        if reader is None:
            return
        worker = self.worker
        generation = 0
        try:
            generation = reader.generation()
            if generation in (0, worker.generation, self._refused_generation):
                return
            got = reader.read()
            if got is None:
                return
            generation, data = got
            if generation in (worker.generation, self._refused_generation):
                return
            table = RouteTable.compile(decode_msgpack(data), self.compilers)
            if self.certs is not None:
                self.certs.install(table.snapshot)  # a bad certificate is logged and skipped inside
        except Exception as exc:  # any failure to decode/compile refuses the snapshot
            worker.metrics.snapshot_errors += 1
            self._refused_generation = generation
            log.error(  # noqa: TRY400 (one line, no traceback)
                "worker %d: snapshot generation %d refused, keeping generation %d: %s",
                      worker.index, generation, worker.generation, exc)
            return
        worker.install(table, generation)
        log.info("worker %d: snapshot generation %d in force", worker.index, generation)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def _drain_pipe(fd: int) -> bool:
    """Read everything pending; False on EOF (the supervisor is gone)."""
    while True:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        if len(data) < 4096:
            return True


async def _watch_snapshots(
    loader: SnapshotLoader, pool: Pool, notify_fd: int, stop: trio.Event
) -> None:
    worker = loader.worker
    if notify_fd >= 0:
        try:
            os.set_blocking(notify_fd, False)
        except OSError as exc:
            log.error(  # noqa: TRY400 (one line, no traceback)
                "worker %d: notify fd %d unusable (%s); polling every %gs instead",
                worker.index, notify_fd, exc.strerror or exc, POLL_INTERVAL,
            )
            notify_fd = -1
    next_reap = trio.current_time() + POLL_INTERVAL
    while True:
        loader.check()
        await worker.pool.prune()  # idle connections of endpoints the new snapshot removed
        if notify_fd >= 0:
            with trio.move_on_after(POLL_INTERVAL):
                await trio.lowlevel.wait_readable(notify_fd)
                if not _drain_pipe(notify_fd):
                    log.warning("worker %d: supervisor notify pipe closed; draining", worker.index)
                    loader.check()
                    stop.set()
                    return
        else:
            await trio.sleep(POLL_INTERVAL)
        if trio.current_time() >= next_reap:
            next_reap = trio.current_time() + POLL_INTERVAL
            await pool.reap(worker.settings.upstream_keepalive_timeout)


async def open_stats_listener(path: str) -> trio.SocketListener:
    """The unix socket the stats are served on (a stale socket file is removed first)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def _serve_stats(worker: Worker, listener: trio.SocketListener) -> None:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                log.error(  # noqa: TRY400 (one line, no traceback)
                    "stats accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            try:
                await stream.send_all(worker.stats_bytes())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                await trio.aclose_forcefully(stream)


async def _watch_signals(stop: trio.Event, receiver: AsyncIterator[int] | None) -> None:
    if receiver is None:
        return
    async for signum in receiver:
        log.info("received %s; draining", signal.Signals(signum).name)
        stop.set()


class _TaskFront:
    """The reference path (``--http1-codec h11``): trio listeners, a task per connection."""

    def __init__(self, listener: trio.SocketListener, tls_listener: trio.SocketListener | None) -> None:
        self.listener = listener
        self.tls_listener = tls_listener
        self.scopes = (trio.CancelScope(), trio.CancelScope())  # one per accept loop

    def ports(self) -> tuple[int, int]:
        port = int(self.listener.socket.getsockname()[1])
        tls = int(self.tls_listener.socket.getsockname()[1]) if self.tls_listener is not None else 0
        return port, tls

    def start(self, worker: Worker, certs: CertCache, connections: trio.Nursery) -> None:
        connections.start_soon(_accept_loop, self.listener, worker, connections, self.scopes[0])
        if self.tls_listener is not None:
            connections.start_soon(_accept_loop, self.tls_listener, worker, connections, self.scopes[1],
                                   partial(_serve_tls, certs))

    def stop_accepting(self) -> None:
        for scope in self.scopes:
            scope.cancel()

    async def aclose(self) -> None:
        await self.listener.aclose()
        if self.tls_listener is not None:
            await self.tls_listener.aclose()


class _CoreFront:
    """The event-driven core (``workers.loop``): one epoll task serves HTTP/1.1 and TLS."""

    def __init__(self, sock: socket.socket, tls_sock: socket.socket | None, dial: Dial | None) -> None:
        self.sock = sock
        self.tls_sock = tls_sock
        self.dial = dial
        self.core = Core()
        self.server: CoreServer | None = None

    def ports(self) -> tuple[int, int]:
        port = int(self.sock.getsockname()[1])
        tls = int(self.tls_sock.getsockname()[1]) if self.tls_sock is not None else 0
        return port, tls

    def start(self, worker: Worker, certs: CertCache, connections: trio.Nursery) -> None:
        pool = CorePool(self.core, worker.pool.tls, self.dial)
        worker.retire_hooks.append(pool.retire)
        server = self.server = CoreServer(self.core, worker, pool, certs)
        server.listen_http(self.sock)
        if self.tls_sock is not None:
            server.listen_https(self.tls_sock)
        connections.start_soon(self.core.run, connections)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.stop_accepting()

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.stop_accepting()
            self.server.pool.close()
        else:
            self.sock.close()
            if self.tls_sock is not None:
                self.tls_sock.close()
        self.core.close()
        await trio.lowlevel.checkpoint()


async def _open_front(settings: WorkerSettings, dial: Dial | None) -> _TaskFront | _CoreFront:
    if settings.http1_codec == "h11":
        listener = await open_listener(settings.bind, settings.http_port)
        try:
            tls_listener = (
                await open_listener(settings.bind, settings.https_port) if settings.https_port else None
            )
        except BaseException:
            await listener.aclose()
            raise
        return _TaskFront(listener, tls_listener)
    sock = listen_socket(settings.bind, settings.http_port, LISTEN_BACKLOG)
    try:
        tls_sock = (
            listen_socket(settings.bind, settings.https_port, LISTEN_BACKLOG) if settings.https_port else None
        )
    except BaseException:
        sock.close()
        raise
    return _CoreFront(sock, tls_sock, dial)


def open_limits(settings: WorkerSettings) -> LimitTable:
    """The replica's limit counters (the supervisor's segment), as worker column ``index``.  A
    segment that cannot be mapped is an error in the log, and the limits count in this process
    only (each worker then allows up to the whole limit): never a worker that cannot serve."""
    if settings.limits_path:
        try:
            return LimitTable(limitshm.attach(settings.limits_path, settings.index))
        except SnapshotError as exc:
            log.error(  # noqa: TRY400 (one line, no traceback)
                "worker %d: %s; limit-rps/-rpm/-connections count in this worker only", settings.index, exc)
    return LimitTable(limitshm.private())


async def run_worker(
    settings: WorkerSettings,
    *,
    connect: Connect = tcp_connect,
    dial: Dial | None = None,
    stop: trio.Event | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one worker until it is told to stop (signal, notify EOF or ``stop``), then drain.

    ``connect`` (task paths) and ``dial`` (the core: endpoint -> address) let tests reach
    upstreams under made-up addresses."""
    if stop is None:
        stop = trio.Event()
    pool = Pool(connect)
    front = await _open_front(settings, dial)
    try:
        stats_listener = await open_stats_listener(settings.stats_socket)
    except BaseException:
        await front.aclose()
        raise
    port, https_port = front.ports()
    worker = Worker(pool, index=settings.index, listen_port=port, access_log=settings.access_log,
                    https_port=https_port, http1_codec=settings.http1_codec)
    certs = CertCache()
    certs.install(Snapshot())  # the self-signed default until the first snapshot arrives
    limits = open_limits(settings)
    loader = SnapshotLoader(worker, settings.shm_path, certs, worker_compilers(Limiter(limits)))
    signals = (
        trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT)
        if handle_signals
        else contextlib.nullcontext(None)
    )
    try:
        with signals as receiver:
            async with trio.open_nursery() as background:
                background.start_soon(_watch_signals, stop, receiver)
                background.start_soon(_watch_snapshots, loader, pool, settings.notify_fd, stop)
                background.start_soon(_serve_stats, worker, stats_listener)
                async with trio.open_nursery() as connections:
                    front.start(worker, certs, connections)
                    log.info("worker %d: serving on port %d (data path: %s)", worker.index, port, data_path())
                    task_status.started(worker)
                    await stop.wait()
                    front.stop_accepting()
                    worker.start_drain()
                    with trio.move_on_after(settings.grace_period):
                        await worker.drained.wait()
                    if worker.open:
                        log.warning("worker %d: grace period over, closing %d connection(s)",
                                    worker.index, len(worker.open))
                    connections.cancel_scope.cancel()
                background.cancel_scope.cancel()
    finally:
        loader.close()
        limits.segment.close()
        with trio.CancelScope(shield=True):
            await front.aclose()
            await pool.close()
        with contextlib.suppress(OSError):
            os.unlink(settings.stats_socket)
    log.info("worker %d: stopped", worker.index)
