"""Access annotations through real sockets (issue 9, area "access"): a real ``fastingress
standalone`` process in front of a real upstream that records every request reaching it.

* source ranges (allow, deny, both; IPv4, and IPv6 on ``::1`` with a second process bound there);
* basic auth with every htpasswd hash kind nginx accepts (bcrypt $2y$/$2a$/$2b$, apr1, $1$, $5$,
  $6$, DES crypt, {SHA}, {SSHA}, {PLAIN}), auth-file and auth-map Secrets, and digest auth
  (httpx's RFC 7616 client) with stale nonces and replays;
* client certificates made with trustme: verify on/optional/optional_no_ca/off, a wrong CA, a
  revoked certificate (CRL), chain depth, match-cn, the error page, the certificate passed
  upstream, a client naming another host in SNI (421), no session resumption across hosts.

Every refusal is checked to reach no upstream: the guarded upstream's request log must hold
exactly the requests that were let through.  Data-path cases run on both HTTP/1.1 codecs.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from tests.support import manifests as m
from tests.support.process import Fastingress, run_fastingress
from tests.support.tls import client_context, tls_connect, tls_secret, with_tls
from tests.support.upstream import EchoServer

P = "nginx.ingress.kubernetes.io/"
CODECS = ("llhttp", "h11")
PASSWORD = "s3cret pass"
# One user per hash kind, all with PASSWORD: made by `openssl passwd` (apr1, $1$, $5$, $6$), the
# system crypt() (DES), the bcrypt package ($2a$, $2b$; $2y$ is the same algorithm under PHP's and
# Apache's name), or by hand ({SHA}, {SSHA}, {PLAIN}).
HASHES = {
    "bcrypt-2y": "$2y$05$oDxVnCUwT3pBMgnp8NPRt.GH5TPMr9.MNrTR8r0VKSP9IoPLYXOpG",
    "bcrypt-2a": "$2a$05$oDxVnCUwT3pBMgnp8NPRt.GH5TPMr9.MNrTR8r0VKSP9IoPLYXOpG",
    "bcrypt-2b": "$2b$05$iD1uDGMRkd9VrRGCDQetsOq6zc8T3LWWCvOEP2cWc3IsrVFPUT1Xm",
    "apr1": "$apr1$r31ZqUxC$kCOJcATB/qpXoD/0YlkTO.",
    "md5": "$1$saltsalt$5lF22gyv5RCQWSRkctJIT0",
    "sha256": "$5$saltstring5$NMBo5Cdb9GIT2aux9py1Y2eLVOEGKEvN20aDC9DbXlD",
    "sha512": "$6$saltstring6$4a/uF9jCxEFJNuvoC.5iEwGeC9pq2aivbEEqqVivZntFmLJeTWcSeM.14ktaMqLXwUbS/"
              "4knxoW6kRYy1wsrh/",
    "des": "abTk71qDTQKMY",
    "sha1": "{SHA}ohgYgF2kkgMlRbH1HlEDczlOc+M=",
    "ssha": "{SSHA}3rob4GAFsaQP3VDYJS/nfDeRwnJzYWx0MTIzNA==",
    "plain": "{PLAIN}" + PASSWORD,
}
HTPASSWD = "# users of every kind\n" + "".join(f"{user}:{h}\n" for user, h in HASHES.items())
REALM = "Staff Only"


def digest_line(user: str, password: str, realm: str = REALM) -> str:
    return f"{user}:{realm}:{hashlib.md5(f'{user}:{realm}:{password}'.encode()).hexdigest()}"


def secret(name: str, data: dict[str, bytes], namespace: str = "default") -> str:
    doc = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- the setup -------------------------------------------------------------------------------


@dataclass
class PKI:
    server_ca: trustme.CA
    client_ca: trustme.CA
    client: trustme.LeafCert  # CN client.example.com, from client_ca
    revoked: trustme.LeafCert  # from client_ca, in its CRL
    stranger: trustme.LeafCert  # from a CA nobody trusts (but other-ca.test)
    stranger_ca: trustme.CA
    deep: trustme.LeafCert  # client_ca -> intermediate -> intermediate -> leaf
    crl_pem: bytes


def _crl(ca: trustme.CA, revoked: trustme.LeafCert) -> bytes:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    leaf = x509.load_pem_x509_certificate(revoked.cert_chain_pems[0].bytes())
    now = datetime.datetime.now(datetime.UTC)
    entry = (x509.RevokedCertificateBuilder().serial_number(leaf.serial_number)
             .revocation_date(now - datetime.timedelta(minutes=1)).build())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
           .last_update(now - datetime.timedelta(minutes=1)).next_update(now + datetime.timedelta(days=1))
           .add_revoked_certificate(entry).sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    return crl.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki() -> PKI:
    client_ca = trustme.CA(organization_name="fastingress client CA")
    revoked = client_ca.issue_cert("revoked.example.com", common_name="revoked.example.com")
    deep_ca = client_ca.create_child_ca().create_child_ca()
    stranger_ca = trustme.CA()
    return PKI(
        server_ca=trustme.CA(),
        client_ca=client_ca,
        client=client_ca.issue_cert("client.example.com", common_name="client.example.com"),
        revoked=revoked,
        stranger=stranger_ca.issue_cert("mallory.example.com", common_name="mallory.example.com"),
        stranger_ca=stranger_ca,
        deep=deep_ca.issue_cert("deep.example.com", common_name="deep.example.com"),
        crl_pem=_crl(client_ca, revoked),
    )


MTLS_HOSTS: dict[str, dict[str, str]] = {  # host -> its auth-tls-* annotations
    "on.test": {"auth-tls-verify-client": "on", "auth-tls-pass-certificate-to-upstream": "true"},
    "optional.test": {"auth-tls-verify-client": "optional"},
    "noca.test": {"auth-tls-verify-client": "optional_no_ca"},
    "off.test": {"auth-tls-verify-client": "off"},
    "cn-no.test": {"auth-tls-match-cn": "CN=notgonnamatch"},
    "cn-yes.test": {"auth-tls-match-cn": "CN=(itwillmatch|client\\.example\\.com)"},
    "errpage.test": {"auth-tls-error-page": "https://login.example.com/cert-error"},
    "crl.test": {"auth-tls-secret": "default/client-ca-crl"},
    "depth2.test": {"auth-tls-verify-depth": "2"},
    "other-ca.test": {"auth-tls-secret": "default/stranger-ca"},
}


@dataclass
class Setup:
    fi: Fastingress
    guarded: EchoServer
    open: EchoServer
    pki: PKI
    codec: str


def _docs(guarded: EchoServer, open_: EchoServer, pki: PKI) -> list[str]:
    digest_users = "\n".join([digest_line("alice", PASSWORD), digest_line("bob", "other", realm="elsewhere")])
    docs = [
        m.service("guarded"), m.endpoint_slice("guarded", [guarded.port]),
        m.service("web"), m.endpoint_slice("web", [open_.port]),
        secret("htpasswd", {"auth": HTPASSWD.encode()}),
        secret("usermap", {"carol": HASHES["apr1"].encode(), "dave": HASHES["bcrypt-2b"].encode()}),
        secret("digest", {"auth": digest_users.encode()}),
        secret("no-auth-key", {"users": HTPASSWD.encode()}),
        secret("client-ca", {"ca.crt": pki.client_ca.cert_pem.bytes()}),
        secret("client-ca-crl", {"ca.crt": pki.client_ca.cert_pem.bytes(), "ca.crl": pki.crl_pem}),
        secret("stranger-ca", {"ca.crt": pki.stranger_ca.cert_pem.bytes()}),
        tls_secret("site-tls", pki.server_ca.issue_cert(*MTLS_HOSTS, "open-tls.test")),
        m.ingress("open", [("open.test", "/", "Prefix", "web")]),
        m.ingress("allow", [("allow.test", "/", "Prefix", "guarded")],
                  annotations={P + "allowlist-source-range": "10.0.0.0/8, 127.0.0.0/8"}),
        m.ingress("allow-other", [("allow-other.test", "/", "Prefix", "guarded")],
                  annotations={P + "whitelist-source-range": "10.0.0.0/8,192.168.0.0/16"}),
        m.ingress("deny", [("deny.test", "/", "Prefix", "guarded")],
                  annotations={P + "denylist-source-range": "127.0.0.1"}),
        m.ingress("deny-other", [("deny-other.test", "/", "Prefix", "guarded")],
                  annotations={P + "denylist-source-range": "203.0.113.0/24, 2001:db8::/32"}),
        m.ingress("both", [("both.test", "/", "Prefix", "guarded")],
                  annotations={P + "allowlist-source-range": "127.0.0.0/8",
                               P + "denylist-source-range": "127.0.0.1/32"}),
        m.ingress("v6", [("v6.test", "/", "Prefix", "guarded")],
                  annotations={P + "allowlist-source-range": "10.0.0.0/8, ::1"}),
        m.ingress("v4only", [("v4only.test", "/", "Prefix", "guarded")],
                  annotations={P + "allowlist-source-range": "127.0.0.0/8"}),
        m.ingress("basic", [("basic.test", "/", "Prefix", "guarded")], annotations={
            P + "auth-type": "basic", P + "auth-secret": "htpasswd", P + "auth-realm": REALM}),
        m.ingress("usermap", [("usermap.test", "/", "Prefix", "guarded")], annotations={
            P + "auth-type": "basic", P + "auth-secret": "default/usermap",
            P + "auth-secret-type": "auth-map"}),
        m.ingress("digest", [("digest.test", "/", "Prefix", "guarded")], annotations={
            P + "auth-type": "digest", P + "auth-secret": "digest", P + "auth-realm": REALM}),
        m.ingress("badkey", [("badkey.test", "/", "Prefix", "guarded")], annotations={
            P + "auth-type": "basic", P + "auth-secret": "no-auth-key"}),
        # basic auth and a source range together: both must pass
        m.ingress("ranged-basic", [("ranged-basic.test", "/", "Prefix", "guarded")], annotations={
            P + "auth-type": "basic", P + "auth-secret": "htpasswd",
            P + "denylist-source-range": "127.0.0.0/8"}),
        # a defaultBackend with basic auth on a host without a "/" rule: its requests are guarded too
        m.ingress("fallback", [("fallback.test", "/members", "Exact", "guarded")], default_backend="guarded",
                  annotations={P + "auth-type": "basic", P + "auth-secret": "htpasswd"}),
        m.ingress("fallback-open", [("fallback.test", "/open", "Exact", "web")]),
    ]
    for host, extra in MTLS_HOSTS.items():
        annotations = {P + "auth-tls-secret": "default/client-ca", **{P + k: v for k, v in extra.items()}}
        name = host.removesuffix(".test")
        doc = m.ingress(name, [(host, "/", "Prefix", "guarded")], annotations=annotations)
        docs.append(with_tls(doc, ([host], "site-tls")))
    docs.append(with_tls(m.ingress("open-tls", [("open-tls.test", "/", "Prefix", "web")]),
                         (["open-tls.test"], "site-tls")))
    return docs


@pytest.fixture(scope="module", params=CODECS)
def setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pki: PKI
) -> Iterator[Setup]:
    codec = str(request.param)
    tmp = tmp_path_factory.mktemp(f"access-{codec}")
    with EchoServer("guarded") as guarded, EchoServer("open") as open_:
        path = m.write(tmp / "access.yaml", *_docs(guarded, open_, pki))
        with run_fastingress(tmp, manifests=[path], workers=2, extra=("--http1-codec", codec)) as fi:
            yield Setup(fi, guarded, open_, pki, codec)


@pytest.fixture
def fresh(setup: Setup) -> Setup:
    """The setup with the upstream logs emptied (each test counts what reaches the upstreams)."""
    setup.guarded.requests.clear()
    setup.open.requests.clear()
    return setup


def seen(setup: Setup) -> list[str]:
    """The Host headers of the requests that reached the guarded upstream."""
    return [host_of(q) for q in setup.guarded.requests]


def host_of(request: dict[str, Any]) -> str:
    return str({k.lower(): v for k, v in request["headers"].items()}.get("host", ""))


# --- source ranges -----------------------------------------------------------------------------


def test_source_ranges_ipv4(fresh: Setup) -> None:
    with httpx.Client(base_url=fresh.fi.base, timeout=5) as client:
        assert client.get("/x", headers={"Host": "allow.test"}).status_code == 200
        r = client.get("/x", headers={"Host": "allow-other.test"})
        assert r.status_code == 403 and r.text.startswith("403 Forbidden")
        assert client.get("/x", headers={"Host": "deny.test"}).status_code == 403
        assert client.get("/x", headers={"Host": "deny-other.test"}).status_code == 200
        assert client.get("/x", headers={"Host": "both.test"}).status_code == 403  # deny comes first
        assert client.post("/x", headers={"Host": "allow-other.test"}, content=b"x" * 5000).status_code == 403
        # a forged X-Forwarded-For changes nothing: the client address is the socket's
        r = client.get("/x", headers={"Host": "allow-other.test", "X-Forwarded-For": "10.1.2.3"})
        assert r.status_code == 403
    assert seen(fresh) == ["allow.test", "deny-other.test"]


def test_source_ranges_ipv6(tmp_path: Path) -> None:
    """A process bound to ::1: its clients are ::1, matched against IPv6 entries only."""
    with EchoServer("guarded") as guarded:
        docs = [
            m.service("guarded"), m.endpoint_slice("guarded", [guarded.port]),
            m.ingress("v6", [("v6.test", "/", "Prefix", "guarded")],
                      annotations={P + "allowlist-source-range": "10.0.0.0/8, ::1"}),
            m.ingress("v4only", [("v4only.test", "/", "Prefix", "guarded")],
                      annotations={P + "allowlist-source-range": "127.0.0.0/8"}),
            m.ingress("deny6", [("deny6.test", "/", "Prefix", "guarded")],
                      annotations={P + "denylist-source-range": "::/0"}),
            m.ingress("deny-other6", [("deny-other6.test", "/", "Prefix", "guarded")],
                      annotations={P + "denylist-source-range": "2001:db8::/32, 0.0.0.0/0"}),
        ]
        path = m.write(tmp_path / "v6.yaml", *docs)
        extra = ("--bind", "::1", "--admin-bind", "127.0.0.1", "--https-port", "0")
        with run_fastingress(tmp_path, manifests=[path], workers=1, extra=extra) as fi:
            base = f"http://[::1]:{fi.http_port}"
            with httpx.Client(base_url=base, timeout=5) as client:
                assert client.get("/", headers={"Host": "v6.test"}).status_code == 200
                assert client.get("/", headers={"Host": "v4only.test"}).status_code == 403
                assert client.get("/", headers={"Host": "deny6.test"}).status_code == 403
                assert client.get("/", headers={"Host": "deny-other6.test"}).status_code == 200
        assert [host_of(q) for q in guarded.requests] == ["v6.test", "deny-other6.test"]


# --- basic auth --------------------------------------------------------------------------------


def test_basic_auth_every_hash_kind(fresh: Setup) -> None:
    with httpx.Client(base_url=fresh.fi.base, timeout=10, headers={"Host": "basic.test"}) as client:
        r = client.get("/private")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == f'Basic realm="{REALM}"'
        for user in HASHES:
            ok = client.get(f"/{user}", headers=basic(user, PASSWORD))
            assert ok.status_code == 200, (user, ok.text)
            assert "authorization" not in {k.lower() for k, _ in ok.json()["headers"]}  # not passed on
            wrong = client.get(f"/{user}", headers=basic(user, "x" + PASSWORD))
            assert wrong.status_code == 401, user
        assert client.get("/", headers=basic("nobody", PASSWORD)).status_code == 401
        assert client.get("/", headers={"Authorization": "Basic !!notbase64"}).status_code == 401
        assert client.get("/", headers={"Authorization": "Bearer abc"}).status_code == 401
        # DES reads 8 characters, as crypt(3) does everywhere
        assert client.get("/des8", headers=basic("des", PASSWORD[:8] + "anything")).status_code == 200
    assert len(fresh.guarded.requests) == len(HASHES) + 1
    assert [q["path"] for q in fresh.guarded.requests] == [f"/{u}" for u in HASHES] + ["/des8"]


def test_basic_auth_keep_alive_and_auth_map(fresh: Setup) -> None:
    with httpx.Client(base_url=fresh.fi.base, timeout=10) as client:
        for _ in range(5):  # one connection: bcrypt is checked once, then remembered
            r = client.get("/", headers={"Host": "usermap.test", **basic("dave", PASSWORD)})
            assert r.status_code == 200
        carol = basic("carol", PASSWORD)
        assert client.get("/", headers={"Host": "usermap.test", **carol}).status_code == 200
        r = client.get("/", headers={"Host": "usermap.test", **basic("carol", "nope")})
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Basic realm=""'
        r = client.get("/", headers={"Host": "badkey.test", **basic("apr1", PASSWORD)})
        assert r.status_code == 503 and "has no `auth` key" in r.text and "(fail closed)" in r.text
        # both policies must pass: good credentials from a denied address are refused
        r = client.get("/", headers={"Host": "ranged-basic.test", **basic("apr1", PASSWORD)})
        assert r.status_code == 403
    assert len(fresh.guarded.requests) == 6


def test_basic_auth_on_a_default_backend(fresh: Setup) -> None:
    with httpx.Client(base_url=fresh.fi.base, timeout=10, headers={"Host": "fallback.test"}) as client:
        assert client.get("/open").json()["server"] == "open"  # another Ingress's rule: no auth
        assert client.get("/members").status_code == 401
        assert client.get("/elsewhere").status_code == 401  # its defaultBackend: guarded
        assert client.get("/elsewhere", headers=basic("sha1", PASSWORD)).status_code == 200
    assert [q["path"] for q in fresh.guarded.requests] == ["/elsewhere"]


def test_duplicate_authorization_is_refused(fresh: Setup) -> None:
    with tls_free_connection(fresh) as conn:
        conn.putrequest("GET", "/", skip_host=True)
        conn.putheader("Host", "basic.test")
        for value in basic("apr1", PASSWORD).values():
            conn.putheader("Authorization", value)
            conn.putheader("Authorization", value)
        conn.endheaders()
        assert conn.getresponse().status == 400
    assert fresh.guarded.requests == []


class tls_free_connection:
    def __init__(self, setup: Setup) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", setup.fi.http_port, timeout=5)

    def __enter__(self) -> http.client.HTTPConnection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


# --- digest auth -------------------------------------------------------------------------------


def test_digest_auth(fresh: Setup) -> None:
    with httpx.Client(base_url=fresh.fi.base, timeout=10, headers={"Host": "digest.test"}) as client:
        r = client.get("/a")
        assert r.status_code == 401
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith(f'Digest algorithm="MD5", qop="auth", realm="{REALM}", nonce="')
        ok = client.get("/a/b?x=1", auth=httpx.DigestAuth("alice", PASSWORD))
        assert ok.status_code == 200, ok.text
        assert 'qop="auth", rspauth="' in ok.headers["authentication-info"]
        assert "authorization" not in {k.lower() for k, _ in ok.json()["headers"]}
        assert client.get("/a", auth=httpx.DigestAuth("alice", "wrong")).status_code == 401
        assert client.get("/a", auth=httpx.DigestAuth("bob", "other")).status_code == 401  # another realm
        # a replayed Authorization (same nonce and nc, on the same connection: the same worker)
        first = ok.request.headers["authorization"]
        replay = client.get("/a/b?x=1", headers={"Authorization": first})
        assert replay.status_code == 401
        # a nonce fastingress never issued is refused without "stale"
        forged = first.replace('nonce="', 'nonce="0')
        r = client.get("/a/b?x=1", headers={"Authorization": forged})
        assert r.status_code == 401 and "stale" not in r.headers["www-authenticate"]
    assert [q["path"] for q in fresh.guarded.requests] == ["/a/b?x=1"]


# --- client certificates -------------------------------------------------------------------------


def _ctx(setup: Setup, cert: trustme.LeafCert | None) -> ssl.SSLContext:
    ctx = client_context(setup.pki.server_ca)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def echoed(self, name: str) -> str | None:
        for k, v in json.loads(self.body)["headers"]:
            if k.lower() == name:
                return str(v)
        return None


def https(setup: Setup, host: str, cert: trustme.LeafCert | None, path: str = "/", *,
          sni: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    with tls_connect(setup.fi.https_port, sni or host, _ctx(setup, cert)) as sock:
        return request(sock, host, path, headers)


def request(sock: ssl.SSLSocket, host: str, path: str = "/", headers: dict[str, str] | None = None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", timeout=10)
    conn.sock = sock
    conn.request("GET", path, headers={"Host": host, **(headers or {})})
    resp = conn.getresponse()
    return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())


def test_client_certificate_verify_on(fresh: Setup) -> None:
    pki = fresh.pki
    r = https(fresh, "on.test", None)
    assert r.status == 400 and b"No required SSL certificate was sent" in r.body
    r = https(fresh, "on.test", pki.stranger)
    assert r.status == 400 and b"The SSL certificate error" in r.body
    with tls_connect(fresh.fi.https_port, "on.test", _ctx(fresh, pki.client)) as sock:
        for path in ("/one", "/two"):  # keep-alive: judged per request, computed once
            forged = {"ssl-client-verify": "FORGED", "ssl-client-subject-dn": "CN=x"}
            r = request(sock, "on.test", path, forged)
            assert r.status == 200
        assert r.echoed("ssl-client-verify") == "SUCCESS"
        assert (r.echoed("ssl-client-subject-dn") or "").startswith("CN=client.example.com,OU=")
        assert "fastingress client CA" in (r.echoed("ssl-client-issuer-dn") or "")
        cert = r.echoed("ssl-client-cert") or ""
        assert cert.startswith("-----BEGIN%20CERTIFICATE-----%0A")  # ingress-nginx's e2e test
        leaf = x509.load_pem_x509_certificate(pki.client.cert_chain_pems[0].bytes())
        assert x509.load_pem_x509_certificate(unquote(cert).encode()) == leaf
    assert [q["path"] for q in fresh.guarded.requests] == ["/one", "/two"]


def test_client_certificate_modes(fresh: Setup) -> None:
    pki = fresh.pki
    r = https(fresh, "optional.test", None, headers={"ssl-client-verify": "SUCCESS"})
    assert r.status == 200 and r.echoed("ssl-client-verify") == "NONE"  # the forged one is replaced
    assert https(fresh, "optional.test", pki.stranger).status == 400
    assert https(fresh, "optional.test", pki.client).echoed("ssl-client-verify") == "SUCCESS"
    r = https(fresh, "noca.test", pki.stranger)  # optional_no_ca: an unknown CA is let through, as said
    assert r.status == 200
    assert (r.echoed("ssl-client-verify") or "").startswith("FAILED:unable to ")  # get/verify the issuer
    assert (r.echoed("ssl-client-subject-dn") or "").startswith("CN=mallory.example.com,")
    r = https(fresh, "off.test", None)
    assert r.status == 200 and r.echoed("ssl-client-verify") == "NONE"
    assert https(fresh, "cn-no.test", pki.client).status == 403
    assert https(fresh, "cn-no.test", pki.client).body == b"client certificate unauthorized"
    assert https(fresh, "cn-yes.test", pki.client).status == 200
    r = https(fresh, "errpage.test", None)
    assert (r.status, r.headers["location"]) == (302, "https://login.example.com/cert-error")
    assert https(fresh, "errpage.test", pki.stranger).status == 302
    assert https(fresh, "errpage.test", pki.client).status == 200
    assert len(fresh.guarded.requests) == 6


def test_client_certificate_crl_and_depth(fresh: Setup) -> None:
    pki = fresh.pki
    assert https(fresh, "crl.test", pki.client).status == 200
    r = https(fresh, "crl.test", pki.revoked)
    assert r.status == 400 and b"The SSL certificate error" in r.body
    assert https(fresh, "on.test", pki.revoked).status == 200  # no CRL there
    # leaf <- intermediate <- intermediate <- root: too deep for the default depth 1
    assert https(fresh, "on.test", pki.deep).status == 400
    assert https(fresh, "depth2.test", pki.deep).status == 200
    assert seen(fresh) == ["crl.test", "on.test", "depth2.test"]


def test_client_certificate_of_another_host_is_misdirected(fresh: Setup) -> None:
    pki = fresh.pki
    # SNI names a host without client certificates; the Host header names one with them
    r = https(fresh, "on.test", pki.client, sni="open-tls.test")
    assert r.status == 421
    # verified for cn-yes.test, then asking for on.test on the same connection
    with tls_connect(fresh.fi.https_port, "cn-yes.test", _ctx(fresh, pki.client)) as sock:
        assert request(sock, "cn-yes.test").status == 200
        assert request(sock, "on.test").status == 421
    assert seen(fresh) == ["cn-yes.test"]


def _resume(setup: Setup, ctx: ssl.SSLContext, sni: str, session: ssl.SSLSession) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", setup.fi.https_port), timeout=10)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni, session=session)
    except BaseException:
        raw.close()
        raise


def test_a_resumed_session_is_judged_by_the_host_it_lands_on(fresh: Setup) -> None:
    """A resumed session runs no verification in its handshake: its certificate is judged
    again, by the CAs of the host it lands on.  Each worker has its own session cache, so a
    reconnection resumes when it meets the same worker (tried until it does; 2 workers).
    Offered to another host, a TLS 1.2 session keeps the server name it was made for (OpenSSL),
    so the request names another host than the handshake's (421), or, when not resumed, the
    certificate is judged by the other host's CAs (400): never let through."""
    ctx = _ctx(fresh, fresh.pki.client)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # session ids: resumable at once
    with tls_connect(fresh.fi.https_port, "on.test", ctx) as sock:
        assert request(sock, "on.test", "/first").status == 200
        session = sock.session
    resumed = 0
    for _ in range(16):
        with _resume(fresh, ctx, "on.test", session) as sock:
            r = request(sock, "on.test", "/again")
            assert r.status == 200 and r.echoed("ssl-client-verify") == "SUCCESS"
            resumed += sock.session_reused
        if resumed:
            break
    assert resumed, "no reconnection met the worker that holds the session"
    outcomes = set()
    for _ in range(8):
        with _resume(fresh, ctx, "other-ca.test", session) as sock:
            r = request(sock, "other-ca.test", "/elsewhere")
            outcomes.add((r.status, sock.session_reused))
    assert outcomes <= {(421, True), (400, False)}, outcomes
    plain = _ctx(fresh, None)
    plain.maximum_version = ssl.TLSVersion.TLSv1_2
    with tls_connect(fresh.fi.https_port, "open-tls.test", plain) as sock:
        assert request(sock, "open-tls.test").status == 200
        session = sock.session
    with _resume(fresh, plain, "on.test", session) as sock:  # a session of a host without them
        r = request(sock, "on.test", "/no-cert")
        # no certificate (400), or OpenSSL kept the session's server name (open-tls.test) for a
        # full handshake: then the request names another host (421)
        assert r.status in {400, 421}, (r, sock.session_reused)
    paths = [q["path"] for q in fresh.guarded.requests]
    assert paths[0] == "/first" and set(paths[1:]) == {"/again"}


