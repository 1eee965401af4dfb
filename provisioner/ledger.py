"""The device ledger: every step of a device is recorded with its audit event atomically.

The pipeline never writes rows itself; it asks the ledger to record "step X completed, with
these facts". One transaction updates the device row and appends the audit event, so the
database can never say a step happened without the audit trail saying so too (or the
reverse).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from cryptography import x509
from sqlalchemy import bindparam, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.audit import chain
from provisioner.ca.issuer import verify_proof_of_possession
from provisioner.ca.manufacturer_chain import ManufacturerChainError, VerifiedChain, verify_chain
from provisioner.db.engine import transaction
from provisioner.db.models import (
    Batch,
    BatchMode,
    BatchState,
    Certificate,
    Device,
    FactoryCertificate,
    PartAction,
    RegistryUpload,
    Step,
    UploadState,
    utcnow,
)
from provisioner.errors import (
    ChipError,
    ConfigError,
    InvalidInputError,
    NotFoundError,
    PolicyViolationError,
)
from provisioner.ports import IssuedCertificate

# What a station may report as an incident with a failure (``incident.<name>``): it saw
# something only it can see (a certificate its pinned CA chain does not vouch for).
# A pre-provisioned part whose chain does not verify against the manufacturer root is an
# incident too (``untrusted_part``): a part of another manufacturer, or a forgery.
STATION_INCIDENTS = frozenset({"forged_certificate", "untrusted_part"})

# The certificate kinds a pre-provisioned part may carry (chips.tng.FactoryCertificates).
FACTORY_KINDS = frozenset({"tngtls", "tflxtls"})

ManufacturerRoot = Callable[[], x509.Certificate]
"""Reads the trusted manufacturer root when a part is judged (so `manufacturer trust`
takes effect without a restart); raises ConfigError when none is installed."""


def registry_device_id(chip_serial_hex: str) -> str:
    """Cloud IoT device ids must start with a letter: ``sn`` + the serial in lower-case hex."""
    return "sn" + chip_serial_hex.lower()


_registry_id = registry_device_id  # for DeviceLedger.queue_upload, whose argument has the name


# The certificate rows a device's read-back is checked against, read with Core (no ORM
# object is needed for three columns; the gateway asks this for most devices twice).
_CERTIFICATE = Certificate.__table__  # type: ignore[attr-defined]
_FACTORY = FactoryCertificate.__table__  # type: ignore[attr-defined]
_DEVICE = Device.__table__  # type: ignore[attr-defined]
_CERT_OF = select(
    _CERTIFICATE.c.der, _CERTIFICATE.c.serial_number, _CERTIFICATE.c.fingerprint_sha256
).where(_CERTIFICATE.c.device_id == bindparam("device_id"))
_FACTORY_OF = select(_FACTORY.c.der, _FACTORY.c.serial_number, _FACTORY.c.fingerprint_sha256).where(
    _FACTORY.c.device_id == bindparam("device_id")
)


def get_device(session: Session, device_id: int) -> Device:
    dev = session.get(Device, device_id)
    if dev is None:
        raise NotFoundError(f"device {device_id} does not exist")
    return dev


def record_step(
    session: Session,
    dev: Device,
    step: Step,
    event_type: str,
    *,
    actor: str,
    station_id: str | None,
    payload: Mapping[str, Any] | None = None,
    socket: int | None = None,
) -> None:
    """Advance ``dev`` to ``step`` and append its audit event, in ``session``'s transaction.

    ``socket``: where the step happened (default: the socket the chip was identified in)."""
    dev.step = step
    dev.error = None
    dev.action = None
    dev.updated_at = utcnow()
    session.add(dev)
    chain.append(
        session,
        event_type,
        actor=actor,
        station_id=station_id,
        socket=socket if socket is not None else dev.socket,
        batch_id=dev.batch_id,
        device_id=dev.id,
        chip_serial=dev.chip_serial,
        payload=payload,
    )


class DeviceLedger:
    """Records pipeline progress for one actor (a station worker, the registry worker...)."""

    def __init__(
        self,
        engine: Engine,
        actor: str,
        station_id: str | None = None,
        socket: int | None = None,
        *,
        registry: str | None = None,
        manufacturer_root: ManufacturerRoot | None = None,
    ) -> None:
        self.engine = engine
        self.actor = actor
        self.station_id = station_id
        self.socket = socket  # the jig socket a station worker serves
        self.registry = registry  # where verified devices are uploaded (registry path)
        # Pre-provisioned parts' trusted root, read when a part is judged.
        self.manufacturer_root_source = manufacturer_root

    def load(self, device_id: int) -> Device:
        with transaction(self.engine) as s:
            return get_device(s, device_id)

    def certificate(self, device_id: int) -> IssuedCertificate:
        """The certificate the signer recorded for the device; for a pre-provisioned part,
        the one it came with (recorded once its chain verified)."""
        with self.engine.begin() as conn:
            row = conn.execute(_CERT_OF, {"device_id": device_id}).first()
            if row is None:
                row = conn.execute(_FACTORY_OF, {"device_id": device_id}).first()
        if row is None:
            raise NotFoundError(f"device {device_id} has no certificate yet")
        return IssuedCertificate(
            der=bytes(row.der),
            serial_number=int(row.serial_number, 16),
            fingerprint_sha256=row.fingerprint_sha256,
        )

    def advance(
        self,
        device_id: int,
        step: Step,
        event_type: str,
        *,
        fields: Mapping[str, Any] | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> Device:
        """Set ``fields`` on the device, mark ``step`` completed and audit it."""
        with transaction(self.engine) as s:
            dev = get_device(s, device_id)
            for name, value in (fields or {}).items():
                setattr(dev, name, value)
            record_step(
                s,
                dev,
                step,
                event_type,
                actor=self.actor,
                station_id=self.station_id,
                payload=payload,
                socket=self.socket,
            )
            return dev

    def identify(self, device_id: int, serial_hex: str, revision_hex: str, locator: str) -> Device:
        """Record the chip's serial on the device; a serial already recorded for another
        device is a clone (or a chip fed twice): refused, with an incident in the trail."""
        with transaction(self.engine) as s:
            other = s.exec(
                select(Device.id).where(Device.chip_serial == serial_hex, Device.id != device_id)
            ).first()
            if other is None:
                dev = get_device(s, device_id)
                dev.chip_serial, dev.revision = serial_hex, revision_hex
                dev.socket = self.socket if self.socket is not None else dev.socket
                record_step(
                    s,
                    dev,
                    Step.IDENTIFIED,
                    "device.identified",
                    actor=self.actor,
                    station_id=self.station_id,
                    socket=self.socket,
                    payload={"revision": revision_hex, "locator": locator},
                )
                return dev
        with transaction(self.engine) as s:
            dev = get_device(s, device_id)
            chain.append(
                s,
                "incident.duplicate_serial",
                actor=self.actor,
                station_id=self.station_id,
                socket=self.socket,
                batch_id=dev.batch_id,
                device_id=device_id,
                chip_serial=serial_hex,
                payload={"already_device": other, "locator": locator},
            )
        raise PolicyViolationError(
            f"chip {serial_hex} in {locator} already belongs to device {other}: "
            "a clone or a chip fed twice; remove it from the line"
        )

    def record_key(self, device_id: int, point: bytes) -> Device:
        """Record the public key the chip generated; a key already recorded for another
        device means a cloned or replayed chip: refused, with an incident in the trail."""
        key_hash = hashlib.sha256(point).hexdigest()
        with transaction(self.engine) as s:
            other = s.exec(
                select(Device.id).where(Device.public_key == point.hex(), Device.id != device_id)
            ).first()
            if other is None:
                dev = get_device(s, device_id)
                dev.public_key = point.hex()
                record_step(
                    s,
                    dev,
                    Step.KEY_GENERATED,
                    "device.key_generated",
                    actor=self.actor,
                    station_id=self.station_id,
                    socket=self.socket,
                    payload={"public_key_sha256": key_hash},
                )
                return dev
        serial = self._key_reused(device_id, other, key_hash)
        raise PolicyViolationError(
            f"chip {serial} reports public key {key_hash[:16]}…, already recorded for "
            f"device {other}: a cloned chip; remove it from the line"
        )

    def _key_reused(self, device_id: int, other: int, key_hash: str) -> str | None:
        """Record ``incident.key_reused`` (the key is already device ``other``'s); returns
        the device's chip serial for the refusal."""
        with transaction(self.engine) as s:
            dev = get_device(s, device_id)
            chain.append(
                s,
                "incident.key_reused",
                actor=self.actor,
                station_id=self.station_id,
                socket=self.socket,
                batch_id=dev.batch_id,
                device_id=device_id,
                chip_serial=dev.chip_serial,
                payload={"already_device": other, "public_key_sha256": key_hash},
            )
            return dev.chip_serial

    def challenge(self, device_id: int) -> bytes:
        """A fresh proof-of-possession challenge for the device, kept on its row: the chip
        must sign this one (and the signer is only asked with it), so a proof made earlier
        or for another device cannot be replayed. A new one replaces the last."""
        challenge = os.urandom(32)
        with self.engine.begin() as conn:
            res = conn.execute(
                update(_DEVICE)
                .where(_DEVICE.c.id == device_id)
                .values(pop_challenge=challenge.hex())
            )
            if not res.rowcount:
                raise NotFoundError(f"device {device_id} does not exist")
        return challenge

    def record_pop(self, device_id: int, challenge: bytes, signature: bytes) -> Device:
        """Check the chip's proof of possession against the challenge given out and the
        recorded key, then record POP_VERIFIED."""
        with self.engine.begin() as conn:
            dev = conn.execute(
                select(_DEVICE.c.pop_challenge, _DEVICE.c.public_key).where(
                    _DEVICE.c.id == device_id
                )
            ).first()
        if dev is None:
            raise NotFoundError(f"device {device_id} does not exist")
        if dev.pop_challenge is None or dev.pop_challenge != challenge.hex():
            raise PolicyViolationError(
                f"device {device_id}: the proof of possession answers a challenge the line "
                "did not give out for it (replayed or forged)"
            )
        verify_proof_of_possession(bytes.fromhex(dev.public_key or ""), challenge, signature)
        return self.advance(
            device_id,
            Step.POP_VERIFIED,
            "device.pop_verified",
            payload={"challenge_sha256": hashlib.sha256(challenge).hexdigest()},
        )

    def record_written(self, device_id: int, fingerprint: str) -> Device:
        """Record that the device's own certificate (``fingerprint``) is on its chip."""
        if self.certificate(device_id).fingerprint_sha256 != fingerprint:
            raise PolicyViolationError(
                f"device {device_id}: the certificate written is not the one issued to it"
            )
        return self.advance(
            device_id,
            Step.CERT_WRITTEN,
            "device.cert_written",
            payload={"fingerprint_sha256": fingerprint},
        )

    def record_verified(self, device_id: int, read_back: bytes) -> Device:
        """The certificate read back from the chip: byte for byte the issued one, or the
        device fails; then queue the registry upload (:meth:`queue_upload`)."""
        cert = self.certificate(device_id)
        if read_back != cert.der:
            raise ChipError(
                f"device {device_id}: the certificate read back differs from the one written"
            )
        if self.registry is None:
            raise ConfigError("this ledger has no registry to queue uploads for")
        return self.queue_upload(
            device_id,
            registry=self.registry,
            registry_device_id=None,  # the chip serial, read in the upload's transaction
            fingerprint=cert.fingerprint_sha256,
        )

    # --- pre-provisioned parts (a batch in mode ``preprovisioned``) -------------------

    def batch_mode(self, device_id: int) -> tuple[BatchMode, str | None]:
        """The mode of the device's batch and the kind of part it takes."""
        with transaction(self.engine) as s:
            batch = s.get(Batch, get_device(s, device_id).batch_id)
            if batch is None:
                raise NotFoundError(f"device {device_id} has no batch")
            return BatchMode(batch.mode), batch.part

    def _verified(self, device_der: bytes, signer_der: bytes) -> VerifiedChain:
        """The chain verified here, on the line, against the root installed now."""
        if self.manufacturer_root_source is None:
            raise ConfigError("this ledger has no manufacturer root to verify parts against")
        try:
            return verify_chain(device_der, signer_der, self.manufacturer_root_source())
        except ManufacturerChainError as exc:
            raise PolicyViolationError(str(exc)) from None

    def _preprovisioned(self, s: Session, dev: Device) -> Batch:
        batch = s.get(Batch, dev.batch_id)
        if batch is None or batch.mode != BatchMode.PREPROVISIONED:
            raise PolicyViolationError(
                f"device {dev.id}: its batch is in mode `issue`; a part's own certificate "
                "is only accepted in a batch created with --mode preprovisioned"
            )
        return batch

    def record_factory_certificates(
        self, device_id: int, kind: str, device_der: bytes, signer_der: bytes
    ) -> Device:
        """The certificates a pre-provisioned part came with, verified again here against
        the trusted manufacturer root; the device's key is the certificate's (refused if
        another device has it: a cloned part). Records KEY_GENERATED (the key exists, made by
        the manufacturer) with ``device.factory_certificates``."""
        if kind not in FACTORY_KINDS:
            raise InvalidInputError(f"unknown factory certificate kind {kind[:20]!r}")
        with transaction(self.engine) as s:
            self._preprovisioned(s, get_device(s, device_id))
        verified = self._verified(device_der, signer_der)
        point = verified.public_point
        key_hash = hashlib.sha256(point).hexdigest()
        with transaction(self.engine) as s:
            dev = get_device(s, device_id)
            self._preprovisioned(s, dev)
            other = s.exec(
                select(Device.id).where(Device.public_key == point.hex(), Device.id != device_id)
            ).first()
            if other is None:
                existing = s.exec(
                    select(FactoryCertificate).where(FactoryCertificate.device_id == device_id)
                ).first()
                if existing is not None:
                    s.delete(existing)  # a part recorded earlier, replaced (a retried device)
                    s.flush()
                s.add(
                    FactoryCertificate(
                        device_id=device_id,
                        kind=kind,
                        serial_number=format(verified.device.serial_number, "x"),
                        fingerprint_sha256=verified.fingerprint_sha256,
                        der=verified.device_der,
                        signer_der=signer_der,
                        root_fingerprint_sha256=verified.root_fingerprint_sha256,
                        not_before=verified.device.not_valid_before_utc,
                        not_after=verified.device.not_valid_after_utc,
                    )
                )
                dev.public_key = point.hex()
                record_step(
                    s,
                    dev,
                    Step.KEY_GENERATED,
                    "device.factory_certificates",
                    actor=self.actor,
                    station_id=self.station_id,
                    socket=self.socket,
                    payload={
                        "kind": kind,
                        "fingerprint_sha256": verified.fingerprint_sha256,
                        "signer_fingerprint_sha256": hashlib.sha256(signer_der).hexdigest(),
                        "root_fingerprint_sha256": verified.root_fingerprint_sha256,
                        "public_key_sha256": key_hash,
                    },
                )
                return dev
        serial = self._key_reused(device_id, other, key_hash)
        raise PolicyViolationError(
            f"part {serial} carries key {key_hash[:16]}…, already recorded for device "
            f"{other}: a cloned part; remove it from the line"
        )

    def accept_factory_certificate(self, device_id: int) -> Device:
        """The part proved possession of its certificate's key (POP_VERIFIED): its chain is
        verified once more against the root installed now, then its certificate, as it is,
        is queued for the registry (CERT_VERIFIED). Nothing is issued by our CA."""
        with transaction(self.engine) as s:
            dev = get_device(s, device_id)
            self._preprovisioned(s, dev)
            row = s.exec(
                select(FactoryCertificate).where(FactoryCertificate.device_id == device_id)
            ).first()
        if dev.step != Step.POP_VERIFIED or row is None:
            raise PolicyViolationError(
                f"device {device_id}: a part's certificate is accepted only after its proof "
                "of possession"
            )
        verified = self._verified(row.der, row.signer_der)
        if verified.public_point.hex() != dev.public_key:
            raise PolicyViolationError(
                f"device {device_id}: the recorded key is not the certificate's"
            )
        if self.registry is None:
            raise ConfigError("this ledger has no registry to queue uploads for")
        return self.queue_upload(
            device_id,
            registry=self.registry,
            registry_device_id=registry_device_id(dev.chip_serial or ""),
            fingerprint=row.fingerprint_sha256,
        )

    def claim(self, device_id: int, holder: str, lease_s: float) -> bool:
        """Take the device for ``holder`` (a socket task) for ``lease_s`` seconds; False if
        another holder's lease is still running. One conditional UPDATE, so two messages for
        the same device can never both work on it; a holder that died leaves a lease that
        simply runs out."""
        now = utcnow()
        with self.engine.begin() as conn:  # one statement: no ORM session needed
            res = conn.execute(
                update(Device)
                .where(
                    col(Device.id) == device_id,
                    or_(
                        col(Device.claimed_until).is_(None),
                        col(Device.claimed_until) < now,
                        col(Device.claimed_by) == holder,
                    ),
                )
                .values(claimed_by=holder, claimed_until=now + timedelta(seconds=lease_s))
            )
            return bool(res.rowcount)

    def take_over(self, device_id: int, dead_holder: str, holder: str, lease_s: float) -> bool:
        """Take a claim whose holder is known to be dead (a socket task killed with its
        process), only if ``dead_holder`` still holds it."""
        with self.engine.begin() as conn:
            res = conn.execute(
                update(Device)
                .where(col(Device.id) == device_id, col(Device.claimed_by) == dead_holder)
                .values(claimed_by=holder, claimed_until=utcnow() + timedelta(seconds=lease_s))
            )
            return bool(res.rowcount)

    def release(self, device_id: int, holder: str) -> None:
        """Give the device back (only if ``holder`` still holds it)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(Device)
                .where(col(Device.id) == device_id, col(Device.claimed_by) == holder)
                .values(claimed_by=None, claimed_until=None)
            )

    def fail(
        self,
        device_id: int,
        error: str,
        action: PartAction = PartAction.REJECT,
        *,
        incident: str | None = None,
    ) -> None:
        """Record that the current attempt failed and what the operator does with the part;
        the step stays, so a retry resumes. ``incident`` (one of :data:`STATION_INCIDENTS`):
        what the station saw is an incident too, appended with the failure."""
        if incident is not None and incident not in STATION_INCIDENTS:
            raise InvalidInputError(f"unknown station incident {incident[:40]!r}")
        with transaction(self.engine) as s:
            dev = get_device(s, device_id)
            dev.error = error
            dev.action = action.value
            dev.updated_at = utcnow()
            s.add(dev)
            chain.append(
                s,
                "device.failed",
                actor=self.actor,
                station_id=self.station_id,
                socket=self.socket,
                batch_id=dev.batch_id,
                device_id=dev.id,
                chip_serial=dev.chip_serial,
                payload={"step": dev.step.name, "error": error, "part": action.value},
            )
            if incident is not None:
                chain.append(
                    s,
                    f"incident.{incident}",
                    actor=self.actor,
                    station_id=self.station_id,
                    socket=self.socket,
                    batch_id=dev.batch_id,
                    device_id=dev.id,
                    chip_serial=dev.chip_serial,
                    payload={"step": dev.step.name, "error": error},
                )

    def queue_upload(
        self,
        device_id: int,
        *,
        registry: str,
        registry_device_id: str | None,
        fingerprint: str,
    ) -> Device:
        """Mark the certificate verified on the chip and queue its registry upload, together:
        the pending upload lives in the database, so it survives a lost Redis message.
        ``registry_device_id`` None: the one of the device's recorded chip serial."""
        with transaction(self.engine) as s:
            dev = get_device(s, device_id)
            if registry_device_id is None:
                registry_device_id = _registry_id(dev.chip_serial or "")
            existing = s.exec(
                select(RegistryUpload).where(RegistryUpload.device_id == device_id)
            ).first()
            if existing is None:
                s.add(
                    RegistryUpload(
                        device_id=device_id,
                        registry_name=registry,
                        registry_device_id=registry_device_id,
                        fingerprint_sha256=fingerprint,
                    )
                )
            record_step(
                s,
                dev,
                Step.CERT_VERIFIED,
                "device.cert_verified",
                actor=self.actor,
                station_id=self.station_id,
                socket=self.socket,
                payload={"fingerprint_sha256": fingerprint, "upload_to": registry},
            )
            return dev

    def finish_upload(
        self, device_id: int, *, state: UploadState, num_id: str | None, error: str | None
    ) -> None:
        """Close the upload; on success the device is DONE and its batch may finish."""
        with transaction(self.engine) as s:
            dev = get_device(s, device_id)
            up = s.exec(select(RegistryUpload).where(RegistryUpload.device_id == device_id)).one()
            up.state = state
            up.num_id = num_id
            up.error = error
            up.attempts += 1
            up.updated_at = utcnow()
            s.add(up)
            if state is UploadState.DONE:
                record_step(
                    s,
                    dev,
                    Step.DONE,
                    "device.uploaded",
                    actor=self.actor,
                    station_id=None,
                    payload={
                        "registry": up.registry_name,
                        "registry_device_id": up.registry_device_id,
                        "num_id": num_id,
                    },
                )
                _finish_batch_if_complete(s, dev.batch_id, self.actor)
            else:
                dev.error = error
                s.add(dev)
                chain.append(
                    s,
                    "incident.upload_conflict",
                    actor=self.actor,
                    batch_id=dev.batch_id,
                    device_id=dev.id,
                    chip_serial=dev.chip_serial,
                    payload={
                        "registry": up.registry_name,
                        "registry_device_id": up.registry_device_id,
                        "detail": error or "",
                    },
                )

    def park_upload(self, device_id: int, error: str) -> None:
        """The registry stayed unreachable through the task's retries: the upload waits in
        the database (visible in `batch status`) for the periodic sync or `registry sync`.
        The chip is provisioned; only its registry entry is late."""
        with transaction(self.engine) as s:
            dev = get_device(s, device_id)
            up = s.exec(select(RegistryUpload).where(RegistryUpload.device_id == device_id)).one()
            if up.state is UploadState.PARKED:  # tried again by a sync: keep the latest answer
                up.attempts, up.error, up.updated_at = up.attempts + 1, error, utcnow()
                s.add(up)
                return
            if up.state is not UploadState.PENDING:
                return
            up.state, up.error, up.updated_at = UploadState.PARKED, error, utcnow()
            up.attempts += 1
            s.add(up)
            chain.append(
                s,
                "upload.parked",
                actor=self.actor,
                batch_id=dev.batch_id,
                device_id=dev.id,
                chip_serial=dev.chip_serial,
                payload={"registry": up.registry_name, "attempts": up.attempts, "error": error},
            )

    def refuse_upload(self, device_id: int, error: str) -> None:
        """The registry refused the request itself (not a conflict, not an outage): the
        upload is parked with the registry's answer for a person to read; a later sync
        tries again (the cause may be fixed on the registry's side by then)."""
        self.park_upload(device_id, error)

    def note_upload_retry(self, device_id: int, error: str) -> None:
        """An upload attempt failed transiently; it stays pending and is retried."""
        with transaction(self.engine) as s:
            up = s.exec(select(RegistryUpload).where(RegistryUpload.device_id == device_id)).one()
            up.attempts += 1
            up.error = error
            up.updated_at = utcnow()
            s.add(up)


def _finish_batch_if_complete(s: Session, batch_id: int, actor: str) -> None:
    batch = s.get(Batch, batch_id)
    # Only a batch still under way finishes by itself; a closed or cancelled one keeps its
    # state while its last uploads land.
    if batch is None or batch.state not in (BatchState.RUNNING, BatchState.PAUSED):
        return
    remaining = s.exec(
        select(Device.id).where(Device.batch_id == batch_id, Device.step != Step.DONE)
    ).first()
    if remaining is None:
        batch.state = BatchState.FINISHED
        batch.finished_at = utcnow()
        s.add(batch)
        chain.append(
            s,
            "batch.finished",
            actor=actor,
            station_id=batch.station_id,
            batch_id=batch_id,
            payload={"count": batch.count},
        )
