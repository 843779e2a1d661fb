"""``fastingress check`` and ``fastingress explain --manifests`` (issue 8), in process, on real
files; ``explain --admin`` against a running instance is in tests/e2e/test_fail_closed_e2e.py."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from fastingress.cli import main
from fastingress.explain import ExplainError, ExplainRequest, Explanation, explain, explain_query
from fastingress.manifests import load_manifests
from fastingress.snapshot.schema import Snapshot
from fastingress.translate import translate
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden"
PREFIX = "nginx.ingress.kubernetes.io/"

CLEAN = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: shop}
spec:
  rules:
    - host: shop.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
"""

TYPO = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: api
  namespace: shop
  annotations: {nginx.ingress.kubernetes.io/rewrite-targt: /}
spec:
  rules:
    - host: api.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
"""

OTHER_CLASS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: legacy
  namespace: shop
  annotations: {nginx.ingress.kubernetes.io/auth-url: "ftp://auth"}
spec:
  ingressClassName: nginx
  rules:
    - host: legacy.example.com
      http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
"""


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        assert isinstance(exc.code, int)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "clean.yaml").write_text(CLEAN)
    (tmp_path / "typo.yaml").write_text(TYPO)
    (tmp_path / "other.yaml").write_text(OTHER_CLASS)
    return tmp_path


# --- check ----------------------------------------------------------------------------------


def test_check_clean_passes_and_warnings_fail_only_when_strict(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "check", str(tree / "clean.yaml"))
    assert code == 0
    assert out == "1 files, 2 objects, 1 Ingresses: 0 errors, 0 warnings, 0 infos\n"
    code, out, _ = _run(capsys, "check", str(tree / "clean.yaml"), str(tree / "typo.yaml"))
    assert code == 0
    typo_line = (
        f"{tree / 'typo.yaml'}: warning Ingress shop/api metadata.annotations[{PREFIX}rewrite-targt]: "
        f"unknown annotation (did you mean `{PREFIX}rewrite-target`?); ignored"
    )
    assert typo_line in out.splitlines()
    code, _, _ = _run(capsys, "check", "--strict", str(tree / "clean.yaml"), str(tree / "typo.yaml"))
    assert code == 1


def test_check_json_for_ci(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "check", "-o", "json", str(tree))
    assert code == 0
    report = json.loads(out)
    assert report["summary"]["files"] == 3 and report["summary"]["other_class"] == 1
    (typo,) = [d for d in report["diagnostics"] if d["name"] == "api" and "rewrite-targt" in d["field"]]
    assert typo == {
        "file": str(tree / "typo.yaml"),
        "severity": "warning",
        "kind": "Ingress",
        "namespace": "shop",
        "name": "api",
        "field": f"metadata.annotations[{PREFIX}rewrite-targt]",
        "message": f"unknown annotation (did you mean `{PREFIX}rewrite-target`?); ignored",
        "suggestion": f"{PREFIX}rewrite-target",
    }


def test_check_errors_fail_and_other_classes_are_named(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "check", str(tree))
    assert code == 0  # the auth-url Ingress is of class nginx: not ours, not checked ...
    assert "1 Ingresses belong to another class and were not checked (--ingress-class NAME" in out
    code, out, _ = _run(capsys, "check", "--ingress-class", "nginx", str(tree))
    assert code == 1  # ... until it is: an access annotation we cannot honour is an error
    assert f"error Ingress shop/legacy metadata.annotations[{PREFIX}auth-url]" in out
    assert "503 (fail closed)" in out


