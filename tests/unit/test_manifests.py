"""The manifest loader: files and folders of multi-document YAML/JSON -> plain dicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastingress.errors import ConfigError
from fastingress.manifests import load_manifests, manifest_files
from fastingress.translate import translate

SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {ports: [{port: 80}]}
"""
INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: default}
spec:
  rules:
    - host: example.com
      http:
        paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_multi_document_yaml_with_empty_documents(tmp_path: Path) -> None:
    f = write(tmp_path / "all.yaml", f"---\n# only a comment\n---\n{SERVICE}---\n---\n{INGRESS}\n---\n")
    objects, diagnostics = load_manifests([str(f)])
    assert [o["kind"] for o in objects] == ["Service", "Ingress"]
    assert diagnostics == []
    assert [v.hostname for v in translate(objects).snapshot.virtual_hosts] == ["example.com"]


def test_kind_list_is_flattened(tmp_path: Path) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"kind": "List", "items": [{"kind": "Service", "metadata": {"name": "a"}}]},
            {"kind": "Ingress", "metadata": {"name": "b"}},
            "not an object",
        ],
    }
    f = write(tmp_path / "list.json", json.dumps(doc))
    objects, diagnostics = load_manifests([str(f)])
    assert [o["metadata"]["name"] for o in objects] == ["a", "b"]
    assert len(diagnostics) == 1
    (d,) = diagnostics
    assert (d.severity, d.kind, d.name, d.field) == ("error", "File", str(f), "documents[0].items[2]")


def test_broken_file_is_a_diagnostic_and_others_still_load(tmp_path: Path) -> None:
    write(tmp_path / "a-good.yaml", SERVICE)
    broken = write(tmp_path / "b-broken.yaml", "kind: Ingress\n\tmetadata: {}\n")
    write(tmp_path / "c-good.yml", INGRESS)
    write(tmp_path / "d-scalar.yaml", "just a string\n---\n42\n")
    objects, diagnostics = load_manifests([str(tmp_path)])
    assert [o["kind"] for o in objects] == ["Service", "Ingress"]
    assert [(d.kind, Path(d.name).name) for d in diagnostics] == [
        ("File", "b-broken.yaml"),
        ("File", "d-scalar.yaml"),
        ("File", "d-scalar.yaml"),
    ]
    assert diagnostics[0].name == str(broken)
    assert "line 2" in diagnostics[0].message
    assert str(diagnostics[0]).startswith(f"error File {broken}: invalid YAML at line 2")
    assert [d.field for d in diagnostics[1:]] == ["documents[0]", "documents[1]"]


def test_directories_are_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    b = write(tmp_path / "b.yaml", SERVICE)
    a2 = write(tmp_path / "a" / "z.yml", SERVICE)
    a1 = write(tmp_path / "a" / "deeper" / "x.json", "{}")
    write(tmp_path / "README.md", "# not a manifest")
    write(tmp_path / ".hidden.yaml", SERVICE)
    write(tmp_path / ".git" / "config.yaml", SERVICE)
    single = write(tmp_path / "other" / "named.txt", SERVICE)
    assert manifest_files([str(tmp_path), str(single)]) == [a1, a2, b, single]


def test_missing_path_is_one_clear_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"^manifest path .*nope\.yaml does not exist$") as info:
        load_manifests([str(missing)])
    assert "\n" not in str(info.value)


def test_special_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a regular file or directory"):
        manifest_files(["/dev/null"])


def test_non_utf8_file_is_a_diagnostic(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"kind: Service\nmetadata: {name: caf\xe9}\n")
    objects, diagnostics = load_manifests([str(f)])
    assert objects == []
    assert [d.message for d in diagnostics] == ["not UTF-8 text; skipped"]


def test_yaml_timestamps_and_anchors_translate(tmp_path: Path) -> None:
    """PyYAML turns creationTimestamp into a datetime and resolves aliases: both must work."""
    text = (
        INGRESS.replace(
            "{name: web, namespace: default}", "{name: web, creationTimestamp: 2025-01-01T00:00:00Z}"
        )
        + "---\n"
        + SERVICE
    )
    f = write(tmp_path / "ts.yaml", text)
    objects, diagnostics = load_manifests([str(f)])
    assert diagnostics == []
    result = translate(objects)
    assert result.diagnostics == ()
    assert result.snapshot.virtual_hosts[0].routes[0].ingress == "default/web"


def test_alias_bomb_is_bounded(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = "\n".join(lines) + "\nkind: Service\nmetadata: {name: bomb}\n"
    f = write(tmp_path / "bomb.yaml", bomb)
    objects, _ = load_manifests([str(f)])
    # Two copies force the duplicate resolver to compare them; it must stay bounded.
    result = translate(objects + objects)
    assert result.snapshot.upstreams == ()
