"""The other replicas of this controller, as the publish Service's EndpointSlices list them.

Two decisions need to know whether other replicas are up, and neither may be taken from what
this replica alone sees:

* **Readiness in an API outage.**  A replica that lost the Kubernetes API keeps serving its
  last snapshot.  If it *alone* lost the API (a network partition, a broken node), it should
  leave the load balancer: the others serve fresher routes.  If *every* replica lost it (the
  API server is down, being upgraded), all of them leaving the load balancer would turn a
  control-plane outage into a total one.  So after ``--api-outage-grace`` a replica asks its
  peers (``GET /api-contact`` on their admin port): only when one of them answers that it is
  in contact does this replica turn not-ready.  No peer known (no ``--publish-service``, a
  single replica) or none in contact: it stays ready.
* **Clearing Ingress status on shutdown** (``--update-status-on-shutdown``): only the last
  replica standing clears it, as in ingress-nginx; during a rolling update another replica
  is ready and the addresses stay.

Peers come from the EndpointSlices of ``--publish-service`` in the store (that Service
selects this Deployment's pods): every endpoint except our own pod (``POD_NAME``), with its
first address and the port named ``admin`` of its slice if any, else our own admin port (the
Deployment gives every replica the same one).  Pure, except ``ask``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

Obj = Mapping[str, Any]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
CONTACT_PATH = "/api-contact"
ASK_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Peer:
    name: str  # the pod's name ("" if the slice does not say)
    address: str
    admin_port: int
    ready: bool

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.name or 'pod'} ({host}:{self.admin_port})"


def _admin_port(slice_: Obj, default: int) -> int:
    ports = slice_.get("ports")
    for port in ports if isinstance(ports, list) else ():
        if isinstance(port, Mapping) and port.get("name") == "admin" and isinstance(port.get("port"), int):
            return int(port["port"])
    return default


def peers(
    slices: Iterable[Obj], service: str | None, pod_name: str, admin_port: int
) -> list[Peer]:
    """The endpoints of the ``namespace/name`` Service other than pod ``pod_name``."""
    if not service:
        return []
    namespace, _, name = service.partition("/")
    found: list[Peer] = []
    for slice_ in slices:
        meta = slice_.get("metadata")
        if not isinstance(meta, Mapping) or meta.get("namespace") != namespace:
            continue
        labels = meta.get("labels")
        if not isinstance(labels, Mapping) or labels.get(SERVICE_NAME_LABEL) != name:
            continue
        port = _admin_port(slice_, admin_port)
        endpoints = slice_.get("endpoints")
        for endpoint in endpoints if isinstance(endpoints, list) else ():
            if not isinstance(endpoint, Mapping):
                continue
            target = endpoint.get("targetRef")
            pod = str(target.get("name") or "") if isinstance(target, Mapping) else ""
            addresses = endpoint.get("addresses")
            if (pod and pod == pod_name) or not isinstance(addresses, list) or not addresses:
                continue
            conditions = endpoint.get("conditions")
            ready = conditions.get("ready") if isinstance(conditions, Mapping) else None
            # EndpointSlice semantics: an unset "ready" means ready.
            found.append(Peer(pod, str(addresses[0]), port, ready is not False))
    return sorted(found, key=lambda p: (p.name, p.address, p.admin_port))


async def ask(peer: Peer, timeout: float = ASK_TIMEOUT) -> bool | None:
    """Whether ``peer`` is in contact with the Kubernetes API (its ``/api-contact``);
    None if it does not answer in time."""
    request = (
        f"GET {CONTACT_PATH} HTTP/1.1\r\nHost: {peer.address}\r\nConnection: close\r\n"
        "User-Agent: fastingress-peer\r\n\r\n"
    ).encode()
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(peer.address, peer.admin_port)
            async with stream:
                await stream.send_all(request)
                data = b""
                while b"\r\n" not in data and len(data) < 1024:
                    chunk = await stream.receive_some(1024)
                    if not chunk:
                        break
                    data += chunk
        except (OSError, trio.BrokenResourceError):
            return None
        parts = data.split(b"\r\n", 1)[0].split()
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/"):
            if parts[1] == b"200":
                return True
            if parts[1] == b"503":
                return False
        return None
    return None


__all__ = ["CONTACT_PATH", "Peer", "ask", "peers"]
