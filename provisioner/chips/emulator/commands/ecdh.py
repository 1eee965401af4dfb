"""ECDH (0x43): the P-256 shared secret (the X coordinate of d·Q) of a private key on the
chip and a public key X||Y sent in the data.

Mode bits (cryptoauthlib calib_command.h ``ECDH_MODE_*``; datasheet "ECDH Command"):
bit 0 source (0 = the slot in KeyID, 1 = the ephemeral key GenKey put in TempKey),
bit 1 output encryption (buffer output only), bits 2-3 where the secret goes:
- 0x00 compatibility (the 508A's behaviour, slot source only): SlotConfig bit 3 of the key
  slot (ReadKey bit 3) set writes it to slot KeyID|1 (status only; cryptoauthlib's
  ``calib_ecdh_enc`` then reads slot KeyID|1 encrypted), clear returns it in the output
  buffer;
- 0x04 a slot: KeyID|1 for the slot source, KeyID for the TempKey source (status only);
- 0x08 TempKey (status only; SourceFlag = input);
- 0x0C the output buffer: 32 bytes in clear, or encrypted with the IO protection key
  (ChipOptions bit 1 enables it, bits 12-15 name its slot) followed by the 32-byte
  OutNonce (``ioprot.io_encrypt``; the host inverts it with ``atcah_io_decrypt``).
ChipOptions.ECDHProt (bits 8-9): 0 the mode decides; 1 buffer output is always encrypted;
2 and 3 buffer output refused (the secret may only stay in the chip).
The key slot must be a P-256 private key (KeyConfig) with ECDH allowed (SlotConfig bit 2,
ReadKey bit 2); the TempKey source needs TempKey to still hold GenKey's ephemeral key and
invalidates it (TempKey is valid again only when the secret goes back into it).

Refused (parse error, never a fake success): undefined mode bits, the encryption bit with
an output that is not the buffer, the compatibility mode with the TempKey source. Refused
with an execution error: config not locked, a key slot without ECDH permission or key,
an odd key slot writing to KeyID|1 (its own slot), a locked target slot, encryption
without an enabled IO protection key, a public key that is not on the curve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.chips.emulator.commands.keys import EPHEMERAL
from provisioner.chips.emulator.ioprot import io_encrypt
from provisioner.chips.emulator.wire import (
    EXECUTION_ERROR,
    OP_ECDH,
    PARSE_ERROR,
    CommandError,
    Reply,
)

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip

SOURCE_TEMPKEY, OUTPUT_ENC = 0x01, 0x02
COPY_COMPATIBLE, COPY_SLOT, COPY_TEMPKEY, COPY_BUFFER = 0x00, 0x04, 0x08, 0x0C


def ecdh(chip: EmulatedChip, mode: int, key_id: int, data: bytes) -> Reply:
    copy = mode & 0x0C
    from_tempkey = bool(mode & SOURCE_TEMPKEY)
    if mode & ~0x0F or len(data) != 64:
        raise CommandError(PARSE_ERROR)
    if from_tempkey and copy == COPY_COMPATIBLE:
        raise CommandError(PARSE_ERROR)
    if not from_tempkey and key_id > 15:
        raise CommandError(PARSE_ERROR)
    if not chip.config_locked:
        raise CommandError(EXECUTION_ERROR)
    if copy == COPY_COMPATIBLE:  # the 508A's choice: the slot's config decides
        copy = COPY_SLOT if chip.slot_config(key_id) & 0x08 else COPY_BUFFER
    elif mode & OUTPUT_ENC and copy != COPY_BUFFER:
        raise CommandError(PARSE_ERROR)  # encryption applies to buffer output only
    target = key_id if from_tempkey else key_id | 1
    if copy == COPY_SLOT:
        check_target(chip, key_id, target, from_tempkey)
    key = tempkey_private_key(chip) if from_tempkey else slot_private_key(chip, key_id)
    peer = peer_public_key(data)
    encrypt = copy == COPY_BUFFER and buffer_encrypted(chip, mode)
    secret = key.exchange(ec.ECDH(), peer)
    if from_tempkey:  # the ephemeral key is used up
        chip.tempkey = None
        chip.volatile.pop(EPHEMERAL, None)
    if copy == COPY_SLOT:
        chip.slots[target][0:32] = secret
        return None, True
    if copy == COPY_TEMPKEY:
        chip.set_tempkey(secret, source_input=True)
        return None, False
    if encrypt:
        out_nonce = chip.random32()
        return io_encrypt(io_protection_key(chip), out_nonce, secret) + out_nonce, False
    return secret, False


def slot_private_key(chip: EmulatedChip, slot: int) -> ec.EllipticCurvePrivateKey:
    """The key slot's private key, if its KeyConfig (P-256 private) and SlotConfig (ECDH
    allowed, bit 2) permit ECDH."""
    if not (chip.is_private(slot) and chip.is_p256(slot)):
        raise CommandError(EXECUTION_ERROR)
    if not chip.slot_config(slot) & 0x04:
        raise CommandError(EXECUTION_ERROR)
    return chip.private_key(slot)  # execution error if no key was ever generated


def tempkey_private_key(chip: EmulatedChip) -> ec.EllipticCurvePrivateKey:
    """GenKey's ephemeral key, if TempKey still holds it (a later Nonce, GenDig, ... or a
    sleep replaces or loses it)."""
    held = chip.volatile.get(EPHEMERAL)
    if held is None or chip.tempkey is None or held[0] is not chip.tempkey:
        raise CommandError(EXECUTION_ERROR)
    key: ec.EllipticCurvePrivateKey = held[1]
    return key


def check_target(chip: EmulatedChip, key_id: int, target: int, from_tempkey: bool) -> None:
    """The slot the secret is written to: KeyID|1 next to a key slot, which must not be
    the key's own slot, or KeyID for the TempKey source; never a locked slot."""
    if target > 15 or (not from_tempkey and target == key_id):
        raise CommandError(EXECUTION_ERROR)
    if chip.slot_locked(target):
        raise CommandError(EXECUTION_ERROR)


def peer_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + data)
    except ValueError:
        raise CommandError(EXECUTION_ERROR) from None  # not a point on the curve


def buffer_encrypted(chip: EmulatedChip, mode: int) -> bool:
    """Whether a secret for the output buffer leaves encrypted: the mode asks for it or
    ChipOptions.ECDHProt = 1 forces it; ECDHProt 2/3 forbid buffer output."""
    prot = (chip.chip_options >> 8) & 0x03
    if prot >= 2:
        raise CommandError(EXECUTION_ERROR)
    encrypt = bool(mode & OUTPUT_ENC) or prot == 1
    if encrypt and not chip.chip_options & 0x02:  # IoProtKeyEnable
        raise CommandError(EXECUTION_ERROR)
    return encrypt


def io_protection_key(chip: EmulatedChip) -> bytes:
    return chip.slot_key((chip.chip_options >> 12) & 0x0F)


HANDLERS = {OP_ECDH: ecdh}
