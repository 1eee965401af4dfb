"""``provisioner audit ...``: auditors check the trail."""

from __future__ import annotations

import json

import typer

from provisioner.audit import chain
from provisioner.cli.context import ctx_of
from provisioner.db.engine import transaction

app = typer.Typer(help="Verify the tamper-evident audit trail.", no_args_is_help=True)


@app.command("verify")
def verify(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Recompute the hash chain from the first event; name the first bad one (exit 1)."""
    c = ctx_of(ctx)
    with transaction(c.engine) as s:
        res = chain.verify(s)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": res.ok,
                    "events": res.events,
                    "first_bad_seq": res.first_bad_seq,
                    "reason": res.reason,
                }
            )
        )
    elif res.ok:
        typer.echo(f"audit trail intact: {res.events} events verified")
    else:
        typer.echo(
            f"audit trail BROKEN at event {res.first_bad_seq}: {res.reason} "
            f"({res.events} events before it verified)",
            err=True,
        )
    if not res.ok:
        raise typer.Exit(1)
