"""``provisioner ca ...``: the administrator's CA ceremony (dev CA on SoftHSM for now)."""

from __future__ import annotations

import json

import typer

from provisioner.audit import chain
from provisioner.cli.context import ctx_of
from provisioner.db.engine import transaction

app = typer.Typer(
    help="Create the factory CA (its keys are generated in, and stay in, the PKCS#11 token).",
    no_args_is_help=True,
)


@app.command("init")
def init(
    ctx: typer.Context,
    force: bool = typer.Option(
        False, "--force", help="Replace an existing CA (every issued certificate loses its CA)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Create the root key (own token) and the intermediate key (factory token), both
    generated inside SoftHSM and non-extractable, and the intermediate certificate.

    Idempotent: an existing, consistent CA is reported and left alone."""
    from provisioner.ca.ceremony import init_ca

    c = ctx_of(ctx)
    info = init_ca(c.settings, force=force)
    if info.created:
        with transaction(c.engine) as s:
            chain.append(
                s,
                "ca.initialised",
                actor=f"admin:{c.actor.split(':', 1)[1]}",
                payload={
                    "root_subject": info.root_subject,
                    "root_fingerprint_sha256": info.root_fingerprint_sha256,
                    "intermediate_subject": info.intermediate_subject,
                    "intermediate_fingerprint_sha256": info.intermediate_fingerprint_sha256,
                    "forced": force,
                },
            )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "created": info.created,
                    "root": {"subject": info.root_subject, "sha256": info.root_fingerprint_sha256},
                    "intermediate": {
                        "subject": info.intermediate_subject,
                        "sha256": info.intermediate_fingerprint_sha256,
                    },
                }
            )
        )
        return
    typer.echo("CA created" if info.created else "CA already initialised (unchanged)")
    typer.echo(f"  root          {info.root_subject}")
    typer.echo(f"                SHA-256 {info.root_fingerprint_sha256}")
    typer.echo(f"  intermediate  {info.intermediate_subject}")
    typer.echo(f"                SHA-256 {info.intermediate_fingerprint_sha256}")
