"""Pre-provisioned parts (Trust&GO, TrustFLEX): their certificates, read through the
library's own TNG definitions.

Microchip ships these parts locked, with a key in slot 0 and the device and signer
certificates stored compressed (slots 10, 11, 12). Which certificate definition applies is
written in the first 8 bytes of the OTP zone; the library maps that code to one of the
definitions compiled into it (``tng_get_device_cert_def_ext``, app/tng/tng_atca.c), and the
device definition's ``ca_cert_def`` is the signer's. Nothing here hard-codes a template: the
definitions are the wheel's own ``atcacert_def_t`` structures, used through pointers.

The signer certificate is rebuilt with ``atcacert_read_cert_ext`` and the root public key
the caller trusts, never with ``tng_atcacert_read_signer_cert`` (that one hard-codes
Microchip's root key, app/tng/tng_atcacert_client.c), so a part under another manufacturer
root (an emulated one in tests) reads back with that root's key identifier.
"""

from __future__ import annotations

from ctypes import POINTER, byref, c_int, c_size_t, c_uint16, c_void_p
from dataclasses import dataclass
from typing import Any

from provisioner.chips.atcacert import CERT_MEANING, LIBRARY_BUFFERS
from provisioner.chips.atcacert import library as _atcacert_lib
from provisioner.chips.library import buf

# 8-bit I2C addresses the parts ship with (Trust&GO TNGTLS 0x6A, TrustFLEX TFLXTLS 0x6C;
# research notes, docs/atecc608 config byte 16).
PART_ADDRESSES = {"trust-and-go": 0x6A, "trustflex": 0x6C}

# OTP codes in the order of the library's map (app/tng/tng_atca.c, g_tng_cert_def_map, with
# ATCA_TNG_LEGACY_SUPPORT, ATCA_TFLEX_SUPPORT, ATCA_TNGTLS_SUPPORT and ATCA_TNGLORA_SUPPORT
# all compiled into the wheel: ``tng_map_get_device_cert_def`` answers 8 entries). The
# kind of a part is the kind of the map entry whose definition the library chose.
OTP_CODES: tuple[tuple[bytes, str], ...] = (
    (b"wdNxAjae", "tngtls"),
    (b"Rsuy5YJh", "tngtls"),
    (b"BxZvm6q2", "tnglora"),
    (b"MKMwyhP1", "tflxtls"),
    (b"KQp2ZkD8", "tngtls"),
    (b"x6tjuZMy", "tngtls"),
    (b"jsMu7iYO", "tnglora"),
    (b"09qJNxI3", "tnglora"),
)
OTP_CODE = {"tngtls": b"x6tjuZMy", "tflxtls": b"MKMwyhP1"}  # current production codes

ATCACERT_E_WRONG_CERT_DEF = 11  # atcacert.h


@dataclass(frozen=True)
class FactoryCertificates:
    """What a pre-provisioned part carries: its certificate, its signer's, both in DER as
    the library rebuilds them, the definition family and the slot of the device key."""

    device_der: bytes
    signer_der: bytes
    kind: str  # "tngtls" | "tflxtls" (| "tnglora")
    key_slot: int


class TngError(Exception):
    """The library refused (status, what); the caller words it for its context."""

    def __init__(self, what: str, status: int) -> None:
        meaning = CERT_MEANING.get(status, f"status {status}")
        super().__init__(f"{what}: {meaning}")
        self.status = status


_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "tng_get_device_cert_def_ext": (c_int, [c_void_p, POINTER(c_void_p)]),
    "tng_map_get_device_cert_def": (c_void_p, [c_int]),
}


def _lib() -> Any:
    """The library with the TNG prototypes declared (the ``atcacert_*`` ones as
    :mod:`provisioner.chips.atcacert` declares them: definitions pass as ``c_void_p``)."""
    lib = _atcacert_lib()
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def definition_map() -> list[int]:
    """The library's TNG map: the device definition (address) of each OTP code."""
    lib = _lib()
    return [int(lib.tng_map_get_device_cert_def(i) or 0) for i in range(len(OTP_CODES))]


def kind_of(definition: int) -> str:
    """The kind (tngtls, tflxtls, tnglora) of a device definition the library chose."""
    for address, (_, kind) in zip(definition_map(), OTP_CODES, strict=True):
        if address == definition:
            return kind
    raise TngError("a definition outside the library's TNG map", ATCACERT_E_WRONG_CERT_DEF)


def definition_for(kind: str) -> int:
    """The library's device definition for ``kind``'s production OTP code."""
    codes = [code for code, _ in OTP_CODES]
    return definition_map()[codes.index(OTP_CODE[kind])]


def device_definition(device: c_void_p) -> int:
    """``tng_get_device_cert_def_ext``: the device definition the chip's OTP code names."""
    out = c_void_p()
    with LIBRARY_BUFFERS:
        status = int(_lib().tng_get_device_cert_def_ext(device, byref(out)))
    if status or not out.value:
        raise TngError("the chip's OTP names no TNG certificate definition", status or 1)
    return int(out.value)


def signer_definition(definition: int) -> int:
    """The ``ca_cert_def`` of a device definition (the signer's)."""
    from cryptoauthlib.atcacert import atcacert_def_t

    struct = atcacert_def_t.from_address(definition)
    ca = c_void_p.from_buffer(struct, atcacert_def_t.ca_cert_def.offset).value
    if not ca:
        raise TngError("the device definition names no signer definition", 8)
    return int(ca)


def private_key_slot(definition: int) -> int:
    """The slot of the device key a definition names (``private_key_slot``)."""
    from cryptoauthlib.atcacert import atcacert_def_t

    return int(c_uint16.from_address(definition + atcacert_def_t.private_key_slot.offset).value)


def max_cert_size(definition: int) -> int:
    size = c_size_t(0)
    status = int(_lib().atcacert_max_cert_size(definition, byref(size)))
    if status:
        raise TngError("atcacert_max_cert_size", status)
    return size.value


def read_cert(device: c_void_p, definition: int, ca_public_key: bytes) -> bytes:
    """``atcacert_read_cert_ext``: the certificate rebuilt from the chip under
    ``definition``, its authority key identifier from ``ca_public_key`` (X||Y)."""
    from cryptoauthlib.library import cal_buffer

    key = bytearray(ca_public_key)
    key_buf = cal_buffer(len(key), key)
    capacity = max_cert_size(definition) + 16
    out = buf(capacity)
    size = c_size_t(capacity)
    with LIBRARY_BUFFERS:
        status = int(
            _lib().atcacert_read_cert_ext(device, definition, byref(key_buf), out, byref(size))
        )
    del key  # kept alive until here: key_buf points into it
    if status:
        raise TngError("atcacert_read_cert_ext", status)
    return bytes(out)[: size.value]


def write_cert(device: c_void_p, definition: int, der: bytes) -> None:
    """``atcacert_write_cert_ext``: store ``der`` compressed where ``definition`` says."""
    data = buf(der)
    with LIBRARY_BUFFERS:
        status = int(_lib().atcacert_write_cert_ext(device, definition, data, len(der)))
    if status:
        raise TngError("atcacert_write_cert_ext", status)


def public_key_of(der: bytes) -> bytes:
    """X||Y of a P-256 certificate's subject public key (ValueError otherwise)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_der_x509_certificate(der).public_key()
    raw = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    if len(raw) != 65:
        raise ValueError("the signer key is not a P-256 key")
    return raw[1:]
