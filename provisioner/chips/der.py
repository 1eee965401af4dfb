"""Just enough DER to find where each element of a certificate sits.

A compressed-certificate definition is a template certificate plus the byte offsets of
everything that varies per device. Those offsets come from walking the template's DER
tree; this module walks it (definite lengths only, as DER requires) and nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.errors import InvalidInputError

# Tags used by X.509.
SEQUENCE, SET, INTEGER, BIT_STRING, OCTET_STRING, OID = 0x30, 0x31, 0x02, 0x03, 0x04, 0x06
UTC_TIME, GENERALIZED_TIME = 0x17, 0x18
CONTEXT_0, CONTEXT_3 = 0xA0, 0xA3
KEY_ID_0 = 0x80  # [0] IMPLICIT keyIdentifier inside AuthorityKeyIdentifier


@dataclass(frozen=True)
class Tlv:
    """One DER element: where its tag sits, how long its header is, how long its value."""

    tag: int
    offset: int
    header: int
    length: int

    @property
    def value_offset(self) -> int:
        return self.offset + self.header

    @property
    def end(self) -> int:
        return self.value_offset + self.length

    @property
    def size(self) -> int:
        return self.header + self.length


def read_tlv(data: bytes, offset: int) -> Tlv:
    """The element starting at ``offset``; refuses indefinite or overlong lengths."""
    if offset + 2 > len(data):
        raise InvalidInputError(f"DER: truncated element at offset {offset}")
    tag, first = data[offset], data[offset + 1]
    if tag & 0x1F == 0x1F:
        raise InvalidInputError(f"DER: multi-byte tag at offset {offset}")
    if first < 0x80:
        header, length = 2, first
    else:
        n = first & 0x7F
        if n == 0 or n > 3 or offset + 2 + n > len(data):
            raise InvalidInputError(f"DER: unsupported length encoding at offset {offset}")
        header, length = 2 + n, int.from_bytes(data[offset + 2 : offset + 2 + n], "big")
    tlv = Tlv(tag, offset, header, length)
    if tlv.end > len(data):
        raise InvalidInputError(f"DER: element at offset {offset} runs past the end")
    return tlv


def children(data: bytes, parent: Tlv) -> list[Tlv]:
    """The elements inside a constructed element, in order."""
    out: list[Tlv] = []
    pos = parent.value_offset
    while pos < parent.end:
        child = read_tlv(data, pos)
        out.append(child)
        pos = child.end
    if pos != parent.end:
        raise InvalidInputError(f"DER: element at offset {parent.offset} is malformed")
    return out


def value(data: bytes, tlv: Tlv) -> bytes:
    return data[tlv.value_offset : tlv.end]


def encode_oid(dotted: str) -> bytes:
    """The content octets of an OBJECT IDENTIFIER (to compare against templates)."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return bytes(out)
