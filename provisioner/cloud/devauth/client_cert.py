"""A TLS client certificate as a device's proof of identity (MQTT mTLS).

The broker (mosquitto's mTLS listener) has already checked the chain up to the product's
CA and that the client holds the certificate's key; what is left is the registry's part,
here: which device the certificate speaks for, and whether it is one of that device's
current credentials (the registry, not the CA, decides who may connect: a device blocked or
whose credential was replaced is refused even while its certificate chains fine).

Which device:

- an identity certificate (field enrollment) names it in a SubjectAltName URI
  ``urn:x-provisioner:device:projects/{p}/locations/{l}/registries/{r}/devices/{d}``;
- a line certificate (CN = chip serial) names none: the MQTT client id
  (``projects/.../devices/{d}``, as Cloud IoT required) does.

Matching a credential: an X.509 credential (``*_X509_PEM``) must be *this* certificate
(byte for byte), so a certificate superseded by a renewal with the same key is refused once
the registry holds the new one; a bare public key credential (``*_PEM``) matches any
certificate of that key (the key is what the handshake proved).
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from provisioner.cloud.credentials import Credential
from provisioner.cloud.devauth import topics
from provisioner.cloud.devauth.jwt import credential_expired, public_key_of

DEVICE_URI_PREFIX = "urn:x-provisioner:device:"


class CertificateRefused(ValueError):
    """The certificate cannot identify a device; the message is plain words (no secret)."""


def load_client_certificate(pem: str) -> x509.Certificate:
    """The certificate the broker forwarded (PEM), or CertificateRefused."""
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except (ValueError, TypeError, UnicodeEncodeError, x509.InvalidVersion):
        raise CertificateRefused("the TLS client certificate cannot be read") from None


def device_uri(project: str, location: str, registry: str, device: str) -> str:
    """The SubjectAltName URI naming a device (what identity certificates carry)."""
    return (
        f"{DEVICE_URI_PREFIX}projects/{project}/locations/{location}"
        f"/registries/{registry}/devices/{device}"
    )


def named_device(cert: x509.Certificate) -> tuple[str, str, str, str] | None:
    """(project, location, registry, device) of the certificate's device URI; None when it
    carries none (a line certificate); CertificateRefused when it carries a malformed one
    or several."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        raise CertificateRefused("the certificate's SubjectAltName cannot be read") from None
    uris = [
        u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(DEVICE_URI_PREFIX)
    ]  # fmt: skip
    if not uris:
        return None
    if len(uris) > 1:
        raise CertificateRefused("the certificate names more than one device")
    parts = topics.parse_client_id(uris[0].removeprefix(DEVICE_URI_PREFIX))
    if parts is None:
        raise CertificateRefused(
            "the certificate's device URI is not "
            f"{DEVICE_URI_PREFIX}projects/{{p}}/locations/{{l}}/registries/{{r}}/devices/{{d}}"
        )
    return parts


def _spki(key: object) -> bytes | None:
    try:
        return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (AttributeError, ValueError, TypeError, UnsupportedAlgorithm):
        return None


def matching_credential(
    cert: x509.Certificate, credentials: Sequence[Credential], now: float
) -> Credential | None:
    """The unexpired credential ``cert`` is (module docstring); None if it is none."""
    try:
        presented = _spki(cert.public_key())
    except (ValueError, UnsupportedAlgorithm):
        return None
    if presented is None:
        return None
    der = cert.public_bytes(serialization.Encoding.DER)
    for credential in credentials:
        if credential_expired(credential, now):
            continue
        if credential.format.is_certificate:
            try:
                held = x509.load_pem_x509_certificate(credential.key.encode())
            except (ValueError, UnicodeEncodeError, x509.InvalidVersion):
                continue
            if held.public_bytes(serialization.Encoding.DER) == der:
                return credential
            continue
        key = public_key_of(credential)
        if key is not None and _spki(key) == presented:
            return credential
    return None
