"""The routing snapshot: THE contract between the control plane and the data plane.

Rules (msgspec schema evolution):
  * the schema only grows: new fields go at the END of a Struct and always have a default;
  * no field is ever renamed, removed or re-typed; ``SCHEMA_VERSION`` counts additions;
  * decoders ignore unknown fields, so an older worker can read a newer snapshot;
  * actions are tagged unions (``{"type": "forward", ...}``) so new kinds can be added.

Everything is frozen and uses tuples so a decoded snapshot can be shared freely and
hashed/compared.  ``gc=False``: snapshot objects can never form reference cycles, so the
garbage collector need not track them; a worker decoding a 10k-Ingress snapshot while it
still holds the previous one spends ~3.5x less time (measured 225 → 63 ms for 10 MB).
It changes nothing on the wire.  Translation emits everything sorted, so the same cluster state always
encodes to the same bytes.
"""

from __future__ import annotations

from typing import Literal

import msgspec

SCHEMA_VERSION = 4  # 2: TLS, redirects, upstream TLS, HTTP/2; 3: regex routes, rewrite-target;
# 4: ingress-nginx annotation policies (canary, access, auth, limits, CORS, headers, errors, balancing)
# (issue 9 areas fill schema 4's placeholder Structs while 4 is unreleased; selection: Canary,
# NextUpstream, Balancing, SessionCookie; configmap: GlobalSettings's ConfigMap block)

MIB = 1024 * 1024

PathType = Literal["Exact", "Prefix"]
Protocol = Literal["HTTP", "HTTPS", "GRPC", "GRPCS", "H2C", "AUTO_HTTP", "FCGI"]


class Endpoint(msgspec.Struct, frozen=True, gc=False):
    """One Pod endpoint from an EndpointSlice (or a static address)."""

    address: str
    port: int
    ready: bool = True  # takes new traffic
    serving: bool = True  # may finish in-flight requests
    terminating: bool = False


class Upstream(msgspec.Struct, frozen=True, gc=False):
    """A set of endpoints plus how to talk to them.

    ``name`` is unique in a snapshot: ``namespace/service:port`` with a ``#hash``
    suffix when Ingress annotations give it non-default settings.
    For ExternalName Services, ``endpoints`` is empty and the worker resolves
    ``external_name`` itself (re-resolving every ``dns_ttl`` seconds), using ``port``.
    """

    name: str
    endpoints: tuple[Endpoint, ...] = ()
    protocol: Protocol = "HTTP"
    external_name: str | None = None
    port: int = 0
    dns_ttl: float = 30.0
    host_override: str | None = None  # upstream-vhost: Host header (and SNI) sent upstream
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    send_timeout: float = 60.0
    service: str = ""  # "namespace/name" of the Service, for metrics and logs
    # -- schema 2: upstream TLS (backend-protocol HTTPS/GRPCS) --------------------------
    tls_verify: bool = False  # proxy-ssl-verify; off by default like nginx
    tls_ca_pem: str | None = None  # proxy-ssl-secret's ca.crt, used when tls_verify
    tls_server_name: str | None = None  # proxy-ssl-name: SNI and verified name
    tls_sni: bool = True  # proxy-ssl-server-name (send SNI at all)
    # -- schema 4 -----------------------------------------------------------------------
    balancing: Balancing | None = None  # load-balance, upstream-hash-by, affinity
    tls_verify_depth: int = 1  # proxy-ssl-verify-depth: at most this many intermediate CAs (nginx: 1)


class WeightedBackend(msgspec.Struct, frozen=True, gc=False):
    upstream: str  # Upstream.name
    weight: int = 100


class Forward(msgspec.Struct, frozen=True, tag="forward", gc=False):
    """Proxy to one of the weighted backends."""

    backends: tuple[WeightedBackend, ...]


class Redirect(msgspec.Struct, frozen=True, tag="redirect", gc=False):
    """Answer with a redirect; ``location`` may be absolute or a path."""

    location: str
    status: int = 308


class Respond(msgspec.Struct, frozen=True, tag="respond", gc=False):
    """Answer directly with a short body."""

    status: int
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"


Action = Forward | Redirect | Respond


# -- schema 4: the policies of ingress-nginx annotations (issue 9), one Struct per area -------
# Each is None on a route that does not use it (a worker then compiles nothing for it).


