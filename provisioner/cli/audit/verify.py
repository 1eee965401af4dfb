"""``provisioner audit verify`` and the signed checkpoints: is the whole trail intact, and
does today's log extend the checkpoints an auditor kept?

``audit checkpoint`` is a group: ``checkpoint sign`` (admin, HSM: sign one now; the bare
``audit checkpoint`` still does this, as the docs and alerts say) and ``checkpoint save
FILE`` (auditor: keep the latest signed checkpoint, to check the log against later).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from provisioner.audit import checkpoint as cpmod
from provisioner.audit import explain, kept
from provisioner.audit.checkpointer import load_audit_key
from provisioner.audit.verify import verify_log
from provisioner.cli.audit.common import (
    KEY_HELP,
    app,
)
from provisioner.cli.context import CliContext, ctx_of
from provisioner.db.engine import transaction
from provisioner.db.models import AuditCheckpoint
from provisioner.errors import InvalidInputError, NotFoundError, ProofError

_KEPT_HELP = (
    "A signed checkpoint you kept from earlier (`audit checkpoint save FILE`): proves "
    "today's log extends it (signature, origin, consistency proof to the latest checkpoint, "
    "stored root at its size). Repeatable."
)


@app.command("verify")
def verify(
    ctx: typer.Context,
    key: Path | None = typer.Option(None, "--key", help=KEY_HELP),
    since: list[Path] = typer.Option([], "--since-checkpoint", help=_KEPT_HELP),
    checkpoint: list[Path] = typer.Option(
        [], "--checkpoint", help="The same as --since-checkpoint (its older name). Repeatable."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Check the whole trail, and that today's log extends the checkpoints you kept.

    Recomputes every event, the hash chain, the Merkle tree and every signed checkpoint;
    prints what was checked and, on failure, what it means and what to do. Exit 0 intact;
    1 something does not verify (the log, or a kept checkpoint or key that does not match:
    the message says which); 2 a file in the wrong form."""
    c = ctx_of(ctx)
    c.require("audit.verify")
    files = [kept.read_file(p) for p in [*since, *checkpoint]]  # wrong form: exit 2
    audit_key = load_audit_key(c.settings, key)
    if files and audit_key is None:
        raise InvalidInputError(
            "checking a kept checkpoint needs the audit public key: pass --key FILE (the "
            "copy you pinned)"
        )
    sha = explain.key_sha256(audit_key.public_key) if audit_key else None
    with transaction(c.engine) as s:
        checks = [kept.check(s, audit_key, f) for f in files] if audit_key else []
        usable = [f.note for f, k in zip(files, checks, strict=True) if k.kind not in _UNUSABLE]
        res = verify_log(s, audit_key, usable)
    words = explain.explanation(res, sha, checks)
    if as_json:
        doc = {
            **res.as_json(),
            "ok": words.ok,
            "log_ok": res.ok,
            "audit_key_sha256": sha,
            "kept_checkpoints": [k.as_json() for k in checks],
            "explanation": words.lines(),
        }
        typer.echo(json.dumps(doc))
    else:
        for line in words.lines():
            typer.echo(line, err=not words.ok)
    if not words.ok:
        raise typer.Exit(1)


# A kept file the key did not sign, or of another log, is not handed to verify_log: it
# would report it as the log failing, when only the input is wrong.
_UNUSABLE = frozenset({"wrong_key", "bad_signature", "other_log"})


def _select_checkpoints() -> SelectOfScalar[AuditCheckpoint]:
    return select(AuditCheckpoint).order_by(col(AuditCheckpoint.size))


