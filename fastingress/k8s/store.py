"""The controller's copy of the cluster: objects keyed by (kind, namespace, name).

Pure and synchronous.  ``apply`` and ``replace`` return whether anything translation can
see changed, so the controller rebuilds only on real changes: an update with the same
resourceVersion, or whose content is identical once the fields that change on every write
(resourceVersion, managedFields, and an Ingress's own status, which we write ourselves)
are dropped, is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str, str]  # kind, namespace ("" for cluster-scoped), name

_VOLATILE_META = ("resourceVersion", "managedFields", "generation")


def key_of(kind: str, obj: Obj) -> Key | None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    namespace = meta.get("namespace")
    return (kind, namespace if isinstance(namespace, str) else "", name)


def resource_version(obj: Obj) -> str:
    meta = obj.get("metadata")
    value = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else ""


def essence(kind: str, obj: Obj) -> Obj:
    """What translation sees of ``obj``: without the fields that change on every write."""
    out = dict(obj)
    meta = out.get("metadata")
    if isinstance(meta, dict):
        out["metadata"] = {k: v for k, v in meta.items() if k not in _VOLATILE_META}
    if kind == "Ingress":
        out.pop("status", None)
    return out


class Store:
    """Objects by key; ``version`` counts the changes translation can see."""

    def __init__(self) -> None:
        self._objects: dict[Key, Obj] = {}
        self.version = 0

    def __len__(self) -> int:
        return len(self._objects)

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self._objects.get((kind, namespace, name))

    def objects(self) -> list[Obj]:
        return list(self._objects.values())

    def of_kind(self, kind: str) -> Iterator[Obj]:
        return (obj for key, obj in self._objects.items() if key[0] == kind)

    def _put(self, key: Key, obj: Obj) -> bool:
        old = self._objects.get(key)
        if old is not None and resource_version(old) and resource_version(old) == resource_version(obj):
            return False  # the same version again (a relist, the echo of our own write)
        self._objects[key] = obj
        if old is None:
            return True
        kind = key[0]
        return essence(kind, old) != essence(kind, obj)

    def apply(self, kind: str, event_type: str, obj: Obj) -> bool:
        """One watch event (ADDED/MODIFIED/DELETED); True if translation may see a change."""
        key = key_of(kind, obj)
        if key is None:
            return False
        if event_type == "DELETED":
            changed = self._objects.pop(key, None) is not None
        else:
            obj.setdefault("kind", kind)
            changed = self._put(key, obj)
        if changed:
            self.version += 1
        return changed

    def replace(self, kind: str, objects: Iterable[Obj]) -> bool:
        """A full list of ``kind`` (after a relist): add, update and delete to match it."""
        fresh: dict[Key, Obj] = {}
        for obj in objects:
            key = key_of(kind, obj)
            if key is not None:
                fresh[key] = obj
        changed = False
        for key in [k for k in self._objects if k[0] == kind and k not in fresh]:
            del self._objects[key]
            changed = True
        for key, obj in fresh.items():
            changed = self._put(key, obj) or changed
        if changed:
            self.version += 1
        return changed
