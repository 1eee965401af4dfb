"""`ca init`: keys generated in SoftHSM, idempotent, refuses to replace without --force."""

from __future__ import annotations

import subprocess

import pytest
from cryptography import x509

from provisioner.ca.ceremony import CaInfo, init_ca, load_ca
from provisioner.errors import CaExistsError, CaNotInitialisedError, HsmLoginError
from provisioner.settings import Settings


def test_init_creates_a_chain(ca_settings: Settings, ca: CaInfo) -> None:
    assert ca.created
    root = x509.load_pem_x509_certificate((ca_settings.ca_dir / "root.pem").read_bytes())
    inter = x509.load_pem_x509_certificate((ca_settings.ca_dir / "intermediate.pem").read_bytes())
    inter.verify_directly_issued_by(root)
    bc = inter.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    assert "CN=Factory Intermediate CA" in ca.intermediate_subject
    proc = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-CAfile",
            str(ca_settings.ca_dir / "root.pem"),
            str(ca_settings.ca_dir / "intermediate.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_init_is_idempotent(ca_settings: Settings, ca: CaInfo) -> None:
    again = init_ca(ca_settings)
    assert not again.created
    assert again.intermediate_fingerprint_sha256 == ca.intermediate_fingerprint_sha256


def test_partial_ca_is_refused_without_force(ca_settings: Settings, ca: CaInfo) -> None:
    (ca_settings.ca_dir / "intermediate.pem").unlink()
    with pytest.raises(CaExistsError, match="--force"):
        init_ca(ca_settings)
    forced = init_ca(ca_settings, force=True)
    assert forced.created
    assert forced.intermediate_fingerprint_sha256 != ca.intermediate_fingerprint_sha256
    loaded = load_ca(ca_settings)
    try:
        assert loaded.key.public_key() == loaded.intermediate_cert.public_key()
    finally:
        loaded.close()


def test_load_without_ca(ca_settings: Settings) -> None:
    with pytest.raises(CaNotInitialisedError, match="provisioner ca init"):
        load_ca(ca_settings)


def test_wrong_pin_is_refused_without_echoing_it(ca_settings: Settings, ca: CaInfo) -> None:
    ca_settings.pin_file.write_text("424242424242\n")
    with pytest.raises(HsmLoginError) as err:
        load_ca(ca_settings)
    assert "424242424242" not in str(err.value) and "rejected the PIN" in str(err.value)
