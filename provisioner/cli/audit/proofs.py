"""``provisioner audit prove`` / ``check-proof`` / ``consistency`` / ``check-consistency``:
proofs that travel, checked anywhere with only the file and the audit public key."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from provisioner.audit import proofs
from provisioner.audit.checkpointer import read_public_key
from provisioner.cli.audit.common import (
    app,
)
from provisioner.cli.context import ctx_of
from provisioner.db.engine import transaction
from provisioner.errors import ConfigError, ProofError


@app.command("prove")
def prove(
    ctx: typer.Context,
    serial: str = typer.Argument(..., help="Chip serial (hex)."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Proof file (default: audit-proof-SERIAL.json)."
    ),
) -> None:
    """Write a proof file for one chip: its events, their inclusion proofs and the signed
    checkpoint. Check it anywhere with `provisioner audit check-proof FILE --key KEY`."""
    c = ctx_of(ctx)
    c.require("audit.prove")
    with transaction(c.engine) as s:
        doc = proofs.build(s, serial)
    path = output or Path(f"audit-proof-{doc['chip_serial']}.json")
    path.write_text(json.dumps(doc, indent=1) + "\n")
    n, after = len(doc["events"]), doc["events_after_checkpoint"]
    typer.echo(f"{path}: {n} events of chip {doc['chip_serial']} with inclusion proofs")
    if after:
        typer.echo(f"note: {after} newer events are not yet under a checkpoint", err=True)


@app.command("check-proof")
def check_proof(
    file: Path = typer.Argument(..., help="Proof file from `audit prove`."),
    key: Path = typer.Option(..., "--key", help="The audit public key (PEM) you trust."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Verify a proof file offline: needs only the file and the key (no database, no
    configuration, no network). Exit 1 if anything does not verify."""
    pub = read_public_key(key)
    try:
        rep = proofs.check(file.read_bytes(), pub)
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    except ProofError as exc:
        if as_json:
            typer.echo(json.dumps({"ok": False, "reason": str(exc)}))
        else:
            typer.echo(f"proof does NOT verify: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": True,
                    "chip_serial": rep.chip_serial,
                    "origin": rep.origin,
                    "tree_size": rep.tree_size,
                    "events": [e.as_json() for e in rep.events],
                }
            )
        )
        return
    typer.echo(
        f"proof verified: {len(rep.events)} events of chip {rep.chip_serial} are in log "
        f"{rep.origin} at size {rep.tree_size} (checkpoint signature OK)"
    )
    for e in rep.events:
        typer.echo(f"  {e.seq:>8} {e.ts} {e.event_type} by {e.actor}")


@app.command("consistency")
def consistency(
    ctx: typer.Context,
    old: int = typer.Argument(..., help="Size of the older checkpoint."),
    new: int | None = typer.Argument(None, help="Size of the newer one (default: latest)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="File (default stdout)."),
) -> None:
    """The consistency proof between two signed checkpoints (JSON): shows the newer log
    extends the older one without changing anything in it. Check it anywhere with
    `provisioner audit check-consistency FILE --key KEY`."""
    c = ctx_of(ctx)
    c.require("audit.consistency")
    with transaction(c.engine) as s:
        doc = proofs.build_consistency(s, old, new)
    text = json.dumps(doc, indent=1) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


@app.command("check-consistency")
def check_consistency(
    file: Path = typer.Argument(..., help="File from `audit consistency`."),
    key: Path = typer.Option(..., "--key", help="The audit public key (PEM) you trust."),
) -> None:
    """Verify a consistency proof offline (only the file and the key). Exit 1 if the
    newer checkpoint does not extend the older one."""
    pub = read_public_key(key)
    try:
        old, new = proofs.check_consistency(file.read_bytes(), pub)
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    except ProofError as exc:
        typer.echo(f"consistency does NOT verify: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"consistent: log {old.origin} at size {new.size} extends its checkpoint at size "
        f"{old.size} unchanged (both signatures OK)"
    )
