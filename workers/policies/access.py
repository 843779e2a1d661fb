"""Access policies (issue 9): client certificates, source ranges, basic and digest auth.

Theory of operation
-------------------
In nginx's order: the client certificate is judged before anything else (nginx does it when
the request starts, and ``auth-tls-match-cn`` is a server-level ``if``), so its hook is in the
REWRITE phase; then ``deny``/``allow`` (source ranges) and ``auth_basic``/``auth_digest`` in
the ACCESS phase, all of which must pass (``satisfy all``).

* Client certificates (``RoutePolicy.client_auth``: the host's ``VirtualHost.client_auth``):
  ``workers.clientcert`` holds what the handshake saw.  A host that verifies answers 421 when
  the connection was verified for another host (SNI named it), 400 "The SSL certificate
  error" (nginx 495) for a certificate that failed (``optional_no_ca`` lets an unknown CA
  through), 400 "No required SSL certificate was sent" (496) without one when verification
  is ``on``; ``auth-tls-error-page`` turns those 400s into a 302 there (a path error page is
  itself served without a certificate, as nginx's internal redirect does).  Plain HTTP carries
  no certificate at all.  Then ``auth-tls-match-cn`` is searched in the subject DN (403
  "client certificate unauthorized").  The upstream gets ``ssl-client-verify``,
  ``ssl-client-subject-dn``, ``ssl-client-issuer-dn`` (and ``ssl-client-cert`` if asked),
  replacing whatever the client sent under those names.
* Source ranges: CIDRs merged into sorted intervals per address family; a lookup is one
  ``bisect``.  IPv4-mapped IPv6 clients are matched as IPv4 (as nginx does).  A client
  address that does not parse is refused.  The answer is 403.
* Basic auth: ``Authorization: Basic`` is checked against the htpasswd users
  (``fastingress.htpasswd``; 401 with ``WWW-Authenticate: Basic realm="..."`` otherwise).
  Verifying bcrypt or SHA-crypt costs milliseconds, so a check runs in a thread (``Defer``),
  and its verdict is remembered in a per-worker, bounded cache keyed by a keyed hash of the
  stored hash and the password (never the password itself): a keep-alive client pays once.
* Digest auth (``auth_digest`` of nginx-http-auth-digest, ingress-nginx's module): RFC 2617
  MD5 with ``qop="auth"``, nonces valid 60 s until first used, then 10 s, each ``nc`` once and
  below 20; a client with 5 failures is refused for 300 s; ``Authentication-Info`` on success.
  Nonces carry their issue time and a MAC keyed by the users' HA1s, so every worker accepts
  the nonces of the others (replays are tracked per worker).
* Both kinds of auth remove ``Authorization`` from what the upstream gets (ingress-nginx:
  ``proxy_set_header Authorization ""``).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple

import trio

from fastingress import htpasswd
from fastingress.snapshot.schema import BasicAuth, ClientAuth, Route, Snapshot, SourceRanges, VirtualHost
from workers.clientcert import OPTIONAL_NO_CA_ERRORS, client_auth_key, peer
from workers.heads import TEXT, error_body
from workers.policy import ACCESS, REWRITE, Answer, Defer, Policy, RequestCtx

log = logging.getLogger("fastingress.worker")

FORBIDDEN = Answer(403, error_body(403))
AUTHORIZATION = b"authorization"


# --- source ranges -------------------------------------------------------------------------


class Ranges:
    """A set of CIDRs for membership tests (sorted, merged intervals per family)."""

    __slots__ = ("_v4", "_v6")

    def __init__(self, cidrs: Sequence[str]) -> None:
        nets: dict[int, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {4: [], 6: []}
        for cidr in cidrs:
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                continue  # translation emits only valid ones
            nets[net.version].append(net)
        self._v4 = self._intervals(nets[4])
        self._v6 = self._intervals(nets[6])

    @staticmethod
    def _intervals(
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    ) -> tuple[list[int], list[int]]:
        spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in nets)
        starts: list[int] = []
        ends: list[int] = []
        for start, end in spans:
            if ends and start <= ends[-1] + 1:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        return starts, ends

    def __bool__(self) -> bool:
        return bool(self._v4[0] or self._v6[0])

    def contains(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        starts, ends = self._v4 if address.version == 4 else self._v6
        value = int(address)
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= ends[i]


def client_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client address as nginx matches it (IPv4-mapped IPv6 as IPv4); None if unusable."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6:
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped
    return address


class RangeCheck:
    """nginx ``deny <deny>...; allow <allow>...; deny all;`` (the last only with an allow list)."""

    _CACHE_MAX = 4096

    def __init__(self, ranges: SourceRanges) -> None:
        self.allow = Ranges(ranges.allow)
        self.deny = Ranges(ranges.deny)
        self.has_allow = bool(ranges.allow)
        self._seen: dict[str, bool] = {}

    def allowed(self, client_ip: str) -> bool:
        found = self._seen.get(client_ip)
        if found is None:
            found = self._judge(client_ip)
            if len(self._seen) >= self._CACHE_MAX:
                self._seen.clear()
            self._seen[client_ip] = found
        return found

    def _judge(self, client_ip: str) -> bool:
        address = client_address(client_ip)
        if address is None:
            return False
        if self.deny.contains(address):
            return False
        return not self.has_allow or self.allow.contains(address)


def _ranges_policy(ranges: SourceRanges) -> Policy:
    check = RangeCheck(ranges)

    def request(ctx: RequestCtx) -> Answer | None:
        return None if check.allowed(ctx.client_ip) else FORBIDDEN

    parts = []
    if ranges.deny:
        parts.append("deny " + ", ".join(ranges.deny))
    if ranges.allow:
        parts.append("allow " + ", ".join(ranges.allow) + ", deny all others")
    return Policy(ACCESS, request=request, explain="source ranges: " + "; ".join(parts) + " (403)")


# --- basic auth ---------------------------------------------------------------------------


class VerifyCache:
    """Verdicts of password checks (a memo of a pure function), bounded, least recently used
    first out.  Keys are HMACs (a per-process random key) of the stored hash and the password."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._key = os.urandom(32)
        self._entries: OrderedDict[bytes, bool] = OrderedDict()

    def key(self, stored: str, password: bytes) -> bytes:
        return hmac.new(self._key, stored.encode("latin-1") + b"\0" + password, hashlib.sha256).digest()

    def get(self, key: bytes) -> bool | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: bytes, verdict: bool) -> None:
        self._entries[key] = verdict
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


