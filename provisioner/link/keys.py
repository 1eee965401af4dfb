"""The keys that sign link messages, and the certificates that check them.

The line server signs with ``<var>/line/line.key`` (its certificate ``line.crt`` is what
stations pinned at enrollment); a station signs with ``station.key`` in its identity dir
(its certificate is in the line's ``station_identity`` table). A key id (``kid``) is the
SHA-256 of the signer's certificate (DER), so the receiver finds the exact certificate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.errors import ConfigError
from provisioner.settings import Settings

LINE = "line"


def station_party(station_id: str) -> str:
    """How a station is named in ``from``/``to`` of a message."""
    return f"station:{station_id}"


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class SigningKey:
    """A party's message key and the id of its certificate."""

    party: str
    key: ec.EllipticCurvePrivateKey
    kid: str


def _load(key_file: Path, cert_file: Path, party: str, how: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename} is missing: {how}") from None
    except ValueError:
        raise ConfigError(f"{key_file} or {cert_file} is not a valid PEM key/certificate") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError(f"{key_file} is not the key of {cert_file}")
    return SigningKey(party, key, fingerprint(cert))


def line_key(settings: Settings) -> SigningKey:
    d = settings.line_identity_dir
    return _load(
        d / "line.key",
        d / "line.crt",
        LINE,
        "make the line server's identity with `provisioner line identity`",
    )


def station_key(settings: Settings, station_id: str) -> SigningKey:
    d = settings.station_identity_dir
    return _load(
        d / "station.key",
        d / "station.crt",
        station_party(station_id),
        "enroll this station first (`provisioner station enroll`)",
    )


def pinned_line_certificate(settings: Settings) -> x509.Certificate:
    """The line server's certificate as this station pinned it at enrollment."""
    path = settings.station_identity_dir / "line.crt"
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} is missing: enroll this station first (`provisioner station enroll`)"
        ) from None
