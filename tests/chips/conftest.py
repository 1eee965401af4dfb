"""A software CA for chip tests: the chip side needs only public certificates.

Storing certificates compressed needs the intermediate and root certificates (public
files under ``<var>/ca``) and a certificate signed by the intermediate. Chip tests sign
with a software key so they run without a token; the HSM path is exercised end to end in
tests/core and tests/e2e with SoftHSM.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.ca.issuer import (
    build_device_certificate,
    device_validity,
    key_usage,
    random_serial_number,
)
from provisioner.chips.device import CryptoAuthChip
from provisioner.ports import SigningRequest
from provisioner.settings import Settings


@dataclass
class SoftwareCa:
    key: ec.EllipticCurvePrivateKey
    intermediate_cert: x509.Certificate
    root_cert: x509.Certificate


def _ca_cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    nb, na = device_validity(datetime.now(UTC), 20)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    return b.sign(issuer_key, hashes.SHA256())


def software_ca(settings: Settings) -> SoftwareCa:
    """Make a root and an intermediate and write their certificates where stations look."""
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _ca_cert("Test Root", root_key, None, root_key)
    inter = _ca_cert("Test Intermediate", key, root, root_key)
    settings.ca_dir.mkdir(parents=True, exist_ok=True)
    for name, cert in (("root.pem", root), ("intermediate.pem", inter)):
        (settings.ca_dir / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return SoftwareCa(key, inter, root)


def issue_for(chip: CryptoAuthChip, ca: SoftwareCa, settings: Settings) -> bytes:
    """The device certificate the issuer would make for this chip (DER)."""
    request = SigningRequest(
        device_id=1,
        batch_id=1,
        chip_serial_hex=chip.identity().serial_hex,
        public_key=b"\x04" + chip.public_key(),
        pop_challenge=b"",
        pop_signature=b"",
    )
    cert = build_device_certificate(
        request,
        ca,
        settings.profile,
        random_serial_number(),
        datetime.now(UTC),  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.DER)


def settings_with_ca(tmp_path: Path, **overrides: object) -> tuple[Settings, SoftwareCa]:
    settings = Settings(var_dir=tmp_path, **overrides)  # type: ignore[arg-type]
    return settings, software_ca(settings)
