"""SHA command, second round: HMAC/SHA-256 from a slot key or TempKey with each digest
target, and the 608's context read-out / restore, driven through the unmodified library
(``calib_sha_hmac*``, ``calib_sha_read_context`` / ``calib_sha_write_context``,
``calib_sha_base`` with an explicit device).

Independent references: Python's ``hmac`` / ``hashlib``; for the context's state words the
library's own software SHA-256 (``sw_sha256_init`` / ``sw_sha256_update``, whose context
struct lib/crypto/hashes/sha2_routines.h declares: it exposes the intermediate state) and
the SHA-256 initial value of FIPS 180-4 §5.3.3; for the layout the context that
cryptoauthlib's own 608 test (test/api_atcab/atca_tests_sha.c, ``sha_context``) expects.
A digest that lands in TempKey or the message-digest buffer is checked by having the chip
sign from there and verifying with ``cryptography`` over the host's HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterator
from ctypes import (
    POINTER,
    Structure,
    byref,
    c_char_p,
    c_size_t,
    c_uint8,
    c_uint16,
    c_uint32,
    c_void_p,
)
from pathlib import Path
from typing import Any

import pytest

from provisioner.chips.connector import Connector
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.library import ATCA_EXECUTION_ERROR, ATCA_PARSE_ERROR, ATCA_SUCCESS, buf
from provisioner.settings import Settings
from tests.chips.conftest import call, chip_signs, config_with, declared, personalise

_u8p = POINTER(c_uint8)

# calib_command.h
SHA_START, SHA_UPDATE, SHA_END, SHA_HMAC_START = 0x00, 0x01, 0x02, 0x04
SHA_508_HMAC_END, SHA_READ_CONTEXT, SHA_WRITE_CONTEXT = 0x05, 0x06, 0x07
TARGET_TEMPKEY, TARGET_MSGDIGBUF, TARGET_OUT_ONLY = 0x00, 0x40, 0xC0
SIGN_EXTERNAL, SIGN_SOURCE_MSGDIGBUF = 0x80, 0x20
TEMPKEY_KEY_ID = 0xFFFF  # HMAC start with the key in TempKey (datasheet "SHA - HMAC Digest")

KEY_SLOT = 0  # the profile's P-256 private key: never an HMAC key
HMAC_SLOT = 5  # KeyConfig 0x003C: KeyType "SHA key or other data"
CONTEXT_MAX = 99  # calib_basic.h SHA_CONTEXT_MAX_SIZE

# FIPS 180-4 §5.3.3: the SHA-256 initial hash value H(0)
SHA256_IV = (
    0x6A09E667,
    0xBB67AE85,
    0x3C6EF372,
    0xA54FF53A,
    0x510E527F,
    0x9B05688C,
    0x1F83D9AB,
    0x5BE0CD19,
)


class SwSha256(Structure):
    """The library's ``sw_sha256_ctx`` (lib/crypto/hashes/sha2_routines.h), with slack."""

    _fields_ = [
        ("total_msg_size", c_uint32),
        ("block_size", c_uint32),
        ("block", c_uint8 * 128),
        ("hash", c_uint32 * 8),
        ("slack", c_uint8 * 64),
    ]


@pytest.fixture(scope="module")
def fns() -> dict[str, Any]:
    """The library functions these tests call, prototypes declared."""
    ctx = c_void_p
    return {
        "hmac": declared("calib_sha_hmac", [c_void_p, _u8p, c_size_t, c_uint16, _u8p, c_uint8]),
        "init": declared("calib_sha_hmac_init", [c_void_p, ctx, c_uint16]),
        "update": declared("calib_sha_hmac_update", [c_void_p, ctx, _u8p, c_size_t]),
        "finish": declared("calib_sha_hmac_finish", [c_void_p, ctx, _u8p, c_uint8]),
        "read_ctx": declared("calib_sha_read_context", [c_void_p, _u8p, POINTER(c_uint16)]),
        "write_ctx": declared("calib_sha_write_context", [c_void_p, _u8p, c_uint16]),
        "sw_init": declared("sw_sha256_init", [POINTER(SwSha256)]),
        "sw_update": declared("sw_sha256_update", [POINTER(SwSha256), c_char_p, c_uint32]),
    }


