"""End-entity certificates from an intermediate: the part every leaf shares, and the check
before one is released.

Station and line-server certificates, TLS server certificates of the listeners, the OCSP
responder's delegated certificate and the identity certificates of field devices all carry
the same core (O and CN subject, not a CA, key usage, one EKU, subject and authority key
identifiers, backdated a few minutes against clock skew) and are all verified against the
issuer before anyone sees them: a faulty token must not hand out a bad certificate. Each
caller adds its own extensions to :func:`leaf_builder` and signs with :func:`signed`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID

from provisioner.ca.issuer import key_usage, random_serial_number
from provisioner.errors import PolicyViolationError

BACKDATE = timedelta(minutes=5)  # notBefore this far back: a device's clock may lag


def leaf_builder(
    issuer: x509.Certificate,
    public_key: CertificatePublicKeyTypes,
    *,
    organization: str,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    now: datetime,
    not_after: datetime,
    usage: x509.KeyUsage | None = None,
) -> x509.CertificateBuilder:
    """The shared core of a leaf issued by ``issuer`` (``usage``: the key usage, by
    default :func:`~provisioner.ca.issuer.key_usage` of a non-CA)."""
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage or key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    )


def signed(
    builder: x509.CertificateBuilder,
    key: CertificateIssuerPrivateKeyTypes,
    issuer: x509.Certificate,
    *,
    what: str,
    against: str = "the CA key",
) -> x509.Certificate:
    """Sign (in the token, for an HSM key) and check the signature against ``issuer``
    before the certificate is released; ``what`` and ``against`` name both in the error."""
    cert = builder.sign(key, hashes.SHA256())
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise PolicyViolationError(
            f"{what} does not verify with {against} ({type(exc).__name__}); not released"
        ) from None
    return cert
