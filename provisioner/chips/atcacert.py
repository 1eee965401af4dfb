"""The library's own compressed-certificate reader and writer (``atcacert_*_ext``).

:class:`NativeDefinition` turns a :class:`~provisioner.chips.certdef.CertDefinition` into
the wheel's ``atcacert_def_t`` (whose size the wheel checks against its shared library)
and keeps every buffer it points to alive for as long as the struct lives. The calls go
straight to the shared library with an explicit device handle: the Python wrapper's
``atcacert_read_cert`` drives the global device and passes a 4-byte int where C wants a
``size_t*`` (research notes).

The library's reader and writer are not reentrant: ``atcacert_read_cert_ext`` and
``atcacert_write_cert_ext`` stage each device location in a function-level ``static``
buffer (lib/atcacert/atcacert_client.c), so two threads reading certificates from two
chips at once corrupt each other ("decoding error", found by bench/chip_parallel.py).
:data:`LIBRARY_BUFFERS` serialises those calls within a process; the station runs one
process per socket anyway.
"""

from __future__ import annotations

import threading
from ctypes import POINTER, Structure, byref, c_int, c_size_t, c_uint8, c_void_p, cast
from typing import Any

from provisioner.chips.certdef import CERTTYPE_X509, CertDefinition, DeviceLoc
from provisioner.chips.library import buf, cryptoauth

# atcacert status codes (atcacert.h): positive, so they never collide with ATCA_STATUS.
CERT_MEANING = {
    1: "general error",
    2: "bad parameters",
    3: "buffer too small",
    4: "decoding error (not a compressed certificate)",
    5: "invalid date",
    6: "unimplemented",
    7: "an element has an unexpected size",
    8: "an element is missing from the definition",
    9: "an element lies outside the certificate",
    10: "the certificate is malformed",
    11: "the chip's compressed certificate belongs to another definition (template/chain ID)",
    12: "verification failed",
}

LIBRARY_BUFFERS = threading.Lock()  # guards the C library's static buffers, per process

_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "atcacert_write_cert_ext": (c_int, [c_void_p, c_void_p, POINTER(c_uint8), c_size_t]),
    "atcacert_read_cert_ext": (
        c_int,
        [c_void_p, c_void_p, c_void_p, POINTER(c_uint8), POINTER(c_size_t)],
    ),
    "atcacert_max_cert_size": (c_int, [c_void_p, POINTER(c_size_t)]),
    "atcacert_get_device_data": (
        c_int,
        [c_void_p, POINTER(c_uint8), c_size_t, c_void_p, POINTER(c_uint8)],
    ),
}


def library() -> Any:
    lib = cryptoauth()
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _set_loc(target: Any, loc: DeviceLoc) -> None:
    target.zone = loc.zone
    target.slot = loc.slot
    target.is_genkey = int(loc.is_genkey)
    target.offset = loc.offset
    target.count = loc.count


class NativeDefinition:
    """A definition as the C library sees it; the buffers it points to live with it."""

    def __init__(self, defn: CertDefinition, ca: NativeDefinition | None = None) -> None:
        from cryptoauthlib.atcacert import atcacert_cert_element_t, atcacert_def_t

        self.defn = defn
        self.struct: Any
        self._template = buf(defn.template)
        d = atcacert_def_t()
        d.type = CERTTYPE_X509
        _set_loc(d.comp_cert_dev_loc, defn.comp_cert)
        d.private_key_slot = defn.private_key_slot
        d.template_id = defn.template_id
        d.chain_id = defn.chain_id
        d.std_sig_size = 64
        d.sn_source = defn.sn_source
        _set_loc(d.cert_sn_dev_loc, defn.cert_sn)
        d.issue_date_format = defn.issue_date_format
        d.expire_date_format = defn.expire_date_format
        d.tbs_cert_loc.offset, d.tbs_cert_loc.count = defn.tbs.offset, defn.tbs.count
        d.expire_years = defn.expire_years
        _set_loc(d.public_key_dev_loc, defn.public_key)
        for i, loc in enumerate(defn.std):
            d.std_cert_elements[i].offset = loc.offset
            d.std_cert_elements[i].count = loc.count
        self._elements = (atcacert_cert_element_t * max(1, len(defn.elements)))()
        for i, el in enumerate(defn.elements):
            native = self._elements[i]
            native.id = el.name.encode()
            _set_loc(native.device_loc, el.device)
            native.cert_loc.offset, native.cert_loc.count = el.cert.offset, el.cert.count
            # The wheel's structures convert fields on attribute access (a copy): write the
            # transform array through the plain ctypes view.
            transforms = Structure.__getattribute__(native, "transforms")
            transforms[0], transforms[1] = el.transform, 0
        d.cert_elements = cast(self._elements, POINTER(atcacert_cert_element_t))
        d.cert_elements_count = len(defn.elements)
        d.cert_template = cast(self._template, POINTER(c_uint8))
        d.cert_template_size = len(defn.template)
        self._ca = ca  # the struct below points into it
        if ca is not None:
            d.ca_cert_def = cast(byref(ca.struct), POINTER(atcacert_def_t))
        self.struct = d

    def max_cert_size(self) -> int:
        size = c_size_t(0)
        status = library().atcacert_max_cert_size(byref(self.struct), byref(size))
        if status:
            raise ValueError(f"atcacert_max_cert_size: {CERT_MEANING.get(status, status)}")
        return size.value


def write_cert(device: c_void_p, native: NativeDefinition, der: bytes) -> int:
    """``atcacert_write_cert_ext``: the status (0 = written)."""
    data = buf(der)
    with LIBRARY_BUFFERS:
        return int(library().atcacert_write_cert_ext(device, byref(native.struct), data, len(der)))


def device_data(native: NativeDefinition, der: bytes, loc: DeviceLoc) -> tuple[int, bytes]:
    """``atcacert_get_device_data``: (status, the ``loc.count`` bytes the chip must hold at
    ``loc`` for this certificate), the encoding ``atcacert_write_cert`` writes. No chip
    command: the driver writes the blocks itself, so it knows every byte it wrote (the
    library's writer stages them in a static buffer, and bytes no element covers keep what
    an earlier certificate left there); here they start as zeros."""
    from cryptoauthlib.atcacert import atcacert_device_loc_t

    c_loc = atcacert_device_loc_t()
    _set_loc(c_loc, loc)
    cert, out = buf(der), buf(loc.count)
    status = library().atcacert_get_device_data(
        byref(native.struct), cert, len(der), byref(c_loc), out
    )
    return int(status), bytes(out)


def read_cert(
    device: c_void_p, native: NativeDefinition, ca_public_key: bytes
) -> tuple[int, bytes]:
    """``atcacert_read_cert_ext``: (status, the rebuilt DER certificate)."""
    from cryptoauthlib.library import cal_buffer

    key = bytearray(ca_public_key)
    key_buf = cal_buffer(len(key), key)
    capacity = native.max_cert_size() + 16
    out = buf(capacity)
    size = c_size_t(capacity)
    with LIBRARY_BUFFERS:
        status = library().atcacert_read_cert_ext(
            device, byref(native.struct), byref(key_buf), out, byref(size)
        )
    del key  # kept alive until here: key_buf points into it
    return int(status), bytes(out)[: size.value]
