"""``provisioner ca ...``: the administrator's CA ceremony.

Every command that changes the CA appends an audit event; none prints or takes a PIN on the
command line (``--pin-source`` names a file, or ``prompt`` to type it)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from provisioner.audit import chain
from provisioner.cli.context import CliContext, ctx_of
from provisioner.db.engine import transaction
from provisioner.errors import InvalidInputError

app = typer.Typer(
    help="The factory CA: its keys are generated in, and stay in, the PKCS#11 token.\n\n"
    "Dev / single site: `ca init`, later `ca rotate`. Root kept offline: `ca csr`, have the "
    "root sign it, `ca import-cert`. `ca show` tells what is installed.",
    no_args_is_help=True,
)

PIN_SOURCE_HELP = (
    "Where the factory token's PIN comes from: file:/path/to/pin, or 'prompt' to type it "
    "(default: hsm.pin_source, else the PIN file under var/hsm). Never the PIN itself."
)


def _audit(c: CliContext, event: str, payload: dict[str, Any]) -> None:
    with transaction(c.engine) as s:
        chain.append(s, event, actor=c.admin, payload=payload)


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
    c.require("ca.init")
    info = init_ca(c.settings, force=force)
    crl_note = None
    if info.created:
        with transaction(c.engine) as s:
            chain.append(
                s,
                "ca.initialised",
                actor=c.admin,
                payload={
                    "root_subject": info.root_subject,
                    "root_fingerprint_sha256": info.root_fingerprint_sha256,
                    "intermediate_subject": info.intermediate_subject,
                    "intermediate_fingerprint_sha256": info.intermediate_fingerprint_sha256,
                    "forced": force,
                    "kept_keys": list(info.kept_keys),
                },
            )
        crl_note = _first_crls(c)
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
    if crl_note:
        typer.echo(f"  CRLs          {crl_note}")
    if info.kept_keys:
        typer.echo(
            f"  kept          {', '.join(info.kept_keys)}: the old keys cannot be destroyed "
            "with the user PIN (only re-initialising the token with its SO PIN removes them)"
        )


@app.command("csr")
def csr(
    ctx: typer.Context,
    pin_source: str | None = typer.Option(None, "--pin-source", help=PIN_SOURCE_HELP),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Also copy the CSR here (it is kept under var/ca/pending)."
    ),
) -> None:
    """Generate the next intermediate key inside the factory token and write its CSR, for a
    root kept offline. Take the CSR to the root, then run `ca import-cert` with the
    certificate it signs (P-256, CA, pathLen 0, validity on whole hours)."""
    from provisioner.ca.ceremony import make_csr

    c = ctx_of(ctx)
    c.require("ca.csr")
    name, path = make_csr(c.settings, pin_source)
    if out is not None:
        out.write_bytes(path.read_bytes())
    _audit(c, "ca.csr_created", {"key": name, "csr": str(path)})
    typer.echo(f"key {name!r} generated in token {c.settings.hsm.factory_token!r}")
    typer.echo(f"CSR: {out or path}")
    typer.echo("next: have the root sign it, then `provisioner ca import-cert CERT.pem`")


@app.command("import-cert")
def import_cert(
    ctx: typer.Context,
    cert: Path = typer.Argument(..., help="The intermediate certificate the root signed."),
    root: Path | None = typer.Option(
        None, "--root", help="The root certificate (needed once, when no root.pem exists yet)."
    ),
    pin_source: str | None = typer.Option(None, "--pin-source", help=PIN_SOURCE_HELP),
) -> None:
    """Install a root-signed intermediate certificate for a key made by `ca csr`.

    Refused unless it belongs to a pending key in the token, chains to the root, is a CA
    certificate and chips can store it compressed. The previous intermediate stays for
    verification and CRLs; running signers switch to the new one by themselves."""
    from provisioner.ca.ceremony import import_certificate

    c = ctx_of(ctx)
    c.require("ca.import_cert")
    info = import_certificate(c.settings, cert, root, pin_source)
    _audit(
        c,
        "ca.certificate_imported",
        {
            "key": info.intermediate_name,
            "intermediate_subject": info.intermediate_subject,
            "intermediate_fingerprint_sha256": info.intermediate_fingerprint_sha256,
            "root_fingerprint_sha256": info.root_fingerprint_sha256,
        },
    )
    typer.echo(f"intermediate {info.intermediate_name!r} installed and current")
    typer.echo(f"  {info.intermediate_subject}  SHA-256 {info.intermediate_fingerprint_sha256}")


@app.command("rotate")
def rotate(
    ctx: typer.Context,
    pin_source: str | None = typer.Option(None, "--pin-source", help=PIN_SOURCE_HELP),
) -> None:
    """Make a new intermediate (new key in the factory token, signed by the root token) and
    make it current. The old one stays for verification and CRLs. Refused while a batch is
    running. With the root offline, use `ca csr` + `ca import-cert`."""
    from provisioner.ca import operations

    c = ctx_of(ctx)
    c.require("ca.rotate")
    info = operations.rotate(c.settings, c.engine, c.admin, pin_source)
    typer.echo(f"new intermediate {info.intermediate_name!r} is current")
    typer.echo(f"  {info.intermediate_subject}  SHA-256 {info.intermediate_fingerprint_sha256}")


@app.command("show")
def show(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Show the root, the current and previous intermediates, pending CSRs, the CA key's
    PKCS#11 URI, each running signer's token state, and how each key (CA, audit, manifest)
    is protected in its token: sensitive, extractable, modifiable, destroyable."""
    from provisioner.ca.overview import ca_overview, key_protections

    c = ctx_of(ctx)
    c.require("ca.show")
    data = ca_overview(c.settings)
    data["key_protection"] = key_protections(c.settings)
    if as_json:
        typer.echo(json.dumps(data))
        return
    if not data["initialised"]:
        typer.echo("no CA installed: run `provisioner ca init` (or `ca csr` + `ca import-cert`)")
        for name in data["pending"]:
            typer.echo(f"pending CSR: {name}")
        return
    for title, cert in (("root", data["root"]), ("intermediate", data["intermediate"])):
        typer.echo(f"{title:13} {cert['subject']}  ({cert['key']})")
        typer.echo(f"{'':13} valid {cert['not_before']} .. {cert['not_after']}")
        typer.echo(f"{'':13} SHA-256 {cert['sha256']}")
    typer.echo(f"{'key':13} {data['intermediate']['key_uri']}")
    for prev in data["previous"]:
        typer.echo(f"{'previous':13} {prev['name']}: {prev['subject']} SHA-256 {prev['sha256']}")
    for name in data["pending"]:
        typer.echo(f"{'pending CSR':13} {name}")
    for st in data["signers"]:
        typer.echo(
            f"{'signer':13} pid {st['pid']}: token {st['token_label']!r} {st['state']}"
            + (" (stale: process gone)" if st["stale"] else "")
            + (f", last error {st['last_error']}" if st.get("last_error") else "")
            + f", trips {st['trips']}"
        )
    _print_protection(data["key_protection"])


