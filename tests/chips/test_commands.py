"""SHA, Counter, SelfTest, Verify stored, Nonce targets, Info modes, sleep/idle and the
watchdog, each driven through the unmodified cryptoauthlib (``calib_*`` with the device
handle, through the driver's SIGINT-guarded wrapper), never through the emulator's API.

Results are checked against independent computations (hashlib, ``cryptography``) and
every refusal is checked for its status, so each test fails if the emulator answers
otherwise.

Two things are not purely library-driven, and say so where they happen:

- the counter-at-maximum test starts from a chip file whose counter is already near
  2,097,151 (edited as JSON, like a worn chip put in the socket): reaching it through
  the library would take two million commands;
- the watchdog: cryptoauthlib wakes the chip before every command and idles it after
  (calib_execute_command), so a command alone never lets the 1.3 s watchdog expire. It
  is reached honestly with the library's own ``calib_wakeup`` left standing for 1.4 s
  (a wake token to an awake chip does not restart the watchdog), against the control
  ``calib_wakeup`` + ``calib_idle`` (idle stops it). Both sleep: marked slow.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from ctypes import byref, c_bool, c_uint16, c_uint32
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
)

from provisioner.chips.connector import Connector
from provisioner.chips.crc import crc16
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.library import (
    ATCA_EXECUTION_ERROR,
    ATCA_PARSE_ERROR,
    ATCA_SUCCESS,
    buf,
)
from provisioner.settings import Settings
from tests.chips.conftest import call, chip_signs

COUNTER_MAX = 2_097_151  # datasheet / calib_command.h COUNTER_MAX_VALUE


# Mode bytes as the library names them (calib_command.h).
SHA_END = 0x02
SHA_TARGET_MSGDIGBUF, SHA_TARGET_OUT_ONLY, SHA_TARGET_RESERVED = 0x40, 0xC0, 0x80
SIGN_EXTERNAL, SIGN_SOURCE_MSGDIGBUF = 0x80, 0x20
NONCE_TARGET_TEMPKEY, NONCE_TARGET_MSGDIGBUF, NONCE_TARGET_ALTKEYBUF = 0x00, 0x40, 0x80
INFO_REVISION, INFO_KEY_VALID, INFO_STATE, INFO_GPIO = 0x00, 0x01, 0x02, 0x03
VERIFY_VALIDATE, VERIFY_INVALIDATE, VERIFY_VALIDATE_EXTERNAL = 0x03, 0x07, 0x01

PUBLIC_SLOT = 13  # KeyConfig 0x0030: P-256 public key, usable without validation
VALIDATED_PUBLIC_SLOT = 14  # KeyConfig 0x0032: PubInfo set, the key needs validating first
DATA_SLOT = 9  # KeyConfig 0x003C: "not ECC"


@pytest.fixture
def connector(tmp_path: Path) -> Connector:
    return Connector(Settings(var_dir=tmp_path))


@pytest.fixture
def blank(connector: Connector, lib: Any) -> Iterator[CryptoAuthChip]:
    connector.jig("line1").insert_blank(0)
    chip = connector.open("emulated:line1/0")
    yield chip
    chip.close()


def _config_with_public_key_slots(chip: CryptoAuthChip) -> bytes:
    cfg = bytearray(chip.profile.config_template())
    for slot, key_config in ((PUBLIC_SLOT, 0x0030), (VALIDATED_PUBLIC_SLOT, 0x0032)):
        cfg[96 + 2 * slot : 98 + 2 * slot] = key_config.to_bytes(2, "little")
    cfg[96 + 2 * DATA_SLOT : 98 + 2 * DATA_SLOT] = (0x003C).to_bytes(2, "little")
    return bytes(cfg)


@pytest.fixture
def configured(blank: CryptoAuthChip) -> CryptoAuthChip:
    """Config locked with the profile's layout plus two P-256 public-key slots."""
    blank.write_config(_config_with_public_key_slots(blank))
    blank.lock_config(int.from_bytes(crc16(blank.read_config()), "little"))
    assert blank.config_locked()
    return blank


def _state(chip: CryptoAuthChip) -> bytes:
    out = buf(4)
    assert call(chip, "calib_info_base", INFO_STATE, 0, out) == ATCA_SUCCESS
    return bytes(out)


def _tempkey_valid(chip: CryptoAuthChip) -> bool:
    return bool(_state(chip)[1] & 0x80)


