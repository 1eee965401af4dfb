"""A batch's lifecycle: create, start, pause, resume, cancel, close, quota and retry.

Every transition is one transaction: the state is checked, the rows change and the audit
event is appended together; a transition that makes no sense in the batch's state (resume a
cancelled batch, retry a done device, a quota below what is already issued) raises before
anything is written. Transitions only change the database; the caller queues the device
ids a transition returns (:mod:`provisioner.dispatch`), and a queued message for a device
that is no longer runnable is dropped by the socket task that receives it.

States::

    created --start--> running <--pause/resume--> paused
    running|paused --(every device done)--> finished
    running|paused --close (failed devices, none in flight)--> finished_with_failures
    created|running|paused --cancel--> cancelled
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, or_
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from provisioner.audit import chain
from provisioner.ca.manufacturer_chain import load_root
from provisioner.db.engine import transaction
from provisioner.db.models import (
    Batch,
    BatchMode,
    BatchState,
    Device,
    Station,
    Step,
    utcnow,
)
from provisioner.errors import ConflictError, InvalidInputError, NotFoundError
from provisioner.settings import Settings

MAX_BATCH = 100_000
_SERIAL_LEN = 18  # an ATECC608 serial number in hex


@dataclass(frozen=True)
class Transition:
    """What a transition did: the batch's new state, the devices the caller must queue,
    and (close) the failed devices it ended the batch with."""

    batch_id: int
    station_id: str
    state: BatchState
    queue: tuple[int, ...] = ()
    failed: tuple[dict[str, object], ...] = ()
    detail: dict[str, object] = field(default_factory=dict)


def validate_request(
    settings: Settings,
    *,
    station_id: str,
    count: int,
    quota: int | None = None,
    mode: str = "issue",
    part: str | None = None,
) -> None:
    """Reject a bad count, an unknown station, or a mode without its part (and a part
    without its mode) before anything else is looked at."""
    if count <= 0 or count > MAX_BATCH:
        raise InvalidInputError(f"--count must be between 1 and {MAX_BATCH}, got {count}")
    if quota is not None and not 1 <= quota <= count:
        raise InvalidInputError(f"--quota must be between 1 and the count ({count}), got {quota}")
    parse_mode(mode, part)
    settings.station(station_id)  # NotFoundError for an unknown station


def parse_mode(mode: str, part: str | None) -> tuple[BatchMode, str | None]:
    """The batch mode and part kind, checked: ``preprovisioned`` needs one of the known
    parts (:data:`~provisioner.chips.tng.PART_ADDRESSES`); ``issue`` takes none."""
    from provisioner.chips.tng import PART_ADDRESSES

    try:
        chosen = BatchMode(mode)
    except ValueError:
        raise InvalidInputError(
            f"--mode must be one of {', '.join(m.value for m in BatchMode)}, got {mode[:40]!r}"
        ) from None
    if chosen is BatchMode.ISSUE:
        if part is not None:
            raise InvalidInputError("--part is for a batch in mode preprovisioned")
        return chosen, None
    if part not in PART_ADDRESSES:
        raise InvalidInputError(
            f"--part must be one of {', '.join(sorted(PART_ADDRESSES))} for a "
            f"preprovisioned batch, got {part!r}"
        )
    return chosen, part


def create_batch(
    engine: Engine,
    settings: Settings,
    *,
    station_id: str,
    count: int,
    actor: str,
    quota: int | None = None,
    mode: str = "issue",
    part: str | None = None,
) -> int:
    """Create a batch of ``count`` devices on a configured station; returns its id.

    ``quota`` caps the certificates the signer issues for it (default: ``count``).
    ``mode``: ``issue`` (blank chips, our CA issues) or ``preprovisioned`` (``part``'s own
    certificates, verified against the manufacturer root; our CA issues nothing)."""
    validate_request(
        settings, station_id=station_id, count=count, quota=quota, mode=mode, part=part
    )
    chosen, part = parse_mode(mode, part)
    if chosen is BatchMode.PREPROVISIONED:  # its parts are judged against this root
        load_root(settings.manufacturer_root_file)
    with transaction(engine) as s:
        if s.get(Station, station_id) is None:
            s.add(Station(id=station_id))
            s.flush()
        batch = Batch(
            station_id=station_id,
            count=count,
            quota=quota,
            created_by=actor,
            mode=chosen.value,
            part=part,
        )
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
            payload={
                "count": count,
                "quota": quota if quota is not None else count,
                "mode": chosen.value,
                "part": part,
            },
        )
        return batch.id


def _batch(s: Session, batch_id: int) -> Batch:
    batch = s.get(Batch, batch_id)
    if batch is None:
        raise NotFoundError(f"batch {batch_id} does not exist (see `provisioner batch list`)")
    return batch


def get_batch(engine: Engine, batch_id: int) -> Batch:
    with transaction(engine) as s:
        return _batch(s, batch_id)


def _refuse(batch: Batch, action: str, hint: str = "") -> ConflictError:
    msg = f"cannot {action} batch {batch.id}: it is {batch.state.value}"
    return ConflictError(msg + (f"; {hint}" if hint else ""))


def runnable_query(
    batch_id: int, now: datetime, *, include_claimed: bool = False
) -> SelectOfScalar[int | None]:
    """The devices of the batch a station still has to work on, in position order: not
    yet verified on their chip, not failed (a failed device waits for `batch retry`), not
    released by a cancel and not held by a running socket task (``include_claimed``: held
    ones too; for a station that restarted, whose sockets take over what their dead
    predecessors held)."""
    q = select(col(Device.id)).where(
        Device.batch_id == batch_id,
        col(Device.step) < Step.CERT_VERIFIED,
        col(Device.error).is_(None),
        col(Device.cancelled_at).is_(None),
    )
    if not include_claimed:
        q = q.where(or_(col(Device.claimed_until).is_(None), col(Device.claimed_until) < now))
    return q.order_by(col(Device.position))


def _runnable(s: Session, batch_id: int, now: datetime) -> list[int]:
    return [i for i in s.exec(runnable_query(batch_id, now)).all() if i is not None]


def _audit(s: Session, batch: Batch, event: str, actor: str, **payload: object) -> None:
    chain.append(
        s, event, actor=actor, station_id=batch.station_id, batch_id=batch.id, payload=payload
    )


def _done(
    batch: Batch,
    queue: list[int] | None = None,
    *,
    failed: tuple[dict[str, object], ...] = (),
    detail: dict[str, object] | None = None,
) -> Transition:
    """The transition's outcome: the batch as it now stands and what the caller queues."""
    assert batch.id is not None
    return Transition(
        batch.id, batch.station_id, batch.state, tuple(queue or ()), failed, detail or {}
    )


