"""Access log lines in the ConfigMap's ``log-format-upstream`` (nginx variables), sans-I/O.

``compile_format(fmt, escape)`` turns the format into a ``Formatter`` once per snapshot: a
list of literal pieces and getters, so that a line costs one pass and no parsing.  The data
paths fill an ``AccessRecord`` only when a line is due (the access log is on and the URI is
not in ``skip-access-log-urls``), and the worker logs ``formatter(record)`` as it is, one line
on stdout (the ``fastingress.access`` logger).  See ``fastingress.logformat`` for the
variables.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from collections.abc import Callable, Sequence

from fastingress.logformat import HEADER_PREFIX, Escape, escape_default, escape_json, parse
from fastingress.snapshot.schema import Route
from workers.heads import RequestInfo
from workers.http1 import RequestHead


class AccessRecord:
    """What a log line may show about one request (filled by the data path at its end)."""

    __slots__ = (
        "body_bytes", "client_ip", "duration", "headers", "host", "ingress", "method", "peer", "proxy_addr",
        "request_id", "request_length", "scheme", "server_port", "service", "status", "target", "tls",
        "upstream", "upstream_addr", "upstream_bytes", "upstream_status", "upstream_time", "version",
    )

    def __init__(self) -> None:
        self.client_ip = "-"
        self.peer = "-"
        self.proxy_addr = ""
        self.method = "-"
        self.target = "-"
        self.version = "HTTP/1.1"
        self.status = 0
        self.body_bytes = 0
        self.headers: Sequence[tuple[bytes, bytes]] = ()
        self.request_length = 0
        self.duration = 0.0
        self.host = "-"
        self.ingress = "-"
        self.service = "-"
        self.upstream = ""  # Upstream.name
        self.upstream_addr = ""
        self.upstream_status = 0
        self.upstream_time = -1.0
        self.upstream_bytes = -1
        self.request_id = ""
        self.scheme = "http"
        self.server_port = ""
        self.tls = ""  # "TLSv1.3/h2"


def _header(record: AccessRecord, name: bytes) -> str:
    for n, v in record.headers:
        if n == name:
            return v.decode("latin-1")
    return "-"


def _remote_user(record: AccessRecord) -> str:
    value = _header(record, b"authorization")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token:
        return "-"
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return "-"
    return decoded.partition(":")[0] or "-"


def _upstream_name(record: AccessRecord) -> str:
    """ingress-nginx's ``namespace-service-port`` from "namespace/service:port"."""
    service = record.service
    if service in ("", "-"):
        return ""
    namespace, _, rest = service.partition("/")
    name, _, port = rest.rpartition(":")
    return f"{namespace}-{name or rest}-{port}" if name else f"{namespace}-{rest}"


def _split_ingress(record: AccessRecord, part: int) -> str:
    if record.ingress in ("", "-"):
        return ""
    return record.ingress.partition("/")[::2][part]


def _split_service(record: AccessRecord, part: int) -> str:
    if record.service in ("", "-"):
        return ""
    name = record.service.partition("/")[2]
    return name.rpartition(":")[::2][part] if ":" in name else (name, "")[part]


def _time_local(record: AccessRecord) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S %z")


def _time_iso(record: AccessRecord) -> str:
    text = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return text[:-2] + ":" + text[-2:]


def _request(record: AccessRecord) -> str:
    return f"{record.method} {record.target} {record.version}"


def _seconds(value: float) -> str:
    return f"{value:.3f}" if value >= 0 else "-"


Getter = Callable[[AccessRecord], str]

_GETTERS: dict[str, Getter] = {
    "remote_addr": lambda r: r.client_ip,
    "realip_remote_addr": lambda r: r.peer,
    "proxy_protocol_addr": lambda r: r.proxy_addr,
    "remote_user": _remote_user,
    "time_local": _time_local,
    "time_iso8601": _time_iso,
    "msec": lambda r: f"{time.time():.3f}",
    "request": _request,
    "request_method": lambda r: r.method,
    "request_uri": lambda r: r.target,
    "uri": lambda r: r.target.partition("?")[0],
    "args": lambda r: r.target.partition("?")[2],
    "server_protocol": lambda r: r.version,
    "scheme": lambda r: r.scheme,
    "host": lambda r: r.host,
    "server_port": lambda r: r.server_port,
    "status": lambda r: str(r.status),
    "body_bytes_sent": lambda r: str(r.body_bytes),
    "bytes_sent": lambda r: str(r.body_bytes),
    "request_length": lambda r: str(r.request_length),
    "request_time": lambda r: f"{r.duration:.3f}",
    "http_referer": lambda r: _header(r, b"referer"),
    "http_user_agent": lambda r: _header(r, b"user-agent"),
    "proxy_upstream_name": _upstream_name,
    "proxy_alternative_upstream_name": lambda r: "",
    "upstream_addr": lambda r: r.upstream_addr or "-",
    "upstream_status": lambda r: str(r.upstream_status) if r.upstream_status else "-",
    "upstream_response_time": lambda r: _seconds(r.upstream_time),
    "upstream_response_length": lambda r: str(r.upstream_bytes) if r.upstream_bytes >= 0 else "-",
    "req_id": lambda r: r.request_id or "-",
    "namespace": lambda r: _split_ingress(r, 0),
    "ingress_name": lambda r: _split_ingress(r, 1),
    "service_name": lambda r: _split_service(r, 0),
    "service_port": lambda r: _split_service(r, 1),
    "ssl_protocol": lambda r: r.tls.partition("/")[0],
    "pid": lambda r: str(os.getpid()),
}


