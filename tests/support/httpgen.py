"""Hypothesis strategies for near-valid HTTP/1.1 messages (requests and responses).

Each message is built from parts that are usually valid and sometimes not: methods, targets,
versions, separators, line endings, header names and values with odd bytes (CR, LF, NUL,
obs-text, tabs, spaces before the colon, obs-fold), conflicting framing headers, and chunked
bodies with odd chunk sizes.  Messages are joined to make pipelined input.
"""

from __future__ import annotations

from hypothesis import strategies as st

_ODD = b"\x00\t\n\r \"(),/:;<=>?@[\\]{}\x7f\x80\xff"
_BYTE = st.sampled_from([bytes([b]) for b in b"aZ09-._~!$&'*+^`|%" + _ODD])
odd_bytes = st.lists(_BYTE, max_size=6).map(b"".join)


def mostly(
    valid: st.SearchStrategy[bytes], odd: st.SearchStrategy[bytes], odds: int = 10
) -> st.SearchStrategy[bytes]:
    """``valid`` except about once in ``odds`` draws."""
    # (not 0 or odds - 1: Hypothesis draws the bounds of a range more often than the rest)
    return st.integers(0, odds - 1).flatmap(lambda i: odd if i == odds // 2 else valid)


def one_in(odds: int) -> st.SearchStrategy[bool]:
    """True about once in ``odds`` draws."""
    return st.integers(0, odds - 1).map(lambda i: i == odds // 2)


METHODS = mostly(
    st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"GET", b"POST"]),
    st.one_of(
        st.sampled_from(
            [b"CONNECT", b"PRI", b"FOO", b"M-SEARCH", b"PROPFIND", b"get", b"G@T", b"GE\x00T", b""]
        ),
        odd_bytes,
    ),
    odds=12,
)
TARGETS = mostly(
    st.sampled_from([b"/", b"/a?b=c", b"/a/../b", b"//x", b"/%00", b"/%zz", b"/a#f", b"/~u/!$&'()*+,;=:@",
                     b"http://a/x", b"https://a:8443/x?y", b"*"]),
    st.one_of(
        st.sampled_from([b"a:443", b"", b"a", b"/\x80\xff", b"http://a b/", b"http://[::1/"]),
        st.sampled_from([b"/a b", b"/a\tb", b"/\x7f", b"/\x00", b"/\r", b"/\"<>", b"/a\nb", b"/{|}^`\\"]),
        st.tuples(st.just(b"/"), odd_bytes).map(b"".join),
    ),
    odds=10,
)
VERSIONS = mostly(
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]),
    st.sampled_from([b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/11", b"HTTP/1.1 ", b"",
                     b"HTTP/1", b"HTTP/1.01", b"HTTP/ 1.1"]),
    odds=20,
)
SP = mostly(st.just(b" "), st.sampled_from([b"  ", b"\t", b"", b"\x0b"]), odds=30)
EOL = mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r \n"]), odds=40)

_LENGTHS = [b"0", b"3", b"5", b"+5", b"-1", b"5, 5", b"5,6", b" 5", b"05", b"0x5", b"5 5", b"", b"1" * 21,
            b"5,"]
_TES = [b"chunked", b"Chunked", b"CHUNKED", b"chunked, gzip", b"gzip, chunked", b"xchunked", b"chunked ",
        b" chunked", b"identity", b"", b"chunked,", b"chunked;q=1", b"chunk\x00ed", b"chunked, chunked"]
_VALUES: dict[bytes, tuple[list[bytes], list[bytes]]] = {
    b"content-length": ([b"0", b"3", b"5", b"11"], _LENGTHS),
    b"transfer-encoding": ([b"chunked"], _TES),
    b"connection": (
        [b"close", b"keep-alive", b"upgrade", b"Upgrade, keep-alive", b"Keep-Alive"],
        [b"close, upgrade", b"Close", b"keep-alive, close", b"", b"x-foo", b"upgrade;x", b"up grade"],
    ),
    b"upgrade": ([b"websocket", b"h2c"], [b"", b"a, b"]),
    b"expect": (
        [b"100-continue"], [b"100-Continue", b"foo, 100-continue", b"200-ok", b"", b"100-continue;x"]
    ),
    b"host": ([b"a", b"a:80", b"[::1]:8080"], [b"", b"a b", b"\x80", b"a@b"]),
}
_NAMES = [b"Host", b"Content-Length", b"content-length", b"Transfer-Encoding", b"transfer-encoding",
          b"Connection", b"Upgrade", b"Expect", b"X-A", b"Cookie", b"Trailer", b"Keep-Alive", b"X-B",
          b"User-Agent", b"Accept"]
