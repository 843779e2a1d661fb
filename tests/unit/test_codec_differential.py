"""Differential tests of the HTTP/1.1 codecs: llhttp (``workers.llhttp``, the hot path) against
h11 (``workers.http1``, the reference).

The rule, for any input: both codecs yield the same events (method, target, version,
headers, body bytes, message boundaries, reuse of the connection), or the llhttp codec stops
with a 4xx/5xx error after a prefix of what h11 read (so the proxy answers 4xx and closes, and
whatever it forwarded before is what h11 read too).  Feeding the input in pieces never changes
what llhttp reads.  ``tests/support/codecdiff.py`` drives the codecs and states the rule;
``tests/support/httpgen.py`` generates near-valid HTTP.

Two corpora of named smuggling and desync cases state what llhttp does with each (as a
summary: heads, bodies, ends, answers, errors) and check the rule on each, whole and split at
every position.  Hypothesis adds thousands of generated inputs (about 20 s of CPU); CI runs
them derandomized, so every run checks the same examples.  A deeper, random search to run by
hand: ``CODEC_FUZZ_EXAMPLES=20000 pytest tests/unit/test_codec_differential.py -o timeout=0``.
"""

from __future__ import annotations

import os
import random

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import httpgen
from tests.support.codecdiff import (
    Transcript,
    check,
    client_codecs,
    first_answer,
    random_splits,
    run_client,
    run_server,
    server_codecs,
    split,
)
from workers import http1, llhttp

_FUZZ = int(os.environ.get("CODEC_FUZZ_EXAMPLES", "0"))


