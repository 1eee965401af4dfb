"""What one worker child process owns, opened after fork in ``worker_process_init``.

The parent (``celery worker``) only learns which queues it consumes; every resource that
must not cross a fork (the database connections, the PKCS#11 library and its logged-in
session, the chip's ctypes device) is opened in the child.

- a *line* worker (the line server's ``hsm`` or ``registry`` queue) opens the database,
  and the signer or the registry client;
- a *gateway* worker (line server, one per station) opens the database and checks and
  records that station's requests; it asks the ``hsm`` worker to sign;
- a *station* worker (the station PC) opens no database at all: a child owns exactly one
  socket of the jig (socket number = the child's pool index, so ``--concurrency`` equals
  the number of sockets) and reaches the line's records through its gateway.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from billiard.process import current_process
from celery import Celery, signals
from sqlalchemy.engine import Engine

from provisioner.metrics.multiproc import on_worker_process_shutdown
from provisioner.settings import Settings, load_settings
from workers.queues import HSM_QUEUE, REGISTRY_QUEUE

log = logging.getLogger("provisioner.worker")

READY_ENV = "PROVISIONER_READY_FILE"


@dataclass
class WorkerRuntime:
    settings: Settings
    kind: str = "line"
    engine: Engine | None = None
    station_id: str | None = None
    socket: int | None = None
    signer: Any = None  # provisioner.issuance.IssuanceService on the hsm worker
    # provisioner.issuance.GroupSigner over ``signer``: the sign task's way in, so that
    # requests handled at the same time (a threads pool) share one transaction.
    sign_group: Any = None
    checkpointer: Any = None  # provisioner.audit.checkpointer.Checkpointer, hsm worker too
    crl_schedule: Any = None  # provisioner.ca.crl_schedule.CrlSchedule, hsm worker child 0
    registry: Any = None  # a RegistryBackend on the registry worker
    forwarder: Any = None  # provisioner.uploads.forwarder.Forwarder, registry worker
    records: Any = None  # provisioner.link.remote.RemoteRecords on a station worker
    gateway: Any = None  # provisioner.link.gateway.Gateway on a gateway worker
    line_app: Celery | None = None  # the gateway's way to the signer and the uploader

    @property
    def db(self) -> Engine:
        assert self.engine is not None, "this worker has no database (a station PC)"
        return self.engine


class _Process:
    """Per-process holder. The parent fills ``queues`` and ``kind``; each child fills
    ``runtime``."""

    queues: frozenset[str] = frozenset()
    kind: str = "line"
    station: str | None = None
    runtime: WorkerRuntime | None = None


_OPENING = threading.Lock()


def current() -> WorkerRuntime:
    """The runtime of this child; opened lazily if the pool has no init hook (the solo and
    threads pools: with threads, once for all of them, hence the lock)."""
    if _Process.runtime is None:
        with _OPENING:
            if _Process.runtime is None:
                _Process.runtime = _open(load_settings(), getattr(current_process(), "index", 0))
    return _Process.runtime


def _open(settings: Settings, index: int) -> WorkerRuntime:
    if _Process.kind == "station":
        rt = _open_station(settings, index)
    elif _Process.kind == "gateway":
        rt = _open_gateway(settings)
    else:
        rt = _open_line(settings, _Process.queues, index)
    log.info(
        "worker process %s ready: kind=%s station=%s socket=%s",
        index,
        rt.kind,
        rt.station_id,
        rt.socket,
    )
    return rt


def _engine(settings: Settings) -> Engine:
    from provisioner.db.engine import create_schema, make_engine

    engine = make_engine(settings.db_url)
    create_schema(engine)  # refuses a schema older or newer than this code
    return engine


def _open_station(settings: Settings, index: int) -> WorkerRuntime:
    from provisioner.link.remote import RemoteRecords
    from workers.celery_app import worker_app

    station = _Process.station
    assert station is not None
    sockets = settings.station(station).sockets
    if index >= sockets:
        raise RuntimeError(
            f"station {station} has {sockets} sockets but this is pool process "
            f"{index}: run the worker with --concurrency={sockets}"
        )
    records = RemoteRecords.of_station(worker_app(), settings, station, index)
    return WorkerRuntime(settings, "station", station_id=station, socket=index, records=records)


def _open_gateway(settings: Settings) -> WorkerRuntime:
    from provisioner.ca.chain import local_material
    from provisioner.ca.manufacturer_chain import load_root
    from provisioner.dispatch import redispatch_station
    from provisioner.link.gateway import Gateway
    from provisioner.link.keys import line_key
    from workers.celery_app import make_celery
    from workers.tasks import RemoteSigner, registry_path

    station = _Process.station
    assert station is not None
    engine = _engine(settings)
    line_app = make_celery(settings)

    def upload(device_id: int) -> None:
        from kombu.exceptions import OperationalError
        from redis.exceptions import RedisError

        from workers.queues import UPLOAD_TASK

        try:
            line_app.send_task(UPLOAD_TASK, args=[device_id], queue=REGISTRY_QUEUE)
        except (OperationalError, RedisError, OSError) as exc:
            # The upload row is in the database: the registry worker's periodic sync sends it.
            log.warning("device %s: upload not queued (%s), left to the sync", device_id, exc)

    gateway = Gateway(
        engine,
        station,
        line_key(settings),
        RemoteSigner(line_app, settings.celery.sign_timeout_s),
        registry=registry_path(settings),
        on_verified=upload,
        on_resume=lambda: redispatch_station(engine, settings, station),
        chain_material=lambda: local_material(settings).as_json(),
        manufacturer_root=lambda: load_root(settings.manufacturer_root_file),
    )
    return WorkerRuntime(
        settings, "gateway", engine, station_id=station, gateway=gateway, line_app=line_app
    )


def _open_line(settings: Settings, queues: frozenset[str], index: int) -> WorkerRuntime:
    engine = _engine(settings)
    rt = WorkerRuntime(settings, "line", engine)
    if HSM_QUEUE in queues:
        from provisioner.audit.checkpointer import Checkpointer
        from provisioner.issuance import GroupSigner, IssuanceService

        rt.signer = IssuanceService.open(engine, settings)
        rt.sign_group = GroupSigner(rt.signer)
        rt.checkpointer = Checkpointer.for_provider(engine, settings, rt.signer.ca.pool)
        rt.checkpointer.start()
        if index == 0:  # one CRL schedule per hsm worker, not one per child
            from provisioner.ca.crl_schedule import CrlSchedule

            rt.crl_schedule = CrlSchedule(settings, engine, rt.signer.ca)
            rt.crl_schedule.start()
    if REGISTRY_QUEUE in queues:
        from provisioner.uploads.backends import open_backend
        from provisioner.uploads.forwarder import Forwarder

        rt.registry = open_backend(settings)
        if index == 0:  # one periodic drain per registry worker, not one per child
            rt.forwarder = Forwarder(
                engine,
                open_backend(settings),  # its own client: it runs in another thread
                settings.registry.sync_interval_s,
                settings.registry.sync_pending_after_s,
            )
            rt.forwarder.start()
    return rt


def _after_setup(sender: Any = None, instance: Any = None, **_: Any) -> None:
    _Process.queues = frozenset(instance.app.amqp.queues.consume_from or ())


def _ready(**_: Any) -> None:
    """Tell the supervisor this worker consumes its queue (a file it waits for: remote
    control is off in namespaces a station can write to)."""
    path = os.environ.get(READY_ENV)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        Path(path).write_text(str(os.getpid()))


def _process_init(**_: Any) -> None:
    _Process.runtime = _open(load_settings(), getattr(current_process(), "index", 0))


def _process_shutdown(**_: Any) -> None:
    rt, _Process.runtime = _Process.runtime, None  # once, whichever signal comes first
    if rt is not None:
        if rt.forwarder is not None:
            rt.forwarder.stop()
        if rt.registry is not None:
            rt.registry.close()
        if rt.checkpointer is not None:
            rt.checkpointer.stop()
        if rt.crl_schedule is not None:
            rt.crl_schedule.stop()
        if rt.signer is not None:
            rt.signer.close()
        if rt.line_app is not None:
            rt.line_app.close()
        if rt.engine is not None:
            rt.engine.dispose()


def default_process_name(kind: str, station: str | None) -> str:
    """The component name of a worker not started by the supervisor (which names it)."""
    if kind == "station":
        return f"worker-station-{station}"
    if kind == "gateway":
        return f"gateway-{station}"
    return "worker"


def _setup_logging(**_: Any) -> None:
    """Celery's ``setup_logging``: with a receiver connected Celery leaves the root logger
    alone (no hijack); ours writes JSON lines to ``<var>/log/<name>.log``. The pool
    children are forked after this and inherit the handler (each record carries the pid
    of the process that logged it; the file is opened O_APPEND, one write per line)."""
    from provisioner.logs import configure

    configure(load_settings(), default_process_name(_Process.kind, _Process.station))


def connect_signals(kind: str, station: str | None) -> None:
    _Process.kind, _Process.station = kind, station
    signals.setup_logging.connect(_setup_logging, weak=False)
    signals.celeryd_after_setup.connect(_after_setup, weak=False)
    signals.worker_ready.connect(_ready, weak=False)
    signals.worker_process_init.connect(_process_init, weak=False)
    signals.worker_process_shutdown.connect(_process_shutdown, weak=False)
    # The threads and solo pools have no child processes: their runtime (the hsm worker's
    # group signer runs on threads) closes with the worker. A prefork parent opened none.
    signals.worker_shutdown.connect(_process_shutdown, weak=False)
    # A pool child that ends takes its live gauges with it (prometheus multiprocess mode).
    signals.worker_process_shutdown.connect(on_worker_process_shutdown, weak=False)
