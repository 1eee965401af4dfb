"""The MQTT bridge's TLS server certificate, issued by the product's own CA.

Why our CA and P-256: a field device then needs EC code only and pins one small root
(``<var>/bridge/ca.pem``), where Google's bridge served an RSA chain under a 60 KB root list.
The key is a software key made here (it is no CA key; mosquitto reads it from a 0600 file),
the certificate is signed in the token by the current HSM intermediate, as the line
server's own identity is (:func:`provisioner.enrollment.service.init_line_identity`).

Files in :attr:`Settings.bridge_dir`: ``server.key`` (0600), ``server.pem`` (the server
certificate then the intermediate: what mosquitto's ``certfile`` sends) and ``ca.pem``
(the root). :func:`ensure_bridge_certificate` re-issues when a file is missing, the
certificate expires within 30 days, no longer chains to the current intermediate (after
``ca rotate``) or its names differ from ``bridge.names``; otherwise it touches nothing and
opens no token.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioner.ca.issuer import key_usage, random_serial_number
from provisioner.ca.names import general_names
from provisioner.errors import PolicyViolationError
from provisioner.settings import Settings

VALIDITY = timedelta(days=365)
BACKDATE = timedelta(minutes=5)
RENEW_BEFORE = timedelta(days=30)
COMMON_NAME = "mqtt bridge"


def key_path(settings: Settings) -> Path:
    return settings.bridge_dir / "server.key"


def chain_path(settings: Settings) -> Path:
    return settings.bridge_dir / "server.pem"


def root_path(settings: Settings) -> Path:
    return settings.bridge_dir / "ca.pem"


def san_entries(names: Sequence[str]) -> list[x509.GeneralName]:
    """SubjectAltName entries for ``names`` (:func:`provisioner.ca.names.general_names`)."""
    return general_names(
        names,
        empty="bridge.names is empty: the server certificate needs a name",
        where="bridge.names: ",
    )


def _san_set(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return set()


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes) -> None:
    """Atomically, 0600 from the first byte (a key is never briefly readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


def is_current(settings: Settings, now: datetime | None = None) -> bool:
    """Whether the files hold a certificate for the current key, intermediate, root and
    ``bridge.names`` with more than 30 days left."""
    from provisioner.ca.ceremony import store_of

    now = now or datetime.now(UTC)
    store = store_of(settings)
    key = _load_key(key_path(settings))
    if key is None or not chain_path(settings).is_file() or not root_path(settings).is_file():
        return False
    try:
        inter, root = store.intermediate(), store.root()
        chain = x509.load_pem_x509_certificates(chain_path(settings).read_bytes())
        pinned = x509.load_pem_x509_certificate(root_path(settings).read_bytes())
    except ValueError:
        return False
    if len(chain) != 2 or chain[1] != inter or pinned != root:
        return False
    cert = chain[0]
    try:
        cert.verify_directly_issued_by(inter)
    except (InvalidSignature, ValueError, TypeError):
        return False
    if cert.public_key() != key.public_key():
        return False
    if _san_set(cert) != set(san_entries(settings.bridge.names)):
        return False
    return cert.not_valid_after_utc - now > RENEW_BEFORE


def build_bridge_certificate(
    issuer: x509.Certificate,
    sign_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    names: Sequence[str],
    organization: str,
    now: datetime,
) -> x509.Certificate:
    """The bridge's server certificate: EKU serverAuth only, SANs ``names``, one year.
    ``sign_key`` is the intermediate's (an HSM key object); the result is checked against
    ``issuer`` before it is released."""
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, COMMON_NAME),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(san_entries(names)), critical=False)
        .sign(sign_key, hashes.SHA256())
    )
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise PolicyViolationError(
            f"the bridge certificate does not verify with the CA key ({type(exc).__name__}); "
            "not released"
        ) from None
    return cert


def ensure_bridge_certificate(
    settings: Settings, *, pin_source: str | None = None, now: datetime | None = None
) -> bool:
    """Make sure :attr:`Settings.bridge_dir` holds a current server certificate, key and
    root (see the module docstring). Returns whether a certificate was issued. The key is
    kept across re-issues unless it is missing or unreadable."""
    from provisioner.ca.ceremony import load_ca

    now = now or datetime.now(UTC)
    if is_current(settings, now):
        return False
    names = list(settings.bridge.names)
    san_entries(names)  # a bad name is refused before the token is opened
    key = _load_key(key_path(settings))
    new_key = key or ec.generate_private_key(ec.SECP256R1())
    ca = load_ca(settings, pin_source=pin_source)
    try:
        cert = build_bridge_certificate(
            ca.intermediate_cert,
            ca.key,  # the HSM key: signs in the token
            new_key.public_key(),
            names,
            settings.profile.organization,
            now,
        )
        chain = _pem(cert) + _pem(ca.intermediate_cert)
        root = _pem(ca.root_cert)
    finally:
        ca.close()
    folder = settings.bridge_dir
    if not folder.is_dir():
        folder.mkdir(parents=True, mode=0o700)
        folder.chmod(0o700)
    if key is None:
        _write(
            key_path(settings),
            new_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    _write(chain_path(settings), chain)
    _write(root_path(settings), root)
    return True
