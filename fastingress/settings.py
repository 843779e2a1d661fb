"""Frozen, validated settings for the control plane (built by the CLI, passed explicitly)."""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Literal, Protocol

import msgspec

from fastingress.errors import ConfigError
from fastingress.snapshot.schema import GlobalSettings
from fastingress.translate.model import TranslateOptions

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
    # -- TLS (issue 4) --------------------------------------------------------------------
    default_ssl_certificate: str | None = None  # "namespace/name" of a kubernetes.io/tls Secret
    enable_ssl_passthrough: bool = False  # honour the ssl-passthrough annotation
    hsts: bool = False  # Strict-Transport-Security on HTTPS answers (off by default, see README)
    hsts_max_age: int = 31536000
    # -- fail closed (issue 8) ---------------------------------------------------------------
    unsafe_fail_open: bool = False  # serve routes whose access annotations are not honoured, open
    # -- the controller ConfigMap (issue 9) ----------------------------------------------------
    configmap: str | None = None  # "namespace/name": watched in a cluster, read from --manifests

    def global_settings(self) -> GlobalSettings:
        """The data-plane settings these flags decide (the rest keeps its defaults)."""
        return GlobalSettings(
            default_certificate=self.default_ssl_certificate,
            ssl_passthrough=self.enable_ssl_passthrough,
            hsts=self.hsts,
            hsts_max_age=self.hsts_max_age,
        )


def translate_options(translation: TranslationSettings) -> TranslateOptions:
    """The translator's options these flags decide (the one place they are mapped)."""
    return TranslateOptions(
        controller_class=translation.controller_class,
        ingress_class=translation.ingress_class,
        watch_without_class=translation.watch_without_class,
        default_backend_service=translation.default_backend_service,
        settings=translation.global_settings(),
        unsafe_fail_open=translation.unsafe_fail_open,
        configmap=translation.configmap,
    )


class StandaloneSettings(msgspec.Struct, frozen=True):
    """``fastingress standalone``: exactly one of ``manifests`` / ``snapshot`` is set."""

    manifests: tuple[str, ...] = ()
    snapshot: str | None = None
    http_port: int = 80
    https_port: int = 443  # 0: no HTTPS listener
    admin_port: int = 10254  # 0 = any free port (logged)
    workers: int = msgspec.field(default_factory=default_workers)
    bind: str = "0.0.0.0"
    admin_bind: str = "0.0.0.0"  # like ingress-nginx: health and metrics on all interfaces
    translation: TranslationSettings = TranslationSettings()
    grace_period: float = 30.0
    watch_interval: float = 1.0
    log_level: LogLevel = "info"
    access_log: bool = False
    http1_codec: Literal["llhttp", "h11"] = "llhttp"  # the event-driven core, or the h11 reference path
    # The worker program (argv prefix); "--settings JSON" is appended.  Empty: python -m workers.
    worker_command: tuple[str, ...] = ()
    runtime_dir: str | None = None  # None: a fresh private directory (default_runtime_dir())
    standby_worker: bool = True  # keep one pre-started worker to replace a dead one in ~50 ms
    # -- issue 10 -------------------------------------------------------------------------
    allow_partial: bool = False  # start even if a manifest file cannot be read or parsed
    demo_backends: tuple[tuple[str, int], ...] = ()  # --demo: (name, port) served in-process


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


class _Serving(Protocol):
    """The data-plane fields standalone and controller settings share (same names, same meaning)."""

    @property
    def http_port(self) -> int: ...
    @property
    def https_port(self) -> int: ...
    @property
    def admin_port(self) -> int: ...
    @property
    def workers(self) -> int: ...
    @property
    def bind(self) -> str: ...
    @property
    def admin_bind(self) -> str: ...
    @property
    def grace_period(self) -> float: ...
    @property
    def log_level(self) -> str: ...


