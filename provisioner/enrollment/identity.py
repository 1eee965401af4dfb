"""The station PC's side of station identity: ``provisioner station enroll`` and the files
it leaves in ``settings.station_identity_dir``.

The station's key is generated here and never leaves this PC: the line server receives a
CSR, whose signature is the proof that the sender holds the key. What comes back is checked
before anything is written (the certificate is for this key and this station and chains to
the CA chain sent with it; the line server's certificate comes from the same intermediate),
then written: ``station.key`` and ``broker.password`` 0600, the certificates 0644,
``enrollment.json`` (how to reach the broker). The chain and the line server's certificate
are pinned from then on: the station trusts the broker and the line's messages through
them, not through the system's CAs.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.enrollment import files
from provisioner.enrollment.service import EnrollmentAnswer
from provisioner.enrollment.tokens import TOKEN_PREFIX, check_station_id
from provisioner.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    InvalidInputError,
    ProvisionerError,
    ServiceUnavailableError,
)
from provisioner.settings import Settings

ENROLL_PATH = "/stations/enroll"


@dataclass(frozen=True)
class StationIdentityFiles:
    """Paths of this station PC's identity and their loaders (each raises
    :class:`~provisioner.errors.ConfigError` naming the file and ``station enroll`` when a
    file is missing or unreadable)."""

    dir: Path

    @classmethod
    def of(cls, settings: Settings) -> StationIdentityFiles:
        return cls(settings.station_identity_dir)

    @property
    def key_path(self) -> Path:
        return self.dir / "station.key"

    @property
    def certificate_path(self) -> Path:
        return self.dir / "station.crt"

    @property
    def chain_path(self) -> Path:
        return self.dir / "ca-chain.pem"

    @property
    def line_certificate_path(self) -> Path:
        return self.dir / "line.crt"

    @property
    def broker_password_path(self) -> Path:
        return self.dir / "broker.password"

    @property
    def enrollment_path(self) -> Path:
        return self.dir / "enrollment.json"

    def exists(self) -> bool:
        """Whether an identity (or part of one) is here."""
        return self.key_path.exists() or self.certificate_path.exists()

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {path} ({exc.strerror}): this PC has no station identity "
                "yet? run `provisioner station enroll`"
            ) from None

    def key(self) -> ec.EllipticCurvePrivateKey:
        try:
            key = serialization.load_pem_private_key(self._read(self.key_path), password=None)
        except ValueError:
            raise ConfigError(f"{self.key_path} is not a PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{self.key_path} is not an EC key")
        return key

    def _certs(self, path: Path) -> list[x509.Certificate]:
        try:
            found = x509.load_pem_x509_certificates(self._read(path))
        except ValueError:
            raise ConfigError(f"{path} holds no PEM certificate") from None
        return found

    def certificate(self) -> x509.Certificate:
        return self._certs(self.certificate_path)[0]

    def chain(self) -> list[x509.Certificate]:
        """The pinned CA chain: the intermediate, then the root."""
        return self._certs(self.chain_path)

    def line_certificate(self) -> x509.Certificate:
        return self._certs(self.line_certificate_path)[0]

    def broker_password(self) -> str:
        password = self._read(self.broker_password_path).decode().strip()
        if not password:
            raise ConfigError(f"{self.broker_password_path} is empty: enroll again")
        return password

    def enrollment(self) -> dict[str, Any]:
        """``{"station_id", "broker_host", "broker_port", "broker_mode"}``."""
        try:
            data = json.loads(self._read(self.enrollment_path))
        except ValueError:
            raise ConfigError(f"{self.enrollment_path} is not JSON: enroll again") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.enrollment_path} is not a JSON object: enroll again")
        return data


def read_token_file(path: Path) -> str:
    """An enrollment token from its file (never argv); the message never holds it."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from None
    return check_token(token, str(path))


def check_token(token: str, where: str = "the token") -> str:
    token = token.strip()
    if not token.startswith(TOKEN_PREFIX):
        raise AuthenticationError(
            f"{where} does not hold an enrollment token (they start with {TOKEN_PREFIX!r}; "
            "`provisioner station add ID` on the line server prints one)"
        )
    return token