def _raw_signature(der: bytes) -> bytes:
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _signs_digest(chip: CryptoAuthChip, public64: bytes, mode: int, digest: bytes) -> bool:
    """Sign (external) from TempKey or the digest buffer; True if the signature is over
    ``digest`` (checked with cryptography on the prehashed digest)."""
    return chip_signs(chip, mode, 0, public64, digest)


# --- SHA -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 55, 64, 100, 1000])
def test_sha256_of_several_lengths_equals_hashlib(configured: CryptoAuthChip, size: int) -> None:
    message = bytes((i * 31 + 7) & 0xFF for i in range(size))
    digest = buf(32)
    status = call(configured, "calib_hw_sha2_256", buf(message or b"\x00"), size, digest)
    assert status == ATCA_SUCCESS
    assert bytes(digest) == hashlib.sha256(message).digest()


def test_sha_start_update_end_by_hand_and_the_digest_lands_in_tempkey(
    configured: CryptoAuthChip,
) -> None:
    chip = configured
    public = chip.generate_key()
    message = bytes(range(64)) + b"tail of 19 bytes..."
    assert call(chip, "calib_sha_start") == ATCA_SUCCESS
    assert call(chip, "calib_sha_update", buf(message[:64])) == ATCA_SUCCESS
    digest = buf(32)
    tail = message[64:]
    assert call(chip, "calib_sha_end", digest, len(tail), buf(tail)) == ATCA_SUCCESS
    want = hashlib.sha256(message).digest()
    assert bytes(digest) == want
    # Mode 0x02 targets TempKey: valid, SourceFlag "input"; a Sign from TempKey signs it.
    assert _state(chip)[:2] == bytes([0x10, 0x80])
    assert _signs_digest(chip, public, SIGN_EXTERNAL, want)


def test_sha_end_to_the_digest_buffer_and_output_only(configured: CryptoAuthChip) -> None:
    chip = configured
    public = chip.generate_key()
    out, size = buf(32), c_uint16(32)
    assert call(chip, "calib_sha_start") == ATCA_SUCCESS
    end_to_buffer = SHA_END | SHA_TARGET_MSGDIGBUF
    assert call(chip, "calib_sha_base", end_to_buffer, 3, buf(b"abc"), out, byref(size)) == 0
    assert size.value == 32 and bytes(out) == hashlib.sha256(b"abc").digest()
    assert not _tempkey_valid(chip)  # the digest went to the buffer, not TempKey
    assert _signs_digest(
        chip, public, SIGN_EXTERNAL | SIGN_SOURCE_MSGDIGBUF, hashlib.sha256(b"abc").digest()
    )
    assert call(chip, "calib_sha_start") == ATCA_SUCCESS
    size.value = 32
    end_out_only = SHA_END | SHA_TARGET_OUT_ONLY
    assert call(chip, "calib_sha_base", end_out_only, 2, buf(b"xy"), out, byref(size)) == 0
    assert bytes(out) == hashlib.sha256(b"xy").digest()
    assert not _tempkey_valid(chip)


def test_sha_refusals(configured: CryptoAuthChip) -> None:
    chip = configured
    out, size = buf(64), c_uint16(64)
    # no context yet: execution error
    assert call(chip, "calib_sha_update", buf(bytes(64))) == ATCA_EXECUTION_ERROR
    assert call(chip, "calib_sha_start") == ATCA_SUCCESS
    # an Update takes 1 to 64 bytes (the 608 buffers a partial block): 0 is a parse error
    assert call(chip, "calib_sha_base", 0x01, 0, None, out, byref(size)) == ATCA_PARSE_ERROR
    # bits 6-7 = 0b10 is no target
    end_reserved = SHA_END | SHA_TARGET_RESERVED
    status = call(chip, "calib_sha_base", end_reserved, 0, None, out, byref(size))
    assert status == ATCA_PARSE_ERROR
    # mode 5 (the 508's HMAC end) is no 608 mode; a context whose length disagrees with
    # its byte count (40 bytes, count 0: 36 expected) is refused (tests/chips/test_sha_hmac.py
    # covers HMAC and context read/restore)
    for mode, data in ((0x05, None), (0x07, buf(bytes(40)))):
        length = 40 if data is not None else 0
        size.value = 64
        assert call(chip, "calib_sha_base", mode, length, data, out, byref(size)) == (
            ATCA_PARSE_ERROR
        ), hex(mode)
    # sleep loses the SHA context
    assert call(chip, "calib_sha_start") == ATCA_SUCCESS
    assert call(chip, "calib_sleep") == ATCA_SUCCESS
    assert call(chip, "calib_sha_update", buf(bytes(64))) == ATCA_EXECUTION_ERROR
    # idle keeps it
    assert call(chip, "calib_sha_start") == ATCA_SUCCESS
    assert call(chip, "calib_idle") == ATCA_SUCCESS
    assert call(chip, "calib_sha_update", buf(bytes(64))) == ATCA_SUCCESS
    digest = buf(32)
    assert call(chip, "calib_sha_end", digest, 0, None) == ATCA_SUCCESS
    assert bytes(digest) == hashlib.sha256(bytes(64)).digest()


