"""Random (0x1B) and Nonce (0x16): the RNG and loading TempKey / the other buffers.

Nonce modes 0/1 (random: TempKey = SHA-256(RandOut || NumIn || 0x16 || mode || 0x00),
SourceFlag random) and 3 (pass-through, 32 or 64 bytes, to TempKey, the message-digest
buffer or the alternate key buffer). Before the config lock the RNG answers the fixed
pattern.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from provisioner.chips.emulator.wire import OP_NONCE, PARSE_ERROR, CommandError, Reply

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip


def random(chip: EmulatedChip, mode: int, p2: int, data: bytes) -> Reply:
    if mode not in (0, 1) or p2 != 0 or data:
        raise CommandError(PARSE_ERROR)
    return chip.random32(), False


def nonce(chip: EmulatedChip, mode: int, p2: int, data: bytes) -> Reply:
    kind, target = mode & 0x03, mode & 0xC0
    if kind in (0, 1):
        if len(data) != 20 or target:
            raise CommandError(PARSE_ERROR)
        rand = chip.random32()
        chip.set_tempkey(hashlib.sha256(rand + data + bytes([OP_NONCE, mode, 0x00])).digest())
        return rand, False
    if kind == 3:
        want = 64 if mode & 0x20 else 32
        if len(data) != want:
            raise CommandError(PARSE_ERROR)
        if target == 0x00:
            chip.set_tempkey(data, source_input=True)
        elif target == 0x40:
            chip.msg_digest = data
        elif target == 0x80 and want == 32:
            chip.alt_key = data
        else:
            raise CommandError(PARSE_ERROR)
        return None, False
    raise CommandError(PARSE_ERROR)
