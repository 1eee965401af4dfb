"""TempKey: the chip's 64-byte volatile register and the flags that say where it came from.

The flags are the datasheet's (Info(State) byte 0/1 and the TempKey description) and
cryptoauthlib's host model of them (``atca_temp_key_t`` in lib/host/atca_host.h):
SourceFlag (0 = random nonce, 1 = input: pass-through, SHA digest, ECDH output, ...),
GenDigData / GenKeyData (TempKey was made by GenDig / GenKey digest mode, from slot
``key_id``), NoMacFlag (made from a key whose KeyConfig forbids MAC use). Commands that
consume TempKey (MAC, CheckMac, Sign internal, GenDig, encrypted Write/Read, ...) check
these flags as silicon does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TempKey:
    value: bytes  # 32 bytes, or 64 after a 64-byte pass-through Nonce
    source_input: bool = False  # SourceFlag: True = fixed/input, False = random nonce
    gen_dig: bool = False  # GenDigData
    gen_key: bool = False  # GenKeyData
    no_mac: bool = False  # NoMacFlag
    key_id: int = 0  # the slot GenDig / GenKey used (4 bits)

    def state_bytes(self) -> bytes:
        """Info(State) bytes 0-1: byte 0 = NoMacFlag (7), GenKeyData (6), GenDigData (5),
        SourceFlag (4), KeyID (3:0); byte 1 bit 7 = TempKey.Valid."""
        byte0 = (
            (0x80 if self.no_mac else 0)
            | (0x40 if self.gen_key else 0)
            | (0x20 if self.gen_dig else 0)
            | (0x10 if self.source_input else 0)
            | (self.key_id & 0x0F)
        )
        return bytes([byte0, 0x80])
