"""Encrypted Read and Write (Write with MAC) through the unmodified library
(``calib_read_enc`` / ``calib_write_enc`` and the raw ``calib_read_zone`` / ``calib_write``
with an explicit device), held to cryptoauthlib's host functions (``atcah_nonce``,
``atcah_gen_dig``, ``atcah_write_auth_mac``): a round trip returns the plaintext, the
chip accepts exactly the host's input MAC, and the slot's ReadKey / WriteKey /
EncryptRead / WriteConfig are honoured."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from ctypes import POINTER, c_uint8, c_uint16, c_void_p
from pathlib import Path
from typing import Any

import pytest

from provisioner.chips.connector import Connector
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.library import ATCA_EXECUTION_ERROR, buf
from provisioner.errors import ChipCommandError
from provisioner.settings import Settings
from tests.chips.conftest import call, config_with, declared, personalise
from tests.chips.test_auth import Host

_u8p = POINTER(c_uint8)

PROTOTYPES: dict[str, list[Any]] = {
    "calib_read_enc": [c_void_p, c_uint16, c_uint8, _u8p, _u8p, c_uint16, _u8p],
    "calib_write_enc": [c_void_p, c_uint16, c_uint8, _u8p, _u8p, c_uint16, _u8p],
    "calib_read_zone": [c_void_p, c_uint8, c_uint16, c_uint8, c_uint8, _u8p, c_uint8],
    "calib_write": [c_void_p, c_uint8, c_uint16, _u8p, _u8p],
    "calib_gendig": [c_void_p, c_uint8, c_uint16, _u8p, c_uint8],
    "calib_nonce_rand": [c_void_p, _u8p, _u8p],
}

KEY4, KEY11 = secrets.token_bytes(32), secrets.token_bytes(32)
READ_KEY_SLOT = 4
ENCRYPTED_SLOT = 0x44C4  # ReadKey 4, EncryptRead, IsSecret, WriteKey 4, WriteConfig Encrypt
SLOTS = {
    4: (0x808F, 0x003C),  # the read/write key: secret, never written in clear
    5: (ENCRYPTED_SLOT, 0x003C),
    8: (ENCRYPTED_SLOT, 0x003C),  # 416 bytes: several blocks
    9: (0x8084, 0x003C),  # secret without EncryptRead: never readable
    10: (0x0000, 0x003C),  # WriteConfig Always, clear reads
    11: (0x809F, 0x003C),  # a NoMac key
    12: (0x4BCB, 0x003C),  # encrypted read/write keyed by the NoMac key in slot 11
    13: (0x008F, 0x003C),  # secret, WriteConfig Always
}


@pytest.fixture
def chip(tmp_path: Path) -> Iterator[CryptoAuthChip]:
    for name, argtypes in PROTOTYPES.items():
        declared(name, argtypes)
    connector = Connector(Settings(var_dir=tmp_path))
    connector.jig("line1").insert_blank(0)
    device = connector.open("emulated:line1/0")
    config = config_with(
        device.read_config(),
        slot_config={s: sc for s, (sc, _) in SLOTS.items()},
        key_config={s: kc for s, (_, kc) in SLOTS.items()},
    )
    personalise(device, config, slots={4: KEY4, 11: KEY11})
    yield device
    device.close()


def write_enc(
    chip: CryptoAuthChip, slot: int, block: int, plain: bytes, key: bytes, kid: int
) -> int:
    num_in = buf(secrets.token_bytes(20))
    return call(chip, "calib_write_enc", slot, block, buf(plain), buf(key), kid, num_in)


def read_enc(
    chip: CryptoAuthChip, slot: int, block: int, key: bytes, kid: int
) -> tuple[int, bytes]:
    out, num_in = buf(32), buf(secrets.token_bytes(20))
    status = call(chip, "calib_read_enc", slot, block, out, buf(key), kid, num_in)
    return status, bytes(out)


def session(chip: CryptoAuthChip, key: bytes, key_slot: int) -> Host:
    """Nonce (random) + GenDig over ``key_slot`` on the chip, followed on the host with
    ``atcah_nonce`` / ``atcah_gen_dig``: both now hold the same session key."""
    host = Host(chip.identity().serial)
    num_in, rand_out = secrets.token_bytes(20), buf(32)
    assert call(chip, "calib_nonce_rand", buf(num_in), rand_out) == 0
    host.nonce(0x00, num_in, bytes(rand_out))
    assert call(chip, "calib_gendig", 2, key_slot, None, 0) == 0
    host.gen_dig(2, key_slot, stored_value=key)
    return host


def address(slot: int, block: int) -> int:
    return slot << 3 | block << 8


@pytest.mark.parametrize(("slot", "block"), [(5, 0), (8, 0), (8, 1), (8, 12)])
def test_encrypted_write_then_read_returns_the_plaintext(
    chip: CryptoAuthChip, slot: int, block: int
) -> None:
    plain = secrets.token_bytes(32)
    assert write_enc(chip, slot, block, plain, KEY4, READ_KEY_SLOT) == 0
    status, out = read_enc(chip, slot, block, KEY4, READ_KEY_SLOT)
    assert status == 0 and out == plain


def test_the_chip_takes_exactly_the_host_write_mac(chip: CryptoAuthChip) -> None:
    """Write with MAC by hand: the chip accepts the input MAC ``atcah_write_auth_mac``
    computes and refuses it with one bit changed (the slot keeps its content); a raw read
    afterwards is the block XOR the host's session key."""
    plain, addr, zone = secrets.token_bytes(32), address(5, 0), 0x80 | 0x40 | 0x02
    host = session(chip, KEY4, READ_KEY_SLOT)
    enc, mac = host.write_auth_mac(zone, addr, plain)
    bad = bytes([mac[0] ^ 0x80]) + mac[1:]
    assert call(chip, "calib_write", zone, addr, buf(enc), buf(bad)) == ATCA_EXECUTION_ERROR
    host = session(chip, KEY4, READ_KEY_SLOT)
    enc, mac = host.write_auth_mac(zone, addr, plain)
    assert call(chip, "calib_write", zone, addr, buf(enc), buf(mac)) == 0
    host = session(chip, KEY4, READ_KEY_SLOT)
    raw = buf(32)
    assert call(chip, "calib_read_zone", 2, 5, 0, 0, raw, 32) == 0
    assert bytes(a ^ b for a, b in zip(bytes(raw), host.value(), strict=True)) == plain
    assert call(chip, "calib_read_zone", 2, 5, 0, 0, raw, 32) == ATCA_EXECUTION_ERROR  # spent


