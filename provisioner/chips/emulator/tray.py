"""Chips as they arrive from a tray that is not factory-fresh.

A line meets chips that were provisioned somewhere else: config and data zones locked, a
key in the key slot, a compressed certificate in the certificate slot, that slot locked.
:func:`provisioned_elsewhere` makes one by sending the chip the same command packets a
foreign line would have sent (so every rule of the emulator applies), not by editing
its zones.

Pre-provisioned parts (:func:`trust_and_go`, :func:`trustflex`, :func:`broken_chain`) are
made through the unmodified library on a programmer's bench (:func:`bench`: the kit-bridge
HAL over a chip held in memory), as a manufacturer makes them: config and OTP code, keys,
compressed certificates in the library's own TNG definitions under an
:class:`~provisioner.chips.emulator.manufacturer.EmulatedManufacturer`, locks. They answer
at their part's address (0x6A, 0x6C) once in a socket, as the config zone says.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.chips.crc import crc16
from provisioner.chips.emulator.chip import OK, EmulatedChip, command_packet

if TYPE_CHECKING:
    from provisioner.chips.device import CryptoAuthChip
    from provisioner.chips.emulator.manufacturer import EmulatedManufacturer

_WRITE, _LOCK, _GENKEY = 0x12, 0x17, 0x40
_ZONE_CONFIG, _ZONE_DATA, _BLOCK = 0x00, 0x02, 0x80
_LOCK_CONFIG, _LOCK_DATA, _LOCK_SLOT, _SKIP_CRC = 0x00, 0x01, 0x02, 0x80


def _send(chip: EmulatedChip, opcode: int, p1: int, p2: int, data: bytes = b"") -> bytes:
    response, _ = chip.execute(command_packet(opcode, p1, p2, data))
    if len(response) == 4 and response[1] != OK:
        raise RuntimeError(f"opcode 0x{opcode:02X} refused with status 0x{response[1]:02X}")
    return response


def provisioned_elsewhere(config: bytes, key_slot: int = 0, cert_slot: int = 10) -> EmulatedChip:
    """A chip carrying ``config`` (bytes 16-127 applied), locked, keyed, with a (foreign)
    compressed certificate locked in ``cert_slot``."""
    chip = EmulatedChip.blank()
    for block in range(4):  # 32-byte writes; the chip keeps bytes 0-15 and the lock bytes
        _send(chip, _WRITE, _ZONE_CONFIG | _BLOCK, block << 3, config[32 * block : 32 * block + 32])
    _send(chip, _LOCK, _LOCK_CONFIG | _SKIP_CRC, 0)
    _send(chip, _GENKEY, 0x04, key_slot)
    _send(chip, _LOCK, _LOCK_DATA | _SKIP_CRC, 0)
    record = os.urandom(64) + bytes.fromhex("2a0c0e0100120000")  # signature, dates, IDs
    for block in range(3):  # as atcacert writes a 72-byte slot: three whole blocks
        chunk = (record + bytes(24))[32 * block : 32 * block + 32]
        _send(chip, _WRITE, _ZONE_DATA | _BLOCK, (cert_slot << 3) | (block << 8), chunk)
    _send(chip, _LOCK, _LOCK_SLOT | (cert_slot << 2) | _SKIP_CRC, 0)
    return chip


# --- pre-provisioned parts (Trust&GO TNGTLS-like, TrustFLEX-like) -------------------------


class _BenchBus:
    """The wire to one chip held in the hand (no jig, no file): what a manufacturer's
    programmer is to a part before it goes on the reel. The chip answers at any address
    (the programmer has it alone on its bus)."""

    def __init__(self, chip: EmulatedChip) -> None:
        self.chip = chip
        self._response: bytes | None = None

    def wake(self) -> None:
        self._response = None

    def idle(self) -> None:
        """Idle keeps TempKey and the digest buffer: nothing to do."""

    def sleep(self) -> None:
        self.chip.sleep()

    def send(self, packet: bytes) -> None:
        self._response, _ = self.chip.execute(packet)

    def receive(self) -> bytes | None:
        out, self._response = self._response, None
        return out


@contextmanager
def bench(chip: EmulatedChip) -> Iterator[CryptoAuthChip]:
    """``chip`` driven by the unmodified library (kit-bridge HAL over :class:`_BenchBus`),
    as the driver drives any chip."""
    from provisioner.chips.connector import ATECC608, IFACE_KIT, KIT_I2C, ctypes_ref
    from provisioner.chips.device import CryptoAuthChip
    from provisioner.chips.kitbridge import KitBridge
    from provisioner.chips.library import cryptoauth, iface_cfg_class
    from provisioner.chips.profile import ChipProfile

    lib = cryptoauth()
    bridge = KitBridge(_BenchBus(chip))
    cfg = iface_cfg_class()()
    cfg.iface_type = IFACE_KIT
    cfg.devtype = ATECC608
    cfg.cfg.atcakit.dev_interface = KIT_I2C
    cfg.cfg.atcakit.dev_identity = chip.config[16]
    cfg.wake_delay = 1500
    cfg.rx_retries = 20
    lib.hal_kit_attach_phy(ctypes_ref(cfg), ctypes_ref(bridge.phy))
    driver = CryptoAuthChip("bench:", cfg, ChipProfile(), keepalive=bridge)
    try:
        yield driver
    finally:
        driver.close()
        chip.sleep()  # off the programmer: volatile state gone, as after power-off


# Config zone bytes 16-127 of the parts, as SlotConfig / KeyConfig words per slot (little
# endian in the zone). Roles per Microchip's ATECC608B-TNGTLS data sheet ("Detailed Slot
# Access Policies", research notes): slot 0 the permanent primary P-256 key (secret,
# external sign, ECDH, random nonce required: SlotConfig 0x0085, KeyConfig 0x0053);
# slot 1 the internal-sign (attestation) key, ECDH disabled; slots 2-4 secondary keys
# GenKey may regenerate, individually lockable; slot 5 clear-text data that cannot be
# written (the EUI-48 the TNGTLS device certificate carries, ASCII hex); slots 10/11/12
# device compressed certificate, signer public key (KeyConfig 0x0030), signer compressed
# certificate, here locked one by one. TNGTLS-*like*: the exact factory words of slots
# 6-9 and 13-15 (IO protection key, secure boot, AES) are not modelled (clear data).
_SLOT_CONFIG = {0: 0x0085, 1: 0x0082, 2: 0x2085, 3: 0x2085, 4: 0x2085, 5: 0x8000}
_KEY_CONFIG = {0: 0x0053, 1: 0x0053, 2: 0x0073, 3: 0x0073, 4: 0x0073, 5: 0x001C, 11: 0x0030}
_DATA_KEY_CONFIG = 0x003C  # not a key (type 7), lockable one by one
KEY_SLOTS = (0, 1, 2, 3, 4)
CERT_SLOTS = (10, 11, 12)
EUI48_SLOT = 5


def part_config(kind: str, base: bytes | bytearray) -> bytes:
    """The config zone of a ``kind`` ("tngtls" / "tflxtls") part: ``base``'s bytes 0-15
    (serial, revision) with the part's bytes 16-127."""
    from provisioner.chips.tng import PART_ADDRESSES

    cfg = bytearray(base)
    part = "trust-and-go" if kind == "tngtls" else "trustflex"
    cfg[16] = PART_ADDRESSES[part]
    cfg[17:20] = bytes(3)  # reserved, CountMatch off, ChipMode 0 (default timings)
    for slot in range(16):
        slot_config = _SLOT_CONFIG.get(slot, 0x0000)  # data: clear read, write always
        key_config = _KEY_CONFIG.get(slot, _DATA_KEY_CONFIG)
        cfg[20 + 2 * slot : 22 + 2 * slot] = slot_config.to_bytes(2, "little")
        cfg[96 + 2 * slot : 98 + 2 * slot] = key_config.to_bytes(2, "little")
    cfg[68:84] = bytes(16)  # UseLock, VolatileKeyPermission, SecureBoot, KdfIv, reserved
    cfg[90:96] = bytes(6)  # ChipOptions, X509format
    return bytes(cfg)


