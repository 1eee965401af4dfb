"""``provisioner station ...``: what is in the jig."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from provisioner.cli.context import ctx_of
from provisioner.station import probe

app = typer.Typer(help="Inspect a station's sockets.", no_args_is_help=True)


@app.command("probe")
def probe_cmd(
    ctx: typer.Context,
    station: str = typer.Option("line1", "--station", "-s", help="Station id from the config."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """For each socket: chip present, serial, revision, config/data lock, key slot valid.

    Reads only. On silicon, stop the station's worker first (it owns the bus)."""
    c = ctx_of(ctx)
    c.require("station.probe")
    reports = probe(c.settings, station)
    if as_json:
        typer.echo(json.dumps([r.as_json() for r in reports]))
        return
    t = Table(title=f"station {station}")
    for col in ("socket", "chip", "serial", "revision", "config", "data", "key"):
        t.add_column(col)

    def lock(v: bool | None) -> str:
        return "" if v is None else ("locked" if v else "unlocked")

    for r in reports:
        t.add_row(
            str(r.socket),
            ("present" if r.present else "empty") + (f" [red]{r.error}" if r.error else ""),
            r.serial or "",
            r.revision or "",
            lock(r.config_locked),
            lock(r.data_locked),
            "" if r.key_valid is None else ("valid" if r.key_valid else "none"),
        )
    Console().print(t)
