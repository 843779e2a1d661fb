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
   the one reused in 3, no Secret changed, the certificates they read load the same
   (re-checked once an hour: expiry warnings depend on the clock), and no backend
   resolution changed between failing and not failing; otherwise each host is reused on
   its own when its claims (rules and plans, compared by value), TLS claim and fallback
   are equal to last time and the same checks pass for its certificates and requests;
5. upstreams: per resolution request (backend, upstream settings, owner), dropped when the
   request's Service or that Service's EndpointSlices changed, or any Secret changed; the
   endpoints of (namespace, Service, port name) likewise.

Indexing itself has a fast path: when the input is a list of the same length as last time
in which a few positions hold new versions of the same objects (kind, namespace, name),
which is what the controller's ``Store`` gives for MODIFIED events (dict order is kept),
only those objects are addressed and the previous index is patched (copy on write: a
Cluster's dicts and lists are never edited once built).  Anything else (adds, deletes,
reorders, duplicates) indexes every object again, each one's addressing still memoised.

An upstream's resolution may read only its Service, that Service's EndpointSlices and
Secrets (``backends.UpstreamBuilder``); if it ever reads more, step 5 must learn about it.
A host's access policies read the Secrets their annotations name (``_Emitter.secrets_read``):
step 4 emits the host again when one of those changed, appeared or went away.

