"""KDF (0x56) and AES (0x51) through the unmodified library (``calib_*`` with an explicit
device), against independent references: the TLS 1.2 PRF and HKDF from python's hmac and
``cryptography``, AES-ECB / AES-GCM / AES-CMAC from ``cryptography``, the library's own host
function ``atcah_io_decrypt`` for IO-protected outputs, and Microchip's own known answers
(cryptoauthlib test/api_atcab/atca_tests_kdf.c and atca_tests_aes.c, taken from silicon).
Refusals are checked beside a success in the same test, so that no test passes on a chip
that refuses everything."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterator
from ctypes import (
    POINTER,
    Structure,
    addressof,
    byref,
    c_bool,
    c_int,
    c_size_t,
    c_uint8,
    c_uint16,
    c_uint32,
    c_void_p,
)
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import cmac, hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from provisioner.chips.connector import Connector
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.emulator.chip import EmulatedChip
from provisioner.chips.library import (
    ATCA_EXECUTION_ERROR,
    ATCA_PARSE_ERROR,
    ATCA_SUCCESS,
    buf,
    cryptoauth,
)
from provisioner.settings import Settings
from tests.chips.conftest import call, config_with, declared, personalise

_u8p = POINTER(c_uint8)

# Modes and details, cryptoauthlib lib/calib/calib_command.h (KDF_*, AES_*, NONCE_*).
PRF, AES_ALG, HKDF_ALG = 0x00, 0x20, 0x40
SRC_TEMPKEY, SRC_TEMPKEY_UP, SRC_SLOT, SRC_ALTKEYBUF = 0x00, 0x01, 0x02, 0x03
TGT_TEMPKEY, TGT_TEMPKEY_UP, TGT_SLOT, TGT_ALTKEYBUF = 0x00, 0x04, 0x08, 0x0C
TGT_OUTPUT, TGT_OUTPUT_ENC = 0x10, 0x14
PRF_KEY_LEN = {16: 0, 32: 1, 48: 2, 64: 3}
PRF_TARGET_64, PRF_AEAD_MODE1 = 0x100, 0x200
HKDF_MSG_SLOT, HKDF_MSG_TEMPKEY, HKDF_MSG_INPUT, HKDF_MSG_IV = 0x00, 0x01, 0x02, 0x03
HKDF_ZERO_KEY = 0x04
NONCE_TEMPKEY, NONCE_ALTKEYBUF = 0x00, 0x80
TEMPKEY_KEYID = 0xFFFF

# The test chip's layout.
IO_KEY_SLOT = 4
VOLATILE_AES_SLOT = 5  # AES key, KeyConfig PersistentDisable: refused while the latch is clear
ECC_SLOT = 7  # P-256 private key
AES_SLOT = 9  # 72 bytes: four AES-128 keys
TARGET_SLOT = 10  # readable (not secret), so the test can read what KDF wrote
SECRET_SLOT = 11  # a 64-byte HMAC/KDF secret (KeyType SHA)
LOCKED_SLOT = 13  # locked on its own (SlotLocked) after the data lock
PUBLIC_KEY_SLOT = 14  # an ECC public key: no KDF target

IO_KEY = secrets.token_bytes(32)
AES_KEYS = secrets.token_bytes(64)
SECRET = secrets.token_bytes(64)
KDF_IV_LOC, KDF_IV_STR = 9, b"iv"
CHIP_OPTIONS = 0x4006  # IO protection key slot 4 (bits 12-15), KDF-AES (bit 2), IO prot (bit 1)

# Microchip's known answers (silicon): atca_tests_kdf.c kdf_prf_output / kdf_aes_output,
# atca_tests_aes.c aes_gfm (the GCM specification's test case 2).
MCHP_NONCE = bytes(range(16)) * 2
MCHP_PRF_64 = bytes.fromhex(
    "1EBCBE62005AB948FDFFE1C402AABA354EC676050C9BC1AAE1FF5B1509A4A04A"
    "44254664C2A480F5B77EA2D1020C7BA4B3640C4AC793324C26D6FDDFDB1F011A"
)
MCHP_KDF_AES = bytes.fromhex("0A940BB5416EF045F1C39458C653EA5A") + bytes(16)
MCHP_GFM_H = bytes.fromhex("66E94BD4EF8A2C3B884CFA59CA342B2E")
MCHP_GFM_IN = bytes.fromhex("0388DACE60B6A392F328C2B971B2FE78")
MCHP_GFM_OUT = bytes.fromhex("5E2EC746917062882C85B0685353DEB7")


def context() -> Any:
    """Room for a GCM / CMAC context. Deliberately oversized raw memory: the wheel's Python
    mirror of ``atca_aes_cmac_ctx_t`` (cryptoauthlib/atcab.py) lacks the CBC context's
    block_size / block / padding fields that its C library has (lib/crypto/
    atca_crypto_hw_aes.h), so the C code would write past a ctypes struct built from it."""
    return (c_uint8 * 512)()


class IoDecrypt(Structure):
    """atca_io_decrypt_in_out_t (lib/host/atca_host.h)."""

    _fields_ = [
        ("io_key", c_void_p),
        ("out_nonce", c_void_p),
        ("data", c_void_p),
        ("data_size", c_size_t),
    ]


@pytest.fixture(scope="module")
def api() -> dict[str, Any]:
    """The functions these tests call, with their prototypes (cryptoauthlib calib_basic.h,
    calib_aes_gcm.h, atca_crypto_hw_aes.h, atca_host.h)."""
    dev = gcm = cmac_ctx = c_void_p
    protos: dict[str, list[Any]] = {
        "calib_kdf": [dev, c_uint8, c_uint16, c_uint32, _u8p, _u8p, _u8p],
        "calib_aes": [dev, c_uint8, c_uint16, _u8p, _u8p],
        "calib_aes_encrypt": [dev, c_uint16, c_uint8, _u8p, _u8p],
        "calib_aes_decrypt": [dev, c_uint16, c_uint8, _u8p, _u8p],
        "calib_aes_gfm": [dev, _u8p, _u8p, _u8p],
        "calib_aes_gcm_init": [dev, gcm, c_uint16, c_uint8, _u8p, c_size_t],
        "calib_aes_gcm_aad_update": [dev, gcm, _u8p, c_uint32],
        "calib_aes_gcm_encrypt_update": [dev, gcm, _u8p, c_uint32, _u8p],
        "calib_aes_gcm_encrypt_finish": [dev, gcm, _u8p, c_size_t],
        "calib_aes_gcm_decrypt_update": [dev, gcm, _u8p, c_uint32, _u8p],
        "calib_aes_gcm_decrypt_finish": [dev, gcm, _u8p, c_size_t, POINTER(c_bool)],
        "atcab_aes_cmac_init_ext": [dev, cmac_ctx, c_uint16, c_uint8],
        "atcab_aes_cmac_update": [cmac_ctx, _u8p, c_uint32],
        "atcab_aes_cmac_finish": [cmac_ctx, _u8p, c_uint32],
        "calib_nonce_load": [dev, c_uint8, _u8p, c_uint16],
        "calib_lock_data_slot": [dev, c_uint16],
        "calib_sleep": [dev],
    }
    return {name: declared(name, argtypes) for name, argtypes in protos.items()}


def _layout(base: bytes, *, chip_options: int, kdf_iv_loc: int) -> bytes:
    slot_config = {
        IO_KEY_SLOT: 0x008F,
        VOLATILE_AES_SLOT: 0x008F,
        ECC_SLOT: 0x2083,
        AES_SLOT: 0x008F,
        TARGET_SLOT: 0x0000,
        SECRET_SLOT: 0x008F,
        LOCKED_SLOT: 0x0000,
        PUBLIC_KEY_SLOT: 0x0000,
    }
    key_config = {
        IO_KEY_SLOT: 0x003C,  # SHA key (type 7), lockable
        VOLATILE_AES_SLOT: 0x1038,  # AES key (type 6), PersistentDisable
        ECC_SLOT: 0x0033,  # P-256 private key
        AES_SLOT: 0x0038,  # AES key
        TARGET_SLOT: 0x003C,
        SECRET_SLOT: 0x003C,
        LOCKED_SLOT: 0x003C,
        PUBLIC_KEY_SLOT: 0x0010,  # P-256 public key (KeyType 4, not private)
    }
    cfg = bytearray(config_with(base, slot_config=slot_config, key_config=key_config))
    cfg[72], cfg[73:75] = kdf_iv_loc, KDF_IV_STR
    cfg[90:92] = chip_options.to_bytes(2, "little")
    return bytes(cfg)


ChipFactory = Callable[..., CryptoAuthChip]


@pytest.fixture
def make_chip(tmp_path: Path, api: dict[str, Any]) -> Iterator[ChipFactory]:
    """Personalised emulated chips (config and data locked, keys written in clear before
    the data lock, slot 13 then locked on its own), one socket each."""
    connector = Connector(Settings(var_dir=tmp_path))
    opened: list[CryptoAuthChip] = []

    def make(
        *, aes_enable: int = 0x01, chip_options: int = CHIP_OPTIONS, kdf_iv_loc: int = KDF_IV_LOC
    ) -> CryptoAuthChip:
        socket = len(opened)
        part = EmulatedChip.blank()
        # AES_Enable (config byte 13) is set at manufacturing; no command writes it (config
        # words 0-3 are read-only, and the library's config write starts at byte 16). A part
        # ordered without AES is another factory part, so the tray makes it so.
        part.config[13] = aes_enable
        connector.jig("line1").insert_chip(socket, part)
        chip = connector.open(f"emulated:line1/{socket}")
        opened.append(chip)
        config = _layout(chip.read_config(), chip_options=chip_options, kdf_iv_loc=kdf_iv_loc)
        slots = {
            IO_KEY_SLOT: IO_KEY,
            VOLATILE_AES_SLOT: AES_KEYS[:32],
            AES_SLOT: AES_KEYS,
            SECRET_SLOT: SECRET,
        }
        personalise(chip, config, slots=slots)
        assert call(chip, "calib_lock_data_slot", LOCKED_SLOT) == ATCA_SUCCESS
        return chip

    yield make
    for chip in opened:
        chip.close()


@pytest.fixture
def chip(make_chip: ChipFactory) -> CryptoAuthChip:
    return make_chip()


# --- host references ------------------------------------------------------------------


def tls12_prf(key: bytes, message: bytes, size: int) -> bytes:
    """RFC 5246 section 5, P_SHA256, from python's hmac."""
    out, a = b"", message
    while len(out) < size:
        a = hmac.new(key, a, hashlib.sha256).digest()
        out += hmac.new(key, a + message, hashlib.sha256).digest()
    return out[:size]


