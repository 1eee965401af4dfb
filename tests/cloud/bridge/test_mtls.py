"""MQTT mTLS through the real bridge (registry server + mosquitto with the plugin, started
by the supervisor), and revocation reaching connected devices.

Client certificates are issued here by the product's CA in SoftHSM (the intermediate's key
signs in the token), shaped as field identity certificates (SAN URI naming the device,
EKU clientAuth). A certificate of another CA fails the TLS handshake; one of our CA that is
not the device's registry credential is refused by the device plane. Revocation: a line
device (an emulated chip provisioned by the real pipeline, uploaded to the registry)
connected with its chip-minted JWT is disconnected within 5 s of ``provisioner ca revoke``
(the block travels over Redis to the registry worker, the registry tells the device plane,
the plugin's next sync closes the connection) and its reconnect is refused; the same for
an mTLS device blocked or whose certificate is removed from its credentials."""

from __future__ import annotations

import contextlib
import json
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlmodel import Session, col, select

from provisioner import batches, pipeline
from provisioner.ca.ceremony import LoadedCa, load_ca
from provisioner.chips.connector import Connector
from provisioner.cloud.devauth.client_cert import device_uri
from provisioner.db.engine import create_schema, make_engine
from provisioner.db.models import Certificate, Device, Revocation, Step, aware
from provisioner.field.jwt import mint_jwt
from provisioner.issuance import IssuanceService
from provisioner.ledger import DeviceLedger, registry_device_id
from provisioner.uploads.client import CloudIotRegistry
from tests.cloud.bridge.conftest import Bridge, MqttDevice, bridge, plugin_so  # noqa: F401
from tests.conftest import run_cli

# The issue's bound: a revoked or blocked device is off the bridge within 5 s.
REVOCATION_BOUND_S = 5.0


@dataclass(frozen=True)
class ClientCert:
    pem: str
    cert: Path
    key: Path

    @property
    def files(self) -> tuple[Path, Path]:
        return self.cert, self.key


@pytest.fixture(scope="module")
def ca(bridge: Bridge) -> Iterator[LoadedCa]:  # noqa: F811
    """The bridge station's CA (initialised by the ``bridge`` fixture), open for signing."""
    loaded = load_ca(bridge.settings)
    yield loaded
    loaded.close()


