"""Command line of ``loadtests/bench`` (see loadtests/README.md)."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from . import cases
from .configs import parse_size
from .load import PROTOCOLS
from .procs import BenchError
from .report import MARKDOWN_HEADER, markdown_row, print_outcome
from .runner import Outcome, default_profile_dir, run_case

USAGE_EXAMPLES = """\
examples:
  loadtests/bench --connections 50                      small keep-alive requests
  loadtests/bench --protocol http-close --connections 50
  loadtests/bench --body 1m --connections 10            1 MiB responses (--upload 1m: 1 MiB POSTs)
  loadtests/bench --protocol tls --connections 50       HTTP/1.1 over TLS 1.3, keep-alive
  loadtests/bench --protocol tls-handshake --connections 50
  loadtests/bench --protocol h2 --connections 4 --streams 8
  loadtests/bench --workers 2 --threads 2 --connections 50
  loadtests/bench --profile --rounds 1 --duration 10    py-spy profile of one fastingress worker
  loadtests/bench --suite                               every line of issue 7's table, one table
"""


def size_arg(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < 1:
        raise argparse.ArgumentTypeError("a size must be at least 1 byte")
    return size


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loadtests/bench", epilog=USAGE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="fastingress vs nginx as reverse proxies to the same upstream, under the same load, "
                    "side by side: req/s, p50/p99 latency and CPU per request, with ratios.")
    add = parser.add_argument
    add("--rounds", type=int, default=3, help="interleaved rounds per target (default 3)")
    add("--duration", type=float, default=10.0, help="seconds per round (default 10)")
    add("--warmup", type=float, default=2.0, help="warm-up seconds per target (default 2)")
    add("--connections", type=int, default=32, help="client connections (default 32)")
    add("--threads", type=int, default=1, help="client threads (wrk -t, h2load -t; default 1)")
    add("--workers", type=int, default=1, help="fastingress --workers and nginx worker_processes (default 1)")
    add("--upstream-workers", type=int, default=1, help="worker_processes of the upstream nginx (default 1)")
    add("--protocol", choices=tuple(PROTOCOLS), default="http1",
        help="; ".join(f"{p.name}: {p.about}" for p in PROTOCOLS.values()))
    add("--streams", type=int, default=10,
        help="h2/h2c: concurrent streams per connection (h2load -m, default 10)")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--body", type=size_arg, metavar="SIZE",
                      help="download: the upstream answers SIZE bytes (64k, 1m, ...) instead of 24")
    body.add_argument("--upload", type=size_arg, metavar="SIZE",
                      help="upload: every request POSTs SIZE bytes (the upstream answers 10 bytes)")
    add("--nginx-set", action="append", default=[], metavar="DIRECTIVE",
        help="a directive for the nginx proxy's location, replacing the ingress-nginx default of the same "
             "name or added (repeatable), e.g. --nginx-set 'client_body_buffer_size 1m'")
    add("--only", choices=("fastingress", "nginx"), help="benchmark one proxy only")
    add("--fastingress", help="fastingress executable (default: .venv/bin/fastingress, then PATH)")
    add("--json", type=Path, help="also write every round and the summary (every line with --suite) as JSON")
    add("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    add("--profile", type=Path, nargs="?", const=Path(), metavar="DIR",
        help="profile the single fastingress worker during the rounds (fastingress only, --workers 1); "
             "files and the top-costs summary go to DIR (default loadtests/results/profile-<time>)")
    add("--profiler", choices=("py-spy", "cprofile"), default="py-spy",
        help="with --profile: py-spy sampling from outside (default), or cProfile inside the worker")
    add("--profile-rate", type=int, default=100, help="py-spy samples per second (default 100)")
    add("--suite", nargs="?", const="all", metavar="NAMES",
        help="run every line of issue 7's table in turn (or only NAMES, comma-separated: "
             f"{','.join(cases.SUITE_NAMES)}) and print one combined table with each line's command")
    add("--dry-run", action="store_true", help="with --suite: print each line's command, run nothing")
    return parser


def validate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """A one-line complaint about the options, or None."""
    counts = ("rounds", "connections", "threads", "workers", "upstream_workers", "streams", "profile_rate")
    for name in counts:
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1"
    if args.duration <= 0 or args.warmup < 0:
        return "--duration must be > 0 and --warmup >= 0"
    if args.connections < args.threads:
        return "--connections must be >= --threads"
    if args.profile is not None:
        if args.workers != 1:
            return "--profile profiles the one worker of --workers 1"
        if args.only == "nginx":
            return "--profile profiles fastingress: drop --only nginx"
    if args.suite is not None:
        defaults = parser.parse_args([])
        given = [f"--{name}" for name in cases.CASE_OPTIONS if getattr(args, name) != getattr(defaults, name)]
        if given:
            return f"--suite sets {', '.join(given)} per line itself; leave them out"
    elif args.dry_run:
        return "--dry-run goes with --suite"
    return None


def without_output(argv: list[str]) -> list[str]:
    """argv less --json FILE (where the figures go does not change them)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--json":
            skip = True
        elif not arg.startswith("--json="):
            kept.append(arg)
    return kept


