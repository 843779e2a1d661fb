"""kubernetes.io/tls Secrets -> Certificates (PEM checked only superficially).

Secret data never appears in a diagnostic: messages name keys, never values.
"""

from __future__ import annotations

import base64
import binascii

from fastingress.snapshot.schema import Certificate
from fastingress.translate.access import get, get_str, str_map
from fastingress.translate.cluster import Cluster
from fastingress.translate.model import ObjRef, Sink

TLS_TYPE = "kubernetes.io/tls"
_KEYS = ("tls.crt", "tls.key")


def _decode(secret: object, key: str) -> str | None:
    """stringData wins over data (as the API server merges them); None if absent or bad."""
    plain = str_map(get(secret, "stringData")).get(key)
    if isinstance(plain, str):
        return plain
    encoded = str_map(get(secret, "data")).get(key)
    if not isinstance(encoded, str):
        return None
    try:
        return base64.b64decode("".join(encoded.split()), validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        return None


def load_certificate(cluster: Cluster, namespace: str, name: str, sink: Sink) -> Certificate | None:
    """The Certificate of Secret namespace/name, or None with a diagnostic on the Secret."""
    secret = cluster.secrets.get((namespace, name))
    ref = ObjRef("Secret", namespace, name)
    if secret is None:
        return None
    secret_type = get_str(secret, "type")
    if secret_type not in (None, TLS_TYPE, "Opaque"):
        sink.error(ref, "type", f"type is {secret_type!r}, expected {TLS_TYPE!r}; not used")
        return None
    values: list[str] = []
    for key in _KEYS:
        value = _decode(secret, key)
        if value is None:
            sink.error(ref, f"data[{key}]", "missing, or not valid base64 of PEM text; not used")
            return None
        if "-----BEGIN " not in value:
            sink.error(ref, f"data[{key}]", "not PEM (no '-----BEGIN' line); not used")
            return None
        values.append(value)
    return Certificate(name=f"{namespace}/{name}", cert_pem=values[0], key_pem=values[1])
