"""The signer core's fast path (issue 19): the chip's point checked with integer arithmetic,
the hour's dates written into the template once, the TBS hashed once for the token and the
self-check. Each shortcut must refuse and produce exactly what the slow way does, and a
faulty token must still never get a certificate out."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from provisioner.ca.ceremony import LoadedCa
from provisioner.ca.issuer import (
    DeviceIssuer,
    build_device_certificate,
    check_p256_point,
    check_public_key,
    device_validity,
    random_serial_number,
)
from provisioner.ca.tbs_template import encode_validity
from provisioner.errors import PolicyViolationError
from provisioner.ports import SigningRequest
from provisioner.settings import Settings
from tests.conftest import chip_request

P = 2**256 - 2**224 + 2**192 + 2**96 - 1
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B


def _point(x: int, y: int) -> bytes:
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def _on_curve_with_small_x() -> tuple[int, int]:
    """A curve point whose x is below 2**256 - p, so that x + p still fits in 32 bytes:
    the same point modulo p, written with a coordinate that is not reduced."""
    x = 1
    while True:
        rhs = (x**3 - 3 * x + B) % P
        y = pow(rhs, (P + 1) // 4, P)  # p = 3 mod 4
        if y * y % P == rhs:
            return x, y
        x += 1


def _points() -> list[bytes]:
    valid = [
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        for _ in range(20)
    ]
    x0, y0 = _on_curve_with_small_x()
    x1 = int.from_bytes(valid[0][1:33], "big")
    y1 = int.from_bytes(valid[0][33:], "big")
    return [
        *valid,
        _point(x0, y0),  # on the curve (a small x)
        _point(x0 + P, y0),  # the same point, x not reduced mod p
        _point(x1, (y1 + 1) % P),  # off the curve
        _point(x1, P - y1),  # the negated point: on the curve
        _point(x1, 2**256 - 1),  # y >= p
        _point(2**256 - 1, y1),  # x >= p
        _point(0, 0),
        b"\x02" + valid[1][1:],  # a compressed prefix on 65 bytes
        b"\x07" + valid[2][1:],
    ]


def _refuses(check: Any, data: bytes) -> bool:
    try:
        check(data)
    except PolicyViolationError:
        return True
    return False


def test_the_point_check_refuses_exactly_what_the_key_loader_refuses() -> None:
    points = _points()
    for data in points:
        assert _refuses(check_p256_point, data) == _refuses(check_public_key, data), data.hex()
    # The cases are not all of one kind: both accept some and refuse some.
    outcomes = {_refuses(check_public_key, d) for d in points}
    assert outcomes == {True, False}
    x0, y0 = _on_curve_with_small_x()
    with pytest.raises(PolicyViolationError, match="not a point on P-256"):
        check_p256_point(_point(x0 + P, y0))


class _CountingKey:
    """The CA's token key, counting the signatures it is asked for."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key, self.calls = key, 0

    def sign(self, data: bytes, algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        self.calls += 1
        return self.key.sign(data, algorithm)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()


def test_a_point_off_the_curve_is_refused_before_the_token_signs(
    ca_settings: Settings, loaded: LoadedCa
) -> None:
    counting = _CountingKey(loaded.key)
    key: Any = counting
    issuer = DeviceIssuer(dataclasses.replace(loaded, key=key), ca_settings.profile)
    good = chip_request(1)
    issuer.issue(good, random_serial_number(), dt.datetime.now(dt.UTC))
    assert counting.calls == 1
    x = int.from_bytes(good.public_key[1:33], "big")
    y = int.from_bytes(good.public_key[33:], "big")
    bad = dataclasses.replace(good, public_key=_point(x, (y + 1) % P))
    with pytest.raises(PolicyViolationError, match="not a point on P-256"):
        issuer.issue(bad, random_serial_number(), dt.datetime.now(dt.UTC))
    assert counting.calls == 1


def test_dates_follow_the_utc_hour_in_any_time_zone(
    ca_settings: Settings, loaded: LoadedCa
) -> None:
    """The dated template is kept per UTC hour: callers in other zones (half-hour offsets
    included) get the dates the builder writes, byte for byte, hour after hour."""
    issuer = DeviceIssuer(loaded, ca_settings.profile)
    india = dt.timezone(dt.timedelta(hours=5, minutes=30))
    chile = dt.timezone(dt.timedelta(hours=-3))
    moments = [
        dt.datetime(2027, 3, 1, 10, 59, tzinfo=india),  # 05:29 UTC
        dt.datetime(2027, 3, 1, 11, 10, tzinfo=india),  # 05:40 UTC, same hour
        dt.datetime(2027, 3, 1, 11, 35, tzinfo=india),  # 06:05 UTC, the next hour
        dt.datetime(2027, 3, 1, 6, 5, tzinfo=dt.UTC),
        dt.datetime(2027, 3, 1, 3, 59, 59, 999999, tzinfo=chile),  # 06:59:59.999999 UTC
        dt.datetime(2027, 3, 1, 4, 0, tzinfo=chile),  # 07:00 UTC
        dt.datetime(2028, 2, 29, 23, 30, tzinfo=chile),  # 1 March 02:30 UTC
        dt.datetime(2028, 2, 29, 20, 30, tzinfo=chile),  # 29 February 23:30 UTC
    ]
    for i, now in enumerate(moments):
        req, serial = chip_request(i), random_serial_number()
        fast = issuer.issue(req, serial, now)
        slow = build_device_certificate(req, loaded, ca_settings.profile, serial, now)
        assert fast.tbs_certificate_bytes == slow.tbs_certificate_bytes, now
        not_before, not_after = device_validity(now, ca_settings.profile.validity_years)
        assert fast.not_valid_before_utc == not_before and fast.not_valid_after_utc == not_after
        fast.verify_directly_issued_by(loaded.intermediate_cert)


def test_the_hours_dates_are_written_into_the_template_once(
    ca_settings: Settings, loaded: LoadedCa
) -> None:
    issuer = DeviceIssuer(loaded, ca_settings.profile)
    now = dt.datetime(2027, 5, 4, 9, 0, tzinfo=dt.UTC)
    issuer.issue(chip_request(1), random_serial_number(), now)
    template = issuer.template
    assert template is not None
    dates = encode_validity(device_validity(now, ca_settings.profile.validity_years))
    dated = template.dated(dates)
    assert dated is not None
    # The pieces hold the dates, and filling them is the template's fill, byte for byte.
    assert dates[0] in dated.head + dated.after_serial and dates[1] in dated.after_serial
    req, serial = chip_request(2), random_serial_number()
    assert dated.fill(req.chip_serial_hex, req.public_key, serial) == template.fill(
        req.chip_serial_hex, req.public_key, serial, dates
    )
    # What does not fit the layout is left to the builder.
    assert dated.fill("0123", req.public_key, serial) is None
    assert dated.fill(req.chip_serial_hex, req.public_key[:64], serial) is None
    assert dated.fill(req.chip_serial_hex, req.public_key, 1) is None
    assert template.dated((dates[0], b"\x18\x0f20500101000000Z")) is None


class _FaultyToken:
    """The real token key, with a fault injected into what it returns."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, fault: str) -> None:
        self.key, self.fault = key, fault

    def sign(self, data: bytes, algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if self.fault == "other digest":
            data = hashlib.sha256(data).digest()
        der = self.key.sign(data, algorithm)
        r, s = decode_dss_signature(der)
        if self.fault == "bit flipped in s":
            s ^= 1
            return _der(r, s)
        if self.fault == "r and s swapped":
            return _der(s, r)
        if self.fault == "garbage":
            return os.urandom(len(der))
        return der

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()


def _der(r: int, s: int) -> bytes:
    return encode_dss_signature(r, s)


@pytest.mark.parametrize(
    "fault", ["other digest", "bit flipped in s", "r and s swapped", "garbage"]
)
def test_a_fault_injected_token_signature_is_never_released(
    ca_settings: Settings, loaded: LoadedCa, fault: str
) -> None:
    faulty: Any = _FaultyToken(loaded.key, fault)
    issuer = DeviceIssuer(dataclasses.replace(loaded, key=faulty), ca_settings.profile)
    with pytest.raises(PolicyViolationError, match="does not verify with the CA key"):
        issuer.issue(chip_request(1), random_serial_number(), dt.datetime.now(dt.UTC))
    assert issuer.template is not None  # the template path refused it
    # The same issuer with the token's own signature releases the certificate.
    sound = DeviceIssuer(loaded, ca_settings.profile)
    cert = sound.issue(chip_request(1), random_serial_number(), dt.datetime.now(dt.UTC))
    cert.verify_directly_issued_by(loaded.intermediate_cert)


def test_a_subject_key_info_takes_the_template_too(ca_settings: Settings, loaded: LoadedCa) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    req: SigningRequest = dataclasses.replace(chip_request(1, key=key), public_key=spki)
    issuer = DeviceIssuer(loaded, ca_settings.profile)
    now, serial = dt.datetime.now(dt.UTC), random_serial_number()
    cert = issuer.issue(req, serial, now)
    assert issuer.template is not None
    assert cert.public_key() == key.public_key()
    slow = build_device_certificate(req, loaded, ca_settings.profile, serial, now)
    assert cert.tbs_certificate_bytes == slow.tbs_certificate_bytes
