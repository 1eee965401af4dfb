"""Per-batch manifests in Microchip's format, signed by a manifest key in the HSM.

Customers who register devices themselves (Microchip's Trust&GO flow, AWS or Azure
scripts) take a manifest: a JSON list with one signed entry per chip. Each entry is a JWS
(ES256, flattened: ``protected``, ``payload``, ``signature``, plus an unprotected
``header.uniqueId``) whose payload names the chip (``uniqueId``: the 9-byte serial in
lower-case hex) and carries its public key with the certificate chain in ``x5c``. The
protected header names the manifest signer by ``kid`` (its SKI) and ``x5t#S256`` (SHA-256 of
its certificate), which is how a verifier pins it (research/atecc608.md).

A chip whose certificate was revoked before the manifest was built keeps its entry (the
customer must know the part exists) and is marked in the signed payload:
``"revocation": {"status": "revoked", "reason": "key_compromise", "revocationDate":
"2026-12-01T12:00:00.000Z", "certificateSerial": "<hex>"}``. Microchip's format has no such
field; readers of the format ignore a field they do not know, and the mark is inside the
JWS, so it cannot be stripped without breaking the entry's signature. An entry without it
was not revoked when the manifest was built (the CRL says what happened since).

The manifest key is its own P-256 key in the factory token (``manifest-signer``), made with
the CA; its certificate (self-signed by that key) is ``var/ca/manifest-signer.pem``.
:func:`verify` needs only the manifest and that certificate.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from provisioner.ca.manifest_key import KEY_LABEL, ensure_manifest_key, signer_file
from provisioner.errors import InvalidInputError
from provisioner.settings import Settings

MANUFACTURER = {
    "organizationName": "Microchip Technology Inc",
    "organizationalUnitName": "Secure Products Group",
}


class ManifestError(InvalidInputError):
    """A manifest entry that does not verify (or cannot be parsed)."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class ChipRecord:
    """What the manifest says about one chip."""

    serial_hex: str  # as recorded: upper-case
    revision_hex: str | None
    provisioned_at: datetime
    device_cert: x509.Certificate
    signer_cert: x509.Certificate  # the intermediate that issued device_cert
    revoked: RevocationMark | None = None


@dataclass(frozen=True)
class RevocationMark:
    """A revoked chip's mark in its entry (module docstring)."""

    reason: str
    revoked_at: datetime
    serial_number: str  # the certificate's, hex

    def as_json(self) -> dict[str, str]:
        return {
            "status": "revoked",
            "reason": self.reason,
            "revocationDate": _timestamp(self.revoked_at),
            "certificateSerial": self.serial_number,
        }


@dataclass(frozen=True)
class VerifiedEntry:
    """One entry that verified: the chip and, if the manifest marks it, its revocation."""

    unique_id: str
    revocation: dict[str, Any] | None


def _timestamp(when: datetime) -> str:
    """Microchip's timestamp form: UTC, milliseconds, ``Z``."""
    if when.tzinfo is None:  # SQLite hands back naive datetimes; they are UTC
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _model(revision_hex: str | None) -> str:
    rev = (revision_hex or "").lower()
    return "ATECC608B" if rev.endswith("6003") else "ATECC608A"


def _payload(rec: ChipRecord, provisioner: dict[str, str]) -> dict[str, Any]:
    pub = rec.device_cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    nums = pub.public_numbers()
    der = serialization.Encoding.DER
    out: dict[str, Any] = {
        "version": 1,
        "model": _model(rec.revision_hex),
        "partNumber": _model(rec.revision_hex),
        "manufacturer": MANUFACTURER,
        "provisioner": provisioner,
        "distributor": provisioner,
        "groupId": "",
        "provisioningTimestamp": _timestamp(rec.provisioned_at),
        "uniqueId": rec.serial_hex.lower(),
        "publicKeySet": {
            "keys": [
                {
                    "kid": "0",
                    "kty": "EC",
                    "crv": "P-256",
                    "x": b64url(nums.x.to_bytes(32, "big")),
                    "y": b64url(nums.y.to_bytes(32, "big")),
                    "x5c": [
                        base64.b64encode(rec.device_cert.public_bytes(der)).decode(),
                        base64.b64encode(rec.signer_cert.public_bytes(der)).decode(),
                    ],
                }
            ]
        },
    }
    if rec.revoked is not None:
        out["revocation"] = rec.revoked.as_json()
    return out


def _protected(signer: x509.Certificate) -> dict[str, str]:
    ski = signer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    thumb = hashlib.sha256(signer.public_bytes(serialization.Encoding.DER)).digest()
    return {"typ": "JWT", "alg": "ES256", "kid": b64url(ski), "x5t#S256": b64url(thumb)}


def sign_entries(
    records: list[ChipRecord],
    key: ec.EllipticCurvePrivateKey,
    signer: x509.Certificate,
    provisioner: dict[str, str],
) -> list[dict[str, Any]]:
    """One signed entry per chip; ``key`` signs (in the token)."""
    protected = b64url(json.dumps(_protected(signer), separators=(",", ":")).encode())
    out = []
    for rec in records:
        payload = b64url(json.dumps(_payload(rec, provisioner), separators=(",", ":")).encode())
        der = key.sign(f"{protected}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        out.append(
            {
                "payload": payload,
                "protected": protected,
                "header": {"uniqueId": rec.serial_hex.lower()},
                "signature": b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
            }
        )
    return out


