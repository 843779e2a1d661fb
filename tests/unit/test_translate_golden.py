"""Golden translation tests: tests/golden/<case>.yaml -> tests/golden/<case>.json.

See tests/golden/README.md for the file format; ``pytest --update-golden`` rewrites the
expected files (review the diff before committing).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fastingress.manifests import load_manifests
from fastingress.snapshot.codec import decode_json, encode_json
from fastingress.translate import TranslateOptions, translate
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))
OPTIONS_MARKER = "# translate-options:"


def _options(path: Path) -> TranslateOptions:
    """An optional comment line ``# translate-options: {json}`` sets TranslateOptions."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(OPTIONS_MARKER):
            return msgspec.json.decode(line.removeprefix(OPTIONS_MARKER).strip(), type=TranslateOptions)
    return TranslateOptions()


def render(path: Path) -> str:
    objects, file_diagnostics = load_manifests([str(path)])
    assert file_diagnostics == [], file_diagnostics
    result = translate(objects, _options(path))
    document: dict[str, Any] = {
        "snapshot": json.loads(encode_json(result.snapshot)),
        "diagnostics": [str(d) for d in result.diagnostics],
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 12


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, update_golden: bool) -> None:
    source = GOLDEN / f"{case}.yaml"
    expected_path = GOLDEN / f"{case}.json"
    actual = render(source)
    # The snapshot part must decode as a Snapshot (the workers' view of it).
    decode_json(json.dumps(json.loads(actual)["snapshot"]))
    if update_golden:
        expected_path.write_text(actual, encoding="utf-8")
        return
    assert expected_path.exists(), f"{expected_path.name} missing: run pytest --update-golden"
    expected = expected_path.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                f"{case}.json (expected)",
                f"{case}.json (actual)",
            )
        )
        pytest.fail(f"golden mismatch for {case} (pytest --update-golden to accept):\n{diff}")


@pytest.mark.parametrize("case", CASES)
def test_golden_is_independent_of_object_order(case: str) -> None:
    source = GOLDEN / f"{case}.yaml"
    objects, _ = load_manifests([str(source)])
    options = _options(source)
    forward = translate(objects, options)
    backward = translate(list(reversed(objects)), options)
    assert encode_json(forward.snapshot) == encode_json(backward.snapshot)
    assert forward.diagnostics == backward.diagnostics
