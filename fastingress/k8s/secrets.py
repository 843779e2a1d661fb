"""Which Secrets (and ConfigMaps) the controller needs: the ones Ingresses reference, and only those.

Theory of operation
-------------------
A cluster holds many more Secrets than Ingresses reference (service-account tokens, Helm
releases, application credentials: 50,000 is not unusual), and most of them are Opaque, so
a field selector on ``type`` can neither skip them nor find the Opaque ones that annotations
name (``proxy-ssl-secret``, ``auth-secret``, ``auth-tls-secret``).  Instead the controller
lists and watches Secrets with a *keep* filter: each list page and each watch event is
decoded, and everything that is not referenced is dropped on the spot, so memory holds the
referenced Secrets only.

``SecretRefs`` is the reference count behind that filter, kept up to date incrementally from
the Ingresses the controller sees (``set_ingress`` / ``replace``), plus the fixed
``--default-ssl-certificate``.  Every Ingress is counted, ours or not: the set is then
independent of class selection (a class change needs no refetch), at the price of holding
the few Secrets that other controllers' Ingresses name.  Each change reports the references
it added (the controller fetches those it does not hold yet: the watch dropped them while
they were unreferenced) and removed (it forgets those).  ``snapshot`` is an immutable set
rebuilt only when the set of references changes; the informer thread reads it.

ConfigMaps are held the same way (``SecretRefs(refs_of=ingress_configmap_refs)``): a cluster
has one in every namespace at least (``kube-root-ca.crt``), and Ingresses name a few
(``auth-proxy-set-headers``).  Annotations are read under both prefixes, ``fastingress.io/``
as well as ``nginx.ingress.kubernetes.io/``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Obj = Mapping[str, Any]
Ref = tuple[str, str]  # namespace, name
Key = tuple[str, str, str]  # kind, namespace, name (as the Store keys objects)

ANNOTATION_PREFIX = "nginx.ingress.kubernetes.io/"
ANNOTATION_PREFIXES = (ANNOTATION_PREFIX, "fastingress.io/")
SECRET_ANNOTATIONS = ("proxy-ssl-secret", "auth-secret", "auth-tls-secret")
CONFIGMAP_ANNOTATIONS = ("auth-proxy-set-headers", "custom-headers")


def _secret_ref(value: object, namespace: str) -> Ref | None:
    if not isinstance(value, str):
        return None
    text = value.strip()
    space, sep, name = text.partition("/")
    if not sep:
        space, name = namespace, text
    if not space or not name or "/" in name:
        return None
    return (space, name)


def _meta(ingress: Obj) -> tuple[Mapping[str, Any], str]:
    meta = ingress.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    namespace = meta.get("namespace")
    return meta, namespace if isinstance(namespace, str) and namespace else "default"


def _annotation_refs(meta: Mapping[str, Any], namespace: str, names: Iterable[str]) -> set[Ref]:
    refs: set[Ref] = set()
    annotations = meta.get("annotations")
    if isinstance(annotations, Mapping):
        for short in names:
            for prefix in ANNOTATION_PREFIXES:
                ref = _secret_ref(annotations.get(prefix + short), namespace)
                if ref is not None:
                    refs.add(ref)
    return refs


def ingress_configmap_refs(ingress: Obj) -> frozenset[Ref]:
    """The ConfigMaps one Ingress names in annotations (``auth-proxy-set-headers``)."""
    meta, namespace = _meta(ingress)
    return frozenset(_annotation_refs(meta, namespace, CONFIGMAP_ANNOTATIONS))


def ingress_secret_refs(ingress: Obj) -> frozenset[Ref]:
    """The Secrets one Ingress names: ``spec.tls[].secretName`` and the Secret annotations."""
    meta, namespace = _meta(ingress)
    refs: set[Ref] = set()
    spec = ingress.get("spec")
    tls = spec.get("tls") if isinstance(spec, Mapping) else None
    for entry in tls if isinstance(tls, list) else ():
        name = entry.get("secretName") if isinstance(entry, Mapping) else None
        if isinstance(name, str) and name and "/" not in name:
            refs.add((namespace, name))
    refs |= _annotation_refs(meta, namespace, SECRET_ANNOTATIONS)
    return frozenset(refs)


def secret_ref(value: str | None) -> Ref | None:
    """``namespace/name`` (a flag's value) as a reference; None for None."""
    return _secret_ref(value, "") if value else None


class SecretRefs:
    """Reference counts of Secrets (or, with ``refs_of``, ConfigMaps) over all Ingresses."""

    def __init__(
        self, fixed: Iterable[Ref] = (), refs_of: Callable[[Obj], frozenset[Ref]] = ingress_secret_refs
    ) -> None:
        self._refs_of = refs_of
        self._fixed = frozenset(fixed)
        self._by_ingress: dict[Key, frozenset[Ref]] = {}
        self._count: Counter[Ref] = Counter()
        self.snapshot: frozenset[Ref] = self._fixed

    def __contains__(self, ref: object) -> bool:
        return ref in self.snapshot

    def set_ingress(self, key: Key, ingress: Obj | None) -> tuple[set[Ref], set[Ref]]:
        """An Ingress added, changed (``ingress``) or deleted (None): (added, removed) refs."""
        new = self._refs_of(ingress) if ingress is not None else frozenset()
        old = self._by_ingress.pop(key, frozenset())
        if new:
            self._by_ingress[key] = new
        if new == old:
            return set(), set()
        added: set[Ref] = set()
        removed: set[Ref] = set()
        for ref in new - old:
            self._count[ref] += 1
            if self._count[ref] == 1 and ref not in self._fixed:
                added.add(ref)
        for ref in old - new:
            self._count[ref] -= 1
            if self._count[ref] <= 0:
                del self._count[ref]
                if ref not in self._fixed:
                    removed.add(ref)
        if added or removed:
            self.snapshot = self._fixed | frozenset(self._count)
        return added, removed

    def replace(self, ingresses: Iterable[tuple[Key, Obj]]) -> tuple[set[Ref], set[Ref]]:
        """The full set of Ingresses (after a list): (added, removed) refs."""
        before = self.snapshot
        fresh = dict(ingresses)
        for key in [k for k in self._by_ingress if k not in fresh]:
            self.set_ingress(key, None)
        for key, ingress in fresh.items():
            self.set_ingress(key, ingress)
        return set(self.snapshot - before), set(before - self.snapshot)


__all__ = [
    "CONFIGMAP_ANNOTATIONS", "SECRET_ANNOTATIONS", "SecretRefs", "ingress_configmap_refs",
    "ingress_secret_refs", "secret_ref",
]
