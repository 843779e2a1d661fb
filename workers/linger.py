"""Lingering close (nginx's ``lingering_close``) for connections served by tasks.

When we end a connection while the client may still be sending (we answered before reading the
whole request, or sent HTTP/2 GOAWAY), closing at once makes the kernel answer the unread input
with a reset, which can destroy our answer before the client reads it.  So: send our FIN (or TLS
close_notify) first, then read and discard for at most ``LINGERING_TIME``, giving up after
``LINGERING_TIMEOUT`` without a byte (nginx's ``lingering_time``/``lingering_timeout``).  The
event-driven core does the same in ``workers.h1conn``.
"""

from __future__ import annotations

import trio

LINGERING_TIME = 30.0
LINGERING_TIMEOUT = 5.0
_READ = 65536


async def linger(stream: trio.abc.Stream) -> None:
    """Half-close ``stream`` if it can, then discard input until EOF or a timeout (bounded)."""
    with trio.move_on_after(LINGERING_TIME):
        try:
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
            while True:
                with trio.move_on_after(LINGERING_TIMEOUT) as idle:
                    data = await stream.receive_some(_READ)
                if idle.cancelled_caught or not data:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return


__all__ = ["LINGERING_TIME", "LINGERING_TIMEOUT", "linger"]
