"""``provisioner station ...``: what is in the jig, what each socket is doing, and (emulated
jigs) putting chips in and taking them out."""

from __future__ import annotations

import json
from datetime import datetime

import typer
from rich.console import Console
from rich.table import Table

from provisioner import socket_state
from provisioner.cli.context import ctx_of
from provisioner.db.models import utcnow
from provisioner.station import insert_chip, probe, remove_chip

app = typer.Typer(
    help="A station's sockets: status, probe, insert and remove.", no_args_is_help=True
)

_STATION = typer.Option("line1", "--station", "-s", help="Station id from the config.")
_SOCKET = typer.Option(..., "--socket", "-n", help="Socket number (0-based).")
_JSON = typer.Option(False, "--json", help="Print JSON for scripts.")


@app.command("probe")
def probe_cmd(
    ctx: typer.Context,
    station: str = _STATION,
    as_json: bool = _JSON,
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


@app.command("status")
def status_cmd(
    ctx: typer.Context,
    station: str | None = typer.Option(
        None, "--station", "-s", help="Only this station (default: every station)."
    ),
    as_json: bool = _JSON,
) -> None:
    """What each socket is doing, as its worker last wrote it: busy (device, step), idle,
    insert_chip (what to put in, or take out first), failed (why, what to do with the part).

    Reads the database only: safe while the station runs."""
    c = ctx_of(ctx)
    c.require("station.status")
    if station is not None:
        c.settings.station(station)  # an unknown station is an error, not an empty table
    rows = socket_state.read(c.engine, station)
    now = utcnow()
    if as_json:
        typer.echo(
            json.dumps(
                [
                    socket_state.as_json(r) | {"age_s": round(_age_s(now, r.updated_at), 1)}
                    for r in rows
                ]
            )
        )
        return
    t = Table(title=f"station {station}" if station else "stations")
    for col in ("station", "socket", "state", "device", "chip", "detail", "age"):
        t.add_column(col)
    style = {"failed": "red", "insert_chip": "yellow", "busy": "cyan"}
    for r in rows:
        state = f"[{style[r.state]}]{r.state}" if r.state in style else r.state
        t.add_row(
            r.station_id,
            str(r.socket),
            state,
            "" if r.device_id is None else str(r.device_id),
            r.chip_serial or "",
            r.detail or "",
            f"{_age_s(now, r.updated_at):.0f}s",
        )
    if rows:
        Console().print(t)
    else:
        typer.echo("no socket has reported yet (is the station's worker running?)")


def _age_s(now: datetime, then: datetime) -> float:
    if then.tzinfo is None:  # SQLite hands back naive UTC
        then = then.replace(tzinfo=now.tzinfo)
    return max(0.0, (now - then).total_seconds())


@app.command("insert")
def insert_cmd(
    ctx: typer.Context,
    station: str = _STATION,
    socket: int = _SOCKET,
    serial: str | None = typer.Option(
        None, "--serial", help="A chip from the tray by serial (default: a factory-fresh one)."
    ),
) -> None:
    """Put a chip in an empty socket of an emulated station (what the operator does on a
    manually fed jig). Audited."""
    c = ctx_of(ctx)
    c.require("station.feed")
    got = insert_chip(c.engine, c.settings, station, socket, actor=c.actor, serial=serial)
    typer.echo(f"socket {socket} of {station}: chip {got} inserted")


@app.command("remove")
def remove_cmd(ctx: typer.Context, station: str = _STATION, socket: int = _SOCKET) -> None:
    """Take the chip out of a socket of an emulated station (it stays in the tray: `insert
    --serial` puts it back). Audited."""
    c = ctx_of(ctx)
    c.require("station.feed")
    got = remove_chip(c.engine, c.settings, station, socket, actor=c.actor)
    typer.echo(f"socket {socket} of {station}: chip {got} removed")
