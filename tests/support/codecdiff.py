"""Drive an HTTP/1.1 codec (``workers.http1`` on h11 or ``workers.llhttp``) over bytes and
record what a proxy would see, normalised so that two codecs can be compared.

A *transcript* is a tuple of steps:

* ``("head", method, target, version, headers, expect_100)`` -- a request head (headers as
  (lower-case name, value) bytes pairs; ``expect_100``: the codec waits for a 100 Continue);
* ``("status", status, version, headers)`` -- a response head (the reason is not compared:
  upstreams may send any);
* ``("body", data)`` -- consecutive body events merged;
* ``("end",)``, ``("closed",)``;
* ``("reply", reusable)`` -- the driver answered the message; whether the connection may carry
  another one (``reusable``);
* ``("switched", trailing_data)`` -- the driver accepted a protocol switch;
* ``("error", status)`` -- the codec raised a peer error (``status_hint``); nothing follows.

The server driver answers each request when its end arrives, the way the proxy does: with a
``101`` when the request asks for a protocol switch and ``accept_upgrade`` is set, else with a
small ``200`` (or ``reply_status``), then starts the next cycle if the codec allows it.  The
client driver sends one request per expected response (``methods``) and reads the responses.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fastingress.errors import PeerError
from workers import http1, llhttp
from workers.http1 import Body, RequestHead, ResponseHead, Signal

Step = tuple[Any, ...]
Transcript = tuple[Step, ...]

MAX_HEAD = 16 * 1024


def server_codecs() -> dict[str, Callable[[int], Any]]:
    return {"h11": http1.ServerCodec, "llhttp": llhttp.ServerCodec}


def client_codecs() -> dict[str, Callable[[], Any]]:
    return {"h11": http1.ClientCodec, "llhttp": llhttp.ClientCodec}


def _headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((bytes(n).lower(), bytes(v)) for n, v in headers)


def _tokens(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    out: list[bytes] = []
    for n, v in headers:
        if n == name:
            out.extend(t.strip().lower() for t in v.split(b",") if t.strip())
    return out


def wants_upgrade(head: RequestHead) -> bool:
    """Whether a proxy may switch protocols for ``head``: an ``Upgrade`` with a protocol in it,
    and ``Connection: upgrade`` (what h11 and llhttp both require)."""
    return bool(_tokens(head.headers, b"upgrade")) and b"upgrade" in _tokens(head.headers, b"connection")


class _Recorder:
    def __init__(self) -> None:
        self.steps: list[Step] = []

    def add(self, step: Step) -> None:
        if step[0] == "body":
            if not step[1]:
                return
            if self.steps and self.steps[-1][0] == "body":
                self.steps[-1] = ("body", self.steps[-1][1] + step[1])
                return
        self.steps.append(step)


def run_server(
    factory: Callable[[int], Any],
    pieces: Sequence[bytes],
    *,
    eof: bool = True,
    accept_upgrade: bool = True,
    max_head: int = MAX_HEAD,
) -> Transcript:
    """Feed ``pieces`` (then EOF if ``eof``) to a server codec, answering as the proxy does."""
    codec = factory(max_head)
    rec = _Recorder()
    head: RequestHead | None = None
    switched = False

    def drain() -> bool:
        nonlocal head, switched
        while True:
            try:
                ev = codec.next_event()
            except PeerError as exc:
                rec.add(("error", exc.status_hint))
                return False
            if ev is Signal.NEED_DATA:
                return True
            if type(ev) is RequestHead:
                head = ev
                rec.add(("head", bytes(ev.method), bytes(ev.target), bytes(ev.http_version),
                         _headers(ev.headers), bool(codec.waiting_for_100_continue)))
            elif type(ev) is Body:
                rec.add(("body", bytes(ev.data)))
            elif ev is Signal.END:
                rec.add(("end",))
                assert head is not None
                if accept_upgrade and wants_upgrade(head):
                    codec.informational(101, [(b"upgrade", b"x"), (b"connection", b"upgrade")])
                    switched = True
                    return False
                # (h11 switches protocols on a 2xx answer to CONNECT: answer as nginx does)
                status = 405 if head.method == b"CONNECT" else 200
                codec.response_head(status, [(b"content-length", b"2")])
                if head.method != b"HEAD":
                    codec.data(b"ok")
                codec.end()
                reusable = bool(codec.reusable)
                rec.add(("reply", reusable))
                if not reusable:
                    return False
                codec.start_next_cycle()
                head = None
            elif ev is Signal.CLOSED:
                rec.add(("closed",))
                return False
            else:  # PAUSED outside of a switch: the codec waits for something we did not do
                rec.add(("paused",))
                return False

    going = True
    for piece in pieces:
        if piece and (going or switched):
            codec.receive_data(piece)
            going = going and drain()
    if eof and going:
        codec.receive_data(b"")
        drain()
    if switched:  # everything after the switch is the new protocol's
        rec.add(("switched", bytes(codec.trailing_data)))
    return tuple(rec.steps)


def run_client(
    factory: Callable[[], Any],
    methods: Sequence[bytes],
    pieces: Sequence[bytes],
    *,
    eof: bool = True,
) -> Transcript:
    """Send a request for each of ``methods`` in turn (``b"GET+U"``: a GET asking for a protocol
    switch) and read the responses from ``pieces``.  A ``reply`` step says whether the codec
    would reuse the connection and whether bytes beyond the response were buffered."""
    codec = factory()
    rec = _Recorder()
    queue = list(methods)
    switched = False

    def send() -> bool:
        if not queue:
            return False
        method = queue.pop(0)
        headers = [(b"host", b"h")]
        if method.endswith(b"+U"):
            method = method[:-2]
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
        codec.request_head(method, b"/", headers)
        codec.end()
        return True

    def drain() -> bool:
        nonlocal switched
        while True:
            try:
                ev = codec.next_event()
            except PeerError as exc:
                rec.add(("error", exc.status_hint))
                return False
            if ev is Signal.NEED_DATA:
                return True
            if type(ev) is ResponseHead:
                rec.add(("status", ev.status, bytes(ev.http_version), _headers(ev.headers), bytes(ev.reason)))
                if ev.status == 101:
                    switched = True
                    return False
            elif type(ev) is Body:
                rec.add(("body", bytes(ev.data)))
            elif ev is Signal.END:
                rec.add(("end",))
                reusable = bool(codec.reusable)
                rec.add(("reply", reusable, bool(codec.trailing_data)))
                if not reusable:
                    return False
                codec.start_next_cycle()
                if not send():
                    return False
            elif ev is Signal.CLOSED:
                rec.add(("closed",))
                return False
            else:
                rec.add(("paused",))
                return False

    send()
    going = True
    for piece in pieces:
        if piece and (going or switched):
            codec.receive_data(piece)
            going = going and drain()
    if eof and going:
        codec.receive_data(b"")
        drain()
    if switched:
        rec.add(("switched", bytes(codec.trailing_data)))
    return tuple(rec.steps)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """``data`` cut at the given offsets."""
    out: list[bytes] = []
    last = 0
    for cut in sorted(set(cuts)):
        if 0 < cut < len(data):
            out.append(data[last:cut])
            last = cut
    out.append(data[last:])
    return out


def random_splits(data: bytes, rng: random.Random, count: int) -> list[list[bytes]]:
    """``count`` random ways to cut ``data`` (including byte by byte)."""
    ways = [[data[i:i + 1] for i in range(len(data))]]
    for _ in range(count):
        n = rng.randint(1, max(1, min(8, len(data))))
        ways.append(split(data, (rng.randint(1, max(1, len(data) - 1)) for _ in range(n))))
    return ways


# ---- the rule -----------------------------------------------------------------------------

def _is_prefix(short: Transcript, long: Transcript) -> bool:
    """``short`` is the start of ``long`` (the last body of ``short`` may be cut short)."""
    if len(short) > len(long):
        return False
    for i, step in enumerate(short):
        other = long[i]
        if step == other:
            continue
        last = i == len(short) - 1
        if last and step[0] == "body" and other[0] == "body" and other[1].startswith(step[1]):
            continue
        return False
    return True


def agreement(ref: Transcript, fast: Transcript, *, client: bool = False) -> str | None:
    """``None`` when ``fast`` (llhttp) agrees with ``ref`` (h11) by the differential rule, else why not.

    The rule: the same transcript, or ``fast`` stops with a 4xx/5xx error after a prefix of
    what ``ref`` saw (so whatever the proxy forwarded before the error is what h11 read too).
    """
    if fast == ref:
        return None
    n = len(fast)
    if (
        client and n <= len(ref) and fast[-1][:2] == ("reply", False) and ref[n - 1][:2] == ("reply", True)
        and _is_prefix(fast[:-1], ref)
    ):
        # llhttp does not reuse an upstream connection that h11 would reuse: after bytes
        # beyond an answer (h11 would read them as the next answer) or a body that ended
        # at EOF.  Closing an upstream connection is always safe.
        return None
    if fast and fast[-1][0] == "error":
        status = fast[-1][1]
        if not 400 <= status <= 599:
            return f"llhttp error status {status} is not 4xx/5xx"
        if _is_prefix(fast[:-1], ref):
            return None
        return "llhttp saw something else before its error"
    if ref and ref[-1][0] == "error":
        return "h11 refuses what llhttp accepts"
    return "both accept but disagree"


def first_answer(transcript: Transcript) -> Transcript:
    """A client transcript up to its first answer, without the reuse flags (which depend on
    whether bytes beyond the answer had arrived when it ended)."""
    out = []
    for step in transcript:
        if step[0] == "reply":
            out.append(("reply",))
            break
        out.append(step)
    return tuple(out)


def check(ref: Transcript, fast: Transcript, *, client: bool = False) -> None:
    why = agreement(ref, fast, client=client)
    assert why is None, f"{why}\n  h11:    {ref}\n  llhttp: {fast}"
