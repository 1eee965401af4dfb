"""Verification of a pre-provisioned part's certificate chain against the manufacturer root
the line trusts (``[manufacturer] root_file``, installed by ``provisioner manufacturer trust``).

A Trust&GO or TrustFLEX part carries a device certificate signed by a signer certificate
signed by its manufacturer's root; our CA issues nothing for it. The line accepts such a
part only when, here:

- the signer certificate's signature verifies with the root's public key, its authority
  key identifier (when present) names the root's key, and it is a CA;
- the device certificate's signature verifies with the signer's public key, its issuer is
  the signer's subject and its authority key identifier (when present) names the signer's;
- both are within their validity at ``now``, and the device key is a P-256 key.

The signer certificate's *issuer name* is not compared with the root's subject: the
library's compressed-certificate templates (TNG definitions) fix that name, so a part
rebuilt from them names the template's issuer whatever root signed it; the signature and
the key identifier are what bind it to the root.

The station runs this check to refuse a bad part early with a clear message; the line
server runs it again before it records anything (a station is the least trusted party).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.chips.der import (
    CONTEXT_0,
    CONTEXT_3,
    KEY_ID_0,
    OCTET_STRING,
    OID,
    Tlv,
    children,
    encode_oid,
    read_tlv,
    value,
)
from provisioner.errors import ChipStateError, ConfigError, InvalidInputError


class ManufacturerChainError(ChipStateError):
    """The part's certificates do not chain to the trusted manufacturer root: the part is
    refused (reject bin), nothing is uploaded."""


@dataclass(frozen=True)
class VerifiedChain:
    """A device certificate that verified up to the trusted root."""

    device: x509.Certificate
    signer: x509.Certificate
    root_fingerprint_sha256: str

    @property
    def device_der(self) -> bytes:
        return self.device.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint_sha256(self) -> str:
        return hashlib.sha256(self.device_der).hexdigest()

    @property
    def public_point(self) -> bytes:
        """The device key as 04||X||Y (what the ledger records as the device's key)."""
        return self.device.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )


