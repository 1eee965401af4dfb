"""The emulated silicon: an ATECC608A's zones, volatile state and command set.

:meth:`EmulatedChip.execute` takes a command packet exactly as it arrives on the wire
(count, opcode, param1, param2 LE, data, CRC) and returns the response packet (count, data,
CRC) or a 4-byte status packet. Rules follow the datasheet and cryptoauthlib's own use of
each command; anything not implemented answers a parse/execution error as silicon refuses a
command, never a fake success.

Implemented: Info (revision, KeyValid, device state in the datasheet's TempKey-flags
layout, persistent-latch read), Read, Write, UpdateExtra, Lock (config, data+OTP, one slot;
CRC checked unless told not to), Random, Nonce (random; pass-through to TempKey, the
message-digest buffer or the 32-byte alternate key buffer), GenKey (create, public key),
Sign (external, from TempKey or the digest buffer), Verify (external; stored, with the
public key of a P-256 public-key slot), SHA (start, 64-byte update, end with 0-63 bytes
returning the digest and placing it in TempKey or the digest buffer per mode bits 6-7,
public key of a slot), Counter (read, increment; persistent; max 2,097,151), SelfTest
(real known-answer checks, :mod:`.selftest`). Volatile state (TempKey, digest buffer,
alternate key buffer, SHA context) is lost on sleep and watchdog expiry, kept on idle.

Refused as silicon refuses an unsupported request (parse error), never answered with a
fake success: internal Sign, Verify validate/invalidate/validate-external and MAC output,
SHA HMAC and context save/restore, Info GPIO (an I2C part has no GPIO pin). Refused with an
execution error: setting or clearing the persistent latch (the authorization that lets
silicon do it is not modelled), stored keys whose KeyConfig.PubInfo requires validation,
encrypted writes (as a plain write to an encrypt-only slot is), and after the data lock
any write to a slot whose WriteConfig is not "always".

Not verified against silicon (no chip at hand; datasheet and library only): whether Sign
and Verify stored require the data zone lock (here only the config lock, as GenKey);
the counters' initial values (config bytes 52-67 use an unpublished encoding: counters
start at 0); the status codes chosen for the refusals above.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from provisioner.chips.crc import crc16
from provisioner.chips.emulator.selftest import SELFTESTS

WATCHDOG_S = 1.3  # after wake, the chip falls asleep by itself

# Status bytes (datasheet).
OK = 0x00
VERIFY_FAIL = 0x01
PARSE_ERROR = 0x03
ECC_FAULT = 0x05
EXECUTION_ERROR = 0x0F
CRC_ERROR = 0xFF

# Opcodes.
OP_READ, OP_WRITE, OP_NONCE, OP_LOCK, OP_RANDOM = 0x02, 0x12, 0x16, 0x17, 0x1B
OP_UPDATE_EXTRA, OP_INFO, OP_GENKEY, OP_SIGN, OP_VERIFY = 0x20, 0x30, 0x40, 0x41, 0x45
OP_COUNTER, OP_SHA, OP_SELFTEST = 0x24, 0x47, 0x77
COUNTER_MAX = 2_097_151

SLOT_SIZES = (36,) * 8 + (416,) + (72,) * 7
REV_608A = bytes.fromhex("00006002")
LOCKED = 0x00
UNLOCKED = 0x55
_RANDOM_BEFORE_LOCK = bytes([0xFF, 0xFF, 0x00, 0x00] * 8)


class CommandError(Exception):
    """A command refused with a status byte."""

    def __init__(self, status: int) -> None:
        super().__init__(f"status 0x{status:02x}")
        self.status = status


def blank_config(serial: bytes) -> bytearray:
    """A factory-fresh 608A config zone: serial, revision, I2C 0xC0, everything unlocked."""
    assert len(serial) == 9 and serial[:2] == b"\x01\x23" and serial[8] == 0xEE
    cfg = bytearray(128)
    cfg[0:4] = serial[0:4]
    cfg[4:8] = REV_608A
    cfg[8:13] = serial[4:9]
    cfg[14] = 0x01  # I2C_Enable
    cfg[16] = 0xC0  # I2C address
    cfg[86] = UNLOCKED  # LockValue (data + OTP)
    cfg[87] = UNLOCKED  # LockConfig
    cfg[88:90] = b"\xff\xff"  # SlotLocked: 1 = unlocked
    return cfg


def new_serial() -> bytes:
    return b"\x01\x23" + secrets.token_bytes(6) + b"\xee"


@dataclass
class EmulatedChip:
    """One ATECC608A. Persistent zones in fields; volatile state cleared on idle/sleep."""

    config: bytearray
    otp: bytearray = field(default_factory=lambda: bytearray(64))
    slots: list[bytearray] = field(default_factory=lambda: [bytearray(n) for n in SLOT_SIZES])
    key_valid: list[bool] = field(default_factory=lambda: [False] * 16)
    counters: list[int] = field(default_factory=lambda: [0, 0])
    # survives sleep, not a power cycle (a chip file loaded afresh); nothing sets it here
    latch: bool = False
    # volatile: lost on sleep and watchdog expiry
    tempkey: bytes | None = None
    tempkey_from_input: bool = False  # TempKey.SourceFlag: pass-through, not random
    msg_digest: bytes | None = None
    alt_key: bytes | None = None
    sha: Any = None  # the SHA command's running context

    @classmethod
    def blank(cls, serial: bytes | None = None) -> EmulatedChip:
        return cls(config=blank_config(serial or new_serial()))

    # --- persistence ---------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "config": self.config.hex(),
            "otp": self.otp.hex(),
            "slots": [base64.b64encode(s).decode() for s in self.slots],
            "key_valid": self.key_valid,
            "counters": self.counters,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EmulatedChip:
        return cls(
            config=bytearray.fromhex(d["config"]),
            otp=bytearray.fromhex(d["otp"]),
            slots=[bytearray(base64.b64decode(s)) for s in d["slots"]],
            key_valid=list(d["key_valid"]),
            counters=list(d.get("counters", [0, 0])),  # files written before Counter existed
        )

    def save(self, path: Path) -> None:
        """Atomic write: a crash never leaves half a chip behind."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json()))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> EmulatedChip:
        return cls.from_json(json.loads(path.read_text()))

    # --- derived state --------------------------------------------------------------

    @property
    def serial(self) -> bytes:
        return bytes(self.config[0:4] + self.config[8:13])

    @property
    def config_locked(self) -> bool:
        return self.config[87] != UNLOCKED

    @property
    def data_locked(self) -> bool:
        return self.config[86] != UNLOCKED

    def slot_config(self, slot: int) -> int:
        return int.from_bytes(self.config[20 + 2 * slot : 22 + 2 * slot], "little")

    def key_config(self, slot: int) -> int:
        return int.from_bytes(self.config[96 + 2 * slot : 98 + 2 * slot], "little")

    def is_private(self, slot: int) -> bool:
        return bool(self.key_config(slot) & 0x01)

    def is_p256(self, slot: int) -> bool:
        return (self.key_config(slot) >> 2) & 0x07 == 4

    def slot_locked(self, slot: int) -> bool:
        return not (int.from_bytes(self.config[88:90], "little") >> slot) & 1

    def sleep(self) -> None:
        """Sleep (or watchdog expiry) loses TempKey and the message-digest buffer; idle
        keeps them, which is what lets cryptoauthlib idle between Nonce and Sign."""
        self.tempkey = None
        self.msg_digest = None
        self.alt_key = None
        self.sha = None

    # --- the wire ------------------------------------------------------------------

    def execute(self, packet: bytes) -> tuple[bytes, bool]:
        """Run one command packet; returns (response packet, persistent state changed)."""
        if len(packet) < 7 or packet[0] != len(packet) or crc16(packet[:-2]) != packet[-2:]:
            return status_packet(CRC_ERROR), False
        opcode, p1 = packet[1], packet[2]
        p2 = int.from_bytes(packet[3:5], "little")
        data = bytes(packet[5:-2])
        handler = _HANDLERS.get(opcode)
        if handler is None:
            return status_packet(PARSE_ERROR), False
        try:
            out, changed = handler(self, p1, p2, data)
        except CommandError as err:
            return status_packet(err.status), False
        if out is None:
            return status_packet(OK), changed
        return response_packet(out), changed

    # --- commands --------------------------------------------------------------------

    def cmd_info(self, mode: int, p2: int, data: bytes) -> tuple[bytes | None, bool]:
        if data:
            raise CommandError(PARSE_ERROR)
        if mode == 0x00:
            return bytes(self.config[4:8]), False
        if mode == 0x01:  # KeyValid for slot p2
            if p2 > 15:
                raise CommandError(PARSE_ERROR)
            return bytes([int(self.key_valid[p2]), 0, 0, 0]), False
        if mode == 0x02:  # device state
            if p2:
                raise CommandError(PARSE_ERROR)
            return self.device_state(), False
        if mode == 0x04:  # persistent latch (VolKeyPermit): read; setting is refused
            if p2 & ~0x03:
                raise CommandError(PARSE_ERROR)
            if p2 & 0x02:  # set/clear: needs an authorization this emulator does not model
                raise CommandError(EXECUTION_ERROR)
            return bytes([int(self.latch), 0, 0, 0]), False
        raise CommandError(PARSE_ERROR)  # 0x03 GPIO: no GPIO pin on an I2C part; refused

    def device_state(self) -> bytes:
        """Info(State), datasheet "Info - Device State": byte 0 = TempKey.NoMacFlag (7),
        GenKeyData (6), GenDigData (5), SourceFlag (4), KeyID (3:0); byte 1 = TempKey.Valid
        (7), AuthComplete.KeyID (6:3), AuthComplete.Valid (2); bytes 2-3 zero. Nothing here
        derives TempKey from a key (no GenDig/GenKey digest), so only SourceFlag and Valid
        are ever set. SourceFlag follows cryptoauthlib's model (atca_host.h: 0 = random
        nonce, 1 = input, i.e. pass-through or a SHA digest)."""
        byte0 = 0x10 if self.tempkey is not None and self.tempkey_from_input else 0x00
        byte1 = 0x80 if self.tempkey is not None else 0x00
        return bytes([byte0, byte1, 0, 0])

    def _address(self, zone: int, addr: int, n: int) -> tuple[bytearray, int]:
        """Resolve (zone, address, length) to a buffer and byte offset, or refuse."""
        if zone == 0 or zone == 1:
            buf = self.config if zone == 0 else self.otp
            block, word = (addr >> 3) & 0x1F, addr & 0x07
            off = block * 32 + (0 if n == 32 else word * 4)
            if off + n > len(buf):
                raise CommandError(PARSE_ERROR)
            return buf, off
        if zone == 2:
            slot, word, block = (addr >> 3) & 0x0F, addr & 0x07, (addr >> 8) & 0x0F
            off = block * 32 + (0 if n == 32 else word * 4)
            return self.slots[slot], off
        raise CommandError(PARSE_ERROR)

    def cmd_read(self, p1: int, addr: int, data: bytes) -> tuple[bytes | None, bool]:
        zone, n = p1 & 0x03, (32 if p1 & 0x80 else 4)
        if data or p1 & 0x7C:
            raise CommandError(PARSE_ERROR)
        if zone == 2:
            if not self.data_locked:
                raise CommandError(EXECUTION_ERROR)  # data zone unreadable before lock
            slot = (addr >> 3) & 0x0F
            if self.is_private(slot) or self.slot_config(slot) & 0x80:  # secret
                raise CommandError(EXECUTION_ERROR)
        if zone == 1 and not self.data_locked:
            raise CommandError(EXECUTION_ERROR)
        buf, off = self._address(zone, addr, n)
        if off + n > len(buf):
            raise CommandError(PARSE_ERROR)
        return bytes(buf[off : off + n]), False

    def cmd_write(self, p1: int, addr: int, data: bytes) -> tuple[bytes | None, bool]:
        zone, n = p1 & 0x03, (32 if p1 & 0x80 else 4)
        if p1 & 0x40:  # encrypted writes: not in the skeleton's rule set
            raise CommandError(EXECUTION_ERROR)
        if len(data) != n or p1 & 0x3C:
            raise CommandError(PARSE_ERROR)
        if zone == 0:
            if self.config_locked:
                raise CommandError(EXECUTION_ERROR)
            buf, off = self._address(zone, addr, n)
            if n == 4 and off < 16:
                raise CommandError(EXECUTION_ERROR)  # SN and RevNum are read-only
            for i, b in enumerate(data):
                pos = off + i
                if pos < 16 or 84 <= pos <= 87:  # read-only / UpdateExtra / Lock bytes
                    continue
                buf[pos] = b
            return None, True
        if zone == 1:
            if not self.config_locked or self.data_locked:
                raise CommandError(EXECUTION_ERROR)
            buf, off = self._address(zone, addr, n)
            buf[off : off + n] = data
            return None, True
        if zone == 2:
            if not self.config_locked:
                raise CommandError(EXECUTION_ERROR)
            slot = (addr >> 3) & 0x0F
            if self.is_private(slot):
                raise CommandError(EXECUTION_ERROR)  # private keys only via GenKey
            if self.data_locked:
                write_cfg = (self.slot_config(slot) >> 12) & 0x0F
                if write_cfg != 0 or self.slot_locked(slot):  # only "Always" in the skeleton
                    raise CommandError(EXECUTION_ERROR)
            buf, off = self._address(zone, addr, n)
            if off >= len(buf):
                if len(buf) == 72 and n == 32 and off == 96:
                    return None, False  # atcacert's trailing block past a 72-byte slot
                raise CommandError(PARSE_ERROR)
            end = min(off + n, len(buf))
            buf[off:end] = data[: end - off]
            return None, True
        raise CommandError(PARSE_ERROR)

    def cmd_update_extra(self, mode: int, p2: int, data: bytes) -> tuple[bytes | None, bool]:
        if data or mode not in (0, 1) or p2 > 0xFF:
            raise CommandError(PARSE_ERROR)
        pos = 84 + mode
        if self.config[pos] != 0 and p2 != self.config[pos]:
            raise CommandError(EXECUTION_ERROR)  # may be set once only
        self.config[pos] = p2
        return None, True

    def cmd_lock(self, mode: int, crc: int, data: bytes) -> tuple[bytes | None, bool]:
        if data:
            raise CommandError(PARSE_ERROR)
        zone, skip_crc = mode & 0x03, bool(mode & 0x80)
        if zone == 0:
            if self.config_locked:
                raise CommandError(EXECUTION_ERROR)
            summary = bytes(self.config)
            target = 87
        elif zone == 1:
            if not self.config_locked or self.data_locked:
                raise CommandError(EXECUTION_ERROR)
            summary = b"".join(bytes(s) for s in self.slots) + bytes(self.otp)
            target = 86
        elif zone == 2:  # one slot
            slot = (mode >> 2) & 0x0F
            if not self.data_locked or self.slot_locked(slot) or not self.key_config(slot) & 0x20:
                raise CommandError(EXECUTION_ERROR)
            summary = bytes(self.slots[slot])
            target = -1
        else:
            raise CommandError(PARSE_ERROR)
        if not skip_crc and int.from_bytes(crc16(summary), "little") != crc:
            raise CommandError(EXECUTION_ERROR)
        if target >= 0:
            self.config[target] = LOCKED
        else:
            mask = int.from_bytes(self.config[88:90], "little") & ~(1 << ((mode >> 2) & 0x0F))
            self.config[88:90] = mask.to_bytes(2, "little")
        return None, True

    def cmd_random(self, mode: int, p2: int, data: bytes) -> tuple[bytes | None, bool]:
        if mode not in (0, 1) or p2 != 0 or data:
            raise CommandError(PARSE_ERROR)
        if not self.config_locked:
            return _RANDOM_BEFORE_LOCK, False
        return secrets.token_bytes(32), False

    def cmd_nonce(self, mode: int, p2: int, data: bytes) -> tuple[bytes | None, bool]:
        kind, target = mode & 0x03, mode & 0xC0
        if kind in (0, 1):
            if len(data) != 20 or target:
                raise CommandError(PARSE_ERROR)
            rand = secrets.token_bytes(32) if self.config_locked else _RANDOM_BEFORE_LOCK
            digest = hashes.Hash(hashes.SHA256())
            digest.update(rand + data + bytes([OP_NONCE, mode, 0x00]))
            self.tempkey = digest.finalize()
            self.tempkey_from_input = False
            return rand, False
        if kind == 3:
            want = 64 if mode & 0x20 else 32
            if len(data) != want:
                raise CommandError(PARSE_ERROR)
            if target == 0x00:
                self.tempkey, self.tempkey_from_input = data, True
            elif target == 0x40:
                self.msg_digest = data
            elif target == 0x80 and want == 32:
                self.alt_key = data
            else:
                raise CommandError(PARSE_ERROR)
            return None, False
        raise CommandError(PARSE_ERROR)

    def _private_key(self, slot: int) -> ec.EllipticCurvePrivateKey:
        if not self.key_valid[slot]:
            raise CommandError(EXECUTION_ERROR)
        d = int.from_bytes(self.slots[slot][4:36], "big")
        return ec.derive_private_key(d, ec.SECP256R1())

    def cmd_genkey(self, mode: int, slot: int, data: bytes) -> tuple[bytes | None, bool]:
        if data or slot > 15 or mode & ~0x1C:
            raise CommandError(PARSE_ERROR)
        if not self.config_locked:
            raise CommandError(EXECUTION_ERROR)
        if not (self.is_private(slot) and self.is_p256(slot)):
            raise CommandError(EXECUTION_ERROR)
        changed = False
        if mode & 0x04:  # create
            if self.data_locked:
                genkey_ok = (self.slot_config(slot) >> 13) & 1
                if not genkey_ok or self.slot_locked(slot):
                    raise CommandError(EXECUTION_ERROR)
            key = ec.generate_private_key(ec.SECP256R1())
            d = key.private_numbers().private_value.to_bytes(32, "big")
            self.slots[slot][0:36] = b"\x00" * 4 + d
            self.key_valid[slot] = True
            changed = True
        pub = (
            self._private_key(slot)
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )
        return pub[1:], changed

    def cmd_sign(self, mode: int, slot: int, data: bytes) -> tuple[bytes | None, bool]:
        if data or slot > 15:
            raise CommandError(PARSE_ERROR)
        if not mode & 0x80:  # internal-message signing: not in the skeleton
            raise CommandError(PARSE_ERROR)
        if not self.config_locked or not self.is_private(slot):
            raise CommandError(EXECUTION_ERROR)
        if not self.slot_config(slot) & 0x01:  # ReadKey bit0: external signatures allowed
            raise CommandError(EXECUTION_ERROR)
        msg = self.msg_digest if mode & 0x20 else self.tempkey
        if msg is None or len(msg) != 32:
            raise CommandError(EXECUTION_ERROR)
        key = self._private_key(slot)
        der = key.sign(msg, ec.ECDSA(Prehashed(hashes.SHA256())))
        r, s = decode_dss_signature(der)
        self.idle_after_sign()
        return r.to_bytes(32, "big") + s.to_bytes(32, "big"), False

    def idle_after_sign(self) -> None:
        """Sign consumes its message source (TempKey/digest buffer are invalidated)."""
        self.tempkey = None
        self.msg_digest = None

    def _public_key_in(self, slot: int) -> bytes:
        """X||Y of the public key stored (padded, 72 bytes) in a P-256 public-key slot.
        A slot whose KeyConfig.PubInfo (bit 1) says its key must first be validated is
        refused: Verify validate/invalidate is not modelled, so no key is ever valid."""
        if slot > 15:
            raise CommandError(PARSE_ERROR)
        if self.is_private(slot) or not self.is_p256(slot) or len(self.slots[slot]) < 72:
            raise CommandError(EXECUTION_ERROR)
        if self.key_config(slot) & 0x02:
            raise CommandError(EXECUTION_ERROR)
        raw = self.slots[slot]
        return bytes(raw[4:36] + raw[40:72])

    def cmd_verify(self, mode: int, p2: int, data: bytes) -> tuple[bytes | None, bool]:
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
            if not self.config_locked:
                raise CommandError(EXECUTION_ERROR)
            sig, pub = data, self._public_key_in(p2)
        else:  # validate / invalidate: not implemented, refused
            raise CommandError(PARSE_ERROR)
        msg = self.msg_digest if mode & 0x20 else self.tempkey
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

    def cmd_sha(self, mode: int, p2: int, data: bytes) -> tuple[bytes | None, bool]:
        """SHA-256 start / update (64 bytes) / end (0-63 bytes) / public (the public key
        stored in slot p2; a private-key slot is refused); HMAC and context save/restore
        are not implemented and refused. cryptoauthlib always sends p2 = 0 for mode 3
        (calib_sha_base treats it as the ECC204's HMAC start), so through the library
        "public" names slot 0."""
        kind, target = mode & 0x07, mode & 0xC0
        if kind == 0x00:
            if data or p2:
                raise CommandError(PARSE_ERROR)
            self.sha = hashlib.sha256()
            return None, False
        if kind not in (0x01, 0x02, 0x03):
            raise CommandError(PARSE_ERROR)
        if self.sha is None:
            raise CommandError(EXECUTION_ERROR)  # no context: start first
        if kind == 0x01:
            if p2 != 64 or len(data) != 64:
                raise CommandError(PARSE_ERROR)
            self.sha.update(data)
            return None, False
        if kind == 0x03:
            if data:
                raise CommandError(PARSE_ERROR)
            self.sha.update(self._public_key_in(p2))
            return None, False
        if p2 != len(data) or p2 > 63 or target == 0x80:
            raise CommandError(PARSE_ERROR)
        self.sha.update(data)
        digest: bytes = self.sha.digest()
        self.sha = None
        if target == 0x00:
            self.tempkey, self.tempkey_from_input = digest, True
        elif target == 0x40:
            self.msg_digest = digest
        return digest, False

    def cmd_counter(self, mode: int, counter: int, data: bytes) -> tuple[bytes | None, bool]:
        """Monotonic counters 0 and 1 (persistent, in :attr:`counters`); answers the 4-byte
        little-endian value, after incrementing in mode 1; past 2,097,151 execution error.
        Config bytes 52-67 hold the counters' initial values in an encoding Microchip does
        not publish ("contact Microchip"); the library only reads the 4-byte answer, so
        they are not decoded and every counter starts at 0, as Microchip's generic parts
        document ("the counters are initialized to zero")."""
        if data or mode not in (0x00, 0x01) or counter not in (0, 1):
            raise CommandError(PARSE_ERROR)
        if mode == 0x01:
            if self.counters[counter] >= COUNTER_MAX:
                raise CommandError(EXECUTION_ERROR)
            self.counters[counter] += 1
        return self.counters[counter].to_bytes(4, "little"), mode == 0x01

    def cmd_selftest(self, mode: int, p2: int, data: bytes) -> tuple[bytes | None, bool]:
        """SelfTest: mode bits 0 DRBG, 1 ECDSA sign, 2 ECDSA verify, 3 ECDH, 4 AES, 5 SHA
        (cryptoauthlib's "all" is 0x3B). Runs real known-answer checks of the primitives
        the emulator computes with and answers one byte: 0x00 if all pass, else the bits
        of the tests that failed. Mode 0 or bits 6-7 set: parse error."""
        if data or p2 or not mode or mode & ~0x3F:
            raise CommandError(PARSE_ERROR)
        failed = 0
        for bit, check in SELFTESTS.items():
            if mode & bit and not check():
                failed |= bit
        return bytes([failed]), False


