"""GenDig (0x15), MAC (0x08) and CheckMac (0x28): the symmetric-key commands built on
TempKey, and the session-key rules encrypted Read/Write share (:func:`session_key`,
:func:`write_mac`).

Every digest is the datasheet's SHA-256 message, as cryptoauthlib's host side computes it
(lib/host/atca_host.c: ``atcah_gen_dig``, ``atcah_mac``, ``atcah_check_mac``,
``atcah_write_auth_mac``); the tests hold the chip to those host functions.

Implemented:
- GenDig zones config (block 0-3), OTP (block 0-1), data (slot 0-15; 4 bytes OtherData
  replace opcode/params for a SlotConfig.NoMac key), shared nonce (32 bytes, KeyID bit 15
  = TempKey first), counter (0-1) and key config (slot 0-15). TempKey flags as
  ``atcah_gen_dig`` sets them: data zone -> GenDigData, KeyID, NoMacFlag (sticky); other
  zones -> GenDigData and KeyID cleared.
- MAC, every mode the library builds (mode mask 0x77: TempKey in block 1 and/or 2,
  SourceFlag match, OTP 64/88 bits, full serial); TempKey is invalidated afterwards.
- CheckMac (mode mask 0x27): 0x00 on a match, 0x01 on a mismatch; CheckMac copy (mode
  0x01/0x05, target slot KeyID+1 for an even KeyID, KeyID itself for an odd one, target's
  ReadKey 0) loads TempKey with the target slot as ``atcah_check_mac`` models it.

Refused with an execution error (never a fake success): slot keys before the data lock,
ECC private keys, keys whose KeyConfig.ReqAuth is set (authorization state is not
emulated), a ReqRandom key without a random TempKey, MAC with a NoMac key or a NoMacFlag
TempKey, TempKey invalid or with a SourceFlag that does not match mode bit 2, GenDig of a
NoMac slot without OtherData, GenDig OTP before the data lock. Parse error: unknown mode
bits, KeyID out of range, wrong data length, GenDig transport keys (KeyID > 15 in the data
zone), the 608's unused GenDig zones.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from provisioner.chips.emulator.commands.counter import counter_value
from provisioner.chips.emulator.tempkey import TempKey
from provisioner.chips.emulator.wire import (
    EXECUTION_ERROR,
    OP_CHECKMAC,
    OP_GENDIG,
    OP_MAC,
    OP_WRITE,
    PARSE_ERROR,
    VERIFY_FAIL,
    CommandError,
    Reply,
)

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip

# SlotConfig bits (datasheet "SlotConfig"; cryptoauthlib device.py SlotConfig bitfield)
SLOT_NO_MAC = 0x0010
SLOT_ENCRYPT_READ = 0x0040
SLOT_IS_SECRET = 0x0080
# KeyConfig bits (datasheet "KeyConfig")
KEY_REQ_RANDOM = 0x0040
KEY_REQ_AUTH = 0x0080

ZONE_CONFIG, ZONE_OTP, ZONE_DATA, ZONE_SHARED_NONCE, ZONE_COUNTER, ZONE_KEY_CONFIG = range(6)
USE_TEMPKEY_FIRST = 0x8000  # GenDig shared nonce: TempKey first, OtherData last


def read_key(chip: EmulatedChip, slot: int) -> int:
    """SlotConfig.ReadKey (bits 0-3): the key an encrypted read of ``slot`` uses."""
    return chip.slot_config(slot) & 0x0F


def write_key(chip: EmulatedChip, slot: int) -> int:
    """SlotConfig.WriteKey (bits 8-11): the key an encrypted write of ``slot`` uses."""
    return (chip.slot_config(slot) >> 8) & 0x0F


def slot_secret(chip: EmulatedChip, slot: int) -> bytes:
    """The 32-byte key in ``slot`` for a symmetric command, or refuse as silicon does: the
    data zone must be locked, ECC private keys never serve as SHA keys, and a key needing
    prior authorization (ReqAuth) is refused because that state is not emulated."""
    if not chip.data_locked or chip.is_private(slot):
        raise CommandError(EXECUTION_ERROR)
    if chip.key_config(slot) & KEY_REQ_AUTH:
        raise CommandError(EXECUTION_ERROR)
    return chip.slot_key(slot)


def _tempkey(chip: EmulatedChip, source_bit: int) -> TempKey:
    """TempKey for a MAC/CheckMac message: valid, and its SourceFlag equal to mode bit 2
    (1 = input/fixed, 0 = random); otherwise TempKey is invalidated and the command fails,
    as ``atcah_mac`` models it."""
    tk = chip.tempkey
    if tk is None or tk.source_input != bool(source_bit):
        chip.tempkey = None
        raise CommandError(EXECUTION_ERROR)
    return tk


def _require_random(chip: EmulatedChip, slot: int, tempkey_used: bool) -> None:
    """KeyConfig.ReqRandom: the command must run on a TempKey made from a random nonce."""
    if chip.key_config(slot) & KEY_REQ_RANDOM:
        tk = chip.tempkey
        if not tempkey_used or tk is None or tk.source_input:
            raise CommandError(EXECUTION_ERROR)


def session_key(chip: EmulatedChip, key_slot: int) -> bytes:
    """The session key an encrypted Read/Write of a slot keyed by ``key_slot`` uses:
    TempKey made by GenDig over that slot (GenDigData, KeyID = key_slot). Anything else
    fails with an execution error (cryptoauthlib issue #126: the wrong ReadKey slot in
    ``atcab_read_enc`` answers ATCA_EXECUTION_ERROR)."""
    tk = chip.tempkey
    if tk is None or not tk.gen_dig or tk.key_id != key_slot:
        raise CommandError(EXECUTION_ERROR)
    return tk.value[:32]


def write_mac(chip: EmulatedChip, key: bytes, zone: int, addr: int, plain: bytes) -> bytes:
    """The input MAC of an encrypted Write (``atcah_write_auth_mac``): SHA-256 of TempKey,
    opcode, Param1, Param2 (LE), SN[8], SN[0:1], 25 zeros and the plaintext."""
    sn = chip.serial
    msg = key + bytes([OP_WRITE, zone]) + addr.to_bytes(2, "little")
    msg += bytes([sn[8], sn[0], sn[1]]) + bytes(25) + plain
    return hashlib.sha256(msg).digest()


# --- GenDig --------------------------------------------------------------------------


def _gendig_input(chip: EmulatedChip, zone: int, key_id: int, data: bytes) -> tuple[bytes, bytes]:
    """(first 32 bytes, bytes 36-63 of the message) of a GenDig in ``zone``, after the
    zone's own checks; the opcode/param bytes and the trailing 32 are added by the caller."""
    if zone == ZONE_CONFIG:
        if key_id > 3 or data:
            raise CommandError(PARSE_ERROR)
        return bytes(chip.config[32 * key_id : 32 * key_id + 32]), bytes(25)
    if zone == ZONE_OTP:
        if key_id > 1 or data:
            raise CommandError(PARSE_ERROR)
        if not chip.data_locked:
            raise CommandError(EXECUTION_ERROR)
        return bytes(chip.otp[32 * key_id : 32 * key_id + 32]), bytes(25)
    if zone == ZONE_DATA:
        return slot_secret(chip, key_id), bytes(25)
    if zone == ZONE_SHARED_NONCE:
        return b"", bytes(25)
    if zone == ZONE_COUNTER:
        if key_id > 1 or data:
            raise CommandError(PARSE_ERROR)
        tail = b"\x00" + counter_value(chip, key_id).to_bytes(4, "little") + bytes(20)
        return bytes(32), tail
    # key config: SlotConfig, KeyConfig (LE) and the raw SlotLocked bit (1 = unlocked, the
    # value cryptoauthlib's gendig_keyconfig test passes for a slot of its unlocked config)
    unlocked = int.from_bytes(chip.config[88:90], "little") >> key_id & 1
    tail = (
        b"\x00"
        + chip.slot_config(key_id).to_bytes(2, "little")
        + chip.key_config(key_id).to_bytes(2, "little")
        + bytes([unlocked])
        + bytes(19)
    )
    return bytes(32), tail


