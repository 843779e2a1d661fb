"""Locust scenarios over the example manifests (config/examples) served by fastingress.

Run headless, with one command (fastingress and the demo backends running, see loadtests/README.md):

    locust -f loadtests/locustfile.py --headless -u 50 -r 10 -t 30s --host http://127.0.0.1:8080

``--host`` may be left out: the target then comes from $FASTINGRESS_URL (default http://127.0.0.1:8080).
Install locust with ``pip install -e '.[bench]'``. Never import this module from pytest: locust
monkey-patches the standard library with gevent.

Each task checks the answer really came from the backend the manifests route it to (the demo backends
name themselves in their JSON), so a routing mistake shows up as a failure, not just as a 200.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from locust import FastHttpUser, between, task

DEFAULT_URL = "http://127.0.0.1:8080"


def _check_backend(response: Any, expected: str, body_bytes: int | None = None) -> None:
    """Mark a ``catch_response`` response failed unless ``expected`` answered it (200, JSON)."""
    if response.status_code != 200:
        response.failure(f"status {response.status_code}, expected 200 from {expected}")
        return
    try:
        info = json.loads(response.text)
    except ValueError:
        response.failure(f"not the demo backend's JSON: {response.text[:80]!r}")
        return
    if info.get("backend") != expected:
        response.failure(f"answered by {info.get('backend')!r}, expected {expected!r}")
    elif body_bytes is not None and info.get("body_bytes") != body_bytes:
        response.failure(f"backend got {info.get('body_bytes')} body bytes, expected {body_bytes}")
    else:
        response.success()


class ExampleUser(FastHttpUser):
    """A visitor of demo.localhost (frontend + api), the docs on *.apps.localhost, and stray requests."""

    host = os.environ.get("FASTINGRESS_URL", DEFAULT_URL)
    wait_time = between(0.0, 0.05)

    @task(10)
    def frontend_page(self) -> None:
        page = random.choice(["/", "/shop", "/shop/cart", "/about"])
        with self.client.get(page, headers={"Host": "demo.localhost"}, name="frontend /*",
                             catch_response=True) as response:
            _check_backend(response, "frontend")

    @task(6)
    def api_get(self) -> None:
        item = random.randint(1, 1000)
        with self.client.get(f"/api/items/{item}?fields=name,price", headers={"Host": "demo.localhost"},
                             name="api GET /api/items/:id", catch_response=True) as response:
            _check_backend(response, "api")

    @task(3)
    def api_post(self) -> None:
        body = json.dumps({"name": f"item-{random.randint(1, 1000)}", "qty": random.randint(1, 9)})
        headers = {"Host": "demo.localhost", "Content-Type": "application/json"}
        with self.client.post("/api/items", data=body, headers=headers, name="api POST /api/items",
                              catch_response=True) as response:
            _check_backend(response, "api", body_bytes=len(body.encode()))

    @task(2)
    def docs_exact(self) -> None:
        with self.client.get("/docs", headers={"Host": "demo.localhost"}, name="docs /docs (Exact)",
                             catch_response=True) as response:
            _check_backend(response, "docs")

    @task(4)
    def docs_wildcard(self) -> None:
        label = random.choice(["guide", "v1", "v2", "reference"])
        with self.client.get("/getting-started", headers={"Host": f"{label}.apps.localhost"},
                             name="docs *.apps.localhost", catch_response=True) as response:
            _check_backend(response, "docs")

    @task(1)
    def unrouted(self) -> None:
        """A host no rule names: 404 from fastingress, or the default backend (frontend) when an
        Ingress has spec.defaultBackend, as config/examples/33-ingress-default-backend.yaml does."""
        with self.client.get("/nothing-here", headers={"Host": "no-such-host.invalid"},
                             name="unrouted host (404 or default backend)", catch_response=True) as response:
            if response.status_code == 404:
                response.success()
            else:
                _check_backend(response, "frontend")
