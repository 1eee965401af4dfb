"""``provisioner registry ...``: the uploads that wait for the cloud registry."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from provisioner.cli.context import ctx_of
from provisioner.registry import forwarder
from provisioner.registry.backends import open_backend

app = typer.Typer(help="Registry uploads: store and forward.", no_args_is_help=True)


@app.command("sync")
def sync(
    ctx: typer.Context,
    batch: int | None = typer.Option(None, "--batch", help="Only this batch's uploads."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Upload every parked or pending certificate now (what the registry worker does
    every `registry.sync_interval_s`). Idempotent; stops early if the registry is down."""
    c = ctx_of(ctx)
    c.require("registry.sync")
    ids = forwarder.waiting(c.engine, batch_id=batch)
    console = Console(stderr=True)
    with open_backend(c.settings) as backend:

        def progress(n: int, rep: forwarder.DrainReport) -> None:
            if not as_json and (n % 50 == 0 or n == len(ids)):
                console.print(f"{n}/{len(ids)}: {rep.as_json()}")

        rep = forwarder.drain(c.engine, backend, ids, progress=progress)
    if as_json:
        typer.echo(json.dumps({"waiting": len(ids), **rep.as_json()}))
    else:
        typer.echo(
            f"{len(ids)} uploads waiting: {rep.done} done, {rep.conflicts} conflicts, "
            f"{rep.refused} refused (parked, see 'batch status'), "
            f"{rep.unavailable + rep.left} still waiting"
            + (" (registry unreachable; try again later)" if rep.left else "")
        )
    if rep.unavailable or rep.left or rep.conflicts or rep.refused:
        raise typer.Exit(1)
