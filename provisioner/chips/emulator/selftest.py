"""SelfTest's known-answer checks: one per mode bit of the 608's SelfTest command.

Each runs the primitive the emulator really computes with (the ``secrets`` RNG, and
``cryptography``'s ECDSA, ECDH, AES and ``hashlib``'s SHA-256) and says whether it passed.
ECDSA sign (bit 1) and verify (bit 2) share one check: a signature that verifies and an
altered message that does not.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def _selftest_rng() -> bool:
    return secrets.token_bytes(32) != secrets.token_bytes(32)


def _selftest_sha() -> bool:
    want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    return hashlib.sha256(b"abc").hexdigest() == want


def _selftest_ecdsa() -> bool:
    key = ec.generate_private_key(ec.SECP256R1())
    sig = key.sign(b"selftest", ec.ECDSA(hashes.SHA256()))
    try:
        key.public_key().verify(sig, b"selftest", ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(sig, b"selftesT", ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return True  # the good signature passed, the altered message failed
    return False


def _selftest_ecdh() -> bool:
    a, b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    return a.exchange(ec.ECDH(), b.public_key()) == b.exchange(ec.ECDH(), a.public_key())


def _selftest_aes() -> bool:  # FIPS-197 appendix C.1
    enc = Cipher(algorithms.AES(bytes(range(16))), modes.ECB()).encryptor()
    out = enc.update(bytes.fromhex("00112233445566778899aabbccddeeff")) + enc.finalize()
    return out.hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"


SELFTESTS: dict[int, Callable[[], bool]] = {
    0x01: _selftest_rng,
    0x02: _selftest_ecdsa,
    0x04: _selftest_ecdsa,
    0x08: _selftest_ecdh,
    0x10: _selftest_aes,
    0x20: _selftest_sha,
}