def aes_ecb(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def io_decrypt(data: bytes, out_nonce: bytes) -> bytes:
    """The library's host-side inverse of the chip's IO protection (atcah_io_decrypt)."""
    key, nonce, clear = buf(IO_KEY), buf(out_nonce), buf(data)
    param = IoDecrypt(addressof(key), addressof(nonce), addressof(clear), len(data))
    # a private function object (indexing makes a new one), so that another test module
    # declaring atcah_io_decrypt with its own struct type is not disturbed
    fn = cryptoauth()["atcah_io_decrypt"]
    fn.restype, fn.argtypes = c_int, [POINTER(IoDecrypt)]
    assert fn(byref(param)) == ATCA_SUCCESS
    return bytes(clear)


# --- driving the chip -------------------------------------------------------------------


def load(chip: CryptoAuthChip, value: bytes, target: int = NONCE_TEMPKEY) -> None:
    """Nonce pass-through (32 or 64 bytes) into TempKey or the alternate key buffer."""
    assert call(chip, "calib_nonce_load", target, buf(value), len(value)) == ATCA_SUCCESS


def kdf(
    chip: CryptoAuthChip,
    mode: int,
    key_id: int,
    details: int,
    message: bytes,
    size: int = 0,
) -> tuple[int, bytes, bytes]:
    """calib_kdf; for PRF/HKDF the message length rides in details byte 3 as the library
    expects. Returns (status, out_data, out_nonce)."""
    if mode & 0x60 != AES_ALG:
        details |= len(message) << 24
    out, nonce = buf(64), buf(32)
    status = call(chip, "calib_kdf", mode, key_id, details, buf(message or b"\x00"), out, nonce)
    return status, bytes(out)[: size or 64], bytes(nonce)


def aes_call(chip: CryptoAuthChip, mode: int, key_id: int, block: bytes) -> tuple[int, bytes]:
    out = buf(16)
    return call(chip, "calib_aes", mode, key_id, buf(block), out), bytes(out)


# --- KDF: PRF ---------------------------------------------------------------------------


def test_prf_equals_microchips_known_answer_and_the_tls12_prf(chip: CryptoAuthChip) -> None:
    load(chip, MCHP_NONCE)
    details = PRF_KEY_LEN[32] | PRF_TARGET_64
    status, out, _ = kdf(chip, PRF | SRC_TEMPKEY | TGT_OUTPUT, 0x1234, details, bytes(range(16)))
    assert status == ATCA_SUCCESS
    assert out == MCHP_PRF_64 == tls12_prf(MCHP_NONCE, bytes(range(16)), 64)


@pytest.mark.parametrize("key_len", [16, 32, 48, 64])
@pytest.mark.parametrize("out_len", [32, 64])
def test_prf_key_and_output_lengths(chip: CryptoAuthChip, key_len: int, out_len: int) -> None:
    tempkey = secrets.token_bytes(64)
    message = b"key expansion" + secrets.token_bytes(64)  # label || seed
    load(chip, tempkey)
    details = PRF_KEY_LEN[key_len] | (PRF_TARGET_64 if out_len == 64 else 0)
    status, out, _ = kdf(chip, PRF | SRC_TEMPKEY | TGT_OUTPUT, 0, details, message, out_len)
    assert status == ATCA_SUCCESS
    assert out == tls12_prf(tempkey[:key_len], message, out_len)


def test_prf_from_a_slot_into_a_slot_persists(chip: CryptoAuthChip) -> None:
    message = secrets.token_bytes(77)
    details = PRF_KEY_LEN[64] | PRF_TARGET_64
    key_id = TARGET_SLOT << 8 | SECRET_SLOT
    status, _, _ = kdf(chip, PRF | SRC_SLOT | TGT_SLOT, key_id, details, message)
    assert status == ATCA_SUCCESS
    assert chip.read_zone(2, TARGET_SLOT, 0, 64) == tls12_prf(SECRET, message, 64)


def test_prf_through_tempkey_upper_tempkey_and_the_alternate_key_buffer(
    chip: CryptoAuthChip,
) -> None:
    alt, message = secrets.token_bytes(32), secrets.token_bytes(20)
    key32 = PRF_KEY_LEN[32]
    # alternate key buffer -> TempKey; then TempKey is the AES command's key
    load(chip, alt, NONCE_ALTKEYBUF)
    assert kdf(chip, PRF | SRC_ALTKEYBUF | TGT_TEMPKEY, 0, key32, message)[0] == ATCA_SUCCESS
    derived = tls12_prf(alt, message, 32)
    block = secrets.token_bytes(16)
    on_chip = aes_call(chip, 0x00, TEMPKEY_KEYID, block)
    assert on_chip == (ATCA_SUCCESS, aes_ecb(derived[:16], block))
    # TempKey -> alternate key buffer -> output
    assert kdf(chip, PRF | SRC_TEMPKEY | TGT_ALTKEYBUF, 0, key32, message)[0] == ATCA_SUCCESS
    second = tls12_prf(derived, message, 32)
    status, out, _ = kdf(chip, PRF | SRC_ALTKEYBUF | TGT_OUTPUT, 0, key32, message, 32)
    assert (status, out) == (ATCA_SUCCESS, tls12_prf(second, message, 32))
    # upper TempKey as source and as target
    tempkey = secrets.token_bytes(64)
    load(chip, tempkey)
    assert kdf(chip, PRF | SRC_TEMPKEY_UP | TGT_TEMPKEY_UP, 0, key32, message)[0] == ATCA_SUCCESS
    upper = tls12_prf(tempkey[32:], message, 32)
    status, out, _ = kdf(chip, PRF | SRC_TEMPKEY | TGT_OUTPUT, 0, PRF_KEY_LEN[64], message, 32)
    assert (status, out) == (ATCA_SUCCESS, tls12_prf(tempkey[:32] + upper, message, 32))
    # a 64-byte result cannot go to a 32-byte register
    details = key32 | PRF_TARGET_64
    assert kdf(chip, PRF | SRC_TEMPKEY | TGT_ALTKEYBUF, 0, details, message)[0] == ATCA_PARSE_ERROR


def test_prf_aead_mode_splits_the_result(chip: CryptoAuthChip) -> None:
    """AEAD mode 1: the first 32 bytes to the target (here TempKey), the rest returned."""
    tempkey, message = secrets.token_bytes(32), secrets.token_bytes(40)
    load(chip, tempkey)
    details = PRF_KEY_LEN[32] | PRF_TARGET_64 | PRF_AEAD_MODE1
    status, _, _ = kdf(chip, PRF | SRC_TEMPKEY | TGT_TEMPKEY, 0, details, message)
    assert status == ATCA_SUCCESS
    expected = tls12_prf(tempkey, message, 64)
    block = secrets.token_bytes(16)
    on_chip = aes_call(chip, 0x00, TEMPKEY_KEYID, block)
    assert on_chip == (ATCA_SUCCESS, aes_ecb(expected[:16], block))
    load(chip, tempkey)
    refused = kdf(chip, PRF | SRC_TEMPKEY | TGT_OUTPUT, 0, details, message)[0]
    assert refused == ATCA_PARSE_ERROR  # the split needs an internal target


# --- KDF: IO-protected output -------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "details", "size"),
    [
        (PRF, PRF_KEY_LEN[32] | PRF_TARGET_64, 64),
        (PRF, PRF_KEY_LEN[32], 32),
        (HKDF_ALG, HKDF_MSG_INPUT, 32),
        (AES_ALG, 0, 32),
    ],
)
def test_encrypted_output_decrypts_with_atcah_io_decrypt(
    chip: CryptoAuthChip, mode: int, details: int, size: int
) -> None:
    tempkey, message = secrets.token_bytes(32), secrets.token_bytes(16)
    load(chip, tempkey)
    status, clear, _ = kdf(chip, mode | SRC_TEMPKEY | TGT_OUTPUT, 0, details, message, size)
    assert status == ATCA_SUCCESS
    status, sealed, out_nonce = kdf(
        chip, mode | SRC_TEMPKEY | TGT_OUTPUT_ENC, 0, details, message, size
    )
    assert status == ATCA_SUCCESS and sealed != clear
    assert io_decrypt(sealed, out_nonce) == clear


