"""Where the configuration comes from: the ``ConfigSource`` interface and the file source.

The supervisor is indifferent to where snapshots come from: it asks a ``ConfigSource`` for
the initial configuration, runs its ``run`` task (which calls back ``trigger(reason)``
whenever the source wants a rebuild), and calls ``reload`` for each trigger and for
SIGHUP.  ``FileSource`` (standalone mode) reads manifests (translated) or a snapshot file
and polls the files; the Kubernetes controller (``fastingress.k8s.controller``) is the other.

The file functions below are synchronous and blocking (file I/O, translation); the
supervisor runs them in a worker thread.  ``fingerprint`` is what the file watcher compares
between polls.

Last good version, per file
---------------------------
A manifest file that stops loading (a YAML syntax error, a document that is not an object,
not UTF-8, unreadable) must not take its routes down: ``ManifestFiles`` keeps, per file, the
objects of its last good read (a ``FileRecord``) and translates those in its place, while
every other file's changes still take effect.  Each such file is one line in
``Loaded.failures``: the supervisor logs it, counts the reload as failed
(``fastingress_config_last_reload_successful`` 0, the failure counter +1) and ``/status``
lists the file with its error.  At start-up there is no good version to keep: a failing file
stops the start (exit 2) unless ``--allow-partial`` is given.  A file that is *deleted* is
not a failure: its objects go away, as the user asked.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec
import trio

from fastingress.errors import ConfigError, FastIngressError
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
    allow_partial: bool = False  # start even if a manifest file fails to load (it is left out)

    def describe(self) -> str:
        if self.snapshot is not None:
            return f"snapshot file {self.snapshot}"
        return "manifests " + " ".join(self.manifests)


@dataclass(frozen=True, slots=True)
class Loaded:
    snapshot: Snapshot
    payload: bytes  # msgpack, what gets published
    diagnostics: tuple[DiagnosticLike, ...] = ()
    # One line per input that did not load and is held at its last good version (or left
    # out, when it never loaded): the reload counts as failed, the rest still applies.
    failures: tuple[str, ...] = ()


Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One manifest file: the objects in force for it and whether its current content loads."""

    path: str
    objects: tuple[Obj, ...]  # of the last good read (none if it never loaded)
    diagnostics: tuple[DiagnosticLike, ...]  # of that read (warnings about its documents)
    loaded_at: float  # time.time() of the last good read; 0.0: never loaded
    error: str = ""  # why the file's current content is not in force ("" = it is)

    def failure(self) -> str:
        if not self.error:
            return ""
        if self.loaded_at:
            held = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))
            return (
                f"manifest file {self.path}: {self.error}; keeping its last good version "
                f"({len(self.objects)} objects, loaded {held})"
            )
        return f"manifest file {self.path}: {self.error}; left out (it never loaded)"

    def status(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": not self.error,
            "error": self.error,
            "objects": len(self.objects),
            "last_good": self.loaded_at,
        }


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


def read_manifest_file(path: Path) -> tuple[list[Obj], list[DiagnosticLike], str]:
    """(objects, diagnostics, error): ``error`` is "" when the whole file loaded, else one line
    saying why not (unreadable, not UTF-8, invalid YAML, a document that is not an object)."""
    from fastingress.manifests import load_file as load_manifest_file

    try:
        objects, diagnostics = load_manifest_file(path)
    except ConfigError as exc:
        return [], [], str(exc).removeprefix(f"cannot read manifest file {path}: ")
    problems = [d for d in diagnostics if d.severity == "error"]
    if problems:
        first = problems[0]
        message = first.message.removesuffix("; file skipped").removesuffix("; skipped")
        where = f"{first.field}: " if first.field else ""
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return [], [], f"{where}{message}{more}"
    return objects, list(diagnostics), ""


