"""An enrolled station for link tests: its HSM-issued certificate and signing key, as its
PC holds them after `station enroll`, and its RemoteRecords wired straight to a gateway."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.enrollment.service import enroll_station
from provisioner.enrollment.tokens import add_station
from provisioner.link.gateway import Gateway
from provisioner.link.keys import SigningKey, fingerprint, station_party
from provisioner.link.remote import RemoteRecords
from provisioner.settings import Settings


def enroll(settings: Settings, engine: Any, sid: str) -> SigningKey:
    """Add station ``sid`` and enroll it with a fresh P-256 key (a CSR, as a station PC
    sends one): the key and certificate its requests are signed with."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sid)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    answer = enroll_station(settings, engine, add_station(engine, sid, "admin"), csr)
    cert = x509.load_pem_x509_certificate(answer.certificate_pem.encode())
    return SigningKey(station_party(sid), key, fingerprint(cert))


def remote_to(
    settings: Settings, gateway: Gateway, key: SigningKey, sent: list[dict[str, Any]]
) -> RemoteRecords:
    """The station's records, each request handed to ``gateway`` in process (and noted in
    ``sent``) instead of going through the broker."""

    def send(req: dict[str, Any], _timeout: float) -> object:
        sent.append(req)
        return gateway.handle(req)

    line_cert = x509.load_pem_x509_certificate(
        (settings.line_identity_dir / "line.crt").read_bytes()
    )
    return RemoteRecords(send, key, line_cert, 0, timeout_s=5, sign_timeout_s=5)
