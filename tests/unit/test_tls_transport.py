"""``TLSTransport`` (the core's server-side TLS) reads and writes through ``SSL_read`` and
``SSL_write`` directly, and through pyOpenSSL's public ``recv``/``send`` when the private names it
uses are missing; both give the same bytes, ``None`` for "nothing now" and ``b""`` at close_notify.
A real pyOpenSSL server and a real ``ssl`` client over a socket pair."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

import pytest
import trio
import trustme
from OpenSSL import SSL

from workers.loop import Core
from workers.transport import TLSTransport


def _server_context(ca: trustme.CA, tmp_path: Path) -> SSL.Context:
    cert = ca.issue_cert("core.test")
    (tmp_path / "cert.pem").write_bytes(cert.cert_chain_pems[0].bytes())
    (tmp_path / "key.pem").write_bytes(cert.private_key_pem.bytes())
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.use_certificate_chain_file(str(tmp_path / "cert.pem"))
    ctx.use_privatekey_file(str(tmp_path / "key.pem"))
    return ctx


async def _read_some(transport: TLSTransport) -> bytes:
    while True:
        data = transport._recv()
        if data is not None:
            return bytes(data)
        await trio.lowlevel.wait_readable(transport.sock)


@pytest.mark.parametrize("path", ["direct", "public"])
async def test_reads_writes_and_close_notify(path: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    server_sock, client_sock = socket.socketpair()
    conn = SSL.Connection(_server_context(ca, tmp_path), server_sock)
    conn.set_accept_state()
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client = client_ctx.wrap_socket(client_sock, server_hostname="core.test", do_handshake_on_connect=False)
    shaker = threading.Thread(target=client.do_handshake)
    shaker.start()
    conn.do_handshake()  # (blocking socket: the client's thread answers)
    shaker.join(timeout=10)
    server_sock.setblocking(False)
    transport = TLSTransport(Core(), server_sock, conn)
    assert transport._ssl is not None  # this pyOpenSSL has the names the direct path uses
    if path == "public":
        transport._ssl = None
    assert transport._recv() is None  # nothing sent yet: "nothing now", not EOF
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    with trio.fail_after(5):
        assert await _read_some(transport) == b"GET / HTTP/1.1\r\n\r\n"
    assert transport._send(b"HTTP/1.1 200 OK\r\n\r\n" * 100) == 1900
    assert client.recv(4096) == b"HTTP/1.1 200 OK\r\n\r\n" * 100
    client.setblocking(False)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.unwrap()  # sends close_notify (and would wait for ours)
    with trio.fail_after(5):
        assert await _read_some(transport) == b""
    server_sock.close()
    client.close()
