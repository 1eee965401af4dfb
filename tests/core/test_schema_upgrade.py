"""A database an older release made (before migrations, and before issue 13's columns and
batch states) is refused at start and completed by ``provisioner db upgrade``: the missing
table, the nullable and server-defaulted columns, indexes and, on PostgreSQL, the labels of native
enum types (the batch states paused, finished_with_failures and cancelled) are added,
the rows kept, and the result equals what a new database gets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from provisioner.audit import triggers
from provisioner.db import migrate
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.migrations.schema_0001 import METADATA as SCHEMA_0001
from provisioner.db.models import Batch, BatchState, Device
from provisioner.errors import SchemaMismatchError

T0 = datetime(2024, 11, 5, 8, 30, tzinfo=UTC)
_LATER_COLUMNS = {
    "batch": {"quota", "issued"},
    "device": {"claimed_by", "claimed_until", "cancelled_at"},
}


def _release_12(c: sa.Connection) -> None:
    """The schema as an early release's create_all left it: no device_block table, fewer
    columns and indexes, three batch states (PostgreSQL keeps labels in the enum type)."""
    if c.dialect.name == "postgresql":
        c.exec_driver_sql("CREATE TYPE batchstate AS ENUM ('CREATED', 'RUNNING', 'FINISHED')")
    SCHEMA_0001.create_all(c)  # checkfirst: the type above stays as it is
    c.exec_driver_sql("DROP TABLE device_block")
    c.exec_driver_sql("DROP INDEX ix_device_step")
    for table, columns in _LATER_COLUMNS.items():
        for column in sorted(columns):
            c.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
    triggers.install(c)


def test_database_of_an_older_release_is_completed_by_db_upgrade(db_url: str) -> None:
    engine = make_engine(db_url)
    with engine.begin() as c:
        _release_12(c)
        for sql in (
            "INSERT INTO station (id, created_at) VALUES ('line1', :t)",
            "INSERT INTO batch (id, station_id, count, state, created_by, created_at) "
            "VALUES (1, 'line1', 1, 'RUNNING', 'operator:alice', :t)",
            "INSERT INTO device (id, batch_id, position, step, attempts, updated_at) "
            "VALUES (1, 1, 0, 20, 0, :t)",
        ):
            c.execute(sa.text(sql), {"t": T0})
    with pytest.raises(SchemaMismatchError, match="provisioner db upgrade"):
        create_schema(engine)

    assert migrate.upgrade(db_url) == ("0001", migrate.HEAD)

    with engine.connect() as c:
        mc = MigrationContext.configure(c, opts={"compare_type": True})
        assert compare_metadata(mc, SQLModel.metadata) == []
    create_schema(engine)
    with transaction(engine) as s:
        batch = s.get(Batch, 1)
        device = s.get(Device, 1)
        assert batch is not None and device is not None
        assert (batch.state, batch.issued, batch.quota) == (BatchState.RUNNING, 0, None)
        assert device.step == 20 and device.cancelled_at is None
        batch.state = BatchState.PAUSED  # a label the old enum type lacked
        s.add(Batch(id=2, station_id="line1", count=1, created_by="t", state=BatchState.CANCELLED))
    if engine.dialect.name == "postgresql":
        with engine.connect() as c:
            labels = (
                c.exec_driver_sql(
                    "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid "
                    "WHERE t.typname = 'batchstate' ORDER BY e.enumsortorder"
                )
                .scalars()
                .all()
            )
        assert labels[:3] == ["CREATED", "RUNNING", "FINISHED"]
        assert {"PAUSED", "FINISHED_WITH_FAILURES", "CANCELLED"} <= set(labels)
    assert migrate.upgrade(db_url) == (migrate.HEAD, migrate.HEAD)  # idempotent


def test_a_required_column_that_cannot_be_added_is_refused(db_url: str) -> None:
    """A NOT NULL column without a default cannot be invented: this is not our database
    (or not one this product ever made); nothing is changed."""
    engine = make_engine(db_url)
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE station (id VARCHAR(64) PRIMARY KEY)")
    with pytest.raises(SchemaMismatchError, match="station lacks column created_at"):
        migrate.upgrade(db_url)
    with engine.connect() as c:
        assert MigrationContext.configure(c).get_current_heads() == ()
        assert sa.inspect(c).get_table_names() == ["station"]
