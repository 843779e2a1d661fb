"""``limit-rate`` / ``limit-rate-after``: pacing a response to the client (nginx ``limit_rate``).

Theory of operation
-------------------
nginx's write filter lets a request have sent, by ``elapsed`` seconds after the request
started, ``limit_rate_after + limit_rate * (elapsed + 1)`` bytes (head included): one second's
worth at once, then the rate; what would go beyond waits on a timer.  ``Pacer`` is that
account (sans-I/O, in seconds of the caller's clock): ``chunk(now, pending)`` is how much may
go now and ``wait(now, pending)`` how long until the next piece may.  Pieces are at least
``quantum`` bytes (a 20th of a second's worth, 512 bytes to 16 KiB) unless less is pending,
so a slow rate is not a stream of tiny writes.

The data paths do the waiting: the event-driven core (``workers.h1forward``) holds what it
may not send yet, stops reading the upstream and resumes on a core timer; the task paths
(the ``Session``, HTTP/2 streams, HTTP/2 upstreams) sleep between writes (``send_paced``),
pacing body bytes before the codec frames them (an HTTP/2 stream's codec queues them).
The limit is per request, as in nginx: two connections of a client get twice the rate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

_MIN_QUANTUM = 512
_MAX_QUANTUM = 16384


class Pacer:
    """The byte account of one paced response (see the module docstring)."""

    __slots__ = ("after", "quantum", "rate", "sent", "start")

    def __init__(self, rate: int, after: int, start: float) -> None:
        self.rate = max(1, rate)  # bytes per second
        self.after = max(0, after)  # bytes sent before the rate applies
        self.start = start  # when the request started
        self.sent = 0
        self.quantum = min(_MAX_QUANTUM, max(_MIN_QUANTUM, self.rate // 20))

    def allowed(self, now: float) -> int:
        """Bytes that may be sent now (0 or less: none)."""
        return int(self.after + self.rate * (now - self.start + 1.0)) - self.sent

    def chunk(self, now: float, pending: int) -> int:
        """How many of ``pending`` bytes to send now (0: wait, see ``wait``)."""
        n = min(pending, self.allowed(now))
        return n if n >= min(pending, self.quantum) else 0

    def wait(self, now: float, pending: int) -> float:
        """Seconds until ``chunk`` lets a piece of ``pending`` bytes go."""
        want = self.sent + min(pending, self.quantum) - self.after
        at = self.start - 1.0 + want / self.rate
        return max(0.0, at - now) + 0.0005  # rounding: never wake up a hair too early

    def did_send(self, n: int) -> None:
        self.sent += n


async def send_paced(data: bytes, pacer: Pacer, send: Callable[[bytes], Awaitable[None]],
                     arm: Callable[[float], None]) -> None:
    """Send the body bytes ``data`` at the pace of ``pacer``: ``send(piece)`` encodes and writes
    one piece (an HTTP/2 stream's codec queues body bytes itself, so pieces are body bytes, not
    encoded ones); ``arm(extra)`` (re)sets the caller's send deadline ``extra`` seconds later
    than it would be for a write (the time we sleep)."""
    view = memoryview(data)
    while view:
        now = trio.current_time()
        n = pacer.chunk(now, len(view))
        if not n:
            wait = pacer.wait(now, len(view))
            arm(wait)
            await trio.sleep(wait)
            continue
        arm(0.0)
        await send(bytes(view[:n]))
        pacer.did_send(n)
        view = view[n:]


__all__ = ["Pacer", "send_paced"]
