"""GenDig, MAC and CheckMac through the unmodified library (``calib_*`` with an explicit
device), held to cryptoauthlib's own host-side calculations (``atcah_nonce``,
``atcah_gen_dig``, ``atcah_mac``, ``atcah_check_mac``, exported by the wheel): the chip's
digests must equal what a host computes from the same inputs, never the emulator's own
code checking itself. Refusals are checked as carefully as results."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from ctypes import (
    POINTER,
    Structure,
    addressof,
    byref,
    c_bool,
    c_int,
    c_uint8,
    c_uint16,
    c_uint32,
    c_void_p,
)
from pathlib import Path
from typing import Any

import pytest

from provisioner.chips.connector import Connector
from provisioner.chips.device import CryptoAuthChip
from provisioner.chips.library import (
    ATCA_CHECKMAC_VERIFY_FAILED,
    ATCA_EXECUTION_ERROR,
    ATCA_PARSE_ERROR,
    buf,
)
from provisioner.settings import Settings
from tests.chips.conftest import call, config_with, declared, personalise

_u8p = POINTER(c_uint8)

# --- cryptoauthlib's host-side model (lib/host/atca_host.h), the independent reference ---


class HostTempKey(Structure):
    """``atca_temp_key_t``: 64-byte value, then the flag bit-fields (GCC packs the nine
    one-to-four-bit ``unsigned`` fields into bytes 64-65, LSB first), then ``is_64``."""

    _fields_ = [
        ("value", c_uint8 * 64),
        ("key_id", c_uint8, 4),
        ("source_flag", c_uint8, 1),
        ("gen_dig_data", c_uint8, 1),
        ("gen_key_data", c_uint8, 1),
        ("no_mac_flag", c_uint8, 1),
        ("valid", c_uint8, 1),
        ("is_64", c_uint8),
        ("_pad", c_uint8 * 5),
    ]


class NonceInOut(Structure):
    _fields_ = [
        ("mode", c_uint8),
        ("zero", c_uint16),
        ("num_in", c_void_p),
        ("rand_out", c_void_p),
        ("temp_key", c_void_p),
    ]


class GenDigInOut(Structure):
    _fields_ = [
        ("zone", c_uint8),
        ("key_id", c_uint16),
        ("slot_conf", c_uint16),
        ("key_conf", c_uint16),
        ("slot_locked", c_uint8),
        ("counter", c_uint32),
        ("is_key_nomac", c_bool),
        ("sn", c_void_p),
        ("stored_value", c_void_p),
        ("other_data", c_void_p),
        ("temp_key", c_void_p),
    ]


class MacInOut(Structure):
    _fields_ = [
        ("mode", c_uint8),
        ("key_id", c_uint16),
        ("challenge", c_void_p),
        ("key", c_void_p),
        ("otp", c_void_p),
        ("sn", c_void_p),
        ("response", c_void_p),
        ("temp_key", c_void_p),
    ]


class CheckMacInOut(Structure):
    _fields_ = [
        ("mode", c_uint8),
        ("key_id", c_uint16),
        ("sn", c_void_p),
        ("client_chal", c_void_p),
        ("client_resp", c_void_p),
        ("other_data", c_void_p),
        ("otp", c_void_p),
        ("slot_key", c_void_p),
        ("target_key", c_void_p),
        ("temp_key", c_void_p),
    ]


class WriteMacInOut(Structure):
    _fields_ = [
        ("zone", c_uint8),
        ("key_id", c_uint16),
        ("sn", c_void_p),
        ("input_data", c_void_p),
        ("encrypted_data", c_void_p),
        ("auth_mac", c_void_p),
        ("temp_key", c_void_p),
    ]


def _host(name: str, struct: type[Structure]) -> Any:
    return declared(name, [POINTER(struct)], c_int)


class Host:
    """The host's side of a session with one chip: its serial number and its model of
    TempKey, advanced only by cryptoauthlib's ``atcah_*`` functions."""

    def __init__(self, serial: bytes, otp: bytes = bytes(64)) -> None:
        self.sn = buf(serial)
        self.otp = buf(otp)
        self.tempkey = HostTempKey()
        self._keep: list[Any] = []  # buffers the structs point into

    def _p(self, data: bytes | None) -> int | None:
        if data is None:
            return None
        b = buf(data)
        self._keep.append(b)
        return addressof(b)

    def nonce(self, mode: int, num_in: bytes, rand_out: bytes) -> None:
        """TempKey after Nonce (random: SHA-256 of RandOut, NumIn, ...; pass-through)."""
        p = NonceInOut(mode, 0, self._p(num_in), self._p(rand_out), addressof(self.tempkey))
        assert _host("atcah_nonce", NonceInOut)(byref(p)) == 0

    def gen_dig(self, zone: int, key_id: int, **fields: Any) -> None:
        p = GenDigInOut(zone=zone, key_id=key_id, sn=addressof(self.sn))
        for name in ("stored_value", "other_data"):
            if name in fields:
                setattr(p, name, self._p(fields.pop(name)))
        for name, value in fields.items():
            setattr(p, name, value)
        p.temp_key = addressof(self.tempkey)
        assert _host("atcah_gen_dig", GenDigInOut)(byref(p)) == 0

    def mac(self, mode: int, key_id: int, key: bytes | None, challenge: bytes | None) -> bytes:
        out = buf(32)
        p = MacInOut(mode, key_id, self._p(challenge), self._p(key), addressof(self.otp))
        p.sn, p.response, p.temp_key = addressof(self.sn), addressof(out), addressof(self.tempkey)
        assert _host("atcah_mac", MacInOut)(byref(p)) == 0
        return bytes(out)

    def check_mac(
        self,
        mode: int,
        key_id: int,
        slot_key: bytes | None,
        challenge: bytes | None,
        other: bytes,
        target_key: bytes | None = None,
    ) -> bytes:
        out = buf(32)
        p = CheckMacInOut(mode, key_id, addressof(self.sn), self._p(challenge), addressof(out))
        p.other_data, p.otp, p.slot_key = self._p(other), addressof(self.otp), self._p(slot_key)
        p.target_key, p.temp_key = self._p(target_key), addressof(self.tempkey)
        assert _host("atcah_check_mac", CheckMacInOut)(byref(p)) == 0
        return bytes(out)

    def write_auth_mac(self, zone: int, address: int, plain: bytes) -> tuple[bytes, bytes]:
        """(encrypted data, input MAC) of an encrypted Write, per ``atcah_write_auth_mac``."""
        enc, mac = buf(32), buf(32)
        p = WriteMacInOut(zone, address, addressof(self.sn), self._p(plain), addressof(enc))
        p.auth_mac, p.temp_key = addressof(mac), addressof(self.tempkey)
        assert _host("atcah_write_auth_mac", WriteMacInOut)(byref(p)) == 0
        return bytes(enc), bytes(mac)

    def value(self) -> bytes:
        return bytes(self.tempkey.value[:32])


