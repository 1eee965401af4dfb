"""A database made by an older version gains what newer code declares: nullable columns
(SQLite and PostgreSQL) and, on PostgreSQL, the labels of native enum types (the batch
states paused, finished_with_failures and cancelled)."""

from __future__ import annotations

from sqlalchemy import text

from provisioner.db.engine import create_schema, make_engine
from tests import pg


def test_old_postgres_enum_gains_the_new_batch_states(postgres_url: str) -> None:
    url = pg.create_database(postgres_url)
    engine = make_engine(url)
    with engine.begin() as c:  # the type as the first release made it
        c.execute(text("CREATE TYPE batchstate AS ENUM ('CREATED', 'RUNNING', 'FINISHED')"))
    create_schema(engine)
    with engine.connect() as c:
        labels = [
            r[0]
            for r in c.execute(
                text(
                    "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid "
                    "WHERE t.typname = 'batchstate' ORDER BY e.enumsortorder"
                )
            )
        ]
    assert labels[:3] == ["CREATED", "RUNNING", "FINISHED"]
    assert {"PAUSED", "FINISHED_WITH_FAILURES", "CANCELLED"} <= set(labels)
    create_schema(engine)  # idempotent
