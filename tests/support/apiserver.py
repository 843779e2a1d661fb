"""A Kubernetes API server emulator for tests: real HTTP on 127.0.0.1, real semantics.

Theory of operation
-------------------
``ApiServer`` is a threaded stdlib HTTP/1.1 server in a background thread, used as a context
manager::

    with ApiServer() as api:
        api.apply(INGRESS_YAML)
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        ...  # run the controller / the official client against it

All state lives in one ``ApiServer`` object guarded by one condition variable (``_cond``):

* ``_objects``: for each resource (``_Resource``: group, version, plural, kind, scope) a dict
  ``(namespace, name) -> object``.  Stored dicts are never mutated after they are stored (a write
  stores a fresh deep copy), so history entries can share them.
* ``_rv``: ONE global, monotonically increasing resourceVersion (like etcd's revision).  Every
  write bumps it and stamps the object's ``metadata.resourceVersion``.  A write that changes
  nothing (PUT or ``apply`` of identical content) is a no-op: no new resourceVersion, no event,
  as on the real server.
* ``_history``: every write as an ``_Event`` (rv, resource, type, new object, previous object).
  ``compact()`` moves the horizon to the current rv: a WATCH (or an Exact LIST) from an older
  resourceVersion then gets 410 Gone ("too old resource version").  Entries still needed by open
  watches are kept; the rest are freed.  ``force_relist()`` moves the horizon past every rv
  handed out so far and ends every watch in one step, so that every client must relist.

A WATCH is a chunked response of JSON lines.  Its thread first replays history after the
requested resourceVersion (or synthetic ADDED events for every current object when there is
none, or it is "0"), then waits on ``_cond`` for live events.  Selectors are applied to the old
and the new object, as the real watch cache does: an object that starts matching arrives as
ADDED, one that stops matching as DELETED.  BOOKMARK events (``allowWatchBookmarks=true``)
carry the current rv every ``bookmark_interval`` seconds.  A watch ends after
``timeoutSeconds``, on ``drop_watches()`` (clean end of the chunked stream, or an abrupt socket
close with ``abrupt=True``), on ``set_down(True)`` (abrupt) and when the server closes.

A LIST with ``limit`` is paginated as the real server does it at scale: at most ``limit``
items sorted by (namespace, name), and, while more remain, ``metadata.continue`` (an opaque
token: the list's resourceVersion and the last key handed out) and ``remainingItemCount``.
Every page of one list shows the state at the first page's resourceVersion (reconstructed
from the history), whatever was written in between; a token older than the compaction
horizon is 410 Expired, and the client must start the list again.  ``on_continue`` lets a
test act between pages.

Writes through HTTP follow the API server's rules: POST → 201 or 409 AlreadyExists; PUT → 404
when missing, 409 Conflict when ``metadata.resourceVersion`` is set and stale; for kinds with a
``status`` subresource (Ingress, Service, Namespace) a PUT of the object keeps the stored status
and a PUT of ``/status`` changes only the status; DELETE → 200 Status Success and a DELETED
event; PATCH accepts merge and strategic-merge patches (applied as JSON merge patches) and JSON
patches.  Errors are ``Status`` objects with the real reasons and messages.  The Python-side
control methods (``apply``, ``delete``, ``get``, ``objects``) bypass those rules: they are the
test's hand on the cluster (``apply`` writes status too, like a controller-manager would).

Every request is logged in ``requests`` as ``(method, path, query)`` so that tests can assert
what a client did (e.g. that it never PATCHed an Ingress status).  ``wait_for(predicate)`` and
``watch_count()`` let a test wait for a client's progress without sleeping.  An outage
(``set_down``) answers 503 or closes connections without an answer.  ``/version``, ``/api``,
``/apis`` and the group/version discovery documents are served for clients that look them up.

Deviations from the real server (none of them visible to a controller doing list/watch/update):
no authentication/authorization (any token is accepted), no admission or schema validation
beyond names and namespaces, no finalizers or graceful deletion (a DELETE removes at once;
deleting a Namespace removes its objects at once), an Exact LIST at an old resourceVersion
returns the current state (or 410 when compacted), strategic-merge patches merge lists by
replacement, ``generation`` is bumped on any change outside ``metadata`` and ``status``, no
managedFields, and only the kinds in ``RESOURCES`` exist.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import copy
import itertools
import json
import re
import secrets
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import yaml

Obj = dict[str, Any]


@dataclass(frozen=True)
class _Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool = False
    fields: frozenset[str] = frozenset()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How the real server names the resource in messages: ``ingresses.networking.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)


_EVENT_FIELDS = frozenset(
    {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    }
)

RESOURCES: tuple[_Resource, ...] = (
    _Resource(
        "",
        "v1",
        "namespaces",
        "Namespace",
        namespaced=False,
        status_subresource=True,
        fields=frozenset({"status.phase"}),
    ),
    _Resource("", "v1", "services", "Service", namespaced=True, status_subresource=True),
    _Resource("", "v1", "secrets", "Secret", namespaced=True, fields=frozenset({"type"})),
    _Resource("", "v1", "configmaps", "ConfigMap", namespaced=True),
    _Resource("", "v1", "events", "Event", namespaced=True, fields=_EVENT_FIELDS),
    _Resource("networking.k8s.io", "v1", "ingresses", "Ingress", namespaced=True, status_subresource=True),
    _Resource("networking.k8s.io", "v1", "ingressclasses", "IngressClass", namespaced=False),
    _Resource(
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        namespaced=True,
        fields=frozenset({"addressType"}),
    ),
    _Resource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True),
    _Resource(
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        namespaced=True,
        fields=frozenset(
            {
                "regarding.kind",
                "regarding.namespace",
                "regarding.name",
                "reason",
                "reportingController",
                "type",
            }
        ),
    ),
)

_INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class RequestRecord(NamedTuple):
    """One logged request: ``method``, ``path`` (no query) and ``query`` (last value per key)."""

    method: str
    path: str
    query: dict[str, str]


class ApiError(Exception):
    """An API error answered as a ``Status`` object (also raised by the control methods)."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        return _status_obj(self.code, self.reason, self.message, self.details)


