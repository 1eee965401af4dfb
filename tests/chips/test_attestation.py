"""Key attestation through the unmodified library: GenKey digest mode (0x08, and 0x10 over
a stored public key with OtherData) loads TempKey with the digest of a public key, and
Sign internal (0x00, 0x40 with the full serial) signs a message built from TempKey and the
config. The expected digests come from cryptoauthlib's own host functions
(``atcah_gen_key_msg``, ``atcah_config_to_sign_internal``, ``atcah_sign_internal_msg``),
the signatures are checked with ``cryptography``: never the emulator checking itself."""

from __future__ import annotations

from collections.abc import Iterator
from ctypes import (
    POINTER,
    Structure,
    byref,
    c_bool,
    c_int,
    c_size_t,
    c_uint,
    c_uint8,
    c_uint16,
    c_void_p,
    pointer,
)
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.chips.connector import Connector
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.library import (
    ATCA_EXECUTION_ERROR,
    ATCA_PARSE_ERROR,
    ATCA_SUCCESS,
    buf,
)
from provisioner.settings import Settings
from tests.chips.conftest import call, config_with, declared, personalise, raw_signature_verifies

_u8p = POINTER(c_uint8)
ATECC608 = 3  # ATCADeviceType (cryptoauthlib/iface.py)
DEVICE_KEY, ATTESTATION_KEY, DATA_SLOT, STORED_PUBLIC = 0, 1, 8, 9
GENKEY_PUBLIC, GENKEY_CREATE, GENKEY_DIGEST, GENKEY_PUBKEY_DIGEST = 0x00, 0x04, 0x08, 0x10
SIGN_EXTERNAL = 0x80


class TempKeyFlags(Structure):
    """cryptoauthlib's atca_temp_key_t (lib/host/atca_host.h)."""

    _fields_ = [
        ("value", c_uint8 * 64),
        ("key_id", c_uint, 4),
        ("source_flag", c_uint, 1),
        ("gen_dig_data", c_uint, 1),
        ("gen_key_data", c_uint, 1),
        ("no_mac_flag", c_uint, 1),
        ("valid", c_uint, 1),
        ("is_64", c_uint8),
    ]


class GenKeyInOut(Structure):
    """atca_gen_key_in_out_t."""

    _fields_ = [
        ("mode", c_uint8),
        ("key_id", c_uint16),
        ("public_key", _u8p),
        ("public_key_size", c_size_t),
        ("other_data", _u8p),
        ("sn", _u8p),
        ("temp_key", POINTER(TempKeyFlags)),
    ]


class SignInternalInOut(Structure):
    """atca_sign_internal_in_out_t."""

    _fields_ = [
        ("mode", c_uint8),
        ("key_id", c_uint16),
        ("slot_config", c_uint16),
        ("key_config", c_uint16),
        ("use_flag", c_uint8),
        ("update_count", c_uint8),
        ("is_slot_locked", c_bool),
        ("for_invalidate", c_bool),
        ("sn", _u8p),
        ("temp_key", POINTER(TempKeyFlags)),
        ("message", _u8p),
        ("verify_other_data", _u8p),
        ("digest", _u8p),
    ]


PROTOTYPES: dict[str, list[Any]] = {
    "calib_genkey_base": [c_void_p, c_uint8, c_uint16, _u8p, _u8p],
    "calib_sign_internal": [c_void_p, c_uint16, c_bool, c_bool, _u8p],
    "calib_sign_base": [c_void_p, c_uint8, c_uint16, _u8p],
    "calib_nonce_load": [c_void_p, c_uint8, _u8p, c_uint16],
    "calib_info_base": [c_void_p, c_uint8, c_uint16, _u8p],
    "calib_sleep": [c_void_p],
    "calib_write_pubkey": [c_void_p, c_uint16, _u8p],
    "atcah_gen_key_msg": [POINTER(GenKeyInOut)],
    "atcah_config_to_sign_internal": [c_int, POINTER(SignInternalInOut), _u8p],
    "atcah_sign_internal_msg": [c_int, POINTER(SignInternalInOut)],
}

# SlotConfig: 0x2085 secret, external sign, ECDH, GenKey allowed; 0x0082 secret, internal
# signatures only (the attestation key). KeyConfig 0x0033 P-256 private, 0x0030 P-256
# public (no validation), 0x003C data.
LAYOUT = {
    "slot_config": {DEVICE_KEY: 0x2085, ATTESTATION_KEY: 0x0082, DATA_SLOT: 0, STORED_PUBLIC: 0},
    "key_config": {
        DEVICE_KEY: 0x0033,
        ATTESTATION_KEY: 0x0033,
        DATA_SLOT: 0x003C,
        STORED_PUBLIC: 0x0030,
    },
}
STORED_KEY = ec.generate_private_key(ec.SECP256R1())


def point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


@pytest.fixture(scope="module")
def lib() -> None:
    for name, argtypes in PROTOTYPES.items():
        declared(name, argtypes)


