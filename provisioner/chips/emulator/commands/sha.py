"""SHA (0x47): SHA-256 and HMAC/SHA-256 in the chip's context buffer, and the context
read-out / restore that lets a host interleave several digests (ATECC608 only).

Modes (low three bits of p1; datasheet "SHA Command", cryptoauthlib calib_command.h):

- 0 Start: a fresh SHA-256 context (no data, p2 = 0).
- 1 Update: 1 to 64 message bytes (p2 = their count); the 608 buffers a partial block.
- 2 End: 0 to 64 last bytes; the digest is answered and also lands, per bits 6-7, in
  TempKey (0x00, SourceFlag "input"), the message-digest buffer (0x40) or nowhere (0xC0);
  0x80 is no target. On the 608 End also finishes an HMAC (the library's
  SHA_MODE_608_HMAC_END = 0x02).
- 3 Public: the 64-byte public key stored in slot p2 (a private-key slot is refused).
  cryptoauthlib always sends p2 = 0 for mode 3 (calib_sha_base treats 3 as the ECC204's
  HMAC start), so through the library "public" names slot 0.
- 4 HMAC start: key = the first 32 bytes of slot p2, or TempKey for p2 = 0xFFFF (it must be
  valid). HMAC/SHA-256 per RFC 2104 with that 32-byte key, so End answers what Python's
  ``hmac`` computes.
- 6 Read context: 36 + n bytes, n = bytes of the partial block: the message byte count
  (4, little-endian), the eight state words (each little-endian) and the partial block.
  The context stays valid in the chip.
- 7 Write context: restores such a context (p2 = its length, checked against the count's
  low six bits); what follows continues that digest.

Refused as silicon refuses: an unknown mode (5: the 508's HMAC end), mode bits 3-5 set or a
wrong length, parse error 0x03; Update/End/Public/Read without a context, an HMAC key from
a private-key slot or from an invalid TempKey, and reading out an HMAC context (context
switching is for SHA-256 only: the state would give the key away), execution error 0x0F. A
refused command leaves the context as it was. Not modelled (no source found): further
KeyConfig checks on the HMAC key slot (LimitedUse, ReqAuth, ReqRandom) and the TempKey
flags an HMAC End into TempKey sets beyond SourceFlag "input".

The context needs the SHA-256 intermediate state, which ``hashlib`` does not expose, so the
compression function is written out here (FIPS 180-4); the tests check it against hashlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from provisioner.chips.emulator.commands.auth import slot_secret
from provisioner.chips.emulator.commands.keys import public_key_in
from provisioner.chips.emulator.wire import (
    EXECUTION_ERROR,
    OP_SHA,
    PARSE_ERROR,
    CommandError,
    Reply,
)

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip

BLOCK = 64
HEADER = 4 + 32  # byte count + state words: the context's fixed part
TEMPKEY_ID = 0xFFFF
MASK = 0xFFFFFFFF


def _primes(count: int) -> list[int]:
    found: list[int] = []
    n = 2
    while len(found) < count:
        if all(n % p for p in found if p * p <= n):
            found.append(n)
        n += 1
    return found


def _icbrt(n: int) -> int:
    """floor(n ** (1/3)) exactly (Newton's method from above)."""
    x = 1 << -(-n.bit_length() // 3)
    while True:
        y = (2 * x + n // (x * x)) // 3
        if y >= x:
            return x
        x = y


# FIPS 180-4 §4.2.2 and §5.3.3: fractional parts of square / cube roots of the primes.
_PRIMES = _primes(64)
IV = tuple(math.isqrt(p << 64) & MASK for p in _PRIMES[:8])
_K = tuple(_icbrt(p << 96) & MASK for p in _PRIMES)


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & MASK


def compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    """One SHA-256 compression of a 64-byte block into ``state`` (FIPS 180-4 §6.2.2)."""
    w = [int.from_bytes(block[i : i + 4], "big") for i in range(0, BLOCK, 4)]
    for t in range(16, 64):
        s0 = _rotr(w[t - 15], 7) ^ _rotr(w[t - 15], 18) ^ (w[t - 15] >> 3)
        s1 = _rotr(w[t - 2], 17) ^ _rotr(w[t - 2], 19) ^ (w[t - 2] >> 10)
        w.append((w[t - 16] + s0 + w[t - 7] + s1) & MASK)
    a, b, c, d, e, f, g, h = state
    for t in range(64):
        t1 = h + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g)) + _K[t] + w[t]
        t2 = (_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))
        a, b, c, d, e, f, g, h = (t1 + t2) & MASK, a, b, c, (d + t1) & MASK, e, f, g
    return tuple((x + y) & MASK for x, y in zip(state, (a, b, c, d, e, f, g, h), strict=True))


