"""Silicon rules, exercised through the unmodified cryptoauthlib (never the emulator's API)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from provisioner.chips.connector import Connector
from provisioner.chips.crc import crc16
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.library import ATCA_EXECUTION_ERROR, ZONE_DATA
from provisioner.errors import (
    ChipAbsentError,
    ChipCommandError,
    ChipStateError,
    InvalidInputError,
    NotFoundError,
)
from provisioner.settings import Settings


@pytest.fixture
def connector(tmp_path: Path) -> Connector:
    return Connector(Settings(var_dir=tmp_path))


@pytest.fixture
def blank(connector: Connector) -> Iterator[CryptoAuthChip]:
    connector.jig("line1").insert_blank(0)
    chip = connector.open("emulated:line1/0")
    yield chip
    chip.close()


@pytest.fixture
def configured(blank: CryptoAuthChip) -> CryptoAuthChip:
    blank.ensure_configured()
    return blank


def _public(point64: bytes) -> ec.EllipticCurvePublicKey:
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + point64)


def test_identity_is_a_608a(blank: CryptoAuthChip) -> None:
    ident = blank.identity()
    assert ident.serial[:2] == b"\x01\x23" and ident.serial[8] == 0xEE and len(ident.serial) == 9
    assert ident.revision == bytes.fromhex("00006002")


def test_random_before_config_lock_is_the_fixed_pattern(blank: CryptoAuthChip) -> None:
    assert blank.random() == bytes([0xFF, 0xFF, 0x00, 0x00] * 8)
    blank.ensure_configured()
    r1, r2 = blank.random(), blank.random()
    assert r1 != r2 and r1 != bytes([0xFF, 0xFF, 0x00, 0x00] * 8)


def test_genkey_needs_a_locked_config(blank: CryptoAuthChip) -> None:
    with pytest.raises(ChipCommandError) as err:
        blank.generate_key()
    assert err.value.status == ATCA_EXECUTION_ERROR


def test_lock_config_with_a_wrong_crc_fails(blank: CryptoAuthChip) -> None:
    blank.write_config(blank.profile.config_template())
    good = int.from_bytes(crc16(blank.read_config()), "little")
    with pytest.raises(ChipCommandError):
        blank.lock_config(good ^ 0x0001)
    assert not blank.config_locked()
    blank.lock_config(good)
    assert blank.config_locked()


def test_config_cannot_be_written_after_lock(configured: CryptoAuthChip) -> None:
    with pytest.raises(ChipCommandError) as err:
        configured.write_config(configured.profile.config_template())
    assert err.value.status == ATCA_EXECUTION_ERROR


def test_genkey_where_keyconfig_forbids_it_fails(configured: CryptoAuthChip) -> None:
    with pytest.raises(ChipCommandError):
        configured.genkey(8)  # a data slot: KeyConfig.Private is clear


def test_signature_verifies_with_the_key_from_get_pubkey(configured: CryptoAuthChip) -> None:
    generated = configured.generate_key()
    reported = configured.public_key()  # atcab_get_pubkey_ext
    assert generated == reported
    msg = b"proof of possession"
    raw = configured.sign_digest(hashlib.sha256(msg).digest())
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    _public(reported).verify(der, msg, ec.ECDSA(hashes.SHA256()))
    other = hashlib.sha256(b"something else").digest()
    assert configured.verify_extern(hashlib.sha256(msg).digest(), raw, reported)
    assert not configured.verify_extern(other, raw, reported)


def test_data_zone_is_unreadable_before_lock_and_keys_never(configured: CryptoAuthChip) -> None:
    configured.generate_key()
    with pytest.raises(ChipCommandError):
        configured.read_zone(ZONE_DATA, 8, 0, 32)
    configured.lock_data_zone()
    assert configured.data_locked()
    assert configured.read_zone(ZONE_DATA, 8, 0, 32) == b"\x00" * 32
    with pytest.raises(ChipCommandError):
        configured.read_zone(ZONE_DATA, 0, 0, 32)  # the private key slot
    with pytest.raises(ChipCommandError):
        configured.generate_key()  # no re-keying once the data zone is locked


def test_sign_works_after_the_data_lock(configured: CryptoAuthChip) -> None:
    key = configured.generate_key()
    configured.lock_data_zone()
    digest = hashlib.sha256(b"after lock").digest()
    assert configured.verify_extern(digest, configured.sign_digest(digest), key)


def test_locked_config_with_another_layout_is_refused(connector: Connector) -> None:
    connector.jig("line1").insert_blank(0)
    with connector.open("emulated:line1/0") as chip:
        cfg = bytearray(chip.profile.config_template())
        cfg[96:98] = (0x003C).to_bytes(2, "little")  # slot 0 is no longer a private key
        chip.write_config(bytes(cfg))
        chip.lock_config(int.from_bytes(crc16(chip.read_config()), "little"))
        with pytest.raises(ChipStateError, match="key slot 0 KeyConfig is 0x003C"):
            chip.ensure_configured()


def test_empty_socket_is_reported_as_absent(connector: Connector) -> None:
    with connector.open("emulated:line1/1") as chip, pytest.raises(ChipAbsentError):
        chip.identity()


def test_chip_removed_mid_session_is_absent(connector: Connector) -> None:
    jig = connector.jig("line1")
    jig.insert_blank(2)
    with connector.open("emulated:line1/2") as chip:
        chip.identity()
        jig.remove(2)
        with pytest.raises(ChipAbsentError):
            chip.random()


def test_reinserted_chip_keeps_its_key(connector: Connector) -> None:
    jig = connector.jig("line1")
    path = jig.insert_blank(0)
    with connector.open("emulated:line1/0") as chip:
        chip.ensure_configured()
        key = chip.generate_key()
    jig.remove(0)
    jig.insert(3, path)  # back in another socket, another session
    with Connector(connector.settings).open("emulated:line1/3") as chip:
        assert chip.public_key() == key


def test_two_chips_interleaved_in_one_process(connector: Connector) -> None:
    jig = connector.jig("line1")
    jig.insert_blank(0)
    jig.insert_blank(1)
    with connector.open("emulated:line1/0") as a, connector.open("emulated:line1/1") as b:
        assert a.identity().serial != b.identity().serial
        a.ensure_configured()
        b.ensure_configured()
        ka, kb = a.generate_key(), b.generate_key()
        digest = hashlib.sha256(b"m").digest()
        sa, sb = a.sign_digest(digest), b.sign_digest(digest)
        assert a.verify_extern(digest, sa, ka) and b.verify_extern(digest, sb, kb)
        assert not a.verify_extern(digest, sa, kb)


@pytest.mark.parametrize("bad", ["emulated:line1", "i2c:/dev/i2c-x@0x6A", "usb:", "emulated:/0"])
def test_malformed_locator(connector: Connector, bad: str) -> None:
    with pytest.raises(InvalidInputError, match="unknown chip locator"):
        connector.open(bad)


def test_an_unknown_station_is_an_error_not_a_one_socket_jig(connector: Connector) -> None:
    with pytest.raises(NotFoundError, match="unknown station 'line9'"):
        connector.open("emulated:line9/0")
    with pytest.raises(NotFoundError, match="has 4 sockets"):
        connector.open("emulated:line1/4")
