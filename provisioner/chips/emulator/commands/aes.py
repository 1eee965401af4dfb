"""AES (0x51): AES-128-ECB encrypt / decrypt of one block, and the Galois-field multiply
that GCM's GHASH needs.

Param1 (mode) = operation (bits 0-2: 0 encrypt, 1 decrypt, 3 GFM; bits 3-5 must be 0,
AES_MODE_MASK 0xC7) | key block (bits 6-7: which 16 bytes of the key location are the key).
Param2 = key slot, or 0xFFFF for TempKey (ATCA_TEMPKEY_KEYID); GFM ignores it. Data: the
16-byte block, or for GFM H (16) || input (16). Response: 16 bytes (cryptoauthlib
lib/calib/calib_aes.c ``calib_aes`` / ``calib_aes_gfm``, lib/calib/calib_command.c ``atAES``,
AES_* in lib/calib/calib_command.h). GFM returns input * H in GF(2^128) with GCM's bit order
(NIST SP 800-38D, 6.3); cryptoauthlib's GCM (lib/calib/calib_aes_gcm.c) builds GHASH and the
whole of AES-GCM on this command and ECB encrypt.

Refused: the whole command while AES_Enable (config byte 13 bit 0) is clear, a slot key
before the config and data locks, a slot whose KeyConfig KeyType is not AES (6), a key
marked PersistentDisable while the persistent latch is clear, an empty TempKey, a key block
beyond the key location (execution error); operation 2 or 4-7, reserved mode bits, a slot
above 15, a wrong data length (parse error). Not modelled: the key slot's ReqAuth and
LimitedUse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from provisioner.chips.emulator.commands.kdf import AES_ENABLE_BYTE, usable_key_slot
from provisioner.chips.emulator.wire import (
    EXECUTION_ERROR,
    OP_AES,
    PARSE_ERROR,
    CommandError,
    Reply,
)

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip

ENCRYPT, DECRYPT, GFM = 0x00, 0x01, 0x03
TEMPKEY_KEYID = 0xFFFF
KEY_TYPE_AES = 6
GCM_R = 0xE1 << 120  # the reduction constant of GCM's field, bit-reflected


def gf128_multiply(x: bytes, y: bytes) -> bytes:
    """x * y in GF(2^128) as GCM defines it (SP 800-38D algorithm 1: bit 0 is the MSB of
    the first byte)."""
    a, v, z = int.from_bytes(x, "big"), int.from_bytes(y, "big"), 0
    for bit in range(127, -1, -1):
        if (a >> bit) & 1:
            z ^= v
        v = (v >> 1) ^ GCM_R if v & 1 else v >> 1
    return z.to_bytes(16, "big")


def _key(chip: EmulatedChip, key_id: int, block: int) -> bytes:
    """The 16-byte key: block ``block`` of TempKey or of an AES key slot."""
    if key_id == TEMPKEY_KEYID:
        if chip.tempkey is None or len(chip.tempkey.value) < 16 * (block + 1):
            raise CommandError(EXECUTION_ERROR)
        return chip.tempkey.value[16 * block : 16 * (block + 1)]
    usable_key_slot(chip, key_id)
    if (chip.key_config(key_id) >> 2) & 0x07 != KEY_TYPE_AES:
        raise CommandError(EXECUTION_ERROR)
    if 16 * (block + 1) > len(chip.slots[key_id]):
        raise CommandError(EXECUTION_ERROR)
    return bytes(chip.slots[key_id][16 * block : 16 * (block + 1)])


def aes(chip: EmulatedChip, mode: int, key_id: int, data: bytes) -> Reply:
    op = mode & 0x07
    if mode & 0x38 or op not in (ENCRYPT, DECRYPT, GFM):
        raise CommandError(PARSE_ERROR)
    if len(data) != (32 if op == GFM else 16):
        raise CommandError(PARSE_ERROR)
    if not chip.config[AES_ENABLE_BYTE] & 0x01:
        raise CommandError(EXECUTION_ERROR)
    if op == GFM:
        return gf128_multiply(data[16:], data[:16]), False
    cipher = Cipher(algorithms.AES(_key(chip, key_id, mode >> 6)), modes.ECB())
    ctx = cipher.encryptor() if op == ENCRYPT else cipher.decryptor()
    return ctx.update(data) + ctx.finalize(), False


HANDLERS = {OP_AES: aes}
