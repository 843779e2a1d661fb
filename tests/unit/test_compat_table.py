"""README's ingress-nginx compatibility table is the one the registries give (it cannot drift),
and it lists every annotation ingress-nginx documents."""

from __future__ import annotations

import re

import pytest

from fastingress import compat
from fastingress.translate import annotations as ann
from fastingress.translate import configmap
from tests.conftest import REPO

README = REPO / "README.md"

# Every annotation of ingress-nginx's docs (docs/user-guide/nginx-configuration/annotations.md,
# controller v1.15.1) and of its source (internal/ingress/annotations), plus removed ones.
INGRESS_NGINX_ANNOTATIONS = """
app-root affinity affinity-canary-behavior affinity-mode auth-realm auth-secret auth-secret-type auth-type
auth-tls-secret auth-tls-verify-depth auth-tls-verify-client auth-tls-error-page
auth-tls-pass-certificate-to-upstream
auth-tls-match-cn auth-url auth-cache-key auth-cache-duration auth-keepalive auth-keepalive-share-vars
auth-keepalive-requests auth-keepalive-timeout auth-proxy-set-headers auth-snippet enable-global-auth
backend-protocol canary canary-by-header canary-by-header-value canary-by-header-pattern canary-by-cookie
canary-weight canary-weight-total client-body-buffer-size configuration-snippet custom-http-errors
custom-headers default-backend enable-cors cors-allow-origin cors-allow-methods cors-allow-headers
cors-expose-headers cors-allow-credentials cors-max-age force-ssl-redirect from-to-www-redirect
http2-push-preload limit-connections limit-rps permanent-redirect permanent-redirect-code
temporal-redirect temporal-redirect-code preserve-trailing-slash proxy-body-size proxy-cookie-domain
proxy-cookie-path proxy-connect-timeout proxy-send-timeout proxy-read-timeout proxy-next-upstream
proxy-next-upstream-timeout proxy-next-upstream-tries proxy-request-buffering proxy-redirect-from
proxy-redirect-to proxy-http-version proxy-ssl-ciphers proxy-ssl-name proxy-ssl-protocols
proxy-ssl-secret proxy-ssl-server-name proxy-ssl-verify proxy-ssl-verify-depth
proxy-ssl-location-only enable-rewrite-log rewrite-target satisfy server-alias server-snippet
service-upstream session-cookie-change-on-failure session-cookie-conditional-samesite-none
session-cookie-domain session-cookie-expires session-cookie-max-age session-cookie-name
session-cookie-path session-cookie-samesite session-cookie-secure ssl-redirect ssl-passthrough
stream-snippet upstream-hash-by x-forwarded-prefix load-balance upstream-vhost denylist-source-range
whitelist-source-range proxy-buffering proxy-buffers-number proxy-buffer-size proxy-busy-buffers-size
proxy-max-temp-file-size ssl-ciphers ssl-prefer-server-ciphers connection-proxy-header enable-access-log
enable-opentelemetry opentelemetry-trust-incoming-span use-regex enable-modsecurity
enable-owasp-core-rules modsecurity-transaction-id modsecurity-snippet mirror-request-body mirror-target
mirror-host allowlist-source-range auth-always-set-cookie auth-method auth-request-redirect
auth-response-headers auth-signin auth-signin-redirect-param disable-proxy-intercept-errors
limit-allowlist limit-burst-multiplier limit-rate limit-rate-after limit-rpm limit-whitelist mirror-uri
opentelemetry-operation-name relative-redirects session-cookie-partitioned upstream-hash-by-subset
upstream-hash-by-subset-size fastcgi-index fastcgi-params-configmap use-port-in-redirects
global-rate-limit global-rate-limit-window global-rate-limit-key global-rate-limit-ignored-cidrs
secure-backends grpc-backend secure-verify-ca-secret session-cookie-hash add-base-url base-url-scheme
""".split()  # noqa: SIM905


def test_every_ingress_nginx_annotation_is_in_the_registry() -> None:
    assert sorted(set(INGRESS_NGINX_ANNOTATIONS) - set(ann.REGISTRY)) == []


def test_readme_table_is_the_generated_one() -> None:
    text = README.read_text(encoding="utf-8")
    assert compat.BEGIN in text and compat.END in text
    start = text.index(compat.BEGIN)
    end = text.index(compat.END) + len(compat.END)
    assert text[start:end] == compat.render(), (
        "README's compatibility table is stale: run `python -m fastingress.compat --write README.md`"
    )


def _rows() -> dict[tuple[str, str], str]:
    text = README.read_text(encoding="utf-8")
    rows: dict[tuple[str, str], str] = {}
    for match in re.finditer(r"^\| `([a-z0-9-]+)` \| (annotation|ConfigMap) \| ([^|]*) \|", text, re.M):
        rows[(match.group(2), match.group(1))] = match.group(3).strip()
    return rows


def test_table_has_one_row_per_registry_key() -> None:
    rows = _rows()
    assert {n for w, n in rows if w == "annotation"} == set(ann.REGISTRY)
    assert {n for w, n in rows if w == "ConfigMap"} == set(configmap.REGISTRY)


@pytest.mark.parametrize("name", sorted(ann.REGISTRY))
def test_annotation_status_matches_the_registry(name: str) -> None:
    status = _rows()[("annotation", name)]
    row = ann.REGISTRY[name]
    # (canary: a canary Ingress is honoured through its own path, workers/canary.py)
    assert status.startswith("supported") == (row.status in ("implemented", "canary")), (name, status)
    assert ("**fails closed**" in status) == (row.status == "closed"), (name, status)


@pytest.mark.parametrize("name", sorted(configmap.REGISTRY))
def test_configmap_status_matches_the_registry(name: str) -> None:
    status = _rows()[("ConfigMap", name)]
    row = configmap.REGISTRY[name]
    assert status.startswith("supported") == (row.status == "implemented" and not row.pending), (name, status)


def test_replace_table_needs_markers() -> None:
    with pytest.raises(ValueError):
        compat.replace_table("no markers here")