# --- the chip side --------------------------------------------------------------------

PROTOTYPES: dict[str, list[Any]] = {
    "calib_gendig": [c_void_p, c_uint8, c_uint16, _u8p, c_uint8],
    "calib_mac": [c_void_p, c_uint8, c_uint16, _u8p, _u8p],
    "calib_checkmac": [c_void_p, c_uint8, c_uint16, _u8p, _u8p, _u8p],
    "calib_nonce_rand": [c_void_p, _u8p, _u8p],
    "calib_nonce_load": [c_void_p, c_uint8, _u8p, c_uint16],
    "calib_info_base": [c_void_p, c_uint8, c_uint16, _u8p],
    "calib_counter_increment": [c_void_p, c_uint16, POINTER(c_uint32)],
    "calib_sleep": [c_void_p],
}


@pytest.fixture(scope="module")
def prototypes() -> None:
    for name, argtypes in PROTOTYPES.items():
        declared(name, argtypes)


K1, K2, K3, K4, K5, K6 = (secrets.token_bytes(32) for _ in range(6))
OTP = bytes(range(64))

SECRET_KEY = 0x808F  # IsSecret, ReadKey 0xF, WriteConfig Never
SHA_KEY = 0x003C  # KeyType "not ECC" (SHA/data), Lockable
KEY_SLOTS = {
    0: (0x2083, 0x0033),  # ECC private key (P-256)
    1: (SECRET_KEY, SHA_KEY),  # the MAC / CheckMac key
    2: (SECRET_KEY, SHA_KEY),  # CheckMac key whose pair (slot 3) can be copied
    3: (0x8080, SHA_KEY),  # ReadKey 0: the CheckMac copy source
    4: (SECRET_KEY | 0x0010, SHA_KEY),  # NoMac
    5: (SECRET_KEY, SHA_KEY | 0x0040),  # ReqRandom
    6: (SECRET_KEY, SHA_KEY | 0x0080),  # ReqAuth (authorization not emulated)
}


