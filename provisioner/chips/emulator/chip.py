"""The emulated silicon: an ATECC608A/B's zones and volatile state, and the wire entry point.

:meth:`EmulatedChip.execute` takes a command packet exactly as it arrives on the wire
(count, opcode, param1, param2 LE, data, CRC) and returns the response packet (count, data,
CRC) or a 4-byte status packet. Each command lives in its own module under
:mod:`.commands` (one handler per opcode, :data:`.commands.HANDLERS`); this module holds
only what every command shares: the persistent zones, the volatile registers (TempKey,
message-digest buffer, alternate key buffer, SHA contexts) and the config decoding. An
opcode without a handler answers a parse error, as silicon refuses a command; nothing ever
answers a fake success. What each command implements, and what it still refuses, is in
its module's docstring and in docs/emulator.md.

Volatile state is lost on sleep and watchdog expiry, kept on idle.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.chips.crc import crc16
from provisioner.chips.emulator.commands import HANDLERS
from provisioner.chips.emulator.commands.counter import COUNTER_MAX
from provisioner.chips.emulator.factory import Part, factory_config
from provisioner.chips.emulator.tempkey import TempKey
from provisioner.chips.emulator.wire import (  # re-exported: the wire's names, from here
    CRC_ERROR,
    ECC_FAULT,
    EXECUTION_ERROR,
    OK,
    OP_SIGN,
    PARSE_ERROR,
    VERIFY_FAIL,
    CommandError,
    command_packet,
    response_packet,
    status_packet,
)

__all__ = [
    "COUNTER_MAX",
    "CRC_ERROR",
    "ECC_FAULT",
    "EXECUTION_ERROR",
    "OK",
    "OP_SIGN",
    "PARSE_ERROR",
    "VERIFY_FAIL",
    "WATCHDOG_S",
    "CommandError",
    "EmulatedChip",
    "command_packet",
    "new_serial",
    "response_packet",
    "status_packet",
]

WATCHDOG_S = 1.3  # after wake, the chip falls asleep by itself

SLOT_SIZES = (36,) * 8 + (416,) + (72,) * 7
REV_608A = bytes.fromhex("00006002")
LOCKED = 0x00
UNLOCKED = 0x55


def blank_config(serial: bytes, part: Part = "608A") -> bytearray:
    """A factory-fresh config zone of ``part`` (:mod:`.factory`): serial, revision, I2C at
    0xC0, Microchip's default slot and key configuration, everything unlocked."""
    return factory_config(serial, part)


def new_serial() -> bytes:
    return b"\x01\x23" + secrets.token_bytes(6) + b"\xee"


@dataclass
class EmulatedChip:
    """One ATECC608. Persistent zones in fields; volatile state cleared on sleep."""

    config: bytearray
    otp: bytearray = field(default_factory=lambda: bytearray(64))
    slots: list[bytearray] = field(default_factory=lambda: [bytearray(n) for n in SLOT_SIZES])
    key_valid: list[bool] = field(default_factory=lambda: [False] * 16)
    counters: list[int] = field(default_factory=lambda: [0, 0])
    # survives sleep, not a power cycle (a chip file loaded afresh); nothing sets it here
    latch: bool = False
    # volatile: lost on sleep and watchdog expiry
    tempkey: TempKey | None = None
    msg_digest: bytes | None = None
    alt_key: bytes | None = None
    sha: Any = None  # the SHA command's running context (:mod:`.commands.sha`)
    sha_saved: Any = None  # SHA context save/restore's copy
    volatile: dict[str, Any] = field(default_factory=dict)  # other commands' registers

    @classmethod
    def blank(cls, serial: bytes | None = None, part: Part = "608A") -> EmulatedChip:
        """A factory-fresh ATECC608A or 608B (``part``), config and data unlocked."""
        return cls(config=blank_config(serial or new_serial(), part))

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
        """Atomic write: a crash never leaves half a chip behind.

        The bus saves after every command that changed the EEPROM, before its response can
        be read, so the file is written the short way: one ``open``/``write`` of the
        encoded JSON and a rename, the pool directory made only when it is missing. The
        file holds the chip's private keys: owner-only (0600) whatever the umask."""
        data = json.dumps(self.to_json()).encode()
        target = os.fspath(path)
        tmp = f"{target}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, target)

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

    @property
    def chip_options(self) -> int:
        """ChipOptions (config bytes 90-91, little-endian)."""
        return int.from_bytes(self.config[90:92], "little")

    def is_private(self, slot: int) -> bool:
        return bool(self.key_config(slot) & 0x01)

    def is_p256(self, slot: int) -> bool:
        return (self.key_config(slot) >> 2) & 0x07 == 4

    def slot_locked(self, slot: int) -> bool:
        return not (int.from_bytes(self.config[88:90], "little") >> slot) & 1

    def slot_key(self, slot: int) -> bytes:
        """The first 32 bytes of ``slot``: a symmetric (SHA/AES) key as commands use it."""
        return bytes(self.slots[slot][0:32])

    def private_key(self, slot: int) -> ec.EllipticCurvePrivateKey:
        """The P-256 private key a GenKey made in ``slot`` (execution error if none)."""
        if not self.key_valid[slot]:
            raise CommandError(EXECUTION_ERROR)
        d = int.from_bytes(self.slots[slot][4:36], "big")
        return ec.derive_private_key(d, ec.SECP256R1())

    def random32(self) -> bytes:
        """32 bytes from the RNG; before the config lock the datasheet's fixed pattern."""
        if not self.config_locked:
            return bytes([0xFF, 0xFF, 0x00, 0x00] * 8)
        return secrets.token_bytes(32)

    def set_tempkey(self, value: bytes, **flags: Any) -> None:
        """TempKey := ``value`` with the given flags (:class:`TempKey`); valid."""
        self.tempkey = TempKey(value, **flags)

    def sleep(self) -> None:
        """Sleep (or watchdog expiry) loses TempKey, the message-digest buffer and every
        other volatile register; idle keeps them, which is what lets cryptoauthlib idle
        between Nonce and Sign."""
        self.tempkey = None
        self.msg_digest = None
        self.alt_key = None
        self.sha = None
        self.sha_saved = None
        self.volatile.clear()

    # --- the wire ------------------------------------------------------------------

    def execute(self, packet: bytes) -> tuple[bytes, bool]:
        """Run one command packet; returns (response packet, persistent state changed)."""
        if len(packet) < 7 or packet[0] != len(packet) or crc16(packet[:-2]) != packet[-2:]:
            return status_packet(CRC_ERROR), False
        opcode, p1 = packet[1], packet[2]
        p2 = int.from_bytes(packet[3:5], "little")
        data = bytes(packet[5:-2])
        handler = HANDLERS.get(opcode)
        if handler is None:
            return status_packet(PARSE_ERROR), False
        try:
            out, changed = handler(self, p1, p2, data)
        except CommandError as err:
            return status_packet(err.status), False
        if out is None:
            return status_packet(OK), changed
        return response_packet(out), changed
