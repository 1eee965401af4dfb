"""What the CA knows about one of its certificates: good, revoked (when, why) or unknown.

One place for the kinds of certificate the intermediates issue: the line's device
certificates (``certificate`` + ``revocation``), the identity certificates of devices
enrolled in the field (``identity_certificate``, revocation on the row) and the stations'
certificates (``station_identity``, revoked by ``station revoke`` or a re-enrollment). The
CRLs (:mod:`provisioner.ca.revocation`) and the OCSP responder read revocations only here,
so a certificate revoked one way can never be missing from the other.

A station certificate row names no issuer fingerprint, so its issuer is read from the
certificate itself (its authority key identifier against the issuer's subject key
identifier): only revoked rows are parsed for a CRL, and one row for a status.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from cryptography import x509
from sqlmodel import Session, col, select

from provisioner.ca.store import fingerprint
from provisioner.db.models import (
    Certificate,
    IdentityCertificate,
    Revocation,
    StationIdentity,
    aware,
)

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


def _issued_by(pem: str, issuer: x509.Certificate) -> bool:
    """Whether the station certificate ``pem`` names ``issuer`` (name and key identifier)."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return cert.issuer == issuer.subject and aki.key_identifier == ski.digest


def revoked_entries(
    s: Session, issuer_fingerprint_sha256: str, issuer: x509.Certificate | None = None
) -> list[RevokedEntry]:
    """Every revoked certificate of one issuer, line devices first, then field identities,
    then (when ``issuer``, the issuer's certificate, is given) stations, each in
    revocation order (a CRL lists them all until they expire; none are dropped today)."""
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
    if issuer is not None:
        assert fingerprint(issuer) == issuer_fingerprint_sha256
        for st in s.exec(
            select(StationIdentity)
            .where(col(StationIdentity.revoked_at).is_not(None))
            .order_by(col(StationIdentity.revoked_at), col(StationIdentity.fingerprint_sha256))
        ).all():
            if st.revoked_at is not None and _issued_by(st.certificate_pem, issuer):
                out.append(
                    RevokedEntry(_hex(st.serial_number), aware(st.revoked_at), "unspecified")
                )
    return out


def certificate_status(
    s: Session,
    issuer_fingerprint_sha256: str,
    serial: int | str,
    issuer: x509.Certificate | None = None,
) -> CertStatus:
    """The status of the certificate with this serial number from this issuer: "unknown"
    when the issuer never issued it (OCSP answers that for a serial we never saw).
    Stations' certificates are found only when ``issuer`` (its certificate) is given."""
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
    if issuer is not None:
        for st in s.exec(
            select(StationIdentity).where(StationIdentity.serial_number == serial_hex)
        ).all():
            if _issued_by(st.certificate_pem, issuer):
                if st.revoked_at is not None:
                    return CertStatus(
                        "revoked", aware(st.revoked_at), "unspecified", aware(st.not_after)
                    )
                return CertStatus("good", not_after=aware(st.not_after))
    return CertStatus("unknown")