def mark_started(engine: Engine, batch_id: int, *, actor: str) -> list[int]:
    """Start (or re-start) a created or running batch: returns the devices to queue.

    Failed devices are not included: they wait for `batch retry`, which says what happens
    to each part."""
    return list(start(engine, batch_id, actor=actor).queue)


def start(engine: Engine, batch_id: int, *, actor: str) -> Transition:
    with transaction(engine) as s:
        batch = _batch(s, batch_id)
        if batch.state is BatchState.PAUSED:
            raise _refuse(batch, "start", f"resume it: `provisioner batch resume {batch_id}`")
        if batch.state.ended:
            raise _refuse(batch, "start", "an ended batch never runs again; create a new one")
        devices = _runnable(s, batch_id, utcnow())
        batch.state = BatchState.RUNNING
        batch.started_at = batch.started_at or utcnow()
        s.add(batch)
        _audit(s, batch, "batch.started", actor, devices_queued=len(devices))
        return _done(batch, devices)


def pause(engine: Engine, batch_id: int, *, actor: str) -> Transition:
    """No new device starts; chips in flight finish the step they are in."""
    with transaction(engine) as s:
        batch = _batch(s, batch_id)
        if batch.state is not BatchState.RUNNING:
            raise _refuse(batch, "pause", "only a running batch can be paused")
        batch.state = BatchState.PAUSED
        s.add(batch)
        _audit(s, batch, "batch.paused", actor)
        return _done(batch)