VERIFIED = VerifyCache()  # one per worker process: the memo outlives snapshot generations


def parse_basic(value: bytes | None) -> tuple[bytes, bytes] | None:
    """(user, password) of ``Authorization: Basic ...`` as nginx reads it; None if not that."""
    if value is None or len(value) < 6 or value[:6].lower() != b"basic ":
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(b" "), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user, password


def _authorization(ctx: RequestCtx) -> tuple[bytes | None, bool]:
    """The Authorization header (removed from what the upstream gets) and whether it was
    sent more than once (nginx: 400)."""
    values = [v for n, v in ctx.headers if n == AUTHORIZATION]
    if values:
        ctx.headers[:] = [(n, v) for n, v in ctx.headers if n != AUTHORIZATION]
    return (values[0] if values else None), len(values) > 1


def _quoted(text: str) -> bytes:
    return text.encode("latin-1", "replace").replace(b"\\", b"\\\\").replace(b'"', b'\\"')


def _basic_policy(auth: BasicAuth, cache: VerifyCache) -> Policy:
    users: dict[bytes, str] = {}
    for name, stored in auth.users:
        users.setdefault(name.encode("latin-1", "replace"), stored)
    realm = b'Basic realm="%s"' % _quoted(auth.realm)
    challenge = Answer(401, error_body(401), TEXT, ((b"www-authenticate", realm),))
    bad_request = Answer(400, error_body(400, "more than one Authorization header"))

    def request(ctx: RequestCtx) -> Answer | Defer | None:
        value, twice = _authorization(ctx)
        if twice:
            return bad_request
        creds = parse_basic(value)
        if creds is None:
            return challenge
        stored = users.get(creds[0])
        if stored is None:
            return challenge
        password = creds[1]
        key = cache.key(stored, password)
        verdict = cache.get(key)
        if verdict is not None:
            return None if verdict else challenge
        if not htpasswd.slow(stored):
            verdict = htpasswd.verify(stored, password)
            cache.put(key, verdict)
            return None if verdict else challenge

        async def run() -> Answer | None:
            ok = await trio.to_thread.run_sync(htpasswd.verify, stored, password, abandon_on_cancel=True)
            cache.put(key, ok)
            return None if ok else challenge

        return Defer(run)

    what = f"basic auth: realm {auth.realm!r}, {len(users)} user(s) from Secret {auth.secret} (401)"
    return Policy(ACCESS, request=request, explain=what)