def _check_serving(settings: _Serving) -> None:
    _check_port("--http-port", settings.http_port, allow_zero=False)
    _check_port("--https-port", settings.https_port, allow_zero=True)
    _check_port("--admin-port", settings.admin_port, allow_zero=True)
    if not 1 <= settings.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}, got {settings.workers}")
    _check_address("--bind", settings.bind)
    _check_address("--admin-bind", settings.admin_bind)
    if not 0 <= settings.grace_period <= 3600:
        raise ConfigError(f"--grace-period must be between 0 and 3600 seconds, got {settings.grace_period}")
    if settings.log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")


def validate_standalone(settings: StandaloneSettings) -> StandaloneSettings:
    """Raise ConfigError (one line) for a bad value; return the settings unchanged."""
    if bool(settings.manifests) == (settings.snapshot is not None):
        raise ConfigError("exactly one of --manifests or --snapshot is required")
    _check_serving(settings)
    if not 0.01 <= settings.watch_interval <= 3600:
        raise ConfigError(
            f"--watch-interval must be between 0.01 and 3600 seconds, got {settings.watch_interval}"
        )
    _check_translation(settings.translation)
    if settings.allow_partial and settings.snapshot is not None:
        raise ConfigError("--allow-partial applies to --manifests only")
    for name, port in settings.demo_backends:
        _check_port(f"--demo backend {name}", port, allow_zero=False)
    return settings


def _check_translation(translation: TranslationSettings) -> None:
    _check_service_ref("--default-backend-service", translation.default_backend_service)
    _check_service_ref("--default-ssl-certificate", translation.default_ssl_certificate)
    _check_service_ref("--configmap", translation.configmap)
    if not 0 <= translation.hsts_max_age <= 10 * 365 * 86400:
        raise ConfigError(f"--hsts-max-age must be between 0 and 315360000, got {translation.hsts_max_age}")


def validate_build(settings: BuildSettings) -> BuildSettings:
    if not settings.manifests:
        raise ConfigError("--manifests is required")
    if not settings.output:
        raise ConfigError("-o/--output must not be empty")
    _check_translation(settings.translation)
    return settings


DEFAULT_ELECTION_ID = "fastingress-leader"


class ControllerSettings(msgspec.Struct, frozen=True):
    """``fastingress controller``.  The serving fields have the same names and meaning as in
    ``StandaloneSettings`` (the supervisor reads them from either)."""

    kubeconfig: str | None = None  # None: $KUBECONFIG, else the in-cluster service account
    watch_namespace: str | None = None  # None: all namespaces
    publish_service: str | None = None  # "namespace/name"
    publish_status_address: tuple[str, ...] = ()
    election_id: str = DEFAULT_ELECTION_ID
    election_namespace: str = "default"
    default_ssl_certificate: str | None = None  # "namespace/name"; also in translation (used there)
    api_outage_grace: float = 60.0
    lease_ttl: float = 30.0
    lease_renew: float = 15.0
    debounce_hold_off: float = 0.01
    debounce_max_delay: float = 0.5
    watch_timeout: int = 300  # server-side timeoutSeconds of each watch
    identity: str = ""  # leader election identity; "" = $POD_NAME or hostname, plus the pid
    http_port: int = 80
    https_port: int = 443
    admin_port: int = 10254
    workers: int = msgspec.field(default_factory=default_workers)
    bind: str = "0.0.0.0"
    admin_bind: str = "0.0.0.0"
    translation: TranslationSettings = TranslationSettings(watch_without_class=False)
    grace_period: float = 30.0
    log_level: LogLevel = "info"
    access_log: bool = False
    worker_command: tuple[str, ...] = ()
    runtime_dir: str | None = None
    standby_worker: bool = True
    http1_codec: Literal["llhttp", "h11"] = "llhttp"
    # -- issue 10 -------------------------------------------------------------------------
    update_status_on_shutdown: bool = True  # the last replica clears Ingress status (ingress-nginx)
    pod_name: str = ""  # $POD_NAME: our own endpoint among the publish Service's (peers)
    list_page_size: int = 500  # objects a LIST page (limit/continue)


_DNS_LABELS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _check_name(name: str, value: str | None) -> None:
    if value is not None and (len(value) > 253 or not _DNS_LABELS.match(value)):
        raise ConfigError(f"{name} must be a Kubernetes object name (lower-case DNS name), got {value!r}")


