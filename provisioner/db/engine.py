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

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

from provisioner.db import models  # noqa: F401  (registers the tables)
from provisioner.errors import ServiceUnavailableError

_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    """Create an engine; for SQLite, create the parent directory and set up locking."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = create_engine(url, connect_args={"timeout": _BUSY_TIMEOUT_MS / 1000})
        _sqlite_locking(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def reader_of(engine: Engine) -> Engine:
    """An engine for reads that must never wait behind the line's writes, nor make them
    wait: public, unauthenticated lookups such as an OCSP status. On SQLite every
    transaction of :func:`make_engine` starts ``BEGIN IMMEDIATE`` (it takes the write lock,
    reads included), so a flood of such lookups would queue the line's writers; this one
    begins deferred (WAL readers see the last commit and take no lock) and is
    ``query_only``. On PostgreSQL reads never block writes: the engine itself is returned."""
    if engine.dialect.name != "sqlite":
        return engine
    reader = create_engine(engine.url, connect_args={"timeout": _BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(reader, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA query_only=ON")
        cur.close()

    @event.listens_for(reader, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return reader


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
    """Make sure the database has the schema this software expects, before using it.

    An empty database is created at the newest revision (tables, audit triggers, stamped);
    one at that revision costs one query; anything else (older, newer, made before
    migrations) raises :class:`~provisioner.errors.SchemaMismatchError` naming both
    revisions and the command to run. Schema changes are never made here: only
    ``provisioner db upgrade`` (:mod:`provisioner.db.migrate`) makes them."""
    # Imported here: migrate uses this module's make_engine.
    from provisioner.db import migrate

    try:
        if migrate.at_head(engine):
            return
        migrate.create_if_empty(engine)
    except OperationalError as exc:
        raise ServiceUnavailableError(
            f"cannot open the database {engine.url.render_as_string(hide_password=True)}: "
            f"{exc.orig}"
        ) from None


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