@contextmanager
def scratch_chip() -> Iterator[CryptoAuthChip]:
    """A throw-away part (config and data locked, certificate slots writable in clear)
    for the library to assemble a certificate on (manufacturer.issue_on)."""
    chip = EmulatedChip.blank()
    with bench(chip) as driver:
        driver.write_config(part_config("tngtls", chip.config))
        driver.lock_config(int.from_bytes(crc16(driver.read_config()), "little"))
        driver.lock_data_zone()
        yield driver


def _lock_slot(driver: CryptoAuthChip, slot: int) -> None:
    """Lock one data slot with the CRC of what it holds (Lock mode 0x02 | slot << 2)."""
    from provisioner.chips.library import ZONE_DATA
    from provisioner.chips.profile import SLOT_SIZES

    content = driver.read_zone(ZONE_DATA, slot, 0, SLOT_SIZES[slot])
    crc = int.from_bytes(crc16(content), "little")
    driver._check(driver._lib.calib_lock(driver._dev, _LOCK_SLOT | (slot << 2), crc), "lock")


def _eui48() -> bytes:
    """A locally administered unicast MAC address as the 12 hex digits TNGTLS's device
    certificate carries (element "EUI-48", slot 5, no transform)."""
    mac = bytearray(os.urandom(6))
    mac[0] = (mac[0] & 0xFC) | 0x02
    return bytes(mac).hex().upper().encode()


