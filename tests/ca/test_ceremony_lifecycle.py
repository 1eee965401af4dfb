"""The ceremony beyond `ca init`: an offline root (csr + import-cert), rotation, `ca show`,
an RSA root, and the CRL distribution point. Real SoftHSM tokens throughout; the offline
root is a software key in the test, standing for a root that never touches this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from provisioner.ca.ceremony import (
    CaInfo,
    import_certificate,
    load_ca,
    make_csr,
    rotate,
    store_of,
)
from provisioner.ca.chain import chip_chain
from provisioner.ca.issuer import build_device_certificate, device_validity, key_usage
from provisioner.errors import ConfigError, HsmError, InvalidInputError
from provisioner.ports import SigningRequest
from provisioner.settings import Settings, load_settings
from tests.conftest import Station, chip_request
from tests.e2e.test_end_to_end import cli

SERIAL = "0123A1B2C3D4E5F6EE"


def _request() -> SigningRequest:
    return chip_request(serial=SERIAL)


def _openssl_verify(root: Path, inter: Path, leaf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(root), "-untrusted", str(inter),
         str(leaf)],
        capture_output=True,
        text=True,
    )  # fmt: skip


class OfflineRoot:
    """A root CA that lives elsewhere: it only ever sees CSRs and hands back certificates."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Offline Root")])
        nb, na = device_validity(datetime.now(UTC), 30)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(nb)
            .not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), False)
            .sign(self.key, hashes.SHA256())
        )

    def sign(
        self, csr_pem: bytes, *, ca: bool = True, on_the_hour: bool = True
    ) -> x509.Certificate:
        csr = x509.load_pem_x509_csr(csr_pem)
        assert csr.is_signature_valid
        nb, na = device_validity(datetime.now(UTC), 20)
        if not on_the_hour:
            nb, na = nb + timedelta(minutes=7), na + timedelta(minutes=7)
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(self.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(nb)
            .not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
            .add_extension(key_usage(ca=ca), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False
            )
            .sign(self.key, hashes.SHA256())
        )

    def write(self, path: Path, cert: x509.Certificate | None = None) -> Path:
        path.write_bytes((cert or self.cert).public_bytes(serialization.Encoding.PEM))
        return path


def test_offline_root_csr_and_import(ca_settings: Settings, tmp_path: Path) -> None:
    root = OfflineRoot()
    name, csr_path = make_csr(ca_settings)
    assert name == "intermediate-ca" and csr_path.exists()
    assert not (ca_settings.ca_dir / "root.pem").exists()  # no root on this machine
    cert = root.sign(csr_path.read_bytes())
    root_pem = root.write(tmp_path / "root.pem")
    cert_pem = root.write(tmp_path / "inter.pem", cert)
    info = import_certificate(ca_settings, cert_pem, root_pem)
    assert info.intermediate_name == name
    assert not csr_path.exists()  # no longer pending
    ca = load_ca(ca_settings)
    try:
        dev = build_device_certificate(
            _request(), ca, ca_settings.profile, 1 << 120, datetime.now(UTC)
        )
    finally:
        ca.close()
    leaf = tmp_path / "dev.pem"
    leaf.write_bytes(dev.public_bytes(serialization.Encoding.PEM))
    proc = _openssl_verify(
        ca_settings.ca_dir / "root.pem", ca_settings.ca_dir / "intermediate.pem", leaf
    )
    assert proc.returncode == 0, proc.stderr
    chip_chain(ca_settings)  # chips can store this intermediate


