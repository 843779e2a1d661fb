"""Rate limits (issue 9, area limits) through real sockets: a real ``fastingress standalone``
with two worker processes, a real upstream on 127.0.0.1, httpx and an HTTP/2 client.

* ``limit-rpm`` holds per replica: requests of one client spread over both workers (each on a
  new connection; SO_REUSEPORT spreads them), and the two workers together accept exactly
  the bucket's burst (each worker's own stats show it served some of them);
* ``limit-allowlist`` exempts the client; ``limit-connections`` with a slow upstream admits
  exactly the limit, over both workers, and gives the slots back when requests end;
* ``limit-rate`` paces a response within nginx's bounds (rate x (elapsed + 1) bytes after
  ``limit-rate-after``) over HTTP/1.1 and HTTP/2; ``limit-rate-after`` beyond the body does not;
* ``limit-req-status-code`` (the settings of a snapshot file) changes the 503.

Every HTTP/1.1 case runs on both codecs (the event-driven core and the h11 Session).
"""

from __future__ import annotations

import concurrent.futures
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from fastingress.manifests import load_manifests
from fastingress.snapshot.codec import encode_json
from fastingress.snapshot.schema import GlobalSettings
from fastingress.translate import TranslateOptions, translate
from tests.support import manifests as m
from tests.support.h2client import H2Client
from tests.support.process import Fastingress, run_fastingress, wait_for
from tests.support.tls_upstreams import H2EchoServer
from tests.support.upstream import EchoServer, WebSocketEchoServer
from workers.config import stats_decoder

pytestmark = pytest.mark.timeout(90)

CODECS = ("llhttp", "h11")
WORKERS = 2
RATE_KB = 100  # limit-rate of rate.test, KB/s
BODY = (8, 25600)  # the upstream's answer on /__stream/8/25600: 200 KB
PREFIX = "nginx.ingress.kubernetes.io/"
RPM = {"limit-rpm": "6", "limit-burst-multiplier": "1"}
H2C_RATE_KB = 8  # limit-rate of h2c.test (an HTTP/2 upstream)


@dataclass
class Setup:
    fi: Fastingress
    up: EchoServer
    runtime: Path
    codec: str


def _manifests(path: Path, port: int, h2c_port: int, ws_port: int) -> Path:
    def limited(name: str, annotations: dict[str, str]) -> str:
        return m.ingress(name, [(f"{name}.test", "/", "Prefix", "app")],
                         annotations={PREFIX + k: v for k, v in annotations.items()})

    return m.write(
        path,
        m.service("app"), m.endpoint_slice("app", [port]),
        limited("rpm", RPM),  # 7 at once, then 1 per 10 s
        limited("exempt", {**RPM, "limit-allowlist": "127.0.0.0/8"}),
        limited("elsewhere", {**RPM, "limit-whitelist": "10.0.0.0/8"}),
        limited("conn", {"limit-connections": "3"}),
        limited("rate", {"limit-rate": str(RATE_KB)}),
        limited("after", {"limit-rate": str(RATE_KB), "limit-rate-after": "512"}),
        m.service("ws"), m.endpoint_slice("ws", [ws_port]),
        m.ingress("ws", [("ws.test", "/", "Prefix", "ws")], annotations={PREFIX + "limit-connections": "1"}),
        m.service("h2c", port=h2c_port), m.endpoint_slice("h2c", [h2c_port]),
        m.ingress("h2c", [("h2c.test", "/", "Prefix", "h2c")], service_port=h2c_port, annotations={
            PREFIX + "backend-protocol": "H2C", PREFIX + "limit-rate": str(H2C_RATE_KB)}),
    )


@pytest.fixture(scope="module", params=CODECS)
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    codec = str(request.param)
    tmp = tmp_path_factory.mktemp(f"limits-{codec}")
    runtime = Path(tempfile.mkdtemp(prefix="fil-", dir="/tmp"))  # short: unix socket paths
    try:
        with EchoServer("app") as up, H2EchoServer() as h2c, WebSocketEchoServer() as ws:
            path = _manifests(tmp / "limits.yaml", up.port, h2c.port, ws.port)
            extra = ("--http1-codec", codec, "--runtime-dir", str(runtime))
            with run_fastingress(tmp, manifests=[path], workers=WORKERS, extra=extra) as fi:
                yield Setup(fi, up, runtime, codec)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def fresh_client(fi: Fastingress) -> httpx.Client:
    """Every request on a new connection (so the kernel spreads them over the workers)."""
    return httpx.Client(base_url=fi.base, timeout=15, limits=httpx.Limits(max_keepalive_connections=0))


