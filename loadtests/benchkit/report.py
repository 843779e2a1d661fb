"""Printing outcomes: the per-round table, the CPU split per process, and markdown rows."""

from __future__ import annotations

import os

from .runner import Outcome

MARKDOWN_HEADER = ("| load | fastingress | nginx | fastingress / nginx | command |\n"
                   "|---|---|---|---|---|")


def print_table(outcome: Outcome) -> None:
    header = (f"{'target':<12} {'round':>5} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'CPU us/req':>10} {'errors':>7}")
    print(header)
    print("-" * len(header))
    for r in outcome.results:
        print(f"{r.target:<12} {r.round:>5} {r.rps:>10.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
              f"{r.cpu_us_per_req:>10.1f} {r.errors:>7}")
    print("-" * len(header))
    for target, s in outcome.summary.items():
        print(f"{target:<12} {'all':>5} {s['rps']:>10.0f} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} "
              f"{s['cpu_us_per_req']:>10.1f} {int(s['errors']):>7}")
    if outcome.ratio:
        q = outcome.ratio
        print(f"{'fi/nginx':<12} {'ratio':>5} {q['rps']:>10.2f} {q['p50_ms']:>8.2f} "
              f"{q['p99_ms']:>8.2f} {q['cpu_us_per_req']:>10.2f}")


def print_split(outcome: Outcome) -> None:
    """Where each proxy's CPU went, process by process (shows how --workers N spread the load)."""
    for target, split in outcome.cpu_split.items():
        shown = ", ".join(f"{name} {share:.0%}" for name, share in split.items() if share >= 0.005)
        print(f"CPU by process, {target}: {shown or 'none measured'}")


def cell(summary: dict[str, float]) -> str:
    errors = f", {int(summary['errors'])} errors" if summary.get("errors") else ""
    return (f"{summary['rps']:,.0f} req/s, {summary['cpu_us_per_req']:,.0f} µs CPU/req, "
            f"p99 {summary['p99_ms']:.2f} ms{errors}")


def ratio_cell(ratio: dict[str, float]) -> str:
    if not ratio:
        return "-"
    return f"{ratio['rps']:.2f}x req/s, {ratio['cpu_us_per_req']:.2f}x CPU, p99 {ratio['p99_ms']:.2f}x"


def markdown_row(outcome: Outcome) -> str:
    if outcome.error:
        return f"| {outcome.label} | failed: {outcome.error.splitlines()[0]} | | | `{outcome.command}` |"
    fi, ng = outcome.summary.get("fastingress"), outcome.summary.get("nginx")
    return (f"| {outcome.label} | {cell(fi) if fi else '-'} | {cell(ng) if ng else '-'} | "
            f"{ratio_cell(outcome.ratio)} | `{outcome.command}` |")


def sharing_note(workers: int, threads: int, upstream_workers: int) -> str:
    """A line saying the load generator and the upstream share the CPUs with the proxy, when they do."""
    cpus = os.cpu_count() or 1
    busy = workers + threads + upstream_workers
    if busy <= cpus:
        return ""
    return (f"note: {cpus} CPUs shared by the proxy ({workers} worker(s)), the load generator ({threads} "
            f"thread(s)) and the upstream ({upstream_workers} worker(s)): req/s is bounded by the machine, "
            "not only the proxy; CPU us/req is the fairer measure")


def print_outcome(outcome: Outcome, workers: int, threads: int, upstream_workers: int, rounds: int) -> None:
    print(f"\n{outcome.label}: {outcome.load} x {rounds} rounds, {os.cpu_count()} CPUs")
    if outcome.tls:
        print("TLS: " + "; ".join(f"{name} {version}" for name, version in outcome.tls.items()))
    print()
    print_table(outcome)
    print()
    print_split(outcome)
    note = sharing_note(workers, threads, upstream_workers)
    if note:
        print(note)
    print(f"\n{MARKDOWN_HEADER}\n{markdown_row(outcome)}")
    if outcome.profile:
        print(f"\n{outcome.profile}")
