"""htpasswd hashes as nginx accepts them (``fastingress.htpasswd``): published vectors, the
system's crypt() where this Python still has it, and files as nginx reads them."""

from __future__ import annotations

import base64
import hashlib
import warnings

import bcrypt
import pytest

from fastingress import htpasswd as h

PASSWORD = b"s3cret pass"

# (hash, password): `openssl passwd` (apr1, $1$, $5$, $6$), Drepper's SHA-crypt specification,
# Apache's documentation ({SHA}), the bcrypt package ($2a$/$2b$; $2y$ is the same algorithm).
VECTORS = [
    ("$apr1$r31ZqUxC$kCOJcATB/qpXoD/0YlkTO.", PASSWORD),
    ("$apr1$OFG3Xybp$ckL0FHDAkoXYIlH9.cysT0", b"bar"),
    ("$1$saltsalt$5lF22gyv5RCQWSRkctJIT0", PASSWORD),
    ("$5$saltstring5$NMBo5Cdb9GIT2aux9py1Y2eLVOEGKEvN20aDC9DbXlD", PASSWORD),
    ("$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5", b"Hello world!"),
    ("$5$rounds=10000$saltstringsaltst$3xv.VbSHBb41AL9AvLeujZkZRBAwqFMz2.opqey6IcA", b"Hello world!"),
    ("$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
     b"Hello world!"),
    ("$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7"
     "UmJEiDwGqd8p4ur1",
     b"a very much longer text to encrypt.  This one even stretches over morethan one line."),
    ("$6$saltstring6$4a/uF9jCxEFJNuvoC.5iEwGeC9pq2aivbEEqqVivZntFmLJeTWcSeM.14ktaMqLXwUbS/4knxoW6kRYy1wsrh/",
     PASSWORD),
    ("{SHA}ohgYgF2kkgMlRbH1HlEDczlOc+M=", PASSWORD),
    ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", b"password"),
    ("{SSHA}3rob4GAFsaQP3VDYJS/nfDeRwnJzYWx0MTIzNA==", PASSWORD),
    ("{PLAIN}" + PASSWORD.decode(), PASSWORD),
    ("$2a$05$oDxVnCUwT3pBMgnp8NPRt.GH5TPMr9.MNrTR8r0VKSP9IoPLYXOpG", PASSWORD),
    ("$2y$05$oDxVnCUwT3pBMgnp8NPRt.GH5TPMr9.MNrTR8r0VKSP9IoPLYXOpG", PASSWORD),
    ("$2b$05$iD1uDGMRkd9VrRGCDQetsOq6zc8T3LWWCvOEP2cWc3IsrVFPUT1Xm", PASSWORD),
]


@pytest.mark.parametrize(("stored", "password"), VECTORS)
def test_vectors_match_and_nothing_else_does(stored: str, password: bytes) -> None:
    assert h.hash_kind(stored)
    assert h.verify(stored, password)
    assert not h.verify(stored, password + b"x")
    assert not h.verify(stored, b"x" + password)
    assert not h.verify(stored, b"")


def test_kinds() -> None:
    kinds = {h.hash_kind(stored) for stored, _ in VECTORS}
    assert kinds == {"apr1", "md5-crypt", "sha256-crypt", "sha512-crypt", "sha1", "ssha", "plain", "bcrypt"}
    assert h.hash_kind("abTk71qDTQKMY") == "des-crypt"
    assert h.hash_kind("$y$j9T$abc$def") == "system-crypt"
    for bad in ("", "plaintext password", "{MD5}abc", "$apr1", "abTk71qDTQKM", "x:y"):
        assert h.hash_kind(bad) == "", bad
    assert h.slow("$2y$05$x") and h.slow("$6$a$b") and h.slow("$apr1$a$b")
    assert not h.slow("{SHA}x") and not h.slow("abTk71qDTQKMY")


def _system_crypt():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:  # Python 3.13+
            return None
    return crypt.crypt


