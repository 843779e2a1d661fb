"""README's ingress-nginx compatibility table, generated from the registries (so it cannot drift).

Every annotation (``fastingress.translate.ann.REGISTRY``) and every controller
ConfigMap key (``fastingress.translate.configmap.REGISTRY``) is one row: its status in
fastingress and what differs from ingress-nginx.  ``python -m fastingress.compat --write
README.md`` rewrites the table between its markers; ``tests/unit/test_compat_table.py`` fails
when README's table is not the one the registries give.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastingress.translate import annotations as ann
from fastingress.translate import configmap

BEGIN = "<!-- compat-table:begin (generated: python -m fastingress.compat --write README.md) -->"
END = "<!-- compat-table:end -->"

# What differs from ingress-nginx for annotations fastingress implements (the registry holds
# no prose for them).  Keys without an entry behave as ingress-nginx documents.
ANNOTATION_NOTES: dict[str, str] = {
    "proxy-ssl-server-name": (
        "default `on` (ingress-nginx: `off`), so `upstream-vhost` reaches the backend's TLS"
    ),
    "ssl-redirect": "the redirect is a 308 (see the ConfigMap's `http-redirect-code`)",
    "force-ssl-redirect": "308 (see the ConfigMap's `http-redirect-code`)",
    "ssl-passthrough": "needs `--enable-ssl-passthrough`",
    "backend-protocol": "`FCGI` is refused (502)",
    "enable-global-auth": "`\"false\"` exempts the Ingress from the ConfigMap's `global-auth-url`",
}

_ANNOTATION_STATUS = {
    "implemented": "supported",
    "closed": "not yet: **fails closed** (503)",
    "canary": "supported (see \"Canaries\")",
    "snippet": "refused: never executed (fails closed when it holds access rules)",
    "unsupported": "not yet (warning)",
    "inert": "no effect (info)",
    "removed": "removed from ingress-nginx (warning)",
}
_CONFIGMAP_STATUS = {
    "implemented": "supported",
    "closed": "not yet: **fails closed** (503)",
    "snippet": "refused: never executed (fails closed when it holds access rules)",
    "unsupported": "not yet (warning)",
    "inert": "no effect (info)",
    "removed": "removed from ingress-nginx (warning)",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def annotation_row(name: str) -> tuple[str, str, str]:
    row = ann.REGISTRY[name]
    status = _ANNOTATION_STATUS[row.status]
    if row.guard and row.status == "implemented":
        status = "supported (a bad value fails closed)"
    note = ANNOTATION_NOTES.get(name, "")
    if row.status == "removed":
        note = f"use `{row.note}`" if row.note else ""
    elif row.note and row.status != "implemented":
        note = row.note
    return (f"`{name}`", status, note)


def configmap_row(name: str) -> tuple[str, str, str]:
    row = configmap.REGISTRY[name]
    status = _CONFIGMAP_STATUS[row.status]
    if row.pending:
        status = f"not yet (warning): {row.pending}"
    if row.status == "unsupported" and row.same:
        status = "not configurable (info when left at ingress-nginx's default, else warning)"
    note = row.note
    if row.status == "removed" and row.default:
        note = f"use `{row.default}`" + (f"; {note}" if note else "")
    return (f"`{name}`", status, note)


def render() -> str:
    lines = [
        BEGIN,
        "",
        "| key | where | in fastingress | differences and notes |",
        "|---|---|---|---|",
    ]
    for name in ann.NAMES:
        key, status, note = annotation_row(name)
        lines.append(f"| {key} | annotation | {_cell(status)} | {_cell(note)} |")
    for name in configmap.NAMES:
        key, status, note = configmap_row(name)
        lines.append(f"| {key} | ConfigMap | {_cell(status)} | {_cell(note)} |")
    lines += ["", END]
    return "\n".join(lines)


def replace_table(text: str) -> str:
    """``text`` (README) with the table between the markers replaced (ValueError: no markers)."""
    start = text.find(BEGIN)
    end = text.find(END)
    if start == -1 or end == -1 or end < start:
        raise ValueError("README has no compat-table markers")
    return text[:start] + render() + text[end + len(END):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastingress.compat", description=__doc__)
    parser.add_argument("--write", metavar="README", help="rewrite the table in this file (else print it)")
    args = parser.parse_args(argv)
    if args.write is None:
        sys.stdout.write(render() + "\n")
        return 0
    path = Path(args.write)
    path.write_text(replace_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