@pytest.mark.parametrize(
    ("protection", "clear_status", "sealed_status"),
    [
        (1, ATCA_EXECUTION_ERROR, ATCA_SUCCESS),  # KDFProt 1: output only encrypted
        (2, ATCA_EXECUTION_ERROR, ATCA_EXECUTION_ERROR),  # KDFProt 2: no output at all
    ],
)
def test_kdf_protection_in_chip_options(
    make_chip: ChipFactory, protection: int, clear_status: int, sealed_status: int
) -> None:
    chip = make_chip(chip_options=CHIP_OPTIONS | protection << 10)
    tempkey, message = secrets.token_bytes(32), secrets.token_bytes(16)
    load(chip, tempkey)
    details = PRF_KEY_LEN[32]
    assert kdf(chip, PRF | SRC_TEMPKEY | TGT_OUTPUT, 0, details, message)[0] == clear_status
    status, sealed, nonce = kdf(chip, PRF | SRC_TEMPKEY | TGT_OUTPUT_ENC, 0, details, message, 32)
    assert status == sealed_status
    if status == ATCA_SUCCESS:
        assert io_decrypt(sealed, nonce) == tls12_prf(tempkey, message, 32)
    # internal targets stay allowed
    assert kdf(chip, PRF | SRC_TEMPKEY | TGT_ALTKEYBUF, 0, details, message)[0] == ATCA_SUCCESS


