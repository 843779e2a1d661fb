"""Type-safe reads from untrusted, dict-shaped Kubernetes objects.

Every getter returns ``None`` when the key is missing *or* holds a value of the wrong
type, so callers never index blindly into user data.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any


def as_map(value: object) -> Mapping[Any, Any] | None:
    if type(value) is dict:  # the common case, much cheaper than the ABC check
        return value
    return value if isinstance(value, Mapping) else None


def as_list(value: object) -> Sequence[Any] | None:
    if isinstance(value, (list, tuple)):
        return value
    return None


def get(obj: object, key: str) -> object:
    if type(obj) is dict:
        return obj.get(key)
    m = as_map(obj)
    if m is None:
        return None
    try:
        return m.get(key)
    except TypeError:  # unhashable weirdness in a custom mapping
        return None


def get_map(obj: object, key: str) -> Mapping[Any, Any] | None:
    return as_map(get(obj, key))


def get_list(obj: object, key: str) -> Sequence[Any] | None:
    return as_list(get(obj, key))


def get_str(obj: object, key: str) -> str | None:
    value = get(obj, key)
    return value if isinstance(value, str) else None


def as_int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def get_int(obj: object, key: str) -> int | None:
    return as_int(get(obj, key))


def get_bool(obj: object, key: str, default: bool) -> bool:
    value = get(obj, key)
    return value if isinstance(value, bool) else default


def timestamp_key(value: object) -> str:
    """creationTimestamp as a sortable RFC 3339 string; missing or odd values sort first ("")."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dt.date):
        return value.strftime("%Y-%m-%dT00:00:00Z")
    if isinstance(value, str):
        return value
    return ""


def str_map(value: object) -> dict[str, object]:
    """A mapping restricted to its string keys (annotations, labels, data)."""
    m = as_map(value)
    if m is None:
        return {}
    return {k: v for k, v in m.items() if isinstance(k, str)}


def canonical(value: object, budget: list[int] | None = None, depth: int = 0) -> str:
    """A deterministic text form of any parsed YAML value (dict keys sorted).

    Bounded in depth and size, so recursive or alias-bomb YAML cannot hang it.
    """
    if budget is None:
        budget = [20_000]
    budget[0] -= 1
    if budget[0] < 0 or depth > 32:
        return "..."
    if isinstance(value, Mapping):
        try:
            items = list(value.items())
        except Exception:
            return "{?}"
        parts = sorted(
            f"{canonical(k, budget, depth + 1)}:{canonical(v, budget, depth + 1)}" for k, v in items
        )
        return "{" + ",".join(parts) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canonical(v, budget, depth + 1) for v in value) + "]"
    try:
        text = repr(value)
    except Exception:
        text = "?"
    return f"{type(value).__name__}:{text[:1000]}"


def secret_text(secret: object, key: str) -> str | None:
    """A Secret's value as text: ``stringData`` wins over base64 ``data`` (as the API server
    merges them); None if absent or not valid base64/ASCII."""
    plain = str_map(get(secret, "stringData")).get(key)
    if isinstance(plain, str):
        return plain
    encoded = str_map(get(secret, "data")).get(key)
    if not isinstance(encoded, str):
        return None
    try:
        return base64.b64decode("".join(encoded.split()), validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        return None
