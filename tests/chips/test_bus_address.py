"""The I2C address, through the unmodified library: the kit-bridge packet carries the address
the library was configured with (``atcakit.dev_identity``), and the emulated bus answers
only where a chip is. A new address (config byte 16, or UserExtraAdd with ChipMode bit 0)
takes effect when the chip wakes from sleep or powers up, never on a wake from idle; a board
holds several chips on one bus at different addresses.

Expected addresses come from the configs the tests write (the datasheet's rule: bits 7..1
of the device address byte are compared with bits 7..1 of I2C_Address), not from the
emulator's own decoding."""

from __future__ import annotations

from collections.abc import Iterator
from ctypes import c_int, c_uint8, c_uint16, c_void_p
from pathlib import Path
from typing import Any

import pytest

from provisioner.chips.connector import Connector
from provisioner.chips.crc import crc16
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.emulator.chip import EmulatedChip
from provisioner.chips.library import ATCA_SUCCESS, buf
from provisioner.errors import ChipAbsentError, ChipCommandError, InvalidInputError
from tests.chips.conftest import call, config_with, declared, settings_with_ca

TNG_ADDRESS = 0x6A  # Trust&GO's 8-bit address (7-bit 0x35)
OTHER_ADDRESS = 0x6C


@pytest.fixture
def connector(tmp_path: Path) -> Connector:
    return Connector(settings_with_ca(tmp_path)[0])


@pytest.fixture
def updateextra() -> Any:
    """``calib_updateextra(device, mode, new_value)`` (lib/calib/calib_updateextra.c)."""
    return declared("calib_updateextra", [c_void_p, c_uint8, c_uint16], c_int)


def answers(chip: CryptoAuthChip) -> bool:
    """Whether a chip answers the library at ``chip``'s address (Info revision)."""
    try:
        chip.identity()
    except ChipAbsentError:
        return False
    return True


def lock_config_as(chip: CryptoAuthChip, config: bytes) -> None:
    """Write ``config`` through the library and lock it with its CRC, as a customer does."""
    chip.write_config(config)
    chip.lock_config(int.from_bytes(crc16(chip.read_config()), "little"))


def with_address(chip: CryptoAuthChip, address: int, extra: dict[int, int] | None = None) -> bytes:
    """The line profile's config with I2C_Address (byte 16) and other bytes replaced."""
    return config_with(chip.profile.config_template(), set_bytes={16: address, **(extra or {})})


@pytest.fixture
def blank(connector: Connector) -> Iterator[CryptoAuthChip]:
    connector.jig("line1").insert_blank(0)
    with connector.open("emulated:line1/0") as chip:
        yield chip


def test_a_blank_chip_answers_at_0xC0_only(connector: Connector, lib: Any) -> None:
    path = connector.jig("line1").insert_blank(0)
    serial = EmulatedChip.load(path).serial
    with connector.open("emulated:line1/0") as chip:
        assert chip.identity().serial == serial
    with connector.open("emulated:line1/0", address=0xC0) as chip:
        assert chip.identity().serial == serial
    for address in (TNG_ADDRESS, 0xC2, 0x60):  # 0x60 is 0xC0's 7-bit form: not the same
        with connector.open("emulated:line1/0", address=address) as chip:
            with pytest.raises(ChipAbsentError, match="no chip answers"):
                chip.identity()
            assert call(chip, "calib_wakeup") != ATCA_SUCCESS  # no ACK: the wake fails


def test_the_locator_suffix_and_the_argument_name_the_same_address(
    connector: Connector,
) -> None:
    connector.jig("line1").insert_blank(0)
    with connector.open("emulated:line1/0@0xC0") as chip:
        assert answers(chip)
    with connector.open("emulated:line1/0@0x6A") as chip:
        assert not answers(chip)
    with connector.open("emulated:line1/0@192", address=0xC0) as chip:  # decimal too
        assert answers(chip)
    with pytest.raises(InvalidInputError, match="contradicts"):
        connector.open("emulated:line1/0@0x6A", address=0xC0)
    for bad in (0xC1, 0x00, 0x100):  # a read bit, the general call, not a byte
        with pytest.raises(InvalidInputError, match="not an 8-bit device address"):
            connector.open("emulated:line1/0", address=bad)
    with pytest.raises(InvalidInputError, match="contradicts"):
        connector.open("i2c:/dev/i2c-1@0x6A", address=0xC0)


def test_a_new_address_takes_effect_at_sleep_not_at_idle(
    connector: Connector, lib: Any, blank: CryptoAuthChip
) -> None:
    serial = blank.identity().serial
    lock_config_as(blank, with_address(blank, TNG_ADDRESS))
    assert blank.read_config()[16] == TNG_ADDRESS
    # The library idles after every command: the chip keeps answering where it was.
    assert call(blank, "calib_idle") == ATCA_SUCCESS
    assert answers(blank)
    with connector.open("emulated:line1/0", address=TNG_ADDRESS) as other:
        pass  # opening a second handle does not power-cycle the chip in the socket
    # Sleep resets the I/O block: from the next wake the chip is at 0x6A.
    assert call(blank, "calib_sleep") == ATCA_SUCCESS
    assert not answers(blank)
    with connector.open("emulated:line1/0", address=TNG_ADDRESS) as other:
        assert other.identity().serial == serial
        assert other.config_locked()
    with connector.open("emulated:line1/0") as again:  # a power-up: still 0x6A
        assert not answers(again)


