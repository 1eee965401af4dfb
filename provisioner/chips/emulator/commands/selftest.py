"""SelfTest (0x77): real known-answer checks of the primitives the emulator computes with.

Mode bits 0 DRBG, 1 ECDSA sign, 2 ECDSA verify, 3 ECDH, 4 AES, 5 SHA (cryptoauthlib's
"all" is 0x3B); answers one byte: 0x00 if all pass, else the bits of the tests that
failed. Mode 0 or bits 6-7 set: parse error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from provisioner.chips.emulator.selftest import SELFTESTS
from provisioner.chips.emulator.wire import OP_SELFTEST, PARSE_ERROR, CommandError, Reply

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip


def selftest(chip: EmulatedChip, mode: int, p2: int, data: bytes) -> Reply:
    if data or p2 or not mode or mode & ~0x3F:
        raise CommandError(PARSE_ERROR)
    failed = 0
    for bit, check in SELFTESTS.items():
        if mode & bit and not check():
            failed |= bit
    return bytes([failed]), False


HANDLERS = {OP_SELFTEST: selftest}
