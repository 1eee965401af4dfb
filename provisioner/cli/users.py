"""``provisioner users ...``: admins manage accounts and their tokens.

A new token is written to a file (mode 0600) and never printed: terminals, CI logs and
shell history keep what is printed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from provisioner.auth import users
from provisioner.cli.context import ctx_of
from provisioner.errors import ConfigError

app = typer.Typer(help="User accounts, roles and API tokens (admin).", no_args_is_help=True)

_OUT = typer.Option(
    ..., "--token-out", help="Write the new token to this file (created 0600; must not exist)."
)


def _write_token(path: Path, token: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; choose a new file for the token") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")


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
    _write_token(token_out, token)
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
    _write_token(token_out, users.add_token(c.engine, name, who.actor, label))
    typer.echo(f"new token for {name} written to {token_out}")


@app.command("revoke")
def revoke(ctx: typer.Context, name: str = typer.Argument(..., help="User name.")) -> None:
    """Revoke every token of a user (the account and its history stay)."""
    c = ctx_of(ctx)
    who = c.require("users.manage")
    n = users.revoke_tokens(c.engine, name, who.actor)
    typer.echo(f"{n} token(s) of {name} revoked")


@app.command("list")
def list_(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Users and their roles."""
    c = ctx_of(ctx)
    c.require("users.read")
    rows = users.list_users(c.engine)
    if as_json:
        typer.echo(
            json.dumps([{"name": u.name, "role": u.role, "disabled": u.disabled} for u in rows])
        )
        return
    for u in rows:
        typer.echo(f"{u.name:<24} {u.role:<9} {'disabled' if u.disabled else ''}")
