"""Keep-alive micro-benchmark of the worker proxy: CPU per request, optionally under cProfile.

    .venv/bin/python -m tests.support.worker_bench [--requests N] [--connections C] [--profile] [--baseline]

The upstream (a fixed keep-alive answer) and the load generator (C keep-alive connections,
sequential requests each) run in separate processes, so the measured process is only the
proxy: ``run_worker`` with a real listener and a snapshot published through shared memory.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import pstats
import socket
import subprocess
import sys
import tempfile
import time

import h11
import trio

from fastingress.snapshot.codec import encode_msgpack
from fastingress.snapshot.schema import Endpoint
from fastingress.snapshot.shm import ShmPublisher
from tests.support.worker_harness import make_snapshot
from workers.config import WorkerSettings
from workers.server import run_worker
from workers.state import Worker

UPSTREAM = r"""
import socket, sys, threading
body = b"x" * 64
resp = b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\nContent-Type: text/plain\r\n\r\n" + body
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(128)
print(srv.getsockname()[1], flush=True)
def serve(c):
    buf = b""
    while True:
        d = c.recv(65536)
        if not d:
            return
        buf += d
        while b"\r\n\r\n" in buf:
            _, buf = buf.split(b"\r\n\r\n", 1)
            c.sendall(resp)
while True:
    c, _ = srv.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CLIENT = r"""
import socket, sys, threading, time
port, n, conns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
req = b"GET /bench/path?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
def run():
    s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    for _ in range(n):
        s.sendall(req)
        while True:
            i = buf.find(b"\r\n\r\n")
            if i >= 0:
                head = buf[:i].lower()
                j = head.find(b"content-length:")
                length = int(head[j + 15:].split(b"\r\n")[0])
                if len(buf) >= i + 4 + length:
                    assert head.startswith(b"http/1.1 200"), head
                    buf = buf[i + 4 + length:]
                    break
            buf += s.recv(65536)
    s.close()
t0 = time.perf_counter()
ts = [threading.Thread(target=run) for _ in range(conns)]
[t.start() for t in ts]; [t.join() for t in ts]
print(time.perf_counter() - t0, flush=True)
"""


async def _baseline_proxy(up_port: int, *, task_status: trio.TaskStatus[int]) -> None:
    """The reference point: a minimal trio + h11 keep-alive proxy (no routing, no timeouts)."""

    async def pump(conn: h11.Connection, stream: trio.abc.Stream) -> object:
        while True:
            ev = conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            conn.receive_data(bytes(await stream.receive_some(65536)))

    async def handle(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", up_port)
        server = h11.Connection(h11.SERVER)
        up = h11.Connection(h11.CLIENT)
        while True:
            req = await pump(server, client)
            if not isinstance(req, h11.Request):
                return
            await pump(server, client)  # EndOfMessage
            await upstream.send_all(
                (up.send(h11.Request(method=req.method, target=req.target, headers=list(req.headers))) or b"")
                + (up.send(h11.EndOfMessage()) or b"")
            )
            out = b""
            while True:
                ev = await pump(up, upstream)
                if isinstance(ev, h11.Response):
                    resp = h11.Response(status_code=ev.status_code, headers=list(ev.headers))
                    out += server.send(resp) or b""
                elif isinstance(ev, h11.Data):
                    out += server.send(ev) or b""
                elif isinstance(ev, h11.EndOfMessage):
                    out += server.send(ev) or b""
                    break
            await client.send_all(out)
            up.start_next_cycle()
            server.start_next_cycle()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(int(listeners[0].socket.getsockname()[1]))
    await trio.serve_listeners(handle, listeners)


async def _bench(args: argparse.Namespace) -> None:
    up = subprocess.Popen([sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE)
    assert up.stdout is not None
    up_port = int(up.stdout.readline())
    tmp = tempfile.mkdtemp()
    os.chmod(tmp, 0o700)
    publisher = ShmPublisher(os.path.join(tmp, "snap"))
    publisher.publish(encode_msgpack(make_snapshot(endpoints=(Endpoint("127.0.0.1", up_port),))))
    settings = WorkerSettings(index=0, shm_path=publisher.path, stats_socket=os.path.join(tmp, "s.sock"),
                              bind="127.0.0.1", http_port=0, grace_period=1.0)
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            worker: Worker = await nursery.start(
                functools.partial(run_worker, settings, stop=stop, handle_signals=False)
            )
            with trio.fail_after(5):
                while worker.generation == 0:
                    await trio.sleep(0.01)
            port = worker.listen_port
            if args.baseline:
                port = await nursery.start(_baseline_proxy, up_port)
            # warm-up
            await trio.to_thread.run_sync(
                lambda: subprocess.run([sys.executable, "-c", CLIENT, str(port), "200", "1"], check=True,
                                       capture_output=True))
            profiler = cProfile.Profile() if args.profile else None
            cpu0 = time.process_time()
            if profiler:
                profiler.enable()
            client = await trio.lowlevel.open_process(
                [sys.executable, "-c", CLIENT, str(port), str(args.requests), str(args.connections)],
                stdout=subprocess.PIPE,
            )
            await client.wait()
            if profiler:
                profiler.disable()
            cpu = time.process_time() - cpu0
            assert client.stdout is not None
            wall = float((await client.stdout.receive_some()).decode())
            total = args.requests * args.connections
            print(f"{total} requests over {args.connections} keep-alive connection(s): "
                  f"{total / wall:,.0f} req/s, proxy CPU {cpu / total * 1e6:.1f} us/request"
                  f"{' (under cProfile)' if profiler else ''}")
            if profiler:
                stats = pstats.Stats(profiler)
                stats.sort_stats("tottime").print_stats(args.top)
            stop.set()
            nursery.cancel_scope.cancel()
    finally:
        up.kill()
        up.wait()
        publisher.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000, help="per connection")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--baseline", action="store_true", help="measure a minimal trio+h11 proxy instead")
    args = parser.parse_args()
    trio.run(_bench, args)


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
