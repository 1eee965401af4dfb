"""Counter starts from the config zone's initial value.

The initial value is written THROUGH THE LIBRARY: ``calib_write_config_counter_ext`` encodes
a binary count into config bytes 52-59 / 60-67 (lib/calib/calib_write.c, "the monotonic
counters are stored in the configuration zone using a special format"); the config is then
locked and the chip's Counter command (``calib_counter_read`` / ``_increment``) must answer
that value. The library's encoder is the independent reference: the test never encodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from ctypes import byref, c_uint16, c_uint32, c_void_p
from pathlib import Path
from typing import Any

import pytest

from provisioner.chips.connector import Connector
from provisioner.chips.crc import crc16
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.library import ATCA_EXECUTION_ERROR, ATCA_SUCCESS
from provisioner.settings import Settings
from tests.chips.conftest import call, declared

COUNTER_MAX = 2_097_151  # calib_command.h COUNTER_MAX_VALUE


@pytest.fixture(scope="module")
def write_counter() -> Any:
    return declared("calib_write_config_counter_ext", [c_void_p, c_uint16, c_uint32])


@pytest.fixture
def connector(tmp_path: Path) -> Connector:
    return Connector(Settings(var_dir=tmp_path))


@pytest.fixture
def blank(connector: Connector, lib: Any) -> Iterator[CryptoAuthChip]:
    """A blank chip with the profile's config written, not yet locked."""
    connector.jig("line1").insert_blank(0)
    chip = connector.open("emulated:line1/0")
    chip.write_config(chip.profile.config_template())
    yield chip
    chip.close()


def _lock(chip: CryptoAuthChip) -> None:
    chip.lock_config(int.from_bytes(crc16(chip.read_config()), "little"))
    assert chip.config_locked()


def _read(chip: CryptoAuthChip, which: int) -> int:
    value = c_uint32(0xDEADBEEF)
    assert call(chip, "calib_counter_read", which, byref(value)) == ATCA_SUCCESS
    return int(value.value)


def _increment(chip: CryptoAuthChip, which: int) -> tuple[int, int]:
    value = c_uint32(0xDEADBEEF)
    status = call(chip, "calib_counter_increment", which, byref(value))
    return status, int(value.value)


# Values on each side of the encoding's boundaries (16-count linear words, 32-count bins)
@pytest.mark.parametrize(
    "initial", [1, 15, 16, 17, 31, 32, 33, 47, 48, 49, 1000, 65_535, 1_000_003]
)
def test_counter_reads_the_initial_value_the_library_encoded(
    write_counter: Any, blank: CryptoAuthChip, initial: int
) -> None:
    assert write_counter(blank._dev, 0, initial) == ATCA_SUCCESS
    assert write_counter(blank._dev, 1, initial // 3) == ATCA_SUCCESS
    config = blank.read_config()
    assert config[52:68] != bytes(16)  # the library did write an encoding
    _lock(blank)
    assert _read(blank, 0) == initial
    assert _read(blank, 1) == initial // 3
    assert _increment(blank, 0) == (ATCA_SUCCESS, initial + 1)
    assert _read(blank, 0) == initial + 1
    assert _read(blank, 1) == initial // 3  # the other counter did not move


def test_increments_persist_on_top_of_the_initial_value(
    write_counter: Any, connector: Connector, blank: CryptoAuthChip
) -> None:
    assert write_counter(blank._dev, 0, 5_000) == ATCA_SUCCESS
    _lock(blank)
    for expected in (5_001, 5_002, 5_003):
        assert _increment(blank, 0) == (ATCA_SUCCESS, expected)
    blank.close()
    with connector.open("emulated:line1/0") as again:  # another session, same chip file
        assert _read(again, 0) == 5_003
        assert _increment(again, 0) == (ATCA_SUCCESS, 5_004)


def test_an_initial_value_near_the_maximum_stops_there(
    write_counter: Any, blank: CryptoAuthChip
) -> None:
    assert write_counter(blank._dev, 1, COUNTER_MAX - 1) == ATCA_SUCCESS
    assert write_counter(blank._dev, 0, COUNTER_MAX) == ATCA_SUCCESS
    _lock(blank)
    assert _increment(blank, 1) == (ATCA_SUCCESS, COUNTER_MAX)
    assert _increment(blank, 1)[0] == ATCA_EXECUTION_ERROR
    assert _read(blank, 1) == COUNTER_MAX  # the refused increment left it where it was
    assert _read(blank, 0) == COUNTER_MAX
    assert _increment(blank, 0)[0] == ATCA_EXECUTION_ERROR