def gendig(chip: EmulatedChip, zone: int, key_id: int, data: bytes) -> Reply:
    if zone > ZONE_KEY_CONFIG:
        raise CommandError(PARSE_ERROR)
    if zone == ZONE_SHARED_NONCE:
        if len(data) != 32 or key_id & 0x7FFF:
            raise CommandError(PARSE_ERROR)
    elif key_id > 15 or len(data) not in (0, 4):
        raise CommandError(PARSE_ERROR)  # data-zone KeyID > 15: transport keys, not emulated
    tk = chip.tempkey
    if tk is None:
        raise CommandError(EXECUTION_ERROR)  # GenDig always digests the previous TempKey
    previous = tk.value[:32]
    first, tail = _gendig_input(chip, zone, key_id, data)
    sn = chip.serial
    no_mac = tk.no_mac
    if zone == ZONE_DATA:
        _require_random(chip, key_id, tempkey_used=True)
        if chip.slot_config(key_id) & SLOT_NO_MAC:
            if len(data) != 4:
                raise CommandError(EXECUTION_ERROR)
            header = data  # a NoMac key: OtherData replaces opcode and parameters
            no_mac = True
        else:
            header = bytes([OP_GENDIG, zone]) + key_id.to_bytes(2, "little")
    elif zone == ZONE_SHARED_NONCE:
        header = bytes([OP_GENDIG, zone, key_id & 0xFF, 0])
    else:
        header = bytes([OP_GENDIG, zone]) + key_id.to_bytes(2, "little")
    if zone == ZONE_SHARED_NONCE:
        first, last = (previous, data) if key_id & USE_TEMPKEY_FIRST else (data, previous)
    else:
        last = previous
    msg = first + header + bytes([sn[8], sn[0], sn[1]]) + tail + last
    value = hashlib.sha256(msg).digest()
    if zone == ZONE_DATA:
        chip.tempkey = TempKey(
            value,
            source_input=tk.source_input,
            gen_dig=True,
            gen_key=tk.gen_key,
            no_mac=no_mac,
            key_id=key_id,
        )
    else:
        chip.tempkey = TempKey(
            value, source_input=tk.source_input, gen_key=tk.gen_key, no_mac=no_mac
        )
    return None, False


