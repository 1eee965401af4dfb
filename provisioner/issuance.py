"""The signing service: issuance policy + HSM signature + record, in one transaction.

This is what runs behind the ``hsm`` queue (or in-process). It implements
:class:`~provisioner.ports.CertificateSigner` and is idempotent per device: a device that
already has a certificate for the same public key gets that certificate back, never a second
one. Clones (a serial or public key already certified for another device) are refused and
recorded as incidents.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from provisioner.audit import chain
from provisioner.ca.ceremony import LoadedCa
from provisioner.ca.issuer import (
    build_device_certificate,
    check_public_key,
    check_serial,
    random_serial_number,
    verify_proof_of_possession,
)
from provisioner.db.engine import transaction
from provisioner.db.models import Certificate, Device, Step
from provisioner.errors import PolicyViolationError
from provisioner.ledger import get_device, record_step
from provisioner.ports import IssuedCertificate, SigningRequest
from provisioner.settings import ProfileSettings


class IssuanceService:
    """Issues device certificates with the intermediate CA key held in the token."""

    def __init__(
        self, engine: Engine, ca: LoadedCa, profile: ProfileSettings, actor: str = "signer"
    ) -> None:
        self.engine = engine
        self.ca = ca
        self.profile = profile
        self.actor = actor
        self._ca_fingerprint = hashlib.sha256(
            ca.intermediate_cert.public_bytes(serialization.Encoding.DER)
        ).hexdigest()

    def sign(self, request: SigningRequest) -> IssuedCertificate:
        # Stateless checks first: nothing is locked or written for a malformed request.
        check_serial(request.chip_serial_hex)
        check_public_key(request.public_key)
        verify_proof_of_possession(request.public_key, request.pop_challenge, request.pop_signature)
        incident: str | None = None
        with transaction(self.engine) as s:
            dev = get_device(s, request.device_id)
            existing = s.exec(
                select(Certificate).where(Certificate.device_id == request.device_id)
            ).first()
            if existing is not None:
                if dev.public_key != request.public_key.hex():
                    raise PolicyViolationError(
                        f"device {request.device_id} already has a certificate for another key"
                    )
                return _issued(existing)
            incident = self._clone_check(s, dev, request)
            if incident is None:
                return self._issue(s, dev, request)
        # The refusal is recorded in its own transaction (the one above rolled back).
        with transaction(self.engine) as s:
            chain.append(
                s,
                "incident.clone_refused",
                actor=self.actor,
                batch_id=request.batch_id,
                device_id=request.device_id,
                chip_serial=request.chip_serial_hex,
                payload={
                    "reason": incident,
                    "public_key_sha256": hashlib.sha256(request.public_key).hexdigest(),
                },
            )
        raise PolicyViolationError(f"refused to sign: {incident}")

    def _clone_check(self, s: Session, dev: Device, req: SigningRequest) -> str | None:
        if dev.chip_serial != req.chip_serial_hex or dev.public_key != req.public_key.hex():
            return f"request for device {dev.id} does not match what its station recorded"
        other = s.exec(
            select(Device.id).where(Device.chip_serial == req.chip_serial_hex, Device.id != dev.id)
        ).first()
        if other is not None:
            return f"serial {req.chip_serial_hex} already belongs to device {other} (clone?)"
        return None

    def _issue(self, s: Session, dev: Device, req: SigningRequest) -> IssuedCertificate:
        cert = build_device_certificate(
            req, self.ca, self.profile, random_serial_number(), datetime.now(UTC)
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        row = Certificate(
            device_id=req.device_id,
            serial_number=format(cert.serial_number, "x"),
            fingerprint_sha256=hashlib.sha256(der).hexdigest(),
            der=der,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            issuer_fingerprint_sha256=self._ca_fingerprint,
        )
        s.add(row)
        record_step(
            s,
            dev,
            Step.CERT_ISSUED,
            "device.cert_issued",
            actor=self.actor,
            station_id=None,
            payload={
                "serial_number": row.serial_number,
                "fingerprint_sha256": row.fingerprint_sha256,
                "issuer_fingerprint_sha256": self._ca_fingerprint,
            },
        )
        return _issued(row)


def _issued(row: Certificate) -> IssuedCertificate:
    return IssuedCertificate(
        der=row.der,
        serial_number=int(row.serial_number, 16),
        fingerprint_sha256=row.fingerprint_sha256,
    )
