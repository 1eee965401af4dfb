"""IO protection: how the chip encrypts a secret it sends out (ECDH, KDF output) or takes
in (encrypted PrivWrite is not emulated), with the IO protection key.

Per 32-byte block: key stream = SHA-256(IO protection key || 16 bytes of the output
nonce for that block), XORed over the block. The same transformation is its own inverse;
cryptoauthlib's host side is ``atcah_io_decrypt`` (lib/host/atca_host.c), which the tests
use as the independent reference. The IO protection key slot is ChipOptions bits 12-15
(config bytes 90-91), enabled by ChipOptions bit 1.
"""

from __future__ import annotations

import hashlib


def io_encrypt(io_key: bytes, out_nonce: bytes, data: bytes) -> bytes:
    """Encrypt (or decrypt) ``data`` (whole 32-byte blocks) under ``io_key``; one 16-byte
    slice of ``out_nonce`` per block."""
    if len(data) % 32 or len(out_nonce) < 16 * (len(data) // 32):
        raise ValueError("io_encrypt takes whole 32-byte blocks and 16 nonce bytes per block")
    out = bytearray(data)
    for block in range(len(data) // 32):
        stream = hashlib.sha256(io_key + out_nonce[16 * block : 16 * block + 16]).digest()
        for i in range(32):
            out[32 * block + i] ^= stream[i]
    return bytes(out)
