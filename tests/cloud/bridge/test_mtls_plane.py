"""The device plane's half of MQTT mTLS, without a broker: which device a client certificate
speaks for (its SAN URI, or the client id for a line certificate), that it must be one of
that device's current credentials, the blocked flag read on every connect, and sessions
ended when the device is blocked or the certificate stops being its credential. (The chain
to the product's CA is mosquitto's part: tests/cloud/bridge/test_mtls.py.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy.engine import Engine

from provisioner.cloud import store
from provisioner.cloud.credentials import Credential, PublicKeyFormat
from provisioner.cloud.devauth.client_cert import device_uri
from provisioner.cloud.plane.service import Admission, DevicePlane, Refusal
from tests.cloud.devauth.keys import credential, make_jwt

PROJECT, LOCATION, REGISTRY = "mtls-proj", "europe-west1", "fleet"
ISSUER_KEY = ec.generate_private_key(ec.SECP256R1())
ISSUER = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Intermediate")])


def issue(
    key: ec.EllipticCurvePrivateKey,
    *,
    uris: tuple[str, ...] = (),
    cn: str = "0123aabbccddeeff01",
    not_after: datetime | None = None,
) -> str:
    """A client certificate for ``key`` (PEM), with device URIs in its SAN if given."""
    now = datetime.now(UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ISSUER)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=30))
    )
    if uris:
        names = [x509.UniformResourceIdentifier(u) for u in uris]
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(ISSUER_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def cert_credential(pem: str) -> Credential:
    return Credential(PublicKeyFormat.ES256_X509_PEM, pem)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path: Path = tmp_path_factory.mktemp("mtls-plane") / "registry.db"
    eng = store.open_store(f"sqlite:///{path}")
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def reg(engine: Engine) -> store.StoredRegistry:
    return store.create_registry(engine, PROJECT, LOCATION, REGISTRY)


@pytest.fixture
def plane(engine: Engine) -> DevicePlane:
    return DevicePlane(engine)


def new_device(
    engine: Engine, reg: store.StoredRegistry, *credentials: Credential
) -> tuple[str, str]:
    """A device holding ``credentials``: (device id, its full-path client id)."""
    device_id = f"m{uuid.uuid4().hex[:12]}"
    store.create_device(engine, reg, store.NewDevice(device_id, credentials, False, {}))
    return device_id, f"{reg.name}/devices/{device_id}"


def uri(device_id: str) -> str:
    return device_uri(PROJECT, LOCATION, REGISTRY, device_id)


def test_an_identity_certificate_names_its_device_whatever_the_client_id(
    plane: DevicePlane, engine: Engine, reg: store.StoredRegistry
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    device_id, cid = new_device(engine, reg)
    pem = issue(key, uris=(uri(device_id),))
    store.update_device(
        engine, reg, device_id, store.DeviceChanges(credentials=(cert_credential(pem),))
    )

    for client_id in (cid, "sensor-7", ""):
        admitted = plane.connect(client_id, None, cert_pem=pem)
        assert isinstance(admitted, Admission), (client_id, admitted)
        assert admitted.device.device_id == device_id and admitted.method == "certificate"
        assert admitted.claims is None
        assert f"/devices/{device_id}/events/#" in admitted.publish
    # the session ends when the certificate does
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert admitted.expires_at == int(cert.not_valid_after_utc.timestamp())

    _, other_cid = new_device(engine, reg)
    wrong = plane.connect(other_cid, None, cert_pem=pem)
    assert isinstance(wrong, Refusal) and wrong.rule == "client_id", wrong
    assert "another device than the certificate" in wrong.reason


def test_a_certificate_is_admitted_only_as_a_current_credential_of_the_device(
    plane: DevicePlane, engine: Engine, reg: store.StoredRegistry
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    device_id, cid = new_device(engine, reg)
    held = issue(key, uris=(uri(device_id),))
    store.update_device(
        engine, reg, device_id, store.DeviceChanges(credentials=(cert_credential(held),))
    )
    assert isinstance(plane.connect(cid, None, cert_pem=held), Admission)

    # Same key, same name, but not the certificate the registry holds (e.g. the one a
    # renewal superseded): refused, the credential is the certificate, not just its key.
    superseded = issue(key, uris=(uri(device_id),))
    refused = plane.connect(cid, None, cert_pem=superseded)
    assert isinstance(refused, Refusal) and refused.rule == "certificate", refused
    assert "no current credential" in refused.reason

    # A certificate of another key naming the device: refused.
    stranger = issue(ec.generate_private_key(ec.SECP256R1()), uris=(uri(device_id),))
    assert isinstance(plane.connect(cid, None, cert_pem=stranger), Refusal)

    # An expired credential does not admit.
    expired = Credential(PublicKeyFormat.ES256_X509_PEM, held, "2001-01-01T00:00:00Z")
    store.update_device(engine, reg, device_id, store.DeviceChanges(credentials=(expired,)))
    assert isinstance(plane.connect(cid, None, cert_pem=held), Refusal)

    # A bare public key credential admits any certificate of that key.
    store.update_device(engine, reg, device_id, store.DeviceChanges(credentials=(credential(key),)))
    assert isinstance(plane.connect(cid, None, cert_pem=superseded), Admission)

    # Unreadable, or naming two devices or a malformed path: refused.
    for bad in (
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        issue(key, uris=(uri(device_id), uri("another"))),
        issue(key, uris=("urn:x-provisioner:device:projects/p/devices/d",)),
    ):
        result = plane.connect(cid, None, cert_pem=bad)
        assert isinstance(result, Refusal) and result.rule == "certificate", result


def test_a_line_certificate_needs_the_device_path_as_client_id(
    plane: DevicePlane, engine: Engine, reg: store.StoredRegistry
) -> None:
    """A chip's certificate (CN = chip serial, no device URI): the client id names the
    device, and the certificate must be its credential (as the line's upload stores it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = issue(key)
    _, cid = new_device(engine, reg, cert_credential(pem))
    assert isinstance(plane.connect(cid, None, cert_pem=pem), Admission)
    anonymous = plane.connect("sensor-7", None, cert_pem=pem)
    assert isinstance(anonymous, Refusal) and anonymous.rule == "client_id"
    _, other_cid = new_device(engine, reg)
    elsewhere = plane.connect(other_cid, None, cert_pem=pem)
    assert isinstance(elsewhere, Refusal) and elsewhere.rule == "certificate"
    # No certificate and no JWT: still the JWT rule's refusal.
    bare = plane.connect(cid, None)
    assert isinstance(bare, Refusal) and bare.rule == "jwt format"


def test_a_jwt_connect_with_a_certificate_must_name_the_same_device(
    plane: DevicePlane, engine: Engine, reg: store.StoredRegistry
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    device_id, cid = new_device(engine, reg)
    pem = issue(key, uris=(uri(device_id),))
    store.update_device(
        engine, reg, device_id, store.DeviceChanges(credentials=(cert_credential(pem),))
    )
    jwt = make_jwt(key, project=PROJECT, now=time.time(), lifetime=600)
    admitted = plane.connect(cid, jwt, cert_pem=pem)
    assert isinstance(admitted, Admission) and admitted.method == "jwt"
    assert admitted.claims is not None and admitted.expires_at == admitted.claims.exp


def test_blocked_is_read_on_every_connect_and_ends_live_sessions(
    plane: DevicePlane, engine: Engine, reg: store.StoredRegistry
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    device_id, cid = new_device(engine, reg)
    pem = issue(key, uris=(uri(device_id),))
    store.update_device(
        engine, reg, device_id, store.DeviceChanges(credentials=(cert_credential(pem),))
    )
    session = plane.connect(cid, None, cert_pem=pem)
    assert isinstance(session, Admission)
    assert plane.sync([]).kick == []

    store.update_device(engine, reg, device_id, store.DeviceChanges(blocked=True))
    plane.device_changed(reg, device_id)  # what the registry API calls after a PATCH
    assert plane.sync([]).kick == [(cid, session.session)]
    refused = plane.connect(cid, None, cert_pem=pem)
    assert isinstance(refused, Refusal) and refused.rule == "blocked"

    # Unblocked, then its certificate replaced by another: the session it opened ends.
    store.update_device(engine, reg, device_id, store.DeviceChanges(blocked=False))
    again = plane.connect(cid, None, cert_pem=pem)
    assert isinstance(again, Admission)
    renewed = issue(key, uris=(uri(device_id),))
    store.update_device(
        engine, reg, device_id, store.DeviceChanges(credentials=(cert_credential(renewed),))
    )
    plane.device_changed(reg, device_id)
    assert (cid, again.session) in plane.sync([]).kick
    assert isinstance(plane.connect(cid, None, cert_pem=renewed), Admission)


def test_the_session_ends_when_the_certificate_expires(
    engine: Engine, reg: store.StoredRegistry
) -> None:
    clock = [time.time()]
    plane = DevicePlane(engine, clock=lambda: clock[0])
    key = ec.generate_private_key(ec.SECP256R1())
    device_id, cid = new_device(engine, reg)
    not_after = datetime.now(UTC) + timedelta(minutes=10)
    pem = issue(key, uris=(uri(device_id),), not_after=not_after)
    store.update_device(
        engine, reg, device_id, store.DeviceChanges(credentials=(cert_credential(pem),))
    )
    session = plane.connect(cid, None, cert_pem=pem)
    assert isinstance(session, Admission)
    clock[0] = not_after.timestamp() + 1
    assert plane.sync([]).kick == [(cid, session.session)]
    assert plane.sessions.current(cid).kick_reason == (  # type: ignore[union-attr]
        "certificate: the client certificate expired"
    )
    late = plane.connect(cid, None, cert_pem=pem)
    assert isinstance(late, Refusal) and "not valid now" in late.reason