def run_one(args: argparse.Namespace, argv: list[str]) -> int:
    if args.profile is not None:
        args.only = "fastingress"
        if args.profile == Path():
            args.profile = default_profile_dir()
    command = shlex.join(["loadtests/bench", *without_output(argv)])
    outcome = run_case(args, cases.case_label(args), command)
    print_outcome(outcome, args.workers, args.threads, args.upstream_workers, args.rounds)
    if args.json:
        args.json.write_text(json.dumps(
            {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
            | outcome.as_json(), indent=2))
    return 0


def run_suite(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        lines = cases.suite_lines(args.suite)
    except ValueError as exc:
        print(f"loadtests/bench: error: {exc}", file=sys.stderr)
        return 2
    common = cases.common_argv(args, parser.parse_args([]))
    plan = [(line, [*line.argv, *common]) for line in lines]
    if args.dry_run:
        for line, argv in plan:
            print(f"{line.name:<14} {shlex.join(['loadtests/bench', *argv])}")
        return 0
    outcomes: list[tuple[str, Outcome]] = []
    for number, (line, argv) in enumerate(plan, 1):
        line_args = parser.parse_args(argv)
        label = cases.case_label(line_args)
        command = shlex.join(["loadtests/bench", *argv])
        print(f"bench: suite line {number}/{len(plan)}: {line.name}: {command}", file=sys.stderr)
        try:
            outcome = run_case(line_args, label, command)
        except (BenchError, subprocess.CalledProcessError) as exc:  # the other lines still run
            print(f"loadtests/bench: {line.name}: error: {exc}", file=sys.stderr)
            outcome = Outcome(label, command, error=str(exc) or type(exc).__name__)
        else:
            print_outcome(outcome, line_args.workers, line_args.threads, line_args.upstream_workers,
                          line_args.rounds)
        outcomes.append((line.name, outcome))
    print(f"\nsuite: {len(plan)} lines, {args.rounds} interleaved rounds x {args.duration:g} s each, "
          "medians of the rounds (CPU/req: total CPU / total requests)\n")
    print(MARKDOWN_HEADER)
    for _, outcome in outcomes:
        print(markdown_row(outcome))
    for text in cases.scaling_lines({name: o.summary for name, o in outcomes if not o.error}):
        print(f"\n{text}")
    if args.json:
        args.json.write_text(json.dumps({"suite": [{"name": name} | o.as_json() for name, o in outcomes]},
                                        indent=2))
    return 1 if any(o.error for _, o in outcomes) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    complaint = validate(args, parser)
    if complaint:
        print(f"loadtests/bench: error: {complaint}", file=sys.stderr)
        return 2
    try:
        return run_suite(args, parser) if args.suite is not None else run_one(args, argv)
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"loadtests/bench: error: {exc}", file=sys.stderr)
        return 1
