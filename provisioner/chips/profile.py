"""The chip profile: the config zone we give a blank chip, and which slots hold what.

Trust&GO-like layout (Microchip's own slot roles, so firmware written for those parts finds
things where it expects them):

- slot 0: the device's P-256 private key, generated inside the chip, never readable,
  usable for external signatures and ECDH; GenKey is refused once the data zone is locked,
  so the key the certificate names can never be replaced;
- slots 2-4: rotation keys (Trust&GO's "secondary private keys"): P-256 private-key slots
  whose SlotConfig lets GenKey replace the key after the data lock, so a device in the
  field can move to a fresh key made inside the chip (``provisioner device rotate-key``);
- slot 8: the device certificate's serial number (ours are random, so the chip stores it);
- slot 10: the device certificate, compressed (72 bytes, Microchip's atcacert format);
- slot 11: the signer (intermediate CA) public key, padded to 72 bytes;
- slot 12: the signer certificate, compressed.

Certificate slots are readable in clear and locked one by one once written and read back.
Template and chain IDs name the compressed-certificate definitions (they are checked when
a certificate is rebuilt, so a chip read with the wrong definition is refused, never
misread); ours differ from Microchip's Trust&GO IDs on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass

SLOT_CONFIG_PRIVATE_KEY = 0x0085  # IsSecret | ReadKey: external sign + ECDH
# The same, plus WriteConfig bit 13 ("GenKey may write random keys into this slot"), as
# Trust&GO's slots 2-4: the chip itself makes every new key, nothing can write one in.
SLOT_CONFIG_ROTATION_KEY = 0x2085
SLOT_CONFIG_GENKEY = 0x2000
KEY_CONFIG_P256_PRIVATE = 0x0033  # Private | PubInfo | KeyType P-256 | Lockable
SLOT_CONFIG_CERT = 0x0000  # clear reads and writes; each slot is locked once written
KEY_CONFIG_DATA = 0x003C  # KeyType "not ECC" | Lockable
KEY_CONFIG_P256_PUBLIC = 0x0030  # KeyType P-256 | Lockable: a public key Verify can use

SLOT_SIZES = (36,) * 8 + (416,) + (72,) * 7
COUNTER_ZERO = bytes.fromhex("ffffffff00000000")  # a monotonic counter's encoded 0


@dataclass(frozen=True)
class ChipProfile:
    key_slot: int = 0
    serial_slot: int = 8
    device_cert_slot: int = 10
    signer_key_slot: int = 11
    signer_cert_slot: int = 12
    device_template_id: int = 8
    signer_template_id: int = 7
    chain_id: int = 0
    # Slots a device may move its key to in the field (key rotation). Only checked when a
    # rotation needs one: chips configured before these existed still provision.
    rotation_slots: tuple[int, ...] = (2, 3, 4)

    def __post_init__(self) -> None:
        slots = (self.key_slot, *self.cert_slots)
        if len(set(slots)) != len(slots) or not all(0 <= s <= 15 for s in slots):
            raise ValueError("the key slot and the certificate slots must be distinct (0-15)")
        rotation = tuple(self.rotation_slots)
        if (
            len(set(rotation)) != len(rotation)
            or set(rotation) & set(slots)
            or not all(0 <= s <= 15 for s in rotation)
        ):
            raise ValueError(
                "rotation slots must be distinct slots (0-15) other than the key slot and the "
                "certificate slots"
            )
        for name in ("device_cert_slot", "signer_key_slot", "signer_cert_slot"):
            if SLOT_SIZES[getattr(self, name)] < 72:
                raise ValueError(f"{name} must be a slot of at least 72 bytes (8-15)")
        if SLOT_SIZES[self.serial_slot] < 32:
            raise ValueError("serial_slot must hold at least 32 bytes")
        ids = (self.device_template_id, self.signer_template_id, self.chain_id)
        if not all(0 <= i <= 15 for i in ids) or self.device_template_id == self.signer_template_id:
            raise ValueError("template IDs (distinct) and the chain ID are 4-bit values")

    @property
    def cert_slots(self) -> tuple[int, ...]:
        """Every slot written with certificate data, in the order they are locked (the
        device certificate last: once it is locked, the chip is provisioned)."""
        return (
            self.signer_key_slot,
            self.signer_cert_slot,
            self.serial_slot,
            self.device_cert_slot,
        )

    def config_template(self) -> bytes:
        """128 bytes for atcab_write_config_zone (which skips bytes 0-15 itself)."""
        cfg = bytearray(128)
        cfg[14] = 0x01  # I2C_Enable
        cfg[16] = 0xC0  # I2C address
        # Counter0/1 (bytes 52-67): the encoding of 0, as shipped and as the library's
        # calib_write_config_counter writes it; all-zero bytes encode no value at all.
        cfg[52:68] = COUNTER_ZERO * 2
        for slot in range(16):
            slot_cfg, key_cfg = SLOT_CONFIG_CERT, KEY_CONFIG_DATA
            if slot == self.key_slot:
                slot_cfg, key_cfg = SLOT_CONFIG_PRIVATE_KEY, KEY_CONFIG_P256_PRIVATE
            elif slot in self.rotation_slots:
                slot_cfg, key_cfg = SLOT_CONFIG_ROTATION_KEY, KEY_CONFIG_P256_PRIVATE
            elif slot == self.signer_key_slot:
                key_cfg = KEY_CONFIG_P256_PUBLIC
            cfg[20 + 2 * slot : 22 + 2 * slot] = slot_cfg.to_bytes(2, "little")
            cfg[96 + 2 * slot : 98 + 2 * slot] = key_cfg.to_bytes(2, "little")
        cfg[86] = 0x55  # LockValue / LockConfig: the Lock command sets them, not Write
        cfg[87] = 0x55
        cfg[88:90] = b"\xff\xff"  # SlotLocked: all unlocked
        return bytes(cfg)

    def incompatibility(self, config: bytes) -> str | None:
        """Why a config-locked chip cannot be provisioned with this profile, or None.

        Rotation slots are not looked at: a chip configured before they existed is still a
        good chip for the line; :meth:`rotation_incompatibility` says, when a rotation
        needs a slot, why that one cannot serve."""
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

    def rotation_incompatibility(self, config: bytes, slot: int) -> str | None:
        """Why ``slot`` of a chip with this (locked) ``config`` cannot take a rotated key,
        or None. A rotation slot must hold a P-256 private key (KeyConfig) that external
        signatures may use and that GenKey may replace after the data lock (SlotConfig)."""
        if slot not in self.rotation_slots:
            return f"slot {slot} is not a rotation slot of the profile {self.rotation_slots}"
        slot_cfg = int.from_bytes(config[20 + 2 * slot : 22 + 2 * slot], "little")
        key_cfg = int.from_bytes(config[96 + 2 * slot : 98 + 2 * slot], "little")
        problems = []
        if not key_cfg & 0x01 or (key_cfg >> 2) & 0x07 != 4:
            problems.append(f"KeyConfig 0x{key_cfg:04X} is not a P-256 private key")
        if not slot_cfg & 0x01:
            problems.append(f"SlotConfig 0x{slot_cfg:04X} does not allow external signatures")
        if not slot_cfg & SLOT_CONFIG_GENKEY:
            problems.append(
                f"SlotConfig 0x{slot_cfg:04X} does not let GenKey make a key after the data lock"
            )
        if not problems:
            return None
        return (
            f"rotation slot {slot}: {'; '.join(problems)} (the profile configures 0x"
            f"{SLOT_CONFIG_ROTATION_KEY:04X} / 0x{KEY_CONFIG_P256_PRIVATE:04X}: this chip's "
            "config was locked without rotation slots, and a locked config never changes)"
        )
