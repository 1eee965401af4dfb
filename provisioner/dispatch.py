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
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from provisioner.batches.lifecycle import runnable_query
from provisioner.db.engine import transaction
from provisioner.db.models import (
    Batch,
    BatchState,
    Device,
    RegistryUpload,
    UploadState,
    utcnow,
)
from provisioner.settings import Settings
from workers.queues import PROVISION_TASK, REGISTRY_QUEUE, UPLOAD_TASK, station_queue


def celery_app(settings: Settings) -> Celery:
    from workers.celery_app import make_celery

    return make_celery(settings)


def send_devices(app: Celery, station_id: str, device_ids: Iterable[int]) -> int:
    """Queue a provisioning task per device on its station's queue; returns how many."""
    n = 0
    for device_id in device_ids:
        app.send_task(PROVISION_TASK, args=[device_id], queue=station_queue(station_id))
        n += 1
    return n


def send_uploads(app: Celery, device_ids: Iterable[int]) -> int:
    n = 0
    for device_id in device_ids:
        app.send_task(UPLOAD_TASK, args=[device_id], queue=REGISTRY_QUEUE)
        n += 1
    return n


def runnable_devices(engine: Engine, batch_id: int) -> list[int]:
    """Devices of the batch a station still has to work on (see
    :func:`provisioner.batches.lifecycle.runnable_query`)."""
    with transaction(engine) as s:
        return [i for i in s.exec(runnable_query(batch_id, utcnow())).all() if i is not None]


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
    app = celery_app(settings)
    devices = sum(
        send_devices(app, station_id, runnable_devices(engine, batch_id))
        for batch_id, station_id in running
        if batch_id is not None
    )
    uploads = send_uploads(app, waiting_uploads(engine))
    return devices, uploads
