"""List-then-watch one resource type in a thread, feeding a trio channel.

Theory of operation
-------------------
Each ``Informer`` owns one daemon thread running ``_loop``:

1. **List** (paginated) → ``Listed(kind, items)``: the full state of that kind; the list's
   resourceVersion is where the watch starts.  With ``keep`` (Secrets), only the objects
   it names are kept, page by page and event by event; ``Listed.basis`` says which set the
   list was filtered with, so that the controller can fetch what was added since.
2. **Watch** from that resourceVersion with bookmarks and a server-side ``timeoutSeconds``;
   each ADDED/MODIFIED/DELETED becomes a ``Changed``; every event (BOOKMARK included)
   advances the resourceVersion.  When the server ends the watch (its timeout, a dropped
   connection) we watch again from the last resourceVersion: no relist, nothing missed.
3. **410 Gone** (as the HTTP status or as an ERROR event: our resourceVersion was
   compacted away) → relist at once.
4. Any other failure (API down, 5xx, 403...) → ``Lost(kind, reason)``, wait a jittered,
   capped exponential backoff, then **relist** (a full resync: whatever happened while we
   were away is picked up, deletions included).

Messages reach trio through ``trio.from_thread.run`` on a bounded channel, so a slow
consumer slows the watch down instead of buffering without limit.  ``stop`` sets a flag
and shuts the current watch's socket down so the thread ends promptly.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from fastingress.k8s.client import ApiError, KubeClient, Resource, Watch

log = logging.getLogger("fastingress.k8s.informer")

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Listed:
    kind: str
    items: list[Obj]
    basis: frozenset[tuple[str, str]] | None = None  # the keep set the items were filtered with


@dataclass(frozen=True, slots=True)
class Changed:
    kind: str
    type: str  # ADDED / MODIFIED / DELETED
    object: Obj


@dataclass(frozen=True, slots=True)
class Lost:
    kind: str
    reason: str


Message = Listed | Changed | Lost


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential backoff: base * 2^n, capped, times a random factor in [0.5, 1]."""

    base: float = 0.2
    cap: float = 10.0

    def delay(self, failures: int, rand: float) -> float:
        raw: float = min(self.cap, self.base * 2.0 ** min(failures, 30))
        return raw * (0.5 + rand / 2)


def _ref(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return ("", "")
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _keeper(basis: frozenset[tuple[str, str]]) -> Callable[[Obj], bool]:
    return lambda obj: _ref(obj) in basis


class Gone(Exception):
    """The resourceVersion we watch from is too old (410)."""


class Informer:
    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        namespace: str | None,
        send: trio.MemorySendChannel[Message],
        token: trio.lowlevel.TrioToken,
        *,
        watch_timeout: int = 300,
        backoff: Backoff = Backoff(),
        keep: Callable[[], frozenset[tuple[str, str]]] | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace if resource.namespaced else None
        self._send = send
        self._token = token
        self.watch_timeout = watch_timeout
        self.backoff = backoff
        # Only objects whose (namespace, name) is in keep() are passed on (DELETED always is):
        # the others are dropped as they are decoded, never held (see k8s/secrets.py).
        self.keep = keep
        self._stop = threading.Event()
        self._watch: Watch | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"informer-{resource.kind}", daemon=True)
        self.lists = 0  # how many times we listed (tests and /status)
        self.watches = 0

    def start(self) -> None:
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            watch = self._watch
        if watch is not None:
            try:
                watch.close()
            except Exception:
                log.debug("closing the %s watch", self.resource.kind, exc_info=True)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _emit(self, message: Message) -> None:
        if self._stop.is_set():
            raise trio.RunFinishedError
        trio.from_thread.run(self._send.send, message, trio_token=self._token)

    def _run(self) -> None:
        try:
            self._loop()
        except (trio.RunFinishedError, trio.Cancelled, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("informer for %s died", self.resource.kind)

    def _loop(self) -> None:
        kind = self.resource.kind
        version: str | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if version is None:
                    basis = self.keep() if self.keep is not None else None
                    accept = _keeper(basis) if basis is not None else None
                    items, version = self.client.list(self.resource, self.namespace, accept)
                    self.lists += 1
                    self._emit(Listed(kind, items, basis))
                    failures = 0
                version = self._watch_from(version)
            except Gone:
                log.info("%s watch: resourceVersion too old (410 Gone); relisting", kind)
                version = None
            except ApiError as exc:
                if self._stop.is_set():
                    return
                reason = str(exc)
                delay = self.backoff.delay(failures, random.random())
                failures += 1
                log.warning("%s: %s; retrying in %.2fs (then relisting)", kind, reason, delay)
                self._emit(Lost(kind, reason))
                version = None
                self._stop.wait(delay)

    def _watch_from(self, version: str) -> str:
        """Watch until the server ends the stream; return the last resourceVersion seen."""
        kind = self.resource.kind
        try:
            watch = self.client.watch(self.resource, self.namespace, version, self.watch_timeout)
        except ApiError as exc:
            if exc.status == 410:
                raise Gone from None
            raise
        with self._lock:
            self._watch = watch
        self.watches += 1
        try:
            for event in watch:
                if self._stop.is_set():
                    break
                if event.type == "ERROR":
                    code = event.object.get("code")
                    if code == 410:
                        raise Gone
                    raise ApiError(
                        code if isinstance(code, int) else 0, f"{kind} watch: {event.object.get('message')}"
                    )
                meta = event.object.get("metadata")
                new_version = meta.get("resourceVersion") if isinstance(meta, dict) else None
                if isinstance(new_version, str) and new_version:
                    version = new_version
                keep = self.keep
                if keep is not None and event.type != "DELETED" and _ref(event.object) not in keep():
                    continue  # not referenced: dropped as decoded (a BOOKMARK has no name either)
                if event.type in ("ADDED", "MODIFIED", "DELETED"):
                    event.object.setdefault("kind", kind)
                    event.object.setdefault("apiVersion", self.resource.api_version)
                    self._emit(Changed(kind, event.type, event.object))
        finally:
            with self._lock:
                self._watch = None
        return version
