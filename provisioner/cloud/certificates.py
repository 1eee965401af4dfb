"""Registry CA certificates and the Cloud IoT rule they impose on device credentials.

A registry holding CA certificates (``DeviceRegistry.credentials``) only accepts device
credentials that are X.509 certificates signed directly by one of them: no intermediate
chains, and checked only when a device is created or its credentials are patched (adding a CA
later does not invalidate existing devices), as Cloud IoT did. The signature itself is
verified with the CA's public key, so a certificate that merely names the CA as its issuer
is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from provisioner.cloud.credentials import (
    MAX_KEY_CHARS,
    MIN_RSA_BITS,
    Credential,
    InvalidCredential,
)
from provisioner.cloud.status import ApiError, Code

MAX_REGISTRY_CREDENTIALS = 10
CERT_FORMAT = "X509_CERTIFICATE_PEM"
CERT_FORMAT_NUMBER = 1  # google.cloud.iot.v1.PublicKeyCertificateFormat


@dataclass(frozen=True)
class RegistryCertificate:
    """One validated registry CA certificate, kept as the caller sent it."""

    certificate: str

    def load(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate.encode())


def parse_format(raw: object, pos: int) -> None:
    if raw in (CERT_FORMAT, CERT_FORMAT_NUMBER) and not isinstance(raw, bool):
        return
    raise InvalidCredential(
        f"The registry credential in position {pos} has an invalid format {raw!r}; expected "
        f"{CERT_FORMAT}."
    )


def make_registry_certificate(fmt_raw: object, pem: str, pos: int) -> RegistryCertificate:
    """A registry CA certificate from its wire values: exactly one PEM X.509 certificate with
    an RSA key of at least 2048 bits or an EC P-256 key."""
    where = f"The registry credential in position {pos}"
    parse_format(fmt_raw, pos)
    if len(pem) > MAX_KEY_CHARS:
        raise InvalidCredential(f"{where} is too large.")
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
        raise InvalidCredential(f"{where} is not a valid PEM X.509 certificate.") from None
    if len(certs) != 1:
        raise InvalidCredential(f"{where} must hold exactly one X.509 certificate.")
    try:
        # Its key, names and dates are only decoded here: every later read of the registry
        # shows them (x509Details), so one that cannot be decoded is refused now.
        key = certs[0].public_key()
        x509_details(RegistryCertificate(pem))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidCredential(f"{where} cannot be decoded (key, names or dates).") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidCredential(
                f"{where} holds a {key.key_size}-bit RSA key; at least {MIN_RSA_BITS} bits "
                "are required."
            )
    elif not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise InvalidCredential(f"{where} must hold an RSA (2048 bits or more) or P-256 key.")
    return RegistryCertificate(pem)


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def x509_details(cert: RegistryCertificate) -> dict[str, Any]:
    """``X509CertificateDetails`` (output only), derived from the certificate each time so
    it can never disagree with it."""
    c = cert.load()
    key = c.public_key()
    oid = c.signature_algorithm_oid
    return {
        "issuer": c.issuer.rfc4514_string(),
        "subject": c.subject.rfc4514_string(),
        "startTime": _rfc3339(c.not_valid_before_utc),
        "expiryTime": _rfc3339(c.not_valid_after_utc),
        "signatureAlgorithm": getattr(oid, "_name", oid.dotted_string),
        "publicKeyType": "RSA" if isinstance(key, rsa.RSAPublicKey) else "EC",
    }


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca``'s public key verifies ``cert``'s signature (names are not trusted)."""
    key = ca.public_key()
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:  # an algorithm no registry CA key signs with
        return False
    if algorithm is None:
        return False
    try:
        if isinstance(key, rsa.RSAPublicKey):
            pad = cert.signature_algorithm_parameters
            if not isinstance(pad, padding.PKCS1v15 | padding.PSS):
                return False
            key.verify(cert.signature, cert.tbs_certificate_bytes, pad, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def check_device_credentials(
    creds: tuple[Credential, ...], cas: tuple[RegistryCertificate, ...]
) -> None:
    """Enforce the registry CA rule on new or patched device credentials (no-op without CAs).

    Raises ApiError: INVALID_ARGUMENT for a bare key or a copy of a registry certificate,
    PERMISSION_DENIED for a certificate no registry CA signed.
    """
    if not cas:
        return
    loaded = [ca.load() for ca in cas]
    ca_ders = {ca.public_bytes(Encoding.DER) for ca in loaded}
    for pos, cred in enumerate(creds):
        if not cred.format.is_certificate:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"The device credential in position {pos} must be an X.509 certificate.",
            )
        cert = x509.load_pem_x509_certificate(cred.key.encode())
        if cert.public_bytes(Encoding.DER) in ca_ders:
            raise ApiError(
                Code.INVALID_ARGUMENT,
                f"The device credential in position {pos} must differ from every registry "
                "certificate.",
            )
        if not any(_signed_by(cert, ca) for ca in loaded):
            raise ApiError(
                Code.PERMISSION_DENIED,
                f"The signature of device credential in position {pos} could not be verified "
                "against any registry certificate",
            )
