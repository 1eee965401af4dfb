"""Key rotation against the real registry app: credentials with expiry, the device state,
the audit chain, and the refusals (CA certificates, three valid credentials, unknown
device, a chip without rotation slots)."""

from __future__ import annotations

import os
import stat
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.audit.verify import verify_log
from provisioner.chips.connector import Connector
from provisioner.chips.emulator.tray import provisioned_elsewhere
from provisioner.chips.profile import ChipProfile
from provisioner.cloud.tokens import Role
from provisioner.db.models import AuditEvent
from provisioner.errors import ChipStateError, NotFoundError
from provisioner.field.jwt import mint_jwt
from provisioner.field.rotation import RotationRefused, parse_duration, parse_time, rotate_key
from provisioner.field.state import fingerprint, load_state, state_path
from provisioner.ledger import registry_device_id
from provisioner.uploads.client import NO_EXPIRY, CloudIotRegistry
from tests.cloud.inprocess import LOCATION, PARENT, PROJECT, TOKENS
from tests.field.conftest import (
    LOCATOR,
    Line,
    admin_client,
    chip_public_key,
    chip_serial,
    field_settings,
    provision_chip,
    verify_es256,
)

ACTOR = "admin:tester"


def events(engine: Engine) -> list[AuditEvent]:
    with Session(engine) as s:
        return list(
            s.exec(
                select(AuditEvent)
                .where(col(AuditEvent.event_type).startswith("device.key_rotation."))
                .order_by(col(AuditEvent.seq))
            )
        )


def test_rotate_registers_the_new_key_switches_and_retires_the_old_one(
    line: Line, engine: Engine
) -> None:
    before = datetime.now(UTC)
    done = rotate_key(line.settings, engine, ACTOR, LOCATOR, grace_s=60, registry=line.registry)
    assert (done.old_slot, done.new_slot, done.resumed) == (0, 2, False)
    creds = line.registry.device_credentials(line.device_id)
    assert creds is not None and len(creds) == 2
    old, new = creds
    assert old.format == "ES256_X509_PEM" and old.key == line.certificate_pem
    expires = parse_time(old.expiration_time)
    assert expires is not None and 59 <= (expires - before).total_seconds() <= 62
    assert new.format == "ES256_PEM" and new.expiration_time == NO_EXPIRY
    with Connector(line.settings).open(LOCATOR) as chip:
        new_xy = chip.public_key(2)
    assert fingerprint(new_xy) == done.new_key_sha256
    # the device signs with slot 2 now, and the registry's new credential is that key
    serial = chip_serial(line.settings)
    state = load_state(line.settings, serial, 0)
    assert (state.slot, state.pending_slot, state.retire_slot) == (2, None, None)
    path = state_path(line.settings, serial)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with Connector(line.settings).open(LOCATOR) as chip:
        jwt = mint_jwt(chip, PROJECT, slot=state.slot, lifetime_s=60)
    verify_es256(jwt.token, chip_public_key(line.settings, 2))
    # four audited steps, in order, with fingerprints and slots, never a key
    got = events(engine)
    assert [e.event_type for e in got] == [
        "device.key_rotation.started",
        "device.key_rotation.registered",
        "device.key_rotation.switched",
        "device.key_rotation.old_retired",
    ]
    assert all(e.chip_serial == serial.upper() and e.actor == ACTOR for e in got)
    text = " ".join(e.payload for e in got)
    assert done.new_key_sha256 in text and "BEGIN" not in text and jwt.token not in text
    with Session(engine) as s:
        assert verify_log(s, None).ok


