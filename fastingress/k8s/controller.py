"""``fastingress controller``: the Kubernetes API as the supervisor's configuration source.

Theory of operation
-------------------
``ControllerSource`` implements ``fastingress.supervisor.source.ConfigSource``:

* ``initial()`` starts one ``Informer`` thread per watched kind (IngressClass, Ingress,
  Service, EndpointSlice, and Secrets and ConfigMaps once the Ingresses are listed: only the
  ones they reference are kept, see ``k8s/secrets.py``) and applies their messages to the ``Store``
  until EVERY kind has completed its first list; only then is the first snapshot built, so
  the workers' generation 1 is the full state, never a partial one.  With ``--configmap``,
  the controller ConfigMap is watched too, alone (a field selector on its name, in its
  namespace), and so is each ConfigMap it names (``add-headers``, ``proxy-set-headers``),
  started and stopped as the ConfigMap changes (``_follow_configmaps``); the first snapshot
  waits for those lists as well.  The admin port is up
  meanwhile (``/readyz`` 503 says which lists are missing).
* ``run(trigger)`` runs the tasks of a live controller in one nursery:
  - the consumer applies informer messages to the store; a message that changes what
    translation sees pokes the ``Debouncer`` (hold-off after the last change, capped by a
    maximum delay after the first);
  - the rebuilder waits for the debounce deadline and calls ``trigger`` (the supervisor's
    reload: ``reload()`` translates the store in a thread, and the supervisor publishes
    only if the bytes changed);
  - leader election (``leader.LeaderElector``), and, while leading, the status writer
    (status.loadBalancer of our Ingresses, replace on the status subresource, re-read on
    409) and the event poster (diagnostics → Events, deduplicated; 403 → stop trying).
* API outage: informers back off and relist when the API answers again; the snapshot in
  force keeps being served.  Past ``api_outage_grace`` seconds ``readiness()`` turns false
  only if another replica (``k8s/peers.py``) answers that it still reaches the API: an
  outage of the API server itself never takes every replica out of the load balancer.
* Status: an Ingress that stops being ours loses our address; with
  ``update_status_on_shutdown`` the last replica standing clears the status on shutdown.
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import trio

from fastingress.errors import ConfigError
from fastingress.k8s.client import (
    CONFIGMAP,
    CONTROLLER_CONFIGMAP,
    EVENT,
    INGRESS,
    SECRET,
    WATCHED,
    ApiError,
    KubeClient,
    Resource,
    configmap_resource,
)
from fastingress.k8s.debounce import Debouncer
from fastingress.k8s.events import EventLimiter, event_body
from fastingress.k8s.informer import Changed, Informer, Listed, Lost, Message
from fastingress.k8s.leader import LeaderElector
from fastingress.k8s.peers import CONTACT_PATH, Peer, ask, peers
from fastingress.k8s.secrets import Ref, SecretRefs, ingress_configmap_refs, secret_ref
from fastingress.k8s.status import current_addresses, desired_addresses, owned_ingresses, with_status
from fastingress.k8s.store import Store, key_of
from fastingress.settings import ControllerSettings
from fastingress.settings import translate_options as options_for
from fastingress.snapshot.codec import encode_msgpack
from fastingress.snapshot.schema import Snapshot
from fastingress.supervisor.source import Loaded, Trigger
from fastingress.translate import Diagnostic, TranslateOptions, translate
from fastingress.translate.configmap import parse_configmap_ref, referenced_configmaps
from fastingress.translate.incremental import Translator

log = logging.getLogger("fastingress.k8s.controller")

Obj = dict[str, Any]
CHANNEL_SIZE = 1024
STATUS_RETRIES = 5
STATUS_INTERVAL = 0.05  # coalesce bursts of status work
SPLICE_ITEMS = 64  # tuples at least this long are encoded item by item (see SnapshotEncoder)
SHUTDOWN_STATUS_TIMEOUT = 5.0  # seconds clearing Ingress status may take on shutdown
PEER_PROBE_MAX_INTERVAL = 5.0  # seconds between asking peers during an API outage


def default_identity() -> str:
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


def translate_options(settings: ControllerSettings) -> TranslateOptions:
    return options_for(settings.translation)


class SnapshotEncoder:
    """``encode_msgpack(snapshot)``, byte for byte, reusing the bytes of each Snapshot field
    whose value is the very object it encoded last time.

    msgpack is compositional and msgspec writes a Struct (not array_like, defaults not
    omitted, no tag, no rename) as a map header followed by every field's name and value in
    declaration order, so the encoding of a Snapshot is the concatenation of its fields'
    encodings.  The incremental Translator hands back the same ``virtual_hosts`` tuple when
    only endpoints changed, which saves encoding ~3 MB with 10,000 hosts.  Any other Struct
    configuration falls back to plain ``encode_msgpack``.

    A long tuple (virtual hosts, upstreams, certificates) is an array header followed by its
    items' encodings, so when the tuple is new but most of its items are the very objects of
    last time (one Secret changed: one virtual host and one certificate are new), only the
    new items are encoded and the rest of the bytes are reused.
    """

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        config = Snapshot.__struct_config__
        fields = Snapshot.__struct_encode_fields__
        self._splice = (
            not config.array_like
            and not config.omit_defaults
            and config.tag is None
            and fields == Snapshot.__struct_fields__
            and len(fields) <= 15
        )
        self._header = bytes([0x80 | len(fields)])
        self._names = [(name, self._encoder.encode(name)) for name in fields]
        self._last: dict[str, tuple[object, bytes]] = {}
        self._items: dict[str, dict[int, tuple[object, bytes]]] = {}  # field -> id(item) -> bytes

    def encode(self, snapshot: Snapshot) -> bytes:
        if not self._splice:
            return encode_msgpack(snapshot)
        parts = [self._header]
        for name, encoded_name in self._names:
            value = getattr(snapshot, name)
            last = self._last.get(name)
            if last is None or last[0] is not value:
                if isinstance(value, tuple) and len(value) >= SPLICE_ITEMS:
                    encoded = self._array(name, value)
                else:
                    self._items.pop(name, None)
                    encoded = self._encoder.encode(value)
                last = self._last[name] = (value, encoded)
            parts.append(encoded_name)
            parts.append(last[1])
        return b"".join(parts)

    def _array(self, name: str, items: tuple[object, ...]) -> bytes:
        """A msgpack array of ``items``, reusing the bytes of items encoded last time."""
        previous = self._items.get(name, {})
        current: dict[int, tuple[object, bytes]] = {}
        count = len(items)
        if count < 16:
            header = bytes([0x90 | count])
        elif count < 1 << 16:
            header = b"\xdc" + count.to_bytes(2, "big")
        else:
            header = b"\xdd" + count.to_bytes(4, "big")
        parts = [header]
        encode = self._encoder.encode
        for item in items:
            hit = previous.get(id(item))
            if hit is None or hit[0] is not item:
                hit = (item, encode(item))
            current[id(item)] = hit
            parts.append(hit[1])
        self._items[name] = current
        return b"".join(parts)


def build(
    objects: list[Obj],
    options: TranslateOptions,
    translator: Translator | None = None,
    encoder: SnapshotEncoder | None = None,
) -> tuple[Loaded, tuple[Diagnostic, ...], float]:
    """Translate ``objects`` (blocking; run in a thread); also the diagnostics and the seconds it took.

    With ``translator`` (same options) and ``encoder``, work unchanged since their last call
    is reused (the controller keeps one of each, used by one build at a time).
    """
    started = time.perf_counter()
    result = translate(objects, options) if translator is None else translator.translate(objects)
    payload = encode_msgpack(result.snapshot) if encoder is None else encoder.encode(result.snapshot)
    elapsed = time.perf_counter() - started
    return Loaded(result.snapshot, payload, result.diagnostics), result.diagnostics, elapsed


class ControllerSource:
    def __init__(self, settings: ControllerSettings, client: KubeClient | None = None) -> None:
        self.settings = settings
        self.client = client
        self.store = Store()
        self.options = translate_options(settings)
        self.translator = Translator(self.options)  # reused across builds: a change costs little
        self.encoder = SnapshotEncoder()
        self.debouncer = Debouncer(settings.debounce_hold_off, settings.debounce_max_delay)
        self.identity = settings.identity or default_identity()
        self.informers: list[Informer] = []
        self.synced: set[str] = set()
        self.down_since: dict[str, float] = {}
        self.last_error = ""
        self.builds = 0
        self.last_build_seconds = 0.0
        self.last_snapshot_bytes = 0
        self.status_writes = 0
        self.events_posted = 0
        self.events = EventLimiter()
        self.elector: LeaderElector | None = None
        self._diagnostics: Sequence[Diagnostic] = ()
        self._recv: trio.MemoryReceiveChannel[Message] | None = None
        self._send: trio.MemorySendChannel[Message] | None = None
        self._wake = trio.Event()
        self._status_wake = trio.Event()
        self._events_wake = trio.Event()
        default_certificate = secret_ref(settings.translation.default_ssl_certificate)
        self.secret_refs = SecretRefs([default_certificate] if default_certificate else [])
        self.configmap_refs = SecretRefs(refs_of=ingress_configmap_refs)
        # Kinds held only as far as Ingresses reference them, listed once the Ingresses are.
        self.referenced: dict[str, tuple[Resource, SecretRefs]] = {
            "Secret": (SECRET, self.secret_refs), "ConfigMap": (CONFIGMAP, self.configmap_refs),
        }
        self._late: dict[str, Informer] = {}
        self._to_fetch: set[tuple[str, Ref]] = set()  # referenced objects the watch dropped before
        self._fetch_wake = trio.Event()
        self.secrets_fetched = 0  # (Secrets and ConfigMaps)
        self.peer_in_contact: Peer | None = None  # in an API outage: a replica that still has it
        self.status_cleared = 0
        # --configmap: the controller ConfigMap's informer and those of the ConfigMaps it names
        self.configmap = parse_configmap_ref(settings.translation.configmap or "")
        self.watched: tuple[Resource, ...] = WATCHED
        if self.configmap is not None:
            self.watched = (*WATCHED, configmap_resource(self.configmap[1]))
        self.configmap_informers: dict[tuple[str, str], Informer] = {}
        self.configmaps_listed: set[tuple[str, str]] = set()
        self._token: trio.lowlevel.TrioToken | None = None

    # -- ConfigSource ------------------------------------------------------------------

    def describe(self) -> str:
        where = (
            f"namespace {self.settings.watch_namespace}"
            if self.settings.watch_namespace
            else "all namespaces"
        )
        base = self.client.base if self.client is not None else "?"
        return f"Kubernetes API {base} ({where})"

    async def prepare(self) -> None:
        """Nothing quick to check: the initial list runs with the admin port already up."""

    async def initial(self) -> Loaded:
        if self.client is None:
            kubeconfig = self.settings.kubeconfig
            self.client = await trio.to_thread.run_sync(KubeClient.from_kubeconfig, kubeconfig)
        self._send, self._recv = trio.open_memory_channel[Message](CHANNEL_SIZE)
        token = self._token = trio.lowlevel.current_trio_token()
        for resource in WATCHED:
            referenced = self.referenced.get(resource.kind)
            informer = Informer(
                self.client,
                resource,
                self.settings.watch_namespace,
                self._send,
                token,
                watch_timeout=self.settings.watch_timeout,
                keep=functools.partial(_snapshot_of, referenced[1]) if referenced is not None else None,
            )
            self.informers.append(informer)
            if referenced is not None:
                self._late[resource.kind] = informer
        # Secrets and ConfigMaps are listed once the Ingresses are, filtered by what those reference.
        for informer in self.informers:
            if informer not in self._late.values():
                informer.start()
        if self.configmap is not None:
            self._watch_configmap(self.configmap)
        log.info("listing %s", ", ".join(r.kind for r in self.watched))
        try:
            while len(self.synced) < len(self.watched) or not self.configmaps_listed >= set(
                self.configmap_informers
            ):
                self._handle(await self._recv.receive())
                if "Ingress" in self.synced:
                    for late in self._late.values():
                        if not late.started:
                            late.start()
            await self._fetch_secrets()
        except BaseException:
            self.stop_informers()
            raise
        self.debouncer.take()  # the initial build covers everything received so far
        log.info("initial list complete: %d objects", len(self.store))
        return await self.reload()

    async def reload(self) -> Loaded:
        objects = self.store.objects()
        loaded, diagnostics, seconds = await trio.to_thread.run_sync(
            build, objects, self.options, self.translator, self.encoder
        )
        self.builds += 1
        self.last_build_seconds = seconds
        self.last_snapshot_bytes = len(loaded.payload)
        log.debug("translated %d objects in %.1f ms", len(objects), seconds * 1000)
        self._diagnostics = diagnostics
        self._events_wake.set()
        return loaded

    async def run(self, trigger: Trigger) -> None:
        assert self.client is not None
        self.elector = LeaderElector(
            self.client,
            namespace=self.settings.election_namespace,
            name=self.settings.election_id,
            identity=self.identity,
            ttl=self.settings.lease_ttl,
            renew_interval=self.settings.lease_renew,
            on_change=self._leadership_changed,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._consume)
                nursery.start_soon(self._fetch_loop)
                nursery.start_soon(self._rebuild, trigger)
                nursery.start_soon(self.elector.run)
                nursery.start_soon(self._status_loop)
                nursery.start_soon(self._events_loop)
                nursery.start_soon(self._peers_loop)
        finally:
            self.stop_informers()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(SHUTDOWN_STATUS_TIMEOUT):
                    await self.clear_status_on_shutdown()
                await self.elector.release()

    def outage(self) -> float:
        """Seconds since an informer lost the API (0 when every one is in contact)."""
        if not self.down_since:
            return 0.0
        return time.monotonic() - min(self.down_since.values())

    def readiness(self) -> tuple[bool, str]:
        missing = [r.kind for r in self.watched if r.kind not in self.synced]
        if missing:
            why = f" ({self.last_error})" if self.down_since else ""
            return False, f"initial list: waiting for {', '.join(missing)}{why}"
        outage = self.outage()
        if not self.down_since or outage < self.settings.api_outage_grace:
            return True, ""
        peer = self.peer_in_contact
        if peer is not None:
            return False, (
                f"control plane: no contact with the Kubernetes API for {outage:.0f}s while replica "
                f"{peer} has it (this one still serves the last snapshot): {self.last_error}"
            )
        return True, (
            f"no contact with the Kubernetes API for {outage:.0f}s, and no other replica has it: "
            "staying ready, serving the last snapshot"
        )

    def endpoint(self, path: str) -> tuple[int, str] | None:
        """``/api-contact``: what peers ask in an API outage (see ``k8s/peers.py``)."""
        if path != CONTACT_PATH:
            return None
        if self.down_since or len(self.synced) < len(self.watched):
            return 503, f"no contact with the Kubernetes API for {self.outage():.0f}s\n"
        return 200, "in contact with the Kubernetes API\n"

    def peers(self) -> list[Peer]:
        return peers(
            self.store.of_kind("EndpointSlice"),
            self.settings.publish_service,
            self.settings.pod_name,
            self.settings.admin_port,
        )

    async def _peers_loop(self) -> None:
        """While the API is out of reach, ask the other replicas whether they reach it."""
        interval = max(0.2, min(PEER_PROBE_MAX_INTERVAL, self.settings.api_outage_grace / 2))
        while True:
            found: Peer | None = None
            if self.down_since:
                for peer in self.peers():
                    if peer.ready and await ask(peer):
                        found = peer
                        break
            if (found is None) != (self.peer_in_contact is None):
                if found is not None:
                    log.warning("replica %s is in contact with the Kubernetes API, this one is not", found)
                elif self.down_since:
                    log.warning("no other replica is in contact with the Kubernetes API either")
            self.peer_in_contact = found
            await trio.sleep(interval)

    def status(self) -> dict[str, Any]:
        elector = self.elector
        return {
            "leader": self.is_leader,
            "controller": {
                "identity": self.identity,
                "leader": self.is_leader,
                "lease_holder": elector.holder if elector else "",
                "api_connected": not self.down_since,
                "api_error": self.last_error if self.down_since else "",
                "synced": sorted(self.synced),
                "objects": len(self.store),
                "store_version": self.store.version,
                "secrets_referenced": len(self.secret_refs.snapshot),
                "secrets_held": sum(1 for _ in self.store.of_kind("Secret")),
                "secrets_fetched": self.secrets_fetched,
                "configmaps_referenced": len(self.configmap_refs.snapshot),
                "configmaps_held": sum(1 for _ in self.store.of_kind("ConfigMap")),
                "builds": self.builds,
                "last_build_seconds": round(self.last_build_seconds, 6),
                "last_snapshot_bytes": self.last_snapshot_bytes,
                "status_writes": self.status_writes,
                "status_cleared": self.status_cleared,
                "peer_in_contact": str(self.peer_in_contact) if self.peer_in_contact else "",
                "peers": [f"{peer}{'' if peer.ready else ' (not ready)'}" for peer in self.peers()],
                "events_posted": self.events_posted,
                "configmaps": [f"{ns}/{name}" for ns, name in sorted(self.configmap_informers)],
                "lists": sum(i.lists for i in self.informers),
            },
        }

    def metrics(self) -> list[str]:
        return [
            "# HELP fastingress_leader 1 if this replica holds the leader Lease.",
            "# TYPE fastingress_leader gauge",
            f"fastingress_leader {int(self.is_leader)}",
            "# HELP fastingress_api_connected 1 if every informer is in contact with the Kubernetes API.",
            "# TYPE fastingress_api_connected gauge",
            f"fastingress_api_connected {int(not self.down_since)}",
            "# HELP fastingress_snapshot_build_seconds Time the last translation of the cluster took.",
            "# TYPE fastingress_snapshot_build_seconds gauge",
            f"fastingress_snapshot_build_seconds {self.last_build_seconds!r}",
            "# HELP fastingress_snapshot_builds_total Translations of the cluster state.",
            "# TYPE fastingress_snapshot_builds_total counter",
            f"fastingress_snapshot_builds_total {self.builds}",
        ]

    # -- internals ---------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.elector is not None and self.elector.is_leader

    def stop_informers(self) -> None:
        for informer in self.informers:
            informer.stop()
        for informer in self.configmap_informers.values():
            informer.stop()

    # -- the controller ConfigMap (--configmap) ----------------------------------------------

    def _watch_configmap(self, ref: tuple[str, str]) -> None:
        """List and watch one ConfigMap (a field selector on its name, in its namespace)."""
        assert self.client is not None and self._send is not None and self._token is not None
        informer = Informer(
            self.client, configmap_resource(ref[1]), ref[0], self._send, self._token,
            watch_timeout=self.settings.watch_timeout, keep=lambda: frozenset({ref}),
        )
        self.configmap_informers[ref] = informer
        informer.start()

    def _follow_configmaps(self) -> bool:
        """Watch the ConfigMaps the controller ConfigMap names now, and only those."""
        if self.configmap is None or self._send is None:
            return False
        main = self.store.get(CONTROLLER_CONFIGMAP, *self.configmap)
        wanted = {self.configmap} | set(referenced_configmaps(main, self.configmap[0]))
        changed = False
        for ref in [r for r in self.configmap_informers if r not in wanted]:
            self.configmap_informers.pop(ref).stop()
            self.configmaps_listed.discard(ref)
            gone = {"metadata": {"namespace": ref[0], "name": ref[1]}}
            changed = self.store.apply(CONTROLLER_CONFIGMAP, "DELETED", gone) or changed
        for ref in sorted(wanted - set(self.configmap_informers)):
            log.info("watching ConfigMap %s/%s (named by ConfigMap %s/%s)", *ref, *self.configmap)
            self._watch_configmap(ref)
        return changed

    def _configmap_listed(self, message: Listed) -> bool:
        """The list of one ConfigMap informer: that object is there, or it is not (``basis``).
        They are held under their own store kind: the ConfigMaps Ingresses name (their own
        informer, filtered by reference) are replaced whole by each of its lists."""
        changed = False
        present = {
            key[1:]: obj for obj in message.items if (key := key_of(CONTROLLER_CONFIGMAP, obj)) is not None
        }
        for ref in message.basis or ():
            if ref not in self.configmap_informers:
                continue  # an informer stopped meanwhile
            self.configmaps_listed.add(ref)
            obj = present.get(ref)
            if obj is not None:
                obj["kind"] = "ConfigMap"  # (translation reads it as one; the store files it apart)
                changed = self.store.apply(CONTROLLER_CONFIGMAP, "ADDED", obj) or changed
            else:
                gone = {"metadata": {"namespace": ref[0], "name": ref[1]}}
                changed = self.store.apply(CONTROLLER_CONFIGMAP, "DELETED", gone) or changed
        if self.configmap is not None and self.configmap in self.configmaps_listed:
            self.synced.add(CONTROLLER_CONFIGMAP)
        return changed

    def _handle(self, message: Message) -> bool:
        """Apply one informer message; True if translation may see a change."""
        if isinstance(message, Lost):
            self.down_since.setdefault(message.kind, time.monotonic())
            self.last_error = message.reason
            return False
        follow: dict[str, tuple[set[Ref], set[Ref]]] = {}  # kind -> (added, removed) references
        if message.kind == CONTROLLER_CONFIGMAP:  # --configmap and those it names (not kept by refs)
            if isinstance(message, Listed):
                if self.down_since.pop(CONTROLLER_CONFIGMAP, None) is not None:
                    log.info("controller ConfigMap: in contact with the API again")
                changed = self._configmap_listed(message)
            else:
                key = key_of(CONTROLLER_CONFIGMAP, message.object)
                if key is None or key[1:] not in self.configmap_informers:
                    return False  # from an informer stopped meanwhile
                message.object["kind"] = "ConfigMap"
                changed = self.store.apply(CONTROLLER_CONFIGMAP, message.type, message.object)
            changed = self._follow_configmaps() or changed
        elif isinstance(message, Listed):
            if self.down_since.pop(message.kind, None) is not None:
                log.info("%s: in contact with the API again (relisted %d)", message.kind, len(message.items))
            self.synced.add(message.kind)
            if message.kind == "Ingress":
                ingresses = [(k, obj) for obj in message.items if (k := key_of("Ingress", obj)) is not None]
                for kind, (_, refs) in self.referenced.items():
                    follow[kind] = refs.replace(ingresses)
            changed = self.store.replace(message.kind, message.items)
            referenced = self.referenced.get(message.kind)
            if message.basis is not None and referenced is not None:  # named since the list was filtered
                follow[message.kind] = (set(referenced[1].snapshot - message.basis), set())
        else:
            if message.kind == "Ingress":
                key = key_of("Ingress", message.object)
                if key is not None:
                    gone = message.type == "DELETED"
                    for kind, (_, refs) in self.referenced.items():
                        follow[kind] = refs.set_ingress(key, None if gone else message.object)
            changed = self.store.apply(message.kind, message.type, message.object)
        for kind, (added, removed) in follow.items():
            changed = self._follow_secret_refs(added, removed, kind) or changed
        if changed:
            self.debouncer.poke(trio.current_time())
            self._wake.set()
            if message.kind in ("Ingress", "IngressClass", "Service"):
                self._status_wake.set()
        return changed

    def _follow_secret_refs(self, added: set[Ref], removed: set[Ref], kind: str = "Secret") -> bool:
        """Forget Secrets (ConfigMaps) no longer referenced; queue newly referenced ones we do not hold."""
        changed = False
        for namespace, name in removed:
            gone = {"metadata": {"namespace": namespace, "name": name}}
            changed = self.store.apply(kind, "DELETED", gone) or changed
        if kind in self.synced:  # before the first list of the kind, that list brings them
            for ref in added:
                if self.store.get(kind, *ref) is None:
                    self._to_fetch.add((kind, ref))
            if self._to_fetch:
                self._fetch_wake.set()
        return changed

    async def _fetch_secrets(self) -> None:
        """GET the queued Secrets and ConfigMaps (their watch events were dropped while nobody
        named them)."""
        while self._to_fetch:
            kind, ref = self._to_fetch.pop()
            resource, refs = self.referenced[kind]
            if ref not in refs or self.store.get(kind, *ref) is not None:
                continue
            try:
                found = await self._api("GET", resource.item(*ref))
            except ApiError as exc:
                if exc.status != 404:  # a relist after the outage brings it
                    log.debug("fetching %s %s/%s: %s", kind, ref[0], ref[1], exc)
                continue
            found.setdefault("kind", kind)
            found.setdefault("apiVersion", resource.api_version)
            if ref in refs and self.store.get(kind, *ref) is None:  # no newer event
                self.secrets_fetched += 1
                self._handle(Changed(kind, "ADDED", found))

    async def _fetch_loop(self) -> None:
        while True:
            await self._fetch_wake.wait()
            self._fetch_wake = trio.Event()
            await self._fetch_secrets()

    async def _consume(self) -> None:
        assert self._recv is not None
        async for message in self._recv:
            self._handle(message)

    async def _rebuild(self, trigger: Trigger) -> None:
        while True:
            deadline = self.debouncer.deadline()
            if deadline is None or trio.current_time() < deadline:
                self._wake = trio.Event()
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    await self._wake.wait()
                continue
            self.debouncer.take()
            await trigger("cluster changed")

    def _leadership_changed(self, leading: bool) -> None:
        if leading:
            self._status_wake.set()
            self._events_wake.set()

    async def _api(self, method: str, path: str, body: Obj | None = None) -> Obj:
        client = self.client
        assert client is not None
        return await trio.to_thread.run_sync(functools.partial(client.request, method, path, body=body))

    # -- status ------------------------------------------------------------------------

    def _desired(self) -> list[dict[str, str]] | None:
        settings = self.settings
        if settings.publish_status_address:
            return desired_addresses(None, settings.publish_status_address)
        if settings.publish_service:
            namespace, _, name = settings.publish_service.partition("/")
            return desired_addresses(self.store.get("Service", namespace, name), ())
        return None

    async def _status_loop(self) -> None:
        while True:
            await self._status_wake.wait()
            self._status_wake = trio.Event()
            if self.is_leader:
                try:
                    await self.sync_status()
                except ApiError as exc:
                    log.warning("writing Ingress status: %s", exc)
            await trio.sleep(STATUS_INTERVAL)

    async def sync_status(self) -> None:
        """Write status.loadBalancer of each owned Ingress whose status differs, and clear it
        on Ingresses that are no longer ours but still show our addresses (leader only)."""
        desired = self._desired()
        if desired is None:
            return
        ingresses = list(self.store.of_kind("Ingress"))
        owned = owned_ingresses(ingresses, self.options)
        owned_keys = {key_of("Ingress", ingress) for ingress in owned}
        for ingress in owned:
            if with_status(ingress, desired) is not None:
                await self._write_status(ingress, desired)
        if not desired:
            return
        for ingress in ingresses:
            if key_of("Ingress", ingress) not in owned_keys and current_addresses(ingress) == desired:
                await self._write_status(ingress, [])  # not ours any more: not our address either

    async def clear_status_on_shutdown(self) -> None:
        """--update-status-on-shutdown: the last replica standing clears the status it wrote."""
        if not (self.settings.update_status_on_shutdown and self.is_leader):
            return
        desired = self._desired()
        if not desired:
            return
        others = [peer for peer in self.peers() if peer.ready]
        if others:
            log.info(
                "shutting down: Ingress status kept, %d other replicas are ready (%s)",
                len(others),
                ", ".join(map(str, others)),
            )
            return
        for ingress in owned_ingresses(list(self.store.of_kind("Ingress")), self.options):
            if current_addresses(ingress) == desired:
                try:
                    await self._write_status(ingress, [])
                except ApiError as exc:
                    log.warning("clearing Ingress status on shutdown: %s", exc)
                    return

    async def _write_status(self, ingress: Obj, desired: list[dict[str, str]]) -> None:
        key = key_of("Ingress", ingress)
        assert key is not None
        path = INGRESS.item(key[1], key[2]) + "/status"
        current: Obj | None = ingress
        for _ in range(STATUS_RETRIES):
            if current is None:
                return
            body = with_status(current, desired)
            if body is None:
                return
            try:
                written = await self._api("PUT", path, body)
            except ApiError as exc:
                if exc.status == 404:
                    return
                if exc.status != 409:
                    raise
                log.debug("Ingress %s/%s status: conflict, re-reading", key[1], key[2])
                try:
                    current = await self._api("GET", INGRESS.item(key[1], key[2]))
                except ApiError as again:
                    if again.status == 404:
                        return
                    raise
                continue
            self.status_writes += 1
            written.setdefault("kind", "Ingress")
            written.setdefault("apiVersion", INGRESS.api_version)
            self.store.apply("Ingress", "MODIFIED", written)  # the watch echo is then a no-op
            if desired:
                log.info("Ingress %s/%s: status.loadBalancer set to %s", key[1], key[2], desired)
            else:
                self.status_cleared += 1
                log.info("Ingress %s/%s: status.loadBalancer cleared", key[1], key[2])
            return
        log.warning("Ingress %s/%s: status not written after %d conflicts", key[1], key[2], STATUS_RETRIES)

    # -- events ------------------------------------------------------------------------

    async def _events_loop(self) -> None:
        while True:
            await self._events_wake.wait()
            self._events_wake = trio.Event()
            if self.is_leader and not self.events.disabled:
                await self.post_events()
                if self.events.held_back:  # rate-limited: try again when tokens are back
                    await trio.sleep(1.0)
                    self._events_wake.set()

    async def post_events(self) -> None:
        for diagnostic in self.events.select(self._diagnostics, trio.current_time()):
            involved = self.store.get(diagnostic.kind, diagnostic.namespace, diagnostic.name)
            if involved is None and diagnostic.kind == "ConfigMap":  # the controller ConfigMap
                involved = self.store.get(CONTROLLER_CONFIGMAP, diagnostic.namespace, diagnostic.name)
            body = event_body(
                diagnostic, involved, reporter=self.identity, now=datetime.datetime.now(datetime.UTC)
            )
            path = EVENT.collection(body["metadata"]["namespace"])
            try:
                await self._api("POST", path, body)
            except ApiError as exc:
                if exc.status == 403:
                    log.warning(
                        "not allowed to create Events (%s); diagnostics are only logged from now on", exc
                    )
                    self.events.disabled = True
                    return
                log.warning("posting an Event: %s", exc)
                return
            self.events.mark(diagnostic)
            self.events_posted += 1


async def run_controller(settings: ControllerSettings) -> int:
    from fastingress.supervisor.core import run_supervisor

    client = await trio.to_thread.run_sync(KubeClient.from_kubeconfig, settings.kubeconfig)
    if not client.base:
        raise ConfigError("the Kubernetes configuration names no API server")
    client.page_size = settings.list_page_size
    return await run_supervisor(settings, ControllerSource(settings, client))


def _snapshot_of(refs: SecretRefs) -> frozenset[Ref]:
    """What an informer of referenced objects keeps (read from its thread: an immutable set)."""
    return refs.snapshot
