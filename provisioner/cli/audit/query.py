"""``provisioner audit query`` and ``export``: reading the trail, page by page or whole."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from provisioner.audit import query, records
from provisioner.cli.audit.common import (
    ACTOR,
    BATCH,
    SERIAL,
    SINCE,
    STATION,
    TYPE,
    UNTIL,
    app,
)
from provisioner.cli.context import ctx_of
from provisioner.db.engine import transaction
from provisioner.db.models import AuditEvent
from provisioner.errors import ConfigError

LOCAL_TIME = typer.Option(
    False,
    "--local-time",
    help="Show times in this machine's local time zone instead of UTC "
    "(CSV: columns time_local and utc_offset instead of time_utc).",
)


def _where(e: AuditEvent) -> str:
    return " ".join(
        f"{k}={v}"
        for k, v in (
            ("station", e.station_id),
            ("socket", e.socket),
            ("batch", e.batch_id),
            ("chip", e.chip_serial),
        )
        if v is not None
    )


@app.command("query")
def query_cmd(
    ctx: typer.Context,
    serial: str | None = SERIAL,
    batch: int | None = BATCH,
    station: str | None = STATION,
    actor: str | None = ACTOR,
    event_type: str | None = TYPE,
    since: str | None = SINCE,
    until: str | None = UNTIL,
    after: int = typer.Option(0, "--after", help="Page cursor: events after this seq."),
    limit: int = typer.Option(50, "--limit", help=f"Page size (1..{query.MAX_PAGE})."),
    local_time: bool = LOCAL_TIME,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Events matching every given filter, oldest first, one page at a time.

    A header row names the columns: SEQ (the event's number in the log), TIME
    (UTC, or local with --local-time), ACTOR (who acted), EVENT (its type),
    WHERE (station, socket, batch, chip) and PAYLOAD (the event's details).
    "no events match" when none does. With --json: {"events": [...],
    "next_after": N or null}, each event with the keys of a JSON Lines export
    (see `audit export --help`).
    """
    c = ctx_of(ctx)
    c.require("audit.query")
    f = query.EventFilter.of(serial, batch, station, actor, event_type, since, until)
    with transaction(c.engine) as s:
        rows = query.page(s, f, after, limit)
    nxt = rows[-1].seq if len(rows) == limit else None
    if as_json:
        typer.echo(json.dumps({"events": [query.as_dict(e) for e in rows], "next_after": nxt}))
        return
    if not rows:
        typer.echo("no events match" + (f" after seq {after}" if after else ""))
        return
    zone = "local" if local_time else "utc"
    when = "TIME (local)" if local_time else "TIME (UTC)"
    typer.echo(f"{'SEQ':>8} {when:<26} {'ACTOR':<22} {'EVENT':<24} WHERE / PAYLOAD")
    for e in rows:
        t = " ".join(records.display_time(e.ts, zone))
        typer.echo(f"{e.seq:>8} {t:<26} {e.actor:<22} {e.event_type:<24} {_where(e)} {e.payload}")
    if nxt is not None:
        typer.echo(f"more: --after {nxt}", err=True)


@app.command(
    "export",
    help="Every matching event as JSON Lines or CSV, for a spreadsheet or a verifier:\n"
    "oldest first, as the log was when the export started.\n\n" + records.COLUMNS_HELP,
)
def export(
    ctx: typer.Context,
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or csv."),
    output: Path | None = typer.Option(None, "--output", "-o", help="File (default stdout)."),
    serial: str | None = SERIAL,
    batch: int | None = BATCH,
    station: str | None = STATION,
    actor: str | None = ACTOR,
    event_type: str | None = TYPE,
    since: str | None = SINCE,
    until: str | None = UNTIL,
    local_time: bool = LOCAL_TIME,
) -> None:
    c = ctx_of(ctx)
    c.require("audit.export")
    if fmt not in query.FORMATS:
        raise ConfigError("--format must be jsonl or csv")
    if local_time and fmt != "csv":
        raise ConfigError(
            "--local-time is for --format csv: JSON Lines keep the exact UTC time (ts)"
        )
    f = query.EventFilter.of(serial, batch, station, actor, event_type, since, until)
    lines = query.export_lines(c.engine, f, fmt, time_zone="local" if local_time else "utc")
    if output is None:
        query.write(lines, sys.stdout)
        return
    tmp = output.with_name(output.name + ".part")  # a failed export leaves no partial file
    with tmp.open("w", newline="", encoding="utf-8") as out:
        n = query.write(lines, out) - (fmt == "csv")
    tmp.replace(output)
    typer.echo(f"{n} events written to {output}", err=True)