def verify(entries: Any, signer: x509.Certificate) -> list[str]:
    """Check every entry against the manifest signer certificate; returns the chips'
    uniqueIds. ManifestError names the first entry that fails and why."""
    return [e.unique_id for e in verify_entries(entries, signer)]


def verify_entries(entries: Any, signer: x509.Certificate) -> list[VerifiedEntry]:
    """:func:`verify`, also returning each entry's revocation mark (None: not revoked)."""
    if not isinstance(entries, list) or not entries:
        raise ManifestError("a manifest is a non-empty JSON list of signed entries")
    expected = _protected(signer)
    pub = signer.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise ManifestError("the manifest signer certificate has no EC key")
    ids: list[VerifiedEntry] = []
    for n, entry in enumerate(entries, 1):
        try:
            header = json.loads(unb64url(entry["protected"]))
            payload = json.loads(unb64url(entry["payload"]))
            raw = unb64url(entry["signature"])
            unique = entry["header"]["uniqueId"]
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"entry {n} is malformed ({exc})") from None
        if header.get("alg") != "ES256" or header.get("kid") != expected["kid"]:
            raise ManifestError(f"entry {n} is not signed by this manifest signer (kid)")
        if header.get("x5t#S256") != expected["x5t#S256"]:
            raise ManifestError(f"entry {n} names another signer certificate (x5t#S256)")
        if len(raw) != 64:
            raise ManifestError(f"entry {n}: an ES256 signature is 64 bytes")
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        signed = f"{entry['protected']}.{entry['payload']}".encode()
        try:
            pub.verify(der, signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ManifestError(f"entry {n} ({unique}): the signature does not verify") from None
        if payload.get("uniqueId") != unique:
            raise ManifestError(f"entry {n}: header uniqueId {unique} differs from the payload")
        _check_key(n, payload)
        mark = payload.get("revocation")
        if mark is not None and not (isinstance(mark, dict) and mark.get("status") == "revoked"):
            raise ManifestError(f"entry {n} ({unique}): malformed revocation mark")
        ids.append(VerifiedEntry(unique, mark))
    return ids


def _check_key(n: int, payload: dict[str, Any]) -> None:
    """The device certificate in x5c must hold the key the entry lists, and be issued by
    the x5c signer certificate."""
    try:
        (jwk,) = payload["publicKeySet"]["keys"]
        device = x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][0]))
        issuer = x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][1]))
        x, y = int.from_bytes(unb64url(jwk["x"]), "big"), int.from_bytes(unb64url(jwk["y"]), "big")
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"entry {n}: publicKeySet is malformed ({exc})") from None
    pub = device.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey) or (
        pub.public_numbers().x,
        pub.public_numbers().y,
    ) != (x, y):
        raise ManifestError(f"entry {n}: the certificate in x5c holds another key")
    try:
        device.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        raise ManifestError(f"entry {n}: the device certificate is not issued by x5c[1]") from None


def batch_records(engine: Any, settings: Settings, batch_id: int) -> list[ChipRecord]:
    """Every chip of the batch that has a certificate, with the intermediate that issued it;
    a pre-provisioned part with the certificate it came with and its manufacturer's signer
    certificate (recorded once its chain verified: :class:`FactoryCertificate`)."""
    from sqlmodel import Session, col, select

    from provisioner.ca.ceremony import store_of
    from provisioner.ca.store import fingerprint
    from provisioner.db.models import Batch, Certificate, Device, FactoryCertificate, Revocation
    from provisioner.errors import NotFoundError

    store = store_of(settings)
    issuers = {fingerprint(c): c for c in store.intermediates().values()}
    if store.intermediate_pem.exists():
        current = store.intermediate()
        issuers[fingerprint(current)] = current
    with Session(engine) as s:
        if s.get(Batch, batch_id) is None:
            raise NotFoundError(f"batch {batch_id} does not exist (see `provisioner batch list`)")
        rows = s.exec(
            select(Device, Certificate, Revocation)
            .join(Certificate, col(Certificate.device_id) == Device.id)
            .join(Revocation, col(Revocation.certificate_id) == Certificate.id, isouter=True)
            .where(Device.batch_id == batch_id)
            .order_by(col(Device.position))
        ).all()
        factory = s.exec(
            select(Device, FactoryCertificate)
            .join(FactoryCertificate, col(FactoryCertificate.device_id) == Device.id)
            .where(Device.batch_id == batch_id)
            .order_by(col(Device.position))
        ).all()
    out = [
        ChipRecord(
            serial_hex=dev.chip_serial or "",
            revision_hex=dev.revision,
            provisioned_at=row.created_at,
            device_cert=x509.load_der_x509_certificate(row.der),
            signer_cert=x509.load_der_x509_certificate(row.signer_der),
        )
        for dev, row in factory
    ]
    for dev, cert, rev in rows:
        issuer = issuers.get(cert.issuer_fingerprint_sha256)
        if issuer is None:
            raise NotFoundError(
                f"the intermediate that issued chip {dev.chip_serial}'s certificate is not in "
                f"{store.root_dir}"
            )
        out.append(
            ChipRecord(
                serial_hex=dev.chip_serial or "",
                revision_hex=dev.revision,
                provisioned_at=cert.created_at,
                device_cert=x509.load_der_x509_certificate(cert.der),
                signer_cert=issuer,
                revoked=None
                if rev is None
                else RevocationMark(rev.reason, rev.revoked_at, rev.serial_number),
            )
        )
    return out


__all__ = ["KEY_LABEL", "ensure_manifest_key", "signer_file"]
