"""``provisioner manifest ...``: Microchip-format manifests of a batch, signed in the HSM."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.cli.context import ctx_of
from provisioner.db.models import MAX_ID
from provisioner.errors import ConfigError
from provisioner.uploads import manifest

app = typer.Typer(
    help="Per-batch manifests (Microchip format, JWS ES256) for customers who register "
    "devices themselves.",
    no_args_is_help=True,
)


@app.command("build")
def build(
    ctx: typer.Context,
    batch: int = typer.Option(..., "--batch", min=1, max=MAX_ID, help="Batch id."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Manifest file (default: manifest-batch-N.json)."
    ),
    pin_source: str | None = typer.Option(
        None, "--pin-source", help="Factory token PIN source (default from the config)."
    ),
) -> None:
    """Sign one manifest entry per chip of the batch with the manifest key in the HSM."""
    from hsm.signer import token_key
    from provisioner.ca.ceremony import factory_pin, open_module

    c = ctx_of(ctx)
    c.require("manifest.build")
    records = manifest.batch_records(c.engine, c.settings, batch)
    if not records:
        raise ConfigError(f"batch {batch} has no certified chip yet")
    signer = _signer(manifest.signer_file(c.settings))
    org = {"organizationName": c.settings.profile.organization}
    org["organizationalUnitName"] = c.settings.profile.organizational_unit or ""
    with open_module(c.settings) as mod:
        ts = mod.open_token(c.settings.hsm.factory_token, factory_pin(c.settings, pin_source))
        try:
            key = token_key(ts, manifest.KEY_LABEL)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            entries = manifest.sign_entries(records, key, signer, org)
        finally:
            ts.close()
    path = output or Path(f"manifest-batch-{batch}.json")
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(entries, indent=1) + "\n")
    tmp.replace(path)
    typer.echo(f"{path}: {len(entries)} signed entries (signer {manifest.signer_file(c.settings)})")


@app.command("verify")
def verify(
    file: Path = typer.Argument(..., help="Manifest file."),
    signer: Path | None = typer.Option(
        None,
        "--signer",
        help="The manifest signer certificate you trust (default: var/ca/manifest-signer.pem).",
    ),
) -> None:
    """Check every entry's signature, signer (kid, x5t#S256), uniqueId and certificate chain.
    Offline: needs only the file and the signer certificate. Exit 1 on the first bad entry."""
    from provisioner.settings import load_settings

    cert_path = signer or manifest.signer_file(load_settings())
    cert = _signer(cert_path)
    try:
        entries = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the manifest {file}: {exc}") from None
    try:
        verified = manifest.verify_entries(entries, cert)
    except manifest.ManifestError as exc:
        typer.echo(f"manifest does NOT verify: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"manifest verified: {len(verified)} entries signed by {cert.subject.rfc4514_string()}"
    )
    for e in verified:
        if e.revocation is not None:
            typer.echo(
                f"  {e.unique_id}: REVOKED ({e.revocation.get('reason')}, "
                f"{e.revocation.get('revocationDate')})"
            )


def _signer(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the manifest signer certificate {path}: {exc}") from None
