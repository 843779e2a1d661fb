"""Worker slots: spawning ``python -m workers``, restart backoff, notification pipes, stats sockets."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import trio

from workers.config import WorkerSettings, WorkerStats, encode_settings, stats_decoder

log = logging.getLogger("fastingress.supervisor")

BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 5.0
BACKOFF_RESET_AFTER = 10.0
STATS_MAX_BYTES = 16 * 1024 * 1024


def next_backoff(previous: float, ran_for: float) -> float:
    """Delay before restarting a worker that exited after running ``ran_for`` seconds.

    Starts at 50 ms and doubles up to 5 s; a worker that ran 10 s or more starts over.
    ``previous`` is the last delay used for this slot (0 if none).
    """
    if ran_for >= BACKOFF_RESET_AFTER or previous <= 0:
        return BACKOFF_INITIAL
    return min(previous * 2, BACKOFF_MAX)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


# A *standby* worker: ``python -c STANDBY_CODE FDS READY`` imports the worker code (most of a
# worker's start-up time) and then blocks reading its WorkerSettings JSON line from stdin.
# When a worker dies the supervisor hands its slot to the standby by writing that line, so
# the replacement serves in tens of milliseconds instead of the ~0.4 s Python start-up.
# FDS lists every slot's notification pipe read end (all passed, as the slot is not known
# yet); the standby closes all but its own.  EOF on stdin (supervisor gone) exits quietly.
# It writes one byte to the READY fd once its imports are done.
# It runs as -c code, so the worker process never imports the supervisor package.
STANDBY_CODE = """\
import os, sys
from workers.__main__ import main
from workers.config import decode_settings
from workers.process import set_title
set_title("fastingress: standby worker")
try:
    os.write(int(sys.argv[2]), b"r")
    os.close(int(sys.argv[2]))
except OSError:
    pass  # nobody listens (a standby started for a slot right away)
line = sys.stdin.buffer.readline().strip()
if not line:
    raise SystemExit(0)
text = line.decode()
settings = decode_settings(text)
for fd in (int(x) for x in sys.argv[1].split(",") if x):
    if fd != settings.notify_fd:
        os.close(fd)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
raise SystemExit(main(["--settings", text]))
"""


def worker_python() -> list[str]:
    """The interpreter for worker processes: ``-P`` keeps the current directory off ``sys.path``,
    so a source checkout in it (``pip install .`` then ``fastingress`` run from the checkout)
    cannot shadow the installed, compiled ``workers`` package (workers/build.py)."""
    return [sys.executable, "-P"]


def worker_env() -> dict[str, str]:
    """The environment for worker processes: ours, with the directory our ``workers`` package
    comes from first on ``PYTHONPATH``, so workers always run the very code the supervisor
    would (the same tree, compiled or interpreted), however the supervisor was started."""
    env = dict(os.environ)
    spec = importlib.util.find_spec("workers")
    if spec is not None and spec.origin:
        root = str(Path(spec.origin).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


async def spawn_standby(notify_fds: Sequence[int]) -> tuple[trio.Process, int]:
    """(process, read end of its readiness pipe: one byte once it has imported the worker)."""
    ready_read, ready_write = os.pipe()
    try:
        argv = [*worker_python(), "-c", STANDBY_CODE, ",".join(map(str, notify_fds)), str(ready_write)]
        fds = (*notify_fds, ready_write)
        process = await trio.lowlevel.open_process(
            argv, pass_fds=fds, stdin=subprocess.PIPE, env=worker_env())
    except BaseException:
        os.close(ready_read)
        raise
    finally:
        os.close(ready_write)
    return process, ready_read


async def wait_ready(ready_read: int) -> bool:
    """True once the standby said it is ready; False if it closed the pipe without a word."""
    while True:
        await trio.lowlevel.wait_readable(ready_read)
        try:
            return bool(os.read(ready_read, 1))
        except BlockingIOError:
            continue


async def assign_standby(process: trio.Process, settings: WorkerSettings) -> bool:
    """Hand a slot to a standby; False if it is gone (the caller starts another)."""
    if process.stdin is None or process.returncode is not None:
        return False
    try:
        await process.stdin.send_all(encode_settings(settings).encode() + b"\n")
        await process.stdin.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


def worker_argv(command: Sequence[str], settings: WorkerSettings) -> list[str]:
    prefix = list(command) if command else [*worker_python(), "-m", "workers"]
    return [*prefix, "--settings", encode_settings(settings)]


@dataclass
class WorkerSlot:
    """One worker position; its process is replaced in place when it exits."""

    index: int
    settings: WorkerSettings
    notify_write: int  # our end of the notification pipe (non-blocking)
    process: trio.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = 0.0
    last_exit: str = ""

    @property
    def pid(self) -> int | None:
        proc = self.process
        if proc is None or proc.returncode is not None:
            return None
        return proc.pid

    def notify(self) -> None:
        """One byte down the pipe: 'a new generation is out'.  Never blocks."""
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.notify_write, b"\x01")


def make_notify_pipe() -> tuple[int, int]:
    """(read end for the worker, non-blocking write end for us); neither is inherited by default."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    return read_end, write_end


async def spawn(slot: WorkerSlot, command: Sequence[str]) -> trio.Process:
    argv = worker_argv(command, slot.settings)
    fds = (slot.settings.notify_fd,) if slot.settings.notify_fd >= 0 else ()
    return await trio.lowlevel.open_process(argv, pass_fds=fds, stdin=subprocess.DEVNULL, env=worker_env())


async def fetch_stats(path: str, timeout: float) -> WorkerStats | None:
    """Ask one worker's stats socket; None if it does not answer in time or answers garbage."""
    chunks: list[bytes] = []
    size = 0
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_unix_socket(path)
            async with stream:
                while data := await stream.receive_some(65536):
                    chunks.append(data)
                    size += len(data)
                    if size > STATS_MAX_BYTES:
                        log.warning("stats socket %s: answer too large, ignored", path)
                        return None
        except (OSError, trio.BrokenResourceError) as exc:
            log.debug("stats socket %s: %s", path, exc)
            return None
        try:
            return stats_decoder.decode(b"".join(chunks))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("stats socket %s: undecodable answer: %s", path, exc)
            return None
    log.debug("stats socket %s: no answer within %.1fs", path, timeout)
    return None
