"""Names for runs, and the suite: one run per row of issue 7's "Measure" table.

Each suite line is a plain ``loadtests/bench`` command line, so every row of the combined table comes
with the command that reproduces it alone.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from .configs import human_size

PHRASES = {
    "http1": "small keep-alive",
    "http-close": "new connection per request (Connection: close)",
    "tls": "TLS keep-alive (HTTP/1.1 over TLS 1.3)",
    "tls-handshake": "new TLS connections (ECDSA P-256, no resumption)",
    "h2c": "HTTP/2 h2c (h2load)",
    "h2": "h2 over TLS (h2load, ALPN h2)",
}


def case_label(args: argparse.Namespace) -> str:
    """'small keep-alive, c50', '1 MiB bodies (download), c10', 'h2 over TLS ..., c4 x 8 streams' ..."""
    what = PHRASES[args.protocol]
    if args.body is not None or args.upload is not None:
        size = args.upload if args.upload is not None else args.body
        what = f"{human_size(size)} {'uploads (POST)' if args.upload is not None else 'bodies (download)'}"
        if args.protocol != "http1":
            what += f", {PHRASES[args.protocol]}"
    what += f", c{args.connections}"
    if args.protocol in ("h2", "h2c"):
        what += f" x {args.streams} streams"
    if args.threads > 1:
        what += f", {args.threads} client threads"
    return what + (f", {args.workers} workers each" if args.workers > 1 else ", 1 worker each")


@dataclass(frozen=True)
class SuiteLine:
    name: str
    argv: tuple[str, ...]  # loadtests/bench options of this line (the common ones are added)
    issue_line: str  # the row of issue 7's table it measures


SUITE = (
    SuiteLine("small", ("--connections", "50"), "small keep-alive, c50"),
    SuiteLine("close", ("--protocol", "http-close", "--connections", "50"),
              "new connection per request, c50"),
    SuiteLine("body-64k", ("--body", "64k", "--connections", "10"), "64 KiB and 1 MiB bodies, c10"),
    SuiteLine("body-1m", ("--body", "1m", "--connections", "10"), "64 KiB and 1 MiB bodies, c10"),
    SuiteLine("upload-64k", ("--upload", "64k", "--connections", "10"), "64 KiB and 1 MiB bodies, c10"),
    SuiteLine("upload-1m", ("--upload", "1m", "--connections", "10"), "64 KiB and 1 MiB bodies, c10"),
    SuiteLine("tls", ("--protocol", "tls", "--connections", "50"), "TLS keep-alive, c50"),
    SuiteLine("tls-handshake", ("--protocol", "tls-handshake", "--connections", "50"),
              "new TLS connections, ECDSA P-256"),
    SuiteLine("h2", ("--protocol", "h2", "--connections", "4", "--streams", "8"), "h2 over TLS (h2load)"),
    SuiteLine("workers-1", ("--workers", "1", "--threads", "2", "--connections", "50"), "2 workers vs 1"),
    SuiteLine("workers-2", ("--workers", "2", "--threads", "2", "--connections", "50"), "2 workers vs 1"),
)
SUITE_NAMES = tuple(line.name for line in SUITE)

# Options a suite line sets itself: refused together with --suite (they would be overridden).
CASE_OPTIONS = ("protocol", "connections", "threads", "streams", "workers", "body", "upload", "profile")


def suite_lines(selection: str) -> list[SuiteLine]:
    """'all' or a comma-separated list of names (ValueError naming the unknown ones)."""
    if selection == "all":
        return list(SUITE)
    wanted = [name.strip() for name in selection.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in SUITE_NAMES]
    if unknown or not wanted:
        raise ValueError(f"unknown suite line(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from: {', '.join(SUITE_NAMES)}")
    return [line for line in SUITE if line.name in wanted]


def common_argv(args: argparse.Namespace, defaults: argparse.Namespace) -> list[str]:
    """The options of this invocation every suite line shares (rounds, duration, ...)."""
    argv = ["--rounds", str(args.rounds), "--duration", f"{args.duration:g}"]
    if args.warmup != defaults.warmup:
        argv += ["--warmup", f"{args.warmup:g}"]
    if args.upstream_workers != defaults.upstream_workers:
        argv += ["--upstream-workers", str(args.upstream_workers)]
    for directive in args.nginx_set:
        argv += ["--nginx-set", directive]
    if args.only:
        argv += ["--only", args.only]
    if args.fastingress:
        argv += ["--fastingress", args.fastingress]
    if args.keep:
        argv.append("--keep")
    return argv


def scaling_lines(outcomes: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """'2 workers vs 1' from the workers-1 and workers-2 summaries, when both ran."""
    one, two = outcomes.get("workers-1"), outcomes.get("workers-2")
    if not one or not two:
        return []
    found = []
    for target in ("fastingress", "nginx"):
        if target in one and target in two and one[target]["rps"] and one[target]["cpu_us_per_req"]:
            found.append(f"{target} x{two[target]['rps'] / one[target]['rps']:.2f} req/s "
                         f"(CPU/req x{two[target]['cpu_us_per_req'] / one[target]['cpu_us_per_req']:.2f})")
    return [f"2 workers vs 1 (same client, wrk -t2 -c50): {'; '.join(found)}"] if found else []
