"""Schema revisions of the product database, through Alembic configured in code.

The revisions live in the package (:mod:`provisioner.db.migrations`), so whatever installed
the software can upgrade its database: ``provisioner db upgrade`` (:func:`upgrade`). Every
other process only checks: :func:`check_schema` (through
:func:`provisioner.db.engine.create_schema`) refuses a database older or newer than this
software, naming both revisions and the command to run, and changes nothing. Schema changes
are therefore an explicit step of an upgrade, done once, by the person holding the database,
with the services stopped; never a side effect of whichever process starts first.

A database made before migrations existed (the tables, no ``alembic_version``) counts as
revision 0001: :func:`upgrade` completes it against the frozen 0001 schema (columns and enum
labels that releases before issue 13 lacked), stamps it 0001, then upgrades it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Enum as SaEnum
from sqlalchemy import inspect
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlmodel import Session, SQLModel

from provisioner.audit import chain, triggers
from provisioner.db.migrations import schema_0001
from provisioner.errors import SchemaMismatchError, ServiceUnavailableError

# The revision this software expects. A constant so the check every process makes at start
# is one query without loading the revision files; a test holds it equal to :func:`head`.
HEAD = "0006"

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
UPGRADE_COMMAND = "provisioner db upgrade"

# Serialises upgrades and first-time creation across processes (PostgreSQL; SQLite's
# BEGIN IMMEDIATE already does).
_PG_LOCK_KEY = 0x6D696772  # "migr"


class Unversioned(enum.Enum):
    """What a database without a stored revision holds."""

    EMPTY = "empty"  # none of our tables: created at head on first use
    PRE_MIGRATIONS = "pre-migrations"  # our tables, made before Alembic: counts as 0001


Stored = str | Unversioned


def config(url: str | None = None, connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code (no alembic.ini): the packaged revisions and either
    a database URL or an open connection to run in (its transaction is used)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal "%" in a password must be doubled.
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    """The newest revision of the packaged migrations."""
    rev = scripts().get_current_head()
    assert rev is not None, "no revision files in provisioner/db/migrations/versions"
    return rev


def current(url: str) -> str | None:
    """The database's revision; None for an empty database, "0001" for one made before
    migrations existed."""
    with _engine(url) as engine, engine.connect() as conn:
        return _as_revision(stored_revision(conn))


def upgrade(url: str, *, actor: str | None = None) -> tuple[str | None, str]:
    """Bring the database at ``url`` to :func:`head` in one transaction; returns (from, to).

    Idempotent: a database at head is left alone. A newer (unknown) revision raises
    :class:`SchemaMismatchError`. With ``actor``, a change is appended to the audit trail
    (``db.upgraded``) in the same transaction."""
    target = head()
    with _engine(url) as engine:
        with engine.begin() as conn:
            _lock(conn)
            found = stored_revision(conn)
            if isinstance(found, str) and found not in known_revisions():
                raise _mismatch(found, engine)
            if found is Unversioned.PRE_MIGRATIONS:
                _complete_pre_migrations(conn)
                MigrationContext.configure(conn).stamp(scripts(), "0001")
            before = _as_revision(found)
            if before == target:
                return before, target
            command.upgrade(config(connection=conn), "head")
            if actor is not None:
                with Session(bind=conn) as session:
                    chain.append(
                        session, "db.upgraded", actor=actor, payload={"from": before, "to": target}
                    )
                    session.flush()
        return before, target


@contextmanager
def _engine(url: str) -> Iterator[Engine]:
    """An engine for one command; a database that cannot be reached (or refuses the
    login) is a ServiceUnavailableError, not a traceback."""
    from provisioner.db.engine import make_engine  # engine.create_schema imports this module

    engine = make_engine(url)
    try:
        yield engine
    except OperationalError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise ServiceUnavailableError(f"database {where}: {exc.orig}") from None
    finally:
        engine.dispose()


def at_head(engine: Engine) -> bool:
    """Whether the database is at :data:`HEAD`: one query, what every process pays at start.
    An error (no version table yet, ...) answers False; the caller then looks closer."""
    with engine.connect() as conn:
        try:
            rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        except DBAPIError:
            return False
    return [r[0] for r in rows] == [HEAD]


def check_schema(engine: Engine) -> None:
    """Raise :class:`SchemaMismatchError` unless the database is at :data:`HEAD`."""
    if at_head(engine):
        return
    with engine.connect() as conn:
        found = stored_revision(conn)
    if found != HEAD:
        raise _mismatch(found, engine)


def create_if_empty(engine: Engine) -> None:
    """An empty database gets the schema of :data:`HEAD` at once (tables as the models
    declare them, the audit triggers, stamped head: what upgrading from nothing gives, which
    the tests compare); any other database must already be at head.

    Under the migration lock, so several processes starting together create it once."""
    with engine.begin() as conn:
        _lock(conn)
        found = stored_revision(conn)
        if found is Unversioned.EMPTY:
            SQLModel.metadata.create_all(conn)
            triggers.install(conn)
            MigrationContext.configure(conn).stamp(scripts(), HEAD)
            return
    if found != HEAD:
        raise _mismatch(found, engine)


def stored_revision(conn: Connection) -> Stored:
    """The revision recorded in the database, or what an unversioned one holds."""
    heads = MigrationContext.configure(conn).get_current_heads()
    if heads:
        return ",".join(heads)
    ours = set(schema_0001.METADATA.tables)
    if ours & set(inspect(conn).get_table_names()):
        return Unversioned.PRE_MIGRATIONS
    return Unversioned.EMPTY


def _as_revision(found: Stored) -> str | None:
    if found is Unversioned.EMPTY:
        return None
    if found is Unversioned.PRE_MIGRATIONS:
        return "0001"
    return found


def known_revisions() -> set[str]:
    return {s.revision for s in scripts().walk_revisions()}


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")


def _mismatch(found: Stored, engine: Engine) -> SchemaMismatchError:
    where = f"database {engine.url.render_as_string(hide_password=True)}"
    stop_and_upgrade = f"stop the services and run `{UPGRADE_COMMAND}` (on the line server)"
    if found is Unversioned.EMPTY:
        return SchemaMismatchError(
            f"{where} is empty; this software needs revision {HEAD}: run `{UPGRADE_COMMAND}`"
        )
    if found is Unversioned.PRE_MIGRATIONS:
        return SchemaMismatchError(
            f"{where} was made before schema migrations (revision 0001); this software needs "
            f"revision {HEAD}: {stop_and_upgrade}"
        )
    if found in known_revisions():
        return SchemaMismatchError(
            f"{where} is at schema revision {found}; this software needs revision {HEAD}: "
            f"{stop_and_upgrade}"
        )
    return SchemaMismatchError(
        f"{where} is at schema revision {found}, which this software does not know (its "
        f"newest is {HEAD}): this software is older than the database: upgrade the software"
    )


def _complete_pre_migrations(conn: Connection) -> None:
    """Give a database made before migrations everything revision 0001 has.

    Releases before issue 13 created tables with ``create_all`` and added new nullable
    columns at start, so an older database may lack tables, columns, indexes and
    (PostgreSQL) enum labels; all of them are additions, made here once, explicitly."""
    schema_0001.METADATA.create_all(conn)  # missing tables and enum types only
    insp = inspect(conn)
    ops = Operations(MigrationContext.configure(conn))
    for table in schema_0001.METADATA.sorted_tables:
        have = {c["name"] for c in insp.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable and column.server_default is None:
                raise SchemaMismatchError(
                    f"table {table.name} lacks column {column.name}, which cannot be added "
                    "without a value: this database was not made by this product"
                )
            ops.add_column(table.name, column._copy())
        indexes = {i["name"] for i in insp.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(conn)
    if conn.dialect.name == "postgresql":
        _add_enum_labels(conn)
    triggers.install(conn)


def _add_enum_labels(conn: Connection) -> None:
    """PostgreSQL fixes a native enum's labels when the type is made; batch states added
    later (paused, finished_with_failures, cancelled) are added to older types."""
    for table in schema_0001.METADATA.sorted_tables:
        for column in table.columns:
            kind = column.type
            if not isinstance(kind, SaEnum) or not kind.name:
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