def _yes_no(value: bool | None, yes: str, no: str) -> str:
    return "unknown " + yes if value is None else (yes if value else no)


def _print_protection(report: dict[str, Any]) -> None:
    for k in report["keys"]:
        attrs = ", ".join(
            (
                _yes_no(k["sensitive"], "sensitive", "NOT SENSITIVE"),
                _yes_no(k["extractable"], "EXTRACTABLE", "not extractable"),
                _yes_no(k["modifiable"], "MODIFIABLE", "not modifiable"),
                _yes_no(k["destroyable"], "DESTROYABLE", "not destroyable"),
            )
        )
        typer.echo(f"{'key ' + k['role']:13} {k['label']} (token {k['token']!r}): {attrs}")
        if k["modifiable"] or k["destroyable"]:
            typer.echo(
                f"{'':13} anyone with the user PIN can relabel or destroy it: a key made "
                "before immutable keys, or a token that refused CKA_MODIFIABLE/"
                "CKA_DESTROYABLE=false"
            )
    for why in report["unavailable"]:
        typer.echo(f"{'keys':13} not read: {why}")


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    target: str | None = typer.Argument(
        None, help="Device id, chip serial (18 hex digits) or certificate serial number (hex)."
    ),
    reason: str | None = typer.Option(
        None,
        "--reason",
        help="unspecified, key_compromise, affiliation_changed, superseded, "
        "cessation_of_operation, certificate_hold or privilege_withdrawn (required for one "
        "certificate; default for --batch: unspecified).",
    ),
    batch: int | None = typer.Option(
        None, "--batch", help="Revoke every certificate this (ended) batch issued."
    ),
    pin_source: str | None = typer.Option(None, "--pin-source", help=PIN_SOURCE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Revoke a device certificate (or a whole batch's with --batch), block the device(s)
    in the registry (queued on the registry worker, retried, parked and synced like an
    upload) and publish the new CRLs at once (signed in the token).

    Idempotent: a certificate already revoked is reported, not revoked twice."""
    from provisioner.ca import operations, revocation

    c = ctx_of(ctx)
    c.require("ca.revoke")
    if (target is None) == (batch is None):
        raise InvalidInputError("give either a device/certificate to revoke or --batch N")
    if batch is not None:
        _revoke_batch(c, batch, reason or "unspecified", pin_source, as_json)
        return
    assert target is not None
    if reason is None:
        raise InvalidInputError("--reason is required to revoke one certificate")
    done = revocation.revoke(c.engine, target, reason, c.admin)
    # Before the CRLs: a PIN problem must not hold the block back.
    block = asdict(operations.queue_block(c.settings, done))
    published = operations.publish_crls(c.settings, c.engine, c.admin, pin_source)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "serial_number": done.serial_number,
                    "fingerprint_sha256": done.fingerprint_sha256,
                    "chip_serial": done.chip_serial,
                    "reason": done.reason,
                    "already_revoked": done.already,
                    "registry_block": block,
                    "crls": [_crl_json(c, p) for p in published],
                }
            )
        )
        return
    verb = "was already revoked" if done.already else "revoked"
    typer.echo(f"certificate {done.serial_number} (chip {done.chip_serial}) {verb}: {done.reason}")
    typer.echo(f"registry: {block['detail']}")
    _print_crls(c, published)


@app.command("crl")
def crl(
    ctx: typer.Context,
    pin_source: str | None = typer.Option(None, "--pin-source", help=PIN_SOURCE_HELP),
    import_root: Path | None = typer.Option(
        None,
        "--import-root",
        help="Install the root's CRL signed elsewhere (root kept offline), DER or PEM: "
        "checked against root.pem (signature, CRL number, nextUpdate).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Sign and publish the CRL of every intermediate (current and rotated ones) in the
    token, and the root's CRL with the root key when it is on this machine; the API serves
    them at /crl/<name>.crl and /crl/root.crl. The line's hsm worker re-signs them on a
    schedule ([crl] refresh_s); run this after a manual change or without the services.

    With the root offline, the root's CRL is signed at the root and installed with
    --import-root FILE (nothing else is signed then)."""
    c = ctx_of(ctx)
    c.require("ca.crl")
    from provisioner.ca import operations, root_crl

    if import_root is not None:
        published = [root_crl.import_root(c.settings, c.engine, import_root, c.admin)]
        note = None
    else:
        published = operations.publish_crls(c.settings, c.engine, c.admin, pin_source)
        root, note = _publish_root(c)
        published += root
    if as_json:
        typer.echo(json.dumps([_crl_json(c, p) for p in published]))
        return
    _print_crls(c, published)
    if note:
        typer.echo(note)


def _publish_root(c: CliContext) -> tuple[list[Any], str | None]:
    """The root's CRL signed here, or (root offline) what to do instead."""
    from provisioner.ca import root_crl

    try:
        return [root_crl.publish_root(c.settings, c.engine, c.admin)], None
    except root_crl.OfflineRootError as exc:
        return [], f"root CRL not signed: {exc}"


def _first_crls(c: CliContext) -> str:
    """After `ca init`: the first CRLs, so chains verify with -crl_check_all at once."""
    from provisioner.ca import operations
    from provisioner.errors import ProvisionerError

    try:
        published = operations.publish_crls(c.settings, c.engine, c.admin)
        root, note = _publish_root(c)
    except ProvisionerError as exc:
        return f"not published ({exc}): run `provisioner ca crl`"
    names = ", ".join(p.name for p in published + root)
    return f"published {names}" + (f"; {note}" if note else "")


def _revoke_batch(
    c: CliContext, batch: int, reason: str, pin_source: str | None, as_json: bool
) -> None:
    from provisioner.ca import operations

    out = operations.revoke_batch(c.settings, c.engine, batch, reason, c.admin, pin_source)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "batch_id": batch,
                    "reason": reason,
                    "revoked": [
                        {
                            "serial_number": d.serial_number,
                            "chip_serial": d.chip_serial,
                            "device_id": d.device_id,
                            "reason": d.reason,
                            "already_revoked": d.already,
                            "registry_block": asdict(b),
                        }
                        for d, b in zip(out.revoked, out.blocks, strict=True)
                    ],
                    "crls": [_crl_json(c, p) for p in out.crls],
                }
            )
        )
        return
    new = sum(not d.already for d in out.revoked)
    typer.echo(
        f"batch {batch}: {new} certificate(s) revoked ({reason}), "
        f"{len(out.revoked) - new} already revoked"
    )
    queued = sum(b.queued for b in out.blocks)
    typer.echo(f"registry: {queued} block(s) queued for the registry worker")
    for b in out.blocks:
        if not b.queued and b.state not in ("done",):
            typer.echo(f"  {b.detail}")
            break
    _print_crls(c, out.crls)


def _crl_json(c: CliContext, p: Any) -> dict[str, Any]:
    return {
        "ca": p.name,
        "path": str(p.path),
        "url": c.settings.api.crl_url(p.name),
        "crl_number": p.number,
        "entries": p.entries,
        "next_update": p.next_update.isoformat(),
        "sha256": p.sha256,
    }


def _print_crls(c: CliContext, published: list[Any]) -> None:
    for p in published:
        typer.echo(
            f"CRL {p.name} #{p.number}: {p.entries} revoked, next update "
            f"{p.next_update:%Y-%m-%d %H:%M} UTC"
        )
        typer.echo(f"  {p.path}")
        typer.echo(f"  served at {c.settings.api.crl_url(p.name)}")