class Canary(msgspec.Struct, frozen=True, gc=False):
    """canary-* of a canary Ingress, attached to the main route it shadows (area: selection).

    Per request, as ingress-nginx's balancer.lua decides: a session cookie naming one of the two
    backends (affinity) first, then ``header``, then ``cookie``, then ``weight`` out of
    ``weight_total``.  The main route keeps its own policies; the canary only changes the backend.
    """

    upstream: str = ""  # Upstream.name of the canary's backend
    ingress: str = ""  # "namespace/name" of the canary Ingress
    service: str = ""  # "namespace/name:port" of the canary's backend, for metrics and explain
    header: str = ""  # canary-by-header, lower-case ("": none)
    header_value: str = ""  # canary-by-header-value: this exact value means canary
    header_pattern: str = ""  # canary-by-header-pattern: a regex searched in the value (if no header_value)
    cookie: str = ""  # canary-by-cookie ("": none)
    weight: int = 0  # canary-weight: this many requests out of weight_total go to the canary
    weight_total: int = 100  # canary-weight-total (at least 100, as in ingress-nginx)


class NextUpstream(msgspec.Struct, frozen=True, gc=False):
    """proxy-next-upstream, -tries, -timeout (area: selection): when a failed attempt is made
    again on another endpoint (nginx's proxy_next_upstream).  ``conditions`` holds nginx's tokens
    (error, timeout, invalid_header, http_500, http_502, http_503, http_504, http_403, http_404,
    http_429, non_idempotent); empty means off."""

    conditions: tuple[str, ...] = ("error", "timeout")
    tries: int = 3  # attempts in all, the first included; 0: no limit
    timeout: float = 0.0  # seconds after the first attempt during which another may start; 0: no limit


class SourceRanges(msgspec.Struct, frozen=True, gc=False):
    """allowlist-/whitelist-source-range, denylist-source-range (area: access).

    CIDRs in their normal form (``10.0.0.0/8``, ``2001:db8::/32``; a bare address is a /32 or
    /128), as nginx's ``deny ...; allow ...; deny all;``: a client in ``deny`` gets 403; then,
    when ``allow`` is not empty, a client outside it gets 403 too."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


class BasicAuth(msgspec.Struct, frozen=True, gc=False):
    """auth-type basic|digest with its users from auth-secret (area: access).

    ``users``: (user, htpasswd hash) in file order (basic; the first line of a user wins);
    ``digest_users``: (user, realm, HA1 = md5(user:realm:password)) (digest, htdigest lines).
    Names and hashes are the Secret's bytes as latin-1 text.  Never logged."""

    type: Literal["basic", "digest"] = "basic"
    realm: str = ""  # auth-realm: WWW-Authenticate: Basic realm="..."
    secret: str = ""  # auth-secret "namespace/name", for logs and explain
    users: tuple[tuple[str, str], ...] = ()
    digest_users: tuple[tuple[str, str, str], ...] = ()


class ClientAuth(msgspec.Struct, frozen=True, gc=False):
    """auth-tls-* of a virtual host: client certificates (area: access).

    The whole host asks for (and checks) client certificates, as nginx's server-level
    ``ssl_verify_client``; its routes carry ``RoutePolicy.client_auth`` so that their requests
    are checked against this."""

    ca_pem: str = ""  # auth-tls-secret's ca.crt: the CAs client certificates must chain to
    crl_pem: str = ""  # its ca.crl, if any (then every certificate of the chain is checked)
    verify: Literal["on", "off", "optional", "optional_no_ca"] = "on"  # auth-tls-verify-client
    depth: int = 1  # auth-tls-verify-depth
    pass_certificate: bool = False  # auth-tls-pass-certificate-to-upstream: ssl-client-cert header
    match_cn: str = ""  # auth-tls-match-cn: a regex searched in the subject DN ("CN=..."); "" = any
    error_page: str = ""  # auth-tls-error-page: a redirect instead of 400
    secret: str = ""  # "namespace/name" of auth-tls-secret, for logs and explain


class AuthHeader(msgspec.Struct, frozen=True, gc=False):
    """One header the auth subrequest sets (auth-proxy-set-headers): name and value template."""

    name: str  # lower-case
    value: tuple[str, ...] = ()  # a Template (see ExternalAuth)


