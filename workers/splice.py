"""Large response bodies moved inside the kernel: upstream socket → pipe → client socket.

Theory of operation
-------------------
A response body that needs no change on its way (Content-Length framing on both sides, plain
TCP on both sides, nothing to rewrite) does not have to pass through Python at all.  Once the
head and whatever body bytes came with it are written, and at least ``SPLICE_MIN`` bytes are
still due, the ``Splicer`` takes over the readiness events of both transports (their ``raw``
hook) and moves the rest with ``os.splice`` through a pipe of its own: upstream → pipe as the
upstream sends, pipe → client as the client takes it, each call non-blocking.  Any edge of
either socket retries both directions, so a full pipe waits for the client and an empty
socket waits for the upstream.  The read timeout runs while waiting for the upstream, the
send timeout while the client does not take the pipe's bytes.

When the body is done the codecs are told (``body_sent_elsewhere``/``body_taken_elsewhere``)
and the exchange ends as usual (the connection back to the pool).  An upstream that closes
early or a failing socket ends it like any relay error: the response started, so the client
connection is cut.  Where ``os.splice`` is missing (not Linux) or no pipe can be had (out of
file descriptors), the body is copied as before; a splice call that fails mid-body is a relay
error like any other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Protocol

from workers.transport import Transport


class _Upstream(Protocol):
    transport: Transport | None


class _Owner(Protocol):
    """The client side of the exchange (``workers.h1forward.Forwarder``)."""

    transport: Transport

    def splice_waiting(self, *, client_blocked: bool) -> None: ...

    def spliced(self, moved: int) -> None: ...

    def splice_failed(self, exc: SpliceFailed) -> None: ...

SPLICE_MIN = 64 * 1024  # below this, copying costs less than setting up the pipe
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_HAVE_SPLICE = hasattr(os, "splice")
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def available() -> bool:
    return _HAVE_SPLICE


class SpliceFailed(Exception):
    """The splice broke: ``upstream`` says which side (the other side is fine)."""

    def __init__(self, message: str, *, upstream: bool) -> None:
        super().__init__(message)
        self.upstream = upstream


class Splicer:
    """Moves ``left`` body bytes from ``up`` to the client of ``owner`` (see module docstring)."""

    __slots__ = ("_in_pipe", "_left", "_rfd", "_wfd", "moved", "owner", "up")

    def __init__(self, owner: _Owner, up: _Upstream, left: int) -> None:
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(wfd, _F_SETPIPE_SZ, PIPE_SIZE)
        self._rfd = rfd
        self._wfd = wfd
        self.owner = owner
        self.up = up
        self._left = left  # still to read from the upstream
        self._in_pipe = 0  # read, not yet written to the client
        self.moved = 0

    def start(self) -> None:
        assert self.up.transport is not None
        self.up.transport.raw = self._event
        self.owner.transport.raw = self._event
        self.pump()

    def _event(self, events: int) -> None:
        self.pump()

    def pump(self) -> None:
        """Move what can move now (both directions, until neither makes progress)."""
        up = self.up
        transport = up.transport
        if transport is None:
            return
        up_fd = transport.fd
        client_fd = self.owner.transport.fd
        while True:
            progress = False
            if self._left and self._in_pipe < PIPE_SIZE:
                try:
                    n = os.splice(up_fd, self._wfd, min(self._left, PIPE_SIZE - self._in_pipe), flags=_FLAGS)
                except (BlockingIOError, InterruptedError):
                    n = -1
                except OSError as exc:
                    self._fail(SpliceFailed(f"reading the body failed: {exc}", upstream=True))
                    return
                if n == 0:
                    self._fail(SpliceFailed("closed the connection mid-response", upstream=True))
                    return
                if n > 0:
                    self._left -= n
                    self._in_pipe += n
                    progress = True
            if self._in_pipe:
                try:
                    m = os.splice(self._rfd, client_fd, self._in_pipe, flags=_FLAGS)
                except (BlockingIOError, InterruptedError):
                    m = -1
                except OSError as exc:
                    self._fail(SpliceFailed(f"writing the body failed: {exc}", upstream=False))
                    return
                if m > 0:
                    self._in_pipe -= m
                    self.moved += m
                    progress = True
            if not self._left and not self._in_pipe:
                self._finish()
                return
            if not progress:
                break
        # No progress: bytes left in the pipe mean the client's socket is full; else the upstream's
        # is empty.
        self.owner.splice_waiting(client_blocked=self._in_pipe > 0)

    def _finish(self) -> None:
        self.close()
        self.owner.spliced(self.moved)

    def _fail(self, exc: SpliceFailed) -> None:
        self.close()
        self.owner.splice_failed(exc)

    def close(self) -> None:
        """Give the transports their events back and close the pipe (idempotent)."""
        if self._rfd < 0:
            return
        transport = self.up.transport
        if transport is not None:
            transport.raw = None
        self.owner.transport.raw = None
        os.close(self._rfd)
        os.close(self._wfd)
        self._rfd = self._wfd = -1


__all__ = ["PIPE_SIZE", "SPLICE_MIN", "SpliceFailed", "Splicer", "available"]
