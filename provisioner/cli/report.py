"""``provisioner report ...``: a batch's report for a customer or certification body, signed
by the audit key, and the offline check of such a report.

The report is built from the records by the command (never from anything the caller
supplies but the batch id and, optionally, the batch's manifest file, which is checked), so
what the audit key signs is what the database, the CA files and the audit trail say.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import typer
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.audit import chain
from provisioner.audit.checkpointer import audit_key_file, read_public_key
from provisioner.batches.lifecycle import get_batch
from provisioner.cli.context import CliContext, ctx_of
from provisioner.db.engine import transaction
from provisioner.db.models import MAX_ID
from provisioner.errors import ConfigError, ConflictError, InvalidInputError
from provisioner.reports.batch import BatchFacts, collect
from provisioner.reports.html import render
from provisioner.reports.signing import (
    ReportSignatureError,
    key_fingerprint,
    sign_report,
    verify_report_bytes,
)

app = typer.Typer(
    help="Signed batch reports for customers and certification bodies, and their check.",
    no_args_is_help=True,
)

GENERATED_EVENT = "report.generated"


@app.command("batch")
def batch_report(
    ctx: typer.Context,
    batch_id: int = typer.Argument(..., min=1, max=MAX_ID, help="Batch id."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="HTML file (default: report-batch-ID.html)."
    ),
    manifest: Path | None = typer.Option(
        None,
        "--manifest",
        help="The batch's manifest file (from `manifest build`): checked, and its SHA-256 "
        "put in the report.",
    ),
    draft: bool = typer.Option(
        False,
        "--draft",
        help="An unsigned preview, marked DRAFT: for a batch that has not ended, or whose "
        "end no signed checkpoint covers yet. Needs no HSM.",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing output file."),
    pin_source: str | None = typer.Option(
        None, "--pin-source", help="Factory token PIN source (default from the config)."
    ),
) -> None:
    """Write a batch's report as one self-contained HTML file (numbers, failures, throughput
    chart, CA chain, manifest fingerprint, the signed checkpoint covering the batch and how
    to verify it), signed by the audit key in the HSM. Only an ended batch (finished,
    finished_with_failures or cancelled) gets a signed report."""
    c = ctx_of(ctx)
    c.require("report.batch")
    path = output or Path(f"report-batch-{batch_id}" + ("-draft" if draft else "") + ".html")
    if path.exists() and not force:
        raise InvalidInputError(f"{path} exists: pass --force to replace it")
    state = get_batch(c.engine, batch_id).state
    if not draft and not state.ended:
        raise ConflictError(
            f"batch {batch_id} is {state.value}: only an ended batch (finished, "
            "finished_with_failures or cancelled) gets a signed report; pass --draft for an "
            "unsigned preview"
        )
    if draft:
        html, data, facts = _draft(c, batch_id, manifest)
    else:
        html, data, facts = _signed(c, batch_id, manifest, pin_source)
    html_sha256 = hashlib.sha256(html).hexdigest()
    file_sha256 = hashlib.sha256(data).hexdigest()
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    try:
        with transaction(c.engine) as s:
            chain.append(
                s,
                GENERATED_EVENT,
                actor=c.actor,
                station_id=facts.station_id,
                batch_id=batch_id,
                payload={
                    "draft": draft,
                    "html_sha256": html_sha256,
                    "file_sha256": file_sha256,
                    "checkpoint_size": facts.checkpoint.size if facts.checkpoint else None,
                },
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if draft:
        typer.echo(f"{path}: DRAFT report of batch {batch_id} (not signed)")
        return
    assert facts.checkpoint is not None
    typer.echo(
        f"{path}: report of batch {batch_id}, signed by the audit key "
        f"(SHA-256 {facts.audit_key_sha256}); the batch is covered by the signed checkpoint "
        f"at size {facts.checkpoint.size}. SHA-256 of the file: {file_sha256}.\n"
        f"Check it anywhere: provisioner report verify {path} --key audit-key.pem"
    )


def _draft(c: CliContext, batch_id: int, manifest: Path | None) -> tuple[bytes, bytes, BatchFacts]:
    """An unsigned report; the installed audit public key (if any) checks the checkpoint."""
    key_path = audit_key_file(c.settings)
    pub = read_public_key(key_path) if key_path.exists() else None
    facts = collect(
        c.engine,
        c.settings,
        batch_id,
        generated_by=c.actor,
        audit_key=pub,
        manifest_file=manifest,
    )
    html = render(facts, draft=True)
    return html, html, facts


def _signed(
    c: CliContext, batch_id: int, manifest: Path | None, pin_source: str | None
) -> tuple[bytes, bytes, BatchFacts]:
    """The report's HTML and the signed file: collected, rendered and signed with the
    audit key in the factory token."""
    from hsm.signer import token_key
    from provisioner.ca.ceremony import factory_pin, open_module

    settings = c.settings
    with open_module(settings) as mod:
        ts = mod.open_token(settings.hsm.factory_token, factory_pin(settings, pin_source))
        try:
            key = token_key(ts, settings.audit.key_label)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ConfigError(f"audit key {settings.audit.key_label!r} is not an EC key")
            pub = key.public_key()
            facts = collect(
                c.engine,
                settings,
                batch_id,
                generated_by=c.actor,
                audit_key=pub,
                manifest_file=manifest,
            )
            if facts.checkpoint is None:
                raise ConflictError(
                    f"no signed checkpoint covers batch {batch_id}'s last event (event "
                    f"{facts.last_event_seq}) yet: the running line signs one within "
                    "audit.checkpoint_every_s; an admin can sign one now with `provisioner "
                    "audit checkpoint`. Then run this again (or pass --draft for a preview)"
                )
            html = render(facts, draft=False)
            data = sign_report(html, key, settings.audit.origin, batch_id)
        finally:
            ts.close()
    verify_report_bytes(data, pub)  # never hand out a report that does not check
    return html, data, facts


@app.command("verify")
def verify(
    file: Path = typer.Argument(..., help="Report file from `report batch`."),
    key: Path = typer.Option(..., "--key", help="The audit public key (PEM) you trust."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Check a batch report's signature offline: needs only the file and the audit public
    key (no database, no configuration). Exit 0 verified, 1 does not verify (wrong key or
    changed report), 2 the file is not a signed report."""
    pub = read_public_key(key)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    try:
        batch_id, origin = verify_report_bytes(data, pub)
    except ReportSignatureError as exc:
        code = 2 if exc.kind == "format" else 1
        if as_json:
            typer.echo(json.dumps({"ok": False, "kind": exc.kind, "reason": str(exc)}))
        elif exc.kind == "format":
            typer.echo(f"{file} is not a signed batch report: {exc}", err=True)
        else:
            typer.echo(f"report NOT verified: {exc}", err=True)
        raise typer.Exit(code) from None
    if as_json:
        typer.echo(json.dumps({"ok": True, "batch": batch_id, "origin": origin}))
        return
    typer.echo(
        f"report verified: the report of batch {batch_id} of log {origin} is signed by the "
        f"audit key (SHA-256 {key_fingerprint(pub)}) and not one byte of it changed since"
    )
