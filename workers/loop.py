"""The event-driven I/O core of a worker: one edge-triggered epoll set, awaited by one trio task.

Theory of operation
-------------------
A task per connection plus trio's Stream layers cost a proxied request ~300 us of CPU; the
same work stepped from readiness events costs ~30.  So the HTTP/1.1 data path (plain and TLS)
does not run in tasks.  Instead:

* every socket of that path (listeners, client connections, upstream connections) is
  non-blocking and registered ONCE in one ``select.epoll`` set, edge-triggered, for input and
  output (``EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET``): no ``epoll_ctl`` per operation;
* ONE trio task (``Core.run``) awaits ``trio.lowlevel.wait_readable`` on the epoll fd itself,
  then polls it without blocking and calls ``on_event(mask)`` of each ready handler.  Handlers
  (``workers.transport``) try the syscall first (``recv_into`` into one shared buffer,
  ``send``/``sendmsg``) and only remember what is left when the kernel says EAGAIN; an edge
  comes when there is more to do.  They hand bytes to sans-I/O protocol objects
  (``workers.h1conn``, ``workers.h1pool``), which answer by writing to their transports;
* timeouts are deadlines on objects (``Timed``) kept in one heap, checked after every
  wake-up; the wait is bounded by the earliest one.  Entries are lazy: moving a deadline
  later costs a float assignment (the old entry re-files itself when it comes up), only an
  earlier one pushes a new entry.  A finished object cancels its entry (``cancel_deadline``),
  which drops the heap's reference to it at once; cancelled entries are compacted away;
* ``call_soon`` runs a function after the current batch (e.g. a read resumed by flow
  control); ``spawn`` starts a trio task for what must wait (a DNS lookup, an HTTP/2 or
  Upgrade handoff) whose result comes back through a plain call.  Anything that other tasks
  change wakes the loop by moving its sleep deadline.

trio still owns the process: signals, snapshot swaps, stats, drain, HTTP/2 sessions, tunnels
and DNS run as ordinary tasks beside this one.  A handler that raises loses its own
connection (``abort``), never the worker.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import select
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

log = logging.getLogger("fastingress.worker")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLRDHUP = select.EPOLLRDHUP
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
EPOLLET = select.EPOLLET
INPUT_EVENTS = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR
ALL_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET

READ_BUFFER = 256 * 1024
MAX_EVENTS = 1024
_INF = float("inf")


class Handler(Protocol):
    def on_event(self, events: int) -> None: ...

    def abort(self) -> None: ...


class Timed:
    """Something with a deadline (``inf``: none); ``on_timeout`` runs when it passes."""

    __slots__ = ("deadline", "timer_entry")

    def __init__(self) -> None:
        self.deadline = _INF
        self.timer_entry: list[Any] | None = None  # its live heap entry [at, seq, self]

    def on_timeout(self) -> None:
        raise NotImplementedError


class Core:
    """One per worker process; see the module docstring."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.fd = self.epoll.fileno()
        self.handlers: dict[int, Handler] = {}
        self.heap: list[list[Any]] = []  # [deadline, seq, Timed | None], a min-heap
        self._live = 0  # heap entries whose object is set
        self._seq = itertools.count()
        self.now = trio.current_time()
        self.soon: deque[Callable[[], object]] = deque()
        self.rbuf = bytearray(READ_BUFFER)
        self.rview = memoryview(self.rbuf)
        self._sleep: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self.closed = False

    # ---- registration ----------------------------------------------------------------

    def add(self, fd: int, handler: Handler, events: int = ALL_EVENTS) -> None:
        self.handlers[fd] = handler
        self.epoll.register(fd, events)

    def remove(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(fd)

    def forget(self, fd: int) -> None:
        """Drop ``fd``'s handler before the fd is closed (which removes it from the set)."""
        self.handlers.pop(fd, None)

    # ---- timers ------------------------------------------------------------------------

    def set_deadline(self, obj: Timed, deadline: float) -> None:
        obj.deadline = deadline
        entry = obj.timer_entry
        if entry is None or deadline < entry[0]:
            if deadline == _INF:
                return
            if entry is not None:
                entry[2] = None  # superseded: it will be skipped when it comes up
                self._live -= 1
            self._push(obj, deadline)
            sleep = self._sleep
            if sleep is not None and deadline < sleep.deadline:
                sleep.deadline = deadline

    def cancel_deadline(self, obj: Timed) -> None:
        """``obj`` is done: forget its deadline and let the heap drop its reference now (a
        closed connection must not stay alive until its old deadline comes up)."""
        obj.deadline = _INF
        entry = obj.timer_entry
        if entry is not None:
            entry[2] = None
            obj.timer_entry = None
            self._live -= 1

    def _push(self, obj: Timed, deadline: float) -> None:
        entry: list[Any] = [deadline, next(self._seq), obj]
        obj.timer_entry = entry
        heap = self.heap
        heapq.heappush(heap, entry)
        self._live += 1
        if len(heap) > 4096 and len(heap) > 4 * self._live:
            # Mostly cancelled entries (connections come and go): drop them in one pass.
            self.heap[:] = [e for e in heap if e[2] is not None]
            heapq.heapify(self.heap)

    def _run_timers(self) -> None:
        heap = self.heap
        now = self.now
        while heap and heap[0][0] <= now:
            _, _, obj = heapq.heappop(heap)
            if obj is None:
                continue  # cancelled or superseded
            obj.timer_entry = None
            self._live -= 1
            deadline = obj.deadline
            if deadline <= now:
                obj.deadline = _INF
                try:
                    obj.on_timeout()
                except Exception:
                    log.exception("internal error in a timeout handler")
                    _abort_quietly(obj)
            elif deadline < _INF:
                self._push(obj, deadline)

    # ---- deferred work -----------------------------------------------------------------

    def call_soon(self, fn: Callable[[], object]) -> None:
        self.soon.append(fn)
        sleep = self._sleep
        if sleep is not None:
            sleep.deadline = -_INF

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a trio task (in the connection nursery) for work that must wait; a bug in it
        is logged and loses that work only, never the worker."""
        assert self._nursery is not None
        self._nursery.start_soon(_guarded, fn, *args)

    def _run_soon(self) -> None:
        soon = self.soon
        for _ in range(len(soon)):
            fn = soon.popleft()
            try:
                fn()
            except Exception:
                log.exception("internal error in a deferred call")

    # ---- the loop ----------------------------------------------------------------------

    async def run(self, nursery: trio.Nursery) -> None:
        """The core's task: wait for readiness, dispatch, run timers and deferred calls."""
        self._nursery = nursery
        poll = self.epoll.poll
        handlers = self.handlers
        heap = self.heap
        wait_readable = trio.lowlevel.wait_readable
        current_time = trio.current_time
        try:
            while not self.closed:
                if self.soon:
                    await trio.lowlevel.checkpoint()
                else:
                    with trio.CancelScope(deadline=heap[0][0] if heap else _INF) as scope:
                        self._sleep = scope
                        await wait_readable(self.fd)
                    self._sleep = None
                self.now = current_time()
                while True:
                    events = poll(0, MAX_EVENTS)
                    for fd, mask in events:
                        handler = handlers.get(fd)
                        if handler is None:
                            continue
                        try:
                            handler.on_event(mask)
                        except Exception:
                            log.exception("internal error on a connection; closing it")
                            _abort_quietly(handler)
                    if len(events) < MAX_EVENTS:
                        break
                if heap and heap[0][0] <= self.now:
                    self._run_timers()
                if self.soon:
                    self._run_soon()
        finally:
            self._sleep = None

    def close(self) -> None:
        """Abort every handler still registered and close the epoll set."""
        self.closed = True
        for handler in list(self.handlers.values()):
            _abort_quietly(handler)
        self.handlers.clear()
        self.epoll.close()


async def _guarded(fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
    try:
        await fn(*args)
    except Exception:
        log.exception("internal error in a task of the core")


def _abort_quietly(obj: object) -> None:
    abort = getattr(obj, "abort", None)
    if abort is None:
        return
    try:
        abort()
    except Exception:
        log.exception("internal error while aborting a connection")


__all__ = [
    "ALL_EVENTS", "EPOLLERR", "EPOLLET", "EPOLLHUP", "EPOLLIN", "EPOLLOUT", "EPOLLRDHUP", "INPUT_EVENTS",
    "Core", "Handler", "Timed",
]
