"""The command line: one-line errors with exit 2, settings from flags, ``snapshot build``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from fastingress.cli import build_parser, main, standalone_settings
from fastingress.snapshot.codec import decode_json, decode_msgpack, load_file
from workers.build import data_path

INGRESS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec:
  rules:
    - host: a.example.com
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  ports: [{port: 80}]
"""


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "ingress.yaml"
    path.write_text(INGRESS)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastingress", *args], capture_output=True, text=True, timeout=60, check=False
    )


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("fastingress: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        assert isinstance(exc.code, int)
        return exc.code


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "required: COMMAND"),
        (["standalone"], "one of the arguments --manifests --snapshot is required"),
        (["standalone", "--manifests", "a", "--snapshot", "b"], "not allowed with argument"),
        (["standalone", "--snapshot", "x", "--http-port", "eighty"], "invalid int value: 'eighty'"),
        (["standalone", "--snapshot", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["standalone", "--snapshot", "x", "--log-level", "loud"], "invalid choice: 'loud'"),
        (
            ["standalone", "--snapshot", "x", "--http-port", "70000"],
            "--http-port must be between 1 and 65535",
        ),
        (["standalone", "--snapshot", "x", "--workers", "0"], "--workers must be between 1"),
        (["standalone", "--snapshot", "x", "--bind", "example.com"], "--bind must be an IP address"),
        (["standalone", "--snapshot", "x", "--watch-interval", "0"], "--watch-interval must be between"),
        (["standalone", "--snapshot", "x", "--grace-period", "-1"], "--grace-period must be between"),
        (["standalone", "--snapshot", "x", "--default-backend-service", "web"], "namespace/name"),
        (["standalone", "--snapshot", "/nonexistent/snap.json"], "cannot read snapshot file"),
        (["standalone", "--manifests", "/nonexistent/dir"], "does not exist"),
        (["snapshot", "build", "--manifests", "x"], "required: -o/--output"),
        (["snapshot", "build", "--manifests", "x", "-o", "y", "--format", "xml"], "invalid choice: 'xml'"),
        (["snapshot", "build", "--manifests", "/nonexistent", "-o", "y.json"], "does not exist"),
    ],
)
def test_errors_are_one_line_and_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _exit_code(argv) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, fragment)
    assert captured.out == ""


def test_errors_through_the_real_entry_point(tmp_path: Path) -> None:
    """python -m fastingress, as people run it: still one line, no traceback."""
    missing = run_cli("standalone", "--manifests", str(tmp_path / "missing"), "--admin-port", "0")
    assert missing.returncode == 2
    assert_one_line_error(missing.stderr, "does not exist")
    bad = tmp_path / "bad.json"
    bad.write_text("{broken")
    broken = run_cli("standalone", "--snapshot", str(bad), "--admin-port", "0")
    assert broken.returncode == 2
    assert_one_line_error(broken.stderr, "snapshot does not decode")
    flag = run_cli("standalone", "--workers", "many")
    assert flag.returncode == 2
    assert_one_line_error(flag.stderr, "invalid int value")


