"""Store and forward: uploads wait in the database until the registry takes them.

A station never waits for the cloud: a verified chip's upload is a row (``registry_upload``,
PENDING) written with the step itself, and a Celery task tries it with backoff. When the
task gives up the row is PARKED, visible in ``batch status``. :func:`drain` is what brings
them home — the registry worker runs it periodically (:class:`Forwarder`) and an operator
can run it now (``provisioner registry sync``). Every upload goes through
:func:`provisioner.pipeline.upload_device`, which is idempotent (ALREADY_EXISTS -> compare),
so a drain racing a task never makes a second device. The periodic drain also carries
out the registry blocks of revoked devices that wait (:mod:`.blocking`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, and_, col, or_, select

from provisioner import pipeline
from provisioner.db.models import Device, RegistryBlock, RegistryUpload, UploadState, utcnow
from provisioner.errors import RegistryError, RegistryUnavailableError
from provisioner.ledger import DeviceLedger
from provisioner.periodic import Periodic
from provisioner.ports import RegistryBackend

log = logging.getLogger(__name__)


@dataclass
class DrainReport:
    done: int = 0
    conflicts: int = 0
    unavailable: int = 0  # tried and the registry was unreachable (still waiting)
    refused: int = 0  # the registry refused the request itself (parked for a person)
    left: int = 0  # not tried: the registry looked down, so the drain stopped early

    @property
    def tried(self) -> int:
        return self.done + self.conflicts + self.unavailable + self.refused

    def as_json(self) -> dict[str, int]:
        return {
            "done": self.done,
            "conflicts": self.conflicts,
            "unavailable": self.unavailable,
            "refused": self.refused,
            "left": self.left,
        }


def waiting(
    engine: Engine, *, batch_id: int | None = None, pending_older_than_s: float = 0.0
) -> list[int]:
    """Device ids whose upload is parked, or pending for longer than the given age (a
    pending row younger than that is probably in a worker's hands right now). A revoked
    device (one with a registry block) is left to the block drain, which uploads it and
    blocks it in one attempt (:mod:`.blocking`): a sync never creates it unblocked."""
    cutoff = utcnow() - timedelta(seconds=pending_older_than_s)
    revoked = select(RegistryBlock.device_id).where(
        RegistryBlock.device_id == RegistryUpload.device_id
    )
    q = (
        select(RegistryUpload.device_id)
        .join(Device, col(Device.id) == RegistryUpload.device_id)
        .where(
            or_(
                col(RegistryUpload.state) == UploadState.PARKED,
                and_(
                    col(RegistryUpload.state) == UploadState.PENDING,
                    col(RegistryUpload.updated_at) <= cutoff,
                ),
            ),
            ~revoked.exists(),
        )
        .order_by(col(RegistryUpload.id))
    )
    if batch_id is not None:
        q = q.where(Device.batch_id == batch_id)
    with Session(engine) as s:
        return list(s.exec(q).all())


def drain_each(
    device_ids: list[int],
    try_one: Callable[[int], bool | None],
    *,
    note_retry: Callable[[int, str], None],
    refuse: Callable[[int, str], None],
    give_up_after: int = 3,
    progress: Callable[[int, DrainReport], None] | None = None,
) -> DrainReport:
    """Work through ``device_ids`` one by one (uploads, blocks). ``try_one`` answers True
    (done), False (a conflict a person decides) or None (nothing to do yet); an unreachable
    registry is noted for a later retry, a refusal kept with its answer. After
    ``give_up_after`` consecutive unreachable answers the registry is taken to be down and
    the rest are left for later (hammering a dead or throttling registry only makes it
    worse)."""
    rep = DrainReport()
    streak = 0
    for n, device_id in enumerate(device_ids, 1):
        if streak >= give_up_after:
            rep.left = len(device_ids) - n + 1
            break
        try:
            done = try_one(device_id)
        except RegistryUnavailableError as exc:
            note_retry(device_id, str(exc))
            rep.unavailable += 1
            streak += 1
        except RegistryError as exc:  # not retryable as it is: parked, the error kept
            refuse(device_id, str(exc))
            rep.refused += 1
            streak = 0
        else:
            streak = 0
            if done is True:
                rep.done += 1
            elif done is False:
                rep.conflicts += 1
        if progress is not None:
            progress(n, rep)
    return rep


def drain(
    engine: Engine,
    backend: RegistryBackend,
    device_ids: list[int],
    *,
    give_up_after: int = 3,
    progress: Callable[[int, DrainReport], None] | None = None,
) -> DrainReport:
    """Upload ``device_ids`` one by one (:func:`drain_each`)."""
    ledger = DeviceLedger(engine, "registry-uploader")
    return drain_each(
        device_ids,
        lambda d: pipeline.upload_device(d, backend, ledger).error is None,
        note_retry=ledger.note_upload_retry,
        refuse=ledger.refuse_upload,
        give_up_after=give_up_after,
        progress=progress,
    )


@dataclass
class SyncReport:
    """One round of the periodic drain: uploads, then blocks of revoked devices."""

    uploads: DrainReport
    blocks: DrainReport


def _log_drain(rep: SyncReport) -> None:
    if rep.uploads.tried:
        log.info("registry sync: %s", rep.uploads.as_json())
    if rep.blocks.tried:
        log.info("registry sync (blocks of revoked devices): %s", rep.blocks.as_json())


class Forwarder:
    """The registry worker's periodic drain (a daemon thread)."""

    def __init__(
        self,
        engine: Engine,
        backend: RegistryBackend,
        interval_s: float,
        pending_older_than_s: float,
    ) -> None:
        self.engine, self.backend = engine, backend
        self.interval_s, self.pending_older_than_s = interval_s, pending_older_than_s
        self._periodic = Periodic(
            "registry-forwarder",
            interval_s,
            self.tick,
            _log_drain,
            log,
            "registry sync failed",
        )

    def tick(self) -> SyncReport:
        from provisioner.uploads import blocking

        ids = waiting(self.engine, pending_older_than_s=self.pending_older_than_s)
        uploads = drain(self.engine, self.backend, ids) if ids else DrainReport()
        blocks = blocking.waiting_blocks(
            self.engine, pending_older_than_s=self.pending_older_than_s
        )
        return SyncReport(
            uploads,
            blocking.drain_blocks(self.engine, self.backend, blocks) if blocks else DrainReport(),
        )

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()
