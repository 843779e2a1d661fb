"""Fail closed, through real sockets (issue 8): every access-guarding annotation, applied to a
real fastingress process in front of a real upstream that records what reaches it, lets no
unauthenticated request through.  An annotation fastingress does not implement yet answers
503 naming the key; once one is implemented (issue 9) it must answer 401/403 instead, and
the upstream must still see nothing, so the expectations follow the annotation registry.

Also here: ``--unsafe-fail-open`` (the same manifests served open: the guarded upstream is
reachable, so the assertions above can fail), ``fastingress explain --admin`` against the
running instance, and the typo'd key named in /status.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
import trustme
import yaml

from fastingress.translate.annotations import PREFIX, REGISTRY
from tests.support import manifests as m
from tests.support.h2client import H2Client
from tests.support.process import Fastingress, run_fastingress
from tests.support.tls import client_context, request_on, tls_connect, tls_secret, with_tls
from tests.support.upstream import EchoServer

HTPASSWD = "foo:$apr1$OFG3Xybp$ckL0FHDAkoXYIlH9.cysT0"  # user foo, password bar


@dataclass(frozen=True)
class Guard:
    host: str
    annotations: dict[str, str]
    unusable: bool = False  # implemented, but its Secret is missing: fails closed all the same


def guards(auth_port: int) -> list[Guard]:
    return [
        Guard("basic.test", {PREFIX + "auth-type": "basic", PREFIX + "auth-secret": "basic-auth"}),
        Guard("basic-nosecret.test", {PREFIX + "auth-type": "basic", PREFIX + "auth-secret": "missing"},
              unusable=True),
        # the auth service would refuse everyone: it must not matter whether it is asked
        Guard("authurl.test", {PREFIX + "auth-url": f"http://127.0.0.1:{auth_port}/__status/401"}),
        Guard("allow.test", {PREFIX + "whitelist-source-range": "10.0.0.0/8"}),  # 127.0.0.1 is outside
        Guard("allowlist.test", {PREFIX + "allowlist-source-range": "192.0.2.0/24"}),
        Guard("deny.test", {PREFIX + "denylist-source-range": "127.0.0.0/8"}),  # 127.0.0.1 is inside
        Guard("mtls.test", {PREFIX + "auth-tls-secret": "default/client-ca",
                            PREFIX + "auth-tls-verify-client": "on"}),
        Guard("mtls-noca.test", {PREFIX + "auth-tls-secret": "default/missing-ca",
                                 PREFIX + "auth-tls-verify-client": "on"}, unusable=True),
        Guard("fi-prefix.test", {"fastingress.io/auth-url": f"http://127.0.0.1:{auth_port}/__status/401"}),
    ]


def expected_statuses(guard: Guard) -> set[int]:
    """503 while a key is not implemented or its Secret is missing (fail closed); once it is
    honoured, 401/403 (400 for client certificates: nginx's "No required SSL certificate")."""
    closed = guard.unusable or any(REGISTRY[k.split("/", 1)[1]].status == "closed" for k in guard.annotations)
    if closed:
        return {503}
    return {400, 403} if guard.host.startswith("mtls") else {401, 403}


@dataclass
class Setup:
    fi: Fastingress
    guarded: EchoServer
    open: EchoServer
    auth: EchoServer
    guards: list[Guard]
    server_ca: trustme.CA
    client_ca: trustme.CA


def _secret(name: str, data: dict[str, bytes]) -> str:
    doc = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": "default"},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _manifests(  # noqa: PLR0917
    tmp: Path, guarded: EchoServer, open_: EchoServer, auth_port: int,
    server_ca: trustme.CA, client_ca: trustme.CA,
) -> tuple[Path, list[Guard]]:
    docs = [
        m.service("admin"), m.endpoint_slice("admin", [guarded.port]),
        m.service("web"), m.endpoint_slice("web", [open_.port]),
        _secret("basic-auth", {"auth": HTPASSWD.encode()}),
        _secret("client-ca", {"ca.crt": client_ca.cert_pem.bytes()}),
        tls_secret("mtls-tls", server_ca.issue_cert("mtls.test", "mtls-noca.test")),
        m.ingress("open", [("open.test", "/", "Prefix", "web"), ("shop.test", "/", "Prefix", "web")]),
        # same host, another Ingress: /admin is guarded, / is not
        m.ingress("shop-admin", [("shop.test", "/admin", "Prefix", "admin")],
                  annotations={PREFIX + "auth-type": "basic", PREFIX + "auth-secret": "basic-auth"}),
        # a typo of an access key must not open the route either
        m.ingress("typo", [("typo.test", "/", "Prefix", "admin")],
                  annotations={PREFIX + "auth-ulr": f"http://127.0.0.1:{auth_port}/"}),
    ]
    found = guards(auth_port)
    for guard in found:
        name = guard.host.removesuffix(".test")
        doc = m.ingress(name, [(guard.host, "/", "Prefix", "admin")], annotations=guard.annotations,
                        default_backend="admin")
        if guard.host.startswith("mtls"):
            doc = with_tls(doc, ([guard.host], "mtls-tls"))
        docs.append(doc)
    return m.write(tmp / "guards.yaml", *docs), found


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("fail-closed")
    server_ca, client_ca = trustme.CA(), trustme.CA()
    with EchoServer("guarded") as guarded, EchoServer("open") as open_, EchoServer("auth") as auth:
        path, found = _manifests(tmp, guarded, open_, auth.port, server_ca, client_ca)
        with run_fastingress(tmp, manifests=[path], workers=1) as fi:
            yield Setup(fi, guarded, open_, auth, found, server_ca, client_ca)


