"""A software CA for chip tests: the chip side needs only public certificates.

Storing certificates compressed needs the intermediate and root certificates (public
files under ``<var>/ca``) and a certificate signed by the intermediate. Chip tests sign
with a software key so they run without a token; the HSM path is exercised end to end in
tests/core and tests/e2e with SoftHSM.
"""

from __future__ import annotations

from ctypes import POINTER, c_bool, c_int, c_size_t, c_uint8, c_uint16, c_uint32, c_void_p
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.ca.issuer import (
    build_device_certificate,
    device_validity,
    key_usage,
    random_serial_number,
)
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.library import cryptoauth
from provisioner.ports import SigningRequest
from provisioner.settings import Settings

# The calib_* functions the command tests call (each takes the device handle first).
_u8p = POINTER(c_uint8)
CALIB_PROTOTYPES: dict[str, list[Any]] = {
    "calib_hw_sha2_256": [c_void_p, _u8p, c_size_t, _u8p],
    "calib_sha_base": [c_void_p, c_uint8, c_uint16, _u8p, _u8p, POINTER(c_uint16)],
    "calib_sha_start": [c_void_p],
    "calib_sha_update": [c_void_p, _u8p],
    "calib_sha_end": [c_void_p, _u8p, c_uint16, _u8p],
    "calib_counter": [c_void_p, c_uint8, c_uint16, POINTER(c_uint32)],
    "calib_counter_read": [c_void_p, c_uint16, POINTER(c_uint32)],
    "calib_counter_increment": [c_void_p, c_uint16, POINTER(c_uint32)],
    "calib_selftest": [c_void_p, c_uint8, c_uint16, _u8p],
    "calib_verify": [c_void_p, c_uint8, c_uint16, _u8p, _u8p, _u8p, _u8p],
    "calib_verify_stored": [c_void_p, _u8p, _u8p, c_uint16, POINTER(c_bool)],
    "calib_verify_stored_with_tempkey": [c_void_p, _u8p, c_uint16, POINTER(c_bool)],
    "calib_write_pubkey": [c_void_p, c_uint16, _u8p],
    "calib_nonce_load": [c_void_p, c_uint8, _u8p, c_uint16],
    "calib_nonce_rand": [c_void_p, _u8p, _u8p],
    "calib_sign_base": [c_void_p, c_uint8, c_uint16, _u8p],
    "calib_info_base": [c_void_p, c_uint8, c_uint16, _u8p],
    "calib_info_set_latch": [c_void_p, c_bool],
    "calib_info_get_latch": [c_void_p, POINTER(c_bool)],
    "calib_wakeup": [c_void_p],
    "calib_sleep": [c_void_p],
    "calib_idle": [c_void_p],
}


@pytest.fixture(scope="module")
def lib() -> Any:
    """The library with the command tests' prototypes declared."""
    library = cryptoauth()
    for name, argtypes in CALIB_PROTOTYPES.items():
        fn = getattr(library, name)
        fn.restype, fn.argtypes = c_int, argtypes
    return library


def call(chip: CryptoAuthChip, name: str, *args: Any) -> int:
    """A ``calib_*`` call on ``chip``'s device, through the driver's SIGINT guard."""
    return int(getattr(chip._lib, name)(chip._dev, *args))


@dataclass
class SoftwareCa:
    key: ec.EllipticCurvePrivateKey
    intermediate_cert: x509.Certificate
    root_cert: x509.Certificate
    name: str = "intermediate-ca"  # the key label a token CA would have


def _ca_cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    nb, na = device_validity(datetime.now(UTC), 20)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    return b.sign(issuer_key, hashes.SHA256())