class CacheValid(msgspec.Struct, frozen=True, gc=False):
    """One ``proxy_cache_valid`` rule of auth-cache-duration: these statuses, this long."""

    statuses: tuple[int, ...] = ()  # () means any status ("any")
    seconds: float = 300.0


class ExternalAuth(msgspec.Struct, frozen=True, gc=False):
    """auth-url and its companions (area: external auth): nginx's ``auth_request`` subrequest.

    A *template* is a value with nginx variables, parsed once in translation: a tuple of
    strings alternating literal text (even indices) and variable names (odd indices), e.g.
    ``https://$host/oauth2/auth`` is ``("https://", "host", "/oauth2/auth")``.  The names are
    ones the workers know (``fastingress.snapshot.nginxvars``).
    """

    url: tuple[str, ...] = ()  # template of the absolute http(s) auth URL
    method: str = ""  # auth-method; "" is GET, as nginx sends subrequests
    signin: tuple[str, ...] = ()  # template of the 302 Location for a 401 (with its rd= param); () none
    response_headers: tuple[str, ...] = ()  # lower-case names copied from a 2xx auth answer upstream
    request_redirect: tuple[str, ...] = ("", "request_uri", "")  # X-Auth-Request-Redirect template
    proxy_set_headers: tuple[AuthHeader, ...] = ()  # auth-proxy-set-headers (from a ConfigMap)
    cache_key: tuple[str, ...] = ()  # auth-cache-key template; () means no caching
    cache_valid: tuple[CacheValid, ...] = ()  # auth-cache-duration, first match wins
    cache_zone: str = ""  # what the cache key is prefixed with: host, path and path type of the route
    keepalive: int = 32  # idle connections kept per auth origin and worker (0: one per subrequest)
    keepalive_requests: int = 1000
    keepalive_timeout: float = 60.0
    always_set_cookie: bool = False  # Set-Cookie of the auth answer on every response, not only 2xx/3xx
    connect_timeout: float = 60.0  # nginx's defaults in the auth location (proxy_connect_timeout)
    read_timeout: float = 60.0  # (proxy_read_timeout)


class Limits(msgspec.Struct, frozen=True, gc=False):
    """limit-rps, -rpm, -connections, -burst-multiplier, -allowlist, -rate, -rate-after (area: limits).

    Counted per client IP, per replica (all its workers together, ``workers.limiter``); the
    routes of one Ingress share their counters (``zone``), as ingress-nginx gives each Ingress
    one zone per kind of limit.  0 means "no such limit".
    """

    zone: str = ""  # "namespace/name" of the Ingress: its routes share the counters
    rps: int = 0  # limit-rps: requests per second (nginx limit_req, leaky bucket)
    rpm: int = 0  # limit-rpm: requests per minute
    burst_multiplier: int = 5  # limit-burst-multiplier: burst = rps (rpm) x this, nodelay
    connections: int = 0  # limit-connections: requests in progress at once (nginx limit_conn)
    allowlist: tuple[str, ...] = ()  # limit-allowlist: CIDRs exempt from rps, rpm and connections
    rate: int = 0  # limit-rate: response bytes per second, per request (nginx limit_rate)
    rate_after: int = 0  # limit-rate-after: bytes of a response sent before the rate applies


CORS_METHODS = "GET, PUT, POST, DELETE, PATCH, OPTIONS"  # ingress-nginx's defaults
CORS_HEADERS = (
    "DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,Content-Type,Range,Authorization"
)
CORS_MAX_AGE = 1728000


class Cors(msgspec.Struct, frozen=True, gc=False):
    """enable-cors and cors-* (area: http), with ingress-nginx's defaults.

    ``allow_origins`` is ``("*",)`` (any origin, answered ``*``) or the allowed origins as
    written (``scheme://host[:port]``, ``scheme://*.host[:port]`` with ``*`` one DNS label, or
    ``null``), matched case-insensitively and whole; empty: no origin is allowed."""

    allow_origins: tuple[str, ...] = ("*",)
    allow_methods: str = CORS_METHODS
    allow_headers: str = CORS_HEADERS
    expose_headers: str = ""  # "" : no Access-Control-Expose-Headers
    allow_credentials: bool = True
    max_age: int = CORS_MAX_AGE


