"""Publish snapshot bytes to many reader processes through shared memory, without shared locks.

Theory of operation
-------------------
One writer (the supervisor) and any number of readers (workers), on one machine.

* The **control file** ``<path>`` is a small (64-byte) file that every party ``mmap``\\ s
  (``MAP_SHARED``; under ``/dev/shm`` it never touches a disk).  It holds a header::

      0  magic      8s   b"FISNAP\\x00\\x01"
      8  seq        u64  seqlock counter: odd while the writer updates the fields below
     16  generation u64  0 = nothing published yet, then 1, 2, 3, ...
     24  length     u64  payload length in bytes
     32  checksum   u32  zlib.crc32 of the payload

* Each generation's **payload** lives in its own file ``<path>.<generation>`` (mode 0600).
  The writer writes it completely to a temporary name and ``rename``\\ s it into place
  (atomic), and only THEN updates the header under the seqlock (seq -> odd, fields,
  seq -> even).  A payload file never changes once it has its final name.  The writer
  deletes payload files older than the last ``KEEP_GENERATIONS``.

* A **reader** reads ``seq``, the fields, and ``seq`` again; if ``seq`` was odd or changed
  it retries (the writer was mid-update).  With a consistent header it opens
  ``<path>.<generation>``, reads it whole and checks length and checksum.  A payload file
  unlinked after the reader opened it stays readable in full (POSIX), so the only races
  are "file already gone" (the writer moved on: retry with the newer header) and a header
  that was torn despite the seqlock on a weakly-ordered CPU: the checksum catches that
  too, and we retry.  Retries caused by the writer making progress are not failures;
  the same generation failing its checksum ``_MAX_CORRUPT`` times is: ``SnapshotError``.

Arbitrary payload sizes are fine (the header never grows); readers never block the writer
and there is no lock to leak if a process dies.  Nothing here logs payload bytes, which
carry private keys.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import stat
import struct
import tempfile
import time
import zlib

from fastingress.errors import SnapshotError

MAGIC = b"FISNAP\x00\x01"
HEADER_SIZE = 64
KEEP_GENERATIONS = 4

_HEADER = struct.Struct("<8sQQQI")  # magic, seq, generation, length, checksum
_SEQ = struct.Struct("<Q")
_FIELDS = struct.Struct("<QQI")  # generation, length, checksum
_SEQ_OFFSET = 8
_FIELDS_OFFSET = 16
_GEN_OFFSET = 16

_MAX_CORRUPT = 3  # the same generation failing its checksum this often is an error
_READ_DEADLINE = 2.0  # seconds a read() may spend retrying before giving up


def _payload_path(path: str, generation: int) -> str:
    return f"{path}.{generation}"


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _check_private_dir(directory: str) -> None:
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise SnapshotError(f"shared-memory directory {directory}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SnapshotError(f"shared-memory directory {directory} is not a directory")
    if st.st_mode & 0o077 or st.st_uid != os.getuid():
        raise SnapshotError(
            f"shared-memory directory {directory} must be private (mode 0700, owned by us), "
            f"is {stat.S_IMODE(st.st_mode):04o}"
        )


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class ShmPublisher:
    """The single writer of a snapshot segment (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self._path = os.path.abspath(path)
        _check_private_dir(os.path.dirname(self._path))
        self._generation = 0
        self._seq = 0
        self._kept: list[int] = []
        tmp = f"{self._path}.init-{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise SnapshotError(f"cannot create {tmp}: {exc.strerror or exc}") from None
        try:
            header = bytearray(HEADER_SIZE)
            _HEADER.pack_into(header, 0, MAGIC, 0, 0, 0, 0)
            _write_all(fd, header)
            self._map = mmap.mmap(fd, HEADER_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            # A reader never sees a half-initialised control file: it appears whole, by rename.
            os.replace(tmp, self._path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise SnapshotError(f"cannot create {self._path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    @property
    def generation(self) -> int:
        return self._generation

    def publish(self, data: bytes) -> int:
        """Write ``data`` as the next generation and return its number."""
        if self._closed:
            raise SnapshotError("publisher is closed")
        generation = self._generation + 1
        final = _payload_path(self._path, generation)
        tmp = f"{final}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise SnapshotError(f"cannot write snapshot generation {generation}: {_why(exc)}") from None
        checksum = zlib.crc32(data)
        # Seqlock: odd while the fields change.
        self._seq += 1
        _SEQ.pack_into(self._map, _SEQ_OFFSET, self._seq)
        _FIELDS.pack_into(self._map, _FIELDS_OFFSET, generation, len(data), checksum)
        self._seq += 1
        _SEQ.pack_into(self._map, _SEQ_OFFSET, self._seq)
        self._generation = generation
        self._kept.append(generation)
        while len(self._kept) > KEEP_GENERATIONS:
            old = self._kept.pop(0)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(_payload_path(self._path, old))
        return generation

    def close(self, *, unlink: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self._map.close()
        if unlink:
            for generation in self._kept:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(_payload_path(self._path, generation))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
        self._kept.clear()

    def __enter__(self) -> ShmPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ShmReader:
    """A reader of a snapshot segment; cheap to poll with :meth:`generation`."""

    def __init__(self, path: str) -> None:
        self._path = os.path.abspath(path)
        try:
            fd = os.open(self._path, os.O_RDONLY)
        except OSError as exc:
            raise SnapshotError(f"cannot open snapshot segment {self._path}: {exc.strerror or exc}") from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise SnapshotError(f"snapshot segment {self._path} is too short ({size} bytes)")
            self._map = mmap.mmap(fd, HEADER_SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        except OSError as exc:
            raise SnapshotError(f"cannot map snapshot segment {self._path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        if self._map[: len(MAGIC)] != MAGIC:
            self._map.close()
            raise SnapshotError(f"snapshot segment {self._path} has a bad magic number")
        self._closed = False

    def _header(self, deadline: float) -> tuple[int, int, int]:
        """A consistent (generation, length, checksum) under the seqlock."""
        spins = 0
        while True:
            (seq1,) = _SEQ.unpack_from(self._map, _SEQ_OFFSET)
            if not seq1 & 1:
                fields: tuple[int, int, int] = _FIELDS.unpack_from(self._map, _FIELDS_OFFSET)
                (seq2,) = _SEQ.unpack_from(self._map, _SEQ_OFFSET)
                if seq1 == seq2:
                    return fields
            spins += 1
            if spins > 16:
                if time.monotonic() > deadline:
                    raise SnapshotError(f"snapshot segment {self._path}: writer stuck mid-update")
                time.sleep(0)

    def generation(self) -> int:
        """The latest published generation (0 = none yet); a few loads from the mapping."""
        if self._closed:
            raise SnapshotError("reader is closed")
        return self._header(time.monotonic() + _READ_DEADLINE)[0]

    def read(self) -> tuple[int, bytes] | None:
        """A consistent copy ``(generation, payload)`` of the latest generation, or None."""
        if self._closed:
            raise SnapshotError("reader is closed")
        deadline = time.monotonic() + _READ_DEADLINE
        corrupt: dict[int, int] = {}
        while True:
            generation, length, checksum = self._header(deadline)
            if generation == 0:
                return None
            data = self._read_payload(generation, length)
            if data is not None and len(data) == length and zlib.crc32(data) == checksum:
                return generation, data
            # Failed: if the writer moved on, that is progress, not corruption.
            if self._header(deadline)[0] == generation:
                corrupt[generation] = corrupt.get(generation, 0) + 1
                if corrupt[generation] >= _MAX_CORRUPT:
                    raise SnapshotError(
                        f"snapshot segment {self._path}: generation {generation} payload is "
                        "missing or corrupt (length/checksum mismatch)"
                    )
            if time.monotonic() > deadline:
                raise SnapshotError(f"snapshot segment {self._path}: no consistent copy before deadline")
            time.sleep(0)

    def _read_payload(self, generation: int, length: int) -> bytes | None:
        try:
            fd = os.open(_payload_path(self._path, generation), os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SnapshotError(f"cannot open snapshot generation {generation}: {_why(exc)}") from None
        try:
            chunks: list[bytes] = []
            remaining = length + 1  # one more than expected, to notice a longer file
            while remaining > 0:
                chunk = os.read(fd, min(remaining, 1 << 24))
                if not chunk:
                    break
                chunks.append(chunk)
                remaining -= len(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise SnapshotError(f"cannot read snapshot generation {generation}: {_why(exc)}") from None
        finally:
            os.close(fd)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._map.close()

    def __enter__(self) -> ShmReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


RUNTIME_PREFIX = "fastingress-"
# fastingress-<pid>-<process start time>-<random>: whose directory it is, so that the next start
# can remove those of supervisors that died without cleaning up (SIGKILL, OOM killer).
_RUNTIME_NAME = re.compile(r"^fastingress-(\d+)-(\d+)-[^/]+$")


def runtime_bases() -> list[str]:
    """Where runtime directories are made: /dev/shm if usable, else the temp dir."""
    bases = []
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        bases.append("/dev/shm")
    bases.append(tempfile.gettempdir())
    return bases


def process_start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (Linux); 0 when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (OSError, IndexError, ValueError):
        return 0


def default_runtime_dir() -> str:
    """A fresh private (0700) directory under /dev/shm if usable, else under the temp dir."""
    prefix = f"{RUNTIME_PREFIX}{os.getpid()}-{process_start_time(os.getpid())}-"
    bases = runtime_bases()
    for base in bases[:-1]:
        try:
            return tempfile.mkdtemp(prefix=prefix, dir=base)
        except OSError:
            pass
    return tempfile.mkdtemp(prefix=prefix, dir=bases[-1])


def _owner_gone(pid: int, started: int) -> bool:
    """Whether the supervisor that made a runtime directory is no longer running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    now = process_start_time(pid)
    return bool(now and started and now != started)  # the pid was reused by another process


def stale_runtime_dirs() -> list[str]:
    """Our runtime directories whose supervisor is gone (never our own process's)."""
    me = (os.getpid(), process_start_time(os.getpid()))
    found = []
    for base in runtime_bases():
        try:
            entries = list(os.scandir(base))
        except OSError:
            continue
        for entry in entries:
            match = _RUNTIME_NAME.match(entry.name)
            if match is None:
                continue
            owner = (int(match.group(1)), int(match.group(2)))
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or owner == me:
                continue
            if _owner_gone(*owner):
                found.append(entry.path)
    return sorted(found)


__all__ = [
    "HEADER_SIZE",
    "KEEP_GENERATIONS",
    "MAGIC",
    "RUNTIME_PREFIX",
    "ShmPublisher",
    "ShmReader",
    "default_runtime_dir",
    "process_start_time",
    "stale_runtime_dirs",
]
