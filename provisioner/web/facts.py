"""What the operator's pages read that no other module offers: the stations and their
sockets as a person at the jig needs them, the registry backlog, the audit checkpoint's
age, the signer's latency and a batch's throughput minute by minute.

Every function here is a read (a few aggregate queries or the metrics files), cheap enough
to run once a second for a live page whatever the size of the line's history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, or_
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.batches.views import BatchReport, summary
from provisioner.cli.view import part_action_text
from provisioner.db.models import (
    AuditCheckpoint,
    AuditEvent,
    Batch,
    BatchState,
    Device,
    RegistryUpload,
    ServiceHealth,
    SocketState,
    Station,
    StationIdentity,
    UploadState,
    aware,
    utcnow,
)
from provisioner.settings import Settings

VERIFIED_EVENT = "device.cert_verified"  # appended when a chip's certificate is read back
MAX_CHART_POINTS = 120


# --- stations and sockets ----------------------------------------------------------------


@dataclass(frozen=True)
class SocketView:
    """One socket as the jig's operator reads it: what it does, and for a failed part why
    and what to do with it."""

    socket: int
    state: str  # busy, idle, insert_chip, failed, empty; "unknown": never reported
    device_id: int | None = None
    chip_serial: str | None = None
    detail: str | None = None
    reason: str | None = None  # failed: the device's error
    action: str | None = None  # failed: what to do with the part, in the floor's words
    updated_at: datetime | None = None

    @property
    def label(self) -> str:
        return {
            "busy": "working",
            "idle": "idle",
            "insert_chip": "insert chip",
            "failed": "failed",
            "empty": "empty",
        }.get(self.state, "no report yet")


@dataclass(frozen=True)
class StationView:
    id: str
    configured: bool  # in this server's settings
    enrolled: bool  # holds a current (not revoked, not expired) station certificate
    sockets: tuple[SocketView, ...]
    batches: tuple[tuple[int, str], ...]  # (id, state) of its batches not ended


def sockets_of(
    engine: Engine, station_id: str, expected: int | None = None
) -> tuple[SocketView, ...]:
    """The station's sockets (those it reported, plus up to ``expected`` never reported)."""
    with Session(engine) as s:
        return _sockets(s, station_id, expected)


def _sockets(s: Session, station_id: str, expected: int | None) -> tuple[SocketView, ...]:
    rows = s.exec(
        select(SocketState, Device)
        .join(Device, col(Device.id) == SocketState.device_id, isouter=True)
        .where(SocketState.station_id == station_id)
        .order_by(col(SocketState.socket))
    ).all()
    seen: dict[int, SocketView] = {}
    for row, dev in rows:
        reason = action = None
        if row.state == "failed":
            if dev is not None and dev.error is not None:
                reason, action = dev.error, part_action_text(dev.action)
            else:  # the device was retried since, or the row names none: its own words
                reason = row.detail
        seen[row.socket] = SocketView(
            socket=row.socket,
            state=row.state,
            device_id=row.device_id,
            chip_serial=row.chip_serial,
            detail=row.detail,
            reason=reason,
            action=action,
            updated_at=aware(row.updated_at),
        )
    for n in range(expected or 0):
        seen.setdefault(n, SocketView(socket=n, state="unknown"))
    return tuple(seen[k] for k in sorted(seen))


def stations(engine: Engine, settings: Settings) -> list[StationView]:
    """Every station the line knows: configured here, in the station table (a batch or an
    enrollment made it) or holding a certificate; with its sockets and open batches."""
    now = utcnow()
    with Session(engine) as s:
        ids = set(settings.stations)
        ids.update(s.exec(select(Station.id)).all())
        ids.update(s.exec(select(StationIdentity.station_id)).all())
        current = set(
            s.exec(
                select(StationIdentity.station_id).where(
                    col(StationIdentity.revoked_at).is_(None),
                    col(StationIdentity.not_after) > now,
                )
            ).all()
        )
        open_batches: dict[str, list[tuple[int, str]]] = {}
        for bid, sid, state in s.exec(
            select(Batch.id, Batch.station_id, Batch.state)
            .where(
                col(Batch.state).in_([BatchState.CREATED, BatchState.RUNNING, BatchState.PAUSED])
            )
            .order_by(col(Batch.id))
        ).all():
            if bid is not None:
                open_batches.setdefault(sid, []).append((bid, BatchState(state).value))
        out = []
        for sid in sorted(ids):
            conf = settings.stations.get(sid)
            out.append(
                StationView(
                    id=sid,
                    configured=conf is not None,
                    enrolled=sid in current,
                    sockets=_sockets(s, sid, conf.sockets if conf else None),
                    batches=tuple(open_batches.get(sid, ())),
                )
            )
        return out


# --- services --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    name: str
    up: bool
    since: datetime
    checked_at: datetime
    detail: str | None


def service(engine: Engine, name: str) -> Health | None:
    """A service as the supervisor's health monitor last saw it (None: never checked)."""
    with Session(engine) as s:
        h = s.get(ServiceHealth, name)
        if h is None:
            return None
        return Health(h.name, h.up, aware(h.since), aware(h.checked_at), h.detail)


