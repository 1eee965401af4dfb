"""Info (0x30): revision, KeyValid, device state, persistent latch.

Mode 3 (GPIO) is refused with a parse error: an I2C part has no GPIO pin. Setting or
clearing the persistent latch is refused with an execution error (the authorization that
lets silicon do it is not modelled).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from provisioner.chips.emulator.wire import EXECUTION_ERROR, PARSE_ERROR, CommandError, Reply

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip


def info(chip: EmulatedChip, mode: int, p2: int, data: bytes) -> Reply:
    if data:
        raise CommandError(PARSE_ERROR)
    if mode == 0x00:
        return bytes(chip.config[4:8]), False
    if mode == 0x01:  # KeyValid for slot p2
        if p2 > 15:
            raise CommandError(PARSE_ERROR)
        return bytes([int(chip.key_valid[p2]), 0, 0, 0]), False
    if mode == 0x02:  # device state
        if p2:
            raise CommandError(PARSE_ERROR)
        return device_state(chip), False
    if mode == 0x04:  # persistent latch (VolKeyPermit): read; setting is refused
        if p2 & ~0x03:
            raise CommandError(PARSE_ERROR)
        if p2 & 0x02:  # set/clear: needs an authorization this emulator does not model
            raise CommandError(EXECUTION_ERROR)
        return bytes([int(chip.latch), 0, 0, 0]), False
    raise CommandError(PARSE_ERROR)  # 0x03 GPIO: no GPIO pin on an I2C part; refused


def device_state(chip: EmulatedChip) -> bytes:
    """Info(State), datasheet "Info - Device State": byte 0 = TempKey.NoMacFlag (7),
    GenKeyData (6), GenDigData (5), SourceFlag (4), KeyID (3:0); byte 1 = TempKey.Valid
    (7), AuthComplete.KeyID (6:3), AuthComplete.Valid (2); bytes 2-3 zero. SourceFlag
    follows cryptoauthlib's model (atca_host.h: 0 = random nonce, 1 = input)."""
    if chip.tempkey is None:
        return bytes(4)
    return chip.tempkey.state_bytes() + bytes(2)
