"""Engine and session factory for SQLite (default) and PostgreSQL.

SQLite is shared by several processes (CLI, station, signer and registry workers). Each
write transaction starts with ``BEGIN IMMEDIATE`` so writers queue on the database lock
instead of failing half-way with "database is locked"; WAL lets readers proceed meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Enum as SaEnum
from sqlalchemy import event, inspect
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, create_engine

from provisioner.audit import triggers
from provisioner.db import models  # noqa: F401  (registers the tables)
from provisioner.errors import ServiceUnavailableError

_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """Create an engine; for SQLite, create the parent directory and set up locking."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": _BUSY_TIMEOUT_MS / 1000})
        _sqlite_locking(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_locking(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy emit BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_schema(engine: Engine) -> None:
    """Create missing tables (idempotent). Migrations arrive with the first schema change."""
    try:
        SQLModel.metadata.create_all(engine)
        _add_missing_columns(engine)
        _add_missing_enum_values(engine)
        with engine.begin() as conn:
            triggers.install(conn)
    except OperationalError as exc:
        raise ServiceUnavailableError(
            f"cannot open the database {engine.url.render_as_string(hide_password=True)}: "
            f"{exc.orig}"
        ) from None


def _add_missing_columns(engine: Engine) -> None:
    """Add columns that newer code declares to tables an older version created.

    The schema only ever grows by nullable or server-defaulted columns, so ``ALTER TABLE
    ADD COLUMN`` is the whole migration; anything else would need a real migration tool."""
    with engine.begin() as conn:
        insp = inspect(conn)
        for table in SQLModel.metadata.sorted_tables:
            if not insp.has_table(table.name):
                continue
            have = {c["name"] for c in insp.get_columns(table.name)}
            for col in table.columns:
                if col.name in have:
                    continue
                ddl = col.type.compile(dialect=engine.dialect)
                default = col.server_default
                clause = f" DEFAULT {default.arg}" if default is not None else ""  # type: ignore[attr-defined]
                if not col.nullable and default is None:
                    raise ServiceUnavailableError(
                        f"table {table.name} lacks column {col.name}, which cannot be added "
                        "automatically: migrate the database"
                    )
                conn.exec_driver_sql(
                    f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {ddl}{clause}'
                )


def _add_missing_enum_values(engine: Engine) -> None:
    """PostgreSQL keeps enum columns (batch states, upload states...) as native enum types
    whose labels were fixed when the table was made; labels newer code declares (e.g. the
    batch states ``paused`` and ``cancelled``) are added to older databases. SQLite stores
    them as text and needs nothing."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            for column in table.columns:
                kind = column.type
                if not isinstance(kind, SaEnum) or not kind.native_enum or not kind.name:
                    continue
                have = {
                    row[0]
                    for row in conn.execute(
                        sql_text(
                            "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t "
                            "ON t.oid = e.enumtypid WHERE t.typname = :name"
                        ),
                        {"name": kind.name},
                    )
                }
                for label in kind.enums:
                    if label not in have:
                        conn.exec_driver_sql(
                            f"ALTER TYPE \"{kind.name}\" ADD VALUE IF NOT EXISTS '{label}'"
                        )
        conn.commit()


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on any exception."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
