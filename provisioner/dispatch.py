"""Handing work to the workers: the one place that puts device and upload tasks on the
queues.

The database says what is left to do; a queue message only says "look at device N". So any
message may be sent again: a device already done, claimed by another socket's task, or in a
batch that is not running is left alone by the task that receives it. That is what lets
``batch start``, ``batch resume``, ``batch retry`` and the supervisor's re-dispatch after a
broker restart (when Redis lost every queued message) all use the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from provisioner.batches.lifecycle import Transition, runnable_query
from provisioner.db.engine import transaction
from provisioner.db.models import (
    Batch,
    BatchState,
    Device,
    RegistryUpload,
    Step,
    UploadState,
    utcnow,
)
from provisioner.settings import Settings
from workers.queues import BLOCK_TASK, PROVISION_TASK, REGISTRY_QUEUE, UPLOAD_TASK, station_queue


def celery_app(settings: Settings) -> Celery:
    from workers.celery_app import make_celery

    return make_celery(settings)


def send_devices(settings: Settings, station_id: str, device_ids: Iterable[int]) -> int:
    """Queue a provisioning order per device on its station's queue (in the station's
    namespace on the broker), each signed with the line's key so the station can tell the
    line's orders from anything else on its queue; returns how many."""
    from provisioner.link.envelope import seal
    from provisioner.link.keys import line_key, station_party
    from provisioner.link.wire import WORK_TTL_S
    from workers.celery_app import station_app

    ids = list(device_ids)
    if not ids:
        return 0
    key = line_key(settings)
    app = station_app(settings, station_id, as_line=True)
    try:
        for device_id in ids:
            order = seal(
                key.key,
                kid=key.kid,
                task=PROVISION_TASK,
                sender=key.party,
                recipient=station_party(station_id),
                body={"device": device_id},
                ttl_s=WORK_TTL_S,
            )
            app.send_task(PROVISION_TASK, args=[order], queue=station_queue(station_id))
    finally:
        app.close()
    return len(ids)


def send_uploads(app: Celery, device_ids: Iterable[int]) -> int:
    n = 0
    for device_id in device_ids:
        app.send_task(UPLOAD_TASK, args=[device_id], queue=REGISTRY_QUEUE)
        n += 1
    return n


def queue_transition(settings: Settings, engine: Engine, t: Transition) -> tuple[int, int]:
    """Hand a lifecycle transition's devices, and its batch's waiting uploads, to the
    workers (``batch start``, ``resume``, ``retry`` from the CLI and the dashboard): returns
    (devices, uploads) sent. Uploads are re-sent too because a start or resume may follow a
    broker restart that lost them; a duplicate is harmless (see the module's docstring)."""
    devices = send_devices(settings, t.station_id, t.queue)
    app = celery_app(settings)
    try:
        uploads = send_uploads(app, waiting_uploads(engine, t.batch_id))
    finally:
        app.close()
    return devices, uploads


def runnable_devices(engine: Engine, batch_id: int, *, include_claimed: bool = False) -> list[int]:
    """Devices of the batch a station still has to work on (see
    :func:`provisioner.batches.lifecycle.runnable_query`)."""
    q = runnable_query(batch_id, utcnow(), include_claimed=include_claimed)
    with transaction(engine) as s:
        return [i for i in s.exec(q).all() if i is not None]


def waiting_uploads(engine: Engine, batch_id: int | None = None) -> list[int]:
    """Devices whose registry upload is pending or parked (of one batch, or all)."""
    with transaction(engine) as s:
        q = select(RegistryUpload.device_id).where(
            col(RegistryUpload.state).in_([UploadState.PENDING, UploadState.PARKED])
        )
        if batch_id is not None:
            q = q.join(Device, col(Device.id) == RegistryUpload.device_id).where(
                Device.batch_id == batch_id
            )
        return list(s.exec(q).all())


def redispatch_running(engine: Engine, settings: Settings) -> tuple[int, int]:
    """Queue again everything of the running batches (after the broker lost its queues, or
    an upload worker died with messages it held): returns (devices, uploads) sent."""
    with transaction(engine) as s:
        running = s.exec(
            select(Batch.id, Batch.station_id).where(Batch.state == BatchState.RUNNING)
        ).all()
    devices = sum(
        send_devices(settings, station_id, runnable_devices(engine, batch_id))
        for batch_id, station_id in running
        if batch_id is not None
    )
    app = celery_app(settings)
    try:
        uploads = send_uploads(app, waiting_uploads(engine))
    finally:
        app.close()
    return devices, uploads


def redispatch_station(engine: Engine, settings: Settings, station_id: str) -> int:
    """Queue again the runnable devices of one station's running batches (it restarted, or
    came up after its batches started): returns how many were sent."""
    with transaction(engine) as s:
        running = s.exec(
            select(Batch.id).where(
                Batch.state == BatchState.RUNNING, Batch.station_id == station_id
            )
        ).all()
    return sum(  # held ones too: the restarted station's sockets take over dead claims
        send_devices(settings, station_id, runnable_devices(engine, b, include_claimed=True))
        for b in running
        if b is not None
    )


def resend_lapsed(engine: Engine, settings: Settings) -> int:
    """Queue again the devices of running batches whose claim lapsed: the socket task that
    held one died, or could not give it back (a station that lost the broker mid-device
    cannot release its claim), and no message for it is left. Each lapsed claim is cleared
    as its device is re-sent, so a station that is down is sent each device once."""
    now = utcnow()
    with transaction(engine) as s:
        rows = s.exec(
            select(Device.id, Batch.station_id)
            .join(Batch, col(Batch.id) == Device.batch_id)
            .where(
                Batch.state == BatchState.RUNNING,
                col(Device.step) < Step.CERT_VERIFIED,
                col(Device.error).is_(None),
                col(Device.cancelled_at).is_(None),
                col(Device.claimed_until) < now,
            )
        ).all()
        ids = [i for i, _ in rows if i is not None]
        if ids:
            s.execute(
                update(Device)
                .where(col(Device.id).in_(ids), col(Device.claimed_until) < now)
                .values(claimed_by=None, claimed_until=None)
            )
    by_station: dict[str, list[int]] = {}
    for device_id, station_id in rows:
        if device_id is not None:
            by_station.setdefault(station_id, []).append(device_id)
    return sum(send_devices(settings, sid, ids) for sid, ids in by_station.items())


def send_block(settings: Settings, device_id: int) -> bool:
    """Queue the block task now if Redis answers (False otherwise: the row waits for the
    periodic sync or ``registry sync``, nothing is lost)."""
    from provisioner.errors import ServiceUnavailableError
    from provisioner.preflight import check_redis

    try:
        check_redis(settings)
    except ServiceUnavailableError:
        return False
    celery_app(settings).send_task(BLOCK_TASK, args=[device_id], queue=REGISTRY_QUEUE)
    return True