class HeaderRules(msgspec.Struct, frozen=True, gc=False):
    """custom-headers, proxy-redirect-*, proxy-cookie-*, connection-proxy-header (area: http)."""

    response: tuple[tuple[str, str], ...] = ()  # custom-headers: set on every response (replacing)
    redirect_from: str = ""  # proxy-redirect-from: a Location/Refresh URL starting with this...
    redirect_to: str = ""  # ...proxy-redirect-to: ...starts with this instead ("" from: off)
    cookie_domain: tuple[str, str] | None = None  # proxy-cookie-domain: (domain, replacement)
    cookie_path: tuple[str, str] | None = None  # proxy-cookie-path: (path prefix, replacement)
    connection: str | None = None  # connection-proxy-header: the Connection header sent upstream


class ErrorPages(msgspec.Struct, frozen=True, gc=False):
    """custom-http-errors, default-backend, disable-proxy-intercept-errors (area: http).

    ``codes``: upstream answers (and our own 502/503/504) with one of these statuses are
    replaced by the error backend's answer to ``GET /`` with X-Code & co.  ``upstream``: the
    default-backend annotation's Upstream (it also takes the whole request when the route's
    Service has no ready endpoint); None: the snapshot's default action (the global default
    backend), if it forwards."""

    codes: tuple[int, ...] = ()
    upstream: str | None = None
    intercept: bool = True  # False: disable-proxy-intercept-errors (upstream answers pass as they are)


class Redirects(msgspec.Struct, frozen=True, gc=False):
    """permanent-redirect, temporal-redirect, app-root, from-to-www-redirect (area: http).

    Answered before any access check (nginx's rewrite phase)."""

    url: str = ""  # permanent-/temporal-redirect: the Location, nginx variables ($request_uri...) expanded
    code: int = 301  # the status of ``url`` (and of ``to_host``)
    app_root: str = ""  # app-root: a request for "/" gets 302 to this path
    to_host: str = ""  # from-to-www-redirect (on the synthesised host): scheme, port and URI kept


class SessionCookie(msgspec.Struct, frozen=True, gc=False):
    """affinity: cookie and session-cookie-* (area: selection).  The cookie's value is
    ingress-nginx's: ``<endpoint key>|<backend key>`` (see ``workers.affinity``)."""

    name: str = "INGRESSCOOKIE"
    mode: Literal["balanced", "persistent"] = "balanced"  # affinity-mode
    path: str | None = None  # None: the path of the route that set it
    domain: str | None = None
    max_age: int | None = None  # seconds (Max-Age)
    expires: int | None = None  # seconds from now (Expires)
    secure: bool = False  # Secure even over plain HTTP (it is always Secure over HTTPS)
    samesite: str | None = None  # "None", "Lax" or "Strict"
    conditional_samesite_none: bool = False  # no SameSite=None for browsers that mishandle it
    change_on_failure: bool = False  # a retry after a failure picks (and pins) another endpoint
    partitioned: bool = False  # Partitioned (CHIPS)


class Balancing(msgspec.Struct, frozen=True, gc=False):
    """load-balance, upstream-hash-by, affinity and session-cookie-* of an upstream (area: selection).

    One of three ways to pick an endpoint, as ingress-nginx: cookie affinity if set, else
    consistent hashing on ``hash_by`` if set, else ``load_balance``."""

    load_balance: Literal["round_robin", "ewma"] = "round_robin"
    hash_by: str = ""  # upstream-hash-by: nginx variables and text, e.g. "$request_uri" ("": none)
    hash_subset_size: int = 0  # upstream-hash-by-subset(-size): hash to a subset of this size; 0: off
    affinity: SessionCookie | None = None
    backend: str = ""  # ingress-nginx's name of this backend ("namespace-service-port"): cookie keys