def test_rotations_cycle_the_slots_and_stop_at_three_valid_credentials(
    line: Line, engine: Engine
) -> None:
    first = rotate_key(line.settings, engine, ACTOR, LOCATOR, grace_s=1, registry=line.registry)
    time.sleep(max(0.0, (parse_time(_old_expiry(line)) - datetime.now(UTC)).total_seconds()) + 0.1)
    second = rotate_key(line.settings, engine, ACTOR, LOCATOR, grace_s=60, registry=line.registry)
    assert (first.new_slot, second.new_slot) == (2, 3)
    assert second.removed_expired == 1  # the certificate, expired after its grace
    creds = line.registry.device_credentials(line.device_id)
    assert creds is not None and [c.format for c in creds] == ["ES256_PEM", "ES256_PEM"]
    third = rotate_key(line.settings, engine, ACTOR, LOCATOR, grace_s=60, registry=line.registry)
    assert third.new_slot == 4 and third.credentials == 3
    with pytest.raises(RotationRefused, match="3 credentials and none has expired"):
        rotate_key(line.settings, engine, ACTOR, LOCATOR, grace_s=60, registry=line.registry)
    assert load_state(line.settings, chip_serial(line.settings), 0).slot == 4


def _old_expiry(line: Line) -> str:
    creds = line.registry.device_credentials(line.device_id)
    assert creds is not None
    return creds[0].expiration_time


def test_an_interrupted_rotation_resumes(
    line: Line, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_: object) -> object:
        raise RotationRefused("registry down (test)")

    with monkeypatch.context() as m:
        m.setattr(CloudIotRegistry, "patch_device_credentials", down)
        with pytest.raises(RotationRefused, match="test"):
            rotate_key(line.settings, engine, ACTOR, LOCATOR, grace_s=60, registry=line.registry)
    serial = chip_serial(line.settings)
    half = load_state(line.settings, serial, 0)
    assert (half.slot, half.pending_slot) == (0, 2) and half.pending_sha256
    done = rotate_key(line.settings, engine, ACTOR, LOCATOR, grace_s=60, registry=line.registry)
    assert done.resumed and done.new_slot == 2
    assert done.new_key_sha256 == half.pending_sha256  # the key GenKey made first, kept
    creds = line.registry.device_credentials(line.device_id)
    assert creds is not None and len(creds) == 2


def test_a_registry_with_ca_certificates_refuses_rotation(line: Line, engine: Engine) -> None:
    with admin_client(line.base_url) as admin:
        resp = admin.post(
            f"/v1/{PARENT}/registries",
            json={
                "id": "with-ca",
                "credentials": [
                    {
                        "publicKeyCertificate": {
                            "format": "X509_CERTIFICATE_PEM",
                            "certificate": _root_pem(line),
                        }
                    }
                ],
            },
        )
        assert resp.status_code == 200, resp.text
    reg = CloudIotRegistry(line.base_url, PROJECT, LOCATION, "with-ca", TOKENS[Role.WRITER])
    with reg, pytest.raises(RotationRefused, match=r"CA certificates.*X\.509 certificates"):
        rotate_key(line.settings, engine, ACTOR, LOCATOR, grace_s=60, registry=reg)
    assert events(engine) == []


def _root_pem(line: Line) -> str:
    return (line.settings.ca_dir / "root.pem").read_text()


def test_a_device_missing_from_the_registry_is_named(
    line: Line, engine: Engine, tmp_path: Path
) -> None:
    other = field_settings(tmp_path / "other", line.base_url)
    provision_chip(other)
    with pytest.raises(NotFoundError, match="is not in registry"):
        rotate_key(other, engine, ACTOR, LOCATOR, grace_s=60, registry=line.registry)


def test_a_chip_without_rotation_slots_is_refused_naming_the_slot(
    line: Line, engine: Engine, tmp_path: Path
) -> None:
    other = field_settings(tmp_path / "old", line.base_url)
    old = ChipProfile(rotation_slots=()).config_template()
    pem = provision_chip(other, chip=provisioned_elsewhere(old))
    line.registry.create_device(registry_device_id(chip_serial(other)), pem)
    with pytest.raises(ChipStateError, match=r"rotation slot 2: KeyConfig 0x003C"):
        rotate_key(other, engine, ACTOR, LOCATOR, grace_s=60, registry=line.registry)


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "15m", "1h", "2d", "1h30m")] == [
        90,
        90,
        900,
        3600,
        172800,
        5400,
    ]
    for bad in ("", "h", "1x", "-1s"):
        with pytest.raises(Exception, match="duration"):
            parse_duration(bad)