def issue(
    ca: LoadedCa,
    folder: Path,
    *,
    uri: str | None,
    key: ec.EllipticCurvePrivateKey | None = None,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
) -> ClientCert:
    """A client certificate (and its key, in files under ``folder``) from the HSM
    intermediate, or from ``issuer`` (another CA)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    issuer_cert, sign_key = issuer or (ca.intermediate_cert, ca.key)
    now = datetime.now(UTC)
    name = f"client-{uuid.uuid4().hex[:8]}"
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer_cert.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
    )
    if uri is not None:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    cert = b.sign(sign_key, hashes.SHA256())
    folder.mkdir(parents=True, exist_ok=True)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (folder / f"{name}.pem").write_bytes(pem)
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ClientCert(pem.decode(), folder / f"{name}.pem", folder / f"{name}.key")


def foreign_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Somebody Else's CA")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def uri_of(b: Bridge, device_id: str) -> str:
    return device_uri(b.project, b.location, b.registry, device_id)


def certificate_device(b: Bridge, cert: ClientCert, device_id: str) -> None:
    """Create ``device_id`` in the registry with ``cert`` as its credential."""
    resp = b.api(
        "POST",
        f"{b.registry_path()}/devices",
        json={
            "id": device_id,
            "credentials": [{"publicKey": {"format": "ES256_X509_PEM", "key": cert.pem}}],
        },
    )
    assert resp.status_code == 200, resp.text


def patch(b: Bridge, device_id: str, mask: str, body: dict[str, object]) -> None:
    resp = b.api("PATCH", f"{b.device_path(device_id)}?updateMask={mask}", json=body)
    assert resp.status_code == 200, resp.text


def connect(d: MqttDevice) -> None:
    """Connect, tolerating a TLS refusal raised by the handshake itself."""
    with contextlib.suppress(ssl.SSLError, OSError):
        d.connect()


def time_to_disconnect(d: MqttDevice, since: float) -> float:
    assert d.wait_disconnected(timeout=30), "the device was never disconnected"
    took = time.monotonic() - since
    print(f"{d.client_id}: disconnected after {took:.2f} s ({d.disconnect_rc})")
    return took


def test_the_mtls_listener_requires_our_ca(bridge: Bridge) -> None:  # noqa: F811
    conf = (bridge.settings.bridge_dir / "mosquitto.conf").read_text()
    block = conf.split(f"\nlistener {bridge.settings.bridge.mtls_port} ")[1]
    assert "require_certificate true" in block
    clients = x509.load_pem_x509_certificates(
        (bridge.settings.bridge_dir / "clients.pem").read_bytes()
    )
    ca_dir = bridge.settings.ca_dir
    assert clients[0] == x509.load_pem_x509_certificate((ca_dir / "root.pem").read_bytes())
    inter = x509.load_pem_x509_certificate((ca_dir / "intermediate.pem").read_bytes())
    assert inter in clients


def test_a_device_connects_with_a_certificate_of_our_ca_and_gets_its_config(
    bridge: Bridge,  # noqa: F811
    ca: LoadedCa,
    tmp_path: Path,
) -> None:
    device_id = f"m{uuid.uuid4().hex[:12]}"
    cert = issue(ca, tmp_path, uri=uri_of(bridge, device_id))
    certificate_device(bridge, cert, device_id)
    resp = bridge.api(
        "POST",
        f"{bridge.device_path(device_id)}:modifyCloudToDeviceConfig",
        json={"binaryData": "bXRscw=="},  # "mtls"
    )
    assert resp.status_code == 200, resp.text

    d = bridge.device(device_id, None, cert=cert.files)  # no JWT, no password
    assert d.accepted, (d.connack, bridge.log()[-2000:])
    assert d.subscribe(f"/devices/{device_id}/config", qos=1) == [1]
    topic, payload, _ = d.next_message()
    assert (topic, payload) == (f"/devices/{device_id}/config", b"mtls")
    assert d.publish(f"/devices/{device_id}/events", b"over mTLS")
    assert [e.data for e in bridge.wait_events(device_id, 1)] == [b"over mTLS"]
    d.close()

    # The certificate names the device: any client id will do (a path must name it).
    other = bridge.device(device_id, None, client_id="sensor-7", cert=cert.files)
    assert other.accepted, (other.connack, bridge.log()[-2000:])
    other.close()


def test_a_certificate_of_another_ca_fails_the_handshake(
    bridge: Bridge,  # noqa: F811
    ca: LoadedCa,
    tmp_path: Path,
) -> None:
    device_id = f"m{uuid.uuid4().hex[:12]}"
    cert = issue(ca, tmp_path, uri=uri_of(bridge, device_id), issuer=foreign_ca())
    certificate_device(bridge, cert, device_id)  # even as its credential: TLS refuses first
    d = bridge.device(device_id, None, cert=cert.files, connect=False)
    connect(d)
    assert not d.accepted
    log = bridge.log()
    assert "certificate verify failed" in log or "OpenSSL Error" in log, log[-2000:]
    assert bridge.client_id(device_id) not in log  # the plane was never even asked

    # And no certificate at all is no way in on that listener either.
    bare = MqttDevice(
        bridge.client_id(device_id),
        None,
        host=bridge.settings.bridge.host,
        port=bridge.settings.bridge.mtls_port or 0,
        ca_pem=bridge.ca_pem,
    )
    bridge.devices.append(bare)
    connect(bare)
    assert not bare.accepted


def test_a_certificate_of_our_ca_that_is_not_the_devices_credential_is_refused(
    bridge: Bridge,  # noqa: F811
    ca: LoadedCa,
    tmp_path: Path,
) -> None:
    device_id = f"m{uuid.uuid4().hex[:12]}"
    held = issue(ca, tmp_path, uri=uri_of(bridge, device_id))
    certificate_device(bridge, held, device_id)
    # Same name, same CA, another key: chains fine, but the registry holds another one.
    other = issue(ca, tmp_path, uri=uri_of(bridge, device_id))
    d = bridge.device(device_id, None, cert=other.files)
    assert not d.accepted and d.connack is not None and d.connack.is_failure
    assert f"refused {bridge.client_id(device_id)}: certificate:" in bridge.log()
    # A certificate without a device URI is a line certificate: the client id must name
    # the device, and it must be that device's credential.
    line_style = issue(ca, tmp_path, uri=None)
    d2 = bridge.device(device_id, None, cert=line_style.files)
    assert not d2.accepted


def test_a_blocked_or_unbound_mtls_device_is_disconnected_within_5s_and_refused(
    bridge: Bridge,  # noqa: F811
    ca: LoadedCa,
    tmp_path: Path,
) -> None:
    device_id = f"m{uuid.uuid4().hex[:12]}"
    cert = issue(ca, tmp_path, uri=uri_of(bridge, device_id))
    certificate_device(bridge, cert, device_id)
    d = bridge.device(device_id, None, cert=cert.files)
    assert d.accepted, (d.connack, bridge.log()[-2000:])

    t0 = time.monotonic()
    patch(bridge, device_id, "blocked", {"blocked": True})
    took = time_to_disconnect(d, t0)
    assert took <= REVOCATION_BOUND_S, f"blocked device still connected after {took:.2f} s"
    again = bridge.device(device_id, None, cert=cert.files)
    assert not again.accepted
    assert f"refused {bridge.client_id(device_id)}: blocked:" in bridge.log()

    # Unblocked it connects; its certificate taken out of its credentials, it is cut off.
    patch(bridge, device_id, "blocked", {"blocked": False})
    back = bridge.device(device_id, None, cert=cert.files)
    assert back.accepted, (back.connack, bridge.log()[-2000:])
    successor = issue(ca, tmp_path, uri=uri_of(bridge, device_id))
    t1 = time.monotonic()
    patch(
        bridge,
        device_id,
        "credentials",
        {"credentials": [{"publicKey": {"format": "ES256_X509_PEM", "key": successor.pem}}]},
    )
    took = time_to_disconnect(back, t1)
    assert took <= REVOCATION_BOUND_S, f"unbound device still connected after {took:.2f} s"
    assert not bridge.device(device_id, None, cert=cert.files).accepted
    assert bridge.device(device_id, None, cert=successor.files).accepted


def https_client(b: Bridge, cert: ClientCert | None) -> httpx.Client:
    """A client of the registry's HTTPS device bridge, pinned to the bridge's root, with a
    client certificate if given."""
    ctx = ssl.create_default_context(cafile=str(b.ca_pem))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    port = b.settings.bridge.https_port
    assert port is not None
    return httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ctx, timeout=10)


def test_the_http_bridge_takes_a_client_certificate_instead_of_the_jwt(
    bridge: Bridge,  # noqa: F811
    ca: LoadedCa,
    tmp_path: Path,
) -> None:
    device_id = f"h{uuid.uuid4().hex[:12]}"
    cert = issue(ca, tmp_path, uri=uri_of(bridge, device_id))
    certificate_device(bridge, cert, device_id)
    path = bridge.device_path(device_id)
    resp = bridge.api("POST", f"{path}:modifyCloudToDeviceConfig", json={"binaryData": "aHR0cA=="})
    assert resp.status_code == 200, resp.text

    with https_client(bridge, cert) as h:
        sent = h.post(f"{path}:publishEvent", json={"binaryData": "b3ZlciBIVFRQUw=="})
        assert sent.status_code == 200, sent.text
        got = h.get(f"{path}/config", params={"localVersion": 0})
        assert got.status_code == 200 and got.json()["binaryData"] == "aHR0cA==", got.text
        # Only the device paths: the registry API is not on this listener at all.
        admin = h.get(bridge.registry_path(), headers={"Authorization": "Bearer x"})
        assert admin.status_code == 404
    assert [e.data for e in bridge.wait_events(device_id, 1)] == [b"over HTTPS"]

    # No certificate and no JWT: 401; a certificate of ours that is not the device's: 401.
    with https_client(bridge, None) as h:
        bare = h.post(f"{path}:publishEvent", json={"binaryData": "eA=="})
        assert bare.status_code == 401, bare.text
    other = issue(ca, tmp_path, uri=uri_of(bridge, device_id))
    with https_client(bridge, other) as h:
        wrong = h.post(f"{path}:publishEvent", json={"binaryData": "eA=="})
        assert wrong.status_code == 401 and "no current credential" in wrong.text
    # Another CA's certificate: the handshake fails.
    foreign = issue(ca, tmp_path, uri=uri_of(bridge, device_id), issuer=foreign_ca())
    with https_client(bridge, foreign) as h, pytest.raises(httpx.TransportError):
        h.post(f"{path}:publishEvent", json={"binaryData": "eA=="})
    # Blocked: 403, whatever the certificate.
    patch(bridge, device_id, "blocked", {"blocked": True})
    with https_client(bridge, cert) as h:
        blocked = h.post(f"{path}:publishEvent", json={"binaryData": "eA=="})
        assert blocked.status_code == 403, blocked.text


@pytest.fixture(scope="module")
def registry_worker(bridge: Bridge) -> Bridge:  # noqa: F811
    """Redis and the line's registry worker beside the bridge, as ``services run`` has
    them: what carries ``ca revoke``'s block to the registry."""
    from workers.queues import REGISTRY_QUEUE

    bridge.supervisor.start_redis()
    bridge.supervisor.start_worker("worker-registry", REGISTRY_QUEUE, 1)
    return bridge


