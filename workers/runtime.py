"""What one worker child process owns, opened after fork in ``worker_process_init``.

The parent (``celery worker``) only learns which queues it consumes; every resource that
must not cross a fork (the database connections, the PKCS#11 library and its logged-in
session, the chip's ctypes device) is opened in the child. A station child owns exactly one
socket of the jig: socket number = the child's pool index, so ``--concurrency`` equals the
number of sockets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from billiard.process import current_process
from celery import signals
from sqlalchemy.engine import Engine

from provisioner.db.engine import create_schema, make_engine
from provisioner.settings import Settings, load_settings
from workers.queues import HSM_QUEUE, REGISTRY_QUEUE, STATION_PREFIX

log = logging.getLogger("provisioner.worker")


@dataclass
class WorkerRuntime:
    settings: Settings
    engine: Engine
    station_id: str | None = None
    socket: int | None = None
    signer: Any = None  # provisioner.issuance.IssuanceService on the hsm worker
    checkpointer: Any = None  # provisioner.audit.checkpointer.Checkpointer, hsm worker too
    registry: Any = None  # a RegistryBackend on the registry worker
    forwarder: Any = None  # provisioner.registry.forwarder.Forwarder, registry worker


class _Process:
    """Per-process holder. The parent fills ``queues``; each child fills ``runtime``."""

    queues: frozenset[str] = frozenset()
    runtime: WorkerRuntime | None = None


def current() -> WorkerRuntime:
    """The runtime of this child; opened lazily if the pool has no init hook (solo pool)."""
    if _Process.runtime is None:
        _Process.runtime = _open(
            load_settings(), _Process.queues, getattr(current_process(), "index", 0)
        )
    return _Process.runtime


def _open(settings: Settings, queues: frozenset[str], index: int) -> WorkerRuntime:
    engine = make_engine(settings.db_url)
    create_schema(engine)
    rt = WorkerRuntime(settings=settings, engine=engine)
    stations = sorted(
        q.removeprefix(STATION_PREFIX) for q in queues if q.startswith(STATION_PREFIX)
    )
    if len(stations) > 1:
        raise RuntimeError(f"one station per worker, got {stations}")
    if stations:
        rt.station_id = stations[0]
        sockets = settings.station(rt.station_id).sockets
        if index >= sockets:
            raise RuntimeError(
                f"station {rt.station_id} has {sockets} sockets but this is pool process "
                f"{index}: run the worker with --concurrency={sockets}"
            )
        rt.socket = index
    if HSM_QUEUE in queues:
        from provisioner.audit.checkpointer import Checkpointer
        from provisioner.issuance import IssuanceService

        rt.signer = IssuanceService.open(engine, settings)
        rt.checkpointer = Checkpointer.for_provider(engine, settings, rt.signer.ca.pool)
        rt.checkpointer.start()
    if REGISTRY_QUEUE in queues:
        from provisioner.registry.backends import open_backend
        from provisioner.registry.forwarder import Forwarder

        rt.registry = open_backend(settings)
        if index == 0:  # one periodic drain per registry worker, not one per child
            rt.forwarder = Forwarder(
                engine,
                open_backend(settings),  # its own client: it runs in another thread
                settings.registry.sync_interval_s,
                settings.registry.sync_pending_after_s,
            )
            rt.forwarder.start()
    log.info(
        "worker process %s ready: station=%s socket=%s hsm=%s registry=%s",
        index,
        rt.station_id,
        rt.socket,
        rt.signer is not None,
        rt.registry is not None,
    )
    return rt


def _after_setup(sender: Any = None, instance: Any = None, **_: Any) -> None:
    _Process.queues = frozenset(instance.app.amqp.queues.consume_from or ())


def _process_init(**_: Any) -> None:
    _Process.runtime = _open(
        load_settings(), _Process.queues, getattr(current_process(), "index", 0)
    )


def _process_shutdown(**_: Any) -> None:
    rt = _Process.runtime
    if rt is not None:
        if rt.forwarder is not None:
            rt.forwarder.stop()
        if rt.registry is not None:
            rt.registry.close()
        if rt.checkpointer is not None:
            rt.checkpointer.stop()
        if rt.signer is not None:
            rt.signer.close()
        rt.engine.dispose()


def connect_signals() -> None:
    signals.celeryd_after_setup.connect(_after_setup, weak=False)
    signals.worker_process_init.connect(_process_init, weak=False)
    signals.worker_process_shutdown.connect(_process_shutdown, weak=False)