def signing_latency_s(settings: Settings) -> float | None:
    """The signer's mean time to issue a certificate since the services started, summed
    over every process's metrics file (None without the metrics directory or a signature).
    """
    from provisioner.metrics.multiproc import directory

    path = directory(settings)
    if not path.is_dir() or not any(path.glob("*.db")):
        return None
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from provisioner.metrics.defs import SIGNING_SECONDS

    (family,) = SIGNING_SECONDS.describe()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    total = count = 0.0
    for metric in registry.collect():
        if metric.name != family.name:
            continue
        for sample in metric.samples:
            if sample.name == family.name + "_sum":
                total += sample.value
            elif sample.name == family.name + "_count":
                count += sample.value
    return total / count if count else None


# --- the registry backlog ----------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """Registry uploads not done: pending (of which retrying after a failed attempt, and of
    those throttled by the registry), parked (the task gave up for now) and conflict (the
    registry holds another certificate: a person decides)."""

    pending: int = 0
    retrying: int = 0
    throttled: int = 0
    parked: int = 0
    conflict: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.parked + self.conflict


_THROTTLED = ("%429%", "%throttl%", "%RESOURCE_EXHAUSTED%", "%rate limit%")


def upload_backlog(engine: Engine) -> Backlog:
    with Session(engine) as s:
        by_state = {
            UploadState(state): int(n)
            for state, n in s.exec(
                select(RegistryUpload.state, func.count())
                .where(col(RegistryUpload.state) != UploadState.DONE)
                .group_by(col(RegistryUpload.state))
            ).all()
        }
        pending = col(RegistryUpload.state) == UploadState.PENDING
        retrying = s.exec(
            select(func.count())
            .select_from(RegistryUpload)
            .where(pending, col(RegistryUpload.attempts) > 0)
        ).one()
        throttled = s.exec(
            select(func.count())
            .select_from(RegistryUpload)
            .where(
                pending,
                col(RegistryUpload.attempts) > 0,
                or_(*(col(RegistryUpload.error).ilike(p) for p in _THROTTLED)),
            )
        ).one()
    return Backlog(
        pending=by_state.get(UploadState.PENDING, 0),
        retrying=int(retrying),
        throttled=int(throttled),
        parked=by_state.get(UploadState.PARKED, 0),
        conflict=by_state.get(UploadState.CONFLICT, 0),
    )


# --- the audit checkpoint ----------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    size: int  # events it covers
    created_at: datetime
    reason: str


def latest_checkpoint(engine: Engine) -> Checkpoint | None:
    """The newest signed checkpoint of the audit log (None: none signed yet)."""
    with Session(engine) as s:
        row = s.exec(select(AuditCheckpoint).order_by(col(AuditCheckpoint.size).desc())).first()
    if row is None:
        return None
    created = datetime.fromisoformat(row.created_at.replace("Z", "+00:00"))
    return Checkpoint(row.size, aware(created), row.reason)


# --- batches -----------------------------------------------------------------------------


def recent_batches(engine: Engine, limit: int = 50) -> list[BatchReport]:
    """The newest ``limit`` batches' summaries (a summary is a handful of queries, so the
    list does not grow with the line's history)."""
    with Session(engine) as s:
        ids = s.exec(select(Batch.id).order_by(col(Batch.id).desc()).limit(limit)).all()
    return [summary(engine, i, live=False) for i in ids if i is not None]


def yield_pct(rep: BatchReport) -> float | None:
    """Good parts out of the parts that were tried to the end: done / (done + failed)."""
    tried = rep.done + rep.failed
    return 100.0 * rep.done / tried if tried else None


@dataclass(frozen=True)
class Series:
    """Devices verified on their chip per minute, from the batch's start: ``values[i]`` is
    the mean per minute over ``[start + i*step, start + (i+1)*step)``."""

    start: datetime
    step_min: int
    values: tuple[float, ...]

    @property
    def peak(self) -> float:
        return max(self.values, default=0.0)


def verified_per_minute(
    engine: Engine, batch_id: int, *, max_points: int = MAX_CHART_POINTS
) -> Series | None:
    """Counted in the database by the minute of each ``device.cert_verified`` audit event
    (one row per minute comes back, however large the batch); merged into wider buckets
    when the run is longer than ``max_points`` minutes. None before the batch starts."""
    minute = func.substr(AuditEvent.ts, 1, 16)  # "YYYY-MM-DDTHH:MM"
    with Session(engine) as s:
        batch = s.get(Batch, batch_id)
        if batch is None or batch.started_at is None:
            return None
        rows = s.exec(
            select(minute, func.count())
            .where(AuditEvent.batch_id == batch_id, AuditEvent.event_type == VERIFIED_EVENT)
            .group_by(minute)
        ).all()
        started = aware(batch.started_at).replace(second=0, microsecond=0)
        end = aware(batch.finished_at) if batch.finished_at else utcnow()
    counts: dict[int, int] = {}
    for text, n in rows:
        at = datetime.fromisoformat(str(text)).replace(tzinfo=UTC)
        i = max(0, int((at - started).total_seconds() // 60))
        counts[i] = counts.get(i, 0) + int(n)
    minutes = max(int((end - started).total_seconds() // 60) + 1, max(counts, default=0) + 1)
    step = max(1, math.ceil(minutes / max_points))
    buckets = math.ceil(minutes / step)
    values = [0.0] * buckets
    for i, n in counts.items():
        values[i // step] += n / step
    return Series(started, step, tuple(values))
