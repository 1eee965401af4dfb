"""A TLS server certificate for one of the product's listeners, issued by its own CA.

Why our CA and P-256: a field device then needs EC code only and pins one small root,
where Google's bridge served an RSA chain under a 60 KB root list. The key is a software
key made here (it is no CA key; the server reads it from a 0600 file), the certificate is
signed in the token by the current HSM intermediate, as the line server's own identity is
(:func:`provisioner.enrollment.service.init_line_identity`).

Each listener names its :class:`ServerCertFiles`: the MQTT bridge
(:mod:`provisioner.ca.bridge_cert`) and the device-facing HTTPS listener
(:mod:`provisioner.api.devices_server`). In its folder: ``server.key`` (0600),
``server.pem`` (the server certificate then the intermediate: what the server sends),
``ca.pem`` (the root devices pin) and, for a listener that takes client certificates,
``clients.pem`` (the root then every intermediate, current and archived: a device whose
certificate an older intermediate signed still authenticates after ``ca rotate``).

:func:`ensure_server_certificate` re-issues when a file is missing, the certificate expires
within 30 days, no longer chains to the current intermediate (after ``ca rotate``) or its
names differ from the configured ones; otherwise it opens no token. The client bundle is
public material and rewritten from the CA directory on every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from provisioner.ca.leaf import leaf_builder, signed
from provisioner.ca.names import general_names
from provisioner.private_files import write_private
from provisioner.settings import Settings

VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class ServerCertFiles:
    """Where one listener's certificate lives and what it must say."""

    folder: Path
    names: Sequence[str]  # the SANs (DNS names or IP addresses)
    common_name: str  # e.g. "mqtt bridge": tells an operator which listener it is
    names_setting: str  # e.g. "bridge.names": named in the error for a bad name
    client_ca: bool = False  # also write clients.pem (the listener verifies clients)

    @property
    def key_path(self) -> Path:
        return self.folder / "server.key"

    @property
    def chain_path(self) -> Path:
        return self.folder / "server.pem"

    @property
    def root_path(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def client_ca_path(self) -> Path:
        return self.folder / "clients.pem"

    def san_entries(self) -> list[x509.GeneralName]:
        """SubjectAltName entries (:func:`provisioner.ca.names.general_names`)."""
        return general_names(
            self.names,
            empty=f"{self.names_setting} is empty: the server certificate needs a name",
            where=f"{self.names_setting}: ",
        )


def san_set(cert: x509.Certificate) -> set[x509.GeneralName]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return set()


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


def client_ca_bundle(settings: Settings) -> bytes:
    """The root then every intermediate (current and archived, without repeats): what a
    TLS server trusts to verify client certificates issued by the product's CA."""
    from provisioner.ca.ceremony import store_of

    store = store_of(settings)
    certs = [store.root(), store.intermediate(), *store.intermediates().values()]
    return b"".join(pem(c) for c in dict.fromkeys(certs))


def is_current(settings: Settings, files: ServerCertFiles, now: datetime | None = None) -> bool:
    """Whether the files hold a certificate for the current key, intermediate, root and
    names with more than 30 days left."""
    from provisioner.ca.ceremony import store_of

    now = now or datetime.now(UTC)
    store = store_of(settings)
    key = load_key(files.key_path)
    if key is None or not files.chain_path.is_file() or not files.root_path.is_file():
        return False
    try:
        inter, root = store.intermediate(), store.root()
        chain = x509.load_pem_x509_certificates(files.chain_path.read_bytes())
        pinned = x509.load_pem_x509_certificate(files.root_path.read_bytes())
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
    if san_set(cert) != set(files.san_entries()):
        return False
    return cert.not_valid_after_utc - now > RENEW_BEFORE


def build_server_certificate(
    issuer: x509.Certificate,
    sign_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    files: ServerCertFiles,
    organization: str,
    now: datetime,
) -> x509.Certificate:
    """A server certificate: EKU serverAuth only, the SANs of ``files``, one year.
    ``sign_key`` is the intermediate's (an HSM key object); the result is checked against
    ``issuer`` before it is released."""
    builder = leaf_builder(
        issuer,
        public_key,
        organization=organization,
        common_name=files.common_name,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        now=now,
        not_after=now + VALIDITY,
    ).add_extension(x509.SubjectAlternativeName(files.san_entries()), critical=False)
    return signed(builder, sign_key, issuer, what=f"the {files.common_name} certificate")


def _ensure_folder(folder: Path) -> None:
    if not folder.is_dir():
        folder.mkdir(parents=True, mode=0o700)
        folder.chmod(0o700)


def ensure_server_certificate(
    settings: Settings,
    files: ServerCertFiles,
    *,
    pin_source: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Make sure ``files.folder`` holds a current server certificate, key and root (and the
    client bundle: see the module docstring). Returns whether a certificate was issued. The
    key is kept across re-issues unless it is missing or unreadable."""
    from provisioner.ca.ceremony import load_ca

    now = now or datetime.now(UTC)
    if is_current(settings, files, now):
        if files.client_ca:
            write_private(files.client_ca_path, client_ca_bundle(settings))
        return False
    files.san_entries()  # a bad name is refused before the token is opened
    key = load_key(files.key_path)
    new_key = key or ec.generate_private_key(ec.SECP256R1())
    ca = load_ca(settings, pin_source=pin_source)
    try:
        cert = build_server_certificate(
            ca.intermediate_cert,
            ca.key,  # the HSM key: signs in the token
            new_key.public_key(),
            files,
            settings.profile.organization,
            now,
        )
        chain = pem(cert) + pem(ca.intermediate_cert)
        root = pem(ca.root_cert)
    finally:
        ca.close()
    _ensure_folder(files.folder)
    if key is None:
        write_private(
            files.key_path,
            new_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    write_private(files.chain_path, chain)
    write_private(files.root_path, root)
    if files.client_ca:
        write_private(files.client_ca_path, client_ca_bundle(settings))
    return True
