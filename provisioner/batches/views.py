"""What operators see of a batch: a summary computed in the database, and pages of devices.

The summary is a handful of aggregate queries (counts per step, failures grouped by reason,
uploads by state, revocations, throughput over the last minutes), so it costs the same on a
16-device batch and on a 100,000-device one; devices are listed only when asked, a page at a
time, optionally only the failed ones or those at one step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner import socket_state
from provisioner.batches.lifecycle import count_devices
from provisioner.db.engine import transaction
from provisioner.db.models import (
    Batch,
    BatchState,
    Certificate,
    Device,
    RegistryUpload,
    Revocation,
    ServiceHealth,
    SocketState,
    Step,
    UploadState,
    aware,
    utcnow,
)
from provisioner.errors import InvalidInputError, NotFoundError

RATE_WINDOW = timedelta(minutes=10)  # throughput is measured over the last ten minutes
MAX_PAGE = 1000


@dataclass(frozen=True)
class DeviceRow:
    """One line of a batch's device list."""

    device_id: int
    position: int
    step: str
    chip_serial: str | None
    fingerprint_sha256: str | None
    registry_device_id: str | None
    num_id: str | None
    error: str | None
    upload: str | None = None  # pending, parked, done, conflict (None: not queued yet)
    action: str | None = None  # what to do with the part of a failed device (PartAction)
    revoked: bool = False
    cancelled: bool = False
    socket: int | None = None

    @property
    def status(self) -> str:
        """One word for the device: revoked, cancelled, failed, done or its step."""
        if self.revoked:
            return "revoked"
        if self.cancelled:
            return "cancelled"
        if self.error is not None:
            return "failed"
        return self.step.lower()


@dataclass(frozen=True)
class FailureGroup:
    """Failed devices sharing a reason, with what to do with their parts."""

    reason: str
    action: str | None
    count: int


@dataclass(frozen=True)
class DeviceQuery:
    """Which devices to list: all, only failed, or those at one step; a page of them."""

    failed: bool = False
    step: Step | None = None
    offset: int = 0
    limit: int | None = 100

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise InvalidInputError(f"offset must be >= 0, got {self.offset}")
        if self.limit is not None and not 1 <= self.limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}, got {self.limit}")

    @staticmethod
    def parse_step(name: str | None) -> Step | None:
        if name is None:
            return None
        try:
            return Step[name.strip().upper()]
        except KeyError:
            known = ", ".join(s.name.lower() for s in Step)
            raise InvalidInputError(f"unknown step {name[:40]!r}: one of {known}") from None


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
    uploads_conflict: int = 0
    revoked: int = 0
    cancelled: int = 0
    in_flight: int = 0
    quota: int = 0
    issued: int = 0
    started_at: datetime | None = None
    per_hour: float | None = None  # devices verified on their chip per hour, last 10 min
    eta_s: float | None = None
    failures: tuple[FailureGroup, ...] = ()
    sockets: tuple[dict[str, object], ...] = ()
    services: tuple[dict[str, object], ...] = ()
    devices: tuple[DeviceRow, ...] = ()
    mode: str = "issue"  # BatchMode: issue, or preprovisioned (``part``'s own certificates)
    part: str | None = None

    @property
    def remaining(self) -> int:
        """Devices that still need a station (neither done, failed, cancelled nor waiting
        for their registry upload)."""
        verified = sum(n for k, n in self.steps.items() if Step[k] >= Step.CERT_VERIFIED)
        return max(0, self.count - verified - self.failed - self.cancelled)

    @property
    def settled(self) -> bool:
        """Nothing more happens without an operator (or the periodic sync of parked
        uploads): every device is done, failed, released or parked, none in a socket and no
        upload under way."""
        return (
            BatchState(self.state).ended
            or self.state == BatchState.PAUSED
            or (
                self.state == BatchState.RUNNING
                and self.remaining == 0
                and self.in_flight == 0
                and self.uploads_pending == 0
            )
        )

    def as_json(self) -> dict[str, object]:
        out = {
            "id": self.id,
            "station": self.station_id,
            "count": self.count,
            "state": self.state,
            "mode": self.mode,
            "part": self.part,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "steps": self.steps,
            "done": self.done,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "revoked": self.revoked,
            "in_flight": self.in_flight,
            "remaining": self.remaining,
            "quota": self.quota,
            "issued": self.issued,
            "uploads_pending": self.uploads_pending,
            "uploads_parked": self.uploads_parked,
            "uploads_conflict": self.uploads_conflict,
            "per_hour": self.per_hour,
            "eta_s": self.eta_s,
            "failures": [asdict(f) for f in self.failures],
            "sockets": list(self.sockets),
            "services": list(self.services),
        }
        if self.devices:
            out["devices"] = [asdict(d) | {"status": d.status} for d in self.devices]
        return out


