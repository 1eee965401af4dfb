"""Key rotation for a device in the field, as Cloud IoT described it.

A Cloud IoT device holds up to three credentials, each with an optional expiration time,
so a device moves to a new key without a moment where the registry accepts neither:

1. ``started``: a free rotation slot of the chip profile is chosen (one that is not the
   current key's and whose key the registry no longer accepts);
2. ``registered``: the chip makes the new key there (GenKey: the private key never exists
   outside the chip) and its public key is added to the device's credentials as an
   ``ES256_PEM`` credential; credentials already expired are removed then, which is what
   keeps a device under the limit of three;
3. ``switched``: the device signs its JWTs with the new slot from now on (its state, which
   a real device keeps in flash, see :mod:`provisioner.field.state`);
4. ``old_retired``: the old credential gets ``expirationTime`` = now + the grace, so
   connections still using the old key keep working for that long and no longer after.

Every step is recorded in the device state before the next one starts, so a rotation cut
short (power, network, Ctrl-C) resumes where it stopped when it is run again, and appended
to the audit chain in its own transaction (chip serial, slots, public-key fingerprints:
never more of a key than its hash).

Refused: a registry that holds CA certificates (every device credential must then be a
certificate one of those CAs signed, and a key made in the field has none), and a device
whose three credentials are all still valid (one must expire first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine

from provisioner.audit import chain
from provisioner.chips.connector import Connector
from provisioner.chips.device import CryptoAuthChip
from provisioner.db.engine import transaction
from provisioner.errors import (
    ChipStateError,
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
)
from provisioner.field.state import KeyState, fingerprint, load_state, public_key_pem, save_state
from provisioner.ledger import registry_device_id
from provisioner.settings import Settings
from provisioner.uploads.client import NO_EXPIRY, CloudIotRegistry, DeviceCredential

MAX_CREDENTIALS = 3  # Cloud IoT's limit per device
NEW_KEY_FORMAT = "ES256_PEM"
EVENT_PREFIX = "device.key_rotation"


class RotationRefused(ConflictError):
    """The registry or the chip cannot take a rotation now; the message says why."""


@dataclass(frozen=True)
class Rotation:
    """What a finished rotation did."""

    chip_serial: str
    device_id: str
    old_slot: int
    new_slot: int
    new_key_sha256: str
    old_expires: str | None  # None: the registry held no credential for the old key
    removed_expired: int
    credentials: int
    resumed: bool


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``1h``, ``2d`` (and combinations like ``1h30m``) in s."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw, total, number = text.strip().lower(), 0.0, ""
    if not raw:
        raise InvalidInputError("empty duration: use e.g. 90s, 15m, 1h or 2d")
    for ch in raw:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total += float(number) * units[ch]
            number = ""
        else:
            raise InvalidInputError(f"bad duration {text!r}: use e.g. 90s, 15m, 1h or 2d")
    if number:
        total += float(number)
    return total


def rfc3339(when: datetime) -> str:
    """Whole seconds, rounded up: an expiry written here is never earlier than asked."""
    when = when.astimezone(UTC)
    if when.microsecond:
        when = when.replace(microsecond=0) + timedelta(seconds=1)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime | None:
    """A credential's expirationTime; None for Cloud IoT's "never" (the epoch)."""
    if not text or text == NO_EXPIRY:
        return None
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def credential_point(cred: DeviceCredential) -> bytes | None:
    """X||Y of a credential's P-256 key (public key or certificate); None for any other."""
    key: object  # whatever the PEM holds; only a P-256 key is used
    try:
        data = cred.key.encode()
        if cred.format.endswith("_X509_PEM"):
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return None
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]


def is_expired(cred: DeviceCredential, now: datetime) -> bool:
    when = parse_time(cred.expiration_time)
    return when is not None and when <= now


