"""The device-facing HTTPS listener as ``services run`` runs it: a real line (Redis, the
registry, the API, the listener, the signer and uploader) started by the supervisor on free
ports with the CA in SoftHSM, and devices that talk to it over real TLS the way a device
written to Thistle's document does, pinning the root in ``<var>/devices/ca.pem``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session, select

from provisioner.api.devices_server import devices_files
from provisioner.ca.ceremony import init_ca, load_ca
from provisioner.ca.status import certificate_status
from provisioner.ca.store import fingerprint
from provisioner.db.engine import make_engine
from provisioner.db.models import AuditEvent
from provisioner.fleet import tokens
from provisioner.supervisor import Supervisor, running_services
from provisioner.supervisor_status import read_status
from tests.conftest import Station, free_port, make_station
from tests.devices.conftest import ClientCert, foreign_client_cert, issue_client_cert, pinned

ENROLL_HEADER = "Thistle-Device-Enrollment-Token"


@dataclass
class Line:
    station: Station
    supervisor: Supervisor
    work: Path

    @property
    def url(self) -> str:
        # By name: the listener's certificate says localhost (devices.names).
        return f"https://localhost:{self.station.settings.devices.port}"

    @property
    def root(self) -> Path:
        return devices_files(self.station.settings).root_path

    def client(self, cert: ClientCert | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=pinned(self.root, cert), timeout=30)

    def token(self, max_uses: int = 5) -> str:
        engine = make_engine(self.station.settings.db_url)
        try:
            return tokens.create(
                engine,
                tokens.default_registry(self.station.settings),
                "user:test",
                ttl=timedelta(days=1),
                max_uses=max_uses,
                label="devices tests",
            ).token
        finally:
            engine.dispose()

    def child(self, name: str) -> int:
        return next(c.proc.pid for c in self.supervisor.children if c.name == name)


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Line]:
    root = tmp_path_factory.mktemp("devices") / "station"
    st = make_station(
        root,
        sockets=1,
        # On: a port of its own; renewals allowed at once (a fresh certificate is inside a
        # 400-day window before its expiry in 365 days).
        extra=f"[devices]\nport = {free_port()}\n[fleet]\nrenew_window_days = 400\n",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOFTHSM2_CONF", "/nonexistent")  # init_ca points it at the var dir's own
        init_ca(st.settings)
        with running_services(st.settings, [], st.config, role="line") as sup:
            yield Line(st, sup, root.parent / "work")


def _csr(key: ec.EllipticCurvePrivateKey, cn: str) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def _save(folder: Path, name: str, cert_pem: str, key_pem: bytes) -> ClientCert:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.pem").write_text(cert_pem)
    (folder / f"{name}.key").write_bytes(key_pem)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return ClientCert(cert, folder / f"{name}.pem", folder / f"{name}.key")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _verify_chain(line: Line, answer: dict[str, str]) -> None:
    """The identity certificate chains to the root the device pins (openssl, not us)."""
    leaf, chain = line.work / "leaf.pem", line.work / "chain.pem"
    line.work.mkdir(exist_ok=True)
    leaf.write_text(answer["device_certificate_pem"])
    chain.write_text(answer["ca_chain_pem"])
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", line.root, "-untrusted", chain, leaf],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_supervisor_runs_the_listener(line: Line) -> None:
    run_dir = line.station.settings.var / "run"
    status = read_status(run_dir)
    assert status is not None
    comps = {c.name: c for c in status[1]}
    assert comps["devices"].state == "running" and comps["devices"].pid == line.child("devices")
    # After the API, before the workers: the order of ``services run``.
    names = [c.name for c in line.supervisor.children]
    assert names.index("api") < names.index("devices") < names.index("worker-hsm")
    with line.client() as h:
        assert h.get("/healthz").json() == {"status": "ok"}


def test_thistle_flow_over_https_pinned_to_our_root(line: Line) -> None:
    token = line.token()
    with line.client() as h:
        # The document's compatibility mode: the server makes the key.
        r = h.post("/enroll", headers={ENROLL_HEADER: token}, data={"label": "pump 7"})
        assert r.status_code == 200, r.text
        enrolled = r.json()
        assert set(enrolled) >= {"device_id", "device_token"}
        auth = {"Authorization": f"Bearer {enrolled['device_token']}"}
        r = h.get("/identity", headers=auth)
        assert r.status_code == 200, r.text
        ident = r.json()
        assert ident["device_id"] == enrolled["device_id"]
        cert = x509.load_pem_x509_certificate(ident["device_certificate_pem"].encode())
        key = serialization.load_pem_private_key(
            ident["device_private_key_pem"].encode(), password=None
        )
        assert cert.public_key() == key.public_key()
        _verify_chain(line, ident)

        # The better default: a CSR, the key stays here.
        r = h.post("/enroll", headers={ENROLL_HEADER: token}, json={"label": "pump 8"})
        assert r.status_code == 200, r.text
        second = r.json()
        own = ec.generate_private_key(ec.SECP256R1())
        r = h.post(
            "/identity",
            headers={"Authorization": f"Bearer {second['device_token']}"},
            content=_csr(own, second["device_id"]),
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        assert "device_private_key_pem" not in answer
        mine = x509.load_pem_x509_certificate(answer["device_certificate_pem"].encode())
        assert mine.public_key() == own.public_key()
        _verify_chain(line, answer)

        # A made-up token is refused, over the same TLS.
        assert h.post("/enroll", headers={ENROLL_HEADER: "x" * 40}).status_code == 401


def test_renewal_over_mtls(line: Line) -> None:
    with line.client() as h:
        device = h.post("/enroll", headers={ENROLL_HEADER: line.token(1)}).json()
        key = ec.generate_private_key(ec.SECP256R1())
        r = h.post(
            "/identity",
            headers={"Authorization": f"Bearer {device['device_token']}"},
            content=_csr(key, device["device_id"]),
        )
        assert r.status_code == 200, r.text
        # Renewal without a client certificate: refused by the application.
        assert h.post("/identity/renew").status_code == 401
    current = _save(line.work, "current", r.json()["device_certificate_pem"], _key_pem(key))

    with line.client(current) as h:  # mTLS: the identity certificate in the handshake
        r = h.post("/identity/renew")  # same key
        assert r.status_code == 200, r.text
    renewed = x509.load_pem_x509_certificate(r.json()["device_certificate_pem"].encode())
    assert renewed.public_key() == key.public_key()
    assert renewed.serial_number != current.cert.serial_number
    _verify_chain(line, r.json())

    # The old certificate is superseded (CRL and OCSP say so) and renews no more.
    engine = make_engine(line.station.settings.db_url)
    try:
        with Session(engine) as s:
            issuer = fingerprint(
                x509.load_pem_x509_certificate(
                    (line.station.settings.ca_dir / "intermediate.pem").read_bytes()
                )
            )
            old = certificate_status(s, issuer, format(current.cert.serial_number, "x"))
            new = certificate_status(s, issuer, format(renewed.serial_number, "x"))
            assert (old.status, old.reason, new.status) == ("revoked", "superseded", "good")
            types = [e.event_type for e in s.exec(select(AuditEvent)).all()]
            assert "fleet.renewed" in types
    finally:
        engine.dispose()
    with line.client(current) as h:
        assert h.post("/identity/renew").status_code == 403

    # A new key: the renewed certificate presents itself, a CSR for the next key.
    nxt = ec.generate_private_key(ec.SECP256R1())
    now = _save(line.work, "renewed", r.json()["device_certificate_pem"], _key_pem(key))
    with line.client(now) as h:
        r = h.post("/identity/renew", content=_csr(nxt, device["device_id"]))
        assert r.status_code == 200, r.text
    assert (
        x509.load_pem_x509_certificate(r.json()["device_certificate_pem"].encode()).public_key()
        == nxt.public_key()
    )


def test_a_client_certificate_of_another_ca_is_refused_in_the_handshake(line: Line) -> None:
    stranger = foreign_client_cert(line.work, "stranger")
    before = _access_lines(line)
    with line.client(stranger) as h, pytest.raises(httpx.TransportError):
        h.post("/identity/renew")
    # Our CA, but not an identity certificate: the handshake passes, the renewal does not.
    lc = load_ca(line.station.settings)
    try:
        ours = issue_client_cert(line.work, "not-an-identity", lc.intermediate_cert, lc.key)
    finally:
        lc.close()
    with line.client(ours) as h:
        r = h.post("/identity/renew")
        assert r.status_code == 403 and "not an identity" in r.text
    # The access log (written once the answer is sent) holds our CA's request only: the
    # stranger's never reached the application.
    deadline = time.monotonic() + 5
    while len(after := _access_lines(line)) == len(before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(e["path"], e["status"]) for e in after[len(before) :]] == [("/identity/renew", 403)]


def _access_lines(line: Line) -> list[dict[str, object]]:
    """The listener's access log entries for renewals."""
    log = line.station.settings.var / "log" / "devices.log"
    entries = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    return [e for e in entries if e.get("path") == "/identity/renew"]


def test_a_second_listener_on_the_port_exits_and_the_first_stays(line: Line) -> None:
    env = {**line.station.env(), "PROVISIONER_VAR_DIR": str(line.station.settings.var)}
    second = subprocess.run(
        [sys.executable, "-m", "provisioner.api.devices_server"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode != 0
    assert "address already in use" in (second.stdout + second.stderr).lower()
    with line.client() as h:
        assert h.get("/healthz").status_code == 200


def test_a_crashed_listener_is_restarted(line: Line) -> None:
    pid = line.child("devices")
    os.killpg(pid, signal.SIGKILL)
    t0 = time.monotonic()
    deadline = t0 + 30
    answered = False
    while time.monotonic() < deadline and not answered:
        time.sleep(0.2)
        try:
            with line.client() as h:
                answered = h.get("/healthz").status_code == 200
        except httpx.TransportError:
            continue
    assert answered, "the listener did not come back"
    assert line.child("devices") != pid
    status = read_status(line.station.settings.var / "run")
    assert status is not None
    (devices,) = [c for c in status[1] if c.name == "devices"]
    assert devices.restarts == 1 and devices.last_exit == -signal.SIGKILL
