"""Property tests: the translator never raises on mangled input and its output does not
depend on the order of the input objects."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastingress.manifests import load_manifests
from fastingress.snapshot.codec import decode_json, encode_json
from fastingress.translate import TranslateOptions, TranslationResult, translate
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden"
SEED_FILES = [
    GOLDEN / name
    for name in (
        "seed-frontend-and-external-api.yaml",
        "named-ports.yaml",
        "tls.yaml",
        "default-backend.yaml",
        "ingress-class.yaml",
        "endpoint-conditions.yaml",
        "annotations.yaml",
        "legacy-v1beta1.yaml",
    )
]


def _load(path: Path) -> list[dict[str, Any]]:
    objects, _ = load_manifests([str(path)])
    return objects


BASES = [_load(p) for p in SEED_FILES]
INTERESTING = [
    "", "/", "*", "*.", "Exact", "Prefix", "ImplementationSpecific", "ExternalName", "IPv4", "IPv6",
    "FQDN", "80", "http", "true", "0", "20m", "HTTPS", "kubernetes.io/tls", "List", "Ingress",
    "Service", "EndpointSlice", "Secret", "IngressClass", "default", "a/b", "10.0.0.1", "::1",
    "fastingress", "nginx", "nginx.ingress.kubernetes.io/proxy-body-size",
    "fastingress.io/ingress-controller",
]  # fmt: skip
KEYS = [
    "kind", "metadata", "name", "namespace", "spec", "rules", "host", "http", "paths", "path",
    "pathType", "backend", "service", "port", "number", "tls", "hosts", "secretName", "ports",
    "endpoints", "addresses", "conditions", "labels", "annotations", "data", "items", "type",
    "externalName", "defaultBackend", "ingressClassName", "controller", "addressType",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(INTERESTING)
)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6) | st.integers(), inner, max_size=4)
    ),
    max_leaves=8,
)


def _paths(node: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_paths(value, (*prefix, index)))
    return found


def _mutate(objects: list[Any], data: st.DataObject) -> list[Any]:
    root: list[Any] = copy.deepcopy(objects)
    for _ in range(data.draw(st.integers(min_value=1, max_value=6), label="mutations")):
        if not root:
            break
        # pick an object first, then a place inside it, so small objects get mangled too
        index = data.draw(st.integers(min_value=0, max_value=len(root) - 1), label="object")
        paths = [(index, *p) for p in _paths(root[index])]
        target = data.draw(st.sampled_from(paths), label="path")
        parent: Any = root
        for step in target[:-1]:
            parent = parent[step]
        action = data.draw(st.sampled_from(["replace", "delete", "duplicate"]), label="action")
        last = target[-1]
        if action == "delete":
            del parent[last]
        elif action == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
        else:
            parent[last] = data.draw(junk, label="value")
    if data.draw(st.booleans(), label="add junk objects"):
        root.extend(data.draw(st.lists(junk, max_size=3), label="junk objects"))
    return root


def _check(result: TranslationResult) -> None:
    decode_json(encode_json(result.snapshot))
    for d in result.diagnostics:
        assert "internal error" not in d.message, str(d)
        assert d.kind and d.name, str(d)


OPTIONS = st.builds(
    TranslateOptions,
    ingress_class=st.sampled_from(["fastingress", "nginx", ""]),
    watch_without_class=st.booleans(),
    default_backend_service=st.none() | st.sampled_from(["shop/frontend", "bad", "/", "web/blog", ""]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), base=st.sampled_from(BASES), options=OPTIONS)
def test_mangled_objects_never_raise(data: st.DataObject, base: list[Any], options: TranslateOptions) -> None:
    objects = _mutate(base, data)
    result = translate(objects, options)
    _check(result)
    shuffled = data.draw(st.permutations(objects), label="order")
    again = translate(shuffled, options)
    assert encode_json(again.snapshot) == encode_json(result.snapshot)
    assert again.diagnostics == result.diagnostics


@settings(max_examples=100, deadline=None)
@given(objects=st.lists(junk, max_size=6))
def test_arbitrary_values_never_raise(objects: list[Any]) -> None:
    _check(translate(objects))


@given(value=junk)
def test_non_iterable_input_never_raises(value: Any) -> None:
    _check(translate(value))


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_order_independence_of_valid_input(data: st.DataObject) -> None:
    objects = [obj for base in BASES for obj in base]
    shuffled = data.draw(st.permutations(objects))
    assert encode_json(translate(shuffled).snapshot) == encode_json(translate(objects).snapshot)


SWEEP_VALUES: list[Any] = [None, 7, "x", [{}], {"": None}]


def test_every_single_field_replaced_never_raises() -> None:
    """Exhaustive: each place in each seed file, replaced by each odd value, one at a time."""
    translations = 0
    for base in BASES:
        for target in _paths(base):
            if not target:
                continue
            for value in SWEEP_VALUES:
                mangled = copy.deepcopy(base)
                parent: Any = mangled
                for step in target[:-1]:
                    parent = parent[step]
                parent[target[-1]] = value
                _check(translate(mangled))
                translations += 1
    assert translations > 1000