def software_ca(settings: Settings) -> SoftwareCa:
    """Make a root and an intermediate and write their certificates where stations look."""
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("Test Root", root_key, None, root_key)
    inter = _ca_cert("Test Intermediate", key, root, root_key)
    settings.ca_dir.mkdir(parents=True, exist_ok=True)
    for name, cert in (("root.pem", root), ("intermediate.pem", inter)):
        (settings.ca_dir / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return SoftwareCa(key, inter, root)


def issue_for(chip: CryptoAuthChip, ca: SoftwareCa, settings: Settings) -> bytes:
    """The device certificate the issuer would make for this chip (DER)."""
    request = SigningRequest(
        device_id=1,
        batch_id=1,
        chip_serial_hex=chip.identity().serial_hex,
        public_key=b"\x04" + chip.public_key(),
        pop_challenge=b"",
        pop_signature=b"",
    )
    cert = build_device_certificate(
        request,
        ca,  # type: ignore[arg-type]
        settings.profile,
        random_serial_number(),
        datetime.now(UTC),
    )
    return cert.public_bytes(serialization.Encoding.DER)


def settings_with_ca(tmp_path: Path, **overrides: object) -> tuple[Settings, SoftwareCa]:
    settings = Settings(var_dir=tmp_path, **overrides)  # type: ignore[arg-type]
    return settings, software_ca(settings)


def declared(name: str, argtypes: list[Any], restype: Any = c_int) -> Any:
    """A function of the wheel's shared library with its prototype declared (a test module
    declares what it calls; ``atcah_*`` host functions are the independent references)."""
    fn = getattr(cryptoauth(), name)
    fn.restype, fn.argtypes = restype, argtypes
    return fn


def config_with(
    base: bytes,
    *,
    slot_config: dict[int, int] | None = None,
    key_config: dict[int, int] | None = None,
    set_bytes: dict[int, int] | None = None,
) -> bytes:
    """``base`` (128 bytes) with SlotConfig / KeyConfig words and single bytes replaced."""
    cfg = bytearray(base)
    for slot, value in (slot_config or {}).items():
        cfg[20 + 2 * slot : 22 + 2 * slot] = value.to_bytes(2, "little")
    for slot, value in (key_config or {}).items():
        cfg[96 + 2 * slot : 98 + 2 * slot] = value.to_bytes(2, "little")
    for offset, value in (set_bytes or {}).items():
        cfg[offset] = value
    return bytes(cfg)


def personalise(
    chip: CryptoAuthChip,
    config: bytes,
    *,
    slots: dict[int, bytes] | None = None,
    genkey: tuple[int, ...] = (),
    lock_data: bool = True,
) -> None:
    """Bring a blank emulated chip to ``config`` through the library, as a customer's
    personalisation would: write and lock the config (CRC checked), GenKey in ``genkey``,
    write ``slots`` in clear (before the data lock, 32-byte blocks, zero-padded), then lock
    the data zone unless told not to."""
    from provisioner.chips.crc import crc16

    chip.write_config(config)
    chip.lock_config(int.from_bytes(crc16(chip.read_config()), "little"))
    for slot in genkey:
        chip.genkey(slot)
    for slot, content in (slots or {}).items():
        padded = content + bytes(-len(content) % 32)
        chip.write_zone(2, slot, 0, padded)
    if lock_data:
        chip.lock_data_zone()


def raw_signature_verifies(public64: bytes, signature: bytes, digest: bytes) -> bool:
    """Whether a chip's raw R||S ``signature`` is over the 32-byte ``digest`` for the P-256
    key X||Y ``public64``, checked by ``cryptography`` (the host's independent view)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + public64)
    try:
        key.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


def chip_signs(chip: CryptoAuthChip, mode: int, slot: int, public64: bytes, digest: bytes) -> bool:
    """Sign (calib_sign_base ``mode``, e.g. external from TempKey 0x80 or from the digest
    buffer 0xA0) with ``slot``; True if the signature is over ``digest``."""
    from provisioner.chips.library import buf

    signature = buf(64)
    assert call(chip, "calib_sign_base", mode, slot, signature) == 0
    return raw_signature_verifies(public64, bytes(signature), digest)
