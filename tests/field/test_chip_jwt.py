"""JWTs minted on the chip, and the rotation slots of the chip profile.

The signature must come from the chip (through cryptoauthlib and the emulator's Sign
command), verify with an independent ES256 check and with the device plane's verifier, and
be made with the slot asked for. Rotation slots take a GenKey after the data lock on a chip
configured with the profile; a chip configured before they existed still provisions, and a
rotation on it is refused naming the slot and what its config holds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature

from provisioner.chips.connector import Connector
from provisioner.chips.emulator import chip as emulator
from provisioner.chips.emulator import wire
from provisioner.chips.emulator.commands import HANDLERS
from provisioner.chips.emulator.tray import provisioned_elsewhere
from provisioner.chips.emulator.wire import OP_SIGN
from provisioner.chips.profile import ChipProfile
from provisioner.errors import ChipCommandError
from provisioner.field.jwt import mint_jwt
from provisioner.settings import Settings
from tests.field.conftest import LOCATOR, chip_public_key, provision_chip, verify_es256

PROJECT = "proj-1"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(var_dir=tmp_path / "var")  # type: ignore[call-arg]
    provision_chip(s)
    return s


@pytest.fixture
def signs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The slot of every Sign command the emulated silicon executes."""
    seen: list[int] = []
    real = HANDLERS[OP_SIGN]

    def counting(chip: emulator.EmulatedChip, mode: int, slot: int, data: bytes) -> Any:
        seen.append(slot)
        return real(chip, mode, slot, data)

    monkeypatch.setitem(HANDLERS, OP_SIGN, counting)
    return seen


def test_the_chip_signs_a_jwt_that_verifies_independently(
    settings: Settings, signs: list[int]
) -> None:
    now = time.time()
    with Connector(settings).open(LOCATOR) as chip:
        jwt = mint_jwt(chip, PROJECT, slot=0, lifetime_s=600, now=now)
    assert signs == [0]  # one Sign, executed by the chip, with the key slot
    claims = verify_es256(jwt.token, chip_public_key(settings, 0))
    assert claims == {"iat": int(now), "exp": int(now) + 600, "aud": PROJECT}
    assert jwt.token not in repr(jwt)


def test_the_device_planes_verifier_accepts_the_chip_jwt(settings: Settings) -> None:
    devauth = pytest.importorskip("provisioner.cloud.devauth.jwt")
    from provisioner.cloud.credentials import Credential, PublicKeyFormat
    from provisioner.field.state import public_key_pem

    with Connector(settings).open(LOCATOR) as chip:
        jwt = mint_jwt(chip, PROJECT, slot=0, lifetime_s=600)
        pem = public_key_pem(chip.public_key(0))
    cred = Credential(PublicKeyFormat.ES256_PEM, pem)
    claims = devauth.verify_device_jwt(
        jwt.token, project=PROJECT, credentials=[cred], now=time.time()
    )
    assert (claims.alg, claims.aud, claims.exp - claims.iat) == ("ES256", PROJECT, 600)
    with pytest.raises(devauth.JwtRefused) as refused:
        devauth.verify_device_jwt(jwt.token, project="other", credentials=[cred], now=time.time())
    assert refused.value.rule == "aud"


def test_a_rotation_slot_key_signs_and_the_key_slot_does_not_verify_it(
    settings: Settings, signs: list[int]
) -> None:
    with Connector(settings).open(LOCATOR) as chip:
        chip.genkey(2)  # after the data lock: the rotation slot's SlotConfig allows it
        jwt = mint_jwt(chip, PROJECT, slot=2, lifetime_s=60)
    assert signs == [2]
    verify_es256(jwt.token, chip_public_key(settings, 2))
    with pytest.raises(InvalidSignature):
        verify_es256(jwt.token, chip_public_key(settings, 0))


def test_the_key_slot_can_never_be_regenerated_after_the_data_lock(settings: Settings) -> None:
    with Connector(settings).open(LOCATOR) as chip, pytest.raises(ChipCommandError):
        chip.genkey(0)


def test_a_chip_configured_without_rotation_slots_still_provisions_but_cannot_rotate(
    tmp_path: Path,
) -> None:
    settings = Settings(var_dir=tmp_path / "var")  # type: ignore[call-arg]
    old = ChipProfile(rotation_slots=()).config_template()
    assert old != settings.chip.profile().config_template()
    provision_chip(settings, chip=provisioned_elsewhere(old, key_slot=0, cert_slot=10))
    profile = settings.chip.profile()
    with Connector(settings).open(LOCATOR) as chip:
        chip.ensure_configured()  # the profile still takes it: rotation slots are not checked
        config = chip.read_config()
        with pytest.raises(ChipCommandError):
            chip.genkey(2)  # the silicon refuses: slot 2 is a data slot on this chip
    problem = profile.rotation_incompatibility(config, 2)
    assert problem is not None
    assert "rotation slot 2" in problem and "KeyConfig 0x003C" in problem
    assert "SlotConfig 0x0000" in problem and "GenKey" in problem


def test_the_emulator_enforces_the_rotation_slot_rules() -> None:
    """GenKey after the data lock needs SlotConfig bit 13; external Sign needs ReadKey bit 0."""
    profile = ChipProfile()
    chip = provisioned_elsewhere(profile.config_template())
    packet = emulator.command_packet
    resp, _ = chip.execute(packet(wire.OP_GENKEY, 0x04, 2))
    assert len(resp) == 67  # 64-byte public key
    cfg = bytearray(chip.config)
    cfg[20 + 2 * 3 : 22 + 2 * 3] = (0x0085).to_bytes(2, "little")  # slot 3 without GenKey
    cfg[20 + 2 * 4 : 22 + 2 * 4] = (0x2084).to_bytes(2, "little")  # slot 4 without ext. Sign
    chip.config = cfg
    resp, _ = chip.execute(packet(wire.OP_GENKEY, 0x04, 3))
    assert resp[1] == emulator.EXECUTION_ERROR
    resp, _ = chip.execute(packet(wire.OP_GENKEY, 0x04, 4))
    assert len(resp) == 67
    chip.execute(packet(wire.OP_NONCE, 0x03 | 0x40, 0, bytes(32)))
    resp, _ = chip.execute(packet(wire.OP_SIGN, 0x80 | 0x20, 4))
    assert resp[1] == emulator.EXECUTION_ERROR


def test_rotation_slots_must_not_overlap_the_other_roles() -> None:
    with pytest.raises(ValueError, match="rotation slots"):
        ChipProfile(rotation_slots=(0, 3))
    with pytest.raises(ValueError, match="rotation slots"):
        ChipProfile(rotation_slots=(10,))
    assert ChipProfile().rotation_incompatibility(ChipProfile().config_template(), 3) is None
    with pytest.raises(ValueError, match="rotation slots"):
        ChipProfile(rotation_slots=(2, 2))