@pytest.fixture
def chip(lib: None, tmp_path: Path) -> Iterator[CryptoAuthChip]:
    connector = Connector(Settings(var_dir=tmp_path))
    connector.jig("line1").insert_blank(0)
    c = connector.open("emulated:line1/0")
    config = config_with(c.profile.config_template(), **LAYOUT)
    personalise(c, config, genkey=(DEVICE_KEY, ATTESTATION_KEY), lock_data=False)
    # the library writes the public key in the slot's 72-byte padded format
    assert call(c, "calib_write_pubkey", STORED_PUBLIC, buf(point(STORED_KEY))) == 0
    c.lock_data_zone()
    yield c
    c.close()


def state(chip: CryptoAuthChip) -> bytes:
    out = buf(4)
    assert call(chip, "calib_info_base", 0x02, 0, out) == ATCA_SUCCESS
    return bytes(out)


def verifies(public: bytes, signature: bytes, digest: bytes) -> bool:
    return raw_signature_verifies(public, signature, digest)


def host_tempkey(nonce: bytes) -> TempKeyFlags:
    """TempKey as the host models it after Nonce pass-through: SourceFlag 1 (input)."""
    tk = TempKeyFlags()
    tk.value[:32] = list(nonce)
    tk.source_flag, tk.valid = 1, 1
    return tk


def host_genkey_digest(
    tk: TempKeyFlags,
    serial: bytes,
    mode: int,
    key_id: int,
    public: bytes,
    other_data: bytes | None = None,
) -> None:
    """atcah_gen_key_msg: TempKey (and its flags) after GenKey's digest, in place."""
    pub, sn = buf(public), buf(serial)
    other = buf(other_data) if other_data is not None else None
    param = GenKeyInOut(mode, key_id, pub, len(public), other, sn, pointer(tk))
    assert call_host("atcah_gen_key_msg", byref(param)) == ATCA_SUCCESS


def host_sign_internal_digest(
    tk: TempKeyFlags, config: bytes, serial: bytes, mode: int, key_id: int
) -> tuple[bytes, bytes]:
    """The 55-byte message and its digest Sign internal signs, per the host functions."""
    sn, message, digest, cfg = buf(serial), buf(55), buf(32), buf(config)
    param = SignInternalInOut()
    param.mode, param.key_id, param.sn, param.temp_key = mode, key_id, sn, pointer(tk)
    param.message, param.digest = message, digest
    assert call_host("atcah_config_to_sign_internal", ATECC608, byref(param), cfg) == 0
    assert call_host("atcah_sign_internal_msg", ATECC608, byref(param)) == ATCA_SUCCESS
    return bytes(message), bytes(digest)


def call_host(name: str, *args: Any) -> int:
    return int(declared(name, PROTOTYPES[name])(*args))


# --- key attestation -------------------------------------------------------------------


@pytest.mark.parametrize("full_serial", [False, True])
@pytest.mark.parametrize("genkey_mode", [GENKEY_PUBLIC, GENKEY_CREATE])
def test_key_attestation_verifies_on_the_host(
    chip: CryptoAuthChip, full_serial: bool, genkey_mode: int
) -> None:
    """GenKey digest of the device key, internal Sign with the attestation key: the host
    rebuilds the signed message from the public key, the nonce and the config."""
    serial, config = chip.identity().serial, chip.read_config()
    attestation_public = chip.public_key(ATTESTATION_KEY)
    nonce = bytes(range(1, 33))
    assert call(chip, "calib_nonce_load", 0x00, buf(nonce), 32) == ATCA_SUCCESS
    mode = GENKEY_DIGEST | genkey_mode
    public = buf(64)
    assert call(chip, "calib_genkey_base", mode, DEVICE_KEY, None, public) == ATCA_SUCCESS
    assert bytes(public) == chip.public_key(DEVICE_KEY)  # the (new) key, returned
    signature = buf(64)
    status = call(chip, "calib_sign_internal", ATTESTATION_KEY, False, full_serial, signature)
    assert status == ATCA_SUCCESS

    tk = host_tempkey(nonce)
    host_genkey_digest(tk, serial, mode, DEVICE_KEY, bytes(public))
    sign_mode = 0x40 if full_serial else 0x00
    message, digest = host_sign_internal_digest(tk, config, serial, sign_mode, ATTESTATION_KEY)
    assert verifies(attestation_public, bytes(signature), digest)
    assert message[36:40] == config[20:22] + config[96:98]  # the attested key's config
    assert (message[44:48] == serial[4:8]) is full_serial


def test_attestation_of_a_stored_public_key_with_other_data(chip: CryptoAuthChip) -> None:
    """GenKey 0x10: the digest of the public key in a public-key slot, OtherData in place
    of mode and KeyID; status only (the key is not output)."""
    serial, config = chip.identity().serial, chip.read_config()
    nonce, other = bytes(32), b"\x10\x20\x30"
    assert call(chip, "calib_nonce_load", 0x00, buf(nonce), 32) == ATCA_SUCCESS
    mode = GENKEY_PUBKEY_DIGEST
    # status only (given a public-key buffer, the library reports the short answer as
    # ATCA_RX_FAIL)
    assert call(chip, "calib_genkey_base", mode, STORED_PUBLIC, buf(other), None) == 0
    assert state(chip)[0] == 0x40 | 0x10 | STORED_PUBLIC  # GenKeyData, SourceFlag, KeyID
    signature = buf(64)
    assert call(chip, "calib_sign_internal", ATTESTATION_KEY, False, True, signature) == 0
    tk = host_tempkey(nonce)
    host_genkey_digest(tk, serial, mode, STORED_PUBLIC, point(STORED_KEY), other)
    _, digest = host_sign_internal_digest(tk, config, serial, 0x40, ATTESTATION_KEY)
    assert verifies(chip.public_key(ATTESTATION_KEY), bytes(signature), digest)


