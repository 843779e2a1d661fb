"""``fastingress controller`` flags: parsed into ControllerSettings; bad values are one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastingress.cli import build_parser, controller_settings, main


def _settings(*argv: str) -> object:
    return controller_settings(build_parser().parse_args(["controller", *argv]))


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    s = controller_settings(build_parser().parse_args(["controller"]))
    assert s.kubeconfig is None and s.watch_namespace is None
    assert s.translation.ingress_class == "fastingress"
    assert s.translation.controller_class == "fastingress.io/ingress-controller"
    assert s.translation.watch_without_class is False  # off by default in a cluster
    assert (s.election_id, s.election_namespace) == ("fastingress-leader", "default")
    assert (s.lease_ttl, s.lease_renew, s.api_outage_grace) == (30.0, 15.0, 60.0)
    monkeypatch.setenv("POD_NAMESPACE", "ingress")
    assert controller_settings(build_parser().parse_args(["controller"])).election_namespace == "ingress"


def test_flags() -> None:
    s = controller_settings(
        build_parser().parse_args(
            [
                "controller",
                "--kubeconfig", "/k",
                "--watch-namespace", "team-a",
                "--ingress-class", "public",
                "--controller-class", "example.com/x",
                "--watch-ingress-without-class",
                "--publish-status-address", "10.0.0.1, lb.example.com",
                "--election-id", "my-lock",
                "--election-namespace", "ops",
                "--default-backend-service", "ops/fallback",
                "--default-ssl-certificate", "ops/cert",
                "--api-outage-grace", "5",
                "--http-port", "8080", "--admin-port", "0", "--workers", "3", "--bind", "127.0.0.1",
                "--lease-ttl", "2",
            ]
        )
    )  # fmt: skip
    assert s.kubeconfig == "/k" and s.watch_namespace == "team-a"
    assert s.translation.ingress_class == "public" and s.translation.watch_without_class
    assert s.publish_status_address == ("10.0.0.1", "lb.example.com")
    assert (s.election_id, s.election_namespace, s.lease_renew) == ("my-lock", "ops", 1.0)
    assert s.translation.default_backend_service == "ops/fallback"
    assert s.default_ssl_certificate == "ops/cert"
    assert (s.http_port, s.admin_port, s.workers, s.admin_bind) == (8080, 0, 3, "127.0.0.1")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--publish-service", "nons"], "--publish-service must be namespace/name"),
        (["--publish-service", "a/b", "--publish-status-address", "1.2.3.4"], "either --publish-service"),
        (["--watch-namespace", "Bad_NS"], "--watch-namespace must be a Kubernetes object name"),
        (["--api-outage-grace", "-1"], "--api-outage-grace must be between"),
        (["--lease-ttl", "2", "--lease-renew", "3"], "--lease-renew must be positive"),
        (["--http-port", "0"], "--http-port must be between 1 and 65535"),
        (
            ["--kubeconfig", "/does/not/exist", "--admin-port", "0"],
            "kubeconfig /does/not/exist: no such file",
        ),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(["controller", *argv]))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastingress: error: ") and message in err, err


def test_no_cluster_configuration_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["controller", "--admin-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in-cluster configuration" in err, err


def test_status_on_shutdown_pod_name_and_page_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "fastingress-7d9f-abcde")
    s = controller_settings(build_parser().parse_args(["controller"]))
    assert s.update_status_on_shutdown is True  # ingress-nginx's default
    assert s.pod_name == "fastingress-7d9f-abcde"
    assert s.list_page_size == 500
    s = controller_settings(
        build_parser().parse_args(["controller", "--no-update-status-on-shutdown", "--list-page-size", "7"])
    )
    assert (s.update_status_on_shutdown, s.list_page_size) == (False, 7)
