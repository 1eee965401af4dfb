"""Device and registry credentials of the built-in registry (PEM keys and certificates from
API callers): whatever a caller sends is accepted or refused with InvalidCredential (which
the API turns into INVALID_ARGUMENT), never another exception (a 500)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import example, given
from hypothesis import strategies as st

from provisioner.cloud.certificates import (
    RegistryCertificate,
    check_device_credentials,
    make_registry_certificate,
    x509_details,
)
from provisioner.cloud.credentials import (
    NO_EXPIRY,
    InvalidCredential,
    PublicKeyFormat,
    make_credential,
    normalize_timestamp,
)
from provisioner.cloud.status import ApiError
from tests.properties.bounded import bounded, mutate

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

FORMATS = [f.name for f in PublicKeyFormat]


@cache
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@cache
def _ca_pem() -> str:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry ca")])
    now = datetime(2024, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@cache
def _device_pem() -> str:
    """A device certificate the registry CA signed (for the CA rule)."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca = x509.load_pem_x509_certificate(_ca_pem().encode())
    now = datetime(2024, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=365))
        .sign(_key(), hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@cache
def _public_pem() -> str:
    return (
        _key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _pem_of_der(der: bytes, label: str) -> str:
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def _der_of(pem: str) -> bytes:
    import base64

    return base64.b64decode("".join(pem.strip().splitlines()[1:-1]))


@bounded(300)
@given(fmt=st.sampled_from(FORMATS), key=st.text(max_size=600))
@example(fmt="ES256_PEM", key="-----BEGIN PUBLIC KEY-----\n\ud800")  # not encodable
@example(fmt="ES256_X509_PEM", key="\udfff")
def test_any_key_text_is_accepted_or_invalid(fmt: str, key: str) -> None:
    with contextlib.suppress(InvalidCredential):
        make_credential(fmt, key, None, 0)


@bounded(200)
@given(raw=st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=40), st.floats()))
def test_any_format_value_is_a_format_or_invalid(raw: object) -> None:
    try:
        fmt = make_credential(raw, _public_pem(), None, 0).format
    except InvalidCredential:
        return
    assert fmt in (PublicKeyFormat.ES256_PEM,)


@bounded(300)
@given(raw=st.one_of(st.text(max_size=40), st.integers(), st.none()))
@example(raw="9999-12-31T23:59:59-01:00")  # past year 9999 in UTC
@example(raw="0001-01-01T00:00:00+01:00")  # before year 1 in UTC
def test_any_expiration_time_is_normalized_or_invalid(raw: object) -> None:
    try:
        text = normalize_timestamp(raw, 0)
    except InvalidCredential:
        return
    assert text.endswith("Z")
    assert normalize_timestamp(text, 0) == text  # the normal form is a fixed point


@bounded(200)
@given(
    when=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    offset_min=st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
def test_expiration_time_round_trips_as_the_same_instant(when: datetime, offset_min: int) -> None:
    local = when.astimezone(timezone(timedelta(minutes=offset_min)))
    text = normalize_timestamp(local.isoformat(), 0)
    assert datetime.fromisoformat(text) == when
    assert text == NO_EXPIRY or normalize_timestamp(text, 0) == text


# The version field's last byte (v3 = 2) in the test certificates: XOR 1 makes it 3, which
# cryptography refuses with InvalidVersion, not a ValueError.
_CA_VERSION_AT = _der_of(_ca_pem()).index(b"\xa0\x03\x02\x01\x02") + 4
_DEVICE_VERSION_AT = _der_of(_device_pem()).index(b"\xa0\x03\x02\x01\x02") + 4


@bounded(100)
@given(fmt=st.sampled_from(["ES256_PEM", 2]))
def test_a_valid_key_is_kept_exactly_as_sent(fmt: object) -> None:
    cred = make_credential(fmt, _public_pem(), "", 0)
    assert (cred.format, cred.key, cred.expiration_time) == (
        PublicKeyFormat.ES256_PEM,
        _public_pem(),
        NO_EXPIRY,
    )


@bounded(300)
@given(at=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=255))
def test_mutated_public_keys_are_refused_or_still_a_p256_key(at: int, xor: int) -> None:
    pem = _pem_of_der(mutate(_der_of(_public_pem()), at, xor), "PUBLIC KEY")
    with contextlib.suppress(InvalidCredential):
        make_credential("ES256_PEM", pem, None, 0)


@bounded(300)
@given(at=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=255))
@example(at=_DEVICE_VERSION_AT, xor=0x01)
def test_mutated_device_certificates_are_refused_or_checkable(at: int, xor: int) -> None:
    """A device certificate with one byte changed: refused as a credential, or accepted and
    then held to the registry CA rule with an ApiError (a changed byte is never both
    accepted and still counted as signed by the CA, unless it lies outside what is signed
    and the signature)."""
    der = _der_of(_device_pem())
    pem = _pem_of_der(mutate(der, at, xor), "CERTIFICATE")
    try:
        cred = make_credential("ES256_X509_PEM", pem, None, 0)
    except InvalidCredential:
        return
    cas = (make_registry_certificate(1, _ca_pem(), 0),)
    try:
        check_device_credentials((cred,), cas)
    except ApiError:
        return
    # Accepted under the CA: the mutation must have left the signed bytes and signature as
    # they were (e.g. the outer signatureAlgorithm's encoding).
    got = x509.load_pem_x509_certificate(pem.encode())
    want = x509.load_der_x509_certificate(der)
    assert (got.tbs_certificate_bytes, got.signature) == (
        want.tbs_certificate_bytes,
        want.signature,
    )


@bounded(300)
@given(fmt=st.sampled_from([1, "X509_CERTIFICATE_PEM"]), pem=st.text(max_size=600))
@example(fmt=1, pem="-----BEGIN CERTIFICATE-----\n\ud800")
def test_any_registry_certificate_text_is_accepted_or_invalid(fmt: object, pem: str) -> None:
    with contextlib.suppress(InvalidCredential):
        make_registry_certificate(fmt, pem, 0)


@bounded(300)
@given(at=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=255))
@example(at=_CA_VERSION_AT, xor=0x01)
def test_mutated_registry_certificates_are_refused_or_fully_readable(at: int, xor: int) -> None:
    """A registry certificate the registry accepts is shown (``x509Details``) on every later
    read of the registry: accepting one it cannot describe would break those reads."""
    pem = _pem_of_der(mutate(_der_of(_ca_pem()), at, xor), "CERTIFICATE")
    try:
        cert = make_registry_certificate(1, pem, 0)
    except InvalidCredential:
        return
    details = x509_details(cert)
    assert details["publicKeyType"] in ("EC", "RSA")
    check_device_credentials((make_credential("ES256_X509_PEM", _device_pem(), None, 0),), (cert,))


def test_registry_certificate_round_trips() -> None:
    cert = make_registry_certificate("X509_CERTIFICATE_PEM", _ca_pem(), 0)
    assert cert == RegistryCertificate(_ca_pem())
    assert x509_details(cert)["subject"] == "CN=registry ca"
