"""Device certificates: policy before the signature, openssl-strict after it."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.ca.ceremony import LoadedCa
from provisioner.ca.issuer import (
    build_device_certificate,
    check_public_key,
    check_serial,
    random_serial_number,
    verify_proof_of_possession,
)
from provisioner.errors import PolicyViolationError
from provisioner.ports import SigningRequest
from provisioner.settings import Settings
from tests.conftest import chip_request

SERIAL = "0123A1B2C3D4E5F6EE"


def _request(key: ec.EllipticCurvePrivateKey, challenge: bytes | None = None) -> SigningRequest:
    return chip_request(serial=SERIAL, key=key, challenge=challenge)


def test_device_certificate_profile_and_strict_verify(
    ca_settings: Settings, loaded: LoadedCa, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    req = _request(key)
    cert = build_device_certificate(
        req, loaded, ca_settings.profile, random_serial_number(), datetime.now(UTC)
    )
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SERIAL
    assert cert.public_key() == key.public_key()
    assert cert.serial_number > 0 and len(cert.serial_number.to_bytes(16, "big")) == 16
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    der = cert.public_bytes(serialization.Encoding.DER)
    # The chip keeps 72 compressed bytes and the host rebuilds the DER from the template
    # (tests/chips/test_compressed_certs.py); the default CDP and OCSP URLs make it ~620.
    assert len(der) <= 700, "a device certificate stays small (templates, registry PEMs)"
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for p in cdp for n in (p.full_name or [])] == [
        f"{ca_settings.api_url}/crl/{loaded.name}.crl"
    ]
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(d.access_method, d.access_location.value) for d in aia] == [
        (x509.oid.AuthorityInformationAccessOID.OCSP, f"{ca_settings.api_url}/ocsp")
    ]
    path = tmp_path / "device.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    proc = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            str(ca_settings.ca_dir / "root.pem"),
            "-untrusted",
            str(ca_settings.ca_dir / "intermediate.pem"),
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_proof_of_possession_with_a_wrong_signature_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    req = _request(key)
    verify_proof_of_possession(req.public_key, req.pop_challenge, req.pop_signature)
    forged = bytes([req.pop_signature[0] ^ 1]) + req.pop_signature[1:]
    with pytest.raises(PolicyViolationError, match="proof of possession failed"):
        verify_proof_of_possession(req.public_key, req.pop_challenge, forged)
    other = _request(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(PolicyViolationError):
        verify_proof_of_possession(other.public_key, req.pop_challenge, req.pop_signature)


def test_point_off_the_curve_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    req = _request(key)
    bad = req.public_key[:-1] + bytes([req.public_key[-1] ^ 1])
    with pytest.raises(PolicyViolationError, match="not a point on P-256"):
        verify_proof_of_possession(bad, req.pop_challenge, req.pop_signature)


@pytest.mark.parametrize("serial", ["0123", "0124A1B2C3D4E5F6EE", "0123a1b2c3d4e5f6ee", "X" * 18])
def test_malformed_serial_is_refused(serial: str) -> None:
    with pytest.raises(PolicyViolationError, match="not a well-formed"):
        check_serial(serial)


def test_serial_numbers_are_positive_fixed_length_and_distinct() -> None:
    seen = {random_serial_number() for _ in range(500)}
    assert len(seen) == 500
    for n in seen:
        assert 0 < n < 2**127 and n.to_bytes(16, "big")[0] != 0
    assert hashlib.sha256(str(sorted(seen)).encode())  # non-trivial set


def _rsa_request(bits: int, exponent: int = 65537) -> SigningRequest:
    key = rsa.generate_private_key(exponent, bits)
    challenge = os.urandom(32)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sig = key.sign(challenge, padding.PKCS1v15(), hashes.SHA256())
    return SigningRequest(1, 1, SERIAL, spki, challenge, sig)


def test_rsa_subject_keys_of_2048_bits_and_e_65537_are_certified(
    ca_settings: Settings, loaded: LoadedCa
) -> None:
    req = _rsa_request(2048)
    verify_proof_of_possession(req.public_key, req.pop_challenge, req.pop_signature)
    cert = build_device_certificate(
        req, loaded, ca_settings.profile, random_serial_number(), datetime.now(UTC)
    )
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    cert.verify_directly_issued_by(loaded.intermediate_cert)
    forged = bytes([req.pop_signature[0] ^ 1]) + req.pop_signature[1:]
    with pytest.raises(PolicyViolationError, match="proof of possession failed"):
        verify_proof_of_possession(req.public_key, req.pop_challenge, forged)


def test_weak_or_foreign_subject_keys_are_refused() -> None:
    with pytest.raises(PolicyViolationError, match="RSA key of 1024 bits"):
        check_public_key(_rsa_request(1024).public_key)
    with pytest.raises(PolicyViolationError, match="exponent must be 65537"):
        check_public_key(_rsa_request(2048, exponent=3).public_key)
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    spki = p384.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(PolicyViolationError, match="only P-256"):
        check_public_key(spki)
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(PolicyViolationError, match="P-256 or RSA"):
        check_public_key(
            ed.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    with pytest.raises(PolicyViolationError, match="neither an uncompressed P-256 point"):
        check_public_key(b"\x30\x03garbage")
    # A P-256 key as SubjectPublicKeyInfo is the same key as the raw point.
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert check_public_key(der) == key


def test_a_signature_that_does_not_verify_is_never_released(
    ca_settings: Settings, loaded: LoadedCa
) -> None:
    """A token that signs with another key than the intermediate's (a faulty or swapped
    token): the self-check refuses the certificate."""
    wrong = dataclasses.replace(loaded, key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(PolicyViolationError, match="does not verify with the CA key"):
        build_device_certificate(
            _request(ec.generate_private_key(ec.SECP256R1())),
            wrong,
            ca_settings.profile,
            random_serial_number(),
            datetime.now(UTC),
        )
