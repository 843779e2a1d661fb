"""The ``fastingress`` command line: ``standalone``, ``snapshot build``, ``controller``,
``check`` and ``explain``.

Every user error (bad flag, unreadable file, busy port) is ONE line on stderr,
``fastingress: error: ...``, and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shlex
import stat
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, NoReturn

from fastingress import __version__
from fastingress.errors import ConfigError, FastIngressError
from fastingress.settings import (
    DEFAULT_CONTROLLER_CLASS,
    DEFAULT_ELECTION_ID,
    DEFAULT_INGRESS_CLASS,
    LOG_LEVELS,
    BuildSettings,
    CheckSettings,
    ControllerSettings,
    ExplainSettings,
    StandaloneSettings,
    TranslationSettings,
    default_workers,
    validate_build,
    validate_check,
    validate_controller,
    validate_explain,
    validate_standalone,
)

PROG = "fastingress"
EXIT_USAGE = 2
HTTP1_CODECS = ("llhttp", "h11")
HTTP1_CODEC_HELP = (
    "HTTP/1.1 data path: llhttp (the event-driven core, default) or h11 (the task-based reference)"
)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# --demo: the backends the manifests in config/examples point at (their EndpointSlices).
DEMO_BACKENDS: tuple[tuple[str, int], ...] = (("frontend", 9001), ("api", 9002), ("docs", 9003))


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


def _add_translation_flags(parser: argparse.ArgumentParser, *, watch_default: bool) -> None:
    parser.add_argument(
        "--controller-class",
        default=DEFAULT_CONTROLLER_CLASS,
        help="IngressClass spec.controller value that is ours (default: %(default)s)",
    )
    parser.add_argument(
        "--ingress-class",
        default=DEFAULT_INGRESS_CLASS,
        help="ingress class name that is ours (default: %(default)s)",
    )
    parser.add_argument(
        "--watch-ingress-without-class",
        action=argparse.BooleanOptionalAction,
        default=watch_default,
        help="also serve Ingresses that name no class (default: %(default)s)",
    )
    parser.add_argument(
        "--default-backend-service",
        metavar="NAMESPACE/NAME",
        help="Service that answers requests no rule matches (default: 404)",
    )
    parser.add_argument(
        "--enable-ssl-passthrough",
        action="store_true",
        help="honour the ssl-passthrough annotation (relay TLS by SNI without terminating it)",
    )
    parser.add_argument(
        "--hsts",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="send Strict-Transport-Security on HTTPS answers (default: %(default)s)",
    )
    parser.add_argument(
        "--hsts-max-age", type=int, default=31536000, metavar="SECONDS", help="default: %(default)s"
    )
    parser.add_argument(
        "--configmap",
        metavar="NAMESPACE/NAME",
        help="the ingress-nginx controller ConfigMap to honour (watched in a cluster; read from the "
        "manifests otherwise); its hsts keys win over --hsts",
    )
    _add_fail_open_flag(parser)


def _add_fail_open_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unsafe-fail-open",
        action="store_true",
        help="UNSAFE: serve routes whose access annotations (auth-*, *-source-range, ...) are not "
        "implemented WITHOUT that protection, instead of answering 503 (default: fail closed)",
    )


def _demo_backend(text: str) -> tuple[str, int]:
    from fastingress.demo import parse_backend_spec

    try:
        return parse_backend_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_default_certificate_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--default-ssl-certificate",
        metavar="NAMESPACE/NAME",
        help="TLS Secret for hosts without one (default: a self-signed certificate)",
    )


def _add_manifests_flag(parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup) -> None:
    parser.add_argument(
        "--manifests",
        action="extend",
        nargs="+",
        metavar="PATH",
        help="YAML/JSON file or directory of Kubernetes objects (repeatable)",
    )


class _VersionAction(argparse.Action):
    """``--version``: the version and which data path this install runs (workers/build.py)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the version and data path (compiled or interpreted), then exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> NoReturn:
        from workers.build import data_path

        sys.stdout.write(f"{PROG} {__version__} (data path: {data_path()})\n")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Kubernetes ingress controller and standalone reverse proxy "
        "that reads ingress-nginx manifests as they are.",
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    standalone = commands.add_parser(
        "standalone", help="serve from manifest files or a snapshot file (reloaded when they change)"
    )
    source = standalone.add_mutually_exclusive_group(required=True)
    _add_manifests_flag(source)
    source.add_argument("--snapshot", metavar="FILE", help="snapshot file (JSON or msgpack)")
    standalone.add_argument("--http-port", type=int, default=80, help="default: %(default)s")
    standalone.add_argument(
        "--https-port", type=int, default=443, help="default: %(default)s (0: no HTTPS listener)"
    )
    standalone.add_argument(
        "--admin-port",
        type=int,
        default=10254,
        help="/healthz, /readyz, /metrics, /status (default: %(default)s; 0: any free port, logged)",
    )
    standalone.add_argument(
        "--workers", type=int, default=default_workers(), help="worker processes (default: CPU count)"
    )
    standalone.add_argument("--bind", default="0.0.0.0", metavar="ADDR", help="default: %(default)s")
    standalone.add_argument(
        "--admin-bind",
        metavar="ADDR",
        help="admin address (default: same as --bind; like ingress-nginx, all interfaces)",
    )
    _add_translation_flags(standalone, watch_default=True)
    _add_default_certificate_flag(standalone)
    standalone.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="time in-flight requests get on shutdown (default: %(default)s)",
    )
    standalone.add_argument(
        "--watch-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="input file polling interval (default: %(default)s)",
    )
    standalone.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    standalone.add_argument("--access-log", action="store_true", help="log one line per request")
    standalone.add_argument("--http1-codec", choices=HTTP1_CODECS, default="llhttp", help=HTTP1_CODEC_HELP)
    standalone.add_argument(
        "--standby-worker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep one pre-started worker ready to replace a dead one at once (default: %(default)s)",
    )
    standalone.add_argument(
        "--allow-partial",
        action="store_true",
        help="start even if a manifest file cannot be read or parsed (it is left out until it loads; "
        "default: exit status 2)",
    )
    standalone.add_argument(
        "--demo",
        action="store_true",
        help="also serve the demo backends config/examples points at (frontend, api, docs on "
        "127.0.0.1:9001-9003) in this process, so that they stop with it",
    )
    standalone.add_argument(
        "--demo-backend",
        action="append",
        type=_demo_backend,
        metavar="NAME=PORT",
        help="with --demo: serve these demo backends instead (repeatable)",
    )
    standalone.add_argument("--runtime-dir", metavar="DIR", help=argparse.SUPPRESS)
    standalone.add_argument("--worker-command", metavar="CMD", help=argparse.SUPPRESS)

    snapshot = commands.add_parser("snapshot", help="snapshot files")
    snapshot_commands = snapshot.add_subparsers(dest="snapshot_command", metavar="COMMAND", required=True)
    build = snapshot_commands.add_parser("build", help="translate manifests into a snapshot file")
    build.add_argument(
        "--manifests", action="extend", nargs="+", metavar="PATH", required=True, help="(repeatable)"
    )
    build.add_argument("-o", "--output", required=True, metavar="FILE", help="output file, - for stdout")
    build.add_argument(
        "--format",
        choices=("json", "msgpack"),
        help="default: msgpack for *.msgpack/*.mpk names, else json",
    )
    build.add_argument("--strict", action="store_true", help="exit 1 if any diagnostic is an error")
    _add_translation_flags(build, watch_default=True)
    _add_default_certificate_flag(build)

    _add_controller_parser(commands)
    _add_check_parser(commands)
    _add_explain_parser(commands)
    commands.add_parser(
        "demo-backends",
        add_help=False,  # its flags belong to fastingress.demo (see `fastingress demo-backends -h`)
        help="tiny HTTP backends that echo requests as JSON (for the examples and tests)",
    )
    return parser


