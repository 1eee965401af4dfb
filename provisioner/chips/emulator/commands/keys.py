"""GenKey (0x40), Sign (0x41) and Verify (0x45): the P-256 key commands.

Implemented:
- GenKey create (0x04) and public key (0x00) of a slot; the ephemeral key in TempKey
  (create with KeyID 0xFFFF, the key of an ECDH handshake, kept in ``chip.volatile``);
  the PubKey digest modes, which overwrite TempKey with SHA-256 over 128 bytes
  (TempKey, opcode, mode and KeyID or the 3 bytes of OtherData, SN[8], SN[0:1], 25 zeros,
  X||Y) and set GenKeyData and KeyID (cryptoauthlib ``atcah_gen_key_msg``): 0x08 with
  create or public (public key returned) and 0x10 over the public key stored in a
  public-key slot (8-15; status only).
- Sign external (message from TempKey or the message-digest buffer) and internal (0x00,
  0x40 with the full serial; message built from TempKey and the config as cryptoauthlib's
  ``atcah_sign_internal_msg`` / ``atcah_config_to_sign_internal`` build it; TempKey must
  come from GenDig or GenKey, the slot must allow internal signatures: SlotConfig bit 1).
- Verify external and stored (with the public key of a P-256 public-key slot).

Refused as silicon refuses an unsupported request (parse error), never answered with a
fake success: Sign internal for Verify(Invalidate) (mode bit 0), Verify
validate/invalidate/validate-external and MAC output, GenKey MAC mode (0x20), GenKey
KeyID 0xFFFF in any mode but create. Refused with an execution error: stored keys whose
KeyConfig.PubInfo requires validation; Sign external from a TempKey that holds the
ephemeral private key.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from provisioner.chips.emulator.tempkey import TempKey
from provisioner.chips.emulator.wire import (
    EXECUTION_ERROR,
    OP_GENKEY,
    OP_SIGN,
    OP_VERIFY,
    PARSE_ERROR,
    VERIFY_FAIL,
    CommandError,
    Reply,
)

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip

TEMPKEY_ID = 0xFFFF  # GenKey / ECDH KeyID meaning "the private key in TempKey"
EPHEMERAL = "ephemeral_key"  # chip.volatile: (the TempKey holding it, the private key)

GENKEY_CREATE, GENKEY_DIGEST, GENKEY_PUBKEY_DIGEST = 0x04, 0x08, 0x10
SIGN_INVALIDATE, SIGN_MSG_DIGEST_BUF, SIGN_INCLUDE_SN, SIGN_EXTERNAL = 0x01, 0x20, 0x40, 0x80


def public_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    """X||Y (64 bytes) of ``key``'s public key."""
    pub = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return pub[1:]


def new_private_key() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A fresh P-256 key from the RNG and its 32-byte big-endian scalar."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key, key.private_numbers().private_value.to_bytes(32, "big")


# --- GenKey ------------------------------------------------------------------------


def genkey(chip: EmulatedChip, mode: int, slot: int, data: bytes) -> Reply:
    if mode & ~0x1C:  # MAC mode (0x20) and undefined bits
        raise CommandError(PARSE_ERROR)
    if mode & GENKEY_PUBKEY_DIGEST:
        return pubkey_digest(chip, mode, slot, data)
    if data:
        raise CommandError(PARSE_ERROR)
    if slot == TEMPKEY_ID:
        return ephemeral_genkey(chip, mode)
    if slot > 15:
        raise CommandError(PARSE_ERROR)
    if not chip.config_locked:
        raise CommandError(EXECUTION_ERROR)
    if not (chip.is_private(slot) and chip.is_p256(slot)):
        raise CommandError(EXECUTION_ERROR)
    if mode & GENKEY_DIGEST:
        require_tempkey(chip)  # checked before anything changes
    changed = False
    if mode & GENKEY_CREATE:
        if chip.data_locked:
            genkey_ok = (chip.slot_config(slot) >> 13) & 1
            if not genkey_ok or chip.slot_locked(slot):
                raise CommandError(EXECUTION_ERROR)
        _, d = new_private_key()
        chip.slots[slot][0:36] = b"\x00" * 4 + d
        chip.key_valid[slot] = True
        changed = True
    public = public_point(chip.private_key(slot))
    if mode & GENKEY_DIGEST:
        key_id = slot.to_bytes(2, "little")
        digest_into_tempkey(chip, bytes([mode]) + key_id, slot, public)
    return public, changed