def resume(engine: Engine, batch_id: int, *, actor: str) -> Transition:
    """A paused batch runs again: returns the devices to queue."""
    with transaction(engine) as s:
        batch = _batch(s, batch_id)
        if batch.state is not BatchState.PAUSED:
            hint = (
                f"start it: `provisioner batch start {batch_id}`"
                if batch.state is BatchState.CREATED
                else "only a paused batch can be resumed"
            )
            raise _refuse(batch, "resume", hint)
        devices = _runnable(s, batch_id, utcnow())
        batch.state = BatchState.RUNNING
        s.add(batch)
        _audit(s, batch, "batch.resumed", actor, devices_queued=len(devices))
        return _done(batch, devices)


def cancel(engine: Engine, batch_id: int, *, actor: str) -> Transition:
    """End the batch: devices not started are released, devices in flight finish if their
    certificate is issued and stop before it otherwise, and the signer issues nothing more
    for the batch (its remaining quota is released)."""
    now = utcnow()
    with transaction(engine) as s:
        batch = _batch(s, batch_id)
        if batch.state.ended:
            raise _refuse(batch, "cancel", "it has already ended")
        unstarted = s.exec(
            select(Device).where(
                Device.batch_id == batch_id,
                Device.step == Step.PENDING,
                col(Device.cancelled_at).is_(None),
                or_(col(Device.claimed_until).is_(None), col(Device.claimed_until) < now),
            )
        ).all()
        for d in unstarted:
            d.cancelled_at = now
            s.add(d)
        in_flight = count_devices(
            s,
            Device.batch_id == batch_id,
            col(Device.claimed_until) >= now,
        )
        limit = batch.quota if batch.quota is not None else batch.count
        batch.state = BatchState.CANCELLED
        batch.finished_at = now
        s.add(batch)
        _audit(
            s,
            batch,
            "batch.cancelled",
            actor,
            released_devices=len(unstarted),
            in_flight=in_flight,
            quota_released=max(0, limit - batch.issued),
        )
        return _done(batch, detail={"released": len(unstarted), "in_flight": in_flight})


def close(engine: Engine, batch_id: int, *, actor: str, max_listed: int = 1000) -> Transition:
    """End a batch whose remaining devices have failed: it becomes finished_with_failures,
    and the failed devices are listed (for the operator's reject bin and the record)."""
    now = utcnow()
    with transaction(engine) as s:
        batch = _batch(s, batch_id)
        if batch.state not in (BatchState.RUNNING, BatchState.PAUSED):
            raise _refuse(batch, "close", "only a running or paused batch with failures closes")
        in_flight = count_devices(s, Device.batch_id == batch_id, col(Device.claimed_until) >= now)
        if in_flight:
            raise ConflictError(
                f"batch {batch_id} has {in_flight} device(s) in a socket right now: pause it "
                "and wait for them, then close"
            )
        unfinished = count_devices(
            s,
            Device.batch_id == batch_id,
            col(Device.step) < Step.CERT_VERIFIED,
            col(Device.error).is_(None),
            col(Device.cancelled_at).is_(None),
        )
        if unfinished:
            raise ConflictError(
                f"batch {batch_id} has {unfinished} device(s) neither provisioned nor failed: "
                f"let them finish, or `provisioner batch cancel {batch_id}`"
            )
        failed_rows = s.exec(
            select(Device)
            .where(Device.batch_id == batch_id, col(Device.error).is_not(None))
            .order_by(col(Device.position))
        ).all()
        if not failed_rows:
            raise ConflictError(
                f"batch {batch_id} has no failed device: it finishes by itself when its "
                "registry uploads land"
            )
        failed: tuple[dict[str, object], ...] = tuple(
            {
                "device_id": d.id,
                "position": d.position,
                "chip_serial": d.chip_serial,
                "step": d.step.name,
                "action": d.action,
                "error": d.error,
            }
            for d in failed_rows
        )
        batch.state = BatchState.FINISHED_WITH_FAILURES
        batch.finished_at = now
        s.add(batch)
        _audit(
            s,
            batch,
            "batch.closed",
            actor,
            failed=len(failed),
            failed_devices=[f["device_id"] for f in failed[:max_listed]],
        )
        return _done(batch, failed=failed)


