"""Chips as they arrive from a tray that is not factory-fresh.

A line meets chips that were provisioned somewhere else: config and data zones locked, a
key in the key slot, a compressed certificate in the certificate slot, that slot locked.
:func:`provisioned_elsewhere` makes one by sending the chip the same command packets a
foreign line would have sent (so every rule of the emulator applies), not by editing
its zones.
"""

from __future__ import annotations

import os

from provisioner.chips.emulator.chip import OK, EmulatedChip, command_packet

_WRITE, _LOCK, _GENKEY = 0x12, 0x17, 0x40
_ZONE_CONFIG, _ZONE_DATA, _BLOCK = 0x00, 0x02, 0x80
_LOCK_CONFIG, _LOCK_DATA, _LOCK_SLOT, _SKIP_CRC = 0x00, 0x01, 0x02, 0x80


def _send(chip: EmulatedChip, opcode: int, p1: int, p2: int, data: bytes = b"") -> bytes:
    response, _ = chip.execute(command_packet(opcode, p1, p2, data))
    if len(response) == 4 and response[1] != OK:
        raise RuntimeError(f"opcode 0x{opcode:02X} refused with status 0x{response[1]:02X}")
    return response


def provisioned_elsewhere(config: bytes, key_slot: int = 0, cert_slot: int = 10) -> EmulatedChip:
    """A chip carrying ``config`` (bytes 16-127 applied), locked, keyed, with a (foreign)
    compressed certificate locked in ``cert_slot``."""
    chip = EmulatedChip.blank()
    for block in range(4):  # 32-byte writes; the chip keeps bytes 0-15 and the lock bytes
        _send(chip, _WRITE, _ZONE_CONFIG | _BLOCK, block << 3, config[32 * block : 32 * block + 32])
    _send(chip, _LOCK, _LOCK_CONFIG | _SKIP_CRC, 0)
    _send(chip, _GENKEY, 0x04, key_slot)
    _send(chip, _LOCK, _LOCK_DATA | _SKIP_CRC, 0)
    record = os.urandom(64) + bytes.fromhex("2a0c0e0100120000")  # signature, dates, IDs
    for block in range(3):  # as atcacert writes a 72-byte slot: three whole blocks
        chunk = (record + bytes(24))[32 * block : 32 * block + 32]
        _send(chip, _WRITE, _ZONE_DATA | _BLOCK, (cert_slot << 3) | (block << 8), chunk)
    _send(chip, _LOCK, _LOCK_SLOT | (cert_slot << 2) | _SKIP_CRC, 0)
    return chip
