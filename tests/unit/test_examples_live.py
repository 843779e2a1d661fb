"""config/examples end to end: the curl commands of config/examples/README.md, through a real
``fastingress standalone`` to real demo backends (``python -m fastingress.demo``), on 127.0.0.1.

The example EndpointSlices name fixed ports (9001-9003); the test copies the manifests with the
ports the demo backends actually got, so it never collides with anything on the machine.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.support.process import Fastingress, run_fastingress

from ..conftest import REPO

EXAMPLES = REPO / "config" / "examples"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def backend_ports() -> Iterator[dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastingress.demo",
         "--backend", "frontend=0", "--backend", "api=0", "--backend", "docs=0"],
        cwd=REPO, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        ports = {}
        for _ in range(3):  # "demo backend NAME listening on http://127.0.0.1:PORT", once bound
            line = proc.stderr.readline()
            assert " listening on " in line, line
            ports[line.split()[2]] = int(line.rsplit(":", 1)[1])
        yield ports
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _with_ports(document: dict[str, Any], ports: dict[str, int]) -> dict[str, Any]:
    if document.get("kind") == "EndpointSlice":
        service = document["metadata"]["labels"]["kubernetes.io/service-name"]
        document["ports"][0]["port"] = ports[service]
    return document


@pytest.fixture(scope="module")
def proxy(backend_ports: dict[str, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fastingress]:
    folder = tmp_path_factory.mktemp("examples")
    for path in sorted(EXAMPLES.glob("*.yaml")):
        documents = [_with_ports(doc, backend_ports) for doc in yaml.safe_load_all(path.read_text())]
        (folder / path.name).write_text(yaml.safe_dump_all(documents))
    with run_fastingress(folder, manifests=[folder], workers=1) as fi:
        yield fi


@pytest.mark.parametrize(
    ("host", "path", "backend"),
    [
        ("demo.localhost", "/", "frontend"),
        ("demo.localhost", "/shop/cart?id=7", "frontend"),
        ("demo.localhost", "/api/x", "api"),
        ("demo.localhost", "/api", "api"),
        ("demo.localhost", "/apix", "frontend"),
        ("demo.localhost", "/docs", "docs"),
        ("demo.localhost", "/docs/intro", "frontend"),
        ("guide.apps.localhost", "/anything", "docs"),
        ("a.b.apps.localhost", "/", "frontend"),
        ("unknown.example", "/whatever", "frontend"),
    ],
)
def test_readme_routes(proxy: Fastingress, host: str, path: str, backend: str) -> None:
    response = httpx.get(f"{proxy.base}{path}", headers={"Host": host}, timeout=10)
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["backend"] == backend
    assert info["path"] == path.partition("?")[0]
    assert info["headers"]["host"] == host


def test_proxy_body_size_applies_to_api_only(proxy: Fastingress) -> None:
    body = b"\0" * (5 * MIB)
    headers = {"Host": "demo.localhost"}
    api = httpx.post(f"{proxy.base}/api/upload", content=body, headers=headers, timeout=30)
    assert api.status_code == 200
    assert api.json()["body_bytes"] == len(body)
    root = httpx.post(f"{proxy.base}/upload", content=body, headers=headers, timeout=30)
    assert root.status_code == 413