def test_check_broken_files_and_bad_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.yaml").write_text("kind: [unclosed\n")
    code, out, _ = _run(capsys, "check", str(tmp_path))
    assert code == 1
    assert out.startswith(f"error File {tmp_path / 'broken.yaml'}: invalid YAML at line")
    code, out, err = _run(capsys, "check", str(tmp_path / "missing.yaml"))
    assert code == 2 and out == ""
    assert err == f"fastingress: error: manifest path {tmp_path / 'missing.yaml'} does not exist\n"
    code, _, err = _run(capsys, "check")
    assert code == 2 and "PATH" in err


def test_check_the_golden_fail_closed_case(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "check", "-o", "json", str(GOLDEN / "fail-closed.yaml"))
    assert code == 1
    report = json.loads(out)
    closed = {d["name"] for d in report["diagnostics"] if "(fail closed)" in d["message"]}
    # basic auth and source ranges are honoured (issue 9); a guard whose Secret is missing is not
    assert closed == {"basic-auth-no-secret", "client-cert", "external-auth", "snippet-deny", "typo"}


# --- explain --------------------------------------------------------------------------------


def _snapshot(case: str) -> Snapshot:
    objects, _ = load_manifests([str(GOLDEN / f"{case}.yaml")])
    return translate(objects).snapshot


@pytest.mark.parametrize(
    ("url", "rule"),
    [  # the path-matching examples of the Kubernetes Ingress documentation
        ("http://prefix-root.example.com/any/thing", ("/", "Prefix")),
        ("http://exact.example.com/foo", ("/foo", "Exact")),
        ("http://exact.example.com/foo/", None),
        ("http://prefix-slash.example.com/foo/", ("/foo", "Prefix")),  # /foo and /foo/: one rule
        ("http://longest.example.com/aaa/bbb", ("/aaa/bbb", "Prefix")),
        ("http://longest.example.com/aaa/bbbxyz", None),
        ("http://mixed.example.com/foo", ("/foo", "Exact")),
        ("http://mixed.example.com/foo/bar", ("/foo", "Prefix")),
        ("http://mixed.example.com/foobar", ("/", "Prefix")),
    ],
)
def test_explain_follows_the_kubernetes_examples(url: str, rule: tuple[str, str] | None) -> None:
    e = explain(_snapshot("k8s-path-matching"), ExplainRequest(url))
    if rule is None:
        assert e.rule is None and e.outcome == "not found" and e.status == 404
        assert e.candidates and not any(c.matches for c in e.candidates)
        return
    assert e.rule is not None and (e.rule.path, e.rule.path_type) == rule
    assert e.outcome == "forward" and e.upstream_target.startswith(e.path)
    (backend,) = e.backends
    assert [(ep.address, ep.port) for ep in backend.endpoints] == [("10.0.0.5", 8080)]


def test_explain_says_why_other_rules_lost() -> None:
    e = explain(_snapshot("k8s-path-matching"), ExplainRequest("http://mixed.example.com/foo"))
    reasons = {(c.rule.path, c.rule.path_type): (c.matches, c.reason) for c in e.candidates}
    assert reasons[("/foo", "Prefix")] == (True, "matches too, but the Exact rule '/foo' wins")
    assert reasons[("/", "Prefix")] == (True, "matches too, but the Exact rule '/foo' wins")
    e = explain(_snapshot("k8s-path-matching"), ExplainRequest("http://longest.example.com/aaa/bbb/c"))
    reasons = {c.rule.path: c.reason for c in e.candidates}
    assert reasons == {
        "/aaa/bb": "Prefix '/aaa/bb' does not match '/aaa/bbb/c' (it matches whole path elements)"
    }


def test_explain_the_seed_case_redirect_rewrite_and_upstream() -> None:
    snapshot = _snapshot("seed-frontend-and-external-api")
    plain = explain(snapshot, ExplainRequest("http://app.example.com/api/users?x=1"), https_port=8443)
    assert (plain.outcome, plain.status) == ("redirect", 308)
    assert plain.location == "https://app.example.com:8443/api/users?x=1"
    e = explain(snapshot, ExplainRequest("https://app.example.com/api/users?x=1"))
    assert e.outcome == "forward" and e.upstream_target == "/users?x=1"
    policies = {p.name: p for p in e.policies}
    assert policies["rewrite-target"].value == "/$2"
    assert policies["upstream-vhost"].value == "project-domain.com"
    assert policies["backend-protocol"].value == "HTTPS"
    assert policies["proxy-body-size"].value == "20971520 bytes"
    assert policies["tls"].value == "shop/app-example-com-tls"
    (backend,) = e.backends
    assert backend.external_name == "api.project-domain.com"
    (other,) = e.candidates
    assert other.rule.ingress == "shop/frontend" and other.matches


def test_explain_fail_closed_hosts_and_bad_requests() -> None:
    objects, _ = load_manifests([str(GOLDEN / "fail-closed.yaml")])
    result = translate(objects)
    e = explain(result.snapshot, ExplainRequest("http://shop.example.com/ops/x"),
                diagnostics=result.diagnostics)
    assert (e.outcome, e.status) == ("respond", 503)
    (closed,) = [p for p in e.policies if p.name == "fail-closed"]
    assert closed.value == f"{PREFIX}auth-secret names Secret shop/missing, which is not found"
    assert any(d.startswith("error Ingress shop/basic-auth-no-secret") for d in e.diagnostics)
    # an access policy that is honoured is shown, judged for the client address given
    for ip, verdict in (("10.1.2.3", "allowed"), ("203.0.113.9", "403")):
        allowed = explain(result.snapshot, ExplainRequest("http://shop.example.com/internal/x", client_ip=ip))
        (ranges,) = [p for p in allowed.policies if p.name == "source ranges"]
        assert ranges.value == "allow 10.0.0.0/8, 192.168.0.0/16"
        assert ranges.effect == f"client {ip}: {verdict}"
    admin = explain(result.snapshot, ExplainRequest("http://shop.example.com/admin"))
    (auth,) = [p for p in admin.policies if p.name == "auth-type basic"]
    assert auth.value == "realm 'Authentication Required', 1 user(s) from Secret shop/basic-auth"
    near = explain(result.snapshot, ExplainRequest("http://shop.exampel.com/"))
    assert near.virtual_host is None and near.status == 503  # the global default: a closed defaultBackend
    assert near.hosts[0] == "shop.example.com: a virtual host with a similar name"
    bad = explain(result.snapshot, ExplainRequest("http://shop.example.com/a%2Fb"))
    assert (bad.outcome, bad.status) == ("bad request", 400)
    with pytest.raises(ExplainError, match="http:// or https://"):
        explain(result.snapshot, ExplainRequest("shop.example.com/"))
    with pytest.raises(ExplainError, match="--client-ip"):
        explain(result.snapshot, ExplainRequest("http://a/", client_ip="nope"))


def test_explain_host_header_wins_and_wildcards_are_named() -> None:
    snapshot = _snapshot("wildcard-hosts")
    e = explain(snapshot, ExplainRequest("http://127.0.0.1/x", headers=(("Host", "foo.example.com"),)))
    assert e.host == "foo.example.com" and e.host_match == "wildcard" and e.virtual_host == "*.example.com"


def test_explain_cli_text_json_and_argument_order(capsys: pytest.CaptureFixture[str]) -> None:
    seed = str(GOLDEN / "seed-frontend-and-external-api.yaml")
    url = "https://app.example.com/api/users?x=1"
    code, out, _ = _run(capsys, "explain", "--manifests", seed, url)  # the order
    assert code == 0
    assert "rule: Ingress shop/project-api  host app.example.com  path /api(/|$)(.*) (regex)" in out
    assert "upstream request: GET /users?x=1" in out
    code, out2, _ = _run(capsys, "explain", url, "--manifests", seed, "-o", "json")
    data = msgspec.json.decode(out2.encode(), type=Explanation)
    assert data.upstream_target == "/users?x=1"
    code, _, err = _run(capsys, "explain", "--manifests", seed)
    assert code == 2 and err == "fastingress: error: the URL to explain is required\n"
    code, _, err = _run(capsys, "explain", "--manifests", seed, url, "-H", "nocolon")
    assert code == 2 and "a header is 'Name: value'" in err
    code, _, err = _run(capsys, "explain", url)
    assert code == 2 and "one of the arguments --manifests --admin is required" in err


def test_explain_query_of_the_admin_endpoint() -> None:
    snapshot = _snapshot("seed-frontend-and-external-api")
    status, body = explain_query(
        snapshot, "url=https%3A%2F%2Fapp.example.com%2F&header=X-A%3A%201&client_ip=10.0.0.1", https_port=443
    )
    assert status == 200
    e = msgspec.json.decode(body, type=Explanation)
    assert e.rule is not None and e.rule.ingress == "shop/frontend"
    assert e.headers == (("X-A", "1"),) and e.client_ip == "10.0.0.1"
    assert explain_query(snapshot, "", https_port=443)[0] == 400
    assert explain_query(snapshot, "url=a&url=b", https_port=443)[0] == 400
    assert explain_query(snapshot, "url=" + "x" * 9000, https_port=443)[0] == 400
    status, body = explain_query(snapshot, "url=http%3A%2F%2Fa%2F&header=bad", https_port=443)
    assert status == 400 and b"a header is 'Name: value'" in body


def test_explain_shows_the_client_certificate_policy() -> None:
    """auth-tls-*: every setting of the host's client-certificate check, in one line."""
    objects, _ = load_manifests([str(GOLDEN / "access-client-certs.yaml")])
    e = explain(translate(objects).snapshot, ExplainRequest("https://api.bank.example/v1/x"))
    (tls,) = [p for p in e.policies if p.name == "auth-tls"]
    assert tls.value == (
        "verify optional, depth 1, CA from Secret bank/client-ca, "
        "subject must match CN=(payments|ledger)\\.bank\\.example, "
        "errors redirect to https://bank.example/cert-help, ssl-client-cert passed upstream"
    )
    assert tls.effect == "400 without a good client certificate"
