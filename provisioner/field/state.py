"""Which key a field device signs with: the device-side state of key rotation.

A real device keeps this in its own flash (a few bytes next to its firmware): the slot it
signs its JWTs with, and a rotation in progress, so that a power cut between two steps
resumes instead of stranding a key. The demo device keeps it in
``<var>/field/<chip serial hex>.json`` (0600): one small file per chip, written atomically.
No secret is in it: slots and public-key fingerprints only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.errors import ConfigError
from provisioner.settings import Settings

FORMAT = 1


def state_path(settings: Settings, chip_serial_hex: str) -> Path:
    return settings.var / "field" / f"{chip_serial_hex.lower()}.json"


def public_key_of(xy: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 key of a chip's 64-byte X||Y answer."""
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)


def public_key_pem(xy: bytes) -> str:
    """X||Y as a SubjectPublicKeyInfo PEM: the ``ES256_PEM`` credential Cloud IoT takes."""
    return (
        public_key_of(xy)
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def fingerprint(xy: bytes) -> str:
    """SHA-256 (hex) of the key's DER SubjectPublicKeyInfo: what audit events and the state
    file name a key by (the usual public-key fingerprint; never more than that)."""
    der = public_key_of(xy).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class KeyState:
    """The device's signing slot, and the steps of a rotation not finished yet.

    ``pending_slot``: a rotation toward that slot started (``pending_sha256``: its new key
    once GenKey made it). ``retire_slot``: the device switched away from that slot but the
    registry does not yet know when to stop accepting its key."""

    chip_serial: str
    slot: int
    slot_sha256: str | None = None
    pending_slot: int | None = None
    pending_sha256: str | None = None
    retire_slot: int | None = None
    retire_sha256: str | None = None
    updated: str | None = None

    def but(self, **changes: Any) -> KeyState:
        return replace(self, **changes)


def load_state(settings: Settings, chip_serial_hex: str, default_slot: int) -> KeyState:
    """The device's state; a device that never rotated signs with the profile's key slot."""
    path = state_path(settings, chip_serial_hex)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return KeyState(chip_serial=chip_serial_hex.lower(), slot=default_slot)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the device state {path} cannot be read ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ConfigError(f"the device state {path} is not a format-{FORMAT} state file")
    fields: dict[str, Any] = {k: raw.get(k) for k in KeyState.__dataclass_fields__}
    state = KeyState(**fields)
    slots = (state.slot, state.pending_slot, state.retire_slot)
    if not isinstance(state.slot, int) or not all(
        s is None or (isinstance(s, int) and 0 <= s <= 15) for s in slots
    ):
        raise ConfigError(f"the device state {path} names no valid slot")
    return state


def save_state(settings: Settings, state: KeyState) -> None:
    """Write atomically with mode 0600 (directory 0700): a crash leaves the old state or
    the new one, never half a file."""
    path = state_path(settings, state.chip_serial)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"format": FORMAT, **asdict(state)}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