def _settings(examples: int) -> settings:
    return settings(
        max_examples=_FUZZ or examples,
        derandomize=not _FUZZ,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def summary(transcript: Transcript) -> list[str]:
    """A transcript in short words: ``GET / 1.1``, ``body b'..'``, ``end``, ``reply keep``..."""
    out = []
    for step in transcript:
        kind = step[0]
        if kind == "head":
            out.append(f"{step[1].decode('latin-1')} {step[2].decode('latin-1')} {step[3].decode()}"
                       + (" expect" if step[5] else ""))
        elif kind == "status":
            out.append(f"{step[1]} {step[4].decode('latin-1')}".rstrip())
        elif kind == "body":
            out.append(f"body {step[1]!r}")
        elif kind == "reply":
            out.append("reply " + ("keep" if step[1] else "close"))
        elif kind in ("switched", "error"):
            out.append(f"{kind} {step[1]!r}")
        else:
            out.append(kind)
    return out


H = b"Host: a\r\n"


def req(line: bytes = b"GET / HTTP/1.1", headers: bytes = H, body: bytes = b"") -> bytes:
    return line + b"\r\n" + headers + b"\r\n" + body


def post(headers: bytes, body: bytes) -> bytes:
    return req(b"POST / HTTP/1.1", H + headers, body)


def chunked(body: bytes) -> bytes:
    return post(b"Transfer-Encoding: chunked\r\n", body)


GET = ["GET / 1.1", "end", "reply keep"]
SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"

# (name, input, what the llhttp codec reads: see ``summary``)
SERVER_CASES: list[tuple[str, bytes, list[str]]] = [
    ("simple GET", req(), [*GET, "closed"]),
    ("pipelined requests", req() + post(b"Content-Length: 3\r\n", b"abc") + req(b"HEAD /h HTTP/1.1"),
     [*GET, "POST / 1.1", "body b'abc'", "end", "reply keep", "HEAD /h 1.1", "end", "reply keep", "closed"]),
    ("a request hidden in a body", post(b"Content-Length: %d\r\n" % len(SMUGGLED), SMUGGLED),
     ["POST / 1.1", f"body {SMUGGLED!r}", "end", "reply keep", "closed"]),
    # Content-Length and Transfer-Encoding (h11: chunked wins; llhttp and nginx: 400)
    ("CL+TE", post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
     ["error 400"]),
    ("TE+CL", post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n" + SMUGGLED),
     ["error 400"]),
    ("CL+TE on HTTP/1.0", req(b"POST / HTTP/1.0", b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                              b"0\r\n\r\n"), ["error 400"]),
    ("duplicate Content-Length", post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"), ["error 400"]),
    ("conflicting Content-Length", post(b"Content-Length: 3\r\nContent-Length: 30\r\n", b"abc"),
     ["error 400"]),
    ("Content-Length: 5, 5", post(b"Content-Length: 5, 5\r\n", b"abcde"), ["error 400"]),
    ("Content-Length: +5", post(b"Content-Length: +5\r\n", b"abcde"), ["error 400"]),
    ("Content-Length: -1", post(b"Content-Length: -1\r\n", b""), ["error 400"]),
    ("Content-Length: 0x5", post(b"Content-Length: 0x5\r\n", b"abcde"), ["error 400"]),
    ("Content-Length: 5 5", post(b"Content-Length: 5 5\r\n", b"abcde"), ["error 400"]),
    ("Content-Length of 20 digits", post(b"Content-Length: 99999999999999999999\r\n", b""), ["error 400"]),
    ("Content-Length with leading zeros", post(b"Content-Length: 003\r\n", b"abc"),
     ["POST / 1.1", "body b'abc'", "end", "reply keep", "closed"]),
    ("Content-Length: 0", post(b"Content-Length: 0\r\n", b"") + req(),
     ["POST / 1.1", "end", "reply keep", *GET, "closed"]),
    # line folding, line ends, whitespace
    ("obs-fold", req(headers=H + b"X-A: a\r\n b\r\n"), ["error 400"]),
    ("obs-fold of Transfer-Encoding", post(b"Transfer-Encoding: gzip\r\n chunked\r\n", b"0\r\n\r\n"),
     ["error 400"]),
    ("bare LF line ends", b"GET / HTTP/1.1\nHost: a\n\n", ["error 400"]),
    ("bare LF ends the head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", ["error 400"]),
    ("bare LF after a header", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", ["error 400"]),
    ("bare CR in a header", req(headers=H + b"X-A: a\rTransfer-Encoding: chunked\r\n"), ["error 400"]),
    ("bare CR ends a line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", ["error 400"]),
    ("space before the colon", post(b"Content-Length : 3\r\n", b"abc"), ["error 400"]),
    ("tab before the colon", post(b"Transfer-Encoding\t: chunked\r\n", b"0\r\n\r\n"), ["error 400"]),
    ("space in a header name", req(headers=H + b"X A: 1\r\n"), ["error 400"]),
    ("odd character in a header name", req(headers=H + b"X(: 1\r\n"), ["error 400"]),
    ("empty header name", req(headers=H + b": 1\r\n"), ["error 400"]),
    ("header line without a colon", req(headers=H + b"no colon\r\n"), ["error 400"]),
    ("NUL in a header value", req(headers=H + b"X-A: a\x00b\r\n"), ["error 400"]),
    ("DEL in a header value", req(headers=H + b"X-A: a\x7fb\r\n"), ["error 400"]),
    ("obs-text in a header value", req(headers=H + b"X-A: caf\xe9\r\n"), [*GET, "closed"]),
    ("tabs and spaces around a value", req(headers=H + b"X-A: \t a b \t\r\n"), [*GET, "closed"]),
    ("empty line before the request", b"\r\n" + req(), ["error 400"]),
    ("bare LF before the request", b"\n" + req(), ["error 400"]),
    ("empty line between requests", req() + b"\r\n" + req(), [*GET, "error 400"]),
    ("empty line after a body", post(b"Content-Length: 3\r\n", b"abc\r\n") + req(),
     ["POST / 1.1", "body b'abc'", "end", "reply keep", "error 400"]),
    # chunked bodies
    ("chunked with trailers", chunked(b"3\r\nabc\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n") + req(),
     ["POST / 1.1", "body b'abc'", "end", "reply keep", *GET, "closed"]),
    ("chunk extensions", chunked(b"3;a=b;c=\"d e\";f\r\nabc\r\n0;x=1\r\n\r\n"),
     ["POST / 1.1", "body b'abc'", "end", "reply keep", "closed"]),
    ("upper-case hex chunk size", chunked(b"A\r\n0123456789\r\n0\r\n\r\n"),
     ["POST / 1.1", "body b'0123456789'", "end", "reply keep", "closed"]),
    ("chunk size of 17 hex digits", chunked(b"10000000000000000\r\nabc\r\n0\r\n\r\n"),
     ["POST / 1.1", "error 400"]),
    ("chunk size 0x10000000000000000", chunked(b"0x10000000000000000\r\nabc\r\n0\r\n\r\n"),
     ["POST / 1.1", "error 400"]),
    ("chunk size with 0x", chunked(b"0x3\r\nabc\r\n0\r\n\r\n"), ["POST / 1.1", "error 400"]),
    ("negative chunk size", chunked(b"-3\r\nabc\r\n0\r\n\r\n"), ["POST / 1.1", "error 400"]),
    ("empty chunk size", chunked(b"\r\nabc\r\n0\r\n\r\n"), ["POST / 1.1", "error 400"]),
    ("space after the chunk size", chunked(b"3 \r\nabc\r\n0\r\n\r\n"), ["POST / 1.1", "error 400"]),
    ("space before a chunk extension", chunked(b"3 ;a=b\r\nabc\r\n0\r\n\r\n"), ["POST / 1.1", "error 400"]),
    ("control character in a chunk extension", chunked(b"3;a=\x01\r\nabc\r\n0\r\n\r\n"),
     ["POST / 1.1", "error 400"]),
    ("chunk longer than its size", chunked(b"3\r\nabcd\r\n0\r\n\r\n"),
     ["POST / 1.1", "body b'abc'", "error 400"]),
    ("chunk shorter than its size", chunked(b"5\r\nabc\r\n0\r\n\r\n"),
     ["POST / 1.1", "body b'abc\\r\\n'", "error 400"]),
    ("bare LF after chunk data", chunked(b"3\r\nabc\n0\r\n\r\n"), ["POST / 1.1", "body b'abc'", "error 400"]),
    ("bare LF after the chunk size", chunked(b"3\nabc\r\n0\r\n\r\n"), ["POST / 1.1", "error 400"]),
    ("obs-fold in trailers", chunked(b"0\r\nX-T: 1\r\n 2\r\n\r\n"), ["POST / 1.1", "error 400"]),
    ("framing header in trailers", chunked(b"0\r\nContent-Length: 5\r\n\r\n"), ["POST / 1.1", "error 400"]),
    # Transfer-Encoding variants (h11: 501 unless exactly "chunked")
    ("TE: chunked, gzip", post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), ["error 501"]),
    ("TE: gzip, chunked", post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"), ["error 501"]),
    ("TE: xchunked", post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"), ["error 501"]),
    ("TE: identity", post(b"Transfer-Encoding: identity\r\n", b""), ["error 501"]),
    ("TE: chunked with a trailing space", post(b"Transfer-Encoding: chunked \r\n", b"3\r\nabc\r\n0\r\n\r\n"),
     ["POST / 1.1", "body b'abc'", "end", "reply keep", "closed"]),
    ("TE: Chunked", post(b"Transfer-Encoding: Chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
     ["POST / 1.1", "body b'abc'", "end", "reply keep", "closed"]),
    ("two TE headers", post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
     ["error 501"]),
    ("TE: chunked, chunked", post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"), ["error 501"]),
    ("chunked HTTP/1.0 request",
     req(b"POST / HTTP/1.0", b"Transfer-Encoding: chunked\r\n", b"1\r\na\r\n0\r\n\r\n"),
     ["POST / 1.0", "body b'a'", "end", "reply close"]),
    # request lines
    ("absolute-form target", req(b"GET http://a/x?y=1 HTTP/1.1"),
     ["GET http://a/x?y=1 1.1", "end", "reply keep", "closed"]),
    ("asterisk-form target", req(b"OPTIONS * HTTP/1.1"), ["OPTIONS * 1.1", "end", "reply keep", "closed"]),
    ("authority-form CONNECT", req(b"CONNECT a:443 HTTP/1.1"), ["error 405"]),
    ("fragment in the target", req(b"GET /a#f HTTP/1.1"), ["GET /a#f 1.1", "end", "reply keep", "closed"]),
    ("two spaces before the target", req(b"GET  / HTTP/1.1"), ["error 400"]),
    ("two spaces before the version", req(b"GET /  HTTP/1.1"), ["error 400"]),
    ("tab in the request line", req(b"GET\t/ HTTP/1.1"), ["error 400"]),
    ("space in the target", req(b"GET /a b HTTP/1.1"), ["error 400"]),
    ("NUL in the target", req(b"GET /\x00 HTTP/1.1"), ["error 400"]),
    ("obs-text in the target", req(b"GET /caf\xe9 HTTP/1.1"), ["error 400"]),
    ("lower-case method", req(b"get / HTTP/1.1"), ["error 400"]),
    ("method unknown to llhttp", req(b"FOO / HTTP/1.1"), ["error 400"]),
    ("lower-case protocol", req(b"GET / http/1.1"), ["error 400"]),
    ("HTTP/1.2", req(b"GET / HTTP/1.2"), ["error 505"]),
    ("HTTP/2.0", req(b"GET / HTTP/2.0"), ["error 505"]),
    ("HTTP/0.9 request line", b"GET /\r\n\r\n", ["error 400"]),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", ["error 505"]),
    # Host
    ("HTTP/1.1 without Host", req(headers=b""), ["error 400"]),
    ("two Host headers", req(headers=H + H), ["error 400"]),
    ("HTTP/1.0 without Host", req(b"GET / HTTP/1.0", b""), ["GET / 1.0", "end", "reply close"]),
    # connection reuse
    ("HTTP/1.0 keep-alive", req(b"GET / HTTP/1.0", b"Connection: keep-alive\r\n") + req(),
     ["GET / 1.0", "end", "reply close"]),
    ("Connection: close with a request behind it", req(headers=H + b"Connection: close\r\n") + req(),
     ["GET / 1.1", "end", "reply close"]),
    ("Connection: keep-alive, close", req(headers=H + b"Connection: keep-alive, close\r\n"),
     ["GET / 1.1", "end", "reply close"]),
    # 100-continue and protocol switches
    ("Expect: 100-continue", post(b"Expect: 100-continue\r\nContent-Length: 3\r\n", b"abc"),
     ["POST / 1.1 expect", "body b'abc'", "end", "reply keep", "closed"]),
    ("Expect: 100-continue among others", post(b"Expect: foo, 100-Continue\r\nContent-Length: 1\r\n", b"a"),
     ["POST / 1.1 expect", "body b'a'", "end", "reply keep", "closed"]),
    ("Expect: 100-continue on HTTP/1.0",
     req(b"POST / HTTP/1.0", b"Expect: 100-continue\r\nContent-Length: 1\r\n", b"a"),
     ["POST / 1.0", "body b'a'", "end", "reply close"]),
    ("Upgrade: websocket", req(headers=H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n") + b"\x81\x00",
     ["GET / 1.1", "end", "switched b'\\x81\\x00'"]),
    ("Upgrade with a body", post(b"Connection: upgrade\r\nUpgrade: x\r\nContent-Length: 3\r\n", b"abcxyz"),
     ["POST / 1.1", "body b'abc'", "end", "switched b'xyz'"]),
    ("Upgrade without Connection: upgrade", req(headers=H + b"Upgrade: websocket\r\n") + req(),
     [*GET, *GET, "closed"]),
    # sizes and the end of the stream
    ("closed mid-head", b"GET / HTTP/1.1\r\nHost: a\r\n", ["error 400"]),
    ("closed mid-body", post(b"Content-Length: 5\r\n", b"abc"), ["POST / 1.1", "body b'abc'", "error 400"]),
    ("closed mid-chunk", chunked(b"5\r\nabc"), ["POST / 1.1", "body b'abc'", "error 400"]),
    ("garbage after a request", req() + b"\x16\x03\x01", [*GET, "error 400"]),
]


def _cuts(data: bytes) -> range:
    """Where to cut ``data`` in two: everywhere (about every 100th byte of a long input)."""
    return range(1, len(data), 1 if len(data) < 2000 else 97)


def _splits(data: bytes) -> list[list[bytes]]:
    """``data`` whole, byte by byte, and in two pieces at every position."""
    ways = [[data], [data[i:i + 1] for i in range(len(data))]]
    ways.extend(split(data, [i]) for i in _cuts(data))
    return ways


@pytest.mark.parametrize(("name", "data", "expected"), SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
def test_server_corpus(name: str, data: bytes, expected: list[str]) -> None:
    codecs = server_codecs()
    for pieces in _splits(data):
        fast = run_server(codecs["llhttp"], pieces)
        assert summary(fast) == expected, pieces
        check(run_server(codecs["h11"], pieces), fast)


def test_server_corpus_names_are_unique() -> None:
    assert len({c[0] for c in SERVER_CASES}) == len(SERVER_CASES)


def test_head_size_limit_whole_and_in_pieces() -> None:
    """A head over ``max_header_bytes`` is 431 however it arrives; one under it is read."""
    codecs = server_codecs()
    big = req(headers=H + b"X-Big: " + b"x" * 3000 + b"\r\n")
    by7 = [big[i:i + 7] for i in range(0, len(big), 7)]
    for pieces in ([big], [big[:100], big[100:2000], big[2000:]], by7):
        fast = run_server(codecs["llhttp"], pieces, max_head=2048)
        assert summary(fast) == ["error 431"]
        check(run_server(codecs["h11"], pieces, max_head=2048), fast)
        assert summary(run_server(codecs["llhttp"], pieces, max_head=4096)) == [*GET, "closed"]


@pytest.mark.parametrize("accept_upgrade", [True, False])
def test_declined_upgrade_keeps_the_connection(accept_upgrade: bool) -> None:
    """A switch the server declines (an ordinary answer) leaves the next request readable."""
    data = req(headers=H + b"Connection: upgrade\r\nUpgrade: websocket\r\n") + req(b"GET /next HTTP/1.1")
    codecs = server_codecs()
    fast = run_server(codecs["llhttp"], [data], accept_upgrade=accept_upgrade)
    check(run_server(codecs["h11"], [data], accept_upgrade=accept_upgrade), fast)
    if accept_upgrade:
        assert summary(fast) == ["GET / 1.1", "end", f"switched {req(b'GET /next HTTP/1.1')!r}"]
    else:
        assert summary(fast) == [*GET, "GET /next 1.1", "end", "reply keep", "closed"]


def resp(line: bytes = b"HTTP/1.1 200 OK", headers: bytes = b"", body: bytes = b"") -> bytes:
    return line + b"\r\n" + headers + b"\r\n" + body


OK = resp(headers=b"Content-Length: 2\r\n", body=b"ok")
ANSWER = ["200 OK", "body b'ok'", "end", "reply keep"]

# (name, request methods, the upstream's bytes after each request, what the llhttp codec reads)
CLIENT_CASES: list[tuple[str, list[bytes], list[bytes], list[str]]] = [
    ("Content-Length body", [b"GET"], [OK], ANSWER),
    ("chunked body with trailers", [b"GET"],
     [resp(headers=b"Transfer-Encoding: chunked\r\n", body=b"2\r\nok\r\n0\r\nX-T: 1\r\n\r\n")], ANSWER),
    ("body until EOF", [b"GET"], [resp(body=b"ok")], ["200 OK", "body b'ok'", "end", "reply close"]),
    ("body until EOF over HTTP/1.0", [b"GET"], [resp(b"HTTP/1.0 200 OK", body=b"ok")],
     ["200 OK", "body b'ok'", "end", "reply close"]),
    ("HTTP/1.0 with keep-alive", [b"GET"],
     [resp(b"HTTP/1.0 200 OK", b"Connection: keep-alive\r\nContent-Length: 2\r\n", b"ok")],
     ["200 OK", "body b'ok'", "end", "reply close"]),
    ("Connection: close", [b"GET"], [resp(headers=b"Connection: close\r\nContent-Length: 2\r\n", body=b"ok")],
     ["200 OK", "body b'ok'", "end", "reply close"]),
    ("two answers in turn", [b"GET", b"GET"], [OK, OK], [*ANSWER, *ANSWER]),
    ("HEAD answer ends at its head", [b"HEAD", b"GET"], [resp(headers=b"Content-Length: 20\r\n"), OK],
     ["200 OK", "end", "reply keep", *ANSWER]),
    ("chunked HEAD answer", [b"HEAD", b"GET"], [resp(headers=b"Transfer-Encoding: chunked\r\n"), OK],
     ["200 OK", "end", "reply keep", *ANSWER]),
    ("HEAD answer with a body after it", [b"HEAD", b"GET"],
     [resp(headers=b"Content-Length: 2\r\n", body=b"ok")],
     ["200 OK", "end", "reply close"]),
    ("bytes beyond an answer", [b"GET", b"GET"], [OK + b"HTTP/1.1 200 OK\r\n"],
     [*ANSWER[:-1], "reply close"]),
    ("an answer that arrives early", [b"GET", b"GET"], [OK + OK], [*ANSWER[:-1], "reply close"]),
    ("204 with a Content-Length", [b"GET", b"GET"],
     [resp(b"HTTP/1.1 204 No Content", b"Content-Length: 5\r\n"), OK], ["204 No Content", "end", "reply keep",
                                                                        *ANSWER]),
    ("304 with chunked encoding", [b"GET", b"GET"],
     [resp(b"HTTP/1.1 304 Not Modified", b"Transfer-Encoding: chunked\r\n"), OK],
     ["304 Not Modified", "end", "reply keep", *ANSWER]),
    ("100 Continue then the answer", [b"POST"], [resp(b"HTTP/1.1 100 Continue") + OK],
     ["100 Continue", *ANSWER]),
    ("103 Early Hints then the answer", [b"GET"], [resp(b"HTTP/1.1 103 Early Hints", b"Link: </a>\r\n") + OK],
     ["103 Early Hints", *ANSWER]),
    ("101 for an upgrade", [b"GET+U"],
     [resp(b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket\r\nConnection: upgrade\r\n")
      + b"\x81\x00"],
     ["101 Switching Protocols", "switched b'\\x81\\x00'"]),
    ("101 nobody asked for", [b"GET"], [resp(b"HTTP/1.1 101 Switching Protocols", b"Upgrade: x\r\n")],
     ["error 502"]),
    ("upgrade declined", [b"GET+U", b"GET"], [OK, OK], [*ANSWER, *ANSWER]),
    ("no reason phrase", [b"GET"], [resp(b"HTTP/1.1 200", b"Content-Length: 2\r\n", b"ok")],
     ["200", "body b'ok'", "end", "reply keep"]),
    ("CL+TE", [b"GET"],
     [resp(headers=b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", body=b"0\r\n\r\n")],
     ["error 502"]),
    ("TE: gzip", [b"GET"], [resp(headers=b"Transfer-Encoding: gzip\r\n", body=b"ok")], ["error 502"]),
    ("conflicting Content-Length", [b"GET"], [resp(headers=b"Content-Length: 2\r\nContent-Length: 3\r\n")],
     ["error 502"]),
    ("control character in the reason", [b"GET"], [resp(b"HTTP/1.1 200 O\x01K", b"Content-Length: 0\r\n")],
     ["error 502"]),
    ("two spaces after the version", [b"GET"], [resp(b"HTTP/1.1  200 OK", b"Content-Length: 0\r\n")],
     ["error 502"]),
    ("four-digit status", [b"GET"], [resp(b"HTTP/1.1 2000 OK", b"Content-Length: 0\r\n")], ["error 502"]),
    ("status under 100", [b"GET"], [resp(b"HTTP/1.1 099 X", b"Content-Length: 0\r\n")], ["error 502"]),
    ("HTTP/2.0 status line", [b"GET"], [resp(b"HTTP/2.0 200 OK", b"Content-Length: 0\r\n")], ["error 502"]),
    ("empty line before the status line", [b"GET"], [b"\r\n" + OK], ["error 502"]),
    ("obs-fold", [b"GET"], [resp(headers=b"Content-Length: 2\r\nX-A: a\r\n b\r\n", body=b"ok")],
     ["error 502"]),
    ("bare LF line ends", [b"GET"], [b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"], ["error 502"]),
    ("response head over 16 KiB", [b"GET"], [resp(headers=b"X-Big: " + b"x" * 17000 + b"\r\n")],
     ["error 502"]),
    ("closed mid-body", [b"GET"], [resp(headers=b"Content-Length: 5\r\n", body=b"ok")],
     ["200 OK", "body b'ok'", "error 502"]),
    ("closed before answering", [b"GET"], [], ["error 502"]),
    ("not HTTP", [b"GET"], [b"SSH-2.0-OpenSSH_9.6\r\n"], ["error 502"]),
]


def _answer_splits(answers: list[bytes]) -> list[list[bytes]]:
    """The answers whole, byte by byte, and each cut in two at every position."""
    ways = [[bytes([b]) for a in answers for b in a]]
    for i, answer in enumerate(answers):
        for cut in _cuts(answer):
            ways.append([*answers[:i], answer[:cut], answer[cut:], *answers[i + 1:]])
    return ways


@pytest.mark.parametrize(("name", "methods", "answers", "expected"), CLIENT_CASES,
                         ids=[c[0] for c in CLIENT_CASES])
def test_client_corpus(name: str, methods: list[bytes], answers: list[bytes], expected: list[str]) -> None:
    codecs = client_codecs()
    fast = run_client(codecs["llhttp"], methods, answers)
    assert summary(fast) == expected
    check(run_client(codecs["h11"], methods, answers), fast, client=True)
    # (when bytes beyond an answer arrive with it, its reuse depends on how they arrive)
    early = any(step[0] == "reply" and step[2] for step in fast)
    for pieces in _answer_splits(answers):
        fast_split = run_client(codecs["llhttp"], methods, pieces)
        if early:
            assert first_answer(fast_split) == first_answer(fast), pieces
        else:
            assert fast_split == fast, pieces
        check(run_client(codecs["h11"], methods, pieces), fast_split, client=True)


def test_client_corpus_names_are_unique() -> None:
    assert len({c[0] for c in CLIENT_CASES}) == len(CLIENT_CASES)


# ---- Hypothesis --------------------------------------------------------------------------

@_settings(1200)
@given(data=httpgen.request_streams, seed=st.integers(0, 2**32 - 1), eof=st.booleans(), upgrade=st.booleans())
def test_server_differential(data: bytes, seed: int, eof: bool, upgrade: bool) -> None:
    codecs = server_codecs()
    fast = run_server(codecs["llhttp"], [data], eof=eof, accept_upgrade=upgrade)
    check(run_server(codecs["h11"], [data], eof=eof, accept_upgrade=upgrade), fast)
    for pieces in random_splits(data, random.Random(seed), 2):
        assert run_server(codecs["llhttp"], pieces, eof=eof, accept_upgrade=upgrade) == fast, pieces


@_settings(1000)
@given(data=httpgen.response_streams, methods=httpgen.RESPONSE_METHODS, seed=st.integers(0, 2**32 - 1),
       eof=st.booleans())
def test_client_differential(data: bytes, methods: list[bytes], seed: int, eof: bool) -> None:
    codecs = client_codecs()
    fast = run_client(codecs["llhttp"], methods, [data], eof=eof)
    check(run_client(codecs["h11"], methods, [data], eof=eof), fast, client=True)
    for pieces in random_splits(data, random.Random(seed), 2):
        fast_split = run_client(codecs["llhttp"], methods, pieces, eof=eof)
        assert first_answer(fast_split) == first_answer(fast), pieces


# ---- what we send ------------------------------------------------------------------------

def _read_response(data: bytes, method: bytes) -> tuple[object, ...]:
    """What an HTTP/1.1 client (h11) reads from ``data``: status, headers, body, trailers,
    and whether it may reuse the connection."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    status: tuple[object, ...] = ()
    body = b""
    trailers: list[tuple[bytes, bytes]] = []
    while True:
        ev = conn.next_event()
        if type(ev) is h11.Response:
            status = (ev.status_code, sorted(ev.headers))
        elif type(ev) is h11.Data:
            body += ev.data
        elif type(ev) is h11.EndOfMessage:
            trailers = list(ev.headers)
            break
    return (*status, body, trailers, conn.our_state is h11.DONE and conn.their_state is h11.DONE)


_STATUSES = st.sampled_from([200, 200, 201, 204, 304, 404, 500, 503])
_RESPONSE_HEADERS = st.lists(
    st.sampled_from([(b"x-a", b"1"), (b"connection", b"close"), (b"connection", b"keep-alive"),
                     (b"transfer-encoding", b"chunked"), (b"content-type", b"text/plain")]),
    max_size=3, unique=True,
)


@_settings(400)
@given(
    method=st.sampled_from([b"GET", b"HEAD", b"POST"]),
    version=st.sampled_from([b"1.1", b"1.0"]),
    request_close=st.booleans(),
    status=_STATUSES,
    headers=_RESPONSE_HEADERS,
    length=st.booleans(),
    body=st.lists(st.binary(min_size=1, max_size=5), max_size=3),
    trailers=st.booleans(),
)
def test_response_framing_matches_h11(  # noqa: PLR0917 (Hypothesis passes arguments by name)
    method: bytes, version: bytes, request_close: bool, status: int, headers: list[tuple[bytes, bytes]],
    length: bool, body: list[bytes], trailers: bool,
) -> None:
    """A response written by either codec reads the same to a client, and both codecs agree on
    reusing the connection."""
    request = method + b" / HTTP/" + version + b"\r\nHost: a\r\n"
    request += b"Connection: close\r\n\r\n" if request_close else b"\r\n"
    no_body = method == b"HEAD" or status in (204, 304)
    total = b"".join(body)
    hdrs = list(headers)
    if length and not any(n == b"transfer-encoding" for n, _ in hdrs):
        hdrs.append((b"content-length", b"%d" % (0 if status in (204, 304) else len(total))))
    chunked_out = version == b"1.1" and not length and not no_body
    extra = [(b"x-t", b"1")] if trailers and chunked_out else []
    out: dict[str, bytes] = {}
    codecs: dict[str, http1.ServerCodec | llhttp.ServerCodec] = {
        "h11": http1.ServerCodec(4096), "llhttp": llhttp.ServerCodec(4096),
    }
    for name, codec in codecs.items():
        codec.receive_data(request)
        assert codec.next_event() is not http1.Signal.NEED_DATA
        assert codec.next_event() is http1.Signal.END
        data = codec.response_head(status, list(hdrs), b"R")
        if not no_body:
            data += b"".join(codec.data(piece) for piece in body)
        out[name] = data + codec.end(extra)
    h11_view = _read_response(out["h11"], method)
    assert _read_response(out["llhttp"], method) == h11_view
    assert codecs["llhttp"].reusable == codecs["h11"].reusable


@_settings(200)
@given(
    method=st.sampled_from([b"GET", b"POST", b"PUT"]),
    framing=st.sampled_from(["none", "length", "chunked"]),
    body=st.lists(st.binary(min_size=1, max_size=5), max_size=3),
)
def test_request_framing_matches_h11(method: bytes, framing: str, body: list[bytes]) -> None:
    """A request written by either client codec reads the same to a server."""
    total = b"".join(body)
    headers = [(b"host", b"h"), (b"x-a", b"1")]
    if framing == "length":
        headers.append((b"content-length", b"%d" % len(total)))
    elif framing == "chunked":
        headers.append((b"transfer-encoding", b"chunked"))
    seen = []
    for codec in (http1.ClientCodec(), llhttp.ClientCodec()):
        data = codec.request_head(method, b"/p", list(headers))
        if framing != "none":
            data += b"".join(codec.data(piece) for piece in body)
        data += codec.end()
        seen.append(run_server(server_codecs()["h11"], [data]))
    assert seen[0] == seen[1]
    assert seen[0][-2:] == (("reply", True), ("closed",))
