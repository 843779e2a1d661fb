"""The supervisor: load → publish → spawn workers → watch → republish; admin; signals.

Theory of operation
-------------------
``run_supervisor(settings, source)`` is one trio program; where the configuration comes
from is a pluggable ``ConfigSource`` (``source.py``): files in standalone mode
(``run_standalone``), the Kubernetes API in controller mode (``fastingress.k8s``).

1. **Prepare** (``source.prepare()``): the quick checks, before anything is bound.  The
   file source loads its inputs here, so a file that cannot be read or parsed is one line
   and exit 2 (``ConfigError``/``SnapshotError``; ``--allow-partial`` starts without it).
   The HTTP(S) ports are probed (a busy port is also one line).
2. Bind the **admin listener** and serve it at once: ``/healthz`` is 200 and ``/readyz``
   503 ("loading the initial configuration") while the **initial load**
   (``source.initial()``) runs: the controller's initial list of a big cluster takes a
   while.  SIGTERM during it stops cleanly.  Each diagnostic becomes one log line.
3. Remove the runtime dirs of supervisors that died without cleaning up
   (``fastingress-PID-START-*``), create ours, the ``ShmPublisher`` at ``<dir>/snapshot``,
   and publish **generation 1 before any worker starts**.  One log line says what runs
   (listeners, workers, codec, generation), another when every worker serves it.
4. One **slot task per worker**: spawn ``python -m workers --settings JSON`` (the read end
   of the slot's notification pipe passed via ``pass_fds``), wait for it; if it exits while
   we are not stopping, log the slot, pid and exit status and respawn it after a backoff
   (50 ms doubling to 5 s, reset once a worker ran 10 s).  Workers exit on their own when
   the supervisor dies (``workers.process.exit_with_parent``, and the pipe's EOF).
5. The **source task** (``source.run(trigger)``) watches for changes: the file source
   polls the input files' (mtime_ns, size, inode) every ``watch_interval`` and, once the
   fingerprint held still for one more interval, triggers a reload; the controller
   triggers after its debounce.  SIGHUP reloads at once.  A reload (``source.reload()``)
   publishes only if the msgpack bytes differ from the last published ones, then writes
   one byte to each worker's pipe.  A failed reload logs one line and keeps the snapshot
   in force; a reload whose ``Loaded.failures`` is not empty (a manifest file held at its
   last good version) applies the rest and counts as failed
   (``fastingress_config_last_reload_successful`` 0).  The source also adds to /readyz,
   /status, /metrics and may serve admin paths of its own (``/api-contact``).
6. **SIGTERM/SIGINT**: SIGTERM to every worker, wait up to grace period + 5 s, SIGKILL the
   rest, stop the admin server and the watcher, remove the runtime dir; return 0.

All mutable state lives on one ``Supervisor`` object; the admin handler reads it and asks
each live worker's stats socket (concurrently, short timeout) when a request needs it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Sequence

import msgspec
import trio

from fastingress.errors import ConfigError, FastIngressError
from fastingress.settings import ControllerSettings, StandaloneSettings
from fastingress.snapshot import limitshm
from fastingress.snapshot.shm import ShmPublisher, default_runtime_dir, stale_runtime_dirs
from fastingress.supervisor import admin
from fastingress.supervisor.metrics import SupervisorView, Totals, WorkerView, readiness, render_metrics
from fastingress.supervisor.procs import (
    WorkerSlot,
    assign_standby,
    describe_exit,
    fetch_stats,
    make_notify_pipe,
    next_backoff,
    spawn,
    spawn_standby,
    wait_ready,
)
from fastingress.supervisor.source import (
    ConfigSource,
    DiagnosticLike,
    FileSource,
    InputSpec,
    Loaded,
    count_errors,
)
from workers.build import data_path
from workers.config import WorkerSettings, WorkerStats

log = logging.getLogger("fastingress.supervisor")

STATS_TIMEOUT = 0.5
KILL_MARGIN = 5.0  # seconds past the grace period before SIGKILL
STANDBY_DELAY = 0.25  # seconds between handing out the standby and starting the next one
READY_POLL = 0.05  # seconds between readiness checks until the "ready" log line
MAX_UNIX_PATH = 107  # sun_path is 108 bytes on Linux, NUL included

_SEVERITY_LEVEL = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO}


def log_diagnostics(diagnostics: Sequence[DiagnosticLike], *, only_new: frozenset[str] = frozenset()) -> None:
    for diagnostic in diagnostics:
        line = str(diagnostic)
        if line not in only_new:
            log.log(_SEVERITY_LEVEL.get(diagnostic.severity, logging.INFO), "%s", line)


def input_spec(settings: StandaloneSettings) -> InputSpec:
    return InputSpec(settings.manifests, settings.snapshot, settings.translation, settings.allow_partial)


ServingSettings = StandaloneSettings | ControllerSettings


class Supervisor:
    """All the state of one run (owned by ``run_supervisor``)."""

    def __init__(self, settings: ServingSettings, *, source: ConfigSource) -> None:
        self.settings = settings
        self.source = source
        # Set by ``start_serving`` once the initial configuration is loaded; until then the
        # admin port already answers (/healthz 200, /readyz 503).
        self.runtime_dir = ""
        self.publisher: ShmPublisher | None = None
        self.limits_path = ""  # the replica's limit counters (limitshm), shared by the workers
        self.current: Loaded | None = None
        self.reload_failures = 0
        self.last_reload_ok = True  # every input of the last (re)load is in force
        self.last_reload_time = 0.0  # time.time() of the last load that was entirely in force
        self.slots: list[WorkerSlot] = []
        self.stopping = trio.Event()
        self.retired = Totals()
        self.last_stats: dict[int, WorkerStats] = {}  # by pid, for live workers
        self.admin_port = 0
        self._reload_lock = trio.Lock()
        self._pipe_fds: list[int] = []
        self._notify_read_fds: list[int] = []
        # The standby protocol is that of python -m workers; a custom worker command has none.
        self.use_standby = settings.standby_worker and not settings.worker_command
        self.standby: trio.Process | None = None
        self.standby_ready = False
        self._standby_taken = trio.Event()
        self._initial_scope: trio.CancelScope | None = None
        self.created_dir = False  # the runtime directory is ours to remove

    @property
    def generation(self) -> int:
        return self.publisher.generation if self.publisher is not None else 0

    def start_serving(self, initial: Loaded, runtime_dir: str, publisher: ShmPublisher) -> None:
        self.current = initial
        self.runtime_dir = runtime_dir
        self.publisher = publisher
        self._note_failures("start", initial.failures)

    # -- publication -------------------------------------------------------------------

    def publish(self, loaded: Loaded) -> int:
        assert self.publisher is not None
        generation = self.publisher.publish(loaded.payload)
        self.current = loaded
        snapshot = loaded.snapshot
        log.info(
            "published snapshot generation %d (%d bytes, %d virtual hosts, %d upstreams)",
            generation,
            len(loaded.payload),
            len(snapshot.virtual_hosts),
            len(snapshot.upstreams),
        )
        for slot in self.slots:
            slot.notify()
        return generation

    async def reload(self, reason: str) -> None:
        async with self._reload_lock:
            try:
                loaded = await self.source.reload()
            except FastIngressError as exc:
                self._reload_failed(reason, str(exc))
                return
            except Exception as exc:  # translation must never raise; never let it kill us
                self._reload_failed(reason, f"{type(exc).__name__}: {exc}")
                return
            previous = self.current
            seen = frozenset(str(d) for d in previous.diagnostics) if previous is not None else frozenset()
            log_diagnostics(loaded.diagnostics, only_new=seen)
            self._note_failures(reason, loaded.failures)
            if previous is not None and loaded.payload == previous.payload:
                self.current = loaded
                log.info("reloaded (%s): no change, keeping generation %d", reason, self.generation)
                return
            log.info("reloaded (%s)", reason)
            try:
                self.publish(loaded)
            except FastIngressError as exc:
                self._reload_failed(reason, str(exc))

    def _note_failures(self, reason: str, failures: Sequence[str]) -> None:
        """Inputs that did not load (each held at its last good version): a failed reload."""
        when = "start (--allow-partial)" if reason == "start" else f"reload ({reason})"
        for failure in failures:
            log.error("%s: %s", when, failure)
        if failures:
            self.reload_failures += reason != "start"
            self.last_reload_ok = False
        else:
            self.last_reload_ok = True
            self.last_reload_time = time.time()

    def _reload_failed(self, reason: str, message: str) -> None:
        self.reload_failures += 1
        self.last_reload_ok = False
        log.error("reload (%s) failed, keeping generation %d: %s", reason, self.generation, message)

    # -- start-up ----------------------------------------------------------------------

    async def bring_up(self, nursery: trio.Nursery) -> bool:
        """Load the initial configuration, publish it, start the workers and the source's
        watcher in ``nursery``; False if told to stop first.  Raises FastIngressError."""
        with trio.CancelScope() as scope:
            self._initial_scope = scope
            if self.stopping.is_set():
                scope.cancel()
            initial = await self.source.initial()
        self._initial_scope = None
        if scope.cancelled_caught:
            log.info("stopped before the initial configuration was loaded")
            return False
        log.info("loaded %s", self.source.describe())
        log_diagnostics(initial.diagnostics)
        clean_stale_runtime_dirs()
        runtime_dir, self.created_dir = prepare_runtime_dir(self.settings.runtime_dir)
        try:
            publisher = ShmPublisher(os.path.join(runtime_dir, "snapshot"))
            try:
                self.limits_path = limitshm.create(os.path.join(runtime_dir, "limits"), self.settings.workers)
            except FastIngressError:
                publisher.close(unlink=True)
                raise
        except FastIngressError:
            if self.created_dir:
                shutil.rmtree(runtime_dir, ignore_errors=True)
                self.created_dir = False
            raise
        self.start_serving(initial, runtime_dir, publisher)
        self.make_slots()
        self.publish(initial)
        for slot in self.slots:
            nursery.start_soon(self.run_slot, slot)
        if self.use_standby:
            nursery.start_soon(self.keep_standby)
        nursery.start_soon(self.source.run, self.reload)
        log.info("starting %s", self.describe_serving())
        nursery.start_soon(self.announce_ready)
        return True

    def describe_serving(self) -> str:
        """``2 workers: http on 0.0.0.0:80, https on 0.0.0.0:443, admin on ..., ...`` (for the log)."""
        settings = self.settings
        parts = [f"http on {host_port(settings.bind, settings.http_port)}"]
        if settings.https_port:
            parts.append(f"https on {host_port(settings.bind, settings.https_port)}")
        parts.append(f"admin on {host_port(settings.admin_bind, self.admin_port)}")
        if self.slots:  # what the workers are told to use (--http1-codec, where there is one)
            parts.append(f"HTTP/1.1 codec {self.slots[0].settings.http1_codec}")
        parts.append(f"data path {data_path()}")  # compiled or interpreted (workers/build.py)
        parts.append(f"snapshot generation {self.generation}")
        standby = " (+1 standby)" if self.use_standby else ""
        workers = f"{settings.workers} worker{'s' if settings.workers != 1 else ''}{standby}"
        return f"{workers}: " + ", ".join(parts)

    async def announce_ready(self) -> None:
        """One log line when every worker first serves a snapshot (what /readyz then says)."""
        while not self.stopping.is_set():
            ready, _ = await self.readiness()
            if ready:
                live = sum(1 for slot in self.slots if slot.pid is not None)
                log.info("ready: %d workers serve snapshot generation %d", live, self.generation)
                return
            await trio.sleep(READY_POLL)

    # -- workers -----------------------------------------------------------------------

    def make_slots(self) -> None:
        settings = self.settings
        assert self.publisher is not None
        longest = os.path.join(self.runtime_dir, f"worker-{settings.workers - 1}.sock")
        if len(longest.encode()) > MAX_UNIX_PATH:
            raise ConfigError(f"runtime directory path too long for unix sockets: {self.runtime_dir}")
        for index in range(settings.workers):
            read_end, write_end = make_notify_pipe()
            self._pipe_fds += [read_end, write_end]
            self._notify_read_fds.append(read_end)
            worker_settings = WorkerSettings(
                index=index,
                shm_path=self.publisher.path,
                stats_socket=os.path.join(self.runtime_dir, f"worker-{index}.sock"),
                notify_fd=read_end,
                bind=settings.bind,
                http_port=settings.http_port,
                https_port=settings.https_port,  # 0: no HTTPS listener
                grace_period=settings.grace_period,
                log_level=settings.log_level,
                access_log=settings.access_log,
                http1_codec=settings.http1_codec,
                parent_pid=os.getpid(),
                limits_path=self.limits_path,
            )
            self.slots.append(WorkerSlot(index, worker_settings, write_end))

    async def run_slot(self, slot: WorkerSlot) -> None:
        """Keep one worker running until we stop (spawn, wait, back off, respawn)."""
        while not self.stopping.is_set():
            returncode: int | None = None
            ran_for = 0.0
            process, how = await self._try_spawn(slot)
            if process is not None:
                slot.process = process
                slot.started_at = trio.current_time()
                log.info("worker slot %d started (pid %d%s)", slot.index, process.pid, how)
                if self.stopping.is_set():
                    process.send_signal(signal.SIGTERM)
                returncode = await process.wait()
                ran_for = trio.current_time() - slot.started_at
                self._retire(process.pid)
            if self.stopping.is_set():
                return
            slot.backoff = next_backoff(slot.backoff, ran_for)
            slot.restarts += 1
            if returncode is not None:
                slot.last_exit = describe_exit(returncode)
                log.warning(
                    "worker slot %d (pid %d) exited unexpectedly (%s) after %.1fs; restarting in %.2fs",
                    slot.index,
                    slot.process.pid if slot.process else -1,
                    describe_exit(returncode),
                    ran_for,
                    slot.backoff,
                )
            with trio.move_on_after(slot.backoff):
                await self.stopping.wait()

    async def _try_spawn(self, slot: WorkerSlot) -> tuple[trio.Process | None, str]:
        """A process for ``slot`` (the standby if one is ready) and how it was made, for the log."""
        failure = ""
        try:
            if not self.use_standby:
                return await spawn(slot, self.settings.worker_command), ""
            standby = self._take_standby()
            if standby is not None and await assign_standby(standby, slot.settings):
                return standby, ", was the standby"
            fresh, ready_read = await spawn_standby(self._notify_read_fds)
            os.close(ready_read)
            await assign_standby(fresh, slot.settings)  # if it died already, wait() tells why
            return fresh, ""
        except OSError as exc:
            failure = exc.strerror or str(exc)
        log.error("worker slot %d: cannot start: %s", slot.index, failure)
        return None, ""

    async def _mark_ready(self, process: trio.Process, ready_read: int) -> None:
        if await wait_ready(ready_read) and self.standby is process:
            self.standby_ready = True

    def _take_standby(self) -> trio.Process | None:
        process = self.standby
        if process is None or process.returncode is not None:
            return None
        self.standby = None
        self.standby_ready = False
        self._standby_taken.set()
        return process

    async def keep_standby(self) -> None:
        """Keep one pre-started worker waiting for a slot (see procs.STANDBY_CODE)."""
        backoff = 0.0
        first = True
        while not self.stopping.is_set():
            if not first:
                # Let the worker that just took the standby have the CPU for its start first.
                with trio.move_on_after(STANDBY_DELAY):
                    await self.stopping.wait()
                if self.stopping.is_set():
                    return
            first = False
            try:
                process, ready_read = await spawn_standby(self._notify_read_fds)
            except OSError as exc:
                log.error("standby worker: cannot start: %s", exc.strerror or exc)  # noqa: TRY400
                backoff = next_backoff(backoff, 0.0)
                await trio.sleep(backoff)
                continue
            started = trio.current_time()
            taken = trio.Event()
            self.standby, self._standby_taken, self.standby_ready = process, taken, False
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._mark_ready, process, ready_read)
                    await _wait_either(process, taken)
                    nursery.cancel_scope.cancel()
            finally:
                os.close(ready_read)
            if taken.is_set() or self.stopping.is_set():
                continue
            self.standby = None
            ran_for = trio.current_time() - started
            backoff = next_backoff(backoff, ran_for)
            log.warning(
                "standby worker (pid %d) exited (%s); starting another in %.2fs",
                process.pid,
                describe_exit(process.returncode or 0),
                backoff + STANDBY_DELAY,
            )
            await trio.sleep(backoff)

    def _retire(self, pid: int) -> None:
        stats = self.last_stats.pop(pid, None)
        if stats is not None:
            self.retired.add(stats)

    def _processes(self) -> list[trio.Process]:
        candidates = [slot.process for slot in self.slots] + [self.standby]
        return [p for p in candidates if p is not None and p.returncode is None]

    async def stop_workers(self) -> None:
        """SIGTERM every worker (and the standby), wait up to grace + margin, SIGKILL the rest."""
        live = self._processes()
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        if live:
            workers = sum(1 for p in live if p is not self.standby)
            log.info(
                "sent SIGTERM to %d workers%s; waiting up to %.1fs",
                workers,
                " and the standby" if len(live) > workers else "",
                self.settings.grace_period,
            )
        with trio.move_on_after(self.settings.grace_period + KILL_MARGIN):
            for process in live:
                await process.wait()
        for process in live:
            if process.returncode is None:
                log.warning("worker pid %d did not exit in time: SIGKILL", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    def kill_workers_now(self) -> None:
        for process in self._processes():
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    # -- admin -------------------------------------------------------------------------

    async def view(self) -> SupervisorView:
        pids = {slot.index: slot.pid for slot in self.slots}
        stats: dict[int, WorkerStats | None] = {}

        async def ask(slot: WorkerSlot) -> None:
            stats[slot.index] = await fetch_stats(slot.settings.stats_socket, STATS_TIMEOUT)

        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                if pids[slot.index] is not None:
                    nursery.start_soon(ask, slot)
        workers = []
        for slot in self.slots:
            pid = slot.pid if pids[slot.index] is not None else None
            got = stats.get(slot.index)
            if pid is not None and got is not None:
                self.last_stats[pid] = got
            workers.append(WorkerView(slot.index, pid, got if pid is not None else None, slot.restarts))
        return SupervisorView(
            generation=self.generation,
            workers=tuple(workers),
            config_errors=count_errors(self.current.diagnostics) if self.current is not None else 0,
            reload_failures=self.reload_failures,
            last_reload_ok=self.last_reload_ok,
            last_reload_time=self.last_reload_time,
        )

    async def handle_admin(self, method: str, path: str, query: str = "") -> admin.Response:
        if path == "/healthz":
            return admin.text(200, "ok\n")
        if path == "/readyz":
            ready, reason = await self.readiness()
            return admin.text(200 if ready else 503, ("ok: " if ready else "not ready: ") + reason + "\n")
        if path == "/metrics":
            view = await self.view()
            live = [w.stats for w in view.live if w.stats is not None]
            body = render_metrics(view, self.retired.merged(live))
            extra = self.source.metrics()
            if extra:
                body += "\n".join(extra) + "\n"
            return admin.Response(200, body.encode(), "text/plain; version=0.0.4; charset=utf-8")
        if path == "/status":
            view = await self.view()
            return admin.Response(200, self.status_json(view), "application/json")
        if path == "/explain":
            return self.explain(query)
        own = self.source.endpoint(path)
        if own is not None:
            return admin.text(*own)
        return admin.text(404, "404 Not Found\n")

    async def readiness(self) -> tuple[bool, str]:
        """/readyz: every worker serves a snapshot, and the source has no objection."""
        source_ready, source_reason = self.source.readiness()
        if self.current is None:
            why = f": {source_reason}" if source_reason else ""
            return False, f"loading the initial configuration{why}"
        ready, reason = readiness(await self.view())
        if ready and not source_ready:
            return False, source_reason
        if ready and source_reason:
            reason += f"; {source_reason}"
        if ready and not self.last_reload_ok:
            reason += "; the last reload failed, inputs held at their last good version (see /status)"
        return ready, reason

    def explain(self, query: str) -> admin.Response:
        """/explain?url=URL[&header=Name:%20value...][&client_ip=IP]: ``fastingress explain``
        about the snapshot in force (JSON), for ``fastingress explain --admin``."""
        from fastingress.explain import explain_query

        if self.current is None:
            return admin.text(503, "503 Service Unavailable: the initial configuration is still loading\n")
        status, body = explain_query(
            self.current.snapshot, query, https_port=self.settings.https_port,
            diagnostics=self.current.diagnostics,
        )
        content_type = "application/json" if status == 200 else "text/plain; charset=utf-8"
        return admin.Response(status, body, content_type)

    def status_json(self, view: SupervisorView) -> bytes:
        body = {
            "generation": view.generation,
            "starting": self.current is None,
            "workers": [
                {
                    "index": w.index,
                    "pid": w.pid or 0,  # 0: no process right now (being restarted)
                    "running": w.pid is not None,
                    "generation": w.stats.generation if w.stats is not None else 0,
                    "restarts": w.restarts,
                }
                for w in view.workers
            ],
            "standby": {
                "pid": self.standby.pid if self.standby and self.standby.returncode is None else 0,
                "ready": self.standby_ready,
            },
            "config_errors": view.config_errors,
            "reload_failures": view.reload_failures,
            "last_reload_successful": view.last_reload_ok,
            "last_reload_failures": list(self.current.failures) if self.current is not None else [],
            "diagnostics": [msgspec.to_builtins(d) for d in self.current.diagnostics] if self.current else [],
            **self.source.status(),
        }
        return msgspec.json.encode(body)

    # -- lifecycle -----------------------------------------------------------------------

    async def handle_signals(self, signals: AsyncIterator[int], nursery: trio.Nursery) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self.stopping.is_set():
                if signum != signal.SIGHUP:
                    log.warning("%s again while stopping: killing workers now", name)
                    self.kill_workers_now()
            elif signum == signal.SIGHUP:
                if self.current is None:
                    log.info("SIGHUP: ignored, the initial configuration is still loading")
                    continue
                log.info("SIGHUP: reloading")
                nursery.start_soon(self.reload, "SIGHUP")
            else:
                log.info("%s: shutting down", name)
                self.stopping.set()
                if self._initial_scope is not None:
                    self._initial_scope.cancel()

    def request_stop(self) -> None:
        self.stopping.set()
        if self._initial_scope is not None:
            self._initial_scope.cancel()

    def cleanup(self, *, remove_dir: bool) -> None:
        self.kill_workers_now()
        if self.publisher is not None:
            self.publisher.close(unlink=True)
        if self.limits_path:
            limitshm.remove(self.limits_path)
        for slot in self.slots:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(slot.settings.stats_socket)
        for fd in self._pipe_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pipe_fds.clear()
        if remove_dir and self.runtime_dir:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


async def _wait_either(process: trio.Process, event: trio.Event) -> None:
    """Return when ``process`` exits or ``event`` is set, whichever comes first."""
    async with trio.open_nursery() as nursery:

        async def exited() -> None:
            await process.wait()
            nursery.cancel_scope.cancel()

        async def happened() -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(exited)
        nursery.start_soon(happened)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe_listen(host: str, port: int) -> None:
    """Fail early, in one line, if the HTTP port cannot be bound (in use, privileged).

    Without SO_REUSEPORT on purpose: workers must not silently join another program's socket.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen(1)
        except OSError as exc:
            why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise ConfigError(f"cannot listen on {host_port(host, port)}: {why}") from None


