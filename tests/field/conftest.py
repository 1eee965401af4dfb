"""A provisioned chip without the whole line: the emulator in a jig socket, configured with
the chip profile, its key made in slot 0 and its data zone locked, exactly as the line
leaves it (the certificate from a software CA, since field tests need no HSM); and a real
registry (the built-in app, served on a free port) holding that certificate as the device's
credential, as the line's upload does."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from sqlalchemy.engine import Engine

from provisioner.chips.connector import Connector
from provisioner.chips.emulator.chip import EmulatedChip
from provisioner.cloud.tokens import Role
from provisioner.db.engine import create_schema, make_engine
from provisioner.field.state import public_key_pem
from provisioner.ledger import registry_device_id
from provisioner.settings import Settings
from provisioner.uploads.client import CloudIotRegistry
from tests.chips.conftest import issue_for, software_ca
from tests.cloud.inprocess import LOCATION, PROJECT, REGISTRY, TOKENS, make_registry, served

LOCATOR = "emulated:line1/0"


def provision_chip(
    settings: Settings,
    socket: int = 0,
    chip: EmulatedChip | None = None,
    *,
    certificate: bool = True,
) -> str:
    """Put a chip (blank by default) in ``socket`` and provision it as the line does: config
    written and locked with the profile, key made in the key slot, data zone locked. Returns
    a certificate of its key from a software CA (PEM; written to ``settings.ca_dir``), or
    with ``certificate=False`` its public key (PEM) and no CA files are touched."""
    connector = Connector(settings)
    connector.jig("line1").insert_chip(socket, chip or EmulatedChip.blank())
    with connector.open(f"emulated:line1/{socket}") as c:
        c.ensure_configured()
        if not c.key_valid(connector.profile.key_slot):
            c.generate_key()
        c.lock_data_zone()
        if not certificate:
            return public_key_pem(c.public_key())
        der = issue_for(c, software_ca(settings), settings)
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()


def chip_public_key(
    settings: Settings, slot: int, locator: str = LOCATOR
) -> ec.EllipticCurvePublicKey:
    with Connector(settings).open(locator) as c:
        xy = c.public_key(slot)
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)


def chip_serial(settings: Settings, locator: str = LOCATOR) -> str:
    with Connector(settings).open(locator) as c:
        return c.identity().serial_hex.lower()


def b64d(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_es256(token: str, key: ec.EllipticCurvePublicKey) -> dict[str, object]:
    """An independent ES256 check with ``cryptography``: raw R||S, SHA-256 of the signing
    input. Raises InvalidSignature; returns the claims."""
    header, claims, sig = token.split(".")
    raw = b64d(sig)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    key.verify(der, f"{header}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    assert json.loads(b64d(header)) == {"alg": "ES256", "typ": "JWT"}
    out: dict[str, object] = json.loads(b64d(claims))
    return out


@dataclass(frozen=True)
class Line:
    settings: Settings
    registry: CloudIotRegistry
    base_url: str
    device_id: str
    certificate_pem: str


def field_settings(root: Path, registry_url: str, **bridge: object) -> Settings:
    return Settings(  # type: ignore[call-arg]
        var_dir=root / "var",
        registry={
            "url": registry_url,
            "project": PROJECT,
            "location": LOCATION,
            "registry": REGISTRY,
        },
        bridge=bridge or {},
    )


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The built-in registry app on a free port (one per module)."""
    reg = make_registry(tmp_path_factory.mktemp("registry"))
    with served(reg.app) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def line(tmp_path: Path, registry_url: str) -> Iterator[Line]:
    """A provisioned chip in socket 0 whose certificate the registry holds."""
    settings = field_settings(tmp_path, registry_url)
    pem = provision_chip(settings)
    device_id = registry_device_id(chip_serial(settings))
    registry = CloudIotRegistry(registry_url, PROJECT, LOCATION, REGISTRY, TOKENS[Role.WRITER])
    registry.create_device(device_id, pem)
    yield Line(settings, registry, registry_url, device_id, pem)
    registry.close()


@pytest.fixture
def engine(line: Line) -> Iterator[Engine]:
    eng = make_engine(line.settings.db_url)
    create_schema(eng)
    yield eng
    eng.dispose()


def admin_client(base_url: str) -> httpx.Client:
    return httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {TOKENS[Role.ADMIN]}"}
    )
