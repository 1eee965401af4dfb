"""The cryptoauthlib shared library from the PyPI wheel, with the prototypes we call.

Only the ``*_ext`` functions that take an explicit device are used, so several chips can be
driven from one process. Importing ``cryptoauthlib`` loads the wheel's own .so.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_bool, c_int, c_size_t, c_uint8, c_uint16, c_void_p
from functools import cache
from typing import Any

ATCA_SUCCESS = 0
ATCA_WAKE_FAILED = -48
ATCA_CHECKMAC_VERIFY_FAILED = -47
ATCA_PARSE_ERROR = -46
ATCA_STATUS_CRC = -44
ATCA_STATUS_ECC = -42
ATCA_RX_NO_RESPONSE = -25
ATCA_SMALL_BUFFER = -19
ATCA_COMM_FAIL = -16
ATCA_EXECUTION_ERROR = -12

ZONE_CONFIG, ZONE_OTP, ZONE_DATA = 0, 1, 2

_u8p = POINTER(c_uint8)
_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "atcab_init_ext": (c_int, [POINTER(c_void_p), c_void_p]),
    "atcab_release_ext": (c_int, [POINTER(c_void_p)]),
    "atcab_info_ext": (c_int, [c_void_p, _u8p]),
    "atcab_read_serial_number_ext": (c_int, [c_void_p, _u8p]),
    "atcab_read_config_zone_ext": (c_int, [c_void_p, _u8p]),
    "atcab_write_config_zone_ext": (c_int, [c_void_p, _u8p]),
    "calib_lock_config_zone_crc": (c_int, [c_void_p, c_uint16]),
    "atcab_lock_data_zone_ext": (c_int, [c_void_p]),
    "calib_lock": (c_int, [c_void_p, c_uint8, c_uint16]),
    "calib_info_base": (c_int, [c_void_p, c_uint8, c_uint16, _u8p]),
    "atcab_is_config_locked_ext": (c_int, [c_void_p, POINTER(c_bool)]),
    "atcab_is_data_locked_ext": (c_int, [c_void_p, POINTER(c_bool)]),
    "atcab_genkey_ext": (c_int, [c_void_p, c_uint16, _u8p]),
    "atcab_get_pubkey_ext": (c_int, [c_void_p, c_uint16, _u8p]),
    "atcab_random_ext": (c_int, [c_void_p, _u8p]),
    "atcab_sign_ext": (c_int, [c_void_p, c_uint16, _u8p, _u8p]),
    "atcab_verify_extern_ext": (c_int, [c_void_p, _u8p, _u8p, _u8p, POINTER(c_bool)]),
    "atcab_write_bytes_zone_ext": (c_int, [c_void_p, c_uint8, c_uint16, c_size_t, _u8p, c_size_t]),
    "atcab_read_bytes_zone_ext": (c_int, [c_void_p, c_uint8, c_uint16, c_size_t, _u8p, c_size_t]),
    "hal_kit_attach_phy": (c_int, [c_void_p, c_void_p]),
}


@cache
def cryptoauth() -> ctypes.CDLL:
    """The wheel's libcryptoauth with prototypes declared (loaded once per process)."""
    import cryptoauthlib

    lib: ctypes.CDLL = cryptoauthlib.get_cryptoauthlib()
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def iface_cfg_class() -> Any:
    """The wheel's own ATCAIfaceCfg structure (its size is checked against the .so)."""
    from cryptoauthlib.iface import ATCAIfaceCfg

    return ATCAIfaceCfg


def buf(data: bytes | int) -> Any:
    """A ctypes byte buffer, from bytes or of a size."""
    if isinstance(data, int):
        return (c_uint8 * data)()
    return (c_uint8 * len(data)).from_buffer_copy(data)
