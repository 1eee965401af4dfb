"""ECDH (0x43) and GenKey into TempKey, through the unmodified library (``calib_ecdh*``
with an explicit device). Every shared secret is checked against ``cryptography``'s
ECDH for the same keys; encrypted outputs are opened with the library's own host
function ``atcah_io_decrypt``. Refusals are checked as carefully as results."""

from __future__ import annotations

from collections.abc import Iterator
from ctypes import POINTER, Structure, byref, c_size_t, c_uint8, c_uint16, c_void_p
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
from tests.chips.conftest import call, chip_signs, config_with, declared, personalise

_u8p = POINTER(c_uint8)
PROTOTYPES: dict[str, list[Any]] = {
    "calib_ecdh_base": [c_void_p, c_uint8, c_uint16, _u8p, _u8p, _u8p],
    "calib_ecdh": [c_void_p, c_uint16, _u8p, _u8p],
    "calib_ecdh_ioenc": [c_void_p, c_uint16, _u8p, _u8p, _u8p],
    "calib_ecdh_tempkey": [c_void_p, _u8p, _u8p],
    "calib_ecdh_tempkey_ioenc": [c_void_p, _u8p, _u8p, _u8p],
    "calib_genkey_base": [c_void_p, c_uint8, c_uint16, _u8p, _u8p],
    "calib_nonce_load": [c_void_p, c_uint8, _u8p, c_uint16],
    "calib_sign_base": [c_void_p, c_uint8, c_uint16, _u8p],
    "calib_info_base": [c_void_p, c_uint8, c_uint16, _u8p],
    "calib_ecdh_enc": [c_void_p, c_uint16, _u8p, _u8p, _u8p, c_uint16, _u8p],
}

IO_KEY_SLOT, IO_KEY = 6, bytes(range(0x40, 0x60))
ECDH_KEY, TO_NEXT_SLOT, NO_ECDH, NEXT_SLOT, DATA_SLOT, ODD_KEY = 0, 2, 4, 3, 7, 13
# calib_ecdh_enc's layout: the secret goes to slot 15, which reads only encrypted with the
# read key in slot 5 (SlotConfig 0x00C5: IsSecret, EncryptRead, ReadKey 5)
TO_ENC_SLOT, ENC_SLOT, READ_KEY_SLOT, READ_KEY = 14, 15, 5, bytes(range(0xA0, 0xC0))
# SlotConfig: IsSecret 0x80, ReadKey bit 0 external sign, bit 2 ECDH, bit 3 ECDH output to
# slot KeyID|1, WriteConfig 0x2000 GenKey allowed. KeyConfig 0x0033: P-256 private key.
LAYOUT = {
    "slot_config": {
        ECDH_KEY: 0x2085,
        TO_NEXT_SLOT: 0x208D,
        NEXT_SLOT: 0x0000,
        NO_ECDH: 0x2083,
        IO_KEY_SLOT: 0x0000,
        DATA_SLOT: 0x0000,
        TO_ENC_SLOT: 0x208D,
        ODD_KEY: 0x2085,
        ENC_SLOT: 0x00C5,
        READ_KEY_SLOT: 0x0000,
    },
    "key_config": {
        ECDH_KEY: 0x0033,
        TO_NEXT_SLOT: 0x0033,
        NEXT_SLOT: 0x003C,
        NO_ECDH: 0x0033,
        IO_KEY_SLOT: 0x003C,
        DATA_SLOT: 0x003C,
        TO_ENC_SLOT: 0x0033,
        ODD_KEY: 0x0033,
        ENC_SLOT: 0x003C,
        READ_KEY_SLOT: 0x003C,
    },
}
IO_PROT_ENABLED = 0x6002  # ChipOptions: IO protection key in slot 6, enabled (bit 1)
ECDH_PROT_ENCRYPT = 0x0100  # ChipOptions.ECDHProt = 1: buffer output always encrypted

# ECDH modes (cryptoauthlib ECDH_MODE_*)
FROM_TEMPKEY, ENCRYPTED = 0x01, 0x02
TO_SLOT, TO_TEMPKEY, TO_BUFFER = 0x04, 0x08, 0x0C


