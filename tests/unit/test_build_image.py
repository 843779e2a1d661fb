"""``config/deploy/build-image.sh`` builds the very image ``30-deployment.yaml`` names, and
pushes it under a registry prefix when given one.  Run for real, with a stand-in ``docker`` on
PATH that records its arguments (there is no Docker engine here); the Dockerfile itself is
checked by tests/unit/test_deploy_manifests.py (structure, hadolint)."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import yaml

from tests.conftest import REPO

SCRIPT = REPO / "config" / "deploy" / "build-image.sh"


def _deployment_image() -> str:
    docs = yaml.safe_load_all((REPO / "config" / "deploy" / "30-deployment.yaml").read_text())
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    image: str = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    return image


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    log = tmp_path / "docker.log"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(f'#!/bin/sh\necho "$PWD|$*" >> {log}\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}")
    env.pop("DOCKER", None)
    result = subprocess.run(
        ["sh", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    calls = []
    for line in log.read_text().splitlines() if log.exists() else []:
        cwd, _, argv = line.partition("|")
        calls.append([cwd, *argv.split()])
    return result, calls


def test_the_script_builds_what_the_deployment_runs(tmp_path: Path) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert _deployment_image() == f"fastingress:{version}"
    result, calls = _run(tmp_path)
    assert result.returncode == 0, result.stderr
    assert calls == [[str(REPO), "build", "-t", _deployment_image(), "."]]  # from the repository root
    assert (REPO / "Dockerfile").is_file()


def test_the_script_pushes_under_a_registry_prefix(tmp_path: Path) -> None:
    result, calls = _run(tmp_path, "registry.example.com/team/")
    assert result.returncode == 0, result.stderr
    image = _deployment_image()
    remote = f"registry.example.com/team/{image}"
    assert [c[1:] for c in calls] == [["build", "-t", image, "."], ["tag", image, remote], ["push", remote]]
    assert f"controller={remote}" in result.stdout  # the set image command to run next
