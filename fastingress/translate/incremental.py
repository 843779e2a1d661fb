"""Incremental translation: a ``Translator`` remembers work across calls, so that one small
change (an EndpointSlice flipping, one Ingress edited) costs little with 10,000 Ingresses.

Theory of operation
-------------------
``Translator(options).translate(objects)`` returns exactly what ``translate(objects, options)``
returns (the tests compare the JSON bytes and the diagnostics), by running the same steps
as ``core._translate`` with a memo in front of each one.  Every memo entry keeps the input
objects it was computed from and the diagnostics it produced (replayed on a hit; the sink
is a set, so order does not matter):

1. addressing: per input object (recognised by identity, the object kept alive in the entry);
2. class selection (``is_ours``): per Ingress object, redone when any IngressClass changed;
   the Ingress's plan (``parse_ingress``): per Ingress object;
3. merge: reused when the list of plans is the same (same plan objects, same order);
4. virtual hosts (routes, TLS, passthrough): all of them reused when the merge result is
   the one reused in 3 and no backend resolution changed between failing and not failing;
   a host that looked up a changed Secret (found or not: every lookup of ``cluster.secrets``
   while emitting it is recorded) is emitted again on its own, and so is one whose
   certificates load differently in a new hour (expiry warnings depend on the clock).
   Otherwise each host is reused on its own when its claims (rules and plans, compared by
   value), TLS claim and fallback are equal to last time and the same checks pass for its
   certificates and requests;
5. upstreams: per resolution request (backend, upstream settings, owner), dropped when the
   request's Service or that Service's EndpointSlices changed, or a Secret it looked up
   changed (recorded likewise: ``proxy-ssl-secret``); the endpoints of (namespace, Service,
   port name) when the Service or its slices changed.  So one changed Secret redoes only
   the hosts and resolutions that read it (10,000 Ingresses: ~24 ms instead of ~490 ms).

Indexing itself has a fast path: when the input is a list of the same length as last time
in which a few positions hold new versions of the same objects (kind, namespace, name),
which is what the controller's ``Store`` gives for MODIFIED events (dict order is kept),
only those objects are addressed and the previous index is patched (copy on write: a
Cluster's dicts and lists are never edited once built).  Anything else (adds, deletes,
reorders, duplicates) indexes every object again, each one's addressing still memoised.

An upstream's resolution may read only its Service, that Service's EndpointSlices and
Secrets (``backends.UpstreamBuilder``); if it ever reads more, step 5 must learn about it.
Secrets are looked up through ``get``, ``in`` or ``[]``; iterating them is recorded as
reading them all (any Secret change then redoes that host or resolution).  ConfigMaps
(``auth-proxy-set-headers``) are recorded the same way, in the same set of keys: a changed
ConfigMap redoes the hosts that looked up that namespace/name (a Secret of the same name
too, which is merely redundant work).

Contract: input objects are values.  A memo recognises an unchanged object by identity
(``is``), so a caller that changes an object must pass a new mapping instead of editing
the old one in place (the controller's ``Store`` replaces objects on every event).
``translate()`` itself does not use this module: a fresh call has nothing to reuse.
One ``Translator`` is used by one thread at a time (a lock enforces it).
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from fastingress.snapshot.schema import Certificate, Endpoint, Snapshot, Upstream, VirtualHost
from fastingress.translate import extra_hosts
from fastingress.translate.access import get, get_map, str_map
from fastingress.translate.annotations import UpstreamSettings
from fastingress.translate.backends import BackendRef, UpstreamBuilder
from fastingress.translate.cluster import SERVICE_NAME_LABEL, Cluster, _collect, _pick
from fastingress.translate.configmap import ConfigMemory, configure
from fastingress.translate.core import _TRANSLATOR, _Emitter, _internal, _merge, _Merged
from fastingress.translate.ingress import IngressPlan, is_ours, parse_ingress
from fastingress.translate.model import Diagnostic, ObjRef, Sink, TranslateOptions, TranslationResult
from fastingress.translate.tls import load_certificate

Obj = Mapping[Any, Any]
Diags = tuple[Diagnostic, ...]
ServiceKey = tuple[str, str]
SecretKey = tuple[str, str]
ANY_SECRET: SecretKey = ("", "*")  # read by iterating the Secrets: any change concerns it
CONFIGMAP = "configmap:"  # ConfigMaps (custom-headers) are tracked as Secrets ("configmap:<ns>", name)
SecretReads = frozenset[SecretKey]
RequestKey = tuple[BackendRef, UpstreamSettings, ObjRef]
_MAX_CHANGES = 256  # more changed objects than this: index everything again
_CERT_PERIOD = 3600.0  # seconds a certificate's (clock-dependent) diagnostics are reused


class _Addressed(NamedTuple):
    obj: object
    pairs: tuple[tuple[ObjRef, Obj], ...]
    diags: Diags


class _IngressMemo:
    __slots__ = ("classes", "obj", "ours", "ours_diags", "plan", "plan_diags", "planned")

    def __init__(self, obj: Obj) -> None:
        self.obj = obj
        self.classes: object = None  # the class state ``ours`` was computed under
        self.ours = False
        self.ours_diags: Diags = ()
        self.planned = False
        self.plan: IngressPlan | None = None
        self.plan_diags: Diags = ()


class _Resolved(NamedTuple):
    key: RequestKey
    service: ServiceKey
    name: str
    upstream: Upstream | None
    error: Exception | None
    diags: Diags
    secrets: SecretReads = frozenset()  # the Secrets the resolution looked up


class _CertMemo(NamedTuple):
    secret: object
    period: int
    certificate: Certificate | None
    diags: Diags


class _HostMemo(NamedTuple):
    key: object  # the host's claims, TLS claim and fallback (plans compared by value)
    vhost: VirtualHost
    requests: tuple[_Resolved, ...]
    loads: tuple[tuple[tuple[str, str], _CertMemo], ...]
    certificates: dict[str, Certificate]
    diags: Diags
    secrets: SecretReads = frozenset()  # the Secrets emitting the host looked up


class _Emission(NamedTuple):
    period: int  # the certificate period the hosts were checked in
    merged: _Merged
    vhosts: tuple[VirtualHost, ...]
    certificates: dict[str, Certificate]
    diags: Diags
    groups: dict[ServiceKey, tuple[_Resolved, ...]]  # the vhosts' requests by Service, in order
    upstreams: dict[str, Upstream]  # name -> the first successful request's Upstream
    resolve_diags: dict[ServiceKey, Diags]  # non-empty only


class _SecretLookups(Mapping[SecretKey, Obj]):
    """``cluster.secrets`` as seen by one host's emission or one resolution: records which
    Secrets were looked up (present or not), so that a changed Secret redoes only them."""

    def __init__(
        self, secrets: Mapping[SecretKey, Obj], read: set[SecretKey] | None = None, tag: str = ""
    ) -> None:
        self._secrets = secrets
        self.read: set[SecretKey] = set() if read is None else read
        self._tag = tag  # CONFIGMAP: the same records, for ConfigMaps

    def _record(self, key: SecretKey) -> None:
        self.read.add((self._tag + key[0], key[1]) if self._tag else key)

    def __getitem__(self, key: SecretKey) -> Obj:
        self._record(key)
        return self._secrets[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, tuple):
            self._record(key)
        return key in self._secrets

    def get(self, key: SecretKey, default: Any = None) -> Any:
        self._record(key)
        return self._secrets.get(key, default)

    def __iter__(self) -> Iterator[SecretKey]:
        self.read.add(ANY_SECRET)
        return iter(self._secrets)

    def __len__(self) -> int:
        self.read.add(ANY_SECRET)
        return len(self._secrets)


def _recording(cluster: Cluster) -> tuple[Cluster, _SecretLookups]:
    """A Cluster sharing ``cluster``'s (never edited) contents, whose Secrets (and ConfigMaps)
    record lookups."""
    lookups = _SecretLookups(cluster.secrets)
    view = Cluster()
    view.ingresses, view.classes, view.services, view.slices = (
        cluster.ingresses, cluster.classes, cluster.services, cluster.slices
    )
    view.secrets = lookups  # type: ignore[assignment]  # read-only use: get / in / []
    view.configmaps = _SecretLookups(cluster.configmaps, lookups.read, CONFIGMAP)  # type: ignore[assignment]
    return view, lookups


def _configmap_keys(keys: Iterable[tuple[str, str]]) -> set[SecretKey]:
    return {(CONFIGMAP + namespace, name) for namespace, name in keys}


def _grouped(requests: list[_Resolved]) -> dict[ServiceKey, tuple[_Resolved, ...]]:
    groups: dict[ServiceKey, list[_Resolved]] = {}
    for resolved in requests:
        group = groups.get(resolved.service)
        if group is None:
            groups[resolved.service] = [resolved]
        else:
            group.append(resolved)
    return {key: tuple(group) for key, group in groups.items()}


def _group_result(group: tuple[_Resolved, ...]) -> tuple[dict[str, Upstream], Diags]:
    """A group's upstreams (first success per name wins, as ``UpstreamBuilder.resolve``) and
    diagnostics.  Upstream names embed namespace/Service, so groups never share a name."""
    upstreams: dict[str, Upstream] = {}
    diags: list[Diagnostic] = []
    for resolved in group:
        if resolved.upstream is not None:
            upstreams.setdefault(resolved.name, resolved.upstream)
        diags.extend(resolved.diags)
    return upstreams, tuple(diags)


class EndpointMemo:
    """Endpoints of (namespace, Service, port name) with their diagnostics, across calls."""

    def __init__(self) -> None:
        self.entries: dict[ServiceKey, dict[str, tuple[tuple[Endpoint, ...], Diags]]] = {}

    def drop(self, services: set[ServiceKey]) -> None:
        for service in services:
            self.entries.pop(service, None)


class MemoBuilder(UpstreamBuilder):
    """An ``UpstreamBuilder`` whose endpoint lookups go through an ``EndpointMemo``."""

    def __init__(self, cluster: Cluster, sink: Sink, memo: EndpointMemo) -> None:
        super().__init__(cluster, sink)
        self._memo = memo

    def _endpoints(self, namespace: str, service: str, port_name: str) -> tuple[Endpoint, ...]:
        ports = self._memo.entries.setdefault((namespace, service), {})
        hit = ports.get(port_name)
        if hit is None:
            sink, sub = self._sink, Sink()
            self._sink = sub
            try:
                endpoints = self._collect_endpoints(namespace, service, port_name)
            finally:
                self._sink = sink
            hit = (endpoints, sub.sorted())
            ports[port_name] = hit
        self._sink.extend(hit[1])
        return hit[0]


class _Recorder:
    """Stands in for ``UpstreamBuilder`` in ``_Emitter``: resolves through the memo, records."""

    def __init__(self, translator: Translator, cluster: Cluster) -> None:
        self._translator = translator
        self._cluster = cluster
        self.requests: list[_Resolved] = []
        self.upstreams: dict[str, Upstream] = {}  # unused: the Translator assembles upstreams

    def resolve(self, backend: BackendRef, settings: UpstreamSettings, owner: ObjRef) -> str:
        resolved = self._translator._resolve(self._cluster, (backend, settings, owner))
        self.requests.append(resolved)
        if resolved.error is not None:
            raise resolved.error.with_traceback(None)
        return resolved.name


def _same_items(old: Mapping[Any, object], new: Mapping[Any, object]) -> set[Any]:
    """Keys whose value is not the same object in both mappings."""
    changed = {key for key, value in new.items() if old.get(key) is not value}
    changed.update(key for key in old if key not in new)
    return changed


def _slice_service(obj: Obj) -> str:
    service = str_map(get(get_map(obj, "metadata"), "labels")).get(SERVICE_NAME_LABEL)
    return service if isinstance(service, str) else ""


def _move_slice(slices: dict[ServiceKey, list[tuple[ObjRef, Obj]]], ref: ObjRef, old: Obj, new: Obj) -> None:
    """Replace EndpointSlice ``old`` by ``new`` (lists are copied, never edited in place)."""
    before, after = _slice_service(old), _slice_service(new)
    if before:
        key = (ref.namespace, before)
        kept = [pair for pair in slices.get(key, ()) if pair[1] is not old]
        if kept:
            slices[key] = kept
        else:
            slices.pop(key, None)
    if after:
        key = (ref.namespace, after)
        slices[key] = sorted([*slices.get(key, ()), (ref, new)], key=lambda pair: pair[0])


def _same_slices(old: list[tuple[ObjRef, Obj]] | None, new: list[tuple[ObjRef, Obj]]) -> bool:
    return old is new or (
        old is not None and len(old) == len(new) and all(a[1] is b[1] for a, b in zip(old, new, strict=True))
    )


class Translator:
    """Translates again and again with the same options, reusing unchanged work.  A change of
    the controller ConfigMap (``options.configmap``) changes the options themselves: then
    everything is translated afresh (rare, and it must be: every route may depend on it)."""

    def __init__(self, options: TranslateOptions | None = None) -> None:
        self.options = options if options is not None else TranslateOptions()
        self._options = self.options  # with the controller ConfigMap applied (``_configured``)
        self.memory = ConfigMemory()  # the ConfigMap's last good values (see translate())
        self._configured_from: dict[tuple[str, str], Obj] | None = None  # what ``_options`` was made of
        self._configmap_diags: Diags = ()
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._addressed: dict[int, _Addressed] = {}
        self._index_diags: dict[int, Diags] = {}
        self._pick_diags: Diags = ()
        self._duplicated: set[ObjRef] = set()
        self._positions: dict[ObjRef, int] = {}
        self._last: list[object] = []
        self._cluster = Cluster()
        self._ingresses_changed = True
        self._plan_list: list[IngressPlan] = []
        self._plan_diags: list[Diags] = []
        self._ingresses: dict[int, _IngressMemo] = {}
        self._fast: tuple[set[ServiceKey], set[SecretKey]] | None = None  # what the fast path changed
        self._services: dict[ServiceKey, Obj] = {}
        self._slices: dict[ServiceKey, list[tuple[ObjRef, Obj]]] = {}
        self._secrets: dict[tuple[str, str], Obj] = {}
        self._configmaps: dict[tuple[str, str], Obj] = {}
        self._extra: tuple[object, object, object, tuple[VirtualHost, ...]] | None = None  # extra_hosts memo
        self._classes: dict[str, Obj] = {}
        self._classes_token: object = object()
        self._plans: list[IngressPlan] | None = None
        self._sorted_plans: list[IngressPlan] = []
        self._default_plans: list[IngressPlan] = []
        self._merged: _Merged | None = None
        self._merge_diags: Diags = ()
        self._emission: _Emission | None = None
        self._hosts: dict[str, _HostMemo] = {}
        self._host_positions: dict[str, int] = {}  # host -> index in the emitted vhosts
        self._secret_hosts: dict[SecretKey, set[str]] = {}  # Secret -> hosts that looked it up
        self._cert_users: dict[str, int] = {}  # certificate name -> hosts that emitted it
        self._diag_count: dict[Diagnostic, int] = {}  # diagnostic -> hosts that emitted it
        # Secret -> the memoised resolutions that looked it up (service, request)
        self._secret_requests: dict[SecretKey, set[tuple[ServiceKey, RequestKey]]] = {}
        self._requests: dict[ServiceKey, dict[RequestKey, _Resolved]] = {}
        self._endpoints = EndpointMemo()
        self._certs: dict[tuple[str, str], _CertMemo] = {}
        self._period = 0

    # -- entry point ---------------------------------------------------------------------

    def translate(self, objects: Iterable[Mapping[str, Any]]) -> TranslationResult:
        """Same result as ``translate(objects, self.options, memory)`` with ``memory`` what
        ``self.memory`` was before the call.  Never raises."""
        with self._lock:
            sink = Sink()
            try:
                snapshot = self._translate(objects, sink)
            except Exception as exc:  # last line of defence, as in translate()
                self._reset()
                _internal(sink, _TRANSLATOR, exc, "translating")
                snapshot = Snapshot(settings=self._options.settings)
            return TranslationResult(snapshot=snapshot, diagnostics=sink.sorted())

    def _translate(self, objects: Iterable[Mapping[str, Any]], sink: Sink) -> Snapshot:
        self._period = int(time.time() // _CERT_PERIOD)
        if not isinstance(objects, list):
            with contextlib.suppress(TypeError):  # (not a list of objects: _index says so)
                objects = list(objects)  # (indexed twice when the ConfigMap changes the options)
        cluster, ingresses_changed = self._index(objects, sink)
        options = self._configured(cluster)
        sink.extend(self._configmap_diags)
        if options != self._options:  # everything downstream depends on them: start over
            self._reset()
            self._options = options
            cluster, ingresses_changed = self._index(objects, sink)
        classes_changed = cluster.classes is not self._classes
        changed_services, changed_secrets = self._invalidate(cluster)
        if ingresses_changed or classes_changed:
            self._plan_list = self._plans_of(cluster)
        for diags in self._plan_diags:
            sink.extend(diags)
        plans = self._plan_list
        merged = self._merge(plans, sink)
        emitter = _Emitter(cluster, self._options, sink)
        emitter.load_cert = self._load_certificate
        emission = self._emit(cluster, merged, changed_services, changed_secrets)
        sink.extend(emission.diags)
        recorder = _Recorder(self, cluster)
        emitter.builder = recorder  # type: ignore[assignment]
        emitter.certificates = dict(emission.certificates)
        default_action = emitter.default_action(self._default_plans)
        settings = emitter.settings()
        upstreams = dict(emission.upstreams)
        for diags in emission.resolve_diags.values():
            sink.extend(diags)
        for resolved in recorder.requests:  # after the vhosts' ones, as in core._translate
            if resolved.diags:
                sink.extend(resolved.diags)
            if resolved.upstream is not None:
                upstreams.setdefault(resolved.name, resolved.upstream)
        certificates = emitter.certificates
        return Snapshot(
            virtual_hosts=self._with_extra_hosts(emission, merged),
            upstreams=tuple(upstreams[name] for name in sorted(upstreams)),
            certificates=tuple(certificates[name] for name in sorted(certificates)),
            default_action=default_action,
            settings=settings,
        )

    def _configured(self, cluster: Cluster) -> TranslateOptions:
        """The options with the controller ConfigMap applied; redone only when a ConfigMap
        changed (the memory of last good values is updated then, and only then)."""
        before = self._configured_from
        now = cluster.configmaps
        if now is before or (before is not None and not _same_items(before, now)):
            self._configured_from = cluster.configmaps
            return self._options
        sub = Sink()
        options = configure(cluster.configmaps, self.options, sub, self.memory)
        self._configured_from = cluster.configmaps
        self._configmap_diags = sub.sorted()
        return options

    def _with_extra_hosts(self, emission: _Emission, merged: _Merged) -> tuple[VirtualHost, ...]:
        """``extra_hosts.emit`` (aliases, www redirects), the same tuple while nothing changed."""
        memo = self._extra
        if memo is not None and memo[0] is emission.vhosts and memo[1] is merged.extra \
                and memo[2] is emission.certificates:
            return memo[3]
        vhosts = extra_hosts.emit(emission.vhosts, merged.extra, emission.certificates)
        self._extra = (emission.vhosts, merged.extra, emission.certificates, vhosts)
        return vhosts

    # -- 1. addressing -------------------------------------------------------------------

    def _address(self, obj: object) -> _Addressed:
        entry = self._addressed.get(id(obj))
        if entry is not None and entry.obj is obj:
            return entry
        local: dict[ObjRef, list[Obj]] = {}
        sub = Sink()
        _collect([obj], sub, local, 0)
        pairs = tuple((ref, copy) for ref, copies in local.items() for copy in copies)
        return _Addressed(obj, pairs, sub.sorted())

    def _index(self, objects: Iterable[object], sink: Sink) -> tuple[Cluster, bool]:
        """``cluster.index_objects``, memoised; also whether any Ingress may have changed."""
        items = objects if isinstance(objects, list) else None
        if items is not None:
            cluster = self._index_changes(items)
            if cluster is not None:
                ingresses_changed = self._ingresses_changed
            else:
                cluster = self._index_all(items)
                ingresses_changed = True
        else:
            cluster = self._index_all(objects)
            ingresses_changed = True
        for diags in self._index_diags.values():
            sink.extend(diags)
        sink.extend(self._pick_diags)
        return cluster, ingresses_changed

    def _index_all(self, objects: Iterable[object]) -> Cluster:
        """Every object again (each one's addressing memoised).  Ingresses stay in input
        order: plans are sorted by age, a total order, so that order never shows."""
        self._fast = None
        addressed: dict[int, _Addressed] = {}
        found: dict[ObjRef, list[Obj]] = {}
        seen: list[object] = []
        self._index_diags = {}
        try:
            for obj in objects:
                seen.append(obj)
                entry = self._address(obj)
                addressed[id(obj)] = entry
                if entry.diags:
                    self._index_diags[id(obj)] = entry.diags
                for ref, copy in entry.pairs:
                    copies = found.get(ref)
                    if copies is None:
                        found[ref] = [copy]
                    else:
                        copies.append(copy)
        except TypeError:
            what = "input is not a list of objects; nothing translated"
            self._index_diags[0] = (Diagnostic("error", "Unknown", "", "<input>", "", what),)
            seen = []  # never diffed against
        self._addressed = addressed
        self._last = seen
        pick = Sink()
        cluster = Cluster()
        positions: dict[ObjRef, int] = {}
        for ref, copies in found.items():
            obj = copies[0] if len(copies) == 1 else _pick(ref, copies, pick)
            kind = ref.kind
            if kind == "Ingress":
                positions[ref] = len(cluster.ingresses)
                cluster.ingresses.append((ref, obj))
            elif kind == "IngressClass":
                cluster.classes[ref.name] = obj
            elif kind == "Service":
                cluster.services[(ref.namespace, ref.name)] = obj
            elif kind == "Secret":
                cluster.secrets[(ref.namespace, ref.name)] = obj
            elif kind == "ConfigMap":
                cluster.configmaps[(ref.namespace, ref.name)] = obj
            else:  # EndpointSlice
                service = _slice_service(obj)
                if service:
                    cluster.slices.setdefault((ref.namespace, service), []).append((ref, obj))
        for slices in cluster.slices.values():
            if len(slices) > 1:
                slices.sort(key=lambda pair: pair[0])
        cluster.classes = dict(sorted(cluster.classes.items()))
        self._pick_diags = pick.sorted()
        self._duplicated = {ref for ref, copies in found.items() if len(copies) > 1}
        self._positions = positions
        self._cluster = cluster
        return cluster

    def _index_changes(self, items: list[object]) -> Cluster | None:
        """The fast path: the input list is the previous one with a few objects replaced by
        new versions of themselves (same kind, namespace and name).  None: not that case."""
        last = self._last
        if len(items) != len(last) or not last:
            return None
        flags = list(map(operator.is_not, items, last))
        changed = list(itertools.compress(range(len(items)), flags))
        if len(changed) > _MAX_CHANGES:
            return None
        updates: list[tuple[ObjRef, Obj, Obj]] = []
        for i in changed:
            old = self._addressed.get(id(last[i]))
            new = self._address(items[i])
            if old is None or len(old.pairs) != 1 or len(new.pairs) != 1:
                return None
            ref = new.pairs[0][0]
            if old.pairs[0][0] != ref or ref in self._duplicated:
                return None
            updates.append((ref, old.pairs[0][1], new.pairs[0][1]))
        for i in changed:  # commit: from here on the memo describes ``items``
            old_id = id(last[i])
            del self._addressed[old_id]
            self._index_diags.pop(old_id, None)
            entry = self._address(items[i])
            self._addressed[id(items[i])] = entry
            if entry.diags:
                self._index_diags[id(items[i])] = entry.diags
        self._last = list(items)
        self._cluster = cluster = self._apply(self._cluster, updates)
        self._ingresses_changed = any(ref.kind == "Ingress" for ref, _, _ in updates)
        services: set[ServiceKey] = set()
        for ref, old_obj, new_obj in updates:
            if ref.kind == "Service":
                services.add((ref.namespace, ref.name))
            elif ref.kind == "EndpointSlice":
                labels = (_slice_service(old_obj), _slice_service(new_obj))
                services.update((ref.namespace, service) for service in labels if service)
        secrets = {(ref.namespace, ref.name) for ref, _, _ in updates if ref.kind == "Secret"}
        secrets |= _configmap_keys(
            (ref.namespace, ref.name) for ref, _, _ in updates if ref.kind == "ConfigMap"
        )
        self._fast = (services, secrets)
        return cluster

    def _apply(self, previous: Cluster, updates: list[tuple[ObjRef, Obj, Obj]]) -> Cluster:
        cluster = Cluster()
        cluster.ingresses = previous.ingresses
        cluster.classes = previous.classes
        cluster.services = previous.services
        cluster.secrets = previous.secrets
        cluster.configmaps = previous.configmaps
        cluster.slices = previous.slices
        cluster.configmaps = previous.configmaps
        for ref, old, new in updates:
            key = (ref.namespace, ref.name)
            if ref.kind == "Ingress":
                if cluster.ingresses is previous.ingresses:
                    cluster.ingresses = list(previous.ingresses)
                cluster.ingresses[self._positions[ref]] = (ref, new)
            elif ref.kind == "IngressClass":
                cluster.classes = {**cluster.classes, ref.name: new}
            elif ref.kind == "Service":
                cluster.services = {**cluster.services, key: new}
            elif ref.kind == "Secret":
                cluster.secrets = {**cluster.secrets, key: new}
            elif ref.kind == "ConfigMap":
                cluster.configmaps = {**cluster.configmaps, key: new}
            else:
                if cluster.slices is previous.slices:
                    cluster.slices = dict(previous.slices)
                _move_slice(cluster.slices, ref, old, new)
        return cluster

    def _invalidate(self, cluster: Cluster) -> tuple[set[ServiceKey], set[SecretKey]]:
        """Drop the memos that read a changed Service, EndpointSlice or Secret; return the
        Services whose resolutions must be redone and the changed Secrets.  The cluster's
        dicts are never edited once built (the fast path copies before it changes one), so
        keeping references to them is enough to diff against next time."""
        if self._fast is not None:
            changed, secrets = self._fast
        else:
            changed = _same_items(self._services, cluster.services)
            old_slices, new_slices = self._slices, cluster.slices
            changed.update(k for k, v in new_slices.items() if not _same_slices(old_slices.get(k), v))
            changed.update(k for k in old_slices if k not in new_slices)
            secrets = _same_items(self._secrets, cluster.secrets)
            secrets |= _configmap_keys(_same_items(self._configmaps, cluster.configmaps))
        if cluster.classes is not self._classes and _same_items(self._classes, cluster.classes):
            self._classes_token = object()
        self._services = cluster.services
        self._slices = cluster.slices
        self._secrets = cluster.secrets
        self._configmaps = cluster.configmaps
        self._classes = cluster.classes
        self._endpoints.drop(changed)
        for service in changed:
            self._requests.pop(service, None)
        if secrets:  # only the resolutions that looked one of them up
            readers = set(self._secret_requests.get(ANY_SECRET, ()))
            for secret in secrets:
                readers.update(self._secret_requests.pop(secret, ()))
            for service, request in readers:
                memo = self._requests.get(service)
                if memo is not None and memo.pop(request, None) is not None:
                    changed.add(service)
        return changed, secrets

    # -- 2. plans ------------------------------------------------------------------------

    def _plans_of(self, cluster: Cluster) -> list[IngressPlan]:
        memos: dict[int, _IngressMemo] = {}
        plans: list[IngressPlan] = []
        diags: list[Diags] = []
        token = self._classes_token
        for ref, ingress in cluster.ingresses:
            memo = self._ingresses.get(id(ingress))
            if memo is None or memo.obj is not ingress:
                memo = _IngressMemo(ingress)
            memos[id(ingress)] = memo
            if memo.classes is not token:
                self._select(memo, ref, ingress, cluster)
                memo.classes = token
            if memo.ours_diags:
                diags.append(memo.ours_diags)
            if not memo.ours:
                continue
            if not memo.planned:
                self._plan(memo, ref, ingress, self._options)
            if memo.plan_diags:
                diags.append(memo.plan_diags)
            if memo.plan is not None:
                plans.append(memo.plan)
        self._ingresses = memos
        self._plan_diags = diags
        return plans

    def _select(self, memo: _IngressMemo, ref: ObjRef, ingress: Obj, cluster: Cluster) -> None:
        sub = Sink()
        try:
            memo.ours = is_ours(ref, ingress, cluster, self._options, sub)
        except Exception as exc:
            _internal(sub, ref, exc, "reading this Ingress")
            memo.ours = False
        memo.ours_diags = sub.sorted()

    @staticmethod
    def _plan(memo: _IngressMemo, ref: ObjRef, ingress: Obj, options: TranslateOptions) -> None:
        sub = Sink()
        try:
            memo.plan = parse_ingress(
                ref, ingress, sub, fail_open=options.unsafe_fail_open, defaults=options.annotation_defaults
            )
        except Exception as exc:
            _internal(sub, ref, exc, "reading this Ingress")
            memo.plan = None
        memo.plan_diags = sub.sorted()
        memo.planned = True

    # -- 3. merge ------------------------------------------------------------------------

    def _merge(self, plans: list[IngressPlan], sink: Sink) -> _Merged:
        if self._merged is None or plans != self._plans:
            self._plans = plans
            self._sorted_plans = sorted(plans, key=lambda p: p.age)
            # default_action() uses the oldest plan that has a defaultBackend: only that one
            self._default_plans = [
                p for p in self._sorted_plans if p.default_backend is not None and not p.annotations.canary
            ][:1]
            sub = Sink()
            self._merged = _merge(self._sorted_plans, sub)
            self._merge_diags = sub.sorted()
        sink.extend(self._merge_diags)
        return self._merged

    # -- 4. virtual hosts ----------------------------------------------------------------

    def _emit(
        self,
        cluster: Cluster,
        merged: _Merged,
        changed: set[ServiceKey],
        secrets: set[SecretKey],
    ) -> _Emission:
        old = self._emission
        stale = self._hosts_reading(secrets)
        if old is not None and old.merged is merged:
            if old.period != self._period:  # once an hour: expiry diagnostics depend on the clock
                stale |= self._hosts_with_new_certificates(cluster)
            patched = self._reemit(cluster, old, stale) if stale else old
            if patched is not None:
                self._emission = patched
                reused = self._refresh(cluster, patched, changed)
                if reused is not None:
                    return reused
        hosts: dict[str, _HostMemo] = {}
        vhosts: list[VirtualHost] = []
        requests: list[_Resolved] = []
        for host in sorted(merged.hosts):
            claims = tuple(merged.routes.get(host, {}).values())
            canaries = tuple(merged.canaries.get(host, {}).values())
            key = (claims, merged.tls.get(host), merged.fallbacks.get(host), canaries)
            memo = self._hosts.get(host)
            same = memo is not None and memo.key == key and host not in stale
            fresh = self._revalidate(cluster, memo) if memo is not None and same else None
            if memo is None or fresh is None:
                memo = self._emit_host(cluster, merged, host, key)
                fresh = list(memo.requests)
            hosts[host] = memo
            vhosts.append(memo.vhost)
            requests.extend(fresh)
        self._hosts = hosts
        self._host_positions = {host: i for i, host in enumerate(hosts)}
        self._secret_hosts = {}
        for host, memo in hosts.items():
            for secret in memo.secrets:
                self._secret_hosts.setdefault(secret, set()).add(host)
        groups = _grouped(requests)
        self._requests = {  # forget requests no longer made (deleted Ingresses)
            service: {resolved.key: resolved for resolved in group} for service, group in groups.items()
        }
        self._secret_requests = {}
        for service, group in groups.items():
            for resolved in group:
                for secret in resolved.secrets:
                    self._secret_requests.setdefault(secret, set()).add((service, resolved.key))
        upstreams: dict[str, Upstream] = {}
        resolve_diags: dict[ServiceKey, Diags] = {}
        for service, group in groups.items():
            group_upstreams, group_diags = _group_result(group)
            upstreams.update(group_upstreams)
            if group_diags:
                resolve_diags[service] = group_diags
        certificates: dict[str, Certificate] = {}
        self._cert_users = {}
        self._diag_count = {}
        for memo in hosts.values():
            self._count_host(memo, certificates, +1)
        self._emission = _Emission(
            self._period, merged, tuple(vhosts), certificates, tuple(self._diag_count), groups, upstreams,
            resolve_diags,
        )
        return self._emission

    def _count_host(self, memo: _HostMemo, certificates: dict[str, Certificate], sign: int) -> None:
        """Add (+1) or take away (-1) one host's certificates and diagnostics in the totals of
        every host (the union of what the hosts emitted: a Sink is a set)."""
        for name, certificate in memo.certificates.items():
            users = self._cert_users.get(name, 0) + sign
            if users > 0:
                self._cert_users[name] = users
                certificates[name] = certificate  # the same Secret loads the same Certificate
            else:
                self._cert_users.pop(name, None)
                certificates.pop(name, None)
        for diagnostic in memo.diags:
            count = self._diag_count.get(diagnostic, 0) + sign
            if count > 0:
                self._diag_count[diagnostic] = count
            else:
                self._diag_count.pop(diagnostic, None)

    def _hosts_reading(self, secrets: set[SecretKey]) -> set[str]:
        """The hosts whose emission looked up one of ``secrets`` (or iterated them all)."""
        if not secrets:
            return set()
        found = set(self._secret_hosts.get(ANY_SECRET, ()))
        for secret in secrets:
            found.update(self._secret_hosts.get(secret, ()))
        return found

    def _hosts_with_new_certificates(self, cluster: Cluster) -> set[str]:
        """The hosts whose certificates load differently now (a new period re-reads them;
        usually nothing changed)."""
        stale: set[str] = set()
        for host, memo in self._hosts.items():
            for (namespace, name), before in memo.loads:
                now = self._certificate(cluster, namespace, name)
                if now is not before and (now.certificate != before.certificate or now.diags != before.diags):
                    stale.add(host)
                    break
        return stale

    def _reemit(self, cluster: Cluster, old: _Emission, stale: set[str]) -> _Emission | None:
        """``old`` with the virtual hosts of ``stale`` emitted again (a Secret they read
        changed); None if one of them now makes other requests (emit everything again)."""
        vhosts = list(old.vhosts)
        certificates = dict(old.certificates)
        for host in sorted(stale):
            before = self._hosts.get(host)
            position = self._host_positions.get(host)
            if before is None or position is None:
                return None
            memo = self._emit_host(cluster, old.merged, host, before.key)
            if [r.key for r in memo.requests] != [r.key for r in before.requests]:
                return None
            self._hosts[host] = memo
            vhosts[position] = memo.vhost
            self._count_host(before, certificates, -1)
            self._count_host(memo, certificates, +1)
            for secret in before.secrets - memo.secrets:
                self._secret_hosts.get(secret, set()).discard(host)
            for secret in memo.secrets - before.secrets:
                self._secret_hosts.setdefault(secret, set()).add(host)
        return old._replace(
            period=self._period, vhosts=tuple(vhosts), certificates=certificates,
            diags=tuple(self._diag_count),
        )

    def _emit_host(self, cluster: Cluster, merged: _Merged, host: str, key: object) -> _HostMemo:
        """One virtual host, its resolution requests, certificate loads, diagnostics and the
        Secrets it looked up."""
        sub = Sink()
        recorder = _Recorder(self, cluster)  # each resolution records its own lookups
        view, lookups = _recording(cluster)
        emitter = _Emitter(view, self._options, sub)
        emitter.builder = recorder  # type: ignore[assignment]
        loads: dict[tuple[str, str], _CertMemo] = {}

        def load(cluster: Cluster, namespace: str, name: str, sink: Sink) -> Certificate | None:
            memo = loads[(namespace, name)] = self._certificate(cluster, namespace, name)
            sink.extend(memo.diags)
            return memo.certificate

        emitter.load_cert = load
        vhost = emitter.virtual_host(host, merged)
        return _HostMemo(
            key, vhost, tuple(recorder.requests), tuple(loads.items()), emitter.certificates, sub.sorted(),
            frozenset(lookups.read),
        )

    def _revalidate(self, cluster: Cluster, memo: _HostMemo) -> list[_Resolved] | None:
        """The host's requests resolved now, if its vhost is still what it was (the same
        requests fail as before, its certificates load the same); else None.  (A host that
        looked up a changed Secret, found or not, is emitted again before this is asked.)"""
        for (namespace, name), loaded in memo.loads:
            now = self._certificate(cluster, namespace, name)
            if now is not loaded and (now.certificate != loaded.certificate or now.diags != loaded.diags):
                return None
        fresh = [self._resolve(cluster, resolved.key) for resolved in memo.requests]
        for before, after in zip(memo.requests, fresh, strict=True):
            if type(before.error) is not type(after.error):
                return None
        return fresh

    def _refresh(self, cluster: Cluster, old: _Emission, changed: set[ServiceKey]) -> _Emission | None:
        """``old`` with the requests of changed Services resolved again; None if one of them
        changed between failing and not failing (the routes would differ: emit again)."""
        touched = [service for service in changed if service in old.groups]
        if not touched:
            return old
        groups = dict(old.groups)
        upstreams = dict(old.upstreams)
        resolve_diags = dict(old.resolve_diags)
        for service in touched:
            group = tuple(self._resolve(cluster, resolved.key) for resolved in old.groups[service])
            for before, after in zip(old.groups[service], group, strict=True):
                if type(before.error) is not type(after.error):
                    return None
            groups[service] = group
            for name in {resolved.name for resolved in group}:
                upstreams.pop(name, None)
            group_upstreams, diags = _group_result(group)
            upstreams.update(group_upstreams)
            resolve_diags.pop(service, None)
            if diags:
                resolve_diags[service] = diags
        self._emission = old._replace(groups=groups, upstreams=upstreams, resolve_diags=resolve_diags)
        return self._emission

    # -- 5. upstreams and certificates ---------------------------------------------------

    def _resolve(self, cluster: Cluster, key: RequestKey) -> _Resolved:
        backend, settings, owner = key
        service = (backend.namespace, backend.service)
        memo = self._requests.get(service)
        if memo is None:
            memo = self._requests[service] = {}
        resolved = memo.get(key)
        if resolved is not None:
            return resolved
        sub = Sink()
        view, lookups = _recording(cluster)
        builder = MemoBuilder(view, sub, self._endpoints)
        name = ""
        error: Exception | None = None
        try:
            name = builder.resolve(backend, settings, owner)
        except Exception as exc:
            error = exc
        upstream = builder.upstreams.get(name) if error is None else None
        resolved = _Resolved(key, service, name, upstream, error, sub.sorted(), frozenset(lookups.read))
        memo[key] = resolved
        for secret in resolved.secrets:
            self._secret_requests.setdefault(secret, set()).add((service, key))
        return resolved

    def _certificate(self, cluster: Cluster, namespace: str, name: str) -> _CertMemo:
        """``load_certificate``, memoised per Secret object for the current period (its
        diagnostics depend on the clock: expired, not yet valid)."""
        secret = cluster.secrets.get((namespace, name))
        memo = self._certs.get((namespace, name))
        if memo is None or memo.secret is not secret or memo.period != self._period:
            sub = Sink()
            certificate = load_certificate(cluster, namespace, name, sub)
            memo = _CertMemo(secret, self._period, certificate, sub.sorted())
            self._certs[(namespace, name)] = memo
        return memo

    def _load_certificate(
        self, cluster: Cluster, namespace: str, name: str, sink: Sink
    ) -> Certificate | None:
        memo = self._certificate(cluster, namespace, name)
        sink.extend(memo.diags)
        return memo.certificate


__all__ = ["Translator"]
