"""Serving a client connection that lives in trio tasks (a trio Stream): HTTP/1.1 ``Session``
or HTTP/2 ``H2Server``.

Used for every connection with ``--http1-codec h11`` (the reference path), for HTTP/2 (ALPN
``h2``, or h2c prior knowledge), and for requests the event-driven core hands over
(``workers.h1conn``): an Upgrade tunnel or an HTTP/2 upstream, with the llhttp codec and
the parsed head moving along.  This module sits above ``proxy`` and ``http2``, so neither
imports the other.
"""

from __future__ import annotations

import logging

import trio

from workers.decide import Decided
from workers.http1 import RequestHead, ServerCodec
from workers.http2 import serve_h2
from workers.proxy import H2Preface, Session
from workers.state import Worker

log = logging.getLogger("fastingress.worker")


async def serve_client(
    worker: Worker,
    stream: trio.abc.Stream,
    client_ip: str,
    *,
    tls: str = "",
    codec: ServerCodec | None = None,
    head: RequestHead | None = None,
    t0: float = 0.0,
    decided: Decided | None = None,
    proxy_port: bytes = b"",
) -> None:
    """Serve one client connection until it closes, times out or the worker drains.

    ``tls`` is "" for plain HTTP, else what the access log records of the TLS session
    (``TLSv1.3/http/1.1``); the request is then HTTPS (X-Forwarded-Proto, HSTS, no ssl-redirect).
    ``codec`` and ``head``: a connection handed over after its first request head was read
    (``decided``: what the core decided for it, carried out without deciding again).
    ``proxy_port``: the port the client used on the balancer, from its PROXY protocol header.
    """
    if tls and getattr(stream, "selected_alpn", None) == "h2":  # (offered only with settings.http2)
        await serve_h2(worker, stream, client_ip, b"", tls=tls)
        return
    session = Session(worker, stream, client_ip, tls, codec, proxy_port)
    worker.opened(session)
    preface = b""
    try:
        await session.run(head, t0=t0, decided=decided)
    except H2Preface as exc:
        preface = exc.data
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:
        # A bug, not the peer's fault: log it (with traceback) and lose this connection
        # only, never the worker.
        log.exception("worker %d: internal error on a connection from %s", worker.index, client_ip)
    finally:
        session.finish_request(499)
        worker.closed(session)
        if not preface:
            await session.linger_close()
            await trio.aclose_forcefully(stream)
    if preface:
        await serve_h2(worker, stream, client_ip, preface, tls=tls)


__all__ = ["serve_client"]
