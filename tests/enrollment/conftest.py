"""A line server in this process: a real SoftHSM CA (``tests.conftest``), a SQLite
database, the line identity, and the real FastAPI app on a TestClient."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from provisioner.api.app import create_app
from provisioner.ca.ceremony import CaInfo
from provisioner.db.engine import create_schema, make_engine
from provisioner.enrollment.service import init_line_identity
from provisioner.settings import Settings


@dataclass
class Line:
    settings: Settings
    engine: Engine
    client: TestClient


@pytest.fixture
def line(ca_settings: Settings, ca: CaInfo) -> Iterator[Line]:
    engine = make_engine(ca_settings.db_url)
    create_schema(engine)
    init_line_identity(ca_settings, None)
    with TestClient(create_app(ca_settings)) as client:
        yield Line(ca_settings, engine, client)
    engine.dispose()


def csr_pem(
    station_id: str,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A station's P-256 key (fresh by default) and its CSR with CN = ``station_id``."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, station_id)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()
