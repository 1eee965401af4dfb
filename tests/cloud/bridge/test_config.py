"""The bridge's settings, its mosquitto.conf and its CA-issued server certificate."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from provisioner.ca.bridge_cert import ensure_bridge_certificate, is_current
from provisioner.ca.ceremony import CaInfo
from provisioner.cloud.mosquitto.config import render_config
from provisioner.errors import InvalidInputError, ServiceUnavailableError
from provisioner.settings import BridgeSettings, RegistrySettings, Settings


def test_bridge_settings_defaults(tmp_path: Path) -> None:
    s = Settings(var_dir=tmp_path / "var")
    b = s.bridge
    assert (b.enabled, b.host, b.mqtt_port, b.alt_port, b.wss_port) == (
        True,
        "127.0.0.1",
        8883,
        None,
        8884,
    )
    assert b.names == ["localhost", "127.0.0.1"] and b.jwt_refresh_s == 3600
    assert b.hook_allow == ["127.0.0.1/32", "::1/128"]
    assert s.bridge_dir == s.var / "bridge"
    assert s.bridge_token_file == s.var / "registry" / "bridge.token"
    assert b.plugin_path.name == "provisioner_plugin.so"


def test_config_has_one_listener_per_port_and_no_secret(tmp_path: Path) -> None:
    s = Settings(
        var_dir=tmp_path / "var",
        registry=RegistrySettings(listen_port=18711),
        bridge=BridgeSettings(
            host="0.0.0.0", mqtt_port=18883, alt_port=18443, wss_port=18884, mtls_port=18885
        ),
    )
    conf = render_config(s)
    blocks = conf.split("\nlistener ")[1:]
    assert [b.split("\n", 1)[0] for b in blocks] == [
        "18883 0.0.0.0",
        "18443 0.0.0.0",
        "18884 0.0.0.0",
        "18885 0.0.0.0",
    ]
    assert ["protocol websockets" in b for b in blocks] == [False, False, True, False]
    for block in blocks[:3]:  # JWT only: a device is never asked for a certificate
        assert "tls_version tlsv1.2" in block and "require_certificate false" in block
        assert "cafile" not in block
    for block in blocks:
        assert f"certfile {s.bridge_dir / 'server.pem'}" in block
    mtls = blocks[3]  # the client certificate is required and checked against our CA
    assert "require_certificate true" in mtls and "require_certificate false" not in mtls
    assert f"cafile {s.bridge_dir / 'clients.pem'}\n" in mtls
    assert "use_identity_as_username false" in mtls and "tls_version tlsv1.2" in mtls
    for line in (
        "allow_anonymous false",
        "per_listener_settings false",
        "persistence false",
        "max_keepalive 1200",
        "log_dest stdout",
        "plugin_opt_url http://127.0.0.1:18711",
        f"plugin_opt_token_file {s.bridge_token_file}",
    ):
        assert line + "\n" in conf
    assert "\nuser " in conf

    no_wss = render_config(
        Settings(var_dir=tmp_path / "v2", bridge=BridgeSettings(wss_port=None, mtls_port=None))
    )
    assert "websockets" not in no_wss and no_wss.count("\nlistener ") == 1
    assert "require_certificate true" not in no_wss


def test_a_value_with_a_line_break_cannot_inject_a_directive(tmp_path: Path) -> None:
    s = Settings(
        var_dir=tmp_path / "var", bridge=BridgeSettings(host="127.0.0.1\nallow_anonymous true")
    )
    with pytest.raises(ServiceUnavailableError, match="line break"):
        render_config(s)


def test_the_server_certificate_is_p256_from_the_intermediate(
    ca_settings: Settings, ca: CaInfo
) -> None:
    s = ca_settings
    assert ensure_bridge_certificate(s) is True
    d = s.bridge_dir
    chain = x509.load_pem_x509_certificates((d / "server.pem").read_bytes())
    root = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    cert = chain[0]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert chain[1] == x509.load_pem_x509_certificate((s.ca_dir / "intermediate.pem").read_bytes())
    assert root.subject == chain[1].issuer
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", d / "ca.pem", "-untrusted", *[d / "server.pem"] * 2],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert (d / "server.key").stat().st_mode & 0o777 == 0o600


def test_reissued_only_when_missing_expiring_or_renamed(ca_settings: Settings, ca: CaInfo) -> None:
    s = ca_settings
    assert ensure_bridge_certificate(s) is True
    first = (s.bridge_dir / "server.pem").read_bytes()
    key = (s.bridge_dir / "server.key").read_bytes()
    assert ensure_bridge_certificate(s) is False  # current: the token is not even opened
    assert (s.bridge_dir / "server.pem").read_bytes() == first

    # within 30 days of its expiry it is renewed, with the same key
    soon = datetime.now(UTC) + timedelta(days=340)
    assert is_current(s) and not is_current(s, soon)
    assert ensure_bridge_certificate(s, now=soon) is True
    assert is_current(s, soon) and (s.bridge_dir / "server.pem").read_bytes() != first

    renamed = s.model_copy(
        update={"bridge": s.bridge.model_copy(update={"names": ["mqtt.example.com", "10.0.0.5"]})}
    )
    assert ensure_bridge_certificate(renamed) is True
    cert = x509.load_pem_x509_certificates((s.bridge_dir / "server.pem").read_bytes())[0]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.example.com"]
    assert (s.bridge_dir / "server.key").read_bytes() == key

    (s.bridge_dir / "server.pem").unlink()
    assert ensure_bridge_certificate(renamed) is True


def test_a_bad_name_is_refused_before_the_token_is_opened(tmp_path: Path) -> None:
    s = Settings(var_dir=tmp_path / "var", bridge=BridgeSettings(names=["not a name"]))
    with pytest.raises(InvalidInputError, match="not a name"):
        ensure_bridge_certificate(s)


def test_the_registry_server_makes_the_bridge_token_only_for_an_enabled_bridge(
    tmp_path: Path,
) -> None:
    from provisioner.cloud.server import bridge_token_hash
    from provisioner.cloud.tokens import read_token, token_hash

    off = Settings(var_dir=tmp_path / "off", bridge=BridgeSettings(enabled=False))
    assert bridge_token_hash(off) is None
    assert not off.bridge_token_file.exists()

    on = Settings(var_dir=tmp_path / "on")
    digest = bridge_token_hash(on)
    assert digest == token_hash(read_token(on.bridge_token_file))
    assert on.bridge_token_file.stat().st_mode & 0o777 == 0o600
    assert bridge_token_hash(on) == digest  # kept across restarts