def _add_serving_flags(parser: argparse.ArgumentParser) -> None:
    """The data-plane flags, as in ``standalone``."""
    parser.add_argument("--http-port", type=int, default=80, help="default: %(default)s")
    parser.add_argument(
        "--https-port", type=int, default=443, help="default: %(default)s; 0: no HTTPS listener"
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        default=10254,
        help="/healthz, /readyz, /metrics, /status (default: %(default)s; 0: any free port, logged)",
    )
    parser.add_argument(
        "--workers", type=int, default=default_workers(), help="worker processes (default: CPU count)"
    )
    parser.add_argument("--bind", default="0.0.0.0", metavar="ADDR", help="default: %(default)s")
    parser.add_argument("--admin-bind", metavar="ADDR", help="admin address (default: same as --bind)")
    parser.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="time in-flight requests get on shutdown (default: %(default)s)",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument("--access-log", action="store_true", help="log one line per request")
    parser.add_argument("--http1-codec", choices=HTTP1_CODECS, default="llhttp", help=HTTP1_CODEC_HELP)
    parser.add_argument(
        "--standby-worker",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep one pre-started worker ready to replace a dead one at once (default: %(default)s)",
    )
    parser.add_argument("--runtime-dir", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--worker-command", metavar="CMD", help=argparse.SUPPRESS)


def _add_controller_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    controller = commands.add_parser(
        "controller", help="run as a Kubernetes ingress controller (watch the API, serve, report status)"
    )
    controller.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig file (default: $KUBECONFIG, else the in-cluster service account)",
    )
    controller.add_argument(
        "--watch-namespace", metavar="NAMESPACE", help="watch only this namespace (default: all)"
    )
    _add_translation_flags(controller, watch_default=False)
    controller.add_argument(
        "--publish-service",
        metavar="NAMESPACE/NAME",
        help="write this Service's load-balancer address into the status of our Ingresses",
    )
    controller.add_argument(
        "--publish-status-address",
        metavar="ADDR[,ADDR]",
        help="write these addresses (IPs or host names) into the status of our Ingresses",
    )
    controller.add_argument(
        "--election-id",
        default=DEFAULT_ELECTION_ID,
        help="name of the leader-election Lease (default: %(default)s)",
    )
    controller.add_argument(
        "--election-namespace",
        metavar="NAMESPACE",
        help="namespace of the leader-election Lease (default: $POD_NAMESPACE, else default)",
    )
    controller.add_argument(
        "--default-ssl-certificate",
        metavar="NAMESPACE/NAME",
        help="TLS Secret for hosts without one (default: a self-signed certificate)",
    )
    controller.add_argument(
        "--api-outage-grace",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="after this long without the Kubernetes API, /readyz turns not-ready if another replica "
        "still reaches it (never when none does: see README) (default: %(default)s)",
    )
    controller.add_argument(
        "--update-status-on-shutdown",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the last replica to stop clears the status.loadBalancer it wrote (default: %(default)s)",
    )
    _add_serving_flags(controller)
    # Hidden tuning knobs (tests run elections in ~2 s).
    controller.add_argument("--lease-ttl", type=float, default=30.0, help=argparse.SUPPRESS)
    controller.add_argument("--lease-renew", type=float, help=argparse.SUPPRESS)
    controller.add_argument("--debounce-hold-off", type=float, default=0.01, help=argparse.SUPPRESS)
    controller.add_argument("--debounce-max-delay", type=float, default=0.5, help=argparse.SUPPRESS)
    controller.add_argument("--watch-timeout", type=int, default=300, help=argparse.SUPPRESS)
    controller.add_argument("--identity", default="", help=argparse.SUPPRESS)
    controller.add_argument("--list-page-size", type=int, default=500, help=argparse.SUPPRESS)


