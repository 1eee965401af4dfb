"""GenKey (0x40), Sign (0x41) and Verify (0x45): the P-256 key commands.

Implemented: GenKey create and public key; Sign external (message from TempKey or the
message-digest buffer); Verify external and stored (with the public key of a P-256
public-key slot).

Refused as silicon refuses an unsupported request (parse error), never answered with a
fake success: internal Sign, Verify validate/invalidate/validate-external and MAC output,
GenKey digest mode. Refused with an execution error: stored keys whose KeyConfig.PubInfo
requires validation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

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


def public_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    """X||Y (64 bytes) of ``key``'s public key."""
    pub = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return pub[1:]


def genkey(chip: EmulatedChip, mode: int, slot: int, data: bytes) -> Reply:
    if data or slot > 15 or mode & ~0x1C:
        raise CommandError(PARSE_ERROR)
    if mode & 0x18:  # digest modes: not implemented, refused
        raise CommandError(PARSE_ERROR)
    if not chip.config_locked:
        raise CommandError(EXECUTION_ERROR)
    if not (chip.is_private(slot) and chip.is_p256(slot)):
        raise CommandError(EXECUTION_ERROR)
    changed = False
    if mode & 0x04:  # create
        if chip.data_locked:
            genkey_ok = (chip.slot_config(slot) >> 13) & 1
            if not genkey_ok or chip.slot_locked(slot):
                raise CommandError(EXECUTION_ERROR)
        key = ec.generate_private_key(ec.SECP256R1())
        d = key.private_numbers().private_value.to_bytes(32, "big")
        chip.slots[slot][0:36] = b"\x00" * 4 + d
        chip.key_valid[slot] = True
        changed = True
    return public_point(chip.private_key(slot)), changed


def sign(chip: EmulatedChip, mode: int, slot: int, data: bytes) -> Reply:
    if data or slot > 15:
        raise CommandError(PARSE_ERROR)
    if not mode & 0x80:  # internal-message signing: not implemented, refused
        raise CommandError(PARSE_ERROR)
    if not chip.config_locked or not chip.is_private(slot):
        raise CommandError(EXECUTION_ERROR)
    if not chip.slot_config(slot) & 0x01:  # ReadKey bit0: external signatures allowed
        raise CommandError(EXECUTION_ERROR)
    msg = message_source(chip, mode)
    if msg is None or len(msg) != 32:
        raise CommandError(EXECUTION_ERROR)
    key = chip.private_key(slot)
    der = key.sign(msg, ec.ECDSA(Prehashed(hashes.SHA256())))
    r, s = decode_dss_signature(der)
    consume_message(chip)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big"), False


def message_source(chip: EmulatedChip, mode: int) -> bytes | None:
    """The message Sign external / Verify act on: the message-digest buffer (mode bit 5)
    or TempKey; None if that register is not valid."""
    if mode & 0x20:
        return chip.msg_digest
    return chip.tempkey.value if chip.tempkey is not None else None


def consume_message(chip: EmulatedChip) -> None:
    """Sign consumes its message source (TempKey/digest buffer are invalidated)."""
    chip.tempkey = None
    chip.msg_digest = None


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