def test_encrypted_output_needs_io_protection_enabled(make_chip: ChipFactory) -> None:
    chip = make_chip(chip_options=CHIP_OPTIONS & ~0x0002)
    tempkey, message = secrets.token_bytes(32), secrets.token_bytes(16)
    load(chip, tempkey)
    status, out, _ = kdf(chip, PRF | SRC_TEMPKEY | TGT_OUTPUT, 0, PRF_KEY_LEN[32], message, 32)
    assert (status, out) == (ATCA_SUCCESS, tls12_prf(tempkey, message, 32))
    status = kdf(chip, PRF | SRC_TEMPKEY | TGT_OUTPUT_ENC, 0, PRF_KEY_LEN[32], message)[0]
    assert status == ATCA_EXECUTION_ERROR


# --- KDF: HKDF and AES ------------------------------------------------------------------


def test_hkdf_extract_then_expand_equals_cryptographys_hkdf(chip: CryptoAuthChip) -> None:
    """Extract: HMAC(salt, IKM) with the salt as the key; one Expand step: HMAC(PRK, info ||
    0x01). Chained on the chip (PRK kept in TempKey), they are RFC 5869's HKDF."""
    salt, ikm, info = secrets.token_bytes(32), secrets.token_bytes(32), b"tls13 derived"
    load(chip, salt)
    status, _, _ = kdf(chip, HKDF_ALG | SRC_TEMPKEY | TGT_TEMPKEY, 0, HKDF_MSG_INPUT, ikm)
    assert status == ATCA_SUCCESS
    status, okm, _ = kdf(
        chip, HKDF_ALG | SRC_TEMPKEY | TGT_OUTPUT, 0, HKDF_MSG_INPUT, info + b"\x01", 32
    )
    assert status == ATCA_SUCCESS
    assert okm == HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    assert okm == HKDFExpand(hashes.SHA256(), 32, info).derive(prk)


