"""What the CA knows about one of its certificates: good, revoked (when, why) or unknown.

One place for the two kinds of certificate the intermediates issue: the line's device
certificates (``certificate`` + ``revocation``) and the identity certificates of devices
enrolled in the field (``identity_certificate``, revocation on the row). The CRLs
(:mod:`provisioner.ca.revocation`) and the OCSP responder read revocations only here, so a
certificate revoked one way can never be missing from the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlmodel import Session, col, select

from provisioner.db.models import Certificate, IdentityCertificate, Revocation, aware

Status = Literal["good", "revoked", "unknown"]


@dataclass(frozen=True)
class RevokedEntry:
    """One line of a CRL."""

    serial_number: str  # hex, lower-case, no leading zeros (as stored)
    revoked_at: datetime  # aware UTC
    reason: str  # a key of revocation.REASONS


@dataclass(frozen=True)
class CertStatus:
    status: Status
    revoked_at: datetime | None = None
    reason: str | None = None
    not_after: datetime | None = None


def _hex(serial: int | str) -> str:
    return format(serial, "x") if isinstance(serial, int) else serial.lower().lstrip("0")


def revoked_entries(s: Session, issuer_fingerprint_sha256: str) -> list[RevokedEntry]:
    """Every revoked certificate of one issuer, line devices first, each in revocation
    order (a CRL lists them all until they expire; none are dropped today)."""
    out = [
        RevokedEntry(r.serial_number, aware(r.revoked_at), r.reason)
        for r in s.exec(
            select(Revocation)
            .where(Revocation.issuer_fingerprint_sha256 == issuer_fingerprint_sha256)
            .order_by(col(Revocation.id))
        ).all()
    ]
    for c in s.exec(
        select(IdentityCertificate)
        .where(IdentityCertificate.issuer_fingerprint_sha256 == issuer_fingerprint_sha256)
        .where(col(IdentityCertificate.revoked_at).is_not(None))
        .order_by(col(IdentityCertificate.revoked_at), col(IdentityCertificate.id))
    ).all():
        assert c.revoked_at is not None
        out.append(RevokedEntry(c.serial_number, aware(c.revoked_at), c.reason or "unspecified"))
    return out


def certificate_status(s: Session, issuer_fingerprint_sha256: str, serial: int | str) -> CertStatus:
    """The status of the certificate with this serial number from this issuer: "unknown"
    when the issuer never issued it (OCSP answers that for a serial we never saw)."""
    serial_hex = _hex(serial)
    cert = s.exec(select(Certificate).where(Certificate.serial_number == serial_hex)).first()
    if cert is not None and cert.issuer_fingerprint_sha256 == issuer_fingerprint_sha256:
        rev = s.exec(select(Revocation).where(Revocation.certificate_id == cert.id)).first()
        if rev is not None:
            return CertStatus("revoked", aware(rev.revoked_at), rev.reason, aware(cert.not_after))
        return CertStatus("good", not_after=aware(cert.not_after))
    ident = s.exec(
        select(IdentityCertificate).where(IdentityCertificate.serial_number == serial_hex)
    ).first()
    if ident is not None and ident.issuer_fingerprint_sha256 == issuer_fingerprint_sha256:
        if ident.revoked_at is not None:
            return CertStatus(
                "revoked",
                aware(ident.revoked_at),
                ident.reason or "unspecified",
                aware(ident.not_after),
            )
        return CertStatus("good", not_after=aware(ident.not_after))
    return CertStatus("unknown")