def _status_obj(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    status: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        status["details"] = details
    if not message:
        del status["message"]
    if not reason:
        del status["reason"]
    return status


def _details(res: _Resource, name: str) -> Obj:
    return {"name": name, "group": res.group, "kind": res.plural}


def _not_found(res: _Resource, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found', _details(res, name))


def _conflict(res: _Resource, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        _details(res, name),
    )


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _no_such_path() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def _encode_continue(rv: int, after: tuple[str, str]) -> str:
    """An opaque continue token: the list's resourceVersion and the last key handed out."""
    raw = json.dumps({"rv": rv, "start": list(after)}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), (str(data["start"][0]), str(data["start"][1]))
    except (ValueError, KeyError, IndexError, TypeError):
        raise _bad_request("continue key is not valid: illegal base64 data") from None


def _expired(requested: int, oldest: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {requested} ({oldest})")


# ----------------------------------------------------------------------------------------------
# Selectors


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op in ("=", "in"):
            return labels.get(self.key) in self.values
        # "!=" and "notin" match objects without the key, as on the real server.
        return labels.get(self.key) not in self.values


_SET_REQ = re.compile(r"^\s*([^\s!=()]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses (``a in (x,y),b=c``)."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text: str) -> tuple[_Requirement, ...]:
    """Parse a label selector (equality- and set-based); ``ApiError`` 400 when malformed."""
    reqs: list[_Requirement] = []
    for part in _split_top_level(text):
        m = _SET_REQ.match(part)
        if m:
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(_Requirement(m.group(1), m.group(2), values))
            continue
        for op in ("!=", "==", "="):
            if op in part:
                key, _, value = part.partition(op)
                if not key.strip():
                    raise _bad_request(f"unable to parse requirement: {part!r}")
                reqs.append(
                    _Requirement(key.strip(), "!=" if op == "!=" else "=", frozenset({value.strip()}))
                )
                break
        else:
            if part.startswith("!"):
                reqs.append(_Requirement(part[1:].strip(), "!exists"))
            elif re.fullmatch(r"[A-Za-z0-9._/-]+", part):
                reqs.append(_Requirement(part, "exists"))
            else:
                raise _bad_request(f"unable to parse requirement: {part!r}")
    return tuple(reqs)


def _field_value(obj: Obj, path: str) -> str | None:
    current: Any = obj
    for segment in path.split("."):
        if not isinstance(current, dict):
            return None
        current = current.get(segment)
    if current is None:
        return None
    return current if isinstance(current, str) else json.dumps(current)


def parse_field_selector(text: str, res: _Resource) -> tuple[tuple[str, str, str], ...]:
    """Parse ``path=value`` / ``path!=value`` terms; unsupported fields → 400 as on the real server."""
    terms: list[tuple[str, str, str]] = []
    allowed = {"metadata.name", "metadata.namespace"} | set(res.fields)
    for part in _split_top_level(text):
        for op in ("!=", "==", "="):
            if op in part:
                path, _, value = part.partition(op)
                path = path.strip()
                if path not in allowed:
                    raise _bad_request(f"field label not supported: {path}")
                terms.append((path, "!=" if op == "!=" else "=", value.strip()))
                break
        else:
            raise _bad_request(f"invalid field selector: {part!r}")
    return tuple(terms)


@dataclass(frozen=True)
class _Selection:
    """What a LIST or WATCH asked for: one resource, maybe one namespace, selectors."""

    res: _Resource
    namespace: str | None
    labels: tuple[_Requirement, ...] = ()
    fields: tuple[tuple[str, str, str], ...] = ()

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        labels = meta.get("labels") or {}
        if not all(r.matches(labels) for r in self.labels):
            return False
        for path, op, value in self.fields:
            actual = _field_value(obj, path) or ""
            if (actual == value) != (op == "="):
                return False
        return True


# ----------------------------------------------------------------------------------------------
# Store


@dataclass(frozen=True)
class _Event:
    rv: int
    res: _Resource
    type: str  # ADDED / MODIFIED / DELETED
    obj: Obj
    prev: Obj | None


@dataclass
class _Watch:
    selection: _Selection
    cursor: int
    bookmarks: bool
    deadline: float | None
    epoch: int
    ident: int = 0
    abrupt: bool = False
    peer_open: Callable[[], bool] = lambda: True


@dataclass
class _Outcome:
    """What a handler sends back: a JSON body, or a watch to stream."""

    code: int
    body: Obj | None = None
    watch: _Watch | None = None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Timestamps the real server parses and re-serialises: metav1.Time (seconds) and MicroTime.
_TIME_FIELDS: tuple[tuple[str, ...], ...] = (
    ("metadata", "creationTimestamp"),
    ("metadata", "deletionTimestamp"),
    ("firstTimestamp",),
    ("lastTimestamp",),
    ("deprecatedFirstTimestamp",),
    ("deprecatedLastTimestamp",),
)
_MICRO_TIME_FIELDS: tuple[tuple[str, ...], ...] = (
    ("spec", "acquireTime"),
    ("spec", "renewTime"),
    ("eventTime",),
    ("series", "lastObservedTime"),
)


def _format_time(value: object, micro: bool) -> str:
    parsed: datetime | None = value if isinstance(value, datetime) else None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(value)
    if parsed is None:
        raise _bad_request(f"invalid timestamp {value!r}: expected RFC 3339")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _normalise_times(obj: Obj) -> None:
    """Rewrite known timestamps as the real server serialises them (in place)."""
    for paths, micro in ((_TIME_FIELDS, False), (_MICRO_TIME_FIELDS, True)):
        for path in paths:
            parent: Any = obj
            for segment in path[:-1]:
                parent = parent.get(segment) if isinstance(parent, dict) else None
            if isinstance(parent, dict) and parent.get(path[-1]) is not None:
                parent[path[-1]] = _format_time(parent[path[-1]], micro)


def _jsonable(value: Any) -> Any:
    """YAML gives datetimes and dates for unquoted timestamps: make them JSON strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return _format_time(value, micro=True)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: Obj = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _bad_request(f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: Obj, ops: list[Any]) -> Obj:
    """RFC 6902 JSON patch (add, remove, replace, test, copy, move)."""
    result: Any = copy.deepcopy(doc)

    def parent_of(parts: list[str]) -> tuple[Any, str]:
        node: Any = result
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node[p]
        return node, parts[-1]

    def get(parts: list[str]) -> Any:
        node: Any = result
        for p in parts:
            node = node[int(p)] if isinstance(node, list) else node[p]
        return node

    def remove(parts: list[str]) -> Any:
        node, last = parent_of(parts)
        return node.pop(int(last)) if isinstance(node, list) else node.pop(last)

    def add(parts: list[str], value: Any) -> None:
        node, last = parent_of(parts)
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), value)
        else:
            node[last] = value

    try:
        for op in ops:
            kind, parts = op["op"], _pointer(op["path"])
            if kind == "add":
                add(parts, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(parts)
            elif kind == "replace":
                get(parts)
                remove(parts)
                add(parts, copy.deepcopy(op["value"]))
            elif kind == "test":
                if get(parts) != op["value"]:
                    raise ApiError(422, "Invalid", f"test operation failed at {op['path']}")
            elif kind in ("copy", "move"):
                source = _pointer(op["from"])
                value = copy.deepcopy(get(source))
                if kind == "move":
                    remove(source)
                add(parts, value)
            else:
                raise _bad_request(f"unknown JSON patch operation {kind!r}")
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ApiError(422, "Invalid", f"the JSON patch could not be applied: {exc!r}") from exc
    if not isinstance(result, dict):
        raise ApiError(422, "Invalid", "the JSON patch did not produce an object")
    return result


def _patch(old: Obj, body: Any, content_type: str) -> Obj:
    if content_type == "application/json-patch+json":
        if not isinstance(body, list):
            raise _bad_request("a JSON patch must be a list of operations")
        return _json_patch(old, body)
    if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
        if not isinstance(body, dict):
            raise _bad_request("a merge patch must be a JSON object")
        result = _merge_patch(copy.deepcopy(old), body)
        assert isinstance(result, dict)
        return result
    raise ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - "
        f"accepted media types include: application/json-patch+json, "
        f"application/merge-patch+json, application/strategic-merge-patch+json "
        f"(got {content_type!r})",
    )


_VERSION: Obj = {
    "major": "1",
    "minor": "34",
    "gitVersion": "v1.34.0-fastingress-emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _root_discovery(root: str) -> Obj:
    """``/api`` (APIVersions) or ``/apis`` (APIGroupList)."""
    if root == "api":
        return {
            "kind": "APIVersions",
            "apiVersion": "v1",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        }
    groups: dict[str, list[str]] = {}
    for res in RESOURCES:
        if res.group and res.version not in groups.setdefault(res.group, []):
            groups[res.group].append(res.version)
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": group,
                "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
                "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]},
            }
            for group, versions in groups.items()
        ],
    }


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str


class ApiServer:
    """The emulator; see the module docstring.  All public methods are thread-safe."""

    def __init__(
        self,
        *,
        bookmark_interval: float = 1.0,
        strict_namespaces: bool = False,
        initial_namespaces: Iterable[str] = _INITIAL_NAMESPACES,
    ) -> None:
        self.bookmark_interval = bookmark_interval
        self.strict_namespaces = strict_namespaces
        self._cond = threading.Condition(threading.RLock())
        self._objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = {r.key: {} for r in RESOURCES}
        self._rv = 0
        self._horizon = 0
        self._history: list[_Event] = []
        self._watches: dict[int, _Watch] = {}
        self._watch_ids = itertools.count(1)
        self._epoch = 0
        self._changes = 0  # bumped (with a notify) on every request, write and watch open/close
        self._down: str | None = None
        self._closed = False
        self._requests: list[RequestRecord] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Called (with the kind, under the server's lock) when a LIST with a continue token
        # arrives, before it is answered: a test's hook to write or compact between pages.
        self.on_continue: Callable[[str], None] | None = None
        for ns in initial_namespaces:
            self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> ApiServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="apiserver", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._changed()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd.close_all_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "ApiServer is not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(
        self, path: Path | str, *, namespace: str = "default", server: str | None = None
    ) -> Path:
        """Write a kubeconfig pointing at this server, or at ``server`` (a relay in front of
        it), with token auth and a dummy token."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": server or self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace},
                }
            ],
            "current-context": "emulator",
        }
        target = Path(path)
        target.write_text(yaml.safe_dump(config))
        return target

    # -- test controls ---------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    @property
    def requests(self) -> list[RequestRecord]:
        with self._cond:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._cond:
            self._requests.clear()

    def compact(self) -> int:
        """Forget the event history up to now; returns the new horizon (the current rv)."""
        with self._cond:
            self._horizon = self._rv
            self._trim_history()
            return self._horizon

    def force_relist(self, *, abrupt: bool = False) -> int:
        """Expire every resourceVersion handed out so far and end every watch, atomically: each
        client's next watch gets 410 Gone, so it must relist.  (Like an API server restart behind
        a load balancer, whose watch cache starts after the clients' positions; ``compact()``
        alone leaves a client that is up to date, e.g. through a bookmark, able to resume.)
        The global resourceVersion moves on by one without an event, as when another resource
        is written.  Returns the new horizon."""
        with self._cond:
            self._bump()
            self._horizon = self._rv
            self._trim_history()
            for w in self._watches.values():
                w.abrupt = abrupt
            self._epoch += 1
            self._changed()
            return self._horizon

    def drop_watches(self, *, abrupt: bool = False) -> None:
        """End every open watch: cleanly (end of the chunked body) or by closing the socket."""
        with self._cond:
            for w in self._watches.values():
                w.abrupt = abrupt
            self._epoch += 1
            self._changed()

    def set_down(self, down: bool, *, mode: str = "503") -> None:
        """Start/end an outage: every request gets 503 (``mode="503"``) or its connection closed
        without an answer (``mode="close"``); open watches are cut abruptly."""
        if mode not in ("503", "close"):
            raise ValueError(f"unknown outage mode {mode!r}")
        with self._cond:
            self._down = mode if down else None
            if down:
                for w in self._watches.values():
                    w.abrupt = True
                self._epoch += 1
            self._changed()

    def watch_count(self, kind: str | None = None) -> int:
        """How many watches are open (for ``kind``, or all)."""
        with self._cond:
            if kind is None:
                return len(self._watches)
            res = self._resolve(kind)
            return sum(1 for w in self._watches.values() if w.selection.res == res)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait until ``predicate()`` is true; returns False on timeout.  The predicate runs
        without the lock (it may call this server over HTTP), again after every request, write
        and watch open/close, and at least every 50 ms."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                seen = self._changes
            if predicate():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._cond:
                if self._changes == seen:
                    self._cond.wait(min(remaining, 0.05))

    def _changed(self) -> None:
        """Record a change and wake watches and ``wait_for`` (lock held)."""
        self._changes += 1
        self._cond.notify_all()

    def apply(self, source: str | Obj | Iterable[Obj]) -> list[Obj]:
        """Create or replace objects (YAML text, multi-document, ``kind: List``, a dict or dicts),
        status included, ignoring resourceVersions; returns the stored objects."""
        if isinstance(source, str):
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            docs: list[Any] = [d for d in yaml.load_all(source, Loader=loader) if d is not None]
        elif isinstance(source, dict):
            docs = [source]
        else:
            docs = list(source)
        objects = list(self._flatten(docs))
        for obj in objects:  # validate everything before writing anything
            self._resource_for(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
            if not (obj.get("metadata") or {}).get("name"):
                raise ValueError(f"{obj.get('kind')} without metadata.name")
        with self._cond:
            return [copy.deepcopy(self._apply_one(obj)) for obj in objects]

    def delete(self, kind: str, namespace: str | None, name: str) -> bool:
        """Delete one object (namespace ignored for cluster-scoped kinds); False if absent."""
        with self._cond:
            res = self._resolve(kind)
            key = ((namespace or "default") if res.namespaced else "", name)
            if key not in self._objects[res.key]:
                return False
            self._delete(res, key)
            return True

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        with self._cond:
            res = self._resolve(kind)
            obj = self._objects[res.key].get(((namespace or "default") if res.namespaced else "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, kind: str) -> list[Obj]:
        """Every stored object of ``kind``, sorted by namespace and name."""
        with self._cond:
            res = self._resolve(kind)
            store = self._objects[res.key]
            return [copy.deepcopy(store[k]) for k in sorted(store)]

    # -- store internals (call with the lock held) -------------------------------------------------

    def _resolve(self, kind: str) -> _Resource:
        """``Ingress``, ``ingresses``, ``networking.k8s.io/Ingress`` or ``events.k8s.io/v1/Event``."""
        group: str | None = None
        name = kind
        if "/" in kind:
            prefix, _, name = kind.rpartition("/")
            group = prefix.split("/")[0]
            group = "" if group == "v1" else group
        for res in RESOURCES:
            if name in (res.kind, res.plural) and (group is None or res.group == group):
                return res
        raise ValueError(f"unknown kind {kind!r}")

    def _resource_for(self, api_version: str, kind: str) -> _Resource:
        group, _, version = api_version.rpartition("/")
        for res in RESOURCES:
            if res.group == group and res.version == version and res.kind == kind:
                return res
        raise ValueError(f"unsupported apiVersion/kind {api_version}/{kind}")

    def _flatten(self, docs: Iterable[Any]) -> Iterator[Obj]:
        for doc in docs:
            if not isinstance(doc, dict):
                raise TypeError(f"not a Kubernetes object: {doc!r:.80}")
            if doc.get("kind") == "List" or (str(doc.get("kind", "")).endswith("List") and "items" in doc):
                yield from self._flatten(doc.get("items") or [])
            else:
                yield doc

    def _apply_one(self, doc: Obj) -> Obj:
        res = self._resource_for(str(doc.get("apiVersion", "")), str(doc.get("kind", "")))
        obj = _jsonable(doc)  # also a deep copy
        try:
            _normalise_times(obj)
        except ApiError as err:
            raise ValueError(f"{res.kind} {obj['metadata'].get('name')}: {err.message}") from None
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            raise ValueError(f"{res.kind} without metadata.name")
        if res.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = (meta.get("namespace", ""), meta["name"])
        old = self._objects[res.key].get(key)
        if old is None:
            return self._create(res, obj)
        return self._store_update(res, old, obj)

    def _bump(self) -> int:
        self._rv += 1
        return self._rv

    def _record(self, event: _Event) -> None:
        self._history.append(event)
        self._changed()

    def _create(self, res: _Resource, obj: Obj) -> Obj:
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["generation"] = 1
        meta.pop("deletionTimestamp", None)
        rv = self._bump()
        meta["resourceVersion"] = str(rv)
        key = (meta.get("namespace", ""), meta["name"])
        self._objects[res.key][key] = obj
        self._record(_Event(rv, res, "ADDED", obj, None))
        return obj

    def _store_update(self, res: _Resource, old: Obj, new: Obj) -> Obj:
        """Store ``new`` in place of ``old`` (a no-op when nothing changed)."""
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        meta = new["metadata"]
        old_meta = old["metadata"]
        meta["uid"] = old_meta["uid"]
        meta["creationTimestamp"] = old_meta["creationTimestamp"]
        meta["generation"] = old_meta.get("generation", 1)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if new == old:
            return old
        if _spec_part(new) != _spec_part(old):
            meta["generation"] = meta["generation"] + 1
        rv = self._bump()
        meta["resourceVersion"] = str(rv)
        key = (meta.get("namespace", ""), meta["name"])
        self._objects[res.key][key] = new
        self._record(_Event(rv, res, "MODIFIED", new, old))
        return new

    def _delete(self, res: _Resource, key: tuple[str, str]) -> Obj:
        old = self._objects[res.key].pop(key)
        if res.kind == "Namespace":
            for other in RESOURCES:
                if other.namespaced:
                    for k in [k for k in self._objects[other.key] if k[0] == key[1]]:
                        self._delete(other, k)
        rv = self._bump()
        gone = {**old, "metadata": {**old["metadata"], "resourceVersion": str(rv)}}
        self._record(_Event(rv, res, "DELETED", gone, old))
        return gone

    def _trim_history(self) -> None:
        keep_from = min([self._horizon, *(w.cursor for w in self._watches.values())])
        cut = bisect.bisect_right(self._history, keep_from, key=lambda e: e.rv)
        del self._history[:cut]

    # -- HTTP request handling ------------------------------------------------------------------------

    def _log_request(self, method: str, path: str, query: dict[str, str]) -> None:
        with self._cond:
            self._requests.append(RequestRecord(method, path, query))
            self._changed()

    def _outage(self) -> str | None:
        with self._cond:
            return self._down

    def _handle(
        self, method: str, path: str, query: dict[str, str], body: Any, content_type: str = "application/json"
    ) -> _Outcome:
        """Route one request; errors become ``Status`` answers."""
        try:
            with self._cond:
                return self._route(_Request(method, path, query, body, content_type))
        except ApiError as err:
            return _Outcome(err.code, err.status())
        except Exception as exc:  # an emulator bug or odd input: answer, never hang the client
            return _Outcome(500, _status_obj(500, "InternalError", f"emulator error: {exc!r}"))

    def _route(self, req: _Request) -> _Outcome:
        method, path, query = req.method, req.path, req.query
        if path in ("/version", "/version/"):
            return _Outcome(200, _VERSION)
        parts = [p for p in path.split("/") if p]
        if parts in (["api"], ["apis"]) and method == "GET":
            return _Outcome(200, _root_discovery(parts[0]))
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _no_such_path()
        in_group = [r for r in RESOURCES if r.group == group and r.version == version]
        if not in_group:
            raise _no_such_path()
        if not rest:
            if method != "GET":
                raise _no_such_path()
            return _Outcome(200, self._discovery(group, version, in_group))
        if rest[0] == "watch":  # deprecated /watch/ paths
            rest = rest[1:]
            req = _Request(method, path, {**query, "watch": "true"}, req.body, req.content_type)
        plurals = {r.plural: r for r in in_group}
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in plurals and plurals[rest[2]].namespaced:
            namespace, rest = rest[1], rest[2:]
        res = plurals.get(rest[0])
        if res is None or len(rest) > 3:
            raise _no_such_path()
        if namespace is None and res.namespaced and len(rest) > 1:
            raise _no_such_path()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (sub == "status" and res.status_subresource):
            raise _no_such_path()
        if name is None:
            return self._collection(req, res, namespace)
        return self._single(req, res, namespace or "", name, sub)

    def _discovery(self, group: str, version: str, resources: list[_Resource]) -> Obj:
        listing: list[Obj] = []
        for r in resources:
            listing.append(
                {
                    "name": r.plural,
                    "singularName": r.kind.lower(),
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                }
            )
            if r.status_subresource:
                listing.append(
                    {
                        "name": f"{r.plural}/status",
                        "singularName": "",
                        "namespaced": r.namespaced,
                        "kind": r.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": listing,
        }

    def _selection(self, res: _Resource, namespace: str | None, query: dict[str, str]) -> _Selection:
        return _Selection(
            res,
            namespace,
            parse_label_selector(query.get("labelSelector", "")),
            parse_field_selector(query.get("fieldSelector", ""), res),
        )

    def _collection(self, req: _Request, res: _Resource, namespace: str | None) -> _Outcome:
        method, query = req.method, req.query
        if method == "GET":
            selection = self._selection(res, namespace, query)
            if query.get("watch", "").lower() in ("true", "1"):
                return _Outcome(200, watch=self._open_watch(selection, query))
            return _Outcome(200, self._list(selection, query))
        if method == "POST":
            if namespace is None and res.namespaced:
                raise ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            return _Outcome(201, self._http_create(res, namespace, req.body))
        if method == "DELETE":
            raise ApiError(405, "MethodNotAllowed", "deletecollection is not supported by the emulator")
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )

    def _list(self, selection: _Selection, query: dict[str, str]) -> Obj:
        rv_text = query.get("resourceVersion", "")
        if query.get("resourceVersionMatch") == "Exact" and rv_text not in ("", "0"):
            requested = self._parse_rv(rv_text)
            if requested < self._horizon:
                raise _expired(requested, self._horizon)
        limit = self._parse_limit(query.get("limit", ""))
        token = query.get("continue", "")
        if token:
            if rv_text:
                raise _bad_request("specifying resource version is not allowed when using continue")
            if self.on_continue is not None:
                self.on_continue(selection.res.kind)
            list_rv, after = _decode_continue(token)
            if list_rv < self._horizon:
                raise ApiError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. "
                    "You can start a new list without the continue parameter.",
                )
            store = self._state_at(selection.res, list_rv)
        else:
            list_rv, after, store = self._rv, None, self._objects[selection.res.key]
        items = []
        last: tuple[str, str] | None = None
        remaining = 0
        for key in sorted(store):
            if after is not None and key <= after:
                continue
            obj = store[key]
            if not selection.matches(obj):
                continue
            if limit and len(items) == limit:
                remaining += 1
                continue
            # the real server omits apiVersion and kind in list items
            items.append({k: v for k, v in obj.items() if k not in ("apiVersion", "kind")})
            last = key
        meta: Obj = {"resourceVersion": str(list_rv)}
        if remaining and last is not None:
            meta["continue"] = _encode_continue(list_rv, last)
            meta["remainingItemCount"] = remaining
        return {
            "apiVersion": selection.res.api_version,
            "kind": f"{selection.res.kind}List",
            "metadata": meta,
            "items": items,
        }

    def _state_at(self, res: _Resource, rv: int) -> dict[tuple[str, str], Obj]:
        """The objects of ``res`` as they were at ``rv`` (history after it, undone)."""
        store = dict(self._objects[res.key])
        for event in reversed(self._history):
            if event.rv <= rv:
                break
            if event.res.key != res.key:
                continue
            meta = event.obj["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            if event.prev is None:
                store.pop(key, None)
            else:
                store[key] = event.prev
        return store

    @staticmethod
    def _parse_limit(text: str) -> int:
        if not text:
            return 0
        try:
            value = int(text)
        except ValueError:
            raise _bad_request(f"invalid limit: {text!r}") from None
        return max(value, 0)

    @staticmethod
    def _parse_rv(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _bad_request(f"invalid resource version: {text!r}") from None
        if value < 0:
            raise _bad_request(f"invalid resource version: {text!r}")
        return value

    def _body_object(self, res: _Resource, namespace: str | None, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise _bad_request("the request body is not a JSON object")
        obj = copy.deepcopy(body)
        _normalise_times(obj)
        if obj.get("kind", res.kind) != res.kind or obj.get("apiVersion", res.api_version) != res.api_version:
            raise _bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) does not match the expected API "
                f"version ({res.api_version}) or kind {obj.get('kind')!r} is not {res.kind!r}"
            )
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        if res.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise _bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return obj

    def _http_create(self, res: _Resource, namespace: str | None, body: Any) -> Obj:
        obj = self._body_object(res, namespace, body)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{secrets.token_hex(3)[:5]}"
        name = meta.get("name")
        if not name or not isinstance(name, str):
            raise ApiError(
                422,
                "Invalid",
                f"{res.kind} is invalid: metadata.name: Required value: name or generateName is required",
                _details(res, ""),
            )
        if meta.get("resourceVersion"):
            raise ApiError(
                422,
                "Invalid",
                f'{res.kind} "{name}" is invalid: metadata.resourceVersion: '
                "Invalid value: must be empty on create",
                _details(res, name),
            )
        if (
            res.namespaced
            and self.strict_namespaces
            and ("", namespace or "") not in self._objects[("", "namespaces")]
        ):
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        key = (meta.get("namespace", ""), name)
        if key in self._objects[res.key]:
            raise ApiError(
                409, "AlreadyExists", f'{res.qualified} "{name}" already exists', _details(res, name)
            )
        for server_field in ("uid", "creationTimestamp", "generation", "deletionTimestamp"):
            meta.pop(server_field, None)
        if res.status_subresource:
            obj.pop("status", None)  # status is written through /status only
        return self._create(res, obj)

    def _single(self, req: _Request, res: _Resource, namespace: str, name: str, sub: str | None) -> _Outcome:
        method, body = req.method, req.body
        key = (namespace, name)
        old = self._objects[res.key].get(key)
        if method == "GET":
            if old is None:
                raise _not_found(res, name)
            return _Outcome(200, old)
        if method == "PUT":
            obj = self._body_object(res, namespace or None, body)
            return _Outcome(200, self._http_replace(res, key, old, obj, sub))
        if method == "PATCH":
            if old is None:
                raise _not_found(res, name)
            patched = _patch(old, body, req.content_type)
            patched_meta = patched.get("metadata")
            if (
                isinstance(patched_meta, dict)
                and patched_meta.get("resourceVersion") == old["metadata"]["resourceVersion"]
            ):
                del patched_meta["resourceVersion"]  # a patch without a resourceVersion is unconditional
            obj = self._body_object(res, namespace or None, patched)
            return _Outcome(200, self._http_replace(res, key, old, obj, sub))
        if method == "DELETE":
            if old is None:
                raise _not_found(res, name)
            pre = body.get("preconditions") if isinstance(body, dict) else None
            pre = pre if isinstance(pre, dict) else {}
            if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
                raise _conflict(res, name)
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise _conflict(res, name)
            gone = self._delete(res, key)
            return _Outcome(
                200,
                _status_obj(
                    200,
                    "",
                    "",
                    {"name": name, "group": res.group, "kind": res.plural, "uid": gone["metadata"]["uid"]},
                ),
            )
        raise ApiError(
            405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
        )

    def _http_replace(
        self, res: _Resource, key: tuple[str, str], old: Obj | None, obj: Obj, sub: str | None
    ) -> Obj:
        name = key[1]
        meta = obj["metadata"]
        if meta.get("name") not in (None, name):
            raise _bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        meta["name"] = name
        if old is None:
            raise _not_found(res, name)
        wanted = meta.get("resourceVersion")
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise _conflict(res, name)
        if sub == "status":
            new = copy.deepcopy(old)
            if "status" in obj:
                new["status"] = obj["status"]
            else:
                new.pop("status", None)
        else:
            new = obj
            if res.status_subresource:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        return self._store_update(res, old, new)

    # -- watches ----------------------------------------------------------------------------------------

    def _open_watch(self, selection: _Selection, query: dict[str, str]) -> _Watch:
        rv_text = query.get("resourceVersion", "")
        timeout = query.get("timeoutSeconds")
        deadline = None
        if timeout:
            try:
                deadline = time.monotonic() + max(0, int(timeout))
            except ValueError:
                raise _bad_request(f"invalid timeoutSeconds: {timeout!r}") from None
        cursor = -1 if rv_text in ("", "0") else self._parse_rv(rv_text)
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        return _Watch(selection, cursor, bookmarks, deadline, self._epoch)

    def _watch_lines(self, w: _Watch) -> Iterator[bytes]:
        """The body of a watch, line by line; ends on timeout, drop, outage or close."""
        with self._cond:
            w.ident = next(self._watch_ids)
            pending: list[Obj] = []
            finished = False
            if w.cursor == -1:
                store = self._objects[w.selection.res.key]
                pending = [
                    {"type": "ADDED", "object": store[k]}
                    for k in sorted(store)
                    if w.selection.matches(store[k])
                ]
                w.cursor = self._rv
            elif w.cursor < self._horizon:
                pending = [{"type": "ERROR", "object": _expired(w.cursor, self._horizon).status()}]
                finished = True
            self._watches[w.ident] = w
            self._changed()
        try:
            for event in pending:
                yield _line(event)
            if finished:
                return
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                with self._cond:
                    pending, finished, next_bookmark = self._next_batch(w, next_bookmark)
                for event in pending:
                    yield _line(event)
                if finished:
                    return
        finally:
            with self._cond:
                self._watches.pop(w.ident, None)
                self._changed()

    def _next_batch(self, w: _Watch, next_bookmark: float) -> tuple[list[Obj], bool, float]:
        """Wait (lock held) for something to send: events, a bookmark, or the end."""
        while True:
            if self._closed or w.epoch != self._epoch:
                return [], True, next_bookmark
            start = bisect.bisect_right(self._history, w.cursor, key=lambda e: e.rv)
            events = [e for e in self._history[start:] if e.res == w.selection.res]
            w.cursor = self._rv
            pending = [ev for ev in (self._event_for(w.selection, e) for e in events) if ev is not None]
            now = time.monotonic()
            if pending:
                return pending, False, next_bookmark
            interval = self.bookmark_interval
            if w.bookmarks and interval > 0 and now >= next_bookmark:
                bookmark = {
                    "type": "BOOKMARK",
                    "object": {
                        "kind": w.selection.res.kind,
                        "apiVersion": w.selection.res.api_version,
                        "metadata": {"resourceVersion": str(self._rv)},
                    },
                }
                return [bookmark], False, now + interval
            if w.deadline is not None and now >= w.deadline:
                return [], True, next_bookmark
            if not w.peer_open():
                return [], True, next_bookmark
            waits = [_IDLE_CHECK]
            if w.deadline is not None:
                waits.append(w.deadline - now)
            if w.bookmarks and interval > 0:
                waits.append(next_bookmark - now)
            self._cond.wait(max(min(waits), 0.001))

    @staticmethod
    def _event_for(selection: _Selection, e: _Event) -> Obj | None:
        now_matches = e.type != "DELETED" and selection.matches(e.obj)
        before = selection.matches(e.prev) if e.type != "ADDED" else False
        if e.type == "DELETED":
            return {"type": "DELETED", "object": e.obj} if before else None
        if now_matches and before:
            return {"type": "MODIFIED", "object": e.obj}
        if now_matches:
            return {"type": "ADDED", "object": e.obj}
        if before:
            prev = e.prev or {}
            gone = {**prev, "metadata": {**(prev.get("metadata") or {}), "resourceVersion": str(e.rv)}}
            return {"type": "DELETED", "object": gone}
        return None


_IDLE_CHECK = 0.2  # how often an idle watch checks that its client is still there


def _line(event: Obj) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


# ----------------------------------------------------------------------------------------------
# HTTP plumbing


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[_Handler], api: ApiServer) -> None:
        self.api = api
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            _hard_close(conn)


def _peer_open(conn: socket.socket) -> bool:
    """False once the client has closed its end (readable with nothing to read) or on error."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return not readable or conn.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


def _hard_close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms delayed-ACK stalls
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        api = self.server.api
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        api._log_request(method, split.path, query)
        raw = self._read_body()
        outage = api._outage()
        if outage == "close":
            self.close_connection = True
            _hard_close(self.connection)
            return
        if outage == "503":
            self._send_json(
                503,
                _status_obj(
                    503,
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request (emulated outage)",
                ),
            )
            return
        try:
            body: Any = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            self._send_json(400, _bad_request("the request body is not valid JSON").status())
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        outcome = api._handle(method, split.path, query, body, content_type)
        if outcome.watch is not None:
            connection = self.connection
            outcome.watch.peer_open = lambda: _peer_open(connection)
            self._stream(api, outcome.watch)
        else:
            self._send_json(outcome.code, outcome.body or {})

    def _send_json(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, api: ApiServer, w: _Watch) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        try:
            for line in api._watch_lines(w):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            if w.abrupt:
                self.close_connection = True
                _hard_close(self.connection)
                return
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
