"""``provisioner device ...``: a provisioned chip acting as a device in the field.

``connect`` is the device itself: it needs no user account (the bridge authenticates it by
the JWT its chip signs), only the chip and the bridge's CA certificate. ``rotate-key``
changes what the registry accepts for the device, so it is registry administration: an
admin's command, audited step by step.
"""

from __future__ import annotations

import typer
from rich.console import Console

from provisioner.cli.context import ctx_of
from provisioner.field import rotation
from provisioner.field.client import ConnectionRefusedByBridge, FieldDevice, explain_refusal

app = typer.Typer(
    help="A provisioned chip as a device in the field: connect through the MQTT bridge with "
    "chip-signed JWTs, rotate its key.",
    no_args_is_help=True,
)

LOCATOR_HELP = (
    "Where the chip is: emulated:<station>/<socket> (the emulator's jig), "
    "i2c:/dev/i2c-N@0xADDR or hid:."
)


@app.command("connect")
def connect(
    ctx: typer.Context,
    locator: str = typer.Argument(..., help=LOCATOR_HELP, show_default=False),
    count: int | None = typer.Option(
        None, "--count", "-n", min=0, help="Publish this many telemetry events, then stop."
    ),
    interval: float = typer.Option(
        5.0, "--interval", min=0.05, help="Seconds between telemetry events."
    ),
    seconds: float | None = typer.Option(
        None, "--seconds", min=0.1, help="Stop after this many seconds (default: Ctrl-C)."
    ),
    jwt_lifetime: int | None = typer.Option(
        None,
        "--jwt-lifetime",
        min=1,
        max=24 * 3600,
        help="Lifetime of each chip-minted JWT in seconds (default bridge.jwt_refresh_s); the "
        "device reconnects with a fresh one at 80 % of it.",
    ),
) -> None:
    """Connect the chip at LOCATOR to the MQTT bridge as its registry device.

    The JWT (ES256, aud = the registry's project) is signed by the chip: only its SHA-256
    digest goes in, the raw R||S signature comes out. Subscribes to the device's config
    (QoS 1) and commands, publishes its state on connect and telemetry every --interval,
    prints every config and command it receives, and reconnects with a fresh chip-minted
    JWT before the current one expires and after a lost connection."""
    c = ctx_of(ctx)
    console = Console(highlight=False, soft_wrap=True)
    device = FieldDevice(
        c.settings,
        locator,
        jwt_lifetime_s=jwt_lifetime,
        emit=lambda s: console.print(s, markup=False),
    )
    try:
        device.run(count=count, interval_s=interval, seconds=seconds)
    except ConnectionRefusedByBridge as exc:
        hint = explain_refusal(c.settings, device.device_id)
        if hint:
            exc.args = (f"{exc}; {hint}",)
        raise
    except KeyboardInterrupt:
        console.print("interrupted: disconnected")
        raise typer.Exit(130) from None


@app.command("rotate-key")
def rotate_key(
    ctx: typer.Context,
    locator: str = typer.Argument(..., help=LOCATOR_HELP, show_default=False),
    grace: str = typer.Option(
        "1h",
        "--grace",
        help="How long the registry keeps accepting the old key after the switch (e.g. 90s, "
        "15m, 1h, 2d).",
    ),
    key_lifetime: str = typer.Option(
        "365d",
        "--key-lifetime",
        help="The new key's credential expires this long from now (Cloud IoT's credential "
        "expirationTime), unless a later rotation retires it first; 'none' for no expiry.",
    ),
) -> None:
    """Move the device at LOCATOR to a fresh key made inside its chip (admin).

    Picks a free rotation slot of the chip profile (2-4 by default), has the chip generate a
    key there, adds its public key to the device's registry credentials, switches the device
    to sign with it and gives the old credential an expiration of now + --grace. Expired
    credentials are removed on the way (Cloud IoT allows three). Every step is audited; a
    rotation cut short resumes when run again. Refused when the registry holds CA
    certificates (device credentials must then be certificates) or when the device has three
    credentials none of which has expired."""
    c = ctx_of(ctx)
    c.require("device.rotate_key")
    grace_s = rotation.parse_duration(grace)
    lifetime_s = None if key_lifetime.lower() == "none" else rotation.parse_duration(key_lifetime)
    done = rotation.rotate_key(
        c.settings, c.engine, c.actor, locator, grace_s=grace_s, key_lifetime_s=lifetime_s
    )
    typer.echo(
        f"device {done.device_id}: "
        + ("rotation resumed and finished; " if done.resumed else "")
        + f"now signs with slot {done.new_slot} (key SHA-256 {done.new_key_sha256[:16]}…); "
        + (
            f"the registry accepts the old key (slot {done.old_slot}) until {done.old_expires}"
            if done.old_expires
            else f"the registry held no credential for the old key (slot {done.old_slot})"
        )
        + f"; {done.credentials} credentials"
        + (f", {done.removed_expired} expired removed" if done.removed_expired else "")
    )
