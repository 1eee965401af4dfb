"""The chip profile: the config zone we give a blank chip, and which slots hold what.

Trust&GO-like layout: slot 0 holds the device's P-256 private key (generated inside the
chip, never readable, usable for external signatures and ECDH); slot 8 holds the device
certificate (readable in clear; never writable once the data zone is locked).
"""

from __future__ import annotations

from dataclasses import dataclass

SLOT_CONFIG_PRIVATE_KEY = 0x0085  # IsSecret | ReadKey: external sign + ECDH
KEY_CONFIG_P256_PRIVATE = 0x0033  # Private | PubInfo | KeyType P-256 | Lockable
SLOT_CONFIG_CERT = 0x8000  # clear reads; WriteConfig "never" after the data zone lock
KEY_CONFIG_DATA = 0x003C  # KeyType "not ECC" | Lockable


@dataclass(frozen=True)
class ChipProfile:
    key_slot: int = 0
    cert_slot: int = 8

    def config_template(self) -> bytes:
        """128 bytes for atcab_write_config_zone (which skips bytes 0-15 itself)."""
        cfg = bytearray(128)
        cfg[14] = 0x01  # I2C_Enable
        cfg[16] = 0xC0  # I2C address
        for slot in range(16):
            slot_cfg, key_cfg = 0x0000, KEY_CONFIG_DATA
            if slot == self.key_slot:
                slot_cfg, key_cfg = SLOT_CONFIG_PRIVATE_KEY, KEY_CONFIG_P256_PRIVATE
            elif slot == self.cert_slot:
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
        for slot, what in ((self.key_slot, "key"), (self.cert_slot, "certificate")):
            for base, name in ((20, "SlotConfig"), (96, "KeyConfig")):
                off = base + 2 * slot
                if config[off : off + 2] != want[off : off + 2]:
                    have = int.from_bytes(config[off : off + 2], "little")
                    need = int.from_bytes(want[off : off + 2], "little")
                    return (
                        f"{what} slot {slot} {name} is 0x{have:04X}, the profile needs 0x{need:04X}"
                    )
        return None