class IoDecrypt(Structure):
    """cryptoauthlib's atca_io_decrypt_in_out_t (lib/host/atca_host.h)."""

    _fields_ = [
        ("io_key", _u8p),
        ("out_nonce", _u8p),
        ("data", _u8p),
        ("data_size", c_size_t),
    ]


@pytest.fixture(scope="module")
def lib() -> Any:
    for name, argtypes in PROTOTYPES.items():
        declared(name, argtypes)
    return declared("atcah_io_decrypt", [POINTER(IoDecrypt)])


def io_decrypt(io_key: bytes, out_nonce: bytes, data: bytes) -> bytes:
    """The library's host-side decryption of an IO-protected output."""
    key, nonce, plain = buf(io_key), buf(out_nonce), buf(data)
    param = IoDecrypt(key, nonce, plain, len(data))
    assert declared("atcah_io_decrypt", [POINTER(IoDecrypt)])(byref(param)) == ATCA_SUCCESS
    return bytes(plain)


def open_chip(tmp_path: Path, chip_options: int) -> CryptoAuthChip:
    """A chip personalised through the library with the ECDH layout above."""
    connector = Connector(Settings(var_dir=tmp_path))
    connector.jig("line1").insert_blank(0)
    chip = connector.open("emulated:line1/0")
    config = config_with(
        chip.profile.config_template(),
        **LAYOUT,
        set_bytes={90: chip_options & 0xFF, 91: chip_options >> 8},
    )
    personalise(
        chip,
        config,
        genkey=(ECDH_KEY, TO_NEXT_SLOT, NO_ECDH, TO_ENC_SLOT, ODD_KEY),
        slots={IO_KEY_SLOT: IO_KEY, READ_KEY_SLOT: READ_KEY},
    )
    return chip


@pytest.fixture
def chip(lib: Any, tmp_path: Path) -> Iterator[CryptoAuthChip]:
    c = open_chip(tmp_path, IO_PROT_ENABLED)
    yield c
    c.close()


def peer() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """The other party's key pair and its public key as the chip takes it (X||Y)."""
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return key, point[1:]


def shared(key: ec.EllipticCurvePrivateKey, chip_public: bytes) -> bytes:
    """cryptography's ECDH of the peer's key with the chip's public key."""
    pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + chip_public)
    return key.exchange(ec.ECDH(), pub)


def state(chip: CryptoAuthChip) -> bytes:
    out = buf(4)
    assert call(chip, "calib_info_base", 0x02, 0, out) == ATCA_SUCCESS
    return bytes(out)


def ephemeral(chip: CryptoAuthChip) -> bytes:
    """GenKey create with KeyID 0xFFFF: the private key goes to TempKey."""
    pub = buf(64)
    assert call(chip, "calib_genkey_base", 0x04, 0xFFFF, None, pub) == ATCA_SUCCESS
    return bytes(pub)


def signs(chip: CryptoAuthChip, public: bytes, digest: bytes) -> bool:
    """Sign external over TempKey with slot 0; True if the signature is over ``digest``."""
    return chip_signs(chip, 0x80, ECDH_KEY, public, digest)


# --- output in clear ------------------------------------------------------------------


def test_ecdh_from_a_slot_in_clear_equals_cryptography(chip: CryptoAuthChip) -> None:
    key, point = peer()
    want = shared(key, chip.public_key(ECDH_KEY))
    pms = buf(32)
    assert call(chip, "calib_ecdh", ECDH_KEY, buf(point), pms) == ATCA_SUCCESS  # mode 0x00
    assert bytes(pms) == want
    pms, nonce = buf(32), buf(32)
    assert call(chip, "calib_ecdh_base", TO_BUFFER, ECDH_KEY, buf(point), pms, nonce) == 0
    assert bytes(pms) == want and bytes(nonce) == bytes(32)  # clear: no OutNonce


def test_ecdh_with_the_ephemeral_key_genkey_put_in_tempkey(chip: CryptoAuthChip) -> None:
    before = state(chip)
    public = ephemeral(chip)
    assert state(chip)[1] & 0x80 and not before[1] & 0x80  # TempKey now valid
    key, point = peer()
    pms = buf(32)
    assert call(chip, "calib_ecdh_tempkey", buf(point), pms) == ATCA_SUCCESS
    assert bytes(pms) == shared(key, public)
    assert not state(chip)[1] & 0x80  # ECDH used the ephemeral key up
    assert call(chip, "calib_ecdh_tempkey", buf(point), pms) == ATCA_EXECUTION_ERROR


