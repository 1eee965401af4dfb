"""``provisioner users ...``: admins manage accounts and their tokens.

A new token is written to a file (mode 0600) and never printed: terminals, CI logs and
shell history keep what is printed. The last admin can be neither revoked nor demoted; if its
token is lost anyway, root on the line server runs ``users recover-admin`` with the factory
token's SO PIN (the one command here that needs no user token).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from provisioner.auth import recovery, users
from provisioner.cli.context import ctx_of
from provisioner.cli.secret_files import write_new_secret
from provisioner.errors import ConfigError

app = typer.Typer(help="User accounts, roles and API tokens (admin).", no_args_is_help=True)

_OUT = typer.Option(
    ..., "--token-out", help="Write the new token to this file (created 0600; must not exist)."
)


@app.command("add")
def add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="User name (lower-case, e.g. alice or ci-uploader)."),
    role: str = typer.Option(..., "--role", help="operator, auditor or admin."),
    token_out: Path = _OUT,
) -> None:
    """Create a user with one role and its first token."""
    c = ctx_of(ctx)
    who = c.require("users.manage")
    if token_out.exists():
        raise ConfigError(f"{token_out} exists; choose a new file for the token")
    token = users.add_user(c.engine, name, role, who.actor)
    write_new_secret(token_out, token)
    typer.echo(f"user {name} ({role}) created; token written to {token_out}")


@app.command("token")
def token(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="User name."),
    token_out: Path = _OUT,
    label: str | None = typer.Option(None, "--label", help="What the token is for."),
) -> None:
    """Give a user another token (e.g. one per machine)."""
    c = ctx_of(ctx)
    who = c.require("users.manage")
    if token_out.exists():
        raise ConfigError(f"{token_out} exists; choose a new file for the token")
    write_new_secret(token_out, users.add_token(c.engine, name, who.actor, label))
    typer.echo(f"new token for {name} written to {token_out}")


@app.command("revoke")
def revoke(ctx: typer.Context, name: str = typer.Argument(..., help="User name.")) -> None:
    """Revoke every token of a user (the account and its history stay)."""
    c = ctx_of(ctx)
    who = c.require("users.manage")
    n = users.revoke_tokens(c.engine, name, who.actor)
    typer.echo(f"{n} token(s) of {name} revoked")


@app.command("role")
def role(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="User name."),
    new_role: str = typer.Option(..., "--role", help="operator, auditor or admin."),
) -> None:
    """Change a user's role (the last admin cannot be demoted: add another admin first)."""
    c = ctx_of(ctx)
    who = c.require("users.manage")
    old = users.set_role(c.engine, name, new_role, who.actor)
    if old == new_role:
        typer.echo(f"{name} is already {new_role}: nothing changed")
    else:
        typer.echo(f"{name}: {old} -> {new_role}")


@app.command("recover-admin")
def recover_admin(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="User to make admin (created if absent)."),
    token_out: Path = _OUT,
    so_pin_file: Path | None = typer.Option(
        None,
        "--so-pin-file",
        help="File holding the factory token's SO PIN (default: typed at a prompt).",
    ),
) -> None:
    """Break-glass for root on the line server: make NAME an admin again (needs the SO PIN).

    For when no admin can act (the last admin's token is lost): with the factory token's SO
    PIN, NAME becomes an enabled admin (created if absent) with a new token. Audited."""
    c = ctx_of(ctx)  # no user token: this is the way back in (root + SO PIN instead)
    users.check_name(name)
    recovery.require_root(c.engine, name)
    if token_out.exists():
        raise ConfigError(f"{token_out} exists; choose a new file for the token")
    so_pin = recovery.read_so_pin(so_pin_file, c.settings.hsm.factory_token)
    token = recovery.recover_admin(c.settings, c.engine, name, so_pin)
    del so_pin
    write_new_secret(token_out, token)
    typer.echo(f"{name} is an admin again; token written to {token_out}")


@app.command("list")
def list_(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Users, their roles and tokens; a user without a live token is shown as revoked."""
    c = ctx_of(ctx)
    c.require("users.read")
    rows = users.list_users(c.engine)
    if as_json:
        typer.echo(json.dumps([u.as_dict() for u in rows]))
        return
    if not rows:
        typer.echo(
            "no users yet: add the first admin with `provisioner users add NAME --role admin`"
        )
        return
    typer.echo(f"{'NAME':<24} {'ROLE':<9} {'STATUS':<9} {'TOKENS':>6} {'REVOKED':>7}  CREATED")
    for u in rows:
        typer.echo(
            f"{u.name:<24} {u.role:<9} {u.status:<9} {u.live_tokens:>6} {u.revoked_tokens:>7}  "
            f"{u.created_at:%Y-%m-%d %H:%M} by {u.created_by}"
        )
