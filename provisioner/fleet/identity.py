"""The identity certificate of a device enrolled in the field, and what its CSR must be.

Issued by the current HSM intermediate (the key never leaves the token) for a P-256 key:
the device's own (``POST /identity`` with a CSR, whose signature is the proof of possession)
or, in the document's compatibility mode, one made for a single answer. Nothing is copied
from a CSR but its key.

* subject ``O=<profile organization>, CN=<device id>``;
* SAN URI ``urn:x-provisioner:device:projects/{p}/locations/{l}/registries/{r}/devices/{d}``:
  the MQTT bridge takes the device from it (:func:`device_path`), so a certificate names
  exactly one device of one registry;
* EKU clientAuth, KeyUsage digitalSignature, no CA;
* CRL distribution point: the issuing intermediate's CRL on the API
  (``settings.api.crl_url(<ca name>)``), and OCSP at ``<api url>/ocsp`` (AIA), so a relying
  party can check it either way;
* validity ``fleet.identity_validity_days``, starting five minutes back for device clocks
  that run a little behind.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from provisioner.ca.issuer import key_usage, random_serial_number
from provisioner.enrollment.certs import BadCsrError, load_csr
from provisioner.errors import PolicyViolationError
from provisioner.settings import Settings

if TYPE_CHECKING:
    from provisioner.ca.ceremony import LoadedCa

URI_PREFIX = "urn:x-provisioner:device:"
BACKDATE = timedelta(minutes=5)


def device_name(registry: str, device_id: str) -> str:
    """The device's full path in its registry (what an MQTT client id names)."""
    return f"{registry}/devices/{device_id}"


def device_uri(registry: str, device_id: str) -> str:
    return URI_PREFIX + device_name(registry, device_id)


def device_path(cert: x509.Certificate) -> str | None:
    """The device path an identity certificate names (its SAN URI), or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(URI_PREFIX):
            return uri.removeprefix(URI_PREFIX)
    return None


def csr_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """The key of a device's CSR, once it is P-256 and the CSR's signature verifies with it
    (proof of possession). Its subject is ignored: the device id is ours to give."""
    csr = load_csr(pem)
    try:
        key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BadCsrError("the CSR's public key cannot be read") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise BadCsrError(
            "the CSR's key is not P-256 (secp256r1): device identities are ES256, what the "
            "registry accepts as ES256_X509_PEM"
        )
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError, InvalidSignature):
        valid = False
    if not valid:
        raise BadCsrError(
            "the CSR's signature does not verify with its key: no proof of possession"
        )
    return key


def public_key_of(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # we issue nothing else
    return key


def ocsp_url(settings: Settings) -> str:
    return f"{settings.api.effective_url.rstrip('/')}/ocsp"


def build_identity_certificate(
    ca: LoadedCa,
    settings: Settings,
    public_key: ec.EllipticCurvePublicKey,
    registry: str,
    device_id: str,
    now: datetime,
) -> x509.Certificate:
    """Sign the identity certificate in the token and check it against the intermediate
    before anything is released (a faulty token must not hand out a bad certificate)."""
    issuer = ca.intermediate_cert
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, settings.profile.organization),
            x509.NameAttribute(NameOID.COMMON_NAME, device_id),
        ]
    )
    validity = timedelta(days=settings.fleet.identity_validity_days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(device_uri(registry, device_id))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(settings.api.crl_url(ca.name))],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(ocsp_url(settings)),
                    )
                ]
            ),
            critical=False,
        )
    )
    cert = builder.sign(ca.key, hashes.SHA256())
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise PolicyViolationError(
            f"the new identity certificate does not verify with the CA key "
            f"({type(exc).__name__}); not released"
        ) from None
    return cert