def test_import_refuses_what_does_not_belong(ca_settings: Settings, tmp_path: Path) -> None:
    root, stranger = OfflineRoot(), OfflineRoot()
    _, csr_path = make_csr(ca_settings)
    root_pem = root.write(tmp_path / "root.pem")
    # Signed by another root than the one given.
    bad = stranger.write(tmp_path / "a.pem", stranger.sign(csr_path.read_bytes()))
    with pytest.raises(InvalidInputError, match="not signed by the root"):
        import_certificate(ca_settings, bad, root_pem)
    # Not a CA certificate.
    bad = root.write(tmp_path / "b.pem", root.sign(csr_path.read_bytes(), ca=False))
    with pytest.raises(InvalidInputError, match="not a CA certificate"):
        import_certificate(ca_settings, bad, root_pem)
    # Dates that the compressed format cannot hold.
    bad = root.write(tmp_path / "c.pem", root.sign(csr_path.read_bytes(), on_the_hour=False))
    with pytest.raises(InvalidInputError, match="chips cannot store it"):
        import_certificate(ca_settings, bad, root_pem)
    # A key that is not pending in the token.
    other = ec.generate_private_key(ec.SECP256R1())
    foreign_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(other, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    bad = root.write(tmp_path / "d.pem", root.sign(foreign_csr))
    with pytest.raises(InvalidInputError, match="does not belong to any pending key"):
        import_certificate(ca_settings, bad, root_pem)
    # Garbage.
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(InvalidInputError, match=r"not an X\.509 certificate"):
        import_certificate(ca_settings, junk, root_pem)
    assert not (ca_settings.ca_dir / "intermediate.pem").exists()  # nothing installed


def test_rotation_keeps_the_old_intermediate_and_the_signer_follows(
    ca_settings: Settings, ca: CaInfo, tmp_path: Path
) -> None:
    from provisioner.db.engine import create_schema, make_engine
    from provisioner.issuance import IssuanceService

    engine = make_engine(ca_settings.db_url)
    create_schema(engine)
    svc = IssuanceService.open(engine, ca_settings)
    try:
        old_name = svc.ca.name
        info = rotate(ca_settings)
        assert info.intermediate_name == "intermediate-ca-2"
        assert info.intermediate_fingerprint_sha256 != ca.intermediate_fingerprint_sha256
        store = store_of(ca_settings)
        assert set(store.intermediates()) == {"intermediate-ca", "intermediate-ca-2"}
        svc.issuer.issue(_request(), 1 << 120, datetime.now(UTC))  # a template for the old CA
        old_template = svc.issuer.template
        assert old_template is not None and old_template.issuer is svc.ca.intermediate_cert
        svc._follow_rotation()  # what the next sign() does first
        assert svc.ca.name == "intermediate-ca-2"
        dev = build_device_certificate(
            _request(), svc.ca, ca_settings.profile, 1 << 120, datetime.now(UTC)
        )
        assert dev.issuer == store.intermediate().subject
        dev.verify_directly_issued_by(store.intermediate())
        # The signer's own issuer (template path) follows too: a new template for the new CA.
        dev = svc.issuer.issue(_request(), 1 << 120, datetime.now(UTC))
        assert svc.issuer.template is not None
        assert svc.issuer.template.issuer is svc.ca.intermediate_cert
        dev.verify_directly_issued_by(store.intermediate())
        assert old_name == "intermediate-ca"
    finally:
        svc.close()
    again = rotate(ca_settings)
    assert again.intermediate_name == "intermediate-ca-3"
    chip_chain(ca_settings)


def test_rotate_without_the_root_token_explains_the_offline_path(
    ca_settings: Settings, tmp_path: Path
) -> None:
    root = OfflineRoot()
    _, csr_path = make_csr(ca_settings)
    import_certificate(
        ca_settings,
        root.write(tmp_path / "i.pem", root.sign(csr_path.read_bytes())),
        root.write(tmp_path / "r.pem"),
    )
    with pytest.raises(HsmError, match="ca csr"):
        rotate(ca_settings)


def test_an_rsa_root_is_refused_because_chips_cannot_hold_its_chain(
    ca_settings: Settings, tmp_path: Path
) -> None:
    rsa_key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RSA Root")])
    nb, na = device_validity(datetime.now(UTC), 30)
    root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(rsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .sign(rsa_key, hashes.SHA256())
    )
    _, csr_path = make_csr(ca_settings)
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    inter = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(name)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(nb.replace(year=nb.year + 20))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .sign(rsa_key, hashes.SHA256())
    )
    (tmp_path / "r.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "i.pem").write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(InvalidInputError, match="the root must have a P-256 key"):
        import_certificate(ca_settings, tmp_path / "i.pem", tmp_path / "r.pem")


def test_crl_distribution_point_names_the_issuing_intermediate(
    ca_settings: Settings, ca: CaInfo
) -> None:
    profile = ca_settings.profile.model_copy(
        update={"crl_url": "http://crl.example.com/crl/{ca}.crl"}
    )
    loaded = load_ca(ca_settings)
    try:
        dev = build_device_certificate(_request(), loaded, profile, 1 << 120, datetime.now(UTC))
    finally:
        loaded.close()
    cdp = dev.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for p in cdp for n in (p.full_name or [])] == [
        "http://crl.example.com/crl/intermediate-ca.crl"
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ldap://x/crl", "http:// or https://"),
        ("http://x/{serial}.crl", "only placeholder"),
        ("http://x/a b.crl", "no spaces"),
    ],
)
def test_crl_url_is_validated_at_load(tmp_path: Path, url: str, message: str) -> None:
    config = tmp_path / "p.toml"
    config.write_text(f'[profile]\ncrl_url = "{url}"\n')
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


