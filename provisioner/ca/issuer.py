"""Device certificates: the policy checks before a signature and the certificate itself.

Pure functions over values; the key is whatever ``LoadedCa.key`` is (a token-held key in
production). Every certificate is verified against the CA public key before it is returned.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.errors import PolicyViolationError
from provisioner.ports import SigningRequest
from provisioner.settings import ProfileSettings

if TYPE_CHECKING:
    from provisioner.ca.ceremony import LoadedCa

SERIAL_BYTES = 16
_SERIAL_RE = re.compile(r"^0123[0-9A-F]{12}EE$")


def check_serial(serial_hex: str) -> None:
    """An ATECC608 serial: 9 bytes, 01 23 .. EE, upper-case hex."""
    if not _SERIAL_RE.match(serial_hex):
        raise PolicyViolationError(f"chip serial {serial_hex!r} is not a well-formed ATECC serial")


def check_public_key(point: bytes) -> ec.EllipticCurvePublicKey:
    """An uncompressed P-256 point that lies on the curve."""
    if len(point) != 65 or point[0] != 0x04:
        raise PolicyViolationError("public key is not an uncompressed P-256 point (65 bytes)")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise PolicyViolationError("public key is not a point on P-256") from None


def verify_proof_of_possession(point: bytes, challenge: bytes, raw_signature: bytes) -> None:
    """The chip's raw R||S signature over SHA-256(challenge) verifies with its public key."""
    pub = check_public_key(point)
    if len(challenge) < 16:
        raise PolicyViolationError("proof of possession: challenge shorter than 16 bytes")
    if len(raw_signature) != 64:
        raise PolicyViolationError("proof of possession: signature is not 64 bytes (R||S)")
    der = encode_dss_signature(
        int.from_bytes(raw_signature[:32], "big"), int.from_bytes(raw_signature[32:], "big")
    )
    try:
        pub.verify(der, challenge, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise PolicyViolationError(
            "proof of possession failed: the chip's signature does not verify with its key"
        ) from None


def random_serial_number() -> int:
    """Positive, exactly 16 bytes in DER (top byte 0x01..0x7f), 120+ bits of randomness."""
    n = int.from_bytes(os.urandom(SERIAL_BYTES), "big") & ((1 << 127) - 1)
    return n | (1 << 120)


def key_usage(*, ca: bool) -> x509.KeyUsage:
    """keyCertSign + cRLSign for a CA; digitalSignature only for a device."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _add_years(t: datetime, years: int) -> datetime:
    try:
        return t.replace(year=t.year + years)
    except ValueError:  # 29 February
        return t.replace(year=t.year + years, day=28)


def build_device_certificate(
    request: SigningRequest,
    ca: LoadedCa,
    profile: ProfileSettings,
    serial_number: int,
    now: datetime,
) -> x509.Certificate:
    """Build, sign (in the token) and self-check one device certificate."""
    pub = check_public_key(request.public_key)
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, profile.organization)]
    if profile.organizational_unit:
        attrs.append(
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, profile.organizational_unit)
        )
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, request.chip_serial_hex))
    issuer = ca.intermediate_cert
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_before = now.replace(microsecond=0) - timedelta(minutes=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(issuer.subject)
        .public_key(pub)
        .serial_number(serial_number)
        .not_valid_before(not_before)
        .not_valid_after(_add_years(not_before, profile.validity_years))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise PolicyViolationError(
            f"the new certificate does not verify with the CA key ({type(exc).__name__}); "
            "not released"
        ) from None
    return cert