def test_plain_http_to_a_client_certificate_host(fresh: Setup) -> None:
    with httpx.Client(base_url=fresh.fi.base, timeout=5) as client:
        r = client.get("/", headers={"Host": "on.test"})
        assert r.status_code == 308  # the host has TLS: to HTTPS first
    assert fresh.guarded.requests == []


def test_status_has_no_not_supported_diagnostic_for_access_keys(setup: Setup) -> None:
    keys = ("auth-type", "auth-secret", "auth-tls", "source-range", "auth-realm")
    for d in setup.fi.status()["diagnostics"]:
        if any(k in d["field"] for k in keys):
            assert "not implemented" not in d["message"] and "not supported" not in d["message"], d



def test_client_certificates_over_http2(fresh: Setup) -> None:
    """HTTP/2 streams take the connection's certificate verdict too (ALPN h2, httpx)."""
    url = f"https://127.0.0.1:{fresh.fi.https_port}/h2"
    for cert, expected in ((fresh.pki.client, 200), (None, 400), (fresh.pki.stranger, 400)):
        with httpx.Client(http2=True, verify=_ctx(fresh, cert), timeout=10) as client:
            r = client.get(url, headers={"host": "on.test"}, extensions={"sni_hostname": "on.test"})
            assert r.http_version == "HTTP/2"
            assert r.status_code == expected, (cert, r.text)
            if expected == 200:
                headers = {k.lower(): v for k, v in r.json()["headers"]}
                assert headers["ssl-client-verify"] == "SUCCESS"
                r = client.get(url, headers={"host": "open-tls.test"}, extensions={"sni_hostname": "on.test"})
                assert r.status_code == 200 and r.json()["server"] == "open"  # no client auth there
    assert seen(fresh) == ["on.test"]
