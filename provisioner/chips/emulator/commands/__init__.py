"""The 608's commands, one module per command family; :data:`HANDLERS` maps each opcode to
its handler ``(chip, param1, param2, data) -> (response data | None, state changed)``.

A handler refuses with :class:`~provisioner.chips.emulator.wire.CommandError` (the status
byte silicon answers). An opcode missing here answers a parse error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from provisioner.chips.emulator.commands import (
    aes,
    auth,
    counter,
    ecdh,
    info,
    kdf,
    keys,
    nonce,
    selftest,
    sha,
    zones,
)
from provisioner.chips.emulator.wire import (
    OP_INFO,
    OP_LOCK,
    OP_NONCE,
    OP_RANDOM,
    OP_READ,
    OP_UPDATE_EXTRA,
    OP_WRITE,
    Reply,
)

if TYPE_CHECKING:
    from provisioner.chips.emulator.chip import EmulatedChip

Handler = Callable[["EmulatedChip", int, int, bytes], Reply]

HANDLERS: dict[int, Handler] = {
    OP_INFO: info.info,
    OP_READ: zones.read,
    OP_WRITE: zones.write,
    OP_UPDATE_EXTRA: zones.update_extra,
    OP_LOCK: zones.lock,
    OP_RANDOM: nonce.random,
    OP_NONCE: nonce.nonce,
    **keys.HANDLERS,
    **sha.HANDLERS,
    **counter.HANDLERS,
    **selftest.HANDLERS,
    **ecdh.HANDLERS,
    **auth.HANDLERS,
    **kdf.HANDLERS,
    **aes.HANDLERS,
}
