"""``provisioner station ...``: what is in the jig, what each socket is doing, and (emulated
jigs) putting chips in and taking them out; and station identity: admitting a station PC
(``add``), enrolling it (``enroll``, on the station PC), cutting it off (``revoke``)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from provisioner import socket_state
from provisioner.cli.context import ctx_of
from provisioner.cli.secret_files import write_new_secret
from provisioner.db.models import aware, utcnow
from provisioner.enrollment import identity
from provisioner.enrollment.service import (
    LinePaths,
    list_identities,
    revoke_station,
)
from provisioner.enrollment.tokens import DEFAULT_TTL_S, add_station
from provisioner.errors import ConfigError
from provisioner.station import emulated_manufacturer_root, insert_chip, probe, remove_chip

app = typer.Typer(
    help="A station's sockets (status, probe, insert, remove) and station PCs' identities "
    "(add, enroll, revoke, identities).",
    no_args_is_help=True,
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
    part: str | None = typer.Option(
        None,
        "--part",
        help="A new pre-provisioned part instead of a blank chip: trust-and-go (answers at "
        "I2C 0x6A) or trustflex (0x6C), certified by the emulated line's manufacturer "
        "(not Microchip's), for a batch created with --mode preprovisioned.",
    ),
) -> None:
    """Put a chip in an empty socket of an emulated station (what the operator does on a
    manually fed jig). Audited."""
    c = ctx_of(ctx)
    c.require("station.feed")
    got = insert_chip(
        c.engine, c.settings, station, socket, actor=c.actor, serial=serial, part=part
    )
    typer.echo(f"socket {socket} of {station}: {part or 'chip'} {got} inserted")
    if part is not None:
        root = emulated_manufacturer_root(c.settings)
        typer.echo(
            f"its manufacturer is the emulated line's (root {root}); the line accepts its "
            "parts once an admin ran `provisioner manufacturer trust --emulated`"
        )


@app.command("remove")
def remove_cmd(ctx: typer.Context, station: str = _STATION, socket: int = _SOCKET) -> None:
    """Take the chip out of a socket of an emulated station (it stays in the tray: `insert
    --serial` puts it back). Audited."""
    c = ctx_of(ctx)
    c.require("station.feed")
    got = remove_chip(c.engine, c.settings, station, socket, actor=c.actor)
    typer.echo(f"socket {socket} of {station}: chip {got} removed")


# --- station identity: enrollment on the line server and on the station PC ---------------


@app.command("add")
def add_cmd(
    ctx: typer.Context,
    station_id: str = typer.Argument(..., help="The station's id (e.g. line2)."),
    ttl: int = typer.Option(
        DEFAULT_TTL_S, "--ttl", help="How long the token stays valid, in seconds (default a day)."
    ),
    token_out: Path | None = typer.Option(
        None,
        "--token-out",
        help="Write the token to this file (created 0600; must not exist) instead of printing it.",
    ),
) -> None:
    """Admit a station PC to the line (admin, on the line server): prints a one-time
    enrollment token, once, and the command to run on the station PC.

    Adding a station again makes a new token and spends its older unused ones (to
    re-enroll a replaced PC). Audited."""
    c = ctx_of(ctx)
    who = c.require("station.manage")
    if token_out is not None and token_out.exists():
        raise ConfigError(f"{token_out} exists; choose a new file for the token")
    until = utcnow() + timedelta(seconds=ttl)
    token = add_station(c.engine, station_id, who.actor, ttl)
    enroll = (
        f"provisioner station enroll --station {station_id} "
        f"--token-file {token_out or f'{station_id}.token'} --line-url {c.settings.api_url}"
    )
    if token_out is not None:
        write_new_secret(token_out, token)
        typer.echo(
            f"station {station_id}: one-time enrollment token written to {token_out} "
            f"(valid until {until:%Y-%m-%d %H:%M} UTC)"
        )
        typer.echo(f"copy it to the station PC (0600) and run there:\n  {enroll}")
    else:
        typer.echo(
            f"station {station_id}: one-time enrollment token, valid until "
            f"{until:%Y-%m-%d %H:%M} UTC (shown only now):\n\n  {token}\n"
        )
        typer.echo(
            f"on the station PC, save it in a file only you can read (e.g. {station_id}.token, "
            f"chmod 600) and run:\n  {enroll}"
        )
    if station_id not in c.settings.stations:
        typer.echo(
            f"note: {station_id} is not under [stations.{station_id}] in this line server's "
            "config: add it before creating batches for it"
        )
    if not LinePaths.of(c.settings).certificate.exists():
        typer.echo(
            "note: this line server has no identity yet; before the station enrolls run "
            "`provisioner line identity --name HOST` (HOST: how stations reach this server)"
        )


@app.command("enroll")
def enroll_cmd(
    ctx: typer.Context,
    token_file: Path | None = typer.Option(
        None,
        "--token-file",
        help="File holding the enrollment token from `station add` (default: typed at a "
        "hidden prompt). Never the token itself.",
    ),
    station_id: str | None = typer.Option(
        None, "--station", "-s", help="This station's id (default: station_id in the config)."
    ),
    line_url: str | None = typer.Option(
        None,
        "--line-url",
        help="The line server's API, e.g. https://line.example:8712 (default: line_url in "
        "the config).",
    ),
    ca_file: Path | None = typer.Option(
        None, "--ca-file", help="CA certificate(s) to verify the line's HTTPS API with."
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace this PC's existing station identity."
    ),
) -> None:
    """Enroll this PC as a station (on the station PC): generate its key here, send a CSR
    with the one-time token, and keep the certificate, pinned CA chain, the line server's
    certificate and the broker password in the identity directory.

    Needs no database and no user account: the token is the credential."""
    c = ctx_of(ctx)  # no user token: the station PC has no accounts; the token authorises
    settings = c.settings
    sid = station_id or settings.station_id
    if sid is None:
        raise ConfigError(
            "which station is this PC? pass --station ID or set station_id in the config"
        )
    if token_file is not None:
        token = identity.read_token_file(token_file)
    else:
        token = identity.check_token(typer.prompt("Enrollment token", hide_input=True))
    url = line_url or settings.enroll_url
    folder = identity.enroll(settings, sid, token, url, force=force, ca_file=ca_file)
    del token
    files = identity.StationIdentityFiles(folder)
    cert = files.certificate()
    info = files.enrollment()
    typer.echo(f"station {sid} enrolled with the line server at {url}")
    typer.echo(f"  identity     {folder}")
    typer.echo(f"  certificate  serial {cert.serial_number:x}")
    typer.echo(f"               valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    typer.echo(
        f"  broker       {info['broker_mode']} {info['broker_host']}:{info['broker_port']} "
        f"as user st-{sid}"
    )
    if settings.role != "station" or settings.station_id != sid:
        typer.echo(f'set role = "station" and station_id = "{sid}" in this PC\'s config, then')
    typer.echo("next: provisioner services run --role station")


@app.command("revoke")
def revoke_cmd(
    ctx: typer.Context,
    station_id: str = typer.Argument(..., help="The station to cut off."),
) -> None:
    """Cut a station PC off (admin, on the line server): its certificates are revoked, its
    broker user removed and its open broker connections closed, its unused enrollment
    tokens spent. Audited. To bring it back: `station add` and enroll again."""
    c = ctx_of(ctx)
    who = c.require("station.manage")
    done = revoke_station(c.settings, c.engine, station_id, who.actor)
    if done.serials:
        typer.echo(
            f"station {station_id}: {len(done.serials)} certificate(s) revoked "
            f"(serial {', '.join(done.serials)})"
        )
    else:
        typer.echo(f"station {station_id}: no unrevoked certificate")
    if done.had_broker_user:
        typer.echo(f"  broker user st-{station_id} removed; its connections closed")
    if done.cancelled_tokens:
        typer.echo(f"  {done.cancelled_tokens} unused enrollment token(s) cancelled")


@app.command("identities")
def identities_cmd(
    ctx: typer.Context,
    station: str | None = typer.Option(None, "--station", "-s", help="Only this station."),
    as_json: bool = _JSON,
) -> None:
    """Station certificates issued at enrollment: station, serial, expiry, revoked."""
    c = ctx_of(ctx)
    c.require("station.identities")
    rows = list_identities(c.engine, station)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "station": r.station_id,
                        "serial": r.serial_number,
                        "fingerprint_sha256": r.fingerprint_sha256,
                        "issued_at": _iso(r.issued_at),
                        "not_after": _iso(r.not_after),
                        "revoked_at": None if r.revoked_at is None else _iso(r.revoked_at),
                        "revoked_by": r.revoked_by,
                    }
                    for r in rows
                ]
            )
        )
        return
    if not rows:
        typer.echo("no station has enrolled yet (`provisioner station add ID`, then enroll)")
        return
    typer.echo(f"{'STATION':<16} {'SERIAL':<34} {'NOT_AFTER':<17} REVOKED")
    for r in rows:
        revoked = "" if r.revoked_at is None else f"{aware(r.revoked_at):%Y-%m-%d %H:%M} by "
        typer.echo(
            f"{r.station_id:<16} {r.serial_number:<34} {aware(r.not_after):%Y-%m-%d %H:%M}  "
            f"{revoked + (r.revoked_by or '') if r.revoked_at else '-'}"
        )


def _iso(dt: datetime) -> str:
    return aware(dt).strftime("%Y-%m-%dT%H:%M:%SZ")