def command_packet(opcode: int, p1: int, p2: int, data: bytes = b"") -> bytes:
    """A command as the host puts it on the wire: count, opcode, p1, p2 (LE), data, CRC."""
    body = bytes([len(data) + 7, opcode, p1]) + p2.to_bytes(2, "little") + data
    return body + crc16(body)


def status_packet(status: int) -> bytes:
    body = bytes([4, status])
    return body + crc16(body)


def response_packet(data: bytes) -> bytes:
    body = bytes([len(data) + 3]) + data
    return body + crc16(body)


_HANDLERS = {
    OP_INFO: EmulatedChip.cmd_info,
    OP_READ: EmulatedChip.cmd_read,
    OP_WRITE: EmulatedChip.cmd_write,
    OP_UPDATE_EXTRA: EmulatedChip.cmd_update_extra,
    OP_LOCK: EmulatedChip.cmd_lock,
    OP_RANDOM: EmulatedChip.cmd_random,
    OP_NONCE: EmulatedChip.cmd_nonce,
    OP_GENKEY: EmulatedChip.cmd_genkey,
    OP_SIGN: EmulatedChip.cmd_sign,
    OP_VERIFY: EmulatedChip.cmd_verify,
    OP_SHA: EmulatedChip.cmd_sha,
    OP_COUNTER: EmulatedChip.cmd_counter,
    OP_SELFTEST: EmulatedChip.cmd_selftest,
}
