"""Frozen, validated settings for the control plane (built by the CLI, passed explicitly)."""

from __future__ import annotations

import ipaddress
import os
from typing import Literal

import msgspec

from fastingress.errors import ConfigError

LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")

DEFAULT_CONTROLLER_CLASS = "fastingress.io/ingress-controller"
DEFAULT_INGRESS_CLASS = "fastingress"
MAX_WORKERS = 1024


def default_workers() -> int:
    return os.cpu_count() or 1


class TranslationSettings(msgspec.Struct, frozen=True):
    """What decides which Ingresses are ours (mirrors ``fastingress.translate.TranslateOptions``)."""

    controller_class: str = DEFAULT_CONTROLLER_CLASS
    ingress_class: str = DEFAULT_INGRESS_CLASS
    watch_without_class: bool = True
    default_backend_service: str | None = None  # "namespace/name"


class StandaloneSettings(msgspec.Struct, frozen=True):
    """``fastingress standalone``: exactly one of ``manifests`` / ``snapshot`` is set."""

    manifests: tuple[str, ...] = ()
    snapshot: str | None = None
    http_port: int = 80
    https_port: int = 443  # accepted; workers get 0 until TLS lands
    admin_port: int = 10254  # 0 = any free port (logged)
    workers: int = msgspec.field(default_factory=default_workers)
    bind: str = "0.0.0.0"
    admin_bind: str = "0.0.0.0"  # like ingress-nginx: health and metrics on all interfaces
    translation: TranslationSettings = TranslationSettings()
    grace_period: float = 30.0
    watch_interval: float = 1.0
    log_level: LogLevel = "info"
    access_log: bool = False
    # The worker program (argv prefix); "--settings JSON" is appended.  Empty: python -m workers.
    worker_command: tuple[str, ...] = ()
    runtime_dir: str | None = None  # None: a fresh private directory (default_runtime_dir())
    standby_worker: bool = True  # keep one pre-started worker to replace a dead one in ~50 ms


class BuildSettings(msgspec.Struct, frozen=True):
    """``fastingress snapshot build``."""

    manifests: tuple[str, ...]
    output: str
    format: Literal["json", "msgpack"] = "json"
    strict: bool = False
    translation: TranslationSettings = TranslationSettings()


def _check_port(name: str, value: int, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise ConfigError(f"{name} must be between {low} and 65535, got {value}")


def _check_address(name: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{name} must be an IP address, got {value!r}") from None


def _check_service_ref(name: str, value: str | None) -> None:
    if value is None:
        return
    namespace, sep, service = value.partition("/")
    if not sep or not namespace or not service or "/" in service:
        raise ConfigError(f"{name} must be namespace/name, got {value!r}")


def validate_standalone(settings: StandaloneSettings) -> StandaloneSettings:
    """Raise ConfigError (one line) for a bad value; return the settings unchanged."""
    if bool(settings.manifests) == (settings.snapshot is not None):
        raise ConfigError("exactly one of --manifests or --snapshot is required")
    _check_port("--http-port", settings.http_port, allow_zero=False)
    _check_port("--https-port", settings.https_port, allow_zero=True)
    _check_port("--admin-port", settings.admin_port, allow_zero=True)
    if not 1 <= settings.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}, got {settings.workers}")
    _check_address("--bind", settings.bind)
    _check_address("--admin-bind", settings.admin_bind)
    if not 0 <= settings.grace_period <= 3600:
        raise ConfigError(f"--grace-period must be between 0 and 3600 seconds, got {settings.grace_period}")
    if not 0.01 <= settings.watch_interval <= 3600:
        raise ConfigError(
            f"--watch-interval must be between 0.01 and 3600 seconds, got {settings.watch_interval}"
        )
    if settings.log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    _check_service_ref("--default-backend-service", settings.translation.default_backend_service)
    return settings


def validate_build(settings: BuildSettings) -> BuildSettings:
    if not settings.manifests:
        raise ConfigError("--manifests is required")
    if not settings.output:
        raise ConfigError("-o/--output must not be empty")
    _check_service_ref("--default-backend-service", settings.translation.default_backend_service)
    return settings
