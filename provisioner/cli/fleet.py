"""``provisioner fleet ...``: devices enrolled in the field. Enrollment tokens per registry
(``token create|list|regenerate``), the devices (``devices``) and cutting one off
(``revoke``). The devices themselves talk to the devices' HTTPS listener
(docs/enrollment.md)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from provisioner.cli.context import ctx_of
from provisioner.cli.secret_files import write_new_secret
from provisioner.errors import ConfigError
from provisioner.fleet import service, tokens

app = typer.Typer(
    help="Field enrollment: enrollment tokens (token create|list|regenerate), enrolled "
    "devices (devices) and their revocation (revoke).",
    no_args_is_help=True,
)
token_app = typer.Typer(help="Enrollment tokens of a registry.", no_args_is_help=True)
app.add_typer(token_app, name="token")

_JSON = typer.Option(False, "--json", help="Print JSON for scripts.")
_TOKEN_OUT = typer.Option(
    None,
    "--token-out",
    help="Write the token to this file (created 0600; must not exist) instead of printing it.",
)


def _show_new(new: tokens.NewToken, token_out: Path | None, what: str) -> None:
    info = new.info
    until = f"{info.expires_at:%Y-%m-%d %H:%M} UTC"
    uses = f"{info.max_uses} enrollment{'s' if info.max_uses != 1 else ''}"
    if token_out is not None:
        write_new_secret(token_out, new.token)
        typer.echo(
            f"enrollment token {info.id} {what} for {info.registry} ({uses}, until {until}) "
            f"written to {token_out}"
        )
    else:
        typer.echo(
            f"enrollment token {info.id} {what} for {info.registry} ({uses}, until {until}), "
            f"shown only now:\n\n  {new.token}\n"
        )
    typer.echo(
        f"devices send it as the `{'Thistle-Device-Enrollment-Token'}` header of POST /enroll"
    )


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    registry: str | None = typer.Option(
        None,
        "--registry",
        help="projects/P/locations/L/registries/R (default: the line's configured registry).",
    ),
    label: str | None = typer.Option(None, "--label", help="A note for the token list."),
    ttl_days: int | None = typer.Option(
        None, "--ttl-days", min=1, help="Lifetime in days (default fleet.token_ttl_days)."
    ),
    max_uses: int | None = typer.Option(
        None, "--max-uses", min=1, help="Devices it may enroll (default fleet.token_max_uses)."
    ),
    token_out: Path | None = _TOKEN_OUT,
) -> None:
    """Make an enrollment token for a registry (admin). Shown once; stored hashed. Audited."""
    c = ctx_of(ctx)
    who = c.require("fleet.manage")
    if token_out is not None and token_out.exists():
        raise ConfigError(f"{token_out} exists; choose a new file for the token")
    fleet = c.settings.fleet
    new = tokens.create(
        c.engine,
        registry or tokens.default_registry(c.settings),
        who.actor,
        ttl=timedelta(days=ttl_days or fleet.token_ttl_days),
        max_uses=max_uses or fleet.token_max_uses,
        label=label,
    )
    _show_new(new, token_out, "created")


@token_app.command("list")
def token_list(
    ctx: typer.Context,
    registry: str | None = typer.Option(None, "--registry", help="Only this registry."),
    as_json: bool = _JSON,
) -> None:
    """Every enrollment token with its state (live, used, expired, regenerated); never the
    token itself."""
    c = ctx_of(ctx)
    c.require("fleet.read")
    rows = tokens.list_tokens(c.engine, registry)
    if as_json:
        typer.echo(json.dumps([t.as_json() for t in rows]))
        return
    if not rows:
        typer.echo("no enrollment tokens (make one with `provisioner fleet token create`)")
        return
    t = Table(title="enrollment tokens")
    for col in ("id", "registry", "label", "uses", "expires", "state", "hash"):
        t.add_column(col)
    for r in rows:
        state = r.state + (f" (-> {r.replaced_by})" if r.replaced_by else "")
        t.add_row(
            str(r.id),
            r.registry,
            r.label or "",
            f"{r.uses}/{r.max_uses}",
            f"{r.expires_at:%Y-%m-%d %H:%M}",
            state,
            r.hash_prefix,
        )
    Console(width=200).print(t)


@token_app.command("regenerate")
def token_regenerate(
    ctx: typer.Context,
    token_id: int = typer.Argument(..., help="The token's id (`fleet token list`)."),
    ttl_days: int | None = typer.Option(
        None, "--ttl-days", min=1, help="Lifetime of the new token (default fleet.token_ttl_days)."
    ),
    token_out: Path | None = _TOKEN_OUT,
) -> None:
    """Replace an enrollment token: the old one is refused from now on, the new one (same
    registry, label and uses) is shown once. Audited."""
    c = ctx_of(ctx)
    who = c.require("fleet.manage")
    if token_out is not None and token_out.exists():
        raise ConfigError(f"{token_out} exists; choose a new file for the token")
    ttl = timedelta(days=ttl_days or c.settings.fleet.token_ttl_days)
    new = tokens.regenerate(c.engine, token_id, who.actor, ttl=ttl)
    typer.echo(f"enrollment token {token_id} is dead from now on")
    _show_new(new, token_out, "made in its place")


@app.command("devices")
def devices_cmd(
    ctx: typer.Context,
    registry: str | None = typer.Option(None, "--registry", help="Only this registry."),
    as_json: bool = _JSON,
) -> None:
    """The devices enrolled in the field, their live certificates and revocation."""
    c = ctx_of(ctx)
    c.require("fleet.read")
    rows = service.list_devices(c.engine, registry)
    if as_json:
        typer.echo(json.dumps([d.as_json() for d in rows]))
        return
    if not rows:
        typer.echo("no device has enrolled in the field yet")
        return
    t = Table(title="field devices")
    for col in ("device", "registry", "label", "enrolled", "certificates", "expires", "revoked"):
        t.add_column(col)
    for d in rows:
        t.add_row(
            d.device_id,
            d.registry,
            d.label or "",
            f"{d.created_at:%Y-%m-%d %H:%M}",
            str(d.live_certificates),
            f"{d.not_after:%Y-%m-%d}" if d.not_after else "",
            f"{d.revoked_at:%Y-%m-%d %H:%M}" if d.revoked_at else "",
        )
    Console(width=200).print(t)


@app.command("revoke")
def revoke_cmd(
    ctx: typer.Context,
    device_id: str = typer.Argument(..., help="The device's id (`fleet devices`)."),
    reason: str = typer.Option(
        "unspecified", "--reason", help="RFC 5280 reason (key_compromise, superseded, ...)."
    ),
) -> None:
    """Revoke a field device: no more certificates or renewals for it, every live identity
    certificate revoked, the device blocked in its registry (the bridges disconnect and
    refuse it) and the CRLs published. Audited; run again to retry what failed."""
    c = ctx_of(ctx)
    who = c.require("fleet.revoke")
    done = service.revoke_device(c.settings, c.engine, device_id, who.actor, reason)
    head = "was already revoked" if done.already else "revoked"
    serials = ", ".join(done.serials) or "none live"
    typer.echo(f"device {device_id} {head}; certificates revoked now: {serials}")
    if done.registry_error:
        typer.echo(
            f"warning: not blocked in the registry yet ({done.registry_error}); run this "
            "command again when the registry answers",
            err=True,
        )
    else:
        typer.echo(
            "blocked in the registry"
            if done.registry_blocked
            else "not in the registry (it never got a certificate)"
        )
    if done.crl_error:
        typer.echo(
            f"warning: CRLs not published ({done.crl_error}); `provisioner ca crl` publishes them",
            err=True,
        )
    else:
        typer.echo(f"CRLs published: {', '.join(done.crls)}")
    if done.registry_error or done.crl_error:
        raise typer.Exit(3)
