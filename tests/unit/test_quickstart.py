"""The README quick start and config/examples/README.md run the same command, and what
``--demo`` serves is what the example EndpointSlices point at.  (The command itself runs for
real in tests/e2e/test_operations_e2e.py::test_demo_backends_start_and_stop_with_fastingress,
on free ports.)"""

from __future__ import annotations

import re
import shlex

import yaml

from fastingress.cli import build_parser, standalone_settings
from tests.conftest import REPO

EXAMPLES = REPO / "config" / "examples"


def _standalone_command(markdown: str) -> list[str]:
    lines = re.findall(r"^.*fastingress standalone --demo.*$", markdown, re.MULTILINE)
    assert len(lines) == 1, lines
    argv = shlex.split(lines[0])
    start = next(i for i, word in enumerate(argv) if word.endswith("fastingress"))
    return argv[start + 1 :]


def test_readme_and_examples_readme_agree() -> None:
    readme = _standalone_command((REPO / "README.md").read_text())
    examples = _standalone_command((EXAMPLES / "README.md").read_text())
    assert readme == examples


def test_demo_serves_what_the_examples_point_at() -> None:
    argv = _standalone_command((REPO / "README.md").read_text())
    settings = standalone_settings(build_parser().parse_args(argv))
    assert settings.manifests == ("config/examples",)
    pointed = set()
    for path in EXAMPLES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "EndpointSlice":
                service = doc["metadata"]["labels"]["kubernetes.io/service-name"]
                assert {a for e in doc["endpoints"] for a in e["addresses"]} == {"127.0.0.1"}
                pointed |= {(service, p["port"]) for p in doc["ports"]}
    assert set(settings.demo_backends) == pointed
    assert settings.bind == "127.0.0.1"  # nothing exposed beyond this machine