def test_hkdf_zero_key_and_slot_source(chip: CryptoAuthChip) -> None:
    ikm = secrets.token_bytes(48)
    mode = HKDF_ALG | SRC_SLOT | TGT_OUTPUT
    status, out, _ = kdf(chip, mode, 0, HKDF_ZERO_KEY | HKDF_MSG_INPUT, ikm, 32)
    assert (status, out) == (ATCA_SUCCESS, hmac.new(bytes(32), ikm, hashlib.sha256).digest())
    status, out, _ = kdf(chip, mode, SECRET_SLOT, HKDF_MSG_INPUT, ikm, 32)
    assert (status, out) == (ATCA_SUCCESS, hmac.new(SECRET[:32], ikm, hashlib.sha256).digest())


def test_hkdf_matches_a_real_608s_answers(chip: CryptoAuthChip) -> None:
    """The known answers rust-cryptoauthlib's hardware test asserts against a real 608
    (cryptoauthlib/src/unit_tests/hw_backend_kdf.rs, kdf_hkdf_proper_data): the message
    from the input, from TempKey and from a slot (details bits 8-11), the zero key, and a
    chain through a slot, upper TempKey and the alternate key buffer to an IO-protected
    output. For messages held in the chip the library still sends ``len`` filler bytes."""
    key, message, alt = bytes(range(0x20, 0x40)), bytes(range(0x40, 0x60)), bytes(range(32))
    answers = {
        1: "FC70F7E85F89ECCBCC958D2D3CCF94F5BDD33C64CB20A9C7868DFEFD5AFB7EC5",
        3: "1465D1DFA1A92A78AFC2A1662A3B30245F584D0068E47506C5223FB6EF962022",
        4: "46BD320605C5A6B6163AB70BC6345B92A5F908E79FE58979C23EBB47D1A5E307",
        5: "A27B86E7A70A029CBA778D6F738D952696D6D8361B95103DD84AE9DF6AF063AF",
        6: "77F1993F031E84841F1C18FA160A440D257ECAF90AF8EB0876F0E8FEB4888D94",
    }
    expected = {n: bytes.fromhex(v) for n, v in answers.items()}
    m16, filler = message[:16], bytes(32)
    load(chip, key)
    assert kdf(chip, HKDF_ALG | SRC_TEMPKEY | TGT_TEMPKEY, 0, HKDF_MSG_INPUT, m16)[0] == 0
    status, out, _ = kdf(chip, HKDF_ALG | SRC_TEMPKEY | TGT_OUTPUT, 0, HKDF_MSG_INPUT, m16, 32)
    assert (status, out) == (ATCA_SUCCESS, expected[1])
    zero_input = HKDF_ZERO_KEY | HKDF_MSG_INPUT
    status, out, _ = kdf(chip, HKDF_ALG | SRC_TEMPKEY | TGT_OUTPUT, 0, zero_input, message, 32)
    assert (status, out) == (ATCA_SUCCESS, expected[3])
    load(chip, alt)
    zero_tempkey = HKDF_ZERO_KEY | HKDF_MSG_TEMPKEY
    status, out, _ = kdf(chip, HKDF_ALG | SRC_TEMPKEY | TGT_OUTPUT, 0, zero_tempkey, filler, 32)
    assert (status, out) == (ATCA_SUCCESS, expected[4])
    load(chip, key)
    chip.write_zone(2, TARGET_SLOT, 0, alt)
    in_slot = HKDF_MSG_SLOT | TARGET_SLOT << 8
    status, out, _ = kdf(chip, HKDF_ALG | SRC_TEMPKEY | TGT_OUTPUT, 0, in_slot, filler, 32)
    assert (status, out) == (ATCA_SUCCESS, expected[5])
    chain = [
        (SRC_TEMPKEY | TGT_SLOT, TARGET_SLOT << 8),
        (SRC_SLOT | TGT_TEMPKEY_UP, TARGET_SLOT),
        (SRC_TEMPKEY_UP | TGT_ALTKEYBUF, 0),
    ]
    for step, key_id in chain:
        assert kdf(chip, HKDF_ALG | step, key_id, HKDF_MSG_INPUT, m16)[0] == ATCA_SUCCESS
    mode = HKDF_ALG | SRC_ALTKEYBUF | TGT_OUTPUT_ENC
    status, sealed, out_nonce = kdf(chip, mode, 0, HKDF_MSG_INPUT, message, 32)
    assert status == ATCA_SUCCESS and io_decrypt(sealed, out_nonce) == expected[6]


