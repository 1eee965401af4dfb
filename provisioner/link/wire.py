"""What travels in a link message's body: task names, operations and the JSON forms of
the records' values. Shared by the station's client and the line's gateway."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Row

from provisioner.db.models import Device, Step
from provisioner.ports import IssuedCertificate

# A station's request to the line (queue GATEWAY_QUEUE in the station's namespace) and
# the line's answer (the task's result); the line's work for a station (its station queue).
GATEWAY_QUEUE = "gateway"
REQUEST_TASK = "provisioner.station_request"
REPLY = "provisioner.station_reply"

# How long a message is good for: long enough for a queue that waits on a busy line,
# short enough that a stolen message is soon useless (and the nonce table stays small).
REQUEST_TTL_S = 300
REPLY_TTL_S = 300
WORK_TTL_S = 24 * 3600  # a provision message may wait in a queue for a shift

DeviceRow = Row[*tuple[Any, ...]]
"""A row of the device table's columns (and maybe more), read by name."""

_DEVICE_FIELDS = (
    "id",
    "batch_id",
    "position",
    "socket",
    "chip_serial",
    "revision",
    "public_key",
    "error",
    "action",
    "claimed_by",
)


def device_to_json(dev: Device | DeviceRow) -> dict[str, Any]:
    """``dev``: a Device, or a row of the device table's columns (the gateway's check)."""
    out: dict[str, Any] = {name: getattr(dev, name) for name in _DEVICE_FIELDS}
    out["step"] = int(dev.step)
    out["cancelled"] = dev.cancelled_at is not None
    return out


def device_from_json(data: dict[str, Any]) -> Device:
    """A detached Device with what a station may know of it (never written anywhere)."""
    from provisioner.db.models import utcnow

    fields: dict[str, Any] = {name: data.get(name) for name in _DEVICE_FIELDS}
    dev = Device(**fields)
    dev.step = Step(int(data["step"]))
    dev.cancelled_at = utcnow() if data.get("cancelled") else None
    return dev


def cert_to_json(cert: IssuedCertificate) -> dict[str, Any]:
    return {
        "der": cert.der.hex(),
        "serial_number": format(cert.serial_number, "x"),
        "fingerprint_sha256": cert.fingerprint_sha256,
    }


def cert_from_json(data: dict[str, Any]) -> IssuedCertificate:
    return IssuedCertificate(
        der=bytes.fromhex(data["der"]),
        serial_number=int(data["serial_number"], 16),
        fingerprint_sha256=str(data["fingerprint_sha256"]),
    )
