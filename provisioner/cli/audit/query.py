"""``provisioner audit query`` and ``export``: reading the trail, page by page or whole."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from provisioner.audit import query
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
from provisioner.errors import ConfigError


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
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Events matching every given filter, oldest first, one page at a time."""
    c = ctx_of(ctx)
    c.require("audit.query")
    f = query.EventFilter.of(serial, batch, station, actor, event_type, since, until)
    with transaction(c.engine) as s:
        rows = query.page(s, f, after, limit)
    nxt = rows[-1].seq if len(rows) == limit else None
    if as_json:
        typer.echo(json.dumps({"events": [query.as_dict(e) for e in rows], "next_after": nxt}))
        return
    for e in rows:
        where = " ".join(
            f"{k}={v}"
            for k, v in (
                ("station", e.station_id),
                ("socket", e.socket),
                ("batch", e.batch_id),
                ("chip", e.chip_serial),
            )
            if v is not None
        )
        typer.echo(f"{e.seq:>8} {e.ts} {e.actor:<22} {e.event_type:<24} {where} {e.payload}")
    if nxt is not None:
        typer.echo(f"more: --after {nxt}", err=True)


@app.command("export")
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
) -> None:
    """Every matching event as JSON Lines or CSV (with each event's chain hash)."""
    c = ctx_of(ctx)
    c.require("audit.export")
    if fmt not in ("jsonl", "csv"):
        raise ConfigError("--format must be jsonl or csv")
    f = query.EventFilter.of(serial, batch, station, actor, event_type, since, until)
    events = query.iterate(c.engine, f)
    lines = query.jsonl_lines(events) if fmt == "jsonl" else query.csv_lines(events)
    if output is None:
        query.write(lines, sys.stdout)
        return
    tmp = output.with_name(output.name + ".part")  # a failed export leaves no partial file
    with tmp.open("w", newline="") as out:
        n = query.write(lines, out) - (fmt == "csv")
    tmp.replace(output)
    typer.echo(f"{n} events written to {output}", err=True)
