"""Every real-world manifest of the shared corpus loads and translates without raising,
deterministically, and with diagnostics that name their object."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastingress.manifests import load_manifests, manifest_files
from fastingress.snapshot.codec import decode_json, encode_json
from fastingress.translate import Diagnostic, TranslateOptions, translate
from fastingress.translate.model import CLUSTER_SCOPED_KINDS
from tests.conftest import SHARED

CORPUS = SHARED / "corpus" / "ingress-manifests"
FILES = manifest_files([str(CORPUS)]) if CORPUS.is_dir() else []
# Standalone defaults, plus controller mode with the class most of the corpus uses.
OPTIONS = (TranslateOptions(), TranslateOptions(ingress_class="nginx", watch_without_class=False))

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")


def _check_names(diagnostics: list[Diagnostic] | tuple[Diagnostic, ...]) -> None:
    for d in diagnostics:
        assert d.kind, d
        assert d.name, d
        assert d.namespace or d.kind in CLUSTER_SCOPED_KINDS, d
        assert "internal error" not in d.message, d
        assert str(d).startswith(f"{d.severity} {d.kind} "), d


def test_corpus_is_there() -> None:
    assert len(FILES) >= 100


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CORPUS)) for p in FILES])
def test_corpus_file_translates(path: Path) -> None:
    objects, file_diagnostics = load_manifests([str(path)])
    assert objects, "every corpus file holds at least one object"
    _check_names(file_diagnostics)
    for options in OPTIONS:
        first = translate(objects, options)
        again = translate(objects, options)
        backward = translate(list(reversed(objects)), options)
        data = encode_json(first.snapshot)
        assert data == encode_json(again.snapshot) == encode_json(backward.snapshot)
        assert first.diagnostics == again.diagnostics == backward.diagnostics
        assert list(first.diagnostics) == sorted(first.diagnostics, key=Diagnostic.sort_key)
        decode_json(data)  # a worker can read it
        _check_names(first.diagnostics)


def test_whole_corpus_at_once() -> None:
    """All files as one cluster: cross-file merging and duplicates stay deterministic."""
    objects, _ = load_manifests([str(CORPUS)])
    for options in OPTIONS:
        forward = translate(objects, options)
        backward = translate(list(reversed(objects)), options)
        assert encode_json(forward.snapshot) == encode_json(backward.snapshot)
        assert forward.diagnostics == backward.diagnostics
        _check_names(forward.diagnostics)
    nginx = translate(objects, OPTIONS[1])
    assert len(nginx.snapshot.virtual_hosts) > 20  # the corpus is mostly class "nginx"
