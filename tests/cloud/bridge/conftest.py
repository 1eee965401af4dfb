"""A real MQTT bridge for the tests: the registry server (``python -m provisioner.cloud``)
and Debian's mosquitto with the product's plugin, both started by the supervisor as
``services run`` starts them, on free ports, once per module (the ``bridge`` fixture);
paho-mqtt clients with software ES256/RS256 keys and JWTs made in the test.

Other test packages may reuse it: ``from tests.cloud.bridge.conftest import bridge`` and
``MqttDevice`` (a pytest fixture imported into a test module is usable there).
"""

from __future__ import annotations

import queue
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from provisioner.ca.ceremony import init_ca
from provisioner.cloud import events, store
from provisioner.cloud.tokens import admin_token_file, read_token
from provisioner.settings import Settings, load_settings
from provisioner.supervisor import Supervisor
from tests.cloud.devauth.keys import PrivateKey, make_jwt, public_pem
from tests.conftest import Station, free_port

REPO = Path(__file__).resolve().parents[3]
PLUGIN_SRC = REPO / "deploy" / "mosquitto"
MOSQUITTO = Path("/usr/sbin/mosquitto")
WAIT_S = 5.0


def build_plugin(out_dir: Path) -> Path:
    """Compile deploy/mosquitto/provisioner_plugin.c into ``out_dir`` (the tests run the
    source as it is now, not whatever `make install` built earlier)."""
    # Not a skip: a machine without them has not run `make install`, and a bridge test that
    # silently did not run would read as a bridge that works.
    assert MOSQUITTO.exists(), "mosquitto is not installed: run `make install`"
    assert shutil.which("make") and shutil.which("gcc"), (
        "make and gcc are needed to build the mosquitto plugin: run `make install`"
    )
    out = out_dir / "provisioner_plugin.so"
    subprocess.run(
        ["make", "-s", "-C", str(PLUGIN_SRC), f"OUT={out}"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


class MqttDevice:
    """One paho-mqtt (v2 callback API) connection over TLS, pinned to the bridge's root;
    callbacks feed queues the test waits on."""

    def __init__(
        self,
        client_id: str,
        password: str | None,
        *,
        host: str,
        port: int,
        ca_pem: Path,
        transport: str = "tcp",
        certfile: Path | None = None,
        keyfile: Path | None = None,
    ) -> None:
        self.client_id = client_id
        self.messages: queue.Queue[tuple[str, bytes, int]] = queue.Queue()
        self.subacks: dict[int, list[int]] = {}
        self.connack: ReasonCode | None = None
        self.disconnect_rc: ReasonCode | None = None
        self.disconnected_at: float | None = None  # time.time() of the disconnect
        self._connected = threading.Event()
        self._disconnected = threading.Event()
        self._suback = threading.Condition()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            transport="websockets" if transport == "websockets" else "tcp",
            reconnect_on_failure=False,
        )
        c.tls_set(
            ca_certs=str(ca_pem),
            certfile=str(certfile) if certfile else None,
            keyfile=str(keyfile) if keyfile else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        if password is not None:  # None: no username nor password (mTLS only)
            c.username_pw_set("unused", password)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c
        self.host, self.port = host, port

    # --- callbacks (paho's network thread) ------------------------------------------------

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.connack = rc
        self._connected.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self.disconnect_rc = rc
        self.disconnected_at = time.time()
        self._disconnected.set()
        self._connected.set()  # a refused or cut connection also ends the wait

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put((msg.topic, bytes(msg.payload), msg.qos))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        with self._suback:
            self.subacks[mid] = [rc.value for rc in codes]
            self._suback.notify_all()

    # --- what the tests call ---------------------------------------------------------------

    def connect(self, timeout: float = WAIT_S) -> ReasonCode | None:
        """Open the connection and wait for CONNACK (or the connection's end)."""
        self.client.connect(self.host, self.port, keepalive=60)
        self.client.loop_start()
        self._connected.wait(timeout)
        return self.connack

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic: str, qos: int = 1, timeout: float = WAIT_S) -> list[int]:
        """SUBSCRIBE and wait for the SUBACK's codes (128 = refused)."""
        rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe {topic}: {rc}"
        with self._suback:
            self._suback.wait_for(lambda: mid in self.subacks, timeout)
        assert mid in self.subacks, f"no SUBACK for {topic}"
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, qos: int = 1, timeout: float = WAIT_S) -> bool:
        """PUBLISH; at QoS 1 wait for the PUBACK. False when the connection went first."""
        info = self.client.publish(topic, payload, qos=qos)
        if qos == 0:
            return info.rc == mqtt.MQTT_ERR_SUCCESS
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and not info.is_published():
                if self._disconnected.is_set():
                    return False
                time.sleep(0.01)
            return info.is_published()
        except RuntimeError:  # paho: the connection went before the PUBACK
            return False

    def next_message(self, timeout: float = WAIT_S) -> tuple[str, bytes, int]:
        return self.messages.get(timeout=timeout)

    def no_message(self, within: float = 0.5) -> bool:
        try:
            self.messages.get(timeout=within)
        except queue.Empty:
            return True
        return False

    def wait_disconnected(self, timeout: float = WAIT_S) -> bool:
        return self._disconnected.wait(timeout)

    @property
    def disconnected(self) -> bool:
        return self._disconnected.is_set()

    def close(self) -> None:
        if not self._disconnected.is_set():
            self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Bridge:
    """The running registry server + MQTT bridge, and helpers to drive them."""

    station: Station
    supervisor: Supervisor
    plugin: Path
    devices: list[MqttDevice] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return self.supervisor.settings

    @property
    def project(self) -> str:
        return self.settings.registry.project

    @property
    def location(self) -> str:
        return self.settings.registry.location

    @property
    def registry(self) -> str:
        return self.settings.registry.registry

    @property
    def ca_pem(self) -> Path:
        return self.settings.bridge_dir / "ca.pem"

    @property
    def admin_token(self) -> str:
        return read_token(admin_token_file(self.settings.registry_token_file))

    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.settings.registry_url,
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=10,
        )

    def registry_path(self, registry: str | None = None) -> str:
        return (
            f"/v1/projects/{self.project}/locations/{self.location}"
            f"/registries/{registry or self.registry}"
        )

    def device_path(self, device_id: str, registry: str | None = None) -> str:
        return f"{self.registry_path(registry)}/devices/{device_id}"

    def client_id(self, device_id: str, registry: str | None = None) -> str:
        return self.registry_path(registry).removeprefix("/v1/") + f"/devices/{device_id}"

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self.http() as h:
            return h.request(method, path, **kwargs)

    def create_registry(self, registry_id: str, **body: Any) -> dict[str, Any]:
        path = f"/v1/projects/{self.project}/locations/{self.location}/registries"
        resp = self.api("POST", path, json={"id": registry_id, **body})
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def create_device(
        self,
        key: PrivateKey | None,
        device_id: str | None = None,
        *,
        registry: str | None = None,
        **body: Any,
    ) -> str:
        """A device with ``key``'s public key as its credential (ES256_PEM or RSA_PEM)."""
        device_id = device_id or f"d{uuid.uuid4().hex[:12]}"
        creds = []
        if key is not None:
            from cryptography.hazmat.primitives.asymmetric import ec

            fmt = "ES256_PEM" if isinstance(key, ec.EllipticCurvePrivateKey) else "RSA_PEM"
            creds = [{"publicKey": {"format": fmt, "key": public_pem(key)}}]
        resp = self.api(
            "POST",
            f"{self.registry_path(registry)}/devices",
            json={"id": device_id, "credentials": creds, **body},
        )
        assert resp.status_code == 200, resp.text
        return device_id

    def jwt(self, key: PrivateKey, lifetime: int = 600, **kwargs: Any) -> str:
        return make_jwt(key, project=self.project, now=time.time(), lifetime=lifetime, **kwargs)

    def device(
        self,
        device_id: str,
        password: str | None,
        *,
        registry: str | None = None,
        client_id: str | None = None,
        transport: str = "tcp",
        connect: bool = True,
        cert: tuple[Path, Path] | None = None,
    ) -> MqttDevice:
        """A paho client for ``device_id`` (connected unless ``connect=False``), closed at
        the end of the module. With ``cert`` (certificate file, key file) it goes to the
        mTLS listener and presents that client certificate."""
        b = self.settings.bridge
        port = b.wss_port if transport == "websockets" else b.mqtt_port
        if cert is not None:
            port = b.mtls_port
        assert port is not None
        d = MqttDevice(
            client_id or self.client_id(device_id, registry),
            password,
            host=b.host,
            port=port,
            ca_pem=self.ca_pem,
            transport=transport,
            certfile=cert[0] if cert else None,
            keyfile=cert[1] if cert else None,
        )
        self.devices.append(d)
        if connect:
            d.connect()
        return d

    def stored_events(
        self, device_id: str, registry: str | None = None
    ) -> list[events.StoredEvent]:
        engine = store.open_store(self.settings.registry_db_url)
        try:
            reg = store.get_registry(engine, self.project, self.location, registry or self.registry)
            assert reg is not None
            return events.read_events(
                engine, registry=reg, topic=None, after=0, limit=1000, device_id=device_id
            )
        finally:
            engine.dispose()

    def wait_events(
        self, device_id: str, count: int, registry: str | None = None, timeout: float = WAIT_S
    ) -> list[events.StoredEvent]:
        """The device's stored events once there are ``count`` (the plugin sends them in
        its next sync, every 100 ms)."""
        deadline = time.monotonic() + timeout
        found = self.stored_events(device_id, registry)
        while len(found) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            found = self.stored_events(device_id, registry)
        return found

    def log(self) -> str:
        """mosquitto's output (plugin lines start with ``provisioner:``)."""
        out = self.settings.var / "log" / "bridge.out"
        return out.read_text(errors="replace") if out.exists() else ""