@dataclass
class ShaContext:
    """The chip's context buffer: state, message length and the partial block; for an
    HMAC also the (zero-padded) key, needed again for the outer hash."""

    state: tuple[int, ...] = IV
    length: int = 0
    pending: bytes = b""
    hmac_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def hmac(cls, key: bytes) -> ShaContext:
        padded = key.ljust(BLOCK, b"\x00")
        ctx = cls(hmac_key=padded)
        ctx.update(bytes(k ^ 0x36 for k in padded))
        return ctx

    def update(self, data: bytes) -> None:
        self.length += len(data)
        buffered = self.pending + data
        whole = len(buffered) - len(buffered) % BLOCK
        for i in range(0, whole, BLOCK):
            self.state = compress(self.state, buffered[i : i + BLOCK])
        self.pending = buffered[whole:]

    def finish(self) -> bytes:
        """The digest (SHA-256, or HMAC for an HMAC context); the context is spent."""
        tail = self.pending + b"\x80" + bytes(-(len(self.pending) + 9) % BLOCK)
        tail += (self.length * 8).to_bytes(8, "big")
        state = self.state
        for i in range(0, len(tail), BLOCK):
            state = compress(state, tail[i : i + BLOCK])
        digest = b"".join(x.to_bytes(4, "big") for x in state)
        if self.hmac_key is None:
            return digest
        outer = ShaContext()
        outer.update(bytes(k ^ 0x5C for k in self.hmac_key) + digest)
        return outer.finish()

    def saved(self) -> bytes:
        """The Read_Context answer (see the module docstring for the layout)."""
        words = b"".join(x.to_bytes(4, "little") for x in self.state)
        return (self.length & MASK).to_bytes(4, "little") + words + self.pending

    @classmethod
    def restored(cls, blob: bytes) -> ShaContext:
        """A context from a Write_Context blob; parse error if its length disagrees with
        the byte count it carries (the chip sizes the context from the first 4 bytes)."""
        if len(blob) < HEADER:
            raise CommandError(PARSE_ERROR)
        length = int.from_bytes(blob[0:4], "little")
        if len(blob) != HEADER + length % BLOCK:
            raise CommandError(PARSE_ERROR)
        state = tuple(int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "little") for i in range(8))
        return cls(state=state, length=length, pending=bytes(blob[HEADER:]))


def _hmac_key(chip: EmulatedChip, key_id: int) -> bytes:
    if key_id == TEMPKEY_ID:
        if chip.tempkey is None:
            raise CommandError(EXECUTION_ERROR)
        return bytes(chip.tempkey.value[:32])
    if key_id > 15:
        raise CommandError(PARSE_ERROR)
    return slot_secret(chip, key_id)  # the rules every symmetric key use shares


def _context(chip: EmulatedChip) -> ShaContext:
    ctx = chip.sha
    if not isinstance(ctx, ShaContext):
        raise CommandError(EXECUTION_ERROR)  # no context: Start (or HMAC start) first
    return ctx


def _end(chip: EmulatedChip, target: int, p2: int, data: bytes) -> Reply:
    if p2 != len(data) or p2 > BLOCK or target == 0x80:
        raise CommandError(PARSE_ERROR)
    ctx = _context(chip)
    ctx.update(data)
    digest = ctx.finish()
    chip.sha = None
    if target == 0x00:
        chip.set_tempkey(digest, source_input=True)
    elif target == 0x40:
        chip.msg_digest = digest
    return digest, False


def sha(chip: EmulatedChip, mode: int, p2: int, data: bytes) -> Reply:
    kind, target = mode & 0x07, mode & 0xC0
    if mode & 0x38:
        raise CommandError(PARSE_ERROR)  # bits 3-5 are reserved
    if kind == 0x00:
        if data or p2:
            raise CommandError(PARSE_ERROR)
        chip.sha = ShaContext()
    elif kind == 0x04:
        if data:
            raise CommandError(PARSE_ERROR)
        chip.sha = ShaContext.hmac(_hmac_key(chip, p2))
    elif kind == 0x01:
        if not 1 <= p2 <= BLOCK or p2 != len(data):
            raise CommandError(PARSE_ERROR)
        _context(chip).update(data)
    elif kind == 0x02:
        return _end(chip, target, p2, data)
    elif kind == 0x03:
        if data:
            raise CommandError(PARSE_ERROR)
        ctx = _context(chip)
        ctx.update(public_key_in(chip, p2))
    elif kind == 0x06:
        if data or p2:
            raise CommandError(PARSE_ERROR)
        ctx = _context(chip)
        if ctx.hmac_key is not None:
            raise CommandError(EXECUTION_ERROR)
        return ctx.saved(), False
    elif kind == 0x07:
        if p2 != len(data):
            raise CommandError(PARSE_ERROR)
        chip.sha = ShaContext.restored(data)
    else:
        raise CommandError(PARSE_ERROR)
    return None, False


HANDLERS = {OP_SHA: sha}