def validate_controller(settings: ControllerSettings) -> ControllerSettings:
    """Raise ConfigError (one line) for a bad value; return the settings unchanged."""
    _check_serving(settings)
    _check_translation(settings.translation)
    _check_service_ref("--publish-service", settings.publish_service)
    _check_service_ref("--default-ssl-certificate", settings.default_ssl_certificate)
    if settings.publish_service and settings.publish_status_address:
        raise ConfigError("use either --publish-service or --publish-status-address, not both")
    for address in settings.publish_status_address:
        if not address or len(address) > 253 or any(c.isspace() for c in address):
            raise ConfigError(f"--publish-status-address: not an IP address or host name: {address!r}")
    _check_name("--watch-namespace", settings.watch_namespace)
    _check_name("--election-id", settings.election_id)
    _check_name("--election-namespace", settings.election_namespace)
    if not 0 <= settings.api_outage_grace <= 86400:
        raise ConfigError(
            f"--api-outage-grace must be between 0 and 86400 seconds, got {settings.api_outage_grace}"
        )
    if not 0.1 <= settings.lease_ttl <= 3600:
        raise ConfigError(f"--lease-ttl must be between 0.1 and 3600 seconds, got {settings.lease_ttl}")
    if not 0 < settings.lease_renew < settings.lease_ttl:
        raise ConfigError("--lease-renew must be positive and shorter than --lease-ttl")
    if not 0 <= settings.debounce_hold_off <= settings.debounce_max_delay <= 60:
        raise ConfigError("--debounce-hold-off must be between 0 and --debounce-max-delay (at most 60 s)")
    if not 1 <= settings.watch_timeout <= 3600:
        raise ConfigError(f"--watch-timeout must be between 1 and 3600 seconds, got {settings.watch_timeout}")
    if not 1 <= settings.list_page_size <= 100000:
        raise ConfigError(f"--list-page-size must be between 1 and 100000, got {settings.list_page_size}")
    return settings


# -- check and explain (issue 8) ---------------------------------------------------------------

OutputFormat = Literal["text", "json"]


class CheckSettings(msgspec.Struct, frozen=True):
    """``fastingress check PATH...``: lint manifests offline."""

    paths: tuple[str, ...]
    strict: bool = False  # warnings fail too
    output: OutputFormat = "text"
    translation: TranslationSettings = TranslationSettings()


def validate_check(settings: CheckSettings) -> CheckSettings:
    if not settings.paths:
        raise ConfigError("at least one PATH is required")
    _check_translation(settings.translation)
    return settings


class ExplainSettings(msgspec.Struct, frozen=True):
    """``fastingress explain``: exactly one of ``manifests`` / ``admin``."""

    url: str
    manifests: tuple[str, ...] = ()
    admin: str | None = None  # base URL of a running instance's admin port
    headers: tuple[tuple[str, str], ...] = ()
    client_ip: str = ""
    method: str = "GET"
    https_port: int = 443  # for the Location of redirects to HTTPS (manifests only)
    output: OutputFormat = "text"
    translation: TranslationSettings = TranslationSettings()


_METHOD_RE = re.compile(r"^[A-Z]{1,20}$")


def validate_explain(settings: ExplainSettings) -> ExplainSettings:
    if bool(settings.manifests) == (settings.admin is not None):
        raise ConfigError("exactly one of --manifests or --admin is required")
    if settings.admin is not None and not settings.admin.startswith(("http://", "https://")):
        raise ConfigError(f"--admin must be a URL like http://127.0.0.1:10254, got {settings.admin!r}")
    if not settings.url.startswith(("http://", "https://")):
        raise ConfigError(f"URL must start with http:// or https://, got {settings.url!r}")
    if settings.client_ip:
        _check_address("--client-ip", settings.client_ip)
    if not _METHOD_RE.match(settings.method):
        raise ConfigError(f"-X/--method must be an HTTP method like GET, got {settings.method!r}")
    _check_port("--https-port", settings.https_port, allow_zero=True)
    _check_translation(settings.translation)
    return settings