def _getter(name: str) -> Getter:
    found = _GETTERS.get(name)
    if found is not None:
        return found
    if name.startswith(HEADER_PREFIX) and len(name) > len(HEADER_PREFIX):
        header = name[len(HEADER_PREFIX):].replace("_", "-").lower().encode("latin-1")
        return lambda r: _header(r, header)
    return lambda r: "-"


Formatter = Callable[[AccessRecord], str]


def compile_format(fmt: str, escape: Escape = "default") -> Formatter:
    """A function that renders one record as a line of ``fmt``."""
    esc: Callable[[str], str] = {"default": escape_default, "json": escape_json}.get(escape, lambda s: s)
    parts: list[str | Getter] = []
    for token in parse(fmt):
        parts.append(_getter(token[0]) if isinstance(token, tuple) else token)

    def render(record: AccessRecord) -> str:
        return "".join(p if isinstance(p, str) else esc(p(record)) for p in parts)

    return render


def request_length(method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], body: int) -> int:
    """The request line and headers as sent in HTTP/1.1, plus the body (nginx $request_length)."""
    size = len(method) + len(target) + 12  # " " + " HTTP/1.1\r\n"
    for name, value in headers:
        size += len(name) + len(value) + 4
    return size + 2 + body


def client_text(client_ip: bytes, info: RequestInfo | None) -> str:
    """The request's client for the log: through a trusted proxy, the one it names."""
    view = info.view if info is not None else None
    return (view.ip if view is not None else client_ip).decode("latin-1")


def request_record(  # noqa: PLR0917 (what both data paths know of a request)
    client_ip: bytes, proxy_port: bytes, method: bytes, target: bytes, status: int, resp_bytes: int,
    duration: float, labels: Sequence[str], head: RequestHead | None, body: int,
    info: RequestInfo | None, tls: str, server_port: int,
) -> AccessRecord:
    """An ``AccessRecord`` of the request and its answer; the data path adds the upstream's part."""
    record = AccessRecord()
    view = info.view if info is not None else None
    record.client_ip = client_text(client_ip, info)
    record.peer = client_ip.decode("latin-1")
    record.proxy_addr = record.peer if proxy_port else ""
    record.method = method.decode("latin-1")
    record.target = target.decode("latin-1")
    record.status = status
    record.body_bytes = resp_bytes
    record.duration = duration
    record.host, record.ingress, record.service = labels
    if head is not None:
        record.version = "HTTP/" + head.http_version.decode("latin-1")
        record.headers = head.headers
        record.request_length = request_length(head.method, head.target, head.headers, body)
    if info is not None:
        if info.host:  # nginx $host: the Host header, lower case, without the port
            record.host = info.host.decode("latin-1").lower().rsplit(":", 1)[0].rstrip(".") or "-"
        if info.request_id is not None:
            record.request_id = info.request_id.decode("latin-1")
    record.scheme = "https" if tls or (view is not None and view.https) else "http"
    record.server_port = str(server_port)
    record.tls = tls
    return record


def request_context(  # noqa: PLR0917
    method: bytes, target: bytes, labels: Sequence[str], route: Route | None,
    endpoint: tuple[str, int] | None, info: RequestInfo | None,
) -> str:
    """A request in an error line, the same from both data paths: method, target, host, route,
    Ingress, upstream endpoint and request id."""
    return (
        f"{method.decode('latin-1')} {target.decode('latin-1')} host={labels[0]} "
        f"route={f'{route.path_type}:{route.path}' if route is not None else '-'} "
        f"ingress={labels[1]} endpoint={f'{endpoint[0]}:{endpoint[1]}' if endpoint is not None else '-'} "
        f"request_id={info.request_id.decode('latin-1') if info and info.request_id else '-'}"
    )


__all__ = ["AccessRecord", "Formatter", "client_text", "compile_format", "request_context", "request_length",
           "request_record"]