_ODD_NAMES = [b"X A", b"X(", b"X\x00", b"", b"X\x7f", b"X\x80", b"X\t", b"Content-Length ", b" Host",
              b"Transfer_Encoding", b"X\r", b"Content-Length\x00", b"Transfer-Encoding\x0b"]
HEADER_NAMES = mostly(st.sampled_from(_NAMES), st.one_of(st.sampled_from(_ODD_NAMES), odd_bytes), odds=15)
COLONS = mostly(st.just(b": "), st.sampled_from([b":", b" : ", b":\t", b":  ", b" :", b"\t:"]), odds=20)
PLAIN_VALUES = mostly(
    st.sampled_from([b"x", b"a b", b"", b"\x80\xff", b"a\tb", b"a, b", b"\"q\""]), odd_bytes, odds=10
)


@st.composite
def header_lines(draw: st.DrawFn, names: st.SearchStrategy[bytes] = HEADER_NAMES) -> bytes:
    name = draw(names)
    known = _VALUES.get(name.strip().lower())
    if known is not None:
        value = draw(mostly(st.sampled_from(known[0]), st.sampled_from(known[1]), odds=6))
    else:
        value = draw(PLAIN_VALUES)
    line = name + draw(COLONS) + value + draw(EOL)
    if draw(one_in(30)):  # obs-fold
        line += draw(st.sampled_from([b" ", b"\t"])) + draw(st.sampled_from([b"more", b"", b"x y"])) + b"\r\n"
    return line


_SIZES = [b"0", b"03", b"A", b"a", b"g", b"-1", b"", b"3 ", b" 3", b"3;a=b", b"3;a", b"3 ;a=b",
          b"3;a=\"b\"", b"10000000000000000", b"fffffffffffffffff", b"0x3", b"+3", b"3\t", b"3;a=\x00"]


@st.composite
def chunked_body(draw: st.DrawFn) -> bytes:
    """A chunked body: chunks with valid or odd size lines, the last chunk, trailers."""
    out = []
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.sampled_from([b"abc", b"a", b"hello world", b"\r\n\r\n", b"0\r\n\r\n", b"\x00\xff"]))
        if not draw(one_in(8)):
            size = b"%x" % len(data)
            if draw(one_in(6)):
                size += draw(st.sampled_from([b";x", b";x=y", b" ", b";x=\"a b\"", b"\t;x"]))
        else:
            size = draw(st.sampled_from(_SIZES))
        end = draw(mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"", b"x\r\n", b"\r"]), odds=10))
        out.append(size + b"\r\n" + data + end)
    if not draw(one_in(12)):
        last = draw(mostly(st.just(b"0"), st.sampled_from([b"00", b"0;x=y", b"0 ", b"000"]), odds=5))
        last += b"\r\n"
        names = st.sampled_from([b"X-T", b"Content-Length", b"Host", b"X T", b"Trailer"])
        for _ in range(draw(st.integers(0, 2))):
            last += draw(header_lines(names))
        out.append(last + draw(mostly(st.just(b"\r\n"), st.sampled_from([b"\n", b"", b"\r"]), odds=10)))
    return b"".join(out)


def _declared_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value.strip())
    return None


@st.composite
def message_body(draw: st.DrawFn, head: bytes) -> bytes:
    lower = head.lower()
    if b"transfer-encoding" in lower and b"chunked" in lower and not draw(one_in(5)):
        return draw(chunked_body())
    length = _declared_length(head)
    if length is not None and length < 100 and not draw(one_in(4)):
        return draw(st.sampled_from([b"a", b"\r\n", b"\x00", b"0\r\n\r\n"])) * length
    return draw(st.sampled_from([b"", b"", b"", b"abc", b"abcde", b"\r\n", b"abc\r\n"]))


_KINDS: dict[str, list[bytes]] = {
    "plain": [],
    "length": [b"Content-Length"],
    "chunked": [b"Transfer-Encoding"],
    "upgrade": [b"Connection", b"Upgrade"],
    "expect": [b"Expect", b"Content-Length"],
    "keep-alive": [b"Connection"],
    "both": [b"Content-Length", b"Transfer-Encoding"],
    "double": [b"Content-Length", b"Content-Length"],
}


