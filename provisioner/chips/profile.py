"""The chip profile: the config zone we give a blank chip, and which slots hold what.

Trust&GO-like layout: slot 0 holds the device's P-256 private key (generated inside the
chip, never readable, usable for external signatures and ECDH); slots 8, 9 and 10 hold the
device certificate as length-prefixed DER (readable in clear; each slot locked for good
once written). A DER device certificate is ~500 bytes and slot 8 holds 416, hence the
chain; the chip issue replaces this with Microchip's 72-byte compressed format.
"""

from __future__ import annotations

from dataclasses import dataclass

SLOT_CONFIG_PRIVATE_KEY = 0x0085  # IsSecret | ReadKey: external sign + ECDH
KEY_CONFIG_P256_PRIVATE = 0x0033  # Private | PubInfo | KeyType P-256 | Lockable
SLOT_CONFIG_CERT = 0x0000  # clear reads and writes; each slot is locked once written
KEY_CONFIG_DATA = 0x003C  # KeyType "not ECC" | Lockable


SLOT_SIZES = (36,) * 8 + (416,) + (72,) * 7


@dataclass(frozen=True)
class ChipProfile:
    key_slot: int = 0
    cert_slots: tuple[int, ...] = (8, 9, 10)

    def __post_init__(self) -> None:
        if self.key_slot in self.cert_slots or len(set(self.cert_slots)) != len(self.cert_slots):
            raise ValueError("the key slot and certificate slots must all differ")
        if not self.cert_slots:
            raise ValueError("at least one certificate slot is needed")

    @property
    def cert_capacity(self) -> int:
        return sum(SLOT_SIZES[s] for s in self.cert_slots)

    def config_template(self) -> bytes:
        """128 bytes for atcab_write_config_zone (which skips bytes 0-15 itself)."""
        cfg = bytearray(128)
        cfg[14] = 0x01  # I2C_Enable
        cfg[16] = 0xC0  # I2C address
        for slot in range(16):
            slot_cfg, key_cfg = 0x0000, KEY_CONFIG_DATA
            if slot == self.key_slot:
                slot_cfg, key_cfg = SLOT_CONFIG_PRIVATE_KEY, KEY_CONFIG_P256_PRIVATE
            elif slot in self.cert_slots:
                slot_cfg = SLOT_CONFIG_CERT
            cfg[20 + 2 * slot : 22 + 2 * slot] = slot_cfg.to_bytes(2, "little")
            cfg[96 + 2 * slot : 98 + 2 * slot] = key_cfg.to_bytes(2, "little")
        cfg[86] = 0x55  # LockValue / LockConfig: the Lock command sets them, not Write
        cfg[87] = 0x55
        cfg[88:90] = b"\xff\xff"  # SlotLocked: all unlocked
        return bytes(cfg)

    def incompatibility(self, config: bytes) -> str | None:
        """Why a config-locked chip cannot be provisioned with this profile, or None."""
        want = self.config_template()
        roles = [(self.key_slot, "key")] + [(s, "certificate") for s in self.cert_slots]
        for slot, what in roles:
            for base, name in ((20, "SlotConfig"), (96, "KeyConfig")):
                off = base + 2 * slot
                if config[off : off + 2] != want[off : off + 2]:
                    have = int.from_bytes(config[off : off + 2], "little")
                    need = int.from_bytes(want[off : off + 2], "little")
                    return (
                        f"{what} slot {slot} {name} is 0x{have:04X}, the profile needs 0x{need:04X}"
                    )
        return None