# --- output encrypted with the IO protection key ---------------------------------------


def test_ecdh_io_encrypted_outputs_open_with_the_host_function(chip: CryptoAuthChip) -> None:
    key, point = peer()
    want = shared(key, chip.public_key(ECDH_KEY))
    pms = buf(32)
    assert call(chip, "calib_ecdh_ioenc", ECDH_KEY, buf(point), pms, buf(IO_KEY)) == 0
    assert bytes(pms) == want  # decrypted inside the library with atcah_io_decrypt
    pms, nonce = buf(32), buf(32)
    mode = TO_BUFFER | ENCRYPTED
    assert call(chip, "calib_ecdh_base", mode, ECDH_KEY, buf(point), pms, nonce) == 0
    assert bytes(pms) != want and bytes(nonce) != bytes(32)
    assert io_decrypt(IO_KEY, bytes(nonce), bytes(pms)) == want
    public = ephemeral(chip)
    assert call(chip, "calib_ecdh_tempkey_ioenc", buf(point), pms, buf(IO_KEY)) == 0
    assert bytes(pms) == shared(key, public)


def test_ecdh_prot_1_encrypts_even_a_clear_request(lib: Any, tmp_path: Path) -> None:
    """ChipOptions.ECDHProt = 1: the output buffer only ever gets the encrypted secret."""
    with open_chip(tmp_path, IO_PROT_ENABLED | ECDH_PROT_ENCRYPT) as chip:
        key, point = peer()
        want = shared(key, chip.public_key(ECDH_KEY))
        pms, nonce = buf(32), buf(32)
        assert call(chip, "calib_ecdh_base", TO_BUFFER, ECDH_KEY, buf(point), pms, nonce) == 0
        assert bytes(pms) != want
        assert io_decrypt(IO_KEY, bytes(nonce), bytes(pms)) == want


def test_encrypted_output_needs_an_enabled_io_protection_key(lib: Any, tmp_path: Path) -> None:
    with open_chip(tmp_path, 0x0000) as chip:
        _, point = peer()
        pms = buf(32)
        status = call(chip, "calib_ecdh_ioenc", ECDH_KEY, buf(point), pms, buf(IO_KEY))
        assert status == ATCA_EXECUTION_ERROR
        assert call(chip, "calib_ecdh", ECDH_KEY, buf(point), pms) == ATCA_SUCCESS  # clear ok


# --- output kept in the chip: TempKey, a slot ------------------------------------------


def test_ecdh_into_tempkey(chip: CryptoAuthChip) -> None:
    """The secret stays in TempKey (status only); signing TempKey then proves its value."""
    key, point = peer()
    public = chip.public_key(ECDH_KEY)
    pms = buf(32)
    assert call(chip, "calib_ecdh_base", TO_TEMPKEY, ECDH_KEY, buf(point), pms, None) == 0
    assert bytes(pms) == bytes(32)  # nothing came out
    assert state(chip)[0] & 0x10 and state(chip)[1] & 0x80  # SourceFlag input, valid
    assert signs(chip, public, shared(key, public))
    eph = ephemeral(chip)
    mode = FROM_TEMPKEY | TO_TEMPKEY
    assert call(chip, "calib_ecdh_base", mode, 0, buf(point), pms, None) == 0
    assert state(chip)[1] & 0x80  # the secret made TempKey valid again
    assert signs(chip, public, shared(key, eph))