def test_controller_with_a_missing_kubeconfig_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["controller", "--kubeconfig", "/nonexistent/kubeconfig"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastingress: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_demo_backends_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """Delegates to fastingress.demo (its own flags); shown in the top-level help."""
    assert _exit_code(["demo-backends", "--help"]) == 0
    assert "fastingress demo-backends" in capsys.readouterr().out
    assert _exit_code(["--help"]) == 0
    assert "demo-backends" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fastingress ")
    assert out.rstrip().endswith(f"(data path: {data_path()})")  # tests/unit/test_build_info.py


def test_standalone_settings_defaults_and_flags() -> None:
    parser = build_parser()
    defaults = standalone_settings(parser.parse_args(["standalone", "--snapshot", "s.json"]))
    assert (defaults.http_port, defaults.https_port, defaults.admin_port) == (80, 443, 10254)
    assert defaults.bind == defaults.admin_bind == "0.0.0.0"
    assert defaults.workers == (os.cpu_count() or 1)
    assert defaults.translation.ingress_class == "fastingress"
    assert defaults.translation.controller_class == "fastingress.io/ingress-controller"
    assert defaults.translation.watch_without_class is True
    assert (defaults.grace_period, defaults.watch_interval, defaults.log_level) == (30.0, 1.0, "info")
    assert defaults.access_log is False
    assert defaults.standby_worker is True

    args = parser.parse_args(
        [
            "standalone",
            "--manifests", "a.yaml", "b",
            "--manifests", "c",
            "--http-port", "8080",
            "--https-port", "8443",
            "--admin-port", "0",
            "--workers", "3",
            "--bind", "127.0.0.1",
            "--ingress-class", "nginx",
            "--controller-class", "k8s.io/ingress-nginx",
            "--no-watch-ingress-without-class",
            "--default-backend-service", "default/fallback",
            "--grace-period", "5",
            "--watch-interval", "0.05",
            "--log-level", "debug",
            "--access-log",
            "--no-standby-worker",
        ]
    )  # fmt: skip
    settings = standalone_settings(args)
    assert settings.manifests == ("a.yaml", "b", "c")
    assert settings.snapshot is None
    assert (settings.http_port, settings.https_port, settings.admin_port) == (8080, 8443, 0)
    assert settings.admin_bind == "127.0.0.1"  # follows --bind
    assert settings.workers == 3
    assert settings.translation.ingress_class == "nginx"
    assert settings.translation.controller_class == "k8s.io/ingress-nginx"
    assert settings.translation.watch_without_class is False
    assert settings.translation.default_backend_service == "default/fallback"
    assert (settings.grace_period, settings.watch_interval) == (5.0, 0.05)
    assert (settings.log_level, settings.access_log) == ("debug", True)
    assert settings.standby_worker is False
    explicit = standalone_settings(
        parser.parse_args(["standalone", "--snapshot", "s", "--bind", "127.0.0.1", "--admin-bind", "::1"])
    )
    assert explicit.admin_bind == "::1"


def test_snapshot_build_json(tmp_path: Path, manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "snap.json"
    assert main(["snapshot", "build", "--manifests", str(manifest), "-o", str(out)]) == 0
    snapshot = decode_json(out.read_bytes())
    assert [vh.hostname for vh in snapshot.virtual_hosts] == ["a.example.com"]
    assert load_file(out) == snapshot
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # snapshots may carry private keys
    err = capsys.readouterr().err
    assert f"wrote {out} (json, 1 virtual hosts" in err
    assert not list(tmp_path.glob(".snap.json.*"))  # no temporary file left behind


def test_snapshot_build_msgpack_by_name_and_flag(tmp_path: Path, manifest: Path) -> None:
    by_name = tmp_path / "snap.msgpack"
    assert main(["snapshot", "build", "--manifests", str(manifest), "-o", str(by_name)]) == 0
    snapshot = decode_msgpack(by_name.read_bytes())
    forced = tmp_path / "snap.bin"
    args = ["snapshot", "build", "--manifests", str(manifest), "-o", str(forced), "--format", "msgpack"]
    assert main(args) == 0
    assert decode_msgpack(forced.read_bytes()) == snapshot
    default = tmp_path / "snap.out"
    assert main(["snapshot", "build", "--manifests", str(manifest), "-o", str(default)]) == 0
    assert decode_json(default.read_bytes()) == snapshot


def test_snapshot_build_strict_and_diagnostics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    # The Ingress without its Service: an "error" diagnostic.
    broken.write_text(INGRESS.split("---", maxsplit=1)[0])
    out = tmp_path / "snap.json"
    assert main(["snapshot", "build", "--manifests", str(broken), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "error Ingress default/web" in err
    assert main(["snapshot", "build", "--manifests", str(broken), "-o", str(out), "--strict"]) == 1
    assert out.exists()


def test_snapshot_build_to_stdout(manifest: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["snapshot", "build", "--manifests", str(manifest), "-o", "-"]) == 0
    snapshot = decode_json(capfdbinary.readouterr().out)
    assert len(snapshot.virtual_hosts) == 1


def test_snapshot_build_unwritable_output(
    tmp_path: Path, manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "no" / "such" / "dir" / "snap.json"
    assert main(["snapshot", "build", "--manifests", str(manifest), "-o", str(out)]) == 2
    assert_one_line_error(capsys.readouterr().err.splitlines()[-1] + "\n", "cannot write")


@pytest.mark.parametrize(
    "argv",
    [
        ["standalone", "--snapshot", "x"],
        ["controller"],
        ["snapshot", "build", "--manifests", "x", "-o", "y"],
        ["check", "x"],
        ["explain", "--manifests", "x", "http://a/"],
    ],
)
def test_unsafe_fail_open_is_off_by_default_and_reaches_the_translator(argv: list[str]) -> None:
    from fastingress import cli
    from fastingress.settings import translate_options

    builders = {
        "standalone": cli.standalone_settings, "controller": cli.controller_settings,
        "snapshot": cli.build_settings, "check": cli.check_settings, "explain": cli.explain_settings,
    }
    build = builders[argv[0]]
    off = build(build_parser().parse_args(argv))
    on = build(build_parser().parse_args([*argv, "--unsafe-fail-open"]))
    assert translate_options(off.translation).unsafe_fail_open is False
    assert translate_options(on.translation).unsafe_fail_open is True
