"""Shared-memory snapshot publication: torn-read proof under a busy writer and real reader processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import stat
import struct
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest

from fastingress.errors import SnapshotError
from fastingress.snapshot.shm import KEEP_GENERATIONS, ShmPublisher, ShmReader, default_runtime_dir

GENERATIONS = 2000
READERS = 3
_PREFIX = struct.Struct("<Q32s")


def make_payload(generation: int) -> bytes:
    """Self-describing: generation number + sha256 of the rest, then the rest."""
    rng = random.Random(generation)
    if generation % 97 == 0:
        size = rng.randrange(1 << 20, (1 << 20) + (1 << 19))  # > 1 MiB
    else:
        size = rng.randrange(0, 32 * 1024)
    rest = rng.randbytes(size)
    return _PREFIX.pack(generation, hashlib.sha256(rest).digest()) + rest


def check_payload(generation: int, payload: bytes) -> str | None:
    if len(payload) < _PREFIX.size:
        return f"generation {generation}: payload too short ({len(payload)})"
    claimed, digest = _PREFIX.unpack_from(payload)
    if claimed != generation:
        return f"generation {generation}: payload claims generation {claimed}"
    if hashlib.sha256(payload[_PREFIX.size :]).digest() != digest:
        return f"generation {generation}: payload hash mismatch (torn?)"
    return None


def reader_process(path: str, last: int, ready: Event, results: Queue[dict[str, Any]]) -> None:
    problems: list[str] = []
    seen: set[int] = set()
    reads = 0
    previous = 0
    previous_cheap = 0
    deadline = time.monotonic() + 60
    with ShmReader(path) as reader:
        ready.set()
        while time.monotonic() < deadline:
            cheap = reader.generation()
            if cheap < previous_cheap:
                problems.append(f"generation() went backwards: {previous_cheap} -> {cheap}")
            previous_cheap = cheap
            try:
                got = reader.read()
            except SnapshotError as exc:
                problems.append(f"SnapshotError: {exc}")
                continue
            if got is None:
                continue
            generation, payload = got
            reads += 1
            seen.add(generation)
            if generation < previous:
                problems.append(f"read() went backwards: {previous} -> {generation}")
            previous = generation
            problem = check_payload(generation, payload)
            if problem:
                problems.append(problem)
            if generation == last:
                break
        else:
            problems.append(f"never saw generation {last} (last seen {previous})")
    results.put({"pid": os.getpid(), "reads": reads, "distinct": len(seen), "problems": problems[:20]})


def test_many_generations_with_reader_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    path = str(tmp_path / "snapshot")
    publisher = ShmPublisher(path)
    results: Queue[dict[str, Any]] = ctx.Queue()
    readies = [ctx.Event() for _ in range(READERS)]
    procs = [
        ctx.Process(target=reader_process, args=(path, GENERATIONS, ready, results), daemon=True)
        for ready in readies
    ]
    for proc in procs:
        proc.start()
    try:
        for ready in readies:
            assert ready.wait(30), "reader process did not start"
        for generation in range(1, GENERATIONS + 1):
            assert publisher.publish(make_payload(generation)) == generation
        assert publisher.generation == GENERATIONS
        reports = [results.get(timeout=60) for _ in procs]
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        publisher.close()
    for report in reports:
        assert report["problems"] == [], report
        # They really raced the writer: many distinct generations each.
        assert report["distinct"] > 10, report
    # Old payload files were pruned, and close() cleaned everything up.
    assert list(tmp_path.iterdir()) == []


def test_reader_before_any_publish_sees_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "snapshot")
    with ShmPublisher(path) as publisher, ShmReader(path) as reader:
        assert reader.generation() == 0
        assert reader.read() is None
        assert publisher.publish(b"hello") == 1
        assert reader.generation() == 1
        assert reader.read() == (1, b"hello")
        assert publisher.publish(b"") == 2
        assert reader.read() == (2, b"")


def test_files_are_private_and_old_generations_pruned(tmp_path: Path) -> None:
    path = tmp_path / "snapshot"
    with ShmPublisher(str(path)) as publisher:
        for i in range(10):
            publisher.publish(b"x" * i)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        names = sorted(p.name for p in tmp_path.iterdir())
        kept = [f"snapshot.{g}" for g in range(10 - KEEP_GENERATIONS + 1, 11)]
        assert names == sorted(["snapshot", *kept])
        for name in kept:
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
        publisher.close(unlink=False)
    assert (tmp_path / "snapshot").exists()


def test_corrupted_payload_raises_snapshot_error(tmp_path: Path) -> None:
    path = tmp_path / "snapshot"
    with ShmPublisher(str(path)) as publisher, ShmReader(str(path)) as reader:
        publisher.publish(b"a" * 1000)
        payload = tmp_path / "snapshot.1"
        payload.write_bytes(b"a" * 999 + b"b")  # same length, wrong checksum
        with pytest.raises(SnapshotError, match="corrupt"):
            reader.read()
        payload.write_bytes(b"a" * 10)  # truncated
        with pytest.raises(SnapshotError, match="corrupt"):
            reader.read()
        payload.unlink()  # vanished
        with pytest.raises(SnapshotError, match="missing or corrupt"):
            reader.read()
        # The next good generation reads fine again.
        publisher.publish(b"fine")
        assert reader.read() == (2, b"fine")


def test_reader_errors_are_snapshot_errors(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="cannot open"):
        ShmReader(str(tmp_path / "missing"))
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(SnapshotError, match="magic"):
        ShmReader(str(bad))
    short = tmp_path / "short"
    short.write_bytes(b"FIS")
    with pytest.raises(SnapshotError, match="too short"):
        ShmReader(str(short))


def test_publisher_requires_private_dir(tmp_path: Path) -> None:
    public = tmp_path / "public"
    public.mkdir()
    public.chmod(0o755)
    with pytest.raises(SnapshotError, match="private"):
        ShmPublisher(str(public / "snapshot"))


def test_default_runtime_dir_is_private() -> None:
    directory = default_runtime_dir()
    try:
        st = os.stat(directory)
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == os.getuid()
        assert os.listdir(directory) == []
        other = default_runtime_dir()
        assert other != directory
        os.rmdir(other)
    finally:
        os.rmdir(directory)