@dataclass(frozen=True)
class Part:
    """A pre-provisioned part and the device certificate its manufacturer made for it."""

    chip: EmulatedChip
    device_der: bytes


def pre_provisioned(
    manufacturer: EmulatedManufacturer,
    kind: str,
    serial: bytes | None = None,
    *,
    device_signer_key: ec.EllipticCurvePrivateKey | None = None,
) -> Part:
    """A ``kind`` part made as a manufacturer makes one, through the library.

    Before the data lock: config written and locked, the TNG code in OTP bytes 0-7, keys
    generated in slots 0-4, the signer certificate and a draft device certificate written
    with ``atcacert_write_cert_ext`` (the draft also fills TNGTLS's slot 5 with the EUI-48
    it carries: that slot cannot be written later). Then the data and OTP zones are
    locked, the library rebuilds the device certificate from the chip, it is signed (by
    ``device_signer_key``, default the manufacturer's signer) and its compressed form
    (``atcacert_get_comp_cert``) written to slot 10, and slots 10, 11, 12 are locked."""
    from provisioner.chips import tng
    from provisioner.chips.emulator.manufacturer import (
        check_rebuilt,
        issue_hour,
        provisional,
        sign_rebuilt,
        store_compressed,
    )
    from provisioner.chips.library import ZONE_OTP

    chip = EmulatedChip.blank(serial)
    definition = tng.definition_for(kind)
    signer_def = tng.signer_definition(definition)
    signer = device_signer_key or manufacturer.signer_key
    with bench(chip) as driver:
        driver.write_config(part_config(kind, chip.config))
        driver.lock_config(int.from_bytes(crc16(driver.read_config()), "little"))
        driver.write_zone(ZONE_OTP, 0, 0, tng.OTP_CODE[kind] + bytes(56))
        public_key = b""
        for slot in KEY_SLOTS:
            key = driver.genkey(slot)
            public_key = public_key or key  # slot 0's: the device key
        tng.write_cert(driver._dev, signer_def, manufacturer.signer_der())
        elements = {"EUI-48": _eui48()} if kind == "tngtls" else {}
        draft = provisional(
            definition, public_key, issue_hour(), manufacturer.signer_id(), elements
        )
        tng.write_cert(driver._dev, definition, draft)
        driver.lock_data_zone()
        der = sign_rebuilt(driver, definition, signer)
        store_compressed(driver, definition, der)
        check_rebuilt(driver, definition, der, signer)
        for slot in CERT_SLOTS:
            _lock_slot(driver, slot)
    return Part(chip, der)


def trust_and_go(manufacturer: EmulatedManufacturer, serial: bytes | None = None) -> EmulatedChip:
    """A Trust&GO-like part (TNGTLS definitions, I2C 0x6A) under ``manufacturer``."""
    return pre_provisioned(manufacturer, "tngtls", serial).chip


def trustflex(manufacturer: EmulatedManufacturer, serial: bytes | None = None) -> EmulatedChip:
    """A TrustFLEX-like part (TFLXTLS device definition, I2C 0x6C) under ``manufacturer``."""
    return pre_provisioned(manufacturer, "tflxtls", serial).chip


def broken_chain(
    manufacturer: EmulatedManufacturer,
    serial: bytes | None = None,
    *,
    kind: str = "tngtls",
    broken: str = "device",
) -> EmulatedChip:
    """A part whose chain does not verify against ``manufacturer``'s root.

    ``broken="device"``: the signer certificate is genuine, the device certificate is
    signed by a key that is not the signer's (a forged device certificate).
    ``broken="root"``: the whole part comes from another manufacturer (another root and
    signer), so its signer certificate does not verify under ``manufacturer``'s root."""
    from provisioner.chips.emulator.manufacturer import EmulatedManufacturer

    if broken == "device":
        rogue = ec.generate_private_key(ec.SECP256R1())
        return pre_provisioned(manufacturer, kind, serial, device_signer_key=rogue).chip
    if broken == "root":
        return pre_provisioned(EmulatedManufacturer.create(), kind, serial).chip
    raise ValueError(f"broken must be 'device' or 'root', not {broken!r}")
