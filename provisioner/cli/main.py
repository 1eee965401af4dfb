"""Entry point of the ``provisioner`` command.

Expected failures (:class:`~provisioner.errors.ProvisionerError`) print one line to stderr
and exit non-zero; tracebacks are shown only for bugs, and never with local variables (they
could hold a PIN).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from provisioner.cli import (
    audit,
    batch,
    ca,
    db,
    device,
    events,
    fleet,
    line,
    logs,
    manifest,
    manufacturer,
    ocsp,
    registry,
    report,
    services,
    station,
    users,
)
from provisioner.cli.context import CliContext
from provisioner.errors import ProvisionerError
from provisioner.private_files import private_umask

app = typer.Typer(
    help="Factory provisioning of ATECC608A/B secure elements: on-chip keys, certificates "
    "from an HSM-held CA, cloud registry upload and a tamper-evident audit trail.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


@app.callback()
def _root(
    ctx: typer.Context,
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="TOML config file (default: $PROVISIONER_CONFIG, else ./provisioner.toml, "
        "else embedded defaults under ./var).",
        envvar="PROVISIONER_CONFIG",
    ),
    token_file: Path | None = typer.Option(
        None,
        "--token-file",
        help="File holding your user token (never pass a token itself). Needed once the "
        "installation has user accounts; before that the CLI acts as the local admin.",
        envvar="PROVISIONER_TOKEN_FILE",
    ),
) -> None:
    ctx.obj = CliContext(config=config, token_file=token_file)


app.add_typer(batch.app, name="batch")
app.add_typer(ca.app, name="ca")
app.add_typer(audit.app, name="audit")
app.add_typer(services.app, name="services")
app.add_typer(station.app, name="station")
app.add_typer(users.app, name="users")
app.add_typer(db.app, name="db")
app.add_typer(registry.app, name="registry")
app.add_typer(manifest.app, name="manifest")
app.add_typer(line.app, name="line")
app.add_typer(logs.app, name="logs")
app.add_typer(report.app, name="report")
app.add_typer(events.app, name="events")
app.add_typer(device.app, name="device")
app.add_typer(fleet.app, name="fleet")
app.add_typer(ocsp.app, name="ocsp")
app.add_typer(manufacturer.app, name="manufacturer")
app.command("demo")(services.demo)


def main() -> None:
    """Console-script entry: run the app, turning expected errors into one line. Every
    file and directory this process and its children (the supervisor's services) create
    is private to this OS user (umask 077)."""
    private_umask()
    try:
        app()
    except ProvisionerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
