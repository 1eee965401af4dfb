"""``provisioner registry ...``: the uploads that wait for the cloud registry."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from provisioner.cli.context import ctx_of
from provisioner.db.models import MAX_ID
from provisioner.uploads import forwarder
from provisioner.uploads.backends import open_backend

app = typer.Typer(help="Registry uploads: store and forward.", no_args_is_help=True)


@app.command("sync")
def sync(
    ctx: typer.Context,
    batch: int | None = typer.Option(
        None, "--batch", min=1, max=MAX_ID, help="Only this batch's uploads."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Upload every parked or pending certificate, then block every revoked device still
    waiting for its block, now (what the registry worker does every
    `registry.sync_interval_s`). Idempotent; stops early if the registry is down."""
    from provisioner.uploads import blocking

    c = ctx_of(ctx)
    c.require("registry.sync")
    ids = forwarder.waiting(c.engine, batch_id=batch)
    block_ids = blocking.waiting_blocks(c.engine, batch_id=batch)
    console = Console(stderr=True)
    with open_backend(c.settings) as backend:

        def progress(n: int, rep: forwarder.DrainReport) -> None:
            if not as_json and (n % 50 == 0 or n == len(ids)):
                console.print(f"{n}/{len(ids)}: {rep.as_json()}")

        rep = forwarder.drain(c.engine, backend, ids, progress=progress)
        blocks = blocking.drain_blocks(c.engine, backend, block_ids)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "waiting": len(ids),
                    **rep.as_json(),
                    "blocks": {"waiting": len(block_ids), **blocks.as_json()},
                }
            )
        )
    else:
        typer.echo(
            f"{len(ids)} uploads waiting: {rep.done} done, {rep.conflicts} conflicts, "
            f"{rep.refused} refused (parked, see 'batch status'), "
            f"{rep.unavailable + rep.left} still waiting"
            + (" (registry unreachable; try again later)" if rep.left else "")
        )
        if block_ids:
            typer.echo(
                f"{len(block_ids)} revoked devices to block: {blocks.done} blocked, "
                f"{blocks.conflicts} skipped (another certificate under the id), "
                f"{blocks.refused} refused, {blocks.unavailable + blocks.left} still waiting"
            )
    if rep.unavailable or rep.left or rep.conflicts or rep.refused:
        raise typer.Exit(1)
    if blocks.unavailable or blocks.left or blocks.refused:
        raise typer.Exit(1)