def _add_check_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    check = commands.add_parser(
        "check",
        help="lint manifests offline: every diagnostic (with \"did you mean\"); exit 1 on errors",
    )
    check.add_argument("paths", nargs="+", metavar="PATH", help="YAML/JSON file or directory of manifests")
    check.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    _add_output_flag(check)
    _add_translation_flags(check, watch_default=True)
    _add_default_certificate_flag(check)


def _add_output_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="default: %(default)s"
    )


def _add_explain_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    explain = commands.add_parser(
        "explain",
        help="which Ingress, rule, backend and policies serve a URL, and why the other rules do not",
    )
    explain.add_argument("url", nargs="?", metavar="URL", help="e.g. http://shop.example.com/api/users?x=1")
    source = explain.add_mutually_exclusive_group(required=True)
    _add_manifests_flag(source)
    source.add_argument(
        "--admin", metavar="URL", help="ask a running instance's admin port instead, e.g. http://127.0.0.1:10254"
    )
    explain.add_argument(
        "-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
        help="a request header (repeatable); Host picks the virtual host",
    )
    explain.add_argument("--client-ip", default="", metavar="IP", help="the client's address")
    explain.add_argument("-X", "--method", default="GET", help="default: %(default)s")
    explain.add_argument(
        "--https-port", type=int, default=443,
        help="HTTPS port for redirects, with --manifests (default: %(default)s)",
    )
    _add_output_flag(explain)
    _add_translation_flags(explain, watch_default=True)
    _add_default_certificate_flag(explain)


