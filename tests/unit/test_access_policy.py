"""The access policies' pure parts (``workers.policies.access``): CIDR matching, the basic auth
hook and its verdict cache, digest nonces with a fake clock, and client-certificate verdicts."""

from __future__ import annotations

import base64
import hashlib
import time

import bcrypt
import pytest
import trio

from fastingress.snapshot.schema import (
    BasicAuth,
    Forward,
    Route,
    RoutePolicy,
    Snapshot,
    SourceRanges,
    WeightedBackend,
)
from workers.policies import access
from workers.policies.access import (
    DIGEST_EXPIRES,
    DIGEST_MAXTRIES,
    DIGEST_REPLAYS,
    DIGEST_TIMEOUT,
    ClientCheck,
    DigestState,
    RangeCheck,
    Ranges,
    VerifyCache,
    client_address,
    parse_basic,
    parse_digest,
)
from workers.policy import Answer, Defer, RequestCtx

# --- CIDRs ------------------------------------------------------------------------------------


def test_ranges_merge_and_match() -> None:
    ranges = Ranges(["10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/8", "192.168.1.7/32", "2001:db8::/32",
                     "::1/128"])
    inside = ["10.0.0.0", "10.255.255.255", "11.3.4.5", "192.168.1.7", "2001:db8::1", "::1"]
    outside = ["9.255.255.255", "12.0.0.0", "192.168.1.6", "192.168.1.8", "2001:db9::", "::2", "0.0.0.0"]
    for text in inside:
        address = client_address(text)
        assert address is not None and ranges.contains(address), text
    for text in outside:
        address = client_address(text)
        assert address is not None and not ranges.contains(address), text
    assert not Ranges([]) and Ranges(["::/0"])


def test_range_check_is_nginx_deny_then_allow() -> None:
    both = RangeCheck(SourceRanges(allow=("127.0.0.0/8",), deny=("127.0.0.1/32",)))
    assert not both.allowed("127.0.0.1") and both.allowed("127.0.0.2") and not both.allowed("10.0.0.1")
    deny_only = RangeCheck(SourceRanges(deny=("203.0.113.0/24",)))
    assert deny_only.allowed("10.0.0.1") and not deny_only.allowed("203.0.113.77")
    allow = RangeCheck(SourceRanges(allow=("10.0.0.0/8",)))
    assert allow.allowed("::ffff:10.1.2.3")  # IPv4-mapped IPv6: matched as IPv4, as nginx does
    assert not allow.allowed("::ffff:11.1.2.3")
    for nonsense in ("-", "", "10.0.0.1:80", "not an address", "10.0.0.256"):
        assert not allow.allowed(nonsense), nonsense  # an address that does not parse is refused
    assert not deny_only.allowed("-")
    v6 = RangeCheck(SourceRanges(allow=("2001:db8::/32",)))
    assert v6.allowed("2001:db8:1::5") and not v6.allowed("10.0.0.1") and not v6.allowed("fe80::1")


def test_range_check_cache_stays_bounded() -> None:
    check = RangeCheck(SourceRanges(allow=("10.0.0.0/8",)))
    for i in range(RangeCheck._CACHE_MAX + 10):
        check.allowed(f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}")
    assert len(check._seen) <= RangeCheck._CACHE_MAX


# --- basic auth ----------------------------------------------------------------------------------


def _ctx(route: Route, headers: list[tuple[bytes, bytes]], client_ip: str = "127.0.0.1",
         target: bytes = b"/") -> RequestCtx:
    return RequestCtx(method=b"GET", target=target, path=target.decode().split("?")[0], query="",
                      host=b"a.test", headers=headers, client_ip=client_ip, tls=False, route=route,
                      vhost=None, now=0.0)


def _route(policy: RoutePolicy) -> Route:
    return Route("/", "Prefix", Forward((WeightedBackend("u"),)), policy=policy)


