"""TLS session resumption across workers, measured through real processes.

pyOpenSSL (and the OpenSSL inside ``cryptography``) binds neither
``SSL_CTX_set_tlsext_ticket_keys`` nor the session-cache callbacks, so each worker process
has its own ticket key and session cache: a returning client resumes only when the kernel
hands its connection to the worker that issued its ticket, about 1 in N with N workers.
This test pins that documented behaviour down (README "TLS": session resumption) so that a
change (a binding that appears, a shared key) shows up as a changed figure."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx
import trustme

from tests.support import manifests as m
from tests.support.process import Fastingress, run_fastingress
from tests.support.tls import client_context, request_on, tls_connect, tls_secret, with_tls
from tests.support.upstream import EchoServer

RECONNECTS = 40


def _resumption_rate(fi: Fastingress, ca: trustme.CA) -> float:
    """A client reconnecting RECONNECTS times with the newest session (ticket) it was given."""
    ctx = client_context(ca)
    with tls_connect(fi.https_port, "app.test", ctx) as sock:
        assert request_on(sock, "app.test").status == 200  # reading the answer brings the tickets
        session = sock.session
    resumed = 0
    for _ in range(RECONNECTS):
        raw = socket.create_connection(("127.0.0.1", fi.https_port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="app.test", session=session) as sock:
            assert request_on(sock, "app.test").status == 200
            resumed += sock.session_reused
            session = sock.session or session
    return resumed / RECONNECTS


def _resumed_metric(fi: Fastingress) -> int:
    text = httpx.get(f"{fi.admin}/metrics", timeout=5).text
    found = re.search(r"^fastingress_tls_resumed_total (\d+)$", text, re.MULTILINE)
    assert found
    return int(found.group(1))


def test_resumption_rate_is_one_in_n_workers(tmp_path: Path) -> None:
    ca = trustme.CA()
    with EchoServer("s0") as upstream:
        app = m.write(
            tmp_path / "app.yaml",
            m.service("web"),
            m.endpoint_slice("web", [upstream.port]),
            tls_secret("app-tls", ca.issue_cert("app.test")),
            with_tls(m.ingress("web", [("app.test", "/", "Prefix", "web")]), (["app.test"], "app-tls")),
        )
        rates = {}
        for workers in (1, 2):
            (tmp_path / str(workers)).mkdir()
            with run_fastingress(tmp_path / str(workers), manifests=[app], workers=workers) as fi:
                rates[workers] = _resumption_rate(fi, ca)
                assert _resumed_metric(fi) == round(rates[workers] * RECONNECTS)
    print(f"TLS resumption of a returning client: 1 worker {rates[1]:.0%}, 2 workers {rates[2]:.0%}")
    assert rates[1] == 1.0  # one process: its ticket key, its session cache
    # Two processes, each with its own ticket key: about half.  Binomial(40, 0.5) falls
    # outside [8, 32] with probability ~1e-4.
    assert 0.2 <= rates[2] <= 0.8, rates