def test_genkey_digest_mode_changes_tempkey_as_the_datasheet_says(chip: CryptoAuthChip) -> None:
    """Info(State) before and after; TempKey's value equals atcah_gen_key_msg's digest
    (proved by signing TempKey externally with the device key)."""
    serial = chip.identity().serial
    device_public = chip.public_key(DEVICE_KEY)
    assert not state(chip)[1] & 0x80  # TempKey invalid
    nonce = bytes(range(100, 132))
    assert call(chip, "calib_nonce_load", 0x00, buf(nonce), 32) == ATCA_SUCCESS
    assert state(chip)[:2] == bytes([0x10, 0x80])  # SourceFlag input, valid, no GenKeyData
    assert call(chip, "calib_genkey_base", GENKEY_PUBLIC, DEVICE_KEY, None, buf(64)) == 0
    assert state(chip)[:2] == bytes([0x10, 0x80])  # public-key mode: no digest, unchanged
    mode = GENKEY_DIGEST
    assert call(chip, "calib_genkey_base", mode, ATTESTATION_KEY, None, buf(64)) == 0
    assert state(chip)[:2] == bytes([0x40 | 0x10 | ATTESTATION_KEY, 0x80])
    tk = host_tempkey(nonce)
    host_genkey_digest(tk, serial, mode, ATTESTATION_KEY, chip.public_key(ATTESTATION_KEY))
    assert tk.gen_key_data == 1 and tk.key_id == ATTESTATION_KEY
    signature = buf(64)
    assert call(chip, "calib_sign_base", SIGN_EXTERNAL, DEVICE_KEY, signature) == 0
    assert verifies(device_public, bytes(signature), bytes(tk.value[:32]))


# --- refusals --------------------------------------------------------------------------


def test_attestation_refusals(chip: CryptoAuthChip) -> None:
    sig, public = buf(64), buf(64)
    # GenKey digest needs a valid TempKey to hash
    status = call(chip, "calib_genkey_base", GENKEY_DIGEST, DEVICE_KEY, None, public)
    assert status == ATCA_EXECUTION_ERROR
    # Sign internal: no TempKey; a TempKey from Nonce alone (not GenDig/GenKey)
    assert call(chip, "calib_sign_internal", ATTESTATION_KEY, False, False, sig) == (
        ATCA_EXECUTION_ERROR
    )
    assert call(chip, "calib_nonce_load", 0x00, buf(bytes(32)), 32) == ATCA_SUCCESS
    assert call(chip, "calib_sign_internal", ATTESTATION_KEY, False, False, sig) == (
        ATCA_EXECUTION_ERROR
    )
    # the device key may not sign internal messages (SlotConfig bit 1 clear) ...
    assert call(chip, "calib_genkey_base", GENKEY_DIGEST, DEVICE_KEY, None, public) == 0
    assert call(chip, "calib_sign_internal", DEVICE_KEY, False, False, sig) == (
        ATCA_EXECUTION_ERROR
    )
    # ... nor the attestation key external ones (SlotConfig bit 0 clear)
    assert call(chip, "calib_nonce_load", 0x00, buf(bytes(32)), 32) == ATCA_SUCCESS
    status = call(chip, "calib_sign_base", SIGN_EXTERNAL, ATTESTATION_KEY, sig)
    assert status == ATCA_EXECUTION_ERROR
    # Sign internal for Verify(Invalidate) is not modelled: refused, not faked
    assert call(chip, "calib_genkey_base", GENKEY_DIGEST, DEVICE_KEY, None, public) == 0
    assert call(chip, "calib_sign_internal", ATTESTATION_KEY, True, False, sig) == (
        ATCA_PARSE_ERROR
    )
    # GenKey 0x10 needs a public-key slot; GenKey's MAC mode is not modelled
    other = buf(b"\x00\x00\x00")
    for slot in (DEVICE_KEY, DATA_SLOT):
        status = call(chip, "calib_genkey_base", GENKEY_PUBKEY_DIGEST, slot, other, public)
        assert status == ATCA_EXECUTION_ERROR
    assert call(chip, "calib_genkey_base", 0x20, DEVICE_KEY, None, public) == ATCA_PARSE_ERROR
    # sleep loses TempKey: the digest is gone with it
    assert call(chip, "calib_genkey_base", 0x08, DEVICE_KEY, None, public) == ATCA_SUCCESS
    assert call(chip, "calib_sleep") == ATCA_SUCCESS
    assert call(chip, "calib_sign_internal", ATTESTATION_KEY, False, False, sig) == (
        ATCA_EXECUTION_ERROR
    )