REQUESTS = [  # (method, path, body): what an unauthenticated client might try
    ("GET", "/", None),
    ("GET", "/private/data?x=1", None),
    ("POST", "/upload", b"x" * 1000),
    ("GET", "//private/../data", None),
    ("GET", "/%70rivate", None),
    ("OPTIONS", "/", None),
]


def _check_refusal(response: httpx.Response, guard: Guard, method: str) -> None:
    statuses = expected_statuses(guard)
    assert response.status_code in statuses, (guard.host, response.status_code, response.text)
    if statuses == {503} and method != "HEAD":
        assert "(fail closed)" in response.text
        assert any(key in response.text for key in guard.annotations), response.text


def test_no_unauthenticated_request_reaches_the_upstream(setup: Setup) -> None:
    with httpx.Client(base_url=setup.fi.base, timeout=5) as client:
        for guard in setup.guards:
            for method, path, body in REQUESTS:
                r = client.request(method, path, headers={"Host": guard.host}, content=body)
                if guard.host.startswith("mtls"):  # a TLS host: plain HTTP is sent to HTTPS first
                    assert r.status_code == 308 and r.headers["location"].startswith(f"https://{guard.host}")
                    continue
                _check_refusal(r, guard, method)
            # with credentials of the wrong kind, too (a basic-auth header is no key to anything else)
            r = client.get("/", headers={"Host": guard.host, "Authorization": "Basic Zm9vOndyb25n"})
            assert r.status_code in expected_statuses(guard) | {308}
        # another Ingress of the same host is served; the guarded path of it is not
        assert client.get("/", headers={"Host": "shop.test"}).json()["server"] == "open"
        assert client.get("/admin/x", headers={"Host": "shop.test"}).status_code == 401
        assert client.get("/administrator", headers={"Host": "shop.test"}).json()["server"] == "open"
        typo = client.get("/", headers={"Host": "typo.test"})
        assert typo.status_code == 503 and "auth-ulr" in typo.text
        # a host no rule names goes to the global default: a guarded Ingress's defaultBackend
        assert client.get("/", headers={"Host": "nowhere.test"}).status_code in {503, 401, 403}
    assert setup.guarded.requests == []
    assert all(q["path"].startswith("/__status/401") for q in setup.auth.requests)  # none, so far
    assert [q["path"] for q in setup.open.requests] == ["/", "/administrator"]


async def test_head_to_a_closed_route_gets_503(setup: Setup) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", setup.fi.http_port)
    async with stream:
        client = H2Client(stream)
        response = None
        with trio.move_on_after(3):
            response = await client.request(b"/", method=b"HEAD", authority=b"basic-nosecret.test")
    assert response is not None and response.status == 503 and response.body == b""
    r = await trio.to_thread.run_sync(
        lambda: httpx.head(f"{setup.fi.base}/", headers={"Host": "basic-nosecret.test"}, timeout=5)
    )
    assert r.status_code == 503 and r.content == b""
    assert setup.guarded.requests == []


async def test_no_unauthenticated_http2_request_reaches_the_upstream(setup: Setup) -> None:
    """The same over HTTP/2 (h2c, prior knowledge): streams take the same route and policies."""
    stream = await trio.open_tcp_stream("127.0.0.1", setup.fi.http_port)
    async with stream:
        client = H2Client(stream)
        sids: dict[int, Guard] = {}
        for guard in setup.guards:
            if guard.host.startswith("mtls"):
                continue
            host = guard.host.encode()
            sids[client.open(b"/private", authority=host)] = guard
            sids[client.open(b"/upload", method=b"POST", authority=host, body=b"x" * 100)] = guard
        with trio.fail_after(10):
            await client.collect(list(sids))
    for sid, guard in sids.items():
        response = client.responses[sid]
        assert response.status in expected_statuses(guard), (guard.host, response)
    assert setup.guarded.requests == []


