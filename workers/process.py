"""Process-level chores of fastingress processes: readable titles, and workers that never
outlive their supervisor.

* ``set_title("fastingress: worker 0")`` is what ``ps``, ``top`` and ``/proc/PID/cmdline``
  show (the ``setproctitle`` package rewrites argv in place; without it, only the 15-byte
  kernel name is set through ``prctl(PR_SET_NAME)``).  It also hides the worker's long
  ``--settings`` JSON from ``ps``.
* ``exit_with_parent(pid)``: a worker whose supervisor is SIGKILLed (or OOM-killed) must not
  keep serving a configuration nobody updates.  ``PR_SET_PDEATHSIG`` does not fit: it fires
  when the parent *thread* that forked us exits, and trio forks from a worker thread that
  it retires after 10 s idle.  Instead a daemon thread waits on a pidfd of the supervisor
  (readable once that process has exited; Linux 5.3+) or, where there is none, checks
  ``getppid()`` once a second, and then sends this process SIGTERM: the worker drains its
  in-flight requests as on any shutdown and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import signal
import threading

log = logging.getLogger("fastingress.worker")

PR_SET_NAME = 15
POLL_INTERVAL = 1.0  # seconds between getppid() checks where pidfds are missing


def set_title(title: str) -> None:
    """Show ``title`` for this process in ps/top (best effort, never fails)."""
    try:
        import setproctitle
    except ImportError:
        _set_kernel_name(title)
        return
    setproctitle.setproctitle(title)


def _set_kernel_name(title: str) -> None:
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(title.encode()[:15]), 0, 0, 0)


def _open_pidfd(pid: int) -> int | None:
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return None
    return fd


def _wait_for_exit(pid: int, pidfd: int | None) -> None:
    if pidfd is not None:
        try:
            while not select.select([pidfd], [], [])[0]:
                pass
        finally:
            os.close(pidfd)
        return
    while os.getppid() == pid:
        threading.Event().wait(POLL_INTERVAL)


def exit_with_parent(pid: int) -> None:
    """SIGTERM this process once process ``pid`` (our parent, the supervisor) is gone."""
    if pid <= 0:
        return
    pidfd = _open_pidfd(pid)
    if os.getppid() != pid:  # gone already (we were reparented); the pidfd may name another
        if pidfd is not None:
            os.close(pidfd)
        log.warning("the supervisor (pid %d) is gone: stopping", pid)
        os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        _wait_for_exit(pid, pidfd)
        log.warning("the supervisor (pid %d) is gone: draining and stopping", pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


__all__ = ["exit_with_parent", "set_title"]
