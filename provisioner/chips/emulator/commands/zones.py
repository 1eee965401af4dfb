"""Read (0x02), Write (0x12), UpdateExtra (0x20) and Lock (0x17): the zones.

Encrypted Read: a 32-byte read of a slot with SlotConfig.IsSecret and EncryptRead answers
the block XOR TempKey, where TempKey must come from GenDig over the slot's ReadKey
(``atcab_read_enc``); TempKey is consumed. Encrypted Write (Write with MAC, Param1 bit 6,
``atcab_write_enc``): after the data lock, for a slot whose WriteConfig has the Encrypt bit
(SlotConfig bit 14, e.g. WriteConfig 0x4): 32 bytes XOR TempKey (GenDig over the slot's
WriteKey, NoMacFlag clear) plus the input MAC of ``atcah_write_auth_mac``; TempKey is
consumed. A data-zone Write of 32 bytes + MAC with Mode 0x82 (bit 6 clear), as the
TrustFLEX/TNGLoRaWAN sheets list it, is taken as the same encrypted write.

Refused with an execution error: after the data lock any clear write to a slot whose
WriteConfig is not "always" (PubInvalid, Never, Encrypt) and 4-byte clear writes to a
secret slot (Microchip's TrustFLEX sheet, "Data Zone - Clear Text Write"); an encrypted
write to any other slot, of 4 bytes, to the config or OTP zone, before the data lock, with
a TempKey not from GenDig over the WriteKey, or with a wrong MAC; a read of a secret slot
without EncryptRead, of 4 bytes of an encrypted one, or without GenDig over its ReadKey.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from provisioner.chips.crc import crc16
from provisioner.chips.emulator.commands.auth import (
    SLOT_ENCRYPT_READ,
    SLOT_IS_SECRET,
    read_key,
    session_key,
    write_key,
    write_mac,
)
from provisioner.chips.emulator.wire import EXECUTION_ERROR, PARSE_ERROR, CommandError, Reply

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip

LOCKED = 0x00
ENCRYPTED = 0x40  # Write Param1 bit 6: input encrypted with TempKey, MAC follows
WRITE_ENCRYPT = 0x4  # WriteConfig (SlotConfig bits 12-15) bit: writes need encryption + MAC


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
    key = b""
    if zone == 2:
        if not chip.data_locked:
            raise CommandError(EXECUTION_ERROR)  # data zone unreadable before lock
        slot = (addr >> 3) & 0x0F
        secret = chip.slot_config(slot) & SLOT_IS_SECRET
        if chip.is_private(slot) or (secret and not chip.slot_config(slot) & SLOT_ENCRYPT_READ):
            raise CommandError(EXECUTION_ERROR)
        if secret:  # encrypted read: 32 bytes only, with the ReadKey's session key
            if n != 32:
                raise CommandError(EXECUTION_ERROR)
            key = session_key(chip, read_key(chip, slot))
    if zone == 1 and not chip.data_locked:
        raise CommandError(EXECUTION_ERROR)
    buf, off = address(chip, zone, addr, n)
    if off + n > len(buf):
        raise CommandError(PARSE_ERROR)
    out = bytes(buf[off : off + n])
    if key:
        chip.tempkey = None  # one session key per encrypted read
        out = bytes(a ^ b for a, b in zip(out, key, strict=True))
    return out, False


def _decrypt_write(chip: EmulatedChip, p1: int, addr: int, data: bytes) -> bytes:
    """The plaintext of an encrypted Write (data zone, 32 bytes, then a 32-byte MAC), after
    the slot's and TempKey's checks; TempKey is consumed either way."""
    zone, n = p1 & 0x03, (32 if p1 & 0x80 else 4)
    if len(data) != n + 32:
        raise CommandError(PARSE_ERROR)
    slot = (addr >> 3) & 0x0F
    if zone != 2 or n != 32 or not chip.data_locked:
        raise CommandError(EXECUTION_ERROR)
    if not (chip.slot_config(slot) >> 12) & WRITE_ENCRYPT or chip.slot_locked(slot):
        raise CommandError(EXECUTION_ERROR)
    if chip.is_private(slot):
        raise CommandError(EXECUTION_ERROR)  # private keys: GenKey / PrivWrite only
    tk = chip.tempkey
    key = session_key(chip, write_key(chip, slot))
    chip.tempkey = None
    if tk is None or tk.no_mac:
        raise CommandError(EXECUTION_ERROR)
    plain = bytes(a ^ b for a, b in zip(data[:32], key, strict=True))
    if write_mac(chip, key, p1, addr, plain) != data[32:]:
        raise CommandError(EXECUTION_ERROR)
    return plain


def write(chip: EmulatedChip, p1: int, addr: int, data: bytes) -> Reply:
    zone, n = p1 & 0x03, (32 if p1 & 0x80 else 4)
    if p1 & 0x3C:
        raise CommandError(PARSE_ERROR)
    if p1 & ENCRYPTED or (zone == 2 and len(data) == n + 32):
        # Microchip's TrustFLEX/TNGLoRaWAN sheets list the encrypted write as Mode 0x82 with
        # data + MAC; the library sends 0xC2. Either way the MAC covers the Mode as sent.
        data = _decrypt_write(chip, p1, addr, data)
        return _store(chip, addr, data)
    if len(data) != n:
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
            if write_cfg != 0 or chip.slot_locked(slot):  # clear writes: "Always" only
                raise CommandError(EXECUTION_ERROR)
            if n == 4 and chip.slot_config(slot) & SLOT_IS_SECRET:
                raise CommandError(EXECUTION_ERROR)  # secret slots: 32-byte writes only
        return _store(chip, addr, data)
    raise CommandError(PARSE_ERROR)


def _store(chip: EmulatedChip, addr: int, data: bytes) -> Reply:
    """Write ``data`` (4 or 32 bytes) into a data slot at the Write address ``addr``."""
    n = len(data)
    buf, off = address(chip, 2, addr, n)
    if off >= len(buf):
        if len(buf) == 72 and n == 32 and off == 96:
            return None, False  # atcacert's trailing block past a 72-byte slot
        raise CommandError(PARSE_ERROR)
    end = min(off + n, len(buf))
    buf[off:end] = data[: end - off]
    return None, True


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
