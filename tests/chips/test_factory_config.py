"""Factory-fresh ATECC608A and 608B parts, read through the unmodified library.

The expected config zone is typed in below from published dumps of real parts, not from
the emulator: Microchip's default slot table as read off an ATECC608B-SSHDA-T
(cryptoauthlib issue #401, revision 00 00 60 03, with that user's later UpdateExtra and
config lock undone: bytes 85 and 87 back to 00 and 55) and the first 32 bytes of a 608A
(revision 00 00 60 02, I2C 0xC0, ChipMode 00, the same SlotConfig words). Bytes 13 and 14
carry die-specific upper bits on real parts; only their bit 0 (AES_Enable, I2C_Enable)
is specified, so only that is compared."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

from provisioner.chips.connector import Connector
from provisioner.chips.crc import crc16
from provisioner.chips.emulator.chip import EmulatedChip
from provisioner.chips.emulator.factory import Part
from provisioner.errors import ChipCommandError
from tests.chips.conftest import settings_with_ca

# Bytes 16-127 of a factory-fresh 608A/608B (rows of 16, from byte 16).
FACTORY_TAIL = bytes.fromhex(
    "C0000000 83208720 8F20C48F 8F8F8F8F"
    "9F8FAF8F 00000000 00000000 00000000"
    "0000AF8F FFFFFFFF 00000000 FFFFFFFF"
    "00000000 00000000 00000000 00000000"
    "00000000 00005555 FFFF0000 00000000"
    "33003300 33001C00 1C001C00 1C001C00"
    "3C003C00 3C003C00 3C003C00 3C001C00"
)
REVISION: dict[str, bytes] = {"608A": bytes.fromhex("00006002"), "608B": bytes.fromhex("00006003")}
SERIAL = bytes.fromhex("0123A1B2C3D4E5F6EE")


@pytest.fixture
def connector(tmp_path: Path) -> Connector:
    return Connector(settings_with_ca(tmp_path)[0])


def _public_key(xy: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)


@pytest.mark.parametrize("part", ["608A", "608B"])
def test_a_blank_part_holds_the_documented_factory_config(connector: Connector, part: Part) -> None:
    connector.jig("line1").insert_chip(0, EmulatedChip.blank(SERIAL, part=part))
    with connector.open("emulated:line1/0") as chip:
        config = chip.read_config()
        identity = chip.identity()
        assert not chip.config_locked() and not chip.data_locked()
    assert identity.serial == SERIAL and identity.revision == REVISION[part]
    assert config[0:4] == SERIAL[0:4] and config[8:13] == SERIAL[4:9]
    assert config[4:8] == REVISION[part]
    assert config[13] & 0x01 and config[14] & 0x01  # AES enabled, I2C (not single-wire)
    assert config[15] == 0x00
    assert config[16:] == FACTORY_TAIL


def test_an_unknown_part_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown part"):
        EmulatedChip.blank(part="508A")  # type: ignore[arg-type]


def test_the_factory_slot_layout_works_as_shipped(connector: Connector) -> None:
    """Lock the config as it came (CRC over the read-back zone): slots 0-2 are P-256
    private keys GenKey may create and that sign external digests; slot 3 (KeyConfig
    001C) holds no ECC key, so GenKey there is refused as silicon refuses it."""
    connector.jig("line1").insert_chip(0, EmulatedChip.blank(part="608B"))
    with connector.open("emulated:line1/0") as chip:
        chip.lock_config(int.from_bytes(crc16(chip.read_config()), "little"))
        digest = hashlib.sha256(b"factory layout").digest()
        for slot in (0, 1, 2):
            public = _public_key(chip.genkey(slot))
            raw = chip.sign_digest(digest, slot)
            signature = encode_dss_signature(
                int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
            )
            public.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        with pytest.raises(ChipCommandError):
            chip.genkey(3)


@pytest.mark.parametrize("part", ["608A", "608B"])
def test_the_line_provisions_a_factory_fresh_part(connector: Connector, part: Part) -> None:
    """The line overwrites bytes 16-127 with its profile: a factory-fresh part of either
    revision takes it, locks, and signs."""
    connector.jig("line1").insert_chip(0, EmulatedChip.blank(part=part))
    with connector.open("emulated:line1/0") as chip:
        chip.ensure_configured()
        written = chip.read_config()
        template = chip.profile.config_template()
        assert written[16:84] == template[16:84] and written[88:] == template[88:]
        assert written[4:8] == REVISION[part] and chip.config_locked()
        public = _public_key(chip.generate_key())
        digest = hashlib.sha256(b"line").digest()
        raw = chip.sign_digest(digest)
        signature = encode_dss_signature(
            int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        )
        public.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
