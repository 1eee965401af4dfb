"""The manifest key: its own P-256 key in the factory token, made with the CA.

Manifests (:mod:`provisioner.uploads.manifest`) are signed with it; its certificate (self-signed
by that key) is ``var/ca/manifest-signer.pem``. It lives here, beside the CA ceremony that makes
it, so the CA never imports the uploaders.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hsm.keys import KeyAlgorithm, KeyRef, generate, key_labels
from hsm.module import TokenSession
from hsm.signer import token_key
from provisioner.settings import Settings

KEY_LABEL = "manifest-signer"


def signer_file(settings: Settings) -> Path:
    return settings.ca_dir / "manifest-signer.pem"


def ensure_manifest_key(settings: Settings, ts: TokenSession) -> x509.Certificate:
    """Make the manifest key in the factory token and its self-signed certificate, once."""
    path = signer_file(settings)
    if KEY_LABEL not in key_labels(ts):
        generate(ts, KeyRef(KEY_LABEL, os.urandom(16)), KeyAlgorithm.EC_P256)
        path.unlink(missing_ok=True)  # a certificate of an older key is worthless now
    if path.exists():
        return x509.load_pem_x509_certificate(path.read_bytes())
    key = token_key(ts, KEY_LABEL)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, settings.profile.organization),
            x509.NameAttribute(NameOID.COMMON_NAME, "Manifest Signer"),
        ]
    )
    now = datetime.now(UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(os.urandom(15), "big") | 1 << 112)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=365 * 20))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert
