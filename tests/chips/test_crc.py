"""The table-driven CRC-16 equals the datasheet's bit-by-bit definition (issue 19 made it
table-driven for the emulator's sake; the library checks every packet's CRC too, so a
wrong table would also fail every chip test)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from provisioner.chips.crc import crc16


def _bitwise(data: bytes) -> bytes:
    """Polynomial 0x8005, input bits LSB first, init 0, sent little-endian."""
    crc = 0
    for byte in data:
        for bit in range(8):
            data_bit = (byte >> bit) & 1
            crc_bit = crc >> 15
            crc = (crc << 1) & 0xFFFF
            if data_bit != crc_bit:
                crc ^= 0x8005
    return crc.to_bytes(2, "little")


@given(st.binary(max_size=160))
def test_the_table_gives_the_bitwise_crc(data: bytes) -> None:
    assert crc16(data) == _bitwise(data)


def test_every_single_byte_and_the_empty_input() -> None:
    assert crc16(b"") == b"\x00\x00"
    for b in range(256):
        assert crc16(bytes([b])) == _bitwise(bytes([b]))