def test_a_power_cycle_applies_an_unlocked_config_address_too(
    connector: Connector, blank: CryptoAuthChip
) -> None:
    """Silicon reads I2C_Address at power-up whether or not the config is locked (a part
    written but left unlocked came back at the new address after a power cycle)."""
    blank.write_config(with_address(blank, TNG_ADDRESS))
    assert not blank.config_locked() and answers(blank)
    blank.close()
    with connector.open("emulated:line1/0") as chip:  # new handle, chip loaded afresh
        assert not answers(chip)
    with connector.open("emulated:line1/0", address=TNG_ADDRESS) as chip:
        assert answers(chip) and not chip.config_locked()


def test_user_extra_add_moves_the_chip_only_with_chip_mode_bit_0(
    connector: Connector, lib: Any, updateextra: Any
) -> None:
    jig = connector.jig("line1")
    jig.insert_blank(0)
    jig.insert_blank(1)
    # Socket 0: ChipMode bit 0 set, UserExtraAdd written after the lock with UpdateExtra.
    with connector.open("emulated:line1/0") as chip:
        lock_config_as(chip, with_address(chip, 0xC0, {19: 0x01}))
        assert updateextra(chip._dev, 0x01, OTHER_ADDRESS) == ATCA_SUCCESS
        assert chip.read_config()[85] == OTHER_ADDRESS
        assert answers(chip)  # not before sleep
        assert call(chip, "calib_sleep") == ATCA_SUCCESS
        assert not answers(chip)
    with connector.open("emulated:line1/0", address=OTHER_ADDRESS) as chip:
        assert answers(chip)
    # Socket 1: ChipMode bit 0 clear: byte 85 is only a byte (I2C_Address still rules).
    with connector.open("emulated:line1/1") as chip:
        lock_config_as(chip, with_address(chip, 0xC0))
        assert updateextra(chip._dev, 0x01, OTHER_ADDRESS) == ATCA_SUCCESS
        assert call(chip, "calib_sleep") == ATCA_SUCCESS
        assert answers(chip)
    with connector.open("emulated:line1/1", address=OTHER_ADDRESS) as chip:
        assert not answers(chip)


def test_a_single_wire_part_answers_on_no_i2c_address(connector: Connector) -> None:
    chip = EmulatedChip.blank()
    chip.config[14] = 0x00  # I2C_Enable bit 0 clear: the SWI variant (set at the factory)
    connector.jig("line1").insert_chip(0, chip)
    for address in (0xC0, TNG_ADDRESS):
        with connector.open("emulated:line1/0", address=address) as handle:
            assert not answers(handle)


def _chip_at(connector: Connector, socket: int, address: int) -> Path:
    """A chip personalised (through the library) to answer at ``address``, in ``socket``."""
    path = connector.jig("line1").insert_blank(socket)
    with connector.open(f"emulated:line1/{socket}") as chip:
        lock_config_as(chip, with_address(chip, address))
    return path


def test_two_chips_on_one_bus(connector: Connector, lib: Any) -> None:
    jig = connector.jig("line1")
    first = jig.insert_blank(0)  # stays at 0xC0
    second = _chip_at(connector, 1, TNG_ADDRESS)
    jig.insert_paths(2, [first, second])  # one board, one bus: both move there
    assert jig.chip_paths(0) == [] and jig.chip_paths(1) == []
    assert jig.chip_paths(2) == [first.resolve(), second.resolve()]
    serials = {p: EmulatedChip.load(p).serial for p in (first, second)}

    with (
        connector.open("emulated:line1/2") as a,
        connector.open("emulated:line1/2@0x6A") as b,
    ):
        assert a.identity().serial == serials[first]
        assert b.identity().serial == serials[second]
        assert not a.config_locked() and b.config_locked()
        a.ensure_configured()
        ka, kb = a.generate_key(), b.generate_key()
        digest = bytes(range(32))
        sa, sb = a.sign_digest(digest), b.sign_digest(digest)
        assert a.verify_extern(digest, sa, ka) and a.verify_extern(digest, sb, kb)
        assert not b.verify_extern(digest, sa, kb)

        # Volatile state is per chip: TempKey loaded in B survives A's sleep.
        state = buf(4)
        assert call(b, "calib_nonce_load", 0x00, buf(bytes(32)), 32) == ATCA_SUCCESS
        assert call(a, "calib_sleep") == ATCA_SUCCESS
        assert call(b, "calib_info_base", 0x02, 0, state) == ATCA_SUCCESS
        assert state[1] & 0x80  # TempKey still valid in B
        assert call(b, "calib_sleep") == ATCA_SUCCESS
        assert call(b, "calib_info_base", 0x02, 0, state) == ATCA_SUCCESS
        assert not state[1] & 0x80  # and gone after B's own sleep

    with connector.open("emulated:line1/2", address=OTHER_ADDRESS) as nobody:
        assert not answers(nobody)


def test_two_chips_at_one_address_collide(connector: Connector) -> None:
    """Two parts at the same address both drive the bus: the host reads garbage, never one
    of them silently."""
    jig = connector.jig("line1")
    jig.insert_board(0, [EmulatedChip.blank(), EmulatedChip.blank()])
    with connector.open("emulated:line1/0") as chip, pytest.raises(ChipCommandError):
        chip.identity()


def test_a_board_chip_pulled_leaves_the_other(connector: Connector) -> None:
    jig = connector.jig("line1")
    first = jig.insert_blank(0)
    second = _chip_at(connector, 1, TNG_ADDRESS)
    jig.insert_paths(0, [first, second])
    jig.remove_chip(0, first.resolve())
    with connector.open("emulated:line1/0") as a:
        assert not answers(a)
    with connector.open("emulated:line1/0", address=TNG_ADDRESS) as b:
        assert answers(b)
    jig.remove_chip(0, second.resolve())
    assert jig.chip_path(0) is None
