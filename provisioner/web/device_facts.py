"""Everything the device page shows about one device, read in one place: its row, its
certificate (parsed), its registry upload, its revocation and registry block, and (for a
role that may read the trail) its audit events.

The certificate's body is never put in the view: the page shows its public facts and links
to the PEM download.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, or_, select

from provisioner.cli.view import part_action_text
from provisioner.db.models import (
    AuditEvent,
    Certificate,
    Device,
    RegistryBlock,
    RegistryUpload,
    Revocation,
)
from provisioner.errors import NotFoundError

MAX_TIMELINE = 500  # a device has a few dozen events; a retried one, a few more


@dataclass(frozen=True)
class CertFacts:
    subject: str
    issuer: str
    serial_number: str
    fingerprint_sha256: str
    not_before: datetime
    not_after: datetime
    issued_at: datetime


@dataclass(frozen=True)
class DeviceFacts:
    device: Device
    status: str  # revoked, cancelled, failed, done or the step
    part_action: str | None  # what to do with a failed part, in the floor's words
    certificate: CertFacts | None
    upload: RegistryUpload | None
    revocation: Revocation | None
    block: RegistryBlock | None
    timeline: list[AuditEvent] | None  # None: the role may not read the trail


def device_id_by_serial(engine: Engine, serial: str) -> int:
    """The device a chip serial (any case) belongs to, or NotFoundError."""
    s_ = serial.strip().upper()
    with Session(engine) as s:
        dev_id = s.exec(select(Device.id).where(Device.chip_serial == s_)).first()
    if dev_id is None:
        raise NotFoundError(f"no device has chip serial {serial.strip()[:40]!r}")
    return int(dev_id)


def certificate_pem(engine: Engine, device_id: int) -> tuple[str, str]:
    """(file name, PEM) of the device's certificate, or NotFoundError."""
    with Session(engine) as s:
        row = s.exec(
            select(Certificate, Device)
            .join(Device, col(Device.id) == Certificate.device_id)
            .where(Certificate.device_id == device_id)
        ).first()
    if row is None:
        raise NotFoundError(f"device {device_id} has no certificate")
    cert, dev = row
    pem = x509.load_der_x509_certificate(cert.der).public_bytes(serialization.Encoding.PEM)
    return f"device-{dev.chip_serial or device_id}.pem", pem.decode()


def _cert_facts(cert: Certificate) -> CertFacts:
    parsed = x509.load_der_x509_certificate(cert.der)
    return CertFacts(
        subject=parsed.subject.rfc4514_string(),
        issuer=parsed.issuer.rfc4514_string(),
        serial_number=cert.serial_number,
        fingerprint_sha256=cert.fingerprint_sha256,
        not_before=parsed.not_valid_before_utc,
        not_after=parsed.not_valid_after_utc,
        issued_at=cert.created_at,
    )


def _status(dev: Device, revoked: bool) -> str:
    if revoked:
        return "revoked"
    if dev.cancelled_at is not None:
        return "cancelled"
    if dev.error is not None:
        return "failed"
    return dev.step.name.lower()


def device_facts(engine: Engine, device_id: int, *, with_timeline: bool) -> DeviceFacts:
    """The device page's data; ``with_timeline`` only for a role that may ``audit.query``."""
    with Session(engine) as s:
        dev = s.get(Device, device_id)
        if dev is None:
            raise NotFoundError(f"device {device_id} does not exist")
        cert = s.exec(select(Certificate).where(Certificate.device_id == device_id)).first()
        upload = s.exec(select(RegistryUpload).where(RegistryUpload.device_id == device_id)).first()
        rev = (
            s.exec(select(Revocation).where(Revocation.certificate_id == cert.id)).first()
            if cert is not None
            else None
        )
        block = s.exec(select(RegistryBlock).where(RegistryBlock.device_id == device_id)).first()
        timeline = None
        if with_timeline:
            mine = [AuditEvent.device_id == device_id]
            if dev.chip_serial:
                mine.append(AuditEvent.chip_serial == dev.chip_serial)
            timeline = list(
                s.exec(
                    select(AuditEvent)
                    .where(or_(*mine))
                    .order_by(col(AuditEvent.seq))
                    .limit(MAX_TIMELINE)
                ).all()
            )
    return DeviceFacts(
        device=dev,
        status=_status(dev, rev is not None),
        part_action=part_action_text(dev.action) if dev.error is not None else None,
        certificate=_cert_facts(cert) if cert is not None else None,
        upload=upload,
        revocation=rev,
        block=block,
        timeline=timeline,
    )