def ephemeral_genkey(chip: EmulatedChip, mode: int) -> Reply:
    """GenKey create with KeyID 0xFFFF: the private key goes to TempKey (the ephemeral
    key of an ECDH handshake, used by ECDH with source TempKey), the public key out.
    Other modes with KeyID 0xFFFF are not modelled: refused."""
    if mode != GENKEY_CREATE:
        raise CommandError(PARSE_ERROR)
    if not chip.config_locked:
        raise CommandError(EXECUTION_ERROR)
    key, d = new_private_key()
    chip.set_tempkey(d)
    chip.volatile[EPHEMERAL] = (chip.tempkey, key)
    return public_point(key), False


def pubkey_digest(chip: EmulatedChip, mode: int, slot: int, data: bytes) -> Reply:
    """GenKey 0x10: the digest of the public key stored in ``slot`` (a public-key slot,
    so 8-15) with OtherData in place of mode and KeyID; the key is not output."""
    if mode != GENKEY_PUBKEY_DIGEST or len(data) != 3 or slot > 15:
        raise CommandError(PARSE_ERROR)
    if not chip.config_locked:
        raise CommandError(EXECUTION_ERROR)
    require_tempkey(chip)
    if chip.is_private(slot) or not chip.is_p256(slot) or len(chip.slots[slot]) < 72:
        raise CommandError(EXECUTION_ERROR)
    raw = chip.slots[slot]
    digest_into_tempkey(chip, data, slot, bytes(raw[4:36] + raw[40:72]))
    return None, False


def require_tempkey(chip: EmulatedChip) -> TempKey:
    """The digest modes hash the current TempKey: it must be valid."""
    if chip.tempkey is None:
        raise CommandError(EXECUTION_ERROR)
    return chip.tempkey


def digest_into_tempkey(chip: EmulatedChip, param: bytes, slot: int, public: bytes) -> None:
    """TempKey := SHA-256(TempKey[0:32] || 0x40 || param(3) || SN[8] || SN[0:1] ||
    25 zeros || X||Y); GenKeyData set, GenDigData cleared, KeyID = slot; SourceFlag and
    NoMacFlag kept (as ``atcah_gen_key_msg`` models them)."""
    old = require_tempkey(chip)
    sn = chip.serial
    msg = old.value[:32] + bytes([OP_GENKEY]) + param + sn[8:9] + sn[0:2] + bytes(25) + public
    assert len(msg) == 128
    chip.set_tempkey(
        hashlib.sha256(msg).digest(),
        source_input=old.source_input,
        no_mac=old.no_mac,
        gen_key=True,
        key_id=slot & 0x0F,
    )


# --- Sign ----------------------------------------------------------------------------


def sign(chip: EmulatedChip, mode: int, slot: int, data: bytes) -> Reply:
    if data or slot > 15 or mode & 0x1E:
        raise CommandError(PARSE_ERROR)
    if mode & SIGN_INVALIDATE:  # for Verify(Invalidate): not modelled, refused
        raise CommandError(PARSE_ERROR)
    if not chip.config_locked or not chip.is_private(slot) or not chip.is_p256(slot):
        raise CommandError(EXECUTION_ERROR)
    if mode & SIGN_EXTERNAL:
        if not chip.slot_config(slot) & 0x01:  # ReadKey bit 0: external signatures allowed
            raise CommandError(EXECUTION_ERROR)
        msg = message_source(chip, mode)
        if msg is None or len(msg) != 32 or holds_ephemeral_key(chip, mode):
            raise CommandError(EXECUTION_ERROR)
    else:
        if not chip.slot_config(slot) & 0x02:  # ReadKey bit 1: internal signatures allowed
            raise CommandError(EXECUTION_ERROR)
        msg = hashlib.sha256(internal_message(chip, mode, slot)).digest()
    key = chip.private_key(slot)
    der = key.sign(msg, ec.ECDSA(Prehashed(hashes.SHA256())))
    r, s = decode_dss_signature(der)
    consume_message(chip)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big"), False