@pytest.fixture(scope="session")
def plugin_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin built from the current source, once per session."""
    return build_plugin(tmp_path_factory.mktemp("plugin"))


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory, plugin_so: Path) -> Iterator[Bridge]:
    """Registry server + mosquitto with the plugin, started by the supervisor (as
    ``services run`` does: the CA-issued server certificate, the config, the token)."""
    root = tmp_path_factory.mktemp("bridge") / "station"
    root.mkdir()
    port, api_port, mqtt_port, wss_port = free_port(), free_port(), free_port(), free_port()
    mtls_port, https_port = free_port(), free_port()
    config = root / "provisioner.toml"
    config.write_text(
        f'var_dir = "{root / "var"}"\n'
        f'[registry]\nurl = "http://127.0.0.1:{port}"\nlisten_port = {port}\n'
        f"[api]\nlisten_port = {api_port}\n"
        f'[bridge]\nhost = "127.0.0.1"\nmqtt_port = {mqtt_port}\nwss_port = {wss_port}\n'
        f"mtls_port = {mtls_port}\nhttps_port = {https_port}\n"
        f'plugin = "{plugin_so}"\n'
    )
    station = Station(root, config, load_settings(config))
    with pytest.MonkeyPatch.context() as mp:
        # init_ca points SOFTHSM2_CONF at this var dir's token directory; undone afterwards.
        mp.setenv("SOFTHSM2_CONF", "/nonexistent")
        init_ca(station.settings)
        sup = Supervisor(station.settings, station.config)
        sup.acquire()
        b = Bridge(station, sup, plugin_so)
        try:
            sup.start_registry()
            sup.start_bridge()
            yield b
        finally:
            for d in b.devices:
                d.close()
            sup.stop(timeout=5)
