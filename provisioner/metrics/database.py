"""What the line's database knows, read at scrape time: the upload backlog, the audit trail,
the batches under way, the sockets and the services' health.

These are states, not events: no process counts them, so they cannot drift from the
records (a restarted worker, a wiped metrics directory or a `registry sync` run from the
CLI change nothing here). Each scrape runs a handful of grouped queries on indexed columns;
a database that cannot be read gives ``provisioner_database_up 0`` rather than a failed
scrape, so the other metrics still arrive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from provisioner.db.models import (
    AuditCheckpoint,
    AuditEvent,
    Batch,
    BatchState,
    Device,
    RegistryUpload,
    ServiceHealth,
    SocketState,
    Step,
    UploadState,
    aware,
)
from provisioner.metrics.record import step_label

log = logging.getLogger("provisioner.metrics")

BACKLOG_STATES = (UploadState.PENDING, UploadState.PARKED, UploadState.CONFLICT)
SOCKET_STATES = ("busy", "idle", "insert_chip", "failed", "empty")
_UNDER_WAY = (BatchState.CREATED, BatchState.RUNNING, BatchState.PAUSED)


class DatabaseCollector(Collector):
    """A prometheus_client collector over the line's database (register it on the
    per-scrape registry; ``now`` is for tests)."""

    def __init__(self, engine: Engine, now: type[datetime] = datetime) -> None:
        self.engine = engine
        self._now = now

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "provisioner_database_up",
            "1 when this scrape could read the line's database (the metrics below are "
            "missing otherwise).",
        )
        try:
            with Session(self.engine) as s:
                families = [
                    *self._backlog(s),
                    *self._audit(s),
                    *self._batches(s),
                    *self._sockets(s),
                    *self._services(s),
                ]
        except SQLAlchemyError as exc:
            log.warning("metrics: the database could not be read: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    # --- the families ------------------------------------------------------------------

    def _backlog(self, s: Session) -> list[Metric]:
        g = GaugeMetricFamily(
            "provisioner_upload_backlog",
            "Registry uploads not done, by state: pending (a task is trying), parked "
            "(waiting for the periodic sync / `registry sync`), conflict (the registry holds "
            "another certificate: a person decides).",
            labels=["state"],
        )
        counts = dict(
            s.exec(
                select(RegistryUpload.state, func.count())
                .where(col(RegistryUpload.state).in_(BACKLOG_STATES))
                .group_by(col(RegistryUpload.state))
            ).all()
        )
        for state in BACKLOG_STATES:
            g.add_metric([state.value], counts.get(state, 0))
        return [g]

    def _audit(self, s: Session) -> list[Metric]:
        events = s.exec(select(func.max(AuditEvent.seq))).one() or 0
        total = CounterMetricFamily(
            "provisioner_audit_events", "Events in the audit trail (its length)."
        )
        total.add_metric([], events)
        last = s.exec(
            select(AuditCheckpoint).order_by(col(AuditCheckpoint.size).desc()).limit(1)
        ).first()
        unchecked = GaugeMetricFamily(
            "provisioner_audit_events_since_checkpoint",
            "Audit events not yet covered by a signed checkpoint.",
        )
        unchecked.add_metric([], events - (last.size if last is not None else 0))
        out: list[Metric] = [total, unchecked]
        if last is not None:
            age = GaugeMetricFamily(
                "provisioner_audit_checkpoint_age_seconds",
                "Seconds since the latest signed audit checkpoint (absent before the first).",
            )
            created = datetime.fromisoformat(last.created_at.replace("Z", "+00:00"))
            age.add_metric([], max(0.0, (self._now.now(UTC) - created).total_seconds()))
            out.append(age)
        return out

    def _batches(self, s: Session) -> list[Metric]:
        devices = GaugeMetricFamily(
            "provisioner_batch_devices",
            "Devices of each batch not ended (created, running, paused) by their last "
            "completed step (pending: none yet).",
            labels=["batch", "station", "step"],
        )
        failed = GaugeMetricFamily(
            "provisioner_batch_failed_devices",
            "Devices of each batch not ended that failed and wait for `batch retry`.",
            labels=["batch", "station"],
        )
        per_socket = GaugeMetricFamily(
            "provisioner_socket_failed_devices",
            "Failed devices of the batches not ended, by the socket they failed in: a "
            "socket with several is worth a look (contacts, seating, a bad jig).",
            labels=["station", "socket"],
        )
        batches: dict[int, str] = {
            b.id: b.station_id
            for b in s.exec(select(Batch).where(col(Batch.state).in_(_UNDER_WAY))).all()
            if b.id is not None
        }
        if not batches:
            return [devices, failed, per_socket]
        rows = s.exec(
            select(Device.batch_id, Device.step, func.count())
            .where(col(Device.batch_id).in_(list(batches)))
            .group_by(col(Device.batch_id), col(Device.step))
        ).all()
        by_step = {(batch, Step(step)): n for batch, step, n in rows}
        fails = s.exec(
            select(Device.batch_id, Device.socket, func.count())
            .where(col(Device.batch_id).in_(list(batches)), col(Device.error).is_not(None))
            .group_by(col(Device.batch_id), col(Device.socket))
        ).all()
        failed_by_batch: dict[int, int] = {}
        # Every socket of a station with a batch under way, failed devices or not: a
        # series that is there at 0 before the first failure, for rates and alerts.
        stations = set(batches.values())
        by_socket: dict[tuple[str, str], int] = {
            (station, str(socket_no)): 0
            for station, socket_no in s.exec(
                select(SocketState.station_id, SocketState.socket)
            ).all()
            if station in stations
        }
        for batch, socket_no, n in fails:
            failed_by_batch[batch] = failed_by_batch.get(batch, 0) + n
            key = (batches[batch], "" if socket_no is None else str(socket_no))
            by_socket[key] = by_socket.get(key, 0) + n
        for batch, station in sorted(batches.items()):
            for step in Step:
                devices.add_metric(
                    [str(batch), station, step_label(step)], by_step.get((batch, step), 0)
                )
            failed.add_metric([str(batch), station], failed_by_batch.get(batch, 0))
        for (station, socket_label), n in sorted(by_socket.items()):
            per_socket.add_metric([station, socket_label], n)
        return [devices, failed, per_socket]

    def _sockets(self, s: Session) -> list[Metric]:
        g = GaugeMetricFamily(
            "provisioner_sockets",
            "Sockets by station and what they are doing now (socket_state): busy, idle, "
            "insert_chip (a device waits for a part), failed, empty.",
            labels=["station", "state"],
        )
        rows = s.exec(
            select(SocketState.station_id, SocketState.state, func.count()).group_by(
                col(SocketState.station_id), col(SocketState.state)
            )
        ).all()
        counts = {(st, state): n for st, state, n in rows}
        for station in sorted({st for st, _ in counts}):
            for state in sorted({*SOCKET_STATES, *(x for y, x in counts if y == station)}):
                g.add_metric([station, state], counts.get((station, state), 0))
        return [g]

    def _services(self, s: Session) -> list[Metric]:
        g = GaugeMetricFamily(
            "provisioner_service_up",
            "Whether a service the line depends on answered the supervisor's health "
            "monitor at its last check (1) or not (0): signer, registry.",
            labels=["service"],
        )
        age = GaugeMetricFamily(
            "provisioner_service_checked_age_seconds",
            "Seconds since the health monitor last checked the service (a stale value "
            "means the supervisor's monitor is not running).",
            labels=["service"],
        )
        now = self._now.now(UTC)
        for row in s.exec(select(ServiceHealth).order_by(col(ServiceHealth.name))).all():
            g.add_metric([row.name], 1 if row.up else 0)
            checked = aware(row.checked_at)
            age.add_metric([row.name], max(0.0, (now - checked).total_seconds()))
        return [g, age]
