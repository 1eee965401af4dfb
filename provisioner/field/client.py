"""A field device: a provisioned chip talking to the registry's MQTT bridge.

What a Cloud IoT device did, with the chip doing every signature:

- connect over TLS (pinning ``<var>/bridge/ca.pem``, the product CA's root that issued the
  bridge's P-256 certificate) as ``projects/{p}/locations/{l}/registries/{r}/devices/{d}``,
  username ignored, password a JWT minted on the chip (:mod:`.jwt`) with the key the device
  state names (:mod:`.state`; slot 0 until a rotation moves it);
- subscribe ``/devices/{d}/config`` (QoS 1: the bridge sends the latest version on
  subscribe and each new one) and ``/devices/{d}/commands/#``; publish its state once on
  connect and telemetry to ``/devices/{d}/events`` every interval;
- reconnect with a fresh chip-minted JWT at 80 % of the token's lifetime (the bridge closes
  the connection when it expires), and after a lost connection with exponential backoff.

The chip is opened for each JWT and closed again, as firmware wakes its secure element only
to sign: the chip's state is re-read every time, so a key rotated meanwhile is used at once.
"""

from __future__ import annotations

import json
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from provisioner.chips.connector import Connector
from provisioner.errors import (
    ConfigError,
    NotFoundError,
    ProvisionerError,
    RegistryError,
    ServiceUnavailableError,
)
from provisioner.field.jwt import DeviceJwt, mint_jwt
from provisioner.field.state import load_state
from provisioner.ledger import registry_device_id
from provisioner.settings import Settings

REFRESH_AT = 0.8  # of the JWT's lifetime: reconnect with a new token before it expires
CONNACK_TIMEOUT_S = 10.0
BACKOFF_FIRST_S, BACKOFF_MAX_S = 1.0, 30.0
ACK_WAIT_S = 10.0  # at the end, how long to wait for outstanding PUBACKs
_PRINTABLE_LIMIT = 400


class BridgeUnreachableError(ServiceUnavailableError):
    """Nothing accepts connections at the bridge's address (or TLS with it failed)."""


class ConnectionRefusedByBridge(ProvisionerError):
    """The bridge answered CONNACK with a failure: the JWT or the device was refused."""

    exit_code = 77

    def __init__(self, message: str, reason: ReasonCode) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class RunReport:
    """What one run did (for the caller, the demo and tests)."""

    connections: int = 0
    published: int = 0
    acknowledged: int = 0
    configs: list[bytes] = field(default_factory=list)
    commands: list[tuple[str, bytes]] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)  # the slot each connection's JWT used


def timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def show(data: bytes) -> str:
    """A payload for a terminal: text when it is text, else hex; long ones cut."""
    try:
        text = data.decode("utf-8")
        shown = text if text.isprintable() else repr(text)
    except UnicodeDecodeError:
        shown = "0x" + data.hex()
    if len(shown) > _PRINTABLE_LIMIT:
        shown = shown[:_PRINTABLE_LIMIT] + f"… ({len(data)} bytes)"
    return shown or "(empty)"


def bridge_ca_file(settings: Settings) -> Path:
    return settings.bridge_dir / "ca.pem"