@st.composite
def header_line(draw: st.DrawFn, name: bytes) -> bytes:
    """A header line for ``name`` (usually valid)."""
    return draw(header_lines(mostly(st.just(name), HEADER_NAMES, odds=12)))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request of a random kind (plain, with a body, chunked, upgrade, 100-continue, ...):
    request line, headers, maybe a body; each part is now and then odd."""
    kind = draw(st.sampled_from(sorted(_KINDS)))
    line = draw(METHODS) + draw(SP) + draw(TARGETS) + draw(SP) + draw(VERSIONS) + draw(EOL)
    lines = [draw(header_line(name)) for name in _KINDS[kind]]
    if not draw(one_in(12)):
        lines.append(b"Host: a" + draw(EOL))
    lines.extend(draw(header_lines()) for _ in range(draw(st.integers(0, 2))))
    head = line + b"".join(draw(st.permutations(lines))) + draw(EOL)
    return head + draw(message_body(head))


_STATUS_LINES = mostly(
    st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 200 ", b"HTTP/1.1 200", b"HTTP/1.0 200 OK",
                     b"HTTP/1.1 404 Not Found", b"HTTP/1.1 500 X", b"HTTP/1.1 201 Created",
                     b"HTTP/1.1 299 a\tb \x80"]),
    st.sampled_from([b"HTTP/1.1 199 Odd", b"HTTP/1.1 999 Odd", b"HTTP/1.1 20 Short", b"HTTP/1.1 2000 Long",
                     b"HTTP/2.0 200 OK", b"HTTP/1.2 200 OK", b"http/1.1 200 OK", b"HTTP/1.1  200 OK",
                     b"HTTP/1.1 200 O\x00K", b"HTTP/1.1 200 \x7f", b"ICY 200 OK", b"HTTP/1.1 099 X",
                     b"HTTP/1.1 200  OK", b"HTTP/1.1 -20 X", b" HTTP/1.1 200 OK"]),
    odds=8,
)
_RESPONSE_KINDS: dict[str, tuple[bytes | None, list[bytes]]] = {
    "length": (None, [b"Content-Length"]),
    "chunked": (None, [b"Transfer-Encoding"]),
    "close": (None, []),
    "keep-alive-1.0": (b"HTTP/1.0 200 OK", [b"Connection", b"Content-Length"]),
    "no-body": (b"HTTP/1.1 204 No Content", [b"Content-Length"]),
    "not-modified": (b"HTTP/1.1 304 Not Modified", [b"Transfer-Encoding"]),
    "switch": (b"HTTP/1.1 101 Switching Protocols", [b"Upgrade", b"Connection"]),
    "both": (None, [b"Content-Length", b"Transfer-Encoding"]),
}


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    """An answer of a random kind, sometimes after interim (1xx) answers, sometimes followed
    by more bytes; each part is now and then odd."""
    out = b""
    for _ in range(draw(st.integers(0, 1))):
        out += draw(st.sampled_from([b"HTTP/1.1 100 Continue", b"HTTP/1.1 103 Early Hints"])) + draw(EOL)
        if draw(one_in(3)):
            out += draw(header_line(b"Link"))
        out += draw(EOL)
    kind = draw(st.sampled_from(sorted(_RESPONSE_KINDS)))
    line, names = _RESPONSE_KINDS[kind]
    if line is None or draw(one_in(8)):
        line = draw(_STATUS_LINES)
    lines = [draw(header_line(name)) for name in names]
    lines.extend(draw(header_lines()) for _ in range(draw(st.integers(0, 2))))
    head = line + draw(EOL) + b"".join(draw(st.permutations(lines))) + draw(EOL)
    out += head + draw(message_body(head))
    if draw(one_in(4)):
        out += draw(st.sampled_from([b"x", b"\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]))
    return out


request_streams = st.lists(requests(), min_size=1, max_size=3).map(b"".join)
response_streams = st.lists(responses(), min_size=1, max_size=2).map(b"".join)
RESPONSE_METHODS = st.lists(
    st.sampled_from([b"GET", b"GET", b"HEAD", b"POST", b"GET+U"]), min_size=2, max_size=2
)
