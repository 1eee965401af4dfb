"""SHA (0x47): SHA-256 start / update (64 bytes) / end (0-63 bytes) / public.

"Public" hashes the public key stored in slot p2 (a private-key slot is refused). HMAC and
context save/restore are not implemented and refused. cryptoauthlib always sends p2 = 0
for mode 3 (calib_sha_base treats it as the ECC204's HMAC start), so through the library
"public" names slot 0. The digest of End lands in TempKey (SourceFlag input) or the
message-digest buffer per mode bits 6-7.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

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


def sha(chip: EmulatedChip, mode: int, p2: int, data: bytes) -> Reply:
    kind, target = mode & 0x07, mode & 0xC0
    if kind == 0x00:
        if data or p2:
            raise CommandError(PARSE_ERROR)
        chip.sha = hashlib.sha256()
        return None, False
    if kind not in (0x01, 0x02, 0x03):
        raise CommandError(PARSE_ERROR)
    if chip.sha is None:
        raise CommandError(EXECUTION_ERROR)  # no context: start first
    if kind == 0x01:
        if p2 != 64 or len(data) != 64:
            raise CommandError(PARSE_ERROR)
        chip.sha.update(data)
        return None, False
    if kind == 0x03:
        if data:
            raise CommandError(PARSE_ERROR)
        chip.sha.update(public_key_in(chip, p2))
        return None, False
    if p2 != len(data) or p2 > 63 or target == 0x80:
        raise CommandError(PARSE_ERROR)
    chip.sha.update(data)
    digest: bytes = chip.sha.digest()
    chip.sha = None
    if target == 0x00:
        chip.set_tempkey(digest, source_input=True)
    elif target == 0x40:
        chip.msg_digest = digest
    return digest, False


HANDLERS = {OP_SHA: sha}
