"""What an ATECC608A / ATECC608B holds when it leaves the factory, before anyone wrote to it.

The config zone as shipped (sources in ``../shared/research/atecc608.md``, "Factory-fresh
config zone"): the serial and revision the part was made with, I2C enabled at address 0xC0,
both zones unlocked (0x55), every slot unlocked (SlotLocked FF FF), and Microchip's default
slot layout:

- SlotConfig 2083 2087 208F 8FC4 8F8F 8F8F 8F9F 8FAF, slots 8-14 0000, slot 15 8FAF;
- KeyConfig 0033 x3 (P-256 private keys), 001C x5, 003C x7, 001C;
- both monotonic counters at their encoded zero (FF FF FF FF 00 00 00 00 each);
- ChipMode 00 (I2C address from byte 16, 1.3 s watchdog, clock divider M0), CountMatch,
  UseLock, VolatileKeyPermission, SecureBoot, KdfIv, UserExtra/UserExtraAdd,
  ChipOptions and X509format all zero.

The two parts differ in the revision only: 00 00 60 02 (608A), 00 00 60 03 (608B). Bytes 13
(AES_Enable) and 14 (I2C_Enable) are set at manufacturing and cannot be written (config
words 0-3 are read-only): bit 0 of each is 1 on the I2C parts (AES on, I2C interface); the
upper bits differ from die to die on real parts and no command reads them, so here they
are zero. The data and OTP zones of a blank part are unspecified for the 608 (the 508A
shipped test keys); they are zero here, and are unreadable until the config lock anyway.
"""

from __future__ import annotations

from typing import Final, Literal

Part = Literal["608A", "608B"]

REVISIONS: Final[dict[str, bytes]] = {
    "608A": bytes.fromhex("00006002"),
    "608B": bytes.fromhex("00006003"),
}

DEFAULT_I2C_ADDRESS: Final = 0xC0
UNLOCKED: Final = 0x55

# SlotConfig per slot as the config zone holds it (little-endian words, slot 0 first).
FACTORY_SLOT_CONFIG: Final[tuple[int, ...]] = (
    0x2083,
    0x2087,
    0x208F,
    0x8FC4,
    0x8F8F,
    0x8F8F,
    0x8F9F,
    0x8FAF,
    0x0000,
    0x0000,
    0x0000,
    0x0000,
    0x0000,
    0x0000,
    0x0000,
    0x8FAF,
)
FACTORY_KEY_CONFIG: Final[tuple[int, ...]] = (
    (0x0033,) * 3 + (0x001C,) * 5 + (0x003C,) * 7 + (0x001C,)
)
# Counter[0] and Counter[1] (bytes 52-59, 60-67) at zero, in the chip's encoding.
FACTORY_COUNTER: Final = bytes.fromhex("FFFFFFFF00000000")


def factory_config(serial: bytes, part: Part = "608A") -> bytearray:
    """The 128-byte config zone of a factory-fresh ``part`` with this serial."""
    if part not in REVISIONS:
        raise ValueError(f"unknown part {part!r}: one of {', '.join(REVISIONS)}")
    if len(serial) != 9 or serial[:2] != b"\x01\x23" or serial[8] != 0xEE:
        raise ValueError("an ATECC608 serial is 9 bytes: 01 23 .. .. .. .. .. .. EE")
    cfg = bytearray(128)
    cfg[0:4] = serial[0:4]
    cfg[4:8] = REVISIONS[part]
    cfg[8:13] = serial[4:9]
    cfg[13] = 0x01  # AES_Enable
    cfg[14] = 0x01  # I2C_Enable
    cfg[16] = DEFAULT_I2C_ADDRESS
    for slot, word in enumerate(FACTORY_SLOT_CONFIG):
        cfg[20 + 2 * slot : 22 + 2 * slot] = word.to_bytes(2, "little")
    cfg[52:60] = FACTORY_COUNTER
    cfg[60:68] = FACTORY_COUNTER
    cfg[86] = UNLOCKED  # LockValue (data + OTP)
    cfg[87] = UNLOCKED  # LockConfig
    cfg[88:90] = b"\xff\xff"  # SlotLocked: 1 = unlocked
    for slot, word in enumerate(FACTORY_KEY_CONFIG):
        cfg[96 + 2 * slot : 98 + 2 * slot] = word.to_bytes(2, "little")
    return cfg
