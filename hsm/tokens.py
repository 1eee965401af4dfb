"""Initialising a token (C_InitToken + C_InitPIN) without a PIN ever touching argv.

python-pkcs11 does not expose C_InitToken, and p11-kit's proxy gives every
``C_GetFunctionList`` caller its own instance, so this runs a short, self-contained PKCS#11
conversation through ctypes: initialise (with OS locking), find a slot whose token is not
initialised, C_InitToken, log in as SO, C_InitPIN, finalise. Call it *before* opening the
module with :class:`hsm.module.Pkcs11Module` in the same process.
"""

from __future__ import annotations

import ctypes
from typing import Any

from provisioner.errors import HsmError

CKR_OK = 0
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191
CKF_OS_LOCKING_OK = 0x2
CKF_TOKEN_INITIALIZED = 0x400
CKF_RW_SESSION = 0x2
CKF_SERIAL_SESSION = 0x4
CKU_SO = 0
_TOKEN_INFO_FLAGS_OFFSET = 96  # label[32] manufacturerID[32] model[16] serialNumber[16]

# Indices in CK_FUNCTION_LIST (after the CK_VERSION header), PKCS#11 v2.40 order.
_IDX = {
    "C_Initialize": 0,
    "C_Finalize": 1,
    "C_GetSlotList": 4,
    "C_GetTokenInfo": 6,
    "C_InitToken": 9,
    "C_InitPIN": 10,
    "C_OpenSession": 12,
    "C_CloseSession": 13,
    "C_Login": 18,
    "C_Logout": 19,
}

_ul = ctypes.c_ulong
_p = ctypes.c_void_p
_SIGS: dict[str, tuple[Any, ...]] = {
    "C_Initialize": (_ul, _p),
    "C_Finalize": (_ul, _p),
    "C_GetSlotList": (_ul, ctypes.c_ubyte, ctypes.POINTER(_ul), ctypes.POINTER(_ul)),
    "C_GetTokenInfo": (_ul, _ul, ctypes.c_char_p),
    "C_InitToken": (_ul, _ul, ctypes.c_char_p, _ul, ctypes.c_char_p),
    "C_InitPIN": (_ul, _ul, ctypes.c_char_p, _ul),
    "C_OpenSession": (_ul, _ul, _ul, _p, _p, ctypes.POINTER(_ul)),
    "C_CloseSession": (_ul, _ul),
    "C_Login": (_ul, _ul, _ul, ctypes.c_char_p, _ul),
    "C_Logout": (_ul, _ul),
}


class _InitArgs(ctypes.Structure):
    _fields_ = [
        ("create_mutex", _p),
        ("destroy_mutex", _p),
        ("lock_mutex", _p),
        ("unlock_mutex", _p),
        ("flags", _ul),
        ("reserved", _p),
    ]


class _Functions:
    def __init__(self, module_path: str) -> None:
        self.dll = ctypes.CDLL(module_path)
        get = self.dll.C_GetFunctionList
        get.argtypes = [ctypes.POINTER(_p)]
        get.restype = _ul
        ptr = _p()
        if get(ctypes.byref(ptr)) != CKR_OK or not ptr.value:
            raise HsmError(f"C_GetFunctionList failed on {module_path}")
        table = ctypes.cast(ptr.value + ctypes.sizeof(_p), ctypes.POINTER(_p * 70)).contents
        self._fns: dict[str, Any] = {}
        for name, idx in _IDX.items():
            addr = table[idx]
            if not addr:
                raise HsmError(f"{module_path} does not implement {name}")
            self._fns[name] = ctypes.CFUNCTYPE(*_SIGS[name])(addr)

    def __call__(self, name: str, *args: Any) -> int:
        return int(self._fns[name](*args))


def _check(rv: int, what: str, label: str) -> None:
    if rv != CKR_OK:
        raise HsmError(f"{what} failed for token {label!r} (CKR 0x{rv:x})")


def init_token(module_path: str, label: str, so_pin: str, user_pin: str) -> None:
    """Initialise the first uninitialised token of ``module_path`` as ``label``."""
    f = _Functions(module_path)
    args = _InitArgs(None, None, None, None, CKF_OS_LOCKING_OK, None)
    rv = f("C_Initialize", ctypes.byref(args))
    if rv not in (CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED):
        _check(rv, "C_Initialize", label)
    owned = rv == CKR_OK
    try:
        slot = _free_slot(f, label)
        so, user = so_pin.encode(), user_pin.encode()
        _check(
            f("C_InitToken", slot, so, len(so), label.encode().ljust(32, b" ")[:32]),
            "C_InitToken",
            label,
        )
        session = _ul()
        _check(
            f(
                "C_OpenSession",
                slot,
                CKF_SERIAL_SESSION | CKF_RW_SESSION,
                None,
                None,
                ctypes.byref(session),
            ),
            "C_OpenSession",
            label,
        )
        try:
            _check(f("C_Login", session, CKU_SO, so, len(so)), "SO login", label)
            _check(f("C_InitPIN", session, user, len(user)), "C_InitPIN", label)
            f("C_Logout", session)
        finally:
            f("C_CloseSession", session)
    finally:
        if owned:
            f("C_Finalize", None)


def _free_slot(f: _Functions, label: str) -> int:
    count = _ul(0)
    _check(f("C_GetSlotList", 1, None, ctypes.byref(count)), "C_GetSlotList", label)
    slots = (_ul * max(count.value, 1))()
    _check(f("C_GetSlotList", 1, slots, ctypes.byref(count)), "C_GetSlotList", label)
    info = ctypes.create_string_buffer(512)
    for i in range(count.value):
        if f("C_GetTokenInfo", slots[i], info) != CKR_OK:
            continue
        flags = int.from_bytes(
            info.raw[_TOKEN_INFO_FLAGS_OFFSET : _TOKEN_INFO_FLAGS_OFFSET + 8], "little"
        )
        if not flags & CKF_TOKEN_INITIALIZED:
            return int(slots[i])
    raise HsmError(f"no free (uninitialised) token slot to create token {label!r} in")