Contract: input objects are values.  A memo recognises an unchanged object by identity
(``is``), so a caller that changes an object must pass a new mapping instead of editing
the old one in place (the controller's ``Store`` replaces objects on every event).
``translate()`` itself does not use this module: a fresh call has nothing to reuse.
One ``Translator`` is used by one thread at a time (a lock enforces it).
"""

from __future__ import annotations

import itertools
import operator
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from fastingress.snapshot.schema import Certificate, Endpoint, Snapshot, Upstream, VirtualHost
from fastingress.translate.access import get, get_map, str_map
from fastingress.translate.annotations import UpstreamSettings
from fastingress.translate.backends import BackendRef, UpstreamBuilder
from fastingress.translate.cluster import SERVICE_NAME_LABEL, Cluster, _collect, _pick
from fastingress.translate.core import _TRANSLATOR, _Emitter, _internal, _merge, _Merged
from fastingress.translate.ingress import IngressPlan, is_ours, parse_ingress
from fastingress.translate.model import Diagnostic, ObjRef, Sink, TranslateOptions, TranslationResult
from fastingress.translate.tls import load_certificate

Obj = Mapping[Any, Any]
Diags = tuple[Diagnostic, ...]
ServiceKey = tuple[str, str]
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
    missing: tuple[tuple[str, str], ...] = ()  # Secrets the host looked for and did not find
    secrets: tuple[tuple[tuple[str, str], object], ...] = ()  # access policies' Secrets, as read


class _Emission(NamedTuple):
    merged: _Merged
    certificate_loads: tuple[tuple[tuple[str, str], _CertMemo], ...]  # what the vhosts read
    vhosts: tuple[VirtualHost, ...]
    certificates: dict[str, Certificate]
    diags: Diags
    groups: dict[ServiceKey, tuple[_Resolved, ...]]  # the vhosts' requests by Service, in order
    upstreams: dict[str, Upstream]  # name -> the first successful request's Upstream
    resolve_diags: dict[ServiceKey, Diags]  # non-empty only


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
    """Translates again and again with the same options, reusing unchanged work."""

    def __init__(self, options: TranslateOptions | None = None) -> None:
        self.options = options if options is not None else TranslateOptions()
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
        self._fast: tuple[set[ServiceKey], bool] | None = None  # what the fast index path changed
        self._services: dict[ServiceKey, Obj] = {}
        self._slices: dict[ServiceKey, list[tuple[ObjRef, Obj]]] = {}
        self._secrets: dict[tuple[str, str], Obj] = {}
        self._classes: dict[str, Obj] = {}
        self._classes_token: object = object()
        self._plans: list[IngressPlan] | None = None
        self._sorted_plans: list[IngressPlan] = []
        self._default_plans: list[IngressPlan] = []
        self._merged: _Merged | None = None
        self._merge_diags: Diags = ()
        self._emission: _Emission | None = None
        self._hosts: dict[str, _HostMemo] = {}
        self._requests: dict[ServiceKey, dict[RequestKey, _Resolved]] = {}
        self._endpoints = EndpointMemo()
        self._certs: dict[tuple[str, str], _CertMemo] = {}
        self._period = 0

    # -- entry point ---------------------------------------------------------------------

    def translate(self, objects: Iterable[Mapping[str, Any]]) -> TranslationResult:
        """Same result as ``translate(objects, self.options)``.  Never raises."""
        with self._lock:
            sink = Sink()
            try:
                snapshot = self._translate(objects, sink)
            except Exception as exc:  # last line of defence, as in translate()
                self._reset()
                _internal(sink, _TRANSLATOR, exc, "translating")
                snapshot = Snapshot(settings=self.options.settings)
            return TranslationResult(snapshot=snapshot, diagnostics=sink.sorted())

    def _translate(self, objects: Iterable[Mapping[str, Any]], sink: Sink) -> Snapshot:
        self._period = int(time.time() // _CERT_PERIOD)
        cluster, ingresses_changed = self._index(objects, sink)
        classes_changed = cluster.classes is not self._classes
        changed_services, secrets_changed = self._invalidate(cluster)
        if ingresses_changed or classes_changed:
            self._plan_list = self._plans_of(cluster)
        for diags in self._plan_diags:
            sink.extend(diags)
        plans = self._plan_list
        merged = self._merge(plans, sink)
        emitter = _Emitter(cluster, self.options, sink)
        emitter.load_cert = self._load_certificate
        emission = self._emit(cluster, merged, changed_services, secrets_changed)
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
            virtual_hosts=emission.vhosts,
            upstreams=tuple(upstreams[name] for name in sorted(upstreams)),
            certificates=tuple(certificates[name] for name in sorted(certificates)),
            default_action=default_action,
            settings=settings,
        )

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
        self._fast = (services, any(ref.kind == "Secret" for ref, _, _ in updates))
        return cluster

    def _apply(self, previous: Cluster, updates: list[tuple[ObjRef, Obj, Obj]]) -> Cluster:
        cluster = Cluster()
        cluster.ingresses = previous.ingresses
        cluster.classes = previous.classes
        cluster.services = previous.services
        cluster.secrets = previous.secrets
        cluster.slices = previous.slices
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
            else:
                if cluster.slices is previous.slices:
                    cluster.slices = dict(previous.slices)
                _move_slice(cluster.slices, ref, old, new)
        return cluster

    def _invalidate(self, cluster: Cluster) -> tuple[set[ServiceKey], bool]:
        """Drop the memos that read a changed Service, EndpointSlice or Secret.  The cluster's
        dicts are never edited once built (the fast path copies before it changes one), so
        keeping references to them is enough to diff against next time."""
        if self._fast is not None:
            changed, secrets_changed = self._fast
        else:
            changed = _same_items(self._services, cluster.services)
            old_slices, new_slices = self._slices, cluster.slices
            changed.update(k for k, v in new_slices.items() if not _same_slices(old_slices.get(k), v))
            changed.update(k for k in old_slices if k not in new_slices)
            secrets_changed = bool(_same_items(self._secrets, cluster.secrets))
        if cluster.classes is not self._classes and _same_items(self._classes, cluster.classes):
            self._classes_token = object()
        self._services = cluster.services
        self._slices = cluster.slices
        self._secrets = cluster.secrets
        self._classes = cluster.classes
        if secrets_changed:
            self._requests.clear()
        for key in changed:
            self._requests.pop(key, None)
        self._endpoints.drop(changed)
        return changed, secrets_changed

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
                self._plan(memo, ref, ingress, self.options.unsafe_fail_open)
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
            memo.ours = is_ours(ref, ingress, cluster, self.options, sub)
        except Exception as exc:
            _internal(sub, ref, exc, "reading this Ingress")
            memo.ours = False
        memo.ours_diags = sub.sorted()

    @staticmethod
    def _plan(memo: _IngressMemo, ref: ObjRef, ingress: Obj, fail_open: bool) -> None:
        sub = Sink()
        try:
            memo.plan = parse_ingress(ref, ingress, sub, fail_open=fail_open)
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
        secrets_changed: bool,
    ) -> _Emission:
        old = self._emission
        reusable = old is not None and old.merged is merged and not secrets_changed
        if old is not None and reusable and self._same_certificates(cluster, old):
            reused = self._refresh(cluster, old, changed)
            if reused is not None:
                return reused
        hosts: dict[str, _HostMemo] = {}
        vhosts: list[VirtualHost] = []
        requests: list[_Resolved] = []
        loads: dict[tuple[str, str], _CertMemo] = {}
        certificates: dict[str, Certificate] = {}
        diags: list[Diagnostic] = []
        for host in sorted(merged.hosts):
            claims = tuple(merged.routes.get(host, {}).values())
            key = (claims, merged.tls.get(host), merged.fallbacks.get(host))
            memo = self._hosts.get(host)
            fresh = None if memo is None or memo.key != key else self._revalidate(cluster, memo)
            if memo is None or fresh is None:
                memo = self._emit_host(cluster, merged, host, key)
                fresh = list(memo.requests)
            hosts[host] = memo
            vhosts.append(memo.vhost)
            requests.extend(fresh)
            loads.update(memo.loads)
            certificates.update(memo.certificates)
            diags.extend(memo.diags)
        self._hosts = hosts
        groups = _grouped(requests)
        self._requests = {  # forget requests no longer made (deleted Ingresses)
            service: {resolved.key: resolved for resolved in group} for service, group in groups.items()
        }
        upstreams: dict[str, Upstream] = {}
        resolve_diags: dict[ServiceKey, Diags] = {}
        for service, group in groups.items():
            group_upstreams, group_diags = _group_result(group)
            upstreams.update(group_upstreams)
            if group_diags:
                resolve_diags[service] = group_diags
        self._emission = _Emission(
            merged, tuple(loads.items()), tuple(vhosts), certificates, tuple(diags), groups, upstreams,
            resolve_diags,
        )
        return self._emission

    def _emit_host(self, cluster: Cluster, merged: _Merged, host: str, key: object) -> _HostMemo:
        """One virtual host, its resolution requests, certificate loads and diagnostics."""
        sub = Sink()
        recorder = _Recorder(self, cluster)
        emitter = _Emitter(cluster, self.options, sub)
        emitter.builder = recorder  # type: ignore[assignment]
        loads: dict[tuple[str, str], _CertMemo] = {}

        def load(cluster: Cluster, namespace: str, name: str, sink: Sink) -> Certificate | None:
            memo = loads[(namespace, name)] = self._certificate(cluster, namespace, name)
            sink.extend(memo.diags)
            return memo.certificate

        emitter.load_cert = load
        vhost = emitter.virtual_host(host, merged)
        missing: tuple[tuple[str, str], ...] = ()
        claim = merged.tls.get(host)
        if claim is not None and (claim[1].ref.namespace, claim[0]) not in cluster.secrets:
            missing = ((claim[1].ref.namespace, claim[0]),)  # "Secret not found": no load to memoise
        return _HostMemo(
            key, vhost, tuple(recorder.requests), tuple(loads.items()), emitter.certificates, sub.sorted(),
            missing, tuple(emitter.secrets_read.items()),
        )

    def _revalidate(self, cluster: Cluster, memo: _HostMemo) -> list[_Resolved] | None:
        """The host's requests resolved now, if its vhost is still what it was (the same
        requests fail as before, its certificates load the same, the Secrets it missed are
        still missing); else None."""
        if any(secret in cluster.secrets for secret in memo.missing):
            return None
        if any(cluster.secrets.get(key) is not seen for key, seen in memo.secrets):
            return None  # a Secret of an access policy (auth-secret, auth-tls-secret) changed
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
        builder = MemoBuilder(cluster, sub, self._endpoints)
        name = ""
        error: Exception | None = None
        try:
            name = builder.resolve(backend, settings, owner)
        except Exception as exc:
            error = exc
        upstream = builder.upstreams.get(name) if error is None else None
        resolved = _Resolved(key, service, name, upstream, error, sub.sorted())
        memo[key] = resolved
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

    def _same_certificates(self, cluster: Cluster, old: _Emission) -> bool:
        """Whether the certificates the vhosts read still load the same (a new period
        re-reads them; usually nothing changed and the vhosts are kept)."""
        for (namespace, name), before in old.certificate_loads:
            now = self._certificate(cluster, namespace, name)
            if now is not before and (now.certificate != before.certificate or now.diags != before.diags):
                return False
        return True


__all__ = ["Translator"]
