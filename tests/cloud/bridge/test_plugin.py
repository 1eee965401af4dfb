"""The mosquitto plugin on its own, against a scripted device plane: what it must do when
the plane is away or answers oddly, which the real plane cannot be made to do on demand.
(The real plane is in test_mqtt_bridge.py.) mosquitto runs with the configuration
:func:`provisioner.cloud.mosquitto.write_config` writes."""

from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.cloud.mosquitto import bridge_files, mosquitto_argv, probe, write_config
from provisioner.settings import BridgeSettings, RegistrySettings, Settings
from tests.cloud.bridge.conftest import MqttDevice
from tests.conftest import free_port

TOKEN = "stub-bridge-token-0123456789"
POISON = base64.b64encode(b"poison").decode()  # a sync holding it is answered 400


@dataclass
class Plane:
    """A scripted ``/bridge/v1``: admits password "ok", records every call, and answers
    syncs with whatever the test queued; ``down`` makes every call a 503."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    down: bool = False
    kicks: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    session: int = 100
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if self.down:
                return 503, {}
            if any(m.get("payload_b64") == POISON for m in body.get("messages", [])):
                return 400, {}
            self.calls.append((path, body))
            if path.endswith("/connect"):
                if body.get("password") != "ok":
                    return 200, {"allow": False, "reason": "jwt signature: scripted"}
                self.session += 1
                d = body["client_id"]
                return 200, {
                    "allow": True,
                    "session": self.session,
                    "publish": [f"/devices/{d}/events", f"/devices/{d}/events/#"],
                    "subscribe": [f"/devices/{d}/commands/#"],
                    "expires_at": int(time.time()) + 600,
                }
            if path.endswith("/subscribe"):
                return 200, {"allow": True, "deliver": []}
            if path.endswith("/sync"):
                out = {"kick": self.kicks, "deliver": self.deliveries}
                self.kicks, self.deliveries = [], []
                return 200, out
            return 200, {"allow": False}

    def synced(self) -> list[dict[str, Any]]:
        with self.lock:
            return [b for p, b in self.calls if p.endswith("/sync")]


def _serve(plane: Plane, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            answer: dict[str, Any] = {}
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                status = 401
            else:
                status, answer = plane.answer(self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _self_signed(folder: Path) -> None:
    """A throwaway P-256 server certificate (the CA-issued one is test_mqtt_bridge's)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stub bridge")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.pem").write_bytes(pem)
    (folder / "ca.pem").write_bytes(pem)
    (folder / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@dataclass
class StubBridge:
    settings: Settings
    plane: Plane
    out: Path
    devices: list[MqttDevice] = field(default_factory=list)

    def device(self, name: str, password: str = "ok") -> MqttDevice:
        b = self.settings.bridge
        d = MqttDevice(
            name, password, host=b.host, port=b.mqtt_port, ca_pem=bridge_files(self.settings).root
        )
        self.devices.append(d)
        d.connect()
        return d

    def log(self) -> str:
        return self.out.read_text(errors="replace")


def _start(settings: Settings, out: Path) -> subprocess.Popen[bytes]:
    conf = write_config(settings, timeout_ms=1000)
    with out.open("ab") as f:
        proc = subprocess.Popen(
            ["stdbuf", "-oL", *mosquitto_argv(settings, conf)], stdout=f, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 10
    while not probe(settings) and time.monotonic() < deadline:
        assert proc.poll() is None, out.read_text()
        time.sleep(0.05)
    return proc


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory, plugin_so: Path) -> Iterator[StubBridge]:
    root = tmp_path_factory.mktemp("stub")
    plane_port = free_port()
    token_file = root / "bridge.token"
    token_file.write_text(TOKEN + "\n")
    settings = Settings(
        var_dir=root / "var",
        registry=RegistrySettings(listen_port=plane_port),
        bridge=BridgeSettings(
            mqtt_port=free_port(),
            wss_port=None,
            mtls_port=None,
            plugin=plugin_so,
            token_file=token_file,
        ),
    )
    _self_signed(settings.bridge_dir)
    plane = Plane()
    server = _serve(plane, plane_port)
    out = root / "bridge.out"
    proc = _start(settings, out)
    sb = StubBridge(settings, plane, out)
    try:
        yield sb
    finally:
        for d in sb.devices:
            d.close()
        proc.terminate()
        proc.wait(10)
        server.shutdown()


def test_no_admission_while_the_plane_is_away_and_buffered_telemetry_survives_it(
    stub: StubBridge,
) -> None:
    d = stub.device("buffer-1")
    assert d.accepted
    stub.plane.down = True
    try:
        # telemetry while the plane is away is acknowledged and kept...
        for i in range(3):
            assert d.publish("/devices/buffer-1/events", f"m{i}".encode())
        # ...and nobody is let in meanwhile (never allow by default)
        refused = stub.device("buffer-2")
        assert refused.connack is not None and refused.connack.value == 135
        time.sleep(0.3)
    finally:
        stub.plane.down = False

    def sent() -> list[bytes]:
        return [
            base64.b64decode(m["payload_b64"])
            for b in stub.plane.synced()
            for m in b["messages"]
            if m["client_id"] == "buffer-1"
        ]

    deadline = time.monotonic() + 8  # the plugin backs off, at most 5 s
    while sent() != [b"m0", b"m1", b"m2"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sent() == [b"m0", b"m1", b"m2"]
    assert "refused buffer-2: the device plane cannot be reached" in stub.log()


def test_a_refusal_and_a_wrong_token_both_mean_no_connection(stub: StubBridge) -> None:
    d = stub.device("refused-1", password="not-ok")
    assert d.connack is not None and d.connack.value == 135
    assert "refused refused-1: jwt signature: scripted" in stub.log()
    assert "not-ok" not in stub.log()


def test_kicks_name_a_session_and_deliveries_a_client(stub: StubBridge) -> None:
    """A kick for an earlier session of the same client id leaves the current connection
    alone (state is per connection); a kick for the current session closes it."""
    first = stub.device("kick-1")
    second = stub.device("kick-1")  # takes the client id over
    assert first.wait_disconnected() and second.accepted
    new = stub.plane.session  # the plane numbered the second connection last
    # the first connection's end reaches the plane in a sync, with its own session
    deadline = time.monotonic() + 3
    gone: list[int] = []
    while not gone and time.monotonic() < deadline:
        gone = [
            int(x["session"])
            for b in stub.plane.synced()
            for x in b["disconnected"]
            if x["client_id"] == "kick-1"
        ]
        time.sleep(0.05)
    assert len(gone) == 1
    old = gone[0]
    assert old == new - 1
    with stub.plane.lock:
        stub.plane.kicks.append({"client_id": "kick-1", "session": old})
        stub.plane.deliveries.append(
            {
                "client_id": "kick-1",
                "topic": "/devices/kick-1/commands/x",
                "payload_b64": base64.b64encode(b"still here").decode(),
                "qos": 1,
            }
        )
    assert second.next_message()[:2] == ("/devices/kick-1/commands/x", b"still here")
    assert not second.disconnected
    with stub.plane.lock:
        stub.plane.kicks.append({"client_id": "kick-1", "session": new})
    assert second.wait_disconnected()


def _sent(stub: StubBridge, client_id: str) -> list[bytes]:
    return [
        base64.b64decode(m["payload_b64"])
        for b in stub.plane.synced()
        for m in b["messages"]
        if m["client_id"] == client_id
    ]


def test_a_backlog_goes_in_batches_of_at_most_200_in_order(stub: StubBridge) -> None:
    d = stub.device("batch-1")
    assert d.accepted
    sent = [f"m{i}".encode() for i in range(450)]
    for payload in sent:
        d.client.publish("/devices/batch-1/events", payload, qos=0)
    assert d.publish("/devices/batch-1/events", b"last")  # QoS 1: all before it are in
    deadline = time.monotonic() + 5
    while _sent(stub, "batch-1") != [*sent, b"last"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sent(stub, "batch-1") == [*sent, b"last"]
    assert max(len(b["messages"]) for b in stub.plane.synced()) <= 200


def test_a_batch_the_plane_refuses_as_malformed_does_not_block_later_ones(
    stub: StubBridge,
) -> None:
    d = stub.device("poison-1")
    assert d.accepted
    assert d.publish("/devices/poison-1/events", b"poison")
    time.sleep(0.3)  # its own sync, refused and dropped
    assert d.publish("/devices/poison-1/events", b"after")
    deadline = time.monotonic() + 3
    while b"after" not in _sent(stub, "poison-1") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sent(stub, "poison-1") == [b"after"]
    assert "refused a sync of 1 messages as malformed" in stub.log()


def test_a_tls_client_certificate_reaches_the_plane_as_pem(
    stub: StubBridge, tmp_path: Path
) -> None:
    """For mTLS: with ``require_certificate true`` the plugin sends the client's certificate
    (PEM) with the connect, for the plane to match against the device's credentials."""
    _self_signed(tmp_path / "client")
    client_pem = (tmp_path / "client" / "server.pem").read_text()
    settings = stub.settings.model_copy(
        update={
            "var_dir": tmp_path / "var",
            "bridge": stub.settings.bridge.model_copy(update={"mqtt_port": free_port()}),
        }
    )
    (tmp_path / "var").mkdir()
    _self_signed(settings.bridge_dir)
    conf = write_config(settings).read_text()
    conf = conf.replace(
        "require_certificate false",
        f"require_certificate true\ncafile {tmp_path / 'client' / 'server.pem'}",
    )
    (settings.bridge_dir / "mosquitto.conf").write_text(conf)
    out = tmp_path / "bridge.out"
    with out.open("ab") as f:
        proc = subprocess.Popen(
            ["stdbuf", "-oL", *mosquitto_argv(settings, settings.bridge_dir / "mosquitto.conf")],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while not probe(settings) and time.monotonic() < deadline:
            assert proc.poll() is None, out.read_text()
            time.sleep(0.05)
        d = MqttDevice(
            "mtls-1",
            "ok",
            host="127.0.0.1",
            port=settings.bridge.mqtt_port,
            ca_pem=settings.bridge_dir / "ca.pem",
            certfile=tmp_path / "client" / "server.pem",
            keyfile=tmp_path / "client" / "server.key",
        )
        d.connect()
        assert d.accepted, (d.connack, out.read_text())
        with stub.plane.lock:
            sent = [b for p, b in stub.plane.calls if b.get("client_id") == "mtls-1"]
        assert sent[0]["cert_pem"] == client_pem
        d.close()
    finally:
        proc.terminate()
        proc.wait(10)
