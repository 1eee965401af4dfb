"""The emulated chip's wire format: status bytes, opcodes and the three packet shapes.

Shared by the silicon (:mod:`.chip`), its command modules (:mod:`.commands`), the bus and
the trays that send a chip real command packets.
"""

from __future__ import annotations

from provisioner.chips.crc import crc16

# Status bytes (datasheet).
OK = 0x00
VERIFY_FAIL = 0x01  # Verify / CheckMac mismatch
PARSE_ERROR = 0x03
ECC_FAULT = 0x05
EXECUTION_ERROR = 0x0F
CRC_ERROR = 0xFF

# Opcodes (cryptoauthlib calib_command.h).
OP_MAC, OP_GENDIG, OP_READ, OP_WRITE, OP_NONCE = 0x08, 0x15, 0x02, 0x12, 0x16
OP_LOCK, OP_RANDOM, OP_DERIVE_KEY, OP_UPDATE_EXTRA, OP_COUNTER = 0x17, 0x1B, 0x1C, 0x20, 0x24
OP_CHECKMAC, OP_INFO, OP_GENKEY, OP_SIGN, OP_ECDH = 0x28, 0x30, 0x40, 0x41, 0x43
OP_VERIFY, OP_PRIVWRITE, OP_SHA, OP_AES, OP_KDF = 0x45, 0x46, 0x47, 0x51, 0x56
OP_SELFTEST, OP_SECUREBOOT = 0x77, 0x80

Reply = tuple[bytes | None, bool]
"""What a command handler returns: (response data or None for a bare OK, persistent state
changed)."""


class CommandError(Exception):
    """A command refused with a status byte."""

    def __init__(self, status: int) -> None:
        super().__init__(f"status 0x{status:02x}")
        self.status = status


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