# --- Counter ---------------------------------------------------------------------------


def test_counters_read_increment_and_persist_across_reopening(
    connector: Connector, configured: CryptoAuthChip
) -> None:
    value = c_uint32(0xDEAD)
    assert call(configured, "calib_counter_read", 0, byref(value)) == 0 and value.value == 0
    for expected in (1, 2, 3):
        assert call(configured, "calib_counter_increment", 0, byref(value)) == ATCA_SUCCESS
        assert value.value == expected
    assert call(configured, "calib_counter_increment", 1, byref(value)) == ATCA_SUCCESS
    assert value.value == 1
    configured.close()
    with connector.open("emulated:line1/0") as again:  # another session, same chip file
        assert call(again, "calib_counter_read", 0, byref(value)) == 0 and value.value == 3
        assert call(again, "calib_counter_read", 1, byref(value)) == 0 and value.value == 1
        assert call(again, "calib_counter_increment", 0, byref(value)) == 0
        assert value.value == 4
        # mode 2 is no Counter mode: the chip refuses it
        assert call(again, "calib_counter", 0x02, 0, byref(value)) == ATCA_PARSE_ERROR


def test_counter_at_its_maximum_refuses(connector: Connector, configured: CryptoAuthChip) -> None:
    configured.close()
    path = connector.jig("line1").chip_path(0)
    assert path is not None
    state = json.loads(path.read_text())  # a worn chip: counter 1 two counts from the end
    state["counters"] = [0, COUNTER_MAX - 2]
    path.write_text(json.dumps(state))
    value = c_uint32()
    with connector.open("emulated:line1/0") as chip:
        assert call(chip, "calib_counter_increment", 1, byref(value)) == ATCA_SUCCESS
        assert value.value == COUNTER_MAX - 1
        assert call(chip, "calib_counter_increment", 1, byref(value)) == ATCA_SUCCESS
        assert value.value == COUNTER_MAX
        value.value = 0
        assert call(chip, "calib_counter_increment", 1, byref(value)) == ATCA_EXECUTION_ERROR
        assert call(chip, "calib_counter_read", 1, byref(value)) == ATCA_SUCCESS
        assert value.value == COUNTER_MAX  # the refused increment left it where it was
        assert call(chip, "calib_counter_read", 0, byref(value)) == 0 and value.value == 0


# --- SelfTest --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0x3B, 0x01, 0x02, 0x04, 0x08, 0x10, 0x20])
def test_selftest_passes(configured: CryptoAuthChip, mode: int) -> None:
    result = buf(1)
    result[0] = 0xAA
    assert call(configured, "calib_selftest", mode, 0, result) == ATCA_SUCCESS
    assert result[0] == 0x00


def test_selftest_with_no_test_or_an_unknown_bit_is_a_parse_error(
    configured: CryptoAuthChip,
) -> None:
    # The library hands a parse error (0x03) back as the result byte with ATCA_SUCCESS
    # (calib_selftest: the two cannot be told apart).
    result = buf(1)
    for mode in (0x40, 0x80):
        result[0] = 0xAA
        assert call(configured, "calib_selftest", mode, 0, result) == ATCA_SUCCESS
        assert result[0] == 0x03, hex(mode)


# --- Verify stored ---------------------------------------------------------------------


@pytest.fixture
def signer() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _xy(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]


