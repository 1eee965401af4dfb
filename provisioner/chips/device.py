"""One chip driven by cryptoauthlib through an explicit device handle (``atcab_*_ext``).

The same class drives silicon (the library's own I2C/HID HALs) and the emulator (the
kit-bridge HAL with Python callbacks); only the interface configuration differs.

The provisioning sequence sends only commands a check needs (issue 19): the config zone
is read once (block 0 comes with the serial), only the words that differ from the profile
are written (a 32-byte block write where a block differs in more than one word and the
library's own writer writes that block whole: config blocks 1 and 3), and the
Lock commands carry the CRC of what was written, so the chip itself refuses a zone or slot
that does not hold it; lock states learned from that read are kept by the handle while
only its own commands change them (any other call through ``_lib``, and any failed
command, forgets them).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from ctypes import byref, c_bool, c_void_p
from typing import Any

from provisioner.chips import tng
from provisioner.chips.atcacert import CERT_MEANING, NativeDefinition, device_data, read_cert
from provisioner.chips.certdef import COMP_CERT_SIZE, ChipCertChain, DeviceLoc
from provisioner.chips.crc import crc16
from provisioner.chips.interrupts import deferred_sigint
from provisioner.chips.library import (
    ATCA_CHECKMAC_VERIFY_FAILED,
    ATCA_COMM_FAIL,
    ATCA_EXECUTION_ERROR,
    ATCA_PARSE_ERROR,
    ATCA_STATUS_CRC,
    ATCA_STATUS_ECC,
    ATCA_SUCCESS,
    ATCA_WAKE_FAILED,
    ZONE_CONFIG,
    ZONE_DATA,
    buf,
    cryptoauth,
)
from provisioner.chips.profile import SLOT_SIZES, ChipProfile
from provisioner.errors import (
    ChipAbsentError,
    ChipCommandError,
    ChipError,
    ChipStateError,
    ConfigError,
    InvalidInputError,
)
from provisioner.metrics import record
from provisioner.ports import ChipIdentity

_MEANING = {
    ATCA_EXECUTION_ERROR: "execution error (0x0F): not permitted in this state",
    ATCA_PARSE_ERROR: "parse error (0x03): invalid parameters",
    ATCA_STATUS_ECC: "ECC fault (0x05)",
    ATCA_STATUS_CRC: "CRC error (0xFF) on the bus",
    ATCA_CHECKMAC_VERIFY_FAILED: "verify failed (0x01)",
    ATCA_COMM_FAIL: "communication failure",
    ATCA_WAKE_FAILED: "no response to wake",
}
_LOCK_SLOT = 0x02  # Lock mode: one data slot (slot number in bits 2-5), summary checked
_BLOCK = 32
_UNLOCKED = 0x55  # LockValue (byte 86) / LockConfig (byte 87) of an unlocked zone
_LOCK_VALUE, _LOCK_CONFIG, _SLOT_LOCKED = 86, 87, 88


def _writable_word(block: int, word: int) -> bool:
    """Config words the Write command may change: not the serial/revision (bytes 0-15) nor
    UserExtra, UserExtraAdd and the lock bytes (84-87: UpdateExtra and Lock change those)."""
    return not (block == 0 and word < 4) and not (block == 2 and word == 5)


# Config blocks the library's own writer (``calib_write_bytes_zone``) writes as one 32-byte
# block: block 0 holds the read-only serial and revision, block 2 UserExtra and the lock
# bytes, so the library writes those two word by word, and so does this driver (a 32-byte
# write over them is not what silicon is known to accept).
_BLOCK_WRITABLE = frozenset({1, 3})


class _Guarded:
    """The library, with every call made under :func:`deferred_sigint` (a Ctrl-C that lands
    in a kit-bridge callback would otherwise be swallowed and read as success).

    ``on_call`` runs before each call: the handle's public ``_lib`` uses it to forget the
    lock states it keeps, since a call it does not know (a test's or a tool's) may change
    them; the driver's own commands go through an instance without it."""

    def __init__(self, lib: Any, on_call: Callable[[], None] | None = None) -> None:
        self._lib = lib
        self._on_call = on_call

    def __getattr__(self, name: str) -> Callable[..., int]:
        fn = getattr(self._lib, name)
        on_call = self._on_call

        def call(*args: Any) -> int:
            if on_call is not None:
                on_call()
            with deferred_sigint():
                return int(fn(*args))

        return call


