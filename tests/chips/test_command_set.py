"""The rest of the 608's command set, through the unmodified library (``calib_*`` with an
explicit device): SHA, Counter, SelfTest, Verify stored, Nonce targets, Info modes, and
what sleep and idle do to volatile state. Refusals are checked as carefully as results."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from ctypes import byref, c_bool, c_uint16, c_uint32
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from provisioner.chips.connector import Connector
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.emulator import bus as bus_module
from provisioner.chips.emulator.bus import EmulatedBus
from provisioner.chips.emulator.chip import COUNTER_MAX, EmulatedChip, command_packet
from provisioner.chips.library import (
    ATCA_EXECUTION_ERROR,
    ATCA_PARSE_ERROR,
    ATCA_SUCCESS,
    buf,
)
from tests.chips.conftest import SoftwareCa, call, issue_for, settings_with_ca


@pytest.fixture
def station(tmp_path: Path) -> Iterator[tuple[Connector, SoftwareCa, CryptoAuthChip]]:
    settings, ca = settings_with_ca(tmp_path)
    connector = Connector(settings)
    connector.jig("line1").insert_blank(0)
    chip = connector.open("emulated:line1/0")
    chip.ensure_configured()
    yield connector, ca, chip
    chip.close()


@pytest.mark.parametrize("size", [0, 1, 55, 63, 64, 65, 100, 1000])
def test_sha256_matches_hashlib(lib: Any, station: Any, size: int) -> None:
    _, _, chip = station
    message = bytes((i * 7) & 0xFF for i in range(size))
    digest = buf(32)
    assert call(chip, "calib_hw_sha2_256", buf(message or b"\x00"), size, digest) == 0
    assert bytes(digest) == hashlib.sha256(message).digest()


def test_sha_refuses_update_without_start_and_bad_lengths(lib: Any, station: Any) -> None:
    _, _, chip = station
    out, size = buf(65), c_uint16(65)
    update = 0x01
    status = call(chip, "calib_sha_base", update, 64, buf(bytes(64)), out, byref(size))
    assert status == ATCA_EXECUTION_ERROR  # no context
    assert call(chip, "calib_sha_base", 0x00, 0, None, out, byref(size)) == 0  # start
    # the 608 takes 1 to 64 bytes per Update (datasheet "SHA - SHA256 Digest")
    assert call(chip, "calib_sha_base", update, 10, buf(bytes(10)), out, byref(size)) == 0
    for length in (0, 65):
        data = buf(bytes(length)) if length else None
        status = call(chip, "calib_sha_base", update, length, data, out, byref(size))
        assert status == ATCA_PARSE_ERROR, length
    hmac_end_508 = 0x05  # no 608 mode (its HMAC ends with mode 2)
    assert call(chip, "calib_sha_base", hmac_end_508, 0, None, out, byref(size)) == (
        ATCA_PARSE_ERROR
    )


def test_counters_count_persist_and_stop_at_the_maximum(
    lib: Any, station: Any, tmp_path: Path
) -> None:
    connector, _, chip = station
    value = c_uint32()
    assert call(chip, "calib_counter_read", 1, byref(value)) == 0 and value.value == 0
    for expected in (1, 2, 3):
        assert call(chip, "calib_counter_increment", 1, byref(value)) == 0
        assert value.value == expected
    assert call(chip, "calib_counter_read", 0, byref(value)) == 0 and value.value == 0
    chip.close()
    with connector.open("emulated:line1/0") as again:  # the state lives in the chip's file
        assert call(again, "calib_counter_read", 1, byref(value)) == 0 and value.value == 3
    path = connector.jig("line1").chip_path(0)
    assert path is not None
    near_end = EmulatedChip.load(path)
    near_end.counters[0] = COUNTER_MAX - 1
    near_end.save(path)
    with connector.open("emulated:line1/0") as again:
        assert call(again, "calib_counter_increment", 0, byref(value)) == 0
        assert value.value == COUNTER_MAX
        assert call(again, "calib_counter_increment", 0, byref(value)) == ATCA_EXECUTION_ERROR
        assert call(again, "calib_counter_read", 0, byref(value)) == 0
        assert value.value == COUNTER_MAX


def test_selftest_passes_and_rejects_unknown_modes(lib: Any, station: Any) -> None:
    _, _, chip = station
    result = buf(1)
    result[0] = 0xAA
    assert call(chip, "calib_selftest", 0x3B, 0, result) == 0  # the library's "all"
    assert result[0] == 0x00
    # Bit 6 is no test: the chip answers parse error (0x03), which the library hands back
    # as the result byte (its own comment: the two cannot be told apart).
    assert call(chip, "calib_selftest", 0x40, 0, result) == 0
    assert result[0] == 0x03


def test_verify_stored_with_the_signer_key_the_chip_holds(lib: Any, station: Any) -> None:
    """After provisioning, slot 11 holds the intermediate's public key: the chip itself can
    check a signature made by the CA (Verify, stored mode, via the digest buffer)."""
    connector, ca, chip = station
    chip.generate_key()
    chip.lock_data_zone()
    chip.write_certificate(issue_for(chip, ca, connector.settings))
    message = hashlib.sha256(b"firmware image").digest()
    r, s = decode_dss_signature(ca.key.sign(b"firmware image", ec.ECDSA(hashes.SHA256())))
    good = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    verified = c_bool()
    slot = connector.settings.chip.signer_key_slot
    assert call(chip, "calib_verify_stored", buf(message), buf(good), slot, byref(verified)) == 0
    assert verified.value
    bad = good[:-1] + bytes([good[-1] ^ 1])
    assert call(chip, "calib_verify_stored", buf(message), buf(bad), slot, byref(verified)) == 0
    assert not verified.value
    # slot 8 is data (KeyConfig KeyType "not ECC"): no public key to verify with
    status = call(chip, "calib_verify_stored", buf(message), buf(good), 8, byref(verified))
    assert status == ATCA_EXECUTION_ERROR


def test_nonce_targets_and_what_sleep_and_idle_keep(lib: Any, station: Any) -> None:
    _, _, chip = station
    chip.generate_key()
    digest, signature = hashlib.sha256(b"m").digest(), buf(64)
    external_from_tempkey = 0x80
    assert call(chip, "calib_nonce_load", 0x00, buf(digest), 32) == 0  # TempKey
    assert call(chip, "calib_idle") == 0
    assert call(chip, "calib_sign_base", external_from_tempkey, 0, signature) == ATCA_SUCCESS
    assert chip.verify_extern(digest, bytes(signature), chip.public_key())
    assert call(chip, "calib_nonce_load", 0x00, buf(digest), 32) == 0
    assert call(chip, "calib_sleep") == 0  # sleep loses TempKey
    status = call(chip, "calib_sign_base", external_from_tempkey, 0, signature)
    assert status == ATCA_EXECUTION_ERROR
    assert call(chip, "calib_nonce_load", 0x80, buf(digest), 32) == 0  # alternate key buf
    assert call(chip, "calib_nonce_load", 0x80, buf(digest * 2), 64) == ATCA_PARSE_ERROR


def test_info_state_gpio_and_latch(lib: Any, station: Any) -> None:
    """Info state in the datasheet layout (TempKey flags in byte 0, TempKey.Valid in byte 1
    bit 7); the latch reads clear and cannot be set without the authorisation silicon
    needs (not modelled); an I2C part has no GPIO pin."""
    _, _, chip = station
    out = buf(4)
    assert call(chip, "calib_info_base", 0x02, 0, out) == 0
    assert out[1] & 0x80 == 0  # nothing has loaded TempKey yet
    assert call(chip, "calib_nonce_load", 0x00, buf(bytes(32)), 32) == 0
    assert call(chip, "calib_info_base", 0x02, 0, out) == 0
    assert (out[0] & 0x10, out[1] & 0x80) == (0x10, 0x80)  # from input (pass-through), valid
    latch = c_bool(True)
    assert call(chip, "calib_info_get_latch", byref(latch)) == 0 and not latch.value
    assert call(chip, "calib_info_set_latch", True) == ATCA_EXECUTION_ERROR
    assert call(chip, "calib_info_base", 0x03, 0x03, out) == ATCA_PARSE_ERROR
    assert call(chip, "calib_info_base", 0x05, 0, out) == ATCA_PARSE_ERROR


def test_the_watchdog_loses_volatile_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The library wakes the chip before and idles it after every command, so through it
    the watchdog (1.3 s after wake) never expires; the bus still honours it for a host
    that holds the chip awake. Checked on the bus, with a clock the test moves."""
    connector = Connector(settings_with_ca(tmp_path)[0])
    jig = connector.jig("line1")
    jig.insert_blank(0)
    now = [100.0]
    monkeypatch.setattr(bus_module.time, "monotonic", lambda: now[0])
    wire = EmulatedBus(jig, 0)

    def command(opcode: int, p1: int, p2: int, data: bytes = b"") -> bytes:
        wire.send(command_packet(opcode, p1, p2, data))
        response = wire.receive()
        assert response is not None
        return response

    wire.wake()
    assert command(0x16, 0x03, 0, bytes(32))[1] == 0x00  # Nonce pass-through to TempKey
    assert command(0x30, 0x02, 0)[2] & 0x80  # Info state byte 1: TempKey valid
    now[0] += 1.4  # held awake past the watchdog
    assert command(0x30, 0x02, 0)[2] & 0x80 == 0  # the chip slept: TempKey is gone
