"""Request-target normalisation: dot segments, percent-encoding, smuggling attempts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastingress.errors import BadRequest
from workers.pathnorm import normalize_path, normalize_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/", ("/", "")),
        (b"/a/b?x=1&y=2", ("/a/b", "?x=1&y=2")),
        (b"/api/../admin", ("/admin", "")),
        (b"/api/%2e%2e/admin", ("/admin", "")),
        (b"/api/%2E%2E/admin?q", ("/admin", "?q")),
        (b"/a/./b/", ("/a/b/", "")),
        (b"/a//b", ("/a/b", "")),
        (b"/../../etc/passwd", ("/etc/passwd", "")),
        (b"/a/..", ("/", "")),
        (b"/a/b/..", ("/a/", "")),
        (b"/%7euser/%41", ("/~user/A", "")),
        (b"/x%20y/%e2%82%ac", ("/x%20y/%E2%82%AC", "")),
        (b"http://Example.com/p/../q?z", ("/q", "?z")),
        (b"https://example.com", ("/", "")),
        (b"http://example.com?x", ("/", "?x")),
        (b"*", ("*", "")),
        (b"/q?a=/../b", ("/q", "?a=/../b")),
    ],
)
def test_normalize_target(target: bytes, expected: tuple[str, str]) -> None:
    assert normalize_target(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        b"/api%2F..%2Fadmin",
        b"/api%2f..",
        b"/a%5c..%5cb",
        b"/a\\b",
        b"/a%00",
        b"/a%zz",
        b"/a%4",
        b"/a#frag",
        b"relative/path",
        b"ftp://x/y",
        "/caf\u00e9".encode(),
    ],
)
def test_rejects_smuggling_and_malformed(target: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        normalize_target(target)
    assert info.value.status_hint == 400


_chars = st.sampled_from(["a", "b", ".", "..", "%2e", "%2E%2e", "", "%41", "c%20d"])


@given(st.lists(_chars, max_size=8))
def test_property_normalised_paths_are_fixed_points_without_dot_segments(segments: list[str]) -> None:
    path = "/" + "/".join(segments)
    out = normalize_path(path)
    assert out.startswith("/")
    parts = out.split("/")
    assert "." not in parts and ".." not in parts
    assert "//" not in out
    assert normalize_path(out) == out
