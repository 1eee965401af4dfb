"""Batches: what an operator creates, starts and watches.

A batch reserves ``count`` device records on one station. Starting it hands each unfinished
device to the station's queue; the workers do the rest and the database says how far each
device got.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from provisioner.audit import chain
from provisioner.db.engine import transaction
from provisioner.db.models import (
    Batch,
    BatchState,
    Certificate,
    Device,
    RegistryUpload,
    Station,
    Step,
    UploadState,
    utcnow,
)
from provisioner.errors import InvalidInputError, NotFoundError
from provisioner.settings import Settings

MAX_BATCH = 100_000


@dataclass(frozen=True)
class DeviceRow:
    """One line of a batch report."""

    device_id: int
    position: int
    step: str
    chip_serial: str | None
    fingerprint_sha256: str | None
    registry_device_id: str | None
    num_id: str | None
    error: str | None
    upload: str | None = None  # pending, parked, done, conflict (None: not queued yet)


@dataclass(frozen=True)
class BatchReport:
    id: int
    station_id: str
    count: int
    state: str
    created_at: datetime
    finished_at: datetime | None
    steps: dict[str, int] = field(default_factory=dict)
    done: int = 0
    failed: int = 0
    uploads_pending: int = 0
    uploads_parked: int = 0
    devices: tuple[DeviceRow, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "station": self.station_id,
            "count": self.count,
            "state": self.state,
            "created_at": self.created_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "steps": self.steps,
            "done": self.done,
            "failed": self.failed,
            "uploads_pending": self.uploads_pending,
            "uploads_parked": self.uploads_parked,
            "devices": [d.__dict__ for d in self.devices],
        }


def validate_request(
    settings: Settings, *, station_id: str, count: int, quota: int | None = None
) -> None:
    """Reject a bad count or an unknown station before anything else is looked at."""
    if count <= 0 or count > MAX_BATCH:
        raise InvalidInputError(f"--count must be between 1 and {MAX_BATCH}, got {count}")
    if quota is not None and not 1 <= quota <= count:
        raise InvalidInputError(f"--quota must be between 1 and the count ({count}), got {quota}")
    settings.station(station_id)  # NotFoundError for an unknown station


def create_batch(
    engine: Engine,
    settings: Settings,
    *,
    station_id: str,
    count: int,
    actor: str,
    quota: int | None = None,
) -> int:
    """Create a batch of ``count`` devices on a configured station; returns its id.

    ``quota`` caps the certificates the signer issues for it (default: ``count``)."""
    validate_request(settings, station_id=station_id, count=count, quota=quota)
    with transaction(engine) as s:
        if s.get(Station, station_id) is None:
            s.add(Station(id=station_id))
            s.flush()
        batch = Batch(station_id=station_id, count=count, quota=quota, created_by=actor)
        s.add(batch)
        s.flush()
        assert batch.id is not None
        s.add_all(Device(batch_id=batch.id, position=i) for i in range(count))
        chain.append(
            s,
            "batch.created",
            actor=actor,
            station_id=station_id,
            batch_id=batch.id,
            payload={"count": count, "quota": quota if quota is not None else count},
        )
        return batch.id


def get_batch(engine: Engine, batch_id: int) -> Batch:
    with transaction(engine) as s:
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise NotFoundError(f"batch {batch_id} does not exist (see `provisioner batch list`)")
        return batch


def mark_started(engine: Engine, batch_id: int, *, actor: str) -> list[int]:
    """Mark the batch running and return the ids of devices that still need the station.

    Failed devices get their error cleared so they are retried from their last step."""
    with transaction(engine) as s:
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise NotFoundError(f"batch {batch_id} does not exist (see `provisioner batch list`)")
        unfinished = s.exec(
            select(Device)
            .where(Device.batch_id == batch_id, col(Device.step) < Step.DONE)
            .order_by(col(Device.position))
        ).all()
        for d in unfinished:
            d.error = None
            s.add(d)
        devices = [d for d in unfinished if d.step < Step.CERT_VERIFIED]
        if batch.state is BatchState.CREATED or devices:
            batch.state = BatchState.RUNNING if devices else batch.state
            batch.started_at = batch.started_at or utcnow()
            s.add(batch)
        chain.append(
            s,
            "batch.started",
            actor=actor,
            station_id=batch.station_id,
            batch_id=batch_id,
            payload={"devices_queued": len(devices)},
        )
        return [d.id for d in devices if d.id is not None]


def pending_uploads(engine: Engine, batch_id: int) -> list[int]:
    """Devices of the batch whose registry upload is pending or parked."""
    with transaction(engine) as s:
        rows = s.exec(
            select(RegistryUpload.device_id)
            .join(Device, col(Device.id) == RegistryUpload.device_id)
            .where(
                Device.batch_id == batch_id,
                col(RegistryUpload.state).in_([UploadState.PENDING, UploadState.PARKED]),
            )
        ).all()
        return list(rows)


def report(engine: Engine, batch_id: int, *, with_devices: bool = True) -> BatchReport:
    with transaction(engine) as s:
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise NotFoundError(f"batch {batch_id} does not exist (see `provisioner batch list`)")
        rows = s.exec(
            select(Device, Certificate, RegistryUpload)
            .join(Certificate, col(Certificate.device_id) == Device.id, isouter=True)
            .join(RegistryUpload, col(RegistryUpload.device_id) == Device.id, isouter=True)
            .where(Device.batch_id == batch_id)
            .order_by(col(Device.position))
        ).all()
    steps: Counter[str] = Counter()
    devices = []
    failed = pending = parked = 0
    for dev, cert, up in rows:
        steps[dev.step.name] += 1
        failed += dev.error is not None
        pending += up is not None and up.state is UploadState.PENDING
        parked += up is not None and up.state is UploadState.PARKED
        if with_devices:
            devices.append(
                DeviceRow(
                    device_id=dev.id or 0,
                    position=dev.position,
                    step=dev.step.name,
                    chip_serial=dev.chip_serial,
                    fingerprint_sha256=cert.fingerprint_sha256 if cert else None,
                    registry_device_id=up.registry_device_id if up else None,
                    num_id=up.num_id if up else None,
                    error=dev.error,
                    upload=up.state.value if up else None,
                )
            )
    return BatchReport(
        id=batch_id,
        station_id=batch.station_id,
        count=batch.count,
        state=batch.state.value,
        created_at=batch.created_at,
        finished_at=batch.finished_at,
        steps=dict(steps),
        done=steps.get(Step.DONE.name, 0),
        failed=failed,
        uploads_pending=pending,
        uploads_parked=parked,
        devices=tuple(devices),
    )


def list_batches(engine: Engine) -> list[BatchReport]:
    with transaction(engine) as s:
        ids = s.exec(select(Batch.id).order_by(col(Batch.id))).all()
    return [report(engine, i, with_devices=False) for i in ids if i is not None]