def test_verify_stored_with_a_public_key_slot(
    configured: CryptoAuthChip, signer: ec.EllipticCurvePrivateKey
) -> None:
    chip = configured
    assert call(chip, "calib_write_pubkey", PUBLIC_SLOT, buf(_xy(signer))) == ATCA_SUCCESS
    message = b"firmware image 1.2.3"
    digest = hashlib.sha256(message).digest()
    good = _raw_signature(signer.sign(message, ec.ECDSA(hashes.SHA256())))
    bad = good[:63] + bytes([good[63] ^ 0x01])
    other = _raw_signature(
        ec.generate_private_key(ec.SECP256R1()).sign(message, ec.ECDSA(hashes.SHA256()))
    )
    verified = c_bool()
    for signature, want in ((good, True), (bad, False), (other, False)):
        verified.value = not want
        status = call(
            chip, "calib_verify_stored", buf(digest), buf(signature), PUBLIC_SLOT, byref(verified)
        )
        assert status == ATCA_SUCCESS  # a mismatch (0x01) is a result, not an error
        assert verified.value is want
    # the same from TempKey (mode 0x00 source) instead of the digest buffer
    assert call(chip, "calib_nonce_load", NONCE_TARGET_TEMPKEY, buf(digest), 32) == 0
    status = call(chip, "calib_verify_stored_with_tempkey", buf(good), PUBLIC_SLOT, byref(verified))
    assert status == ATCA_SUCCESS and verified.value
    wrong_digest = hashlib.sha256(b"another image").digest()
    assert call(chip, "calib_nonce_load", NONCE_TARGET_TEMPKEY, buf(wrong_digest), 32) == 0
    status = call(chip, "calib_verify_stored_with_tempkey", buf(good), PUBLIC_SLOT, byref(verified))
    assert status == ATCA_SUCCESS and not verified.value


def test_verify_stored_refuses_slots_without_a_usable_public_key(
    configured: CryptoAuthChip, signer: ec.EllipticCurvePrivateKey
) -> None:
    chip = configured
    chip.generate_key()  # slot 0: a private key
    for slot in (VALIDATED_PUBLIC_SLOT, DATA_SLOT):
        assert call(chip, "calib_write_pubkey", slot, buf(_xy(signer))) == ATCA_SUCCESS
    digest = hashlib.sha256(b"m").digest()
    good = _raw_signature(signer.sign(b"m", ec.ECDSA(hashes.SHA256())))
    verified = c_bool(True)
    for slot in (DATA_SLOT, 0, VALIDATED_PUBLIC_SLOT):
        status = call(chip, "calib_verify_stored", buf(digest), buf(good), slot, byref(verified))
        assert status == ATCA_EXECUTION_ERROR, slot
        assert not verified.value


def test_verify_validate_and_invalidate_are_refused(
    configured: CryptoAuthChip, signer: ec.EllipticCurvePrivateKey
) -> None:
    chip = configured
    assert call(chip, "calib_write_pubkey", VALIDATED_PUBLIC_SLOT, buf(_xy(signer))) == 0
    assert call(chip, "calib_nonce_load", NONCE_TARGET_TEMPKEY, buf(bytes(32)), 32) == 0
    signature, other_data = buf(bytes(64)), buf(bytes(19))
    for mode in (VERIFY_VALIDATE, VERIFY_INVALIDATE):
        status = call(
            chip, "calib_verify", mode, VALIDATED_PUBLIC_SLOT, signature, None, other_data, None
        )
        assert status == ATCA_PARSE_ERROR, mode
    status = call(
        chip, "calib_verify", VERIFY_VALIDATE_EXTERNAL, 4, signature, buf(_xy(signer)), None, None
    )
    assert status == ATCA_PARSE_ERROR


# --- Nonce targets, Info, sleep and idle -------------------------------------------------


def test_nonce_to_the_alternate_key_buffer(configured: CryptoAuthChip) -> None:
    chip = configured
    key = bytes(range(32))
    assert call(chip, "calib_nonce_load", NONCE_TARGET_ALTKEYBUF, buf(key), 32) == ATCA_SUCCESS
    assert _state(chip) == bytes(4)  # TempKey untouched
    # the alternate key buffer takes 32 bytes only
    status = call(chip, "calib_nonce_load", NONCE_TARGET_ALTKEYBUF, buf(key * 2), 64)
    assert status == ATCA_PARSE_ERROR
    # the digest buffer takes 64 (message + MAC nonce), TempKey 32 or 64
    assert call(chip, "calib_nonce_load", NONCE_TARGET_MSGDIGBUF, buf(key * 2), 64) == 0
    assert _state(chip) == bytes(4)
    assert call(chip, "calib_nonce_load", NONCE_TARGET_TEMPKEY, buf(key), 32) == 0
    assert _state(chip) == bytes([0x10, 0x80, 0, 0])