async def open_admin_listeners(settings: ServingSettings) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(settings.admin_port, host=settings.admin_bind)
    except OSError as exc:
        why = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        where = host_port(settings.admin_bind, settings.admin_port)
        raise ConfigError(f"cannot listen on admin address {where}: {why}") from None


def clean_stale_runtime_dirs() -> None:
    """Remove the runtime directories of supervisors that died without cleaning up."""
    for path in stale_runtime_dirs():
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed the stale runtime directory %s (its supervisor is gone)", path)


def prepare_runtime_dir(requested: str | None) -> tuple[str, bool]:
    """(directory, created_by_us)."""
    if requested is None:
        return default_runtime_dir(), True
    try:
        os.mkdir(requested, 0o700)
    except FileExistsError:
        return requested, False
    except OSError as exc:
        raise ConfigError(f"cannot create runtime directory {requested}: {exc.strerror or exc}") from None
    return requested, True


async def run_standalone(
    settings: StandaloneSettings,
    *,
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run until SIGTERM/SIGINT (or ``Supervisor.request_stop``); return the exit code (0).

    With ``demo_backends`` (``--demo``) the demo backends run in this process, so that they
    stop with it.  Raises ConfigError/SnapshotError (one line) if it cannot start; nothing
    is left behind then.
    """
    source = FileSource(input_spec(settings), settings.watch_interval)
    if not settings.demo_backends:
        return await run_supervisor(settings, source, task_status=task_status)
    from fastingress.demo import bound_ports, open_backend_listeners, serve_backend_listeners

    try:
        demo = await open_backend_listeners(settings.demo_backends)
    except OSError as exc:
        raise ConfigError(f"--demo: {exc.strerror or exc}") from None
    outcome: int | FastIngressError = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_backend_listeners, demo)
        for name, port in bound_ports(demo):
            log.info("demo backend %s on http://127.0.0.1:%d", name, port)
        try:
            outcome = await run_supervisor(settings, source, task_status=task_status)
        except FastIngressError as exc:  # raised below, outside the nursery: one line
            outcome = exc
        nursery.cancel_scope.cancel()
    if isinstance(outcome, FastIngressError):
        raise outcome
    return outcome


async def run_supervisor(
    settings: ServingSettings,
    source: ConfigSource,
    *,
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Serve the configuration ``source`` gives until SIGTERM/SIGINT; return the exit code (0).

    The admin port is up first (``/healthz`` 200, ``/readyz`` 503 while the initial
    configuration loads: a big cluster's initial list can take a while).  Raises
    ConfigError/SnapshotError (one line) if it cannot start; nothing is left behind then.
    """
    await source.prepare()  # raises: one line, nothing bound or created yet
    probe_listen(settings.bind, settings.http_port)
    if settings.https_port:
        probe_listen(settings.bind, settings.https_port)
    listeners = await open_admin_listeners(settings)
    supervisor = Supervisor(settings, source=source)
    supervisor.admin_port = listeners[0].socket.getsockname()[1]
    failure: FastIngressError | None = None
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(admin.serve, listeners, supervisor.handle_admin)
                log.info("admin on http://%s", host_port(settings.admin_bind, supervisor.admin_port))
                nursery.start_soon(supervisor.handle_signals, signals, nursery)
                try:
                    started = await supervisor.bring_up(nursery)
                except FastIngressError as exc:  # raised below, outside the nursery: one line
                    failure = exc
                    started = False
                if started:
                    task_status.started(supervisor)
                    await supervisor.stopping.wait()
                    await supervisor.stop_workers()
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        log.info("stopped")
        return 0
    finally:
        for listener in listeners:
            listener.socket.close()
        supervisor.cleanup(remove_dir=supervisor.created_dir)