def test_token_uri_sets_token_key_module_and_pin_source(tmp_path: Path) -> None:
    config = tmp_path / "p.toml"
    config.write_text(
        "[hsm]\n"
        'token_uri = "pkcs11:token=line%20ca;object=inter?module-path=/opt/hsm.so'
        '&pin-source=file:/etc/ca.pin"\n'
    )
    s = load_settings(config)
    assert (s.hsm.factory_token, s.hsm.ca_key_label, s.hsm.module) == (
        "line ca",
        "inter",
        "/opt/hsm.so",
    )
    assert s.pin_source == "file:/etc/ca.pin"
    assert s.ca_key_uri("inter").startswith("pkcs11:token=line%20ca;object=inter;type=private?")
    config.write_text('[hsm]\ntoken_uri = "pkcs11:token=x?pin-value=1234"\n')
    with pytest.raises(ConfigError, match="pin-value is not accepted") as err:
        load_settings(config)
    assert "1234" not in str(err.value)


def _cli(station: Station, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(station, *args, check=False)


def test_cli_offline_root_rotation_and_show(station: Station, tmp_path: Path) -> None:
    root = OfflineRoot()
    csr = _cli(station, "ca", "csr", "--out", str(tmp_path / "req.csr"))
    assert csr.returncode == 0, csr.stderr
    assert "ca import-cert" in csr.stdout
    cert = root.write(tmp_path / "i.pem", root.sign((tmp_path / "req.csr").read_bytes()))
    no_root = _cli(station, "ca", "import-cert", str(cert))
    assert no_root.returncode != 0 and "--root" in no_root.stderr
    ok = _cli(
        station, "ca", "import-cert", str(cert), "--root", str(root.write(tmp_path / "r.pem"))
    )
    assert ok.returncode == 0, ok.stderr
    shown = _cli(station, "ca", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["intermediate"]["name"] == "intermediate-ca"
    assert data["root"]["subject"] == "CN=Offline Root"
    assert data["intermediate"]["key_uri"].startswith("pkcs11:token=factory;object=intermediate-ca")
    pin = station.settings.pin_file.read_text().strip()
    assert pin not in shown.stdout and pin not in csr.stdout + ok.stdout
    # A second CSR, signed and imported: a rotation with the root kept offline.
    csr2 = _cli(station, "ca", "csr")
    assert csr2.returncode == 0, csr2.stderr
    pending = store_of(station.settings).pending_csr("intermediate-ca-2")
    cert2 = root.write(tmp_path / "i2.pem", root.sign(pending.read_bytes()))
    assert _cli(station, "ca", "import-cert", str(cert2)).returncode == 0
    data = json.loads(_cli(station, "ca", "show", "--json").stdout)
    assert data["intermediate"]["name"] == "intermediate-ca-2"
    assert [p["name"] for p in data["previous"]] == ["intermediate-ca"]
    text = _cli(station, "ca", "show")
    assert "previous" in text.stdout and "pkcs11:token=factory" in text.stdout
    # The audit trail recorded the ceremony.
    audit = _cli(station, "audit", "verify")
    assert audit.returncode == 0, audit.stdout + audit.stderr


def _run_in_terminal(station: Station, args: list[str], typed: str) -> tuple[int, str]:
    """Run the CLI on a real pseudo-terminal and type ``typed`` at the PIN prompt."""
    import pty
    import select

    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner.cli.main", *args],
        stdin=child_fd,
        stdout=child_fd,
        stderr=child_fd,
        env=station.env(),
        start_new_session=True,
    )
    os.close(child_fd)
    seen = b""
    sent = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main_fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(main_fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        if not sent and b"PIN for token" in seen:
            os.write(main_fd, typed.encode() + b"\n")
            sent = True
        if proc.poll() is not None and not ready:
            break
    proc.wait(30)
    os.close(main_fd)
    return proc.returncode, seen.decode(errors="replace")


def test_pin_typed_at_a_prompt_is_never_echoed(station: Station) -> None:
    assert _cli(station, "ca", "init").returncode == 0
    pin = station.settings.pin_file.read_text().strip()
    code, out = _run_in_terminal(station, ["ca", "csr", "--pin-source", "prompt"], pin)
    assert code == 0, out
    assert "PIN for token 'factory'" in out and "generated in token" in out
    assert pin not in out
    code, out = _run_in_terminal(station, ["ca", "csr", "--pin-source", "prompt"], "11112222")
    assert code != 0 and "rejected the PIN from an interactive prompt" in out
    assert "11112222" not in out
    no_tty = _cli(station, "ca", "csr", "--pin-source", "prompt")
    assert no_tty.returncode != 0 and "no terminal" in no_tty.stderr