def check_settings(args: argparse.Namespace) -> CheckSettings:
    return validate_check(
        CheckSettings(
            paths=tuple(args.paths), strict=args.strict, output=args.output, translation=_translation(args)
        )
    )


def explain_settings(args: argparse.Namespace) -> ExplainSettings:
    from fastingress.explain import parse_header

    manifests = list(args.manifests or ())
    url = args.url
    if url is None and manifests and "://" in manifests[-1]:
        url = manifests.pop()  # "--manifests PATH... URL": argparse gave the URL to --manifests
    if url is None:
        raise ConfigError("the URL to explain is required")
    return validate_explain(
        ExplainSettings(
            url=url,
            manifests=tuple(manifests),
            admin=args.admin,
            headers=tuple(parse_header(h) for h in args.header),
            client_ip=args.client_ip,
            method=args.method.upper(),
            https_port=args.https_port,
            output=args.output,
            translation=_translation(args),
        )
    )


def controller_settings(args: argparse.Namespace) -> ControllerSettings:
    addresses: tuple[str, ...] = ()
    if args.publish_status_address is not None:
        addresses = tuple(a.strip() for a in args.publish_status_address.split(","))
    return validate_controller(
        ControllerSettings(
            kubeconfig=args.kubeconfig,
            watch_namespace=args.watch_namespace or None,
            publish_service=args.publish_service,
            publish_status_address=addresses,
            election_id=args.election_id,
            election_namespace=args.election_namespace or os.environ.get("POD_NAMESPACE") or "default",
            default_ssl_certificate=args.default_ssl_certificate,
            api_outage_grace=args.api_outage_grace,
            lease_ttl=args.lease_ttl,
            lease_renew=args.lease_renew if args.lease_renew is not None else args.lease_ttl / 2,
            debounce_hold_off=args.debounce_hold_off,
            debounce_max_delay=args.debounce_max_delay,
            watch_timeout=args.watch_timeout,
            identity=args.identity,
            update_status_on_shutdown=args.update_status_on_shutdown,
            pod_name=os.environ.get("POD_NAME", ""),
            list_page_size=args.list_page_size,
            **_serving(args),
        )
    )


def _serving(args: argparse.Namespace) -> dict[str, Any]:
    """The data-plane settings standalone and controller share (the flags of ``_add_serving_flags``)."""
    return {
        "http_port": args.http_port,
        "https_port": args.https_port,
        "admin_port": args.admin_port,
        "workers": args.workers,
        "bind": args.bind,
        "admin_bind": args.admin_bind or args.bind,
        "translation": _translation(args),
        "grace_period": args.grace_period,
        "log_level": args.log_level,
        "access_log": args.access_log,
        "http1_codec": args.http1_codec,
        "worker_command": tuple(shlex.split(args.worker_command)) if args.worker_command else (),
        "runtime_dir": args.runtime_dir,
        "standby_worker": args.standby_worker,
    }


def _translation(args: argparse.Namespace) -> TranslationSettings:
    return TranslationSettings(
        controller_class=args.controller_class,
        ingress_class=args.ingress_class,
        watch_without_class=args.watch_ingress_without_class,
        default_backend_service=args.default_backend_service,
        default_ssl_certificate=args.default_ssl_certificate,
        enable_ssl_passthrough=args.enable_ssl_passthrough,
        hsts=args.hsts,
        hsts_max_age=args.hsts_max_age,
        unsafe_fail_open=args.unsafe_fail_open,
        configmap=args.configmap,
    )


def standalone_settings(args: argparse.Namespace) -> StandaloneSettings:
    if args.demo_backend and not args.demo:
        raise ConfigError("--demo-backend only goes with --demo")
    return validate_standalone(
        StandaloneSettings(
            manifests=tuple(args.manifests or ()),
            snapshot=args.snapshot,
            watch_interval=args.watch_interval,
            allow_partial=args.allow_partial,
            demo_backends=tuple(args.demo_backend or DEMO_BACKENDS) if args.demo else (),
            **_serving(args),
        )
    )


