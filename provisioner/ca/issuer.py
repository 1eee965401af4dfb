"""Device certificates: the policy checks before a signature and the certificate itself.

Pure functions over values; the key is whatever ``LoadedCa.key`` is (a token-held key in
production). Every certificate is verified against the CA public key before it is returned.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from provisioner.ca.tbs_template import DatedTbs, DeviceTbsTemplate, encode_validity
from provisioner.chips.certdef import NO_EXPIRY
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


SubjectKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
MIN_RSA_BITS = 2048


def check_public_key(data: bytes) -> SubjectKey:
    """The subject key the policy accepts: an uncompressed P-256 point that lies on the
    curve (what an ATECC608 reports), or a DER SubjectPublicKeyInfo holding such a point or
    an RSA key of at least 2048 bits with e = 65537 (devices without a secure element)."""
    if len(data) == 65 and data[0] == 0x04:
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
        except ValueError:
            raise PolicyViolationError("public key is not a point on P-256") from None
    try:
        key = serialization.load_der_public_key(data)
    except (ValueError, TypeError):
        raise PolicyViolationError(
            "public key is neither an uncompressed P-256 point (65 bytes) nor a DER "
            "SubjectPublicKeyInfo"
        ) from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise PolicyViolationError(f"EC public key on {key.curve.name}: only P-256")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise PolicyViolationError(f"RSA key of {key.key_size} bits: at least {MIN_RSA_BITS}")
        if key.public_numbers().e != 65537:
            raise PolicyViolationError("RSA public exponent must be 65537")
        return key
    raise PolicyViolationError(f"{type(key).__name__} keys are not certified: P-256 or RSA")


def verify_proof_of_possession(point: bytes, challenge: bytes, raw_signature: bytes) -> None:
    """The subject signed SHA-256(challenge): raw R||S (64 bytes) for P-256, as the chip
    returns it; PKCS#1 v1.5 with SHA-256 for RSA."""
    pub = check_public_key(point)
    if len(challenge) < 16:
        raise PolicyViolationError("proof of possession: challenge shorter than 16 bytes")
    try:
        if isinstance(pub, rsa.RSAPublicKey):
            pub.verify(raw_signature, challenge, padding.PKCS1v15(), hashes.SHA256())
            return
        if len(raw_signature) != 64:
            raise PolicyViolationError("proof of possession: signature is not 64 bytes (R||S)")
        der = encode_dss_signature(
            int.from_bytes(raw_signature[:32], "big"), int.from_bytes(raw_signature[32:], "big")
        )
        pub.verify(der, challenge, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise PolicyViolationError(
            "proof of possession failed: the signature does not verify with the subject's key"
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


def device_validity(now: datetime, years: int) -> tuple[datetime, datetime]:
    """notBefore on the hour (the compressed format keeps no minutes; the up-to-an-hour
    backdating also absorbs clock skew), notAfter whole years later on the same instant, or
    9999-12-31 23:59:59 for ``years == 0``. A 29 February start moves to 28 February so
    the expiry exists in every year."""
    not_before = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if (not_before.month, not_before.day) == (2, 29):
        not_before = not_before.replace(day=28)
    if years == 0:
        return not_before, NO_EXPIRY
    return not_before, not_before.replace(year=not_before.year + years)


def _device_builder(
    chip_serial_hex: str,
    public_key: SubjectKey,
    issuer: x509.Certificate,
    profile: ProfileSettings,
    serial_number: int,
    validity: tuple[datetime, datetime],
    ca_name: str,
) -> x509.CertificateBuilder:
    """Every device certificate, and the compressed-format template, come from here: one
    layout, so the template's offsets fit each issued certificate.

    The revocation pointers (the issuing intermediate's CRL, the OCSP responder) are fixed
    per CA and profile, so they sit in the template like the issuer name: the chip's
    compressed certificate still rebuilds byte for byte."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, profile.organization)]
    if profile.organizational_unit:
        attrs.append(
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, profile.organizational_unit)
        )
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, chip_serial_hex))
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial_number)
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    )
    return with_revocation_urls(builder, profile.crl_url_for(ca_name), profile.ocsp_url)


def with_revocation_urls(
    builder: x509.CertificateBuilder, crl_url: str | None, ocsp_url: str | None
) -> x509.CertificateBuilder:
    """Where relying parties check the certificate: a CRL distribution point and an OCSP
    responder (authority information access), each only when given, in that order (the
    device template depends on it)."""
    if crl_url:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    if ocsp_url:
        ocsp = x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([ocsp]), critical=False)
    return builder


def device_template(issuer: x509.Certificate, profile: ProfileSettings, ca_name: str) -> bytes:
    """The compressed-format template for ``profile`` under ``issuer`` (DER).

    Placeholders stand where each device differs (CN, key, serial, dates, signature); the
    chip's definition records where they sit. The placeholder signature comes from a
    throwaway software key: a template is never trusted, only its layout matters."""
    placeholder = ec.generate_private_key(ec.SECP256R1())
    builder = _device_builder(
        "0" * 18,
        placeholder.public_key(),
        issuer,
        profile,
        1 << (8 * SERIAL_BYTES - 8),
        device_validity(datetime(2000, 1, 1, tzinfo=UTC), profile.validity_years),
        ca_name,
    )
    return builder.sign(placeholder, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def build_device_certificate(
    request: SigningRequest,
    ca: LoadedCa,
    profile: ProfileSettings,
    serial_number: int,
    now: datetime,
) -> x509.Certificate:
    """Build, sign (in the token) and self-check one device certificate."""
    pub = check_public_key(request.public_key)
    issuer = ca.intermediate_cert
    validity = device_validity(now, profile.validity_years)
    cert = _device_builder(
        request.chip_serial_hex,
        pub,
        issuer,
        profile,
        serial_number,
        validity,
        ca.name,
    ).sign(ca.key, hashes.SHA256())
    # The issuer name and algorithm are ours by construction; what a faulty token could get
    # wrong is the signature, so check exactly that against the intermediate certificate's
    # key, what every relying party uses (cheaper than verify_directly_issued_by).
    _self_check(issuer, cert.signature, cert.tbs_certificate_bytes, hashes.SHA256())
    return cert


def _self_check(
    issuer: x509.Certificate,
    signature: bytes,
    data: bytes,
    algorithm: hashes.HashAlgorithm | Prehashed,
) -> None:
    issuer_key = issuer.public_key()
    assert isinstance(issuer_key, ec.EllipticCurvePublicKey)  # P-256, checked at load
    _check_signature(issuer_key, signature, data, ec.ECDSA(algorithm))


def _check_signature(
    issuer_key: ec.EllipticCurvePublicKey,
    signature: bytes,
    data: bytes,
    algorithm: ec.ECDSA,
) -> None:
    """The self-check: a certificate whose signature does not verify with the issuing
    intermediate's key (a faulty or swapped token) is never released."""
    try:
        issuer_key.verify(signature, data, algorithm)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise PolicyViolationError(
            f"the new certificate does not verify with the CA key ({type(exc).__name__}); "
            "not released"
        ) from None


# The field prime and the constant b of P-256 (SEC 2, 2.4.2; a = -3).
_P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
_P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
# One signature scheme for every template certificate: ECDSA over the TBS's SHA-256, which
# the signer computes once and hands to the token and to the self-check alike.
_ECDSA_PREHASHED_SHA256 = ec.ECDSA(Prehashed(hashes.SHA256()))


def check_p256_point(point: bytes) -> None:
    """Refuse an uncompressed P-256 point (``04 || X || Y``) that is not on the curve.

    The same inputs :func:`check_public_key` refuses for such a point (coordinates below
    the field prime, the curve equation holds; P-256 has cofactor 1 and an affine point is
    never the identity, so that is full public-key validation, SP 800-56A 5.6.2.3.3), in
    about a microsecond of integer arithmetic instead of building a key object the signer's
    template path does not need."""
    if len(point) != 65 or point[0] != 0x04:
        raise PolicyViolationError("public key is not an uncompressed P-256 point")
    x = int.from_bytes(point[1:33], "big")
    y = int.from_bytes(point[33:], "big")
    if x >= _P256_P or y >= _P256_P or (x * (x * x - 3) + _P256_B - y * y) % _P256_P:
        raise PolicyViolationError("public key is not a point on P-256")


class DeviceIssuer:
    """Issues the device certificates of one CA and profile: what the signer holds.

    P-256 subjects (every chip) take the template path (:mod:`provisioner.ca.tbs_template`):
    the TBS is the builder's own output for placeholder values with this device's fields
    written in, byte for byte what :func:`build_device_certificate` would sign. The digest
    is signed in the token and the signature checked against the intermediate, as on the
    builder path. Anything else (RSA subjects, dates that change encoding) takes the
    builder. The template follows the CA: a rotated intermediate gets a new one.

    What is fixed per certificate is what bounds the signer when the token signs fast, so
    the chip's raw point is checked on the curve with integer arithmetic (no key object),
    the hour's dates are written into the template once per hour (:class:`DatedTbs`), and
    the TBS is hashed once for the token and the self-check.
    """

    def __init__(self, ca: LoadedCa, profile: ProfileSettings) -> None:
        self.ca, self.profile = ca, profile
        self._template: DeviceTbsTemplate | None = None
        # (UTC year, month, day, hour), the intermediate, the template with those dates.
        self._dated: tuple[tuple[int, int, int, int], x509.Certificate, DatedTbs | None] | None
        self._dated = None

    @property
    def template(self) -> DeviceTbsTemplate | None:
        """The template in use (``None`` until the first P-256 subject)."""
        return self._template

    def issue(self, request: SigningRequest, serial_number: int, now: datetime) -> x509.Certificate:
        point = request.public_key
        if len(point) == 65 and point[0] == 0x04:  # the chip's raw point: the hot path
            check_p256_point(point)
        else:  # a SubjectPublicKeyInfo: the point inside it, or an RSA key (the builder)
            pub = check_public_key(point)
            if not isinstance(pub, ec.EllipticCurvePublicKey):
                return build_device_certificate(request, self.ca, self.profile, serial_number, now)
            point = pub.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        dated = self._dated_for(now)
        tbs = (
            dated.fill(request.chip_serial_hex, point, serial_number) if dated is not None else None
        )
        if dated is None or tbs is None:
            return build_device_certificate(request, self.ca, self.profile, serial_number, now)
        template = dated.template
        digest = hashlib.sha256(tbs).digest()
        signature = self.ca.key.sign(digest, _ECDSA_PREHASHED_SHA256)
        _check_signature(template.issuer_key, signature, digest, _ECDSA_PREHASHED_SHA256)
        return x509.load_der_x509_certificate(template.certificate(tbs, signature))

    def _dated_for(self, now: datetime) -> DatedTbs | None:
        """The template with the dates of ``now``'s hour, made once per hour and CA."""
        utc = now if now.tzinfo is UTC else now.astimezone(UTC)
        hour = (utc.year, utc.month, utc.day, utc.hour)
        issuer = self.ca.intermediate_cert
        held = self._dated
        if held is not None and held[0] == hour and held[1] is issuer:
            return held[2]
        validity = device_validity(now, self.profile.validity_years)
        dates = encode_validity(validity)
        template = self._template_for(validity, dates)
        dated = template.dated(dates) if template is not None else None
        self._dated = (hour, issuer, dated)
        return dated

    def _template_for(
        self, validity: tuple[datetime, datetime], dates: tuple[bytes, bytes]
    ) -> DeviceTbsTemplate | None:
        issuer = self.ca.intermediate_cert
        held = self._template
        if held is not None and held.issuer is issuer and held.fits_dates(dates):
            return held
        ca_name = self.ca.name

        def builder_for(
            cn: str,
            public_key: ec.EllipticCurvePublicKey,
            serial: int,
            validity: tuple[datetime, datetime],
        ) -> x509.CertificateBuilder:
            return _device_builder(
                cn,
                public_key,
                issuer,
                self.profile,
                serial,
                validity,
                ca_name,
            )

        self._template = DeviceTbsTemplate.make(
            builder_for, issuer, validity, random_serial_number()
        )
        return self._template
