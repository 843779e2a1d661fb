"""The controller ConfigMap (``--configmap``): the key registry, its parsers, last good values,
the incremental translator, ``fastingress check``, and the sans-I/O parts of the data plane
(PROXY protocol, client IP, blocks, header names, access log format)."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from fastingress.check import check
from fastingress.logformat import escape_default, escape_json, parse, unknown_variables
from fastingress.settings import CheckSettings, TranslationSettings
from fastingress.snapshot.schema import GlobalSettings
from fastingress.translate import TranslateOptions, translate
from fastingress.translate.annotations import BadValue
from fastingress.translate.configmap import (
    REGISTRY,
    ConfigMemory,
    Noted,
    parse_bool,
    parse_cidrs,
    parse_codes,
    parse_header_buffers,
    parse_log_format,
    parse_patterns,
    parse_redirect_code,
    parse_ssl_ciphers,
    parse_ssl_protocols,
    referenced_configmaps,
)
from fastingress.translate.incremental import Translator
from tests.conftest import REPO
from workers.accesslog import AccessRecord, compile_format, request_length
from workers.clientip import Forwarding, Front, Guard
from workers.heads import (
    DROP_INVALID_AND_UNDERSCORE,
    DROP_INVALID_NAMES,
    KEEP_ALL_NAMES,
    add_forwarded,
    response_headers,
    scan_request,
    set_headers,
)
from workers.proxyproto import (
    NEED_MORE,
    BadProxyHeader,
    ProxyHeader,
    parse_proxy_header,
    v1_header,
    v2_header,
)

Obj = dict[str, Any]
OPTIONS = TranslateOptions(configmap="ingress-nginx/controller")

# Every key of ingress-nginx's ConfigMap docs (docs/user-guide/nginx-configuration/configmap.md,
# controller v1.15.1), and keys it removed (global rate limits in 1.12, Datadog).
INGRESS_NGINX_KEYS = """
add-headers allow-backend-server-header allow-cross-namespace-resources allow-snippet-annotations
annotations-risk-level annotation-value-word-blocklist hide-headers access-log-params access-log-path
http-access-log-path stream-access-log-path enable-access-log-for-default-backend error-log-path
enable-modsecurity modsecurity-snippet enable-owasp-modsecurity-crs client-header-buffer-size
client-header-timeout client-body-buffer-size client-body-timeout disable-access-log disable-ipv6
disable-ipv6-dns enable-underscores-in-headers enable-ocsp ignore-invalid-headers retry-non-idempotent
error-log-level http2-max-field-size http2-max-header-size http2-max-requests http2-max-concurrent-streams
hsts hsts-include-subdomains hsts-max-age hsts-preload keep-alive keep-alive-requests
large-client-header-buffers log-format-escape-none log-format-escape-json log-format-upstream
log-format-stream enable-multi-accept max-worker-connections max-worker-open-files map-hash-bucket-size
nginx-status-ipv4-whitelist nginx-status-ipv6-whitelist proxy-real-ip-cidr proxy-set-headers
server-name-hash-max-size server-name-hash-bucket-size proxy-headers-hash-bucket-size reuse-port
server-tokens ssl-ciphers ssl-ecdh-curve ssl-dh-param ssl-protocols ssl-session-cache
ssl-session-cache-size ssl-session-tickets ssl-session-ticket-key ssl-buffer-size use-proxy-protocol
proxy-protocol-header-timeout enable-aio-write use-gzip use-geoip use-geoip2 geoip2-autoreload-in-minutes
enable-brotli brotli-level brotli-min-length brotli-types use-http2 gzip-disable gzip-level
gzip-min-length gzip-types worker-processes worker-cpu-affinity worker-shutdown-timeout enable-serial-reloads
load-balance variables-hash-bucket-size variables-hash-max-size upstream-keepalive-connections
upstream-keepalive-time upstream-keepalive-timeout upstream-keepalive-requests limit-conn-zone-variable
proxy-stream-timeout proxy-stream-next-upstream proxy-stream-next-upstream-timeout
proxy-stream-next-upstream-tries proxy-stream-responses bind-address use-forwarded-headers enable-real-ip
forwarded-for-header forwarded-for-proxy-protocol-header compute-full-forwarded-for
proxy-add-original-uri-header generate-request-id jaeger-collector-host jaeger-collector-port
jaeger-endpoint jaeger-service-name jaeger-propagation-format jaeger-sampler-type jaeger-sampler-param
jaeger-sampler-host jaeger-sampler-port jaeger-trace-context-header-name jaeger-debug-header
jaeger-baggage-header jaeger-trace-baggage-header-prefix enable-opentelemetry
opentelemetry-trust-incoming-span opentelemetry-operation-name opentelemetry-config otlp-collector-host
otlp-collector-port otel-max-queuesize otel-schedule-delay-millis otel-max-export-batch-size
otel-service-name otel-sampler otel-sampler-parent-based otel-sampler-ratio main-snippet http-snippet
server-snippet stream-snippet location-snippet custom-http-errors proxy-body-size proxy-connect-timeout
proxy-read-timeout proxy-send-timeout proxy-buffers-number proxy-buffer-size proxy-busy-buffers-size
proxy-cookie-path proxy-cookie-domain proxy-next-upstream proxy-next-upstream-timeout
proxy-next-upstream-tries proxy-redirect-from proxy-request-buffering ssl-redirect force-ssl-redirect
denylist-source-range whitelist-source-range skip-access-log-urls limit-rate limit-rate-after
lua-shared-dicts http-redirect-code proxy-buffering limit-req-status-code limit-conn-status-code
enable-syslog syslog-host syslog-port no-tls-redirect-locations global-allowed-response-headers
global-auth-url global-auth-method global-auth-signin global-auth-signin-redirect-param
global-auth-response-headers global-auth-request-redirect global-auth-snippet global-auth-cache-key
global-auth-cache-duration global-auth-always-set-cookie no-auth-locations block-cidrs block-user-agents
block-referers proxy-ssl-location-only default-type service-upstream ssl-reject-handshake debug-connections
strict-validate-path-type grpc-buffer-size-kb relative-redirects ssl-early-data ssl-session-timeout
proxy-headers-hash-max-size jaeger-tracer-baggage-header-prefix
app-root bind-address-ipv4 bind-address-ipv6 disable-http-access-log disable-proxy-intercept-errors
disable-stream-access-log enable-auth-access-log forwarded-host-header preserve-trailing-slash
proxy-http-version proxy-max-temp-file-size proxy-redirect-to upstream-hash-by upstream-hash-by-subset
upstream-hash-by-subset-size use-port-in-redirects
global-rate-limit-memcached-host global-rate-limit-memcached-port global-rate-limit-memcached-connect-timeout
global-rate-limit-memcached-max-idle-timeout global-rate-limit-memcached-pool-size
global-rate-limit-status-code
datadog-collector-host datadog-collector-port datadog-environment datadog-operation-name-override
datadog-priority-sampling datadog-sample-rate datadog-service-name
""".split()  # noqa: SIM905


def configmap(data: object, name: str = "controller", namespace: str = "ingress-nginx") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }


def diagnostics(result: Any) -> list[str]:
    return [str(d) for d in result.diagnostics]


# -- the registry --------------------------------------------------------------------------------


def test_every_ingress_nginx_key_is_known() -> None:
    missing = sorted(set(INGRESS_NGINX_KEYS) - set(REGISTRY))
    assert missing == []


# A valid value, not the default, of each key fastingress honours.
SAMPLES = {
    "use-forwarded-headers": "true",
    "enable-real-ip": "true",
    "compute-full-forwarded-for": "true",
    "forwarded-for-header": "CF-Connecting-IP",
    "proxy-real-ip-cidr": "10.0.0.0/8",
    "use-proxy-protocol": "true",
    "proxy-protocol-header-timeout": "2s",
    "ssl-redirect": "false",
    "force-ssl-redirect": "true",
    "hsts": "true",
    "hsts-max-age": "60",
    "hsts-include-subdomains": "false",
    "hsts-preload": "true",
    "ssl-protocols": "TLSv1.3",
    "ssl-ciphers": "ECDHE-RSA-AES256-GCM-SHA384",
    "ssl-session-cache": "false",
    "ssl-session-tickets": "false",
    "ssl-session-timeout": "10m",
    "use-http2": "false",
    "http2-max-concurrent-streams": "10",
    "http-redirect-code": "301",
    "proxy-body-size": "8m",
    "proxy-connect-timeout": "2",
    "proxy-read-timeout": "30",
    "proxy-send-timeout": "30",
    "client-header-timeout": "10",
    "client-body-timeout": "10",
    "keep-alive": "5",
    "keep-alive-requests": "10",
    "upstream-keepalive-connections": "8",
    "upstream-keepalive-timeout": "5",
    "upstream-keepalive-requests": "5",
    "large-client-header-buffers": "4 16k",
    "enable-underscores-in-headers": "true",
    "ignore-invalid-headers": "false",
    "custom-http-errors": "404",
    "server-tokens": "true",
    "allow-backend-server-header": "true",
    "add-headers": "ingress-nginx/headers",
    "proxy-set-headers": "ingress-nginx/headers",
    "log-format-upstream": "$remote_addr $status",
    "log-format-escape-json": "true",
    "log-format-escape-none": "true",
    "disable-access-log": "true",
    "disable-http-access-log": "true",
    "skip-access-log-urls": "/healthz",
    "block-cidrs": "192.0.2.0/24",
    "block-user-agents": "~*bot",
    "block-referers": "spam.example",
    "denylist-source-range": "192.0.2.0/24",
    "whitelist-source-range": "10.0.0.0/8",
    "allow-snippet-annotations": "true",
    "load-balance": "ewma",
    "proxy-next-upstream": "error http_502",
    "proxy-next-upstream-timeout": "5",
    "proxy-next-upstream-tries": "2",
    "proxy-cookie-domain": "localhost example.org",
    "proxy-cookie-path": "/one/ /",
    "proxy-redirect-from": "http://a.example/",
    "proxy-redirect-to": "https://b.example/",
    "proxy-http-version": "1.1",
    "service-upstream": "true",
    "limit-req-status-code": "429",
    "limit-conn-status-code": "429",
    "limit-rate": "100",
    "limit-rate-after": "10",
}


def test_every_implemented_key_has_a_sample() -> None:
    assert sorted(SAMPLES) == sorted(k for k, row in REGISTRY.items() if row.status == "implemented")


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_no_key_is_silent(key: str) -> None:
    """Whatever a user writes for a key, it is honoured (the snapshot changes) or translation
    says what happens (a diagnostic naming the key); a bad value always says so."""
    from fastingress.translate.cluster import index_objects
    from fastingress.translate.configmap import configure
    from fastingress.translate.model import Sink

    row = REGISTRY[key]
    headers = configmap({"X-A": "1"}, name="headers")
    if row.status == "implemented":
        plain = configure({}, OPTIONS, Sink())
        sink = Sink()
        cluster = index_objects([configmap({key: SAMPLES[key]}), headers], Sink())
        honoured = configure(cluster.configmaps, OPTIONS, sink)
        said = [d for d in sink.sorted() if d.field == f"data[{key}]"]
        assert honoured != plain or said, f"{key}: {SAMPLES[key]!r} neither honoured nor mentioned"
        bad = translate([configmap({key: "\x00 \x01"})], OPTIONS)
        assert [d.severity for d in bad.diagnostics if d.field == f"data[{key}]"] in (
            ["warning"],
            ["error"],
        ), key
        return
    value = {"closed": "http://auth"}.get(row.status, "on")
    result = translate([configmap({key: value})], OPTIONS)
    assert [d for d in result.diagnostics if d.field == f"data[{key}]"], f"{key}: no diagnostic for {value!r}"


def test_the_deployed_configmap_translates_cleanly() -> None:
    from fastingress.manifests import load_file

    objects, problems = load_file(REPO / "config" / "deploy" / "25-configmap.yaml")
    assert problems == []
    result = translate(objects, TranslateOptions(configmap="fastingress/fastingress"))
    assert diagnostics(result) == []
    assert result.snapshot.settings.max_body_size == 1024 * 1024


# -- parsers -------------------------------------------------------------------------------------


def test_parse_bool_as_go_does() -> None:
    assert [parse_bool(v) for v in ("true", "1", "T", "TRUE", "false", "0", "f", "False")] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    with pytest.raises(BadValue) as exc:
        parse_bool("ture")
    assert exc.value.suggestion == "true"


def test_durations_and_sizes() -> None:
    options = translate(
        [
            configmap(
                {
                    "proxy-read-timeout": "90",
                    "proxy-connect-timeout": "1m",
                    "client-header-timeout": "1h",
                    "keep-alive": "0",
                    "proxy-protocol-header-timeout": "500ms",
                    "ssl-session-timeout": "10m",
                    "client-body-timeout": "1m30s",
                }
            )
        ],
        OPTIONS,
    ).snapshot.settings
    assert options.client_header_timeout == 3600.0
    assert options.client_body_timeout == 90.0
    assert options.keepalive_timeout == 0.0
    assert options.proxy_protocol_header_timeout == 0.5
    assert options.ssl_session_timeout == 600.0
    assert parse_header_buffers("4 8k") == 32768
    assert parse_header_buffers(" 2   512k ") == 1024 * 1024
    for bad in ("4", "8k", "four 8k", "1 1", "9999 1m"):
        with pytest.raises(ValueError):
            parse_header_buffers(bad)


def test_parse_cidrs_and_patterns() -> None:
    assert parse_cidrs("10.0.0.0/8, 192.168.1.7,2001:db8::/32 , 10.1.2.3/8") == (
        "10.0.0.0/8",
        "192.168.1.7/32",
        "2001:db8::/32",
    )
    with pytest.raises(ValueError, match="not an IP"):
        parse_cidrs("10.0.0.0/8, example.com")
    assert parse_patterns("~*bot, curl/7.0, ~^Wget") == ("~*bot", "curl/7.0", "~^Wget")
    with pytest.raises(ValueError, match="regular expression"):
        parse_patterns("~(unclosed")


def test_parse_codes_protocols_ciphers_redirects() -> None:
    assert parse_codes("503, 404,404") == (404, 503)
    for bad in ("200", "302", "404, x"):
        with pytest.raises(ValueError):
            parse_codes(bad)
    assert parse_ssl_protocols("TLSv1.3") == ("TLSv1.3",)
    noted = parse_ssl_protocols("TLSv1 TLSv1.1 TLSv1.2")
    assert isinstance(noted, Noted) and noted.value == ("TLSv1.2",) and "TLSv1, TLSv1.1" in noted.note
    with pytest.raises(ValueError):
        parse_ssl_protocols("SSLv3")
    with pytest.raises(BadValue) as exc:
        parse_ssl_protocols("TLSv1.4")
    assert exc.value.suggestion in ("TLSv1.3", "TLSv1.2", "TLSv1")
    assert parse_ssl_ciphers("ECDHE-RSA-AES128-GCM-SHA256") == "ECDHE-RSA-AES128-GCM-SHA256"
    with pytest.raises(ValueError, match="OpenSSL"):
        parse_ssl_ciphers("NOT-A-CIPHER")
    assert parse_redirect_code("301") == 301
    with pytest.raises(BadValue):
        parse_redirect_code("303")


def test_parse_log_format() -> None:
    assert parse_log_format('$remote_addr "$request" $http_x_team') == '$remote_addr "$request" $http_x_team'
    noted = parse_log_format("$remote_adr $status")
    assert isinstance(noted, Noted) and "$remote_adr" in noted.note and "$remote_addr" in noted.note
    assert unknown_variables("${status} $nope $http_") == ["nope", "http_"]
    assert parse("a $b ${c}d") == ["a ", ("b",), " ", ("c",), "d"]


# -- translation: last good values, missing ConfigMaps, references ----------------------------------


def test_a_bad_value_keeps_the_last_good_one_and_says_so() -> None:
    memory = ConfigMemory()
    first = translate([configmap({"proxy-body-size": "20m", "ssl-redirect": "false"})], OPTIONS, memory)
    assert first.snapshot.settings.max_body_size == 20 * 1024 * 1024
    second = translate([configmap({"proxy-body-size": "20 MB", "ssl-redirect": "false"})], OPTIONS, memory)
    assert second.snapshot.settings.max_body_size == 20 * 1024 * 1024
    assert diagnostics(second) == [
        "warning ConfigMap ingress-nginx/controller data[proxy-body-size]: bad value '20 MB': "
        "expected a size "
        "like 8, 1k, 20m or 1g (0: unlimited); keeping the last good value '20m'"
    ]
    # Still bad on the next change: still the last good value (not the default).
    third = translate([configmap({"proxy-body-size": "20 MB", "ssl-redirect": "true"})], OPTIONS, memory)
    assert third.snapshot.settings.max_body_size == 20 * 1024 * 1024
    # Without a memory (``fastingress check``, a first start): the default, and it says so.
    fresh = translate([configmap({"proxy-body-size": "20 MB"})], OPTIONS)
    assert fresh.snapshot.settings.max_body_size == 1024 * 1024
    assert "default used" in diagnostics(fresh)[0]
    # A key removed is as the user asked: the default.
    gone = translate([configmap({})], OPTIONS, memory)
    assert gone.snapshot.settings.max_body_size == 1024 * 1024
    assert (
        translate([configmap({"proxy-body-size": "x"})], OPTIONS, memory).snapshot.settings.max_body_size
        == 1024 * 1024
    )


def test_data_that_is_not_a_map_keeps_every_last_good_value() -> None:
    memory = ConfigMemory()
    translate([configmap({"keep-alive-requests": "7", "hsts": "true"})], OPTIONS, memory)
    broken = translate([configmap(["keep-alive-requests", "7"])], OPTIONS, memory)
    settings = broken.snapshot.settings
    assert (settings.keepalive_requests, settings.hsts) == (7, True)
    assert diagnostics(broken) == [
        "error ConfigMap ingress-nginx/controller data: data is not a map of strings; keeping the last good "
        "value of every key"
    ]


def test_a_missing_configmap_means_the_defaults_and_says_so() -> None:
    memory = ConfigMemory()
    translate([configmap({"keep-alive-requests": "7"})], OPTIONS, memory)
    result = translate([configmap({"keep-alive-requests": "7"}, name="other")], OPTIONS, memory)
    assert result.snapshot.settings.keepalive_requests == 1000
    assert diagnostics(result) == [
        "warning ConfigMap ingress-nginx/controller: --configmap: ConfigMap not found; the defaults are used "
        "until it exists"
    ]
    assert memory.good == {}


def test_flags_are_the_base_and_keys_win() -> None:
    settings = TranslationSettings(hsts=True, hsts_max_age=100, configmap="ingress-nginx/controller")
    from fastingress.settings import translate_options

    options = translate_options(settings)
    assert translate([configmap({})], options).snapshot.settings.hsts is True
    result = translate([configmap({"hsts": "false"})], options)
    assert (result.snapshot.settings.hsts, result.snapshot.settings.hsts_max_age) == (False, 100)


def test_headers_configmaps_and_their_last_good_version() -> None:
    memory = ConfigMemory()
    main = configmap({"add-headers": "ingress-nginx/resp", "proxy-set-headers": "up"})
    resp = configmap({"X-Frame-Options": "DENY", "Bad Name": "x", "X-Empty": ""}, name="resp")
    up = configmap({"X-Team": "platform"}, name="up")
    result = translate([main, resp, up], OPTIONS, memory)
    settings = result.snapshot.settings
    assert settings.add_headers == (("X-Empty", ""), ("X-Frame-Options", "DENY"))
    assert settings.proxy_set_headers == (("X-Team", "platform"),)
    assert any("data[Bad Name]" in d for d in diagnostics(result))
    # The headers ConfigMap disappears: its last good headers stay, and it says so.
    kept = translate([main, up], OPTIONS, memory)
    assert kept.snapshot.settings.add_headers == settings.add_headers
    assert "keeping the headers it had when last read" in " ".join(diagnostics(kept))
    # Without a memory: none, and a warning.
    lost = translate([main, up], OPTIONS)
    assert lost.snapshot.settings.add_headers == ()
    assert referenced_configmaps(main, "ingress-nginx") == {
        ("ingress-nginx", "resp"),
        ("ingress-nginx", "up"),
    }


def test_global_auth_url_fails_closed_and_unsafe_fail_open_serves() -> None:
    ingress = {
        "kind": "Ingress",
        "metadata": {"name": "a", "namespace": "d"},
        "spec": {
            "ingressClassName": "fastingress",
            "rules": [
                {
                    "host": "a.test",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "s", "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ],
        },
    }
    data = {"global-auth-url": "http://auth/check"}
    closed = translate([configmap(data), ingress], OPTIONS)
    action = closed.snapshot.virtual_hosts[0].routes[0].action
    assert getattr(action, "status", 0) == 503 and "global-auth-url" in getattr(action, "body", "")
    opened = translate(
        [configmap(data), ingress], TranslateOptions(configmap=OPTIONS.configmap, unsafe_fail_open=True)
    )
    assert opened.snapshot.virtual_hosts[0].routes[0].action.__class__.__name__ == "Forward"
    assert "served WITHOUT this protection" in " ".join(diagnostics(opened))


def test_incremental_translator_follows_configmap_changes() -> None:
    translator = Translator(OPTIONS)
    objects: list[Obj] = [configmap({"proxy-body-size": "2m"})]
    assert translator.translate(objects).snapshot.settings.max_body_size == 2 * 1024 * 1024
    objects = [configmap({"proxy-body-size": "bad"})]  # last good value kept by the translator
    again = translator.translate(objects)
    assert again.snapshot.settings.max_body_size == 2 * 1024 * 1024
    assert "keeping the last good value '2m'" in diagnostics(again)[0]
    assert translator.translate(objects).diagnostics == again.diagnostics  # replayed, not recomputed
    objects = [configmap({"proxy-body-size": "3m"})]
    assert translator.translate(copy.deepcopy(objects)).snapshot.settings.max_body_size == 3 * 1024 * 1024


def test_check_lints_the_configmap_with_its_file(tmp_path: Path) -> None:
    path = tmp_path / "controller.yaml"
    path.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: controller, namespace: ingress-nginx}\n"
        "data: {proxy-bdy-size: 8m, use-gzip: 'true'}\n"
    )
    report = check(
        CheckSettings(
            paths=(str(path),), translation=TranslationSettings(configmap="ingress-nginx/controller")
        )
    )
    lines = [str(f) for f in report.diagnostics]
    assert lines == [
        f"{path}: warning ConfigMap ingress-nginx/controller data[proxy-bdy-size]: unknown key (did you mean "
        "`proxy-body-size`?); ignored",
        f"{path}: warning ConfigMap ingress-nginx/controller data[use-gzip]: not implemented yet (responses "
        "are not compressed); ignored",
    ]


# -- PROXY protocol -------------------------------------------------------------------------------


def test_proxy_protocol_v1() -> None:
    header = v1_header("203.0.113.7", "10.0.0.1", 51234, 443)
    assert parse_proxy_header(header + b"GET / HTTP/1.1\r\n") == ProxyHeader(
        len(header), "203.0.113.7", 51234, "10.0.0.1", 443
    )
    six = v1_header("2001:db8::7", "2001:db8::1", 1, 80)
    assert parse_proxy_header(six).source == "2001:db8::7"
    assert parse_proxy_header(b"PROXY UNKNOWN\r\nGET") == ProxyHeader(15, None)
    for partial in (b"P", b"PROXY", b"PROXY TCP4 203.0.113.7 10.0"):
        assert parse_proxy_header(partial) is NEED_MORE
    for bad in (
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 a b 1 2\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        b"PRI * HTTP/2.0",
        b"PROXY " + b"x" * 120,
        b"\x16\x03\x01",
    ):
        with pytest.raises(BadProxyHeader):
            parse_proxy_header(bad)


def test_proxy_protocol_v2() -> None:
    header = v2_header("198.51.100.9", "10.0.0.1", 40000, 443, tlvs=b"\x04\x00\x01x")
    assert parse_proxy_header(header + b"\x16\x03\x01") == ProxyHeader(
        len(header), "198.51.100.9", 40000, "10.0.0.1", 443
    )
    assert parse_proxy_header(v2_header("2001:db8::9", "2001:db8::1", 1, 2)).source == "2001:db8::9"
    local = v2_header("", "", 0, 0, local=True)
    assert parse_proxy_header(local) == ProxyHeader(16, None)
    for cut in range(1, len(header)):
        assert parse_proxy_header(header[:cut]) is NEED_MORE
    bad_version = bytearray(header)
    bad_version[12] = 0x31
    for bad in (bytes(bad_version), header[:12] + b"\x21\x11\xff\xff", b"\r\n\r\nxx"):
        with pytest.raises(BadProxyHeader):
            parse_proxy_header(bad)


# -- client IP ------------------------------------------------------------------------------------


def forwarding(**kw: Any) -> Forwarding:
    found = Forwarding.compile(GlobalSettings(**kw))
    assert found is not None
    return found


def test_real_ip_is_the_first_untrusted_address_from_the_right() -> None:
    fwd = forwarding(use_forwarded_headers=True, proxy_real_ip_cidr=("10.0.0.0/8",))
    chain = b"198.51.100.1, 203.0.113.5, 10.1.1.1"
    view = fwd.view([(b"x-forwarded-for", chain)], [], b"10.0.0.2", False, b"")
    assert (view.ip, view.xff, view.peer) == (b"203.0.113.5", b"203.0.113.5", b"10.0.0.2")
    # The peer is not trusted: what it claims is ignored.
    view = fwd.view(
        [(b"x-forwarded-for", chain), (b"x-forwarded-proto", b"https")], [], b"192.0.2.1", False, b""
    )
    assert (view.ip, view.https, view.proto) == (b"192.0.2.1", False, None)
    # All trusted: the leftmost; an unparsable entry: the peer; several header lines join.
    everything = forwarding(use_forwarded_headers=True)
    assert everything.real_ip(b"10.0.0.1, 10.0.0.2", b"10.0.0.3") == b"10.0.0.1"
    assert fwd.real_ip(b"203.0.113.5, nonsense, 10.0.0.9", b"10.0.0.2") == b"10.0.0.2"
    view = fwd.view(
        [(b"x-forwarded-for", b"203.0.113.5"), (b"x-forwarded-for", b"10.0.0.9")], [], b"10.0.0.2", False, b""
    )
    assert view.ip == b"203.0.113.5"


def test_forwarded_proto_host_port_and_full_forwarded_for() -> None:
    fwd = forwarding(use_forwarded_headers=True, compute_full_forwarded_for=True)
    forwarded = [
        (b"x-forwarded-for", b"198.51.100.1"),
        (b"x-forwarded-proto", b"HTTPS"),
        (b"x-forwarded-host", b"shop.example.com, inner"),
        (b"x-forwarded-port", b"443"),
    ]
    view = fwd.view(forwarded, [], b"10.0.0.2", False, b"")
    assert view == (
        b"198.51.100.1",
        b"198.51.100.1, 10.0.0.2",
        True,
        b"https",
        b"443",
        b"shop.example.com",
        b"10.0.0.2",
    )
    # enable-real-ip: the address only, never proto/host/port.
    real = forwarding(enable_real_ip=True).view(forwarded, [], b"10.0.0.2", False, b"")
    assert (real.ip, real.https, real.proto, real.host) == (b"198.51.100.1", False, None, None)
    # Another header for the client address (CF-Connecting-IP), kept among the end-to-end headers.
    other = forwarding(use_forwarded_headers=True, forwarded_for_header="CF-Connecting-IP")
    assert (
        other.view(None, [(b"cf-connecting-ip", b"203.0.113.77")], b"10.0.0.2", False, b"").ip
        == b"203.0.113.77"
    )


def test_proxy_protocol_port_443_means_https() -> None:
    fwd = forwarding(use_proxy_protocol=True)
    view = fwd.view([(b"x-forwarded-proto", b"http")], [], b"203.0.113.7", False, b"443")
    assert (view.ip, view.https, view.proto, view.port) == (b"203.0.113.7", True, b"https", b"443")
    assert Forwarding.compile(GlobalSettings()) is None  # nothing asked: nothing to pay


def test_front_blocks_by_address_agent_and_referer() -> None:
    front = Front.compile(
        GlobalSettings(
            block_cidrs=("203.0.113.0/24",),
            block_user_agents=("~*bot", "curl/7.0"),
            block_referers=("~^https?://spam\\.",),
        )
    )
    assert front is not None and front.forwarding is None
    info = scan_request([(b"host", b"a"), (b"user-agent", b"Mozilla/5.0")])
    assert front.apply(info, b"198.51.100.1", False, b"") == (b"198.51.100.1", False, None)
    assert front.apply(info, b"203.0.113.9", False, b"")[2] == "block-cidrs"
    for agent, refused in (
        (b"GoogleBot/2.1", "block-user-agents"),
        (b"curl/7.0", "block-user-agents"),
        (b"curl/7.01", None),
    ):
        info = scan_request([(b"user-agent", agent)])
        assert front.apply(info, b"198.51.100.1", False, b"")[2] == refused
    info = scan_request([(b"referer", b"http://spam.example/")])
    assert front.apply(info, b"198.51.100.1", False, b"")[2] == "block-referers"
    v4mapped = Guard.compile(GlobalSettings(block_cidrs=("10.0.0.0/8",)))
    assert v4mapped is not None
    assert (
        v4mapped.refuses(b"::ffff:10.0.0.1", []) == "block-cidrs"
    )  # an IPv4-mapped address is its IPv4 self
    assert v4mapped.refuses(b"::1", []) is None
    assert ipaddress.ip_address("::ffff:10.0.0.1").ipv4_mapped is not None


# -- header names, forwarded headers, response headers ---------------------------------------------


def test_header_names_as_nginx() -> None:
    headers = [(b"host", b"a"), (b"x_user", b"1"), (b"x-ok", b"2"), (b"x.dot", b"3"), (b"accept", b"4")]
    kept = {n for n, _ in scan_request(headers, DROP_INVALID_AND_UNDERSCORE).headers}
    assert kept == {b"x-ok", b"accept"}
    assert {n for n, _ in scan_request(headers, DROP_INVALID_NAMES).headers} == {
        b"x-ok",
        b"accept",
        b"x_user",
    }
    assert {n for n, _ in scan_request(headers, KEEP_ALL_NAMES).headers} == {
        b"x-ok",
        b"accept",
        b"x_user",
        b"x.dot",
    }


def test_forwarded_headers_are_set_aside_and_sent_from_the_view() -> None:
    info = scan_request([(b"host", b"a.test"), (b"x-forwarded-for", b"1.2.3.4"), (b"x-real-ip", b"5.6.7.8")])
    assert info.forwarded == [(b"x-forwarded-for", b"1.2.3.4"), (b"x-real-ip", b"5.6.7.8")]
    assert all(n not in (b"x-forwarded-for", b"x-real-ip") for n, _ in info.headers)
    out: list[tuple[bytes, bytes]] = []
    add_forwarded(out, info, host=b"a.test", client_ip=b"9.9.9.9", proto=b"http", port=b"80")
    assert dict(out)[b"x-forwarded-for"] == b"9.9.9.9"
    info.view = forwarding(use_forwarded_headers=True).view(
        info.forwarded, info.headers, b"10.0.0.1", False, b""
    )
    out = []
    add_forwarded(out, info, host=b"a.test", client_ip=b"10.0.0.1", proto=b"http", port=b"80")
    assert (dict(out)[b"x-forwarded-for"], dict(out)[b"x-real-ip"]) == (b"1.2.3.4", b"1.2.3.4")
    set_headers(out, ((b"x-real-ip", b"override"),))
    assert [v for n, v in out if n == b"x-real-ip"] == [b"override"]


def test_server_header_modes() -> None:
    upstream = [(b"server", b"gunicorn"), (b"content-type", b"text/plain")]
    assert (b"server", b"fastingress") in response_headers(upstream, b"fastingress")
    assert all(n != b"server" for n, _ in response_headers(upstream, b""))
    kept = response_headers(upstream, b"fastingress", keep_server=True)
    assert [v for n, v in kept if n == b"server"] == [b"gunicorn"]
    none = response_headers([(b"content-type", b"x")], b"fastingress", keep_server=True)
    assert [v for n, v in none if n == b"server"] == [b"fastingress"]


# -- access log -----------------------------------------------------------------------------------


def test_access_log_format() -> None:
    record = AccessRecord()
    record.client_ip, record.method, record.target, record.status = "203.0.113.7", "GET", "/a?b=1", 200
    record.body_bytes, record.duration = 42, 0.0123
    record.headers = [
        (b"user-agent", b'curl "8"'),
        (b"authorization", b"Basic YWxpY2U6c2VjcmV0"),
        (b"x-team", b"blue"),
    ]
    record.service, record.ingress = "shop/web:http", "shop/web"
    record.upstream_addr, record.upstream_status, record.upstream_time = "10.0.0.5:8080", 200, 0.01
    record.request_id = "abc"
    line = compile_format(
        '$remote_addr - $remote_user "$request" $status $body_bytes_sent "$http_user_agent" $request_time '
        "[$proxy_upstream_name] $upstream_addr $upstream_status $req_id $http_x_team "
        "$namespace/$ingress_name "
        "$service_name:$service_port $uri $args $nope"
    )(record)
    assert line == (
        '203.0.113.7 - alice "GET /a?b=1 HTTP/1.1" 200 42 "curl \\x228\\x22" 0.012 [shop-web-http] '
        "10.0.0.5:8080 200 abc blue shop/web web:http /a b=1 -"
    )
    json_line = compile_format('{"ua": "$http_user_agent"}', "json")(record)
    assert json_line == '{"ua": "curl \\"8\\""}'
    assert escape_default("é\n") == "\\xC3\\xA9\\x0A" and escape_json("a\tb") == "a\\u0009b"
    assert (
        request_length(b"GET", b"/", [(b"host", b"a")], 10) == len(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n") + 10
    )


def test_explain_shows_the_client_and_the_blocks() -> None:
    from fastingress.explain import ExplainRequest, explain

    ingress = {
        "kind": "Ingress",
        "metadata": {"name": "a", "namespace": "d"},
        "spec": {
            "ingressClassName": "fastingress",
            "tls": [{"hosts": ["a.test"], "secretName": "x"}],
            "rules": [
                {
                    "host": "a.test",
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "s", "port": {"number": 80}}},
                            }
                        ]
                    },
                }
            ],
        },
    }
    data = {"use-forwarded-headers": "true", "block-cidrs": "203.0.113.0/24", "http-redirect-code": "301"}
    snapshot = translate([configmap(data), ingress], OPTIONS).snapshot
    blocked = explain(
        snapshot, ExplainRequest(url="http://a.test/", headers=(("X-Forwarded-For", "203.0.113.4"),))
    )
    assert (blocked.outcome, blocked.status) == ("refused", 403)
    assert "block-cidrs refuses client 203.0.113.4" in blocked.reason
    redirected = explain(snapshot, ExplainRequest(url="http://a.test/"))
    assert (redirected.outcome, redirected.status) == ("redirect", 301)
    offloaded = explain(
        snapshot, ExplainRequest(url="http://a.test/", headers=(("X-Forwarded-Proto", "https"),))
    )
    assert offloaded.outcome == "forward"  # TLS ended at a trusted balancer: no redirect


def test_worker_compiles_the_configmap_once_per_snapshot() -> None:
    from fastingress.snapshot.schema import Snapshot
    from workers.pool import Pool
    from workers.routing import RouteTable
    from workers.state import Worker

    async def never(host: str, port: int, timeout: float) -> Any:
        raise AssertionError("no connection expected")

    worker = Worker(Pool(never), access_log=True)
    assert worker.front is None and worker.log_format is None and worker.access_log is True
    assert worker.answer_headers == ((b"server", b"fastingress"),)
    settings = GlobalSettings(
        access_log=False,
        log_format="$status",
        server_header="",
        add_headers=(("X-A", "1"), ("Bad", "\x00")),
        keepalive_timeout=0,
        underscores_in_headers=True,
        block_cidrs=("192.0.2.0/24",),
    )
    worker.install(RouteTable(Snapshot(settings=settings)), 2)
    assert worker.access_log is False  # the ConfigMap's disable-access-log wins over --access-log
    assert worker.log_format is not None and worker.answer_headers == ((b"x-a", b"1"),)
    assert worker.max_requests == 1 and worker.header_names == DROP_INVALID_NAMES
    assert worker.front is not None and worker.front.forwarding is None
    worker.install(RouteTable(Snapshot(settings=GlobalSettings(access_log=None))), 3)
    assert worker.access_log is True and worker.front is None and worker.max_requests == 1000
