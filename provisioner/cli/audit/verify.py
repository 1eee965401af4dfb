"""``provisioner audit verify`` and the signed checkpoints: is the whole trail intact?"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from provisioner.audit.checkpointer import load_audit_key
from provisioner.audit.verify import verify_log
from provisioner.cli.audit.common import (
    KEY_HELP,
    app,
)
from provisioner.cli.context import ctx_of
from provisioner.db.engine import transaction
from provisioner.db.models import AuditCheckpoint


@app.command("verify")
def verify(
    ctx: typer.Context,
    key: Path | None = typer.Option(None, "--key", help=KEY_HELP),
    checkpoint: list[Path] = typer.Option(
        [],
        "--checkpoint",
        help="A signed checkpoint you kept from earlier (file); the log must still match "
        "it. Repeatable.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Recompute the hash chain, the Merkle tree and every signed checkpoint; name the
    first bad event (exit 1). Catches edited, deleted and reordered rows and a log
    truncated behind its latest checkpoint."""
    c = ctx_of(ctx)
    c.require("audit.verify")
    audit_key = load_audit_key(c.settings, key)
    kept = [p.read_text() for p in checkpoint]
    with transaction(c.engine) as s:
        res = verify_log(s, audit_key, kept)
    if as_json:
        typer.echo(json.dumps(res.as_json()))
    elif res.ok:
        typer.echo(
            f"audit trail intact: {res.events} events verified, "
            f"{res.checkpoints} signed checkpoints match"
        )
        for w in res.warnings:
            typer.echo(f"note: {w}", err=True)
    else:
        at = f" at event {res.first_bad_seq}" if res.first_bad_seq else ""
        typer.echo(f"audit trail BROKEN{at}: {res.reason}", err=True)
    if not res.ok:
        raise typer.Exit(1)


def _select_checkpoints() -> SelectOfScalar[AuditCheckpoint]:
    return select(AuditCheckpoint).order_by(col(AuditCheckpoint.size))


@app.command("checkpoints")
def checkpoints(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List the signed checkpoints (size, time, why)."""
    c = ctx_of(ctx)
    c.require("audit.query")
    with transaction(c.engine) as s:
        rows = list(s.exec(_select_checkpoints()).all())
    if as_json:
        typer.echo(json.dumps([r.model_dump() for r in rows]))
        return
    for r in rows:
        typer.echo(f"{r.size:>8} {r.created_at} {r.reason:<10} {r.root_hash}")


@app.command("checkpoint")
def checkpoint_now(
    ctx: typer.Context,
    pin_source: str | None = typer.Option(
        None, "--pin-source", help="Factory token PIN source (default from the config)."
    ),
) -> None:
    """Sign a checkpoint over every event now, with the audit key in the HSM."""
    from hsm.signer import token_key
    from provisioner.audit.checkpointer import Checkpointer
    from provisioner.ca.ceremony import factory_pin, open_module

    c = ctx_of(ctx)
    c.require("audit.checkpoint")
    with open_module(c.settings) as mod:
        ts = mod.open_token(c.settings.hsm.factory_token, factory_pin(c.settings, pin_source))
        try:
            key = token_key(ts, c.settings.audit.key_label)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            cp = Checkpointer(c.engine, c.settings, key).write("manual")
        finally:
            ts.close()
    if cp is None:
        typer.echo("nothing new: the latest checkpoint covers every event")
    else:
        typer.echo(f"checkpoint signed at size {cp.size} (root {cp.root_hash})")
