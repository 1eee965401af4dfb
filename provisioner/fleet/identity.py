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
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from provisioner.ca.issuer import with_revocation_urls
from provisioner.ca.leaf import leaf_builder, signed
from provisioner.enrollment.certs import BadCsrError, load_csr
from provisioner.settings import Settings

if TYPE_CHECKING:
    from provisioner.ca.ceremony import LoadedCa

URI_PREFIX = "urn:x-provisioner:device:"


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
    validity = timedelta(days=settings.fleet.identity_validity_days)
    builder = leaf_builder(
        ca.intermediate_cert,
        public_key,
        organization=settings.profile.organization,
        common_name=device_id,
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        now=now,
        not_after=now + validity,
    ).add_extension(
        x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(device_uri(registry, device_id))]
        ),
        critical=False,
    )
    builder = with_revocation_urls(builder, settings.api.crl_url(ca.name), ocsp_url(settings))
    return signed(builder, ca.key, ca.intermediate_cert, what="the new identity certificate")