def served(setup: Setup, host: str) -> list[dict[str, int]]:
    """What each worker process says it answered for ``host``: status class -> count."""
    out: list[dict[str, int]] = []
    for index in range(WORKERS):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(setup.runtime / f"worker-{index}.sock"))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        counts: dict[str, int] = {}
        for rc in stats_decoder.decode(data).requests:
            if rc.host == host:
                counts[rc.status_class] = counts.get(rc.status_class, 0) + rc.count
        out.append(counts)
    return out


def test_a_client_gets_the_replicas_rate_whichever_worker_serves_it(setup: Setup) -> None:
    sent = 24
    start = time.monotonic()
    with fresh_client(setup.fi) as client:
        responses = [client.get("/", headers={"Host": "rpm.test"}) for _ in range(sent)]
    elapsed = time.monotonic() - start
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    # limit-rpm 6 with burst 6: 7 at once, then one more every 10 s (nginx's limit_req).
    assert statuses[:7] == [200] * 7
    assert statuses.count(200) == 7 + int(elapsed // 10), statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.text == "503 Service Unavailable\n"
    def all_counted() -> list[dict[str, int]] | None:
        counts = served(setup, "rpm.test")
        return counts if sum(sum(c.values()) for c in counts) == sent else None

    per_worker = wait_for(all_counted, what="every request in the workers' stats")
    # Both workers answered some of them (with a limit per worker, each one's first 7 would pass).
    assert all(sum(c.values()) > 0 for c in per_worker), per_worker
    assert sum(c.get("2xx", 0) for c in per_worker) == statuses.count(200)
    with fresh_client(setup.fi) as client:  # another Ingress with the same limits counts apart
        assert client.get("/", headers={"Host": "elsewhere.test"}).status_code == 200


def test_the_allowlist_is_not_counted(setup: Setup) -> None:
    with fresh_client(setup.fi) as client:
        statuses = [client.get("/", headers={"Host": "exempt.test"}).status_code for _ in range(20)]
        assert statuses == [200] * 20
        # limit-whitelist (the alias) naming other networks: this client is counted
        statuses = [client.get("/", headers={"Host": "elsewhere.test"}).status_code for _ in range(12)]
    assert statuses.count(200) <= 7 and statuses.count(503) >= 5  # (one went to the previous test)


def test_limit_connections_admits_the_limit_over_every_worker(setup: Setup) -> None:
    limit, sent = 3, 8

    def slow_request() -> int:
        with fresh_client(setup.fi) as client:
            return client.get("/__slow/20000", headers={"Host": "conn.test"}).status_code

    with concurrent.futures.ThreadPoolExecutor(sent) as pool:
        futures = [pool.submit(slow_request) for _ in range(sent)]
        # The refused ones come back at once; the admitted ones wait in the upstream.
        def slow_seen() -> int:
            return len([q for q in setup.up.requests if "__slow" in q["path"]])

        wait_for(lambda: sum(f.done() for f in futures) == sent - limit and slow_seen() >= limit,
                 timeout=15, what="5 refusals and 3 requests in the upstream")
        assert [f.result() for f in futures if f.done()] == [503] * (sent - limit)
        assert slow_seen() == limit
        assert sum(f.done() for f in futures) == sent - limit  # the 3 still wait
        setup.up.release_slow()
        statuses = sorted(f.result(timeout=15) for f in futures)
    assert statuses == [200] * limit + [503] * (sent - limit)
    per_worker = served(setup, "conn.test")
    assert all(sum(c.values()) > 0 for c in per_worker), per_worker  # both workers took part
    # The slots come back when the requests end.
    with fresh_client(setup.fi) as client:
        wait_for(lambda: client.get("/", headers={"Host": "conn.test"}).status_code == 200, timeout=5,
                 what="a free slot")
        assert [client.get("/", headers={"Host": "conn.test"}).status_code for _ in range(5)] == [200] * 5


def test_limit_connections_counts_a_websocket_while_it_is_open(setup: Setup) -> None:
    def open_ws() -> ClientConnection:
        sock = socket.create_connection(("127.0.0.1", setup.fi.http_port), timeout=10)
        return ws_connect("ws://ws.test/chat", sock=sock, open_timeout=10)

    with open_ws() as first:
        first.send("hello")
        assert first.recv(timeout=10) == "hello"
        with pytest.raises(InvalidStatus) as refused:
            open_ws()
        assert refused.value.response.status_code == 503
        first.send("still here")
        assert first.recv(timeout=10) == "still here"

    def reopened() -> bool:
        try:
            with open_ws() as again:
                again.send("again")
                return again.recv(timeout=10) == "again"
        except InvalidStatus:
            return False  # the first one's end has not been seen yet

    wait_for(reopened, timeout=10, what="the slot of the closed WebSocket")


def _timed_download(fi: Fastingress, host: str) -> tuple[float, list[tuple[float, int]], int]:
    """(seconds, [(seconds, bytes received so far)], status) of one 200 KB download."""
    samples: list[tuple[float, int]] = []
    with httpx.Client(base_url=fi.base, timeout=30) as client:
        start = time.monotonic()
        with client.stream("GET", f"/__stream/{BODY[0]}/{BODY[1]}", headers={"Host": host}) as r:
            got = 0
            for chunk in r.iter_raw():
                got += len(chunk)
                samples.append((time.monotonic() - start, got))
            status = r.status_code
        return time.monotonic() - start, samples, status


def check_paced(elapsed: float, samples: list[tuple[float, int]], total: int) -> None:
    rate = RATE_KB * 1024
    assert samples[-1][1] == total
    # nginx: by t seconds, after + rate x (t + 1) bytes (head included); here after is 0.  The
    # server started its clock after we sent, so our t is an upper bound of its own.
    slack = 16384 + 1024  # one pacing piece (quantum) and the response head
    for t, got in samples:
        assert got <= rate * (t + 1) + slack, (t, got)
    lower = (total - rate) / rate  # the body beyond the first second's worth, at the rate
    assert lower * 0.9 <= elapsed <= lower + 3.0, elapsed


def test_limit_rate_paces_the_response(setup: Setup) -> None:
    total = BODY[0] * BODY[1]
    elapsed, samples, status = _timed_download(setup.fi, "rate.test")
    assert status == 200
    check_paced(elapsed, samples, total)
    # limit-rate-after 512 KB: the whole 200 KB before the rate applies
    elapsed, samples, status = _timed_download(setup.fi, "after.test")
    assert status == 200 and samples[-1][1] == total
    assert elapsed < (total - RATE_KB * 1024) / (RATE_KB * 1024) * 0.5, elapsed


async def test_limit_rate_paces_http2_streams(setup: Setup) -> None:
    total = BODY[0] * BODY[1]
    stream = await trio.open_tcp_stream("127.0.0.1", setup.fi.http_port)
    async with stream:
        client = H2Client(stream)
        start = trio.current_time()
        sid = client.open(f"/__stream/{BODY[0]}/{BODY[1]}".encode(), authority=b"rate.test")
        samples: list[tuple[float, int]] = []
        with trio.fail_after(20):
            await client.flush()
            while not client._done(sid):
                if not await client.receive_once():
                    break
                samples.append((trio.current_time() - start, len(client.responses[sid].body)))
        elapsed = trio.current_time() - start
    response = client.responses[sid]
    assert response.status == 200 and len(response.body) == total
    check_paced(elapsed, [(t, n) for t, n in samples if n], total)


def test_limit_rate_paces_answers_of_http2_upstreams(setup: Setup) -> None:
    """An H2C upstream (the task path of HTTP/2 upstreams) echoes a 16 KB body, paced."""
    body = b"x" * 16000  # (the test upstream answers in one DATA frame)
    rate = H2C_RATE_KB * 1024
    with httpx.Client(base_url=setup.fi.base, timeout=30) as client:
        start = time.monotonic()
        r = client.post("/echo", content=body, headers={"Host": "h2c.test", "Content-Type": "text/plain"})
        elapsed = time.monotonic() - start
    assert r.status_code == 200 and r.content == b"/echo|" + body
    lower = (len(r.content) - rate) / rate
    assert lower * 0.9 <= elapsed <= lower + 3.0, elapsed


def test_limit_req_status_code_from_the_settings(tmp_path: Path, echo_servers: list[EchoServer]) -> None:
    """limit-req-status-code / limit-conn-status-code are ConfigMap keys (GlobalSettings);
    a snapshot file carries them here."""
    path = m.write(
        tmp_path / "in.yaml",
        m.service("app"), m.endpoint_slice("app", [echo_servers[0].port]),
        m.ingress("strict", [("strict.test", "/", "Prefix", "app")],
                  annotations={PREFIX + "limit-rps": "1", PREFIX + "limit-burst-multiplier": "0"}),
    )
    objects, _ = load_manifests([str(path)])
    settings = GlobalSettings(limit_req_status=429, limit_conn_status=429)
    result = translate(objects, TranslateOptions(settings=settings))
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_bytes(encode_json(result.snapshot))
    with run_fastingress(tmp_path, snapshot=snapshot, workers=1) as fi, fresh_client(fi) as client:
        first = client.get("/", headers={"Host": "strict.test"})
        second = client.get("/", headers={"Host": "strict.test"})
    assert first.status_code == 200
    assert second.status_code == 429 and second.text == "429 Too Many Requests\n"