class ManifestFiles:
    """The manifest files of one ``InputSpec``, each with its last good version (see above)."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.records: dict[str, FileRecord] = {}  # replaced whole by each load (read by /status)
        self.memory: object = None  # the controller ConfigMap's last good values (translate.configmap)

    def load(self) -> Loaded:
        """Read every file again; a failing one keeps its last good objects.  Blocking."""
        from fastingress.manifests import manifest_files

        records: dict[str, FileRecord] = {}
        for path in manifest_files(list(self.spec.manifests)):  # ConfigError: a named path is gone
            key = str(path)
            objects, diagnostics, error = read_manifest_file(path)
            if not error:
                records[key] = FileRecord(key, tuple(objects), tuple(diagnostics), time.time())
                continue
            previous = self.records.get(key)
            if previous is None:
                records[key] = FileRecord(key, (), (), 0.0, error)
            else:
                records[key] = dataclasses.replace(previous, error=error)
        objects = [obj for record in records.values() for obj in record.objects]
        file_diagnostics = [d for record in records.values() for d in record.diagnostics]
        if self.memory is None:
            from fastingress.translate.configmap import ConfigMemory

            self.memory = ConfigMemory()
        loaded = _translate(objects, file_diagnostics, self.spec.translation, self.memory)
        self.records = records
        failures = tuple(r.failure() for r in records.values() if r.error)
        return Loaded(loaded.snapshot, loaded.payload, loaded.diagnostics, failures)

    def status(self) -> list[dict[str, Any]]:
        return [record.status() for record in self.records.values()]


def _load_manifests(paths: Sequence[str], translation: TranslationSettings) -> Loaded:
    from fastingress.manifests import load_manifests

    objects, file_diagnostics = load_manifests(list(paths))
    return _translate(objects, file_diagnostics, translation)


def _translate(
    objects: list[Obj],
    file_diagnostics: Sequence[DiagnosticLike],
    translation: TranslationSettings,
    memory: object = None,
) -> Loaded:
    from fastingress.settings import translate_options
    from fastingress.translate import translate
    from fastingress.translate.configmap import ConfigMemory

    result = translate(
        objects, translate_options(translation), memory if isinstance(memory, ConfigMemory) else None
    )
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

    async def prepare(self) -> None:
        """Quick checks before anything is bound (raise FastIngressError, one line).  A source
        whose initial load is quick (files) does it here, so that a bad input is one line
        and exit 2 with nothing else logged."""
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

    def endpoint(self, path: str) -> tuple[int, str] | None:
        """An admin path of the source's own: (status, text body), or None (404)."""
        ...


class FileSource:
    """Manifests or a snapshot file, polled every ``interval`` seconds (standalone mode)."""

    def __init__(self, spec: InputSpec, interval: float) -> None:
        self.spec = spec
        self.interval = interval
        self.fingerprint: Fingerprint = ()
        self.files = ManifestFiles(spec) if spec.snapshot is None else None
        self._initial: Loaded | None = None

    def describe(self) -> str:
        return self.spec.describe()

    def _load(self) -> Loaded:
        return self.files.load() if self.files is not None else load(self.spec)

    async def prepare(self) -> None:
        self.fingerprint = await trio.to_thread.run_sync(fingerprint, self.spec)
        loaded = await trio.to_thread.run_sync(self._load)
        if loaded.failures and not self.spec.allow_partial:
            more = f" (and {len(loaded.failures) - 1} more files)" if len(loaded.failures) > 1 else ""
            first = loaded.failures[0].removesuffix("; left out (it never loaded)")
            raise ConfigError(f"{first}{more}; fix it, or start without it with --allow-partial")
        self._initial = loaded

    async def initial(self) -> Loaded:
        if self._initial is None:
            await self.prepare()
        assert self._initial is not None
        loaded, self._initial = self._initial, None
        return loaded

    async def reload(self) -> Loaded:
        new_fingerprint = await trio.to_thread.run_sync(fingerprint, self.spec, abandon_on_cancel=True)
        try:
            return await trio.to_thread.run_sync(self._load, abandon_on_cancel=True)
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
        if self.files is None:
            return {}
        return {"files": self.files.status()}

    def metrics(self) -> list[str]:
        if self.files is None:
            return []
        name = "fastingress_config_file_last_load_successful"
        lines = [
            f"# HELP {name} 1 if the manifest file's current content is in force, 0 if its last good "
            "version (or nothing) is kept instead.",
            f"# TYPE {name} gauge",
        ]
        for record in self.files.records.values():
            path = record.path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            lines.append(f'{name}{{file="{path}"}} {int(not record.error)}')
        return lines

    def endpoint(self, path: str) -> tuple[int, str] | None:
        return None
