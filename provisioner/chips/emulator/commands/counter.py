"""Counter (0x24): the two monotonic counters, starting from the config zone's initial
values.

Config bytes 52-59 (Counter[0]) and 60-67 (Counter[1]) hold each counter's initial value
in the encoding cryptoauthlib's ``calib_write_config_counter`` writes (lib/calib/
calib_write.c): two big-endian 16-bit "linear" words ``lin_a``, ``lin_b`` then two
big-endian 16-bit binary words ``bin_a``, ``bin_b``, where for a value v

    lin_a = 0xFFFF >> (v % 32)            bin_a = v // 32
    lin_b = 0xFFFF >> ((v - 16) % 32)     bin_b = (v - 16) // 32     (v >= 16; else 0xFFFF, 0)

(FF FF FF FF 00 00 00 00 is 0, the datasheet's default). :func:`decode` inverts it and
accepts only what that encoder produces; anything else (all zeros, as this product's own
profile writes) reads as 0, which keeps every chip configured before this change
counting as before. What silicon answers for such bytes is not published.

``chip.counters`` keeps, persistently, the increments since that initial value, so a
counter reads ``initial + increments``. Answers the 4-byte little-endian value, after
incrementing in mode 1; past 2,097,151 execution error (the value stays). Not modelled:
the counter-limited key use (KeyConfig/ChipOptions counter match) and whether a config
Read shows the advanced encoding after increments (not published either).
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
CONFIG_OFFSET = 52  # Counter[0]; Counter[1] follows at 60


def encode(value: int) -> bytes:
    """The 8 config bytes for an initial ``value`` (the library's encoding, see above)."""
    if not 0 <= value <= COUNTER_MAX:
        raise ValueError(f"counter value {value} out of range")
    lin_a = 0xFFFF >> (value % 32)
    lin_b = 0xFFFF >> ((value - 16) % 32) if value >= 16 else 0xFFFF
    bin_a = value // 32
    bin_b = (value - 16) // 32 if value >= 16 else 0
    return b"".join(w.to_bytes(2, "big") for w in (lin_a, lin_b, bin_a, bin_b))


def decode(raw: bytes) -> int | None:
    """The value ``raw`` (8 config bytes) encodes, or None if no value encodes to it.

    While lin_a still has ones it counts v % 32 in 0..15 (16 minus its ones); once it is
    spent, lin_b counts (v - 16) % 32 the same way against bin_b."""
    lin_a, lin_b, bin_a, bin_b = (int.from_bytes(raw[i : i + 2], "big") for i in (0, 2, 4, 6))
    spent_a, spent_b = 16 - lin_a.bit_count(), 16 - lin_b.bit_count()
    value = 32 * bin_a + spent_a if lin_a else 32 * bin_b + 16 + spent_b
    if not 0 <= value <= COUNTER_MAX or encode(value) != bytes(raw):
        return None
    return value


def initial_value(chip: EmulatedChip, which: int) -> int:
    """Counter ``which``'s initial value from the config zone (0 if not a valid encoding)."""
    start = CONFIG_OFFSET + 8 * which
    return decode(bytes(chip.config[start : start + 8])) or 0


def counter_value(chip: EmulatedChip, which: int) -> int:
    """What Counter(read) answers for ``which``: for any command that includes a counter
    (e.g. GenDig's counter variant), not ``chip.counters`` alone."""
    return min(initial_value(chip, which) + chip.counters[which], COUNTER_MAX)


def counter(chip: EmulatedChip, mode: int, which: int, data: bytes) -> Reply:
    if data or mode not in (0x00, 0x01) or which not in (0, 1):
        raise CommandError(PARSE_ERROR)
    if mode == 0x01:
        if counter_value(chip, which) >= COUNTER_MAX:
            raise CommandError(EXECUTION_ERROR)
        chip.counters[which] += 1
    return counter_value(chip, which).to_bytes(4, "little"), mode == 0x01


HANDLERS = {OP_COUNTER: counter}