def provision_line_device(b: Bridge, ca: LoadedCa, socket: int) -> str:
    """An emulated chip through the real pipeline (key in the chip, proof of possession,
    certificate from the HSM CA written and read back) and uploaded to the registry as the
    registry worker does. Returns the chip serial (hex)."""
    settings = b.settings
    engine = make_engine(settings.db_url)
    create_schema(engine)
    try:
        batch = batches.create_batch(engine, settings, station_id="line1", count=1, actor="t")
        (dev_id,) = batches.mark_started(engine, batch, actor="t")
        registry = f"projects/{b.project}/locations/{b.location}/registries/{b.registry}"
        ledger = DeviceLedger(engine, "station:line1", "line1", registry=registry)
        connector = Connector(settings)
        connector.jig("line1").insert_blank(socket)
        with connector.open(f"emulated:line1/{socket}") as chip:
            done = pipeline.provision_device(
                dev_id, chip, IssuanceService(engine, ca, settings.profile), ledger
            )
        assert done.step == Step.CERT_VERIFIED
        with CloudIotRegistry.from_settings(settings) as backend:
            uploaded = pipeline.upload_device(dev_id, backend, DeviceLedger(engine, "uploader"))
        assert uploaded.step == Step.DONE
        assert uploaded.chip_serial is not None
        return uploaded.chip_serial
    finally:
        engine.dispose()