class FieldDevice:
    """One chip as a device in the field. ``emit`` receives each line to print (already
    timestamped); tokens never reach it."""

    def __init__(
        self,
        settings: Settings,
        locator: str,
        *,
        jwt_lifetime_s: int | None = None,
        emit: Callable[[str], None] = print,
        connector: Connector | None = None,
    ) -> None:
        if not settings.bridge.enabled:
            raise ConfigError(
                "the MQTT bridge is disabled (bridge.enabled = false): enable it and start it "
                "with `provisioner services run`"
            )
        self.settings = settings
        self.locator = locator
        self.lifetime_s = int(jwt_lifetime_s or settings.bridge.jwt_refresh_s)
        self._emit = emit
        self.connector = connector or Connector(settings)
        self.ca_file = bridge_ca_file(settings)
        if not self.ca_file.is_file():
            raise ConfigError(
                f"no bridge CA certificate at {self.ca_file}: the MQTT bridge has not been set "
                "up on this machine; start it with `provisioner services run`"
            )
        with self.connector.open(locator) as chip:
            self.chip_serial = chip.identity().serial_hex.lower()
        reg = settings.registry
        self.project = reg.project
        self.device_id = registry_device_id(self.chip_serial)
        self.client_id = (
            f"projects/{reg.project}/locations/{reg.location}/registries/{reg.registry}"
            f"/devices/{self.device_id}"
        )
        self.host, self.port = settings.bridge.host, settings.bridge.mqtt_port
        self.report = RunReport()
        self._client: mqtt.Client | None = None
        self._jwt: DeviceJwt | None = None
        self._connack: ReasonCode | None = None
        self._connected = False
        self._lost: ReasonCode | None = None
        self._unacked: set[int] = set()
        self._lock = threading.Lock()

    # --- topics ----------------------------------------------------------------------------

    @property
    def events_topic(self) -> str:
        return f"/devices/{self.device_id}/events"

    @property
    def state_topic(self) -> str:
        return f"/devices/{self.device_id}/state"

    @property
    def config_topic(self) -> str:
        return f"/devices/{self.device_id}/config"

    @property
    def commands_topic(self) -> str:
        return f"/devices/{self.device_id}/commands/#"

    # --- output ----------------------------------------------------------------------------

    def emit(self, text: str) -> None:
        self._emit(f"{timestamp()} {text}")

    # --- the chip --------------------------------------------------------------------------

    def mint(self) -> DeviceJwt:
        """A fresh JWT signed by the chip with the slot the device state names."""
        state = load_state(self.settings, self.chip_serial, self.connector.profile.key_slot)
        with self.connector.open(self.locator) as chip:
            return mint_jwt(chip, self.project, slot=state.slot, lifetime_s=self.lifetime_s)

    # --- MQTT ------------------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        self._connack = reason
        self._connected = not reason.is_failure

    def _on_disconnect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if client is self._client:
            self._connected = False
            self._lost = reason

    def _on_publish(self, client: mqtt.Client, _u: Any, mid: int, _r: ReasonCode, _p: Any) -> None:
        with self._lock:
            if mid in self._unacked:
                self._unacked.discard(mid)
                self.report.acknowledged += 1

    def _on_subscribe(
        self, client: mqtt.Client, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        for reason in reasons:
            if reason.is_failure:
                self.emit(f"subscription refused by the bridge: {reason} ({reason.value})")

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        topic, data = msg.topic, bytes(msg.payload)
        if topic == self.config_topic:
            self.report.configs.append(data)
            self.emit(f"config received ({len(data)} bytes): {show(data)}")
        elif topic.startswith(f"/devices/{self.device_id}/commands"):
            sub = topic.removeprefix(f"/devices/{self.device_id}/commands").lstrip("/")
            self.report.commands.append((sub, data))
            where = f" [{sub}]" if sub else ""
            self.emit(f"command received{where} ({len(data)} bytes): {show(data)}")
        else:
            self.emit(f"message on {topic} ({len(data)} bytes): {show(data)}")

    def _new_client(self, jwt: DeviceJwt) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.tls_set(ca_certs=str(self.ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.username_pw_set("unused", jwt.token)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def connect(self) -> None:
        """Mint a JWT on the chip, connect, subscribe and publish the state. Raises
        BridgeUnreachableError or ConnectionRefusedByBridge (with the broker's reason)."""
        jwt = self.mint()
        client = self._new_client(jwt)
        self._client, self._jwt = client, jwt
        self._connack, self._connected, self._lost = None, False, None
        where = f"{self.host}:{self.port}"
        try:
            client.connect(self.host, self.port, keepalive=60)
        except ssl.SSLError as exc:
            raise BridgeUnreachableError(
                f"TLS with the MQTT bridge at {where} failed ({exc.reason or exc}): does "
                f"{self.ca_file} belong to the bridge that listens there?"
            ) from None
        except OSError as exc:
            raise BridgeUnreachableError(
                f"cannot reach the MQTT bridge at {where} ({exc.strerror or exc}): start it "
                "with `provisioner services run`"
            ) from None
        deadline = time.monotonic() + CONNACK_TIMEOUT_S
        while self._connack is None and time.monotonic() < deadline:
            if client.loop(timeout=0.05) not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                break
        if self._connack is None:
            client.disconnect()
            raise BridgeUnreachableError(
                f"the MQTT bridge at {where} closed the connection without answering CONNECT "
                f"(within {CONNACK_TIMEOUT_S:g} s)"
            )
        if self._connack.is_failure:
            reason = self._connack
            client.disconnect()
            raise ConnectionRefusedByBridge(
                f"the MQTT bridge at {where} refused device {self.device_id}: {reason} "
                f"(MQTT reason code {reason.value}); its log names the rule that failed",
                reason,
            )
        self.report.connections += 1
        self.report.slots.append(jwt.slot)
        self.emit(
            f"connected to {where} as {self.device_id} (JWT signed by the chip with slot "
            f"{jwt.slot}, valid {jwt.lifetime_s} s)"
        )
        client.subscribe(self.config_topic, qos=1)
        client.subscribe(self.commands_topic, qos=0)
        state = {"online": True, "slot": jwt.slot, "since": timestamp()}
        client.publish(self.state_topic, json.dumps(state, separators=(",", ":")), qos=1)

    def publish_telemetry(self, seq: int) -> None:
        assert self._client is not None
        body = {"seq": seq, "time": timestamp(), "device": self.device_id}
        info = self._client.publish(
            self.events_topic, json.dumps(body, separators=(",", ":")), qos=1
        )
        with self._lock:
            self._unacked.add(info.mid)
        self.report.published += 1
        self.emit(f"telemetry {seq} published to {self.events_topic}")

    def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            deadline = time.monotonic() + 2
            while client.loop(timeout=0.05) == mqtt.MQTT_ERR_SUCCESS:
                if time.monotonic() > deadline:
                    break
        self._connected = False

    def _reconnect(self, why: str, deadline: float | None, stop: threading.Event) -> bool:
        """Connect again after ``why``, backing off while the bridge is unreachable.
        False when the run's time or a stop ended the attempts first."""
        self.disconnect()
        with self._lock:
            self._unacked.clear()  # QoS 1 publishes of a closed session are not acked later
        delay = BACKOFF_FIRST_S
        while True:
            self.emit(f"{why}: reconnecting with a fresh chip-minted JWT")
            try:
                self.connect()
                return True
            except BridgeUnreachableError as exc:
                wait = min(delay, BACKOFF_MAX_S) * random.uniform(0.8, 1.2)
                self.emit(f"{exc}; next attempt in {wait:.1f} s")
                if deadline is not None and time.monotonic() + wait > deadline:
                    return False
                if stop.wait(wait):
                    return False
                delay *= 2
                why = "retrying"

    def run(
        self,
        *,
        count: int | None = None,
        interval_s: float = 5.0,
        seconds: float | None = None,
        min_configs: int = 0,
        stop: threading.Event | None = None,
    ) -> RunReport:
        """Connect and publish ``count`` telemetry events (None: no limit) every
        ``interval_s``; stop after ``seconds`` (None: no limit), once ``count`` events are
        acknowledged and ``min_configs`` configs have arrived, or when ``stop`` is set."""
        stop = stop or threading.Event()
        start = time.monotonic()
        deadline = None if seconds is None else start + seconds
        self.connect()
        refresh_at = self._refresh_at()
        next_event, seq = time.monotonic(), 0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                with self._lock:
                    outstanding = bool(self._unacked)
                done_publishing = count is not None and seq >= count
                if done_publishing and not outstanding and len(self.report.configs) >= min_configs:
                    break
                assert self._client is not None
                self._client.loop(timeout=0.05)
                if not self._connected:
                    reason = self._lost
                    why = f"connection lost ({reason})" if reason is not None else "disconnected"
                    if not self._reconnect(why, deadline, stop):
                        break
                    refresh_at = self._refresh_at()
                    continue
                if now >= refresh_at:
                    left = (self._jwt.exp - time.time()) if self._jwt else 0.0
                    self._drain_acks(within=max(0.0, left / 2))  # this connection's acks
                    if not self._reconnect(f"JWT expires in {max(left, 0):.1f} s", deadline, stop):
                        break
                    refresh_at = self._refresh_at()
                    continue
                if not done_publishing and now >= next_event:
                    seq += 1
                    self.publish_telemetry(seq)
                    next_event += interval_s
            self._drain_acks()
        finally:
            self.disconnect()
            self.emit(
                f"disconnected: {self.report.published} telemetry events published, "
                f"{self.report.acknowledged} acknowledged, {len(self.report.configs)} configs "
                f"and {len(self.report.commands)} commands received"
            )
        return self.report

    def _refresh_at(self) -> float:
        """When (monotonic) to reconnect: at 80 % of the current JWT's life, counted from
        its ``iat`` (whole seconds, so up to a second before the connection was made)."""
        assert self._jwt is not None
        wall = self._jwt.iat + REFRESH_AT * self._jwt.lifetime_s
        # never at once: a token of a second or two would otherwise reconnect in a loop
        return time.monotonic() + max(wall - time.time(), 0.2 * self._jwt.lifetime_s)

    def _drain_acks(self, within: float = ACK_WAIT_S) -> None:
        """Run the network loop until every QoS 1 publish is acknowledged (or ``within``)."""
        deadline = time.monotonic() + min(within, ACK_WAIT_S)
        while self._client is not None and self._connected and time.monotonic() < deadline:
            with self._lock:
                if not self._unacked:
                    return
            self._client.loop(timeout=0.05)


def explain_refusal(settings: Settings, device_id: str) -> str | None:
    """Why the registry may refuse ``device_id``, when the registry's token is at hand: not
    registered, blocked, or no credential left. None when nothing is known."""
    from provisioner.uploads.client import CloudIotRegistry

    try:
        registry = CloudIotRegistry.from_settings(settings)
    except (ConfigError, NotFoundError, OSError):
        return None
    try:
        with_device = registry.get_device(device_id)
        if with_device is None:
            return (
                f"device {device_id} is not in the registry {registry.parent}: was this chip "
                "provisioned on this line and uploaded (`provisioner registry sync`)?"
            )
        if with_device.blocked:
            return f"device {device_id} is blocked in the registry (its certificate was revoked?)"
        return None
    except RegistryError:
        return None
    finally:
        registry.close()
