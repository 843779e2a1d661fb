"""Where the configuration comes from: the ``ConfigSource`` interface and the file source.

The supervisor is indifferent to where snapshots come from: it asks a ``ConfigSource`` for
the initial configuration, runs its ``run`` task (which calls back ``trigger(reason)``
whenever the source wants a rebuild), and calls ``reload`` for each trigger and for
SIGHUP.  ``FileSource`` (standalone mode) reads manifests (translated) or a snapshot file
and polls the files; the Kubernetes controller (``fastingress.k8s.controller``) is the other.

The file functions below are synchronous and blocking (file I/O, translation); the
supervisor runs them in a worker thread.  ``fingerprint`` is what the file watcher compares
between polls.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
import trio

from fastingress.errors import FastIngressError
from fastingress.settings import TranslationSettings
from fastingress.snapshot.codec import encode_msgpack, load_file
from fastingress.snapshot.schema import Snapshot


class DiagnosticLike(Protocol):
    """What the supervisor needs of ``fastingress.translate.Diagnostic``."""

    @property
    def severity(self) -> str: ...


class InputSpec(msgspec.Struct, frozen=True):
    """Exactly one of ``manifests`` / ``snapshot``."""

    manifests: tuple[str, ...] = ()
    snapshot: str | None = None
    translation: TranslationSettings = TranslationSettings()

    def describe(self) -> str:
        if self.snapshot is not None:
            return f"snapshot file {self.snapshot}"
        return "manifests " + " ".join(self.manifests)


@dataclass(frozen=True, slots=True)
class Loaded:
    snapshot: Snapshot
    payload: bytes  # msgpack, what gets published
    diagnostics: tuple[DiagnosticLike, ...] = ()


# One entry per input file: (path, mtime_ns, size, inode); or ("!error", message) when the
# set of files cannot even be listed (a vanished --manifests path).
FileState = tuple[str, int, int, int] | tuple[str, str]
Fingerprint = tuple[FileState, ...]


def input_files(spec: InputSpec) -> list[Path]:
    """The files the configuration is read from (ConfigError if a named path is gone)."""
    if spec.snapshot is not None:
        return [Path(spec.snapshot)]
    from fastingress.manifests import manifest_files

    return manifest_files(list(spec.manifests))


def fingerprint(spec: InputSpec) -> Fingerprint:
    """A cheap summary of the inputs that changes when any file is edited, added or removed."""
    try:
        files = input_files(spec)
    except FastIngressError as exc:
        return (("!error", str(exc)),)
    states: list[FileState] = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError as exc:
            states.append((str(path), exc.strerror or "unreadable"))
            continue
        states.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(states)


def load(spec: InputSpec) -> Loaded:
    """Read and (for manifests) translate the inputs.  Raises FastIngressError (one line) on failure."""
    if spec.snapshot is not None:
        snapshot = load_file(spec.snapshot)
        return Loaded(snapshot, encode_msgpack(snapshot))
    return _load_manifests(spec.manifests, spec.translation)


def _load_manifests(paths: Sequence[str], translation: TranslationSettings) -> Loaded:
    from fastingress.manifests import load_manifests
    from fastingress.settings import translate_options
    from fastingress.translate import translate

    objects, file_diagnostics = load_manifests(list(paths))
    result = translate(objects, translate_options(translation))
    diagnostics: tuple[DiagnosticLike, ...] = (*file_diagnostics, *result.diagnostics)
    return Loaded(result.snapshot, encode_msgpack(result.snapshot), diagnostics)


def count_errors(diagnostics: Sequence[DiagnosticLike]) -> int:
    return sum(1 for d in diagnostics if d.severity == "error")


Trigger = Callable[[str], Awaitable[None]]

DEBOUNCE_MAX_ROUNDS = 10


class ConfigSource(Protocol):
    """What the supervisor needs of a configuration source."""

    def describe(self) -> str:
        """For the log: where the configuration comes from."""
        ...

    async def initial(self) -> Loaded:
        """The first configuration (raise FastIngressError, one line, if there is none)."""
        ...

    async def reload(self) -> Loaded:
        """The configuration now (raise FastIngressError to keep the one in force)."""
        ...

    async def run(self, trigger: Trigger) -> None:
        """Watch for changes forever; ``await trigger(reason)`` to have the supervisor reload."""
        ...

    def readiness(self) -> tuple[bool, str]:
        """(False, why) when the source makes the whole process not ready; (True, "") else."""
        ...

    def status(self) -> dict[str, Any]:
        """Extra fields for the admin /status JSON."""
        ...

    def metrics(self) -> list[str]:
        """Extra lines (families with HELP/TYPE) for /metrics."""
        ...


class FileSource:
    """Manifests or a snapshot file, polled every ``interval`` seconds (standalone mode)."""

    def __init__(self, spec: InputSpec, interval: float) -> None:
        self.spec = spec
        self.interval = interval
        self.fingerprint: Fingerprint = ()

    def describe(self) -> str:
        return self.spec.describe()

    async def initial(self) -> Loaded:
        self.fingerprint = await trio.to_thread.run_sync(fingerprint, self.spec)
        return await trio.to_thread.run_sync(load, self.spec)

    async def reload(self) -> Loaded:
        new_fingerprint = await trio.to_thread.run_sync(fingerprint, self.spec, abandon_on_cancel=True)
        try:
            return await trio.to_thread.run_sync(load, self.spec, abandon_on_cancel=True)
        finally:
            self.fingerprint = new_fingerprint

    async def run(self, trigger: Trigger) -> None:
        """Poll the input files; reload when they changed and then held still for one interval."""
        interval = self.interval
        while True:
            await trio.sleep(interval)
            current = await trio.to_thread.run_sync(fingerprint, self.spec, abandon_on_cancel=True)
            if current == self.fingerprint:
                continue
            for _ in range(DEBOUNCE_MAX_ROUNDS):
                await trio.sleep(interval)
                again = await trio.to_thread.run_sync(fingerprint, self.spec, abandon_on_cancel=True)
                if again == current:
                    break
                current = again
            await trigger("input files changed")

    def readiness(self) -> tuple[bool, str]:
        return True, ""

    def status(self) -> dict[str, Any]:
        return {}

    def metrics(self) -> list[str]:
        return []
