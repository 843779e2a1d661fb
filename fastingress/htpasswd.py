"""htpasswd hashes as nginx's ``auth_basic_user_file`` accepts them (pure; shared by translation,
which names the kind of each line in its diagnostics, and the workers, which verify).

Theory of operation
-------------------
nginx (``ngx_crypt``) knows ``$apr1$``, ``{SHA}``, ``{SSHA}`` and ``{PLAIN}`` itself and hands
every other hash to the C library's ``crypt()``: on ingress-nginx's image (musl) that is
traditional DES, ``$1$`` (MD5-crypt), ``$2a$``/``$2b$``/``$2y$`` (bcrypt), ``$5$`` and ``$6$``
(SHA-crypt).  Here:

* bcrypt: the ``bcrypt`` package (pyca: maintained, constant-time, releases the GIL).  bcrypt
  reads at most 72 bytes of password, and so do we (the package refuses longer ones);
* ``$apr1$``/``$1$`` (the same MD5 algorithm with two magics), ``$5$``/``$6$`` (Drepper's
  SHA-crypt, ``rounds=`` included), ``{SHA}``, ``{SSHA}``, ``{PLAIN}``: implemented below on
  ``hashlib``.  These specifications are frozen; the tests check them against published
  vectors and, where the platform still has it, against the system's ``crypt()``;
* traditional DES (13 characters) and any other ``$id$`` the platform knows (yescrypt ...):
  the C library's ``crypt()`` through ``ctypes`` (libcrypt / libxcrypt, present on every
  glibc and musl system; Python's own ``crypt`` module is deprecated and gone in 3.13, and
  its PyPI copy ships no wheels).  DES cannot be built on a standard DES cipher (the salt
  perturbs its expansion table), and a hand-made DES would be the riskier choice.  Calls are
  serialised with a lock (``crypt()`` returns a static buffer).  Without a C library that
  knows the hash, it never matches.

``verify`` never raises and compares in constant time.  ``slow`` says whether a check costs
enough (bcrypt: tens of milliseconds) to run in a thread rather than on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import hashlib
import hmac
import re
import threading
from collections.abc import Callable

import bcrypt

ITOA64 = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BCRYPT_MAX = 72  # bytes of password bcrypt reads
_DES_RE = re.compile(r"^[./0-9A-Za-z]{13}$")
_SHA_ROUNDS_DEFAULT = 5000
_SHA_ROUNDS_MIN = 1000
_SHA_ROUNDS_MAX = 999_999_999


def hash_kind(stored: str) -> str:
    """What kind of htpasswd hash ``stored`` is ("" when none nginx would accept)."""
    if stored.startswith(("$2a$", "$2b$", "$2y$")):
        return "bcrypt"
    if stored.startswith("$apr1$"):
        return "apr1"
    if stored.startswith("$1$"):
        return "md5-crypt"
    if stored.startswith("$5$"):
        return "sha256-crypt"
    if stored.startswith("$6$"):
        return "sha512-crypt"
    if stored.startswith("{SHA}"):
        return "sha1"
    if stored.startswith("{SSHA}"):
        return "ssha"
    if stored.startswith("{PLAIN}"):
        return "plain"
    if _DES_RE.match(stored):
        return "des-crypt"
    if stored.startswith("$") and stored.count("$") >= 2:
        return "system-crypt"  # whatever the C library knows ($y$ yescrypt, $2x$ ...)
    return ""


FAST_KINDS = frozenset({"sha1", "ssha", "plain", "des-crypt", ""})


def slow(stored: str) -> bool:
    """Whether verifying against ``stored`` is worth a thread (bcrypt, SHA-crypt, MD5-crypt...)."""
    return hash_kind(stored) not in FAST_KINDS


def verify(stored: str, password: bytes) -> bool:
    """Does ``password`` match the htpasswd hash ``stored`` (latin-1 text)?  Never raises."""
    try:
        return _verify(stored, password)
    except (ValueError, TypeError, binascii.Error, UnicodeError, OverflowError):
        return False


def _verify(stored: str, password: bytes) -> bool:
    kind = hash_kind(stored)
    raw = stored.encode("latin-1")
    if kind == "bcrypt":
        return bcrypt.checkpw(password[:BCRYPT_MAX], raw)
    if kind in ("apr1", "md5-crypt"):
        magic = b"$apr1$" if kind == "apr1" else b"$1$"
        salt = raw[len(magic):].split(b"$", 1)[0]
        return hmac.compare_digest(md5_crypt(password, salt, magic), raw)
    if kind in ("sha256-crypt", "sha512-crypt"):
        return hmac.compare_digest(sha_crypt(password, raw), raw)
    if kind == "sha1":
        return hmac.compare_digest(base64.b64encode(hashlib.sha1(password).digest()), raw[5:])
    if kind == "ssha":
        decoded = base64.b64decode(raw[6:], validate=True)
        if len(decoded) < 20:
            return False
        digest, salt = decoded[:20], decoded[20:]
        return hmac.compare_digest(hashlib.sha1(password + salt).digest(), digest)
    if kind == "plain":
        return hmac.compare_digest(password, raw[7:])
    if kind in ("des-crypt", "system-crypt"):
        got = SYSTEM_CRYPT(password, raw)
        return got is not None and hmac.compare_digest(got, raw)
    return False


def _to64(value: int, count: int) -> bytes:
    out = bytearray()
    for _ in range(count):
        out.append(ITOA64[value & 0x3F])
        value >>= 6
    return bytes(out)


# -- MD5-crypt ($1$, and Apache's $apr1$: the same algorithm, another magic) ------------------

_MD5_ORDER = ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5))


def md5_crypt(password: bytes, salt: bytes, magic: bytes = b"$1$") -> bytes:
    """Poul-Henning Kamp's MD5-crypt (``$1$``), or Apache's ``$apr1$`` with ``magic=b"$apr1$"``."""
    salt = salt[:8]
    ctx = hashlib.md5(password + magic + salt)
    alternate = hashlib.md5(password + salt + password).digest()
    remaining = len(password)
    while remaining > 0:
        ctx.update(alternate[: min(16, remaining)])
        remaining -= 16
    i = len(password)
    while i:
        ctx.update(b"\0" if i & 1 else password[:1])
        i >>= 1
    final = ctx.digest()
    for r in range(1000):
        step = hashlib.md5(password if r & 1 else final)
        if r % 3:
            step.update(salt)
        if r % 7:
            step.update(password)
        step.update(final if r & 1 else password)
        final = step.digest()
    out = b"".join(_to64((final[a] << 16) | (final[b] << 8) | final[c], 4) for a, b, c in _MD5_ORDER)
    out += _to64(final[11], 2)
    return magic + salt + b"$" + out


# -- SHA-crypt ($5$, $6$; Ulrich Drepper's specification) --------------------------------------

_SHA256_ORDER = (
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
    (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29),
)
_SHA512_ORDER = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
    (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
)


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def sha_crypt(password: bytes, setting: bytes) -> bytes:
    """SHA-crypt of ``password`` with the ``$5$``/``$6$`` ``setting`` (``[rounds=N$]salt[$...]``)."""
    magic = setting[:3]
    new: Callable[[bytes], hashlib._Hash] = hashlib.sha256 if magic == b"$5$" else hashlib.sha512
    rest = setting[3:]
    rounds, custom = _SHA_ROUNDS_DEFAULT, False
    if rest.startswith(b"rounds="):
        number, dollar, after = rest[7:].partition(b"$")
        if not dollar or not number.isdigit():
            raise ValueError("bad rounds")
        rounds = min(max(int(number), _SHA_ROUNDS_MIN), _SHA_ROUNDS_MAX)
        custom, rest = True, after
    salt = rest.split(b"$", 1)[0][:16]
    size = new(b"").digest_size
    alternate = new(password + salt + password).digest()
    ctx = new(password + salt)
    n = len(password)
    while n > size:
        ctx.update(alternate)
        n -= size
    ctx.update(alternate[:n])
    i = len(password)
    while i:
        ctx.update(alternate if i & 1 else password)
        i >>= 1
    digest_a = ctx.digest()
    p = _repeat(new(password * len(password)).digest(), len(password))
    s = _repeat(new(salt * (16 + digest_a[0])).digest(), len(salt))
    c = digest_a
    for r in range(rounds):
        step = new(p if r & 1 else c)
        if r % 3:
            step.update(s)
        if r % 7:
            step.update(p)
        step.update(c if r & 1 else p)
        c = step.digest()
    if size == 32:
        out = b"".join(_to64((c[a] << 16) | (c[b] << 8) | c[d], 4) for a, b, d in _SHA256_ORDER)
        out += _to64((c[31] << 8) | c[30], 3)
    else:
        out = b"".join(_to64((c[a] << 16) | (c[b] << 8) | c[d], 4) for a, b, d in _SHA512_ORDER)
        out += _to64(c[63], 2)
    head = magic + (b"rounds=%d$" % rounds if custom else b"")
    return head + salt + b"$" + out


# -- the C library's crypt() ------------------------------------------------------------------


class SystemCrypt:
    """``crypt(3)`` of the C library, loaded on first use; None when it is missing or refuses."""

    _NAMES = ("libcrypt.so.1", "libcrypt.so.2", "libcrypt.so")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded = False
        self._crypt: Callable[[bytes, bytes], bytes | None] | None = None

    def _load(self) -> None:
        self._loaded = True
        names = [*self._NAMES, ctypes.util.find_library("crypt")]
        for name in names:
            if not name:
                continue
            try:
                fn = ctypes.CDLL(name).crypt
            except (OSError, AttributeError):
                continue
            fn.restype = ctypes.c_char_p
            fn.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
            self._crypt = fn
            return

    @property
    def available(self) -> bool:
        with self._lock:
            if not self._loaded:
                self._load()
            return self._crypt is not None

    def __call__(self, password: bytes, setting: bytes) -> bytes | None:
        if b"\0" in password or b"\0" in setting:
            return None  # a C string would end there: never let a prefix of a password match
        with self._lock:
            if not self._loaded:
                self._load()
            fn = self._crypt
            if fn is None:
                return None
            result = fn(password, setting)
        if not result or result.startswith(b"*"):  # libxcrypt's failure tokens are "*0", "*1"
            return None
        return result


SYSTEM_CRYPT = SystemCrypt()  # one per process: the library and its lock


# -- htpasswd and htdigest files ---------------------------------------------------------------


def parse_htpasswd(text: str) -> tuple[list[tuple[str, str]], list[tuple[int, str, str]]]:
    """(users as (name, hash) in file order, problems as (line number, user, what)).

    As nginx reads the file: ``#`` lines and blank lines are skipped, a line is ``name:hash``
    and anything after a second ``:`` is ignored.  A line without ``:`` or with a hash of no
    kind nginx accepts is a problem (that user can never log in)."""
    users: list[tuple[str, str]] = []
    problems: list[tuple[int, str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        name, colon, rest = line.partition(":")
        if not colon:
            problems.append((number, "", "no ':' between user and hash"))
            continue
        stored = rest.split(":", 1)[0]
        if not hash_kind(stored):
            problems.append((number, name, "a hash of no kind nginx accepts (bcrypt, apr1, {SHA}, crypt...)"))
            continue
        users.append((name, stored))
    return users, problems


_HA1_RE = re.compile(r"^[0-9a-fA-F]{32}$")


def parse_htdigest(text: str) -> tuple[list[tuple[str, str, str]], list[tuple[int, str, str]]]:
    """(users as (name, realm, HA1) in file order, problems): ``htdigest`` lines
    ``name:realm:md5(name:realm:password)``."""
    users: list[tuple[str, str, str]] = []
    problems: list[tuple[int, str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) < 3 or not _HA1_RE.match(parts[2]):
            problems.append((number, parts[0] if len(parts) > 1 else "", "expected name:realm:32 hex digits"))
            continue
        users.append((parts[0], parts[1], parts[2].lower()))
    return users, problems


def digest_ha1(user: str, realm: str, password: str) -> str:
    """HA1 of an htdigest line (tests and examples)."""
    return hashlib.md5(f"{user}:{realm}:{password}".encode("latin-1")).hexdigest()


__all__ = [
    "BCRYPT_MAX", "SYSTEM_CRYPT", "SystemCrypt", "digest_ha1", "hash_kind", "md5_crypt", "parse_htdigest",
    "parse_htpasswd", "sha_crypt", "slow", "verify",
]