def keyed_config(base: bytes) -> bytes:
    return config_with(
        base,
        slot_config={s: sc for s, (sc, _) in KEY_SLOTS.items()},
        key_config={s: kc for s, (_, kc) in KEY_SLOTS.items()},
    )


@pytest.fixture
def connector(tmp_path: Path) -> Connector:
    return Connector(Settings(var_dir=tmp_path))


@pytest.fixture
def keyed(connector: Connector, prototypes: None) -> Iterator[tuple[CryptoAuthChip, Host]]:
    """A chip with SHA keys in slots 1-6 and an OTP pattern, config and data locked."""
    connector.jig("line1").insert_blank(0)
    chip = connector.open("emulated:line1/0")
    slots = {1: K1, 2: K2, 3: K3, 4: K4, 5: K5, 6: K6}
    personalise(chip, keyed_config(chip.read_config()), slots=slots, genkey=(0,), lock_data=False)
    chip.write_zone(1, 0, 0, OTP)
    chip.lock_data_zone()
    yield chip, Host(chip.identity().serial, OTP)
    chip.close()


def random_nonce(chip: CryptoAuthChip, host: Host) -> None:
    """Nonce, random mode, on the chip; the host follows with ``atcah_nonce``."""
    num_in, rand_out = secrets.token_bytes(20), buf(32)
    assert call(chip, "calib_nonce_rand", buf(num_in), rand_out) == 0
    host.nonce(0x00, num_in, bytes(rand_out))


def fixed_nonce(chip: CryptoAuthChip, host: Host, value: bytes) -> None:
    """Nonce pass-through to TempKey (SourceFlag = input)."""
    assert call(chip, "calib_nonce_load", 0x00, buf(value), 32) == 0
    host.nonce(0x03, value, bytes(32))


def chip_mac(chip: CryptoAuthChip, mode: int, key_id: int, challenge: bytes | None) -> bytes:
    out = buf(32)
    assert call(chip, "calib_mac", mode, key_id, buf(challenge) if challenge else None, out) == 0
    return bytes(out)


def tempkey_state(chip: CryptoAuthChip) -> bytes:
    out = buf(4)
    assert call(chip, "calib_info_base", 0x02, 0, out) == 0  # Info(State)
    return bytes(out[0:2])


def host_state(host: Host) -> bytes:
    """Info(State) bytes 0-1 as the datasheet lays out the host model's flags."""
    t = host.tempkey
    byte0 = t.key_id | t.source_flag << 4 | t.gen_dig_data << 5 | t.gen_key_data << 6
    return bytes([byte0 | t.no_mac_flag << 7, 0x80 if t.valid else 0x00])


# --- MAC ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "nonce"),
    [
        (0x00, None),  # key + challenge
        (0x40, None),  # ... with the full serial number
        (0x10, None),  # ... with OTP[0:10]
        (0x20, None),  # ... with OTP[0:7]
        (0x01, "random"),  # key + TempKey (random nonce)
        (0x05, "fixed"),  # key + TempKey (pass-through nonce)
        (0x02, "random"),  # TempKey + challenge
        (0x03, "random"),  # TempKey + TempKey
        (0x71, "random"),  # everything at once
    ],
)
def test_mac_equals_atcah_mac(keyed: Any, mode: int, nonce: str | None) -> None:
    chip, host = keyed
    if nonce == "random":
        random_nonce(chip, host)
    elif nonce == "fixed":
        fixed_nonce(chip, host, secrets.token_bytes(32))
    challenge = None if mode & 0x01 else secrets.token_bytes(32)
    key = None if mode & 0x02 else K1
    assert chip_mac(chip, mode, 1, challenge) == host.mac(mode, 1, key, challenge)
    assert tempkey_state(chip)[1] == 0x00  # a MAC consumes TempKey


def test_mac_refusals(keyed: Any) -> None:
    chip, host = keyed
    out, challenge = buf(32), buf(32)

    def status(mode: int, key_id: int) -> int:
        return call(chip, "calib_mac", mode, key_id, None if mode & 0x01 else challenge, out)

    assert status(0x08, 1) == ATCA_PARSE_ERROR  # mode bit 3 is reserved
    assert status(0x80, 1) == ATCA_PARSE_ERROR  # mode bit 7 is reserved
    assert status(0x00, 16) == ATCA_PARSE_ERROR  # no slot 16
    assert status(0x00, 0) == ATCA_EXECUTION_ERROR  # an ECC private key
    assert status(0x00, 4) == ATCA_EXECUTION_ERROR  # SlotConfig.NoMac
    assert status(0x00, 6) == ATCA_EXECUTION_ERROR  # KeyConfig.ReqAuth
    assert status(0x00, 5) == ATCA_EXECUTION_ERROR  # ReqRandom without a nonce
    assert status(0x01, 1) == ATCA_EXECUTION_ERROR  # no TempKey
    fixed_nonce(chip, host, bytes(32))
    assert status(0x01, 1) == ATCA_EXECUTION_ERROR  # SourceFlag "input", mode says random
    fixed_nonce(chip, host, bytes(32))
    assert status(0x05, 5) == ATCA_EXECUTION_ERROR  # ReqRandom: a fixed nonce will not do
    random_nonce(chip, host)
    assert chip_mac(chip, 0x01, 5, None) == host.mac(0x01, 5, K5, None)  # random: accepted