# --- digest auth ----------------------------------------------------------------------------

DIGEST_TIMEOUT = 60.0  # auth_digest_timeout: a challenge's nonce is good this long until used
DIGEST_EXPIRES = 10.0  # auth_digest_expires: ... and this long after its first use
DIGEST_REPLAYS = 20  # auth_digest_replays: nc values 1..19, each once
DIGEST_MAXTRIES = 5  # auth_digest_maxtries: failures before a client is ignored ...
DIGEST_EVASION = 300.0  # auth_digest_evasion_time: ... for this long
_TABLE_MAX = 10000
_PARAM = re.compile(rb'\s*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,"]*)\s*(?:,|$)')


def parse_digest(value: bytes | None) -> dict[str, str] | None:
    """The parameters of ``Authorization: Digest ...`` (names lower-case); None if not that."""
    if value is None or value[:7].lower() != b"digest ":
        return None
    rest = value[7:]
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        if rest[pos:].strip() == b"":
            break
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            return None
        raw = m.group(2)
        if raw.startswith(b'"'):
            raw = re.sub(rb"\\(.)", rb"\1", raw[1:-1])
        params.setdefault(m.group(1).decode("latin-1").lower(), raw.decode("latin-1"))
        pos = m.end()
    return params


_REQUIRED = ("username", "qop", "realm", "nonce", "nc", "uri", "cnonce", "response")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("latin-1", "replace")).hexdigest()


class _Nonce:
    __slots__ = ("expires", "used")

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.used: set[int] = set()


class DigestResult(NamedTuple):
    ok: bool
    stale: bool = False
    info: bytes = b""  # Authentication-Info on success


