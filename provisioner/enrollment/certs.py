"""What the station and line certificates contain, and what a station's CSR must be.

Both are issued by the current HSM intermediate (the key never leaves the token) for a key
made elsewhere: a station's on the station PC (the CSR's signature proves the station holds
it), the line server's on the line server. P-256 only, like everything else this CA signs.
Nothing is copied from a CSR but its key: the subject and extensions are ours.

* station: ``O=<organization>, CN=<station id>``, EKU clientAuth (Redis TLS client, signed
  messages), KeyUsage digitalSignature, one year.
* line server: ``O=<organization>, CN=line server``, EKU serverAuth + clientAuth (Redis TLS
  server, and a client of its own Redis), SANs for each name stations use to reach it.

Validity starts five minutes back, for station PCs whose clocks run a little behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.ca import names as ca_names
from provisioner.ca.leaf import leaf_builder, signed
from provisioner.errors import InvalidInputError

if TYPE_CHECKING:
    from provisioner.ca.ceremony import LoadedCa

VALIDITY = timedelta(days=365)
LINE_COMMON_NAME = "line server"
DEFAULT_LINE_NAMES = ("localhost", "127.0.0.1")
MAX_CSR_BYTES = 16_384


class BadCsrError(InvalidInputError):
    """The certificate request is malformed, has the wrong key, names another station, or
    its signature does not verify (no proof the sender holds the key)."""


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    if len(pem) > MAX_CSR_BYTES:
        raise BadCsrError(f"CSR of {len(pem)} bytes: at most {MAX_CSR_BYTES}")
    try:
        return x509.load_pem_x509_csr(pem)
    except x509.InvalidVersion:  # not a ValueError: a CSR whose version is not v1 (0)
        raise BadCsrError("the CSR's version is not 1 (the only one PKCS #10 has)") from None
    except ValueError:
        raise BadCsrError("the CSR is not a PEM certificate signing request") from None


def check_station_csr(
    csr: x509.CertificateSigningRequest, station_id: str
) -> ec.EllipticCurvePublicKey:
    """The CSR's key, once it is P-256, its signature verifies (proof of possession) and
    its CN is ``station_id``."""
    try:
        key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm):  # e.g. a curve OpenSSL lacks
        raise BadCsrError("the CSR's public key cannot be read") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        kind = "an RSA" if isinstance(key, rsa.RSAPublicKey) else f"a {type(key).__name__}"
        raise BadCsrError(f"the CSR holds {kind} key: station keys are P-256 (EC) only")
    if not isinstance(key.curve, ec.SECP256R1):
        raise BadCsrError(
            f"the CSR's key is on {key.curve.name}: station keys are P-256 (secp256r1) only"
        )
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError, InvalidSignature):
        valid = False
    if not valid:
        raise BadCsrError(
            "the CSR's signature does not verify with its key: no proof of possession"
        )
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if len(cns) == 1 else None
    if cn != station_id:
        raise BadCsrError(
            f"the CSR names station {cn!r} but the enrollment token is for {station_id!r}: "
            f"enroll with `--station {station_id}`"
        )
    return key


def _organization(ca: LoadedCa, organization: str | None) -> str:
    if organization is not None:
        return organization
    attrs = ca.intermediate_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(attrs[0].value) if attrs else "provisioner"


def _builder(
    ca: LoadedCa,
    public_key: ec.EllipticCurvePublicKey,
    organization: str,
    common_name: str,
    usages: list[x509.ObjectIdentifier],
    now: datetime,
) -> x509.CertificateBuilder:
    return leaf_builder(
        ca.intermediate_cert,
        public_key,
        organization=organization,
        common_name=common_name,
        usages=usages,
        now=now,
        not_after=now + VALIDITY,
    )


def _signed(ca: LoadedCa, builder: x509.CertificateBuilder) -> x509.Certificate:
    return signed(builder, ca.key, ca.intermediate_cert, what="the new certificate")


def build_station_certificate(
    ca: LoadedCa,
    csr: x509.CertificateSigningRequest,
    station_id: str,
    now: datetime,
    *,
    organization: str | None = None,
) -> x509.Certificate:
    """The station certificate for the key in ``csr`` (checked by
    :func:`check_station_csr`). ``organization`` defaults to the intermediate's O."""
    key = check_station_csr(csr, station_id)
    builder = _builder(
        ca,
        key,
        _organization(ca, organization),
        station_id,
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        now,
    )
    return _signed(ca, builder)


def general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries: an IP address for what parses as one, else a DNS name."""
    return ca_names.general_names(
        names, empty="the line certificate needs at least one name (--name)"
    )


def san_names(cert: x509.Certificate) -> list[str]:
    """A certificate's SANs back as the strings :func:`general_names` takes."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san]


def build_line_certificate(
    ca: LoadedCa,
    public_key: ec.EllipticCurvePublicKey,
    names: Sequence[str],
    now: datetime,
    *,
    organization: str | None = None,
) -> x509.Certificate:
    """The line server's certificate: Redis TLS server (and client of it), signer of the
    messages it sends stations; SANs for ``names`` (DNS names and IP addresses)."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise InvalidInputError("the line server's key must be P-256 (secp256r1)")
    builder = _builder(
        ca,
        public_key,
        _organization(ca, organization),
        LINE_COMMON_NAME,
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        now,
    ).add_extension(x509.SubjectAlternativeName(general_names(names)), critical=False)
    return _signed(ca, builder)