@pytest.fixture
def hmac_key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def chip(tmp_path: Path, lib: Any, hmac_key: bytes) -> Iterator[CryptoAuthChip]:
    """A personalised chip: the profile's layout, a P-256 key in slot 0 and a 32-byte
    HMAC key in slot 5 (written in clear before the data lock)."""
    connector = Connector(Settings(var_dir=tmp_path))
    connector.jig("line1").insert_blank(0)
    device = connector.open("emulated:line1/0")
    config = config_with(
        device.profile.config_template(),
        slot_config={HMAC_SLOT: 0x0000},
        key_config={HMAC_SLOT: 0x003C},
    )
    personalise(device, config, slots={HMAC_SLOT: hmac_key}, genkey=(KEY_SLOT,))
    yield device
    device.close()


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _chip_hmac(
    fns: dict[str, Any], chip: CryptoAuthChip, message: bytes, key_id: int, target: int
) -> tuple[int, bytes]:
    digest = buf(32)
    status = int(
        fns["hmac"](chip._dev, buf(message or b"\x00"), len(message), key_id, digest, target)
    )
    return status, bytes(digest)


def _signed_over(chip: CryptoAuthChip, sign_mode: int, digest: bytes) -> bool:
    """The chip signs (external, slot 0) from TempKey or the digest buffer; True if the
    signature verifies over ``digest``."""
    return chip_signs(chip, sign_mode, KEY_SLOT, chip.public_key(KEY_SLOT), digest)


def _tempkey_valid(chip: CryptoAuthChip) -> bool:
    state = buf(4)
    assert call(chip, "calib_info_base", 0x02, 0, state) == ATCA_SUCCESS
    return bool(state[1] & 0x80)


def _sha_base(
    chip: CryptoAuthChip, mode: int, data: bytes | None, length: int | None = None
) -> tuple[int, bytes]:
    out, size = buf(CONTEXT_MAX), c_uint16(CONTEXT_MAX)
    n = len(data) if length is None and data is not None else (length or 0)
    status = call(chip, "calib_sha_base", mode, n, buf(data) if data else None, out, byref(size))
    return status, bytes(out)[: size.value]


# --- HMAC ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 55, 63, 64, 65, 200])
def test_hmac_with_a_slot_key_equals_python_hmac(
    fns: dict[str, Any], chip: CryptoAuthChip, hmac_key: bytes, size: int
) -> None:
    message = bytes((i * 13 + 5) & 0xFF for i in range(size))
    status, digest = _chip_hmac(fns, chip, message, HMAC_SLOT, TARGET_OUT_ONLY)
    assert status == ATCA_SUCCESS
    assert digest == _hmac(hmac_key, message)
    assert not _tempkey_valid(chip)  # output only: TempKey untouched


def test_hmac_in_pieces_through_init_update_finish(
    fns: dict[str, Any], chip: CryptoAuthChip, hmac_key: bytes
) -> None:
    """The library's streaming API (its own 64-byte blocking, then End with the rest)."""
    message = secrets.token_bytes(300)
    ctx = (c_uint8 * 256)()  # atca_hmac_sha256_ctx is 136 bytes in the wheel's atcab.py
    assert fns["init"](chip._dev, ctx, HMAC_SLOT) == ATCA_SUCCESS
    for start, stop in ((0, 10), (10, 150), (150, 151), (151, 300)):
        piece = message[start:stop]
        assert fns["update"](chip._dev, ctx, buf(piece), len(piece)) == ATCA_SUCCESS
    digest = buf(32)
    assert fns["finish"](chip._dev, ctx, digest, TARGET_OUT_ONLY) == ATCA_SUCCESS
    assert bytes(digest) == _hmac(hmac_key, message)


def test_hmac_to_tempkey_and_to_the_digest_buffer(
    fns: dict[str, Any], chip: CryptoAuthChip, hmac_key: bytes
) -> None:
    message = b"firmware manifest v7"
    want = _hmac(hmac_key, message)
    status, digest = _chip_hmac(fns, chip, message, HMAC_SLOT, TARGET_TEMPKEY)
    assert (status, digest) == (ATCA_SUCCESS, want)
    assert _tempkey_valid(chip)
    assert _signed_over(chip, SIGN_EXTERNAL, want)  # Sign from TempKey signs the HMAC

    assert call(chip, "calib_sleep") == ATCA_SUCCESS  # TempKey gone
    status, digest = _chip_hmac(fns, chip, message, HMAC_SLOT, TARGET_MSGDIGBUF)
    assert (status, digest) == (ATCA_SUCCESS, want)
    assert not _tempkey_valid(chip)  # the digest went to the buffer, not TempKey
    assert _signed_over(chip, SIGN_EXTERNAL | SIGN_SOURCE_MSGDIGBUF, want)


def test_hmac_with_the_key_in_tempkey(fns: dict[str, Any], chip: CryptoAuthChip) -> None:
    key = secrets.token_bytes(32)
    assert call(chip, "calib_nonce_load", 0x00, buf(key), 32) == ATCA_SUCCESS  # pass-through
    message = secrets.token_bytes(77)
    status, digest = _chip_hmac(fns, chip, message, TEMPKEY_KEY_ID, TARGET_OUT_ONLY)
    assert (status, digest) == (ATCA_SUCCESS, _hmac(key, message))


