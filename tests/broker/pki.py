"""A throwaway CA for broker tests (the real certificates come from the HSM CA, see
provisioner/enrollment): root -> intermediate -> line server / station certificates, written
where the settings expect them."""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class ThrowawayCa:
    """Root + intermediate, in memory."""

    def __init__(self, name: str = "Test") -> None:
        now = datetime.now(UTC) - timedelta(minutes=5)
        self.now = now
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._cert(
            _name(f"{name} Root"),
            self.root_key.public_key(),
            _name(f"{name} Root"),
            self.root_key,
            ca=True,
        )
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self._cert(
            _name(f"{name} Intermediate"),
            self.key.public_key(),
            self.root.subject,
            self.root_key,
            ca=True,
        )

    def _cert(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey,
        issuer: x509.Name,
        issuer_key: ec.EllipticCurvePrivateKey,
        *,
        ca: bool = False,
        eku: list[x509.ObjectIdentifier] | None = None,
        sans: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now)
            .not_valid_after(self.now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=not ca,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=not ca,
                    key_cert_sign=ca,
                    crl_sign=ca,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        )
        if eku:
            b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def chain_pem(self) -> bytes:
        return _pem(self.cert) + _pem(self.root)

    def issue(
        self,
        directory: Path,
        stem: str,
        cn: str,
        *,
        server: bool,
        names: tuple[str, ...] = ("localhost", "127.0.0.1"),
    ) -> tuple[Path, Path]:
        """``<stem>.key`` (0600) + ``<stem>.crt`` + ``ca-chain.pem`` in ``directory``."""
        key = ec.generate_private_key(ec.SECP256R1())
        eku = [ExtendedKeyUsageOID.CLIENT_AUTH]
        sans = None
        if server:
            eku.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
            sans = [_general_name(n) for n in names]
        cert = self._cert(
            _name(cn), key.public_key(), self.cert.subject, self.key, eku=eku, sans=sans
        )
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path, crt_path = directory / f"{stem}.key", directory / f"{stem}.crt"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        crt_path.write_bytes(_pem(cert))
        (directory / "ca-chain.pem").write_bytes(self.chain_pem())
        return crt_path, key_path


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