# --- GenDig ---------------------------------------------------------------------------


def _counter(chip: CryptoAuthChip, which: int, times: int) -> int:
    value = c_uint32()
    for _ in range(times):
        assert call(chip, "calib_counter_increment", which, byref(value)) == 0
    return value.value


@pytest.mark.parametrize(
    ("zone", "key_id"),
    [
        *[(0, 0), (0, 3), (1, 0), (1, 1), (2, 1), (2, 3)],  # config, OTP, data
        *[(3, 0x0000), (3, 0x8000), (4, 0), (4, 1), (5, 1), (5, 0)],  # nonce, counter, keys
    ],
)
def test_gendig_equals_atcah_gen_dig(keyed: Any, zone: int, key_id: int) -> None:
    chip, host = keyed
    config = chip.read_config()
    random_nonce(chip, host)
    fields: dict[str, Any] = {}
    data: bytes | None = None
    if zone == 0:
        fields["stored_value"] = config[32 * key_id : 32 * key_id + 32]
    elif zone == 1:
        fields["stored_value"] = OTP[32 * key_id : 32 * key_id + 32]
    elif zone == 2:
        fields["stored_value"] = {1: K1, 3: K3}[key_id]
    elif zone == 3:
        data = secrets.token_bytes(32)
        fields["other_data"] = data
    elif zone == 4:
        fields["counter"] = _counter(chip, key_id, 3 + key_id)
    else:
        fields["slot_conf"] = int.from_bytes(config[20 + 2 * key_id : 22 + 2 * key_id], "little")
        fields["key_conf"] = int.from_bytes(config[96 + 2 * key_id : 98 + 2 * key_id], "little")
        fields["slot_locked"] = int.from_bytes(config[88:90], "little") >> key_id & 1
    other = buf(data) if data else None
    assert call(chip, "calib_gendig", zone, key_id, other, len(data or b"")) == 0
    host.gen_dig(zone, key_id, **fields)
    assert tempkey_state(chip) == host_state(host)  # GenDigData, KeyID, SourceFlag, valid
    assert chip_mac(chip, 0x01, 1, None) == host.mac(0x01, 1, K1, None)  # the value


def test_gendig_nomac_key_uses_other_data_and_bars_mac(keyed: Any) -> None:
    """A NoMac slot digests OtherData in place of opcode and parameters and leaves a TempKey
    that MAC refuses; CheckMac still takes it (NoMac bars only MAC)."""
    chip, host = keyed
    random_nonce(chip, host)
    other = bytes([0x15, 0x02, 0x04, 0x00])
    assert call(chip, "calib_gendig", 2, 4, buf(other), 4) == 0
    host.gen_dig(2, 4, stored_value=K4, other_data=other, is_key_nomac=True)
    assert tempkey_state(chip) == host_state(host)
    assert tempkey_state(chip)[0] & 0x80  # NoMacFlag
    assert call(chip, "calib_mac", 0x01, 1, None, buf(32)) == ATCA_EXECUTION_ERROR
    random_nonce(chip, host)
    assert call(chip, "calib_gendig", 2, 4, buf(other), 4) == 0
    host.gen_dig(2, 4, stored_value=K4, other_data=other, is_key_nomac=True)
    other_data = secrets.token_bytes(13)
    response = host.check_mac(0x01, 1, K1, None, other_data)
    status = call(chip, "calib_checkmac", 0x01, 1, None, buf(response), buf(other_data))
    assert status == 0


