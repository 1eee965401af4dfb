"""``provisioner line ...``: the line server's own identity (admin, on the line server)."""

from __future__ import annotations

from pathlib import Path

import typer
from cryptography import x509

from provisioner.audit import chain
from provisioner.ca.store import fingerprint
from provisioner.cli.ca import PIN_SOURCE_HELP
from provisioner.cli.context import ctx_of
from provisioner.db.engine import transaction
from provisioner.enrollment.certs import san_names
from provisioner.enrollment.service import LinePaths, init_line_identity

app = typer.Typer(help="The line server's identity (admin, on the line server).")


def _fingerprint(path: Path) -> str | None:
    if not path.exists():
        return None
    return fingerprint(x509.load_pem_x509_certificate(path.read_bytes()))


@app.command("identity")
def identity_cmd(
    ctx: typer.Context,
    names: list[str] | None = typer.Option(
        None,
        "--name",
        help="A DNS name or IP address stations reach this server by (repeat for several; "
        "default: the current certificate's names, else localhost and 127.0.0.1).",
    ),
    pin_source: str | None = typer.Option(None, "--pin-source", help=PIN_SOURCE_HELP),
) -> None:
    """Make (or renew) the line server's key and certificate: the Redis TLS server
    certificate and the key that signs messages to stations. The key is made here (0600);
    the certificate comes from the HSM intermediate. Nothing changes while the current one
    matches the CA chain and names and has 30 days left. Audited when issued."""
    c = ctx_of(ctx)
    who = c.require("line.identity")
    paths = LinePaths.of(c.settings)
    before = _fingerprint(paths.certificate)
    init_line_identity(c.settings, names or None, pin_source=pin_source)
    cert = x509.load_pem_x509_certificate(paths.certificate.read_bytes())
    fp = fingerprint(cert)
    sans = san_names(cert)
    if fp != before:
        with transaction(c.engine) as s:
            chain.append(
                s,
                "line.identity_issued",
                actor=who.actor,
                payload={
                    "serial": format(cert.serial_number, "x"),
                    "fingerprint": fp,
                    "names": sans,
                    "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            )
        typer.echo(f"line identity issued in {paths.dir}")
    else:
        typer.echo(f"line identity in {paths.dir} is current (unchanged)")
    typer.echo(f"  key          {paths.key} (0600)")
    typer.echo(f"  certificate  {paths.certificate}, serial {cert.serial_number:x}")
    typer.echo(f"               names {', '.join(sans)}")
    typer.echo(f"               valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    typer.echo(f"  CA chain     {paths.chain}")
