"""Request-target normalisation (sans-I/O): bytes in, ``(path, query)`` out.

Theory of operation
-------------------
Routing decisions are only safe if the path we match is the path the backend sees.  So
we normalise once, route on the result, and send the *normalised* path upstream:

* origin-form ``/p?q`` is the norm; absolute-form ``http://host/p?q`` is reduced to its path
  (the Host header still decides the virtual host); ``*`` is passed through for OPTIONS;
* percent-encoded unreserved characters (``A-Z a-z 0-9 - . _ ~``) are decoded, so ``%2E%2E``
  is a real ``..``; other escapes are kept, with upper-case hex;
* encoded ``/`` and ``\\``, raw ``\\``, NUL and malformed escapes are rejected (400): they are
  how ``/api%2F..%2Fadmin`` style requests smuggle a different path past a prefix rule;
* ``//`` is merged and ``.``/``..`` segments are resolved (RFC 3986 remove_dot_segments; ``..``
  never climbs above ``/``).  A trailing ``/`` (or a trailing dot segment) is kept as ``/``.

The common case (no ``%``, no dot segment, no ``//``) returns after a few ``in`` checks.
"""

from __future__ import annotations

from fastingress.errors import BadRequest

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")


def normalize_target(target: bytes) -> tuple[str, str]:
    """Return ``(path, query)``; ``query`` includes its leading ``?`` or is ``""``."""
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("request-target is not ASCII") from None
    if text == "*":
        return "*", ""
    if not text.startswith("/"):
        text = _strip_absolute_form(text)
    path, sep, query = text.partition("?")
    if "#" in path:
        raise BadRequest("fragment in request-target")
    return normalize_path(path), sep + query


def _strip_absolute_form(text: str) -> str:
    lower = text[:8].lower()
    if lower.startswith("http://"):
        rest = text[7:]
    elif lower.startswith("https://"):
        rest = text[8:]
    else:
        raise BadRequest("request-target must be origin-form or absolute-form")
    cut = len(rest)
    for sep in "/?":
        i = rest.find(sep)
        if i != -1:
            cut = min(cut, i)
    tail = rest[cut:]
    return tail if tail.startswith("/") else "/" + tail


def normalize_path(path: str) -> str:
    """Normalise an absolute path (see module docstring)."""
    if not path.startswith("/"):
        raise BadRequest("path must start with /")
    if "\\" in path or "\x00" in path:
        raise BadRequest("backslash or NUL in path")
    if "%" in path:
        path = _decode_unreserved(path)
    if "/." in path or "//" in path:
        path = _remove_dot_segments(path)
    return path


def _decode_unreserved(path: str) -> str:
    out: list[str] = []
    i = 0
    n = len(path)
    while i < n:
        ch = path[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        hexpair = path[i + 1 : i + 3]
        if len(hexpair) != 2 or hexpair[0] not in _HEX or hexpair[1] not in _HEX:
            raise BadRequest("malformed percent-encoding in path")
        decoded = chr(int(hexpair, 16))
        if decoded in "/\\\x00":
            raise BadRequest("encoded slash, backslash or NUL in path")
        out.append(decoded if decoded in _UNRESERVED else "%" + hexpair.upper())
        i += 3
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    stack: list[str] = []
    segments = path.split("/")[1:]
    trailing = False
    for seg in segments:
        trailing = seg in ("", ".", "..")
        if seg in ("", "."):
            continue
        if seg == "..":
            if stack:
                stack.pop()
            continue
        stack.append(seg)
    result = "/" + "/".join(stack)
    if trailing and stack:
        result += "/"
    return result
