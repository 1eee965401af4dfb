"""Batch creation validates input and writes nothing on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func
from sqlmodel import select

from provisioner import batches
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditEvent, Batch, Device
from provisioner.errors import InvalidInputError, NotFoundError
from provisioner.settings import Settings


def _counts(engine: object) -> tuple[int, int, int]:
    with transaction(engine) as s:  # type: ignore[arg-type]
        return (
            s.exec(select(func.count()).select_from(Batch)).one(),
            s.exec(select(func.count()).select_from(Device)).one(),
            s.exec(select(func.count()).select_from(AuditEvent)).one(),
        )


def test_create_and_report(tmp_path: Path, db_url: str) -> None:
    settings = Settings(var_dir=tmp_path, database_url=db_url)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    bid = batches.create_batch(engine, settings, station_id="line1", count=3, actor="op")
    rep = batches.report(engine, bid)
    assert rep.count == 3 and rep.state == "created" and len(rep.devices) == 3
    assert rep.steps == {"PENDING": 3}
    assert _counts(engine) == (1, 3, 1)
    started = batches.mark_started(engine, bid, actor="op")
    assert len(started) == 3
    assert batches.report(engine, bid).state == "running"


@pytest.mark.parametrize("count", [0, -1, 100_001])
def test_bad_count_writes_nothing(tmp_path: Path, count: int) -> None:
    settings = Settings(var_dir=tmp_path)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    with pytest.raises(InvalidInputError, match="--count"):
        batches.create_batch(engine, settings, station_id="line1", count=count, actor="op")
    assert _counts(engine) == (0, 0, 0)


def test_unknown_station_writes_nothing(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    with pytest.raises(NotFoundError, match="unknown station 'nope'"):
        batches.create_batch(engine, settings, station_id="nope", count=2, actor="op")
    assert _counts(engine) == (0, 0, 0)


def test_unknown_batch(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    with pytest.raises(NotFoundError, match="batch 42 does not exist"):
        batches.report(engine, 42)
