"""Leader election on a coordination.k8s.io/v1 Lease, like client-go's leaderelection.

Theory of operation
-------------------
The pure part, ``decide``, looks at the Lease as last read and at the local clock and says
what to do: ``create`` (no Lease yet), ``renew`` (we hold it), ``acquire`` (free, or its
holder let it expire), or ``wait`` (someone else holds it).  Expiry is judged by LOCAL
time since we last saw the record change (its holder, renewTime or resourceVersion), not
by comparing the holder's renewTime with our clock, so clock skew between nodes does not
matter (client-go's "observedTime").  Writes are replaces carrying the resourceVersion we
read, so two candidates racing for a free Lease cannot both win: the loser gets 409.

The loop (``LeaderElector.run``, blocking calls in threads): read the Lease, decide, write;
again after ``renew_interval`` (TTL/2 by default) when leading, after min(renew/2, TTL/10)
otherwise.  A leader that could not
renew for ``ttl`` seconds (API unreachable) stops acting as leader at once, before any
other candidate may take over.  On shutdown the leader releases the Lease (empty holder)
so another replica takes over without waiting for the TTL.
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import trio

from fastingress.k8s.client import LEASE, ApiError, KubeClient

log = logging.getLogger("fastingress.k8s.leader")

Obj = dict[str, Any]
Action = Literal["create", "renew", "acquire", "wait"]


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    holder: str
    duration: float  # leaseDurationSeconds
    renew_time: str
    transitions: int
    resource_version: str

    @property
    def fingerprint(self) -> tuple[str, str, str]:
        return (self.holder, self.renew_time, self.resource_version)


def parse_lease(obj: Obj) -> LeaseRecord:
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(spec, dict) and isinstance(meta, dict)
    duration = spec.get("leaseDurationSeconds")
    transitions = spec.get("leaseTransitions")
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration=float(duration) if isinstance(duration, int | float) and duration > 0 else 0.0,
        renew_time=str(spec.get("renewTime") or ""),
        transitions=transitions if isinstance(transitions, int) else 0,
        resource_version=str(meta.get("resourceVersion") or ""),
    )


@dataclass(slots=True)
class Observation:
    """The record as we last saw it change, and when (local monotonic time)."""

    record: LeaseRecord | None = None
    since: float = 0.0

    def see(self, record: LeaseRecord | None, now: float) -> None:
        if record is None or self.record is None or record.fingerprint != self.record.fingerprint:
            self.since = now
        self.record = record


def decide(observed: Observation, identity: str, now: float, ttl: float) -> Action:
    record = observed.record
    if record is None:
        return "create"
    if record.holder == identity:
        return "renew"
    if not record.holder:
        return "acquire"
    duration = record.duration or ttl
    if now - observed.since >= duration:
        return "acquire"
    return "wait"


def micro_time(moment: datetime.datetime) -> str:
    """Kubernetes MicroTime: RFC 3339 with microseconds, UTC."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    namespace: str,
    name: str,
    identity: str,
    ttl: float,
    *,
    previous: Obj | None,
    action: Action,
    now: datetime.datetime,
) -> Obj:
    """The Lease to write for ``action`` (create/renew/acquire), or to release with identity ''."""
    body: Obj = dict(previous) if previous else {}
    meta = dict(body.get("metadata") or {})
    meta.update({"name": name, "namespace": namespace})
    meta.pop("managedFields", None)
    spec = dict(body.get("spec") or {})
    stamp = micro_time(now)
    if action in ("create", "acquire"):
        spec["acquireTime"] = stamp
        if action == "acquire":
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        else:
            spec["leaseTransitions"] = 0
    spec["holderIdentity"] = identity
    spec["leaseDurationSeconds"] = max(1, math.ceil(ttl))
    spec["renewTime"] = stamp
    body.update({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec})
    return body


class LeaderElector:
    """Runs the election; ``is_leader`` is read by the status writer, events and /status."""

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        ttl: float,
        renew_interval: float,
        on_change: Callable[[bool], None] = lambda leading: None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.ttl = ttl
        self.renew_interval = renew_interval
        self.on_change = on_change
        self.observed = Observation()
        self.leader = False
        self.holder = ""
        self.last_renew = -math.inf
        self.transitions = 0
        self._raw: Obj | None = None
        # Followers look more often than the leader renews (client-go: retryPeriod 2 s for a 15 s
        # lease), so a dead leader is replaced about one TTL after its last renewal.
        self.poll_interval = max(0.05, min(renew_interval / 2, ttl / 10))

    @property
    def is_leader(self) -> bool:
        return self.leader and trio.current_time() - self.last_renew < self.ttl

    def _set_leader(self, leading: bool) -> None:
        if leading != self.leader:
            self.leader = leading
            if leading:
                self.transitions += 1
                log.info(
                    "became the leader (Lease %s/%s, identity %s)", self.namespace, self.name, self.identity
                )
            else:
                log.warning("no longer the leader (Lease %s/%s)", self.namespace, self.name)
            self.on_change(leading)

    async def _call(self, fn: Callable[[], Obj]) -> Obj:
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)

    async def step(self) -> None:
        """Read, decide, write once."""
        path = LEASE.item(self.namespace, self.name)
        now = trio.current_time()
        try:
            raw: Obj | None = await self._call(lambda: self.client.request("GET", path))
        except ApiError as exc:
            if exc.status != 404:
                raise
            raw = None
        now = trio.current_time()
        record = parse_lease(raw) if raw is not None else None
        self.observed.see(record, now)
        self._raw = raw
        self.holder = record.holder if record else ""
        action = decide(self.observed, self.identity, now, self.ttl)
        if action == "wait":
            self._set_leader(False)
            return
        body = lease_body(
            self.namespace,
            self.name,
            self.identity,
            self.ttl,
            previous=raw,
            action=action,
            now=datetime.datetime.now(datetime.UTC),
        )
        try:
            if action == "create":
                collection = LEASE.collection(self.namespace)
                written = await self._call(lambda: self.client.request("POST", collection, body=body))
            else:
                written = await self._call(lambda: self.client.request("PUT", path, body=body))
        except ApiError as exc:
            if exc.status in (409, 422):  # someone else wrote first: read again next round
                log.debug("lease %s: %s lost a race: %s", self.name, action, exc)
                self._set_leader(False)
                return
            raise
        self.observed.see(parse_lease(written), trio.current_time())
        self._raw = written
        self.holder = self.identity
        self.last_renew = now
        self._set_leader(True)

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except ApiError as exc:
                log.warning("leader election (Lease %s/%s): %s", self.namespace, self.name, exc)
                if self.leader and trio.current_time() - self.last_renew >= self.ttl:
                    self._set_leader(False)
            interval = self.renew_interval if self.leader else self.poll_interval
            await trio.sleep(interval)
            if self.leader and not self.is_leader:
                self._set_leader(False)

    async def release(self) -> None:
        """Give the Lease up (empty holder) if we hold it; best effort, short timeout."""
        if not self.leader or self._raw is None:
            return
        self._set_leader(False)
        body = lease_body(
            self.namespace,
            self.name,
            "",
            1,
            previous=self._raw,
            action="renew",
            now=datetime.datetime.now(datetime.UTC),
        )
        path = LEASE.item(self.namespace, self.name)
        with trio.move_on_after(2.0):
            try:
                await self._call(lambda: self.client.request("PUT", path, body=body))
                log.info("released the leader Lease %s/%s", self.namespace, self.name)
            except ApiError as exc:
                log.warning("could not release the leader Lease: %s", exc)
