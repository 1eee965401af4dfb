"""Counter (0x24): the two monotonic counters (persistent, in ``chip.counters``).

Answers the 4-byte little-endian value, after incrementing in mode 1; past 2,097,151
execution error. Config bytes 52-67 hold the counters' initial values in an encoding
Microchip does not publish; they are not decoded and every counter starts at 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from provisioner.chips.emulator.wire import (
    EXECUTION_ERROR,
    OP_COUNTER,
    PARSE_ERROR,
    CommandError,
    Reply,
)

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip

COUNTER_MAX = 2_097_151


def counter(chip: EmulatedChip, mode: int, which: int, data: bytes) -> Reply:
    if data or mode not in (0x00, 0x01) or which not in (0, 1):
        raise CommandError(PARSE_ERROR)
    if mode == 0x01:
        if chip.counters[which] >= COUNTER_MAX:
            raise CommandError(EXECUTION_ERROR)
        chip.counters[which] += 1
    return chip.counters[which].to_bytes(4, "little"), mode == 0x01


HANDLERS = {OP_COUNTER: counter}
