"""config/examples: the example manifests load and translate cleanly into the routes README.md promises."""

from __future__ import annotations

import pytest

from fastingress.manifests import load_manifests
from fastingress.snapshot.schema import MIB, Forward, Route, Snapshot, VirtualHost
from fastingress.translate import TranslateOptions, translate

from ..conftest import REPO

EXAMPLES = REPO / "config" / "examples"


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    objects, load_diagnostics = load_manifests([str(EXAMPLES)])
    assert [str(d) for d in load_diagnostics] == []
    result = translate(objects, TranslateOptions())
    problems = [str(d) for d in result.diagnostics if d.severity in ("error", "warning")]
    assert problems == []
    return result.snapshot


def _host(snapshot: Snapshot, hostname: str) -> VirtualHost:
    hosts = {vhost.hostname: vhost for vhost in snapshot.virtual_hosts}
    assert hostname in hosts, sorted(hosts)
    return hosts[hostname]


def _route(vhost: VirtualHost, path: str, path_type: str) -> Route:
    for route in vhost.routes:
        if (route.path, route.path_type) == (path, path_type):
            return route
    raise AssertionError(f"no {path_type} {path} in {vhost.hostname}: {vhost.routes}")


def _service_ports(snapshot: Snapshot, action: object) -> set[tuple[str, int]]:
    """(service, endpoint port) pairs an action forwards to."""
    assert isinstance(action, Forward)
    upstreams = {upstream.name: upstream for upstream in snapshot.upstreams}
    pairs = set()
    for backend in action.backends:
        upstream = upstreams[backend.upstream]
        for endpoint in upstream.endpoints:
            assert endpoint.address == "127.0.0.1" and endpoint.ready
            pairs.add((upstream.service, endpoint.port))
    return pairs


def test_every_example_file_is_commented_yaml() -> None:
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        assert path.read_text().startswith("# "), f"{path.name} lacks its explanatory comment"


def test_expected_hosts_only(snapshot: Snapshot) -> None:
    hostnames = sorted(vhost.hostname for vhost in snapshot.virtual_hosts)
    assert hostnames == ["*.apps.localhost", "demo.localhost"]


def test_two_ingresses_merge_on_demo_localhost(snapshot: Snapshot) -> None:
    vhost = _host(snapshot, "demo.localhost")
    root = _route(vhost, "/", "Prefix")
    api = _route(vhost, "/api", "Prefix")
    assert (root.ingress, api.ingress) == ("demo/frontend", "demo/api")
    assert _service_ports(snapshot, root.action) == {("demo/frontend", 9001)}
    assert _service_ports(snapshot, api.action) == {("demo/api", 9002)}
    # proxy-body-size "20m" applies to the api Ingress's routes only.
    assert api.policy.max_body_size == 20 * MIB
    assert root.policy.max_body_size == snapshot.settings.max_body_size == MIB


def test_exact_path_to_docs(snapshot: Snapshot) -> None:
    docs = _route(_host(snapshot, "demo.localhost"), "/docs", "Exact")
    assert _service_ports(snapshot, docs.action) == {("demo/docs", 9003)}


def test_wildcard_host_to_docs(snapshot: Snapshot) -> None:
    route = _route(_host(snapshot, "*.apps.localhost"), "/", "Prefix")
    assert _service_ports(snapshot, route.action) == {("demo/docs", 9003)}


def test_default_backend_is_frontend(snapshot: Snapshot) -> None:
    assert _service_ports(snapshot, snapshot.default_action) == {("demo/frontend", 9001)}


def test_readme_mentions_every_file() -> None:
    readme = (EXAMPLES / "README.md").read_text()
    for path in EXAMPLES.glob("*.yaml"):
        assert f"`{path.name}`" in readme, path.name


def test_examples_do_not_depend_on_file_order() -> None:
    objects, _ = load_manifests([str(p) for p in sorted(EXAMPLES.glob("*.yaml"), reverse=True)])
    forward = translate(load_manifests([str(EXAMPLES)])[0], TranslateOptions()).snapshot
    assert translate(objects, TranslateOptions()).snapshot == forward