class DigestState:
    """Nonces, replays and failures of one digest-protected route (sans-I/O: a clock is given)."""

    def __init__(self, auth: BasicAuth, clock: Callable[[], float] = time.time) -> None:
        self.realm = auth.realm
        self.clock = clock
        self.users = {(user, realm): ha1.lower() for user, realm, ha1 in reversed(auth.digest_users)}
        h = hashlib.sha256(b"fastingress digest nonce\0")
        for user, realm, ha1 in auth.digest_users:  # the key is as secret as the HA1s it covers
            h.update(f"{user}:{realm}:{ha1}\n".encode("latin-1", "replace"))
        self._key = h.digest()
        self.nonces: OrderedDict[str, _Nonce] = OrderedDict()
        self.failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    # -- nonces --------------------------------------------------------------------------

    def _mac(self, stamp: str) -> str:
        return hmac.new(self._key, stamp.encode(), hashlib.sha256).hexdigest()[:16]

    def new_nonce(self) -> str:
        stamp = f"{int(self.clock()) & 0xFFFFFFFF:08x}{secrets.randbits(32):08x}"
        return stamp + self._mac(stamp)

    def challenge(self, stale: bool = False) -> Answer:
        value = b'Digest algorithm="MD5", qop="auth", realm="%s", nonce="%s"' % (
            _quoted(self.realm), self.new_nonce().encode())
        if stale:
            value += b', stale="true"'
        return Answer(401, error_body(401), TEXT, ((b"www-authenticate", value),))

    def _issued(self, nonce: str) -> float | None:
        """When ``nonce`` was issued by one of us; None if it is not ours."""
        if len(nonce) != 32 or not hmac.compare_digest(self._mac(nonce[:16]), nonce[16:]):
            return None
        try:
            return float(int(nonce[:8], 16))
        except ValueError:
            return None

    def _use(self, nonce: str, issued: float, nc: int, now: float) -> DigestResult | None:
        """Spend ``nc`` of ``nonce``; a refusal (stale or replayed), or None when fine."""
        entry = self.nonces.get(nonce)
        if entry is None:
            if issued + DIGEST_TIMEOUT <= now or issued > now + DIGEST_TIMEOUT:
                return DigestResult(False, stale=True)
            entry = _Nonce(now + DIGEST_EXPIRES)  # first use: good for a little longer
            self._remember(nonce, entry, now)
        elif entry.expires <= now:
            return DigestResult(False, stale=True)
        if nc in entry.used:
            return DigestResult(False)
        entry.used.add(nc)
        return None

    def _remember(self, nonce: str, entry: _Nonce, now: float) -> None:
        self.nonces[nonce] = entry
        if len(self.nonces) > _TABLE_MAX:
            for key in [k for k, e in self.nonces.items() if e.expires <= now]:
                del self.nonces[key]
            while len(self.nonces) > _TABLE_MAX:
                self.nonces.popitem(last=False)

    # -- failures (auth_digest_maxtries / evasion_time) ----------------------------------

    def evading(self, client: str, now: float) -> bool:
        count, until = self.failures.get(client, (0, 0.0))
        return count >= DIGEST_MAXTRIES and until > now

    def _failed(self, client: str, now: float) -> None:
        count, until = self.failures.pop(client, (0, 0.0))
        if until <= now:
            count = 0
        self.failures[client] = (count + 1, now + DIGEST_EVASION)
        while len(self.failures) > _TABLE_MAX:
            self.failures.popitem(last=False)

    # -- one request ---------------------------------------------------------------------

    def check(self, method: bytes, target: bytes, header: bytes | None, client: str) -> DigestResult:
        now = self.clock()
        fields = parse_digest(header)
        if fields is None or any(not fields.get(name) for name in _REQUIRED):
            return DigestResult(False)
        if self.evading(client, now):
            return DigestResult(False)
        result = self._verify(method, target, fields, now)
        if result.ok:
            self.failures.pop(client, None)
        elif not result.stale:
            self._failed(client, now)
        return result

    def _verify(self, method: bytes, target: bytes, f: dict[str, str], now: float) -> DigestResult:
        uri = f["uri"].encode("latin-1")
        if target != uri and not (target.startswith(uri) and target[len(uri):len(uri) + 1] == b"?"):
            return DigestResult(False)  # the module also takes the URI without its query (.NET)
        if f["qop"] != "auth" or f.get("algorithm", "MD5").upper() != "MD5":
            return DigestResult(False)
        ha1 = self.users.get((f["username"], f["realm"]))
        if ha1 is None:
            return DigestResult(False)
        tail = f"{f['nonce']}:{f['nc']}:{f['cnonce']}:{f['qop']}"
        ha2 = _md5(f"{method.decode('latin-1')}:{f['uri']}")
        if not hmac.compare_digest(_md5(f"{ha1}:{tail}:{ha2}"), f["response"].lower()):
            return DigestResult(False)
        issued = self._issued(f["nonce"])
        if issued is None:
            return DigestResult(False)
        try:
            nc = int(f["nc"], 16)
        except ValueError:
            return DigestResult(False)
        if not 0 < nc < DIGEST_REPLAYS:
            return DigestResult(False, stale=True)
        refused = self._use(f["nonce"], issued, nc, now)
        if refused is not None:
            return refused
        rspauth = _md5(f"{ha1}:{tail}:{_md5(':' + f['uri'])}")
        info = f'qop="auth", rspauth="{rspauth}", cnonce="{f["cnonce"]}", nc={f["nc"]}'
        return DigestResult(True, info=info.encode("latin-1", "replace"))


_INFO_SAFE = re.compile(rb"^[\x20-\x7e]*$")


def _digest_policy(auth: BasicAuth) -> Policy:
    state = DigestState(auth)
    bad_request = Answer(400, error_body(400, "more than one Authorization header"))

    def request(ctx: RequestCtx) -> Answer | None:
        value, twice = _authorization(ctx)
        if twice:
            return bad_request
        result = state.check(ctx.method, ctx.target, value, ctx.client_ip)
        if not result.ok:
            return state.challenge(result.stale)
        if _INFO_SAFE.match(result.info):
            ctx.response_headers.append((b"authentication-info", result.info))
        return None

    return Policy(ACCESS, request=request, explain=(
        f"digest auth: realm {auth.realm!r}, {len(state.users)} user(s) from Secret {auth.secret} (401)"))


# --- client certificates -----------------------------------------------------------------

SSL_CLIENT_HEADERS = (
    b"ssl-client-cert", b"ssl-client-verify", b"ssl-client-subject-dn", b"ssl-client-issuer-dn",
)
NO_CERT = Answer(400, error_body(400, "No required SSL certificate was sent"))
CERT_ERROR = Answer(400, error_body(400, "The SSL certificate error"))
MISDIRECTED = Answer(421, error_body(421, "the TLS server name (SNI) names another host"))
CN_REFUSED = Answer(403, b"client certificate unauthorized")


