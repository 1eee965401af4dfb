"""Alembic's environment: run the revisions on the connection
:mod:`provisioner.db.migrate` hands over (``config.attributes["connection"]``), inside that
caller's transaction, so an upgrade is applied whole or not at all on PostgreSQL and
nothing else writes meanwhile on SQLite (``BEGIN IMMEDIATE``).

Developers writing a revision use the same configuration, e.g.::

    from alembic import command
    from provisioner.db import migrate
    command.revision(migrate.config("sqlite:///var/dev.db"), "what changed",
                     autogenerate=True, rev_id="0003")

(the database must be at head first; then review and clean the generated file).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from provisioner.db import models  # noqa: F401  (registers the tables)
from provisioner.db.engine import make_engine


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # SQLite cannot ALTER most things: batch mode rewrites the table when it must.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported: run them on a database")
    given = context.config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database: set sqlalchemy.url (provisioner.db.migrate.config)")
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


_main()
