"""Blocking revoked devices in the registry: revocation reaches the cloud.

``ca revoke`` records a :class:`~provisioner.db.models.RegistryBlock` (PENDING) in the
revocation's own transaction, then queues the block task on the ``registry`` queue. The row,
not the Redis message, is the promise: a lost message, a dead worker or a registry that
stays down only delay the block, which the registry worker's periodic sync and
``provisioner registry sync`` drain like parked uploads.

One attempt (:func:`attempt`) makes the registry hold the device *blocked*:

- upload done: the backend blocks it (Cloud IoT / ClearBlade: PATCH ``blocked=true`` with
  ``updateMask=blocked``; AWS IoT: every attached certificate set to REVOKED);
- upload not done yet (pending or parked): the device is uploaded first, through the same
  exactly-once :func:`provisioner.pipeline.upload_device`, and blocked right after, in the
  same attempt. A revoked device's parked upload is therefore left to this flow (the upload
  drain skips devices that have a block), so a sync never creates it unblocked;
- upload conflict (the registry holds someone else's certificate under the id): nothing of
  ours is there, and blocking would block another device: SKIPPED, audited;
- no upload at all (revoked before its certificate was verified on the chip): nothing to
  block yet; the block waits, and the first drain after an upload appears applies it.

Writes are paced with the creates (the backend's pacer), retried with backoff by the task a
bounded number of times (``celery.task_retry_max``), then PARKED. Every attempt of the task
is audited (``registry.blocked``, ``registry.block_retry``, ``registry.block_parked``,
``registry.block_skipped``); a drain's renewed failure of an already parked block only
updates the row (the registry may stay down for hours: one event per minute per device
would bury the trail), as parked uploads do. Blocking twice is harmless: the backends'
block is idempotent and a block already DONE is not tried again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, and_, col, or_, select

from provisioner import pipeline
from provisioner.audit import chain
from provisioner.db.engine import transaction
from provisioner.db.models import (
    BlockState,
    Device,
    RegistryBlock,
    RegistryUpload,
    UploadState,
    utcnow,
)
from provisioner.errors import NotFoundError, RegistryError, RegistryUnavailableError
from provisioner.ledger import DeviceLedger
from provisioner.ports import RegistryBackend
from provisioner.uploads.forwarder import DrainReport, drain_each
from provisioner.uploads.ratelimit import backoff_s

log = logging.getLogger(__name__)

ACTOR = "registry-uploader"  # the same actor as uploads: the registry worker acts


class BlockOutcome(StrEnum):
    BLOCKED = "blocked"  # the registry shows it blocked (or has no such device)
    SKIPPED = "skipped"  # the registry holds another certificate under the id
    WAITING = "waiting"  # never queued for upload: nothing in the registry to block yet


def attempt(
    engine: Engine, backend: RegistryBackend, device_id: int, actor: str = ACTOR
) -> BlockOutcome:
    """Try once to have the registry hold the device blocked (module docstring). Raises
    RegistryUnavailableError (try again later) or RegistryError (refused) unrecorded: the
    caller decides between retry and park."""
    with Session(engine) as s:
        block = _block(s, device_id)
        if block.state is BlockState.DONE:
            return BlockOutcome.BLOCKED
        if block.state is BlockState.SKIPPED:
            return BlockOutcome.SKIPPED
        up = _upload(s, device_id)
    if up is None:
        return BlockOutcome.WAITING
    if up.state in (UploadState.PENDING, UploadState.PARKED):
        pipeline.upload_device(device_id, backend, DeviceLedger(engine, actor))
        with Session(engine) as s:
            up = _upload(s, device_id)
        assert up is not None
    if up.state is UploadState.CONFLICT:
        _close(engine, device_id, BlockState.SKIPPED, actor, {"detail": up.error or ""})
        return BlockOutcome.SKIPPED
    found = backend.block_device(up.registry_device_id)
    _close(engine, device_id, BlockState.DONE, actor, {"num_id": up.num_id, "absent": not found})
    return BlockOutcome.BLOCKED


@dataclass(frozen=True)
class TaskResult:
    """What one run of the block task came to; ``retry_in_s`` set: run again after it."""

    result: dict[str, Any]
    retry_in_s: float | None = None


def task_attempt(
    engine: Engine,
    backend: RegistryBackend,
    device_id: int,
    retries: int,
    retry_max: int,
    actor: str = ACTOR,
) -> TaskResult:
    """One run of the block task, with the uploads' policy: an unreachable registry is
    retried with jittered backoff up to ``retry_max`` times, then the block is parked for
    the periodic sync; a refusal is parked at once (the same request cannot succeed)."""
    try:
        outcome = attempt(engine, backend, device_id, actor)
    except RegistryUnavailableError as exc:
        if retries >= retry_max:
            log.warning("block of device %s parked after %s tries: %s", device_id, retries + 1, exc)
            park(engine, device_id, f"parked after {retries + 1} tries: {exc}", actor)
            return TaskResult({"device_id": device_id, "ok": False, "parked": True})
        note_retry(engine, device_id, str(exc), actor, audit=True)
        return TaskResult({"device_id": device_id, "ok": False}, backoff_s(retries))
    except RegistryError as exc:
        log.warning("block of device %s refused by the registry: %s", device_id, exc)
        park(engine, device_id, f"refused: {exc}", actor)
        return TaskResult({"device_id": device_id, "ok": False, "parked": True})
    return TaskResult(
        {"device_id": device_id, "ok": outcome is BlockOutcome.BLOCKED, "outcome": outcome.value}
    )


def note_retry(
    engine: Engine, device_id: int, error: str, actor: str = ACTOR, *, audit: bool = False
) -> None:
    """An attempt met an unreachable registry; the block stays as it is (pending/parked)."""
    with transaction(engine) as s:
        block = _block(s, device_id)
        if block.state not in (BlockState.PENDING, BlockState.PARKED):
            return
        block.attempts, block.error, block.updated_at = block.attempts + 1, error, utcnow()
        s.add(block)
        if audit:
            _event(s, "registry.block_retry", block, actor, {"error": error})


def park(engine: Engine, device_id: int, error: str, actor: str = ACTOR) -> None:
    """Leave the block to the periodic sync / ``registry sync`` (audited when it becomes
    parked; a parked block tried again only keeps the latest answer)."""
    with transaction(engine) as s:
        block = _block(s, device_id)
        if block.state is BlockState.PARKED:
            block.attempts, block.error, block.updated_at = block.attempts + 1, error, utcnow()
            s.add(block)
            return
        if block.state is not BlockState.PENDING:
            return
        block.state, block.error, block.updated_at = BlockState.PARKED, error, utcnow()
        block.attempts += 1
        s.add(block)
        _event(s, "registry.block_parked", block, actor, {"error": error})


def waiting_blocks(
    engine: Engine, *, batch_id: int | None = None, pending_older_than_s: float = 0.0
) -> list[int]:
    """Device ids whose block is parked, or pending for longer than the given age (younger
    ones are probably in a worker's hands), and which have an upload (queued or done):
    a device never queued for upload has nothing in the registry yet."""
    cutoff = utcnow() - timedelta(seconds=pending_older_than_s)
    q = (
        select(RegistryBlock.device_id)
        .join(RegistryUpload, col(RegistryUpload.device_id) == RegistryBlock.device_id)
        .join(Device, col(Device.id) == RegistryBlock.device_id)
        .where(
            or_(
                col(RegistryBlock.state) == BlockState.PARKED,
                and_(
                    col(RegistryBlock.state) == BlockState.PENDING,
                    col(RegistryBlock.updated_at) <= cutoff,
                ),
            )
        )
        .order_by(col(RegistryBlock.id))
    )
    if batch_id is not None:
        q = q.where(Device.batch_id == batch_id)
    with Session(engine) as s:
        return list(s.exec(q).all())


def drain_blocks(
    engine: Engine,
    backend: RegistryBackend,
    device_ids: list[int],
    *,
    give_up_after: int = 3,
    progress: Callable[[int, DrainReport], None] | None = None,
    actor: str = ACTOR,
) -> DrainReport:
    """Block ``device_ids`` one by one (the store-and-forward drain for blocks): ``done``
    counts blocked devices, ``conflicts`` skipped ones. Stops after ``give_up_after``
    consecutive unreachable answers, like the upload drain."""
    outcomes = {BlockOutcome.BLOCKED: True, BlockOutcome.SKIPPED: False}
    return drain_each(
        device_ids,
        lambda d: outcomes.get(attempt(engine, backend, d, actor)),
        note_retry=lambda d, why: note_retry(engine, d, why, actor),
        refuse=lambda d, why: park(engine, d, f"refused: {why}", actor),
        give_up_after=give_up_after,
        progress=progress,
    )


def block_state(engine: Engine, device_id: int) -> RegistryBlock | None:
    with Session(engine) as s:
        return s.exec(select(RegistryBlock).where(RegistryBlock.device_id == device_id)).first()


# --- internals -------------------------------------------------------------------------------


def _block(s: Session, device_id: int) -> RegistryBlock:
    block = s.exec(select(RegistryBlock).where(RegistryBlock.device_id == device_id)).first()
    if block is None:
        raise NotFoundError(f"device {device_id} has no registry block (it is not revoked)")
    return block


def _upload(s: Session, device_id: int) -> RegistryUpload | None:
    return s.exec(select(RegistryUpload).where(RegistryUpload.device_id == device_id)).first()


def _close(
    engine: Engine, device_id: int, state: BlockState, actor: str, extra: dict[str, Any]
) -> None:
    """DONE or SKIPPED, with its event, once (a racing task and drain record it once)."""
    with transaction(engine) as s:
        block = _block(s, device_id)
        if block.state not in (BlockState.PENDING, BlockState.PARKED):
            return
        block.state, block.error, block.updated_at = state, None, utcnow()
        block.attempts += 1
        if state is BlockState.DONE:
            block.blocked_at = block.updated_at
        s.add(block)
        event = "registry.blocked" if state is BlockState.DONE else "registry.block_skipped"
        _event(s, event, block, actor, extra)


def _event(s: Session, event: str, block: RegistryBlock, actor: str, extra: dict[str, Any]) -> None:
    dev = s.get(Device, block.device_id)
    up = _upload(s, block.device_id)
    assert dev is not None
    chain.append(
        s,
        event,
        actor=actor,
        batch_id=dev.batch_id,
        device_id=dev.id,
        chip_serial=dev.chip_serial,
        payload={
            "registry": up.registry_name if up is not None else None,
            "registry_device_id": up.registry_device_id if up is not None else None,
            "attempts": block.attempts,
            **extra,
        },
    )