def test_hkdf_iv_function_checks_the_configured_string(chip: CryptoAuthChip) -> None:
    """Microchip's kdf_hkdf_output: KdfIvLoc 9, KdfIvStr "iv" (config bytes 72-74)."""
    tempkey = secrets.token_bytes(32)
    good = bytearray(secrets.token_bytes(32))
    good[KDF_IV_LOC : KDF_IV_LOC + 2] = KDF_IV_STR
    bad = bytes(good[:KDF_IV_LOC]) + b"xx" + bytes(good[KDF_IV_LOC + 2 :])
    load(chip, tempkey)
    mode = HKDF_ALG | SRC_TEMPKEY | TGT_SLOT
    assert kdf(chip, mode, TARGET_SLOT << 8, HKDF_MSG_IV, bytes(good))[0] == ATCA_SUCCESS
    expected = hmac.new(tempkey, bytes(good), hashlib.sha256).digest()
    assert chip.read_zone(2, TARGET_SLOT, 0, 32) == expected
    assert kdf(chip, mode, TARGET_SLOT << 8, HKDF_MSG_IV, bad)[0] == ATCA_EXECUTION_ERROR


def test_hkdf_iv_function_is_off_when_kdf_iv_loc_is_f0(make_chip: ChipFactory) -> None:
    """KdfIvLoc 0xF0 disables the IV function (rust-cryptoauthlib hw_impl/mod.rs reads it
    so); the plain input mode still works."""
    chip = make_chip(kdf_iv_loc=0xF0)
    message = bytes(KDF_IV_LOC) + KDF_IV_STR + bytes(8)
    tempkey = secrets.token_bytes(32)
    load(chip, tempkey)
    mode = HKDF_ALG | SRC_TEMPKEY | TGT_OUTPUT
    status, out, _ = kdf(chip, mode, 0, HKDF_MSG_INPUT, message, 32)
    assert (status, out) == (ATCA_SUCCESS, hmac.new(tempkey, message, hashlib.sha256).digest())
    assert kdf(chip, mode, 0, HKDF_MSG_IV, message)[0] == ATCA_EXECUTION_ERROR


def test_kdf_aes_equals_microchips_known_answer_and_aes_ecb(chip: CryptoAuthChip) -> None:
    load(chip, MCHP_NONCE)
    status, out, _ = kdf(chip, AES_ALG | SRC_TEMPKEY | TGT_OUTPUT, 0x1234, 0, bytes(range(16)), 32)
    assert (status, out) == (ATCA_SUCCESS, MCHP_KDF_AES)
    tempkey, block = secrets.token_bytes(64), secrets.token_bytes(16)
    load(chip, tempkey)
    for key_loc in range(4):
        status, out, _ = kdf(chip, AES_ALG | SRC_TEMPKEY | TGT_OUTPUT, 0, key_loc, block, 32)
        key = tempkey[16 * key_loc : 16 * key_loc + 16]
        assert (status, out) == (ATCA_SUCCESS, aes_ecb(key, block) + bytes(16))


def test_kdf_aes_into_a_slot_and_needs_aes_enabled(make_chip: ChipFactory) -> None:
    chip = make_chip()
    block = secrets.token_bytes(16)
    key_id = TARGET_SLOT << 8 | SECRET_SLOT
    assert kdf(chip, AES_ALG | SRC_SLOT | TGT_SLOT, key_id, 1, block)[0] == ATCA_SUCCESS
    assert chip.read_zone(2, TARGET_SLOT, 0, 32) == aes_ecb(SECRET[16:32], block) + bytes(16)
    for disabled in (make_chip(aes_enable=0x00), make_chip(chip_options=CHIP_OPTIONS & ~0x04)):
        load(disabled, secrets.token_bytes(32))
        status = kdf(disabled, AES_ALG | SRC_TEMPKEY | TGT_OUTPUT, 0, 0, block)[0]
        assert status == ATCA_EXECUTION_ERROR