@pytest.mark.parametrize("setting", ["$1$abcdefgh", "$1$x", "$5$saltstring", "$5$rounds=1000$s",
                                     "$6$saltstring", "$6$rounds=5000$toolongsaltstringtoolong"])
@pytest.mark.parametrize("password", ["", "a", "Hello world!", "x" * 100, "pässwörd"])
def test_md5_and_sha_crypt_agree_with_the_system_crypt(setting: str, password: str) -> None:
    system = _system_crypt()
    if system is None:
        pytest.skip("this Python has no crypt module to compare with (the vectors above still run)")
    expected = system(password, setting)
    raw = password.encode()
    if setting.startswith("$1$"):
        mine = h.md5_crypt(raw, setting[3:].encode())
    else:
        mine = h.sha_crypt(raw, setting.encode())
    assert mine.decode() == expected
    assert h.verify(expected, raw)


def test_des_crypt_through_the_c_library() -> None:
    if not h.SYSTEM_CRYPT.available:
        pytest.skip("no libcrypt on this machine")
    stored = "abTk71qDTQKMY"  # crypt("s3cret pass", "ab")
    assert h.verify(stored, PASSWORD)
    assert h.verify(stored, PASSWORD[:8] + b"anything")  # DES reads 8 characters
    assert not h.verify(stored, b"s3cret")
    assert h.SYSTEM_CRYPT(b"a\0b", b"ab") is None  # never a prefix of a password
    assert not h.verify("$nonexistent$salt$hash", PASSWORD)


def test_a_missing_c_library_never_matches() -> None:
    missing = h.SystemCrypt()
    missing._NAMES = ()  # type: ignore[misc]
    missing._loaded = True
    assert not missing.available
    assert missing(PASSWORD, b"ab") is None


def test_bcrypt_reads_72_bytes_like_every_implementation() -> None:
    long_password = b"p" * 72
    stored = bcrypt.hashpw(long_password, bcrypt.gensalt(4)).decode()
    assert h.verify(stored, long_password + b"anything after 72 bytes")  # no ValueError from bcrypt 5
    assert not h.verify(stored, b"p" * 71)


@pytest.mark.parametrize("stored", [
    "$2y$05$short", "$2y$99$" + "a" * 53, "$apr1$", "$5$rounds=x$salt$hash", "{SSHA}!!!", "{SSHA}YWJj",
    "$6$", "{SHA}", "\u00ff\u00fe",
])
def test_malformed_hashes_never_raise_or_match(stored: str) -> None:
    assert h.verify(stored, PASSWORD) is False


def test_parse_htpasswd_as_nginx_reads_it() -> None:
    text = (
        "# a comment\n\n"
        "alice:{SHA}ohgYgF2kkgMlRbH1HlEDczlOc+M=:comment after a colon\r\n"
        "bob\n"  # no colon
        "carol:plaintext\n"  # nginx would crypt() it with salt "pl": never matches
        "alice:$apr1$r31ZqUxC$kCOJcATB/qpXoD/0YlkTO.\n"  # a second alice: the first wins (in the policy)
    )
    users, problems = h.parse_htpasswd(text)
    assert users == [("alice", "{SHA}ohgYgF2kkgMlRbH1HlEDczlOc+M="),
                     ("alice", "$apr1$r31ZqUxC$kCOJcATB/qpXoD/0YlkTO.")]
    assert [(n, u) for n, u, _ in problems] == [(4, ""), (5, "carol")]


def test_parse_htdigest() -> None:
    ha1 = hashlib.md5(b"joi:enfield:secret").hexdigest()
    users, problems = h.parse_htdigest(f"joi:enfield:{ha1.upper()}\nbad:line\n#x\nlee:r:nothex\n")
    assert users == [("joi", "enfield", ha1)]
    assert [n for n, _, _ in problems] == [2, 4]
    assert h.digest_ha1("joi", "enfield", "secret") == ha1


def test_sha1_is_base64_of_the_digest() -> None:
    stored = "{SHA}" + base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    assert h.verify(stored, b"pw") and not h.verify(stored, b"pW")
