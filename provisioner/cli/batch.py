"""``provisioner batch ...``: operators create, start, pause, retry, close and watch batches.

Every transition is checked against the batch's state and audited; a refused one prints one
line, exits non-zero and writes nothing (provisioner.batches.lifecycle). None of these
commands opens the HSM token: the CA is checked through the running signer.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console

from provisioner import batches, dispatch, preflight
from provisioner.cli.context import CliContext, ctx_of
from provisioner.cli.view import batches_table, devices_table, part_action_text, summary_view, watch
from provisioner.db.models import MAX_ID

app = typer.Typer(
    help="Create, start, pause, resume, cancel, close and watch batches of chips on a station. "
    "A batch ends as finished, finished_with_failures (closed) or cancelled.",
    no_args_is_help=True,
)
quota_app = typer.Typer(help="A batch's certificate quota (admin).", no_args_is_help=True)
app.add_typer(quota_app, name="quota")

_ID = typer.Argument(..., min=1, max=MAX_ID, help="Batch id (see `provisioner batch list`).")
_JSON = typer.Option(False, "--json", help="Print JSON for scripts.")


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
    mode: str = typer.Option(
        "issue",
        "--mode",
        help="issue: blank chips, a key generated on each and a certificate issued by our CA "
        "(default); preprovisioned: parts provisioned by their manufacturer (see --part), "
        "their own certificates verified against the manufacturer root and uploaded as they "
        "are.",
    ),
    part: str | None = typer.Option(
        None,
        "--part",
        help="For --mode preprovisioned: trust-and-go (I2C 0x6A) or trustflex (0x6C).",
    ),
    as_json: bool = _JSON,
) -> None:
    """Create a batch of COUNT devices on STATION.

    Checks first that the signer answers with a CA (through the services; no HSM PIN is
    needed here); a preprovisioned batch needs the manufacturer root installed instead
    (`provisioner manufacturer trust FILE`)."""
    c = ctx_of(ctx)
    c.require("batch.create")
    batches.validate_request(
        c.settings, station_id=station, count=count, quota=quota, mode=mode, part=part
    )
    if mode != "preprovisioned":  # (a preprovisioned batch needs the root instead)
        preflight.check_signer(c.settings)
    batch_id = batches.create_batch(
        c.engine,
        c.settings,
        station_id=station,
        count=count,
        actor=c.actor,
        quota=quota,
        mode=mode,
        part=part,
    )
    limit = quota if quota is not None else count
    if as_json:
        out = {"id": batch_id, "station": station, "count": count, "quota": limit}
        typer.echo(json.dumps({**out, "mode": mode, "part": part}))
    elif mode == "preprovisioned":
        typer.echo(
            f"batch {batch_id} created: {count} {part} parts on station {station} (mode "
            f"preprovisioned: their own certificates, none issued); start it with "
            f"`provisioner batch start {batch_id}`"
        )
    else:
        typer.echo(
            f"batch {batch_id} created: {count} chips on station {station} "
            f"(certificate quota {limit}); start it with `provisioner batch start {batch_id}`"
        )


def _queue(c: CliContext, t: batches.Transition) -> None:
    """Hand the transition's devices, and the batch's waiting uploads, to the workers."""
    dispatch.queue_transition(c.settings, c.engine, t)


def start_batch(
    c: CliContext, batch_id: int, console: Console, *, wait: bool, timeout_s: float
) -> batches.BatchReport:
    """Queue every runnable device of the batch (and its waiting uploads), then watch."""
    batch = batches.get_batch(c.engine, batch_id)
    preflight.check_line(c.settings, c.engine, batch.station_id)
    _queue(c, batches.start(c.engine, batch_id, actor=c.actor))
    if not wait:
        return batches.summary(c.engine, batch_id)
    watch(c.engine, batch_id, console, timeout_s=timeout_s)
    return batches.summary(c.engine, batch_id)


@app.command("start")
def start(
    ctx: typer.Context,
    batch_id: int = _ID,
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Show progress until it settles."),
    timeout: float = typer.Option(600.0, help="Seconds to wait for the batch to settle."),
    as_json: bool = _JSON,
) -> None:
    """Start (or re-start) a batch: unfinished devices continue from their last step.

    Failed devices wait for `batch retry`. Ends with the batch's summary; Ctrl-C stops
    watching, not the batch."""
    c = ctx_of(ctx)
    c.require("batch.start")
    console = Console(stderr=as_json)
    rep = start_batch(c, batch_id, console, wait=wait, timeout_s=timeout)
    if as_json:
        typer.echo(json.dumps(rep.as_json()))
    else:
        console.print(summary_view(rep))
    if wait and (rep.failed or rep.done < rep.count):
        raise typer.Exit(1)


@app.command("pause")
def pause(ctx: typer.Context, batch_id: int = _ID) -> None:
    """No new device starts; chips in sockets finish the step they are in. `resume` goes on."""
    c = ctx_of(ctx)
    c.require("batch.control")
    batches.pause(c.engine, batch_id, actor=c.actor)
    typer.echo(
        f"batch {batch_id} paused: chips in sockets finish their current step; "
        f"resume with `provisioner batch resume {batch_id}`"
    )


@app.command("resume")
def resume(ctx: typer.Context, batch_id: int = _ID) -> None:
    """Run a paused batch again."""
    c = ctx_of(ctx)
    c.require("batch.control")
    batch = batches.get_batch(c.engine, batch_id)
    preflight.check_line(c.settings, c.engine, batch.station_id)
    t = batches.resume(c.engine, batch_id, actor=c.actor)
    _queue(c, t)
    typer.echo(f"batch {batch_id} resumed: {len(t.queue)} device(s) queued")


@app.command("cancel")
def cancel(ctx: typer.Context, batch_id: int = _ID) -> None:
    """End the batch now: devices not started are released, devices in sockets stop before
    their certificate is issued (or finish if it already is), and its remaining quota is
    released. Cannot be undone."""
    c = ctx_of(ctx)
    c.require("batch.control")
    t = batches.cancel(c.engine, batch_id, actor=c.actor)
    typer.echo(
        f"batch {batch_id} cancelled: {t.detail['released']} device(s) released, "
        f"{t.detail['in_flight']} in sockets finishing or stopping at a safe step"
    )


@app.command("close")
def close(ctx: typer.Context, batch_id: int = _ID, as_json: bool = _JSON) -> None:
    """End a batch whose remaining devices have failed (finished_with_failures), listing the
    failed devices and what to do with each part."""
    c = ctx_of(ctx)
    c.require("batch.control")
    t = batches.close(c.engine, batch_id, actor=c.actor)
    if as_json:
        typer.echo(json.dumps({"id": batch_id, "state": t.state.value, "failed": list(t.failed)}))
        return
    typer.echo(f"batch {batch_id} closed as {t.state.value}; {len(t.failed)} failed device(s):")
    for f in t.failed:
        typer.echo(
            f"  #{f['position']} device {f['device_id']} chip {f['chip_serial'] or '-'} "
            f"at {str(f['step']).lower()}: {f['error']} -> {part_action_text(str(f['action']))}"
        )


@app.command("retry")
def retry(
    ctx: typer.Context,
    batch_id: int = _ID,
    device: list[str] = typer.Option(
        None,
        "--device",
        "-d",
        help="A failed device to retry, by device id or chip serial (repeatable). "
        "Default: every failed device of the batch.",
    ),
) -> None:
    """Run failed devices again from their last step (each retry is audited). A device
    already done, or not failed, is refused; its chip never gets a second certificate."""
    c = ctx_of(ctx)
    c.require("batch.control")
    batch = batches.get_batch(c.engine, batch_id)
    if batch.state.value == "running":
        preflight.check_line(c.settings, c.engine, batch.station_id)
    t = batches.retry(c.engine, batch_id, actor=c.actor, which=device or None)
    _queue(c, t)
    when = "queued" if t.state.value == "running" else "will run when the batch resumes"
    typer.echo(f"batch {batch_id}: {len(t.queue) or 'the'} device(s) retried, {when}")


@quota_app.command("set")
def quota_set(
    ctx: typer.Context,
    batch_id: int = _ID,
    quota: int = typer.Argument(..., help="New quota: at least what is issued, at most the count."),
) -> None:
    """Change how many certificates a batch may consume (admin; audited)."""
    c = ctx_of(ctx)
    c.require("batch.quota")
    t = batches.set_quota(c.engine, batch_id, quota, actor=c.actor)
    typer.echo(f"batch {batch_id}: quota {t.detail['old']} -> {t.detail['new']}")


@app.command("status")
def status(
    ctx: typer.Context,
    batch_id: int = _ID,
    devices: bool = typer.Option(False, "--devices", help="List the devices (a page)."),
    failed: bool = typer.Option(False, "--failed", help="List only failed devices."),
    step: str | None = typer.Option(
        None, "--step", help="List only devices at this step (pending, identified, ... done)."
    ),
    offset: int = typer.Option(0, "--offset", min=0, help="Skip this many devices of the list."),
    limit: int = typer.Option(100, "--limit", min=1, max=1000, help="Devices per page."),
    as_json: bool = _JSON,
) -> None:
    """A batch's summary: counts per step, failures by reason with what to do with each
    part, throughput and ETA, the station's sockets. --devices/--failed/--step list devices,
    a page at a time."""
    c = ctx_of(ctx)
    c.require("batch.read")
    listing = devices or failed or step is not None
    query = (
        batches.DeviceQuery(
            failed=failed,
            step=batches.DeviceQuery.parse_step(step),
            offset=offset,
            limit=limit,
        )
        if listing
        else None
    )
    rep = batches.report(c.engine, batch_id, query)
    if as_json:
        typer.echo(json.dumps(rep.as_json()))
        return
    console = Console()
    console.print(summary_view(rep))
    if listing and not rep.devices:
        console.print("no device matches" + (f" past --offset {offset}" if offset else ""))
    elif listing:
        shown = f"devices {offset + 1}-{offset + len(rep.devices)}"
        console.print(devices_table(rep, title=f"batch {rep.id}: {shown}"))
        if len(rep.devices) == limit:
            console.print(f"more: --offset {offset + limit}")


@app.command("list")
def list_(ctx: typer.Context, as_json: bool = _JSON) -> None:
    """List all batches with their progress."""
    c = ctx_of(ctx)
    c.require("batch.read")
    reps = batches.list_batches(c.engine)
    if as_json:
        typer.echo(json.dumps([r.as_json() for r in reps]))
    else:
        Console().print(batches_table(reps))
