"""``provisioner audit prove`` / ``check-proof`` / ``consistency`` / ``check-consistency`` /
``verifier``: proofs that travel, checked anywhere with only the file and the audit public
key. The checks are the standalone verifier's (:mod:`provisioner.audit.verifier`), run
in-process with the same arguments, so ``check-proof`` says exactly what an auditor's copy
of ``verifier.py`` says; ``audit verifier`` hands out that file."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import typer

from provisioner.audit import proofs, verifier
from provisioner.cli.audit.common import (
    app,
)
from provisioner.cli.context import ctx_of
from provisioner.db.engine import transaction
from provisioner.errors import ConflictError


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
    configuration, no network). Exit 0 verified; 1 does NOT verify (or the checkpoint is not
    signed by this key: check the key first); 2 the file is not a proof file."""
    _run_verifier("proof", file, key, as_json)


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
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Verify a consistency proof offline (only the file and the key). Exit 0 the newer
    checkpoint extends the older one; 1 it does not (or a checkpoint is not signed by this
    key); 2 the file is not a consistency file."""
    _run_verifier("consistency", file, key, as_json)


@app.command("verifier")
def verifier_file(
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write it to this file (default: print it)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """The standalone verifier for auditors: one Python file that needs only the
    `cryptography` package. It checks proof files, consistency files and exported logs
    against signed checkpoints, exactly as `check-proof` does:
    `python3 verifier.py proof FILE --key audit-key.pem`."""
    text = resources.files("provisioner.audit").joinpath("verifier.py").read_text("utf-8")
    if output is None:
        typer.echo(text, nl=False)
        return
    if output.exists() and not force:
        raise ConflictError(f"{output} exists: pass --force to overwrite it")
    output.write_text(text, encoding="utf-8")
    output.chmod(0o755)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    typer.echo(
        f"{output}: the standalone verifier (SHA-256 {digest}); it needs Python 3.9+ and "
        f"`pip install cryptography`; run `python3 {output} --help`",
        err=True,
    )


def _run_verifier(command: str, file: Path, key: Path, as_json: bool) -> None:
    """Run one verifier subcommand in this process; its exit status is ours. (``--`` so a
    file name that starts with a dash is still a file name.)"""
    flags = [f"--key={key}", *(["--json"] if as_json else [])]
    code = verifier.main([command, *flags, "--", str(file)])
    if code:
        raise typer.Exit(code)