class ClientCheck:
    """The verdict on one request's client certificate for a host's ``ClientAuth``."""

    def __init__(self, auth: ClientAuth, hostname: str) -> None:
        self.auth = auth
        self.key = client_auth_key(auth, hostname)
        self.match = re.compile(auth.match_cn) if auth.match_cn else None
        page = auth.error_page
        self.error_answer: Answer | None = None
        self.exempt = ""  # a path error page: served without a certificate (nginx: internal redirect)
        if page:
            location = page.encode("latin-1", "replace")
            self.error_answer = Answer(302, error_body(302), TEXT, ((b"location", location),))
            if page.startswith("/"):
                self.exempt = page

    def judge(self, ctx: RequestCtx) -> Answer | None:
        for name in SSL_CLIENT_HEADERS:  # proxy_set_header replaces what the client sent
            if any(n == name for n, _ in ctx.headers):
                ctx.headers[:] = [(n, v) for n, v in ctx.headers if n != name]
        auth = self.auth
        info = peer(ctx.tls_peer if ctx.tls and auth.verify != "off" else None, self.key)
        if auth.verify != "off" and ctx.path != self.exempt:
            refused = self._refusal(info.misdirected, info.error, info.has_cert, ctx.tls)
            if refused is not None:
                return refused
        if self.match is not None and not self.match.search(info.subject.decode("latin-1")):
            return CN_REFUSED
        add = ctx.upstream_headers.append
        if auth.pass_certificate and info.escaped_cert:
            add((b"ssl-client-cert", info.escaped_cert))
        add((b"ssl-client-verify", info.verify))
        if info.subject:
            add((b"ssl-client-subject-dn", info.subject))
        if info.issuer:
            add((b"ssl-client-issuer-dn", info.issuer))
        return None

    def _refusal(self, misdirected: bool, error: int, has_cert: bool, tls: bool) -> Answer | None:
        if misdirected:
            return MISDIRECTED
        if error and not (self.auth.verify == "optional_no_ca" and error in OPTIONAL_NO_CA_ERRORS):
            return self.error_answer or CERT_ERROR
        if self.auth.verify == "on" and not has_cert:
            return self.error_answer or NO_CERT
        return None


def _client_policy() -> Policy:
    checks: dict[int, tuple[ClientAuth, ClientCheck]] = {}  # one host's settings, compiled on first use

    def request(ctx: RequestCtx) -> Answer | None:
        vhost: VirtualHost | None = ctx.vhost
        auth = vhost.client_auth if vhost is not None else None
        if auth is None:  # a hand-made snapshot: the flag without the settings refuses
            return Answer(503, error_body(503, "client certificate settings missing for this host"))
        found = checks.get(id(auth))
        if found is None or found[0] is not auth:
            assert vhost is not None
            found = (auth, ClientCheck(auth, vhost.hostname))
            checks.clear()
            checks[id(auth)] = found
        return found[1].judge(ctx)

    return Policy(REWRITE, request=request,
                  explain="client certificates: as the host's auth-tls-* say (400/403)")


def explain_client(auth: ClientAuth) -> str:
    parts = [f"verify {auth.verify}", f"depth {auth.depth}", f"CA from Secret {auth.secret}"]
    if auth.crl_pem:
        parts.append("with its CRL")
    if auth.match_cn:
        parts.append(f"subject must match {auth.match_cn}")
    if auth.error_page:
        parts.append(f"errors redirect to {auth.error_page}")
    if auth.pass_certificate:
        parts.append("ssl-client-cert passed upstream")
    return "client certificates: " + ", ".join(parts)


# --- the area's compiler ------------------------------------------------------------------


def compile(route: Route, snapshot: Snapshot) -> Sequence[Policy]:
    policy = route.policy
    found: list[Policy] = []
    if policy.client_auth:
        found.append(_client_policy())
    if policy.source_ranges is not None:
        found.append(_ranges_policy(policy.source_ranges))
    auth = policy.basic_auth
    if auth is not None:
        found.append(_digest_policy(auth) if auth.type == "digest" else _basic_policy(auth, VERIFIED))
    return found


__all__ = [
    "VERIFIED", "ClientCheck", "DigestResult", "DigestState", "RangeCheck", "Ranges", "VerifyCache",
    "client_address", "compile", "explain_client", "parse_basic", "parse_digest",
]
