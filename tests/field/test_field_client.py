"""The field device's errors that need no bridge: nothing listening, no bridge CA, the
bridge disabled; and the CLI's admin check for rotate-key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.errors import ConfigError, ServiceUnavailableError
from provisioner.field.client import FieldDevice
from provisioner.settings import Settings
from tests.conftest import free_port
from tests.field.conftest import provision_chip


def self_signed_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def settings_for(tmp_path: Path, **bridge: object) -> Settings:
    return Settings(var_dir=tmp_path / "var", bridge=bridge)  # type: ignore[call-arg]


def test_no_bridge_listening_says_how_to_start_it(tmp_path: Path) -> None:
    port = free_port()
    settings = settings_for(tmp_path, mqtt_port=port)
    provision_chip(settings, certificate=False)
    settings.bridge_dir.mkdir(parents=True)
    (settings.bridge_dir / "ca.pem").write_bytes(self_signed_pem())
    device = FieldDevice(settings, "emulated:line1/0", emit=lambda _s: None)
    with pytest.raises(
        ServiceUnavailableError,
        match=rf"cannot reach the MQTT bridge at 127\.0\.0\.1:{port}.*provisioner services run",
    ):
        device.run(count=1, seconds=5)


def test_no_bridge_ca_and_a_disabled_bridge_are_named(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    provision_chip(settings, certificate=False)
    with pytest.raises(ConfigError, match=r"no bridge CA certificate at .*ca\.pem"):
        FieldDevice(settings, "emulated:line1/0")
    off = settings_for(tmp_path, enabled=False)
    with pytest.raises(ConfigError, match=r"bridge is disabled \(bridge.enabled = false\)"):
        FieldDevice(off, "emulated:line1/0")