def _batch(s: Session, batch_id: int) -> Batch:
    batch = s.get(Batch, batch_id)
    if batch is None:
        raise NotFoundError(f"batch {batch_id} does not exist (see `provisioner batch list`)")
    return batch


def summary(engine: Engine, batch_id: int, *, live: bool = True) -> BatchReport:
    """The batch in numbers; ``live`` adds its station's sockets and the services' health."""
    with transaction(engine) as s:
        return _summary(s, _batch(s, batch_id), live=live)


def _summary(s: Session, batch: Batch, *, live: bool) -> BatchReport:
    assert batch.id is not None
    bid, now = batch.id, utcnow()
    of_batch = Device.batch_id == bid
    steps = {
        Step(step).name: int(n)
        for step, n in s.exec(
            select(Device.step, func.count()).where(of_batch).group_by(col(Device.step))
        ).all()
    }
    failures = tuple(
        FailureGroup(reason or "", action, int(n))
        for reason, action, n in s.exec(
            select(Device.error, Device.action, func.count())
            .where(of_batch, col(Device.error).is_not(None), col(Device.step) < Step.DONE)
            .group_by(col(Device.error), col(Device.action))
            .order_by(func.count().desc())
            .limit(20)
        ).all()
    )
    failed = count_devices(
        s, of_batch, col(Device.error).is_not(None), col(Device.step) < Step.DONE
    )
    cancelled = count_devices(s, of_batch, col(Device.cancelled_at).is_not(None))
    in_flight = count_devices(s, of_batch, col(Device.claimed_until) >= now)
    uploads = {
        state: int(n)
        for state, n in s.exec(
            select(RegistryUpload.state, func.count())
            .join(Device, col(Device.id) == RegistryUpload.device_id)
            .where(of_batch)
            .group_by(col(RegistryUpload.state))
        ).all()
    }
    revoked = int(
        s.exec(
            select(func.count())
            .select_from(Revocation)
            .join(Certificate, col(Certificate.id) == Revocation.certificate_id)
            .join(Device, col(Device.id) == Certificate.device_id)
            .where(of_batch)
        ).one()
    )
    recent = count_devices(
        s,
        of_batch,
        col(Device.step) >= Step.CERT_VERIFIED,
        col(Device.updated_at) >= now - RATE_WINDOW,
    )
    rep = BatchReport(
        id=bid,
        station_id=batch.station_id,
        count=batch.count,
        state=batch.state.value,
        mode=batch.mode,
        part=batch.part,
        created_at=batch.created_at,
        finished_at=batch.finished_at,
        started_at=batch.started_at,
        steps=steps,
        done=steps.get(Step.DONE.name, 0),
        failed=failed,
        cancelled=cancelled,
        in_flight=in_flight,
        revoked=revoked,
        quota=batch.quota if batch.quota is not None else batch.count,
        issued=batch.issued,
        uploads_pending=uploads.get(UploadState.PENDING, 0),
        uploads_parked=uploads.get(UploadState.PARKED, 0),
        uploads_conflict=uploads.get(UploadState.CONFLICT, 0),
        failures=failures,
    )
    verified = sum(n for k, n in steps.items() if Step[k] >= Step.CERT_VERIFIED)
    per_hour = _per_hour(batch, recent, verified, now)
    eta = rep.remaining / per_hour * 3600 if per_hour and batch.state == "running" else None
    live_parts = _live(s, batch.station_id) if live else ((), ())
    return replace(rep, per_hour=per_hour, eta_s=eta, sockets=live_parts[0], services=live_parts[1])