# --- MAC -----------------------------------------------------------------------------

MAC_BLOCK2_TEMPKEY, MAC_BLOCK1_TEMPKEY, MAC_SOURCE_FLAG = 0x01, 0x02, 0x04
MAC_OTP_88, MAC_OTP_64, MAC_FULL_SN = 0x10, 0x20, 0x40


def _mac_tail(chip: EmulatedChip, mode: int) -> bytes:
    """OTP, serial-number part of the MAC message (``atcah_include_data``)."""
    sn, otp = chip.serial, bytes(chip.otp)
    if mode & MAC_OTP_88:
        out = otp[0:11]
    else:
        out = (otp[0:8] if mode & MAC_OTP_64 else bytes(8)) + bytes(3)
    full = bool(mode & MAC_FULL_SN)
    out += bytes([sn[8]]) + (sn[4:8] if full else bytes(4))
    out += sn[0:2] + (sn[2:4] if full else bytes(2))
    return out


def mac(chip: EmulatedChip, mode: int, key_id: int, data: bytes) -> Reply:
    if mode & ~0x77 or key_id > 15:
        raise CommandError(PARSE_ERROR)
    if len(data) != (0 if mode & MAC_BLOCK2_TEMPKEY else 32):
        raise CommandError(PARSE_ERROR)
    uses_tempkey = bool(mode & (MAC_BLOCK1_TEMPKEY | MAC_BLOCK2_TEMPKEY))
    value = b""
    if uses_tempkey:
        tk = _tempkey(chip, mode & MAC_SOURCE_FLAG)
        if tk.no_mac:
            chip.tempkey = None
            raise CommandError(EXECUTION_ERROR)  # made from a NoMac key
        value = tk.value[:32]
    if mode & MAC_BLOCK1_TEMPKEY:
        first = value
    else:
        first = slot_secret(chip, key_id)
        if chip.slot_config(key_id) & SLOT_NO_MAC:
            raise CommandError(EXECUTION_ERROR)
        _require_random(chip, key_id, uses_tempkey)
    second = value if mode & MAC_BLOCK2_TEMPKEY else data
    msg = first + second + bytes([OP_MAC, mode]) + key_id.to_bytes(2, "little")
    digest = hashlib.sha256(msg + _mac_tail(chip, mode)).digest()
    chip.tempkey = None  # a MAC consumes TempKey (atcah_mac clears TempKey.Valid)
    return digest, False


# --- CheckMac ------------------------------------------------------------------------


def checkmac(chip: EmulatedChip, mode: int, key_id: int, data: bytes) -> Reply:
    if mode & ~0x27 or key_id > 15 or len(data) != 32 + 32 + 13:
        raise CommandError(PARSE_ERROR)
    challenge, response, other = data[0:32], data[32:64], data[64:77]
    uses_tempkey = bool(mode & (MAC_BLOCK1_TEMPKEY | MAC_BLOCK2_TEMPKEY))
    value = _tempkey(chip, mode & MAC_SOURCE_FLAG).value[:32] if uses_tempkey else b""
    if mode & MAC_BLOCK1_TEMPKEY:
        first = value
    else:
        first = slot_secret(chip, key_id)
        _require_random(chip, key_id, uses_tempkey)
    second = value if mode & MAC_BLOCK2_TEMPKEY else challenge
    sn = chip.serial
    otp = bytes(chip.otp[0:8]) if mode & MAC_OTP_64 else bytes(8)
    msg = first + second + other[0:4] + otp + other[4:7] + bytes([sn[8]])
    msg += other[7:11] + sn[0:2] + other[11:13]
    if hashlib.sha256(msg).digest() != response:
        raise CommandError(VERIFY_FAIL)
    if mode in (0x01, 0x05):
        target = key_id + 1 if key_id % 2 == 0 else key_id
        if read_key(chip, target) == 0 and not chip.is_private(target):
            # CheckMac copy: the target slot becomes TempKey (flags as atcah_check_mac)
            tk = chip.tempkey
            assert tk is not None  # mode bit 0: TempKey was checked above
            chip.tempkey = TempKey(
                chip.slot_key(target),
                source_input=True,
                gen_key=tk.gen_key,
                no_mac=tk.no_mac,
                key_id=tk.key_id,
            )
    return None, False


HANDLERS = {OP_GENDIG: gendig, OP_MAC: mac, OP_CHECKMAC: checkmac}