@pytest.mark.parametrize("host", ["mtls.test", "mtls-noca.test"])
def test_client_certificate_auth_over_https(setup: Setup, host: str) -> None:
    """Verified client certificates; with the CA Secret missing, 503 (fail closed), whatever the
    client presents."""
    (guard,) = [g for g in setup.guards if g.host == host]
    assert expected_statuses(guard) == ({503} if guard.unusable else {400, 403})
    port = setup.fi.https_port
    before = len(setup.guarded.requests)
    with tls_connect(port, host, client_context(setup.server_ca)) as sock:  # no client certificate
        for path in ("/", "/private", "/x?y=1"):
            r = request_on(sock, host, path)
            assert r.status in expected_statuses(guard), (r.status, r.body)
            if r.status == 503:
                assert b"auth-tls-secret" in r.body and b"(fail closed)" in r.body
            else:
                assert b"No required SSL certificate was sent" in r.body
    stranger = trustme.CA().issue_cert("mallory")  # a client certificate from a CA nobody trusts
    ctx = client_context(setup.server_ca)
    stranger.configure_cert(ctx)
    with tls_connect(port, host, ctx) as sock:
        assert request_on(sock, host, "/").status in expected_statuses(guard)
    assert len(setup.guarded.requests) == before == 0


def test_status_names_the_key_a_typo_resembles(setup: Setup) -> None:
    diagnostics = [d for d in setup.fi.status()["diagnostics"] if d["name"] == "typo"]
    (typo,) = diagnostics
    assert typo["severity"] == "error"
    assert typo["suggestion"] == PREFIX + "auth-url"
    assert f"did you mean `{PREFIX}auth-url`?" in typo["message"]
    assert f"did you mean `{PREFIX}auth-url`?" in setup.fi.log()


def _explain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastingress", "explain", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_explain_against_the_running_instance(setup: Setup) -> None:
    admin = setup.fi.admin
    text = _explain("--admin", admin, "http://shop.test/admin/users?page=2")
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "outcome: forward" in out  # basic auth is honoured: the policy says what it asks
    rule = "rule: Ingress default/shop-admin  host shop.test  path /admin (Prefix)  -> default/admin:80"
    assert rule in out
    assert "auth-type basic   realm '', 1 user(s) from Secret default/basic-auth" in out
    closed = _explain("--admin", admin, "http://basic-nosecret.test/").stdout
    assert "outcome: respond 503" in closed
    assert f"{PREFIX}auth-secret names Secret default/missing, which is not found" in closed
    assert "Ingress default/open  host shop.test  path / (Prefix)" in out
    assert "matches too, but the longer rule '/admin' wins" in out
    as_json = _explain("--admin", admin, "-o", "json", "-H", "Host: open.test", "--client-ip", "10.0.0.7",
                       "http://127.0.0.1/hello")
    data = json.loads(as_json.stdout)
    assert data["outcome"] == "forward" and data["rule"]["ingress"] == "default/open"
    assert data["client_ip"] == "10.0.0.7" and data["host"] == "open.test"
    (backend,) = data["backends"]
    assert backend["service"] == "default/web"
    assert [(e["address"], e["port"], e["ready"]) for e in backend["endpoints"]] == [
        ("127.0.0.1", setup.open.port, True)
    ]
    bad = httpx.get(f"{admin}/explain?url=ftp://x/", timeout=5)
    assert bad.status_code == 400 and "http:// or https://" in bad.text
    assert httpx.get(f"{admin}/explain", timeout=5).status_code == 400
    unreachable = _explain("--admin", "http://127.0.0.1:9", "http://a.test/")
    assert unreachable.returncode == 2 and "cannot reach the admin port" in unreachable.stderr


def test_unsafe_fail_open_serves_the_same_routes_open(tmp_path: Path) -> None:
    with EchoServer("guarded") as guarded, EchoServer("open") as open_, EchoServer("auth") as auth:
        path, found = _manifests(tmp_path, guarded, open_, auth.port, trustme.CA(), trustme.CA())
        with run_fastingress(tmp_path, manifests=[path], workers=1, extra=("--unsafe-fail-open",)) as fi:
            opened = 0
            for guard in found:
                if guard.host.startswith("mtls"):  # TLS hosts: plain HTTP is redirected
                    continue
                r = httpx.get(f"{fi.base}/x", headers={"Host": guard.host}, timeout=5)
                if expected_statuses(guard) == {503}:  # not implemented: served open
                    assert r.status_code == 200 and r.json()["server"] == "guarded", guard.host
                    opened += 1
                else:  # implemented: enforced whatever the flag says
                    assert r.status_code in expected_statuses(guard), guard.host
            assert "served WITHOUT this protection because of --unsafe-fail-open" in fi.log()
    assert len(guarded.requests) == opened
