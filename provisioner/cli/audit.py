"""``provisioner audit ...``: auditors query, export, verify and prove the trail."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from provisioner.audit import proofs, query
from provisioner.audit.checkpointer import load_audit_key, read_public_key
from provisioner.audit.verify import verify_log
from provisioner.cli.context import ctx_of
from provisioner.db.engine import transaction
from provisioner.db.models import MAX_ID, AuditCheckpoint
from provisioner.errors import ConfigError, ProofError

app = typer.Typer(
    help="Query, export, verify and prove the tamper-evident audit trail.",
    no_args_is_help=True,
)

_KEY_HELP = (
    "The audit public key (PEM) to check checkpoint signatures with; default the installed "
    "var/ca/audit-key.pem. An auditor passes the copy they pinned."
)


_SERIAL = typer.Option(None, "--serial", help="Chip serial (hex, any case).")
_BATCH = typer.Option(None, "--batch", min=1, max=MAX_ID, help="Batch id.")
_STATION = typer.Option(None, "--station", help="Station id.")
_ACTOR = typer.Option(None, "--actor", help="Actor, e.g. operator:alice or station:line1.")
_TYPE = typer.Option(None, "--type", help="Event type, e.g. device.cert_issued; 'incident.*'.")
_SINCE = typer.Option(None, "--since", help="From this UTC time (ISO 8601, inclusive).")
_UNTIL = typer.Option(None, "--until", help="Before this UTC time (ISO 8601, exclusive).")


@app.command("verify")
def verify(
    ctx: typer.Context,
    key: Path | None = typer.Option(None, "--key", help=_KEY_HELP),
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


@app.command("query")
def query_cmd(
    ctx: typer.Context,
    serial: str | None = _SERIAL,
    batch: int | None = _BATCH,
    station: str | None = _STATION,
    actor: str | None = _ACTOR,
    event_type: str | None = _TYPE,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    after: int = typer.Option(0, "--after", help="Page cursor: events after this seq."),
    limit: int = typer.Option(50, "--limit", help=f"Page size (1..{query.MAX_PAGE})."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Events matching every given filter, oldest first, one page at a time."""
    c = ctx_of(ctx)
    c.require("audit.query")
    f = query.EventFilter.of(serial, batch, station, actor, event_type, since, until)
    with transaction(c.engine) as s:
        rows = query.page(s, f, after, limit)
    nxt = rows[-1].seq if len(rows) == limit else None
    if as_json:
        typer.echo(json.dumps({"events": [query.as_dict(e) for e in rows], "next_after": nxt}))
        return
    for e in rows:
        where = " ".join(
            f"{k}={v}"
            for k, v in (
                ("station", e.station_id),
                ("socket", e.socket),
                ("batch", e.batch_id),
                ("chip", e.chip_serial),
            )
            if v is not None
        )
        typer.echo(f"{e.seq:>8} {e.ts} {e.actor:<22} {e.event_type:<24} {where} {e.payload}")
    if nxt is not None:
        typer.echo(f"more: --after {nxt}", err=True)


@app.command("export")
def export(
    ctx: typer.Context,
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or csv."),
    output: Path | None = typer.Option(None, "--output", "-o", help="File (default stdout)."),
    serial: str | None = _SERIAL,
    batch: int | None = _BATCH,
    station: str | None = _STATION,
    actor: str | None = _ACTOR,
    event_type: str | None = _TYPE,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
) -> None:
    """Every matching event as JSON Lines or CSV (with each event's chain hash)."""
    c = ctx_of(ctx)
    c.require("audit.export")
    if fmt not in ("jsonl", "csv"):
        raise ConfigError("--format must be jsonl or csv")
    f = query.EventFilter.of(serial, batch, station, actor, event_type, since, until)
    events = query.iterate(c.engine, f)
    lines = query.jsonl_lines(events) if fmt == "jsonl" else query.csv_lines(events)
    if output is None:
        query.write(lines, sys.stdout)
        return
    tmp = output.with_name(output.name + ".part")  # a failed export leaves no partial file
    with tmp.open("w", newline="") as out:
        n = query.write(lines, out) - (fmt == "csv")
    tmp.replace(output)
    typer.echo(f"{n} events written to {output}", err=True)


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