# --- KDF: refusals ------------------------------------------------------------------------


def test_kdf_refusals(chip: CryptoAuthChip, api: dict[str, Any]) -> None:
    message = secrets.token_bytes(16)
    key32 = PRF_KEY_LEN[32]
    out_mode = PRF | SRC_SLOT | TGT_OUTPUT
    assert kdf(chip, out_mode, SECRET_SLOT, key32, message)[0] == ATCA_SUCCESS
    assert kdf(chip, 0x60 | SRC_SLOT | TGT_OUTPUT, SECRET_SLOT, 0, message)[0] == ATCA_PARSE_ERROR
    assert kdf(chip, PRF | SRC_SLOT | 0x18, SECRET_SLOT, key32, message)[0] == ATCA_PARSE_ERROR
    assert kdf(chip, out_mode, 16, key32, message)[0] == ATCA_PARSE_ERROR  # no slot 16
    # ECC private key, and a PersistentDisable key while the latch is clear
    assert kdf(chip, out_mode, ECC_SLOT, key32, message)[0] == ATCA_EXECUTION_ERROR
    assert kdf(chip, out_mode, VOLATILE_AES_SLOT, key32, message)[0] == ATCA_EXECUTION_ERROR
    # a 64-byte key from the 32-byte alternate key buffer
    load(chip, secrets.token_bytes(32), NONCE_ALTKEYBUF)
    alt_mode = PRF | SRC_ALTKEYBUF | TGT_OUTPUT
    assert kdf(chip, alt_mode, 0, PRF_KEY_LEN[64], message)[0] == ATCA_PARSE_ERROR
    assert kdf(chip, alt_mode, 0, key32, message)[0] == ATCA_SUCCESS
    # targets: a slot locked on its own, an ECC private key slot, an ECC public key slot
    slot_mode = PRF | SRC_SLOT | TGT_SLOT
    for target in (LOCKED_SLOT, ECC_SLOT, PUBLIC_KEY_SLOT):
        status = kdf(chip, slot_mode, target << 8 | SECRET_SLOT, key32, message)[0]
        assert status == ATCA_EXECUTION_ERROR
    # sleep loses TempKey and the alternate key buffer
    assert call(chip, "calib_sleep") == ATCA_SUCCESS
    assert kdf(chip, alt_mode, 0, key32, message)[0] == ATCA_EXECUTION_ERROR
    status = kdf(chip, PRF | SRC_TEMPKEY | TGT_OUTPUT, 0, key32, message)[0]
    assert status == ATCA_EXECUTION_ERROR


# --- AES ----------------------------------------------------------------------------------


def test_aes_ecb_with_every_key_block_of_a_slot(chip: CryptoAuthChip) -> None:
    for key_block in range(4):
        key = AES_KEYS[16 * key_block : 16 * key_block + 16]
        for _ in range(2):
            plain, ct = secrets.token_bytes(16), buf(16)
            status = call(chip, "calib_aes_encrypt", AES_SLOT, key_block, buf(plain), ct)
            assert status == ATCA_SUCCESS and bytes(ct) == aes_ecb(key, plain)
            back = buf(16)
            status = call(chip, "calib_aes_decrypt", AES_SLOT, key_block, ct, back)
            assert status == ATCA_SUCCESS and bytes(back) == plain


def test_aes_ecb_with_tempkey(chip: CryptoAuthChip) -> None:
    tempkey = secrets.token_bytes(64)
    load(chip, tempkey)
    for key_block in range(4):
        plain, ct = secrets.token_bytes(16), buf(16)
        status = call(chip, "calib_aes_encrypt", TEMPKEY_KEYID, key_block, buf(plain), ct)
        key = tempkey[16 * key_block : 16 * key_block + 16]
        assert status == ATCA_SUCCESS and bytes(ct) == aes_ecb(key, plain)


def test_aes_gfm_equals_the_gcm_known_answer_and_cryptographys_ghash(
    chip: CryptoAuthChip,
) -> None:
    out = buf(16)
    assert call(chip, "calib_aes_gfm", buf(MCHP_GFM_H), buf(MCHP_GFM_IN), out) == ATCA_SUCCESS
    assert bytes(out) == MCHP_GFM_OUT
    # GCM with one block of AAD and no plaintext: tag = E(K, J0) xor ((A*H) xor L)*H, so
    # two chip multiplies must rebuild cryptography's tag.
    key, iv, aad = secrets.token_bytes(16), secrets.token_bytes(12), secrets.token_bytes(16)
    tag = AESGCM(key).encrypt(iv, b"", aad)
    h = aes_ecb(key, bytes(16))
    lengths = (128).to_bytes(8, "big") + (0).to_bytes(8, "big")
    y1, y2 = buf(16), buf(16)
    assert call(chip, "calib_aes_gfm", buf(h), buf(aad), y1) == ATCA_SUCCESS
    x2 = bytes(a ^ b for a, b in zip(bytes(y1), lengths, strict=True))
    assert call(chip, "calib_aes_gfm", buf(h), buf(x2), y2) == ATCA_SUCCESS
    ek_j0 = aes_ecb(key, iv + b"\x00\x00\x00\x01")
    assert bytes(a ^ b for a, b in zip(bytes(y2), ek_j0, strict=True)) == tag


