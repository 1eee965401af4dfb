"""``provisioner ocsp ...``: the OCSP responder's delegated certificates.

The API answers ``POST /ocsp`` and ``GET /ocsp/{request}`` by itself and issues or renews a
responder certificate when it first needs one; this command does it ahead of time (after a
rotation, or to see what relying parties will be shown). Needs the right to publish CRLs
(``ca.crl``): both tell relying parties what the CA revoked, signed in the token."""

from __future__ import annotations

import json

import typer

from provisioner.cli.context import ctx_of

app = typer.Typer(
    help="The OCSP responder: one delegated certificate per intermediate, its key in the "
    "factory token (label ocsp-<intermediate>).",
    no_args_is_help=True,
)


@app.command("responders")
def responders(
    ctx: typer.Context,
    pin_source: str | None = typer.Option(
        None,
        "--pin-source",
        help="Where the factory token's PIN comes from: file:/path/to/pin, or 'prompt' "
        "(default: hsm.pin_source, else the PIN file under var/hsm). Never the PIN itself.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Make sure every unexpired intermediate has a current responder certificate
    (30 days, renewed 10 days before expiry; each issue audited) and list them."""
    from provisioner.ca.ocsp_responder_cert import cert_path, ensure_all, responder_label
    from provisioner.ca.store import fingerprint

    c = ctx_of(ctx)
    c.require("ca.crl")
    done = ensure_all(c.settings, c.engine, c.admin, pin_source)
    rows = [
        {
            "ca": r.ca_name,
            "key": responder_label(r.ca_name),
            "serial_number": format(r.certificate.serial_number, "x"),
            "fingerprint_sha256": fingerprint(r.certificate),
            "not_after": r.certificate.not_valid_after_utc.isoformat(),
            "issued": r.issued,
            "path": str(cert_path(c.settings, r.ca_name)),
        }
        for r in done
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    url = c.settings.api.effective_url.rstrip("/") + "/ocsp"
    typer.echo(f"OCSP responder: {url}")
    for row in rows:
        state = "issued now" if row["issued"] else "current"
        typer.echo(
            f"  {row['ca']}: key {row['key']}, certificate {row['serial_number']} "
            f"until {row['not_after']} ({state}) -> {row['path']}"
        )