def _csr(key: ec.EllipticCurvePrivateKey, station_id: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, station_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def _post(url: str, body: dict[str, str], ca_file: Path | None, timeout: float) -> Any:
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        try:
            verify = ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use --ca-file {ca_file}: {exc}") from None
    try:
        response = httpx.post(url, json=body, timeout=timeout, verify=verify)
    except httpx.TransportError as exc:
        hint = (
            " (the line's TLS certificate did not verify: pass its CA with --ca-file)"
            if "CERTIFICATE_VERIFY_FAILED" in str(exc)
            else ""
        )
        raise ServiceUnavailableError(
            f"cannot reach the line server at {url}: {type(exc).__name__}: {exc}{hint}; "
            "check --line-url (or line_url in the config) and that the line's API runs"
        ) from None
    if response.status_code == 401:
        raise AuthenticationError(_error_message(response))
    if response.status_code in (400, 422):
        raise InvalidInputError(f"the line server refused the request: {_error_message(response)}")
    if response.status_code == 404:
        raise ConfigError(
            f"{url} answered 404: is this the line server's API (its api.public_url)?"
        )
    if response.status_code == 409:
        raise ConflictError(f"the line server refused: {_error_message(response)}")
    if response.status_code >= 500:
        raise ServiceUnavailableError(
            f"the line server at {url} could not enroll this station now: "
            f"{_error_message(response)}"
        )
    if response.status_code != 201:
        raise ProvisionerError(
            f"unexpected answer from {url}: HTTP {response.status_code} {_error_message(response)}"
        )
    try:
        return response.json()
    except ValueError:
        raise ProvisionerError(f"{url} did not answer JSON: is it the line server?") from None


def _verified(
    answer: EnrollmentAnswer, key: ec.EllipticCurvePrivateKey, station_id: str
) -> tuple[x509.Certificate, list[x509.Certificate], x509.Certificate]:
    """The answer's certificates, once they are for this key and station and chain up."""
    try:
        cert = x509.load_pem_x509_certificate(answer.certificate_pem.encode())
        chain = x509.load_pem_x509_certificates(answer.chain_pem.encode())
        line = x509.load_pem_x509_certificate(answer.line_certificate_pem.encode())
    except ValueError:
        raise ProvisionerError("the line server's answer holds an unreadable certificate") from None
    if answer.station_id != station_id or cert.public_key() != key.public_key():
        raise ProvisionerError("the line server sent a certificate for another key or station")
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in cns] != [station_id]:
        raise ProvisionerError(f"the certificate's CN is not {station_id!r}")
    if len(chain) != 2:
        raise ProvisionerError("the line server's CA chain is not intermediate + root")
    intermediate, root = chain
    try:
        root.verify_directly_issued_by(root)
        intermediate.verify_directly_issued_by(root)
        cert.verify_directly_issued_by(intermediate)
        line.verify_directly_issued_by(intermediate)
    except (InvalidSignature, ValueError, TypeError):
        raise ProvisionerError(
            "the certificates from the line server do not chain to its CA: not enrolled"
        ) from None
    return cert, chain, line


def enroll(
    settings: Settings,
    station_id: str,
    token: str,
    line_url: str,
    *,
    force: bool = False,
    ca_file: Path | None = None,
    timeout: float = 60.0,
    send: Callable[[str, dict[str, str]], Any] | None = None,
) -> Path:
    """Enroll this PC as ``station_id`` with the line server at ``line_url`` using the
    one-time ``token``; writes the identity files and returns their directory. An existing
    identity is replaced only with ``force``. The token is sent in the request body only."""
    check_station_id(station_id)
    token = check_token(token)
    ident = StationIdentityFiles.of(settings)
    if ident.exists() and not force:
        raise ConflictError(
            f"this PC already has a station identity in {ident.dir}; pass --force to replace "
            "it (the line server revokes the old certificate when the new one is issued)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    url = line_url.rstrip("/") + ENROLL_PATH
    body = {"token": token, "csr": _csr(key, station_id).decode()}
    # ``send``: deliver the request another way than HTTP (the line server enrolling its
    # own local stations, role "all"); the answer is checked the same way.
    data = send(url, body) if send is not None else _post(url, body, ca_file, timeout)
    answer = EnrollmentAnswer.from_json(data)
    cert, chain, line = _verified(answer, key, station_id)
    files.ensure_dir(ident.dir)
    pem = serialization.Encoding.PEM
    files.write_file(
        ident.key_path,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        files.SECRET,
    )
    files.write_file(ident.certificate_path, cert.public_bytes(pem), files.PUBLIC)
    files.write_file(ident.chain_path, b"".join(c.public_bytes(pem) for c in chain), files.PUBLIC)
    files.write_file(ident.line_certificate_path, line.public_bytes(pem), files.PUBLIC)
    # no newline: the file is the password, byte for byte
    files.write_file(ident.broker_password_path, answer.broker_password.encode(), files.SECRET)
    enrollment = {
        "station_id": station_id,
        "broker_host": answer.broker_host,
        "broker_port": answer.broker_port,
        "broker_mode": answer.broker_mode,
    }
    files.write_file(
        ident.enrollment_path, (json.dumps(enrollment, indent=2) + "\n").encode(), files.PUBLIC
    )
    return ident.dir
