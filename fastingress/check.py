"""``fastingress check PATH...``: lint manifests offline, the way the translator reads them.

Every diagnostic the translator (and the manifest loader) produces is reported with the file
its object came from; ``--strict`` makes warnings fail too; ``-o json`` is for CI.  The
manifests are translated together, as one cluster state, because Ingresses refer to
Services and Secrets and merge by host.

Exit status: 0 clean (or only warnings without ``--strict``), 1 findings that fail,
2 a usage error (a missing path).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from fastingress.manifests import load_file, manifest_files
from fastingress.settings import CheckSettings, translate_options
from fastingress.translate import Diagnostic, TranslateOptions, translate
from fastingress.translate.access import get_map, get_str
from fastingress.translate.cluster import CLUSTER_SCOPED, index_objects
from fastingress.translate.ingress import is_ours
from fastingress.translate.model import Sink

Address = tuple[str, str, str]  # kind, namespace, name


class Finding(msgspec.Struct, frozen=True):
    """One diagnostic, with the file its object was read from ("" if not known)."""

    file: str
    severity: str
    kind: str
    namespace: str
    name: str
    field: str
    message: str
    suggestion: str = ""

    def __str__(self) -> str:
        obj = f"{self.namespace}/{self.name}" if self.namespace else self.name
        where = f" {self.field}" if self.field else ""
        prefix = f"{self.file}: " if self.file and self.kind != "File" else ""
        return f"{prefix}{self.severity} {self.kind} {obj}{where}: {self.message}"


class Summary(msgspec.Struct, frozen=True):
    files: int
    objects: int
    ingresses: int
    other_class: int  # Ingresses of another class: not checked (see --ingress-class)
    errors: int
    warnings: int
    infos: int
    failed: bool


class Report(msgspec.Struct, frozen=True):
    summary: Summary
    diagnostics: tuple[Finding, ...]


def _address(obj: Mapping[str, Any]) -> Address:
    kind = get_str(obj, "kind") or ""
    metadata = get_map(obj, "metadata")
    namespace = "" if kind in CLUSTER_SCOPED else (get_str(metadata, "namespace") or "default")
    return kind, namespace, get_str(metadata, "name") or ""


def _load(paths: Sequence[str]) -> tuple[list[dict[str, Any]], dict[Address, str], list[Diagnostic], int]:
    """Objects, the file of each (the first that defines it), file diagnostics, file count."""
    objects: list[dict[str, Any]] = []
    origin: dict[Address, str] = {}
    problems: list[Diagnostic] = []
    files = manifest_files(paths)
    for path in files:
        found, diagnostics = load_file(path)
        problems.extend(diagnostics)
        for obj in found:
            origin.setdefault(_address(obj), str(path))
        objects.extend(found)
    return objects, origin, problems, len(files)


def _other_class(objects: list[dict[str, Any]], options: TranslateOptions) -> tuple[int, int]:
    cluster = index_objects(objects, Sink())
    others = sum(
        1 for ref, ingress in cluster.ingresses if not is_ours(ref, ingress, cluster, options, Sink())
    )
    return len(cluster.ingresses), others


def check(settings: CheckSettings) -> Report:
    """Lint ``settings.paths`` (ConfigError, one line, if a path cannot be read)."""
    options = translate_options(settings.translation)
    objects, origin, problems, files = _load(list(settings.paths))
    result = translate(objects, options)
    findings = sorted((
        Finding(d.name if d.kind == "File" else origin.get((d.kind, d.namespace, d.name), ""),
                d.severity, d.kind, d.namespace, d.name, d.field, d.message, d.suggestion)
        for d in (*problems, *result.diagnostics)
    ), key=lambda f: f.file)  # by file, the translator's order within a file
    counts = {s: sum(1 for f in findings if f.severity == s) for s in ("error", "warning", "info")}
    ingresses, other_class = _other_class(objects, options)
    failed = counts["error"] > 0 or (settings.strict and counts["warning"] > 0)
    summary = Summary(
        files, len(objects), ingresses, other_class,
        counts["error"], counts["warning"], counts["info"], failed,
    )
    return Report(summary, tuple(findings))


def render_text(report: Report) -> str:
    lines = [str(f) for f in report.diagnostics]
    s = report.summary
    lines.append(
        f"{s.files} files, {s.objects} objects, {s.ingresses} Ingresses: "
        f"{s.errors} errors, {s.warnings} warnings, {s.infos} infos"
    )
    if s.other_class:
        lines.append(
            f"{s.other_class} Ingresses belong to another class and were not checked "
            "(--ingress-class NAME checks them, e.g. --ingress-class nginx)"
        )
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> bytes:
    return msgspec.json.encode(report) + b"\n"


def run_check(settings: CheckSettings) -> int:
    import sys

    report = check(settings)
    if settings.output == "json":
        sys.stdout.buffer.write(render_json(report))
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(render_text(report))
    return 1 if report.summary.failed else 0


__all__ = ["Finding", "Report", "Summary", "check", "render_json", "render_text", "run_check"]
