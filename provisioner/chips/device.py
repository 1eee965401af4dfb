"""One chip driven by cryptoauthlib through an explicit device handle (``atcab_*_ext``).

The same class drives silicon (the library's own I2C/HID HALs) and the emulator (the
kit-bridge HAL with Python callbacks); only the interface configuration differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from ctypes import byref, c_bool, c_void_p
from typing import Any

from provisioner.chips import tng
from provisioner.chips.atcacert import CERT_MEANING, NativeDefinition, read_cert, write_cert
from provisioner.chips.certdef import COMP_CERT_SIZE, ChipCertChain
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


class _Guarded:
    """The library, with every call made under :func:`deferred_sigint` (a Ctrl-C that lands
    in a kit-bridge callback would otherwise be swallowed and read as success)."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib

    def __getattr__(self, name: str) -> Callable[..., int]:
        fn = getattr(self._lib, name)

        def call(*args: Any) -> int:
            with deferred_sigint():
                return int(fn(*args))

        return call


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
        self._lib = _Guarded(cryptoauth())
        self._dev = c_void_p()
        self._check(self._lib.atcab_init_ext(byref(self._dev), byref(cfg)), "init")

    # --- errors ---------------------------------------------------------------------

    def _absent(self) -> bool:
        return bool(getattr(self._keepalive, "absent", False))

    def _take_error(self) -> BaseException | None:
        take = getattr(self._keepalive, "take_error", None)
        return take() if callable(take) else None

    def _check(self, status: int, what: str) -> None:
        cause = self._take_error()
        if isinstance(cause, KeyboardInterrupt | SystemExit):
            raise cause  # even if the library recovered: never swallow an interrupt
        if status == ATCA_SUCCESS:
            return
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
        serial, rev = buf(9), buf(4)
        self._check(self._lib.atcab_read_serial_number_ext(self._dev, serial), "read serial")
        self._check(self._lib.atcab_info_ext(self._dev, rev), "info")
        return ChipIdentity(serial=bytes(serial), revision=bytes(rev))

    def key_valid(self, slot: int) -> bool:
        """Info(KeyValid): whether the ECC private key in ``slot`` is valid."""
        out = buf(4)
        self._check(self._lib.calib_info_base(self._dev, 0x01, slot, out), "Info KeyValid")
        return bool(out[0] == 0x01)

    def read_config(self) -> bytes:
        cfg = buf(128)
        self._check(self._lib.atcab_read_config_zone_ext(self._dev, cfg), "read config")
        return bytes(cfg)

    def config_locked(self) -> bool:
        flag = c_bool()
        self._check(self._lib.atcab_is_config_locked_ext(self._dev, byref(flag)), "lock state")
        return flag.value

    def data_locked(self) -> bool:
        flag = c_bool()
        self._check(self._lib.atcab_is_data_locked_ext(self._dev, byref(flag)), "lock state")
        return flag.value

    def ensure_configured(self) -> None:
        if not self.config_locked():
            self.write_config(self.profile.config_template())
            written = self.read_config()
            reason = self.profile.incompatibility(written)
            if reason:
                raise ChipStateError(f"chip in {self.locator}: config did not take: {reason}")
            self.lock_config(int.from_bytes(crc16(written), "little"))
            return
        reason = self.profile.incompatibility(self.read_config())
        if reason:
            raise ChipStateError(
                f"chip in {self.locator} has a locked config this profile cannot use: {reason}"
            )

    def generate_key(self) -> bytes:
        return self.genkey(self.profile.key_slot)

    def genkey(self, slot: int) -> bytes:
        """GenKey (create) in any slot; the chip decides whether its KeyConfig allows it."""
        pub = buf(64)
        self._check(self._lib.atcab_genkey_ext(self._dev, slot, pub), f"GenKey slot {slot}")
        return bytes(pub)

    def write_config(self, config: bytes) -> None:
        self._check(self._lib.atcab_write_config_zone_ext(self._dev, buf(config)), "write config")

    def lock_config(self, crc: int) -> None:
        self._check(self._lib.calib_lock_config_zone_crc(self._dev, crc), "lock config")

    def public_key(self, slot: int | None = None) -> bytes:
        """X||Y of the private key in ``slot`` (default: the profile's key slot), computed
        by the chip (GenKey public-key mode): the private key never leaves it."""
        slot = self.profile.key_slot if slot is None else slot
        pub = buf(64)
        self._check(
            self._lib.atcab_get_pubkey_ext(self._dev, slot, pub),
            f"GenKey (public key, slot {slot})",
        )
        return bytes(pub)

    def random(self) -> bytes:
        out = buf(32)
        self._check(self._lib.atcab_random_ext(self._dev, out), "Random")
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
        self._check(self._lib.atcab_sign_ext(self._dev, slot, msg, sig), f"Sign (slot {slot})")
        return bytes(sig)

    def verify_extern(self, digest: bytes, signature: bytes, public_key: bytes) -> bool:
        ok = c_bool()
        status = self._lib.atcab_verify_extern_ext(
            self._dev, buf(digest), buf(signature), buf(public_key), byref(ok)
        )
        self._check(status, "Verify")
        return ok.value

    def read_zone(self, zone: int, slot: int, offset: int, length: int) -> bytes:
        out = buf(length)
        self._check(
            self._lib.atcab_read_bytes_zone_ext(self._dev, zone, slot, offset, out, length),
            f"Read zone {zone} slot {slot}",
        )
        return bytes(out)

    def write_zone(self, zone: int, slot: int, offset: int, data: bytes) -> None:
        self._check(
            self._lib.atcab_write_bytes_zone_ext(
                self._dev, zone, slot, offset, buf(data), len(data)
            ),
            f"Write zone {zone} slot {slot}",
        )

    def lock_data_zone(self) -> None:
        """Lock the data and OTP zones (idempotent). Without a summary CRC: the host cannot
        know the private key slot's contents, which is the point."""
        if not self.data_locked():
            self._check(self._lib.atcab_lock_data_zone_ext(self._dev), "Lock data zone")

    def locked_slots(self) -> set[int]:
        """The data slots locked one by one (config bytes 88-89, SlotLocked: 0 = locked)."""
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
        format, through the library's own writer), read both back byte for byte, then lock
        each certificate slot with the CRC of what the chip holds.

        Needs the data zone locked first (reading data slots needs it). Resumable: slots
        already locked are only accepted if the chip rebuilds exactly this certificate."""
        chain, device, signer = self._definitions()
        locked = self.locked_slots() & set(self.profile.cert_slots)
        started = bool(locked)
        if not started:
            for native, blob, what in (
                (signer, chain.signer_der, "write signer certificate"),
                (device, der, "write device certificate"),
            ):
                with deferred_sigint():
                    status = write_cert(self._dev, native, blob)
                self._cert_check(status, what)
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
            content = self.read_zone(ZONE_DATA, slot, 0, SLOT_SIZES[slot])
            crc = int.from_bytes(crc16(content), "little")
            self._check(
                self._lib.calib_lock(self._dev, _LOCK_SLOT | (slot << 2), crc),
                f"Lock slot {slot}",
            )

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
            self._lib.atcab_release_ext(byref(self._dev))
            self._dev = c_void_p()

    def __enter__(self) -> CryptoAuthChip:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
