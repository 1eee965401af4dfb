"""The line server's identity: a local key (0600), a certificate from the HSM intermediate
that TLS clients accept for each name given, and no rewrite while it is current."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from provisioner.ca.ceremony import CaInfo
from provisioner.enrollment.service import LinePaths, init_line_identity
from provisioner.errors import InvalidInputError
from provisioner.settings import Settings


def _server_ok(paths: LinePaths, name: x509.DNSName | x509.IPAddress) -> None:
    intermediate, root = x509.load_pem_x509_certificates(paths.chain.read_bytes())
    cert = x509.load_pem_x509_certificate(paths.certificate.read_bytes())
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(name)
    assert verifier.verify(cert, [intermediate])[-1] == root


def test_line_identity_defaults_and_is_idempotent(ca_settings: Settings, ca: CaInfo) -> None:
    folder = init_line_identity(ca_settings)
    paths = LinePaths.of(ca_settings)
    assert folder == paths.dir == ca_settings.line_identity_dir
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(paths.certificate.read_bytes())
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "line server"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    ca_pems = (ca_settings.ca_dir / "intermediate.pem").read_bytes() + (
        ca_settings.ca_dir / "root.pem"
    ).read_bytes()
    assert paths.chain.read_bytes() == ca_pems
    for name in san:
        assert isinstance(name, x509.DNSName | x509.IPAddress)
        _server_ok(paths, name)
    # nothing changes while current; no names given keeps the current ones
    before = paths.certificate.read_bytes(), paths.key.read_bytes()
    init_line_identity(ca_settings)
    init_line_identity(ca_settings, ["127.0.0.1", "localhost"])
    assert (paths.certificate.read_bytes(), paths.key.read_bytes()) == before


def test_new_names_reissue_the_certificate_for_the_same_key(
    ca_settings: Settings, ca: CaInfo
) -> None:
    init_line_identity(ca_settings)
    paths = LinePaths.of(ca_settings)
    key_before = paths.key.read_bytes()
    old = paths.certificate.read_bytes()
    init_line_identity(ca_settings, ["line.example.com", "10.1.2.3", "::1"])
    assert paths.key.read_bytes() == key_before and paths.certificate.read_bytes() != old
    cert = x509.load_pem_x509_certificate(paths.certificate.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["line.example.com"]
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"10.1.2.3", "::1"}
    _server_ok(paths, x509.DNSName("line.example.com"))
    init_line_identity(ca_settings)  # no names: keeps these
    assert paths.certificate.read_bytes() == cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("bad", ["bad name", "-x.example", "a..b", "*.example.com"])
def test_bad_names_are_refused(ca_settings: Settings, ca: CaInfo, bad: str) -> None:
    with pytest.raises(InvalidInputError, match="neither an IP address nor a DNS name"):
        init_line_identity(ca_settings, [bad])
    assert not LinePaths.of(ca_settings).key.exists()
