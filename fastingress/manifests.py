"""Read Kubernetes manifests from files and folders (the only I/O of the translation path).

``manifest_files`` expands the paths given on the command line; a path that does not
exist or cannot be read is a ``ConfigError`` (one clear line).  ``load_manifests``
parses multi-document YAML (JSON is YAML), flattens ``kind: List`` and skips empty
documents; a file that does not parse, or a document that is not a mapping, becomes a
Diagnostic (kind "File", name = the path) and every other file still loads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from fastingress.errors import ConfigError
from fastingress.translate.model import Diagnostic

SUFFIXES = (".yaml", ".yml", ".json")
_MAX_LIST_DEPTH = 4


def _walk_error(exc: OSError) -> None:
    raise ConfigError(f"cannot read directory {exc.filename}: {exc.strerror or exc}")


def _files_under(directory: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(directory, onerror=_walk_error, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.endswith(SUFFIXES) and not name.startswith("."):
                yield Path(root) / name


def manifest_files(paths: Sequence[str]) -> list[Path]:
    """Files named directly, plus *.yaml/*.yml/*.json under directories (recursive, sorted)."""
    result: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if not os.access(path, os.R_OK | os.X_OK):
                raise ConfigError(f"cannot read directory {raw}: permission denied")
            result.extend(sorted(_files_under(path)))
        elif path.is_file():
            if not os.access(path, os.R_OK):
                raise ConfigError(f"cannot read manifest file {raw}: permission denied")
            result.append(path)
        elif path.exists():
            raise ConfigError(f"manifest path {raw} is not a regular file or directory")
        else:
            raise ConfigError(f"manifest path {raw} does not exist")
    return result


def _file_diagnostic(path: Path, field: str, message: str) -> Diagnostic:
    return Diagnostic("error", "File", "", str(path), field, message)


def _flatten(
    doc: object, path: Path, field: str, depth: int
) -> tuple[list[dict[str, Any]], list[Diagnostic]]:
    if not isinstance(doc, dict):
        return [], [_file_diagnostic(path, field, f"not a Kubernetes object ({type(doc).__name__}); skipped")]
    items = doc.get("items")
    if doc.get("kind") == "List" and isinstance(items, list) and depth < _MAX_LIST_DEPTH:
        objects: list[dict[str, Any]] = []
        diagnostics: list[Diagnostic] = []
        for i, item in enumerate(items):
            found, problems = _flatten(item, path, f"{field}.items[{i}]", depth + 1)
            objects.extend(found)
            diagnostics.extend(problems)
        return objects, diagnostics
    return [doc], []


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"


def load_file(path: Path) -> tuple[list[dict[str, Any]], list[Diagnostic]]:
    """All objects of one file; a file that fails to parse yields only a diagnostic."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read manifest file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        return [], [_file_diagnostic(path, "", "not UTF-8 text; skipped")]
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        return [], [_file_diagnostic(path, "", _yaml_problem(exc) + "; file skipped")]
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        # PyYAML's constructors raise these for a few pathological inputs.
        return [], [_file_diagnostic(path, "", f"cannot parse ({type(exc).__name__}); file skipped")]
    objects: list[dict[str, Any]] = []
    diagnostics: list[Diagnostic] = []
    for index, doc in enumerate(documents):
        if doc is None:
            continue  # empty document ("---" with nothing, or only comments)
        found, problems = _flatten(doc, path, f"documents[{index}]", 0)
        objects.extend(found)
        diagnostics.extend(problems)
    return objects, diagnostics


def load_manifests(paths: Sequence[str]) -> tuple[list[dict[str, Any]], list[Diagnostic]]:
    """Objects of every manifest file under ``paths``, in file order, plus file diagnostics."""
    objects: list[dict[str, Any]] = []
    diagnostics: list[Diagnostic] = []
    for path in manifest_files(paths):
        found, problems = load_file(path)
        objects.extend(found)
        diagnostics.extend(problems)
    return objects, diagnostics


__all__ = ["SUFFIXES", "load_file", "load_manifests", "manifest_files"]
