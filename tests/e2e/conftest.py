"""Fixtures for end-to-end tests: real upstream servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.upstream import EchoServer, WebSocketEchoServer


@pytest.fixture
def echo_servers() -> Iterator[list[EchoServer]]:
    """Three independent echo upstreams named s0, s1, s2."""
    servers = [EchoServer(f"s{i}") for i in range(3)]
    for s in servers:
        s.__enter__()
    try:
        yield servers
    finally:
        for s in servers:
            s.__exit__(None, None, None)


@pytest.fixture
def ws_server() -> Iterator[WebSocketEchoServer]:
    with WebSocketEchoServer() as ws:
        yield ws
