"""One chip driven by cryptoauthlib through an explicit device handle (``atcab_*_ext``).

The same class drives silicon (the library's own I2C/HID HALs) and the emulator (the
kit-bridge HAL with Python callbacks); only the interface configuration differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from ctypes import byref, c_bool, c_void_p
from typing import Any

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
    ChipStateError,
    InvalidInputError,
)
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
_CERT_LEN_BYTES = 2
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

    def __init__(self, locator: str, cfg: Any, profile: ChipProfile, keepalive: Any = None) -> None:
        self.locator = locator
        self.profile = profile
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

    def public_key(self) -> bytes:
        pub = buf(64)
        self._check(
            self._lib.atcab_get_pubkey_ext(self._dev, self.profile.key_slot, pub),
            "GenKey (public key)",
        )
        return bytes(pub)

    def random(self) -> bytes:
        out = buf(32)
        self._check(self._lib.atcab_random_ext(self._dev, out), "Random")
        return bytes(out)

    def sign_digest(self, digest: bytes) -> bytes:
        if len(digest) != 32:
            raise InvalidInputError("sign_digest needs a 32-byte SHA-256 digest")
        msg, sig = buf(digest), buf(64)
        self._check(self._lib.atcab_sign_ext(self._dev, self.profile.key_slot, msg, sig), "Sign")
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

    def slot_locked(self, slot: int) -> bool:
        mask = int.from_bytes(self.read_zone(0, 0, 88, 2), "little")  # SlotLocked, 1 = open
        return not (mask >> slot) & 1

    def has_certificate(self) -> bool:
        """Whether the certificate slots hold a (length-prefixed) certificate."""
        try:
            self.read_certificate()
        except ChipStateError:
            return False
        return True

    def write_certificate(self, der: bytes) -> None:
        """Length-prefixed DER across the certificate slots, each then locked for good.

        Needs the data zone locked first (the read-back needs it too). Each slot is written
        whole and locked with the CRC of exactly what was written, so the chip confirms its
        contents. Skeleton format; the chip issue replaces it with the compressed format."""
        cap = self.profile.cert_capacity - _CERT_LEN_BYTES
        if len(der) > cap:
            raise InvalidInputError(
                f"certificate is {len(der)} bytes; slots {self.profile.cert_slots} hold {cap}"
            )
        if all(self.slot_locked(s) for s in self.profile.cert_slots):
            if self.read_certificate() != der:
                raise ChipStateError(
                    f"chip in {self.locator} is already locked with another certificate "
                    "(provisioned elsewhere?)"
                )
            return
        blob = len(der).to_bytes(_CERT_LEN_BYTES, "big") + der
        pos = 0
        for slot in self.profile.cert_slots:
            size = SLOT_SIZES[slot]
            chunk = blob[pos : pos + size].ljust(size, b"\x00")
            pos += size
            if self.slot_locked(slot):
                continue  # a resumed write: locked slots were checked by their lock CRC
            self.write_zone(ZONE_DATA, slot, 0, chunk)
            crc = int.from_bytes(crc16(chunk), "little")
            self._check(
                self._lib.calib_lock(self._dev, _LOCK_SLOT | (slot << 2), crc),
                f"Lock slot {slot}",
            )

    def read_certificate(self) -> bytes:
        first = self.profile.cert_slots[0]
        head = self.read_zone(ZONE_DATA, first, 0, 32)
        n = int.from_bytes(head[:_CERT_LEN_BYTES], "big")
        total = _CERT_LEN_BYTES + n
        if n == 0 or total > self.profile.cert_capacity:
            raise ChipStateError(f"chip in {self.locator} holds no certificate")
        blob = b""
        for slot in self.profile.cert_slots:
            if len(blob) >= total:
                break
            size = SLOT_SIZES[slot]
            want = min(size, total - len(blob))
            if size % 32 == 0:
                want += -want % 32
            blob += self.read_zone(ZONE_DATA, slot, 0, want)[:size]
        return blob[_CERT_LEN_BYTES:total]

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
