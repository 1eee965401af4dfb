"""The ATECC CRC-16 (polynomial 0x8005, LSB-first input, init 0), sent little-endian.

Table-driven (one lookup per byte instead of eight shifts): the emulator computes it twice
per command, which made the bitwise form a visible share of its CPU (issue 19). The
input bits go in LSB first, so each byte is bit-reversed before it meets the MSB-first
table; tests/chips/test_crc.py holds it to the bitwise definition."""

from __future__ import annotations

_POLY = 0x8005


def _msb_entry(i: int) -> int:
    crc = i << 8
    for _ in range(8):
        crc = ((crc << 1) ^ _POLY) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


_TABLE = tuple(_msb_entry(i) for i in range(256))
_REFLECT = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def crc16(data: bytes) -> bytes:
    """CRC over ``data`` as the two bytes that follow it on the wire."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[(crc >> 8) ^ _REFLECT[byte]]
    return crc.to_bytes(2, "little")
