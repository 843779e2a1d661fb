"""kubernetes.io/tls Secrets -> Certificates, validated with ``cryptography``.

A Secret is used when tls.crt parses as a PEM chain (leaf first) and tls.key as an
unencrypted PEM private key that matches the leaf; ``Certificate.hosts`` gets the leaf's DNS
SANs (its CN when it has none) and ``not_after`` its expiry.  Anything else is an error
diagnostic on the Secret and the certificate is not used (hosts get the default one).  An
expired (or not yet valid) certificate is only a warning and is still served, as nginx
does; that warning is the one output that depends on the clock.

Secret data never appears in a diagnostic: messages name keys, never values.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fastingress.snapshot.schema import Certificate
from fastingress.translate.access import get_str, secret_text
from fastingress.translate.cluster import Cluster
from fastingress.translate.model import ObjRef, Sink

TLS_TYPE = "kubernetes.io/tls"
_KEYS = ("tls.crt", "tls.key")


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
        value = secret_text(secret, key)
        if value is None:
            sink.error(ref, f"data[{key}]", "missing, or not valid base64 of PEM text; not used")
            return None
        if "-----BEGIN " not in value:
            sink.error(ref, f"data[{key}]", "not PEM (no '-----BEGIN' line); not used")
            return None
        values.append(value)
    checked = inspect_pem(values[0], values[1], ref, sink)
    if checked is None:
        return None
    hosts, not_after = checked
    return Certificate(
        name=f"{namespace}/{name}", cert_pem=values[0], key_pem=values[1], hosts=hosts, not_after=not_after
    )


def _utc(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificate_hosts(leaf: x509.Certificate) -> tuple[str, ...]:
    """DNS names the leaf covers: its DNS SANs, else its CN (lower case, sorted, unique)."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    except ValueError:  # a malformed extension
        names = []
    if not names:
        names = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(sorted({n.strip().lower().rstrip(".") for n in names if n.strip()}))


def inspect_pem(
    cert_pem: str, key_pem: str, ref: ObjRef, sink: Sink, now: datetime.datetime | None = None
) -> tuple[tuple[str, ...], str] | None:
    """(hosts, not_after) of a usable certificate/key pair, or None with an error diagnostic."""
    try:
        chain = x509.load_pem_x509_certificates(cert_pem.encode("ascii", "replace"))
    except ValueError:
        sink.error(ref, "data[tls.crt]", "no readable PEM certificate; not used")
        return None
    try:
        key = serialization.load_pem_private_key(key_pem.encode("ascii", "replace"), password=None)
    except TypeError:
        sink.error(ref, "data[tls.key]", "the private key is encrypted (no passphrase support); not used")
        return None
    except Exception:  # ValueError, UnsupportedAlgorithm: never echo the data
        sink.error(ref, "data[tls.key]", "no readable PEM private key; not used")
        return None
    leaf = chain[0]
    if key.public_key() != leaf.public_key():
        sink.error(ref, "data[tls.key]", "the private key does not match the tls.crt certificate; not used")
        return None
    moment = now or datetime.datetime.now(datetime.UTC)
    not_after = leaf.not_valid_after_utc
    if not_after < moment:
        sink.warning(ref, "data[tls.crt]", f"certificate expired at {_utc(not_after)}; still served")
    elif leaf.not_valid_before_utc > moment:
        sink.warning(ref, "data[tls.crt]",
                     f"certificate not valid before {_utc(leaf.not_valid_before_utc)}; still served")
    hosts = certificate_hosts(leaf)
    if not hosts:
        sink.warning(ref, "data[tls.crt]", "certificate names no DNS host (no SAN, no CN)")
    return hosts, _utc(not_after)
