"""``provisioner batch ...``: operators create, start and watch batches."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from provisioner import batches, preflight
from provisioner.cli.context import CliContext, ctx_of
from provisioner.cli.view import batches_table, devices_table, watch
from workers.queues import (
    HSM_QUEUE,
    PROVISION_TASK,
    REGISTRY_QUEUE,
    UPLOAD_TASK,
    station_queue,
)

app = typer.Typer(
    help="Create, start and watch batches of chips on a station.", no_args_is_help=True
)


@app.command("create")
def create(
    ctx: typer.Context,
    count: int = typer.Option(..., "--count", "-n", help="Number of chips in the batch (>= 1)."),
    station: str = typer.Option(..., "--station", "-s", help="Station id from the config."),
    quota: int | None = typer.Option(
        None,
        "--quota",
        help="Most certificates the signer may issue for this batch (default: the count); "
        "enforced atomically across signer processes.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Create a batch of COUNT devices on STATION (checks the CA, PIN and Redis first)."""
    c = ctx_of(ctx)
    c.require("batch.create")
    batches.validate_request(c.settings, station_id=station, count=count, quota=quota)
    preflight.check_ca(c.settings)
    preflight.check_redis(c.settings)
    batch_id = batches.create_batch(
        c.engine, c.settings, station_id=station, count=count, actor=c.actor, quota=quota
    )
    limit = quota if quota is not None else count
    if as_json:
        typer.echo(json.dumps({"id": batch_id, "station": station, "count": count, "quota": limit}))
    else:
        typer.echo(
            f"batch {batch_id} created: {count} chips on station {station} "
            f"(certificate quota {limit})"
        )


def start_batch(
    c: CliContext, batch_id: int, console: Console, *, wait: bool, timeout_s: float
) -> batches.BatchReport:
    """Queue every unfinished device of the batch (and pending uploads), then watch."""
    from workers.celery_app import make_celery

    batch = batches.get_batch(c.engine, batch_id)
    preflight.check_redis(c.settings)
    preflight.check_workers(
        c.settings, [station_queue(batch.station_id), HSM_QUEUE, REGISTRY_QUEUE]
    )
    app_ = make_celery(c.settings)
    for device_id in batches.mark_started(c.engine, batch_id, actor=c.actor):
        app_.send_task(PROVISION_TASK, args=[device_id], queue=station_queue(batch.station_id))
    for device_id in batches.pending_uploads(c.engine, batch_id):
        app_.send_task(UPLOAD_TASK, args=[device_id], queue=REGISTRY_QUEUE)
    if not wait:
        return batches.report(c.engine, batch_id)
    return watch(c.engine, batch_id, console, timeout_s=timeout_s)


@app.command("start")
def start(
    ctx: typer.Context,
    batch_id: int = typer.Argument(..., help="Batch id (see `provisioner batch list`)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Show progress until it settles."),
    timeout: float = typer.Option(600.0, help="Seconds to wait for the batch to settle."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Start (or resume) a batch: unfinished devices continue from their last step."""
    c = ctx_of(ctx)
    c.require("batch.start")
    console = Console(stderr=as_json)
    rep = start_batch(c, batch_id, console, wait=wait, timeout_s=timeout)
    if as_json:
        typer.echo(json.dumps(rep.as_json()))
    else:
        console.print(devices_table(rep))
    if wait and (rep.failed or rep.done < rep.count):
        raise typer.Exit(1)


@app.command("status")
def status(
    ctx: typer.Context,
    batch_id: int = typer.Argument(..., help="Batch id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Show each device of a batch: serial, certificate, registry entry, step."""
    c = ctx_of(ctx)
    c.require("batch.read")
    rep = batches.report(c.engine, batch_id)
    if as_json:
        typer.echo(json.dumps(rep.as_json()))
    else:
        console = Console()
        console.print(devices_table(rep))
        console.print(
            f"done {rep.done}/{rep.count}, failed {rep.failed}, "
            f"uploads pending {rep.uploads_pending}, parked {rep.uploads_parked}"
        )


@app.command("list")
def list_(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List all batches with their progress."""
    c = ctx_of(ctx)
    c.require("batch.read")
    reps = batches.list_batches(c.engine)
    if as_json:
        typer.echo(
            json.dumps([{k: v for k, v in r.as_json().items() if k != "devices"} for r in reps])
        )
    else:
        Console().print(batches_table(reps))