def _per_hour(batch: Batch, recent: int, verified: int, now: datetime) -> float | None:
    """Devices verified on their chip per hour: over the last ten minutes (or since the
    start, if more recent) while the batch is under way; over its whole run once it ended."""
    if batch.started_at is None:
        return None
    started = aware(batch.started_at)
    if batch.state.ended and batch.finished_at is not None:
        run = max(aware(batch.finished_at) - started, timedelta(seconds=1))
        return verified * 3600 / run.total_seconds() if verified else None
    if not recent:
        return None
    window = min(RATE_WINDOW, max(now - started, timedelta(seconds=1)))
    return recent * 3600 / window.total_seconds()


def _live(
    s: Session, station_id: str
) -> tuple[tuple[dict[str, object], ...], tuple[dict[str, object], ...]]:
    sockets: tuple[dict[str, object], ...] = tuple(
        socket_state.as_json(r)
        for r in s.exec(
            select(SocketState)
            .where(SocketState.station_id == station_id)
            .order_by(col(SocketState.socket))
        ).all()
    )
    services: tuple[dict[str, object], ...] = tuple(
        {
            "name": h.name,
            "up": h.up,
            "since": h.since.isoformat(),
            "checked_at": h.checked_at.isoformat(),
            "detail": h.detail,
        }
        for h in s.exec(select(ServiceHealth).order_by(col(ServiceHealth.name))).all()
    )
    return sockets, services


def device_page(engine: Engine, batch_id: int, query: DeviceQuery) -> tuple[DeviceRow, ...]:
    """The devices ``query`` selects, in position order, one page."""
    with transaction(engine) as s:
        _batch(s, batch_id)
        return _device_page(s, batch_id, query)


def _device_page(s: Session, batch_id: int, query: DeviceQuery) -> tuple[DeviceRow, ...]:
    stmt = (
        select(Device, Certificate, RegistryUpload, Revocation.id)
        .join(Certificate, col(Certificate.device_id) == Device.id, isouter=True)
        .join(RegistryUpload, col(RegistryUpload.device_id) == Device.id, isouter=True)
        .join(Revocation, col(Revocation.certificate_id) == Certificate.id, isouter=True)
        .where(Device.batch_id == batch_id)
    )
    if query.failed:
        stmt = stmt.where(col(Device.error).is_not(None), col(Device.step) < Step.DONE)
    if query.step is not None:
        stmt = stmt.where(Device.step == query.step)
    stmt = stmt.order_by(col(Device.position)).offset(query.offset)
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    return tuple(
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
            action=dev.action,
            revoked=revocation is not None,
            cancelled=dev.cancelled_at is not None,
            socket=dev.socket,
        )
        for dev, cert, up, revocation in s.exec(stmt).all()
    )


def report(
    engine: Engine, batch_id: int, query: DeviceQuery | None = DeviceQuery(limit=None)
) -> BatchReport:
    """The summary plus the devices ``query`` selects (every device by default; pass
    ``query=None`` for the summary alone)."""
    with transaction(engine) as s:
        rep = _summary(s, _batch(s, batch_id), live=True)
        if query is None:
            return rep
        return replace(rep, devices=_device_page(s, batch_id, query))


def list_batches(engine: Engine) -> list[BatchReport]:
    with transaction(engine) as s:
        rows = s.exec(select(Batch).order_by(col(Batch.id))).all()
        return [_summary(s, b, live=False) for b in rows]
