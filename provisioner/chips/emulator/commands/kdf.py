"""KDF (0x56): the 608's key derivation for TLS (PRF for 1.2, HKDF for 1.3) and AES.

Param1 (mode) = algorithm (bits 5-6: 0x00 PRF, 0x20 AES, 0x40 HKDF) | target (bits 2-4:
TempKey, upper TempKey, slot, alternate key buffer, output in clear, output encrypted) |
source (bits 0-1: TempKey, upper TempKey, slot, alternate key buffer). Param2 = source slot
(LSB) and target slot (MSB). Data = 4 bytes of details (little-endian) then the message:
16 bytes for AES; for PRF and HKDF details byte 3 is the message length (cryptoauthlib
lib/calib/calib_kdf.c ``calib_kdf``, lib/calib/calib_command.c ``atKDF``, the KDF_* masks in
lib/calib/calib_command.h).

- PRF: the TLS 1.2 PRF P_SHA256(key, message) (the host passes label || seed as the
  message); key length 16/32/48/64 (details bits 0-1), output 32 or 64 bytes (bit 8);
  AEAD mode 1 (bits 9-10 = 1) sends the first 32 bytes to the target and returns the other
  32. Microchip's known answer (test/api_atcab/atca_tests_kdf.c, kdf_prf_output) is
  exactly P_SHA256.
- AES: AES-128-ECB of the 16-byte message under the 16-byte block (details bits 0-1) of
  the source key; the result is 32 bytes, the ciphertext then 16 zero bytes (the same
  test's kdf_aes_output). Needs AES_Enable (config byte 13 bit 0) and ChipOptions
  KDF-AES (bit 2).
- HKDF: one HMAC-SHA256(source key, message): HKDF-Extract with the salt as the key, or one
  HKDF-Expand step when the host appends the 0x01 counter to the info; details bit 2 makes
  the key 32 zero bytes (KDF_DETAILS_HKDF_ZERO_KEY). The message (its length always in
  details byte 3) comes from the input; from the input checked by the "IV" function (the
  input must carry KdfIvStr, config bytes 73-74, at KdfIvLoc, byte 72; KdfIvLoc 0xF0 turns
  the function off); from the start of TempKey; or from the start of the slot in details
  bits 8-11. A real 608's answers for all four (rust-cryptoauthlib's hardware test
  unit_tests/hw_backend_kdf.rs, kdf_hkdf_proper_data) are exactly that HMAC.
- Targets: TempKey (64 bytes for a 64-byte PRF), upper TempKey, a slot (written, the
  change persists), the alternate key buffer, the response in clear (ChipOptions KDFProt,
  bits 10-11, must be 0), or encrypted with the IO protection key (ChipOptions bit 1, key
  slot in bits 12-15; KDFProt 2 forbids any output): data XOR SHA-256(IO key || 16 bytes of
  the 32-byte OutNonce) per 32-byte block, the nonce appended (cryptoauthlib's host inverse
  is ``atcah_io_decrypt``).

Refused: algorithm 0x60, targets 0x18/0x1C, a slot above 15, a key or message longer than
its location holds, AEAD mode 1 without a 64-byte result or with an output target (parse
error); a slot source, message or target before the config and data locks, an ECC
private-key slot, a target slot that is locked by SlotLocked or whose KeyType is neither AES
nor SHA, a key whose KeyConfig PersistentDisable (bit 12) is set while the persistent latch
is clear, an empty TempKey or alternate key buffer, the IV function off or its string
missing, a clear output under KDFProt 1 or 2, an encrypted one under KDFProt 2 or without
IO protection (execution error). Not modelled: the target slot's WriteConfig and PubInfo
(rust-cryptoauthlib asks the host for "Always" and PubInfo; Microchip's own KDF test writes
to such a slot), ReqAuth/ReqRandom and LimitedUse of a source slot, the TempKey flags a KDF
result carries (SourceFlag is set to "input").
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from provisioner.chips.emulator.ioprot import io_encrypt
from provisioner.chips.emulator.wire import (
    EXECUTION_ERROR,
    OP_KDF,
    PARSE_ERROR,
    CommandError,
    Reply,
)

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip

# Mode (param1) fields, lib/calib/calib_command.h KDF_MODE_*.
SOURCE_TEMPKEY, SOURCE_TEMPKEY_UP, SOURCE_SLOT, SOURCE_ALTKEYBUF = 0x00, 0x01, 0x02, 0x03
TARGET_TEMPKEY, TARGET_TEMPKEY_UP, TARGET_SLOT, TARGET_ALTKEYBUF = 0x00, 0x04, 0x08, 0x0C
TARGET_OUTPUT, TARGET_OUTPUT_ENC = 0x10, 0x14
ALG_PRF, ALG_AES, ALG_HKDF = 0x00, 0x20, 0x40

HKDF_MSG_SLOT, HKDF_MSG_TEMPKEY, HKDF_MSG_INPUT, HKDF_MSG_IV = 0x00, 0x01, 0x02, 0x03
HKDF_ZERO_KEY = 0x04
MAX_MESSAGE = 128  # calib_kdf: "Input value from system (up to 128 bytes)"

# Config bytes and ChipOptions bits, lib/calib/calib_device.h.
AES_ENABLE_BYTE = 13
KDF_IV_LOC, KDF_IV_STR = 72, slice(73, 75)
KDF_IV_DISABLED = 0xF0  # KdfIvLoc value that turns the IV function off
KEY_TYPES_FOR_TARGET = (6, 7)  # AES, SHA/text
CHIP_OPT_IO_PROT_EN = 0x0002
CHIP_OPT_KDF_AES_EN = 0x0004
KEYCONFIG_PERSISTENT_DISABLE = 0x1000


def usable_key_slot(chip: EmulatedChip, slot: int) -> None:
    """Refuse a slot as a symmetric key source as silicon does: slots exist 0-15 (parse
    error); the zones must be locked, the slot must not hold an ECC private key, and a key
    marked PersistentDisable is usable only while the persistent latch is set (execution
    error; Microchip's volatile_key_permit test expects exactly that status)."""
    if not 0 <= slot <= 15:
        raise CommandError(PARSE_ERROR)
    if not (chip.config_locked and chip.data_locked) or chip.is_private(slot):
        raise CommandError(EXECUTION_ERROR)
    if chip.key_config(slot) & KEYCONFIG_PERSISTENT_DISABLE and not chip.latch:
        raise CommandError(EXECUTION_ERROR)


def _source(chip: EmulatedChip, where: int, slot: int, size: int) -> bytes:
    """``size`` bytes of the source key. Asking more than the location holds is a parse
    error; an empty register is an execution error."""
    if where in (SOURCE_TEMPKEY, SOURCE_TEMPKEY_UP):
        start = 32 if where == SOURCE_TEMPKEY_UP else 0
        if start + size > 64:
            raise CommandError(PARSE_ERROR)
        if chip.tempkey is None or len(chip.tempkey.value) < start + size:
            raise CommandError(EXECUTION_ERROR)
        return chip.tempkey.value[start : start + size]
    if where == SOURCE_SLOT:
        usable_key_slot(chip, slot)
        if size > len(chip.slots[slot]):
            raise CommandError(PARSE_ERROR)
        return bytes(chip.slots[slot][:size])
    if size > 32:
        raise CommandError(PARSE_ERROR)
    if chip.alt_key is None:
        raise CommandError(EXECUTION_ERROR)
    return chip.alt_key[:size]


def tls12_prf(key: bytes, message: bytes, size: int) -> bytes:
    """P_SHA256 of RFC 5246 section 5: A(i) = HMAC(key, A(i-1)), out = HMAC(key, A(i) || msg)."""
    out, a = b"", message
    while len(out) < size:
        a = hmac.new(key, a, hashlib.sha256).digest()
        out += hmac.new(key, a + message, hashlib.sha256).digest()
    return out[:size]


def _prf(chip: EmulatedChip, mode: int, key_id: int, details: int, msg: bytes) -> bytes:
    key = _source(chip, mode & 0x03, key_id & 0xFF, 16 * ((details & 0x03) + 1))
    return tls12_prf(key, msg, 64 if details & 0x100 else 32)


def _aes(chip: EmulatedChip, mode: int, key_id: int, details: int, msg: bytes) -> bytes:
    if not chip.config[AES_ENABLE_BYTE] & 0x01 or not chip.chip_options & CHIP_OPT_KDF_AES_EN:
        raise CommandError(EXECUTION_ERROR)
    block = details & 0x03
    key = _source(chip, mode & 0x03, key_id & 0xFF, 16 * (block + 1))[16 * block :]
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(msg) + enc.finalize() + bytes(16)


def _hkdf_message(chip: EmulatedChip, where: int, details: int, msg: bytes) -> bytes:
    """The HKDF message: the input; the input checked for KdfIvStr at KdfIvLoc (the IV
    function, off when KdfIvLoc is 0xF0); or, with its length still in details byte 3
    (the input bytes the library sends along are ignored), the start of TempKey or of the
    slot in details bits 8-11."""
    if where == HKDF_MSG_INPUT:
        return msg
    if where == HKDF_MSG_IV:
        loc = chip.config[KDF_IV_LOC]
        if loc == KDF_IV_DISABLED or msg[loc : loc + 2] != bytes(chip.config[KDF_IV_STR]):
            raise CommandError(EXECUTION_ERROR)
        return msg
    size = len(msg)
    if where == HKDF_MSG_TEMPKEY:
        if size > 64:
            raise CommandError(PARSE_ERROR)
        if chip.tempkey is None or len(chip.tempkey.value) < size:
            raise CommandError(EXECUTION_ERROR)
        return chip.tempkey.value[:size]
    slot = (details >> 8) & 0x0F
    usable_key_slot(chip, slot)
    if size > len(chip.slots[slot]):
        raise CommandError(PARSE_ERROR)
    return bytes(chip.slots[slot][:size])


def _hkdf(chip: EmulatedChip, mode: int, key_id: int, details: int, msg: bytes) -> bytes:
    message = _hkdf_message(chip, details & 0x03, details, msg)
    zero_key = details & HKDF_ZERO_KEY
    key = bytes(32) if zero_key else _source(chip, mode & 0x03, key_id & 0xFF, 32)
    return hmac.new(key, message, hashlib.sha256).digest()


def _to_target(chip: EmulatedChip, target: int, slot: int, value: bytes) -> bool:
    """Store ``value`` in an internal target; True when a slot (persistent) changed."""
    if target == TARGET_TEMPKEY:
        chip.set_tempkey(value, source_input=True)
        return False
    if target in (TARGET_TEMPKEY_UP, TARGET_ALTKEYBUF) and len(value) != 32:
        raise CommandError(PARSE_ERROR)
    if target == TARGET_TEMPKEY_UP:
        lower = chip.tempkey.value[:32] if chip.tempkey is not None else bytes(32)
        chip.set_tempkey(lower + value, source_input=True)
        return False
    if target == TARGET_ALTKEYBUF:
        chip.alt_key = value
        return False
    if not 0 <= slot <= 15:
        raise CommandError(PARSE_ERROR)
    if not (chip.config_locked and chip.data_locked) or chip.is_private(slot):
        raise CommandError(EXECUTION_ERROR)
    if (chip.key_config(slot) >> 2) & 0x07 not in KEY_TYPES_FOR_TARGET:
        raise CommandError(EXECUTION_ERROR)
    if chip.slot_locked(slot) or len(value) > len(chip.slots[slot]):
        raise CommandError(EXECUTION_ERROR)
    chip.slots[slot][: len(value)] = value
    return True


def _output(chip: EmulatedChip, target: int, value: bytes) -> bytes:
    """The response for an output target: in clear, or IO-protected with its OutNonce."""
    protection = (chip.chip_options >> 10) & 0x03  # KDFProt
    if target == TARGET_OUTPUT:
        if protection != 0:
            raise CommandError(EXECUTION_ERROR)
        return value
    if protection == 2 or not chip.chip_options & CHIP_OPT_IO_PROT_EN:
        raise CommandError(EXECUTION_ERROR)
    out_nonce = chip.random32()
    io_key = chip.slot_key((chip.chip_options >> 12) & 0x0F)
    return io_encrypt(io_key, out_nonce, value) + out_nonce


def kdf(chip: EmulatedChip, mode: int, key_id: int, data: bytes) -> Reply:
    alg, target = mode & 0x60, mode & 0x1C
    if mode & 0x80 or alg == 0x60 or target > TARGET_OUTPUT_ENC or len(data) < 4:
        raise CommandError(PARSE_ERROR)
    details = int.from_bytes(data[:4], "little")
    msg = data[4:]
    if alg == ALG_AES:
        if len(msg) != 16:
            raise CommandError(PARSE_ERROR)
    elif len(msg) != data[3] or len(msg) > MAX_MESSAGE:
        raise CommandError(PARSE_ERROR)
    aead = (details >> 9) & 0x03 if alg == ALG_PRF else 0
    if aead > 1 or (aead == 1 and (not details & 0x100 or target >= TARGET_OUTPUT)):
        raise CommandError(PARSE_ERROR)  # AEAD mode 1 splits a 64-byte result in two
    derive = {ALG_PRF: _prf, ALG_AES: _aes, ALG_HKDF: _hkdf}[alg]
    result = derive(chip, mode, key_id, details, msg)
    if aead == 1:
        changed = _to_target(chip, target, key_id >> 8, result[:32])
        return result[32:], changed
    if target >= TARGET_OUTPUT:
        return _output(chip, target, result), False
    return None, _to_target(chip, target, key_id >> 8, result)


HANDLERS = {OP_KDF: kdf}