def _basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def test_parse_basic() -> None:
    assert parse_basic(b"Basic " + base64.b64encode(b"a:b:c")) == (b"a", b"b:c")
    assert parse_basic(b"basic   " + base64.b64encode(b"a:")) == (b"a", b"")
    assert parse_basic(b"Basic " + base64.b64encode(b"nocolon")) is None
    assert parse_basic(b"Basic !!!") is None
    assert parse_basic(b"Bearer x") is None
    assert parse_basic(None) is None


async def test_bcrypt_is_paid_once_per_credentials() -> None:
    """A keep-alive client (or any client sending the same credentials) pays bcrypt once per
    worker: the first check runs in a thread, later ones answer from the cache at once."""
    stored = bcrypt.hashpw(b"pw", bcrypt.gensalt(10)).decode()
    auth = BasicAuth(realm="r", users=(("alice", stored), ("alice", "{PLAIN}second line loses")))
    cache = VerifyCache(size=8)
    policy = access._basic_policy(auth, cache)
    assert policy.request is not None
    route = _route(RoutePolicy(basic_auth=auth))

    headers = [(b"authorization", _basic("alice", "pw")), (b"x-other", b"1")]
    ctx = _ctx(route, headers)
    first = policy.request(ctx)
    assert isinstance(first, Defer)
    assert headers == [(b"x-other", b"1")]  # Authorization is never passed upstream
    t0 = time.perf_counter()
    assert await first.run() is None
    paid = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(100):
        assert policy.request(_ctx(route, [(b"authorization", _basic("alice", "pw"))])) is None
    cached = (time.perf_counter() - t0) / 100
    assert cached < paid / 10, (paid, cached)  # measured here: bcrypt cost 10 ~280 ms, cached ~25 µs
    wrong = policy.request(_ctx(route, [(b"authorization", _basic("alice", "second line loses"))]))
    assert isinstance(wrong, Defer)  # (the second alice line is never used: the first wins)
    refused = await wrong.run()
    assert isinstance(refused, Answer) and refused.status == 401
    assert refused.extra == ((b"www-authenticate", b'Basic realm="r"'),)
    again = policy.request(_ctx(route, [(b"authorization", _basic("alice", "second line loses"))]))
    assert isinstance(again, Answer) and again.status == 401  # a remembered refusal: no thread
    assert len(cache) == 2


def test_basic_hook_answers() -> None:
    auth = BasicAuth(realm='say "hi"', users=(("bob", "{PLAIN}pw"),))
    policy = access._basic_policy(auth, VerifyCache())
    assert policy.request is not None
    route = _route(RoutePolicy(basic_auth=auth))
    none = policy.request(_ctx(route, []))
    assert isinstance(none, Answer) and none.status == 401
    assert none.extra == ((b"www-authenticate", b'Basic realm="say \\"hi\\""'),)
    assert policy.request(_ctx(route, [(b"authorization", _basic("bob", "pw"))])) is None
    unknown = policy.request(_ctx(route, [(b"authorization", _basic("eve", "pw"))]))
    assert isinstance(unknown, Answer) and unknown.status == 401
    twice = [(b"authorization", _basic("bob", "pw")), (b"authorization", _basic("bob", "pw"))]
    dup = policy.request(_ctx(route, twice))
    assert isinstance(dup, Answer) and dup.status == 400


def test_verify_cache_is_bounded_and_keeps_no_password() -> None:
    cache = VerifyCache(size=3)
    keys = [cache.key("{PLAIN}x", f"password-{i}".encode()) for i in range(5)]
    for i, key in enumerate(keys):
        cache.put(key, i % 2 == 0)
        assert b"password" not in key
    assert len(cache) == 3
    assert cache.get(keys[0]) is None and cache.get(keys[4]) is True
    assert VerifyCache().key("s", b"p") != cache.key("s", b"p")  # keyed per process


def test_compile_pays_nothing_without_access_policies() -> None:
    snapshot = Snapshot()
    assert access.compile(_route(RoutePolicy()), snapshot) == []
    compiled = access.compile(_route(RoutePolicy(source_ranges=SourceRanges(deny=("1.2.3.4/32",)),
                                                 basic_auth=BasicAuth(users=(("a", "{PLAIN}b"),)))), snapshot)
    assert [p.explain.split(":")[0] for p in compiled] == ["source ranges", "basic auth"]


