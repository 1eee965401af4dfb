"""The signer's template path (provisioner/ca/tbs_template.py) against the builder: for
the same inputs the TBS bytes are identical, for every shipped profile and across the
UTCTime/GeneralizedTime change in 2050; what does not fit takes the builder; a wrong
signature is still never released; the output passes openssl -x509_strict."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.ca.ceremony import LoadedCa, init_ca, load_ca
from provisioner.ca.issuer import (
    DeviceIssuer,
    build_device_certificate,
    device_validity,
    random_serial_number,
)
from provisioner.ca.tbs_template import encode_time
from provisioner.errors import PolicyViolationError
from provisioner.settings import Settings
from tests.ca.test_issuer import _rsa_request
from tests.chips.test_compressed_certs import SHIPPED
from tests.conftest import chip_request


def _ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **profile: object) -> LoadedCa:
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    settings = Settings(var_dir=tmp_path / "var", **profile)  # type: ignore[arg-type]
    init_ca(settings)
    return load_ca(settings)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_patched_tbs_is_byte_identical_to_the_builders(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = _ca(tmp_path, monkeypatch, **SHIPPED[name])
    settings = Settings(var_dir=tmp_path / "var", **SHIPPED[name])  # type: ignore[arg-type]
    issuer = DeviceIssuer(ca, settings.profile)
    try:
        # Ordinary days, a 29 February, and both sides of 2050 (UTCTime -> GeneralizedTime).
        moments = [
            dt.datetime.now(dt.UTC),
            dt.datetime(2028, 2, 29, 13, 45, tzinfo=dt.UTC),
            dt.datetime(2049, 12, 31, 23, 59, tzinfo=dt.UTC),
            dt.datetime(2050, 1, 1, 0, 30, tzinfo=dt.UTC),
            dt.datetime(2026, 11, 22, 7, tzinfo=dt.UTC),
        ]
        made, expected, previous, shape = 0, 0, None, None
        for i, now in enumerate(moments * 2):
            req, serial = chip_request(i), random_serial_number()
            fast = issuer.issue(req, serial, now)
            assert issuer.template is not None, "the template path was not taken"
            made += issuer.template is not previous
            previous = issuer.template
            dates = device_validity(now, settings.profile.validity_years)
            new_shape = tuple(len(encode_time(d)) for d in dates)
            expected += new_shape != shape
            shape = new_shape
            slow = build_device_certificate(req, ca, settings.profile, serial, now)
            assert fast.tbs_certificate_bytes == slow.tbs_certificate_bytes, (name, now)
            assert fast.signature_algorithm_oid == slow.signature_algorithm_oid
            fast.verify_directly_issued_by(ca.intermediate_cert)
        # Only a change of date encoding makes a new template.
        assert made == expected
    finally:
        ca.close()


def test_time_encoding_matches_rfc5280() -> None:
    assert encode_time(dt.datetime(2049, 12, 31, 23, 0, tzinfo=dt.UTC)) == b"\x17\x0d491231230000Z"
    assert encode_time(dt.datetime(2050, 1, 1, tzinfo=dt.UTC)) == b"\x18\x0f20500101000000Z"
    assert encode_time(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)) == (
        b"\x18\x0f99991231235959Z"
    )


def test_rsa_subjects_take_the_builder_and_bad_signatures_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = _ca(tmp_path, monkeypatch)
    profile = Settings(var_dir=tmp_path / "var").profile
    try:
        rsa_cert = DeviceIssuer(ca, profile).issue(
            _rsa_request(2048), random_serial_number(), dt.datetime.now(dt.UTC)
        )
        rsa_cert.verify_directly_issued_by(ca.intermediate_cert)
        # A token that signs with another key: the template path checks the signature too.
        wrong = dataclasses.replace(ca, key=ec.generate_private_key(ec.SECP256R1()))
        issuer = DeviceIssuer(wrong, profile)
        with pytest.raises(PolicyViolationError, match="does not verify with the CA key"):
            issuer.issue(chip_request(1), random_serial_number(), dt.datetime.now(dt.UTC))
        assert issuer.template is not None  # it was the template path that refused
    finally:
        ca.close()


def test_template_output_passes_openssl_strict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = _ca(tmp_path, monkeypatch)
    settings = Settings(var_dir=tmp_path / "var")
    try:
        issuer = DeviceIssuer(ca, settings.profile)
        for i in range(3):
            cert = issuer.issue(chip_request(i), random_serial_number(), dt.datetime.now(dt.UTC))
    finally:
        ca.close()
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    proc = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", "sslclient",
         "-CAfile", str(settings.ca_dir / "root.pem"),
         "-untrusted", str(settings.ca_dir / "intermediate.pem"), str(leaf)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
