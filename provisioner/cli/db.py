"""``provisioner db ...``: the database schema, upgraded explicitly.

Every service and command refuses a database whose schema is older or newer than the
software (and says so); ``db upgrade`` is the one thing that changes the schema. It runs on
the line server, by whoever holds the database (its URL and credentials are the gate), with
the services stopped. It asks for no user token: a token is checked against tables of the
very schema being upgraded, and authenticating could not give more than the database
credentials already do. The upgrade itself is audited (``db.upgraded``, actor
``admin:<OS user>``).
"""

from __future__ import annotations

import getpass

import typer

from provisioner.cli.context import ctx_of
from provisioner.db import migrate
from provisioner.errors import ConfigError, SchemaMismatchError

app = typer.Typer(
    help="Database schema: show its revision, upgrade it after installing new software "
    "(line server; services stopped).",
    no_args_is_help=True,
)


def _database_url(ctx: typer.Context) -> str:
    settings = ctx_of(ctx).settings
    if settings.role == "station":
        raise ConfigError(
            "this PC is a station (role = station): it holds no database; run `provisioner "
            "db ...` on the line server"
        )
    return settings.db_url


@app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Bring the database to the schema of this software, in one transaction. Idempotent:
    a database already there is left alone. An empty database is created; one made before
    migrations existed is adopted as revision 0001 first. Stop the services first; back up
    the database before upgrading a production line (docs/deploy.md)."""
    before, after = migrate.upgrade(_database_url(ctx), actor=f"admin:{getpass.getuser()}")
    if before == after:
        typer.echo(f"database already at revision {after}: nothing to do")
    elif before is None:
        typer.echo(f"empty database created at revision {after}")
    else:
        typer.echo(f"database upgraded from revision {before} to {after}")


@app.command("current")
def current(ctx: typer.Context) -> None:
    """Show the database's schema revision and the one this software needs. Exit 0 when
    they are equal; otherwise exit 2 and say what to run."""
    url = _database_url(ctx)
    found = migrate.current(url)
    need = migrate.head()
    typer.echo(f"database: {found or 'empty (no schema)'}")
    typer.echo(f"software: {need}")
    if found == need:
        return
    if found is None or found in migrate.known_revisions():
        raise SchemaMismatchError(
            f"the database is not at revision {need}: stop the services and run "
            f"`{migrate.UPGRADE_COMMAND}`"
        )
    raise SchemaMismatchError(
        f"the database is at revision {found}, which this software does not know: this "
        "software is older than the database: upgrade the software"
    )
