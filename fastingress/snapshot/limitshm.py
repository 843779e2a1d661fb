"""The replica's limit counters in shared memory: a segment the supervisor creates and every
worker maps (read and write), so that ``limit-rps``/``-rpm``/``-connections`` hold per replica,
not per worker.  This module is the file format; ``workers.limiter`` is what is counted in it.

Theory of operation
-------------------
One file ``<runtime dir>/limits`` (mode 0600 in the private runtime directory, under
``/dev/shm`` when possible), sized once for ``workers`` worker processes, mapped
``MAP_SHARED`` by everyone.  It is an array of native 64-bit integers ("words"):

* a header of ``header_words(workers)`` words::

      0 magic   1 version   2 workers   3 sets   4 ways   5 words per entry   6, 7 unused
      8 + w     incarnation of worker column w (bumped by each process that takes slot w)

* then ``sets`` sets of ``workers x ways`` entries of ``ENTRY_WORDS`` words, set-major: the
  entries of set ``s`` for every worker are contiguous (one slice read sees them all), and
  worker ``w`` only ever WRITES its own ``ways`` entries of each set (one writer per word:
  no lock, no compare-and-swap).  A key (zone, client) hashes to one set; each worker keeps
  its own part of that key's state in one of its ways there, and readers combine the parts
  of every worker (``workers.limiter`` says how: sums, maxima).

Aligned 8-byte loads and stores through a ``memoryview`` cast to ``"q"`` are single machine
instructions on the 64-bit platforms we run on, so no reader sees a torn word.  The file is
sparse: pages are only allocated when a set is first touched.

The supervisor creates the file whole (written under a temporary name, then renamed), before
any worker starts.  A worker that cannot map it, or finds another layout, logs an error and
counts in memory of its own (``private()``, also used by ``fastingress explain`` and
in-process tests): its limits then hold per worker, never does it stop serving.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct

from fastingress.errors import SnapshotError

MAGIC = int.from_bytes(b"FILIMIT1", "little", signed=True)
VERSION = 1
ENTRY_WORDS = 8
DEFAULT_SETS = 16384  # x ways entries per worker: 32768 clients (zone, IP) in flight at once
DEFAULT_WAYS = 2
PRIVATE_SETS = 1024
MAX_WORKERS = 1024
_WORD = 8
_FIXED = 8  # header words before the incarnations


def header_words(workers: int) -> int:
    """Header size in words: the fixed part and one incarnation per worker, to a multiple of 8."""
    return _FIXED + (workers + 7) // 8 * 8


def segment_size(workers: int, sets: int, ways: int) -> int:
    return (header_words(workers) + sets * workers * ways * ENTRY_WORDS) * _WORD


def _header(workers: int, sets: int, ways: int) -> bytes:
    return struct.pack(f"={_FIXED}q", MAGIC, VERSION, workers, sets, ways, ENTRY_WORDS, 0, 0)


def _check_shape(workers: int, sets: int, ways: int) -> None:
    if not 1 <= workers <= MAX_WORKERS:
        raise SnapshotError(f"limit segment: {workers} workers is out of range 1..{MAX_WORKERS}")
    if sets < 1 or sets & (sets - 1):
        raise SnapshotError(f"limit segment: {sets} sets is not a power of two")
    if not 1 <= ways <= 16:
        raise SnapshotError(f"limit segment: {ways} ways is out of range 1..16")


class LimitSegment:
    """A mapped limit segment, as seen by worker column ``index``."""

    def __init__(self, mapping: mmap.mmap, *, workers: int, sets: int, ways: int, index: int,
                 path: str = "") -> None:
        if not 0 <= index < workers:
            raise SnapshotError(f"limit segment {path or '(private)'}: worker index {index} is not "
                                f"below its {workers} workers")
        self.path = path
        self.workers = workers
        self.sets = sets
        self.ways = ways
        self.index = index
        self.header = header_words(workers)
        self._map = mapping
        self.words = memoryview(mapping).cast("q")
        self.incarnation = 0

    def take_column(self) -> int:
        """Bump this worker's incarnation (a new process owns column ``index`` now); readers
        ignore connection counts left in entries by the process that had it before."""
        slot = _FIXED + self.index
        self.incarnation = self.words[slot] + 1
        self.words[slot] = self.incarnation
        return self.incarnation

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self.words.release()
            self._map.close()


def create(path: str, workers: int, *, sets: int = DEFAULT_SETS, ways: int = DEFAULT_WAYS) -> str:
    """Create the segment file for ``workers`` workers (whole, by rename); returns its path."""
    _check_shape(workers, sets, ways)
    path = os.path.abspath(path)
    tmp = f"{path}.init-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        raise SnapshotError(f"cannot create {tmp}: {exc.strerror or exc}") from None
    try:
        os.ftruncate(fd, segment_size(workers, sets, ways))  # sparse: zero pages cost nothing
        os.pwrite(fd, _header(workers, sets, ways), 0)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SnapshotError(f"cannot create limit segment {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return path


def attach(path: str, index: int) -> LimitSegment:
    """Map the segment ``create`` made, as worker column ``index``."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        raise SnapshotError(f"cannot open limit segment {path}: {exc.strerror or exc}") from None
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, _FIXED * _WORD, 0)
        if len(head) < _FIXED * _WORD:
            raise SnapshotError(f"limit segment {path} is too short ({size} bytes)")
        magic, version, workers, sets, ways, entry, _, _ = struct.unpack(f"={_FIXED}q", head)
        if magic != MAGIC or version != VERSION or entry != ENTRY_WORDS:
            raise SnapshotError(f"limit segment {path} has another format (magic/version)")
        _check_shape(workers, sets, ways)
        if size != segment_size(workers, sets, ways):
            raise SnapshotError(f"limit segment {path} has {size} bytes, not the "
                                f"{segment_size(workers, sets, ways)} its header says")
        mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        raise SnapshotError(f"cannot map limit segment {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    try:
        return LimitSegment(mapping, workers=workers, sets=sets, ways=ways, index=index, path=path)
    except SnapshotError:
        mapping.close()
        raise


def private(*, sets: int = PRIVATE_SETS, ways: int = DEFAULT_WAYS) -> LimitSegment:
    """The same layout in anonymous memory, for one process."""
    _check_shape(1, sets, ways)
    mapping = mmap.mmap(-1, segment_size(1, sets, ways))
    mapping[: _FIXED * _WORD] = _header(1, sets, ways)
    return LimitSegment(mapping, workers=1, sets=sets, ways=ways, index=0)


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


__all__ = [
    "DEFAULT_SETS", "DEFAULT_WAYS", "ENTRY_WORDS", "LimitSegment", "attach", "create", "header_words",
    "private", "remove", "segment_size",
]