# --- digest auth -----------------------------------------------------------------------------------

REALM = "Staff"


def _digest_auth() -> BasicAuth:
    ha1 = hashlib.md5(f"alice:{REALM}:pw".encode()).hexdigest()
    return BasicAuth(type="digest", realm=REALM, digest_users=(("alice", REALM, ha1),))


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _answer(nonce: str, nc: int, *, password: str = "pw", uri: str = "/a?b=1", method: str = "GET",
            user: str = "alice") -> bytes:
    ha1 = _md5(f"{user}:{REALM}:{password}")
    ncs = f"{nc:08x}"
    response = _md5(f"{ha1}:{nonce}:{ncs}:cn0nce:auth:{_md5(f'{method}:{uri}')}")
    return (f'Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", qop=auth, nc={ncs}, cnonce="cn0nce", algorithm=MD5').encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_parse_digest() -> None:
    fields = parse_digest(b'Digest username="a\\"b", realm="r, s", nc=00000001, qop=auth')
    assert fields == {"username": 'a"b', "realm": "r, s", "nc": "00000001", "qop": "auth"}
    assert parse_digest(b"Basic abc") is None
    assert parse_digest(b'Digest username="unterminated') is None


def test_digest_nonces_replays_and_staleness() -> None:
    clock = Clock()
    state = DigestState(_digest_auth(), clock)
    challenge = state.challenge()
    value = dict(challenge.extra)[b"www-authenticate"].decode()
    assert value.startswith(f'Digest algorithm="MD5", qop="auth", realm="{REALM}", nonce="')
    nonce = state.new_nonce()
    ok = state.check(b"GET", b"/a?b=1", _answer(nonce, 1), "10.0.0.1")
    assert ok.ok and ok.info.startswith(b'qop="auth", rspauth="')
    assert not state.check(b"GET", b"/a?b=1", _answer(nonce, 1), "10.0.0.1").ok  # nc replayed
    assert state.check(b"GET", b"/a?b=1", _answer(nonce, 2), "10.0.0.1").ok
    assert state.check(b"GET", b"/a?b=1", _answer(nonce, DIGEST_REPLAYS), "10.0.0.1").stale
    clock.now += DIGEST_EXPIRES + 1  # after its first use a nonce lives a little longer only
    late = state.check(b"GET", b"/a?b=1", _answer(nonce, 3), "10.0.0.1")
    assert not late.ok and late.stale
    unused = state.new_nonce()
    clock.now += DIGEST_TIMEOUT + 1  # unused past its timeout
    assert state.check(b"GET", b"/a?b=1", _answer(unused, 1), "10.0.0.1").stale
    # the URI without its query is taken too (the module's .NET compatibility)
    fresh = state.new_nonce()
    assert state.check(b"GET", b"/a?b=1", _answer(fresh, 1, uri="/a"), "10.0.0.1").ok
    assert not state.check(b"GET", b"/other", _answer(fresh, 2), "10.0.0.1").ok


def test_digest_nonces_of_another_worker_are_accepted_and_forgeries_are_not() -> None:
    clock = Clock()
    one, other = DigestState(_digest_auth(), clock), DigestState(_digest_auth(), clock)
    nonce = one.new_nonce()
    assert other.check(b"GET", b"/a?b=1", _answer(nonce, 1), "10.0.0.1").ok
    forged = nonce[:16] + "0" * 16
    result = other.check(b"GET", b"/a?b=1", _answer(forged, 1), "10.0.0.2")
    assert not result.ok and not result.stale
    changed = DigestState(BasicAuth(type="digest", realm=REALM, digest_users=(
        ("alice", REALM, _md5(f"alice:{REALM}:pw")), ("bob", REALM, _md5(f"bob:{REALM}:x")))), clock)
    assert not changed.check(b"GET", b"/a?b=1", _answer(one.new_nonce(), 1), "10.0.0.3").ok  # other users