def internal_message(chip: EmulatedChip, mode: int, slot: int) -> bytes:
    """The 55 bytes Sign internal signs (datasheet "Sign - Internal Message"; cryptoauthlib
    ``atcah_sign_internal_msg``): TempKey, opcode, mode, KeyID, SlotConfig and KeyConfig
    of TempKey's KeyID, the TempKey flags, two zeros (UseFlag/UpdateCount of the 108A),
    SN[8], SN[4:7] (mode 0x40, else zeros), SN[0:1], SN[2:3] (0x40, else zeros), that
    slot's SlotLocked bit (1 = unlocked), PubKey valid (0: validation not modelled), 0.
    TempKey must be valid and made by GenDig or GenKey."""
    tk = chip.tempkey
    if tk is None or not (tk.gen_dig or tk.gen_key):
        raise CommandError(EXECUTION_ERROR)
    sn, kid = chip.serial, tk.key_id
    full = bool(mode & SIGN_INCLUDE_SN)
    return b"".join(
        (
            tk.value[:32],
            bytes([OP_SIGN, mode]),
            slot.to_bytes(2, "little"),
            chip.slot_config(kid).to_bytes(2, "little"),
            chip.key_config(kid).to_bytes(2, "little"),
            tk.state_bytes()[0:1],
            bytes(2),
            sn[8:9],
            sn[4:8] if full else bytes(4),
            sn[0:2],
            sn[2:4] if full else bytes(2),
            bytes([0 if chip.slot_locked(kid) else 1, 0, 0]),
        )
    )


def message_source(chip: EmulatedChip, mode: int) -> bytes | None:
    """The message Sign external / Verify act on: the message-digest buffer (mode bit 5)
    or TempKey; None if that register is not valid."""
    if mode & SIGN_MSG_DIGEST_BUF:
        return chip.msg_digest
    return chip.tempkey.value if chip.tempkey is not None else None


def holds_ephemeral_key(chip: EmulatedChip, mode: int) -> bool:
    """True when the message would be TempKey and TempKey holds GenKey's ephemeral
    private key: that key never leaves the chip as a "message"."""
    held = chip.volatile.get(EPHEMERAL)
    return not mode & SIGN_MSG_DIGEST_BUF and held is not None and held[0] is chip.tempkey


def consume_message(chip: EmulatedChip) -> None:
    """Sign consumes its message source (TempKey/digest buffer are invalidated)."""
    chip.tempkey = None
    chip.msg_digest = None
    chip.volatile.pop(EPHEMERAL, None)


# --- Verify --------------------------------------------------------------------------


def public_key_in(chip: EmulatedChip, slot: int) -> bytes:
    """X||Y of the public key stored (padded, 72 bytes) in a P-256 public-key slot.
    A slot whose KeyConfig.PubInfo (bit 1) says its key must first be validated is
    refused: Verify validate/invalidate is not modelled, so no key is ever valid."""
    if slot > 15:
        raise CommandError(PARSE_ERROR)
    if chip.is_private(slot) or not chip.is_p256(slot) or len(chip.slots[slot]) < 72:
        raise CommandError(EXECUTION_ERROR)
    if chip.key_config(slot) & 0x02:
        raise CommandError(EXECUTION_ERROR)
    raw = chip.slots[slot]
    return bytes(raw[4:36] + raw[40:72])


def verify(chip: EmulatedChip, mode: int, p2: int, data: bytes) -> Reply:
    kind = mode & 0x07
    if mode & ~0x27:  # MAC output and other flags: not implemented, refused
        raise CommandError(PARSE_ERROR)
    if kind == 0x02:  # external: signature || public key, p2 = key type (P-256)
        if p2 != 0x0004 or len(data) != 128:
            raise CommandError(PARSE_ERROR)
        sig, pub = data[:64], data[64:]
    elif kind == 0x00:  # stored: the public key sits in slot p2
        if len(data) != 64:
            raise CommandError(PARSE_ERROR)
        if not chip.config_locked:
            raise CommandError(EXECUTION_ERROR)
        sig, pub = data, public_key_in(chip, p2)
    else:  # validate / invalidate: not implemented, refused
        raise CommandError(PARSE_ERROR)
    msg = message_source(chip, mode)
    if msg is None:
        raise CommandError(EXECUTION_ERROR)
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + pub)
    except ValueError:
        raise CommandError(EXECUTION_ERROR) from None  # not a point on the curve
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, msg, ec.ECDSA(Prehashed(hashes.SHA256())))
    except Exception:
        raise CommandError(VERIFY_FAIL) from None
    return None, False


HANDLERS = {OP_GENKEY: genkey, OP_SIGN: sign, OP_VERIFY: verify}