def test_hmac_refusals(fns: dict[str, Any], chip: CryptoAuthChip, hmac_key: bytes) -> None:
    # an ECC private key is never an HMAC key: execution error
    assert _chip_hmac(fns, chip, b"m", KEY_SLOT, TARGET_OUT_ONLY)[0] == ATCA_EXECUTION_ERROR
    # slot 16 does not exist: parse error
    assert _sha_base(chip, SHA_HMAC_START, None, 16)[0] == ATCA_PARSE_ERROR
    # TempKey as key but TempKey invalid (after sleep): execution error
    assert call(chip, "calib_sleep") == ATCA_SUCCESS
    assert _chip_hmac(fns, chip, b"m", TEMPKEY_KEY_ID, TARGET_OUT_ONLY)[0] == ATCA_EXECUTION_ERROR
    # mode 5 is the 508's HMAC end, no 608 mode: parse error
    assert _sha_base(chip, SHA_HMAC_START, None, HMAC_SLOT)[0] == ATCA_SUCCESS
    assert _sha_base(chip, SHA_508_HMAC_END, b"")[0] == ATCA_PARSE_ERROR
    # an HMAC context cannot be read out (context switching is SHA-256 only)
    assert _sha_base(chip, SHA_READ_CONTEXT, None)[0] == ATCA_EXECUTION_ERROR
    # ... and the refusals left the HMAC running: it still ends with the right digest
    status, digest = _sha_base(chip, SHA_END | TARGET_OUT_ONLY, b"m")
    assert (status, digest) == (ATCA_SUCCESS, _hmac(hmac_key, b"m"))


# --- SHA-256 context read-out and restore ----------------------------------------------


def _sw_state(fns: dict[str, Any], message: bytes) -> tuple[int, ...]:
    """The library's software SHA-256 state after ``message`` (whole blocks processed)."""
    ctx = SwSha256()
    assert fns["sw_init"](byref(ctx)) == 0
    assert tuple(ctx.hash) == SHA256_IV  # the struct layout is the library's
    assert fns["sw_update"](byref(ctx), message, len(message)) == 0
    return tuple(ctx.hash)


def _expected_context(fns: dict[str, Any], prefix: bytes) -> bytes:
    """Byte count (LE) || state words (LE) || partial block: the layout of cryptoauthlib's
    608 test vector and the datasheet's 36 + (count mod 64) bytes."""
    words = b"".join(w.to_bytes(4, "little") for w in _sw_state(fns, prefix))
    return len(prefix).to_bytes(4, "little") + words + prefix[len(prefix) - len(prefix) % 64 :]


def _feed(chip: CryptoAuthChip, message: bytes) -> None:
    """SHA updates of at most 64 bytes (the 608 takes partial blocks: 1 to 64)."""
    for i in range(0, len(message), 64):
        assert _sha_base(chip, SHA_UPDATE, message[i : i + 64])[0] == ATCA_SUCCESS


def _read_context(fns: dict[str, Any], chip: CryptoAuthChip) -> tuple[int, bytes]:
    context, size = buf(CONTEXT_MAX), c_uint16(CONTEXT_MAX)
    status = int(fns["read_ctx"](chip._dev, context, byref(size)))
    return status, bytes(context)[: size.value]


def test_context_of_the_librarys_own_vector(fns: dict[str, Any], chip: CryptoAuthChip) -> None:
    """atca_tests_sha.c ``sha_context``: Start, Update(01..05), read the context; its
    expected bytes (kept in a comment there) are count 5, H(0) as LE words, the 5 bytes."""
    assert _sha_base(chip, SHA_START, None)[0] == ATCA_SUCCESS
    _feed(chip, bytes([1, 2, 3, 4, 5]))
    status, context = _read_context(fns, chip)
    assert status == ATCA_SUCCESS
    iv = b"".join(w.to_bytes(4, "little") for w in SHA256_IV)
    assert context == bytes([5, 0, 0, 0]) + iv + bytes([1, 2, 3, 4, 5])
    assert context[4:8] == bytes.fromhex("67E6096A")  # as the library's test has it
    # the read leaves the context valid: it goes on to the digest of 01..05 01..05
    _feed(chip, bytes([1, 2, 3, 4, 5]))
    status, digest = _sha_base(chip, SHA_END | TARGET_OUT_ONLY, b"")
    assert status == ATCA_SUCCESS
    assert digest == hashlib.sha256(bytes([1, 2, 3, 4, 5]) * 2).digest()
    assert digest.hex().upper().startswith("E6D32195")  # the library test's expected digest


