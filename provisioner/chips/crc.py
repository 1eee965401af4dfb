"""The ATECC CRC-16 (polynomial 0x8005, LSB-first input, init 0), sent little-endian."""

from __future__ import annotations


def crc16(data: bytes) -> bytes:
    """CRC over ``data`` as the two bytes that follow it on the wire."""
    crc = 0
    for byte in data:
        for bit in range(8):
            data_bit = (byte >> bit) & 1
            crc_bit = crc >> 15
            crc = (crc << 1) & 0xFFFF
            if data_bit != crc_bit:
                crc ^= 0x8005
    return crc.to_bytes(2, "little")