def test_gendig_refusals(keyed: Any) -> None:
    chip, host = keyed

    def gendig(zone: int, key_id: int, other: bytes = b"") -> int:
        return call(chip, "calib_gendig", zone, key_id, buf(other) if other else None, len(other))

    assert gendig(0, 0) == ATCA_EXECUTION_ERROR  # no TempKey to digest
    random_nonce(chip, host)
    assert gendig(6, 0) == ATCA_PARSE_ERROR  # no zone 6 on a 608
    assert gendig(0, 4) == ATCA_PARSE_ERROR  # the config zone has blocks 0-3
    assert gendig(1, 2) == ATCA_PARSE_ERROR  # the OTP zone has blocks 0-1
    assert gendig(4, 2) == ATCA_PARSE_ERROR  # counters 0-1
    assert gendig(2, 16) == ATCA_PARSE_ERROR  # transport keys are not emulated
    assert gendig(2, 0) == ATCA_EXECUTION_ERROR  # an ECC private key
    assert gendig(2, 6) == ATCA_EXECUTION_ERROR  # ReqAuth
    assert gendig(2, 4) == ATCA_EXECUTION_ERROR  # a NoMac key needs its OtherData
    fixed_nonce(chip, host, bytes(32))
    assert gendig(2, 5) == ATCA_EXECUTION_ERROR  # ReqRandom after a fixed nonce
    assert call(chip, "calib_sleep") == 0
    assert gendig(3, 0, bytes(32)) == ATCA_EXECUTION_ERROR  # sleep lost TempKey


def test_gendig_of_a_slot_before_the_data_lock_is_refused(
    connector: Connector, prototypes: None
) -> None:
    connector.jig("line1").insert_blank(0)
    with connector.open("emulated:line1/0") as chip:
        personalise(chip, keyed_config(chip.read_config()), slots={1: K1}, lock_data=False)
        host = Host(chip.identity().serial)
        random_nonce(chip, host)
        assert call(chip, "calib_gendig", 2, 1, None, 0) == ATCA_EXECUTION_ERROR
        assert call(chip, "calib_mac", 0x00, 1, buf(32), buf(32)) == ATCA_EXECUTION_ERROR
        assert call(chip, "calib_gendig", 0, 1, None, 0) == 0  # the config zone: no secret


# --- CheckMac -------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "nonce"), [(0x00, None), (0x20, None), (0x01, "random")])
def test_checkmac_accepts_the_host_response_and_refuses_a_wrong_one(
    keyed: Any, mode: int, nonce: str | None
) -> None:
    chip, host = keyed
    other = secrets.token_bytes(13)
    for wrong in (False, True):
        if nonce:
            random_nonce(chip, host)
        challenge = None if mode & 0x01 else secrets.token_bytes(32)
        response = bytearray(host.check_mac(mode, 1, K1, challenge, other))
        if wrong:
            response[7] ^= 0x01
        chal = buf(challenge) if challenge else None
        status = call(chip, "calib_checkmac", mode, 1, chal, buf(bytes(response)), buf(other))
        assert status == (ATCA_CHECKMAC_VERIFY_FAILED if wrong else 0)


def test_checkmac_refusals(keyed: Any) -> None:
    chip, host = keyed
    chal, resp, other = buf(32), buf(32), buf(13)
    assert call(chip, "calib_checkmac", 0x10, 1, chal, resp, other) == ATCA_PARSE_ERROR
    assert call(chip, "calib_checkmac", 0x00, 16, chal, resp, other) == ATCA_PARSE_ERROR
    assert call(chip, "calib_checkmac", 0x00, 0, chal, resp, other) == ATCA_EXECUTION_ERROR
    assert call(chip, "calib_checkmac", 0x01, 1, chal, resp, other) == ATCA_EXECUTION_ERROR
    fixed_nonce(chip, host, bytes(32))  # SourceFlag input, mode bit 2 says random
    assert call(chip, "calib_checkmac", 0x01, 1, chal, resp, other) == ATCA_EXECUTION_ERROR


def test_checkmac_copy_loads_the_pair_slot_into_tempkey(keyed: Any) -> None:
    """CheckMac mode 0x01 on an even key whose pair slot has ReadKey 0: on a match TempKey
    becomes the pair slot's key (atcah_check_mac's target_key), SourceFlag input."""
    chip, host = keyed
    random_nonce(chip, host)
    other = secrets.token_bytes(13)
    response = host.check_mac(0x01, 2, K2, None, other, target_key=K3)
    assert call(chip, "calib_checkmac", 0x01, 2, None, buf(response), buf(other)) == 0
    assert bytes(host.tempkey.value[:32]) == K3
    assert tempkey_state(chip) == host_state(host)
    assert chip_mac(chip, 0x05, 1, None) == host.mac(0x05, 1, K1, None)
