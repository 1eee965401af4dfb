"""The end of ``make demo``: one chip just provisioned on the line goes into the field.

It connects through the MQTT bridge with a JWT its chip signs, publishes two telemetry
events, prints the config the registry sends it (set here with
``modifyCloudToDeviceConfig`` first) and disconnects. What a customer sees next to the
batch table: the chips the line made can prove who they are to the registry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from rich.markup import escape
from sqlalchemy.engine import Engine

from provisioner.batches.views import DeviceRow, report
from provisioner.chips.connector import Connector
from provisioner.errors import ProvisionerError
from provisioner.field.client import ConnectionRefusedByBridge, FieldDevice, explain_refusal
from provisioner.settings import Settings
from provisioner.uploads.client import CloudIotRegistry

UPLOAD_WAIT_S = 30.0
DEMO_JWT_LIFETIME_S = 600


def _uploaded(engine: Engine, batch_id: int) -> DeviceRow | None:
    """A device of the batch the registry holds (waits a little for the uploads)."""
    deadline = time.monotonic() + UPLOAD_WAIT_S
    while True:
        rows = report(engine, batch_id).devices
        done = [d for d in rows if d.status == "done" and d.chip_serial]
        if done or time.monotonic() > deadline:
            return done[0] if done else None
        time.sleep(0.5)


def _locator(settings: Settings, station_id: str, serial_hex: str) -> str:
    """The socket holding the chip; a chip already taken out is put back in socket 0
    (from the emulator's pool: the same chip, as a part picked from the output tray)."""
    jig = Connector(settings).jig(station_id)
    for socket in range(jig.sockets):
        if (jig.serial_in(socket) or "").upper() == serial_hex.upper():
            return f"emulated:{station_id}/{socket}"
    jig.insert(0, jig.pool_path(serial_hex))
    return f"emulated:{station_id}/0"


def run_field_demo(
    settings: Settings,
    engine: Engine,
    batch_id: int,
    station_id: str,
    say: Callable[[str], None],
) -> bool:
    """Connect one provisioned chip of the batch; False (after saying why) on failure."""
    if not settings.bridge.enabled:
        say("MQTT bridge disabled (bridge.enabled = false): the field-device step is skipped")
        return True
    if settings.station(station_id).transport != "emulated":
        say("the field-device step needs an emulated station: skipped")
        return True
    device = _uploaded(engine, batch_id)
    if device is None or device.chip_serial is None:
        say("[red]field device: no device of the batch is in the registry yet[/]")
        return False
    locator = _locator(settings, station_id, device.chip_serial)
    try:
        field = FieldDevice(
            settings,
            locator,
            jwt_lifetime_s=DEMO_JWT_LIFETIME_S,
            emit=lambda s: say("  " + escape(s)),
        )
        config = json.dumps({"demo": "hello from the registry", "batch": batch_id}).encode()
        with CloudIotRegistry.from_settings(settings) as registry:
            version = registry.modify_config(field.device_id, config)
        say(
            f"field device: chip {device.chip_serial} ({locator}) connects to the MQTT bridge "
            f"as {field.device_id}; registry config version {version} set"
        )
        try:
            rep = field.run(count=2, interval_s=0.5, seconds=30, min_configs=1)
        except ConnectionRefusedByBridge as exc:
            hint = explain_refusal(settings, field.device_id)
            if hint:
                exc.args = (f"{exc}; {hint}",)
            raise
    except ProvisionerError as exc:
        say(f"[red]field device failed[/]: {exc}")
        return False
    ok = rep.acknowledged == 2 and bool(rep.configs)
    say(
        ("[green]field device ok[/]" if ok else "[red]field device incomplete[/]")
        + f": 2 telemetry events published ({rep.acknowledged} acknowledged), "
        f"{len(rep.configs)} config received, JWT signed by the chip"
    )
    return ok