def test_info_modes(configured: CryptoAuthChip) -> None:
    chip = configured
    out = buf(4)
    assert call(chip, "calib_info_base", INFO_REVISION, 0, out) == 0
    assert bytes(out) == bytes.fromhex("00006002")
    assert call(chip, "calib_info_base", INFO_KEY_VALID, 0, out) == 0 and out[0] == 0
    chip.generate_key()
    assert call(chip, "calib_info_base", INFO_KEY_VALID, 0, out) == 0 and out[0] == 1
    # State: byte 0 TempKey flags (SourceFlag bit 4), byte 1 bit 7 TempKey.Valid
    assert _state(chip) == bytes(4)
    rand = buf(32)
    assert call(chip, "calib_nonce_rand", buf(bytes(20)), rand) == ATCA_SUCCESS
    assert _state(chip) == bytes([0x00, 0x80, 0, 0])  # valid, from the RNG
    assert call(chip, "calib_nonce_load", NONCE_TARGET_TEMPKEY, buf(bytes(32)), 32) == 0
    assert _state(chip) == bytes([0x10, 0x80, 0, 0])  # valid, from input
    assert call(chip, "calib_info_base", INFO_STATE, 1, out) == ATCA_PARSE_ERROR
    # Persistent latch (mode 4): clear after power-up; setting it is not modelled: refused
    latch = c_bool(True)
    assert call(chip, "calib_info_get_latch", byref(latch)) == 0 and latch.value is False
    assert call(chip, "calib_info_set_latch", True) == ATCA_EXECUTION_ERROR
    assert call(chip, "calib_info_get_latch", byref(latch)) == 0 and latch.value is False
    # GPIO (mode 3): an I2C part has no GPIO pin; unknown modes: refused
    assert call(chip, "calib_info_base", INFO_GPIO, 0, out) == ATCA_PARSE_ERROR
    assert call(chip, "calib_info_base", 0x05, 0, out) == ATCA_PARSE_ERROR


def test_sleep_loses_tempkey_and_idle_keeps_it(configured: CryptoAuthChip) -> None:
    chip = configured
    public = chip.generate_key()
    digest = hashlib.sha256(b"keep me").digest()
    signature = buf(64)
    assert call(chip, "calib_nonce_load", NONCE_TARGET_TEMPKEY, buf(digest), 32) == 0
    assert call(chip, "calib_idle") == ATCA_SUCCESS
    assert _signs_digest(chip, public, SIGN_EXTERNAL, digest)
    assert call(chip, "calib_nonce_load", NONCE_TARGET_TEMPKEY, buf(digest), 32) == 0
    assert call(chip, "calib_nonce_load", NONCE_TARGET_MSGDIGBUF, buf(digest), 32) == 0
    assert call(chip, "calib_sleep") == ATCA_SUCCESS
    assert _state(chip) == bytes(4)
    assert call(chip, "calib_sign_base", SIGN_EXTERNAL, 0, signature) == ATCA_EXECUTION_ERROR
    mode = SIGN_EXTERNAL | SIGN_SOURCE_MSGDIGBUF
    assert call(chip, "calib_sign_base", mode, 0, signature) == ATCA_EXECUTION_ERROR


# --- Watchdog --------------------------------------------------------------------------


@pytest.mark.slow
def test_the_watchdog_expires_on_a_chip_left_awake(configured: CryptoAuthChip) -> None:
    chip = configured
    public = chip.generate_key()
    digest = hashlib.sha256(b"watchdog").digest()
    assert call(chip, "calib_nonce_load", NONCE_TARGET_TEMPKEY, buf(digest), 32) == 0
    assert call(chip, "calib_wakeup") == ATCA_SUCCESS  # awake: the watchdog runs
    time.sleep(1.4)  # past the 1.3 s watchdog: the chip fell asleep by itself
    signature = buf(64)
    assert call(chip, "calib_sign_base", SIGN_EXTERNAL, 0, signature) == ATCA_EXECUTION_ERROR
    assert _state(chip) == bytes(4)
    # control: a fresh TempKey signs fine right away
    assert call(chip, "calib_nonce_load", NONCE_TARGET_TEMPKEY, buf(digest), 32) == 0
    assert _signs_digest(chip, public, SIGN_EXTERNAL, digest)


@pytest.mark.slow
def test_an_idle_chip_keeps_tempkey_past_the_watchdog(configured: CryptoAuthChip) -> None:
    chip = configured
    public = chip.generate_key()
    digest = hashlib.sha256(b"idle").digest()
    assert call(chip, "calib_nonce_load", NONCE_TARGET_TEMPKEY, buf(digest), 32) == 0
    assert call(chip, "calib_wakeup") == ATCA_SUCCESS
    assert call(chip, "calib_idle") == ATCA_SUCCESS  # idle stops the watchdog
    time.sleep(1.4)
    assert _state(chip) == bytes([0x10, 0x80, 0, 0])
    assert _signs_digest(chip, public, SIGN_EXTERNAL, digest)
