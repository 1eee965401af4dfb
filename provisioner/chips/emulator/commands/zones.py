"""Read (0x02), Write (0x12), UpdateExtra (0x20) and Lock (0x17): the zones.

Refused with an execution error: encrypted writes (as a plain write to an encrypt-only
slot is), and after the data lock any write to a slot whose WriteConfig is not "always".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from provisioner.chips.crc import crc16
from provisioner.chips.emulator.wire import EXECUTION_ERROR, PARSE_ERROR, CommandError, Reply

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip

LOCKED = 0x00


def address(chip: EmulatedChip, zone: int, addr: int, n: int) -> tuple[bytearray, int]:
    """Resolve (zone, address, length) to a buffer and byte offset, or refuse."""
    if zone == 0 or zone == 1:
        buf = chip.config if zone == 0 else chip.otp
        block, word = (addr >> 3) & 0x1F, addr & 0x07
        off = block * 32 + (0 if n == 32 else word * 4)
        if off + n > len(buf):
            raise CommandError(PARSE_ERROR)
        return buf, off
    if zone == 2:
        slot, word, block = (addr >> 3) & 0x0F, addr & 0x07, (addr >> 8) & 0x0F
        off = block * 32 + (0 if n == 32 else word * 4)
        return chip.slots[slot], off
    raise CommandError(PARSE_ERROR)


def read(chip: EmulatedChip, p1: int, addr: int, data: bytes) -> Reply:
    zone, n = p1 & 0x03, (32 if p1 & 0x80 else 4)
    if data or p1 & 0x7C:
        raise CommandError(PARSE_ERROR)
    if zone == 2:
        if not chip.data_locked:
            raise CommandError(EXECUTION_ERROR)  # data zone unreadable before lock
        slot = (addr >> 3) & 0x0F
        if chip.is_private(slot) or chip.slot_config(slot) & 0x80:  # secret
            raise CommandError(EXECUTION_ERROR)
    if zone == 1 and not chip.data_locked:
        raise CommandError(EXECUTION_ERROR)
    buf, off = address(chip, zone, addr, n)
    if off + n > len(buf):
        raise CommandError(PARSE_ERROR)
    return bytes(buf[off : off + n]), False


def write(chip: EmulatedChip, p1: int, addr: int, data: bytes) -> Reply:
    zone, n = p1 & 0x03, (32 if p1 & 0x80 else 4)
    if p1 & 0x40:  # encrypted writes: not in the skeleton's rule set
        raise CommandError(EXECUTION_ERROR)
    if len(data) != n or p1 & 0x3C:
        raise CommandError(PARSE_ERROR)
    if zone == 0:
        if chip.config_locked:
            raise CommandError(EXECUTION_ERROR)
        buf, off = address(chip, zone, addr, n)
        if n == 4 and off < 16:
            raise CommandError(EXECUTION_ERROR)  # SN and RevNum are read-only
        for i, b in enumerate(data):
            pos = off + i
            if pos < 16 or 84 <= pos <= 87:  # read-only / UpdateExtra / Lock bytes
                continue
            buf[pos] = b
        return None, True
    if zone == 1:
        if not chip.config_locked or chip.data_locked:
            raise CommandError(EXECUTION_ERROR)
        buf, off = address(chip, zone, addr, n)
        buf[off : off + n] = data
        return None, True
    if zone == 2:
        if not chip.config_locked:
            raise CommandError(EXECUTION_ERROR)
        slot = (addr >> 3) & 0x0F
        if chip.is_private(slot):
            raise CommandError(EXECUTION_ERROR)  # private keys only via GenKey
        if chip.data_locked:
            write_cfg = (chip.slot_config(slot) >> 12) & 0x0F
            if write_cfg != 0 or chip.slot_locked(slot):  # only "Always" in the skeleton
                raise CommandError(EXECUTION_ERROR)
        buf, off = address(chip, zone, addr, n)
        if off >= len(buf):
            if len(buf) == 72 and n == 32 and off == 96:
                return None, False  # atcacert's trailing block past a 72-byte slot
            raise CommandError(PARSE_ERROR)
        end = min(off + n, len(buf))
        buf[off:end] = data[: end - off]
        return None, True
    raise CommandError(PARSE_ERROR)


def update_extra(chip: EmulatedChip, mode: int, p2: int, data: bytes) -> Reply:
    if data or mode not in (0, 1) or p2 > 0xFF:
        raise CommandError(PARSE_ERROR)
    pos = 84 + mode
    if chip.config[pos] != 0 and p2 != chip.config[pos]:
        raise CommandError(EXECUTION_ERROR)  # may be set once only
    chip.config[pos] = p2
    return None, True


def lock(chip: EmulatedChip, mode: int, crc: int, data: bytes) -> Reply:
    if data:
        raise CommandError(PARSE_ERROR)
    zone, skip_crc = mode & 0x03, bool(mode & 0x80)
    if zone == 0:
        if chip.config_locked:
            raise CommandError(EXECUTION_ERROR)
        summary = bytes(chip.config)
        target = 87
    elif zone == 1:
        if not chip.config_locked or chip.data_locked:
            raise CommandError(EXECUTION_ERROR)
        summary = b"".join(bytes(s) for s in chip.slots) + bytes(chip.otp)
        target = 86
    elif zone == 2:  # one slot
        slot = (mode >> 2) & 0x0F
        if not chip.data_locked or chip.slot_locked(slot) or not chip.key_config(slot) & 0x20:
            raise CommandError(EXECUTION_ERROR)
        summary = bytes(chip.slots[slot])
        target = -1
    else:
        raise CommandError(PARSE_ERROR)
    if not skip_crc and int.from_bytes(crc16(summary), "little") != crc:
        raise CommandError(EXECUTION_ERROR)
    if target >= 0:
        chip.config[target] = LOCKED
    else:
        mask = int.from_bytes(chip.config[88:90], "little") & ~(1 << ((mode >> 2) & 0x0F))
        chip.config[88:90] = mask.to_bytes(2, "little")
    return None, True
