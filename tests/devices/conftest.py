"""Helpers for the device-facing HTTPS listener's tests: client certificates issued by the
real CA in SoftHSM (or by a foreign CA made here), written as PEM files for httpx."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.ca.issuer import key_usage, random_serial_number


@dataclass(frozen=True)
class ClientCert:
    cert: x509.Certificate
    cert_file: Path
    key_file: Path


def pinned(root: Path, client: ClientCert | None = None) -> ssl.SSLContext:
    """What a device uses: the one root it pins (server name checked), and its client
    certificate if it has one. (httpx 0.28 ignores ``cert=`` next to ``verify=<path>``.)"""
    ctx = ssl.create_default_context(cafile=str(root))
    if client is not None:
        ctx.load_cert_chain(client.cert_file, client.key_file)
    return ctx


def issue_client_cert(
    folder: Path,
    name: str,
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> ClientCert:
    """A clientAuth certificate for ``name`` signed by ``issuer_key`` (an HSM key object
    works), written with its key under ``folder``."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / f"{name}.pem", folder / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ClientCert(cert, cert_file, key_file)


def foreign_client_cert(folder: Path, name: str) -> ClientCert:
    """A client certificate from a self-made CA whose subject and key identifier look like
    ours would not help it: a different key signs it."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "somebody else's CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(ca_key.public_key())
        .serial_number(random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    return issue_client_cert(folder, name, ca, ca_key)