def load_root(path: Path) -> x509.Certificate:
    """The trusted root from ``path`` (PEM); ConfigError if there is none or it is not a
    self-signed P-256 CA certificate."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"no manufacturer root at {path}: install one with "
            "`provisioner manufacturer trust FILE` before a preprovisioned batch runs"
        ) from None
    return parse_root(data, str(path))


def parse_root(data: bytes, where: str = "the root") -> x509.Certificate:
    """A PEM root certificate, checked to be a self-signed P-256 CA."""
    try:
        root = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{where} is not a PEM certificate") from None
    key = root.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"{where}: the manufacturer root must hold a P-256 key")
    if not _is_ca(root):
        raise ConfigError(f"{where}: the manufacturer root is not a CA certificate")
    try:
        _check_signature(root, key)
    except InvalidSignature:
        raise ConfigError(f"{where}: the manufacturer root is not self-signed") from None
    return root


def root_point(root: x509.Certificate) -> bytes:
    """The root's public key as X||Y (64 bytes), as the library's certificate reader takes
    it."""
    return root.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def verify_chain(
    device_der: bytes,
    signer_der: bytes,
    root: x509.Certificate,
    *,
    now: datetime | None = None,
) -> VerifiedChain:
    """Verify device <- signer <- root; raises :class:`ManufacturerChainError` saying which
    link failed."""
    now = now or datetime.now(UTC)
    try:
        device = x509.load_der_x509_certificate(device_der)
        signer = x509.load_der_x509_certificate(signer_der)
    except ValueError:
        raise ManufacturerChainError("the part's certificates are not valid DER") from None
    root_key = root.public_key()
    signer_key = signer.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    if not isinstance(signer_key, ec.EllipticCurvePublicKey):
        raise ManufacturerChainError("the part's signer certificate holds no EC key")
    try:
        _check_signature(signer, root_key)
    except InvalidSignature:
        raise ManufacturerChainError(
            "the part's signer certificate is not signed by the trusted manufacturer root "
            f"(root {fingerprint(root)[:16]}…): a part of another manufacturer or a forgery"
        ) from None
    _check_key_id(signer, root, "signer certificate", "the trusted root")
    if not _is_ca(signer):
        raise ManufacturerChainError("the part's signer certificate is not a CA certificate")
    try:
        _check_signature(device, signer_key)
    except InvalidSignature:
        raise ManufacturerChainError(
            "the part's device certificate is not signed by its signer certificate"
        ) from None
    if _raw_names(device)[0] != _raw_names(signer)[1]:
        raise ManufacturerChainError(
            "the part's device certificate names another issuer than its signer certificate"
        )
    _check_key_id(device, signer, "device certificate", "its signer")
    for what, cert in (("device", device), ("signer", signer)):
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise ManufacturerChainError(f"the part's {what} certificate is not valid now")
    key = device.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ManufacturerChainError("the part's device certificate holds no P-256 key")
    return VerifiedChain(device, signer, fingerprint(root))


def _check_signature(cert: x509.Certificate, key: ec.EllipticCurvePublicKey) -> None:
    algorithm = cert.signature_hash_algorithm
    if algorithm is None:
        raise InvalidSignature
    key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))


def _check_key_id(cert: x509.Certificate, issuer: x509.Certificate, what: str, whose: str) -> None:
    aki = _extensions(cert).get(_AKI)
    if aki is None:
        return
    key_id = next((value(aki, t) for t in _kids(aki) if t.tag == KEY_ID_0), None)
    if key_id is None:
        return
    ski_ext = _extensions(issuer).get(_SKI)
    if ski_ext is not None:
        ski = value(ski_ext, read_tlv(ski_ext, 0))
    else:
        ski = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
    if key_id != ski:
        raise ManufacturerChainError(
            f"the part's {what} names another authority key than {whose}'s"
        )


def _is_ca(cert: x509.Certificate) -> bool:
    ext = _extensions(cert).get(_BASIC_CONSTRAINTS)
    if ext is None:
        return False
    first = next(iter(_kids(ext)), None)
    return first is not None and first.tag == _BOOLEAN and value(ext, first) != b"\x00"


# Extensions are read from the DER here rather than through ``cert.extensions``: the
# library's TNG device template carries ``serialNumber=eui48_...`` (an underscore, outside
# PrintableString) in its subjectAltName, as Microchip's parts do, which cryptography
# refuses to parse; the chain check needs only these three extensions.
_SKI, _AKI, _BASIC_CONSTRAINTS = (
    encode_oid("2.5.29.14"),
    encode_oid("2.5.29.35"),
    encode_oid("2.5.29.19"),
)
_BOOLEAN = 0x01


def _kids(data: bytes) -> list[Tlv]:
    """The elements inside the SEQUENCE ``data`` holds."""
    return children(data, read_tlv(data, 0))


def _extensions(cert: x509.Certificate) -> dict[bytes, bytes]:
    """extnID (OID content octets) -> extnValue's contents, from the TBS certificate."""
    try:
        tbs = cert.tbs_certificate_bytes
        outer = [t for t in _kids(tbs) if t.tag == CONTEXT_3]
        if not outer:
            return {}
        seq = value(tbs, outer[0])
        out: dict[bytes, bytes] = {}
        for ext in _kids(seq):
            parts = children(seq, ext)
            if parts[0].tag != OID or parts[-1].tag != OCTET_STRING:
                raise InvalidInputError("malformed extension")
            out[value(seq, parts[0])] = value(seq, parts[-1])
        return out
    except (InvalidInputError, IndexError):
        raise ManufacturerChainError("the part's certificate has malformed extensions") from None


def _raw_names(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """(issuer, subject) as DER, compared byte for byte (no string parsing)."""
    tbs = cert.tbs_certificate_bytes
    kids = _kids(tbs)
    if kids and kids[0].tag == CONTEXT_0:  # [0] version
        kids = kids[1:]
    issuer, subject = kids[2], kids[4]
    return tbs[issuer.offset : issuer.end], tbs[subject.offset : subject.end]
