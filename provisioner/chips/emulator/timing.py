"""Command execution times, by the chip's clock divider (ChipMode bits 3-7).

Milliseconds for the ATECC608 at M0 / M1 / M2 (cryptoauthlib's no-poll table in
lib/calib/calib_execution.c, research notes); commands whose time does not depend on
the divider have one figure for all three.
"""

from __future__ import annotations

# opcode: (M0, M1, M2)
EXEC_MS: dict[int, tuple[float, float, float]] = {
    0x08: (55, 55, 55),  # MAC
    0x15: (25, 35, 35),  # GenDig
    0x1C: (50, 50, 50),  # DeriveKey
    0x28: (40, 40, 40),  # CheckMac
    0x46: (50, 50, 50),  # PrivWrite
    0x51: (27, 27, 27),  # AES
    0x56: (165, 165, 165),  # KDF
    0x80: (80, 160, 480),  # SecureBoot
    0x02: (5, 5, 5),  # Read
    0x12: (45, 45, 45),  # Write
    0x16: (20, 20, 20),  # Nonce
    0x17: (35, 35, 35),  # Lock
    0x1B: (23, 23, 23),  # Random
    0x20: (10, 10, 10),  # UpdateExtra
    0x24: (25, 25, 25),  # Counter (608 table; the 508A takes 20)
    0x30: (5, 5, 5),  # Info
    0x40: (115, 215, 653),  # GenKey
    0x41: (115, 220, 665),  # Sign
    0x43: (75, 172, 531),  # ECDH
    0x45: (105, 295, 1085),  # Verify
    0x47: (36, 42, 75),  # SHA
    0x77: (250, 625, 2324),  # SelfTest
}
DEFAULT_MS = 5.0

# ChipMode & 0xF8 -> column (cryptoauthlib's ATCA_CHIPMODE_CLOCK_DIV_M0/M1/M2).
CLOCK_DIV_M0, CLOCK_DIV_M1, CLOCK_DIV_M2 = 0x00, 0x28, 0x68
_DIVIDERS = {CLOCK_DIV_M0: 0, CLOCK_DIV_M1: 1, CLOCK_DIV_M2: 2}


def clock_column(chip_mode: int) -> int:
    """Column of EXEC_MS for a ChipMode byte (unknown dividers run at M0 timings)."""
    return _DIVIDERS.get(chip_mode & 0xF8, 0)


def execution_ms(opcode: int, chip_mode: int = 0) -> float:
    row = EXEC_MS.get(opcode)
    return DEFAULT_MS if row is None else row[clock_column(chip_mode)]