@pytest.mark.parametrize("size", [0, 16, 37])
def test_aes_gcm_through_the_library_equals_cryptography(chip: CryptoAuthChip, size: int) -> None:
    key_block = 2
    key = AES_KEYS[16 * key_block : 16 * key_block + 16]
    iv, aad, plain = secrets.token_bytes(12), secrets.token_bytes(21), secrets.token_bytes(size)
    ctx = context()
    assert call(chip, "calib_aes_gcm_init", byref(ctx), AES_SLOT, key_block, buf(iv), 12) == 0
    assert call(chip, "calib_aes_gcm_aad_update", byref(ctx), buf(aad), len(aad)) == 0
    ct, tag = buf(max(size, 1)), buf(16)
    if size:
        status = call(chip, "calib_aes_gcm_encrypt_update", byref(ctx), buf(plain), size, ct)
        assert status == ATCA_SUCCESS
    assert call(chip, "calib_aes_gcm_encrypt_finish", byref(ctx), tag, 16) == ATCA_SUCCESS
    assert bytes(ct)[:size] + bytes(tag) == AESGCM(key).encrypt(iv, plain, aad)
    # and the library's decryption on the chip verifies the tag
    ctx2, back, ok = context(), buf(max(size, 1)), c_bool()
    assert call(chip, "calib_aes_gcm_init", byref(ctx2), AES_SLOT, key_block, buf(iv), 12) == 0
    assert call(chip, "calib_aes_gcm_aad_update", byref(ctx2), buf(aad), len(aad)) == 0
    if size:
        status = call(chip, "calib_aes_gcm_decrypt_update", byref(ctx2), ct, size, back)
        assert status == ATCA_SUCCESS
    status = call(chip, "calib_aes_gcm_decrypt_finish", byref(ctx2), tag, 16, byref(ok))
    assert status == ATCA_SUCCESS and ok.value and bytes(back)[:size] == plain


def test_aes_cmac_through_the_library_equals_cryptography(
    chip: CryptoAuthChip, api: dict[str, Any]
) -> None:
    message = secrets.token_bytes(45)
    ctx, mac = context(), buf(16)
    assert call(chip, "atcab_aes_cmac_init_ext", byref(ctx), AES_SLOT, 0) == ATCA_SUCCESS
    assert api["atcab_aes_cmac_update"](byref(ctx), buf(message), len(message)) == ATCA_SUCCESS
    assert api["atcab_aes_cmac_finish"](byref(ctx), mac, 16) == ATCA_SUCCESS
    reference = cmac.CMAC(algorithms.AES(AES_KEYS[:16]))
    reference.update(message)
    assert bytes(mac) == reference.finalize()


def test_aes_refusals(chip: CryptoAuthChip) -> None:
    block = secrets.token_bytes(16)
    assert aes_call(chip, 0x00, AES_SLOT, block) == (ATCA_SUCCESS, aes_ecb(AES_KEYS[:16], block))
    assert aes_call(chip, 0x02, AES_SLOT, block)[0] == ATCA_PARSE_ERROR  # no operation 2
    assert aes_call(chip, 0x08, AES_SLOT, block)[0] == ATCA_PARSE_ERROR  # reserved bits 3-5
    assert aes_call(chip, 0x00, 16, block)[0] == ATCA_PARSE_ERROR  # no slot 16
    for slot in (SECRET_SLOT, ECC_SLOT, VOLATILE_AES_SLOT):  # SHA key, ECC key, latch clear
        assert aes_call(chip, 0x00, slot, block)[0] == ATCA_EXECUTION_ERROR
    # the last block of a 36-byte slot would run past its end
    assert aes_call(chip, 0xC0, VOLATILE_AES_SLOT, block)[0] == ATCA_EXECUTION_ERROR
    # TempKey lost on sleep; a 32-byte TempKey has only blocks 0 and 1
    assert call(chip, "calib_sleep") == ATCA_SUCCESS
    assert aes_call(chip, 0x00, TEMPKEY_KEYID, block)[0] == ATCA_EXECUTION_ERROR
    load(chip, secrets.token_bytes(32))
    assert aes_call(chip, 0x40, TEMPKEY_KEYID, block)[0] == ATCA_SUCCESS
    assert aes_call(chip, 0x80, TEMPKEY_KEYID, block)[0] == ATCA_EXECUTION_ERROR


def test_aes_needs_aes_enable(make_chip: ChipFactory) -> None:
    enabled, disabled = make_chip(), make_chip(aes_enable=0x00)
    block, out = secrets.token_bytes(16), buf(16)
    assert call(enabled, "calib_aes_gfm", buf(MCHP_GFM_H), buf(MCHP_GFM_IN), out) == ATCA_SUCCESS
    assert call(disabled, "calib_aes_gfm", buf(MCHP_GFM_H), buf(MCHP_GFM_IN), out) == (
        ATCA_EXECUTION_ERROR
    )
    assert aes_call(disabled, 0x00, AES_SLOT, block)[0] == ATCA_EXECUTION_ERROR
