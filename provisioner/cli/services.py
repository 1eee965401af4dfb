"""``provisioner services run`` and ``provisioner demo``: the station's processes."""

from __future__ import annotations

import signal
import time

import typer
from rich.console import Console
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from provisioner import batches
from provisioner.audit import chain
from provisioner.audit.checkpointer import load_audit_key
from provisioner.audit.verify import verify_log
from provisioner.cli.batch import start_batch
from provisioner.cli.context import ctx_of
from provisioner.cli.view import devices_table
from provisioner.db.engine import transaction
from provisioner.db.models import AuditCheckpoint, AuditEvent
from provisioner.supervisor import running_services

app = typer.Typer(
    help="Run the station's services (Redis, registry, workers).", no_args_is_help=True
)


@app.command("run")
def run(
    ctx: typer.Context,
    station: list[str] = typer.Option(
        None, "--station", "-s", help="Station(s) to run workers for (default: all configured)."
    ),
) -> None:
    """Start Redis, the built-in registry and the hsm/registry/station workers in the
    foreground; Ctrl-C (or SIGTERM) stops them all."""
    c = ctx_of(ctx)
    c.require("services.run")
    stations = station or sorted(c.settings.stations)
    for s in stations:
        c.settings.station(s)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with running_services(c.settings, stations, c.config) as sup:
        typer.echo(
            f"services running ({', '.join(ch.name for ch in sup.children)}); "
            f"logs in {sup.log_dir}. Ctrl-C stops them."
        )
        try:
            while True:
                sup._check_alive()
                time.sleep(1)
        except KeyboardInterrupt:
            typer.echo("stopping services ...")


def wait_for_checkpoint(engine: Engine, batch_id: int, timeout_s: float) -> int | None:
    """The size of the first checkpoint covering the batch's end (the signer worker
    writes one within ``audit.poll_s``), or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        with Session(engine) as s:
            end = s.exec(
                select(func.max(AuditEvent.seq)).where(
                    AuditEvent.event_type == "batch.finished", AuditEvent.batch_id == batch_id
                )
            ).one()
            size = s.exec(select(func.max(AuditCheckpoint.size))).one()
        if end is not None and size is not None and size >= end:
            return int(size)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def demo(
    ctx: typer.Context,
    count: int = typer.Option(16, "--count", "-n", help="Chips in the demo batch."),
    station: str = typer.Option("line1", "--station", "-s", help="Station id."),
    timeout: float = typer.Option(600.0, help="Seconds to wait for the batch."),
) -> None:
    """Provision one batch of emulated chips end to end on embedded defaults.

    Creates the dev CA if absent, starts Redis, the registry and the workers, runs the batch
    with a progress bar, prints the result table and the audit verification, and stops every
    service again (also on Ctrl-C). Run it again for a new batch of new chips."""
    from provisioner.ca.ceremony import init_ca

    c = ctx_of(ctx)
    c.require("demo.run")
    console = Console()
    batches.validate_request(c.settings, station_id=station, count=count)
    info = init_ca(c.settings)
    console.print(
        ("[green]CA created[/]" if info.created else "CA present")
        + f": {info.intermediate_subject} (SHA-256 {info.intermediate_fingerprint_sha256[:16]}…)"
    )
    if info.created:
        with transaction(c.engine) as s:
            chain.append(
                s,
                "ca.initialised",
                actor=c.actor,
                payload={"intermediate_fingerprint_sha256": info.intermediate_fingerprint_sha256},
            )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    batch_id = None
    try:
        with running_services(c.settings, [station], c.config):
            console.print(
                "services started: redis, registry, workers (hsm, registry, "
                f"station {station} x{c.settings.station(station).sockets} sockets)"
            )
            batch_id = batches.create_batch(
                c.engine, c.settings, station_id=station, count=count, actor=c.actor
            )
            rep = start_batch(c, batch_id, console, wait=True, timeout_s=timeout)
            console.print(devices_table(rep))
            size = wait_for_checkpoint(c.engine, batch_id, timeout_s=30)
            console.print(
                f"audit checkpoint signed by the HSM audit key at size {size}"
                if size
                else "[yellow]no audit checkpoint covers the batch end yet[/]"
            )
        console.print("services stopped")
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted[/]: services stopped"
            + (f"; resume with `provisioner batch start {batch_id}`" if batch_id else "")
        )
        raise typer.Exit(130) from None
    with transaction(c.engine) as s:
        res = verify_log(s, load_audit_key(c.settings))
    if res.ok:
        console.print(
            f"[green]audit trail intact[/]: {res.events} events verified, "
            f"{res.checkpoints} signed checkpoints match"
        )
    else:
        console.print(f"[red]audit trail broken at event {res.first_bad_seq}[/]: {res.reason}")
    ok = res.ok and rep.done == rep.count
    console.print(
        f"[{'green' if ok else 'red'}]batch {batch_id}: {rep.done}/{rep.count} "
        f"devices provisioned[/]"
    )
    if not ok:
        raise typer.Exit(1)
