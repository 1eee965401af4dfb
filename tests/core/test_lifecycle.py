"""The batch lifecycle on a real database (SQLite and PostgreSQL): each transition, what
it queues, what it audits, and every transition that makes no sense refused with nothing
written."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import select

from provisioner import batches
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import (
    AuditEvent,
    Batch,
    BatchState,
    Device,
    PartAction,
    Step,
    utcnow,
)
from provisioner.errors import ConflictError, InvalidInputError, NotFoundError
from provisioner.ledger import DeviceLedger
from provisioner.settings import Settings


@pytest.fixture
def line(tmp_path: Path, db_url: str) -> tuple[Engine, Settings]:
    settings = Settings(var_dir=tmp_path, database_url=db_url)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    return engine, settings


def _batch(line: tuple[Engine, Settings], count: int = 4, quota: int | None = None) -> int:
    engine, settings = line
    return batches.create_batch(
        engine, settings, station_id="line1", count=count, actor="operator:olga", quota=quota
    )


def _snapshot(engine: Engine) -> tuple[Any, ...]:
    """Everything a refused transition must leave as it was."""
    with transaction(engine) as s:
        events = s.exec(select(func.count()).select_from(AuditEvent)).one()
        b = [(x.id, x.state, x.quota, x.finished_at) for x in s.exec(select(Batch)).all()]
        d = [
            (x.id, x.step, x.error, x.action, x.cancelled_at, x.attempts)
            for x in s.exec(select(Device).order_by(Device.id)).all()  # type: ignore[arg-type]
        ]
    return events, b, d


def _refused(engine: Engine, exc: type[Exception], match: str, fn: Callable[[], object]) -> None:
    before = _snapshot(engine)
    with pytest.raises(exc, match=match):
        fn()
    assert _snapshot(engine) == before


def _events(engine: Engine, kind: str) -> list[AuditEvent]:
    with transaction(engine) as s:
        return list(s.exec(select(AuditEvent).where(AuditEvent.event_type == kind)).all())


def _set(engine: Engine, device_id: int, **fields: object) -> None:
    with transaction(engine) as s:
        d = s.get(Device, device_id)
        assert d is not None
        for k, v in fields.items():
            setattr(d, k, v)
        s.add(d)


def test_pause_resume_and_what_each_queues(line: tuple[Engine, Settings]) -> None:
    engine, _ = line
    bid = _batch(line)
    _refused(
        engine,
        ConflictError,
        "cannot pause batch .*created",
        lambda: batches.pause(engine, bid, actor="o"),
    )
    ids = batches.mark_started(engine, bid, actor="o")
    assert len(ids) == 4
    # One device is in a socket right now, one failed: neither is queued again.
    _set(engine, ids[0], claimed_by="line1:0:1", claimed_until=utcnow() + timedelta(minutes=2))
    DeviceLedger(engine, "station:line1", "line1", 1).fail(ids[1], "no answer", PartAction.REINSERT)
    t = batches.pause(engine, bid, actor="o")
    assert t.state is BatchState.PAUSED and t.queue == ()
    _refused(engine, ConflictError, "paused", lambda: batches.pause(engine, bid, actor="o"))
    _refused(engine, ConflictError, "resume it", lambda: batches.start(engine, bid, actor="o"))
    t = batches.resume(engine, bid, actor="o")
    assert t.state is BatchState.RUNNING and list(t.queue) == ids[2:]
    assert [e.event_type for e in _events(engine, "batch.paused")] == ["batch.paused"]
    assert len(_events(engine, "batch.resumed")) == 1


def test_cancel_releases_unstarted_devices_only_and_is_final(
    line: tuple[Engine, Settings],
) -> None:
    engine, _ = line
    bid = _batch(line, quota=3)
    ids = batches.mark_started(engine, bid, actor="o")
    _set(engine, ids[0], step=Step.CERT_ISSUED)  # its certificate exists: it finishes
    _set(engine, ids[1], claimed_by="line1:1:1", claimed_until=utcnow() + timedelta(minutes=2))
    t = batches.cancel(engine, bid, actor="o")
    assert t.state is BatchState.CANCELLED and t.detail == {"released": 2, "in_flight": 1}
    with transaction(engine) as s:
        released = {d.id for d in s.exec(select(Device)).all() if d.cancelled_at is not None}
    assert released == set(ids[2:])
    (ev,) = _events(engine, "batch.cancelled")
    assert '"quota_released":3' in ev.payload
    for fn in (batches.resume, batches.start, batches.pause, batches.cancel, batches.close):
        _refused(engine, ConflictError, "cancelled", lambda fn=fn: fn(engine, bid, actor="o"))
    _refused(engine, ConflictError, "ended", lambda: batches.set_quota(engine, bid, 3, actor="a"))
    # A device finishing after the cancel does not turn the batch into "finished".
    for d in ids:
        _set(engine, d, step=Step.DONE)
    with transaction(engine) as s:
        from provisioner.ledger import _finish_batch_if_complete

        _finish_batch_if_complete(s, bid, "registry-uploader")
    assert batches.summary(engine, bid).state == "cancelled"


def test_close_needs_failures_and_nothing_in_flight(line: tuple[Engine, Settings]) -> None:
    engine, _ = line
    bid = _batch(line, count=3)
    ids = batches.mark_started(engine, bid, actor="o")
    _refused(
        engine,
        ConflictError,
        "3 device.* neither provisioned nor failed",
        lambda: batches.close(engine, bid, actor="o"),
    )
    ledger = DeviceLedger(engine, "station:line1", "line1", 0)
    _set(engine, ids[0], step=Step.DONE)
    _set(engine, ids[1], step=Step.CERT_VERIFIED)  # waits for its upload: not in the way
    ledger.fail(ids[2], "chip locked by someone else", PartAction.REJECT)
    _set(engine, ids[2], claimed_by="x", claimed_until=utcnow() + timedelta(minutes=1))
    _refused(
        engine,
        ConflictError,
        "in a socket right now",
        lambda: batches.close(engine, bid, actor="o"),
    )
    _set(engine, ids[2], claimed_by=None, claimed_until=None)
    t = batches.close(engine, bid, actor="o")
    assert t.state is BatchState.FINISHED_WITH_FAILURES
    assert [(f["device_id"], f["action"]) for f in t.failed] == [(ids[2], "reject")]
    (ev,) = _events(engine, "batch.closed")
    assert f'"failed_devices":[{ids[2]}]' in ev.payload
    _refused(
        engine,
        ConflictError,
        "finished_with_failures",
        lambda: batches.retry(engine, bid, actor="o"),
    )


def test_close_without_failures_is_refused(line: tuple[Engine, Settings]) -> None:
    engine, _ = line
    bid = _batch(line, count=1)
    (d,) = batches.mark_started(engine, bid, actor="o")
    _set(engine, d, step=Step.CERT_VERIFIED)
    _refused(
        engine, ConflictError, "no failed device", lambda: batches.close(engine, bid, actor="o")
    )


def test_retry_failed_devices_each_audited(line: tuple[Engine, Settings]) -> None:
    engine, _ = line
    bid = _batch(line, count=4)
    ids = batches.mark_started(engine, bid, actor="o")
    ledger = DeviceLedger(engine, "station:line1", "line1", 0)
    _set(engine, ids[0], step=Step.DONE, chip_serial="0123AAAAAAAAAAAAEE")
    _set(engine, ids[1], chip_serial="0123BBBBBBBBBBBBEE")
    ledger.fail(ids[1], "no answer", PartAction.REINSERT)
    ledger.fail(ids[2], "no answer", PartAction.REINSERT)
    other = _batch(line, count=1)
    (foreign,) = batches.mark_started(engine, other, actor="o")

    def retry(*which: str) -> Callable[[], object]:
        return lambda: batches.retry(engine, bid, actor="o", which=list(which))

    _refused(engine, ConflictError, "is done: nothing to retry", retry(str(ids[0])))
    _refused(engine, ConflictError, "has not failed", retry(str(ids[3])))
    _refused(engine, NotFoundError, "has no device", retry("999999"))
    _refused(engine, NotFoundError, "has no device", retry(str(foreign)))
    _refused(engine, InvalidInputError, "neither a device id", retry("../../etc"))
    # A good name beside a bad one: nothing at all is retried.
    _refused(engine, ConflictError, "is done", retry(str(ids[1]), str(ids[0])))

    t = batches.retry(engine, bid, actor="o", which=["0123bbbbbbbbbbbbee"])
    assert list(t.queue) == [ids[1]]
    t = batches.retry(engine, bid, actor="o")
    assert list(t.queue) == [ids[2]]
    events = _events(engine, "device.retry")
    assert [e.device_id for e in events] == [ids[1], ids[2]]
    assert all('"part":"reinsert"' in e.payload for e in events)
    _refused(
        engine, ConflictError, "no failed device", lambda: batches.retry(engine, bid, actor="o")
    )


def test_quota_changes(line: tuple[Engine, Settings]) -> None:
    engine, _ = line
    bid = _batch(line, count=4)
    batches.mark_started(engine, bid, actor="o")
    with transaction(engine) as s:
        b = s.get(Batch, bid)
        assert b is not None
        b.issued = 2
        s.add(b)
    _refused(
        engine,
        InvalidInputError,
        "below the 2 certificate",
        lambda: batches.set_quota(engine, bid, 1, actor="a"),
    )
    _refused(
        engine,
        InvalidInputError,
        "between 1 and the batch's count",
        lambda: batches.set_quota(engine, bid, 5, actor="a"),
    )
    t = batches.set_quota(engine, bid, 3, actor="admin:ada")
    assert t.detail == {"old": 4, "new": 3}
    (ev,) = _events(engine, "batch.quota_changed")
    assert ev.actor == "admin:ada" and '"new":3' in ev.payload


def test_unknown_batch_everywhere(line: tuple[Engine, Settings]) -> None:
    engine, _ = line
    for fn in (batches.pause, batches.resume, batches.cancel, batches.close, batches.retry):
        _refused(
            engine,
            NotFoundError,
            "batch 77 does not exist",
            lambda fn=fn: fn(engine, 77, actor="o"),
        )
    _refused(engine, NotFoundError, "batch 77", lambda: batches.set_quota(engine, 77, 1, actor="a"))


def test_summary_groups_failures_and_pages_devices(line: tuple[Engine, Settings]) -> None:
    engine, _ = line
    bid = _batch(line, count=6)
    ids = batches.mark_started(engine, bid, actor="o")
    ledger = DeviceLedger(engine, "station:line1", "line1", 0)
    for d in ids[:3]:
        ledger.fail(d, "chip provisioned elsewhere", PartAction.REJECT)
    ledger.fail(ids[3], "no answer", PartAction.REINSERT)
    _set(engine, ids[4], step=Step.DONE)
    rep = batches.summary(engine, bid)
    assert (rep.failed, rep.done, rep.remaining, rep.count) == (4, 1, 1, 6)
    assert [(f.reason, f.action, f.count) for f in rep.failures] == [
        ("chip provisioned elsewhere", "reject", 3),
        ("no answer", "reinsert", 1),
    ]
    failed = batches.device_page(engine, bid, batches.DeviceQuery(failed=True, limit=2))
    assert [d.device_id for d in failed] == ids[:2] and all(d.status == "failed" for d in failed)
    nxt = batches.device_page(engine, bid, batches.DeviceQuery(failed=True, offset=2, limit=2))
    assert [d.device_id for d in nxt] == ids[2:4]
    done = batches.device_page(engine, bid, batches.DeviceQuery(step=Step.DONE))
    assert [d.device_id for d in done] == [ids[4]]
    with pytest.raises(InvalidInputError, match="unknown step"):
        batches.DeviceQuery.parse_step("sideways")
    with pytest.raises(InvalidInputError, match="limit"):
        batches.DeviceQuery(limit=5000)