def build_settings(args: argparse.Namespace) -> BuildSettings:
    fmt = args.format
    if fmt is None:
        fmt = "msgpack" if args.output.lower().endswith((".msgpack", ".mpk")) else "json"
    return validate_build(
        BuildSettings(
            manifests=tuple(args.manifests),
            output=args.output,
            format=fmt,
            strict=args.strict,
            translation=_translation(args),
        )
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr, format=LOG_FORMAT, level=getattr(logging, level.upper()), force=True
    )


def write_atomically(path: str, data: bytes) -> None:
    """Write a snapshot file so that a watcher never reads half of it.

    ``-`` is stdout.  A regular file (or a new path) is replaced atomically: a temporary
    file in the same directory, then a rename; through a symlink, the file it points to is
    replaced and the link stays.  A character device (``/dev/null``, a terminal) or a FIFO
    with a reader is written through, never replaced.  Anything else (a directory, a
    socket, a block device, a FIFO nobody reads) is refused with one line (ConfigError).
    """
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        st: os.stat_result | None = os.stat(path)  # follows symlinks: what would be written
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    if st is None or stat.S_ISREG(st.st_mode):
        _replace_file(path, os.path.realpath(path), data, st)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        _write_through(path, data, fifo=stat.S_ISFIFO(st.st_mode))
    elif stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"cannot write {path}: it is a directory")
    else:
        raise ConfigError(f"cannot write {path}: not a regular file, character device or FIFO")


def _replace_file(path: str, target: str, data: bytes, existing: os.stat_result | None) -> None:
    """Temporary file + rename in ``target``'s directory (``path`` is what the user named)."""
    directory, name = os.path.split(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory or ".")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if existing is not None:  # keep its mode; a new file stays 0600 (snapshots carry private keys)
            os.chmod(tmp, existing.st_mode & 0o777)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_through(path: str, data: bytes, *, fifo: bool) -> None:
    """Write into a character device or a FIFO as it is (no truncation, no rename)."""
    try:
        # A FIFO without a reader would block forever: O_NONBLOCK makes that ENXIO instead.
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | (os.O_NONBLOCK if fifo else 0))
    except OSError as exc:
        if fifo and exc.errno == errno.ENXIO:
            raise ConfigError(f"cannot write {path}: a FIFO with no reader") from None
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def run_build(settings: BuildSettings) -> int:
    from fastingress.snapshot.codec import encode_json, encode_msgpack
    from fastingress.supervisor.source import InputSpec, load

    loaded = load(InputSpec(manifests=settings.manifests, translation=settings.translation))
    errors = 0
    for diagnostic in loaded.diagnostics:
        print(str(diagnostic), file=sys.stderr)
        errors += diagnostic.severity == "error"
    data = encode_json(loaded.snapshot) if settings.format == "json" else encode_msgpack(loaded.snapshot)
    write_atomically(settings.output, data)
    if settings.output != "-":
        snapshot = loaded.snapshot
        print(
            f"wrote {settings.output} ({settings.format}, {len(snapshot.virtual_hosts)} virtual hosts, "
            f"{len(snapshot.upstreams)} upstreams, {len(loaded.diagnostics)} diagnostics, {errors} errors)",
            file=sys.stderr,
        )
    return 1 if settings.strict and errors else 0


def run_standalone_command(settings: StandaloneSettings) -> int:
    import trio

    from fastingress.supervisor import run_standalone
    from workers.process import set_title

    configure_logging(settings.log_level)
    set_title("fastingress: supervisor")
    return trio.run(run_standalone, settings)


def run_controller_command(settings: ControllerSettings) -> int:
    import trio

    from fastingress.k8s.controller import run_controller
    from workers.process import set_title

    configure_logging(settings.log_level)
    set_title("fastingress: supervisor")
    return trio.run(run_controller, settings)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["demo-backends"]:
        from fastingress.demo import main as demo_main

        return demo_main(arguments[1:], prog=f"{PROG} demo-backends")
    parser = build_parser()
    args = parser.parse_args(arguments)
    try:
        if args.command == "standalone":
            return run_standalone_command(standalone_settings(args))
        if args.command == "snapshot":
            return run_build(build_settings(args))
        if args.command == "check":
            from fastingress.check import run_check

            return run_check(check_settings(args))
        if args.command == "explain":
            from fastingress.explain_client import run_explain

            return run_explain(explain_settings(args))
        return run_controller_command(controller_settings(args))
    except FastIngressError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
