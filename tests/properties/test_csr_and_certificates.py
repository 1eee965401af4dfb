"""Certificate requests and certificates handed to the CA from outside: station enrollment
CSRs (enrollment/certs.py) and the root-signed intermediate of ``ca import-cert``
(ca/store.py load_cert_file, and the chip definition it must fit, chips/certdef.py). Anything
is accepted or refused with InvalidInputError (BadCsrError), never another error; a CSR with
any byte changed never passes the proof of possession for its station."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import example, given
from hypothesis import strategies as st

from provisioner.ca.store import load_cert_file
from provisioner.chips import der
from provisioner.chips.certdef import device_definition, signer_definition
from provisioner.enrollment.certs import BadCsrError, check_station_csr, load_csr
from provisioner.errors import InvalidInputError
from tests.properties.bounded import bounded, mutate

pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
STATION = "station-7"


@cache
def _csr_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, STATION)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@cache
def _intermediate_der() -> bytes:
    """A CA certificate chips can store compressed (P-256, whole-hour dates, SKI and AKI)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intermediate")])
    start = datetime(2024, 1, 1, tzinfo=UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x1234)
        .not_valid_before(start)
        .not_valid_after(start.replace(year=2044))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def _pem_of(der_bytes: bytes, label: str) -> bytes:
    import base64
    import textwrap

    body = "\n".join(textwrap.wrap(base64.b64encode(der_bytes).decode(), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode()


def _der_of(pem: bytes) -> bytes:
    import base64

    return base64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))


def _check_csr(pem: bytes) -> ec.EllipticCurvePublicKey:
    return check_station_csr(load_csr(pem), STATION)


def test_a_valid_csr_passes() -> None:
    key = _check_csr(_csr_pem())
    assert key == load_csr(_csr_pem()).public_key()


@bounded(300)
@given(
    raw=st.one_of(
        st.binary(max_size=400),
        st.binary(max_size=300).map(lambda b: _pem_of(b, "CERTIFICATE REQUEST")),
    )
)
def test_any_bytes_are_a_csr_or_refused(raw: bytes) -> None:
    with contextlib.suppress(BadCsrError):
        _check_csr(raw)


@bounded(400)
@given(at=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=255))
def test_changed_csrs_are_refused(at: int, xor: int) -> None:
    """Any byte changed: unparsable, another key, a signature that no longer verifies, or
    another CN; unless it changed nothing the CSR says (the signature's DER re-encodes to
    the same values)."""
    pem = _pem_of(mutate(_der_of(_csr_pem()), at, xor), "CERTIFICATE REQUEST")
    try:
        key = _check_csr(pem)
    except BadCsrError:
        return
    got, want = load_csr(pem), load_csr(_csr_pem())
    assert (key, got.tbs_certrequest_bytes) == (want.public_key(), want.tbs_certrequest_bytes)


def _version_3() -> bytes:
    """The intermediate claiming X.509 version 4 (value 3): cryptography raises
    InvalidVersion, which is not a ValueError."""
    data = _intermediate_der()
    at = data.index(b"\xa0\x03\x02\x01\x02") + 4
    return mutate(data, at, 0x01)


@bounded(200)
@given(
    raw=st.one_of(
        st.binary(max_size=400),
        st.tuples(st.integers(min_value=0), st.integers(1, 255)).map(
            lambda t: mutate(_intermediate_der(), *t)
        ),
    )
)
@example(raw=b"\x00")
def test_any_bytes_are_a_certificate_file_or_refused(raw: bytes, tmp_path: Path) -> None:
    if raw == b"\x00":
        raw = _version_3()
    path = tmp_path / "cert.pem"
    path.write_bytes(raw)
    with contextlib.suppress(InvalidInputError):
        load_cert_file(path)


@bounded(400)
@given(at=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=255))
def test_changed_intermediates_fit_the_chip_or_are_refused(at: int, xor: int) -> None:
    """`ca import-cert` asks the chip definition whether the intermediate can be stored
    compressed: a damaged certificate gets InvalidInputError, never an IndexError."""
    data = mutate(_intermediate_der(), at, xor)
    for make in (
        lambda: signer_definition(data, key_slot=11, cert_slot=12, template_id=7, chain_id=0),
        lambda: device_definition(
            data, key_slot=0, serial_slot=8, cert_slot=10, template_id=8, chain_id=0
        ),
    ):
        with contextlib.suppress(InvalidInputError):
            make()


def test_the_intermediate_definition_points_at_its_own_key() -> None:
    data = _intermediate_der()
    defn = signer_definition(data, key_slot=11, cert_slot=12, template_id=7, chain_id=0)
    cert = x509.load_der_x509_certificate(data)
    point = cert.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    key = defn.std[0]
    assert data[key.offset : key.offset + key.count] == point[1:]


@bounded(400)
@given(raw=st.binary(max_size=64), offset=st.integers(min_value=0, max_value=70))
def test_der_elements_lie_inside_their_input_or_are_refused(raw: bytes, offset: int) -> None:
    try:
        tlv = der.read_tlv(raw, offset)
    except InvalidInputError:
        return
    assert offset + tlv.header <= tlv.end <= len(raw)
    try:
        kids = der.children(raw, tlv)
    except InvalidInputError:
        return
    assert sum(k.size for k in kids) == tlv.length


def test_a_csr_of_another_version_is_refused_clearly() -> None:
    """PKCS #10 has version 0 only; cryptography raises InvalidVersion (no ValueError) for
    any other, which hypothesis found by flipping that byte: it is a BadCsrError, not an
    unexpected exception."""
    der_bytes = _der_of(_csr_pem())
    at = der_bytes.index(b"\x02\x01\x00")  # CertificationRequestInfo.version
    changed = der_bytes[: at + 2] + b"\x01" + der_bytes[at + 3 :]
    with pytest.raises(BadCsrError, match="version"):
        load_csr(_pem_of(changed, "CERTIFICATE REQUEST"))