def set_quota(engine: Engine, batch_id: int, quota: int, *, actor: str) -> Transition:
    """Change how many certificates the batch may consume (admin): never below what the
    signer already issued for it, never above its device count."""
    with transaction(engine) as s:
        batch = _batch(s, batch_id)
        if batch.state.ended:
            raise _refuse(batch, "change the quota of", "an ended batch keeps its quota")
        if quota < batch.issued:
            raise InvalidInputError(
                f"quota {quota} is below the {batch.issued} certificate(s) already issued "
                f"for batch {batch_id}"
            )
        if not 1 <= quota <= batch.count:
            raise InvalidInputError(
                f"quota must be between 1 and the batch's count ({batch.count}), got {quota}"
            )
        old = batch.quota if batch.quota is not None else batch.count
        batch.quota = quota
        s.add(batch)
        _audit(s, batch, "batch.quota_changed", actor, old=old, new=quota, issued=batch.issued)
        return _done(batch, detail={"old": old, "new": quota})


def retry(
    engine: Engine, batch_id: int, *, actor: str, which: list[str] | None = None
) -> Transition:
    """Clear the failure of failed devices (all of them, or those named by device id or
    chip serial) so they run again from their last step; each retry is audited. Returns
    the devices to queue (none while the batch is paused: resume queues them)."""
    with transaction(engine) as s:
        batch = _batch(s, batch_id)
        if batch.state not in (BatchState.RUNNING, BatchState.PAUSED):
            hint = (
                f"start it first: `provisioner batch start {batch_id}`"
                if batch.state is BatchState.CREATED
                else "an ended batch never runs again"
            )
            raise _refuse(batch, "retry devices of", hint)
        devices = _named_devices(s, batch_id, which) if which else _all_failed(s, batch_id)
        if not devices:
            raise ConflictError(f"batch {batch_id} has no failed device to retry")
        for d in devices:
            _check_retryable(d)
        for d in devices:
            chain.append(
                s,
                "device.retry",
                actor=actor,
                station_id=batch.station_id,
                socket=d.socket,
                batch_id=batch_id,
                device_id=d.id,
                chip_serial=d.chip_serial,
                payload={"step": d.step.name, "previous_error": d.error, "part": d.action},
            )
            d.error, d.action = None, None
            d.attempts += 1
            d.updated_at = utcnow()
            s.add(d)
        queue = [d.id for d in devices if d.id is not None]
        running = batch.state is BatchState.RUNNING
        return _done(batch, queue if running else [])


def _all_failed(s: Session, batch_id: int) -> list[Device]:
    return list(
        s.exec(
            select(Device)
            .where(
                Device.batch_id == batch_id,
                col(Device.error).is_not(None),
                col(Device.step) < Step.CERT_VERIFIED,
            )
            .order_by(col(Device.position))
        ).all()
    )


def _named_devices(s: Session, batch_id: int, which: list[str]) -> list[Device]:
    """Devices named by id or chip serial, every one of them in this batch."""
    out: list[Device] = []
    for name in which:
        name = name.strip()
        if name.isdigit() and len(name) < _SERIAL_LEN:
            dev = s.get(Device, int(name))
        elif len(name) == _SERIAL_LEN and all(c in "0123456789abcdefABCDEF" for c in name):
            dev = s.exec(select(Device).where(Device.chip_serial == name.upper())).first()
        else:
            raise InvalidInputError(
                f"{name[:40]!r} is neither a device id nor an 18-digit hex chip serial"
            )
        if dev is None or dev.batch_id != batch_id:
            raise NotFoundError(f"batch {batch_id} has no device {name}")
        if dev not in out:
            out.append(dev)
    return out


def _check_retryable(d: Device) -> None:
    who = f"device {d.id}" + (f" (chip {d.chip_serial})" if d.chip_serial else "")
    if d.step == Step.DONE:
        raise ConflictError(f"{who} is done: nothing to retry")
    if d.cancelled_at is not None:
        raise ConflictError(f"{who} was released by a cancel")
    if d.error is None:
        raise ConflictError(f"{who} has not failed")
    if d.step >= Step.CERT_VERIFIED:
        raise ConflictError(
            f"{who} is provisioned; its registry upload failed ({d.error}): resolve it in the "
            "registry, then `provisioner registry sync`"
        )


def count_devices(s: Session, *where: object) -> int:
    """How many devices match ``where`` (one COUNT in the database)."""
    return int(s.exec(select(func.count()).select_from(Device).where(*where)).one())  # type: ignore[arg-type]