class RoutePolicy(msgspec.Struct, frozen=True, gc=False):
    """Per-route policies from annotations (grows with every annotation we support)."""

    max_body_size: int = MIB  # bytes; 0 means unlimited (nginx client_max_body_size)
    # -- schema 2 -----------------------------------------------------------------------
    ssl_redirect: bool = False  # plain HTTP gets a 308 to https (the host has TLS)
    force_ssl_redirect: bool = False  # redirect even when the host has no TLS of its own
    # -- schema 3 -----------------------------------------------------------------------
    rewrite_target: str | None = None  # rewrite-target: the upstream path, with $1.. from Route.regex
    # -- schema 4 -----------------------------------------------------------------------
    x_forwarded_prefix: str | None = None  # x-forwarded-prefix: X-Forwarded-Prefix sent upstream
    canary: Canary | None = None
    next_upstream: NextUpstream | None = None
    source_ranges: SourceRanges | None = None
    basic_auth: BasicAuth | None = None
    external_auth: ExternalAuth | None = None
    limits: Limits | None = None
    cors: Cors | None = None
    headers: HeaderRules | None = None
    errors: ErrorPages | None = None
    # (schema 4, area access; appended while issue 9 fills the areas: the version stays 4)
    client_auth: bool = False  # the VirtualHost's client_auth (auth-tls-*) applies to this route (access)
    # (schema 4, area http, likewise) permanent/temporal redirects, app-root, from-to-www-redirect
    redirects: Redirects | None = None


class Route(msgspec.Struct, frozen=True, gc=False):
    """One path rule of a virtual host.

    ``path`` is as written in the Ingress, except that ImplementationSpecific is
    emitted as Prefix.  Precedence inside a host: an Exact match beats any Prefix
    match; among Prefix matches the longest path (trailing slash ignored) wins.
    ``priority`` is the tie-breaker translation computed (higher wins) and is kept
    for kinds of matching that have no natural order (regex, later).
    """

    path: str
    path_type: PathType
    action: Action
    priority: int = 0
    ingress: str = ""  # "namespace/name" of the Ingress this rule came from
    service: str = ""  # "namespace/name:port" of the backend Service, for metrics
    policy: RoutePolicy = RoutePolicy()
    # -- schema 3 -----------------------------------------------------------------------
    # use-regex / rewrite-target (ingress-nginx): a case-insensitive regular expression matched
    # at the start of the path (nginx ``location ~* "^..."``).  Regex routes are tried after
    # Exact ones, in the order of the host's routes (longest path first); the first match wins.
    regex: str | None = None


class VirtualHost(msgspec.Struct, frozen=True, gc=False):
    """Routes for one host name.

    ``hostname`` is lower-case: ``example.com``, ``*.example.com`` (one label), or
    ``""`` for rules without a host (any Host header).  ``fallback`` handles requests
    for this host that match no route (an Ingress's spec.defaultBackend).
    """

    hostname: str
    routes: tuple[Route, ...] = ()
    fallback: Action | None = None
    tls_secret: str | None = None  # "namespace/name" key into Snapshot.certificates
    # -- schema 2 -----------------------------------------------------------------------
    passthrough_upstream: str | None = None  # ssl-passthrough: raw TCP to this Upstream.name, not terminated
    # -- schema 4 -----------------------------------------------------------------------
    client_auth: ClientAuth | None = None  # auth-tls-*: client certificates for this host


class Certificate(msgspec.Struct, frozen=True, gc=False):
    """A kubernetes.io/tls Secret: PEM data. Never logged."""

    name: str  # "namespace/name"
    cert_pem: str  # leaf first, then the chain
    key_pem: str
    # -- schema 2 -----------------------------------------------------------------------
    hosts: tuple[str, ...] = ()  # DNS names the leaf certificate covers (SANs, lower-case; "*.x" wildcards)
    not_after: str = ""  # ISO-8601 UTC expiry of the leaf, for logs and metrics