def test_the_datasheet_form_mode_0x82_with_a_mac_is_an_encrypted_write(
    chip: CryptoAuthChip,
) -> None:
    """Microchip's TrustFLEX sheet lists the encrypted write as Mode 0x82 + data + MAC; the
    MAC then covers Mode 0x82 (``atcah_write_auth_mac`` with that zone byte)."""
    plain, addr = secrets.token_bytes(32), address(5, 0)
    host = session(chip, KEY4, READ_KEY_SLOT)
    enc, mac = host.write_auth_mac(0x82, addr, plain)
    assert call(chip, "calib_write", 0x82, addr, buf(enc), buf(mac)) == 0
    status, out = read_enc(chip, 5, 0, KEY4, READ_KEY_SLOT)
    assert status == 0 and out == plain


def test_secret_slots_take_only_whole_blocks_in_clear(chip: CryptoAuthChip) -> None:
    """After the data lock a secret slot with WriteConfig Always takes 32-byte writes only
    (TrustFLEX sheet, "Data Zone - Clear Text Write"); a public one takes 4 bytes too."""
    assert call(chip, "calib_write", 0x82, address(13, 0), buf(bytes(32)), None) == 0
    status = call(chip, "calib_write", 0x02, address(13, 0), buf(bytes(4)), None)
    assert status == ATCA_EXECUTION_ERROR
    assert call(chip, "calib_write", 0x02, address(10, 0), buf(bytes(4)), None) == 0


def test_encrypted_reads_need_the_read_key_and_whole_blocks(chip: CryptoAuthChip) -> None:
    assert write_enc(chip, 5, 0, bytes(32), KEY4, READ_KEY_SLOT) == 0
    assert read_enc(chip, 5, 0, KEY11, 11)[0] == ATCA_EXECUTION_ERROR  # not its ReadKey
    raw = buf(32)
    assert call(chip, "calib_read_zone", 2, 5, 0, 0, raw, 32) == ATCA_EXECUTION_ERROR  # no GenDig
    session(chip, KEY4, READ_KEY_SLOT)
    assert call(chip, "calib_read_zone", 2, 5, 0, 0, raw, 4) == ATCA_EXECUTION_ERROR  # 4 bytes
    session(chip, KEY4, READ_KEY_SLOT)
    assert call(chip, "calib_read_zone", 2, 9, 0, 0, raw, 32) == ATCA_EXECUTION_ERROR  # secret
    assert call(chip, "calib_read_zone", 2, 4, 0, 0, raw, 32) == ATCA_EXECUTION_ERROR  # the key


def test_encrypted_writes_honour_write_config_and_write_key(chip: CryptoAuthChip) -> None:
    plain = secrets.token_bytes(32)
    assert write_enc(chip, 5, 0, plain, KEY11, 11) == ATCA_EXECUTION_ERROR  # not its WriteKey
    assert write_enc(chip, 10, 0, plain, KEY4, READ_KEY_SLOT) == ATCA_EXECUTION_ERROR  # Always
    with pytest.raises(ChipCommandError) as refused:
        chip.write_zone(2, 5, 0, plain)  # WriteConfig Encrypt: no clear writes
    assert refused.value.status == ATCA_EXECUTION_ERROR
    # A NoMac write key: GenDig works (the library passes OtherData), the write does not.
    assert write_enc(chip, 12, 0, plain, KEY11, 11) == ATCA_EXECUTION_ERROR
    status, _ = read_enc(chip, 12, 0, KEY11, 11)
    assert status == 0  # NoMac bars MAC-type use only: an encrypted read is fine
    status, out = read_enc(chip, 5, 0, KEY4, READ_KEY_SLOT)
    assert status == 0 and out == bytes(32)  # nothing above reached slot 5
