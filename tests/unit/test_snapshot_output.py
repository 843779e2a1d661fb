"""``fastingress snapshot build -o``: regular files are replaced atomically; ``-`` is stdout; a
character device, a symlink and a FIFO survive (written through, or refused in one line).

Through the real entry point (a subprocess), as a user would run it."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fastingress.snapshot.codec import decode_json

from .test_cli import INGRESS, assert_one_line_error


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "ingress.yaml"
    path.write_text(INGRESS)
    return path


def build(manifest: Path, output: str) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "fastingress", "snapshot", "build"]
    return subprocess.run(
        [*command, "--manifests", str(manifest), "-o", output],
        capture_output=True,
        timeout=60,
        check=False,
    )


def null_device(tmp_path: Path) -> Path:
    """A character device that discards writes.  As root, a private copy of /dev/null (so a
    regression replaces that node, not the machine's /dev/null); otherwise /dev/null itself,
    which an unprivileged process cannot replace anyway."""
    if os.geteuid() != 0:
        return Path("/dev/null")
    node = tmp_path / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return node


def test_character_device_is_written_through_never_replaced(tmp_path: Path, manifest: Path) -> None:
    device = null_device(tmp_path)
    before = os.stat(device)
    result = build(manifest, str(device))
    assert result.returncode == 0, result.stderr
    after = os.stat(device)
    assert stat.S_ISCHR(after.st_mode)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert not list(device.parent.glob(f".{device.name}.*"))  # no temporary file left behind


def test_symlink_stays_a_symlink_and_its_target_is_replaced(tmp_path: Path, manifest: Path) -> None:
    real = tmp_path / "real" / "snap.json"
    real.parent.mkdir()
    real.write_text("old")
    os.chmod(real, 0o640)
    link = tmp_path / "snap.json"
    link.symlink_to(real)
    result = build(manifest, str(link))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert [vh.hostname for vh in decode_json(real.read_bytes()).virtual_hosts] == ["a.example.com"]
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # the mode it had
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "real" / "new.json")
    assert build(manifest, str(dangling)).returncode == 0
    assert dangling.is_symlink() and (tmp_path / "real" / "new.json").is_file()


def test_fifo_is_written_through_to_its_reader_or_refused_without_one(tmp_path: Path, manifest: Path) -> None:
    fifo = tmp_path / "snap.fifo"
    os.mkfifo(fifo)
    refused = build(manifest, str(fifo))
    assert refused.returncode == 2
    assert_one_line_error(refused.stderr.decode().splitlines()[-1] + "\n", "a FIFO with no reader")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)

    received: list[bytes] = []
    # O_RDWR: open a FIFO without waiting for a writer, so the reader is there first.
    fd = os.open(fifo, os.O_RDWR)

    def read_all() -> None:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            chunks.append(chunk)
            if _complete(b"".join(chunks)):
                break
        received.append(b"".join(chunks))

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    try:
        result = build(manifest, str(fifo))
        reader.join(timeout=30)
    finally:
        os.close(fd)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert [vh.hostname for vh in decode_json(received[0]).virtual_hosts] == ["a.example.com"]


def _complete(data: bytes) -> bool:
    try:
        decode_json(data)
    except Exception:
        return False
    return True


def test_directory_socket_and_stdout(tmp_path: Path, manifest: Path) -> None:
    refused = build(manifest, str(tmp_path))
    assert refused.returncode == 2
    assert_one_line_error(refused.stderr.decode().splitlines()[-1] + "\n", "it is a directory")
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        refused = build(manifest, str(path))
    assert refused.returncode == 2
    assert_one_line_error(refused.stderr.decode().splitlines()[-1] + "\n", "not a regular file")
    to_stdout = build(manifest, "-")
    assert to_stdout.returncode == 0
    assert len(decode_json(to_stdout.stdout).virtual_hosts) == 1
