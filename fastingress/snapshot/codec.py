"""Encode and decode snapshots: msgpack for shared memory, JSON for files people read."""

from __future__ import annotations

from pathlib import Path

import msgspec

from fastingress.errors import SnapshotError
from fastingress.snapshot.schema import SCHEMA_VERSION, Snapshot

_msgpack_encoder = msgspec.msgpack.Encoder()
_msgpack_decoder = msgspec.msgpack.Decoder(Snapshot)
_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder(Snapshot)


def encode_msgpack(snapshot: Snapshot) -> bytes:
    return _msgpack_encoder.encode(snapshot)


def encode_json(snapshot: Snapshot, *, indent: int = 2) -> bytes:
    """Stable, human-readable JSON (used for golden files and ``snapshot build``)."""
    return msgspec.json.format(_json_encoder.encode(snapshot), indent=indent) + b"\n"


def _check_version(snapshot: Snapshot) -> Snapshot:
    if snapshot.schema_version < 1:
        raise SnapshotError(f"snapshot schema_version {snapshot.schema_version} is invalid")
    # A newer schema only adds fields with defaults, which we ignore: accept it.
    return snapshot


def decode_msgpack(data: bytes | memoryview) -> Snapshot:
    try:
        return _check_version(_msgpack_decoder.decode(data))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(f"snapshot does not decode: {exc}") from None


def decode_json(data: bytes | str) -> Snapshot:
    try:
        return _check_version(_json_decoder.decode(data))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(f"snapshot does not decode: {exc}") from None


def decode_any(data: bytes) -> Snapshot:
    """JSON if it looks like JSON (first non-space byte is '{'), else msgpack."""
    if data.lstrip()[:1] == b"{":
        return decode_json(data)
    return decode_msgpack(data)


def load_file(path: str | Path) -> Snapshot:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot file {path}: {exc.strerror or exc}") from None
    return decode_any(data)


__all__ = [
    "SCHEMA_VERSION",
    "decode_any",
    "decode_json",
    "decode_msgpack",
    "encode_json",
    "encode_msgpack",
    "load_file",
]