def revocation_time(b: Bridge, chip_serial: str) -> float:
    """When ``ca revoke`` recorded the revocation of the chip's certificate (Unix time)."""
    engine = make_engine(b.settings.db_url)
    try:
        with Session(engine) as s:
            row = s.exec(
                select(Revocation)
                .join(Certificate, col(Certificate.id) == Revocation.certificate_id)
                .join(Device, col(Device.id) == Certificate.device_id)
                .where(Device.chip_serial == chip_serial)
            ).one()
            return aware(row.revoked_at).timestamp()
    finally:
        engine.dispose()


def test_ca_revoke_disconnects_a_line_device_within_5s_and_refuses_it(
    registry_worker: Bridge,
    ca: LoadedCa,
) -> None:
    b = registry_worker
    serial = provision_line_device(b, ca, socket=0)
    device_id = registry_device_id(serial)
    locator = "emulated:line1/0"
    with Connector(b.settings).open(locator) as chip:
        token = mint_jwt(chip, b.project, slot=0, lifetime_s=600).token
    d = b.device(device_id, token)
    assert d.accepted, (d.connack, b.log()[-2000:])
    assert d.publish(f"/devices/{device_id}/events", b"before")

    typed = time.time()
    proc = run_cli(
        "ca", "revoke", serial, "--reason", "key_compromise", "--json", env=b.station.env()
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["registry_block"]["queued"] is True, out
    assert d.wait_disconnected(timeout=30), "the revoked device was never disconnected"
    assert d.disconnected_at is not None
    # Measured from the revocation's commit (the CLI's own start-up, ~2-3 s of imports on
    # a loaded machine, is before anything is revoked), and shown from the command too.
    revoked_at = revocation_time(b, serial)
    took = d.disconnected_at - revoked_at
    print(f"revoked -> disconnected {took:.2f} s (typed -> {d.disconnected_at - typed:.2f} s)")
    assert 0 < took <= REVOCATION_BOUND_S, (
        f"revoked device disconnected {took:.2f} s after the revocation was recorded "
        f"({d.disconnected_at - typed:.2f} s after the command was typed)"
    )

    with Connector(b.settings).open(locator) as chip:
        fresh = mint_jwt(chip, b.project, slot=0, lifetime_s=600).token
    again = b.device(device_id, fresh)
    assert not again.accepted
    assert f"refused {b.client_id(device_id)}: blocked:" in b.log()
