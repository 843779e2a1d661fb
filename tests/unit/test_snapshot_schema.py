"""The snapshot schema only grows: older snapshots decode with defaults for new fields, and
fields from a newer schema are ignored, so workers and supervisor can be upgraded in any order."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from fastingress.errors import SnapshotError
from fastingress.snapshot.codec import decode_any, decode_json, decode_msgpack, encode_json, encode_msgpack
from fastingress.snapshot.schema import SCHEMA_VERSION, Forward, Redirect, Respond, Snapshot

V1 = Path(__file__).parent / "data" / "snapshot-v1.json"


def test_schema_version_1_snapshot_decodes_with_defaults() -> None:
    snap = decode_json(V1.read_bytes())
    assert snap.schema_version == 1
    assert snap.virtual_hosts and all(v.passthrough_upstream is None for v in snap.virtual_hosts)
    assert all(not r.policy.ssl_redirect for v in snap.virtual_hosts for r in v.routes)
    assert snap.settings.http2_max_concurrent_streams == 128
    # Round trip through both encodings is lossless.
    assert decode_msgpack(encode_msgpack(snap)) == snap
    assert decode_json(encode_json(snap)) == snap


def test_fields_from_a_newer_schema_are_ignored() -> None:
    doc = json.loads(V1.read_text())
    doc["schema_version"] = SCHEMA_VERSION + 1
    doc["some_future_field"] = {"x": 1}
    doc["virtual_hosts"][0]["future_host_field"] = [1, 2, 3]
    snap = decode_json(json.dumps(doc))
    assert snap.schema_version == SCHEMA_VERSION + 1
    assert snap.virtual_hosts[0].hostname == doc["virtual_hosts"][0]["hostname"]
    assert decode_any(msgspec.msgpack.encode(doc)) == snap


def test_actions_are_tagged_unions() -> None:
    for action in (Forward(()), Redirect("https://x/", 308), Respond(418, "teapot")):
        encoded = msgspec.json.encode(action)
        assert json.loads(encoded)["type"] in ("forward", "redirect", "respond")
        assert msgspec.json.decode(encoded, type=Forward | Redirect | Respond) == action


@pytest.mark.parametrize("data", [b"", b"\xc1", b'{"virtual_hosts": 3}', b'{"schema_version": 0}'])
def test_bad_snapshots_raise_snapshot_error(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        decode_any(data)


def test_default_snapshot_is_current_version() -> None:
    assert Snapshot().schema_version == SCHEMA_VERSION