@app.command("checkpoints")
def checkpoints(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """List the signed checkpoints (size, time, why: batch_end, events, interval, manual)."""
    c = ctx_of(ctx)
    c.require("audit.query")
    with transaction(c.engine) as s:
        rows = list(s.exec(_select_checkpoints()).all())
    if as_json:
        typer.echo(json.dumps([r.model_dump() for r in rows]))
        return
    for r in rows:
        typer.echo(f"{r.size:>8} {r.created_at} {r.reason:<10} {r.root_hash}")


checkpoint_app = typer.Typer(
    help="Sign a checkpoint now (`checkpoint` alone or `checkpoint sign`, admin), or save "
    "the latest signed one to a file to check the log against later (`checkpoint save`).",
    invoke_without_command=True,
)
app.add_typer(checkpoint_app, name="checkpoint")

_PIN_HELP = "Factory token PIN source (default from the config)."


@checkpoint_app.callback()
def checkpoint_group(
    ctx: typer.Context,
    pin_source: str | None = typer.Option(None, "--pin-source", help=_PIN_HELP),
) -> None:
    """Bare `provisioner audit checkpoint` signs one now, as `checkpoint sign` does."""
    if ctx.invoked_subcommand is None:
        c = ctx_of(ctx)
        c.require("audit.checkpoint")
        _sign_now(c, pin_source)


@checkpoint_app.command("sign")
def checkpoint_sign(
    ctx: typer.Context,
    pin_source: str | None = typer.Option(None, "--pin-source", help=_PIN_HELP),
) -> None:
    """Sign a checkpoint over every event now, with the audit key in the HSM."""
    c = ctx_of(ctx)
    c.require("audit.checkpoint")
    _sign_now(c, pin_source)


def _sign_now(c: CliContext, pin_source: str | None) -> None:
    """Sign now (the caller checked the role: ``audit.checkpoint``, admins)."""
    from hsm.signer import token_key
    from provisioner.audit.checkpointer import Checkpointer
    from provisioner.ca.ceremony import factory_pin, open_module

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


@checkpoint_app.command("save")
def checkpoint_save(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Where to write the checkpoint (text)."),
    size: int | None = typer.Option(
        None, "--size", min=1, help="The checkpoint at this tree size (default: the latest)."
    ),
    key: Path | None = typer.Option(None, "--key", help=KEY_HELP),
    force: bool = typer.Option(False, "--force", help="Overwrite FILE if it exists."),
) -> None:
    """Save the latest signed checkpoint to a file, to check the log against later.

    The file holds the checkpoint exactly as signed (its C2SP text form). Later,
    `provisioner audit verify --since-checkpoint FILE --key KEY` proves the log still
    extends it. Keep the file where the factory cannot change it. Writes nothing to the
    database."""
    c = ctx_of(ctx)
    c.require("audit.query")
    query = select(AuditCheckpoint)
    if size is None:
        query = query.order_by(col(AuditCheckpoint.size).desc()).limit(1)
    else:
        query = query.where(AuditCheckpoint.size == size)
    with transaction(c.engine) as s:
        row = s.exec(query).first()
    if row is None:
        raise NotFoundError(
            "no signed checkpoint yet: the signer writes one at each batch end and while "
            "events are added; an admin signs one with `provisioner audit checkpoint sign`"
            if size is None
            else f"no signed checkpoint at size {size} (see `provisioner audit checkpoints`)"
        )
    audit_key = load_audit_key(c.settings, key)
    checked = "signature NOT checked (no audit public key: pass --key)"
    if audit_key is not None:
        try:
            cpmod.open_signed(row.note, audit_key.name, audit_key.public_key, audit_key.origin)
        except ProofError as exc:
            raise InvalidInputError(
                f"the stored checkpoint at size {row.size} does not verify with the audit key "
                f"whose SHA-256 is {explain.key_sha256(audit_key.public_key)} ({exc}): not "
                "saved; run `provisioner audit verify` to see why"
            ) from None
        checked = "signature checked with the audit key whose SHA-256 is " + explain.key_sha256(
            audit_key.public_key
        )
    try:
        with file.open("wb" if force else "xb") as out:
            out.write(row.note.encode("utf-8"))
    except FileExistsError:
        raise InvalidInputError(
            f"{file} exists: not overwritten (pass --force to replace it)"
        ) from None
    except OSError as exc:
        raise InvalidInputError(f"cannot write {file}: {exc.strerror}") from None
    typer.echo(
        f"{file}: the checkpoint over {row.size} events signed {row.created_at} "
        f"({row.reason}), root {row.root_hash}; {checked}"
    )
    typer.echo(
        f"check the log against it later: provisioner audit verify --since-checkpoint {file} "
        "--key AUDIT-KEY.pem"
    )