class KeyRotator:
    """One rotation of the chip at ``locator``; :meth:`run` carries it out or resumes it."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        actor: str,
        locator: str,
        *,
        grace_s: float,
        key_lifetime_s: float | None = None,
        registry: CloudIotRegistry | None = None,
        connector: Connector | None = None,
    ) -> None:
        if grace_s < 1:
            raise InvalidInputError(
                "the grace must be at least 1 s: the old key must stay valid while the device "
                "reconnects with the new one"
            )
        if key_lifetime_s is not None and key_lifetime_s <= grace_s:
            raise InvalidInputError("the new key's lifetime must be longer than the grace")
        if registry is None and settings.registry.kind != "cloudiot":
            raise ConfigError(
                f"key rotation speaks the Cloud IoT v1 REST API; registry.kind = "
                f"{settings.registry.kind!r} is not supported"
            )
        self.settings = settings
        self.engine = engine
        self.actor = actor
        self.locator = locator
        self.grace_s = grace_s
        self.key_lifetime_s = key_lifetime_s
        self._registry = registry
        self.connector = connector or Connector(settings)
        self.profile = self.connector.profile

    # --- steps ------------------------------------------------------------------------------

    def _audit(self, step: str, chip_serial: str, payload: dict[str, object]) -> None:
        with transaction(self.engine) as s:
            chain.append(
                s,
                f"{EVENT_PREFIX}.{step}",
                actor=self.actor,
                chip_serial=chip_serial.upper(),
                payload=payload,
            )

    def run(self) -> Rotation:
        registry = self._registry or CloudIotRegistry.from_settings(self.settings)
        try:
            with self.connector.open(self.locator) as chip:
                return self._rotate(chip, registry)
        finally:
            if self._registry is None:
                registry.close()

    def _rotate(self, chip: CryptoAuthChip, registry: CloudIotRegistry) -> Rotation:
        serial = chip.identity().serial_hex.lower()
        device_id = registry_device_id(serial)
        if registry.registry_certificate_count():
            raise RotationRefused(
                f"registry {registry.parent} holds CA certificates: Cloud IoT then accepts "
                "only device credentials that are X.509 certificates signed by one of them, "
                "and a key made in the field has no certificate. Rotate with a registry "
                "without CA certificates, or give the new key a certificate from that CA"
            )
        creds = registry.device_credentials(device_id)
        if creds is None:
            raise NotFoundError(
                f"device {device_id} (chip {serial.upper()}) is not in registry "
                f"{registry.parent}: was it provisioned on this line and uploaded "
                "(`provisioner registry sync`)?"
            )
        state = load_state(self.settings, serial, self.profile.key_slot)
        resumed = state.pending_slot is not None or state.retire_slot is not None
        removed = 0
        if state.retire_slot is None:
            if state.pending_slot is None:
                state = self._start(chip, serial, state, creds)
            state, creds, removed = self._register(chip, registry, device_id, state, creds)
            state = self._switch(serial, state)
        old_expires, creds = self._retire(registry, device_id, serial, state, creds)
        new_slot = state.slot
        assert state.slot_sha256 is not None
        save_state(self.settings, state.but(retire_slot=None, retire_sha256=None, updated=_now()))
        return Rotation(
            chip_serial=serial,
            device_id=device_id,
            old_slot=state.retire_slot if state.retire_slot is not None else new_slot,
            new_slot=new_slot,
            new_key_sha256=state.slot_sha256,
            old_expires=old_expires,
            removed_expired=removed,
            credentials=len(creds),
            resumed=resumed,
        )

    def _start(
        self,
        chip: CryptoAuthChip,
        serial: str,
        state: KeyState,
        creds: Sequence[DeviceCredential],
    ) -> KeyState:
        """Choose the slot, check the registry has room, record the start."""
        now = datetime.now(UTC)
        valid = [c for c in creds if not is_expired(c, now)]
        if len(valid) >= MAX_CREDENTIALS:
            ends = sorted(filter(None, (parse_time(c.expiration_time) for c in valid)))
            when = f"; the first expires at {rfc3339(ends[0])}" if ends else ""
            raise RotationRefused(
                f"device {registry_device_id(serial)} already has {MAX_CREDENTIALS} credentials "
                f"and none has expired (Cloud IoT's limit is {MAX_CREDENTIALS}): wait until the "
                f"grace of the last rotation ends{when}"
            )
        accepted = {p for c in valid if (p := credential_point(c)) is not None}
        slot = self._free_slot(chip, state.slot, accepted)
        current_sha = fingerprint(chip.public_key(state.slot))
        state = state.but(slot_sha256=current_sha, pending_slot=slot, updated=_now())
        save_state(self.settings, state)
        self._audit(
            "started",
            serial,
            {"from_slot": state.slot, "to_slot": slot, "current_key_sha256": current_sha},
        )
        return state

    def _free_slot(self, chip: CryptoAuthChip, current: int, accepted: set[bytes]) -> int:
        """The first rotation slot after the current one (cyclically) that the chip can
        regenerate and whose key, if any, the registry no longer accepts."""
        slots = list(self.profile.rotation_slots)
        if not slots:
            raise ConfigError("the chip profile has no rotation slots")
        if current in slots:
            at = slots.index(current) + 1
            slots = slots[at:] + slots[:at]
        config = chip.read_config()
        locked = chip.locked_slots()
        busy = []
        for slot in slots:
            if slot == current:
                continue
            problem = self.profile.rotation_incompatibility(config, slot)
            if problem:
                raise ChipStateError(f"chip in {self.locator}: {problem}")
            if slot in locked:
                raise ChipStateError(
                    f"chip in {self.locator}: rotation slot {slot} is locked (SlotLocked), so "
                    "GenKey can no longer replace its key"
                )
            if chip.key_valid(slot) and chip.public_key(slot) in accepted:
                busy.append(slot)
                continue
            return slot
        raise RotationRefused(
            f"every rotation slot ({', '.join(map(str, busy))}) holds a key the registry still "
            "accepts: wait until the grace of the last rotation ends"
        )

    def _register(
        self,
        chip: CryptoAuthChip,
        registry: CloudIotRegistry,
        device_id: str,
        state: KeyState,
        creds: Sequence[DeviceCredential],
    ) -> tuple[KeyState, tuple[DeviceCredential, ...], int]:
        """GenKey in the pending slot (unless done before a resume) and add its public key
        to the registry, dropping expired credentials."""
        slot = state.pending_slot
        assert slot is not None
        point: bytes | None = None
        if state.pending_sha256 is not None and chip.key_valid(slot):
            have = chip.public_key(slot)
            if fingerprint(have) == state.pending_sha256:
                point = have  # GenKey ran before the interruption: keep that key
        if point is None:
            point = chip.genkey(slot)  # the chip makes the key; only X||Y comes back
            state = state.but(pending_sha256=fingerprint(point), updated=_now())
            save_state(self.settings, state)
        sha = fingerprint(point)
        now = datetime.now(UTC)
        kept = [c for c in creds if not is_expired(c, now)]
        removed = len(creds) - len(kept)
        if not any(credential_point(c) == point for c in kept):
            if len(kept) >= MAX_CREDENTIALS:
                raise RotationRefused(
                    f"device {device_id} already has {MAX_CREDENTIALS} valid credentials: "
                    "wait until one expires, then run the rotation again (it resumes)"
                )
            expires = NO_EXPIRY
            if self.key_lifetime_s is not None:
                expires = rfc3339(now + timedelta(seconds=self.key_lifetime_s))
            new = DeviceCredential(NEW_KEY_FORMAT, public_key_pem(point), expires)
            creds = registry.patch_device_credentials(device_id, (*kept, new))
        else:
            creds = tuple(kept)
        self._audit(
            "registered",
            state.chip_serial,
            {
                "slot": slot,
                "new_key_sha256": sha,
                "format": NEW_KEY_FORMAT,
                "credentials": len(creds),
                "removed_expired": removed,
            },
        )
        return state, tuple(creds), removed

    def _switch(self, serial: str, state: KeyState) -> KeyState:
        """The device signs with the new slot from now on."""
        assert state.pending_slot is not None and state.pending_sha256 is not None
        new = state.but(
            slot=state.pending_slot,
            slot_sha256=state.pending_sha256,
            pending_slot=None,
            pending_sha256=None,
            retire_slot=state.slot,
            retire_sha256=state.slot_sha256,
            updated=_now(),
        )
        save_state(self.settings, new)
        self._audit(
            "switched",
            serial,
            {
                "from_slot": state.slot,
                "to_slot": new.slot,
                "new_key_sha256": new.slot_sha256,
            },
        )
        return new

    def _retire(
        self,
        registry: CloudIotRegistry,
        device_id: str,
        serial: str,
        state: KeyState,
        creds: Sequence[DeviceCredential],
    ) -> tuple[str | None, tuple[DeviceCredential, ...]]:
        """Give the old key's credentials an expiry of now + grace (an earlier expiry is
        kept: the grace never extends a credential)."""
        assert state.retire_slot is not None
        now = datetime.now(UTC)
        expires = rfc3339(now + timedelta(seconds=self.grace_s))
        expires_at = parse_time(expires)
        assert expires_at is not None
        changed, out, found = False, [], False
        for cred in creds:
            point = credential_point(cred)
            if point is not None and fingerprint(point) == state.retire_sha256:
                found = True
                current = parse_time(cred.expiration_time)
                if current is None or current > expires_at:
                    cred = DeviceCredential(cred.format, cred.key, expires)
                    changed = True
            out.append(cred)
        result = tuple(out)
        if changed:
            result = registry.patch_device_credentials(device_id, result)
        self._audit(
            "old_retired",
            serial,
            {
                "slot": state.retire_slot,
                "old_key_sha256": state.retire_sha256,
                "expires": expires if found else None,
                "grace_s": self.grace_s,
            },
        )
        return (expires if found else None), result


def _now() -> str:
    return rfc3339(datetime.now(UTC))


def rotate_key(
    settings: Settings,
    engine: Engine,
    actor: str,
    locator: str,
    *,
    grace_s: float,
    key_lifetime_s: float | None = None,
    registry: CloudIotRegistry | None = None,
) -> Rotation:
    """Rotate (or finish rotating) the key of the chip at ``locator``."""
    return KeyRotator(
        settings,
        engine,
        actor,
        locator,
        grace_s=grace_s,
        key_lifetime_s=key_lifetime_s,
        registry=registry,
    ).run()