class GlobalSettings(msgspec.Struct, frozen=True, gc=False):
    """Data-plane defaults (nginx / ingress-nginx defaults where one exists)."""

    max_body_size: int = MIB
    client_header_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    max_header_bytes: int = 32 * 1024
    upstream_keepalive_connections: int = 32  # idle connections kept per endpoint
    upstream_keepalive_timeout: float = 60.0
    upstream_keepalive_requests: int = 10000
    server_header: str = "fastingress"
    # -- schema 2 -----------------------------------------------------------------------
    default_certificate: str | None = None  # Certificate.name of --default-ssl-certificate
    hsts: bool = False  # add Strict-Transport-Security on HTTPS answers
    hsts_max_age: int = 31536000
    hsts_include_subdomains: bool = True
    hsts_preload: bool = False
    ssl_passthrough: bool = False  # --enable-ssl-passthrough
    http2: bool = True  # offer h2 in ALPN and accept h2c prior knowledge
    http2_max_concurrent_streams: int = 128
    # -- schema 4, limits (issue 9): ConfigMap keys; route annotations override the last two --
    limit_req_status: int = 503  # limit-req-status-code: answer to a request over limit-rps/-rpm
    limit_conn_status: int = 503  # limit-conn-status-code: answer over limit-connections
    limit_rate: int = 0  # limit-rate in bytes/s (ConfigMap: KB/s as nginx `limit_rate Nk`, so x 1024)
    limit_rate_after: int = 0  # limit-rate-after in bytes (ConfigMap: KB, so x 1024)
    # -- schema 4, issue 9 area configmap: the ingress-nginx controller ConfigMap ----------
    # Filled from ``--configmap NS/NAME`` (fastingress.translate.configmap); each field names its
    # key.  Defaults are ingress-nginx's, except where README's compatibility table says not.
    client_body_timeout: float = 60.0  # client-body-timeout: between two reads of a request body
    keepalive_requests: int = 1000  # keep-alive-requests: requests per client connection (HTTP/1.1)
    use_forwarded_headers: bool = False  # use-forwarded-headers: trust X-Forwarded-* of trusted peers
    enable_real_ip: bool = False  # enable-real-ip: the client IP from forwarded_for_header only
    compute_full_forwarded_for: bool = False  # compute-full-forwarded-for: append to X-Forwarded-For
    forwarded_for_header: str = "X-Forwarded-For"  # forwarded-for-header
    proxy_real_ip_cidr: tuple[str, ...] = ("0.0.0.0/0",)  # proxy-real-ip-cidr: trusted peers
    use_proxy_protocol: bool = False  # use-proxy-protocol: PROXY v1/v2 header on every connection
    proxy_protocol_header_timeout: float = 5.0  # proxy-protocol-header-timeout
    ssl_protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")  # ssl-protocols
    ssl_ciphers: str = ""  # ssl-ciphers: OpenSSL list for TLS 1.2 ("": ECDHE+AESGCM:ECDHE+CHACHA20)
    ssl_session_cache: bool = True  # ssl-session-cache
    ssl_session_tickets: bool = True  # ssl-session-tickets (ingress-nginx: off)
    ssl_session_timeout: float = 3600.0  # ssl-session-timeout
    underscores_in_headers: bool = False  # enable-underscores-in-headers
    ignore_invalid_headers: bool = True  # ignore-invalid-headers: drop headers with invalid names
    allow_backend_server_header: bool = False  # allow-backend-server-header
    http_redirect_code: int = 308  # http-redirect-code: the status of redirects to HTTPS
    add_headers: tuple[tuple[str, str], ...] = ()  # add-headers: set on every response
    proxy_set_headers: tuple[tuple[str, str], ...] = ()  # proxy-set-headers: set on upstream requests
    access_log: bool | None = None  # disable-access-log (inverted); None: --access-log decides
    log_format: str = ""  # log-format-upstream ("": fastingress's own line)
    log_escape: Literal["default", "json", "none"] = "default"  # log-format-escape-json/-none
    skip_access_log_urls: tuple[str, ...] = ()  # skip-access-log-urls: request URIs not logged
    block_cidrs: tuple[str, ...] = ()  # block-cidrs: 403
    block_user_agents: tuple[str, ...] = ()  # block-user-agents: exact, ~regex or ~*regex; 403
    block_referers: tuple[str, ...] = ()  # block-referers: likewise, on Referer; 403


class Snapshot(msgspec.Struct, frozen=True, gc=False):
    """Everything a worker needs to route traffic.  Generation lives in the publication header."""

    schema_version: int = SCHEMA_VERSION
    virtual_hosts: tuple[VirtualHost, ...] = ()
    upstreams: tuple[Upstream, ...] = ()
    certificates: tuple[Certificate, ...] = ()
    default_action: Action | None = None  # no host / no route matched; None means 404
    settings: GlobalSettings = GlobalSettings()