@pytest.mark.parametrize("prefix_size", [5, 64, 100, 191])
def test_context_read_interleave_and_restore(
    fns: dict[str, Any], chip: CryptoAuthChip, prefix_size: int
) -> None:
    message = secrets.token_bytes(prefix_size + 50)
    prefix, rest = message[:prefix_size], message[prefix_size:]
    assert _sha_base(chip, SHA_START, None)[0] == ATCA_SUCCESS
    _feed(chip, prefix)
    status, context = _read_context(fns, chip)
    assert status == ATCA_SUCCESS
    assert context == _expected_context(fns, prefix)
    assert len(context) == 36 + prefix_size % 64

    # another digest in between uses (and spends) the chip's one context
    other = buf(32)
    assert call(chip, "calib_hw_sha2_256", buf(b"other"), 5, other) == ATCA_SUCCESS
    assert bytes(other) == hashlib.sha256(b"other").digest()

    assert fns["write_ctx"](chip._dev, buf(context), len(context)) == ATCA_SUCCESS
    _feed(chip, rest)
    status, digest = _sha_base(chip, SHA_END | TARGET_OUT_ONLY, b"")
    assert status == ATCA_SUCCESS
    assert digest == hashlib.sha256(message).digest()


def test_a_context_made_on_the_host_continues_on_the_chip(
    fns: dict[str, Any], chip: CryptoAuthChip
) -> None:
    """Write_Context alone (no prior read): the state the library's software SHA-256 holds
    after 150 bytes, handed to the chip, finishes to hashlib's digest of the whole."""
    message = secrets.token_bytes(230)
    context = _expected_context(fns, message[:150])
    assert fns["write_ctx"](chip._dev, buf(context), len(context)) == ATCA_SUCCESS
    _feed(chip, message[150:200])
    end = SHA_END | TARGET_OUT_ONLY
    status, digest = _sha_base(chip, end, message[200:])
    assert status == ATCA_SUCCESS
    assert digest == hashlib.sha256(message).digest()


def test_context_refusals(fns: dict[str, Any], chip: CryptoAuthChip) -> None:
    # nothing to read before a Start: execution error
    assert _read_context(fns, chip)[0] == ATCA_EXECUTION_ERROR
    good = _expected_context(fns, bytes(70))  # count 70: 6 bytes of partial block
    # the length must be 36 + (count mod 64): one byte short or long is a parse error
    for bad in (good[:-1], good + b"\x00", good[:35]):
        assert fns["write_ctx"](chip._dev, buf(bad), len(bad)) == ATCA_PARSE_ERROR
    # Update takes 1 to 64 bytes
    assert _sha_base(chip, SHA_START, None)[0] == ATCA_SUCCESS
    assert _sha_base(chip, SHA_UPDATE, None, 0)[0] == ATCA_PARSE_ERROR
    # a well-formed context replaces whatever ran (here the Start's)
    assert fns["write_ctx"](chip._dev, buf(good), len(good)) == ATCA_SUCCESS
    status, digest = _sha_base(chip, SHA_END | TARGET_OUT_ONLY, b"")
    assert (status, digest) == (ATCA_SUCCESS, hashlib.sha256(bytes(70)).digest())
    # sleep loses the context
    assert _sha_base(chip, SHA_START, None)[0] == ATCA_SUCCESS
    assert call(chip, "calib_sleep") == ATCA_SUCCESS
    assert _read_context(fns, chip)[0] == ATCA_EXECUTION_ERROR


def test_hmac_slot_keys_follow_the_symmetric_key_rules(
    fns: dict[str, Any], tmp_path: Path, lib: Any, hmac_key: bytes
) -> None:
    """A slot key serves HMAC only once the data zone is locked, and never when its
    KeyConfig asks for prior authorization (ReqAuth, not emulated), as for GenDig/MAC."""
    connector = Connector(Settings(var_dir=tmp_path))
    connector.jig("line1").insert_blank(0)
    req_auth = 0x003C | 0x0080  # KeyConfig bit 7: ReqAuth
    with connector.open("emulated:line1/0") as device:
        config = config_with(
            device.profile.config_template(),
            slot_config={HMAC_SLOT: 0x0000, HMAC_SLOT + 1: 0x0000},
            key_config={HMAC_SLOT: 0x003C, HMAC_SLOT + 1: req_auth},
        )
        personalise(device, config, slots={HMAC_SLOT: hmac_key}, lock_data=False)
        status = _chip_hmac(fns, device, b"m", HMAC_SLOT, TARGET_OUT_ONLY)[0]
        assert status == ATCA_EXECUTION_ERROR  # data zone still unlocked
        device.lock_data_zone()
        status, digest = _chip_hmac(fns, device, b"m", HMAC_SLOT, TARGET_OUT_ONLY)
        assert (status, digest) == (ATCA_SUCCESS, _hmac(hmac_key, b"m"))
        status = _chip_hmac(fns, device, b"m", HMAC_SLOT + 1, TARGET_OUT_ONLY)[0]
        assert status == ATCA_EXECUTION_ERROR  # ReqAuth