def _forgetting(ref: weakref.ReferenceType[CryptoAuthChip]) -> Callable[[], None]:
    """``CryptoAuthChip._forget`` through a weak reference: a handle's ``_lib`` must not
    keep the handle alive (its ``__del__`` releases the library's device)."""

    def forget() -> None:
        chip = ref()
        if chip is not None:
            chip._forget()

    return forget


class CryptoAuthChip:
    """A :class:`~provisioner.ports.SecureElement` over the unmodified cryptoauthlib."""

    def __init__(
        self,
        locator: str,
        cfg: Any,
        profile: ChipProfile,
        keepalive: Any = None,
        chain: Callable[[], ChipCertChain] | None = None,
    ) -> None:
        self.locator = locator
        self.profile = profile
        self._chain = chain  # the certificate chain's definitions, loaded when needed
        self._cfg = cfg  # the library keeps a pointer to it: keep it alive
        self._keepalive = keepalive  # e.g. the KitBridge whose callbacks cfg points to
        # What this handle knows of the chip without asking again: config block 0 (read
        # with the serial) and the whole config zone once read or written and locked, with
        # the lock bytes kept up to date by its own Lock commands. Forgotten on any failed
        # command and on any call through ``_lib`` from outside the driver.
        self._block0: bytes | None = None
        self._known: bytearray | None = None
        self._cmd = _Guarded(cryptoauth())  # the driver's own commands
        self._lib = _Guarded(cryptoauth(), on_call=_forgetting(weakref.ref(self)))
        self._dev = c_void_p()
        self._check(self._cmd.atcab_init_ext(byref(self._dev), byref(cfg)), "init")

    def _forget(self) -> None:
        self._block0 = None
        self._known = None

    # --- errors ---------------------------------------------------------------------

    def _absent(self) -> bool:
        return bool(getattr(self._keepalive, "absent", False))

    def _take_error(self) -> BaseException | None:
        take = getattr(self._keepalive, "take_error", None)
        return take() if callable(take) else None

    def _check(self, status: int, what: str) -> None:
        cause = self._take_error()
        if isinstance(cause, KeyboardInterrupt | SystemExit):
            self._forget()
            raise cause  # even if the library recovered: never swallow an interrupt
        if status == ATCA_SUCCESS:
            return
        self._forget()  # a command that failed may still have run inside the chip
        record.chip_error(status)
        if status == ATCA_WAKE_FAILED or self._absent():
            raise ChipAbsentError(f"no chip answers in {self.locator} ({what})")
        meaning = _MEANING.get(status, f"ATCA_STATUS {status}")
        if cause is not None:
            meaning += f" ({type(cause).__name__}: {cause})"
        raise ChipCommandError(
            f"chip in {self.locator}: {what} failed: {meaning}", status
        ) from cause

    # --- SecureElement ---------------------------------------------------------------

    def identity(self) -> ChipIdentity:
        """Serial (config block 0, the one Read ``atcab_read_serial_number`` sends; the
        handle keeps the block for :meth:`ensure_configured`) and revision (Info)."""
        block, rev = buf(_BLOCK), buf(4)
        self._check(
            self._cmd.atcab_read_zone_ext(self._dev, ZONE_CONFIG, 0, 0, 0, block, _BLOCK),
            "read serial",
        )
        self._check(self._cmd.atcab_info_ext(self._dev, rev), "info")
        self._block0 = bytes(block)
        if self._known is not None and self._known[:16] != self._block0[:16]:
            self._known = None  # another chip in the socket: what the handle knew is not its
        return ChipIdentity(serial=self._block0[0:4] + self._block0[8:13], revision=bytes(rev))

    def key_valid(self, slot: int) -> bool:
        """Info(KeyValid): whether the ECC private key in ``slot`` is valid."""
        out = buf(4)
        self._check(self._cmd.calib_info_base(self._dev, 0x01, slot, out), "Info KeyValid")
        return bool(out[0] == 0x01)

    def read_config(self) -> bytes:
        cfg = buf(128)
        self._check(self._cmd.atcab_read_config_zone_ext(self._dev, cfg), "read config")
        return bytes(cfg)

    def _config(self) -> bytearray:
        """The config zone, read once per handle (block 0 from :meth:`identity` if it was
        read there): 3-4 block reads, from which the lock states follow as well."""
        if self._known is not None:
            return self._known
        block0 = self._block0
        cfg = bytearray(block0 if block0 is not None else b"")
        for block in range(len(cfg) // _BLOCK, 4):
            out = buf(_BLOCK)
            self._check(
                self._cmd.atcab_read_zone_ext(self._dev, ZONE_CONFIG, 0, block, 0, out, _BLOCK),
                "read config",
            )
            cfg += bytes(out)
        self._known = cfg
        return cfg

    def config_locked(self) -> bool:
        if self._known is not None:
            return self._known[_LOCK_CONFIG] != _UNLOCKED
        flag = c_bool()
        self._check(self._cmd.atcab_is_config_locked_ext(self._dev, byref(flag)), "lock state")
        return flag.value

    def data_locked(self) -> bool:
        if self._known is not None:
            return self._known[_LOCK_VALUE] != _UNLOCKED
        flag = c_bool()
        self._check(self._cmd.atcab_is_data_locked_ext(self._dev, byref(flag)), "lock state")
        return flag.value

    def ensure_configured(self) -> None:
        """Read the config zone once; a blank chip gets only the words that differ from the
        profile written, then Lock with the CRC of the zone as it must now be: the chip
        computes the CRC of what it holds and refuses the lock on a mismatch, which proves
        every byte without reading the zone back."""
        have = self._config()
        if have[_LOCK_CONFIG] != _UNLOCKED:
            reason = self.profile.incompatibility(bytes(have))
            if reason:
                raise ChipStateError(
                    f"chip in {self.locator} has a locked config this profile cannot use: {reason}"
                )
            return
        template = self.profile.config_template()
        want = bytearray(have)
        want[16:84] = template[16:84]
        want[88:128] = template[88:128]
        self._known = None  # from here until the lock, the handle does not know the zone
        for block in range(4):
            base = block * _BLOCK
            words = [
                w
                for w in range(8)
                if _writable_word(block, w)
                and want[base + 4 * w : base + 4 * w + 4] != have[base + 4 * w : base + 4 * w + 4]
            ]
            if len(words) > 1 and block in _BLOCK_WRITABLE:  # one 32-byte write
                self._write_config_zone(block, 0, bytes(want[base : base + _BLOCK]))
                continue
            for w in words:
                self._write_config_zone(block, w, bytes(want[base + 4 * w : base + 4 * w + 4]))
        for mode, pos in ((0, 84), (1, 85)):  # UserExtra, UserExtraAdd: settable once
            if template[pos] != have[pos]:
                self._check(
                    self._cmd.calib_updateextra(self._dev, mode, template[pos]),
                    f"UpdateExtra byte {pos}",
                )
                want[pos] = template[pos]
        reason = self.profile.incompatibility(bytes(want))
        if reason:  # the profile contradicts itself: nothing the chip can fix
            raise ChipStateError(f"chip in {self.locator}: config would not fit: {reason}")
        status = self._cmd.calib_lock_config_zone_crc(
            self._dev, int.from_bytes(crc16(bytes(want)), "little")
        )
        if status == ATCA_EXECUTION_ERROR and not self._absent():
            self._check(ATCA_SUCCESS, "lock config")  # an interrupt still wins
            self._forget()
            raise ChipStateError(
                f"chip in {self.locator}: config did not take (the chip refused the config "
                "lock with the CRC of the profile's config: it holds something else)"
            )
        self._check(status, "lock config")
        want[_LOCK_CONFIG] = 0x00
        self._known = want

    def _write_config_zone(self, block: int, word: int, data: bytes) -> None:
        self._check(
            self._cmd.atcab_write_zone_ext(
                self._dev, ZONE_CONFIG, 0, block, word, buf(data), len(data)
            ),
            f"write config block {block}",
        )

    def generate_key(self) -> bytes:
        return self.genkey(self.profile.key_slot)

    def genkey(self, slot: int) -> bytes:
        """GenKey (create) in any slot; the chip decides whether its KeyConfig allows it."""
        pub = buf(64)
        self._check(self._cmd.atcab_genkey_ext(self._dev, slot, pub), f"GenKey slot {slot}")
        return bytes(pub)

    def write_config(self, config: bytes) -> None:
        self._forget()
        self._check(self._cmd.atcab_write_config_zone_ext(self._dev, buf(config)), "write config")

    def lock_config(self, crc: int) -> None:
        self._forget()
        self._check(self._cmd.calib_lock_config_zone_crc(self._dev, crc), "lock config")

    def public_key(self, slot: int | None = None) -> bytes:
        """X||Y of the private key in ``slot`` (default: the profile's key slot), computed
        by the chip (GenKey public-key mode): the private key never leaves it."""
        slot = self.profile.key_slot if slot is None else slot
        pub = buf(64)
        self._check(
            self._cmd.atcab_get_pubkey_ext(self._dev, slot, pub),
            f"GenKey (public key, slot {slot})",
        )
        return bytes(pub)

    def random(self) -> bytes:
        out = buf(32)
        self._check(self._cmd.atcab_random_ext(self._dev, out), "Random")
        return bytes(out)

    def sign_digest(self, digest: bytes, slot: int | None = None) -> bytes:
        """ECDSA P-256 over a 32-byte digest with the key in ``slot`` (default: the profile's
        key slot; a device that rotated its key signs with a rotation slot). The chip signs;
        the answer is raw R||S (64 bytes, big-endian), which is already the JWS ES256 form."""
        if len(digest) != 32:
            raise InvalidInputError("sign_digest needs a 32-byte SHA-256 digest")
        slot = self.profile.key_slot if slot is None else slot
        if not 0 <= slot <= 15:
            raise InvalidInputError(f"slot {slot} does not exist (0-15)")
        msg, sig = buf(digest), buf(64)
        self._check(self._cmd.atcab_sign_ext(self._dev, slot, msg, sig), f"Sign (slot {slot})")
        return bytes(sig)

    def verify_extern(self, digest: bytes, signature: bytes, public_key: bytes) -> bool:
        ok = c_bool()
        status = self._cmd.atcab_verify_extern_ext(
            self._dev, buf(digest), buf(signature), buf(public_key), byref(ok)
        )
        self._check(status, "Verify")
        return ok.value

    def read_zone(self, zone: int, slot: int, offset: int, length: int) -> bytes:
        out = buf(length)
        self._check(
            self._cmd.atcab_read_bytes_zone_ext(self._dev, zone, slot, offset, out, length),
            f"Read zone {zone} slot {slot}",
        )
        return bytes(out)

    def write_zone(self, zone: int, slot: int, offset: int, data: bytes) -> None:
        if zone == ZONE_CONFIG:
            self._forget()
        self._check(
            self._cmd.atcab_write_bytes_zone_ext(
                self._dev, zone, slot, offset, buf(data), len(data)
            ),
            f"Write zone {zone} slot {slot}",
        )

    def lock_data_zone(self) -> None:
        """Lock the data and OTP zones (idempotent). Without a summary CRC: the host cannot
        know the private key slot's contents, which is the point."""
        if not self.data_locked():
            self._check(self._cmd.atcab_lock_data_zone_ext(self._dev), "Lock data zone")
            if self._known is not None:
                self._known[_LOCK_VALUE] = 0x00

    def locked_slots(self) -> set[int]:
        """The data slots locked one by one (config bytes 88-89, SlotLocked: 0 = locked)."""
        if self._known is not None:
            mask = int.from_bytes(self._known[_SLOT_LOCKED : _SLOT_LOCKED + 2], "little")
        else:
            mask = int.from_bytes(self.read_zone(0, 0, 88, 2), "little")
        return {slot for slot in range(16) if not (mask >> slot) & 1}

    def slot_locked(self, slot: int) -> bool:
        return slot in self.locked_slots()

    def has_certificate(self) -> bool:
        """Whether the chip already carries a certificate: a certificate slot is locked, or
        the device certificate slot holds something other than blank bytes."""
        if self.locked_slots() & set(self.profile.cert_slots):
            return True
        comp = self.read_zone(ZONE_DATA, self.profile.device_cert_slot, 0, COMP_CERT_SIZE)
        return comp not in (bytes(COMP_CERT_SIZE), b"\xff" * COMP_CERT_SIZE)

    # --- compressed certificates ------------------------------------------------------

    def _definitions(self) -> tuple[ChipCertChain, NativeDefinition, NativeDefinition]:
        if self._chain is None:
            raise ConfigError(f"chip in {self.locator}: no certificate chain configured")
        chain = self._chain()
        signer = NativeDefinition(chain.signer)
        return chain, NativeDefinition(chain.device, signer), signer

    def _cert_check(self, status: int, what: str) -> None:
        if status in CERT_MEANING:
            raise ChipStateError(f"chip in {self.locator}: {what}: {CERT_MEANING[status]}")
        self._check(status, what)

    def _read_cert(self, native: NativeDefinition, ca_public_key: bytes, what: str) -> bytes:
        with deferred_sigint():
            status, der = read_cert(self._dev, native, ca_public_key)
        self._cert_check(status, what)
        return der

    def write_certificate(self, der: bytes) -> None:
        """Store the device certificate and its signer compressed (Microchip's atcacert
        format: the library's ``atcacert_get_device_data`` encodes each slot's blocks, which
        go to the chip as 32-byte writes, as ``atcacert_write_cert`` does), have the library
        rebuild both certificates from the chip byte for byte, then lock each certificate
        slot with the CRC of what was written: the chip refuses the Lock of a slot that
        holds anything else, so no slot is read back for its CRC (only the part of the
        serial slot nothing was written to).

        Needs the data zone locked first (reading data slots needs it). Resumable: slots
        already locked are only accepted if the chip rebuilds exactly this certificate; the
        others are locked with the CRC of the certificate's encoding where it fills whole
        blocks, and of what the chip holds elsewhere (an earlier writer's padding)."""
        chain, device, signer = self._definitions()
        locked = self.locked_slots() & set(self.profile.cert_slots)
        started = bool(locked)
        planned = {
            **self._encode(signer, chain.signer_der, "encode signer certificate"),
            **self._encode(device, der, "encode device certificate"),
        }
        if started:  # written by an earlier attempt: trust only what the encoding fills
            covered = {**_covered_blocks(signer), **_covered_blocks(device)}
            planned = {
                slot: {b: data for b, data in blocks.items() if b in covered.get(slot, ())}
                for slot, blocks in planned.items()
            }
        else:
            for slot, blocks in planned.items():  # the signer's slots first
                for block, data in blocks.items():
                    self._check(
                        self._cmd.atcab_write_zone_ext(
                            self._dev, ZONE_DATA, slot, block, 0, buf(data), _BLOCK
                        ),
                        f"write certificate slot {slot} block {block}",
                    )
        have_signer = self._read_cert(signer, chain.root_public_key, "read signer certificate")
        have = self._read_cert(device, chain.signer_public_key, "read device certificate")
        if (have, have_signer) != (der, chain.signer_der):
            if started:
                raise ChipStateError(
                    f"chip in {self.locator} is already locked with another certificate "
                    "(provisioned elsewhere?)"
                )
            raise ChipError(
                f"chip in {self.locator}: the certificate read back differs from the one "
                "written (does the device profile match the signer's?)"
            )
        for slot in self.profile.cert_slots:  # the device certificate's slot last
            if slot in locked:
                continue
            known = planned.get(slot, {})
            crc = int.from_bytes(crc16(self._slot_content(slot, known)), "little")
            status = self._cmd.calib_lock(self._dev, _LOCK_SLOT | (slot << 2), crc)
            if status == ATCA_EXECUTION_ERROR and known and not self._absent():
                self._check(ATCA_SUCCESS, f"Lock slot {slot}")  # an interrupt still wins
                self._forget()
                raise ChipError(
                    f"chip in {self.locator}: slot {slot} does not hold what was written "
                    "(the chip refused to lock it with the CRC of the certificate's data)"
                )
            self._check(status, f"Lock slot {slot}")
            if self._known is not None:
                mask = int.from_bytes(self._known[_SLOT_LOCKED : _SLOT_LOCKED + 2], "little")
                mask &= ~(1 << slot)
                self._known[_SLOT_LOCKED : _SLOT_LOCKED + 2] = mask.to_bytes(2, "little")

    def _encode(
        self, native: NativeDefinition, der: bytes, what: str
    ) -> dict[int, dict[int, bytes]]:
        """What one certificate puts in each slot, in whole 32-byte blocks (slot -> block
        -> 32 bytes; bytes no element covers are zeros). No chip command."""
        out: dict[int, dict[int, bytes]] = {}
        for slot, (first, last) in _block_ranges(native).items():
            loc = DeviceLoc(ZONE_DATA, slot, False, first * _BLOCK, (last - first + 1) * _BLOCK)
            status, data = device_data(native, der, loc)
            self._cert_check(status, what)
            out[slot] = {
                block: data[(block - first) * _BLOCK : (block - first + 1) * _BLOCK]
                for block in range(first, last + 1)
            }
        return out

    def _slot_content(self, slot: int, written: dict[int, bytes]) -> bytes:
        """A data slot's contents: the blocks written by this handle as written, the others
        read from the chip (a 72-byte slot's last block holds 8 bytes)."""
        size = SLOT_SIZES[slot]
        content = bytearray()
        for block in range((size + _BLOCK - 1) // _BLOCK):
            n = min(_BLOCK, size - block * _BLOCK)
            if block in written:
                content += written[block][:n]
            else:
                content += self.read_zone(ZONE_DATA, slot, block * _BLOCK, n)
        return bytes(content)

    def read_certificate(self) -> bytes:
        """The device certificate, rebuilt by the library from the chip's compressed form."""
        chain, device, _ = self._definitions()
        return self._read_cert(device, chain.signer_public_key, "read device certificate")

    def read_signer_certificate(self) -> bytes:
        """The signer (intermediate CA) certificate, rebuilt from slots 11 and 12."""
        chain, _, signer = self._definitions()
        return self._read_cert(signer, chain.root_public_key, "read signer certificate")

    # --- pre-provisioned parts (Trust&GO, TrustFLEX) ---------------------------------

    def read_factory_certificates(self, root_public_key: bytes) -> tng.FactoryCertificates:
        """The device and signer certificates a pre-provisioned part carries, rebuilt by the
        library from its TNG definitions: the OTP code picks the device definition
        (``tng_get_device_cert_def_ext``), its ``ca_cert_def`` is the signer's. The signer
        certificate's authority key ID comes from ``root_public_key`` (X||Y, the root this
        line trusts), the device certificate's from the signer certificate's key.

        Nothing is verified here: the caller verifies the chain and proof of possession.
        Raises :class:`ChipStateError` for a chip without a TNG code or certificates
        (:class:`ChipAbsentError` if the chip is gone)."""
        if len(root_public_key) != 64:
            raise InvalidInputError("the root public key must be X||Y (64 bytes)")
        try:
            definition = tng.device_definition(self._dev)
            signer_der = tng.read_cert(
                self._dev, tng.signer_definition(definition), root_public_key
            )
            signer_key = tng.public_key_of(signer_der)
            device_der = tng.read_cert(self._dev, definition, signer_key)
            kind = tng.kind_of(definition)
        except tng.TngError as exc:
            if exc.status == ATCA_WAKE_FAILED or self._absent():
                self._check(exc.status, f"read factory certificates ({exc})")  # absent
            raise ChipStateError(
                f"chip in {self.locator} carries no factory (TNG) certificate the library "
                f"can read: {exc}"
            ) from exc
        except ValueError as exc:  # the rebuilt signer certificate does not parse
            raise ChipStateError(
                f"chip in {self.locator}: its signer certificate is not a certificate ({exc})"
            ) from exc
        return tng.FactoryCertificates(
            device_der=device_der,
            signer_der=signer_der,
            kind=kind,
            key_slot=tng.private_key_slot(definition),
        )

    def close(self) -> None:
        if self._dev:
            self._cmd.atcab_release_ext(byref(self._dev))
            self._dev = c_void_p()

    def __enter__(self) -> CryptoAuthChip:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _covered_blocks(native: NativeDefinition) -> dict[int, set[int]]:
    """Per data slot, the blocks whose every byte (within the slot) some element of the
    definition fills: what a certificate determines regardless of who wrote it."""
    defn = native.defn
    filled: dict[int, set[int]] = {}
    for loc in (defn.comp_cert, defn.cert_sn, defn.public_key):
        if loc.zone == ZONE_DATA and not loc.is_genkey and loc.count:
            filled.setdefault(loc.slot, set()).update(range(loc.offset, loc.offset + loc.count))
    out: dict[int, set[int]] = {}
    for slot, offsets in filled.items():
        size = SLOT_SIZES[slot]
        out[slot] = {
            block
            for block in range((size + _BLOCK - 1) // _BLOCK)
            if offsets.issuperset(range(block * _BLOCK, min(size, (block + 1) * _BLOCK)))
        }
    return out


def _block_ranges(native: NativeDefinition) -> dict[int, tuple[int, int]]:
    """The data slots a definition writes, each with the first and last 32-byte block its
    elements touch (the public key of a GenKey slot is generated, never written)."""
    defn = native.defn
    ranges: dict[int, tuple[int, int]] = {}
    for loc in (defn.comp_cert, defn.cert_sn, defn.public_key):
        if loc.zone != ZONE_DATA or loc.is_genkey or not loc.count:
            continue
        first, last = loc.offset // _BLOCK, (loc.offset + loc.count - 1) // _BLOCK
        if loc.slot in ranges:
            first, last = min(first, ranges[loc.slot][0]), max(last, ranges[loc.slot][1])
        ranges[loc.slot] = (first, last)
    return ranges
