"""``provisioner manufacturer ...``: the manufacturer root pre-provisioned parts must chain to.

A batch in mode ``preprovisioned`` accepts a part (Trust&GO, TrustFLEX) only when its device
and signer certificates verify up to this root (:mod:`provisioner.ca.manufacturer_chain`).
Installing or replacing it changes what the line trusts, so it is an admin action and
audited with the old and new roots' fingerprints. The file is public material (a
certificate, no key).
"""

from __future__ import annotations

import json
import os

import typer
from cryptography.hazmat.primitives.serialization import Encoding

from provisioner.audit import chain
from provisioner.ca.manufacturer_chain import fingerprint, load_root, parse_root
from provisioner.cli.context import ctx_of
from provisioner.db.engine import transaction
from provisioner.errors import ConfigError, InvalidInputError
from provisioner.station import emulated_manufacturer_root

app = typer.Typer(
    help="The manufacturer root that pre-provisioned parts' certificates must chain to.",
    no_args_is_help=True,
)


@app.command("trust")
def trust(
    ctx: typer.Context,
    file: typer.FileBinaryRead | None = typer.Argument(None, help="The root certificate (PEM)."),
    emulated: bool = typer.Option(
        False,
        "--emulated",
        help="Trust the emulated line's own manufacturer instead of a FILE (the one that "
        "makes the emulated stations' Trust&GO/TrustFLEX-like parts; test equipment, not "
        "Microchip's). Only on a line with emulated stations.",
    ),
) -> None:
    """Install FILE as the trusted manufacturer root (replacing any previous one).

    Refused unless it is a self-signed P-256 CA certificate. Audited as
    ``manufacturer.root_trusted``; parts are judged against it from their next step on."""
    c = ctx_of(ctx)
    c.require("manufacturer.trust")
    if (file is None) == (not emulated):
        raise InvalidInputError("give the root's FILE, or --emulated (not both)")
    if file is not None:
        data = file.read(64 * 1024)
    else:
        if not any(st.transport == "emulated" for st in c.settings.stations.values()):
            raise InvalidInputError("--emulated: this line has no emulated station")
        data = emulated_manufacturer_root(c.settings).read_bytes()
    root = parse_root(data, "FILE" if file is not None else "the emulated manufacturer's root")
    path = c.settings.manufacturer_root_file
    try:
        old: str | None = fingerprint(load_root(path))
    except ConfigError:
        old = None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(root.public_bytes(Encoding.PEM))
    new = fingerprint(root)
    with transaction(c.engine) as s:  # the file changes only with its audit event
        chain.append(
            s,
            "manufacturer.root_trusted",
            actor=c.admin,
            payload={
                "subject": root.subject.rfc4514_string()[:200],
                "root_fingerprint_sha256": new,
                "previous_fingerprint_sha256": old,
                "emulated": emulated,
            },
        )
        os.replace(tmp, path)
    typer.echo(f"manufacturer root installed: {root.subject.rfc4514_string()}")
    typer.echo(f"  SHA-256 {new}")


@app.command("show")
def show(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """The trusted manufacturer root (subject, fingerprint, where it is kept)."""
    c = ctx_of(ctx)
    c.require("manufacturer.show")
    root = load_root(c.settings.manufacturer_root_file)
    out = {
        "subject": root.subject.rfc4514_string(),
        "root_fingerprint_sha256": fingerprint(root),
        "file": str(c.settings.manufacturer_root_file),
    }
    if as_json:
        typer.echo(json.dumps(out))
    else:
        typer.echo(f"{out['subject']}\n  SHA-256 {out['root_fingerprint_sha256']}\n  {out['file']}")