def test_digest_wrong_passwords_lead_to_evasion() -> None:
    clock = Clock()
    state = DigestState(_digest_auth(), clock)
    for i in range(DIGEST_MAXTRIES):
        wrong = _answer(state.new_nonce(), 1, password=f"x{i}")
        assert not state.check(b"GET", b"/a?b=1", wrong, "6.6.6.6").ok
    good = _answer(state.new_nonce(), 1)
    assert not state.check(b"GET", b"/a?b=1", good, "6.6.6.6").ok  # ignored for a while
    assert state.check(b"GET", b"/a?b=1", _answer(state.new_nonce(), 1), "7.7.7.7").ok  # others are not
    clock.now += access.DIGEST_EVASION + 1
    assert state.check(b"GET", b"/a?b=1", _answer(state.new_nonce(), 1), "6.6.6.6").ok
    assert "6.6.6.6" not in state.failures  # a success clears the count


def test_digest_hook_strips_authorization_and_adds_authentication_info() -> None:
    auth = _digest_auth()
    policy = access._digest_policy(auth)
    assert policy.request is not None
    route = _route(RoutePolicy(basic_auth=auth))
    refused = policy.request(_ctx(route, []))
    assert isinstance(refused, Answer) and refused.status == 401
    nonce = dict(refused.extra)[b"www-authenticate"].decode().split('nonce="')[1].split('"')[0]
    headers = [(b"authorization", _answer(nonce, 1))]
    ctx = _ctx(route, headers, target=b"/a?b=1")
    assert policy.request(ctx) is None
    assert headers == [] and ctx.response_headers[0][0] == b"authentication-info"


# --- client certificates ---------------------------------------------------------------------------


def test_client_check_on_plain_http_and_spoofed_headers() -> None:
    from fastingress.snapshot.schema import ClientAuth, VirtualHost

    for verify, status in (("on", 400), ("optional", None), ("optional_no_ca", None), ("off", None)):
        auth = ClientAuth(ca_pem="x", verify=verify)  # type: ignore[arg-type]
        check = ClientCheck(auth, "a.test")
        headers = [(b"ssl-client-verify", b"SUCCESS"), (b"ssl-client-subject-dn", b"CN=admin")]
        route = _route(RoutePolicy(client_auth=True))
        ctx = _ctx(route, headers)
        ctx.vhost = VirtualHost("a.test", client_auth=auth)
        answer = check.judge(ctx)
        assert (answer.status if answer is not None else None) == status, verify
        assert headers == []  # what the client sent under these names never reaches the upstream
        if answer is None:
            assert ctx.upstream_headers == [(b"ssl-client-verify", b"NONE")]
    matched = ClientCheck(ClientAuth(ca_pem="x", verify="off", match_cn="CN=admin"), "a.test")
    spoofed = [(b"ssl-client-subject-dn", b"CN=admin")]
    refused = matched.judge(_ctx(_route(RoutePolicy(client_auth=True)), spoofed))
    assert refused is not None and refused.status == 403  # no certificate: no subject to match
    page = ClientCheck(ClientAuth(ca_pem="x", error_page="/cert-error"), "a.test")
    redirect = page.judge(_ctx(_route(RoutePolicy(client_auth=True)), []))
    assert redirect is not None and redirect.status == 302
    assert page.judge(_ctx(_route(RoutePolicy(client_auth=True)), [], target=b"/cert-error")) is None


async def test_deferred_check_survives_cancellation() -> None:
    stored = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    auth = BasicAuth(users=(("a", stored),))
    policy = access._basic_policy(auth, VerifyCache())
    assert policy.request is not None
    creds = [(b"authorization", _basic("a", "pw"))]
    deferred = policy.request(_ctx(_route(RoutePolicy(basic_auth=auth)), creds))
    assert isinstance(deferred, Defer)
    with trio.move_on_after(0):
        await deferred.run()  # the client went away: nothing breaks


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_client_address(ip: str) -> None:
    address = client_address(ip)
    assert address is not None and address.is_loopback
