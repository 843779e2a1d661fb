"""The Kubernetes API, synchronously: the ONLY module that imports the ``kubernetes`` client.

Theory of operation
-------------------
The official client is used for what it does well and keeps up to date: reading a
kubeconfig or the in-cluster service account (token refresh, client certificates, CA
bundles, exec plugins) and building the urllib3 connection pool that carries them.
Requests themselves are made on that pool directly, always with unparsed content, and the
JSON is decoded with msgspec into plain dicts: a list of 10,000 Ingresses is decoded an
order of magnitude faster than the client's model classes would, and the translator wants
dicts anyway.

Everything here blocks (urllib3); the controller calls it from threads.  Errors are one
type, ``ApiError`` (HTTP status or 0 for a transport failure, and a one-line reason).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import msgspec
import urllib3

from fastingress.errors import ConfigError, FastIngressError

Obj = dict[str, Any]

WATCH_READ_MARGIN = 15.0  # seconds past timeoutSeconds before a silent watch counts as dead
REQUEST_TIMEOUT = 10.0
LIST_PAGE = 500
LIST_RESTARTS = 2  # paginated lists restarted after a 410 on a continue token, then one request


class ContinueExpired(Exception):
    """A paginated list's continue token expired (410): the list must start over."""


class ApiError(FastIngressError):
    """A failed API request: ``status`` is the HTTP status, 0 when the server was not reached."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Resource:
    """One API resource type: where it lives and how its list items are labelled."""

    kind: str
    api_version: str  # "v1", "networking.k8s.io/v1"
    plural: str
    namespaced: bool = True
    field_selector: str | None = None
    label_selector: str | None = None

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"

    def collection(self, namespace: str | None) -> str:
        if self.namespaced and namespace:
            return f"{self.prefix}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        return f"{self.prefix}/{self.plural}"

    def item(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace if self.namespaced else None)}/{quote(name, safe='')}"


INGRESS = Resource("Ingress", "networking.k8s.io/v1", "ingresses")
INGRESS_CLASS = Resource("IngressClass", "networking.k8s.io/v1", "ingressclasses", namespaced=False)
SERVICE = Resource("Service", "v1", "services")
ENDPOINT_SLICE = Resource("EndpointSlice", "discovery.k8s.io/v1", "endpointslices")
# Every type: Opaque ones are named by annotations.  The controller keeps only the Secrets
# Ingresses reference (fastingress.k8s.secrets); the rest are dropped as they are decoded.
SECRET = Resource("Secret", "v1", "secrets")
# Only those Ingresses name (auth-proxy-set-headers, custom-headers) are kept, like Secrets.
CONFIGMAP = Resource("ConfigMap", "v1", "configmaps")
LEASE = Resource("Lease", "coordination.k8s.io/v1", "leases")
EVENT = Resource("Event", "v1", "events")

WATCHED: tuple[Resource, ...] = (INGRESS_CLASS, INGRESS, SERVICE, ENDPOINT_SLICE, SECRET, CONFIGMAP)


# The controller ConfigMap (--configmap) and those it names: each watched alone, and labelled
# apart from the ConfigMaps Ingresses name (CONFIGMAP, filtered by reference), which the
# controller's store replaces whole on each of their lists.
CONTROLLER_CONFIGMAP = "ControllerConfigMap"


def configmap_resource(name: str) -> Resource:
    """ConfigMaps, restricted to the one named ``name`` (listed and watched in its namespace)."""
    return Resource(CONTROLLER_CONFIGMAP, "v1", "configmaps", field_selector=f"metadata.name={name}")


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK, ERROR
    object: Obj


_json_decoder = msgspec.json.Decoder()


def _decode(data: bytes, what: str) -> Any:
    try:
        return _json_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ApiError(0, f"{what}: invalid JSON from the API server ({exc})") from None


def _status_message(status: int, data: bytes) -> str:
    try:
        body = _json_decoder.decode(data)
    except msgspec.DecodeError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    return f"HTTP {status}: {message}" if isinstance(message, str) else f"HTTP {status}"


def load_configuration(kubeconfig: str | None) -> Any:
    """A ``kubernetes.client.Configuration`` from a kubeconfig file or the in-cluster account.

    ``kubeconfig`` None: $KUBECONFIG if set, else the in-cluster service account.
    Raises ConfigError (one line) when neither works.
    """
    import os

    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    configuration = k8s_client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    if path and not os.path.isfile(path):
        raise ConfigError(f"kubeconfig {path}: no such file")
    try:
        if path:
            k8s_config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except Exception as exc:
        where = f"kubeconfig {path}" if path else "in-cluster configuration (no --kubeconfig, no $KUBECONFIG)"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where}: {text}") from None
    return configuration


class KubeClient:
    """Blocking JSON requests to one API server; safe to share between threads."""

    def __init__(self, configuration: Any) -> None:
        from kubernetes import client as k8s_client

        self._configuration = configuration
        self._api = k8s_client.ApiClient(configuration)
        self._pool: urllib3.PoolManager = self._api.rest_client.pool_manager
        self.base = str(configuration.host).rstrip("/")
        self._lock = threading.Lock()
        self.page_size = LIST_PAGE

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None) -> KubeClient:
        return cls(load_configuration(kubeconfig))

    def _headers(self, body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "fastingress"}
        if body:
            headers["Content-Type"] = "application/json"
        with self._lock:  # auth_settings() may refresh a token file; keep that single-threaded
            settings = self._configuration.auth_settings()
        for auth in settings.values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[str(auth["key"]).title()] = str(auth["value"])
        return headers

    def _url(self, path: str, query: Mapping[str, str | int] | None) -> str:
        url = self.base + path
        if query:
            url += "?" + urlencode({k: str(v) for k, v in query.items()})
        return url

    def _open(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        body: Obj | None = None,
        timeout: urllib3.Timeout | float = REQUEST_TIMEOUT,
    ) -> urllib3.BaseHTTPResponse:
        try:
            return self._pool.request(
                method,
                self._url(path, query),
                body=msgspec.json.encode(body) if body is not None else None,
                headers=self._headers(body is not None),
                timeout=timeout,
                preload_content=False,
                retries=False,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(0, f"{method} {path}: {type(exc).__name__}: {exc}") from None

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int] | None = None,
        body: Obj | None = None,
    ) -> Obj:
        """One request; the decoded JSON object of a 2xx answer, else ApiError."""
        response = self._open(method, path, query=query, body=body)
        try:
            data = response.read()
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(0, f"{method} {path}: {type(exc).__name__}: {exc}") from None
        finally:
            response.release_conn()
        if not 200 <= response.status < 300:
            raise ApiError(response.status, f"{method} {path}: {_status_message(response.status, data)}")
        decoded = _decode(data, f"{method} {path}")
        if not isinstance(decoded, dict):
            raise ApiError(0, f"{method} {path}: the API server answered with a non-object")
        return decoded

    def _list_pages(
        self, resource: Resource, namespace: str | None, limit: int, keep: Callable[[Obj], bool] | None
    ) -> tuple[list[Obj], str]:
        items: list[Obj] = []
        query: dict[str, str | int] = {"limit": limit} if limit else {}
        if resource.field_selector:
            query["fieldSelector"] = resource.field_selector
        if resource.label_selector:
            query["labelSelector"] = resource.label_selector
        while True:
            try:
                page = self.request("GET", resource.collection(namespace), query=query)
            except ApiError as exc:
                if exc.status == 410 and "continue" in query:
                    raise ContinueExpired from None
                raise
            for item in page.get("items") or ():
                if isinstance(item, dict) and (keep is None or keep(item)):
                    item.setdefault("kind", resource.kind)
                    item.setdefault("apiVersion", resource.api_version)
                    items.append(item)
            meta = page.get("metadata") or {}
            token = meta.get("continue") if isinstance(meta, dict) else None
            if not token:
                version = meta.get("resourceVersion") if isinstance(meta, dict) else None
                return items, str(version or "")
            query["continue"] = str(token)

    def list(
        self, resource: Resource, namespace: str | None, keep: Callable[[Obj], bool] | None = None
    ) -> tuple[list[Obj], str]:
        """Every object (that ``keep`` accepts, page by page), each labelled with
        kind/apiVersion, and the list's resourceVersion.

        Paginated (``limit``/``continue``, ``page_size`` objects a page), as the API server
        wants it at scale: only one page is in memory as JSON at a time.  The pages of one
        list are one consistent snapshot; when the server expires the continue token (410:
        the list took longer than etcd keeps history), the list starts over, and after
        ``LIST_RESTARTS`` such restarts it is done in one request.
        """
        for attempt in range(LIST_RESTARTS + 1):
            limit = self.page_size if attempt < LIST_RESTARTS else 0
            try:
                return self._list_pages(resource, namespace, limit, keep)
            except ContinueExpired:
                continue
        raise AssertionError("unreachable: the last attempt is not paginated")

    def watch(
        self, resource: Resource, namespace: str | None, resource_version: str, timeout_seconds: int
    ) -> Watch:
        query: dict[str, str | int] = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        if resource_version:
            query["resourceVersion"] = resource_version
        if resource.field_selector:
            query["fieldSelector"] = resource.field_selector
        if resource.label_selector:
            query["labelSelector"] = resource.label_selector
        path = resource.collection(namespace)
        timeout = urllib3.Timeout(connect=REQUEST_TIMEOUT, read=timeout_seconds + WATCH_READ_MARGIN)
        response = self._open("GET", path, query=query, timeout=timeout)
        if response.status != 200:
            try:
                data = response.read()
            except urllib3.exceptions.HTTPError:
                data = b""
            response.release_conn()
            raise ApiError(response.status, f"watch {path}: {_status_message(response.status, data)}")
        return Watch(response, f"watch {path}")


class Watch:
    """The events of one watch response, as they arrive (one JSON object per line)."""

    def __init__(self, response: urllib3.BaseHTTPResponse, what: str) -> None:
        self._response = response
        self._what = what

    def close(self) -> None:
        """Unblock a reader in another thread and drop the connection."""
        shutdown = getattr(self._response, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self._response.close()

    def __iter__(self) -> Iterator[WatchEvent]:
        buffer = b""
        try:
            for chunk in self._response.stream(64 * 1024, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield self._event(line)
            if buffer.strip():
                yield self._event(buffer)
        except urllib3.exceptions.HTTPError as exc:
            raise ApiError(0, f"{self._what}: {type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise ApiError(0, f"{self._what}: {exc.strerror or exc}") from None
        finally:
            self._response.release_conn()

    def _event(self, line: bytes) -> WatchEvent:
        decoded = _decode(line, self._what)
        if not isinstance(decoded, dict) or not isinstance(decoded.get("object"), dict):
            raise ApiError(0, f"{self._what}: malformed watch event")
        return WatchEvent(str(decoded.get("type", "")), decoded["object"])