def test_ecdh_into_a_slot(chip: CryptoAuthChip) -> None:
    """Compatibility mode on a slot whose SlotConfig bit 3 is set, and mode 0x04: the
    secret goes to slot KeyID|1 (or KeyID from TempKey) and nothing comes out."""
    key, point = peer()
    want = shared(key, chip.public_key(TO_NEXT_SLOT))
    pms = buf(32)
    assert call(chip, "calib_ecdh", TO_NEXT_SLOT, buf(point), pms) == ATCA_SUCCESS
    assert bytes(pms) == bytes(32)
    assert chip.read_zone(2, NEXT_SLOT, 0, 32) == want
    key2, point2 = peer()
    assert call(chip, "calib_ecdh_base", TO_SLOT, TO_NEXT_SLOT, buf(point2), pms, None) == 0
    assert chip.read_zone(2, NEXT_SLOT, 0, 32) == shared(key2, chip.public_key(TO_NEXT_SLOT))
    eph = ephemeral(chip)
    mode = FROM_TEMPKEY | TO_SLOT
    assert call(chip, "calib_ecdh_base", mode, DATA_SLOT, buf(point), pms, None) == 0
    assert chip.read_zone(2, DATA_SLOT, 0, 32) == shared(key, eph)
    # an odd key slot is its own KeyID|1: writing there would destroy the key, refused
    status = call(chip, "calib_ecdh_base", TO_SLOT, ODD_KEY, buf(point), pms, None)
    assert status == ATCA_EXECUTION_ERROR
    assert call(chip, "calib_ecdh", ODD_KEY, buf(point), pms) == ATCA_SUCCESS  # clear: fine
    assert bytes(pms) == shared(key, chip.public_key(ODD_KEY))


def test_ecdh_enc_reads_the_secret_back_encrypted(chip: CryptoAuthChip) -> None:
    """cryptoauthlib's calib_ecdh_enc: ECDH in compatibility mode writes the secret to
    slot KeyID|1, then an encrypted read (Nonce, GenDig with the read key) fetches it."""
    key, point = peer()
    pms = buf(32)
    status = call(
        chip,
        "calib_ecdh_enc",
        TO_ENC_SLOT,
        buf(point),
        pms,
        buf(READ_KEY),
        READ_KEY_SLOT,
        buf(bytes(range(20))),
    )
    assert status == ATCA_SUCCESS
    assert bytes(pms) == shared(key, chip.public_key(TO_ENC_SLOT))


# --- refusals --------------------------------------------------------------------------


def test_ecdh_refusals(chip: CryptoAuthChip) -> None:
    _, point = peer()
    pms, base = buf(32), "calib_ecdh_base"
    # SlotConfig bit 2 clear: this key may sign but not do ECDH
    assert call(chip, "calib_ecdh", NO_ECDH, buf(point), pms) == ATCA_EXECUTION_ERROR
    # a data slot holds no private key
    assert call(chip, "calib_ecdh", DATA_SLOT, buf(point), pms) == ATCA_EXECUTION_ERROR
    # a public key that is not on the curve
    off_curve = point[:63] + bytes([point[63] ^ 1])
    assert call(chip, "calib_ecdh", ECDH_KEY, buf(off_curve), pms) == ATCA_EXECUTION_ERROR
    # undefined mode bits; encryption of an output that does not leave the chip;
    # the compatibility mode has no meaning for the TempKey source
    assert call(chip, base, 0x10 | TO_BUFFER, 0, buf(point), pms, None) == ATCA_PARSE_ERROR
    status = call(chip, base, TO_TEMPKEY | ENCRYPTED, 0, buf(point), pms, None)
    assert status == ATCA_PARSE_ERROR
    assert call(chip, base, FROM_TEMPKEY, 0, buf(point), pms, None) == ATCA_PARSE_ERROR
    # TempKey source without the ephemeral key: never made, or replaced by a Nonce
    assert call(chip, "calib_ecdh_tempkey", buf(point), pms) == ATCA_EXECUTION_ERROR
    ephemeral(chip)
    assert call(chip, "calib_nonce_load", 0x00, buf(bytes(32)), 32) == ATCA_SUCCESS
    assert call(chip, "calib_ecdh_tempkey", buf(point), pms) == ATCA_EXECUTION_ERROR
    # the ephemeral private key is no message for Sign external
    ephemeral(chip)
    assert call(chip, "calib_sign_base", 0x80, ECDH_KEY, buf(64)) == ATCA_EXECUTION_ERROR
    # GenKey into TempKey only creates: the other modes with KeyID 0xFFFF are refused
    status = call(chip, "calib_genkey_base", 0x00, 0xFFFF, None, buf(64))
    assert status == ATCA_PARSE_ERROR
